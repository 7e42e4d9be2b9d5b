//! Reaching the speech-to-speech agent: TLS settings, and the WebSocket connection made
//! within `STS_CONNECT_TIMEOUT` and left non-blocking for [`Link`](super::Link).

use std::fmt;
use std::io::{self, ErrorKind};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::protocol::WebSocketConfig;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Connector, HandshakeError, WebSocket};

/// The agent connection.
pub type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

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
/// leaves the socket non-blocking for [`Link`](super::Link).
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

pub(super) fn tcp_of(stream: &MaybeTlsStream<TcpStream>) -> &TcpStream {
    match stream {
        MaybeTlsStream::Plain(s) => s,
        MaybeTlsStream::Rustls(s) => s.get_ref(),
        _ => unreachable!("only plain and rustls streams are built"),
    }
}
