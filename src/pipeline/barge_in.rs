//! TEMP STUB
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadParams { pub positive: f32, pub negative: f32, pub min_speech_frames: u32, pub redemption_frames: u32 }
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Voice { Started, Ended }
pub struct VoiceDetector;
impl VoiceDetector { pub fn new(_r: u32, _p: VadParams) -> VoiceDetector { VoiceDetector } pub fn push(&mut self, _pcm: &[u8]) -> Option<Voice> { None } }
