//! Connections accepted but not yet identified (an AudioSocket peer before its UUID), in a
//! room of bounded size. When it is full, the newcomer is let in by closing the connection
//! that has waited longest, unless the caller spares it: a real peer identifies itself at
//! once, so the one that has waited longest is the one least likely to be real. Idle or
//! slow peers can then never lock a real one out, however many they open.
//!
//! A connection is only closed for room once it has waited [`GRACE`]: a real peer whose
//! first bytes are a few milliseconds late (a busy host) must not lose to a flood of
//! newcomers. While every waiting connection is younger, the newcomer waits instead
//! ([`Admission::WaitFor`]), and the connections behind it wait in the kernel's accept queue,
//! where a real peer's identification arrives meanwhile.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::lock;

/// How long a connection waits at least before it may be closed for a newcomer. Asterisk
/// sends its UUID in its first write after connecting; 40 ms is that on a loaded host,
/// with room to spare, and still lets a full room turn over 25 times a second.
pub const GRACE: Duration = Duration::from_millis(40);

/// At most `max` connections waiting; see the [module doc](self).
pub struct WaitingRoom {
    max: usize,
    waiting: Mutex<Vec<Waiting>>,
    next_id: AtomicU64,
}

struct Waiting {
    id: u64,
    since: Instant,
    peer: SocketAddr,
    /// A duplicate handle, to shut the connection down from the accepting thread.
    stream: TcpStream,
}

/// What [`WaitingRoom::admit`] did with a new connection.
pub enum Admission {
    /// Let in; `made_room`: the connection closed to make room for it, if one was.
    Admitted {
        ticket: Ticket,
        made_room: Option<MadeRoom>,
    },
    /// Full, and every connection waiting was spared: the newcomer is not let in.
    Full,
    /// Full, and no connection has waited [`GRACE`] yet: ask again after this long.
    WaitFor(Duration),
    /// The connection could not be duplicated (out of file descriptors).
    Failed(io::Error),
}

/// The connection closed to let a newer one in.
#[derive(Debug, Clone, Copy)]
pub struct MadeRoom {
    pub peer: SocketAddr,
    pub waited: Duration,
}

impl WaitingRoom {
    pub fn new(max: usize) -> Arc<WaitingRoom> {
        Arc::new(WaitingRoom {
            max: max.max(1),
            waiting: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
        })
    }

    /// Lets `stream` in at `now`, closing the longest-waiting connection that `spare` does
    /// not keep if the room is full (its thread's read then returns at once).
    pub fn admit(
        self: &Arc<Self>,
        stream: &TcpStream,
        peer: SocketAddr,
        now: Instant,
        spare: impl Fn(&TcpStream) -> bool,
    ) -> Admission {
        let dup = match stream.try_clone() {
            Ok(d) => d,
            Err(e) => return Admission::Failed(e),
        };
        let mut waiting = lock(&self.waiting);
        let mut made_room = None;
        if waiting.len() >= self.max {
            let oldest = waiting
                .iter()
                .enumerate()
                .filter(|(_, w)| !spare(&w.stream))
                .min_by_key(|(_, w)| w.since)
                .map(|(i, w)| (i, now.saturating_duration_since(w.since)));
            let i = match oldest {
                None => return Admission::Full,
                Some((_, waited)) if waited < GRACE => return Admission::WaitFor(GRACE - waited),
                Some((i, _)) => i,
            };
            let gone = waiting.swap_remove(i);
            let _ = gone.stream.shutdown(Shutdown::Both);
            made_room = Some(MadeRoom {
                peer: gone.peer,
                waited: now.saturating_duration_since(gone.since),
            });
        }
        let id = self.next_id.fetch_add(1, Relaxed);
        waiting.push(Waiting {
            id,
            since: now,
            peer,
            stream: dup,
        });
        Admission::Admitted {
            ticket: Ticket {
                id,
                room: self.clone(),
            },
            made_room,
        }
    }

    /// How many connections wait.
    pub fn len(&self) -> usize {
        lock(&self.waiting).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A connection's place in the [`WaitingRoom`], given up on drop.
pub struct Ticket {
    id: u64,
    room: Arc<WaitingRoom>,
}

impl Ticket {
    /// Leaves the room: the connection can no longer be closed for another. `false` if it
    /// already was (its socket is shut down).
    pub fn leave(self) -> bool {
        self.remove()
    }

    /// Whether the connection was closed to make room for another.
    pub fn was_closed(&self) -> bool {
        !lock(&self.room.waiting).iter().any(|w| w.id == self.id)
    }

    fn remove(&self) -> bool {
        let mut waiting = lock(&self.room.waiting);
        let before = waiting.len();
        waiting.retain(|w| w.id != self.id);
        waiting.len() < before
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    /// A connected pair over loopback: (ours, the peer's).
    fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        (ours, peer)
    }

    fn admit(room: &Arc<WaitingRoom>, s: &TcpStream, now: Instant, spare: bool) -> Admission {
        room.admit(s, s.peer_addr().unwrap(), now, |_| spare)
    }

    #[test]
    fn a_full_room_closes_the_longest_waiting_for_a_newcomer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let room = WaitingRoom::new(2);
        let t0 = Instant::now();
        let (a, mut a_peer) = pair(&listener);
        let (b, _b_peer) = pair(&listener);
        let (c, _c_peer) = pair(&listener);
        let Admission::Admitted { ticket: ta, .. } = admit(&room, &a, t0, false) else {
            panic!("room for a")
        };
        let later = t0 + Duration::from_millis(500);
        let Admission::Admitted { ticket: tb, .. } = admit(&room, &b, later, false) else {
            panic!("room for b")
        };
        let at = t0 + Duration::from_secs(2);
        let Admission::Admitted {
            ticket: tc,
            made_room,
        } = admit(&room, &c, at, false)
        else {
            panic!("room for c")
        };
        let made = made_room.expect("a was closed");
        assert_eq!(made.peer, a.peer_addr().unwrap());
        assert_eq!(made.waited, Duration::from_secs(2));
        assert!(ta.was_closed() && !tb.was_closed() && !tc.was_closed());
        assert!(!ta.leave(), "already closed");
        // The peer of the closed connection sees its end.
        let mut buf = [0u8; 1];
        assert_eq!(a_peer.read(&mut buf).unwrap(), 0);
        assert_eq!(room.len(), 2);
        assert!(tb.leave());
        drop(tc);
        assert!(room.is_empty());
    }

    #[test]
    fn a_young_connection_is_not_closed_the_newcomer_waits_out_the_grace() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let room = WaitingRoom::new(1);
        let t0 = Instant::now();
        let (a, _a_peer) = pair(&listener);
        let (b, _b_peer) = pair(&listener);
        let Admission::Admitted { ticket: ta, .. } = admit(&room, &a, t0, false) else {
            panic!("room for a")
        };
        let soon = t0 + GRACE / 4;
        match admit(&room, &b, soon, false) {
            Admission::WaitFor(wait) => assert_eq!(wait, GRACE - GRACE / 4),
            _ => panic!("a is too young to be closed"),
        }
        assert!(!ta.was_closed());
        let Admission::Admitted { made_room, .. } = admit(&room, &b, t0 + GRACE, false) else {
            panic!("a has waited the grace")
        };
        assert_eq!(made_room.unwrap().waited, GRACE);
        assert!(ta.was_closed());
    }

    #[test]
    fn a_full_room_whose_every_connection_is_spared_refuses() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let room = WaitingRoom::new(1);
        let now = Instant::now();
        let (a, _a_peer) = pair(&listener);
        let (b, _b_peer) = pair(&listener);
        let Admission::Admitted { ticket, .. } = admit(&room, &a, now, true) else {
            panic!("room for a")
        };
        assert!(matches!(admit(&room, &b, now, true), Admission::Full));
        assert!(!ticket.was_closed());
    }
}
