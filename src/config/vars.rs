//! Every environment variable avr-core reads, in one table.
//!
//! The table is the single list: parsing takes each default from it ([`super::env::Env`]),
//! `check-config` prints its rows in order ([`super::Config::describe`]), `--help` lists them
//! ([`usage_section`]), and a test holds README.md's table and packaging/avr-core.env to it.
//! Adding a variable means one row here, its field, and one line that parses it.
//!
//! Not in the table, on purpose: `RUST_LOG` (read when `LOG_LEVEL` is unset, like the
//! original), `STATE_DIRECTORY` (set by systemd, not by the operator; it places the default
//! dead-letter file), and the upstream `VAD_*` variables that have no meaning here
//! (docs/pipeline.md says which and why).

use super::{mask_url, Config};
use crate::proto::event::EventKind;

/// What an unset variable means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenUnset {
    /// This value is used, parsed exactly like one the operator gave.
    Value(&'static str),
    /// Nothing is used; the text (possibly empty) says what that turns off.
    Off(&'static str),
    /// avr-core refuses to start.
    Required,
    /// Computed from elsewhere; the text says how.
    Derived(&'static str),
}

/// One environment variable.
pub struct Var {
    pub name: &'static str,
    pub when_unset: WhenUnset,
    /// What it means and what it allows, in one line.
    pub meaning: &'static str,
    /// Shown as `********` by `check-config`.
    pub secret: bool,
    /// The effective value as `check-config` shows it; `None` when unset.
    pub show: fn(&Config) -> Option<String>,
}

impl Var {
    /// The default as `--help` shows it.
    pub fn default_text(&self) -> String {
        match self.when_unset {
            WhenUnset::Value(v) => v.to_string(),
            WhenUnset::Off("") => "unset".to_string(),
            WhenUnset::Off(off) => format!("unset: {off}"),
            WhenUnset::Required => "required".to_string(),
            WhenUnset::Derived(how) => how.to_string(),
        }
    }

    /// `check-config`'s text for this variable in `config`.
    pub fn shown(&self, config: &Config) -> String {
        match ((self.show)(config), self.when_unset) {
            (Some(_), _) if self.secret => "********".to_string(),
            (Some(value), _) => value,
            (None, WhenUnset::Off(off)) if !off.is_empty() => format!("(unset: {off})"),
            (None, _) => "(unset)".to_string(),
        }
    }
}

/// Milliseconds with their unit, as `check-config` shows every duration.
fn ms(d: std::time::Duration) -> Option<String> {
    Some(format!("{}ms", d.as_millis()))
}

/// A pipeline-mode value, shown only in pipeline mode.
fn pipeline(c: &Config, show: impl Fn(&super::PipelineConfig) -> String) -> Option<String> {
    c.pipeline.as_deref().map(show)
}

fn display(p: &Option<std::path::PathBuf>) -> Option<String> {
    p.as_ref().map(|p| p.display().to_string())
}

/// Every variable, in `check-config` order.
pub const VARS: [Var; 42] = [
    Var {
        name: "PORT",
        when_unset: WhenUnset::Value("5001"),
        meaning: "AudioSocket TCP port (0 picks a free port)",
        secret: false,
        show: |c| Some(c.port.to_string()),
    },
    Var {
        name: "BIND_ADDRESS",
        when_unset: WhenUnset::Value("0.0.0.0"),
        meaning: "AudioSocket bind address (IPv4 or IPv6)",
        secret: false,
        show: |c| Some(c.bind_address.to_string()),
    },
    Var {
        name: "HTTP_PORT",
        when_unset: WhenUnset::Off("HTTP service off"),
        meaning: "port of the HTTP service (/health, /call, /metrics)",
        secret: false,
        show: |c| c.http_port.map(|p| p.to_string()),
    },
    Var {
        name: "HTTP_BIND_ADDRESS",
        when_unset: WhenUnset::Value("0.0.0.0"),
        meaning: "HTTP service bind address",
        secret: false,
        show: |c| Some(c.http_bind_address.to_string()),
    },
    Var {
        name: "HTTP_TOKEN",
        when_unset: WhenUnset::Off(""),
        meaning: "if set, POST /call needs \"Authorization: Bearer <token>\"",
        secret: true,
        show: |c| c.http_token.clone(),
    },
    Var {
        name: "STS_URL",
        when_unset: WhenUnset::Derived(
            "required, unless ASR_URL, LLM_URL and TTS_URL are set (pipeline mode)",
        ),
        meaning: "ws:// or wss:// URL of the speech-to-speech agent (STS mode)",
        secret: false,
        show: |c| (!c.sts_url.is_empty()).then(|| mask_url(&c.sts_url)),
    },
    Var {
        name: "STS_CONNECT_TIMEOUT",
        when_unset: WhenUnset::Value("3000"),
        meaning: "budget for TCP + TLS + WebSocket handshake with the agent",
        secret: false,
        show: |c| ms(c.sts_connect_timeout),
    },
    Var {
        name: "STS_SAMPLE_RATE",
        when_unset: WhenUnset::Value("8000"),
        meaning: "rate (Hz) of the agent's audio both ways; other rates are resampled \
                  and announced as sample_rate=<Hz> on the agent's URL",
        secret: false,
        show: |c| Some(super::describe_sample_rate(c.sts_sample_rate)),
    },
    Var {
        name: "ASR_URL",
        when_unset: WhenUnset::Off(""),
        meaning: "pipeline mode: http:// URL of the speech-to-text stream service",
        secret: false,
        show: |c| pipeline(c, |p| mask_url(&p.asr_url.url)),
    },
    Var {
        name: "LLM_URL",
        when_unset: WhenUnset::Off(""),
        meaning: "pipeline mode: http:// URL of the language model's prompt stream",
        secret: false,
        show: |c| pipeline(c, |p| mask_url(&p.llm_url.url)),
    },
    Var {
        name: "TTS_URL",
        when_unset: WhenUnset::Off(""),
        meaning: "pipeline mode: http:// URL of the text-to-speech stream service",
        secret: false,
        show: |c| pipeline(c, |p| mask_url(&p.tts_url.url)),
    },
    Var {
        name: "SYSTEM_MESSAGE",
        when_unset: WhenUnset::Off("the call waits for the caller"),
        meaning: "pipeline mode: the greeting, spoken as the call starts",
        secret: false,
        show: |c| c.pipeline.as_ref()?.system_message.clone(),
    },
    Var {
        name: "INTERRUPT_LISTENING",
        when_unset: WhenUnset::Value("false"),
        meaning: "pipeline mode: true turns barge-in off (the caller is not heard while \
                  the agent speaks)",
        secret: false,
        show: |c| pipeline(c, |p| p.interrupt_listening.to_string()),
    },
    Var {
        name: "VAD_POSITIVE_SPEECH_THRESHOLD",
        when_unset: WhenUnset::Value("0.5"),
        meaning: "pipeline mode: voice-activity score (0-1) from which a 16 ms frame is speech",
        secret: false,
        show: |c| pipeline(c, |p| p.vad.positive_threshold.to_string()),
    },
    Var {
        name: "VAD_NEGATIVE_SPEECH_THRESHOLD",
        when_unset: WhenUnset::Derived("0.15 below the positive threshold"),
        meaning: "pipeline mode: score under which a frame counts as silence again",
        secret: false,
        show: |c| {
            c.pipeline
                .as_ref()?
                .vad
                .negative_threshold
                .map(|t| t.to_string())
        },
    },
    Var {
        name: "VAD_MIN_SPEECH_FRAMES",
        when_unset: WhenUnset::Value("2"),
        meaning: "pipeline mode: 16 ms speech frames in a row that make a barge-in",
        secret: false,
        show: |c| pipeline(c, |p| p.vad.min_speech_frames.to_string()),
    },
    Var {
        name: "VAD_REDEMPTION_FRAMES",
        when_unset: WhenUnset::Value("20"),
        meaning: "pipeline mode: 16 ms silent frames in a row that end the caller's speech",
        secret: false,
        show: |c| pipeline(c, |p| p.vad.redemption_frames.to_string()),
    },
    Var {
        name: "PIPELINE_CONNECT_TIMEOUT",
        when_unset: WhenUnset::Value("3000"),
        meaning: "pipeline mode: budget to reach a service (name lookup and TCP)",
        secret: false,
        show: |c| pipeline(c, |p| format!("{}ms", p.connect_timeout.as_millis())),
    },
    Var {
        name: "PIPELINE_FIRST_BYTE_TIMEOUT",
        when_unset: WhenUnset::Value("10000"),
        meaning: "pipeline mode: budget for a model or speech answer to start",
        secret: false,
        show: |c| pipeline(c, |p| format!("{}ms", p.first_byte_timeout.as_millis())),
    },
    Var {
        name: "PIPELINE_RESPONSE_TIMEOUT",
        when_unset: WhenUnset::Value("60000"),
        meaning: "pipeline mode: budget for a whole model or speech answer",
        secret: false,
        show: |c| pipeline(c, |p| format!("{}ms", p.response_timeout.as_millis())),
    },
    Var {
        name: "MAX_CALLS",
        when_unset: WhenUnset::Value("500"),
        meaning: "concurrent calls; the next one is hung up",
        secret: false,
        show: |c| Some(c.max_calls.to_string()),
    },
    Var {
        name: "MAX_PENDING_CONNECTIONS",
        when_unset: WhenUnset::Value("64"),
        meaning: "AudioSocket connections waiting for their UUID (not calls yet); when full, \
                  the one waiting longest is closed",
        secret: false,
        show: |c| Some(c.max_pending_connections.to_string()),
    },
    Var {
        name: "CALLER_IDLE_TIMEOUT",
        when_unset: WhenUnset::Value("10s"),
        meaning: "a call with no frame from Asterisk for this long is hung up",
        secret: false,
        show: |c| ms(c.caller_idle_timeout),
    },
    Var {
        name: "AUDIO_CODEC",
        when_unset: WhenUnset::Value("auto"),
        meaning: "caller codec: auto (detect), slin, ulaw, alaw",
        secret: false,
        show: |c| Some(c.audio_codec.as_str().to_string()),
    },
    Var {
        name: "AMBIENT_NOISE_FILE",
        when_unset: WhenUnset::Off(""),
        meaning: "raw 8 kHz 16-bit LE mono PCM, looped under the call",
        secret: false,
        show: |c| display(&c.ambient_noise_file),
    },
    Var {
        name: "AMBIENT_NOISE_LEVEL",
        when_unset: WhenUnset::Value("0.90"),
        meaning: "ambient noise gain 0.0-1.0 (0 turns it off)",
        secret: false,
        show: |c| Some(format!("{:.2}", c.ambient_noise_level)),
    },
    Var {
        name: "WEBHOOK_URL",
        when_unset: WhenUnset::Off("webhooks off"),
        meaning: "http:// or https:// receiver of call events",
        secret: false,
        show: |c| c.webhook.url.as_deref().map(mask_url),
    },
    Var {
        name: "WEBHOOK_SECRET",
        when_unset: WhenUnset::Off(""),
        meaning: "shared secret sent with every event",
        secret: true,
        show: |c| c.webhook.secret.clone(),
    },
    Var {
        name: "WEBHOOK_SECRET_HEADER",
        when_unset: WhenUnset::Value("X-AVR-WEBHOOK-SECRET"),
        meaning: "header that carries the secret",
        secret: false,
        show: |c| Some(c.webhook.secret_header.clone()),
    },
    Var {
        name: "WEBHOOK_SIGNATURE",
        when_unset: WhenUnset::Value("plain"),
        meaning: "plain (the secret itself) or hmac-sha256 (of the body)",
        secret: false,
        show: |c| Some(c.webhook.signature.as_str().to_string()),
    },
    Var {
        name: "WEBHOOK_TIMEOUT",
        when_unset: WhenUnset::Value("3000"),
        meaning: "per delivery attempt",
        secret: false,
        show: |c| ms(c.webhook.timeout),
    },
    Var {
        name: "WEBHOOK_RETRY",
        when_unset: WhenUnset::Value("0"),
        meaning: "additional attempts after the first, with backoff",
        secret: false,
        show: |c| Some(c.webhook.retry.to_string()),
    },
    Var {
        name: "WEBHOOK_EVENTS",
        when_unset: WhenUnset::Value("all"),
        meaning: "comma list of event types to send, or all",
        secret: false,
        show: |c| Some(EventKind::names(&c.webhook.events)),
    },
    Var {
        name: "WEBHOOK_QUEUE_SIZE",
        when_unset: WhenUnset::Value("1024"),
        meaning: "events waiting for delivery; more go to the dead-letter file",
        secret: false,
        show: |c| Some(c.webhook.queue_size.to_string()),
    },
    Var {
        name: "WEBHOOK_WORKERS",
        when_unset: WhenUnset::Value("4"),
        meaning: "delivery threads",
        secret: false,
        show: |c| Some(c.webhook.workers.to_string()),
    },
    Var {
        name: "WEBHOOK_DEAD_LETTER_FILE",
        when_unset: WhenUnset::Derived(
            "$STATE_DIRECTORY/webhook-dead-letter.jsonl, else ./webhook-dead-letter.jsonl",
        ),
        meaning: "where undeliverable events go (see webhooks replay)",
        secret: false,
        show: |c| Some(c.webhook.dead_letter_file.display().to_string()),
    },
    Var {
        name: "CALL_METADATA_TTL",
        when_unset: WhenUnset::Value("60s"),
        meaning: "how long /call metadata waits for its AudioSocket call",
        secret: false,
        show: |c| ms(c.call_metadata_ttl),
    },
    Var {
        name: "REGISTRY_URL",
        when_unset: WhenUnset::Off("/call metadata kept in this process's memory"),
        meaning: "redis:// or rediss:// URL of a Redis or Valkey shared by several instances \
                  for /call metadata (redis://[user:password@]host:port[/db])",
        secret: false,
        show: |c| c.registry_url.as_deref().map(mask_url),
    },
    Var {
        name: "REGISTRY_TIMEOUT",
        when_unset: WhenUnset::Value("500ms"),
        meaning: "budget of each REGISTRY_URL operation: connecting, the command and its answer",
        secret: false,
        show: |c| ms(c.registry_timeout),
    },
    Var {
        name: "SHUTDOWN_GRACE",
        when_unset: WhenUnset::Value("30s"),
        meaning: "on SIGTERM, how long live calls may continue",
        secret: false,
        show: |c| ms(c.shutdown_grace),
    },
    Var {
        name: "LOG_LEVEL",
        when_unset: WhenUnset::Value("info"),
        meaning: "error, warn, info, debug, trace or a RUST_LOG filter (RUST_LOG works too)",
        secret: false,
        show: |c| Some(c.log_level.clone()),
    },
    Var {
        name: "SSL_CERT_FILE",
        when_unset: WhenUnset::Off(""),
        meaning: "extra CA certificates (PEM) for a wss:// agent behind a private CA",
        secret: false,
        show: |c| display(&c.ssl_cert_file),
    },
];

/// The row of `name`, if it is a configuration variable.
pub fn find(name: &str) -> Option<&'static Var> {
    VARS.iter().find(|v| v.name == name)
}

/// Width of the name column of [`usage_section`]: the longest name and two spaces.
const NAME_COLUMN: usize = 32;

/// The CONFIGURATION part of `avr-core --help`: one line per variable, in table order.
pub fn usage_section() -> String {
    let mut out = String::from("CONFIGURATION (environment; README.md explains each variable):\n");
    for var in &VARS {
        let default = match var.when_unset {
            WhenUnset::Required => "required".to_string(),
            _ => format!("default {}", var.default_text()),
        };
        out.push_str(&format!(
            "    {:<NAME_COLUMN$}{}; {default}\n",
            var.name, var.meaning
        ));
    }
    out.push_str("\nDurations are milliseconds (3000) or carry a unit (500ms, 3s, 2m).\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const README: &str = include_str!("../../README.md");
    const PACKAGED_ENV: &str = include_str!("../../packaging/avr-core.env");
    const DOCS: &str = include_str!("../../docs/configuration.md");

    fn names() -> BTreeSet<&'static str> {
        VARS.iter().map(|v| v.name).collect()
    }

    /// Fails naming what `file` lacks and what it has beyond the table.
    fn assert_lists_the_table(file: &str, listed: &BTreeSet<&str>) {
        let table = names();
        let missing: Vec<_> = table.difference(listed).collect();
        let extra: Vec<_> = listed.difference(&table).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{file} lacks {missing:?} and lists {extra:?}, which are not in config::vars::VARS"
        );
    }

    /// `(variable, default cell)` of each row of README's configuration table; the variable
    /// is the first `code` word of the row (`LOG_LEVEL` in "`LOG_LEVEL` (or `RUST_LOG`)").
    fn readme_rows() -> Vec<(String, String)> {
        table_rows(README, "\n## Configuration\n")
    }

    /// The same, for the table under `heading` in `doc`.
    fn table_rows(doc: &str, heading: &str) -> Vec<(String, String)> {
        let section = doc
            .split(heading)
            .nth(1)
            .unwrap_or_else(|| panic!("no section {heading:?}"));
        let section = section.split("\n## ").next().unwrap_or(section);
        section
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|row| {
                let cells: Vec<&str> = row.split('|').map(str::trim).collect();
                let name = cells[1].split('`').nth(1).unwrap_or("").to_string();
                (name, cells[2].replace('`', ""))
            })
            .collect()
    }

    /// `(variable, value, commented out)` of each `VAR=value` or `#VAR=value` line.
    fn packaged_assignments() -> Vec<(&'static str, &'static str, bool)> {
        PACKAGED_ENV
            .lines()
            .filter_map(|line| {
                let (commented, line) = match line.strip_prefix('#') {
                    Some(rest) => (true, rest),
                    None => (false, line),
                };
                let (name, value) = line.split_once('=')?;
                let is_name = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
                is_name.then_some((name, value, commented))
            })
            .collect()
    }

    #[test]
    fn names_are_unique() {
        assert_eq!(names().len(), VARS.len());
    }

    #[test]
    fn readme_lists_exactly_the_table_with_its_defaults() {
        let rows = readme_rows();
        let listed: BTreeSet<&str> = rows.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(listed.len(), rows.len(), "a variable is listed twice");
        assert_lists_the_table("README.md", &listed);
        for (name, default) in &rows {
            let var = find(name).unwrap();
            match var.when_unset {
                WhenUnset::Value(v) | WhenUnset::Derived(v) => {
                    assert_eq!(default, v, "README's default of {name}")
                }
                WhenUnset::Off(_) => assert_eq!(default, "unset", "README's default of {name}"),
                WhenUnset::Required => assert!(default.contains("required"), "{name}"),
            }
        }
    }

    #[test]
    fn the_configuration_doc_lists_exactly_the_table() {
        let rows = table_rows(DOCS, "\n## 2. Variables\n");
        let listed: BTreeSet<&str> = rows.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(listed.len(), rows.len(), "a variable is listed twice");
        assert_lists_the_table("docs/configuration.md", &listed);
    }

    #[test]
    fn the_packaged_env_file_lists_exactly_the_table_and_is_valid() {
        let lines = packaged_assignments();
        let listed: BTreeSet<&str> = lines.iter().map(|(n, _, _)| *n).collect();
        assert_eq!(listed.len(), lines.len(), "a variable is listed twice");
        assert_lists_the_table("packaging/avr-core.env", &listed);
        // A commented-out example shows the default it stands for.
        for (name, value, commented) in &lines {
            if let (true, WhenUnset::Value(default)) = (commented, find(name).unwrap().when_unset) {
                assert_eq!(value, &default, "avr-core.env's #{name}= example");
            }
        }
        // What the package sets is a configuration avr-core accepts.
        let active: Vec<(String, String)> = lines
            .iter()
            .filter(|(_, _, commented)| !commented)
            .map(|(n, v, _)| (n.to_string(), v.to_string()))
            .collect();
        if let Err(e) = Config::from_vars(&active) {
            panic!("packaging/avr-core.env is not valid: {e}");
        }
    }

    #[test]
    fn usage_lists_every_variable_once_with_its_default() {
        let usage = usage_section();
        for var in &VARS {
            let lines: Vec<&str> = usage
                .lines()
                .filter(|l| l.split_whitespace().next() == Some(var.name))
                .collect();
            assert_eq!(lines.len(), 1, "{}:\n{usage}", var.name);
            assert!(lines[0].contains(var.meaning), "{}", lines[0]);
        }
        assert!(usage.contains("STS_URL"), "{usage}");
        assert!(usage.contains("; default 5001\n"), "{usage}");
        assert!(
            usage.contains("speech-to-speech agent (STS mode); default required, unless"),
            "{usage}"
        );
        assert!(
            usage.contains("; default unset: HTTP service off\n"),
            "{usage}"
        );
        let longest = VARS.iter().map(|v| v.name.len()).max().unwrap();
        assert!(
            longest + 2 <= NAME_COLUMN,
            "the name column is too narrow for {longest}"
        );
    }
}
