//! The demo is an end-to-end test of the whole product: real eBPF, the OpenTelemetry
//! SDK in payment-svc, agent, colony, trigger and comparison. Each planted cause must
//! be named first, with high significance, and no demo process may outlive the run.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `coral`, built next to payment-svc by `cargo test --workspace` (`cargo xtask test`).
fn coral() -> PathBuf {
    let coral = Path::new(env!("CARGO_BIN_EXE_payment-svc")).with_file_name("coral");
    assert!(
        coral.is_file(),
        "{} is missing: run the workspace's tests (`cargo xtask test`), which build it",
        coral.display()
    );
    coral
}

/// Processes whose command line mentions `dir`: the demo passes its output directory
/// to the colony, so a leftover colony shows here.
fn processes_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&needle))
        .collect()
}

fn run_demo(scenario: &str, planted: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(coral())
        .args([
            "demo",
            "--scenario",
            scenario,
            "--count",
            "5",
            "--output-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");

    let comparison: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("comparison.json")).unwrap())
            .unwrap();
    let top = &comparison["functions"][0];
    assert!(
        top["function"].as_str().unwrap().ends_with(planted),
        "{planted} is not first:\n{stdout}"
    );
    assert_eq!(top["significance"], "high", "{stdout}");
    assert!(top["delta_pp"].as_f64().unwrap() > 50.0, "{stdout}");
    // The person reading the output sees the answer with its evidence.
    let answer = stdout
        .lines()
        .find(|l| l.starts_with("Coral's answer:"))
        .unwrap_or_else(|| panic!("no answer line:\n{stdout}"));
    assert!(
        answer.contains(planted) && answer.contains("ms of CPU per request"),
        "{answer}"
    );
    for svg in ["compare.svg", "slow-request.svg"] {
        let text = std::fs::read_to_string(dir.path().join(svg)).unwrap();
        assert!(text.contains("<svg") && text.contains(planted), "{svg}");
    }
    assert_eq!(processes_mentioning(dir.path()), Vec::<String>::new());
}

#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn the_demo_names_each_planted_cause_first() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root for eBPF: run `cargo xtask test` as root"
    );
    run_demo("latency", "validate_signature");
    run_demo("errors", "score_fraud_rules");
}
