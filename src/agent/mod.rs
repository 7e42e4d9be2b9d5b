//! The agent side of a call: the connection that takes the caller's audio and gives back
//! the agent's voice. Today the STS WebSocket (its messages are in `proto::sts`).
//! - [`connect`](mod@connect): reaching the agent (TLS, the WebSocket handshake, [`StsError`]);
//! - [`link`]: the open connection, driven without blocking by the call's thread;
//! - [`backlog`]: what the caller says while the agent is still connecting.

pub mod backlog;
pub mod connect;
pub mod link;

pub use backlog::{Backlog, Pushed, BACKLOG_AUDIO_CAP};
pub use connect::{connect, tls_config, AgentSocket, ConnectStep, StsError, Ws};
pub use link::{Link, LinkEnd, LinkStats, Sent};
