//! HTTP/1.1 requests from bytes, with no socket: the caller reads into a buffer, these
//! functions take whole pieces (a head, then a body) from its front and say when they need
//! more. So every framing rule (Content-Length, chunked bodies, the size limits, where one
//! request ends and the next begins) is tested on byte strings, and the service's server
//! and the tools' sink share them.
//!
//! Use: [`parse_head`] until it gives the [`RequestHead`], then a [`BodyParser`] made from
//! it until it gives the body. Bytes after the body stay in the buffer for the next
//! request. When the peer closes, [`head_cut_short`] or [`BodyParser::cut_short`] says what
//! that means. After an error the stream cannot be resynchronised: answer and close.

use std::fmt;

use ::http::header::{HeaderMap, HeaderName, HeaderValue, EXPECT};

/// Headers parsed per request; more is refused with 431.
pub const MAX_HEADERS: usize = 64;

/// Longest chunk-size line of a chunked body: size, extensions and line end.
pub const MAX_CHUNK_LINE: usize = 1024;

/// Chunk framing can be much larger than its data (one-byte chunks, long extensions): the
/// bytes received for a request may be at most this many times the body limit (plus a head)
/// before it is refused as too large. The request deadline bounds the time anyway; this
/// bounds the work.
const FRAMING_FACTOR: usize = 4;

/// A request line and its headers. Method and target stay text: `http::Uri` refuses targets
/// that `httparse` accepts (`"`, `{`, `|`…), which would turn a 404 naming the path into a
/// 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// As sent: origin form (`/call?x`) or absolute form (`http://h/call`).
    pub target: String,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Bytes of the request line and headers, blank line included.
    pub len: usize,
}

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Neither `Content-Length` nor `Transfer-Encoding`: no body.
    None,
    Length(u64),
    Chunked,
}

impl RequestHead {
    /// The `Content-Length` given, to refuse an oversized body before reading it.
    pub fn content_length(&self) -> Option<u64> {
        match self.framing {
            Framing::Length(n) => Some(n),
            Framing::None | Framing::Chunked => None,
        }
    }

    /// Whether a body follows the head.
    pub fn has_body(&self) -> bool {
        match self.framing {
            Framing::None => false,
            Framing::Length(n) => n > 0,
            Framing::Chunked => true,
        }
    }

    /// The text of the last header `name` (trimmed), if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        let value = self.headers.get_all(name).iter().next_back()?;
        std::str::from_utf8(value.as_bytes()).ok().map(str::trim)
    }

    /// `Expect: 100-continue`: the client waits for an interim answer before the body.
    pub fn expects_continue(&self) -> bool {
        self.header(EXPECT.as_str())
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    }
}

/// Why a request cannot be read; [`ParseError::status`] is the answer's status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The request line and headers are over `limit` bytes or [`MAX_HEADERS`] headers, or
    /// the trailers of a chunked body are over `limit` bytes.
    HeadTooLarge {
        limit: usize,
    },
    /// The body is (or is announced as) over `limit` bytes, or its chunk framing is out of
    /// all proportion to it.
    BodyTooLarge {
        limit: usize,
    },
    Malformed(Malformed),
}

/// What is wrong with a request that is not valid HTTP/1.1 (or that this parser refuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// The request line or a header, as `httparse` found it.
    Syntax(httparse::Error),
    InvalidContentLength,
    ConflictingContentLength,
    /// A transfer coding other than a single `chunked`.
    UnsupportedTransferEncoding,
    LengthAndChunked,
    InvalidChunkSize,
    /// A chunk-size line over [`MAX_CHUNK_LINE`] bytes, a trailer line over the head
    /// limit, or chunk data running on past its size (its line end is not within 2 bytes).
    ChunkLineTooLong,
    /// Chunk data not followed by its line end.
    ChunkDataTooLong,
    ClosedInHead,
    ClosedInBody,
    ClosedInChunkedBody,
}

impl ParseError {
    /// 431, 413 or 400.
    pub fn status(&self) -> u16 {
        match self {
            ParseError::HeadTooLarge { .. } => 431,
            ParseError::BodyTooLarge { .. } => 413,
            ParseError::Malformed(_) => 400,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::HeadTooLarge { limit } => write!(
                f,
                "the request line and headers are over {} KiB (or over {MAX_HEADERS} headers)",
                limit / 1024
            ),
            ParseError::BodyTooLarge { limit } => {
                write!(f, "the body is over {} KiB", limit / 1024)
            }
            ParseError::Malformed(why) => write!(f, "malformed HTTP request: {why}"),
        }
    }
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Malformed::Syntax(e) => return write!(f, "{e}"),
            Malformed::InvalidContentLength => "invalid Content-Length",
            Malformed::ConflictingContentLength => "conflicting Content-Length headers",
            Malformed::UnsupportedTransferEncoding => {
                "only \"Transfer-Encoding: chunked\" is supported; or send Content-Length"
            }
            Malformed::LengthAndChunked => {
                "both Content-Length and Transfer-Encoding are set; send one"
            }
            Malformed::InvalidChunkSize => "invalid chunk size line",
            Malformed::ChunkLineTooLong => "a chunked body line is too long",
            Malformed::ChunkDataTooLong => "chunk data longer than its size",
            Malformed::ClosedInHead => "the client closed in the middle of the head",
            Malformed::ClosedInBody => "the client closed before sending the whole body",
            Malformed::ClosedInChunkedBody => "the client closed in the middle of the chunked body",
        };
        f.write_str(text)
    }
}

impl std::error::Error for ParseError {}

impl From<Malformed> for ParseError {
    fn from(why: Malformed) -> ParseError {
        ParseError::Malformed(why)
    }
}

/// The request head at the front of `buf`, taken out of it; `Ok(None)` until the whole head
/// has arrived. A head over `max_head` bytes is refused as soon as that many have arrived.
pub fn parse_head(buf: &mut Vec<u8>, max_head: usize) -> Result<Option<RequestHead>, ParseError> {
    let too_large = ParseError::HeadTooLarge { limit: max_head };
    let head = {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) if len <= max_head => head_of(&req, len)?,
            Ok(httparse::Status::Partial) if buf.len() < max_head => return Ok(None),
            Ok(_) | Err(httparse::Error::TooManyHeaders) => return Err(too_large),
            Err(e) => return Err(Malformed::Syntax(e).into()),
        }
    };
    buf.drain(..head.len);
    Ok(Some(head))
}

/// What the peer closing before a whole head arrived means: `None` if nothing of a request
/// had arrived (a clean close between requests), else the error.
pub fn head_cut_short(buf: &[u8]) -> Option<ParseError> {
    (!buf.is_empty()).then_some(Malformed::ClosedInHead.into())
}

/// The owned head of a parsed request, with the framing rules applied.
fn head_of(req: &httparse::Request<'_, '_>, len: usize) -> Result<RequestHead, ParseError> {
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    let mut content_length = None;
    let mut chunked = false;
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| Malformed::Syntax(httparse::Error::HeaderName))?;
        let value = std::str::from_utf8(h.value).map(str::trim);
        if name == ::http::header::CONTENT_LENGTH {
            let text = value.map_err(|_| Malformed::InvalidContentLength)?;
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Malformed::InvalidContentLength.into());
            }
            // Digits too many for u64 are simply too large.
            let n = text.parse::<u64>().unwrap_or(u64::MAX);
            if content_length.is_some_and(|l| l != n) {
                return Err(Malformed::ConflictingContentLength.into());
            }
            content_length = Some(n);
        } else if name == ::http::header::TRANSFER_ENCODING {
            if chunked || !value.is_ok_and(|v| v.eq_ignore_ascii_case("chunked")) {
                return Err(Malformed::UnsupportedTransferEncoding.into());
            }
            chunked = true;
        }
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| Malformed::Syntax(httparse::Error::HeaderValue))?;
        headers.append(name, value);
    }
    let framing = match (content_length, chunked) {
        (Some(_), true) => return Err(Malformed::LengthAndChunked.into()),
        (Some(n), false) => Framing::Length(n),
        (None, true) => Framing::Chunked,
        (None, false) => Framing::None,
    };
    Ok(RequestHead {
        method: req.method.unwrap_or_default().to_string(),
        target: req.path.unwrap_or_default().to_string(),
        headers,
        framing,
        len,
    })
}

/// Reads the body that follows a [`RequestHead`], as its framing says.
#[derive(Debug)]
pub struct BodyParser {
    state: Body,
    body: Vec<u8>,
    max_head: usize,
    max_body: usize,
    /// Bytes of this request taken from the buffer so far, head included.
    taken: usize,
}

/// Where a body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Waiting for this many bytes of a `Content-Length` body.
    Length(u64),
    ChunkSize,
    /// Waiting for this many bytes of chunk data.
    ChunkData(usize),
    /// The line end after chunk data.
    ChunkEnd,
    /// Trailer lines up to the blank one; `bytes` of them so far.
    Trailers {
        bytes: usize,
    },
}

impl BodyParser {
    /// For the body after `head`, at most `max_body` bytes; `max_head` bounds the trailers.
    pub fn new(head: &RequestHead, max_head: usize, max_body: usize) -> BodyParser {
        BodyParser {
            state: match head.framing {
                Framing::None => Body::Length(0),
                Framing::Length(n) => Body::Length(n),
                Framing::Chunked => Body::ChunkSize,
            },
            body: Vec::new(),
            max_head,
            max_body,
            taken: head.len,
        }
    }

    /// The whole body, taken out of the front of `buf`; `Ok(None)` until it has all
    /// arrived. A `Content-Length` over the limit is refused at once (a server refuses it
    /// from the head, before asking for the body); a chunked body when its size is.
    pub fn parse(&mut self, buf: &mut Vec<u8>) -> Result<Option<Vec<u8>>, ParseError> {
        loop {
            let taken = match self.state {
                Body::Length(n) => {
                    if n > self.max_body as u64 {
                        return Err(self.too_large());
                    }
                    // At most `max_body`, so it fits.
                    let n = n as usize;
                    if buf.len() < n {
                        return self.need_more(buf);
                    }
                    self.body.extend(buf.drain(..n));
                    return Ok(Some(std::mem::take(&mut self.body)));
                }
                Body::ChunkSize => {
                    let Some(len) = line(buf, MAX_CHUNK_LINE)? else {
                        return self.need_more(buf);
                    };
                    let size = match httparse::parse_chunk_size(&buf[..len]) {
                        Ok(httparse::Status::Complete((_, size))) => size,
                        _ => return Err(Malformed::InvalidChunkSize.into()),
                    };
                    self.state = if size == 0 {
                        Body::Trailers { bytes: 0 }
                    } else if self.body.len() as u64 + size > self.max_body as u64 {
                        return Err(self.too_large());
                    } else {
                        // Within `max_body`, so it fits.
                        Body::ChunkData(size as usize)
                    };
                    len
                }
                Body::ChunkData(n) => {
                    if buf.len() < n {
                        return self.need_more(buf);
                    }
                    self.body.extend_from_slice(&buf[..n]);
                    self.state = Body::ChunkEnd;
                    n
                }
                Body::ChunkEnd => {
                    let Some(len) = line(buf, 2)? else {
                        return self.need_more(buf);
                    };
                    if !is_blank(&buf[..len]) {
                        return Err(Malformed::ChunkDataTooLong.into());
                    }
                    self.state = Body::ChunkSize;
                    len
                }
                Body::Trailers { bytes } => {
                    // Trailers are read and ignored.
                    let Some(len) = line(buf, self.max_head)? else {
                        return self.need_more(buf);
                    };
                    if is_blank(&buf[..len]) {
                        buf.drain(..len);
                        return Ok(Some(std::mem::take(&mut self.body)));
                    }
                    let bytes = bytes + len;
                    if bytes > self.max_head {
                        return Err(ParseError::HeadTooLarge {
                            limit: self.max_head,
                        });
                    }
                    self.state = Body::Trailers { bytes };
                    len
                }
            };
            buf.drain(..taken);
            self.taken += taken;
        }
    }

    /// What the peer closing before the whole body arrived means.
    pub fn cut_short(&self) -> ParseError {
        match self.state {
            Body::Length(_) | Body::ChunkData(_) => Malformed::ClosedInBody.into(),
            Body::ChunkSize | Body::ChunkEnd | Body::Trailers { .. } => {
                Malformed::ClosedInChunkedBody.into()
            }
        }
    }

    /// `Ok(None)`, unless what arrived for this request is already out of proportion to the
    /// body limit ([`FRAMING_FACTOR`]).
    fn need_more(&self, buf: &[u8]) -> Result<Option<Vec<u8>>, ParseError> {
        let bound = self
            .max_head
            .saturating_add(self.max_body.saturating_mul(FRAMING_FACTOR));
        if self.taken + buf.len() > bound {
            return Err(self.too_large());
        }
        Ok(None)
    }

    fn too_large(&self) -> ParseError {
        ParseError::BodyTooLarge {
            limit: self.max_body,
        }
    }
}

/// The length of the line at the front of `buf`, its `\n` included, if it has arrived; a
/// line longer than `max` bytes (its `\n` included) is an error as soon as `max` bytes
/// without one have arrived.
fn line(buf: &[u8], max: usize) -> Result<Option<usize>, ParseError> {
    match buf.iter().take(max).position(|&b| b == b'\n') {
        Some(i) => Ok(Some(i + 1)),
        None if buf.len() >= max => Err(Malformed::ChunkLineTooLong.into()),
        None => Ok(None),
    }
}

fn is_blank(line: &[u8]) -> bool {
    matches!(line, b"\r\n" | b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_HEAD: usize = 8 * 1024;
    const MAX_BODY: usize = 64 * 1024;

    /// A parsed request: its head and its body.
    type Parsed = (RequestHead, Vec<u8>);

    /// Every whole request in `bytes`, in order, and what is left over.
    fn parse_all(bytes: &[u8]) -> Result<(Vec<Parsed>, Vec<u8>), ParseError> {
        let mut buf = bytes.to_vec();
        let mut out = Vec::new();
        while let Some(head) = parse_head(&mut buf, MAX_HEAD)? {
            let mut body = BodyParser::new(&head, MAX_HEAD, MAX_BODY);
            match body.parse(&mut buf)? {
                Some(b) => out.push((head, b)),
                None => break,
            }
        }
        Ok((out, buf))
    }

    /// The one request in `bytes` (which must be whole), its body as text.
    fn one(bytes: &[u8]) -> Result<(RequestHead, String), ParseError> {
        let (mut all, rest) = parse_all(bytes)?;
        assert_eq!(all.len(), 1, "{:?}", String::from_utf8_lossy(bytes));
        assert!(rest.is_empty(), "left over: {rest:?}");
        let (head, body) = all.remove(0);
        Ok((head, String::from_utf8(body).unwrap()))
    }

    fn malformed(bytes: &[u8]) -> Malformed {
        match parse_all(bytes) {
            Err(ParseError::Malformed(why)) => why,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    #[test]
    fn the_request_line_and_headers() {
        let (head, body) = one(
            b"POST http://h:1/call?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization:  Bearer t \r\n\
              authorization: Bearer last\r\nContent-Length: 2\r\n\r\n{}",
        )
        .unwrap();
        assert_eq!(head.method, "POST");
        assert_eq!(head.target, "http://h:1/call?x=1");
        assert_eq!(head.framing, Framing::Length(2));
        assert_eq!(head.content_length(), Some(2));
        assert_eq!(head.header("host"), Some("a"));
        assert_eq!(
            head.header("AUTHORIZATION"),
            Some("Bearer last"),
            "the last one"
        );
        assert_eq!(head.headers.get_all("authorization").iter().count(), 2);
        assert!(!head.expects_continue());
        assert_eq!(body, "{}");

        let (head, body) = one(b"GET /health HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n").unwrap();
        assert_eq!(head.framing, Framing::None);
        assert!(!head.has_body());
        assert!(head.expects_continue());
        assert_eq!(body, "");
        // Targets `http::Uri` would refuse stay as they were sent.
        let (head, _) = one(b"GET /a\"{|} HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(head.target, "/a\"{|}");
    }

    #[test]
    fn broken_request_lines_are_malformed() {
        for (raw, why) in [
            (&b"\x00\x01\x02\xffgarbage\r\n\r\n"[..], "invalid token"),
            (b"GET /health HTTP/9.9\r\n\r\n", "invalid HTTP version"),
            (
                b"GET /health HTTP/1.1\r\nBad Name: x\r\n\r\n",
                "invalid header name",
            ),
            (
                b"GET /health HTTP/1.1\r\nX: a\x01b\r\n\r\n",
                "invalid header value",
            ),
        ] {
            let err = parse_all(raw).unwrap_err();
            assert_eq!(err.status(), 400);
            assert_eq!(err.to_string(), format!("malformed HTTP request: {why}"));
        }
    }

    #[test]
    fn the_head_limits() {
        // Exactly the limit is allowed; one byte more is refused, before the blank line.
        let head = |len: usize| {
            let start = "GET / HTTP/1.1\r\nX: ";
            format!("{start}{}\r\n\r\n", "a".repeat(len - start.len() - 4)).into_bytes()
        };
        assert!(one(&head(MAX_HEAD)).is_ok());
        let too_long = head(MAX_HEAD + 1);
        assert_eq!(
            parse_all(&too_long).unwrap_err(),
            ParseError::HeadTooLarge { limit: MAX_HEAD }
        );
        let mut partial = too_long[..MAX_HEAD].to_vec();
        assert_eq!(
            parse_head(&mut partial, MAX_HEAD).unwrap_err().status(),
            431,
            "refused once the limit is reached, without waiting for the end"
        );
        let mut partial = too_long[..MAX_HEAD - 1].to_vec();
        assert_eq!(parse_head(&mut partial, MAX_HEAD), Ok(None));

        let headers = |n: usize| {
            let mut raw = String::from("GET / HTTP/1.1\r\n");
            for i in 0..n {
                raw.push_str(&format!("X-{i}: v\r\n"));
            }
            raw.push_str("\r\n");
            raw.into_bytes()
        };
        assert_eq!(one(&headers(MAX_HEADERS)).unwrap().0.headers.len(), 64);
        let err = parse_all(&headers(MAX_HEADERS + 1)).unwrap_err();
        assert_eq!(err, ParseError::HeadTooLarge { limit: MAX_HEAD });
        assert_eq!(
            err.to_string(),
            "the request line and headers are over 8 KiB (or over 64 headers)"
        );
    }

    #[test]
    fn content_length_cases() {
        let with = |lengths: &str| format!("POST /call HTTP/1.1\r\n{lengths}\r\n").into_bytes();
        // Repeated with the same value is one length.
        let mut raw = with("Content-Length: 3\r\ncontent-length:3\r\n");
        raw.extend_from_slice(b"abc");
        assert_eq!(one(&raw).unwrap().1, "abc");
        for bad in [
            "Content-Length: -1\r\n",
            "Content-Length: 1e3\r\n",
            "Content-Length:\r\n",
        ] {
            assert_eq!(
                malformed(&with(bad)),
                Malformed::InvalidContentLength,
                "{bad}"
            );
        }
        assert_eq!(
            malformed(&with("Content-Length: 5\r\nContent-Length: 6\r\n")),
            Malformed::ConflictingContentLength
        );
        assert_eq!(
            malformed(&with("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n")),
            Malformed::LengthAndChunked
        );
        // Forged lengths are read from the head alone (a server refuses them from there)
        // and refused as soon as the body is asked for, without waiting for a byte of it.
        for (forged, n) in [
            ("1000000000000", 1_000_000_000_000),
            ("99999999999999999999999999", u64::MAX),
        ] {
            let mut buf = with(&format!("Content-Length: {forged}\r\n"));
            let head = parse_head(&mut buf, MAX_HEAD).unwrap().unwrap();
            assert_eq!(head.content_length(), Some(n));
            assert_eq!(
                BodyParser::new(&head, MAX_HEAD, MAX_BODY).parse(&mut buf),
                Err(ParseError::BodyTooLarge { limit: MAX_BODY })
            );
        }
        // Exactly the limit is allowed.
        let mut raw = with(&format!("Content-Length: {MAX_BODY}\r\n"));
        raw.extend(std::iter::repeat_n(b'x', MAX_BODY));
        assert_eq!(one(&raw).unwrap().1.len(), MAX_BODY);
    }

    #[test]
    fn transfer_encodings_other_than_chunked_are_refused() {
        for te in [
            "Transfer-Encoding: gzip\r\n",
            "Transfer-Encoding: gzip, chunked\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        ] {
            let raw = format!("POST /call HTTP/1.1\r\n{te}\r\n0\r\n\r\n");
            assert_eq!(
                malformed(raw.as_bytes()),
                Malformed::UnsupportedTransferEncoding,
                "{te}"
            );
        }
    }

    const CHUNKED: &str = "POST /call HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n";

    fn chunked(body: &str) -> Vec<u8> {
        format!("{CHUNKED}{body}").into_bytes()
    }

    #[test]
    fn chunked_bodies_with_extensions_and_trailers() {
        let (head, body) = one(&chunked("3\r\nabc\r\n0\r\n\r\n")).unwrap();
        assert_eq!((head.framing, body.as_str()), (Framing::Chunked, "abc"));
        assert!(head.has_body());
        assert_eq!(head.content_length(), None);
        let (_, body) = one(&chunked(
            "4;name=value;flag\r\nwiki\r\nA ; x=\"q\"\r\npedia in c\r\n0;last\r\n\
             Trailer-One: 1\r\nTrailer-Two: 2\r\n\r\n",
        ))
        .unwrap();
        assert_eq!(body, "wikipedia in c");
        // Bare LF after chunk data and to end the trailers are accepted.
        assert_eq!(one(&chunked("1\r\na\n0\r\n\n")).unwrap().1, "a");
    }

    #[test]
    fn malformed_chunk_framing() {
        for (body, why) in [
            ("zz\r\n", Malformed::InvalidChunkSize),
            ("-1\r\n", Malformed::InvalidChunkSize),
            ("1\r\r\na\r\n0\r\n\r\n", Malformed::InvalidChunkSize),
            // 17 hex digits: over httparse's 16.
            ("10000000000000000\r\n", Malformed::InvalidChunkSize),
            ("3\r\nabcd\r\n0\r\n\r\n", Malformed::ChunkLineTooLong),
            ("3\r\nabcx\n0\r\n\r\n", Malformed::ChunkDataTooLong),
        ] {
            assert_eq!(malformed(&chunked(body)), why, "{body:?}");
        }
        // A chunk-size line is at most MAX_CHUNK_LINE bytes, its extensions included.
        let size_line = |len: usize| format!("1;{}\r\na\r\n0\r\n\r\n", "e".repeat(len - 4));
        assert!(one(&chunked(&size_line(MAX_CHUNK_LINE))).is_ok());
        assert_eq!(
            malformed(&chunked(&size_line(MAX_CHUNK_LINE + 1))),
            Malformed::ChunkLineTooLong
        );
        // Without its end, too: no need to wait for a newline that may never come.
        let mut buf = chunked(&"1".repeat(MAX_CHUNK_LINE));
        let head = parse_head(&mut buf, MAX_HEAD).unwrap().unwrap();
        assert_eq!(
            BodyParser::new(&head, MAX_HEAD, MAX_BODY).parse(&mut buf),
            Err(Malformed::ChunkLineTooLong.into())
        );
    }

    #[test]
    fn chunked_bodies_are_counted_against_the_limits() {
        let block = "a".repeat(16 * 1024);
        let mut five = String::new();
        for _ in 0..5 {
            five.push_str(&format!("{:x}\r\n{block}\r\n", block.len()));
        }
        five.push_str("0\r\n\r\n");
        assert_eq!(
            parse_all(&chunked(&five)).unwrap_err(),
            ParseError::BodyTooLarge { limit: MAX_BODY }
        );
        // A huge size is refused from its line, before any of its data.
        let err = parse_all(&chunked("fffffffffffffff\r\n")).unwrap_err();
        assert_eq!(err, ParseError::BodyTooLarge { limit: MAX_BODY });
        assert_eq!(err.status(), 413);
        // Framing out of proportion: empty extensions around one-byte chunks.
        let mut buf = chunked(&format!("1;{}\r\na\r\n", "e".repeat(1000)).repeat(300));
        let head = parse_head(&mut buf, MAX_HEAD).unwrap().unwrap();
        assert_eq!(
            BodyParser::new(&head, MAX_HEAD, MAX_BODY).parse(&mut buf),
            Err(ParseError::BodyTooLarge { limit: MAX_BODY })
        );
        // Trailers are bounded like a head.
        let trailers = format!(
            "0\r\n{}\r\n",
            "T: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n".repeat(300)
        );
        assert_eq!(
            parse_all(&chunked(&trailers)).unwrap_err(),
            ParseError::HeadTooLarge { limit: MAX_HEAD }
        );
    }

    #[test]
    fn pipelined_requests_stay_apart() {
        let first = b"POST /call HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        let second = chunked("2\r\nhi\r\n0\r\n\r\n");
        let third = b"GET /health HTTP/1.1\r\n\r\n";
        let mut all = first.to_vec();
        all.extend_from_slice(&second);
        all.extend_from_slice(third);
        all.extend_from_slice(b"GET /met");
        let (requests, rest) = parse_all(&all).unwrap();
        let got: Vec<(&str, &str, &[u8])> = requests
            .iter()
            .map(|(h, b)| (h.method.as_str(), h.target.as_str(), b.as_slice()))
            .collect();
        assert_eq!(
            got,
            [
                ("POST", "/call", &b"hello"[..]),
                ("POST", "/call", b"hi"),
                ("GET", "/health", b""),
            ]
        );
        assert_eq!(rest, b"GET /met", "the next request's bytes stay");
    }

    /// Feeds `bytes` in two pieces split at `at`, parsing after each as a server does.
    fn split_at(bytes: &[u8], at: usize) -> Vec<(String, Vec<u8>)> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut body: Option<(String, BodyParser)> = None;
        for piece in [&bytes[..at], &bytes[at..]] {
            buf.extend_from_slice(piece);
            loop {
                if let Some((target, parser)) = &mut body {
                    match parser.parse(&mut buf).unwrap() {
                        Some(b) => out.push((std::mem::take(target), b)),
                        None => break,
                    }
                    body = None;
                }
                match parse_head(&mut buf, MAX_HEAD).unwrap() {
                    Some(head) => {
                        let parser = BodyParser::new(&head, MAX_HEAD, MAX_BODY);
                        body = Some((head.target, parser));
                    }
                    None => break,
                }
            }
        }
        assert!(body.is_none() && buf.is_empty(), "split at {at}");
        out
    }

    #[test]
    fn a_request_split_at_every_byte_gives_the_same_requests() {
        let mut bytes = chunked("3;x=y\r\nabc\r\n1\r\nd\r\n0\r\nT: 1\r\n\r\n");
        bytes.extend_from_slice(b"POST /b HTTP/1.1\r\nContent-Length: 4\r\n\r\nwxyz");
        bytes.extend_from_slice(b"GET /c HTTP/1.1\r\n\r\n");
        let whole = split_at(&bytes, bytes.len());
        assert_eq!(
            whole,
            [
                ("/call".to_string(), b"abcd".to_vec()),
                ("/b".to_string(), b"wxyz".to_vec()),
                ("/c".to_string(), Vec::new()),
            ]
        );
        for at in 0..bytes.len() {
            assert_eq!(split_at(&bytes, at), whole, "split at {at}");
        }
    }

    #[test]
    fn a_close_says_where_the_request_was_cut() {
        assert_eq!(head_cut_short(b""), None, "nothing started: a clean close");
        assert_eq!(
            head_cut_short(b"GET /hea"),
            Some(Malformed::ClosedInHead.into())
        );
        let cut = |raw: &[u8]| {
            let mut buf = raw.to_vec();
            let head = parse_head(&mut buf, MAX_HEAD).unwrap().unwrap();
            let mut body = BodyParser::new(&head, MAX_HEAD, MAX_BODY);
            assert_eq!(body.parse(&mut buf), Ok(None));
            body.cut_short().to_string()
        };
        assert_eq!(
            cut(b"POST /call HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"uu"),
            "malformed HTTP request: the client closed before sending the whole body"
        );
        assert_eq!(
            cut(&chunked("5\r\nab")),
            "malformed HTTP request: the client closed before sending the whole body"
        );
        for partial in ["", "5", "5\r\nabcde", "0\r\n", "0\r\nT: 1\r\n"] {
            assert_eq!(
                cut(&chunked(partial)),
                "malformed HTTP request: the client closed in the middle of the chunked body",
                "{partial:?}"
            );
        }
    }
}
