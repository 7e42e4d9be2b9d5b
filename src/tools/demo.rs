//! `avr-core demo`: the whole product on one screen, for a newcomer's first command.
//!
//! Starts the echo agent and a webhook printer in this process, and avr-core itself as a
//! child process (this same executable, configured through environment variables), all on
//! ephemeral loopback ports. Then it posts `/call`, places one call with a built-in melody and
//! a DTMF digit, and prints a timeline gathered from every side: the caller, avr-core's log,
//! the agent and the webhook receiver.
//!
//! Why a child process rather than the server in-process: the demo then runs exactly what an
//! operator runs (configuration from the environment, the real log lines such as
//! `Audio codec detected`), and the child is killed and reaped before the demo exits.
//!
//! By default the caller and the agent are 8 kHz, as `AudioSocket()` and the upstream agents
//! are; `--rate` makes the caller wideband (a slin16 caller, …) and `--agent-rate` sets the
//! agent's rate (avr-core's `STS_SAMPLE_RATE`, and the echo agent's `--rate`), so the demo
//! shows avr-core resampling between the two.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde_json::Value;

use crate::cli::{is_help, Flags, Parsed, UsageError};
use crate::proto::audiosocket;
use crate::sys::lock;
use crate::tools::echo_sts::{EchoEvent, EchoOptions, EchoServer};
use crate::tools::http_sink::{HttpSink, Reply};
use crate::tools::rates::{self, khz, SLIN_RATE_HZ};
use crate::tools::simulate::{self, AudioSource, EndMode, SimOptions};

pub mod pipeline;

/// How long the caller sends the melody (then a short tail, so its echo comes back).
const MELODY: Duration = Duration::from_millis(3000);
const CALL_SECONDS: Duration = Duration::from_millis(3600);
const DTMF_AT: Duration = Duration::from_millis(1500);
const DTMF_DIGIT: char = '5';
/// avr-core must be listening within this; a cold start takes milliseconds.
const START_LIMIT: Duration = Duration::from_secs(5);
/// After the call: how long to wait for `call_ended` to reach the webhook printer.
const SETTLE_LIMIT: Duration = Duration::from_secs(3);

pub const USAGE: &str = "\
avr-core demo — run avr-core, the echo agent and a webhook printer on loopback, place one call
with a built-in melody and a DTMF digit, and print what happened, in order

USAGE:
    avr-core demo [--rate HZ] [--agent-rate HZ]
    avr-core demo --pipeline

    --rate HZ          the caller's rate: 8000 (default), or a wideband AudioSocket rate such
                       as 16000, as Dial(AudioSocket/.../c(slin16)) sends (12000 to 192000)
    --agent-rate HZ    the agent's rate, avr-core's STS_SAMPLE_RATE (default 8000, 8000 to
                       192000); the echo agent speaks it and avr-core resamples between
    --pipeline         pipeline mode instead: the built-in ASR, LLM and TTS services
                       (echo-pipeline) and avr-core with ASR_URL, LLM_URL, TTS_URL and a
                       SYSTEM_MESSAGE greeting; the caller speaks (a tone), then listens. An
                       8 kHz call: not combined with --rate or --agent-rate

Takes about 5 seconds (--pipeline: 7); nothing is left running. Exit status 0 when every step was seen, 1 (with
the reason) otherwise.
";

/// The rates of the demo's call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoOptions {
    /// The caller's AudioSocket rate (`simulate --rate`).
    pub caller_rate_hz: u32,
    /// The agent's rate: avr-core's `STS_SAMPLE_RATE` and the echo agent's.
    pub agent_rate_hz: u32,
    /// Pipeline mode (ASR, LLM, TTS) instead of an STS agent; always 8 kHz.
    pub pipeline: bool,
}

impl Default for DemoOptions {
    /// 8 kHz both sides: the demo as it has always run.
    fn default() -> Self {
        DemoOptions {
            caller_rate_hz: SLIN_RATE_HZ,
            agent_rate_hz: SLIN_RATE_HZ,
            pipeline: false,
        }
    }
}

/// One timeline entry.
struct Line {
    at: Instant,
    who: &'static str,
    text: String,
}

/// Where every source posts its lines; they are sorted by time and printed at the end.
#[derive(Clone)]
struct Timeline(Sender<Line>);

impl Timeline {
    fn at(&self, at: Instant, who: &'static str, text: impl Into<String>) {
        let _ = self.0.send(Line {
            at,
            who,
            text: text.into(),
        });
    }

    fn now(&self, who: &'static str, text: impl Into<String>) {
        self.at(Instant::now(), who, text);
    }
}

/// The flags after `demo`.
pub fn parse_args(args: &[String]) -> Result<Parsed<DemoOptions>, UsageError> {
    let mut opts = DemoOptions::default();
    let mut flags = Flags::new(args);
    while let Some(flag) = flags.next_arg() {
        match flag {
            _ if is_help(flag) => return Ok(Parsed::Help),
            "--rate" => opts.caller_rate_hz = rates::caller_rate(&mut flags)?,
            "--agent-rate" => opts.agent_rate_hz = rates::agent_rate(&mut flags)?,
            "--pipeline" => opts.pipeline = true,
            _ => {
                return Err(
                    flags.unknown("the demo takes --rate and --agent-rate, or --pipeline alone")
                )
            }
        }
    }
    // The pipeline services speak 8 kHz (the upstream connectors' rate): a rate option would
    // be silently ignored, so it is refused.
    let rated = opts.caller_rate_hz != SLIN_RATE_HZ || opts.agent_rate_hz != SLIN_RATE_HZ;
    if opts.pipeline && rated {
        return Err(UsageError::Unknown {
            arg: "--pipeline".into(),
            hint: "the pipeline demo is an 8 kHz call; leave out --rate and --agent-rate",
        });
    }
    Ok(Parsed::Run(opts))
}

/// What the sources saw that the verdict needs.
#[derive(Default)]
struct Seen {
    codec: bool,
    init: bool,
    transcripts: usize,
    hooks: Vec<String>,
}

/// Runs the demo and prints its timeline; the error says which steps were not seen.
pub fn run(opts: DemoOptions) -> Result<(), String> {
    if opts.pipeline {
        return pipeline::run();
    }
    let t0 = Instant::now();
    let (tx, lines) = crossbeam_channel::unbounded();
    let timeline = Timeline(tx);
    let seen = Arc::new(Mutex::new(Seen::default()));

    let agent_rate = opts.agent_rate_hz;
    let agent = EchoServer::start_at(
        ([127, 0, 0, 1], 0).into(),
        EchoOptions::default(),
        agent_rate,
        None,
    )
    .map_err(|e| format!("cannot start the echo agent: {e}"))?;
    let speaks = match agent_rate {
        SLIN_RATE_HZ => String::new(),
        rate => format!(" (its audio at {} kHz)", khz(rate)),
    };
    timeline.now(
        "demo",
        format!("echo agent listening on {}{speaks}", agent.url()),
    );
    watch_agent(agent.events(), timeline.clone(), seen.clone());

    let hooks = print_hooks(&timeline, &seen)?;

    let dead_letters =
        std::env::temp_dir().join(format!("avr-core-demo-{}.jsonl", std::process::id()));
    let mut cmd = loopback_command(&this_exe()?, &agent.url(), &hooks.url(), &dead_letters);
    if agent_rate != SLIN_RATE_HZ {
        cmd.env("STS_SAMPLE_RATE", agent_rate.to_string());
    }
    let server = Server::start(cmd, &timeline, &seen)?;
    let result = call(&server, opts.caller_rate_hz, &timeline, &seen);
    let _ = std::fs::remove_file(&dead_letters);
    drop(server); // kills and reaps avr-core before printing: nothing is left behind

    let mut all: Vec<Line> = lines.try_iter().collect();
    all.sort_by_key(|l| l.at);
    println!("avr-core demo: one call through avr-core, the echo agent and webhooks\n");
    for l in &all {
        let t = l.at.saturating_duration_since(t0).as_secs_f64();
        println!("{t:>7.3} s  {:<8} {}", l.who, l.text);
    }
    println!();
    let summary = result?;
    print!("{summary}");
    let seen = lock(&seen);
    let mut missing = Vec::new();
    // Detection tells slin from G.711 behind the 0x10 label (docs/audiosocket.md §10.3); a
    // wideband kind names its codec, so only an 8 kHz caller has one to detect.
    if !seen.codec && opts.caller_rate_hz == SLIN_RATE_HZ {
        missing.push("avr-core did not log the detected codec".to_string());
    }
    if !seen.init {
        missing.push("the agent never received init".to_string());
    }
    if seen.transcripts == 0 {
        missing.push("avr-core logged no transcript".to_string());
    }
    for kind in [
        "call_initiated",
        "call_started",
        "transcription",
        "dtmf_digit",
        "call_ended",
    ] {
        if !seen.hooks.iter().any(|k| k == kind) {
            missing.push(format!("no {kind} webhook arrived"));
        }
    }
    if missing.is_empty() {
        println!("demo OK: every step was seen");
        Ok(())
    } else {
        Err(missing.join("; "))
    }
}

/// Posts `/call`, places the call at `rate_hz` and returns the pacing summary (or why the call
/// failed).
fn call(
    server: &Server,
    rate_hz: u32,
    timeline: &Timeline,
    seen: &Mutex<Seen>,
) -> Result<String, String> {
    let uuid = uuid::Uuid::new_v4();
    let uuid_text = uuid.hyphenated().to_string();
    let body =
        format!(r#"{{"uuid":"{uuid_text}","payload":{{"from":"+15550100","campaign":"demo"}}}}"#);
    timeline.now("caller", format!("POST /call {body}"));
    let answer = post(server.http, "/call", &body)
        .map_err(|e| format!("POST /call to avr-core at {}: {e}", server.http))?;
    timeline.now("caller", format!("/call answered: {answer}"));

    let mut opts = SimOptions::new(server.audiosocket);
    opts.uuid = *uuid.as_bytes();
    opts.rate_hz = rate_hz;
    opts.audio = AudioSource::Pcm(Arc::new(melody(MELODY, rate_hz)));
    opts.duration = CALL_SECONDS;
    opts.dtmf = vec![(DTMF_AT, DTMF_DIGIT)];
    opts.end = EndMode::Close;
    let report = simulate::run_call(&opts).map_err(|e| e.to_string())?;
    let t = |d: Duration| report.started + d;
    let caller = match audiosocket::audio_kind(rate_hz) {
        Some(kind) if rate_hz != SLIN_RATE_HZ => format!(
            "; a {} kHz caller (kind 0x{kind:02x}, {})",
            khz(rate_hz),
            audiosocket::kind_name(kind)
        ),
        _ => String::new(),
    };
    timeline.at(
        report.started,
        "caller",
        format!(
            "connected to {}, sent the UUID {uuid_text}{caller}",
            server.audiosocket
        ),
    );
    if let Some(first) = report.time_to_first_frame {
        timeline.at(
            t(first),
            "caller",
            "first audio frame from avr-core (silence until the agent speaks)",
        );
    }
    timeline.at(t(DTMF_AT), "caller", format!("pressed DTMF {DTMF_DIGIT}"));
    let echo = first_sound(&report.received, rate_hz).and_then(|i| report.arrivals.get(i).copied());
    if let Some(at) = echo {
        timeline.at(t(at), "caller", "hears the melody back from the agent");
    }
    timeline.at(
        t(report.duration),
        "caller",
        format!("hangs up ({})", report.ended_by),
    );
    server.wait_call_ended(&uuid_text, SETTLE_LIMIT);
    wait_until(SETTLE_LIMIT, || {
        lock(seen).hooks.iter().any(|k| k == "call_ended")
    });

    let mut s = String::from("pacing at the caller (what Asterisk would see):\n");
    s += &format!(
        "  frames: {} sent, {} received; gap p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         at most {} frames in any 100 ms (5 = real time)\n",
        report.frames_sent,
        report.frames_received,
        ms(report.gap_p50),
        ms(report.gap_p99),
        ms(report.gap_max),
        report.max_frames_in_100ms
    );
    match echo {
        Some(at) => {
            s += &format!(
                "  round trip: {:.0} ms from the caller's first note to hearing it back, of \
                 which {:.0} ms is the echo agent's own delay\n",
                ms(at),
                ms(EchoOptions::default().delay)
            )
        }
        None => return Err(format!("{s}the caller never heard its melody back")),
    }
    if !report.violations.is_empty() {
        return Err(format!(
            "{s}protocol violations Asterisk would drop the call for:\n  {}",
            report.violations.join("\n  ")
        ));
    }
    s += "  protocol violations: none\n";
    Ok(s)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Index of the first received frame (20 ms at `rate_hz`) with a non-zero sample.
fn first_sound(received: &[u8], rate_hz: u32) -> Option<usize> {
    received
        .chunks(audiosocket::frame_bytes(rate_hz))
        .position(|f| f.iter().any(|&b| b != 0))
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    true
}

/// A little tune at `rate_hz`: C-E-G-C' arpeggios, each note 250 ms with a soft attack (25 ms)
/// and release (50 ms) so it sounds like notes rather than clicks.
pub fn melody(length: Duration, rate_hz: u32) -> Vec<i16> {
    const NOTES: [f64; 12] = [
        523.25, 659.25, 783.99, 1046.5, 783.99, 659.25, 587.33, 698.46, 880.0, 783.99, 659.25,
        523.25,
    ];
    let rate = f64::from(rate_hz);
    let per_note = rate_hz as usize / 4; // 250 ms
    let (attack, release) = (rate / 40.0, rate / 20.0);
    let total = (length.as_secs_f64() * rate) as usize;
    (0..total)
        .map(|i| {
            let hz = NOTES[(i / per_note) % NOTES.len()];
            let pos = (i % per_note) as f64;
            let envelope = (pos / attack).min(1.0) * ((per_note as f64 - pos) / release).min(1.0);
            let phase = std::f64::consts::TAU * hz * i as f64 / rate;
            (6000.0 * envelope * (phase.sin() + 0.3 * (2.0 * phase).sin())).round() as i16
        })
        .collect()
}

/// Starts the webhook printer: each event on the timeline and in what was seen.
fn print_hooks(timeline: &Timeline, seen: &Arc<Mutex<Seen>>) -> Result<HookSink, String> {
    let hooks = {
        let (timeline, seen) = (timeline.clone(), seen.clone());
        HookSink::start(move |at, body| {
            let (kind, text) = describe_hook(body);
            lock(&seen).hooks.push(kind);
            timeline.at(at, "webhook", text);
        })
        .map_err(|e| format!("cannot start the webhook printer: {e}"))?
    };
    timeline.now(
        "demo",
        format!("webhook printer listening on {}", hooks.url()),
    );
    Ok(hooks)
}

fn watch_agent(events: Receiver<EchoEvent>, timeline: Timeline, seen: Arc<Mutex<Seen>>) {
    let spawned = thread::Builder::new()
        .name("demo-agent".into())
        .spawn(move || {
            for event in events {
                match event {
                    EchoEvent::Connected { path, .. } => timeline.now(
                        "agent",
                        format!("WebSocket opened by avr-core, path {path}"),
                    ),
                    EchoEvent::Received { text, .. } => {
                        if text.contains(r#""type":"init""#) {
                            lock(&seen).init = true;
                        }
                        timeline.now("agent", format!("received {}", short(&text, 160)));
                    }
                    EchoEvent::Closed { .. } => timeline.now("agent", "connection closed"),
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("avr-core demo: cannot watch the agent ({e}); its lines are missing");
    }
}

/// `(type, one line)` for a webhook body.
fn describe_hook(body: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(body);
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => {
            let kind = v["type"].as_str().unwrap_or("?").to_string();
            let payload = short(&v["payload"].to_string(), 100);
            (kind.clone(), format!("{kind:<15} {payload}"))
        }
        Err(_) => ("?".into(), format!("not JSON: {}", short(&text, 100))),
    }
}

fn short(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// The avr-core child process. Killed and reaped on drop.
struct Server {
    child: Child,
    audiosocket: SocketAddr,
    http: SocketAddr,
    ended: Receiver<String>,
}

/// avr-core as a child on ephemeral loopback ports (AudioSocket and HTTP), webhooks to
/// `webhook_url`, its log on a piped stderr: the setup the demo and the benchmark share.
pub fn loopback_command(
    exe: &std::path::Path,
    sts_url: &str,
    webhook_url: &str,
    dead_letters: &std::path::Path,
) -> Command {
    let mut cmd = Command::new(exe);
    cmd.env_clear()
        .env("STS_URL", sts_url)
        .env("PORT", "0")
        .env("BIND_ADDRESS", "127.0.0.1")
        .env("HTTP_PORT", "0")
        .env("HTTP_BIND_ADDRESS", "127.0.0.1")
        .env("WEBHOOK_URL", webhook_url)
        .env("WEBHOOK_DEAD_LETTER_FILE", dead_letters)
        .env("SHUTDOWN_GRACE", "1s")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// This executable: the demo runs the very avr-core it is part of.
fn this_exe() -> Result<std::path::PathBuf, String> {
    std::env::current_exe()
        .map_err(|e| format!("cannot find this executable to start avr-core: {e}"))
}

impl Server {
    /// Starts avr-core from `cmd` (a [`loopback_command`] with the mode's variables) at log
    /// level info, its log lines into the timeline, and waits until it listens.
    fn start(
        mut cmd: Command,
        timeline: &Timeline,
        seen: &Arc<Mutex<Seen>>,
    ) -> Result<Server, String> {
        cmd.env("LOG_LEVEL", "info");
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start avr-core: {e}"))?;
        timeline.now("demo", format!("started avr-core (pid {})", child.id()));
        let Some(stderr) = child.stderr.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("avr-core's stderr was not captured".into());
        };
        let (ports_tx, ports) = crossbeam_channel::unbounded();
        let (ended_tx, ended) = crossbeam_channel::unbounded();
        let (timeline, seen) = (timeline.clone(), seen.clone());
        let reader = thread::Builder::new()
            .name("demo-avr-log".into())
            .spawn(move || {
                let mut last = Vec::new();
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    // `<time> [LEVEL]: message`: the demo prints its own relative times.
                    let msg = line.split_once("]: ").map_or(line.as_str(), |(_, m)| m);
                    for (tag, kind) in [
                        ("AVR HTTP Server listening on port ", "http"),
                        ("AVR AudioSocket Server listening on port ", "audiosocket"),
                    ] {
                        if let Some(port) = msg.strip_prefix(tag) {
                            let _ = ports_tx.send((kind, port.trim().parse::<u16>().ok()));
                        }
                    }
                    {
                        let mut seen = lock(&seen);
                        seen.codec |= msg.contains("Audio codec detected");
                        if msg.contains("] [agent]: ") || msg.contains("] [user]: ") {
                            seen.transcripts += 1;
                        }
                    }
                    if msg.contains("] Call ended after") {
                        let _ = ended_tx.send(msg.to_string());
                    }
                    // The call's uuid is on the caller's line; per-call tags would only add noise.
                    let msg = match (msg.find("] "), msg.starts_with('[')) {
                        (Some(end), true) if end == 37 => &msg[end + 2..],
                        _ => msg,
                    };
                    timeline.now("avr-core", short(msg, 200));
                    last.push(msg.to_string());
                }
                let _ = ports_tx.send(("exited", None));
                last
            });
        let mut server = Server {
            child,
            audiosocket: ([127, 0, 0, 1], 0).into(),
            http: ([127, 0, 0, 1], 0).into(),
            ended,
        };
        if let Err(e) = reader {
            return Err(format!("cannot read avr-core's log: {e}"));
        }
        let deadline = Instant::now() + START_LIMIT;
        while server.audiosocket.port() == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match ports.recv_timeout(left) {
                Ok(("http", Some(p))) => server.http.set_port(p),
                Ok(("audiosocket", Some(p))) => server.audiosocket.set_port(p),
                Ok(("exited", _)) => {
                    let status = server.child.wait().map(|s| s.to_string());
                    return Err(format!(
                        "avr-core exited at startup ({}); its log is in the timeline above",
                        status.unwrap_or_else(|e| e.to_string())
                    ));
                }
                Ok(_) => {}
                Err(_) => {
                    return Err(format!(
                        "avr-core did not start listening within {} s",
                        START_LIMIT.as_secs()
                    ))
                }
            }
        }
        if server.http.port() == 0 {
            return Err("avr-core did not start its HTTP service".into());
        }
        Ok(server)
    }

    /// Waits for avr-core's `Call ended` line for this call (or the limit).
    fn wait_call_ended(&self, uuid: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while let Ok(line) = self
            .ended
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if line.contains(uuid) {
                return;
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 POST with a JSON body; the response body (the server closes after it).
fn post(addr: SocketAddr, path: &str, body: &str) -> io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(12)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or("");
    Ok(format!(
        "{} {}",
        status.trim_start_matches("HTTP/1.1 "),
        body.trim()
    ))
}

/// The demo's webhook printer on 127.0.0.1: answers `200` to every request and hands each
/// body to a callback with its arrival time. Used by the demo to print events and by the
/// benchmark to count them.
pub struct HookSink {
    sink: HttpSink,
}

impl HookSink {
    pub fn start(
        on_request: impl Fn(Instant, &[u8]) + Send + Sync + 'static,
    ) -> io::Result<HookSink> {
        let sink = HttpSink::start(move |request| {
            on_request(Instant::now(), &request.body);
            Reply::ok()
        })?;
        Ok(HookSink { sink })
    }

    pub fn url(&self) -> String {
        format!("http://{}/events", self.sink.addr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn rates_default_to_8_khz_and_are_checked() {
        assert_eq!(
            parse_args(&[]),
            Ok(Parsed::Run(DemoOptions {
                caller_rate_hz: 8_000,
                agent_rate_hz: 8_000,
                pipeline: false
            }))
        );
        assert_eq!(
            parse_args(&args("--rate 16000 --agent-rate=24000")),
            Ok(Parsed::Run(DemoOptions {
                caller_rate_hz: 16_000,
                agent_rate_hz: 24_000,
                pipeline: false
            }))
        );
        assert_eq!(parse_args(&args("--rate 16000 -h")), Ok(Parsed::Help));
        assert_eq!(
            parse_args(&args("--pipeline")),
            Ok(Parsed::Run(DemoOptions {
                pipeline: true,
                ..DemoOptions::default()
            }))
        );
        for (line, needle) in [
            ("--rate 11025", "is not an AudioSocket rate"),
            ("--agent-rate 4000", "from 8000 to 192000"),
            (
                "--bogus",
                "the demo takes --rate and --agent-rate, or --pipeline alone",
            ),
            (
                "--pipeline --rate 16000",
                "leave out --rate and --agent-rate",
            ),
            (
                "--agent-rate 16000 --pipeline",
                "leave out --rate and --agent-rate",
            ),
        ] {
            let e = parse_args(&args(line)).unwrap_err().to_string();
            assert!(e.contains(needle), "{line}: {e}");
        }
    }

    #[test]
    fn the_melody_and_its_echo_are_found_at_any_rate() {
        let m8 = melody(Duration::from_millis(500), 8_000);
        let m16 = melody(Duration::from_millis(500), 16_000);
        assert_eq!((m8.len(), m16.len()), (4_000, 8_000));
        // The same tune: every other 16 kHz sample is the 8 kHz one.
        assert!((0..m8.len()).all(|i| m16[2 * i] == m8[i]));
        assert!(m8.iter().any(|&s| s > 3000));
        let mut received = vec![0u8; 2 * 640];
        received.extend(m16[..320].iter().flat_map(|s| s.to_le_bytes()));
        assert_eq!(first_sound(&received, 16_000), Some(2));
        assert_eq!(first_sound(&received, 8_000), Some(4));
        assert_eq!(first_sound(&[0; 640], 16_000), None);
    }
}
