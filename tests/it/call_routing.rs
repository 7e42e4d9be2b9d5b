//! `/call` routing with a real webhook receiver: `call_initiated` decides the agent, all six
//! events arrive in order, and a failing or confused receiver never breaks call setup.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use crate::support::avr::Avr;
use crate::support::http::post;
use crate::support::webhook::{Reply, WebhookReceiver};
use crate::support::{new_uuid, WAIT};
use avr_core::tools::echo_sts::{EchoEvent, EchoOptions, EchoServer};
use avr_core::tools::simulate::{run_call, SimOptions};
use crossbeam_channel::Receiver;
use serde_json::{json, Value};

const SECRET: &str = "s3cret-shared";

fn echo() -> (EchoServer, Receiver<EchoEvent>) {
    let server = EchoServer::start("127.0.0.1:0".parse().unwrap(), EchoOptions::default()).unwrap();
    let events = server.events();
    (server, events)
}

fn metadata() -> Value {
    json!({"from": "2000", "to": "5001", "uniqueid": "1770758888.32", "channel": "PJSIP/2000-00000013"})
}

const QUERY: &str = "from=2000&to=5001&uniqueid=1770758888.32&channel=PJSIP%2F2000-00000013";

fn call(avr: &Avr, uuid: &str) -> Value {
    let body = json!({"uuid": uuid, "payload": metadata()}).to_string();
    let response = post(avr.http_addr(), "/call", &body, &[]);
    assert_eq!(response.status, 200, "{:?}", response.json());
    response.json()
}

/// The first connection the agent saw: its path and the `init` it received.
fn first_connection(events: &Receiver<EchoEvent>) -> (String, Value) {
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
            EchoEvent::Closed { .. } => panic!("closed before init"),
        }
    }
}

#[test]
fn call_initiated_routes_the_call_and_all_six_events_arrive_in_order() {
    let (local, local_events) = echo();
    let (routed, routed_events) = echo();
    let receiver = WebhookReceiver::start();
    let override_url = format!("{}/tenant-a?lang=it", routed.url());
    receiver.script([Reply::ok().json(&json!({"sts_url": override_url}))]);
    let avr = Avr::start(&[
        ("STS_URL", &local.url()),
        ("HTTP_PORT", "0"),
        ("HTTP_BIND_ADDRESS", "127.0.0.1"),
        ("WEBHOOK_URL", &receiver.url()),
        ("WEBHOOK_SECRET", SECRET),
    ]);
    let (uuid_bytes, uuid) = new_uuid();

    let answer = call(&avr, &uuid);
    let expected_url = format!("{override_url}&{QUERY}");
    assert_eq!(answer, json!({"sts_url": expected_url, "override": true}));
    avr.wait_log(|l| l.contains("Overriding STS URL:"), WAIT)
        .expect("override logged");

    let mut opts = SimOptions::new(avr.addr());
    opts.uuid = uuid_bytes;
    opts.duration = Duration::from_millis(1300);
    opts.dtmf = vec![(Duration::from_millis(400), '9')];
    let report = run_call(&opts).expect("call");
    assert!(report.violations.is_empty(), "{}", report.summary());

    // The call went to the routed agent, with the metadata in its URL and in `init`.
    let (path, init) = first_connection(&routed_events);
    assert_eq!(path, format!("/tenant-a?lang=it&{QUERY}"));
    assert_eq!(
        init,
        json!({"type": "init", "uuid": uuid, "payload": metadata()})
    );
    assert!(
        local_events.try_recv().is_err(),
        "the local agent saw nothing"
    );

    avr.wait_call_ended(&uuid, WAIT);
    let got = receiver.until(WAIT, |r| r.kind() == "call_ended");
    let kinds: Vec<String> = got.iter().map(|r| r.kind()).collect();
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("call_initiated"),
        "{kinds:?}"
    );
    assert_eq!(
        kinds.get(1).map(String::as_str),
        Some("call_started"),
        "{kinds:?}"
    );
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("call_ended"),
        "{kinds:?}"
    );
    for kind in ["transcription", "dtmf_digit"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} missing: {kinds:?}");
    }
    for req in &got {
        assert_eq!(req.json()["uuid"], uuid.as_str());
        assert_eq!(
            req.header("x-avr-webhook-secret"),
            Some(SECRET),
            "plain scheme"
        );
    }
    assert_eq!(got[0].json()["payload"], metadata());
}

fn fallback_case(reply: Option<Reply>, why: &str) {
    let (local, local_events) = echo();
    let receiver = WebhookReceiver::start();
    let webhook_url = match &reply {
        Some(r) => {
            receiver.script([r.clone()]);
            receiver.url()
        }
        None => {
            let dead: SocketAddr = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            format!("http://{dead}/events")
        }
    };
    let avr = Avr::start(&[
        ("STS_URL", &local.url()),
        ("HTTP_PORT", "0"),
        ("HTTP_BIND_ADDRESS", "127.0.0.1"),
        ("WEBHOOK_URL", &webhook_url),
        ("WEBHOOK_TIMEOUT", "1000"),
        ("WEBHOOK_RETRY", "1"),
    ]);
    let (uuid_bytes, uuid) = new_uuid();
    let asked = Instant::now();
    let answer = call(&avr, &uuid);
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{why}: /call took {:?}",
        asked.elapsed()
    );
    let local_url = format!("{}/?{QUERY}", local.url());
    assert_eq!(
        answer,
        json!({"sts_url": local_url, "override": false}),
        "{why}"
    );

    let mut opts = SimOptions::new(avr.addr());
    opts.uuid = uuid_bytes;
    opts.duration = Duration::from_millis(500);
    run_call(&opts).expect("call");
    let (path, _) = first_connection(&local_events);
    assert_eq!(path, format!("/?{QUERY}"), "{why}");
    avr.wait_call_ended(&uuid, WAIT);
}

#[test]
fn a_receiver_answering_junk_keeps_the_local_url() {
    fallback_case(
        Some(
            Reply::ok()
                .header("content-type", "text/plain")
                .body("hello"),
        ),
        "not JSON",
    );
    fallback_case(
        Some(Reply::ok().json(&json!({"sts_url": "http://not-a-websocket"}))),
        "http URL",
    );
    fallback_case(
        Some(Reply::ok().json(&json!({"sts_url": 42}))),
        "not a string",
    );
    fallback_case(
        Some(Reply::ok().json(&json!({"routed": true}))),
        "no sts_url",
    );
}

#[test]
fn a_failing_or_absent_receiver_keeps_the_local_url() {
    fallback_case(Some(Reply::status(500)), "HTTP 500");
    fallback_case(None, "receiver down");
}
