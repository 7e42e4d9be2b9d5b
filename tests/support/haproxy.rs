//! A real HAProxy (the Debian package) in front of avr-core instances, configured from the
//! shipped reference `packaging/haproxy/haproxy.cfg`: only its addresses and check timing
//! are changed, so the test checks the file users copy.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::avr::{state_dir, Avr};
use super::http::{send, HttpResponse};

/// The reference configuration, as shipped.
const REFERENCE: &str = include_str!("../../packaging/haproxy/haproxy.cfg");

/// The reference checks every second and takes 2 failures; the test wants a draining
/// instance out of the backends within a fraction of its 1 s, so it checks every 100 ms.
const REFERENCE_CHECKS: &str = "default-server inter 1s fall 2 rise 2";
const TEST_CHECKS: &str = "default-server inter 100ms fall 1 rise 1";

/// A running `haproxy -db` (foreground). Killed on drop.
pub struct Haproxy {
    child: Child,
    /// The AudioSocket frontend (TCP mode).
    pub audiosocket: SocketAddr,
    /// The `/call` frontend (HTTP mode).
    pub http: SocketAddr,
    log: PathBuf,
}

/// A loopback port free at the time of asking.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("its address").port()
}

/// The reference configuration with its frontends on `audiosocket` and `http` and its two
/// servers replaced by `a` and `b` (their AudioSocket and HTTP ports).
pub fn config_for(audiosocket: SocketAddr, http: SocketAddr, a: &Avr, b: &Avr) -> String {
    let mut out = String::new();
    let mut replaced = 0;
    for line in REFERENCE.lines() {
        let t = line.trim_start();
        let indent = &line[..line.len() - t.len()];
        let new = match t {
            "bind :5001" => format!("bind {audiosocket}"),
            "bind :6001" => format!("bind {http}"),
            "server avr-a 10.0.0.11:5001 check port 6001" => server("avr-a", a.addr(), a, true),
            "server avr-b 10.0.0.12:5001 check port 6001" => server("avr-b", b.addr(), b, true),
            "server avr-a 10.0.0.11:6001 check" => server("avr-a", a.http_addr(), a, false),
            "server avr-b 10.0.0.12:6001 check" => server("avr-b", b.http_addr(), b, false),
            REFERENCE_CHECKS => TEST_CHECKS.to_string(),
            _ => {
                out.push_str(line);
                out.push('\n');
                continue;
            }
        };
        replaced += 1;
        out.push_str(indent);
        out.push_str(&new);
        out.push('\n');
    }
    assert_eq!(
        replaced, 7,
        "packaging/haproxy/haproxy.cfg changed shape: update tests/support/haproxy.rs"
    );
    out
}

fn server(name: &str, addr: SocketAddr, avr: &Avr, check_port: bool) -> String {
    if check_port {
        format!("server {name} {addr} check port {}", avr.http_addr().port())
    } else {
        format!("server {name} {addr} check")
    }
}

/// `GET /health` through HAProxy's HTTP frontend. `Connection: close`: HAProxy keeps a
/// client's connection open otherwise (avr-core closes only its own side).
pub fn health(http: SocketAddr) -> HttpResponse {
    send(
        http,
        b"GET /health HTTP/1.1\r\nHost: avr\r\nConnection: close\r\n\r\n",
    )
}

impl Haproxy {
    /// Starts HAProxy in front of `a` and `b` (both started with `HTTP_PORT`), and waits
    /// until `/health` answers 200 through it.
    pub fn start(a: &Avr, b: &Avr) -> Haproxy {
        let audiosocket = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = state_dir();
        let cfg = dir.join("haproxy.cfg");
        let log = dir.join("haproxy.log");
        std::fs::write(&cfg, config_for(audiosocket, http, a, b)).expect("write haproxy.cfg");
        let stderr = std::fs::File::create(&log).expect("create haproxy.log");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("run haproxy (apt-get install -y haproxy)");
        let mut proxy = Haproxy {
            child,
            audiosocket,
            http,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!("haproxy exited ({status}); log:\n{}", proxy.log_text());
            }
            if std::net::TcpStream::connect(http).is_ok() && health(http).status == 200 {
                return proxy;
            }
            assert!(
                Instant::now() < deadline,
                "haproxy did not come up; log:\n{}",
                proxy.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What HAProxy logged (stderr): health check transitions, one line per connection.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
