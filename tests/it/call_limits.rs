//! `/call`'s limits over real HTTP (docs/http.md §3.3): a payload whose STS URL would be too
//! long is refused with the reason instead of answered 200 and failed at once, and a full
//! metadata store answers 503 with `Retry-After` instead of evicting a legitimate call's
//! metadata.

use crate::support::avr::Avr;
use crate::support::http::{post, RawCall};
use crate::support::sts::StsServer;
use crate::support::{new_uuid, WAIT};
use serde_json::json;

/// The documented limit of the effective STS URL (docs/http.md §3.3).
const MAX_STS_URL_BYTES: usize = 8 * 1024;

/// avr-core with its HTTP service; thousands of /call events at debug level would only
/// measure the log capture.
fn start(sts: &StsServer, extra: &[(&str, &str)]) -> Avr {
    let mut env = vec![("LOG_LEVEL", "info")];
    env.extend_from_slice(extra);
    crate::http::start(sts, &env)
}

fn call_body(uuid: &str, value: &str) -> String {
    json!({"uuid": uuid, "payload": {"k": value}}).to_string()
}

#[test]
fn a_payload_too_long_for_the_sts_url_is_413_with_the_reason() {
    let sts = StsServer::start();
    let avr = start(&sts, &[]);
    let addr = avr.http_addr();
    let base = format!("{}/?k=", sts.url()).len();
    let (uuid_bytes, uuid) = new_uuid();

    // 56 KB of payload, as in the report: refused, with what to do about it.
    let r = post(addr, "/call", &call_body(&uuid, &"x".repeat(56_000)), &[]);
    assert_eq!(r.status, 413, "{}", r.body);
    let error = r.error();
    assert!(
        error.contains(&format!("{} bytes", base + 56_000))
            && error.contains("8 KiB")
            && error.contains("send less call metadata"),
        "{error}"
    );
    // The longest that fits is stored, and the call gets it.
    let fits = "y".repeat(MAX_STS_URL_BYTES - base);
    let r = post(addr, "/call", &call_body(&uuid, &fits), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let _call = RawCall::start(avr.addr(), uuid_bytes, 3);
    let conn = sts.accept(WAIT).expect("the call reaches its agent");
    assert!(
        conn.path().ends_with(&format!("k={fits}")),
        "the stored URL is used"
    );
}

#[test]
fn a_full_metadata_store_is_503_and_keeps_every_pending_call() {
    let sts = StsServer::start();
    let avr = start(&sts, &[("CALL_METADATA_TTL", "120s")]);
    let addr = avr.http_addr();
    // Entries near the URL limit fill the 32 MiB store in about 2,000 /calls.
    let base = format!("{}/?k=", sts.url()).len();
    let value = "z".repeat(MAX_STS_URL_BYTES - base);
    let (first_bytes, first) = new_uuid();
    let r = post(addr, "/call", &call_body(&first, &value), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let mut stored = 1;
    let refused = loop {
        let (_, uuid) = new_uuid();
        let r = post(addr, "/call", &call_body(&uuid, &value), &[]);
        if r.status != 200 {
            break r;
        }
        stored += 1;
        assert!(stored < 10_000, "the store never filled");
    };
    assert_eq!(refused.status, 503, "{}", refused.body);
    let retry: u64 = refused
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=120).contains(&retry), "Retry-After: {retry}");
    assert!(refused.error().contains("full"), "{}", refused.body);

    // The first /call's metadata was not evicted: its call connects with its payload.
    let _call = RawCall::start(avr.addr(), first_bytes, 3);
    let conn = sts
        .accept(WAIT)
        .unwrap_or_else(|| panic!("no agent connection:\n{}", avr.log_text()));
    assert!(
        conn.path().ends_with(&format!("k={value}")),
        "the call lost its /call metadata: {}",
        &conn.path()[..conn.path().len().min(80)]
    );
    drop(conn);
    // Its entry is claimed now, so there is room again at once.
    let (_, uuid) = new_uuid();
    let r = post(addr, "/call", &call_body(&uuid, &value), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
}
