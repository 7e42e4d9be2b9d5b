//! A scriptable webhook receiver for integration tests, on the tools' HTTP sink (real
//! sockets, the service's own request parser).
//!
//! Every request is recorded with its headers and raw body bytes (exactly what was signed),
//! and handed to the test through a channel as soon as its body is read, before the answer.
//! Answers come from a script the test queues (status, headers, body, delay), then from a
//! default. Keep-alive is supported, as a real receiver would.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use avr_core::tools::http_sink::{self, HttpSink};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use crossbeam_channel::Receiver;
use ring::hmac;
use serde_json::Value;

pub use avr_core::tools::http_sink::Reply;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Names lowercased; the values of one name together, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Request {
    /// Stamped with its arrival, header names lowercased.
    fn arrived(r: &http_sink::Request) -> Request {
        Request {
            method: r.method.clone(),
            path: r.path.clone(),
            headers: r
                .headers
                .iter()
                .map(|(name, value)| {
                    let value = String::from_utf8_lossy(value.as_bytes());
                    (name.as_str().to_string(), value.trim().to_string())
                })
                .collect(),
            body: r.body.clone(),
            at: Instant::now(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("a UTF-8 body")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// The envelope's `type`.
    pub fn kind(&self) -> String {
        self.json()["type"].as_str().unwrap_or("").to_string()
    }

    /// Verifies the Standard Webhooks v1 signature the way the specification says: key =
    /// base64 of a `whsec_` secret (else its bytes), signed content `{id}.{timestamp}.{body}`
    /// over the raw body, any of the space-separated `v1,` signatures may match.
    pub fn standard_signature_ok(&self, secret: &str) -> bool {
        let (Some(id), Some(ts), Some(sigs)) = (
            self.header("webhook-id"),
            self.header("webhook-timestamp"),
            self.header("webhook-signature"),
        ) else {
            return false;
        };
        let key = match secret.strip_prefix("whsec_") {
            Some(b64) => BASE64.decode(b64).expect("a base64 whsec_ secret"),
            None => secret.as_bytes().to_vec(),
        };
        let mut content = format!("{id}.{ts}.").into_bytes();
        content.extend_from_slice(&self.body);
        let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
        sigs.split(' ').any(|sig| {
            sig.strip_prefix("v1,")
                .and_then(|b64| BASE64.decode(b64).ok())
                .is_some_and(|tag| hmac::verify(&key, &content, &tag).is_ok())
        })
    }
}

/// Lowercase hex HMAC-SHA256 of `body` keyed by the secret's bytes: the upstream receiver
/// example's `crypto.createHmac('sha256', secret).update(payload).digest('hex')`.
pub fn hex_hmac(secret: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hmac::sign(&key, body)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

struct Script {
    queued: VecDeque<Reply>,
    default: Reply,
}

/// A running receiver on 127.0.0.1. Dropping it stops accepting (later connects fail).
pub struct WebhookReceiver {
    sink: HttpSink,
    requests: Receiver<Request>,
    script: Arc<Mutex<Script>>,
}

impl WebhookReceiver {
    /// Answers `200` with an empty body unless scripted otherwise.
    pub fn start() -> WebhookReceiver {
        let (tx, requests) = crossbeam_channel::unbounded();
        let script = Arc::new(Mutex::new(Script {
            queued: VecDeque::new(),
            default: Reply::ok(),
        }));
        let answers = script.clone();
        let sink = HttpSink::start(move |request| {
            let reply = {
                let mut s = answers.lock().unwrap();
                s.queued.pop_front().unwrap_or_else(|| s.default.clone())
            };
            let _ = tx.send(Request::arrived(request));
            reply
        })
        .expect("start the webhook receiver");
        WebhookReceiver {
            sink,
            requests,
            script,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/events", self.sink.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        self.sink.addr()
    }

    /// Answers for the next requests, in order; then the default applies again.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.script.lock().unwrap().queued.extend(replies);
    }

    pub fn set_default(&self, reply: Reply) {
        self.script.lock().unwrap().default = reply;
    }

    /// The next request, in arrival order.
    pub fn next(&self, timeout: Duration) -> Option<Request> {
        self.requests.recv_timeout(timeout).ok()
    }

    /// The next `n` requests; panics, naming what came, if they do not all arrive in time.
    pub fn take(&self, n: usize, timeout: Duration) -> Vec<Request> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.requests.recv_timeout(left) {
                Ok(r) => got.push(r),
                Err(_) => panic!(
                    "expected {n} webhook requests, got {}: {:?}",
                    got.len(),
                    got.iter()
                        .map(|r| r.body_text().to_string())
                        .collect::<Vec<_>>()
                ),
            }
        }
        got
    }

    /// Requests until one matches `pred` (included); panics if none does in time.
    pub fn until(&self, timeout: Duration, pred: impl Fn(&Request) -> bool) -> Vec<Request> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.requests.recv_timeout(left) {
                Ok(r) => {
                    let done = pred(&r);
                    got.push(r);
                    if done {
                        return got;
                    }
                }
                Err(_) => panic!(
                    "the awaited webhook request did not come; got: {:?}",
                    got.iter()
                        .map(|r| r.body_text().to_string())
                        .collect::<Vec<_>>()
                ),
            }
        }
    }
}
