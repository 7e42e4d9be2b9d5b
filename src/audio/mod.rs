//! Signal processing shared by both directions of a call: converting s16le PCM between
//! sample rates ([`Resampler`]), and measuring how well that is done ([`quality`], shared by
//! the unit tests and `benches/resample.rs`). No sockets, no threads.

pub mod quality;
pub mod resample;

pub use resample::{resample_all, Filter, Resampler};
