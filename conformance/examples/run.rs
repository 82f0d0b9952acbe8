//! Runs the conformance suite from the repository root without the `sluice` binary's CLI:
//! `cargo run -p sluice-conformance --example run -- [--report FILE] [--only TEST...]`
//! (the gateway binary comes from `SLUICE_BIN`).

fn main() -> anyhow::Result<()> {
    let mut opts = sluice_conformance::RunOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--report" => opts.report = args.next().map(Into::into),
            "--only" => opts.only.extend(args.next()),
            "--work-dir" => opts.work_dir = args.next().map(Into::into),
            "--features" => opts.features = args.next().map(Into::into).unwrap_or(opts.features),
            other => opts.only.push(other.to_string()),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let summary = rt.block_on(sluice_conformance::run(opts))?;
    if !summary.ok() {
        std::process::exit(1);
    }
    Ok(())
}
