//! Which CPU runs what (issue #15): avr-core alone on one CPU, the harness (callers, echo
//! agent, webhook receiver) on the others, so a figure reads "avr-core on one core" and the
//! harness cannot steal its time. `AVR_BENCH_PIN=0` turns it off (then both share all CPUs,
//! as before).

use std::io;
use std::sync::OnceLock;

use rustix::process::Pid;
use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};

/// Where the measured server runs, and where everything else does.
#[derive(Clone, Debug)]
pub struct Pinning {
    /// The CPU avr-core (or the floor bridge) gets to itself.
    pub server: usize,
    /// The CPUs of the benchmark process's own threads.
    pub harness: Vec<usize>,
}

impl Pinning {
    /// The first CPU this process may run on for the server, the rest for the harness; an
    /// error saying why not when there is only one, or pinning is turned off.
    pub fn choose() -> Result<Pinning, String> {
        if std::env::var("AVR_BENCH_PIN").is_ok_and(|v| v == "0") {
            return Err("AVR_BENCH_PIN=0".into());
        }
        let allowed = sched_getaffinity(None).map_err(|e| format!("sched_getaffinity: {e}"))?;
        let cpus: Vec<usize> = (0..CpuSet::MAX_CPU)
            .filter(|&c| allowed.is_set(c))
            .collect();
        match cpus.split_first() {
            Some((&server, harness)) if !harness.is_empty() => Ok(Pinning {
                server,
                harness: harness.to_vec(),
            }),
            _ => Err(format!("only {} CPU(s) to run on", cpus.len())),
        }
    }

    /// Pins the calling thread to the harness CPUs: call it first in `main`, so every
    /// thread started later (and every child, until it is pinned itself) inherits them.
    pub fn pin_harness(&self) -> io::Result<()> {
        Ok(sched_setaffinity(None, &set_of(&self.harness))?)
    }

    /// Pins every thread of process `pid` to the server's CPU. Threads it starts later
    /// inherit their creator's CPU, so pinning the threads alive once it listens is enough.
    pub fn pin_process(&self, pid: u32) -> io::Result<()> {
        set_process(pid, &set_of(&[self.server]))
    }

    /// Lets every thread of process `pid` run on every CPU, the harness's too: the one
    /// step that asks whether 1,000 calls fit this machine at all, not one core.
    pub fn spread_process(&self, pid: u32) -> io::Result<()> {
        let mut all = self.harness.clone();
        all.push(self.server);
        set_process(pid, &set_of(&all))
    }

    /// "avr-core on CPU 0, the harness on CPU 1".
    pub fn describe(&self) -> String {
        let list: Vec<String> = self.harness.iter().map(usize::to_string).collect();
        format!(
            "the server pinned to CPU {}, the harness to CPU {}",
            self.server,
            list.join(",")
        )
    }
}

/// Pins the calling thread to `cpu` (the floor bridge's own thread, on the server's CPU).
pub fn pin_thread(cpu: usize) -> io::Result<()> {
    Ok(sched_setaffinity(None, &set_of(&[cpu]))?)
}

/// Sets the CPUs of every thread `pid` has now.
fn set_process(pid: u32, set: &CpuSet) -> io::Result<()> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid = task?.file_name().to_string_lossy().parse::<i32>().ok();
        if let Some(tid) = tid.and_then(Pid::from_raw) {
            sched_setaffinity(Some(tid), set)?;
        }
    }
    Ok(())
}

fn set_of(cpus: &[usize]) -> CpuSet {
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu);
    }
    set
}

/// The pinning `main` chose, for every avr-core child started later.
static PINNING: OnceLock<Pinning> = OnceLock::new();

pub fn set(pinning: Pinning) {
    let _ = PINNING.set(pinning);
}

/// The pinning in force, if any.
pub fn current() -> Option<&'static Pinning> {
    PINNING.get()
}

/// Puts thread `tid` of this process at `SCHED_FIFO` priority 1 (`chrt`), so the callers'
/// 20 ms grid is not held up by the echo agent sharing their CPU: their sends are the clock
/// every latency is measured from. `AVR_BENCH_RT=0` turns it off; without the privilege the
/// run goes on at normal priority, said once.
pub fn callers_realtime(tid: i32) -> Result<(), String> {
    if std::env::var("AVR_BENCH_RT").is_ok_and(|v| v == "0") {
        return Err("AVR_BENCH_RT=0".into());
    }
    let out = std::process::Command::new("chrt")
        .args(["-f", "-p", "1", &tid.to_string()])
        .output()
        .map_err(|e| format!("cannot run chrt: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Whether the callers ran at real-time priority (the last step's answer), for the report.
pub static CALLERS_RT: OnceLock<Result<(), String>> = OnceLock::new();
