//! The floor (issue #15 item 4): a minimal reference AudioSocket↔STS bridge built into the
//! benchmark, run under the same load as avr-core, so avr-core's CPU per call can be printed
//! as a ratio to what this work costs at the least on this kernel.
//!
//! It is a measuring stick, not a design to adopt: one thread, one epoll, one timerfd for
//! every call; the same message pattern as avr-core (AudioSocket frame in → one JSON/base64
//! WebSocket text message out; agent audio message in → queued, one 320-byte frame out per
//! 20 ms tick, a talk spurt starting once 60 ms are queued), and nothing else: no webhooks, no
//! logs, no silence frames, no resampling, no thread per call.
//!
//! Sockets are edge-triggered and registered once for reading and writing, so the loop never
//! calls `epoll_ctl` after setup: a socket is read until it would block (a short read counts,
//! see [`Socket`]), and written to again on its next writable edge only while bytes wait.
//! The playout timer is periodic, so ticks stay on one 20 ms grid; a wake-up later than a
//! whole tick still plays one frame per call (the slot is skipped, not sent late in a burst),
//! as avr-core's clocks do.
//!
//! Where its time goes (250 calls, 10 s): ~80 % in the kernel (loopback TCP: one WebSocket
//! send per caller frame, one write per played frame, the reads), so the floor is close to
//! the syscalls the message pattern needs. Nothing is allocated per frame.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use avr_core::proto::audiosocket::{
    CallId, Frame, FrameBuffer, HEADER_LEN, KIND_AUDIO, SLIN_FRAME_BYTES,
};
use avr_core::proto::sts::{init_message, write_audio_message};
use avr_core::sys::Bell;
use avr_core::tools::echo_sts::{EchoOptions, EchoServer};
use avr_core::tools::simulate::{run_load, LoadOptions};
use base64::Engine as _;
use bytes::BytesMut;
use rustix::buffer::spare_capacity;
use rustix::event::epoll::{self, CreateFlags, Event, EventData, EventFlags};
use rustix::net::sockopt::socket_error;
use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
};
use serde::Deserialize;
use tungstenite::client::client_with_config;
use tungstenite::handshake::client::{ClientHandshake, Response};
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use crate::child::{cpu_percent, proc_ticks};
use crate::tap::{ms, pct, Tap};
use crate::{env_or, ECHO_DELAY};

/// Epoll data of the stop bell, the playout timer and the listener; a call `id` uses
/// `2·id` for its caller socket and `2·id + 1` for its agent socket.
const STOP: u64 = u64::MAX;
const TIMER: u64 = u64::MAX - 1;
const LISTENER: u64 = u64::MAX - 2;
/// Events taken per `epoll_wait`: a 20 ms tick at 1,000 calls wakes every socket at most
/// twice, so this many keeps wake-ups few and still sits on the thread's stack.
const MAX_EVENTS: usize = 1024;
/// The playout clock: Asterisk's ptime.
const TICK: Duration = Duration::from_millis(20);
/// One frame to the caller: header and 20 ms of 8 kHz slin.
const FRAME_LEN: usize = HEADER_LEN + SLIN_FRAME_BYTES;
/// Agent audio queued before a talk spurt's first frame: 60 ms, avr-core's rule
/// (docs/ARCHITECTURE.md §5).
const SPURT_START: usize = 3 * SLIN_FRAME_BYTES;
/// Largest caller payload accepted: a slin16..slin192 frame fits; the floor only forwards.
const MAX_CALLER_PAYLOAD: usize = 8 * 1024;
/// Agent messages are ~0.5-3 KiB; tungstenite's default read buffer is 128 KiB per socket.
const WS_READ_BUFFER: usize = 8 * 1024;
/// Played bytes are dropped from the front of a call's queue once this many have gathered:
/// one `copy_within` per ~1 s of audio rather than one per frame.
const COMPACT_AT: usize = 16 * 1024;
/// The agent URL's port when it names none (`ws://`).
const WS_PORT: u16 = 80;

/// The reference bridge, serving on its own thread until dropped.
pub struct Floor {
    addr: SocketAddr,
    /// The bridge thread's kernel id, for `/proc/self/task/<tid>/stat`.
    tid: i32,
    stop: Arc<Bell>,
    thread: Option<JoinHandle<()>>,
}

impl Floor {
    /// Starts the bridge's thread, pinned to `cpu` when given (sched_setaffinity on the
    /// thread, from inside it). `agent_url` is a `ws://host:port[/path]` STS agent; each call
    /// connects to it on its UUID frame.
    pub fn start(agent_url: &str, cpu: Option<usize>) -> io::Result<Floor> {
        let agent = Agent::resolve(agent_url)?;
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(Bell::new()?);
        let (ready_tx, ready_rx) = mpsc::channel();
        let bell = Arc::clone(&stop);
        let thread = thread::Builder::new().name("floor".into()).spawn(move || {
            let setup = pin(cpu).and_then(|()| Bridge::new(listener, &bell, agent));
            match setup {
                Ok(bridge) => {
                    let tid = rustix::thread::gettid().as_raw_nonzero().get();
                    let _ = ready_tx.send(Ok(tid));
                    bridge.run();
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })?;
        let tid = ready_rx
            .recv()
            .map_err(|_| io::Error::other("the floor's thread ended before it started"))??;
        Ok(Floor {
            addr,
            tid,
            stop,
            thread: Some(thread),
        })
    }

    /// Where callers connect (AudioSocket).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// utime + stime of the bridge's thread, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        proc_ticks(&format!("self/task/{}", self.tid))
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        self.stop.ring();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Pins the calling thread to `cpu`, if one is given.
fn pin(cpu: Option<usize>) -> io::Result<()> {
    cpu.map_or(Ok(()), crate::pin::pin_thread)
}

/// The agent every call connects to, resolved once.
struct Agent {
    url: String,
    addr: SocketAddr,
}

impl Agent {
    fn resolve(url: &str) -> io::Result<Agent> {
        let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{url}: {why}"));
        let uri: tungstenite::http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("ws") {
            return Err(bad("the floor speaks ws:// only"));
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let port = uri.port_u16().unwrap_or(WS_PORT);
        let addr = (host.trim_matches(['[', ']']), port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| bad("the host has no address"))?;
        Ok(Agent {
            url: url.to_owned(),
            addr,
        })
    }
}

/// A call's WebSocket to the agent, from the TCP connect to open.
enum Link {
    /// Non-blocking connect in progress.
    Connecting(TcpStream),
    /// The HTTP upgrade, resumed on readiness.
    Upgrading(Box<MidHandshake<ClientHandshake<Socket>>>),
    Open(Box<WebSocket<Socket>>),
}

/// A non-blocking, edge-triggered socket that skips the read which would only say "would
/// block": a stream read that returns less than it was offered has emptied the kernel's
/// queue, and anything arriving later raises a new edge. That saves a syscall per wake-up
/// (tungstenite and the frame reader both read until `WouldBlock`).
struct Socket {
    stream: TcpStream,
    /// The last read was short: nothing to read until the next edge.
    drained: bool,
    /// Short reads are trusted on this edge. Not when it reports the peer's close: that
    /// edge is the last, so the reader must go on to see EOF itself.
    trust_short: bool,
}

impl Socket {
    fn new(stream: TcpStream) -> Socket {
        Socket {
            stream,
            drained: false,
            trust_short: false,
        }
    }

    /// An edge for this socket: its queue may hold bytes (or EOF) again.
    fn edge(&mut self, flags: EventFlags) {
        self.drained = false;
        self.trust_short = !flags.intersects(EventFlags::RDHUP | EventFlags::HUP | EventFlags::ERR);
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.drained {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let got = (&self.stream).read(buf);
        self.drained = self.trust_short && avr_core::sys::emptied_queue(buf.len(), &got);
        got
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&self.stream).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One call: the caller's socket, its agent link, the agent's audio waiting for its ticks.
struct Call {
    caller: Socket,
    frames: FrameBuffer,
    /// Bytes for the caller its socket has not taken yet; they go first, in order.
    caller_out: Vec<u8>,
    /// `None` until the UUID frame; then the link (taken out only while it changes state).
    link: Option<Link>,
    /// The call's id as text, for the agent's `init`.
    uuid: String,
    /// Caller audio that came before the agent link opened: sent on open, frame by frame.
    early: Vec<u8>,
    /// Agent audio: `play[played..]` waits for the clock.
    play: Vec<u8>,
    played: usize,
    /// In a talk spurt: a frame goes out every tick while whole frames are queued.
    playing: bool,
}

/// Which side ended a call.
#[derive(Debug, Clone, Copy)]
enum End {
    /// Hangup, EOF or a broken caller socket.
    Caller,
    /// The agent closed, or its link failed.
    Agent,
}

/// The agent message fields the floor looks at, borrowed from the text.
#[derive(Deserialize)]
struct AgentMessage<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(borrow)]
    audio: Option<&'a str>,
}

struct Bridge {
    epoll: OwnedFd,
    timer: OwnedFd,
    listener: TcpListener,
    agent: Agent,
    calls: HashMap<u64, Call>,
    next_id: u64,
    /// Reused: one caller frame, built per tick.
    frame: [u8; FRAME_LEN],
    /// Reused: calls that ended during a pass over all calls.
    ended: Vec<u64>,
    /// Reused: the room each caller frame's agent message is written into.
    out: BytesMut,
}

impl Bridge {
    fn new(listener: TcpListener, stop: &Bell, agent: Agent) -> io::Result<Bridge> {
        let epoll = epoll::create(CreateFlags::CLOEXEC)?;
        let timer = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
        )?;
        let tick = rustix::event::Timespec::try_from(TICK).map_err(|_| io::Error::other("tick"))?;
        timerfd_settime(
            &timer,
            TimerfdTimerFlags::empty(),
            &Itimerspec {
                it_interval: tick,
                it_value: tick,
            },
        )?;
        epoll::add(&epoll, stop, EventData::new_u64(STOP), EventFlags::IN)?;
        epoll::add(&epoll, &timer, EventData::new_u64(TIMER), EventFlags::IN)?;
        epoll::add(
            &epoll,
            &listener,
            EventData::new_u64(LISTENER),
            EventFlags::IN,
        )?;
        let mut frame = [0u8; FRAME_LEN];
        frame[0] = KIND_AUDIO;
        frame[1..HEADER_LEN].copy_from_slice(&(SLIN_FRAME_BYTES as u16).to_be_bytes());
        Ok(Bridge {
            epoll,
            timer,
            listener,
            agent,
            calls: HashMap::new(),
            next_id: 0,
            frame,
            ended: Vec::new(),
            out: BytesMut::new(),
        })
    }

    /// Serves until the stop bell rings; dropping the bridge closes every socket.
    fn run(mut self) {
        let mut events: Vec<Event> = Vec::with_capacity(MAX_EVENTS);
        loop {
            events.clear();
            match epoll::wait(&self.epoll, spare_capacity(&mut events), None) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => return,
            }
            for event in &events {
                match event.data.u64() {
                    STOP => return,
                    TIMER => self.tick(),
                    LISTENER => self.accept_all(),
                    key if key & 1 == 0 => self.caller_ready(key >> 1, event.flags),
                    key => self.agent_ready(key >> 1, event.flags),
                }
            }
        }
    }

    /// Accepts every waiting caller. The listener is level-triggered: a failed accept (out
    /// of descriptors) is tried again on the next wait, which the benchmark's raised limit
    /// keeps from happening.
    fn accept_all(&mut self) {
        while let Ok((caller, _)) = self.listener.accept() {
            let id = self.next_id;
            self.next_id += 1;
            let setup = caller
                .set_nonblocking(true)
                .and_then(|()| caller.set_nodelay(true))
                .and_then(|()| watch(&self.epoll, &caller, 2 * id).map_err(Into::into));
            if setup.is_err() {
                continue; // dropped: the caller sees the socket close
            }
            let call = Call {
                caller: Socket::new(caller),
                frames: FrameBuffer::new(MAX_CALLER_PAYLOAD),
                caller_out: Vec::new(),
                link: None,
                uuid: String::new(),
                early: Vec::new(),
                play: Vec::new(),
                played: 0,
                playing: false,
            };
            self.calls.insert(id, call);
        }
    }

    /// The 20 ms clock: one frame to every call with a whole frame queued, none to the others.
    fn tick(&mut self) {
        let mut expirations = [0u8; 8];
        let _ = rustix::io::read(&self.timer, &mut expirations);
        for (&id, call) in &mut self.calls {
            // A caller still holding bytes skips this slot (never a burst later).
            let queued = call.play.len() - call.played;
            if !call.caller_out.is_empty() || queued < SLIN_FRAME_BYTES {
                call.playing = false;
                continue;
            }
            // A talk spurt starts with SPURT_START queued, as avr-core's playout does: the
            // agent's just-in-time chunks then never miss a tick (the same jitter rule for
            // both, so the comparison is of cost alone).
            if !call.playing && queued < SPURT_START {
                continue;
            }
            call.playing = true;
            let from = call.played;
            self.frame[HEADER_LEN..].copy_from_slice(&call.play[from..from + SLIN_FRAME_BYTES]);
            call.played += SLIN_FRAME_BYTES;
            if call.played == call.play.len() {
                call.play.clear();
                call.played = 0;
            } else if call.played >= COMPACT_AT {
                call.play.drain(..call.played);
                call.played = 0;
            }
            if send_caller(call, &self.frame).is_err() {
                self.ended.push(id);
            }
        }
        while let Some(id) = self.ended.pop() {
            self.end(id, End::Caller);
        }
    }

    /// The caller's socket is readable, writable or closing.
    fn caller_ready(&mut self, id: u64, flags: EventFlags) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.caller.edge(flags);
        if flags.contains(EventFlags::OUT) && flush_caller(call).is_err() {
            return self.end(id, End::Caller);
        }
        if flags.intersects(EventFlags::IN | EventFlags::RDHUP | EventFlags::HUP | EventFlags::ERR)
        {
            if let Err(end) = self.read_caller(id) {
                self.end(id, end);
            }
        }
    }

    /// Reads the caller until its socket would block: the UUID opens the agent link, each
    /// audio frame becomes one agent message (all flushed together), a hangup or EOF ends.
    fn read_caller(&mut self, id: u64) -> Result<(), End> {
        let agent = &self.agent;
        let epoll = &self.epoll;
        let out = &mut self.out;
        let Some(call) = self.calls.get_mut(&id) else {
            return Ok(());
        };
        let mut ended = None;
        loop {
            match call.frames.read_from(&mut call.caller) {
                Ok(0) => {
                    ended = Some(End::Caller);
                    break;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(End::Caller),
            }
            loop {
                let frame = match call.frames.next_frame() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(_) => return Err(End::Caller),
                };
                match frame {
                    Frame::Uuid(bytes) if call.link.is_none() => {
                        call.uuid = CallId::from_bytes(bytes).to_string();
                        let stream =
                            connect(epoll, agent.addr, 2 * id + 1).map_err(|_| End::Agent)?;
                        call.link = Some(Link::Connecting(stream));
                    }
                    Frame::Audio { payload, .. } => match &mut call.link {
                        Some(Link::Open(ws)) => {
                            queue(ws, audio_text(out, payload)).map_err(|_| End::Agent)?
                        }
                        _ => call.early.extend_from_slice(payload),
                    },
                    Frame::Hangup | Frame::Error(_) => {
                        ended = Some(End::Caller);
                        break;
                    }
                    _ => {}
                }
            }
            if ended.is_some() {
                break;
            }
        }
        if let Some(Link::Open(ws)) = &mut call.link {
            flush(ws).map_err(|_| End::Agent)?;
        }
        ended.map_or(Ok(()), Err)
    }

    /// The agent's socket is ready: finish connecting, resume the upgrade, or read messages.
    fn agent_ready(&mut self, id: u64, flags: EventFlags) {
        let url = self.agent.url.as_str();
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let outcome = match call.link.take() {
            None => return,
            Some(Link::Connecting(stream)) => {
                if !flags.intersects(EventFlags::OUT | EventFlags::ERR | EventFlags::HUP) {
                    // Still connecting (SO_ERROR reads 0 then too): wait for the writable edge.
                    call.link = Some(Link::Connecting(stream));
                    return;
                }
                match socket_error(&stream) {
                    Ok(Ok(())) => {
                        let mut socket = Socket::new(stream);
                        socket.edge(flags);
                        upgraded(call, client_with_config(url, socket, Some(ws_config())))
                    }
                    _ => Err(End::Agent),
                }
            }
            Some(Link::Upgrading(mut mid)) => {
                mid.get_mut().get_mut().edge(flags);
                upgraded(call, mid.handshake())
            }
            Some(Link::Open(mut ws)) => {
                ws.get_mut().edge(flags);
                let result = read_agent(&mut ws, call);
                call.link = Some(Link::Open(ws));
                result
            }
        };
        if let Err(end) = outcome {
            self.end(id, end);
        }
    }

    /// Ends call `id`: when the caller left, a close frame to the agent (when the agent
    /// left, its socket has nothing more to take); then both sockets are closed, which takes
    /// them out of the epoll set.
    fn end(&mut self, id: u64, why: End) {
        let Some(call) = self.calls.remove(&id) else {
            return;
        };
        if let (End::Caller, Some(Link::Open(mut ws))) = (why, call.link) {
            let _ = ws.close(None);
            let _ = ws.flush();
        }
    }
}

/// A step of the upgrade has run; once open, sends `init` and the early caller audio.
fn upgraded(
    call: &mut Call,
    outcome: Result<(WebSocket<Socket>, Response), HandshakeError<ClientHandshake<Socket>>>,
) -> Result<(), End> {
    match outcome {
        Ok((ws, _)) => {
            let mut ws = Box::new(ws);
            queue(&mut ws, Message::text(init_message(&call.uuid, None)))
                .map_err(|_| End::Agent)?;
            let mut out = BytesMut::new();
            for pcm in call.early.chunks(SLIN_FRAME_BYTES) {
                queue(&mut ws, audio_text(&mut out, pcm)).map_err(|_| End::Agent)?;
            }
            call.early = Vec::new();
            flush(&mut ws).map_err(|_| End::Agent)?;
            // Anything the agent sent with its answer is already in tungstenite's buffer.
            let result = read_agent(&mut ws, call);
            call.link = Some(Link::Open(ws));
            result
        }
        Err(HandshakeError::Interrupted(mid)) => {
            call.link = Some(Link::Upgrading(Box::new(mid)));
            Ok(())
        }
        Err(HandshakeError::Failure(_)) => Err(End::Agent),
    }
}

/// Reads every agent message until the socket would block: audio is decoded onto the call's
/// queue, every other type ignored. Then flushes what tungstenite queued (pongs, close reply,
/// or bytes that waited for this writable edge).
fn read_agent(ws: &mut WebSocket<Socket>, call: &mut Call) -> Result<(), End> {
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => agent_audio(text.as_str(), &mut call.play),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => return Err(End::Agent),
        }
    }
    flush(ws).map_err(|_| End::Agent)
}

/// Appends the audio of an agent `audio` message to `play`. The echo agent's exact shape
/// (`sts::audio_message`) is matched without a parser; any other text goes through serde
/// with borrowed fields, so a field order or type the fast path does not know still works.
fn agent_audio(text: &str, play: &mut Vec<u8>) {
    const PREFIX: &str = r#"{"type":"audio","audio":""#;
    const SUFFIX: &str = r#""}"#;
    let b64 = match text
        .strip_prefix(PREFIX)
        .and_then(|t| t.strip_suffix(SUFFIX))
    {
        Some(b64) => b64,
        None => match serde_json::from_str::<AgentMessage>(text) {
            Ok(AgentMessage {
                kind: "audio",
                audio: Some(b64),
            }) => b64,
            _ => return,
        },
    };
    // Decoded in place at the queue's end; bad base64 adds nothing (`decode_vec` leaves
    // the room it made zeroed, so it is cut back).
    let before = play.len();
    if base64::engine::general_purpose::STANDARD
        .decode_vec(b64, play)
        .is_err()
    {
        play.truncate(before);
    }
}

/// Caller audio as the upstream contract's text message, written into `out`'s room: the
/// bytes go to tungstenite split off, not copied, and the next message reclaims the room
/// (as avr-core's `Link` does), so no allocation per frame.
fn audio_text(out: &mut BytesMut, pcm: &[u8]) -> Message {
    write_audio_message(pcm, out);
    match tungstenite::Utf8Bytes::try_from(out.split().freeze()) {
        Ok(text) => Message::Text(text),
        Err(_) => unreachable!("base64 in JSON is ASCII"),
    }
}

/// Queues one message; a socket that would block keeps it in tungstenite's buffer.
fn queue(ws: &mut WebSocket<Socket>, msg: Message) -> tungstenite::Result<()> {
    match ws.write(msg) {
        Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        other => other,
    }
}

/// Writes what tungstenite holds; what would block waits for the next writable edge.
fn flush(ws: &mut WebSocket<Socket>) -> tungstenite::Result<()> {
    match ws.flush() {
        Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        other => other,
    }
}

/// Writes `bytes` to the caller after anything still waiting; what the socket does not take
/// waits for its writable edge.
fn send_caller(call: &mut Call, bytes: &[u8]) -> io::Result<()> {
    if !call.caller_out.is_empty() {
        call.caller_out.extend_from_slice(bytes);
        return flush_caller(call);
    }
    loop {
        match call.caller.write(bytes) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                call.caller_out.extend_from_slice(&bytes[n..]);
                return flush_caller(call);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                call.caller_out.extend_from_slice(bytes);
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

fn flush_caller(call: &mut Call) -> io::Result<()> {
    while !call.caller_out.is_empty() {
        match call.caller.write(&call.caller_out) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                call.caller_out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Adds a socket edge-triggered for reading, writing and the peer's close.
fn watch(epoll: &OwnedFd, socket: &impl std::os::fd::AsFd, key: u64) -> rustix::io::Result<()> {
    epoll::add(
        epoll,
        socket,
        EventData::new_u64(key),
        EventFlags::IN | EventFlags::OUT | EventFlags::RDHUP | EventFlags::ET,
    )
}

/// Starts a non-blocking connect to the agent, watched under `key`.
fn connect(epoll: &OwnedFd, addr: SocketAddr, key: u64) -> io::Result<TcpStream> {
    let stream = avr_core::sys::connect_started(addr)?;
    watch(epoll, &stream, key)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(WS_READ_BUFFER)
}

/// Call counts of `AVR_BENCH_ONLY=floor` unless `AVR_BENCH_STEPS` says otherwise.
const FLOOR_STEPS: [usize; 2] = [50, 250];
/// Marked audio per call of those runs unless `AVR_BENCH_SECONDS` says otherwise.
const FLOOR_SECONDS: f64 = 10.0;

/// `AVR_BENCH_ONLY=floor`: the floor alone under the benchmark's callers and echo agent,
/// with its CPU over each run's steady state (as a step measures avr-core) and per call.
pub fn floor_bench() {
    let seconds: f64 = env_or("AVR_BENCH_SECONDS", FLOOR_SECONDS);
    let steps: Vec<usize> = std::env::var("AVR_BENCH_STEPS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| FLOOR_STEPS.to_vec());
    let opts = EchoOptions {
        delay: ECHO_DELAY,
        transcripts: true,
    };
    // The tap checks that `init` labels each call, and gives the caller→agent latency.
    let tap = Tap::default();
    let agent = EchoServer::start_with_tap(([127, 0, 0, 1], 0).into(), opts, tap.clone().into_fn())
        .expect("start the echo agent");
    let floor = Floor::start(&agent.url(), crate::pin::current().map(|p| p.server))
        .expect("start the floor");
    for calls in steps {
        let mut opts = LoadOptions::new(floor.addr(), calls, Duration::from_secs_f64(seconds));
        // As a step: 2 ms between call starts (at most 2 s), the benchmark's echo delay.
        let ramp = Duration::from_millis((2 * calls as u64).min(2000));
        opts.ramp = ramp;
        opts.echo_delay = ECHO_DELAY;
        let run_start = (Instant::now(), floor.cpu_ticks());
        let runner = thread::spawn(move || run_load(&opts));
        // Steady state: from 1 s after the ramp to 1 s before the marked audio ends.
        thread::sleep(ramp + Duration::from_secs(1));
        let first = (Instant::now(), floor.cpu_ticks());
        thread::sleep(Duration::from_secs_f64(seconds - 2.0).max(Duration::from_secs(1)));
        let last = (Instant::now(), floor.cpu_ticks());
        let report = runner.join().expect("the load run panicked");
        let run_end = (Instant::now(), floor.cpu_ticks());
        let steady = cpu_percent(last.1 - first.1, last.0 - first.0);
        let whole = cpu_percent(run_end.1 - run_start.1, run_end.0 - run_start.0);
        let s = report.summary();
        if s.failed > 0 {
            print!("{}", report.text(10));
        }
        let one_way = tap.one_way(&report);
        println!(
            "floor {calls:>5} calls: {} failed, {} lost, {} violations, {} unexpected hangups; \
             jitter p99 {} max {} ms; caller->agent p50 {} p99 {} ms ({} frames); round trip p50 {} p99 {} ms; floor CPU {steady:.1}% \
             steady ({:.3}%/call), {whole:.1}% over the run; harness send lateness p99 {} ms",
            s.failed,
            s.lost,
            s.violations,
            s.unexpected_hangups,
            ms(s.jitter_p99),
            ms(s.jitter_max),
            ms(pct(&one_way, 50.0)),
            ms(pct(&one_way, 99.0)),
            one_way.len(),
            ms(s.round_trip_p50),
            ms(s.round_trip_p99),
            steady / calls as f64,
            ms(s.send_lateness_p99),
        );
    }
}
