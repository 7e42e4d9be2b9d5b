//! For the HTTP service tests: a raw HTTP/1.1 client (exact bytes out, everything read back
//! until the server closes: it answers one request per connection), and a raw AudioSocket
//! call that watches its 20 ms frames, to show that nothing on HTTP disturbs a live call.

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::WAIT;

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The `error` text of a JSON error body, checking the shape `{"error": "…"}`.
    pub fn error(&self) -> String {
        let v = self.json();
        let obj = v.as_object().expect("error body is an object");
        assert_eq!(obj.len(), 1, "error body has only \"error\": {v}");
        obj["error"]
            .as_str()
            .expect("\"error\" is a string")
            .to_string()
    }
}

/// Sends `raw` and reads the answer until the server closes.
pub fn send(addr: SocketAddr, raw: &[u8]) -> HttpResponse {
    let mut s = TcpStream::connect(addr).expect("connect to the HTTP service");
    s.write_all(raw).expect("send the request");
    read_response(&mut s).expect("an HTTP answer")
}

/// Reads until EOF (within [`WAIT`]) and parses; `None` if nothing usable arrived (closed
/// or reset before an answer).
pub fn read_response(s: &mut TcpStream) -> Option<HttpResponse> {
    let deadline = Instant::now() + WAIT;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the server neither answered nor closed in time"
        );
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the server neither answered nor closed within {WAIT:?}")
            }
            Err(_) => break, // reset: use what arrived
        }
    }
    parse(&bytes)
}

fn parse(bytes: &[u8]) -> Option<HttpResponse> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(HttpResponse {
        status,
        headers,
        body: body.to_string(),
    })
}

pub fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    send(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: avr\r\n\r\n").as_bytes(),
    )
}

/// `POST` with a JSON body and `extra` header lines (each without CRLF).
pub fn post(addr: SocketAddr, path: &str, body: &str, extra: &[&str]) -> HttpResponse {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: avr\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in extra {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    send(addr, req.as_bytes())
}

/// `GET /health`, which must answer `200 {"status":"ok"}` within `within`.
pub fn assert_healthy(addr: SocketAddr, within: Duration) {
    let started = Instant::now();
    let r = get(addr, "/health");
    let took = started.elapsed();
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"status":"ok"}"#));
    assert!(took <= within, "/health took {took:?} (limit {within:?})");
}

/// A call placed with raw AudioSocket frames, whose reader thread times every frame that
/// avr-core sends back.
pub struct RawCall {
    stream: TcpStream,
    watch: Arc<(Mutex<Watch>, Condvar)>,
    reader: Option<JoinHandle<()>>,
}

#[derive(Debug, Clone)]
pub struct Watch {
    pub frames: u64,
    pub first: Option<Instant>,
    pub last: Option<Instant>,
    /// Longest time between two consecutive frames.
    pub max_gap: Duration,
    /// avr-core hung up (`0x00`) or closed.
    pub ended: bool,
}

impl RawCall {
    /// Connects, sends `01 00 10` + the uuid, then `audio_frames` frames of `10 01 40` + 320
    /// bytes.
    pub fn start(addr: SocketAddr, uuid: [u8; 16], audio_frames: usize) -> RawCall {
        let mut stream = TcpStream::connect(addr).expect("connect to AudioSocket");
        stream.set_nodelay(true).unwrap();
        let mut out = vec![0x01, 0x00, 0x10];
        out.extend_from_slice(&uuid);
        for _ in 0..audio_frames {
            out.extend_from_slice(&[0x10, 0x01, 0x40]);
            out.extend_from_slice(&[0x11; 320]);
        }
        stream.write_all(&out).expect("send the uuid and audio");
        let watch = Arc::new((
            Mutex::new(Watch {
                frames: 0,
                first: None,
                last: None,
                max_gap: Duration::ZERO,
                ended: false,
            }),
            Condvar::new(),
        ));
        let reader = {
            let stream = stream.try_clone().unwrap();
            let watch = watch.clone();
            std::thread::Builder::new()
                .name("raw-call-reader".into())
                .spawn(move || read_frames(stream, &watch))
                .expect("spawn the call reader")
        };
        RawCall {
            stream,
            watch,
            reader: Some(reader),
        }
    }

    pub fn watch(&self) -> Watch {
        self.watch.0.lock().unwrap().clone()
    }

    /// Waits for `more` frames after those already received (or the end of the call).
    pub fn wait_more_frames(&self, more: u64, timeout: Duration) -> Watch {
        let (lock, cv) = &*self.watch;
        let w = lock.lock().unwrap();
        let target = w.frames + more;
        let (w, _) = cv
            .wait_timeout_while(w, timeout, |w| w.frames < target && !w.ended)
            .unwrap();
        w.clone()
    }

    /// Panics unless frames have been arriving with no gap over `max_gap`, up to now.
    pub fn assert_flowing(&self, max_gap: Duration, context: &str) {
        let w = self.watch();
        assert!(!w.ended, "the call ended ({context}): {w:?}");
        let last = w
            .last
            .unwrap_or_else(|| panic!("no frame arrived ({context})"));
        assert!(
            w.max_gap <= max_gap && last.elapsed() <= max_gap,
            "frames stalled ({context}): longest gap {:?}, last frame {:?} ago, limit {max_gap:?}",
            w.max_gap,
            last.elapsed()
        );
    }
}

impl Drop for RawCall {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn read_frames(stream: TcpStream, watch: &(Mutex<Watch>, Condvar)) {
    let (lock, cv) = watch;
    let mut r = BufReader::new(stream);
    let mut header = [0u8; 3];
    let mut payload = vec![0u8; 65535];
    loop {
        if r.read_exact(&mut header).is_err() {
            break;
        }
        let len = usize::from(u16::from_be_bytes([header[1], header[2]]));
        if r.read_exact(&mut payload[..len]).is_err() || header[0] == 0x00 {
            break;
        }
        let now = Instant::now();
        let mut w = lock.lock().unwrap();
        if let Some(last) = w.last {
            w.max_gap = w.max_gap.max(now - last);
        }
        w.first.get_or_insert(now);
        w.last = Some(now);
        w.frames += 1;
        cv.notify_all();
    }
    lock.lock().unwrap().ended = true;
    cv.notify_all();
}
