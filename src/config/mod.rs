//! Environment → validated [`Config`].
//!
//! Read once at startup and passed down, so nothing deep in the code calls `env::var`.
//! Every error names the variable, the value and what is allowed (SPEC §2).

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Which codec the caller sends; `Auto` detects it from the first frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecChoice {
    Auto,
    Slin,
    Ulaw,
    Alaw,
}

/// What the webhook secret header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    /// The secret itself (the Node.js original's behaviour).
    Plain,
    /// Lowercase hex HMAC-SHA256 of the body, keyed by the secret.
    HmacSha256,
}

/// The six webhook event types, in lifecycle order.
pub const EVENT_TYPES: [&str; 6] = [
    "call_initiated",
    "call_started",
    "transcription",
    "interruption",
    "dtmf_digit",
    "call_ended",
];

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub port: u16,
    pub bind_address: IpAddr,
    pub http_port: Option<u16>,
    pub http_bind_address: IpAddr,
    pub http_token: Option<String>,
    pub sts_url: String,
    pub sts_connect_timeout: Duration,
    pub max_calls: usize,
    pub audio_codec: CodecChoice,
    pub ambient_noise_file: Option<PathBuf>,
    pub ambient_noise_level: f32,
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<String>,
    pub webhook_secret_header: String,
    pub webhook_signature: Signature,
    pub webhook_timeout: Duration,
    pub webhook_retry: u32,
    /// Event types to send; all six by default.
    pub webhook_events: Vec<String>,
    pub webhook_queue_size: usize,
    pub webhook_workers: usize,
    pub webhook_dead_letter_file: PathBuf,
    pub call_metadata_ttl: Duration,
    pub shutdown_grace: Duration,
    pub log_level: String,
    /// Extra CA certificates (PEM) for `wss://` agents behind a private CA.
    pub ssl_cert_file: Option<PathBuf>,
}

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// A variable has a value outside what it allows.
    Invalid {
        var: &'static str,
        value: String,
        allowed: String,
    },
    /// A required variable is not set.
    Missing { var: &'static str, why: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Invalid {
                var,
                value,
                allowed,
            } => write!(f, "{var}={value:?} is not valid: {allowed}"),
            ConfigError::Missing { var, why } => write!(f, "{var} is not set: {why}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Variables of the original's ASR→LLM→TTS pipeline mode, which avr-core does not support yet.
const PIPELINE_VARS: [&str; 6] = [
    "ASR_URL",
    "LLM_URL",
    "TTS_URL",
    "INTERRUPT_LISTENING",
    "SYSTEM_MESSAGE",
    "VAD_",
];

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Config::from_vars(&vars)
    }

    /// Builds a config from `(name, value)` pairs; empty values count as unset.
    pub fn from_vars(vars: &[(String, String)]) -> Result<Config, ConfigError> {
        let get = |name: &str| {
            vars.iter()
                .rev()
                .find(|(k, v)| k == name && !v.trim().is_empty())
                .map(|(_, v)| v.trim().to_string())
        };

        let sts_url = match get("STS_URL") {
            Some(url) => {
                validate_ws_url(&url).map_err(|allowed| ConfigError::Invalid {
                    var: "STS_URL",
                    value: url.clone(),
                    allowed,
                })?;
                url
            }
            None => {
                let pipeline = vars
                    .iter()
                    .find(|(k, v)| !v.is_empty() && PIPELINE_VARS.iter().any(|p| k.starts_with(p)));
                let why = match pipeline {
                    Some((k, _)) => format!(
                        "{k} is set, but the ASR/LLM/TTS pipeline mode is not supported yet; \
                         set STS_URL to a ws:// or wss:// speech-to-speech agent"
                    ),
                    None => "set it to the ws:// or wss:// URL of the speech-to-speech agent"
                        .to_string(),
                };
                return Err(ConfigError::Missing {
                    var: "STS_URL",
                    why,
                });
            }
        };

        let webhook_url = match get("WEBHOOK_URL") {
            Some(url) => {
                let lower = url.to_ascii_lowercase();
                if !(lower.starts_with("http://") || lower.starts_with("https://"))
                    || url.parse::<tungstenite::http::Uri>().is_err()
                {
                    return Err(ConfigError::Invalid {
                        var: "WEBHOOK_URL",
                        value: url,
                        allowed: "an http:// or https:// URL".into(),
                    });
                }
                Some(url)
            }
            None => None,
        };

        let webhook_events = match get("WEBHOOK_EVENTS") {
            None => EVENT_TYPES.iter().map(|s| s.to_string()).collect(),
            Some(list) if list.eq_ignore_ascii_case("all") => {
                EVENT_TYPES.iter().map(|s| s.to_string()).collect()
            }
            Some(list) => {
                let mut out = Vec::new();
                for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    if !EVENT_TYPES.contains(&item) {
                        return Err(ConfigError::Invalid {
                            var: "WEBHOOK_EVENTS",
                            value: list.clone(),
                            allowed: format!(
                                "a comma list of {} (or \"all\"); {item:?} is unknown",
                                EVENT_TYPES.join(", ")
                            ),
                        });
                    }
                    out.push(item.to_string());
                }
                out
            }
        };

        let dead_letter_default = match get("STATE_DIRECTORY") {
            // systemd may pass several colon-separated directories; the first is ours.
            Some(dir) => PathBuf::from(dir.split(':').next().unwrap_or(&dir))
                .join("webhook-dead-letter.jsonl"),
            None => PathBuf::from("./webhook-dead-letter.jsonl"),
        };

        let secret_header = get("WEBHOOK_SECRET_HEADER").unwrap_or("X-AVR-WEBHOOK-SECRET".into());
        if !is_header_name(&secret_header) {
            return Err(ConfigError::Invalid {
                var: "WEBHOOK_SECRET_HEADER",
                value: secret_header,
                allowed: "an HTTP header name (letters, digits, '-' and '_')".into(),
            });
        }

        Ok(Config {
            port: parse_port(get("PORT"), "PORT", 5001)?,
            bind_address: parse_ip(get("BIND_ADDRESS"), "BIND_ADDRESS")?,
            http_port: match get("HTTP_PORT") {
                Some(v) => Some(parse_port(Some(v), "HTTP_PORT", 0)?),
                None => None,
            },
            http_bind_address: parse_ip(get("HTTP_BIND_ADDRESS"), "HTTP_BIND_ADDRESS")?,
            http_token: get("HTTP_TOKEN"),
            sts_url,
            sts_connect_timeout: parse_duration_var(
                get("STS_CONNECT_TIMEOUT"),
                "STS_CONNECT_TIMEOUT",
                Duration::from_millis(3000),
            )?,
            max_calls: parse_range(get("MAX_CALLS"), "MAX_CALLS", 500, 1, 100_000)?,
            audio_codec: match get("AUDIO_CODEC")
                .map(|s| s.to_ascii_lowercase())
                .as_deref()
            {
                None | Some("auto") => CodecChoice::Auto,
                Some("slin") => CodecChoice::Slin,
                Some("ulaw") | Some("mulaw") | Some("pcmu") => CodecChoice::Ulaw,
                Some("alaw") | Some("pcma") => CodecChoice::Alaw,
                Some(other) => {
                    return Err(ConfigError::Invalid {
                        var: "AUDIO_CODEC",
                        value: other.to_string(),
                        allowed: "one of auto, slin, ulaw, alaw".into(),
                    })
                }
            },
            ambient_noise_file: get("AMBIENT_NOISE_FILE").map(PathBuf::from),
            ambient_noise_level: match get("AMBIENT_NOISE_LEVEL") {
                None => 0.90,
                Some(v) => match v.parse::<f32>() {
                    Ok(x) if (0.0..=1.0).contains(&x) => x,
                    _ => {
                        return Err(ConfigError::Invalid {
                            var: "AMBIENT_NOISE_LEVEL",
                            value: v,
                            allowed: "a gain from 0.0 to 1.0 (0 turns ambient noise off)".into(),
                        })
                    }
                },
            },
            webhook_url,
            webhook_secret: get("WEBHOOK_SECRET"),
            webhook_secret_header: secret_header,
            webhook_signature: match get("WEBHOOK_SIGNATURE")
                .map(|s| s.to_ascii_lowercase())
                .as_deref()
            {
                None | Some("plain") => Signature::Plain,
                Some("hmac-sha256") => Signature::HmacSha256,
                Some(other) => {
                    return Err(ConfigError::Invalid {
                        var: "WEBHOOK_SIGNATURE",
                        value: other.to_string(),
                        allowed: "plain or hmac-sha256".into(),
                    })
                }
            },
            webhook_timeout: parse_duration_var(
                get("WEBHOOK_TIMEOUT"),
                "WEBHOOK_TIMEOUT",
                Duration::from_millis(3000),
            )?,
            webhook_retry: parse_range(get("WEBHOOK_RETRY"), "WEBHOOK_RETRY", 0, 0, 20)? as u32,
            webhook_events,
            webhook_queue_size: parse_range(
                get("WEBHOOK_QUEUE_SIZE"),
                "WEBHOOK_QUEUE_SIZE",
                1024,
                1,
                1_000_000,
            )?,
            webhook_workers: parse_range(get("WEBHOOK_WORKERS"), "WEBHOOK_WORKERS", 4, 1, 256)?,
            webhook_dead_letter_file: get("WEBHOOK_DEAD_LETTER_FILE")
                .map(PathBuf::from)
                .unwrap_or(dead_letter_default),
            call_metadata_ttl: parse_duration_var(
                get("CALL_METADATA_TTL"),
                "CALL_METADATA_TTL",
                Duration::from_secs(60),
            )?,
            shutdown_grace: parse_duration_var(
                get("SHUTDOWN_GRACE"),
                "SHUTDOWN_GRACE",
                Duration::from_secs(30),
            )?,
            log_level: get("LOG_LEVEL")
                .or_else(|| get("RUST_LOG"))
                .unwrap_or_else(|| "info".into()),
            ssl_cert_file: get("SSL_CERT_FILE").map(PathBuf::from),
        })
    }

    /// The effective configuration as `NAME=value` lines, secrets masked, for `check-config`.
    pub fn describe(&self) -> String {
        let secret = |v: &Option<String>| match v {
            Some(_) => "********".to_string(),
            None => "(unset)".to_string(),
        };
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let lines = [
            ("PORT", self.port.to_string()),
            ("BIND_ADDRESS", self.bind_address.to_string()),
            (
                "HTTP_PORT",
                self.http_port
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "(unset: HTTP service off)".into()),
            ),
            ("HTTP_BIND_ADDRESS", self.http_bind_address.to_string()),
            ("HTTP_TOKEN", secret(&self.http_token)),
            ("STS_URL", mask_url_password(&self.sts_url)),
            ("STS_CONNECT_TIMEOUT", ms(self.sts_connect_timeout)),
            ("MAX_CALLS", self.max_calls.to_string()),
            (
                "AUDIO_CODEC",
                format!("{:?}", self.audio_codec).to_ascii_lowercase(),
            ),
            (
                "AMBIENT_NOISE_FILE",
                self.ambient_noise_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "(unset)".into()),
            ),
            (
                "AMBIENT_NOISE_LEVEL",
                format!("{:.2}", self.ambient_noise_level),
            ),
            (
                "WEBHOOK_URL",
                self.webhook_url
                    .as_deref()
                    .map(mask_url_password)
                    .unwrap_or_else(|| "(unset: webhooks off)".into()),
            ),
            ("WEBHOOK_SECRET", secret(&self.webhook_secret)),
            ("WEBHOOK_SECRET_HEADER", self.webhook_secret_header.clone()),
            (
                "WEBHOOK_SIGNATURE",
                match self.webhook_signature {
                    Signature::Plain => "plain".into(),
                    Signature::HmacSha256 => "hmac-sha256".into(),
                },
            ),
            ("WEBHOOK_TIMEOUT", ms(self.webhook_timeout)),
            ("WEBHOOK_RETRY", self.webhook_retry.to_string()),
            ("WEBHOOK_EVENTS", self.webhook_events.join(",")),
            ("WEBHOOK_QUEUE_SIZE", self.webhook_queue_size.to_string()),
            ("WEBHOOK_WORKERS", self.webhook_workers.to_string()),
            (
                "WEBHOOK_DEAD_LETTER_FILE",
                self.webhook_dead_letter_file.display().to_string(),
            ),
            ("CALL_METADATA_TTL", ms(self.call_metadata_ttl)),
            ("SHUTDOWN_GRACE", ms(self.shutdown_grace)),
            ("LOG_LEVEL", self.log_level.clone()),
            (
                "SSL_CERT_FILE",
                self.ssl_cert_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "(unset)".into()),
            ),
        ];
        let mut out = String::new();
        for (k, v) in lines {
            out.push_str(&format!("{k}={v}\n"));
        }
        out
    }
}

/// Parses `500`, `500ms`, `3s` or `2m`. Plain numbers are milliseconds (the original's unit).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000)
    } else {
        (t, 1)
    };
    let n: u64 = num.trim().parse().ok()?;
    n.checked_mul(mult).map(Duration::from_millis)
}

/// Checks that `url` is a `ws://` or `wss://` URL with a host; the error says what is allowed.
pub fn validate_ws_url(url: &str) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("ws://") || lower.starts_with("wss://")) {
        return Err("only WebSocket speech-to-speech agents are supported: \
                    use a ws:// or wss:// URL"
            .into());
    }
    match url.parse::<tungstenite::http::Uri>() {
        Ok(uri) if uri.host().is_some_and(|h| !h.is_empty()) => Ok(()),
        _ => Err("a ws:// or wss:// URL with a host, e.g. ws://127.0.0.1:6030".into()),
    }
}

/// Replaces the password of `scheme://user:pass@host` so it never reaches a log.
pub fn mask_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..auth_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}://{user}:****@{}", &url[..scheme_end], &rest[at + 1..])
        }
        None => url.to_string(),
    }
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn parse_port(v: Option<String>, var: &'static str, default: u16) -> Result<u16, ConfigError> {
    match v {
        None => Ok(default),
        Some(v) => v.parse::<u16>().map_err(|_| ConfigError::Invalid {
            var,
            value: v,
            allowed: "a TCP port from 0 to 65535 (0 picks a free port)".into(),
        }),
    }
}

fn parse_ip(v: Option<String>, var: &'static str) -> Result<IpAddr, ConfigError> {
    match v {
        None => Ok(IpAddr::from([0, 0, 0, 0])),
        Some(v) => v
            .trim_matches(|c| c == '[' || c == ']')
            .parse()
            .map_err(|_| ConfigError::Invalid {
                var,
                value: v,
                allowed: "an IPv4 or IPv6 address, e.g. 0.0.0.0, 127.0.0.1 or ::".into(),
            }),
    }
}

fn parse_range(
    v: Option<String>,
    var: &'static str,
    default: usize,
    min: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    match v {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ConfigError::Invalid {
                var,
                value: v,
                allowed: format!("a whole number from {min} to {max}"),
            }),
        },
    }
}

fn parse_duration_var(
    v: Option<String>,
    var: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(v) => match parse_duration(&v) {
            Some(d) if d > Duration::ZERO && d <= Duration::from_secs(24 * 3600) => Ok(d),
            _ => Err(ConfigError::Invalid {
                var,
                value: v,
                allowed:
                    "a duration above zero: milliseconds (3000) or with a unit (500ms, 3s, 2m)"
                        .into(),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::from_vars(&vars(&[("STS_URL", "ws://localhost:6030")])).unwrap();
        assert_eq!(c.port, 5001);
        assert_eq!(c.bind_address.to_string(), "0.0.0.0");
        assert_eq!(c.http_port, None);
        assert_eq!(c.sts_connect_timeout, Duration::from_millis(3000));
        assert_eq!(c.max_calls, 500);
        assert_eq!(c.audio_codec, CodecChoice::Auto);
        assert!((c.ambient_noise_level - 0.90).abs() < 1e-6);
        assert_eq!(c.webhook_secret_header, "X-AVR-WEBHOOK-SECRET");
        assert_eq!(c.webhook_signature, Signature::Plain);
        assert_eq!(c.webhook_timeout, Duration::from_millis(3000));
        assert_eq!(c.webhook_retry, 0);
        assert_eq!(c.webhook_events.len(), 6);
        assert_eq!(c.webhook_queue_size, 1024);
        assert_eq!(c.webhook_workers, 4);
        assert_eq!(
            c.webhook_dead_letter_file,
            PathBuf::from("./webhook-dead-letter.jsonl")
        );
        assert_eq!(c.call_metadata_ttl, Duration::from_secs(60));
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.log_level, "info");
    }

    #[test]
    fn durations_accept_plain_ms_and_units() {
        assert_eq!(parse_duration("3000"), Some(Duration::from_millis(3000)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("3s"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("2h"), None);
        assert_eq!(parse_duration("-1"), None);
        assert_eq!(parse_duration("abc"), None);
    }

    #[test]
    fn sts_url_must_be_websocket() {
        let err = Config::from_vars(&vars(&[("STS_URL", "http://x:1")])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("STS_URL"), "{text}");
        assert!(text.contains("only WebSocket"), "{text}");
        assert!(Config::from_vars(&vars(&[("STS_URL", "wss://agent.example/sts")])).is_ok());
    }

    #[test]
    fn missing_sts_url_mentions_pipeline_mode_when_its_vars_are_set() {
        let err = Config::from_vars(&vars(&[("ASR_URL", "http://asr:6010")])).unwrap_err();
        assert!(err.to_string().contains("ASR_URL"), "{err}");
        assert!(err.to_string().contains("not supported"), "{err}");
        let err = Config::from_vars(&vars(&[])).unwrap_err();
        assert!(err.to_string().starts_with("STS_URL is not set"), "{err}");
    }

    #[test]
    fn bad_values_name_variable_value_and_allowed() {
        let cases = [
            ("PORT", "70000"),
            ("MAX_CALLS", "0"),
            ("AUDIO_CODEC", "opus"),
            ("AMBIENT_NOISE_LEVEL", "1.5"),
            ("WEBHOOK_SIGNATURE", "md5"),
            ("WEBHOOK_EVENTS", "call_started,bogus"),
            ("STS_CONNECT_TIMEOUT", "soon"),
            ("BIND_ADDRESS", "localhost:1"),
            ("WEBHOOK_URL", "ftp://x"),
        ];
        for (var, value) in cases {
            let err =
                Config::from_vars(&vars(&[("STS_URL", "ws://a:1"), (var, value)])).expect_err(var);
            let text = err.to_string();
            assert!(text.starts_with(var), "{text}");
            assert!(text.contains(value), "{text}");
        }
    }

    #[test]
    fn ambient_level_zero_is_allowed() {
        let c = Config::from_vars(&vars(&[
            ("STS_URL", "ws://a:1"),
            ("AMBIENT_NOISE_LEVEL", "0"),
        ]))
        .unwrap();
        assert_eq!(c.ambient_noise_level, 0.0);
    }

    #[test]
    fn describe_masks_secrets() {
        let c = Config::from_vars(&vars(&[
            ("STS_URL", "wss://bob:hunter2@agent:443/x"),
            ("WEBHOOK_SECRET", "topsecret"),
            ("HTTP_TOKEN", "tok123"),
        ]))
        .unwrap();
        let text = c.describe();
        assert!(!text.contains("topsecret"));
        assert!(!text.contains("tok123"));
        assert!(!text.contains("hunter2"));
        assert!(text.contains("STS_URL=wss://bob:****@agent:443/x"));
    }

    #[test]
    fn dead_letter_file_defaults_to_state_directory() {
        let c = Config::from_vars(&vars(&[
            ("STS_URL", "ws://a:1"),
            ("STATE_DIRECTORY", "/var/lib/avr-core"),
        ]))
        .unwrap();
        assert_eq!(
            c.webhook_dead_letter_file,
            PathBuf::from("/var/lib/avr-core/webhook-dead-letter.jsonl")
        );
    }
}
