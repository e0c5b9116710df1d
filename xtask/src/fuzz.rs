//! `cargo xtask fuzz [--seconds N] [TARGET...]`: the extended test mode. Runs every
//! cargo-fuzz target of `fuzz/` (or the named ones) for N seconds each (default 60)
//! and fails if any of them finds a crash. Needs the nightly toolchain and
//! cargo-fuzz, which it installs when missing. Not part of `cargo xtask test`: it
//! takes minutes and needs nightly.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every target in fuzz/Cargo.toml.
pub const TARGETS: &[&str] = &[
    "filter_parser",
    "otlp_protobuf",
    "otlp_json",
    "status_pattern",
    "url_pattern",
];

const DEFAULT_SECONDS: u64 = 60;

/// libFuzzer's limits: a crash is also an input that takes more than 10 s or makes the
/// process use more than 2 GiB.
const LIBFUZZER_LIMITS: &[&str] = &["-rss_limit_mb=2048", "-timeout=10"];

pub fn run(args: &[String]) -> Result<()> {
    let (seconds, targets) = parse_args(args)?;
    ensure_nightly()?;
    ensure_cargo_fuzz()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf();
    let mut crashed = Vec::new();
    for target in &targets {
        eprintln!("xtask: fuzzing {target} for {seconds} s");
        if !fuzz_one(&root, target, seconds)? {
            crashed.push(*target);
        }
    }
    if !crashed.is_empty() {
        bail!(
            "fuzzing found a crash in {}: the inputs are under fuzz/artifacts/<target>/; \
             replay one with `cargo +nightly fuzz run <target> <file>`, shrink it with \
             `cargo +nightly fuzz tmin <target> <file>`, fix the bug and keep the input \
             as a unit test",
            crashed.join(", ")
        );
    }
    eprintln!(
        "xtask: {} fuzz targets ran {seconds} s each without a crash",
        targets.len()
    );
    Ok(())
}

fn parse_args(args: &[String]) -> Result<(u64, Vec<&'static str>)> {
    let mut seconds = DEFAULT_SECONDS;
    let mut targets = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--seconds" {
            let value = args.next().context("--seconds needs a number")?;
            seconds = value
                .parse()
                .ok()
                .filter(|s| *s > 0)
                .with_context(|| format!("--seconds {value:?}: expected a positive number"))?;
        } else if let Some(target) = TARGETS.iter().find(|t| **t == arg) {
            targets.push(*target);
        } else {
            bail!(
                "unknown argument {arg:?}: usage: cargo xtask fuzz [--seconds N] [TARGET...] \
                 (targets: {})",
                TARGETS.join(", ")
            );
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    Ok((seconds, targets))
}

/// A command that runs without the toolchain `cargo xtask` itself was started with.
fn command(program: &str) -> Command {
    let mut command = Command::new(program);
    for var in ["CARGO", "RUSTC", "RUSTDOC", "RUSTUP_TOOLCHAIN"] {
        command.env_remove(var);
    }
    command
}

fn succeeds(command: &mut Command) -> bool {
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn ensure_nightly() -> Result<()> {
    let present = || succeeds(command("rustup").args(["run", "nightly", "rustc", "--version"]));
    if present() {
        return Ok(());
    }
    let install = ["toolchain", "install", "nightly", "--profile", "minimal"];
    eprintln!(
        "xtask: installing the nightly toolchain: rustup {}",
        install.join(" ")
    );
    let status = command("rustup").args(install).status();
    if !status.is_ok_and(|s| s.success()) || !present() {
        bail!(
            "fuzzing needs the nightly toolchain, which could not be installed: run \
             `rustup {}` (rustup itself: https://rustup.rs)",
            install.join(" ")
        );
    }
    Ok(())
}

fn ensure_cargo_fuzz() -> Result<()> {
    let present =
        || succeeds(command("rustup").args(["run", "nightly", "cargo", "fuzz", "--version"]));
    if present() {
        return Ok(());
    }
    let install = ["install", "cargo-fuzz", "--locked"];
    eprintln!("xtask: installing cargo-fuzz: cargo {}", install.join(" "));
    let status = command("cargo").args(install).status();
    if !status.is_ok_and(|s| s.success()) || !present() {
        bail!(
            "fuzzing needs cargo-fuzz, which could not be installed: run `cargo {}`",
            install.join(" ")
        );
    }
    Ok(())
}

/// Runs one target on its corpus (fuzz/corpus/<target>, which keeps what it learns)
/// and its committed seeds (fuzz/seeds/<target>). False when it found a crash.
fn fuzz_one(root: &Path, target: &str, seconds: u64) -> Result<bool> {
    let corpus = root.join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&corpus)
        .with_context(|| format!("cannot create {}", corpus.display()))?;
    let mut command = command("rustup");
    command
        .current_dir(root)
        .args(["run", "nightly", "cargo", "fuzz", "run", target]);
    // cargo-fuzz's own default is fuzz/target; follow CARGO_TARGET_DIR when it is set.
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        command
            .arg("--target-dir")
            .arg(PathBuf::from(dir).join("fuzz"));
    }
    command.arg(&corpus);
    let seeds = root.join("fuzz/seeds").join(target);
    if seeds.is_dir() {
        command.arg(&seeds);
    }
    command
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .args(LIBFUZZER_LIMITS);
    let status = command
        .status()
        .context("cannot run `rustup run nightly cargo fuzz`")?;
    Ok(status.success())
}
