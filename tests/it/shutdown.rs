//! Graceful shutdown (docs/configuration.md §6): SIGTERM stops new calls, lets live ones finish within
//! SHUTDOWN_GRACE, hangs up the rest with `00 00 00`, and leaves no webhook event behind.
//! Draining (docs/deployment.md): meanwhile `/health` and `/call` answer 503, so a load
//! balancer sends new calls elsewhere.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::avr::Avr;
use crate::support::http::{get, post};
use crate::support::{call_options, WAIT};
use avr_core::tools::echo_sts::{EchoOptions, EchoServer};
use avr_core::tools::simulate::{run_call, EndMode, EndedBy};
use serde_json::Value;

fn echo() -> EchoServer {
    EchoServer::start("127.0.0.1:0".parse().unwrap(), EchoOptions::default()).unwrap()
}

fn dead_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[test]
fn sigterm_hangs_up_calls_past_the_grace_and_dead_letters_every_event() {
    let agent = echo();
    let dead_letters =
        std::env::temp_dir().join(format!("avr-test-dl-{}.jsonl", uuid::Uuid::new_v4()));
    let webhook_url = format!("http://{}/events", dead_port());
    let mut avr = Avr::start(&[
        ("STS_URL", &agent.url()),
        ("SHUTDOWN_GRACE", "2s"),
        ("WEBHOOK_URL", &webhook_url),
        ("WEBHOOK_RETRY", "2"),
        ("WEBHOOK_TIMEOUT", "500"),
        ("WEBHOOK_DEAD_LETTER_FILE", dead_letters.to_str().unwrap()),
    ]);
    let (uuid, opts) = call_options(
        avr.addr(),
        Duration::from_secs(60),
        EndMode::AwaitHangup(Duration::from_secs(60)),
    );
    let sim = thread::spawn(move || run_call(&opts).expect("call"));
    avr.wait_log(|l| l.contains(&format!("[{uuid}] Connected to STS")), WAIT)
        .expect("call up");

    let signalled = Instant::now();
    avr.signal("TERM");
    avr.wait_log(|l| l.contains("AudioSocket listener closed"), WAIT)
        .expect("listener closed");
    assert!(
        TcpStream::connect(avr.addr()).is_err(),
        "new calls are refused while live ones finish"
    );

    let report = sim.join().unwrap();
    let hung_up_after = report.started + report.duration - signalled;
    assert_eq!(
        report.ended_by,
        EndedBy::ServerHangup,
        "{}",
        report.summary()
    );
    assert!(report.hangup_received, "{}", report.summary());
    assert!(report.violations.is_empty(), "{}", report.summary());
    assert!(
        hung_up_after >= Duration::from_millis(1900) && hung_up_after < Duration::from_secs(6),
        "hung up {hung_up_after:?} after SIGTERM with SHUTDOWN_GRACE=2s"
    );
    assert_eq!(
        avr.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        avr.log_text()
    );
    let ended = avr.wait_call_ended(&uuid, WAIT);
    assert!(ended.contains("shutting down"), "{ended}");

    // Every event of the call was logged and every one is in the dead-letter file.
    let logged = avr.events(&uuid);
    let text = std::fs::read_to_string(&dead_letters).expect("dead-letter file");
    let _ = std::fs::remove_file(&dead_letters);
    let lettered: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
        .filter(|v| v["event"]["uuid"] == uuid.as_str())
        .map(|v| v["event"]["type"].as_str().unwrap().to_string())
        .collect();
    assert!(logged.contains(&"call_ended".to_string()), "{logged:?}");
    let mut a = logged.clone();
    let mut b = lettered.clone();
    a.sort();
    b.sort();
    assert_eq!(a, b, "logged {logged:?}, dead-lettered {lettered:?}");
    assert!(avr.log_text().contains("avr-core stopped:"));
}

#[test]
fn sigterm_waits_only_as_long_as_the_calls_last() {
    let agent = echo();
    let mut avr = Avr::start(&[("STS_URL", &agent.url()), ("SHUTDOWN_GRACE", "30s")]);
    let (uuid, opts) = call_options(avr.addr(), Duration::from_millis(1500), EndMode::Close);
    let sim = thread::spawn(move || run_call(&opts).expect("call"));
    avr.wait_log(|l| l.contains(&format!("[{uuid}] Call started")), WAIT)
        .expect("call up");
    avr.signal("TERM");
    let report = sim.join().unwrap();
    assert_eq!(report.ended_by, EndedBy::Client, "{}", report.summary());
    assert!(!report.hangup_received, "the call was not cut short");
    assert_eq!(
        avr.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        avr.log_text()
    );
    let ended = avr.wait_call_ended(&uuid, WAIT);
    assert!(ended.contains("caller hung up"), "{ended}");
}

#[test]
fn a_second_sigint_hangs_up_at_once() {
    let agent = echo();
    let mut avr = Avr::start(&[("STS_URL", &agent.url()), ("SHUTDOWN_GRACE", "60s")]);
    let (uuid, opts) = call_options(
        avr.addr(),
        Duration::from_secs(60),
        EndMode::AwaitHangup(Duration::from_secs(60)),
    );
    let sim = thread::spawn(move || run_call(&opts).expect("call"));
    avr.wait_log(|l| l.contains(&format!("[{uuid}] Call started")), WAIT)
        .expect("call up");
    avr.signal("INT");
    avr.wait_log(|l| l.contains("SIGINT received"), WAIT)
        .expect("first SIGINT");
    let again = Instant::now();
    avr.signal("INT");
    let report = sim.join().unwrap();
    assert_eq!(
        report.ended_by,
        EndedBy::ServerHangup,
        "{}",
        report.summary()
    );
    assert!(report.started + report.duration - again < Duration::from_secs(5));
    assert_eq!(avr.wait_exit(WAIT), Some(0), "{}", avr.log_text());
}

#[test]
fn sigterm_drains_refuses_new_calls_keeps_http_and_exits_with_the_last_call() {
    let agent = echo();
    let mut avr = Avr::start(&[
        ("STS_URL", &agent.url()),
        ("HTTP_PORT", "0"),
        ("SHUTDOWN_GRACE", "30s"),
    ]);
    let http = avr.http_addr();
    let (uuid, opts) = call_options(avr.addr(), Duration::from_millis(3000), EndMode::Close);
    let sim = thread::spawn(move || run_call(&opts).expect("call"));
    avr.wait_log(|l| l.contains(&format!("[{uuid}] Call started")), WAIT)
        .expect("call up");
    assert_eq!(get(http, "/health").status, 200);

    let signalled = Instant::now();
    avr.signal("TERM");
    avr.wait_log(|l| l.contains("AudioSocket listener closed"), WAIT)
        .expect("listener closed");
    // A closed listening socket: the connect is reset, so a TCP balancer retries elsewhere.
    let refused = TcpStream::connect(avr.addr()).expect_err("new calls are refused");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    let health = get(http, "/health");
    assert_eq!(health.status, 503, "{}", health.body);
    let v = health.json();
    assert_eq!(v["status"], "draining", "{v}");
    assert_eq!(v["active_calls"], 1, "{v}");
    let call = post(
        http,
        "/call",
        r#"{"uuid":"0f0e0d0c-0b0a-4908-8706-050403020100","payload":{}}"#,
        &[],
    );
    assert_eq!(call.status, 503, "{}", call.body);
    assert!(call.error().contains("another instance"), "{}", call.body);
    assert_eq!(
        get(http, "/metrics").status,
        200,
        "metrics are still served"
    );

    let report = sim.join().unwrap();
    assert_eq!(report.ended_by, EndedBy::Client, "{}", report.summary());
    assert!(!report.hangup_received, "the call was not cut short");
    assert!(report.violations.is_empty(), "{}", report.summary());
    assert_eq!(
        avr.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        avr.log_text()
    );
    let exited_after = signalled.elapsed();
    assert!(
        exited_after < Duration::from_secs(12),
        "exited {exited_after:?} after SIGTERM: with the last call, not after SHUTDOWN_GRACE"
    );
    let ended = avr.wait_call_ended(&uuid, WAIT);
    assert!(ended.contains("caller hung up"), "{ended}");
    assert!(
        TcpStream::connect(http).is_err(),
        "the HTTP service is gone with the process"
    );
}
