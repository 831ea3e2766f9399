//! Corral's integration tests: one binary, one module per area. They run real
//! components built by `jobs/build.sh` and, where a test needs Redis, a
//! `redis-server` of their own on a free loopback port.

#[path = "../common/interpreters.rs"]
mod interpreters;
#[path = "../common/limit.rs"]
mod limit;
mod support;

mod api;
mod api_cli;
mod api_http;
mod api_support;
mod cancel;
mod chain;
mod cli;
mod compile;
mod config;
mod conformance;
mod crash;
mod dashboard_browser;
mod deep_args;
mod enqueue_cli;
mod fleet_cli;
mod fleet_limits;
mod leases;
mod logs;
mod metrics;
mod operate;
mod operate_cli;
#[cfg(feature = "otlp")]
mod otlp;
mod polyglot;
mod quotas;
mod readme;
mod redis_broker;
mod replay;
mod scaffold;
mod schedules;
mod tenants;
mod workflows;
