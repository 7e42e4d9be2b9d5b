//! The Markdown that `BENCHMARKS.md` gets from a run.

use std::fmt::Write as _;

use std::process::Command;
use std::thread;
use std::time::{Duration, SystemTime};

use avr_core::tools::rates::khz;

use crate::child::{binary, Sample};
use crate::steps::{ms, Row};
use crate::ECHO_DELAY;

pub fn machine() -> String {
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

pub fn git_commit() -> String {
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

pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

pub fn report(
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
pub fn rates_table(by_rate: &[Row]) -> String {
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
