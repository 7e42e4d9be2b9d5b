//! One call: its three threads, its lifecycle and its teardown.
//!
//! ```text
//! Asterisk ──TCP──> [reader] ──Outbox──> [sts] ──WebSocket──> agent
//! Asterisk <──TCP── [clock]  <─Playout── [sts] <──WebSocket── agent
//! ```
//! The reader is the call's own thread (spawned by the listener). It starts the clock and the
//! STS thread as soon as the UUID arrives, reads until Asterisk is gone, then joins both. Every
//! way a call can end sets one [`EndReason`] (the first wins) and logs one line saying why.

use std::ffi::CString;
use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::audiosocket::{self, Frame, FrameBuffer};
use crate::config::{CodecChoice, Config};
use crate::g711::{self, Codec, Detector};
use crate::metrics::Metrics;
use crate::playout::{self, Ambient, Playout, Stop};
use crate::registry::Registry;
use crate::sts::{self, Inbound, Outbox, Outgoing, PumpEnd};
use crate::webhook::{Event, EventKind, Webhooks};

/// How long a new connection may take to send its UUID (SPEC §3).
pub const UUID_TIMEOUT: Duration = Duration::from_secs(5);

/// After avr-core hangs up, how long Asterisk gets to close its side.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Stack of each per-call thread. Touched pages only count towards RSS.
pub const THREAD_STACK: usize = 256 * 1024;

/// What every call shares: built once by `main`.
pub struct CallContext {
    pub config: Arc<Config>,
    pub tls: Arc<rustls::ClientConfig>,
    pub ambient: Option<Ambient>,
    pub events: Webhooks,
    pub metrics: Arc<Metrics>,
    pub live: LiveCalls,
    /// `/call` metadata waiting for its call.
    pub registry: Arc<Registry>,
}

/// The calls in progress, so a shutdown can hang up those that outlive the grace period.
#[derive(Default)]
pub struct LiveCalls {
    calls: Mutex<Vec<Weak<Shared>>>,
}

impl LiveCalls {
    fn add(&self, call: &Arc<Shared>) {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        calls.retain(|c| c.strong_count() > 0);
        calls.push(Arc::downgrade(call));
    }

    /// Hangs up every call in progress (`00 00 00`, so each dialplan continues); returns
    /// how many there were.
    pub fn hang_up_all(&self) -> usize {
        let calls: Vec<Arc<Shared>> = self
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .filter_map(|c| c.upgrade())
            .collect();
        for call in &calls {
            call.end(EndReason::Shutdown);
            call.playout.stop(Stop::Hangup);
        }
        calls.len()
    }
}

/// Why a call ended.
#[derive(Debug, Clone)]
pub enum EndReason {
    /// Asterisk closed the connection or sent a hangup/error frame.
    CallerHangup(String),
    /// The agent closed; its queued audio was played, then avr-core hung up.
    AgentClosed(String),
    /// The agent could not be reached; avr-core hung up at once.
    AgentUnreachable(String),
    /// Asterisk sent something that cannot be a call; avr-core hung up.
    Protocol(String),
    /// Writing to Asterisk failed.
    WriteFailed(String),
    /// avr-core is stopping and the call outlived `SHUTDOWN_GRACE`; avr-core hung up.
    Shutdown,
    /// avr-core itself could not carry the call (resources); it hung up.
    Internal(String),
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndReason::CallerHangup(why) => write!(f, "caller hung up ({why})"),
            EndReason::AgentClosed(why) => write!(f, "agent closed ({why})"),
            EndReason::AgentUnreachable(why) => write!(f, "agent unreachable ({why})"),
            EndReason::Protocol(why) => write!(f, "protocol error ({why})"),
            EndReason::WriteFailed(why) => write!(f, "cannot write to Asterisk ({why})"),
            EndReason::Shutdown => write!(f, "avr-core is shutting down (SHUTDOWN_GRACE ended)"),
            EndReason::Internal(why) => write!(f, "avr-core could not carry the call ({why})"),
        }
    }
}

/// State the three threads of a call share.
struct Shared {
    uuid: String,
    stream: TcpStream,
    playout: Playout,
    outbox: Outbox,
    end: Mutex<Option<EndReason>>,
    /// Set by the reader when it is done, so the clock knows it need not force a close.
    reader_done: (Mutex<bool>, Condvar),
}

impl Shared {
    /// Records why the call ends; the first reason wins and is logged once.
    fn end(&self, reason: EndReason) {
        let mut end = self.end.lock().unwrap_or_else(|e| e.into_inner());
        if end.is_none() {
            match &reason {
                EndReason::CallerHangup(_) => log::info!("[{}] Call ending: {reason}", self.uuid),
                _ => log::warn!("[{}] Call ending: {reason}", self.uuid),
            }
            *end = Some(reason);
        }
    }
}

/// One of the `MAX_CALLS` places, held from accept until the call's resources are released.
pub struct CallSlot(Arc<Metrics>);

impl CallSlot {
    /// Takes a place if fewer than `max` calls are active.
    pub fn take(metrics: &Arc<Metrics>, max: u64) -> Option<CallSlot> {
        metrics
            .active_calls
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| CallSlot(metrics.clone()))
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        self.0.active_calls.fetch_sub(1, Relaxed);
    }
}

/// Reads the UUID, bridges the call, tears it down. Runs on the call's own thread.
pub fn run(stream: TcpStream, peer: SocketAddr, ctx: &CallContext, slot: CallSlot) {
    let _ = stream.set_nodelay(true);
    // Asterisk reads without blocking and drops calls that stall; a clock blocked on a peer
    // that stopped reading must fail instead of hanging the call.
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let mut frames = FrameBuffer::new(audiosocket::MAX_PAYLOAD);
    let uuid = match read_uuid(&stream, &mut frames) {
        Ok(bytes) => audiosocket::uuid_text(&bytes),
        Err(why) => {
            log::warn!("AudioSocket connection from {peer} closed: {why}");
            return;
        }
    };
    if let Ok(name) = CString::new(format!("call-{}", &uuid[..8])) {
        let _ = rustix::thread::set_name(&name);
    }
    let started = Instant::now();
    ctx.metrics.calls_total.fetch_add(1, Relaxed);
    // A `/call` for this uuid chose the agent URL and the metadata for `init`.
    let (sts_url, metadata) = match ctx.registry.take(&uuid, started) {
        Some(entry) => (entry.sts_url, Some(Value::Object(entry.payload))),
        None => (ctx.config.sts_url.clone(), None),
    };
    log::info!(
        "[{uuid}] Call started from {peer}{}",
        if metadata.is_some() {
            " (with /call metadata)"
        } else {
            ""
        }
    );
    ctx.events
        .emit(Event::new(&uuid, EventKind::CallStarted, json!({})));

    let outbox = match Outbox::new() {
        Ok(o) => o,
        Err(e) => {
            log::error!("[{uuid}] Cannot create the call's wake-up eventfd: {e}; hanging up");
            let _ = (&stream).write_all(&audiosocket::HANGUP);
            ctx.events
                .emit(Event::new(&uuid, EventKind::CallEnded, json!({})));
            return;
        }
    };
    let shared = Arc::new(Shared {
        uuid: uuid.clone(),
        stream,
        playout: Playout::default(),
        outbox,
        end: Mutex::new(None),
        reader_done: (Mutex::new(false), Condvar::new()),
    });

    ctx.live.add(&shared);

    let clock = spawn(&uuid, "play", {
        let shared = shared.clone();
        let ambient = ctx.ambient.as_ref().map(Ambient::cursor);
        move || clock_thread(&shared, ambient)
    });
    let agent = spawn(&uuid, "sts", {
        let shared = shared.clone();
        let timeout = ctx.config.sts_connect_timeout;
        let tls = ctx.tls.clone();
        let events = ctx.events.clone();
        let metrics = ctx.metrics.clone();
        move || {
            let agent = Agent {
                url: &sts_url,
                metadata: metadata.as_ref(),
                timeout,
                tls: &tls,
            };
            sts_thread(&shared, &agent, &events, &metrics)
        }
    });

    if clock.is_none() || agent.is_none() {
        // Out of threads (TasksMax, ulimit -u): hang up now rather than bridge half a call.
        shared.end(EndReason::Internal(
            "cannot start the call's threads; raise TasksMax or lower MAX_CALLS".into(),
        ));
        shared.outbox.close();
        shared.playout.stop(Stop::Hangup);
        if clock.is_none() {
            let _ = (&shared.stream).write_all(&audiosocket::HANGUP);
            let _ = shared.stream.shutdown(std::net::Shutdown::Both);
        }
    }
    let reader = read_loop(&shared, &mut frames, ctx);

    // Teardown: whichever side ended first, stop the others and wait for them.
    shared.outbox.close();
    *shared
        .reader_done
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = true;
    shared.reader_done.1.notify_all();
    let clock_stats = clock.and_then(|h| h.join().ok()).unwrap_or_default();
    let pump_stats = agent.and_then(|h| h.join().ok()).unwrap_or_default();
    ctx.metrics
        .playout_underruns
        .fetch_add(clock_stats.underruns, Relaxed);

    // Every thread is joined: the place is free before anyone reads that the call ended.
    drop(slot);
    let reason = shared
        .end
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .map(|r| r.to_string())
        .unwrap_or_else(|| "unknown".into());
    log::info!(
        "[{uuid}] Call ended after {:.1} s: {reason}; codec {}, frames in {}, frames out {} \
         ({} agent, {} underruns, {} late slots skipped), audio messages to agent {}, \
         messages from agent {}",
        started.elapsed().as_secs_f64(),
        reader.codec.map(|c| c.name()).unwrap_or("none"),
        reader.frames_in,
        clock_stats.frames_out,
        clock_stats.agent_frames,
        clock_stats.underruns,
        clock_stats.late_slots,
        pump_stats.audio_sent,
        pump_stats.messages_received,
    );
    ctx.events
        .emit(Event::new(&uuid, EventKind::CallEnded, json!({})));
}

fn spawn<T: Send + 'static>(
    uuid: &str,
    role: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<thread::JoinHandle<T>> {
    match thread::Builder::new()
        .name(format!("{role}-{}", &uuid[..8]))
        .stack_size(THREAD_STACK)
        .spawn(f)
    {
        Ok(h) => Some(h),
        Err(e) => {
            log::error!("[{uuid}] Cannot start the {role} thread: {e}");
            None
        }
    }
}

/// Waits for the `0x01` UUID frame, which Asterisk always sends first. Anything else is
/// refused as soon as its header shows it, without waiting for its payload.
fn read_uuid(stream: &TcpStream, frames: &mut FrameBuffer) -> Result<[u8; 16], String> {
    let deadline = Instant::now() + UUID_TIMEOUT;
    loop {
        match frames.peek_header() {
            Some((kind, _)) if kind != audiosocket::KIND_UUID => {
                return Err(format!(
                    "it sent a kind 0x{kind:02x} ({}) frame before its UUID; Asterisk always \
                     sends the UUID first",
                    audiosocket::kind_name(kind)
                ))
            }
            Some((_, len)) if len != 16 => {
                return Err(format!("its first frame is a malformed UUID ({len} bytes)"))
            }
            _ => {}
        }
        if let Ok(Some(Frame::Uuid(bytes))) = frames.next_frame() {
            return Ok(bytes);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(no_uuid(frames));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| format!("cannot set a read timeout: {e}"))?;
        let mut reader = stream;
        match frames.read_from(&mut reader) {
            Ok(0) => {
                return Err(if frames.buffered() == 0 {
                    "no UUID: the peer connected and closed without sending anything \
                     (Asterisk does this when the channel is not answered)"
                        .into()
                } else {
                    format!("no UUID: the peer closed after {} bytes", frames.buffered())
                })
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(no_uuid(frames))
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read failed before the UUID: {e}")),
        }
    }
}

fn no_uuid(frames: &FrameBuffer) -> String {
    format!(
        "no UUID within {} s ({} bytes received)",
        UUID_TIMEOUT.as_secs(),
        frames.buffered()
    )
}

/// What the reader saw, for the closing log line.
struct ReaderStats {
    frames_in: u64,
    codec: Option<Codec>,
}

/// Which oddities of the caller's stream were already logged (once per call each).
#[derive(Default)]
struct Noted {
    wideband: bool,
    unknown: bool,
    malformed: bool,
    second_uuid: bool,
    backlog: bool,
}

fn read_loop(shared: &Shared, frames: &mut FrameBuffer, ctx: &CallContext) -> ReaderStats {
    let uuid = &shared.uuid;
    let _ = shared.stream.set_read_timeout(None);
    let mut stats = ReaderStats {
        frames_in: 0,
        codec: None,
    };
    let mut detector = match ctx.config.audio_codec {
        CodecChoice::Auto => Some(Detector::new()),
        forced => {
            let codec = match forced {
                CodecChoice::Ulaw => Codec::Ulaw,
                CodecChoice::Alaw => Codec::Alaw,
                _ => Codec::Slin,
            };
            log::info!(
                "[{uuid}] Audio codec forced by AUDIO_CODEC: {}",
                codec.name()
            );
            stats.codec = Some(codec);
            None
        }
    };
    let mut noted = Noted::default();
    loop {
        loop {
            let frame = match frames.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    shared.end(EndReason::Protocol(e.to_string()));
                    shared.playout.stop(Stop::Hangup);
                    return stats;
                }
            };
            stats.frames_in += 1;
            match frame {
                Frame::Audio {
                    rate_hz: 8000,
                    payload,
                } => {
                    let codec = match (&mut detector, stats.codec) {
                        (Some(det), _) => {
                            let guess = det.observe(payload);
                            if let Some(decided) = det.decided() {
                                log::info!("[{uuid}] Audio codec detected: {}", decided.name());
                                stats.codec = Some(decided);
                                detector = None;
                            }
                            guess
                        }
                        (None, Some(c)) => c,
                        (None, None) => Codec::Slin,
                    };
                    // Asterisk reads len/2 samples; a stray odd byte would shift every sample after it.
                    let payload = match codec {
                        Codec::Slin => &payload[..payload.len() & !1],
                        _ => payload,
                    };
                    let mut pcm = Vec::with_capacity(payload.len() * 2);
                    g711::decode_into(codec, payload, &mut pcm);
                    let pushed = shared.outbox.push(Outgoing::Audio(pcm));
                    if pushed.dropped_bytes > 0 && !noted.backlog {
                        noted.backlog = true;
                        log::warn!(
                            "[{uuid}] The agent is not taking caller audio (not connected yet \
                             or stalled): keeping the newest 1 s, dropping older audio"
                        );
                    }
                }
                Frame::Audio { rate_hz, .. } => {
                    if !std::mem::replace(&mut noted.wideband, true) {
                        log::warn!(
                            "[{uuid}] Ignoring {rate_hz} Hz audio: only 8 kHz (kind 0x10) is \
                             supported; use c(slin) in the dialplan"
                        );
                    }
                }
                Frame::Dtmf(digit) => {
                    log::info!("[{uuid}] DTMF digit: {digit}");
                    shared.outbox.push(Outgoing::Dtmf(digit));
                    ctx.events.emit(Event::new(
                        uuid,
                        EventKind::DtmfDigit,
                        json!({"digit": digit.to_string()}),
                    ));
                }
                Frame::Hangup => {
                    shared.end(EndReason::CallerHangup(
                        "Asterisk sent a hangup frame".into(),
                    ));
                    shared.playout.stop(Stop::Quiet);
                    return stats;
                }
                Frame::Error(code) => {
                    shared.end(EndReason::CallerHangup(format!(
                        "Asterisk sent an error frame {code:02x?}"
                    )));
                    shared.playout.stop(Stop::Quiet);
                    return stats;
                }
                Frame::Uuid(_) => {
                    if !std::mem::replace(&mut noted.second_uuid, true) {
                        log::warn!("[{uuid}] Ignoring a second UUID frame");
                    }
                }
                Frame::Unknown { kind, len } => {
                    if !std::mem::replace(&mut noted.unknown, true) {
                        log::warn!(
                            "[{uuid}] Ignoring AudioSocket frames of unknown kind 0x{kind:02x} \
                             ({len} bytes); logged once per call"
                        );
                    }
                }
                Frame::Malformed { kind, len, reason } => {
                    if !std::mem::replace(&mut noted.malformed, true) {
                        log::warn!(
                            "[{uuid}] Ignoring a malformed kind 0x{kind:02x} frame ({len} bytes: \
                             {reason}); logged once per call"
                        );
                    }
                }
            }
        }
        let mut reader = &shared.stream;
        match frames.read_from(&mut reader) {
            Ok(0) => {
                let why = if frames.buffered() > 0 {
                    format!(
                        "Asterisk closed the connection mid-frame ({} bytes)",
                        frames.buffered()
                    )
                } else {
                    "Asterisk closed the connection".into()
                };
                shared.end(EndReason::CallerHangup(why));
                break;
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                shared.end(EndReason::CallerHangup("connection reset".into()));
                break;
            }
            Err(e) => {
                shared.end(EndReason::CallerHangup(format!("read failed: {e}")));
                break;
            }
        }
    }
    shared.playout.stop(Stop::Quiet);
    stats
}

fn clock_thread(shared: &Shared, ambient: Option<playout::AmbientCursor>) -> playout::ClockStats {
    let (stats, err) = playout::run_clock(&shared.stream, &shared.playout, ambient);
    if let Some(e) = err {
        if e.kind() != ErrorKind::BrokenPipe && e.kind() != ErrorKind::ConnectionReset {
            shared.end(EndReason::WriteFailed(e.to_string()));
        }
    }
    // Unless the reader is already done, we hung up or could not write: give Asterisk a
    // moment to close its side, then close ours so the reader's blocking read returns.
    let (lock, cv) = &shared.reader_done;
    let done = lock.lock().unwrap_or_else(|e| e.into_inner());
    let (done, _) = cv
        .wait_timeout_while(done, CLOSE_WAIT, |d| !*d)
        .unwrap_or_else(|e| e.into_inner());
    if !*done {
        let _ = shared.stream.shutdown(std::net::Shutdown::Both);
    }
    stats
}

/// Where and how the call's STS thread connects.
struct Agent<'a> {
    url: &'a str,
    /// The `/call` payload, carried in `init`.
    metadata: Option<&'a Value>,
    timeout: Duration,
    tls: &'a Arc<rustls::ClientConfig>,
}

fn sts_thread(
    shared: &Shared,
    agent: &Agent<'_>,
    events: &Webhooks,
    metrics: &Metrics,
) -> sts::PumpStats {
    let uuid = &shared.uuid;
    let mut stats = sts::PumpStats::default();
    log::info!(
        "[{uuid}] Connecting to STS WebSocket: {}",
        crate::config::mask_url_password(agent.url)
    );
    let mut ws = match sts::connect(agent.url, agent.timeout, agent.tls) {
        Ok(ws) => ws,
        Err(e) => {
            metrics.sts_connect_failures.fetch_add(1, Relaxed);
            shared.end(EndReason::AgentUnreachable(e.to_string()));
            shared.playout.stop(Stop::Hangup);
            return stats;
        }
    };
    log::info!("[{uuid}] Connected to STS");
    let init = sts::init_message(uuid, agent.metadata);
    let mut noted_unknown = false;
    let mut noted_invalid = false;
    let mut noted_odd = false;
    let mut noted_full = false;
    let end = sts::pump(&mut ws, init, &shared.outbox, &mut stats, |msg| match msg {
        Inbound::Audio {
            pcm,
            odd_byte_dropped,
        } => {
            if odd_byte_dropped && !std::mem::replace(&mut noted_odd, true) {
                log::warn!(
                    "[{uuid}] The agent sent audio of odd length; dropped the stray byte \
                     (logged once per call)"
                );
            }
            let refused = shared.playout.lock().audio.push(&pcm, Instant::now());
            if refused > 0 && !std::mem::replace(&mut noted_full, true) {
                log::warn!(
                    "[{uuid}] The agent sent more than {} s of audio ahead of playback; \
                     dropping the excess",
                    playout::MAX_QUEUED_BYTES / 16_000
                );
            }
        }
        Inbound::Interruption => {
            let dropped = shared.playout.lock().audio.clear();
            log::info!(
                "[{uuid}] Interruption: dropped {} ms of queued agent audio",
                dropped / 16
            );
            events.emit(Event::new(uuid, EventKind::Interruption, json!({})));
        }
        Inbound::Transcript { role, text } => {
            log::info!("[{uuid}] [{role}]: {text}");
            events.emit(Event::new(
                uuid,
                EventKind::Transcription,
                json!({"role": role, "text": text}),
            ));
        }
        Inbound::AgentError(message) => {
            log::warn!("[{uuid}] STS error: {message}");
        }
        Inbound::Unknown(kind) => {
            if !std::mem::replace(&mut noted_unknown, true) {
                log::warn!(
                    "[{uuid}] Ignoring STS messages of unknown type {kind:?} (logged once per call)"
                );
            }
        }
        Inbound::Invalid(why) => {
            if !std::mem::replace(&mut noted_invalid, true) {
                log::warn!(
                    "[{uuid}] Ignoring an unusable STS message: {why} (logged once per call)"
                );
            }
        }
    });
    // Caller audio has nowhere to go any more.
    shared.outbox.close();
    match end {
        PumpEnd::Closed => {}
        PumpEnd::AgentClosed(why) => {
            let queued = shared.playout.lock().audio.len() / 16;
            shared.end(EndReason::AgentClosed(format!(
                "{why}; playing {queued} ms of queued audio, then hanging up"
            )));
            shared.playout.stop(Stop::Drain {
                until: Instant::now() + playout::DRAIN_LIMIT,
            });
        }
        PumpEnd::Failed(e) => {
            shared.end(EndReason::AgentClosed(format!(
                "{e}; playing queued audio, then hanging up"
            )));
            shared.playout.stop(Stop::Drain {
                until: Instant::now() + playout::DRAIN_LIMIT,
            });
        }
    }
    stats
}
