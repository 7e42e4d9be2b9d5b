//! Call events and their delivery to the operator's webhook receiver (docs/webhooks.md §5).
//!
//! Calls hand events to [`Webhooks::emit`], which never blocks: the event is serialised once,
//! filtered by `WEBHOOK_EVENTS` and offered to a bounded queue. A dispatcher thread keeps each
//! call's events in order and hands attempts to `WEBHOOK_WORKERS` worker threads; retries wait
//! in the dispatcher's timer heap, not in a worker. Whatever cannot be delivered goes to the
//! dead-letter file (see [`dead_letter`]), from which `avr-core webhooks replay` sends it again.
//! An event is never dropped silently: the only ways to lose one are a dead-letter file that
//! is unwritable or full, or its writer's queue overflowing; each is counted in
//! `avr_webhook_lost_total` and logged at error level (throttled when it can recur). The one
//! deliberate exception is the per-call DTMF rate limit ([`rate_limit`]), counted and logged
//! once per call.

pub mod cli;
mod client;
mod dead_letter;
mod dispatch;
pub mod policy;
pub mod rate_limit;
pub mod sign;
mod spool;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde_json::Value;

use crate::config::Config;
use crate::metrics::Metrics;
pub use crate::proto::event::{Event, EventKind};
use crate::sys::{lock, Throttle};
use client::{Client, Message};
use dead_letter::{DeadLetter, DeadLetterFile, PendingLetter};
use dispatch::Drain;
use rate_limit::{PerCallLimit, Verdict, DTMF_BURST, DTMF_PER_SECOND};
use spool::Compact;

/// `/call` waits for `call_initiated` at most this long in total, retries and backoff
/// included (docs/http.md §3.3 step 2), so a dead receiver cannot stall call setup.
pub const CALL_INITIATED_BUDGET: Duration = Duration::from_secs(10);

/// Stack of the webhook threads; rustls handshakes are the deepest thing they do.
const THREAD_STACK: usize = 512 * 1024;

/// Dead letters waiting for the writer thread. Each is a few hundred bytes, so this bounds the
/// memory a failing receiver can pin to about a megabyte; the writer appends thousands a
/// second, so only a stalled disk fills it. Past it, events are lost (counted, logged
/// throttled): a call's thread never waits for the disk.
const WRITER_QUEUE: usize = 4096;

/// A full writer queue is logged at most this often, with a count.
const WRITER_FULL_LOG_EVERY: Duration = Duration::from_secs(10);

/// How long `shutdown` waits for the spool's last compaction: a rewrite of what is left, at
/// most `WEBHOOK_QUEUE_SIZE` events, takes milliseconds; this only covers a stalled disk.
const SPOOL_COMPACT_WAIT: Duration = Duration::from_secs(5);

/// Where calls hand their events. A cheap `Clone` (one `Arc`), cloned into every call.
#[derive(Clone, Default)]
pub struct Webhooks {
    /// `None` when `WEBHOOK_URL` is unset: events are only logged at debug level.
    inner: Option<Arc<Inner>>,
}

struct Inner {
    outbox: Arc<Outbox>,
    /// Taken by `shutdown`: later events go straight to the dead-letter file. Emitters hold
    /// the read lock while sending, so once `shutdown` has taken it, every accepted event is
    /// already in the channel for the dispatcher to drain. The spool writer's input when the
    /// spool is open (it forwards each event once synced), else the dispatcher's.
    queue: RwLock<Option<Sender<Message>>>,
    control: Mutex<Option<Sender<Drain>>>,
    /// Asks the spool writer to compact at shutdown; `None` without a spool.
    spool: Mutex<Option<Sender<Compact>>>,
    /// The spool, to which `emit` appends each accepted event before handing it on; `None`
    /// without one (events then go from memory straight to the dispatcher).
    spooled: Option<Arc<spool::Spool>>,
    /// `WEBHOOK_EVENTS`: the kinds to send (at most six, so a scan is cheapest).
    wanted: Vec<EventKind>,
    /// The per-call `dtmf_digit` limit; a call's bucket goes with its `call_ended`.
    dtmf: Mutex<PerCallLimit>,
}

/// The sending side every webhook thread uses: the receiver's client, the queue's accounting,
/// the dead-letter writer and the running totals.
pub(crate) struct Outbox {
    client: Arc<Client>,
    metrics: Arc<Metrics>,
    max_attempts: u32,
    queue_size: usize,
    dead_letters: Arc<DeadLetterFile>,
    /// Accepted by `emit` and not yet delivered or dead-lettered: bounded by `queue_size`.
    depth: AtomicUsize,
    /// Bounded by [`WRITER_QUEUE`].
    writer: Sender<PendingLetter>,
    writer_full: Mutex<Throttle>,
    flush: Sender<Sender<()>>,
    /// `webhook-id`s of events delivered or dead-lettered, for the spool's `done` records
    /// (ignored for ids it does not hold). Unbounded, but each id is one accepted event.
    finished: Sender<String>,
    stats: Arc<Stats>,
}

/// Running totals since start, for the shutdown report.
#[derive(Default)]
struct Stats {
    delivered: AtomicU64,
    dead_lettered: AtomicU64,
    lost: AtomicU64,
}

impl Stats {
    fn snapshot(&self) -> ShutdownReport {
        ShutdownReport {
            delivered: self.delivered.load(Relaxed),
            dead_lettered: self.dead_lettered.load(Relaxed),
            lost: self.lost.load(Relaxed),
        }
    }
}

/// What became of the webhook events since start, up to the end of `shutdown`:
/// `call_initiated` and deliveries before the shutdown included.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    pub delivered: u64,
    /// Written to the dead-letter file: failed, or unfinished at the deadline.
    pub dead_lettered: u64,
    /// Could not even be written to the dead-letter file (each one logged at error level).
    pub lost: u64,
}

impl Webhooks {
    /// The sink when webhooks are off: events are logged at debug level only.
    pub fn log_only() -> Webhooks {
        Webhooks { inner: None }
    }

    /// Starts the delivery threads for `WEBHOOK_URL`; without it, [`Webhooks::log_only`].
    pub fn start(config: &Config, metrics: Arc<Metrics>) -> Webhooks {
        let config = &config.webhook;
        let Some(client) = Client::new(config) else {
            return Webhooks::log_only();
        };
        if config
            .secret
            .as_deref()
            .is_some_and(sign::Signer::whsec_undecodable)
        {
            log::warn!(
                "WEBHOOK_SECRET starts with whsec_ but the rest is not base64: webhook-signature \
                 is keyed with the secret's raw text, which Standard Webhooks libraries will \
                 reject; use a whsec_<base64> secret or one without the prefix"
            );
        }
        let wanted = config.events.clone();
        let (writer, writer_rx) = crossbeam_channel::bounded(WRITER_QUEUE);
        let (flush, flush_rx) = crossbeam_channel::unbounded();
        let (finished, finished_rx) = crossbeam_channel::unbounded();
        let stats = Arc::new(Stats::default());
        let dead_letters = Arc::new(DeadLetterFile::new(
            config.dead_letter_file.clone(),
            dead_letter::MAX_FILE_BYTES,
        ));
        let outbox = Arc::new(Outbox {
            client: client.clone(),
            metrics: metrics.clone(),
            max_attempts: config.retry.saturating_add(1),
            queue_size: config.queue_size,
            dead_letters: dead_letters.clone(),
            depth: AtomicUsize::new(0),
            writer,
            writer_full: Mutex::new(Throttle::new("lost events", WRITER_FULL_LOG_EVERY)),
            flush,
            finished: finished.clone(),
            stats: stats.clone(),
        });
        let (queue_tx, queue_rx) = crossbeam_channel::bounded(config.queue_size);
        let (control_tx, control_rx) = crossbeam_channel::bounded(1);
        let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded();
        let (results_tx, results_rx) = crossbeam_channel::unbounded();
        let spool = spool::open_and_report(&spool::path_beside(&config.dead_letter_file));
        let recovered = spool.as_ref().map_or(0, |(_, r)| r.len());
        metrics
            .webhook_spool_recovered
            .fetch_add(recovered as u64, Relaxed);

        let writer_metrics = metrics.clone();
        let mut started = spawn("webhook-dead-letter", move || {
            writer_thread(
                &dead_letters,
                writer_rx,
                flush_rx,
                &finished,
                &writer_metrics,
                &stats,
            )
        });
        let mut workers = 0;
        for n in 0..config.workers {
            let (client, jobs, results) = (client.clone(), jobs_rx.clone(), results_tx.clone());
            if spawn(&format!("webhook-worker-{n}"), move || {
                dispatch::worker(client, jobs, results)
            }) {
                workers += 1;
            }
        }
        drop((jobs_rx, results_tx));
        started &= workers > 0;
        let (spool, recovered) = match spool {
            Some((spool, recovered)) => (Some(spool), recovered),
            None => (None, Vec::new()),
        };
        if started {
            let outbox = outbox.clone();
            // Recovered events hold places in the queue until delivered, like accepted ones
            // (beyond its bound if need be: they were accepted by the last run).
            outbox.depth.fetch_add(recovered.len(), Relaxed);
            outbox
                .metrics
                .webhook_queue_depth
                .fetch_add(recovered.len() as u64, Relaxed);
            started = spawn("webhook-dispatch", move || {
                dispatch::run(
                    outbox, recovered, queue_rx, control_rx, jobs_tx, results_rx, workers,
                )
            });
        }
        // With the spool, calls hand events to its writer, which forwards them once synced;
        // without it (it cannot be opened, or its thread cannot start), straight to the
        // dispatcher, as before it existed.
        let (mut queue_tx, mut compact_tx, mut spooled) = (queue_tx, None, None);
        if let Some(spool) = spool.filter(|_| started) {
            let spool = Arc::new(spool);
            let (spool_tx, spool_rx) = crossbeam_channel::bounded(config.queue_size);
            let (compact, compact_rx) = crossbeam_channel::bounded(1);
            let (forward, metrics) = (queue_tx.clone(), metrics.clone());
            let writer = spool.clone();
            if spawn("webhook-spool", move || {
                spool::run(
                    &writer,
                    spool_rx,
                    finished_rx,
                    compact_rx,
                    forward,
                    &metrics,
                )
            }) {
                (queue_tx, compact_tx, spooled) = (spool_tx, Some(compact), Some(spool));
            }
        }
        let (queue, control) = if started {
            log::info!(
                "Webhooks to {} (events: {}; {workers} workers, queue {}, timeout {} ms, {} \
                 retries; dead letters to {})",
                client.masked_url(),
                EventKind::names(&config.events),
                config.queue_size,
                config.timeout.as_millis(),
                config.retry,
                config.dead_letter_file.display()
            );
            (Some(queue_tx), Some(control_tx))
        } else {
            log::error!(
                "Cannot start the webhook threads: every event will be written to the \
                 dead-letter file {} instead of being sent",
                config.dead_letter_file.display()
            );
            (None, None)
        };
        Webhooks {
            inner: Some(Arc::new(Inner {
                outbox,
                queue: RwLock::new(queue),
                control: Mutex::new(control),
                spool: Mutex::new(compact_tx),
                spooled,
                wanted,
                dtmf: Mutex::new(PerCallLimit::new(DTMF_PER_SECOND, DTMF_BURST)),
            })),
        }
    }

    /// Hands an event over without waiting: queued for delivery, or, if the queue is full or
    /// shut down, written to the dead-letter file. A `dtmf_digit` over its call's rate limit
    /// is dropped, counted (docs/webhooks.md §5.9).
    pub fn emit(&self, event: Event) {
        if self.inner.as_ref().is_some_and(|i| !i.admit(&event)) {
            return;
        }
        let Some(inner) = self.inner.as_ref().filter(|i| i.wants(event.kind)) else {
            // Serialised only if the line is logged.
            log::debug!("[{}] event {}", event.uuid, event.body());
            return;
        };
        let body = event.body();
        log::debug!("[{}] event {body}", event.uuid);
        let msg = Message::new(&event.uuid, event.kind.as_str(), body);
        let outbox = &inner.outbox;
        let queue = inner.queue.read().unwrap_or_else(|e| e.into_inner());
        let Some(queue) = queue.as_ref() else {
            // After shutdown the writer may be gone and the process about to exit: write now.
            let pending = outbox.unsent(msg, "webhooks are shut down", log::Level::Warn);
            outbox.metrics.webhook_failed.fetch_add(1, Relaxed);
            outbox.write_now(&pending);
            return;
        };
        if !outbox.reserve() {
            let why = format!(
                "the webhook queue is full (WEBHOOK_QUEUE_SIZE={}; the receiver is slower \
                 than the calls)",
                outbox.queue_size
            );
            // On the call's thread: never wait for the writer.
            outbox.failed_now_or_lost(outbox.unsent(msg, &why, log::Level::Warn));
            return;
        }
        // In the kernel's hands before it is in a channel: a `kill -9` cannot lose it now.
        if let Some(spool) = &inner.spooled {
            spool.accept(&msg, &outbox.metrics);
        }
        if let Err(e) = queue.try_send(msg) {
            // Cannot happen while `depth` bounds the queue; never lose the event if it does.
            outbox.settle();
            let msg = match e {
                TrySendError::Full(m) | TrySendError::Disconnected(m) => m,
            };
            outbox.failed_now_or_lost(outbox.unsent(
                msg,
                "the webhook queue is unavailable",
                log::Level::Error,
            ));
        }
    }

    /// `/call` step 2: sends `call_initiated` now, on the caller's thread, and returns the
    /// receiver's JSON answer on 2xx. The same retry rules as other events, within
    /// `WEBHOOK_TIMEOUT` per attempt and [`CALL_INITIATED_BUDGET`] in total. `None` when
    /// webhooks are off, the type is filtered out, the answer is not JSON, or delivery failed
    /// (then logged and dead-lettered like any event).
    pub fn call_initiated(&self, event: Event) -> Option<Value> {
        let Some(inner) = self.inner.as_ref().filter(|i| i.wants(event.kind)) else {
            log::debug!("[{}] event {}", event.uuid, event.body());
            return None;
        };
        let body = event.body();
        log::debug!("[{}] event {body}", event.uuid);
        let outbox = &inner.outbox;
        let msg = Message::new(&event.uuid, event.kind.as_str(), body);
        let deadline = Instant::now() + CALL_INITIATED_BUDGET;
        let mut attempts = 0;
        let error = loop {
            attempts += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = outbox.client.timeout().min(left);
            let error = match outbox.client.attempt(&msg, timeout) {
                Ok(answer) => {
                    outbox.delivered(&msg, attempts, answer.status);
                    return match serde_json::from_slice(&answer.body) {
                        Ok(value) => Some(value),
                        Err(_) if answer.body.is_empty() => None,
                        Err(e) => {
                            // Receivers commonly answer "OK": the Node.js original ignores
                            // it silently, so this is no warning (docs/webhooks.md §5.5).
                            log::debug!(
                                "[{}] {} The receiver's answer is not JSON ({e}); keeping the \
                                 local STS URL",
                                msg.uuid,
                                msg.tag()
                            );
                            None
                        }
                    };
                }
                Err(e) => e,
            };
            if !error.retryable() || attempts >= outbox.max_attempts {
                break error;
            }
            let delay = policy::retry_delay(attempts, error.retry_after(), policy::random_unit());
            // An attempt shorter than this is not worth starting.
            if Instant::now() + delay + Duration::from_millis(100) >= deadline {
                break error;
            }
            outbox.note_retry(&msg, attempts, &error, delay);
            // The caller of /call is waiting for exactly this: nothing else to do meanwhile.
            thread::sleep(delay);
        };
        // Written before returning, so the dead letter exists once /call has answered.
        outbox.metrics.webhook_failed.fetch_add(1, Relaxed);
        outbox.write_now(&dispatch::failure_letter(
            outbox,
            &msg,
            attempts,
            Some(&error),
        ));
        None
    }

    /// Stops accepting events (later ones go straight to the dead-letter file), lets queued
    /// and retrying events finish until `deadline`, writes what is left to the dead-letter
    /// file and returns what became of every event since start (so the operator's last line
    /// counts the deliveries of the whole run). Later calls return an empty report.
    pub fn shutdown(&self, deadline: Instant) -> ShutdownReport {
        let Some(inner) = &self.inner else {
            return ShutdownReport::default();
        };
        inner
            .queue
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let control = lock(&inner.control).take();
        let Some(control) = control else {
            return ShutdownReport::default();
        };
        let (done, finished) = crossbeam_channel::bounded(1);
        if control.send(Drain { deadline, done }).is_ok() {
            // The dispatcher answers at the deadline at the latest, once the dead-letter
            // writes are done; the margin covers a slow disk, not a stuck receiver.
            let wait = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5);
            if finished.recv_timeout(wait).is_err() {
                log::error!("The webhook dispatcher did not finish its shutdown in time");
            }
        }
        // Everything is delivered or dead-lettered now, each one marked done: the spool is
        // compacted to what is left (nothing, unless the dispatcher ran out of time).
        if let Some(spool) = lock(&inner.spool).take() {
            let (done, compacted) = crossbeam_channel::bounded(1);
            if spool.send(Compact { done }).is_ok()
                && compacted.recv_timeout(SPOOL_COMPACT_WAIT).is_err()
            {
                log::error!("The webhook spool was not compacted in time at shutdown");
            }
        }
        let report = inner.outbox.stats.snapshot();
        log::info!(
            "Webhooks shut down: {} delivered, {} written to the dead-letter file, {} lost",
            report.delivered,
            report.dead_lettered,
            report.lost
        );
        report
    }
}

impl Inner {
    fn wants(&self, kind: EventKind) -> bool {
        self.wanted.contains(&kind)
    }

    /// The per-call DTMF limit: false for a `dtmf_digit` over it (counted; the call's first
    /// one logged). A `call_ended` frees the call's bucket.
    fn admit(&self, event: &Event) -> bool {
        match event.kind {
            EventKind::DtmfDigit if self.wants(event.kind) => {
                let verdict = lock(&self.dtmf).check(&event.uuid, Instant::now());
                let Verdict::Drop { first } = verdict else {
                    return true;
                };
                self.outbox
                    .metrics
                    .webhook_rate_limited
                    .fetch_add(1, Relaxed);
                if first {
                    log::warn!(
                        "[{}] [WEBHOOK][DTMF_DIGIT] More than {DTMF_PER_SECOND} DTMF digits a \
                         second (burst {DTMF_BURST}) from this call: the excess is not sent, \
                         only counted in avr_webhook_rate_limited_total (logged once per call)",
                        event.uuid
                    );
                }
                false
            }
            EventKind::CallEnded => {
                lock(&self.dtmf).forget(&event.uuid);
                true
            }
            _ => true,
        }
    }
}

impl Outbox {
    /// Counts and logs an attempt that will be retried after `delay`.
    fn note_retry(
        &self,
        msg: &Message,
        attempts: u32,
        error: &dyn std::fmt::Display,
        delay: Duration,
    ) {
        self.metrics.webhook_retried.fetch_add(1, Relaxed);
        log::info!(
            "[{}] {} Attempt {attempts} of {} failed: {error}; retrying in {} ms",
            msg.uuid,
            msg.tag(),
            self.max_attempts,
            delay.as_millis()
        );
    }

    /// Takes a place in the queue if one is free.
    fn reserve(&self) -> bool {
        let taken = self
            .depth
            .fetch_update(Relaxed, Relaxed, |d| (d < self.queue_size).then_some(d + 1))
            .is_ok();
        if taken {
            self.metrics.webhook_queue_depth.fetch_add(1, Relaxed);
        }
        taken
    }

    /// An accepted event reached its final outcome.
    fn settle(&self) {
        self.depth.fetch_sub(1, Relaxed);
        self.metrics.webhook_queue_depth.fetch_sub(1, Relaxed);
    }

    fn delivered(&self, msg: &Message, attempts: u32, status: u16) {
        let _ = self.finished.send(msg.webhook_id.clone());
        self.metrics.webhook_delivered.fetch_add(1, Relaxed);
        self.stats.delivered.fetch_add(1, Relaxed);
        log::debug!(
            "[{}] {} Delivered: HTTP {status} on attempt {attempts}",
            msg.uuid,
            msg.tag()
        );
    }

    /// A final failure: counted, then handed to the dead-letter writer (which logs `note`).
    /// Waits for a place in the writer's queue: only the dispatcher calls this, and while the
    /// disk is slower than the failures its waiting fills the event queue, whose overflow is
    /// handled without waiting ([`Outbox::failed_now_or_lost`]).
    fn failed(&self, pending: PendingLetter) {
        self.metrics.webhook_failed.fetch_add(1, Relaxed);
        if let Err(e) = self.writer.send(pending) {
            self.write_now(&e.into_inner());
        }
    }

    /// [`Outbox::failed`] for a call's thread, which never waits for the disk's `fsync`: the
    /// letter is appended here and now (one write, no `fsync`), so a `kill -9` right after
    /// cannot lose it (docs/webhooks.md §5.10). Only while a `webhooks replay` holds the
    /// file's lock (it rewrites and syncs the file) is it handed to the writer instead; with
    /// the writer's queue full too, the event is lost, counted and logged (throttled).
    fn failed_now_or_lost(&self, pending: PendingLetter) {
        self.metrics.webhook_failed.fetch_add(1, Relaxed);
        if let Some(written) = self.dead_letters.write_unless_busy(&pending, &self.metrics) {
            self.stats.count_write(written);
            let _ = self.finished.send(pending.msg.webhook_id);
            return;
        }
        match self.writer.try_send(pending) {
            Ok(()) => {}
            Err(TrySendError::Disconnected(pending)) => self.write_now(&pending),
            Err(TrySendError::Full(pending)) => {
                self.stats.lost.fetch_add(1, Relaxed);
                self.metrics.webhook_lost.fetch_add(1, Relaxed);
                lock(&self.writer_full).note(Instant::now(), |more| {
                    log::error!(
                        "[{}] {} Event LOST: the dead-letter writer is {WRITER_QUEUE} letters \
                         behind (is the disk of {} stalled?){more}",
                        pending.msg.uuid,
                        pending.msg.tag(),
                        self.dead_letters.path().display()
                    )
                });
            }
        }
    }

    /// An event that never got an attempt.
    fn unsent(&self, msg: Message, why: &str, level: log::Level) -> PendingLetter {
        let record = DeadLetter::new(&msg, &self.client.masked_url(), 0, why, SystemTime::now());
        PendingLetter {
            note: format!(
                "[{}] {} Not sent: {why}; written to the dead-letter file",
                msg.uuid,
                msg.tag()
            ),
            msg,
            record,
            level,
        }
    }

    fn write_now(&self, pending: &PendingLetter) {
        let written = self.dead_letters.write(pending, &self.metrics);
        self.stats.count_write(written);
        let _ = self.finished.send(pending.msg.webhook_id.clone());
    }

    /// Waits until the writer has written everything sent to it so far.
    fn flush_writer(&self) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.flush.send(tx).is_ok() {
            let _ = rx.recv();
        }
    }
}

impl Stats {
    fn count_write(&self, written: bool) {
        if written {
            self.dead_lettered.fetch_add(1, Relaxed);
        } else {
            self.lost.fetch_add(1, Relaxed);
        }
    }
}

/// The dead-letter writer: file I/O off the dispatcher's and the calls' threads.
fn writer_thread(
    file: &DeadLetterFile,
    letters: Receiver<PendingLetter>,
    flush: Receiver<Sender<()>>,
    finished: &Sender<String>,
    metrics: &Metrics,
    stats: &Stats,
) {
    // Marked done once written (or counted lost and logged with its record): the spool
    // never forgets an event before the dead-letter file has it.
    let write = |pending: PendingLetter| {
        stats.count_write(file.write(&pending, metrics));
        let _ = finished.send(pending.msg.webhook_id);
    };
    loop {
        crossbeam_channel::select! {
            recv(letters) -> letter => match letter {
                Ok(letter) => write(letter),
                Err(_) => return,
            },
            recv(flush) -> reply => match reply {
                Ok(reply) => {
                    // Everything sent before the flush request is already in `letters`.
                    letters.try_iter().for_each(write);
                    let _ = reply.send(());
                }
                Err(_) => return,
            },
        }
    }
}

/// A fresh directory for a test's files (dead letters, spool), named after the test.
#[cfg(test)]
fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "avr-webhook-{name}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Spawns a named thread; a failure is logged and reported as `false`.
fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> bool {
    match thread::Builder::new()
        .name(name.to_string())
        .stack_size(THREAD_STACK)
        .spawn(f)
    {
        Ok(_) => true,
        Err(e) => {
            log::error!("Cannot start the {name} thread: {e}");
            false
        }
    }
}
