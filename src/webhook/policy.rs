//! When to retry and how long to wait: pure functions, unit-tested here.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Backoff before the first retry, before jitter.
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// No backoff is longer than this.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A receiver's `Retry-After` is honoured up to this long; beyond it a misconfigured receiver
/// (`Retry-After: 86400`) would park the call's later events for a day.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(60);

/// What one attempt's status code means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// 2xx.
    Delivered,
    /// 408, 429, 5xx: the receiver may take it later.
    Retry,
    /// 1xx, 3xx (redirects are not followed) and the other 4xx: asking again cannot help.
    Final,
}

pub fn classify_status(status: u16) -> StatusClass {
    match status {
        200..=299 => StatusClass::Delivered,
        408 | 429 | 500..=599 => StatusClass::Retry,
        _ => StatusClass::Final,
    }
}

/// Why one attempt did not deliver the event. `Display` is the `Message:` of the failure line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptError {
    /// The receiver answered, but not 2xx.
    Status {
        status: u16,
        retry_after: Option<Duration>,
        /// Where a 3xx pointed (not followed); shown so the operator can fix `WEBHOOK_URL`.
        location: Option<String>,
    },
    /// No complete answer within `WEBHOOK_TIMEOUT`.
    Timeout(Duration),
    /// The connection failed or broke; `code` is the errno name Node.js would report.
    Network { code: &'static str, detail: String },
    /// The request could not even be built (bad URL or header value): retrying cannot help.
    Request(String),
}

impl AttemptError {
    /// The `Code:` field: `ECONNREFUSED`, `ETIMEDOUT`, `HTTP_503`, …
    pub fn code(&self) -> String {
        match self {
            AttemptError::Status { status, .. } => format!("HTTP_{status}"),
            AttemptError::Timeout(_) => "ETIMEDOUT".into(),
            AttemptError::Network { code, .. } => (*code).into(),
            AttemptError::Request(_) => "ERR_INVALID_REQUEST".into(),
        }
    }

    /// The `Status:` field: the HTTP status if the receiver answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            AttemptError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Connection errors, timeouts, 408, 429 and 5xx are worth another attempt.
    pub fn retryable(&self) -> bool {
        match self {
            AttemptError::Status { status, .. } => classify_status(*status) == StatusClass::Retry,
            AttemptError::Timeout(_) | AttemptError::Network { .. } => true,
            AttemptError::Request(_) => false,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AttemptError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // axios's wording, which the upstream failure log carries.
            AttemptError::Status {
                status,
                location: Some(to),
                ..
            } => write!(
                f,
                "Request failed with status code {status} (redirect to {to} not followed; \
                 point WEBHOOK_URL at the final address)"
            ),
            AttemptError::Status { status, .. } => {
                write!(f, "Request failed with status code {status}")
            }
            AttemptError::Timeout(t) => write!(f, "timeout of {}ms exceeded", t.as_millis()),
            AttemptError::Network { detail, .. } => f.write_str(detail),
            AttemptError::Request(why) => write!(f, "cannot build the request: {why}"),
        }
    }
}

impl std::error::Error for AttemptError {}

/// The wait before attempt `attempt + 1`, after `attempt` (≥ 1) attempts failed, when the
/// receiver gave no `Retry-After`.
///
/// Exponential with "equal jitter": the nominal delay is 500 ms × 2^(attempt−1), capped at
/// 30 s, and the actual delay is uniform in [nominal/2, nominal]. So: before the 2nd attempt
/// 250–500 ms, the 3rd 0.5–1 s, the 4th 1–2 s, the 5th 2–4 s, the 6th 4–8 s, the 7th 8–16 s,
/// from the 8th on 15–30 s. Half of each delay is guaranteed, so a struggling receiver gets
/// real breathing room; the random half spreads the retries of many calls apart.
/// `jitter` is a random number in [0, 1).
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    let nominal = BACKOFF_BASE
        .saturating_mul(1u32 << doublings)
        .min(BACKOFF_CAP);
    let jitter = jitter.clamp(0.0, 1.0);
    nominal / 2 + nominal.mul_f64(jitter / 2.0)
}

/// The wait before the next attempt: the receiver's `Retry-After` (capped at
/// [`RETRY_AFTER_CAP`]) if it sent one, else [`backoff`].
pub fn retry_delay(attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    match retry_after {
        Some(wait) => wait.min(RETRY_AFTER_CAP),
        None => backoff(attempt, jitter),
    }
}

/// A random number in [0, 1) for jitter, from the OS generator `uuid` already uses.
pub fn random_unit() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u64_pair().0 >> 11;
    bits as f64 / (1u64 << 53) as f64
}

/// Parses `Retry-After`: delay-seconds (`120`) or an HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`), relative to `now`. A date in the past means "now".
/// Anything else is ignored (the backoff applies), as RFC 9110 lets a client do.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Longer than u64 seconds is "a very long time": the cap applies anyway.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses the IMF-fixdate form of an HTTP-date, `Sun, 06 Nov 1994 08:49:37 GMT`, the only
/// form senders may generate (RFC 9110 §5.6.7).
fn parse_http_date(s: &str) -> Option<SystemTime> {
    let (_weekday, rest) = s.split_once(", ")?;
    let mut parts = rest.split(' ');
    let day: u32 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':');
    let h: u64 = hms.next()?.parse().ok()?;
    let m: u64 = hms.next()?.parse().ok()?;
    let sec: u64 = hms.next()?.parse().ok()?;
    if parts.next()? != "GMT" || parts.next().is_some() || hms.next().is_some() {
        return None;
    }
    if !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 || year < 1970 {
        return None;
    }
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(days * 86_400 + h * 3600 + m * 60 + sec))
}

/// (year, month, day) → days since 1970-01-01, after Howard Hinnant's `days_from_civil`.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        for s in [200, 201, 202, 204, 299] {
            assert_eq!(classify_status(s), StatusClass::Delivered, "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(classify_status(s), StatusClass::Retry, "{s}");
        }
        for s in [
            100, 301, 302, 303, 307, 308, 400, 401, 403, 404, 405, 410, 413, 422,
        ] {
            assert_eq!(classify_status(s), StatusClass::Final, "{s}");
        }
    }

    #[test]
    fn errors_are_classified() {
        let status = |s| AttemptError::Status {
            status: s,
            retry_after: None,
            location: None,
        };
        assert!(status(503).retryable());
        assert!(status(429).retryable());
        assert!(status(408).retryable());
        assert!(!status(400).retryable());
        assert!(!status(302).retryable());
        assert_eq!(status(503).code(), "HTTP_503");
        assert_eq!(status(503).status(), Some(503));
        assert_eq!(
            status(503).to_string(),
            "Request failed with status code 503"
        );

        let refused = AttemptError::Network {
            code: "ECONNREFUSED",
            detail: "connect ECONNREFUSED 127.0.0.1:9".into(),
        };
        assert!(refused.retryable());
        assert_eq!(refused.code(), "ECONNREFUSED");
        assert_eq!(refused.status(), None);

        let timeout = AttemptError::Timeout(Duration::from_millis(3000));
        assert!(timeout.retryable());
        assert_eq!(timeout.code(), "ETIMEDOUT");
        assert_eq!(timeout.to_string(), "timeout of 3000ms exceeded");

        assert!(!AttemptError::Request("bad url".into()).retryable());
    }

    #[test]
    fn backoff_stays_within_its_documented_bounds() {
        let ms = |d: Duration| d.as_millis();
        // (attempt, lowest, highest) in ms.
        let table = [
            (1, 250, 500),
            (2, 500, 1000),
            (3, 1000, 2000),
            (4, 2000, 4000),
            (5, 4000, 8000),
            (6, 8000, 16_000),
            (7, 15_000, 30_000),
            (8, 15_000, 30_000),
            (20, 15_000, 30_000),
            (u32::MAX, 15_000, 30_000),
        ];
        for (attempt, lo, hi) in table {
            assert_eq!(ms(backoff(attempt, 0.0)), lo, "attempt {attempt}");
            assert!(ms(backoff(attempt, 0.999_999)) <= hi, "attempt {attempt}");
            assert!(
                ms(backoff(attempt, 0.999_999)) >= hi - 1,
                "attempt {attempt}"
            );
            for _ in 0..50 {
                let d = ms(backoff(attempt, random_unit()));
                assert!((lo..=hi).contains(&d), "attempt {attempt}: {d} ms");
            }
        }
        // Out-of-range jitter is clamped, never a panic or a longer wait.
        assert_eq!(ms(backoff(1, -3.0)), 250);
        assert_eq!(ms(backoff(1, 7.0)), 500);
        // Attempt 0 is treated as the first.
        assert_eq!(ms(backoff(0, 0.0)), 250);
    }

    #[test]
    fn retry_after_wins_over_backoff_up_to_its_cap() {
        assert_eq!(
            retry_delay(1, Some(Duration::from_secs(2)), 0.5),
            Duration::from_secs(2)
        );
        assert_eq!(retry_delay(1, Some(Duration::ZERO), 0.5), Duration::ZERO);
        assert_eq!(
            retry_delay(1, Some(Duration::from_secs(86_400)), 0.5),
            RETRY_AFTER_CAP
        );
        assert_eq!(retry_delay(3, None, 0.0), backoff(3, 0.0));
    }

    #[test]
    fn random_unit_is_in_range() {
        for _ in 0..1000 {
            let r = random_unit();
            assert!((0.0..1.0).contains(&r), "{r}");
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 2015-10-21T07:28:00Z
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:29:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        // In the past: retry now.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
        for bad in [
            "",
            "-5",
            "1.5",
            "soon",
            "Wed, 21 Oct 2015 07:28:00 UTC",
            "Wed, 32 Oct 2015 07:28:00 GMT",
            "Wed, 21 Foo 2015 07:28:00 GMT",
            "Wed, 21 Oct 2015 07:28 GMT",
            "Wed, 21 Oct 2015 25:28:00 GMT",
            "Wed, 21 Oct 2015 07:28:00 GMT extra",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn http_dates_match_known_instants() {
        assert_eq!(
            parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(UNIX_EPOCH)
        );
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2000 00:00:00 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(951_782_400))
        );
        assert_eq!(
            parse_http_date("Thu, 01 Jan 2026 12:00:00 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(1_767_268_800))
        );
    }
}
