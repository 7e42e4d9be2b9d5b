//! The secrets a URL can carry, and what avr-core does with them (docs/sts.md §2.1):
//! - [`mask_url`]: the one masking of every URL that reaches a log, an error, `check-config`
//!   or an HTTP answer (the userinfo password, and the values of secret-looking query keys);
//! - [`basic_auth`]: the userinfo as the `Authorization: Basic …` header of the STS
//!   handshake, as the Node.js `ws` client sends it.
//!
//! Pure text functions: the URL is kept byte for byte except what is masked, so an operator
//! can still compare a logged URL with the configured one.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

/// What a secret is replaced with.
pub const MASK: &str = "****";

/// Query (and fragment) keys whose values are secrets, compared case-insensitively with the
/// whole key or with its last part after `_`, `-` or `.` (so `client_secret`, `x-api-key`,
/// `refresh_token` and `X-Amz-Signature` are masked too). The names agents and signed URLs
/// use for credentials; a key that is not here is logged as it is, because call metadata
/// (`from`, `to`, `channel`, …) is what operators read the URL for.
pub const SECRET_QUERY_KEYS: &[&str] = &[
    "key",
    "api_key",
    "apikey",
    "token",
    "access_token",
    "auth",
    "authorization",
    "secret",
    "password",
    "passwd",
    "pass",
    "pwd",
    "signature",
    "sig",
    "credential",
    "credentials",
    "session",
    "jwt",
];

/// `url` with its secrets replaced by [`MASK`]: the password of `scheme://user:pass@host`
/// (a userinfo with no password is a token given as the user name, `https://TOKEN@host`,
/// and is masked whole), and the value of every query or fragment pair whose key is in
/// [`SECRET_QUERY_KEYS`]. Anything else, including text that is not a URL, is unchanged.
pub fn mask_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    if let Some((scheme_end, at)) = userinfo_span(url) {
        let userinfo = &url[scheme_end..at];
        out.push_str(&url[..scheme_end]);
        if let Some((user, _)) = userinfo.split_once(':') {
            out.push_str(user);
            out.push(':');
        }
        out.push_str(MASK);
        rest = &url[at..];
    }
    // The query and the fragment, each a list of `key=value` pairs.
    let mut parts = rest.splitn(2, '#');
    let before_fragment = parts.next().unwrap_or_default();
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            mask_pairs(query, &mut out);
        }
        None => out.push_str(before_fragment),
    }
    if let Some(fragment) = parts.next() {
        out.push('#');
        mask_pairs(fragment, &mut out);
    }
    out
}

/// Whether the value of query key `key` (as written in the URL) is a secret.
pub fn is_secret_key(key: &str) -> bool {
    let key = String::from_utf8_lossy(&percent_decode(key)).to_ascii_lowercase();
    let last = key.rsplit(['_', '-', '.']).next().unwrap_or_default();
    SECRET_QUERY_KEYS
        .iter()
        .any(|secret| key == *secret || last == *secret)
}

/// The `Authorization` header value for the userinfo of `url`, as the Node.js `ws` client
/// sends it: `Basic base64(user:password)` of the percent-decoded user and password (an
/// empty password if there is none). `None` without userinfo.
pub fn basic_auth(url: &str) -> Option<String> {
    let (scheme_end, at) = userinfo_span(url)?;
    let userinfo = &url[scheme_end..at];
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let mut credentials = percent_decode(user);
    credentials.push(b':');
    credentials.extend(percent_decode(password));
    Some(format!("Basic {}", BASE64.encode(credentials)))
}

/// Where the userinfo of `scheme://userinfo@host…` is: (its start, the `@`'s index). The
/// authority ends at the first `/`, `?` or `#`, and its last `@` ends the userinfo, as in
/// the WHATWG URL parser (a password may hold a raw `@`).
fn userinfo_span(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://")? + 3;
    let authority_end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    let at = url[start..authority_end].rfind('@')?;
    Some((start, start + at))
}

/// Appends `pairs` (`k=v&k=v`) to `out` with the values of secret keys masked.
fn mask_pairs(pairs: &str, out: &mut String) {
    for (i, pair) in pairs.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((key, value)) if !value.is_empty() && is_secret_key(key) => {
                out.push_str(key);
                out.push('=');
                out.push_str(MASK);
            }
            _ => out.push_str(pair),
        }
    }
}

/// `%XX` escapes decoded to their bytes; anything else (an invalid escape too) kept.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_the_userinfo_password() {
        for (url, shown) in [
            ("wss://u:p@agent/sts", "wss://u:****@agent/sts"),
            ("ws://bob:hunter2@agent:443/x", "ws://bob:****@agent:443/x"),
            (
                "http://hooks:s3cret@receiver:9000/events",
                "http://hooks:****@receiver:9000/events",
            ),
            // The last `@` of the authority ends the userinfo; one in the path is not it.
            ("ws://u:p@ss@h/a@b", "ws://u:****@h/a@b"),
            ("ws://h/a@b", "ws://h/a@b"),
            // A user name alone is a token: masked whole.
            ("https://ghp_abc@host/x", "https://****@host/x"),
            ("ws://u:@h", "ws://u:****@h"),
        ] {
            assert_eq!(mask_url(url), shown, "{url}");
        }
    }

    #[test]
    fn masks_secret_query_values_whatever_their_case() {
        for (url, shown) in [
            ("ws://h/?api_key=abc", "ws://h/?api_key=****"),
            (
                "ws://h/?from=2000&TOKEN=abc&to=5001",
                "ws://h/?from=2000&TOKEN=****&to=5001",
            ),
            (
                "ws://h/?key=1&apikey=2&access_token=3",
                "ws://h/?key=****&apikey=****&access_token=****",
            ),
            (
                "ws://h/?auth=a&secret=b&password=c",
                "ws://h/?auth=****&secret=****&password=****",
            ),
            (
                "ws://h/?pass=a&pwd=b&signature=c&sig=d",
                "ws://h/?pass=****&pwd=****&signature=****&sig=****",
            ),
            ("ws://h/?credential=a", "ws://h/?credential=****"),
            // A secret name as the last part of a longer key.
            (
                "ws://h/?client_secret=a&x-api-key=b&refresh_token=c",
                "ws://h/?client_secret=****&x-api-key=****&refresh_token=****",
            ),
            (
                "https://b.s3/o?X-Amz-Credential=AK&X-Amz-Signature=ff&X-Amz-Expires=60",
                "https://b.s3/o?X-Amz-Credential=****&X-Amz-Signature=****&X-Amz-Expires=60",
            ),
            // An encoded key is still recognised.
            ("ws://h/?api%5Fkey=abc", "ws://h/?api%5Fkey=****"),
            // Both at once, and in the fragment.
            (
                "wss://u:p@h:1/a?token=t&uuid=x#access_token=z",
                "wss://u:****@h:1/a?token=****&uuid=x#access_token=****",
            ),
        ] {
            assert_eq!(mask_url(url), shown, "{url}");
        }
    }

    #[test]
    fn leaves_everything_else_byte_for_byte() {
        for url in [
            "ws://localhost:6030",
            "ws://agent:6030/?from=2000&channel=PJSIP%2F2000-00000013&uniqueid=1.2",
            "ws://h/?monkey=1&keyboard=2&tokens=3&token=&token",
            "ws://h/?&&=x&a",
            "ws://h/#frag",
            "localhost:1",
            "not a url ?",
            "",
        ] {
            assert_eq!(mask_url(url), url);
        }
    }

    #[test]
    fn basic_auth_is_the_decoded_userinfo_in_base64() {
        // base64("user:pass")
        assert_eq!(
            basic_auth("ws://user:pass@h:1/x").as_deref(),
            Some("Basic dXNlcjpwYXNz")
        );
        // Percent-decoded: "a b:p@ss:w" → base64.
        assert_eq!(
            basic_auth("wss://a%20b:p%40ss%3Aw@h/").as_deref(),
            Some(format!("Basic {}", BASE64.encode("a b:p@ss:w")).as_str())
        );
        // A user name alone: an empty password, as `ws` sends it.
        assert_eq!(
            basic_auth("ws://tok@h").as_deref(),
            Some(format!("Basic {}", BASE64.encode("tok:")).as_str())
        );
        assert_eq!(basic_auth("ws://h:1/a@b?x=@"), None);
        assert_eq!(basic_auth("ws://h"), None);
    }

    #[test]
    fn percent_decoding_keeps_invalid_escapes() {
        assert_eq!(percent_decode("a%41%4"), b"aA%4");
        assert_eq!(percent_decode("%zz%"), b"%zz%");
        assert_eq!(percent_decode("%e2%82%ac"), "€".as_bytes());
    }
}
