//! Ambient noise: one recording shared by every call, mixed under what each call plays,
//! each call looping through it from its own offset.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::audio::resample_all;
use crate::sys::lock;

/// The rate of `AMBIENT_NOISE_FILE`.
pub const AMBIENT_RATE: u32 = crate::proto::audiosocket::SLIN_HZ;

/// Ambient noise, loaded once at startup, pre-scaled by its level and shared by all calls.
/// Callers at other rates get it converted once per rate, on the first call at that rate,
/// and shared from then on: never per frame, and never on a clock thread.
#[derive(Clone)]
pub struct Ambient {
    samples: Arc<[i16]>,
    /// The recording at each other rate in use.
    converted: Arc<Mutex<HashMap<u32, Arc<[i16]>>>>,
}

impl Ambient {
    /// Loads raw 8 kHz s16le mono PCM and applies `level` (0.0–1.0).
    pub fn load(path: &Path, level: f32) -> Result<Ambient, String> {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("cannot read AMBIENT_NOISE_FILE {}: {e}", path.display()))?;
        if bytes.len() < 2 {
            return Err(format!(
                "AMBIENT_NOISE_FILE {} holds no audio (expected raw 8 kHz 16-bit LE mono PCM)",
                path.display()
            ));
        }
        Ok(Ambient::from_samples(
            bytes
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect(),
            level,
        ))
    }

    pub fn from_samples(samples: Vec<i16>, level: f32) -> Ambient {
        let scaled: Vec<i16> = samples
            .iter()
            .map(|&s| (f32::from(s) * level).round() as i16)
            .collect();
        Ambient {
            samples: scaled.into(),
            converted: Arc::default(),
        }
    }

    /// A cursor for an 8 kHz call.
    pub fn cursor(&self) -> AmbientCursor {
        AmbientCursor::new(self.samples.clone())
    }

    /// A cursor for a call at `rate_hz`; the first call at a rate converts the recording
    /// (this call's thread waits for it once; the others at that rate share the result).
    pub fn cursor_at(&self, rate_hz: u32) -> AmbientCursor {
        if rate_hz == AMBIENT_RATE {
            return self.cursor();
        }
        let samples = lock(&self.converted)
            .entry(rate_hz)
            .or_insert_with(|| resample_all(AMBIENT_RATE, rate_hz, &self.samples).into())
            .clone();
        AmbientCursor::new(samples)
    }
}

/// One call's position in the looped ambient noise.
pub struct AmbientCursor {
    samples: Arc<[i16]>,
    pos: usize,
}

impl AmbientCursor {
    /// Starts at a random offset, so simultaneous calls do not sound alike.
    fn new(samples: Arc<[i16]>) -> AmbientCursor {
        let random = uuid::Uuid::new_v4().as_u128() as usize;
        let pos = random % samples.len().max(1);
        AmbientCursor { samples, pos }
    }

    /// Mixes the next frame's worth of noise under `frame` (s16le), saturating.
    pub fn mix_into(&mut self, frame: &mut [u8]) {
        let noise = &self.samples;
        if noise.is_empty() {
            return;
        }
        for pair in frame.chunks_exact_mut(2) {
            let s = i16::from_le_bytes([pair[0], pair[1]]).saturating_add(noise[self.pos]);
            pair.copy_from_slice(&s.to_le_bytes());
            self.pos += 1;
            if self.pos == noise.len() {
                self.pos = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ambient_mixes_under_speech_with_saturation() {
        let amb = Ambient::from_samples(vec![1000, -1000], 0.5);
        let mut cur = AmbientCursor {
            samples: amb.samples.clone(),
            pos: 0,
        };
        let mut frame = [0u8; 320];
        frame[..2].copy_from_slice(&32_000i16.to_le_bytes());
        frame[2..4].copy_from_slice(&100i16.to_le_bytes());
        cur.mix_into(&mut frame);
        assert_eq!(i16::from_le_bytes([frame[0], frame[1]]), 32_500);
        assert_eq!(i16::from_le_bytes([frame[2], frame[3]]), -400);
        let mut loud = [0u8; 320];
        loud[..2].copy_from_slice(&32_700i16.to_le_bytes());
        cur.mix_into(&mut loud);
        assert_eq!(i16::from_le_bytes([loud[0], loud[1]]), i16::MAX);
    }

    #[test]
    fn each_rate_is_converted_once_and_shared() {
        let amb = Ambient::from_samples(vec![100; 8_000], 1.0);
        let a = amb.cursor_at(16_000);
        let b = amb.clone().cursor_at(16_000);
        assert!(
            Arc::ptr_eq(&a.samples, &b.samples),
            "converted once, shared"
        );
        assert!(
            a.samples.len().abs_diff(16_000) <= 64,
            "{}",
            a.samples.len()
        );
        assert!(Arc::ptr_eq(&amb.cursor_at(8_000).samples, &amb.samples));
        assert_eq!(lock(&amb.converted).len(), 1);
    }
}
