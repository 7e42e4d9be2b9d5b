//! Webhook deliveries per second and `/call` requests per second.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use avr_core::config::Config;
use avr_core::metrics::Metrics;
use avr_core::webhook::{Event, EventKind, Webhooks};

use crate::tap::{ms, pct};
use crate::{CALL_REQUEST_CLIENTS, CALL_REQUEST_SECONDS, WEBHOOK_EVENTS};

/// Webhook deliveries per second: the library's delivery pipeline (queue, dispatcher,
/// `WEBHOOK_WORKERS` = 4 workers, ureq, keep-alive) driven in this process with a burst of
/// events spread over 1,000 calls, to the local receiver that answers 200 at once. Each event
/// is synced to the spool beside `dead_letters` before it is sent (docs/webhooks.md §5.10).
pub fn webhook_rate(url: &str, seen: &AtomicU64, dead_letters: &std::path::Path) -> String {
    let vars: Vec<(String, String)> = [
        ("STS_URL", "ws://127.0.0.1:9"),
        ("WEBHOOK_URL", url),
        ("WEBHOOK_QUEUE_SIZE", "100000"),
        ("WEBHOOK_DEAD_LETTER_FILE", &dead_letters.to_string_lossy()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let config = Config::from_vars(&vars).expect("webhook benchmark config");
    let metrics = Arc::new(Metrics::default());
    let hooks = Webhooks::start(&config, metrics.clone());
    let uuids: Vec<String> = (0..1000)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let before = seen.load(Ordering::Relaxed);
    let start = Instant::now();
    for i in 0..WEBHOOK_EVENTS {
        let payload = serde_json::json!({"role": "agent", "text": format!("line {i}")});
        hooks.emit(Event::new(
            &uuids[i % uuids.len()],
            EventKind::Transcription,
            payload,
        ));
    }
    let enqueued = start.elapsed();
    let deadline = start + Duration::from_secs(120);
    while seen.load(Ordering::Relaxed) - before < WEBHOOK_EVENTS as u64 && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(5));
    }
    let took = start.elapsed();
    let got = seen.load(Ordering::Relaxed) - before;
    let _ = hooks.shutdown(Instant::now() + Duration::from_secs(2));
    format!(
        "{got} of {WEBHOOK_EVENTS} events delivered in {:.2} s = {:.0} events/s \
         (enqueued in {:.2} s; delivered {}, failed {}, dead letters {})",
        took.as_secs_f64(),
        got as f64 / took.as_secs_f64(),
        enqueued.as_secs_f64(),
        metrics.webhook_delivered.load(Ordering::Relaxed),
        metrics.webhook_failed.load(Ordering::Relaxed),
        metrics.webhook_dead_letters.load(Ordering::Relaxed),
    )
}

/// Uuids each `/call` client cycles through: the metadata store holds 10,000 entries and no
/// call follows these requests, so fresh uuids would fill it within seconds and every later
/// request would be refused with 503 (by design: unexpired entries are never evicted). A
/// repeated uuid replaces its entry, doing the same work.
pub const CALL_UUIDS_PER_CLIENT: usize = 1000;

/// `/call` requests per second: clients each posting one request per connection (avr-core
/// closes after each answer), every request also delivering its `call_initiated` webhook.
pub fn call_requests(http: SocketAddr) -> String {
    let stop = Instant::now() + Duration::from_secs(CALL_REQUEST_SECONDS);
    let start = Instant::now();
    let clients: Vec<_> = (0..CALL_REQUEST_CLIENTS)
        .map(|_| {
            thread::spawn(move || {
                let (mut ok, mut bad, mut lat) = (0u64, 0u64, Vec::new());
                let uuids: Vec<uuid::Uuid> = (0..CALL_UUIDS_PER_CLIENT)
                    .map(|_| uuid::Uuid::new_v4())
                    .collect();
                let mut next = uuids.iter().cycle();
                while Instant::now() < stop {
                    let t = Instant::now();
                    if post_call(http, next.next().expect("a cycle never ends")) {
                        ok += 1;
                        lat.push(t.elapsed().as_micros() as u32);
                    } else {
                        bad += 1;
                    }
                }
                (ok, bad, lat)
            })
        })
        .collect();
    let (mut ok, mut bad, mut lat) = (0, 0, Vec::new());
    for c in clients {
        let (o, b, l) = c.join().expect("client thread");
        ok += o;
        bad += b;
        lat.extend(l);
    }
    lat.sort_unstable();
    let took = start.elapsed();
    format!(
        "{:.0} requests/s ({ok} answered 200, {bad} failed, {CALL_REQUEST_CLIENTS} clients, \
         latency p50 {} ms p99 {} ms)",
        ok as f64 / took.as_secs_f64(),
        ms(pct(&lat, 50.0)),
        ms(pct(&lat, 99.0)),
    )
}

pub fn post_call(http: SocketAddr, uuid: &uuid::Uuid) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&http, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(15)));
    let body = format!(r#"{{"uuid":"{uuid}","payload":{{"from":"2000","to":"5001"}}}}"#);
    let request = format!(
        "POST /call HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.1 200")
}
