//! The audio rates the tools speak: the caller's (an AudioSocket kind's rate) and the agent's
//! (avr-core's `STS_SAMPLE_RATE`), read from the command line the same way by every tool.

use crate::cli::{Flags, UsageError};
use crate::proto::audiosocket;

/// Kind `0x10`'s rate: what `AudioSocket()` and `Dial(AudioSocket/…/c(slin))` send, and what
/// every upstream STS agent speaks (docs/audiosocket.md §3, docs/sts.md §6). Every tool's
/// default, so a command line without `--rate` behaves as it did before wideband.
pub const SLIN_RATE_HZ: u32 = audiosocket::SLIN_HZ;

/// Samples in one 20 ms frame at `rate_hz` (160 at 8 kHz, 320 at 16 kHz, 882 at 44.1 kHz).
pub fn frame_samples(rate_hz: u32) -> usize {
    audiosocket::frame_bytes(rate_hz) / 2
}

/// `8`, `16`, `44.1`: a rate in kHz for texts, without a trailing `.0`.
pub fn khz(rate_hz: u32) -> String {
    let text = format!("{:.1}", f64::from(rate_hz) / 1000.0);
    text.strip_suffix(".0").unwrap_or(&text).to_string()
}

/// The AudioSocket rates as a list for usage texts: `8000, 12000, … or 192000`.
fn caller_rates_text() -> String {
    let rates: Vec<String> = audiosocket::audio_rates().map(|r| r.to_string()).collect();
    match rates.split_last() {
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// A caller's `--rate`: one of the rates an AudioSocket kind carries (`0x10`–`0x18`), since a
/// caller's frames are labelled with its rate's kind.
pub fn caller_rate(flags: &mut Flags) -> Result<u32, UsageError> {
    let expected = format!("an AudioSocket rate in Hz: {}", caller_rates_text());
    flags.value_as(&expected, |v| {
        v.parse()
            .ok()
            .filter(|rate| audiosocket::audio_kind(*rate).is_some())
    })
}

/// An agent's `--rate`: any whole rate avr-core's `STS_SAMPLE_RATE` takes, which is the span
/// of the AudioSocket rates (the resampler is built and tested for it).
pub fn agent_rate(flags: &mut Flags) -> Result<u32, UsageError> {
    let lowest = audiosocket::audio_rates().min().unwrap_or(SLIN_RATE_HZ);
    let highest = audiosocket::audio_rates().max().unwrap_or(SLIN_RATE_HZ);
    let expected = format!("a sample rate in Hz from {lowest} to {highest} (as STS_SAMPLE_RATE)");
    flags.value_as(&expected, |v| {
        v.parse()
            .ok()
            .filter(|rate| (lowest..=highest).contains(rate))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(read: fn(&mut Flags) -> Result<u32, UsageError>, value: &str) -> Result<u32, String> {
        let line = vec!["--rate".to_string(), value.to_string()];
        let mut flags = Flags::new(&line);
        flags.next_arg();
        read(&mut flags).map_err(|e| e.to_string())
    }

    #[test]
    fn caller_rates_are_the_audiosocket_kinds() {
        for rate in audiosocket::audio_rates() {
            assert_eq!(read(caller_rate, &rate.to_string()), Ok(rate));
        }
        for bad in ["16k", "11025", "0", "-8000", ""] {
            let e = read(caller_rate, bad).unwrap_err();
            assert!(
                e.contains("--rate") && e.contains("8000, 12000, 16000") && e.contains("or 192000"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn agent_rates_span_the_audiosocket_rates() {
        for rate in [8_000, 11_025, 16_000, 22_050, 192_000] {
            assert_eq!(read(agent_rate, &rate.to_string()), Ok(rate));
        }
        for bad in ["7999", "192001", "16k", "0"] {
            let e = read(agent_rate, bad).unwrap_err();
            assert!(e.contains("from 8000 to 192000"), "{bad}: {e}");
        }
    }

    #[test]
    fn frames_and_khz_texts() {
        assert_eq!(frame_samples(SLIN_RATE_HZ), 160);
        assert_eq!(frame_samples(16_000), 320);
        assert_eq!(frame_samples(44_100), 882);
        assert_eq!(khz(8_000), "8");
        assert_eq!(khz(16_000), "16");
        assert_eq!(khz(44_100), "44.1");
        assert_eq!(khz(192_000), "192");
    }
}
