//! Test support: compiling C programs, running them, and sampling their threads with
//! ptrace the way the eBPF sampler does it ([`capture`]), without eBPF.

#![allow(dead_code)]

mod capture;

pub use capture::*;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Compiles `source` (C) with `cc` into `dir/name`, with extra `args` (flags, libraries).
pub fn compile(dir: &Path, name: &str, source: &str, args: &[&str]) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let out = dir.join(name);
    let status = Command::new("cc")
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .args(args)
        .status()
        .expect("cc (gcc) is a test prerequisite");
    assert!(status.success(), "compiling {name} failed");
    out
}

/// A child process killed on drop.
pub struct Running {
    pub child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Running {
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Running { child, lines }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the program to print `line`.
    pub fn wait_for_line(&mut self, line: &str) {
        for got in self.lines.by_ref() {
            if got.unwrap() == line {
                return;
            }
        }
        panic!("the program exited before printing {line:?}");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
