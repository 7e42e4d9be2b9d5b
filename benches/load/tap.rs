//! The audio tap at the echo agent (each marked caller frame's arrival, for caller→agent
//! latency) and the percentile and millisecond helpers every section prints with.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use avr_core::sys::lock;
use avr_core::tools::simulate::{frame_seq, LoadReport};

/// Per call uuid: each marked frame's arrival at the agent, on this process's clock.
#[derive(Clone, Default)]
pub struct Tap(Arc<Mutex<Arrivals>>);

/// Call uuid → (frame number, arrival at the agent), in order.
pub type Arrivals = HashMap<String, Vec<(u32, Instant)>>;

impl Tap {
    pub fn into_fn(self) -> avr_core::tools::echo_sts::AudioTap {
        Arc::new(move |label: &str, pcm: &[u8], at: Instant| {
            let mut seqs = pcm
                .chunks_exact(2)
                .filter_map(|p| frame_seq(i16::from_le_bytes([p[0], p[1]])));
            let Some(first) = seqs.next() else { return };
            let last = seqs.next_back().unwrap_or(first);
            let mut map = lock(&self.0);
            // Looked up by the borrowed label: a String per message would cost the harness
            // an allocation per frame.
            if !map.contains_key(label) {
                map.insert(label.to_string(), Vec::new());
            }
            let Some(frames) = map.get_mut(label) else {
                return;
            };
            for seq in first..=last {
                if frames.last().is_none_or(|&(prev, _)| seq > prev) {
                    frames.push((seq, at));
                }
            }
        })
    }

    /// Caller→agent latencies (µs, ascending) for the calls of `report`; clears the tap.
    pub fn one_way(&self, report: &LoadReport) -> Vec<u32> {
        let map = std::mem::take(&mut *lock(&self.0));
        let mut out = Vec::new();
        for call in &report.calls {
            let (Some(t0), Some(frames)) = (call.started, map.get(&call.uuid)) else {
                continue;
            };
            for &(seq, at) in frames {
                if let Some(sent) = call.sent.get(seq as usize) {
                    out.push(at.saturating_duration_since(t0 + *sent).as_micros() as u32);
                }
            }
        }
        out.sort_unstable();
        out
    }
}

pub fn pct(sorted: &[u32], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Duration::from_micros(u64::from(sorted[rank.clamp(1, sorted.len()) - 1]))
}

pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}
