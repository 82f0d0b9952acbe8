//! `cargo xtask ebpf`: builds the kernel programs (ebpf/programs) with the nightly toolchain
//! and copies the object to `target/bpf/sluice.bpf.o`, where the loader looks by default.
//!
//! Installs what is missing first: the nightly's `rust-src` component and `bpf-linker`.
//! Options: `--debug` (unoptimized, for reading the verifier log), `--no-install` (fail
//! instead of installing). The programs' own cargo target directory is
//! `$SLUICE_EBPF_TARGET_DIR`, default `target/ebpf-programs`.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// bpf-linker version known to work with the installed nightly's LLVM.
const BPF_LINKER_VERSION: &str = "0.10.2";
/// The kernel programs' target triple.
const TARGET: &str = "bpfel-unknown-none";

/// Entry point of `cargo xtask ebpf [--debug] [--no-install]`.
pub fn run(args: &[String]) -> Result<()> {
    let mut release = true;
    let mut install = true;
    for a in args {
        match a.as_str() {
            "--debug" => release = false,
            "--no-install" => install = false,
            "-h" | "--help" => {
                println!("usage: cargo xtask ebpf [--debug] [--no-install]");
                return Ok(());
            }
            other => bail!("cargo xtask ebpf: unknown argument {other:?}"),
        }
    }
    let root = workspace_root();
    ensure_toolchain(install)?;

    let programs = root.join("ebpf/programs");
    let target_dir = std::env::var_os("SLUICE_EBPF_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/ebpf-programs"));
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&programs)
        .arg("+nightly")
        .args(["build", "--target", TARGET, "-Z", "build-std=core"])
        .env("CARGO_TARGET_DIR", &target_dir)
        // The outer `cargo xtask` sets these for the stable toolchain; the nightly build must
        // not inherit them.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO");
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo +nightly build")?;
    if !status.success() {
        bail!("building ebpf/programs failed ({status})");
    }
    let profile = if release { "release" } else { "debug" };
    let built = target_dir.join(TARGET).join(profile).join("sluice-ebpf");
    let out = object_path(&root);
    std::fs::create_dir_all(out.parent().expect("has a parent"))?;
    std::fs::copy(&built, &out)
        .with_context(|| format!("copying {} to {}", built.display(), out.display()))?;
    println!("eBPF object: {}", out.display());
    Ok(())
}

/// Where the kernel object goes (and where the loader looks by default).
pub fn object_path(root: &Path) -> PathBuf {
    root.join("target/bpf/sluice.bpf.o")
}

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

fn ensure_toolchain(install: bool) -> Result<()> {
    let sysroot = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .context("running rustc +nightly (is the nightly toolchain installed?)")?;
    if !sysroot.status.success() {
        bail!(
            "no nightly toolchain: install it with `rustup toolchain install nightly` ({})",
            String::from_utf8_lossy(&sysroot.stderr).trim()
        );
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        if !install {
            bail!("rust-src is missing: rustup component add rust-src --toolchain nightly");
        }
        run_cmd(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
        .unwrap_or(false);
    if !linker_ok {
        if !install {
            bail!(
                "bpf-linker {BPF_LINKER_VERSION} is missing: \
                 cargo +nightly install bpf-linker@{BPF_LINKER_VERSION} --locked"
            );
        }
        run_cmd(
            Command::new("cargo")
                .args(["+nightly", "install"])
                .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
                .arg("--locked")
                .env_remove("RUSTUP_TOOLCHAIN")
                .env_remove("CARGO"),
        )?;
    }
    Ok(())
}

fn run_cmd(cmd: &mut Command) -> Result<()> {
    eprintln!("running {cmd:?}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
