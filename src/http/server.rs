//! The HTTP service's server: the accept loop, one thread per connection that reads one
//! request (within the deadline), answers it and closes, and the 503 when every connection
//! is busy. See the [module doc](super) for the limits and why the loop is ours.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::conns::{Admission, Connections, Slot};
use super::parse::{BodyParser, ParseError};
use super::read::{ReadError, RequestReader};
use super::service::{clip, too_large, Response, Service};
use crate::sys::{lock, StopSignal, Throttle};

/// What the service accepts and for how long; see the [module doc](super).
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

/// Stack of each connection thread: JSON parsing is bounded by serde_json's recursion limit,
/// and the `call_initiated` webhook (HTTP client, TLS) runs here too.
const THREAD_STACK: usize = 512 * 1024;

/// After answering, how long to read and discard what the client still sends, so closing
/// does not reset the connection before the client has read the answer.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

/// How often each kind of connection trouble may be logged; the lines count what they
/// held back.
const LOG_EVERY: Duration = Duration::from_secs(10);

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
    let table = Arc::new(Connections::new(limits.max_connections));
    let limits = Arc::new(limits);
    let lines = Arc::new(RequestLines {
        answered: Mutex::new(Throttle::new("HTTP error answers", LOG_EVERY)),
        refused: Mutex::new(Throttle::new("refused HTTP requests", LOG_EVERY)),
    });
    let mut evictions = Throttle::new("HTTP connections", LOG_EVERY);
    let mut refusals = Throttle::new("HTTP connections", LOG_EVERY);
    let mut admit_errors = Throttle::new("HTTP connections", LOG_EVERY);
    let mut failed_accepts = Throttle::new("HTTP accept errors", LOG_EVERY);
    let mut on_error = |e: &io::Error| {
        failed_accepts.note(Instant::now(), |more| {
            log::warn!("HTTP accept failed: {e}{more}")
        })
    };
    while let Some((stream, peer)) = stop.accept(&listener, &mut on_error) {
        let slot = match table.admit(&stream) {
            Admission::Admitted { slot, evicted } => {
                if let Some(idle) = evicted {
                    evictions.note(Instant::now(), |more| {
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
                refusals.note(Instant::now(), |more| {
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
                admit_errors.note(Instant::now(), |more| {
                    log::warn!("HTTP: dropping the connection from {peer}: {e}{more}")
                });
                continue;
            }
        };
        let service = service.clone();
        let limits = limits.clone();
        let lines = lines.clone();
        let spawned = thread::Builder::new()
            .name("http-conn".into())
            .stack_size(THREAD_STACK)
            .spawn(move || serve_connection(stream, peer, &slot, &service, &limits, &lines));
        if let Err(e) = spawned {
            log::error!("HTTP: cannot start a thread for the connection from {peer}: {e}");
        }
    }
}

/// The log lines of requests that went wrong, shared by the connection threads: a client
/// that sends a thousand bad requests a second gets a line per [`LOG_EVERY`] counting them,
/// not a thousand lines (an occasional one is logged as it comes).
struct RequestLines {
    /// Requests answered with an error status (401, 404, 413, 503…).
    answered: Mutex<Throttle>,
    /// Requests that could not be read (malformed, too large, too slow).
    refused: Mutex<Throttle>,
}

/// Reads one request, answers it, closes.
fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: &Slot,
    service: &Service,
    limits: &Limits,
    lines: &RequestLines,
) {
    let _ = stream.set_nodelay(true);
    let mut reader = RequestReader::new(&stream, slot.accepted, limits.request_timeout);
    let mut request_line = String::new();
    let result = reader.head(limits.max_head).and_then(|head| {
        // httparse admits only visible ASCII here: safe to log as is.
        request_line = format!("{} {}", clip(&head.method), clip(&head.target));
        let route = match service.check(
            &head.method,
            &head.target,
            head.header("authorization"),
            head.content_length(),
            limits.max_body,
        ) {
            Ok(route) => route,
            Err(refused) => return Ok(refused),
        };
        if head.expects_continue() && head.has_body() && reader.is_drained() {
            (&stream)
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(ReadError::Io)?;
        }
        let body = reader.body(BodyParser::new(&head, limits.max_head, limits.max_body))?;
        // From here the request is being answered: it may no longer be closed for another.
        if !slot.set_pending(false) {
            return Err(ReadError::Gone);
        }
        Ok(service.handle(route, &head.method, &body))
    });
    let response = match result {
        Ok(response) => {
            if let Some(why) = &response.error {
                lock(&lines.answered).note(Instant::now(), |more| {
                    log::warn!(
                        "HTTP {request_line} from {peer}: {} {why}{more}",
                        response.status
                    )
                });
            } else if !request_line.starts_with("POST") {
                log::debug!("HTTP {request_line} from {peer}: {}", response.status);
            }
            response
        }
        Err(e) => {
            // A connection closed to admit a newer one sees its read end: not the client's doing.
            let e = if slot.is_open() { e } else { ReadError::Gone };
            let quiet = matches!(e, ReadError::Gone)
                || matches!(e, ReadError::TimedOut { received: 0, .. });
            if quiet {
                log::debug!("HTTP connection from {peer} closed: {e}");
            } else {
                lock(&lines.refused).note(Instant::now(), |more| {
                    log::warn!("HTTP request from {peer} refused: {e}{more}")
                });
            }
            match refusal(&e) {
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

/// The answer to a request that could not be read, if anyone is listening.
fn refusal(e: &ReadError) -> Option<Response> {
    match e {
        ReadError::Gone | ReadError::Io(_) => None,
        ReadError::TimedOut { .. } => Some(Response::error(408, e.to_string())),
        ReadError::Parse(ParseError::BodyTooLarge { limit }) => Some(too_large(*limit)),
        ReadError::Parse(p) => Some(Response::error(p.status(), e.to_string())),
    }
}

/// `HTTP/1.1 <status> <reason>\r\n`, the reason from the `http` crate's table (empty for a
/// code it does not know).
pub fn status_line(status: u16) -> String {
    let reason = ::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!("HTTP/1.1 {status} {reason}\r\n")
}

fn write_response(mut stream: &TcpStream, r: &Response) -> io::Result<()> {
    let mut out = status_line(r.status);
    out.push_str(&format!(
        "Content-Type: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
        r.content_type
    ));
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
