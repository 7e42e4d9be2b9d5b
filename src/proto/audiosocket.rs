//! AudioSocket frame codec: bytes ⇄ frames, no I/O policy.
//!
//! Wire format (docs/audiosocket.md §2): `kind u8 | length u16 big-endian | payload[length]`.
//! Decoding is incremental because TCP delivers arbitrary fragments: [`FrameBuffer`] accumulates
//! whatever the socket returns and hands out whole frames, borrowing payloads instead of copying.

use std::fmt;
use std::io;

/// Bytes in a frame header: kind (1) + big-endian payload length (2).
pub const HEADER_LEN: usize = 3;
/// Largest payload the u16 length can announce (docs/audiosocket.md §2): the ceiling for any
/// buffer limit, so no header can make avr-core allocate more.
pub const MAX_PAYLOAD: usize = 65_535;
/// The hangup message; Asterisk treats it as a graceful end (the dialplan continues).
pub const HANGUP: [u8; 3] = [0, 0, 0];
/// 20 ms of 8 kHz signed 16-bit little-endian mono: the only outbound audio frame size we send.
pub const SLIN_FRAME_BYTES: usize = 320;

pub const KIND_HANGUP: u8 = 0x00;
pub const KIND_UUID: u8 = 0x01;
pub const KIND_DTMF: u8 = 0x03;
pub const KIND_AUDIO: u8 = 0x10;
pub const KIND_ERROR: u8 = 0xff;

/// Start size of a [`FrameBuffer`]: one 320-byte frame plus slack. Hundreds of calls each
/// holding 64 KiB would waste memory, so the buffer grows only when a header asks for more.
const INITIAL_CAPACITY: usize = 1024;
/// Fewest bytes one `read_from` call offers the socket, so a nearly full buffer still makes
/// progress without growing.
const MIN_READ: usize = 256;

/// One decoded inbound message. Borrowed from the FrameBuffer to avoid per-frame copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// `0x00`: the peer ends the call (any payload is ignored, as Asterisk does).
    Hangup,
    /// `0x01` with exactly 16 raw bytes: the call id.
    Uuid([u8; 16]),
    /// `0x03` with exactly one byte in `0-9 * # A-D`.
    Dtmf(char),
    /// `0x10..=0x18` with a non-empty payload. Odd lengths are passed through: Asterisk itself
    /// truncates them, and G.711 passed through as `0x10` may legitimately be odd.
    Audio { rate_hz: u32, payload: &'a [u8] },
    /// `0xff`: Asterisk never sends it; callers treat it as hangup.
    Error(&'a [u8]),
    /// Any other kind (including the non-standard `0x02`): its payload has been skipped.
    Unknown { kind: u8, len: usize },
    /// A known kind whose payload cannot be right; the frame has been skipped.
    Malformed {
        kind: u8,
        len: usize,
        reason: &'static str,
    },
}

/// Why bytes could not be turned into frames (or a frame into bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A header announces (or a caller asks to encode) more payload than allowed.
    TooLarge { kind: u8, len: usize, max: usize },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { kind, len, max } => write!(
                f,
                "AudioSocket {} frame (kind 0x{kind:02x}) carries a {len}-byte payload; \
                 at most {max} bytes are allowed",
                kind_name(*kind)
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// Accumulates bytes read from the socket and yields whole frames; handles any fragmentation.
///
/// Bytes before `start` are already consumed; they are dropped lazily (on the next feed/read)
/// because the last returned [`Frame`] may still borrow them until then.
#[derive(Debug)]
pub struct FrameBuffer {
    buf: Vec<u8>,
    start: usize,
    max_payload: usize,
}

impl FrameBuffer {
    /// `max_payload` above [`MAX_PAYLOAD`] is clamped to it. A header announcing more than
    /// `max_payload` makes [`next_frame`](Self::next_frame) fail with [`FrameError::TooLarge`].
    pub fn new(max_payload: usize) -> Self {
        FrameBuffer {
            buf: Vec::with_capacity(INITIAL_CAPACITY),
            start: 0,
            max_payload: max_payload.min(MAX_PAYLOAD),
        }
    }

    /// Appends bytes received from the peer (after dropping consumed ones).
    pub fn feed(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// Decodes the next whole frame. `Ok(None)` means more bytes are needed.
    ///
    /// After `Err(TooLarge)` the stream cannot be resynchronised: the caller must drop the
    /// connection. The error repeats on further calls; nothing is allocated for it.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FrameError> {
        let avail = &self.buf[self.start..];
        let Some((kind, len)) = parse_header(avail) else {
            return Ok(None);
        };
        if len > self.max_payload {
            return Err(FrameError::TooLarge {
                kind,
                len,
                max: self.max_payload,
            });
        }
        if avail.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload_start = self.start + HEADER_LEN;
        self.start = payload_start + len;
        Ok(Some(decode(kind, &self.buf[payload_start..self.start])))
    }

    /// Kind and announced length of the next frame, as soon as its header is here (before
    /// its payload): lets the server refuse a connection that does not start with a UUID
    /// without waiting for up to 64 KiB of payload.
    pub fn peek_header(&self) -> Option<(u8, usize)> {
        parse_header(&self.buf[self.start..])
    }

    /// Bytes held but not yet consumed (e.g. a partial frame when the peer closes).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Performs one `read()` straight into the buffer, avoiding a copy through a stack buffer.
    /// Returns the byte count; 0 means EOF. Offers the socket the spare capacity, growing only
    /// when the pending frame's header says it needs more.
    pub fn read_from<R: io::Read>(&mut self, r: &mut R) -> io::Result<usize> {
        self.compact();
        let len = self.buf.len();
        let spare = self.buf.capacity() - len;
        let want = spare.max(self.pending_need()).max(MIN_READ);
        // The read window is zero-filled (no unsafe); it is bounded by the capacity in use.
        self.buf.resize(len + want, 0);
        let result = r.read(&mut self.buf[len..]);
        let got = match &result {
            Ok(n) => (*n).min(want),
            Err(_) => 0,
        };
        self.buf.truncate(len + got);
        result
    }

    /// Bytes still missing for the frame whose header is buffered (0 when no header yet, or
    /// when the header is too large: that frame will be refused, so nothing is reserved).
    fn pending_need(&self) -> usize {
        let avail = &self.buf[self.start..];
        match parse_header(avail) {
            Some((_, len)) if len <= self.max_payload => {
                (HEADER_LEN + len).saturating_sub(avail.len())
            }
            _ => 0,
        }
    }

    /// Drops consumed bytes; gives back memory once a rare large frame has been consumed.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.capacity() > 4 * INITIAL_CAPACITY && self.buf.len() <= INITIAL_CAPACITY {
            self.buf.shrink_to(INITIAL_CAPACITY);
        }
    }
}

/// Kind and announced payload length, once all three header bytes are present.
fn parse_header(bytes: &[u8]) -> Option<(u8, usize)> {
    match bytes {
        [kind, hi, lo, ..] => Some((*kind, usize::from(u16::from_be_bytes([*hi, *lo])))),
        _ => None,
    }
}

/// Interprets one complete payload according to its kind.
fn decode(kind: u8, payload: &[u8]) -> Frame<'_> {
    let len = payload.len();
    let malformed = |reason| Frame::Malformed { kind, len, reason };
    match kind {
        KIND_HANGUP => Frame::Hangup,
        KIND_UUID => match <[u8; 16]>::try_from(payload) {
            Ok(id) => Frame::Uuid(id),
            Err(_) => malformed("a UUID frame must carry exactly 16 bytes"),
        },
        KIND_DTMF => match payload {
            [b] if is_dtmf(*b) => Frame::Dtmf(char::from(*b)),
            [_] => malformed("DTMF digit is not one of 0-9 * # A-D"),
            _ => malformed("a DTMF frame must carry exactly 1 byte"),
        },
        KIND_ERROR => Frame::Error(payload),
        _ => match audio_rate_hz(kind) {
            Some(_) if len == 0 => malformed("audio frame with an empty payload"),
            Some(rate_hz) => Frame::Audio { rate_hz, payload },
            None => Frame::Unknown { kind, len },
        },
    }
}

fn is_dtmf(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'*' | b'#' | b'A'..=b'D')
}

/// The audio kinds with their rates (docs/audiosocket.md §3): the one table both directions
/// are read from.
const AUDIO_KINDS: [(u8, u32); 9] = [
    (0x10, 8_000),
    (0x11, 12_000),
    (0x12, 16_000),
    (0x13, 24_000),
    (0x14, 32_000),
    (0x15, 44_100),
    (0x16, 48_000),
    (0x17, 96_000),
    (0x18, 192_000),
];

/// The rate of kind `0x10`: what `AudioSocket()`, `c(slin)` and every G.711 caller carry.
pub const SLIN_HZ: u32 = 8_000;

/// The name of the audio kind that carries `rate_hz` (`slin`, `slin16`…), `unknown` if none.
pub fn rate_name(rate_hz: u32) -> &'static str {
    audio_kind(rate_hz).map_or("unknown", kind_name)
}

/// Every rate an audio kind can carry, lowest first.
pub fn audio_rates() -> impl Iterator<Item = u32> {
    AUDIO_KINDS.iter().map(|&(_, rate)| rate)
}

/// Sample rate of an audio kind (`0x10..=0x18`), `None` for other kinds.
pub fn audio_rate_hz(kind: u8) -> Option<u32> {
    AUDIO_KINDS
        .iter()
        .find(|&&(k, _)| k == kind)
        .map(|&(_, rate)| rate)
}

/// The audio kind that carries `rate_hz`, `None` if AudioSocket has none.
pub fn audio_kind(rate_hz: u32) -> Option<u8> {
    AUDIO_KINDS
        .iter()
        .find(|&&(_, rate)| rate == rate_hz)
        .map(|&(kind, _)| kind)
}

/// Bytes of s16le mono in one 20 ms frame at `rate_hz` (320 at 8 kHz, 640 at 16 kHz, 1,764
/// at 44.1 kHz): every AudioSocket rate is a multiple of 50 Hz, so a frame is whole samples.
pub fn frame_bytes(rate_hz: u32) -> usize {
    rate_hz as usize / 50 * 2
}

/// Encodes any message (for the fake-Asterisk simulator and tests). Refuses payloads the
/// u16 length cannot express instead of silently truncating the length.
pub fn encode(kind: u8, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let len = u16::try_from(payload.len()).map_err(|_| FrameError::TooLarge {
        kind,
        len: payload.len(),
        max: MAX_PAYLOAD,
    })?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(kind);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// A call's id: the 16 bytes of the `0x01` frame, written as canonical lowercase
/// `8-4-4-4-12` text in logs, webhooks, the STS `init` and `/call`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CallId(uuid::Uuid);

impl CallId {
    pub fn from_bytes(bytes: [u8; 16]) -> CallId {
        CallId(uuid::Uuid::from_bytes(bytes))
    }

    pub fn random() -> CallId {
        CallId(uuid::Uuid::new_v4())
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Parses `8-4-4-4-12` hex (any case). The other forms the `uuid` crate reads (braces,
    /// no dashes, URNs) are refused, so `/call` lookups and logs only ever see the
    /// canonical form.
    pub fn parse(text: &str) -> Option<CallId> {
        let dashed =
            text.len() == 36 && [8, 13, 18, 23].iter().all(|&i| text.as_bytes()[i] == b'-');
        if !dashed {
            return None;
        }
        uuid::Uuid::try_parse(text).ok().map(CallId)
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Short name of a kind for log lines.
pub fn kind_name(kind: u8) -> &'static str {
    match kind {
        0x00 => "hangup",
        0x01 => "uuid",
        0x03 => "dtmf",
        0x10 => "slin",
        0x11 => "slin12",
        0x12 => "slin16",
        0x13 => "slin24",
        0x14 => "slin32",
        0x15 => "slin44",
        0x16 => "slin48",
        0x17 => "slin96",
        0x18 => "slin192",
        0xff => "error",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: [u8; 16] = [
        0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd,
        0xef,
    ];

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        encode(kind, payload).unwrap()
    }

    /// Decodes everything currently decodable into owned debug strings (frames borrow the buffer).
    fn drain(fb: &mut FrameBuffer) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(f) = fb.next_frame().unwrap() {
            out.push(format!("{f:?}"));
        }
        out
    }

    fn one(bytes: &[u8]) -> String {
        let mut fb = FrameBuffer::new(MAX_PAYLOAD);
        fb.feed(bytes);
        let f = format!("{:?}", fb.next_frame().unwrap().unwrap());
        assert_eq!(fb.buffered(), 0);
        f
    }

    #[test]
    fn every_kind_decodes() {
        let mut fb = FrameBuffer::new(MAX_PAYLOAD);
        fb.feed(&HANGUP);
        assert_eq!(fb.next_frame().unwrap(), Some(Frame::Hangup));
        fb.feed(&frame(KIND_HANGUP, b"xy"));
        assert_eq!(fb.next_frame().unwrap(), Some(Frame::Hangup));
        fb.feed(&frame(KIND_UUID, &ID));
        assert_eq!(fb.next_frame().unwrap(), Some(Frame::Uuid(ID)));
        for d in b"0123456789*#ABCD" {
            fb.feed(&frame(KIND_DTMF, &[*d]));
            assert_eq!(fb.next_frame().unwrap(), Some(Frame::Dtmf(char::from(*d))));
        }
        let rates = [
            8_000, 12_000, 16_000, 24_000, 32_000, 44_100, 48_000, 96_000, 192_000,
        ];
        for (kind, rate) in (0x10u8..=0x18).zip(rates) {
            fb.feed(&frame(kind, &[1, 2, 3, 4]));
            let expected = Frame::Audio {
                rate_hz: rate,
                payload: &[1, 2, 3, 4],
            };
            assert_eq!(fb.next_frame().unwrap(), Some(expected));
            assert_eq!(audio_rate_hz(kind), Some(rate));
        }
        fb.feed(&frame(KIND_ERROR, &[0x04]));
        assert_eq!(fb.next_frame().unwrap(), Some(Frame::Error(&[0x04])));
        fb.feed(&frame(KIND_ERROR, &[]));
        assert_eq!(fb.next_frame().unwrap(), Some(Frame::Error(&[])));
        fb.feed(&frame(0x02, &[0; 10]));
        assert_eq!(
            fb.next_frame().unwrap(),
            Some(Frame::Unknown { kind: 2, len: 10 })
        );
        assert_eq!(fb.next_frame().unwrap(), None);
        assert_eq!(fb.buffered(), 0);
    }

    #[test]
    fn kinds_and_rates_map_both_ways() {
        for kind in 0x10..=0x18u8 {
            let rate = audio_rate_hz(kind).unwrap();
            assert_eq!(audio_kind(rate), Some(kind));
            assert_eq!(frame_bytes(rate) % 2, 0);
        }
        assert_eq!(audio_rate_hz(0x11), Some(12_000));
        assert_eq!(audio_rate_hz(0x19), None);
        assert_eq!(audio_kind(22_050), None);
        assert_eq!(frame_bytes(8_000), SLIN_FRAME_BYTES);
        assert_eq!(frame_bytes(16_000), 640);
        assert_eq!(frame_bytes(44_100), 1_764);
        assert_eq!(frame_bytes(48_000), 1_920);
        assert_eq!(audio_rates().count(), 9);
        assert_eq!(frame_bytes(SLIN_HZ), SLIN_FRAME_BYTES);
        assert_eq!(
            (rate_name(16_000), rate_name(22_050)),
            ("slin16", "unknown")
        );
    }

    #[test]
    fn kind_names() {
        assert_eq!(kind_name(0x00), "hangup");
        assert_eq!(kind_name(0x01), "uuid");
        assert_eq!(kind_name(0x02), "unknown");
        assert_eq!(kind_name(0x03), "dtmf");
        assert_eq!(kind_name(0x10), "slin");
        assert_eq!(kind_name(0x11), "slin12");
        assert_eq!(kind_name(0x15), "slin44");
        assert_eq!(kind_name(0x18), "slin192");
        assert_eq!(kind_name(0x19), "unknown");
        assert_eq!(kind_name(0xff), "error");
    }

    #[test]
    fn one_frame_in_one_byte_feeds() {
        let payload: Vec<u8> = (0..320u16).map(|i| i as u8).collect();
        let bytes = frame(KIND_AUDIO, &payload);
        let mut fb = FrameBuffer::new(MAX_PAYLOAD);
        for (i, b) in bytes.iter().enumerate() {
            assert_eq!(fb.next_frame().unwrap(), None, "early frame at byte {i}");
            fb.feed(&[*b]);
            assert_eq!(fb.buffered(), i + 1);
        }
        let expected = Frame::Audio {
            rate_hz: 8000,
            payload: &payload,
        };
        assert_eq!(fb.next_frame().unwrap(), Some(expected));
        assert_eq!(fb.buffered(), 0);
        assert_eq!(fb.next_frame().unwrap(), None);
    }

    #[test]
    fn many_frames_in_one_feed() {
        let mut bytes = frame(KIND_UUID, &ID);
        for i in 0..50u8 {
            bytes.extend(frame(KIND_AUDIO, &[i; 160]));
        }
        bytes.extend(frame(KIND_DTMF, b"7"));
        bytes.extend(HANGUP);
        let mut fb = FrameBuffer::new(MAX_PAYLOAD);
        fb.feed(&bytes);
        let frames = drain(&mut fb);
        assert_eq!(frames.len(), 53);
        assert_eq!(frames[0], format!("{:?}", Frame::Uuid(ID)));
        assert!(frames[50].contains("payload: [49, 49"));
        assert_eq!(frames[51], "Dtmf('7')");
        assert_eq!(frames[52], "Hangup");
        assert_eq!(fb.buffered(), 0);
    }

    #[test]
    fn header_split_from_payload() {
        let bytes = frame(KIND_AUDIO, &[9; 320]);
        let mut fb = FrameBuffer::new(MAX_PAYLOAD);
        fb.feed(&bytes[..HEADER_LEN]);
        assert_eq!(fb.next_frame().unwrap(), None);
        fb.feed(&bytes[HEADER_LEN..100]);
        assert_eq!(fb.next_frame().unwrap(), None);
        assert_eq!(fb.buffered(), 100);
        fb.feed(&bytes[100..]);
        assert!(matches!(
            fb.next_frame().unwrap(),
            Some(Frame::Audio { payload, .. }) if payload == [9; 320]
        ));
        // Header bytes themselves split: kind, then one length byte, then the other.
        fb.feed(&bytes[..1]);
        fb.feed(&bytes[1..2]);
        assert_eq!(fb.next_frame().unwrap(), None);
        fb.feed(&bytes[2..]);
        assert!(fb.next_frame().unwrap().is_some());
    }

    #[test]
    fn maximal_frame_decodes() {
        let payload: Vec<u8> = (0..MAX_PAYLOAD).map(|i| (i % 251) as u8).collect();
        let bytes = frame(KIND_AUDIO, &payload);
        assert_eq!(bytes.len(), HEADER_LEN + 65_535);
        assert_eq!(&bytes[..3], &[0x10, 0xff, 0xff]);
        let mut fb = FrameBuffer::new(MAX_PAYLOAD);
        for chunk in bytes.chunks(7_000) {
            fb.feed(chunk);
        }
        assert!(matches!(
            fb.next_frame().unwrap(),
            Some(Frame::Audio { payload: p, .. }) if p == payload.as_slice()
        ));
        // After the big frame is consumed, memory goes back to the small size.
        fb.feed(&HANGUP);
        assert!(fb.buf.capacity() <= 4 * INITIAL_CAPACITY);
        assert_eq!(fb.next_frame().unwrap(), Some(Frame::Hangup));
    }

    #[test]
    fn header_above_limit_is_too_large() {
        let mut fb = FrameBuffer::new(1000);
        fb.feed(&[0x10, 0x03, 0xe9]); // 1001
        assert_eq!(fb.pending_need(), 0);
        let err = fb.next_frame().unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                kind: 0x10,
                len: 1001,
                max: 1000
            }
        );
        let text = err.to_string();
        assert!(text.contains("1001") && text.contains("1000") && text.contains("slin"));
        // Nothing was reserved for the refused frame, and the error is sticky.
        fb.read_from(&mut io::empty()).unwrap();
        assert_eq!(fb.buf.capacity(), INITIAL_CAPACITY);
        assert!(fb.next_frame().is_err());
        // Exactly at the limit is fine.
        let mut fb = FrameBuffer::new(1000);
        fb.feed(&frame(KIND_AUDIO, &[0; 1000]));
        assert!(fb.next_frame().unwrap().is_some());
        // A limit above the u16 range is clamped.
        assert_eq!(FrameBuffer::new(1 << 20).max_payload, MAX_PAYLOAD);
    }

    #[test]
    fn malformed_payloads() {
        assert_eq!(
            one(&frame(KIND_AUDIO, &[])),
            format!(
                "{:?}",
                Frame::Malformed {
                    kind: 0x10,
                    len: 0,
                    reason: "audio frame with an empty payload"
                }
            )
        );
        assert!(one(&frame(0x16, &[])).starts_with("Malformed { kind: 22, len: 0"));
        assert!(one(&frame(KIND_UUID, &ID[..15])).starts_with("Malformed { kind: 1, len: 15"));
        assert!(one(&frame(KIND_UUID, &[0; 17])).starts_with("Malformed { kind: 1, len: 17"));
        assert!(one(&frame(KIND_DTMF, b"x")).contains("not one of"));
        assert!(one(&frame(KIND_DTMF, b"a")).contains("not one of"));
        assert!(one(&frame(KIND_DTMF, &[0x80])).contains("not one of"));
        assert!(one(&frame(KIND_DTMF, b"12")).contains("exactly 1 byte"));
        assert!(one(&frame(KIND_DTMF, b"")).contains("exactly 1 byte"));
    }

    #[test]
    fn unknown_kinds_are_skipped() {
        for kind in [0x02u8, 0x42, 0x04, 0x19, 0xfe] {
            let mut bytes = frame(kind, &[0xaa; 77]);
            bytes.extend(frame(KIND_DTMF, b"#"));
            let mut fb = FrameBuffer::new(MAX_PAYLOAD);
            fb.feed(&bytes);
            assert_eq!(
                fb.next_frame().unwrap(),
                Some(Frame::Unknown { kind, len: 77 })
            );
            assert_eq!(fb.next_frame().unwrap(), Some(Frame::Dtmf('#')));
            assert_eq!(fb.buffered(), 0);
        }
    }

    /// Deterministic xorshift64 so the fuzz loop needs no crates and is reproducible.
    fn xorshift(state: &mut u64) -> u64 {
        let mut x = *state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *state = x;
        x
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut frames = 0usize;
        for round in 0..300 {
            let max = if round % 3 == 0 { 512 } else { MAX_PAYLOAD };
            let mut fb = FrameBuffer::new(max);
            'feed: for _ in 0..40 {
                let n = (xorshift(&mut rng) % 700) as usize;
                // Every third byte (a length high byte when aligned) is mostly 0 or 1, so that
                // many frames complete instead of waiting for 64 KiB.
                let chunk: Vec<u8> = (0..n)
                    .map(|i| {
                        let r = xorshift(&mut rng) as u8;
                        if i % 3 == 1 {
                            r & 0x01
                        } else {
                            r
                        }
                    })
                    .collect();
                fb.feed(&chunk);
                loop {
                    match fb.next_frame() {
                        Ok(Some(f)) => {
                            frames += 1;
                            if let Frame::Audio { payload, .. } = f {
                                assert!(!payload.is_empty() && payload.len() <= max);
                            }
                        }
                        Ok(None) => break,
                        Err(FrameError::TooLarge { len, max: m, .. }) => {
                            assert!(len > m);
                            break 'feed;
                        }
                    }
                }
            }
        }
        assert!(frames > 300, "only {frames} frames decoded");
    }

    /// Hands out its data in pseudo-random chunk sizes, like a TCP socket.
    struct Chunky {
        data: Vec<u8>,
        pos: usize,
        rng: u64,
    }

    impl io::Read for Chunky {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = (xorshift(&mut self.rng) % 700 + 1) as usize;
            let n = n.min(buf.len()).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn memory_stays_small() {
        let mut data = frame(KIND_UUID, &ID);
        for i in 0..500u32 {
            data.extend(encode(KIND_AUDIO, &[i as u8; SLIN_FRAME_BYTES]).unwrap());
        }
        let mut src = Chunky {
            data,
            pos: 0,
            rng: 7,
        };
        let mut fb = FrameBuffer::new(MAX_PAYLOAD);
        assert_eq!(fb.buf.capacity(), INITIAL_CAPACITY);
        let mut audio = 0;
        while fb.read_from(&mut src).unwrap() > 0 {
            while let Some(f) = fb.next_frame().unwrap() {
                audio += usize::from(matches!(f, Frame::Audio { .. }));
            }
            assert_eq!(fb.buf.capacity(), INITIAL_CAPACITY);
        }
        assert_eq!(audio, 500);
        assert_eq!(fb.buffered(), 0);
    }

    #[test]
    fn read_from_reads_in_place() {
        let mut bytes = frame(KIND_UUID, &ID);
        bytes.extend(frame(KIND_AUDIO, &[5; 5000]));
        bytes.extend(HANGUP);
        bytes.extend([0x10, 0x00]); // partial header left at EOF
        let mut src = io::Cursor::new(bytes);
        let mut fb = FrameBuffer::new(MAX_PAYLOAD);
        let mut seen = Vec::new();
        loop {
            let n = fb.read_from(&mut src).unwrap();
            while let Some(f) = fb.next_frame().unwrap() {
                seen.push(match f {
                    Frame::Audio { payload, .. } => format!("audio {}", payload.len()),
                    other => format!("{other:?}"),
                });
            }
            if n == 0 {
                break;
            }
        }
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[1], "audio 5000");
        assert_eq!(seen[2], "Hangup");
        assert_eq!(fb.buffered(), 2);
    }

    #[test]
    fn read_from_passes_errors_through() {
        struct Broken;
        impl io::Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::ErrorKind::ConnectionReset.into())
            }
        }
        let mut fb = FrameBuffer::new(MAX_PAYLOAD);
        fb.feed(&[0x10]);
        let err = fb.read_from(&mut Broken).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(fb.buffered(), 1);
    }

    #[test]
    fn an_encoded_audio_frame_round_trips() {
        let mut payload = [0u8; SLIN_FRAME_BYTES];
        for (i, b) in payload.iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        let out = encode(KIND_AUDIO, &payload).unwrap();
        assert_eq!(&out[..3], &[0x10, 0x01, 0x40]);
        let mut fb = FrameBuffer::new(MAX_PAYLOAD);
        fb.feed(&out);
        assert_eq!(
            fb.next_frame().unwrap(),
            Some(Frame::Audio {
                rate_hz: 8000,
                payload: &payload
            })
        );
        assert_eq!(encode(KIND_HANGUP, &[]).unwrap(), HANGUP.to_vec());
        assert_eq!(encode(KIND_UUID, &ID).unwrap()[..3], [0x01, 0x00, 0x10]);
        let err = encode(KIND_AUDIO, &vec![0; MAX_PAYLOAD + 1]).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                kind: 0x10,
                len: 65_536,
                max: 65_535
            }
        );
    }

    #[test]
    fn call_id_text_round_trip() {
        let text = CallId::from_bytes(ID).to_string();
        assert_eq!(text, "12345678-9abc-def0-0123-456789abcdef");
        assert_eq!(CallId::parse(&text), Some(CallId::from_bytes(ID)));
        assert_eq!(
            CallId::parse("12345678-9ABC-DEF0-0123-456789ABCDEF"),
            Some(CallId::from_bytes(ID))
        );
        assert_eq!(
            CallId::from_bytes([0; 16]).to_string(),
            "00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(
            CallId::from_bytes([0xff; 16]).to_string(),
            "ffffffff-ffff-ffff-ffff-ffffffffffff"
        );
        for bad in [
            "",
            "123456789abcdef00123456789abcdef",
            "{12345678-9abc-def0-0123-456789abcdef}",
            "12345678-9abc-def0-0123-456789abcdeg",
            "12345678-9abc-def0-0123_456789abcdef",
            "123456789-abc-def0-0123-456789abcdef",
            "12345678-9abc-def0-0123-456789abcdef0",
            "12345678-9abc-def0-0123-456789abcdé",
            "+2345678-9abc-def0-0123-456789abcdef",
        ] {
            assert_eq!(CallId::parse(bad), None, "{bad:?}");
        }
    }
}
