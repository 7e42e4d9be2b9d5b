//! The call's thread: the I/O around [`CallState`].
//!
//! It reads the UUID, puts the call on a playout clock and starts a short-lived thread that
//! connects to the agent. Then it sleeps in `poll(2)` on the AudioSocket, the agent's
//! WebSocket (once there is one) and the call's [`Bell`] (rung when the agent is connected,
//! when the clock has let go and when a shutdown hangs up), hands what it finds to the
//! state as events and carries out the actions it gets back: one wake-up per message, none
//! on a timer. At the end it tears the call down and logs its [`CallSummary`].

use std::collections::VecDeque;
use std::ffi::CString;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use serde_json::{json, Value};

use super::connector::Connector;
use super::live_calls::LiveCall;
use super::state::{Action, CallState, Event};
use super::summary::CallSummary;
use super::{CallContext, CallSlot};
use crate::agent::{Link, LinkEnd, LinkStats, Sent, StsError, Ws};
use crate::config::{PipelineConfig, UPSTREAM_SAMPLE_RATE};
use crate::pipeline::session::{Output, Pipeline, PipelineStats, SERVICE_HZ};
use crate::playout::{Playout, Stop};
use crate::proto::audiosocket::{self, FrameBuffer};
use crate::proto::sts::{init_message, ToAgent};
use crate::proto::sts_url::with_sample_rate;
use crate::sys::{poll, Bell};
use crate::webhook::{self, EventKind};

/// Send buffer asked for on each AudioSocket (the kernel doubles it): about 2 s of 8 kHz
/// audio. Asterisk reads every 20 ms, so it never needs more; with the default (autotuned
/// up to megabytes) a caller that stopped reading, or a host that vanished, would swallow
/// minutes of audio before the clock noticed it (`playout::WRITE_STALL`).
const AUDIOSOCKET_SEND_BUFFER: usize = 16 * 1024;

/// What one `read` of a caller whose stream cannot be framed any more discards at most.
const DISCARD_CHUNK: usize = 4096;

/// Bridges the call whose UUID was read at `started` (`frames` holds what followed it),
/// tears it down. Runs on the call's own thread.
pub fn run(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: &CallContext,
    slot: CallSlot,
    uuid: &str,
    frames: FrameBuffer,
    started: Instant,
) {
    let _ = stream.set_read_timeout(None);
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(&stream, AUDIOSOCKET_SEND_BUFFER);
    if let Ok(name) = CString::new(format!("call-{}", &uuid[..8])) {
        let _ = rustix::thread::set_name(&name);
    }
    ctx.metrics.calls_total.fetch_add(1, Relaxed);
    // A `/call` for this uuid chose the agent URL and the metadata for `init`.
    // A shared registry that cannot be asked must not cost the caller the call: it goes ahead
    // on the default agent, said once and counted.
    let entry = ctx.registry.take(uuid, started).unwrap_or_else(|why| {
        ctx.metrics
            .registry_errors_audiosocket
            .fetch_add(1, Relaxed);
        log::warn!("[{uuid}] No /call metadata: {why}; the call goes ahead on the default agent");
        None
    });
    let (sts_url, metadata, routed) = match entry {
        Some(entry) => (
            entry.sts_url,
            Some(Value::Object(entry.payload)),
            entry.overridden,
        ),
        None => (ctx.config.sts_url.clone(), None, false),
    };
    // An agent at another rate than the upstream contract's is told it (docs/sts.md §2.3).
    let sts_url = match ctx.config.sts_sample_rate {
        _ if sts_url.is_empty() => sts_url,
        UPSTREAM_SAMPLE_RATE => sts_url,
        rate => with_sample_rate(&sts_url, rate),
    };
    log::info!(
        "[{uuid}] Call started from {peer}{}",
        match (metadata.is_some(), routed) {
            (true, true) => " (with /call metadata, routed by call_initiated)",
            (true, false) => " (with /call metadata)",
            _ => "",
        }
    );
    emit(ctx, uuid, EventKind::CallStarted);

    let stream = Arc::new(stream);
    let Some((bell, playout)) = join_clock(ctx, uuid, &stream) else {
        emit(ctx, uuid, EventKind::CallEnded);
        return;
    };
    let live = Arc::new(LiveCall::new(bell.clone()));
    ctx.live.add(&live);
    // Pipeline mode: the services are reached by the pipeline's own threads. A call that
    // `call_initiated` routed to an STS agent goes there instead.
    let (connector, pipeline) = match &ctx.config.pipeline {
        Some(config) if sts_url.is_empty() => (None, start_pipeline(uuid, config, started)),
        _ => (Connector::start(ctx, uuid, sts_url, &bell), None),
    };

    let mut bridge = Bridge {
        uuid,
        ctx,
        stream: &stream,
        bell: &bell,
        live: &live,
        playout: &playout,
        frames,
        state: CallState::new(uuid, ctx.config.audio_codec, started)
            .with_agent_rate(match pipeline {
                Some(_) => SERVICE_HZ,
                None => ctx.config.sts_sample_rate,
            })
            .with_idle_timeout(ctx.config.caller_idle_timeout),
        actions: VecDeque::new(),
        link: None,
        init: init_message(uuid, metadata.as_ref()),
        link_stats: LinkStats::default(),
        connector,
        pipeline,
        outputs: Vec::new(),
    };
    if bridge.connector.is_none() && bridge.pipeline.is_none() {
        // Out of threads (TasksMax, ulimit -u): hang up now rather than bridge half a call.
        bridge.feed(Event::AgentThreadFailed);
    }
    bridge.run();

    // Teardown: nothing more to Asterisk, then the agent.
    playout.stop(Stop::Quiet);
    let clock = ctx.clocks.remove(&playout);
    let (state, link, pipeline) = bridge.close_agent();
    ctx.metrics
        .playout_underruns
        .fetch_add(clock.underruns, Relaxed);
    ctx.metrics
        .playout_late_slots
        .fetch_add(clock.late_slots, Relaxed);

    // Every thread is joined: the place is free before anyone reads that the call ended.
    drop(slot);
    let summary = CallSummary {
        duration: started.elapsed(),
        reason: state.end_reason().cloned(),
        codec: state.codec(),
        caller_hz: state.caller_hz(),
        frames_in: state.frames_in(),
        clock,
        link,
        pipeline,
    };
    log::info!("[{uuid}] {summary}");
    emit(ctx, uuid, EventKind::CallEnded);
}

/// Starts the call's pipeline; `None` (logged) if it cannot: the call then hangs up.
fn start_pipeline(
    uuid: &str,
    config: &Arc<PipelineConfig>,
    started: Instant,
) -> Option<Box<Pipeline>> {
    log::info!(
        "[{uuid}] Pipeline mode: speech-to-text {}",
        crate::config::mask_url(&config.asr_url.url)
    );
    match Pipeline::start(uuid, config.clone(), started) {
        Ok(pipeline) => Some(Box::new(pipeline)),
        Err(e) => {
            log::error!("[{uuid}] Cannot start the call's pipeline threads: {e}");
            None
        }
    }
}

/// Puts the call on a playout clock, with the bell the clock rings when it lets go. If
/// avr-core cannot (no eventfd, no clock), the caller gets a hangup and `None` comes back.
fn join_clock(
    ctx: &CallContext,
    uuid: &str,
    stream: &Arc<TcpStream>,
) -> Option<(Arc<Bell>, Arc<Playout>)> {
    let ambient = ctx.ambient.clone();
    let setup = Bell::new().map(Arc::new).and_then(|bell| {
        let playout = ctx.clocks.add(stream.clone(), ambient, bell.clone())?;
        Ok((bell, playout))
    });
    match setup {
        Ok(v) => Some(v),
        Err(e) => {
            log::error!(
                "[{uuid}] Call ending: avr-core could not carry the call (no wake-up eventfd \
                 or playout clock: {e}); hanging up"
            );
            let _ = (&**stream).write_all(&audiosocket::HANGUP);
            None
        }
    }
}

/// A call event without a payload.
fn emit(ctx: &CallContext, uuid: &str, kind: EventKind) {
    ctx.events.emit(webhook::Event::new(uuid, kind, json!({})));
}

/// The call's thread after the UUID: what it polls, and the state it feeds.
struct Bridge<'a> {
    uuid: &'a str,
    ctx: &'a CallContext,
    stream: &'a TcpStream,
    bell: &'a Bell,
    live: &'a LiveCall,
    playout: &'a Playout,
    frames: FrameBuffer,
    state: CallState,
    /// What the state asked for and is not done yet; kept between events so its memory is
    /// reused.
    actions: VecDeque<Action>,
    /// The agent is being reached.
    connector: Option<Connector>,
    /// The agent is connected.
    link: Option<Box<Link>>,
    /// Sent first once connected (moved into the link then; an agent reached after the
    /// caller left still gets it in `close_agent`).
    init: String,
    /// What a link that is gone carried.
    link_stats: LinkStats,
    /// Pipeline mode: the agent side instead of `connector` and `link`.
    pipeline: Option<Box<Pipeline>>,
    /// What the pipeline said and the state has not been told yet; kept for its memory.
    outputs: Vec<Output>,
}

impl Bridge<'_> {
    /// The call is over: closes the agent's side properly (one reached after the caller
    /// left still gets `init`, then a close). Returns the state and what the link carried.
    fn close_agent(self) -> (CallState, LinkStats, Option<PipelineStats>) {
        let mut link_stats = self.link_stats;
        let pipeline = self.pipeline.map(|p| p.close());
        if let Some(link) = self.link {
            link_stats = link.stats;
            link.close();
        } else if let Some(connector) = self.connector {
            if let Some(ws) = connector.finish() {
                if let Ok(link) = Link::new(ws, self.init) {
                    link.close();
                }
            }
        }
        (self.state, link_stats, pipeline)
    }

    fn run(&mut self) {
        while !self.state.is_over() {
            let timeout = match self.state.deadline() {
                Some(by) => {
                    let left = by.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        self.feed(Event::DeadlinePassed);
                        continue;
                    }
                    Some(left)
                }
                None => None,
            };
            let [caller, bell, agent] = match self.wait(timeout) {
                Ok(revents) => revents,
                Err(e) => {
                    self.feed(Event::PollFailed(e));
                    continue;
                }
            };
            if !bell.is_empty() {
                self.bell.clear();
                self.on_bell();
            }
            if !agent.is_empty() {
                self.on_agent_ready(agent);
            }
            if !caller.is_empty() && !self.state.is_over() {
                self.on_caller_ready();
            }
        }
    }

    /// Sleeps until the caller, the bell or the agent's link is ready, or `timeout`;
    /// returns what each of the three is ready for (nothing for a link that is not there).
    fn wait(&self, timeout: Option<Duration>) -> std::io::Result<[PollFlags; 3]> {
        let caller = PollFd::new(self.stream, PollFlags::IN);
        let bell = PollFd::new(self.bell, PollFlags::IN);
        let agent = match (&self.link, &self.pipeline) {
            (Some(link), _) => Some(PollFd::from_borrowed_fd(link.fd(), link.interest())),
            (None, Some(pipeline)) => Some(PollFd::new(&**pipeline, PollFlags::IN)),
            (None, None) => None,
        };
        Ok(match agent {
            Some(agent) => {
                let mut fds = [caller, bell, agent];
                poll(&mut fds, timeout)?;
                fds.map(|fd| fd.revents())
            }
            None => {
                let mut fds = [caller, bell];
                poll(&mut fds, timeout)?;
                let [caller, bell] = fds.map(|fd| fd.revents());
                [caller, bell, PollFlags::empty()]
            }
        })
    }

    /// Hands `event` to the state, then carries out what it asks.
    fn feed(&mut self, event: Event<'_>) {
        self.state.handle(event, Instant::now(), &mut self.actions);
        self.execute();
    }

    /// Carries out the pending actions in order. Those that report back feed the state,
    /// whose actions join the end of the queue.
    fn execute(&mut self) {
        while let Some(action) = self.actions.pop_front() {
            match action {
                Action::ToAgent(item) => self.send(item),
                Action::Play(pcm) => {
                    let refused = self.playout.play(&pcm, Instant::now());
                    // Playout copied it; the link decodes the next message into it.
                    if let Some(link) = self.link.as_mut() {
                        link.recycle(pcm);
                    }
                    if refused > 0 {
                        self.feed(Event::PlayoutFull);
                    }
                }
                Action::PlayLast(pcm) => {
                    if self.playout.play_last(&pcm, Instant::now()) > 0 {
                        self.feed(Event::PlayoutFull);
                    }
                }
                Action::SetPlayoutRate(rate_hz) => self.playout.set_rate(rate_hz),
                Action::InterruptPlayout => {
                    let dropped_ms = self.playout.interrupt();
                    self.feed(Event::PlayoutInterrupted { dropped_ms });
                }
                Action::StopPlayout(stop) => self.playout.stop(stop),
                Action::Emit(event) => self.ctx.events.emit(event),
                Action::CountConnectFailure => {
                    self.ctx.metrics.sts_connect_failures.fetch_add(1, Relaxed);
                }
                Action::CloseCaller => {
                    let _ = self.stream.shutdown(Shutdown::Both);
                }
            }
        }
    }

    /// Sends caller audio or a digit to the agent, if it is still there.
    fn send(&mut self, item: ToAgent) {
        if let Some(pipeline) = self.pipeline.as_mut() {
            let mut outputs = std::mem::take(&mut self.outputs);
            let playing = self.playout.queued_ms() > 0;
            pipeline.send(item, playing, &mut outputs);
            return self.on_outputs(outputs);
        }
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let sent = link.send(&item);
        // Its buffer takes the next caller frame.
        if let ToAgent::Audio(pcm) = item {
            self.state.recycle(pcm);
        }
        match sent {
            Ok(Sent::Queued) => {}
            Ok(Sent::Dropped) => self.feed(Event::AgentNotReading),
            Err(e) => self.agent_gone(LinkEnd::Failed(e)),
        }
    }

    /// A shutdown asked to hang up, the connect thread finished, or the clock let go.
    fn on_bell(&mut self) {
        if self.live.hang_up_asked() {
            self.feed(Event::Shutdown);
        }
        if let Some(result) = self.connector.as_ref().and_then(Connector::result) {
            if let Some(connector) = self.connector.take() {
                connector.join();
            }
            self.on_connected(result);
        }
        if let Some(finished) = self.playout.finished() {
            self.feed(Event::PlayoutFinished(finished));
        }
    }

    fn on_connected(&mut self, result: Result<Ws, StsError>) {
        let ws = match result {
            Ok(ws) => ws,
            Err(e) => return self.feed(Event::AgentUnreachable(e.to_string())),
        };
        log::info!("[{}] Connected to STS", self.uuid);
        let init = std::mem::take(&mut self.init);
        match Link::new(ws, init) {
            Ok(link) => self.link = Some(Box::new(link)),
            Err(e) => return self.agent_gone(LinkEnd::Failed(e)),
        }
        // What the agent sent right behind its handshake response may already sit in
        // tungstenite's buffer, where poll(2) cannot see it.
        self.on_agent_ready(PollFlags::IN);
        if self.link.is_some() {
            self.feed(Event::AgentConnected);
        }
    }

    /// What the pipeline said, to the state in order.
    fn on_outputs(&mut self, mut outputs: Vec<Output>) {
        for output in outputs.drain(..) {
            match output {
                Output::Connected => self.feed(Event::AgentConnected),
                Output::Unreachable(why) => self.feed(Event::AgentUnreachable(why)),
                Output::Failed(why) => {
                    let queued_ms = self.playout.queued_ms();
                    self.feed(Event::ServiceFailed { why, queued_ms });
                }
                Output::Message(msg) => self.feed(Event::AgentMessage(msg)),
            }
        }
        self.outputs = outputs;
    }

    /// The agent's socket (or the pipeline's bell) is ready: flush, then take every message
    /// it has.
    fn on_agent_ready(&mut self, revents: PollFlags) {
        if let Some(pipeline) = self.pipeline.as_mut() {
            let mut outputs = std::mem::take(&mut self.outputs);
            let playing = self.playout.queued_ms() > 0;
            pipeline.on_ready(playing, Instant::now(), &mut outputs);
            return self.on_outputs(outputs);
        }
        let Some(link) = self.link.as_mut() else {
            return;
        };
        match link.on_ready(revents) {
            Ok(true) => {}
            Ok(false) => return,
            Err(end) => return self.agent_gone(end),
        }
        while let Some(link) = self.link.as_mut() {
            match link.receive() {
                Ok(Some(msg)) => self.feed(Event::AgentMessage(msg)),
                Ok(None) => return,
                Err(end) => return self.agent_gone(end),
            }
        }
    }

    /// The agent is gone: the state has what it already sent played, then hangs up.
    fn agent_gone(&mut self, end: LinkEnd) {
        if let Some(link) = self.link.take() {
            self.link_stats = link.stats;
        }
        let queued_ms = self.playout.queued_ms();
        self.feed(Event::AgentEnded { end, queued_ms });
    }

    /// Reads what Asterisk sent and hands every whole frame to the state.
    fn on_caller_ready(&mut self) {
        let read = if self.state.reads_frames() {
            self.frames.read_from(&mut &*self.stream)
        } else {
            let mut sink = [0u8; DISCARD_CHUNK];
            (&mut &*self.stream).read(&mut sink)
        };
        match read {
            Ok(0) => {
                let unfinished = self.frames.buffered();
                self.feed(Event::CallerClosed { unfinished });
            }
            Ok(_) => self.on_frames(),
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::WouldBlock) => {}
            Err(e) => self.feed(Event::CallerReadFailed(e)),
        }
    }

    fn on_frames(&mut self) {
        let now = Instant::now();
        while self.state.reads_frames() && !self.state.is_over() {
            match self.frames.next_frame() {
                Ok(Some(frame)) => {
                    self.state
                        .handle(Event::CallerFrame(frame), now, &mut self.actions)
                }
                Ok(None) => return,
                Err(e) => self
                    .state
                    .handle(Event::CallerUnframable(e), now, &mut self.actions),
            }
            self.execute();
        }
    }
}
