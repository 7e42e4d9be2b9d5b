//! The speech-to-text stream: one `POST ASR_URL` per call whose chunked body is the caller's
//! audio as it arrives, and whose answer, on the same connection, streams back one final
//! transcript per chunk (docs/pipeline.md §2).
//!
//! A helper thread connects, sends the head, then reads the answer for as long as it lasts;
//! the call's thread writes the audio chunks itself, without blocking
//! ([`super::upload::Upload`]), so a slow service costs dropped audio, never a late frame to
//! the caller.

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::client::{Cancel, Piece, Request, Response, Service, ServiceError};
use super::shared::{Msg, Shared, StreamEnd};
use super::upload::Upload;

/// Longest transcript taken from one chunk: a chunk is a sentence or two.
const MAX_TRANSCRIPT: usize = 16 * 1024;

/// One connection to the service, from its thread's start to its join.
pub struct AsrStream {
    pub attempt: u32,
    pub cancel: Arc<Cancel>,
    thread: Option<JoinHandle<()>>,
}

impl AsrStream {
    /// Starts connecting (attempt `attempt` of the call) on a helper thread.
    pub fn start(shared: &Arc<Shared>, attempt: u32) -> io::Result<AsrStream> {
        let cancel = Arc::new(Cancel::default());
        let thread = {
            let (shared, cancel) = (shared.clone(), cancel.clone());
            let job = shared.clone();
            job.spawn("asr", move || run(&shared, attempt, &cancel))?
        };
        Ok(AsrStream {
            attempt,
            cancel,
            thread: Some(thread),
        })
    }

    /// Cuts the connection and waits for its thread.
    pub fn stop(mut self) {
        self.cancel.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread: connect, announce the upload socket, then read transcripts until the
/// answer ends; the end (and why) is reported too.
fn run(shared: &Shared, attempt: u32, cancel: &Cancel) {
    let config = &shared.config;
    let request = Request {
        service: Service::Asr,
        url: &config.asr_url,
        uuid: &shared.uuid,
        budgets: shared.budgets(),
        cancel,
    };
    let result = stream(shared, &request, attempt);
    if !matches!(result, Err(ServiceError::Cancelled)) {
        shared.send(Msg::AsrEnded { attempt, result });
    }
}

fn stream(shared: &Shared, request: &Request<'_>, attempt: u32) -> StreamEnd {
    let (socket, sent) = request.send("audio/l16", None)?;
    let upload = socket.try_clone().map_err(|e| ServiceError::Broken {
        service: Service::Asr,
        url: request.url.url.clone(),
        why: format!("cannot share the socket: {e}"),
    })?;
    shared.send(Msg::AsrUp {
        attempt,
        upload: Upload::new(upload),
    });
    let mut response = Response::read(request, socket, sent, false)?;
    let mut text = Vec::new();
    let mut transcripts = 0;
    loop {
        match response.next_piece()? {
            Piece::Data { bytes, chunk_end } => {
                if text.len() + bytes.len() <= MAX_TRANSCRIPT {
                    text.extend_from_slice(&bytes);
                }
                // Without chunks (a body that ends with the connection), each read is one.
                if chunk_end || !response.is_chunked() {
                    transcripts += deliver(shared, attempt, &std::mem::take(&mut text));
                }
            }
            Piece::End => {
                transcripts += deliver(shared, attempt, &text);
                return Ok(transcripts);
            }
        }
    }
}

/// Sends each non-empty line of a chunk as a transcript; how many it sent.
fn deliver(shared: &Shared, attempt: u32, chunk: &[u8]) -> u32 {
    let mut n = 0;
    for line in String::from_utf8_lossy(chunk).lines() {
        let line = line.trim();
        if !line.is_empty() {
            shared.send(Msg::Transcript {
                attempt,
                text: line.to_string(),
            });
            n += 1;
        }
    }
    n
}
