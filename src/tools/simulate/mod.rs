//! The fake Asterisk: places AudioSocket calls the way `AudioSocket()` does and reports,
//! strictly, what the server sent back.
//!
//! It is both `avr-core simulate` and the peer the integration tests drive, so its report must
//! be trustworthy: the receive side applies Asterisk HEAD's rules (docs/audiosocket.md §6, §11),
//! and the rule that a caller is answered in its own kind (8 kHz or wideband, §10.4), and
//! timestamps every frame on a thread that does nothing but read, stamp and append.
//!
//! - `checker`: those rules, pure (bytes and their arrival time in, violations out);
//! - `runner`: one call over a socket ([`run_call`]);
//! - `load`: many marked calls at once ([`run_load`]);
//! - `stats`: what a call measured ([`SimReport`]) and the arithmetic over arrival times;
//! - `wav`: caller audio from files, received audio to a file;
//! - [`cli`]: `avr-core simulate`'s flags and output.

use std::time::Duration;

mod checker;
pub mod cli;
#[cfg(test)]
mod fake_server;
mod load;
mod runner;
mod stats;
mod wav;

pub use load::{frame_seq, marker, run_load, LoadCall, LoadOptions, LoadReport, LoadSummary};
pub use runner::{run_call, AudioSource, EndMode, EndedBy, SimCodec, SimError, SimOptions};
pub use stats::{gaps, percentile, window_max, SimReport};
pub use wav::{load_audio, parse_wav, wav_bytes};

/// One audio frame: Asterisk's default ptime.
pub const FRAME: Duration = Duration::from_millis(20);
/// 8 kHz × 20 ms: a slin (`0x10`) frame; other rates:
/// [`frame_samples`](crate::tools::rates::frame_samples).
pub const SAMPLES_PER_FRAME: usize = 160;
