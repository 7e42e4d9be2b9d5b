//! `/call` metadata waiting for its AudioSocket call (docs/http.md §3.3 step 3).
//!
//! The dialplan posts `/call`, then dials AudioSocket with the same uuid; the call takes its
//! entry when the UUID frame arrives. Entries that no call claims (the dial failed, the caller
//! hung up first) expire after `CALL_METADATA_TTL`, and the store is bounded in entries and in
//! bytes, so a misbehaving client cannot grow it without limit. No timer thread: expired
//! entries are purged whenever something is inserted, and `take` never returns one.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sys::lock;
use serde_json::{Map, Value};

/// Default bound on stored entries: far above the calls a box places within one TTL.
pub const MAX_ENTRIES: usize = 10_000;

/// Default bound on the stored bytes (URL plus payload JSON, approximately): a payload may be
/// up to 64 KiB, and 10,000 of those would be over half a gigabyte.
pub const MAX_BYTES: usize = 32 * 1024 * 1024;

/// What a call needs from its `/call`.
#[derive(Debug, Clone, PartialEq)]
pub struct CallMetadata {
    /// The effective STS URL, webhook override and payload parameters included.
    pub sts_url: String,
    /// The `/call` payload, sent to the agent in `init`.
    pub payload: Map<String, Value>,
}

impl CallMetadata {
    /// Approximate memory held, for the byte bound.
    fn weight(&self) -> usize {
        let payload = serde_json::to_string(&self.payload).map_or(0, |s| s.len());
        self.sts_url.len() + payload + 128
    }
}

/// What [`Registry::insert`] did besides storing, for the caller's log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Inserted {
    /// An earlier, unclaimed `/call` for the same uuid was replaced.
    pub replaced: bool,
    /// Uuids of unexpired entries dropped to stay within the bounds, oldest first.
    pub evicted: Vec<String>,
}

/// The metadata store, shared by the HTTP service and every call.
pub struct Registry {
    ttl: Duration,
    max_entries: usize,
    max_bytes: usize,
    entries: Mutex<Entries>,
}

struct Stored {
    metadata: CallMetadata,
    expires: Instant,
    weight: usize,
    /// Tells this entry from an earlier one under the same uuid in `order`.
    seq: u64,
}

/// The entries and their insertion order, under one lock.
#[derive(Default)]
struct Entries {
    map: HashMap<String, Stored>,
    /// `(seq, uuid)` in insertion order, which is expiry order as the TTL is fixed. Records of
    /// replaced or taken entries stay until they reach the front or the next compaction.
    order: VecDeque<(u64, String)>,
    bytes: usize,
    next_seq: u64,
}

impl Entries {
    /// Removes the oldest live entry; `None` when empty.
    fn pop_oldest(&mut self) -> Option<(String, Stored)> {
        while let Some((seq, uuid)) = self.order.pop_front() {
            if self.map.get(&uuid).is_some_and(|s| s.seq == seq) {
                let stored = self.map.remove(&uuid)?;
                self.bytes -= stored.weight;
                return Some((uuid, stored));
            }
        }
        None
    }

    /// Frees every entry that expired at `now` (they are at the front of `order`).
    fn purge(&mut self, now: Instant) {
        while let Some((seq, uuid)) = self.order.front() {
            match self.map.get(uuid) {
                Some(s) if s.seq == *seq && s.expires > now => break,
                Some(s) if s.seq == *seq => {
                    self.bytes -= s.weight;
                    self.map.remove(uuid);
                }
                _ => {} // stale record of a replaced or taken entry
            }
            self.order.pop_front();
        }
    }

    fn remove(&mut self, uuid: &str) -> Option<Stored> {
        let stored = self.map.remove(uuid)?;
        self.bytes -= stored.weight;
        Some(stored)
    }
}

impl Registry {
    /// A store whose entries live `ttl`, with the default bounds.
    pub fn new(ttl: Duration) -> Registry {
        Registry::with_bounds(ttl, MAX_ENTRIES, MAX_BYTES)
    }

    pub fn with_bounds(ttl: Duration, max_entries: usize, max_bytes: usize) -> Registry {
        Registry {
            ttl,
            max_entries: max_entries.max(1),
            max_bytes,
            entries: Mutex::new(Entries::default()),
        }
    }

    /// Stores `metadata` under the canonical `uuid` until `now + ttl`, replacing an earlier
    /// one.
    pub fn insert(&self, uuid: &str, metadata: CallMetadata, now: Instant) -> Inserted {
        let weight = metadata.weight();
        let mut entries = self.lock();
        entries.purge(now);
        let mut done = Inserted {
            replaced: entries.remove(uuid).is_some(),
            evicted: Vec::new(),
        };
        while !entries.map.is_empty()
            && (entries.map.len() >= self.max_entries || entries.bytes + weight > self.max_bytes)
        {
            match entries.pop_oldest() {
                Some((old, _)) => done.evicted.push(old),
                None => break,
            }
        }
        let seq = entries.next_seq;
        entries.next_seq += 1;
        entries.bytes += weight;
        entries.map.insert(
            uuid.to_string(),
            Stored {
                metadata,
                expires: now + self.ttl,
                weight,
                seq,
            },
        );
        entries.order.push_back((seq, uuid.to_string()));
        // Stale records pile up when entries are taken or replaced faster than they expire;
        // dropping them once they outnumber live ones keeps `order` bounded at O(1) amortised.
        if entries.order.len() > 2 * entries.map.len() + 64 {
            let Entries { map, order, .. } = &mut *entries;
            order.retain(|(seq, uuid)| map.get(uuid).is_some_and(|s| s.seq == *seq));
        }
        done
    }

    /// Removes and returns the entry for `uuid` unless it expired at `now`.
    pub fn take(&self, uuid: &str, now: Instant) -> Option<CallMetadata> {
        let stored = self.lock().remove(uuid)?;
        (stored.expires > now).then_some(stored.metadata)
    }

    /// Entries currently held (expired ones included until the next purge).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding the lock leaves consistent data: every update is one step.
        lock(&self.entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn metadata(url: &str) -> CallMetadata {
        let Value::Object(payload) = json!({"from": "2000"}) else {
            unreachable!()
        };
        CallMetadata {
            sts_url: url.into(),
            payload,
        }
    }

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn take_returns_the_entry_once() {
        let reg = Registry::new(TTL);
        let t0 = Instant::now();
        assert_eq!(
            reg.insert("a", metadata("ws://x/1"), t0),
            Inserted::default()
        );
        assert_eq!(
            reg.take("a", t0 + Duration::from_secs(1)),
            Some(metadata("ws://x/1"))
        );
        assert_eq!(reg.take("a", t0 + Duration::from_secs(1)), None);
        assert!(reg.is_empty());
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let reg = Registry::new(TTL);
        let t0 = Instant::now();
        reg.insert("a", metadata("ws://x/1"), t0);
        assert_eq!(reg.take("a", t0 + TTL), None, "expired exactly at the TTL");
        assert!(reg.is_empty(), "an expired entry is freed when asked for");

        reg.insert("b", metadata("ws://x/2"), t0);
        reg.insert("c", metadata("ws://x/3"), t0 + Duration::from_secs(30));
        // Inserting after b's TTL purges b without anyone asking for it.
        reg.insert("d", metadata("ws://x/4"), t0 + TTL + Duration::from_secs(1));
        assert_eq!(reg.len(), 2);
        assert!(reg.take("c", t0 + TTL + Duration::from_secs(1)).is_some());
    }

    #[test]
    fn a_second_call_for_the_same_uuid_replaces_the_first() {
        let reg = Registry::new(TTL);
        let t0 = Instant::now();
        reg.insert("a", metadata("ws://x/1"), t0);
        let again = reg.insert("a", metadata("ws://x/2"), t0 + Duration::from_secs(50));
        assert!(again.replaced);
        // The replacement has its own TTL: the first one's expiry does not remove it.
        reg.insert("z", metadata("ws://x/z"), t0 + Duration::from_secs(70));
        assert_eq!(
            reg.take("a", t0 + Duration::from_secs(71)),
            Some(metadata("ws://x/2"))
        );
    }

    #[test]
    fn when_full_the_oldest_entry_is_evicted() {
        let reg = Registry::with_bounds(TTL, 3, usize::MAX);
        let t0 = Instant::now();
        for (i, uuid) in ["a", "b", "c"].iter().enumerate() {
            reg.insert(
                uuid,
                metadata("ws://x"),
                t0 + Duration::from_millis(i as u64),
            );
        }
        reg.take("b", t0); // a stale record in the middle must not count
        reg.insert("d", metadata("ws://x"), t0);
        let full = reg.insert("e", metadata("ws://x"), t0);
        assert_eq!(full.evicted, vec!["a".to_string()]);
        assert_eq!(reg.len(), 3);
        assert!(reg.take("a", t0).is_none());
        assert!(reg.take("c", t0).is_some());
    }

    #[test]
    fn the_byte_bound_evicts_too() {
        let one = metadata("ws://x").weight();
        let reg = Registry::with_bounds(TTL, 100, 2 * one);
        let t0 = Instant::now();
        reg.insert("a", metadata("ws://x"), t0);
        reg.insert("b", metadata("ws://x"), t0);
        assert_eq!(reg.insert("c", metadata("ws://x"), t0).evicted, vec!["a"]);
        assert_eq!(reg.len(), 2);
    }

    #[test]
    fn churn_keeps_the_order_queue_bounded() {
        let reg = Registry::new(TTL);
        let t0 = Instant::now();
        for _ in 0..10_000 {
            reg.insert("same", metadata("ws://x"), t0);
        }
        for i in 0..10_000 {
            let uuid = format!("u{i}");
            reg.insert(&uuid, metadata("ws://x"), t0);
            reg.take(&uuid, t0);
        }
        let entries = reg.lock();
        assert_eq!(entries.map.len(), 1);
        assert!(
            entries.order.len() <= 2 * entries.map.len() + 65,
            "{}",
            entries.order.len()
        );
        assert_eq!(entries.bytes, metadata("ws://x").weight());
    }
}
