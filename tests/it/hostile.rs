//! Hostile and broken AudioSocket peers: each is handled as docs/audiosocket.md §10 says, the process
//! survives, nothing leaks, and a normal call works afterwards.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::avr::Avr;
use crate::support::sts::{StsConn, StsServer};
use crate::support::{assert_heard, call_options, new_uuid, non_silent, signal, to_samples, WAIT};
use avr_core::proto::audiosocket;
use avr_core::tools::simulate::{run_call, AudioSource, EndMode, SimOptions};

fn connect(avr: &Avr) -> TcpStream {
    let s = TcpStream::connect(avr.addr()).expect("connect");
    s.set_nodelay(true).unwrap();
    s
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    audiosocket::encode(kind, payload).unwrap()
}

/// A raw call (UUID sent) whose agent connection has received `init`.
fn open_call(avr: &Avr, sts: &StsServer) -> (String, TcpStream, StsConn) {
    let (uuid_bytes, uuid) = new_uuid();
    let mut s = connect(avr);
    s.write_all(&frame(0x01, &uuid_bytes)).unwrap();
    let mut conn = sts.accept(WAIT).expect("agent connection");
    conn.recv_until(WAIT, |m| m["type"] == "init")
        .expect("init");
    (uuid, s, conn)
}

/// Reads until EOF (or `limit`); returns what the server sent.
fn read_all(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

/// A normal call through a fresh agent connection still works, end to end.
fn normal_call_works(avr: &Avr, sts: &StsServer) {
    let (uuid, opts) = call_options(avr.addr(), Duration::from_millis(1200), EndMode::Close);
    let sim = std::thread::spawn(move || run_call(&opts).expect("call"));
    let mut conn = sts.accept(WAIT).expect("agent connection");
    conn.recv_until(WAIT, |m| m["type"] == "init")
        .expect("init");
    let hello = signal(2400);
    conn.send_audio(&crate::support::to_bytes(&hello));
    let report = sim.join().unwrap();
    assert!(report.violations.is_empty(), "{}", report.summary());
    assert_heard(&report, &hello);
    avr.wait_call_ended(&uuid, WAIT);
}

/// Waits until the process is back to `threads` threads (calls end asynchronously).
fn settles_to(avr: &Avr, threads: usize, fds: usize) {
    let deadline = Instant::now() + WAIT;
    while (avr.threads() != threads || avr.fds() != fds) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(avr.threads(), threads, "threads back to baseline");
    assert_eq!(avr.fds(), fds, "fds back to baseline");
}

#[test]
fn unknown_kinds_and_zero_length_audio_are_skipped_and_the_call_goes_on() {
    let sts = StsServer::start();
    let avr = Avr::start(&[("STS_URL", &sts.url())]);
    let (uuid, mut s, mut conn) = open_call(&avr, &sts);

    let mut junk = Vec::new();
    for kind in [0x02u8, 0x42, 0x7f] {
        junk.extend(frame(kind, &[0xAA; 37]));
    }
    junk.extend(frame(0x10, &[])); // zero-length audio
    junk.extend(frame(0x03, b"xy")); // DTMF with two bytes
    let marker: Vec<u8> = (0..320u16).map(|i| (i % 200 + 1) as u8).collect();
    junk.extend(frame(0x10, &marker));
    s.write_all(&junk).unwrap();

    // The audio after the junk reaches the agent intact.
    let audio = conn
        .recv_until(WAIT, |m| m["type"] == "audio")
        .expect("audio after junk");
    let b64 = audio["audio"].as_str().unwrap();
    use base64::Engine as _;
    let pcm = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert_eq!(pcm, marker);
    s.shutdown(Shutdown::Both).unwrap();

    let ended = avr.wait_call_ended(&uuid, WAIT);
    assert!(ended.contains("caller hung up"), "{ended}");
    let logs = avr.call_logs(&uuid);
    let count = |needle: &str| logs.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(count("unknown kind 0x02"), 1, "{logs:#?}");
    assert_eq!(count("Ignoring AudioSocket frames of unknown kind"), 1);
    assert_eq!(count("Ignoring a malformed kind"), 1);
    normal_call_works(&avr, &sts);
}

#[test]
fn a_65535_byte_frame_is_read_whole_and_framing_continues() {
    let sts = StsServer::start();
    let avr = Avr::start(&[("STS_URL", &sts.url())]);
    let (uuid, mut s, mut conn) = open_call(&avr, &sts);
    // The largest frame the format allows (2 s of audio, odd length), then normal frames.
    s.write_all(&frame(0x10, &vec![0x11; 65_535])).unwrap();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let big = conn.recv_until(WAIT, |m| m["type"] == "audio").unwrap();
    let big = b64.decode(big["audio"].as_str().unwrap()).unwrap();
    assert_eq!(
        big.len(),
        65_534,
        "read as slin, the stray odd byte dropped"
    );
    let marker: Vec<u8> = (0..320u16).map(|i| (i % 200 + 1) as u8).collect();
    s.write_all(&frame(0x10, &marker)).unwrap();
    let next = conn.recv_until(WAIT, |m| m["type"] == "audio").unwrap();
    assert_eq!(b64.decode(next["audio"].as_str().unwrap()).unwrap(), marker);
    s.shutdown(Shutdown::Both).unwrap();
    let ended = avr.wait_call_ended(&uuid, WAIT);
    assert!(ended.contains("Asterisk closed the connection"), "{ended}");
    normal_call_works(&avr, &sts);
}

#[test]
fn a_65535_byte_header_then_silence_keeps_the_call_until_the_peer_leaves() {
    let sts = StsServer::start();
    let avr = Avr::start(&[("STS_URL", &sts.url())]);
    let (uuid, mut s, mut conn) = open_call(&avr, &sts);
    // A header announcing 65535 bytes, a little of its payload, then nothing.
    s.write_all(&[0x10, 0xff, 0xff]).unwrap();
    s.write_all(&[0; 100]).unwrap();
    // The caller still hears the agent: the clock does not wait for the reader.
    let hello = signal(800);
    conn.send_audio(&crate::support::to_bytes(&hello));
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    s.set_read_timeout(Some(WAIT)).unwrap();
    while non_silent(&to_samples(&strip_headers(&got))).len() < hello.len() {
        let n = s.read(&mut buf).expect("frames keep coming");
        assert!(n > 0, "avr-core closed the call");
        got.extend_from_slice(&buf[..n]);
    }
    s.shutdown(Shutdown::Both).unwrap();
    let ended = avr.wait_call_ended(&uuid, WAIT);
    assert!(ended.contains("mid-frame (103 bytes)"), "{ended}");
    normal_call_works(&avr, &sts);
}

/// The audio payloads of a stream of whole `0x10` frames.
fn strip_headers(stream: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = stream;
    while rest.len() >= 3 {
        let len = u16::from_be_bytes([rest[1], rest[2]]) as usize;
        if rest.len() < 3 + len {
            break;
        }
        out.extend_from_slice(&rest[3..3 + len]);
        rest = &rest[3 + len..];
    }
    out
}

#[test]
fn connections_without_a_uuid_are_closed_with_a_reason() {
    let sts = StsServer::start();
    let mut avr = Avr::start(&[("STS_URL", &sts.url())]);

    // Connect and say nothing: closed after 2 s (UUID_TIMEOUT), with a log line.
    let started = Instant::now();
    let mut quiet = connect(&avr);
    let got = read_all(&mut quiet, Duration::from_secs(15));
    let waited = started.elapsed();
    assert!(got.is_empty(), "nothing is sent before a UUID");
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(10),
        "closed after {waited:?}"
    );
    avr.wait_log(|l| l.contains("no UUID within 2 s"), WAIT)
        .expect("log line");

    // Audio before the UUID: closed at once.
    let mut early = connect(&avr);
    early.write_all(&frame(0x10, &[0; 320])).unwrap();
    assert!(read_all(&mut early, WAIT).is_empty());
    avr.wait_log(|l| l.contains("before its UUID"), WAIT)
        .expect("log line");

    // Connect and close (Asterisk's unanswered channel).
    drop(connect(&avr));
    avr.wait_log(|l| l.contains("closed without sending anything"), WAIT)
        .expect("log line");

    // A UUID frame of the wrong size.
    let mut short = connect(&avr);
    short.write_all(&frame(0x01, &[7; 15])).unwrap();
    assert!(read_all(&mut short, WAIT).is_empty());
    avr.wait_log(|l| l.contains("malformed UUID"), WAIT)
        .expect("log line");

    assert!(avr.alive());
    assert!(
        sts.accept(Duration::from_millis(200)).is_none(),
        "no agent connection for non-calls"
    );
    normal_call_works(&avr, &sts);
}

#[test]
fn random_bytes_and_abrupt_resets_leave_the_server_healthy() {
    let sts = StsServer::start();
    let mut avr = Avr::start(&[("STS_URL", &sts.url())]);
    let base_threads = avr.threads();
    let base_fds = avr.fds();

    // Random garbage instead of a UUID, from a deterministic generator.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    };
    for _ in 0..5 {
        let mut s = connect(&avr);
        let mut garbage = random(4096);
        garbage[0] = 0x10 | (garbage[0] & 0x0f); // never a UUID first
        let _ = s.write_all(&garbage);
        let _ = read_all(&mut s, WAIT);
    }

    // Random garbage after a valid UUID: framing noise inside a live call.
    for _ in 0..5 {
        let (uuid_bytes, uuid) = new_uuid();
        let mut s = connect(&avr);
        s.write_all(&frame(0x01, &uuid_bytes)).unwrap();
        let mut conn = sts.accept(WAIT).unwrap();
        conn.recv_until(WAIT, |m| m["type"] == "init").unwrap();
        let _ = s.write_all(&random(20_000));
        let _ = s.shutdown(Shutdown::Both);
        avr.wait_call_ended(&uuid, WAIT);
    }

    // Abrupt resets mid-call: SO_LINGER 0 makes close() send RST.
    for _ in 0..5 {
        let (uuid_bytes, uuid) = new_uuid();
        let s = connect(&avr);
        (&s).write_all(&frame(0x01, &uuid_bytes)).unwrap();
        let mut conn = sts.accept(WAIT).unwrap();
        conn.recv_until(WAIT, |m| m["type"] == "init").unwrap();
        (&s).write_all(&frame(0x10, &[1; 320])).unwrap();
        conn.recv_until(WAIT, |m| m["type"] == "audio").unwrap();
        reset(s);
        let ended = avr.wait_call_ended(&uuid, WAIT);
        assert!(ended.contains("caller hung up"), "{ended}");
    }

    assert!(avr.alive());
    settles_to(&avr, base_threads, base_fds);
    normal_call_works(&avr, &sts);
    settles_to(&avr, base_threads, base_fds);
}

/// Closes with a TCP reset instead of FIN.
fn reset(s: TcpStream) {
    let fd = rustix::fd::AsFd::as_fd(&s);
    rustix::net::sockopt::set_socket_linger(fd, Some(Duration::ZERO)).unwrap();
    drop(s);
}

#[test]
fn a_normal_call_with_real_speech_survives_a_mid_call_unknown_frame() {
    // The DTMF/unknown mix Asterisk 20.14+ might send, interleaved with paced audio.
    let sts = StsServer::start();
    let avr = Avr::start(&[("STS_URL", &sts.url())]);
    let (uuid_bytes, uuid) = new_uuid();
    let mut opts = SimOptions::new(avr.addr());
    opts.uuid = uuid_bytes;
    opts.audio = AudioSource::Pcm(Arc::new(signal(8000)));
    opts.dtmf = vec![
        (Duration::from_millis(300), '#'),
        (Duration::from_millis(600), 'D'),
    ];
    opts.duration = Duration::from_millis(1500);
    let sim = std::thread::spawn(move || run_call(&opts).expect("call"));
    let mut conn = sts.accept(WAIT).unwrap();
    let first = conn
        .recv_until(WAIT, |m| m["type"] == "dtmf_digit")
        .unwrap();
    assert_eq!(first["digit"], "#");
    let second = conn
        .recv_until(WAIT, |m| m["type"] == "dtmf_digit")
        .unwrap();
    assert_eq!(second["digit"], "D");
    let report = sim.join().unwrap();
    assert!(report.violations.is_empty(), "{}", report.summary());
    avr.wait_call_ended(&uuid, WAIT);
    let dtmf: Vec<String> = avr
        .events(&uuid)
        .into_iter()
        .filter(|e| e == "dtmf_digit")
        .collect();
    assert_eq!(dtmf.len(), 2);
}

#[test]
fn a_caller_that_stops_reading_is_hung_up_and_other_calls_keep_going() {
    let sts = StsServer::start();
    let url = sts.url();
    let avr = Avr::start(&[
        ("STS_URL", url.as_str()),
        ("HTTP_PORT", "0"),
        ("HTTP_BIND_ADDRESS", "127.0.0.1"),
    ]);
    // Asterisk reads without blocking; a peer that stops reading is a dead call. Its
    // receive buffer is made small so the server's side fills soon.
    let (uuid, stuck, _conn) = open_call(&avr, &sts);
    rustix::net::sockopt::set_socket_recv_buffer_size(&stuck, 2048).unwrap();
    let started = Instant::now();

    // While the clock keeps trying, another call on the same server is untouched.
    normal_call_works(&avr, &sts);

    let line = avr
        .wait_log(
            |l| l.contains(&format!("[{uuid}] Call ending: cannot write to Asterisk")),
            Duration::from_secs(90),
        )
        .unwrap_or_else(|| panic!("no write-failure line for {uuid}:\n{}", avr.log_text()));
    assert!(
        line.contains("has taken no audio for 1 s"),
        "the reason says what happened: {line}"
    );
    // Its own thread ends too: no call is left hanging on a dead peer.
    avr.wait_call_ended(&uuid, WAIT);
    eprintln!("stalled call let go after {:?}", started.elapsed());
    // The slots its full socket made the clock skip are counted for the operator.
    let metrics = crate::support::http::get(avr.http_addr(), "/metrics").body;
    let late: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("avr_playout_late_slots_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no late-slot counter:\n{metrics}"));
    assert!(
        late >= 45,
        "a 1 s stall skips about 50 slots, counted {late}"
    );
    drop(stuck);
    normal_call_works(&avr, &sts);
}
