//! Call events and their delivery to the operator's webhook receiver.

mod event;

pub use event::{Event, EventKind};

/// Where calls hand their events. Cloned into every call; `emit` never blocks.
#[derive(Clone, Default)]
pub struct EventSink {}

impl EventSink {
    /// A sink that only logs events at debug level (webhooks off).
    pub fn log_only() -> EventSink {
        EventSink {}
    }

    /// Hands an event over without waiting.
    pub fn emit(&self, event: Event) {
        log::debug!("[{}] event {}", event.uuid, event.body());
    }
}
