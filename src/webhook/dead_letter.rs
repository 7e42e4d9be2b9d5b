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

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::SystemTime;

use rustix::fs::{flock, FlockOperation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::Message;
use crate::metrics::Metrics;

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

/// Why a dead letter could not be written: the event is lost, and the log must say so.
#[derive(Debug)]
pub struct WriteError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot write the dead-letter file {}: {} (check WEBHOOK_DEAD_LETTER_FILE, the \
             directory's permissions and free space)",
            self.path.display(),
            self.source
        )
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

/// Writes one dead letter, then logs its note (so a reader of the log finds the record in the
/// file); a failed write is logged as a lost event, with the record itself so it can still be
/// recovered from the log. Returns whether it was written.
pub fn write_pending(path: &Path, pending: &PendingLetter, metrics: &Metrics) -> bool {
    let written = append(path, &pending.record.to_line());
    log::log!(pending.level, "{}", pending.note);
    match written {
        Ok(()) => {
            metrics.webhook_dead_letters.fetch_add(1, Relaxed);
            true
        }
        Err(e) => {
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

/// Appends `line` (one JSON line, newline included) atomically with respect to other writers.
pub fn append(path: &Path, line: &str) -> Result<(), WriteError> {
    let wrap = |source| WriteError {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(wrap)?;
    }
    let mut file = open_locked(path, || {
        OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
    })
    .map_err(wrap)?;
    file.write_all(line.as_bytes()).map_err(wrap)
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
    let lock = match open_locked(path, || File::open(path)) {
        Ok(f) => Some(f),
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
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".replay-{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.write_all(tail)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    // `lock` is released here, after the rename: waiting appenders see the new file.
    drop(lock);
    Ok(String::from_utf8_lossy(tail)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count())
}

/// Opens `path` with `open` and takes an exclusive lock, reopening if the path was replaced
/// (by a replay's `rename`) while this thread waited for the lock.
fn open_locked(path: &Path, open: impl Fn() -> io::Result<File>) -> io::Result<File> {
    loop {
        let file = open()?;
        flock(&file, FlockOperation::LockExclusive)?;
        let same = match fs::metadata(path) {
            Ok(now) => {
                let held = file.metadata()?;
                now.ino() == held.ino() && now.dev() == held.dev()
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        if same {
            return Ok(file);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::{Event, EventKind};
    use std::time::{Duration, UNIX_EPOCH};

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "avr-dl-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

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
        append(&path, "{\"a\":1}\n").unwrap();
        append(&path, "{\"a\":2}\n").unwrap();
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
        let err = append(&path, "x\n").unwrap_err();
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
                            append(&path, &line).unwrap();
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
            append(&path, &format!("{{\"n\":{n}}}\n")).unwrap();
        }
        let snap = read(&path).unwrap();
        assert_eq!(snap.lines.len(), 3);
        append(&path, "{\"n\":4}\n").unwrap();
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
}
