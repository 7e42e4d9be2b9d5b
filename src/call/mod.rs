//! One call: its thread, its lifecycle and its teardown.
//!
//! ```text
//! Asterisk ──TCP──> [call thread] ─────────────WebSocket──> agent
//! Asterisk <──TCP── [clock] <─Playout── [call thread] <──WebSocket── agent
//! ```
//! The call's thread (spawned by the listener) reads the UUID, puts the call on a playout
//! clock (shared by many calls, see [`crate::playout::clock`]) and starts a short-lived thread that
//! connects to the agent. Then it sleeps in `poll(2)` on the AudioSocket, the WebSocket and
//! the call's [`Bell`] (rung when the agent is connected and when the clock has hung up),
//! forwarding each caller frame the moment it arrives and each agent message the moment it
//! lands: one wake-up per message, none on a timer. Every way a call can end sets one
//! [`EndReason`] (the first wins) and logs one line saying why.

pub mod listener;

use std::ffi::CString;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use rustix::event::{poll, PollFd, PollFlags};
use serde_json::{json, Value};

use crate::agent::sts::{self, Backlog, Link, LinkEnd, StsError, Ws};
use crate::config::{CodecChoice, Config};
use crate::metrics::Metrics;
use crate::playout::clock::{Clocks, Finished, Playout};
use crate::playout::{self, Ambient, Stop};
use crate::proto::audiosocket::{self, Frame, FrameBuffer};
use crate::proto::g711::{self, Codec, Detector};
use crate::proto::sts::{self as messages, FromAgent, ToAgent};
use crate::registry::Registry;
use crate::sys::lock;
use crate::sys::Bell;
use crate::webhook::{Event, EventKind, Webhooks};

/// How long a new connection may take to send its UUID (SPEC §3).
pub const UUID_TIMEOUT: Duration = Duration::from_secs(5);

/// After avr-core hangs up, how long Asterisk gets to close its side.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Stack of each per-call thread. Touched pages only count towards RSS.
pub const THREAD_STACK: usize = 256 * 1024;

/// Send buffer asked for on each AudioSocket (the kernel doubles it): about 2 s of 8 kHz
/// audio. Asterisk reads every 20 ms, so it never needs more; with the default (autotuned
/// up to megabytes) a caller that stopped reading, or a host that vanished, would swallow
/// minutes of audio before the clock noticed it (`clock::WRITE_STALL`).
const AUDIOSOCKET_SEND_BUFFER: usize = 16 * 1024;

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
    /// The playout clocks every call's audio to Asterisk is written by.
    pub clocks: Clocks,
}

/// The calls in progress, so a shutdown can hang up those that outlive the grace period.
#[derive(Default)]
pub struct LiveCalls {
    calls: Mutex<Vec<Weak<Shared>>>,
}

impl LiveCalls {
    fn add(&self, call: &Arc<Shared>) {
        let mut calls = lock(&self.calls);
        calls.retain(|c| c.strong_count() > 0);
        calls.push(Arc::downgrade(call));
    }

    /// Hangs up every call in progress (`00 00 00`, so each dialplan continues); returns
    /// how many there were.
    pub fn hang_up_all(&self) -> usize {
        let calls: Vec<Arc<Shared>> = lock(&self.calls)
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

/// What the call's thread and the shutdown path share.
struct Shared {
    uuid: String,
    playout: Arc<Playout>,
    end: Mutex<Option<EndReason>>,
}

impl Shared {
    /// Records why the call ends; the first reason wins and is logged once.
    fn end(&self, reason: EndReason) {
        let mut end = lock(&self.end);
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
    let mut frames = FrameBuffer::new(audiosocket::MAX_PAYLOAD);
    let uuid = match read_uuid(&stream, &mut frames) {
        Ok(bytes) => audiosocket::CallId::from_bytes(bytes).to_string(),
        Err(why) => {
            log::warn!("AudioSocket connection from {peer} closed: {why}");
            return;
        }
    };
    let _ = stream.set_read_timeout(None);
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(&stream, AUDIOSOCKET_SEND_BUFFER);
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

    let stream = Arc::new(stream);
    let ambient = ctx.ambient.as_ref().map(Ambient::cursor);
    let setup = Bell::new().map(Arc::new).and_then(|bell| {
        let playout = ctx.clocks.add(stream.clone(), ambient, bell.clone())?;
        Ok((bell, playout))
    });
    let (bell, playout) = match setup {
        Ok(v) => v,
        Err(e) => {
            log::error!(
                "[{uuid}] Call ending: avr-core could not carry the call (no wake-up eventfd \
                 or playout clock: {e}); hanging up"
            );
            let _ = (&*stream).write_all(&audiosocket::HANGUP);
            ctx.events
                .emit(Event::new(&uuid, EventKind::CallEnded, json!({})));
            return;
        }
    };
    let shared = Arc::new(Shared {
        uuid: uuid.clone(),
        playout,
        end: Mutex::new(None),
    });
    ctx.live.add(&shared);

    log::info!(
        "[{uuid}] Connecting to STS WebSocket: {}",
        crate::config::mask_url_password(&sts_url)
    );
    let (connected_tx, connected) = crossbeam_channel::bounded(1);
    let thread = spawn(&uuid, "sts", {
        let (timeout, tls, bell) = (
            ctx.config.sts_connect_timeout,
            ctx.tls.clone(),
            bell.clone(),
        );
        move || {
            let _ = connected_tx.send(sts::connect(&sts_url, timeout, &tls));
            bell.ring();
        }
    });
    let agent = if let Some(thread) = thread {
        AgentSide::Connecting(Connector {
            result: connected,
            thread,
        })
    } else {
        // Out of threads (TasksMax, ulimit -u): hang up now rather than bridge half a call.
        shared.end(EndReason::Internal(
            "cannot start the call's STS thread; raise TasksMax or lower MAX_CALLS".into(),
        ));
        shared.playout.stop(Stop::Hangup);
        AgentSide::Gone
    };

    let mut bridge = Bridge {
        shared: &shared,
        stream: &stream,
        bell: &bell,
        ctx,
        frames,
        agent,
        backlog: Backlog::default(),
        init: Some(messages::init_message(&uuid, metadata.as_ref())),
        link_stats: sts::LinkStats::default(),
        caller: CallerStats::new(&uuid, ctx.config.audio_codec),
        noted: Noted::default(),
        close_by: None,
        unparseable: false,
    };
    bridge.run();

    // Teardown: nothing more to Asterisk, then the agent.
    shared.playout.stop(Stop::Quiet);
    let clock_stats = ctx.clocks.remove(&shared.playout);
    let (frames_in, codec) = (bridge.caller.frames_in, bridge.caller.codec);
    let mut link_stats = bridge.link_stats;
    match std::mem::replace(&mut bridge.agent, AgentSide::Gone) {
        AgentSide::Up(link) => {
            link_stats = link.stats;
            link.close();
        }
        AgentSide::Connecting(connector) => {
            // The caller left first: the agent still gets `init` and a proper close.
            let result = connector.result.recv();
            let _ = connector.thread.join();
            if let Ok(Ok(ws)) = result {
                if let Some(init) = bridge.init.take() {
                    if let Ok(link) = Link::new(ws, init) {
                        link.close();
                    }
                }
            }
        }
        AgentSide::Gone => {}
    }
    drop(bridge);
    ctx.metrics
        .playout_underruns
        .fetch_add(clock_stats.underruns, Relaxed);
    ctx.metrics
        .playout_late_slots
        .fetch_add(clock_stats.late_slots, Relaxed);

    // Every thread is joined: the place is free before anyone reads that the call ended.
    drop(slot);
    let reason = lock(&shared.end)
        .clone()
        .map(|r| r.to_string())
        .unwrap_or_else(|| "unknown".into());
    log::info!(
        "[{uuid}] Call ended after {:.1} s: {reason}; codec {}, frames in {}, frames out {} \
         ({} agent, {} underruns, {} late slots skipped), audio messages to agent {} ({} \
         dropped: agent not reading), messages from agent {}",
        started.elapsed().as_secs_f64(),
        codec.map(|c| c.name()).unwrap_or("none"),
        frames_in,
        clock_stats.frames_out,
        clock_stats.agent_frames,
        clock_stats.underruns,
        clock_stats.late_slots,
        link_stats.audio_sent,
        link_stats.dropped_for_backpressure,
        link_stats.messages_received,
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

/// The agent side of a call.
enum AgentSide {
    /// The connect thread is at work.
    Connecting(Connector),
    Up(Box<Link>),
    /// Never reached, closed or failed: caller audio has nowhere to go.
    Gone,
}

/// The short-lived thread that connects to the agent: it sends its result, then rings the
/// call's bell. Joined as soon as the result is in, so its stack is not kept for the call.
struct Connector {
    result: Receiver<Result<Ws, StsError>>,
    thread: thread::JoinHandle<()>,
}

/// The caller's stream as the call's thread has seen it so far.
struct CallerStats {
    frames_in: u64,
    codec: Option<Codec>,
    /// Still deciding the codec (`AUDIO_CODEC=auto`).
    detector: Option<Detector>,
}

impl CallerStats {
    fn new(uuid: &str, choice: CodecChoice) -> CallerStats {
        let forced = match choice {
            CodecChoice::Auto => {
                return CallerStats {
                    frames_in: 0,
                    codec: None,
                    detector: Some(Detector::new()),
                }
            }
            CodecChoice::Ulaw => Codec::Ulaw,
            CodecChoice::Alaw => Codec::Alaw,
            CodecChoice::Slin => Codec::Slin,
        };
        log::info!(
            "[{uuid}] Audio codec forced by AUDIO_CODEC: {}",
            forced.name()
        );
        CallerStats {
            frames_in: 0,
            codec: Some(forced),
            detector: None,
        }
    }

    /// The codec of this frame: the detector's guess until it has decided.
    fn codec_of(&mut self, uuid: &str, payload: &[u8]) -> Codec {
        match (&mut self.detector, self.codec) {
            (Some(det), _) => {
                let guess = det.observe(payload);
                if let Some(decided) = det.decided() {
                    log::info!("[{uuid}] Audio codec detected: {}", decided.name());
                    self.codec = Some(decided);
                    self.detector = None;
                }
                guess
            }
            (None, Some(c)) => c,
            (None, None) => Codec::Slin,
        }
    }
}

/// Which oddities of the call were already logged (once per call each).
#[derive(Default)]
struct Noted {
    wideband: bool,
    unknown: bool,
    malformed: bool,
    second_uuid: bool,
    backlog: bool,
    backpressure: bool,
    agent_unknown: bool,
    agent_invalid: bool,
    agent_odd: bool,
    agent_full: bool,
}

/// The call's thread after the UUID: everything it polls and what it knows.
struct Bridge<'a> {
    shared: &'a Shared,
    stream: &'a TcpStream,
    bell: &'a Bell,
    ctx: &'a CallContext,
    frames: FrameBuffer,
    agent: AgentSide,
    /// Caller audio and DTMF waiting for the agent to answer.
    backlog: Backlog,
    /// Sent first once connected.
    init: Option<String>,
    /// What a link that is gone carried.
    link_stats: sts::LinkStats,
    caller: CallerStats,
    noted: Noted,
    /// The clock has let go (hung up or failed): Asterisk has until then to close.
    close_by: Option<Instant>,
    /// The caller's stream can no longer be framed: read and discard until it closes.
    unparseable: bool,
}

/// The caller's side is over.
struct CallerGone;

impl Bridge<'_> {
    fn run(&mut self) {
        loop {
            let timeout = match self.close_by {
                Some(by) => {
                    let left = by.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        // Asterisk did not close after the hangup: close for it.
                        let _ = self.stream.shutdown(Shutdown::Both);
                        return;
                    }
                    rustix::event::Timespec::try_from(left).ok()
                }
                None => None,
            };
            let (caller, bell, agent) = {
                let mut fds = [
                    PollFd::new(self.stream, PollFlags::IN),
                    PollFd::new(self.bell, PollFlags::IN),
                    PollFd::new(self.stream, PollFlags::empty()),
                ];
                let mut watched = 2;
                if let AgentSide::Up(link) = &self.agent {
                    fds[2] = PollFd::from_borrowed_fd(link.fd(), link.interest());
                    watched = 3;
                }
                match poll(&mut fds[..watched], timeout.as_ref()) {
                    Ok(_) => {}
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => {
                        self.shared
                            .end(EndReason::Internal(format!("poll failed: {e}")));
                        return;
                    }
                }
                (fds[0].revents(), fds[1].revents(), fds[2].revents())
            };
            if !bell.is_empty() {
                self.bell.clear();
                self.on_bell();
            }
            if !agent.is_empty() {
                self.on_agent_ready(agent);
            }
            if !caller.is_empty() && self.on_caller_ready().is_err() {
                return;
            }
        }
    }

    /// The connect thread finished, or the clock let go of the call.
    fn on_bell(&mut self) {
        if let AgentSide::Connecting(connector) = &self.agent {
            if let Ok(result) = connector.result.try_recv() {
                if let AgentSide::Connecting(c) =
                    std::mem::replace(&mut self.agent, AgentSide::Gone)
                {
                    let _ = c.thread.join();
                }
                self.on_connected(result);
            }
        }
        if self.close_by.is_none() {
            if let Some(finished) = self.shared.playout.finished() {
                if let Finished::WriteFailed(kind, why) = finished {
                    // A reset or broken pipe is the caller leaving; the read says so.
                    if !matches!(kind, ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) {
                        self.shared.end(EndReason::WriteFailed(why));
                    }
                }
                self.close_by = Some(Instant::now() + CLOSE_WAIT);
            }
        }
    }

    fn on_connected(&mut self, result: Result<Ws, StsError>) {
        let uuid = &self.shared.uuid;
        let ws = match result {
            Ok(ws) => ws,
            Err(e) => {
                self.ctx.metrics.sts_connect_failures.fetch_add(1, Relaxed);
                self.shared.end(EndReason::AgentUnreachable(e.to_string()));
                self.shared.playout.stop(Stop::Hangup);
                self.agent = AgentSide::Gone;
                return;
            }
        };
        log::info!("[{uuid}] Connected to STS");
        let init = self.init.take().unwrap_or_default();
        match Link::new(ws, init) {
            Ok(link) => self.agent = AgentSide::Up(Box::new(link)),
            Err(e) => return self.agent_gone(LinkEnd::Failed(e)),
        }
        // What the agent sent right behind its handshake response may already sit in
        // tungstenite's buffer, where poll(2) cannot see it.
        self.on_agent_ready(PollFlags::IN);
        if !matches!(self.agent, AgentSide::Up(_)) {
            return;
        }
        let backlog: Vec<ToAgent> = self.backlog.drain().collect();
        for item in backlog {
            self.forward(item);
        }
    }

    fn on_agent_ready(&mut self, revents: PollFlags) {
        let AgentSide::Up(link) = &mut self.agent else {
            return;
        };
        let (shared, events, noted) = (self.shared, &self.ctx.events, &mut self.noted);
        if let Some(end) =
            link.on_ready(revents, |msg| on_agent_message(shared, events, noted, msg))
        {
            self.agent_gone(end);
        }
    }

    /// The agent is gone: what it already sent is played (at most `DRAIN_LIMIT`), then the
    /// clock hangs up so the dialplan continues.
    fn agent_gone(&mut self, end: LinkEnd) {
        if let AgentSide::Up(link) = std::mem::replace(&mut self.agent, AgentSide::Gone) {
            self.link_stats = link.stats;
        }
        let why = match end {
            LinkEnd::AgentClosed(why) => {
                let queued = self.shared.playout.lock().audio.len() / 16;
                format!("{why}; playing {queued} ms of queued audio, then hanging up")
            }
            LinkEnd::Failed(e) => format!("{e}; playing queued audio, then hanging up"),
        };
        self.shared.end(EndReason::AgentClosed(why));
        self.shared.playout.stop(Stop::Drain {
            until: Instant::now() + playout::DRAIN_LIMIT,
        });
    }

    /// Sends caller audio or a digit to the agent, or keeps it until the agent answers.
    fn forward(&mut self, item: ToAgent) {
        let uuid = &self.shared.uuid;
        match &mut self.agent {
            AgentSide::Up(link) => {
                let dropped = link.stats.dropped_for_backpressure;
                if let Err(e) = link.send(item) {
                    return self.agent_gone(LinkEnd::Failed(e));
                }
                if link.stats.dropped_for_backpressure > dropped
                    && !std::mem::replace(&mut self.noted.backpressure, true)
                {
                    log::warn!(
                        "[{uuid}] The agent is not reading caller audio (512 KiB unsent): \
                         dropping caller audio until it does (logged once per call)"
                    );
                }
            }
            AgentSide::Connecting(_) => {
                let pushed = self.backlog.push(item);
                if pushed.dropped_bytes > 0 && !std::mem::replace(&mut self.noted.backlog, true) {
                    log::warn!(
                        "[{uuid}] The agent is not connected yet: keeping the newest 1 s of \
                         caller audio, dropping older audio"
                    );
                }
            }
            AgentSide::Gone => {}
        }
    }

    /// Reads what Asterisk sent and handles every whole frame.
    fn on_caller_ready(&mut self) -> Result<(), CallerGone> {
        let read = if self.unparseable {
            let mut sink = [0u8; 4096];
            (&mut &*self.stream).read(&mut sink)
        } else {
            self.frames.read_from(&mut &*self.stream)
        };
        let why = match read {
            Ok(0) if self.frames.buffered() > 0 && !self.unparseable => format!(
                "Asterisk closed the connection mid-frame ({} bytes)",
                self.frames.buffered()
            ),
            Ok(0) => "Asterisk closed the connection".into(),
            Ok(_) => return self.on_frames(),
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::WouldBlock) => {
                return Ok(())
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => "connection reset".into(),
            Err(e) => format!("read failed: {e}"),
        };
        self.shared.end(EndReason::CallerHangup(why));
        Err(CallerGone)
    }

    fn on_frames(&mut self) -> Result<(), CallerGone> {
        if self.unparseable {
            return Ok(());
        }
        let uuid = &self.shared.uuid;
        loop {
            let frame = match self.frames.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.shared.end(EndReason::Protocol(e.to_string()));
                    self.shared.playout.stop(Stop::Hangup);
                    self.unparseable = true;
                    return Ok(());
                }
            };
            self.caller.frames_in += 1;
            let item = match frame {
                Frame::Audio {
                    rate_hz: 8000,
                    payload,
                } => {
                    let codec = self.caller.codec_of(uuid, payload);
                    // Asterisk reads len/2 samples; a stray odd byte would shift every sample after it.
                    let payload = match codec {
                        Codec::Slin => &payload[..payload.len() & !1],
                        _ => payload,
                    };
                    let mut pcm = Vec::with_capacity(payload.len() * 2);
                    g711::decode_into(codec, payload, &mut pcm);
                    ToAgent::Audio(pcm)
                }
                Frame::Audio { rate_hz, .. } => {
                    if !std::mem::replace(&mut self.noted.wideband, true) {
                        log::warn!(
                            "[{uuid}] Ignoring {rate_hz} Hz audio: only 8 kHz (kind 0x10) is \
                             supported; use c(slin) in the dialplan"
                        );
                    }
                    continue;
                }
                Frame::Dtmf(digit) => {
                    log::info!("[{uuid}] DTMF digit: {digit}");
                    self.ctx.events.emit(Event::new(
                        uuid,
                        EventKind::DtmfDigit,
                        json!({"digit": digit.to_string()}),
                    ));
                    ToAgent::Dtmf(digit)
                }
                Frame::Hangup => {
                    self.shared.end(EndReason::CallerHangup(
                        "Asterisk sent a hangup frame".into(),
                    ));
                    return Err(CallerGone);
                }
                Frame::Error(code) => {
                    self.shared.end(EndReason::CallerHangup(format!(
                        "Asterisk sent an error frame {code:02x?}"
                    )));
                    return Err(CallerGone);
                }
                Frame::Uuid(_) => {
                    if !std::mem::replace(&mut self.noted.second_uuid, true) {
                        log::warn!("[{uuid}] Ignoring a second UUID frame");
                    }
                    continue;
                }
                Frame::Unknown { kind, len } => {
                    if !std::mem::replace(&mut self.noted.unknown, true) {
                        log::warn!(
                            "[{uuid}] Ignoring AudioSocket frames of unknown kind 0x{kind:02x} \
                             ({len} bytes); logged once per call"
                        );
                    }
                    continue;
                }
                Frame::Malformed { kind, len, reason } => {
                    if !std::mem::replace(&mut self.noted.malformed, true) {
                        log::warn!(
                            "[{uuid}] Ignoring a malformed kind 0x{kind:02x} frame ({len} bytes: \
                             {reason}); logged once per call"
                        );
                    }
                    continue;
                }
            };
            self.forward(item);
        }
    }
}

/// One message from the agent.
fn on_agent_message(shared: &Shared, events: &Webhooks, noted: &mut Noted, msg: FromAgent) {
    let uuid = &shared.uuid;
    match msg {
        FromAgent::Audio {
            pcm,
            odd_byte_dropped,
        } => {
            if odd_byte_dropped && !std::mem::replace(&mut noted.agent_odd, true) {
                log::warn!(
                    "[{uuid}] The agent sent audio of odd length; dropped the stray byte \
                     (logged once per call)"
                );
            }
            let refused = shared.playout.lock().audio.push(&pcm, Instant::now());
            if refused > 0 && !std::mem::replace(&mut noted.agent_full, true) {
                log::warn!(
                    "[{uuid}] The agent sent more than {} s of audio ahead of playback; \
                     dropping the excess",
                    playout::MAX_QUEUED_BYTES / 16_000
                );
            }
        }
        FromAgent::Interruption => {
            let dropped = shared.playout.lock().audio.clear();
            log::info!(
                "[{uuid}] Interruption: dropped {} ms of queued agent audio",
                dropped / 16
            );
            events.emit(Event::new(uuid, EventKind::Interruption, json!({})));
        }
        FromAgent::Transcript { role, text } => {
            log::info!("[{uuid}] [{role}]: {text}");
            events.emit(Event::new(
                uuid,
                EventKind::Transcription,
                json!({"role": role, "text": text}),
            ));
        }
        FromAgent::AgentError(message) => {
            log::warn!("[{uuid}] STS error: {message}");
        }
        FromAgent::Unknown(kind) => {
            if !std::mem::replace(&mut noted.agent_unknown, true) {
                log::warn!(
                    "[{uuid}] Ignoring STS messages of unknown type {kind:?} (logged once per call)"
                );
            }
        }
        FromAgent::Invalid(why) => {
            if !std::mem::replace(&mut noted.agent_invalid, true) {
                log::warn!(
                    "[{uuid}] Ignoring an unusable STS message: {why} (logged once per call)"
                );
            }
        }
    }
}
