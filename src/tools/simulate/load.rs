//! Load mode: `avr-core simulate --calls N`, many fake-Asterisk calls at once.
//!
//! Threads: one receiver per call (it must timestamp frames the moment they arrive, so it
//! sleeps in `read()` on its own socket) and ONE pacing thread for all senders, which also
//! places the calls. A sender per call would add 50 wake-ups per second per call to a machine
//! that is also running the server under test.
//!
//! Every caller frame is marked: all samples of frame `k` (160 at 8 kHz, 320 at 16 kHz, …) hold
//! `k + 1`, a quiet DC level that no bridge changes (a resampler keeps a DC level too) and no
//! silence looks like. So its echo is recognised wherever the
//! agent's chunking and the playout clock put it, and the echo agent (or anyone on the way) can
//! tell which frame it holds: [`frame_seq`].

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::checker::Checker;
use super::runner::{frame_kind, receive, sleep_until, Shared};
use super::stats::{gaps, ms, nearest_rank, window_max};
use super::{EndedBy, SimCodec, FRAME};
use crate::proto::audiosocket::{self, KIND_AUDIO, KIND_UUID};
use crate::tools::rates::{frame_samples, SLIN_RATE_HZ};

/// Longest marked audio: frame numbers must fit the marker (`k + 1 ≤ i16::MAX`).
pub const MAX_MARKED: Duration = Duration::from_secs(600);
/// After the marked audio, silence is sent this long beyond the echo delay, so the last
/// marked frames' echoes come back before the caller hangs up.
const ECHO_TAIL: Duration = Duration::from_millis(1000);
/// A caller write that blocks this long means the server stopped reading.
const WRITE_STALL: Duration = Duration::from_millis(200);
/// Receiver threads do little: a read, a timestamp, a scan.
const RECEIVER_STACK: usize = 128 * 1024;

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
    /// Threads this process used for the calls: receivers + the pacing thread.
    pub threads: usize,
    pub elapsed: Duration,
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
            "\n{} calls ({} connected, {} failed) for {:.1} s each, {} receiver threads + 1 pacing \
             thread, run took {:.1} s",
            s.calls,
            s.connected,
            s.failed,
            self.opts.total().as_secs_f64(),
            self.threads.saturating_sub(1),
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
        out
    }
}

/// [`nearest_rank`] over ascending microseconds; zero when empty.
fn percentile_us(sorted: &[u32], pct: f64) -> Duration {
    nearest_rank(sorted, pct).map_or(Duration::ZERO, us)
}

/// A call as the pacing thread sees it.
struct Slot {
    uuid: [u8; 16],
    stream: Option<TcpStream>,
    shared: Option<Arc<Shared>>,
    next: u32,
    sent: Vec<Duration>,
    receiver: Option<thread::JoinHandle<LoadCall>>,
    error: Option<String>,
    done: bool,
}

/// Runs the calls and returns once every call has ended and its receiver has reported.
pub fn run_load(opts: &LoadOptions) -> LoadReport {
    let begin = Instant::now();
    let marked = opts.marked_frames();
    let total_frames = (opts.total().as_micros() / FRAME.as_micros()) as u32;
    let mut slots: Vec<Slot> = (0..opts.calls)
        .map(|_| Slot {
            uuid: *uuid::Uuid::new_v4().as_bytes(),
            stream: None,
            shared: None,
            next: 0,
            sent: Vec::with_capacity(total_frames as usize),
            receiver: None,
            error: None,
            done: false,
        })
        .collect();
    // Due events: (when, call). Before a call is connected its event is the connect.
    let mut due: BinaryHeap<Reverse<(Instant, usize)>> = (0..opts.calls)
        .map(|i| {
            let offset = opts.ramp.mul_f64(i as f64 / opts.calls.max(1) as f64);
            Reverse((begin + offset, i))
        })
        .collect();
    // A rate no kind carries fails every call, as a refused connection would.
    let (kind, refused) = match frame_kind(SimCodec::Slin, opts.rate_hz) {
        Ok(kind) => (kind, None),
        Err(e) => (KIND_AUDIO, Some(e.to_string())),
    };
    let samples = frame_samples(opts.rate_hz);
    let mut frame = Vec::with_capacity(3 + 2 * samples);
    let stop_at = FRAME * total_frames;
    while let Some(Reverse((at, i))) = due.pop() {
        sleep_until(at);
        let slot = &mut slots[i];
        let Some(shared) = slot.shared.clone() else {
            let placed = match &refused {
                Some(why) => Err(why.clone()),
                None => connect(opts, slot, total_frames),
            };
            match placed {
                Ok(t0) => due.push(Reverse((t0, i))),
                Err(e) => {
                    slot.error = Some(e);
                    slot.done = true;
                }
            }
            continue;
        };
        let Some(stream) = slot.stream.as_ref() else {
            continue;
        };
        if !shared.is_live() {
            slot.done = true; // the server hung up or closed: Asterisk stops sending at once
            continue;
        }
        let offset = FRAME * slot.next;
        if offset >= stop_at {
            if shared.end(EndedBy::Client, shared.t0.elapsed()) {
                let _ = stream.shutdown(Shutdown::Write);
            }
            slot.done = true;
            continue;
        }
        let sample = if slot.next < marked {
            marker(slot.next)
        } else {
            0
        };
        frame.clear();
        frame.push(kind);
        frame.extend_from_slice(&(2 * samples as u16).to_be_bytes());
        for _ in 0..samples {
            frame.extend_from_slice(&sample.to_le_bytes());
        }
        // Stamped before the write: the server may read, forward and the agent stamp the frame
        // before this thread is scheduled again after `write` returns.
        let now = shared.t0.elapsed();
        let written = (&mut &*stream).write_all(&frame);
        match written {
            Ok(()) => {
                slot.sent.push(now);
                slot.next += 1;
                due.push(Reverse((shared.t0 + FRAME * slot.next, i)));
            }
            Err(_) if !shared.is_live() => slot.done = true,
            Err(e) => {
                let why = if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) {
                    format!(
                        "the caller could not write a frame for {} ms: the server stopped reading",
                        WRITE_STALL.as_millis()
                    )
                } else {
                    format!("sending audio: {e}")
                };
                slot.error = Some(why);
                shared.end(EndedBy::ServerClose, now);
                let _ = stream.shutdown(Shutdown::Both);
                slot.done = true;
            }
        }
    }
    let threads = 1 + slots.iter().filter(|s| s.receiver.is_some()).count();
    let calls = slots
        .into_iter()
        .map(|mut slot| {
            let mut call = match slot.receiver.take() {
                Some(handle) => handle.join().unwrap_or_else(|_| LoadCall {
                    error: Some("the receiver thread panicked".into()),
                    ..LoadCall::default()
                }),
                None => LoadCall::default(),
            };
            call.uuid = audiosocket::CallId::from_bytes(slot.uuid).to_string();
            call.sent = std::mem::take(&mut slot.sent);
            if call.error.is_none() {
                call.error = slot.error.take();
            }
            call
        })
        .collect();
    LoadReport {
        opts: opts.clone(),
        calls,
        threads,
        elapsed: begin.elapsed(),
    }
}

/// Places one call: connect, UUID, receiver thread. Returns when its first frame is due.
fn connect(opts: &LoadOptions, slot: &mut Slot, total_frames: u32) -> Result<Instant, String> {
    let stream = TcpStream::connect_timeout(&opts.addr, opts.connect_timeout)
        .map_err(|e| format!("cannot connect to {}: {e}", opts.addr))?;
    let setup = |s: &TcpStream| -> io::Result<TcpStream> {
        s.set_nodelay(true)?;
        s.set_write_timeout(Some(WRITE_STALL))?;
        s.try_clone()
    };
    let recv_stream = setup(&stream).map_err(|e| format!("socket setup: {e}"))?;
    let hello = audiosocket::encode(KIND_UUID, &slot.uuid).expect("16 bytes always fit");
    (&stream)
        .write_all(&hello)
        .map_err(|e| format!("sending the UUID: {e}"))?;
    let shared = Arc::new(Shared::new());
    // The received audio is scanned and dropped after every read: room for one read.
    let rx = Checker::with_capacity(opts.rate_hz, total_frames as usize + 64, 64 * 1024);
    let handle = thread::Builder::new()
        .name("sim-load-recv".into())
        .stack_size(RECEIVER_STACK)
        .spawn({
            let shared = shared.clone();
            move || collect(recv_stream, &shared, rx)
        })
        .map_err(|e| format!("cannot start a receiver thread: {e}"))?;
    let t0 = shared.t0;
    slot.stream = Some(stream);
    slot.shared = Some(shared);
    slot.receiver = Some(handle);
    Ok(t0)
}

/// The receiver thread: reads until the call is over, then boils the frames down.
fn collect(stream: TcpStream, shared: &Shared, rx: Checker) -> LoadCall {
    let mut scan = EchoScan::default();
    let scanned = receive(stream, shared, rx, |rx, now| {
        rx.drain_audio(|audio| scan.audio(audio, now))
    });
    let rx = match scanned {
        Ok(rx) => rx.into_checked(),
        Err(e) => {
            shared.end(EndedBy::ServerClose, shared.t0.elapsed());
            return LoadCall {
                started: Some(shared.t0),
                error: Some(format!("receiving: {e}")),
                ended_by: shared.ended().map(|(by, _)| by),
                ..LoadCall::default()
            };
        }
    };
    let mut gaps_us: Vec<u32> = gaps(&rx.arrivals)
        .iter()
        .map(|g| g.as_micros().min(u128::from(u32::MAX)) as u32)
        .collect();
    gaps_us.sort_unstable();
    LoadCall {
        started: Some(shared.t0),
        frames_received: rx.arrivals.len() as u64,
        max_frames_in_100ms: window_max(&rx.arrivals, Duration::from_millis(100)),
        gaps_us,
        echoes: scan.echoes,
        echo_samples: scan.samples,
        violations: rx.violations,
        ended_by: shared.ended().map(|(by, _)| by),
        ..LoadCall::default()
    }
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
    }
}
