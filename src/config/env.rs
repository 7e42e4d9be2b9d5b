//! The variables as given, read through the table in [`super::vars`].
//!
//! A variable's default lives only in the table: when the operator leaves it unset, its
//! parse function is given the table's default text, so `--help`, `check-config` and the
//! effective value cannot disagree. Value parsers are pure functions `&str → Result<T, allowed>`;
//! [`Env::parse`] turns their `Err` into the [`ConfigError`] that names variable and value.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::vars::{self, WhenUnset};
use super::{parse_duration, ConfigError};

/// Longest duration any variable accepts: beyond it a typo (`3000m`) is likelier than intent.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// `(name, value)` pairs; the last pair of a name wins, and an empty value counts as unset.
pub struct Env<'a> {
    vars: &'a [(String, String)],
}

impl<'a> Env<'a> {
    pub fn new(vars: &'a [(String, String)]) -> Env<'a> {
        Env { vars }
    }

    /// The operator's value, trimmed; `None` when unset or blank. Any name, table or not
    /// (`STATE_DIRECTORY`, `RUST_LOG`).
    pub fn given(&self, name: &str) -> Option<String> {
        self.vars
            .iter()
            .rev()
            .find(|(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.trim().to_string())
    }

    /// The operator's value, else the table's default value; `None` when neither.
    pub fn text(&self, name: &str) -> Option<String> {
        self.given(name)
            .or_else(|| match vars::find(name)?.when_unset {
                WhenUnset::Value(v) => Some(v.to_string()),
                _ => None,
            })
    }

    /// Parses the operator's value, else the table's default; `None` when neither is set.
    pub fn parse_opt<T>(
        &self,
        name: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let Some(value) = self.text(name) else {
            return Ok(None);
        };
        match parse(&value) {
            Ok(v) => Ok(Some(v)),
            Err(allowed) => Err(ConfigError::Invalid {
                var: name,
                value,
                allowed,
            }),
        }
    }

    /// Parses a variable that has a default in the table (or must be set).
    pub fn parse<T>(
        &self,
        name: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        self.parse_opt(name, parse)?
            .ok_or_else(|| ConfigError::Missing {
                var: name,
                why: match vars::find(name) {
                    Some(var) => format!("set it: {}", var.meaning),
                    None => "it has no default".into(),
                },
            })
    }

    /// Every variable set whose name starts with `prefix`, once each, in order.
    pub fn names_with_prefix(&self, prefix: &str) -> Vec<&'a str> {
        let mut names: Vec<&str> = Vec::new();
        for (k, v) in self.vars {
            if k.starts_with(prefix) && !v.trim().is_empty() && !names.contains(&k.as_str()) {
                names.push(k);
            }
        }
        names
    }

    /// The first variable set whose name starts with one of `prefixes`.
    pub fn first_with_prefix(&self, prefixes: &[&str]) -> Option<&'a str> {
        self.vars
            .iter()
            .find(|(k, v)| !v.trim().is_empty() && prefixes.iter().any(|p| k.starts_with(p)))
            .map(|(k, _)| k.as_str())
    }
}

/// Any text, as given.
pub fn text(t: &str) -> Result<String, String> {
    Ok(t.to_string())
}

/// A file path, as given.
pub fn path(t: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(t))
}

pub fn port(t: &str) -> Result<u16, String> {
    t.parse()
        .map_err(|_| "a TCP port from 0 to 65535 (0 picks a free port)".into())
}

/// An IPv4 or IPv6 address; brackets (`[::1]`) are accepted.
pub fn ip_address(t: &str) -> Result<IpAddr, String> {
    t.trim_matches(|c| c == '[' || c == ']')
        .parse()
        .map_err(|_| "an IPv4 or IPv6 address, e.g. 0.0.0.0, 127.0.0.1 or ::".into())
}

pub fn whole_number(t: &str, min: usize, max: usize) -> Result<usize, String> {
    match t.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("a whole number from {min} to {max}")),
    }
}

/// See [`parse_duration`]; zero and more than [`MAX_DURATION`] are refused.
pub fn duration(t: &str) -> Result<Duration, String> {
    match parse_duration(t) {
        Some(d) if d > Duration::ZERO && d <= MAX_DURATION => Ok(d),
        _ => {
            Err("a duration above zero: milliseconds (3000) or with a unit (500ms, 3s, 2m)".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_last_value_wins_and_blank_is_unset() {
        let vars = pairs(&[("PORT", "1"), ("PORT", " 2 "), ("BIND_ADDRESS", "  ")]);
        let env = Env::new(&vars);
        assert_eq!(env.given("PORT").as_deref(), Some("2"));
        assert_eq!(env.given("BIND_ADDRESS"), None);
        // Unset: the table's default is what gets parsed.
        assert_eq!(env.text("BIND_ADDRESS").as_deref(), Some("0.0.0.0"));
        assert_eq!(env.text("HTTP_PORT"), None);
    }

    #[test]
    fn a_bad_value_names_variable_value_and_allowed() {
        let vars = pairs(&[("MAX_CALLS", "0")]);
        let err = Env::new(&vars)
            .parse("MAX_CALLS", |t| whole_number(t, 1, 10))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "MAX_CALLS=\"0\" is not valid: a whole number from 1 to 10"
        );
    }
}
