//! TEMP STUB
#[derive(Debug, Clone, PartialEq)]
pub enum LlmPiece { Text(String), Audio(Vec<u8>), Error(String), Other { kind: String } }
#[derive(Debug)]
pub struct LlmStreamError;
impl std::fmt::Display for LlmStreamError { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("x") } }
#[derive(Default)]
pub struct LlmStream;
impl LlmStream { pub fn new() -> LlmStream { LlmStream } pub fn push(&mut self, b: &[u8], out: &mut Vec<LlmPiece>) -> Result<(), LlmStreamError> { out.push(LlmPiece::Text(String::from_utf8_lossy(b).into())); Ok(()) } pub fn finish(&mut self, _out: &mut Vec<LlmPiece>) -> Result<(), LlmStreamError> { Ok(()) } }
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Message { pub role: Role, pub content: String }
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role { System, User, Assistant }
pub fn request_body(uuid: &str, history: &[Message]) -> Vec<u8> { serde_json::to_vec(&serde_json::json!({"uuid": uuid, "messages": history})).unwrap() }
