//! The spool: every accepted event is on disk before it is delivered, so a crash (even
//! `kill -9`) loses nothing that was accepted before the last fsync (docs/webhooks.md §5.10).
//!
//! ```text
//! emit ──append (one write, no fsync)──> webhook-spool.jsonl <──fdatasync── [spool writer]
//!   └──try_send──> [spool writer] ──forward once synced──> dispatcher ──> … delivered /
//!                                                 dead-lettered ──done id──> [spool writer]
//! ```
//! One JSON record a line, framed like the dead-letter file (a torn tail never damages the next
//! record): `{"event":{"webhook_id":…,"uuid":…,"type":…,"body":…}}` when an event is accepted,
//! `{"done":"msg_…"}` once it is delivered or dead-lettered. At startup the events without a
//! `done` are sent again, in file order (so each call's order holds), with their original
//! `webhook-id`. The file is compacted (rewritten with only the undelivered events, atomically)
//! at startup, when it grows past [`COMPACT_AT_BYTES`], and at a clean shutdown.
//!
//! The call's thread appends its event itself, before handing it on: once `write` returns,
//! the kernel holds it, so a `kill -9` of the process loses nothing accepted; no event waits
//! in a channel only. It never waits for the disk: the `fsync` (power-loss durability) is the
//! writer's. Group commit: the writer takes every event waiting in its channel (up to
//! [`MAX_BATCH`]), all already appended, calls `fdatasync` once, and only then forwards them
//! to the dispatcher. An idle server therefore syncs each event alone; under load the batches
//! grow while a sync is in progress, so the rate of syncs, not of events, is bounded by the
//! disk.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use serde::{Deserialize, Serialize};

use super::client::Message;
use super::dead_letter::{lock_beside, lock_path, open_append, Replacement};
use crate::metrics::Metrics;
use crate::sys::{lock, Throttle};

/// Name of the spool, in the dead-letter file's directory (the state directory by default).
pub const SPOOL_FILE_NAME: &str = "webhook-spool.jsonl";

/// Past this size the spool is rewritten with only its undelivered events. An event line is a
/// few hundred bytes, so this is tens of thousands of events between compactions: a rewrite
/// (of at most `WEBHOOK_QUEUE_SIZE` undelivered events) every few seconds at full load, and a
/// file that never holds more than this plus one batch.
pub const COMPACT_AT_BYTES: u64 = 16 * 1024 * 1024;

/// The most events one fdatasync covers before they are forwarded. Bounds the latency of the
/// batch's last event; at a few ms per sync it still allows >100,000 events/s.
pub const MAX_BATCH: usize = 1024;

/// A failing spool (full disk, permissions) is logged at most this often, with a count.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// One line of the spool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Record {
    /// An accepted event, as it will be sent.
    Event {
        webhook_id: String,
        uuid: String,
        #[serde(rename = "type")]
        kind: String,
        /// The body exactly as serialised once (docs/webhooks.md §2).
        body: String,
    },
    /// The event with this `webhook-id` was delivered or dead-lettered.
    Done(String),
}

impl Record {
    fn event(msg: &Message) -> Record {
        Record::Event {
            webhook_id: msg.webhook_id.clone(),
            uuid: msg.uuid.clone(),
            kind: msg.kind.clone(),
            body: msg.body.clone(),
        }
    }

    fn line(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }
}

/// The spool's path: beside the dead-letter file, so both live in the state directory.
pub fn path_beside(dead_letter_file: &Path) -> PathBuf {
    dead_letter_file.with_file_name(SPOOL_FILE_NAME)
}

/// What a spool's text holds: the events still to deliver, in file order, and the lines that
/// could not be read (a tail torn by a crash, or a hand edit).
#[derive(Debug, Default, PartialEq)]
pub struct Recovered {
    pub pending: Vec<Message>,
    pub unreadable: Vec<String>,
}

/// Reads a spool's text: every event without a later `done`, in the order written.
pub fn recover(text: &str) -> Recovered {
    let mut events: Vec<Option<Message>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut unreadable = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Record>(line) {
            Ok(Record::Event {
                webhook_id,
                uuid,
                kind,
                body,
            }) => {
                index.insert(webhook_id.clone(), events.len());
                events.push(Some(Message {
                    uuid,
                    kind,
                    body,
                    webhook_id,
                }));
            }
            Ok(Record::Done(id)) => {
                if let Some(i) = index.remove(&id) {
                    events[i] = None;
                }
            }
            Err(_) => unreadable.push(line.to_string()),
        }
    }
    Recovered {
        pending: events.into_iter().flatten().collect(),
        unreadable,
    }
}

/// Why the spool cannot be used: events are then delivered from memory only, as before it
/// existed, and the log says a crash would lose them.
#[derive(Debug)]
pub enum SpoolError {
    Io {
        path: PathBuf,
        source: io::Error,
    },
    /// Another running avr-core holds `<spool>.lock`: two servers sharing one spool would
    /// resend (and compact away) each other's events.
    Busy {
        path: PathBuf,
    },
}

impl std::fmt::Display for SpoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpoolError::Io { path, source } => write!(
                f,
                "cannot use the webhook spool {}: {source} (check the directory of \
                 WEBHOOK_DEAD_LETTER_FILE, its permissions and free space)",
                path.display()
            ),
            SpoolError::Busy { path } => write!(
                f,
                "cannot use the webhook spool {}: another avr-core holds {} (give each \
                 server its own STATE_DIRECTORY or WEBHOOK_DEAD_LETTER_FILE directory)",
                path.display(),
                lock_path(path).display()
            ),
        }
    }
}

impl std::error::Error for SpoolError {}

/// The open spool, shared by the calls' threads, which append their events to it
/// ([`Spool::accept`]), and its writer thread, which syncs them, records `done` ids and
/// compacts. Appends go through one short mutex and never wait for an `fsync`.
pub struct Spool {
    path: PathBuf,
    /// `<spool>.lock`, held while the spool is open: one server per spool.
    _lock: File,
    log: Mutex<Log>,
    /// A second handle of the file, for `fdatasync` outside `log` (the same open file, so it
    /// syncs what the appenders wrote); replaced with the file at each compaction.
    sync: Mutex<File>,
    errors: Mutex<Throttle>,
}

/// What the appenders share: the append handle and the undelivered events.
struct Log {
    file: File,
    len: u64,
    /// The next append starts with a newline: the file ended in a torn record.
    torn: bool,
    /// Undelivered events: `webhook-id` → (order written, line), the content of a compaction.
    pending: HashMap<String, (u64, String)>,
    next_seq: u64,
}

impl Log {
    /// Appends `bytes` with one `write` (page cache only), on a fresh line after a torn tail.
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut framed = Vec::with_capacity(bytes.len() + 1);
        if self.torn {
            framed.push(b'\n');
        }
        framed.extend_from_slice(bytes);
        if let Err(e) = self.file.write_all(&framed) {
            // Part of it may be on disk: the next append starts a fresh line.
            self.torn = true;
            return Err(e);
        }
        self.torn = false;
        self.len += framed.len() as u64;
        Ok(())
    }

    /// The undelivered events written from `seq` on, in the order written.
    fn lines_from(&self, seq: u64) -> String {
        let mut lines: Vec<&(u64, String)> =
            self.pending.values().filter(|(s, _)| *s >= seq).collect();
        lines.sort_by_key(|(seq, _)| *seq);
        lines.iter().map(|(_, line)| line.as_str()).collect()
    }
}

impl Spool {
    /// Opens the spool at `path` (created if missing, its directory too), recovers its
    /// undelivered events and compacts it to just those.
    pub fn open(path: &Path) -> Result<(Spool, Recovered), SpoolError> {
        let wrap = |source| SpoolError::Io {
            path: path.to_path_buf(),
            source,
        };
        let lock = lock_beside(path)
            .map_err(wrap)?
            .ok_or_else(|| SpoolError::Busy {
                path: path.to_path_buf(),
            })?;
        let text = match fs::read(path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(wrap(e)),
        };
        let recovered = recover(&text);
        let mut pending = HashMap::new();
        for (seq, msg) in recovered.pending.iter().enumerate() {
            pending.insert(
                msg.webhook_id.clone(),
                (seq as u64, Record::event(msg).line()),
            );
        }
        let file = open_append(path).map_err(wrap)?;
        let spool = Spool {
            path: path.to_path_buf(),
            _lock: lock,
            sync: Mutex::new(file.try_clone().map_err(wrap)?),
            log: Mutex::new(Log {
                file,
                len: 0,
                torn: false,
                pending,
                next_seq: recovered.pending.len() as u64,
            }),
            errors: Mutex::new(Throttle::new("failed spool writes", ERROR_LOG_EVERY)),
        };
        // Drops the done records and the unreadable lines (reported by the caller).
        spool.compact().map_err(wrap)?;
        Ok((spool, recovered))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> u64 {
        lock(&self.log).len
    }

    /// Undelivered events in the spool.
    pub fn pending(&self) -> usize {
        lock(&self.log).pending.len()
    }

    /// On the emitting call's thread, before the event is handed on: appends its record with
    /// one `write` (no `fsync`: that is the writer's, in batches), so a `kill -9` from here on
    /// cannot lose it; the kernel holds it (docs/webhooks.md §5.10). A failure is counted and
    /// logged (throttled); the event is still delivered, from memory.
    pub fn accept(&self, msg: &Message, metrics: &Metrics) {
        let line = Record::event(msg).line();
        let mut log = lock(&self.log);
        let written = log.write(line.as_bytes());
        let seq = log.next_seq;
        log.next_seq += 1;
        log.pending.insert(msg.webhook_id.clone(), (seq, line));
        drop(log);
        if let Err(e) = written {
            self.note_error(&e, 1, metrics);
        }
    }

    /// Appends the `done` records of `finished` with one write; ids the spool does not hold
    /// (`call_initiated`'s, a queue-full event's) are ignored. Not synced on its own: losing a
    /// `done` only means a duplicate with the same `webhook-id`.
    pub fn finish(&self, finished: &[String]) -> io::Result<()> {
        let mut log = lock(&self.log);
        let mut bytes = Vec::new();
        for id in finished {
            if log.pending.remove(id).is_some() {
                bytes.extend_from_slice(Record::Done(id.clone()).line().as_bytes());
            }
        }
        if bytes.is_empty() {
            return Ok(());
        }
        log.write(&bytes)
    }

    /// Makes everything appended so far durable (`fdatasync`), without holding the appenders.
    pub fn sync(&self) -> io::Result<()> {
        lock(&self.sync).sync_data()
    }

    /// Counts and logs (throttled) a failed write or sync that left `events` in memory only.
    fn note_error(&self, e: &io::Error, events: usize, metrics: &Metrics) {
        metrics.webhook_spool_errors.fetch_add(1, Relaxed);
        lock(&self.errors).note(Instant::now(), |more| {
            log::error!(
                "Cannot write the webhook spool {}: {e}; {events} events are delivered from \
                 memory only (a crash would lose them){more}",
                self.path.display()
            )
        });
    }

    /// Whether the file has grown past [`COMPACT_AT_BYTES`].
    pub fn wants_compaction(&self) -> bool {
        self.len() > COMPACT_AT_BYTES
    }

    /// Rewrites the spool with only its undelivered events, in the order written, and reopens
    /// it for appending. Returns the size before. Only the writer thread calls this (so no
    /// `done` is recorded meanwhile); appenders are held only for the last step: the events
    /// they appended while the rest was written and synced, and the `rename`. Those few are
    /// synced by the writer before they are forwarded, as any.
    pub fn compact(&self) -> io::Result<u64> {
        let before = fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        let (text, upto) = {
            let log = lock(&self.log);
            (log.lines_from(0), log.next_seq)
        };
        let replacement = Replacement::write(&self.path, &[text.as_bytes()])?;
        let mut log = lock(&self.log);
        let tail = log.lines_from(upto);
        replacement.commit(tail.as_bytes())?;
        let file = open_append(&self.path)?;
        *lock(&self.sync) = file.try_clone()?;
        log.file = file;
        log.len = (text.len() + tail.len()) as u64;
        log.torn = false;
        Ok(before)
    }
}

/// Opens the spool and logs what it recovered; `None` (logged at error level) when it cannot
/// be used.
pub fn open_and_report(path: &Path) -> Option<(Spool, Vec<Message>)> {
    match Spool::open(path) {
        Ok((spool, recovered)) => {
            for line in &recovered.unreadable {
                log::warn!(
                    "Webhook spool {}: skipped an unreadable line (a record torn by a crash, or \
                     edited): {}",
                    path.display(),
                    crate::sys::Printable(line)
                );
            }
            log::info!(
                "Webhook spool {}: recovered {} undelivered events from the last run{}",
                path.display(),
                recovered.pending.len(),
                match recovered.unreadable.len() {
                    0 => String::new(),
                    n => format!(" ({n} unreadable lines skipped)"),
                }
            );
            Some((spool, recovered.pending))
        }
        Err(e) => {
            log::error!(
                "{e}; webhook events are kept in memory only: a crash would lose those not yet \
                 delivered"
            );
            None
        }
    }
}

/// A request to the writer from `Webhooks::shutdown`: write what is queued, compact, reply.
pub struct Compact {
    pub done: Sender<()>,
}

/// The spool writer thread. `events` brings the events the calls have already appended
/// ([`Spool::accept`]); it syncs them in batches (group commit) and forwards each to the
/// dispatcher (`forward`) once synced, in the order received. When `events` closes
/// (shutdown), it drops `forward` so the dispatcher knows every accepted event has reached
/// it, and keeps recording `done` ids until they close too.
pub fn run(
    spool: &Spool,
    events: Receiver<Message>,
    finished: Receiver<String>,
    compact: Receiver<Compact>,
    forward: Sender<Message>,
    metrics: &Metrics,
) {
    let mut forward = Some(forward);
    let never = crossbeam_channel::never();
    let (mut batch, mut ids) = (Vec::new(), Vec::new());
    loop {
        let events_rx = if forward.is_some() { &events } else { &never };
        let mut reply = None;
        select! {
            recv(events_rx) -> msg => match msg {
                Ok(msg) => batch.push(msg),
                Err(_) => forward = None,
            },
            recv(finished) -> id => match id {
                Ok(id) => ids.push(id),
                Err(_) => return,
            },
            recv(compact) -> req => match req {
                Ok(req) => reply = Some(req.done),
                // The `Webhooks` handle is gone: nothing more will come.
                Err(_) => return,
            },
        }
        if forward.is_some() {
            batch.extend(
                events
                    .try_iter()
                    .take(MAX_BATCH.saturating_sub(batch.len())),
            );
        }
        ids.extend(finished.try_iter());
        if reply.is_some() {
            batch.extend(events.try_iter());
        }
        let written = spool.finish(&ids).and_then(|()| {
            if batch.is_empty() {
                Ok(())
            } else {
                spool.sync()
            }
        });
        if let Err(e) = written {
            spool.note_error(&e, batch.len(), metrics);
        }
        ids.clear();
        if let Some(tx) = &forward {
            for msg in batch.drain(..) {
                // The dispatcher outlives this thread's input; if it is gone, so is delivery.
                let _ = tx.send(msg);
            }
        }
        batch.clear();
        if spool.wants_compaction() || reply.is_some() {
            compact_and_log(spool, reply.is_some());
        }
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
    }
}

/// Compacts and says so: at info level at shutdown and when the bound is reached.
fn compact_and_log(spool: &Spool, shutdown: bool) {
    let why = if shutdown {
        "at shutdown".to_string()
    } else {
        format!("past its bound of {} MiB", COMPACT_AT_BYTES / (1024 * 1024))
    };
    match spool.compact() {
        Ok(before) => log::info!(
            "Webhook spool {} compacted {why}: {before} bytes -> {} bytes ({} undelivered \
             events kept)",
            spool.path().display(),
            spool.len(),
            spool.pending()
        ),
        Err(e) => log::error!(
            "Cannot compact the webhook spool {} ({why}): {e}; it keeps growing until the \
             next compaction succeeds",
            spool.path().display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::temp_dir;
    use std::fs::OpenOptions;

    fn msg(uuid: &str, n: u32) -> Message {
        Message::new(
            uuid,
            "transcription",
            format!(
                r#"{{"uuid":"{uuid}","type":"transcription","payload":{{"n":{n},"t":"é\n\""}}}}"#
            ),
        )
    }

    /// What the calls and the writer do together: each event appended, then the `done`
    /// records and one sync.
    fn append(spool: &Spool, events: &[Message], finished: &[String]) {
        let metrics = Metrics::default();
        for m in events {
            spool.accept(m, &metrics);
        }
        spool.finish(finished).unwrap();
        spool.sync().unwrap();
        assert_eq!(metrics.webhook_spool_errors.load(Relaxed), 0);
    }

    #[test]
    fn an_accepted_event_survives_without_its_sync_or_its_writer() {
        // A `kill -9` right after `emit`: the writer never saw the event, nothing was synced;
        // the kernel holds the write, so the next start recovers it.
        let dir = temp_dir("accept");
        let path = dir.join(SPOOL_FILE_NAME);
        let (spool, _) = Spool::open(&path).unwrap();
        let (a1, b1) = (msg("a", 1), msg("b", 1));
        let metrics = Metrics::default();
        spool.accept(&a1, &metrics);
        spool.accept(&b1, &metrics);
        drop(spool);
        let (_, got) = Spool::open(&path).unwrap();
        assert_eq!(got.pending, vec![a1, b1]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn events_accepted_after_a_compaction_go_to_the_new_file() {
        let dir = temp_dir("after-compact");
        let path = dir.join(SPOOL_FILE_NAME);
        let (spool, _) = Spool::open(&path).unwrap();
        let (a1, a2, a3) = (msg("a", 1), msg("a", 2), msg("a", 3));
        append(
            &spool,
            &[a1.clone(), a2.clone()],
            std::slice::from_ref(&a1.webhook_id),
        );
        spool.compact().unwrap();
        append(&spool, std::slice::from_ref(&a3), &[]);
        assert_eq!(spool.len(), fs::metadata(&path).unwrap().len());
        drop(spool);
        let (_, got) = Spool::open(&path).unwrap();
        assert_eq!(got.pending, vec![a2, a3]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn records_are_one_json_line_each() {
        let m = Message {
            webhook_id: "msg_1".into(),
            ..msg("u", 1)
        };
        let line = Record::event(&m).line();
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.starts_with(
            r#"{"event":{"webhook_id":"msg_1","uuid":"u","type":"transcription","body":"#
        ));
        assert_eq!(
            Record::Done("msg_1".into()).line(),
            "{\"done\":\"msg_1\"}\n"
        );
    }

    #[test]
    fn recovery_keeps_undone_events_in_order_and_reports_torn_lines() {
        let (a1, a2, b1) = (msg("a", 1), msg("a", 2), msg("b", 1));
        let whole = |r: Record| r.line();
        let torn = &whole(Record::event(&b1))[..30];
        let text = [
            whole(Record::event(&a1)),
            whole(Record::event(&b1)),
            whole(Record::Done(a1.webhook_id.clone())),
            whole(Record::event(&a2)),
            format!("{torn}\n"),
            whole(Record::Done("msg_unknown".into())),
        ]
        .concat();
        let got = recover(&text);
        assert_eq!(got.pending, vec![b1, a2]);
        assert_eq!(got.unreadable, vec![torn.to_string()]);
        assert_eq!(recover(""), Recovered::default());
    }

    #[test]
    fn a_crashed_spool_is_recovered_compacted_and_appended_to_on_a_fresh_line() {
        let dir = temp_dir("reopen");
        let path = dir.join("sub").join(SPOOL_FILE_NAME);
        let (spool, got) = Spool::open(&path).unwrap();
        assert!(got.pending.is_empty());
        let (a1, a2, a3) = (msg("a", 1), msg("a", 2), msg("a", 3));
        append(&spool, &[a1.clone(), a2.clone()], &[]);
        append(
            &spool,
            std::slice::from_ref(&a3),
            std::slice::from_ref(&a1.webhook_id),
        );
        // Not ours: ignored, nothing written.
        let len = spool.len();
        append(&spool, &[], &["msg_other".into()]);
        assert_eq!(spool.len(), len);
        drop(spool);
        // A crash mid-write: a torn record at the end.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"event":{"webhook_id":"msg_torn","uu"#)
            .unwrap();
        drop(f);

        let (spool, got) = Spool::open(&path).unwrap();
        assert_eq!(got.pending, vec![a2.clone(), a3.clone()]);
        assert_eq!(got.unreadable.len(), 1);
        // Compacted at once: only the two events, whole lines.
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.ends_with('\n'));
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        // Delivered: a clean shutdown's compaction leaves an empty file.
        append(&spool, &[], &[a2.webhook_id.clone(), a3.webhook_id.clone()]);
        assert_eq!(spool.pending(), 0);
        spool.compact().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "");
        // No temporary file left behind: the spool and its lock.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 2);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_spool_compacts_past_its_bound() {
        let dir = temp_dir("bound");
        let path = dir.join(SPOOL_FILE_NAME);
        let (spool, _) = Spool::open(&path).unwrap();
        let keep = msg("k", 0);
        append(&spool, std::slice::from_ref(&keep), &[]);
        while !spool.wants_compaction() {
            let batch: Vec<Message> = (0..MAX_BATCH as u32).map(|n| msg("x", n)).collect();
            let ids: Vec<String> = batch.iter().map(|m| m.webhook_id.clone()).collect();
            append(&spool, &batch, &ids);
        }
        assert!(fs::metadata(&path).unwrap().len() > COMPACT_AT_BYTES);
        spool.compact().unwrap();
        assert!(!spool.wants_compaction());
        drop(spool);
        let (_, got) = Spool::open(&path).unwrap();
        assert_eq!(got.pending, vec![keep]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_second_server_cannot_open_the_same_spool() {
        let dir = temp_dir("busy");
        let path = dir.join(SPOOL_FILE_NAME);
        let (first, _) = Spool::open(&path).unwrap();
        let err = Spool::open(&path).err().expect("refused while open");
        assert!(matches!(err, SpoolError::Busy { .. }));
        assert!(
            err.to_string().contains("webhook-spool.jsonl.lock"),
            "{err}"
        );
        drop(first);
        Spool::open(&path).expect("free again");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_spool_lives_beside_the_dead_letter_file() {
        assert_eq!(
            path_beside(Path::new("/var/lib/avr-core/webhook-dead-letter.jsonl")),
            PathBuf::from("/var/lib/avr-core/webhook-spool.jsonl")
        );
        assert_eq!(
            path_beside(Path::new("dead.jsonl")),
            PathBuf::from("webhook-spool.jsonl")
        );
    }

    use std::os::unix::fs::PermissionsExt;
}
