//! One HTTP attempt: build the request, send the body, read a bounded answer.
//!
//! Shared by the workers, `call_initiated`, and the `webhooks test|replay` subcommands, so
//! every path sends the same headers and classifies the answer the same way.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ureq::http::Uri;

use super::policy::{self, AttemptError, StatusClass};
use super::sign::{self, Signer};
use crate::config::{mask_url, WebhookConfig};

/// The most of a receiver's answer that is read: enough for a `call_initiated` answer or an
/// error page, small enough that a hostile receiver cannot make avr-core buffer much.
pub const MAX_ANSWER_BYTES: u64 = 64 * 1024;

/// Pooled connections older than this are not reused: Node.js servers (the usual receiver)
/// close idle keep-alive sockets after 5 s, and reusing one just as it closes fails the attempt.
const MAX_IDLE_AGE: Duration = Duration::from_secs(4);

/// One event as it travels: its body serialised once, so the bytes signed are the bytes sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub uuid: String,
    /// The wire type (`call_started`), for log lines.
    pub kind: String,
    pub body: String,
    /// Stable across retries and replays: the receiver's idempotency key.
    pub webhook_id: String,
}

impl Message {
    pub fn new(uuid: &str, kind: &str, body: String) -> Message {
        Message {
            uuid: uuid.to_string(),
            kind: kind.to_string(),
            body,
            webhook_id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// `[WEBHOOK][CALL_STARTED]`, the upstream log tag.
    pub fn tag(&self) -> String {
        format!("[WEBHOOK][{}]", self.kind.to_ascii_uppercase())
    }
}

/// The receiver's answer, whatever its status.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub reason: String,
    pub retry_after: Option<Duration>,
    pub location: Option<String>,
    pub content_type: Option<String>,
    /// At most [`MAX_ANSWER_BYTES`].
    pub body: Vec<u8>,
}

/// The configured receiver and how to reach it. Cheap to share: one connection pool.
pub struct Client {
    agent: ureq::Agent,
    url: String,
    signer: Option<Signer>,
    timeout: Duration,
}

impl Client {
    /// `None` when `WEBHOOK_URL` is unset.
    pub fn new(config: &WebhookConfig) -> Option<Arc<Client>> {
        let url = config.url.clone()?;
        let signer = config
            .secret
            .as_deref()
            .map(|secret| Signer::new(secret, &config.secret_header, config.signature));
        let agent = ureq::Agent::config_builder()
            // An operator's HTTP_PROXY is for other traffic; webhooks go where WEBHOOK_URL says.
            .proxy(None)
            // 3xx is a final answer: following it would send the secret to another address.
            .max_redirects(0)
            .http_status_as_error(false)
            .user_agent(format!("avr-core/{}", env!("CARGO_PKG_VERSION")))
            .timeout_global(Some(config.timeout))
            .max_idle_age(MAX_IDLE_AGE)
            .build()
            .new_agent();
        Some(Arc::new(Client {
            agent,
            url,
            signer,
            timeout: config.timeout,
        }))
    }

    /// `WEBHOOK_URL` with any password masked, for logs and dead letters.
    pub fn masked_url(&self) -> String {
        mask_url(&self.url)
    }

    /// `WEBHOOK_TIMEOUT`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// One attempt, classified: `Ok` only for 2xx.
    pub fn attempt(&self, msg: &Message, timeout: Duration) -> Result<Answer, AttemptError> {
        let answer = self.send(msg, timeout)?;
        match policy::classify_status(answer.status) {
            StatusClass::Delivered => Ok(answer),
            StatusClass::Retry | StatusClass::Final => Err(AttemptError::Status {
                status: answer.status,
                retry_after: answer.retry_after,
                location: answer
                    .location
                    .filter(|_| (300..400).contains(&answer.status)),
            }),
        }
    }

    /// One POST; any HTTP answer is `Ok`. `timeout` bounds the whole exchange.
    pub fn send(&self, msg: &Message, timeout: Duration) -> Result<Answer, AttemptError> {
        let mut request = self
            .agent
            .post(&self.url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header("Content-Type", "application/json");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let headers = match &self.signer {
            Some(signer) => signer.headers(&msg.webhook_id, now, msg.body.as_bytes()),
            None => sign::id_headers(&msg.webhook_id, now).to_vec(),
        };
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request
            .send(msg.body.as_bytes())
            .map_err(|e| self.error(e, timeout))?;

        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let status = response.status();
        let mut answer = Answer {
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("").to_string(),
            retry_after: header("retry-after")
                .and_then(|v| policy::parse_retry_after(&v, SystemTime::now())),
            location: header("location"),
            content_type: header("content-type"),
            body: Vec::new(),
        };
        // The status is the verdict; a body cut short (timeout, reset) is still an answer.
        let _ = response
            .into_body()
            .into_reader()
            .take(MAX_ANSWER_BYTES)
            .read_to_end(&mut answer.body);
        Ok(answer)
    }

    /// Maps ureq's error to the Node.js-style code and message the failure line carries.
    fn error(&self, e: ureq::Error, timeout: Duration) -> AttemptError {
        let target = self.target();
        match e {
            ureq::Error::Timeout(_) => AttemptError::Timeout(timeout),
            ureq::Error::Io(io) if is_timeout(&io) => AttemptError::Timeout(timeout),
            ureq::Error::Io(io) => {
                let code = errno_name(&io);
                let detail = match io.kind() {
                    io::ErrorKind::ConnectionRefused => format!("connect {code} {target}"),
                    io::ErrorKind::UnexpectedEof => {
                        format!("socket hang up: {target} closed the connection without answering")
                    }
                    _ => format!("{code} {target}: {io}"),
                };
                AttemptError::Network { code, detail }
            }
            ureq::Error::HostNotFound => AttemptError::Network {
                code: "ENOTFOUND",
                detail: format!("getaddrinfo ENOTFOUND {target}"),
            },
            ureq::Error::ConnectionFailed => AttemptError::Network {
                code: "ECONNREFUSED",
                detail: format!("connect ECONNREFUSED {target}: no address accepted"),
            },
            ureq::Error::Protocol(p) => AttemptError::Network {
                code: "EPROTO",
                detail: format!("{target} did not answer with valid HTTP/1.1: {p}"),
            },
            e @ (ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_)) => {
                AttemptError::Network {
                    code: "ERR_TLS",
                    detail: format!("TLS with {target} failed: {e}"),
                }
            }
            e @ (ureq::Error::BadUri(_) | ureq::Error::Http(_)) => {
                AttemptError::Request(e.to_string())
            }
            other => AttemptError::Network {
                code: "EIO",
                detail: format!("{target}: {other}"),
            },
        }
    }

    /// `host:port` of the receiver, for messages (never the userinfo).
    fn target(&self) -> String {
        match self.url.parse::<Uri>() {
            Ok(uri) => {
                let host = uri.host().unwrap_or("?");
                let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                    Some("https") => 443,
                    _ => 80,
                });
                format!("{host}:{port}")
            }
            Err(_) => "the receiver".into(),
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// The errno name Node.js reports in `error.code`, so operators' log searches keep working.
fn errno_name(e: &io::Error) -> &'static str {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "ECONNREFUSED",
        ConnectionReset | UnexpectedEof => "ECONNRESET",
        ConnectionAborted => "ECONNABORTED",
        BrokenPipe => "EPIPE",
        HostUnreachable => "EHOSTUNREACH",
        NetworkUnreachable => "ENETUNREACH",
        AddrNotAvailable => "EADDRNOTAVAIL",
        TimedOut | WouldBlock => "ETIMEDOUT",
        _ => "EIO",
    }
}
