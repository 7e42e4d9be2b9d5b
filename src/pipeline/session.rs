//! A call's pipeline, as its thread sees it: caller audio and digits in, what the agent
//! says out, the conversation's history, and who may talk when.
//!
//! Blocking work happens on helper threads ([`super::asr`], [`super::turn`]), which report
//! back through a channel and ring the pipeline's [`Bell`]; the call's thread polls that bell
//! beside its sockets and calls [`Pipeline::on_ready`]. Everything here runs on the call's
//! thread and never blocks, except [`Pipeline::close`], which joins the helpers.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::asr::AsrStream;
use super::barge_in::{VadParams, Voice, VoiceDetector};
use super::client::ServiceError;
use super::llm_stream::{Message, Role};
use super::shared::{Msg, Shared};
use super::turn::Turn;
use super::upload::{Upload, Uploaded};
use crate::config::PipelineConfig;
use crate::proto::audiosocket::SLIN_HZ;
use crate::proto::sts::{FromAgent, ToAgent};
use crate::sys::Bell;

/// The rate every upstream pipeline service speaks, both ways.
pub const SERVICE_HZ: u32 = SLIN_HZ;

/// A speech-to-text stream that gave a transcript or lasted this long worked: if it ends,
/// it is reopened once more. One that ends sooner after a reopening means the service is
/// failing, and the call ends rather than reconnect in a loop.
const STREAM_WORKED: Duration = Duration::from_secs(10);

/// What the pipeline tells the call.
#[derive(Debug)]
pub enum Output {
    /// The speech-to-text stream is open: caller audio may flow.
    Connected,
    /// The speech-to-text service could not be reached or refused the call: hang up now.
    Unreachable(String),
    /// The speech-to-text stream broke and could not be reopened: the call cannot go on.
    Failed(String),
    /// As an STS agent would say it: audio, an interruption, a transcript.
    Message(FromAgent),
}

/// What a call's pipeline did, for its end-of-call line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PipelineStats {
    pub transcripts: u64,
    /// Agent turns started (the greeting included).
    pub turns: u64,
    /// Turns cut off by the caller (barge-in, new words).
    pub interrupted: u64,
    pub sentences: u64,
    /// Caller audio chunks written to the speech-to-text stream, and dropped.
    pub uploaded: u64,
    pub dropped: u64,
    pub reconnects: u64,
}

/// The speech-to-text side.
struct Listening {
    stream: Option<AsrStream>,
    upload: Option<Upload>,
    /// The open stream's start, and whether it gave a transcript.
    since: Instant,
    heard: bool,
    /// The stream was reopened after an end, and has not worked since.
    reopened: bool,
    /// The stream has been up once: a later failure is not "unreachable".
    was_up: bool,
}

/// One call's pipeline.
pub struct Pipeline {
    shared: Arc<Shared>,
    rx: Receiver<Msg>,
    bell: Arc<Bell>,
    listening: Listening,
    history: Vec<Message>,
    turn: Option<Turn>,
    next_turn: u64,
    voice: Option<VoiceDetector>,
    stats: PipelineStats,
}

impl Pipeline {
    /// Starts the call's pipeline: opens the speech-to-text stream and, with a
    /// `SYSTEM_MESSAGE`, speaks the greeting. `caller_hz` is the rate of what
    /// [`Pipeline::send`] will be given.
    pub fn start(uuid: &str, config: Arc<PipelineConfig>, now: Instant) -> io::Result<Pipeline> {
        let bell = Arc::new(Bell::new()?);
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared::new(uuid, config.clone(), tx, bell.clone()));
        let voice = (!config.interrupt_listening)
            .then(|| VoiceDetector::new(SERVICE_HZ, vad_params(&config)));
        let mut pipeline = Pipeline {
            listening: Listening {
                stream: None,
                upload: None,
                since: now,
                heard: false,
                reopened: false,
                was_up: false,
            },
            shared,
            rx,
            bell,
            history: Vec::new(),
            turn: None,
            next_turn: 0,
            voice,
            stats: PipelineStats::default(),
        };
        pipeline.listening.stream = Some(AsrStream::start(&pipeline.shared, 0)?);
        if let Some(greeting) = config.system_message.clone() {
            pipeline.history.push(Message {
                role: Role::Assistant,
                content: greeting.clone(),
            });
            let id = pipeline.new_turn_id();
            pipeline.turn = Turn::say(&pipeline.shared, id, &greeting);
            pipeline.stats.turns += 1;
        }
        Ok(pipeline)
    }

    fn uuid(&self) -> &str {
        &self.shared.uuid
    }

    fn new_turn_id(&mut self) -> u64 {
        self.next_turn += 1;
        self.next_turn
    }

    /// Caller audio (s16le at 8 kHz) or a digit. `playing`: agent audio waits in playout,
    /// i.e. the agent is speaking.
    pub fn send(&mut self, item: ToAgent, playing: bool, out: &mut Vec<Output>) {
        // Speaking: audio waits in playout, or a turn that was heard is still streaming (its
        // next piece may not be there yet).
        let playing = playing || self.turn.as_ref().is_some_and(|t| t.audible);
        match item {
            ToAgent::Audio(pcm) => {
                let barged = match self.voice.as_mut().map(|v| v.push(&pcm)) {
                    Some(Some(Voice::Started)) => playing,
                    _ => false,
                };
                if barged {
                    log::info!(
                        "[{}] Barge-in: the caller speaks while the agent does",
                        self.uuid()
                    );
                    self.interrupt(true, out);
                }
                // INTERRUPT_LISTENING: the caller is not heard while the agent speaks.
                let deaf = self.voice.is_none() && playing;
                if !deaf {
                    self.upload(&pcm);
                }
            }
            ToAgent::Dtmf(digit) => {
                self.on_caller_words(format!("DTMF {digit}"), playing, out);
            }
        }
    }

    fn upload(&mut self, pcm: &[u8]) {
        let Some(upload) = self.listening.upload.as_mut() else {
            return;
        };
        if upload.send(pcm) == Uploaded::Sent {
            self.stats.uploaded += 1;
            return;
        }
        self.stats.dropped += 1;
        if self.stats.dropped == 1 {
            log::warn!(
                "[{}] The speech-to-text service is not reading caller audio: dropping it \
                 until it does (logged once per call)",
                self.shared.uuid
            );
        }
    }

    /// The bell rang: takes every report of the helper threads.
    pub fn on_ready(&mut self, playing: bool, now: Instant, out: &mut Vec<Output>) {
        self.bell.clear();
        while let Ok(msg) = self.rx.try_recv() {
            self.on_msg(msg, playing, now, out);
        }
    }

    fn on_msg(&mut self, msg: Msg, playing: bool, now: Instant, out: &mut Vec<Output>) {
        let current =
            |attempt: u32, l: &Listening| l.stream.as_ref().is_some_and(|s| s.attempt == attempt);
        match msg {
            Msg::AsrUp { attempt, upload } => {
                if !current(attempt, &self.listening) {
                    return;
                }
                self.listening.upload = Some(upload);
                self.listening.since = now;
                self.listening.heard = false;
                if !self.listening.was_up {
                    self.listening.was_up = true;
                    out.push(Output::Connected);
                }
            }
            Msg::Transcript { attempt, text } => {
                if current(attempt, &self.listening) {
                    self.listening.heard = true;
                    self.listening.reopened = false;
                }
                self.stats.transcripts += 1;
                out.push(Output::Message(FromAgent::Transcript {
                    role: "user".into(),
                    text: text.clone(),
                }));
                self.on_caller_words(text, playing, out);
            }
            Msg::AsrEnded { attempt, result } => {
                if current(attempt, &self.listening) {
                    self.on_asr_ended(attempt, result, now, out);
                }
            }
            Msg::Spoken { turn, text } => {
                if let Some(t) = self.turn.as_mut().filter(|t| t.id == turn) {
                    t.spoken.push(text.clone());
                    self.stats.sentences += 1;
                    out.push(Output::Message(FromAgent::Transcript {
                        role: "agent".into(),
                        text,
                    }));
                }
            }
            Msg::Audio { turn, pcm } => {
                if let Some(t) = self.turn.as_mut().filter(|t| t.id == turn) {
                    t.audible = true;
                    out.push(Output::Message(FromAgent::Audio(pcm)));
                }
            }
            Msg::TurnDone { turn } => {
                if self.turn.as_ref().is_some_and(|t| t.id == turn) {
                    self.end_turn(false);
                }
            }
        }
    }

    /// The caller said something (a transcript, a digit): whatever the agent was saying
    /// gives way, and the model is asked.
    fn on_caller_words(&mut self, words: String, playing: bool, out: &mut Vec<Output>) {
        if self.turn.is_some() || playing {
            self.interrupt(playing, out);
        }
        self.history.push(Message {
            role: Role::User,
            content: words,
        });
        let id = self.new_turn_id();
        self.turn = Turn::reply(&self.shared, id, &self.history);
        self.stats.turns += 1;
    }

    /// Stops the agent's turn; `audible`: what it was saying is cut off for the caller too.
    fn interrupt(&mut self, audible: bool, out: &mut Vec<Output>) {
        if self.turn.is_some() {
            self.stats.interrupted += 1;
        }
        self.end_turn(true);
        if audible {
            out.push(Output::Message(FromAgent::Interruption));
        }
    }

    /// Ends the current turn (cancelling it, or after it finished) and records what the
    /// caller heard of it.
    fn end_turn(&mut self, cancel: bool) {
        let Some(mut turn) = self.turn.take() else {
            return;
        };
        if cancel {
            turn.stop();
        } else {
            turn.join();
        }
        // The greeting is in the history from the start.
        let greeting = turn.id == 1 && self.shared.config.system_message.is_some();
        if !turn.spoken.is_empty() && !greeting {
            self.history.push(Message {
                role: Role::Assistant,
                content: turn.spoken.join(" "),
            });
        }
    }

    fn on_asr_ended(
        &mut self,
        attempt: u32,
        result: Result<u32, ServiceError>,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let l = &mut self.listening;
        if let Some(stream) = l.stream.take() {
            stream.stop();
        }
        l.upload = None;
        let why = match &result {
            Ok(_) => "the stream ended".to_string(),
            Err(e) => e.to_string(),
        };
        let refused = matches!(
            result,
            Err(ServiceError::Resolve { .. }
                | ServiceError::Connect { .. }
                | ServiceError::Status { .. }
                | ServiceError::Timeout { .. })
        );
        if !l.was_up || (refused && attempt == 0) {
            out.push(Output::Unreachable(why));
            return;
        }
        let worked = l.heard || now.duration_since(l.since) >= STREAM_WORKED;
        if l.reopened && (refused || !worked) {
            out.push(Output::Failed(format!(
                "{why}; reopening the speech-to-text stream failed"
            )));
            return;
        }
        log::warn!(
            "[{}] Speech-to-text stream lost ({why}); reconnecting once",
            self.shared.uuid
        );
        self.stats.reconnects += 1;
        match AsrStream::start(&self.shared, attempt + 1) {
            Ok(stream) => {
                let l = &mut self.listening;
                l.stream = Some(stream);
                l.reopened = true;
                l.since = now;
                l.heard = false;
            }
            Err(e) => out.push(Output::Failed(format!(
                "{why}; cannot start a thread to reconnect: {e}"
            ))),
        }
    }

    /// The call is over: every request of the call is cut off and its threads joined.
    /// Returns what the pipeline did.
    pub fn close(mut self) -> PipelineStats {
        if let Some(mut turn) = self.turn.take() {
            turn.stop();
        }
        if let Some(upload) = self.listening.upload.take() {
            upload.finish();
        }
        if let Some(stream) = self.listening.stream.take() {
            stream.stop();
        }
        self.stats
    }
}

impl AsFd for Pipeline {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.bell.as_fd()
    }
}

/// The `VAD_*` variables as the detector takes them.
fn vad_params(config: &PipelineConfig) -> VadParams {
    let vad = config.vad;
    VadParams {
        positive: vad.positive_threshold,
        negative: vad
            .negative_threshold
            .unwrap_or((vad.positive_threshold - 0.15).max(0.0)),
        min_speech_frames: vad.min_speech_frames,
        redemption_frames: vad.redemption_frames,
    }
}
