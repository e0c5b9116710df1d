//! Running commands and installing Debian packages on a fresh machine.

use anyhow::{Context, Result, bail};
use std::process::Command;

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a command, inheriting stdio; fails if it fails.
pub fn run(program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// A Debian package and how to tell that what the project needs from it is present.
pub type Prerequisite = (&'static str, fn() -> bool);

/// Installs each package whose check says it is missing. Needs root; without it, says
/// exactly what to install instead of failing later with a confusing error.
pub fn ensure_debian_packages(packages: &[Prerequisite]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, present)| !present())
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing prerequisites: {}. Install them (apt-get install {}) or run as root.",
            missing.join(", "),
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(", "));
    run("apt-get", &["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    let status = Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    if !status.success() {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    for (name, present) in packages {
        if !present() {
            bail!("{name} was installed but is still not usable");
        }
    }
    Ok(())
}

/// A free TCP port on the loopback interface (bind to port 0, read it, release it).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether `program` is an executable on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Whether `program args…` runs and exits 0 (output discarded).
pub fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs a PyPI package with `python3 -m pip` unless `python3 -m <module> --version`
/// already works. A Debian-managed Python refuses pip installs into it (PEP 668); on
/// this throwaway test machine the package then goes in with --break-system-packages
/// (pip puts it under /usr/local, beside Debian's own packages).
pub fn ensure_python_package(module: &str, requirement: &str) -> Result<()> {
    let present = || succeeds("python3", &["-m", module, "--version"]);
    if present() {
        return Ok(());
    }
    eprintln!("xtask: installing {requirement} (PyPI)");
    let install = ["-m", "pip", "install", "--quiet", requirement];
    if !succeeds("python3", &install) {
        let mut forced = install.to_vec();
        forced.push("--break-system-packages");
        run("python3", &forced).with_context(|| {
            format!("installing {requirement}: python3 -m pip install {requirement}")
        })?;
    }
    if !present() {
        bail!("{requirement} was installed but `python3 -m {module} --version` still fails");
    }
    Ok(())
}
