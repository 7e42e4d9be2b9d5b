//! The AudioSocket listener: accepts connections, keeps those waiting for their UUID within
//! `MAX_PENDING_CONNECTIONS`, gives each UUID one of the `MAX_CALLS` places, starts calls
//! (docs/audiosocket.md §10.1).
//!
//! The two budgets are apart so that connections that are not calls yet can never take a
//! call's place: a peer that connects and says nothing only competes with other such peers,
//! and the one that has waited longest is closed first. A connection becomes a call only
//! with its UUID; from then on `CALLER_IDLE_TIMEOUT` bounds how long a silent one keeps it.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::handshake::{read_uuid, uuid_waiting, NoUuid, UUID_TIMEOUT};
use crate::call::{self, CallContext, CallSlot};
use crate::proto::audiosocket::{self, CallId, FrameBuffer};
use crate::sys::{lock, Admission, StopSignal, Throttle, Ticket, WaitingRoom};

/// How often each kind of refusal may be logged; the lines count what they held back, so a
/// flood of connections cannot flood the log as well.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// On stopping, at most how many connections already queued in the kernel are still taken:
/// the listen backlog Rust's `TcpListener::bind` asks for.
const LATE_ACCEPTS_MAX: usize = 128;

/// On stopping, how often to look whether the connections still waiting for their UUID have
/// become calls, and how long past [`UUID_TIMEOUT`] they may take to (their threads' own
/// clocks start a little after the accept).
const LATE_UUID_POLL: Duration = Duration::from_millis(10);
const LATE_UUID_MARGIN: Duration = Duration::from_millis(500);

/// What the accept loop and the connections waiting for their UUID share.
struct Door {
    /// Connections that have not sent their UUID yet.
    waiting: Arc<WaitingRoom>,
    max_calls: u64,
    /// "MAX_CALLS reached" lines, written by the connections' threads.
    calls_full: Mutex<Throttle>,
}

/// Accepts calls until `stop` is triggered; each connection runs on its own thread. Returns
/// with the listener closed, so new connections are refused (reset: a TCP load balancer
/// retries them on another instance) while live calls finish, and once every connection
/// accepted so far has become a call or given up: `true` when stopped, `false` when the
/// listener failed.
pub fn serve(listener: TcpListener, ctx: Arc<CallContext>, stop: &StopSignal) -> bool {
    let max_pending = ctx.config.max_pending_connections;
    let door = Arc::new(Door {
        waiting: WaitingRoom::new(max_pending),
        max_calls: ctx.config.max_calls as u64,
        calls_full: Mutex::new(Throttle::new("connections", LOG_EVERY)),
    });
    if let Err(e) = listener.set_nonblocking(true) {
        log::error!("AudioSocket listener: cannot make it non-blocking: {e}");
        return false;
    }
    let mut made_room = Throttle::new("connections", LOG_EVERY);
    let mut refused = Throttle::new("connections", LOG_EVERY);
    let mut failed_accepts = Throttle::new("accept errors", LOG_EVERY);
    let mut on_error = |e: &std::io::Error| {
        failed_accepts.note(Instant::now(), |more| {
            log::warn!("AudioSocket accept failed: {e}{more}")
        })
    };
    let mut admit = |stream: TcpStream, peer: SocketAddr| {
        let mut now = Instant::now();
        let mut admission = door.waiting.admit(&stream, peer, now, uuid_waiting);
        // A full room of young connections: the newcomer waits its turn (at most the grace,
        // 40 ms), and later ones wait in the kernel's queue, where a real
        // peer's UUID arrives meanwhile.
        while let Admission::WaitFor(wait) = admission {
            thread::sleep(wait);
            now = Instant::now();
            admission = door.waiting.admit(&stream, peer, now, uuid_waiting);
        }
        let ticket = match admission {
            Admission::Admitted {
                ticket,
                made_room: closed,
            } => {
                if let Some(closed) = closed {
                    made_room.note(now, |more| {
                        log::warn!(
                            "AudioSocket: MAX_PENDING_CONNECTIONS ({max_pending}) connections \
                             are waiting for their UUID; closed the one from {} (waiting {:.1} \
                             s) to admit {peer}{more}",
                            closed.peer,
                            closed.waited.as_secs_f64()
                        )
                    });
                }
                ticket
            }
            Admission::WaitFor(_) => unreachable!("waited for above"),
            Admission::Full => {
                ctx.metrics.calls_rejected.fetch_add(1, Relaxed);
                refused.note(now, |more| {
                    log::warn!(
                        "Rejecting AudioSocket connection from {peer}: MAX_PENDING_CONNECTIONS \
                         ({max_pending}) connections are starting calls; sent a hangup so the \
                         dialplan continues{more}"
                    )
                });
                reject(stream);
                return;
            }
            Admission::Failed(e) => {
                ctx.metrics.calls_rejected.fetch_add(1, Relaxed);
                refused.note(now, |more| {
                    log::warn!(
                        "Rejecting AudioSocket connection from {peer}: {e}; sent a hangup so \
                         the dialplan continues{more}"
                    )
                });
                reject(stream);
                return;
            }
        };
        let call_ctx = ctx.clone();
        let door = door.clone();
        let spawned = thread::Builder::new()
            .name("call-new".into())
            .stack_size(call::THREAD_STACK)
            .spawn(move || connection(stream, peer, &call_ctx, &door, ticket));
        if let Err(e) = spawned {
            log::error!("Cannot start a thread for the call from {peer}: {e}");
        }
    };
    while let Some((stream, peer)) = stop.accept(&listener, &mut on_error) {
        admit(stream, peer);
    }
    // The kernel completed these handshakes before the stop: their peers (Asterisk, or a load
    // balancer that has already forwarded the UUID) believe they are connected, and closing
    // the listener would reset them mid-setup. They are served like any other.
    // Bounded: connections keep arriving until the close, and the close must come.
    let mut late = 0;
    for _ in 0..LATE_ACCEPTS_MAX {
        let Ok((stream, peer)) = listener.accept() else {
            break;
        };
        if stream.set_nonblocking(false).is_ok() {
            late += 1;
            admit(stream, peer);
        }
    }
    // Closed before it is said to be: from this line on, connections are refused.
    drop(listener);
    log::info!(
        "AudioSocket listener closed: no new calls are accepted{}",
        if late > 0 {
            format!(" ({late} connections already queued are served)")
        } else {
            String::new()
        }
    );
    // Connections still waiting for their UUID become calls (or give up) within
    // UUID_TIMEOUT; the caller counts live calls to know when to exit, so wait for them.
    let deadline = Instant::now() + UUID_TIMEOUT + LATE_UUID_MARGIN;
    while !door.waiting.is_empty() && Instant::now() < deadline {
        thread::sleep(LATE_UUID_POLL);
    }
    true
}

/// One connection on its own thread: its UUID within [`super::handshake::UUID_TIMEOUT`],
/// then a `MAX_CALLS` place, then the call.
fn connection(stream: TcpStream, peer: SocketAddr, ctx: &CallContext, door: &Door, ticket: Ticket) {
    let _ = stream.set_nodelay(true);
    let mut frames = FrameBuffer::new(audiosocket::MAX_PAYLOAD);
    let read = read_uuid(&stream, &mut frames);
    // Leaving the waiting room first: from here the connection is not closed for another.
    let why = match (read, ticket.leave()) {
        (Ok(bytes), true) => return start_call(stream, peer, ctx, door, bytes, frames),
        (_, false) => NoUuid::ClosedForRoom,
        (Err(why), true) => why,
    };
    ctx.metrics.connections_without_uuid.fetch_add(1, Relaxed);
    if why.is_quiet() {
        log::debug!("AudioSocket connection from {peer} closed: {why}");
    } else {
        log::warn!("AudioSocket connection from {peer} closed: {why}");
    }
}

/// The UUID has come: the call takes a `MAX_CALLS` place, or is hung up if none is free.
fn start_call(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: &CallContext,
    door: &Door,
    uuid: [u8; 16],
    frames: FrameBuffer,
) {
    let started = Instant::now();
    let Some(slot) = CallSlot::take(&ctx.metrics, door.max_calls) else {
        ctx.metrics.calls_rejected.fetch_add(1, Relaxed);
        let max = door.max_calls;
        lock(&door.calls_full).note(started, |more| {
            log::warn!(
                "Rejecting AudioSocket connection from {peer}: MAX_CALLS ({max}) calls in \
                 progress; sent a hangup so the dialplan continues{more}"
            )
        });
        reject(stream);
        return;
    };
    let uuid = CallId::from_bytes(uuid).to_string();
    call::run(stream, peer, ctx, slot, &uuid, frames, started);
}

/// Hangs up a connection that cannot be served, without blocking.
fn reject(mut stream: TcpStream) {
    let _ = stream.write_all(&audiosocket::HANGUP);
    let _ = stream.shutdown(Shutdown::Write);
    // Read what already arrived (the UUID) so closing sends FIN, not a reset that could
    // discard the hangup frame before Asterisk reads it.
    let _ = stream.set_nonblocking(true);
    let mut sink = [0u8; 512];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}
