//! A scriptable STS agent for integration tests: the test thread plays the agent.
//!
//! Each accepted connection gets a background thread that owns the WebSocket: tungstenite's
//! blocking socket cannot be read and written from two threads, so the thread reads with a
//! short timeout and, between reads, writes what the test queued. `send_*` never blocks on
//! a read, and everything avr-core sends waits in a channel for `recv*`.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use avr_core::sys::StopSignal;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use serde_json::Value;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::{Message, WebSocket};

/// How long the connection thread waits in `read()` before looking for queued sends:
/// the most a `send_*` can be delayed.
const POLL: Duration = Duration::from_millis(2);
/// How long `close()` waits for avr-core to answer the close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(3);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A message from avr-core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Text(String),
    Binary(Vec<u8>),
    /// The connection is over (close frame, reset or error); every later `recv` says so too.
    Closed,
}

/// Listens on 127.0.0.1 and hands each WebSocket connection to the test. Dropping it stops
/// listening, so later connects are refused.
pub struct StsServer {
    addr: SocketAddr,
    conns: Receiver<StsConn>,
    stop: Arc<StopSignal>,
    accept_thread: Option<JoinHandle<()>>,
}

impl StsServer {
    pub fn start() -> StsServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test STS server");
        let addr = listener.local_addr().expect("test STS server address");
        let (tx, conns) = crossbeam_channel::unbounded();
        listener
            .set_nonblocking(true)
            .expect("a non-blocking test STS listener");
        let stop = Arc::new(StopSignal::new().expect("a stop signal"));
        let stop_flag = Arc::clone(&stop);
        let accept_thread = thread::Builder::new()
            .name("sts-accept".into())
            .spawn(move || accept_loop(listener, tx, stop_flag))
            .expect("spawn the test STS accept thread");
        StsServer {
            addr,
            conns,
            stop,
            accept_thread: Some(accept_thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The next connection whose WebSocket handshake completed.
    pub fn accept(&self, timeout: Duration) -> Option<StsConn> {
        self.conns.recv_timeout(timeout).ok()
    }
}

impl Drop for StsServer {
    fn drop(&mut self) {
        // The accept loop returns, closing the listener, before the join does.
        self.stop.trigger();
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: TcpListener, conns: Sender<StsConn>, stop: Arc<StopSignal>) {
    let on_error = |e: &std::io::Error| eprintln!("test STS server: accept failed: {e}");
    let mut n = 0;
    while let Some((stream, _)) = stop.accept(&listener, on_error) {
        n += 1;
        let conns = conns.clone();
        let spawned = thread::Builder::new()
            .name(format!("sts-conn-{n}"))
            .spawn(move || serve(stream, conns));
        if let Err(e) = spawned {
            eprintln!("test STS server: no thread for a connection: {e}");
        }
    }
}

enum Command {
    Send(Message),
    /// Answered once the close frame is written.
    Close(Sender<()>),
    DropTcp,
}

/// One agent-side connection, driven by the test.
pub struct StsConn {
    path: String,
    /// The handshake request's headers, names in lower case.
    headers: Vec<(String, String)>,
    inbox: Receiver<Received>,
    commands: Sender<Command>,
    closed: bool,
}

impl StsConn {
    /// The request path and query avr-core connected with, e.g. `/?from=2000`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The value of request header `name` (case-insensitive) of the handshake, if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next message from avr-core; `None` on timeout.
    pub fn recv(&mut self, timeout: Duration) -> Option<Received> {
        if self.closed {
            return Some(Received::Closed);
        }
        match self.inbox.recv_timeout(timeout) {
            Ok(Received::Closed) | Err(RecvTimeoutError::Disconnected) => {
                self.closed = true;
                Some(Received::Closed)
            }
            Ok(msg) => Some(msg),
            Err(RecvTimeoutError::Timeout) => None,
        }
    }

    /// The next message, which must be JSON text (panics otherwise); `None` on timeout.
    pub fn recv_json(&mut self, timeout: Duration) -> Option<Value> {
        match self.recv(timeout)? {
            Received::Text(text) => Some(
                serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("avr-core sent non-JSON text ({e}): {text}")),
            ),
            Received::Binary(b) => {
                panic!("expected JSON text, avr-core sent {} binary bytes", b.len())
            }
            Received::Closed => panic!("expected JSON text, the STS connection closed"),
        }
    }

    /// Skips messages (audio, binary, non-JSON, anything `pred` rejects) until one satisfies
    /// `pred`; `None` if `timeout` passes or the connection closes first.
    pub fn recv_until(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left)? {
                Received::Text(text) => match serde_json::from_str(&text) {
                    Ok(v) if pred(&v) => return Some(v),
                    _ => {}
                },
                Received::Binary(_) => {}
                Received::Closed => return None,
            }
        }
    }

    pub fn send_json(&mut self, v: &Value) {
        self.command(Command::Send(Message::text(v.to_string())));
    }

    /// `{"type":"audio","audio":"<base64>"}`.
    pub fn send_audio(&mut self, pcm: &[u8]) {
        self.send_json(&serde_json::json!({"type": "audio", "audio": BASE64.encode(pcm)}));
    }

    /// Any text, e.g. garbage that is not JSON.
    pub fn send_text_raw(&mut self, s: &str) {
        self.command(Command::Send(Message::text(s)));
    }

    pub fn send_binary(&mut self, b: &[u8]) {
        self.command(Command::Send(Message::binary(b.to_vec())));
    }

    /// A proper close. Returns once the close frame is sent; the connection thread then
    /// waits (bounded) for avr-core's answer and closes TCP.
    pub fn close(self) {
        let (sent, is_sent) = crossbeam_channel::bounded(1);
        self.command(Command::Close(sent));
        let _ = is_sent.recv_timeout(CLOSE_WAIT);
    }

    /// Abrupt end: shut the TCP socket down without a close frame. Returns once it is down.
    pub fn drop_tcp(self) {
        self.command(Command::DropTcp);
        let deadline = Instant::now() + CLOSE_WAIT;
        while self.inbox.recv_deadline(deadline).is_ok() {} // until the thread is gone
    }

    /// Sends after the connection ended are dropped: the test sees `Closed` from `recv`.
    fn command(&self, c: Command) {
        let _ = self.commands.send(c);
    }
}

fn serve(stream: TcpStream, conns: Sender<StsConn>) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let mut path = String::from("/");
    let mut headers = Vec::new();
    #[allow(clippy::result_large_err)] // tungstenite's `Callback` signature
    let record_path = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if let Some(pq) = req.uri().path_and_query() {
            path = pq.as_str().to_owned();
        }
        headers = req
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        Ok(resp)
    };
    let ws = match tungstenite::accept_hdr(stream, record_path) {
        Ok(ws) => ws,
        Err(e) => return eprintln!("test STS server: handshake failed: {e}"),
    };
    let (inbox_tx, inbox) = crossbeam_channel::unbounded();
    let (commands, commands_rx) = crossbeam_channel::unbounded();
    let conn = StsConn {
        path,
        headers,
        inbox,
        commands,
        closed: false,
    };
    if conns.send(conn).is_ok() {
        pump(ws, &inbox_tx, &commands_rx);
    }
    let _ = inbox_tx.send(Received::Closed);
}

/// Moves messages both ways until the connection ends.
fn pump(mut ws: WebSocket<TcpStream>, inbox: &Sender<Received>, commands: &Receiver<Command>) {
    if ws.get_ref().set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    let mut close_deadline: Option<Instant> = None;
    loop {
        loop {
            match commands.try_recv() {
                Ok(Command::Send(msg)) => {
                    if ws.send(msg).is_err() {
                        return;
                    }
                }
                Ok(Command::Close(sent)) => {
                    let _ = ws.close(None);
                    let _ = sent.send(());
                    close_deadline = Some(Instant::now() + CLOSE_WAIT);
                }
                // A dropped StsConn ends the connection the same abrupt way.
                Ok(Command::DropTcp) | Err(TryRecvError::Disconnected) => {
                    let _ = ws.get_ref().shutdown(Shutdown::Both);
                    return;
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        let received = match ws.read() {
            Ok(Message::Text(text)) => Received::Text(text.as_str().to_owned()),
            Ok(Message::Binary(bytes)) => Received::Binary(bytes.to_vec()),
            Ok(_) => continue, // ping, pong, close: tungstenite answers them
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if close_deadline.is_some_and(|d| Instant::now() >= d) {
                    return; // avr-core never answered our close frame
                }
                continue;
            }
            Err(_) => return, // closed, reset or protocol error: `Closed` follows
        };
        let _ = inbox.send(received);
    }
}
