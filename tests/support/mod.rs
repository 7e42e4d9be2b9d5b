//! Helpers shared by the integration tests: the real avr-core process, a scriptable agent.

pub mod avr;
pub mod haproxy;
pub mod http;
pub mod redis;
pub mod sts;
pub mod webhook;

use std::net::SocketAddr;
use std::time::Duration;

use avr_core::tools::simulate::{run_call, EndMode, EndedBy, SimOptions, SimReport};

/// Generous bound for anything that should happen "promptly" on a busy 2-core CI box.
pub const WAIT: Duration = Duration::from_secs(10);

/// A speech-band test signal that never crosses zero, so inserted silence or padding can be
/// told apart from it sample by sample.
pub fn signal(samples: usize) -> Vec<i16> {
    (0..samples)
        .map(|i| {
            let t = i as f64 / 8000.0;
            let v = 2600.0
                + 1400.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()
                + 700.0 * (2.0 * std::f64::consts::PI * 1234.5 * t).sin();
            v as i16
        })
        .collect()
}

pub fn to_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

pub fn to_samples(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// The samples that are not zero: what is left of a stream once silence is taken out.
pub fn non_silent(samples: &[i16]) -> Vec<i16> {
    samples.iter().copied().filter(|&s| s != 0).collect()
}

/// A fresh random call UUID, as raw bytes and as canonical text.
pub fn new_uuid() -> ([u8; 16], String) {
    let u = uuid::Uuid::new_v4();
    (*u.as_bytes(), u.hyphenated().to_string())
}

/// Asserts that `got` is `expected`, or (when `prefix_ok`) a prefix of it at least `min`
/// samples long, reporting the first difference instead of dumping both streams.
pub fn assert_audio(got: &[i16], expected: &[i16], prefix_ok: bool, min: usize, context: &str) {
    if let Some(i) = got.iter().zip(expected).position(|(a, b)| a != b) {
        let show = |v: &[i16]| format!("{:?}", &v[i.saturating_sub(3)..(i + 4).min(v.len())]);
        panic!(
            "audio differs at sample {i} of {} (expected {}): got …{}…, expected …{}…\n{context}",
            got.len(),
            expected.len(),
            show(got),
            show(expected)
        );
    }
    if prefix_ok {
        assert!(
            got.len() >= min && got.len() <= expected.len(),
            "got {} samples, expected between {min} and {}\n{context}",
            got.len(),
            expected.len()
        );
    } else {
        assert_eq!(got.len(), expected.len(), "sample counts differ\n{context}");
    }
}

/// Simulator options for one call with a fresh uuid: the uuid's text and the options.
pub fn call_options(addr: SocketAddr, duration: Duration, end: EndMode) -> (String, SimOptions) {
    let (uuid_bytes, uuid) = new_uuid();
    let mut opts = SimOptions::new(addr);
    opts.uuid = uuid_bytes;
    opts.duration = duration;
    opts.end = end;
    (uuid, opts)
}

/// A call that waits for avr-core to hang up (at most `limit`); asserts that it did, cleanly.
pub fn call_hung_up_by_server(addr: SocketAddr, limit: Duration) -> (String, SimReport) {
    let (uuid, opts) = call_options(addr, limit, EndMode::AwaitHangup(limit));
    let report = run_call(&opts).expect("call");
    assert_eq!(
        report.ended_by,
        EndedBy::ServerHangup,
        "{}",
        report.summary()
    );
    assert!(report.violations.is_empty(), "{}", report.summary());
    (uuid, report)
}

/// Asserts that what the caller heard, silence taken out, is exactly `expected`.
pub fn assert_heard(report: &SimReport, expected: &[i16]) {
    let heard = non_silent(&to_samples(&report.received));
    assert_audio(&heard, expected, false, 0, &report.summary());
}
