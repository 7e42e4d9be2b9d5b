//! The real `avr-core` binary as a child process, with its log lines captured.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A fresh directory under the system's temporary directory.
pub fn state_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "avr-state-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("create a state directory");
    dir
}

/// A running avr-core. Killed on drop.
pub struct Avr {
    child: Child,
    pub port: u16,
    /// The HTTP service's port, when `HTTP_PORT` was given.
    pub http_port: Option<u16>,
    logs: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Avr {
    /// Starts avr-core on an ephemeral loopback port with `env` on top of test defaults
    /// (`LOG_LEVEL=debug`, so call events are logged), and waits for its listening line.
    pub fn start(env: &[(&str, &str)]) -> Avr {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_avr-core"));
        cmd.env_clear()
            .env("PORT", "0")
            .env("BIND_ADDRESS", "127.0.0.1")
            .env("LOG_LEVEL", "debug")
            .env("STS_CONNECT_TIMEOUT", "2000")
            // A state directory of its own (webhook spool, default dead-letter file), so
            // concurrent tests never share one; a test that restarts passes its own.
            .env("STATE_DIRECTORY", state_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn avr-core");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new((Mutex::new(Vec::<String>::new()), Condvar::new()));
        let sink = logs.clone();
        std::thread::Builder::new()
            .name("avr-log".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if std::env::var_os("AVR_TEST_LOG").is_some() {
                        eprintln!("avr| {line}");
                    }
                    sink.0.lock().unwrap().push(line);
                    sink.1.notify_all();
                }
            })
            .expect("log thread");
        let mut avr = Avr {
            child,
            port: 0,
            http_port: None,
            logs,
        };
        let line = avr
            .wait_log(
                |l| l.contains("AVR AudioSocket Server listening on port"),
                Duration::from_secs(20),
            )
            .unwrap_or_else(|| panic!("avr-core did not start; log:\n{}", avr.log_text()));
        avr.port = line
            .rsplit(' ')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .expect("port in the listening line");
        // avr-core starts the HTTP service before the AudioSocket listener.
        avr.http_port = avr
            .logs()
            .iter()
            .find_map(|l| l.split_once("AVR HTTP Server listening on port "))
            .and_then(|(_, port)| port.trim().parse().ok());
        avr
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The HTTP service's address; panics unless it was started (`HTTP_PORT`).
    pub fn http_addr(&self) -> SocketAddr {
        let port = self
            .http_port
            .unwrap_or_else(|| panic!("no HTTP service; log:\n{}", self.log_text()));
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a log line matching `pred` (including lines already logged).
    pub fn wait_log(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        self.wait_log_after(0, pred, timeout)
    }

    /// Like [`wait_log`](Self::wait_log), considering only lines from index `from` on.
    pub fn wait_log_after(
        &self,
        from: usize,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.logs;
        let mut lines = lock.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().skip(from).find(|l| pred(l)) {
                return Some(l.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            lines = cv.wait_timeout(lines, left).unwrap().0;
        }
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.0.lock().unwrap().clone()
    }

    pub fn log_text(&self) -> String {
        self.logs().join("\n")
    }

    /// Log lines that mention `uuid`.
    pub fn call_logs(&self, uuid: &str) -> Vec<String> {
        self.logs()
            .into_iter()
            .filter(|l| l.contains(&format!("[{uuid}]")))
            .collect()
    }

    /// Waits for the call's closing summary line (`Call ended after …`).
    pub fn wait_call_ended(&self, uuid: &str, timeout: Duration) -> String {
        let tag = format!("[{uuid}] Call ended after");
        self.wait_log(|l| l.contains(&tag), timeout)
            .unwrap_or_else(|| panic!("call {uuid} did not end; log:\n{}", self.log_text()))
    }

    /// The event types logged for `uuid`, in order (the debug event sink's lines), once its
    /// `call_ended` is logged: that comes after the call's summary line, so waiting for the
    /// summary alone can miss it.
    pub fn events(&self, uuid: &str) -> Vec<String> {
        let tag = format!("[{uuid}] event ");
        let ended = format!("{tag}{{\"uuid\":\"{uuid}\",\"type\":\"call_ended\"");
        self.wait_log(|l| l.contains(&ended), Duration::from_secs(10));
        self.logs()
            .iter()
            .filter_map(|l| l.split_once(&tag).map(|(_, body)| body.to_string()))
            .filter_map(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
            .filter_map(|v| v["type"].as_str().map(str::to_string))
            .collect()
    }

    pub fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Sends a signal by name (`TERM`, `INT`), as systemd or an operator would.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} failed");
    }

    /// Waits for the process to exit; its exit code, or `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running (it must survive every hostile input).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Avr {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
