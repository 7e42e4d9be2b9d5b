//! The open WebSocket to the agent, driven by the call's one thread without blocking.
//!
//! tungstenite's blocking `WebSocket` cannot be split into read and write halves, so the
//! call's thread sleeps in `poll(2)` on the AudioSocket *and* on [`Link::fd`] with
//! [`Link::interest`], sends caller audio the moment it is read and takes agent messages the
//! moment they arrive; nothing wakes up on a timer. One thread doing both, never blocked on
//! either, adds no latency to either.

use std::io::ErrorKind;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rustix::event::{PollFd, PollFlags};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, Utf8Bytes};

use super::connect::{socket_of_mut, tcp_of, StsError, Ws};
use crate::proto::sts::{
    dtmf_message, parse_binary, parse_text_into, write_audio_message, FromAgent, ToAgent,
};
use crate::sys::{poll, Printable};

/// After the call ends, how long the agent gets to take the close frame.
const CLOSE_LIMIT: Duration = Duration::from_millis(999);

/// The largest buffer of decoded agent audio kept for the next message: 64 KiB is 2 s at
/// 16 kHz, more than agents send at once (20 to 200 ms); the buffer of a rare larger
/// message is freed rather than held for the rest of the call.
const KEEP_AUDIO_BUFFER: usize = 64 * 1024;

/// How a connection ended.
#[derive(Debug)]
pub enum LinkEnd {
    /// The agent closed the WebSocket: its code and reason, if it gave them, and whether
    /// that is a normal end (code 1000, or a close with no code).
    AgentClosed { why: String, normal: bool },
    /// The connection broke.
    Failed(StsError),
}

/// Counts of what the connection carried, for the call's closing log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LinkStats {
    pub audio_sent: u64,
    pub messages_received: u64,
    pub dropped_for_backpressure: u64,
}

/// What became of a message given to [`Link::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// On its way (perhaps still in tungstenite's buffer, waiting for the socket).
    Queued,
    /// Dropped: 512 KiB wait unsent, the agent is not reading.
    Dropped,
}

/// The open WebSocket to the agent. The call's thread polls [`Link::fd`] for
/// [`Link::interest`], hands the result to [`Link::on_ready`], then takes messages with
/// [`Link::receive`] until there are none.
pub struct Link {
    ws: Ws,
    pub stats: LinkStats,
    /// tungstenite holds bytes the socket did not take yet.
    unflushed: bool,
    /// Where each caller frame's message is written. Its bytes go to tungstenite split off,
    /// not copied; tungstenite copies them into its output buffer and drops them, so the
    /// next message reclaims the same room: no allocation per frame.
    out: BytesMut,
    /// The buffer the next agent audio message is decoded into (given back by
    /// [`Link::recycle`]).
    audio: Vec<u8>,
}

impl Link {
    /// Takes a connection from [`connect`](fn@super::connect) and sends `init` first.
    pub fn new(ws: Ws, init: String) -> Result<Link, StsError> {
        let mut link = Link {
            ws,
            stats: LinkStats::default(),
            unflushed: false,
            out: BytesMut::new(),
            audio: Vec::new(),
        };
        link.queue(Message::text(init))?;
        link.flush()?;
        Ok(link)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        tcp_of(self.ws.get_ref()).as_fd()
    }

    /// What to poll the socket for: input always, output while bytes wait for room.
    pub fn interest(&self) -> PollFlags {
        if self.unflushed {
            PollFlags::IN | PollFlags::OUT
        } else {
            PollFlags::IN
        }
    }

    /// Sends caller audio or a digit. A full write buffer (the agent is not reading) drops
    /// the message and counts it: caller audio is real time, a backlog is worth nothing.
    /// The item is borrowed: the call gives the audio's buffer back to its state for the
    /// next frame.
    pub fn send(&mut self, item: &ToAgent) -> Result<Sent, StsError> {
        let msg = match item {
            ToAgent::Audio(pcm) => {
                self.stats.audio_sent += 1;
                self.audio_message(pcm)?
            }
            ToAgent::Dtmf(d) => Message::text(dtmf_message(*d)),
        };
        let sent = self.queue(msg)?;
        self.flush()?;
        Ok(sent)
    }

    /// Caller audio as a text message in [`Link::out`]'s room.
    fn audio_message(&mut self, pcm: &[u8]) -> Result<Message, StsError> {
        write_audio_message(pcm, &mut self.out);
        // ASCII by construction; tungstenite checks it (a few hundred bytes, no copy).
        let text = Utf8Bytes::try_from(self.out.split().freeze())
            .map_err(|e| StsError::Socket(format!("caller audio message is not UTF-8: {e}")))?;
        Ok(Message::Text(text))
    }

    /// Takes back the buffer of agent audio the call has played: the next audio message
    /// is decoded into it.
    pub fn recycle(&mut self, mut pcm: Vec<u8>) {
        if self.audio.capacity() == 0 && pcm.capacity() <= KEEP_AUDIO_BUFFER {
            pcm.clear();
            self.audio = pcm;
        }
    }

    /// Handles readiness from `poll`: flushes when the socket has room again. `Ok(true)`
    /// when there may be messages to [`receive`](Link::receive).
    pub fn on_ready(&mut self, revents: PollFlags) -> Result<bool, LinkEnd> {
        let readable = revents.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR);
        if readable {
            socket_of_mut(self.ws.get_mut()).mark_readable();
        }
        if revents.contains(PollFlags::OUT) {
            self.flush().map_err(LinkEnd::Failed)?;
        }
        Ok(readable)
    }

    /// The next complete message from the agent; `Ok(None)` once the socket has nothing
    /// more for now. Messages already buffered by tungstenite (behind the handshake
    /// response, say) are found here even though `poll` cannot see them.
    pub fn receive(&mut self) -> Result<Option<FromAgent>, LinkEnd> {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    self.stats.messages_received += 1;
                    return Ok(Some(parse_text_into(t.as_str(), &mut self.audio)));
                }
                Ok(Message::Binary(b)) => {
                    self.stats.messages_received += 1;
                    // Copied into the kept buffer, as text audio is decoded into it.
                    let mut pcm = std::mem::take(&mut self.audio);
                    pcm.clear();
                    pcm.extend_from_slice(&b);
                    return Ok(Some(parse_binary(pcm)));
                }
                Ok(Message::Close(frame)) => {
                    let normal = frame.as_ref().is_none_or(|f| f.code == CloseCode::Normal);
                    // The reason is the agent's text: escaped and bounded for the log.
                    let why = match frame {
                        Some(f) if f.reason.is_empty() => format!("code {}", f.code),
                        Some(f) => format!("code {}: {}", f.code, Printable(&f.reason)),
                        None => "no close code".into(),
                    };
                    // tungstenite queued the close reply; give it its chance.
                    let _ = self.ws.flush();
                    return Err(LinkEnd::AgentClosed { why, normal });
                }
                Ok(_) => {} // ping/pong: tungstenite answers pings itself
                Err(e) if is_would_block(&e) => {
                    // A read may have queued a pong.
                    self.flush().map_err(LinkEnd::Failed)?;
                    return Ok(None);
                }
                Err(tungstenite::Error::ConnectionClosed)
                | Err(tungstenite::Error::AlreadyClosed) => {
                    return Err(LinkEnd::AgentClosed {
                        why: "connection closed".into(),
                        normal: false,
                    })
                }
                Err(e) => return Err(LinkEnd::Failed(StsError::Socket(e.to_string()))),
            }
        }
    }

    /// Sends a close frame and gives the agent `CLOSE_LIMIT` to take it and answer; the
    /// call is over, so blocking its thread this long costs nothing.
    pub fn close(mut self) {
        let deadline = Instant::now() + CLOSE_LIMIT;
        match self.ws.close(None) {
            Ok(()) => {}
            Err(e) if is_would_block(&e) => {}
            Err(_) => return,
        }
        loop {
            if self.flush().is_err() {
                return;
            }
            match self.ws.read() {
                Ok(_) => continue,
                Err(e) if is_would_block(&e) => {}
                Err(_) => return, // closed: the handshake is complete
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let mut fds = [PollFd::from_borrowed_fd(self.fd(), self.interest())];
            match poll(&mut fds, Some(left)) {
                Ok(0) | Err(_) => return,
                Ok(_) => socket_of_mut(self.ws.get_mut()).mark_readable(),
            }
        }
    }

    /// Hands a message to tungstenite; a full write buffer (agent not reading) drops it.
    fn queue(&mut self, msg: Message) -> Result<Sent, StsError> {
        match self.ws.write(msg) {
            Ok(()) => Ok(Sent::Queued),
            Err(e) if is_would_block(&e) => Ok(Sent::Queued),
            Err(tungstenite::Error::WriteBufferFull(_)) => {
                self.stats.dropped_for_backpressure += 1;
                Ok(Sent::Dropped)
            }
            Err(e) => Err(StsError::Socket(e.to_string())),
        }
    }

    fn flush(&mut self) -> Result<(), StsError> {
        match self.ws.flush() {
            Ok(()) => self.unflushed = false,
            Err(e) if is_would_block(&e) => self.unflushed = true,
            Err(tungstenite::Error::ConnectionClosed) => self.unflushed = false,
            Err(e) => return Err(StsError::Socket(e.to_string())),
        }
        Ok(())
    }
}

fn is_would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if io.kind() == ErrorKind::WouldBlock)
}
