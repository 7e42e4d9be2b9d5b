//! A place among the `MAX_CALLS` calls avr-core carries at once.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::metrics::Metrics;

/// One of the `MAX_CALLS` places, held from the UUID until the call's resources are released
/// (before it, a connection waits within `MAX_PENDING_CONNECTIONS`: docs/audiosocket.md §10.1).
pub struct CallSlot(Arc<Metrics>);

impl CallSlot {
    /// Takes a place if fewer than `max` calls are active.
    pub fn take(metrics: &Arc<Metrics>, max: u64) -> Option<CallSlot> {
        metrics
            .active_calls
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| CallSlot(metrics.clone()))
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        self.0.active_calls.fetch_sub(1, Relaxed);
    }
}
