//! The dead-letter file: one JSON line per event that could not be delivered.
//!
//! ```text
//! {"event":{"uuid":…,"type":…,"timestamp":…,"payload":…},"url":"http://…","attempts":4,
//!  "last_error":"Request failed with status code 503","failed_at":"2026-01-01T12:00:00.000Z",
//!  "webhook_id":"msg_…"}
//! ```
//! Each line is written with one `write_all` to a file opened for append, under an exclusive
//! `flock`, so lines from concurrent writers never interleave and `webhooks replay` (which
//! rewrites the file through a temporary file and `rename`) never loses a line appended while
//! it ran: it takes the same lock, and appenders that waited on the replaced file reopen.
//!
//! Crash-safe framing (docs/webhooks.md §5.6): a crash mid-write leaves a torn last line with
//! no newline. The next append sees that and starts its record on a fresh line, so the torn
//! fragment stays a line of its own (reported and kept by `webhooks replay`) and never swallows
//! the record after it. The file is bounded by [`MAX_FILE_BYTES`]: past it, events are counted
//! as lost and logged at most once per [`FULL_LOG_EVERY`], rather than filling the disk.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{flock, FlockOperation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::Message;
use crate::metrics::Metrics;
use crate::sys::{lock, Throttle};

/// One undeliverable event. Field order is the line's key order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The envelope exactly as it was (to be) sent.
    pub event: Value,
    /// `WEBHOOK_URL` at the time, password masked.
    pub url: String,
    /// Attempts made; 0 when the event never reached a worker (queue full, shutdown).
    pub attempts: u32,
    pub last_error: String,
    pub failed_at: String,
    /// Kept so a replay is recognisable to the receiver as the same event.
    pub webhook_id: String,
}

impl DeadLetter {
    pub fn new(
        msg: &Message,
        url: &str,
        attempts: u32,
        last_error: &str,
        at: SystemTime,
    ) -> DeadLetter {
        DeadLetter {
            // The body came from serde_json, so it parses; the fallback keeps the bytes anyway.
            event: serde_json::from_str(&msg.body)
                .unwrap_or_else(|_| Value::String(msg.body.clone())),
            url: url.to_string(),
            attempts,
            last_error: last_error.to_string(),
            failed_at: crate::time::iso8601_millis(at),
            webhook_id: msg.webhook_id.clone(),
        }
    }

    /// The line, newline included.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }

    /// The event to send again, with its original `webhook-id`. `preserve_order` keeps the
    /// envelope's key order, so the body is byte for byte the one first sent.
    pub fn message(&self) -> Message {
        let text = |key: &str| self.event[key].as_str().unwrap_or("").to_string();
        Message {
            uuid: text("uuid"),
            kind: text("type"),
            body: match &self.event {
                Value::String(raw) => raw.clone(),
                event => serde_json::to_string(event).unwrap_or_default(),
            },
            webhook_id: self.webhook_id.clone(),
        }
    }
}

/// The most the dead-letter file may hold. A receiver down for hours at full load writes a few
/// hundred bytes per event; 256 MiB is about 800,000 events, far more than a replay is meant to
/// catch up on, and small enough that a flood cannot fill the disk the calls' logs live on.
pub const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// A full file is logged at most this often (with a count), not once per lost event.
pub const FULL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Why a dead letter could not be written: the event is lost, and the log must say so.
#[derive(Debug)]
pub enum WriteError {
    /// The file or its directory cannot be written.
    Io { path: PathBuf, source: io::Error },
    /// The file has reached its size limit ([`MAX_FILE_BYTES`]).
    Full { path: PathBuf, limit: u64 },
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Io { path, source } => write!(
                f,
                "cannot write the dead-letter file {}: {source} (check WEBHOOK_DEAD_LETTER_FILE, \
                 the directory's permissions and free space)",
                path.display()
            ),
            WriteError::Full { path, limit } => write!(
                f,
                "the dead-letter file {} is full ({} MiB): run `avr-core webhooks replay` once \
                 the receiver is back, or move the file away",
                path.display(),
                limit / (1024 * 1024)
            ),
        }
    }
}

impl std::error::Error for WriteError {}

/// A dead letter on its way to the file, with the line to log once it is written (or not).
pub struct PendingLetter {
    pub msg: Message,
    pub record: DeadLetter,
    /// What happened to the event, logged at `level` after the write.
    pub note: String,
    pub level: log::Level,
}

/// The dead-letter file of a running server: its path, its bound, and the throttle of the
/// "file full" line. Shared by the writer thread and the threads that write directly.
pub struct DeadLetterFile {
    path: PathBuf,
    max_bytes: u64,
    full: Mutex<Throttle>,
}

impl DeadLetterFile {
    pub fn new(path: PathBuf, max_bytes: u64) -> DeadLetterFile {
        DeadLetterFile {
            path,
            max_bytes,
            full: Mutex::new(Throttle::new("lost events", FULL_LOG_EVERY)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one dead letter, then logs its note (so a reader of the log finds the record in
    /// the file); a failed write is logged as a lost event, with the record itself so it can
    /// still be recovered from the log. A full file is logged once per [`FULL_LOG_EVERY`]
    /// instead: a flood must not move from the disk into the log. Returns whether it was
    /// written.
    pub fn write(&self, pending: &PendingLetter, metrics: &Metrics) -> bool {
        let written = append(&self.path, &pending.record.to_line(), self.max_bytes);
        self.report(pending, written, metrics)
    }

    /// [`DeadLetterFile::write`] for a call's thread, which must never wait for the disk's
    /// `fsync`: `None` (nothing written, nothing logged) when the file's lock is held, i.e. a
    /// `webhooks replay` is rewriting and syncing the file; the caller then hands the letter
    /// to the writer thread instead. Otherwise one append (page cache only, no `fsync`), so a
    /// `kill -9` right after it cannot lose the letter (docs/webhooks.md §5.10).
    pub fn write_unless_busy(&self, pending: &PendingLetter, metrics: &Metrics) -> Option<bool> {
        let line = pending.record.to_line();
        let written = match append_with(&self.path, &line, self.max_bytes, Lock::Try) {
            Ok(None) => return None,
            Ok(Some(())) => Ok(()),
            Err(e) => Err(e),
        };
        Some(self.report(pending, written, metrics))
    }

    /// Logs and counts the outcome of one write; whether it was written.
    fn report(
        &self,
        pending: &PendingLetter,
        written: Result<(), WriteError>,
        metrics: &Metrics,
    ) -> bool {
        match written {
            Ok(()) => {
                log::log!(pending.level, "{}", pending.note);
                metrics.webhook_dead_letters.fetch_add(1, Relaxed);
                true
            }
            Err(e @ WriteError::Full { .. }) => {
                metrics.webhook_lost.fetch_add(1, Relaxed);
                lock(&self.full).note(Instant::now(), |more| {
                    log::error!(
                        "[{}] {} Event LOST: {e}{more}",
                        pending.msg.uuid,
                        pending.msg.tag()
                    )
                });
                false
            }
            Err(e) => {
                log::log!(pending.level, "{}", pending.note);
                metrics.webhook_lost.fetch_add(1, Relaxed);
                log::error!(
                    "[{}] {} Event LOST: {e}; the dead letter was: {}",
                    pending.msg.uuid,
                    pending.msg.tag(),
                    pending.record.to_line().trim_end()
                );
                false
            }
        }
    }
}

/// Appends `line` (one JSON line, newline included) atomically with respect to other writers,
/// on a fresh line even after a torn tail, unless the file would grow past `max_bytes`.
pub fn append(path: &Path, line: &str, max_bytes: u64) -> Result<(), WriteError> {
    append_with(path, line, max_bytes, Lock::Wait).map(|_| ())
}

/// Whether a writer waits for the file's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lock {
    Wait,
    /// Gives up (`None`) when another holder has it.
    Try,
}

/// [`append`], or `Ok(None)` with [`Lock::Try`] when the lock is held elsewhere.
fn append_with(
    path: &Path,
    line: &str,
    max_bytes: u64,
    how: Lock,
) -> Result<Option<()>, WriteError> {
    let wrap = |source| WriteError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(wrap)?;
    }
    let Some(file) = open_locked(path, || open_append(path), how).map_err(wrap)? else {
        return Ok(None);
    };
    let len = file.metadata().map_err(wrap)?.len();
    let torn = ends_torn(&file, len).map_err(wrap)?;
    let mut bytes = Vec::with_capacity(line.len() + 1);
    if torn {
        bytes.push(b'\n');
    }
    bytes.extend_from_slice(line.as_bytes());
    if len + bytes.len() as u64 > max_bytes {
        return Err(WriteError::Full {
            path: path.to_path_buf(),
            limit: max_bytes,
        });
    }
    (&file).write_all(&bytes).map_err(wrap).map(Some)
}

/// Opens `path` for appending, created with mode 0600 if missing (dead letters and the spool
/// hold call content).
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

/// Whether the file's last byte (of `len`) is not a newline: a record cut short by a crash.
fn ends_torn(file: &File, len: u64) -> io::Result<bool> {
    if len == 0 {
        return Ok(false);
    }
    let mut last = [0u8];
    file.read_exact_at(&mut last, len - 1)?;
    Ok(last[0] != b'\n')
}

/// Held for a whole `webhooks replay`: a second replay of the same file refuses instead of
/// delivering every dead letter a second time. A lock file beside the dead-letter file, not
/// the file's own lock, because appenders take that one for each line and must never wait for
/// a replay's whole run.
pub struct ReplayLock {
    _file: File,
}

/// Why a replay cannot start.
#[derive(Debug)]
pub enum ReplayLockError {
    /// Another replay of this file holds the lock.
    Busy {
        lock: PathBuf,
    },
    Io {
        lock: PathBuf,
        source: io::Error,
    },
}

impl std::fmt::Display for ReplayLockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayLockError::Busy { lock } => write!(
                f,
                "another `webhooks replay` of this file is running (it holds {}); nothing was \
                 sent: wait for it to finish, then run this one again if it left dead letters",
                lock.display()
            ),
            ReplayLockError::Io { lock, source } => write!(
                f,
                "cannot take the replay lock {}: {source} (check the directory's permissions)",
                lock.display()
            ),
        }
    }
}

impl ReplayLock {
    /// The lock of `path`'s replays, `<path>.lock`, taken without waiting.
    pub fn take(path: &Path) -> Result<ReplayLock, ReplayLockError> {
        let lock = lock_path(path);
        match lock_beside(path) {
            Ok(Some(file)) => Ok(ReplayLock { _file: file }),
            Ok(None) => Err(ReplayLockError::Busy { lock }),
            Err(source) => Err(ReplayLockError::Io { lock, source }),
        }
    }
}

/// `<path>.lock`.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the exclusive `flock` of `<path>.lock` without waiting: the open lock file, held
/// until dropped, or `None` when another process (or handle) holds it. A lock file beside
/// `path`, not `path` itself, because `path` is replaced by `rename` while the lock is held.
pub fn lock_beside(path: &Path) -> io::Result<Option<File>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(lock_path(path))?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(file)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The file's lines as read, and its length then: `replace` keeps whatever came after.
pub struct Snapshot {
    pub lines: Vec<String>,
    len: u64,
}

/// Reads the dead letters. A missing file is an empty one.
pub fn read(path: &Path) -> io::Result<Snapshot> {
    match fs::read(path) {
        Ok(bytes) => Ok(Snapshot {
            len: bytes.len() as u64,
            lines: String::from_utf8_lossy(&bytes)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Snapshot {
            lines: Vec::new(),
            len: 0,
        }),
        Err(e) => Err(e),
    }
}

/// Replaces the lines of `snapshot` with `keep`, atomically (temporary file + `rename`),
/// keeping every line appended since the snapshot was read. Returns how many such lines.
pub fn replace(path: &Path, snapshot: &Snapshot, keep: &[String]) -> io::Result<usize> {
    let lock = match open_locked(path, || File::open(path), Lock::Wait) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let mut current = Vec::new();
    if let Some(mut f) = lock.as_ref() {
        f.read_to_end(&mut current)?;
    }
    let start = usize::try_from(snapshot.len)
        .unwrap_or(usize::MAX)
        .min(current.len());
    let tail = &current[start..];

    let mut text = String::new();
    for line in keep {
        text.push_str(line.trim_end());
        text.push('\n');
    }
    write_atomically(path, &[text.as_bytes(), tail])?;
    // `lock` is released here, after the rename: waiting appenders see the new file.
    drop(lock);
    Ok(String::from_utf8_lossy(tail)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count())
}

/// Replaces `path` with `parts`, all or nothing: written to a temporary file beside it (mode
/// 0600), synced, renamed over it, and the directory synced, so a crash at any point leaves
/// either the old file or the new one, never a half-written one. `webhooks replay`'s; the
/// spool's compaction uses the two steps of [`Replacement`] itself.
pub fn write_atomically(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    Replacement::write(path, parts)?.commit(b"")
}

/// A file being replaced in two steps: the new content written and synced beside it (which
/// may take a while), then, briefly, a last unsynced tail appended and the rename. The spool's
/// compaction holds its appenders only for the second step, so they never wait for an
/// `fsync` (docs/webhooks.md §5.10).
pub struct Replacement {
    path: PathBuf,
    tmp: PathBuf,
    file: File,
}

impl Replacement {
    /// Writes `parts` to a temporary file beside `path` (mode 0600) and syncs it.
    pub fn write(path: &Path, parts: &[&[u8]]) -> io::Result<Replacement> {
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp_name);
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            for part in parts {
                f.write_all(part)?;
            }
            f.sync_all()?;
            Ok(f)
        })();
        match written {
            Ok(file) => Ok(Replacement {
                path: path.to_path_buf(),
                tmp,
                file,
            }),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Appends `tail` (not synced: the caller syncs the new file when it must) and renames
    /// the file over `path`, then syncs the directory.
    pub fn commit(mut self, tail: &[u8]) -> io::Result<()> {
        let renamed = self
            .file
            .write_all(tail)
            .and_then(|()| fs::rename(&self.tmp, &self.path));
        if renamed.is_err() {
            let _ = fs::remove_file(&self.tmp);
        }
        renamed?;
        // The rename itself is durable only once the directory is; a failure here changes
        // nothing the caller can act on, the file's content is already synced.
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

/// Opens `path` with `open` and takes an exclusive lock, reopening if the path was replaced
/// (by a replay's `rename`) while this thread waited for the lock.
/// With [`Lock::Try`], `None` when another holder has the lock.
fn open_locked(
    path: &Path,
    open: impl Fn() -> io::Result<File>,
    how: Lock,
) -> io::Result<Option<File>> {
    loop {
        let file = open()?;
        match how {
            Lock::Wait => flock(&file, FlockOperation::LockExclusive)?,
            Lock::Try => match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
                Err(e) => return Err(e.into()),
            },
        }
        let same = match fs::metadata(path) {
            Ok(now) => {
                let held = file.metadata()?;
                now.ino() == held.ino() && now.dev() == held.dev()
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        if same {
            return Ok(Some(file));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::temp_dir;
    use crate::webhook::{Event, EventKind};
    use std::time::{Duration, UNIX_EPOCH};

    fn message() -> Message {
        let mut e = Event::new(
            "935652e3-7c59-4edc-b17f-9646a9c2a265",
            EventKind::Transcription,
            serde_json::json!({"role": "user", "text": "hé \"quoted\"\nnew line"}),
        );
        e.time = UNIX_EPOCH + Duration::from_millis(1_767_268_800_000);
        Message {
            webhook_id: "msg_abc".into(),
            ..Message::new(&e.uuid, e.kind.as_str(), e.body())
        }
    }

    #[test]
    fn line_format_is_one_json_object_per_line() {
        let msg = message();
        let at = UNIX_EPOCH + Duration::from_millis(1_767_268_801_500);
        let record = DeadLetter::new(
            &msg,
            "http://hooks:****@receiver:9000/events",
            4,
            "Request failed with status code 503",
            at,
        );
        let line = record.to_line();
        assert!(line.ends_with('\n'));
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert_eq!(
            line.trim_end(),
            concat!(
                r#"{"event":{"uuid":"935652e3-7c59-4edc-b17f-9646a9c2a265","type":"transcription","#,
                r#""timestamp":"2026-01-01T12:00:00.000Z","payload":{"role":"user","#,
                r#""text":"hé \"quoted\"\nnew line"}},"url":"http://hooks:****@receiver:9000/events","#,
                r#""attempts":4,"last_error":"Request failed with status code 503","#,
                r#""failed_at":"2026-01-01T12:00:01.500Z","webhook_id":"msg_abc"}"#
            )
        );
        // Read back, the message is the original, byte for byte.
        let back: DeadLetter = serde_json::from_str(&line).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.message(), msg);
    }

    #[test]
    fn append_creates_the_directory_and_appends_whole_lines() {
        let dir = temp_dir("append");
        let path = dir.join("sub/dir/dead.jsonl");
        append(&path, "{\"a\":1}\n", MAX_FILE_BYTES).unwrap();
        append(&path, "{\"a\":2}\n", MAX_FILE_BYTES).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"a\":1}\n{\"a\":2}\n");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn append_failure_names_the_file() {
        let dir = temp_dir("fail");
        // A directory where the file should be: the write must fail, not panic.
        let path = dir.join("is-a-dir");
        fs::create_dir_all(&path).unwrap();
        let err = append(&path, "x\n", MAX_FILE_BYTES).unwrap_err();
        assert!(err.to_string().contains("is-a-dir"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn concurrent_appends_never_interleave() {
        let dir = temp_dir("concurrent");
        let path = dir.join("dead.jsonl");
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let path = path.clone();
                std::thread::Builder::new()
                    .name(format!("dl-append-{t}"))
                    .spawn(move || {
                        let line = format!("{{\"t\":{t},\"pad\":\"{}\"}}\n", "x".repeat(5000));
                        for _ in 0..50 {
                            append(&path, &line, MAX_FILE_BYTES).unwrap();
                        }
                    })
                    .unwrap()
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 400);
        for line in text.lines() {
            serde_json::from_str::<Value>(line).expect("a whole line");
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn replace_keeps_lines_appended_after_the_snapshot() {
        let dir = temp_dir("replace");
        let path = dir.join("dead.jsonl");
        for n in 1..=3 {
            append(&path, &format!("{{\"n\":{n}}}\n"), MAX_FILE_BYTES).unwrap();
        }
        let snap = read(&path).unwrap();
        assert_eq!(snap.lines.len(), 3);
        append(&path, "{\"n\":4}\n", MAX_FILE_BYTES).unwrap();
        let appended = replace(&path, &snap, &[snap.lines[1].clone()]).unwrap();
        assert_eq!(appended, 1);
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"n\":2}\n{\"n\":4}\n");
        // Nothing left to keep: the file is emptied, not removed.
        let snap = read(&path).unwrap();
        replace(&path, &snap, &[]).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "");
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missing_file_reads_as_empty() {
        let dir = temp_dir("missing");
        let snap = read(&dir.join("none.jsonl")).unwrap();
        assert!(snap.lines.is_empty());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_torn_tail_never_swallows_the_next_record() {
        let dir = temp_dir("torn");
        let path = dir.join("dead.jsonl");
        let whole = DeadLetter::new(&message(), "u", 1, "e", UNIX_EPOCH).to_line();
        // A crash cut the second record short: no newline at the end of the file.
        fs::write(&path, format!("{whole}{}", &whole[..40])).unwrap();
        append(&path, &whole, MAX_FILE_BYTES).unwrap();
        let snap = read(&path).unwrap();
        assert_eq!(snap.lines.len(), 3, "{:?}", snap.lines);
        let parsed: Vec<bool> = snap
            .lines
            .iter()
            .map(|l| serde_json::from_str::<DeadLetter>(l).is_ok())
            .collect();
        assert_eq!(
            parsed,
            [true, false, true],
            "the torn line alone is unreadable"
        );
        // A file that ends whole gets no blank line.
        append(&path, &whole, MAX_FILE_BYTES).unwrap();
        assert!(!fs::read_to_string(&path).unwrap().contains("\n\n"));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_file_stops_growing_at_its_bound() {
        let dir = temp_dir("full");
        let path = dir.join("dead.jsonl");
        let line = "{\"n\":1}\n";
        let max = 3 * line.len() as u64;
        for _ in 0..3 {
            append(&path, line, max).unwrap();
        }
        let err = append(&path, line, max).unwrap_err();
        assert!(matches!(err, WriteError::Full { limit, .. } if limit == max));
        assert!(err.to_string().contains("webhooks replay"), "{err}");
        assert_eq!(fs::metadata(&path).unwrap().len(), max);

        // Through the server's writer: counted as lost, the file untouched.
        let file = DeadLetterFile::new(path.clone(), max);
        let metrics = Metrics::default();
        let record = DeadLetter::new(&message(), "u", 1, "e", UNIX_EPOCH);
        let pending = PendingLetter {
            msg: message(),
            record,
            note: "note".into(),
            level: log::Level::Warn,
        };
        assert!(!file.write(&pending, &metrics));
        assert_eq!(metrics.webhook_lost.load(Relaxed), 1);
        assert_eq!(metrics.webhook_dead_letters.load(Relaxed), 0);
        assert_eq!(fs::metadata(&path).unwrap().len(), max);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_calls_write_steps_aside_while_a_replay_holds_the_file() {
        let dir = temp_dir("busy-write");
        let path = dir.join("dead.jsonl");
        let file = DeadLetterFile::new(path.clone(), MAX_FILE_BYTES);
        let metrics = Metrics::default();
        let pending = PendingLetter {
            msg: message(),
            record: DeadLetter::new(&message(), "u", 0, "e", UNIX_EPOCH),
            note: "note".into(),
            level: log::Level::Warn,
        };
        assert_eq!(file.write_unless_busy(&pending, &metrics), Some(true));
        // A replay's `replace` holds the file's lock while it rewrites and syncs it.
        let held = open_locked(&path, || File::open(&path), Lock::Wait)
            .unwrap()
            .unwrap();
        assert_eq!(file.write_unless_busy(&pending, &metrics), None);
        drop(held);
        assert_eq!(file.write_unless_busy(&pending, &metrics), Some(true));
        assert_eq!(read(&path).unwrap().lines.len(), 2);
        assert_eq!(metrics.webhook_dead_letters.load(Relaxed), 2);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_second_replay_lock_is_refused_until_the_first_is_released() {
        let dir = temp_dir("replay-lock");
        let path = dir.join("dead.jsonl");
        let first = ReplayLock::take(&path).unwrap();
        let busy = ReplayLock::take(&path).err().expect("refused while held");
        assert!(matches!(busy, ReplayLockError::Busy { .. }));
        assert!(busy.to_string().contains("dead.jsonl.lock"), "{busy}");
        // Appenders do not wait for a replay's lock.
        append(&path, "{}\n", MAX_FILE_BYTES).unwrap();
        drop(first);
        ReplayLock::take(&path).expect("free again");
        fs::remove_dir_all(dir).unwrap();
    }
}
