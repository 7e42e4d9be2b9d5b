//! The caller's audio on its way up the speech-to-text stream, written by the call's thread
//! with `MSG_DONTWAIT`: a service that reads slowly costs dropped audio, never a late frame
//! to the caller (docs/pipeline.md §2).

use std::net::{Shutdown, TcpStream};

use rustix::net::SendFlags;

use super::chunked::{encode_chunk, LAST_CHUNK};

/// Caller audio waiting for the service's socket, at most: 2 s of 8 kHz audio. More means
/// the service is not reading; newer audio is dropped until it does.
pub const MAX_UPLOAD_PENDING: usize = 32 * 1024;

/// The audio on its way up, written by the call's thread with `MSG_DONTWAIT`.
pub struct Upload {
    socket: TcpStream,
    /// Encoded chunks not yet taken by the socket.
    pending: Vec<u8>,
}

/// What [`Upload::send`] did with the audio.
#[derive(Debug, PartialEq, Eq)]
pub enum Uploaded {
    Sent,
    /// The service is not reading: [`MAX_UPLOAD_PENDING`] waits already.
    Dropped,
}

impl Upload {
    pub fn new(socket: TcpStream) -> Upload {
        Upload {
            socket,
            pending: Vec::new(),
        }
    }

    /// Sends `pcm` as one chunk (whatever did not fit waits for the next call).
    pub fn send(&mut self, pcm: &[u8]) -> Uploaded {
        self.flush();
        if self.pending.len() >= MAX_UPLOAD_PENDING {
            return Uploaded::Dropped;
        }
        encode_chunk(pcm, &mut self.pending);
        self.flush();
        Uploaded::Sent
    }

    /// Writes what waits, as far as the socket takes it now. A broken socket is left to the
    /// reading thread, which sees the end and reports it.
    fn flush(&mut self) {
        while !self.pending.is_empty() {
            match rustix::net::send(
                &self.socket,
                &self.pending,
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            ) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => return,
            }
        }
    }

    /// Ends the body properly (the service may answer its last transcript), best effort.
    pub fn finish(mut self) {
        self.pending.extend_from_slice(LAST_CHUNK);
        self.flush();
        let _ = self.socket.shutdown(Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::pipeline::chunked::{Chunked, Decoded};

    #[test]
    fn a_service_that_does_not_read_costs_dropped_audio_not_a_blocked_call() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut service, _) = listener.accept().unwrap();
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(&client, 4096);
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&service, 4096);
        let mut upload = Upload::new(client);
        let frame = [7u8; 320];
        let started = Instant::now();
        let mut sent = 0;
        while upload.send(&frame) == Uploaded::Sent {
            sent += 1;
            assert!(sent < 100_000, "the socket never filled");
        }
        // Never blocked: the whole fill took no socket timeout.
        assert!(started.elapsed() < Duration::from_secs(2));
        // What the socket took arrives as chunks of whole frames (at the hangup, `finish` is
        // best effort: what still waits is dropped with the call).
        upload.finish();
        let _ = service.set_read_timeout(Some(Duration::from_secs(5)));
        let mut body = Vec::new();
        service.read_to_end(&mut body).unwrap();
        let (mut decoder, mut frames, mut bytes, mut at) = (Chunked::default(), 0, 0, 0);
        while at < body.len() {
            at += decoder
                .feed(&body[at..], |d| match d {
                    Decoded::Data(b) => {
                        assert!(b.iter().all(|&x| x == 7));
                        bytes += b.len();
                    }
                    Decoded::ChunkEnd => frames += 1,
                    Decoded::Done => {}
                })
                .unwrap();
        }
        assert!(frames > 0 && frames <= sent, "{frames} of {sent}");
        assert!(
            (frames * 320..(frames + 1) * 320).contains(&bytes),
            "{bytes} bytes"
        );
    }
}
