//! A throwaway PostgreSQL cluster for the tests: its own data directory, a free port,
//! trust authentication on loopback only, stopped and deleted on drop.

use crate::system::{free_port, is_root};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The newest installed server's bin directory, e.g. /usr/lib/postgresql/15/bin.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

pub fn server_installed() -> bool {
    bin_dir().is_some()
}

pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    pub url: String,
    pub version: String,
}

/// PostgreSQL refuses to run as root; as root, run its tools as the `postgres` user.
fn pg_command(bin: &Path, tool: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    }
}

fn check(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Cluster {
    /// A cluster for tests: durability off, which is safe for throwaway data and keeps
    /// the tests fast on a small machine.
    pub fn start() -> Result<Self> {
        Self::start_with("-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
    }

    /// A cluster with PostgreSQL's default (durable) settings, for benchmarks whose
    /// figures must hold for a production server.
    pub fn start_durable() -> Result<Self> {
        Self::start_with("")
    }

    fn start_with(settings: &str) -> Result<Self> {
        let bin =
            bin_dir().context("no PostgreSQL server installed (apt-get install postgresql)")?;
        let version = bin
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_string();
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("coral-pg-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        if is_root() {
            check(Command::new("chown").arg("postgres").arg(&dir), "chown")?;
        }
        let data = dir.join("data");
        check(
            pg_command(&bin, "initdb").arg("-D").arg(&data).args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ]),
            "initdb",
        )?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 {settings}",
            dir.display()
        );
        let cluster = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir: dir.clone(),
            bin: bin.clone(),
            version,
        };
        check(
            pg_command(&bin, "pg_ctl")
                .arg("-D")
                .arg(&data)
                .args(["-o", &options, "-l"])
                .arg(dir.join("log"))
                .args(["-w", "-t", "60", "start"]),
            "pg_ctl start",
        )
        .with_context(|| format!("see {}", dir.join("log").display()))?;
        Ok(cluster)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = pg_command(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
