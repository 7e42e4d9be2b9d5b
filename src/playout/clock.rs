//! The playout clocks: one 320-byte slin frame to every call's Asterisk every 20 ms, from the
//! UUID to the hangup, whatever the agent does.
//!
//! Asterisk neither buffers nor paces what it receives (audiosocket.md §1.6), so agent audio
//! waits in each call's [`Playout`] and only a clock takes it out, on a monotonic 20 ms grid.
//! Each clock thread serves a small group of calls (up to [`CALLS_PER_CLOCK`], more only when
//! no further clock thread can start): a tick writes the frame of every call it owns. A timer
//! thread per call cost a thread and a wake-up per call every 20 ms, and on a 2-core PBX those
//! wake-ups, not the work, were the limit (BENCHMARKS.md). One clock for all calls would be
//! worse: a thread doing hundreds of writes per tick is the first the scheduler preempts when
//! the machine is busy, and every call's audio would stutter with it. Small groups keep a tick
//! as short as any other thread's turn.
//!
//! A clock never blocks on a caller: frames go out with `MSG_DONTWAIT`. Bytes a full socket
//! did not take go first at the next tick and no new frame is made meanwhile (the slot is
//! skipped, never sent late in a burst); a caller that takes nothing for [`WRITE_STALL`]
//! is dropped from the clock with an error, and its call ends.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustix::net::{send, SendFlags};

use crate::playout::{AgentAudio, AmbientCursor, Fill, Stop};
use crate::proto::audiosocket::{self, SLIN_FRAME_BYTES};
use crate::sys::lock;
use crate::sys::Bell;

/// One tick of the clock.
pub const TICK: Duration = Duration::from_millis(20);

/// How long a caller may take none of its audio before its call is ended: Asterisk reads
/// without blocking, so a socket that stays full means the call is gone.
pub const WRITE_STALL: Duration = Duration::from_secs(1);

/// Calls per clock thread: enough to cut wake-ups 16-fold, few enough that a tick is a few
/// hundred microseconds of work (8 and 32 measured no better: BENCHMARKS.md).
pub const CALLS_PER_CLOCK: usize = 16;

/// Clock threads at most, however large `MAX_CALLS` is.
const MAX_CLOCKS: usize = 256;

/// Nice value of the clock threads when permitted (root, or `LimitNICE=` in the unit):
/// when the machine is overloaded, a late tick is a gap every caller on that clock hears,
/// while a late caller frame only reaches the agent a little later.
pub const CLOCK_NICE: i32 = -10;

/// Clock threads do little: a frame, a `send`, per call.
const CLOCK_STACK: usize = 128 * 1024;

/// The clock threads of the process. The first starts with the server (so its priority is
/// logged at startup); more start as calls need them, one per [`CALLS_PER_CLOCK`] calls in
/// progress at the peak, and stay (an idle clock sleeps on its condvar).
pub struct Clocks {
    max: usize,
    started: Mutex<Started>,
}

#[derive(Default)]
struct Started {
    clocks: Vec<Arc<Clock>>,
    threads: Vec<JoinHandle<()>>,
}

struct Clock {
    calls: Mutex<Calls>,
    /// Rung when the first call joins an idle clock, and on stop.
    wake: Condvar,
}

#[derive(Default)]
struct Calls {
    playing: Vec<Arc<Playout>>,
    stopping: bool,
}

impl Clocks {
    /// Starts the first clock; at most enough for `max_calls` calls will run.
    pub fn start(max_calls: usize) -> io::Result<Clocks> {
        let clocks = Clocks {
            max: max_calls.div_ceil(CALLS_PER_CLOCK).clamp(1, MAX_CLOCKS),
            started: Mutex::default(),
        };
        clocks.lock().start_clock()?;
        Ok(clocks)
    }

    fn lock(&self) -> MutexGuard<'_, Started> {
        lock(&self.started)
    }

    /// Puts a call on the first clock with room (so a few hundred calls wake a few clocks,
    /// not all of them), starting a clock if none has room, else on the least busy one.
    /// Each clock's grid has its own phase; the call's first frame goes out at its clock's
    /// next tick (within 20 ms). `done` is rung when the clock has hung up or given up on
    /// it. Fails only if no clock runs and none can be started.
    pub fn add(
        &self,
        stream: Arc<TcpStream>,
        ambient: Option<AmbientCursor>,
        done: Arc<Bell>,
    ) -> io::Result<Arc<Playout>> {
        let mut started = self.lock();
        let loads: Vec<usize> = started
            .clocks
            .iter()
            .map(|c| c.lock().playing.len())
            .collect();
        let clock = match loads.iter().position(|&n| n < CALLS_PER_CLOCK) {
            Some(i) => started.clocks[i].clone(),
            None if started.clocks.len() < self.max => match started.start_clock() {
                Ok(clock) => clock,
                Err(e) => {
                    log::error!("Cannot start another playout clock thread: {e}");
                    least_busy(&started.clocks, &loads).ok_or(e)?
                }
            },
            None => least_busy(&started.clocks, &loads)
                .ok_or_else(|| io::Error::other("no playout clock is running"))?,
        };
        drop(started);
        let playout = Arc::new(Playout {
            stream,
            clock: clock.clone(),
            state: Mutex::new(PlayoutState {
                ambient,
                ..PlayoutState::default()
            }),
            done,
        });
        let mut calls = clock.lock();
        calls.playing.push(playout.clone());
        if calls.playing.len() == 1 {
            clock.wake.notify_one();
        }
        Ok(playout)
    }

    /// Takes a call off its clock (the clock writes nothing more for it once this returns)
    /// and returns what the clock did for it.
    pub fn remove(&self, playout: &Arc<Playout>) -> ClockStats {
        playout
            .clock
            .lock()
            .playing
            .retain(|p| !Arc::ptr_eq(p, playout));
        playout.lock().stats
    }

    /// Clock threads running now.
    #[cfg(test)]
    pub fn running(&self) -> usize {
        self.lock().clocks.len()
    }
}

fn least_busy(clocks: &[Arc<Clock>], loads: &[usize]) -> Option<Arc<Clock>> {
    let i = (0..clocks.len()).min_by_key(|&i| loads[i])?;
    Some(clocks[i].clone())
}

impl Started {
    fn start_clock(&mut self) -> io::Result<Arc<Clock>> {
        let i = self.clocks.len();
        let clock = Arc::new(Clock {
            calls: Mutex::new(Calls::default()),
            wake: Condvar::new(),
        });
        let handle = thread::Builder::new()
            .name(format!("clock-{i}"))
            .stack_size(CLOCK_STACK)
            .spawn({
                let clock = clock.clone();
                move || {
                    // Nice is per thread on Linux: each clock raises its own.
                    match (raise_priority(), i) {
                        (Ok(()), 0) => log::debug!("Playout clocks run at nice {CLOCK_NICE}"),
                        (Err(e), 0) => log::info!(
                            "Playout clocks run at normal priority (nice {CLOCK_NICE} \
                             refused: {e}); if the CPU is overloaded callers may hear \
                             gaps. The packaged unit allows it (LimitNICE={CLOCK_NICE})"
                        ),
                        _ => {}
                    }
                    clock.run()
                }
            })?;
        self.clocks.push(clock.clone());
        self.threads.push(handle);
        Ok(clock)
    }
}

impl Drop for Clocks {
    fn drop(&mut self) {
        let mut started = self.lock();
        for clock in &started.clocks {
            clock.lock().stopping = true;
            clock.wake.notify_all();
        }
        for handle in started.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Clock {
    fn lock(&self) -> MutexGuard<'_, Calls> {
        lock(&self.calls)
    }

    /// Ticks while there are calls, sleeps on the condvar while there are none. The lock is
    /// held through a tick, so [`Clocks::remove`] waits for the frame being written.
    fn run(&self) {
        let mut payload = [0u8; SLIN_FRAME_BYTES];
        let mut calls = self.lock();
        let mut slot: Option<Instant> = None;
        let mut skipped = 0;
        loop {
            if calls.stopping {
                return;
            }
            if calls.playing.is_empty() {
                slot = None;
                calls = self.wake.wait(calls).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let now = Instant::now();
            let due = *slot.get_or_insert(now);
            if due > now {
                calls = self
                    .wake
                    .wait_timeout(calls, due - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            calls.playing.retain(|p| p.tick(due, skipped, &mut payload));
            let next;
            (next, skipped) = next_slot(due, Instant::now());
            slot = Some(next);
        }
    }
}

/// Gives the calling thread (only) [`CLOCK_NICE`].
fn raise_priority() -> io::Result<()> {
    let tid = rustix::thread::gettid();
    rustix::process::setpriority_process(Some(tid), CLOCK_NICE).map_err(io::Error::from)
}

/// The deadline after the slot at `current`, given the time `now`: the next slot on the
/// 20 ms grid that is still ahead. Slots already past are skipped (and counted), never
/// sent late in a burst.
pub fn next_slot(current: Instant, now: Instant) -> (Instant, u64) {
    let next = current + TICK;
    if next > now {
        return (next, 0);
    }
    let skipped = ((now - next).as_nanos() / TICK.as_nanos() + 1) as u64;
    (next + TICK * skipped as u32, skipped)
}

/// What the clock did for one call, for the call's closing log line.
#[derive(Debug, Default, Clone, Copy)]
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

/// A clock never waits for a caller's socket, and a caller that left is an error, not a signal.
const SEND_FLAGS: SendFlags = SendFlags::DONTWAIT.union(SendFlags::NOSIGNAL);

/// One call's place on a clock: the socket to Asterisk, the agent audio waiting for it and
/// how the call wants playout to end. The call's thread fills it; the clock empties it.
pub struct Playout {
    stream: Arc<TcpStream>,
    clock: Arc<Clock>,
    state: Mutex<PlayoutState>,
    done: Arc<Bell>,
}

#[derive(Default)]
pub struct PlayoutState {
    pub audio: AgentAudio,
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
    pub fn lock(&self) -> MutexGuard<'_, PlayoutState> {
        lock(&self.state)
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

    /// Writes this slot's frame; `false` once the call is off the clock.
    fn tick(&self, slot: Instant, skipped: u64, payload: &mut [u8; SLIN_FRAME_BYTES]) -> bool {
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
        match st.audio.fill(payload, last, slot) {
            Fill::Agent => st.stats.agent_frames += 1,
            Fill::Underrun => st.stats.underruns += 1,
            Fill::Silence => {}
        }
        if let Some(cursor) = st.ambient.as_mut() {
            cursor.mix_into(payload);
        }
        let frame = audiosocket::audio_frame(payload);
        st.stats.frames_out += 1;
        match self.write(&mut st, &frame) {
            Ok(()) => true,
            Err(e) => self.finish(&mut st, e.into()),
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

    #[test]
    fn the_clock_keeps_its_grid_and_skips_late_slots() {
        let t0 = Instant::now();
        // On time, or a little late: the next slot is 20 ms after this one, not after now.
        assert_eq!(next_slot(t0, t0), (t0 + TICK, 0));
        assert_eq!(next_slot(t0, t0 + Duration::from_millis(7)), (t0 + TICK, 0));
        // 45 ms late: slots at +20 and +40 are gone; the next frame goes at +60.
        let (next, skipped) = next_slot(t0, t0 + Duration::from_millis(45));
        assert_eq!((next, skipped), (t0 + TICK * 3, 2));
        // Exactly on a slot boundary counts as missed (never two frames at the same instant).
        assert_eq!(next_slot(t0, t0 + TICK), (t0 + TICK * 2, 1));
    }

    fn pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (Arc::new(server), client)
    }

    #[test]
    fn stronger_stops_win() {
        let (server, _client) = pair();
        let p = Playout {
            stream: server,
            clock: Arc::new(Clock {
                calls: Mutex::default(),
                wake: Condvar::new(),
            }),
            state: Mutex::default(),
            done: Arc::new(Bell::new().unwrap()),
        };
        p.stop(Stop::Hangup);
        p.stop(Stop::Drain {
            until: Instant::now(),
        });
        assert_eq!(p.lock().stop, Some(Stop::Hangup));
        p.stop(Stop::Quiet);
        assert_eq!(p.lock().stop, Some(Stop::Quiet));
    }

    #[test]
    fn a_hangup_is_the_last_frame_and_rings_the_call() {
        let clocks = Clocks::start(1).unwrap();
        let (server, mut client) = pair();
        let bell = Arc::new(Bell::new().unwrap());
        let p = clocks.add(server, None, bell.clone()).unwrap();
        p.lock().audio.push(&[7u8; 960], Instant::now());
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
    fn clocks_start_as_calls_need_them_up_to_the_limit() {
        let clocks = Clocks::start(2 * CALLS_PER_CLOCK).unwrap();
        assert_eq!(clocks.running(), 1, "one clock with the server");
        let mut calls = Vec::new();
        for n in 1..=3 * CALLS_PER_CLOCK {
            let (server, client) = pair();
            let bell = Arc::new(Bell::new().unwrap());
            calls.push((clocks.add(server, None, bell).unwrap(), client));
            let expected = n.div_ceil(CALLS_PER_CLOCK).min(2);
            assert_eq!(clocks.running(), expected, "{n} calls");
        }
        // Past the limit, calls share the running clocks, and every call gets its frames.
        for (_, client) in &mut calls {
            let mut frame = [0u8; 323];
            client.read_exact(&mut frame).unwrap();
            assert_eq!(frame[..3], [0x10, 0x01, 0x40]);
        }
        for (p, _) in &calls {
            clocks.remove(p);
        }
        assert_eq!(clocks.running(), 2, "clocks stay for the next calls");
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
