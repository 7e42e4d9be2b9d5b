//! The agent side of a call in pipeline mode: the caller's audio goes to a speech-to-text
//! service, each transcript to a language model, each sentence of its answer to a
//! text-to-speech service, whose audio is played to the caller (docs/pipeline.md).
//!
//! - [`speech_text`]: the model's running text → clean sentences to speak;
//! - [`llm_stream`]: the model's streamed answer (undelimited JSON objects or plain text);
//! - [`barge_in`]: the voice-activity detector that lets the caller interrupt.

pub mod asr;
pub mod barge_in;
pub mod chunked;
pub mod client;
pub mod llm_stream;
pub mod session;
pub mod shared;
pub mod speech_text;
pub mod turn;
