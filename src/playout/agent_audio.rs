//! The agent's audio waiting for its 20 ms slots: a byte queue with a small jitter buffer
//! in front of each talk spurt. Pure logic; the clock takes one frame per tick out of it.
//!
//! Asterisk neither buffers nor paces what it receives (docs/audiosocket.md §5): a burst from
//! the agent would leave as a burst of RTP and garble the caller's audio. So agent audio
//! goes into [`AgentAudio`] and only the clock takes it out, one frame per tick.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Bytes in one millisecond of 8 kHz s16le mono, the only audio format playout handles.
pub const BYTES_PER_MS: usize = 16;

/// Agent audio held at most: 2 minutes. A runaway agent cannot exhaust memory.
pub const MAX_QUEUED_BYTES: usize = BYTES_PER_MS * 1000 * 120;

/// Agent audio gathered before a talk spurt starts playing: a small jitter buffer, so a
/// real-time agent whose messages arrive a few ms late does not stutter. Agents that send
/// faster than real time fill it with their first message and pay no delay.
pub const PREBUFFER_BYTES: usize = 960;
/// A spurt shorter than [`PREBUFFER_BYTES`] starts playing after waiting this long.
pub const PREBUFFER_WAIT: Duration = Duration::from_millis(60);

/// What one tick took from the agent's audio.
#[derive(Debug, PartialEq, Eq)]
pub enum Fill {
    /// A frame of agent audio (the last one of a spurt may be padded with silence).
    Agent,
    /// Nothing to play (or still gathering the jitter buffer): silence.
    Silence,
    /// Less than a frame queued mid-spurt: held one tick for the rest, silence meanwhile.
    Underrun,
}

/// Agent audio waiting to be played, as one continuous byte stream: chunk boundaries are
/// invisible, so remainders carry over to the next chunk instead of being padded.
#[derive(Default)]
pub struct AgentAudio {
    bytes: VecDeque<u8>,
    /// Inside a talk spurt (past the jitter buffer).
    playing: bool,
    /// When the current spurt's first bytes arrived, while gathering.
    gathering_since: Option<Instant>,
    held_partial: bool,
}

impl AgentAudio {
    /// Agent audio for a caller at `rate_hz` (TEMPORARY: 8 kHz bounds until the
    /// rate-aware version lands).
    pub fn new(_rate_hz: u32) -> AgentAudio {
        AgentAudio::default()
    }

    /// Appends audio; returns the bytes refused because the queue is full.
    pub fn push(&mut self, pcm: &[u8], now: Instant) -> usize {
        let room = MAX_QUEUED_BYTES.saturating_sub(self.bytes.len()) & !1;
        let take = pcm.len().min(room);
        if take > 0 && !self.playing && self.gathering_since.is_none() {
            self.gathering_since = Some(now);
        }
        self.bytes.extend(&pcm[..take]);
        pcm.len() - take
    }

    /// Drops everything queued (barge-in); returns how many bytes were dropped.
    pub fn clear(&mut self) -> usize {
        let n = self.bytes.len();
        self.bytes.clear();
        self.playing = false;
        self.gathering_since = None;
        self.held_partial = false;
        self.shrink();
        n
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Fills `out` for the tick at `now`. `last` means the agent is gone: play what is left
    /// without waiting for more.
    pub fn fill(&mut self, out: &mut [u8], last: bool, now: Instant) -> Fill {
        let frame = out.len();
        let n = self.bytes.len();
        if !self.playing {
            let waited = self
                .gathering_since
                .is_some_and(|t| now.duration_since(t) >= PREBUFFER_WAIT);
            if n == 0 || !(n >= PREBUFFER_BYTES || waited || last) {
                out.fill(0);
                return Fill::Silence;
            }
            self.playing = true;
            self.gathering_since = None;
        }
        if n == 0 {
            // The spurt is over (or the agent fell behind): gather again before resuming.
            self.playing = false;
            out.fill(0);
            return Fill::Silence;
        }
        if n < frame && !self.held_partial && !last {
            self.held_partial = true;
            out.fill(0);
            return Fill::Underrun;
        }
        self.held_partial = false;
        let take = n.min(frame);
        let (a, b) = self.bytes.as_slices();
        let from_a = take.min(a.len());
        out[..from_a].copy_from_slice(&a[..from_a]);
        out[from_a..take].copy_from_slice(&b[..take - from_a]);
        out[take..].fill(0);
        self.bytes.drain(..take);
        if self.bytes.is_empty() {
            self.shrink();
        }
        Fill::Agent
    }

    /// Returns a burst's memory once it has been played: hundreds of idle calls should not
    /// each keep a few hundred KiB.
    fn shrink(&mut self) {
        if self.bytes.capacity() > 64 * 1024 {
            self.bytes.shrink_to(8 * 1024);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::playout::TICK;
    use crate::proto::audiosocket::SLIN_FRAME_BYTES;

    fn take(a: &mut AgentAudio, last: bool, at: Instant) -> (Fill, Vec<u8>) {
        let mut out = [0xAAu8; SLIN_FRAME_BYTES];
        let fill = a.fill(&mut out, last, at);
        (fill, out.to_vec())
    }

    #[test]
    fn remainders_carry_across_chunks() {
        let t0 = Instant::now();
        let mut a = AgentAudio::default();
        let stream: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        // Uneven chunks: 100 + 500 + 400 bytes.
        a.push(&stream[..100], t0);
        a.push(&stream[100..600], t0);
        a.push(&stream[600..], t0);
        let mut played = Vec::new();
        for _ in 0..3 {
            let (fill, bytes) = take(&mut a, false, t0);
            assert_eq!(fill, Fill::Agent);
            played.extend(bytes);
        }
        assert_eq!(played, stream[..960]);
        // 40 bytes left: held one tick, then played padded.
        assert_eq!(take(&mut a, false, t0).0, Fill::Underrun);
        let (fill, bytes) = take(&mut a, false, t0);
        assert_eq!(fill, Fill::Agent);
        assert_eq!(&bytes[..40], &stream[960..]);
        assert!(bytes[40..].iter().all(|&b| b == 0));
        assert_eq!(take(&mut a, false, t0).0, Fill::Silence);
    }

    #[test]
    fn a_spurt_waits_for_the_jitter_buffer_or_its_deadline() {
        let t0 = Instant::now();
        let mut a = AgentAudio::default();
        a.push(&[1; 640], t0);
        assert_eq!(take(&mut a, false, t0).0, Fill::Silence);
        a.push(&[2; 320], t0 + TICK);
        // 960 bytes: the jitter buffer is full, play.
        let (fill, bytes) = take(&mut a, false, t0 + TICK);
        assert_eq!((fill, bytes), (Fill::Agent, vec![1; 320]));

        let mut b = AgentAudio::default();
        b.push(&[3; 320], t0);
        assert_eq!(take(&mut b, false, t0 + TICK).0, Fill::Silence);
        assert_eq!(take(&mut b, false, t0 + PREBUFFER_WAIT).0, Fill::Agent);
    }

    #[test]
    fn a_held_partial_completed_in_time_is_not_padded() {
        let t0 = Instant::now();
        let mut a = AgentAudio::default();
        a.push(&[1; 1160], t0);
        for _ in 0..3 {
            assert_eq!(take(&mut a, false, t0).0, Fill::Agent);
        }
        assert_eq!(take(&mut a, false, t0).0, Fill::Underrun);
        a.push(&[2; 200], t0);
        let (fill, bytes) = take(&mut a, false, t0);
        assert_eq!(fill, Fill::Agent);
        assert_eq!(&bytes[..200], &[1; 200][..]);
        assert_eq!(&bytes[200..], &[2; 120][..]);
        assert_eq!(a.len(), 80);
    }

    #[test]
    fn last_plays_a_partial_at_once() {
        let t0 = Instant::now();
        let mut a = AgentAudio::default();
        a.push(&[3; 10], t0);
        assert_eq!(take(&mut a, true, t0).0, Fill::Agent);
        assert!(a.is_empty());
    }

    #[test]
    fn clear_drops_everything() {
        let t0 = Instant::now();
        let mut a = AgentAudio::default();
        a.push(&[5; 48_000], t0);
        assert_eq!(take(&mut a, false, t0).0, Fill::Agent);
        assert_eq!(a.clear(), 48_000 - 320);
        assert_eq!(take(&mut a, false, t0).0, Fill::Silence);
    }

    #[test]
    fn queue_is_bounded() {
        let t0 = Instant::now();
        let mut a = AgentAudio::default();
        assert_eq!(a.push(&vec![0; MAX_QUEUED_BYTES + 1000], t0), 1000);
        assert_eq!(a.push(&[0; 2], t0), 2);
        assert_eq!(a.len(), MAX_QUEUED_BYTES);
    }
}
