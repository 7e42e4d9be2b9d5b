//! The shared registry (issue #14): `/call` and call setup, in-memory against Redis.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

use avr_core::proto::audiosocket;
use avr_core::tools::demo::HookSink;
use avr_core::tools::echo_sts::{EchoOptions, EchoServer};

use crate::child::Avr;
use crate::rates::{call_requests, post_call};
use crate::report::{git_commit, machine};
use crate::tap::{ms, pct};
use crate::{CALL_REQUEST_CLIENTS, CALL_REQUEST_SECONDS};

/// Call setups measured per registry, one after another (each: `/call`, then the call).
pub const SETUPS: usize = 300;

/// A `redis-server` for the registry comparison, on a free port, killed on drop.
pub struct RedisChild {
    pub child: Child,
    pub url: String,
}

impl RedisChild {
    /// `None` when `redis-server` cannot be run (not installed).
    pub fn start() -> Option<RedisChild> {
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
pub fn registry_section() -> String {
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

pub fn redis_version() -> String {
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
pub fn call_setups(avr: &Avr, agent: &EchoServer) -> (Duration, Duration, Duration) {
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
pub fn replace_registry_section(old: &str, section: &str) -> String {
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
