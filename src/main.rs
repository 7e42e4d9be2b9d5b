//! `avr-core`: the server, and the tools that ship with it.
//!
//! Wiring only: the subcommand → its parser ([`cli::Flags`]) → its run function → one
//! [`StartError`] → the exit status. The server: configuration → logging → shared call
//! context → listener threads.

use std::fmt;
use std::io::{self, Write as _};
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
use avr_core::cli::{self, Flags, Parsed, UsageError};
use avr_core::config::{self, Config, ConfigError};
use avr_core::metrics::Metrics;
use avr_core::playout::{Ambient, Clocks};
use avr_core::registry::Registry;
use avr_core::sys::StopSignal;
use avr_core::tools::simulate::{self, SimError};
use avr_core::tools::{demo, echo_pipeline, echo_sts};
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
    avr-core echo-pipeline ...
                             run fake ASR, LLM and TTS services for pipeline mode
                             (avr-core echo-pipeline --help)
    avr-core webhooks test|replay [FILE]
                             send a sample event to WEBHOOK_URL, or re-send the dead letters
    avr-core --help | --version
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Why a command did not run (or the server did not start). The text is the whole line
/// printed on stderr: what went wrong and what to check.
#[derive(Debug)]
enum StartError {
    /// The command line: `command` is the subcommand, `None` for avr-core's own.
    Usage {
        command: Option<&'static str>,
        error: UsageError,
    },
    /// An environment variable (the configuration table) is wrong.
    Config(ConfigError),
    /// `SSL_CERT_FILE` or the platform's CA store; the text names which.
    Tls(String),
    /// `AMBIENT_NOISE_FILE`; the text names the file and what is wrong with it.
    Ambient(String),
    /// A listening socket could not be bound; `vars` are the settings that choose it.
    Listen {
        what: &'static str,
        addr: SocketAddr,
        vars: &'static str,
        source: io::Error,
    },
    /// The operating system refused a thread, an eventfd or a signal handler.
    Os {
        what: &'static str,
        source: io::Error,
    },
    /// `simulate`: the call could not be placed, or its recording not written.
    Simulate(SimError),
    /// `echo-sts`: the agent could not start.
    EchoSts(io::Error),
    /// `echo-pipeline`: the services could not start.
    EchoPipeline(io::Error),
    /// `demo`: a step was not seen; the text lists which.
    Demo(String),
}

impl StartError {
    /// 2 for a command line that cannot run (and, as `simulate --help` documents, a call
    /// that cannot be placed); 1 for everything else.
    fn exit_code(&self) -> u8 {
        match self {
            StartError::Usage { .. } | StartError::Simulate(_) => cli::USAGE_EXIT_CODE,
            _ => 1,
        }
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Usage {
                command: Some(command),
                error,
            } => write!(
                f,
                "avr-core {command}: {error}\nrun `avr-core {command} --help` for the options"
            ),
            StartError::Usage {
                command: None,
                error,
            } => write!(
                f,
                "avr-core: {error}; run `avr-core --help` for the commands"
            ),
            StartError::Config(e) => write!(f, "avr-core: configuration error: {e}"),
            StartError::Tls(e) | StartError::Ambient(e) => write!(f, "avr-core: {e}"),
            StartError::Listen {
                what,
                addr,
                vars,
                source,
            } => write!(
                f,
                "avr-core: cannot listen for {what} on {addr}: {source} ({vars})"
            ),
            StartError::Os { what, source } => write!(f, "avr-core: cannot {what}: {source}"),
            StartError::Simulate(e) => write!(f, "avr-core simulate: {e}"),
            StartError::EchoSts(e) => write!(f, "avr-core echo-sts: {e}"),
            StartError::EchoPipeline(e) => write!(f, "avr-core echo-pipeline: {e}"),
            StartError::Demo(e) => write!(f, "avr-core demo: FAILED: {e}"),
        }
    }
}

/// The subcommand in `args` → its parser → its run function.
fn run(args: &[String]) -> Result<ExitCode, StartError> {
    let mut flags = Flags::new(args);
    let Some(command) = flags.next_arg() else {
        return serve();
    };
    let rest = flags.rest();
    match command {
        _ if cli::is_help(command) || command == "help" => {
            print!("{USAGE}\n{}", config::usage_section());
            Ok(ExitCode::SUCCESS)
        }
        "-V" | "--version" => {
            println!("avr-core {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        "check-config" => {
            let options = cli::no_options(rest, "check-config reads only the environment");
            let Some(()) = options_or_help("check-config", USAGE, options)? else {
                return Ok(ExitCode::SUCCESS);
            };
            check_config()
        }
        "demo" => {
            // The demo prints its own timeline; only warnings of its in-process agent show.
            init_logging("warn");
            let Some(opts) = options_or_help("demo", demo::USAGE, demo::parse_args(rest))? else {
                return Ok(ExitCode::SUCCESS);
            };
            demo::run(opts).map_err(StartError::Demo)?;
            Ok(ExitCode::SUCCESS)
        }
        "simulate" => {
            init_logging(&config::log_level_from_env());
            let options = simulate::cli::parse_args(rest);
            let Some(command) = options_or_help("simulate", simulate::cli::USAGE, options)? else {
                return Ok(ExitCode::SUCCESS);
            };
            simulate::cli::run(command).map_err(StartError::Simulate)
        }
        "echo-sts" => {
            init_logging(&config::log_level_from_env());
            let options = echo_sts::parse_args(rest);
            let Some(command) = options_or_help("echo-sts", echo_sts::USAGE, options)? else {
                return Ok(ExitCode::SUCCESS);
            };
            echo_sts::run(command).map_err(StartError::EchoSts)?;
            Ok(ExitCode::SUCCESS)
        }
        "echo-pipeline" => {
            init_logging(&config::log_level_from_env());
            let options = echo_pipeline::parse_args(rest);
            let Some(command) = options_or_help("echo-pipeline", echo_pipeline::USAGE, options)?
            else {
                return Ok(ExitCode::SUCCESS);
            };
            echo_pipeline::run(command).map_err(StartError::EchoPipeline)?;
            Ok(ExitCode::SUCCESS)
        }
        "webhooks" => {
            init_logging(&config::log_level_from_env());
            let options = webhook::cli::parse_args(rest);
            let Some(command) = options_or_help("webhooks", webhook::cli::USAGE, options)? else {
                return Ok(ExitCode::SUCCESS);
            };
            Ok(webhook::cli::run(command))
        }
        _ => Err(StartError::Usage {
            command: None,
            error: UsageError::UnknownCommand {
                word: command.into(),
                expected: "demo, check-config, simulate, echo-sts, echo-pipeline or webhooks",
            },
        }),
    }
}

/// What a subcommand's flags ask to run; `None` after printing its usage for `--help`.
fn options_or_help<T>(
    command: &'static str,
    usage: &str,
    parsed: Result<Parsed<T>, UsageError>,
) -> Result<Option<T>, StartError> {
    match parsed {
        Ok(Parsed::Run(options)) => Ok(Some(options)),
        Ok(Parsed::Help) => {
            print!("{usage}");
            Ok(None)
        }
        Err(error) => Err(StartError::Usage {
            command: Some(command),
            error,
        }),
    }
}

fn check_config() -> Result<ExitCode, StartError> {
    let config = Config::from_env().map_err(StartError::Config)?;
    print!("{}", config.describe());
    println!("configuration OK");
    Ok(ExitCode::SUCCESS)
}

/// The server: runs until SIGTERM/SIGINT; exit 1 if the AudioSocket listener died.
/// The `/call` registry `REGISTRY_URL` asks for: this process's memory, or a shared Redis
/// (not connected yet: instances and Redis may start in any order; `/health` tells).
fn registry(config: &Config) -> Result<Registry, StartError> {
    let Some(url) = &config.registry_url else {
        return Ok(Registry::new(config.call_metadata_ttl));
    };
    // rediss:// to a Redis signed by a private CA: the same SSL_CERT_FILE as wss://.
    let private_ca = match &config.ssl_cert_file {
        Some(path) if avr_core::registry::shared::is_tls(url) => {
            Some(std::fs::read(path).map_err(|e| {
                StartError::Tls(format!(
                    "cannot read SSL_CERT_FILE {} for REGISTRY_URL: {e}",
                    path.display()
                ))
            })?)
        }
        _ => None,
    };
    let registry = Registry::shared(
        url,
        config.call_metadata_ttl,
        config.registry_timeout,
        private_ca.as_deref(),
    )
    .map_err(|allowed| {
        StartError::Config(ConfigError::Invalid {
            var: "REGISTRY_URL",
            value: url.clone(),
            allowed,
        })
    })?;
    log::info!(
        "Shared call registry: {} (REGISTRY_TIMEOUT {} ms)",
        config::mask_url(url),
        config.registry_timeout.as_millis()
    );
    Ok(registry)
}

fn serve() -> Result<ExitCode, StartError> {
    let config = Arc::new(Config::from_env().map_err(StartError::Config)?);
    init_logging(&config.log_level);

    let tls = agent::tls_config(config.ssl_cert_file.as_deref()).map_err(StartError::Tls)?;
    let ambient = match &config.ambient_noise_file {
        Some(path) if config.ambient_noise_level > 0.0 => {
            Some(Ambient::load(path, config.ambient_noise_level).map_err(StartError::Ambient)?)
        }
        _ => None,
    };

    let metrics = Arc::new(Metrics::default());
    let webhooks = Webhooks::start(&config, metrics.clone());
    let registry = Arc::new(registry(&config)?);
    let stopping = Stopping {
        draining: Arc::new(AtomicBool::new(false)),
        audiosocket: Arc::new(StopSignal::new().map_err(os("create the shutdown eventfd"))?),
        http: Arc::new(StopSignal::new().map_err(os("create the shutdown eventfd"))?),
    };

    let mut http_port = None;
    if let Some(port) = config.http_port {
        let addr = SocketAddr::new(config.http_bind_address, port);
        let listener = TcpListener::bind(addr).map_err(|source| StartError::Listen {
            what: "HTTP",
            addr,
            vars: "HTTP_PORT, HTTP_BIND_ADDRESS",
            source,
        })?;
        http_port = Some(listener.local_addr().map_or(port, |a| a.port()));
        let hook = webhooks.clone();
        let service = http::Service::new(&config, registry.clone(), metrics.clone())
            .with_call_initiated(move |uuid, payload| {
                let payload = serde_json::Value::Object(payload.clone());
                hook.call_initiated(Event::new(uuid, EventKind::CallInitiated, payload))
            })
            .with_draining(stopping.draining.clone());
        http::spawn(
            listener,
            service,
            http::Limits::default(),
            stopping.http.clone(),
        )
        .map_err(os("start the HTTP service thread"))?;
    }

    let addr = SocketAddr::new(config.bind_address, config.port);
    let listener = TcpListener::bind(addr).map_err(|source| StartError::Listen {
        what: "AudioSocket",
        addr,
        vars: "PORT, BIND_ADDRESS",
        source,
    })?;
    let port = listener
        .local_addr()
        .map(|a| a.port())
        .unwrap_or(config.port);

    let clocks = Clocks::start(config.max_calls).map_err(os("start the playout clock threads"))?;
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
    let mut signals =
        Signals::new([SIGTERM, SIGINT]).map_err(os("install the SIGTERM/SIGINT handlers"))?;
    let listener_failed = Arc::new(AtomicBool::new(false));
    let accept = thread::Builder::new()
        .name("audiosocket".into())
        .spawn({
            let (ctx, stop, failed) = (
                ctx.clone(),
                stopping.audiosocket.clone(),
                listener_failed.clone(),
            );
            move || {
                if !listener::serve(listener, ctx, &stop) {
                    // A dead listener is fatal: take the graceful path so live calls finish.
                    failed.store(true, Relaxed);
                    let _ = signal_hook::low_level::raise(SIGTERM);
                }
            }
        })
        .map_err(os("start the AudioSocket listener thread"))?;

    if let Some(p) = &ctx.config.pipeline {
        log::info!(
            "Pipeline mode: speech-to-text {}, language model {}, text-to-speech {}",
            avr_core::config::mask_url(&p.asr_url.url),
            avr_core::config::mask_url(&p.llm_url.url),
            avr_core::config::mask_url(&p.tts_url.url)
        );
        if !p.ignored.is_empty() {
            log::info!(
                "Ignoring {}: upstream voice-activity settings with no meaning here \
                 (docs/pipeline.md §5)",
                p.ignored.join(", ")
            );
        }
    }
    // Logged once every thread is up: tests and scripts take these lines as "ready".
    if let Some(port) = http_port {
        log::info!("AVR HTTP Server listening on port {port}");
    }
    log::info!("AVR AudioSocket Server listening on port {port}");

    let signal = signals.forever().next().unwrap_or(SIGTERM);
    shutdown(signal, &mut signals, &ctx, &stopping, accept, &webhooks);
    // The listener logged why it died; the status tells scripts and systemd.
    Ok(if listener_failed.load(Relaxed) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Maps a refusal of the operating system to what we were doing.
fn os(what: &'static str) -> impl FnOnce(io::Error) -> StartError {
    move |source| StartError::Os { what, source }
}

/// What SIGTERM sets in motion. The two listeners stop apart: the AudioSocket one at once,
/// the HTTP one last, so that `/health` answers `draining` (and `/call` refuses) for as long
/// as live calls run, which is what moves a load balancer's new calls elsewhere.
struct Stopping {
    /// Read by the HTTP service: `/health` and `/call` answer 503 once it is set.
    draining: Arc<AtomicBool>,
    audiosocket: Arc<StopSignal>,
    http: Arc<StopSignal>,
}

/// Stopping (docs/configuration.md §6, docs/deployment.md): report `draining` on `/health`,
/// close the AudioSocket listener (new connections are refused), let live calls run up to
/// `SHUTDOWN_GRACE`, hang up the rest, drain webhooks (what is left goes to the dead-letter
/// file), then close the HTTP service. A second signal hangs up at once.
fn shutdown(
    signal: i32,
    signals: &mut Signals,
    ctx: &CallContext,
    stopping: &Stopping,
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
    // Health first: a balancer that checks between the two steps already sees `draining`.
    stopping.draining.store(true, Relaxed);
    stopping.audiosocket.trigger();
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
    stopping.http.trigger();
    log::info!(
        "avr-core stopped: webhooks delivered {}, written to the dead-letter file {}, lost {}",
        report.delivered,
        report.dead_lettered,
        report.lost
    );
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
