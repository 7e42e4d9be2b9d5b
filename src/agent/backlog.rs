//! Caller audio and digits kept while the agent is still connecting.

use std::collections::VecDeque;

use crate::proto::sts::ToAgent;

/// Caller audio held while an 8 kHz agent is not taking it: 1 s of s16le (docs/sts.md §3).
pub const BACKLOG_AUDIO_CAP: usize = 16_000;

/// Caller audio and DTMF that arrive while the agent is still connecting, sent after `init`
/// (docs/sts.md §3). Audio is capped at [`BACKLOG_AUDIO_CAP`]: the newest second is kept and older
/// audio is dropped, so a slow agent cannot make memory grow; DTMF is always kept.
pub struct Backlog {
    items: VecDeque<ToAgent>,
    audio_bytes: usize,
    /// Audio bytes kept at most: 1 s at the agent's rate.
    cap: usize,
}

impl Default for Backlog {
    /// For an 8 kHz agent.
    fn default() -> Backlog {
        Backlog {
            items: VecDeque::new(),
            audio_bytes: 0,
            cap: BACKLOG_AUDIO_CAP,
        }
    }
}

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub struct Pushed {
    /// Bytes of older caller audio dropped to stay within the cap.
    pub dropped_bytes: usize,
}

impl Backlog {
    /// For an agent speaking `rate_hz`: the newest second of its audio is kept.
    pub fn for_rate(rate_hz: u32) -> Backlog {
        Backlog {
            cap: rate_hz as usize * 2,
            ..Backlog::default()
        }
    }

    pub fn push(&mut self, item: ToAgent) -> Pushed {
        let mut dropped_bytes = 0;
        if let ToAgent::Audio(pcm) = &item {
            self.audio_bytes += pcm.len();
        }
        self.items.push_back(item);
        // Drop the oldest audio, never the item just queued (however large it is).
        while self.audio_bytes > self.cap {
            let older = self.items.len() - 1;
            let Some(pos) = self
                .items
                .iter()
                .take(older)
                .position(|i| matches!(i, ToAgent::Audio(_)))
            else {
                break;
            };
            if let Some(ToAgent::Audio(old)) = self.items.remove(pos) {
                self.audio_bytes -= old.len();
                dropped_bytes += old.len();
            }
        }
        Pushed { dropped_bytes }
    }

    /// Everything queued, oldest first.
    pub fn drain(&mut self) -> impl Iterator<Item = ToAgent> + '_ {
        self.audio_bytes = 0;
        self.items.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_keeps_the_newest_second_and_every_digit() {
        let mut backlog = Backlog::default();
        let mut dropped = 0;
        backlog.push(ToAgent::Dtmf('1'));
        for i in 0..60u8 {
            dropped += backlog.push(ToAgent::Audio(vec![i; 320])).dropped_bytes;
        }
        backlog.push(ToAgent::Dtmf('5'));
        assert_eq!(dropped, 10 * 320);
        let got: Vec<ToAgent> = backlog.drain().collect();
        assert_eq!(got.len(), 52);
        assert_eq!(got[0], ToAgent::Dtmf('1'));
        assert_eq!(got[1], ToAgent::Audio(vec![10; 320]));
        assert_eq!(got[51], ToAgent::Dtmf('5'));
        assert_eq!(backlog.drain().count(), 0);
        // A single message larger than the cap is kept whole.
        assert_eq!(
            backlog.push(ToAgent::Audio(vec![0; 20_000])).dropped_bytes,
            0
        );
    }

    #[test]
    fn the_second_kept_is_at_the_agents_rate() {
        let mut backlog = Backlog::for_rate(16_000);
        for _ in 0..60 {
            backlog.push(ToAgent::Audio(vec![0; 640]));
        }
        let kept: usize = backlog
            .drain()
            .map(|item| match item {
                ToAgent::Audio(pcm) => pcm.len(),
                ToAgent::Dtmf(_) => 0,
            })
            .sum();
        assert_eq!(kept, 32_000, "1 s of 16 kHz s16le");
    }
}
