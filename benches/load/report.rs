//! The Markdown that `BENCHMARKS.md` gets from a run.

use std::fmt::Write as _;

use std::process::Command;
use std::time::{Duration, SystemTime};

use avr_core::tools::rates::khz;

use crate::child::{binary, Sample};
use crate::steps::Row;
use crate::tap::ms;
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
    // Not `available_parallelism`: that counts the CPUs this (pinned) process may use.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    format!(
        "{cores} CPUs, {cpu}, {:.1} GiB RAM, Linux {}",
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

/// The floor's row at `calls`, if it ran that step.
fn floor_at(floor: &[Row], calls: usize) -> Option<&Row> {
    floor.iter().find(|f| f.calls == calls)
}

/// avr-core's CPU per call over the floor's at the same step.
pub fn ratio(row: &Row, floor: &[Row]) -> Option<f64> {
    let f = floor_at(floor, row.calls)?;
    (f.cpu_per_call() > 0.0).then(|| row.cpu_per_call() / f.cpu_per_call())
}

/// The largest step that held the quality bar, with every smaller step holding it too.
pub fn held_up_to(rows: &[Row]) -> Option<&Row> {
    rows.iter().take_while(|r| r.holds_bar()).last()
}

/// What one core carries before it falls behind: the largest step where it and every smaller
/// step kept up (`Row::carried`), whatever the jitter.
pub fn carried_up_to(rows: &[Row]) -> Option<&Row> {
    rows.iter().take_while(|r| r.carried()).last()
}

/// A row's verdict: the quality bar held; carried (nothing lost, the bar missed); or missed.
fn bar_text(row: &Row) -> &'static str {
    if row.holds_bar() {
        "held"
    } else if row.carried() {
        "carried"
    } else {
        "missed"
    }
}

#[allow(clippy::too_many_arguments)]
pub fn report(
    seconds: f64,
    idle: &Sample,
    after: &Sample,
    rows: &[Row],
    floor: &[Row],
    spread: Option<&Row>,
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
    let pinning = match crate::pin::current() {
        Some(p) => format!(
            "avr-core (and, in its own steps, the floor bridge) pinned to CPU {}; the harness \
             (callers, echo agent, webhook receiver: this benchmark's process) to CPU {}: every \
             avr-core figure is one core's",
            p.server,
            p.harness
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
        None => "not pinned: avr-core and the harness share every CPU".into(),
    };
    let rt = match crate::pin::CALLERS_RT.get() {
        Some(Ok(())) => "the callers' event-loop thread at SCHED_FIFO priority 1, so the echo \
                         agent sharing its CPU cannot make the callers' sends late"
            .to_string(),
        Some(Err(why)) => format!("the callers at normal priority ({why})"),
        None => "no step ran".into(),
    };
    let _ = writeln!(md, "- pinning: {pinning}; {rt}");
    let _ = writeln!(
        md,
        "- setup: avr-core release build as a child process; echo agent (delay {} ms, \
         transcripts on, one event-loop thread), simulated callers (one event-loop thread) and \
         webhook receiver in the benchmark process; all on loopback. Each call sends \
         {seconds:.0} s of frame-numbered slin audio, then silence until its echo is back \
         (+1 s), then closes. Starts are spread 2 ms apart (at most 2 s). CPU/RSS/threads/fds \
         are avr-core's, from /proc, over the steady state (all calls up); RSS and threads are \
         the peak.",
        ECHO_DELAY.as_millis()
    );
    let _ = writeln!(
        md,
        "- idle avr-core: RSS {} KiB, {} threads, {} fds; after the run: RSS {} KiB, {} threads, {} fds\n",
        idle.rss_kib, idle.threads, idle.fds, after.rss_kib, after.threads, after.fds
    );
    match held_up_to(rows) {
        Some(top) => {
            let _ = writeln!(
                md,
                "**Calls per core at the quality bar: {}** (the largest step where it and every \
                 smaller step held jitter p99 ≤ 2 ms, 0 frames lost, caller→agent p99 ≤ 2 ms; \
                 steps: {}).\n",
                top.calls,
                rows.iter()
                    .map(|r| r.calls.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        None => {
            let _ = writeln!(
                md,
                "**No step held the strict quality bar** (jitter p99 ≤ 2 ms, 0 frames lost, \
                 caller→agent p99 ≤ 2 ms), not even {} call(s): see the floor's own figures \
                 below, this host's noise.\n",
                rows.first().map_or(0, |r| r.calls)
            );
        }
    }
    let _ = writeln!(
        md,
        "**Calls one core carries: {}** (the largest step where it and every smaller step had \
         no call failed, no frame lost and caller→agent p99 within one 20 ms frame, whatever \
         the jitter; past it avr-core falls behind: MAX_CALLS belongs below it).\n",
        carried_up_to(rows).map_or(0, |r| r.calls)
    );
    let _ = writeln!(md, "### What the callers and the agent got\n");
    let _ = writeln!(
        md,
        "| calls | failed | jitter p99 | jitter max | caller→agent p50 | p99 | max | round trip p50 | p99 | frames lost | bar | RSS | RSS/call | threads | threads/call | fds | webhooks |"
    );
    let _ = writeln!(
        md,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let s = &r.summary;
        let _ = writeln!(
            md,
            "| {} | {} | {} ms | {} ms | {} ms | {} ms | {} ms | {} ms | {} ms | {} | {} | {:.1} MiB | {:.0} KiB | {} | {:.2} | {} | {} |",
            r.calls,
            s.failed,
            ms(s.jitter_p99),
            ms(s.jitter_max),
            ms(r.one_way_p50),
            ms(r.one_way_p99),
            ms(r.one_way_max),
            ms(s.round_trip_p50),
            ms(s.round_trip_p99),
            r.frames_lost(),
            bar_text(r),
            r.peak.rss_kib as f64 / 1024.0,
            r.rss_per_call(),
            r.peak.threads,
            r.threads_per_call(),
            r.peak.fds,
            r.hooks,
        );
    }
    let _ = writeln!(
        md,
        "\njitter = |gap − 20 ms| between consecutive frames as the caller received them. \
         caller→agent = from the caller's write to the agent's WebSocket read, one way, per \
         frame. round trip = caller → agent → caller minus the agent's {} ms, so it includes \
         the 20 ms playout grid. frames lost = caller frames whose echo never came back plus \
         agent audio dropped. bar = the quality bar above: held; carried (kept up: nothing lost, \
         no call failed, caller→agent p99 within 20 ms, but over the 2 ms bar); or missed.\n",
        ECHO_DELAY.as_millis(),
    );
    let _ = writeln!(md, "### What it cost, beside the floor and the harness\n");
    let _ = writeln!(
        md,
        "| calls | avr-core CPU | per call | floor CPU | floor per call | ratio | floor bar | harness CPU | callers | agent | harness send lateness p50 | p99 | max | steal (server CPU / harness CPU) |"
    );
    let _ = writeln!(
        md,
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let s = &r.summary;
        let f = floor_at(floor, r.calls);
        let _ = writeln!(
            md,
            "| {} | {:.1}% | {:.3}% | {} | {} | {} | {} | {:.0}% | {:.0}% | {:.0}% | {} ms | {} ms | {} ms | {:.1}% / {:.1}% |",
            r.calls,
            r.cpu,
            r.cpu_per_call(),
            f.map_or("–".into(), |f| format!("{:.1}%", f.cpu)),
            f.map_or("–".into(), |f| format!("{:.3}%", f.cpu_per_call())),
            ratio(r, floor).map_or("–".into(), |x| format!("{x:.2}×")),
            f.map_or("–", bar_text),
            r.harness.process,
            r.harness.callers,
            r.harness.agent,
            ms(s.send_lateness_p50),
            ms(s.send_lateness_p99),
            ms(s.send_lateness_max),
            r.harness.steal_server,
            r.harness.steal_harness,
        );
    }
    let _ = writeln!(
        md,
        "\nCPU = percent of one core over the steady state. floor = the reference bridge built \
         into the benchmark (benches/load/floor.rs: one thread, epoll, the same messages — \
         AudioSocket frame in → JSON/base64 WebSocket message out, WebSocket message in → 20 ms \
         paced frame out — no webhooks, no logs), run through the same steps on the same CPU \
         while avr-core idles: what this work costs at the least on this kernel. ratio = \
         avr-core's CPU per call over the floor's. harness = this benchmark's process (callers \
         + agent + webhook receiver + sampling); callers and agent are their event-loop threads. \
         harness send lateness = how late the callers' own sends left against their 20 ms grid; \
         above {} ms at p99 the harness, not the server, blurs the figures. steal = the share \
         of the steady state the hypervisor ran something else on that CPU (/proc/stat): a \
         frame late for a reason no process here can see.\n",
        ms(crate::steps::HARNESS_LATE),
    );
    if let Some(r) = spread {
        let s = &r.summary;
        let _ = writeln!(
            md,
            "**On every CPU**: one core did not hold {} calls, so the same step ran again with \
             avr-core free to use every CPU (the harness still on its own, so they share one): \
             {} failed, {} frames lost, jitter p99 {} ms (max {} ms), caller→agent p99 {} ms, \
             round trip p50 {} ms p99 {} ms; avr-core CPU {:.0}% ({:.3}% per call); harness \
             send lateness p99 {} ms; steal {:.1}% / {:.1}%.\n",
            r.calls,
            s.failed,
            r.frames_lost(),
            ms(s.jitter_p99),
            ms(s.jitter_max),
            ms(r.one_way_p99),
            ms(s.round_trip_p50),
            ms(s.round_trip_p99),
            r.cpu,
            r.cpu_per_call(),
            ms(s.send_lateness_p99),
            r.harness.steal_server,
            r.harness.steal_harness,
        );
    }
    let _ = writeln!(md, "- webhooks: {hooks}");
    let _ = writeln!(md, "- `/call`: {call_rate}\n");
    md += &rates_table(by_rate);

    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(md, "| target | measured | |\n|---|---|---|");
    let two = Duration::from_millis(2);
    if let Some(top) = rows.iter().max_by_key(|r| r.calls) {
        let s = &top.summary;
        let n = top.calls;
        let lost = top.frames_lost();
        let _ = writeln!(
            md,
            "| 0 frames lost at 1,000 calls | {lost} at {n} on one core{} | {} |",
            spread.map_or(String::new(), |r| format!(
                "; {} at {} on every CPU",
                r.frames_lost(),
                r.calls
            )),
            verdict(n >= 1000 && (lost == 0 || spread.is_some_and(|r| r.frames_lost() == 0)))
        );
        let _ = writeln!(
            md,
            "| the harness is not the limit at 1,000 calls (its send lateness p99 ≤ {} ms) | {} ms at {n} | {} |",
            ms(crate::steps::HARNESS_LATE),
            ms(s.send_lateness_p99),
            verdict(n >= 1000 && !top.harness_late())
        );
        let held = held_up_to(rows).map_or(0, |r| r.calls);
        let worst = rows
            .iter()
            .filter(|r| r.calls <= held)
            .map(|r| r.summary.jitter_p99)
            .max()
            .unwrap_or_default();
        let _ = writeln!(
            md,
            "| jitter p99 ≤ 2 ms up to the largest step avr-core holds on one core | {} ms at most, up to {held} | {} |",
            ms(worst),
            verdict(held > 0 && worst <= two)
        );
        let ratios: Vec<(usize, f64)> = rows
            .iter()
            .filter(|r| r.calls >= 100 && r.carried())
            .filter_map(|r| Some((r.calls, ratio(r, floor)?)))
            .collect();
        let worst_ratio = ratios.iter().map(|&(_, x)| x).fold(0.0, f64::max);
        let _ = writeln!(
            md,
            "| CPU per call ≤ 1.5× the floor's (steps of 100 calls and more that avr-core carried) | {} | {} |",
            if ratios.is_empty() {
                "not measured".to_string()
            } else {
                ratios
                    .iter()
                    .map(|(c, x)| format!("{x:.2}× at {c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            verdict(!ratios.is_empty() && worst_ratio <= 1.5)
        );
        let _ = writeln!(
            md,
            "| ≤ 3 threads per call | {:.2} at {n} | {} |",
            top.threads_per_call(),
            verdict(top.threads_per_call() <= 3.0)
        );
        // Memory per call where avr-core keeps up: past it, agent audio backs up by design
        // of the overload, not of a call.
        if let Some(kept) = carried_up_to(rows) {
            let _ = writeln!(
                md,
                "| ≤ 64 KiB RSS per call (largest step carried) | {:.0} KiB at {} | {} |",
                kept.rss_per_call(),
                kept.calls,
                verdict(kept.rss_per_call() <= 64.0)
            );
        }
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
