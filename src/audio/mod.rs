//! Signal processing shared by both directions of a call: converting s16le PCM between
//! sample rates ([`Resampler`]). No sockets, no threads.

pub mod resample;

pub use resample::{resample_all, Resampler};
