//! The speech-to-speech agent's WebSocket connection (the messages are in `proto::sts`).
//!
//! tungstenite's blocking `WebSocket` cannot be split into read and write halves, so the
//! call's one thread drives it without blocking ([`Link`]): it sleeps in `poll(2)` on the
//! AudioSocket *and* the WebSocket, forwards caller audio the moment it is read and agent
//! messages the moment they arrive, and nothing wakes up on a timer.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, ErrorKind};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Connector, HandshakeError, Message, WebSocket};

use crate::proto::sts::{
    audio_message, dtmf_message, parse_binary, parse_text, FromAgent, ToAgent,
};

/// The agent connection.
pub type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// Caller audio held while the agent is not taking it: 1 s of 8 kHz s16le (SPEC §4).
pub const BACKLOG_AUDIO_CAP: usize = 16_000;

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
/// leaves the socket non-blocking for [`Link`].
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

// ---- caller audio before the agent answers ---------------------------------------------

/// Caller audio and DTMF that arrive while the agent is still connecting, sent after `init`
/// (SPEC §4). Audio is capped at [`BACKLOG_AUDIO_CAP`]: the newest second is kept and older
/// audio is dropped, so a slow agent cannot make memory grow; DTMF is always kept.
#[derive(Default)]
pub struct Backlog {
    items: VecDeque<ToAgent>,
    audio_bytes: usize,
}

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub struct Pushed {
    /// Bytes of older caller audio dropped to stay within the cap.
    pub dropped_bytes: usize,
}

impl Backlog {
    pub fn push(&mut self, item: ToAgent) -> Pushed {
        let mut dropped_bytes = 0;
        if let ToAgent::Audio(pcm) = &item {
            self.audio_bytes += pcm.len();
        }
        self.items.push_back(item);
        // Drop the oldest audio, never the item just queued (however large it is).
        while self.audio_bytes > BACKLOG_AUDIO_CAP {
            let older = self.items.len() - 1;
            let Some(pos) = self
                .items
                .iter()
                .take(older)
                .position(|i| matches!(i, ToAgent::Audio(_)))
            else {
                break;
            };
            if let Some(ToAgent::Audio(old)) = self.items.remove(pos) {
                self.audio_bytes -= old.len();
                dropped_bytes += old.len();
            }
        }
        Pushed { dropped_bytes }
    }

    /// Everything queued, oldest first.
    pub fn drain(&mut self) -> impl Iterator<Item = ToAgent> + '_ {
        self.audio_bytes = 0;
        self.items.drain(..)
    }
}

// ---- the open connection ---------------------------------------------------------------

/// How a connection ended.
#[derive(Debug)]
pub enum LinkEnd {
    /// The agent closed the WebSocket (code and reason, if it gave them).
    AgentClosed(String),
    /// The connection broke.
    Failed(StsError),
}

/// Counts of what the connection carried, for the call's closing log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinkStats {
    pub audio_sent: u64,
    pub messages_received: u64,
    pub dropped_for_backpressure: u64,
}

/// The open WebSocket to the agent, driven by the call's thread without blocking: the thread
/// sleeps in `poll(2)` on the AudioSocket and on [`Link::fd`] with [`Link::interest`], sends
/// caller audio the moment it is read, and calls [`Link::on_ready`] when the agent's side
/// is ready. tungstenite's `WebSocket` cannot be split into read and write halves; one
/// thread doing both, never blocked on either, adds no latency to either.
pub struct Link {
    ws: Ws,
    pub stats: LinkStats,
    /// tungstenite holds bytes the socket did not take yet.
    unflushed: bool,
}

impl Link {
    /// Takes a connection from [`connect`] and sends `init` first.
    pub fn new(ws: Ws, init: String) -> Result<Link, StsError> {
        let mut link = Link {
            ws,
            stats: LinkStats::default(),
            unflushed: false,
        };
        link.queue(Message::text(init))?;
        link.flush()?;
        Ok(link)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        tcp_of(self.ws.get_ref()).as_fd()
    }

    /// What to poll the socket for: input always, output while bytes wait for room.
    pub fn interest(&self) -> PollFlags {
        if self.unflushed {
            PollFlags::IN | PollFlags::OUT
        } else {
            PollFlags::IN
        }
    }

    /// Sends caller audio or a digit. A full write buffer (the agent is not reading) drops
    /// the message and counts it: caller audio is real time, a backlog is worth nothing.
    pub fn send(&mut self, item: ToAgent) -> Result<(), StsError> {
        let text = match item {
            ToAgent::Audio(pcm) => {
                self.stats.audio_sent += 1;
                audio_message(&pcm)
            }
            ToAgent::Dtmf(d) => dtmf_message(d),
        };
        self.queue(Message::text(text))?;
        self.flush()
    }

    /// Handles readiness from `poll`: flushes, then hands every complete agent message to
    /// `on_agent_message` until the socket has nothing more. `Some` when the connection is over.
    pub fn on_ready(
        &mut self,
        revents: PollFlags,
        mut on_agent_message: impl FnMut(FromAgent),
    ) -> Option<LinkEnd> {
        if revents.contains(PollFlags::OUT) {
            if let Err(e) = self.flush() {
                return Some(LinkEnd::Failed(e));
            }
        }
        if !revents.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
            return None;
        }
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    self.stats.messages_received += 1;
                    on_agent_message(parse_text(t.as_str()));
                }
                Ok(Message::Binary(b)) => {
                    self.stats.messages_received += 1;
                    on_agent_message(parse_binary(b.to_vec()));
                }
                Ok(Message::Close(frame)) => {
                    let why = match frame {
                        Some(f) if f.reason.is_empty() => format!("code {}", f.code),
                        Some(f) => format!("code {}: {}", f.code, f.reason),
                        None => "no close code".into(),
                    };
                    // tungstenite queued the close reply; give it its chance.
                    let _ = self.ws.flush();
                    return Some(LinkEnd::AgentClosed(why));
                }
                Ok(_) => {} // ping/pong: tungstenite answers pings itself
                Err(e) if is_would_block(&e) => break,
                Err(tungstenite::Error::ConnectionClosed)
                | Err(tungstenite::Error::AlreadyClosed) => {
                    return Some(LinkEnd::AgentClosed("connection closed".into()))
                }
                Err(e) => return Some(LinkEnd::Failed(StsError::Socket(e.to_string()))),
            }
        }
        // A read may have queued a pong.
        self.flush().err().map(LinkEnd::Failed)
    }

    /// Sends a close frame and gives the agent [`CLOSE_LIMIT`] to take it and answer; the
    /// call is over, so blocking its thread this long costs nothing.
    pub fn close(mut self) {
        let deadline = Instant::now() + CLOSE_LIMIT;
        match self.ws.close(None) {
            Ok(()) => {}
            Err(e) if is_would_block(&e) => {}
            Err(_) => return,
        }
        loop {
            if self.flush().is_err() {
                return;
            }
            match self.ws.read() {
                Ok(_) => continue,
                Err(e) if is_would_block(&e) => {}
                Err(_) => return, // closed: the handshake is complete
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let limit = rustix::event::Timespec::try_from(left).ok();
            let mut fds = [PollFd::from_borrowed_fd(self.fd(), self.interest())];
            match poll(&mut fds, limit.as_ref()) {
                Ok(0) => return,
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => return,
            }
        }
    }

    /// Hands a message to tungstenite; a full write buffer (agent not reading) drops it.
    fn queue(&mut self, msg: Message) -> Result<(), StsError> {
        match self.ws.write(msg) {
            Ok(()) => Ok(()),
            Err(e) if is_would_block(&e) => Ok(()),
            Err(tungstenite::Error::WriteBufferFull(_)) => {
                self.stats.dropped_for_backpressure += 1;
                Ok(())
            }
            Err(e) => Err(StsError::Socket(e.to_string())),
        }
    }

    fn flush(&mut self) -> Result<(), StsError> {
        match self.ws.flush() {
            Ok(()) => self.unflushed = false,
            Err(e) if is_would_block(&e) => self.unflushed = true,
            Err(tungstenite::Error::ConnectionClosed) => self.unflushed = false,
            Err(e) => return Err(StsError::Socket(e.to_string())),
        }
        Ok(())
    }
}

/// After the call ends, how long the agent gets to take the close frame.
const CLOSE_LIMIT: Duration = Duration::from_millis(999);

fn is_would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if io.kind() == ErrorKind::WouldBlock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_keeps_the_newest_second_and_every_digit() {
        let mut backlog = Backlog::default();
        let mut dropped = 0;
        backlog.push(ToAgent::Dtmf('1'));
        for i in 0..60u8 {
            dropped += backlog.push(ToAgent::Audio(vec![i; 320])).dropped_bytes;
        }
        backlog.push(ToAgent::Dtmf('5'));
        assert_eq!(dropped, 10 * 320);
        let got: Vec<ToAgent> = backlog.drain().collect();
        assert_eq!(got.len(), 52);
        assert_eq!(got[0], ToAgent::Dtmf('1'));
        assert_eq!(got[1], ToAgent::Audio(vec![10; 320]));
        assert_eq!(got[51], ToAgent::Dtmf('5'));
        assert_eq!(backlog.drain().count(), 0);
        // A single message larger than the cap is kept whole.
        assert_eq!(
            backlog.push(ToAgent::Audio(vec![0; 20_000])).dropped_bytes,
            0
        );
    }
}
