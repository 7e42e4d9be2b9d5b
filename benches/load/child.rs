//! The avr-core child process the benchmark measures, and what /proc says of it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

use avr_core::tools::demo::loopback_command;

/// avr-core's footprint at one moment.
#[derive(Clone, Copy, Default, Debug)]
pub struct Sample {
    pub at: Option<Instant>,
    /// utime + stime, clock ticks.
    pub cpu_ticks: u64,
    pub rss_kib: u64,
    pub threads: usize,
    pub fds: usize,
    /// Threads that carry calls (`call-*`, `sts-*` while connecting, and the shared
    /// `clock-*`) per call (`call-*`), by thread name: other threads (HTTP connections,
    /// webhook workers) do not blur it.
    pub per_call_threads: f64,
}

/// `/proc/self/stat` CPU ticks of this (the benchmark's) process.
pub fn own_ticks() -> u64 {
    proc_ticks("self")
}

pub fn proc_ticks(pid: &str) -> u64 {
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
pub const TICKS_PER_SECOND: f64 = 100.0;

pub fn cpu_percent(ticks: u64, over: Duration) -> f64 {
    ticks as f64 / TICKS_PER_SECOND / over.as_secs_f64() * 100.0
}

/// The avr-core binary to measure: `AVR_BENCH_BINARY` (e.g. the static musl build that ships
/// in the packages), else this profile's build.
pub fn binary() -> std::path::PathBuf {
    std::env::var_os("AVR_BENCH_BINARY")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_avr-core").into())
}

/// The avr-core child: release build, loopback ports, webhooks to the local receiver.
pub struct Avr {
    pub child: Child,
    pub addr: SocketAddr,
    pub http: SocketAddr,
}

impl Avr {
    pub fn start(sts_url: &str, webhook_url: &str, dead_letters: &std::path::Path) -> Avr {
        Avr::start_with(sts_url, webhook_url, dead_letters, |_| {})
    }

    /// [`start`](Self::start) with the command adjusted by `adjust` (pipeline mode's
    /// variables).
    pub fn start_with(
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
        // Listening: every long-lived thread is up, and those it starts later inherit.
        if let Some(pinning) = crate::pin::current() {
            if let Err(e) = pinning.pin_process(child.id()) {
                eprintln!(
                    "warning: cannot pin avr-core to CPU {} ({e})",
                    pinning.server
                );
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn sample(&self) -> Sample {
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
pub fn settle(avr: &Avr, idle: &Sample) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while avr.sample().threads > idle.threads && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
    }
}
