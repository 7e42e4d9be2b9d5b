//! The effective STS URL of a `/call` (docs/sts.md §2.2): the base with the payload appended as
//! query parameters, byte for byte what the Node.js original's `URLSearchParams` produces, so
//! agents that parse the query keep working unchanged.

use serde_json::{Map, Value};

/// `base` with every payload key appended as a query parameter, in payload order.
///
/// - Keys and values are encoded by the `application/x-www-form-urlencoded` serializer
///   (what `URLSearchParams` writes): ASCII alphanumerics and `*-._` stay, space becomes `+`,
///   every other byte of the UTF-8 text is `%XX` with uppercase hex.
/// - Strings are written as they are; any other value as its compact JSON text (`5`, `true`,
///   `null`, `{"a":1}`).
/// - The base's query is kept byte for byte and the new parameters follow it.
/// - A base without a path gets `/`, as Node's `new URL("ws://h:1")` serialises it.
/// - A fragment is dropped: WebSocket URIs must not carry one (RFC 6455 §3) and it would
///   never reach the agent anyway.
pub fn effective_url(base: &str, payload: &Map<String, Value>) -> String {
    let base = base.split_once('#').map_or(base, |(before, _)| before);
    let mut url = String::with_capacity(base.len() + 1 + payload.len() * 16);
    // The authority ends at the first `/` or `?` after `scheme://`; no path there means none.
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find(['/', '?'])
        .map_or(base.len(), |i| authority_start + i);
    url.push_str(&base[..path_start]);
    if !base[path_start..].starts_with('/') {
        url.push('/');
    }
    url.push_str(&base[path_start..]);
    if payload.is_empty() {
        return url;
    }
    match url.find('?') {
        None => url.push('?'),
        Some(q) if q + 1 == url.len() || url.ends_with('&') => {}
        Some(_) => url.push('&'),
    }
    for (i, (key, value)) in payload.iter().enumerate() {
        if i > 0 {
            url.push('&');
        }
        form_encode_into(key, &mut url);
        url.push('=');
        match value {
            Value::String(s) => form_encode_into(s, &mut url),
            other => form_encode_into(&other.to_string(), &mut url),
        }
    }
    url
}

/// The query parameter that tells an agent the rate of its audio when `STS_SAMPLE_RATE` is
/// not the upstream 8000 (docs/sts.md §2.3). A parameter, not an `init` field, because the
/// agent may need the rate before it accepts the connection, and connectors that do not
/// know it ignore it.
pub const SAMPLE_RATE_PARAM: &str = "sample_rate";

/// `url` with `sample_rate=<rate>` appended to its query, by the same rules as a `/call`
/// payload (so the result is what [`effective_url`] would give with that pair last).
pub fn with_sample_rate(url: &str, rate_hz: u32) -> String {
    let mut pair = Map::new();
    pair.insert(SAMPLE_RATE_PARAM.into(), Value::from(rate_hz));
    effective_url(url, &pair)
}

/// The `application/x-www-form-urlencoded` byte serializer of the WHATWG URL standard.
fn form_encode_into(text: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in text.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0x0f)]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_rate_follows_any_query() {
        assert_eq!(
            with_sample_rate("ws://h:6030", 16_000),
            "ws://h:6030/?sample_rate=16000"
        );
        assert_eq!(
            with_sample_rate("ws://h/?from=2000&to=5001", 24_000),
            "ws://h/?from=2000&to=5001&sample_rate=24000"
        );
    }
    use serde_json::json;

    fn url(base: &str, payload: Value) -> String {
        match payload {
            Value::Object(map) => effective_url(base, &map),
            _ => panic!("payload must be an object"),
        }
    }

    #[test]
    fn reproduces_the_upstream_example() {
        assert_eq!(
            url(
                "ws://localhost:6030",
                json!({"from": "2000", "to": "5001", "uniqueid": "1770758888.32",
                       "channel": "PJSIP/2000-00000013"})
            ),
            "ws://localhost:6030/?from=2000&to=5001&uniqueid=1770758888.32\
             &channel=PJSIP%2F2000-00000013"
        );
    }

    #[test]
    fn encodes_like_url_search_params() {
        // Expected strings from `new URLSearchParams({k: v}).toString()` in Node.js.
        let cases = [
            ("a b", "a+b"),
            ("x&y=z", "x%26y%3Dz"),
            ("a/b+c", "a%2Fb%2Bc"),
            ("~tilde", "%7Etilde"),
            ("*-._", "*-._"),
            ("é", "%C3%A9"),
            ("日本", "%E6%97%A5%E6%9C%AC"),
            ("%41?#'!()", "%2541%3F%23%27%21%28%29"),
            ("", ""),
        ];
        for (value, encoded) in cases {
            assert_eq!(
                url("ws://h:1", json!({ "k": value })),
                format!("ws://h:1/?k={encoded}"),
                "{value:?}"
            );
        }
        assert_eq!(url("ws://h:1", json!({"a b&": "v"})), "ws://h:1/?a+b%26=v");
    }

    #[test]
    fn non_strings_are_written_as_json_text() {
        assert_eq!(
            url(
                "ws://h:1",
                json!({"n": 5, "f": 1.5, "t": true, "z": null, "o": {"a": 1}, "l": [1, "x"]})
            ),
            "ws://h:1/?n=5&f=1.5&t=true&z=null&o=%7B%22a%22%3A1%7D&l=%5B1%2C%22x%22%5D"
        );
    }

    #[test]
    fn keeps_the_base_path_and_query() {
        assert_eq!(
            url("wss://h:1/a/b?x=1", json!({"k": "v"})),
            "wss://h:1/a/b?x=1&k=v"
        );
        assert_eq!(url("ws://h:1?x=1", json!({"k": "v"})), "ws://h:1/?x=1&k=v");
        assert_eq!(url("ws://h:1/?", json!({"k": "v"})), "ws://h:1/?k=v");
        assert_eq!(
            url("ws://h:1/?x=1&", json!({"k": "v"})),
            "ws://h:1/?x=1&k=v"
        );
    }

    #[test]
    fn drops_a_fragment() {
        assert_eq!(
            url("ws://h:1/p?x=1#frag", json!({"k": "v"})),
            "ws://h:1/p?x=1&k=v"
        );
        assert_eq!(url("ws://h:1#frag", json!({"k": "v"})), "ws://h:1/?k=v");
    }

    #[test]
    fn handles_ipv6_hosts_and_userinfo() {
        assert_eq!(
            url("ws://[::1]:6030", json!({"k": "v"})),
            "ws://[::1]:6030/?k=v"
        );
        assert_eq!(
            url("wss://u:p@agent.example", json!({"k": "v"})),
            "wss://u:p@agent.example/?k=v"
        );
    }

    #[test]
    fn an_empty_payload_leaves_the_base_with_its_path() {
        assert_eq!(
            url("ws://localhost:6030", json!({})),
            "ws://localhost:6030/"
        );
        assert_eq!(url("ws://h:1/a?x=1", json!({})), "ws://h:1/a?x=1");
    }

    #[test]
    fn keeps_payload_order() {
        assert_eq!(
            url("ws://h:1", json!({"z": "1", "a": "2", "m": "3"})),
            "ws://h:1/?z=1&a=2&m=3"
        );
    }
}
