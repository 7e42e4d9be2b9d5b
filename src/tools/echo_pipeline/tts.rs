//! The fake TTS: `{"text": …}` in, raw s16le 8 kHz mono out, streamed chunked. The audio is
//! a tone, [`MS_PER_CHAR`] per character (at most [`MAX_AUDIO`]), whose pitch is
//! `300 + 50 × (n % 10)` Hz for the call's `n`-th request, so a test can tell from the audio
//! which sentence is playing and in which order they came.

use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::wire::ChunkedWriter;
use super::{inject, outcome, Conn, PipelineEvent, RequestError, Shared};
use crate::http::parse::RequestHead;
use crate::sys::Printable;

/// The services' audio rate: 8 kHz, as the upstream connectors speak.
pub(super) const RATE_HZ: u32 = 8_000;

/// Audio per character of text: a sentence lasts about as long as spoken.
pub(super) const MS_PER_CHAR: u64 = 50;

/// Longest answer: a paragraph sent as one "sentence" must not stream for minutes.
pub(super) const MAX_AUDIO: Duration = Duration::from_secs(10);

/// Loud enough for any level meter, far from clipping.
const AMPLITUDE: f64 = 8_000.0;

/// Shortest chunk: one 20 ms frame.
const MIN_CHUNK: Duration = Duration::from_millis(20);

/// The server's send buffer for TTS answers. Small, so a client that stops reading and
/// leaves (a barge-in) makes a pending write fail and is reported as cancelled, instead of
/// the whole answer vanishing into kernel buffers; 16 KiB is still a second of audio.
const SEND_BUFFER: usize = 16 * 1024;

/// The tone's pitch for the call's `n`-th request.
pub(super) fn tone_hz(n: u64) -> u32 {
    300 + 50 * (n % 10) as u32
}

/// Samples of audio for `text`.
pub(super) fn samples_for(text: &str) -> usize {
    let per_char = (u64::from(RATE_HZ) * MS_PER_CHAR / 1000) as usize;
    let max = (u64::from(RATE_HZ) * MAX_AUDIO.as_secs()) as usize;
    text.chars().count().saturating_mul(per_char).min(max)
}

/// Samples `from..to` of a tone at `hz`, s16le: any cut of the stream joins without a click.
pub(super) fn tone(hz: u32, from: usize, to: usize) -> Vec<u8> {
    let step = 2.0 * std::f64::consts::PI * f64::from(hz) / f64::from(RATE_HZ);
    (from..to)
        .flat_map(|i| ((AMPLITUDE * (step * i as f64).sin()).round() as i16).to_le_bytes())
        .collect()
}

/// A xorshift64 generator: enough for delay jitter, no crate needed.
pub(super) struct XorShift(u64);

impl XorShift {
    /// Seeded from the clock; never zero (zero is xorshift's fixed point).
    pub(super) fn seeded() -> XorShift {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        XorShift(nanos | 1)
    }

    pub(super) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A duration from zero to `max`, inclusive.
    pub(super) fn up_to(&mut self, max: Duration) -> Duration {
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.next() % nanos.saturating_add(1))
    }
}

pub(super) fn serve(
    conn: &mut Conn,
    head: &RequestHead,
    uuid: &str,
    shared: &Shared,
) -> Result<(), RequestError> {
    let opts = &shared.opts;
    let body = conn.json_body(head)?;
    let Some(text) = body.get("text").and_then(Value::as_str) else {
        return Err(RequestError::Json("expected {\"text\": \"…\"}".into()));
    };
    let n = shared.next_tts(uuid);
    log::info!(
        "[{}] Echo pipeline: TTS {n}: {}",
        Printable(uuid),
        Printable(text)
    );
    shared.events.emit(|| PipelineEvent::TtsRequest {
        uuid: uuid.to_owned(),
        text: text.to_owned(),
        n,
    });
    if let Some(status) = opts.tts_status {
        return inject(conn, uuid, status, "tts_status");
    }
    if let Some(fail) = &opts.tts_fail_text {
        if text.contains(fail.as_str()) {
            return inject(conn, uuid, 500, "tts_fail_text");
        }
    }
    let jitter = crate::sys::lock(&shared.rng).up_to(opts.tts_jitter);
    // Playing a slow synthesiser, not waiting for anything.
    thread::sleep(opts.tts_first_byte + jitter);
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(&conn.stream, SEND_BUFFER);
    let total = samples_for(text);
    let chunk = opts.tts_chunk.max(MIN_CHUNK);
    let per_chunk = (chunk.as_micros() * u128::from(RATE_HZ) / 1_000_000) as usize;
    let hz = tone_hz(n);
    let mut bytes = 0;
    let sent = ChunkedWriter::start(&conn.stream, "audio/l16").and_then(|mut out| {
        let mut at = 0;
        while at < total {
            if at > 0 {
                thread::sleep(opts.tts_gap);
            }
            let end = (at + per_chunk).min(total);
            let written = out.chunk(&tone(hz, at, end));
            bytes = out.bytes;
            written?;
            at = end;
        }
        out.finish()
    });
    let cancelled = sent.is_err();
    log::info!(
        "[{}] Echo pipeline: TTS {n} {} ({bytes} bytes of {hz} Hz)",
        Printable(uuid),
        outcome(cancelled)
    );
    shared.events.emit(|| PipelineEvent::TtsDone {
        uuid: uuid.to_owned(),
        n,
        cancelled,
        bytes,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{PipelineOptions, TTS_PATH};
    use super::*;
    use std::time::Instant;

    fn say(server: &super::super::EchoPipeline, uuid: &str, text: &str) -> Response {
        let body = serde_json::json!({ "text": text }).to_string();
        Response::read(send(server, TTS_PATH, uuid, body.as_bytes(), false))
    }

    #[test]
    fn audio_lasts_50_ms_a_character_up_to_10_s_and_pitch_follows_the_count() {
        assert_eq!(samples_for("Hello."), 6 * 400);
        assert_eq!(samples_for("héllo"), 5 * 400, "characters, not bytes");
        assert_eq!(samples_for(&"a".repeat(1_000)), 80_000);
        assert_eq!([1, 2, 10, 11].map(tone_hz), [350, 400, 300, 350]);
        // A cut stream joins up: two halves are the whole.
        assert_eq!(
            [tone(350, 0, 10), tone(350, 10, 30)].concat(),
            tone(350, 0, 30)
        );
        // 350 Hz over one second: 700 sign changes.
        let samples: Vec<i16> = tone(350, 0, 8_000)
            .chunks_exact(2)
            .map(|s| i16::from_le_bytes([s[0], s[1]]))
            .collect();
        let crossings = samples
            .windows(2)
            .filter(|w| (w[0] < 0) != (w[1] < 0))
            .count();
        assert!((699..=701).contains(&crossings), "{crossings}");
    }

    #[test]
    fn jitter_stays_within_its_bound() {
        let mut rng = XorShift::seeded();
        let max = Duration::from_millis(30);
        let draws: Vec<Duration> = (0..1_000).map(|_| rng.up_to(max)).collect();
        assert!(draws.iter().all(|d| *d <= max));
        assert!(draws.iter().any(|d| *d < max / 4) && draws.iter().any(|d| *d > max * 3 / 4));
        assert_eq!(rng.up_to(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn a_sentence_streams_as_chunked_l16_counted_per_call() {
        let (server, events) = start(PipelineOptions {
            tts_first_byte: Duration::from_millis(40),
            ..Default::default()
        });
        let asked = Instant::now();
        let mut r = say(&server, "call-1", "Hello.");
        assert!(asked.elapsed() >= Duration::from_millis(40));
        assert_eq!(
            (r.status, r.header("content-type")),
            (200, Some("audio/l16"))
        );
        let chunks = r.chunks();
        r.assert_closed();
        let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(sizes, [1_600, 1_600, 1_600], "100 ms chunks of 300 ms");
        assert_eq!(chunks.concat(), tone(tone_hz(1), 0, 2_400));
        let uuid = || "call-1".to_owned();
        let text = "Hello.".to_owned();
        assert_eq!(
            next_event(&events),
            PipelineEvent::TtsRequest {
                uuid: uuid(),
                text,
                n: 1
            }
        );
        let done = PipelineEvent::TtsDone {
            uuid: uuid(),
            n: 1,
            cancelled: false,
            bytes: 4_800,
        };
        assert_eq!(next_event(&events), done);

        // The call's second sentence has the next pitch; another call starts over.
        assert_eq!(
            say(&server, "call-1", "Hi").chunks().concat(),
            tone(tone_hz(2), 0, 800)
        );
        assert_eq!(
            say(&server, "call-2", "Hi").chunks().concat(),
            tone(tone_hz(1), 0, 800)
        );
    }

    #[test]
    fn a_client_that_leaves_mid_stream_is_recorded_as_cancelled() {
        let (server, events) = start(PipelineOptions::default());
        // Ten seconds of audio (160 KB): far more than the socket buffers hold.
        let mut r = say(&server, "u", &"x".repeat(300));
        assert!(r.chunk().is_some());
        drop(r); // unread data: the close resets the connection
        let done = std::iter::from_fn(|| events.recv_timeout(WAIT).ok())
            .find(|e| matches!(e, PipelineEvent::TtsDone { .. }));
        let Some(PipelineEvent::TtsDone {
            cancelled, bytes, ..
        }) = done
        else {
            panic!("no TtsDone: {done:?}");
        };
        assert!(cancelled);
        assert!(bytes < 160_000, "{bytes}");
    }

    #[test]
    fn injected_failures_answer_json_errors() {
        let (server, events) = start(PipelineOptions {
            tts_fail_text: Some("boom".into()),
            ..Default::default()
        });
        let (status, error) = error_of(say(&server, "u", "It goes boom."));
        assert_eq!(status, 500);
        assert!(error.contains("tts_fail_text"), "{error}");
        assert_eq!(say(&server, "u", "Fine.").chunks().concat().len(), 5 * 800);
        let requests: Vec<u64> = std::iter::from_fn(|| events.recv_timeout(WAIT).ok())
            .take(3)
            .filter_map(|e| match e {
                PipelineEvent::TtsRequest { n, .. } => Some(n),
                _ => None,
            })
            .collect();
        assert_eq!(requests, [1, 2], "a failed sentence still counts");

        let (server, _) = start(PipelineOptions {
            tts_status: Some(503),
            ..Default::default()
        });
        assert_eq!(error_of(say(&server, "u", "Anything.")).0, 503);
    }
}
