//! Pipeline mode's variables: the three services, the greeting, barge-in and the budgets
//! (docs/pipeline.md). Read only when `STS_URL` is unset.

use std::time::Duration;

use super::env::{self, Env};
use super::ConfigError;
use crate::proto::service_url::ServiceUrl;

/// The services' variables, in the order a missing one is named.
pub const SERVICE_VARS: [&str; 3] = ["ASR_URL", "LLM_URL", "TTS_URL"];

/// Pipeline mode, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    pub asr_url: ServiceUrl,
    pub llm_url: ServiceUrl,
    pub tts_url: ServiceUrl,
    /// Spoken first and recorded as the first assistant message; `None`: the call waits for
    /// the caller.
    pub system_message: Option<String>,
    /// `true`: no barge-in; caller audio is not sent to the speech-to-text service while the
    /// agent speaks (the upstream meaning).
    pub interrupt_listening: bool,
    pub vad: VadConfig,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub response_timeout: Duration,
    /// Upstream `VAD_*` variables the operator set that mean nothing here (logged at startup).
    pub ignored: Vec<String>,
}

/// The `VAD_*` variables that have a meaning here; any other is the upstream Silero VAD's.
const VAD_VARS: [&str; 4] = [
    "VAD_POSITIVE_SPEECH_THRESHOLD",
    "VAD_NEGATIVE_SPEECH_THRESHOLD",
    "VAD_MIN_SPEECH_FRAMES",
    "VAD_REDEMPTION_FRAMES",
];

/// The upstream `VAD_*` variables that have a meaning here (docs/pipeline.md §5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadConfig {
    pub positive_threshold: f32,
    /// `None`: 0.15 below the positive threshold.
    pub negative_threshold: Option<f32>,
    pub min_speech_frames: u32,
    pub redemption_frames: u32,
}

impl PipelineConfig {
    /// Reads pipeline mode; `Ok(None)` when none of its services is set. One service set
    /// without the others names the missing one.
    pub fn read(env: &Env) -> Result<Option<PipelineConfig>, ConfigError> {
        let set: Vec<&str> = SERVICE_VARS
            .into_iter()
            .filter(|v| env.given(v).is_some())
            .collect();
        if set.is_empty() {
            return Ok(None);
        }
        if let Some(missing) = SERVICE_VARS.into_iter().find(|v| !set.contains(v)) {
            return Err(ConfigError::Missing {
                var: missing,
                why: format!(
                    "{} set, so this is pipeline mode, which needs ASR_URL, LLM_URL and TTS_URL \
                     (or set STS_URL for a speech-to-speech agent)",
                    set.join(" and ")
                ),
            });
        }
        let url = |name| env.parse(name, ServiceUrl::parse);
        Ok(Some(PipelineConfig {
            asr_url: url("ASR_URL")?,
            llm_url: url("LLM_URL")?,
            tts_url: url("TTS_URL")?,
            system_message: env.given("SYSTEM_MESSAGE"),
            interrupt_listening: env.parse("INTERRUPT_LISTENING", boolean)?,
            vad: VadConfig {
                positive_threshold: env.parse("VAD_POSITIVE_SPEECH_THRESHOLD", score)?,
                negative_threshold: env.parse_opt("VAD_NEGATIVE_SPEECH_THRESHOLD", score)?,
                min_speech_frames: env.parse("VAD_MIN_SPEECH_FRAMES", frames)?,
                redemption_frames: env.parse("VAD_REDEMPTION_FRAMES", frames)?,
            },
            connect_timeout: env.parse("PIPELINE_CONNECT_TIMEOUT", env::duration)?,
            first_byte_timeout: env.parse("PIPELINE_FIRST_BYTE_TIMEOUT", env::duration)?,
            response_timeout: env.parse("PIPELINE_RESPONSE_TIMEOUT", env::duration)?,
            ignored: env
                .names_with_prefix("VAD_")
                .into_iter()
                .filter(|n| !VAD_VARS.contains(n))
                .map(String::from)
                .collect(),
        }))
    }
}

/// `true`/`false` as the Node.js original reads them (`1`, `yes`, `on` too).
fn boolean(t: &str) -> Result<bool, String> {
    match t.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("true or false".into()),
    }
}

/// A voice-activity score threshold.
fn score(t: &str) -> Result<f32, String> {
    match t.parse::<f32>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err("a score from 0.0 to 1.0".into()),
    }
}

/// A count of 16 ms voice-activity frames: up to ten seconds.
fn frames(t: &str) -> Result<u32, String> {
    env::whole_number(t, 1, 625).map(|n| n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<Option<PipelineConfig>, ConfigError> {
        let vars: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        PipelineConfig::read(&Env::new(&vars))
    }

    const ALL: [(&str, &str); 3] = [
        ("ASR_URL", "http://asr:6010/speech-to-text-stream"),
        ("LLM_URL", "http://llm:6002/prompt-stream"),
        ("TTS_URL", "http://tts:6012/text-to-speech-stream"),
    ];

    #[test]
    fn three_services_make_pipeline_mode_with_defaults() {
        assert_eq!(read(&[]).unwrap(), None);
        let c = read(&ALL).unwrap().unwrap();
        assert_eq!(c.asr_url.host, "asr");
        assert_eq!(c.tts_url.target, "/text-to-speech-stream");
        assert_eq!(c.system_message, None);
        assert!(!c.interrupt_listening);
        assert_eq!(c.vad.positive_threshold, 0.5);
        assert_eq!(c.vad.negative_threshold, None);
        assert_eq!(c.vad.min_speech_frames, 2);
        assert_eq!(c.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.first_byte_timeout, Duration::from_secs(10));
        assert_eq!(c.response_timeout, Duration::from_secs(60));
    }

    #[test]
    fn upstream_vad_variables_without_a_meaning_are_listed() {
        let mut vars = ALL.to_vec();
        vars.extend([
            ("VAD_MODEL", "v5"),
            ("VAD_MIN_SPEECH_FRAMES", "3"),
            ("VAD_FRAME_SAMPLES", "512"),
        ]);
        let c = read(&vars).unwrap().unwrap();
        assert_eq!(c.ignored, ["VAD_MODEL", "VAD_FRAME_SAMPLES"]);
        assert_eq!(c.vad.min_speech_frames, 3);
    }

    #[test]
    fn a_missing_service_is_named() {
        let err = read(&ALL[..2]).unwrap_err().to_string();
        assert!(err.starts_with("TTS_URL is not set"), "{err}");
        assert!(err.contains("ASR_URL and LLM_URL set"), "{err}");
    }

    #[test]
    fn bad_values_say_what_is_allowed() {
        let mut vars = ALL.to_vec();
        vars.push(("INTERRUPT_LISTENING", "maybe"));
        assert!(read(&vars)
            .unwrap_err()
            .to_string()
            .contains("true or false"));
        let mut vars = ALL.to_vec();
        vars.push(("VAD_POSITIVE_SPEECH_THRESHOLD", "2"));
        assert!(read(&vars).unwrap_err().to_string().contains("0.0 to 1.0"));
        let mut vars = ALL.to_vec();
        vars[2] = ("TTS_URL", "https://tts/x");
        assert!(read(&vars).unwrap_err().to_string().contains("use http://"));
    }
}
