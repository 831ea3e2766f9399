//! Corral's integration tests: one binary, one module per area. They run real
//! components built by `jobs/build.sh` and, where a test needs Redis, a
//! `redis-server` of their own on a free loopback port.

mod support;

mod chain;
mod conformance;
