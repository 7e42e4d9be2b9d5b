//! G.711 µ-law / A-law codecs and detection of the caller's codec.
//!
//! With `Dial(AudioSocket/…)` and no `c(slin)`, Asterisk passes the caller's G.711 bytes through
//! labelled as slin kind `0x10` (docs/audiosocket.md §8), so the codec has to be inferred from the
//! audio itself (docs/audiosocket.md §10, `AUDIO_CODEC=auto`). Everything downstream is 8 kHz s16le.

/// What the caller's `0x10` payloads really contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Slin,
    Ulaw,
    Alaw,
}

impl Codec {
    /// Name used in the compat log line `Audio codec detected: ULAW`.
    pub fn name(&self) -> &'static str {
        match self {
            Codec::Slin => "SLIN",
            Codec::Ulaw => "ULAW",
            Codec::Alaw => "ALAW",
        }
    }
}

/// µ-law byte → linear on the 16-bit scale; equals ITU-T G.191 `ulaw_expand` (checked in tests).
const fn ulaw_expand(b: u8) -> i16 {
    let u = !b;
    let t = ((((u & 0x0f) as i16) << 3) + 0x84) << ((u & 0x70) >> 4);
    if u & 0x80 != 0 {
        0x84 - t
    } else {
        t - 0x84
    }
}

/// A-law byte → linear on the 16-bit scale; equals ITU-T G.191 `alaw_expand` (checked in tests).
const fn alaw_expand(b: u8) -> i16 {
    let a = b ^ 0x55;
    let mut t = ((a & 0x0f) as i16) << 4;
    let seg = (a & 0x70) >> 4;
    if seg == 0 {
        t += 8;
    } else {
        t = (t + 0x108) << (seg - 1);
    }
    if a & 0x80 != 0 {
        t
    } else {
        -t
    }
}

/// Expansion table for one law, built at compile time so it cannot drift from the formula.
const fn table(alaw: bool) -> [i16; 256] {
    let mut out = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        out[i] = if alaw {
            alaw_expand(i as u8)
        } else {
            ulaw_expand(i as u8)
        };
        i += 1;
    }
    out
}

static ULAW_TABLE: [i16; 256] = table(false);
static ALAW_TABLE: [i16; 256] = table(true);

/// µ-law byte → 16-bit linear sample (G.711 decoding, one table lookup).
pub fn ulaw_to_linear(b: u8) -> i16 {
    ULAW_TABLE[usize::from(b)]
}

/// A-law byte → 16-bit linear sample (G.711 decoding, one table lookup).
pub fn alaw_to_linear(b: u8) -> i16 {
    ALAW_TABLE[usize::from(b)]
}

/// Linear → µ-law, ITU-T G.191 `ulaw_compress` (negatives use the one's complement, so the
/// quantiser is symmetric). For the simulator and tests.
pub fn linear_to_ulaw(s: i16) -> u8 {
    // One's complement magnitude on the 14-bit scale, plus the µ-law bias of 33.
    let mag = (i32::from(s ^ (s >> 15)) >> 2) + 33;
    let mag = mag.min(0x1fff);
    // mag ≥ 33 has at least 6 bits; segment 0 is 6 bits long.
    let seg = 32 - mag.leading_zeros() - 6;
    let code = ((seg << 4) as i32 | ((mag >> (seg + 1)) & 0x0f)) as u8;
    if s >= 0 {
        code ^ 0xff
    } else {
        code ^ 0x7f
    }
}

/// Linear → A-law, ITU-T G.191 `alaw_compress`. For the simulator and tests.
pub fn linear_to_alaw(s: i16) -> u8 {
    // One's complement magnitude on the 12-bit scale: 0..=2047.
    let mag = i32::from(s ^ (s >> 15)) >> 4;
    let code = if mag < 16 {
        mag as u8
    } else {
        // Segments 1..=7 each span one octave, mantissa below the leading 1.
        let seg = 32 - mag.leading_zeros() - 4;
        ((seg << 4) as i32 | ((mag >> (seg - 1)) & 0x0f)) as u8
    };
    if s >= 0 {
        (code | 0x80) ^ 0x55
    } else {
        code ^ 0x55
    }
}

/// Appends `input` as 8 kHz s16le bytes; `Slin` is copied unchanged.
pub fn decode_into(codec: Codec, input: &[u8], out: &mut Vec<u8>) {
    let table = match codec {
        Codec::Slin => {
            out.extend_from_slice(input);
            return;
        }
        Codec::Ulaw => &ULAW_TABLE,
        Codec::Alaw => &ALAW_TABLE,
    };
    out.reserve(input.len() * 2);
    for &b in input {
        out.extend_from_slice(&table[usize::from(b)].to_le_bytes());
    }
}

/// Frames of at least this many bytes (and even) are slin: 320 bytes = 20 ms at 8 kHz.
const SLIN_MIN_BYTES: usize = 320;
/// Samples of non-quiet audio whose shape must favour one law before it is decided (300 ms).
const DECIDE_SAMPLES: usize = 2_400;
/// Shape votes that decide at once when no frame has spoken for the other law, neither by shape
/// nor by quietness (60 ms). The caller's audio is held, not guessed, until the law is decided
/// (`call::caller_codec`, whose hold is 60 ms too), so speech from the first frame would lose
/// everything between 60 and 300 ms without this. Unanimity keeps it safe: in the test corpus
/// the wrong law never won a single frame's shape vote, and one vote against (or one frame that
/// is quiet only under the other law, as a pure tone can fake) defers to the 300 ms rule.
const UNANIMOUS_SAMPLES: usize = 480;
/// After this much G.711 audio (3 s) the best guess is taken even without conclusive evidence.
const CAP_SAMPLES: usize = 24_000;
/// Shorter payloads are too short to judge a waveform's shape.
const MIN_SHAPE_SAMPLES: usize = 16;
/// A law wins a frame when the other law's relative prediction residual is this much larger.
/// Measured on the test corpus: the right law is ahead by ≥ 1.5× on most voiced frames, and the
/// wrong law was never ahead by 1.25×.
const WIN_RATIO: f64 = 1.25;
/// Added to the bar so that two near-perfect predictions (a pure 2 kHz tone is one under either
/// law) count as a tie rather than a vote.
const WIN_SLACK: f64 = 0.02;
/// Mean |sample| at or below which a quiet frame counts as silence (about -60 dBFS).
const SILENCE_MEAN: u64 = 32;

const U: usize = 0;
const A: usize = 1;

/// The largest G.711 frame a real channel sends: 60 ms ptime.
const MAX_G711_BYTES: usize = 480;

/// Infers the caller's codec from the first inbound `0x10` payloads.
///
/// Size (docs/audiosocket.md §10): an even payload of ≥ 320 bytes is slin (320 = 20 ms); anything smaller or
/// odd is G.711 (160 = 20 ms; 80/240 = 10/30 ms ptime). Slin is decided on the first such frame.
/// Odd payloads above 480 bytes fit neither and are no evidence at all.
///
/// µ-law vs A-law: a byte has the same sign under both laws and its 7-bit magnitude codes differ
/// by XOR 0x2A, so reading one law as the other maps exponent e to e^2 and scrambles the
/// mantissa. Loudness alone cannot tell them apart (the wrong law is louder at some levels and
/// quieter at others), so two kinds of evidence are used:
/// - *quiet*: every byte has exponent ≤ 1 under law L (hence 2–3 under the other, which would
///   mean a signal that never comes near zero). Silence, comfort noise and very low speech look
///   like this; such a frame is decoded with L, but only breaks ties at the cap, because a pure
///   tone with two magnitude levels can fake it.
/// - *shape*, for all other frames: real audio is correlated, so an order-2 linear predictor
///   fitted to the right decoding leaves a small residual, while the wrong law's scrambled
///   magnitudes leave a large one. The law whose L1 residual / L1 signal is 1.25× smaller wins the
///   frame.
///
/// The law is decided once 300 ms of frames voted for it with at most a quarter as many against,
/// or as soon as 60 ms of frames voted for it by shape with no evidence at all for the other law,
/// or after 3 s of G.711 by the best guess (shape votes, then silent frames, then quiet frames,
/// then µ-law).
#[derive(Debug, Clone, Default)]
pub struct Detector {
    decided: Option<Codec>,
    /// Samples seen in G.711-sized frames.
    seen: usize,
    /// Samples in frames whose shape favoured µ-law / A-law.
    shape_votes: [usize; 2],
    /// Samples in quiet frames whose quiet law decodes them to near zero.
    silent_votes: [usize; 2],
    /// Samples in quiet frames, by quiet law.
    quiet_votes: [usize; 2],
}

impl Detector {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one inbound 8 kHz audio payload; returns the codec to decode THIS frame with (best
    /// current guess). `decided()` becomes `Some` once the evidence is conclusive; from then on
    /// the decided codec is returned without looking at the payload.
    pub fn observe(&mut self, payload: &[u8]) -> Codec {
        if let Some(codec) = self.decided {
            return codec;
        }
        let n = payload.len();
        if n >= SLIN_MIN_BYTES && n.is_multiple_of(2) {
            self.decided = Some(Codec::Slin);
            return Codec::Slin;
        }
        if n > MAX_G711_BYTES {
            // No G.711 ptime gives this size (a hostile or broken peer): read it as Asterisk
            // would (slin, len/2 samples) and let it vote for nothing.
            return Codec::Slin;
        }
        self.seen += n;
        let evidence = examine(payload);
        match evidence {
            Evidence::Quiet { law, silent } => {
                self.quiet_votes[law] += n;
                if silent {
                    self.silent_votes[law] += n;
                }
            }
            Evidence::Shape(law) => self.shape_votes[law] += n,
            Evidence::None => {}
        }
        let (lead, other) = if self.shape_votes[A] > self.shape_votes[U] {
            (A, U)
        } else {
            (U, A)
        };
        let [lead_votes, other_votes] = [self.shape_votes[lead], self.shape_votes[other]];
        let unanimous =
            lead_votes >= UNANIMOUS_SAMPLES && other_votes == 0 && self.quiet_votes[other] == 0;
        if unanimous || (lead_votes >= DECIDE_SAMPLES && other_votes * 4 <= lead_votes) {
            self.decided = Some(law_codec(lead));
        } else if self.seen >= CAP_SAMPLES {
            self.decided = Some(law_codec(self.best_guess()));
        }
        match (self.decided, evidence) {
            (Some(codec), _) => codec,
            // Digital silence stays silent instead of becoming a loud buzz while undecided.
            (None, Evidence::Quiet { law, .. }) => law_codec(law),
            (None, _) => law_codec(self.best_guess()),
        }
    }

    pub fn decided(&self) -> Option<Codec> {
        self.decided
    }

    /// Shape votes, then silent frames, then quiet frames; µ-law (common on trunks) on a tie.
    fn best_guess(&self) -> usize {
        let score = |law: usize| {
            (
                self.shape_votes[law],
                self.silent_votes[law],
                self.quiet_votes[law],
            )
        };
        if score(A) > score(U) {
            A
        } else {
            U
        }
    }
}

fn law_codec(law: usize) -> Codec {
    if law == A {
        Codec::Alaw
    } else {
        Codec::Ulaw
    }
}

/// What one G.711-sized frame says about the law.
#[derive(Debug, Clone, Copy)]
enum Evidence {
    /// Every byte has exponent ≤ 1 under `law`; `silent` if it decodes to near zero there.
    Quiet {
        law: usize,
        silent: bool,
    },
    /// The waveform is clearly more predictable under this law.
    Shape(usize),
    None,
}

/// Two passes over the frame, no allocation: statistics of both decodings, then (for non-quiet
/// frames) the residual of each law's own order-2 predictor.
fn examine(payload: &[u8]) -> Evidence {
    let decode = |b: u8| {
        [
            i64::from(ULAW_TABLE[usize::from(b)]),
            i64::from(ALAW_TABLE[usize::from(b)]),
        ]
    };
    // Pass 1: quietness, L1 level and lag-0/1/2 autocorrelations per law.
    // Bits 6..5 of the byte: 0b11 ⇔ µ-law exponent ≤ 1; 0b10 ⇔ A-law exponent ≤ 1.
    let mut quiet = [!payload.is_empty(); 2];
    let mut level = [0u64; 2];
    let mut r = [[0i64; 3]; 2];
    let mut hist = [[0i64; 2]; 2];
    for &b in payload {
        quiet[U] &= b & 0x60 == 0x60;
        quiet[A] &= b & 0x60 == 0x40;
        let x = decode(b);
        for law in [U, A] {
            let [x1, x2] = hist[law];
            level[law] += x[law].unsigned_abs();
            r[law][0] += x[law] * x[law];
            r[law][1] += x[law] * x1;
            r[law][2] += x[law] * x2;
            hist[law] = [x[law], x1];
        }
    }
    let n = payload.len();
    if let Some(law) = [U, A].into_iter().find(|&law| quiet[law]) {
        let silent = level[law] <= SILENCE_MEAN * n as u64;
        return Evidence::Quiet { law, silent };
    }
    if n < MIN_SHAPE_SAMPLES {
        return Evidence::None;
    }
    // Pass 2: L1 residual of each law's predictor.
    let coef = [predictor(r[U]), predictor(r[A])];
    let mut residual = [0f64; 2];
    let mut hist = [[0f64; 2]; 2];
    for &b in payload {
        let x = decode(b);
        for law in [U, A] {
            let [x1, x2] = hist[law];
            let [a1, a2] = coef[law];
            let v = x[law] as f64;
            residual[law] += (v - a1 * x1 - a2 * x2).abs();
            hist[law] = [v, x1];
        }
    }
    // Relative residual per law; non-quiet frames have samples ≥ 396 in both, so level > 0.
    let rel = |law: usize| residual[law] / level[law].max(1) as f64;
    let (rel_u, rel_a) = (rel(U), rel(A));
    if rel_a > WIN_RATIO * rel_u + WIN_SLACK {
        Evidence::Shape(U)
    } else if rel_u > WIN_RATIO * rel_a + WIN_SLACK {
        Evidence::Shape(A)
    } else {
        Evidence::None
    }
}

/// Coefficients `[a1, a2]` of the least-squares order-2 predictor `x[n] ≈ a1·x[n-1] + a2·x[n-2]`,
/// by the Levinson recursion on biased autocorrelations (so both reflection coefficients are ≤ 1).
fn predictor(r: [i64; 3]) -> [f64; 2] {
    let r0 = r[0] as f64;
    if r0 <= 0.0 {
        return [0.0, 0.0];
    }
    let k1 = r[1] as f64 / r0;
    let e1 = 1.0 - k1 * k1;
    if e1 <= 1e-9 {
        // DC or Nyquist: the first-order predictor is already exact.
        return [k1, 0.0];
    }
    let k2 = (r[2] as f64 / r0 - k1 * k1) / e1;
    [k1 * (1.0 - k2), k2]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    /// ITU-T G.191 STL `g711.c`, transliterated as literally as Rust allows, as the oracle.
    mod g191 {
        pub fn ulaw_expand(log: u8) -> i16 {
            let log = i16::from(log);
            let sign = if log < 0x80 { -1 } else { 1 };
            let mut mantissa = !log;
            let exponent = (mantissa >> 4) & 0x07;
            let segment = exponent + 1;
            mantissa &= 0x0f;
            let step = 4 << segment;
            sign * ((0x80 << exponent) + step * mantissa + step / 2 - 4 * 33)
        }

        pub fn alaw_expand(log: u8) -> i16 {
            let mut ix = i16::from(log) ^ 0x55;
            ix &= 0x7f;
            let iexp = ix >> 4;
            let mut mant = ix & 0x0f;
            if iexp > 0 {
                mant += 16;
            }
            mant = (mant << 4) + 0x08;
            if iexp > 1 {
                mant <<= iexp - 1;
            }
            if log > 127 {
                mant
            } else {
                -mant
            }
        }

        pub fn ulaw_compress(lin: i16) -> u8 {
            let mut absno = if lin < 0 {
                (!lin >> 2) + 33
            } else {
                (lin >> 2) + 33
            };
            if absno > 0x1fff {
                absno = 0x1fff;
            }
            let mut i = absno >> 6;
            let mut segno = 1;
            while i != 0 {
                segno += 1;
                i >>= 1;
            }
            let high_nibble = 0x08 - segno;
            let low_nibble = 0x0f - ((absno >> segno) & 0x0f);
            let mut log = (high_nibble << 4) | low_nibble;
            if lin >= 0 {
                log |= 0x80;
            }
            log as u8
        }

        pub fn alaw_compress(lin: i16) -> u8 {
            let mut ix = if lin < 0 { !lin >> 4 } else { lin >> 4 };
            if ix > 15 {
                let mut iexp = 1;
                while ix > 16 + 15 {
                    ix >>= 1;
                    iexp += 1;
                }
                ix -= 16;
                ix += iexp << 4;
            }
            if lin >= 0 {
                ix |= 0x80;
            }
            (ix ^ 0x55) as u8
        }
    }

    /// Deterministic xorshift64: reproducible noise without crates.
    fn xorshift(state: &mut u64) -> u64 {
        let mut x = *state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *state = x;
        x
    }

    fn encode(law: Codec, pcm: &[i16]) -> Vec<u8> {
        let enc = if law == Codec::Alaw {
            linear_to_alaw
        } else {
            linear_to_ulaw
        };
        pcm.iter().map(|&s| enc(s)).collect()
    }

    fn decode(codec: Codec, bytes: &[u8]) -> Vec<i16> {
        let mut out = Vec::new();
        decode_into(codec, bytes, &mut out);
        out.chunks(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect()
    }

    fn amplitude(dbfs: f64) -> f64 {
        32767.0 * 10f64.powf(dbfs / 20.0)
    }

    fn tone(freq: f64, dbfs: f64, phase: f64, secs: f64) -> Vec<i16> {
        let a = amplitude(dbfs);
        (0..(secs * 8000.0) as usize)
            .map(|n| (a * (2.0 * PI * freq * n as f64 / 8000.0 + phase).sin()).round() as i16)
            .collect()
    }

    /// Harmonics (1/k, up to 3.4 kHz) of a fundamental gliding 120–220 Hz, a 4 Hz syllable
    /// envelope, and a 300 ms pause every second.
    fn speech(dbfs: f64, secs: f64) -> Vec<i16> {
        let peak = amplitude(dbfs);
        let mut phase = 0.0f64;
        let mut out = Vec::new();
        for n in 0..(secs * 8000.0) as usize {
            let t = n as f64 / 8000.0;
            let f0 = 170.0 + 50.0 * (2.0 * PI * 0.7 * t).sin();
            phase += 2.0 * PI * f0 / 8000.0;
            let mut v = 0.0;
            let mut k = 1.0;
            while k * f0 < 3400.0 {
                v += (k * phase).sin() / k;
                k += 1.0;
            }
            let env = (0.5 - 0.5 * (2.0 * PI * 4.0 * t).cos()).powi(2);
            let gate = if t % 1.0 < 0.7 { 1.0 } else { 0.0 };
            out.push((peak * 0.5 * v * env * gate).round() as i16);
        }
        out
    }

    fn noise(rng: &mut u64, amp: i16, samples: usize) -> Vec<i16> {
        let span = 2 * amp as u64 + 1;
        (0..samples)
            .map(|_| (xorshift(rng) % span) as i16 - amp)
            .collect()
    }

    fn silence(law: Codec, secs: f64) -> Vec<u8> {
        let byte = if law == Codec::Alaw { 0xd5 } else { 0xff };
        vec![byte; (secs * 8000.0) as usize]
    }

    /// Feeds a stream in `frame`-byte payloads. Checks it ends decided on `law`, and that every
    /// digitally silent frame (the law's ±0 codes) was decoded to ≤ 16 while undecided.
    /// Returns the index of the frame that decided.
    fn run_framed(law: Codec, stream: &[u8], frame: usize, label: &str) -> usize {
        let mut d = Detector::new();
        let mut decided_at = None;
        for (i, payload) in stream.chunks(frame).enumerate() {
            let codec = d.observe(payload);
            let silent = payload.iter().all(|&b| b & 0x7f == 0x7f)
                || payload.iter().all(|&b| b & 0x7f == 0x55);
            if silent && decided_at.is_none() {
                let peak = decode(codec, payload)
                    .iter()
                    .map(|s| s.unsigned_abs())
                    .max();
                assert!(
                    peak <= Some(16),
                    "{label}: silent frame {i} decoded as {codec:?}"
                );
            }
            if decided_at.is_none() && d.decided().is_some() {
                decided_at = Some(i);
            }
        }
        assert_eq!(d.decided(), Some(law), "{label}");
        decided_at.unwrap_or(usize::MAX)
    }

    fn run(law: Codec, stream: &[u8], label: &str) -> usize {
        run_framed(law, stream, 160, label)
    }

    #[test]
    fn reference_values() {
        assert_eq!(ulaw_to_linear(0xff), 0);
        assert_eq!(ulaw_to_linear(0x7f), 0);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0xfe), 8);
        assert_eq!(ulaw_to_linear(0xef), 132);
        assert_eq!(alaw_to_linear(0xd5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0x2a), -32256);
        assert_eq!(alaw_to_linear(0xaa), 32256);
        assert_eq!(alaw_to_linear(0xd4), 24);
        assert_eq!(alaw_to_linear(0xc5), 264);
        // Silence read with the wrong law (why "higher RMS wins" fails).
        assert_eq!(alaw_to_linear(0xff), 848);
        assert_eq!(ulaw_to_linear(0xd5), 716);
        assert_eq!(linear_to_ulaw(0), 0xff);
        assert_eq!(linear_to_ulaw(-1), 0x7f);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_alaw(0), 0xd5);
        assert_eq!(linear_to_alaw(-1), 0x55);
        assert_eq!(linear_to_alaw(i16::MAX), 0xaa);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2a);
    }

    #[test]
    fn matches_itu_g191_reference() {
        for b in 0..=255u8 {
            assert_eq!(ulaw_to_linear(b), g191::ulaw_expand(b), "ulaw {b:#04x}");
            assert_eq!(alaw_to_linear(b), g191::alaw_expand(b), "alaw {b:#04x}");
        }
        for s in i16::MIN..=i16::MAX {
            assert_eq!(linear_to_ulaw(s), g191::ulaw_compress(s), "ulaw {s}");
            assert_eq!(linear_to_alaw(s), g191::alaw_compress(s), "alaw {s}");
        }
    }

    /// Quantisation step of the segment a code falls in (16-bit scale).
    fn step(codec: Codec, b: u8) -> i32 {
        match codec {
            Codec::Alaw => 16 << ((((b ^ 0x55) >> 4) & 7).max(1) - 1),
            _ => 8 << ((!b >> 4) & 7),
        }
    }

    #[test]
    fn round_trips_within_quantisation() {
        for s in i16::MIN..=i16::MAX {
            for codec in [Codec::Ulaw, Codec::Alaw] {
                let (b, back, clip) = match codec {
                    Codec::Alaw => {
                        let b = linear_to_alaw(s);
                        (b, alaw_to_linear(b), 32256)
                    }
                    _ => {
                        let b = linear_to_ulaw(s);
                        (b, ulaw_to_linear(b), 32124)
                    }
                };
                // Decoders return the middle of each cell: at most half a step off, plus the
                // clipping beyond the largest code.
                let s = i32::from(s);
                let err = (i32::from(back) - s).abs() - (s.abs() - clip).max(0);
                assert!(2 * err <= step(codec, b), "{codec:?} {s} -> {back}");
            }
        }
        for b in 0..=255u8 {
            // µ-law has two zeros (0xff, 0x7f); the encoder gives +0 for 0.
            assert_eq!(
                linear_to_ulaw(ulaw_to_linear(b)),
                if b == 0x7f { 0xff } else { b }
            );
            assert_eq!(linear_to_alaw(alaw_to_linear(b)), b);
        }
    }

    #[test]
    fn decode_into_appends() {
        let mut out = vec![1u8];
        decode_into(Codec::Ulaw, &[0x80, 0xff], &mut out);
        assert_eq!(out, [1, 0x7c, 0x7d, 0, 0]);
        decode_into(Codec::Alaw, &[0x55], &mut out);
        assert_eq!(out[5..], (-8i16).to_le_bytes());
        decode_into(Codec::Slin, &[9, 8], &mut out);
        assert_eq!(out[7..], [9, 8]);
        assert_eq!(Codec::Ulaw.name(), "ULAW");
        assert_eq!(Codec::Alaw.name(), "ALAW");
        assert_eq!(Codec::Slin.name(), "SLIN");
    }

    #[test]
    fn slin_sizes_decide_at_once() {
        let mut d = Detector::new();
        assert_eq!(d.observe(&[0; 320]), Codec::Slin);
        assert_eq!(d.decided(), Some(Codec::Slin));
        // Sticky: later payloads are not examined.
        assert_eq!(d.observe(&[0xff; 160]), Codec::Slin);
        let mut d = Detector::new();
        assert_eq!(d.observe(&[0xff; 321]), Codec::Ulaw); // odd: G.711
        assert_eq!(d.observe(&[0xd5; 160]), Codec::Alaw);
        assert_eq!(d.observe(&[]), Codec::Ulaw);
        assert_eq!(d.decided(), None);
        assert_eq!(d.observe(&[0; 640]), Codec::Slin);
        assert_eq!(d.decided(), Some(Codec::Slin));
    }

    #[test]
    fn tones_after_silence() {
        for law in [Codec::Ulaw, Codec::Alaw] {
            for freq in [200.0, 440.0, 1000.0, 3000.0, 1500.0, 3400.0] {
                // 22.5° puts 1 kHz / 3 kHz samples on only two magnitudes, the hardest case.
                for phase in [0.0, PI / 8.0, 1.0, 2.0] {
                    for db in (-45..=-3).step_by(3) {
                        let db = f64::from(db);
                        let mut stream = silence(law, 1.0);
                        stream.extend(encode(law, &tone(freq, db, phase, 3.0)));
                        let label = format!("{law:?} {freq} Hz {db} dBFS phase {phase:.2}");
                        run(law, &stream, &label);
                    }
                }
            }
        }
    }

    #[test]
    fn speech_after_silence() {
        for law in [Codec::Ulaw, Codec::Alaw] {
            for db in [-40.0, -30.0, -20.0, -10.0, -3.0] {
                let mut stream = silence(law, 1.0);
                stream.extend(encode(law, &speech(db, 3.0)));
                let at = run(law, &stream, &format!("{law:?} speech {db} dBFS"));
                // Above very low levels the shape decides within 1.2 s of speech onset (frame 50);
                // lower speech is all "quiet" frames and waits for the 3 s cap.
                if db >= -30.0 {
                    assert!(at < 110, "{law:?} speech {db} dBFS decided at frame {at}");
                }
            }
        }
    }

    #[test]
    fn speech_with_background_noise() {
        let mut rng = 0x1234_5678_9abc_def1u64;
        for law in [Codec::Ulaw, Codec::Alaw] {
            for (db, floor) in [(-20.0, 100), (-10.0, 300), (-25.0, 30)] {
                let clean = speech(db, 3.0);
                let hiss = noise(&mut rng, floor, clean.len());
                let pcm: Vec<i16> = clean
                    .iter()
                    .zip(&hiss)
                    .map(|(s, n)| s.saturating_add(*n))
                    .collect();
                let mut stream = encode(law, &noise(&mut rng, floor, 4000));
                stream.extend(encode(law, &pcm));
                run(
                    law,
                    &stream,
                    &format!("{law:?} speech {db} dBFS + noise ±{floor}"),
                );
            }
        }
    }

    #[test]
    fn noise_then_tone() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for law in [Codec::Ulaw, Codec::Alaw] {
            for freq in [440.0, 1000.0] {
                let mut stream = silence(law, 1.0);
                stream.extend(encode(law, &noise(&mut rng, 30, 8000)));
                stream.extend(encode(law, &tone(freq, -20.0, 0.5, 2.0)));
                run(law, &stream, &format!("{law:?} noise then {freq} Hz"));
            }
        }
    }

    #[test]
    fn silence_variants() {
        for (law, pair) in [(Codec::Ulaw, [0xffu8, 0x7f]), (Codec::Alaw, [0xd5, 0x55])] {
            // Alternating ±0: undecided (and decoded silent) until the 3 s cap, then right.
            let stream: Vec<u8> = (0..32_000).map(|i| pair[i % 2]).collect();
            let at = run(law, &stream, &format!("{law:?} alternating ±0"));
            assert_eq!(at + 1, CAP_SAMPLES / 160);
            // Plain silence longer than the cap, then speech.
            let mut stream = silence(law, 4.0);
            stream.extend(encode(law, &speech(-20.0, 1.0)));
            run(law, &stream, &format!("{law:?} long silence"));
        }
    }

    #[test]
    fn other_frame_sizes() {
        for law in [Codec::Ulaw, Codec::Alaw] {
            let mut stream = silence(law, 0.5);
            stream.extend(encode(law, &speech(-15.0, 2.0)));
            for frame in [80, 240, 319] {
                run_framed(law, &stream, frame, &format!("{law:?} {frame}-byte frames"));
            }
        }
    }

    #[test]
    fn random_payloads_never_panic() {
        let mut rng = 0x0bad_cafe_dead_beefu64;
        let mut d = Detector::new();
        for _ in 0..2_000 {
            let len = (xorshift(&mut rng) % 400) as usize;
            let payload: Vec<u8> = (0..len).map(|_| xorshift(&mut rng) as u8).collect();
            if d.decided() == Some(Codec::Slin) {
                d = Detector::new();
            }
            d.observe(&payload);
        }
    }

    /// The index of the frame after which a detector that first saw `before` had decided,
    /// feeding `stream` in `frame`-byte payloads; and what it decided.
    fn decided_at(before: &[u8], stream: &[u8], frame: usize) -> (Option<usize>, Option<Codec>) {
        let mut d = Detector::new();
        if !before.is_empty() {
            d.observe(before);
        }
        let at = stream.chunks(frame).position(|f| {
            d.observe(f);
            d.decided().is_some()
        });
        (at, d.decided())
    }

    /// The tone of `tones_after_silence` from its first sample: every frame votes by shape.
    fn loud_tone(law: Codec) -> Vec<u8> {
        encode(law, &tone(440.0, -10.0, 0.5, 1.0))
    }

    #[test]
    fn unanimous_shape_votes_decide_within_60_ms() {
        for law in [Codec::Ulaw, Codec::Alaw] {
            let decided = Some(law);
            assert_eq!(decided_at(&[], &loud_tone(law), 160), (Some(2), decided));
            // 10 ms frames: 60 ms is six of them.
            assert_eq!(decided_at(&[], &loud_tone(law), 80), (Some(5), decided));
            // Speech whose first syllable starts from nothing: its first frames are quiet
            // (no vote), then three votes in a row.
            let (at, codec) = decided_at(&[], &encode(law, &speech(-15.0, 1.0)), 160);
            assert!(
                at.is_some_and(|at| at < 10),
                "{law:?} speech decided at {at:?}"
            );
            assert_eq!(codec, decided);
        }
    }

    #[test]
    fn any_evidence_against_leaves_it_to_the_300_ms_rule() {
        for (law, other) in [(Codec::Ulaw, Codec::Alaw), (Codec::Alaw, Codec::Ulaw)] {
            // A frame whose shape voted for the other law; a frame of the other law's digital
            // silence (quiet only under the other law).
            for against in [loud_tone(other)[..160].to_vec(), silence(other, 0.02)] {
                let (at, codec) = decided_at(&against, &loud_tone(law), 160);
                assert_eq!(at.map(|at| at + 1), Some(DECIDE_SAMPLES / 160), "{law:?}");
                assert_eq!(codec, Some(law));
            }
        }
    }
}
