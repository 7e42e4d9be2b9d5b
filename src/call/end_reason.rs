//! Why a call ended: one reason per call, the first that happened.

use std::fmt;
use std::time::Duration;

/// Why a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// Asterisk closed the connection or sent a hangup/error frame.
    CallerHangup(String),
    /// The agent closed; its queued audio was played, then avr-core hung up.
    AgentClosed(String),
    /// The agent could not be reached; avr-core hung up at once.
    AgentUnreachable(String),
    /// Pipeline mode: the speech-to-text stream broke and could not be reopened; what the
    /// agent had said was played, then avr-core hung up.
    ServiceFailed(String),
    /// Asterisk sent something that cannot be a call; avr-core hung up.
    Protocol(String),
    /// No frame at all from Asterisk for this long (`CALLER_IDLE_TIMEOUT`); avr-core hung up.
    CallerSilent(Duration),
    /// Writing to Asterisk failed.
    WriteFailed(String),
    /// avr-core is stopping and the call outlived `SHUTDOWN_GRACE`; avr-core hung up.
    Shutdown,
    /// avr-core itself could not carry the call (resources); it hung up.
    Internal(String),
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::CallerHangup(why) => write!(f, "caller hung up ({why})"),
            EndReason::AgentClosed(why) => write!(f, "agent closed ({why})"),
            EndReason::AgentUnreachable(why) => write!(f, "agent unreachable ({why})"),
            EndReason::ServiceFailed(why) => write!(f, "pipeline service failed ({why})"),
            EndReason::Protocol(why) => write!(f, "protocol error ({why})"),
            EndReason::CallerSilent(idle) => write!(
                f,
                "caller silent (no frame from Asterisk for {})",
                seconds(*idle)
            ),
            EndReason::WriteFailed(why) => write!(f, "cannot write to Asterisk ({why})"),
            EndReason::Shutdown => write!(f, "avr-core is shutting down (SHUTDOWN_GRACE ended)"),
            EndReason::Internal(why) => write!(f, "avr-core could not carry the call ({why})"),
        }
    }
}

/// `10 s`, or `1.5 s` when the duration is not a whole number of seconds.
fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_caller_reads_in_seconds() {
        let silent = |ms| EndReason::CallerSilent(Duration::from_millis(ms)).to_string();
        assert_eq!(
            silent(10_000),
            "caller silent (no frame from Asterisk for 10 s)"
        );
        assert_eq!(
            silent(1_500),
            "caller silent (no frame from Asterisk for 1.5 s)"
        );
    }
}
