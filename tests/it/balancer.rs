//! A rolling restart behind a real HAProxy (docs/deployment.md, packaging/haproxy/): two
//! instances share the calls; SIGTERM one of them during calls and no live call is cut, no
//! new call is refused, and every new call lands on the other instance.
//!
//! Not here yet: `/call` metadata through the balancer, which needs the shared registry
//! (`REGISTRY_URL`, issue #14 item 1).

use std::thread;
use std::time::{Duration, Instant};

use crate::support::avr::Avr;
use crate::support::haproxy::{health, Haproxy};
use crate::support::{call_options, WAIT};
use avr_core::tools::echo_sts::{EchoOptions, EchoServer};
use avr_core::tools::simulate::{run_call, EndMode, EndedBy, SimReport};

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

fn start_instance(agent: &EchoServer) -> Avr {
    Avr::start(&[
        ("STS_URL", &agent.url()),
        ("HTTP_PORT", "0"),
        // Longer than any call here: a call cut before its end would be the balancer's or
        // the draining's doing, not the grace's.
        ("SHUTDOWN_GRACE", "60s"),
    ])
}

/// Places one call of `length` through the balancer on its own thread.
fn place(addr: std::net::SocketAddr, length: Duration) -> (String, thread::JoinHandle<SimReport>) {
    let (uuid, opts) = call_options(addr, length, EndMode::Close);
    let handle = thread::spawn(move || run_call(&opts).expect("call placed through haproxy"));
    (uuid, handle)
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
    let agent = EchoServer::start("127.0.0.1:0".parse().unwrap(), EchoOptions::default())
        .expect("echo agent");
    let mut a = start_instance(&agent);
    let b = start_instance(&agent);
    let proxy = Haproxy::start(&a, &b);

    let started = Instant::now();
    let live: Vec<_> = (0..LIVE_CALLS)
        .map(|_| place(proxy.audiosocket, LIVE_CALL_LENGTH))
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
    let mut new = Vec::new();
    while signalled.elapsed() < NEW_CALLS_FOR {
        new.push(place(proxy.audiosocket, NEW_CALL_LENGTH));
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
    for (uuid, handle) in live {
        let report = handle.join().expect("live call thread");
        assert_whole(&uuid, &report, "live", &logs);
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
