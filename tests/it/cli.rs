//! The command line an operator meets first: help, version, configuration checks.

use std::process::Command;

fn avr(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_avr-core"));
    cmd.env_clear().args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run avr-core");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_and_version() {
    let (code, out, _) = avr(&["--help"], &[]);
    assert_eq!(code, 0);
    for word in ["check-config", "simulate", "echo-sts", "STS_URL"] {
        assert!(out.contains(word), "{out}");
    }
    let (code, out, _) = avr(&["--version"], &[]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("avr-core {}", env!("CARGO_PKG_VERSION"))
    );
    let (code, _, err) = avr(&["frobnicate"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown command"), "{err}");
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_masked() {
    let (code, out, _) = avr(
        &["check-config"],
        &[
            ("STS_URL", "wss://agent.example:443/sts"),
            ("WEBHOOK_URL", "https://hooks.example/avr"),
            ("WEBHOOK_SECRET", "s3cr3t-value"),
            ("MAX_CALLS", "42"),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("STS_URL=wss://agent.example:443/sts"), "{out}");
    assert!(out.contains("MAX_CALLS=42"), "{out}");
    assert!(out.contains("PORT=5001"), "{out}");
    assert!(out.contains("WEBHOOK_SECRET=********"), "{out}");
    assert!(!out.contains("s3cr3t-value"), "{out}");
}

#[test]
fn a_bad_value_stops_startup_with_one_line_naming_it() {
    for (var, value) in [
        ("MAX_CALLS", "lots"),
        ("AUDIO_CODEC", "opus"),
        ("PORT", "99999"),
    ] {
        for cmd in [&["check-config"][..], &[][..]] {
            let (code, _, err) = avr(cmd, &[("STS_URL", "ws://127.0.0.1:6030"), (var, value)]);
            assert_eq!(code, 1, "{var}={value}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(err.contains(var) && err.contains(value), "{err}");
        }
    }
    let (code, _, err) = avr(&[], &[("STS_URL", "http://127.0.0.1:6030")]);
    assert_eq!(code, 1);
    assert!(err.contains("only WebSocket"), "{err}");
    let (code, _, err) = avr(&[], &[("ASR_URL", "http://asr:6010")]);
    assert_eq!(code, 1);
    assert!(err.contains("not supported"), "{err}");
}
