//! The agent's audio on its way to the caller: what is played, and the clocks that write it
//! to Asterisk every 20 ms.
//!
//! Asterisk neither buffers nor paces what it receives (docs/audiosocket.md §5), so agent audio
//! waits in each call's [`Playout`] and only a clock takes it out, one frame per tick.
//! - [`agent_audio`]: the agent's audio waiting for its slots ([`AgentAudio`], pure logic);
//! - [`ambient`]: the noise mixed under it ([`Ambient`], [`AmbientCursor`]);
//! - [`clocks`]: the shared clock threads ([`Clocks`], [`next_slot`]);
//! - here: [`Playout`], one call's place on a clock, and how a call asks it to [`Stop`].
//!
//! A clock never blocks on a caller: frames go out with `MSG_DONTWAIT`. Bytes a full socket
//! did not take go first at the next tick and no new frame is made meanwhile (the slot is
//! skipped, never sent late in a burst); a caller that takes nothing for [`WRITE_STALL`]
//! is dropped from the clock with an error, and its call ends.

pub mod agent_audio;
pub mod ambient;
pub mod clocks;

use std::io;
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::net::{send, SendFlags};

pub use agent_audio::{AgentAudio, Fill, BYTES_PER_MS, MAX_QUEUED, MAX_QUEUED_BYTES};
pub use ambient::{Ambient, AmbientCursor, AMBIENT_RATE};
pub use clocks::{next_slot, Clocks, TICK};

use crate::proto::audiosocket::{self, HEADER_LEN, KIND_AUDIO, SLIN_HZ};
use crate::sys::{lock, Bell};
use clocks::Clock;

/// After the agent closes, queued audio is played for at most this long (docs/sts.md §3).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// How long a caller may take none of its audio before its call is ended: Asterisk reads
/// without blocking, so a socket that stays full means the call is gone.
pub const WRITE_STALL: Duration = Duration::from_secs(1);

/// A clock never waits for a caller's socket, and a caller that left is an error, not a signal.
const SEND_FLAGS: SendFlags = SendFlags::DONTWAIT.union(SendFlags::NOSIGNAL);

/// How a call asks its playout to end, strongest last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stop {
    /// The agent is gone: play what is queued (at most [`DRAIN_LIMIT`]), then hang up.
    Drain { until: Instant },
    /// Hang up now (`00 00 00`).
    Hangup,
    /// The caller is gone: write nothing more.
    Quiet,
}

/// What the clock did for one call, for the call's closing log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClockStats {
    pub frames_out: u64,
    pub agent_frames: u64,
    pub underruns: u64,
    /// Slots skipped because the clock was late or the caller's socket was full.
    pub late_slots: u64,
    pub hangup_sent: bool,
}

/// Why a clock let go of a call by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// It wrote `00 00 00` and shut down its side (a [`Stop::Hangup`] or a drained
    /// [`Stop::Drain`]).
    HungUp,
    /// Writing failed (`BrokenPipe` and `ConnectionReset` mean the caller already left):
    /// the error's kind and text (an `io::Error` is not `Clone`).
    WriteFailed(io::ErrorKind, String),
}

impl From<io::Error> for Finished {
    fn from(e: io::Error) -> Finished {
        Finished::WriteFailed(e.kind(), e.to_string())
    }
}

/// One call's place on a clock: the socket to Asterisk, the agent audio waiting for it and
/// how the call wants playout to end. The call's thread fills it through these methods; the
/// clock empties it. The state stays behind them, so its lock is never held outside this
/// folder.
pub struct Playout {
    stream: Arc<TcpStream>,
    clock: Arc<Clock>,
    state: Mutex<PlayoutState>,
    done: Arc<Bell>,
    /// The ambient noise, for a cursor at the call's rate once it is known.
    ambient: Option<Ambient>,
}

struct PlayoutState {
    audio: AgentAudio,
    /// The frames to Asterisk: 20 ms of this rate, in this audio kind. 8 kHz (`0x10`)
    /// until the call's rate is known ([`Playout::set_rate`]).
    rate_hz: u32,
    kind: u8,
    stop: Option<Stop>,
    ambient: Option<AmbientCursor>,
    stats: ClockStats,
    /// The tail of a frame (or of the hangup) the socket did not take.
    unsent: Vec<u8>,
    /// Since when `unsent` has been waiting.
    stalled_since: Option<Instant>,
    /// `unsent` ends with the hangup frame.
    hanging_up: bool,
    finished: Option<Finished>,
}

impl Playout {
    /// A call's place on `clock`, writing to `stream`; `done` is rung when the clock lets go.
    fn new(
        stream: Arc<TcpStream>,
        clock: Arc<Clock>,
        ambient: Option<Ambient>,
        done: Arc<Bell>,
    ) -> Playout {
        Playout {
            stream,
            clock,
            state: Mutex::new(PlayoutState {
                audio: AgentAudio::new(SLIN_HZ),
                rate_hz: SLIN_HZ,
                kind: KIND_AUDIO,
                stop: None,
                ambient: ambient.as_ref().map(Ambient::cursor),
                stats: ClockStats::default(),
                unsent: Vec::new(),
                stalled_since: None,
                hanging_up: false,
                finished: None,
            }),
            done,
            ambient,
        }
    }

    /// From the next tick on, frames carry 20 ms at `rate_hz` in its audio kind: the
    /// caller's own (docs/audiosocket.md §10.4). Called once, before any agent audio is
    /// queued (audio queued at the old rate would be dropped). The ambient noise at that
    /// rate is made here, on the call's thread, not under the clock's lock.
    pub fn set_rate(&self, rate_hz: u32) {
        let Some(kind) = audiosocket::audio_kind(rate_hz) else {
            return;
        };
        let ambient = self.ambient.as_ref().map(|a| a.cursor_at(rate_hz));
        let mut st = self.lock();
        st.rate_hz = rate_hz;
        st.kind = kind;
        st.audio = AgentAudio::new(rate_hz);
        st.ambient = ambient;
    }

    fn lock(&self) -> MutexGuard<'_, PlayoutState> {
        lock(&self.state)
    }

    /// Queues agent audio (s16le at the call's rate) that arrived at `now`; returns the
    /// bytes refused because two minutes are already waiting.
    pub fn play(&self, pcm: &[u8], now: Instant) -> usize {
        self.lock().audio.push(pcm, now)
    }

    /// Queues the end of the agent's talk spurt (what the resampler held back when the agent
    /// paused): nothing more is due after it, so its last partial frame plays at its slot.
    pub fn play_last(&self, pcm: &[u8], now: Instant) -> usize {
        let mut st = self.lock();
        let refused = st.audio.push(pcm, now);
        st.audio.end_spurt();
        refused
    }

    /// Drops the agent audio not played yet (the caller barged in); returns how many
    /// milliseconds.
    pub fn interrupt(&self) -> usize {
        let audio = &mut self.lock().audio;
        let dropped_ms = audio.queued_ms();
        audio.clear();
        dropped_ms
    }

    /// How much agent audio waits to be played, in milliseconds.
    pub fn queued_ms(&self) -> usize {
        self.lock().audio.queued_ms()
    }

    /// Requests a stop, applied at the next tick; a weaker request never replaces a
    /// stronger one.
    pub fn stop(&self, stop: Stop) {
        let mut st = self.lock();
        if st.stop.is_none_or(|s| stop > s) {
            st.stop = Some(stop);
        }
    }

    /// Why the clock let go of this call, once it has.
    pub fn finished(&self) -> Option<Finished> {
        self.lock().finished.clone()
    }

    /// What the clock did for this call so far.
    fn stats(&self) -> ClockStats {
        self.lock().stats
    }

    /// Writes this slot's frame, built in `frame` (the clock's scratch buffer); `false` once
    /// the call is off the clock.
    fn tick(&self, slot: Instant, skipped: u64, frame: &mut Vec<u8>) -> bool {
        let mut st = self.lock();
        st.stats.late_slots += skipped;
        if st.finished.is_some() {
            return false;
        }
        if st.stop == Some(Stop::Quiet) {
            return true; // the call's thread takes it off the clock
        }
        if !st.unsent.is_empty() {
            if let Err(e) = self.send_unsent(&mut st) {
                return self.finish(&mut st, e.into());
            }
            if !st.unsent.is_empty() {
                st.stats.late_slots += 1;
                return true;
            }
            if st.hanging_up {
                return self.finish_hangup(&mut st);
            }
        }
        let hang_up = match st.stop {
            Some(Stop::Hangup) => true,
            Some(Stop::Drain { until }) => st.audio.is_empty() || slot >= until,
            _ => false,
        };
        if hang_up {
            st.hanging_up = true;
            if let Err(e) = self.write(&mut st, &audiosocket::HANGUP) {
                return self.finish(&mut st, e.into());
            }
            if st.unsent.is_empty() {
                return self.finish_hangup(&mut st);
            }
            return true; // the rest of the hangup goes at the next tick
        }

        let last = matches!(st.stop, Some(Stop::Drain { .. }));
        let bytes = audiosocket::frame_bytes(st.rate_hz);
        frame.clear();
        frame.push(st.kind);
        frame.extend_from_slice(&(bytes as u16).to_be_bytes());
        frame.resize(HEADER_LEN + bytes, 0);
        let payload = &mut frame[HEADER_LEN..];
        let st = &mut *st;
        match st.audio.fill(payload, last, slot) {
            Fill::Agent => st.stats.agent_frames += 1,
            Fill::Underrun => st.stats.underruns += 1,
            Fill::Silence => {}
        }
        if let Some(cursor) = st.ambient.as_mut() {
            cursor.mix_into(payload);
        }
        st.stats.frames_out += 1;
        match self.write(st, frame) {
            Ok(()) => true,
            Err(e) => self.finish(st, e.into()),
        }
    }

    /// Sends `bytes` (nothing is unsent before them); keeps the tail the socket does not
    /// take in `unsent`, to go first at the next tick.
    fn write(&self, st: &mut PlayoutState, bytes: &[u8]) -> io::Result<()> {
        let n = match send(&*self.stream, bytes, SEND_FLAGS) {
            Ok(n) => n,
            Err(rustix::io::Errno::AGAIN) => 0,
            Err(e) => return Err(e.into()),
        };
        if n < bytes.len() {
            st.unsent.extend_from_slice(&bytes[n..]);
            st.stalled_since = Some(Instant::now());
        }
        Ok(())
    }

    /// Sends what is left of `unsent`; fails once the caller has taken nothing for
    /// [`WRITE_STALL`].
    fn send_unsent(&self, st: &mut PlayoutState) -> io::Result<()> {
        match send(&*self.stream, &st.unsent, SEND_FLAGS) {
            Ok(n) => {
                st.unsent.drain(..n);
                if st.unsent.is_empty() {
                    st.stalled_since = None;
                    return Ok(());
                }
                if n > 0 {
                    st.stalled_since = Some(Instant::now());
                }
            }
            Err(rustix::io::Errno::AGAIN) => {}
            Err(e) => return Err(e.into()),
        }
        let since = *st.stalled_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= WRITE_STALL {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "Asterisk has taken no audio for {} s (its socket stays full)",
                    WRITE_STALL.as_secs()
                ),
            ));
        }
        Ok(())
    }

    fn finish_hangup(&self, st: &mut PlayoutState) -> bool {
        st.stats.hangup_sent = true;
        let _ = self.stream.shutdown(Shutdown::Write);
        self.finish(st, Finished::HungUp)
    }

    /// Records why the clock let go and tells the call; always `false` (off the clock).
    fn finish(&self, st: &mut PlayoutState, why: Finished) -> bool {
        st.finished = Some(why);
        st.unsent = Vec::new();
        self.done.ring();
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    /// A connected pair: the server side for a [`Playout`], the client side as Asterisk.
    pub(super) fn pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (Arc::new(server), client)
    }

    /// A playout on a clock that never ticks: only what the call's thread does to it.
    fn idle_playout(stream: Arc<TcpStream>) -> Playout {
        Playout::new(
            stream,
            Arc::new(Clock::default()),
            None,
            Arc::new(Bell::new().unwrap()),
        )
    }

    #[test]
    fn stronger_stops_win() {
        let (server, _client) = pair();
        let p = idle_playout(server);
        p.stop(Stop::Hangup);
        p.stop(Stop::Drain {
            until: Instant::now(),
        });
        assert_eq!(p.lock().stop, Some(Stop::Hangup));
        p.stop(Stop::Quiet);
        assert_eq!(p.lock().stop, Some(Stop::Quiet));
    }

    #[test]
    fn play_queues_interrupt_drops_and_the_excess_is_refused() {
        let (server, _client) = pair();
        let p = idle_playout(server);
        let now = Instant::now();
        assert_eq!(p.play(&[1; 3200], now), 0);
        assert_eq!(p.queued_ms(), 200);
        assert_eq!(p.interrupt(), 200);
        assert_eq!(p.queued_ms(), 0);
        assert_eq!(p.play(&vec![0; MAX_QUEUED_BYTES + 10], now), 10);
        assert_eq!(p.queued_ms(), MAX_QUEUED_BYTES / BYTES_PER_MS);
    }

    #[test]
    fn a_hangup_is_the_last_frame_and_rings_the_call() {
        let clocks = Clocks::start(1).unwrap();
        let (server, mut client) = pair();
        let bell = Arc::new(Bell::new().unwrap());
        let p = clocks.add(server, None, bell.clone()).unwrap();
        p.play(&[7u8; 960], Instant::now());
        // Wait for the three agent frames, then hang up.
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < 4 * 323 {
            let n = client.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        p.stop(Stop::Hangup);
        client.read_to_end(&mut got).unwrap();
        assert!(bell.wait(Some(Duration::from_secs(5))));
        assert_eq!(p.finished(), Some(Finished::HungUp));
        assert_eq!(&got[got.len() - 3..], &audiosocket::HANGUP);
        assert_eq!((got.len() - 3) % 323, 0, "whole frames, then the hangup");
        assert!(got[..got.len() - 3]
            .chunks(323)
            .all(|f| f[..3] == [0x10, 0x01, 0x40]));
        let stats = clocks.remove(&p);
        assert!(stats.hangup_sent && stats.agent_frames == 3);
    }

    #[test]
    fn a_caller_that_never_reads_is_let_go_after_the_stall_limit() {
        let clocks = Clocks::start(1).unwrap();
        let (server, client) = pair();
        // Small buffers on both sides, so they fill within a second or two.
        rustix::net::sockopt::set_socket_send_buffer_size(&*server, 4096).unwrap();
        rustix::net::sockopt::set_socket_recv_buffer_size(&client, 4096).unwrap();
        let bell = Arc::new(Bell::new().unwrap());
        let started = Instant::now();
        let p = clocks.add(server, None, bell.clone()).unwrap();
        assert!(bell.wait(Some(Duration::from_secs(60))));
        match p.finished() {
            Some(Finished::WriteFailed(io::ErrorKind::TimedOut, _)) => {}
            other => panic!("expected a stall, got {other:?}"),
        }
        assert!(started.elapsed() >= WRITE_STALL);
        let stats = clocks.remove(&p);
        assert!(!stats.hangup_sent && stats.late_slots >= 45);
    }
}
