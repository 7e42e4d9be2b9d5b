//! Load mode: `avr-core simulate --calls N`, many fake-Asterisk calls at once.
//!
//! One thread runs every call on an epoll event loop: non-blocking sockets, read as soon as
//! they are readable (each read stamped when it is taken, as the per-call receiver threads
//! this replaced did), and one timerfd for a shared 1 ms grid on which every call's frames are
//! due every 20 ms. A thread per call cost the harness more CPU than the server it measures
//! (issue #15): at 1,000 calls it fell behind and its calls "failed". The run reports the
//! harness's own send lateness, so a run shows when the harness, not the server, was late.
//!
//! Every caller frame is marked: all samples of frame `k` (160 at 8 kHz, 320 at 16 kHz, …) hold
//! `k + 1`, a quiet DC level that no bridge changes (a resampler keeps a DC level too) and no
//! silence looks like. So its echo is recognised wherever the
//! agent's chunking and the playout clock put it, and the echo agent (or anyone on the way) can
//! tell which frame it holds: [`frame_seq`].

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::buffer::spare_capacity;
use rustix::event::{epoll, Timespec};
use rustix::net::sockopt::socket_error;
use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
};

use super::checker::Checker;
use super::runner::frame_kind;
use super::stats::{gaps, ms, nearest_rank, window_max};
use super::{EndedBy, SimCodec, FRAME};
use crate::proto::audiosocket::{self, KIND_AUDIO, KIND_UUID};
use crate::tools::rates::{frame_samples, SLIN_RATE_HZ};

/// Longest marked audio: frame numbers must fit the marker (`k + 1 ≤ i16::MAX`).
pub const MAX_MARKED: Duration = Duration::from_secs(600);
/// After the marked audio, silence is sent this long beyond the echo delay, so the last
/// marked frames' echoes come back before the caller hangs up.
const ECHO_TAIL: Duration = Duration::from_millis(1000);
/// A caller write that makes no progress this long means the server stopped reading.
const WRITE_STALL: Duration = Duration::from_millis(200);

/// The sequence number marked in frame `k`'s samples.
pub fn marker(seq: u32) -> i16 {
    (seq + 1) as i16
}

/// The frame number a sample of marked audio carries; `None` for silence (0) and other
/// audio (negative).
pub fn frame_seq(sample: i16) -> Option<u32> {
    (sample > 0).then(|| sample as u32 - 1)
}

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub addr: SocketAddr,
    pub calls: usize,
    /// The callers' rate, an AudioSocket rate (`SimOptions::rate_hz`); slin.
    pub rate_hz: u32,
    /// Marked caller audio per call; silence follows for `echo_delay` + 1 s, then the caller
    /// closes.
    pub duration: Duration,
    /// Call starts are spread evenly over this.
    pub ramp: Duration,
    /// The agent's own delay (`echo-sts --delay-ms`), taken out of the round trip.
    pub echo_delay: Duration,
    pub connect_timeout: Duration,
}

impl LoadOptions {
    pub fn new(addr: SocketAddr, calls: usize, duration: Duration) -> Self {
        LoadOptions {
            addr,
            calls,
            rate_hz: SLIN_RATE_HZ,
            duration,
            ramp: Duration::from_millis(1000),
            echo_delay: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(2),
        }
    }

    /// Frames whose samples carry a marker.
    pub fn marked_frames(&self) -> u32 {
        (self.duration.as_micros() / FRAME.as_micros()) as u32
    }

    fn total(&self) -> Duration {
        self.duration + self.echo_delay + ECHO_TAIL
    }
}

/// A marker counts once this many consecutive samples carry it: a frame carries hundreds,
/// while a resampler's ringing at the step between two markers (one LSB apart) can round to
/// a neighbouring value for a sample or two, which must not count as that frame's echo.
const MARKER_RUN: u32 = 8;

/// Echo markers found in received audio, gathered by the receiver thread after each read.
#[derive(Default)]
struct EchoScan {
    /// Highest frame number seen so far; markers only increase along the stream.
    next: u32,
    echoes: Vec<(u32, Duration)>,
    samples: u64,
    /// The marker of the current run of equal samples, and its length so far.
    run: Option<(u32, u32)>,
}

impl EchoScan {
    /// Scans audio that arrived at `now` (whole samples).
    fn audio(&mut self, payload: &[u8], now: Duration) {
        for pair in payload.chunks_exact(2) {
            let Some(seq) = frame_seq(i16::from_le_bytes([pair[0], pair[1]])) else {
                self.run = None;
                continue;
            };
            self.samples += 1;
            let length = match self.run {
                Some((same, n)) if same == seq => n + 1,
                _ => 1,
            };
            self.run = Some((seq, length));
            if length == MARKER_RUN && seq >= self.next {
                self.echoes.push((seq, now));
                self.next = seq + 1;
            }
        }
    }
}

/// One call of the run.
#[derive(Debug, Default)]
pub struct LoadCall {
    pub uuid: String,
    /// When the UUID was written (`None`: never connected).
    pub started: Option<Instant>,
    /// When each audio frame was written, from `started`; index = frame number.
    pub sent: Vec<Duration>,
    pub frames_received: u64,
    /// Gaps between received frames, µs, ascending.
    pub gaps_us: Vec<u32>,
    pub max_frames_in_100ms: usize,
    /// First arrival of each echoed frame number, from `started`.
    pub echoes: Vec<(u32, Duration)>,
    /// Marked samples received (a frame's worth per frame when nothing was dropped: 160 at
    /// 8 kHz).
    pub echo_samples: u64,
    pub violations: Vec<String>,
    pub ended_by: Option<EndedBy>,
    /// The call could not be placed or broke locally.
    pub error: Option<String>,
}

impl LoadCall {
    /// Round trips (echo arrival − send − agent delay), µs, ascending.
    pub fn round_trips_us(&self, echo_delay: Duration) -> Vec<u32> {
        let mut rt: Vec<u32> = self
            .echoes
            .iter()
            .filter_map(|&(seq, at)| {
                let sent = *self.sent.get(seq as usize)?;
                Some(at.saturating_sub(sent + echo_delay).as_micros() as u32)
            })
            .collect();
        rt.sort_unstable();
        rt
    }

    /// Marked frames sent whose echo never came back.
    pub fn lost(&self, marked: u32) -> u64 {
        let sent = (self.sent.len() as u32).min(marked);
        let echoed = self.echoes.iter().filter(|(seq, _)| *seq < sent).count() as u32;
        u64::from(sent.saturating_sub(echoed))
    }

    /// Agent samples missing from the echoes that did come back (partial frames dropped), at
    /// the callers' `rate_hz`.
    pub fn dropped_samples(&self, marked: u32, rate_hz: u32) -> u64 {
        let sent = (self.sent.len() as u32).min(marked);
        let expected = (u64::from(sent) - self.lost(marked)) * frame_samples(rate_hz) as u64;
        expected.saturating_sub(self.echo_samples)
    }

    pub fn unexpected_end(&self) -> bool {
        self.started.is_some() && self.ended_by != Some(EndedBy::Client)
    }

    fn failed(&self, marked: u32) -> bool {
        self.error.is_some()
            || !self.violations.is_empty()
            || self.unexpected_end()
            || self.lost(marked) > 0
    }
}

/// Everything the run measured.
pub struct LoadReport {
    pub opts: LoadOptions,
    pub calls: Vec<LoadCall>,
    /// Threads this process used for the calls: the one event loop.
    pub threads: usize,
    pub elapsed: Duration,
    /// The harness's own lateness per frame, µs, ascending: from the frame's slot on the send
    /// grid to its write. Frames queued behind bytes the server had not taken are left out
    /// (that delay is the server's).
    pub send_lateness_us: Vec<u32>,
}

/// The aggregate, in numbers (the benchmark tabulates these).
#[derive(Debug, Default, Clone)]
pub struct LoadSummary {
    pub calls: usize,
    pub connected: usize,
    pub failed: usize,
    pub frames_sent: u64,
    pub frames_received: u64,
    pub gap_p50: Duration,
    pub gap_p99: Duration,
    pub gap_max: Duration,
    /// |gap − 20 ms|.
    pub jitter_p99: Duration,
    pub jitter_max: Duration,
    pub max_frames_in_100ms: usize,
    pub round_trip_p50: Duration,
    pub round_trip_p99: Duration,
    pub round_trip_max: Duration,
    pub lost: u64,
    pub dropped_samples: u64,
    pub unexpected_hangups: usize,
    pub violations: usize,
    pub errors: usize,
    /// The harness's own send lateness (slot → write), over all frames.
    pub send_lateness_p50: Duration,
    pub send_lateness_p99: Duration,
    pub send_lateness_max: Duration,
}

impl LoadSummary {
    /// Nothing lost, no violation, no unexpected hangup, no failed call.
    pub fn clean(&self) -> bool {
        self.failed == 0
    }
}

fn us(v: u32) -> Duration {
    Duration::from_micros(u64::from(v))
}

impl LoadReport {
    pub fn summary(&self) -> LoadSummary {
        let marked = self.opts.marked_frames();
        let mut all_gaps = Vec::new();
        let mut rts = Vec::new();
        let mut s = LoadSummary {
            calls: self.calls.len(),
            ..LoadSummary::default()
        };
        for c in &self.calls {
            s.connected += usize::from(c.started.is_some());
            s.failed += usize::from(c.failed(marked));
            s.frames_sent += c.sent.len() as u64;
            s.frames_received += c.frames_received;
            s.max_frames_in_100ms = s.max_frames_in_100ms.max(c.max_frames_in_100ms);
            s.lost += c.lost(marked);
            s.dropped_samples += c.dropped_samples(marked, self.opts.rate_hz);
            s.unexpected_hangups += usize::from(c.unexpected_end());
            s.violations += c.violations.len();
            s.errors += usize::from(c.error.is_some());
            all_gaps.extend_from_slice(&c.gaps_us);
            rts.extend(c.round_trips_us(self.opts.echo_delay));
        }
        all_gaps.sort_unstable();
        rts.sort_unstable();
        let mut jitter: Vec<u32> = all_gaps.iter().map(|g| g.abs_diff(20_000)).collect();
        jitter.sort_unstable();
        let pick = percentile_us;
        s.gap_p50 = pick(&all_gaps, 50.0);
        s.gap_p99 = pick(&all_gaps, 99.0);
        s.gap_max = all_gaps.last().copied().map_or(Duration::ZERO, us);
        s.jitter_p99 = pick(&jitter, 99.0);
        s.jitter_max = jitter.last().copied().map_or(Duration::ZERO, us);
        s.round_trip_p50 = pick(&rts, 50.0);
        s.round_trip_p99 = pick(&rts, 99.0);
        s.round_trip_max = rts.last().copied().map_or(Duration::ZERO, us);
        let late = &self.send_lateness_us;
        s.send_lateness_p50 = pick(late, 50.0);
        s.send_lateness_p99 = pick(late, 99.0);
        s.send_lateness_max = late.last().copied().map_or(Duration::ZERO, us);
        s
    }

    /// The report for a human: every call when there are few, else the failed and the worst
    /// paced ones (at most `max_lines`), then the aggregate.
    pub fn text(&self, max_lines: usize) -> String {
        let marked = self.opts.marked_frames();
        let delay = self.opts.echo_delay;
        let mut out = String::new();
        let mut order: Vec<&LoadCall> = self.calls.iter().collect();
        // Failed calls first, then by worst gap.
        order.sort_by_key(|c| Reverse((c.failed(marked), c.gaps_us.last().copied().unwrap_or(0))));
        let shown = order.len().min(max_lines);
        if shown < order.len() {
            let _ = writeln!(
                out,
                "{shown} of {} calls shown (failed first, then the worst paced):",
                order.len()
            );
        }
        for c in &order[..shown] {
            let short = c.uuid.get(..8).unwrap_or(&c.uuid);
            if let Some(e) = &c.error {
                let _ = writeln!(out, "call {short}: FAILED: {e}");
                continue;
            }
            let rt = c.round_trips_us(delay);
            let gap = |p| percentile_us(&c.gaps_us, p);
            let _ = writeln!(
                out,
                "call {short}: sent {} recv {}; gap p50 {} p99 {} max {}; round trip p50 {} p99 {}; \
                 lost {}; {}{}",
                c.sent.len(),
                c.frames_received,
                ms(gap(50.0)),
                ms(gap(99.0)),
                ms(c.gaps_us.last().copied().map_or(Duration::ZERO, us)),
                ms(percentile_us(&rt, 50.0)),
                ms(percentile_us(&rt, 99.0)),
                c.lost(marked),
                c.ended_by.map_or("not ended".into(), |e| e.to_string()),
                if c.violations.is_empty() {
                    String::new()
                } else {
                    format!("; {} violations, first: {}", c.violations.len(), c.violations[0])
                }
            );
        }
        let s = self.summary();
        let _ = writeln!(
            out,
            "\n{} calls ({} connected, {} failed) for {:.1} s each on {} event-loop thread, \
             run took {:.1} s",
            s.calls,
            s.connected,
            s.failed,
            self.opts.total().as_secs_f64(),
            self.threads,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "  frames:      {} sent, {} received",
            s.frames_sent, s.frames_received
        );
        let _ = writeln!(
            out,
            "  pacing:      gap p50 {}, p99 {}, max {}; jitter |gap-20ms| p99 {}, max {}; \
             at most {} frames in any 100 ms",
            ms(s.gap_p50),
            ms(s.gap_p99),
            ms(s.gap_max),
            ms(s.jitter_p99),
            ms(s.jitter_max),
            s.max_frames_in_100ms
        );
        let _ = writeln!(
            out,
            "  round trip:  p50 {}, p99 {}, max {} (caller -> agent -> caller, the agent's {} \
             taken out; includes the 20 ms playout grid and its jitter buffer)",
            ms(s.round_trip_p50),
            ms(s.round_trip_p99),
            ms(s.round_trip_max),
            ms(delay)
        );
        let _ = writeln!(
            out,
            "  lost:        {} frames never echoed, {} agent samples dropped",
            s.lost, s.dropped_samples
        );
        let _ = writeln!(
            out,
            "  problems:    {} unexpected hangups, {} protocol violations, {} local errors",
            s.unexpected_hangups, s.violations, s.errors
        );
        let _ = writeln!(
            out,
            "  harness send lateness p99 {}, p50 {}, max {} (slot -> write: the harness's own \
             delay, not the server's)",
            ms(s.send_lateness_p99),
            ms(s.send_lateness_p50),
            ms(s.send_lateness_max)
        );
        out
    }
}

/// [`nearest_rank`] over ascending microseconds; zero when empty.
fn percentile_us(sorted: &[u32], pct: f64) -> Duration {
    nearest_rank(sorted, pct).map_or(Duration::ZERO, us)
}

/// Send times sit on a grid of this step from the start of the run: the event loop then wakes
/// once per step for every call whose frame falls in it (at 1,000 calls, 50 frames a wake-up,
/// 1,000 wake-ups a second) instead of once per frame (50,000), and a frame's lateness is
/// measured from its slot. The server sees each call paced exactly every 20 ms all the same.
const SEND_SLOT: Duration = Duration::from_millis(1);
/// After the call ends, how long we keep reading for the server's EOF (and stray bytes); as
/// the single-call receiver does.
const DRAIN: Duration = Duration::from_secs(1);
/// Read buffer, shared by all calls (one thread): large enough that a burst rarely cuts a
/// frame at the buffer's end.
const READ_BUF: usize = 64 * 1024;
/// Readiness events taken per `epoll_wait`; more simply wait for the next call.
const EVENTS: usize = 1024;
/// The epoll key of the timer; calls use their index.
const TIMER_KEY: u64 = u64::MAX;

/// The first slot of the send grid that starts at `begin`, at or after `at`.
fn on_grid(begin: Instant, at: Instant) -> Instant {
    let since = at.saturating_duration_since(begin).as_nanos();
    let slots = since.div_ceil(SEND_SLOT.as_nanos());
    begin + Duration::from_nanos((slots * SEND_SLOT.as_nanos()) as u64)
}

/// A caller's bytes not yet taken by the kernel. A frame is written whole when the socket has
/// room (nearly always); what a short write leaves waits here and goes first when the socket
/// is writable again, so frames are never interleaved or reordered.
#[derive(Default)]
struct Outbox {
    pending: Vec<u8>,
    /// Since when the writes have made no progress (`None`: nothing pending).
    stalled_since: Option<Instant>,
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Writes what is pending; `Ok(true)` once all of it is out, `Ok(false)` if the socket is
    /// full.
    fn flush(&mut self, w: &mut impl Write, now: Instant) -> io::Result<bool> {
        while !self.pending.is_empty() {
            match w.write(&self.pending) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.pending.drain(..n);
                    self.stalled_since = Some(now);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stalled_since.get_or_insert(now);
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        }
        self.stalled_since = None;
        Ok(true)
    }

    /// Writes `frame` after anything pending; `Ok(false)` if part of it had to wait.
    fn send(&mut self, w: &mut impl Write, frame: &[u8], now: Instant) -> io::Result<bool> {
        self.pending.extend_from_slice(frame);
        self.flush(w, now)
    }

    /// When the writes that wait will have made no progress for [`WRITE_STALL`].
    fn stall_deadline(&self) -> Option<Instant> {
        self.stalled_since.map(|since| since + WRITE_STALL)
    }
}

/// Where a call is.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Phase {
    /// Not placed yet.
    Waiting,
    /// Connecting (non-blocking), given up at this deadline.
    Connecting(Instant),
    /// Sending frames and reading.
    Live,
    /// Ended; reading until the server's EOF or this deadline.
    Draining(Instant),
    /// Its [`LoadCall`] is made.
    Done,
}

/// One call as the event loop keeps it.
struct Call {
    uuid: [u8; 16],
    phase: Phase,
    stream: Option<TcpStream>,
    /// When the UUID was written: every time in the call is an offset from here.
    t0: Instant,
    /// Frame 0's slot on the send grid; frame `k` is due `k` × 20 ms later.
    first_due: Instant,
    next: u32,
    sent: Vec<Duration>,
    out: Outbox,
    rx: Option<Checker>,
    scan: EchoScan,
    end: Option<(EndedBy, Duration)>,
    /// Placing or sending failed.
    error: Option<String>,
    /// Reading failed (not a disconnect).
    recv_error: Option<String>,
    /// The one live entry of this call in the due queue; others there are stale.
    wake: Option<Instant>,
    result: Option<LoadCall>,
}

impl Call {
    /// Records the end if nobody has yet; true if this call did.
    fn end(&mut self, by: EndedBy, at: Duration) -> bool {
        if self.end.is_some() {
            return false;
        }
        self.end = Some((by, at));
        true
    }

    fn shutdown(&self, how: Shutdown) {
        if let Some(stream) = &self.stream {
            let _ = stream.shutdown(how);
        }
    }
}

/// The whole run on one thread: epoll for the sockets, one timerfd for the send grid.
struct Harness<'a> {
    opts: &'a LoadOptions,
    begin: Instant,
    epoll: OwnedFd,
    timer: OwnedFd,
    /// The deadline the timer is set for.
    armed: Option<Instant>,
    calls: Vec<Call>,
    /// Due events: (when, call); an entry counts only if it is still the call's `wake`.
    due: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Calls not yet done.
    open: usize,
    kind: u8,
    /// Why no call can be placed (a rate no kind carries).
    refused: Option<String>,
    samples: usize,
    marked: u32,
    total_frames: u32,
    frame: Vec<u8>,
    buf: Vec<u8>,
    /// Per frame not held back by the server: slot → write, µs.
    lateness_us: Vec<u32>,
}

/// Runs the calls on one thread and returns once every call has ended.
pub fn run_load(opts: &LoadOptions) -> LoadReport {
    let begin = Instant::now();
    let setup = || -> io::Result<(OwnedFd, OwnedFd)> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let timer = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
        )?;
        // Edge-triggered and never read: each expiry is one wake-up, and the loop looks at
        // the clock, not at the timer's count.
        epoll::add(
            &epoll,
            &timer,
            epoll::EventData::new_u64(TIMER_KEY),
            epoll::EventFlags::IN | epoll::EventFlags::ET,
        )?;
        Ok((epoll, timer))
    };
    let total_frames = (opts.total().as_micros() / FRAME.as_micros()) as u32;
    let calls = (0..opts.calls)
        .map(|_| Call {
            uuid: *uuid::Uuid::new_v4().as_bytes(),
            phase: Phase::Waiting,
            stream: None,
            t0: begin,
            first_due: begin,
            next: 0,
            sent: Vec::with_capacity(total_frames as usize),
            out: Outbox::default(),
            rx: None,
            scan: EchoScan::default(),
            end: None,
            error: None,
            recv_error: None,
            wake: None,
            result: None,
        })
        .collect::<Vec<_>>();
    let (calls, send_lateness_us) = match setup() {
        Ok((epoll, timer)) => {
            // A rate no kind carries fails every call, as a refused connection would.
            let (kind, refused) = match frame_kind(SimCodec::Slin, opts.rate_hz) {
                Ok(kind) => (kind, None),
                Err(e) => (KIND_AUDIO, Some(e.to_string())),
            };
            let samples = frame_samples(opts.rate_hz);
            let mut h = Harness {
                opts,
                begin,
                epoll,
                timer,
                armed: None,
                open: calls.len(),
                calls,
                due: BinaryHeap::new(),
                kind,
                refused,
                samples,
                marked: opts.marked_frames(),
                total_frames,
                frame: Vec::with_capacity(3 + 2 * samples),
                buf: vec![0u8; READ_BUF],
                lateness_us: Vec::with_capacity(opts.calls * total_frames as usize),
            };
            for i in 0..h.calls.len() {
                let offset = opts.ramp.mul_f64(i as f64 / opts.calls.max(1) as f64);
                h.schedule(i, begin + offset);
            }
            h.run();
            let mut lateness = std::mem::take(&mut h.lateness_us);
            lateness.sort_unstable();
            (h.calls, lateness)
        }
        Err(e) => {
            let mut calls = calls;
            for c in &mut calls {
                c.error = Some(format!("cannot start the event loop (epoll, timerfd): {e}"));
            }
            (calls, Vec::new())
        }
    };
    let calls = calls
        .into_iter()
        .map(|mut c| {
            let mut call = c.result.take().unwrap_or_default();
            call.uuid = audiosocket::CallId::from_bytes(c.uuid).to_string();
            call.sent = std::mem::take(&mut c.sent);
            if call.error.is_none() {
                call.error = c.error.take();
            }
            call
        })
        .collect();
    LoadReport {
        opts: opts.clone(),
        calls,
        threads: 1,
        elapsed: begin.elapsed(),
        send_lateness_us,
    }
}

impl Harness<'_> {
    fn schedule(&mut self, i: usize, at: Instant) {
        self.calls[i].wake = Some(at);
        self.due.push(Reverse((at, i)));
    }

    /// The earliest live entry of the due queue (stale ones are dropped on the way).
    fn next_due(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, i))) = self.due.peek() {
            if self.calls[i].wake == Some(at) {
                return Some(at);
            }
            self.due.pop();
        }
        None
    }

    /// Sets the timer for `at` (in the future) unless it already is.
    fn arm(&mut self, at: Instant, now: Instant) -> io::Result<()> {
        if self.armed == Some(at) {
            return Ok(());
        }
        let wait = Timespec::try_from(at - now).map_err(|_| io::ErrorKind::InvalidInput)?;
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        timerfd_settime(
            &self.timer,
            TimerfdTimerFlags::empty(),
            &Itimerspec {
                it_interval: zero,
                it_value: wait,
            },
        )?;
        self.armed = Some(at);
        Ok(())
    }

    fn run(&mut self) {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(EVENTS);
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        while self.open > 0 {
            let now = Instant::now();
            // Work already due: look at the sockets without sleeping, then do it.
            let timeout = match self.next_due() {
                Some(at) if at <= now => Some(&zero),
                Some(at) => match self.arm(at, now) {
                    Ok(()) => None,
                    Err(e) => return self.abort(&format!("setting the timer: {e}")),
                },
                None => None,
            };
            events.clear();
            match epoll::wait(&self.epoll, spare_capacity(&mut events), timeout) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return self.abort(&format!("epoll_wait: {e}")),
            }
            for ev in &events {
                let key = ev.data.u64();
                if key == TIMER_KEY {
                    continue;
                }
                let i = key as usize;
                let flags = ev.flags;
                if matches!(self.calls[i].phase, Phase::Connecting(_)) {
                    self.connected(i);
                    continue;
                }
                let closing =
                    epoll::EventFlags::RDHUP | epoll::EventFlags::HUP | epoll::EventFlags::ERR;
                if flags.intersects(epoll::EventFlags::IN | closing) {
                    self.read_ready(i, flags.intersects(closing));
                }
                if flags.contains(epoll::EventFlags::OUT) && !self.calls[i].out.is_empty() {
                    self.service(i);
                }
            }
            let now = Instant::now();
            while self.next_due().is_some_and(|at| at <= now) {
                let Some(Reverse((_, i))) = self.due.pop() else {
                    break;
                };
                self.calls[i].wake = None;
                self.service(i);
            }
        }
    }

    /// The loop itself failed: every call still open fails with `why`.
    fn abort(&mut self, why: &str) {
        for i in 0..self.calls.len() {
            if self.calls[i].phase != Phase::Done {
                self.calls[i].error = Some(format!("the event loop failed: {why}"));
                self.finish(i);
            }
        }
    }

    /// Does what is due for call `i`: place it, send its due frames, or end its drain.
    fn service(&mut self, i: usize) {
        match self.calls[i].phase {
            Phase::Waiting => self.place(i),
            Phase::Connecting(deadline) => {
                if Instant::now() >= deadline {
                    let why = format!(
                        "cannot connect to {}: no answer in {} ms",
                        self.opts.addr,
                        self.opts.connect_timeout.as_millis()
                    );
                    self.not_placed(i, why);
                } else {
                    self.schedule(i, deadline);
                }
            }
            Phase::Live => self.send_due(i),
            Phase::Draining(deadline) => {
                if Instant::now() >= deadline {
                    self.finish(i);
                } else {
                    self.schedule(i, deadline);
                }
            }
            Phase::Done => {}
        }
    }

    /// Places call `i`: a non-blocking connect, watched by the loop, so a server slow to
    /// accept (a full backlog costs a 1 s SYN retry) delays that call, not every call's frames.
    fn place(&mut self, i: usize) {
        if let Some(why) = self.refused.clone() {
            return self.not_placed(i, why);
        }
        match self.start_connect(i) {
            Ok(stream) => {
                let deadline = Instant::now() + self.opts.connect_timeout;
                let call = &mut self.calls[i];
                call.stream = Some(stream);
                call.phase = Phase::Connecting(deadline);
                self.schedule(i, deadline);
            }
            Err(e) => self.not_placed(i, format!("cannot connect to {}: {e}", self.opts.addr)),
        }
    }

    fn start_connect(&self, i: usize) -> io::Result<TcpStream> {
        let stream = crate::sys::connect_started(self.opts.addr)?;
        // Edge-triggered: a socket is reported when something new happens on it (here: the
        // connect completing), so the loop reads each until it is empty and writes only when
        // it has something pending.
        epoll::add(
            &self.epoll,
            &stream,
            epoll::EventData::new_u64(i as u64),
            epoll::EventFlags::IN
                | epoll::EventFlags::OUT
                | epoll::EventFlags::RDHUP
                | epoll::EventFlags::ET,
        )?;
        Ok(stream)
    }

    /// Call `i`'s socket reported while connecting: connected (write the UUID; its first
    /// frame is due at the next slot of the grid) or refused.
    fn connected(&mut self, i: usize) {
        match self.hello(i) {
            Ok(()) => {
                let call = &mut self.calls[i];
                call.phase = Phase::Live;
                call.first_due = on_grid(self.begin, call.t0);
                let first = call.first_due;
                self.schedule(i, first);
            }
            Err(e) => self.not_placed(i, e),
        }
    }

    fn hello(&mut self, i: usize) -> Result<(), String> {
        let opts = self.opts;
        let call = &mut self.calls[i];
        let Some(stream) = call.stream.as_ref() else {
            return Err("the socket is gone".into());
        };
        match socket_error(stream) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("cannot connect to {}: {e}", opts.addr)),
            Err(e) => return Err(format!("socket setup: {e}")),
        }
        stream
            .set_nodelay(true)
            .map_err(|e| format!("socket setup: {e}"))?;
        let hello = audiosocket::encode(KIND_UUID, &call.uuid).expect("16 bytes always fit");
        // A socket that has just connected has room for 19 bytes: anything short is an error.
        match (&*stream).write(&hello) {
            Ok(n) if n == hello.len() => {}
            Ok(n) => return Err(format!("sending the UUID: only {n} bytes were taken")),
            Err(e) => return Err(format!("sending the UUID: {e}")),
        }
        call.t0 = Instant::now();
        // The received audio is scanned and dropped after every read: room for one read.
        call.rx = Some(Checker::with_capacity(
            opts.rate_hz,
            self.total_frames as usize + 64,
            READ_BUF,
        ));
        Ok(())
    }

    /// Call `i` could not be placed: it fails with `why` and never started.
    fn not_placed(&mut self, i: usize, why: String) {
        let call = &mut self.calls[i];
        call.error = Some(why);
        call.stream = None;
        call.wake = None;
        call.phase = Phase::Done;
        call.result = Some(LoadCall::default());
        self.open -= 1;
    }

    /// Writes what waits, then every frame due by now; ends the call after its last frame.
    fn send_due(&mut self, i: usize) {
        let stop_at = FRAME * self.total_frames;
        let call = &mut self.calls[i];
        let Some(stream) = call.stream.as_ref() else {
            return;
        };
        // Frames behind bytes the server has not taken are late by the server, not by us.
        let held_back = !call.out.is_empty();
        match call.out.flush(&mut &*stream, Instant::now()) {
            Ok(true) => {}
            Ok(false) => return self.wait_or_stall(i),
            Err(e) => return self.send_failed(i, &e),
        }
        loop {
            let call = &mut self.calls[i];
            let Some(stream) = call.stream.as_ref() else {
                return;
            };
            if FRAME * call.next >= stop_at {
                let at = call.t0.elapsed();
                if call.end(EndedBy::Client, at) {
                    call.shutdown(Shutdown::Write);
                }
                return self.drain(i);
            }
            let due = call.first_due + FRAME * call.next;
            // Stamped before the write: the server may read, forward and the agent stamp the
            // frame before this thread runs again after `write` returns.
            let now = Instant::now();
            if due > now {
                return self.schedule(i, due);
            }
            let sample = if call.next < self.marked {
                marker(call.next)
            } else {
                0
            };
            self.frame.clear();
            self.frame.push(self.kind);
            self.frame
                .extend_from_slice(&(2 * self.samples as u16).to_be_bytes());
            for _ in 0..self.samples {
                self.frame.extend_from_slice(&sample.to_le_bytes());
            }
            match call.out.send(&mut &*stream, &self.frame, now) {
                Ok(whole) => {
                    call.sent.push(now - call.t0);
                    call.next += 1;
                    if !held_back {
                        let late = (now - due).as_micros().min(u128::from(u32::MAX));
                        self.lateness_us.push(late as u32);
                    }
                    if !whole {
                        return self.wait_or_stall(i);
                    }
                }
                Err(e) => return self.send_failed(i, &e),
            }
        }
    }

    /// Call `i` has bytes the socket would not take: wait for room (the socket reports it),
    /// failing the call once nothing has moved for [`WRITE_STALL`].
    fn wait_or_stall(&mut self, i: usize) {
        let Some(deadline) = self.calls[i].out.stall_deadline() else {
            return;
        };
        if Instant::now() < deadline {
            return self.schedule(i, deadline);
        }
        let why = format!(
            "the caller could not write a frame for {} ms: the server stopped reading",
            WRITE_STALL.as_millis()
        );
        self.fail(i, why);
    }

    /// A write failed. A peer that is gone (EPIPE, reset) closed the call, which the read
    /// side reports (its EOF or reset may not have been read yet); anything else is ours.
    fn send_failed(&mut self, i: usize, e: &io::Error) {
        if !is_disconnect(e) {
            return self.fail(i, format!("sending audio: {e}"));
        }
        self.read_ready(i, true);
        let call = &mut self.calls[i];
        if call.phase == Phase::Live {
            let at = call.t0.elapsed();
            call.end(EndedBy::ServerClose, at);
            self.drain(i);
        }
    }

    /// A local failure: the call ends here, as today's blocking caller's did.
    fn fail(&mut self, i: usize, why: String) {
        let call = &mut self.calls[i];
        call.error = Some(why);
        let at = call.t0.elapsed();
        call.end(EndedBy::ServerClose, at);
        call.shutdown(Shutdown::Both);
        self.drain(i);
        self.read_ready(i, true);
    }

    /// The call has ended: keep reading for the server's EOF, up to [`DRAIN`].
    fn drain(&mut self, i: usize) {
        let call = &mut self.calls[i];
        let ended = call.end.map_or(Duration::ZERO, |(_, at)| at);
        let deadline = call.t0 + ended + DRAIN;
        call.phase = Phase::Draining(deadline);
        self.schedule(i, deadline);
    }

    /// Reads call `i` until its socket is empty, stamping each read as it is taken. A short
    /// read means empty (edge-triggered epoll reports data that comes later), unless the
    /// socket reported a hang-up too, whose EOF may sit behind the data: then until EAGAIN.
    fn read_ready(&mut self, i: usize, to_eagain: bool) {
        loop {
            let call = &mut self.calls[i];
            if !matches!(call.phase, Phase::Live | Phase::Draining(_)) {
                return;
            }
            let (Some(stream), Some(rx)) = (call.stream.as_ref(), call.rx.as_mut()) else {
                return;
            };
            let result = (&*stream).read(&mut self.buf);
            let now = call.t0.elapsed();
            let live = call.end.is_none();
            match result {
                Ok(0) => {
                    rx.closed(now, "closed");
                    if call.end(EndedBy::ServerClose, now) {
                        call.shutdown(Shutdown::Write);
                    }
                    return self.finish(i);
                }
                Ok(n) => {
                    let had_hangup = rx.hangup_received();
                    rx.feed(&self.buf[..n], now, live);
                    if n == self.buf.len() {
                        rx.more_queued();
                    }
                    let scan = &mut call.scan;
                    rx.drain_audio(|audio| scan.audio(audio, now));
                    // Asterisk stops at once: shutting our side also stops our next write.
                    if !had_hangup && rx.hangup_received() && call.end(EndedBy::ServerHangup, now) {
                        call.shutdown(Shutdown::Write);
                        self.drain(i);
                    }
                    if n < self.buf.len() && !to_eagain {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_disconnect(&e) => {
                    rx.closed(now, "reset");
                    call.end(EndedBy::ServerClose, now);
                    return self.finish(i);
                }
                Err(e) => {
                    call.recv_error = Some(format!("receiving: {e}"));
                    call.end(EndedBy::ServerClose, now);
                    return self.finish(i);
                }
            }
        }
    }

    /// Call `i` is over: close its socket (which leaves epoll) and boil its frames down.
    fn finish(&mut self, i: usize) {
        let call = &mut self.calls[i];
        if call.phase == Phase::Done {
            return;
        }
        call.phase = Phase::Done;
        call.wake = None;
        call.stream = None;
        self.open -= 1;
        let ended_by = call.end.map(|(by, _)| by);
        let started = call.rx.is_some().then_some(call.t0);
        if let Some(e) = call.recv_error.take() {
            call.rx = None;
            call.result = Some(LoadCall {
                started,
                error: Some(e),
                ended_by,
                ..LoadCall::default()
            });
            return;
        }
        let Some(mut rx) = call.rx.take() else {
            call.result = Some(LoadCall::default());
            return;
        };
        rx.end_of_stream();
        let rx = rx.into_checked();
        let mut gaps_us: Vec<u32> = gaps(&rx.arrivals)
            .iter()
            .map(|g| g.as_micros().min(u128::from(u32::MAX)) as u32)
            .collect();
        gaps_us.sort_unstable();
        let scan = std::mem::take(&mut call.scan);
        call.result = Some(LoadCall {
            started,
            frames_received: rx.arrivals.len() as u64,
            max_frames_in_100ms: window_max(&rx.arrivals, Duration::from_millis(100)),
            gaps_us,
            echoes: scan.echoes,
            echo_samples: scan.samples,
            violations: rx.violations,
            ended_by,
            ..LoadCall::default()
        });
    }
}

/// The peer is gone: EOF-like errors end the call rather than fail it.
fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    #[test]
    fn markers_are_found_across_misaligned_frames() {
        let mut scan = EchoScan::default();
        let ms = Duration::from_millis;
        // Frame 0 from its middle, then half of 0 + half of 1 + silence padding, then 2.
        let mut a = vec![marker(0); 80];
        a.extend(vec![0; 80]);
        scan.audio(&bytes(&a), ms(1));
        let mut b = vec![marker(0); 80];
        b.extend(vec![marker(1); 80]);
        scan.audio(&bytes(&b), ms(2));
        let mut c = vec![marker(1); 80];
        c.extend(vec![marker(2); 80]);
        scan.audio(&bytes(&c), ms(3));
        assert_eq!(scan.echoes, [(0, ms(1)), (1, ms(2)), (2, ms(3))]);
        assert_eq!(scan.samples, 80 * 5);
        assert_eq!(frame_seq(marker(41)), Some(41));
        assert_eq!(frame_seq(0), None);
        assert_eq!(frame_seq(-5), None);
        assert_eq!(
            frame_seq(marker(MAX_MARKED.as_millis() as u32 / 20)),
            Some(30_000)
        );
    }

    #[test]
    fn a_blip_of_another_marker_is_ringing_not_an_echo() {
        let mut scan = EchoScan::default();
        let ms = Duration::from_millis;
        // Frame 3, two samples that round to 5 (a filter's overshoot), then frame 4.
        let mut a = vec![marker(3); 100];
        a.extend([marker(5), marker(5)]);
        a.extend(vec![marker(4); 100]);
        scan.audio(&bytes(&a), ms(1));
        assert_eq!(scan.echoes, [(3, ms(1)), (4, ms(1))]);
    }

    #[test]
    fn losses_and_round_trips_are_counted_per_call() {
        let ms = Duration::from_millis;
        let call = LoadCall {
            started: Some(Instant::now()),
            sent: (0..10).map(|k| ms(20 * k)).collect(),
            echoes: vec![(0, ms(210)), (1, ms(230)), (3, ms(290))],
            echo_samples: 3 * 160 - 10,
            ended_by: Some(EndedBy::Client),
            ..LoadCall::default()
        };
        // 5 marked frames: 2 and 4 never came back; 10 samples of the others are missing.
        assert_eq!(call.lost(5), 2);
        assert_eq!(call.dropped_samples(5, SLIN_RATE_HZ), 10);
        assert_eq!(call.round_trips_us(ms(200)), [10_000, 10_000, 30_000]);
        assert!(call.failed(5) && !call.failed(1) && !call.unexpected_end());
    }

    /// Takes `room` bytes, then would block until given more room.
    struct Tight {
        taken: Vec<u8>,
        room: usize,
    }

    impl Write for Tight {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_short_write_keeps_the_rest_in_order_and_stalls_only_without_progress() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut w = Tight {
            taken: Vec::new(),
            room: 5,
        };
        let mut out = Outbox::default();
        assert!(!out.send(&mut w, &[1, 2, 3, 4, 5, 6, 7, 8], t).unwrap());
        assert_eq!(out.stall_deadline(), Some(t + WRITE_STALL));
        // Nothing moves: the stall clock keeps its start.
        assert!(!out.flush(&mut w, t + ms(50)).unwrap());
        assert_eq!(out.stall_deadline(), Some(t + WRITE_STALL));
        // Some progress restarts it; the next frame queues behind the rest of the first.
        w.room = 2;
        assert!(!out.send(&mut w, &[9, 10], t + ms(100)).unwrap());
        assert_eq!(out.stall_deadline(), Some(t + ms(100) + WRITE_STALL));
        w.room = 100;
        assert!(out.flush(&mut w, t + ms(120)).unwrap());
        assert!(out.is_empty() && out.stall_deadline().is_none());
        assert_eq!(w.taken, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    }

    #[test]
    fn send_slots_are_on_the_grid_at_or_after_the_connect() {
        let begin = Instant::now();
        let us = Duration::from_micros;
        assert_eq!(on_grid(begin, begin), begin);
        assert_eq!(on_grid(begin, begin + us(1)), begin + us(1000));
        assert_eq!(on_grid(begin, begin + us(1000)), begin + us(1000));
        assert_eq!(on_grid(begin, begin + us(20_999)), begin + us(21_000));
    }

    #[test]
    fn refused_calls_fail_without_starting() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut opts = LoadOptions::new(addr, 2, Duration::from_millis(100));
        opts.ramp = Duration::ZERO;
        let report = run_load(&opts);
        let s = report.summary();
        assert_eq!((s.calls, s.connected, s.failed, s.errors), (2, 0, 2, 2));
        for c in &report.calls {
            let e = c.error.as_deref().unwrap_or("");
            assert!(e.starts_with(&format!("cannot connect to {addr}")), "{e}");
            assert!(c.started.is_none() && c.sent.is_empty());
        }
    }

    #[test]
    fn wideband_callers_send_marked_frames_of_their_kind() {
        use crate::tools::simulate::fake_server::{echo_frames, fake_server, read_hello};
        let (addr, server) = fake_server(|mut s| {
            read_hello(&mut s);
            echo_frames(&mut s)
        });
        let mut opts = LoadOptions::new(addr, 1, Duration::from_millis(200));
        opts.rate_hz = 16_000;
        opts.ramp = Duration::ZERO;
        opts.echo_delay = Duration::ZERO;
        let report = run_load(&opts);
        let kinds = server.join().unwrap();
        // 0.2 s marked + 1 s of silence for the echoes = 60 frames of 20 ms at 16 kHz.
        assert_eq!(kinds, vec![(0x12, 640); 60]);
        let s = report.summary();
        let text = report.text(5);
        assert!(s.clean(), "{text}");
        assert_eq!(
            (s.lost, s.dropped_samples, s.violations),
            (0, 0, 0),
            "{text}"
        );
        assert_eq!(report.calls[0].echoes.len(), 10, "{text}");
        assert_eq!(report.calls[0].echo_samples, 10 * 320, "{text}");
        // Every frame's lateness was measured, and the report says it.
        assert_eq!(report.send_lateness_us.len(), 60, "{text}");
        assert!(s.send_lateness_p99 <= s.send_lateness_max, "{text}");
        assert!(text.contains("harness send lateness p99"), "{text}");
    }
}
