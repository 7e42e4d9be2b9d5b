//! `Webhooks` driven in-process against a real receiver: `call_initiated`, the bounded queue,
//! and shutdown.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::webhook::{Reply, WebhookReceiver};
use crate::support::WAIT;
use avr_core::config::Config;
use avr_core::metrics::Metrics;
use avr_core::webhook::{Event, EventKind, ShutdownReport, Webhooks};
use serde_json::{json, Value};

fn dead_letter_path() -> PathBuf {
    std::env::temp_dir()
        .join(format!(
            "avr-webhooks-api-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ))
        .join("dead.jsonl")
}

fn start(receiver: &WebhookReceiver, extra: &[(&str, &str)]) -> (Webhooks, Arc<Metrics>, PathBuf) {
    let dead = dead_letter_path();
    let mut vars = vec![
        ("STS_URL".to_string(), "ws://127.0.0.1:1".to_string()),
        ("WEBHOOK_URL".to_string(), receiver.url()),
        ("WEBHOOK_SECRET".to_string(), "s".to_string()),
        (
            "WEBHOOK_DEAD_LETTER_FILE".to_string(),
            dead.display().to_string(),
        ),
    ];
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config = Config::from_vars(&vars).expect("a valid config");
    let metrics = Arc::new(Metrics::default());
    (Webhooks::start(&config, metrics.clone()), metrics, dead)
}

fn dead_letters(path: &PathBuf) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn event(uuid: &str, kind: EventKind) -> Event {
    Event::new(uuid, kind, json!({}))
}

#[test]
fn call_initiated_returns_the_receivers_answer() {
    let receiver = WebhookReceiver::start();
    receiver.script([Reply::ok().json(&json!({"sts_url": "ws://x"}))]);
    let (hooks, metrics, dead) = start(&receiver, &[]);
    let payload = json!({"from": "2000", "to": "5001", "uniqueid": "1770758888.32"});
    let answer = hooks.call_initiated(Event::new(
        "935652e3-7c59-4edc-b17f-9646a9c2a265",
        EventKind::CallInitiated,
        payload.clone(),
    ));
    assert_eq!(answer, Some(json!({"sts_url": "ws://x"})));
    let req = receiver.next(WAIT).unwrap();
    assert_eq!(req.kind(), "call_initiated");
    assert_eq!(req.json()["payload"], payload);
    assert!(req.standard_signature_ok("s"));
    assert_eq!(metrics.webhook_delivered.load(Relaxed), 1);
    assert!(dead_letters(&dead).is_empty());

    // A 2xx that is not JSON is delivered, but carries no answer.
    receiver.script([Reply::ok()]);
    assert_eq!(
        hooks.call_initiated(event("u", EventKind::CallInitiated)),
        None
    );
    assert_eq!(metrics.webhook_delivered.load(Relaxed), 2);
}

#[test]
fn call_initiated_gives_up_after_its_retries() {
    let receiver = WebhookReceiver::start();
    receiver.set_default(Reply::status(500));
    let (hooks, metrics, dead) = start(&receiver, &[("WEBHOOK_RETRY", "2")]);
    let began = Instant::now();
    let answer = hooks.call_initiated(event("u-500", EventKind::CallInitiated));
    assert_eq!(answer, None);
    // Backoff 250-500 ms then 500-1000 ms: well inside the 10 s budget.
    assert!(began.elapsed() < Duration::from_secs(10));
    let attempts = receiver.take(3, WAIT);
    let id = attempts[0].header("webhook-id").unwrap();
    assert!(attempts.iter().all(|a| a.header("webhook-id") == Some(id)));
    assert!(receiver.next(Duration::from_millis(300)).is_none());
    // Dead-lettered before call_initiated returned.
    let letters = dead_letters(&dead);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["attempts"], 3);
    assert_eq!(letters[0]["event"]["type"], "call_initiated");
    assert_eq!(metrics.webhook_failed.load(Relaxed), 1);
    assert_eq!(metrics.webhook_retried.load(Relaxed), 2);
    assert_eq!(metrics.webhook_dead_letters.load(Relaxed), 1);
}

#[test]
fn call_initiated_respects_the_event_filter_and_disabled_webhooks() {
    let receiver = WebhookReceiver::start();
    let (hooks, _, _) = start(&receiver, &[("WEBHOOK_EVENTS", "call_started")]);
    assert_eq!(
        hooks.call_initiated(event("u", EventKind::CallInitiated)),
        None
    );
    assert!(receiver.next(Duration::from_millis(300)).is_none());
    let off = Webhooks::log_only();
    assert_eq!(
        off.call_initiated(event("u", EventKind::CallInitiated)),
        None
    );
    off.emit(event("u", EventKind::CallStarted));
    assert_eq!(off.shutdown(Instant::now()), ShutdownReport::default());
}

#[test]
fn a_full_queue_dead_letters_instead_of_blocking() {
    let receiver = WebhookReceiver::start();
    // The first event holds the only queue place while the receiver sits on it.
    receiver.set_default(Reply::ok().delay(Duration::from_millis(1500)));
    let (hooks, metrics, dead) = start(
        &receiver,
        &[("WEBHOOK_QUEUE_SIZE", "1"), ("WEBHOOK_WORKERS", "1")],
    );
    let began = Instant::now();
    for n in 0..3 {
        hooks.emit(event(&format!("call-{n}"), EventKind::CallStarted));
    }
    assert!(
        began.elapsed() < Duration::from_millis(500),
        "emit blocked for {:?}",
        began.elapsed()
    );
    assert_eq!(receiver.next(WAIT).unwrap().json()["uuid"], "call-0");
    let report = hooks.shutdown(Instant::now() + WAIT);
    assert_eq!(report.delivered, 1);
    let letters = dead_letters(&dead);
    let uuids: Vec<&str> = letters
        .iter()
        .map(|l| l["event"]["uuid"].as_str().unwrap())
        .collect();
    assert_eq!(uuids, ["call-1", "call-2"]);
    assert_eq!(letters[0]["attempts"], 0);
    assert!(letters[0]["last_error"]
        .as_str()
        .unwrap()
        .contains("WEBHOOK_QUEUE_SIZE=1"));
    assert_eq!(metrics.webhook_failed.load(Relaxed), 2);
    assert_eq!(metrics.webhook_dead_letters.load(Relaxed), 2);
    assert_eq!(metrics.webhook_queue_depth.load(Relaxed), 0);
}

#[test]
fn shutdown_drains_then_dead_letters_what_is_left() {
    let receiver = WebhookReceiver::start();
    receiver.set_default(Reply::status(503));
    let (hooks, metrics, dead) = start(&receiver, &[("WEBHOOK_RETRY", "10")]);
    hooks.emit(event("a", EventKind::CallStarted));
    hooks.emit(event("a", EventKind::CallEnded));
    // a's first event is failing and retrying; its second waits behind it.
    receiver.next(WAIT).expect("the first attempt");
    let began = Instant::now();
    let report = hooks.shutdown(Instant::now() + Duration::from_millis(1500));
    assert!(
        began.elapsed() < WAIT,
        "shutdown took {:?}",
        began.elapsed()
    );
    assert_eq!(
        report,
        ShutdownReport {
            delivered: 0,
            dead_lettered: 2,
            lost: 0
        }
    );
    let letters = dead_letters(&dead);
    let kinds: Vec<&str> = letters
        .iter()
        .map(|l| l["event"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["call_started", "call_ended"], "in call order");
    // call_started used its attempts until its next retry would fall after the deadline;
    // call_ended, freed then, may have had one attempt of its own.
    assert!(letters[0]["attempts"].as_u64().unwrap() >= 1);
    assert_eq!(metrics.webhook_queue_depth.load(Relaxed), 0);

    // Later events are not sent: they go straight to the file, synchronously.
    hooks.emit(event("b", EventKind::CallStarted));
    assert_eq!(dead_letters(&dead).len(), 3);
    // A second shutdown has nothing to do.
    assert_eq!(
        hooks.shutdown(Instant::now() + WAIT),
        ShutdownReport::default()
    );
}

#[test]
fn shutdown_waits_for_pending_deliveries() {
    let receiver = WebhookReceiver::start();
    receiver.set_default(Reply::ok().delay(Duration::from_millis(300)));
    let (hooks, metrics, dead) = start(&receiver, &[("WEBHOOK_WORKERS", "2")]);
    for n in 0..3 {
        hooks.emit(event("c", EventKind::Transcription));
        hooks.emit(event(&format!("d{n}"), EventKind::CallStarted));
    }
    let report = hooks.shutdown(Instant::now() + WAIT);
    assert_eq!(report.delivered, 6, "{report:?}");
    assert_eq!(report.dead_lettered, 0);
    assert_eq!(receiver.take(6, WAIT).len(), 6);
    assert!(dead_letters(&dead).is_empty());
    assert_eq!(metrics.webhook_delivered.load(Relaxed), 6);
}

#[test]
fn an_unwritable_dead_letter_file_is_reported_not_silent() {
    let receiver = WebhookReceiver::start();
    // Answered after `shutdown` has begun, so the report covers it.
    receiver.set_default(Reply::status(400).delay(Duration::from_millis(500)));
    let dir = dead_letter_path();
    // A directory where the file should be.
    std::fs::create_dir_all(&dir).unwrap();
    let config = Config::from_vars(&[
        ("STS_URL".into(), "ws://127.0.0.1:1".into()),
        ("WEBHOOK_URL".into(), receiver.url()),
        ("WEBHOOK_DEAD_LETTER_FILE".into(), dir.display().to_string()),
    ])
    .unwrap();
    let hooks = Webhooks::start(&config, Arc::new(Metrics::default()));
    hooks.emit(event("x", EventKind::CallStarted));
    receiver.next(WAIT).expect("the attempt");
    let report = hooks.shutdown(Instant::now() + WAIT);
    assert_eq!(report.lost, 1, "{report:?}");
}

#[test]
fn the_deadline_dead_letters_events_still_in_flight_or_waiting() {
    let receiver = WebhookReceiver::start();
    receiver.set_default(Reply::ok().delay(Duration::from_secs(3)));
    let (hooks, _, dead) = start(&receiver, &[("WEBHOOK_TIMEOUT", "10s")]);
    hooks.emit(event("slow", EventKind::CallStarted));
    hooks.emit(event("slow", EventKind::CallEnded));
    receiver.next(WAIT).expect("call_started in flight");
    let began = Instant::now();
    let report = hooks.shutdown(Instant::now() + Duration::from_millis(300));
    let took = began.elapsed();
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
    assert_eq!(report.dead_lettered, 2, "{report:?}");
    let letters = dead_letters(&dead);
    assert_eq!(letters[0]["event"]["type"], "call_started");
    assert_eq!(letters[0]["attempts"], 1);
    assert_eq!(letters[0]["last_error"], "shut down before delivery");
    assert_eq!(letters[1]["event"]["type"], "call_ended");
    assert_eq!(letters[1]["attempts"], 0);
}
