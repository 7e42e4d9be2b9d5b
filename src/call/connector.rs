//! The short-lived thread that reaches the agent, so the call's thread never blocks on a
//! name lookup, a connect, a TLS handshake or a WebSocket upgrade. It answers by the
//! `STS_CONNECT_TIMEOUT` deadline whatever the agent or the DNS does ([`agent::connect`]),
//! so neither the call nor its teardown waits longer (docs/sts.md §3.1).

use std::sync::Arc;
use std::thread;

use crossbeam_channel::Receiver;

use super::{CallContext, THREAD_STACK};
use crate::agent::{self, StsError, Ws};
use crate::sys::Bell;

/// The thread that connects to the agent: it sends its result, then rings the call's bell.
/// Joined as soon as the result is in, so its stack is not kept for the call.
pub struct Connector {
    result: Receiver<Result<Ws, StsError>>,
    thread: thread::JoinHandle<()>,
}

impl Connector {
    /// Starts connecting to `sts_url`; `None` if no thread could be started (logged).
    pub fn start(
        ctx: &CallContext,
        uuid: &str,
        sts_url: String,
        bell: &Arc<Bell>,
    ) -> Option<Connector> {
        log::info!(
            "[{uuid}] Connecting to STS WebSocket: {}",
            crate::config::mask_url(&sts_url)
        );
        let (tx, result) = crossbeam_channel::bounded(1);
        let (timeout, tls, bell) = (
            ctx.config.sts_connect_timeout,
            ctx.tls.clone(),
            bell.clone(),
        );
        let spawned = thread::Builder::new()
            .name(format!("sts-{}", &uuid[..8]))
            .stack_size(THREAD_STACK)
            .spawn(move || {
                let _ = tx.send(agent::connect(&sts_url, timeout, &tls));
                bell.ring();
            });
        match spawned {
            Ok(thread) => Some(Connector { result, thread }),
            Err(e) => {
                log::error!("[{uuid}] Cannot start the sts thread: {e}");
                None
            }
        }
    }

    /// The connection or why there is none, once the thread is done.
    pub fn result(&self) -> Option<Result<Ws, StsError>> {
        self.result.try_recv().ok()
    }

    /// Frees the thread once its result is taken.
    pub fn join(self) {
        let _ = self.thread.join();
    }

    /// Waits for the thread (at most `STS_CONNECT_TIMEOUT`: [`agent::connect`] returns by
    /// its deadline, leaving a hung name lookup behind); the connection if it made one.
    pub fn finish(self) -> Option<Ws> {
        let result = self.result.recv();
        let _ = self.thread.join();
        result.ok()?.ok()
    }
}
