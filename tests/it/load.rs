//! `avr-core simulate --calls N`: many marked calls against the real binary and the echo agent.

use std::process::Command;
use std::time::Duration;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::support::avr::Avr;
use avr_core::tools::echo_sts::{EchoOptions, EchoServer};
use avr_core::tools::simulate::{frame_seq, run_load, LoadOptions};

/// What the agent saw: per call uuid, the frame numbers in arrival order with their times.
type Seen = Arc<Mutex<HashMap<String, Vec<(u32, Instant)>>>>;

fn echo() -> (EchoServer, Seen) {
    let opts = EchoOptions {
        delay: Duration::from_millis(200),
        transcripts: false,
    };
    let seen: Seen = Arc::default();
    let tap_seen = seen.clone();
    let tap = Arc::new(move |label: &str, pcm: &[u8], at: Instant| {
        let mut seen = tap_seen.lock().unwrap();
        let frames = seen.entry(label.to_string()).or_default();
        for pair in pcm.chunks_exact(2) {
            if let Some(seq) = frame_seq(i16::from_le_bytes([pair[0], pair[1]])) {
                if frames.last().is_none_or(|&(last, _)| seq > last) {
                    frames.push((seq, at));
                }
            }
        }
    });
    let agent = EchoServer::start_with_tap(([127, 0, 0, 1], 0).into(), opts, tap)
        .expect("start the echo agent");
    (agent, seen)
}

#[test]
fn load_mode_matches_every_echo_to_its_frame() {
    let (agent, seen) = echo();
    let avr = Avr::start(&[("STS_URL", &agent.url()), ("LOG_LEVEL", "info")]);
    let mut opts = LoadOptions::new(avr.addr(), 10, Duration::from_millis(1500));
    opts.ramp = Duration::from_millis(200);
    let report = run_load(&opts);
    let s = report.summary();
    let text = report.text(20);
    assert_eq!((s.calls, s.connected, s.failed), (10, 10, 0), "{text}");
    assert_eq!(s.lost, 0, "{text}");
    assert_eq!(s.dropped_samples, 0, "{text}");
    assert_eq!(s.unexpected_hangups + s.violations + s.errors, 0, "{text}");
    // 1.5 s marked + 0.2 s echo delay + 1 s tail = 135 frames per call.
    assert_eq!(s.frames_sent, 10 * 135, "{text}");
    let seen = seen.lock().unwrap();
    for call in &report.calls {
        // The agent's tap saw every marked frame, in order, after the caller sent it.
        let at_agent = &seen[&call.uuid];
        let t0 = call.started.unwrap();
        assert_eq!(at_agent.len(), 75, "{text}");
        for (k, &(seq, at)) in at_agent.iter().enumerate() {
            assert_eq!(seq as usize, k);
            assert!(
                at >= t0 + call.sent[k],
                "frame {k} reached the agent before it was sent"
            );
        }
        assert_eq!(
            call.echoes.len(),
            75,
            "every marked frame came back once\n{text}"
        );
        assert!(
            call.echoes.windows(2).all(|w| w[0].0 + 1 == w[1].0),
            "{text}"
        );
        // The echo can come no sooner than the agent's delay after the frame was sent.
        assert!(
            call.echoes
                .iter()
                .all(|&(seq, at)| at >= call.sent[seq as usize] + Duration::from_millis(200)),
            "{text}"
        );
    }
    assert!(s.round_trip_p50 < Duration::from_secs(1), "{text}");
    assert!(text.contains("10 calls (10 connected, 0 failed)"), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("call ")).count(), 10);
}

#[test]
fn load_mode_reports_calls_that_fail() {
    // No agent behind avr-core: every call is hung up at once, which load mode must count.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", dead.local_addr().unwrap());
    drop(dead);
    let avr = Avr::start(&[("STS_URL", &url)]);
    let out = Command::new(env!("CARGO_BIN_EXE_avr-core"))
        .args([
            "simulate",
            "--calls",
            "3",
            "--seconds",
            "1",
            "--ramp-ms",
            "0",
            "--show",
            "2",
        ])
        .args(["--addr", &avr.addr().to_string()])
        .output()
        .expect("run avr-core simulate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("2 of 3 calls shown"), "{stdout}");
    assert!(stdout.contains("3 unexpected hangups"), "{stdout}");
    assert!(stdout.contains("hung up by the server"), "{stdout}");
}

#[test]
fn load_mode_usage_errors() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_avr-core"))
            .arg("simulate")
            .args(args)
            .output()
            .expect("run avr-core simulate")
    };
    let out = run(&["--calls", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 1 call"));
    let out = run(&["--calls", "2", "--seconds", "700"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("between 0 and 600"));
    let out = run(&["--calls", "2", "--tone", "440"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("load mode"));
}
