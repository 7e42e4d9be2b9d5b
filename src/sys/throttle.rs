//! A log line for a condition that can recur many times a second (a full connection table,
//! failing `accept(2)`), written at most once per period with a count of what was held back,
//! so a flood of clients cannot flood the log as well.

use std::time::{Duration, Instant};

/// Logs a recurring condition at most once per `every`, counting what it held back.
pub struct Throttle {
    /// What is counted, for the suffix: "3 more such {what} since the last line".
    what: &'static str,
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    pub fn new(what: &'static str, every: Duration) -> Throttle {
        Throttle {
            what,
            every,
            last: None,
            held_back: 0,
        }
    }

    /// Notes one occurrence at `now`: calls `log` with a suffix counting the occurrences held
    /// back since the last line (empty when none were), unless a line went out less than
    /// `every` ago.
    pub fn note(&mut self, now: Instant, log: impl FnOnce(&str)) {
        if self.last.is_some_and(|t| now < t + self.every) {
            self.held_back += 1;
            return;
        }
        let more = match self.held_back {
            0 => String::new(),
            n => format!(" ({n} more such {} since the last line)", self.what),
        };
        log(&more);
        self.last = Some(now);
        self.held_back = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_secs(10);

    fn lines(throttle: &mut Throttle, at: &[Instant]) -> Vec<String> {
        let mut out = Vec::new();
        for &now in at {
            throttle.note(now, |more| out.push(more.to_string()));
        }
        out
    }

    #[test]
    fn holds_back_within_the_period_and_counts() {
        let t0 = Instant::now();
        let mut t = Throttle::new("things", EVERY);
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(lines(&mut t, &[t0, ms(1), ms(9_999)]), [""]);
        assert_eq!(
            lines(&mut t, &[ms(10_000)]),
            [" (2 more such things since the last line)"]
        );
        // The count starts again after each line, and the period from the last line.
        assert!(lines(&mut t, &[ms(19_999)]).is_empty());
        assert_eq!(
            lines(&mut t, &[ms(20_000), ms(30_000)]),
            [" (1 more such things since the last line)", ""]
        );
    }
}
