//! Reaching the speech-to-speech agent: TLS settings, and the WebSocket connection made
//! within one `STS_CONNECT_TIMEOUT` deadline and left non-blocking for [`Link`](super::Link).

use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use tungstenite::client::IntoClientRequest;
use tungstenite::http::header::{HeaderValue, AUTHORIZATION};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Connector, HandshakeError, WebSocket};

use crate::proto::url_secrets::{basic_auth, mask_url};
use crate::sys::emptied_queue;

/// The agent connection.
pub type Ws = WebSocket<MaybeTlsStream<AgentSocket>>;

/// Why the agent could not be reached or was lost. The URLs it holds are masked
/// (`proto::url_secrets::mask_url`): its text goes to the log as it is.
#[derive(Debug)]
pub enum StsError {
    /// The host name did not resolve.
    Resolve { url: String, source: io::Error },
    /// Name resolution, TCP connect, TLS or the WebSocket upgrade took the rest of
    /// `STS_CONNECT_TIMEOUT`; `during` is the step it ran out in.
    Timeout {
        url: String,
        budget: Duration,
        during: ConnectStep,
    },
    /// The TCP connection was refused or failed.
    Connect { url: String, source: io::Error },
    /// TLS or the WebSocket upgrade failed (bad certificate, HTTP error status, …).
    Handshake { url: String, detail: String },
    /// The established connection failed.
    Socket(String),
}

/// The steps of reaching the agent, all under one `STS_CONNECT_TIMEOUT` (docs/sts.md §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectStep {
    Resolve,
    TcpConnect,
    Handshake,
}

impl fmt::Display for ConnectStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectStep::Resolve => "resolving the host name",
            ConnectStep::TcpConnect => "connecting over TCP",
            ConnectStep::Handshake => "waiting for the TLS and WebSocket handshake",
        })
    }
}

impl fmt::Display for StsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StsError::Resolve { url, source } => {
                write!(f, "cannot resolve the STS host of {url}: {source}")
            }
            StsError::Timeout {
                url,
                budget,
                during,
            } => write!(
                f,
                "STS {url} did not complete the connection within {} ms \
                 (STS_CONNECT_TIMEOUT; still {during})",
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

/// The largest message an agent may send: 2 MiB of base64 JSON, about 1.5 MB of PCM (47 s
/// at 16 kHz, 16 s at 48 kHz: a long sentence in one message). Each message is held whole
/// several times over while it is read, decoded and converted, so this is what one hostile
/// agent can make a call cost at once; at the former 16 MiB that was about 30 MB a call.
pub const MAX_AGENT_MESSAGE: usize = 2 << 20;

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        // Audio messages are a few KiB; the 128 KiB default would cost that much per call.
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(512 * 1024)
        .max_message_size(Some(MAX_AGENT_MESSAGE))
        .max_frame_size(Some(MAX_AGENT_MESSAGE))
}

/// Stack of the thread that resolves the agent's host name: `getaddrinfo` with its NSS
/// modules and DNS buffers, with room to spare.
const RESOLVER_STACK: usize = 256 * 1024;

/// Connects to `url` within `budget`, one deadline over name resolution, the TCP connect
/// (each address in turn), TLS and the WebSocket upgrade (docs/sts.md §3.1), and leaves the
/// socket non-blocking for [`Link`](super::Link). Returns by the deadline (plus the
/// scheduler's slack) whatever the agent or the resolver does. The userinfo of `url`, if
/// any, is sent as `Authorization: Basic …`, as the Node.js `ws` client does (§2.1).
pub fn connect(
    url: &str,
    budget: Duration,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Ws, StsError> {
    let deadline = Instant::now() + budget;
    let shown = mask_url(url);
    let timeout = |during| StsError::Timeout {
        url: shown.clone(),
        budget,
        during,
    };
    let invalid = |e: tungstenite::Error| StsError::Handshake {
        url: shown.clone(),
        detail: format!("invalid URL: {e}"),
    };
    let mut request = url.into_client_request().map_err(invalid)?;
    if let Some(credentials) = basic_auth(url) {
        let value = HeaderValue::from_str(&credentials)
            .map_err(|e| invalid(tungstenite::Error::HttpFormat(e.into())))?;
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    let uri = request.uri();
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    let tls_scheme = uri
        .scheme_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("wss"));
    let port = uri.port_u16().unwrap_or(if tls_scheme { 443 } else { 80 });
    let addrs = match resolve(host, port, deadline) {
        Lookup::Done(Ok(addrs)) => addrs,
        Lookup::Done(Err(source)) => return Err(StsError::Resolve { url: shown, source }),
        Lookup::TooLate => return Err(timeout(ConnectStep::Resolve)),
    };

    let mut last_err = io::Error::new(ErrorKind::NotFound, "no address");
    let mut stream = None;
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timeout(ConnectStep::TcpConnect));
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
        None if last_err.kind() == ErrorKind::TimedOut => {
            return Err(timeout(ConnectStep::TcpConnect))
        }
        None => {
            return Err(StsError::Connect {
                url: shown,
                source: last_err,
            })
        }
    };
    let io_err = |e: io::Error| StsError::Connect {
        url: shown.clone(),
        source: e,
    };
    stream.set_nodelay(true).map_err(io_err)?;
    let socket = AgentSocket {
        tcp: stream,
        deadline: Some(deadline),
        drained: false,
    };

    let connector = Connector::Rustls(tls.clone());
    let mut handshake =
        tungstenite::client_tls_with_config(request, socket, Some(ws_config()), Some(connector));
    let mut ws = loop {
        match handshake {
            Ok((ws, _response)) => break ws,
            // A read timed out: the socket's timeout is the time left, which the kernel may
            // round down; go on while any is left.
            Err(HandshakeError::Interrupted(mid)) if Instant::now() < deadline => {
                handshake = mid.handshake();
            }
            Err(HandshakeError::Interrupted(_)) => return Err(timeout(ConnectStep::Handshake)),
            Err(HandshakeError::Failure(tungstenite::Error::Io(e)))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                return Err(timeout(ConnectStep::Handshake))
            }
            Err(HandshakeError::Failure(e)) => {
                return Err(StsError::Handshake {
                    url: shown,
                    detail: e.to_string(),
                })
            }
        }
    };
    let socket = socket_of_mut(ws.get_mut());
    socket.deadline = None;
    let tcp = &socket.tcp;
    tcp.set_read_timeout(None).map_err(io_err)?;
    tcp.set_write_timeout(None).map_err(io_err)?;
    tcp.set_nonblocking(true).map_err(io_err)?;
    Ok(ws)
}

/// The TCP stream to the agent. Until the handshake is done it carries the connect
/// deadline, and each read and write may block only for the time left before it: a
/// fresh timeout per read would let an agent that dribbles its answer a byte at a time hold
/// the caller in dead air for ever (issue #13). Afterwards it is the plain non-blocking
/// socket [`Link`](super::Link) polls.
///
/// Non-blocking, it also remembers when the kernel's queue was found empty (see
/// [`emptied_queue`](crate::sys::emptied_queue)): tungstenite (and rustls beneath it) reads until a read would block,
/// and that last read, one `recvfrom` per agent message, is answered here without a system
/// call until [`AgentSocket::mark_readable`] says `poll` saw input again.
#[derive(Debug)]
pub struct AgentSocket {
    tcp: TcpStream,
    deadline: Option<Instant>,
    /// The kernel had nothing more when last read, and `poll` has not reported input since.
    drained: bool,
}

impl AgentSocket {
    /// `poll` reported input (or a hangup or error) on the socket: the next read asks the
    /// kernel again.
    pub(super) fn mark_readable(&mut self) {
        self.drained = false;
    }

    /// The time left to block for, or `TimedOut` once the deadline is passed.
    fn left(&self) -> io::Result<Option<Duration>> {
        let Some(deadline) = self.deadline else {
            return Ok(None);
        };
        match deadline.saturating_duration_since(Instant::now()) {
            left if left.is_zero() => Err(io::Error::new(
                ErrorKind::TimedOut,
                "STS_CONNECT_TIMEOUT is spent",
            )),
            left => Ok(Some(left)),
        }
    }
}

impl Read for AgentSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(left) = self.left()? {
            // Blocking, for the handshake: each read waits, so nothing to remember.
            self.tcp.set_read_timeout(Some(left))?;
            return self.tcp.read(buf);
        }
        if self.drained && !buf.is_empty() {
            return Err(ErrorKind::WouldBlock.into());
        }
        let got = self.tcp.read(buf);
        self.drained = emptied_queue(buf.len(), &got);
        got
    }
}

impl Write for AgentSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(left) = self.left()? {
            self.tcp.set_write_timeout(Some(left))?;
        }
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// A connection to an agent over `tcp` with the handshake taken as done, set up as
/// [`connect`] leaves it: for tests that drive a [`Link`](super::Link) over a socket pair.
#[cfg(test)]
pub(crate) fn test_ws(tcp: TcpStream) -> io::Result<Ws> {
    tcp.set_nodelay(true)?;
    tcp.set_nonblocking(true)?;
    let socket = AgentSocket {
        tcp,
        deadline: None,
        drained: false,
    };
    Ok(WebSocket::from_raw_socket(
        MaybeTlsStream::Plain(socket),
        tungstenite::protocol::Role::Client,
        Some(ws_config()),
    ))
}

/// What a name lookup gave by the deadline.
enum Lookup {
    Done(io::Result<Vec<SocketAddr>>),
    /// The deadline came first; the lookup finishes on its own thread and is dropped.
    TooLate,
}

/// The addresses of `host`, or [`Lookup::TooLate`] at the deadline. `getaddrinfo` blocks
/// and cannot be cancelled, so a name (not an IP literal) is looked up on a thread of its
/// own that this one stops waiting for at the deadline: a dead DNS server costs the call
/// its budget, not the resolver's own timeout (`options timeout` × `attempts` of
/// resolv.conf, 10 s per name server by default). That thread ends when `getaddrinfo`
/// returns, by that bound, and nobody joins it (docs/sts.md §3.1).
fn resolve(host: String, port: u16, deadline: Instant) -> Lookup {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Lookup::Done(Ok(vec![SocketAddr::new(ip, port)]));
    }
    lookup_by(deadline, move || {
        (host.as_str(), port)
            .to_socket_addrs()
            .map(Iterator::collect)
    })
}

/// Runs the blocking `lookup` on a thread of its own and waits for it until `deadline`.
fn lookup_by(
    deadline: Instant,
    lookup: impl FnOnce() -> io::Result<Vec<SocketAddr>> + Send + 'static,
) -> Lookup {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let spawned = thread::Builder::new()
        .name("sts-resolve".into())
        .stack_size(RESOLVER_STACK)
        .spawn(move || {
            // The caller may have stopped waiting: then the result has nowhere to go.
            let _ = tx.send(lookup());
        });
    if let Err(e) = spawned {
        return Lookup::Done(Err(e));
    }
    match rx.recv_deadline(deadline) {
        Ok(result) => Lookup::Done(result),
        Err(RecvTimeoutError::Timeout) => Lookup::TooLate,
        Err(RecvTimeoutError::Disconnected) => Lookup::Done(Err(io::Error::other(
            "the name lookup thread ended without an answer",
        ))),
    }
}

pub(super) fn socket_of_mut(stream: &mut MaybeTlsStream<AgentSocket>) -> &mut AgentSocket {
    match stream {
        MaybeTlsStream::Plain(s) => s,
        MaybeTlsStream::Rustls(s) => &mut s.sock,
        _ => unreachable!("only plain and rustls streams are built"),
    }
}

pub(super) fn tcp_of(stream: &MaybeTlsStream<AgentSocket>) -> &TcpStream {
    match stream {
        MaybeTlsStream::Plain(s) => &s.tcp,
        MaybeTlsStream::Rustls(s) => &s.sock.tcp,
        _ => unreachable!("only plain and rustls streams are built"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    const BUDGET: Duration = Duration::from_millis(600);
    /// Generous for a loaded 2-core CI machine; the point is "not a fresh timeout per read".
    const SLACK: Duration = Duration::from_millis(400);

    fn tls() -> Arc<rustls::ClientConfig> {
        tls_config(None).unwrap()
    }

    #[test]
    fn a_hung_lookup_is_given_up_at_the_deadline_and_its_thread_still_ends() {
        let (release, released) = crossbeam_channel::bounded::<()>(0);
        let (gone_tx, gone) = crossbeam_channel::bounded::<()>(0);
        let start = Instant::now();
        let lookup = lookup_by(start + Duration::from_millis(100), move || {
            let _gone = gone_tx; // dropped when the thread ends
            let _ = released.recv(); // a getaddrinfo waiting on a dead DNS server
            Ok(vec![])
        });
        let waited = start.elapsed();
        assert!(matches!(lookup, Lookup::TooLate));
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
        assert!(waited < Duration::from_millis(100) + SLACK, "{waited:?}");
        // The resolver answers late: the thread hands its result to nobody and ends.
        release.send(()).unwrap();
        assert_eq!(
            gone.recv_timeout(Duration::from_secs(5)),
            Err(RecvTimeoutError::Disconnected)
        );
    }

    #[test]
    fn a_lookup_in_time_is_used() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let lookup = lookup_by(Instant::now() + Duration::from_secs(5), move || {
            Ok(vec![addr])
        });
        assert!(matches!(lookup, Lookup::Done(Ok(a)) if a == vec![addr]));
    }

    #[test]
    fn an_ip_literal_needs_no_lookup() {
        let past = Instant::now();
        let lookup = resolve("::1".into(), 80, past);
        assert!(matches!(lookup, Lookup::Done(Ok(a)) if a == vec!["[::1]:80".parse().unwrap()]));
    }

    /// Connects to an agent that accepts, then `serve`s the connection on a thread.
    fn connect_to(
        serve: impl FnOnce(TcpStream) + Send + 'static,
    ) -> (Result<Ws, StsError>, Duration) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "ws://u:pw-x1@{}/?token=tok-y2",
            listener.local_addr().unwrap()
        );
        let agent = thread::spawn(move || serve(listener.accept().unwrap().0));
        let start = Instant::now();
        let result = connect(&url, BUDGET, &tls());
        let took = start.elapsed();
        agent.join().unwrap();
        (result, took)
    }

    #[test]
    fn a_handshake_dribbled_a_byte_at_a_time_is_cut_at_the_budget() {
        let (result, took) = connect_to(|mut s| {
            let mut request = [0u8; 1024];
            let _ = s.read(&mut request);
            // Each byte well inside a per-read timeout; the whole far beyond the budget.
            for byte in b"HTTP/1.1 101 Switching Protocols\r\n".iter().take(20) {
                if s.write_all(&[*byte]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        let err = result.expect_err("the handshake never completes");
        assert!(took >= BUDGET && took < BUDGET + SLACK, "{took:?}");
        assert!(
            matches!(
                err,
                StsError::Timeout {
                    during: ConnectStep::Handshake,
                    ..
                }
            ),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("within 600 ms (STS_CONNECT_TIMEOUT"),
            "{text}"
        );
        assert!(
            !text.contains("pw-x1") && !text.contains("tok-y2"),
            "{text}"
        );
    }

    #[test]
    fn a_failed_handshake_names_the_masked_url() {
        let (result, _) = connect_to(|mut s| {
            let mut request = [0u8; 1024];
            let _ = s.read(&mut request);
            let _ = s.write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n");
        });
        let text = result.expect_err("401").to_string();
        assert!(text.contains("ws://u:****@127.0.0.1:"), "{text}");
        assert!(text.contains("/?token=**** refused"), "{text}");
        assert!(text.contains("401"), "{text}");
    }

    /// A connected pair on loopback: the agent's socket, non-blocking as `connect` leaves
    /// it, and the agent's end.
    fn socket_pair() -> (AgentSocket, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (peer, _) = listener.accept().unwrap();
        tcp.set_nonblocking(true).unwrap();
        let socket = AgentSocket {
            tcp,
            deadline: None,
            drained: false,
        };
        (socket, peer)
    }

    /// Waits (bounded) until the kernel reports input (or the peer's close) on the socket,
    /// as the call's `poll` would, and says so to the socket.
    fn wait_readable(socket: &mut AgentSocket) {
        let mut fds = [rustix::event::PollFd::new(
            &socket.tcp,
            rustix::event::PollFlags::IN,
        )];
        let ready = crate::sys::poll(&mut fds, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(ready, 1, "nothing arrived within 5 s");
        socket.mark_readable();
    }

    /// Reads once input is there, as the call's thread does after `poll`.
    fn read_some(socket: &mut AgentSocket, buf: &mut [u8]) -> usize {
        wait_readable(socket);
        socket.read(buf).unwrap()
    }

    #[test]
    fn a_short_read_or_would_block_means_the_queue_was_emptied() {
        let would_block = Err(io::Error::from(ErrorKind::WouldBlock));
        assert!(emptied_queue(4096, &Ok(10)));
        assert!(
            !emptied_queue(4096, &Ok(4096)),
            "a full read may leave more"
        );
        assert!(emptied_queue(4096, &would_block));
        assert!(
            !emptied_queue(4096, &Ok(0)),
            "end of stream is the kernel's to repeat"
        );
        let reset = Err(io::Error::from(ErrorKind::ConnectionReset));
        assert!(!emptied_queue(4096, &reset));
    }

    #[test]
    fn after_a_short_read_the_socket_waits_for_poll_before_asking_the_kernel() {
        let (mut socket, mut peer) = socket_pair();
        let mut buf = [0u8; 64];
        peer.write_all(b"0123456789").unwrap();
        assert_eq!(read_some(&mut socket, &mut buf), 10);
        // More arrives, but no system call is made to find it: poll will report it.
        peer.write_all(b"abc").unwrap();
        let mut fds = [rustix::event::PollFd::new(
            &socket.tcp,
            rustix::event::PollFlags::IN,
        )];
        let there = crate::sys::poll(&mut fds, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(there, 1, "the bytes crossed loopback");
        let err = socket.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WouldBlock);
        assert_eq!(
            socket.read(&mut buf).unwrap_err().kind(),
            ErrorKind::WouldBlock
        );
        socket.mark_readable();
        assert_eq!(socket.read(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"abc");
    }

    #[test]
    fn a_full_read_asks_the_kernel_again_and_end_of_stream_repeats() {
        let (mut socket, mut peer) = socket_pair();
        peer.write_all(b"12345678").unwrap();
        let mut four = [0u8; 4];
        assert_eq!(read_some(&mut socket, &mut four), 4);
        assert_eq!(
            socket.read(&mut four).unwrap(),
            4,
            "the buffer was full: ask again"
        );
        assert_eq!(&four, b"5678");
        drop(peer);
        wait_readable(&mut socket);
        let mut buf = [0u8; 16];
        assert_eq!(socket.read(&mut buf).unwrap(), 0, "end of stream");
        assert_eq!(
            socket.read(&mut buf).unwrap(),
            0,
            "end of stream, every time"
        );
    }
}
