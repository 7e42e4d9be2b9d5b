//! What a call's pipeline threads share with the call's thread: who they work for, the
//! configuration, and the way back (a channel and the bell that wakes the call's thread).

use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::Sender;

use super::client::{Budgets, ServiceError};
use super::upload::Upload;
use crate::config::PipelineConfig;
use crate::sys::Bell;

/// Stack of each helper thread: they parse HTTP and JSON, nothing deep.
const HELPER_STACK: usize = 128 * 1024;

/// How a speech-to-text stream ended: the transcripts it gave, or why it failed.
pub type StreamEnd = Result<u32, ServiceError>;

/// What a helper thread tells the call's thread.
pub enum Msg {
    /// Speech-to-text attempt `attempt` is connected: caller audio goes up this socket.
    AsrUp { attempt: u32, upload: Upload },
    /// A final transcript from attempt `attempt`.
    Transcript { attempt: u32, text: String },
    /// Attempt `attempt` ended: how many transcripts it gave, or why it failed.
    AsrEnded { attempt: u32, result: StreamEnd },
    /// Turn `turn` starts speaking this sentence (its audio follows).
    Spoken { turn: u64, text: String },
    /// Audio of turn `turn` to play, s16le at 8 kHz.
    Audio { turn: u64, pcm: Vec<u8> },
    /// Turn `turn` has nothing more to say; its threads are done.
    TurnDone { turn: u64 },
}

/// Shared by the call's pipeline threads.
pub struct Shared {
    pub uuid: String,
    pub config: Arc<PipelineConfig>,
    tx: Sender<Msg>,
    bell: Arc<Bell>,
}

impl Shared {
    pub fn new(
        uuid: &str,
        config: Arc<PipelineConfig>,
        tx: Sender<Msg>,
        bell: Arc<Bell>,
    ) -> Shared {
        Shared {
            uuid: uuid.to_string(),
            config,
            tx,
            bell,
        }
    }

    /// Hands `msg` to the call's thread and wakes it.
    pub fn send(&self, msg: Msg) {
        // The call's thread holds the receiver until every helper is joined.
        let _ = self.tx.send(msg);
        self.bell.ring();
    }

    /// The budgets of the language model and text-to-speech requests.
    pub fn budgets(&self) -> Budgets {
        Budgets {
            connect: self.config.connect_timeout,
            first_byte: self.config.first_byte_timeout,
            whole: self.config.response_timeout,
        }
    }

    /// Starts a helper thread named after its job and the call.
    pub fn spawn(
        &self,
        job: &str,
        run: impl FnOnce() + Send + 'static,
    ) -> io::Result<JoinHandle<()>> {
        thread::Builder::new()
            .name(format!("{job}-{}", &self.uuid[..self.uuid.len().min(8)]))
            .stack_size(HELPER_STACK)
            .spawn(run)
    }
}
