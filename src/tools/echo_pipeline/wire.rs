//! HTTP/1.1 framing the echo pipeline needs beyond [`crate::http::parse`]: a request body
//! decoded *as it arrives* (the ASR upload lasts the whole call, so it cannot be read whole
//! first), and chunked responses written a piece at a time.

use std::io::{self, Write};
use std::net::TcpStream;

use crate::http::parse::{Framing, Malformed, ParseError, MAX_CHUNK_LINE};
use crate::http::status_line;

/// A request body decoded incrementally: each call takes what it can from the front of the
/// buffer and appends the payload bytes to `out`, so audio is seen as soon as its chunk has
/// arrived, whatever the chunk sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyDecoder {
    /// This many `Content-Length` bytes still to come.
    Length(u64),
    ChunkSize,
    /// This many bytes of chunk data still to come.
    ChunkData(u64),
    /// The line end after chunk data.
    ChunkEnd,
    /// Trailer lines up to the blank one; `bytes` of them so far.
    Trailers {
        bytes: usize,
    },
    Done,
}

impl BodyDecoder {
    pub(super) fn new(framing: Framing) -> BodyDecoder {
        match framing {
            Framing::None | Framing::Length(0) => BodyDecoder::Done,
            Framing::Length(n) => BodyDecoder::Length(n),
            Framing::Chunked => BodyDecoder::ChunkSize,
        }
    }

    /// Moves the payload at the front of `buf` to `out`; `Ok(true)` once the body is complete
    /// (bytes after it stay in `buf`). `max_trailers` bounds the trailer section.
    pub(super) fn decode(
        &mut self,
        buf: &mut Vec<u8>,
        out: &mut Vec<u8>,
        max_trailers: usize,
    ) -> Result<bool, ParseError> {
        let mut at = 0;
        let result = loop {
            let rest = &buf[at..];
            match *self {
                BodyDecoder::Done => break Ok(true),
                BodyDecoder::Length(n) | BodyDecoder::ChunkData(n) => {
                    if rest.is_empty() {
                        break Ok(false);
                    }
                    let take = rest.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                    out.extend_from_slice(&rest[..take]);
                    at += take;
                    let left = n - take as u64;
                    *self = match (*self, left) {
                        (BodyDecoder::Length(_), 0) => BodyDecoder::Done,
                        (BodyDecoder::Length(_), _) => BodyDecoder::Length(left),
                        (_, 0) => BodyDecoder::ChunkEnd,
                        (_, _) => BodyDecoder::ChunkData(left),
                    };
                }
                BodyDecoder::ChunkSize => {
                    let Some(len) = line(rest, MAX_CHUNK_LINE)? else {
                        break Ok(false);
                    };
                    let size = match httparse::parse_chunk_size(&rest[..len]) {
                        Ok(httparse::Status::Complete((_, size))) => size,
                        _ => break Err(Malformed::InvalidChunkSize.into()),
                    };
                    at += len;
                    *self = if size == 0 {
                        BodyDecoder::Trailers { bytes: 0 }
                    } else {
                        BodyDecoder::ChunkData(size)
                    };
                }
                BodyDecoder::ChunkEnd => {
                    let Some(len) = line(rest, 2)? else {
                        break Ok(false);
                    };
                    if !is_blank(&rest[..len]) {
                        break Err(Malformed::ChunkDataTooLong.into());
                    }
                    at += len;
                    *self = BodyDecoder::ChunkSize;
                }
                BodyDecoder::Trailers { bytes } => {
                    let Some(len) = line(rest, max_trailers)? else {
                        break Ok(false);
                    };
                    at += len;
                    if is_blank(&rest[..len]) {
                        *self = BodyDecoder::Done;
                    } else if bytes + len > max_trailers {
                        break Err(ParseError::HeadTooLarge {
                            limit: max_trailers,
                        });
                    } else {
                        *self = BodyDecoder::Trailers { bytes: bytes + len };
                    }
                }
            }
        };
        buf.drain(..at);
        result
    }
}

/// The length of the line at the front of `buf`, `\n` included, once it has arrived; an
/// error once `max` bytes have come without one.
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

/// A chunked response being written. Every [`chunk`](Self::chunk) is one `write(2)`, so the
/// client sees the pieces as the server cut them.
pub(super) struct ChunkedWriter<'a> {
    stream: &'a TcpStream,
    /// Payload bytes written so far.
    pub(super) bytes: u64,
}

impl<'a> ChunkedWriter<'a> {
    /// Writes the head of a `200` with `content_type`; the connection closes after the body.
    pub(super) fn start(stream: &'a TcpStream, content_type: &str) -> io::Result<Self> {
        let head = format!(
            "{}Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\nCache-Control: no-store\r\n\r\n",
            status_line(200)
        );
        (&*stream).write_all(head.as_bytes())?;
        Ok(ChunkedWriter { stream, bytes: 0 })
    }

    /// One chunk; an empty `data` writes nothing (an empty chunk would end the body).
    pub(super) fn chunk(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let mut out = format!("{:x}\r\n", data.len()).into_bytes();
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
        (&*self.stream).write_all(&out)?;
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// The last chunk: the body is complete.
    pub(super) fn finish(self) -> io::Result<()> {
        (&*self.stream).write_all(b"0\r\n\r\n")
    }
}

/// A whole answer with a JSON body `{"error": message}`, for refusals and injected failures.
pub(super) fn write_error(mut stream: &TcpStream, status: u16, message: &str) -> io::Result<()> {
    let body = serde_json::json!({ "error": message }).to_string();
    let out = format!(
        "{}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        status_line(status),
        body.len()
    );
    stream.write_all(out.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` to a decoder `step` bytes at a time; the payload, whether it ended, and
    /// what was left over.
    fn decode_in_steps(framing: Framing, wire: &[u8], step: usize) -> (Vec<u8>, bool, Vec<u8>) {
        let mut decoder = BodyDecoder::new(framing);
        let (mut buf, mut out, mut done) = (Vec::new(), Vec::new(), false);
        for piece in wire.chunks(step) {
            buf.extend_from_slice(piece);
            done = decoder.decode(&mut buf, &mut out, 1024).unwrap();
            if done {
                break;
            }
        }
        (out, done, buf)
    }

    #[test]
    fn chunked_bodies_decode_at_any_split_and_keep_what_follows() {
        let wire = b"3\r\nabc\r\n0a;ext=1\r\n0123456789\r\n1\r\nZ\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in 1..wire.len() {
            let (out, done, rest) = decode_in_steps(Framing::Chunked, wire, step);
            assert_eq!(out, b"abc0123456789Z", "step {step}");
            assert!(done, "step {step}");
            assert!(b"NEXT".starts_with(&rest), "step {step}: {rest:?}");
        }
    }

    #[test]
    fn payload_is_given_before_its_chunk_is_complete() {
        let mut decoder = BodyDecoder::new(Framing::Chunked);
        let (mut buf, mut out) = (b"a\r\n01234".to_vec(), Vec::new());
        assert_eq!(decoder.decode(&mut buf, &mut out, 1024), Ok(false));
        assert_eq!(out, b"01234");
        assert!(buf.is_empty());
        assert_eq!(decoder, BodyDecoder::ChunkData(5));
    }

    #[test]
    fn length_bodies_and_no_body() {
        let (out, done, rest) = decode_in_steps(Framing::Length(4), b"abcdEF", 3);
        assert_eq!(
            (out.as_slice(), done, rest.as_slice()),
            (&b"abcd"[..], true, &b"EF"[..])
        );
        let mut none = BodyDecoder::new(Framing::None);
        assert_eq!(
            none.decode(&mut b"x".to_vec(), &mut Vec::new(), 9),
            Ok(true)
        );
    }

    #[test]
    fn bad_framing_is_an_error() {
        let bad = |wire: &[u8]| {
            let mut decoder = BodyDecoder::new(Framing::Chunked);
            decoder.decode(&mut wire.to_vec(), &mut Vec::new(), 16)
        };
        assert_eq!(bad(b"zz\r\n"), Err(Malformed::InvalidChunkSize.into()));
        assert_eq!(bad(b"1\r\nab\n"), Err(Malformed::ChunkDataTooLong.into()));
        // As the service's parser: data running on past its line end's two bytes.
        assert_eq!(
            bad(b"1\r\nabc\r\n"),
            Err(Malformed::ChunkLineTooLong.into())
        );
        assert_eq!(
            bad(&[b'1'; MAX_CHUNK_LINE]),
            Err(Malformed::ChunkLineTooLong.into())
        );
        assert_eq!(
            bad(b"0\r\nA: 123456\r\nB: 123456\r\n"),
            Err(ParseError::HeadTooLarge { limit: 16 })
        );
    }
}
