//! The playout clocks: one 20 ms frame to every call's Asterisk every 20 ms (320 bytes of
//! slin, or 20 ms at the caller's own rate), from the UUID to the hangup, whatever the
//! agent does.
//!
//! Each clock thread writes, on a monotonic 20 ms grid, the frame of every [`Playout`] it
//! holds. It serves a small group of calls (up to [`CALLS_PER_CLOCK`], more only when
//! no further clock thread can start): a tick writes the frame of every call it owns. A timer
//! thread per call cost a thread and a wake-up per call every 20 ms, and on a 2-core PBX those
//! wake-ups, not the work, were the limit (BENCHMARKS.md). One clock for all calls would be
//! worse: a thread doing hundreds of writes per tick is the first the scheduler preempts when
//! the machine is busy, and every call's audio would stutter with it. Small groups keep a tick
//! as short as any other thread's turn.

use std::io;
use std::net::TcpStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{Ambient, ClockStats, Playout};
use crate::proto::audiosocket::{frame_bytes, HEADER_LEN};
use crate::sys::{lock, Bell};

/// One tick of the clock.
pub const TICK: Duration = Duration::from_millis(20);

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

#[derive(Default)]
pub(super) struct Clock {
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
        ambient: Option<Ambient>,
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
        let playout = Arc::new(Playout::new(stream, clock.clone(), ambient, done));
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
        playout.stats()
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
        let clock = Arc::new(Clock::default());
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
        // Room for the largest frame (slin192) from the start: a tick never allocates.
        let mut frame = Vec::with_capacity(HEADER_LEN + frame_bytes(192_000));
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
            calls.playing.retain(|p| p.tick(due, skipped, &mut frame));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::playout::tests::pair;
    use std::io::Read;

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
}
