//! Sample-rate conversion of s16le mono PCM, streamed.
//!
//! PLACEHOLDER: linear interpolation, to be replaced by a band-limited resampler. The API
//! below is the contract the rest of the code uses.

use std::time::Duration;

/// Converts one stream of s16le mono PCM from one rate to another, chunk by chunk, with no
/// drift: over a stream, output samples = input samples × to / from (±1).
pub struct Resampler {
    from_hz: u32,
    to_hz: u32,
    /// Input position of the next output sample, in input samples × to_hz.
    pos: u64,
    last: i16,
    /// A byte of an odd-length chunk, waiting for its partner.
    odd: Option<u8>,
}

impl Resampler {
    /// A converter from `from_hz` to `to_hz` (both 8,000–192,000; different).
    pub fn new(from_hz: u32, to_hz: u32) -> Resampler {
        assert_ne!(
            from_hz, to_hz,
            "equal rates pass through without a resampler"
        );
        Resampler {
            from_hz,
            to_hz,
            pos: 0,
            last: 0,
            odd: None,
        }
    }

    /// Converts `input` (s16le bytes, any length: an odd byte waits for the next chunk) and
    /// appends the result to `out` as s16le bytes.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut bytes = Vec::with_capacity(input.len() + 1);
        bytes.extend(self.odd.take());
        bytes.extend_from_slice(input);
        if bytes.len() % 2 == 1 {
            self.odd = bytes.pop();
        }
        let samples: Vec<i16> = bytes
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect();
        let (from, to) = (u64::from(self.from_hz), u64::from(self.to_hz));
        let n = samples.len() as u64;
        while self.pos < n * to {
            let i = (self.pos / to) as usize;
            let frac = (self.pos % to) as f64 / to as f64;
            let prev = if i == 0 {
                f64::from(self.last)
            } else {
                f64::from(samples[i - 1])
            };
            let v = prev + (f64::from(samples[i]) - prev) * frac;
            out.extend_from_slice(&(v.round() as i16).to_le_bytes());
            self.pos += from;
        }
        self.pos -= n * to;
        if let Some(&s) = samples.last() {
            self.last = s;
        }
    }

    /// Emits what the converter still holds (the filter's look-ahead, completed with
    /// silence), so the end of a talk spurt is not held back until the next one.
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        let _ = out;
        self.odd = None;
    }

    /// Forgets everything held (barge-in: the rest of the spurt will not be played).
    pub fn reset(&mut self) {
        self.pos = 0;
        self.last = 0;
        self.odd = None;
    }

    /// How late the output is behind the input.
    pub fn delay(&self) -> Duration {
        Duration::ZERO
    }
}

/// Converts a whole signal at once (ambient noise, once per rate in use).
pub fn resample_all(from_hz: u32, to_hz: u32, input: &[i16]) -> Vec<i16> {
    if from_hz == to_hz {
        return input.to_vec();
    }
    let bytes: Vec<u8> = input.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut r = Resampler::new(from_hz, to_hz);
    let mut out = Vec::new();
    r.push(&bytes, &mut out);
    r.flush(&mut out);
    out.chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}
