//! One small HTTP/1.1 server for the tools and the tests: it listens on 127.0.0.1, hands
//! each request to a callback that chooses the reply, and records nothing itself. The demo
//! prints webhooks with it, the benchmark counts them, and the integration tests script a
//! webhook receiver on it. Requests are read by the service's own parser
//! ([`crate::http::parse`]); connections are kept alive, as a real receiver keeps them (the
//! webhook client pools them).

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ::http::HeaderMap;
use serde_json::Value;

use crate::http::parse::BodyParser;
use crate::http::read::RequestReader;
use crate::http::status_line;
use crate::sys::StopSignal;

/// A kept-alive connection is closed when no whole request arrives for this long.
const IDLE: Duration = Duration::from_secs(30);
/// Request heads bigger than this are not webhooks; the connection is dropped.
const MAX_HEAD: usize = 64 * 1024;
/// Bodies bigger than this are not webhooks either (a `/call` payload is at most 64 KiB).
const MAX_BODY: usize = 1024 * 1024;
/// Stack of each connection thread: the callback's work is small (a lock, a channel send, a
/// JSON parse bounded by serde_json's recursion limit).
const THREAD_STACK: usize = 256 * 1024;

/// One request, as it arrived.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// How to answer one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// How long to wait before answering: a slow receiver.
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

    /// `value` as the body, with its Content-Type.
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

type OnRequest = dyn Fn(&Request) -> Reply + Send + Sync;

/// A running sink. Dropping it stops accepting and closes the listener (later connects
/// fail); connections already open finish on their own.
pub struct HttpSink {
    addr: SocketAddr,
    stop: Arc<StopSignal>,
    accept: Option<JoinHandle<()>>,
}

impl HttpSink {
    /// Listens on an ephemeral port of 127.0.0.1; `on_request` answers every request, on
    /// its connection's thread.
    pub fn start(
        on_request: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> io::Result<HttpSink> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(StopSignal::new()?);
        let on_request: Arc<OnRequest> = Arc::new(on_request);
        let stopped = stop.clone();
        let accept = thread::Builder::new()
            .name("http-sink".into())
            .spawn(move || {
                // A failed accept is retried after a pause; nobody to tell here.
                while let Some((stream, _)) = stopped.accept(&listener, |_| {}) {
                    let on_request = on_request.clone();
                    let _ = thread::Builder::new()
                        .name("http-sink-conn".into())
                        .stack_size(THREAD_STACK)
                        .spawn(move || serve(&stream, &*on_request));
                }
            })?;
        Ok(HttpSink {
            addr,
            stop,
            accept: Some(accept),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpSink {
    fn drop(&mut self) {
        self.stop.trigger();
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Requests in sequence on one connection until the client closes, goes idle or sends
/// something that is not a request (then it is dropped without an answer).
fn serve(stream: &TcpStream, on_request: &OnRequest) {
    let _ = stream.set_nodelay(true);
    let mut reader = RequestReader::new(stream, Instant::now(), IDLE);
    loop {
        let Ok(head) = reader.head(MAX_HEAD) else {
            return;
        };
        let Ok(body) = reader.body(BodyParser::new(&head, MAX_HEAD, MAX_BODY)) else {
            return;
        };
        let close = head
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let reply = on_request(&Request {
            method: head.method,
            path: head.target,
            headers: head.headers,
            body,
        });
        if !reply.delay.is_zero() {
            // Playing a slow receiver, not waiting for anything.
            thread::sleep(reply.delay);
        }
        if write_reply(stream, &reply, close).is_err() || close {
            return;
        }
        reader.next_request(Instant::now());
    }
}

fn write_reply(mut stream: &TcpStream, reply: &Reply, close: bool) -> io::Result<()> {
    let mut head = status_line(reply.status);
    head.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&reply.body);
    stream.write_all(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::Mutex;

    /// Sends `raw` and reads until the sink closes.
    fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(raw).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn kept_alive_requests_get_the_replies_chosen_for_them() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let seen = seen.clone();
            HttpSink::start(move |req| {
                crate::sys::lock(&seen).push(req.clone());
                match req.path.as_str() {
                    "/a" => Reply::ok().json(&serde_json::json!({"n": 1})),
                    _ => Reply::status(503).header("Retry-After", "1").body("busy"),
                }
            })
            .unwrap()
        };
        // Two pipelined requests, the first chunked; the second asks to close.
        let out = exchange(
            sink.addr(),
            b"POST /a HTTP/1.1\r\nX-Id: 1\r\nTransfer-Encoding: chunked\r\n\r\n\
              2\r\nhi\r\n0\r\n\r\n\
              POST /b HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbye",
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Type: application/json\r\n\r\n\
             {\"n\":1}\
             HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nRetry-After: 1\r\n\
             Connection: close\r\n\r\nbusy"
        );
        let seen = crate::sys::lock(&seen);
        let got: Vec<(&str, &str, &[u8])> = seen
            .iter()
            .map(|r| (r.method.as_str(), r.path.as_str(), r.body.as_slice()))
            .collect();
        assert_eq!(got, [("POST", "/a", &b"hi"[..]), ("POST", "/b", b"bye")]);
        assert_eq!(seen[0].headers["x-id"], "1");
    }

    #[test]
    fn garbage_is_dropped_unanswered_and_drop_closes_the_listener() {
        let sink = HttpSink::start(|_| panic!("no request to answer")).unwrap();
        let addr = sink.addr();
        assert_eq!(exchange(addr, b"\x00\x01garbage\r\n\r\n"), "");
        drop(sink);
        assert!(TcpStream::connect(addr).is_err());
    }
}
