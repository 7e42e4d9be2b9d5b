//! Helpers shared by the integration tests: the real avr-core process, a scriptable agent.
#![allow(dead_code)]

pub mod avr;
pub mod sts;
pub mod webhook;

use std::time::Duration;

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
