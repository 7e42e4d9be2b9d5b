//! The echo agent's one thread: an epoll loop over the listener, every connection and a
//! min-heap of due times (echo chunks, handshake and write deadlines).
//!
//! Why one thread: the benchmark runs 1,000 echo connections beside the server it measures,
//! and a thread per connection cost the harness more CPU than the work (issue #15). The loop
//! is level-triggered, so a socket is read until it would block (tungstenite may hold a whole
//! message already read), and it waits for `EPOLLOUT` only while a write is pending.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender;
use rustix::event::epoll::{self, CreateFlags, Event, EventData, EventFlags};
use rustix::event::Timespec;
use tungstenite::handshake::server::{Callback, ErrorResponse, Request, Response, ServerHandshake};
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::protocol::WebSocketConfig;

use super::{
    AudioTap, EchoEvent, EchoOptions, Events, Session, HANDSHAKE_TIMEOUT, READ_BUFFER,
    WRITE_TIMEOUT,
};
use crate::sys::{Bell, ACCEPT_BACKOFF};

/// Epoll data of the listening socket; connections count from 1.
const LISTENER: u64 = 0;
/// Epoll data of the stop bell.
const STOP: u64 = u64::MAX;
/// Events taken per `epoll_wait`: enough that a busy second costs few wake-ups, small enough
/// to sit on the stack of the loop's thread.
const MAX_EVENTS: usize = 256;

/// What the loop serves with, fixed for the server's life.
pub(super) struct Setup {
    pub opts: EchoOptions,
    pub rate_hz: u32,
    pub events: Arc<Events>,
    pub tap: Option<AudioTap>,
}

/// Serves `listener` until `stop` rings, then closes it, tells `closed` so, and serves the
/// connections still open until their clients leave.
pub(super) fn run(listener: TcpListener, stop: &Bell, closed: Sender<()>, setup: Setup) {
    let mut server = match Loop::new(listener, stop, setup) {
        Ok(server) => server,
        Err(e) => {
            log::error!("Echo STS: cannot start the event loop: {e}");
            return;
        }
    };
    let mut closed = Some(closed);
    let mut ready: Vec<Event> = Vec::with_capacity(MAX_EVENTS);
    loop {
        if server.listener.is_none() && server.conns.is_empty() {
            return;
        }
        let timeout = server.timeout(Instant::now());
        ready.clear();
        match epoll::wait(
            &server.epoll,
            rustix::buffer::spare_capacity(&mut ready),
            timeout.as_ref(),
        ) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                log::error!("Echo STS: epoll_wait failed ({e}); the agent stops");
                return;
            }
        }
        for event in &ready {
            match event.data.u64() {
                STOP => {
                    stop.clear();
                    server.close_listener();
                    // Nobody waits any more once the server's handle is gone.
                    if let Some(closed) = closed.take() {
                        let _ = closed.send(());
                    }
                }
                LISTENER => server.accept_all(),
                id => server.service(id, Instant::now()),
            }
        }
        server.fire_timers(Instant::now());
    }
}

/// A connection: upgrading, or open.
enum Conn {
    Upgrading {
        /// `None` only while [`MidHandshake::handshake`] runs.
        mid: Option<Box<MidHandshake<ServerHandshake<Counted, RecordPath>>>>,
        path: Rc<RefCell<String>>,
        /// A client that connects but never sends its upgrade request is dropped then.
        deadline: Instant,
    },
    Open {
        session: Box<Session>,
        /// Since when a flush has been waiting for the client to read.
        blocked_since: Option<Instant>,
    },
}

/// One connection's entry: its state, the due time it has in the heap, its epoll interest.
struct Entry {
    conn: Conn,
    /// The earliest time this connection has in the heap (entries after it may be stale).
    timer: Option<Instant>,
    interest: EventFlags,
}

struct Loop {
    epoll: OwnedFd,
    /// `None` once stopped.
    listener: Option<TcpListener>,
    conns: HashMap<u64, Entry>,
    /// Due times; an entry whose connection has gone or moved its time is skipped.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// While `accept(2)` fails (out of descriptors), when to listen again.
    accept_paused_until: Option<Instant>,
    last_conn: u64,
    setup: Setup,
}

impl Loop {
    fn new(listener: TcpListener, stop: &Bell, setup: Setup) -> io::Result<Loop> {
        let epoll = epoll::create(CreateFlags::CLOEXEC)?;
        epoll::add(&epoll, stop, EventData::new_u64(STOP), EventFlags::IN)?;
        epoll::add(
            &epoll,
            &listener,
            EventData::new_u64(LISTENER),
            EventFlags::IN,
        )?;
        Ok(Loop {
            epoll,
            listener: Some(listener),
            conns: HashMap::new(),
            timers: BinaryHeap::new(),
            accept_paused_until: None,
            last_conn: 0,
            setup,
        })
    }

    /// How long `epoll_wait` may sleep: until the earliest due time (`None`: until an event).
    fn timeout(&self, now: Instant) -> Option<Timespec> {
        let Reverse((at, _)) = self.timers.peek()?;
        // A wait too long for a timespec waits for an event, which is what it meant.
        Timespec::try_from(at.saturating_duration_since(now)).ok()
    }

    fn close_listener(&mut self) {
        if let Some(listener) = self.listener.take() {
            let _ = epoll::delete(&self.epoll, &listener);
        }
    }

    /// Accepts every connection waiting. A failed `accept(2)` (most often: out of file
    /// descriptors) stops listening for [`ACCEPT_BACKOFF`], rather than spinning on a
    /// listener that stays readable while calls end and free some.
    fn accept_all(&mut self) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if is_transient(&e) => return,
                Err(e) => {
                    log::warn!("Echo STS: accept failed: {e}");
                    let _ = epoll::modify(
                        &self.epoll,
                        listener,
                        EventData::new_u64(LISTENER),
                        EventFlags::empty(),
                    );
                    let until = Instant::now() + ACCEPT_BACKOFF;
                    self.accept_paused_until = Some(until);
                    self.timers.push(Reverse((until, LISTENER)));
                    return;
                }
            };
            self.last_conn += 1;
            let id = self.last_conn;
            if let Err(e) = self.add(id, stream) {
                log::error!("Echo STS: cannot serve connection {id} ({e}); dropped it");
            }
        }
    }

    fn add(&mut self, id: u64, stream: TcpStream) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        epoll::add(&self.epoll, &stream, EventData::new_u64(id), EventFlags::IN)?;
        let stream = Counted { stream, written: 0 };
        let path = Rc::new(RefCell::new(String::from("/")));
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
        let callback = RecordPath(Rc::clone(&path));
        let conn = match tungstenite::accept_hdr_with_config(stream, callback, Some(config)) {
            // The request is rarely here this early; the next readable event resumes it.
            Err(HandshakeError::Interrupted(mid)) => Conn::Upgrading {
                mid: Some(Box::new(mid)),
                path,
                deadline: Instant::now() + HANDSHAKE_TIMEOUT,
            },
            Err(HandshakeError::Failure(e)) => {
                log::warn!("Echo STS connection {id}: WebSocket handshake failed: {e}");
                return Ok(());
            }
            Ok(ws) => {
                // Upgraded at once: serve it as the readable event would.
                let entry = Entry {
                    conn: Conn::Upgrading {
                        mid: None,
                        path,
                        deadline: Instant::now() + HANDSHAKE_TIMEOUT,
                    },
                    timer: None,
                    interest: EventFlags::IN,
                };
                self.conns.insert(id, entry);
                self.opened(id, ws);
                return Ok(());
            }
        };
        let entry = Entry {
            conn,
            timer: None,
            interest: EventFlags::IN,
        };
        self.conns.insert(id, entry);
        self.reschedule(id);
        Ok(())
    }

    /// Runs every due time that has come.
    fn fire_timers(&mut self, now: Instant) {
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                return;
            }
            self.timers.pop();
            if id == LISTENER {
                self.resume_accepting(now);
                continue;
            }
            match self.conns.get_mut(&id) {
                Some(entry) if entry.timer == Some(at) => {
                    entry.timer = None;
                    self.service(id, now);
                }
                _ => {} // stale: the connection has gone or rescheduled
            }
        }
    }

    fn resume_accepting(&mut self, now: Instant) {
        match (self.accept_paused_until, &self.listener) {
            (Some(until), Some(listener)) if until <= now => {
                self.accept_paused_until = None;
                let _ = epoll::modify(
                    &self.epoll,
                    listener,
                    EventData::new_u64(LISTENER),
                    EventFlags::IN,
                );
            }
            _ => {}
        }
    }

    /// Does what connection `id` can do now: upgrade, read, send what is due, or end.
    fn service(&mut self, id: u64, now: Instant) {
        let Some(entry) = self.conns.get_mut(&id) else {
            return; // ended earlier in this batch
        };
        if let Conn::Upgrading {
            mid,
            path,
            deadline,
        } = &mut entry.conn
        {
            let Some(pending) = mid.take() else {
                return;
            };
            match pending.handshake() {
                Ok(ws) => {
                    let _ = path;
                    self.opened(id, ws);
                }
                Err(HandshakeError::Interrupted(again)) => {
                    if *deadline <= now {
                        log::warn!(
                            "Echo STS connection {id}: WebSocket handshake failed: \
                             no upgrade request within {HANDSHAKE_TIMEOUT:?}"
                        );
                        self.conns.remove(&id);
                    } else {
                        *mid = Some(Box::new(again));
                        self.reschedule(id);
                    }
                }
                Err(HandshakeError::Failure(e)) => {
                    log::warn!("Echo STS connection {id}: WebSocket handshake failed: {e}");
                    self.conns.remove(&id);
                }
            }
            return;
        }
        self.pump(id, now);
    }

    /// Connection `id` has upgraded: report it and serve what the client already sent.
    fn opened(&mut self, id: u64, ws: tungstenite::WebSocket<Counted>) {
        let Some(entry) = self.conns.get_mut(&id) else {
            return;
        };
        let path = match &entry.conn {
            Conn::Upgrading { path, .. } => path.borrow().clone(),
            Conn::Open { .. } => return,
        };
        log::debug!("Echo STS connection {id}: connected, path {path}");
        self.setup
            .events
            .emit(|| EchoEvent::Connected { conn: id, path });
        let setup = &self.setup;
        let mut session = Session::new(id, ws, setup.opts, setup.rate_hz);
        session.tap = setup.tap.clone();
        entry.conn = Conn::Open {
            session: Box::new(session),
            blocked_since: None,
        };
        self.pump(id, Instant::now());
    }

    /// Serves open connection `id`, and ends it if the client left or it failed: also when
    /// the client has read nothing for [`WRITE_TIMEOUT`] while echo waits for it (a slow
    /// reader that makes progress is not cut off).
    fn pump(&mut self, id: u64, now: Instant) {
        let Some(entry) = self.conns.get_mut(&id) else {
            return;
        };
        let Conn::Open {
            session,
            blocked_since,
        } = &mut entry.conn
        else {
            return;
        };
        let written_before = session.ws.get_ref().written;
        let outcome = session.pump(&self.setup.events).and_then(|flushed| {
            // Epoll says "writable" only once half the kernel's buffer is free, which a slow
            // reader may take longer than the timeout to allow: any byte written is progress.
            let progressed = session.ws.get_ref().written != written_before;
            if flushed {
                *blocked_since = None;
            } else {
                if progressed {
                    *blocked_since = Some(now);
                }
                let since = *blocked_since.get_or_insert(now);
                if now >= since + WRITE_TIMEOUT {
                    let timed_out = io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the client has read nothing for {WRITE_TIMEOUT:?}"),
                    );
                    return Err(tungstenite::Error::Io(timed_out));
                }
            }
            Ok(())
        });
        let ended = match outcome {
            Ok(()) => None,
            Err(tungstenite::Error::ConnectionClosed) => Some(Ok(())),
            Err(e) => Some(Err(e)),
        };
        if let Some(result) = ended {
            match result {
                Ok(()) => log::info!("[{}] Echo STS: connection closed", session.label),
                Err(e) => log::info!("[{}] Echo STS: connection ended: {e}", session.label),
            }
            // Dropping the socket takes it out of the epoll set.
            self.conns.remove(&id);
            self.setup.events.emit(|| EchoEvent::Closed { conn: id });
            return;
        }
        let want = if blocked_since.is_some() {
            EventFlags::IN | EventFlags::OUT
        } else {
            EventFlags::IN
        };
        if want != entry.interest {
            let fd = session.ws.get_ref().stream.as_fd();
            if let Err(e) = epoll::modify(&self.epoll, fd, EventData::new_u64(id), want) {
                log::warn!("[{}] Echo STS: epoll_ctl failed: {e}", session.label);
            }
            entry.interest = want;
        }
        self.reschedule(id);
    }

    /// Puts connection `id`'s next due time in the heap, unless an earlier one is there.
    fn reschedule(&mut self, id: u64) {
        let Some(entry) = self.conns.get_mut(&id) else {
            return;
        };
        let due = match &entry.conn {
            Conn::Upgrading { deadline, .. } => Some(*deadline),
            Conn::Open {
                session,
                blocked_since,
            } => {
                let write_deadline = blocked_since.map(|since| since + WRITE_TIMEOUT);
                match (session.queue.next_due(), write_deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        };
        if let Some(due) = due {
            if entry.timer.is_none_or(|t| due < t) {
                entry.timer = Some(due);
                self.timers.push(Reverse((due, id)));
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

/// The handshake callback: keeps the request's path and query for [`EchoEvent::Connected`].
/// A named type because the paused handshake is stored per connection.
struct RecordPath(Rc<RefCell<String>>);

impl Callback for RecordPath {
    // The signature is tungstenite's; its large error type is not ours to shrink.
    #[allow(clippy::result_large_err)]
    fn on_request(self, req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
        if let Some(pq) = req.uri().path_and_query() {
            *self.0.borrow_mut() = pq.as_str().to_owned();
        }
        Ok(resp)
    }
}

/// A connection's socket, counting the bytes written to it: the write timeout's measure of
/// whether the client reads at all.
pub(super) struct Counted {
    stream: TcpStream,
    written: u64,
}

impl io::Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl io::Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.stream.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}
