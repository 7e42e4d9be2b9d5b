//! The LLM's streamed answer, and the request that asks for it.
//!
//! The upstream `avr-llm-*` connectors answer with JSON objects written back to back with no
//! delimiter (`{"type":"text","content":"Hel"}{"type":"text","content":"lo."}`), split
//! anywhere across reads; some older ones answer plain text. [`LlmStream`] takes the body's
//! bytes as they arrive and hands out [`LlmPiece`]s as soon as each object is complete.
//!
//! Parsing is serde_json's `StreamDeserializer`, tried only when a read brings a `}` (no
//! object can end without one), so a large object arriving in tiny reads is not re-parsed on
//! every read; the incomplete tail is kept from the deserializer's `byte_offset`.

use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde::Serialize;
use serde_json::{Map, Value};

/// Largest object (or incomplete tail) kept while waiting for its end. 4 MiB is over three
/// minutes of base64 s16le 8 kHz audio (21.3 KB per second) in one object, far beyond what a
/// connector sends at once; a bound keeps a broken or hostile peer from growing a call's
/// memory without limit.
pub const MAX_OBJECT: usize = 4 * 1024 * 1024;

/// Base64 as connectors write it: the standard alphabet, with or without `=` padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One thing the model said.
#[derive(Debug, Clone, PartialEq)]
pub enum LlmPiece {
    /// `{"type":"text","content":"…"}` or a chunk of a plain-text answer (never empty).
    Text(String),
    /// `{"type":"audio","audio":"<base64>"}` (or the base64 under `content`): s16le 8 kHz
    /// mono, passed on as decoded (an odd length is the player's to carry over).
    Audio(Vec<u8>),
    /// `{"type":"error","content"|"message":"…"}`: the connector's own failure, to log.
    Error(String),
    /// Any other type (`status`, `tool`, …): to log, nothing to play.
    Other { kind: String },
}

/// Why the answer cannot be read. The stream is unusable after one: the caller logs it and
/// says nothing more for the turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LlmStreamError {
    /// Not the contract: bad JSON, an object of the wrong shape, bad base64.
    Invalid(String),
    /// An object larger than [`MAX_OBJECT`].
    TooLarge { limit: usize },
}

impl fmt::Display for LlmStreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LlmStreamError::Invalid(why) => write!(
                f,
                "the LLM answer is not the avr-llm streaming format ({why}); check that LLM_URL \
                 points at an avr-llm-* connector's streaming endpoint (e.g. /prompt-stream)"
            ),
            LlmStreamError::TooLarge { limit } => write!(
                f,
                "the LLM answer holds a JSON object larger than {limit} bytes; the connector \
                 should stream its answer (text or audio) in smaller objects"
            ),
        }
    }
}

impl std::error::Error for LlmStreamError {}

/// What the body turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Format {
    /// Only whitespace so far.
    #[default]
    Unknown,
    /// Back-to-back JSON objects (the first non-whitespace byte was `{`).
    Json,
    /// Anything else: the whole body is text.
    Plain,
}

/// The LLM's answer, parsed as its bytes arrive.
#[derive(Debug, Default)]
pub struct LlmStream {
    format: Format,
    /// Bytes not yet turned into pieces: an incomplete object, or an incomplete UTF-8
    /// sequence of plain text, or leading whitespace while the format is unknown.
    tail: Vec<u8>,
    /// The first error, returned again by every later call.
    failed: Option<LlmStreamError>,
    /// Parse attempts, so a test can check that reads without `}` cost no parse.
    #[cfg(test)]
    parses: usize,
}

impl LlmStream {
    pub fn new() -> LlmStream {
        LlmStream::default()
    }

    /// Takes the next bytes of the body; pushes every piece they complete onto `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<LlmPiece>) -> Result<(), LlmStreamError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.push_inner(bytes, out);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
            self.tail = Vec::new();
        }
        result
    }

    /// End of body: an incomplete object is an error; plain text flushes (an incomplete
    /// UTF-8 sequence at the very end becomes U+FFFD).
    pub fn finish(&mut self, out: &mut Vec<LlmPiece>) -> Result<(), LlmStreamError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let tail = std::mem::take(&mut self.tail);
        match self.format {
            Format::Unknown => Ok(()),
            Format::Plain => {
                push_text(String::from_utf8_lossy(&tail).into_owned(), out);
                Ok(())
            }
            Format::Json => {
                let rest = parse_objects(&tail, out)?;
                if tail[rest..].iter().all(u8::is_ascii_whitespace) {
                    Ok(())
                } else {
                    let e = LlmStreamError::Invalid(format!(
                        "the body ended inside an object ({} bytes unfinished)",
                        tail.len() - rest
                    ));
                    self.failed = Some(e.clone());
                    Err(e)
                }
            }
        }
    }

    fn push_inner(&mut self, bytes: &[u8], out: &mut Vec<LlmPiece>) -> Result<(), LlmStreamError> {
        let mut bytes = bytes;
        if self.format == Format::Unknown {
            // Leading whitespace is dropped: nothing to say, and nothing to keep in memory
            // however long a peer sends it.
            let Some(start) = bytes.iter().position(|b| !b.is_ascii_whitespace()) else {
                return Ok(());
            };
            bytes = &bytes[start..];
            self.format = if bytes[0] == b'{' {
                Format::Json
            } else {
                Format::Plain
            };
        }
        self.tail.extend_from_slice(bytes);
        match self.format {
            Format::Plain => {
                self.decode_text(out);
                Ok(())
            }
            _ => {
                // No object can end in a read without a `}`: skip the parse.
                if bytes.contains(&b'}') {
                    #[cfg(test)]
                    {
                        self.parses += 1;
                    }
                    let done = parse_objects(&self.tail, out)?;
                    self.tail.drain(..done);
                }
                if self.tail.len() > MAX_OBJECT {
                    return Err(LlmStreamError::TooLarge { limit: MAX_OBJECT });
                }
                Ok(())
            }
        }
    }

    /// Emits the plain text in `tail`, keeping an incomplete trailing UTF-8 sequence; invalid
    /// bytes become U+FFFD (a legacy connector's text is still worth saying).
    fn decode_text(&mut self, out: &mut Vec<LlmPiece>) {
        let mut text = String::new();
        let mut rest: &[u8] = &self.tail;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    text.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // Checked valid just above.
                    text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                        None => {
                            rest = after; // incomplete: wait for the next read
                            break;
                        }
                    }
                }
            }
        }
        self.tail = rest.to_vec();
        push_text(text, out);
    }
}

/// Parses the complete objects at the start of `bytes` into `out`; returns how many bytes
/// they (and the whitespace between them) took. An incomplete last object is left.
fn parse_objects(bytes: &[u8], out: &mut Vec<LlmPiece>) -> Result<usize, LlmStreamError> {
    let mut objects = serde_json::Deserializer::from_slice(bytes).into_iter::<Value>();
    loop {
        match objects.next() {
            None => break,
            Some(Ok(value)) => out.extend(piece(value)?),
            Some(Err(e)) if e.is_eof() => break,
            Some(Err(e)) => {
                let at = objects.byte_offset();
                let near = String::from_utf8_lossy(&bytes[at..bytes.len().min(at + 40)]);
                return Err(LlmStreamError::Invalid(format!("{e}, near {near:?}")));
            }
        }
    }
    Ok(objects.byte_offset())
}

/// The piece one object stands for (`None`: nothing to say, as an empty text).
fn piece(value: Value) -> Result<Option<LlmPiece>, LlmStreamError> {
    let Value::Object(object) = value else {
        return Err(LlmStreamError::Invalid(format!(
            "a JSON value that is not an object: {}",
            short(&value.to_string())
        )));
    };
    let kind = match object.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        _ => {
            return Err(LlmStreamError::Invalid(format!(
                "an object without a string \"type\": {}",
                short(&Value::Object(object).to_string())
            )))
        }
    };
    match kind {
        "text" => match object.get("content") {
            Some(Value::String(text)) if text.is_empty() => Ok(None),
            Some(Value::String(text)) => Ok(Some(LlmPiece::Text(text.clone()))),
            other => Err(LlmStreamError::Invalid(format!(
                "a text object whose \"content\" is not a string: {}",
                short(&other.map_or("missing".to_string(), Value::to_string))
            ))),
        },
        // Bad audio is refused, not skipped: a connector that sends it is broken, and playing
        // the answer with holes would be worse than the turn's failure being logged.
        "audio" => match object.get("audio").or_else(|| object.get("content")) {
            Some(Value::String(b64)) => BASE64
                .decode(b64.trim())
                .map(|pcm| Some(LlmPiece::Audio(pcm)))
                .map_err(|e| {
                    LlmStreamError::Invalid(format!("an audio object with bad base64 ({e})"))
                }),
            _ => Err(LlmStreamError::Invalid(
                "an audio object without a base64 string under \"audio\" or \"content\""
                    .to_string(),
            )),
        },
        "error" => Ok(Some(LlmPiece::Error(error_text(&object)))),
        other => Ok(Some(LlmPiece::Other {
            kind: other.to_string(),
        })),
    }
}

/// An error object's message: `content` or `message` if a string, else the object itself
/// (an error is worth logging whatever its shape).
fn error_text(object: &Map<String, Value>) -> String {
    ["content", "message"]
        .iter()
        .find_map(|key| object.get(*key).and_then(Value::as_str))
        .map_or_else(
            || short(&Value::Object(object.clone()).to_string()),
            str::to_string,
        )
}

/// `s` cut to a length fit for a log line.
fn short(s: &str) -> String {
    const MAX: usize = 120;
    match s.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

fn push_text(text: String, out: &mut Vec<LlmPiece>) {
    if !text.is_empty() {
        out.push(LlmPiece::Text(text));
    }
}

/// One message of the conversation, as the connectors read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// The request's JSON body.
#[derive(Serialize)]
struct RequestBody<'a> {
    uuid: &'a str,
    message: &'a str,
    messages: &'a [Message],
}

/// `{"uuid", "message": <the last user message>, "messages": [...]}` (the whole history, the
/// last user message included), as the upstream avr-llm-* connectors read it: some read
/// `message`, others `messages`. `message` is `""` when the history has no user message.
pub fn request_body(uuid: &str, history: &[Message]) -> Vec<u8> {
    let message = history
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map_or("", |m| m.content.as_str());
    let body = RequestBody {
        uuid,
        message,
        messages: history,
    };
    // Strings and unit enums always serialize: serde_json fails only on non-string map keys
    // or a failing writer, neither of which exists here.
    serde_json::to_vec(&body).expect("a request body of strings serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(reads: &[&[u8]]) -> Result<Vec<LlmPiece>, LlmStreamError> {
        let mut stream = LlmStream::new();
        let mut out = Vec::new();
        for r in reads {
            stream.push(r, &mut out)?;
        }
        stream.finish(&mut out)?;
        Ok(out)
    }

    const SAMPLE: &str = concat!(
        r#"{"type":"status","content":"thinking"}"#,
        r#"{"type":"text","content":"Héllo, "}"#,
        "\n",
        r#"{"type":"text","content":"wörld 👋 {not a brace} \"q\"."}"#,
        "  \r\n ",
        r#"{"type":"audio","audio":"AAABAP//"}"#,
        r#"{"type":"audio","content":"AQI"}"#,
        r#"{"type":"text","content":""}"#,
        r#"{"type":"error","message":"rate limited"}"#,
        r#"{"type":"tool","name":"hangup","args":{"a":[1,2]}}"#,
        "\n"
    );

    fn sample_pieces() -> Vec<LlmPiece> {
        vec![
            LlmPiece::Other {
                kind: "status".into(),
            },
            LlmPiece::Text("Héllo, ".into()),
            LlmPiece::Text("wörld 👋 {not a brace} \"q\".".into()),
            LlmPiece::Audio(vec![0, 0, 1, 0, 0xff, 0xff]),
            LlmPiece::Audio(vec![1, 2]),
            LlmPiece::Error("rate limited".into()),
            LlmPiece::Other {
                kind: "tool".into(),
            },
        ]
    }

    #[test]
    fn sample_in_one_read() {
        assert_eq!(parse_all(&[SAMPLE.as_bytes()]).unwrap(), sample_pieces());
    }

    #[test]
    fn every_split_gives_the_same_pieces() {
        let bytes = SAMPLE.as_bytes();
        for i in 0..=bytes.len() {
            let got = parse_all(&[&bytes[..i], &bytes[i..]]);
            assert_eq!(
                got.as_ref().ok(),
                Some(&sample_pieces()),
                "split at byte {i}"
            );
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(parse_all(&singles).unwrap(), sample_pieces());
        for size in [2, 3, 5, 7, 13] {
            let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
            assert_eq!(
                parse_all(&chunks).unwrap(),
                sample_pieces(),
                "reads of {size}"
            );
        }
    }

    #[test]
    fn pieces_come_out_as_soon_as_an_object_ends() {
        let mut stream = LlmStream::new();
        let mut out = Vec::new();
        stream
            .push(br#"{"type":"text","content":"a"}{"type":"te"#, &mut out)
            .unwrap();
        assert_eq!(out, [LlmPiece::Text("a".into())]);
        stream.push(br#"xt","content":"b"}"#, &mut out).unwrap();
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn plain_text_answers_are_text_with_utf8_split_across_reads() {
        let body = " \n Bonjour, ça va? 👋".as_bytes();
        for i in 0..=body.len() {
            let got = parse_all(&[&body[..i], &body[i..]]).unwrap();
            let text: String = got
                .iter()
                .map(|p| match p {
                    LlmPiece::Text(t) => t.as_str(),
                    other => panic!("not text: {other:?}"),
                })
                .collect();
            assert_eq!(text, "Bonjour, ça va? 👋", "split at {i}");
            assert!(!text.contains('\u{FFFD}'));
        }
    }

    #[test]
    fn plain_text_keeps_an_incomplete_char_until_it_is_whole() {
        let mut stream = LlmStream::new();
        let mut out = Vec::new();
        stream.push(b"caf\xc3", &mut out).unwrap();
        assert_eq!(out, [LlmPiece::Text("caf".into())]);
        stream.push(b"\xa9!", &mut out).unwrap();
        assert_eq!(out[1], LlmPiece::Text("é!".into()));
        // Invalid bytes and a truncated end become U+FFFD rather than losing the answer.
        assert_eq!(
            parse_all(&[b"a\xffb\xe2\x82"]).unwrap(),
            [
                LlmPiece::Text("a\u{FFFD}b".into()),
                LlmPiece::Text("\u{FFFD}".into())
            ]
        );
    }

    #[test]
    fn empty_and_whitespace_bodies_say_nothing() {
        assert_eq!(parse_all(&[]).unwrap(), []);
        assert_eq!(parse_all(&[b" \n", b"\t"]).unwrap(), []);
    }

    #[test]
    fn audio_base64_is_decoded_and_bad_base64_is_invalid() {
        let pcm: Vec<u8> = (0..=255).collect();
        let obj = format!(r#"{{"type":"audio","audio":"{}"}}"#, BASE64.encode(&pcm));
        assert_eq!(
            parse_all(&[obj.as_bytes()]).unwrap(),
            [LlmPiece::Audio(pcm)]
        );
        let err = parse_all(&[br#"{"type":"audio","audio":"!!!"}"#]).unwrap_err();
        assert!(
            matches!(&err, LlmStreamError::Invalid(w) if w.contains("base64")),
            "{err}"
        );
        let err = parse_all(&[br#"{"type":"audio","audio":5}"#]).unwrap_err();
        assert!(
            matches!(&err, LlmStreamError::Invalid(w) if w.contains("audio")),
            "{err}"
        );
    }

    #[test]
    fn wrong_shapes_are_invalid() {
        for body in [
            &br#"{"type":"text","content":5}"#[..],
            br#"{"type":"text"}"#,
            br#"{"content":"no type"}"#,
            br#"{"type":"text","content":"a"}[1]"#,
        ] {
            let err = parse_all(&[body]).unwrap_err();
            assert!(matches!(err, LlmStreamError::Invalid(_)), "{body:?}: {err}");
        }
    }

    #[test]
    fn error_objects_carry_their_message() {
        let got = parse_all(&[br#"{"type":"error","content":"bad key"}{"type":"error","code":7}"#])
            .unwrap();
        assert_eq!(
            got,
            [
                LlmPiece::Error("bad key".into()),
                LlmPiece::Error(r#"{"type":"error","code":7}"#.into())
            ]
        );
    }

    #[test]
    fn garbage_between_objects_is_invalid_and_stays_so() {
        let mut stream = LlmStream::new();
        let mut out = Vec::new();
        let err = stream
            .push(
                br#"{"type":"text","content":"a"}oops{"type":"text","content":"b"}"#,
                &mut out,
            )
            .unwrap_err();
        assert!(
            matches!(&err, LlmStreamError::Invalid(w) if w.contains("oops")),
            "{err}"
        );
        assert_eq!(out, [LlmPiece::Text("a".into())]);
        assert_eq!(stream.push(b"{}", &mut out), Err(err.clone()));
        assert_eq!(stream.finish(&mut out), Err(err));
    }

    #[test]
    fn an_unfinished_object_at_the_end_is_invalid() {
        let err = parse_all(&[br#"{"type":"text","content":"a"}{"type":"te"#]).unwrap_err();
        assert!(
            matches!(&err, LlmStreamError::Invalid(w) if w.contains("ended")),
            "{err}"
        );
    }

    #[test]
    fn an_object_larger_than_the_limit_is_refused() {
        let mut stream = LlmStream::new();
        let mut out = Vec::new();
        stream
            .push(br#"{"type":"audio","audio":""#, &mut out)
            .unwrap();
        let chunk = vec![b'A'; 64 * 1024];
        let mut result = Ok(());
        let mut sent = 0;
        while result.is_ok() && sent <= MAX_OBJECT + chunk.len() {
            result = stream.push(&chunk, &mut out);
            sent += chunk.len();
        }
        assert_eq!(result, Err(LlmStreamError::TooLarge { limit: MAX_OBJECT }));
        assert!(sent > MAX_OBJECT - chunk.len() && sent <= MAX_OBJECT + chunk.len());
        assert!(stream.tail.is_empty(), "the buffer is freed");
        assert!(out.is_empty());
    }

    #[test]
    fn a_large_object_in_small_reads_is_parsed_once() {
        // 1 MB of audio in 1-byte reads: no `}` until the end, so one parse, not a million.
        let pcm = vec![7u8; 750_000];
        let obj = format!(r#"{{"type":"audio","audio":"{}"}}"#, BASE64.encode(&pcm));
        let mut stream = LlmStream::new();
        let mut out = Vec::new();
        for byte in obj.as_bytes().chunks(1) {
            stream.push(byte, &mut out).unwrap();
        }
        stream.finish(&mut out).unwrap();
        assert_eq!(out, [LlmPiece::Audio(pcm)]);
        assert_eq!(stream.parses, 1);
    }

    #[test]
    fn errors_name_the_fix() {
        let invalid = LlmStreamError::Invalid("x".into()).to_string();
        assert!(invalid.contains("LLM_URL"), "{invalid}");
        let large = LlmStreamError::TooLarge { limit: 10 }.to_string();
        assert!(large.contains("10 bytes"), "{large}");
    }

    #[test]
    fn request_body_has_uuid_last_user_message_and_history() {
        let history = vec![
            Message {
                role: Role::System,
                content: "Be brief.".into(),
            },
            Message {
                role: Role::Assistant,
                content: "Hi!".into(),
            },
            Message {
                role: Role::User,
                content: "What time is it?".into(),
            },
        ];
        let body: Value = serde_json::from_slice(&request_body("u-1", &history)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "uuid": "u-1",
                "message": "What time is it?",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "assistant", "content": "Hi!"},
                    {"role": "user", "content": "What time is it?"},
                ],
            })
        );
        let empty: Value = serde_json::from_slice(&request_body("u-2", &[])).unwrap();
        assert_eq!(empty["message"], "");
        assert_eq!(empty["messages"], serde_json::json!([]));
    }
}
