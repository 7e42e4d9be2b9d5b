//! The shared call registry (`REGISTRY_URL`, issue #14) with a real `redis-server` and two
//! avr-core instances: `/call` on one, the AudioSocket call on the other; one take per uuid;
//! Redis dying and coming back under running instances.

use std::time::{Duration, Instant};

use crate::support::avr::Avr;
use crate::support::http::{get, post, HttpResponse};
use crate::support::redis::RedisServer;
use crate::support::webhook::{Reply, WebhookReceiver};
use crate::support::{new_uuid, WAIT};
use avr_core::tools::echo_sts::{EchoEvent, EchoOptions, EchoServer};
use avr_core::tools::simulate::{run_call, SimOptions};
use crossbeam_channel::Receiver;
use serde_json::{json, Value};

fn echo() -> (EchoServer, Receiver<EchoEvent>) {
    let server = EchoServer::start("127.0.0.1:0".parse().unwrap(), EchoOptions::default()).unwrap();
    let events = server.events();
    (server, events)
}

fn metadata(n: u32) -> Value {
    json!({"from": format!("200{n}"), "to": "5001", "channel": format!("PJSIP/200{n}-0000001")})
}

fn call(avr: &Avr, uuid: &str, payload: &Value) -> HttpResponse {
    let body = json!({"uuid": uuid, "payload": payload}).to_string();
    post(avr.http_addr(), "/call", &body, &[])
}

/// Places a short AudioSocket call with `uuid` on `avr`; it must complete cleanly.
fn audiosocket_call(avr: &Avr, uuid: [u8; 16]) {
    let mut opts = SimOptions::new(avr.addr());
    opts.uuid = uuid;
    opts.duration = Duration::from_millis(600);
    let report = run_call(&opts).expect("call");
    assert!(report.violations.is_empty(), "{}", report.summary());
}

/// The next connection the agent sees: its path and the `init` it received.
fn next_init(events: &Receiver<EchoEvent>) -> (String, Value) {
    let mut path = None;
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left).expect("the agent sees the call") {
            EchoEvent::Connected { path: p, .. } => path = Some(p),
            EchoEvent::Received { text, .. } => {
                let v: Value = serde_json::from_str(&text).unwrap();
                if v["type"] == "init" {
                    return (path.expect("connected first"), v);
                }
            }
            EchoEvent::Closed { .. } => {}
        }
    }
}

/// Whether the call's start line says it had `/call` metadata.
fn started_with_metadata(avr: &Avr, uuid: &str) -> bool {
    let line = avr
        .wait_log(|l| l.contains(&format!("[{uuid}] Call started from")), WAIT)
        .expect("call started");
    line.contains("(with /call metadata")
}

fn metric(avr: &Avr, line_start: &str) -> String {
    let body = get(avr.http_addr(), "/metrics").body;
    body.lines()
        .find(|l| l.starts_with(line_start))
        .unwrap_or_else(|| panic!("{line_start} missing:\n{body}"))
        .to_string()
}

#[test]
fn call_on_one_instance_audiosocket_on_another_and_each_uuid_is_taken_once() {
    let redis = RedisServer::start();
    let (local, local_events) = echo();
    let (routed, routed_events) = echo();
    let receiver = WebhookReceiver::start();
    let override_url = format!("{}/tenant-a", routed.url());
    receiver.script([Reply::ok().json(&json!({"sts_url": override_url}))]);
    let shared = |extra: &[(&'static str, String)]| {
        let mut env = vec![
            ("STS_URL", local.url()),
            ("HTTP_PORT", "0".to_string()),
            ("HTTP_BIND_ADDRESS", "127.0.0.1".to_string()),
            ("REGISTRY_URL", redis.url()),
        ];
        env.extend(extra.iter().cloned());
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Avr::start(&env)
    };
    let a = shared(&[("WEBHOOK_URL", receiver.url())]);
    let b = shared(&[]);
    for avr in [&a, &b] {
        let r = get(avr.http_addr(), "/health");
        assert_eq!(
            (r.status, r.json()),
            (200, json!({"status": "ok", "registry": "ok"}))
        );
    }

    // `/call` on A, routed by call_initiated; the entry is in Redis, with its TTL.
    let (uuid_bytes, uuid) = new_uuid();
    let r = call(&a, &uuid, &metadata(1));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["override"], true);
    let key = format!("avr-core:call:{uuid}");
    let mut conn = redis.connection();
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut conn).unwrap();
    assert!((50_000..=60_000).contains(&ttl), "PTTL {ttl}");

    // The AudioSocket call on B: B's routed agent sees A's metadata.
    audiosocket_call(&b, uuid_bytes);
    let (path, init) = next_init(&routed_events);
    assert!(path.starts_with("/tenant-a?from=2001&to=5001"), "{path}");
    assert_eq!(init["payload"], metadata(1));
    assert!(started_with_metadata(&b, &uuid));
    // B says the route was call_initiated's, though A answered the /call.
    assert!(b
        .logs()
        .iter()
        .any(|l| l.contains(&format!("[{uuid}] Call started"))
            && l.contains("routed by call_initiated")));
    assert!(
        local_events.try_recv().is_err(),
        "the local agent saw nothing"
    );
    let exists: i64 = redis::cmd("EXISTS").arg(&key).query(&mut conn).unwrap();
    assert_eq!(exists, 0, "taken, so gone");

    // The same uuid again, on A: the entry was taken once, so this call has none.
    audiosocket_call(&a, uuid_bytes);
    let (path, init) = next_init(&local_events);
    assert_eq!(path, "/");
    assert!(init.get("payload").is_none_or(Value::is_null), "{init}");
    assert!(!started_with_metadata(&a, &uuid));

    // Two instances racing for one uuid: exactly one gets the metadata.
    let (uuid_bytes, uuid) = new_uuid();
    assert_eq!(call(&b, &uuid, &metadata(2)).status, 200);
    std::thread::scope(|s| {
        s.spawn(|| audiosocket_call(&a, uuid_bytes));
        s.spawn(|| audiosocket_call(&b, uuid_bytes));
    });
    let with = [&a, &b]
        .iter()
        .filter(|avr| started_with_metadata(avr, &uuid))
        .count();
    assert_eq!(with, 1, "exactly one instance took the entry");
}

#[test]
fn redis_down_refuses_call_keeps_calls_and_recovers_without_restart() {
    let mut redis = RedisServer::start();
    let (local, local_events) = echo();
    let receiver = WebhookReceiver::start();
    receiver.set_default(Reply::ok());
    let avr = Avr::start(&[
        ("STS_URL", &local.url()),
        ("HTTP_PORT", "0"),
        ("HTTP_BIND_ADDRESS", "127.0.0.1"),
        ("REGISTRY_URL", &redis.url()),
        ("REGISTRY_TIMEOUT", "300ms"),
        ("WEBHOOK_URL", &receiver.url()),
        ("WEBHOOK_EVENTS", "call_initiated"),
    ]);
    let (uuid_bytes, uuid) = new_uuid();
    assert_eq!(call(&avr, &uuid, &metadata(1)).status, 200);
    audiosocket_call(&avr, uuid_bytes);
    assert_eq!(next_init(&local_events).1["payload"], metadata(1));

    redis.kill();
    // `/call`: 503 with the reason, within the budget (plus the loopback round trip).
    let (uuid_bytes, uuid) = new_uuid();
    let t0 = Instant::now();
    let r = call(&avr, &uuid, &metadata(2));
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(r.status, 503, "{}", r.body);
    let why = r.error();
    assert!(
        why.contains("REGISTRY_URL") && why.contains(&redis.port().to_string()),
        "{why}"
    );
    // Refused before call_initiated: the receiver heard of no call that cannot happen.
    let mut initiated = Vec::new();
    while let Some(r) = receiver.next(Duration::from_millis(300)) {
        initiated.push(r.json()["uuid"].as_str().unwrap_or_default().to_string());
    }
    assert!(!initiated.contains(&uuid), "{initiated:?}");
    // `/health` says why, so a balancer takes this instance out.
    let r = get(avr.http_addr(), "/health");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["status"], "error");
    assert!(
        r.json()["registry"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{}",
        r.body
    );
    // The call still connects, on STS_URL, with one WARN naming the uuid.
    audiosocket_call(&avr, uuid_bytes);
    let (path, _) = next_init(&local_events);
    assert_eq!(path, "/");
    let warn = avr
        .wait_log(|l| l.contains(&format!("[{uuid}] No /call metadata")), WAIT)
        .expect("warned");
    assert!(
        warn.contains("WARN") && warn.contains("REGISTRY_URL"),
        "{warn}"
    );
    assert!(!started_with_metadata(&avr, &uuid));
    assert_eq!(
        metric(&avr, "avr_registry_errors_total{side=\"call\"}"),
        "avr_registry_errors_total{side=\"call\"} 1"
    );
    assert_eq!(
        metric(&avr, "avr_registry_errors_total{side=\"audiosocket\"}"),
        "avr_registry_errors_total{side=\"audiosocket\"} 1"
    );

    // Redis back on the same port: everything recovers, avr-core untouched.
    redis.restart();
    let r = get(avr.http_addr(), "/health");
    assert_eq!(
        (r.status, r.json()),
        (200, json!({"status": "ok", "registry": "ok"}))
    );
    let (uuid_bytes, uuid) = new_uuid();
    let r = call(&avr, &uuid, &metadata(3));
    assert_eq!(r.status, 200, "{}", r.body);
    audiosocket_call(&avr, uuid_bytes);
    assert_eq!(next_init(&local_events).1["payload"], metadata(3));
    assert!(started_with_metadata(&avr, &uuid));
}

#[test]
fn rediss_with_a_private_ca_carries_the_metadata() {
    let redis = RedisServer::start_tls();
    let (local, local_events) = echo();
    let ca = redis.ca_file();
    let ca = ca.to_str().unwrap();
    let tls = |env: &[(&str, &str)]| {
        let mut all = vec![
            ("STS_URL", local.url()),
            ("HTTP_PORT", "0".into()),
            ("HTTP_BIND_ADDRESS", "127.0.0.1".into()),
        ];
        all.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
        let all: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Avr::start(&all)
    };
    let avr = tls(&[("REGISTRY_URL", &redis.url()), ("SSL_CERT_FILE", ca)]);
    let r = get(avr.http_addr(), "/health");
    assert_eq!(
        (r.status, r.json()),
        (200, json!({"status": "ok", "registry": "ok"}))
    );
    let (uuid_bytes, uuid) = new_uuid();
    assert_eq!(call(&avr, &uuid, &metadata(4)).status, 200);
    audiosocket_call(&avr, uuid_bytes);
    assert_eq!(next_init(&local_events).1["payload"], metadata(4));

    // Without the CA, the Mozilla roots do not vouch for it: /health says so.
    let untrusting = tls(&[("REGISTRY_URL", &redis.url()), ("REGISTRY_TIMEOUT", "2s")]);
    let r = get(untrusting.http_addr(), "/health");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.to_lowercase().contains("certificate"), "{}", r.body);
}
