//! The first thing Asterisk sends: the call's UUID (docs/audiosocket.md §10).

use std::fmt;
use std::io::{self, ErrorKind};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rustix::net::RecvFlags;

use crate::proto::audiosocket::{self, Frame, FrameBuffer};

/// How long a new connection may take to send its whole UUID, however it dribbles it in
/// (docs/audiosocket.md §10.1). Asterisk sends the UUID in its first write, right after
/// connecting: it arrives within a round trip. 2 s leaves a slow WAN and a busy host ample
/// room, and is short enough that a connection that never sends one holds its place among
/// `MAX_PENDING_CONNECTIONS` only briefly.
pub const UUID_TIMEOUT: Duration = Duration::from_secs(2);

/// Bytes of the UUID frame: header (kind, u16 length) and 16 bytes.
const UUID_FRAME_LEN: usize = 3 + 16;

/// Why a connection gave no UUID; logged as the reason it was closed.
#[derive(Debug)]
pub enum NoUuid {
    /// Its first frame is of another kind.
    OtherKindFirst(u8),
    /// Its first frame is a UUID frame of the wrong length.
    MalformedUuid(usize),
    /// [`UUID_TIMEOUT`] passed with this many bytes received.
    TooSlow(usize),
    /// It closed without sending a byte.
    ClosedSilently,
    /// It closed after this many bytes, before a whole UUID frame.
    ClosedAfter(usize),
    /// It was closed to make room for a newer connection (`MAX_PENDING_CONNECTIONS`).
    ClosedForRoom,
    /// The read timeout could not be set on the socket.
    NoReadTimeout(io::Error),
    /// Reading failed.
    ReadFailed(io::Error),
}

impl fmt::Display for NoUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoUuid::OtherKindFirst(kind) => write!(
                f,
                "it sent a kind 0x{kind:02x} ({}) frame before its UUID; Asterisk always \
                 sends the UUID first",
                audiosocket::kind_name(*kind)
            ),
            NoUuid::MalformedUuid(len) => {
                write!(f, "its first frame is a malformed UUID ({len} bytes)")
            }
            NoUuid::TooSlow(received) => write!(
                f,
                "no UUID within {} s ({received} bytes received)",
                UUID_TIMEOUT.as_secs()
            ),
            NoUuid::ClosedSilently => f.write_str(
                "no UUID: the peer connected and closed without sending anything (Asterisk \
                 does this when the channel is not answered)",
            ),
            NoUuid::ClosedAfter(bytes) => {
                write!(f, "no UUID: the peer closed after {bytes} bytes")
            }
            NoUuid::ClosedForRoom => f.write_str(
                "no UUID yet: closed to make room for a newer connection \
                 (MAX_PENDING_CONNECTIONS connections were waiting for theirs)",
            ),
            NoUuid::NoReadTimeout(e) => write!(f, "cannot set a read timeout: {e}"),
            NoUuid::ReadFailed(e) => write!(f, "read failed before the UUID: {e}"),
        }
    }
}

impl std::error::Error for NoUuid {}

impl NoUuid {
    /// Not worth a warning: a monitoring probe that connects and closes, an unanswered
    /// channel, a connection closed for a newer one (whose closing is logged, throttled).
    /// These are counted (`avr_connections_without_uuid_total`) and logged at DEBUG only.
    pub fn is_quiet(&self) -> bool {
        matches!(self, NoUuid::ClosedSilently | NoUuid::ClosedForRoom)
    }
}

/// Whether a whole UUID frame already waits, unread, on `stream`: a connection about to
/// become a call, which is not closed to make room for a newer one.
pub fn uuid_waiting(stream: &TcpStream) -> bool {
    let mut buf = [0u8; UUID_FRAME_LEN];
    let flags = RecvFlags::PEEK | RecvFlags::DONTWAIT;
    matches!(rustix::net::recv(stream, &mut buf[..], flags), Ok((got, _)) if got == UUID_FRAME_LEN)
}

/// Waits for the `0x01` UUID frame, which Asterisk always sends first. Anything else is
/// refused as soon as its header shows it, without waiting for its payload.
pub fn read_uuid(stream: &TcpStream, frames: &mut FrameBuffer) -> Result<[u8; 16], NoUuid> {
    let deadline = Instant::now() + UUID_TIMEOUT;
    loop {
        if let Some(uuid) = first_frame(frames)? {
            return Ok(uuid);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(NoUuid::TooSlow(frames.buffered()));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(NoUuid::NoReadTimeout)?;
        let mut reader = stream;
        match frames.read_from(&mut reader) {
            Ok(0) if frames.buffered() == 0 => return Err(NoUuid::ClosedSilently),
            Ok(0) => return Err(NoUuid::ClosedAfter(frames.buffered())),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(NoUuid::TooSlow(frames.buffered()))
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(NoUuid::ReadFailed(e)),
        }
    }
}

/// What the bytes received so far say: the UUID, not yet (`None`), or not a call.
fn first_frame(frames: &mut FrameBuffer) -> Result<Option<[u8; 16]>, NoUuid> {
    match frames.peek_header() {
        Some((kind, _)) if kind != audiosocket::KIND_UUID => Err(NoUuid::OtherKindFirst(kind)),
        Some((_, len)) if len != 16 => Err(NoUuid::MalformedUuid(len)),
        _ => match frames.next_frame() {
            Ok(Some(Frame::Uuid(bytes))) => Ok(Some(bytes)),
            _ => Ok(None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(bytes: &[u8]) -> FrameBuffer {
        let mut frames = FrameBuffer::new(audiosocket::MAX_PAYLOAD);
        frames.feed(bytes);
        frames
    }

    #[test]
    fn the_uuid_is_taken_once_whole() {
        let mut frame = vec![0x01, 0x00, 0x10];
        frame.extend(1..=16u8);
        let mut frames = buffer(&frame[..10]);
        assert!(matches!(first_frame(&mut frames), Ok(None)));
        frames.feed(&frame[10..]);
        let uuid = first_frame(&mut frames).unwrap().unwrap();
        assert_eq!(uuid.to_vec(), (1..=16u8).collect::<Vec<_>>());
    }

    #[test]
    fn another_frame_first_is_refused_from_its_header() {
        let mut frames = buffer(&[0x10, 0x01, 0x40]);
        let e = first_frame(&mut frames).unwrap_err();
        assert!(matches!(e, NoUuid::OtherKindFirst(0x10)));
        assert!(e.to_string().starts_with("it sent a kind 0x10 ("), "{e}");
        assert!(e
            .to_string()
            .ends_with(" frame before its UUID; Asterisk always sends the UUID first"));

        let e = first_frame(&mut buffer(&[0x01, 0x00, 0x05])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "its first frame is a malformed UUID (5 bytes)"
        );
    }

    #[test]
    fn the_reasons_read_as_before() {
        assert_eq!(
            NoUuid::TooSlow(2).to_string(),
            "no UUID within 2 s (2 bytes received)"
        );
        assert_eq!(
            NoUuid::ClosedSilently.to_string(),
            "no UUID: the peer connected and closed without sending anything (Asterisk does \
             this when the channel is not answered)"
        );
        assert_eq!(
            NoUuid::ClosedAfter(7).to_string(),
            "no UUID: the peer closed after 7 bytes"
        );
    }

    #[test]
    fn a_whole_uuid_waiting_is_seen_without_being_taken() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        assert!(!uuid_waiting(&ours), "nothing sent");
        let mut frame = vec![0x01, 0x00, 0x10];
        frame.extend([7u8; 16]);
        peer.write_all(&frame[..18]).unwrap();
        peer.flush().unwrap();
        // A blocking peek returns what has arrived: wait until all 18 bytes have.
        let mut probe = [0u8; 18];
        while ours.peek(&mut probe).unwrap() < 18 {}
        assert!(!uuid_waiting(&ours), "one byte short");
        peer.write_all(&frame[18..]).unwrap();
        let mut all = [0u8; UUID_FRAME_LEN];
        while ours.peek(&mut all).unwrap() < UUID_FRAME_LEN {}
        assert!(uuid_waiting(&ours));
        let mut got = [0u8; UUID_FRAME_LEN];
        (&ours).read_exact(&mut got).unwrap();
        assert_eq!(got.to_vec(), frame, "peeked, not taken");
        assert!(NoUuid::ClosedSilently.is_quiet() && NoUuid::ClosedForRoom.is_quiet());
        assert!(!NoUuid::TooSlow(0).is_quiet());
    }
}
