//! Hostile HTTP clients: whatever they send, the process survives, `/health` keeps answering
//! promptly, and a call that was live before the abuse keeps its 20 ms frames.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::avr::Avr;
use crate::support::http::{assert_healthy, get, post, read_response, send, RawCall};
use crate::support::sts::{StsConn, StsServer};
use crate::support::{new_uuid, WAIT};

/// "Promptly", with room for a busy 2-core CI box.
const PROMPT: Duration = Duration::from_secs(3);
/// Longest tolerated gap between two 20 ms frames of the live call.
const MAX_GAP: Duration = Duration::from_secs(1);

fn start(sts: &StsServer) -> Avr {
    Avr::start(&[
        ("STS_URL", &sts.url()),
        ("HTTP_PORT", "0"),
        ("HTTP_BIND_ADDRESS", "127.0.0.1"),
    ])
}

/// A call placed before the abuse, with its agent connection kept open.
fn live_call(avr: &Avr, sts: &StsServer) -> (RawCall, StsConn) {
    let (uuid_bytes, _) = new_uuid();
    let call = RawCall::start(avr.addr(), uuid_bytes, 5);
    let mut agent = sts
        .accept(WAIT)
        .expect("agent connection for the live call");
    agent
        .recv_until(WAIT, |m| m["type"] == "init")
        .expect("init of the live call");
    call.wait_more_frames(5, WAIT);
    (call, agent)
}

/// After each abuse: alive, healthy, and the live call untouched.
fn unharmed(avr: &mut Avr, call: &RawCall, what: &str) {
    assert!(avr.alive(), "avr-core died after: {what}");
    assert_healthy(avr.http_addr(), PROMPT);
    call.assert_flowing(MAX_GAP, what);
}

/// The live call goes on after everything: half a second more of its 20 ms frames, with
/// no gap over [`MAX_GAP`] since it started.
fn still_flowing(call: &RawCall, what: &str) {
    let w = call.wait_more_frames(25, WAIT);
    assert!(!w.ended, "the live call ended ({what}): {w:?}");
    call.assert_flowing(MAX_GAP, what);
    let span = w.last.unwrap() - w.first.unwrap();
    assert!(
        w.frames >= 25 && span >= Duration::from_millis(400),
        "{} frames over {span:?} ({what})",
        w.frames
    );
}

/// Peak resident memory of avr-core, from /proc.
pub(crate) fn peak_rss_kib(avr: &Avr) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", avr.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/pid/status")
}

#[test]
fn malformed_and_oversized_requests_are_refused_and_harm_nothing() {
    let sts = StsServer::start();
    let mut avr = start(&sts);
    let addr = avr.http_addr();
    let (call, _agent) = live_call(&avr, &sts);
    let (_, uuid) = new_uuid();

    // A forged Content-Length is refused from the header: nothing allocated, no waiting.
    let started = Instant::now();
    let r = send(
        addr,
        b"POST /call HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000000000\r\n\r\n",
    );
    assert_eq!(r.status, 413);
    assert!(
        started.elapsed() < PROMPT,
        "413 took {:?}",
        started.elapsed()
    );
    let r = send(
        addr,
        b"POST /call HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
    );
    assert_eq!(r.status, 413);
    unharmed(&mut avr, &call, "forged Content-Length");

    // A 10 MB header: refused after 8 KiB (431) or the connection closed; never buffered.
    let mut s = TcpStream::connect(addr).unwrap();
    let mut writer = s.try_clone().unwrap();
    let flood = std::thread::Builder::new()
        .name("header-flood".into())
        .spawn(move || {
            let _ = writer.write_all(b"GET /health HTTP/1.1\r\nHost: a\r\nX-Big: ");
            let block = vec![b'a'; 64 * 1024];
            for _ in 0..160 {
                if writer.write_all(&block).is_err() {
                    return;
                }
            }
        })
        .unwrap();
    if let Some(r) = read_response(&mut s) {
        assert!((400..500).contains(&r.status), "{r:?}");
    }
    drop(s);
    flood.join().unwrap();
    unharmed(&mut avr, &call, "10 MB header");

    let bad: [(&str, u16); 6] = [
        ("{not json", 400),
        ("[]", 400),
        (r#"{"payload":{}}"#, 400),
        (r#"{"uuid":"935652e3-7c59-4edc-b17f-9646a9c2a26"}"#, 400),
        (
            r#"{"uuid":"935652e3-7c59-4edc-b17f-9646a9c2a265","payload":[]}"#,
            400,
        ),
        (
            &format!(
                r#"{{"uuid":"{uuid}","payload":{{"{}":1}}}}"#,
                "k".repeat(60_000)
            ),
            // The key would make the STS URL 60 KB long: refused, not a call that fails.
            413,
        ),
    ];
    for (body, status) in bad {
        let r = post(addr, "/call", body, &[]);
        assert_eq!(r.status, status, "{}", &body[..body.len().min(60)]);
        unharmed(
            &mut avr,
            &call,
            &format!("body {}", &body[..body.len().min(60)]),
        );
    }
    assert_eq!(get(addr, "/../../etc/passwd").status, 404);
    assert_eq!(get(addr, "/call").status, 405);
    let r = send(addr, b"DELETE /health HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 405);
    unharmed(&mut avr, &call, "unknown path and wrong methods");

    // Not HTTP at all, broken framing, and clients that give up half way.
    for raw in [
        &b"\x00\x01\x02\xffgarbage\r\n\r\n"[..],
        b"POST /call HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcde",
        b"POST /call HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /call HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /call HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /call HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffff\r\n",
        b"GET /health HTTP/9.9\r\n\r\n",
    ] {
        let r = send(addr, raw);
        assert!(
            matches!(r.status, 400 | 413),
            "{:?}: {r:?}",
            String::from_utf8_lossy(raw)
        );
    }
    for partial in [
        &b"GET /hea"[..],
        b"POST /call HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"uu",
    ] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(partial).unwrap();
        drop(s);
    }
    unharmed(
        &mut avr,
        &call,
        "garbage, broken framing and abandoned requests",
    );

    // Expect: 100-continue is answered before the body, and not at all for a refused one.
    let mut s = TcpStream::connect(addr).unwrap();
    let body = format!(r#"{{"uuid":"{uuid}"}}"#);
    write!(
        s,
        "POST /call HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let mut interim = [0u8; 25];
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(body.as_bytes()).unwrap();
    assert_eq!(read_response(&mut s).unwrap().status, 200);
    let r = send(
        addr,
        b"POST /call HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 70000\r\n\r\n",
    );
    assert_eq!(r.status, 413);

    unharmed(&mut avr, &call, "Expect: 100-continue");
    still_flowing(&call, "after all malformed requests");
    let peak = peak_rss_kib(&avr);
    assert!(
        peak < 64 * 1024,
        "peak RSS {peak} KiB: something buffered too much"
    );
}

/// Raises the soft open-file limit to the hard one, for 1,000 client sockets.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
}

#[test]
fn a_thousand_idle_connections_lock_out_neither_http_nor_calls() {
    raise_fd_limit();
    let sts = StsServer::start();
    let mut avr = start(&sts);
    let addr: SocketAddr = avr.http_addr();
    let (call, _agent) = live_call(&avr, &sts);
    let baseline_fds = avr.fds();

    let started = Instant::now();
    let idle: Vec<TcpStream> = (0..1000)
        .map(|i| TcpStream::connect(addr).unwrap_or_else(|e| panic!("idle connection {i}: {e}")))
        .collect();
    eprintln!("1,000 connections opened in {:?}", started.elapsed());
    // The service holds at most its 128 connections (plus one duplicate handle each); the
    // sockets of connections it just evicted close as their threads wind down.
    assert_healthy(addr, PROMPT);
    let bound = baseline_fds + 2 * 128 + 16;
    let deadline = Instant::now() + WAIT;
    while avr.fds() > bound && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let fds = avr.fds();
    assert!(
        fds <= bound,
        "avr-core holds {fds} fds (baseline {baseline_fds})"
    );
    call.assert_flowing(MAX_GAP, "1,000 idle HTTP connections open");

    // New calls are still accepted and reach their agent.
    let (uuid_bytes, uuid) = new_uuid();
    let fresh = RawCall::start(avr.addr(), uuid_bytes, 3);
    let mut agent = sts.accept(WAIT).expect("agent connection for a new call");
    let init = agent
        .recv_until(WAIT, |m| m["type"] == "init")
        .expect("init of the new call");
    assert_eq!(init["uuid"], uuid);
    fresh.wait_more_frames(5, WAIT);
    fresh.assert_flowing(MAX_GAP, "new call while 1,000 HTTP connections are open");
    assert!(avr
        .wait_log(
            |l| l.contains("closed the oldest one that had not sent a whole request"),
            WAIT
        )
        .is_some());

    drop(idle);
    unharmed(&mut avr, &call, "1,000 idle connections");
    still_flowing(&call, "after 1,000 idle connections");
}

#[test]
fn a_flood_of_bad_requests_is_a_few_log_lines_counting_the_rest() {
    let sts = StsServer::start();
    let avr = start(&sts);
    for _ in 0..50 {
        assert_eq!(get(avr.http_addr(), "/no-such-page").status, 404);
    }
    // The last one is logged once the interval is over; until then, one line says it all.
    let lines = avr
        .logs()
        .iter()
        .filter(|l| l.contains("HTTP GET /no-such-page"))
        .count();
    assert!(
        (1..=2).contains(&lines),
        "{lines} lines for 50 bad requests"
    );
    // A request of another kind is not held back by the flood of the first.
    let refused = send(avr.http_addr(), b"NOT HTTP AT ALL\r\n\r\n");
    assert_eq!(refused.status, 400);
    avr.wait_log(|l| l.contains("refused"), WAIT)
        .expect("the malformed request is logged");
}
