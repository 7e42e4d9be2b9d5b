//! What the caller's `0x10` audio really is: the codec `AUDIO_CODEC` forces, or the one
//! detected from the first frames (`AUDIO_CODEC=auto`, see [`Detector`]).

use crate::config::CodecChoice;
use crate::proto::g711::{Codec, Detector};

/// The caller's codec as far as the call knows it: still being detected (each frame is then
/// decoded with the detector's best guess so far), or known (forced or decided).
pub enum CallerCodec {
    /// `AUDIO_CODEC=auto` and the detector has not decided yet.
    Detecting(Detector),
    Known(Codec),
}

impl CallerCodec {
    /// Starts from `AUDIO_CODEC`; a forced codec is logged.
    pub fn new(uuid: &str, choice: CodecChoice) -> CallerCodec {
        let forced = match choice {
            CodecChoice::Auto => return CallerCodec::Detecting(Detector::new()),
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

    /// The codec to decode this 8 kHz payload with: the detector's guess until it has
    /// decided (the decision is logged once).
    pub fn of(&mut self, uuid: &str, payload: &[u8]) -> Codec {
        let (guess, decided) = match self {
            CallerCodec::Known(codec) => return *codec,
            CallerCodec::Detecting(det) => (det.observe(payload), det.decided()),
        };
        if let Some(decided) = decided {
            log::info!("[{uuid}] Audio codec detected: {}", decided.name());
            *self = CallerCodec::Known(decided);
        }
        guess
    }

    /// TEMPORARY until the hold lands: the 8 kHz s16le PCM of `payload`, appended to `out`.
    pub fn decode(&mut self, uuid: &str, payload: &[u8], out: &mut Vec<Vec<u8>>) {
        let codec = self.of(uuid, payload);
        let payload = match codec {
            Codec::Slin => &payload[..payload.len() & !1],
            _ => payload,
        };
        let mut pcm = Vec::with_capacity(payload.len() * 2);
        crate::proto::g711::decode_into(codec, payload, &mut pcm);
        out.push(pcm);
    }

    /// The codec once forced or decided; `None` while detecting (or if no audio came).
    pub fn decided(&self) -> Option<Codec> {
        match self {
            CallerCodec::Known(codec) => Some(*codec),
            CallerCodec::Detecting(_) => None,
        }
    }
}
