//! What the caller's `0x10` audio really is: the codec `AUDIO_CODEC` forces, or the one
//! detected from the first frames (`AUDIO_CODEC=auto`, see [`Detector`]).

use crate::config::CodecChoice;
use crate::proto::g711::{Codec, Detector};

/// The caller's codec as far as the call knows it: forced, decided, or still being detected
/// (each frame is then decoded with the detector's best guess so far).
pub struct CallerCodec {
    decided: Option<Codec>,
    /// Still deciding (`AUDIO_CODEC=auto`).
    detector: Option<Detector>,
}

impl CallerCodec {
    /// Starts from `AUDIO_CODEC`; a forced codec is logged.
    pub fn new(uuid: &str, choice: CodecChoice) -> CallerCodec {
        let forced = match choice {
            CodecChoice::Auto => {
                return CallerCodec {
                    decided: None,
                    detector: Some(Detector::new()),
                }
            }
            CodecChoice::Ulaw => Codec::Ulaw,
            CodecChoice::Alaw => Codec::Alaw,
            CodecChoice::Slin => Codec::Slin,
        };
        log::info!(
            "[{uuid}] Audio codec forced by AUDIO_CODEC: {}",
            forced.name()
        );
        CallerCodec {
            decided: Some(forced),
            detector: None,
        }
    }

    /// The codec to decode this 8 kHz payload with: the detector's guess until it has
    /// decided (the decision is logged once).
    pub fn of(&mut self, uuid: &str, payload: &[u8]) -> Codec {
        match (&mut self.detector, self.decided) {
            (Some(det), _) => {
                let guess = det.observe(payload);
                if let Some(decided) = det.decided() {
                    log::info!("[{uuid}] Audio codec detected: {}", decided.name());
                    self.decided = Some(decided);
                    self.detector = None;
                }
                guess
            }
            (None, Some(c)) => c,
            (None, None) => Codec::Slin,
        }
    }

    /// The codec once forced or decided; `None` while detecting (or if no audio came).
    pub fn decided(&self) -> Option<Codec> {
        self.decided
    }
}
