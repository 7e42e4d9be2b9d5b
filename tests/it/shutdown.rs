//! Graceful shutdown (docs/configuration.md §6): SIGTERM stops new calls, lets live ones finish within
//! SHUTDOWN_GRACE, hangs up the rest with `00 00 00`, and leaves no webhook event behind.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::avr::Avr;
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
