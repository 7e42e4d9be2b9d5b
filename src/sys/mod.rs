//! Small pieces over the operating system that every path shares: wake-ups, `poll(2)`
//! without `EINTR`, an accept loop that stops and backs off, a mutex lock that survives a
//! panicked holder, a throttle for log lines that can recur many times a second, outside
//! text made safe for a log line, and a bounded room for connections not yet identified.

mod bell;
mod printable;
mod throttle;
mod waiting_room;

use std::io;
use std::net::{SocketAddr, TcpStream};
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

/// A non-blocking TCP socket with its connect to `addr` started (not finished: the socket
/// turns writable when it is), for the event loops that must not block on a connect: the
/// simulated callers and the benchmark's floor bridge.
pub fn connect_started(addr: SocketAddr) -> io::Result<TcpStream> {
    use rustix::net::{socket_with, AddressFamily, SocketFlags, SocketType};
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let fd = socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    match rustix::net::connect(&fd, &addr) {
        Ok(()) | Err(rustix::io::Errno::INPROGRESS) => Ok(TcpStream::from(fd)),
        Err(e) => Err(e.into()),
    }
}

/// Whether a non-blocking stream read of `asked` bytes that gave `got` emptied the kernel's
/// receive queue. A TCP `recv` takes everything queued up to the size asked, so fewer bytes
/// than asked (or `WouldBlock`) means nothing was left at that moment; what arrives later
/// makes `poll`/`epoll` report input again, so the read that would only say "would block"
/// can be skipped. End of stream (0 bytes) is not counted: the kernel keeps saying so, which
/// is what readers expect to see.
pub fn emptied_queue(asked: usize, got: &io::Result<usize>) -> bool {
    match got {
        Ok(0) => false,
        Ok(n) => *n < asked,
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    }
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
