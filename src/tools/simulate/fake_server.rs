//! A one-connection fake AudioSocket server for the simulator's own tests: it sees exactly
//! the bytes the simulated caller writes and answers as each test scripts it.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;

use crate::proto::audiosocket;

/// A one-connection fake server; `serve` runs on its own thread with the accepted socket.
pub fn fake_server<T: Send + 'static>(
    serve: impl FnOnce(TcpStream) -> T + Send + 'static,
) -> (SocketAddr, thread::JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::Builder::new()
        .name("fake-server".into())
        .spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream.set_nodelay(true).unwrap();
            serve(stream)
        })
        .unwrap();
    (addr, handle)
}

/// Reads the UUID message, asserting it arrives as one piece.
pub fn read_hello(s: &mut TcpStream) -> Vec<u8> {
    let mut hello = [0u8; 19];
    let n = s.read(&mut hello).unwrap();
    hello[..n].to_vec()
}

/// Next frame from the simulator; None at EOF or reset.
pub fn read_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 3];
    s.read_exact(&mut header).ok()?;
    let mut payload = vec![0u8; usize::from(u16::from_be_bytes([header[1], header[2]]))];
    s.read_exact(&mut payload).ok()?;
    Some((header[0], payload))
}

/// Sends every frame back in its own kind until EOF; returns each frame's kind and length.
pub fn echo_frames(s: &mut TcpStream) -> Vec<(u8, usize)> {
    let mut frames = Vec::new();
    while let Some((kind, payload)) = read_frame(s) {
        frames.push((kind, payload.len()));
        s.write_all(&audiosocket::encode(kind, &payload).unwrap())
            .unwrap();
    }
    frames
}

/// Reads until EOF so the server closes with a FIN, never an RST.
pub fn drain(s: &mut TcpStream) {
    let _ = io::copy(s, &mut io::sink());
}

pub fn hello_for(uuid: &[u8; 16]) -> Vec<u8> {
    let mut v = vec![1, 0, 16];
    v.extend_from_slice(uuid);
    v
}

pub fn frame(payload: &[u8]) -> Vec<u8> {
    audiosocket::encode(0x10, payload).unwrap()
}
