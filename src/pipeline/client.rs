//! A small HTTP/1.1 client for the three services, built for what they need and ureq cannot
//! give: the speech-to-text request streams its body for the whole call while its answer
//! streams back on the same connection (full duplex), and every request of a call can be
//! cut off at once from another thread (the caller barged in or hung up) by shutting its
//! socket down ([`Cancel`]). Each blocking step has its own budget ([`Budgets`]).

use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::chunked::{Chunked, Decoded};
use crate::config::mask_url;
use crate::proto::service_url::ServiceUrl;
use crate::sys::{lock, Printable};

/// Largest response head accepted: the connectors send a handful of headers.
const MAX_HEAD: usize = 16 * 1024;

/// What one read takes from the socket at most.
const READ_CHUNK: usize = 16 * 1024;

/// Bytes of an error answer's body kept for the log line.
const ERROR_BODY_SHOWN: usize = 300;

/// How long an error answer's body is waited for, for the log line: the status already
/// says the request failed.
const ERROR_BODY_WAIT: Duration = Duration::from_millis(500);

/// The three services of pipeline mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Asr,
    Llm,
    Tts,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Service::Asr => "speech-to-text service (ASR_URL)",
            Service::Llm => "language model (LLM_URL)",
            Service::Tts => "text-to-speech service (TTS_URL)",
        })
    }
}

/// What a request may take, step by step (`PIPELINE_*_TIMEOUT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// Name lookup and TCP connect.
    pub connect: Duration,
    /// From the request sent to the first byte of the answer.
    pub first_byte: Duration,
    /// From the request sent to the end of the answer.
    pub whole: Duration,
}

/// The step a request ran out of time in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Connect,
    FirstByte,
    Whole,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Connect => "connecting (PIPELINE_CONNECT_TIMEOUT)",
            Step::FirstByte => "waiting for the answer to start (PIPELINE_FIRST_BYTE_TIMEOUT)",
            Step::Whole => "receiving the answer (PIPELINE_RESPONSE_TIMEOUT)",
        })
    }
}

/// Why a request to a service failed.
#[derive(Debug)]
pub enum ServiceError {
    /// The host name did not resolve.
    Resolve {
        service: Service,
        url: String,
        source: io::Error,
    },
    /// The TCP connection was refused or failed.
    Connect {
        service: Service,
        url: String,
        source: io::Error,
    },
    /// A step took its whole budget.
    Timeout {
        service: Service,
        url: String,
        step: Step,
        budget: Duration,
    },
    /// The service answered with an error status; `body` is the start of what it said.
    Status {
        service: Service,
        url: String,
        status: u16,
        body: String,
    },
    /// The connection broke, or what came back was not HTTP.
    Broken {
        service: Service,
        url: String,
        why: String,
    },
    /// The call cut the request off (barge-in, hangup): not a failure of the service.
    Cancelled,
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceError::Resolve {
                service,
                url,
                source,
            } => write!(
                f,
                "{service} unreachable: cannot resolve the host of {}: {source}",
                mask_url(url)
            ),
            ServiceError::Connect {
                service,
                url,
                source,
            } => write!(
                f,
                "{service} unreachable: cannot connect to {}: {source}",
                mask_url(url)
            ),
            ServiceError::Timeout {
                service,
                url,
                step,
                budget,
            } => write!(
                f,
                "{service} at {} did not answer in time: {} ms {step}",
                mask_url(url),
                budget.as_millis()
            ),
            ServiceError::Status {
                service,
                url,
                status,
                body,
            } => write!(
                f,
                "{service} at {} answered HTTP {status}: {}",
                mask_url(url),
                Printable(body)
            ),
            ServiceError::Broken { service, url, why } => {
                write!(f, "{service} at {}: {why}", mask_url(url))
            }
            ServiceError::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// Cuts off every request registered with it, from any thread: the caller barged in or
/// hung up, and the threads blocked in those requests must return now.
#[derive(Debug, Default)]
pub struct Cancel {
    cancelled: AtomicBool,
    sockets: Mutex<Vec<TcpStream>>,
}

impl Cancel {
    /// Cancels: every registered socket is shut down (a blocked read or write returns at
    /// once) and no new one may be registered.
    pub fn cancel(&self) {
        let sockets = {
            let mut sockets = lock(&self.sockets);
            self.cancelled.store(true, Ordering::SeqCst);
            std::mem::take(&mut *sockets)
        };
        for socket in sockets {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Registers a socket to shut down on [`Cancel::cancel`]; `false` if that already happened,
    /// or with the reason if no handle to it can be kept (out of file descriptors): a request
    /// that could not be cut off must not be made.
    fn register(&self, socket: &TcpStream) -> io::Result<bool> {
        let mut sockets = lock(&self.sockets);
        if self.is_cancelled() {
            return Ok(false);
        }
        sockets.push(socket.try_clone()?);
        Ok(true)
    }
}

impl Cancel {
    /// Forgets a finished request's socket, so its connection closes now rather than with
    /// the turn (a turn speaks many sentences). A connection is known by its local address.
    fn forget(&self, socket: &TcpStream) {
        let Ok(local) = socket.local_addr() else {
            return;
        };
        lock(&self.sockets).retain(|s| s.local_addr().is_ok_and(|a| a != local));
    }
}

/// A request on its way: the connection, and what is needed to describe its failures.
pub struct Request<'a> {
    pub service: Service,
    pub url: &'a ServiceUrl,
    pub uuid: &'a str,
    pub budgets: Budgets,
    pub cancel: &'a Cancel,
}

impl Request<'_> {
    /// Connects and sends the request head: `POST`, `X-UUID`, and either `Content-Length`
    /// (`body` given) or chunked transfer coding (`body` is `None`: the caller streams it).
    /// Returns the socket and when the request was sent.
    pub fn send(
        &self,
        content_type: &str,
        body: Option<&[u8]>,
    ) -> Result<(TcpStream, Instant), ServiceError> {
        let stream = self.connect()?;
        let url = self.url;
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nX-UUID: {}\r\nContent-Type: {content_type}\r\n\
             Accept: */*\r\nUser-Agent: avr-core/{}\r\n",
            url.target,
            url.host_header,
            self.uuid,
            env!("CARGO_PKG_VERSION"),
        );
        if let Some(auth) = &url.authorization {
            head.push_str(&format!("Authorization: {auth}\r\n"));
        }
        match body {
            Some(body) => head.push_str(&format!(
                "Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )),
            None => head.push_str("Transfer-Encoding: chunked\r\n\r\n"),
        }
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        let _ = stream.set_write_timeout(Some(self.budgets.whole));
        (&stream)
            .write_all(&bytes)
            .map_err(|e| self.io_error(e, Step::Whole))?;
        Ok((stream, Instant::now()))
    }

    fn connect(&self) -> Result<TcpStream, ServiceError> {
        let (service, url) = (self.service, self.url.url.clone());
        let deadline = Instant::now() + self.budgets.connect;
        let addrs = (self.url.host.as_str(), self.url.port)
            .to_socket_addrs()
            .map_err(|source| ServiceError::Resolve {
                service,
                url: url.clone(),
                source,
            })?;
        let mut last = io::Error::new(ErrorKind::NotFound, "the host has no address");
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match TcpStream::connect_timeout(&addr, left) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    match self.cancel.register(&stream) {
                        Ok(true) => {}
                        Ok(false) => return Err(ServiceError::Cancelled),
                        Err(e) => {
                            return Err(self.broken(format!("cannot keep a handle to cancel: {e}")))
                        }
                    }
                    return Ok(stream);
                }
                Err(e) => last = e,
            }
        }
        if self.cancel.is_cancelled() {
            return Err(ServiceError::Cancelled);
        }
        Err(match last.kind() {
            ErrorKind::TimedOut | ErrorKind::WouldBlock => self.timeout(Step::Connect),
            _ => ServiceError::Connect {
                service,
                url,
                source: last,
            },
        })
    }

    fn timeout(&self, step: Step) -> ServiceError {
        let budget = match step {
            Step::Connect => self.budgets.connect,
            Step::FirstByte => self.budgets.first_byte,
            Step::Whole => self.budgets.whole,
        };
        ServiceError::Timeout {
            service: self.service,
            url: self.url.url.clone(),
            step,
            budget,
        }
    }

    fn broken(&self, why: impl Into<String>) -> ServiceError {
        if self.cancel.is_cancelled() {
            return ServiceError::Cancelled;
        }
        ServiceError::Broken {
            service: self.service,
            url: self.url.url.clone(),
            why: why.into(),
        }
    }

    fn io_error(&self, e: io::Error, step: Step) -> ServiceError {
        if self.cancel.is_cancelled() {
            return ServiceError::Cancelled;
        }
        match e.kind() {
            ErrorKind::TimedOut | ErrorKind::WouldBlock => self.timeout(step),
            _ => self.broken(format!("connection failed: {e}")),
        }
    }
}

/// How the answer's body ends.
#[derive(Debug)]
enum Framing {
    Chunked(Chunked),
    Length(u64),
    Close,
}

/// An answer whose body is being read as it arrives.
pub struct Response<'a> {
    request: &'a Request<'a>,
    stream: TcpStream,
    pub status: u16,
    framing: Framing,
    /// Read but not yet decoded.
    pending: Vec<u8>,
    /// Where reads land: one buffer per answer, so each piece handed on is allocated at its
    /// own size (a text-to-speech chunk queued for the call's thread does not hold 16 KiB).
    scratch: Vec<u8>,
    /// By when the whole answer must be in (`None`: it may last the call).
    deadline: Option<Instant>,
    done: bool,
}

/// What [`Response::next_piece`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// Body bytes; `chunk_end` when a chunk of a chunked body ends with them.
    Data { bytes: Vec<u8>, chunk_end: bool },
    /// The body is complete.
    End,
}

impl<'a> Response<'a> {
    /// Reads the answer's head on `stream`, sent at `sent`. `whole` says whether the
    /// `PIPELINE_RESPONSE_TIMEOUT` applies (not to the call-long speech-to-text answer, nor
    /// its first byte). An error status comes back as [`ServiceError::Status`] with the
    /// start of its body.
    pub fn read(
        request: &'a Request<'a>,
        stream: TcpStream,
        sent: Instant,
        whole: bool,
    ) -> Result<Response<'a>, ServiceError> {
        let budgets = request.budgets;
        let (first_byte, deadline) = if whole {
            (
                Some(sent + budgets.first_byte.min(budgets.whole)),
                Some(sent + budgets.whole),
            )
        } else {
            (None, None)
        };
        let mut response = Response {
            request,
            stream,
            status: 0,
            framing: Framing::Close,
            pending: Vec::new(),
            scratch: vec![0; READ_CHUNK],
            deadline,
            done: false,
        };
        let mut head = Vec::new();
        loop {
            let step = if head.is_empty() {
                Step::FirstByte
            } else {
                Step::Whole
            };
            let by = if head.is_empty() {
                first_byte
            } else {
                deadline
            };
            let read = response.read_some(by, step)?;
            if read.is_empty() {
                return Err(request.broken(if head.is_empty() {
                    "closed the connection without answering"
                } else {
                    "closed the connection in the middle of its answer's head"
                }));
            }
            head.extend_from_slice(&read);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(&head) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = parsed.code.unwrap_or(0);
                    if (100..200).contains(&status) {
                        // `100 Continue` and friends: the real answer follows.
                        head.drain(..len);
                        continue;
                    }
                    response.status = status;
                    response.framing = framing(parsed.headers);
                    response.pending = head[len..].to_vec();
                    break;
                }
                Ok(httparse::Status::Partial) if head.len() <= MAX_HEAD => {}
                Ok(httparse::Status::Partial) => {
                    return Err(request.broken(format!("an answer head over {MAX_HEAD} bytes")))
                }
                Err(e) => return Err(request.broken(format!("not an HTTP answer ({e})"))),
            }
        }
        if !(200..300).contains(&response.status) {
            return Err(response.error_status());
        }
        Ok(response)
    }

    /// The body comes in chunks (each a transcript, for the speech-to-text service).
    pub fn is_chunked(&self) -> bool {
        matches!(self.framing, Framing::Chunked(_))
    }

    /// The next piece of the body, as soon as there is one.
    pub fn next_piece(&mut self) -> Result<Piece, ServiceError> {
        loop {
            if self.done {
                return Ok(Piece::End);
            }
            if !self.pending.is_empty() {
                if let Some(piece) = self.decode()? {
                    return Ok(piece);
                }
                continue;
            }
            let read = self.read_some(self.deadline, Step::Whole)?;
            if read.is_empty() {
                return match self.framing {
                    Framing::Close => {
                        self.done = true;
                        Ok(Piece::End)
                    }
                    _ => Err(self.request.broken("closed the connection mid-answer")),
                };
            }
            self.pending = read;
        }
    }

    /// Decodes what is pending into one piece (`None`: it held only framing).
    fn decode(&mut self) -> Result<Option<Piece>, ServiceError> {
        let pending = std::mem::take(&mut self.pending);
        match &mut self.framing {
            Framing::Close => Ok(Some(Piece::Data {
                bytes: pending,
                chunk_end: false,
            })),
            Framing::Length(left) => {
                let n = pending
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= n as u64;
                if *left == 0 {
                    self.done = true;
                }
                let mut bytes = pending;
                bytes.truncate(n);
                Ok(Some(Piece::Data {
                    bytes,
                    chunk_end: false,
                }))
            }
            Framing::Chunked(decoder) => {
                let mut bytes = Vec::new();
                let mut chunk_end = false;
                let mut done = false;
                // Stop at a chunk's end so each transcript comes out on its own: what follows
                // stays pending.
                let mut used = 0;
                while used < pending.len() && !chunk_end && !done {
                    used += decoder
                        .feed(&pending[used..], |d| match d {
                            Decoded::Data(b) => bytes.extend_from_slice(b),
                            Decoded::ChunkEnd => chunk_end = true,
                            Decoded::Done => done = true,
                        })
                        .map_err(|why| self.request.broken(why))?;
                }
                self.pending = pending[used..].to_vec();
                if done {
                    self.done = true;
                    self.pending.clear();
                }
                if bytes.is_empty() && !chunk_end {
                    return Ok(if done { Some(Piece::End) } else { None });
                }
                Ok(Some(Piece::Data { bytes, chunk_end }))
            }
        }
    }

    /// One read, within `by`; empty at the end of the stream.
    fn read_some(&mut self, by: Option<Instant>, step: Step) -> Result<Vec<u8>, ServiceError> {
        let timeout = match by {
            Some(by) => {
                let left = by.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(self.request.timeout(step));
                }
                Some(left)
            }
            None => None,
        };
        let _ = self.stream.set_read_timeout(timeout);
        loop {
            match (&self.stream).read(&mut self.scratch) {
                Ok(n) => {
                    if n == 0 && self.request.cancel.is_cancelled() {
                        return Err(ServiceError::Cancelled);
                    }
                    return Ok(self.scratch[..n].to_vec());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.request.io_error(e, step)),
            }
        }
    }

    /// The error for an answer with an error status, with the start of its body.
    fn error_status(&mut self) -> ServiceError {
        let by = Instant::now() + ERROR_BODY_WAIT;
        self.deadline = Some(self.deadline.map_or(by, |d| d.min(by)));
        let mut body = Vec::new();
        while body.len() < ERROR_BODY_SHOWN {
            match self.next_piece() {
                Ok(Piece::Data { bytes, .. }) => body.extend_from_slice(&bytes),
                _ => break,
            }
        }
        body.truncate(ERROR_BODY_SHOWN);
        ServiceError::Status {
            service: self.request.service,
            url: self.request.url.url.clone(),
            status: self.status,
            body: String::from_utf8_lossy(&body).trim().to_string(),
        }
    }
}

impl Drop for Response<'_> {
    fn drop(&mut self) {
        self.request.cancel.forget(&self.stream);
    }
}

/// How a body with these headers ends.
fn framing(headers: &[httparse::Header<'_>]) -> Framing {
    let value = |name: &str| {
        headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    if value("transfer-encoding").is_some_and(|te| te.ends_with("chunked")) {
        return Framing::Chunked(Chunked::default());
    }
    match value("content-length").and_then(|n| n.parse().ok()) {
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::thread;

    use super::*;

    const BUDGETS: Budgets = Budgets {
        connect: Duration::from_secs(2),
        first_byte: Duration::from_secs(30),
        whole: Duration::from_secs(30),
    };

    /// A service on loopback that answers one request with `answer` (nothing: it never
    /// answers), and the request's result: the body, or the error.
    fn exchange(
        answer: Option<&'static [u8]>,
        budgets: Budgets,
        cancel: Arc<Cancel>,
    ) -> (thread::JoinHandle<Result<Vec<u8>, ServiceError>>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/tts", listener.local_addr().unwrap());
        let client = thread::spawn(move || {
            let url = ServiceUrl::parse(&url).unwrap();
            let request = Request {
                service: Service::Tts,
                url: &url,
                uuid: "u-1",
                budgets,
                cancel: &cancel,
            };
            let (socket, sent) = request.send("application/json", Some(b"{}"))?;
            let mut response = Response::read(&request, socket, sent, true)?;
            let mut body = Vec::new();
            while let Piece::Data { bytes, .. } = response.next_piece()? {
                body.extend_from_slice(&bytes);
            }
            drop(response);
            assert!(
                lock(&cancel.sockets).is_empty(),
                "a finished request is forgotten"
            );
            Ok(body)
        });
        let (mut peer, _) = listener.accept().unwrap();
        let mut head = [0u8; 1024];
        let n = peer.read(&mut head).unwrap();
        let head = String::from_utf8_lossy(&head[..n]).to_string();
        assert!(head.starts_with("POST /tts HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nX-UUID: u-1\r\n"), "{head}");
        if let Some(answer) = answer {
            peer.write_all(answer).unwrap();
        }
        (client, peer)
    }

    #[test]
    fn a_chunked_answer_streams_and_the_socket_is_forgotten() {
        let answer =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n";
        let (client, _peer) = exchange(Some(answer), BUDGETS, Arc::default());
        assert_eq!(client.join().unwrap().unwrap(), b"abc");
    }

    #[test]
    fn an_error_status_comes_back_with_the_start_of_its_body() {
        let answer = b"HTTP/1.1 503 Busy\r\nContent-Length: 20\r\n\r\n{\"error\":\"overload\"}";
        let (client, _peer) = exchange(Some(answer), BUDGETS, Arc::default());
        let err = client.join().unwrap().unwrap_err();
        assert!(
            matches!(&err, ServiceError::Status { status: 503, body, .. } if body.contains("overload")),
            "{err}"
        );
        assert!(err
            .to_string()
            .starts_with("text-to-speech service (TTS_URL) at http://127.0.0.1:"));
    }

    #[test]
    fn a_silent_service_is_cut_at_the_first_byte_budget() {
        let budgets = Budgets {
            first_byte: Duration::from_millis(200),
            ..BUDGETS
        };
        let (client, _peer) = exchange(None, budgets, Arc::default());
        let err = client.join().unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                ServiceError::Timeout {
                    step: Step::FirstByte,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn cancel_releases_a_request_waiting_for_its_answer_at_once() {
        let cancel = Arc::new(Cancel::default());
        let (client, _peer) = exchange(None, BUDGETS, cancel.clone());
        let started = Instant::now();
        cancel.cancel();
        assert!(matches!(
            client.join().unwrap(),
            Err(ServiceError::Cancelled)
        ));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the 30 s budget did not run"
        );
    }
}
