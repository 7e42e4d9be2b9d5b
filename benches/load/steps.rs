//! One step of concurrent calls: the callers, the server measured, and the row it makes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use avr_core::proto::audiosocket;
use avr_core::tools::rates::frame_samples;
use avr_core::tools::simulate::{run_load, LoadOptions, LoadSummary};

use crate::child::{cpu_percent, own_ticks, proc_ticks, Avr, Sample};
use crate::floor::Floor;
use crate::tap::{ms, pct, Tap};
use crate::ECHO_DELAY;

/// The echo agent's event-loop thread (`EchoServer`).
const ECHO_THREAD: &str = "echo-sts";

/// What a step measures: avr-core (a child process, with its footprint) or the floor bridge
/// (a thread of this process: CPU only).
pub enum Server<'a> {
    Avr(&'a Avr),
    Floor(&'a Floor),
}

impl Server<'_> {
    fn addr(&self) -> SocketAddr {
        match self {
            Server::Avr(avr) => avr.addr,
            Server::Floor(floor) => floor.addr(),
        }
    }

    fn sample(&self) -> Sample {
        match self {
            Server::Avr(avr) => avr.sample(),
            Server::Floor(floor) => Sample {
                at: Some(Instant::now()),
                cpu_ticks: floor.cpu_ticks(),
                ..Sample::default()
            },
        }
    }
}

/// Per CPU, the ticks the hypervisor ran something else while this machine wanted the CPU
/// (`/proc/stat` "steal"): on a virtual machine a stolen millisecond is a frame late for
/// reasons neither avr-core nor the harness can see, so a step reports it.
pub fn steal_ticks() -> Vec<u64> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut out = Vec::new();
    for line in stat.lines() {
        let mut f = line.split_whitespace();
        let Some(cpu) = f.next().and_then(|c| c.strip_prefix("cpu")) else {
            continue;
        };
        let Ok(n) = cpu.parse::<usize>() else {
            continue; // the "cpu" total line
        };
        let steal = f.nth(7).and_then(|v| v.parse().ok()).unwrap_or(0);
        if out.len() <= n {
            out.resize(n + 1, 0);
        }
        out[n] = steal;
    }
    out
}

/// Percent of `over` stolen from the CPUs `cpus` (their mean), between two `steal_ticks`.
fn stolen(before: &[u64], after: &[u64], cpus: &[usize], over: Duration) -> f64 {
    if cpus.is_empty() {
        return 0.0;
    }
    let ticks: u64 = cpus
        .iter()
        .map(|&c| after.get(c).unwrap_or(&0) - before.get(c).unwrap_or(&0))
        .sum();
    cpu_percent(ticks, over) / cpus.len() as f64
}

/// The harness's own cost in one step, each part on the clock of its own thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct Harness {
    /// The whole benchmark process (callers, agent, webhook receiver, this sampling), % of
    /// one core.
    pub process: f64,
    /// The simulated callers' event loop.
    pub callers: f64,
    /// The echo agent's event loop.
    pub agent: f64,
    /// Percent of the steady state the hypervisor took from the server's CPU, and from the
    /// harness's (mean over its CPUs): time no process here could use.
    pub steal_server: f64,
    pub steal_harness: f64,
}

pub struct Row {
    pub calls: usize,
    /// The callers' rate.
    pub rate_hz: u32,
    pub summary: LoadSummary,
    /// The measured server's CPU, % of one core, over the steady state.
    pub cpu: f64,
    pub harness: Harness,
    pub peak: Sample,
    pub idle: Sample,
    pub one_way_p50: Duration,
    pub one_way_p99: Duration,
    pub one_way_max: Duration,
    pub hooks: u64,
}

/// The quality bar of issue #15: what a caller hears and what the agent gets, per step.
pub const BAR_JITTER: Duration = Duration::from_millis(2);
pub const BAR_ONE_WAY: Duration = Duration::from_millis(2);
/// Caller→agent p99 within which a step counts as carried: one 20 ms frame period.
pub const KEEP_UP: Duration = Duration::from_millis(20);
/// Above this the harness, not the server, may have made a frame late: its sends are the
/// reference every latency is measured from.
pub const HARNESS_LATE: Duration = Duration::from_millis(1);

impl Row {
    pub fn rss_per_call(&self) -> f64 {
        self.peak.rss_kib.saturating_sub(self.idle.rss_kib) as f64 / self.calls as f64
    }

    pub fn threads_per_call(&self) -> f64 {
        self.peak.per_call_threads
    }

    /// The callers' kind: `slin`, `slin16`, …
    pub fn kind_name(&self) -> &'static str {
        let kind = audiosocket::audio_kind(self.rate_hz).unwrap_or(audiosocket::KIND_AUDIO);
        audiosocket::kind_name(kind)
    }

    /// The server's CPU (percent of one core) per concurrent call.
    pub fn cpu_per_call(&self) -> f64 {
        self.cpu / self.calls as f64
    }

    /// Caller frames never echoed plus agent audio dropped, in frames of the callers' rate.
    pub fn frames_lost(&self) -> u64 {
        let s = &self.summary;
        s.lost
            + s.dropped_samples
                .div_ceil(frame_samples(self.rate_hz) as u64)
    }

    /// Jitter p99 ≤ 2 ms, nothing lost, caller→agent p99 ≤ 2 ms, no call failed.
    pub fn holds_bar(&self) -> bool {
        self.carried() && self.summary.jitter_p99 <= BAR_JITTER && self.one_way_p99 <= BAR_ONE_WAY
    }

    /// Kept up, whatever the jitter: no call failed, no frame lost, and caller frames reached
    /// the agent within one frame period at p99 (beyond it the call threads fall behind the
    /// callers, and the backlog grows for as long as the calls last).
    pub fn carried(&self) -> bool {
        self.summary.failed == 0 && self.frames_lost() == 0 && self.one_way_p99 <= KEEP_UP
    }

    /// The harness's own sends were late enough to blur the server's figures.
    pub fn harness_late(&self) -> bool {
        self.summary.send_lateness_p99 > HARNESS_LATE
    }

    pub fn line(&self) -> String {
        let s = &self.summary;
        format!(
            "{:>5} calls: {} failed; server CPU {:.0}% RSS {} KiB ({:.0} KiB/call) threads {} ({:.1}/call) fds {}; \
             jitter p99 {} max {} ms; caller->agent p50 {} p99 {} max {} ms; round trip p50 {} p99 {} ms; lost {}; \
             harness CPU {:.0}% (callers {:.0}%, agent {:.0}%), send lateness p99 {} ms; steal {:.1}%/{:.1}%; bar {}",
            self.calls,
            s.failed,
            self.cpu,
            self.peak.rss_kib,
            self.rss_per_call(),
            self.peak.threads,
            self.threads_per_call(),
            self.peak.fds,
            ms(s.jitter_p99),
            ms(s.jitter_max),
            ms(self.one_way_p50),
            ms(self.one_way_p99),
            ms(self.one_way_max),
            ms(s.round_trip_p50),
            ms(s.round_trip_p99),
            s.lost,
            self.harness.process,
            self.harness.callers,
            self.harness.agent,
            ms(s.send_lateness_p99),
            self.harness.steal_server,
            self.harness.steal_harness,
            if self.holds_bar() { "held" } else { "missed" },
        )
    }
}

/// CPU ticks of one thread of this process.
fn thread_ticks(tid: i32) -> u64 {
    proc_ticks(&format!("self/task/{tid}"))
}

/// The thread of this process named `name`, if there is one.
fn thread_named(name: &str) -> Option<i32> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .filter_map(Result::ok)
        .find(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.trim() == name)
        })?
        .file_name()
        .to_str()?
        .parse()
        .ok()
}

/// One step: `calls` concurrent calls at `rate_hz` to `server`; it is sampled once a second
/// while all are up, and so are the harness's threads.
pub fn step(
    server: Server<'_>,
    tap: &Tap,
    hooks: &AtomicU64,
    calls: usize,
    rate_hz: u32,
    seconds: f64,
    idle: &Sample,
) -> Row {
    let mut opts = LoadOptions::new(server.addr(), calls, Duration::from_secs_f64(seconds));
    opts.rate_hz = rate_hz;
    // 2 ms between call starts (at most 2 s): setup costs stay out of the steady state.
    opts.ramp = Duration::from_millis((2 * calls as u64).min(2000));
    opts.echo_delay = ECHO_DELAY;
    let hooks_before = hooks.load(Ordering::Relaxed);
    let (tid_tx, tid_rx) = crossbeam_channel::bounded(1);
    let runner = thread::spawn(move || {
        let _ = tid_tx.send(rustix::thread::gettid().as_raw_nonzero().get());
        run_load(&opts)
    });
    let callers_tid = tid_rx.recv().expect("the load thread starts");
    let rt = crate::pin::callers_realtime(callers_tid);
    if let Err(why) = &rt {
        if crate::pin::CALLERS_RT.get().is_none() {
            eprintln!("note: the callers run at normal priority ({why})");
        }
    }
    let _ = crate::pin::CALLERS_RT.set(rt);
    let agent_tid = thread_named(ECHO_THREAD);
    let agent_ticks = || agent_tid.map_or(0, thread_ticks);
    // Steady state: from 1 s after the ramp to 1 s before the marked audio ends.
    let ramp = Duration::from_millis((2 * calls as u64).min(2000));
    thread::sleep(ramp + Duration::from_secs(1));
    let first = server.sample();
    let own_first = (own_ticks(), thread_ticks(callers_tid), agent_ticks());
    let steal_first = steal_ticks();
    let mut peak = first;
    let window_end =
        Instant::now() + Duration::from_secs_f64(seconds - 2.0).max(Duration::from_secs(1));
    let mut last = first;
    while Instant::now() < window_end {
        thread::sleep(
            Duration::from_millis(1000).min(window_end.saturating_duration_since(Instant::now())),
        );
        last = server.sample();
        peak.rss_kib = peak.rss_kib.max(last.rss_kib);
        peak.threads = peak.threads.max(last.threads);
        peak.per_call_threads = peak.per_call_threads.max(last.per_call_threads);
        peak.fds = peak.fds.max(last.fds);
    }
    let over = last.at.unwrap().duration_since(first.at.unwrap());
    let cpu = cpu_percent(last.cpu_ticks - first.cpu_ticks, over);
    let harness = Harness {
        process: cpu_percent(own_ticks() - own_first.0, over),
        callers: cpu_percent(thread_ticks(callers_tid) - own_first.1, over),
        agent: cpu_percent(agent_ticks() - own_first.2, over),
        ..Harness::default()
    };
    let steal_last = steal_ticks();
    let (server_cpus, harness_cpus) = match crate::pin::current() {
        Some(p) => (vec![p.server], p.harness.clone()),
        None => {
            let all: Vec<usize> = (0..steal_last.len()).collect();
            (all.clone(), all)
        }
    };
    let harness = Harness {
        steal_server: stolen(&steal_first, &steal_last, &server_cpus, over),
        steal_harness: stolen(&steal_first, &steal_last, &harness_cpus, over),
        ..harness
    };
    let report = runner.join().expect("the load run panicked");
    let summary = report.summary();
    if summary.failed > 0 {
        print!("{}", report.text(10));
    }
    let one_way = tap.one_way(&report);
    Row {
        calls,
        rate_hz,
        summary,
        cpu,
        harness,
        peak,
        idle: *idle,
        one_way_p50: pct(&one_way, 50.0),
        one_way_p99: pct(&one_way, 99.0),
        one_way_max: one_way
            .last()
            .map_or(Duration::ZERO, |&v| Duration::from_micros(u64::from(v))),
        hooks: hooks.load(Ordering::Relaxed) - hooks_before,
    }
}
