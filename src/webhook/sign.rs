//! The secret header and the Standard Webhooks v1 signature headers.
//!
//! Pure functions of (secret, id, timestamp, body): no clock, no I/O. The worker stamps each
//! attempt with its own time, so a receiver's replay window is measured from the attempt, not
//! from the event (the Standard Webhooks rule), while `webhook-id` stays the same across retries.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ring::hmac;

use crate::config::Signature;

/// Prefix of Standard Webhooks secrets; the rest is the base64 of the key bytes.
const WHSEC_PREFIX: &str = "whsec_";

/// Everything needed to authenticate a request to the receiver. Built once at startup.
pub struct Signer {
    header: String,
    scheme: Signature,
    /// The secret as configured: the `plain` header value and the `hmac-sha256` key.
    secret: String,
    /// Key of the Standard Webhooks signature (a `whsec_` secret decoded).
    standard_key: hmac::Key,
}

impl Signer {
    /// `header` is `WEBHOOK_SECRET_HEADER`, `scheme` is `WEBHOOK_SIGNATURE`.
    pub fn new(secret: &str, header: &str, scheme: Signature) -> Signer {
        Signer {
            header: header.to_string(),
            scheme,
            secret: secret.to_string(),
            standard_key: hmac::Key::new(hmac::HMAC_SHA256, &standard_key_bytes(secret)),
        }
    }

    /// Whether a `whsec_` secret fails to decode, so `Webhooks::start` can warn once that the
    /// raw text is used as the key instead (receivers' libraries would reject every event).
    pub fn whsec_undecodable(secret: &str) -> bool {
        secret
            .strip_prefix(WHSEC_PREFIX)
            .is_some_and(|b64| BASE64.decode(b64).is_err())
    }

    /// The authentication headers of one attempt, as `(name, value)` pairs.
    pub fn headers(&self, webhook_id: &str, timestamp: u64, body: &[u8]) -> Vec<(String, String)> {
        let secret_value = match self.scheme {
            Signature::Plain => self.secret.clone(),
            Signature::HmacSha256 => hex_hmac_sha256(self.secret.as_bytes(), body),
        };
        let mut headers = vec![(self.header.clone(), secret_value)];
        headers.extend(id_headers(webhook_id, timestamp));
        headers.push((
            "webhook-signature".into(),
            sign_with(&self.standard_key, webhook_id, timestamp, body),
        ));
        headers
    }
}

/// `webhook-id` and `webhook-timestamp`, sent on every request, signed or not: delivery is
/// at least once (a retry after a timeout, a replay, a resend from the spool after a crash),
/// and the id is what lets any receiver drop the duplicates (docs/webhooks.md §4).
pub fn id_headers(webhook_id: &str, timestamp: u64) -> [(String, String); 2] {
    [
        ("webhook-id".into(), webhook_id.to_string()),
        ("webhook-timestamp".into(), timestamp.to_string()),
    ]
}

/// Lowercase hex HMAC-SHA256 of `body`: what the upstream receiver example computes with
/// `crypto.createHmac('sha256', secret).update(payload).digest('hex')`.
pub fn hex_hmac_sha256(key: &[u8], body: &[u8]) -> String {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), body);
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The Standard Webhooks key: a `whsec_` secret is base64-decoded (as the spec and every
/// reference library do); any other secret, or one that does not decode, is used as it is.
pub fn standard_key_bytes(secret: &str) -> Vec<u8> {
    secret
        .strip_prefix(WHSEC_PREFIX)
        .and_then(|b64| BASE64.decode(b64).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub fn standard_signature(secret: &str, webhook_id: &str, timestamp: u64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, &standard_key_bytes(secret));
    sign_with(&key, webhook_id, timestamp, body)
}

fn sign_with(key: &hmac::Key, webhook_id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(webhook_id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("v1,{}", BASE64.encode(ctx.sign().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published vector, from the Standard Webhooks reference libraries' tests
    /// (`libraries/php/tests/WebhookTest.php`, `testSignFunctionWorks`). Reproducing the
    /// reference output, not round-tripping our own verifier, is what proves a receiver's
    /// library will accept what we send.
    #[test]
    fn reproduces_the_standard_webhooks_test_vector() {
        assert_eq!(
            standard_signature(
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#,
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        // And the Rust reference library's own `test_sign` vector.
        assert_eq!(
            standard_signature(
                "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1_649_367_553,
                br#"{"email":"test@example.com","username":"test_user"}"#,
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn hex_hmac_matches_rfc_4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            hex_hmac_sha256(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn non_whsec_secrets_are_raw_keys() {
        assert_eq!(standard_key_bytes("plain-secret"), b"plain-secret".to_vec());
        assert_eq!(standard_key_bytes("whsec_AAEC"), vec![0, 1, 2]);
        // Not base64 after the prefix: the raw text, and the start-up warning says so.
        assert_eq!(standard_key_bytes("whsec_!!"), b"whsec_!!".to_vec());
        assert!(Signer::whsec_undecodable("whsec_!!"));
        assert!(!Signer::whsec_undecodable("whsec_AAEC"));
        assert!(!Signer::whsec_undecodable("anything"));
    }

    #[test]
    fn headers_per_scheme() {
        let body = br#"{"uuid":"u","type":"call_started","timestamp":"t","payload":{}}"#;
        let plain = Signer::new("s3cret", "X-AVR-WEBHOOK-SECRET", Signature::Plain);
        let h = plain.headers("msg_1", 1_700_000_000, body);
        assert_eq!(h[0], ("X-AVR-WEBHOOK-SECRET".into(), "s3cret".into()));
        assert_eq!(h[1], ("webhook-id".into(), "msg_1".into()));
        assert_eq!(h[2], ("webhook-timestamp".into(), "1700000000".into()));
        assert_eq!(
            h[3].1,
            standard_signature("s3cret", "msg_1", 1_700_000_000, body)
        );

        let hmac = Signer::new("s3cret", "X-DSAI-WEBHOOK-SECRET", Signature::HmacSha256);
        let h = hmac.headers("msg_1", 1_700_000_000, body);
        assert_eq!(h[0].0, "X-DSAI-WEBHOOK-SECRET");
        assert_eq!(h[0].1, hex_hmac_sha256(b"s3cret", body));
        assert_eq!(h[0].1.len(), 64);
        assert!(h[0]
            .1
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
    }
}
