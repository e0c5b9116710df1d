//! Project tasks, run as `cargo xtask <task>`:
//!
//! - `test`: installs what the tests need on a fresh machine (PostgreSQL server, gcc,
//!   zlib1g-dev, binutils, linux-perf, kubectl and python3-pip, as root, from Debian's
//!   packages; kubernetes-validate from PyPI),
//!   starts a throwaway PostgreSQL cluster on a free
//!   port, runs every test (including those marked as needing PostgreSQL), and stops it.
//! - `demo`: the main job: builds `coral` and the demo service, and runs `coral demo`
//!   (a colony on the embedded store, an agent, payment-svc with a planted slow path
//!   under load, then trace-trigger and profile-compare).
//! - `bench`: release build, a throwaway PostgreSQL, and `coral-bench`, which prints the
//!   figures recorded in docs/benchmarks.md.
//! - `fuzz`: the extended test mode, not part of `test`: every cargo-fuzz target of
//!   `fuzz/` for a fixed time each (nightly and cargo-fuzz, installed when missing);
//!   fails on a crash.

mod demo;
mod fuzz;
mod postgres;
mod system;

use anyhow::{Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = args
        .split_first()
        .map(|(t, r)| (t.as_str(), r))
        .unwrap_or(("", &[]));
    match task {
        "test" => test(rest),
        "demo" => demo::run(rest),
        "bench" => bench(rest),
        "fuzz" => {
            system::ensure_debian_packages(BUILD_PREREQUISITES)?;
            fuzz::run(rest)
        }
        _ => bail!(
            "usage: cargo xtask <task>\n\n\
             tasks:\n  \
             test [-- <cargo test args>]   install prerequisites, start PostgreSQL, run all tests\n  \
             demo [coral demo args]        build, then find payment-svc's planted slow path (root)\n  \
             bench [NAME]                  release build, PostgreSQL and the embedded store: print figures\n                                \
             (NAME: all, ingest, query, mcp, overhead, symbolize, trace-profile, trigger, agent-memory,\n                                \
             load [--seconds N] [--rate SPANS_PER_S] [--store postgres|sqlite|both])\n  \
             fuzz [--seconds N] [TARGET...]  extended mode: each fuzz target for N s (default 60), nightly"
        ),
    }
}

/// What building Coral needs beyond Rust: the eBPF sampler is C, built with clang
/// against libbpf's headers.
const BUILD_PREREQUISITES: &[system::Prerequisite] = &[
    ("clang", || system::on_path("clang")),
    ("libbpf-dev", || {
        std::path::Path::new("/usr/include/bpf/bpf_helpers.h").exists()
    }),
];

/// Building, plus a PostgreSQL server for the tests and benchmarks, and what the
/// unwinding tests and benchmarks build and compare with: C workloads (gcc) calling
/// Debian's zlib (no frame pointers), stripped with binutils, beside `perf record
/// --call-graph dwarf` (linux-perf).
const TEST_PREREQUISITES: &[system::Prerequisite] = &[
    BUILD_PREREQUISITES[0],
    BUILD_PREREQUISITES[1],
    ("postgresql", postgres::server_installed),
    ("gcc", || system::on_path("cc")),
    ("zlib1g-dev", || {
        std::path::Path::new("/usr/include/zlib.h").exists()
    }),
    ("binutils", || system::on_path("strip")),
    ("linux-perf", || system::succeeds("perf", &["--version"])),
];

/// What the tests of deploy/kubernetes need: `kubectl kustomize` (Debian 12's
/// kubernetes-client is kubectl 1.20, whose kustomize v2.0.3 the manifests keep to),
/// pip, for kubernetes-validate (PyPI; it bundles the Kubernetes schemas), and openssl
/// for deploy/kubernetes/make-secrets.sh.
const DEPLOY_TEST_PREREQUISITES: &[system::Prerequisite] = &[
    ("kubernetes-client", || {
        system::succeeds("kubectl", &["kustomize", "--help"])
    }),
    ("python3-pip", || {
        system::succeeds("python3", &["-m", "pip", "--version"])
    }),
    ("openssl", || system::succeeds("openssl", &["version"])),
];

fn test(extra: &[String]) -> Result<()> {
    system::ensure_debian_packages(&[TEST_PREREQUISITES, DEPLOY_TEST_PREREQUISITES].concat())?;
    system::ensure_python_package("kubernetes_validate", "kubernetes-validate==1.37.0")?;
    system::run("cargo", &["fmt", "--all", "--", "--check"])
        .map_err(|e| anyhow::anyhow!("{e}: run `cargo fmt --all`"))?;
    let cluster = postgres::Cluster::start()?;
    eprintln!("xtask: PostgreSQL {} at {}", cluster.version, cluster.url);
    let mut args = vec!["test", "--workspace", "--", "--include-ignored"];
    args.extend(extra.iter().map(String::as_str));
    let status = std::process::Command::new("cargo")
        .args(&args)
        .env("CORAL_TEST_POSTGRES_URL", &cluster.url)
        .status()?;
    drop(cluster);
    if !status.success() {
        bail!("tests failed");
    }
    Ok(())
}

fn bench(args: &[String]) -> Result<()> {
    system::ensure_debian_packages(TEST_PREREQUISITES)?;
    system::run(
        "cargo",
        &["build", "--release", "-p", "coral-cli", "-p", "coral-bench"],
    )?;
    let cluster = postgres::Cluster::start_durable()?;
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let status = std::process::Command::new(format!("{target}/release/coral-bench"))
        .args(args)
        .env("CORAL_BENCH_POSTGRES_URL", &cluster.url)
        .env("CORAL_BIN", format!("{target}/release/coral"))
        .status()?;
    drop(cluster);
    if !status.success() {
        bail!("benchmark failed");
    }
    Ok(())
}
