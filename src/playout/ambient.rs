//! Ambient noise: one recording shared by every call, mixed under what each call plays,
//! each call looping through it from its own offset.

use std::path::Path;
use std::sync::Arc;

use crate::proto::audiosocket::SLIN_FRAME_BYTES;

/// Ambient noise, loaded once at startup, pre-scaled by its level and shared by all calls.
#[derive(Clone)]
pub struct Ambient {
    samples: Arc<[i16]>,
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
        }
    }

    /// A cursor starting at a random offset, so simultaneous calls do not sound alike.
    pub fn cursor(&self) -> AmbientCursor {
        let random = uuid::Uuid::new_v4().as_u128() as usize;
        AmbientCursor {
            ambient: self.clone(),
            pos: random % self.samples.len(),
        }
    }
}

/// One call's position in the looped ambient noise.
pub struct AmbientCursor {
    ambient: Ambient,
    pos: usize,
}

impl AmbientCursor {
    /// Mixes the next 20 ms of noise under `frame` (s16le), saturating.
    pub fn mix_into(&mut self, frame: &mut [u8; SLIN_FRAME_BYTES]) {
        let noise = &self.ambient.samples;
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
            ambient: amb,
            pos: 0,
        };
        let mut frame = [0u8; SLIN_FRAME_BYTES];
        frame[..2].copy_from_slice(&32_000i16.to_le_bytes());
        frame[2..4].copy_from_slice(&100i16.to_le_bytes());
        cur.mix_into(&mut frame);
        assert_eq!(i16::from_le_bytes([frame[0], frame[1]]), 32_500);
        assert_eq!(i16::from_le_bytes([frame[2], frame[3]]), -400);
        let mut loud = [0u8; SLIN_FRAME_BYTES];
        loud[..2].copy_from_slice(&32_700i16.to_le_bytes());
        cur.mix_into(&mut loud);
        assert_eq!(i16::from_le_bytes([loud[0], loud[1]]), i16::MAX);
    }
}
