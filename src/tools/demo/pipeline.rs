//! `avr-core demo --pipeline`: one pipeline-mode call (issue #12) end to end, on one screen.
//!
//! The built-in ASR, LLM and TTS services ([`EchoPipeline`]) run in this process, avr-core as
//! a child with `ASR_URL`, `LLM_URL`, `TTS_URL` and a `SYSTEM_MESSAGE` greeting (no
//! `STS_URL`). The caller listens to the greeting, speaks (a tone the fake ASR transcribes),
//! then listens to the answer and hangs up. The timeline merges what each service saw, the
//! caller's report, avr-core's log and the webhooks; the run fails if a step is missing, so
//! it doubles as a smoke test of the whole mode.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::{
    first_sound, loopback_command, ms, print_hooks, short, this_exe, wait_until, Line, Seen,
    Server, Timeline, SETTLE_LIMIT,
};
use crate::sys::lock;
use crate::tools::echo_pipeline::{EchoPipeline, PipelineEvent, PipelineOptions};
use crate::tools::rates::SLIN_RATE_HZ;
use crate::tools::simulate::{self, AudioSource, EndMode, SimOptions, SimReport};

/// Spoken through TTS as the call starts: short, so it is over before the caller speaks.
const GREETING: &str = "Hello, this is the demo.";
/// The fake LLM's answer: two sentences, so the timeline shows them sent to TTS one by one.
const ANSWER: &str = "You said: {message}. Goodbye for now!";
/// The greeting (24 characters, 50 ms of tone each: 1.2 s) is over by then.
const SPEAKS_AT: Duration = Duration::from_millis(1500);
/// A little more than the fake ASR's second of non-silent audio per transcript.
const SPEAKS_FOR: Duration = Duration::from_millis(1100);
/// The answer (38 characters: 1.9 s) starts about 2.5 s in; the caller listens to its end.
const CALL_SECONDS: Duration = Duration::from_millis(6000);
/// Loudest sample of a frame that counts as sound: the tones are thousands, silence is 0.
const LOUD: u16 = 500;
/// How often the event collector looks at its stop flag when no event comes.
const EVENT_POLL: Duration = Duration::from_millis(50);

/// The caller's audio: silence, then a faded 1 kHz tone for `length` from `at` (faded in and
/// out over 20 ms, as a voice: cut off dead, its last sample is a click the barge-in
/// detector may take for speech).
pub fn speech(at: Duration, length: Duration) -> Vec<i16> {
    let rate = SLIN_RATE_HZ as usize;
    let lead = at.as_millis() as usize * rate / 1000;
    let n = length.as_millis() as usize * rate / 1000;
    let ramp = (rate / 50) as f64; // 20 ms
    let mut pcm = vec![0; lead];
    pcm.extend((0..n).map(|i| {
        let edge = (i.min(n - 1 - i) as f64 / ramp).min(1.0);
        let gain = 0.5 - 0.5 * (edge * std::f64::consts::PI).cos();
        let x = (std::f64::consts::TAU * 1000.0 * i as f64 / rate as f64).sin();
        (x * 8000.0 * gain) as i16
    }));
    pcm
}

/// Arrival offsets (since the UUID) of the frames that carry sound, at 8 kHz.
pub fn loud_arrivals(report: &SimReport) -> Vec<Duration> {
    report
        .received
        .chunks(crate::proto::audiosocket::frame_bytes(SLIN_RATE_HZ))
        .zip(&report.arrivals)
        .filter(|(f, _)| {
            f.chunks_exact(2)
                .any(|s| i16::from_le_bytes([s[0], s[1]]).unsigned_abs() > LOUD)
        })
        .map(|(_, &at)| at)
        .collect()
}

/// Every service event with the time this process saw it (the transcript's own `at` for a
/// `Transcript`), collected on a thread until [`EventLog::stop`].
struct EventLog {
    events: Arc<Mutex<Vec<(Instant, PipelineEvent)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl EventLog {
    fn start(rx: Receiver<PipelineEvent>) -> Result<EventLog, String> {
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = thread::Builder::new()
            .name("demo-services".into())
            .spawn({
                let (events, stop) = (events.clone(), stop.clone());
                move || {
                    while !stop.load(Ordering::SeqCst) {
                        if let Ok(e) = rx.recv_timeout(EVENT_POLL) {
                            let at = match &e {
                                PipelineEvent::Transcript { at, .. } => *at,
                                _ => Instant::now(),
                            };
                            lock(&events).push((at, e));
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot watch the services: {e}"))?;
        Ok(EventLog {
            events,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops collecting and returns what was seen, in order.
    fn stop(mut self) -> Vec<(Instant, PipelineEvent)> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut all = std::mem::take(&mut *lock(&self.events));
        all.sort_by_key(|(at, _)| *at);
        all
    }
}

/// One timeline line for a service event (`None`: too chatty to print).
fn describe_event(e: &PipelineEvent) -> Option<(&'static str, String)> {
    Some(match e {
        PipelineEvent::AsrOpened { uuid } => (
            "asr",
            format!("speech-to-text stream opened by avr-core (X-UUID {uuid})"),
        ),
        PipelineEvent::AsrAudio { .. } => return None,
        PipelineEvent::Transcript { text, .. } => ("asr", format!("wrote the transcript {text:?}")),
        PipelineEvent::AsrClosed { bytes, .. } => (
            "asr",
            format!(
                "stream ended: {bytes} bytes of caller audio ({:.1} s)",
                *bytes as f64 / 16_000.0
            ),
        ),
        PipelineEvent::LlmRequest { body, .. } => (
            "llm",
            format!(
                "model request: message {}, {} messages of history",
                body["message"],
                body["messages"].as_array().map_or(0, Vec::len)
            ),
        ),
        PipelineEvent::LlmDone { cancelled, .. } => (
            "llm",
            if *cancelled {
                "answer cancelled by avr-core".into()
            } else {
                "answer streamed whole".into()
            },
        ),
        PipelineEvent::TtsRequest { text, n, .. } => (
            "tts",
            format!("sentence {n} to speech: {:?}", short(text, 80)),
        ),
        PipelineEvent::TtsDone {
            n,
            cancelled,
            bytes,
            ..
        } => (
            "tts",
            format!(
                "sentence {n}: {:.0} ms of audio written{}",
                *bytes as f64 / 16.0,
                if *cancelled { " (cancelled)" } else { "" }
            ),
        ),
    })
}

/// What the verdict needs from the services' events and the caller's report.
#[derive(Debug, Default, PartialEq)]
pub struct Steps {
    /// The greeting went to TTS before any transcript.
    pub greeting_sent: bool,
    /// The caller heard sound before the transcript (the greeting).
    pub greeting_heard: bool,
    pub transcript: Option<Instant>,
    pub model_request: Option<Instant>,
    /// The first sentence of the answer sent to TTS.
    pub first_sentence: Option<Instant>,
    /// Sentences sent to TTS after the model request.
    pub answer_sentences: usize,
    /// The first loud frame at the caller after the transcript.
    pub answer_heard: Option<Instant>,
}

impl Steps {
    /// Reads the steps from the services' events (in order) and the caller's loud frames.
    pub fn find(events: &[(Instant, PipelineEvent)], loud: &[Instant]) -> Steps {
        let mut s = Steps::default();
        for (at, e) in events {
            match e {
                PipelineEvent::TtsRequest { text, .. } if s.transcript.is_none() => {
                    s.greeting_sent |= text == GREETING;
                }
                PipelineEvent::Transcript { .. } if s.transcript.is_none() => {
                    s.transcript = Some(*at)
                }
                PipelineEvent::LlmRequest { .. } if s.transcript.is_some() => {
                    s.model_request.get_or_insert(*at);
                }
                PipelineEvent::TtsRequest { .. } if s.model_request.is_some() => {
                    s.first_sentence.get_or_insert(*at);
                    s.answer_sentences += 1;
                }
                _ => {}
            }
        }
        if let Some(t) = s.transcript {
            s.greeting_heard = loud.iter().any(|&a| a < t);
            s.answer_heard = loud.iter().copied().find(|&a| a > t);
        } else {
            s.greeting_heard = !loud.is_empty();
        }
        s
    }

    /// The steps not seen, for the error.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        let checks = [
            (self.greeting_sent, "the greeting never went to speech"),
            (self.greeting_heard, "the caller never heard the greeting"),
            (self.transcript.is_some(), "the ASR wrote no transcript"),
            (
                self.model_request.is_some(),
                "no model request followed the transcript",
            ),
            (
                self.answer_sentences > 0,
                "no sentence of the answer went to speech",
            ),
            (
                self.answer_heard.is_some(),
                "the caller never heard the answer",
            ),
        ];
        for (ok, what) in checks {
            if !ok {
                m.push(what);
            }
        }
        m
    }
}

/// Runs the pipeline demo and prints its timeline; the error says which steps were not seen.
pub fn run() -> Result<(), String> {
    let t0 = Instant::now();
    let (tx, lines) = crossbeam_channel::unbounded();
    let timeline = Timeline(tx);
    let seen = Arc::new(Mutex::new(Seen::default()));

    let services = EchoPipeline::start(
        ([127, 0, 0, 1], 0).into(),
        PipelineOptions {
            answer: Some(ANSWER.into()),
            ..PipelineOptions::default()
        },
    )
    .map_err(|e| format!("cannot start the pipeline services: {e}"))?;
    let log = EventLog::start(services.events())?;
    let [asr, llm, tts] = services.urls();
    timeline.now(
        "demo",
        format!("ASR, LLM and TTS services listening: {asr}, {llm}, {tts}"),
    );
    let hooks = print_hooks(&timeline, &seen)?;

    let dead_letters =
        std::env::temp_dir().join(format!("avr-core-demo-{}.jsonl", std::process::id()));
    // `loopback_command` is the STS setup; pipeline mode is STS_URL unset and the three set.
    let mut cmd = loopback_command(&this_exe()?, "", &hooks.url(), &dead_letters);
    cmd.env_remove("STS_URL")
        .env("ASR_URL", &asr)
        .env("LLM_URL", &llm)
        .env("TTS_URL", &tts)
        .env("SYSTEM_MESSAGE", GREETING);
    let server = Server::start(cmd, &timeline, &seen)?;
    let report = call(&server, &timeline, &seen);
    let _ = std::fs::remove_file(&dead_letters);
    drop(server);
    let events = log.stop();
    drop(services);

    for (at, e) in &events {
        if let Some((who, text)) = describe_event(e) {
            timeline.at(*at, who, text);
        }
    }
    let report = report?;
    let loud: Vec<Instant> = loud_arrivals(&report)
        .into_iter()
        .map(|d| report.started + d)
        .collect();
    let steps = Steps::find(&events, &loud);
    if let Some(&first) = loud.first() {
        timeline.at(first, "caller", "hears the greeting (first agent audio)");
    }
    if let Some(at) = steps.answer_heard {
        timeline.at(
            at,
            "caller",
            "hears the answer (first agent audio after the transcript)",
        );
    }

    let mut all: Vec<Line> = lines.try_iter().collect();
    all.sort_by_key(|l| l.at);
    println!(
        "avr-core demo --pipeline: one call through avr-core and the ASR, LLM and TTS services\n"
    );
    for l in &all {
        let t = l.at.saturating_duration_since(t0).as_secs_f64();
        println!("{t:>7.3} s  {:<8} {}", l.who, l.text);
    }
    println!();
    print!("{}", summary(&report, &steps));
    let mut missing: Vec<String> = steps.missing().into_iter().map(String::from).collect();
    if !report.violations.is_empty() {
        missing.push(format!(
            "protocol violations Asterisk would drop the call for: {}",
            report.violations.join("; ")
        ));
    }
    let seen = lock(&seen);
    for kind in ["call_started", "transcription", "call_ended"] {
        if !seen.hooks.iter().any(|k| k == kind) {
            missing.push(format!("no {kind} webhook arrived"));
        }
    }
    if missing.is_empty() {
        println!("demo OK: every step was seen");
        Ok(())
    } else {
        Err(missing.join("; "))
    }
}

/// Places the call (greeting, caller speaks, answer) and waits for avr-core to end it.
fn call(server: &Server, timeline: &Timeline, seen: &Mutex<Seen>) -> Result<SimReport, String> {
    let uuid = uuid::Uuid::new_v4();
    let uuid_text = uuid.hyphenated().to_string();
    let mut opts = SimOptions::new(server.audiosocket);
    opts.uuid = *uuid.as_bytes();
    opts.audio = AudioSource::Pcm(Arc::new(speech(SPEAKS_AT, SPEAKS_FOR)));
    opts.duration = CALL_SECONDS;
    opts.end = EndMode::Close;
    let report = simulate::run_call(&opts).map_err(|e| e.to_string())?;
    let t = |d: Duration| report.started + d;
    timeline.at(
        report.started,
        "caller",
        format!(
            "connected to {}, sent the UUID {uuid_text}",
            server.audiosocket
        ),
    );
    timeline.at(
        t(SPEAKS_AT),
        "caller",
        format!("speaks for {} ms (a 1 kHz tone)", SPEAKS_FOR.as_millis()),
    );
    timeline.at(
        t(SPEAKS_AT + SPEAKS_FOR),
        "caller",
        "falls silent and listens",
    );
    timeline.at(
        t(report.duration),
        "caller",
        format!("hangs up ({})", report.ended_by),
    );
    server.wait_call_ended(&uuid_text, SETTLE_LIMIT);
    wait_until(SETTLE_LIMIT, || {
        lock(seen).hooks.iter().any(|k| k == "call_ended")
    });
    Ok(report)
}

/// The call report: pacing at the caller and where the answer's time went.
fn summary(report: &SimReport, steps: &Steps) -> String {
    let mut s = String::from("the call at the caller (what Asterisk would see):\n");
    s += &format!(
        "  frames: {} sent, {} received; gap p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         at most {} frames in any 100 ms (5 = real time)\n",
        report.frames_sent,
        report.frames_received,
        ms(report.gap_p50),
        ms(report.gap_p99),
        ms(report.gap_max),
        report.max_frames_in_100ms
    );
    if let (Some(said), Some(asked), Some(spoken), Some(heard)) = (
        steps.transcript,
        steps.model_request,
        steps.first_sentence,
        steps.answer_heard,
    ) {
        let since = |a: Instant, b: Instant| ms(b.saturating_duration_since(a));
        s += &format!(
            "  answer: {:.0} ms from the transcript to the caller hearing it: {:.0} ms to the \
             model request, {:.0} ms for the model to stream the first sentence (the fake \
             writes small pieces 10 ms apart), {:.0} ms from that sentence to speech to its \
             first frame at the caller (text-to-speech, playout on the 20 ms grid); {} \
             sentences to speech\n",
            since(said, heard),
            since(said, asked),
            since(asked, spoken),
            since(spoken, heard),
            steps.answer_sentences
        );
    }
    let sound = first_sound(&report.received, SLIN_RATE_HZ).is_some();
    s += &format!(
        "  agent audio heard: {}; protocol violations: {}\n",
        if sound { "yes" } else { "no" },
        report.violations.len()
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(received: Vec<u8>, arrivals: Vec<Duration>) -> SimReport {
        SimReport {
            uuid: String::new(),
            started: Instant::now(),
            frames_sent: 0,
            frames_received: arrivals.len() as u64,
            received,
            arrivals,
            time_to_first_frame: None,
            gap_p50: Duration::ZERO,
            gap_p99: Duration::ZERO,
            gap_max: Duration::ZERO,
            max_frames_in_100ms: 0,
            violations: Vec::new(),
            hangup_received: false,
            server_closed: false,
            ended_by: simulate::EndedBy::Client,
            duration: Duration::ZERO,
            rate_hz: SLIN_RATE_HZ,
            prelude_frames: 0,
        }
    }

    #[test]
    fn speech_is_silence_then_a_faded_tone() {
        let pcm = speech(Duration::from_millis(100), Duration::from_millis(200));
        assert_eq!(pcm.len(), 800 + 1600);
        assert!(pcm[..800].iter().all(|&s| s == 0));
        // Faded in: the first samples are quiet, the middle loud, the end quiet again.
        assert!(pcm[800..804].iter().all(|s| s.unsigned_abs() < 100));
        assert!(pcm[1400..1600].iter().any(|&s| s > 7000));
        assert!(pcm[pcm.len() - 2..].iter().all(|s| s.unsigned_abs() < 100));
    }

    #[test]
    fn loud_frames_are_found_with_their_arrival() {
        let frame = |v: i16| -> Vec<u8> {
            std::iter::repeat_n(v.to_le_bytes(), 160)
                .flatten()
                .collect()
        };
        let received = [frame(0), frame(300), frame(-2000), frame(0)].concat();
        let arrivals = (1..=4).map(|i| Duration::from_millis(20 * i)).collect();
        assert_eq!(
            loud_arrivals(&report(received, arrivals)),
            vec![Duration::from_millis(60)]
        );
    }

    #[test]
    fn the_steps_are_read_from_the_events_in_order() {
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        let uuid = String::from("u");
        let tts = |text: &str, n| PipelineEvent::TtsRequest {
            uuid: uuid.clone(),
            text: text.into(),
            n,
        };
        let events = vec![
            (at(10), tts(GREETING, 1)),
            (
                at(2000),
                PipelineEvent::Transcript {
                    uuid: uuid.clone(),
                    text: "Transcript 1".into(),
                    at: at(2000),
                },
            ),
            (
                at(2002),
                PipelineEvent::LlmRequest {
                    uuid: uuid.clone(),
                    body: serde_json::json!({}),
                },
            ),
            (at(2003), tts("You said: Transcript 1.", 2)),
            (at(2004), tts("Goodbye for now!", 3)),
        ];
        let steps = Steps::find(&events, &[at(100), at(2030)]);
        assert_eq!(
            steps,
            Steps {
                greeting_sent: true,
                greeting_heard: true,
                transcript: Some(at(2000)),
                model_request: Some(at(2002)),
                first_sentence: Some(at(2003)),
                answer_sentences: 2,
                answer_heard: Some(at(2030)),
            }
        );
        assert!(steps.missing().is_empty());

        // Nothing heard after the transcript, and no model request: both are named.
        let steps = Steps::find(&events[..2], &[at(100)]);
        assert_eq!(
            steps.missing(),
            [
                "no model request followed the transcript",
                "no sentence of the answer went to speech",
                "the caller never heard the answer"
            ]
        );
        // No greeting sent or heard.
        let steps = Steps::find(&events[1..], &[]);
        assert_eq!(
            steps.missing()[..2],
            [
                "the greeting never went to speech",
                "the caller never heard the greeting"
            ]
        );
    }
}
