//! The fake ASR: one long-lived `POST` per call, caller audio (s16le, 8 kHz, mono) uploaded
//! chunked for the whole call, transcripts written back on the same connection while the
//! upload goes on. A transcript is due after each `transcript_every` of *speech* (20 ms
//! blocks louder than [`SILENCE_RMS`]), so a test can make one appear by sending a tone and
//! none by sending silence.

use std::io::Read;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use super::wire::{BodyDecoder, ChunkedWriter};
use super::{inject, Conn, PipelineEvent, RequestError, Shared, MAX_HEAD, READ_SIZE};
use crate::http::parse::RequestHead;
use crate::sys::Printable;

/// One block of the speech meter: a 20 ms frame of 8 kHz s16le, as Asterisk sends them.
pub(super) const BLOCK_BYTES: usize = 320;
const BLOCK: Duration = Duration::from_millis(20);

/// RMS (of full scale 32767) above which a block counts as speech: about -44 dBFS, above the
/// few units of G.711 idle noise and far below any voice or test tone.
pub(super) const SILENCE_RMS: f64 = 200.0;

/// Caller audio per [`PipelineEvent::AsrAudio`]: one second at 8 kHz.
const AUDIO_REPORT_BYTES: usize = 16_000;

/// A call sends 50 frames a second; this long without a byte is a client that went away.
const IDLE: Duration = Duration::from_secs(60);

/// After the response ends, what the client still sends is read and dropped for this long
/// before closing, so closing with unread bytes does not reset the connection before the
/// client has read the end of the response.
const LINGER: Duration = Duration::from_millis(500);

/// Counts speech in caller audio and says when a transcript is due. Pure: bytes in, counts
/// out.
pub(super) struct SpeechMeter {
    /// The start of a block not yet complete.
    partial: Vec<u8>,
    /// Speech blocks since the last transcript.
    speech_blocks: u64,
    blocks_per_transcript: u64,
}

impl SpeechMeter {
    pub(super) fn new(transcript_every: Duration) -> SpeechMeter {
        let blocks = (transcript_every.as_micros() / BLOCK.as_micros()).max(1);
        SpeechMeter {
            partial: Vec::with_capacity(BLOCK_BYTES),
            speech_blocks: 0,
            blocks_per_transcript: u64::try_from(blocks).unwrap_or(u64::MAX),
        }
    }

    /// Takes `pcm` (any length, split anywhere); returns how many transcripts are now due.
    pub(super) fn push(&mut self, mut pcm: &[u8]) -> usize {
        let mut due = 0;
        while !pcm.is_empty() {
            let take = (BLOCK_BYTES - self.partial.len()).min(pcm.len());
            self.partial.extend_from_slice(&pcm[..take]);
            pcm = &pcm[take..];
            if self.partial.len() == BLOCK_BYTES {
                if rms(&self.partial) > SILENCE_RMS {
                    self.speech_blocks += 1;
                    if self.speech_blocks == self.blocks_per_transcript {
                        self.speech_blocks = 0;
                        due += 1;
                    }
                }
                self.partial.clear();
            }
        }
        due
    }
}

/// Root mean square of s16le samples (an odd last byte is ignored).
pub(super) fn rms(pcm: &[u8]) -> f64 {
    let samples = pcm.chunks_exact(2);
    let n = samples.len();
    if n == 0 {
        return 0.0;
    }
    let sum: f64 = samples
        .map(|s| f64::from(i16::from_le_bytes([s[0], s[1]])).powi(2))
        .sum();
    (sum / n as f64).sqrt()
}

/// The `k`-th transcript (from 1): the script cycled, or "Transcript k".
pub(super) fn transcript_text(script: &[String], k: u64) -> String {
    match script.len() {
        0 => format!("Transcript {k}"),
        len => script[((k - 1) % len as u64) as usize].clone(),
    }
}

/// Why the ASR response ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The upload ended (its last chunk, or all its `Content-Length`).
    Uploaded,
    Closed,
    /// `asr_close_after` passed.
    CutShort,
    Idle,
    Failed(String),
}

pub(super) fn serve(
    conn: &mut Conn,
    head: &RequestHead,
    uuid: &str,
    shared: &Shared,
) -> Result<(), RequestError> {
    let opts = &shared.opts;
    if let Some(status) = opts.asr_status {
        inject(conn, uuid, status, "asr_status")?;
        // The upload may be under way: closing on it would reset the answer away.
        linger(conn);
        return Ok(());
    }
    let started = Instant::now();
    // A client gone before the head is written gets no error answer either.
    let mut out =
        ChunkedWriter::start(&conn.stream, "text/event-stream").map_err(|_| RequestError::Gone)?;
    log::info!("[{}] Echo pipeline: ASR stream opened", Printable(uuid));
    shared.events.emit(|| PipelineEvent::AsrOpened {
        uuid: uuid.to_owned(),
    });
    let cut_at = opts.asr_close_after.map(|after| started + after);
    let mut decoder = BodyDecoder::new(head.framing);
    let mut meter = SpeechMeter::new(opts.transcript_every);
    let (mut pcm, mut total, mut unreported, mut spoken) = (Vec::new(), 0u64, 0usize, 0u64);
    let end = loop {
        let done = match decoder.decode(&mut conn.buf, &mut pcm, MAX_HEAD) {
            Ok(done) => done,
            Err(e) => break End::Failed(e.to_string()),
        };
        total += pcm.len() as u64;
        unreported += pcm.len();
        if unreported >= AUDIO_REPORT_BYTES {
            let bytes = std::mem::take(&mut unreported);
            let uuid = uuid.to_owned();
            shared
                .events
                .emit(|| PipelineEvent::AsrAudio { uuid, bytes });
        }
        let mut failed = None;
        for _ in 0..meter.push(&pcm) {
            spoken += 1;
            let text = transcript_text(&opts.transcripts, spoken);
            if let Err(e) = out.chunk(format!("{text}\n").as_bytes()) {
                failed = Some(e.to_string());
                break;
            }
            log::info!(
                "[{}] Echo pipeline: transcript {}",
                Printable(uuid),
                Printable(&text)
            );
            let at = Instant::now();
            let uuid = uuid.to_owned();
            shared
                .events
                .emit(|| PipelineEvent::Transcript { uuid, text, at });
        }
        pcm.clear();
        if let Some(e) = failed {
            break End::Failed(e);
        }
        if done {
            break End::Uploaded;
        }
        let now = Instant::now();
        let wait = match cut_at {
            Some(at) if at <= now => break End::CutShort,
            Some(at) => IDLE.min(at - now),
            None => IDLE,
        };
        if let Err(e) = conn.stream.set_read_timeout(Some(wait)) {
            break End::Failed(e.to_string());
        }
        match super::fill(&conn.stream, &mut conn.buf) {
            Ok(true) => {}
            Ok(false) => break End::Closed,
            Err(e) if super::is_timeout(&e) => {
                if cut_at.is_some_and(|at| at <= Instant::now()) {
                    break End::CutShort;
                }
                break End::Idle;
            }
            Err(e) => break End::Failed(e.to_string()),
        }
    };
    let _ = out.finish();
    log::info!(
        "[{}] Echo pipeline: ASR stream ended ({end:?}) after {total} bytes of audio",
        Printable(uuid)
    );
    shared.events.emit(|| PipelineEvent::AsrClosed {
        uuid: uuid.to_owned(),
        bytes: total,
    });
    if end != End::Closed {
        linger(conn);
    }
    Ok(())
}

/// Half-closes and drops what the client still sends, for at most [`LINGER`].
fn linger(conn: &Conn) {
    let _ = conn.stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut sink = [0u8; READ_SIZE];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || conn.stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match (&conn.stream).read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{PipelineOptions, ASR_PATH};
    use super::*;
    use std::net::TcpStream;

    /// `ms` of a loud 440 Hz tone, s16le 8 kHz.
    fn tone_ms(ms: usize) -> Vec<u8> {
        super::super::tts::tone(440, 0, ms * 8)
    }

    #[test]
    fn the_meter_counts_speech_not_silence_however_the_audio_is_cut() {
        let loud = tone_ms(2_100);
        for step in [1, 7, 320, 333, 4_096, loud.len()] {
            let mut meter = SpeechMeter::new(Duration::from_millis(1000));
            let due: usize = loud.chunks(step).map(|c| meter.push(c)).sum();
            assert_eq!(due, 2, "step {step}");
        }
        let mut meter = SpeechMeter::new(Duration::from_millis(1000));
        assert_eq!(meter.push(&vec![0; 16_000 * 3]), 0);
        // Idle noise of a few units is silence too.
        let hiss: Vec<u8> = (0..24_000i16)
            .flat_map(|i| (i % 9 - 4).to_le_bytes())
            .collect();
        assert_eq!(meter.push(&hiss), 0);
        // Silence between speech neither counts nor resets what was heard.
        assert_eq!(meter.push(&tone_ms(600)), 0);
        assert_eq!(meter.push(&vec![0; 8_000]), 0);
        assert_eq!(meter.push(&tone_ms(400)), 1);
        assert!(rms(&tone_ms(20)) > 5_000.0);
    }

    #[test]
    fn transcripts_follow_the_script_cycled() {
        assert_eq!(transcript_text(&[], 3), "Transcript 3");
        let script = ["a".to_owned(), "b".to_owned()];
        let texts: Vec<String> = (1..=3).map(|k| transcript_text(&script, k)).collect();
        assert_eq!(texts, ["a", "b", "a"]);
    }

    /// Uploads `audio` in 20 ms chunks.
    fn upload(s: &mut TcpStream, audio: &[u8]) {
        for frame in audio.chunks(BLOCK_BYTES) {
            write_chunk(s, frame);
        }
    }

    #[test]
    fn a_transcript_per_second_of_speech_while_the_upload_goes_on() {
        let (server, events) = start(PipelineOptions::default());
        let mut r = Response::read(send(&server, ASR_PATH, "call-1", b"", true));
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/event-stream"));
        // Full duplex: the first transcript comes before the upload ends.
        upload(r.stream(), &tone_ms(1_100));
        assert_eq!(r.chunk().as_deref(), Some(&b"Transcript 1\n"[..]));
        upload(r.stream(), &tone_ms(1_000));
        upload(r.stream(), &vec![0; 16_000 * 2]);
        write_chunk(r.stream(), b"");
        assert_eq!(r.chunks(), [b"Transcript 2\n".to_vec()]);
        r.assert_closed();

        let uuid = || "call-1".to_owned();
        assert_eq!(
            next_event(&events),
            PipelineEvent::AsrOpened { uuid: uuid() }
        );
        let (mut texts, mut reported, mut closed) = (Vec::new(), 0, None);
        while closed.is_none() {
            match next_event(&events) {
                PipelineEvent::Transcript { uuid, text, .. } => {
                    assert_eq!(uuid, "call-1");
                    texts.push(text);
                }
                PipelineEvent::AsrAudio { bytes, .. } => reported += bytes,
                PipelineEvent::AsrClosed { uuid, bytes } => closed = Some((uuid, bytes)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(texts, ["Transcript 1", "Transcript 2"]);
        let sent = 2 * 8 * 2_100 + 16_000 * 2;
        assert_eq!(closed, Some((uuid(), sent as u64)));
        assert!(
            reported <= sent && reported > sent - AUDIO_REPORT_BYTES,
            "{reported}"
        );
    }

    #[test]
    fn a_content_length_upload_of_silence_gets_no_transcript() {
        let (server, events) = start(PipelineOptions::default());
        let silence = vec![0; 16_000 * 2];
        let mut r = Response::read(send(&server, ASR_PATH, "quiet", &silence, false));
        assert_eq!(r.chunks(), Vec::<Vec<u8>>::new());
        r.assert_closed();
        let seen: Vec<PipelineEvent> = std::iter::from_fn(|| events.recv_timeout(WAIT).ok())
            .take_while(|e| !matches!(e, PipelineEvent::AsrClosed { .. }))
            .collect();
        assert!(
            !seen
                .iter()
                .any(|e| matches!(e, PipelineEvent::Transcript { .. })),
            "{seen:?}"
        );
    }

    #[test]
    fn a_client_that_closes_ends_the_stream() {
        let (server, events) = start(PipelineOptions {
            transcript_every: Duration::from_millis(200),
            transcripts: vec!["hello".into()],
            ..Default::default()
        });
        let mut r = Response::read(send(&server, ASR_PATH, "gone", b"", true));
        upload(r.stream(), &tone_ms(200));
        assert_eq!(r.chunk().as_deref(), Some(&b"hello\n"[..]));
        r.stream().shutdown(Shutdown::Write).unwrap();
        assert_eq!(r.chunks(), Vec::<Vec<u8>>::new());
        let closed = std::iter::from_fn(|| events.recv_timeout(WAIT).ok())
            .find(|e| matches!(e, PipelineEvent::AsrClosed { .. }));
        let bytes = 2 * 8 * 200;
        assert_eq!(
            closed,
            Some(PipelineEvent::AsrClosed {
                uuid: "gone".into(),
                bytes
            })
        );
    }

    #[test]
    fn asr_status_refuses_at_once_and_asr_close_after_cuts_the_stream() {
        let (server, events) = start(PipelineOptions {
            asr_status: Some(503),
            ..Default::default()
        });
        let (status, error) = error_of(Response::read(send(&server, ASR_PATH, "u", b"", true)));
        assert_eq!(status, 503);
        assert!(error.contains("asr_status"), "{error}");
        assert!(events.try_recv().is_err(), "a refused stream is not opened");

        let after = Duration::from_millis(150);
        let (server, events) = start(PipelineOptions {
            asr_close_after: Some(after),
            ..Default::default()
        });
        let started = Instant::now();
        let mut r = Response::read(send(&server, ASR_PATH, "u", b"", true));
        upload(r.stream(), &vec![0; 3_200]);
        // The response ends while the client is still uploading.
        assert_eq!(r.chunks(), Vec::<Vec<u8>>::new());
        assert!(started.elapsed() >= after);
        let closed = std::iter::from_fn(|| events.recv_timeout(WAIT).ok())
            .find(|e| matches!(e, PipelineEvent::AsrClosed { .. }));
        assert!(
            matches!(closed, Some(PipelineEvent::AsrClosed { bytes: 3_200, .. })),
            "{closed:?}"
        );
    }
}
