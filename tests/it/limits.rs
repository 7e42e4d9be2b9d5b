//! MAX_CALLS and resource release: calls come and go, the process returns to its baseline.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::avr::Avr;
use crate::support::http::RawCall;
use crate::support::{call_options, new_uuid, WAIT};
use avr_core::proto::audiosocket;
use avr_core::tools::echo_sts::{EchoOptions, EchoServer};
use avr_core::tools::simulate::{run_call, EndMode, SimOptions};

fn echo() -> EchoServer {
    EchoServer::start("127.0.0.1:0".parse().unwrap(), EchoOptions::default()).unwrap()
}

#[test]
fn the_call_over_max_calls_gets_a_hangup_frame() {
    let agent = echo();
    let avr = Avr::start(&[("STS_URL", &agent.url()), ("MAX_CALLS", "2")]);

    let mut live = Vec::new();
    for _ in 0..2 {
        let (uuid_bytes, uuid) = new_uuid();
        // Held open by a raw socket so the test decides when they end.
        let mut s = TcpStream::connect(avr.addr()).unwrap();
        s.write_all(&audiosocket::encode(0x01, &uuid_bytes).unwrap())
            .unwrap();
        avr.wait_log(|l| l.contains(&format!("[{uuid}] Call started")), WAIT)
            .expect("call started");
        live.push((s, uuid));
    }

    let (uuid_bytes, _) = new_uuid();
    let mut third = TcpStream::connect(avr.addr()).unwrap();
    third
        .write_all(&audiosocket::encode(0x01, &uuid_bytes).unwrap())
        .unwrap();
    third.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = Vec::new();
    let _ = third.read_to_end(&mut got);
    assert_eq!(got, audiosocket::HANGUP, "exactly a hangup frame, then EOF");
    avr.wait_log(|l| l.contains("MAX_CALLS (2) calls in progress"), WAIT)
        .expect("rejection logged");

    // Once a call ends, there is room again.
    let (s, uuid) = live.pop().unwrap();
    drop(s);
    avr.wait_call_ended(&uuid, WAIT);
    let (uuid, opts) = call_options(avr.addr(), Duration::from_millis(500), EndMode::Close);
    let report = run_call(&opts).expect("call");
    assert!(report.frames_received > 5, "{}", report.summary());
    assert!(!report.hangup_received, "{}", report.summary());
    avr.wait_call_ended(&uuid, WAIT);
}

#[test]
fn fifty_calls_leave_no_threads_or_fds_behind() {
    let agent = echo();
    let avr = Avr::start(&[("STS_URL", &agent.url()), ("LOG_LEVEL", "info")]);
    let base_threads = avr.threads();
    let base_fds = avr.fds();
    assert!(base_threads >= 1 && base_fds >= 3);

    let mut peak_threads = 0;
    for batch in 0..5 {
        let handles: Vec<_> = (0..10)
            .map(|i| {
                let mut opts = SimOptions::new(avr.addr());
                opts.duration = Duration::from_millis(400 + 50 * i);
                // A mix of endings: FIN from the caller, and reset.
                if (batch + i) % 3 == 0 {
                    opts.end = EndMode::Reset;
                }
                thread::spawn(move || run_call(&opts).expect("call"))
            })
            .collect();
        // Sampled while the calls run (each runs on its own thread).
        while !handles.iter().all(|h| h.is_finished()) {
            peak_threads = peak_threads.max(avr.threads());
            thread::sleep(Duration::from_millis(5));
        }
        for h in handles {
            h.join().unwrap();
        }
    }
    assert!(
        peak_threads > base_threads,
        "calls ran on their own threads"
    );

    let deadline = Instant::now() + WAIT;
    while avr.log_text().matches("Call ended after").count() < 50 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(avr.log_text().matches("Call ended after").count(), 50);
    while (avr.threads() != base_threads || avr.fds() != base_fds) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(avr.threads(), base_threads, "threads back to baseline");
    assert_eq!(avr.fds(), base_fds, "fds back to baseline");
}

#[test]
fn a_connected_call_costs_one_thread() {
    // A live call holds its own thread only: the agent-connect thread has ended once the
    // agent answered, and the playout clocks are shared and were started with the server.
    let agent = echo();
    let avr = Avr::start(&[("STS_URL", &agent.url()), ("LOG_LEVEL", "info")]);
    let base_threads = avr.threads();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let (uuid_bytes, uuid) = new_uuid();
            let call = RawCall::start(avr.addr(), uuid_bytes, 0);
            avr.wait_log(|l| l.contains(&format!("[{uuid}] Connected to STS")), WAIT)
                .expect("the agent answers");
            call
        })
        .collect();
    let deadline = Instant::now() + WAIT;
    while avr.threads() != base_threads + calls.len() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        avr.threads(),
        base_threads + calls.len(),
        "one thread per connected call"
    );
    for call in &calls {
        call.wait_more_frames(5, WAIT);
        call.assert_flowing(Duration::from_secs(2), "a live call");
    }
}
