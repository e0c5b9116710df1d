//! Compiles the C eBPF sampler (`ebpf/sampler.bpf.c` at the workspace root) into
//! `$OUT_DIR/sampler.bpf.o`, which `src/lib.rs` embeds with `include_bytes_aligned!`.

use std::path::{Path, PathBuf};
use std::process::Command;

const CLANG_MISSING: &str = "clang is required to build the eBPF sampler: \
     apt-get install clang libbpf-dev (cargo xtask test installs it)";

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let ebpf_dir = manifest_dir.join("../../ebpf");
    let source = ebpf_dir.join("sampler.bpf.c");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("sampler.bpf.o");

    println!("cargo:rerun-if-changed={}", ebpf_dir.display());
    println!("cargo:rerun-if-changed={}", source.display());
    println!(
        "cargo:rerun-if-changed={}",
        ebpf_dir.join("sampler.h").display()
    );
    println!("cargo:rerun-if-env-changed=CLANG");

    let clang = std::env::var_os("CLANG").unwrap_or_else(|| "clang".into());
    let mut command = Command::new(&clang);
    command
        .args(["-O2", "-g", "-target", "bpf", "-Wall"])
        .arg("-I")
        .arg(&ebpf_dir);
    // <linux/types.h> includes <asm/types.h>, which Debian keeps under the multiarch
    // directory; clang's bpf target does not search it by itself.
    if let Some(dir) = multiarch_include_dir() {
        command.arg("-I").arg(dir);
    }
    command.arg("-c").arg(&source).arg("-o").arg(&out);

    let output = match command.output() {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!("{CLANG_MISSING}"),
        Err(error) => panic!(
            "running {}: {error}. {CLANG_MISSING}",
            clang.to_string_lossy()
        ),
    };
    if output.status.success() {
        for line in String::from_utf8_lossy(&output.stderr).lines() {
            println!("cargo:warning={line}");
        }
        return;
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let hint = if stderr.contains("bpf/bpf_helpers.h") || stderr.contains("asm/types.h") {
        "\nmissing headers: apt-get install libbpf-dev (and linux-libc-dev)"
    } else {
        ""
    };
    panic!("compiling {} failed:\n{stderr}{hint}", source.display());
}

fn multiarch_include_dir() -> Option<PathBuf> {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").ok()?;
    let triple = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "riscv64" => "riscv64-linux-gnu",
        "powerpc64" => "powerpc64le-linux-gnu",
        "s390x" => "s390x-linux-gnu",
        _ => return None,
    };
    let dir = Path::new("/usr/include").join(triple);
    dir.is_dir().then_some(dir)
}
