//! The agent side of a call in pipeline mode: the caller's audio goes to a speech-to-text
//! service, each transcript to a language model, each sentence of its answer to a
//! text-to-speech service, whose audio is played to the caller (docs/pipeline.md).
//!
//! ```text
//! caller audio ─> [call thread] ─chunked POST─> ASR ─transcripts─> [asr thread]
//!                       │ history                                      │
//!                       └─> [llm thread] ─sentences─> [tts thread] ─audio─> playout
//! ```
//! - [`session`]: the call's thread side ([`session::Pipeline`]): turns, history, greeting,
//!   barge-in, the speech-to-text reconnect rule; never blocks;
//! - [`asr`]: the call-long speech-to-text stream, its audio written by [`upload`]; [`turn`]:
//!   one answer of the agent, spoken
//!   sentence by sentence; [`shared`]: what their helper threads share and report;
//! - [`client`]: the HTTP/1.1 client they use (full duplex, budgets, cancel);
//!   [`chunked`]: its transfer coding;
//! - [`llm_stream`]: the model's streamed answer; [`speech_text`]: its running text as clean
//!   sentences to speak; [`barge_in`]: the voice-activity detector.

pub mod asr;
pub mod barge_in;
pub mod chunked;
pub mod client;
pub mod llm_stream;
pub mod session;
pub mod shared;
pub mod speech_text;
pub mod turn;
pub mod upload;
