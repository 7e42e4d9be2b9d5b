//! A built-in echo STS agent: `avr-core echo-sts`, the demo's agent and the tests' agent.
//!
//! Every caller `audio` message is sent back, byte for byte, `delay` after it arrived, but cut
//! into chunks of deliberately uneven sizes ([`CHUNK_PATTERN`]), so a bridge that pads or
//! drops partial frames is audibly (and testably) wrong. Transcripts come at a fixed cadence
//! (one user and one agent line per second of caller audio, one agent line per DTMF digit) so
//! tests can count them.
//!
//! The agent's audio is at one rate both ways, 8 kHz unless told otherwise (`--rate`, for an
//! avr-core run with the same `STS_SAMPLE_RATE`): the second of audio and the chunk sizes
//! follow it. The echo itself is byte for byte at any rate.
//!
//! One thread serves the listener and every connection ([`event_loop`]): an epoll loop over
//! non-blocking sockets, sleeping in `epoll_wait` until a socket is ready or the next chunk
//! is due, so 1,000 echo connections cost the benchmark little beside the server it measures.
//! tungstenite 0.30 reports a socket with nothing to read as `Error::Io(WouldBlock)` and keeps
//! any partly read frame for the next `read()`.

mod event_loop;

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tungstenite::{Message, WebSocket};

use crate::cli::{is_help, Flags, Parsed, UsageError};
use crate::proto::sts::{audio_message, parse_to_agent, transcript_message, ToAgentMessage};
use crate::sys::Bell;
use crate::tools::rates::{self, khz, SLIN_RATE_HZ};

/// Sizes, in bytes at 8 kHz, of the audio chunks sent back, cycled in order. All even (whole
/// s16le samples) and unlike the 320-byte caller frames, so the bridge must carry remainders.
/// At another rate each lasts as long ([`chunk_bytes`]).
pub const CHUNK_PATTERN: [usize; 6] = [160, 1000, 480, 2400, 320, 40];

/// [`CHUNK_PATTERN`]'s `i`-th chunk at `rate_hz`: as many milliseconds, whole samples (882
/// bytes for the 160-byte chunk at 44.1 kHz), never empty.
pub fn chunk_bytes(i: usize, rate_hz: u32) -> usize {
    let samples = CHUNK_PATTERN[i] / 2 * rate_hz as usize / SLIN_RATE_HZ as usize;
    2 * samples.max(1)
}

/// Port of `avr-core echo-sts` when `--port` is not given (the upstream agents' port).
pub const DEFAULT_PORT: u16 = 6030;

/// Longest accepted echo delay; also keeps `Instant` arithmetic far from overflow.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// Bytes in one second of the agent's s16le mono audio: the transcript cadence is one pair
/// per this many caller bytes.
fn bytes_per_second(rate_hz: u32) -> u64 {
    2 * u64::from(rate_hz)
}

/// A chunk that cannot fill up because the caller paused goes out short after this long,
/// so the tail of an utterance is not held back until the caller speaks again.
const IDLE_FLUSH: Duration = Duration::from_millis(60);

/// tungstenite's default is 128 KiB per connection; caller audio messages are ~0.5 KiB.
const READ_BUFFER: usize = 8 * 1024;

/// A client that connects but never sends its upgrade request must not hold a socket forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A client that stops reading must not hold its connection (and its unsent echo) forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Buffered events; when nobody drains them the newest are dropped, never the server.
const EVENT_CAPACITY: usize = 4096;

/// How the echo agent behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoOptions {
    /// How long each caller byte waits before it is sent back.
    pub delay: Duration,
    /// Send transcripts (per second of audio and per DTMF digit); off keeps the agent silent
    /// apart from the echo.
    pub transcripts: bool,
}

impl Default for EchoOptions {
    fn default() -> Self {
        EchoOptions {
            delay: Duration::from_millis(200),
            transcripts: true,
        }
    }
}

/// What the agent saw, for tests and the demo's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EchoEvent {
    /// A WebSocket handshake completed; `path` is the request path and query.
    Connected { conn: u64, path: String },
    /// A text message other than `audio` (init, dtmf_digit, unknown types, non-JSON).
    Received { conn: u64, text: String },
    /// The connection has ended (the client closed it, left, or failed).
    Closed { conn: u64 },
}

/// Sees every caller audio message: the connection's label (the call's uuid once `init` has
/// come), the decoded PCM, and when the WebSocket read returned it. The benchmark runs the
/// agent in its own process with a tap, so caller→agent latency is measured on one clock.
pub type AudioTap = Arc<dyn Fn(&str, &[u8], Instant) + Send + Sync>;

/// A running echo agent. It accepts until it is dropped; connections already open then run
/// until their client leaves.
pub struct EchoServer {
    addr: SocketAddr,
    events: Arc<Events>,
    stop: Arc<Bell>,
    /// Told once the loop has closed the listener after `stop`.
    listener_closed: Receiver<()>,
    /// The event loop's thread; `None` once [`run`] took it to join.
    accept_thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Binds `bind` (port 0 picks a free port) and starts serving in a named thread; the
    /// agent speaks 8 kHz, as the upstream agents do.
    pub fn start(bind: SocketAddr, opts: EchoOptions) -> io::Result<EchoServer> {
        Self::start_at(bind, opts, SLIN_RATE_HZ, None)
    }

    /// [`start`](Self::start), with `tap` called for every caller audio message.
    pub fn start_with_tap(
        bind: SocketAddr,
        opts: EchoOptions,
        tap: AudioTap,
    ) -> io::Result<EchoServer> {
        Self::start_at(bind, opts, SLIN_RATE_HZ, Some(tap))
    }

    /// [`start`](Self::start) for an agent whose audio is at `rate_hz` both ways (avr-core's
    /// `STS_SAMPLE_RATE`), with an optional tap.
    pub fn start_at(
        bind: SocketAddr,
        opts: EchoOptions,
        rate_hz: u32,
        tap: Option<AudioTap>,
    ) -> io::Result<EchoServer> {
        if opts.delay > MAX_DELAY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "echo delay {:?} is over the {MAX_DELAY:?} limit",
                    opts.delay
                ),
            ));
        }
        if rate_hz == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the agent's audio rate must be above 0 Hz",
            ));
        }
        let listener = TcpListener::bind(bind)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {bind}: {e}")))?;
        // The event loop accepts until `accept(2)` would block.
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let events = Arc::new(Events::default());
        let stop = Arc::new(Bell::new()?);
        let (closed_tx, listener_closed) = crossbeam_channel::bounded(1);
        let setup = event_loop::Setup {
            opts,
            rate_hz,
            events: Arc::clone(&events),
            tap,
        };
        let accept_thread = thread::Builder::new().name("echo-sts".into()).spawn({
            let stop = Arc::clone(&stop);
            move || event_loop::run(listener, &stop, closed_tx, setup)
        })?;
        Ok(EchoServer {
            addr,
            events,
            stop,
            listener_closed,
            accept_thread: Some(accept_thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A URL clients can connect to: an unspecified bind address becomes loopback.
    pub fn url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("ws://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// The event stream. Events are recorded only from the first call on, so a long-running
    /// `echo-sts` that nobody watches accumulates nothing. Every call returns the same stream.
    pub fn events(&self) -> Receiver<EchoEvent> {
        self.events.subscribe()
    }
}

impl Drop for EchoServer {
    /// Stops accepting and waits until the loop has closed the listener, so the port is
    /// closed on return. The loop's thread goes on serving the connections already open and
    /// ends with the last of them.
    fn drop(&mut self) {
        self.stop.ring();
        // Err: the loop has already ended, and its listener with it.
        let _ = self.listener_closed.recv();
    }
}

/// Blocks forever serving echo connections as `command` says.
pub fn run(command: EchoCommand) -> io::Result<()> {
    let EchoCommand {
        bind,
        opts,
        rate_hz,
    } = command;
    let mut server = EchoServer::start_at(bind, opts, rate_hz, None)?;
    log::info!("Echo STS agent listening on ws://{}", server.local_addr());
    if rate_hz != SLIN_RATE_HZ {
        log::info!(
            "Echo STS agent audio is {} kHz: run avr-core with STS_SAMPLE_RATE={rate_hz}",
            khz(rate_hz)
        );
    }
    let accept = server
        .accept_thread
        .take()
        .expect("a started server accepts");
    accept
        .join()
        .map_err(|_| io::Error::other("the echo STS event loop panicked"))
}

/// Usage of `avr-core echo-sts`.
pub const USAGE: &str = "\
avr-core echo-sts — an STS agent that plays the caller's audio back

USAGE:
    avr-core echo-sts [--bind IP] [--port N] [--delay-ms N] [--rate HZ] [--no-transcripts]

    --bind IP          address to listen on (default 127.0.0.1)
    --port N           port (default 6030)
    --delay-ms N       echo delay (default 200, at most 60000)
    --rate HZ          the rate of the agent's audio, 8000 to 192000 (default 8000, as the
                       upstream agents); run avr-core with the same STS_SAMPLE_RATE
    --no-transcripts   send no transcripts and no DTMF answers
";

/// What `avr-core echo-sts` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoCommand {
    /// Where to listen.
    pub bind: SocketAddr,
    pub opts: EchoOptions,
    /// The rate of the agent's audio both ways (avr-core's `STS_SAMPLE_RATE`).
    pub rate_hz: u32,
}

/// Parses the flags after `echo-sts`.
pub fn parse_args(args: &[String]) -> Result<Parsed<EchoCommand>, UsageError> {
    let mut ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut port = DEFAULT_PORT;
    let mut opts = EchoOptions::default();
    let mut rate_hz = SLIN_RATE_HZ;
    let mut flags = Flags::new(args);
    while let Some(flag) = flags.next_arg() {
        match flag {
            _ if is_help(flag) => return Ok(Parsed::Help),
            "--bind" => ip = flags.parse("an IP address such as 0.0.0.0")?,
            "--port" => port = flags.parse("a port number 0-65535")?,
            "--delay-ms" => {
                let max = MAX_DELAY.as_millis() as u64;
                opts.delay = Duration::from_millis(flags.number("milliseconds", max)?);
            }
            "--rate" => rate_hz = rates::agent_rate(&mut flags)?,
            "--no-transcripts" => {
                flags.switch()?;
                opts.transcripts = false;
            }
            _ => {
                return Err(
                    flags.unknown("expected --bind, --port, --delay-ms, --rate, --no-transcripts")
                )
            }
        }
    }
    Ok(Parsed::Run(EchoCommand {
        bind: SocketAddr::new(ip, port),
        opts,
        rate_hz,
    }))
}

/// The event channel, created on first subscription so that unwatched servers send nothing.
#[derive(Default)]
struct Events(OnceLock<(Sender<EchoEvent>, Receiver<EchoEvent>)>);

impl Events {
    fn subscribe(&self) -> Receiver<EchoEvent> {
        let (_, rx) = self
            .0
            .get_or_init(|| crossbeam_channel::bounded(EVENT_CAPACITY));
        rx.clone()
    }

    /// `make` runs only when someone listens, so unwatched servers copy no text.
    fn emit(&self, make: impl FnOnce() -> EchoEvent) {
        if let Some((tx, _)) = self.0.get() {
            let _ = tx.try_send(make());
        }
    }
}

/// One connection's state, served by the event loop.
struct Session {
    conn: u64,
    ws: WebSocket<event_loop::Counted>,
    opts: EchoOptions,
    /// The agent's audio rate: what a second of caller audio is.
    rate_hz: u32,
    /// `[label]` prefixes log lines: the call's uuid once `init` arrived.
    label: String,
    queue: EchoQueue,
    received_bytes: u64,
    tap: Option<AudioTap>,
    /// When the last WebSocket read returned: the arrival time the tap is given.
    read_at: Instant,
}

impl Session {
    fn new(conn: u64, ws: WebSocket<event_loop::Counted>, opts: EchoOptions, rate_hz: u32) -> Self {
        Session {
            conn,
            ws,
            opts,
            rate_hz,
            label: format!("echo-conn-{conn}"),
            queue: EchoQueue::new(opts.delay, rate_hz),
            received_bytes: 0,
            tap: None,
            read_at: Instant::now(),
        }
    }

    /// Reads every message the socket has, answers them, sends every chunk that is due and
    /// flushes. `Ok(true)`: all written; `Ok(false)`: the client is not reading fast enough,
    /// the rest waits in tungstenite's buffer for the socket to be writable.
    /// `Err(ConnectionClosed)` once the client has closed.
    fn pump(&mut self, events: &Events) -> tungstenite::Result<bool> {
        loop {
            self.send_due()?;
            let read = self.ws.read();
            self.read_at = Instant::now();
            match read {
                Ok(Message::Text(text)) => self.on_text(text.as_str(), events)?,
                Ok(Message::Binary(bytes)) => log::warn!(
                    "[{}] Echo STS: ignored a {}-byte binary message (caller audio is JSON)",
                    self.label,
                    bytes.len()
                ),
                // tungstenite queues the close reply; the next read sends it and ends.
                Ok(Message::Close(_)) => self.queue = EchoQueue::new(self.opts.delay, self.rate_hz),
                Ok(_) => {} // ping/pong: tungstenite answers pings itself
                Err(tungstenite::Error::Io(e)) if would_block(&e) => break,
                Err(e) => return Err(e),
            }
        }
        self.send_due()?;
        match self.ws.flush() {
            Ok(()) => Ok(true),
            Err(tungstenite::Error::Io(e)) if would_block(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn on_text(&mut self, text: &str, events: &Events) -> tungstenite::Result<()> {
        let msg = parse_to_agent(text);
        // Caller audio is the stream itself; everything else is an event worth reporting.
        let audio = match &msg {
            ToAgentMessage::Audio(_) => true,
            ToAgentMessage::Invalid { kind, .. } => kind.as_deref() == Some("audio"),
            _ => false,
        };
        if !audio {
            self.report(text, events);
        }
        match msg {
            ToAgentMessage::Audio(pcm) => self.on_audio(&pcm)?,
            ToAgentMessage::Init { uuid, .. } => {
                self.label = uuid;
                log::info!(
                    "[{}] Echo STS: init on connection {}",
                    self.label,
                    self.conn
                );
            }
            ToAgentMessage::Dtmf(digit) => {
                if self.opts.transcripts {
                    self.send_transcript("agent", &format!("You pressed {digit}"))?;
                }
            }
            ToAgentMessage::Unknown(kind) => {
                log::warn!("[{}] Echo STS: ignored unknown type {kind:?}", self.label)
            }
            ToAgentMessage::Invalid { reason, .. } => log::warn!(
                "[{}] Echo STS: ignored a message ({reason}): {}",
                self.label,
                preview(text)
            ),
        }
        Ok(())
    }

    fn on_audio(&mut self, pcm: &[u8]) -> tungstenite::Result<()> {
        if let Some(tap) = &self.tap {
            tap(&self.label, pcm, self.read_at);
        }
        self.queue.push(Instant::now(), pcm);
        let second = bytes_per_second(self.rate_hz);
        let seconds_before = self.received_bytes / second;
        self.received_bytes += pcm.len() as u64;
        let seconds_after = self.received_bytes / second;
        if self.opts.transcripts {
            for second in seconds_before + 1..=seconds_after {
                self.send_transcript("user", &format!("caller audio, second {second}"))?;
                self.send_transcript("agent", "echoing 1.0 s of audio")?;
            }
        }
        Ok(())
    }

    /// Queues every chunk that is due; [`pump`](Self::pump) flushes them together.
    fn send_due(&mut self) -> tungstenite::Result<()> {
        let now = Instant::now();
        while let Some(chunk) = self.queue.pop_due(now) {
            self.write(Message::text(audio_message(&chunk)))?;
        }
        Ok(())
    }

    fn send_transcript(&mut self, role: &str, text: &str) -> tungstenite::Result<()> {
        self.write(Message::text(transcript_message(role, text)))
    }

    /// Queues `msg`. A socket that would block keeps it in tungstenite's buffer, to go out
    /// with the next flush.
    fn write(&mut self, msg: Message) -> tungstenite::Result<()> {
        match self.ws.write(msg) {
            Err(tungstenite::Error::Io(e)) if would_block(&e) => Ok(()),
            other => other,
        }
    }

    fn report(&self, text: &str, events: &Events) {
        let conn = self.conn;
        events.emit(|| EchoEvent::Received {
            conn,
            text: text.to_owned(),
        });
    }
}

/// A non-blocking socket that has nothing more to read, or no room to write, for now.
fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// The start of a message, for log lines.
fn preview(text: &str) -> &str {
    match text.char_indices().nth(80) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// Caller bytes received but not yet sent back, each run with the time it arrived.
struct EchoQueue {
    delay: Duration,
    /// [`CHUNK_PATTERN`] at the agent's rate.
    chunks: [usize; CHUNK_PATTERN.len()],
    bytes: VecDeque<u8>,
    /// Arrival time and length of each received message still (partly) in `bytes`.
    runs: VecDeque<(Instant, usize)>,
    /// Index into [`CHUNK_PATTERN`] of the next chunk.
    pattern_pos: usize,
}

impl EchoQueue {
    fn new(delay: Duration, rate_hz: u32) -> Self {
        EchoQueue {
            delay,
            chunks: std::array::from_fn(|i| chunk_bytes(i, rate_hz)),
            bytes: VecDeque::new(),
            runs: VecDeque::new(),
            pattern_pos: 0,
        }
    }

    fn push(&mut self, arrived: Instant, pcm: &[u8]) {
        if !pcm.is_empty() {
            self.bytes.extend(pcm);
            self.runs.push_back((arrived, pcm.len()));
        }
    }

    /// When the next chunk may go out and how long it is. A chunk goes out once its *first*
    /// byte is due and all its bytes are here, like a TTS agent that streams slightly ahead
    /// of playback; a short chunk goes out when the caller pauses for `IDLE_FLUSH`.
    fn next_chunk(&self) -> Option<(Instant, usize)> {
        let want = self.chunks[self.pattern_pos];
        let first = self.runs.front()?.0;
        let first_due = first + self.delay;
        let mut len = 0;
        let mut last = first;
        for &(arrived, run_len) in &self.runs {
            if arrived > last + IDLE_FLUSH {
                return Some((first_due, len));
            }
            len += run_len;
            if len >= want {
                return Some((first_due, want));
            }
            last = arrived;
        }
        Some((first_due.max(last + IDLE_FLUSH), len))
    }

    fn next_due(&self) -> Option<Instant> {
        self.next_chunk().map(|(at, _)| at)
    }

    fn pop_due(&mut self, now: Instant) -> Option<Vec<u8>> {
        let (at, len) = self.next_chunk()?;
        if at > now {
            return None;
        }
        let mut left = len;
        while let Some(run) = self.runs.front_mut() {
            if run.1 > left {
                run.1 -= left;
                break;
            }
            left -= run.1;
            self.runs.pop_front();
        }
        self.pattern_pos = (self.pattern_pos + 1) % self.chunks.len();
        Some(self.bytes.drain(..len).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::sts::{parse_text, FromAgent};
    use std::net::TcpStream;

    const FRAME: Duration = Duration::from_millis(20);

    /// A read timeout, as the OS reports it: WouldBlock on Unix, TimedOut on Windows.
    fn is_timeout(e: &io::Error) -> bool {
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        )
    }
    const WAIT: Duration = Duration::from_secs(3);

    #[test]
    fn queue_cuts_a_steady_stream_into_the_pattern() {
        let t0 = Instant::now();
        let mut queue = EchoQueue::new(Duration::ZERO, SLIN_RATE_HZ);
        let mut sizes = Vec::new();
        for k in 0..100u32 {
            let now = t0 + FRAME * k;
            queue.push(now, &[0; 320]);
            while let Some(chunk) = queue.pop_due(now) {
                sizes.push(chunk.len());
            }
        }
        let expected: Vec<usize> = CHUNK_PATTERN
            .iter()
            .copied()
            .cycle()
            .take(sizes.len())
            .collect();
        assert_eq!(sizes, expected);
    }

    #[test]
    fn queue_holds_until_due_and_flushes_a_short_tail_after_a_pause() {
        let t0 = Instant::now();
        let mut queue = EchoQueue::new(Duration::ZERO, SLIN_RATE_HZ);
        assert_eq!(queue.next_due(), None);
        queue.push(t0 + FRAME, &[1; 320]);
        assert_eq!(queue.pop_due(t0), None, "nothing before its due time");
        assert_eq!(queue.next_due(), Some(t0 + FRAME));
        assert_eq!(queue.pop_due(t0 + FRAME).map(|c| c.len()), Some(160));
        // The 1000-byte chunk cannot fill: the remaining 160 bytes go out after the pause.
        assert_eq!(queue.next_due(), Some(t0 + FRAME + IDLE_FLUSH));
        assert_eq!(queue.pop_due(t0 + FRAME + IDLE_FLUSH - FRAME), None);
        assert_eq!(queue.pop_due(t0 + FRAME + IDLE_FLUSH), Some(vec![1; 160]));
        assert_eq!(queue.next_due(), None);
    }

    #[test]
    fn chunks_scale_with_the_rate() {
        let at = |rate| {
            (0..CHUNK_PATTERN.len())
                .map(|i| chunk_bytes(i, rate))
                .collect::<Vec<_>>()
        };
        assert_eq!(at(SLIN_RATE_HZ), CHUNK_PATTERN);
        assert_eq!(at(16_000), [320, 2000, 960, 4800, 640, 80]);
        assert_eq!(at(44_100), [882, 5512, 2646, 13230, 1764, 220]);
        // A steady 16 kHz stream (640-byte frames) is cut into the 16 kHz pattern.
        let t0 = Instant::now();
        let mut queue = EchoQueue::new(Duration::ZERO, 16_000);
        let mut sizes = Vec::new();
        for k in 0..100u32 {
            let now = t0 + FRAME * k;
            queue.push(now, &[0; 640]);
            while let Some(chunk) = queue.pop_due(now) {
                sizes.push(chunk.len());
            }
        }
        let expected: Vec<usize> = at(16_000).into_iter().cycle().take(sizes.len()).collect();
        assert_eq!(sizes, expected);
        assert!(sizes.len() > 12, "{sizes:?}");
    }

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    /// What a command line that parses runs.
    fn parsed(line: &str) -> EchoCommand {
        match parse_args(&args(line)) {
            Ok(Parsed::Run(parsed)) => parsed,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn rate_flag() {
        let rate = |line: &str| parsed(line).rate_hz;
        assert_eq!(rate(""), 8_000);
        assert_eq!(rate("--rate 16000"), 16_000);
        assert_eq!(rate("--rate=11025"), 11_025);
        for bad in ["--rate 7999", "--rate 192001", "--rate 16k", "--rate"] {
            let err = parse_args(&args(bad)).unwrap_err().to_string();
            assert!(err.starts_with("--rate"), "{bad}: {err}");
        }
        let e = parse_args(&args("--rate 4000")).unwrap_err().to_string();
        assert!(
            e.contains("from 8000 to 192000 (as STS_SAMPLE_RATE)"),
            "{e}"
        );
        let e = EchoServer::start_at(
            "127.0.0.1:0".parse().unwrap(),
            EchoOptions::default(),
            0,
            None,
        )
        .err()
        .expect("a zero rate is refused");
        assert!(e.to_string().contains("above 0 Hz"), "{e}");
    }

    #[test]
    fn parse_args_defaults_flags_and_errors() {
        let run = |line: &str| {
            let command = parsed(line);
            (command.bind, command.opts)
        };
        let (addr, opts) = run("");
        assert_eq!(addr, "127.0.0.1:6030".parse().unwrap());
        assert_eq!(opts, EchoOptions::default());

        let (addr, opts) = run("--bind 0.0.0.0 --port 7000 --delay-ms 50 --no-transcripts");
        assert_eq!(addr, "0.0.0.0:7000".parse().unwrap());
        assert_eq!(opts.delay, Duration::from_millis(50));
        assert!(!opts.transcripts);
        let (addr, opts) = run("--bind=::1 --port=7001 --delay-ms=60000");
        assert_eq!(addr, "[::1]:7001".parse().unwrap());
        assert_eq!(opts.delay, MAX_DELAY);
        assert_eq!(parse_args(&args("--help")), Ok(Parsed::Help));

        for (bad, flag) in [
            ("--port", "--port"),
            ("--port 70000", "--port"),
            ("--bind localhost", "--bind"),
            ("--delay-ms -1", "--delay-ms"),
            ("--delay-ms 600000", "--delay-ms"),
            ("--verbose", "--verbose"),
            ("--no-transcripts=yes", "--no-transcripts takes no value"),
        ] {
            let err = parse_args(&args(bad)).unwrap_err().to_string();
            assert!(err.contains(flag), "{bad}: {err}");
        }
    }

    /// A tungstenite client with a deadline on every read.
    struct Client {
        ws: WebSocket<TcpStream>,
    }

    impl Client {
        fn connect(server: &EchoServer, path: &str) -> Client {
            let stream = TcpStream::connect(server.local_addr()).unwrap();
            let (ws, _) = tungstenite::client(format!("{}{path}", server.url()), stream).unwrap();
            Client { ws }
        }

        fn send(&mut self, text: &str) {
            self.ws.send(Message::text(text)).unwrap();
        }

        fn send_audio(&mut self, pcm: &[u8]) {
            self.send(&audio_message(pcm));
        }

        /// The next text message as avr-core reads it, or `None` once `deadline` passes.
        fn recv_until(&mut self, deadline: Instant) -> Option<FromAgent> {
            loop {
                let left = deadline.checked_duration_since(Instant::now())?;
                if left.is_zero() {
                    return None;
                }
                self.ws.get_ref().set_read_timeout(Some(left)).unwrap();
                match self.ws.read() {
                    Ok(Message::Text(text)) => return Some(parse_text(&text)),
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e)) if is_timeout(&e) => return None,
                    Err(e) => panic!("echo connection failed: {e}"),
                }
            }
        }

        fn recv_transcript(&mut self) -> (String, String) {
            let deadline = Instant::now() + WAIT;
            loop {
                if let FromAgent::Transcript { role, text } =
                    self.recv_until(deadline).expect("a transcript")
                {
                    return (role, text);
                }
            }
        }
    }

    fn start(opts: EchoOptions) -> (EchoServer, Receiver<EchoEvent>) {
        let server = EchoServer::start("127.0.0.1:0".parse().unwrap(), opts).unwrap();
        let events = server.events();
        (server, events)
    }

    fn next_event(events: &Receiver<EchoEvent>) -> EchoEvent {
        events.recv_timeout(WAIT).expect("an echo event")
    }

    #[test]
    fn init_is_reported_with_the_path() {
        let (server, events) = start(EchoOptions::default());
        let mut client = Client::connect(&server, "/?from=2000&to=5001");
        let init = r#"{"type":"init","uuid":"0f0e0d0c-0b0a-0908-0706-050403020100"}"#;
        client.send(init);
        let path = "/?from=2000&to=5001".to_owned();
        assert_eq!(next_event(&events), EchoEvent::Connected { conn: 1, path });
        let text = init.to_owned();
        assert_eq!(next_event(&events), EchoEvent::Received { conn: 1, text });
    }

    /// What came back over one connection.
    #[derive(Default)]
    struct Replies {
        echoed: Vec<u8>,
        /// End offset in `echoed` and arrival time of each audio chunk.
        chunks: Vec<(usize, Instant)>,
        transcripts: Vec<(String, String)>,
    }

    impl Replies {
        fn absorb(&mut self, msg: FromAgent) {
            match msg {
                FromAgent::Audio(pcm) => {
                    assert_eq!(pcm.len() % 2, 0, "the echo sends whole samples");
                    self.echoed.extend(pcm);
                    self.chunks.push((self.echoed.len(), Instant::now()));
                }
                FromAgent::Transcript { role, text } => self.transcripts.push((role, text)),
                other => panic!("unexpected message {other:?}"),
            }
        }
    }

    #[test]
    fn one_second_of_audio_comes_back_exact_uneven_and_delayed() {
        one_second_comes_back(SLIN_RATE_HZ);
    }

    #[test]
    fn at_16_khz_a_second_is_32000_bytes_and_chunks_last_as_long() {
        one_second_comes_back(16_000);
    }

    /// One second of caller audio at `rate_hz`, in 20 ms messages, to an agent at that rate:
    /// it comes back exact, in uneven chunks of the rate's pattern, each no sooner than the
    /// delay; one transcript pair marks the second.
    fn one_second_comes_back(rate_hz: u32) {
        let opts = EchoOptions::default();
        let server =
            EchoServer::start_at("127.0.0.1:0".parse().unwrap(), opts, rate_hz, None).unwrap();
        let frame_bytes = 2 * rates::frame_samples(rate_hz);
        let mut client = Client::connect(&server, "/");
        client.send(r#"{"type":"init","uuid":"u"}"#);
        let sent: Vec<u8> = (0..rate_hz as u16).flat_map(|i| i.to_le_bytes()).collect();
        let mut sent_at = Vec::new();
        let mut replies = Replies::default();
        let start = Instant::now();
        for (k, frame) in sent.chunks(frame_bytes).enumerate() {
            sent_at.push(Instant::now());
            client.send_audio(frame);
            while let Some(msg) = client.recv_until(start + FRAME * (k as u32 + 1)) {
                replies.absorb(msg);
            }
        }
        let deadline = Instant::now() + WAIT;
        while replies.echoed.len() < sent.len() {
            replies.absorb(client.recv_until(deadline).expect("the rest of the echo"));
        }

        assert!(replies.echoed == sent, "echo differs from what was sent");
        let mut sizes: Vec<usize> = Vec::new();
        let mut start_offset = 0;
        for &(end, at) in &replies.chunks {
            let size = end - start_offset;
            assert_eq!(size % 2, 0, "a chunk split a sample");
            if !sizes.contains(&size) {
                sizes.push(size);
            }
            let first_frame = start_offset / frame_bytes;
            assert!(
                at >= sent_at[first_frame] + opts.delay,
                "chunk starting at {start_offset} came before its first byte was due"
            );
            start_offset = end;
        }
        assert!(sizes.len() >= 3, "chunk sizes {sizes:?}");
        assert!(
            sizes.contains(&chunk_bytes(1, rate_hz)),
            "chunk sizes {sizes:?}"
        );
        let expected = [
            ("user", "caller audio, second 1"),
            ("agent", "echoing 1.0 s of audio"),
        ]
        .map(|(role, text)| (role.to_owned(), text.to_owned()));
        assert_eq!(replies.transcripts, expected);
    }

    #[test]
    fn dtmf_gets_a_transcript() {
        let (server, events) = start(EchoOptions::default());
        let mut client = Client::connect(&server, "/");
        client.send(r#"{"type":"dtmf_digit","digit":"5"}"#);
        assert_eq!(
            client.recv_transcript(),
            ("agent".into(), "You pressed 5".into())
        );
        assert!(matches!(next_event(&events), EchoEvent::Connected { .. }));
        assert!(
            matches!(next_event(&events), EchoEvent::Received { text, .. } if text.contains("dtmf"))
        );
    }

    #[test]
    fn garbage_does_not_end_the_connection() {
        let (server, events) = start(EchoOptions::default());
        let mut client = Client::connect(&server, "/");
        for garbage in [
            "not json{",
            r#"{"type":"bogus"}"#,
            r#"{"no_type":1}"#,
            r#"{"type":"audio","audio":"!!!"}"#,
            r#"{"type":"audio","audio":"AA=="}"#,
            r#"{"type":"audio"}"#,
            r#"{"type":"init","payload":[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]}"#,
        ] {
            client.send(garbage);
        }
        client.ws.send(Message::binary(vec![0u8; 4])).unwrap();
        client.send(r##"{"type":"dtmf_digit","digit":"#"}"##);
        assert_eq!(
            client.recv_transcript(),
            ("agent".into(), "You pressed #".into())
        );
        let received: Vec<EchoEvent> = events.try_iter().collect();
        let texts = received
            .iter()
            .filter(|e| matches!(e, EchoEvent::Received { .. }));
        assert_eq!(
            texts.count(),
            5,
            "non-audio texts are reported: {received:?}"
        );
    }

    #[test]
    fn closing_the_client_ends_the_connection_thread() {
        let (server, events) = start(EchoOptions::default());
        let mut polite = Client::connect(&server, "/");
        let abrupt = Client::connect(&server, "/");
        polite.send_audio(&[0; 320]); // pending audio must not keep the thread alive
        polite.ws.close(None).unwrap();
        polite.ws.get_ref().set_read_timeout(Some(WAIT)).unwrap();
        loop {
            match polite.ws.read() {
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed) => break,
                Err(e) => panic!("close handshake failed: {e}"),
            }
        }
        drop(abrupt);
        let mut closed: Vec<u64> = Vec::new();
        while closed.len() < 2 {
            if let EchoEvent::Closed { conn } = next_event(&events) {
                closed.push(conn);
            }
        }
        closed.sort();
        assert_eq!(closed, [1, 2]);
    }

    /// One thread serves everyone: a socket that never upgrades, and a client that reads
    /// nothing while megabytes of echo pile up for it, hold up no other connection; the late
    /// reader then gets its whole echo, exact.
    #[test]
    fn a_silent_or_slow_client_holds_up_nobody() {
        let opts = EchoOptions {
            delay: Duration::ZERO,
            transcripts: true,
        };
        let (server, _events) = start(opts);
        let _silent = TcpStream::connect(server.local_addr()).unwrap();
        let mut slow = Client::connect(&server, "/");
        let frame: Vec<u8> = (0..16_000u16).flat_map(|i| i.to_le_bytes()).collect();
        // 6.4 MB of caller audio, 8.5 MB as JSON: more than the kernel holds for a client that
        // does not read (the send buffer grows to 4 MB, the unread receive window stays small).
        const FRAMES: usize = 200;
        for _ in 0..FRAMES {
            slow.send_audio(&frame);
        }
        let mut quick = Client::connect(&server, "/");
        quick.send(r#"{"type":"dtmf_digit","digit":"1"}"#);
        assert_eq!(
            quick.recv_transcript(),
            ("agent".into(), "You pressed 1".into())
        );
        let mut replies = Replies::default();
        let deadline = Instant::now() + Duration::from_secs(30);
        while replies.echoed.len() < FRAMES * frame.len() {
            let got = replies.echoed.len();
            replies.absorb(
                slow.recv_until(deadline)
                    .unwrap_or_else(|| panic!("the rest of the echo after {got}")),
            );
        }
        assert!(
            replies.echoed.chunks(frame.len()).all(|f| f == frame),
            "echo differs from what was sent"
        );
    }

    #[test]
    fn dropping_the_server_closes_its_port() {
        let (server, _events) = start(EchoOptions::default());
        let addr = server.local_addr();
        let mut client = Client::connect(&server, "/");
        drop(server);
        let refused = TcpStream::connect(addr).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        // The connection already open goes on.
        client.send(r#"{"type":"dtmf_digit","digit":"9"}"#);
        assert_eq!(
            client.recv_transcript(),
            ("agent".into(), "You pressed 9".into())
        );
    }
}
