//! The HTTP service (docs/http.md §3): `GET /health`, `POST /call`, `GET /metrics`.
//!
//! A small HTTP/1.1 server of our own on `httparse`, one thread per connection, one request
//! per connection (`Connection: close`). Why not a crate's server loop: the point of this
//! service is that no client can disturb the calls, and that takes control of accepting.
//! oxhttp 0.3 (the original design's choice; docs/http.md §5) blocks its accept loop once
//! its connection cap is reached, so 128 idle sockets stall `/call` until its per-read timeout frees them (and a
//! client sending a byte every few seconds holds a place for hours); it drains a refused body
//! after the handler, turning a 413 into a 500 after the timeout; and it cannot report the
//! port it bound, which `HTTP_PORT=0` needs.
//!
//! Limits ([`Limits`]):
//! - at most `max_connections` open connections. When full, a new connection closes the
//!   oldest one that has not finished sending its request (an idle or slow client); only if
//!   every connection is being answered is the new one refused with 503. So idle sockets can
//!   never lock out a real request, and the file descriptors taken from the AudioSocket side
//!   stay bounded.
//! - the whole request (head and body) must arrive within `request_timeout` of the accept,
//!   however slowly it trickles in; the response must be written within `write_timeout`.
//! - request head at most `max_head` bytes (431), body at most `max_body` bytes (413),
//!   refused from `Content-Length` before reading and counted while reading chunked bodies.
//!
//! `HTTP_TOKEN` guards `POST /call` only: `/health` and `/metrics` stay open so load
//! balancers and Prometheus need no secret, and they reveal no call data.
//!
//! The rooms: `service` answers a whole request (the routes); [`parse`] turns bytes into
//! requests with no socket; [`read`] waits for those bytes within the deadline; `server`
//! accepts, serves and answers; `conns` is the connection table.

mod conns;
pub mod parse;
pub mod read;
mod server;
mod service;

pub use server::{serve, spawn, status_line, Limits};
pub use service::{CallInitiated, Response, Service};
