//! Helpers shared by the integration tests: the real avr-core process, a scriptable agent.
#![allow(dead_code)]

pub mod avr;
pub mod sts;
