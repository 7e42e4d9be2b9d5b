//! Small pieces over the operating system that every path shares: wake-ups, `poll(2)`
//! without `EINTR`, and a mutex lock that survives a panicked holder.

mod bell;

use std::sync::{Mutex, MutexGuard};

pub use bell::{Bell, StopSignal};

/// Locks `mutex`, taking the data even if a thread panicked while holding it: the state
/// guarded here (counters, queues, tables) stays consistent between statements, and one
/// call's panic must not take every other call down with a poisoned lock.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
