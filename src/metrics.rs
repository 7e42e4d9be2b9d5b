//! Process-wide counters, rendered as Prometheus text for `GET /metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters shared by every call and worker; relaxed atomics, never a lock.
#[derive(Default)]
pub struct Metrics {
    pub active_calls: AtomicU64,
    pub calls_total: AtomicU64,
    pub calls_rejected: AtomicU64,
    /// AudioSocket connections closed before their UUID: probes, unanswered channels, peers
    /// that are not Asterisk. Counted, not logged, since a monitoring check makes one a minute.
    pub connections_without_uuid: AtomicU64,
    pub sts_connect_failures: AtomicU64,
    pub playout_underruns: AtomicU64,
    pub playout_late_slots: AtomicU64,
    pub webhook_delivered: AtomicU64,
    pub webhook_failed: AtomicU64,
    pub webhook_retried: AtomicU64,
    pub webhook_queue_depth: AtomicU64,
    pub webhook_dead_letters: AtomicU64,
    /// Events that could not even be written to the dead-letter file (full, unwritable, or
    /// its writer overloaded): the only events ever lost, each logged (throttled).
    pub webhook_lost: AtomicU64,
    /// `dtmf_digit` events over the per-call rate limit, not sent (docs/webhooks.md §5.9).
    pub webhook_rate_limited: AtomicU64,
    /// Batches the webhook spool could not write (docs/webhooks.md §5.10): those events were
    /// delivered from memory only.
    pub webhook_spool_errors: AtomicU64,
    /// Undelivered events read back from the spool at startup and sent again.
    pub webhook_spool_recovered: AtomicU64,
    /// `/call`s refused because the shared registry (`REGISTRY_URL`) did not answer.
    pub registry_errors_call: AtomicU64,
    /// AudioSocket calls that could not ask the shared registry for their `/call` metadata
    /// and went ahead on the default agent.
    pub registry_errors_audiosocket: AtomicU64,
}

impl Metrics {
    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut put = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        put(
            "avr_active_calls",
            "gauge",
            "Calls in progress.",
            self.active_calls.load(Relaxed),
        );
        put(
            "avr_calls_total",
            "counter",
            "Calls accepted since start.",
            self.calls_total.load(Relaxed),
        );
        put(
            "avr_calls_rejected_total",
            "counter",
            "Connections refused because MAX_CALLS was reached.",
            self.calls_rejected.load(Relaxed),
        );
        put(
            "avr_connections_without_uuid_total",
            "counter",
            "AudioSocket connections closed before sending a UUID (probes, unanswered \
             channels, peers that are not Asterisk).",
            self.connections_without_uuid.load(Relaxed),
        );
        put(
            "avr_sts_connect_failures_total",
            "counter",
            "Calls whose STS agent could not be reached.",
            self.sts_connect_failures.load(Relaxed),
        );
        put(
            "avr_playout_underruns_total",
            "counter",
            "20 ms ticks where agent audio ran short mid-stream.",
            self.playout_underruns.load(Relaxed),
        );
        put(
            "avr_playout_late_slots_total",
            "counter",
            "20 ms slots skipped because a playout clock woke late (CPU overloaded) or Asterisk \
             was not reading.",
            self.playout_late_slots.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP avr_webhook_deliveries_total Webhook events by final outcome.\n\
             # TYPE avr_webhook_deliveries_total counter\n\
             avr_webhook_deliveries_total{{outcome=\"delivered\"}} {}\n\
             avr_webhook_deliveries_total{{outcome=\"failed\"}} {}",
            self.webhook_delivered.load(Relaxed),
            self.webhook_failed.load(Relaxed),
        );
        let mut put = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        put(
            "avr_webhook_retries_total",
            "counter",
            "Webhook attempts that were retried.",
            self.webhook_retried.load(Relaxed),
        );
        put(
            "avr_webhook_queue_depth",
            "gauge",
            "Webhook events waiting for delivery.",
            self.webhook_queue_depth.load(Relaxed),
        );
        put(
            "avr_webhook_dead_letters_total",
            "counter",
            "Webhook events written to the dead-letter file.",
            self.webhook_dead_letters.load(Relaxed),
        );
        put(
            "avr_webhook_lost_total",
            "counter",
            "Webhook events that could not be written to the dead-letter file (full, \
             unwritable, or its writer overloaded).",
            self.webhook_lost.load(Relaxed),
        );
        put(
            "avr_webhook_rate_limited_total",
            "counter",
            "dtmf_digit events over the per-call rate limit, not sent.",
            self.webhook_rate_limited.load(Relaxed),
        );
        put(
            "avr_webhook_spool_errors_total",
            "counter",
            "Batches of webhook events the spool could not write (delivered from memory only).",
            self.webhook_spool_errors.load(Relaxed),
        );
        put(
            "avr_webhook_spool_recovered_total",
            "counter",
            "Undelivered webhook events read back from the spool at startup and sent again.",
            self.webhook_spool_recovered.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP avr_registry_errors_total Shared registry (REGISTRY_URL) operations that \
             failed, by side: a /call refused, or an AudioSocket call started without its \
             metadata.\n\
             # TYPE avr_registry_errors_total counter\n\
             avr_registry_errors_total{{side=\"call\"}} {}\n\
             avr_registry_errors_total{{side=\"audiosocket\"}} {}",
            self.registry_errors_call.load(Relaxed),
            self.registry_errors_audiosocket.load(Relaxed),
        );
        out
    }
}
