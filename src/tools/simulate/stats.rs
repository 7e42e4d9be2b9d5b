//! What one call measured, and the arithmetic over arrival times that both the single call
//! and load mode report: gaps, nearest-rank percentiles, the busiest window.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::EndedBy;
use crate::proto::audiosocket::{self, kind_name};
use crate::tools::rates::khz;

/// What happened on the call. All times are offsets from the moment the UUID was written.
#[derive(Clone, Debug)]
pub struct SimReport {
    pub uuid: String,
    /// When the UUID was written: add an offset to compare with another thread's `Instant`.
    pub started: Instant,
    /// Audio frames written (DTMF not counted).
    pub frames_sent: u64,
    /// Audio frames (`0x10`–`0x18`, non-empty) received.
    pub frames_received: u64,
    /// Their payloads, in order (an odd length loses its last byte, as in Asterisk), at the
    /// caller's rate: the 8 kHz frames a wideband caller may get first are stretched to it.
    pub received: Vec<u8>,
    /// When each audio frame's last byte arrived.
    pub arrivals: Vec<Duration>,
    pub time_to_first_frame: Option<Duration>,
    /// Between consecutive received audio frames.
    pub gap_p50: Duration,
    pub gap_p99: Duration,
    pub gap_max: Duration,
    /// Most audio frames arriving within any 100 ms; 5 is real time.
    pub max_frames_in_100ms: usize,
    /// Things current Asterisk would fail the call for, each naming its time.
    pub violations: Vec<String>,
    /// Saw `00 00 00`.
    pub hangup_received: bool,
    /// Saw EOF or a reset from the server (also after the simulator ended the call).
    pub server_closed: bool,
    pub ended_by: EndedBy,
    /// UUID sent → the end of the call (our FIN/RST decision, or the server's hangup/EOF).
    pub duration: Duration,
    /// The caller's rate (`SimOptions::rate_hz`).
    pub rate_hz: u32,
    /// Of the frames received, how many came as `0x10` before the first one in a wideband
    /// caller's kind (docs/audiosocket.md §10.4); always 0 for an 8 kHz caller.
    pub prelude_frames: u64,
}

impl SimReport {
    /// A few lines for a human: counts, pacing, how the call ended, each violation.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "call {}: {} after {}",
            self.uuid,
            self.ended_by,
            secs(self.duration)
        );
        let _ = writeln!(s, "  sent:        {} audio frames", self.frames_sent);
        let kind = audiosocket::audio_kind(self.rate_hz).unwrap_or(audiosocket::KIND_AUDIO);
        let _ = writeln!(
            s,
            "  received:    {} audio frames ({} of {} kHz {}{})",
            self.frames_received,
            secs(Duration::from_secs_f64(
                self.received.len() as f64 / (2.0 * f64::from(self.rate_hz))
            )),
            khz(self.rate_hz),
            kind_name(kind),
            match self.prelude_frames {
                0 => String::new(),
                n => format!("; the first {n} as 8 kHz slin"),
            }
        );
        let first = self.time_to_first_frame.map_or("none".into(), ms);
        let _ = writeln!(s, "  first frame: {first} after the UUID");
        let _ = writeln!(
            s,
            "  pacing:      gap p50 {}, p99 {}, max {}; at most {} frames in any 100 ms (5 = real time)",
            ms(self.gap_p50),
            ms(self.gap_p99),
            ms(self.gap_max),
            self.max_frames_in_100ms
        );
        let _ = writeln!(
            s,
            "  hangup:      00 00 00 {}; server {} the connection",
            if self.hangup_received {
                "received"
            } else {
                "not received"
            },
            if self.server_closed {
                "closed"
            } else {
                "did not close"
            }
        );
        if self.violations.is_empty() {
            let _ = writeln!(s, "  violations:  none");
        } else {
            let _ = writeln!(s, "  violations:  {}", self.violations.len());
            for v in &self.violations {
                let _ = writeln!(s, "    - {v}");
            }
        }
        s
    }
}

/// The most arrivals (sorted ascending) inside any half-open window `[t, t + window)`. Exact:
/// the best window can always start at an arrival. Half-open so perfect 20 ms pacing gives 5
/// per 100 ms, not 6.
pub fn window_max(arrivals: &[Duration], window: Duration) -> usize {
    let mut best = 0;
    let mut start = 0;
    for end in 0..arrivals.len() {
        while start <= end && arrivals[end].saturating_sub(arrivals[start]) >= window {
            start += 1;
        }
        best = best.max(end + 1 - start);
    }
    best
}

/// Differences between consecutive arrivals.
pub fn gaps(arrivals: &[Duration]) -> Vec<Duration> {
    arrivals
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .collect()
}

/// Nearest-rank percentile (`pct` in 0–100) of ascending `sorted` values; `None` when empty.
/// Nearest-rank returns an observed value, so p99 of 100 gaps is the second largest.
pub fn nearest_rank<T: Copy>(sorted: &[T], pct: f64) -> Option<T> {
    let rank = (pct / 100.0 * sorted.len() as f64).ceil() as usize;
    (!sorted.is_empty()).then(|| sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The nearest-rank percentile of ascending durations; zero when empty.
pub fn percentile(sorted: &[Duration], pct: f64) -> Duration {
    nearest_rank(sorted, pct).unwrap_or_default()
}

/// `1.234 s`: call lengths and violation times.
pub fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// `20.1 ms`: gaps and round trips.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn window_max_counts_half_open_windows() {
        assert_eq!(window_max(&[], d(100)), 0);
        assert_eq!(window_max(&[d(5)], d(100)), 1);
        let paced: Vec<_> = (0..50).map(|i| d(20 * i)).collect();
        assert_eq!(window_max(&paced, d(100)), 5);
        assert_eq!(window_max(&paced, d(101)), 6);
        assert_eq!(window_max(&paced, Duration::ZERO), 0);
        let mut burst = paced.clone();
        burst.extend(std::iter::repeat_n(d(2000), 20));
        burst.push(d(2099));
        burst.push(d(2100)); // just outside [2000, 2100)
        assert_eq!(window_max(&burst, d(100)), 21);
        // A window may start mid-stream: 980 plus the burst at 1000.
        let mut near = paced.clone();
        near.extend(std::iter::repeat_n(d(1000), 20));
        assert_eq!(window_max(&near, d(100)), 24);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        assert_eq!(nearest_rank::<u32>(&[], 50.0), None);
        assert_eq!(nearest_rank(&[10u32, 20, 30, 40], 75.0), Some(30));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
        let v: Vec<_> = (1..=100).map(d).collect();
        assert_eq!(percentile(&v, 50.0), d(50));
        assert_eq!(percentile(&v, 99.0), d(99));
        assert_eq!(percentile(&v, 100.0), d(100));
        assert_eq!(percentile(&v, 0.0), d(1));
        assert_eq!(percentile(&[d(7)], 99.0), d(7));
        assert_eq!(percentile(&[d(1), d(2), d(3)], 50.0), d(2));
        assert_eq!(gaps(&[d(0), d(20), d(45)]), vec![d(20), d(25)]);
        assert!(gaps(&[d(3)]).is_empty());
    }

    #[test]
    fn the_summary_names_counts_pacing_end_and_each_violation() {
        let mut report = SimReport {
            uuid: "0f0e0d0c-0b0a-0908-0706-050403020100".into(),
            started: Instant::now(),
            frames_sent: 250,
            frames_received: 2,
            received: vec![0; 640],
            arrivals: vec![d(100), d(120)],
            time_to_first_frame: Some(d(100)),
            gap_p50: d(20),
            gap_p99: d(20),
            gap_max: d(20),
            max_frames_in_100ms: 2,
            violations: Vec::new(),
            hangup_received: true,
            server_closed: true,
            ended_by: EndedBy::ServerHangup,
            duration: d(5000),
            rate_hz: 8_000,
            prelude_frames: 0,
        };
        let text = report.summary();
        assert_eq!(text.lines().count(), 7, "{text}");
        for needle in [
            "call 0f0e0d0c-0b0a-0908-0706-050403020100: hung up by the server (00 00 00) after 5.000 s",
            "sent:        250 audio frames",
            "received:    2 audio frames (0.040 s of 8 kHz slin)",
            "first frame: 100.0 ms after the UUID",
            "gap p50 20.0 ms, p99 20.0 ms, max 20.0 ms; at most 2 frames in any 100 ms",
            "00 00 00 received; server closed the connection",
            "violations:  none",
        ] {
            assert!(text.contains(needle), "{needle:?} in\n{text}");
        }
        report.violations = vec!["at 1.000 s: a".into(), "at 2.000 s: b".into()];
        report.time_to_first_frame = None;
        let text = report.summary();
        assert!(text.contains("first frame: none after the UUID"), "{text}");
        assert!(
            text.ends_with("violations:  2\n    - at 1.000 s: a\n    - at 2.000 s: b\n"),
            "{text}"
        );
    }
}
