//! The conformance harness can fail: with the proxy's RequestHeaderModifier broken (the
//! `fault-injection` feature, enabled only for these tests), `sluice conformance` reports the
//! named case as failed and exits non-zero; with it intact, the same case passes.

use std::path::Path;
use std::process::Command;

const TEST: &str = "HTTPRouteRequestHeaderModifier";

fn conformance(break_filter: bool) -> (bool, String) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let report = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.current_dir(repo)
        .args(["conformance", "--only", TEST, "--report"])
        .arg(report.path())
        .env("NO_COLOR", "1");
    if break_filter {
        cmd.env("SLUICE_FAULT_SKIP_FILTERS", "requestHeaderModifier");
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_broken_filter_fails_its_named_case() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/cases.yaml");
    if !shared.exists() {
        eprintln!(
            "SKIPPED: {} not found (the suite material sits beside the repository)",
            shared.display()
        );
        return;
    }
    let (ok, text) = conformance(true);
    assert!(!ok, "a broken filter must fail the run:\n{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with(TEST) && !l.contains("REGRESSION"))
        .unwrap_or_else(|| panic!("no result line for {TEST}:\n{text}"));
    assert!(line.contains("FAIL") || line.contains("fail"), "{line}");
    assert!(
        text.contains(&format!("REGRESSION: {TEST}")),
        "the expected-pass check names the case:\n{text}"
    );

    let (ok, text) = conformance(false);
    assert!(ok, "the intact proxy passes the same case:\n{text}");
    let line = text.lines().find(|l| l.starts_with(TEST)).unwrap();
    assert!(line.contains("pass"), "{line}");
}
