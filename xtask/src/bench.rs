//! `cargo xtask bench [--quick] [--scenario NAME...] [...]`: installs the peers (nginx, HAProxy)
//! and load generators (wrk, h2load) from Debian, builds Sluice and the runner in release mode,
//! and runs `peer-bench` (benches/src/main.rs), which writes benches/results/.

use anyhow::{Context, Result};
use std::process::Command;

use crate::test::{ensure_apt, repo_root, run, target_dir};

/// Debian packages the benchmark uses: the peers, load generators and tools.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("nginx", "nginx"),
    ("haproxy", "haproxy"),
    ("wrk", "wrk"),
    ("h2load", "nghttp2-client"),
    ("openssl", "openssl"),
    ("curl", "curl"),
    ("taskset", "util-linux"),
    ("prlimit", "util-linux"),
];

pub fn main(args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        eprintln!(
            "usage: cargo xtask bench [--quick] [--scenario NAME...] [--peers sluice,nginx,haproxy] \
             [--rounds N] [--seconds S] [--out DIR] [--keep] [--list]\n\
             Full runs write benches/results/; other runs write benches/results/scratch/."
        );
        return Ok(());
    }
    ensure_apt(APT_PACKAGES)?;
    let root = repo_root();
    let target = target_dir();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(&cargo).current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "sluice",
        "-p",
        "sluice-benches",
        "--bins",
    ]))?;
    let release = target.join("release");
    let mut cmd = Command::new(release.join("peer-bench"));
    cmd.arg("--sluice")
        .arg(release.join("sluice"))
        .arg("--command")
        .arg(format!("cargo xtask bench {}", args.join(" ")).trim_end())
        .args(args);
    let status = cmd.status().context("starting peer-bench")?;
    anyhow::ensure!(status.success(), "peer-bench failed ({status})");
    Ok(())
}
