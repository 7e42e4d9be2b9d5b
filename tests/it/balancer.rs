//! A rolling restart behind a real HAProxy (docs/deployment.md, packaging/haproxy/): two
//! instances share the calls and one Redis; SIGTERM one of them during calls and no live call
//! is cut, no new call is refused, every new call lands on the other instance, and every call
//! (`/call` first, as a dialplan does) reaches its agent with its own metadata.
//!
//!
//! And the dialplan's `/call` through the balancer's HTTP frontend with the shared registry
//! (`REGISTRY_URL`): whichever instance takes the `/call` and whichever takes the AudioSocket
//! call, every call's agent gets that call's own metadata.

use std::thread;
use std::time::{Duration, Instant};

use std::collections::HashMap;

use crate::support::avr::Avr;
use crate::support::haproxy::{health, Haproxy};
use crate::support::http::post;
use crate::support::redis::RedisServer;
use crate::support::{call_options, WAIT};
use avr_core::tools::echo_sts::{EchoEvent, EchoOptions, EchoServer};
use avr_core::tools::simulate::{run_call, EndMode, EndedBy, SimReport};
use serde_json::{json, Value};

/// Calls up when instance A is told to stop: each lasts well past the SIGTERM.
const LIVE_CALLS: usize = 20;
const LIVE_CALL_LENGTH: Duration = Duration::from_secs(4);
/// When A gets SIGTERM, after the live calls were placed.
const SIGTERM_AFTER: Duration = Duration::from_secs(1);
/// New calls while A drains: one every 100 ms for 3 s.
const NEW_CALL_EVERY: Duration = Duration::from_millis(100);
const NEW_CALLS_FOR: Duration = Duration::from_secs(3);
const NEW_CALL_LENGTH: Duration = Duration::from_millis(1500);
/// How long to look at one instance's log before looking at the other's.
const LOOK: Duration = Duration::from_millis(20);

fn start_instance(agent: &EchoServer, redis: &RedisServer) -> Avr {
    Avr::start(&[
        ("STS_URL", &agent.url()),
        ("HTTP_PORT", "0"),
        ("REGISTRY_URL", &redis.url()),
        // Longer than any call here: a call cut before its end would be the balancer's or
        // the draining's doing, not the grace's.
        ("SHUTDOWN_GRACE", "60s"),
    ])
}

/// Places one call of `length` through the balancer on its own thread, as a dialplan does:
/// `/call` with `payload` (through the HTTP frontend), then the AudioSocket dial.
fn place(
    proxy: &Haproxy,
    length: Duration,
    payload: impl Fn(&str) -> Value,
) -> (String, thread::JoinHandle<SimReport>) {
    let (uuid, opts) = call_options(proxy.audiosocket, length, EndMode::Close);
    let body = json!({"uuid": uuid, "payload": payload(&uuid)}).to_string();
    let http = proxy.http;
    let handle = thread::spawn(move || {
        // As curl does once done: the balancer keeps an HTTP/1.1 connection open.
        let r = post(http, "/call", &body, &["Connection: close"]);
        assert_eq!(r.status, 200, "/call through haproxy: {}", r.body);
        run_call(&opts).expect("call placed through haproxy")
    });
    (uuid, handle)
}

/// Each call's `init` as the agent saw it: uuid → the payload's `from`, for `calls` calls.
fn inits(
    events: &crossbeam_channel::Receiver<EchoEvent>,
    calls: usize,
) -> HashMap<String, Option<String>> {
    let mut seen = HashMap::new();
    let deadline = Instant::now() + WAIT;
    while seen.len() < calls && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(EchoEvent::Received { text, .. }) = events.recv_timeout(left) {
            let v: Value = serde_json::from_str(&text).unwrap_or_default();
            if v["type"] == "init" {
                let uuid = v["uuid"].as_str().unwrap_or_default().to_string();
                seen.insert(uuid, v["payload"]["from"].as_str().map(String::from));
            }
        }
    }
    seen
}

/// The payload every call of the rolling-restart test sends: its own uuid.
fn own_uuid(uuid: &str) -> Value {
    json!({ "from": uuid })
}

fn assert_whole(uuid: &str, report: &SimReport, what: &str, logs: &dyn Fn() -> String) {
    assert_eq!(
        (report.ended_by, report.hangup_received),
        (EndedBy::Client, false),
        "{what} call {uuid} was cut: {}\n{}",
        report.summary(),
        logs()
    );
    assert!(
        report.frames_received > 0 && report.violations.is_empty(),
        "{what} call {uuid}: {}",
        report.summary()
    );
}

#[test]
fn a_rolling_restart_behind_haproxy_cuts_no_call_and_refuses_none() {
    let redis = RedisServer::start();
    let agent = EchoServer::start("127.0.0.1:0".parse().unwrap(), EchoOptions::default())
        .expect("echo agent");
    let events = agent.events();
    let mut a = start_instance(&agent, &redis);
    let b = start_instance(&agent, &redis);
    let proxy = Haproxy::start(&a, &b);

    let started = Instant::now();
    let live: Vec<_> = (0..LIVE_CALLS)
        .map(|_| place(&proxy, LIVE_CALL_LENGTH, own_uuid))
        .collect();
    let on_a = |uuid: &str| !a.call_logs(uuid).is_empty();
    for (uuid, _) in &live {
        let up = format!("[{uuid}] Call started");
        let deadline = Instant::now() + WAIT;
        while a.wait_log(|l| l.contains(&up), LOOK).is_none()
            && b.wait_log(|l| l.contains(&up), LOOK).is_none()
        {
            assert!(
                Instant::now() < deadline,
                "live call {uuid} did not start; haproxy:\n{}",
                proxy.log_text()
            );
        }
    }
    let a_had = live.iter().filter(|(u, _)| on_a(u)).count();
    assert!(
        a_had > 0 && a_had < LIVE_CALLS,
        "leastconn shares the calls: A has {a_had} of {LIVE_CALLS}"
    );

    thread::sleep(SIGTERM_AFTER.saturating_sub(started.elapsed()));
    a.signal("TERM");
    let signalled = Instant::now();
    // The point of the test: A stops with calls of its own in progress.
    let stopping = a
        .wait_log(|l| l.contains("SIGTERM received"), WAIT)
        .expect("A got SIGTERM");
    assert!(
        !stopping.contains("stopping. 0 calls"),
        "A had no call left to drain (the live calls took too long to start): {stopping}"
    );
    // A call that reached A's queue before its listener closed is A's to serve (it is); from
    // the closing line on, every new connection is refused there and goes to B.
    a.wait_log(|l| l.contains("AudioSocket listener closed"), WAIT)
        .expect("A closed its listener");
    let mut new = Vec::new();
    while signalled.elapsed() < NEW_CALLS_FOR {
        new.push(place(&proxy, NEW_CALL_LENGTH, own_uuid));
        thread::sleep(NEW_CALL_EVERY);
    }
    // Through the HTTP frontend, /health is B's answer now: A is out of the backend.
    assert_eq!(health(proxy.http).status, 200);

    let logs = || {
        format!(
            "A:\n{}\nB:\n{}\nhaproxy:\n{}",
            a.log_text(),
            b.log_text(),
            proxy.log_text()
        )
    };
    let mut uuids: Vec<String> = Vec::new();
    for (uuid, handle) in live {
        let report = handle.join().expect("live call thread");
        assert_whole(&uuid, &report, "live", &logs);
        uuids.push(uuid);
    }
    let placed = new.len();
    assert!(
        placed >= 25,
        "{placed} new calls placed in {NEW_CALLS_FOR:?}"
    );
    for (uuid, handle) in new {
        let report = handle.join().expect("new call thread");
        assert_whole(&uuid, &report, "new", &logs);
        assert!(
            a.call_logs(&uuid).is_empty(),
            "new call {uuid} reached the draining instance A\n{}",
            logs()
        );
        b.wait_call_ended(&uuid, WAIT);
        uuids.push(uuid);
    }
    // Every call, before and during the drain, reached its agent with its own `/call`
    // metadata, wherever the balancer sent its `/call` (a draining A answers 503: retried on B).
    let seen = inits(&events, uuids.len());
    for uuid in &uuids {
        assert_eq!(
            seen.get(uuid),
            Some(&Some(uuid.clone())),
            "call {uuid}\n{}",
            logs()
        );
    }
    // A leaves with its last call, long before its 60 s grace.
    assert_eq!(a.wait_exit(WAIT), Some(0), "{}", a.log_text());
    assert!(
        signalled.elapsed() < Duration::from_secs(20),
        "A exited {:?} after SIGTERM",
        signalled.elapsed()
    );
    assert!(
        !a.log_text().contains("Hanging up"),
        "A hung up no call: {}",
        a.log_text()
    );
}

/// Calls placed with `/call` first, all through the balancer.
const ROUTED_CALLS: usize = 40;

#[test]
fn every_call_through_haproxy_gets_its_own_metadata_from_the_shared_registry() {
    let redis = RedisServer::start();
    let agent = EchoServer::start("127.0.0.1:0".parse().unwrap(), EchoOptions::default())
        .expect("echo agent");
    let events = agent.events();
    let instance = || {
        Avr::start(&[
            ("STS_URL", &agent.url()),
            ("HTTP_PORT", "0"),
            ("REGISTRY_URL", &redis.url()),
        ])
    };
    let (a, b) = (instance(), instance());
    let proxy = Haproxy::start(&a, &b);

    // As the dialplan does: `/call` (CURL) through the balancer, then the AudioSocket dial
    // through it, each call on its own thread.
    let mut wanted = HashMap::new();
    let calls: Vec<_> = (0..ROUTED_CALLS)
        .map(|n| {
            let from = format!("3{n:03}");
            let call = place(
                &proxy,
                Duration::from_millis(800),
                |_| json!({ "from": from }),
            );
            wanted.insert(call.0.clone(), from);
            call
        })
        .collect();
    for (_, handle) in calls {
        let report = handle.join().expect("call thread");
        assert!(report.violations.is_empty(), "{}", report.summary());
    }

    // Each call's `init` carried its own `/call` payload.
    let seen = inits(&events, ROUTED_CALLS);
    for (uuid, from) in &wanted {
        assert_eq!(seen.get(uuid), Some(&Some(from.clone())), "call {uuid}");
    }
    // Both instances took calls, and some `/call`s were taken by the other instance than the
    // AudioSocket call: the shared registry, not luck, carried the metadata.
    let posted_on = |avr: &Avr, uuid: &str| {
        avr.logs()
            .iter()
            .any(|l| l.contains(&format!("POST /call [{uuid}]")))
    };
    let started_on = |avr: &Avr, uuid: &str| {
        avr.logs()
            .iter()
            .any(|l| l.contains(&format!("[{uuid}] Call started")))
    };
    let crossed = wanted
        .keys()
        .filter(|u| posted_on(&a, u) != started_on(&a, u))
        .count();
    let on_a = wanted.keys().filter(|u| started_on(&a, u)).count();
    assert!(
        on_a > 0 && on_a < ROUTED_CALLS,
        "A took {on_a} of {ROUTED_CALLS}"
    );
    assert!(crossed > 0, "no call crossed instances");
}
