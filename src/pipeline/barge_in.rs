//! Barge-in: hears the caller start speaking while the agent's synthesized speech plays, so
//! the call can stop the playout and cancel the answer (issue #12, "Barge-in").
//!
//! The caller's audio goes through earshot, a small pure-Rust neural voice-activity detector
//! (it builds for the static musl target and costs a few µs per frame), not an energy
//! threshold: line noise, a tone or a click is loud without being a voice, and the agent's own
//! voice echoing back faintly is quiet. earshot scores each 16 ms frame at 16 kHz from 0 (no
//! voice) to 1 (voice); [`Hysteresis`] turns the scores into [`Voice::Started`] and
//! [`Voice::Ended`] with the thresholds and frame counts of the upstream `VAD_*` variables
//! ([`VadParams`]).
//!
//! Caller audio at any other rate (8 kHz normally) is converted to 16 kHz first with the
//! call's own [`Resampler`] (4.5 ms of delay), so a wideband caller is heard as well as a
//! narrowband one.
//!
//! Limits, measured in the tests on a synthetic voice ([`crate::audio::quality::speech_like`]):
//! - detection comes ≈ 36 ms after the onset at 16 kHz, but ≈ 68 ms at 8 kHz: on narrowband
//!   audio earshot's scores start just under 0.5 and need 3–4 frames to rise (plus the
//!   resampler's 4.5 ms); real voices may score higher sooner;
//! - earshot scores a steady low tone as a voice (300 Hz ≈ 0.8 at any level, 440 Hz at
//!   −10 dBFS ≈ 0.6); 1 kHz, noise, clicks and a quiet 440 Hz are not.

use crate::audio::Resampler;

/// The rate earshot's network was trained at and its frames are counted in.
pub const VAD_RATE_HZ: u32 = 16_000;

/// Samples per earshot frame: exactly 256 (16 ms at 16 kHz); it refuses any other length.
pub const FRAME_SAMPLES: usize = 256;

/// One frame's length in milliseconds, for turning frame counts into time.
pub const FRAME_MS: u32 = 16;

/// The upstream `VAD_*` variables, mapped onto earshot's 16 ms frames. The upstream core runs
/// Silero VAD through `@ricky0123/vad`, whose probabilities and thresholds mean the same as
/// earshot's scores (0..1, 0.5 a good default), so the thresholds carry over as they are; the
/// frame counts count earshot's 16 ms frames. Variables about Silero's own framing or the audio
/// it hands on (`VAD_FRAME_SAMPLES`, `VAD_PRE_SPEECH_PAD_FRAMES`, `VAD_SUBMIT_USER_SPEECH_ON_PAUSE`)
/// have no meaning here and are ignored: the frame is fixed by earshot and every caller byte
/// goes to ASR anyway.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadParams {
    /// Score at or above which a 16 ms frame is speech (`VAD_POSITIVE_SPEECH_THRESHOLD`).
    /// Default 0.5, earshot's and Silero's recommended threshold.
    pub positive: f32,
    /// Score below which a frame counts as silence while in speech
    /// (`VAD_NEGATIVE_SPEECH_THRESHOLD`). Default `positive − 0.15`, as upstream: frames in
    /// between neither end speech nor restart the count towards its end.
    pub negative: f32,
    /// Consecutive speech frames before speech counts as started (`VAD_MIN_SPEECH_FRAMES`).
    /// Default 2 (32 ms): one frame alone can be a click or a cough, and two still leave the
    /// detection inside the ~40 ms barge-in budget.
    pub min_speech_frames: u32,
    /// Consecutive silent frames before speech counts as ended (`VAD_REDEMPTION_FRAMES`).
    /// Default 20 (320 ms): longer than the pauses between words and the closures of stop
    /// consonants inside one utterance (mostly under 250 ms), so a sentence is one
    /// Started…Ended; short enough that a caller who pauses and speaks again is heard anew.
    pub redemption_frames: u32,
}

/// The default positive threshold (see [`VadParams::positive`]).
const DEFAULT_POSITIVE: f32 = 0.5;

/// How far below the positive threshold the negative one lies by default (upstream's rule).
pub const NEGATIVE_GAP: f32 = 0.15;

impl Default for VadParams {
    fn default() -> VadParams {
        VadParams {
            positive: DEFAULT_POSITIVE,
            negative: DEFAULT_POSITIVE - NEGATIVE_GAP,
            min_speech_frames: 2,
            redemption_frames: 20,
        }
    }
}

/// What the caller's voice did in the audio just pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Voice {
    /// The caller started speaking: `min_speech_frames` speech frames in a row.
    Started,
    /// The caller stopped: `redemption_frames` silent frames in a row after speech.
    Ended,
}

/// The state machine between per-frame scores and [`Voice`] events, apart from the detector
/// so it can be tested with hand-made scores:
/// - in silence, a frame scoring ≥ `positive` counts towards the start, any other frame
///   resets the count; `min_speech_frames` in a row → [`Voice::Started`];
/// - in speech, a frame scoring < `negative` counts towards the end, a frame ≥ `positive`
///   resets the count, and one in between leaves it as it is (upstream's rule);
///   `redemption_frames` counted → [`Voice::Ended`].
#[derive(Debug, Clone)]
pub struct Hysteresis {
    params: VadParams,
    speaking: bool,
    /// Frames counted towards the next change of state.
    run: u32,
}

impl Hysteresis {
    /// In silence, with `params`.
    pub fn new(params: VadParams) -> Hysteresis {
        Hysteresis {
            params,
            speaking: false,
            run: 0,
        }
    }

    /// Takes one frame's score; returns the change of state it caused, if any.
    pub fn score(&mut self, score: f32) -> Option<Voice> {
        let p = &self.params;
        if self.speaking {
            if score >= p.positive {
                self.run = 0;
            } else if score < p.negative {
                self.run += 1;
                if self.run >= p.redemption_frames {
                    self.speaking = false;
                    self.run = 0;
                    return Some(Voice::Ended);
                }
            }
        } else if score >= p.positive {
            self.run += 1;
            if self.run >= p.min_speech_frames {
                self.speaking = true;
                self.run = 0;
                return Some(Voice::Started);
            }
        } else {
            self.run = 0;
        }
        None
    }

    /// Between [`Voice::Started`] and [`Voice::Ended`].
    pub fn speaking(&self) -> bool {
        self.speaking
    }
}

/// One call's barge-in detector: caller audio in, [`Voice`] events out.
pub struct VoiceDetector {
    /// ≈ 8 KiB of network state and buffers: boxed, built on the heap directly.
    detector: Box<earshot::Detector>,
    /// To 16 kHz, for a caller at any other rate.
    resampler: Option<Resampler>,
    /// 16 kHz s16le bytes not yet a whole frame (an odd byte included, at 16 kHz input).
    pending: Vec<u8>,
    /// One frame's samples, reused.
    frame: Vec<i16>,
    hysteresis: Hysteresis,
    /// The last frame's score, for logs and tests.
    last_score: f32,
}

impl VoiceDetector {
    /// A detector for caller audio at `rate_hz` (within [`crate::audio::resample::RATES`]).
    pub fn new(rate_hz: u32, params: VadParams) -> VoiceDetector {
        VoiceDetector {
            detector: earshot::Detector::default_boxed(),
            resampler: (rate_hz != VAD_RATE_HZ).then(|| Resampler::new(rate_hz, VAD_RATE_HZ)),
            pending: Vec::with_capacity(4 * FRAME_SAMPLES),
            frame: Vec::with_capacity(FRAME_SAMPLES),
            hysteresis: Hysteresis::new(params),
            last_score: 0.0,
        }
    }

    /// Feeds caller audio (s16le at the detector's rate, any length, an odd byte carried
    /// over); returns the change of state it caused, if any (the first one if several, which
    /// only a push of more than `redemption_frames` × 16 ms can cause).
    pub fn push(&mut self, pcm: &[u8]) -> Option<Voice> {
        match &mut self.resampler {
            Some(r) => r.push(pcm, &mut self.pending),
            None => self.pending.extend_from_slice(pcm),
        }
        let mut first = None;
        let whole = self.pending.len() / (2 * FRAME_SAMPLES) * (2 * FRAME_SAMPLES);
        for bytes in self.pending[..whole].chunks_exact(2 * FRAME_SAMPLES) {
            self.frame.clear();
            self.frame.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]])),
            );
            self.last_score = self.detector.predict_i16(&self.frame);
            let change = self.hysteresis.score(self.last_score);
            first = first.or(change);
        }
        self.pending.drain(..whole);
        first
    }

    /// The caller is speaking (between [`Voice::Started`] and [`Voice::Ended`]).
    pub fn speaking(&self) -> bool {
        self.hysteresis.speaking()
    }

    /// The score earshot gave the last whole frame (0 before any).
    pub fn last_score(&self) -> f32 {
        self.last_score
    }
}

#[cfg(test)]
mod tests {
    use std::f64::consts::PI;
    use std::time::Instant;

    use super::*;
    use crate::audio::quality::speech_like;

    fn bytes(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    fn tone(rate: u32, ms: u32, hz: &[f64], amplitude: f64) -> Vec<i16> {
        (0..rate * ms / 1_000)
            .map(|n| {
                let t = f64::from(n) / f64::from(rate);
                let v: f64 = hz.iter().map(|f| (2.0 * PI * f * t).sin()).sum();
                (amplitude * v) as i16
            })
            .collect()
    }

    /// White noise, uniform in ±`amplitude` (xorshift: deterministic).
    fn noise(len: usize, amplitude: i32) -> Vec<i16> {
        let mut x = 0x2545_F491u32;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                ((x % (2 * amplitude as u32 + 1)) as i32 - amplitude) as i16
            })
            .collect()
    }

    /// Every event `signal` causes, pushed in 20 ms frames as a call does, with the input
    /// time (ms) at which it came.
    fn events(rate: u32, signal: &[i16]) -> Vec<(Voice, u32)> {
        let mut d = VoiceDetector::new(rate, VadParams::default());
        let frame = rate as usize / 50;
        let mut out = Vec::new();
        for (i, chunk) in signal.chunks(frame).enumerate() {
            if let Some(v) = d.push(&bytes(chunk)) {
                out.push((v, (i as u32 + 1) * 20));
            }
        }
        out
    }

    /// Input ms after the onset of `speech_like` (after 300 ms of silence) at which Started
    /// comes, pushed 1 ms at a time so the figure is exact to the ms.
    fn latency_ms(rate: u32, seed: u64) -> Option<u32> {
        let lead = rate as usize * 3 / 10;
        let mut signal = vec![0i16; lead];
        signal.extend(speech_like(rate, 500, seed));
        let mut d = VoiceDetector::new(rate, VadParams::default());
        let ms = rate as usize / 1_000;
        for (i, chunk) in signal.chunks(ms).enumerate() {
            if d.push(&bytes(chunk)) == Some(Voice::Started) {
                return Some(((i + 1) * ms).saturating_sub(lead) as u32 * 1_000 / rate);
            }
        }
        None
    }

    fn params() -> VadParams {
        VadParams {
            positive: 0.5,
            negative: 0.35,
            min_speech_frames: 2,
            redemption_frames: 3,
        }
    }

    #[test]
    fn defaults_follow_upstream() {
        let p = VadParams::default();
        assert_eq!(p.positive, 0.5);
        assert!((p.negative - 0.35).abs() < 1e-6);
        assert_eq!((p.min_speech_frames, p.redemption_frames), (2, 20));
    }

    #[test]
    fn hysteresis_starts_after_consecutive_speech_frames() {
        let mut h = Hysteresis::new(params());
        // A lone speech frame, then a quiet one: the count starts over.
        assert_eq!(h.score(0.9), None);
        assert_eq!(h.score(0.49), None);
        assert_eq!(h.score(0.5), None);
        assert!(!h.speaking());
        assert_eq!(h.score(0.7), Some(Voice::Started));
        assert!(h.speaking());
        assert_eq!(h.score(0.9), None);
    }

    #[test]
    fn hysteresis_ends_after_redemption_frames_and_between_thresholds_holds() {
        let mut h = Hysteresis::new(params());
        h.score(0.9);
        assert_eq!(h.score(0.9), Some(Voice::Started));
        // Two silent frames, then a speech frame: the count starts over.
        assert_eq!(h.score(0.1), None);
        assert_eq!(h.score(0.1), None);
        assert_eq!(h.score(0.8), None);
        // Between the thresholds: neither counts nor resets.
        assert_eq!(h.score(0.1), None);
        assert_eq!(h.score(0.4), None);
        assert_eq!(h.score(0.1), None);
        assert!(h.speaking());
        assert_eq!(h.score(0.34), Some(Voice::Ended));
        assert!(!h.speaking());
        // And it can start again.
        h.score(0.6);
        assert_eq!(h.score(0.6), Some(Voice::Started));
    }

    #[test]
    fn silence_noise_and_tones_are_not_speech() {
        let two_s = 16_000;
        assert_eq!(events(8_000, &vec![0; two_s]), []);
        assert_eq!(events(8_000, &noise(two_s, 300)), [], "low white noise");
        // −10 dBFS, and the 440 Hz tone at −30 dBFS: earshot scores a louder one as speech
        // (0.6; any steady tone at 300 Hz 0.8), see the module's limits.
        for (hz, amplitude) in [(1_000.0, 10_000.0), (1_000.0, 1_000.0), (440.0, 1_000.0)] {
            for rate in [8_000, 16_000] {
                let t = tone(rate, 2_000, &[hz], amplitude);
                assert_eq!(events(rate, &t), [], "{hz} Hz at {amplitude}, {rate} Hz");
            }
        }
    }

    #[test]
    fn a_click_does_not_start_speech() {
        let mut signal = vec![0i16; 4_000];
        // 10 ms of loud broadband noise, decaying: a knock on the handset.
        let burst = noise(80, 20_000);
        signal.extend(
            burst
                .iter()
                .enumerate()
                .map(|(i, &s)| (f64::from(s) * (-(i as f64) / 20.0).exp()) as i16),
        );
        signal.extend(vec![0i16; 8_000]);
        assert_eq!(events(8_000, &signal), []);
    }

    #[test]
    fn speech_starts_within_48ms_at_16k_and_72ms_at_8k() {
        let mut worst = [0, 0];
        for (r, rate) in [16_000, 8_000].into_iter().enumerate() {
            for seed in 0..5 {
                let ms = latency_ms(rate, seed)
                    .unwrap_or_else(|| panic!("{rate} Hz seed {seed}: no Started"));
                worst[r] = worst[r].max(ms);
            }
        }
        println!(
            "detection latency from onset: 16 kHz ≤ {} ms, 8 kHz ≤ {} ms",
            worst[0], worst[1]
        );
        assert!(worst[0] <= 48, "16 kHz: {} ms", worst[0]);
        assert!(worst[1] <= 72, "8 kHz: {} ms", worst[1]);
    }

    #[test]
    fn speech_then_silence_ends() {
        for rate in [8_000, 16_000] {
            let mut signal = speech_like(rate, 1_500, 3);
            signal.extend(vec![0i16; rate as usize]);
            let e = events(rate, &signal);
            assert_eq!(e.len(), 2, "{rate} Hz: {e:?}");
            assert_eq!(e[0].0, Voice::Started);
            assert_eq!(e[1].0, Voice::Ended);
            // Ended within redemption (320 ms) + the network's decay of the silence.
            assert!((1_500..=2_000).contains(&e[1].1), "{rate} Hz: {e:?}");
        }
    }

    #[test]
    fn odd_length_pushes_give_the_same_events_as_whole_frames() {
        let mut signal = vec![0i16; 2_400];
        signal.extend(speech_like(8_000, 1_000, 1));
        signal.extend(vec![0i16; 8_000]);
        let raw = bytes(&signal);
        for rate in [8_000, 16_000] {
            let mut whole = VoiceDetector::new(rate, VadParams::default());
            let expected: Vec<Voice> = raw.chunks(320).filter_map(|c| whole.push(c)).collect();
            assert_eq!(expected, [Voice::Started, Voice::Ended], "{rate} Hz");
            let mut odd = VoiceDetector::new(rate, VadParams::default());
            let got: Vec<Voice> = raw.chunks(37).filter_map(|c| odd.push(c)).collect();
            assert_eq!(got, expected, "{rate} Hz");
            assert!(!odd.speaking());
        }
    }

    #[test]
    fn speaking_follows_the_events() {
        let mut d = VoiceDetector::new(8_000, VadParams::default());
        assert!(!d.speaking());
        let speech = bytes(&speech_like(8_000, 500, 0));
        assert_eq!(d.push(&speech), Some(Voice::Started));
        assert!(d.speaking());
        assert_eq!(d.push(&[0; 16_000]), Some(Voice::Ended));
        assert!(!d.speaking());
    }

    /// Not an assertion: the cost, printed with `--nocapture` (debug builds are ~10× slower).
    #[test]
    fn cost_per_20ms_frame_at_8k() {
        let speech = bytes(&speech_like(8_000, 2_000, 0));
        let mut d = VoiceDetector::new(8_000, VadParams::default());
        let start = Instant::now();
        let frames = speech.chunks(320).map(|c| d.push(c)).count();
        let per = start.elapsed() / frames as u32;
        println!("cost per 20 ms frame at 8 kHz: {per:?} ({frames} frames)");
        assert!(d.speaking());
    }
}
