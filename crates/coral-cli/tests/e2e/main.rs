//! End-to-end tests: real OpenTelemetry SDKs send spans to a real agent, which ships
//! them to a real colony on the embedded store and on PostgreSQL; the `coral` binary
//! queries them back.
//!
//! Tests that need PostgreSQL or root (eBPF, or `faults`, which runs a PostgreSQL server
//! of its own as the `postgres` user) are `#[ignore]`d so that plain `cargo test` stays
//! unprivileged; `cargo xtask test` provides a server and runs them (as root).
//!
//! `deploy` checks the Kubernetes manifests with `kubectl kustomize` and
//! `kubernetes-validate`, which `cargo xtask test` installs.

mod cli;
mod compare;
mod deploy;
mod faults;
mod harness;
mod ingest;
mod limits;
mod mcp;
mod memory;
mod metrics;
mod offcpu;
mod profile;
mod security;
mod trigger;
