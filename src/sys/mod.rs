//! Small pieces over the operating system that every path shares: wake-ups, `poll(2)`
//! without `EINTR`, an accept loop that stops and backs off, a mutex lock that survives a
//! panicked holder, a throttle for log lines that can recur many times a second, outside
//! text made safe for a log line, and a bounded room for connections not yet identified.

mod bell;
mod printable;
mod throttle;
mod waiting_room;

use std::io;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, Timespec};

pub use bell::{Bell, StopSignal, ACCEPT_BACKOFF};
pub use printable::Printable;
pub use throttle::Throttle;
pub use waiting_room::{Admission, MadeRoom, Ticket, WaitingRoom};

/// Locks `mutex`, taking the data even if a thread panicked while holding it: the state
/// guarded here (counters, queues, tables) stays consistent between statements, and one
/// call's panic must not take every other call down with a poisoned lock.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// `poll(2)` on `fds` for at most `timeout` (`None`: until something is ready). A signal
/// (`EINTR`) does not cut the wait short: it resumes with what is left of the timeout.
/// Returns how many descriptors are ready, 0 on timeout.
pub fn poll(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> io::Result<usize> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        // A timeout too large for a timespec waits forever, which is what it meant.
        let limit = left.and_then(|l| Timespec::try_from(l).ok());
        match rustix::event::poll(fds, limit.as_ref()) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::event::PollFlags;

    #[test]
    fn poll_times_out_and_sees_a_ring() {
        let bell = Bell::new().unwrap();
        let mut fds = [PollFd::new(&bell, PollFlags::IN)];
        assert_eq!(poll(&mut fds, Some(Duration::from_millis(1))).unwrap(), 0);
        bell.ring();
        let mut fds = [PollFd::new(&bell, PollFlags::IN)];
        assert_eq!(poll(&mut fds, Some(Duration::ZERO)).unwrap(), 1);
        bell.clear();
        let mut fds = [PollFd::new(&bell, PollFlags::IN)];
        assert_eq!(poll(&mut fds, Some(Duration::ZERO)).unwrap(), 0);
    }

    #[test]
    fn a_poisoned_lock_still_gives_its_data() {
        let m = std::sync::Arc::new(Mutex::new(5));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m), 5);
    }
}
