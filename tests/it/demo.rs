//! `avr-core demo`, the newcomer's first command: the real binary, end to end.

use std::process::Command;

#[test]
fn demo_runs_one_call_and_prints_the_timeline() {
    let out = Command::new(env!("CARGO_BIN_EXE_avr-core"))
        .arg("demo")
        .output()
        .expect("run avr-core demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let has = |who: &str, what: &str| {
        stdout
            .lines()
            .any(|l| l.contains(&format!(" {who} ")) && l.contains(what))
    };
    for (who, what) in [
        ("caller", "connected to"),
        ("avr-core", "Audio codec detected: SLIN"),
        ("agent", r#"received {"type":"init""#),
        ("avr-core", "[user]: caller audio"),
        ("avr-core", "[agent]: "),
        ("caller", "pressed DTMF 5"),
        ("agent", r#""type":"dtmf_digit""#),
        ("webhook", "call_initiated"),
        ("webhook", "call_started"),
        ("webhook", "transcription"),
        ("webhook", "dtmf_digit"),
        ("webhook", "call_ended"),
        ("caller", "hangs up"),
        ("avr-core", "Call ended after"),
    ] {
        assert!(has(who, what), "no `{who}` line with {what:?}:\n{stdout}");
    }
    for what in [
        "gap p50",
        "p99",
        "frames in any 100 ms",
        "round trip",
        "demo OK",
    ] {
        assert!(
            stdout.contains(what),
            "no {what:?} in the summary:\n{stdout}"
        );
    }
}

#[test]
fn demo_rejects_options() {
    let out = Command::new(env!("CARGO_BIN_EXE_avr-core"))
        .args(["demo", "--bogus"])
        .output()
        .expect("run avr-core demo");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
}

#[test]
fn demo_pipeline_runs_one_call_and_prints_the_timeline() {
    let out = Command::new(env!("CARGO_BIN_EXE_avr-core"))
        .args(["demo", "--pipeline"])
        .output()
        .expect("run avr-core demo --pipeline");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo --pipeline failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let has = |who: &str, what: &str| {
        stdout
            .lines()
            .any(|l| l.contains(&format!(" {who} ")) && l.contains(what))
    };
    for (who, what) in [
        ("avr-core", "Pipeline mode: speech-to-text"),
        ("caller", "connected to"),
        ("asr", "speech-to-text stream opened"),
        ("tts", r#"sentence 1 to speech: "Hello, this is the demo.""#),
        ("caller", "hears the greeting"),
        ("caller", "speaks for"),
        ("asr", r#"wrote the transcript "Transcript 1""#),
        ("llm", r#"model request: message "Transcript 1""#),
        ("tts", r#"sentence 2 to speech: "You said: Transcript 1.""#),
        ("tts", r#"sentence 3 to speech: "Goodbye for now!""#),
        ("caller", "hears the answer"),
        ("webhook", "call_started"),
        ("webhook", "transcription"),
        ("webhook", "call_ended"),
        ("caller", "hangs up"),
        ("avr-core", "Call ended after"),
    ] {
        assert!(has(who, what), "no `{who}` line with {what:?}:\n{stdout}");
    }
    for what in [
        "gap p50",
        "from the transcript to the caller hearing it",
        "demo OK",
    ] {
        assert!(
            stdout.contains(what),
            "no {what:?} in the summary:\n{stdout}"
        );
    }
}

#[test]
fn demo_pipeline_refuses_a_rate() {
    let out = Command::new(env!("CARGO_BIN_EXE_avr-core"))
        .args(["demo", "--pipeline", "--rate", "16000"])
        .output()
        .expect("run avr-core demo");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("leave out --rate"));
}
