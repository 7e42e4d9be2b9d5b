//! The per-call rate limit of `dtmf_digit` events (docs/webhooks.md §5.9).
//!
//! A caller decides how many DTMF frames Asterisk sends, and with the receiver down each one
//! becomes a dead letter: one caller leaning on a key (or a SIP peer spraying RFC 2833) filled
//! 158 MB of dead letters in 15 s. A token bucket per call lets every human-typed digit
//! through and drops the excess of a flood, counted and logged once per call. Pure: the clock
//! is an argument, so the tests need no sleeping.

use std::collections::HashMap;
use std::time::Instant;

/// Sustained `dtmf_digit` events per second and call. Asterisk's `SendDTMF` sends at most
/// about 4 digits a second at its defaults, and a human on a keypad fewer; 10 leaves room.
pub const DTMF_PER_SECOND: u32 = 10;

/// Digits a call may send at once above the sustained rate: a fast-typed PIN or account
/// number, or a dialplan `SendDTMF` of a 20-digit string, all get through.
pub const DTMF_BURST: u32 = 20;

/// Calls tracked before idle buckets are forgotten. Buckets are removed at `call_ended`;
/// this bounds the map even if that event never came.
const MAX_TRACKED: usize = 10_000;

/// What [`PerCallLimit::check`] decided about one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Send,
    /// Over the limit: not sent. `first` is true for the call's first dropped event, the one
    /// to log.
    Drop {
        first: bool,
    },
}

/// A token bucket per call uuid.
pub struct PerCallLimit {
    per_second: f64,
    burst: f64,
    calls: HashMap<String, Bucket>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
    dropped: u64,
}

impl PerCallLimit {
    pub fn new(per_second: u32, burst: u32) -> PerCallLimit {
        PerCallLimit {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            calls: HashMap::new(),
        }
    }

    /// One event of call `uuid` at `now`: sent if the call's bucket has a token.
    pub fn check(&mut self, uuid: &str, now: Instant) -> Verdict {
        if !self.calls.contains_key(uuid) && self.calls.len() >= MAX_TRACKED {
            self.forget_idle(now);
        }
        let (per_second, burst) = (self.per_second, self.burst);
        let bucket = self.calls.entry(uuid.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
            dropped: 0,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Verdict::Send
        } else {
            bucket.dropped += 1;
            Verdict::Drop {
                first: bucket.dropped == 1,
            }
        }
    }

    /// The call ended: its bucket goes. Returns how many of its events were dropped.
    pub fn forget(&mut self, uuid: &str) -> u64 {
        self.calls.remove(uuid).map_or(0, |b| b.dropped)
    }

    /// Calls tracked now.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Drops the buckets that have refilled completely: they hold nothing a new bucket would
    /// not (only the "already logged" mark, at worst logged again).
    fn forget_idle(&mut self, now: Instant) {
        let (per_second, burst) = (self.per_second, self.burst);
        self.calls.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens + elapsed * per_second < burst
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sent(limit: &mut PerCallLimit, uuid: &str, n: usize, now: Instant) -> usize {
        (0..n)
            .filter(|_| limit.check(uuid, now) == Verdict::Send)
            .count()
    }

    #[test]
    fn a_burst_passes_then_the_sustained_rate() {
        let mut limit = PerCallLimit::new(10, 20);
        let t0 = Instant::now();
        assert_eq!(sent(&mut limit, "a", 20, t0), 20);
        assert_eq!(
            limit.check("a", t0),
            Verdict::Drop { first: true },
            "the 21st at once"
        );
        assert_eq!(limit.check("a", t0), Verdict::Drop { first: false });
        // 100 ms later one more token; a second later ten.
        assert_eq!(sent(&mut limit, "a", 5, t0 + Duration::from_millis(100)), 1);
        assert_eq!(
            sent(&mut limit, "a", 50, t0 + Duration::from_millis(1100)),
            10
        );
        // A flood of 1000 a second for 60 s gets 20 + 10 a second through.
        let mut limit = PerCallLimit::new(10, 20);
        let through: usize = (0..60_000)
            .map(|ms| sent(&mut limit, "f", 1, t0 + Duration::from_millis(ms)))
            .sum();
        assert_eq!(through, 20 + 600 - 1, "{through}");
    }

    #[test]
    fn calls_are_limited_separately_and_forgotten_at_their_end() {
        let mut limit = PerCallLimit::new(10, 2);
        let t0 = Instant::now();
        assert_eq!(sent(&mut limit, "a", 5, t0), 2);
        assert_eq!(sent(&mut limit, "b", 5, t0), 2);
        assert_eq!(limit.len(), 2);
        assert_eq!(limit.forget("a"), 3);
        assert_eq!(limit.forget("a"), 0);
        assert_eq!(limit.len(), 1);
        // A new call under the old uuid starts with a full bucket.
        assert_eq!(sent(&mut limit, "a", 5, t0), 2);
    }

    #[test]
    fn the_map_stays_bounded_without_call_ended() {
        let mut limit = PerCallLimit::new(10, 20);
        let t0 = Instant::now();
        for n in 0..MAX_TRACKED {
            limit.check(&format!("c{n}"), t0);
        }
        assert_eq!(limit.len(), MAX_TRACKED);
        // Ten seconds on, every bucket has refilled: a new call makes room.
        limit.check("new", t0 + Duration::from_secs(10));
        assert_eq!(limit.len(), 1);
    }
}
