//! Wideband callers (slin12–slin192) through the real avr-core, driven by the tools: the
//! simulator as the caller, the echo agent at `STS_SAMPLE_RATE`, the demo.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::support::avr::Avr;
use crate::support::{assert_audio, non_silent, to_samples, WAIT};
use avr_core::tools::echo_sts::{EchoOptions, EchoServer};
use avr_core::tools::simulate::{
    run_call, run_load, AudioSource, EndMode, LoadOptions, SimOptions,
};

fn echo_at(rate_hz: u32) -> EchoServer {
    let opts = EchoOptions {
        delay: Duration::from_millis(200),
        transcripts: false,
    };
    EchoServer::start_at(([127, 0, 0, 1], 0).into(), opts, rate_hz, None).expect("echo agent")
}

/// Zero crossings per second of `samples` at `rate_hz`: twice the frequency of a tone.
fn crossings_per_second(samples: &[i16], rate_hz: u32) -> f64 {
    let crossings = samples
        .windows(2)
        .filter(|w| (w[0] < 0) != (w[1] < 0))
        .count();
    crossings as f64 * f64::from(rate_hz) / samples.len() as f64
}

fn rms(samples: &[i16]) -> f64 {
    let sum: f64 = samples.iter().map(|&s| f64::from(s).powi(2)).sum();
    (sum / samples.len() as f64).sqrt()
}

#[test]

fn a_slin16_caller_hears_its_tone_back_through_an_8_khz_agent() {
    let agent = echo_at(8_000);
    let avr = Avr::start(&[("STS_URL", &agent.url())]);
    let mut opts = SimOptions::new(avr.addr());
    opts.rate_hz = 16_000;
    opts.audio = AudioSource::Tone {
        hz: 1000.0, // inside the 8 kHz agent's band
        amplitude: 8000,
    };
    opts.duration = Duration::from_millis(2000);
    opts.end = EndMode::Close;
    let report = run_call(&opts).expect("call");
    let text = report.summary();
    // The checker holds the rate rule: 0x10 silence at most until the first 0x12 frame,
    // then only 640-byte 0x12 frames.
    assert!(report.violations.is_empty(), "{text}");
    assert!(
        report.prelude_frames <= 5,
        "avr-core answered in slin16 late\n{text}"
    );
    assert!(report.frames_received >= 95, "{text}");
    // The tone came back, resampled twice: its pitch and (nearly) its level.
    let heard = to_samples(&report.received);
    let echo_at = heard.iter().position(|&s| s.abs() > 1000).expect("an echo");
    assert!(
        echo_at >= 16 * 200,
        "the echo came before the agent's 200 ms delay ({echo_at} samples)\n{text}"
    );
    let middle = &heard[echo_at + 3200..echo_at + 3200 + 16_000];
    let pitch = crossings_per_second(middle, 16_000) / 2.0;
    assert!((pitch - 1000.0).abs() < 20.0, "{pitch} Hz\n{text}");
    let level = rms(middle);
    let sent = 8000.0 / 2f64.sqrt();
    assert!(
        (level - sent).abs() < 0.1 * sent,
        "RMS {level:.0}, sent {sent:.0}\n{text}"
    );
    let log = avr.wait_call_ended(&report.uuid, WAIT);
    assert!(!log.is_empty());
}

#[test]

fn a_slin16_caller_and_a_16_khz_agent_hear_each_other_exactly() {
    let agent = echo_at(16_000);
    let avr = Avr::start(&[("STS_URL", &agent.url()), ("STS_SAMPLE_RATE", "16000")]);
    // Never zero and never crossing it, so silence cannot hide in it.
    let spoken: Vec<i16> = (0..16_000 * 2)
        .map(|i| (3000.0 + 2000.0 * (i as f64 * 0.0371).sin()) as i16)
        .collect();
    let mut opts = SimOptions::new(avr.addr());
    opts.rate_hz = 16_000;
    opts.audio = AudioSource::Pcm(Arc::new(spoken.clone()));
    opts.duration = Duration::from_millis(3000);
    let report = run_call(&opts).expect("call");
    assert!(report.violations.is_empty(), "{}", report.summary());
    // Same rate both sides: nothing to resample, the echo is the caller's own samples.
    let heard = non_silent(&to_samples(&report.received));
    assert_audio(&heard, &spoken, false, 0, &report.summary());
}

#[test]

fn load_mode_at_16_khz_matches_every_echo() {
    let agent = echo_at(8_000);
    let avr = Avr::start(&[("STS_URL", &agent.url())]);
    let mut opts = LoadOptions::new(avr.addr(), 5, Duration::from_millis(1500));
    opts.rate_hz = 16_000;
    opts.ramp = Duration::from_millis(100);
    let report = run_load(&opts);
    let s = report.summary();
    let text = report.text(5);
    assert_eq!((s.calls, s.connected, s.failed), (5, 5, 0), "{text}");
    assert_eq!(s.lost, 0, "{text}");
    assert_eq!(s.unexpected_hangups + s.violations + s.errors, 0, "{text}");
    // The markers are DC levels, which resampling keeps; only the filter's edge at the end of
    // the marked audio may blur a few samples.
    assert!(s.dropped_samples < 5 * 320, "{text}");
    for call in &report.calls {
        assert_eq!(call.echoes.len(), 75, "{text}");
    }
}

#[test]

fn simulate_and_demo_run_wideband_from_the_command_line() {
    let agent = echo_at(8_000);
    let avr = Avr::start(&[("STS_URL", &agent.url())]);
    let out = Command::new(env!("CARGO_BIN_EXE_avr-core"))
        .args(["simulate", "--rate", "48000", "--seconds", "1.5"])
        .args(["--addr", &avr.addr().to_string()])
        .output()
        .expect("run avr-core simulate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("kHz slin48"), "{stdout}");
    assert!(stdout.contains("violations:  none"), "{stdout}");

    for args in [
        &["--rate", "16000"][..],
        &["--rate", "16000", "--agent-rate", "16000"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_avr-core"))
            .arg("demo")
            .args(args)
            .output()
            .expect("run avr-core demo");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "demo {args:?}:\n{stdout}");
        assert!(
            stdout.contains("a 16 kHz caller (kind 0x12, slin16)"),
            "{stdout}"
        );
        assert!(stdout.contains("demo OK"), "{stdout}");
    }
}
