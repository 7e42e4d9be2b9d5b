//! The routes of the HTTP service: what `/health`, `/call` and `/metrics` answer, given a
//! whole request. No socket here: [`Service::respond`] answers a request as the server
//! would, which is how the unit tests and tools drive it.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::config::{self, Config};
use crate::metrics::Metrics;
use crate::proto::audiosocket;
use crate::proto::sts_url::effective_url;
use crate::registry::{CallMetadata, Full, Health, Refused, Registry};

/// The longest effective STS URL `/call` accepts. The payload travels in the URL's query
/// (docs/sts.md §2.2), and common servers refuse a request line over 8 KiB (nginx's and
/// Apache's defaults): past it the call would fail the moment it connects, after `/call` had
/// answered 200, so `/call` refuses it instead, with the reason (docs/http.md §3.3).
pub const MAX_STS_URL_BYTES: usize = 8 * 1024;

/// Step 2 of `/call`: sends `call_initiated` for `(uuid, payload)` and returns the
/// receiver's JSON answer, if any. Blocking, bounded by the caller (≤ 10 s).
pub type CallInitiated = Box<dyn Fn(&str, &Map<String, Value>) -> Option<Value> + Send + Sync>;

/// The routes and what they share with the calls.
pub struct Service {
    sts_url: String,
    token: Option<String>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    call_initiated: CallInitiated,
    /// Set on SIGTERM: the instance finishes its live calls and takes no new ones, so
    /// `/health` and `/call` answer 503 and a load balancer sends new calls elsewhere.
    draining: Arc<AtomicBool>,
}

/// An answer, with the reason for the log line when it is an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// The `error` text of an error answer.
    pub error: Option<String>,
}

impl Response {
    fn json(status: u16, body: &Value) -> Response {
        Response {
            status,
            content_type: "application/json; charset=utf-8",
            headers: Vec::new(),
            body: body.to_string(),
            error: None,
        }
    }

    /// `{"error": "<message>"}`.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        let message = message.into();
        Response {
            error: Some(message.clone()),
            ..Response::json(status, &json!({ "error": message }))
        }
    }

    pub(super) fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }
}

/// The three endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    Health,
    Metrics,
    Call,
}

impl Service {
    /// `call_initiated` starts as "no webhook" (no answer); see [`with_call_initiated`].
    ///
    /// [`with_call_initiated`]: Service::with_call_initiated
    pub fn new(config: &Config, registry: Arc<Registry>, metrics: Arc<Metrics>) -> Service {
        Service {
            sts_url: config.sts_url.clone(),
            token: config.http_token.clone(),
            registry,
            metrics,
            call_initiated: Box::new(|_, _| None),
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Shares the instance's draining state (set on SIGTERM); see [`Service::is_draining`].
    pub fn with_draining(mut self, draining: Arc<AtomicBool>) -> Service {
        self.draining = draining;
        self
    }

    /// Whether the instance is stopping: it serves its live calls but no new ones.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// Sets step 2 of `/call`, e.g. the webhook's `call_initiated`.
    pub fn with_call_initiated(
        mut self,
        hook: impl Fn(&str, &Map<String, Value>) -> Option<Value> + Send + Sync + 'static,
    ) -> Service {
        self.call_initiated = Box::new(hook);
        self
    }

    /// Answers one complete request, as the server does: for tests and tools.
    pub fn respond(
        &self,
        method: &str,
        target: &str,
        authorization: Option<&str>,
        body: &[u8],
    ) -> Response {
        match self.check(
            method,
            target,
            authorization,
            Some(body.len() as u64),
            usize::MAX,
        ) {
            Ok(route) => self.handle(route, method, body),
            Err(refused) => refused,
        }
    }

    /// Everything decided from the head alone, before any body is read: 404, 405, 401, 413.
    pub(super) fn check(
        &self,
        method: &str,
        target: &str,
        authorization: Option<&str>,
        content_length: Option<u64>,
        max_body: usize,
    ) -> Result<Route, Response> {
        // Express's default routing, which the Node.js original uses: case-insensitive, one
        // trailing slash allowed, query ignored.
        let path = request_path(target);
        let trimmed = path
            .strip_suffix('/')
            .filter(|p| !p.is_empty())
            .unwrap_or(path);
        let route = [
            ("/health", Route::Health),
            ("/metrics", Route::Metrics),
            ("/call", Route::Call),
        ]
        .into_iter()
        .find(|(p, _)| p.eq_ignore_ascii_case(trimmed))
        .map(|(_, r)| r)
        .ok_or_else(|| {
            Response::error(
                404,
                format!(
                    "no such endpoint {}: use GET /health, POST /call or GET /metrics",
                    clip(path)
                ),
            )
        })?;
        let allowed = match route {
            Route::Health | Route::Metrics => method == "GET" || method == "HEAD",
            Route::Call => method == "POST",
        };
        if !allowed {
            let allow = if route == Route::Call {
                "POST"
            } else {
                "GET, HEAD"
            };
            return Err(Response::error(
                405,
                format!(
                    "{} is not allowed on {}; use {allow}",
                    clip(method),
                    clip(path)
                ),
            )
            .with_header("Allow", allow));
        }
        if route == Route::Call {
            if let Some(token) = &self.token {
                if !bearer_matches(authorization, token) {
                    let why = if authorization.is_none() {
                        "missing Authorization header: POST /call needs \
                         \"Authorization: Bearer <HTTP_TOKEN>\""
                    } else {
                        "wrong token: POST /call needs \"Authorization: Bearer <HTTP_TOKEN>\""
                    };
                    return Err(Response::error(401, why).with_header("WWW-Authenticate", "Bearer"));
                }
            }
        }
        match content_length {
            Some(n) if n > max_body as u64 => Err(too_large(max_body)),
            _ => Ok(route),
        }
    }

    pub(super) fn handle(&self, route: Route, method: &str, body: &[u8]) -> Response {
        let mut response = match route {
            Route::Health => self.health(),
            Route::Metrics => Response {
                content_type: "text/plain; version=0.0.4",
                body: self.metrics.render(),
                ..Response::json(200, &Value::Null)
            },
            Route::Call => self.call(body),
        };
        if method == "HEAD" {
            // The length of what GET would send, without the body.
            let len = response.body.len();
            response.body.clear();
            response.headers.push(("Content-Length", len.to_string()));
        }
        response
    }

    /// `GET /health`: 503 `draining` from SIGTERM on, so that a load balancer's health check
    /// takes the instance out at once while its live calls finish (docs/http.md §3.1,
    /// docs/deployment.md); else today's body with the in-memory registry, and with a shared
    /// one whether it answers, so a balancer takes out an instance that cannot reach it.
    fn health(&self) -> Response {
        if self.is_draining() {
            let calls = self.metrics.active_calls.load(Relaxed);
            return Response::json(503, &json!({"status": "draining", "active_calls": calls}));
        }
        match self.registry.health() {
            Health::Memory => Response::json(200, &json!({"status": "ok"})),
            Health::Up => Response::json(200, &json!({"status": "ok", "registry": "ok"})),
            Health::Down(why) => Response::json(
                503,
                &json!({"status": "error", "registry": why.to_string()}),
            ),
        }
    }

    /// `503`: the registry cannot take the entry (full, or the shared one not answering:
    /// counted, `avr_registry_errors_total{side="call"}`).
    fn refused(&self, refused: Refused) -> Response {
        match refused {
            Refused::Full(full) => store_full(&full),
            Refused::Unavailable(why) => {
                self.metrics.registry_errors_call.fetch_add(1, Relaxed);
                Response::error(503, why.to_string())
            }
        }
    }

    /// `POST /call`, steps 1–4 of docs/http.md §3.
    fn call(&self, body: &[u8]) -> Response {
        if self.is_draining() {
            // Before call_initiated: the receiver hears of no call this instance will not take.
            return Response::error(
                503,
                "this avr-core instance is shutting down (SIGTERM) and takes no new calls; \
                 send /call and the AudioSocket connection to another instance",
            );
        }
        let (uuid, payload) = match parse_call(body) {
            Ok(parsed) => parsed,
            Err(why) => return Response::error(400, why),
        };
        // Refused before call_initiated when the local URL already cannot be used or stored,
        // so the receiver hears of no call that cannot happen.
        let local = CallMetadata {
            sts_url: sts_url_for(&self.sts_url, &payload),
            payload,
            overridden: false,
        };
        if local.sts_url.len() > MAX_STS_URL_BYTES {
            return url_too_long(local.sts_url.len(), false);
        }
        if let Err(refused) = self.registry.check(&uuid, &local, Instant::now()) {
            return self.refused(refused);
        }
        let payload = local.payload;
        let answer = (self.call_initiated)(&uuid, &payload);
        let (base, overridden, note) = match sts_url_override(answer.as_ref()) {
            Ok(url) => {
                log::info!("[{uuid}] Overriding STS URL: {}", config::mask_url(url));
                (url, true, None)
            }
            Err(note) => (self.sts_url.as_str(), false, note),
        };
        if let Some(note) = &note {
            log::warn!("[{uuid}] {note}; keeping the local STS URL");
        }
        let url = sts_url_for(base, &payload);
        if url.len() > MAX_STS_URL_BYTES {
            return url_too_long(url.len(), overridden);
        }
        let masked = config::mask_url(&url);
        let inserted = self.registry.insert(
            &uuid,
            CallMetadata {
                sts_url: url,
                payload,
                overridden,
            },
            Instant::now(),
        );
        let inserted = match inserted {
            Ok(inserted) => inserted,
            Err(refused) => return self.refused(refused),
        };
        log::info!(
            "POST /call [{uuid}] → sts_url {} (override: {overridden}){}",
            clip_long(&masked),
            if inserted.replaced {
                "; replaced an earlier /call for this uuid"
            } else {
                ""
            }
        );
        // The password stays out of the answer too: dialplans log it (`NoOp(${JSON_RESPONSE})`).
        Response::json(200, &json!({"sts_url": masked, "override": overridden}))
    }
}

/// The agent URL a call with `payload` gets from `base`; none (empty) in pipeline mode
/// unless `call_initiated` routed the call to an STS agent (docs/pipeline.md §8).
fn sts_url_for(base: &str, payload: &serde_json::Map<String, Value>) -> String {
    if base.is_empty() {
        return String::new();
    }
    effective_url(base, payload)
}

/// `503` with `Retry-After`: no unexpired entry is evicted to make room (docs/http.md §3.3).
/// The server logs the refusal with its reason, like every error answer.
fn store_full(full: &Full) -> Response {
    Response::error(503, full.to_string())
        .with_header("Retry-After", full.retry_after.as_secs().to_string())
}

/// `413`: the effective STS URL would be over [`MAX_STS_URL_BYTES`].
fn url_too_long(len: usize, overridden: bool) -> Response {
    let base = if overridden {
        "the call_initiated answer's sts_url"
    } else {
        "STS_URL"
    };
    let why = format!(
        "the payload makes the STS URL {len} bytes long ({base} with the payload as query \
         parameters), over the limit of {} KiB that servers accept in a request line: send \
         less call metadata",
        MAX_STS_URL_BYTES / 1024
    );
    Response::error(413, why)
}

/// The uuid (canonical) and payload of a `/call` body, or what is wrong with it.
fn parse_call(body: &[u8]) -> Result<(String, Map<String, Value>), String> {
    const SHAPE: &str = r#"send {"uuid": "<uuid>", "payload": {...}}"#;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(format!("the body is empty; {SHAPE}"));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not valid JSON ({e}); {SHAPE}"))?;
    let Value::Object(mut fields) = value else {
        return Err(format!("the body must be a JSON object; {SHAPE}"));
    };
    let uuid = match fields.get("uuid") {
        None | Some(Value::Null) => return Err(format!("\"uuid\" is missing; {SHAPE}")),
        Some(Value::String(text)) => match audiosocket::CallId::parse(text) {
            Some(id) => id.to_string(),
            None => {
                return Err(format!(
                    "\"uuid\" must be 8-4-4-4-12 hex digits like \
                     935652e3-7c59-4edc-b17f-9646a9c2a265 (the uuid given to \
                     Dial(AudioSocket/…)), got {:?}",
                    clip(text)
                ))
            }
        },
        Some(other) => {
            return Err(format!(
                "\"uuid\" must be a string, got {}",
                json_kind(other)
            ))
        }
    };
    let payload = match fields.remove("payload") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(format!(
                "\"payload\" must be a JSON object of call metadata, got {}",
                json_kind(&other)
            ))
        }
    };
    Ok((uuid, payload))
}

/// The base URL a `call_initiated` answer asks for, or why the answer gives none
/// (`Err(None)`: nothing worth a log line, i.e. no answer or no `sts_url` in it).
fn sts_url_override(answer: Option<&Value>) -> Result<&str, Option<String>> {
    let Some(answer) = answer else {
        return Err(None);
    };
    match answer.get("sts_url") {
        None | Some(Value::Null) => Err(None),
        Some(Value::String(url)) => match config::validate_ws_url(url) {
            Ok(()) => Ok(url),
            Err(why) => Err(Some(format!(
                "Ignoring the call_initiated answer's sts_url {:?}: {why}",
                clip(&config::mask_url(url))
            ))),
        },
        Some(other) => Err(Some(format!(
            "Ignoring the call_initiated answer's sts_url: it must be a string, got {}",
            json_kind(other)
        ))),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The path of a request target: origin form (`/call?x`) or absolute form (`http://h/call`).
fn request_path(target: &str) -> &str {
    let rest = match target.find("://") {
        Some(i) if !target.starts_with('/') => {
            let after = &target[i + 3..];
            after.find('/').map_or("/", |p| &after[p..])
        }
        _ => target,
    };
    rest.split(['?', '#']).next().unwrap_or(rest)
}

/// `Authorization: Bearer <token>` (scheme case-insensitive), compared in constant time so
/// the answer's timing does not reveal how much of a guess was right.
fn bearer_matches(authorization: Option<&str>, token: &str) -> bool {
    let Some(given) = authorization.map(str::trim) else {
        return false;
    };
    let Some((scheme, value)) = given.split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    let (given, want) = (value.trim().as_bytes(), token.as_bytes());
    let mut diff = u8::from(given.len() != want.len());
    for (i, w) in want.iter().enumerate() {
        diff |= w ^ given.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(diff) == 0
}

pub(super) fn too_large(max_body: usize) -> Response {
    Response::error(
        413,
        format!(
            "the body is over {} KiB; /call metadata must be smaller",
            max_body / 1024
        ),
    )
}

/// A URL for a log line: payloads may make it 190 KiB long.
fn clip_long(url: &str) -> String {
    match url.char_indices().nth(400) {
        Some((cut, _)) => format!("{}… ({} bytes)", &url[..cut], url.len()),
        None => url.to_string(),
    }
}

/// At most 80 characters of client-supplied text, for messages and logs.
pub(super) fn clip(text: &str) -> &str {
    text.char_indices()
        .nth(80)
        .map_or(text, |(cut, _)| &text[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn service(token: Option<&str>) -> Service {
        let mut vars = vec![("STS_URL".to_string(), "ws://agent:6030".to_string())];
        if let Some(t) = token {
            vars.push(("HTTP_TOKEN".into(), t.into()));
        }
        let config = Config::from_vars(&vars).unwrap();
        Service::new(
            &config,
            Arc::new(Registry::new(Duration::from_secs(60))),
            Arc::new(Metrics::default()),
        )
    }

    const UUID: &str = "935652e3-7c59-4edc-b17f-9646a9c2a265";

    fn body_json(r: &Response) -> Value {
        serde_json::from_str(&r.body).unwrap()
    }

    #[test]
    fn health_is_exact() {
        let r = service(None).respond("GET", "/health", None, b"");
        assert_eq!((r.status, r.body.as_str()), (200, r#"{"status":"ok"}"#));
        let r = service(None).respond("HEAD", "/health", None, b"");
        assert_eq!((r.status, r.body.as_str()), (200, ""));
    }

    #[test]
    fn call_builds_the_url_and_stores_the_metadata() {
        let s = service(None);
        let body = format!(
            r#"{{"uuid":"{}","payload":{{"from":"2000","channel":"PJSIP/2000-00000013"}}}}"#,
            UUID.to_uppercase()
        );
        let r = s.respond("POST", "/call", None, body.as_bytes());
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            r.body,
            r#"{"sts_url":"ws://agent:6030/?from=2000&channel=PJSIP%2F2000-00000013","override":false}"#
        );
        let entry = s
            .registry
            .take(UUID, Instant::now())
            .expect("registry answers")
            .expect("stored canonical");
        assert_eq!(entry.payload["from"], "2000");
    }

    #[test]
    fn call_without_payload_stores_an_empty_one() {
        let s = service(None);
        let r = s.respond(
            "POST",
            "/call",
            None,
            format!(r#"{{"uuid":"{UUID}"}}"#).as_bytes(),
        );
        assert_eq!(body_json(&r)["sts_url"], "ws://agent:6030/");
        assert!(s
            .registry
            .take(UUID, Instant::now())
            .unwrap()
            .unwrap()
            .payload
            .is_empty());
    }

    #[test]
    fn a_valid_webhook_answer_overrides_the_base() {
        let s = service(None).with_call_initiated(|uuid, payload| {
            assert_eq!(payload["to"], "5001");
            Some(json!({"sts_url": format!("wss://u:secret@other:443/a?uuid={uuid}")}))
        });
        let body = format!(r#"{{"uuid":"{UUID}","payload":{{"to":"5001"}}}}"#);
        let r = s.respond("POST", "/call", None, body.as_bytes());
        assert_eq!(
            body_json(&r),
            json!({"sts_url": format!("wss://u:****@other:443/a?uuid={UUID}&to=5001"),
                   "override": true})
        );
        assert_eq!(
            s.registry
                .take(UUID, Instant::now())
                .unwrap()
                .unwrap()
                .sts_url,
            format!("wss://u:secret@other:443/a?uuid={UUID}&to=5001"),
            "the call itself gets the password"
        );
    }

    #[test]
    fn query_secrets_stay_out_of_the_answer() {
        let s = service(None).with_call_initiated(|_, _| {
            Some(json!({"sts_url": "wss://other/a?api_key=k1&region=eu"}))
        });
        let body = format!(r#"{{"uuid":"{UUID}","payload":{{"to":"5001","token":"t2"}}}}"#);
        let r = s.respond("POST", "/call", None, body.as_bytes());
        assert_eq!(
            body_json(&r)["sts_url"],
            "wss://other/a?api_key=****&region=eu&to=5001&token=****"
        );
        assert_eq!(
            s.registry
                .take(UUID, Instant::now())
                .unwrap()
                .unwrap()
                .sts_url,
            "wss://other/a?api_key=k1&region=eu&to=5001&token=t2",
            "the call itself gets the secrets"
        );
    }

    #[test]
    fn unusable_webhook_answers_keep_the_local_url() {
        for answer in [
            None,
            Some(json!({"ok": true})),
            Some(json!({"sts_url": "http://not-ws"})),
            Some(json!({"sts_url": 5})),
            Some(json!([1, 2])),
        ] {
            let s = service(None).with_call_initiated(move |_, _| answer.clone());
            let r = s.respond(
                "POST",
                "/call",
                None,
                format!(r#"{{"uuid":"{UUID}"}}"#).as_bytes(),
            );
            assert_eq!(
                body_json(&r),
                json!({"sts_url": "ws://agent:6030/", "override": false})
            );
        }
    }

    #[test]
    fn bad_bodies_are_400_with_a_reason() {
        let s = service(None);
        let cases: [(&str, &str); 8] = [
            ("", "empty"),
            ("{nope", "not valid JSON"),
            ("[1]", "JSON object"),
            (r#"{"payload":{}}"#, "\"uuid\" is missing"),
            (r#"{"uuid":5}"#, "must be a string"),
            (r#"{"uuid":"1234"}"#, "8-4-4-4-12"),
            (
                r#"{"uuid":"{935652e3-7c59-4edc-b17f-9646a9c2a265}"}"#,
                "8-4-4-4-12",
            ),
            (
                r#"{"uuid":"935652e3-7c59-4edc-b17f-9646a9c2a265","payload":[1]}"#,
                "\"payload\" must be a JSON object",
            ),
        ];
        for (body, why) in cases {
            let r = s.respond("POST", "/call", None, body.as_bytes());
            assert_eq!(r.status, 400, "{body}");
            let error = body_json(&r)["error"].as_str().unwrap().to_string();
            assert!(error.contains(why), "{body}: {error}");
        }
        assert!(s.registry.is_empty());
    }

    #[test]
    fn routing_follows_express_and_refuses_the_rest() {
        let s = service(None);
        assert_eq!(s.respond("GET", "/HEALTH/", None, b"").status, 200);
        assert_eq!(s.respond("GET", "/health?x=1", None, b"").status, 200);
        assert_eq!(s.respond("GET", "http://h:1/health", None, b"").status, 200);
        assert_eq!(s.respond("GET", "/nope", None, b"").status, 404);
        assert_eq!(s.respond("GET", "/", None, b"").status, 404);
        let r = s.respond("GET", "/call", None, b"");
        assert_eq!(r.status, 405);
        assert!(r.headers.contains(&("Allow", "POST".into())));
        let r = s.respond("POST", "/health", None, b"");
        assert!(r.headers.contains(&("Allow", "GET, HEAD".into())));
    }

    #[test]
    fn token_guards_call_only() {
        let s = service(Some("s3cret"));
        let body = format!(r#"{{"uuid":"{UUID}"}}"#);
        for auth in [
            None,
            Some("Bearer nope"),
            Some("Bearer s3cre"),
            Some("Basic s3cret"),
        ] {
            let r = s.respond("POST", "/call", auth, body.as_bytes());
            assert_eq!(r.status, 401, "{auth:?}");
            assert!(!r.body.contains("s3cret"));
        }
        assert_eq!(
            s.respond("POST", "/call", Some("bearer s3cret"), body.as_bytes())
                .status,
            200
        );
        assert_eq!(s.respond("GET", "/health", None, b"").status, 200);
        assert_eq!(s.respond("GET", "/metrics", None, b"").status, 200);
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let r = service(None).respond("GET", "/metrics", None, b"");
        assert_eq!(r.content_type, "text/plain; version=0.0.4");
        assert!(r.body.contains("avr_active_calls 0"));
    }

    fn call_body(uuid: &str, payload: &Value) -> String {
        json!({"uuid": uuid, "payload": payload}).to_string()
    }

    #[test]
    fn a_payload_making_the_url_too_long_is_413_before_the_webhook() {
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = asked.clone();
        let s = service(None).with_call_initiated(move |_, _| {
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            None
        });
        // "ws://agent:6030/?k=" is 19 bytes: the longest value that fits, and one more.
        let fits = "v".repeat(MAX_STS_URL_BYTES - 19);
        let r = s.respond(
            "POST",
            "/call",
            None,
            call_body(UUID, &json!({ "k": fits })).as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let over = format!("{fits}v");
        let r = s.respond(
            "POST",
            "/call",
            None,
            call_body(UUID, &json!({ "k": over })).as_bytes(),
        );
        assert_eq!(r.status, 413);
        let error = body_json(&r)["error"].as_str().unwrap().to_string();
        assert!(
            error.contains("8193 bytes") && error.contains("8 KiB"),
            "{error}"
        );
        assert_eq!(asked.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(s.registry.len(), 1, "only the first is stored");
    }

    #[test]
    fn an_override_making_the_url_too_long_is_413() {
        let long = format!("ws://other/{}", "p".repeat(MAX_STS_URL_BYTES));
        let s = service(None).with_call_initiated(move |_, _| Some(json!({ "sts_url": long })));
        let r = s.respond(
            "POST",
            "/call",
            None,
            format!(r#"{{"uuid":"{UUID}"}}"#).as_bytes(),
        );
        assert_eq!(r.status, 413);
        assert!(r.body.contains("call_initiated answer"), "{}", r.body);
        assert!(s.registry.is_empty());
    }

    #[test]
    fn a_full_store_is_503_and_evicts_nothing() {
        let config = Config::from_vars(&[("STS_URL".into(), "ws://agent:6030".into())]).unwrap();
        let registry = Arc::new(Registry::with_bounds(
            Duration::from_secs(60),
            2,
            usize::MAX,
        ));
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = asked.clone();
        let s = Service::new(&config, registry.clone(), Arc::new(Metrics::default()))
            .with_call_initiated(move |_, _| {
                seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                None
            });
        let uuids = [
            "00000000-0000-4000-8000-000000000001",
            "00000000-0000-4000-8000-000000000002",
            "00000000-0000-4000-8000-000000000003",
        ];
        for uuid in &uuids[..2] {
            let r = s.respond(
                "POST",
                "/call",
                None,
                call_body(uuid, &json!({})).as_bytes(),
            );
            assert_eq!(r.status, 200);
        }
        let r = s.respond(
            "POST",
            "/call",
            None,
            call_body(uuids[2], &json!({})).as_bytes(),
        );
        assert_eq!(r.status, 503);
        assert!(r.headers.contains(&("Retry-After", "60".into())), "{r:?}");
        assert!(r.body.contains("full"), "{}", r.body);
        assert_eq!(
            asked.load(std::sync::atomic::Ordering::Relaxed),
            2,
            "no webhook"
        );
        for uuid in &uuids[..2] {
            assert!(
                registry.take(uuid, Instant::now()).unwrap().is_some(),
                "{uuid} kept"
            );
        }
    }

    #[test]
    fn an_unreachable_shared_registry_refuses_call_and_fails_health() {
        // A port nothing listens on: bind one, note it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = Config::from_vars(&[("STS_URL".into(), "ws://agent:6030".into())]).unwrap();
        let registry = Registry::shared(
            &format!("redis://:pw@127.0.0.1:{port}"),
            Duration::from_secs(60),
            Duration::from_millis(200),
            None,
        )
        .unwrap();
        let metrics = Arc::new(Metrics::default());
        let s = Service::new(&config, Arc::new(registry), metrics.clone());
        let r = s.respond(
            "POST",
            "/call",
            None,
            call_body(UUID, &json!({})).as_bytes(),
        );
        assert_eq!(r.status, 503, "{r:?}");
        let why = body_json(&r)["error"].as_str().unwrap().to_string();
        assert!(
            why.contains("REGISTRY_URL") && why.contains(&port.to_string()),
            "{why}"
        );
        assert!(!why.contains("pw"), "{why}");
        assert!(s
            .respond("GET", "/metrics", None, b"")
            .body
            .contains("avr_registry_errors_total{side=\"call\"} 1"),);
        let r = s.respond("GET", "/health", None, b"");
        assert_eq!(r.status, 503);
        let body = body_json(&r);
        assert_eq!(body["status"], "error");
        assert!(
            body["registry"]
                .as_str()
                .unwrap()
                .contains("cannot connect"),
            "{body}"
        );
    }

    #[test]
    fn bearer_compare() {
        assert!(bearer_matches(Some("Bearer abc"), "abc"));
        assert!(bearer_matches(Some("  BEARER   abc "), "abc"));
        assert!(!bearer_matches(Some("Bearer abcd"), "abc"));
        assert!(!bearer_matches(Some("Bearer"), "abc"));
        assert!(!bearer_matches(Some("Bearer "), ""));
    }

    #[test]
    fn draining_turns_health_and_call_into_503_with_a_reason() {
        let draining = Arc::new(AtomicBool::new(false));
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = asked.clone();
        let s = service(None)
            .with_draining(draining.clone())
            .with_call_initiated(move |_, _| {
                seen.fetch_add(1, Relaxed);
                None
            });
        s.metrics.active_calls.store(3, Relaxed);
        let body = call_body(UUID, &json!({}));
        assert_eq!(s.respond("GET", "/health", None, b"").status, 200);
        assert_eq!(
            s.respond("POST", "/call", None, body.as_bytes()).status,
            200
        );

        draining.store(true, Relaxed);
        let r = s.respond("GET", "/health", None, b"");
        assert_eq!(r.status, 503);
        assert_eq!(
            body_json(&r),
            json!({"status": "draining", "active_calls": 3})
        );
        let r = s.respond("HEAD", "/health", None, b"");
        assert_eq!((r.status, r.body.as_str()), (503, ""));
        let uuid = "0f0e0d0c-0b0a-4908-8706-050403020100";
        let r = s.respond(
            "POST",
            "/call",
            None,
            call_body(uuid, &json!({})).as_bytes(),
        );
        assert_eq!(r.status, 503);
        let why = r.error.unwrap_or_default();
        assert!(
            why.contains("shutting down") && why.contains("another instance"),
            "{why}"
        );
        assert_eq!(asked.load(Relaxed), 1, "no call_initiated while draining");
        assert!(
            s.registry.take(uuid, Instant::now()).unwrap().is_none(),
            "nothing stored"
        );
        assert_eq!(
            s.respond("GET", "/metrics", None, b"").status,
            200,
            "metrics stay"
        );
    }
}
