//! Caller audio from files, and the received audio as a file: WAV (PCM 16-bit mono at the
//! call's rate) and raw s16le (at 8 kHz, the format of the server's `AMBIENT_NOISE_FILE`).
//! Nothing is resampled here: a file at another rate than the call's is refused, so what the
//! caller sends is exactly the file.

use std::path::Path;

use super::SimError;
use crate::proto::audiosocket;
use crate::tools::rates::khz;

/// Loads caller audio for a call at `rate_hz`: `.wav` (any case) must be PCM 16-bit mono at
/// that rate; anything else is taken as raw s16le mono at that rate.
pub fn load_audio(path: &Path, rate_hz: u32) -> Result<Vec<i16>, SimError> {
    let is_wav = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("wav"));
    if is_wav {
        load_wav(path, rate_hz)
    } else {
        load_raw(path, rate_hz)
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, SimError> {
    std::fs::read(path).map_err(|e| SimError::Audio {
        path: path.into(),
        reason: format!("cannot read it: {e}"),
    })
}

/// A WAV file's samples; see [`parse_wav`] for what it accepts.
pub fn load_wav(path: &Path, rate_hz: u32) -> Result<Vec<i16>, SimError> {
    parse_wav(&read_file(path)?, rate_hz).map_err(|reason| SimError::Audio {
        path: path.into(),
        reason,
    })
}

/// A raw s16le mono file's samples, taken to be at `rate_hz` (a raw file cannot say).
pub fn load_raw(path: &Path, rate_hz: u32) -> Result<Vec<i16>, SimError> {
    let bytes = read_file(path)?;
    if bytes.len() % 2 == 1 {
        return Err(SimError::Audio {
            path: path.into(),
            reason: format!(
                "has an odd length ({} bytes); raw audio must be {} kHz 16-bit little-endian mono",
                bytes.len(),
                khz(rate_hz)
            ),
        });
    }
    Ok(samples_le(&bytes))
}

fn samples_le(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// Samples of a RIFF/WAVE PCM 16-bit mono file at `rate_hz`. The error says what the file is
/// and what is needed, so the user knows how to convert it (or which `--rate` it fits).
pub fn parse_wav(bytes: &[u8], rate_hz: u32) -> Result<Vec<i16>, String> {
    let need = format!(
        "the simulator needs PCM 16-bit mono {rate_hz} Hz, the call's --rate \
         (convert with e.g. `sox in.wav -r {rate_hz} -c 1 -b 16 -e signed out.wav`)"
    );
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(format!("is not a RIFF/WAVE file; {need}"));
    }
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let mut format = None;
    let mut rest = &bytes[12..];
    while rest.len() >= 8 {
        let id = &rest[..4];
        let size = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let body = &rest[8..];
        // Streamed WAVs may announce more data than the file holds: take what is there.
        let chunk = &body[..size.min(body.len())];
        match id {
            b"fmt " if chunk.len() >= 16 => {
                let mut tag = u16_at(chunk, 0);
                if tag == 0xfffe && chunk.len() >= 26 {
                    tag = u16_at(chunk, 24); // WAVE_FORMAT_EXTENSIBLE: sub-format GUID
                }
                let channels = u16_at(chunk, 2);
                let rate = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
                let bits = u16_at(chunk, 14);
                format = Some((tag, channels, rate, bits));
            }
            b"data" => {
                let Some((tag, channels, rate, bits)) = format else {
                    return Err(format!("has its data before its fmt chunk; {need}"));
                };
                if (tag, channels, rate, bits) != (1, 1, rate_hz, 16) {
                    let encoding = match tag {
                        1 => format!("{bits}-bit PCM"),
                        3 => format!("{bits}-bit float"),
                        6 => "A-law".into(),
                        7 => "µ-law".into(),
                        other => format!("encoding 0x{other:04x}"),
                    };
                    let layout = match channels {
                        1 => "mono".to_string(),
                        2 => "stereo".to_string(),
                        n => format!("{n}-channel"),
                    };
                    // A file fit for another caller rate: say which, before how to convert.
                    let fits = (tag, channels, bits) == (1, 1, 16)
                        && audiosocket::audio_kind(rate).is_some();
                    let hint = if fits {
                        format!("; send it with --rate {rate}, or: {need}")
                    } else {
                        format!("; {need}")
                    };
                    return Err(format!("is a {layout} {rate} Hz {encoding} WAV{hint}"));
                }
                return Ok(samples_le(chunk));
            }
            _ => {}
        }
        // Chunks are padded to an even size.
        let skip = (8 + size + (size & 1)).min(rest.len());
        rest = &rest[skip..];
    }
    Err(format!(
        "has no {} chunk; {need}",
        if format.is_some() { "data" } else { "fmt" }
    ))
}

/// A 44-byte-header WAV (PCM 16-bit mono at `rate_hz`) around s16le bytes, for `--record`.
pub fn wav_bytes(pcm_le: &[u8], rate_hz: u32) -> Vec<u8> {
    let data = &pcm_le[..pcm_le.len() & !1];
    let data_len = u32::try_from(data.len()).unwrap_or(u32::MAX - 36) & !1;
    let data = &data[..data_len as usize];
    let mut out = Vec::with_capacity(44 + data.len());
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate_hz.to_le_bytes());
    out.extend_from_slice(&(2 * rate_hz).to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(channels: u16, rate: u32, bits: u16, samples: &[i16], extra_chunk: bool) -> Vec<u8> {
        let mut data = Vec::new();
        for s in samples {
            data.extend_from_slice(&s.to_le_bytes());
        }
        let mut body = b"WAVE".to_vec();
        body.extend_from_slice(b"fmt ");
        body.extend_from_slice(&16u32.to_le_bytes());
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&channels.to_le_bytes());
        body.extend_from_slice(&rate.to_le_bytes());
        body.extend_from_slice(&(rate * u32::from(channels * bits / 8)).to_le_bytes());
        body.extend_from_slice(&(channels * bits / 8).to_le_bytes());
        body.extend_from_slice(&bits.to_le_bytes());
        if extra_chunk {
            body.extend_from_slice(b"LIST");
            body.extend_from_slice(&3u32.to_le_bytes());
            body.extend_from_slice(&[1, 2, 3, 0]); // odd size + pad byte
        }
        body.extend_from_slice(b"data");
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(&data);
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn wav_parsing() {
        let samples = [0i16, 1, -1, 32767, -32768];
        assert_eq!(
            parse_wav(&wav(1, 8000, 16, &samples, false), 8000).unwrap(),
            samples
        );
        assert_eq!(
            parse_wav(&wav(1, 8000, 16, &samples, true), 8000).unwrap(),
            samples
        );
        assert_eq!(
            parse_wav(&wav_bytes(&[1, 0, 2, 0, 9], 8000), 8000).unwrap(),
            [1, 2]
        );
        let e = parse_wav(&wav(2, 44100, 16, &samples, false), 8000).unwrap_err();
        assert!(
            e.contains("stereo 44100 Hz 16-bit PCM") && e.contains("mono 8000 Hz"),
            "{e}"
        );
        let e = parse_wav(&wav(1, 8000, 8, &samples, false), 8000).unwrap_err();
        assert!(e.contains("8-bit PCM"), "{e}");
        let e = parse_wav(b"ID3\x03 not a wav at all", 8000).unwrap_err();
        assert!(e.contains("not a RIFF/WAVE"), "{e}");
        let mut truncated = wav(1, 8000, 16, &samples, false);
        truncated.truncate(40);
        assert!(parse_wav(&truncated, 8000)
            .unwrap_err()
            .contains("no data chunk"));
    }

    #[test]
    fn load_audio_by_extension() {
        let dir = std::env::temp_dir().join(format!("sim-audio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let w = dir.join("a.WAV");
        std::fs::write(&w, wav(1, 8000, 16, &[5, 6], false)).unwrap();
        assert_eq!(load_audio(&w, 8000).unwrap(), [5, 6]);
        let r = dir.join("a.raw");
        std::fs::write(&r, [5, 0, 6, 0]).unwrap();
        assert_eq!(load_audio(&r, 8000).unwrap(), [5, 6]);
        std::fs::write(&r, [5, 0, 6]).unwrap();
        let e = load_audio(&r, 8000).unwrap_err().to_string();
        assert!(e.contains("a.raw") && e.contains("odd length"), "{e}");
        let e = load_audio(&dir.join("missing.wav"), 8000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.wav: cannot read it"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_wav_must_match_the_call_rate() {
        let samples = [3i16, -4, 5];
        let wide = wav(1, 16_000, 16, &samples, false);
        assert_eq!(parse_wav(&wide, 16_000).unwrap(), samples);
        let e = parse_wav(&wide, 8_000).unwrap_err();
        assert_eq!(
            e,
            "is a mono 16000 Hz 16-bit PCM WAV; send it with --rate 16000, or: the simulator \
             needs PCM 16-bit mono 8000 Hz, the call's --rate (convert with e.g. \
             `sox in.wav -r 8000 -c 1 -b 16 -e signed out.wav`)"
        );
        // 22.05 kHz has no AudioSocket kind: only converting helps.
        let e = parse_wav(&wav(1, 22_050, 16, &samples, false), 16_000).unwrap_err();
        assert!(
            e.starts_with(
                "is a mono 22050 Hz 16-bit PCM WAV; the simulator needs PCM 16-bit mono 16000 Hz"
            ) && e.contains("sox in.wav -r 16000"),
            "{e}"
        );
        // What --record writes at a rate reads back at that rate.
        let pcm: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let recorded = wav_bytes(&pcm, 48_000);
        assert_eq!(&recorded[24..32], &[0x80, 0xbb, 0, 0, 0, 0x77, 0x01, 0]);
        assert_eq!(parse_wav(&recorded, 48_000).unwrap(), samples);
        assert!(parse_wav(&recorded, 8_000)
            .unwrap_err()
            .contains("--rate 48000"));
    }
}
