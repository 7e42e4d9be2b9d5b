//! avr-core: bridges Asterisk AudioSocket calls to speech-to-speech agents over WebSocket.
//!
//! The folders follow the data paths (docs/ARCHITECTURE.md):
//! - [`proto`]: the wire formats, no sockets (AudioSocket frames, G.711, STS messages);
//! - [`call`]: one call, from the AudioSocket listener to its end;
//! - [`agent`]: the agent side of a call (the STS WebSocket);
//! - [`playout`]: the agent's audio on its way to the caller, and the 20 ms clocks;
//! - [`http`]: `/health`, `/call`, `/metrics`; [`registry`]: `/call` metadata waiting for
//!   its call; [`webhook`]: the events;
//! - [`config`], [`metrics`], [`sys`], [`time`]: what every path shares; [`cli`]: the
//!   command-line reader of every subcommand;
//! - [`tools`]: what ships beside the product (simulator, echo agent, demo).
//!
//! `main.rs` wires these together; `tests/` and `benches/` drive the same code.

pub mod agent;
pub mod call;
pub mod cli;
pub mod config;
pub mod http;
pub mod metrics;
pub mod playout;
pub mod proto;
pub mod registry;
pub mod sys;
pub mod time;
pub mod tools;
pub mod webhook;
