//! The integration tests: the real avr-core binary and its in-process parts driven over
//! loopback sockets by peers that behave like Asterisk, an STS agent, a webhook receiver and
//! an HTTP client. One test binary (one link, one copy of the helpers); a file per area.

#[path = "../support/mod.rs"]
mod support;

mod agent;
mod balancer;
mod budgets;
mod call_flow;
mod call_limits;
mod call_routing;
mod cli;
mod connect_budget;
mod demo;
mod hostile;
mod http;
mod http_hostile;
mod http_server;
mod limits;
mod load;
mod pipeline;
mod registry;
mod shutdown;
mod sts_support_smoke;
mod tls;
mod webhook_files;
mod webhook_spool;
mod webhooks;
mod webhooks_api;
mod wideband;
mod wideband_tools;
