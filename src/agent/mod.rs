//! The agent side of a call: the connection that takes the caller's audio and gives back
//! the agent's voice. Today the STS WebSocket.

pub mod sts;
