//! `cargo xtask ebpf`: builds the kernel programs (ebpf/programs) with the nightly toolchain.

use anyhow::{Result, bail};

/// Entry point of `cargo xtask ebpf [ARGS]`.
pub fn run(_args: &[String]) -> Result<()> {
    bail!("the eBPF build is not implemented yet")
}
