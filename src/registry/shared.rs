//! The shared registry on Redis or Valkey (`REGISTRY_URL`), for several instances behind a
//! load balancer: `/call` on one instance, the AudioSocket call on another.
//!
//! One key per call, [`key`]`(uuid)`, holding the [`CallMetadata`] as JSON:
//! - `/call` stores it with `SET key value PX <CALL_METADATA_TTL> GET`: Redis expires what no
//!   call claims, and the old value tells the log line an earlier `/call` was replaced.
//! - The AudioSocket side takes it with `GETDEL key`, one atomic command (Redis ≥ 6.2, Valkey):
//!   two instances asked for the same uuid cannot both get it.
//!
//! Bounded, so a dead or slow Redis never holds a call's thread or `/call` longer than
//! `REGISTRY_TIMEOUT`: waiting for a pooled connection, connecting (TCP, TLS, AUTH, SELECT)
//! and the command's write and read all share that one deadline. At most [`POOL_SIZE`]
//! connections, kept open and reused; one that fails is dropped and the next operation
//! connects afresh, so a Redis that comes back is used again without a restart.

use std::fmt;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::{CallMetadata, Inserted};
use crate::sys::lock;

/// Where every entry lives: a prefix keeps avr-core's keys apart from anything else the
/// operator keeps in the same database, and `KEYS avr-core:*` finds them when debugging.
pub const KEY_PREFIX: &str = "avr-core:call:";

/// Connections kept to Redis at most. Each operation is one short round trip, so a handful
/// serves hundreds of `/call`s a second; more would only multiply sockets on the Redis side
/// (every instance has its own pool).
pub const POOL_SIZE: usize = 4;

/// The key of the entry for the canonical `uuid`.
pub fn key(uuid: &str) -> String {
    format!("{KEY_PREFIX}{uuid}")
}

/// The stored form of `metadata`: JSON, readable with `redis-cli GET` while debugging.
pub fn encode(metadata: &CallMetadata) -> String {
    json!({"sts_url": metadata.sts_url, "payload": metadata.payload, "override": metadata.overridden})
        .to_string()
}

/// The metadata from its stored form, or what is wrong with it (written by something else).
pub fn decode(stored: &str) -> Result<CallMetadata, String> {
    let value: Value =
        serde_json::from_str(stored).map_err(|e| format!("the stored entry is not JSON ({e})"))?;
    let sts_url = match value.get("sts_url") {
        Some(Value::String(url)) => url.clone(),
        _ => return Err("the stored entry has no \"sts_url\" string".to_string()),
    };
    let payload = match value.get("payload") {
        Some(Value::Object(map)) => map.clone(),
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err("the stored entry's \"payload\" is not an object".to_string()),
    };
    // Written by an avr-core before the flag was stored: not overridden.
    let overridden = value
        .get("override")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(CallMetadata {
        sts_url,
        payload,
        overridden,
    })
}

/// The shared registry could not be used; the text says where and why, for the `/call`
/// answer, the call's WARN line and `/health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// Redis's address (host:port or socket; never the password).
    pub addr: String,
    pub why: String,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the shared call registry (REGISTRY_URL, {}) is unavailable: {}",
            self.addr, self.why
        )
    }
}

/// Connections not in use, and how many exist in all (idle or lent out).
struct Pool {
    idle: Vec<redis::Connection>,
    open: usize,
}

/// The registry on Redis; see the module comment.
pub struct Shared {
    client: redis::Client,
    addr: String,
    ttl: Duration,
    timeout: Duration,
    pool: Mutex<Pool>,
    /// Signalled when a connection is returned or dropped, for operations waiting for one.
    freed: Condvar,
}

impl Shared {
    /// Parses `url` (`redis://[user:password@]host:port[/db]` or `rediss://…`) without
    /// connecting. `rediss://` verifies Redis's certificate against the Mozilla roots compiled
    /// in or, given `private_ca` (PEM, `SSL_CERT_FILE`), against those CAs only: the client
    /// takes one root store, and a Redis with TLS is usually signed by the operator's own CA.
    pub fn open(
        url: &str,
        ttl: Duration,
        timeout: Duration,
        private_ca: Option<&[u8]>,
    ) -> Result<Shared, String> {
        let client = match private_ca {
            Some(pem) if is_tls(url) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.to_vec()),
                },
            ),
            _ => redis::Client::open(url),
        }
        .map_err(|e| e.to_string())?;
        let addr = client.get_connection_info().addr().to_string();
        Ok(Shared {
            client,
            addr,
            ttl,
            timeout,
            pool: Mutex::new(Pool {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        })
    }

    /// `SET key value PX ttl GET`.
    pub fn insert(&self, uuid: &str, metadata: &CallMetadata) -> Result<Inserted, Unavailable> {
        let ttl_ms = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let value = encode(metadata);
        let old: Option<String> = self.run(|conn| {
            redis::cmd("SET")
                .arg(key(uuid))
                .arg(&value)
                .arg("PX")
                .arg(ttl_ms)
                .arg("GET")
                .query(conn)
        })?;
        Ok(Inserted {
            replaced: old.is_some(),
        })
    }

    /// `GETDEL key`: the entry, at most once across every instance.
    pub fn take(&self, uuid: &str) -> Result<Option<CallMetadata>, Unavailable> {
        let stored: Option<String> =
            self.run(|conn| redis::cmd("GETDEL").arg(key(uuid)).query(conn))?;
        stored
            .map(|s| decode(&s).map_err(|why| self.unavailable(why)))
            .transpose()
    }

    /// `PING`, for `/health`.
    pub fn ping(&self) -> Result<(), Unavailable> {
        let pong: String = self.run(|conn| redis::cmd("PING").query(conn))?;
        match pong.as_str() {
            "PONG" => Ok(()),
            other => Err(self.unavailable(format!("PING answered {other:?}, not PONG"))),
        }
    }

    fn unavailable(&self, why: impl Into<String>) -> Unavailable {
        Unavailable {
            addr: self.addr.clone(),
            why: why.into(),
        }
    }

    /// Runs `command` on a pooled connection within the budget. A connection reused from the
    /// pool may have died since (Redis restarted): then the command is tried once more on a
    /// fresh connection, within what is left of the same budget.
    fn run<T>(
        &self,
        command: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, Unavailable> {
        let deadline = Instant::now() + self.timeout;
        let (mut conn, reused) = self.checkout(deadline)?;
        let mut result = Self::within(&conn, deadline).and_then(|()| command(&mut conn));
        if reused && result.as_ref().is_err_and(stale) {
            self.drop_connection(conn);
            conn = self.connect(deadline)?;
            result = Self::within(&conn, deadline).and_then(|()| command(&mut conn));
        }
        match result {
            Ok(value) => {
                self.give_back(conn);
                Ok(value)
            }
            // An error answer (e.g. GETDEL unknown before Redis 6.2) leaves the connection
            // usable; anything else may leave a reply half read, so the connection goes.
            Err(e) if matches!(e.kind(), redis::ErrorKind::Server(_)) => {
                self.give_back(conn);
                Err(self.unavailable(e.to_string()))
            }
            Err(e) => {
                self.drop_connection(conn);
                Err(self.unavailable(describe(&e, self.timeout)))
            }
        }
    }

    /// Sets the socket's read and write timeouts to what is left before `deadline`.
    fn within(conn: &redis::Connection, deadline: Instant) -> redis::RedisResult<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        conn.set_read_timeout(Some(left))?;
        conn.set_write_timeout(Some(left))
    }

    /// An idle connection (`true`: reused), a new one if fewer than [`POOL_SIZE`] exist, or
    /// else one freed by another thread before `deadline`.
    fn checkout(&self, deadline: Instant) -> Result<(redis::Connection, bool), Unavailable> {
        let mut pool = lock(&self.pool);
        loop {
            if let Some(conn) = pool.idle.pop() {
                return Ok((conn, true));
            }
            if pool.open < POOL_SIZE {
                pool.open += 1;
                drop(pool);
                // Counted before connecting, so concurrent callers never exceed the pool.
                let conn = self.connect_counted(deadline)?;
                return Ok((conn, false));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.unavailable(format!(
                    "all {POOL_SIZE} connections stayed busy for {} ms",
                    self.timeout.as_millis()
                )));
            }
            pool = self
                .freed
                .wait_timeout(pool, left)
                .map_or_else(|e| e.into_inner().0, |(guard, _)| guard);
        }
    }

    /// A new connection in place of one just dropped (its slot is free again).
    fn connect(&self, deadline: Instant) -> Result<redis::Connection, Unavailable> {
        lock(&self.pool).open += 1;
        self.connect_counted(deadline)
    }

    /// Connects for a slot already counted in `open`; on failure the slot is freed.
    fn connect_counted(&self, deadline: Instant) -> Result<redis::Connection, Unavailable> {
        let left = deadline.saturating_duration_since(Instant::now());
        let result = if left.is_zero() {
            Err(timed_out())
        } else {
            self.client.get_connection_with_timeout(left)
        };
        result.map_err(|e| {
            self.release_slot();
            self.unavailable(format!("cannot connect: {}", describe(&e, self.timeout)))
        })
    }

    fn give_back(&self, conn: redis::Connection) {
        lock(&self.pool).idle.push(conn);
        self.freed.notify_one();
    }

    fn drop_connection(&self, conn: redis::Connection) {
        drop(conn);
        self.release_slot();
    }

    fn release_slot(&self) {
        let mut pool = lock(&self.pool);
        pool.open = pool.open.saturating_sub(1);
        drop(pool);
        self.freed.notify_one();
    }
}

/// Whether `url` asks for TLS (`rediss://`).
pub fn is_tls(url: &str) -> bool {
    url.get(..9)
        .is_some_and(|s| s.eq_ignore_ascii_case("rediss://"))
}

/// Whether a failure on a reused connection means the connection had died, not Redis.
fn stale(e: &redis::RedisError) -> bool {
    !e.is_timeout() && (e.is_connection_dropped() || e.is_unrecoverable_error())
}

fn timed_out() -> redis::RedisError {
    std::io::Error::from(std::io::ErrorKind::TimedOut).into()
}

/// A redis error as the operator reads it: a timeout says the budget.
fn describe(e: &redis::RedisError, budget: Duration) -> String {
    if e.is_timeout() {
        format!(
            "no answer within REGISTRY_TIMEOUT ({} ms)",
            budget.as_millis()
        )
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata() -> CallMetadata {
        let Value::Object(payload) = json!({"to": "100", "from": "2000", "n": 1}) else {
            unreachable!()
        };
        CallMetadata {
            sts_url: "ws://agent/sts?to=100".into(),
            payload,
            overridden: true,
        }
    }

    #[test]
    fn keys_carry_the_prefix_and_the_uuid() {
        assert_eq!(
            key("935652e3-7c59-4edc-b17f-9646a9c2a265"),
            "avr-core:call:935652e3-7c59-4edc-b17f-9646a9c2a265"
        );
    }

    #[test]
    fn metadata_round_trips_with_its_key_order() {
        let stored = encode(&metadata());
        let back = decode(&stored).unwrap();
        assert_eq!(back, metadata());
        let keys: Vec<&String> = back.payload.keys().collect();
        assert_eq!(keys, ["to", "from", "n"], "the caller's order is kept");
    }

    #[test]
    fn foreign_values_are_refused_with_a_reason() {
        assert!(decode("not json").unwrap_err().contains("not JSON"));
        assert!(decode("{}").unwrap_err().contains("sts_url"));
        assert!(decode(r#"{"sts_url":"ws://a","payload":[1]}"#)
            .unwrap_err()
            .contains("payload"));
        let bare = decode(r#"{"sts_url":"ws://a"}"#).unwrap();
        assert_eq!((bare.payload, bare.overridden), (Map::new(), false));
    }

    #[test]
    fn urls_are_parsed_without_connecting() {
        let ttl = Duration::from_secs(60);
        let t = Duration::from_millis(500);
        let shared = Shared::open("redis://user:secret@10.9.8.7:6390/2", ttl, t, None).unwrap();
        assert_eq!(shared.addr, "10.9.8.7:6390");
        assert!(Shared::open("http://h:1", ttl, t, None).is_err());
        assert!(is_tls("REDISS://h:1") && !is_tls("redis://h:1"));
        // Only a TLS URL takes the private CA (SSL_CERT_FILE is checked at startup already).
        assert!(Shared::open("redis://h:1", ttl, t, Some(b"not a PEM")).is_ok());
    }

    #[test]
    fn an_unreachable_redis_answers_within_the_budget_without_the_password() {
        // A port nothing listens on: bind one, note it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let budget = Duration::from_millis(300);
        let url = format!("redis://u:hunter2@127.0.0.1:{port}");
        let shared = Shared::open(&url, Duration::from_secs(60), budget, None).unwrap();
        let t0 = Instant::now();
        let err = shared.ping().unwrap_err();
        assert!(t0.elapsed() < budget + Duration::from_millis(200));
        let text = err.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(text.contains("cannot connect"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(shared.take("x").is_err());
        assert!(shared.insert("x", &metadata()).is_err());
        // Every failed connection gave its slot back.
        assert_eq!(lock(&shared.pool).open, 0);
    }
}
