//! The webhook spool end to end (docs/webhooks.md §5.10): the real binary, killed with
//! `kill -9` while its receiver refuses every event, restarted on the same state directory:
//! nothing accepted is lost, and a resent event keeps its `webhook-id`.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::avr::{state_dir, Avr};
use crate::support::webhook::{Reply, Request, WebhookReceiver};
use crate::support::WAIT;
use crate::webhooks::closed_port;
use serde_json::Value;

const CALLS: usize = 5;

fn spool_path(state: &Path) -> PathBuf {
    state.join("webhook-spool.jsonl")
}

/// The spool's event records: (uuid, type) → webhook-id.
fn spooled_events(path: &Path) -> HashMap<(String, String), String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|r| {
            let e = r.get("event")?;
            let text = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            Some(((text("uuid"), text("type")), text("webhook_id")))
        })
        .collect()
}

/// (uuid, type) of a request.
fn key(r: &Request) -> (String, String) {
    let body = r.json();
    let text = |k: &str| body[k].as_str().unwrap_or_default().to_string();
    (text("uuid"), text("type"))
}

/// A call that connects, sends its UUID and is ended by avr-core (its agent is unreachable):
/// `call_started` then `call_ended`.
fn short_call(avr: &Avr) -> String {
    let (uuid_bytes, uuid) = crate::support::new_uuid();
    let mut stream = TcpStream::connect(avr.addr()).expect("connect to avr-core");
    let mut hello = vec![0x01, 0x00, 0x10];
    hello.extend_from_slice(&uuid_bytes);
    stream.write_all(&hello).unwrap();
    avr.wait_call_ended(&uuid, WAIT);
    uuid
}

#[test]
fn events_queued_at_a_kill_9_are_delivered_after_the_restart_with_their_ids() {
    let receiver = WebhookReceiver::start();
    receiver.set_default(Reply::status(503));
    let state = state_dir();
    let (url, dir, sts) = (
        receiver.url(),
        state.to_str().unwrap().to_string(),
        format!("ws://127.0.0.1:{}", closed_port()),
    );
    let env = [
        ("STS_URL", sts.as_str()),
        ("WEBHOOK_URL", url.as_str()),
        ("WEBHOOK_RETRY", "20"),
        ("WEBHOOK_EVENTS", "call_started,call_ended"),
        ("STATE_DIRECTORY", dir.as_str()),
    ];
    let mut avr = Avr::start(&env);
    let uuids: Vec<String> = (0..CALLS).map(|_| short_call(&avr)).collect();
    for uuid in &uuids {
        let emitted = format!("[{uuid}] event {{\"uuid\":\"{uuid}\",\"type\":\"call_ended\"");
        avr.wait_log(|l| l.contains(&emitted), WAIT)
            .unwrap_or_else(|| panic!("no call_ended for {uuid}:\n{}", avr.log_text()));
    }
    // Accepted means synced to the spool: every event is there before the kill.
    let spool = spool_path(&state);
    let deadline = Instant::now() + WAIT;
    let spooled = loop {
        let spooled = spooled_events(&spool);
        if spooled.len() == 2 * CALLS || Instant::now() > deadline {
            break spooled;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(spooled.len(), 2 * CALLS, "{spooled:?}");
    avr.signal("KILL");
    avr.wait_exit(WAIT).expect("killed");
    // What the refusing receiver saw before the kill: each call's first event, retried.
    let mut before = Vec::new();
    while let Some(r) = receiver.next(Duration::ZERO) {
        before.push(r);
    }
    assert!(!before.is_empty(), "no attempt before the kill");
    for r in &before {
        assert_eq!(key(r).1, "call_started", "per-call order: call_ended waits");
        assert_eq!(
            r.header("webhook-id"),
            spooled.get(&key(r)).map(String::as_str)
        );
    }

    // The receiver is back; avr-core restarts on the same state directory.
    receiver.set_default(Reply::ok());
    let mut avr = Avr::start(&env);
    avr.wait_log(
        |l| l.contains(&format!("recovered {} undelivered events", 2 * CALLS)),
        WAIT,
    )
    .unwrap_or_else(|| panic!("no recovery line:\n{}", avr.log_text()));
    let after = receiver.take(2 * CALLS, WAIT);
    let mut ids: HashMap<(String, String), String> = HashMap::new();
    let mut order: HashMap<String, Vec<String>> = HashMap::new();
    for r in &after {
        let id = r.header("webhook-id").expect("webhook-id").to_string();
        let k = key(r);
        assert_eq!(
            spooled.get(&k),
            Some(&id),
            "resent with its original id: {k:?}"
        );
        if let Some(seen) = ids.insert(k.clone(), id.clone()) {
            assert_eq!(seen, id, "a duplicate has the same webhook-id");
        }
        order.entry(k.0).or_default().push(k.1);
    }
    assert_eq!(ids.len(), 2 * CALLS, "every event delivered: {ids:?}");
    for uuid in &uuids {
        assert_eq!(
            order[uuid],
            ["call_started", "call_ended"],
            "per-call order after recovery"
        );
    }

    // A clean shutdown compacts the spool: everything was delivered, nothing is left.
    let delivered = format!("{} delivered", 2 * CALLS);
    avr.signal("TERM");
    assert_eq!(avr.wait_exit(WAIT), Some(0), "{}", avr.log_text());
    assert!(
        avr.log_text()
            .contains(&format!("Webhooks shut down: {delivered}")),
        "{}",
        avr.log_text()
    );
    assert_eq!(std::fs::read_to_string(&spool).unwrap(), "");
    assert!(avr.log_text().contains("compacted at shutdown"));
    let _ = std::fs::remove_dir_all(state);
}

#[test]
fn a_torn_spool_tail_is_skipped_and_reported_and_the_rest_delivered() {
    let receiver = WebhookReceiver::start();
    let state = state_dir();
    let uuid = crate::support::new_uuid().1;
    let body = format!(
        r#"{{"uuid":"{uuid}","type":"call_ended","timestamp":"2026-01-01T12:00:00.000Z","payload":{{}}}}"#
    );
    let record = serde_json::json!({"event": {
        "webhook_id": "msg_0123456789abcdef0123456789abcdef",
        "uuid": uuid,
        "type": "call_ended",
        "body": body,
    }});
    // The whole record, then one cut short by a crash (no newline).
    std::fs::write(
        spool_path(&state),
        format!("{record}\n{{\"event\":{{\"webhook_id\":\"msg_torn\",\"uu"),
    )
    .unwrap();
    let (url, dir) = (receiver.url(), state.to_str().unwrap().to_string());
    let mut avr = Avr::start(&[
        ("STS_URL", "ws://127.0.0.1:9"),
        ("WEBHOOK_URL", url.as_str()),
        ("STATE_DIRECTORY", dir.as_str()),
    ]);
    let got = receiver.next(WAIT).expect("the recovered event");
    assert_eq!(got.body_text(), body, "sent byte for byte");
    assert_eq!(
        got.header("webhook-id"),
        Some("msg_0123456789abcdef0123456789abcdef")
    );
    let log = avr.log_text();
    assert!(
        log.contains("skipped an unreadable line") && log.contains("msg_torn"),
        "{log}"
    );
    assert!(
        log.contains(
            "recovered 1 undelivered events from the last run (1 unreadable lines skipped)"
        ),
        "{log}"
    );
    avr.signal("TERM");
    assert_eq!(avr.wait_exit(WAIT), Some(0));
    assert_eq!(std::fs::read_to_string(spool_path(&state)).unwrap(), "");
    let _ = std::fs::remove_dir_all(state);
}

#[test]
fn a_clean_shutdown_with_the_receiver_down_leaves_the_events_dead_lettered_and_the_spool_empty() {
    let state = state_dir();
    let (dir, sts, url) = (
        state.to_str().unwrap().to_string(),
        format!("ws://127.0.0.1:{}", closed_port()),
        format!("http://127.0.0.1:{}/events", closed_port()),
    );
    let mut avr = Avr::start(&[
        ("STS_URL", sts.as_str()),
        ("WEBHOOK_URL", url.as_str()),
        ("WEBHOOK_RETRY", "20"),
        ("WEBHOOK_EVENTS", "call_started,call_ended"),
        ("STATE_DIRECTORY", dir.as_str()),
        ("SHUTDOWN_GRACE", "1s"),
    ]);
    let uuid = short_call(&avr);
    let emitted = format!("[{uuid}] event {{\"uuid\":\"{uuid}\",\"type\":\"call_ended\"");
    avr.wait_log(|l| l.contains(&emitted), WAIT)
        .expect("call_ended emitted");
    avr.signal("TERM");
    // The webhook side drains for 3 s after the calls are gone, then dead-letters the rest.
    assert_eq!(avr.wait_exit(WAIT), Some(0), "{}", avr.log_text());
    let letters: Vec<Value> = std::fs::read_to_string(state.join("webhook-dead-letter.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = letters
        .iter()
        .map(|l| l["event"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["call_started", "call_ended"]);
    assert_eq!(std::fs::read_to_string(spool_path(&state)).unwrap(), "");
    assert!(
        avr.log_text().contains("0 undelivered events kept"),
        "{}",
        avr.log_text()
    );
    let _ = std::fs::remove_dir_all(state);
}
