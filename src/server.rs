//! The AudioSocket listener: accepts connections, enforces `MAX_CALLS`, starts calls.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};

use crate::audiosocket;
use crate::call::{self, CallContext, CallSlot};

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

/// Accepts calls until `stop` is triggered; each call runs on its own thread. Returns with
/// the listener closed, so new connections are refused while live calls finish: `true` when
/// stopped, `false` when the listener failed.
pub fn serve(listener: TcpListener, ctx: Arc<CallContext>, stop: &StopSignal) -> bool {
    let max = ctx.config.max_calls as u64;
    if let Err(e) = listener.set_nonblocking(true) {
        log::error!("AudioSocket listener: cannot make it non-blocking: {e}");
        return false;
    }
    while let Some(conn) = stop.accept(&listener) {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                log::warn!("AudioSocket accept failed: {e}");
                // Out of file descriptors: back off instead of spinning on the error.
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let peer = match stream.peer_addr() {
            Ok(p) => p,
            Err(_) => continue, // already gone
        };
        let Some(slot) = CallSlot::take(&ctx.metrics, max) else {
            ctx.metrics.calls_rejected.fetch_add(1, Relaxed);
            log::warn!(
                "Rejecting AudioSocket connection from {peer}: MAX_CALLS ({max}) calls in \
                 progress; sent a hangup so the dialplan continues"
            );
            reject(stream);
            continue;
        };
        let call_ctx = ctx.clone();
        let spawned = thread::Builder::new()
            .name("call-new".into())
            .stack_size(call::THREAD_STACK)
            .spawn(move || call::run(stream, peer, &call_ctx, slot));
        if let Err(e) = spawned {
            log::error!("Cannot start a thread for the call from {peer}: {e}");
        }
    }
    // Closed before it is said to be: from this line on, connections are refused.
    drop(listener);
    log::info!("AudioSocket listener closed: no new calls are accepted");
    true
}

/// Hangs up a connection that cannot be served, without blocking the accept loop.
fn reject(mut stream: TcpStream) {
    let _ = stream.write_all(&audiosocket::HANGUP);
    let _ = stream.shutdown(Shutdown::Write);
    // Read what already arrived (the UUID) so closing sends FIN, not a reset that could
    // discard the hangup frame before Asterisk reads it.
    let _ = stream.set_nonblocking(true);
    let mut sink = [0u8; 512];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}
