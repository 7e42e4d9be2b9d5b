//! One simulated call over a socket, the way `AudioSocket()` places it: the UUID in one write,
//! caller audio and DTMF on a 20 ms deadline clock, and a receiver thread that does nothing
//! but read, timestamp and hand the bytes to the [`Checker`].

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::checker::Checker;
use super::stats::{gaps, ms, percentile, secs, window_max, SimReport};
use super::FRAME;
use crate::proto::audiosocket::{self, HEADER_LEN, KIND_AUDIO, KIND_DTMF, KIND_UUID};
use crate::proto::g711;
use crate::sys::lock;
use crate::tools::rates::{frame_samples, SLIN_RATE_HZ};

/// After the call ends, how long we keep reading for the server's EOF (and stray bytes).
const DRAIN: Duration = Duration::from_secs(1);
/// For `EndMode::Reset`: how long to wait for a server byte to leave unread, so close sends RST.
const RESET_WAIT: Duration = Duration::from_millis(500);
/// Receiver wake-up period when nothing arrives, so it notices the end of the call.
const POLL: Duration = Duration::from_millis(50);

/// What the simulated caller says.
#[derive(Clone)]
pub enum AudioSource {
    Silence,
    /// A sine wave, phase-continuous across frames, for the whole `duration`.
    Tone {
        hz: f64,
        amplitude: i16,
    },
    /// Mono samples at the call's rate, played once; silence follows if the call lasts longer.
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

/// What the caller's payloads contain. G.711 is what `Dial(AudioSocket/…)` without
/// `c(slin)` passes through, still labelled `0x10` (docs/audiosocket.md §8): 8 kHz only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimCodec {
    Slin,
    Ulaw,
    Alaw,
}

impl SimCodec {
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
    /// The caller's rate, an AudioSocket rate: slin frames carry its kind (`0x10` for 8 kHz,
    /// `0x12` for 16 kHz, …) and 20 ms of samples, as `Dial(AudioSocket/…/c(slin16))` and the
    /// like send (docs/audiosocket.md §3, §8). G.711 needs 8000.
    pub rate_hz: u32,
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
    /// A 2 s silent 8 kHz slin call with a random v4 UUID that ends with a plain close.
    pub fn new(addr: SocketAddr) -> Self {
        SimOptions {
            addr,
            uuid: *uuid::Uuid::new_v4().as_bytes(),
            codec: SimCodec::Slin,
            rate_hz: SLIN_RATE_HZ,
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
    /// `--record`: the received audio could not be written.
    Record { path: PathBuf, source: io::Error },
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
            SimError::Record { path, source } => {
                write!(f, "--record: cannot write {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for SimError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SimError::Connect { source, .. } => Some(source),
            SimError::Io(e) | SimError::Record { source: e, .. } => Some(e),
            _ => None,
        }
    }
}

/// Keeps the kind (tests and callers match on it) and adds what we were doing.
fn io_context(what: &'static str) -> impl FnOnce(io::Error) -> SimError {
    move |e| SimError::Io(io::Error::new(e.kind(), format!("{what}: {e}")))
}

/// Places one call and reports it once it has ended and the connection is closed (at most
/// ~1 s after the end while waiting for the server's EOF).
pub fn run_call(opts: &SimOptions) -> Result<SimReport, SimError> {
    let dtmf = checked_dtmf(&opts.dtmf)?;
    let kind = frame_kind(opts.codec, opts.rate_hz)?;
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
    let shared = Arc::new(Shared::new());
    let uuid = audiosocket::CallId::from_bytes(opts.uuid).to_string();
    log::debug!("[{uuid}] simulated call connected to {}", opts.addr);

    // Room for the whole call up front: the receiver should not reallocate while timing.
    let expect_frames = (opts.duration.as_millis() / FRAME.as_millis()) as usize + 64;
    let checker = Checker::with_capacity(
        opts.rate_hz,
        expect_frames,
        expect_frames * audiosocket::frame_bytes(opts.rate_hz),
    );
    let receiver = thread::Builder::new().name("sim-recv".into()).spawn({
        let shared = shared.clone();
        move || receive(recv_stream, &shared, checker, |_, _| {})
    });
    let receiver = receiver.map_err(io_context("starting the receiver thread"))?;
    let sender = thread::Builder::new().name("sim-send".into()).spawn({
        let shared = shared.clone();
        let opts = opts.clone();
        move || send(send_stream, &opts, kind, &dtmf, &shared)
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
    let mut checker = join(receiver).map_err(io_context("receiving"))?;
    let (ended_by, ended_at) = shared.ended().expect("the sender always records the end");
    checker.call_ended(ended_at);
    let rx = checker.into_checked();
    let mut server_closed = rx.server_closed || sent.saw_close;

    if ended_by == EndedBy::Client && opts.end == EndMode::Reset && !server_closed {
        server_closed = leave_unread_data(&stream);
    }
    drop(stream); // the last handle: the connection closes here (RST if data is unread)

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
        violations: rx.violations,
        hangup_received: rx.hangup_received,
        server_closed,
        ended_by,
        duration: ended_at,
        rate_hz: opts.rate_hz,
        prelude_frames: rx.prelude_frames,
    })
}

/// The kind of the caller's audio frames: its rate's kind for slin; `0x10` for G.711, which
/// Asterisk only passes through at 8 kHz (docs/audiosocket.md §8).
pub fn frame_kind(codec: SimCodec, rate_hz: u32) -> Result<u8, SimError> {
    let Some(kind) = audiosocket::audio_kind(rate_hz) else {
        let rates: Vec<String> = audiosocket::audio_rates().map(|r| r.to_string()).collect();
        return Err(SimError::Invalid(format!(
            "no AudioSocket kind carries {rate_hz} Hz audio; the rates are {}",
            rates.join(", ")
        )));
    };
    match codec {
        SimCodec::Slin => Ok(kind),
        _ if rate_hz == SLIN_RATE_HZ => Ok(KIND_AUDIO),
        _ => Err(SimError::Invalid(format!(
            "{} is 8 kHz audio, so it cannot be sent at {rate_hz} Hz; use slin for a wideband \
             caller",
            codec.name()
        ))),
    }
}

/// Waits (briefly) for a server byte and leaves it unread, so dropping the socket sends RST.
/// std's `set_linger` is unstable and SO_LINGER 0 would need unsafe or libc; closing with
/// unread data is also exactly how Asterisk's RSTs arise (docs/audiosocket.md §7).
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

/// A digit AudioSocket can carry: `0-9 * # A-D`.
pub fn is_dtmf(c: char) -> bool {
    matches!(c, '0'..='9' | '*' | '#' | 'A'..='D')
}

/// What a call's sender and receiver share (load mode's pacing thread too). `end` is set
/// once: whoever ends the call first wins.
pub struct Shared {
    /// When the UUID was written: every time in the call is an offset from here.
    pub t0: Instant,
    /// Cheap "not ended yet" for the hot paths; mirrors `end.is_none()`.
    live: AtomicBool,
    end: Mutex<Option<(EndedBy, Duration)>>,
    /// `EndMode::Reset`: the receiver must stop reading so data stays unread.
    stop_reading: AtomicBool,
}

impl Shared {
    /// A call whose UUID was written just now.
    pub fn new() -> Self {
        Shared {
            t0: Instant::now(),
            live: AtomicBool::new(true),
            end: Mutex::new(None),
            stop_reading: AtomicBool::new(false),
        }
    }

    /// Records the end if nobody has yet; true if this call did.
    pub fn end(&self, by: EndedBy, at: Duration) -> bool {
        let mut end = lock(&self.end);
        if end.is_some() {
            return false;
        }
        *end = Some((by, at));
        self.live.store(false, Ordering::SeqCst);
        true
    }

    /// Who ended the call and when, once it has ended.
    pub fn ended(&self) -> Option<(EndedBy, Duration)> {
        *lock(&self.end)
    }

    /// Not ended yet.
    pub fn is_live(&self) -> bool {
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

/// Sleeps until `deadline`, however often the sleep wakes early.
pub fn sleep_until(deadline: Instant) {
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
    kind: u8,
    dtmf: &[(Duration, char)],
    shared: &Shared,
) -> io::Result<Sent> {
    let stop_at = match opts.end {
        EndMode::AwaitHangup(wait) => opts.duration + wait,
        EndMode::Close | EndMode::Reset => opts.duration,
    };
    let mut source = Source::new(&opts.audio, opts.rate_hz);
    let mut samples = vec![0i16; frame_samples(opts.rate_hz)];
    let mut frame = Vec::with_capacity(HEADER_LEN + audiosocket::frame_bytes(opts.rate_hz));
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
            encode_frame(opts.codec, kind, &samples, &mut frame);
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

/// Produces successive frames of caller audio at the call's rate.
struct Source<'a> {
    audio: &'a AudioSource,
    rate_hz: u32,
    /// Samples produced so far.
    pos: usize,
}

impl<'a> Source<'a> {
    fn new(audio: &'a AudioSource, rate_hz: u32) -> Self {
        Source {
            audio,
            rate_hz,
            pos: 0,
        }
    }

    /// The next `out.len()` samples.
    fn fill(&mut self, out: &mut [i16]) {
        match self.audio {
            AudioSource::Silence => out.fill(0),
            AudioSource::Tone { hz, amplitude } => {
                for (i, s) in out.iter_mut().enumerate() {
                    // fract() keeps sin's argument small: no phase drift on long calls.
                    let cycles = ((self.pos + i) as f64 * hz / f64::from(self.rate_hz)).fract();
                    *s = (f64::from(*amplitude) * (std::f64::consts::TAU * cycles).sin()).round()
                        as i16;
                }
            }
            AudioSource::Pcm(pcm) => {
                let start = self.pos.min(pcm.len());
                let end = (self.pos + out.len()).min(pcm.len());
                out[..end - start].copy_from_slice(&pcm[start..end]);
                out[end - start..].fill(0);
            }
        }
        self.pos += out.len();
    }
}

/// One audio frame of `kind`, header and payload together for a single write. G.711 silence
/// comes out as the encoding of 0 (0xFF µ-law, 0xD5 A-law), as a real channel's would.
fn encode_frame(codec: SimCodec, kind: u8, samples: &[i16], out: &mut Vec<u8>) {
    out.clear();
    let len = match codec {
        SimCodec::Slin => 2 * samples.len(),
        SimCodec::Ulaw | SimCodec::Alaw => samples.len(),
    };
    out.push(kind);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    match codec {
        SimCodec::Slin => samples
            .iter()
            .for_each(|s| out.extend_from_slice(&s.to_le_bytes())),
        SimCodec::Ulaw => out.extend(samples.iter().map(|&s| g711::linear_to_ulaw(s))),
        SimCodec::Alaw => out.extend(samples.iter().map(|&s| g711::linear_to_alaw(s))),
    }
}

/// Reads everything the server sends into `rx` until it closes, the drain after the end runs
/// out, or (`EndMode::Reset`) it is told to stop; `after_read` sees the checker after each
/// read (load mode scans the echoes there). Priority is not raised: that needs `setpriority`
/// through libc or rustix (a new dependency here); the loop is kept to a read, a timestamp and
/// an append instead.
pub fn receive(
    mut stream: TcpStream,
    shared: &Shared,
    mut rx: Checker,
    mut after_read: impl FnMut(&mut Checker, Duration),
) -> io::Result<Checker> {
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
                let had_hangup = rx.hangup_received();
                rx.feed(&buf[..n], now, live);
                if n == buf.len() {
                    rx.more_queued();
                }
                after_read(&mut rx, now);
                // Asterisk stops at once: shutting our side here also stops the sender's next write.
                if !had_hangup && rx.hangup_received() && shared.end(EndedBy::ServerHangup, now) {
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
    rx.end_of_stream();
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::simulate::fake_server::{
        drain, echo_frames, fake_server, frame, hello_for, read_frame, read_hello,
    };
    use crate::tools::simulate::SAMPLES_PER_FRAME;
    use std::net::TcpListener;

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn frames_are_encoded_like_asterisk() {
        let mut out = Vec::new();
        let silence = [0i16; SAMPLES_PER_FRAME];
        encode_frame(SimCodec::Slin, KIND_AUDIO, &silence, &mut out);
        assert_eq!(out[..3], [0x10, 0x01, 0x40]);
        assert_eq!(out.len(), 323);
        encode_frame(SimCodec::Ulaw, KIND_AUDIO, &silence, &mut out);
        assert_eq!(out[..3], [0x10, 0x00, 0xa0]);
        assert!(out[3..].iter().all(|&b| b == 0xff) && out.len() == 163);
        encode_frame(SimCodec::Alaw, KIND_AUDIO, &silence, &mut out);
        assert!(out[3..].iter().all(|&b| b == 0xd5) && out.len() == 163);

        let pcm = AudioSource::Pcm(Arc::new((1..=200).collect()));
        let mut src = Source::new(&pcm, SLIN_RATE_HZ);
        let mut frame = [0i16; SAMPLES_PER_FRAME];
        src.fill(&mut frame);
        assert_eq!(frame[0], 1);
        assert_eq!(frame[159], 160);
        src.fill(&mut frame);
        assert_eq!(frame[39], 200);
        assert!(frame[40..].iter().all(|&s| s == 0));
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
        let mut src = Source::new(&opts.audio, opts.rate_hz);
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

    #[test]
    fn a_wideband_caller_sends_its_kind_and_hears_a_prelude_then_its_kind() {
        let (addr, server) = fake_server(|mut s| {
            read_hello(&mut s);
            // 8 kHz silence first, as a server that does not know the rate yet sends.
            s.write_all(&frame(&[0; 320])).unwrap();
            s.write_all(&frame(&[0; 320])).unwrap();
            echo_frames(&mut s)
        });
        let mut opts = SimOptions::new(addr);
        opts.rate_hz = 16_000;
        opts.audio = AudioSource::Tone {
            hz: 5000.0, // above 4 kHz: only a 16 kHz call carries it
            amplitude: 8000,
        };
        opts.duration = d(200);
        let report = run_call(&opts).unwrap();
        let kinds = server.join().unwrap();
        assert_eq!(kinds, vec![(0x12, 640); 10]);
        assert!(report.violations.is_empty(), "{}", report.summary());
        assert_eq!(report.prelude_frames, 2);
        assert_eq!(report.frames_received, 12);
        // The prelude, stretched to 16 kHz, then exactly the tone we sent.
        assert_eq!(report.received.len(), 12 * 640);
        assert!(report.received[..2 * 640].iter().all(|&b| b == 0));
        let mut src = Source::new(&opts.audio, 16_000);
        let mut samples = [0i16; 320];
        let mut expected = Vec::new();
        for _ in 0..10 {
            src.fill(&mut samples);
            samples
                .iter()
                .for_each(|s| expected.extend_from_slice(&s.to_le_bytes()));
        }
        assert_eq!(report.received[2 * 640..], expected);
        assert!(
            report.summary().contains(
                "received:    12 audio frames (0.240 s of 16 kHz slin16; the first 2 as 8 kHz slin)"
            ),
            "{}",
            report.summary()
        );
    }

    #[test]
    fn rates_without_a_kind_and_wideband_g711_are_refused_before_connecting() {
        let addr = "127.0.0.1:9".parse().unwrap();
        let mut opts = SimOptions::new(addr);
        opts.rate_hz = 22_050;
        let e = run_call(&opts).unwrap_err().to_string();
        assert!(
            e.contains("no AudioSocket kind carries 22050 Hz audio; the rates are 8000, 12000"),
            "{e}"
        );
        opts.rate_hz = 16_000;
        opts.codec = SimCodec::Ulaw;
        let e = run_call(&opts).unwrap_err().to_string();
        assert!(e.contains("ulaw is 8 kHz audio"), "{e}");
        assert_eq!(frame_kind(SimCodec::Alaw, 8_000).unwrap(), 0x10);
        assert_eq!(frame_kind(SimCodec::Slin, 44_100).unwrap(), 0x15);
    }
}
