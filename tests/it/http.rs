//! The HTTP service (docs/http.md §3) against the real binary: `/health`, `/metrics`, `/call` and the
//! AudioSocket call that consumes it, and every error status with its JSON body.

use std::time::Duration;

use crate::support::avr::Avr;
use crate::support::http::{get, post, send, RawCall};
use crate::support::sts::{StsConn, StsServer};
use crate::support::{new_uuid, WAIT};
use serde_json::{json, Value};

const SEED_PAYLOAD: &str =
    r#"{"from":"2000","to":"5001","uniqueid":"1770758888.32","channel":"PJSIP/2000-00000013"}"#;
const SEED_QUERY: &str = "/?from=2000&to=5001&uniqueid=1770758888.32&channel=PJSIP%2F2000-00000013";

pub(crate) fn start(sts: &StsServer, extra: &[(&str, &str)]) -> Avr {
    let url = sts.url();
    let mut env = vec![
        ("STS_URL", url.as_str()),
        ("HTTP_PORT", "0"),
        ("HTTP_BIND_ADDRESS", "127.0.0.1"),
    ];
    env.extend_from_slice(extra);
    Avr::start(&env)
}

/// The `init` the agent receives for a raw call with `uuid`, and the path it connected to;
/// the call and its agent connection stay up while the caller holds them.
fn agent_sees(avr: &Avr, sts: &StsServer, uuid: [u8; 16]) -> (String, Value, RawCall, StsConn) {
    let call = RawCall::start(avr.addr(), uuid, 3);
    let mut conn = sts
        .accept(WAIT)
        .unwrap_or_else(|| panic!("no agent connection; log:\n{}", avr.log_text()));
    let init = conn
        .recv_until(WAIT, |m| m["type"] == "init")
        .expect("init");
    (conn.path().to_string(), init, call, conn)
}

#[test]
fn health_is_exact_and_logged_with_the_port() {
    let sts = StsServer::start();
    let avr = start(&sts, &[]);
    let r = get(avr.http_addr(), "/health");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, r#"{"status":"ok"}"#);
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(r.header("connection"), Some("close"));
}

#[test]
fn metrics_carry_the_spec_names() {
    let sts = StsServer::start();
    let avr = start(&sts, &[]);
    let r = get(avr.http_addr(), "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4"));
    for name in [
        "avr_active_calls",
        "avr_calls_total",
        "avr_sts_connect_failures_total",
        "avr_playout_underruns_total",
        "avr_playout_late_slots_total",
        "avr_webhook_deliveries_total{outcome=\"delivered\"}",
        "avr_webhook_queue_depth",
        "avr_webhook_dead_letters_total",
    ] {
        assert!(
            r.body.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name} missing:\n{}",
            r.body
        );
    }
}

#[test]
fn call_sets_the_agent_url_and_init_payload_of_its_audiosocket_call() {
    let sts = StsServer::start();
    let avr = start(&sts, &[]);
    let (uuid_bytes, uuid) = new_uuid();
    // Given in upper case, stored and used in canonical lower case.
    let body = format!(
        r#"{{"uuid":"{}","payload":{SEED_PAYLOAD}}}"#,
        uuid.to_uppercase()
    );
    let r = post(avr.http_addr(), "/call", &body, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"sts_url": format!("{}{SEED_QUERY}", sts.url()), "override": false}).to_string()
    );
    assert!(avr
        .wait_log(
            |l| l.contains(&format!("POST /call [{uuid}] → sts_url ws://"))
                && l.contains("(override: false)"),
            WAIT
        )
        .is_some());

    let (path, init, call, _agent) = agent_sees(&avr, &sts, uuid_bytes);
    assert_eq!(path, SEED_QUERY);
    let payload: Value = serde_json::from_str(SEED_PAYLOAD).unwrap();
    assert_eq!(
        init,
        json!({"type": "init", "uuid": uuid, "payload": payload})
    );
    call.wait_more_frames(5, WAIT);
    call.assert_flowing(Duration::from_secs(2), "call with /call metadata");
    assert!(avr
        .wait_log(
            |l| l.contains(&format!(
                "[{uuid}] Connecting to STS WebSocket: {}{SEED_QUERY}",
                sts.url()
            )),
            WAIT
        )
        .is_some());
    drop(call);
    avr.wait_call_ended(&uuid, WAIT);

    // Consumed: the next call with the same uuid uses the plain STS_URL and no payload.
    let (path, init, _call, _agent) = agent_sees(&avr, &sts, uuid_bytes);
    assert_eq!(path, "/");
    assert_eq!(init, json!({"type": "init", "uuid": uuid}));
}

#[test]
fn call_metadata_expires_after_its_ttl() {
    let sts = StsServer::start();
    let avr = start(&sts, &[("CALL_METADATA_TTL", "300ms")]);
    let (uuid_bytes, uuid) = new_uuid();
    let r = post(
        avr.http_addr(),
        "/call",
        &format!(r#"{{"uuid":"{uuid}","payload":{{"to":"5001"}}}}"#),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // Waiting out the TTL is the behaviour under test, not synchronisation.
    std::thread::sleep(Duration::from_millis(600));
    let (path, init, _call, _agent) = agent_sees(&avr, &sts, uuid_bytes);
    assert_eq!(path, "/");
    assert_eq!(init, json!({"type": "init", "uuid": uuid}));
}

#[test]
fn errors_have_their_status_and_a_json_reason() {
    let sts = StsServer::start();
    let avr = start(&sts, &[]);
    let addr = avr.http_addr();
    let (_, uuid) = new_uuid();
    let bad_bodies: [(&str, &str); 6] = [
        ("{\"uuid\": ", "not valid JSON"),
        (r#"[{"uuid":"x"}]"#, "must be a JSON object"),
        (r#"{"payload":{}}"#, "\"uuid\" is missing"),
        (r#"{"uuid":"not-a-uuid"}"#, "8-4-4-4-12"),
        (
            &format!(r#"{{"uuid":"{uuid}","payload":[1,2]}}"#),
            "\"payload\" must be",
        ),
        (
            &format!(r#"{{"uuid":"{uuid}","payload":"x"}}"#),
            "\"payload\" must be",
        ),
    ];
    for (body, why) in bad_bodies {
        let r = post(addr, "/call", body, &[]);
        assert_eq!(r.status, 400, "{body}");
        assert!(r.error().contains(why), "{body}: {}", r.error());
    }

    let r = get(addr, "/nope");
    assert_eq!(r.status, 404);
    assert!(r.error().contains("/nope"));

    let r = get(addr, "/call");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert!(r.error().contains("use POST"));
    let r = post(addr, "/health", "{}", &[]);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));

    // Refused from Content-Length alone: the body is never sent.
    let r = send(
        addr,
        b"POST /call HTTP/1.1\r\nHost: a\r\nContent-Length: 65537\r\n\r\n",
    );
    assert_eq!(r.status, 413);
    assert!(r.error().contains("64 KiB"));
    // Exactly 64 KiB is allowed (and here not JSON).
    let r = post(addr, "/call", &"x".repeat(64 * 1024), &[]);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error().contains("not valid JSON"));

    // Chunked bodies are counted as they arrive.
    let chunk = "a".repeat(16 * 1024);
    let mut req =
        String::from("POST /call HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..5 {
        req.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    req.push_str("0\r\n\r\n");
    let r = send(addr, req.as_bytes());
    assert_eq!(r.status, 413);
    let body = format!(r#"{{"uuid":"{uuid}"}}"#);
    let req = format!(
        "POST /call HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let r = send(addr, req.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn http_token_guards_call_but_not_health_or_metrics() {
    let sts = StsServer::start();
    let avr = start(&sts, &[("HTTP_TOKEN", "t0ken-Secret")]);
    let addr = avr.http_addr();
    let (_, uuid) = new_uuid();
    let body = format!(r#"{{"uuid":"{uuid}"}}"#);

    let r = post(addr, "/call", &body, &[]);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert!(r.error().contains("Authorization"));
    let r = post(addr, "/call", &body, &["Authorization: Bearer wrong"]);
    assert_eq!(r.status, 401);
    assert!(r.error().contains("wrong token"));
    let r = post(
        addr,
        "/call",
        &body,
        &["Authorization: Bearer t0ken-Secret"],
    );
    assert_eq!(r.status, 200, "{}", r.body);

    assert_eq!(get(addr, "/health").status, 200);
    assert_eq!(get(addr, "/metrics").status, 200);
    assert!(
        !avr.log_text().contains("t0ken-Secret"),
        "the token must never be logged"
    );
}
