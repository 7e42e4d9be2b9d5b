//! The HTTP service's connection table: admission when a connection is accepted, and room
//! made for it by closing the oldest connection that has not sent a whole request, so idle
//! or slow clients can never lock out a real one.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::sys::lock;

/// Open connections, so that the oldest one still waiting for its request can be closed
/// when the table is full.
pub(super) struct Connections {
    max: usize,
    open: Mutex<Vec<Open>>,
    next_id: AtomicU64,
}

struct Open {
    id: u64,
    accepted: Instant,
    /// Still receiving its request (or lingering after the answer): may be closed.
    pending: bool,
    /// A duplicate handle, to shut the connection down from the accept thread.
    stream: TcpStream,
}

pub(super) enum Admission {
    /// `evicted`: how long the connection closed to make room had been open.
    Admitted {
        slot: Slot,
        evicted: Option<Duration>,
    },
    Full,
    Failed(io::Error),
}

impl Connections {
    pub(super) fn new(max: usize) -> Connections {
        Connections {
            max: max.max(1),
            open: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Open>> {
        lock(&self.open)
    }

    pub(super) fn admit(self: &Arc<Self>, stream: &TcpStream) -> Admission {
        let dup = match stream.try_clone() {
            Ok(d) => d,
            Err(e) => return Admission::Failed(e),
        };
        let now = Instant::now();
        let mut open = self.lock();
        let mut evicted = None;
        if open.len() >= self.max {
            let oldest = open
                .iter()
                .enumerate()
                .filter(|(_, o)| o.pending)
                .min_by_key(|(_, o)| o.accepted)
                .map(|(i, _)| i);
            let Some(i) = oldest else {
                return Admission::Full;
            };
            let gone = open.swap_remove(i);
            // Its thread's read returns at once and the thread ends.
            let _ = gone.stream.shutdown(Shutdown::Both);
            evicted = Some(now.saturating_duration_since(gone.accepted));
        }
        let id = self.next_id.fetch_add(1, Relaxed);
        open.push(Open {
            id,
            accepted: now,
            pending: true,
            stream: dup,
        });
        Admission::Admitted {
            slot: Slot {
                id,
                accepted: now,
                table: self.clone(),
            },
            evicted,
        }
    }
}

/// A connection's place in the [`Connections`], released on drop.
pub(super) struct Slot {
    id: u64,
    pub(super) accepted: Instant,
    table: Arc<Connections>,
}

impl Slot {
    /// Marks whether the connection may be closed for a newer one; `false` if it already was.
    pub(super) fn set_pending(&self, pending: bool) -> bool {
        let mut open = self.table.lock();
        match open.iter_mut().find(|o| o.id == self.id) {
            Some(o) => {
                o.pending = pending;
                true
            }
            None => false,
        }
    }

    pub(super) fn is_open(&self) -> bool {
        self.table.lock().iter().any(|o| o.id == self.id)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.lock().retain(|o| o.id != self.id);
    }
}
