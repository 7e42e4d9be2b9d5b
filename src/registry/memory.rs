//! The in-memory registry, the default when `REGISTRY_URL` is unset: one process's `/call`
//! metadata waiting for its AudioSocket call (docs/http.md §3.3 step 3).
//!
//! The dialplan posts `/call`, then dials AudioSocket with the same uuid; the call takes its
//! entry when the UUID frame arrives. Entries that no call claims (the dial failed, the caller
//! hung up first) expire after `CALL_METADATA_TTL`, and the store is bounded in entries and in
//! bytes, so a misbehaving client cannot grow it without limit. When full it refuses the new
//! entry rather than evict one that has not expired: a flood of `/call`s must not silently send
//! a legitimate call to the default agent (docs/http.md §3.3). No timer thread: expired entries
//! are purged whenever something is inserted, and `take` never returns one.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{CallMetadata, Inserted};
use crate::sys::lock;

/// Default bound on stored entries: far above the calls a box places within one TTL.
pub const MAX_ENTRIES: usize = 10_000;

/// Default bound on the stored bytes (URL plus payload JSON, approximately): a payload may be
/// up to 64 KiB, and 10,000 of those would be over half a gigabyte.
pub const MAX_BYTES: usize = 32 * 1024 * 1024;

/// The shortest `Retry-After` a full store asks for.
const ONE_SECOND: Duration = Duration::from_secs(1);

/// Approximate memory an entry holds, for the byte bound.
fn weight(metadata: &CallMetadata) -> usize {
    let payload = serde_json::to_string(&metadata.payload).map_or(0, |s| s.len());
    metadata.sts_url.len() + payload + 128
}

/// The store has no room for an entry until its oldest one expires or is claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Full {
    /// Entries held, and the bound.
    pub entries: usize,
    pub max_entries: usize,
    /// Bytes held, and the bound.
    pub bytes: usize,
    pub max_bytes: usize,
    /// When the oldest entry expires, from the time asked: a retry after this finds room.
    pub retry_after: Duration,
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the call metadata store is full ({} of {} entries, {} of {} KiB) with /call entries \
             no AudioSocket call has claimed yet; retry in {} s (are calls reaching avr-core \
             with the /call uuid?)",
            self.entries,
            self.max_entries,
            self.bytes / 1024,
            self.max_bytes / 1024,
            self.retry_after.as_secs()
        )
    }
}

/// The metadata store of one process, shared by its HTTP service and every call.
pub struct Memory {
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

    /// Whether an entry of `weight` for `uuid` fits, counting out the entry it would replace.
    fn fits(&self, uuid: &str, weight: usize, max_entries: usize, max_bytes: usize) -> bool {
        let (count, bytes) = match self.map.get(uuid) {
            Some(old) => (self.map.len() - 1, self.bytes - old.weight),
            None => (self.map.len(), self.bytes),
        };
        // An entry alone always fits, whatever its weight: the body limit bounds it.
        count == 0 || (count < max_entries && bytes + weight <= max_bytes)
    }

    /// Time from `now` until the oldest live entry expires (at least 1 s, whole seconds).
    fn next_expiry(&self, now: Instant) -> Duration {
        let oldest = self
            .order
            .iter()
            .filter_map(|(seq, uuid)| self.map.get(uuid).filter(|s| s.seq == *seq))
            .map(|s| s.expires)
            .next();
        let wait = oldest.map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
        Duration::from_secs(wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(ONE_SECOND)
    }

    fn remove(&mut self, uuid: &str) -> Option<Stored> {
        let stored = self.map.remove(uuid)?;
        self.bytes -= stored.weight;
        Some(stored)
    }
}

impl Memory {
    /// A store whose entries live `ttl`, with the default bounds.
    pub fn new(ttl: Duration) -> Memory {
        Memory::with_bounds(ttl, MAX_ENTRIES, MAX_BYTES)
    }

    pub fn with_bounds(ttl: Duration, max_entries: usize, max_bytes: usize) -> Memory {
        Memory {
            ttl,
            max_entries: max_entries.max(1),
            max_bytes,
            entries: Mutex::new(Entries::default()),
        }
    }

    /// Whether `metadata` for `uuid` would be stored at `now`: `/call` asks before it sends
    /// `call_initiated`, so a refused call costs the receiver nothing. [`Memory::insert`]
    /// still decides.
    pub fn check(&self, uuid: &str, metadata: &CallMetadata, now: Instant) -> Result<(), Full> {
        let mut entries = self.lock();
        entries.purge(now);
        if entries.fits(uuid, weight(metadata), self.max_entries, self.max_bytes) {
            Ok(())
        } else {
            Err(self.full(&entries, now))
        }
    }

    /// Stores `metadata` under the canonical `uuid` until `now + ttl`, replacing an earlier
    /// one; refused when the bounds leave no room, since no unexpired entry is ever evicted.
    pub fn insert(
        &self,
        uuid: &str,
        metadata: CallMetadata,
        now: Instant,
    ) -> Result<Inserted, Full> {
        let weight = weight(&metadata);
        let mut entries = self.lock();
        entries.purge(now);
        if !entries.fits(uuid, weight, self.max_entries, self.max_bytes) {
            return Err(self.full(&entries, now));
        }
        let done = Inserted {
            replaced: entries.remove(uuid).is_some(),
        };
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
        Ok(done)
    }

    fn full(&self, entries: &Entries, now: Instant) -> Full {
        Full {
            entries: entries.map.len(),
            max_entries: self.max_entries,
            bytes: entries.bytes,
            max_bytes: self.max_bytes,
            retry_after: entries.next_expiry(now),
        }
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
    use serde_json::{json, Value};

    fn metadata(url: &str) -> CallMetadata {
        let Value::Object(payload) = json!({"from": "2000"}) else {
            unreachable!()
        };
        CallMetadata {
            sts_url: url.into(),
            payload,
            overridden: false,
        }
    }

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn take_returns_the_entry_once() {
        let reg = Memory::new(TTL);
        let t0 = Instant::now();
        assert_eq!(
            reg.insert("a", metadata("ws://x/1"), t0),
            Ok(Inserted::default())
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
        let reg = Memory::new(TTL);
        let t0 = Instant::now();
        reg.insert("a", metadata("ws://x/1"), t0).unwrap();
        assert_eq!(reg.take("a", t0 + TTL), None, "expired exactly at the TTL");
        assert!(reg.is_empty(), "an expired entry is freed when asked for");

        reg.insert("b", metadata("ws://x/2"), t0).unwrap();
        reg.insert("c", metadata("ws://x/3"), t0 + Duration::from_secs(30))
            .unwrap();
        // Inserting after b's TTL purges b without anyone asking for it.
        reg.insert("d", metadata("ws://x/4"), t0 + TTL + Duration::from_secs(1))
            .unwrap();
        assert_eq!(reg.len(), 2);
        assert!(reg.take("c", t0 + TTL + Duration::from_secs(1)).is_some());
    }

    #[test]
    fn a_second_call_for_the_same_uuid_replaces_the_first() {
        let reg = Memory::new(TTL);
        let t0 = Instant::now();
        reg.insert("a", metadata("ws://x/1"), t0).unwrap();
        let again = reg
            .insert("a", metadata("ws://x/2"), t0 + Duration::from_secs(50))
            .unwrap();
        assert!(again.replaced);
        // The replacement has its own TTL: the first one's expiry does not remove it.
        reg.insert("z", metadata("ws://x/z"), t0 + Duration::from_secs(70))
            .unwrap();
        assert_eq!(
            reg.take("a", t0 + Duration::from_secs(71)),
            Some(metadata("ws://x/2"))
        );
    }

    #[test]
    fn when_full_new_entries_are_refused_and_none_is_evicted() {
        let reg = Memory::with_bounds(TTL, 3, usize::MAX);
        let t0 = Instant::now();
        for (i, uuid) in ["a", "b", "c"].iter().enumerate() {
            let at = t0 + Duration::from_millis(1000 * i as u64);
            reg.insert(uuid, metadata("ws://x"), at).unwrap();
        }
        let now = t0 + Duration::from_millis(2500);
        let full = reg.insert("d", metadata("ws://x"), now).unwrap_err();
        assert_eq!(reg.check("d", &metadata("ws://x"), now), Err(full.clone()));
        assert_eq!((full.entries, full.max_entries), (3, 3));
        // a expires at 60 s: 57.5 s from now, rounded up.
        assert_eq!(full.retry_after, Duration::from_secs(58));
        assert!(full.to_string().contains("retry in 58 s"), "{full}");
        // Nothing was dropped, and a replacement of a stored uuid still fits.
        assert!(
            reg.insert("b", metadata("ws://x/b2"), now)
                .unwrap()
                .replaced
        );
        for uuid in ["a", "c"] {
            assert!(reg.take(uuid, now).is_some(), "{uuid} kept");
        }
        // A claimed entry makes room at once; an expired one by the time it expires.
        reg.insert("d", metadata("ws://x"), now).unwrap();
        reg.insert("e", metadata("ws://x"), now).unwrap();
        assert!(reg.insert("f", metadata("ws://x"), now).is_err());
        reg.insert("f", metadata("ws://x"), now + TTL).unwrap();
    }

    #[test]
    fn the_byte_bound_refuses_too() {
        let one = weight(&metadata("ws://x"));
        let reg = Memory::with_bounds(TTL, 100, 2 * one);
        let t0 = Instant::now();
        reg.insert("a", metadata("ws://x"), t0).unwrap();
        reg.insert("b", metadata("ws://x"), t0).unwrap();
        let full = reg.insert("c", metadata("ws://x"), t0).unwrap_err();
        assert_eq!((full.bytes, full.max_bytes), (2 * one, 2 * one));
        assert_eq!(reg.len(), 2);
        // One entry alone is stored whatever its weight.
        let tiny = Memory::with_bounds(TTL, 100, 1);
        tiny.insert("a", metadata("ws://x"), t0).unwrap();
        assert!(tiny.insert("b", metadata("ws://x"), t0).is_err());
    }

    #[test]
    fn churn_keeps_the_order_queue_bounded() {
        let reg = Memory::new(TTL);
        let t0 = Instant::now();
        for _ in 0..10_000 {
            reg.insert("same", metadata("ws://x"), t0).unwrap();
        }
        for i in 0..10_000 {
            let uuid = format!("u{i}");
            reg.insert(&uuid, metadata("ws://x"), t0).unwrap();
            reg.take(&uuid, t0);
        }
        let entries = reg.lock();
        assert_eq!(entries.map.len(), 1);
        assert!(
            entries.order.len() <= 2 * entries.map.len() + 65,
            "{}",
            entries.order.len()
        );
        assert_eq!(entries.bytes, weight(&metadata("ws://x")));
    }
}
