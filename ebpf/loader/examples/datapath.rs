//! Runs the eBPF datapath from an IR snapshot (JSON), printing flow events.
//!
//! ```text
//! cargo xtask ebpf
//! sudo target/debug/examples/datapath --snapshot ebpf/loader/examples/snapshot.json \
//!     [--cgroup /sys/fs/cgroup/unified/sluice] [--iface eth0] [--netns /var/run/netns/node] \
//!     [--pin-dir /sys/fs/bpf/sluice] [--local-cidr 10.0.1.0/24] [--maglev-table-size 16381] \
//!     [--proxy ADDR=LISTEN] [--seconds N] [--keep] [--quiet]
//! ```
//! `--proxy 127.0.0.1:15001=127.0.0.1:15001` binds a TCP listener at LISTEN and registers it
//! for ADDR (an L7 redirect or listener address). Without `--keep`, everything is detached on
//! exit; with it, programs and maps stay pinned for the next run to adopt. `--quiet` counts
//! flow events without printing them.

use anyhow::{Context, Result, bail};
use sluice_ebpf_loader::{Datapath, DatapathOptions, FlowMetrics};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut opts = DatapathOptions::default();
    let mut snapshot: Option<PathBuf> = None;
    let mut seconds: Option<u64> = None;
    let mut keep = false;
    let mut quiet = false;
    let mut proxies: Vec<(SocketAddr, SocketAddr)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--snapshot" => snapshot = Some(val()?.into()),
            "--object" => opts.object = val()?.into(),
            "--cgroup" => opts.cgroup = val()?.into(),
            "--iface" => opts.iface = Some(val()?),
            "--netns" => opts.netns = Some(val()?.into()),
            "--pin-dir" => opts.pin_dir = val()?.into(),
            "--local-cidr" => opts.local_cidrs.push(val()?.parse()?),
            "--maglev-table-size" => opts.maglev_table_size = val()?.parse()?,
            "--maglev-tables" => opts.maglev_tables = val()?.parse()?,
            "--no-sockmap" => opts.sockmap = false,
            "--no-socket-lb" => opts.socket_lb = false,
            "--proxy" => {
                let v = val()?;
                let (addr, listen) = v.split_once('=').context("--proxy ADDR=LISTEN")?;
                proxies.push((addr.parse()?, listen.parse()?));
            }
            "--seconds" => seconds = Some(val()?.parse()?),
            "--keep" => keep = true,
            "--quiet" => quiet = true,
            other => bail!("unknown argument {other}"),
        }
    }
    let snapshot = snapshot.context("--snapshot FILE is required")?;
    let text = std::fs::read_to_string(&snapshot)
        .with_context(|| format!("reading {}", snapshot.display()))?;
    let snap: sluice_ir::Snapshot = serde_json::from_str(&text)
        .with_context(|| format!("parsing {} as an IR snapshot", snapshot.display()))?;

    let mut dp = Datapath::load(opts)?;
    let report = dp.sync(&snap)?;
    println!("synced: {report}");
    for w in &report.warnings {
        println!("warning: {w}");
    }
    let mut listeners = Vec::new();
    for (addr, listen) in proxies {
        let l = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
        dp.register_proxy_listener(addr, &l)?;
        println!("proxy socket {listen} registered for {addr}");
        listeners.push(l);
    }
    let metrics = FlowMetrics::new();
    let mut events = dp.flow_events()?;
    let start = Instant::now();
    let stop = |s: &Instant| seconds.is_some_and(|n| s.elapsed() >= Duration::from_secs(n));
    while !stop(&start) {
        events.read(Duration::from_millis(200), |r| {
            metrics.observe(&r);
            if quiet {
                return;
            }
            println!(
                "{:<18} {:<10} {:<4} {} -> {} => {} {}",
                r.kind.as_str(),
                r.verdict.as_str(),
                r.protocol,
                r.source
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.destination,
                r.translated
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.service.unwrap_or_default()
            );
        })?;
    }
    println!("counters: {:?}", dp.counters()?);
    if keep {
        println!(
            "keeping programs and maps pinned under {}",
            dp.maps_dir().display()
        );
        drop(dp);
    } else {
        dp.detach()?;
        println!("detached");
    }
    Ok(())
}
