//! Sluice's developer tasks: `cargo xtask test|ebpf|bench|codegen`.

mod bench;
mod ebpf;
mod test;

use anyhow::{Result, bail};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    match cmd.as_str() {
        "ebpf" => ebpf::run(&rest),
        "test" => test::main(&rest),
        "bench" => bench::main(&rest),
        _ => bail!("usage: cargo xtask <test|ebpf|bench|codegen> [ARGS]"),
    }
}
