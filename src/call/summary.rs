//! The end-of-call line: what the call carried each way, and why it ended.

use std::fmt;
use std::time::Duration;

use super::EndReason;
use crate::agent::LinkStats;
use crate::pipeline::session::PipelineStats;
use crate::playout::ClockStats;
use crate::proto::audiosocket::{rate_name, SLIN_HZ};
use crate::proto::g711::Codec;

/// Everything the closing log line reports; its `Display` is that line (after the `[uuid]`).
#[derive(Debug, Clone)]
pub struct CallSummary {
    /// From the UUID to the end of teardown.
    pub duration: Duration,
    /// `None` only if nothing recorded a reason (printed as `unknown`).
    pub reason: Option<EndReason>,
    /// The caller's codec, once forced or detected (8 kHz callers).
    pub codec: Option<Codec>,
    /// The rate of the call, once known: a wideband caller's codec is its slinNN.
    pub caller_hz: Option<u32>,
    /// AudioSocket frames read from Asterisk, of every kind.
    pub frames_in: u64,
    /// What the playout clock wrote to Asterisk.
    pub clock: ClockStats,
    /// What the agent link carried.
    pub link: LinkStats,
    /// Pipeline mode: what the pipeline did, reported instead of `link`.
    pub pipeline: Option<PipelineStats>,
}

impl CallSummary {
    /// `SLIN`, `ULAW`, `ALAW` for 8 kHz callers (as the Node.js original logged them),
    /// `SLIN16` and the like for wideband ones, `none` when no audio came.
    fn codec_name(&self) -> String {
        match (self.caller_hz, self.codec) {
            (Some(hz), _) if hz != SLIN_HZ => rate_name(hz).to_uppercase(),
            (_, Some(codec)) => codec.name().to_string(),
            (_, None) => "none".to_string(),
        }
    }
}

impl fmt::Display for CallSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Call ended after {:.1} s: ", self.duration.as_secs_f64())?;
        match &self.reason {
            Some(reason) => write!(f, "{reason}")?,
            None => f.write_str("unknown")?,
        }
        write!(
            f,
            "; codec {}, frames in {}, frames out {} ({} agent, {} underruns, {} late slots \
             skipped)",
            self.codec_name(),
            self.frames_in,
            self.clock.frames_out,
            self.clock.agent_frames,
            self.clock.underruns,
            self.clock.late_slots,
        )?;
        match &self.pipeline {
            Some(p) => write!(
                f,
                ", pipeline: {} transcripts, {} turns ({} interrupted), {} sentences spoken, \
                 {} audio chunks to speech-to-text ({} dropped: not reading), {} reconnects",
                p.transcripts,
                p.turns,
                p.interrupted,
                p.sentences,
                p.uploaded,
                p.dropped,
                p.reconnects
            ),
            None => write!(
                f,
                ", audio messages to agent {} ({} dropped: agent not reading), messages from \
                 agent {}",
                self.link.audio_sent,
                self.link.dropped_for_backpressure,
                self.link.messages_received,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_reads_as_operators_know_it() {
        let summary = CallSummary {
            duration: Duration::from_millis(12_345),
            reason: Some(EndReason::CallerHangup(
                "Asterisk sent a hangup frame".into(),
            )),
            codec: Some(Codec::Ulaw),
            caller_hz: Some(8_000),
            frames_in: 617,
            clock: ClockStats {
                frames_out: 620,
                agent_frames: 300,
                underruns: 2,
                late_slots: 1,
                hangup_sent: false,
            },
            link: LinkStats {
                audio_sent: 615,
                messages_received: 40,
                dropped_for_backpressure: 3,
            },
            pipeline: None,
        };
        assert_eq!(
            summary.to_string(),
            "Call ended after 12.3 s: caller hung up (Asterisk sent a hangup frame); codec \
             ULAW, frames in 617, frames out 620 (300 agent, 2 underruns, 1 late slots \
             skipped), audio messages to agent 615 (3 dropped: agent not reading), messages \
             from agent 40"
        );
    }

    #[test]
    fn a_call_without_audio_or_reason_says_so() {
        let summary = CallSummary {
            duration: Duration::from_millis(80),
            reason: None,
            codec: None,
            caller_hz: None,
            frames_in: 0,
            clock: ClockStats::default(),
            link: LinkStats::default(),
            pipeline: None,
        };
        assert_eq!(
            summary.to_string(),
            "Call ended after 0.1 s: unknown; codec none, frames in 0, frames out 0 (0 agent, \
             0 underruns, 0 late slots skipped), audio messages to agent 0 (0 dropped: agent \
             not reading), messages from agent 0"
        );
    }

    #[test]
    fn a_wideband_caller_is_named_by_its_kind() {
        let summary = CallSummary {
            duration: Duration::from_secs(1),
            reason: None,
            codec: None,
            caller_hz: Some(16_000),
            frames_in: 50,
            clock: ClockStats::default(),
            link: LinkStats::default(),
            pipeline: None,
        };
        assert!(summary.to_string().contains("; codec SLIN16, frames in 50"));
    }

    #[test]
    fn a_pipeline_call_reports_its_pipeline() {
        let summary = CallSummary {
            duration: Duration::from_secs(1),
            reason: None,
            codec: None,
            caller_hz: None,
            frames_in: 0,
            clock: ClockStats::default(),
            link: LinkStats::default(),
            pipeline: Some(PipelineStats {
                transcripts: 3,
                turns: 4,
                interrupted: 1,
                sentences: 9,
                uploaded: 250,
                dropped: 0,
                reconnects: 1,
            }),
        };
        assert!(summary.to_string().ends_with(
            "skipped), pipeline: 3 transcripts, 4 turns (1 interrupted), 9 sentences spoken, \
             250 audio chunks to speech-to-text (0 dropped: not reading), 1 reconnects"
        ));
    }
}
