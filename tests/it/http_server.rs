//! The HTTP server's limits, in process with small limits so they are reached quickly:
//! the whole-request deadline, the connection cap with its eviction of idle connections,
//! and the 503 when every connection is being answered.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::http::{get, post, read_response};
use crate::support::WAIT;
use avr_core::config::Config;
use avr_core::http::{self, Limits, Service};
use avr_core::metrics::Metrics;
use avr_core::registry::Registry;
use crossbeam_channel::{Receiver, Sender};

const UUID: &str = "935652e3-7c59-4edc-b17f-9646a9c2a265";

fn limits(max_connections: usize, request_timeout: Duration) -> Limits {
    Limits {
        max_connections,
        request_timeout,
        ..Limits::default()
    }
}

/// A server whose `call_initiated` tells `entered` it runs, then waits for `release`.
fn server(limits: Limits) -> (SocketAddr, Receiver<()>, Sender<()>) {
    let config = Config::from_vars(&[("STS_URL".into(), "ws://agent:6030".into())]).unwrap();
    let (entered_tx, entered) = crossbeam_channel::unbounded();
    let (release, release_rx) = crossbeam_channel::unbounded::<()>();
    let service = Service::new(
        &config,
        Arc::new(Registry::new(Duration::from_secs(60))),
        Arc::new(Metrics::default()),
    )
    .with_call_initiated(move |_, _| {
        let _ = entered_tx.send(());
        let _ = release_rx.recv_timeout(WAIT);
        None
    });
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(avr_core::sys::StopSignal::new().unwrap());
    http::spawn(listener, service, limits, stop).unwrap();
    (addr, entered, release)
}

#[test]
fn a_request_that_trickles_in_is_cut_off_at_the_deadline() {
    let (addr, _, _) = server(limits(8, Duration::from_millis(500)));
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"POST /call HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n{\"u")
        .unwrap();
    let r = read_response(&mut s).expect("an answer");
    let took = started.elapsed();
    assert_eq!(r.status, 408, "{r:?}");
    assert!(
        r.error().contains("did not arrive within 0.5 s"),
        "{}",
        r.error()
    );
    assert!(
        took >= Duration::from_millis(450) && took < WAIT,
        "{took:?}"
    );
}

#[test]
fn when_full_the_oldest_idle_connection_makes_room() {
    let (addr, _, _) = server(limits(2, Duration::from_secs(30)));
    let mut first = TcpStream::connect(addr).unwrap();
    let second = TcpStream::connect(addr).unwrap();
    let r = get(addr, "/health");
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"status":"ok"}"#));
    // The oldest idle connection was closed without an answer.
    first.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 64];
    assert!(matches!(first.read(&mut buf), Ok(0) | Err(_)));
    drop(second);
}

#[test]
fn when_every_connection_is_being_answered_a_new_one_gets_503() {
    let (addr, entered, release) = server(limits(2, Duration::from_secs(30)));
    let body = format!(r#"{{"uuid":"{UUID}"}}"#);
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || post(addr, "/call", &body, &[]))
        })
        .collect();
    for _ in 0..2 {
        entered
            .recv_timeout(WAIT)
            .expect("both /call requests in the hook");
    }
    let r = get(addr, "/health");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.error().contains("busy"));

    for _ in 0..2 {
        release.send(()).unwrap();
    }
    for b in busy {
        assert_eq!(b.join().unwrap().status, 200);
    }
    assert_eq!(get(addr, "/health").status, 200);
}
