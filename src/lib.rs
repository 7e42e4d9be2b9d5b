//! avr-core: bridges Asterisk AudioSocket calls to speech-to-speech agents over WebSocket.
//!
//! `main.rs` wires these together; `tests/` and `benches/` drive the same code.

pub mod audiosocket;
pub mod call;
pub mod clock;
pub mod config;
pub mod demo;
pub mod echo_sts;
pub mod g711;
pub mod http;
pub mod metrics;
pub mod playout;
pub mod registry;
pub mod server;
pub mod simulate;
pub mod sts;
pub mod sts_url;
pub mod time;
pub mod webhook;
