//! Reading requests from a socket into the parser's buffer, within a deadline for the whole
//! request however slowly it trickles in. The rules of what the bytes mean are in
//! [`parse`](super::parse); this is only the waiting.

use std::fmt;
use std::io::{self, ErrorKind, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::parse::{head_cut_short, parse_head, BodyParser, ParseError, RequestHead};

/// Bytes read per `read(2)`.
const READ_SIZE: usize = 4096;

/// Why a request could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The client closed (or was closed to admit another) before sending a whole request.
    Gone,
    /// The whole request did not arrive in time; `received` bytes did.
    TimedOut {
        limit: Duration,
        received: usize,
    },
    Parse(ParseError),
    Io(io::Error),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Gone => write!(f, "the client closed before sending a whole request"),
            ReadError::TimedOut { limit, received } => write!(
                f,
                "the request did not arrive within {} s ({received} bytes received)",
                limit.as_secs_f64()
            ),
            ReadError::Parse(e) => write!(f, "{e}"),
            ReadError::Io(e) => write!(f, "read failed: {e}"),
        }
    }
}

impl std::error::Error for ReadError {}

impl From<ParseError> for ReadError {
    fn from(e: ParseError) -> ReadError {
        ReadError::Parse(e)
    }
}

/// One connection's requests, read in turn: a buffer that keeps what arrived after a
/// request for the next one, and a deadline for the request being read.
pub struct RequestReader<'a> {
    stream: &'a TcpStream,
    buf: Vec<u8>,
    deadline: Instant,
    /// What the deadline allows, for the error text.
    timeout: Duration,
    /// Bytes read for the request being read, for the error text.
    received: usize,
}

impl<'a> RequestReader<'a> {
    /// The first request must arrive within `timeout` of `start` (say, the accept).
    pub fn new(stream: &'a TcpStream, start: Instant, timeout: Duration) -> RequestReader<'a> {
        RequestReader {
            stream,
            buf: Vec::with_capacity(1024),
            deadline: start + timeout,
            timeout,
            received: 0,
        }
    }

    /// The next request (on a kept-alive connection) must arrive within the timeout of
    /// `now`.
    pub fn next_request(&mut self, now: Instant) {
        self.deadline = now + self.timeout;
        self.received = self.buf.len();
    }

    /// Reads until a whole head has arrived.
    pub fn head(&mut self, max_head: usize) -> Result<RequestHead, ReadError> {
        loop {
            if let Some(head) = parse_head(&mut self.buf, max_head)? {
                return Ok(head);
            }
            if !self.fill()? {
                return Err(head_cut_short(&self.buf).map_or(ReadError::Gone, ReadError::Parse));
            }
        }
    }

    /// Reads until the whole body `parser` is for has arrived.
    pub fn body(&mut self, mut parser: BodyParser) -> Result<Vec<u8>, ReadError> {
        loop {
            if let Some(body) = parser.parse(&mut self.buf)? {
                return Ok(body);
            }
            if !self.fill()? {
                return Err(parser.cut_short().into());
            }
        }
    }

    /// Nothing has arrived beyond what was parsed: after a head, the client is waiting
    /// (for `100 Continue`, say) rather than already sending its body.
    pub fn is_drained(&self) -> bool {
        self.buf.is_empty()
    }

    /// Reads more bytes; `Ok(false)` at end of stream.
    fn fill(&mut self) -> Result<bool, ReadError> {
        let mut chunk = [0u8; READ_SIZE];
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.timed_out());
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(ReadError::Io)?;
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
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Err(ReadError::Gone),
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }

    fn timed_out(&self) -> ReadError {
        ReadError::TimedOut {
            limit: self.timeout,
            received: self.received,
        }
    }
}
