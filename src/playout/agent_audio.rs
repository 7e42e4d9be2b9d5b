//! The agent's audio waiting for its 20 ms slots: a byte queue with a small jitter buffer
//! in front of each talk spurt. Pure logic; the clock takes one frame per tick out of it.
//!
//! Asterisk neither buffers nor paces what it receives (docs/audiosocket.md §5): a burst from
//! the agent would leave as a burst of RTP and garble the caller's audio. So agent audio
//! goes into [`AgentAudio`] and only the clock takes it out, one frame per tick.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::proto::audiosocket::SLIN_HZ;

/// Bytes in one millisecond of 8 kHz s16le mono. Only meaningful at 8 kHz: for a call at
/// another rate, ask its [`AgentAudio::queued_ms`].
pub const BYTES_PER_MS: usize = 16;

/// Agent audio held at most: 2 minutes. A runaway agent cannot exhaust memory.
pub const MAX_QUEUED: Duration = Duration::from_secs(120);

/// Agent audio held at most, in bytes, whatever the rate: 4 MiB, two minutes up to 16 kHz
/// (1.9 MB at 8 kHz), 43 s at 48 kHz. Two minutes at 192 kHz would be 46 MB a call: a
/// hostile agent on every call of a full box must not be able to ask for that.
pub const MAX_QUEUED_MEMORY: usize = 4 * 1024 * 1024;

/// [`MAX_QUEUED`] at 8 kHz, in bytes. For a call at another rate, [`AgentAudio::new`]
/// computes it from the rate.
pub const MAX_QUEUED_BYTES: usize = BYTES_PER_MS * 1000 * 120;

/// Agent audio gathered before a talk spurt starts playing: a small jitter buffer, so a
/// real-time agent whose messages arrive a few ms late does not stutter. Agents that send
/// faster than real time fill it with their first message and pay no delay.
pub const PREBUFFER: Duration = Duration::from_millis(60);
/// A spurt shorter than [`PREBUFFER`] starts playing after waiting this long. It is also
/// how late a real-time agent's next message may be and still count as due.
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

/// Agent audio waiting to be played, as one continuous byte stream of s16le at one rate:
/// chunk boundaries are invisible, so remainders (an odd byte included) carry over to the
/// next chunk instead of being padded.
pub struct AgentAudio {
    bytes: VecDeque<u8>,
    rate_hz: u32,
    /// [`PREBUFFER`] at `rate_hz`, in bytes.
    prebuffer_bytes: usize,
    /// [`MAX_QUEUED`] at `rate_hz`, in bytes.
    max_bytes: usize,
    /// Inside a talk spurt (past the jitter buffer).
    playing: bool,
    /// When the current spurt's first bytes arrived, while gathering.
    gathering_since: Option<Instant>,
    held_partial: bool,
    /// When the last chunk arrived and how long it plays: a real-time agent sends its next
    /// one about when that has played, so until then (plus [`PREBUFFER_WAIT`]) more audio
    /// is due and a partial frame is worth holding for it.
    last_chunk: Option<(Instant, Duration)>,
    /// The agent has sent an odd number of bytes since the last [`clear`](Self::clear): its
    /// next byte is the second half of a sample.
    stream_odd: bool,
}

impl Default for AgentAudio {
    fn default() -> Self {
        // Narrowband: what every AudioSocket call had before wideband kinds.
        AgentAudio::new(SLIN_HZ)
    }
}

impl AgentAudio {
    /// An empty queue for s16le mono at `rate_hz` (one of the AudioSocket rates).
    pub fn new(rate_hz: u32) -> AgentAudio {
        assert!(rate_hz > 0, "a sample rate is positive");
        AgentAudio {
            bytes: VecDeque::new(),
            rate_hz,
            prebuffer_bytes: bytes_for(rate_hz, PREBUFFER),
            max_bytes: bytes_for(rate_hz, MAX_QUEUED).min(MAX_QUEUED_MEMORY),
            playing: false,
            gathering_since: None,
            held_partial: false,
            last_chunk: None,
            stream_odd: false,
        }
    }

    /// Appends audio that arrived at `now` (any length, odd too); returns the bytes refused
    /// because [`MAX_QUEUED`] is already queued. (A byte dropped to keep samples whole is
    /// not counted: the queue was not full.)
    pub fn push(&mut self, pcm: &[u8], now: Instant) -> usize {
        if pcm.is_empty() {
            return 0;
        }
        self.last_chunk = Some((now, self.duration_of(pcm.len())));
        // A byte whose place in the agent's stream and in the queue differ in parity is the
        // second half of a sample whose first half is gone (refused, or played padded as a
        // spurt's lone last byte): dropped, so the samples after it stay whole.
        let skip = usize::from(self.stream_odd != (self.bytes.len() % 2 == 1));
        self.stream_odd ^= pcm.len() % 2 == 1;
        let rest = &pcm[skip..];
        let room = self.max_bytes.saturating_sub(self.bytes.len());
        let take = rest.len().min(room);
        if take > 0 && !self.playing && self.gathering_since.is_none() {
            self.gathering_since = Some(now);
        }
        self.bytes.extend(&rest[..take]);
        rest.len() - take
    }

    /// The agent's talk spurt is over (what was pushed last ends it): nothing more is due,
    /// so a partial last frame plays at its own slot instead of waiting a tick for more.
    pub fn end_spurt(&mut self) {
        self.last_chunk = None;
    }

    /// Drops everything queued (barge-in); returns how many bytes were dropped.
    pub fn clear(&mut self) -> usize {
        let n = self.bytes.len();
        self.bytes.clear();
        self.playing = false;
        self.gathering_since = None;
        self.held_partial = false;
        self.last_chunk = None;
        // What the agent sends after an interruption is a new stream.
        self.stream_odd = false;
        self.shrink();
        n
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Audio queued, in whole milliseconds.
    pub fn queued_ms(&self) -> usize {
        (self.bytes.len() as u64 * 500 / u64::from(self.rate_hz)) as usize
    }

    /// Fills `out`, one frame at this queue's rate (20 ms: `frame_bytes(rate)`), for the tick
    /// at `now`. `last` means the agent is gone: play what is left without waiting for more.
    pub fn fill(&mut self, out: &mut [u8], last: bool, now: Instant) -> Fill {
        let frame = out.len();
        let n = self.bytes.len();
        if !self.playing {
            let waited = self
                .gathering_since
                .is_some_and(|t| now.duration_since(t) >= PREBUFFER_WAIT);
            if n == 0 || !(n >= self.prebuffer_bytes || waited || last) {
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
        if n < frame && !self.held_partial && !last && self.more_due(now) {
            self.held_partial = true;
            out.fill(0);
            return Fill::Underrun;
        }
        self.held_partial = false;
        // The last frame of a spurt is padded, a lone odd byte included.
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

    /// Whether the agent's next chunk is still due at `now`: it has not yet been longer
    /// than the last chunk's duration (and the jitter allowance) since that one arrived.
    fn more_due(&self, now: Instant) -> bool {
        self.last_chunk
            .is_some_and(|(at, plays)| now <= at + plays + PREBUFFER_WAIT)
    }

    /// How long `bytes` of audio play at this queue's rate.
    fn duration_of(&self, bytes: usize) -> Duration {
        // bytes / 2 samples at rate_hz: bytes · 500,000 / rate_hz µs.
        Duration::from_micros(bytes as u64 * 500_000 / u64::from(self.rate_hz))
    }

    /// Returns a burst's memory once it has been played: hundreds of idle calls should not
    /// each keep a few hundred KiB.
    fn shrink(&mut self) {
        if self.bytes.capacity() > 64 * 1024 {
            self.bytes.shrink_to(8 * 1024);
        }
    }
}

/// Bytes of s16le mono that `d` plays at `rate_hz`: whole samples.
fn bytes_for(rate_hz: u32, d: Duration) -> usize {
    let samples = u128::from(rate_hz) * d.as_micros() / 1_000_000;
    samples as usize * 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::playout::TICK;
    use crate::proto::audiosocket::{frame_bytes, SLIN_FRAME_BYTES};

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

    /// Plays `a` at 20 ms ticks from `t0`, `frame` bytes each, pushing each chunk of
    /// `chunks` at its time, until everything was pushed and the queue is empty. Returns
    /// what each tick did and the bytes it wrote.
    fn play_out(
        a: &mut AgentAudio,
        frame: usize,
        t0: Instant,
        chunks: &[(Duration, &[u8])],
    ) -> Vec<(Fill, Vec<u8>)> {
        let mut ticks = Vec::new();
        let mut next = 0;
        for k in 0u32.. {
            let now = t0 + TICK * k;
            while next < chunks.len() && t0 + chunks[next].0 <= now {
                assert_eq!(a.push(chunks[next].1, t0 + chunks[next].0), 0);
                next += 1;
            }
            if next == chunks.len() && a.is_empty() {
                return ticks;
            }
            let mut out = vec![0xAA; frame];
            let fill = a.fill(&mut out, false, now);
            ticks.push((fill, out));
        }
        unreachable!()
    }

    /// The bytes of the ticks that played agent audio.
    fn played(ticks: &[(Fill, Vec<u8>)]) -> Vec<u8> {
        let agent = ticks.iter().filter(|(fill, _)| *fill == Fill::Agent);
        agent.flat_map(|(_, bytes)| bytes.clone()).collect()
    }

    #[test]
    fn a_stream_cut_into_odd_chunks_plays_as_in_one_piece() {
        let t0 = Instant::now();
        // 4,001 bytes: the last one alone at the end of the spurt, padded.
        let stream: Vec<u8> = (0..4001u32).map(|i| (i % 253) as u8).collect();
        let whole = play_out(
            &mut AgentAudio::default(),
            320,
            t0,
            &[(Duration::ZERO, &stream)],
        );
        let mut chunks = Vec::new();
        let mut rest = &stream[..];
        for size in [1, 3, 77, 333, 901, 5].into_iter().cycle() {
            let (chunk, tail) = rest.split_at(size.min(rest.len()));
            chunks.push((Duration::ZERO, chunk));
            rest = tail;
            if rest.is_empty() {
                break;
            }
        }
        let cut = play_out(&mut AgentAudio::default(), 320, t0, &chunks);
        // (The ticks may differ: one 250 ms chunk is still due to be followed when its
        // remainder comes up, a 5-byte one is not.)
        let bytes = played(&cut);
        assert!(bytes == played(&whole), "the same bytes");
        assert!(bytes[..stream.len()] == stream[..], "the stream, intact");
        assert_eq!(bytes.len(), 13 * 320);
        assert!(bytes[stream.len()..].iter().all(|&b| b == 0), "padded");
    }

    #[test]
    fn a_fast_agents_last_fragment_follows_its_last_full_frame() {
        let t0 = Instant::now();
        // 1,010 ms pushed at once in 100 ms chunks: 50 full frames and 10 ms over.
        let stream: Vec<u8> = (0..16_160u32).map(|i| (i % 249) as u8 | 1).collect();
        let chunks: Vec<(Duration, &[u8])> =
            stream.chunks(1600).map(|c| (Duration::ZERO, c)).collect();
        let ticks = play_out(&mut AgentAudio::default(), 320, t0, &chunks);
        assert_eq!(ticks.len(), 51);
        assert!(ticks.iter().all(|(fill, _)| *fill == Fill::Agent));
        let (_, last) = &ticks[50];
        assert!(last[..160] == stream[16_000..]);
        assert!(last[160..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_real_time_agents_partial_frames_are_held_for_its_next_chunk() {
        let t0 = Instant::now();
        // 90 ms chunks, each sent when the one before has played: frames straddle them.
        let stream: Vec<u8> = (0..14_400u32).map(|i| (i % 247) as u8 | 1).collect();
        let chunks: Vec<(Duration, &[u8])> = stream
            .chunks(1440)
            .zip(0u32..)
            .map(|(c, k)| (Duration::from_millis(90) * k, c))
            .collect();
        let ticks = play_out(&mut AgentAudio::default(), 320, t0, &chunks);
        let underruns = ticks.iter().filter(|(f, _)| *f == Fill::Underrun).count();
        assert!(underruns > 0, "held for the rest");
        // Nothing padded until the very end: the stream plays intact.
        let bytes = played(&ticks);
        assert!(bytes[..stream.len()] == stream[..], "the stream, intact");
        assert!(bytes[stream.len()..].iter().all(|&b| b == 0));
        assert!(bytes.len() - stream.len() < 320);
    }

    #[test]
    fn a_partial_frame_is_held_only_while_more_is_due() {
        let t0 = Instant::now();
        let mut a = AgentAudio::default();
        // 50 ms arrives at t0: the next chunk is due until t0 + 50 + 60 ms.
        a.push(&[1; 800], t0);
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(take(&mut a, false, at(60)).0, Fill::Agent);
        assert_eq!(take(&mut a, false, at(80)).0, Fill::Agent);
        assert_eq!(take(&mut a, false, at(100)).0, Fill::Underrun);
        let mut b = AgentAudio::default();
        b.push(&[1; 800], t0);
        assert_eq!(take(&mut b, false, at(60)).0, Fill::Agent);
        assert_eq!(take(&mut b, false, at(80)).0, Fill::Agent);
        let (fill, bytes) = take(&mut b, false, at(120));
        assert_eq!(fill, Fill::Agent, "not due any more: played padded");
        assert_eq!(&bytes[..160], &[1; 160][..]);
        assert!(bytes[160..].iter().all(|&x| x == 0));
    }

    #[test]
    fn wideband_frames_prebuffer_and_bound_follow_the_rate() {
        let t0 = Instant::now();
        for rate in [16_000, 44_100, 48_000] {
            let frame = frame_bytes(rate);
            let mut a = AgentAudio::new(rate);
            let ms = |ms: usize| rate as usize * ms / 1000 * 2;
            // 40 ms is short of the 60 ms jitter buffer; 60 ms is enough.
            a.push(&vec![1; ms(40)], t0);
            assert_eq!(a.queued_ms(), 40, "{rate}");
            let mut out = vec![0xAA; frame];
            assert_eq!(a.fill(&mut out, false, t0), Fill::Silence, "{rate}");
            a.push(&vec![2; ms(20)], t0);
            assert_eq!(a.fill(&mut out, false, t0), Fill::Agent, "{rate}");
            assert_eq!(out, vec![1; frame], "{rate}");
            assert_eq!(a.queued_ms(), 40, "{rate}");
            // Two minutes at this rate, not at 8 kHz, within the bound in bytes.
            a.clear();
            let bound = ms(120_000).min(MAX_QUEUED_MEMORY);
            assert_eq!(a.push(&vec![0; bound + 10], t0), 10, "{rate}");
            assert_eq!(a.len(), bound, "{rate}");
        }
        let mut a = AgentAudio::default();
        a.push(&[0; 1600], t0);
        assert_eq!(a.queued_ms(), 100);
    }

    #[test]
    fn refusing_an_odd_count_keeps_the_samples_after_it_aligned() {
        let t0 = Instant::now();
        // Sample i is [lo, hi] with hi = lo | 0x80: a pair read a byte off shows.
        let stream: Vec<u8> = (0..MAX_QUEUED_BYTES as u32 / 2 + 4000)
            .flat_map(|i| [(i % 128) as u8, (i % 128) as u8 | 0x80])
            .collect();
        let mut a = AgentAudio::default();
        let mut at = 0;
        let mut push = |a: &mut AgentAudio, n: usize| {
            let refused = a.push(&stream[at..at + n], t0);
            at += n;
            refused
        };
        assert_eq!(push(&mut a, MAX_QUEUED_BYTES - 1), 0);
        assert_eq!(push(&mut a, 3), 2, "a whole sample refused");
        assert_eq!(push(&mut a, 3), 3, "full: a sample and a half refused");
        for _ in 0..10 {
            take(&mut a, false, t0);
        }
        let before = a.len();
        assert_eq!(push(&mut a, 5), 0, "room again");
        assert_eq!(a.len(), before + 4, "the other half of that sample dropped");
        assert_eq!(push(&mut a, 1001), 0);
        let mut bytes = Vec::new();
        while !a.is_empty() {
            bytes.extend(take(&mut a, true, t0).1);
        }
        assert_eq!(bytes.len() % 2, 0);
        let misaligned = bytes
            .chunks(2)
            .filter(|s| s != &[0, 0] && s[1] != s[0] | 0x80)
            .count();
        assert_eq!(misaligned, 1, "only the lone last byte, padded");
    }

    #[test]
    fn after_a_lone_byte_played_padded_the_samples_stay_whole() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut a = AgentAudio::default();
        // A frame and a byte, then nothing for long: the byte plays padded.
        a.push(&[7; 321], t0);
        assert_eq!(take(&mut a, true, at(0)).0, Fill::Agent);
        let (fill, bytes) = take(&mut a, false, at(200));
        assert_eq!(fill, Fill::Agent);
        assert_eq!((bytes[0], bytes[1]), (7, 0));
        // The late rest of that sample is dropped, not read as the start of the next one.
        assert_eq!(a.push(&[8, 1, 2, 3, 4], at(300)), 0);
        assert_eq!(a.len(), 4);
        let (_, bytes) = take(&mut a, true, at(300));
        assert_eq!(&bytes[..4], &[1, 2, 3, 4]);
        // An interruption starts a new stream: its first byte is kept.
        a.push(&[5; 3], at(400));
        a.clear();
        a.push(&[9, 9], at(420));
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn after_the_end_of_a_spurt_the_last_fragment_plays_at_once() {
        let t0 = Instant::now();
        let mut a = AgentAudio::default();
        a.push(&[1; 1_000], t0);
        for _ in 0..3 {
            assert_eq!(take(&mut a, false, t0).0, Fill::Agent);
        }
        // 40 bytes left and the agent's next chunk is still due: held a tick.
        let mut b = AgentAudio::default();
        b.push(&[1; 1_000], t0);
        for _ in 0..3 {
            take(&mut b, false, t0);
        }
        assert_eq!(take(&mut b, false, t0).0, Fill::Underrun);
        // The same, told the spurt ended: played padded at once.
        a.end_spurt();
        let (fill, bytes) = take(&mut a, false, t0);
        assert_eq!(fill, Fill::Agent);
        assert_eq!(&bytes[..40], &[1; 40][..]);
        assert!(bytes[40..].iter().all(|&b| b == 0));
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_at_high_rates() {
        let t0 = Instant::now();
        let mut a = AgentAudio::new(48_000);
        assert_eq!(a.push(&vec![0; MAX_QUEUED_MEMORY + 100], t0), 100);
        assert_eq!(a.len(), MAX_QUEUED_MEMORY);
        // At 8 kHz two minutes fit well within it, as before.
        let mut b = AgentAudio::new(8_000);
        assert_eq!(b.push(&vec![0; MAX_QUEUED_BYTES + 2], t0), 2);
    }
}
