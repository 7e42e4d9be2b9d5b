//! Wake-ups a thread can `poll(2)` beside its sockets.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
#[cfg(test)]
use std::time::Duration;

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};

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
        let limit = timeout.and_then(|t| rustix::event::Timespec::try_from(t).ok());
        loop {
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match poll(&mut fds, limit.as_ref()) {
                Ok(n) => return n > 0,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return false,
            }
        }
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

    /// The next connection on `listener`, or `None` once the stop is triggered. The listener
    /// must be non-blocking; the accepted stream is blocking.
    pub fn accept(&self, listener: &TcpListener) -> Option<io::Result<TcpStream>> {
        loop {
            let mut fds = [
                PollFd::new(listener, PollFlags::IN),
                PollFd::new(&self.bell.fd, PollFlags::IN),
            ];
            match poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Some(Err(e.into())),
            }
            if !fds[1].revents().is_empty() {
                return None;
            }
            match listener.accept() {
                // Linux does not pass O_NONBLOCK on through accept(); make sure anyway.
                Ok((s, _)) => return Some(s.set_nonblocking(false).map(|()| s)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
