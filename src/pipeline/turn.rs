//! One turn of the agent: the language model's answer to the caller's last words, spoken
//! sentence by sentence (docs/pipeline.md §3, §4).
//!
//! Two helper threads per turn. The model's thread reads its streamed answer and cuts it into
//! sentences as they complete; the speech thread sends each sentence to the text-to-speech
//! service in order and streams its audio to the call's thread as it arrives. So the first
//! sentence plays while the model is still writing, and a slow sentence never lets a later
//! one overtake it. A [`Cancel`] cuts both off at once (barge-in, a new transcript, hangup).

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use serde_json::json;

use super::client::{Cancel, Piece, Request, Response, Service, ServiceError};
use super::llm_stream::{request_body, LlmPiece, LlmStream, Message};
use super::shared::{Msg, Shared};
use super::speech_text::Sentences;
use crate::sys::Printable;

/// What the speech thread is given to say, in order.
enum Say {
    Sentence(String),
    /// Audio the model itself sent (`{"type":"audio"}`), s16le at 8 kHz.
    Audio(Vec<u8>),
}

/// A turn in flight.
pub struct Turn {
    pub id: u64,
    cancel: Arc<Cancel>,
    threads: Vec<JoinHandle<()>>,
    /// The sentences spoken so far (their audio started), for the history.
    pub spoken: Vec<String>,
    /// Some of its audio was handed to playout.
    pub audible: bool,
}

impl Turn {
    /// Asks the model to answer `history` (which ends with the caller's words), and speaks
    /// the answer. `None` if no thread could be started (logged).
    pub fn reply(shared: &Arc<Shared>, id: u64, history: &[Message]) -> Option<Turn> {
        let body = request_body(&shared.uuid, history);
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut turn = Turn::new(id);
        let cancel = turn.cancel.clone();
        let speech = turn.start_speech(shared, rx)?;
        turn.threads.push(speech);
        let model = {
            let shared2 = shared.clone();
            shared.spawn("llm", move || ask_model(&shared2, &cancel, body, tx))
        };
        match model {
            Ok(thread) => turn.threads.push(thread),
            Err(e) => {
                // The speech thread ends: its sender is gone with the closure.
                log::error!(
                    "[{}] Cannot start the language model thread: {e}",
                    shared.uuid
                );
                turn.stop();
                return None;
            }
        }
        Some(turn)
    }

    /// Speaks `text` (the greeting) without asking the model.
    pub fn say(shared: &Arc<Shared>, id: u64, text: &str) -> Option<Turn> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut sentences = Vec::new();
        let mut cutter = Sentences::new();
        cutter.push(text, &mut sentences);
        cutter.finish(&mut sentences);
        for sentence in sentences {
            let _ = tx.send(Say::Sentence(sentence));
        }
        drop(tx);
        let mut turn = Turn::new(id);
        let speech = turn.start_speech(shared, rx)?;
        turn.threads.push(speech);
        Some(turn)
    }

    fn new(id: u64) -> Turn {
        Turn {
            id,
            cancel: Arc::new(Cancel::default()),
            threads: Vec::new(),
            spoken: Vec::new(),
            audible: false,
        }
    }

    fn start_speech(&self, shared: &Arc<Shared>, rx: Receiver<Say>) -> Option<JoinHandle<()>> {
        let (shared2, cancel, id) = (shared.clone(), self.cancel.clone(), self.id);
        match shared.spawn("tts", move || speak(&shared2, &cancel, id, rx)) {
            Ok(thread) => Some(thread),
            Err(e) => {
                log::error!(
                    "[{}] Cannot start the text-to-speech thread: {e}",
                    shared.uuid
                );
                None
            }
        }
    }

    /// Cuts the turn's requests off (if still running) and waits for its threads.
    pub fn stop(&mut self) {
        self.cancel.cancel();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }

    /// The turn ended by itself: its threads are finishing; wait for them.
    pub fn join(&mut self) {
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The model's thread: the answer, cut into sentences for the speech thread.
fn ask_model(shared: &Shared, cancel: &Cancel, body: Vec<u8>, say: Sender<Say>) {
    let request = Request {
        service: Service::Llm,
        url: &shared.config.llm_url,
        uuid: &shared.uuid,
        budgets: shared.budgets(),
        cancel,
    };
    let mut answer = Answer {
        shared,
        stream: LlmStream::new(),
        sentences: Sentences::new(),
        pieces: Vec::new(),
        said: Vec::new(),
        say: &say,
    };
    if let Err(e) = answer.read(&request, &body) {
        if !matches!(e, ServiceError::Cancelled) {
            log::warn!(
                "[{}] {e}; the agent says nothing more this turn",
                shared.uuid
            );
        }
    }
}

/// The model's answer being read.
struct Answer<'a> {
    shared: &'a Shared,
    stream: LlmStream,
    sentences: Sentences,
    pieces: Vec<LlmPiece>,
    said: Vec<String>,
    say: &'a Sender<Say>,
}

impl Answer<'_> {
    fn read(&mut self, request: &Request<'_>, body: &[u8]) -> Result<(), ServiceError> {
        let (socket, sent) = request.send("application/json", Some(body))?;
        let mut response = Response::read(request, socket, sent, true)?;
        loop {
            match response.next_piece()? {
                Piece::Data { bytes, .. } => {
                    let parsed = self.stream.push(&bytes, &mut self.pieces);
                    self.take_pieces();
                    parsed.map_err(|e| self.invalid(request, e.to_string()))?;
                }
                Piece::End => {
                    let parsed = self.stream.finish(&mut self.pieces);
                    self.take_pieces();
                    parsed.map_err(|e| self.invalid(request, e.to_string()))?;
                    self.sentences.finish(&mut self.said);
                    self.pass_on();
                    return Ok(());
                }
            }
        }
    }

    fn invalid(&mut self, request: &Request<'_>, why: String) -> ServiceError {
        // What was complete is still spoken.
        self.sentences.finish(&mut self.said);
        self.pass_on();
        ServiceError::Broken {
            service: Service::Llm,
            url: request.url.url.clone(),
            why: format!("unusable answer: {why}"),
        }
    }

    fn take_pieces(&mut self) {
        let uuid = &self.shared.uuid;
        for piece in std::mem::take(&mut self.pieces) {
            match piece {
                LlmPiece::Text(text) => {
                    self.sentences.push(&text, &mut self.said);
                    self.pass_on();
                }
                LlmPiece::Audio(pcm) => {
                    // Keeps its place after the sentences before it.
                    self.sentences.finish(&mut self.said);
                    self.pass_on();
                    let _ = self.say.send(Say::Audio(pcm));
                }
                LlmPiece::Error(message) => {
                    log::warn!(
                        "[{uuid}] The language model reports: {}",
                        Printable(&message)
                    );
                }
                LlmPiece::Other { kind } => {
                    log::debug!(
                        "[{uuid}] Language model message of type {}",
                        Printable(&kind)
                    );
                }
            }
        }
    }

    fn pass_on(&mut self) {
        for sentence in self.said.drain(..) {
            let _ = self.say.send(Say::Sentence(sentence));
        }
    }
}

/// The speech thread: each sentence through the text-to-speech service, in order; its audio
/// to the call's thread as it arrives. A sentence that fails is logged and skipped.
fn speak(shared: &Shared, cancel: &Cancel, turn: u64, said: Receiver<Say>) {
    for item in said {
        if cancel.is_cancelled() {
            break;
        }
        match item {
            // Whole samples only: an odd byte would shift every later sentence's samples.
            Say::Audio(mut pcm) => {
                pcm.truncate(pcm.len() & !1);
                if !pcm.is_empty() {
                    shared.send(Msg::Audio { turn, pcm });
                }
            }
            Say::Sentence(text) => match synthesize(shared, cancel, turn, &text) {
                Ok(()) | Err(ServiceError::Cancelled) => {}
                Err(e) => log::warn!(
                    "[{}] {e}; skipping the sentence \"{}\"",
                    shared.uuid,
                    Printable(&text)
                ),
            },
        }
    }
    shared.send(Msg::TurnDone { turn });
}

fn synthesize(shared: &Shared, cancel: &Cancel, turn: u64, text: &str) -> Result<(), ServiceError> {
    let request = Request {
        service: Service::Tts,
        url: &shared.config.tts_url,
        uuid: &shared.uuid,
        budgets: shared.budgets(),
        cancel,
    };
    let body = json!({ "text": text }).to_string();
    let (socket, sent) = request.send("application/json", Some(body.as_bytes()))?;
    let mut response = Response::read(&request, socket, sent, true)?;
    shared.send(Msg::Spoken {
        turn,
        text: text.to_string(),
    });
    // Samples stay whole within a sentence; an odd last byte is dropped with it.
    let mut odd: Option<u8> = None;
    loop {
        match response.next_piece()? {
            Piece::Data { bytes, .. } => {
                // The piece is moved on as it is, unless a byte waits to go first.
                let mut pcm = match odd.take() {
                    None => bytes,
                    Some(first) => {
                        let mut joined = Vec::with_capacity(bytes.len() + 1);
                        joined.push(first);
                        joined.extend_from_slice(&bytes);
                        joined
                    }
                };
                if pcm.len() % 2 == 1 {
                    odd = pcm.pop();
                }
                if !pcm.is_empty() {
                    shared.send(Msg::Audio { turn, pcm });
                }
            }
            Piece::End => return Ok(()),
        }
    }
}
