//! How good a sample-rate conversion is, in numbers: image and alias rejection, passband
//! gain, signal-to-noise ratio after a round trip, delay. The resampler's unit tests assert
//! on these and `benches/resample.rs` prints them for each filter design compared, so the
//! two always measure the same thing.
//!
//! A converter under test is a function `(from_hz, to_hz, whole input) → whole output`
//! (however it streams inside). The test signals are analytic ([`Signal`]), so the exact
//! expected output can be computed at any rate and any fractional delay.

use std::f64::consts::PI;

use super::{Filter, Resampler};

/// A converter under test: converts a whole signal from the first rate to the second.
pub type Convert<'a> = &'a mut dyn FnMut(u32, u32, &[i16]) -> Vec<i16>;

/// Peak amplitude of the test tones: −10 dBFS, with headroom for a filter's overshoot. A
/// component 86 dB below it is half an LSB: anything quieter rounds to silence in 16 bits,
/// and its rejection comes out infinite.
pub const TONE_AMPLITUDE: f64 = 10_000.0;

/// Length of every test signal, in seconds: 0.4 s measured, whose 2.5 Hz bins part two
/// tones 200 Hz apart far outside the window's 4-bin main lobe.
const SIGNAL_SECONDS: f64 = 0.5;

/// Time left out at each end of a signal before measuring: the filter's start-up and tail.
const EDGE_SECONDS: f64 = 0.05;

/// [`Resampler`] with `filter` as a converter under test: `input` pushed in 20 ms frames, as
/// a call does, then flushed.
pub fn through(filter: Filter, from: u32, to: u32, input: &[i16]) -> Vec<i16> {
    let mut r = Resampler::with_filter(from, to, filter);
    let bytes: Vec<u8> = input.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut out = Vec::new();
    for frame in bytes.chunks(from as usize / 50 * 2) {
        r.push(frame, &mut out);
    }
    r.flush(&mut out);
    samples(&out)
}

/// s16le bytes as samples.
pub fn samples(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// A test signal, defined at every instant so it can be sampled at any rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Signal {
    /// A sine at this frequency (Hz), [`TONE_AMPLITUDE`].
    Tone(f64),
    /// Voiced speech, roughly: the harmonics 1–15 of a fundamental gliding between 120 and
    /// 220 Hz (period 1.5 s), amplitudes falling as 1/h, so everything lies below 3.4 kHz
    /// (15 × 220 = 3.3 kHz), the telephone band that must pass an 8 kHz leg untouched.
    Speech,
}

/// Period of the speech-like fundamental's glide, in seconds.
const GLIDE_SECONDS: f64 = 1.5;

impl Signal {
    /// The signal's value at time `t` (seconds), in sample units.
    pub fn at(self, t: f64) -> f64 {
        match self {
            Signal::Tone(hz) => TONE_AMPLITUDE * (2.0 * PI * hz * t).sin(),
            Signal::Speech => {
                // f0(t) = 170 − 50 cos(2πt / T); its phase is the integral.
                let w = 2.0 * PI / GLIDE_SECONDS;
                let phase = 2.0 * PI * (170.0 * t - 50.0 / w * (w * t).sin());
                let scale = 6_000.0; // Σ 1/h for h ≤ 15 is 3.3: peak ≈ 20,000
                (1..=15)
                    .map(f64::from)
                    .map(|h| scale / h * (h * phase).sin())
                    .sum()
            }
        }
    }

    /// `len` samples at `rate`, `late` seconds late (sample `n` is the signal at
    /// `n / rate − late`), unrounded: the exact expectation for a converter's output.
    pub fn exact(self, rate: u32, len: usize, late: f64) -> Vec<f64> {
        (0..len)
            .map(|n| self.at(n as f64 / f64::from(rate) - late))
            .collect()
    }

    /// The test input: [`SIGNAL_SECONDS`] at `rate`, as s16 samples.
    pub fn input(self, rate: u32) -> Vec<i16> {
        let len = (SIGNAL_SECONDS * f64::from(rate)) as usize;
        self.exact(rate, len, 0.0)
            .into_iter()
            .map(|v| v.round() as i16)
            .collect()
    }
}

/// `20 log10(ratio)`: an amplitude ratio in decibels.
pub fn db(ratio: f64) -> f64 {
    20.0 * ratio.log10()
}

/// The middle of `signal`, without the start-up and tail of the filter.
fn middle<T>(signal: &[T], rate: u32) -> &[T] {
    let edge = (EDGE_SECONDS * f64::from(rate)) as usize;
    let start = edge.min(signal.len());
    &signal[start..signal.len().saturating_sub(edge).max(start)]
}

/// Amplitude of the component of `signal` (sampled at `rate`) at `hz`: a single-bin DFT
/// under a Blackman-Harris window, whose ≈ 92 dB sidelobes let a component 200 Hz away from
/// a loud one be measured 90 dB below it.
pub fn level(signal: &[i16], rate: u32, hz: f64) -> f64 {
    let x = middle(signal, rate);
    let n = x.len() as f64;
    let w = 2.0 * PI * hz / f64::from(rate);
    let (mut re, mut im, mut sum) = (0.0, 0.0, 0.0);
    for (i, &s) in x.iter().enumerate() {
        let a = 2.0 * PI * i as f64 / n;
        let win =
            0.35875 - 0.48829 * a.cos() + 0.14128 * (2.0 * a).cos() - 0.01168 * (3.0 * a).cos();
        let v = f64::from(s) * win;
        re += v * (w * i as f64).cos();
        im -= v * (w * i as f64).sin();
        sum += win;
    }
    2.0 * (re * re + im * im).sqrt() / sum
}

/// Gain of the conversion `from → to` at `hz`, in dB (0 = unchanged level).
pub fn gain_db(convert: Convert, from: u32, to: u32, hz: f64) -> f64 {
    let out = convert(from, to, &Signal::Tone(hz).input(from));
    db(level(&out, to, hz) / TONE_AMPLITUDE)
}

/// Upsampling `from → to` (`from < to`): how far below a tone at `hz` its strongest image
/// (at `k × from ± hz`, below `to / 2`) comes out, in dB.
pub fn image_rejection_db(convert: Convert, from: u32, to: u32, hz: f64) -> f64 {
    let out = convert(from, to, &Signal::Tone(hz).input(from));
    let wanted = level(&out, to, hz);
    let nyquist = f64::from(to) / 2.0;
    let images = (1..)
        .map(|k| f64::from(from) * f64::from(k))
        .take_while(|&c| c - hz < nyquist)
        .flat_map(|c| [c - hz, c + hz])
        .filter(|&f| f < nyquist);
    let worst = images.map(|f| level(&out, to, f)).fold(0.0, f64::max);
    db(wanted / worst)
}

/// Downsampling `from → to` (`from > to`): how far below a same-level 1 kHz tone's output a
/// tone at `hz` (above `to / 2`) comes out where it folds to, in dB.
pub fn alias_rejection_db(convert: Convert, from: u32, to: u32, hz: f64) -> f64 {
    let rate = f64::from(to);
    let folded = (hz % rate).min(rate - hz % rate);
    let reference = level(
        &convert(from, to, &Signal::Tone(1_000.0).input(from)),
        to,
        1_000.0,
    );
    let alias = level(
        &convert(from, to, &Signal::Tone(hz).input(from)),
        to,
        folded,
    );
    db(reference / alias)
}

/// How late `out` (sampled at `rate`) carries `signal`, in seconds, searched up to
/// `max_lag` samples: the peak of their cross-correlation, then the fractional delay
/// within a sample either side of it that leaves the least error (a golden-section search;
/// a parabola through the correlation peak is biased by a few 1/10,000 of a sample, which
/// already caps an SNR near 75 dB).
pub fn lateness(signal: Signal, rate: u32, out: &[i16], max_lag: usize) -> f64 {
    let reference = signal.exact(rate, out.len(), 0.0);
    let n = out.len().saturating_sub(max_lag);
    let corr = |l: usize| -> f64 { (0..n).map(|i| reference[i] * f64::from(out[i + l])).sum() };
    let peak = (0..=max_lag)
        .map(|l| (l, corr(l)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(0, |(l, _)| l);
    let rate_f = f64::from(rate);
    let noise = |late: f64| -> f64 {
        let exact = signal.exact(rate, out.len(), late);
        squared_error(middle(&exact, rate), middle(out, rate))
    };
    let golden = (5.0f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = ((peak as f64 - 1.0) / rate_f, (peak as f64 + 1.0) / rate_f);
    let (mut c, mut d) = (b - golden * (b - a), a + golden * (b - a));
    let (mut fc, mut fd) = (noise(c), noise(d));
    // 30 steps shrink two samples to 2 × 0.618^30 ≈ 1e-6 of a sample.
    for _ in 0..30 {
        if fc < fd {
            (b, d, fd) = (d, c, fc);
            c = b - golden * (b - a);
            fc = noise(c);
        } else {
            (a, c, fc) = (c, d, fd);
            d = a + golden * (b - a);
            fd = noise(d);
        }
    }
    (a + b) / 2.0
}

/// Delay of the conversion `from → to`, in milliseconds, measured on speech by
/// cross-correlation (up to `max_ms`) against the exact speech at the output rate.
pub fn delay_ms(convert: Convert, from: u32, to: u32, max_ms: f64) -> f64 {
    let out = convert(from, to, &Signal::Speech.input(from));
    let max_lag = (max_ms / 1_000.0 * f64::from(to)).ceil() as usize;
    lateness(Signal::Speech, to, &out, max_lag) * 1_000.0
}

/// Signal-to-noise ratio of `signal` against the exact `reference`, in dB, over the middle
/// of the two (without the filter's start-up and tail).
pub fn snr_db(reference: &[f64], signal: &[i16], rate: u32) -> f64 {
    let len = reference.len().min(signal.len());
    let (r, s) = (
        middle(&reference[..len], rate),
        middle(&signal[..len], rate),
    );
    let power: f64 = r.iter().map(|v| v * v).sum();
    10.0 * (power / squared_error(r, s)).log10()
}

/// Σ (signal − reference)² over the common length.
fn squared_error(reference: &[f64], signal: &[i16]) -> f64 {
    reference
        .iter()
        .zip(signal)
        .map(|(v, &x)| (f64::from(x) - v).powi(2))
        .sum()
}

/// SNR (dB) of `signal` sent `rate → via → rate`, against the exact signal delayed by the
/// round trip's delay, measured on speech (a tone's correlation peaks every period) up to
/// `max_ms`.
pub fn round_trip_snr_db(
    convert: Convert,
    rate: u32,
    via: u32,
    signal: Signal,
    max_ms: f64,
) -> f64 {
    let mut trip = |input: &[i16]| {
        let there = convert(rate, via, input);
        convert(via, rate, &there)
    };
    let speech = trip(&Signal::Speech.input(rate));
    let max_lag = (max_ms / 1_000.0 * f64::from(rate)).ceil() as usize;
    let late = lateness(Signal::Speech, rate, &speech, max_lag);
    let back = match signal {
        Signal::Speech => speech,
        Signal::Tone(_) => trip(&signal.input(rate)),
    };
    snr_db(&signal.exact(rate, back.len(), late), &back, rate)
}

/// Peak level of [`speech_like`], in sample units (≈ −10 dBFS, a loud-ish caller).
const SPEECH_PEAK: f64 = 10_000.0;

/// Vowel formants (F1, F2, F3 in Hz, from Peterson & Barney's averages for adult men):
/// /a/, /i/, /u/, /e/, /o/. [`speech_like`] glides from one to the next each syllable.
const VOWELS: [[f64; 3]; 5] = [
    [730.0, 1_090.0, 2_440.0],
    [270.0, 2_290.0, 3_010.0],
    [300.0, 870.0, 2_240.0],
    [530.0, 1_840.0, 2_480.0],
    [570.0, 840.0, 2_410.0],
];

/// Formant bandwidths (Hz) for F1–F3: typical of a male voice.
const BANDWIDTHS: [f64; 3] = [80.0, 100.0, 140.0];

/// A syllable's length, in seconds: 4 per second, the rate of syllables in speech (a neural
/// voice detector learns this modulation; a steady sound lacks it).
const SYLLABLE_SECONDS: f64 = 0.25;

/// Intonation: the pitch swings ±10 % at 3 Hz on top of a 10 % fall per 1.5 s phrase. Speech
/// never holds a pitch; a voice that does sounds like a tone to a detector.
const INTONATION_DEPTH: f64 = 0.1;
const INTONATION_HZ: f64 = 3.0;
const PHRASE_SECONDS: f64 = 1.5;

/// Loudness within a syllable swings between 1 − 2 × this and 1 (never silent).
const SYLLABLE_DIP: f64 = 0.2;

/// A deterministic pseudo-random stream (SplitMix64): test signals differ by seed and are
/// the same on every run.
struct SplitMix(u64);

impl SplitMix {
    /// A value in [−1, 1).
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

/// Gain of the three formant resonances at `hz` for a vowel with formants `formants`: the
/// product of second-order resonators' magnitudes (1 at 0 Hz).
fn formant_gain(formants: &[f64; 3], hz: f64) -> f64 {
    formants
        .iter()
        .zip(BANDWIDTHS)
        .map(|(&f, b)| f * f / ((f * f - hz * hz).powi(2) + (b * hz).powi(2)).sqrt())
        .product()
}

/// `ms` of synthetic voiced speech at `rate_hz`, made to be heard as speech by a neural
/// voice-activity detector (earshot scores it ≥ 0.5 within a few 16 ms frames, at 8 and
/// 16 kHz, where it scores a 1 kHz tone and white noise below 0.5): a male voice
/// (f0 125 ± 15 Hz by seed, ±2 % jitter, a 3 Hz intonation swing and a falling phrase), its
/// harmonics falling 12 dB per octave as a glottal source does, through three formant
/// resonances that glide from vowel to vowel, syllable by syllable (4 per second), each
/// syllable's loudness rising and falling. Band-limited (harmonics below 0.45 × `rate_hz`
/// only), so it is the same sound at every rate. Voiced from sample 0, the onset a detector's
/// latency is measured from. `seed` picks the vowels, the pitch and the jitter.
pub fn speech_like(rate_hz: u32, ms: u32, seed: u64) -> Vec<i16> {
    let mut rng = SplitMix(seed);
    let rate = f64::from(rate_hz);
    let len = (u64::from(rate_hz) * u64::from(ms) / 1_000) as usize;
    let base_f0 = 125.0 + 15.0 * rng.next();
    let syllable_len = ((SYLLABLE_SECONDS * rate) as usize).max(1);
    let vowels: Vec<usize> = (0..len / syllable_len + 2)
        .map(|_| ((rng.next() + 1.0) * 2.5) as usize % VOWELS.len())
        .collect();
    // The jitter moves every 10 ms, about once a glottal period.
    let jitter_every = (rate_hz as usize / 100).max(1);
    let (mut phase, mut jitter) = (0.0f64, 0.0f64);
    let mut out = Vec::with_capacity(len);
    for n in 0..len {
        let t = n as f64 / rate;
        let syllable = n / syllable_len;
        let within = (n % syllable_len) as f64 / syllable_len as f64;
        // Formants: the syllable's vowel gliding into the next one's.
        let (a, b) = (&VOWELS[vowels[syllable]], &VOWELS[vowels[syllable + 1]]);
        let formants = [0, 1, 2].map(|i| a[i] + (b[i] - a[i]) * within);
        if n % jitter_every == 0 {
            jitter = (jitter * 0.8 + 0.01 * rng.next()).clamp(-0.02, 0.02);
        }
        let f0 = base_f0
            * (1.0 - 0.1 * (t % PHRASE_SECONDS) / PHRASE_SECONDS)
            * (1.0 + INTONATION_DEPTH * (2.0 * PI * INTONATION_HZ * t).sin())
            * (1.0 + jitter);
        phase += 2.0 * PI * f0 / rate;
        let envelope = 1.0 - SYLLABLE_DIP - SYLLABLE_DIP * (2.0 * PI * within).cos();
        let mut v = 0.0;
        let mut h = 1.0;
        while h * f0 < 0.45 * rate {
            v += formant_gain(&formants, h * f0) / (h * h) * (h * phase).sin();
            h += 1.0;
        }
        out.push(v * envelope);
    }
    let peak = out
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(f64::MIN_POSITIVE);
    out.iter()
        .map(|v| (v / peak * SPEECH_PEAK).round() as i16)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speech_like_is_deterministic_loud_and_seed_dependent() {
        let a = speech_like(8_000, 500, 1);
        assert_eq!(a.len(), 4_000);
        assert_eq!(a, speech_like(8_000, 500, 1));
        assert_ne!(a, speech_like(8_000, 500, 2));
        let peak = a.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
        assert_eq!(f64::from(peak), SPEECH_PEAK);
        // Voiced from the first 10 ms on, not faded in.
        let early = a[..80].iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
        assert!(f64::from(early) > SPEECH_PEAK / 10.0, "early peak {early}");
    }
}
