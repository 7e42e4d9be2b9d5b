//! What the caller's `0x10` audio really is: the codec `AUDIO_CODEC` forces, or the one
//! detected from the first frames (`AUDIO_CODEC=auto`, see [`Detector`]), and the caller's
//! frames decoded with it to 8 kHz s16le for the agent.
//!
//! While the codec is being detected, frames are held, not decoded with a guess: an A-law
//! call read as µ-law is 3–4× too loud and clicks (docs/audiosocket.md §10.3). The hold is
//! short ([`HOLD`]); what must leave it undecided goes out as silence of the same length.

use std::collections::VecDeque;
use std::time::Duration;

use crate::config::CodecChoice;
use crate::proto::g711::{self, Codec, Detector};

/// Caller audio held at most while the codec is undecided. It is latency the agent hears
/// at the start of a G.711 call, so it is as short as the detector allows: the detector
/// decides on 60 ms of unanimous evidence, so clear speech from the first frame is held
/// and then decoded, not silenced.
pub const HOLD: Duration = Duration::from_millis(60);

/// [`HOLD`] in 8 kHz samples (one G.711 byte each).
const HOLD_SAMPLES: usize = HOLD.as_millis() as usize * SAMPLES_PER_MS;

/// Samples per millisecond at 8 kHz, the rate of every `0x10` payload.
const SAMPLES_PER_MS: usize = 8;

/// The caller's codec as far as the call knows it: still being detected (frames wait in the
/// hold), or known (forced or decided).
pub enum CallerCodec {
    /// `AUDIO_CODEC=auto` and the detector has not decided yet.
    Detecting(Hold),
    Known(Codec),
}

/// The frames that arrived while the codec is undecided, with the detector that will decide.
pub struct Hold {
    detector: Detector,
    frames: VecDeque<HeldFrame>,
    /// Audio in `frames`, in 8 kHz samples.
    samples: usize,
    /// Audio that left the hold undecided, as silence, in 8 kHz samples.
    silenced: usize,
}

struct HeldFrame {
    payload: Vec<u8>,
    /// Its size says slin whatever the law (docs/audiosocket.md §10.3: odd and over 480
    /// bytes): decoded as slin, never silenced.
    slin: bool,
}

impl HeldFrame {
    /// 8 kHz samples it carries: one per byte in G.711, one per two in slin.
    fn samples(&self) -> usize {
        if self.slin {
            self.payload.len() / 2
        } else {
            self.payload.len()
        }
    }
}

impl CallerCodec {
    /// Starts from `AUDIO_CODEC`; a forced codec is logged.
    pub fn new(uuid: &str, choice: CodecChoice) -> CallerCodec {
        let forced = match choice {
            CodecChoice::Auto => {
                return CallerCodec::Detecting(Hold {
                    detector: Detector::new(),
                    frames: VecDeque::new(),
                    samples: 0,
                    silenced: 0,
                })
            }
            CodecChoice::Ulaw => Codec::Ulaw,
            CodecChoice::Alaw => Codec::Alaw,
            CodecChoice::Slin => Codec::Slin,
        };
        log::info!(
            "[{uuid}] Audio codec forced by AUDIO_CODEC: {}",
            forced.name()
        );
        CallerCodec::Known(forced)
    }

    /// Takes one 8 kHz `0x10` payload; appends the 8 kHz s16le PCM of the frames now ready,
    /// one `Vec` per Asterisk frame, in the order they came: nothing while this one is held;
    /// on the decision, every held frame decoded with the decided codec, then this one. A
    /// frame pushed out of a full hold before the decision is silence of its length, never
    /// a guess. The decision is logged once, and with it how much audio was silenced.
    pub fn decode(&mut self, uuid: &str, payload: &[u8], out: &mut Vec<Vec<u8>>) {
        let hold = match self {
            CallerCodec::Known(codec) => return out.push(pcm(*codec, payload)),
            CallerCodec::Detecting(hold) => hold,
        };
        // Undecided, `observe` answers slin only when the size alone says so; any other
        // answer is a guess, and is not used.
        let by_size = hold.detector.observe(payload) == Codec::Slin;
        let Some(codec) = hold.detector.decided() else {
            let frame = HeldFrame {
                payload: payload.to_vec(),
                slin: by_size,
            };
            hold.samples += frame.samples();
            hold.frames.push_back(frame);
            hold.release(out);
            return;
        };
        log::info!("[{uuid}] Audio codec detected: {}", codec.name());
        if hold.silenced > 0 {
            log::info!(
                "[{uuid}] {} ms of caller audio went to the agent as silence while its codec \
                 was being detected",
                hold.silenced / SAMPLES_PER_MS
            );
        }
        for frame in hold.frames.drain(..) {
            let codec = if frame.slin { Codec::Slin } else { codec };
            out.push(pcm(codec, &frame.payload));
        }
        out.push(pcm(codec, payload));
        *self = CallerCodec::Known(codec);
    }

    /// The codec once forced or decided; `None` while detecting (or if no audio came).
    pub fn decided(&self) -> Option<Codec> {
        match self {
            CallerCodec::Known(codec) => Some(*codec),
            CallerCodec::Detecting(_) => None,
        }
    }
}

impl Hold {
    /// Lets out, in order, the frames that need no decision (slin by size) from the front,
    /// and the oldest frames beyond [`HOLD`] as silence.
    fn release(&mut self, out: &mut Vec<Vec<u8>>) {
        while let Some(front) = self.frames.front() {
            let pcm = if front.slin {
                pcm(Codec::Slin, &front.payload)
            } else if self.samples > HOLD_SAMPLES {
                self.silenced += front.samples();
                vec![0; front.samples() * 2]
            } else {
                break;
            };
            self.samples -= front.samples();
            self.frames.pop_front();
            out.push(pcm);
        }
    }
}

/// One frame's 8 kHz s16le PCM.
fn pcm(codec: Codec, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() * 2);
    pcm_into(codec, payload, &mut out);
    out
}

/// One frame of `codec` appended to `out` as 8 kHz s16le: what [`CallerCodec::decode`] gives
/// once the codec is known, into a buffer the caller reuses (no allocation per frame).
pub fn pcm_into(codec: Codec, payload: &[u8], out: &mut Vec<u8>) {
    // Asterisk reads len/2 samples of slin; a stray odd byte would shift every sample after
    // it (docs/audiosocket.md §10.2).
    let payload = match codec {
        Codec::Slin => &payload[..payload.len() & !1],
        _ => payload,
    };
    g711::decode_into(codec, payload, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::g711::{alaw_to_linear, linear_to_alaw, linear_to_ulaw, ulaw_to_linear};

    /// What comes out of [`CallerCodec::decode`] for each frame fed, in order.
    fn feed(codec: &mut CallerCodec, frames: &[&[u8]]) -> Vec<Vec<Vec<u8>>> {
        frames
            .iter()
            .map(|f| {
                let mut out = Vec::new();
                codec.decode("test", f, &mut out);
                out
            })
            .collect()
    }

    fn samples(pcm: &[u8]) -> Vec<i16> {
        pcm.chunks(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect()
    }

    /// Speech-like audio: harmonics of a gliding fundamental, syllables, pauses.
    fn speech(secs: f64) -> Vec<i16> {
        let mut phase = 0.0f64;
        (0..(secs * 8000.0) as usize)
            .map(|n| {
                let t = n as f64 / 8000.0;
                phase += std::f64::consts::TAU * (160.0 + 40.0 * (4.0 * t).sin()) / 8000.0;
                let v: f64 = (1..=12).map(|k| (k as f64 * phase).sin() / k as f64).sum();
                let env = (std::f64::consts::PI * 3.0 * t).sin().abs();
                (4000.0 * v * env).round() as i16
            })
            .collect()
    }

    /// Checks what a `law` stream cut into `frame`-byte payloads became: one output per
    /// input, in order, each as long as its input, every sample the true decoding or
    /// silence, never more than [`HOLD`] waiting. Returns the loudest true sample of the
    /// frames that went out as silence.
    fn check(law: Codec, stream: &[u8], frame: usize) -> i16 {
        let decode = match law {
            Codec::Alaw => alaw_to_linear,
            _ => ulaw_to_linear,
        };
        let frames: Vec<&[u8]> = stream.chunks(frame).collect();
        let mut codec = CallerCodec::new("test", CodecChoice::Auto);
        let mut out = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            codec.decode("test", f, &mut out);
            let held = (i + 1 - out.len()) * frame;
            assert!(held <= HOLD_SAMPLES, "{law:?}: {held} samples held");
        }
        assert_eq!(codec.decided(), Some(law));
        assert_eq!(out.len(), frames.len(), "{law:?}: one output per frame");
        let mut loudest_silenced = 0;
        for (i, (f, pcm)) in frames.iter().zip(&out).enumerate() {
            let got = samples(pcm);
            assert_eq!(got.len(), f.len(), "{law:?} frame {i}: its length");
            let truth: Vec<i16> = f.iter().map(|&b| decode(b)).collect();
            if got != truth {
                assert!(got.iter().all(|&s| s == 0), "{law:?} frame {i}: a guess");
                let peak = truth.iter().map(|s| s.saturating_abs()).max();
                loudest_silenced = loudest_silenced.max(peak.unwrap_or(0));
            }
        }
        loudest_silenced
    }

    fn encode(law: Codec, pcm: &[i16]) -> Vec<u8> {
        let enc = match law {
            Codec::Alaw => linear_to_alaw,
            _ => linear_to_ulaw,
        };
        pcm.iter().map(|&s| enc(s)).collect()
    }

    #[test]
    fn speech_from_the_first_frame_is_held_then_decoded_with_the_decided_law() {
        for law in [Codec::Alaw, Codec::Ulaw] {
            let stream = encode(law, &speech(2.0));
            assert_eq!(check(law, &stream, 160), 0, "{law:?}: nothing silenced");
            assert_eq!(check(law, &stream, 80), 0, "{law:?} 10 ms frames");
        }
    }

    #[test]
    fn silence_then_speech_loses_only_silence() {
        for law in [Codec::Alaw, Codec::Ulaw] {
            let mut pcm = vec![0i16; 8000];
            pcm.extend(speech(2.0));
            let loudest = check(law, &encode(law, &pcm), 160);
            // A-law's silence decodes to ±8: it went out as 0.
            assert!(loudest <= 8, "{law:?}: audio up to {loudest} silenced");
        }
    }

    #[test]
    fn noise_the_detector_cannot_judge_is_silenced_not_guessed() {
        // Noise votes for neither law, and the best guess on a tie is µ-law: an A-law call
        // starting with it was played to the agent as loud µ-law garbage.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut pcm: Vec<i16> = (0..1600)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % 601) as i16 - 300
            })
            .collect();
        pcm.extend(speech(2.0));
        let loudest = check(Codec::Alaw, &encode(Codec::Alaw, &pcm), 160);
        assert!(loudest > 8, "the noise went out as silence");
    }

    #[test]
    fn an_oversized_odd_frame_is_slin_in_its_place() {
        let mut codec = CallerCodec::new("test", CodecChoice::Auto);
        let alaw = encode(Codec::Alaw, &speech(0.1));
        let odd = [7u8; 481];
        let out = feed(&mut codec, &[&odd, &alaw[..160], &odd]);
        // Alone: out at once, as slin (odd byte dropped). Behind a held frame: it waits.
        assert_eq!(out[0], vec![vec![7u8; 480]]);
        assert!(out[1].is_empty() && out[2].is_empty());
        let rest: Vec<&[u8]> = alaw[160..].chunks(160).collect();
        let out = feed(&mut codec, &rest).concat();
        assert_eq!(codec.decided(), Some(Codec::Alaw));
        assert_eq!(out[0].len(), 320, "the held A-law frame first");
        assert_eq!(out[1], vec![7u8; 480], "then the slin one, still slin");
    }

    #[test]
    fn a_hold_overflowing_with_an_oversized_frame_silences_what_is_before_it() {
        let mut codec = CallerCodec::new("test", CodecChoice::Auto);
        let out = feed(&mut codec, &[&[0xd5; 160], &[1; 961]]).concat();
        assert_eq!(out, [vec![0; 320], vec![1; 960]]);
        assert_eq!(codec.decided(), None);
    }

    #[test]
    fn slin_decides_on_the_first_frame_and_passes_through() {
        let mut codec = CallerCodec::new("test", CodecChoice::Auto);
        let frame: Vec<u8> = (0..320u16).map(|i| i as u8).collect();
        assert_eq!(feed(&mut codec, &[&frame]), [vec![frame.clone()]]);
        assert_eq!(codec.decided(), Some(Codec::Slin));
        let mut odd = frame.clone();
        odd.push(9);
        assert_eq!(feed(&mut codec, &[&odd]), [vec![frame]], "odd byte dropped");
    }

    #[test]
    fn forced_codecs_decode_every_frame_at_once() {
        let frame: Vec<u8> = (0..=255u8).collect();
        for (choice, codec) in [
            (CodecChoice::Ulaw, Codec::Ulaw),
            (CodecChoice::Alaw, Codec::Alaw),
            (CodecChoice::Slin, Codec::Slin),
        ] {
            let mut caller = CallerCodec::new("test", choice);
            assert_eq!(caller.decided(), Some(codec));
            let mut expected = Vec::new();
            g711::decode_into(codec, &frame, &mut expected);
            for _ in 0..3 {
                assert_eq!(feed(&mut caller, &[&frame]), [vec![expected.clone()]]);
            }
        }
        // Slin forced: an odd frame loses its last byte.
        let mut caller = CallerCodec::new("test", CodecChoice::Slin);
        assert_eq!(feed(&mut caller, &[&[1, 2, 3]]), [vec![vec![1, 2]]]);
    }
}
