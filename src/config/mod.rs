//! Environment → validated [`Config`].
//!
//! Read once at startup and passed down, so nothing deep in the code calls `env::var`.
//! Every variable is a row of [`vars::VARS`]; every error names the variable, the value and
//! what is allowed (docs/configuration.md §1).

mod env;
mod pipeline;
pub mod vars;
mod webhook;

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use crate::proto::url_secrets::mask_url;
use env::Env;
pub use pipeline::{PipelineConfig, VadConfig};
pub use vars::usage_section;
pub use webhook::{Signature, WebhookConfig};

/// Which codec the caller sends; `Auto` detects it from the first frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecChoice {
    Auto,
    Slin,
    Ulaw,
    Alaw,
}

impl CodecChoice {
    /// The `AUDIO_CODEC` value.
    pub fn as_str(self) -> &'static str {
        match self {
            CodecChoice::Auto => "auto",
            CodecChoice::Slin => "slin",
            CodecChoice::Ulaw => "ulaw",
            CodecChoice::Alaw => "alaw",
        }
    }

    /// Asterisk's names for the G.711 laws (`pcmu`, `pcma`, `mulaw`) are accepted too.
    fn parse(t: &str) -> Result<CodecChoice, String> {
        match t.to_ascii_lowercase().as_str() {
            "auto" => Ok(CodecChoice::Auto),
            "slin" => Ok(CodecChoice::Slin),
            "ulaw" | "mulaw" | "pcmu" => Ok(CodecChoice::Ulaw),
            "alaw" | "pcma" => Ok(CodecChoice::Alaw),
            _ => Err("one of auto, slin, ulaw, alaw".into()),
        }
    }
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub port: u16,
    pub bind_address: IpAddr,
    pub http_port: Option<u16>,
    pub http_bind_address: IpAddr,
    pub http_token: Option<String>,
    /// The speech-to-speech agent; empty in pipeline mode.
    pub sts_url: String,
    /// Pipeline mode (`STS_URL` unset, `ASR_URL`, `LLM_URL` and `TTS_URL` set).
    pub pipeline: Option<Arc<PipelineConfig>>,
    pub sts_connect_timeout: Duration,
    /// The rate the agent speaks, both ways (docs/sts.md §6).
    pub sts_sample_rate: u32,
    pub max_calls: usize,
    /// AudioSocket connections waiting for their UUID, apart from the calls (docs/audiosocket.md
    /// §10.1).
    pub max_pending_connections: usize,
    /// No frame from Asterisk for this long ends the call (docs/audiosocket.md §10.5).
    pub caller_idle_timeout: Duration,
    pub audio_codec: CodecChoice,
    pub ambient_noise_file: Option<PathBuf>,
    pub ambient_noise_level: f32,
    pub webhook: WebhookConfig,
    pub call_metadata_ttl: Duration,
    /// The shared registry (Redis or Valkey); `None`: this process's memory.
    pub registry_url: Option<String>,
    /// The budget of each shared registry operation.
    pub registry_timeout: Duration,
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
                // A refused URL may still hold a password (`STS_URL=http://u:p@h`).
            } => write!(f, "{var}={:?} is not valid: {allowed}", mask_url(value)),
            ConfigError::Missing { var, why } => write!(f, "{var} is not set: {why}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The agent's rate the upstream contract fixes: every STS connector speaks it.
pub const UPSTREAM_SAMPLE_RATE: u32 = 8_000;

/// Lowest and highest `STS_SAMPLE_RATE`: the range of the AudioSocket rates (slin to
/// slin192), which the resampler is built and tested for.
const SAMPLE_RATES: (u32, u32) = (8_000, 192_000);

fn sample_rate(t: &str) -> Result<u32, String> {
    let (min, max) = SAMPLE_RATES;
    env::whole_number(t, min as usize, max as usize)
        .map(|n| n as u32)
        .map_err(|_| {
            format!("a sample rate in Hz from {min} to {max} (8000, 16000, 24000, 48000…)")
        })
}

/// `check-config`'s text for `STS_SAMPLE_RATE`: a rate other than the upstream one says
/// what it changes.
fn describe_sample_rate(rate: u32) -> String {
    if rate == UPSTREAM_SAMPLE_RATE {
        return rate.to_string();
    }
    format!(
        "{rate} (not the upstream 8000: the agent must speak {rate} Hz; it is told so by \
         sample_rate={rate} on its URL)"
    )
}

/// `REGISTRY_URL`: checked by the Redis client's own parser, so a URL that starts is one the
/// client can use; only the two schemes a shared registry over TCP means are accepted.
fn registry_url(t: &str) -> Result<String, String> {
    const ALLOWED: &str = "a redis:// or rediss:// URL: redis://[user:password@]host:port[/db]";
    let scheme = t.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if !matches!(scheme.as_deref(), Some("redis" | "rediss")) {
        return Err(ALLOWED.to_string());
    }
    match redis::Client::open(t) {
        Ok(_) => Ok(t.to_string()),
        Err(e) => Err(format!("{ALLOWED} ({})", mask_url(&e.to_string()))),
    }
}

/// Longest `REGISTRY_TIMEOUT`: the budget holds up a call's thread and `/call`, so a value
/// that would let a dead Redis stall calls for longer than a caller waits is refused.
const MAX_REGISTRY_TIMEOUT: Duration = Duration::from_secs(10);

fn registry_timeout(t: &str) -> Result<Duration, String> {
    match env::duration(t) {
        Ok(d) if !d.is_zero() && d <= MAX_REGISTRY_TIMEOUT => Ok(d),
        _ => Err(format!(
            "a duration from 1ms to {} s, e.g. 500ms",
            MAX_REGISTRY_TIMEOUT.as_secs()
        )),
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Config::from_vars(&vars)
    }

    /// Builds a config from `(name, value)` pairs; empty values count as unset.
    pub fn from_vars(vars: &[(String, String)]) -> Result<Config, ConfigError> {
        let env = Env::new(vars);
        // STS_URL set: STS mode, whatever else is set. Unset: pipeline mode, or nothing.
        let (sts_url, pipeline) = match env.parse_opt("STS_URL", sts_url)? {
            Some(url) => (url, None),
            None => match PipelineConfig::read(&env)? {
                Some(pipeline) => (String::new(), Some(Arc::new(pipeline))),
                None => return Err(missing_agent()),
            },
        };
        Ok(Config {
            port: env.parse("PORT", env::port)?,
            bind_address: env.parse("BIND_ADDRESS", env::ip_address)?,
            http_port: env.parse_opt("HTTP_PORT", env::port)?,
            http_bind_address: env.parse("HTTP_BIND_ADDRESS", env::ip_address)?,
            http_token: env.parse_opt("HTTP_TOKEN", env::text)?,
            sts_url,
            pipeline,
            sts_connect_timeout: env.parse("STS_CONNECT_TIMEOUT", env::duration)?,
            sts_sample_rate: env.parse("STS_SAMPLE_RATE", sample_rate)?,
            max_calls: env.parse("MAX_CALLS", |t| env::whole_number(t, 1, MAX_CALLS_LIMIT))?,
            max_pending_connections: env.parse("MAX_PENDING_CONNECTIONS", |t| {
                env::whole_number(t, 1, MAX_CALLS_LIMIT)
            })?,
            caller_idle_timeout: env.parse("CALLER_IDLE_TIMEOUT", env::duration)?,
            audio_codec: env.parse("AUDIO_CODEC", CodecChoice::parse)?,
            ambient_noise_file: env.parse_opt("AMBIENT_NOISE_FILE", env::path)?,
            ambient_noise_level: env.parse("AMBIENT_NOISE_LEVEL", gain)?,
            webhook: WebhookConfig::read(&env)?,
            call_metadata_ttl: env.parse("CALL_METADATA_TTL", env::duration)?,
            registry_url: env.parse_opt("REGISTRY_URL", registry_url)?,
            registry_timeout: env.parse("REGISTRY_TIMEOUT", registry_timeout)?,
            shutdown_grace: env.parse("SHUTDOWN_GRACE", env::duration)?,
            log_level: log_level(&env),
            ssl_cert_file: env.parse_opt("SSL_CERT_FILE", env::path)?,
        })
    }

    /// The effective configuration as `NAME=value` lines, in table order, secrets masked,
    /// for `check-config`.
    pub fn describe(&self) -> String {
        vars::VARS
            .iter()
            .map(|var| format!("{}={}\n", var.name, var.shown(self)))
            .collect()
    }
}

/// The log filter of the process environment, for the subcommands that read nothing else
/// (`simulate`, `echo-sts`, `webhooks`): `LOG_LEVEL`, else `RUST_LOG`, else the default.
pub fn log_level_from_env() -> String {
    let vars: Vec<(String, String)> = std::env::vars().collect();
    log_level(&Env::new(&vars))
}

fn log_level(env: &Env) -> String {
    env.given("LOG_LEVEL")
        .or_else(|| env.given("RUST_LOG"))
        .or_else(|| env.text("LOG_LEVEL"))
        .unwrap_or_default()
}

/// More concurrent calls than this would exceed any sane file-descriptor and thread limit.
const MAX_CALLS_LIMIT: usize = 100_000;

fn sts_url(t: &str) -> Result<String, String> {
    validate_ws_url(t).map(|()| t.to_string())
}

/// Neither mode is configured.
fn missing_agent() -> ConfigError {
    ConfigError::Missing {
        var: "STS_URL",
        why: "set it to the ws:// or wss:// URL of the speech-to-speech agent, or set ASR_URL, \
              LLM_URL and TTS_URL for pipeline mode"
            .to_string(),
    }
}

fn gain(t: &str) -> Result<f32, String> {
    match t.parse::<f32>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err("a gain from 0.0 to 1.0 (0 turns ambient noise off)".into()),
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
        assert_eq!(c.max_pending_connections, 64);
        assert_eq!(c.caller_idle_timeout, Duration::from_secs(10));
        assert_eq!(c.audio_codec, CodecChoice::Auto);
        assert!((c.ambient_noise_level - 0.90).abs() < 1e-6);
        assert_eq!(c.webhook.secret_header, "X-AVR-WEBHOOK-SECRET");
        assert_eq!(c.webhook.signature, Signature::Plain);
        assert_eq!(c.webhook.timeout, Duration::from_millis(3000));
        assert_eq!(c.webhook.retry, 0);
        assert_eq!(c.webhook.events.len(), 6);
        assert_eq!(c.webhook.queue_size, 1024);
        assert_eq!(c.webhook.workers, 4);
        assert_eq!(
            c.webhook.dead_letter_file,
            PathBuf::from("./webhook-dead-letter.jsonl")
        );
        assert_eq!(c.call_metadata_ttl, Duration::from_secs(60));
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.log_level, "info");
    }

    #[test]
    fn describe_prints_every_variable_in_table_order() {
        let c = Config::from_vars(&vars(&[("STS_URL", "ws://localhost:6030")])).unwrap();
        assert_eq!(
            c.describe(),
            "PORT=5001\n\
             BIND_ADDRESS=0.0.0.0\n\
             HTTP_PORT=(unset: HTTP service off)\n\
             HTTP_BIND_ADDRESS=0.0.0.0\n\
             HTTP_TOKEN=(unset)\n\
             STS_URL=ws://localhost:6030\n\
             STS_CONNECT_TIMEOUT=3000ms\n\
             STS_SAMPLE_RATE=8000\n\
             ASR_URL=(unset)\n\
             LLM_URL=(unset)\n\
             TTS_URL=(unset)\n\
             SYSTEM_MESSAGE=(unset: the call waits for the caller)\n\
             INTERRUPT_LISTENING=(unset)\n\
             VAD_POSITIVE_SPEECH_THRESHOLD=(unset)\n\
             VAD_NEGATIVE_SPEECH_THRESHOLD=(unset)\n\
             VAD_MIN_SPEECH_FRAMES=(unset)\n\
             VAD_REDEMPTION_FRAMES=(unset)\n\
             PIPELINE_CONNECT_TIMEOUT=(unset)\n\
             PIPELINE_FIRST_BYTE_TIMEOUT=(unset)\n\
             PIPELINE_RESPONSE_TIMEOUT=(unset)\n\
             MAX_CALLS=500\n\
             MAX_PENDING_CONNECTIONS=64\n\
             CALLER_IDLE_TIMEOUT=10000ms\n\
             AUDIO_CODEC=auto\n\
             AMBIENT_NOISE_FILE=(unset)\n\
             AMBIENT_NOISE_LEVEL=0.90\n\
             WEBHOOK_URL=(unset: webhooks off)\n\
             WEBHOOK_SECRET=(unset)\n\
             WEBHOOK_SECRET_HEADER=X-AVR-WEBHOOK-SECRET\n\
             WEBHOOK_SIGNATURE=plain\n\
             WEBHOOK_TIMEOUT=3000ms\n\
             WEBHOOK_RETRY=0\n\
             WEBHOOK_EVENTS=call_initiated,call_started,transcription,interruption,dtmf_digit,call_ended\n\
             WEBHOOK_QUEUE_SIZE=1024\n\
             WEBHOOK_WORKERS=4\n\
             WEBHOOK_DEAD_LETTER_FILE=./webhook-dead-letter.jsonl\n\
             CALL_METADATA_TTL=60000ms\n\
             REGISTRY_URL=(unset: /call metadata kept in this process's memory)\n\
             REGISTRY_TIMEOUT=500ms\n\
             SHUTDOWN_GRACE=30000ms\n\
             LOG_LEVEL=info\n\
             SSL_CERT_FILE=(unset)\n"
        );
    }

    /// Each table variable, a value other than its default, and how `check-config` shows it:
    /// proves parsing reads every row under its name and `describe` shows what was read.
    const EVERY_VARIABLE: [(&str, &str, &str); 42] = [
        ("PORT", "5002", "5002"),
        ("BIND_ADDRESS", "[::1]", "::1"),
        ("HTTP_PORT", "6001", "6001"),
        ("HTTP_BIND_ADDRESS", "127.0.0.1", "127.0.0.1"),
        ("HTTP_TOKEN", "tok", "********"),
        ("STS_URL", "wss://u:p@agent/sts", "wss://u:****@agent/sts"),
        ("STS_CONNECT_TIMEOUT", "2s", "2000ms"),
        (
            "STS_SAMPLE_RATE",
            "16000",
            "16000 (not the upstream 8000: the agent must speak 16000 Hz; it is told so by \
             sample_rate=16000 on its URL)",
        ),
        ("ASR_URL", "http://u:p@asr/s", "http://u:****@asr/s"),
        ("LLM_URL", "http://llm:1/p", "http://llm:1/p"),
        ("TTS_URL", "http://tts:2/t", "http://tts:2/t"),
        ("SYSTEM_MESSAGE", "Hi.", "Hi."),
        ("INTERRUPT_LISTENING", "yes", "true"),
        ("VAD_POSITIVE_SPEECH_THRESHOLD", "0.7", "0.7"),
        ("VAD_NEGATIVE_SPEECH_THRESHOLD", "0.4", "0.4"),
        ("VAD_MIN_SPEECH_FRAMES", "3", "3"),
        ("VAD_REDEMPTION_FRAMES", "9", "9"),
        ("PIPELINE_CONNECT_TIMEOUT", "1s", "1000ms"),
        ("PIPELINE_FIRST_BYTE_TIMEOUT", "2s", "2000ms"),
        ("PIPELINE_RESPONSE_TIMEOUT", "3s", "3000ms"),
        ("MAX_CALLS", "7", "7"),
        ("MAX_PENDING_CONNECTIONS", "9", "9"),
        ("CALLER_IDLE_TIMEOUT", "3s", "3000ms"),
        ("AUDIO_CODEC", "PCMA", "alaw"),
        ("AMBIENT_NOISE_FILE", "/n.raw", "/n.raw"),
        ("AMBIENT_NOISE_LEVEL", "0.5", "0.50"),
        ("WEBHOOK_URL", "http://h/e", "http://h/e"),
        ("WEBHOOK_SECRET", "s", "********"),
        ("WEBHOOK_SECRET_HEADER", "X-S", "X-S"),
        ("WEBHOOK_SIGNATURE", "hmac-sha256", "hmac-sha256"),
        ("WEBHOOK_TIMEOUT", "1m", "60000ms"),
        ("WEBHOOK_RETRY", "2", "2"),
        ("WEBHOOK_EVENTS", "call_ended", "call_ended"),
        ("WEBHOOK_QUEUE_SIZE", "9", "9"),
        ("WEBHOOK_WORKERS", "3", "3"),
        ("WEBHOOK_DEAD_LETTER_FILE", "/d.jsonl", "/d.jsonl"),
        ("CALL_METADATA_TTL", "5s", "5000ms"),
        (
            "REGISTRY_URL",
            "redis://avr:s3cret@redis:6380/2",
            "redis://avr:****@redis:6380/2",
        ),
        ("REGISTRY_TIMEOUT", "1s", "1000ms"),
        ("SHUTDOWN_GRACE", "500ms", "500ms"),
        ("LOG_LEVEL", "debug", "debug"),
        ("SSL_CERT_FILE", "/ca.pem", "/ca.pem"),
    ];

    #[test]
    fn every_variable_is_read_and_shown() {
        let names: Vec<&str> = EVERY_VARIABLE.iter().map(|(n, _, _)| *n).collect();
        let table: Vec<&str> = vars::VARS.iter().map(|v| v.name).collect();
        assert_eq!(names, table);
        // STS_URL makes STS mode, where the pipeline rows are not read: each mode's rows are
        // checked in a config of that mode.
        let pipeline_row =
            |n: &str| vars::find(n).is_some_and(|v| v.meaning.starts_with("pipeline"));
        let given = |keep: &dyn Fn(&str) -> bool| {
            let pairs: Vec<(&str, &str)> = EVERY_VARIABLE
                .iter()
                .filter(|(n, _, _)| keep(n))
                .map(|(n, v, _)| (*n, *v))
                .collect();
            Config::from_vars(&vars(&pairs)).unwrap().describe()
        };
        let sts = given(&|n| !pipeline_row(n));
        let pipeline = given(&|n| n != "STS_URL");
        for (n, _, shown) in EVERY_VARIABLE {
            let text = if pipeline_row(n) { &pipeline } else { &sts };
            let line = format!("{n}={shown}");
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }

    #[test]
    fn log_level_falls_back_to_rust_log() {
        let level = |pairs: &[(&str, &str)]| Config::from_vars(&vars(pairs)).unwrap().log_level;
        let sts = ("STS_URL", "ws://a:1");
        assert_eq!(
            level(&[sts, ("RUST_LOG", "avr_core=trace")]),
            "avr_core=trace"
        );
        assert_eq!(
            level(&[sts, ("RUST_LOG", "trace"), ("LOG_LEVEL", "warn")]),
            "warn"
        );
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
    fn the_mode_is_sts_pipeline_or_a_clear_error() {
        let err = Config::from_vars(&vars(&[("ASR_URL", "http://asr:6010")])).unwrap_err();
        assert!(err.to_string().starts_with("LLM_URL is not set"), "{err}");
        let err = Config::from_vars(&vars(&[])).unwrap_err();
        assert!(err.to_string().starts_with("STS_URL is not set"), "{err}");
        assert!(err.to_string().contains("pipeline mode"), "{err}");
        let services = [
            ("ASR_URL", "http://asr:6010/speech-to-text-stream"),
            ("LLM_URL", "http://llm:6002/prompt-stream"),
            ("TTS_URL", "http://tts:6012/text-to-speech-stream"),
        ];
        let c = Config::from_vars(&vars(&services)).unwrap();
        assert!(c.pipeline.is_some() && c.sts_url.is_empty());
        let mut both = services.to_vec();
        both.push(("STS_URL", "ws://agent:6030"));
        let c = Config::from_vars(&vars(&both)).unwrap();
        assert!(c.pipeline.is_none(), "STS_URL wins");
    }

    #[test]
    fn bad_values_name_variable_value_and_allowed() {
        let cases = [
            ("PORT", "70000"),
            ("MAX_CALLS", "0"),
            ("MAX_PENDING_CONNECTIONS", "0"),
            ("CALLER_IDLE_TIMEOUT", "0"),
            ("AUDIO_CODEC", "opus"),
            ("AMBIENT_NOISE_LEVEL", "1.5"),
            ("WEBHOOK_SIGNATURE", "md5"),
            ("WEBHOOK_EVENTS", "call_started,bogus"),
            ("STS_CONNECT_TIMEOUT", "soon"),
            ("STS_SAMPLE_RATE", "7999"),
            ("STS_SAMPLE_RATE", "16k"),
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
    fn a_refused_url_is_shown_masked() {
        for (var, value) in [
            ("STS_URL", "http://bob:hunter2@agent/x?token=abc"),
            ("WEBHOOK_URL", "ftp://bob:hunter2@h/?api_key=abc"),
        ] {
            let err = Config::from_vars(&vars(&[("STS_URL", "ws://a:1"), (var, value)]))
                .expect_err(var)
                .to_string();
            assert!(err.starts_with(var), "{err}");
            assert!(err.contains("bob:****@"), "{err}");
            assert!(!err.contains("hunter2") && !err.contains("abc"), "{err}");
        }
    }

    #[test]
    fn dead_letter_file_defaults_to_state_directory() {
        let c = Config::from_vars(&vars(&[
            ("STS_URL", "ws://a:1"),
            ("STATE_DIRECTORY", "/var/lib/avr-core"),
        ]))
        .unwrap();
        assert_eq!(
            c.webhook.dead_letter_file,
            PathBuf::from("/var/lib/avr-core/webhook-dead-letter.jsonl")
        );
    }
}
