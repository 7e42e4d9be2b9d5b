//! The strict receive side of the fake Asterisk: Asterisk HEAD's AudioSocket parser rules
//! (docs/audiosocket.md §6, §11) applied to what the server sends, each broken rule a violation
//! with its time, and the rate rule of avr-core's answer (docs/audiosocket.md §10.4): a caller
//! is answered in its own kind, 20 ms per frame. No I/O and no clock: bytes come in with their
//! arrival time as an argument, so every rule is unit-tested with synthetic times.

use std::time::Duration;

use super::stats::{ms, secs};
use crate::proto::audiosocket::{
    self, kind_name, HEADER_LEN, KIND_AUDIO, KIND_HANGUP, SLIN_FRAME_BYTES,
};
use crate::tools::rates::{khz, SLIN_RATE_HZ};

/// Asterisk HEAD polls 5 ms for the rest of a payload, then drops the call.
const PAYLOAD_LIMIT: Duration = Duration::from_millis(5);
/// `AudioSocket()` ends the call after 2 s without activity (20.14+).
const INACTIVITY_LIMIT: Duration = Duration::from_secs(2);
/// A broken server can break a rule 50 times a second; the report stays readable.
const MAX_VIOLATIONS: usize = 100;
/// A wideband caller's first frame goes out right after its UUID (`AudioSocket()` streams at
/// once), so a server still answering in 8 kHz slin this long after the UUID has not taken up
/// the caller's rate: 50 frames, far more than any delay in reading the first one.
const PRELUDE_LIMIT: Duration = Duration::from_secs(1);

/// Where the parser is in the byte stream.
#[derive(Clone, Copy)]
enum Parse {
    Header {
        have: usize,
        bytes: [u8; HEADER_LEN],
    },
    Payload {
        kind: u8,
        len: usize,
        got: usize,
        /// When the header's last byte arrived: Asterisk's 5 ms clock starts here.
        header_at: Duration,
    },
}

const NO_HEADER: Parse = Parse::Header {
    have: 0,
    bytes: [0; HEADER_LEN],
};

/// The strict receive side: an incremental parser fed with (bytes, arrival time). Every byte
/// in one `read()` shares that read's timestamp, so "payload completed > 5 ms after its header"
/// is measured between the read that completed the header and the one that completed the
/// payload. Kept free of I/O so the rules are unit-tested with synthetic times.
pub struct Checker {
    parse: Parse,
    received: Vec<u8>,
    arrivals: Vec<Duration>,
    violations: Violations,
    hangup_received: bool,
    server_closed: bool,
    /// Last frame (any kind) while the call was live; starts at the UUID.
    last_live_frame: Duration,
    trailing_bytes: usize,
    trailing_at: Duration,
    /// The last read filled the buffer, so the rest of a cut-off frame was probably queued
    /// already: its 5 ms clock restarts at the next read instead of blaming the server for
    /// our own scheduling delay.
    restart_clock: bool,
    /// How much of `received` belongs to complete audio frames (the rest is the frame still
    /// arriving).
    complete: usize,
    /// What the caller sends, so what the server must answer in.
    caller: CallerKind,
    /// A frame of the caller's kind has come: the `0x10` prelude is over.
    answered: bool,
    /// Audio frames that came as the `0x10` prelude to a wideband caller.
    prelude_frames: u64,
    /// The prelude went on past [`PRELUDE_LIMIT`] (reported once).
    prelude_overdue: bool,
}

impl Checker {
    /// The receive side of a caller sending audio at `rate_hz` (an AudioSocket rate), with
    /// room for `frames` arrivals and `audio_bytes` of payload up front: the receive loop
    /// should not reallocate while it timestamps.
    pub fn with_capacity(rate_hz: u32, frames: usize, audio_bytes: usize) -> Self {
        Checker {
            parse: NO_HEADER,
            received: Vec::with_capacity(audio_bytes),
            arrivals: Vec::with_capacity(frames),
            violations: Violations::default(),
            hangup_received: false,
            server_closed: false,
            last_live_frame: Duration::ZERO,
            trailing_bytes: 0,
            trailing_at: Duration::ZERO,
            restart_clock: false,
            complete: 0,
            caller: CallerKind::new(rate_hz),
            answered: false,
            prelude_frames: 0,
            prelude_overdue: false,
        }
    }

    /// Consumes bytes that arrived at `now`; `live` = the call had not ended yet.
    pub fn feed(&mut self, mut data: &[u8], now: Duration, live: bool) {
        if std::mem::take(&mut self.restart_clock) {
            if let Parse::Payload { header_at, .. } = &mut self.parse {
                *header_at = now;
            }
        }
        while !data.is_empty() {
            if self.hangup_received {
                // Asterisk stops reading at the hangup; anything more is a server bug.
                if self.trailing_bytes == 0 {
                    self.trailing_at = now;
                }
                self.trailing_bytes += data.len();
                return;
            }
            match self.parse {
                Parse::Header {
                    mut have,
                    mut bytes,
                } => {
                    let take = (HEADER_LEN - have).min(data.len());
                    bytes[have..have + take].copy_from_slice(&data[..take]);
                    have += take;
                    data = &data[take..];
                    self.parse = Parse::Header { have, bytes };
                    if have == HEADER_LEN {
                        let [kind, hi, lo] = bytes;
                        self.header(kind, usize::from(u16::from_be_bytes([hi, lo])), now, live);
                    }
                }
                Parse::Payload {
                    kind,
                    len,
                    got,
                    header_at,
                } => {
                    let take = (len - got).min(data.len());
                    if audiosocket::audio_rate_hz(kind).is_some() {
                        // Asterisk plays len/2 samples: a trailing odd byte is dropped.
                        let keep = len & !1;
                        let (from, to) = (got.min(keep), (got + take).min(keep));
                        self.received.extend_from_slice(&data[from - got..to - got]);
                    }
                    data = &data[take..];
                    if got + take == len {
                        self.parse = NO_HEADER;
                        self.complete(kind, len, header_at, now, live);
                    } else {
                        self.parse = Parse::Payload {
                            kind,
                            len,
                            got: got + take,
                            header_at,
                        };
                    }
                }
            }
        }
    }

    /// The read that just ended filled the whole buffer; see `restart_clock`.
    pub fn more_queued(&mut self) {
        self.restart_clock = true;
    }

    /// A header is complete: judge it the way Asterisk's parser does (docs/audiosocket.md §6).
    fn header(&mut self, kind: u8, len: usize, now: Duration, live: bool) {
        if kind == KIND_HANGUP {
            // Asterisk acts on the kind alone; a payload would count as trailing bytes.
            self.parse = NO_HEADER;
            self.hangup_received = true;
            self.activity(now, live);
            return;
        }
        if audiosocket::audio_rate_hz(kind).is_none() {
            self.violations.push(
                now,
                format!(
                    "frame of kind 0x{kind:02x} ({}, {len} bytes): Asterisk accepts only 0x00 and \
                     audio 0x10-0x18 and drops the call",
                    audiosocket::kind_name(kind)
                ),
            );
        } else if len == 0 {
            self.violations.push(
                now,
                format!(
                    "audio frame (kind 0x{kind:02x}) with length 0: Asterisk drops the call \
                     (Invalid message length)"
                ),
            );
        } else if len % 2 == 1 {
            self.violations.push(
                now,
                format!(
                    "audio frame (kind 0x{kind:02x}) with odd length {len}: 16-bit samples need \
                     an even length; Asterisk drops the last byte"
                ),
            );
        } else if let Err(why) = self.caller.judge(self.answered, kind, len) {
            self.violations.push(now, why);
        } else if self.caller.kind != kind
            && !self.answered
            && now > PRELUDE_LIMIT
            && !std::mem::replace(&mut self.prelude_overdue, true)
        {
            let name = kind_name(self.caller.kind);
            self.violations.push(
                now,
                format!(
                    "still 8 kHz slin {} after the UUID, though the caller sends {name} from the \
                     start: the server must answer in {name} (kind 0x{:02x}) once it has the \
                     caller's first frame",
                    secs(now),
                    self.caller.kind
                ),
            );
        }
        self.answered |= kind == self.caller.kind;
        if len == 0 {
            self.parse = NO_HEADER;
            self.activity(now, live);
        } else {
            self.parse = Parse::Payload {
                kind,
                len,
                got: 0,
                header_at: now,
            };
        }
    }

    /// A frame with a payload is complete.
    fn complete(&mut self, kind: u8, len: usize, header_at: Duration, now: Duration, live: bool) {
        let wait = now.saturating_sub(header_at);
        if wait > PAYLOAD_LIMIT {
            self.violations.push(
                now,
                format!(
                    "payload of a {len}-byte kind 0x{kind:02x} frame completed {} after its header \
                     (Asterisk waits at most 5 ms, then drops the call; write each frame in one write)",
                    ms(wait)
                ),
            );
        }
        if audiosocket::audio_rate_hz(kind).is_some() {
            if kind == KIND_AUDIO && self.caller.rate_hz != SLIN_RATE_HZ && !self.answered {
                // The prelude is 8 kHz: stretched to the caller's rate, `received` stays one
                // stream at one rate, and frame `i` of it is still `arrivals[i]`.
                let slin = self.received.split_off(self.complete);
                self.received
                    .extend(stretch(&slin, SLIN_RATE_HZ, self.caller.rate_hz));
                self.prelude_frames += 1;
            }
            self.arrivals.push(now);
            self.complete = self.received.len();
        }
        self.activity(now, live);
    }

    /// Any complete frame restarts Asterisk's inactivity clock.
    fn activity(&mut self, now: Duration, live: bool) {
        if !live {
            return;
        }
        let silent = now.saturating_sub(self.last_live_frame);
        if silent > INACTIVITY_LIMIT {
            self.violations.push(
                now,
                format!(
                    "no frame from the server for {} (Asterisk ends the call after 2 s of inactivity)",
                    secs(silent)
                ),
            );
        }
        self.last_live_frame = now;
    }

    /// EOF or reset from the server; `how` is "closed" or "reset".
    pub fn closed(&mut self, now: Duration, how: &str) {
        self.server_closed = true;
        let detail = match self.parse {
            Parse::Header { have: 0, .. } => return,
            Parse::Header { have, .. } => format!("after {have} of {HEADER_LEN} header bytes"),
            Parse::Payload { kind, len, got, .. } => {
                format!("kind 0x{kind:02x} frame with {got} of {len} payload bytes")
            }
        };
        self.violations.push(
            now,
            format!("connection {how} in the middle of a frame: {detail} (Asterisk: Insufficient payload read)"),
        );
    }

    /// The receive loop has stopped reading: bytes after the hangup are judged now, once.
    pub fn end_of_stream(&mut self) {
        if self.trailing_bytes > 0 {
            self.violations.push(
                self.trailing_at,
                format!(
                    "{} bytes arrived after the hangup frame (Asterisk stops reading at 00 00 00)",
                    self.trailing_bytes
                ),
            );
        }
    }

    /// The call ended at `ended_at`: a silence from the last frame up to the end breaks the
    /// inactivity rule as one between frames does (the single-call report applies this).
    pub fn call_ended(&mut self, ended_at: Duration) {
        let silent = ended_at.saturating_sub(self.last_live_frame);
        if silent > INACTIVITY_LIMIT {
            self.violations.push(
                ended_at,
                format!(
                    "no frame from the server for {} before the call ended \
                     (Asterisk ends the call after 2 s of inactivity)",
                    secs(silent)
                ),
            );
        }
    }

    /// Saw `00 00 00`.
    pub fn hangup_received(&self) -> bool {
        self.hangup_received
    }

    /// Hands the payloads of the audio frames completed since the last call to `scan`, then
    /// forgets them. Frames completed by one `feed` share its time, so scanning after each
    /// feed sees each frame with its arrival. Load mode keeps no audio this way: 1,000 long
    /// calls do not hold theirs in memory.
    pub fn drain_audio(&mut self, scan: impl FnOnce(&[u8])) {
        scan(&self.received[..self.complete]);
        self.received.drain(..self.complete);
        self.complete = 0;
    }

    /// What the call's receive side came to.
    pub fn into_checked(self) -> Checked {
        Checked {
            received: self.received,
            arrivals: self.arrivals,
            violations: self.violations.into_vec(),
            hangup_received: self.hangup_received,
            server_closed: self.server_closed,
            prelude_frames: self.prelude_frames,
        }
    }
}

/// The checker's findings for one call.
pub struct Checked {
    /// Audio payloads in order (an odd length loses its last byte, as in Asterisk), at the
    /// caller's rate: a wideband caller's 8 kHz prelude is stretched to it.
    pub received: Vec<u8>,
    /// When each audio frame's last byte arrived.
    pub arrivals: Vec<Duration>,
    /// Each rule broken, with its time; capped at 100 lines plus a count of the rest.
    pub violations: Vec<String>,
    pub hangup_received: bool,
    /// EOF or a reset from the server.
    pub server_closed: bool,
    /// Audio frames that came as `0x10` before the first one in a wideband caller's kind.
    pub prelude_frames: u64,
}

/// The kind a caller sends, and the rule of the server's answer (docs/audiosocket.md §10.4):
/// frames of that kind carrying 20 ms each. The server cannot know a wideband caller's rate
/// before its first frame, so until the server's first frame in the caller's kind it may send
/// 8 kHz frames (`0x10`, 320 bytes); after it, only the caller's kind and size. An 8 kHz
/// caller gets `0x10` frames of any length, as Asterisk plays them (and as this checker has
/// always accepted).
#[derive(Clone, Copy, Debug)]
struct CallerKind {
    rate_hz: u32,
    kind: u8,
    frame_bytes: usize,
}

impl CallerKind {
    /// `rate_hz` without an AudioSocket kind is refused before a call starts (`run_call`);
    /// here it falls back to 8 kHz.
    fn new(rate_hz: u32) -> Self {
        let (rate_hz, kind) = match audiosocket::audio_kind(rate_hz) {
            Some(kind) => (rate_hz, kind),
            None => (SLIN_RATE_HZ, KIND_AUDIO),
        };
        CallerKind {
            rate_hz,
            kind,
            frame_bytes: audiosocket::frame_bytes(rate_hz),
        }
    }

    /// An audio frame of `kind` with `len` (non-zero, even) bytes, `answered` = a frame of the
    /// caller's kind came before: fine, or what is wrong with it.
    fn judge(&self, answered: bool, kind: u8, len: usize) -> Result<(), String> {
        let (own, frame) = (self.kind, self.frame_bytes);
        let to = format!(
            "to the caller ({} kHz, kind 0x{own:02x})",
            khz(self.rate_hz)
        );
        let needs = format!(
            "it needs {} frames of {frame} bytes (20 ms)",
            kind_name(own)
        );
        let in_prelude = own != KIND_AUDIO && !answered;
        match kind {
            _ if kind == own && (own == KIND_AUDIO || len == frame) => Ok(()),
            _ if kind == own => Err(format!(
                "{} frame of {len} bytes {to}: {needs}",
                kind_name(own)
            )),
            KIND_AUDIO if in_prelude && len == SLIN_FRAME_BYTES => Ok(()),
            KIND_AUDIO if in_prelude => Err(format!(
                "slin frame of {len} bytes {to} before the first {} frame: until then only \
                 20 ms of 8 kHz (320 bytes) may come",
                kind_name(own)
            )),
            KIND_AUDIO => Err(format!(
                "slin frame of {len} bytes {to} after the first {} frame: {needs}",
                kind_name(own)
            )),
            _ => Err(format!(
                "frame of kind 0x{kind:02x} ({}, {len} bytes) {to}: {needs}{}",
                kind_name(kind),
                if in_prelude {
                    ", or 320-byte slin before the first of them"
                } else {
                    ""
                }
            )),
        }
    }
}

/// Nearest-sample stretch of s16le audio from `from_hz` to `to_hz` (a whole trailing odd byte is
/// dropped): exact for the silence of a prelude, and it keeps its duration.
fn stretch(pcm: &[u8], from_hz: u32, to_hz: u32) -> Vec<u8> {
    let samples = pcm.len() / 2;
    let out = samples * to_hz as usize / from_hz as usize;
    (0..out)
        .flat_map(|j| {
            let i = j * from_hz as usize / to_hz as usize;
            [pcm[2 * i], pcm[2 * i + 1]]
        })
        .collect()
}

/// Violation lines, capped so a server that breaks a rule every frame still gives a short report.
#[derive(Default)]
struct Violations {
    list: Vec<String>,
    dropped: usize,
}

impl Violations {
    fn push(&mut self, at: Duration, what: String) {
        if self.list.len() < MAX_VIOLATIONS {
            self.list.push(format!("at {}: {what}", secs(at)));
        } else {
            self.dropped += 1;
        }
    }

    fn into_vec(mut self) -> Vec<String> {
        if self.dropped > 0 {
            self.list.push(format!(
                "... and {} more violations not listed",
                self.dropped
            ));
        }
        self.list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn receiver_rules_with_synthetic_times() {
        let mut rx = Checker::with_capacity(SLIN_RATE_HZ, 8, 8 * 320);
        let good = audiosocket::encode(0x10, &[7; 320]).unwrap();
        // Header split across reads is fine; payload 4 ms after the header is fine.
        rx.feed(&good[..2], d(10), true);
        rx.feed(&good[2..100], d(11), true);
        rx.feed(&good[100..], d(15), true);
        // 6 ms is not.
        rx.feed(&good[..3], d(20), true);
        rx.feed(&good[3..], d(26), true);
        assert_eq!(rx.arrivals, [d(15), d(26)]);
        assert_eq!(rx.received, [7; 640]);
        assert_eq!(rx.violations.list.len(), 1);
        assert!(rx.violations.list[0].contains("at 0.026 s"));
        assert!(rx.violations.list[0].contains("6.0 ms after its header"));
        // A 2.1 s silence while live is flagged; after the end it is not.
        rx.feed(&good, d(2126), true);
        assert!(rx.violations.list[1].contains("no frame from the server for 2.100 s"));
        rx.feed(&good, d(9000), false);
        assert_eq!(rx.violations.list.len(), 2);
        // Hangup then stray bytes; EOF afterwards is clean.
        rx.feed(&[0, 0, 0, 0x10, 0], d(9010), false);
        rx.feed(&[2], d(9011), false);
        rx.closed(d(9012), "closed");
        rx.end_of_stream();
        assert!(rx.hangup_received && rx.server_closed);
        assert!(rx.violations.list[2].contains("3 bytes arrived after the hangup frame"));
        assert_eq!(rx.arrivals.len(), 4);

        // A frame cut off by a full read buffer is timed from the next read.
        let mut rx = Checker::with_capacity(SLIN_RATE_HZ, 1, 320);
        rx.feed(&good[..50], d(100), true);
        rx.more_queued();
        rx.feed(&good[50..], d(120), true);
        assert!(rx.violations.list.is_empty());
        assert_eq!(rx.arrivals, [d(120)]);

        let mut rx = Checker::with_capacity(SLIN_RATE_HZ, 1, 320);
        rx.feed(&[0x10, 0x01, 0x40, 1, 2], d(1), true);
        rx.closed(d(2), "reset");
        assert!(rx.violations.list[0]
            .contains("reset in the middle of a frame: kind 0x10 frame with 2 of 320"));
    }

    #[test]
    fn violations_are_capped() {
        let mut rx = Checker::with_capacity(SLIN_RATE_HZ, 1, 320);
        for i in 0..150 {
            rx.feed(&[0x10, 0, 0], d(i), true);
        }
        let v = rx.violations.into_vec();
        assert_eq!(v.len(), MAX_VIOLATIONS + 1);
        assert!(v[MAX_VIOLATIONS].contains("50 more"));
    }

    /// A one-connection fake server; `serve` runs on its own thread with the accepted socket.

    #[test]
    fn silence_up_to_the_end_is_judged_once_the_call_ended() {
        let good = audiosocket::encode(0x10, &[7; 320]).unwrap();
        let mut rx = Checker::with_capacity(SLIN_RATE_HZ, 1, 320);
        rx.feed(&good, d(100), true);
        rx.call_ended(d(2100));
        assert!(rx.violations.list.is_empty(), "exactly 2 s is allowed");
        rx.call_ended(d(2101));
        assert!(rx.violations.list[0]
            .starts_with("at 2.101 s: no frame from the server for 2.001 s before the call ended"));
        let checked = rx.into_checked();
        assert_eq!(checked.violations.len(), 1);
        assert_eq!(checked.arrivals, [d(100)]);
        assert_eq!(checked.received, [7; 320]);
    }

    #[test]
    fn drained_audio_is_whole_frames_and_the_rest_waits() {
        let a = audiosocket::encode(0x10, &[1; 320]).unwrap();
        let b = audiosocket::encode(0x10, &[2; 320]).unwrap();
        let mut rx = Checker::with_capacity(SLIN_RATE_HZ, 4, 1024);
        let mut bytes = a.clone();
        bytes.extend_from_slice(&b[..100]);
        rx.feed(&bytes, d(20), true);
        let mut seen = Vec::new();
        rx.drain_audio(|audio| seen.push(audio.to_vec()));
        rx.feed(&b[100..], d(21), true);
        rx.feed(&[0x03, 0, 1, b'5'], d(22), true); // not audio: nothing to drain
        rx.drain_audio(|audio| seen.push(audio.to_vec()));
        rx.drain_audio(|audio| seen.push(audio.to_vec()));
        assert_eq!(seen, [vec![1; 320], vec![2; 320], vec![]]);
        let checked = rx.into_checked();
        assert_eq!(checked.arrivals, [d(20), d(21)]);
        assert!(checked.received.is_empty(), "drained audio is not kept");
    }

    fn slin16(fill: u8, len: usize) -> Vec<u8> {
        audiosocket::encode(0x12, &vec![fill; len]).unwrap()
    }

    fn slin(len: usize) -> Vec<u8> {
        audiosocket::encode(0x10, &vec![0; len]).unwrap()
    }

    #[test]
    fn a_wideband_answer_may_start_with_8_khz_silence() {
        let mut rx = Checker::with_capacity(16_000, 8, 8 * 640);
        for k in 0..3 {
            rx.feed(&slin(320), d(20 * k), true);
        }
        for k in 3..8 {
            rx.feed(&slin16(k as u8, 640), d(20 * k), true);
        }
        let checked = rx.into_checked();
        assert!(checked.violations.is_empty(), "{:?}", checked.violations);
        assert_eq!(checked.arrivals.len(), 8);
        assert_eq!(checked.prelude_frames, 3);
        // The prelude is stretched to 16 kHz: one stream, 640 bytes per frame.
        assert_eq!(checked.received.len(), 8 * 640);
        assert!(checked.received[..3 * 640].iter().all(|&b| b == 0));
        for k in 3..8 {
            assert!(checked.received[k * 640..(k + 1) * 640]
                .iter()
                .all(|&b| b == k as u8));
        }
    }

    #[test]
    fn after_the_first_wideband_frame_only_its_kind_and_size_pass() {
        let mut rx = Checker::with_capacity(16_000, 8, 8 * 640);
        rx.feed(&slin16(1, 640), d(20), true);
        rx.feed(&slin(320), d(40), true);
        rx.feed(&slin16(1, 320), d(60), true);
        rx.feed(&audiosocket::encode(0x13, &[0; 960]).unwrap(), d(80), true);
        rx.feed(&slin16(1, 640), d(100), true);
        let checked = rx.into_checked();
        let v = &checked.violations;
        assert_eq!(v.len(), 3, "{v:?}");
        assert_eq!(
            v[0],
            "at 0.040 s: slin frame of 320 bytes to the caller (16 kHz, kind 0x12) after the \
             first slin16 frame: it needs slin16 frames of 640 bytes (20 ms)"
        );
        assert_eq!(
            v[1],
            "at 0.060 s: slin16 frame of 320 bytes to the caller (16 kHz, kind 0x12): it needs \
             slin16 frames of 640 bytes (20 ms)"
        );
        assert_eq!(
            v[2],
            "at 0.080 s: frame of kind 0x13 (slin24, 960 bytes) to the caller (16 kHz, kind 0x12): \
             it needs slin16 frames of 640 bytes (20 ms)"
        );
        // Only 8 kHz before the first 0x12 frame is stretched; the rest is kept as it came.
        assert_eq!(checked.prelude_frames, 0);
        assert_eq!(checked.arrivals.len(), 5);
    }

    #[test]
    fn before_the_first_wideband_frame_only_20_ms_of_slin_passes() {
        let mut rx = Checker::with_capacity(48_000, 4, 4 * 1920);
        rx.feed(&slin(160), d(20), true);
        rx.feed(&audiosocket::encode(0x12, &[0; 640]).unwrap(), d(40), true);
        rx.feed(&slin(320), d(60), true);
        // An odd frame breaks Asterisk's rule; the rate rule does not add a second line.
        rx.feed(&audiosocket::encode(0x16, &[0; 1919]).unwrap(), d(80), true);
        let v = rx.into_checked().violations;
        assert_eq!(v.len(), 3, "{v:?}");
        assert!(
            v[0].contains(
                "slin frame of 160 bytes to the caller (48 kHz, kind 0x16) before the \
                 first slin48 frame: until then only 20 ms of 8 kHz (320 bytes)"
            ),
            "{}",
            v[0]
        );
        assert!(
            v[1].contains(
                "kind 0x12 (slin16, 640 bytes) to the caller (48 kHz, kind 0x16): it \
                 needs slin48 frames of 1920 bytes (20 ms), or 320-byte slin before the first"
            ),
            "{}",
            v[1]
        );
        assert!(v[2].contains("odd length 1919"), "{}", v[2]);
    }

    #[test]
    fn an_8_khz_caller_gets_slin_of_any_length_and_no_other_kind() {
        let mut rx = Checker::with_capacity(SLIN_RATE_HZ, 4, 4 * 320);
        rx.feed(&slin(320), d(20), true);
        rx.feed(&slin(160), d(40), true);
        rx.feed(&slin16(0, 640), d(60), true);
        let checked = rx.into_checked();
        assert_eq!(checked.violations.len(), 1, "{:?}", checked.violations);
        assert!(checked.violations[0].contains(
            "frame of kind 0x12 (slin16, 640 bytes) to the caller (8 kHz, kind 0x10): it needs \
             slin frames of 320 bytes (20 ms)"
        ));
        assert_eq!(checked.prelude_frames, 0);
        assert_eq!(checked.received.len(), 320 + 160 + 640);
    }

    #[test]
    fn stretch_keeps_the_duration() {
        let pcm: Vec<u8> = [1i16, 2, -3].iter().flat_map(|s| s.to_le_bytes()).collect();
        let doubled: Vec<u8> = [1i16, 1, 2, 2, -3, -3]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        assert_eq!(stretch(&pcm, 8_000, 16_000), doubled);
        assert_eq!(stretch(&[0; 320], 8_000, 44_100).len(), 1764);
        assert_eq!(stretch(&[0; 320], 8_000, 192_000).len(), 7680);
        assert_eq!(stretch(&[7, 0, 9], 8_000, 16_000), [7, 0, 7, 0]);
    }

    #[test]
    fn a_prelude_past_a_second_is_reported_once() {
        let mut rx = Checker::with_capacity(16_000, 64, 64 * 640);
        for k in 0..60 {
            rx.feed(&slin(320), d(20 * k), true);
        }
        let checked = rx.into_checked();
        assert_eq!(checked.prelude_frames, 60);
        assert_eq!(checked.violations.len(), 1, "{:?}", checked.violations);
        assert_eq!(
            checked.violations[0],
            "at 1.020 s: still 8 kHz slin 1.020 s after the UUID, though the caller sends \
             slin16 from the start: the server must answer in slin16 (kind 0x12) once it has \
             the caller's first frame"
        );
        // Answered in time: nothing; an 8 kHz caller has no prelude.
        let mut rx = Checker::with_capacity(16_000, 64, 64 * 640);
        rx.feed(&slin(320), d(999), true);
        rx.feed(&slin16(1, 640), d(1000), true);
        rx.feed(&slin16(1, 640), d(1500), true);
        assert!(rx.into_checked().violations.is_empty());
        let mut rx = Checker::with_capacity(SLIN_RATE_HZ, 64, 64 * 320);
        rx.feed(&slin(320), d(1500), true);
        assert!(rx.into_checked().violations.is_empty());
    }
}
