//! HTTP/1.1 chunked transfer coding, both ways, with no sockets.
//!
//! The speech-to-text service answers each final transcript as one chunk of a response that
//! lasts the whole call, so the decoder reports where each chunk ends, not only its bytes.
//! Chunk-size lines are parsed by `httparse` (extensions included); the rest is a small state
//! machine that takes input cut anywhere.

/// Longest chunk-size line (with extensions) or trailer line accepted: a peer that sends
/// more is not speaking HTTP.
const MAX_LINE: usize = 1024;

/// What a piece of chunked body held, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// Bytes of the current chunk.
    Data(&'a [u8]),
    /// The current chunk is complete.
    ChunkEnd,
    /// The last chunk and the trailer arrived: the body is complete.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line.
    Size,
    /// `n` bytes of chunk data to come.
    Data(u64),
    /// The CRLF after chunk data; `true` once the CR was seen.
    DataEnd(bool),
    /// Trailer lines after the last chunk, until an empty one.
    Trailer,
    Done,
}

/// A chunked body being decoded.
#[derive(Debug)]
pub struct Chunked {
    state: State,
    /// A size or trailer line read so far.
    line: Vec<u8>,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: State::Size,
            line: Vec::new(),
        }
    }
}

impl Chunked {
    /// Decodes `input`, handing what it holds to `on` in order, up to and including the
    /// end of a chunk or of the body; returns how many bytes it used (the rest is the next
    /// call's). The error says what was not HTTP.
    pub fn feed<'a>(
        &mut self,
        input: &'a [u8],
        mut on: impl FnMut(Decoded<'a>),
    ) -> Result<usize, String> {
        let total = input.len();
        let mut input = input;
        while !input.is_empty() {
            match self.state {
                State::Done => return Ok(total),
                State::Size | State::Trailer => {
                    let Some(nl) = input.iter().position(|&b| b == b'\n') else {
                        self.take_line(input)?;
                        return Ok(total);
                    };
                    self.take_line(&input[..=nl])?;
                    input = &input[nl + 1..];
                    let line = std::mem::take(&mut self.line);
                    if self.state == State::Trailer {
                        if line == b"\r\n" || line == b"\n" {
                            self.state = State::Done;
                            on(Decoded::Done);
                            return Ok(total - input.len());
                        }
                        continue;
                    }
                    let size = match httparse::parse_chunk_size(&line) {
                        Ok(httparse::Status::Complete((_, size))) => size,
                        _ => {
                            return Err(format!(
                                "bad chunk-size line {:?}",
                                String::from_utf8_lossy(&line[..line.len().min(40)])
                            ))
                        }
                    };
                    self.state = if size == 0 {
                        State::Trailer
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    let n = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    on(Decoded::Data(&input[..n]));
                    input = &input[n..];
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataEnd(false)
                    } else {
                        State::Data(left)
                    };
                }
                State::DataEnd(cr) => {
                    match (cr, input[0]) {
                        (false, b'\r') => self.state = State::DataEnd(true),
                        (_, b'\n') => {
                            self.state = State::Size;
                            on(Decoded::ChunkEnd);
                            return Ok(total - input.len() + 1);
                        }
                        _ => return Err("chunk data not followed by CRLF".into()),
                    }
                    input = &input[1..];
                }
            }
        }
        Ok(total)
    }

    fn take_line(&mut self, part: &[u8]) -> Result<(), String> {
        if self.line.len() + part.len() > MAX_LINE {
            return Err(format!(
                "a chunk-size or trailer line over {MAX_LINE} bytes"
            ));
        }
        self.line.extend_from_slice(part);
        Ok(())
    }
}

/// Appends `data` as one chunk to `out` (nothing for empty data: that would end the body).
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk, with no trailer: the end of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `body` fed in pieces of `step` bytes; chunk ends as `|`, the end as `$`.
    fn decode(body: &[u8], step: usize) -> Result<String, String> {
        let mut d = Chunked::default();
        let mut out = String::new();
        for mut piece in body.chunks(step) {
            while !piece.is_empty() {
                let used = d.feed(piece, |e| match e {
                    Decoded::Data(b) => out.push_str(std::str::from_utf8(b).unwrap()),
                    Decoded::ChunkEnd => out.push('|'),
                    Decoded::Done => out.push('$'),
                })?;
                assert!(used > 0);
                piece = &piece[used..];
            }
        }
        Ok(out)
    }

    #[test]
    fn chunks_and_their_ends_survive_any_cut() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n world\n\r\n0\r\nX-T: 1\r\n\r\nafter";
        for step in 1..body.len() {
            assert_eq!(
                decode(body, step).unwrap(),
                "hello| world\n|$",
                "step {step}"
            );
        }
    }

    #[test]
    fn what_we_encode_decodes() {
        let mut body = Vec::new();
        encode_chunk(b"abc", &mut body);
        encode_chunk(b"", &mut body);
        encode_chunk(&[b'x'; 300], &mut body);
        body.extend_from_slice(LAST_CHUNK);
        assert_eq!(
            decode(&body, 7).unwrap(),
            format!("abc|{}|$", "x".repeat(300))
        );
    }

    #[test]
    fn what_is_not_chunked_is_an_error() {
        assert!(decode(b"zz\r\nhello\r\n", 3)
            .unwrap_err()
            .contains("chunk-size"));
        assert!(decode(b"2\r\nhelo\r\n", 3).unwrap_err().contains("CRLF"));
        let long = vec![b'1'; 2000];
        assert!(decode(&long, 100).unwrap_err().contains("over 1024"));
    }
}
