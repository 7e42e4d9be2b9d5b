//! The fake Asterisk: places one AudioSocket call the way `AudioSocket()` does and reports,
//! strictly, what the server sent back.
//!
//! It is both `avr-core simulate` and the peer the integration tests drive, so its report must
//! be trustworthy: the receive side applies Asterisk HEAD's rules (audiosocket.md §1.4, §5) and
//! timestamps every frame on a thread that does nothing but read, stamp and append.

use std::fmt::{self, Write as _};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::proto::audiosocket::{self, HEADER_LEN, KIND_AUDIO, KIND_DTMF, KIND_HANGUP, KIND_UUID};
use crate::proto::g711;

mod load;
use crate::sys::lock;
pub use load::{frame_seq, marker, run_load, LoadCall, LoadOptions, LoadReport, LoadSummary};

/// One audio frame: Asterisk's default ptime.
const FRAME: Duration = Duration::from_millis(20);
/// 8 kHz × 20 ms.
const SAMPLES_PER_FRAME: usize = 160;
/// Asterisk HEAD polls 5 ms for the rest of a payload, then drops the call.
const PAYLOAD_LIMIT: Duration = Duration::from_millis(5);
/// `AudioSocket()` ends the call after 2 s without activity (20.14+).
const INACTIVITY_LIMIT: Duration = Duration::from_secs(2);
/// After the call ends, how long we keep reading for the server's EOF (and stray bytes).
const DRAIN: Duration = Duration::from_secs(1);
/// For `EndMode::Reset`: how long to wait for a server byte to leave unread, so close sends RST.
const RESET_WAIT: Duration = Duration::from_millis(500);
/// Receiver wake-up period when nothing arrives, so it notices the end of the call.
const POLL: Duration = Duration::from_millis(50);
/// A broken server can break a rule 50 times a second; the report stays readable.
const MAX_VIOLATIONS: usize = 100;
/// `--end await`: how long the CLI waits for the server's hangup after `--seconds`.
const CLI_AWAIT: Duration = Duration::from_secs(15);
/// `--tone` amplitude: loud enough to see, far from clipping.
const CLI_TONE_AMPLITUDE: i16 = 8000;

/// What the simulated caller says.
#[derive(Clone)]
pub enum AudioSource {
    Silence,
    /// A sine wave, phase-continuous across frames, for the whole `duration`.
    Tone {
        hz: f64,
        amplitude: i16,
    },
    /// 8 kHz mono samples, played once; silence follows if the call lasts longer.
    Pcm(Arc<Vec<i16>>),
}

impl fmt::Debug for AudioSource {
    /// Sample counts, not samples: options get logged and asserted on.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AudioSource::Silence => write!(f, "Silence"),
            AudioSource::Tone { hz, amplitude } => {
                write!(f, "Tone({hz} Hz, amplitude {amplitude})")
            }
            AudioSource::Pcm(pcm) => write!(f, "Pcm({} samples)", pcm.len()),
        }
    }
}

/// What the caller's `0x10` payloads contain. G.711 is what `Dial(AudioSocket/…)` without
/// `c(slin)` passes through, still labelled `0x10` (audiosocket.md §1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimCodec {
    Slin,
    Ulaw,
    Alaw,
}

impl SimCodec {
    /// Payload bytes per 20 ms frame.
    pub fn frame_bytes(self) -> usize {
        match self {
            SimCodec::Slin => 2 * SAMPLES_PER_FRAME,
            SimCodec::Ulaw | SimCodec::Alaw => SAMPLES_PER_FRAME,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SimCodec::Slin => "slin",
            SimCodec::Ulaw => "ulaw",
            SimCodec::Alaw => "alaw",
        }
    }
}

/// How the simulated caller leaves once `duration` is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndMode {
    /// `shutdown(Write)` (FIN), read until the server closes (at most 1 s), close.
    Close,
    /// Close with unread data, so the kernel sends RST, as Asterisk's `close()` often does.
    Reset,
    /// Keep streaming silence (Asterisk sends caller audio until it sees the hangup) until the
    /// server hangs up or this much more time passes; then close as in `Close`.
    AwaitHangup(Duration),
}

/// One call to place.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub addr: SocketAddr,
    pub uuid: [u8; 16],
    pub codec: SimCodec,
    pub audio: AudioSource,
    /// How long caller audio is sent, counted from the UUID.
    pub duration: Duration,
    /// Digits (`0-9 * # A-D`) at offsets from the UUID; digits due after the call are not sent.
    pub dtmf: Vec<(Duration, char)>,
    pub end: EndMode,
    /// Asterisk gives up after 2 s.
    pub connect_timeout: Duration,
}

impl SimOptions {
    /// A 2 s silent slin call with a random v4 UUID that ends with a plain close.
    pub fn new(addr: SocketAddr) -> Self {
        SimOptions {
            addr,
            uuid: *uuid::Uuid::new_v4().as_bytes(),
            codec: SimCodec::Slin,
            audio: AudioSource::Silence,
            duration: Duration::from_secs(2),
            dtmf: Vec::new(),
            end: EndMode::Close,
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// Who ended the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndedBy {
    /// The simulator, per its `EndMode`.
    Client,
    /// The server sent `00 00 00`.
    ServerHangup,
    /// The server closed or reset the connection without a hangup frame.
    ServerClose,
}

impl fmt::Display for EndedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndedBy::Client => "ended by the simulator",
            EndedBy::ServerHangup => "hung up by the server (00 00 00)",
            EndedBy::ServerClose => "closed by the server (no hangup frame)",
        })
    }
}

/// What happened on the call. All times are offsets from the moment the UUID was written.
#[derive(Clone, Debug)]
pub struct SimReport {
    pub uuid: String,
    /// When the UUID was written: add an offset to compare with another thread's `Instant`.
    pub started: Instant,
    /// Audio frames written (DTMF not counted).
    pub frames_sent: u64,
    /// Audio frames (`0x10`–`0x18`, non-empty) received.
    pub frames_received: u64,
    /// Their payloads, in order (an odd length loses its last byte, as in Asterisk).
    pub received: Vec<u8>,
    /// When each audio frame's last byte arrived.
    pub arrivals: Vec<Duration>,
    pub time_to_first_frame: Option<Duration>,
    /// Between consecutive received audio frames.
    pub gap_p50: Duration,
    pub gap_p99: Duration,
    pub gap_max: Duration,
    /// Most audio frames arriving within any 100 ms; 5 is real time.
    pub max_frames_in_100ms: usize,
    /// Things current Asterisk would fail the call for, each naming its time.
    pub violations: Vec<String>,
    /// Saw `00 00 00`.
    pub hangup_received: bool,
    /// Saw EOF or a reset from the server (also after the simulator ended the call).
    pub server_closed: bool,
    pub ended_by: EndedBy,
    /// UUID sent → the end of the call (our FIN/RST decision, or the server's hangup/EOF).
    pub duration: Duration,
}

impl SimReport {
    /// A few lines for a human: counts, pacing, how the call ended, each violation.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "call {}: {} after {}",
            self.uuid,
            self.ended_by,
            secs(self.duration)
        );
        let _ = writeln!(s, "  sent:        {} audio frames", self.frames_sent);
        let _ = writeln!(
            s,
            "  received:    {} audio frames ({} of 8 kHz slin)",
            self.frames_received,
            secs(Duration::from_secs_f64(
                self.received.len() as f64 / 16_000.0
            ))
        );
        let first = self.time_to_first_frame.map_or("none".into(), ms);
        let _ = writeln!(s, "  first frame: {first} after the UUID");
        let _ = writeln!(
            s,
            "  pacing:      gap p50 {}, p99 {}, max {}; at most {} frames in any 100 ms (5 = real time)",
            ms(self.gap_p50),
            ms(self.gap_p99),
            ms(self.gap_max),
            self.max_frames_in_100ms
        );
        let _ = writeln!(
            s,
            "  hangup:      00 00 00 {}; server {} the connection",
            if self.hangup_received {
                "received"
            } else {
                "not received"
            },
            if self.server_closed {
                "closed"
            } else {
                "did not close"
            }
        );
        if self.violations.is_empty() {
            let _ = writeln!(s, "  violations:  none");
        } else {
            let _ = writeln!(s, "  violations:  {}", self.violations.len());
            for v in &self.violations {
                let _ = writeln!(s, "    - {v}");
            }
        }
        s
    }
}

/// Why a call could not be placed or audio not loaded.
#[derive(Debug)]
pub enum SimError {
    /// TCP connect failed or timed out.
    Connect { addr: SocketAddr, source: io::Error },
    /// A local socket or thread operation failed mid-call; the message says which.
    Io(io::Error),
    /// An audio file is unreadable or not in a usable format.
    Audio { path: PathBuf, reason: String },
    /// `SimOptions` asks for something the protocol cannot carry.
    Invalid(String),
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::Connect { addr, source } => write!(
                f,
                "cannot connect to the AudioSocket server at {addr}: {source} \
                 (is avr-core running and listening there? check --addr and its PORT/BIND_ADDRESS)"
            ),
            SimError::Io(e) => write!(f, "call failed: {e}"),
            SimError::Audio { path, reason } => write!(f, "{}: {reason}", path.display()),
            SimError::Invalid(what) => write!(f, "invalid simulator option: {what}"),
        }
    }
}

impl std::error::Error for SimError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SimError::Connect { source, .. } => Some(source),
            SimError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Keeps the kind (tests and callers match on it) and adds what we were doing.
fn io_context(what: &'static str) -> impl FnOnce(io::Error) -> SimError {
    move |e| SimError::Io(io::Error::new(e.kind(), format!("{what}: {e}")))
}

/// Places one call and reports on it. Returns once the call has ended and the connection is
/// closed (at most ~1 s after the end while waiting for the server's EOF).
pub fn run_call(opts: &SimOptions) -> Result<SimReport, SimError> {
    let dtmf = checked_dtmf(&opts.dtmf)?;
    let stream =
        TcpStream::connect_timeout(&opts.addr, opts.connect_timeout).map_err(|source| {
            SimError::Connect {
                addr: opts.addr,
                source,
            }
        })?;
    stream
        .set_nodelay(true)
        .map_err(io_context("setting TCP_NODELAY"))?;
    let recv_stream = stream
        .try_clone()
        .map_err(io_context("cloning the socket"))?;
    let send_stream = stream
        .try_clone()
        .map_err(io_context("cloning the socket"))?;

    // Exactly what Asterisk sends first, in one write.
    let hello = audiosocket::encode(KIND_UUID, &opts.uuid).expect("16 bytes always fit");
    (&stream)
        .write_all(&hello)
        .map_err(io_context("sending the UUID"))?;
    let shared = Arc::new(Shared {
        t0: Instant::now(),
        live: AtomicBool::new(true),
        end: Mutex::new(None),
        stop_reading: AtomicBool::new(false),
    });
    let uuid = audiosocket::CallId::from_bytes(opts.uuid).to_string();
    log::debug!("[{uuid}] simulated call connected to {}", opts.addr);

    // Room for the whole call up front: the receiver should not reallocate while timing.
    let expect_frames = (opts.duration.as_millis() / FRAME.as_millis()) as usize + 64;
    let receiver = thread::Builder::new().name("sim-recv".into()).spawn({
        let shared = shared.clone();
        move || receive(recv_stream, &shared, expect_frames)
    });
    let receiver = receiver.map_err(io_context("starting the receiver thread"))?;
    let sender = thread::Builder::new().name("sim-send".into()).spawn({
        let shared = shared.clone();
        let opts = opts.clone();
        move || send(send_stream, &opts, &dtmf, &shared)
    });
    let sent = match sender {
        Ok(handle) => join(handle),
        Err(e) => Err(e),
    };
    let sent = match sent {
        Ok(sent) => sent,
        Err(e) => {
            // Unblock and collect the receiver before reporting the failure.
            shared.stop_reading.store(true, Ordering::SeqCst);
            let _ = stream.shutdown(Shutdown::Both);
            let _ = join(receiver);
            return Err(io_context("sending audio")(e));
        }
    };
    let rx = join(receiver).map_err(io_context("receiving"))?;
    let (ended_by, ended_at) = shared.ended().expect("the sender always records the end");
    let mut server_closed = rx.server_closed || sent.saw_close;

    if ended_by == EndedBy::Client && opts.end == EndMode::Reset && !server_closed {
        server_closed = leave_unread_data(&stream);
    }
    drop(stream); // the last handle: the connection closes here (RST if data is unread)

    let mut violations = rx.violations;
    let silent = ended_at.saturating_sub(rx.last_live_frame);
    if silent > INACTIVITY_LIMIT {
        violations.push(
            ended_at,
            format!(
                "no frame from the server for {} before the call ended \
                 (Asterisk ends the call after 2 s of inactivity)",
                secs(silent)
            ),
        );
    }
    let mut gaps = gaps(&rx.arrivals);
    gaps.sort_unstable();
    log::debug!(
        "[{uuid}] simulated call {ended_by} after {}",
        secs(ended_at)
    );
    Ok(SimReport {
        uuid,
        started: shared.t0,
        frames_sent: sent.frames_sent,
        frames_received: rx.arrivals.len() as u64,
        time_to_first_frame: rx.arrivals.first().copied(),
        gap_p50: percentile(&gaps, 50.0),
        gap_p99: percentile(&gaps, 99.0),
        gap_max: gaps.last().copied().unwrap_or_default(),
        max_frames_in_100ms: window_max(&rx.arrivals, Duration::from_millis(100)),
        received: rx.received,
        arrivals: rx.arrivals,
        violations: violations.into_vec(),
        hangup_received: rx.hangup_received,
        server_closed,
        ended_by,
        duration: ended_at,
    })
}

/// Waits (briefly) for a server byte and leaves it unread, so dropping the socket sends RST.
/// std's `set_linger` is unstable and SO_LINGER 0 would need unsafe or libc; closing with
/// unread data is also exactly how Asterisk's RSTs arise (audiosocket.md §1.5).
/// Returns whether the server had already closed (then no RST is possible).
fn leave_unread_data(stream: &TcpStream) -> bool {
    let _ = stream.set_read_timeout(Some(RESET_WAIT));
    match stream.peek(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if is_disconnect(&e) => true,
        Err(_) => {
            log::warn!(
                "the server sent nothing for {} after the call ended, so the close is a FIN, not an RST",
                ms(RESET_WAIT)
            );
            false
        }
    }
}

/// A thread's result; a panic in it is re-raised here, so a test sees the original message.
fn join<T>(handle: thread::JoinHandle<io::Result<T>>) -> io::Result<T> {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Sorted digits, each one the protocol can carry.
fn checked_dtmf(dtmf: &[(Duration, char)]) -> Result<Vec<(Duration, char)>, SimError> {
    if let Some((_, c)) = dtmf.iter().find(|(_, c)| !is_dtmf(*c)) {
        return Err(SimError::Invalid(format!(
            "DTMF digit {c:?} cannot be sent; AudioSocket carries 0-9 * # A-D"
        )));
    }
    let mut dtmf = dtmf.to_vec();
    dtmf.sort_by_key(|d| d.0);
    Ok(dtmf)
}

fn is_dtmf(c: char) -> bool {
    matches!(c, '0'..='9' | '*' | '#' | 'A'..='D')
}

/// State both threads see. `end` is set once: whoever ends the call first wins.
struct Shared {
    t0: Instant,
    /// Cheap "not ended yet" for the hot paths; mirrors `end.is_none()`.
    live: AtomicBool,
    end: Mutex<Option<(EndedBy, Duration)>>,
    /// `EndMode::Reset`: the receiver must stop reading so data stays unread.
    stop_reading: AtomicBool,
}

impl Shared {
    /// Records the end if nobody has yet; true if this call did.
    fn end(&self, by: EndedBy, at: Duration) -> bool {
        let mut end = lock(&self.end);
        if end.is_some() {
            return false;
        }
        *end = Some((by, at));
        self.live.store(false, Ordering::SeqCst);
        true
    }

    fn ended(&self) -> Option<(EndedBy, Duration)> {
        *lock(&self.end)
    }

    fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }
}

/// The peer is gone: EOF-like errors end the call rather than fail it.
fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected
    )
}

fn sleep_until(deadline: Instant) {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        thread::sleep(deadline - now);
    }
}

struct Sent {
    frames_sent: u64,
    saw_close: bool,
}

/// Streams caller audio and DTMF on a deadline clock anchored at the UUID, so sleep overshoot
/// never accumulates. A late thread catches up (sends back-to-back), like RTP after a hiccup.
fn send(
    mut stream: TcpStream,
    opts: &SimOptions,
    dtmf: &[(Duration, char)],
    shared: &Shared,
) -> io::Result<Sent> {
    let stop_at = match opts.end {
        EndMode::AwaitHangup(wait) => opts.duration + wait,
        EndMode::Close | EndMode::Reset => opts.duration,
    };
    let mut source = Source::new(&opts.audio);
    let mut samples = [0i16; SAMPLES_PER_FRAME];
    let mut frame = Vec::with_capacity(HEADER_LEN + 2 * SAMPLES_PER_FRAME);
    let mut digits = dtmf.iter().peekable();
    let mut next_audio = Duration::ZERO;
    let mut sent = Sent {
        frames_sent: 0,
        saw_close: false,
    };
    loop {
        let digit_due = digits.peek().map(|d| d.0);
        let next = digit_due.map_or(next_audio, |d| d.min(next_audio));
        if next >= stop_at {
            sleep_until(shared.t0 + stop_at);
            if shared.end(EndedBy::Client, stop_at) {
                match opts.end {
                    EndMode::Reset => shared.stop_reading.store(true, Ordering::SeqCst),
                    _ => {
                        let _ = stream.shutdown(Shutdown::Write);
                    }
                }
            }
            return Ok(sent);
        }
        sleep_until(shared.t0 + next);
        if !shared.is_live() {
            return Ok(sent); // the server hung up: a real Asterisk stops at once
        }
        let written = if digit_due == Some(next) {
            let (_, digit) = digits.next().expect("peeked");
            stream.write_all(&[KIND_DTMF, 0, 1, *digit as u8])
        } else {
            if next_audio < opts.duration {
                source.fill(&mut samples);
            } else {
                samples.fill(0);
            }
            encode_frame(opts.codec, &samples, &mut frame);
            next_audio += FRAME;
            stream.write_all(&frame).map(|()| sent.frames_sent += 1)
        };
        match written {
            Ok(()) => {}
            // The receiver shut our side down after a hangup, or the server went away.
            Err(_) if !shared.is_live() => return Ok(sent),
            Err(e) if is_disconnect(&e) => {
                shared.end(EndedBy::ServerClose, shared.t0.elapsed());
                sent.saw_close = true;
                return Ok(sent);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Produces successive 20 ms frames of caller audio.
struct Source<'a> {
    audio: &'a AudioSource,
    /// Samples produced so far.
    pos: usize,
}

impl<'a> Source<'a> {
    fn new(audio: &'a AudioSource) -> Self {
        Source { audio, pos: 0 }
    }

    fn fill(&mut self, out: &mut [i16; SAMPLES_PER_FRAME]) {
        match self.audio {
            AudioSource::Silence => out.fill(0),
            AudioSource::Tone { hz, amplitude } => {
                for (i, s) in out.iter_mut().enumerate() {
                    // fract() keeps sin's argument small: no phase drift on long calls.
                    let cycles = ((self.pos + i) as f64 * hz / 8000.0).fract();
                    *s = (f64::from(*amplitude) * (std::f64::consts::TAU * cycles).sin()).round()
                        as i16;
                }
            }
            AudioSource::Pcm(pcm) => {
                let start = self.pos.min(pcm.len());
                let end = (self.pos + SAMPLES_PER_FRAME).min(pcm.len());
                out[..end - start].copy_from_slice(&pcm[start..end]);
                out[end - start..].fill(0);
            }
        }
        self.pos += SAMPLES_PER_FRAME;
    }
}

/// One `0x10` frame, header and payload together for a single write. G.711 silence comes out
/// as the encoding of 0 (0xFF µ-law, 0xD5 A-law), as a real channel's would.
fn encode_frame(codec: SimCodec, samples: &[i16; SAMPLES_PER_FRAME], out: &mut Vec<u8>) {
    out.clear();
    let len = codec.frame_bytes() as u16;
    out.push(KIND_AUDIO);
    out.extend_from_slice(&len.to_be_bytes());
    match codec {
        SimCodec::Slin => samples
            .iter()
            .for_each(|s| out.extend_from_slice(&s.to_le_bytes())),
        SimCodec::Ulaw => out.extend(samples.iter().map(|&s| g711::linear_to_ulaw(s))),
        SimCodec::Alaw => out.extend(samples.iter().map(|&s| g711::linear_to_alaw(s))),
    }
}

/// Reads everything the server sends until it closes, the drain after the end runs out, or
/// (`EndMode::Reset`) it is told to stop. Priority is not raised: that needs `setpriority`
/// through libc or rustix (a new dependency here); the loop is kept to a read, a timestamp and
/// an append instead.
fn receive(stream: TcpStream, shared: &Shared, expect_frames: usize) -> io::Result<Receiver> {
    receive_into(stream, shared, Receiver::new(expect_frames))
}

/// [`receive`] with a prepared [`Receiver`] (load mode adds an echo scan to it).
fn receive_into(mut stream: TcpStream, shared: &Shared, mut rx: Receiver) -> io::Result<Receiver> {
    stream.set_read_timeout(Some(POLL))?;
    // Large enough that a burst rarely cuts a frame at the buffer's end.
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let result = stream.read(&mut buf);
        let now = shared.t0.elapsed();
        let live = shared.is_live();
        match result {
            Ok(0) => {
                rx.closed(now, "closed");
                if shared.end(EndedBy::ServerClose, now) {
                    let _ = stream.shutdown(Shutdown::Write);
                }
                break;
            }
            Ok(n) => {
                let had_hangup = rx.hangup_received;
                rx.feed(&buf[..n], now, live);
                if n == buf.len() {
                    rx.more_queued();
                }
                // Asterisk stops at once: shutting our side here also stops the sender's next write.
                if !had_hangup && rx.hangup_received && shared.end(EndedBy::ServerHangup, now) {
                    let _ = stream.shutdown(Shutdown::Write);
                }
            }
            Err(e) if is_disconnect(&e) => {
                rx.closed(now, "reset");
                shared.end(EndedBy::ServerClose, now);
                break;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
        if shared.stop_reading.load(Ordering::SeqCst) {
            break;
        }
        if !shared.is_live() {
            let (_, end) = shared.ended().expect("not live means ended");
            if shared.t0.elapsed() >= end + DRAIN {
                break;
            }
        }
    }
    rx.finish();
    Ok(rx)
}

/// Where the parser is in the byte stream.
#[derive(Clone, Copy)]
enum Parse {
    Header {
        have: usize,
        bytes: [u8; HEADER_LEN],
    },
    Payload {
        kind: u8,
        len: usize,
        got: usize,
        /// When the header's last byte arrived: Asterisk's 5 ms clock starts here.
        header_at: Duration,
    },
}

const NO_HEADER: Parse = Parse::Header {
    have: 0,
    bytes: [0; HEADER_LEN],
};

/// The strict receive side: an incremental parser fed with (bytes, arrival time). Every byte
/// in one `read()` shares that read's timestamp, so "payload completed > 5 ms after its header"
/// is measured between the read that completed the header and the one that completed the
/// payload. Kept free of I/O so the rules are unit-tested with synthetic times.
struct Receiver {
    parse: Parse,
    received: Vec<u8>,
    arrivals: Vec<Duration>,
    violations: Violations,
    hangup_received: bool,
    server_closed: bool,
    /// Last frame (any kind) while the call was live; starts at the UUID.
    last_live_frame: Duration,
    trailing_bytes: usize,
    trailing_at: Duration,
    /// The last read filled the buffer, so the rest of a cut-off frame was probably queued
    /// already: its 5 ms clock restarts at the next read instead of blaming the server for
    /// our own scheduling delay.
    restart_clock: bool,
    /// Load mode: each audio frame's payload is scanned for echo markers as it completes and
    /// then discarded, so 1,000 long calls do not keep their audio in memory.
    scan: Option<load::EchoScan>,
    /// Where the current frame's payload starts in `received`.
    frame_start: usize,
}

impl Receiver {
    fn new(expect_frames: usize) -> Self {
        Receiver {
            parse: NO_HEADER,
            received: Vec::with_capacity(expect_frames * 2 * SAMPLES_PER_FRAME),
            arrivals: Vec::with_capacity(expect_frames),
            violations: Violations::default(),
            hangup_received: false,
            server_closed: false,
            last_live_frame: Duration::ZERO,
            trailing_bytes: 0,
            trailing_at: Duration::ZERO,
            restart_clock: false,
            scan: None,
            frame_start: 0,
        }
    }

    /// Consumes bytes that arrived at `now`; `live` = the call had not ended yet.
    fn feed(&mut self, mut data: &[u8], now: Duration, live: bool) {
        if std::mem::take(&mut self.restart_clock) {
            if let Parse::Payload { header_at, .. } = &mut self.parse {
                *header_at = now;
            }
        }
        while !data.is_empty() {
            if self.hangup_received {
                // Asterisk stops reading at the hangup; anything more is a server bug.
                if self.trailing_bytes == 0 {
                    self.trailing_at = now;
                }
                self.trailing_bytes += data.len();
                return;
            }
            match self.parse {
                Parse::Header {
                    mut have,
                    mut bytes,
                } => {
                    let take = (HEADER_LEN - have).min(data.len());
                    bytes[have..have + take].copy_from_slice(&data[..take]);
                    have += take;
                    data = &data[take..];
                    self.parse = Parse::Header { have, bytes };
                    if have == HEADER_LEN {
                        let [kind, hi, lo] = bytes;
                        self.header(kind, usize::from(u16::from_be_bytes([hi, lo])), now, live);
                    }
                }
                Parse::Payload {
                    kind,
                    len,
                    got,
                    header_at,
                } => {
                    let take = (len - got).min(data.len());
                    if audiosocket::audio_rate_hz(kind).is_some() {
                        // Asterisk plays len/2 samples: a trailing odd byte is dropped.
                        let keep = len & !1;
                        let (from, to) = (got.min(keep), (got + take).min(keep));
                        self.received.extend_from_slice(&data[from - got..to - got]);
                    }
                    data = &data[take..];
                    if got + take == len {
                        self.parse = NO_HEADER;
                        self.complete(kind, len, header_at, now, live);
                    } else {
                        self.parse = Parse::Payload {
                            kind,
                            len,
                            got: got + take,
                            header_at,
                        };
                    }
                }
            }
        }
    }

    /// The read that just ended filled the whole buffer; see `restart_clock`.
    fn more_queued(&mut self) {
        self.restart_clock = true;
    }

    /// A header is complete: judge it the way Asterisk's parser does (audiosocket.md §1.4).
    fn header(&mut self, kind: u8, len: usize, now: Duration, live: bool) {
        if kind == KIND_HANGUP {
            // Asterisk acts on the kind alone; a payload would count as trailing bytes.
            self.parse = NO_HEADER;
            self.hangup_received = true;
            self.activity(now, live);
            return;
        }
        if audiosocket::audio_rate_hz(kind).is_none() {
            self.violations.push(
                now,
                format!(
                    "frame of kind 0x{kind:02x} ({}, {len} bytes): Asterisk accepts only 0x00 and \
                     audio 0x10-0x18 and drops the call",
                    audiosocket::kind_name(kind)
                ),
            );
        } else if len == 0 {
            self.violations.push(
                now,
                format!(
                    "audio frame (kind 0x{kind:02x}) with length 0: Asterisk drops the call \
                     (Invalid message length)"
                ),
            );
        } else if len % 2 == 1 {
            self.violations.push(
                now,
                format!(
                    "audio frame (kind 0x{kind:02x}) with odd length {len}: 16-bit samples need \
                     an even length; Asterisk drops the last byte"
                ),
            );
        }
        self.frame_start = self.received.len();
        if len == 0 {
            self.parse = NO_HEADER;
            self.activity(now, live);
        } else {
            self.parse = Parse::Payload {
                kind,
                len,
                got: 0,
                header_at: now,
            };
        }
    }

    /// A frame with a payload is complete.
    fn complete(&mut self, kind: u8, len: usize, header_at: Duration, now: Duration, live: bool) {
        let wait = now.saturating_sub(header_at);
        if wait > PAYLOAD_LIMIT {
            self.violations.push(
                now,
                format!(
                    "payload of a {len}-byte kind 0x{kind:02x} frame completed {} after its header \
                     (Asterisk waits at most 5 ms, then drops the call; write each frame in one write)",
                    ms(wait)
                ),
            );
        }
        if audiosocket::audio_rate_hz(kind).is_some() {
            self.arrivals.push(now);
            if let Some(scan) = &mut self.scan {
                scan.frame(&self.received[self.frame_start..], now);
                self.received.truncate(self.frame_start);
            }
        }
        self.activity(now, live);
    }

    /// Any complete frame restarts Asterisk's inactivity clock.
    fn activity(&mut self, now: Duration, live: bool) {
        if !live {
            return;
        }
        let silent = now.saturating_sub(self.last_live_frame);
        if silent > INACTIVITY_LIMIT {
            self.violations.push(
                now,
                format!(
                    "no frame from the server for {} (Asterisk ends the call after 2 s of inactivity)",
                    secs(silent)
                ),
            );
        }
        self.last_live_frame = now;
    }

    /// EOF or reset from the server.
    fn closed(&mut self, now: Duration, how: &str) {
        self.server_closed = true;
        let detail = match self.parse {
            Parse::Header { have: 0, .. } => return,
            Parse::Header { have, .. } => format!("after {have} of {HEADER_LEN} header bytes"),
            Parse::Payload { kind, len, got, .. } => {
                format!("kind 0x{kind:02x} frame with {got} of {len} payload bytes")
            }
        };
        self.violations.push(
            now,
            format!("connection {how} in the middle of a frame: {detail} (Asterisk: Insufficient payload read)"),
        );
    }

    fn finish(&mut self) {
        if self.trailing_bytes > 0 {
            self.violations.push(
                self.trailing_at,
                format!(
                    "{} bytes arrived after the hangup frame (Asterisk stops reading at 00 00 00)",
                    self.trailing_bytes
                ),
            );
        }
    }
}

/// Violation lines, capped so a server that breaks a rule every frame still gives a short report.
#[derive(Default)]
struct Violations {
    list: Vec<String>,
    dropped: usize,
}

impl Violations {
    fn push(&mut self, at: Duration, what: String) {
        if self.list.len() < MAX_VIOLATIONS {
            self.list.push(format!("at {}: {what}", secs(at)));
        } else {
            self.dropped += 1;
        }
    }

    fn into_vec(mut self) -> Vec<String> {
        if self.dropped > 0 {
            self.list.push(format!(
                "... and {} more violations not listed",
                self.dropped
            ));
        }
        self.list
    }
}

/// The most arrivals (sorted ascending) inside any half-open window `[t, t + window)`. Exact:
/// the best window can always start at an arrival. Half-open so perfect 20 ms pacing gives 5
/// per 100 ms, not 6.
pub fn window_max(arrivals: &[Duration], window: Duration) -> usize {
    let mut best = 0;
    let mut start = 0;
    for end in 0..arrivals.len() {
        while start <= end && arrivals[end].saturating_sub(arrivals[start]) >= window {
            start += 1;
        }
        best = best.max(end + 1 - start);
    }
    best
}

/// Differences between consecutive arrivals.
pub fn gaps(arrivals: &[Duration]) -> Vec<Duration> {
    arrivals
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .collect()
}

/// Nearest-rank percentile (`pct` in 0–100) of ascending `sorted` values; zero when empty.
/// Nearest-rank returns an observed value, so p99 of 100 gaps is the second largest.
pub fn percentile(sorted: &[Duration], pct: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (pct / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Loads caller audio: `.wav` (any case) must be PCM 16-bit mono 8 kHz; anything else is
/// taken as raw 8 kHz s16le mono, the format of the server's `AMBIENT_NOISE_FILE`.
pub fn load_audio(path: &Path) -> Result<Vec<i16>, SimError> {
    let is_wav = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("wav"));
    if is_wav {
        load_wav(path)
    } else {
        load_raw(path)
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, SimError> {
    std::fs::read(path).map_err(|e| SimError::Audio {
        path: path.into(),
        reason: format!("cannot read it: {e}"),
    })
}

fn load_wav(path: &Path) -> Result<Vec<i16>, SimError> {
    parse_wav(&read_file(path)?).map_err(|reason| SimError::Audio {
        path: path.into(),
        reason,
    })
}

fn load_raw(path: &Path) -> Result<Vec<i16>, SimError> {
    let bytes = read_file(path)?;
    if bytes.len() % 2 == 1 {
        return Err(SimError::Audio {
            path: path.into(),
            reason: format!(
                "has an odd length ({} bytes); raw audio must be 8 kHz 16-bit little-endian mono",
                bytes.len()
            ),
        });
    }
    Ok(samples_le(&bytes))
}

fn samples_le(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// Samples of a RIFF/WAVE PCM 16-bit mono 8 kHz file. The error says what the file is and
/// what is needed, so the user knows how to convert it.
pub fn parse_wav(bytes: &[u8]) -> Result<Vec<i16>, String> {
    const NEED: &str = "the simulator needs PCM 16-bit mono 8000 Hz \
                        (convert with e.g. `sox in.wav -r 8000 -c 1 -b 16 -e signed out.wav`)";
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(format!("is not a RIFF/WAVE file; {NEED}"));
    }
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let mut format = None;
    let mut rest = &bytes[12..];
    while rest.len() >= 8 {
        let id = &rest[..4];
        let size = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let body = &rest[8..];
        // Streamed WAVs may announce more data than the file holds: take what is there.
        let chunk = &body[..size.min(body.len())];
        match id {
            b"fmt " if chunk.len() >= 16 => {
                let mut tag = u16_at(chunk, 0);
                if tag == 0xfffe && chunk.len() >= 26 {
                    tag = u16_at(chunk, 24); // WAVE_FORMAT_EXTENSIBLE: sub-format GUID
                }
                let channels = u16_at(chunk, 2);
                let rate = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
                let bits = u16_at(chunk, 14);
                format = Some((tag, channels, rate, bits));
            }
            b"data" => {
                let Some((tag, channels, rate, bits)) = format else {
                    return Err(format!("has its data before its fmt chunk; {NEED}"));
                };
                if (tag, channels, rate, bits) != (1, 1, 8000, 16) {
                    let encoding = match tag {
                        1 => format!("{bits}-bit PCM"),
                        3 => format!("{bits}-bit float"),
                        6 => "A-law".into(),
                        7 => "µ-law".into(),
                        other => format!("encoding 0x{other:04x}"),
                    };
                    let layout = match channels {
                        1 => "mono".to_string(),
                        2 => "stereo".to_string(),
                        n => format!("{n}-channel"),
                    };
                    return Err(format!("is a {layout} {rate} Hz {encoding} WAV; {NEED}"));
                }
                return Ok(samples_le(chunk));
            }
            _ => {}
        }
        // Chunks are padded to an even size.
        let skip = (8 + size + (size & 1)).min(rest.len());
        rest = &rest[skip..];
    }
    Err(format!(
        "has no {} chunk; {NEED}",
        if format.is_some() { "data" } else { "fmt" }
    ))
}

/// A 44-byte-header WAV (PCM 16-bit mono 8 kHz) around s16le bytes, for `--record`.
pub fn wav_bytes(pcm_le: &[u8]) -> Vec<u8> {
    let data = &pcm_le[..pcm_le.len() & !1];
    let data_len = u32::try_from(data.len()).unwrap_or(u32::MAX - 36) & !1;
    let data = &data[..data_len as usize];
    let mut out = Vec::with_capacity(44 + data.len());
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&8000u32.to_le_bytes());
    out.extend_from_slice(&16_000u32.to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(data);
    out
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

const USAGE: &str = "\
avr-core simulate — act as Asterisk's AudioSocket(): place one call, report what came back

USAGE:
    avr-core simulate [OPTIONS]

OPTIONS:
    --addr HOST:PORT   AudioSocket server to call (default 127.0.0.1:5001)
    --uuid UUID        call id, 8-4-4-4-12 hex (default: random)
    --tone HZ          send a sine tone at amplitude 8000 (default: 440 Hz)
    --wav FILE         send a WAV file (PCM 16-bit mono 8000 Hz); silence follows its end
    --raw FILE         send raw 8 kHz 16-bit little-endian mono PCM; silence follows its end
    --seconds S        how long to send caller audio (default 5; fractions allowed)
    --codec C          slin (320-byte frames, default), ulaw or alaw (160-byte frames);
                       all labelled 0x10, as Dial(AudioSocket/...) without c(slin) does
    --dtmf T:D[,T:D]   send DTMF digit D (0-9 * # A-D) T seconds after the UUID; repeatable
    --record FILE      write the audio received from the server as a WAV (8 kHz mono 16-bit)
    --end MODE         close: FIN after --seconds (default)
                       reset: close with unread data, so the server sees a reset
                       await: keep sending silence until the server hangs up (up to 15 s more)
    -h, --help         show this text

The report covers frames, pacing, time to the first frame and every protocol violation that
would make current Asterisk drop the call.

EXIT STATUS: 0 no violations, 1 violations found, 2 usage or connection error

LOAD MODE (many calls at once, against avr-core running with `echo-sts` as its agent):
    avr-core simulate --calls N [--seconds S] [--addr HOST:PORT] [--ramp-ms M]
                      [--echo-delay-ms D] [--show K]
    --calls N          concurrent calls (at most 10000)
    --seconds S        marked caller audio per call (default 10); then silence for the echo
                       delay + 1 s so the last echoes come back, then the caller closes
    --ramp-ms M        spread the call starts over M ms (default 1000)
    --echo-delay-ms D  the agent's delay (echo-sts --delay-ms; default 200), taken out of the
                       round trip
    --show K           list at most K calls (failed first, then the worst paced; default 20)
  Every caller frame carries its sequence number in its samples, so each echo is matched to
  the frame it repeats: the report gives pacing at the caller, the round trip without the
  agent's delay, frames never echoed, unexpected hangups and protocol violations, per call
  and in aggregate. Exit 0 when all calls were clean, 1 otherwise, 2 on a usage error.
";

/// A parsed command line.
#[derive(Debug)]
struct Cli {
    opts: SimOptions,
    record: Option<PathBuf>,
}

#[derive(Debug)]
enum Parsed {
    Help,
    Run(Box<Cli>),
}

/// `avr-core simulate`: exit 0 = no violations, 1 = violations, 2 = usage/connection error.
pub fn main(args: &[String]) -> ExitCode {
    if args
        .iter()
        .any(|a| a == "--calls" || a.starts_with("--calls="))
    {
        return load::main(args);
    }
    let cli = match parse_args(args) {
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Run(cli)) => cli,
        Err(e) => {
            eprintln!("avr-core simulate: {e}\nrun `avr-core simulate --help` for the options");
            return ExitCode::from(2);
        }
    };
    let report = match run_call(&cli.opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("avr-core simulate: {e}");
            return ExitCode::from(2);
        }
    };
    print!("{}", report.summary());
    if let Some(path) = &cli.record {
        match std::fs::write(path, wav_bytes(&report.received)) {
            Ok(()) => println!("  recorded:    {}", path.display()),
            Err(e) => {
                eprintln!(
                    "avr-core simulate: --record: cannot write {}: {e}",
                    path.display()
                );
                return ExitCode::from(2);
            }
        }
    }
    if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn parse_args(args: &[String]) -> Result<Parsed, String> {
    let mut addr = "127.0.0.1:5001".to_string();
    let mut uuid = None;
    let mut audio: Option<(&str, AudioSource)> = None;
    let mut seconds = 5.0;
    let mut codec = SimCodec::Slin;
    let mut dtmf = Vec::new();
    let mut record = None;
    let mut end = EndMode::Close;

    let mut flags = Flags::new(args);
    while let Some((arg, flag, inline)) = flags.next_flag() {
        let mut value = |what: &str| flags.value(flag, inline, what);
        match flag {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--addr" => addr = value("HOST:PORT")?,
            "--uuid" => {
                let v = value("a UUID")?;
                uuid = Some(
                    audiosocket::CallId::parse(&v)
                        .map(|id| *id.as_bytes())
                        .ok_or_else(|| {
                            format!(
                                "--uuid: {v:?} is not a UUID; expected 8-4-4-4-12 hex digits, \
                         e.g. 1b4e28ba-2fa1-11d2-883f-0016d3cca427"
                            )
                        })?,
                );
            }
            "--tone" | "--wav" | "--raw" => {
                if let Some((other, _)) = audio {
                    return Err(format!(
                        "{flag} and {other} both choose the audio; give one of --tone, --wav, --raw"
                    ));
                }
                let source = match flag {
                    "--tone" => {
                        let v = value("a frequency in Hz")?;
                        let hz = v
                            .parse::<f64>()
                            .ok()
                            .filter(|hz| *hz > 0.0 && *hz < 4000.0)
                            .ok_or_else(|| {
                                format!("--tone: {v:?} is not a frequency between 0 and 4000 Hz (8 kHz audio)")
                            })?;
                        AudioSource::Tone {
                            hz,
                            amplitude: CLI_TONE_AMPLITUDE,
                        }
                    }
                    "--wav" => {
                        let path = PathBuf::from(value("a WAV file")?);
                        AudioSource::Pcm(Arc::new(
                            load_wav(&path).map_err(|e| format!("--wav: {e}"))?,
                        ))
                    }
                    _ => {
                        let path = PathBuf::from(value("a raw s16le file")?);
                        AudioSource::Pcm(Arc::new(
                            load_raw(&path).map_err(|e| format!("--raw: {e}"))?,
                        ))
                    }
                };
                audio = Some((flag, source));
            }
            "--seconds" => {
                let v = value("a number of seconds")?;
                seconds = parse_seconds(&v).filter(|s| *s > 0.0).ok_or_else(|| {
                    format!("--seconds: {v:?} is not a positive number of seconds (e.g. 5 or 2.5)")
                })?;
            }
            "--codec" => {
                let v = value("slin, ulaw or alaw")?;
                codec = match v.to_ascii_lowercase().as_str() {
                    "slin" => SimCodec::Slin,
                    "ulaw" | "mulaw" => SimCodec::Ulaw,
                    "alaw" => SimCodec::Alaw,
                    _ => return Err(format!("--codec: {v:?} is not one of slin, ulaw, alaw")),
                };
            }
            "--dtmf" => dtmf.extend(parse_dtmf(&value("OFFSET:DIGIT[,OFFSET:DIGIT]")?)?),
            "--record" => record = Some(PathBuf::from(value("a WAV file to write")?)),
            "--end" => {
                let v = value("close, reset or await")?;
                end = match v.as_str() {
                    "close" => EndMode::Close,
                    "reset" => EndMode::Reset,
                    "await" => EndMode::AwaitHangup(CLI_AWAIT),
                    _ => return Err(format!("--end: {v:?} is not one of close, reset, await")),
                };
            }
            _ => return Err(format!("unknown option {arg:?}")),
        }
    }

    let resolved = addr.to_socket_addrs().map_err(|e| {
        format!("--addr: cannot resolve {addr:?} ({e}); expected HOST:PORT, e.g. 127.0.0.1:5001")
    })?;
    let addr = resolved
        .into_iter()
        .next()
        .ok_or_else(|| format!("--addr: {addr:?} resolves to no address"))?;
    let duration = Duration::from_secs_f64(seconds);
    let last_offset = match end {
        EndMode::AwaitHangup(wait) => duration + wait,
        _ => duration,
    };
    if let Some((at, digit)) = dtmf.iter().find(|(at, _)| *at >= last_offset) {
        return Err(format!(
            "--dtmf: digit {digit} at {} s falls after the call ends (--seconds {seconds})",
            at.as_secs_f64()
        ));
    }
    let mut opts = SimOptions::new(addr);
    if let Some(uuid) = uuid {
        opts.uuid = uuid;
    }
    opts.audio = audio.map_or(
        AudioSource::Tone {
            hz: 440.0,
            amplitude: CLI_TONE_AMPLITUDE,
        },
        |(_, source)| source,
    );
    opts.duration = duration;
    opts.codec = codec;
    opts.dtmf = dtmf;
    opts.end = end;
    Ok(Parsed::Run(Box::new(Cli { opts, record })))
}

/// A `--flag value` / `--flag=value` command line, read one flag at a time.
pub(crate) struct Flags<'a> {
    it: std::slice::Iter<'a, String>,
}

impl<'a> Flags<'a> {
    pub(crate) fn new(args: &'a [String]) -> Self {
        Flags { it: args.iter() }
    }

    /// The next argument, its flag part and its inline (`=`) value.
    pub(crate) fn next_flag(&mut self) -> Option<(&'a str, &'a str, Option<&'a str>)> {
        let arg = self.it.next()?.as_str();
        Some(match arg.split_once('=') {
            Some((flag, v)) if flag.starts_with("--") => (arg, flag, Some(v)),
            _ => (arg, arg, None),
        })
    }

    /// The value of `flag`: its inline one, else the next argument.
    pub(crate) fn value(
        &mut self,
        flag: &str,
        inline: Option<&str>,
        what: &str,
    ) -> Result<String, String> {
        inline
            .map(str::to_string)
            .or_else(|| self.it.next().cloned())
            .ok_or_else(|| format!("{flag} needs a value: {what}"))
    }
}

/// Finite, non-negative, and small enough for a `Duration` (a day is plenty for a test call).
fn parse_seconds(s: &str) -> Option<f64> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && (0.0..=86_400.0).contains(v))
}

/// `1.5:5,2.0:#` → digits at offsets (seconds from the UUID). Lowercase a-d are accepted.
fn parse_dtmf(arg: &str) -> Result<Vec<(Duration, char)>, String> {
    arg.split(',')
        .map(|item| {
            let bad = |why: &str| {
                format!(
                    "--dtmf: {item:?} {why}; expected OFFSET:DIGIT like 1.5:5, digits 0-9 * # A-D"
                )
            };
            let (offset, digit) = item
                .trim()
                .split_once(':')
                .ok_or_else(|| bad("has no ':'"))?;
            let offset =
                parse_seconds(offset).ok_or_else(|| bad("has no valid offset in seconds"))?;
            let mut chars = digit.chars();
            let digit = match (chars.next(), chars.next()) {
                (Some(c), None) if is_dtmf(c.to_ascii_uppercase()) => c.to_ascii_uppercase(),
                _ => return Err(bad("has no valid digit")),
            };
            Ok((Duration::from_secs_f64(offset), digit))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn run_cli(s: &str) -> Cli {
        match parse_args(&args(s)).unwrap() {
            Parsed::Run(cli) => *cli,
            Parsed::Help => panic!("help"),
        }
    }

    fn wav(channels: u16, rate: u32, bits: u16, samples: &[i16], extra_chunk: bool) -> Vec<u8> {
        let mut data = Vec::new();
        for s in samples {
            data.extend_from_slice(&s.to_le_bytes());
        }
        let mut body = b"WAVE".to_vec();
        body.extend_from_slice(b"fmt ");
        body.extend_from_slice(&16u32.to_le_bytes());
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&channels.to_le_bytes());
        body.extend_from_slice(&rate.to_le_bytes());
        body.extend_from_slice(&(rate * u32::from(channels * bits / 8)).to_le_bytes());
        body.extend_from_slice(&(channels * bits / 8).to_le_bytes());
        body.extend_from_slice(&bits.to_le_bytes());
        if extra_chunk {
            body.extend_from_slice(b"LIST");
            body.extend_from_slice(&3u32.to_le_bytes());
            body.extend_from_slice(&[1, 2, 3, 0]); // odd size + pad byte
        }
        body.extend_from_slice(b"data");
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(&data);
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn window_max_counts_half_open_windows() {
        assert_eq!(window_max(&[], d(100)), 0);
        assert_eq!(window_max(&[d(5)], d(100)), 1);
        let paced: Vec<_> = (0..50).map(|i| d(20 * i)).collect();
        assert_eq!(window_max(&paced, d(100)), 5);
        assert_eq!(window_max(&paced, d(101)), 6);
        assert_eq!(window_max(&paced, Duration::ZERO), 0);
        let mut burst = paced.clone();
        burst.extend(std::iter::repeat_n(d(2000), 20));
        burst.push(d(2099));
        burst.push(d(2100)); // just outside [2000, 2100)
        assert_eq!(window_max(&burst, d(100)), 21);
        // A window may start mid-stream: 980 plus the burst at 1000.
        let mut near = paced.clone();
        near.extend(std::iter::repeat_n(d(1000), 20));
        assert_eq!(window_max(&near, d(100)), 24);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
        let v: Vec<_> = (1..=100).map(d).collect();
        assert_eq!(percentile(&v, 50.0), d(50));
        assert_eq!(percentile(&v, 99.0), d(99));
        assert_eq!(percentile(&v, 100.0), d(100));
        assert_eq!(percentile(&v, 0.0), d(1));
        assert_eq!(percentile(&[d(7)], 99.0), d(7));
        assert_eq!(percentile(&[d(1), d(2), d(3)], 50.0), d(2));
        assert_eq!(gaps(&[d(0), d(20), d(45)]), vec![d(20), d(25)]);
        assert!(gaps(&[d(3)]).is_empty());
    }

    #[test]
    fn wav_parsing() {
        let samples = [0i16, 1, -1, 32767, -32768];
        assert_eq!(
            parse_wav(&wav(1, 8000, 16, &samples, false)).unwrap(),
            samples
        );
        assert_eq!(
            parse_wav(&wav(1, 8000, 16, &samples, true)).unwrap(),
            samples
        );
        assert_eq!(parse_wav(&wav_bytes(&[1, 0, 2, 0, 9])).unwrap(), [1, 2]);
        let e = parse_wav(&wav(2, 44100, 16, &samples, false)).unwrap_err();
        assert!(
            e.contains("stereo 44100 Hz 16-bit PCM") && e.contains("mono 8000 Hz"),
            "{e}"
        );
        let e = parse_wav(&wav(1, 8000, 8, &samples, false)).unwrap_err();
        assert!(e.contains("8-bit PCM"), "{e}");
        let e = parse_wav(b"ID3\x03 not a wav at all").unwrap_err();
        assert!(e.contains("not a RIFF/WAVE"), "{e}");
        let mut truncated = wav(1, 8000, 16, &samples, false);
        truncated.truncate(40);
        assert!(parse_wav(&truncated).unwrap_err().contains("no data chunk"));
    }

    #[test]
    fn load_audio_by_extension() {
        let dir = std::env::temp_dir().join(format!("sim-audio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let w = dir.join("a.WAV");
        std::fs::write(&w, wav(1, 8000, 16, &[5, 6], false)).unwrap();
        assert_eq!(load_audio(&w).unwrap(), [5, 6]);
        let r = dir.join("a.raw");
        std::fs::write(&r, [5, 0, 6, 0]).unwrap();
        assert_eq!(load_audio(&r).unwrap(), [5, 6]);
        std::fs::write(&r, [5, 0, 6]).unwrap();
        let e = load_audio(&r).unwrap_err().to_string();
        assert!(e.contains("a.raw") && e.contains("odd length"), "{e}");
        let e = load_audio(&dir.join("missing.wav"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.wav: cannot read it"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dtmf_arguments() {
        assert_eq!(
            parse_dtmf("1.5:5,2.0:#").unwrap(),
            vec![(d(1500), '5'), (d(2000), '#')]
        );
        assert_eq!(parse_dtmf("0:a").unwrap(), vec![(d(0), 'A')]);
        for bad in ["5", "x:5", "1:E", "1:55", "-1:5", "1:"] {
            let e = parse_dtmf(bad).unwrap_err();
            assert!(
                e.starts_with("--dtmf") && e.contains("0-9 * # A-D"),
                "{bad}: {e}"
            );
        }
        let cli = run_cli("--dtmf 1:1 --dtmf=0.5:*,2:D --seconds 3");
        assert_eq!(
            cli.opts.dtmf,
            [(d(1000), '1'), (d(500), '*'), (d(2000), 'D')]
        );
        let e = parse_args(&args("--dtmf 6:1")).unwrap_err();
        assert!(e.contains("after the call ends"), "{e}");
        assert!(parse_args(&args("--dtmf 6:1 --end await")).is_ok());
    }

    #[test]
    fn cli_defaults_and_errors() {
        let cli = run_cli("");
        assert_eq!(cli.opts.addr, "127.0.0.1:5001".parse().unwrap());
        assert_eq!(cli.opts.duration, d(5000));
        assert_eq!(cli.opts.codec, SimCodec::Slin);
        assert_eq!(cli.opts.end, EndMode::Close);
        assert!(matches!(cli.opts.audio, AudioSource::Tone { hz, amplitude: 8000 } if hz == 440.0));
        let cli = run_cli(
            "--addr 127.0.0.1:9 --uuid 1B4E28BA-2FA1-11D2-883F-0016D3CCA427 --seconds 0.25 \
             --codec alaw --end await --record /tmp/x.wav --tone 1000",
        );
        assert_eq!(
            audiosocket::CallId::from_bytes(cli.opts.uuid).to_string(),
            "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
        );
        assert_eq!(cli.opts.duration, d(250));
        assert_eq!(cli.opts.codec, SimCodec::Alaw);
        assert_eq!(cli.opts.end, EndMode::AwaitHangup(CLI_AWAIT));
        assert_eq!(cli.record, Some(PathBuf::from("/tmp/x.wav")));
        assert!(matches!(parse_args(&args("--help")), Ok(Parsed::Help)));
        for (line, needle) in [
            ("--seconds", "--seconds needs a value"),
            ("--seconds abc", "--seconds: \"abc\""),
            ("--seconds 0", "positive number"),
            (
                "--codec g729",
                "--codec: \"g729\" is not one of slin, ulaw, alaw",
            ),
            (
                "--end hang",
                "--end: \"hang\" is not one of close, reset, await",
            ),
            ("--uuid 123", "--uuid: \"123\" is not a UUID"),
            ("--tone 5000", "--tone"),
            ("--tone 440 --raw x", "give one of --tone, --wav, --raw"),
            (
                "--wav /nonexistent/x.wav",
                "--wav: /nonexistent/x.wav: cannot read it",
            ),
            ("--addr nonsense", "--addr"),
            ("--bogus", "unknown option \"--bogus\""),
        ] {
            let e = parse_args(&args(line)).unwrap_err();
            assert!(e.contains(needle), "{line}: {e}");
        }
    }

    #[test]
    fn frames_are_encoded_like_asterisk() {
        let mut out = Vec::new();
        let silence = [0i16; SAMPLES_PER_FRAME];
        encode_frame(SimCodec::Slin, &silence, &mut out);
        assert_eq!(out[..3], [0x10, 0x01, 0x40]);
        assert_eq!(out.len(), 323);
        encode_frame(SimCodec::Ulaw, &silence, &mut out);
        assert_eq!(out[..3], [0x10, 0x00, 0xa0]);
        assert!(out[3..].iter().all(|&b| b == 0xff) && out.len() == 163);
        encode_frame(SimCodec::Alaw, &silence, &mut out);
        assert!(out[3..].iter().all(|&b| b == 0xd5) && out.len() == 163);

        let pcm = AudioSource::Pcm(Arc::new((1..=200).collect()));
        let mut src = Source::new(&pcm);
        let mut frame = [0i16; SAMPLES_PER_FRAME];
        src.fill(&mut frame);
        assert_eq!(frame[0], 1);
        assert_eq!(frame[159], 160);
        src.fill(&mut frame);
        assert_eq!(frame[39], 200);
        assert!(frame[40..].iter().all(|&s| s == 0));
    }

    #[test]
    fn receiver_rules_with_synthetic_times() {
        let mut rx = Receiver::new(8);
        let good = audiosocket::encode(0x10, &[7; 320]).unwrap();
        // Header split across reads is fine; payload 4 ms after the header is fine.
        rx.feed(&good[..2], d(10), true);
        rx.feed(&good[2..100], d(11), true);
        rx.feed(&good[100..], d(15), true);
        // 6 ms is not.
        rx.feed(&good[..3], d(20), true);
        rx.feed(&good[3..], d(26), true);
        assert_eq!(rx.arrivals, [d(15), d(26)]);
        assert_eq!(rx.received, [7; 640]);
        assert_eq!(rx.violations.list.len(), 1);
        assert!(rx.violations.list[0].contains("at 0.026 s"));
        assert!(rx.violations.list[0].contains("6.0 ms after its header"));
        // A 2.1 s silence while live is flagged; after the end it is not.
        rx.feed(&good, d(2126), true);
        assert!(rx.violations.list[1].contains("no frame from the server for 2.100 s"));
        rx.feed(&good, d(9000), false);
        assert_eq!(rx.violations.list.len(), 2);
        // Hangup then stray bytes; EOF afterwards is clean.
        rx.feed(&[0, 0, 0, 0x10, 0], d(9010), false);
        rx.feed(&[2], d(9011), false);
        rx.closed(d(9012), "closed");
        rx.finish();
        assert!(rx.hangup_received && rx.server_closed);
        assert!(rx.violations.list[2].contains("3 bytes arrived after the hangup frame"));
        assert_eq!(rx.arrivals.len(), 4);

        // A frame cut off by a full read buffer is timed from the next read.
        let mut rx = Receiver::new(1);
        rx.feed(&good[..50], d(100), true);
        rx.more_queued();
        rx.feed(&good[50..], d(120), true);
        assert!(rx.violations.list.is_empty());
        assert_eq!(rx.arrivals, [d(120)]);

        let mut rx = Receiver::new(1);
        rx.feed(&[0x10, 0x01, 0x40, 1, 2], d(1), true);
        rx.closed(d(2), "reset");
        assert!(rx.violations.list[0]
            .contains("reset in the middle of a frame: kind 0x10 frame with 2 of 320"));
    }

    #[test]
    fn violations_are_capped() {
        let mut rx = Receiver::new(1);
        for i in 0..150 {
            rx.feed(&[0x10, 0, 0], d(i), true);
        }
        let v = rx.violations.into_vec();
        assert_eq!(v.len(), MAX_VIOLATIONS + 1);
        assert!(v[MAX_VIOLATIONS].contains("50 more"));
    }

    /// A one-connection fake server; `serve` runs on its own thread with the accepted socket.
    fn fake_server<T: Send + 'static>(
        serve: impl FnOnce(TcpStream) -> T + Send + 'static,
    ) -> (SocketAddr, thread::JoinHandle<T>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = thread::Builder::new()
            .name("fake-server".into())
            .spawn(move || {
                let (stream, _) = listener.accept().unwrap();
                stream.set_nodelay(true).unwrap();
                serve(stream)
            })
            .unwrap();
        (addr, handle)
    }

    /// Reads the UUID message, asserting it arrives as one piece.
    fn read_hello(s: &mut TcpStream) -> Vec<u8> {
        let mut hello = [0u8; 19];
        let n = s.read(&mut hello).unwrap();
        hello[..n].to_vec()
    }

    /// Next frame from the simulator; None at EOF or reset.
    fn read_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
        let mut header = [0u8; 3];
        s.read_exact(&mut header).ok()?;
        let mut payload = vec![0u8; usize::from(u16::from_be_bytes([header[1], header[2]]))];
        s.read_exact(&mut payload).ok()?;
        Some((header[0], payload))
    }

    /// Reads until EOF so the server closes with a FIN, never an RST.
    fn drain(s: &mut TcpStream) {
        let _ = io::copy(s, &mut io::sink());
    }

    fn hello_for(uuid: &[u8; 16]) -> Vec<u8> {
        let mut v = vec![1, 0, 16];
        v.extend_from_slice(uuid);
        v
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        audiosocket::encode(0x10, payload).unwrap()
    }

    #[test]
    fn echo_server_then_hangup() {
        let (addr, server) = fake_server(|mut s| {
            let hello = read_hello(&mut s);
            let uuid_at = Instant::now();
            let (mut echoed, mut digit) = (0, None);
            while echoed < 25 {
                let (kind, payload) = read_frame(&mut s).expect("a frame");
                match kind {
                    0x10 => {
                        s.write_all(&frame(&payload)).unwrap();
                        echoed += 1;
                    }
                    0x03 => digit = Some((payload, echoed, uuid_at.elapsed())),
                    other => panic!("unexpected kind {other:#x}"),
                }
            }
            s.write_all(&audiosocket::HANGUP).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut after = 0;
            while let Some((kind, _)) = read_frame(&mut s) {
                after += usize::from(kind == 0x10);
            }
            (hello, digit, after)
        });
        let mut opts = SimOptions::new(addr);
        opts.audio = AudioSource::Tone {
            hz: 440.0,
            amplitude: 8000,
        };
        opts.dtmf = vec![(d(100), '5')];
        let report = run_call(&opts).unwrap();
        let (hello, digit, after) = server.join().unwrap();

        assert_eq!(hello, hello_for(&opts.uuid), "UUID message in one write");
        assert!(report.violations.is_empty(), "{}", report.summary());
        assert!(report.hangup_received && report.server_closed);
        assert_eq!(report.ended_by, EndedBy::ServerHangup);
        assert_eq!(report.frames_received, 25);
        assert!(
            (25..=27).contains(&report.frames_sent),
            "{}",
            report.frames_sent
        );
        assert!(after <= 1, "{after} frames sent after the hangup");
        assert!(report.duration < d(2000), "{}", report.summary());
        // What came back is exactly the tone we sent.
        let mut src = Source::new(&opts.audio);
        let mut expected = Vec::new();
        let mut samples = [0i16; SAMPLES_PER_FRAME];
        for _ in 0..25 {
            src.fill(&mut samples);
            samples
                .iter()
                .for_each(|s| expected.extend_from_slice(&s.to_le_bytes()));
        }
        assert_eq!(report.received, expected);
        // DTMF: 03 00 01 '5', after exactly the 5 audio frames due before 100 ms.
        let (payload, frames_before, at) = digit.expect("DTMF arrived");
        assert_eq!(payload, b"5");
        assert_eq!(frames_before, 5);
        assert!(at >= d(90) && at < d(1000), "DTMF at {at:?}");
        assert_eq!(report.summary().lines().count(), 7);
    }

    #[test]
    fn burst_is_measured() {
        let (addr, server) = fake_server(|mut s| {
            read_hello(&mut s);
            let mut burst: Vec<u8> = (0..20).flat_map(|_| frame(&[0; 320])).collect();
            burst.extend_from_slice(&audiosocket::HANGUP);
            s.write_all(&burst).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            drain(&mut s);
        });
        let report = run_call(&SimOptions::new(addr)).unwrap();
        server.join().unwrap();
        assert!(report.max_frames_in_100ms >= 20, "{}", report.summary());
        assert_eq!(report.frames_received, 20);
        assert_eq!(report.received.len(), 20 * 320);
        assert_eq!(report.ended_by, EndedBy::ServerHangup);
        assert!(report.violations.is_empty(), "{}", report.summary());
    }

    #[test]
    fn protocol_violations_are_reported() {
        let (addr, server) = fake_server(|mut s| {
            read_hello(&mut s);
            s.write_all(&[0x03, 0, 1, b'1']).unwrap();
            s.write_all(&[0x10, 0, 0]).unwrap();
            s.write_all(&[0x10, 0, 3, 1, 2, 3]).unwrap();
            s.write_all(&[0x10, 0x01, 0x40]).unwrap();
            thread::sleep(d(30)); // creates the late payload
            s.write_all(&[0; 320]).unwrap();
            s.write_all(&frame(&[0; 320])).unwrap();
            s.write_all(&audiosocket::HANGUP).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            drain(&mut s);
        });
        let report = run_call(&SimOptions::new(addr)).unwrap();
        server.join().unwrap();
        let v = &report.violations;
        assert_eq!(v.len(), 4, "{}", report.summary());
        assert!(v[0].contains("kind 0x03 (dtmf"), "{}", v[0]);
        assert!(v[1].contains("with length 0"), "{}", v[1]);
        assert!(v[2].contains("odd length 3"), "{}", v[2]);
        assert!(
            v[3].contains("320-byte kind 0x10 frame completed"),
            "{}",
            v[3]
        );
        // Odd frame (2 bytes kept), the late one and the good one count as audio.
        assert_eq!(report.frames_received, 3);
        assert_eq!(report.received.len(), 2 + 320 + 320);
        assert!(report.hangup_received);
    }

    #[test]
    fn trailing_bytes_and_truncated_frames() {
        let (addr, server) = fake_server(|mut s| {
            read_hello(&mut s);
            let mut tail = frame(&[0; 320]);
            tail.extend_from_slice(&audiosocket::HANGUP);
            tail.extend_from_slice(&frame(&[0; 2]));
            s.write_all(&tail).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            drain(&mut s);
        });
        let report = run_call(&SimOptions::new(addr)).unwrap();
        server.join().unwrap();
        assert_eq!(report.violations.len(), 1, "{}", report.summary());
        assert!(report.violations[0].contains("5 bytes arrived after the hangup frame"));

        let (addr, server) = fake_server(|mut s| {
            read_hello(&mut s);
            s.write_all(&frame(&[0; 320])[..100]).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            drain(&mut s);
        });
        let report = run_call(&SimOptions::new(addr)).unwrap();
        server.join().unwrap();
        assert_eq!(report.ended_by, EndedBy::ServerClose);
        assert!(report.server_closed && !report.hangup_received);
        assert_eq!(report.violations.len(), 1, "{}", report.summary());
        assert!(report.violations[0]
            .contains("closed in the middle of a frame: kind 0x10 frame with 97 of 320"));
    }

    #[test]
    fn silent_server_trips_the_inactivity_rule() {
        let (addr, server) = fake_server(|mut s| {
            read_hello(&mut s);
            let mut frames = 0;
            while read_frame(&mut s).is_some() {
                frames += 1;
            }
            frames
        });
        let mut opts = SimOptions::new(addr);
        opts.duration = d(2100);
        let report = run_call(&opts).unwrap();
        assert_eq!(server.join().unwrap(), 105);
        assert_eq!(report.frames_sent, 105);
        assert_eq!(report.ended_by, EndedBy::Client);
        assert!(report.server_closed, "the server closes after our FIN");
        assert_eq!(report.time_to_first_frame, None);
        assert_eq!(report.violations.len(), 1, "{}", report.summary());
        assert!(report.violations[0].contains("no frame from the server for 2.100 s"));
    }

    #[test]
    fn close_mode_paces_and_ends_with_fin() {
        let (addr, server) = fake_server(|mut s| {
            read_hello(&mut s);
            let mut frames = 0;
            while let Some((_, payload)) = read_frame(&mut s) {
                s.write_all(&frame(&payload)).unwrap();
                frames += 1;
            }
            frames
        });
        let mut opts = SimOptions::new(addr);
        opts.duration = d(300);
        let report = run_call(&opts).unwrap();
        assert_eq!(server.join().unwrap(), 15);
        assert_eq!(report.frames_sent, 15);
        assert_eq!(report.frames_received, 15);
        assert_eq!(report.ended_by, EndedBy::Client);
        assert_eq!(report.duration, d(300));
        assert!(report.started + report.duration <= Instant::now());
        assert!(report.server_closed && !report.hangup_received);
        assert!(report.violations.is_empty(), "{}", report.summary());
        let p50 = report.gap_p50;
        assert!(p50 > d(10) && p50 < d(30), "{}", report.summary());
    }

    #[test]
    fn reset_mode_sends_rst() {
        let (addr, server) = fake_server(|mut s| {
            read_hello(&mut s);
            let mut writer = s.try_clone().unwrap();
            thread::Builder::new()
                .name("fake-server-tx".into())
                .spawn(move || {
                    let f = frame(&[0; 320]);
                    while writer.write_all(&f).is_ok() {
                        thread::sleep(d(20)); // the server's own pacing
                    }
                })
                .unwrap();
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => return io::ErrorKind::UnexpectedEof,
                    Ok(_) => {}
                    Err(e) => return e.kind(),
                }
            }
        });
        let mut opts = SimOptions::new(addr);
        opts.duration = d(200);
        opts.end = EndMode::Reset;
        let report = run_call(&opts).unwrap();
        assert_eq!(server.join().unwrap(), io::ErrorKind::ConnectionReset);
        assert_eq!(report.ended_by, EndedBy::Client);
        assert!(report.violations.is_empty(), "{}", report.summary());
    }

    #[test]
    fn await_hangup_streams_silence_until_the_server_hangs_up() {
        let (addr, server) = fake_server(|mut s| {
            read_hello(&mut s);
            let mut payloads = Vec::new();
            while payloads.len() < 20 {
                let (kind, payload) = read_frame(&mut s).expect("a frame");
                assert_eq!(kind, 0x10);
                s.write_all(&frame(&[0; 320])).unwrap();
                payloads.push(payload);
            }
            s.write_all(&audiosocket::HANGUP).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            drain(&mut s);
            payloads
        });
        let mut opts = SimOptions::new(addr);
        opts.codec = SimCodec::Ulaw;
        opts.audio = AudioSource::Tone {
            hz: 1000.0,
            amplitude: 8000,
        };
        opts.duration = d(200);
        opts.end = EndMode::AwaitHangup(Duration::from_secs(5));
        let report = run_call(&opts).unwrap();
        let payloads = server.join().unwrap();
        assert!(payloads.iter().all(|p| p.len() == 160));
        assert!(payloads[..10].iter().all(|p| p.iter().any(|&b| b != 0xff)));
        assert!(payloads[10..].iter().all(|p| p.iter().all(|&b| b == 0xff)));
        assert_eq!(report.ended_by, EndedBy::ServerHangup);
        assert!(report.hangup_received);
        assert!(report.duration > d(380) && report.duration < d(5000));
        assert!(report.violations.is_empty(), "{}", report.summary());
    }

    #[test]
    fn cli_runs_a_call_and_records_it() {
        let (addr, server) = fake_server(|mut s| {
            read_hello(&mut s);
            let mut digits = Vec::new();
            while let Some((kind, payload)) = read_frame(&mut s) {
                match kind {
                    0x10 => s.write_all(&frame(&payload)).unwrap(),
                    _ => digits.push((kind, payload)),
                }
            }
            digits
        });
        let path = std::env::temp_dir().join(format!("sim-record-{}.wav", std::process::id()));
        let line = format!(
            "--addr {addr} --seconds 0.1 --dtmf 0.05:7 --record {}",
            path.display()
        );
        assert_eq!(main(&args(&line)), ExitCode::SUCCESS);
        assert_eq!(server.join().unwrap(), [(0x03, b"7".to_vec())]);
        let recorded = parse_wav(&std::fs::read(&path).unwrap()).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(recorded.len(), 5 * SAMPLES_PER_FRAME);
        assert!(
            recorded.iter().any(|&s| s != 0),
            "the 440 Hz tone came back"
        );
        assert_eq!(main(&args("--codec opus")), ExitCode::from(2));
    }

    #[test]
    fn connect_errors_name_the_address() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let e = run_call(&SimOptions::new(addr)).unwrap_err();
        assert!(matches!(e, SimError::Connect { .. }));
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
        let mut opts = SimOptions::new(addr);
        opts.dtmf = vec![(d(0), 'x')];
        let e = run_call(&opts).unwrap_err().to_string();
        assert!(e.contains("0-9 * # A-D"), "{e}");
    }
}
