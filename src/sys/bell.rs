//! Wake-ups a thread can `poll(2)` beside its sockets, and the accept loop that stops on one.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::thread;
use std::time::Duration;

use rustix::event::{eventfd, EventfdFlags, PollFd, PollFlags};

use super::poll;

/// After a failed `accept(2)` (most often: out of file descriptors), how long the loop
/// waits before trying again, instead of spinning on the error while calls end and free some.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A wake-up a thread can `poll(2)` beside its sockets: an eventfd. Ringing it twice before
/// it is cleared wakes the thread once.
pub struct Bell {
    fd: OwnedFd,
}

impl Bell {
    pub fn new() -> io::Result<Bell> {
        Ok(Bell {
            fd: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?,
        })
    }

    pub fn ring(&self) {
        // Fails only if the counter would overflow, which means a ring is pending anyway.
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }

    /// Forgets the rings so far; call it before looking at what they announce.
    pub fn clear(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut buf);
    }

    /// Waits for a ring (without clearing it); `false` on timeout.
    #[cfg(test)]
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        matches!(poll(&mut fds, timeout), Ok(n) if n > 0)
    }
}

impl AsFd for Bell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Tells the listeners to stop accepting: a [`Bell`] the accept loops poll beside the
/// listening socket, so stopping needs no self-connection trick and no timeout loop.
pub struct StopSignal {
    bell: Bell,
}

impl StopSignal {
    pub fn new() -> io::Result<StopSignal> {
        Ok(StopSignal { bell: Bell::new()? })
    }

    pub fn trigger(&self) {
        self.bell.ring();
    }

    /// The next connection on `listener` and its peer, or `None` once the stop is triggered.
    /// A failed `accept(2)` is handed to `on_error` (to log, throttled as the caller likes),
    /// then retried after [`ACCEPT_BACKOFF`]; a connection already gone is skipped. The
    /// listener must be non-blocking; the accepted stream is blocking.
    pub fn accept(
        &self,
        listener: &TcpListener,
        mut on_error: impl FnMut(&io::Error),
    ) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let mut fds = [
                PollFd::new(listener, PollFlags::IN),
                PollFd::new(&self.bell.fd, PollFlags::IN),
            ];
            if let Err(e) = poll(&mut fds, None) {
                on_error(&e);
                thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
            if !fds[1].revents().is_empty() {
                return None;
            }
            let accepted = listener.accept().and_then(|(stream, peer)| {
                // Linux does not pass O_NONBLOCK on through accept(); make sure anyway.
                stream.set_nonblocking(false)?;
                Ok((stream, peer))
            });
            match accepted {
                Ok(conn) => return Some(conn),
                Err(e) if is_transient(&e) => continue,
                Err(e) => {
                    on_error(&e);
                    thread::sleep(ACCEPT_BACKOFF);
                }
            }
        }
    }
}

/// Nothing to accept after all, or a connection that was reset before it was accepted.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
    )
}
