//! What avr-core does with what the agent sends: bursts, barge-in, closing, garbage, silence.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::avr::Avr;
use crate::support::sts::{StsConn, StsServer};
use crate::support::{
    assert_audio, assert_heard, call_hung_up_by_server, call_options, non_silent, signal, to_bytes,
    to_samples, WAIT,
};
use avr_core::tools::simulate::{run_call, EndMode, EndedBy, SimReport};
use serde_json::json;

/// Starts a simulated call in the background and waits for avr-core's `init` at the agent.
fn call_with_agent(
    avr: &Avr,
    sts: &StsServer,
    duration: Duration,
    end: EndMode,
) -> (String, StsConn, thread::JoinHandle<SimReport>) {
    let (uuid, opts) = call_options(avr.addr(), duration, end);
    let sim = thread::spawn(move || run_call(&opts).expect("call"));
    let mut conn = sts.accept(WAIT).expect("avr-core connects to the agent");
    let init = conn.recv_json(WAIT).expect("init");
    assert_eq!(init, json!({"type": "init", "uuid": uuid}));
    (uuid, conn, sim)
}

/// Index of the first and last 20 ms frame holding agent audio (the test signal never
/// touches zero, silence is all zeros).
fn speech_frames(report: &SimReport) -> Option<(usize, usize)> {
    let frames: Vec<bool> = report
        .received
        .chunks(320)
        .map(|f| f.iter().any(|&b| b != 0))
        .collect();
    let first = frames.iter().position(|&s| s)?;
    let last = frames.iter().rposition(|&s| s)?;
    Some((first, last))
}

#[test]
fn a_three_second_burst_is_paced_out_in_real_time() {
    let sts = StsServer::start();
    let avr = Avr::start(&[("STS_URL", &sts.url())]);
    let (_uuid, mut conn, sim) =
        call_with_agent(&avr, &sts, Duration::from_millis(4500), EndMode::Close);
    let burst = signal(8000 * 3);
    conn.send_audio(&to_bytes(&burst));
    let report = sim.join().unwrap();

    assert!(report.violations.is_empty(), "{}", report.summary());
    // Strict: never more than 6 frames (120 ms of audio) in any 100 ms, however the agent sends.
    assert!(report.max_frames_in_100ms <= 6, "{}", report.summary());
    // The first frame (silence) follows the UUID at once, long before any agent audio.
    let first = report.time_to_first_frame.expect("frames");
    assert!(first < Duration::from_secs(1), "{}", report.summary());
    // All of the burst arrives, in order, spread over about its own length.
    assert_heard(&report, &burst);
    let (a, b) = speech_frames(&report).unwrap();
    let spread = report.arrivals[b] - report.arrivals[a];
    assert!(
        spread > Duration::from_millis(2700) && spread < Duration::from_millis(3600),
        "3 s of audio took {spread:?} to play\n{}",
        report.summary()
    );
    // About one second of audio per second over the whole call.
    let span = *report.arrivals.last().unwrap() - report.arrivals[0];
    let audio = Duration::from_millis(20 * (report.frames_received - 1));
    let ratio = audio.as_secs_f64() / span.as_secs_f64();
    assert!(
        ratio > 0.85 && ratio < 1.02,
        "ratio {ratio}\n{}",
        report.summary()
    );
}

#[test]
fn interruption_drops_queued_audio_at_once() {
    let sts = StsServer::start();
    let avr = Avr::start(&[("STS_URL", &sts.url())]);
    let (uuid, mut conn, sim) =
        call_with_agent(&avr, &sts, Duration::from_millis(4000), EndMode::Close);
    conn.send_audio(&to_bytes(&signal(8000 * 3)));
    // Let some of it play (timing is the subject here, not synchronisation).
    thread::sleep(Duration::from_millis(600));
    let interrupted_at = Instant::now();
    conn.send_json(&json!({"type": "interruption"}));
    let report = sim.join().unwrap();

    let (_, last) = speech_frames(&report).expect("some audio played");
    let last_at = report.started + report.arrivals[last];
    assert!(
        last_at < interrupted_at + Duration::from_millis(150),
        "agent audio kept playing {:?} after the interruption",
        last_at.saturating_duration_since(interrupted_at)
    );
    let played = non_silent(&to_samples(&report.received)).len();
    assert!(played < 8000 * 2, "played {played} samples of 24000");
    avr.wait_call_ended(&uuid, WAIT);
    assert!(avr.events(&uuid).contains(&"interruption".to_string()));
    let logs = avr.call_logs(&uuid).join("\n");
    assert!(logs.contains("Interruption: dropped"), "{logs}");
}

#[test]
fn agent_close_plays_queued_audio_then_hangs_up() {
    let sts = StsServer::start();
    let avr = Avr::start(&[("STS_URL", &sts.url())]);
    let (uuid, mut conn, sim) = call_with_agent(
        &avr,
        &sts,
        Duration::from_secs(30),
        EndMode::AwaitHangup(Duration::from_secs(30)),
    );
    let goodbye = signal(8000 * 2);
    conn.send_audio(&to_bytes(&goodbye));
    conn.close();
    let report = sim.join().unwrap();

    assert!(report.violations.is_empty(), "{}", report.summary());
    assert_eq!(
        report.ended_by,
        EndedBy::ServerHangup,
        "{}",
        report.summary()
    );
    assert!(report.hangup_received);
    // Every queued sample was played before the hangup.
    assert_heard(&report, &goodbye);
    assert!(
        report.duration < Duration::from_secs(10),
        "{}",
        report.summary()
    );
    let ended = avr.wait_call_ended(&uuid, WAIT);
    assert!(ended.contains("agent closed"), "{ended}");
    // The agent ending the conversation normally is no warning.
    let logs = avr.call_logs(&uuid);
    let ending = logs
        .iter()
        .find(|l| l.contains("Call ending: agent closed"))
        .expect("the ending line");
    assert!(ending.contains("[INFO]"), "{ending}");
}

#[test]
fn an_unreachable_agent_hangs_up_at_once() {
    // A port nobody listens on: bind, note it, close.
    let dead: SocketAddr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("ws://{dead}");
    let avr = Avr::start(&[("STS_URL", &url)]);
    let (uuid, report) = call_hung_up_by_server(avr.addr(), Duration::from_secs(30));
    assert!(
        report.duration < Duration::from_secs(3),
        "{}",
        report.summary()
    );
    let ended = avr.wait_call_ended(&uuid, WAIT);
    assert!(ended.contains("agent unreachable"), "{ended}");
    let why = avr
        .wait_log(
            |l| l.contains(&format!("[{uuid}] Call ending: agent unreachable")),
            WAIT,
        )
        .unwrap();
    assert!(why.contains(&url), "names the URL: {why}");
    assert!(why.contains("refused"), "names the error: {why}");
}

#[test]
fn an_agent_that_never_answers_the_handshake_times_out() {
    // Accepts TCP, never speaks: only STS_CONNECT_TIMEOUT can end the wait.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", silent.local_addr().unwrap());
    let avr = Avr::start(&[("STS_URL", &url), ("STS_CONNECT_TIMEOUT", "400ms")]);
    let (uuid, report) = call_hung_up_by_server(avr.addr(), Duration::from_secs(30));
    assert!(
        report.duration >= Duration::from_millis(400),
        "{}",
        report.summary()
    );
    assert!(
        report.duration < Duration::from_secs(4),
        "{}",
        report.summary()
    );
    // Frames kept flowing while the agent was being waited for.
    assert!(report.frames_received >= 15, "{}", report.summary());
    let why = avr
        .wait_log(
            |l| l.contains(&format!("[{uuid}] Call ending: agent unreachable")),
            WAIT,
        )
        .unwrap();
    assert!(why.contains("within 400 ms"), "{why}");
    drop(silent);
}

#[test]
fn agent_garbage_is_logged_once_and_the_call_goes_on() {
    let sts = StsServer::start();
    let avr = Avr::start(&[("STS_URL", &sts.url())]);
    let (uuid, mut conn, sim) =
        call_with_agent(&avr, &sts, Duration::from_millis(3000), EndMode::Close);
    for _ in 0..3 {
        conn.send_text_raw("this is not json");
        conn.send_json(&json!({"type": "mark", "name": "x"}));
        conn.send_json(&json!({"type": "audio", "audio": "%%%not base64%%%"}));
        conn.send_json(&json!({"no": "type"}));
        conn.send_json(&json!({"type": "error", "message": "model overloaded"}));
    }
    // Audio cut at an odd byte (its last byte begins a sample), then binary audio with the
    // rest: played as one stream, the odd byte carried over.
    let tail = signal(4000);
    let bytes = to_bytes(&tail);
    let odd = &bytes[..4001];
    conn.send_json(&json!({
        "type": "audio",
        "audio": base64_encode(odd),
    }));
    conn.send_binary(&bytes[4001..]);
    conn.send_json(&json!({"type": "transcript", "role": "agent", "text": "still here"}));
    let report = sim.join().unwrap();

    assert!(report.violations.is_empty(), "{}", report.summary());
    assert_eq!(report.ended_by, EndedBy::Client, "{}", report.summary());
    assert_heard(&report, &tail);
    avr.wait_call_ended(&uuid, WAIT);
    let logs = avr.call_logs(&uuid);
    let count = |needle: &str| logs.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(count("Ignoring an unusable STS message"), 1, "{logs:#?}");
    assert_eq!(count("Ignoring STS messages of unknown type \"mark\""), 1);
    assert_eq!(count("STS error: model overloaded"), 3);
    assert_eq!(count("odd length"), 0, "an odd length is no error");
    assert_eq!(count("[agent]: still here"), 1);
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn ambient_noise_is_mixed_under_speech_and_fills_pauses() {
    // A constant "noise" makes the mix checkable sample by sample: level 0.5 turns 200 into 100.
    let path = std::env::temp_dir().join(format!("avr-test-noise-{}.raw", uuid::Uuid::new_v4()));
    std::fs::write(&path, to_bytes(&[200i16; 8000])).unwrap();
    let sts = StsServer::start();
    let avr = Avr::start(&[
        ("STS_URL", &sts.url()),
        ("AMBIENT_NOISE_FILE", path.to_str().unwrap()),
        ("AMBIENT_NOISE_LEVEL", "0.5"),
    ]);
    let (uuid, mut conn, sim) =
        call_with_agent(&avr, &sts, Duration::from_millis(2000), EndMode::Close);
    let speech = signal(4000);
    conn.send_audio(&to_bytes(&speech));
    let report = sim.join().unwrap();
    let _ = std::fs::remove_file(&path);

    let samples = to_samples(&report.received);
    assert!(
        samples.iter().all(|&s| s != 0),
        "no frame is bare silence: {}",
        report.summary()
    );
    let pauses = samples.iter().filter(|&&s| s == 100).count();
    assert!(pauses > 8000, "noise alone in the pauses: {pauses} samples");
    let under_speech: Vec<i16> = samples
        .iter()
        .filter(|&&s| s != 100)
        .map(|&s| s - 100)
        .collect();
    assert_audio(&under_speech, &speech, false, 0, &report.summary());
    avr.wait_call_ended(&uuid, WAIT);
}

#[test]
fn an_agent_that_speaks_in_the_same_packet_as_its_handshake_is_heard() {
    // An agent that greets the caller at once: its first message travels in the same TCP
    // write as its 101 response, so avr-core reads it together with the handshake (before
    // it ever polls the socket) and must not leave it waiting for the agent's next packet.
    let agent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", agent.local_addr().unwrap());
    let greeting = signal(400); // 50 ms: small enough to arrive whole with the 101
    let server = thread::spawn({
        let audio = to_bytes(&greeting);
        move || {
            let (mut s, _) = agent.accept().unwrap();
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") {
                s.read_exact(&mut byte).unwrap();
                request.push(byte[0]);
            }
            let request = String::from_utf8(request).unwrap();
            let key = request
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .expect("a WebSocket key");
            let accept = tungstenite::handshake::derive_accept_key(key.trim().as_bytes());
            let text = json!({"type": "audio", "audio": base64_encode(&audio)}).to_string();
            let mut out = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .into_bytes();
            // One unmasked text frame (server to client), 16-bit length.
            out.extend_from_slice(&[0x81, 126]);
            out.extend_from_slice(&(text.len() as u16).to_be_bytes());
            out.extend_from_slice(text.as_bytes());
            s.write_all(&out).unwrap();
            // Nothing more from the agent; take what avr-core sends until it closes.
            std::io::copy(&mut s, &mut std::io::sink()).ok();
        }
    });
    let avr = Avr::start(&[("STS_URL", &url)]);
    let (uuid, opts) = call_options(avr.addr(), Duration::from_millis(2000), EndMode::Close);
    let report = run_call(&opts).expect("call");

    assert!(report.violations.is_empty(), "{}", report.summary());
    assert_heard(&report, &greeting);
    avr.wait_call_ended(&uuid, WAIT);
    server.join().unwrap();
}

#[test]
fn an_oversized_agent_message_ends_the_agent_not_the_process() {
    let sts = StsServer::start();
    let mut avr = Avr::start(&[("STS_URL", &sts.url())]);
    let (uuid, mut conn, sim) = call_with_agent(
        &avr,
        &sts,
        Duration::from_secs(30),
        EndMode::AwaitHangup(Duration::from_secs(30)),
    );
    // Half a second that plays, then one message just over the 2 MiB limit.
    let before = signal(4000);
    conn.send_audio(&to_bytes(&before));
    conn.send_binary(&vec![1u8; avr_core::agent::connect::MAX_AGENT_MESSAGE + 1]);
    let report = sim.join().unwrap();
    assert!(report.violations.is_empty(), "{}", report.summary());
    assert_eq!(
        report.ended_by,
        EndedBy::ServerHangup,
        "{}",
        report.summary()
    );
    assert_heard(&report, &before);
    let ended = avr.wait_call_ended(&uuid, WAIT);
    assert!(ended.contains("agent closed"), "{ended}");
    assert!(
        avr.alive(),
        "one agent's message cannot take the process down"
    );
}
