//! `cargo xtask bench [--quick] [--scenario NAME...] [--sluice-rev REV] [...]`: installs the
//! peers (nginx, HAProxy) and load generators (wrk, h2load) from Debian, builds Sluice and the
//! runner in release mode, and runs `peer-bench` (benches/src/main.rs), which writes
//! benches/results/.

use anyhow::{Context, Result, bail};
use std::process::Command;

use crate::test::{ensure_apt, is_root, repo_root, run, target_dir};

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
            "usage: cargo xtask bench [--quick] [--scenario NAME...] [--peers sluice,sluice-ebpf,nginx,haproxy] \
             [--rounds N] [--seconds S] [--out DIR] [--keep] [--list] [--sluice-rev REV]\n\
             Full runs write benches/results/; other runs write benches/results/scratch/.\n\
             --sluice-rev REV measures Sluice as committed at REV (a clean `git archive` export)\n\
             instead of the working tree."
        );
        return Ok(());
    }
    let mut rest: Vec<String> = vec![];
    let mut rev: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--sluice-rev" {
            rev = Some(it.next().context("--sluice-rev needs a revision")?.clone());
        } else {
            rest.push(a.clone());
        }
    }
    ensure_apt(APT_PACKAGES)?;
    let root = repo_root();
    let release = target_dir().join("release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(&cargo).current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "sluice-benches",
        "--bin",
        "peer-bench",
    ]))?;
    let mut runner = Command::new(release.join("peer-bench"));
    match &rev {
        None => {
            run(Command::new(&cargo).current_dir(&root).args([
                "build",
                "--release",
                "-p",
                "sluice",
            ]))?;
            runner.arg("--sluice").arg(release.join("sluice"));
        }
        Some(rev) => {
            let commit = git(
                &root,
                &["rev-parse", "--short", &format!("{rev}^{{commit}}")],
            )?;
            let src = target_dir().join("bench-src").join(&commit);
            if !src.join("Cargo.toml").exists() {
                std::fs::create_dir_all(&src)?;
                let st = Command::new("sh")
                    .arg("-c")
                    .arg(format!(
                        "git -C '{}' archive '{commit}' | tar -x -C '{}'",
                        root.display(),
                        src.display()
                    ))
                    .status()?;
                if !st.success() {
                    bail!("exporting {commit} failed");
                }
            }
            run(Command::new(&cargo).current_dir(&src).args([
                "build",
                "--release",
                "-p",
                "sluice",
            ]))?;
            runner
                .arg("--sluice")
                .arg(release.join("sluice"))
                .arg("--sluice-version")
                .arg(&commit);
        }
    }
    // Sluice with its kernel datapath (the `sluice-ebpf` peer) needs the eBPF object and root;
    // without either the runner reports that peer as not measured. A revision other than the
    // working tree is measured without it (the object would be the working tree's).
    if rev.is_none() && is_root() {
        match crate::ebpf::run(&[]) {
            Ok(()) => {
                runner
                    .arg("--ebpf-object")
                    .arg(crate::ebpf::object_path(&root));
            }
            Err(e) => eprintln!(
                "warning: the eBPF object did not build ({e:#}); sluice-ebpf will not be measured"
            ),
        }
    }
    let shown = format!("cargo xtask bench {}", args.join(" "));
    runner.arg("--command").arg(shown.trim_end()).args(&rest);
    let status = runner.status().context("starting peer-bench")?;
    anyhow::ensure!(status.success(), "peer-bench failed ({status})");
    Ok(())
}

fn git(root: &std::path::Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
