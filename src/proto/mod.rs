//! The wire formats, with no sockets: bytes and text in, values out, and back. Everything
//! here is tested in place; the I/O loops that carry these formats live elsewhere.

pub mod audiosocket;
pub mod event;
pub mod g711;
pub mod service_url;
pub mod sts;
pub mod sts_url;
pub mod url_secrets;
