//! Pipeline mode (docs/pipeline.md) over real sockets: avr-core between a caller that
//! behaves like Asterisk and the built-in ASR, LLM and TTS services (`echo-pipeline`), each
//! contract point, each failure, barge-in, the greeting and the history.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use avr_core::audio::quality::speech_like;
use avr_core::tools::echo_pipeline::{EchoPipeline, PipelineEvent, PipelineOptions};
use avr_core::tools::simulate::{run_call, AudioSource, EndMode, EndedBy, SimReport};
use crossbeam_channel::Receiver;
use serde_json::{json, Value};

use crate::support::avr::Avr;
use crate::support::{call_options, to_samples};

const WAIT: Duration = Duration::from_secs(10);
/// Samples per 20 ms caller frame.
const FRAME: usize = 160;

fn services(opts: PipelineOptions) -> (EchoPipeline, Receiver<PipelineEvent>) {
    let p = EchoPipeline::start("127.0.0.1:0".parse().unwrap(), opts).expect("echo pipeline");
    let events = p.events();
    (p, events)
}

fn avr_for(p: &EchoPipeline, extra: &[(&str, &str)]) -> Avr {
    let [asr, llm, tts] = p.urls();
    let mut env = vec![
        ("ASR_URL", asr.as_str()),
        ("LLM_URL", llm.as_str()),
        ("TTS_URL", tts.as_str()),
    ];
    env.extend_from_slice(extra);
    Avr::start(&env)
}

/// A loud 1 kHz tone, faded in and out over 20 ms as a voice would be: the echo ASR hears it
/// (a transcript per second), the voice-activity detector does not take it for a voice. (Cut
/// off dead, its last sample is a click the detector may take for the start of speech.)
fn tone(ms: usize) -> Vec<i16> {
    tone_at(ms, 8000)
}

fn tone_at(ms: usize, rate_hz: usize) -> Vec<i16> {
    let n = ms * rate_hz / 1000;
    let ramp = 160.0;
    (0..n)
        .map(|i| {
            let edge = (i.min(n - 1 - i) as f64 / (ramp * rate_hz as f64 / 8000.0)).min(1.0);
            let gain = 0.5 - 0.5 * (edge * std::f64::consts::PI).cos();
            let x = (i as f64 * 2.0 * std::f64::consts::PI * 1000.0 / rate_hz as f64).sin();
            (x * 8000.0 * gain) as i16
        })
        .collect()
}

fn silence(ms: usize) -> Vec<i16> {
    vec![0; ms * 8]
}

/// Places a call sending `audio` (silence after it) for `duration`, then ending by `end`.
fn call(avr: &Avr, audio: Vec<i16>, duration: Duration, end: EndMode) -> (String, SimReport) {
    call_with(avr, audio, duration, end, Vec::new())
}

fn call_with(
    avr: &Avr,
    audio: Vec<i16>,
    duration: Duration,
    end: EndMode,
    dtmf: Vec<(Duration, char)>,
) -> (String, SimReport) {
    let (uuid, mut opts) = call_options(avr.addr(), duration, end);
    opts.audio = AudioSource::Pcm(Arc::new(audio));
    opts.dtmf = dtmf;
    let report = run_call(&opts).expect("call");
    assert!(report.violations.is_empty(), "{}", report.summary());
    (uuid, report)
}

/// Every event the services saw for `uuid` until `until` (or `WAIT`) says stop.
fn events_until(
    rx: &Receiver<PipelineEvent>,
    uuid: &str,
    until: impl Fn(&PipelineEvent) -> bool,
) -> Vec<PipelineEvent> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while let Ok(e) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if event_uuid(&e) != uuid {
            continue;
        }
        let stop = until(&e);
        seen.push(e);
        if stop {
            return seen;
        }
    }
    panic!("the services did not see the expected event; saw {seen:#?}");
}

fn event_uuid(e: &PipelineEvent) -> &str {
    match e {
        PipelineEvent::AsrOpened { uuid }
        | PipelineEvent::AsrAudio { uuid, .. }
        | PipelineEvent::Transcript { uuid, .. }
        | PipelineEvent::AsrClosed { uuid, .. }
        | PipelineEvent::LlmRequest { uuid, .. }
        | PipelineEvent::LlmDone { uuid, .. }
        | PipelineEvent::TtsRequest { uuid, .. }
        | PipelineEvent::TtsDone { uuid, .. } => uuid,
    }
}

/// Bytes of caller audio the speech-to-text service received, once its stream closed.
fn uploaded(events: &[PipelineEvent]) -> Option<u64> {
    events.iter().find_map(|e| match e {
        PipelineEvent::AsrClosed { bytes, .. } => Some(*bytes),
        _ => None,
    })
}

fn tts_texts(events: &[PipelineEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            PipelineEvent::TtsRequest { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn llm_bodies(events: &[PipelineEvent]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|e| match e {
            PipelineEvent::LlmRequest { body, .. } => Some(body.clone()),
            _ => None,
        })
        .collect()
}

/// Frames (20 ms) the caller received that carry sound.
fn loud_frames(report: &SimReport) -> Vec<usize> {
    to_samples(&report.received)
        .chunks(FRAME)
        .enumerate()
        .filter(|(_, f)| f.iter().any(|s| s.unsigned_abs() > 500))
        .map(|(i, _)| i)
        .collect()
}

fn transcriptions(avr: &Avr, uuid: &str) -> Vec<(String, String)> {
    avr.call_logs(uuid)
        .iter()
        .filter_map(|l| {
            let body = l.split(" event ").nth(1)?;
            let v: Value = serde_json::from_str(body).ok()?;
            (v["type"] == "transcription").then(|| {
                (
                    v["payload"]["role"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    v["payload"]["text"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
        })
        .collect()
}

#[test]
fn a_transcript_is_answered_sentence_by_sentence() {
    let (p, rx) = services(PipelineOptions::default());
    let avr = avr_for(&p, &[]);
    let mut audio = tone(1100);
    audio.extend(silence(100));
    let (uuid, report) = call(&avr, audio, Duration::from_millis(4500), EndMode::Close);
    let events = events_until(&rx, &uuid, |e| matches!(e, PipelineEvent::AsrClosed { .. }));

    // One speech-to-text stream for the call, under the call's uuid (X-UUID), carrying the
    // caller's audio as it came: 4.5 s of 8 kHz s16le.
    assert!(
        matches!(&events[0], PipelineEvent::AsrOpened { .. }),
        "{events:#?}"
    );
    let uploaded = uploaded(&events);
    let sent = report.frames_sent * 320;
    assert!(
        uploaded.is_some_and(|b| b + 1600 >= sent && b <= sent),
        "uploaded {uploaded:?} of {sent} bytes"
    );
    // The model got the transcript as `message` and as the history.
    assert_eq!(
        llm_bodies(&events),
        vec![json!({"uuid": uuid, "message": "Transcript 1",
                    "messages": [{"role": "user", "content": "Transcript 1"}]})]
    );
    // Each sentence of its answer went to speech, in order.
    assert_eq!(
        tts_texts(&events),
        [
            "You said: Transcript 1.",
            "This is the echo pipeline speaking.",
            "Goodbye for now!"
        ],
        "{events:#?}\n{}",
        avr.log_text()
    );
    // The caller heard the answer after its first words.
    let heard = loud_frames(&report);
    assert!(heard.len() >= 40, "{} loud frames", heard.len());
    assert!(heard[0] >= 50, "agent audio at frame {}", heard[0]);
    // Webhooks: the caller's words, then each sentence spoken.
    avr.wait_call_ended(&uuid, WAIT);
    let said = transcriptions(&avr, &uuid);
    assert_eq!(said[0], ("user".into(), "Transcript 1".into()));
    assert_eq!(
        said[1..]
            .iter()
            .map(|(r, _)| r.as_str())
            .collect::<Vec<_>>(),
        ["agent"; 3]
    );
    let events = avr.events(&uuid);
    assert_eq!(events.first().map(String::as_str), Some("call_started"));
    assert_eq!(events.last().map(String::as_str), Some("call_ended"));
}

#[test]
fn the_greeting_is_spoken_first_and_opens_the_history() {
    let (p, rx) = services(PipelineOptions {
        answer: Some("Okay.".into()),
        ..PipelineOptions::default()
    });
    let greeting = "Welcome to the line. How can I help?";
    let avr = avr_for(&p, &[("SYSTEM_MESSAGE", greeting)]);
    let mut audio = silence(2000);
    audio.extend(tone(1100));
    let (uuid, report) = call(&avr, audio, Duration::from_millis(5000), EndMode::Close);
    let events = events_until(&rx, &uuid, |e| matches!(e, PipelineEvent::AsrClosed { .. }));
    assert_eq!(
        tts_texts(&events),
        ["Welcome to the line.", "How can I help?", "Okay."]
    );
    // Heard before the caller said anything.
    let heard = loud_frames(&report);
    assert!(heard.first().is_some_and(|&f| f < 25), "{heard:?}");
    let bodies = llm_bodies(&events);
    assert_eq!(
        bodies[0]["messages"],
        json!([{"role": "assistant", "content": greeting},
               {"role": "user", "content": "Transcript 1"}])
    );
}

#[test]
fn the_history_carries_every_turn_and_digits() {
    let (p, rx) = services(PipelineOptions {
        answer: Some("Okay.".into()),
        ..PipelineOptions::default()
    });
    let avr = avr_for(&p, &[]);
    let mut audio = tone(1100);
    audio.extend(silence(1500));
    audio.extend(tone(1100));
    let (uuid, _) = call_with(
        &avr,
        audio,
        Duration::from_millis(6000),
        EndMode::Close,
        vec![(Duration::from_millis(4500), '5')],
    );
    let events = events_until(&rx, &uuid, |e| matches!(e, PipelineEvent::AsrClosed { .. }));
    let bodies = llm_bodies(&events);
    assert_eq!(bodies.len(), 3, "{bodies:#?}");
    assert_eq!(
        bodies[2]["messages"],
        json!([{"role": "user", "content": "Transcript 1"},
               {"role": "assistant", "content": "Okay."},
               {"role": "user", "content": "Transcript 2"},
               {"role": "assistant", "content": "Okay."},
               {"role": "user", "content": "DTMF 5"}])
    );
    assert_eq!(bodies[2]["message"], "DTMF 5");
}

#[test]
fn sentences_keep_their_order_under_tts_latency_jitter() {
    let (p, rx) = services(PipelineOptions {
        answer: Some("One. Two! Three? Four. Five.".into()),
        tts_first_byte: Duration::from_millis(20),
        tts_jitter: Duration::from_millis(150),
        ..PipelineOptions::default()
    });
    let avr = avr_for(&p, &[]);
    let (uuid, _) = call(
        &avr,
        tone(1100),
        Duration::from_millis(5000),
        EndMode::Close,
    );
    let events = events_until(&rx, &uuid, |e| matches!(e, PipelineEvent::AsrClosed { .. }));
    assert_eq!(
        tts_texts(&events),
        ["One.", "Two!", "Three?", "Four.", "Five."]
    );
    // One at a time: each sentence is asked for once the one before it is complete.
    let position = |want: &dyn Fn(&PipelineEvent) -> bool| events.iter().position(want);
    for n in 1..5u64 {
        let done = position(&|e| matches!(e, PipelineEvent::TtsDone { n: k, .. } if *k == n));
        let next =
            position(&|e| matches!(e, PipelineEvent::TtsRequest { n: k, .. } if *k == n + 1));
        assert!(done.is_some() && done < next, "sentence {n}: {events:#?}");
    }
}

#[test]
fn barge_in_clears_playout_cancels_speech_and_emits_interruption() {
    // One long sentence, streamed at about real time: still streaming when the caller speaks.
    let (p, rx) = services(PipelineOptions {
        answer: Some(format!("{}.", "la ".repeat(60))),
        tts_chunk: Duration::from_millis(100),
        tts_gap: Duration::from_millis(90),
        transcript_every: Duration::from_secs(5),
        ..PipelineOptions::default()
    });
    let avr = avr_for(&p, &[]);
    // Words, silence while the answer plays, then the caller talks over it at 7 s.
    let speak_at_ms = 7000;
    let mut audio = tone(5000);
    audio.extend(silence(speak_at_ms - 5000));
    audio.extend(speech_like(8000, 1500, 7));
    let (uuid, report) = call(&avr, audio, Duration::from_millis(9500), EndMode::Close);
    // The caller's clock as wall-clock time, to set its frames beside avr-core's log lines.
    let (wall_now, mono_now) = (SystemTime::now(), Instant::now());
    let wall_ms_of_day = |at: Instant| {
        let wall = wall_now - mono_now.duration_since(at);
        wall.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64 % 86_400_000
    };

    let onset = speak_at_ms / 20;
    let heard = loud_frames(&report);
    assert!(
        heard.iter().any(|&f| f > 5000 / 20 && f < onset),
        "the agent was speaking before the caller: {heard:?}"
    );
    // The agent's audio stops within the detector's latency plus 40 ms (docs/pipeline.md §5).
    let last = heard.iter().filter(|&&f| f >= onset).max().copied();
    let after_ms = last.map_or(0, |f| (f + 1 - onset) * 20);
    assert!(
        after_ms <= 68 + 40 + 20,
        "agent audio went on {after_ms} ms into the caller's speech"
    );
    // And within 40 ms of the detector's decision (the log line, stamped to the millisecond),
    // the caller hears no more of it.
    let decided = avr
        .wait_log(|l| l.contains(&uuid) && l.contains("Barge-in"), WAIT)
        .expect("barge-in logged");
    let decided_ms = log_ms_of_day(&decided);
    if let Some(last) = last {
        let last_heard_ms = wall_ms_of_day(report.started + report.arrivals[last]);
        // (A call across midnight UTC wraps the day.)
        let after =
            (last_heard_ms - decided_ms + 86_400_000 + 43_200_000) % 86_400_000 - 43_200_000;
        assert!(
            after <= 40,
            "agent audio heard {after} ms after the barge-in was decided"
        );
    }

    let events = events_until(&rx, &uuid, |e| matches!(e, PipelineEvent::TtsDone { .. }));
    assert!(
        matches!(
            events.last(),
            Some(PipelineEvent::TtsDone {
                cancelled: true,
                ..
            })
        ),
        "{events:#?}"
    );
    avr.wait_call_ended(&uuid, WAIT);
    assert!(avr.events(&uuid).contains(&"interruption".to_string()));
    assert!(avr
        .call_logs(&uuid)
        .iter()
        .any(|l| l.contains("Barge-in: the caller speaks while the agent does")));
}

#[test]
fn interrupt_listening_turns_barge_in_off_and_the_asr_does_not_hear_the_agent_turn() {
    let (p, rx) = services(PipelineOptions {
        answer: Some(format!("{}.", "la ".repeat(40))),
        ..PipelineOptions::default()
    });
    let avr = avr_for(&p, &[("INTERRUPT_LISTENING", "true")]);
    let mut audio = tone(1100);
    audio.extend(speech_like(8000, 4000, 3));
    let (uuid, report) = call(&avr, audio, Duration::from_millis(6000), EndMode::Close);
    let events = events_until(&rx, &uuid, |e| matches!(e, PipelineEvent::AsrClosed { .. }));
    // 6 s of audio sent, but not while the agent's 6 s answer played.
    let uploaded = uploaded(&events);
    let sent = report.frames_sent * 320;
    assert!(
        uploaded.is_some_and(|b| b < sent / 2),
        "uploaded {uploaded:?} of {sent}"
    );
    avr.wait_call_ended(&uuid, WAIT);
    assert!(!avr.events(&uuid).contains(&"interruption".to_string()));
}

#[test]
fn a_plain_text_model_answer_is_spoken() {
    let (p, rx) = services(PipelineOptions {
        answer: Some("Plain words. Still spoken.".into()),
        llm_plain: true,
        ..PipelineOptions::default()
    });
    let avr = avr_for(&p, &[]);
    let (uuid, _) = call(
        &avr,
        tone(1100),
        Duration::from_millis(3500),
        EndMode::Close,
    );
    let events = events_until(&rx, &uuid, |e| matches!(e, PipelineEvent::AsrClosed { .. }));
    assert_eq!(tts_texts(&events), ["Plain words.", "Still spoken."]);
}

/// The time of day of a log line (`2026-12-03T04:23:12.036Z [INFO]: …`), in milliseconds.
fn log_ms_of_day(line: &str) -> i64 {
    let time = &line[11..23];
    let field = |r: std::ops::Range<usize>| time[r].parse::<i64>().expect("log timestamp");
    ((field(0..2) * 60 + field(3..5)) * 60 + field(6..8)) * 1000 + field(9..12)
}

/// Places a call that waits for avr-core to hang up; asserts it did, within 2 s, and returns
/// the call's end-of-call line.
fn hung_up_at_once(avr: &Avr) -> String {
    let (uuid, report) = call(
        avr,
        silence(100),
        Duration::from_secs(5),
        EndMode::AwaitHangup(Duration::from_secs(5)),
    );
    assert_eq!(
        report.ended_by,
        EndedBy::ServerHangup,
        "{}",
        report.summary()
    );
    assert!(
        report.duration < Duration::from_secs(2),
        "{:?}",
        report.duration
    );
    avr.wait_call_ended(&uuid, WAIT)
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn an_unreachable_asr_hangs_up_at_once_naming_the_service() {
    let (p, _rx) = services(PipelineOptions::default());
    let dead = format!("http://127.0.0.1:{}/speech-to-text-stream", closed_port());
    let avr = avr_for(&p, &[("ASR_URL", &dead)]);
    let end = hung_up_at_once(&avr);
    assert!(
        end.contains("agent unreachable (speech-to-text service (ASR_URL) unreachable"),
        "{end}"
    );
}

#[test]
fn an_asr_refusing_the_call_hangs_up_at_once_with_its_answer() {
    let (p, _rx) = services(PipelineOptions {
        asr_status: Some(503),
        ..PipelineOptions::default()
    });
    let avr = avr_for(&p, &[]);
    let end = hung_up_at_once(&avr);
    assert!(end.contains("answered HTTP 503"), "{end}");
}

#[test]
fn an_asr_stream_that_ends_is_reopened_once_then_the_call_ends() {
    let (p, rx) = services(PipelineOptions {
        asr_close_after: Some(Duration::from_millis(800)),
        ..PipelineOptions::default()
    });
    let avr = avr_for(&p, &[]);
    let (uuid, report) = call(
        &avr,
        silence(100),
        Duration::from_secs(8),
        EndMode::AwaitHangup(Duration::from_secs(8)),
    );
    // Reopened once after the first end; the reopened stream did not work either: hangup.
    assert_eq!(
        report.ended_by,
        EndedBy::ServerHangup,
        "{}",
        report.summary()
    );
    let events = events_until(&rx, &uuid, |e| matches!(e, PipelineEvent::AsrClosed { .. }));
    let more = events_until(&rx, &uuid, |e| matches!(e, PipelineEvent::AsrClosed { .. }));
    let opened = events
        .iter()
        .chain(&more)
        .filter(|e| matches!(e, PipelineEvent::AsrOpened { .. }))
        .count();
    assert_eq!(opened, 2);
    let end = avr.wait_call_ended(&uuid, WAIT);
    assert!(
        end.contains("pipeline service failed") && end.contains("reopening the speech-to-text"),
        "{end}"
    );
    assert!(avr
        .call_logs(&uuid)
        .iter()
        .any(|l| l.contains("Speech-to-text stream lost") && l.contains("reconnecting once")));
}

#[test]
fn a_working_asr_stream_that_ends_is_reopened_and_the_call_goes_on() {
    let (p, rx) = services(PipelineOptions {
        asr_close_after: Some(Duration::from_millis(1500)),
        answer: Some("Okay.".into()),
        ..PipelineOptions::default()
    });
    let avr = avr_for(&p, &[]);
    // Each stream hears a second of tone: it works, so each end is reopened.
    let (uuid, report) = call(
        &avr,
        tone(5000),
        Duration::from_millis(5000),
        EndMode::Close,
    );
    assert_eq!(report.ended_by, EndedBy::Client, "{}", report.summary());
    let mut opened = 0;
    let deadline = Instant::now() + WAIT;
    while opened < 3 && Instant::now() < deadline {
        let e = events_until(&rx, &uuid, |e| matches!(e, PipelineEvent::AsrOpened { .. }));
        opened += e
            .iter()
            .filter(|e| matches!(e, PipelineEvent::AsrOpened { .. }))
            .count();
    }
    assert!(opened >= 3, "{opened} streams");
    let end = avr.wait_call_ended(&uuid, WAIT);
    assert!(end.contains("caller hung up"), "{end}");
}

#[test]
fn a_failing_model_costs_one_turn_not_the_call() {
    let (p, _rx) = services(PipelineOptions {
        llm_status: Some(500),
        ..PipelineOptions::default()
    });
    let avr = avr_for(&p, &[]);
    let (uuid, report) = call(
        &avr,
        tone(2100),
        Duration::from_millis(3500),
        EndMode::Close,
    );
    assert_eq!(report.ended_by, EndedBy::Client, "{}", report.summary());
    let end = avr.wait_call_ended(&uuid, WAIT);
    assert!(end.contains("caller hung up"), "{end}");
    let failures = avr
        .call_logs(&uuid)
        .into_iter()
        .filter(|l| l.contains("language model (LLM_URL)") && l.contains("answered HTTP 500"))
        .count();
    assert_eq!(failures, 2, "one line per failed turn");
}

#[test]
fn a_failing_sentence_is_skipped_and_the_others_spoken() {
    let (p, rx) = services(PipelineOptions {
        answer: Some("One. Two. Three.".into()),
        tts_fail_text: Some("Two".into()),
        ..PipelineOptions::default()
    });
    let avr = avr_for(&p, &[]);
    let (uuid, _) = call(
        &avr,
        tone(2100),
        Duration::from_millis(4000),
        EndMode::Close,
    );
    let events = events_until(&rx, &uuid, |e| matches!(e, PipelineEvent::AsrClosed { .. }));
    assert_eq!(tts_texts(&events)[..3], ["One.", "Two.", "Three."]);
    // The second turn's history holds what the caller heard.
    let bodies = llm_bodies(&events);
    assert_eq!(
        bodies[1]["messages"][1],
        json!({"role": "assistant", "content": "One. Three."})
    );
    avr.wait_call_ended(&uuid, WAIT);
    assert!(avr
        .call_logs(&uuid)
        .iter()
        .any(|l| l.contains("answered HTTP 500") && l.contains("skipping the sentence \"Two.\"")));
    let agent: Vec<String> = transcriptions(&avr, &uuid)
        .into_iter()
        .filter(|(r, _)| r == "agent")
        .map(|(_, t)| t)
        .collect();
    assert_eq!(agent[..2], ["One.", "Three."]);
}

#[test]
fn a_slow_model_is_cut_at_its_first_byte_budget() {
    let (p, _rx) = services(PipelineOptions {
        llm_first_byte: Duration::from_secs(5),
        ..PipelineOptions::default()
    });
    let avr = avr_for(&p, &[("PIPELINE_FIRST_BYTE_TIMEOUT", "400")]);
    let (uuid, report) = call(
        &avr,
        tone(1100),
        Duration::from_millis(3000),
        EndMode::Close,
    );
    assert_eq!(report.ended_by, EndedBy::Client, "{}", report.summary());
    avr.wait_call_ended(&uuid, WAIT);
    assert!(avr
        .call_logs(&uuid)
        .iter()
        .any(|l| l.contains("did not answer in time: 400 ms waiting for the answer to start")));
}

#[test]
fn a_caller_hanging_up_closes_every_request_and_thread() {
    let (p, rx) = services(PipelineOptions {
        answer: Some(format!("{}.", "la ".repeat(60))),
        tts_chunk: Duration::from_millis(100),
        tts_gap: Duration::from_millis(90),
        ..PipelineOptions::default()
    });
    let avr = avr_for(&p, &[]);
    let threads_before = avr.threads();
    let (uuid, _) = call(
        &avr,
        tone(1100),
        Duration::from_millis(2500),
        EndMode::Close,
    );
    let events = events_until(&rx, &uuid, |e| matches!(e, PipelineEvent::TtsDone { .. }));
    assert!(
        matches!(
            events.last(),
            Some(PipelineEvent::TtsDone {
                cancelled: true,
                ..
            })
        ),
        "{events:#?}"
    );
    avr.wait_call_ended(&uuid, WAIT);
    // The end line is written once every helper thread of the call is joined.
    assert_eq!(avr.threads(), threads_before);
}

#[test]
fn a_wideband_caller_is_heard_at_8_khz_and_answered_in_its_own_kind() {
    let (p, rx) = services(PipelineOptions::default());
    let avr = avr_for(&p, &[]);
    let (uuid, mut opts) = call_options(avr.addr(), Duration::from_millis(4000), EndMode::Close);
    opts.rate_hz = 16_000;
    opts.audio = AudioSource::Pcm(Arc::new(tone_at(1100, 16_000)));
    let report = run_call(&opts).expect("call");
    // The simulator's checker holds every reply to the caller's kind (slin16) and 20 ms.
    assert!(report.violations.is_empty(), "{}", report.summary());
    let events = events_until(&rx, &uuid, |e| matches!(e, PipelineEvent::AsrClosed { .. }));
    // The services speak 8 kHz: 4 s of caller audio is about 64,000 bytes up (the converter
    // may round by a sample), not 128,000.
    let uploaded = uploaded(&events);
    assert!(
        uploaded.is_some_and(|b| (56_000..=64_320).contains(&b)),
        "uploaded {uploaded:?}"
    );
    assert_eq!(tts_texts(&events)[0], "You said: Transcript 1.");
    // The answer is heard: 640-byte frames of 16 kHz audio, some of them loud.
    let loud = to_samples(&report.received)
        .chunks(320)
        .filter(|f| f.iter().any(|s| s.unsigned_abs() > 500))
        .count();
    assert!(loud >= 20, "{loud} loud 20 ms frames");
}
