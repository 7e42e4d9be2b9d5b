//! The STS messages: what avr-core sends a speech-to-speech agent and what the agent sends
//! back (docs/sts.md). Pure text and bytes, no sockets: the bridge and the echo agent both
//! speak through these definitions, each side building what it sends and parsing what the
//! other sends:
//!
//! | direction | built by | parsed by |
//! | --- | --- | --- |
//! | avr-core → agent | [`init_message`], [`audio_message`], [`dtmf_message`] | [`parse_to_agent`] → [`ToAgentMessage`] |
//! | agent → avr-core | [`audio_message`], [`transcript_message`] | [`parse_text`], [`parse_binary`] → [`FromAgent`] |

use std::borrow::Cow;

use base64::Engine as _;
use bytes::BytesMut;
use serde::Deserialize;
use serde_json::Value;

/// `{"type":"init","uuid":…}`, with the `/call` metadata as `payload` when there is any.
pub fn init_message(uuid: &str, metadata: Option<&Value>) -> String {
    let mut msg = serde_json::json!({"type": "init", "uuid": uuid});
    if let Some(meta) = metadata {
        msg["payload"] = meta.clone();
    }
    msg.to_string()
}

/// What an audio message holds around its base64.
const AUDIO_HEAD: &str = r#"{"type":"audio","audio":""#;
const AUDIO_TAIL: &str = r#""}"#;

/// Base64 bytes of `len` bytes, padded.
fn base64_len(len: usize) -> usize {
    len.div_ceil(3) * 4
}

/// `{"type":"audio","audio":"<base64>"}`, built without an intermediate JSON tree: this runs
/// for every caller frame of every call.
pub fn audio_message(pcm: &[u8]) -> String {
    let engine = &base64::engine::general_purpose::STANDARD;
    let mut out =
        String::with_capacity(AUDIO_HEAD.len() + base64_len(pcm.len()) + AUDIO_TAIL.len());
    out.push_str(AUDIO_HEAD);
    engine.encode_string(pcm, &mut out);
    out.push_str(AUDIO_TAIL);
    out
}

/// [`audio_message`] appended to `out`: the call's thread writes every caller frame's message
/// into one buffer it keeps, and hands the bytes to tungstenite as they are (`BytesMut`
/// splits off the message and takes its room back once it is sent), so the message costs no
/// allocation in steady state.
pub fn write_audio_message(pcm: &[u8], out: &mut BytesMut) {
    let engine = &base64::engine::general_purpose::STANDARD;
    let b64 = base64_len(pcm.len());
    out.reserve(AUDIO_HEAD.len() + b64 + AUDIO_TAIL.len());
    out.extend_from_slice(AUDIO_HEAD.as_bytes());
    let at = out.len();
    out.resize(at + b64, 0);
    // The room is exactly the encoded length, so this cannot fail; were it to, the message
    // would still be well-formed JSON (with less audio).
    let written = engine.encode_slice(pcm, &mut out[at..]).unwrap_or(0);
    out.truncate(at + written);
    out.extend_from_slice(AUDIO_TAIL.as_bytes());
}

/// `{"type":"dtmf_digit","digit":"5"}`.
pub fn dtmf_message(digit: char) -> String {
    serde_json::json!({"type": "dtmf_digit", "digit": digit.to_string()}).to_string()
}

/// A message from the agent, mapped to what the call does with it.
#[derive(Debug, PartialEq)]
pub enum FromAgent {
    /// 8 kHz s16le audio to play, of any length: agents that re-chunk their stream by
    /// bytes may cut a sample in two, and its second byte comes first in the next message
    /// (playout keeps one continuous byte stream, so nothing is dropped).
    Audio(Vec<u8>),
    Interruption,
    Transcript {
        role: String,
        text: String,
    },
    /// The agent reported an error; the call goes on.
    AgentError(String),
    /// A well-formed message of a type avr-core does not know.
    Unknown(String),
    /// Not a usable message (bad JSON, no type, bad base64, …).
    Invalid(String),
}

/// A string field read in place from the message when it has no JSON escape (a copy when
/// it has one: `\/` in base64, say). serde borrows a `Cow<str>` only when it is the field's
/// own type, not inside an `Option`, hence this wrapper.
#[derive(Deserialize)]
struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);

impl Borrowed<'_> {
    fn as_str(&self) -> &str {
        &self.0
    }
}

/// The fields of a message from the agent. Borrowed: audio arrives many times a second per
/// call, and its base64 need not be copied before it is decoded.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Borrowed<'a>>,
    #[serde(borrow)]
    audio: Option<Borrowed<'a>>,
    role: Option<String>,
    text: Option<String>,
    message: Option<Value>,
    error: Option<Value>,
}

/// Maps one text frame from the agent.
pub fn parse_text(text: &str) -> FromAgent {
    parse_text_into(text, &mut Vec::new())
}

/// [`parse_text`], decoding audio into `pcm`'s room (the buffer is moved into
/// [`FromAgent::Audio`], leaving `pcm` empty): the call's thread gives the buffer back
/// once it is played, so the agent's audio costs no allocation per message.
pub fn parse_text_into(text: &str, pcm: &mut Vec<u8>) -> FromAgent {
    let msg: Incoming = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => return FromAgent::Invalid(format!("not a JSON message ({e})")),
    };
    let Some(kind) = msg.kind else {
        return FromAgent::Invalid("message without a \"type\"".into());
    };
    match kind.as_str() {
        "audio" => {
            let Some(b64) = msg.audio else {
                return FromAgent::Invalid("audio message without an \"audio\" field".into());
            };
            pcm.clear();
            let b64 = b64.as_str().as_bytes();
            match base64::engine::general_purpose::STANDARD.decode_vec(b64, pcm) {
                Ok(()) => FromAgent::Audio(std::mem::take(pcm)),
                Err(e) => FromAgent::Invalid(format!("audio is not valid base64 ({e})")),
            }
        }
        "interruption" => FromAgent::Interruption,
        "transcript" => FromAgent::Transcript {
            role: msg.role.unwrap_or_else(|| "unknown".into()),
            text: msg.text.unwrap_or_default(),
        },
        "error" => {
            let detail = msg.message.or(msg.error).unwrap_or(Value::Null);
            FromAgent::AgentError(match detail {
                Value::String(s) => s,
                Value::Null => "(no message)".into(),
                other => other.to_string(),
            })
        }
        _ => FromAgent::Unknown(kind.0.into_owned()),
    }
}

/// Binary frames carry raw 8 kHz s16le audio.
pub fn parse_binary(bytes: Vec<u8>) -> FromAgent {
    FromAgent::Audio(bytes)
}

/// Something the call sends to the agent.
#[derive(Debug, PartialEq)]
pub enum ToAgent {
    /// 8 kHz s16le caller audio.
    Audio(Vec<u8>),
    Dtmf(char),
}

/// `{"type":"transcript","role":…,"text":…}`: what an agent sends about the conversation.
pub fn transcript_message(role: &str, text: &str) -> String {
    serde_json::json!({"type": "transcript", "role": role, "text": text}).to_string()
}

/// A text message from avr-core as the agent reads it: the other end of [`init_message`],
/// [`audio_message`] and [`dtmf_message`]. Unlike [`ToAgent`] (what a call queues), it has
/// `init` and what can be wrong with a message, since an agent must survive any text.
#[derive(Debug, PartialEq)]
pub enum ToAgentMessage {
    Init {
        uuid: String,
        /// The `/call` metadata, when there was any.
        payload: Option<Value>,
    },
    /// 8 kHz s16le caller audio (whole samples).
    Audio(Vec<u8>),
    Dtmf(char),
    /// A well-formed message of a type the agent side does not know.
    Unknown(String),
    /// Not a usable message; `kind` is its `type` when it had one, `reason` says what is wrong.
    Invalid {
        kind: Option<String>,
        reason: String,
    },
}

/// The fields of a message to the agent. Borrowed: caller audio arrives 50 times a second
/// per call, and its base64 need not be copied before it is decoded.
#[derive(Deserialize)]
struct ToAgentFields<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Borrowed<'a>>,
    #[serde(borrow)]
    audio: Option<Borrowed<'a>>,
    #[serde(borrow)]
    uuid: Option<Borrowed<'a>>,
    #[serde(borrow)]
    digit: Option<Borrowed<'a>>,
    payload: Option<Value>,
}

/// Maps one text frame from avr-core, on the agent's side.
pub fn parse_to_agent(text: &str) -> ToAgentMessage {
    let invalid = |kind: Option<&str>, reason: String| ToAgentMessage::Invalid {
        kind: kind.map(str::to_owned),
        reason,
    };
    let msg: ToAgentFields = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => return invalid(None, format!("not a JSON message ({e})")),
    };
    let Some(Borrowed(kind)) = msg.kind else {
        return invalid(None, "message without a \"type\"".into());
    };
    match kind.as_ref() {
        "init" => match msg.uuid {
            Some(Borrowed(uuid)) => ToAgentMessage::Init {
                uuid: uuid.into_owned(),
                payload: msg.payload,
            },
            None => invalid(Some(&kind), "init without a \"uuid\"".into()),
        },
        "audio" => {
            let Some(Borrowed(b64)) = msg.audio else {
                return invalid(
                    Some(&kind),
                    "audio message without an \"audio\" field".into(),
                );
            };
            match base64::engine::general_purpose::STANDARD.decode(b64.as_bytes()) {
                Ok(pcm) if pcm.len() % 2 == 1 => invalid(
                    Some(&kind),
                    format!(
                        "{} bytes of audio: an odd length is not 16-bit samples",
                        pcm.len()
                    ),
                ),
                Ok(pcm) => ToAgentMessage::Audio(pcm),
                Err(e) => invalid(Some(&kind), format!("audio is not valid base64 ({e})")),
            }
        }
        "dtmf_digit" => {
            let digit = msg.digit.as_ref().map_or("", Borrowed::as_str);
            let mut chars = digit.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => ToAgentMessage::Dtmf(c),
                _ => invalid(
                    Some(&kind),
                    format!("dtmf_digit without one digit (got {digit:?})"),
                ),
            }
        }
        _ => ToAgentMessage::Unknown(kind.into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_exact() {
        assert_eq!(
            init_message("550e8400-e29b-41d4-a716-446655440000", None),
            r#"{"type":"init","uuid":"550e8400-e29b-41d4-a716-446655440000"}"#
        );
        let meta = serde_json::json!({"from": "2000"});
        assert_eq!(
            init_message("u", Some(&meta)),
            r#"{"type":"init","uuid":"u","payload":{"from":"2000"}}"#
        );
    }

    #[test]
    fn audio_message_round_trips() {
        let pcm: Vec<u8> = (0..=255u8).collect();
        let text = audio_message(&pcm);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "audio");
        assert_eq!(parse_text(&text), FromAgent::Audio(pcm));
    }

    #[test]
    fn the_reused_buffer_holds_the_same_message() {
        let mut out = BytesMut::new();
        for len in [0, 1, 2, 3, 320, 641] {
            let pcm: Vec<u8> = (0..len).map(|i| i as u8).collect();
            out.clear();
            write_audio_message(&pcm, &mut out);
            assert_eq!(&out[..], audio_message(&pcm).as_bytes(), "{len} bytes");
        }
    }

    /// The agent's audio is read in place and decoded into the buffer given: no allocation
    /// (serde copies an `Option<Cow<str>>` unless it is wrapped, as `Borrowed` is).
    #[test]
    fn agent_audio_is_parsed_without_allocating() {
        let pcm: Vec<u8> = (0..=255u8).collect();
        let text = audio_message(&pcm);
        let mut buf = Vec::with_capacity(1024);
        let before = crate::alloc_count::on_this_thread();
        let msg = parse_text_into(&text, &mut buf);
        let allocations = crate::alloc_count::on_this_thread() - before;
        assert_eq!(msg, FromAgent::Audio(pcm.clone()));
        assert_eq!(allocations, 0);
        // The agent side too (the same message): only the decoded audio is allocated.
        let before = crate::alloc_count::on_this_thread();
        let msg = parse_to_agent(&text);
        let allocations = crate::alloc_count::on_this_thread() - before;
        assert_eq!(msg, ToAgentMessage::Audio(pcm));
        assert_eq!(allocations, 1);
    }

    #[test]
    fn dtmf_message_is_exact() {
        assert_eq!(dtmf_message('#'), r##"{"type":"dtmf_digit","digit":"#"}"##);
    }

    #[test]
    fn agent_messages_map() {
        assert_eq!(
            parse_text(r#"{"type":"interruption"}"#),
            FromAgent::Interruption
        );
        assert_eq!(
            parse_text(r#"{"type":"transcript","role":"agent","text":"hi"}"#),
            FromAgent::Transcript {
                role: "agent".into(),
                text: "hi".into()
            }
        );
        assert_eq!(
            parse_text(r#"{"type":"error","message":"quota"}"#),
            FromAgent::AgentError("quota".into())
        );
        assert_eq!(
            parse_text(r#"{"type":"error","error":{"code":5}}"#),
            FromAgent::AgentError(r#"{"code":5}"#.into())
        );
        assert_eq!(
            parse_text(r#"{"type":"mark","name":"x"}"#),
            FromAgent::Unknown("mark".into())
        );
        assert!(matches!(parse_text("not json"), FromAgent::Invalid(_)));
        assert!(matches!(
            parse_text(r#"{"audio":"AAA="}"#),
            FromAgent::Invalid(_)
        ));
        assert!(matches!(
            parse_text(r#"{"type":"audio","audio":"@@@"}"#),
            FromAgent::Invalid(_)
        ));
        // An odd length is kept whole: its last byte begins a sample the next message ends.
        assert_eq!(
            parse_text(r#"{"type":"audio","audio":"AAAA"}"#),
            FromAgent::Audio(vec![0, 0, 0])
        );
        assert_eq!(
            parse_binary(vec![1, 2, 3, 4]),
            FromAgent::Audio(vec![1, 2, 3, 4])
        );
        assert_eq!(parse_binary(vec![1, 2, 3]), FromAgent::Audio(vec![1, 2, 3]));
    }

    /// What the bridge builds, the agent side parses back to the same values.
    #[test]
    fn messages_to_the_agent_round_trip() {
        let uuid = "550e8400-e29b-41d4-a716-446655440000";
        assert_eq!(
            parse_to_agent(&init_message(uuid, None)),
            ToAgentMessage::Init {
                uuid: uuid.into(),
                payload: None
            }
        );
        let meta = serde_json::json!({"from": "2000", "nested": {"a": [1, 2]}});
        assert_eq!(
            parse_to_agent(&init_message(uuid, Some(&meta))),
            ToAgentMessage::Init {
                uuid: uuid.into(),
                payload: Some(meta)
            }
        );
        let pcm: Vec<u8> = (0..=255u8).collect();
        assert_eq!(
            parse_to_agent(&audio_message(&pcm)),
            ToAgentMessage::Audio(pcm)
        );
        assert_eq!(
            parse_to_agent(&audio_message(&[])),
            ToAgentMessage::Audio(vec![])
        );
        for digit in ['0', '9', '*', '#', 'A', 'D'] {
            assert_eq!(
                parse_to_agent(&dtmf_message(digit)),
                ToAgentMessage::Dtmf(digit)
            );
        }
    }

    /// What the agent side builds, the bridge parses back to the same values.
    #[test]
    fn messages_from_the_agent_round_trip() {
        let pcm: Vec<u8> = (0..100u8).collect();
        assert_eq!(parse_text(&audio_message(&pcm)), FromAgent::Audio(pcm));
        for (role, text) in [("agent", "You pressed 5"), ("user", "quote \" and ünïcode")] {
            assert_eq!(
                parse_text(&transcript_message(role, text)),
                FromAgent::Transcript {
                    role: role.into(),
                    text: text.into()
                }
            );
        }
        assert_eq!(
            transcript_message("agent", "hi"),
            r#"{"type":"transcript","role":"agent","text":"hi"}"#
        );
    }

    #[test]
    fn bad_messages_to_the_agent_say_what_is_wrong() {
        let invalid = |text: &str| match parse_to_agent(text) {
            ToAgentMessage::Invalid { kind, reason } => (kind, reason),
            other => panic!("{text}: {other:?}"),
        };
        let (kind, reason) = invalid("not json{");
        assert!(
            kind.is_none() && reason.contains("not a JSON message"),
            "{reason}"
        );
        let (kind, reason) = invalid(r#"{"no_type":1}"#);
        assert!(
            kind.is_none() && reason.contains("without a \"type\""),
            "{reason}"
        );
        for (text, needle) in [
            (r#"{"type":"audio","audio":"!!!"}"#, "not valid base64"),
            (r#"{"type":"audio","audio":"AA=="}"#, "odd length"),
            (r#"{"type":"audio"}"#, "without an \"audio\""),
        ] {
            let (kind, reason) = invalid(text);
            assert_eq!(kind.as_deref(), Some("audio"));
            assert!(reason.contains(needle), "{text}: {reason}");
        }
        let (kind, reason) = invalid(r#"{"type":"init"}"#);
        assert_eq!(kind.as_deref(), Some("init"));
        assert!(reason.contains("uuid"), "{reason}");
        for text in [
            r#"{"type":"dtmf_digit"}"#,
            r#"{"type":"dtmf_digit","digit":"12"}"#,
        ] {
            let (kind, reason) = invalid(text);
            assert_eq!(kind.as_deref(), Some("dtmf_digit"));
            assert!(reason.contains("one digit"), "{reason}");
        }
        assert_eq!(
            parse_to_agent(r#"{"type":"bogus"}"#),
            ToAgentMessage::Unknown("bogus".into())
        );
        // A JSON escape in the base64 still decodes (the borrowed field falls back to a copy).
        assert_eq!(
            parse_to_agent(r#"{"type":"audio","audio":"AQ\u0049="}"#),
            ToAgentMessage::Audio(vec![1, 2])
        );
    }
}
