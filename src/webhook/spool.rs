//! The spool: every accepted event is on disk before it is delivered, so a crash (even
//! `kill -9`) loses nothing that was accepted before the last fsync (docs/webhooks.md §5.10).
//!
//! ```text
//! emit ──try_send──> [spool writer] ──append + fdatasync──> webhook-spool.jsonl
//!                          └──forward──> dispatcher ──> … delivered / dead-lettered
//!                                                        └──done id──> [spool writer]
//! ```
//! One JSON record a line, framed like the dead-letter file (a torn tail never damages the next
//! record): `{"event":{"webhook_id":…,"uuid":…,"type":…,"body":…}}` when an event is accepted,
//! `{"done":"msg_…"}` once it is delivered or dead-lettered. At startup the events without a
//! `done` are sent again, in file order (so each call's order holds), with their original
//! `webhook-id`. The file is compacted (rewritten with only the undelivered events, atomically)
//! at startup, when it grows past [`COMPACT_AT_BYTES`], and at a clean shutdown.
//!
//! Group commit: the writer takes every event waiting in its channel (up to [`MAX_BATCH`]),
//! appends them with one `write`, calls `fdatasync` once, and only then forwards them to the
//! dispatcher. An idle server therefore syncs each event alone; under load the batches grow
//! while a sync is in progress, so the rate of syncs, not of events, is bounded by the disk.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use serde::{Deserialize, Serialize};

use super::client::Message;
use super::dead_letter::{lock_beside, lock_path, open_append, write_atomically};
use crate::metrics::Metrics;
use crate::sys::Throttle;

/// Name of the spool, in the dead-letter file's directory (the state directory by default).
pub const SPOOL_FILE_NAME: &str = "webhook-spool.jsonl";

/// Past this size the spool is rewritten with only its undelivered events. An event line is a
/// few hundred bytes, so this is tens of thousands of events between compactions: a rewrite
/// (of at most `WEBHOOK_QUEUE_SIZE` undelivered events) every few seconds at full load, and a
/// file that never holds more than this plus one batch.
pub const COMPACT_AT_BYTES: u64 = 16 * 1024 * 1024;

/// The most events one write + fdatasync covers. Bounds the latency of the batch's last event
/// and the buffer (about 300 KiB); at a few ms per sync it still allows >100,000 events/s.
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

/// The open spool, owned by its writer thread: the append handle and the undelivered events.
pub struct Spool {
    path: PathBuf,
    file: File,
    /// `<spool>.lock`, held while the spool is open: one server per spool.
    _lock: File,
    len: u64,
    /// The next append starts with a newline: the file ended in a torn record.
    torn: bool,
    /// Undelivered events: `webhook-id` → (order written, line), the content of a compaction.
    pending: HashMap<String, (u64, String)>,
    next_seq: u64,
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
        let mut spool = Spool {
            path: path.to_path_buf(),
            file: open_append(path).map_err(wrap)?,
            _lock: lock,
            len: 0,
            torn: false,
            pending,
            next_seq: recovered.pending.len() as u64,
        };
        // Drops the done records and the unreadable lines (reported by the caller).
        spool.compact().map_err(wrap)?;
        Ok((spool, recovered))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Undelivered events in the spool.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Appends `events` and the `done` records of `finished` (ids the spool does not hold,
    /// such as `call_initiated`'s or a queue-full event's, are ignored) with one write, then
    /// syncs the data if any event was appended: a `done` alone may wait for the next sync, as
    /// losing it only means a duplicate with the same `webhook-id`.
    pub fn append(&mut self, events: &[Message], finished: &[String]) -> io::Result<()> {
        let mut bytes = Vec::new();
        if self.torn {
            bytes.push(b'\n');
        }
        for msg in events {
            let line = Record::event(msg).line();
            bytes.extend_from_slice(line.as_bytes());
            self.pending
                .insert(msg.webhook_id.clone(), (self.next_seq, line));
            self.next_seq += 1;
        }
        for id in finished {
            if self.pending.remove(id).is_some() {
                bytes.extend_from_slice(Record::Done(id.clone()).line().as_bytes());
            }
        }
        if bytes.len() <= usize::from(self.torn) {
            return Ok(());
        }
        if let Err(e) = self.file.write_all(&bytes) {
            // Part of the batch may be on disk: the next append starts a fresh line.
            self.torn = true;
            return Err(e);
        }
        self.torn = false;
        self.len += bytes.len() as u64;
        if !events.is_empty() {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Whether the file has grown past [`COMPACT_AT_BYTES`].
    pub fn wants_compaction(&self) -> bool {
        self.len > COMPACT_AT_BYTES
    }

    /// Rewrites the spool with only its undelivered events, in the order written (temporary
    /// file + rename), and reopens it for appending. Returns the size before.
    pub fn compact(&mut self) -> io::Result<u64> {
        let before = fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        let mut lines: Vec<&(u64, String)> = self.pending.values().collect();
        lines.sort_by_key(|(seq, _)| *seq);
        let text: String = lines.iter().map(|(_, line)| line.as_str()).collect();
        write_atomically(&self.path, &[text.as_bytes()])?;
        self.file = open_append(&self.path)?;
        self.len = text.len() as u64;
        self.torn = false;
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

/// The spool writer thread. Forwards each event to the dispatcher (`forward`) once it is
/// synced; when `events` closes (shutdown), drops `forward` so the dispatcher knows every
/// accepted event has reached it, and keeps recording `done` ids until they close too.
pub fn run(
    mut spool: Spool,
    events: Receiver<Message>,
    finished: Receiver<String>,
    compact: Receiver<Compact>,
    forward: Sender<Message>,
    metrics: &Metrics,
) {
    let mut forward = Some(forward);
    let mut errors = Throttle::new("failed spool writes", ERROR_LOG_EVERY);
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
        if let Err(e) = spool.append(&batch, &ids) {
            metrics.webhook_spool_errors.fetch_add(1, Relaxed);
            errors.note(Instant::now(), |more| {
                log::error!(
                    "Cannot write the webhook spool {}: {e}; {} events are delivered from \
                     memory only (a crash would lose them){more}",
                    spool.path().display(),
                    batch.len()
                )
            });
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
            compact_and_log(&mut spool, reply.is_some());
        }
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
    }
}

/// Compacts and says so: at info level at shutdown and when the bound is reached.
fn compact_and_log(spool: &mut Spool, shutdown: bool) {
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
        let (mut spool, got) = Spool::open(&path).unwrap();
        assert!(got.pending.is_empty());
        let (a1, a2, a3) = (msg("a", 1), msg("a", 2), msg("a", 3));
        spool.append(&[a1.clone(), a2.clone()], &[]).unwrap();
        spool
            .append(
                std::slice::from_ref(&a3),
                std::slice::from_ref(&a1.webhook_id),
            )
            .unwrap();
        // Not ours: ignored, nothing written.
        let len = spool.len();
        spool.append(&[], &["msg_other".into()]).unwrap();
        assert_eq!(spool.len(), len);
        drop(spool);
        // A crash mid-write: a torn record at the end.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"event":{"webhook_id":"msg_torn","uu"#)
            .unwrap();
        drop(f);

        let (mut spool, got) = Spool::open(&path).unwrap();
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
        spool
            .append(&[], &[a2.webhook_id.clone(), a3.webhook_id.clone()])
            .unwrap();
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
        let (mut spool, _) = Spool::open(&path).unwrap();
        let keep = msg("k", 0);
        spool.append(std::slice::from_ref(&keep), &[]).unwrap();
        while !spool.wants_compaction() {
            let batch: Vec<Message> = (0..MAX_BATCH as u32).map(|n| msg("x", n)).collect();
            let ids: Vec<String> = batch.iter().map(|m| m.webhook_id.clone()).collect();
            spool.append(&batch, &ids).unwrap();
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
