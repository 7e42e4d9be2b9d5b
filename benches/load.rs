//! The load benchmark: `cargo bench --bench load`. Writes `BENCHMARKS.md`.
//!
//! Starts the release build of avr-core as a child process, and in this process the echo
//! agent (with an audio tap), the simulated callers (`simulate` load mode) and a webhook
//! receiver, all on loopback. Agent and callers share this process so the agent stamps each
//! caller frame's arrival on the same clock the caller stamped its send: caller→agent latency
//! is one-way, matched frame by frame through the number marked in the samples.
//!
//! Steps through 1, 50, 100, 250, 500 and 1,000 concurrent calls (stopping after a step with
//! failed calls), sampling avr-core's CPU, RSS, threads and fds from /proc; then runs the same
//! number of calls (250) from slin (8 kHz) and from slin16 (16 kHz) callers, side by side, so
//! the cost of resampling a wideband caller to the 8 kHz agent shows as CPU per call; then
//! measures webhook deliveries per second and `/call` requests per second.
//!
//! Last, pipeline mode (issue #12): `AVR_BENCH_PIPELINE_CALLS` (default 100, 0 to skip)
//! concurrent calls against one in-process `EchoPipeline` answering as fast as it can, each
//! call two caller turns; per turn, the latency from the ASR writing the transcript to the
//! caller receiving the first loud frame of the answer.
//!
//! `AVR_BENCH_SECONDS` (marked audio per call, default 30), `AVR_BENCH_STEPS`
//! (comma-separated call counts) and `AVR_BENCH_RATE_CALLS` (calls of the side-by-side run,
//! 0 to skip it) shorten a trial run. `AVR_BENCH_ONLY=pipeline` runs the pipeline section
//! alone and replaces only that section of `BENCHMARKS.md`.
//!
//! `AVR_BENCH_ONLY=registry` (issue #14) compares the in-memory registry with a shared one on
//! a local `redis-server` (skipped with a note when there is none): `/call` requests per
//! second, and call setup (UUID frame sent → the agent's WebSocket connected, after a `/call`)
//! with each; it replaces only its own section of `BENCHMARKS.md`.

use avr_core::sys::lock;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use avr_core::config::Config;
use avr_core::metrics::Metrics;
use avr_core::proto::audiosocket;
use avr_core::tools::demo::{loopback_command, HookSink};
use avr_core::tools::echo_sts::{EchoOptions, EchoServer};
use avr_core::tools::rates::{frame_samples, khz, SLIN_RATE_HZ};
use avr_core::tools::simulate::{frame_seq, run_load, LoadOptions, LoadReport, LoadSummary};
use avr_core::webhook::{Event, EventKind, Webhooks};

const ECHO_DELAY: Duration = Duration::from_millis(200);
const STEPS: [usize; 6] = [1, 50, 100, 250, 500, 1000];
/// The side-by-side run: 250 calls, where the steps show avr-core still well inside one core,
/// so a difference in CPU is the callers' rate and not saturation.
const RATE_CALLS: usize = 250;
/// The callers of the side-by-side run: slin, then slin16 (`Dial(…/c(slin16))`, the common
/// wideband case), both against the default 8 kHz agent.
const CALLER_RATES: [u32; 2] = [SLIN_RATE_HZ, 16_000];
const WEBHOOK_EVENTS: usize = 50_000;
const CALL_REQUEST_SECONDS: u64 = 5;
const CALL_REQUEST_CLIENTS: usize = 8;

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not: then do nothing.
    if !std::env::args().any(|a| a == "--bench") {
        println!("the load benchmark runs with `cargo bench --bench load`");
        return;
    }
    if let Err(e) = raise_fd_limit() {
        eprintln!("warning: cannot raise RLIMIT_NOFILE ({e}); large steps may fail");
    }
    let pipeline_calls: usize = env_or("AVR_BENCH_PIPELINE_CALLS", PIPELINE_CALLS);
    if std::env::var("AVR_BENCH_ONLY").is_ok_and(|v| v == "pipeline") {
        let section = pipeline_section(&pipeline_bench(pipeline_calls));
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md");
        let old = std::fs::read_to_string(path).unwrap_or_default();
        std::fs::write(path, replace_section(&old, &section)).expect("write BENCHMARKS.md");
        println!("wrote the pipeline section of {path}");
        return;
    }
    if std::env::var("AVR_BENCH_ONLY").is_ok_and(|v| v == "registry") {
        let section = registry_section();
        println!("{section}");
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md");
        let old = std::fs::read_to_string(path).unwrap_or_default();
        std::fs::write(path, replace_registry_section(&old, &section))
            .expect("write BENCHMARKS.md");
        println!("wrote the shared registry section of {path}");
        return;
    }
    let seconds: f64 = env_or("AVR_BENCH_SECONDS", 30.0);
    let steps: Vec<usize> = std::env::var("AVR_BENCH_STEPS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| STEPS.to_vec());

    let tap = Tap::default();
    let agent = EchoServer::start_with_tap(
        ([127, 0, 0, 1], 0).into(),
        EchoOptions {
            delay: ECHO_DELAY,
            transcripts: true,
        },
        tap.clone().into_fn(),
    )
    .expect("start the echo agent");
    let hooks_seen = Arc::new(AtomicU64::new(0));
    let sink = {
        let seen = hooks_seen.clone();
        HookSink::start(move |_, _| {
            seen.fetch_add(1, Ordering::Relaxed);
        })
        .expect("start the webhook receiver")
    };
    let dead_letters = std::env::temp_dir().join(format!("avr-bench-{}.jsonl", std::process::id()));
    let avr = Avr::start(&agent.url(), &sink.url(), &dead_letters);
    thread::sleep(Duration::from_millis(500));
    let idle = avr.sample();
    println!(
        "avr-core pid {} idle: RSS {} KiB, {} threads, {} fds",
        avr.pid(),
        idle.rss_kib,
        idle.threads,
        idle.fds
    );

    let mut rows = Vec::new();
    for &calls in &steps {
        let row = step(&avr, &tap, &hooks_seen, calls, SLIN_RATE_HZ, seconds, &idle);
        println!("{}", row.line());
        let failed = row.summary.failed > 0;
        rows.push(row);
        if failed {
            println!("calls failed at {calls}: stopping the steps here");
            break;
        }
        settle(&avr, &idle);
    }
    settle(&avr, &idle);

    // Not stopped by a failed step: the side-by-side count is below where calls fail.
    let rate_calls: usize = env_or("AVR_BENCH_RATE_CALLS", RATE_CALLS);
    let mut by_rate = Vec::new();
    for rate_hz in CALLER_RATES.into_iter().filter(|_| rate_calls > 0) {
        let row = step(&avr, &tap, &hooks_seen, rate_calls, rate_hz, seconds, &idle);
        println!("{} kHz callers: {}", khz(rate_hz), row.line());
        by_rate.push(row);
        settle(&avr, &idle);
    }

    // A directory of its own: the running avr-core holds the spool beside `dead_letters`.
    let step_dir = std::env::temp_dir().join(format!("avr-bench-webhooks-{}", std::process::id()));
    let hooks = webhook_rate(&sink.url(), &hooks_seen, &step_dir.join("dead.jsonl"));
    let _ = std::fs::remove_dir_all(&step_dir);
    println!("webhooks: {hooks}");
    let call_rate = call_requests(avr.http);
    println!("/call: {call_rate}");
    let after = avr.sample();
    drop(avr);
    let _ = std::fs::remove_file(&dead_letters);
    let pipeline = (pipeline_calls > 0).then(|| pipeline_bench(pipeline_calls));

    let mut md = report(seconds, &idle, &after, &rows, &by_rate, &hooks, &call_rate);
    if let Some(p) = &pipeline {
        md += &pipeline_section(p);
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md");
    // The hand-written analysis (profiles, what limits, what to fix) survives a re-run.
    let analysis = std::fs::read_to_string(path)
        .ok()
        .and_then(|old| old.find("\n## Analysis").map(|at| old[at..].to_string()))
        .unwrap_or_default();
    std::fs::write(path, md + &analysis).expect("write BENCHMARKS.md");
    println!("wrote {path}");
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// 1,000 calls need ~4,000 descriptors in avr-core and more here; the child inherits this.
fn raise_fd_limit() -> std::io::Result<()> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit)?;
    }
    Ok(())
}

/// Per call uuid: each marked frame's arrival at the agent, on this process's clock.
#[derive(Clone, Default)]
struct Tap(Arc<Mutex<Arrivals>>);

/// Call uuid → (frame number, arrival at the agent), in order.
type Arrivals = HashMap<String, Vec<(u32, Instant)>>;

impl Tap {
    fn into_fn(self) -> avr_core::tools::echo_sts::AudioTap {
        Arc::new(move |label: &str, pcm: &[u8], at: Instant| {
            let mut seqs = pcm
                .chunks_exact(2)
                .filter_map(|p| frame_seq(i16::from_le_bytes([p[0], p[1]])));
            let Some(first) = seqs.next() else { return };
            let last = seqs.next_back().unwrap_or(first);
            let mut map = lock(&self.0);
            let frames = map.entry(label.to_string()).or_default();
            for seq in first..=last {
                if frames.last().is_none_or(|&(prev, _)| seq > prev) {
                    frames.push((seq, at));
                }
            }
        })
    }

    /// Caller→agent latencies (µs, ascending) for the calls of `report`; clears the tap.
    fn one_way(&self, report: &LoadReport) -> Vec<u32> {
        let map = std::mem::take(&mut *lock(&self.0));
        let mut out = Vec::new();
        for call in &report.calls {
            let (Some(t0), Some(frames)) = (call.started, map.get(&call.uuid)) else {
                continue;
            };
            for &(seq, at) in frames {
                if let Some(sent) = call.sent.get(seq as usize) {
                    out.push(at.saturating_duration_since(t0 + *sent).as_micros() as u32);
                }
            }
        }
        out.sort_unstable();
        out
    }
}

fn pct(sorted: &[u32], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Duration::from_micros(u64::from(sorted[rank.clamp(1, sorted.len()) - 1]))
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// avr-core's footprint at one moment.
#[derive(Clone, Copy, Default, Debug)]
struct Sample {
    at: Option<Instant>,
    /// utime + stime, clock ticks.
    cpu_ticks: u64,
    rss_kib: u64,
    threads: usize,
    fds: usize,
    /// Threads that carry calls (`call-*`, `sts-*` while connecting, and the shared
    /// `clock-*`) per call (`call-*`), by thread name: other threads (HTTP connections,
    /// webhook workers) do not blur it.
    per_call_threads: f64,
}

/// `/proc/self/stat` CPU ticks of this (the benchmark's) process.
fn own_ticks() -> u64 {
    proc_ticks("self")
}

fn proc_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`, which may contain spaces: utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(14) + field(15)
}

/// USER_HZ: 100 on every Linux build this runs on (sysconf would need libc).
const TICKS_PER_SECOND: f64 = 100.0;

fn cpu_percent(ticks: u64, over: Duration) -> f64 {
    ticks as f64 / TICKS_PER_SECOND / over.as_secs_f64() * 100.0
}

/// The avr-core binary to measure: `AVR_BENCH_BINARY` (e.g. the static musl build that ships
/// in the packages), else this profile's build.
fn binary() -> std::path::PathBuf {
    std::env::var_os("AVR_BENCH_BINARY")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_avr-core").into())
}

/// The avr-core child: release build, loopback ports, webhooks to the local receiver.
struct Avr {
    child: Child,
    addr: SocketAddr,
    http: SocketAddr,
}

impl Avr {
    fn start(sts_url: &str, webhook_url: &str, dead_letters: &std::path::Path) -> Avr {
        Avr::start_with(sts_url, webhook_url, dead_letters, |_| {})
    }

    /// [`start`](Self::start) with the command adjusted by `adjust` (pipeline mode's
    /// variables).
    fn start_with(
        sts_url: &str,
        webhook_url: &str,
        dead_letters: &std::path::Path,
        adjust: impl FnOnce(&mut Command),
    ) -> Avr {
        let mut cmd = loopback_command(&binary(), sts_url, webhook_url, dead_letters);
        adjust(&mut cmd);
        let mut child = cmd
            .env("MAX_CALLS", "2000")
            .env(
                "LOG_LEVEL",
                "warn,avr_core::call::listener=info,avr_core=info",
            )
            .spawn()
            .expect("start avr-core (release build)");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = crossbeam_channel::unbounded();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // `/call` without a following call fills the metadata store by design here.
                let expected = line.contains("Call metadata store full");
                if line.contains("listening on port")
                    || (line.contains("[WARN]") && !expected)
                    || line.contains("[ERROR]")
                {
                    let _ = tx.send(line);
                }
            }
        });
        let (mut port, mut http) = (0, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while port == 0 {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("avr-core did not start listening");
            let number = || line.rsplit(' ').next().and_then(|p| p.trim().parse().ok());
            if line.contains("AVR HTTP Server listening") {
                http = number().unwrap_or(0);
            } else if line.contains("AVR AudioSocket Server listening") {
                port = number().unwrap_or(0);
            } else {
                eprintln!("avr| {line}");
            }
        }
        // Warnings during the run are worth seeing (but only the first few hundred).
        thread::spawn(move || {
            for line in rx.iter().take(200) {
                eprintln!("avr| {line}");
            }
        });
        Avr {
            child,
            addr: ([127, 0, 0, 1], port).into(),
            http: ([127, 0, 0, 1], http).into(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn sample(&self) -> Sample {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let count = |dir: &str| {
            std::fs::read_dir(format!("/proc/{pid}/{dir}"))
                .map(|d| d.count())
                .unwrap_or(0)
        };
        let (mut calls, mut call_threads) = (0usize, 0usize);
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
        {
            let Ok(task) = task else { continue };
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.starts_with("call-") {
                calls += 1;
            }
            if ["call-", "sts-", "clock-"]
                .iter()
                .any(|p| comm.starts_with(p))
            {
                call_threads += 1;
            }
        }
        Sample {
            at: Some(Instant::now()),
            cpu_ticks: proc_ticks(&pid.to_string()),
            rss_kib,
            threads: count("task"),
            fds: count("fd"),
            per_call_threads: if calls == 0 {
                0.0
            } else {
                call_threads as f64 / calls as f64
            },
        }
    }
}

impl Drop for Avr {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (bounded) until avr-core is back to its idle thread count between steps.
fn settle(avr: &Avr, idle: &Sample) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while avr.sample().threads > idle.threads && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
    }
}

struct Row {
    calls: usize,
    /// The callers' rate.
    rate_hz: u32,
    summary: LoadSummary,
    cpu: f64,
    own_cpu: f64,
    peak: Sample,
    idle: Sample,
    one_way_p50: Duration,
    one_way_p99: Duration,
    one_way_max: Duration,
    sim_threads: usize,
    hooks: u64,
}

impl Row {
    fn rss_per_call(&self) -> f64 {
        self.peak.rss_kib.saturating_sub(self.idle.rss_kib) as f64 / self.calls as f64
    }

    fn threads_per_call(&self) -> f64 {
        self.peak.per_call_threads
    }

    /// The callers' kind: `slin`, `slin16`, …
    fn kind_name(&self) -> &'static str {
        let kind = audiosocket::audio_kind(self.rate_hz).unwrap_or(audiosocket::KIND_AUDIO);
        audiosocket::kind_name(kind)
    }

    /// avr-core's CPU (percent of one core) per concurrent call.
    fn cpu_per_call(&self) -> f64 {
        self.cpu / self.calls as f64
    }

    /// Caller frames never echoed plus agent audio dropped, in frames of the callers' rate.
    fn frames_lost(&self) -> u64 {
        let s = &self.summary;
        s.lost
            + s.dropped_samples
                .div_ceil(frame_samples(self.rate_hz) as u64)
    }

    fn line(&self) -> String {
        let s = &self.summary;
        format!(
            "{:>5} calls: {} failed; avr-core CPU {:.0}% RSS {} KiB ({:.0} KiB/call) threads {} ({:.1}/call) fds {}; \
             jitter p99 {} max {} ms; caller->agent p50 {} p99 {} max {} ms; round trip p50 {} p99 {} ms; lost {}; \
             bench process CPU {:.0}%",
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
            self.own_cpu,
        )
    }
}

/// One step: `calls` concurrent calls at `rate_hz`; avr-core sampled once a second while all
/// are up.
fn step(
    avr: &Avr,
    tap: &Tap,
    hooks: &AtomicU64,
    calls: usize,
    rate_hz: u32,
    seconds: f64,
    idle: &Sample,
) -> Row {
    let mut opts = LoadOptions::new(avr.addr, calls, Duration::from_secs_f64(seconds));
    opts.rate_hz = rate_hz;
    // 2 ms between call starts (at most 2 s): setup costs stay out of the steady state.
    opts.ramp = Duration::from_millis((2 * calls as u64).min(2000));
    opts.echo_delay = ECHO_DELAY;
    let hooks_before = hooks.load(Ordering::Relaxed);
    let runner = thread::spawn(move || run_load(&opts));
    // Steady state: from 1 s after the ramp to 1 s before the marked audio ends.
    let ramp = Duration::from_millis((2 * calls as u64).min(2000));
    thread::sleep(ramp + Duration::from_secs(1));
    let first = avr.sample();
    let own_first = own_ticks();
    let mut peak = first;
    let window_end =
        Instant::now() + Duration::from_secs_f64(seconds - 2.0).max(Duration::from_secs(1));
    let mut last = first;
    while Instant::now() < window_end {
        thread::sleep(
            Duration::from_millis(1000).min(window_end.saturating_duration_since(Instant::now())),
        );
        last = avr.sample();
        peak.rss_kib = peak.rss_kib.max(last.rss_kib);
        peak.threads = peak.threads.max(last.threads);
        peak.per_call_threads = peak.per_call_threads.max(last.per_call_threads);
        peak.fds = peak.fds.max(last.fds);
    }
    let over = last.at.unwrap().duration_since(first.at.unwrap());
    let cpu = cpu_percent(last.cpu_ticks - first.cpu_ticks, over);
    let own_cpu = cpu_percent(own_ticks() - own_first, over);
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
        own_cpu,
        peak,
        idle: *idle,
        one_way_p50: pct(&one_way, 50.0),
        one_way_p99: pct(&one_way, 99.0),
        one_way_max: one_way
            .last()
            .map_or(Duration::ZERO, |&v| Duration::from_micros(u64::from(v))),
        sim_threads: report.threads,
        hooks: hooks.load(Ordering::Relaxed) - hooks_before,
    }
}

/// Webhook deliveries per second: the library's delivery pipeline (queue, dispatcher,
/// `WEBHOOK_WORKERS` = 4 workers, ureq, keep-alive) driven in this process with a burst of
/// events spread over 1,000 calls, to the local receiver that answers 200 at once. Each event
/// is synced to the spool beside `dead_letters` before it is sent (docs/webhooks.md §5.10).
fn webhook_rate(url: &str, seen: &AtomicU64, dead_letters: &std::path::Path) -> String {
    let vars: Vec<(String, String)> = [
        ("STS_URL", "ws://127.0.0.1:9"),
        ("WEBHOOK_URL", url),
        ("WEBHOOK_QUEUE_SIZE", "100000"),
        ("WEBHOOK_DEAD_LETTER_FILE", &dead_letters.to_string_lossy()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let config = Config::from_vars(&vars).expect("webhook benchmark config");
    let metrics = Arc::new(Metrics::default());
    let hooks = Webhooks::start(&config, metrics.clone());
    let uuids: Vec<String> = (0..1000)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let before = seen.load(Ordering::Relaxed);
    let start = Instant::now();
    for i in 0..WEBHOOK_EVENTS {
        let payload = serde_json::json!({"role": "agent", "text": format!("line {i}")});
        hooks.emit(Event::new(
            &uuids[i % uuids.len()],
            EventKind::Transcription,
            payload,
        ));
    }
    let enqueued = start.elapsed();
    let deadline = start + Duration::from_secs(120);
    while seen.load(Ordering::Relaxed) - before < WEBHOOK_EVENTS as u64 && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(5));
    }
    let took = start.elapsed();
    let got = seen.load(Ordering::Relaxed) - before;
    let _ = hooks.shutdown(Instant::now() + Duration::from_secs(2));
    format!(
        "{got} of {WEBHOOK_EVENTS} events delivered in {:.2} s = {:.0} events/s \
         (enqueued in {:.2} s; delivered {}, failed {}, dead letters {})",
        took.as_secs_f64(),
        got as f64 / took.as_secs_f64(),
        enqueued.as_secs_f64(),
        metrics.webhook_delivered.load(Ordering::Relaxed),
        metrics.webhook_failed.load(Ordering::Relaxed),
        metrics.webhook_dead_letters.load(Ordering::Relaxed),
    )
}

/// Uuids each `/call` client cycles through: the metadata store holds 10,000 entries and no
/// call follows these requests, so fresh uuids would fill it within seconds and every later
/// request would be refused with 503 (by design: unexpired entries are never evicted). A
/// repeated uuid replaces its entry, doing the same work.
const CALL_UUIDS_PER_CLIENT: usize = 1000;

/// `/call` requests per second: clients each posting one request per connection (avr-core
/// closes after each answer), every request also delivering its `call_initiated` webhook.
fn call_requests(http: SocketAddr) -> String {
    let stop = Instant::now() + Duration::from_secs(CALL_REQUEST_SECONDS);
    let start = Instant::now();
    let clients: Vec<_> = (0..CALL_REQUEST_CLIENTS)
        .map(|_| {
            thread::spawn(move || {
                let (mut ok, mut bad, mut lat) = (0u64, 0u64, Vec::new());
                let uuids: Vec<uuid::Uuid> = (0..CALL_UUIDS_PER_CLIENT)
                    .map(|_| uuid::Uuid::new_v4())
                    .collect();
                let mut next = uuids.iter().cycle();
                while Instant::now() < stop {
                    let t = Instant::now();
                    if post_call(http, next.next().expect("a cycle never ends")) {
                        ok += 1;
                        lat.push(t.elapsed().as_micros() as u32);
                    } else {
                        bad += 1;
                    }
                }
                (ok, bad, lat)
            })
        })
        .collect();
    let (mut ok, mut bad, mut lat) = (0, 0, Vec::new());
    for c in clients {
        let (o, b, l) = c.join().expect("client thread");
        ok += o;
        bad += b;
        lat.extend(l);
    }
    lat.sort_unstable();
    let took = start.elapsed();
    format!(
        "{:.0} requests/s ({ok} answered 200, {bad} failed, {CALL_REQUEST_CLIENTS} clients, \
         latency p50 {} ms p99 {} ms)",
        ok as f64 / took.as_secs_f64(),
        ms(pct(&lat, 50.0)),
        ms(pct(&lat, 99.0)),
    )
}

fn post_call(http: SocketAddr, uuid: &uuid::Uuid) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&http, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(15)));
    let body = format!(r#"{{"uuid":"{uuid}","payload":{{"from":"2000","to":"5001"}}}}"#);
    let request = format!(
        "POST /call HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.1 200")
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let ram_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cores} CPUs (nproc), {cpu}, {:.1} GiB RAM, Linux {}",
        ram_kib as f64 / 1024.0 / 1024.0,
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    )
}

fn git_commit() -> String {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = run(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{commit} (with uncommitted changes)")
    } else {
        commit
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

fn report(
    seconds: f64,
    idle: &Sample,
    after: &Sample,
    rows: &[Row],
    by_rate: &[Row],
    hooks: &str,
    call_rate: &str,
) -> String {
    let mut md = String::new();
    let date = avr_core::time::iso8601_millis(SystemTime::now());
    let _ = writeln!(md, "# avr-core benchmarks\n");
    let command = match std::env::var("AVR_BENCH_BINARY") {
        Ok(b) => format!("AVR_BENCH_BINARY={b} cargo bench --bench load"),
        Err(_) => "cargo bench --bench load".to_string(),
    };
    let _ = writeln!(md, "- command: `{command}`");
    let _ = writeln!(md, "- binary: {}", binary().display());
    let _ = writeln!(md, "- date: {date}");
    let _ = writeln!(md, "- commit: {}", git_commit());
    let _ = writeln!(md, "- machine: {}", machine());
    let _ = writeln!(
        md,
        "- setup: avr-core release build as a child process; echo agent (delay {} ms, \
         transcripts on), simulated callers and webhook receiver in the benchmark process; all \
         on loopback. Each call sends {seconds:.0} s of frame-numbered slin audio, then silence \
         until its echo is back (+1 s), then closes. Starts are spread 2 ms apart (at most 2 s). \
         CPU/RSS/threads/fds are avr-core's, from /proc, over the steady state (all calls up); \
         RSS and threads are the peak.",
        ECHO_DELAY.as_millis()
    );
    let _ = writeln!(
        md,
        "- idle avr-core: RSS {} KiB, {} threads, {} fds; after the run: RSS {} KiB, {} threads, {} fds\n",
        idle.rss_kib, idle.threads, idle.fds, after.rss_kib, after.threads, after.fds
    );
    let _ = writeln!(
        md,
        "| calls | failed | avr-core CPU | RSS | RSS/call | threads | threads/call | fds | jitter p99 | jitter max | caller→agent p50 | p99 | max | round trip p50 | p99 | frames lost | webhooks | bench CPU |"
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let s = &r.summary;
        let _ = writeln!(
            md,
            "| {} | {} | {:.0}% | {:.1} MiB | {:.0} KiB | {} | {:.2} | {} | {} ms | {} ms | {} ms | {} ms | {} ms | {} ms | {} ms | {} | {} | {:.0}% |",
            r.calls,
            s.failed,
            r.cpu,
            r.peak.rss_kib as f64 / 1024.0,
            r.rss_per_call(),
            r.peak.threads,
            r.threads_per_call(),
            r.peak.fds,
            ms(s.jitter_p99),
            ms(s.jitter_max),
            ms(r.one_way_p50),
            ms(r.one_way_p99),
            ms(r.one_way_max),
            ms(s.round_trip_p50),
            ms(s.round_trip_p99),
            r.frames_lost(),
            r.hooks,
            r.own_cpu,
        );
    }
    let _ = writeln!(
        md,
        "\njitter = |gap − 20 ms| between consecutive frames as the caller received them. \
         caller→agent = from the caller's write to the agent's WebSocket read, one way, per \
         frame. round trip = caller → agent → caller minus the agent's {} ms, so it includes \
         the 20 ms playout grid. frames lost = caller frames whose echo never came back plus \
         agent audio dropped. bench CPU = the benchmark process (callers, agent, receiver) \
         sharing the same 2 cores. The simulated callers run on {} thread(s) in all (one \
         event loop).\n",
        ECHO_DELAY.as_millis(),
        rows.last().map_or(0, |r| r.sim_threads)
    );
    let _ = writeln!(md, "- webhooks: {hooks}");
    let _ = writeln!(md, "- `/call`: {call_rate}\n");
    md += &rates_table(by_rate);

    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(md, "| target | measured | |\n|---|---|---|");
    if let Some(top) = rows.iter().max_by_key(|r| r.calls) {
        let s = &top.summary;
        let n = top.calls;
        let two = Duration::from_millis(2);
        let _ = writeln!(
            md,
            "| p99 pacing jitter ≤ 2 ms at 1,000 calls | {} ms at {n} | {} |",
            ms(s.jitter_p99),
            verdict(n >= 1000 && s.jitter_p99 <= two)
        );
        let lost = top.frames_lost();
        let _ = writeln!(
            md,
            "| 0 frames lost at 1,000 calls | {lost} at {n} | {} |",
            verdict(n >= 1000 && lost == 0)
        );
        let _ = writeln!(
            md,
            "| caller→agent p99 ≤ 2 ms | {} ms at {n} | {} |",
            ms(top.one_way_p99),
            verdict(top.one_way_p99 <= two)
        );
        let _ = writeln!(
            md,
            "| ≤ 3 threads per call | {:.2} at {n} | {} |",
            top.threads_per_call(),
            verdict(top.threads_per_call() <= 3.0)
        );
        let _ = writeln!(
            md,
            "| ≤ 64 KiB RSS per call | {:.0} KiB at {n} | {} |",
            top.rss_per_call(),
            verdict(top.rss_per_call() <= 64.0)
        );
    }
    let _ = writeln!(
        md,
        "| idle RSS ≤ 4 MiB | {:.1} MiB | {} |",
        idle.rss_kib as f64 / 1024.0,
        verdict(idle.rss_kib <= 4096)
    );
    let rate: f64 = hooks
        .split(" = ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let _ = writeln!(
        md,
        "| ≥ 5,000 webhook events/s | {rate:.0}/s | {} |",
        verdict(rate >= 5000.0)
    );
    md
}

/// The side-by-side run: the same calls from callers at each rate, against the 8 kHz agent.
fn rates_table(by_rate: &[Row]) -> String {
    let mut md = String::new();
    let Some(first) = by_rate.first() else {
        return md;
    };
    let _ = writeln!(md, "## Caller rates\n");
    let _ = writeln!(
        md,
        "{} concurrent calls from callers at each rate, one rate after the other, against the \
         echo agent at 8 kHz (avr-core's default STS_SAMPLE_RATE): a wideband caller's audio is \
         resampled both ways. CPU per call = avr-core's CPU (percent of one core) over the \
         steady state, divided by the calls.\n",
        first.calls
    );
    let _ = writeln!(
        md,
        "| caller | calls | failed | avr-core CPU | CPU per call | RSS | jitter p99 | caller→agent p99 | round trip p50 | p99 | frames lost |"
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in by_rate {
        let s = &r.summary;
        let _ = writeln!(
            md,
            "| {} ({} kHz) | {} | {} | {:.0}% | {:.3}% | {:.1} MiB | {} ms | {} ms | {} ms | {} ms | {} |",
            r.kind_name(),
            khz(r.rate_hz),
            r.calls,
            s.failed,
            r.cpu,
            r.cpu_per_call(),
            r.peak.rss_kib as f64 / 1024.0,
            ms(s.jitter_p99),
            ms(r.one_way_p99),
            ms(s.round_trip_p50),
            ms(s.round_trip_p99),
            r.frames_lost(),
        );
    }
    if let [narrow, wide] = by_rate {
        let _ = writeln!(
            md,
            "\n{} callers cost {:.2}× the avr-core CPU per call of {} callers.",
            wide.kind_name(),
            wide.cpu_per_call() / narrow.cpu_per_call().max(f64::MIN_POSITIVE),
            narrow.kind_name()
        );
    }
    md.push('\n');
    md
}

/// Pipeline calls by default: the issue's 100.
const PIPELINE_CALLS: usize = 100;
/// Each pipeline call: the caller speaks at 0.5 s and 4.5 s, then listens until 10 s.
const PIPELINE_CALL: Duration = Duration::from_secs(10);
const TURN_STARTS: [Duration; 2] = [Duration::from_millis(500), Duration::from_millis(4500)];
/// A little more than the fake ASR's second of non-silent audio per transcript.
const TURN_SPEECH: Duration = Duration::from_millis(1100);
/// Short, so each answer (1.5 s of audio) is over before the caller's next turn.
const PIPELINE_ANSWER: &str = "You said: {message}. Goodbye!";
/// Calls start this far apart: setup stays out of the turns' latencies.
const PIPELINE_RAMP_STEP: Duration = Duration::from_millis(10);

/// What the pipeline section reports.
struct PipelineRun {
    calls: usize,
    failed: usize,
    turns: usize,
    /// Transcript written → first loud frame at the caller, µs, ascending.
    total: Vec<u32>,
    /// Transcript written → LLM request received by the fake.
    to_llm: Vec<u32>,
    /// LLM request received → first sentence's TTS request received.
    llm_to_tts: Vec<u32>,
    /// First TTS request received → first loud frame at the caller.
    tts_to_caller: Vec<u32>,
    cpu: f64,
    idle: Sample,
    peak: Sample,
    /// `/proc/loadavg` as the calls began: how busy the shared machine was.
    load: String,
}

/// `calls` concurrent pipeline calls against one in-process EchoPipeline answering as fast as
/// it can (no LLM gaps, no TTS first-byte delay), avr-core sampled over the calls.
fn pipeline_bench(calls: usize) -> PipelineRun {
    use avr_core::tools::demo::pipeline::{loud_arrivals, speech};
    use avr_core::tools::echo_pipeline::{EchoPipeline, PipelineEvent, PipelineOptions};
    use avr_core::tools::simulate::{run_call, AudioSource, EndMode, SimOptions};

    let services = EchoPipeline::start(
        ([127, 0, 0, 1], 0).into(),
        PipelineOptions {
            answer: Some(PIPELINE_ANSWER.into()),
            llm_gap: Duration::ZERO,
            tts_first_byte: Duration::ZERO,
            ..PipelineOptions::default()
        },
    )
    .expect("start the pipeline services");
    // Each event stamped as this process sees it (the transcript carries its own time).
    let events: Arc<Mutex<Vec<(Instant, PipelineEvent)>>> = Arc::default();
    let rx = services.events();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let collector = {
        let (events, stop) = (events.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(e) = rx.recv_timeout(Duration::from_millis(50)) {
                    let at = match &e {
                        PipelineEvent::Transcript { at, .. } => *at,
                        _ => Instant::now(),
                    };
                    lock(&events).push((at, e));
                }
            }
        })
    };
    let sink = HookSink::start(|_, _| {}).expect("start the webhook receiver");
    let dead_letters =
        std::env::temp_dir().join(format!("avr-bench-pipeline-{}.jsonl", std::process::id()));
    let [asr, llm, tts] = services.urls();
    let avr = Avr::start_with("", &sink.url(), &dead_letters, |cmd| {
        cmd.env_remove("STS_URL")
            .env("ASR_URL", &asr)
            .env("LLM_URL", &llm)
            .env("TTS_URL", &tts);
    });
    thread::sleep(Duration::from_millis(500));
    let idle = avr.sample();

    let mut audio = Vec::new();
    for at in TURN_STARTS {
        let lead = at.saturating_sub(Duration::from_millis(audio.len() as u64 / 8));
        audio.extend(speech(lead, TURN_SPEECH));
    }
    let audio = Arc::new(audio);
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let start = Instant::now();
    let callers: Vec<_> = (0..calls)
        .map(|i| {
            let mut opts = SimOptions::new(avr.addr);
            opts.audio = AudioSource::Pcm(audio.clone());
            opts.duration = PIPELINE_CALL;
            opts.end = EndMode::Close;
            let begin = start + PIPELINE_RAMP_STEP * i as u32;
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    thread::sleep(begin.saturating_duration_since(Instant::now()));
                    run_call(&opts)
                })
                .expect("start a caller")
        })
        .collect();
    // Steady state: all calls up, until shortly before the first ones end.
    let ramp = PIPELINE_RAMP_STEP * calls as u32;
    thread::sleep(ramp + Duration::from_millis(200));
    let first = avr.sample();
    let mut peak = first;
    let mut last = first;
    let window_end = start + PIPELINE_CALL - Duration::from_millis(300);
    while Instant::now() + Duration::from_millis(500) < window_end {
        thread::sleep(Duration::from_millis(500));
        last = avr.sample();
        peak.rss_kib = peak.rss_kib.max(last.rss_kib);
        peak.threads = peak.threads.max(last.threads);
    }
    let over = last.at.unwrap().duration_since(first.at.unwrap());
    let cpu = cpu_percent(last.cpu_ticks - first.cpu_ticks, over);
    let reports: Vec<_> = callers
        .into_iter()
        .map(|c| c.join().expect("a caller panicked"))
        .collect();
    thread::sleep(Duration::from_millis(500)); // the last events of the calls
    stop.store(true, Ordering::SeqCst);
    let _ = collector.join();
    drop(avr);
    drop(services);
    let _ = std::fs::remove_file(&dead_letters);

    let events = std::mem::take(&mut *lock(&events));
    let mut by_call: HashMap<String, Vec<(Instant, PipelineEvent)>> = HashMap::new();
    for (at, e) in events {
        let uuid = match &e {
            PipelineEvent::Transcript { uuid, .. }
            | PipelineEvent::LlmRequest { uuid, .. }
            | PipelineEvent::TtsRequest { uuid, .. } => uuid.clone(),
            _ => continue,
        };
        by_call.entry(uuid).or_default().push((at, e));
    }
    let mut run = PipelineRun {
        calls,
        failed: 0,
        turns: 0,
        total: Vec::new(),
        to_llm: Vec::new(),
        llm_to_tts: Vec::new(),
        tts_to_caller: Vec::new(),
        cpu,
        idle,
        peak,
        load,
    };
    let us = |a: Instant, b: Instant| b.saturating_duration_since(a).as_micros() as u32;
    for report in reports {
        let Ok(report) = report else {
            run.failed += 1;
            continue;
        };
        let mut events = by_call.remove(&report.uuid).unwrap_or_default();
        events.sort_by_key(|(at, _)| *at);
        let loud: Vec<Instant> = loud_arrivals(&report)
            .into_iter()
            .map(|d| report.started + d)
            .collect();
        let said: Vec<Instant> = events
            .iter()
            .filter(|(_, e)| matches!(e, PipelineEvent::Transcript { .. }))
            .map(|(at, _)| *at)
            .collect();
        if !report.violations.is_empty() || said.len() != TURN_STARTS.len() {
            run.failed += 1;
        }
        for &t in &said {
            let after = |want: fn(&PipelineEvent) -> bool, from: Instant| {
                events
                    .iter()
                    .find(|(at, e)| *at >= from && want(e))
                    .map(|(at, _)| *at)
            };
            let asked = after(|e| matches!(e, PipelineEvent::LlmRequest { .. }), t);
            let spoken =
                asked.and_then(|a| after(|e| matches!(e, PipelineEvent::TtsRequest { .. }), a));
            let heard = loud.iter().copied().find(|&a| a > t);
            let (Some(asked), Some(spoken), Some(heard)) = (asked, spoken, heard) else {
                continue;
            };
            run.turns += 1;
            run.total.push(us(t, heard));
            run.to_llm.push(us(t, asked));
            run.llm_to_tts.push(us(asked, spoken));
            run.tts_to_caller.push(us(spoken, heard));
        }
    }
    for v in [
        &mut run.total,
        &mut run.to_llm,
        &mut run.llm_to_tts,
        &mut run.tts_to_caller,
    ] {
        v.sort_unstable();
    }
    println!(
        "pipeline: {} calls, {} failed, {} turns measured; transcript→heard p50 {} p99 {} max {} ms; \
         avr-core CPU {:.0}%, RSS/call {:.0} KiB",
        run.calls,
        run.failed,
        run.turns,
        ms(pct(&run.total, 50.0)),
        ms(pct(&run.total, 99.0)),
        ms(pct(&run.total, 100.0)),
        run.cpu,
        run.rss_per_call()
    );
    run
}

impl PipelineRun {
    fn rss_per_call(&self) -> f64 {
        self.peak.rss_kib.saturating_sub(self.idle.rss_kib) as f64 / self.calls as f64
    }
}

/// The "## Pipeline mode" section, with its own command, date and commit: it may be
/// re-run alone (`AVR_BENCH_ONLY=pipeline`).
fn pipeline_section(r: &PipelineRun) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## Pipeline mode\n");
    let _ = writeln!(
        md,
        "- command: `AVR_BENCH_ONLY=pipeline cargo bench --bench load` (`AVR_BENCH_PIPELINE_CALLS` \
         = {}); binary {}; {}; commit {}",
        r.calls,
        binary().display(),
        avr_core::time::iso8601_millis(SystemTime::now()),
        git_commit()
    );
    let _ = writeln!(
        md,
        "- machine: {}, shared with other builds and tests while it ran (load average {} as the \
         calls began): the figures are bounds, not speeds",
        machine(),
        r.load
    );
    let _ = writeln!(
        md,
        "- setup: {} concurrent calls, started {} ms apart, against one in-process \
         `EchoPipeline` (llm_gap 0, tts_first_byte 0: the services answer as fast as they can; \
         answer \"{}\", two sentences); each call {} s, the caller speaking a faded 1 kHz tone for \
         {} ms at {} s and {} s (two turns), silent otherwise; avr-core the release build as a \
         child, webhooks to a local receiver\n",
        r.calls,
        PIPELINE_RAMP_STEP.as_millis(),
        PIPELINE_ANSWER,
        PIPELINE_CALL.as_secs(),
        TURN_SPEECH.as_millis(),
        TURN_STARTS[0].as_secs_f64(),
        TURN_STARTS[1].as_secs_f64(),
    );
    let _ = writeln!(
        md,
        "| per turn ({} turns, {} calls, {} failed) | p50 | p99 | max |",
        r.turns, r.calls, r.failed
    );
    let _ = writeln!(md, "|---|---:|---:|---:|");
    for (what, v) in [
        (
            "transcript written → first loud answer frame at the caller",
            &r.total,
        ),
        (
            "of which: transcript written → LLM request received",
            &r.to_llm,
        ),
        (
            "of which: LLM request received → first sentence's TTS request received",
            &r.llm_to_tts,
        ),
        (
            "of which: TTS request received → first loud frame at the caller",
            &r.tts_to_caller,
        ),
    ] {
        let _ = writeln!(
            md,
            "| {what} | {} ms | {} ms | {} ms |",
            ms(pct(v, 50.0)),
            ms(pct(v, 99.0)),
            ms(pct(v, 100.0))
        );
    }
    let p99 = pct(&r.total, 99.0);
    let _ = writeln!(
        md,
        "\n- avr-core over the calls: CPU {:.0}% of one core ({:.3}% per call), RSS {:.1} MiB \
         peak ({:.0} KiB per call over idle {} KiB), {} threads peak",
        r.cpu,
        r.cpu / r.calls as f64,
        r.peak.rss_kib as f64 / 1024.0,
        r.rss_per_call(),
        r.idle.rss_kib,
        r.peak.threads
    );
    let _ = writeln!(
        md,
        "- the 20 ms playout grid: agent audio leaves on the call's clock tick, so the first \
         frame of an answer waits 0–20 ms (10 ms on average) for the next tick after its audio \
         arrives; that wait is inside the last row and the total.\n\
         - the services' own time: the fake answers at once (no configured delay), so its time \
         is its socket work only, which the event stamps cannot separate from avr-core's: the \
         rows (stamped when this process saw each event, a channel hop after the fake) hold \
         both, and the total is an upper bound on avr-core's added latency.\n\
         - target (issue #12): p99 ≤ 30 ms beyond the services' own time: {} ms measured, {}",
        ms(p99),
        verdict(p99 <= Duration::from_millis(30))
    );
    md.push('\n');
    md
}

/// `old` with its "## Pipeline mode" section replaced by `section` (or inserted before
/// "## Analysis", or appended).
fn replace_section(old: &str, section: &str) -> String {
    const HEAD: &str = "## Pipeline mode\n";
    if let Some(at) = old.find(HEAD) {
        let rest = &old[at + HEAD.len()..];
        let end = rest
            .find("\n## ")
            .map_or(old.len(), |e| at + HEAD.len() + e + 1);
        return format!("{}{section}{}", &old[..at], &old[end..]);
    }
    match old.find("\n## Analysis") {
        Some(at) => format!("{}\n{section}{}", &old[..at], &old[at + 1..]),
        None => format!("{old}\n{section}"),
    }
}

/// Call setups measured per registry, one after another (each: `/call`, then the call).
const SETUPS: usize = 300;

/// A `redis-server` for the registry comparison, on a free port, killed on drop.
struct RedisChild {
    child: Child,
    url: String,
}

impl RedisChild {
    /// `None` when `redis-server` cannot be run (not installed).
    fn start() -> Option<RedisChild> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let redis = RedisChild {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }
}

impl Drop for RedisChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The "Shared registry (issue #14)" section: the same avr-core and agent, in-memory registry
/// then `REGISTRY_URL` on a local Redis.
fn registry_section() -> String {
    let mut md = String::from("## Shared registry (issue #14)\n\n");
    let Some(redis) = RedisChild::start() else {
        md += "Not measured: `redis-server` is not installed here (`apt-get install \
               redis-server`, then `AVR_BENCH_ONLY=registry cargo bench --bench load`).\n";
        return md;
    };
    let agent = EchoServer::start(([127, 0, 0, 1], 0).into(), EchoOptions::default())
        .expect("start the echo agent");
    let sink = HookSink::start(|_, _| {}).expect("start the webhook receiver");
    let dead_letters =
        std::env::temp_dir().join(format!("avr-bench-reg-{}.jsonl", std::process::id()));
    let _ = writeln!(
        md,
        "`AVR_BENCH_ONLY=registry cargo bench --bench load`, {}, commit {}. One avr-core (release \
         build), the echo agent and a webhook receiver on loopback; Redis {} on loopback, no \
         persistence. `/call`: {CALL_REQUEST_CLIENTS} clients for {CALL_REQUEST_SECONDS} s, each \
         request delivering its `call_initiated` webhook first (as the full run measures it), \
         then without webhooks (the HTTP service and the registry alone). Call setup: {SETUPS} calls one \
         after another, each after its own `/call`: from the AudioSocket UUID frame sent to the \
         agent's WebSocket handshake done (the registry is read in between).\n",
        machine(),
        git_commit(),
        redis_version(),
    );
    md += "| registry | `call_initiated` webhook | `/call` | call setup p50 | p99 | max |\n\
           |---|---|---|---|---|---|\n";
    let runs = [
        ("in-memory", None, true),
        ("Redis (`REGISTRY_URL`)", Some(&redis.url), true),
        ("in-memory", None, false),
        ("Redis (`REGISTRY_URL`)", Some(&redis.url), false),
    ];
    for (name, url, webhook) in runs {
        let avr = Avr::start_with(&agent.url(), &sink.url(), &dead_letters, |cmd| {
            if let Some(url) = url {
                cmd.env("REGISTRY_URL", url);
            }
            // Without the webhook, `/call` is the HTTP service and the registry alone.
            if !webhook {
                cmd.env_remove("WEBHOOK_URL");
            }
        });
        thread::sleep(Duration::from_millis(300));
        let rate = call_requests(avr.http);
        let setup = call_setups(&avr, &agent);
        println!("{name}: /call {rate}; setup {setup:?}");
        let (p50, p99, max) = setup;
        let _ = writeln!(
            md,
            "| {name} | {} | {rate} | {} ms | {} ms | {} ms |",
            if webhook { "yes" } else { "no" },
            ms(p50),
            ms(p99),
            ms(max)
        );
        drop(avr);
    }
    let _ = std::fs::remove_file(&dead_letters);
    md += "\nThe difference between the rows is what the shared registry adds: two round trips \
           per `/call` (`PING` before the webhook, then `SET … PX … GET`) and one `GETDEL` per \
           call, over pooled connections.\n";
    md
}

fn redis_version() -> String {
    Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|v| {
            v.split_whitespace()
                .find_map(|w| w.strip_prefix("v=").map(str::to_string))
        })
        .unwrap_or_else(|| "(version unknown)".into())
}

/// Call setup times (p50, p99, max): `/call`, then an AudioSocket connection sending the UUID,
/// timed until the agent reports the WebSocket connected; then the call is hung up.
fn call_setups(avr: &Avr, agent: &EchoServer) -> (Duration, Duration, Duration) {
    use avr_core::tools::echo_sts::EchoEvent;
    let events = agent.events();
    let mut times = Vec::with_capacity(SETUPS);
    for _ in 0..SETUPS {
        let uuid = uuid::Uuid::new_v4();
        assert!(post_call(avr.http, &uuid), "/call answered 200");
        while events.try_recv().is_ok() {}
        let mut s = TcpStream::connect(avr.addr).expect("connect to avr-core");
        let _ = s.set_nodelay(true);
        let frame = audiosocket::encode(audiosocket::KIND_UUID, uuid.as_bytes()).expect("frame");
        let t = Instant::now();
        s.write_all(&frame).expect("send the UUID");
        let deadline = t + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match events.recv_timeout(left).expect("the agent sees the call") {
                EchoEvent::Connected { .. } => break,
                _ => continue,
            }
        }
        times.push(t.elapsed().as_micros() as u32);
        let hangup = audiosocket::encode(audiosocket::KIND_HANGUP, &[]).expect("frame");
        let _ = s.write_all(&hangup);
        let mut rest = Vec::new();
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.read_to_end(&mut rest);
    }
    times.sort_unstable();
    let max = Duration::from_micros(u64::from(*times.last().unwrap_or(&0)));
    (pct(&times, 50.0), pct(&times, 99.0), max)
}

/// `old` with its "## Shared registry (issue #14)" section replaced by `section`, or inserted
/// right after the "## Analysis" section (which a full run keeps, so this section survives it).
fn replace_registry_section(old: &str, section: &str) -> String {
    const HEAD: &str = "## Shared registry (issue #14)\n";
    let end_of = |from: usize| {
        old[from..]
            .find("\n## ")
            .map_or(old.len(), |e| from + e + 1)
    };
    if let Some(at) = old.find(HEAD) {
        let end = end_of(at + HEAD.len());
        return format!("{}{section}\n{}", &old[..at], &old[end..]);
    }
    match old.find("\n## Analysis") {
        Some(at) => {
            let end = end_of(at + 1 + "## Analysis".len());
            let before = old[..end].trim_end_matches('\n');
            format!("{before}\n\n{section}\n{}", &old[end..])
        }
        None => format!("{old}\n{section}"),
    }
}
