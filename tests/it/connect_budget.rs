//! The agent connection keeps its budget and its secrets (issue #13): `STS_CONNECT_TIMEOUT`
//! is one deadline however the agent answers, URLs are logged masked, and the userinfo
//! reaches the agent as `Authorization: Basic` (docs/sts.md §2.1, §3.1).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use crate::support::avr::Avr;
use crate::support::sts::StsServer;
use crate::support::{call_hung_up_by_server, WAIT};

const BUDGET: Duration = Duration::from_millis(1000);
/// Room for a busy 2-core CI machine; the budget itself is kept to a tick in practice, and
/// each test prints what it measured.
const MARGIN: Duration = Duration::from_millis(1000);

/// An agent that accepts TCP and hands each connection to `serve` on its own thread, for
/// as long as the test holds it.
fn raw_agent(serve: fn(TcpStream)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || serve(stream));
        }
    });
    addr
}

/// One call to avr-core with its agent at `addr`: the caller must hear the hangup within
/// the budget and the margin, and the log must name the budget.
fn hung_up_within_the_budget(addr: SocketAddr, what: &str) {
    let url = format!("ws://{addr}");
    let avr = Avr::start(&[("STS_URL", &url), ("STS_CONNECT_TIMEOUT", "1000")]);
    let (uuid, report) = call_hung_up_by_server(avr.addr(), Duration::from_secs(30));
    eprintln!(
        "{what}: the caller heard the hangup after {} ms (budget {} ms)",
        report.duration.as_millis(),
        BUDGET.as_millis()
    );
    assert!(report.duration >= BUDGET, "{}", report.summary());
    assert!(report.duration < BUDGET + MARGIN, "{}", report.summary());
    let why = unreachable_why(&avr, &uuid);
    assert!(why.contains("within 1000 ms (STS_CONNECT_TIMEOUT"), "{why}");
}

/// The log line that says why call `uuid` could not reach its agent.
fn unreachable_why(avr: &Avr, uuid: &str) -> String {
    avr.wait_log(
        |l| l.contains(&format!("[{uuid}] Call ending: agent unreachable")),
        WAIT,
    )
    .expect("the call ends: agent unreachable")
}

#[test]
fn an_agent_dribbling_its_handshake_is_cut_at_the_budget() {
    let addr = raw_agent(|mut s| {
        let mut request = [0u8; 4096];
        let _ = s.read(&mut request);
        // One byte every 200 ms: a fresh timeout per read would never fire.
        let answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
        for byte in answer {
            if s.write_all(&[*byte]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(200));
        }
    });
    hung_up_within_the_budget(addr, "dribbling agent");
}

#[test]
fn an_agent_that_accepts_and_never_answers_is_cut_at_the_budget() {
    let addr = raw_agent(|mut s| {
        // Reads the request, answers nothing, until avr-core gives up.
        let mut sink = [0u8; 4096];
        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
    });
    hung_up_within_the_budget(addr, "silent agent");
}

#[test]
fn a_failed_connect_logs_no_secret_of_the_url() {
    let dead: SocketAddr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("ws://u:secret@{dead}/?token=abc");
    let avr = Avr::start(&[("STS_URL", &url)]);
    let (uuid, _report) = call_hung_up_by_server(avr.addr(), Duration::from_secs(30));
    let why = unreachable_why(&avr, &uuid);
    assert!(
        why.contains(&format!("ws://u:****@{dead}/?token=****")),
        "names the URL, masked: {why}"
    );
    avr.wait_call_ended(&uuid, WAIT);
    // The uuid's hex digits may spell "abc": look at the rest of each line.
    let leaks: Vec<String> = avr
        .logs()
        .iter()
        .map(|l| l.replace(&uuid, "<uuid>"))
        .filter(|l| l.contains("secret") || l.contains("abc"))
        .collect();
    assert!(leaks.is_empty(), "secrets in the log: {leaks:#?}");
}

#[test]
fn the_userinfo_is_sent_as_basic_auth_and_not_in_the_request() {
    let sts = StsServer::start();
    // Percent-encoded in the URL, decoded in the header, as the Node.js `ws` client does.
    let url = format!("ws://us%20er:p%40ss%3Aw@{}/agent?k=v", sts.addr());
    let avr = Avr::start(&[("STS_URL", &url)]);
    let (uuid, opts) = crate::support::call_options(
        avr.addr(),
        Duration::from_millis(300),
        avr_core::tools::simulate::EndMode::Close,
    );
    let sim = thread::spawn(move || avr_core::tools::simulate::run_call(&opts).expect("call"));
    let conn = sts.accept(WAIT).expect("avr-core connects to the agent");
    let expected = format!("Basic {}", BASE64.encode("us er:p@ss:w"));
    assert_eq!(conn.header("authorization"), Some(expected.as_str()));
    assert_eq!(conn.header("host"), Some(sts.addr().to_string().as_str()));
    assert_eq!(conn.path(), "/agent?k=v");
    sim.join().unwrap();
    let connecting = avr
        .wait_log(
            |l| l.contains(&format!("[{uuid}] Connecting to STS WebSocket")),
            WAIT,
        )
        .unwrap();
    assert!(
        connecting.contains(&format!("ws://us%20er:****@{}/agent?k=v", sts.addr())),
        "{connecting}"
    );
    assert!(!avr.log_text().contains("p%40ss"));
}
