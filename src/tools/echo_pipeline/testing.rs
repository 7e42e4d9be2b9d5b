//! The tests' client side: plain `TcpStream`s and a tiny chunked decoder, so what is tested
//! is the bytes on the wire.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crossbeam_channel::Receiver;

use super::{EchoPipeline, PipelineEvent, PipelineOptions};

/// Longest wait for anything that should come at once.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

pub(crate) fn start(opts: PipelineOptions) -> (EchoPipeline, Receiver<PipelineEvent>) {
    let server = EchoPipeline::start("127.0.0.1:0".parse().unwrap(), opts).unwrap();
    let events = server.events();
    (server, events)
}

pub(crate) fn next_event(events: &Receiver<PipelineEvent>) -> PipelineEvent {
    events.recv_timeout(WAIT).expect("an event")
}

/// Connects and sends a request head; `chunked` or a `Content-Length` for `body`, which
/// follows at once unless chunked (then the caller writes it).
pub(crate) fn send(
    server: &EchoPipeline,
    path: &str,
    uuid: &str,
    body: &[u8],
    chunked: bool,
) -> TcpStream {
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_owned()
    } else {
        format!("Content-Length: {}", body.len())
    };
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nX-UUID: {uuid}\r\n{framing}\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    if !chunked {
        s.write_all(body).unwrap();
    }
    s
}

/// Writes one chunk of a chunked upload (an empty one ends it).
pub(crate) fn write_chunk(s: &mut TcpStream, data: &[u8]) {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    s.write_all(&out).unwrap();
}

/// A response being read.
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Response {
    pub(crate) fn read(stream: TcpStream) -> Response {
        let mut r = Response {
            status: 0,
            headers: Vec::new(),
            stream,
            buf: Vec::new(),
        };
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(len) = parsed.parse(&r.buf).unwrap() {
                r.status = parsed.code.unwrap();
                r.headers = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8(h.value.to_vec()).unwrap();
                        (h.name.to_ascii_lowercase(), value)
                    })
                    .collect();
                r.buf.drain(..len);
                return r;
            }
            assert!(r.fill(), "closed before a response head");
        }
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        let found = self.headers.iter().find(|(n, _)| n == name);
        found.map(|(_, v)| v.as_str())
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = self
            .stream
            .read(&mut chunk)
            .expect("the server answers in time");
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(self.buf[..i].to_vec()).unwrap();
                self.buf.drain(..i + 2);
                return line;
            }
            assert!(self.fill(), "closed in a chunk line");
        }
    }

    /// The next chunk of a chunked body; `None` after the last.
    pub(crate) fn chunk(&mut self) -> Option<Vec<u8>> {
        assert_eq!(self.header("transfer-encoding"), Some("chunked"));
        let size = usize::from_str_radix(&self.line(), 16).expect("a chunk size");
        if size == 0 {
            assert_eq!(self.line(), "", "no trailers");
            return None;
        }
        while self.buf.len() < size + 2 {
            assert!(self.fill(), "closed in chunk data");
        }
        let data = self.buf[..size].to_vec();
        assert_eq!(&self.buf[size..size + 2], b"\r\n");
        self.buf.drain(..size + 2);
        Some(data)
    }

    /// Every chunk to the end.
    pub(crate) fn chunks(&mut self) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| self.chunk()).collect()
    }

    /// A `Content-Length` body, whole.
    pub(crate) fn body(&mut self) -> Vec<u8> {
        let len: usize = self.header("content-length").unwrap().parse().unwrap();
        while self.buf.len() < len {
            assert!(self.fill(), "closed in the body");
        }
        self.buf[..len].to_vec()
    }

    /// The upload side, to go on writing while reading.
    pub(crate) fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// The connection ends after the response.
    pub(crate) fn assert_closed(&mut self) {
        assert!(self.buf.is_empty(), "bytes after the response");
        assert!(!self.fill(), "the connection stays open");
    }
}

/// A JSON error answer: its status and `error` text.
pub(crate) fn error_of(mut r: Response) -> (u16, String) {
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
    (r.status, body["error"].as_str().unwrap().to_owned())
}
