//! One call's decisions, with no sockets and no threads: what happened goes in as an
//! [`Event`], what to do comes out as [`Action`]s, and the time is an argument.
//!
//! The call's thread ([`super::bridge`]) does the I/O: it reads frames and agent messages,
//! hands each to [`CallState::handle`], then carries out the actions it got back, in order.
//! Some actions report back (playout refused audio, an interruption dropped so much, the
//! agent is not reading): those reports are events too, so every decision and every
//! per-call log line of the call is here, and tested here.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use serde_json::json;

use super::caller_codec::{self, CallerCodec};
use super::rates::{CallRates, SILENT_CALLER_HZ};
use super::EndReason;
use crate::agent::{Backlog, LinkEnd};
use crate::config::CodecChoice;
use crate::playout::{self, Finished, Stop};
use crate::proto::audiosocket::{self, Frame, FrameError, SLIN_HZ};
use crate::proto::g711::Codec;
use crate::proto::sts::{FromAgent, ToAgent};
use crate::sys::Printable;
use crate::webhook::{self, EventKind};

/// After avr-core hangs up, how long Asterisk gets to close its side.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Caller-audio buffers kept for reuse. One frame is sent before the next is read, so one
/// is enough in steady state; a few cover the frames released at once when the codec is
/// decided or the agent answers, without keeping a backlog's worth.
const SPARE_BUFFERS: usize = 4;

/// What happened to the call.
#[derive(Debug)]
pub enum Event<'a> {
    /// A whole frame from Asterisk.
    CallerFrame(Frame<'a>),
    /// Asterisk's bytes can no longer be cut into frames.
    CallerUnframable(FrameError),
    /// Asterisk closed its side, `unfinished` bytes into a frame.
    CallerClosed { unfinished: usize },
    /// Reading from Asterisk failed.
    CallerReadFailed(io::Error),
    /// The agent has its `init` and what it sent behind its handshake was handled: caller
    /// audio and digits go to it from now on, those kept meanwhile first.
    AgentConnected,
    /// The agent (or in pipeline mode, the speech-to-text service) could not be reached or
    /// refused the call; the text says which and why.
    AgentUnreachable(String),
    /// Pipeline mode: the speech-to-text stream broke and could not be reopened.
    ServiceFailed { why: String, queued_ms: usize },
    /// No thread could be started to reach the agent.
    AgentThreadFailed,
    /// A message from the agent.
    AgentMessage(FromAgent),
    /// The agent closed or its connection broke; `queued_ms` of its audio wait to be played.
    AgentEnded { end: LinkEnd, queued_ms: usize },
    /// A message to the agent was dropped: its connection holds 512 KiB unsent.
    AgentNotReading,
    /// Playout refused agent audio: [`playout::MAX_QUEUED`] already waits.
    PlayoutFull,
    /// An interruption dropped `dropped_ms` of queued agent audio.
    PlayoutInterrupted { dropped_ms: usize },
    /// The playout clock let go of the call.
    PlayoutFinished(Finished),
    /// avr-core is stopping and the call outlived `SHUTDOWN_GRACE`.
    Shutdown,
    /// The call's thread cannot wait for its sockets any more.
    PollFailed(io::Error),
    /// [`CallState::deadline`] passed.
    DeadlinePassed,
}

/// What the call's thread is to do.
#[derive(Debug)]
pub enum Action {
    /// Send this to the agent now.
    ToAgent(ToAgent),
    /// Play from now on at this rate, in its audio kind (the caller's own).
    SetPlayoutRate(u32),
    /// Queue this agent audio for the caller; report [`Event::PlayoutFull`] if refused.
    Play(Vec<u8>),
    /// Queue this agent audio, the end of its talk spurt (the resampler's tail), likewise.
    PlayLast(Vec<u8>),
    /// Drop the queued agent audio; report [`Event::PlayoutInterrupted`].
    InterruptPlayout,
    /// Ask playout to end this way.
    StopPlayout(Stop),
    /// Hand this event to the webhooks.
    Emit(webhook::Event),
    /// Count a failed agent connection (`avr_sts_connect_failures_total`).
    CountConnectFailure,
    /// Close the AudioSocket: Asterisk did not after the hangup.
    CloseCaller,
}

/// Oddities logged once per call each: a stream that repeats one keeps the log readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Oddity {
    RateChange,
    UnknownFrame,
    MalformedFrame,
    SecondUuid,
    BacklogFull,
    AgentNotReading,
    AgentUnknownMessage,
    AgentInvalidMessage,
    AgentTooFarAhead,
}

/// The oddities already logged: one bit each.
#[derive(Debug, Default, Clone, Copy)]
struct Noted(u16);

// Every oddity has its bit.
const _: () = assert!((Oddity::AgentTooFarAhead as u32) < u16::BITS);

impl Noted {
    /// Records `oddity`; `true` the first time, when it is to be logged.
    fn first(&mut self, oddity: Oddity) -> bool {
        let bit = 1 << oddity as u16;
        let first = self.0 & bit == 0;
        self.0 |= bit;
        first
    }
}

/// Where the agent is, as far as caller audio is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Agent {
    /// Not reached yet: caller audio and digits wait in the backlog.
    Connecting,
    /// Connected: they go to it at once.
    Up,
    /// Never reached, closed or failed: they have nowhere to go.
    Gone,
}

/// One call's state after its UUID.
pub struct CallState {
    uuid: String,
    agent: Agent,
    /// Caller audio and DTMF waiting for the agent to answer.
    backlog: Backlog,
    codec: CallerCodec,
    /// The caller's rate, the agent's, and the conversions between them.
    rates: CallRates,
    /// Decoded caller frames on their way to the agent; kept so its memory is reused.
    decoded: Vec<Vec<u8>>,
    /// Buffers of caller audio the agent has been sent, for the next frames (at most
    /// [`SPARE_BUFFERS`]).
    spare: Vec<Vec<u8>>,
    frames_in: u64,
    noted: Noted,
    /// The first reason wins.
    end: Option<EndReason>,
    /// The clock has let go (hung up or failed): Asterisk has until then to close.
    close_by: Option<Instant>,
    /// `CALLER_IDLE_TIMEOUT`, if the call has one: no frame for that long ends it.
    idle_timeout: Option<Duration>,
    /// When the last frame from Asterisk (or the UUID) was read.
    last_frame: Instant,
    /// The caller's stream can no longer be framed: read and discard until it closes.
    unframable: bool,
    /// The caller's side is over: the call's thread stops.
    over: bool,
}

impl CallState {
    /// A call whose UUID was read at `now` and whose agent is being reached; `codec` is
    /// `AUDIO_CODEC`.
    pub fn new(uuid: &str, codec: CodecChoice, now: Instant) -> CallState {
        CallState {
            uuid: uuid.to_string(),
            agent: Agent::Connecting,
            backlog: Backlog::default(),
            codec: CallerCodec::new(uuid, codec),
            rates: CallRates::new(SLIN_HZ),
            decoded: Vec::new(),
            spare: Vec::new(),
            frames_in: 0,
            noted: Noted::default(),
            end: None,
            close_by: None,
            idle_timeout: None,
            last_frame: now,
            unframable: false,
            over: false,
        }
    }

    /// No frame at all from Asterisk for `timeout` (`CALLER_IDLE_TIMEOUT`) ends the call:
    /// a peer that sent its UUID and went silent would otherwise hold a `MAX_CALLS` place, a
    /// thread and an agent session for ever (docs/audiosocket.md §10.5).
    pub fn with_idle_timeout(mut self, timeout: Duration) -> CallState {
        self.idle_timeout = Some(timeout);
        self
    }

    /// The agent speaks `agent_hz` (`STS_SAMPLE_RATE`) instead of 8 kHz.
    pub fn with_agent_rate(mut self, agent_hz: u32) -> CallState {
        self.rates = CallRates::new(agent_hz);
        self.backlog = Backlog::for_rate(agent_hz);
        self
    }

    /// Takes in what happened at `now`; appends what to do to `actions`, in order.
    pub fn handle(&mut self, event: Event<'_>, now: Instant, actions: &mut VecDeque<Action>) {
        let uuid = self.uuid.as_str();
        match event {
            Event::CallerFrame(frame) => self.on_frame(frame, now, actions),
            Event::CallerUnframable(e) => {
                self.end(EndReason::Protocol(e.to_string()));
                actions.push_back(Action::StopPlayout(Stop::Hangup));
                self.unframable = true;
            }
            Event::CallerClosed { unfinished } => {
                let why = if unfinished > 0 && !self.unframable {
                    format!("Asterisk closed the connection mid-frame ({unfinished} bytes)")
                } else {
                    "Asterisk closed the connection".into()
                };
                self.caller_gone(why);
            }
            Event::CallerReadFailed(e) => self.caller_gone(match e.kind() {
                io::ErrorKind::ConnectionReset => "connection reset".into(),
                _ => format!("read failed: {e}"),
            }),
            Event::AgentConnected => {
                if self.agent == Agent::Connecting {
                    self.agent = Agent::Up;
                    actions.extend(self.backlog.drain().map(Action::ToAgent));
                }
            }
            Event::AgentUnreachable(e) => {
                actions.push_back(Action::CountConnectFailure);
                self.agent_lost(EndReason::AgentUnreachable(e), actions);
            }
            Event::AgentThreadFailed => self.agent_lost(
                EndReason::Internal(
                    "cannot start the call's STS thread; raise TasksMax or lower MAX_CALLS".into(),
                ),
                actions,
            ),
            Event::AgentMessage(msg) => self.on_agent_message(msg, now, actions),
            Event::AgentEnded { end, queued_ms } => {
                let (why, normal) = match end {
                    LinkEnd::AgentClosed { why, normal } => (
                        format!("{why}; playing {queued_ms} ms of queued audio, then hanging up"),
                        normal,
                    ),
                    LinkEnd::Failed(e) => {
                        (format!("{e}; playing queued audio, then hanging up"), false)
                    }
                };
                // An agent ending the conversation normally is how calls end: not a warning.
                self.agent_ended(EndReason::AgentClosed(why), normal, now, actions);
            }
            Event::ServiceFailed { why, queued_ms } => {
                let why = format!("{why}; playing {queued_ms} ms of queued audio, then hanging up");
                self.agent_ended(EndReason::ServiceFailed(why), false, now, actions);
            }
            Event::AgentNotReading => {
                if self.noted.first(Oddity::AgentNotReading) {
                    log::warn!(
                        "[{uuid}] The agent is not reading caller audio (512 KiB unsent): \
                         dropping caller audio until it does (logged once per call)"
                    );
                }
            }
            Event::PlayoutFull => {
                if self.noted.first(Oddity::AgentTooFarAhead) {
                    log::warn!(
                        "[{uuid}] The agent sent more than {} s of audio ahead of playback; \
                         dropping the excess",
                        playout::MAX_QUEUED.as_secs()
                    );
                }
            }
            Event::PlayoutInterrupted { dropped_ms } => {
                log::info!("[{uuid}] Interruption: dropped {dropped_ms} ms of queued agent audio");
                actions.push_back(Action::Emit(webhook::Event::new(
                    uuid,
                    EventKind::Interruption,
                    json!({}),
                )));
            }
            Event::PlayoutFinished(finished) => {
                if self.close_by.is_none() {
                    if let Finished::WriteFailed(kind, why) = finished {
                        // A reset or broken pipe is the caller leaving; the read says so.
                        if !matches!(
                            kind,
                            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                        ) {
                            self.end(EndReason::WriteFailed(why));
                        }
                    }
                    self.close_by = Some(now + CLOSE_WAIT);
                }
            }
            Event::Shutdown => {
                self.end(EndReason::Shutdown);
                actions.push_back(Action::StopPlayout(Stop::Hangup));
            }
            Event::PollFailed(e) => {
                self.end(EndReason::Internal(format!("poll failed: {e}")));
                self.over = true;
            }
            Event::DeadlinePassed => {
                if self.close_by.is_some() {
                    // Asterisk did not close after the hangup: close for it.
                    actions.push_back(Action::CloseCaller);
                    self.over = true;
                    return;
                }
                if let (Some(by), Some(timeout)) = (self.idle_deadline(), self.idle_timeout) {
                    if now >= by {
                        self.end(EndReason::CallerSilent(timeout));
                        actions.push_back(Action::StopPlayout(Stop::Hangup));
                    }
                }
                let due = self.rates.on_deadline(now);
                if due.fix_rate {
                    self.fix_playout_rate(SILENT_CALLER_HZ, actions);
                }
                if due.flush {
                    play_last(self.rates.flush(), actions);
                }
            }
        }
    }

    /// When the call's thread must report [`Event::DeadlinePassed`], if it must.
    pub fn deadline(&self) -> Option<Instant> {
        if self.close_by.is_some() {
            return self.close_by;
        }
        match (self.rates.deadline(), self.idle_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the caller counts as silent, while the call is not already ending.
    fn idle_deadline(&self) -> Option<Instant> {
        if self.end.is_some() {
            return None;
        }
        self.idle_timeout.map(|t| self.last_frame + t)
    }

    /// The caller's side is over: nothing more to read or decide.
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// Asterisk's bytes are still cut into frames (else they are read and discarded).
    pub fn reads_frames(&self) -> bool {
        !self.unframable
    }

    /// Why the call ends, once known.
    pub fn end_reason(&self) -> Option<&EndReason> {
        self.end.as_ref()
    }

    /// AudioSocket frames read from Asterisk, of every kind.
    pub fn frames_in(&self) -> u64 {
        self.frames_in
    }

    /// The rate playout runs at (the caller's), once known.
    pub fn caller_hz(&self) -> Option<u32> {
        self.rates.caller_hz()
    }

    /// The caller's codec, once forced or detected.
    pub fn codec(&self) -> Option<Codec> {
        self.codec.decided()
    }

    /// Records why the call ends; the first reason wins and is logged once.
    fn end(&mut self, reason: EndReason) {
        let normal = matches!(reason, EndReason::CallerHangup(_));
        self.end_as(reason, normal);
    }

    /// [`Self::end`], logged as information when it is a `normal` end, else as a warning.
    fn end_as(&mut self, reason: EndReason, normal: bool) {
        if self.end.is_some() {
            return;
        }
        let uuid = &self.uuid;
        if normal {
            log::info!("[{uuid}] Call ending: {reason}");
        } else {
            log::warn!("[{uuid}] Call ending: {reason}");
        }
        self.end = Some(reason);
    }

    fn caller_gone(&mut self, why: String) {
        self.end(EndReason::CallerHangup(why));
        self.over = true;
    }

    /// The agent is gone for good: what it sent is played in full (the converter's tail
    /// too), then avr-core hangs up.
    fn agent_ended(
        &mut self,
        reason: EndReason,
        normal: bool,
        now: Instant,
        actions: &mut VecDeque<Action>,
    ) {
        self.agent = Agent::Gone;
        self.backlog = Backlog::default();
        if self.rates.caller_hz().is_none() {
            self.fix_playout_rate(SILENT_CALLER_HZ, actions);
        }
        play_last(self.rates.flush(), actions);
        self.end_as(reason, normal);
        actions.push_back(Action::StopPlayout(Stop::Drain {
            until: now + playout::DRAIN_LIMIT,
        }));
    }

    /// The agent will not be reached: hang up at once.
    fn agent_lost(&mut self, reason: EndReason, actions: &mut VecDeque<Action>) {
        self.end(reason);
        actions.push_back(Action::StopPlayout(Stop::Hangup));
        self.agent = Agent::Gone;
        self.backlog = Backlog::default();
    }

    fn on_frame(&mut self, frame: Frame<'_>, now: Instant, actions: &mut VecDeque<Action>) {
        let uuid = self.uuid.as_str();
        self.frames_in += 1;
        self.last_frame = now;
        let item = match frame {
            Frame::Audio { rate_hz, payload } => {
                return self.on_caller_audio(rate_hz, payload, actions);
            }
            Frame::Dtmf(digit) => {
                log::info!("[{uuid}] DTMF digit: {digit}");
                actions.push_back(Action::Emit(webhook::Event::new(
                    uuid,
                    EventKind::DtmfDigit,
                    json!({"digit": digit.to_string()}),
                )));
                ToAgent::Dtmf(digit)
            }
            Frame::Hangup => {
                return self.caller_gone("Asterisk sent a hangup frame".into());
            }
            Frame::Error(code) => {
                return self.caller_gone(format!(
                    "Asterisk sent an error frame {}",
                    error_code_text(code)
                ));
            }
            Frame::Uuid(_) => {
                if self.noted.first(Oddity::SecondUuid) {
                    log::warn!("[{uuid}] Ignoring a second UUID frame");
                }
                return;
            }
            Frame::Unknown { kind, len } => {
                if self.noted.first(Oddity::UnknownFrame) {
                    log::warn!(
                        "[{uuid}] Ignoring AudioSocket frames of unknown kind 0x{kind:02x} \
                         ({len} bytes); logged once per call"
                    );
                }
                return;
            }
            Frame::Malformed { kind, len, reason } => {
                if self.noted.first(Oddity::MalformedFrame) {
                    log::warn!(
                        "[{uuid}] Ignoring a malformed kind 0x{kind:02x} frame ({len} bytes: \
                         {reason}); logged once per call"
                    );
                }
                return;
            }
        };
        self.forward(item, actions);
    }

    /// One audio frame from Asterisk at `rate_hz`: its kind fixes the rate of playout if
    /// nothing has; decoded (`0x10` may be G.711), converted to the agent's rate, forwarded.
    fn on_caller_audio(&mut self, rate_hz: u32, payload: &[u8], actions: &mut VecDeque<Action>) {
        if self.rates.caller_hz().is_none() {
            self.fix_playout_rate(rate_hz, actions);
        }
        let mut decoded = std::mem::take(&mut self.decoded);
        match (rate_hz == SLIN_HZ, self.codec.decided()) {
            // The codec is known (every frame after the first few): decoded into a buffer
            // that came back from the last frame sent, as `CallerCodec::decode` would.
            (true, Some(codec)) => {
                let mut pcm = self.spare.pop().unwrap_or_default();
                caller_codec::pcm_into(codec, payload, &mut pcm);
                decoded.push(pcm);
            }
            (true, None) => self.codec.decode(&self.uuid, payload, &mut decoded),
            (false, _) => {
                // Only slin has a wideband kind; an odd byte is lost, as Asterisk loses it.
                let mut pcm = self.spare.pop().unwrap_or_default();
                pcm.extend_from_slice(&payload[..payload.len() & !1]);
                decoded.push(pcm);
            }
        }
        for pcm in decoded.drain(..) {
            let (pcm, changed) = self.rates.to_agent(rate_hz, pcm);
            if changed && self.noted.first(Oddity::RateChange) {
                log::warn!(
                    "[{}] The caller's audio changed to {} ({rate_hz} Hz) mid-call; \
                     converting it to the agent's rate, playing at the first rate \
                     (logged once per call)",
                    self.uuid,
                    audiosocket::rate_name(rate_hz)
                );
            }
            if pcm.is_empty() {
                self.recycle(pcm);
            } else {
                self.forward(ToAgent::Audio(pcm), actions);
            }
        }
        self.decoded = decoded;
    }

    /// Takes back the buffer of caller audio the call's thread has sent: the next frame is
    /// decoded into it, so caller audio costs no allocation per frame (issue #15).
    pub fn recycle(&mut self, mut pcm: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS && pcm.capacity() > 0 {
            pcm.clear();
            self.spare.push(pcm);
        }
    }

    /// Fixes the rate of playout and plays the agent audio that waited for it.
    fn fix_playout_rate(&mut self, rate_hz: u32, actions: &mut VecDeque<Action>) {
        let agent_hz = self.rates.agent_hz();
        if rate_hz != SLIN_HZ || agent_hz != SLIN_HZ {
            log::info!(
                "[{}] Caller audio is {} ({rate_hz} Hz), the agent's {agent_hz} Hz{}",
                self.uuid,
                audiosocket::rate_name(rate_hz),
                if rate_hz == agent_hz {
                    ": no conversion"
                } else {
                    ": resampling both ways"
                }
            );
        }
        let waited = self.rates.fix_caller_rate(rate_hz);
        if rate_hz != SLIN_HZ {
            actions.push_back(Action::SetPlayoutRate(rate_hz));
        }
        play(waited, actions);
    }

    /// Caller audio or a digit: to the agent, or kept until it answers.
    fn forward(&mut self, item: ToAgent, actions: &mut VecDeque<Action>) {
        match self.agent {
            Agent::Up => actions.push_back(Action::ToAgent(item)),
            Agent::Connecting => {
                let pushed = self.backlog.push(item);
                if pushed.dropped_bytes > 0 && self.noted.first(Oddity::BacklogFull) {
                    log::warn!(
                        "[{}] The agent is not connected yet: keeping the newest 1 s of \
                         caller audio, dropping older audio",
                        self.uuid
                    );
                }
            }
            Agent::Gone => {
                if let ToAgent::Audio(pcm) = item {
                    self.recycle(pcm);
                }
            }
        }
    }

    fn on_agent_message(&mut self, msg: FromAgent, now: Instant, actions: &mut VecDeque<Action>) {
        let uuid = self.uuid.as_str();
        match msg {
            // Any length: an odd byte carries over to the next message (in the resampler, or
            // in playout).
            FromAgent::Audio(pcm) => {
                let (pcm, refused) = self.rates.from_agent(pcm, now);
                if refused > 0 {
                    self.handle(Event::PlayoutFull, now, actions);
                }
                play(pcm, actions);
            }
            FromAgent::Interruption => {
                self.rates.interrupt();
                actions.push_back(Action::InterruptPlayout);
            }
            // The agent's text is logged escaped (one event, one line); webhooks get it raw.
            FromAgent::Transcript { role, text } => {
                log::info!("[{uuid}] [{}]: {}", Printable(&role), Printable(&text));
                actions.push_back(Action::Emit(webhook::Event::new(
                    uuid,
                    EventKind::Transcription,
                    json!({"role": role, "text": text}),
                )));
            }
            FromAgent::AgentError(message) => {
                log::warn!("[{uuid}] STS error: {}", Printable(&message));
            }
            FromAgent::Unknown(kind) => {
                if self.noted.first(Oddity::AgentUnknownMessage) {
                    log::warn!(
                        "[{uuid}] Ignoring STS messages of unknown type \"{}\" (logged once per \
                         call)",
                        Printable(&kind)
                    );
                }
            }
            FromAgent::Invalid(why) => {
                if self.noted.first(Oddity::AgentInvalidMessage) {
                    log::warn!(
                        "[{uuid}] Ignoring an unusable STS message: {} (logged once per call)",
                        Printable(&why)
                    );
                }
            }
        }
    }
}

/// Bytes of an error frame's payload shown in the log; the rest is counted. Asterisk never
/// sends one (docs/audiosocket.md §3), so whatever does may send 64 KiB.
const ERROR_CODE_SHOWN: usize = 8;

/// An error frame's payload as the log shows it: `[01]`, or `[01, 02, …] … (65535 bytes)`.
fn error_code_text(code: &[u8]) -> String {
    let shown = &code[..code.len().min(ERROR_CODE_SHOWN)];
    if shown.len() == code.len() {
        format!("{shown:02x?}")
    } else {
        format!("{shown:02x?} … ({} bytes)", code.len())
    }
}

/// Plays agent audio at the caller's rate, if there is any.
fn play(pcm: Vec<u8>, actions: &mut VecDeque<Action>) {
    if !pcm.is_empty() {
        actions.push_back(Action::Play(pcm));
    }
}

/// Plays the end of the agent's talk spurt, if there is any.
fn play_last(pcm: Vec<u8>, actions: &mut VecDeque<Action>) {
    if !pcm.is_empty() {
        actions.push_back(Action::PlayLast(pcm));
    }
}

#[cfg(test)]
mod tests;
