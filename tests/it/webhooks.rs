//! Webhooks end to end: the real avr-core binary, its echo agent, a raw AudioSocket caller
//! and a real HTTP receiver (tests/support/webhook.rs).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::support::avr::Avr;
use crate::support::webhook::{hex_hmac, Reply, Request, WebhookReceiver};
use crate::support::WAIT;
use avr_core::tools::echo_sts::{EchoEvent, EchoOptions, EchoServer};
use crossbeam_channel::Receiver;
use serde_json::Value;

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A raw AudioSocket client playing Asterisk, recording when each frame from avr-core arrives.
struct Caller {
    stream: TcpStream,
    /// (arrival, kind, payload length) of every frame avr-core sends.
    frames: Receiver<(Instant, u8, usize)>,
}

impl Caller {
    fn dial(avr: &Avr, uuid: &[u8; 16]) -> Caller {
        let mut stream = TcpStream::connect(avr.addr()).expect("connect to avr-core");
        stream.set_nodelay(true).unwrap();
        let mut hello = vec![0x01, 0x00, 0x10];
        hello.extend_from_slice(uuid);
        stream.write_all(&hello).unwrap();
        let mut reader = stream.try_clone().unwrap();
        let (tx, frames) = crossbeam_channel::unbounded();
        thread::Builder::new()
            .name("caller-read".into())
            .spawn(move || loop {
                let mut head = [0u8; 3];
                if reader.read_exact(&mut head).is_err() {
                    return;
                }
                let len = usize::from(u16::from_be_bytes([head[1], head[2]]));
                let mut payload = vec![0; len];
                if reader.read_exact(&mut payload).is_err() {
                    return;
                }
                let _ = tx.send((Instant::now(), head[0], len));
            })
            .unwrap();
        Caller { stream, frames }
    }

    /// `n` slin frames: `10 01 40` + 320 bytes.
    fn audio(&mut self, n: usize) {
        let samples = crate::support::to_bytes(&crate::support::signal(160));
        for _ in 0..n {
            let mut frame = vec![0x10, 0x01, 0x40];
            frame.extend_from_slice(&samples);
            self.stream.write_all(&frame).unwrap();
        }
    }

    fn dtmf(&mut self, digit: u8) {
        self.stream.write_all(&[0x03, 0x00, 0x01, digit]).unwrap();
    }

    /// Asterisk's way of hanging up: it just closes.
    fn close(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

fn now_iso() -> String {
    avr_core::time::iso8601_millis(SystemTime::now())
}

pub(crate) fn temp_file(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "avr-webhooks-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn is_iso_millis(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// Checks the body is exactly the compact envelope, in the upstream field order, stamped
/// between `after` and `before`; returns its timestamp.
fn assert_envelope(req: &Request, uuid: &str, kind: &str, payload: &str, after: &str) -> String {
    let ts = req.json()["timestamp"].as_str().unwrap_or("").to_string();
    assert!(is_iso_millis(&ts), "timestamp {ts:?}");
    assert!(
        after <= ts.as_str() && ts <= now_iso(),
        "timestamp {ts} not in [{after}, now]"
    );
    assert_eq!(
        req.body_text(),
        format!(r#"{{"uuid":"{uuid}","type":"{kind}","timestamp":"{ts}","payload":{payload}}}"#)
    );
    ts
}

fn read_dead_letters(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON dead letter"))
        .collect()
}

/// The bodies avr-core logged for `uuid` (`[uuid] event <body>`), i.e. the exact bytes sent.
fn logged_bodies(avr: &Avr, uuid: &str) -> Vec<String> {
    let tag = format!("[{uuid}] event ");
    avr.logs()
        .iter()
        .filter_map(|l| l.split_once(&tag).map(|(_, b)| b.to_string()))
        .collect()
}

fn echo() -> (EchoServer, Receiver<EchoEvent>) {
    let server = EchoServer::start(
        "127.0.0.1:0".parse().unwrap(),
        EchoOptions {
            delay: Duration::from_millis(20),
            transcripts: true,
        },
    )
    .expect("start the echo agent");
    let events = server.events();
    (server, events)
}

fn wait_connected(events: &Receiver<EchoEvent>) {
    loop {
        match events.recv_timeout(WAIT) {
            Ok(EchoEvent::Connected { .. }) => return,
            Ok(_) => continue,
            Err(_) => panic!("avr-core did not connect to the echo agent"),
        }
    }
}

/// A port nothing listens on: connections to it are refused.
pub(crate) fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_call_sends_every_event_in_order_signed_both_ways() {
    let (agent, agent_events) = echo();
    let receiver = WebhookReceiver::start();
    let dead = temp_file("dead.jsonl");
    let sts = agent.url();
    let url = receiver.url();
    let avr = Avr::start(&[
        ("STS_URL", &sts),
        ("WEBHOOK_URL", &url),
        ("WEBHOOK_SECRET", WHSEC),
        ("WEBHOOK_SIGNATURE", "hmac-sha256"),
        ("WEBHOOK_SECRET_HEADER", "X-DSAI-WEBHOOK-SECRET"),
        ("WEBHOOK_DEAD_LETTER_FILE", dead.to_str().unwrap()),
    ]);
    let start = now_iso();
    let (uuid_bytes, uuid) = crate::support::new_uuid();
    let mut caller = Caller::dial(&avr, &uuid_bytes);

    let started = receiver.next(WAIT).expect("call_started");
    wait_connected(&agent_events);
    // 1.1 s of caller audio: the echo agent answers with one user and one agent transcript.
    caller.audio(55);
    let transcripts = receiver.take(2, WAIT);
    caller.dtmf(b'5');
    // The digit's webhook and the agent's "You pressed 5" come from two threads of the call;
    // both must arrive before call_ended, in whichever order they were emitted.
    let around_digit = receiver.take(2, WAIT);
    caller.close();
    avr.wait_call_ended(&uuid, WAIT);
    let ended = receiver.next(WAIT).expect("call_ended");

    let mut stamps = vec![assert_envelope(
        &started,
        &uuid,
        "call_started",
        "{}",
        &start,
    )];
    stamps.push(assert_envelope(
        &transcripts[0],
        &uuid,
        "transcription",
        r#"{"role":"user","text":"caller audio, second 1"}"#,
        &start,
    ));
    stamps.push(assert_envelope(
        &transcripts[1],
        &uuid,
        "transcription",
        r#"{"role":"agent","text":"echoing 1.0 s of audio"}"#,
        &start,
    ));
    let digit = around_digit
        .iter()
        .find(|r| r.kind() == "dtmf_digit")
        .expect("dtmf_digit");
    stamps.push(assert_envelope(
        digit,
        &uuid,
        "dtmf_digit",
        r#"{"digit":"5"}"#,
        &start,
    ));
    let pressed = around_digit
        .iter()
        .find(|r| r.kind() == "transcription")
        .expect("the agent's DTMF transcript");
    assert_envelope(
        pressed,
        &uuid,
        "transcription",
        r#"{"role":"agent","text":"You pressed 5"}"#,
        &start,
    );
    stamps.push(assert_envelope(&ended, &uuid, "call_ended", "{}", &start));
    let mut sorted = stamps.clone();
    sorted.sort();
    assert_eq!(stamps, sorted, "event timestamps go forward");
    // Nothing else was sent.
    assert!(receiver.next(Duration::from_millis(500)).is_none());

    let all = [&started, &transcripts[0], &transcripts[1]]
        .into_iter()
        .chain(around_digit.iter())
        .chain([&ended]);
    let mut ids = Vec::new();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for req in all {
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/events");
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert_eq!(
            req.header("user-agent"),
            Some(format!("avr-core/{}", env!("CARGO_PKG_VERSION")).as_str())
        );
        // hmac-sha256: the upstream example's hex HMAC of the raw body, keyed by the secret.
        assert_eq!(
            req.header("x-dsai-webhook-secret"),
            Some(hex_hmac(WHSEC, &req.body).as_str()),
            "{}",
            req.body_text()
        );
        assert!(req.header("x-avr-webhook-secret").is_none());
        // Standard Webhooks: whsec_ key decoded, `{id}.{timestamp}.{body}`.
        assert!(req.standard_signature_ok(WHSEC), "{:?}", req.headers);
        let id = req.header("webhook-id").unwrap().to_string();
        assert!(id.starts_with("msg_") && id.len() > 20, "{id}");
        ids.push(id);
        let ts: u64 = req.header("webhook-timestamp").unwrap().parse().unwrap();
        assert!(
            ts.abs_diff(now) < 120,
            "webhook-timestamp {ts} vs now {now}"
        );
    }
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "one webhook-id per event");
    assert!(read_dead_letters(&dead).is_empty());
}

#[test]
fn plain_secret_and_event_filter() {
    let (agent, _events) = echo();
    let receiver = WebhookReceiver::start();
    let sts = agent.url();
    // Credentials in the URL become Basic auth, as axios does; they are never logged.
    let url = format!("http://hook:pa55w0rd@{}/events", receiver.addr());
    let avr = Avr::start(&[
        ("STS_URL", &sts),
        ("WEBHOOK_URL", &url),
        ("WEBHOOK_SECRET", "shared-secret"),
        ("WEBHOOK_EVENTS", "call_ended"),
    ]);
    let start = now_iso();
    let (uuid_bytes, uuid) = crate::support::new_uuid();
    let caller = Caller::dial(&avr, &uuid_bytes);
    caller.close();
    avr.wait_call_ended(&uuid, WAIT);
    let ended = receiver.next(WAIT).expect("call_ended");
    assert_envelope(&ended, &uuid, "call_ended", "{}", &start);
    // plain (compat): the secret itself, in the default header.
    assert_eq!(ended.header("x-avr-webhook-secret"), Some("shared-secret"));
    // Not a whsec_ secret: the Standard Webhooks key is its raw bytes.
    assert!(ended.standard_signature_ok("shared-secret"));
    assert_eq!(
        ended.header("authorization"),
        Some("Basic aG9vazpwYTU1dzByZA==")
    );
    assert!(!avr.log_text().contains("pa55w0rd"));
    assert!(!avr.log_text().contains("shared-secret"));
    // call_started was filtered out; the debug log still shows it was emitted.
    assert!(receiver.next(Duration::from_millis(500)).is_none());
    assert_eq!(avr.events(&uuid), ["call_started", "call_ended"]);
}

#[test]
fn two_503s_then_200_make_three_attempts_with_one_webhook_id() {
    let (agent, _events) = echo();
    let receiver = WebhookReceiver::start();
    receiver.script([
        Reply::status(503),
        // Retry-After is honoured: the third attempt waits at least a second.
        Reply::status(503).header("Retry-After", "1"),
        Reply::ok(),
    ]);
    let dead = temp_file("dead.jsonl");
    let sts = agent.url();
    let url = receiver.url();
    let avr = Avr::start(&[
        ("STS_URL", &sts),
        ("WEBHOOK_URL", &url),
        ("WEBHOOK_SECRET", WHSEC),
        ("WEBHOOK_RETRY", "3"),
        ("WEBHOOK_EVENTS", "call_started"),
        ("WEBHOOK_DEAD_LETTER_FILE", dead.to_str().unwrap()),
    ]);
    let (uuid_bytes, uuid) = crate::support::new_uuid();
    let caller = Caller::dial(&avr, &uuid_bytes);
    let attempts = receiver.take(3, WAIT);
    caller.close();
    avr.wait_call_ended(&uuid, WAIT);
    assert!(
        receiver.next(Duration::from_millis(1500)).is_none(),
        "a fourth attempt"
    );

    let id = attempts[0].header("webhook-id").unwrap();
    let mut last_ts = 0u64;
    for a in &attempts {
        assert_eq!(a.body, attempts[0].body, "the same bytes every attempt");
        assert_eq!(a.header("webhook-id"), Some(id));
        let ts: u64 = a.header("webhook-timestamp").unwrap().parse().unwrap();
        assert!(ts >= last_ts, "webhook-timestamp goes backwards");
        last_ts = ts;
        assert!(a.standard_signature_ok(WHSEC));
        assert_eq!(a.header("x-avr-webhook-secret"), Some(WHSEC));
    }
    // Backoff of 250-500 ms before the 2nd attempt; Retry-After: 1 before the 3rd.
    let gap1 = attempts[1].at - attempts[0].at;
    let gap2 = attempts[2].at - attempts[1].at;
    assert!(gap1 >= Duration::from_millis(200), "{gap1:?}");
    assert!(gap2 >= Duration::from_millis(950), "{gap2:?}");
    let logs = avr.call_logs(&uuid);
    assert_eq!(
        logs.iter()
            .filter(|l| l.contains("[WEBHOOK][CALL_STARTED] Attempt"))
            .count(),
        2,
        "{logs:#?}"
    );
    assert!(!avr.log_text().contains("Retry failed"));
    assert!(read_dead_letters(&dead).is_empty());
}

#[test]
fn a_400_is_final_and_dead_lettered() {
    let (agent, _events) = echo();
    let receiver = WebhookReceiver::start();
    receiver.script([Reply::status(400)]);
    let dead = temp_file("dead.jsonl");
    let sts = agent.url();
    let url = receiver.url();
    let avr = Avr::start(&[
        ("STS_URL", &sts),
        ("WEBHOOK_URL", &url),
        ("WEBHOOK_RETRY", "3"),
        ("WEBHOOK_EVENTS", "call_started"),
        ("WEBHOOK_DEAD_LETTER_FILE", dead.to_str().unwrap()),
    ]);
    let (uuid_bytes, uuid) = crate::support::new_uuid();
    let caller = Caller::dial(&avr, &uuid_bytes);
    let first = receiver.next(WAIT).expect("one attempt");
    // No secret: no secret header and no signature, but the id and timestamp are on every
    // request, so any receiver can drop at-least-once duplicates (docs/webhooks.md §4).
    for h in ["x-avr-webhook-secret", "webhook-signature"] {
        assert!(first.header(h).is_none(), "{h}");
    }
    let id = first
        .header("webhook-id")
        .expect("webhook-id without a secret");
    assert!(id.starts_with("msg_") && id.len() == 36, "{id}");
    let ts: u64 = first
        .header("webhook-timestamp")
        .expect("webhook-timestamp without a secret")
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(ts.abs_diff(now) <= 5, "webhook-timestamp {ts} vs now {now}");
    let line = avr
        .wait_log(|l| l.contains("Retry failed"), WAIT)
        .expect("the failure line");
    assert!(
        line.contains(&format!(
            "[{uuid}] [WEBHOOK][CALL_STARTED] Retry failed: Message: Request failed with \
             status code 400 Code: HTTP_400 URL: {url} Method: POST Status: 400"
        )),
        "{line}"
    );
    let letters = read_dead_letters(&dead);
    assert_eq!(letters.len(), 1);
    let l = &letters[0];
    assert_eq!(l["event"], first.json());
    assert_eq!(l["url"], url.as_str());
    assert_eq!(l["attempts"], 1);
    assert_eq!(l["last_error"], "Request failed with status code 400");
    assert!(is_iso_millis(l["failed_at"].as_str().unwrap()));
    assert!(l["webhook_id"].as_str().unwrap().starts_with("msg_"));
    let keys: Vec<&String> = l.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "event",
            "url",
            "attempts",
            "last_error",
            "failed_at",
            "webhook_id"
        ]
    );
    caller.close();
    avr.wait_call_ended(&uuid, WAIT);
    assert!(receiver.next(Duration::from_millis(1000)).is_none());
}

#[test]
fn a_redirect_is_not_followed() {
    let (agent, _events) = echo();
    let receiver = WebhookReceiver::start();
    let moved = format!("http://{}/moved", receiver.addr());
    receiver.script([Reply::status(302).header("Location", &moved)]);
    let dead = temp_file("dead.jsonl");
    let sts = agent.url();
    let url = receiver.url();
    let avr = Avr::start(&[
        ("STS_URL", &sts),
        ("WEBHOOK_URL", &url),
        ("WEBHOOK_SECRET", "s"),
        ("WEBHOOK_RETRY", "2"),
        ("WEBHOOK_EVENTS", "call_started"),
        ("WEBHOOK_DEAD_LETTER_FILE", dead.to_str().unwrap()),
    ]);
    let (uuid_bytes, uuid) = crate::support::new_uuid();
    let caller = Caller::dial(&avr, &uuid_bytes);
    let first = receiver.next(WAIT).expect("one attempt");
    assert_eq!(first.path, "/events");
    let line = avr
        .wait_log(|l| l.contains("Retry failed"), WAIT)
        .expect("the failure line");
    assert!(line.contains("Code: HTTP_302"), "{line}");
    assert!(
        line.contains(&moved),
        "the line names the redirect target: {line}"
    );
    assert!(line.ends_with("Method: POST Status: 302"), "{line}");
    assert_eq!(read_dead_letters(&dead).len(), 1);
    caller.close();
    avr.wait_call_ended(&uuid, WAIT);
    assert!(
        receiver.next(Duration::from_millis(1000)).is_none(),
        "the redirect was followed or retried"
    );
}

#[test]
fn receiver_down_for_a_call_then_replay_delivers_everything_once() {
    let (agent, agent_events) = echo();
    let dead = temp_file("dead.jsonl");
    let port = closed_port();
    let down = format!("http://hook:pa55w0rd@127.0.0.1:{port}/events");
    let sts = agent.url();
    let avr = Avr::start(&[
        ("STS_URL", &sts),
        ("WEBHOOK_URL", &down),
        ("WEBHOOK_SECRET", WHSEC),
        ("WEBHOOK_DEAD_LETTER_FILE", dead.to_str().unwrap()),
    ]);
    let (uuid_bytes, uuid) = crate::support::new_uuid();
    let mut caller = Caller::dial(&avr, &uuid_bytes);
    wait_connected(&agent_events);
    caller.audio(55);
    caller.dtmf(b'7');
    // Let the agent's transcripts (webhook events too) arrive before hanging up.
    for text in ["[user]: caller audio, second 1", "[agent]: You pressed 7"] {
        let tag = format!("[{uuid}] {text}");
        avr.wait_log(|l| l.contains(&tag), WAIT)
            .unwrap_or_else(|| panic!("no {text:?} line:\n{}", avr.log_text()));
    }
    caller.close();
    avr.wait_call_ended(&uuid, WAIT);
    // Per-call order holds for failures too: call_ended fails last.
    let last = avr
        .wait_log(
            |l| l.contains(&format!("[{uuid}] [WEBHOOK][CALL_ENDED] Retry failed")),
            WAIT,
        )
        .unwrap_or_else(|| panic!("no failure line for call_ended:\n{}", avr.log_text()));
    let masked = format!("http://hook:****@127.0.0.1:{port}/events");
    assert!(
        last.ends_with(&format!(
            "Message: connect ECONNREFUSED 127.0.0.1:{port} Code: ECONNREFUSED URL: {masked} \
             Method: POST Status: "
        )),
        "{last}"
    );
    assert!(
        !avr.log_text().contains("pa55w0rd"),
        "a password was logged"
    );

    let sent = logged_bodies(&avr, &uuid);
    let kinds = avr.events(&uuid);
    assert_eq!(kinds.len(), 6, "{kinds:?}");
    assert_eq!(kinds.first().map(String::as_str), Some("call_started"));
    assert_eq!(kinds.last().map(String::as_str), Some("call_ended"));
    let letters = read_dead_letters(&dead);
    assert_eq!(letters.len(), sent.len());
    for (letter, body) in letters.iter().zip(&sent) {
        assert_eq!(
            letter["event"].to_string(),
            *body,
            "dead letters keep event order"
        );
        assert_eq!(letter["url"], masked.as_str());
        assert_eq!(letter["attempts"], 1);
    }
    let text = std::fs::read_to_string(&dead).unwrap();
    assert!(!text.contains("pa55w0rd"));

    // The receiver is back (elsewhere): replay sends each dead letter once, as it was.
    let receiver = WebhookReceiver::start();
    let replay = |file: &Path| {
        Command::new(env!("CARGO_BIN_EXE_avr-core"))
            .args(["webhooks", "replay", file.to_str().unwrap()])
            .env_clear()
            .env("STS_URL", &sts)
            .env("WEBHOOK_URL", receiver.url())
            .env("WEBHOOK_SECRET", WHSEC)
            .output()
            .expect("run avr-core webhooks replay")
    };
    let out = replay(&dead);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = sent.len();
    assert!(
        stdout.contains(&format!("replayed {n}: delivered {n}, still failing 0")),
        "{stdout}"
    );
    let got = receiver.take(n, WAIT);
    for ((req, body), letter) in got.iter().zip(&sent).zip(&letters) {
        assert_eq!(req.body_text(), body, "replayed byte for byte");
        assert_eq!(req.header("webhook-id"), letter["webhook_id"].as_str());
        assert!(req.standard_signature_ok(WHSEC));
    }
    assert!(receiver.next(Duration::from_millis(500)).is_none());
    assert_eq!(
        std::fs::read_to_string(&dead).unwrap(),
        "",
        "the file is emptied"
    );

    // Nothing left: a second replay sends nothing.
    let out = replay(&dead);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("replayed 0: delivered 0, still failing 0")
    );
    assert!(receiver.next(Duration::from_millis(300)).is_none());
}

#[test]
fn replay_keeps_what_still_fails() {
    let receiver = WebhookReceiver::start();
    receiver.script([Reply::ok(), Reply::status(500)]);
    let dead = temp_file("dead.jsonl");
    let line = |n: u32| {
        format!(
            r#"{{"event":{{"uuid":"u{n}","type":"call_started","timestamp":"2026-01-01T12:00:00.000Z","payload":{{}}}},"url":"x","attempts":1,"last_error":"e","failed_at":"2026-01-01T12:00:01.000Z","webhook_id":"msg_{n}"}}"#
        )
    };
    std::fs::write(&dead, format!("{}\n{}\nnot json\n", line(1), line(2))).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_avr-core"))
        .args(["webhooks", "replay"])
        .env_clear()
        .env("STS_URL", "ws://127.0.0.1:1")
        .env("WEBHOOK_URL", receiver.url())
        .env("WEBHOOK_DEAD_LETTER_FILE", &dead)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("replayed 2: delivered 1, still failing 1, unreadable lines kept 1"),
        "{stdout}"
    );
    let got = receiver.take(2, WAIT);
    assert_eq!(got[0].json()["uuid"], "u1");
    assert_eq!(got[1].json()["uuid"], "u2");
    let left = std::fs::read_to_string(&dead).unwrap();
    let lines: Vec<&str> = left.lines().collect();
    assert_eq!(lines.len(), 2, "{left}");
    let kept: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(kept["webhook_id"], "msg_2");
    assert_eq!(kept["attempts"], 2);
    assert_eq!(kept["last_error"], "Request failed with status code 500");
    assert_eq!(lines[1], "not json");
}

#[test]
fn webhooks_test_prints_the_answer() {
    let receiver = WebhookReceiver::start();
    receiver.script([
        Reply::ok().json(&serde_json::json!({"ok": true})),
        Reply::status(503).header("Retry-After", "5"),
    ]);
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_avr-core"))
            .args(["webhooks", "test"])
            .env_clear()
            .env("STS_URL", "ws://127.0.0.1:1")
            .env("WEBHOOK_URL", receiver.url())
            .env("WEBHOOK_SECRET", "s3cret")
            .output()
            .unwrap()
    };
    let out = run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("HTTP 200 OK"), "{stdout}");
    assert!(stdout.contains(r#"{"ok":true}"#), "{stdout}");
    assert!(!stdout.contains("s3cret"), "the secret was printed");
    let req = receiver.next(WAIT).unwrap();
    assert_eq!(req.kind(), "call_started");
    assert_eq!(req.header("x-avr-webhook-secret"), Some("s3cret"));
    assert!(req.standard_signature_ok("s3cret"));

    let out = run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("HTTP 503"), "{stdout}");
    assert!(stdout.contains("Retry-After: 5 s"), "{stdout}");
}

/// `webhooks test|replay` read only the `WEBHOOK_*` variables: they run on a machine (or in a
/// shell) where the server's `STS_URL` is not set, and still refuse a bad webhook setting.
#[test]
fn webhooks_tools_need_only_the_webhook_variables() {
    let receiver = WebhookReceiver::start();
    let dead = temp_file("dead.jsonl");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_avr-core"))
            .args(args)
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .expect("run avr-core webhooks");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let url = receiver.url();

    let (ok, stdout, stderr) = run(&["webhooks", "test"], &[("WEBHOOK_URL", &url)]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("OK: the receiver accepted the event"),
        "{stdout}"
    );
    assert_eq!(
        receiver.next(WAIT).expect("the sample event").kind(),
        "call_started"
    );

    let (ok, stdout, stderr) = run(
        &["webhooks", "replay"],
        &[
            ("WEBHOOK_URL", &url),
            ("WEBHOOK_DEAD_LETTER_FILE", dead.to_str().unwrap()),
        ],
    );
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("replayed 0: delivered 0, still failing 0"),
        "{stdout}"
    );

    let (ok, _, stderr) = run(
        &["webhooks", "test"],
        &[
            ("WEBHOOK_URL", &url),
            ("WEBHOOK_EVENTS", "call_started,call_answered"),
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("WEBHOOK_EVENTS=") && stderr.contains("\"call_answered\" is unknown"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(&["webhooks", "test"], &[]);
    assert!(!ok);
    assert!(stderr.contains("WEBHOOK_URL is not set"), "{stderr}");
    assert!(receiver.next(Duration::from_millis(300)).is_none());
}

#[test]
fn a_slow_receiver_does_not_delay_the_call() {
    let (agent, agent_events) = echo();
    let receiver = WebhookReceiver::start();
    receiver.set_default(Reply::ok().delay(Duration::from_secs(10)));
    let sts = agent.url();
    let url = receiver.url();
    let avr = Avr::start(&[
        ("STS_URL", &sts),
        ("WEBHOOK_URL", &url),
        ("WEBHOOK_TIMEOUT", "15s"),
        ("WEBHOOK_WORKERS", "1"),
    ]);
    let (uuid_bytes, uuid) = crate::support::new_uuid();
    let mut caller = Caller::dial(&avr, &uuid_bytes);
    // call_started is at the receiver, which will sit on it for 10 s.
    let started = receiver.next(WAIT).expect("call_started");
    assert_eq!(started.kind(), "call_started");
    wait_connected(&agent_events);

    // Two seconds of a live call: real-time caller audio (which brings transcripts, i.e. more
    // events queued behind the stuck one) while avr-core's frames are timed as they arrive.
    let begin = Instant::now();
    let mut next = begin;
    for _ in 0..100 {
        caller.audio(1);
        next += Duration::from_millis(20);
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let closed_at = Instant::now();
    caller.close();
    let line = avr.wait_call_ended(&uuid, WAIT);
    let ended_in = closed_at.elapsed();
    assert!(
        ended_in < Duration::from_secs(3),
        "the call took {ended_in:?} to end: {line}"
    );

    let arrivals: Vec<Instant> = caller
        .frames
        .try_iter()
        .filter(|(at, kind, len)| *kind == 0x10 && *len == 320 && *at >= begin && *at <= closed_at)
        .map(|(at, _, _)| at)
        .collect();
    // ~100 frames in 2 s; a busy 2-core box may lose a few slots, never the stream.
    assert!(
        arrivals.len() >= 80,
        "only {} frames in 2 s",
        arrivals.len()
    );
    let worst = arrivals
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        worst < Duration::from_millis(300),
        "a {worst:?} gap in the audio"
    );
}
