//! `/call` metadata waiting for its AudioSocket call (docs/http.md §3.3 step 3).
//!
//! Two stores behind one type, chosen at startup by `REGISTRY_URL`:
//! - [`Memory`] (unset, the appliance default): this process's memory. The AudioSocket call
//!   must reach the instance that answered its `/call`.
//! - [`Shared`] (`redis://` or `rediss://`): Redis or Valkey, so several instances behind a
//!   load balancer share one registry; whichever instance receives the AudioSocket call takes
//!   the entry in one atomic command, so exactly one call uses it.
//!
//! A plain enum rather than a trait object: two known stores, and callers (the HTTP service,
//! every call) hold one `Arc<Registry>` whichever it is.

pub mod memory;
pub mod shared;

use std::time::{Duration, Instant};

use serde_json::{Map, Value};

pub use memory::{Full, Memory, MAX_BYTES, MAX_ENTRIES};
pub use shared::{Shared, Unavailable};

/// What a call needs from its `/call`.
#[derive(Debug, Clone, PartialEq)]
pub struct CallMetadata {
    /// The effective STS URL, webhook override and payload parameters included.
    pub sts_url: String,
    /// The `/call` payload, sent to the agent in `init`.
    pub payload: Map<String, Value>,
    /// `call_initiated` chose the URL (the `/call` answer's `override`): the instance that
    /// takes the call says so in its start line, wherever `/call` was answered.
    pub overridden: bool,
}

/// What [`Registry::insert`] did besides storing, for the caller's log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Inserted {
    /// An earlier, unclaimed `/call` for the same uuid was replaced.
    pub replaced: bool,
}

/// Why [`Registry::insert`] stored nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The in-memory store is at its bounds.
    Full(Full),
    /// The shared registry did not answer within its budget.
    Unavailable(Unavailable),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Full(full) => full.fmt(f),
            Refused::Unavailable(why) => why.fmt(f),
        }
    }
}

/// What `/health` says about the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The in-memory store: nothing that can be down.
    Memory,
    /// The shared registry answered a PING within its budget.
    Up,
    /// It did not, and why.
    Down(Unavailable),
}

/// The metadata store, shared by the HTTP service and every call.
// One per process, behind an `Arc`: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Registry {
    Memory(Memory),
    Shared(Shared),
}

impl Registry {
    /// The in-memory store whose entries live `ttl`, with the default bounds.
    pub fn new(ttl: Duration) -> Registry {
        Registry::Memory(Memory::new(ttl))
    }

    /// The in-memory store with other bounds (tests).
    pub fn with_bounds(ttl: Duration, max_entries: usize, max_bytes: usize) -> Registry {
        Registry::Memory(Memory::with_bounds(ttl, max_entries, max_bytes))
    }

    /// The shared registry at `url` (`redis://` or `rediss://`, whose certificate is checked
    /// against `private_ca` when given, see [`Shared::open`]), entries living `ttl`, every
    /// operation bounded by `timeout`. Connects lazily: an instance starts while Redis is down,
    /// and `/health` says so. `Err` says what is wrong with the URL or the CA.
    pub fn shared(
        url: &str,
        ttl: Duration,
        timeout: Duration,
        private_ca: Option<&[u8]>,
    ) -> Result<Registry, String> {
        Shared::open(url, ttl, timeout, private_ca).map(Registry::Shared)
    }

    /// Whether `metadata` for `uuid` would be stored at `now`: `/call` asks before it sends
    /// `call_initiated`, so a refused call costs the receiver nothing. [`Registry::insert`]
    /// still decides. The shared registry has no bounds of its own (Redis's `maxmemory` is the
    /// operator's); it is asked whether it answers (`PING`, one loopback round trip), so a
    /// Redis that is down refuses the `/call` before the webhook, as a full store does.
    pub fn check(&self, uuid: &str, metadata: &CallMetadata, now: Instant) -> Result<(), Refused> {
        match self {
            Registry::Memory(memory) => memory.check(uuid, metadata, now).map_err(Refused::Full),
            Registry::Shared(shared) => shared.ping().map_err(Refused::Unavailable),
        }
    }

    /// Stores `metadata` under the canonical `uuid` for the TTL, replacing an earlier one.
    pub fn insert(
        &self,
        uuid: &str,
        metadata: CallMetadata,
        now: Instant,
    ) -> Result<Inserted, Refused> {
        match self {
            Registry::Memory(memory) => memory.insert(uuid, metadata, now).map_err(Refused::Full),
            Registry::Shared(shared) => {
                shared.insert(uuid, &metadata).map_err(Refused::Unavailable)
            }
        }
    }

    /// Removes and returns the entry for `uuid` unless it expired at `now`; `Err` when the
    /// shared registry could not be asked (the call then goes ahead without metadata).
    pub fn take(&self, uuid: &str, now: Instant) -> Result<Option<CallMetadata>, Unavailable> {
        match self {
            Registry::Memory(memory) => Ok(memory.take(uuid, now)),
            Registry::Shared(shared) => shared.take(uuid),
        }
    }

    /// For `/health`: the shared registry is PINGed, within its budget.
    pub fn health(&self) -> Health {
        match self {
            Registry::Memory(_) => Health::Memory,
            Registry::Shared(shared) => match shared.ping() {
                Ok(()) => Health::Up,
                Err(why) => Health::Down(why),
            },
        }
    }

    /// Entries held in this process's memory (always 0 for the shared registry, whose entries
    /// live in Redis).
    pub fn len(&self) -> usize {
        match self {
            Registry::Memory(memory) => memory.len(),
            Registry::Shared(_) => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
