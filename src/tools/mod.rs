//! What ships beside the bridge, for users and tests: a fake Asterisk, an echo agent, and
//! the demo that runs both against avr-core. Nothing in the product depends on these.

pub mod demo;
pub mod echo_pipeline;
pub mod echo_sts;
pub mod http_sink;
pub mod rates;
pub mod simulate;
