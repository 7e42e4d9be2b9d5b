//! The HTTP service (SPEC §5): `GET /health`, `POST /call`, `GET /metrics`.
//!
//! A small HTTP/1.1 server of our own on `httparse`, one thread per connection, one request
//! per connection (`Connection: close`). Why not a crate's server loop: the point of this
//! service is that no client can disturb the calls, and that takes control of accepting.
//! oxhttp 0.3 (the DESIGN.md choice) blocks its accept loop once its connection cap is
//! reached, so 128 idle sockets stall `/call` until its per-read timeout frees them (and a
//! client sending a byte every few seconds holds a place for hours); it drains a refused body
//! after the handler, turning a 413 into a 500 after the timeout; and it cannot report the
//! port it bound, which `HTTP_PORT=0` needs.
//!
//! Limits ([`Limits`]):
//! - at most `max_connections` open connections. When full, a new connection closes the
//!   oldest one that has not finished sending its request (an idle or slow client); only if
//!   every connection is being answered is the new one refused with 503. So idle sockets can
//!   never lock out a real request, and the file descriptors taken from the AudioSocket side
//!   stay bounded.
//! - the whole request (head and body) must arrive within `request_timeout` of the accept,
//!   however slowly it trickles in; the response must be written within `write_timeout`.
//! - request head at most `max_head` bytes (431), body at most `max_body` bytes (413),
//!   refused from `Content-Length` before reading and counted while reading chunked bodies.
//!
//! `HTTP_TOKEN` guards `POST /call` only: `/health` and `/metrics` stay open so load
//! balancers and Prometheus need no secret, and they reveal no call data.

use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::config::{self, Config};
use crate::metrics::Metrics;
use crate::proto::audiosocket;
use crate::proto::sts_url::effective_url;
use crate::registry::{Entry, Registry};
use crate::sys::lock;
use crate::sys::StopSignal;

/// What the service accepts and for how long; see the module doc.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub request_timeout: Duration,
    pub write_timeout: Duration,
    pub max_head: usize,
    pub max_body: usize,
}

impl Default for Limits {
    /// 128 connections: the dialplan posts one short `/call` per call, so even 500 calls
    /// starting within a second need a handful at a time. 10 s to send a request is an
    /// eternity on a LAN. 8 KiB of head is what common servers allow; 64 KiB of call
    /// metadata is far beyond what a dialplan sends.
    fn default() -> Limits {
        Limits {
            max_connections: 128,
            request_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_head: 8 * 1024,
            max_body: 64 * 1024,
        }
    }
}

/// Step 2 of `/call`: sends `call_initiated` for `(uuid, payload)` and returns the
/// receiver's JSON answer, if any. Blocking, bounded by the caller (≤ 10 s).
pub type CallInitiated = Box<dyn Fn(&str, &Map<String, Value>) -> Option<Value> + Send + Sync>;

/// Stack of each connection thread: JSON parsing is bounded by serde_json's recursion limit,
/// and the `call_initiated` webhook (HTTP client, TLS) runs here too.
const THREAD_STACK: usize = 512 * 1024;

/// After answering, how long to read and discard what the client still sends, so closing
/// does not reset the connection before the client has read the answer.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

/// Headers parsed per request; more is refused with 431.
const MAX_HEADERS: usize = 64;

/// Longest chunk-size line of a chunked body.
const MAX_CHUNK_LINE: usize = 1024;

/// The routes and what they share with the calls.
pub struct Service {
    sts_url: String,
    token: Option<String>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    call_initiated: CallInitiated,
}

/// An answer, with the reason for the log line when it is an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// The `error` text of an error answer.
    pub error: Option<String>,
}

impl Response {
    fn json(status: u16, body: &Value) -> Response {
        Response {
            status,
            content_type: "application/json; charset=utf-8",
            headers: Vec::new(),
            body: body.to_string(),
            error: None,
        }
    }

    /// `{"error": "<message>"}`.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        let message = message.into();
        Response {
            error: Some(message.clone()),
            ..Response::json(status, &json!({ "error": message }))
        }
    }

    fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }
}

/// The three endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Health,
    Metrics,
    Call,
}

impl Service {
    /// `call_initiated` starts as "no webhook" (no answer); see [`with_call_initiated`].
    ///
    /// [`with_call_initiated`]: Service::with_call_initiated
    pub fn new(config: &Config, registry: Arc<Registry>, metrics: Arc<Metrics>) -> Service {
        Service {
            sts_url: config.sts_url.clone(),
            token: config.http_token.clone(),
            registry,
            metrics,
            call_initiated: Box::new(|_, _| None),
        }
    }

    /// Sets step 2 of `/call`, e.g. the webhook's `call_initiated`.
    pub fn with_call_initiated(
        mut self,
        hook: impl Fn(&str, &Map<String, Value>) -> Option<Value> + Send + Sync + 'static,
    ) -> Service {
        self.call_initiated = Box::new(hook);
        self
    }

    /// Answers one complete request, as the server does: for tests and tools.
    pub fn respond(
        &self,
        method: &str,
        target: &str,
        authorization: Option<&str>,
        body: &[u8],
    ) -> Response {
        match self.check(
            method,
            target,
            authorization,
            Some(body.len() as u64),
            usize::MAX,
        ) {
            Ok(route) => self.handle(route, method, body),
            Err(refused) => refused,
        }
    }

    /// Everything decided from the head alone, before any body is read: 404, 405, 401, 413.
    fn check(
        &self,
        method: &str,
        target: &str,
        authorization: Option<&str>,
        content_length: Option<u64>,
        max_body: usize,
    ) -> Result<Route, Response> {
        // Express's default routing, which the Node.js original uses: case-insensitive, one
        // trailing slash allowed, query ignored.
        let path = request_path(target);
        let trimmed = path
            .strip_suffix('/')
            .filter(|p| !p.is_empty())
            .unwrap_or(path);
        let route = [
            ("/health", Route::Health),
            ("/metrics", Route::Metrics),
            ("/call", Route::Call),
        ]
        .into_iter()
        .find(|(p, _)| p.eq_ignore_ascii_case(trimmed))
        .map(|(_, r)| r)
        .ok_or_else(|| {
            Response::error(
                404,
                format!(
                    "no such endpoint {}: use GET /health, POST /call or GET /metrics",
                    clip(path)
                ),
            )
        })?;
        let allowed = match route {
            Route::Health | Route::Metrics => method == "GET" || method == "HEAD",
            Route::Call => method == "POST",
        };
        if !allowed {
            let allow = if route == Route::Call {
                "POST"
            } else {
                "GET, HEAD"
            };
            return Err(Response::error(
                405,
                format!(
                    "{} is not allowed on {}; use {allow}",
                    clip(method),
                    clip(path)
                ),
            )
            .with_header("Allow", allow));
        }
        if route == Route::Call {
            if let Some(token) = &self.token {
                if !bearer_matches(authorization, token) {
                    let why = if authorization.is_none() {
                        "missing Authorization header: POST /call needs \
                         \"Authorization: Bearer <HTTP_TOKEN>\""
                    } else {
                        "wrong token: POST /call needs \"Authorization: Bearer <HTTP_TOKEN>\""
                    };
                    return Err(Response::error(401, why).with_header("WWW-Authenticate", "Bearer"));
                }
            }
        }
        match content_length {
            Some(n) if n > max_body as u64 => Err(too_large(max_body)),
            _ => Ok(route),
        }
    }

    fn handle(&self, route: Route, method: &str, body: &[u8]) -> Response {
        let mut response = match route {
            Route::Health => Response::json(200, &json!({"status": "ok"})),
            Route::Metrics => Response {
                content_type: "text/plain; version=0.0.4",
                body: self.metrics.render(),
                ..Response::json(200, &Value::Null)
            },
            Route::Call => self.call(body),
        };
        if method == "HEAD" {
            // The length of what GET would send, without the body.
            let len = response.body.len();
            response.body.clear();
            response.headers.push(("Content-Length", len.to_string()));
        }
        response
    }

    /// `POST /call`, steps 1–4 of SPEC §5.
    fn call(&self, body: &[u8]) -> Response {
        let (uuid, payload) = match parse_call(body) {
            Ok(parsed) => parsed,
            Err(why) => return Response::error(400, why),
        };
        let answer = (self.call_initiated)(&uuid, &payload);
        let (base, overridden, note) = match sts_url_override(answer.as_ref()) {
            Ok(url) => {
                log::info!(
                    "[{uuid}] Overriding STS URL: {}",
                    config::mask_url_password(url)
                );
                (url, true, None)
            }
            Err(note) => (self.sts_url.as_str(), false, note),
        };
        if let Some(note) = &note {
            log::warn!("[{uuid}] {note}; keeping the local STS URL");
        }
        let url = effective_url(base, &payload);
        let masked = config::mask_url_password(&url);
        let inserted = self.registry.insert(
            &uuid,
            Entry {
                sts_url: url,
                payload,
            },
            Instant::now(),
        );
        if !inserted.evicted.is_empty() {
            log::warn!(
                "Call metadata store full: dropped the oldest unclaimed /call entries ({}) to \
                 store [{uuid}]; are AudioSocket calls reaching avr-core with the /call uuid?",
                inserted.evicted.join(", ")
            );
        }
        log::info!(
            "POST /call [{uuid}] → sts_url {} (override: {overridden}){}",
            clip_long(&masked),
            if inserted.replaced {
                "; replaced an earlier /call for this uuid"
            } else {
                ""
            }
        );
        // The password stays out of the answer too: dialplans log it (`NoOp(${JSON_RESPONSE})`).
        Response::json(200, &json!({"sts_url": masked, "override": overridden}))
    }
}

/// The uuid (canonical) and payload of a `/call` body, or what is wrong with it.
fn parse_call(body: &[u8]) -> Result<(String, Map<String, Value>), String> {
    const SHAPE: &str = r#"send {"uuid": "<uuid>", "payload": {...}}"#;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(format!("the body is empty; {SHAPE}"));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not valid JSON ({e}); {SHAPE}"))?;
    let Value::Object(mut fields) = value else {
        return Err(format!("the body must be a JSON object; {SHAPE}"));
    };
    let uuid = match fields.get("uuid") {
        None | Some(Value::Null) => return Err(format!("\"uuid\" is missing; {SHAPE}")),
        Some(Value::String(text)) => match audiosocket::CallId::parse(text) {
            Some(id) => id.to_string(),
            None => {
                return Err(format!(
                    "\"uuid\" must be 8-4-4-4-12 hex digits like \
                     935652e3-7c59-4edc-b17f-9646a9c2a265 (the uuid given to \
                     Dial(AudioSocket/…)), got {:?}",
                    clip(text)
                ))
            }
        },
        Some(other) => {
            return Err(format!(
                "\"uuid\" must be a string, got {}",
                json_kind(other)
            ))
        }
    };
    let payload = match fields.remove("payload") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(format!(
                "\"payload\" must be a JSON object of call metadata, got {}",
                json_kind(&other)
            ))
        }
    };
    Ok((uuid, payload))
}

/// The base URL a `call_initiated` answer asks for, or why the answer gives none
/// (`Err(None)`: nothing worth a log line, i.e. no answer or no `sts_url` in it).
fn sts_url_override(answer: Option<&Value>) -> Result<&str, Option<String>> {
    let Some(answer) = answer else {
        return Err(None);
    };
    match answer.get("sts_url") {
        None | Some(Value::Null) => Err(None),
        Some(Value::String(url)) => match config::validate_ws_url(url) {
            Ok(()) => Ok(url),
            Err(why) => Err(Some(format!(
                "Ignoring the call_initiated answer's sts_url {:?}: {why}",
                clip(&config::mask_url_password(url))
            ))),
        },
        Some(other) => Err(Some(format!(
            "Ignoring the call_initiated answer's sts_url: it must be a string, got {}",
            json_kind(other)
        ))),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The path of a request target: origin form (`/call?x`) or absolute form (`http://h/call`).
fn request_path(target: &str) -> &str {
    let rest = match target.find("://") {
        Some(i) if !target.starts_with('/') => {
            let after = &target[i + 3..];
            after.find('/').map_or("/", |p| &after[p..])
        }
        _ => target,
    };
    rest.split(['?', '#']).next().unwrap_or(rest)
}

/// `Authorization: Bearer <token>` (scheme case-insensitive), compared in constant time so
/// the answer's timing does not reveal how much of a guess was right.
fn bearer_matches(authorization: Option<&str>, token: &str) -> bool {
    let Some(given) = authorization.map(str::trim) else {
        return false;
    };
    let Some((scheme, value)) = given.split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    let (given, want) = (value.trim().as_bytes(), token.as_bytes());
    let mut diff = u8::from(given.len() != want.len());
    for (i, w) in want.iter().enumerate() {
        diff |= w ^ given.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(diff) == 0
}

fn too_large(max_body: usize) -> Response {
    Response::error(
        413,
        format!(
            "the body is over {} KiB; /call metadata must be smaller",
            max_body / 1024
        ),
    )
}

/// A URL for a log line: payloads may make it 190 KiB long.
fn clip_long(url: &str) -> String {
    match url.char_indices().nth(400) {
        Some((cut, _)) => format!("{}… ({} bytes)", &url[..cut], url.len()),
        None => url.to_string(),
    }
}

/// At most 80 characters of client-supplied text, for messages and logs.
fn clip(text: &str) -> &str {
    text.char_indices()
        .nth(80)
        .map_or(text, |(cut, _)| &text[..cut])
}

// ---- the server ------------------------------------------------------------------------

/// Starts the accept loop on its own thread, until `stop` is triggered.
pub fn spawn(
    listener: TcpListener,
    service: Service,
    limits: Limits,
    stop: Arc<StopSignal>,
) -> io::Result<thread::JoinHandle<()>> {
    let service = Arc::new(service);
    listener.set_nonblocking(true)?;
    thread::Builder::new()
        .name("http-accept".into())
        .spawn(move || serve(listener, service, limits, &stop))
}

/// Accepts connections until `stop` is triggered (`listener` non-blocking); each is served
/// on its own thread. Requests in progress finish on their own.
pub fn serve(listener: TcpListener, service: Arc<Service>, limits: Limits, stop: &StopSignal) {
    let table = Arc::new(Table::new(limits.max_connections));
    let limits = Arc::new(limits);
    let mut evictions = Throttle::new("HTTP connections", Duration::from_secs(10));
    let mut refusals = Throttle::new("HTTP connections", Duration::from_secs(10));
    let mut admit_errors = Throttle::new("HTTP connections", Duration::from_secs(10));
    let mut failed_accepts = Throttle::new("HTTP accept errors", Duration::from_secs(10));
    let mut on_error =
        |e: &io::Error| failed_accepts.note(|more| log::warn!("HTTP accept failed: {e}{more}"));
    while let Some((stream, peer)) = stop.accept(&listener, &mut on_error) {
        let slot = match table.admit(&stream) {
            Admission::Admitted { slot, evicted } => {
                if let Some(idle) = evicted {
                    evictions.note(|more| {
                        log::warn!(
                            "HTTP: {} connections open; closed the oldest one that had not \
                             sent a whole request (open {:.1} s) to admit {peer}{more}",
                            limits.max_connections,
                            idle.as_secs_f64()
                        )
                    });
                }
                slot
            }
            Admission::Full => {
                refusals.note(|more| {
                    log::warn!(
                        "HTTP: refusing {peer} with 503: all {} connections are being \
                         answered{more}",
                        limits.max_connections
                    )
                });
                refuse_busy(stream, limits.max_connections);
                continue;
            }
            Admission::Failed(e) => {
                admit_errors.note(|more| {
                    log::warn!("HTTP: dropping the connection from {peer}: {e}{more}")
                });
                continue;
            }
        };
        let service = service.clone();
        let limits = limits.clone();
        let spawned = thread::Builder::new()
            .name("http-conn".into())
            .stack_size(THREAD_STACK)
            .spawn(move || serve_connection(stream, peer, &slot, &service, &limits));
        if let Err(e) = spawned {
            log::error!("HTTP: cannot start a thread for the connection from {peer}: {e}");
        }
    }
}

/// Why a request could not be read.
#[derive(Debug)]
enum RequestError {
    /// The client closed (or was closed to admit another) before sending a whole request.
    Gone,
    /// The whole request did not arrive in time; `received` bytes did.
    TimedOut {
        limit: Duration,
        received: usize,
    },
    HeadTooLarge {
        limit: usize,
    },
    BodyTooLarge {
        limit: usize,
    },
    Malformed(String),
    Io(io::Error),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Gone => write!(f, "the client closed before sending a whole request"),
            RequestError::TimedOut { limit, received } => write!(
                f,
                "the request did not arrive within {} s ({received} bytes received)",
                limit.as_secs_f64()
            ),
            RequestError::HeadTooLarge { limit } => write!(
                f,
                "the request line and headers are over {} KiB (or over {MAX_HEADERS} headers)",
                limit / 1024
            ),
            RequestError::BodyTooLarge { limit } => {
                write!(f, "the body is over {} KiB", limit / 1024)
            }
            RequestError::Malformed(why) => write!(f, "malformed HTTP request: {why}"),
            RequestError::Io(e) => write!(f, "read failed: {e}"),
        }
    }
}

impl RequestError {
    /// The answer to send, if anyone is listening.
    fn response(&self) -> Option<Response> {
        let status = match self {
            RequestError::Gone | RequestError::Io(_) => return None,
            RequestError::TimedOut { .. } => 408,
            RequestError::HeadTooLarge { .. } => 431,
            RequestError::BodyTooLarge { limit } => return Some(too_large(*limit)),
            RequestError::Malformed(_) => 400,
        };
        Some(Response::error(status, self.to_string()))
    }
}

/// What the handler needs from the request head.
struct Head {
    method: String,
    target: String,
    content_length: Option<u64>,
    chunked: bool,
    expect_continue: bool,
    authorization: Option<String>,
}

/// One connection's reader: a buffer, and a deadline for the whole request.
struct Conn<'a> {
    stream: &'a TcpStream,
    buf: Vec<u8>,
    pos: usize,
    deadline: Instant,
    limits: &'a Limits,
    received: usize,
}

impl<'a> Conn<'a> {
    /// Reads more bytes; `Ok(false)` at end of stream.
    fn fill(&mut self) -> Result<bool, RequestError> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        // Chunk framing can be much larger than its data; the deadline bounds it anyway,
        // this bounds the work.
        if self.received > self.limits.max_head + 4 * self.limits.max_body {
            return Err(RequestError::BodyTooLarge {
                limit: self.limits.max_body,
            });
        }
        let mut chunk = [0u8; 4096];
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.timed_out());
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(RequestError::Io)?;
            match (&*self.stream).read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    self.received += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(self.timed_out())
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Err(RequestError::Gone),
                Err(e) => return Err(RequestError::Io(e)),
            }
        }
    }

    fn timed_out(&self) -> RequestError {
        RequestError::TimedOut {
            limit: self.limits.request_timeout,
            received: self.received,
        }
    }

    fn read_head(&mut self) -> Result<Head, RequestError> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) if len <= self.limits.max_head => {
                    let head = head_of(&req)?;
                    self.pos = len;
                    return Ok(head);
                }
                Ok(httparse::Status::Partial) if self.buf.len() < self.limits.max_head => {}
                Ok(_) | Err(httparse::Error::TooManyHeaders) => {
                    return Err(RequestError::HeadTooLarge {
                        limit: self.limits.max_head,
                    })
                }
                Err(e) => return Err(RequestError::Malformed(e.to_string())),
            }
            if !self.fill()? {
                return Err(if self.buf.is_empty() {
                    RequestError::Gone
                } else {
                    RequestError::Malformed("the client closed in the middle of the head".into())
                });
            }
        }
    }

    fn read_body(&mut self, head: &Head) -> Result<Vec<u8>, RequestError> {
        if head.chunked {
            return self.read_chunked();
        }
        match head.content_length {
            // `check` refused anything over the limit before a byte of body was read.
            Some(len) => self.take(usize::try_from(len).unwrap_or(usize::MAX)),
            None => Ok(Vec::new()),
        }
    }

    fn take(&mut self, len: usize) -> Result<Vec<u8>, RequestError> {
        while self.buf.len() - self.pos < len {
            if !self.fill()? {
                return Err(RequestError::Malformed(
                    "the client closed before sending the whole body".into(),
                ));
            }
        }
        let out = self.buf[self.pos..self.pos + len].to_vec();
        self.pos += len;
        Ok(out)
    }

    /// One line including its `\n`, at most `max` bytes.
    fn line(&mut self, max: usize) -> Result<Vec<u8>, RequestError> {
        loop {
            if let Some(i) = self.buf[self.pos..].iter().position(|&b| b == b'\n') {
                if i >= max {
                    break;
                }
                return self.take(i + 1);
            }
            if self.buf.len() - self.pos >= max {
                break;
            }
            if !self.fill()? {
                return Err(RequestError::Malformed(
                    "the client closed in the middle of the chunked body".into(),
                ));
            }
        }
        Err(RequestError::Malformed(
            "a chunked body line is too long".into(),
        ))
    }

    fn read_chunked(&mut self) -> Result<Vec<u8>, RequestError> {
        let limit = self.limits.max_body;
        let mut body = Vec::new();
        loop {
            let line = self.line(MAX_CHUNK_LINE)?;
            let size = match httparse::parse_chunk_size(&line) {
                Ok(httparse::Status::Complete((_, size))) => size,
                _ => return Err(RequestError::Malformed("invalid chunk size line".into())),
            };
            if size == 0 {
                break;
            }
            if body.len() as u64 + size > limit as u64 {
                return Err(RequestError::BodyTooLarge { limit });
            }
            body.extend(self.take(size as usize)?);
            if !matches!(self.line(2)?.as_slice(), b"\r\n" | b"\n") {
                return Err(RequestError::Malformed(
                    "chunk data longer than its size".into(),
                ));
            }
        }
        // Trailers, ignored, up to the empty line.
        let mut trailers = 0;
        loop {
            let line = self.line(self.limits.max_head)?;
            trailers += line.len();
            if matches!(line.as_slice(), b"\r\n" | b"\n") {
                return Ok(body);
            }
            if trailers > self.limits.max_head {
                return Err(RequestError::HeadTooLarge {
                    limit: self.limits.max_head,
                });
            }
        }
    }
}

fn head_of(req: &httparse::Request<'_, '_>) -> Result<Head, RequestError> {
    let malformed = |why: &str| RequestError::Malformed(why.to_string());
    let mut head = Head {
        method: req.method.unwrap_or_default().to_string(),
        target: req.path.unwrap_or_default().to_string(),
        content_length: None,
        chunked: false,
        expect_continue: false,
        authorization: None,
    };
    let mut transfer_encoding = false;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).map(str::trim);
        if h.name.eq_ignore_ascii_case("content-length") {
            let text = value.map_err(|_| malformed("invalid Content-Length"))?;
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(malformed("invalid Content-Length"));
            }
            // Digits too many for u64 are simply too large.
            let len = text.parse::<u64>().unwrap_or(u64::MAX);
            if head.content_length.is_some_and(|l| l != len) {
                return Err(malformed("conflicting Content-Length headers"));
            }
            head.content_length = Some(len);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if transfer_encoding || !value.is_ok_and(|v| v.eq_ignore_ascii_case("chunked")) {
                return Err(malformed(
                    "only \"Transfer-Encoding: chunked\" is supported; or send Content-Length",
                ));
            }
            transfer_encoding = true;
            head.chunked = true;
        } else if h.name.eq_ignore_ascii_case("expect") {
            head.expect_continue = value.is_ok_and(|v| v.eq_ignore_ascii_case("100-continue"));
        } else if h.name.eq_ignore_ascii_case("authorization") {
            head.authorization = value.ok().map(str::to_string);
        }
    }
    if head.chunked && head.content_length.is_some() {
        return Err(malformed(
            "both Content-Length and Transfer-Encoding are set; send one",
        ));
    }
    Ok(head)
}

/// Reads one request, answers it, closes.
fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: &Slot,
    service: &Service,
    limits: &Limits,
) {
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        stream: &stream,
        buf: Vec::with_capacity(1024),
        pos: 0,
        deadline: slot.accepted + limits.request_timeout,
        limits,
        received: 0,
    };
    let mut request_line = String::new();
    let result = conn.read_head().and_then(|head| {
        // httparse admits only visible ASCII here: safe to log as is.
        request_line = format!("{} {}", clip(&head.method), clip(&head.target));
        let route = match service.check(
            &head.method,
            &head.target,
            head.authorization.as_deref(),
            head.content_length,
            limits.max_body,
        ) {
            Ok(route) => route,
            Err(refused) => return Ok(refused),
        };
        let needs_body = head.chunked || head.content_length.is_some_and(|n| n > 0);
        if head.expect_continue && needs_body && conn.buf.len() == conn.pos {
            (&stream)
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(RequestError::Io)?;
        }
        let body = conn.read_body(&head)?;
        // From here the request is being answered: it may no longer be closed for another.
        if !slot.set_pending(false) {
            return Err(RequestError::Gone);
        }
        Ok(service.handle(route, &head.method, &body))
    });
    let response = match result {
        Ok(response) => {
            if let Some(why) = &response.error {
                log::warn!("HTTP {request_line} from {peer}: {} {why}", response.status);
            } else if !request_line.starts_with("POST") {
                log::debug!("HTTP {request_line} from {peer}: {}", response.status);
            }
            response
        }
        Err(e) => {
            // A connection closed to admit a newer one sees its read end: not the client's doing.
            let e = if slot.is_open() {
                e
            } else {
                RequestError::Gone
            };
            let quiet = matches!(e, RequestError::Gone)
                || matches!(e, RequestError::TimedOut { received: 0, .. });
            if quiet {
                log::debug!("HTTP connection from {peer} closed: {e}");
            } else {
                log::warn!("HTTP request from {peer} refused: {e}");
            }
            match e.response() {
                Some(r) => r,
                None => return,
            }
        }
    };
    slot.set_pending(true);
    let _ = stream.set_write_timeout(Some(limits.write_timeout));
    if write_response(&stream, &response).is_ok() {
        linger(&stream);
    }
}

fn write_response(mut stream: &TcpStream, r: &Response) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
        r.status,
        reason(r.status),
        r.content_type
    );
    let mut has_length = false;
    for (name, value) in &r.headers {
        has_length |= name.eq_ignore_ascii_case("content-length");
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if !has_length {
        out.push_str(&format!("Content-Length: {}\r\n", r.body.len()));
    }
    out.push_str("\r\n");
    out.push_str(&r.body);
    stream.write_all(out.as_bytes())
}

/// Closes the way that lets the client read the answer: send FIN, then read and discard
/// (bounded) what the client still sends, so the kernel does not answer it with a reset
/// that could destroy the answer in flight.
fn linger(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(LINGER));
    let deadline = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    let mut discarded = 0;
    while discarded < LINGER_BYTES && Instant::now() < deadline {
        match (&*stream).read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => discarded += n,
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Answers 503 on the accept thread without ever blocking it: the socket is new, so its
/// send buffer is empty and one small write fits.
fn refuse_busy(stream: TcpStream, max: usize) {
    let response = Response::error(
        503,
        format!("all {max} HTTP connections are busy answering requests; retry shortly"),
    )
    .with_header("Retry-After", "1");
    let _ = stream.set_nonblocking(true);
    let _ = write_response(&stream, &response);
    let _ = stream.shutdown(Shutdown::Write);
    // Read what already arrived (the request) so closing sends FIN, not a reset that could
    // destroy the answer before the client reads it.
    let mut sink = [0u8; 4096];
    for _ in 0..4 {
        if !matches!((&stream).read(&mut sink), Ok(n) if n > 0) {
            break;
        }
    }
}

// ---- the connection table --------------------------------------------------------------

/// Open connections, so that the oldest one still waiting for its request can be closed
/// when the table is full.
struct Table {
    max: usize,
    open: Mutex<Vec<Open>>,
    next_id: AtomicU64,
}

struct Open {
    id: u64,
    accepted: Instant,
    /// Still receiving its request (or lingering after the answer): may be closed.
    pending: bool,
    /// A duplicate handle, to shut the connection down from the accept thread.
    stream: TcpStream,
}

enum Admission {
    /// `evicted`: how long the connection closed to make room had been open.
    Admitted {
        slot: Slot,
        evicted: Option<Duration>,
    },
    Full,
    Failed(io::Error),
}

impl Table {
    fn new(max: usize) -> Table {
        Table {
            max: max.max(1),
            open: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Open>> {
        lock(&self.open)
    }

    fn admit(self: &Arc<Self>, stream: &TcpStream) -> Admission {
        let dup = match stream.try_clone() {
            Ok(d) => d,
            Err(e) => return Admission::Failed(e),
        };
        let now = Instant::now();
        let mut open = self.lock();
        let mut evicted = None;
        if open.len() >= self.max {
            let oldest = open
                .iter()
                .enumerate()
                .filter(|(_, o)| o.pending)
                .min_by_key(|(_, o)| o.accepted)
                .map(|(i, _)| i);
            let Some(i) = oldest else {
                return Admission::Full;
            };
            let gone = open.swap_remove(i);
            // Its thread's read returns at once and the thread ends.
            let _ = gone.stream.shutdown(Shutdown::Both);
            evicted = Some(now.saturating_duration_since(gone.accepted));
        }
        let id = self.next_id.fetch_add(1, Relaxed);
        open.push(Open {
            id,
            accepted: now,
            pending: true,
            stream: dup,
        });
        Admission::Admitted {
            slot: Slot {
                id,
                accepted: now,
                table: self.clone(),
            },
            evicted,
        }
    }
}

/// A connection's place in the [`Table`], released on drop.
struct Slot {
    id: u64,
    accepted: Instant,
    table: Arc<Table>,
}

impl Slot {
    /// Marks whether the connection may be closed for a newer one; `false` if it already was.
    fn set_pending(&self, pending: bool) -> bool {
        let mut open = self.table.lock();
        match open.iter_mut().find(|o| o.id == self.id) {
            Some(o) => {
                o.pending = pending;
                true
            }
            None => false,
        }
    }

    fn is_open(&self) -> bool {
        self.table.lock().iter().any(|o| o.id == self.id)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.lock().retain(|o| o.id != self.id);
    }
}

/// Logs a recurring condition at most once per `every`, counting what it held back.
struct Throttle {
    what: &'static str,
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    fn new(what: &'static str, every: Duration) -> Throttle {
        Throttle {
            what,
            every,
            last: None,
            held_back: 0,
        }
    }

    /// Calls `log` with a suffix counting the occurrences held back since the last line.
    fn note(&mut self, log: impl FnOnce(&str)) {
        let now = Instant::now();
        if self.last.is_some_and(|t| now < t + self.every) {
            self.held_back += 1;
            return;
        }
        let more = match self.held_back {
            0 => String::new(),
            n => format!(" ({n} more such {} since the last line)", self.what),
        };
        log(&more);
        self.last = Some(now);
        self.held_back = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(token: Option<&str>) -> Service {
        let mut vars = vec![("STS_URL".to_string(), "ws://agent:6030".to_string())];
        if let Some(t) = token {
            vars.push(("HTTP_TOKEN".into(), t.into()));
        }
        let config = Config::from_vars(&vars).unwrap();
        Service::new(
            &config,
            Arc::new(Registry::new(Duration::from_secs(60))),
            Arc::new(Metrics::default()),
        )
    }

    const UUID: &str = "935652e3-7c59-4edc-b17f-9646a9c2a265";

    fn body_json(r: &Response) -> Value {
        serde_json::from_str(&r.body).unwrap()
    }

    #[test]
    fn health_is_exact() {
        let r = service(None).respond("GET", "/health", None, b"");
        assert_eq!((r.status, r.body.as_str()), (200, r#"{"status":"ok"}"#));
        let r = service(None).respond("HEAD", "/health", None, b"");
        assert_eq!((r.status, r.body.as_str()), (200, ""));
    }

    #[test]
    fn call_builds_the_url_and_stores_the_metadata() {
        let s = service(None);
        let body = format!(
            r#"{{"uuid":"{}","payload":{{"from":"2000","channel":"PJSIP/2000-00000013"}}}}"#,
            UUID.to_uppercase()
        );
        let r = s.respond("POST", "/call", None, body.as_bytes());
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            r.body,
            r#"{"sts_url":"ws://agent:6030/?from=2000&channel=PJSIP%2F2000-00000013","override":false}"#
        );
        let entry = s
            .registry
            .take(UUID, Instant::now())
            .expect("stored canonical");
        assert_eq!(entry.payload["from"], "2000");
    }

    #[test]
    fn call_without_payload_stores_an_empty_one() {
        let s = service(None);
        let r = s.respond(
            "POST",
            "/call",
            None,
            format!(r#"{{"uuid":"{UUID}"}}"#).as_bytes(),
        );
        assert_eq!(body_json(&r)["sts_url"], "ws://agent:6030/");
        assert!(s
            .registry
            .take(UUID, Instant::now())
            .unwrap()
            .payload
            .is_empty());
    }

    #[test]
    fn a_valid_webhook_answer_overrides_the_base() {
        let s = service(None).with_call_initiated(|uuid, payload| {
            assert_eq!(payload["to"], "5001");
            Some(json!({"sts_url": format!("wss://u:secret@other:443/a?uuid={uuid}")}))
        });
        let body = format!(r#"{{"uuid":"{UUID}","payload":{{"to":"5001"}}}}"#);
        let r = s.respond("POST", "/call", None, body.as_bytes());
        assert_eq!(
            body_json(&r),
            json!({"sts_url": format!("wss://u:****@other:443/a?uuid={UUID}&to=5001"),
                   "override": true})
        );
        assert_eq!(
            s.registry.take(UUID, Instant::now()).unwrap().sts_url,
            format!("wss://u:secret@other:443/a?uuid={UUID}&to=5001"),
            "the call itself gets the password"
        );
    }

    #[test]
    fn unusable_webhook_answers_keep_the_local_url() {
        for answer in [
            None,
            Some(json!({"ok": true})),
            Some(json!({"sts_url": "http://not-ws"})),
            Some(json!({"sts_url": 5})),
            Some(json!([1, 2])),
        ] {
            let s = service(None).with_call_initiated(move |_, _| answer.clone());
            let r = s.respond(
                "POST",
                "/call",
                None,
                format!(r#"{{"uuid":"{UUID}"}}"#).as_bytes(),
            );
            assert_eq!(
                body_json(&r),
                json!({"sts_url": "ws://agent:6030/", "override": false})
            );
        }
    }

    #[test]
    fn bad_bodies_are_400_with_a_reason() {
        let s = service(None);
        let cases: [(&str, &str); 8] = [
            ("", "empty"),
            ("{nope", "not valid JSON"),
            ("[1]", "JSON object"),
            (r#"{"payload":{}}"#, "\"uuid\" is missing"),
            (r#"{"uuid":5}"#, "must be a string"),
            (r#"{"uuid":"1234"}"#, "8-4-4-4-12"),
            (
                r#"{"uuid":"{935652e3-7c59-4edc-b17f-9646a9c2a265}"}"#,
                "8-4-4-4-12",
            ),
            (
                r#"{"uuid":"935652e3-7c59-4edc-b17f-9646a9c2a265","payload":[1]}"#,
                "\"payload\" must be a JSON object",
            ),
        ];
        for (body, why) in cases {
            let r = s.respond("POST", "/call", None, body.as_bytes());
            assert_eq!(r.status, 400, "{body}");
            let error = body_json(&r)["error"].as_str().unwrap().to_string();
            assert!(error.contains(why), "{body}: {error}");
        }
        assert!(s.registry.is_empty());
    }

    #[test]
    fn routing_follows_express_and_refuses_the_rest() {
        let s = service(None);
        assert_eq!(s.respond("GET", "/HEALTH/", None, b"").status, 200);
        assert_eq!(s.respond("GET", "/health?x=1", None, b"").status, 200);
        assert_eq!(s.respond("GET", "http://h:1/health", None, b"").status, 200);
        assert_eq!(s.respond("GET", "/nope", None, b"").status, 404);
        assert_eq!(s.respond("GET", "/", None, b"").status, 404);
        let r = s.respond("GET", "/call", None, b"");
        assert_eq!(r.status, 405);
        assert!(r.headers.contains(&("Allow", "POST".into())));
        let r = s.respond("POST", "/health", None, b"");
        assert!(r.headers.contains(&("Allow", "GET, HEAD".into())));
    }

    #[test]
    fn token_guards_call_only() {
        let s = service(Some("s3cret"));
        let body = format!(r#"{{"uuid":"{UUID}"}}"#);
        for auth in [
            None,
            Some("Bearer nope"),
            Some("Bearer s3cre"),
            Some("Basic s3cret"),
        ] {
            let r = s.respond("POST", "/call", auth, body.as_bytes());
            assert_eq!(r.status, 401, "{auth:?}");
            assert!(!r.body.contains("s3cret"));
        }
        assert_eq!(
            s.respond("POST", "/call", Some("bearer s3cret"), body.as_bytes())
                .status,
            200
        );
        assert_eq!(s.respond("GET", "/health", None, b"").status, 200);
        assert_eq!(s.respond("GET", "/metrics", None, b"").status, 200);
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let r = service(None).respond("GET", "/metrics", None, b"");
        assert_eq!(r.content_type, "text/plain; version=0.0.4");
        assert!(r.body.contains("avr_active_calls 0"));
    }

    #[test]
    fn bearer_compare() {
        assert!(bearer_matches(Some("Bearer abc"), "abc"));
        assert!(bearer_matches(Some("  BEARER   abc "), "abc"));
        assert!(!bearer_matches(Some("Bearer abcd"), "abc"));
        assert!(!bearer_matches(Some("Bearer"), "abc"));
        assert!(!bearer_matches(Some("Bearer "), ""));
    }

    #[test]
    fn throttle_holds_back_and_counts() {
        let mut t = Throttle::new("things", Duration::from_secs(3600));
        let mut lines = Vec::new();
        for _ in 0..3 {
            t.note(|more| lines.push(more.to_string()));
        }
        assert_eq!(lines, vec![String::new()]);
        assert_eq!(t.held_back, 2);
    }
}
