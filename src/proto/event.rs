//! Call events as the webhook receiver sees them (docs/webhooks.md §2–§3): the event types
//! and the JSON envelope. Pure data; delivery is `crate::webhook`.

use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;

/// What happened, in the words of the webhook `type` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    CallInitiated,
    CallStarted,
    Transcription,
    Interruption,
    DtmfDigit,
    CallEnded,
}

impl EventKind {
    /// All six, in lifecycle order.
    pub const ALL: [EventKind; 6] = [
        EventKind::CallInitiated,
        EventKind::CallStarted,
        EventKind::Transcription,
        EventKind::Interruption,
        EventKind::DtmfDigit,
        EventKind::CallEnded,
    ];

    /// The kind with this wire name, if it is one of the six.
    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// `a,b,c`: how a list of kinds is shown (`check-config`, the startup line).
    pub fn names(kinds: &[EventKind]) -> String {
        let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
        names.join(",")
    }

    /// The wire name (`call_started`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::CallInitiated => "call_initiated",
            EventKind::CallStarted => "call_started",
            EventKind::Transcription => "transcription",
            EventKind::Interruption => "interruption",
            EventKind::DtmfDigit => "dtmf_digit",
            EventKind::CallEnded => "call_ended",
        }
    }
}

/// One call event, stamped when it happened (not when it is delivered).
#[derive(Debug, Clone)]
pub struct Event {
    pub uuid: String,
    pub kind: EventKind,
    pub time: SystemTime,
    pub payload: Value,
}

/// The wire envelope; field order as the Node.js original writes it.
#[derive(Serialize)]
struct Envelope<'a> {
    uuid: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: String,
    payload: &'a Value,
}

impl Event {
    pub fn new(uuid: &str, kind: EventKind, payload: Value) -> Event {
        Event {
            uuid: uuid.to_string(),
            kind,
            time: SystemTime::now(),
            payload,
        }
    }

    /// The webhook body `{"uuid","type","timestamp","payload"}`, compact like `JSON.stringify`.
    pub fn body(&self) -> String {
        let env = Envelope {
            uuid: &self.uuid,
            kind: self.kind.as_str(),
            timestamp: crate::time::iso8601_millis(self.time),
            payload: &self.payload,
        };
        serde_json::to_string(&env).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn body_is_the_upstream_envelope() {
        let mut e = Event::new(
            "935652e3-7c59-4edc-b17f-9646a9c2a265",
            EventKind::CallInitiated,
            serde_json::json!({"from": "2000", "to": "5001", "channel": "PJSIP/2000-00000013"}),
        );
        e.time = UNIX_EPOCH + Duration::from_millis(1_767_268_800_000);
        assert_eq!(
            e.body(),
            r#"{"uuid":"935652e3-7c59-4edc-b17f-9646a9c2a265","type":"call_initiated","timestamp":"2026-01-01T12:00:00.000Z","payload":{"from":"2000","to":"5001","channel":"PJSIP/2000-00000013"}}"#
        );
    }
}
