//! The speech-to-speech agent: its JSON messages and the WebSocket connection.
//!
//! tungstenite's blocking `WebSocket` cannot be split into read and write halves, so one
//! thread owns it. That thread sleeps in `poll(2)` on the socket *and* on an eventfd that the
//! caller-audio [`Outbox`] rings, then drains both without blocking: caller audio is
//! forwarded the moment it arrives and nothing wakes up on a timer.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, ErrorKind};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
use serde::Deserialize;
use serde_json::Value;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Connector, HandshakeError, Message, WebSocket};

/// The agent connection.
pub type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// Caller audio held while the agent is not taking it: 1 s of 8 kHz s16le (SPEC §4).
pub const OUTBOX_AUDIO_CAP: usize = 16_000;

/// Why the agent could not be reached or was lost.
#[derive(Debug)]
pub enum StsError {
    /// The host name did not resolve.
    Resolve { url: String, source: io::Error },
    /// TCP connect, TLS or the WebSocket upgrade took longer than `STS_CONNECT_TIMEOUT`.
    Timeout { url: String, budget: Duration },
    /// The TCP connection was refused or failed.
    Connect { url: String, source: io::Error },
    /// TLS or the WebSocket upgrade failed (bad certificate, HTTP error status, …).
    Handshake { url: String, detail: String },
    /// The established connection failed.
    Socket(String),
}

impl fmt::Display for StsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StsError::Resolve { url, source } => {
                write!(f, "cannot resolve the STS host of {url}: {source}")
            }
            StsError::Timeout { url, budget } => write!(
                f,
                "STS {url} did not complete the connection within {} ms (STS_CONNECT_TIMEOUT)",
                budget.as_millis()
            ),
            StsError::Connect { url, source } => {
                write!(f, "cannot connect to STS {url}: {source}")
            }
            StsError::Handshake { url, detail } => {
                write!(f, "STS {url} refused the WebSocket handshake: {detail}")
            }
            StsError::Socket(detail) => write!(f, "STS connection failed: {detail}"),
        }
    }
}

impl std::error::Error for StsError {}

/// TLS settings for `wss://`: Mozilla's roots, plus the PEM certificates in `extra_ca`
/// (for agents behind a private CA).
pub fn tls_config(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read CA certificates from {}: {e}", path.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("unusable certificate in {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        // Audio messages are a few KiB; the 128 KiB default would cost that much per call.
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(512 * 1024)
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20))
}

/// Connects to `url` within `budget` (TCP, TLS and the WebSocket upgrade together), and
/// leaves the socket non-blocking for [`pump`].
pub fn connect(
    url: &str,
    budget: Duration,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Ws, StsError> {
    let deadline = Instant::now() + budget;
    let timeout = || StsError::Timeout {
        url: url.to_string(),
        budget,
    };
    let uri: tungstenite::http::Uri = url.parse().map_err(|e| StsError::Handshake {
        url: url.to_string(),
        detail: format!("invalid URL: {e}"),
    })?;
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_matches(|c| c == '[' || c == ']');
    let tls_scheme = uri
        .scheme_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("wss"));
    let port = uri.port_u16().unwrap_or(if tls_scheme { 443 } else { 80 });
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|source| StsError::Resolve {
            url: url.to_string(),
            source,
        })?
        .collect();

    let mut last_err = io::Error::new(ErrorKind::NotFound, "no address");
    let mut stream = None;
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timeout());
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = e,
        }
    }
    let stream = match stream {
        Some(s) => s,
        None if last_err.kind() == ErrorKind::TimedOut => return Err(timeout()),
        None => {
            return Err(StsError::Connect {
                url: url.to_string(),
                source: last_err,
            })
        }
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(timeout());
    }
    let io_err = |e: io::Error| StsError::Connect {
        url: url.to_string(),
        source: e,
    };
    stream.set_nodelay(true).map_err(io_err)?;
    stream.set_read_timeout(Some(left)).map_err(io_err)?;
    stream.set_write_timeout(Some(left)).map_err(io_err)?;

    let connector = Connector::Rustls(tls.clone());
    let ws = match tungstenite::client_tls_with_config(
        url,
        stream,
        Some(ws_config()),
        Some(connector),
    ) {
        Ok((ws, _response)) => ws,
        Err(HandshakeError::Interrupted(_)) => return Err(timeout()),
        Err(HandshakeError::Failure(tungstenite::Error::Io(e)))
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
        {
            return Err(timeout())
        }
        Err(HandshakeError::Failure(e)) => {
            return Err(StsError::Handshake {
                url: url.to_string(),
                detail: e.to_string(),
            })
        }
    };
    let tcp = tcp_of(ws.get_ref());
    tcp.set_read_timeout(None).map_err(io_err)?;
    tcp.set_write_timeout(None).map_err(io_err)?;
    tcp.set_nonblocking(true).map_err(io_err)?;
    Ok(ws)
}

fn tcp_of(stream: &MaybeTlsStream<TcpStream>) -> &TcpStream {
    match stream {
        MaybeTlsStream::Plain(s) => s,
        MaybeTlsStream::Rustls(s) => s.get_ref(),
        _ => unreachable!("only plain and rustls streams are built"),
    }
}

// ---- messages -------------------------------------------------------------------------

/// `{"type":"init","uuid":…}`, with the `/call` metadata as `payload` when there is any.
pub fn init_message(uuid: &str, metadata: Option<&Value>) -> String {
    let mut msg = serde_json::json!({"type": "init", "uuid": uuid});
    if let Some(meta) = metadata {
        msg["payload"] = meta.clone();
    }
    msg.to_string()
}

/// `{"type":"audio","audio":"<base64>"}`, built without an intermediate JSON tree: this runs
/// for every caller frame of every call.
pub fn audio_message(pcm: &[u8]) -> String {
    let engine = &base64::engine::general_purpose::STANDARD;
    let mut out = String::with_capacity(28 + pcm.len().div_ceil(3) * 4);
    out.push_str(r#"{"type":"audio","audio":""#);
    engine.encode_string(pcm, &mut out);
    out.push_str(r#""}"#);
    out
}

/// `{"type":"dtmf_digit","digit":"5"}`.
pub fn dtmf_message(digit: char) -> String {
    serde_json::json!({"type": "dtmf_digit", "digit": digit.to_string()}).to_string()
}

/// A message from the agent, mapped to what the call does with it.
#[derive(Debug, PartialEq)]
pub enum Inbound {
    /// 8 kHz s16le audio to play. `odd_byte_dropped` when the agent sent an odd length.
    Audio {
        pcm: Vec<u8>,
        odd_byte_dropped: bool,
    },
    Interruption,
    Transcript {
        role: String,
        text: String,
    },
    /// The agent reported an error; the call goes on.
    AgentError(String),
    /// A well-formed message of a type avr-core does not know.
    Unknown(String),
    /// Not a usable message (bad JSON, no type, bad base64, …).
    Invalid(String),
}

#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: Option<String>,
    audio: Option<String>,
    role: Option<String>,
    text: Option<String>,
    message: Option<Value>,
    error: Option<Value>,
}

/// Maps one text frame from the agent.
pub fn parse_text(text: &str) -> Inbound {
    let msg: Incoming = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => return Inbound::Invalid(format!("not a JSON message ({e})")),
    };
    let Some(kind) = msg.kind else {
        return Inbound::Invalid("message without a \"type\"".into());
    };
    match kind.as_str() {
        "audio" => {
            let Some(b64) = msg.audio else {
                return Inbound::Invalid("audio message without an \"audio\" field".into());
            };
            match base64::engine::general_purpose::STANDARD.decode(b64.as_bytes()) {
                Ok(pcm) => audio(pcm),
                Err(e) => Inbound::Invalid(format!("audio is not valid base64 ({e})")),
            }
        }
        "interruption" => Inbound::Interruption,
        "transcript" => Inbound::Transcript {
            role: msg.role.unwrap_or_else(|| "unknown".into()),
            text: msg.text.unwrap_or_default(),
        },
        "error" => {
            let detail = msg.message.or(msg.error).unwrap_or(Value::Null);
            Inbound::AgentError(match detail {
                Value::String(s) => s,
                Value::Null => "(no message)".into(),
                other => other.to_string(),
            })
        }
        _ => Inbound::Unknown(kind),
    }
}

/// Binary frames carry raw 8 kHz s16le audio.
pub fn parse_binary(bytes: Vec<u8>) -> Inbound {
    audio(bytes)
}

fn audio(mut pcm: Vec<u8>) -> Inbound {
    let odd = pcm.len() % 2 == 1;
    if odd {
        pcm.pop();
    }
    Inbound::Audio {
        pcm,
        odd_byte_dropped: odd,
    }
}

// ---- the caller-to-agent queue ---------------------------------------------------------

/// Something the call sends to the agent.
#[derive(Debug, PartialEq)]
pub enum Outgoing {
    /// 8 kHz s16le caller audio.
    Audio(Vec<u8>),
    Dtmf(char),
}

/// Caller audio and DTMF waiting for the STS thread, with an eventfd to wake it.
///
/// Audio is capped at [`OUTBOX_AUDIO_CAP`]: while the agent is connecting (or stalls) the
/// newest second is kept and older audio is dropped, so memory stays bounded.
pub struct Outbox {
    state: Mutex<OutboxState>,
    wake: OwnedFd,
}

#[derive(Default)]
struct OutboxState {
    items: VecDeque<Outgoing>,
    audio_bytes: usize,
    closed: bool,
}

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub struct Pushed {
    /// Bytes of older caller audio dropped to stay within the cap.
    pub dropped_bytes: usize,
}

impl Outbox {
    pub fn new() -> io::Result<Outbox> {
        let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(Outbox {
            state: Mutex::new(OutboxState::default()),
            wake,
        })
    }

    /// Queues an item and wakes the STS thread if it may be asleep.
    pub fn push(&self, item: Outgoing) -> Pushed {
        let mut dropped_bytes = 0;
        let was_empty;
        {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if st.closed {
                return Pushed { dropped_bytes: 0 };
            }
            was_empty = st.items.is_empty();
            if let Outgoing::Audio(pcm) = &item {
                st.audio_bytes += pcm.len();
            }
            st.items.push_back(item);
            // Drop the oldest audio, never the item just queued (however large it is).
            while st.audio_bytes > OUTBOX_AUDIO_CAP {
                let older = st.items.len() - 1;
                let Some(pos) = st
                    .items
                    .iter()
                    .take(older)
                    .position(|i| matches!(i, Outgoing::Audio(_)))
                else {
                    break;
                };
                if let Some(Outgoing::Audio(old)) = st.items.remove(pos) {
                    st.audio_bytes -= old.len();
                    dropped_bytes += old.len();
                }
            }
        }
        // The consumer clears the eventfd before taking the queue, so a push into a
        // non-empty queue is always seen without another wake-up.
        if was_empty {
            self.ring();
        }
        Pushed { dropped_bytes }
    }

    /// Asks the STS thread to close the WebSocket and return.
    pub fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.ring();
    }

    fn ring(&self) {
        // Fails only if the counter would overflow, which means a wake-up is pending anyway.
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    /// Moves everything queued into `into`; returns whether the call asked to close.
    fn take(&self, into: &mut Vec<Outgoing>) -> bool {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.wake, &mut buf);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        into.extend(st.items.drain(..));
        st.audio_bytes = 0;
        st.closed
    }
}

// ---- the pump --------------------------------------------------------------------------

/// How a [`pump`] ended.
#[derive(Debug)]
pub enum PumpEnd {
    /// The agent closed the WebSocket (code and reason, if it gave them).
    AgentClosed(String),
    /// The call asked to close ([`Outbox::close`]); a close frame was sent.
    Closed,
    /// The connection broke.
    Failed(StsError),
}

/// Counts of what the pump forwarded, for the call's closing log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct PumpStats {
    pub audio_sent: u64,
    pub messages_received: u64,
    pub dropped_for_backpressure: u64,
}

/// Sends `init`, then forwards the outbox to the agent and every agent message to
/// `on_inbound`, until either side closes.
pub fn pump(
    ws: &mut Ws,
    init: String,
    outbox: &Outbox,
    stats: &mut PumpStats,
    mut on_inbound: impl FnMut(Inbound),
) -> PumpEnd {
    let mut batch = Vec::new();
    let mut unflushed;
    if let Err(e) = queue(ws, Message::text(init), stats) {
        return PumpEnd::Failed(e);
    }
    let mut closing = false;
    loop {
        match flush(ws) {
            Ok(pending) => unflushed = pending,
            Err(e) => return PumpEnd::Failed(e),
        }
        if closing && !unflushed {
            return PumpEnd::Closed;
        }

        let (ws_events, woken) = {
            let mut ws_flags = PollFlags::IN;
            if unflushed {
                ws_flags |= PollFlags::OUT;
            }
            let mut fds = [
                PollFd::new(tcp_of(ws.get_ref()), ws_flags),
                PollFd::new(&outbox.wake, PollFlags::IN),
            ];
            // Once closing, the outbox is no longer read: leaving it in would spin.
            let watched = if closing { 1 } else { 2 };
            // While closing, give a slow agent a moment to take the close frame, no more.
            let limit = rustix::event::Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            match poll(&mut fds[..watched], closing.then_some(&limit)) {
                Ok(0) if closing => return PumpEnd::Closed,
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return PumpEnd::Failed(StsError::Socket(format!("poll: {e}"))),
            }
            (fds[0].revents(), !closing && !fds[1].revents().is_empty())
        };

        if woken {
            if outbox.take(&mut batch) {
                closing = true;
                if let Err(e) = ws.close(None) {
                    if !is_would_block(&e) {
                        return PumpEnd::Closed;
                    }
                }
            }
            for item in batch.drain(..) {
                if closing {
                    continue;
                }
                let text = match item {
                    Outgoing::Audio(pcm) => {
                        stats.audio_sent += 1;
                        audio_message(&pcm)
                    }
                    Outgoing::Dtmf(d) => dtmf_message(d),
                };
                if let Err(e) = queue(ws, Message::text(text), stats) {
                    return PumpEnd::Failed(e);
                }
            }
        }

        if ws_events.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
            loop {
                match ws.read() {
                    Ok(Message::Text(t)) => {
                        stats.messages_received += 1;
                        on_inbound(parse_text(t.as_str()));
                    }
                    Ok(Message::Binary(b)) => {
                        stats.messages_received += 1;
                        on_inbound(parse_binary(b.to_vec()));
                    }
                    Ok(Message::Close(frame)) => {
                        if closing {
                            return PumpEnd::Closed;
                        }
                        let why = match frame {
                            Some(f) if f.reason.is_empty() => format!("code {}", f.code),
                            Some(f) => format!("code {}: {}", f.code, f.reason),
                            None => "no close code".into(),
                        };
                        let _ = ws.flush();
                        return PumpEnd::AgentClosed(why);
                    }
                    Ok(_) => {} // ping/pong: tungstenite answers pings itself
                    Err(e) if is_would_block(&e) => break,
                    Err(tungstenite::Error::ConnectionClosed)
                    | Err(tungstenite::Error::AlreadyClosed) => {
                        return if closing {
                            PumpEnd::Closed
                        } else {
                            PumpEnd::AgentClosed("connection closed".into())
                        };
                    }
                    Err(e) => {
                        return if closing {
                            PumpEnd::Closed
                        } else {
                            PumpEnd::Failed(StsError::Socket(e.to_string()))
                        };
                    }
                }
            }
        }
    }
}

fn is_would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if io.kind() == ErrorKind::WouldBlock)
}

/// Hands a message to tungstenite; a full write buffer (agent not reading) drops it.
fn queue(ws: &mut Ws, msg: Message, stats: &mut PumpStats) -> Result<(), StsError> {
    match ws.write(msg) {
        Ok(()) => Ok(()),
        Err(e) if is_would_block(&e) => Ok(()),
        Err(tungstenite::Error::WriteBufferFull(_)) => {
            stats.dropped_for_backpressure += 1;
            Ok(())
        }
        Err(e) => Err(StsError::Socket(e.to_string())),
    }
}

/// Flushes; `Ok(true)` when bytes are still waiting for the socket to become writable.
fn flush(ws: &mut Ws) -> Result<bool, StsError> {
    match ws.flush() {
        Ok(()) => Ok(false),
        Err(e) if is_would_block(&e) => Ok(true),
        Err(tungstenite::Error::ConnectionClosed) => Ok(false),
        Err(e) => Err(StsError::Socket(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_exact() {
        assert_eq!(
            init_message("550e8400-e29b-41d4-a716-446655440000", None),
            r#"{"type":"init","uuid":"550e8400-e29b-41d4-a716-446655440000"}"#
        );
        let meta = serde_json::json!({"from": "2000"});
        assert_eq!(
            init_message("u", Some(&meta)),
            r#"{"type":"init","uuid":"u","payload":{"from":"2000"}}"#
        );
    }

    #[test]
    fn audio_message_round_trips() {
        let pcm: Vec<u8> = (0..=255u8).collect();
        let text = audio_message(&pcm);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "audio");
        assert_eq!(
            parse_text(&text),
            Inbound::Audio {
                pcm,
                odd_byte_dropped: false
            }
        );
    }

    #[test]
    fn dtmf_message_is_exact() {
        assert_eq!(dtmf_message('#'), r##"{"type":"dtmf_digit","digit":"#"}"##);
    }

    #[test]
    fn agent_messages_map() {
        assert_eq!(
            parse_text(r#"{"type":"interruption"}"#),
            Inbound::Interruption
        );
        assert_eq!(
            parse_text(r#"{"type":"transcript","role":"agent","text":"hi"}"#),
            Inbound::Transcript {
                role: "agent".into(),
                text: "hi".into()
            }
        );
        assert_eq!(
            parse_text(r#"{"type":"error","message":"quota"}"#),
            Inbound::AgentError("quota".into())
        );
        assert_eq!(
            parse_text(r#"{"type":"error","error":{"code":5}}"#),
            Inbound::AgentError(r#"{"code":5}"#.into())
        );
        assert_eq!(
            parse_text(r#"{"type":"mark","name":"x"}"#),
            Inbound::Unknown("mark".into())
        );
        assert!(matches!(parse_text("not json"), Inbound::Invalid(_)));
        assert!(matches!(
            parse_text(r#"{"audio":"AAA="}"#),
            Inbound::Invalid(_)
        ));
        assert!(matches!(
            parse_text(r#"{"type":"audio","audio":"@@@"}"#),
            Inbound::Invalid(_)
        ));
        assert_eq!(
            parse_text(r#"{"type":"audio","audio":"AAAA"}"#),
            Inbound::Audio {
                pcm: vec![0, 0],
                odd_byte_dropped: true
            }
        );
        assert_eq!(
            parse_binary(vec![1, 2, 3, 4]),
            Inbound::Audio {
                pcm: vec![1, 2, 3, 4],
                odd_byte_dropped: false
            }
        );
    }

    #[test]
    fn outbox_keeps_the_newest_second() {
        let outbox = Outbox::new().unwrap();
        let mut dropped = 0;
        for i in 0..60u8 {
            dropped += outbox.push(Outgoing::Audio(vec![i; 320])).dropped_bytes;
        }
        outbox.push(Outgoing::Dtmf('5'));
        assert_eq!(dropped, 10 * 320);
        let mut got = Vec::new();
        assert!(!outbox.take(&mut got));
        assert_eq!(got.len(), 51);
        assert_eq!(got[0], Outgoing::Audio(vec![10; 320]));
        assert_eq!(got[50], Outgoing::Dtmf('5'));
        outbox.close();
        assert!(outbox.take(&mut got));
    }
}
