//! One call, from the AudioSocket listener to its end.
//!
//! ```text
//! Asterisk ──TCP──> [call thread] ─────────────WebSocket──> agent
//! Asterisk <──TCP── [clock] <─Playout── [call thread] <──WebSocket── agent
//! ```
//! - [`listener`]: accepts connections, enforces `MAX_CALLS` ([`CallSlot`]), starts calls;
//! - [`handshake`]: the UUID Asterisk sends first;
//! - [`bridge`]: the call's thread, the I/O: sockets, setup and teardown;
//! - [`connector`]: the short-lived thread that reaches the agent;
//! - [`state`]: the call's decisions ([`CallState`]), pure: events in, actions out;
//! - [`caller_codec`]: what the caller's audio is (forced or detected);
//! - [`rates`]: the caller's rate, the agent's, and the conversions between them;
//! - [`summary`]: the end-of-call line ([`CallSummary`]);
//! - [`end_reason`]: why a call ended ([`EndReason`], the first reason wins);
//! - [`live_calls`]: the calls in progress, for a shutdown to hang up ([`LiveCalls`]).
//!
//! The playout clocks (shared by many calls) are in [`crate::playout`]; the agent's
//! connection in [`crate::agent`].

pub mod bridge;
pub mod call_slot;
pub mod caller_codec;
pub mod connector;
pub mod end_reason;
pub mod handshake;
pub mod listener;
pub mod live_calls;
pub mod rates;
pub mod state;
pub mod summary;

use std::sync::Arc;

pub use bridge::run;
pub use call_slot::CallSlot;
pub use end_reason::EndReason;
pub use live_calls::LiveCalls;
pub use state::CallState;
pub use summary::CallSummary;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::playout::{Ambient, Clocks};
use crate::registry::Registry;
use crate::webhook::Webhooks;

/// Stack of each per-call thread. Touched pages only count towards RSS.
pub const THREAD_STACK: usize = 256 * 1024;

/// What every call shares: built once by `main`.
pub struct CallContext {
    pub config: Arc<Config>,
    pub tls: Arc<rustls::ClientConfig>,
    pub ambient: Option<Ambient>,
    pub events: Webhooks,
    pub metrics: Arc<Metrics>,
    pub live: LiveCalls,
    /// `/call` metadata waiting for its call.
    pub registry: Arc<Registry>,
    /// The playout clocks every call's audio to Asterisk is written by.
    pub clocks: Clocks,
}
