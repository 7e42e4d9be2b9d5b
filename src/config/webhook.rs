//! The `WEBHOOK_*` variables → [`WebhookConfig`], parsed on their own so that
//! `avr-core webhooks test|replay` run with nothing but them (no `STS_URL`).

use std::path::PathBuf;
use std::time::Duration;

use super::env::{self, Env};
use super::ConfigError;
use crate::proto::event::EventKind;

/// Name of the dead-letter file when `WEBHOOK_DEAD_LETTER_FILE` is unset.
const DEAD_LETTER_FILE_NAME: &str = "webhook-dead-letter.jsonl";

/// What the webhook secret header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    /// The secret itself (the Node.js original's behaviour).
    Plain,
    /// Lowercase hex HMAC-SHA256 of the body, keyed by the secret.
    HmacSha256,
}

impl Signature {
    /// The `WEBHOOK_SIGNATURE` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Signature::Plain => "plain",
            Signature::HmacSha256 => "hmac-sha256",
        }
    }

    fn parse(t: &str) -> Result<Signature, String> {
        match t.to_ascii_lowercase().as_str() {
            "plain" => Ok(Signature::Plain),
            "hmac-sha256" => Ok(Signature::HmacSha256),
            _ => Err("plain or hmac-sha256".into()),
        }
    }
}

/// Where and how events are delivered.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `None`: webhooks are off (events are only logged at debug level).
    pub url: Option<String>,
    pub secret: Option<String>,
    pub secret_header: String,
    pub signature: Signature,
    pub timeout: Duration,
    /// Attempts after the first.
    pub retry: u32,
    /// Event types to send; all six by default.
    pub events: Vec<EventKind>,
    pub queue_size: usize,
    pub workers: usize,
    pub dead_letter_file: PathBuf,
}

impl WebhookConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<WebhookConfig, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        WebhookConfig::from_vars(&vars)
    }

    /// Builds it from `(name, value)` pairs; empty values count as unset.
    pub fn from_vars(vars: &[(String, String)]) -> Result<WebhookConfig, ConfigError> {
        WebhookConfig::read(&Env::new(vars))
    }

    pub(super) fn read(env: &Env) -> Result<WebhookConfig, ConfigError> {
        Ok(WebhookConfig {
            url: env.parse_opt("WEBHOOK_URL", http_url)?,
            secret: env.parse_opt("WEBHOOK_SECRET", env::text)?,
            secret_header: env.parse("WEBHOOK_SECRET_HEADER", header_name)?,
            signature: env.parse("WEBHOOK_SIGNATURE", Signature::parse)?,
            timeout: env.parse("WEBHOOK_TIMEOUT", env::duration)?,
            retry: env.parse("WEBHOOK_RETRY", retry)?,
            events: env.parse("WEBHOOK_EVENTS", events)?,
            queue_size: env.parse("WEBHOOK_QUEUE_SIZE", |t| env::whole_number(t, 1, 1_000_000))?,
            workers: env.parse("WEBHOOK_WORKERS", |t| env::whole_number(t, 1, 256))?,
            dead_letter_file: match env.parse_opt("WEBHOOK_DEAD_LETTER_FILE", env::path)? {
                Some(path) => path,
                None => default_dead_letter_file(env.given("STATE_DIRECTORY").as_deref()),
            },
        })
    }
}

fn http_url(t: &str) -> Result<String, String> {
    let lower = t.to_ascii_lowercase();
    if (lower.starts_with("http://") || lower.starts_with("https://"))
        && t.parse::<tungstenite::http::Uri>().is_ok()
    {
        Ok(t.to_string())
    } else {
        Err("an http:// or https:// URL".into())
    }
}

fn header_name(t: &str) -> Result<String, String> {
    if t.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(t.to_string())
    } else {
        Err("an HTTP header name (letters, digits, '-' and '_')".into())
    }
}

/// More retries than this only park a call's later events behind a receiver that is down.
const MAX_RETRY: usize = 20;

fn retry(t: &str) -> Result<u32, String> {
    env::whole_number(t, 0, MAX_RETRY).map(|n| n as u32)
}

/// `all` (any case), or a comma list of event types; an unknown type is an error that lists
/// the valid ones, never silently ignored.
fn events(t: &str) -> Result<Vec<EventKind>, String> {
    if t.eq_ignore_ascii_case("all") {
        return Ok(EventKind::ALL.to_vec());
    }
    let mut out = Vec::new();
    for item in t.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match EventKind::from_name(item) {
            Some(kind) => out.push(kind),
            None => {
                let valid: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                return Err(format!(
                    "a comma list of {} (or \"all\"); {item:?} is unknown",
                    valid.join(", ")
                ));
            }
        }
    }
    Ok(out)
}

/// systemd may pass several colon-separated state directories; the first is avr-core's.
fn default_dead_letter_file(state_directory: Option<&str>) -> PathBuf {
    match state_directory.and_then(|dirs| dirs.split(':').next()) {
        Some(dir) => PathBuf::from(dir).join(DEAD_LETTER_FILE_NAME),
        None => PathBuf::from(".").join(DEAD_LETTER_FILE_NAME),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<WebhookConfig, ConfigError> {
        let vars: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        WebhookConfig::from_vars(&vars)
    }

    #[test]
    fn parses_without_sts_url() {
        let c = parse(&[
            ("WEBHOOK_URL", "https://hooks.example/avr"),
            ("WEBHOOK_SECRET", "s"),
            ("WEBHOOK_SIGNATURE", "HMAC-SHA256"),
            ("WEBHOOK_TIMEOUT", "2s"),
            ("WEBHOOK_RETRY", "3"),
            ("WEBHOOK_EVENTS", " call_ended , dtmf_digit "),
            ("WEBHOOK_QUEUE_SIZE", "10"),
            ("WEBHOOK_WORKERS", "2"),
        ])
        .unwrap();
        assert_eq!(c.url.as_deref(), Some("https://hooks.example/avr"));
        assert_eq!(c.secret.as_deref(), Some("s"));
        assert_eq!(c.secret_header, "X-AVR-WEBHOOK-SECRET");
        assert_eq!(c.signature, Signature::HmacSha256);
        assert_eq!(c.timeout, Duration::from_secs(2));
        assert_eq!(c.retry, 3);
        assert_eq!(c.events, [EventKind::CallEnded, EventKind::DtmfDigit]);
        assert_eq!((c.queue_size, c.workers), (10, 2));
        assert_eq!(
            c.dead_letter_file,
            PathBuf::from("./webhook-dead-letter.jsonl")
        );
    }

    #[test]
    fn unset_means_off_with_all_events() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.url, None);
        assert_eq!(c.events, EventKind::ALL);
        assert_eq!(
            parse(&[("WEBHOOK_EVENTS", "ALL")]).unwrap().events,
            EventKind::ALL
        );
    }

    #[test]
    fn an_unknown_event_type_is_an_error_listing_the_valid_ones() {
        let err = parse(&[("WEBHOOK_EVENTS", "call_started,call_answered")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "WEBHOOK_EVENTS=\"call_started,call_answered\" is not valid: a comma list of \
             call_initiated, call_started, transcription, interruption, dtmf_digit, call_ended \
             (or \"all\"); \"call_answered\" is unknown"
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            ("WEBHOOK_URL", "ftp://x"),
            ("WEBHOOK_SECRET_HEADER", "X Secret"),
            ("WEBHOOK_SIGNATURE", "md5"),
            ("WEBHOOK_TIMEOUT", "0"),
            ("WEBHOOK_RETRY", "21"),
            ("WEBHOOK_QUEUE_SIZE", "0"),
            ("WEBHOOK_WORKERS", "257"),
        ] {
            let text = parse(&[(var, value)]).expect_err(var).to_string();
            assert!(text.starts_with(&format!("{var}={value:?}")), "{text}");
        }
    }

    #[test]
    fn dead_letter_file_defaults_to_the_first_state_directory() {
        let c = parse(&[("STATE_DIRECTORY", "/var/lib/avr-core:/var/lib/other")]).unwrap();
        assert_eq!(
            c.dead_letter_file,
            PathBuf::from("/var/lib/avr-core/webhook-dead-letter.jsonl")
        );
        let c = parse(&[
            ("STATE_DIRECTORY", "/var/lib/avr-core"),
            ("WEBHOOK_DEAD_LETTER_FILE", "/tmp/dead.jsonl"),
        ])
        .unwrap();
        assert_eq!(c.dead_letter_file, PathBuf::from("/tmp/dead.jsonl"));
    }
}
