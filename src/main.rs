//! `avr-core`: the server, and the tools that ship with it.
//!
//! Wiring only: configuration → logging → shared call context → listener threads.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use avr_core::agent;
use avr_core::call::listener;
use avr_core::call::{CallContext, LiveCalls};
use avr_core::config::Config;
use avr_core::metrics::Metrics;
use avr_core::playout::{Ambient, Clocks};
use avr_core::registry::Registry;
use avr_core::sys::StopSignal;
use avr_core::tools::{demo, echo_sts, simulate};
use avr_core::webhook::{self, Event, EventKind, Webhooks};
use avr_core::{http, time};

const USAGE: &str = "\
avr-core — bridges Asterisk AudioSocket calls to speech-to-speech AI agents

USAGE:
    avr-core                 run the server (configured by environment variables)
    avr-core demo            see it work: one call through avr-core, the echo agent and webhooks
    avr-core check-config    print the effective configuration (secrets masked); exit 1 if invalid
    avr-core simulate ...    act as Asterisk: place a call and report what came back
                             (avr-core simulate --help)
    avr-core echo-sts ...    run an STS agent that echoes the caller (avr-core echo-sts --help)
    avr-core webhooks test|replay [FILE]
                             send a sample event to WEBHOOK_URL, or re-send the dead letters
    avr-core --help | --version

CONFIGURATION (environment; see README.md for the full table):
    STS_URL              ws:// or wss:// URL of the agent (required)
    PORT, BIND_ADDRESS   AudioSocket listener (default 0.0.0.0:5001)
    STS_CONNECT_TIMEOUT  default 3000 ms      MAX_CALLS     default 500
    AUDIO_CODEC          auto|slin|ulaw|alaw  LOG_LEVEL     default info
    AMBIENT_NOISE_FILE, AMBIENT_NOISE_LEVEL   raw 8 kHz s16le noise under the call
    HTTP_PORT, HTTP_BIND_ADDRESS  /health, /call, /metrics (off unless HTTP_PORT is set)
    HTTP_TOKEN           if set, POST /call needs \"Authorization: Bearer <token>\"
    CALL_METADATA_TTL    how long /call metadata waits for its call (default 60s)

Durations are milliseconds (3000) or carry a unit (500ms, 3s, 2m).
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or_default();
    match args.first().map(String::as_str) {
        None => serve(),
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("-V" | "--version") => {
            println!("avr-core {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("check-config") => check_config(),
        Some("demo") => {
            // The demo prints its own timeline; only warnings of its in-process agent show.
            init_logging("warn");
            demo::main(rest)
        }
        Some("simulate") => {
            init_logging(&log_level_from_env());
            simulate::main(rest)
        }
        Some("echo-sts") => {
            init_logging(&log_level_from_env());
            match echo_sts::parse_args(rest) {
                Ok((bind, opts)) => match echo_sts::run(bind, opts) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(&format!("echo-sts: {e}")),
                },
                Err(e) if e == "help" => {
                    print!("{}", echo_sts::USAGE);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&format!("echo-sts: {e}")),
            }
        }
        Some("webhooks") => {
            init_logging(&log_level_from_env());
            webhook::cli::main(rest)
        }
        Some(other) => fail(&format!(
            "unknown command {other:?}; run `avr-core --help` for the commands"
        )),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("avr-core: {message}");
    ExitCode::FAILURE
}

fn check_config() -> ExitCode {
    match Config::from_env() {
        Ok(config) => {
            print!("{}", config.describe());
            println!("configuration OK");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("configuration error: {e}")),
    }
}

fn serve() -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => Arc::new(c),
        Err(e) => return fail(&format!("configuration error: {e}")),
    };
    init_logging(&config.log_level);

    let tls = match agent::tls_config(config.ssl_cert_file.as_deref()) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let ambient = match &config.ambient_noise_file {
        Some(path) if config.ambient_noise_level > 0.0 => {
            match Ambient::load(path, config.ambient_noise_level) {
                Ok(a) => Some(a),
                Err(e) => return fail(&e),
            }
        }
        _ => None,
    };

    let metrics = Arc::new(Metrics::default());
    let webhooks = Webhooks::start(&config, metrics.clone());
    let registry = Arc::new(Registry::new(config.call_metadata_ttl));
    // One stop for both listeners: SIGTERM closes them together.
    let stop = match StopSignal::new() {
        Ok(s) => Arc::new(s),
        Err(e) => return fail(&format!("cannot create the shutdown eventfd: {e}")),
    };

    let mut http_port = None;
    if let Some(port) = config.http_port {
        let addr = SocketAddr::new(config.http_bind_address, port);
        let listener = match TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                return fail(&format!(
                    "cannot listen for HTTP on {addr}: {e} (HTTP_PORT, HTTP_BIND_ADDRESS)"
                ))
            }
        };
        http_port = Some(listener.local_addr().map_or(port, |a| a.port()));
        let hook = webhooks.clone();
        let service = http::Service::new(&config, registry.clone(), metrics.clone())
            .with_call_initiated(move |uuid, payload| {
                let payload = serde_json::Value::Object(payload.clone());
                hook.call_initiated(Event::new(uuid, EventKind::CallInitiated, payload))
            });
        if let Err(e) = http::spawn(listener, service, http::Limits::default(), stop.clone()) {
            return fail(&format!("cannot start the HTTP service thread: {e}"));
        }
    }

    let addr = SocketAddr::new(config.bind_address, config.port);
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            return fail(&format!(
                "cannot listen for AudioSocket on {addr}: {e} (PORT, BIND_ADDRESS)"
            ))
        }
    };
    let port = listener
        .local_addr()
        .map(|a| a.port())
        .unwrap_or(config.port);

    let clocks = match Clocks::start(config.max_calls) {
        Ok(c) => c,
        Err(e) => return fail(&format!("cannot start the playout clock threads: {e}")),
    };
    let ctx = Arc::new(CallContext {
        config: config.clone(),
        tls,
        ambient,
        events: webhooks.clone(),
        metrics: metrics.clone(),
        live: LiveCalls::default(),
        registry,
        clocks,
    });
    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => return fail(&format!("cannot install the SIGTERM/SIGINT handlers: {e}")),
    };
    let listener_failed = Arc::new(AtomicBool::new(false));
    let accept = thread::Builder::new().name("audiosocket".into()).spawn({
        let (ctx, stop, failed) = (ctx.clone(), stop.clone(), listener_failed.clone());
        move || {
            if !listener::serve(listener, ctx, &stop) {
                // A dead listener is fatal: take the graceful path so live calls finish.
                failed.store(true, Relaxed);
                let _ = signal_hook::low_level::raise(SIGTERM);
            }
        }
    });
    let accept = match accept {
        Ok(h) => h,
        Err(e) => {
            return fail(&format!(
                "cannot start the AudioSocket listener thread: {e}"
            ))
        }
    };

    // Logged once every thread is up: tests and scripts take these lines as "ready".
    if let Some(port) = http_port {
        log::info!("AVR HTTP Server listening on port {port}");
    }
    log::info!("AVR AudioSocket Server listening on port {port}");

    let signal = signals.forever().next().unwrap_or(SIGTERM);
    shutdown(signal, &mut signals, &ctx, &stop, accept, &webhooks);
    if listener_failed.load(Relaxed) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// SPEC §7: stop accepting, let live calls run up to `SHUTDOWN_GRACE`, hang up the rest,
/// drain webhooks (what is left goes to the dead-letter file). A second signal hangs up at once.
fn shutdown(
    signal: i32,
    signals: &mut Signals,
    ctx: &CallContext,
    stop: &StopSignal,
    accept: thread::JoinHandle<()>,
    webhooks: &Webhooks,
) {
    let grace = ctx.config.shutdown_grace;
    let name = if signal == SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    let active = || ctx.metrics.active_calls.load(Relaxed);
    log::info!(
        "{name} received: stopping. {} calls in progress may continue for up to {} s \
         (SHUTDOWN_GRACE); send {name} again to hang them up now",
        active(),
        grace.as_secs_f64()
    );
    stop.trigger();
    let _ = accept.join();

    let grace_end = Instant::now() + grace;
    let mut hurry = false;
    while active() > 0 && Instant::now() < grace_end && !hurry {
        thread::sleep(Duration::from_millis(50));
        hurry = signals.pending().next().is_some();
    }
    if active() > 0 {
        let n = ctx.live.hang_up_all();
        log::warn!("Hanging up {n} calls still in progress (shutting down)");
        let deadline = Instant::now() + Duration::from_secs(5);
        while active() > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }
    // The last calls' call_ended events get a moment even when the grace is spent.
    let report = webhooks.shutdown(grace_end.max(Instant::now() + Duration::from_secs(3)));
    log::info!(
        "avr-core stopped: webhooks delivered {}, written to the dead-letter file {}, lost {}",
        report.delivered,
        report.dead_lettered,
        report.lost
    );
}

fn log_level_from_env() -> String {
    std::env::var("LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into())
}

/// One line per event: `<time> [LEVEL]: message`. Under systemd the journal stamps lines
/// itself, so the time is left out there. Dependencies log at `warn` unless a full
/// `RUST_LOG`-style filter is given.
fn init_logging(level: &str) {
    let filter = if level.contains('=') || level.contains(',') {
        level.to_string()
    } else {
        format!("warn,avr_core={level}")
    };
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    env_logger::Builder::new()
        .parse_filters(&filter)
        .format(move |buf, record| {
            if journald {
                writeln!(buf, "[{}]: {}", record.level(), record.args())
            } else {
                writeln!(
                    buf,
                    "{} [{}]: {}",
                    time::iso8601_millis(SystemTime::now()),
                    record.level(),
                    record.args()
                )
            }
        })
        .init();
}
