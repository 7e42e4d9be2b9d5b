//! Whole calls: fake Asterisk → avr-core → the built-in echo agent, over real sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::avr::Avr;
use crate::support::{assert_audio, new_uuid, non_silent, signal, to_samples, WAIT};
use avr_core::proto::g711;
use avr_core::tools::echo_sts::{EchoEvent, EchoOptions, EchoServer};
use avr_core::tools::simulate::{run_call, AudioSource, EndMode, SimCodec, SimOptions};
use serde_json::{json, Value};

const ECHO_DELAY: Duration = Duration::from_millis(300);

fn echo() -> (EchoServer, crossbeam_channel::Receiver<EchoEvent>) {
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = EchoServer::start(
        loopback,
        EchoOptions {
            delay: ECHO_DELAY,
            transcripts: true,
        },
    )
    .expect("echo agent");
    let events = server.events();
    (server, events)
}

/// Text messages the agent received on its first connection, until that connection closed.
fn agent_texts(events: &crossbeam_channel::Receiver<EchoEvent>) -> (String, Vec<Value>) {
    let mut path = String::new();
    let mut texts = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(EchoEvent::Connected { path: p, .. }) => path = p,
            Ok(EchoEvent::Received { text, .. }) => {
                texts.push(serde_json::from_str(&text).expect("avr-core sends JSON"))
            }
            Ok(EchoEvent::Closed { .. }) => return (path, texts),
            Err(_) => panic!("the agent connection did not close; got {texts:?}"),
        }
    }
}

#[test]
fn a_call_end_to_end_through_the_echo_agent() {
    let (agent, agent_events) = echo();
    let avr = Avr::start(&[("STS_URL", &agent.url())]);
    let (uuid_bytes, uuid) = new_uuid();
    let spoken = signal(8000 * 2);

    let mut opts = SimOptions::new(avr.addr());
    opts.uuid = uuid_bytes;
    opts.audio = AudioSource::Pcm(Arc::new(spoken.clone()));
    opts.duration = Duration::from_millis(3500);
    opts.dtmf = vec![(Duration::from_millis(1000), '7')];
    opts.end = EndMode::Close;
    let report = run_call(&opts).expect("call");
    assert!(report.violations.is_empty(), "{}", report.summary());

    // The agent saw `init` first, exactly, with the canonical uuid, then the DTMF digit.
    let (path, texts) = agent_texts(&agent_events);
    assert_eq!(path, "/");
    assert_eq!(texts.first(), Some(&json!({"type": "init", "uuid": uuid})));
    assert_eq!(uuid, uuid.to_lowercase());
    assert!(
        texts.contains(&json!({"type": "dtmf_digit", "digit": "7"})),
        "{texts:?}"
    );

    // The caller's audio came back sample for sample, no sooner than the echo delay.
    let received = to_samples(&report.received);
    assert_audio(&non_silent(&received), &spoken, false, 0, &report.summary());
    let first_echo_frame = report
        .received
        .chunks(320)
        .position(|f| f.iter().any(|&b| b != 0))
        .expect("echoed audio");
    let echo_at = report.arrivals[first_echo_frame];
    assert!(
        echo_at >= ECHO_DELAY && echo_at < ECHO_DELAY + Duration::from_secs(2),
        "echo arrived {echo_at:?} after the UUID"
    );

    // Events: call_started first, call_ended last, the DTMF before the agent's answer to it.
    avr.wait_call_ended(&uuid, WAIT);
    let events = avr.events(&uuid);
    assert_eq!(events.first().map(String::as_str), Some("call_started"));
    assert_eq!(events.last().map(String::as_str), Some("call_ended"));
    let dtmf = events.iter().position(|e| e == "dtmf_digit").expect("dtmf");
    let transcripts = events.iter().filter(|e| *e == "transcription").count();
    // The echo agent speaks two lines per second of caller audio and one per digit.
    let caller_seconds = report.frames_sent as usize * 320 / 16_000;
    assert_eq!(transcripts, 2 * caller_seconds + 1, "{events:?}");
    assert!(
        events[dtmf + 1..].iter().any(|e| e == "transcription"),
        "{events:?}"
    );
    let answer = avr
        .wait_log(
            |l| l.contains(&format!("[{uuid}] [agent]: You pressed 7")),
            WAIT,
        )
        .expect("agent's answer logged");
    assert!(!answer.is_empty());
}

/// A G.711 caller (as `Dial(AudioSocket/…)` without `c(slin)` sends) starting with 1 s of
/// silence: detected right, never decoded with a guess, echoed back as slin.
fn g711_caller(codec: SimCodec, name: &str, decode: fn(u8) -> i16, encode: fn(i16) -> u8) {
    let (agent, _events) = echo();
    let avr = Avr::start(&[("STS_URL", &agent.url())]);
    let (uuid_bytes, uuid) = new_uuid();
    let mut spoken = vec![0i16; 8000];
    spoken.extend(signal(8000 * 2));

    let mut opts = SimOptions::new(avr.addr());
    opts.uuid = uuid_bytes;
    opts.codec = codec;
    opts.audio = AudioSource::Pcm(Arc::new(spoken.clone()));
    opts.duration = Duration::from_millis(3600);
    // After the spoken part the simulator sends encoded silence until the end.
    spoken.resize(8 * 3600, 0);
    let report = run_call(&opts).expect("call");
    assert!(report.violations.is_empty(), "{}", report.summary());

    let line = avr
        .wait_log(
            |l| l.contains(&format!("[{uuid}] Audio codec detected:")),
            WAIT,
        )
        .expect("detection logged");
    assert!(
        line.ends_with(&format!("Audio codec detected: {name}")),
        "{line}"
    );

    // What Asterisk would hear: the G.711 round trip of what the caller said. Silence is 0,
    // or ±8 where A-law silence was decoded as A-law; frames held beyond 60 ms while the
    // codec was detected reach the agent as 0 (docs/audiosocket.md §10.3). A misdecoded
    // silence (±716 or more) would show.
    let audible =
        |s: &[i16]| -> Vec<i16> { s.iter().copied().filter(|s| s.unsigned_abs() > 8).collect() };
    let expected: Vec<i16> = spoken.iter().map(|&s| decode(encode(s))).collect();
    let received = audible(&to_samples(&report.received));
    // The echo of the call's last 300 ms is still on its way when the caller hangs up.
    let spoken_part = audible(&expected[..8000 * 3]).len();
    assert_audio(
        &received,
        &audible(&expected),
        true,
        spoken_part,
        &report.summary(),
    );
    avr.wait_call_ended(&uuid, WAIT);
    let detected = avr
        .call_logs(&uuid)
        .iter()
        .filter(|l| l.contains("Audio codec detected"))
        .count();
    assert_eq!(detected, 1, "detection is logged once");
}

#[test]
fn a_ulaw_caller_starting_with_silence_is_detected_and_echoed() {
    g711_caller(
        SimCodec::Ulaw,
        "ULAW",
        g711::ulaw_to_linear,
        g711::linear_to_ulaw,
    );
}

#[test]
fn an_alaw_caller_starting_with_silence_is_detected_and_echoed() {
    g711_caller(
        SimCodec::Alaw,
        "ALAW",
        g711::alaw_to_linear,
        g711::linear_to_alaw,
    );
}

#[test]
fn audio_codec_override_skips_detection() {
    let (agent, _events) = echo();
    let avr = Avr::start(&[("STS_URL", &agent.url()), ("AUDIO_CODEC", "alaw")]);
    let (uuid_bytes, uuid) = new_uuid();
    let spoken = signal(8000);
    let mut opts = SimOptions::new(avr.addr());
    opts.uuid = uuid_bytes;
    opts.codec = SimCodec::Alaw;
    opts.audio = AudioSource::Pcm(Arc::new(spoken.clone()));
    opts.duration = Duration::from_millis(1800);
    let report = run_call(&opts).expect("call");
    let expected: Vec<i16> = spoken
        .iter()
        .map(|&s| g711::alaw_to_linear(g711::linear_to_alaw(s)))
        .collect();
    // The trailing silence is A-law silence (±8), also echoed; compare the spoken part.
    let received = non_silent(&to_samples(&report.received));
    assert_audio(
        &received[..expected.len().min(received.len())],
        &expected,
        false,
        0,
        &report.summary(),
    );
    avr.wait_call_ended(&uuid, WAIT);
    let logs = avr.call_logs(&uuid).join("\n");
    assert!(
        logs.contains("Audio codec forced by AUDIO_CODEC: ALAW"),
        "{logs}"
    );
    assert!(!logs.contains("Audio codec detected"), "{logs}");
}
