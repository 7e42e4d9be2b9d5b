//! `avr-core`: the server, and the tools that ship with it.
//!
//! Wiring only: configuration → logging → shared call context → listener threads.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use avr_core::call::CallContext;
use avr_core::config::Config;
use avr_core::metrics::Metrics;
use avr_core::playout::Ambient;
use avr_core::registry::Registry;
use avr_core::webhook::EventSink;
use avr_core::{echo_sts, http, server, simulate, sts, time};

const USAGE: &str = "\
avr-core — bridges Asterisk AudioSocket calls to speech-to-speech AI agents

USAGE:
    avr-core                 run the server (configured by environment variables)
    avr-core check-config    print the effective configuration (secrets masked); exit 1 if invalid
    avr-core simulate ...    act as Asterisk: place a call and report what came back
                             (avr-core simulate --help)
    avr-core echo-sts ...    run an STS agent that echoes the caller (avr-core echo-sts --help)
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

    let tls = match sts::tls_config(config.ssl_cert_file.as_deref()) {
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
    let registry = Arc::new(Registry::new(config.call_metadata_ttl));
    if let Some(http_port) = config.http_port {
        let addr = SocketAddr::new(config.http_bind_address, http_port);
        let listener = match TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                return fail(&format!(
                    "cannot listen for HTTP on {addr}: {e} (HTTP_PORT, HTTP_BIND_ADDRESS)"
                ))
            }
        };
        let port = listener.local_addr().map_or(http_port, |a| a.port());
        // The webhook's call_initiated is wired here once it exists (`with_call_initiated`).
        let service = http::Service::new(&config, registry.clone(), metrics.clone());
        if let Err(e) = http::spawn(listener, service, http::Limits::default()) {
            return fail(&format!("cannot start the HTTP service thread: {e}"));
        }
        log::info!("AVR HTTP Server listening on port {port}");
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
    log::info!("AVR AudioSocket Server listening on port {port}");

    let ctx = Arc::new(CallContext {
        config,
        tls,
        ambient,
        events: EventSink::log_only(),
        metrics,
        registry,
    });
    server::serve(listener, ctx);
    ExitCode::FAILURE
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
