//! The load benchmark: `cargo bench --bench load`. Writes `BENCHMARKS.md`.
//!
//! Starts the release build of avr-core as a child process, and in this process the echo
//! agent (with an audio tap), the simulated callers (`simulate` load mode) and a webhook
//! receiver, all on loopback. Agent and callers share this process so the agent stamps each
//! caller frame's arrival on the same clock the caller stamped its send: caller→agent latency
//! is one-way, matched frame by frame through the number marked in the samples.
//!
//! Pinned (issue #15, `pin.rs`): avr-core gets one CPU to itself and this process (the
//! harness) the others, so a figure reads "avr-core on one core"; the callers' event loop runs
//! at real-time priority so the agent sharing its CPU cannot make the reference sends late.
//!
//! Steps through 1, 50, 100, 200, 300, 400, 500, 750 and 1,000 concurrent calls (all of them,
//! failing or not), sampling avr-core's CPU, RSS, threads and fds from /proc and the
//! harness's threads from /proc/self/task; the largest step that holds the quality bar is
//! "calls per core". Then the same steps through the floor (`floor.rs`), a minimal reference
//! bridge on the CPU avr-core had: avr-core's CPU per call is printed as a ratio to it. Then
//! the same number of calls (250) from slin (8 kHz) and from slin16 (16 kHz) callers, side by
//! side, so the cost of resampling a wideband caller to the 8 kHz agent shows as CPU per call;
//! then webhook deliveries per second and `/call` requests per second.
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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use avr_core::tools::demo::HookSink;
use avr_core::tools::echo_sts::{EchoOptions, EchoServer};
use avr_core::tools::rates::{khz, SLIN_RATE_HZ};

mod child;
mod floor;
mod pin;
mod pipeline;
mod rates;
mod registry;
mod report;
mod steps;
mod tap;

use child::{settle, Avr, Sample};
use floor::Floor;
use pin::Pinning;
use pipeline::{pipeline_bench, pipeline_section, replace_section, PIPELINE_CALLS};
use rates::{call_requests, webhook_rate};
use registry::{registry_section, replace_registry_section};
use report::report;
use steps::step;
use steps::Server;
use tap::Tap;

pub const ECHO_DELAY: Duration = Duration::from_millis(200);
/// Up to the 1,000 concurrent calls of the targets, finer where one core runs out.
pub const STEPS: [usize; 9] = [1, 50, 100, 200, 300, 400, 500, 750, 1000];
/// The side-by-side run: 250 calls, where the steps show avr-core still well inside one core,
/// so a difference in CPU is the callers' rate and not saturation.
pub const RATE_CALLS: usize = 250;
/// The callers of the side-by-side run: slin, then slin16 (`Dial(…/c(slin16))`, the common
/// wideband case), both against the default 8 kHz agent.
pub const CALLER_RATES: [u32; 2] = [SLIN_RATE_HZ, 16_000];
pub const WEBHOOK_EVENTS: usize = 50_000;
pub const CALL_REQUEST_SECONDS: u64 = 5;
pub const CALL_REQUEST_CLIENTS: usize = 8;

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not: then do nothing.
    if !std::env::args().any(|a| a == "--bench") {
        println!("the load benchmark runs with `cargo bench --bench load`");
        return;
    }
    // First, before any thread starts: every thread of the harness inherits its CPUs.
    match Pinning::choose() {
        Ok(pinning) => match pinning.pin_harness() {
            Ok(()) => {
                println!("pinning: {}", pinning.describe());
                pin::set(pinning);
            }
            Err(e) => eprintln!("warning: cannot pin the harness ({e}); not pinning"),
        },
        Err(why) => println!("pinning: off ({why})"),
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
    if std::env::var("AVR_BENCH_ONLY").is_ok_and(|v| v == "floor") {
        floor::floor_bench();
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

    // One step of `calls` callers at `rate_hz` through avr-core.
    let avr_step = |calls, rate_hz| {
        step(
            Server::Avr(&avr),
            &tap,
            &hooks_seen,
            calls,
            rate_hz,
            seconds,
            &idle,
        )
    };
    let mut rows = Vec::new();
    for &calls in &steps {
        let row = avr_step(calls, SLIN_RATE_HZ);
        println!("{}", row.line());
        // Every step runs, failing or not: the 1,000-call step shows whether the harness,
        // not the server, is the limit there.
        rows.push(row);
        settle(&avr, &idle);
    }
    settle(&avr, &idle);

    // Whether the largest step fits this machine at all: avr-core on every CPU (the
    // harness keeps its own), when one core did not hold it.
    let mut spread = None;
    if let (Some(pinning), Some(top)) = (pin::current(), rows.last()) {
        if !top.holds_bar() {
            let calls = top.calls;
            match pinning.spread_process(avr.pid()) {
                Ok(()) => {
                    let row = avr_step(calls, SLIN_RATE_HZ);
                    println!("on every CPU: {}", row.line());
                    spread = Some(row);
                }
                Err(e) => eprintln!("warning: cannot spread avr-core over every CPU ({e})"),
            }
            settle(&avr, &idle);
            if let Err(e) = pinning.pin_process(avr.pid()) {
                eprintln!(
                    "warning: cannot pin avr-core again ({e}); later figures are not one core's"
                );
            }
        }
    }

    // The floor (issue #15): the same steps through the reference bridge, on the CPU
    // avr-core had, while avr-core idles.
    let mut floor_rows = Vec::new();
    match Floor::start(&agent.url(), pin::current().map(|p| p.server)) {
        Ok(floor) => {
            for &calls in steps.iter().filter(|&&c| rows.iter().any(|r| r.calls == c)) {
                let row = step(
                    Server::Floor(&floor),
                    &tap,
                    &hooks_seen,
                    calls,
                    SLIN_RATE_HZ,
                    seconds,
                    &Sample::default(),
                );
                println!("floor {}", row.line());
                floor_rows.push(row);
            }
        }
        Err(e) => eprintln!("warning: cannot start the floor bridge ({e}); no ratio"),
    }
    settle(&avr, &idle);

    // Not stopped by a failed step: the side-by-side count is below where calls fail.
    let rate_calls: usize = env_or("AVR_BENCH_RATE_CALLS", RATE_CALLS);
    let mut by_rate = Vec::new();
    for rate_hz in CALLER_RATES.into_iter().filter(|_| rate_calls > 0) {
        let row = avr_step(rate_calls, rate_hz);
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

    let mut md = report(
        seconds,
        &idle,
        &after,
        &rows,
        &floor_rows,
        spread.as_ref(),
        &by_rate,
        &hooks,
        &call_rate,
    );
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

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// 1,000 calls need ~4,000 descriptors in avr-core and more here; the child inherits this.
pub fn raise_fd_limit() -> std::io::Result<()> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit)?;
    }
    Ok(())
}
