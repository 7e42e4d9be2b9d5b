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
    assert_eq!(code, 2, "a usage error");
    assert!(err.contains("unknown command"), "{err}");
}

/// One flag reader for every subcommand: `--help` prints the usage and exits 0, any usage
/// error names the argument on stderr and exits 2.
#[test]
fn every_subcommand_has_help_and_the_same_usage_error_code() {
    for (args, title) in [
        (&["help"][..], "avr-core — bridges"),
        (&["simulate", "--help"][..], "avr-core simulate —"),
        (&["simulate", "--calls=2", "-h"][..], "LOAD MODE"),
        (&["echo-sts", "--help"][..], "avr-core echo-sts —"),
        (&["demo", "--help"][..], "avr-core demo —"),
        (&["webhooks", "help"][..], "avr-core webhooks test"),
        (
            &["webhooks", "replay", "--help"][..],
            "avr-core webhooks replay",
        ),
        (&["check-config", "--help"][..], "check-config"),
    ] {
        let (code, out, err) = avr(args, &[]);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.contains(title), "{args:?}:\n{out}");
    }
    for (args, needle) in [
        (&["--frobnicate"][..], r#"unknown command "--frobnicate""#),
        (&["simulate", "--bogus"][..], r#"unknown option "--bogus""#),
        (&["simulate", "--seconds"][..], "--seconds needs a value"),
        (
            &["simulate", "--codec=opus"][..],
            r#"--codec: "opus" is not one of"#,
        ),
        (
            &["simulate", "--calls", "2", "--show", "x"][..],
            r#"--show: "x""#,
        ),
        (
            &["echo-sts", "--port", "70000"][..],
            r#"--port: "70000" is not a port"#,
        ),
        (
            &["echo-sts", "--verbose"][..],
            r#"unknown option "--verbose""#,
        ),
        (&["demo", "--bogus"][..], r#"unknown option "--bogus""#),
        (&["webhooks"][..], "a command is needed: test or replay"),
        (&["webhooks", "frob"][..], r#"unknown command "frob""#),
        (
            &["webhooks", "test", "extra"][..],
            r#"unexpected argument "extra""#,
        ),
        (
            &["check-config", "--strict"][..],
            r#"unknown option "--strict""#,
        ),
    ] {
        let (code, out, err) = avr(args, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(
            err.contains("--help"),
            "{args:?}: the error points at the help: {err}"
        );
        assert!(out.is_empty(), "{args:?}: nothing on stdout: {out}");
    }
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
    // Pipeline mode needs all three services: the missing one is named.
    let (code, _, err) = avr(&[], &[("ASR_URL", "http://asr:6010")]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("avr-core: LLM_URL is not set") || err.contains("LLM_URL is not set"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// `--rate` (and the demo's `--agent-rate`): a rate a tool cannot use is a usage error that
/// names the flag and the rates it takes; the help texts name the flag.
#[test]
fn rate_flags_take_only_usable_rates() {
    for (args, needle) in [
        (
            &["simulate", "--rate", "11025"][..],
            r#"--rate: "11025" is not an AudioSocket rate in Hz: 8000, 12000, 16000"#,
        ),
        (
            &["simulate", "--rate", "16000", "--codec", "ulaw"][..],
            "--codec ulaw: G.711 is 8 kHz audio, so it cannot come at --rate 16000",
        ),
        (
            &["simulate", "--calls", "2", "--rate", "16k"][..],
            r#"--rate: "16k" is not an AudioSocket rate"#,
        ),
        (
            &["echo-sts", "--rate", "4000"][..],
            r#"--rate: "4000" is not a sample rate in Hz from 8000 to 192000"#,
        ),
        (&["demo", "--rate", "22050"][..], r#"--rate: "22050""#),
        (&["demo", "--agent-rate", "x"][..], r#"--agent-rate: "x""#),
    ] {
        let (code, out, err) = avr(args, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
    }
    for args in [
        &["simulate", "--help"][..],
        &["simulate", "--calls=2", "--help"][..],
        &["echo-sts", "--help"][..],
        &["demo", "--help"][..],
    ] {
        let (code, out, _) = avr(args, &[]);
        assert_eq!(code, 0);
        assert!(out.contains("--rate HZ"), "{args:?}:\n{out}");
    }
}
