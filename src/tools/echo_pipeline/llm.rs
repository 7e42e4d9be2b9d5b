//! The fake LLM: a JSON request with the caller's message and the history, answered with a
//! scripted text streamed as `{"type":"text","content":…}` objects written back to back with
//! no delimiter, the byte stream cut into writes of sizes that never line up with the
//! objects ([`WRITE_SIZES`]): a client must parse it as a stream, not per read.

use std::thread;

use serde_json::Value;

use super::wire::ChunkedWriter;
use super::{inject, outcome, Conn, PipelineEvent, RequestError, Shared, DEFAULT_ANSWER};
use crate::http::parse::RequestHead;
use crate::sys::Printable;

/// Characters per text object, cycled: 2 to 9, as token-sized pieces are.
pub(super) const PIECE_CHARS: [usize; 8] = [2, 5, 9, 3, 7, 4, 8, 6];

/// Bytes per write, cycled: odd, prime and unlike any object's length, so writes split
/// objects (and sometimes UTF-8 sequences) anywhere.
pub(super) const WRITE_SIZES: [usize; 7] = [7, 13, 5, 31, 11, 3, 17];

/// The answer to `message`: `template` (or [`DEFAULT_ANSWER`]) with `{message}` replaced.
pub(super) fn answer_text(template: Option<&str>, message: &str) -> String {
    template
        .unwrap_or(DEFAULT_ANSWER)
        .replace("{message}", message)
}

/// The caller's message of a request: `message`, else the last user entry of `messages`
/// (some clients send only the history), else empty.
pub(super) fn message_of(body: &Value) -> &str {
    if let Some(message) = body.get("message").and_then(Value::as_str) {
        return message;
    }
    body.get("messages")
        .and_then(Value::as_array)
        .and_then(|history| {
            history
                .iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        })
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// `text` as text objects of [`PIECE_CHARS`] characters, back to back.
pub(super) fn json_stream(text: &str) -> Vec<u8> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut at = 0;
    for &size in PIECE_CHARS.iter().cycle() {
        if at >= chars.len() {
            break;
        }
        let end = (at + size).min(chars.len());
        let content: String = chars[at..end].iter().collect();
        let object = serde_json::json!({ "type": "text", "content": content });
        out.extend_from_slice(object.to_string().as_bytes());
        at = end;
    }
    out
}

/// `bytes` cut into writes of [`WRITE_SIZES`].
pub(super) fn writes(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    for &size in WRITE_SIZES.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (write, tail) = rest.split_at(size.min(rest.len()));
        out.push(write);
        rest = tail;
    }
    out
}

pub(super) fn serve(
    conn: &mut Conn,
    head: &RequestHead,
    uuid: &str,
    shared: &Shared,
) -> Result<(), RequestError> {
    let opts = &shared.opts;
    let body = conn.json_body(head)?;
    if !body.is_object() {
        return Err(RequestError::Json("expected an object".into()));
    }
    let text = answer_text(opts.answer.as_deref(), message_of(&body));
    log::info!(
        "[{}] Echo pipeline: LLM request, message {}",
        Printable(uuid),
        Printable(message_of(&body))
    );
    shared.events.emit(|| PipelineEvent::LlmRequest {
        uuid: uuid.to_owned(),
        body,
    });
    if let Some(status) = opts.llm_status {
        return inject(conn, uuid, status, "llm_status");
    }
    let (stream, content_type) = if opts.llm_plain {
        (text.into_bytes(), "text/plain; charset=utf-8")
    } else {
        (json_stream(&text), "application/json")
    };
    // Playing a slow model, not waiting for anything.
    thread::sleep(opts.llm_first_byte);
    let sent = ChunkedWriter::start(&conn.stream, content_type).and_then(|mut out| {
        for (i, write) in writes(&stream).into_iter().enumerate() {
            if i > 0 {
                thread::sleep(opts.llm_gap);
            }
            out.chunk(write)?;
        }
        out.finish()
    });
    let cancelled = sent.is_err();
    log::info!(
        "[{}] Echo pipeline: LLM answer {}",
        Printable(uuid),
        outcome(cancelled)
    );
    shared.events.emit(|| PipelineEvent::LlmDone {
        uuid: uuid.to_owned(),
        cancelled,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{PipelineOptions, LLM_PATH};
    use super::*;
    use crossbeam_channel::Receiver;
    use std::time::{Duration, Instant};

    /// The text of a stream of back-to-back text objects, parsed as a client must: as one
    /// stream, whatever the reads.
    fn contents(stream: &[u8]) -> String {
        serde_json::Deserializer::from_slice(stream)
            .into_iter::<Value>()
            .map(|object| {
                let object = object.expect("well-formed objects");
                assert_eq!(object["type"], "text");
                let content = object["content"].as_str().unwrap().to_owned();
                assert!((1..=9).contains(&content.chars().count()), "{content:?}");
                content
            })
            .collect()
    }

    #[test]
    fn the_answer_is_cut_into_small_objects_and_odd_writes() {
        let text = answer_text(None, "héllo wörld");
        assert_eq!(
            text,
            "You said: héllo wörld. This is the echo pipeline speaking. Goodbye for now!"
        );
        let stream = json_stream(&text);
        assert_eq!(contents(&stream), text);
        let cut = writes(&stream);
        assert_eq!(cut.concat(), stream);
        assert_eq!(
            cut.iter().take(4).map(|w| w.len()).collect::<Vec<_>>(),
            [7, 13, 5, 31]
        );
        assert_eq!(answer_text(Some("A {message} B {message}"), "x"), "A x B x");
    }

    #[test]
    fn the_message_is_taken_from_message_or_else_the_last_user_entry() {
        let body = serde_json::json!({"message": "m", "messages": []});
        assert_eq!(message_of(&body), "m");
        let body = serde_json::json!({"messages": [
            {"role": "user", "content": "first"},
            {"role": "user", "content": "last"},
            {"role": "assistant", "content": "answer"},
        ]});
        assert_eq!(message_of(&body), "last");
        assert_eq!(message_of(&serde_json::json!({})), "");
    }

    fn ask(opts: PipelineOptions) -> (Response, Receiver<PipelineEvent>) {
        let (server, events) = start(opts);
        let body = serde_json::json!({
            "uuid": "call-7",
            "message": "Hello there",
            "messages": [{"role": "user", "content": "Hello there"}],
        });
        let request = body.to_string();
        let r = Response::read(send(&server, LLM_PATH, "call-7", request.as_bytes(), false));
        let request_event = next_event(&events);
        assert_eq!(
            request_event,
            PipelineEvent::LlmRequest {
                uuid: "call-7".into(),
                body
            }
        );
        (r, events)
    }

    #[test]
    fn the_stream_reassembles_to_the_answer_and_its_reads_split_objects() {
        let started = Instant::now();
        let (mut r, _) = ask(PipelineOptions {
            llm_first_byte: Duration::from_millis(50),
            ..Default::default()
        });
        assert_eq!(r.status, 200);
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(r.header("content-type"), Some("application/json"));
        let chunks = r.chunks();
        r.assert_closed();
        let stream = chunks.concat();
        let answer = answer_text(None, "Hello there");
        assert_eq!(contents(&stream), answer);
        let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
        let expected: Vec<usize> = writes(&stream).iter().map(|w| w.len()).collect();
        assert_eq!(sizes, expected);
        // Most writes end inside an object: only a parser over the whole stream copes.
        let split = chunks.iter().filter(|c| c.last() != Some(&b'}')).count();
        assert!(split > chunks.len() / 2, "{sizes:?}");
    }

    #[test]
    fn plain_answers_and_injected_failures() {
        let (mut r, events) = ask(PipelineOptions {
            llm_plain: true,
            answer: Some("Plain {message}!".into()),
            ..Default::default()
        });
        assert!(r.header("content-type").unwrap().starts_with("text/plain"));
        assert_eq!(r.chunks().concat(), b"Plain Hello there!");
        let done = PipelineEvent::LlmDone {
            uuid: "call-7".into(),
            cancelled: false,
        };
        assert_eq!(next_event(&events), done);

        let (r, _) = ask(PipelineOptions {
            llm_status: Some(429),
            ..Default::default()
        });
        let (status, error) = error_of(r);
        assert_eq!(status, 429);
        assert!(error.contains("llm_status"), "{error}");
    }

    #[test]
    fn a_client_that_leaves_mid_answer_cancels_it() {
        let (server, events) = start(PipelineOptions {
            llm_gap: Duration::from_millis(30),
            ..Default::default()
        });
        let body = br#"{"uuid":"u","message":"hi","messages":[]}"#;
        let mut r = Response::read(send(&server, LLM_PATH, "u", body, false));
        assert!(r.chunk().is_some());
        drop(r);
        let done = std::iter::from_fn(|| events.recv_timeout(WAIT).ok())
            .find(|e| matches!(e, PipelineEvent::LlmDone { .. }));
        let cancelled = PipelineEvent::LlmDone {
            uuid: "u".into(),
            cancelled: true,
        };
        assert_eq!(done, Some(cancelled));
    }
}
