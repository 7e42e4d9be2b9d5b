//! The rates of one call's audio and the conversions between them: the caller's (the audio
//! kind Asterisk sends) and the agent's (`STS_SAMPLE_RATE`). Pure logic, time as an
//! argument; [`super::state::CallState`] decides with it.
//!
//! - **Caller → agent**: each frame is converted from its own kind's rate to the agent's.
//!   Equal rates pass through untouched, so an 8 kHz caller with the default 8 kHz agent
//!   sends exactly the bytes it did before resampling existed.
//! - **Agent → caller**: playout runs at one rate for the whole call (Asterisk builds a new
//!   translation path at every change of kind, docs/audiosocket.md §8). That rate is the
//!   caller's, fixed by its first audio frame. Until then playout sends 8 kHz silence, and
//!   agent audio waits here (for [`RATE_WAIT`] at most: a caller that sends no audio gets
//!   8 kHz, what `AudioSocket()` always uses).
//! - A converter holds back the few milliseconds its filter looks ahead. When the agent
//!   pauses, that tail is pushed out ([`CallRates::flush`]) once the agent's next message
//!   is no longer due and what it sent is about to have played, so the end of an utterance
//!   is not held until the next one, and a pause while seconds of audio are still queued
//!   does not cut the stream (a flush continues it as if silence had come).

use std::time::{Duration, Instant};

use crate::audio::Resampler;
use crate::playout::agent_audio::PREBUFFER_WAIT;
use crate::playout::TICK;
use crate::proto::audiosocket::SLIN_HZ;

/// How long agent audio waits for the caller's first audio frame to tell the call's rate.
/// Asterisk sends audio from the answer on, so the first frame comes within a frame or two;
/// only a caller that sends nothing (silence suppression) makes it run out.
pub const RATE_WAIT: Duration = Duration::from_millis(100);

/// The rate playout gets when no caller audio tells it: 8 kHz, what `AudioSocket()` always
/// sends and what playout starts with.
pub const SILENT_CALLER_HZ: u32 = SLIN_HZ;

/// Agent audio kept while the caller's rate is unknown: two minutes, the bound playout
/// itself keeps.
const PENDING_SECONDS: usize = 120;

/// The largest agent message buffer kept as room for the next conversion: 64 KiB is 2 s at
/// 16 kHz, more than agents send at once (20 to 200 ms of audio a message).
const KEEP_SCRATCH: usize = 64 * 1024;

/// What [`CallRates::on_deadline`] found due.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// No caller audio told the rate in time: fix it at [`SILENT_CALLER_HZ`] with
    /// [`CallRates::fix_caller_rate`].
    pub fix_rate: bool,
    /// The agent paused: call [`CallRates::flush`].
    pub flush: bool,
}

/// One call's rates and converters.
pub struct CallRates {
    agent_hz: u32,
    /// The rate of playout, once fixed.
    caller_hz: Option<u32>,
    /// Caller → agent, for the rate of the caller frames seen last (`None`: equal rates).
    inbound: Option<(u32, Option<Resampler>)>,
    /// Agent → caller (`None`: equal rates, or the caller's rate not fixed yet).
    outbound: Option<Resampler>,
    /// Agent audio that came before the caller's rate was known.
    pending: Vec<u8>,
    /// The room the next converted caller frame is written into (the last frame's input).
    scratch: Vec<u8>,
    /// The room the next converted agent message is written into (the last one's input).
    scratch_out: Vec<u8>,
    /// When the caller's rate is fixed at 8 kHz if no caller audio came.
    rate_by: Option<Instant>,
    /// When the outbound converter's tail is pushed out.
    flush_by: Option<Instant>,
    /// When the agent audio sent so far will have played, if played from its arrival on
    /// without a gap (an estimate: playout starts a spurt up to 60 ms later).
    played_by: Option<Instant>,
}

impl CallRates {
    /// A call whose agent speaks `agent_hz`.
    pub fn new(agent_hz: u32) -> CallRates {
        CallRates {
            agent_hz,
            caller_hz: None,
            inbound: None,
            outbound: None,
            pending: Vec::new(),
            scratch: Vec::new(),
            scratch_out: Vec::new(),
            rate_by: None,
            flush_by: None,
            played_by: None,
        }
    }

    /// The agent's rate.
    pub fn agent_hz(&self) -> u32 {
        self.agent_hz
    }

    /// The rate of playout, once fixed.
    pub fn caller_hz(&self) -> Option<u32> {
        self.caller_hz
    }

    /// Fixes the rate of playout; returns the agent audio that waited for it, converted.
    /// Later calls change nothing and return nothing.
    pub fn fix_caller_rate(&mut self, rate_hz: u32) -> Vec<u8> {
        if self.caller_hz.is_some() {
            return Vec::new();
        }
        self.caller_hz = Some(rate_hz);
        self.rate_by = None;
        if rate_hz != self.agent_hz {
            self.outbound = Some(Resampler::new(self.agent_hz, rate_hz));
        }
        let pending = std::mem::take(&mut self.pending);
        self.convert_out(pending)
    }

    /// Caller audio at `rate_hz` (s16le) as the agent's rate. `true` with it when the caller
    /// changed rate since its last frame (its converter starts afresh).
    pub fn to_agent(&mut self, rate_hz: u32, pcm: Vec<u8>) -> (Vec<u8>, bool) {
        let changed = self.inbound.as_ref().is_some_and(|(hz, _)| *hz != rate_hz);
        if self.inbound.is_none() || changed {
            let resampler =
                (rate_hz != self.agent_hz).then(|| Resampler::new(rate_hz, self.agent_hz));
            self.inbound = Some((rate_hz, resampler));
        }
        let pcm = match self.inbound.as_mut().and_then(|(_, r)| r.as_mut()) {
            Some(resampler) => {
                // The output goes where the last frame's input was, and this input's room
                // takes the next output: no allocation per frame once both have grown.
                let mut out = std::mem::take(&mut self.scratch);
                out.clear();
                out.reserve(pcm.len() * self.agent_hz as usize / rate_hz as usize + 8);
                resampler.push(&pcm, &mut out);
                self.scratch = pcm;
                out
            }
            None => pcm,
        };
        (pcm, changed)
    }

    /// Agent audio that arrived at `now`, as the caller's rate, ready to play (possibly
    /// empty: held until the caller's rate is known, or inside the converter). The second
    /// value is how many bytes were refused because [`PENDING_SECONDS`] already wait.
    /// At equal rates the message itself is returned: no copy on the default path.
    pub fn from_agent(&mut self, pcm: Vec<u8>, now: Instant) -> (Vec<u8>, usize) {
        if self.caller_hz.is_none() {
            self.rate_by.get_or_insert(now + RATE_WAIT);
            let room =
                (PENDING_SECONDS * self.agent_hz as usize * 2).saturating_sub(self.pending.len());
            let take = pcm.len().min(room);
            self.pending.extend_from_slice(&pcm[..take]);
            return (Vec::new(), pcm.len() - take);
        }
        if self.outbound.is_some() {
            // The next message is due about when this one has played; past that plus the
            // jitter allowance, the agent has paused (the rule playout uses for a spurt's
            // end). The tail goes a tick before the queue would run dry, not earlier: an
            // agent ahead of real time may pause while seconds still wait to be played.
            let plays =
                Duration::from_secs_f64(pcm.len() as f64 / (2.0 * f64::from(self.agent_hz)));
            let played_by = self.played_by.map_or(now, |t| t.max(now)) + plays;
            self.played_by = Some(played_by);
            let paused = now + plays + PREBUFFER_WAIT;
            self.flush_by = Some(paused.max(played_by.checked_sub(TICK).unwrap_or(paused)));
        }
        (self.convert_out(pcm), 0)
    }

    /// The outbound converter's tail (the end of the agent's utterance), ready to play.
    pub fn flush(&mut self) -> Vec<u8> {
        self.flush_by = None;
        let mut out = Vec::new();
        if let Some(resampler) = self.outbound.as_mut() {
            resampler.flush(&mut out);
        }
        out
    }

    /// Barge-in: agent audio not played yet is dropped, here too.
    pub fn interrupt(&mut self) {
        self.pending.clear();
        self.flush_by = None;
        self.played_by = None;
        if let Some(resampler) = self.outbound.as_mut() {
            resampler.reset();
        }
    }

    /// When [`CallRates::on_deadline`] must be called, if ever.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.rate_by, self.flush_by) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What is due at `now`.
    pub fn on_deadline(&mut self, now: Instant) -> Due {
        Due {
            fix_rate: self.rate_by.is_some_and(|t| t <= now),
            flush: self.flush_by.is_some_and(|t| t <= now),
        }
    }

    fn convert_out(&mut self, pcm: Vec<u8>) -> Vec<u8> {
        match self.outbound.as_mut() {
            // Nothing pushed, nothing out (a converter fed nothing still emits its start).
            Some(resampler) if !pcm.is_empty() => {
                // As for caller audio: this message's room takes the next one's output (unless
                // it was an outsized message, not worth holding for the rest of the call).
                let mut out = std::mem::take(&mut self.scratch_out);
                out.clear();
                resampler.push(&pcm, &mut out);
                if pcm.capacity() <= KEEP_SCRATCH {
                    self.scratch_out = pcm;
                }
                out
            }
            Some(_) => Vec::new(),
            None => pcm,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_rates_pass_through_untouched() {
        let mut r = CallRates::new(8_000);
        let caller: Vec<u8> = (0..=255).collect();
        assert_eq!(r.to_agent(8_000, caller.clone()), (caller.clone(), false));
        assert!(r.fix_caller_rate(8_000).is_empty());
        let t0 = Instant::now();
        assert_eq!(r.from_agent(caller.clone(), t0), (caller, 0));
        assert_eq!(r.deadline(), None, "nothing to flush without a converter");
    }

    #[test]
    fn agent_audio_waits_for_the_callers_rate_then_is_converted() {
        let t0 = Instant::now();
        let mut r = CallRates::new(8_000);
        let tone = vec![1u8; 3_200];
        assert_eq!(r.from_agent(tone.clone(), t0), (Vec::new(), 0));
        assert_eq!(r.deadline(), Some(t0 + RATE_WAIT));
        assert_eq!(r.on_deadline(t0), Due::default());
        let played = r.fix_caller_rate(16_000);
        // 100 ms at 16 kHz (the converter starts from silence: one sample more at most).
        assert!((6_400..=6_402).contains(&played.len()), "{}", played.len());
        assert_eq!(r.caller_hz(), Some(16_000));
        assert!(r.fix_caller_rate(8_000).is_empty(), "fixed once");
        assert_eq!(r.caller_hz(), Some(16_000));
    }

    #[test]
    fn a_silent_caller_gets_8_khz_after_the_wait() {
        let t0 = Instant::now();
        let mut r = CallRates::new(16_000);
        r.from_agent(vec![0; 640], t0);
        assert_eq!(
            r.on_deadline(t0 + RATE_WAIT),
            Due {
                fix_rate: true,
                flush: false
            }
        );
    }

    #[test]
    fn the_tail_is_flushed_once_the_agent_pauses() {
        let t0 = Instant::now();
        let mut r = CallRates::new(8_000);
        r.fix_caller_rate(16_000);
        // 20 ms of agent audio at t0: due again until 20 ms + the jitter allowance.
        r.from_agent(vec![0; 320], t0);
        let by = t0 + Duration::from_millis(20) + PREBUFFER_WAIT;
        assert_eq!(r.deadline(), Some(by));
        assert!(!r.on_deadline(by - Duration::from_millis(1)).flush);
        assert!(r.on_deadline(by).flush);
        r.flush();
        assert_eq!(r.deadline(), None);
        r.from_agent(vec![0; 320], t0);
        r.interrupt();
        assert_eq!(r.deadline(), None, "a barge-in drops the tail too");
    }

    #[test]
    fn an_agent_ahead_of_real_time_is_flushed_only_as_its_audio_runs_out() {
        let t0 = Instant::now();
        let mut r = CallRates::new(8_000);
        r.fix_caller_rate(16_000);
        // Two seconds in 20 ms messages at once, then nothing: each message alone would be
        // due again within 80 ms, but the tail waits until a tick before they have played.
        for _ in 0..100 {
            r.from_agent(vec![0; 320], t0);
        }
        assert_eq!(r.deadline(), Some(t0 + Duration::from_secs(2) - TICK));
        // More a second later extends it.
        for _ in 0..50 {
            r.from_agent(vec![0; 320], t0 + Duration::from_secs(1));
        }
        assert_eq!(r.deadline(), Some(t0 + Duration::from_secs(3) - TICK));
        r.interrupt();
        r.from_agent(vec![0; 320], t0 + Duration::from_secs(4));
        let after = t0 + Duration::from_secs(4) + Duration::from_millis(20) + PREBUFFER_WAIT;
        assert_eq!(
            r.deadline(),
            Some(after),
            "a barge-in starts the estimate afresh"
        );
    }

    #[test]
    fn a_caller_that_changes_rate_gets_a_new_converter() {
        let mut r = CallRates::new(8_000);
        let (out, changed) = r.to_agent(16_000, vec![0; 640]);
        assert!(
            !changed && (320..=322).contains(&out.len()),
            "{}",
            out.len()
        );
        let (_, changed) = r.to_agent(8_000, vec![0; 320]);
        assert!(changed);
        let (out, changed) = r.to_agent(8_000, vec![7; 320]);
        assert_eq!((out, changed), (vec![7; 320], false));
    }

    #[test]
    fn pending_audio_is_bounded() {
        let t0 = Instant::now();
        let mut r = CallRates::new(8_000);
        let limit = PENDING_SECONDS * 16_000;
        assert_eq!(r.from_agent(vec![0; limit + 10], t0).1, 10);
        assert_eq!(r.from_agent(vec![0; 4], t0).1, 4);
    }
}
