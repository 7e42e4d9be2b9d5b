//! A scriptable webhook receiver for integration tests: real sockets, hand-rolled HTTP/1.1.
//!
//! Every request is recorded with its headers and raw body bytes (exactly what was signed),
//! and handed to the test through a channel as soon as its body is read, before the answer.
//! Answers come from a script the test queues (status, headers, body, delay), then from a
//! default. Keep-alive is supported, as a real receiver would.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use crossbeam_channel::{Receiver, Sender};
use ring::hmac;
use serde_json::Value;

/// An idle keep-alive connection is closed after this long.
const IDLE: Duration = Duration::from_secs(30);
const MAX_HEAD: usize = 64 * 1024;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Request {
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

/// How to answer one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// How long to wait before answering (a slow receiver).
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn ok() -> Reply {
        Reply::status(200)
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn json(mut self, value: &Value) -> Reply {
        self.body = value.to_string().into_bytes();
        self.header("Content-Type", "application/json")
    }

    pub fn body(mut self, body: &str) -> Reply {
        self.body = body.as_bytes().to_vec();
        self
    }

    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

struct Script {
    queued: VecDeque<Reply>,
    default: Reply,
}

/// A running receiver on 127.0.0.1. Dropping it stops accepting (later connects fail).
pub struct WebhookReceiver {
    addr: SocketAddr,
    requests: Receiver<Request>,
    script: Arc<Mutex<Script>>,
    stop: Arc<AtomicBool>,
}

impl WebhookReceiver {
    /// Answers `200` with an empty body unless scripted otherwise.
    pub fn start() -> WebhookReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the webhook receiver");
        let addr = listener.local_addr().expect("receiver address");
        let (tx, requests) = crossbeam_channel::unbounded();
        let script = Arc::new(Mutex::new(Script {
            queued: VecDeque::new(),
            default: Reply::ok(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (script2, stop2) = (script.clone(), stop.clone());
        thread::Builder::new()
            .name("hook-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (tx, script) = (tx.clone(), script2.clone());
                    let _ = thread::Builder::new()
                        .name("hook-conn".into())
                        .spawn(move || serve(stream, &tx, &script));
                }
            })
            .expect("spawn the receiver's accept thread");
        WebhookReceiver {
            addr,
            requests,
            script,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
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

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and drops the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Serves one connection: requests in sequence until the client closes or goes idle.
fn serve(stream: TcpStream, requests: &Sender<Request>, script: &Mutex<Script>) {
    let _ = stream.set_read_timeout(Some(IDLE));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    loop {
        let Some((request, close)) = read_request(&mut reader) else {
            return;
        };
        let reply = {
            let mut s = script.lock().unwrap();
            s.queued.pop_front().unwrap_or_else(|| s.default.clone())
        };
        let _ = requests.send(request);
        if !reply.delay.is_zero() {
            // Playing a slow receiver, not synchronising the test.
            thread::sleep(reply.delay);
        }
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Length: {}\r\n",
            reply.status,
            reason(reply.status),
            reply.body.len()
        );
        for (k, v) in &reply.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&reply.body);
        if writer.write_all(&bytes).is_err() || close {
            return;
        }
    }
}

/// Reads one request; `None` at EOF or on anything malformed. The flag: close afterwards.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<(Request, bool)> {
    let mut line = String::new();
    let mut head_len = 0;
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let at = Instant::now();
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        let n = reader.read_line(&mut h).ok()?;
        head_len += n;
        if n == 0 || head_len > MAX_HEAD {
            return None;
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let body = if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        read_chunked(reader)?
    } else {
        let len: usize = get("content-length").unwrap_or("0").parse().ok()?;
        let mut body = vec![0; len];
        reader.read_exact(&mut body).ok()?;
        body
    };
    let close = get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    Some((
        Request {
            method,
            path,
            headers,
            body,
            at,
        },
        close,
    ))
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).ok()?;
        let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).ok()?;
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        302 => "Found",
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}
