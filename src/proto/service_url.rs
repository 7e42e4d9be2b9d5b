//! The URL of a pipeline-mode service (`ASR_URL`, `LLM_URL`, `TTS_URL`), taken apart once at
//! startup into what a request needs: where to connect, what to put on the request line and
//! in `Host`, and the `Authorization` its userinfo asks for.
//!
//! Only `http://`: the upstream connectors are plain HTTP services beside the core (a compose
//! network or the same host). An `https://` URL is refused at startup with that reason rather
//! than sent in clear.

use super::url_secrets::basic_auth;

/// A service's URL, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUrl {
    /// As the operator wrote it (logged masked).
    pub url: String,
    /// Host name or address to connect to (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path and query for the request line; `/` when the URL has none.
    pub target: String,
    /// The `Host` header: the authority without userinfo.
    pub host_header: String,
    /// `Basic …` for a URL with userinfo.
    pub authorization: Option<String>,
}

impl ServiceUrl {
    /// Takes `url` apart; the error says what is allowed.
    pub fn parse(url: &str) -> Result<ServiceUrl, String> {
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("https://") {
            return Err(
                "https:// is not supported for pipeline services: they run beside \
                        avr-core; use http://"
                    .into(),
            );
        }
        if !lower.starts_with("http://") {
            return Err("an http:// URL, e.g. http://avr-asr:6010/speech-to-text-stream".into());
        }
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("an http:// URL with a host ({e})"))?;
        let authority = uri
            .authority()
            .ok_or("an http:// URL with a host, e.g. http://avr-asr:6010/speech-to-text-stream")?;
        let host = authority.host();
        if host.is_empty() {
            return Err("an http:// URL with a host".into());
        }
        let port = authority.port_u16().unwrap_or(80);
        let host_header = match authority.as_str().rsplit_once('@') {
            Some((_, hostport)) => hostport.to_string(),
            None => authority.as_str().to_string(),
        };
        Ok(ServiceUrl {
            url: url.to_string(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            // A request target starts with `/`, even when the URL has only a query.
            target: match uri.path_and_query().map(|p| p.as_str()) {
                Some(p) if p.starts_with('/') => p.to_string(),
                Some(p) => format!("/{p}"),
                None => "/".to_string(),
            },
            host_header,
            authorization: basic_auth(url),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_url_is_taken_apart() {
        let u = ServiceUrl::parse("http://avr-asr-deepgram:6010/speech-to-text-stream").unwrap();
        assert_eq!(u.host, "avr-asr-deepgram");
        assert_eq!(u.port, 6010);
        assert_eq!(u.target, "/speech-to-text-stream");
        assert_eq!(u.host_header, "avr-asr-deepgram:6010");
        assert_eq!(u.authorization, None);
    }

    #[test]
    fn defaults_userinfo_query_and_ipv6() {
        let u = ServiceUrl::parse("http://user:pw@tts?voice=a").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("tts", 80));
        assert_eq!(u.target, "/?voice=a");
        assert_eq!(u.host_header, "tts");
        assert_eq!(u.authorization.as_deref(), Some("Basic dXNlcjpwdw=="));
        let u = ServiceUrl::parse("http://[::1]:6002/prompt-stream").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 6002));
        assert_eq!(u.host_header, "[::1]:6002");
    }

    #[test]
    fn other_schemes_are_refused_with_a_reason() {
        assert!(ServiceUrl::parse("https://asr/x")
            .unwrap_err()
            .contains("use http://"));
        assert!(ServiceUrl::parse("ws://asr/x")
            .unwrap_err()
            .contains("http://"));
        assert!(ServiceUrl::parse("http://").is_err());
    }
}
