//! Serves an IR snapshot JSON file with the Sluice proxy until Ctrl-C.
//!
//! `cargo run --release -p sluice-proxy --example serve -- SNAPSHOT.json [--workers N] [--admin ADDR]`

use sluice_proxy::{Proxy, ProxyOptions, admin};

// The proxy allocates per request (headers, buffers); mimalloc serves that faster than glibc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let mut file = None;
    let mut opts = ProxyOptions::default();
    let mut admin_addr = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--workers" => opts.workers = args.next().ok_or("--workers N")?.parse()?,
            "--header-timeout-ms" => {
                let ms: u64 = args.next().ok_or("--header-timeout-ms MS")?.parse()?;
                opts.header_read_timeout = (ms > 0).then(|| Duration::from_millis(ms));
            }
            "--admin" => admin_addr = Some(args.next().ok_or("--admin ADDR")?.parse()?),
            "-h" | "--help" => {
                println!(
                    "serve SNAPSHOT.json [--workers N] [--admin ADDR] [--header-timeout-ms MS]"
                );
                return Ok(());
            }
            f => file = Some(f.to_string()),
        }
    }
    let file = file.ok_or(
        "usage: serve SNAPSHOT.json [--workers N] [--admin ADDR] [--header-timeout-ms MS]",
    )?;
    let snapshot: sluice_ir::Snapshot = serde_json::from_slice(&std::fs::read(&file)?)?;
    // The control plane needs little: one thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let proxy = Proxy::start(opts)?;
        let report = proxy.apply(snapshot).await;
        if !report.applied {
            for e in &report.validation_errors {
                eprintln!("{file}: {e}");
            }
            return Err("snapshot rejected".into());
        }
        for (l, e) in &report.listener_errors {
            eprintln!("listener {l}: {e}");
        }
        if let Some(addr) = admin_addr {
            tokio::spawn(admin::serve(addr, admin::AdminState::new(proxy.clone())));
        }
        tokio::signal::ctrl_c().await?;
        proxy.shutdown(Duration::from_secs(5)).await;
        Ok(())
    })
}
