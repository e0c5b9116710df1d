//! `cargo xtask demo`: installs what the build needs, builds `coral` and the demo
//! service, and runs `coral demo` with the given arguments (it needs root for eBPF).

use crate::system;
use anyhow::{Result, bail};
use std::path::PathBuf;
use std::process::Command;

pub fn run(args: &[String]) -> Result<()> {
    system::ensure_debian_packages(crate::BUILD_PREREQUISITES)?;
    if !system::is_root() {
        bail!("the demo samples CPU with eBPF, which needs root: run `cargo xtask demo` as root");
    }
    eprintln!("demo: building coral and payment-svc…");
    system::run(
        "cargo",
        &["build", "--quiet", "-p", "coral-cli", "-p", "coral-demo"],
    )?;
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let coral = PathBuf::from(target).join("debug/coral");
    let args = args.strip_prefix(&["--".to_string()]).unwrap_or(args);
    let status = Command::new(&coral).arg("demo").args(args).status()?;
    if !status.success() {
        bail!("`coral demo` failed ({status})");
    }
    Ok(())
}
