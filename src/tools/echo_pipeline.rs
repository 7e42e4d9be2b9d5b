//! A built-in pipeline peer: `avr-core echo-pipeline`, fake ASR, LLM and TTS services on one
//! port, speaking the upstream connectors' HTTP streaming contracts (issue #12), for users
//! who want to see pipeline mode work and for the tests and the benchmark.
//!
//! - `POST /speech-to-text-stream` ([`asr`]): a transcript per `transcript_every` of
//!   *non-silent* caller audio, written while the upload goes on.
//! - `POST /prompt-stream` ([`llm`]): a scripted answer as undelimited JSON objects, cut into
//!   writes that do not line up with the objects.
//! - `POST /text-to-speech-stream` ([`tts`]): a tone, 50 ms per character, its pitch telling
//!   the sentences of a call apart.
//!
//! One thread per connection, blocking sockets, one request per connection (every answer
//! says `Connection: close`). Failure options make each service refuse or cut short, for the
//! failure tests.

mod asr;
mod command;
mod llm;
#[cfg(test)]
mod testing;
mod tts;
mod wire;

pub use command::{parse_args, run, PipelineCommand, USAGE};

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::http::parse::{parse_head, BodyParser, ParseError, RequestHead};
use crate::sys::{Printable, StopSignal};

/// The three paths, as the upstream connectors serve them.
pub const ASR_PATH: &str = "/speech-to-text-stream";
pub const LLM_PATH: &str = "/prompt-stream";
pub const TTS_PATH: &str = "/text-to-speech-stream";

/// Where `avr-core echo-pipeline` listens unless `--listen` says otherwise: beside
/// `echo-sts`'s 6030, and not a port of the upstream connectors (6010-6013), so both can run.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 6100);

/// Connections served at once; one more is answered 503 and closed. 100 benchmark calls use
/// at most three each.
pub const MAX_CONNECTIONS: usize = 512;

/// A request head is a line and a few headers; more is not a client of ours.
const MAX_HEAD: usize = 16 * 1024;

/// An LLM request carries the whole history; 1 MiB is hours of conversation.
const MAX_JSON_BODY: usize = 1024 * 1024;

/// Longest wait for the next bytes of a request head or JSON body: a client that stalls is
/// dropped (the size limits bound how long a trickle can last).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A client that stops reading must not hold its thread forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest accepted delay or cadence option: keeps `Instant` arithmetic far from overflow
/// and a typo from hanging a test for hours.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// Per-connection stack: the benchmark runs hundreds of connections on a small machine.
const CONN_STACK: usize = 128 * 1024;

/// Buffered events; when nobody drains them the newest are dropped, never the server.
const EVENT_CAPACITY: usize = 16 * 1024;

/// Bytes read per `read(2)`: a few 20 ms frames of caller audio.
const READ_SIZE: usize = 4096;

/// How the fake services behave. `Default` is what `avr-core echo-pipeline` serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineOptions {
    /// Non-silent caller audio per transcript.
    pub transcript_every: Duration,
    /// The transcripts, cycled; empty: "Transcript 1", "Transcript 2", …
    pub transcripts: Vec<String>,
    /// The LLM's answer; `{message}` is replaced by the request's message. `None`:
    /// [`DEFAULT_ANSWER`].
    pub answer: Option<String>,
    /// Before the LLM's first byte.
    pub llm_first_byte: Duration,
    /// Between the LLM's writes.
    pub llm_gap: Duration,
    /// Answer plain text, as some older connectors do, instead of JSON objects.
    pub llm_plain: bool,
    /// Before each TTS answer's first byte.
    pub tts_first_byte: Duration,
    /// Plus a random 0..this per TTS request, so later sentences may be ready first.
    pub tts_jitter: Duration,
    /// Audio per TTS chunk (at least 20 ms).
    pub tts_chunk: Duration,
    /// Between TTS chunks: zero writes as fast as the client reads; a real-time pace keeps
    /// a stream in flight long enough to be cancelled by a barge-in.
    pub tts_gap: Duration,
    /// Answer every ASR request with this status and a JSON error, at once.
    pub asr_status: Option<u16>,
    /// Answer every LLM request with this status and a JSON error.
    pub llm_status: Option<u16>,
    /// Answer every TTS request with this status and a JSON error.
    pub tts_status: Option<u16>,
    /// Answer 500 to a TTS request whose text contains this.
    pub tts_fail_text: Option<String>,
    /// End each ASR response this long after it began, to test reconnects.
    pub asr_close_after: Option<Duration>,
}

/// The LLM's answer unless [`PipelineOptions::answer`] says otherwise.
pub const DEFAULT_ANSWER: &str =
    "You said: {message}. This is the echo pipeline speaking. Goodbye for now!";

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            transcript_every: Duration::from_millis(1000),
            transcripts: Vec::new(),
            answer: None,
            llm_first_byte: Duration::ZERO,
            llm_gap: Duration::from_millis(10),
            llm_plain: false,
            tts_first_byte: Duration::ZERO,
            tts_jitter: Duration::ZERO,
            tts_chunk: Duration::from_millis(100),
            tts_gap: Duration::ZERO,
            asr_status: None,
            llm_status: None,
            tts_status: None,
            tts_fail_text: None,
            asr_close_after: None,
        }
    }
}

/// What the services saw, for tests and the demo's timeline. `uuid` is the request's
/// `X-UUID` header (`"-"` when it has none).
#[derive(Debug, Clone, PartialEq)]
pub enum PipelineEvent {
    /// An ASR stream was accepted (not sent for an injected `asr_status`).
    AsrOpened { uuid: String },
    /// Caller audio received, reported about once a second of it (`bytes` since the last).
    AsrAudio { uuid: String, bytes: usize },
    /// A transcript was written, at `at`.
    Transcript {
        uuid: String,
        text: String,
        at: Instant,
    },
    /// The ASR response ended; `bytes` of audio came in all.
    AsrClosed { uuid: String, bytes: u64 },
    /// An LLM request and its whole parsed body.
    LlmRequest {
        uuid: String,
        body: serde_json::Value,
    },
    /// The LLM answer was written whole, or the client left first (`cancelled`).
    LlmDone { uuid: String, cancelled: bool },
    /// A TTS request; `n` counts the call's TTS requests from 1 (the tone's pitch).
    TtsRequest { uuid: String, text: String, n: u64 },
    /// The TTS audio was written whole, or the client left first (`cancelled`); `bytes` of
    /// audio were written.
    TtsDone {
        uuid: String,
        n: u64,
        cancelled: bool,
        bytes: u64,
    },
}

/// A running pipeline peer. It accepts until dropped; connections already open run on.
pub struct EchoPipeline {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Arc<StopSignal>,
    accept_thread: Option<JoinHandle<()>>,
}

impl EchoPipeline {
    /// Binds `bind` (port 0 picks a free one) and starts accepting in a named thread.
    pub fn start(bind: SocketAddr, opts: PipelineOptions) -> io::Result<EchoPipeline> {
        Self::start_limited(bind, opts, MAX_CONNECTIONS)
    }

    /// [`start`](Self::start) serving at most `max_conns` connections at once.
    fn start_limited(
        bind: SocketAddr,
        opts: PipelineOptions,
        max_conns: usize,
    ) -> io::Result<EchoPipeline> {
        check_options(&opts)?;
        let listener = TcpListener::bind(bind)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {bind}: {e}")))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            max_conns,
            ..Shared::new(opts)
        });
        let stop = Arc::new(StopSignal::new()?);
        let accept_thread = thread::Builder::new()
            .name("echo-pipeline-accept".into())
            .spawn({
                let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
                move || accept_loop(&listener, &stop, &shared)
            })?;
        Ok(EchoPipeline {
            addr,
            shared,
            stop,
            accept_thread: Some(accept_thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ASR_URL`, `LLM_URL` and `TTS_URL` for this server; an unspecified bind address
    /// becomes loopback.
    pub fn urls(&self) -> [String; 3] {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let base = format!("http://{}", SocketAddr::new(ip, self.addr.port()));
        [ASR_PATH, LLM_PATH, TTS_PATH].map(|path| format!("{base}{path}"))
    }

    /// The event stream. Events are recorded only from the first call on, so a long-running
    /// server that nobody watches keeps nothing; every call returns the same stream.
    pub fn events(&self) -> Receiver<PipelineEvent> {
        self.shared.events.subscribe()
    }
}

impl Drop for EchoPipeline {
    /// Stops accepting and waits for the accept loop, so the port is closed on return.
    fn drop(&mut self) {
        self.stop.trigger();
        if let Some(accept) = self.accept_thread.take() {
            let _ = accept.join();
        }
    }
}

/// Refuses delays that would overflow or hang, and a zero transcript cadence.
fn check_options(opts: &PipelineOptions) -> io::Result<()> {
    let delays = [
        ("transcript_every", opts.transcript_every),
        ("llm_first_byte", opts.llm_first_byte),
        ("llm_gap", opts.llm_gap),
        ("tts_first_byte", opts.tts_first_byte),
        ("tts_jitter", opts.tts_jitter),
        ("tts_chunk", opts.tts_chunk),
        ("tts_gap", opts.tts_gap),
        ("asr_close_after", opts.asr_close_after.unwrap_or_default()),
    ];
    let invalid = |what: String| Err(io::Error::new(io::ErrorKind::InvalidInput, what));
    for (name, delay) in delays {
        if delay > MAX_DELAY {
            return invalid(format!("{name} {delay:?} is over the {MAX_DELAY:?} limit"));
        }
    }
    if opts.transcript_every.is_zero() {
        return invalid("transcript_every must be above zero".into());
    }
    for (name, status) in [
        ("asr_status", opts.asr_status),
        ("llm_status", opts.llm_status),
        ("tts_status", opts.tts_status),
    ] {
        if status.is_some_and(|s| !(100..=999).contains(&s)) {
            return invalid(format!("{name} must be an HTTP status 100-999"));
        }
    }
    Ok(())
}

/// What every connection thread shares.
struct Shared {
    opts: PipelineOptions,
    events: Events,
    /// Connections being served, and how many may be ([`MAX_CONNECTIONS`]).
    conns: AtomicUsize,
    max_conns: usize,
    /// TTS requests per call uuid so far.
    tts_counts: Mutex<HashMap<String, u64>>,
    /// For the TTS jitter.
    rng: Mutex<tts::XorShift>,
}

/// Calls whose TTS count is kept; past this the table starts over, so a server that runs
/// for months does not grow (a call then restarts its pitch cycle: harmless).
const MAX_TRACKED_CALLS: usize = 10_000;

impl Shared {
    fn new(opts: PipelineOptions) -> Shared {
        Shared {
            opts,
            events: Events::default(),
            conns: AtomicUsize::new(0),
            max_conns: MAX_CONNECTIONS,
            tts_counts: Mutex::new(HashMap::new()),
            rng: Mutex::new(tts::XorShift::seeded()),
        }
    }

    /// The number of this TTS request within its call, from 1.
    fn next_tts(&self, uuid: &str) -> u64 {
        let mut counts = crate::sys::lock(&self.tts_counts);
        if counts.len() >= MAX_TRACKED_CALLS && !counts.contains_key(uuid) {
            counts.clear();
        }
        let n = counts.entry(uuid.to_owned()).or_insert(0);
        *n += 1;
        *n
    }
}

/// The event channel, created on first subscription so that unwatched servers send nothing.
#[derive(Default)]
struct Events(OnceLock<(Sender<PipelineEvent>, Receiver<PipelineEvent>)>);

impl Events {
    fn subscribe(&self) -> Receiver<PipelineEvent> {
        let (_, rx) = self
            .0
            .get_or_init(|| crossbeam_channel::bounded(EVENT_CAPACITY));
        rx.clone()
    }

    /// `make` runs only when someone listens.
    fn emit(&self, make: impl FnOnce() -> PipelineEvent) {
        if let Some((tx, _)) = self.0.get() {
            let _ = tx.try_send(make());
        }
    }
}

/// Gives the connection slot back when the connection's thread ends (or never started).
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn accept_loop(listener: &TcpListener, stop: &StopSignal, shared: &Arc<Shared>) {
    let log_error = |e: &io::Error| log::warn!("Echo pipeline: accept failed: {e}");
    while let Some((stream, _)) = stop.accept(listener, log_error) {
        if shared.conns.fetch_add(1, Ordering::Relaxed) >= shared.max_conns {
            shared.conns.fetch_sub(1, Ordering::Relaxed);
            // Best effort and never blocking: the accept loop must not wait on one client.
            let _ = stream.set_nonblocking(true);
            let _ = wire::write_error(&stream, 503, "too many connections; try again");
            log::warn!(
                "Echo pipeline: over {} connections; refused one",
                shared.max_conns
            );
            continue;
        }
        let conn_shared = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name("echo-pipeline-conn".into())
            .stack_size(CONN_STACK)
            .spawn(move || {
                let _slot = Slot(&conn_shared.conns);
                serve(stream, &conn_shared);
            });
        if let Err(e) = spawned {
            // The closure was dropped unrun, so its slot was never taken back: do it here.
            shared.conns.fetch_sub(1, Ordering::Relaxed);
            log::error!("Echo pipeline: no thread for a connection ({e}); dropped it");
        }
    }
}

/// One connection: bytes read so far beyond what was parsed.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Reads more bytes into the buffer; `Ok(false)` at end of stream.
    fn fill(&mut self) -> io::Result<bool> {
        fill(&self.stream, &mut self.buf)
    }

    /// The request head; [`REQUEST_TIMEOUT`] bounds each wait.
    fn head(&mut self) -> Result<RequestHead, RequestError> {
        loop {
            if let Some(head) = parse_head(&mut self.buf, MAX_HEAD)? {
                return Ok(head);
            }
            if !self.fill()? {
                return Err(RequestError::Gone);
            }
        }
    }

    /// A whole JSON body (at most [`MAX_JSON_BODY`]); [`REQUEST_TIMEOUT`] bounds each wait.
    fn json_body(&mut self, head: &RequestHead) -> Result<serde_json::Value, RequestError> {
        let mut parser = BodyParser::new(head, MAX_HEAD, MAX_JSON_BODY);
        let body = loop {
            if let Some(body) = parser.parse(&mut self.buf)? {
                break body;
            }
            if !self.fill()? {
                return Err(parser.cut_short().into());
            }
        };
        serde_json::from_slice(&body).map_err(|e| RequestError::Json(e.to_string()))
    }
}

/// Reads more bytes from `stream` into `buf`; `Ok(false)` at end of stream.
fn fill(mut stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut chunk = [0u8; READ_SIZE];
    let n = stream.read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n > 0)
}

/// Why a request was not served.
#[derive(Debug)]
enum RequestError {
    /// The client left before a whole request.
    Gone,
    Io(io::Error),
    Parse(ParseError),
    /// The body is not the JSON the service takes.
    Json(String),
}

impl From<io::Error> for RequestError {
    fn from(e: io::Error) -> Self {
        RequestError::Io(e)
    }
}

impl From<ParseError> for RequestError {
    fn from(e: ParseError) -> Self {
        RequestError::Parse(e)
    }
}

impl RequestError {
    /// The answer to send, if the client is still there to read it.
    fn answer(&self) -> Option<(u16, String)> {
        match self {
            RequestError::Gone => None,
            RequestError::Io(e) if is_timeout(e) => {
                Some((408, format!("the request stalled for {REQUEST_TIMEOUT:?}")))
            }
            RequestError::Io(_) => None,
            RequestError::Parse(e) => Some((e.status(), e.to_string())),
            RequestError::Json(e) => Some((400, format!("the body is not the expected JSON: {e}"))),
        }
    }
}

/// A read timeout, as the OS reports it: WouldBlock on Unix, TimedOut on Windows.
/// How a streamed answer ended, for its log line.
fn outcome(cancelled: bool) -> &'static str {
    if cancelled {
        "cancelled by the client"
    } else {
        "sent"
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reads one request and hands it to its service.
fn serve(stream: TcpStream, shared: &Shared) {
    let setup = |s: &TcpStream| -> io::Result<()> {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        s.set_write_timeout(Some(WRITE_TIMEOUT))
    };
    if let Err(e) = setup(&stream) {
        log::warn!("Echo pipeline: socket setup failed: {e}");
        return;
    }
    let mut conn = Conn {
        stream,
        buf: Vec::with_capacity(READ_SIZE),
    };
    let head = match conn.head() {
        Ok(head) => head,
        Err(e) => return refuse(&conn, "-", &e),
    };
    let uuid = head.header("x-uuid").unwrap_or("-").to_owned();
    if head.expects_continue() {
        let _ = io::Write::write_all(&mut &conn.stream, b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let path = head.target.split('?').next().unwrap_or_default();
    let served = match (head.method.as_str(), path) {
        ("POST", ASR_PATH) => asr::serve(&mut conn, &head, &uuid, shared),
        ("POST", LLM_PATH) => llm::serve(&mut conn, &head, &uuid, shared),
        ("POST", TTS_PATH) => tts::serve(&mut conn, &head, &uuid, shared),
        (method, ASR_PATH | LLM_PATH | TTS_PATH) => {
            let message = format!("{method} is not served here; POST");
            let _ = wire::write_error(&conn.stream, 405, &message);
            Ok(())
        }
        (_, other) => {
            log::info!(
                "[{}] Echo pipeline: 404 for {}",
                Printable(&uuid),
                Printable(other)
            );
            let message =
                format!("no such path {other:?}; serving {ASR_PATH}, {LLM_PATH}, {TTS_PATH}");
            let _ = wire::write_error(&conn.stream, 404, &message);
            Ok(())
        }
    };
    if let Err(e) = served {
        refuse(&conn, &uuid, &e);
    }
}

/// Logs why a request was not served and answers it if the client can still read.
fn refuse(conn: &Conn, uuid: &str, e: &RequestError) {
    let Some((status, message)) = e.answer() else {
        log::debug!("[{}] Echo pipeline: client left: {e:?}", Printable(uuid));
        return;
    };
    log::info!(
        "[{}] Echo pipeline: {status}: {}",
        Printable(uuid),
        Printable(&message)
    );
    let _ = wire::write_error(&conn.stream, status, &message);
}

/// An injected failure: `status` with a JSON error naming the option.
fn inject(conn: &Conn, uuid: &str, status: u16, option: &str) -> Result<(), RequestError> {
    log::info!(
        "[{}] Echo pipeline: answering {status} ({option})",
        Printable(uuid)
    );
    let message = format!("echo-pipeline: failure injected by {option}");
    wire::write_error(&conn.stream, status, &message)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn options_out_of_range_are_refused() {
        let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let refused = |opts: PipelineOptions| {
            EchoPipeline::start(bind, opts)
                .err()
                .expect("refused")
                .to_string()
        };
        let e = refused(PipelineOptions {
            tts_jitter: Duration::from_secs(61),
            ..Default::default()
        });
        assert!(e.contains("tts_jitter"), "{e}");
        let e = refused(PipelineOptions {
            transcript_every: Duration::ZERO,
            ..Default::default()
        });
        assert!(e.contains("transcript_every"), "{e}");
        let e = refused(PipelineOptions {
            llm_status: Some(42),
            ..Default::default()
        });
        assert!(e.contains("llm_status"), "{e}");
    }

    #[test]
    fn urls_name_the_three_services_on_loopback() {
        let server = EchoPipeline::start("0.0.0.0:0".parse().unwrap(), Default::default()).unwrap();
        let port = server.local_addr().port();
        assert_eq!(
            server.urls(),
            [
                format!("http://127.0.0.1:{port}/speech-to-text-stream"),
                format!("http://127.0.0.1:{port}/prompt-stream"),
                format!("http://127.0.0.1:{port}/text-to-speech-stream"),
            ]
        );
    }

    #[test]
    fn unknown_paths_wrong_methods_and_bad_bodies_get_json_errors() {
        let (server, events) = start(PipelineOptions::default());
        let (status, error) = error_of(Response::read(send(&server, "/nope?x=1", "u", b"", false)));
        assert_eq!(status, 404);
        assert!(error.contains("\"/nope\""), "{error}");
        let mut s = TcpStream::connect(server.local_addr()).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        io::Write::write_all(&mut s, b"GET /prompt-stream HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(error_of(Response::read(s)).0, 405);
        for (path, body) in [(LLM_PATH, &b"{not json"[..]), (TTS_PATH, br#"{"txt":"a"}"#)] {
            let (status, error) = error_of(Response::read(send(&server, path, "u", body, false)));
            assert_eq!(status, 400, "{path}");
            assert!(error.contains("JSON"), "{error}");
        }
        let mut s = TcpStream::connect(server.local_addr()).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        io::Write::write_all(&mut s, b"\x01garbage\r\n\r\n").unwrap();
        assert_eq!(error_of(Response::read(s)).0, 400);
        assert!(events.try_recv().is_err(), "nothing was served");
    }

    #[test]
    fn connections_over_the_limit_are_answered_503_until_one_ends() {
        let bind = "127.0.0.1:0".parse().unwrap();
        let server = EchoPipeline::start_limited(bind, PipelineOptions::default(), 2).unwrap();
        let mut first = Response::read(send(&server, ASR_PATH, "a", b"", true));
        let _second = Response::read(send(&server, ASR_PATH, "b", b"", true));
        let (status, error) = error_of(Response::read(send(&server, LLM_PATH, "c", b"", true)));
        assert_eq!(status, 503);
        assert!(error.contains("too many connections"), "{error}");
        testing::write_chunk(first.stream(), b"");
        assert_eq!(first.chunks(), Vec::<Vec<u8>>::new());
        first.assert_closed();
        drop(first);
        // The slot comes back when the first connection's thread ends, a moment later; till
        // then a probe may be refused (or reset while it writes).
        let probe = || -> io::Result<Vec<u8>> {
            let mut s = TcpStream::connect(server.local_addr())?;
            s.set_read_timeout(Some(WAIT))?;
            io::Write::write_all(&mut s, b"GET /probe HTTP/1.1\r\n\r\n")?;
            let mut answer = Vec::new();
            io::Read::read_to_end(&mut s, &mut answer)?;
            Ok(answer)
        };
        let deadline = Instant::now() + WAIT;
        while !probe().is_ok_and(|a| a.starts_with(b"HTTP/1.1 404")) {
            assert!(Instant::now() < deadline, "the slot was never given back");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn dropping_the_server_closes_its_port() {
        let (server, _events) = start(PipelineOptions::default());
        let addr = server.local_addr();
        drop(server);
        let refused = TcpStream::connect(addr).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    }
}
