//! The calls in progress, as the shutdown path sees them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::sys::{lock, Bell};

/// The calls in progress, so a shutdown can hang up those that outlive the grace period.
#[derive(Default)]
pub struct LiveCalls {
    calls: Mutex<Vec<Weak<LiveCall>>>,
}

impl LiveCalls {
    pub(super) fn add(&self, call: &Arc<LiveCall>) {
        let mut calls = lock(&self.calls);
        calls.retain(|c| c.strong_count() > 0);
        calls.push(Arc::downgrade(call));
    }

    /// Hangs up every call in progress (`00 00 00`, so each dialplan continues); returns
    /// how many there were.
    pub fn hang_up_all(&self) -> usize {
        let calls: Vec<Arc<LiveCall>> = lock(&self.calls)
            .drain(..)
            .filter_map(|c| c.upgrade())
            .collect();
        for call in &calls {
            call.hang_up();
        }
        calls.len()
    }
}

/// What another thread holds of a call in progress: a way to ask it to hang up. The call's
/// own thread does the hanging up, woken by the call's bell.
pub struct LiveCall {
    bell: Arc<Bell>,
    hang_up: AtomicBool,
}

impl LiveCall {
    /// A call whose thread polls `bell`.
    pub(super) fn new(bell: Arc<Bell>) -> LiveCall {
        LiveCall {
            bell,
            hang_up: AtomicBool::new(false),
        }
    }

    /// Asks the call's thread to hang up because avr-core is stopping.
    fn hang_up(&self) {
        self.hang_up.store(true, Ordering::Release);
        self.bell.ring();
    }

    /// Whether a hang-up was asked since the last look. The call's thread looks after
    /// clearing its bell, so a ring it did not see is still pending.
    pub(super) fn hang_up_asked(&self) -> bool {
        self.hang_up.swap(false, Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hang_up_all_asks_each_live_call_once_and_rings_it() {
        let live = LiveCalls::default();
        let bell = Arc::new(Bell::new().unwrap());
        let call = Arc::new(LiveCall::new(bell.clone()));
        let ended = Arc::new(LiveCall::new(Arc::new(Bell::new().unwrap())));
        live.add(&call);
        live.add(&ended);
        drop(ended);
        assert!(!call.hang_up_asked());
        assert_eq!(live.hang_up_all(), 1, "a call that ended is not counted");
        assert!(bell.wait(Some(std::time::Duration::ZERO)));
        assert!(call.hang_up_asked());
        assert!(!call.hang_up_asked(), "asked once");
        assert_eq!(live.hang_up_all(), 0);
    }
}
