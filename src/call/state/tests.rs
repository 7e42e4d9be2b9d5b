//! [`CallState`] driven with events alone: no sockets, no threads, the time given.

use std::sync::{Mutex, Once};

use super::*;
use crate::agent::StsError;
use crate::call::rates::RATE_WAIT;
use crate::proto::audiosocket::CallId;
use crate::proto::g711::{linear_to_alaw, linear_to_ulaw};

// ---- the per-call log lines, captured ---------------------------------------------------

/// Every line logged in this test binary; each test reads those of its own call's uuid.
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        let line = format!("{} {}", record.level(), record.args());
        crate::sys::lock(&LINES).push(line);
    }
    fn flush(&self) {}
}

fn capture_logs() {
    static CAPTURE: Capture = Capture;
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        log::set_logger(&CAPTURE).expect("no other logger in unit tests");
        log::set_max_level(log::LevelFilter::Info);
    });
}

// ---- a call under test ------------------------------------------------------------------

struct Call {
    uuid: String,
    state: CallState,
    actions: VecDeque<Action>,
    now: Instant,
}

impl Call {
    fn new() -> Call {
        Call::with_codec(CodecChoice::Auto)
    }

    fn with_codec(codec: CodecChoice) -> Call {
        Call::with_rates(codec, 8_000)
    }

    /// A call whose agent speaks `agent_hz`.
    fn with_rates(codec: CodecChoice, agent_hz: u32) -> Call {
        capture_logs();
        let uuid = CallId::random().to_string();
        let now = Instant::now();
        Call {
            state: CallState::new(&uuid, codec, now).with_agent_rate(agent_hz),
            uuid,
            actions: VecDeque::new(),
            now,
        }
    }

    /// A call whose agent is connected.
    fn connected() -> Call {
        let mut call = Call::new();
        assert!(call.on(Event::AgentConnected).is_empty());
        call
    }

    /// Handles `event`; returns the actions, described.
    fn on(&mut self, event: Event<'_>) -> Vec<String> {
        self.state.handle(event, self.now, &mut self.actions);
        let now = self.now;
        self.actions.drain(..).map(|a| describe(&a, now)).collect()
    }

    /// Handles `event`; returns the actions themselves.
    fn on_raw(&mut self, event: Event<'_>) -> Vec<Action> {
        self.state.handle(event, self.now, &mut self.actions);
        self.actions.drain(..).collect()
    }

    fn frame(&mut self, frame: Frame<'_>) -> Vec<String> {
        self.on(Event::CallerFrame(frame))
    }

    fn audio(&mut self, payload: &[u8]) -> Vec<String> {
        self.frame(Frame::Audio {
            rate_hz: 8000,
            payload,
        })
    }

    fn message(&mut self, msg: FromAgent) -> Vec<String> {
        self.on(Event::AgentMessage(msg))
    }

    /// This call's log lines, without the `[uuid] ` prefix, each after its level.
    fn logged(&self) -> Vec<String> {
        let prefix = format!("[{}] ", self.uuid);
        crate::sys::lock(&LINES)
            .iter()
            .filter(|l| l.contains(&prefix))
            .map(|l| l.replacen(&prefix, "", 1))
            .collect()
    }

    /// How many of this call's log lines contain `text`.
    fn count_logged(&self, text: &str) -> usize {
        self.logged().iter().filter(|l| l.contains(text)).count()
    }

    fn reason(&self) -> Option<String> {
        self.state.end_reason().map(|r| r.to_string())
    }

    #[track_caller]
    fn assert_reason(&self, expected: &str) {
        assert_eq!(self.reason().as_deref(), Some(expected));
    }
}

fn describe(action: &Action, now: Instant) -> String {
    match action {
        Action::ToAgent(ToAgent::Audio(pcm)) => format!("agent audio {}", pcm.len()),
        Action::ToAgent(ToAgent::Dtmf(d)) => format!("agent dtmf {d}"),
        Action::Play(pcm) => format!("play {}", pcm.len()),
        Action::PlayLast(pcm) => format!("play last {}", pcm.len()),
        Action::SetPlayoutRate(hz) => format!("playout at {hz} Hz"),
        Action::InterruptPlayout => "interrupt".into(),
        Action::StopPlayout(Stop::Drain { until }) => {
            format!("drain {} s", (*until - now).as_secs())
        }
        Action::StopPlayout(Stop::Hangup) => "hang up".into(),
        Action::StopPlayout(Stop::Quiet) => "quiet".into(),
        Action::Emit(e) => format!("emit {} {}", e.kind.as_str(), e.payload),
        Action::CountConnectFailure => "count connect failure".into(),
        Action::CloseCaller => "close caller".into(),
    }
}

fn refused() -> StsError {
    StsError::Connect {
        url: "ws://agent:9".into(),
        source: io::Error::from(io::ErrorKind::ConnectionRefused),
    }
}

/// 20 ms of a 440 Hz tone at about -10 dBFS, encoded by `encode`.
fn tone_frames(encode: fn(i16) -> u8, frames: usize) -> Vec<Vec<u8>> {
    let samples: Vec<u8> = (0..frames * 160)
        .map(|n| {
            let t = n as f64 / 8000.0;
            encode((10_000.0 * (std::f64::consts::TAU * 440.0 * t).sin()).round() as i16)
        })
        .collect();
    samples.chunks(160).map(<[u8]>::to_vec).collect()
}

const SLIN_20MS: [u8; 320] = [0; 320];

// ---- the caller ends the call -----------------------------------------------------------

#[test]
fn a_hangup_frame_is_the_caller_hanging_up() {
    let mut call = Call::connected();
    assert_eq!(call.audio(&SLIN_20MS), ["agent audio 320"]);
    assert!(call.frame(Frame::Hangup).is_empty());
    assert!(call.state.is_over());
    call.assert_reason("caller hung up (Asterisk sent a hangup frame)");
    assert_eq!(call.state.frames_in(), 2);
    assert_eq!(
        call.logged(),
        [
            "INFO Audio codec detected: SLIN",
            "INFO Call ending: caller hung up (Asterisk sent a hangup frame)",
        ]
    );
}

#[test]
fn an_error_frame_is_the_caller_hanging_up() {
    let mut call = Call::connected();
    assert!(call.frame(Frame::Error(&[0x01, 0x02])).is_empty());
    assert!(call.state.is_over());
    call.assert_reason("caller hung up (Asterisk sent an error frame [01, 02])");
    // A 64 KiB payload makes a line of the usual length, not a quarter-megabyte one.
    let mut flood = Call::connected();
    flood.frame(Frame::Error(&[0xab; 65_535]));
    flood.assert_reason(
        "caller hung up (Asterisk sent an error frame [ab, ab, ab, ab, ab, ab, ab, ab] … \
         (65535 bytes))",
    );
}

#[test]
fn end_of_stream_is_the_caller_hanging_up_and_says_if_mid_frame() {
    let mut call = Call::connected();
    assert!(call.on(Event::CallerClosed { unfinished: 0 }).is_empty());
    assert!(call.state.is_over());
    call.assert_reason("caller hung up (Asterisk closed the connection)");

    let mut call = Call::connected();
    call.on(Event::CallerClosed { unfinished: 5 });
    call.assert_reason("caller hung up (Asterisk closed the connection mid-frame (5 bytes))");
}

#[test]
fn a_failed_read_is_the_caller_hanging_up() {
    let mut call = Call::connected();
    call.on(Event::CallerReadFailed(
        io::ErrorKind::ConnectionReset.into(),
    ));
    assert!(call.state.is_over());
    call.assert_reason("caller hung up (connection reset)");

    let mut call = Call::connected();
    call.on(Event::CallerReadFailed(io::Error::other("bad descriptor")));
    call.assert_reason("caller hung up (read failed: bad descriptor)");
}

// ---- the agent ends the call ------------------------------------------------------------

#[test]
fn the_agent_closing_drains_its_audio_then_hangs_up() {
    let mut call = Call::connected();
    let end = LinkEnd::AgentClosed {
        why: "code 1000".into(),
        normal: true,
    };
    assert_eq!(
        call.on(Event::AgentEnded {
            end,
            queued_ms: 240
        }),
        ["drain 10 s"]
    );
    assert!(!call.state.is_over(), "the caller still hears the rest");
    call.assert_reason("agent closed (code 1000; playing 240 ms of queued audio, then hanging up)");
    assert_eq!(
        call.count_logged("INFO Call ending: agent closed (code 1000; playing 240 ms"),
        1
    );
    // Caller audio has nowhere to go now.
    assert!(call.audio(&SLIN_20MS).is_empty());
    // An abnormal close (or a broken connection) is a warning.
    let mut failed = Call::connected();
    failed.on(Event::AgentEnded {
        end: LinkEnd::AgentClosed {
            why: "code 1011: internal error".into(),
            normal: false,
        },
        queued_ms: 0,
    });
    assert_eq!(
        failed.count_logged("WARN Call ending: agent closed (code 1011"),
        1
    );
    assert!(call.frame(Frame::Dtmf('1'))[0].starts_with("emit dtmf_digit"));
    assert_eq!(call.frame(Frame::Dtmf('1')).len(), 1);
}

#[test]
fn a_broken_agent_link_drains_too() {
    let mut call = Call::connected();
    let end = LinkEnd::Failed(StsError::Socket("reset by peer".into()));
    assert_eq!(
        call.on(Event::AgentEnded { end, queued_ms: 0 }),
        ["drain 10 s"]
    );
    assert_eq!(
        call.reason().as_deref(),
        Some(
            "agent closed (STS connection failed: reset by peer; playing queued audio, then \
             hanging up)"
        )
    );
}

#[test]
fn an_unreachable_agent_hangs_up_at_once_and_is_counted() {
    let mut call = Call::new();
    assert!(call.audio(&SLIN_20MS).is_empty(), "kept for the agent");
    assert_eq!(
        call.on(Event::AgentUnreachable(refused().to_string())),
        ["count connect failure", "hang up"]
    );
    assert!(call
        .reason()
        .unwrap()
        .starts_with("agent unreachable (cannot connect to STS ws://agent:9: "));
    assert!(call.audio(&SLIN_20MS).is_empty(), "no agent to send it to");
}

#[test]
fn no_thread_for_the_agent_hangs_up_at_once() {
    let mut call = Call::new();
    assert_eq!(call.on(Event::AgentThreadFailed), ["hang up"]);
    assert_eq!(
        call.reason().as_deref(),
        Some(
            "avr-core could not carry the call (cannot start the call's STS thread; raise \
             TasksMax or lower MAX_CALLS)"
        )
    );
}

// ---- the caller's stream is not AudioSocket ---------------------------------------------

#[test]
fn an_unframable_stream_hangs_up_and_is_only_read_until_it_closes() {
    let mut call = Call::connected();
    let e = FrameError::TooLarge {
        kind: 0x10,
        len: 70_000,
        max: 65_535,
    };
    let text = e.to_string();
    assert_eq!(call.on(Event::CallerUnframable(e)), ["hang up"]);
    assert!(!call.state.reads_frames());
    assert!(!call.state.is_over(), "read until Asterisk closes");
    assert_eq!(call.reason(), Some(format!("protocol error ({text})")));
    // The bytes of a half frame left behind are no news: the first reason stands.
    call.on(Event::CallerClosed { unfinished: 7 });
    assert!(call.state.is_over());
    assert_eq!(call.reason(), Some(format!("protocol error ({text})")));
    assert_eq!(call.count_logged("Call ending"), 1);
}

// ---- a caller that goes silent ----------------------------------------------------------

const IDLE: Duration = Duration::from_secs(5);

/// A connected call with a `CALLER_IDLE_TIMEOUT` of [`IDLE`], its UUID read at `call.now`.
fn idle_call() -> Call {
    let mut call = Call::connected();
    call.state = CallState::new(&call.uuid, CodecChoice::Slin, call.now).with_idle_timeout(IDLE);
    assert!(call.on(Event::AgentConnected).is_empty());
    call
}

#[test]
fn a_caller_silent_for_the_idle_timeout_is_hung_up_with_its_reason() {
    let mut call = idle_call();
    let uuid_at = call.now;
    assert_eq!(call.state.deadline(), Some(uuid_at + IDLE));
    // Each frame pushes the deadline back.
    call.now += Duration::from_secs(2);
    call.audio(&SLIN_20MS);
    assert_eq!(call.state.deadline(), Some(call.now + IDLE));
    let last = call.now;
    // Woken early (another timer): nothing ends.
    call.now = last + IDLE - Duration::from_millis(1);
    assert!(call.on(Event::DeadlinePassed).is_empty());
    assert!(call.reason().is_none());
    call.now = last + IDLE;
    assert_eq!(call.on(Event::DeadlinePassed), ["hang up"]);
    call.assert_reason("caller silent (no frame from Asterisk for 5 s)");
    assert_eq!(
        call.logged().last().map(String::as_str),
        Some("WARN Call ending: caller silent (no frame from Asterisk for 5 s)")
    );
    // Hanging up: the idle timer is done; then Asterisk has the close wait.
    assert_eq!(call.state.deadline(), None);
    assert!(!call.state.is_over());
    call.on(Event::PlayoutFinished(Finished::HungUp));
    assert_eq!(call.state.deadline(), Some(call.now + CLOSE_WAIT));
    call.now += CLOSE_WAIT;
    assert_eq!(call.on(Event::DeadlinePassed), ["close caller"]);
    assert!(call.state.is_over());
    assert_eq!(call.count_logged("Call ending"), 1);
}

#[test]
fn every_kind_of_frame_counts_as_the_caller_being_there() {
    let mut call = idle_call();
    let frames = [
        Frame::Dtmf('5'),
        Frame::Unknown { kind: 0x02, len: 0 },
        Frame::Uuid([0; 16]),
        Frame::Malformed {
            kind: 0x03,
            len: 2,
            reason: "two bytes",
        },
    ];
    for frame in frames {
        call.now += IDLE - Duration::from_millis(1);
        call.frame(frame);
        assert_eq!(call.state.deadline(), Some(call.now + IDLE));
    }
    assert!(call.reason().is_none());
}

#[test]
fn the_idle_timer_merges_with_the_rate_timer_and_stops_once_the_call_ends() {
    // No caller audio yet: the rate's own deadline comes first.
    let mut call = idle_call();
    assert_eq!(call.state.deadline(), Some(call.now + IDLE));
    call.message(FromAgent::Audio(vec![0; 320]));
    assert_eq!(call.state.deadline(), Some(call.now + RATE_WAIT.min(IDLE)));
    // Another reason first: the idle timer no longer counts.
    let mut call = idle_call();
    call.on(Event::Shutdown);
    assert_eq!(call.state.deadline(), None);
    call.now += IDLE;
    call.on(Event::DeadlinePassed);
    call.assert_reason("avr-core is shutting down (SHUTDOWN_GRACE ended)");
}

// ---- playout lets go --------------------------------------------------------------------

#[test]
fn a_write_failure_ends_the_call_and_asterisk_gets_the_close_wait() {
    let mut call = Call::connected();
    let stall = Finished::WriteFailed(io::ErrorKind::TimedOut, "no audio taken for 1 s".into());
    assert!(call.on(Event::PlayoutFinished(stall.clone())).is_empty());
    call.assert_reason("cannot write to Asterisk (no audio taken for 1 s)");
    assert_eq!(call.state.deadline(), Some(call.now + CLOSE_WAIT));
    // Seen again at a later bell: nothing changes.
    call.now += Duration::from_secs(1);
    call.on(Event::PlayoutFinished(stall));
    assert_eq!(
        call.state.deadline(),
        Some(call.now - Duration::from_secs(1) + CLOSE_WAIT)
    );
    assert_eq!(call.on(Event::DeadlinePassed), ["close caller"]);
    assert!(call.state.is_over());
}

#[test]
fn a_broken_pipe_or_reset_is_the_caller_leaving_not_a_write_failure() {
    for kind in [io::ErrorKind::BrokenPipe, io::ErrorKind::ConnectionReset] {
        let mut call = Call::connected();
        call.on(Event::PlayoutFinished(Finished::WriteFailed(
            kind,
            "gone".into(),
        )));
        assert_eq!(call.reason(), None, "{kind:?}: the read says why");
        assert_eq!(call.state.deadline(), Some(call.now + CLOSE_WAIT));
        call.on(Event::CallerClosed { unfinished: 0 });
        call.assert_reason("caller hung up (Asterisk closed the connection)");
    }
}

#[test]
fn after_a_hangup_asterisk_has_the_close_wait_to_close() {
    let mut call = Call::connected();
    call.on(Event::Shutdown);
    assert_eq!(call.state.deadline(), None);
    call.on(Event::PlayoutFinished(Finished::HungUp));
    assert_eq!(call.state.deadline(), Some(call.now + CLOSE_WAIT));
    call.assert_reason("avr-core is shutting down (SHUTDOWN_GRACE ended)");
}

// ---- shutdown ---------------------------------------------------------------------------

#[test]
fn a_shutdown_hangs_up_and_its_reason_stands() {
    let mut call = Call::connected();
    assert_eq!(call.on(Event::Shutdown), ["hang up"]);
    assert!(!call.state.is_over(), "Asterisk still has to close");
    call.frame(Frame::Hangup);
    assert!(call.state.is_over());
    call.assert_reason("avr-core is shutting down (SHUTDOWN_GRACE ended)");
    assert_eq!(
        call.logged(),
        ["WARN Call ending: avr-core is shutting down (SHUTDOWN_GRACE ended)"]
    );
}

#[test]
fn a_failed_poll_ends_the_call() {
    let mut call = Call::connected();
    call.on(Event::PollFailed(io::Error::other("EINVAL")));
    assert!(call.state.is_over());
    call.assert_reason("avr-core could not carry the call (poll failed: EINVAL)");
}

// ---- what the agent says ----------------------------------------------------------------

#[test]
fn agent_audio_of_any_length_is_played_whole() {
    let mut call = Call::connected();
    // A caller frame fixes the rate of playout (8 kHz, as the agent's: no conversion).
    call.audio(&SLIN_20MS);
    // An odd length is a sample cut in two, not an error: all of it goes to playout.
    let odd = || FromAgent::Audio(vec![0; 641]);
    assert_eq!(call.message(odd()), ["play 641"]);
    assert_eq!(call.message(odd()), ["play 641"]);
    assert_eq!(call.logged(), ["INFO Audio codec detected: SLIN"]);
    // Too far ahead: playout refused some; said once.
    assert!(call.on(Event::PlayoutFull).is_empty());
    call.on(Event::PlayoutFull);
    assert_eq!(
        call.logged()
            .iter()
            .filter(|l| l.ends_with(
                "The agent sent more than 120 s of audio ahead of playback; dropping the excess"
            ))
            .count(),
        1
    );
}

#[test]
fn an_interruption_clears_playout_then_is_logged_and_emitted() {
    let mut call = Call::connected();
    assert_eq!(call.message(FromAgent::Interruption), ["interrupt"]);
    assert_eq!(
        call.on(Event::PlayoutInterrupted { dropped_ms: 300 }),
        ["emit interruption {}"]
    );
    assert_eq!(
        call.logged(),
        ["INFO Interruption: dropped 300 ms of queued agent audio"]
    );
}

#[test]
fn a_transcript_is_logged_and_emitted_with_role_and_text() {
    let mut call = Call::connected();
    let msg = FromAgent::Transcript {
        role: "agent".into(),
        text: "Hello, how can I help?".into(),
    };
    assert_eq!(
        call.message(msg),
        [r#"emit transcription {"role":"agent","text":"Hello, how can I help?"}"#]
    );
    assert_eq!(call.logged(), ["INFO [agent]: Hello, how can I help?"]);
}

#[test]
fn the_agents_text_is_logged_on_one_line_and_emitted_raw() {
    let mut call = Call::connected();
    let forged = "bye\nWARN [0000] Call ending: forged\r\u{1b}[2J";
    let msg = FromAgent::Transcript {
        role: "agent\n".into(),
        text: forged.into(),
    };
    assert_eq!(
        call.message(msg),
        [
            r#"emit transcription {"role":"agent\n","text":"bye\nWARN [0000] Call ending: forged\r\u001b[2J"}"#
        ]
    );
    call.message(FromAgent::AgentError("quota\nexceeded".into()));
    call.message(FromAgent::Unknown("ma\trk".into()));
    assert_eq!(
        call.logged(),
        [
            r"INFO [agent\n]: bye\nWARN [0000] Call ending: forged\u{d}\u{1b}[2J",
            r"WARN STS error: quota\nexceeded",
            r#"WARN Ignoring STS messages of unknown type "ma\trk" (logged once per call)"#,
        ]
    );
    assert!(call.logged().iter().all(|l| !l.contains('\n')));
}

#[test]
fn an_agent_error_is_logged_and_the_call_goes_on() {
    let mut call = Call::connected();
    assert!(call
        .message(FromAgent::AgentError("quota".into()))
        .is_empty());
    assert_eq!(call.logged(), ["WARN STS error: quota"]);
    assert_eq!(call.reason(), None);
    assert_eq!(call.audio(&SLIN_20MS), ["agent audio 320"]);
}

#[test]
fn unknown_and_invalid_agent_messages_are_logged_once_per_call() {
    let mut call = Call::connected();
    for _ in 0..3 {
        assert!(call.message(FromAgent::Unknown("mark".into())).is_empty());
        assert!(call
            .message(FromAgent::Invalid("not JSON".into()))
            .is_empty());
    }
    assert_eq!(
        call.logged(),
        [
            "WARN Ignoring STS messages of unknown type \"mark\" (logged once per call)",
            "WARN Ignoring an unusable STS message: not JSON (logged once per call)",
        ]
    );
    // Once per call, not once per process.
    let mut other = Call::connected();
    other.message(FromAgent::Unknown("mark".into()));
    assert_eq!(other.count_logged("unknown type"), 1);
}

#[test]
fn an_agent_not_reading_is_logged_once() {
    let mut call = Call::connected();
    call.on(Event::AgentNotReading);
    call.on(Event::AgentNotReading);
    assert_eq!(
        call.count_logged("The agent is not reading caller audio"),
        1
    );
}

// ---- what the caller sends --------------------------------------------------------------

#[test]
fn dtmf_is_emitted_and_forwarded_or_kept_before_the_agent_answers() {
    let mut call = Call::new();
    assert_eq!(
        call.frame(Frame::Dtmf('5')),
        [r#"emit dtmf_digit {"digit":"5"}"#],
        "kept for the agent"
    );
    assert_eq!(call.on(Event::AgentConnected), ["agent dtmf 5"]);
    assert_eq!(
        call.frame(Frame::Dtmf('#')),
        [r##"emit dtmf_digit {"digit":"#"}"##, "agent dtmf #"]
    );
    assert_eq!(call.logged(), ["INFO DTMF digit: 5", "INFO DTMF digit: #"]);
}

#[test]
fn the_backlog_keeps_the_newest_second_until_the_agent_answers() {
    let mut call = Call::new();
    call.frame(Frame::Dtmf('1'));
    for _ in 0..60 {
        assert!(call.audio(&SLIN_20MS).is_empty());
    }
    assert_eq!(
        call.count_logged("The agent is not connected yet: keeping the newest 1 s"),
        1
    );
    let flushed = call.on(Event::AgentConnected);
    assert_eq!(flushed.len(), 51);
    assert_eq!(flushed[0], "agent dtmf 1");
    assert!(flushed[1..].iter().all(|a| a == "agent audio 320"));
    // Connected: straight to the agent; a second `connected` changes nothing.
    assert_eq!(call.audio(&SLIN_20MS), ["agent audio 320"]);
    assert!(call.on(Event::AgentConnected).is_empty());
}

#[test]
fn a_wideband_caller_sets_the_playout_rate_and_reaches_an_8_khz_agent_resampled() {
    let mut call = Call::connected();
    let frame = Frame::Audio {
        rate_hz: 16_000,
        payload: &[0; 640],
    };
    let first = call.frame(frame);
    assert_eq!(first[0], "playout at 16000 Hz");
    // 20 ms at 8 kHz (the converter starts from silence: one sample more at most).
    let audio: usize = first[1].trim_start_matches("agent audio ").parse().unwrap();
    assert!((320..=322).contains(&audio), "{first:?}");
    assert_eq!(first.len(), 2);
    assert_eq!(
        call.logged(),
        ["INFO Caller audio is slin16 (16000 Hz), the agent's 8000 Hz: resampling both ways"]
    );
    // From then on, 20 ms in, 20 ms out; the rate is set once.
    for _ in 0..5 {
        assert_eq!(call.frame(frame), ["agent audio 320"]);
    }
    // Agent audio comes back at 16 kHz.
    let played = call.message(FromAgent::Audio(vec![0; 3_200]));
    let bytes: usize = played[0].trim_start_matches("play ").parse().unwrap();
    assert!((6_400..=6_402).contains(&bytes), "{played:?}");
    assert_eq!(call.state.frames_in(), 6);
}

#[test]
fn an_8_khz_caller_with_an_8_khz_agent_passes_bytes_through_and_logs_nothing_new() {
    let mut call = Call::with_codec(CodecChoice::Slin);
    call.on(Event::AgentConnected);
    let pcm: Vec<u8> = (0..320).map(|i| i as u8).collect();
    let frame = Frame::Audio {
        rate_hz: 8_000,
        payload: &pcm,
    };
    let got = call.on_raw(Event::CallerFrame(frame));
    match &got[..] {
        [Action::ToAgent(ToAgent::Audio(sent))] => assert_eq!(*sent, pcm, "bit-exact"),
        other => panic!("{other:?}"),
    }
    assert_eq!(call.count_logged("Caller audio is"), 0);
}

#[test]
fn agent_audio_before_any_caller_audio_waits_for_the_rate_or_plays_at_8_khz() {
    let mut call = Call::connected();
    let greeting = || FromAgent::Audio(vec![1; 1_600]);
    assert!(
        call.message(greeting()).is_empty(),
        "held for the caller's rate"
    );
    assert_eq!(call.state.deadline(), Some(call.now + RATE_WAIT));
    let frame = Frame::Audio {
        rate_hz: 16_000,
        payload: &[0; 640],
    };
    let got = call.frame(frame);
    assert_eq!(got[0], "playout at 16000 Hz");
    assert!(got[1].starts_with("play "), "{got:?}");

    // A caller that sends no audio: after the wait, 8 kHz, as AudioSocket() always sends.
    let mut quiet = Call::connected();
    quiet.message(greeting());
    quiet.now += RATE_WAIT;
    assert_eq!(quiet.on(Event::DeadlinePassed), ["play 1600"]);
    assert_eq!(quiet.state.deadline(), None);
}

#[test]
fn another_agent_rate_converts_both_ways_and_flushes_the_tail_when_the_agent_pauses() {
    let mut call = Call::with_rates(CodecChoice::Slin, 24_000);
    call.on(Event::AgentConnected);
    let got = call.audio(&[0; 320]);
    assert_eq!(
        call.count_logged(
            "INFO Caller audio is slin (8000 Hz), the agent's 24000 Hz: resampling both ways"
        ),
        1
    );
    let sent: usize = got[0].trim_start_matches("agent audio ").parse().unwrap();
    assert!((960..=962).contains(&sent), "{got:?}");
    let played = call.message(FromAgent::Audio(vec![0; 960]));
    assert_eq!(played.len(), 1);
    // The agent pauses: its tail is pushed out once its next message is no longer due.
    let by = call.state.deadline().expect("a flush is due");
    call.now = by;
    let tail = call.on(Event::DeadlinePassed);
    assert!(
        tail.len() == 1 && tail[0].starts_with("play last "),
        "{tail:?}"
    );
    assert_eq!(call.state.deadline(), None);
}

#[test]
fn a_caller_that_changes_rate_mid_call_is_converted_and_logged_once() {
    let mut call = Call::connected();
    call.audio(&[0; 320]);
    for _ in 0..2 {
        let frame = Frame::Audio {
            rate_hz: 16_000,
            payload: &[0; 640],
        };
        let got = call.frame(frame);
        assert!(got.iter().all(|a| a.starts_with("agent audio")), "{got:?}");
    }
    assert_eq!(
        call.count_logged("changed to slin16 (16000 Hz) mid-call"),
        1
    );
}

#[test]
fn a_second_uuid_and_odd_frames_are_ignored_and_logged_once_each() {
    let mut call = Call::connected();
    for _ in 0..2 {
        assert!(call.frame(Frame::Uuid([7; 16])).is_empty());
        assert!(call.frame(Frame::Unknown { kind: 0x02, len: 4 }).is_empty());
        let malformed = Frame::Malformed {
            kind: 0x03,
            len: 2,
            reason: "a digit is one byte",
        };
        assert!(call.frame(malformed).is_empty());
    }
    assert_eq!(
        call.logged(),
        [
            "WARN Ignoring a second UUID frame",
            "WARN Ignoring AudioSocket frames of unknown kind 0x02 (4 bytes); logged once per \
             call",
            "WARN Ignoring a malformed kind 0x03 frame (2 bytes: a digit is one byte); logged \
             once per call",
        ]
    );
    assert!(!call.state.is_over());
}

#[test]
fn each_oddity_is_noted_once_and_apart_from_the_others() {
    let all = [
        Oddity::RateChange,
        Oddity::UnknownFrame,
        Oddity::MalformedFrame,
        Oddity::SecondUuid,
        Oddity::BacklogFull,
        Oddity::AgentNotReading,
        Oddity::AgentUnknownMessage,
        Oddity::AgentInvalidMessage,
        Oddity::AgentTooFarAhead,
    ];
    let mut noted = Noted::default();
    for (i, &oddity) in all.iter().enumerate() {
        assert!(noted.first(oddity), "{oddity:?} is new");
        assert!(!noted.first(oddity), "{oddity:?} was noted");
        assert!(all[i + 1..].iter().all(|&later| {
            let mut copy = noted;
            copy.first(later)
        }));
    }
}

// ---- the caller's codec -----------------------------------------------------------------

#[test]
fn slin_frames_decide_at_once_and_pass_through() {
    let mut call = Call::connected();
    assert_eq!(call.state.codec(), None);
    assert_eq!(call.audio(&SLIN_20MS), ["agent audio 320"]);
    assert_eq!(call.state.codec(), Some(Codec::Slin));
    assert_eq!(call.logged(), ["INFO Audio codec detected: SLIN"]);
    // A stray odd byte is dropped so the samples after it keep their alignment.
    let mut odd = vec![0u8; 641];
    odd[640] = 9;
    assert_eq!(call.audio(&odd), ["agent audio 640"]);
}

#[test]
fn ulaw_and_alaw_are_detected_from_the_audio_and_decoded() {
    for (encode, codec, name) in [
        (linear_to_ulaw as fn(i16) -> u8, Codec::Ulaw, "ULAW"),
        (linear_to_alaw, Codec::Alaw, "ALAW"),
    ] {
        let mut call = Call::connected();
        let mut sent = Vec::new();
        for (i, frame) in tone_frames(encode, 150).iter().enumerate() {
            let out = call.audio(frame);
            // Held, not guessed, until the codec is decided: never more than 60 ms.
            if i < 2 {
                assert!(out.is_empty(), "{name} frame {i} held: {out:?}");
            }
            sent.extend(out);
        }
        // 160 G.711 bytes are 320 bytes of s16le for the agent, every one of them.
        assert_eq!(sent, vec!["agent audio 320"; 150], "{name}");
        assert_eq!(call.state.codec(), Some(codec), "{name}");
        assert_eq!(
            call.logged(),
            [format!("INFO Audio codec detected: {name}")]
        );
    }
}

#[test]
fn a_forced_codec_skips_detection() {
    let call = Call::with_codec(CodecChoice::Alaw);
    assert_eq!(call.state.codec(), Some(Codec::Alaw));
    assert_eq!(
        call.logged(),
        ["INFO Audio codec forced by AUDIO_CODEC: ALAW"]
    );
    let mut call = call;
    call.on(Event::AgentConnected);
    // 320 bytes would decide slin under detection; forced, they are 320 A-law samples.
    assert_eq!(call.audio(&[0xd5; 320]), ["agent audio 640"]);
    assert_eq!(call.state.codec(), Some(Codec::Alaw));
    assert_eq!(call.logged().len(), 1, "nothing detected");
}

// ---- no allocation per frame in steady state (issue #15) --------------------------------

/// Frames handled before allocations are counted: buffers grow to their size, the codec is
/// decided, converters fill their history.
const WARM_UP: usize = 10;
/// Frames counted: each must allocate nothing.
const STEADY: usize = 200;

/// Carries out what the state asked as the call's thread does with buffers: caller audio
/// goes to `send` and its buffer back to the state; agent audio is "played" (its bytes
/// counted) and its buffer kept in `agent_buffer` for the next agent message, as the link
/// keeps it. Anything else is a test failure.
fn carry_out(
    call: &mut Call,
    send: &mut dyn FnMut(&ToAgent),
    agent_buffer: &mut Vec<u8>,
    played: &mut usize,
) {
    while let Some(action) = call.actions.pop_front() {
        match action {
            Action::ToAgent(item) => {
                send(&item);
                if let ToAgent::Audio(pcm) = item {
                    call.state.recycle(pcm);
                }
            }
            Action::Play(pcm) => {
                *played += pcm.len();
                if agent_buffer.capacity() == 0 {
                    *agent_buffer = pcm;
                }
            }
            Action::SetPlayoutRate(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Feeds caller frames of `payload` (and, after each, 20 ms of agent audio at `agent_hz`,
/// decoded into the buffer playout gave back) through the state; returns the allocations
/// made once warm, and the bytes sent to the agent and played.
fn steady_allocations(codec: CodecChoice, agent_hz: u32, payload: &[u8]) -> (u64, usize, usize) {
    let mut call = Call::with_rates(codec, agent_hz);
    call.on(Event::AgentConnected);
    let agent_pcm = vec![3u8; agent_hz as usize / 50 * 2];
    let (mut sent, mut played) = (0, 0);
    let mut agent_buffer = Vec::new();
    let mut before = 0;
    for i in 0..WARM_UP + STEADY {
        if i == WARM_UP {
            before = crate::alloc_count::on_this_thread();
        }
        call.now += Duration::from_millis(20);
        let frame = Frame::Audio {
            rate_hz: 8_000,
            payload,
        };
        call.state
            .handle(Event::CallerFrame(frame), call.now, &mut call.actions);
        let mut send = |item: &ToAgent| {
            if let ToAgent::Audio(pcm) = item {
                sent += pcm.len();
            }
        };
        carry_out(&mut call, &mut send, &mut agent_buffer, &mut played);
        // The agent's message, decoded into the buffer that came back (as the link does).
        let mut pcm = std::mem::take(&mut agent_buffer);
        pcm.clear();
        pcm.extend_from_slice(&agent_pcm);
        let msg = Event::AgentMessage(FromAgent::Audio(pcm));
        call.state.handle(msg, call.now, &mut call.actions);
        carry_out(&mut call, &mut send, &mut agent_buffer, &mut played);
    }
    let allocations = crate::alloc_count::on_this_thread() - before;
    (allocations, sent, played)
}

#[test]
fn caller_and_agent_audio_allocate_nothing_per_frame_once_warm() {
    let slin: Vec<u8> = (0..320u32).map(|i| (i * 7) as u8).collect();
    let ulaw: Vec<u8> = (0..160u32)
        .map(|i| linear_to_ulaw((i * 97) as i16))
        .collect();
    for (name, codec, agent_hz, payload) in [
        ("slin, 8 kHz agent", CodecChoice::Auto, 8_000, &slin),
        ("slin, 16 kHz agent", CodecChoice::Auto, 16_000, &slin),
        ("slin, 24 kHz agent", CodecChoice::Auto, 24_000, &slin),
        ("u-law, 8 kHz agent", CodecChoice::Ulaw, 8_000, &ulaw),
    ] {
        let (allocations, sent, played) = steady_allocations(codec, agent_hz, payload);
        let frames = WARM_UP + STEADY;
        // The path was really taken: the agent got its audio and the caller the agent's.
        assert!(
            sent >= (frames - 1) * 320 * agent_hz as usize / 8_000,
            "{name}: {sent}"
        );
        assert!(played >= (frames - 2) * 320, "{name}: {played}");
        assert_eq!(allocations, 0, "{name}: allocations in {STEADY} frames");
    }
}

/// The whole per-frame path of an STS call but poll(2) on the caller: a caller frame
/// through the state, its message built and sent by a [`Link`] over loopback to an agent
/// that echoes it, the echo received, decoded and handed to playout; nothing allocates.
#[test]
fn a_call_over_a_link_allocates_nothing_per_frame_once_warm() {
    use crate::agent::connect::test_ws;
    use crate::agent::Link;
    use crate::proto::sts::{audio_message, parse_to_agent, ToAgentMessage};
    use crate::sys::poll;
    use rustix::event::PollFd;
    use std::net::{TcpListener, TcpStream};
    use tungstenite::{protocol::Role, Message, WebSocket};

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (peer, _) = listener.accept().unwrap();
    // The agent, on its own thread (its allocations are not counted): echoes caller audio.
    let agent = std::thread::spawn(move || {
        let mut ws = WebSocket::from_raw_socket(peer, Role::Server, None);
        while let Ok(msg) = ws.read() {
            if let Message::Text(text) = msg {
                if let ToAgentMessage::Audio(pcm) = parse_to_agent(&text) {
                    if ws.send(Message::text(audio_message(&pcm))).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut link = Link::new(
        test_ws(tcp).unwrap(),
        r#"{"type":"init","uuid":"u"}"#.into(),
    )
    .expect("link");
    let mut call = Call::connected();
    let payload: Vec<u8> = (0..320u32).map(|i| (i * 7) as u8).collect();
    let mut agent_buffer = Vec::new();
    let (mut played, mut before) = (0, 0);
    let frames = WARM_UP + STEADY;
    for i in 0..frames {
        if i == WARM_UP {
            before = crate::alloc_count::on_this_thread();
        }
        let frame = Frame::Audio {
            rate_hz: 8_000,
            payload: &payload,
        };
        call.state
            .handle(Event::CallerFrame(frame), call.now, &mut call.actions);
        let mut send = |item: &ToAgent| {
            link.send(item).expect("sent");
        };
        carry_out(&mut call, &mut send, &mut agent_buffer, &mut played);
        // Waits for the echo, as the bridge waits in poll(2), and takes what came.
        let mut fds = [PollFd::from_borrowed_fd(link.fd(), link.interest())];
        poll(&mut fds, Some(Duration::from_secs(5))).unwrap();
        let revents = fds[0].revents();
        assert!(!revents.is_empty(), "no echo within 5 s");
        if link.on_ready(revents).expect("ready") {
            while let Some(msg) = link.receive().expect("received") {
                let msg = Event::AgentMessage(msg);
                call.state.handle(msg, call.now, &mut call.actions);
                let mut send = |_: &ToAgent| panic!("nothing to send");
                carry_out(&mut call, &mut send, &mut agent_buffer, &mut played);
                link.recycle(std::mem::take(&mut agent_buffer));
            }
        }
    }
    let allocations = crate::alloc_count::on_this_thread() - before;
    assert_eq!(link.stats.audio_sent, frames as u64);
    assert!(played >= (frames - 5) * 320, "{played}");
    link.close();
    agent.join().unwrap();
    assert_eq!(allocations, 0, "allocations in {STEADY} frames");
}
