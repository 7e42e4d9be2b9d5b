//! The first thing Asterisk sends: the call's UUID (SPEC §3).

use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::proto::audiosocket::{self, Frame, FrameBuffer};

/// How long a new connection may take to send its UUID (SPEC §3).
pub const UUID_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits for the `0x01` UUID frame, which Asterisk always sends first. Anything else is
/// refused as soon as its header shows it, without waiting for its payload.
pub fn read_uuid(stream: &TcpStream, frames: &mut FrameBuffer) -> Result<[u8; 16], String> {
    let deadline = Instant::now() + UUID_TIMEOUT;
    loop {
        match frames.peek_header() {
            Some((kind, _)) if kind != audiosocket::KIND_UUID => {
                return Err(format!(
                    "it sent a kind 0x{kind:02x} ({}) frame before its UUID; Asterisk always \
                     sends the UUID first",
                    audiosocket::kind_name(kind)
                ))
            }
            Some((_, len)) if len != 16 => {
                return Err(format!("its first frame is a malformed UUID ({len} bytes)"))
            }
            _ => {}
        }
        if let Ok(Some(Frame::Uuid(bytes))) = frames.next_frame() {
            return Ok(bytes);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(no_uuid(frames));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| format!("cannot set a read timeout: {e}"))?;
        let mut reader = stream;
        match frames.read_from(&mut reader) {
            Ok(0) => {
                return Err(if frames.buffered() == 0 {
                    "no UUID: the peer connected and closed without sending anything \
                     (Asterisk does this when the channel is not answered)"
                        .into()
                } else {
                    format!("no UUID: the peer closed after {} bytes", frames.buffered())
                })
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(no_uuid(frames))
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read failed before the UUID: {e}")),
        }
    }
}

fn no_uuid(frames: &FrameBuffer) -> String {
    format!(
        "no UUID within {} s ({} bytes received)",
        UUID_TIMEOUT.as_secs(),
        frames.buffered()
    )
}
