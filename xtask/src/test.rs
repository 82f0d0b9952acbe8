//! `cargo xtask test`: installs what the tests need, then runs every check and test tier:
//! formatting, clippy (warnings denied), unit and integration tests (the root-only eBPF tests
//! included), and the Gateway API conformance suite with its expected-pass list.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Debian packages the tests use: real clients and peers.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("curl", "curl"),
    ("openssl", "openssl"),
    ("h2load", "nghttp2-client"),
    ("ip", "iproute2"),
    ("python3", "python3-pip"),
];

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the repository")
        .to_path_buf()
}

/// Runs a command, echoing it, failing on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("\n==> {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", display(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().to_string();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Python modules the tests use as real clients (module, PyPI package).
const PYTHON_MODULES: &[(&str, &str)] = &[
    ("aioquic", "aioquic"),
    ("kubernetes_validate", "kubernetes-validate"),
];

/// Installs missing Python modules from PyPI with `python3 -m pip`.
pub fn ensure_python(modules: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = modules
        .iter()
        .filter(|(module, _)| {
            !Command::new("python3")
                .args(["-c", &format!("import {module}")])
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    run(Command::new("python3")
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        // Debian marks its Python externally managed; these are test clients only.
        .arg("--break-system-packages")
        .args(&missing))
}

/// Installs missing Debian packages (when root; otherwise says what is missing).
pub fn ensure_apt(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(bin, _)| !have(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        eprintln!(
            "missing tools; install them with: sudo apt-get install -y {}",
            missing.join(" ")
        );
        return Ok(());
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The cargo target directory (`CARGO_TARGET_DIR`, else `target/` in the repository).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(repo_root());
    c
}

/// Entry point of `cargo xtask test [--no-conformance]`.
pub fn main(args: &[String]) -> Result<()> {
    let started = Instant::now();
    let conformance = !args.iter().any(|a| a == "--no-conformance");
    let mut steps: Vec<(String, f64)> = Vec::new();
    let mut step = |name: &str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        let t = Instant::now();
        f().with_context(|| format!("step `{name}`"))?;
        steps.push((name.to_string(), t.elapsed().as_secs_f64()));
        Ok(())
    };

    step("install test tools", &mut || {
        ensure_apt(APT_PACKAGES)?;
        ensure_python(PYTHON_MODULES)
    })?;
    step("eBPF toolchain and kernel object", &mut || {
        crate::ebpf::run(&[])
    })?;
    step("rustfmt", &mut || {
        run(cargo().args(["fmt", "--all", "--", "--check"]))
    })?;
    step("clippy", &mut || {
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    step("unit and integration tests", &mut || {
        run(cargo().args(["test", "--workspace", "--locked"]))
    })?;
    if conformance {
        step("Gateway API conformance", &mut || {
            run(cargo().args(["build", "--locked", "-p", "sluice"]))?;
            let report = target_dir().join("conformance-report.yaml");
            run(Command::new(target_dir().join("debug/sluice"))
                .current_dir(repo_root())
                .arg("conformance")
                .arg("--report")
                .arg(&report))
        })?;
    }
    eprintln!("\nall checks passed:");
    for (name, secs) in &steps {
        eprintln!("  {secs:>7.1}s  {name}");
    }
    eprintln!("  {:>7.1}s  total", started.elapsed().as_secs_f64());
    Ok(())
}
