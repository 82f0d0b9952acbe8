//! `sluice quickstart`: echo backends for every loopback endpoint of examples/quickstart, the
//! standalone gateway on that directory, and curl lines that work.

use crate::standalone;
use anyhow::{Context, Result};
use sluice_controller::provider::file::FileProvider;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `sluice quickstart` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The example directory (default: examples/quickstart of this repository, or a built-in
    /// copy when that is not there).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Admin API address.
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// Addresses for the Gateways (see `sluice standalone --address-pool`).
    #[arg(long, default_value = "127.0.0.1/32")]
    pub address_pool: ipnet::IpNet,
}

/// The built-in copy of examples/quickstart.
const EMBEDDED: &[(&str, &str)] = &[
    (
        "gateway.yaml",
        include_str!("../../examples/quickstart/gateway.yaml"),
    ),
    (
        "routes.yaml",
        include_str!("../../examples/quickstart/routes.yaml"),
    ),
    (
        "backends.yaml",
        include_str!("../../examples/quickstart/backends.yaml"),
    ),
    (
        "curl.txt",
        include_str!("../../examples/quickstart/curl.txt"),
    ),
];

fn example_dir(arg: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(d) = arg {
        return Ok(d);
    }
    let in_repo = crate::repo_dir().join("examples/quickstart");
    if in_repo.is_dir() {
        return Ok(in_repo);
    }
    let dir = std::env::temp_dir().join(format!("sluice-quickstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for (name, text) in EMBEDDED {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(dir)
}

/// Every loopback endpoint of the directory's EndpointSlices: (address, pod name, namespace).
fn loopback_endpoints(dir: &Path) -> Result<Vec<(SocketAddr, String, String)>> {
    let mut provider = FileProvider::new(dir);
    let res = provider.load()?;
    for e in &res.errors {
        tracing::warn!(error = %e, "example configuration error");
    }
    let mut out = Vec::new();
    for (key, slice) in &res.endpoint_slices {
        for port in slice.ports.iter().flatten() {
            let Some(p) = port.port else { continue };
            for (i, ep) in slice.endpoints.iter().enumerate() {
                for addr in &ep.addresses {
                    let Ok(ip) = addr.parse::<IpAddr>() else {
                        continue;
                    };
                    if !ip.is_loopback() {
                        continue;
                    }
                    let pod = ep
                        .target_ref
                        .as_ref()
                        .and_then(|t| t.name.clone())
                        .unwrap_or_else(|| format!("{}-{i}", key.name));
                    out.push((SocketAddr::new(ip, p as u16), pod, key.namespace.clone()));
                }
            }
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    Ok(out)
}

/// GET `path` on the admin API; the status code, if it answered.
async fn admin_get(admin: SocketAddr, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1)?.parse().ok()
}

pub fn main(args: Args) -> Result<()> {
    let dir = example_dir(args.dir)?;
    let endpoints = loopback_endpoints(&dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        for (addr, pod, namespace) in endpoints {
            let cfg = sluice_conformance::echo::EchoConfig::http(addr, &pod, &namespace);
            // Bind errors surface right away: the gateway would only answer 502 otherwise.
            let running = sluice_conformance::echo::start(cfg)
                .await
                .with_context(|| format!("example backend {pod} on {addr}"))?;
            tracing::info!(%pod, %addr, "example backend listening");
            tokio::spawn(async move {
                if let Err(e) = running.wait().await {
                    tracing::error!(%pod, error = %e, "example backend stopped");
                }
            });
        }
        let sargs = standalone::Args {
            dir: dir.clone(),
            admin: args.admin,
            address_pool: args.address_pool,
            workers: Some(1),
            datapath: crate::datapath::DatapathArgs {
                ebpf: false,
                cgroup: None,
                iface: None,
                pin_dir: PathBuf::new(),
            },
        };
        let admin = args.admin;
        let gateway = tokio::spawn(standalone::run(sargs, standalone::shutdown_signal()));
        let mut ready = false;
        for _ in 0..100 {
            if gateway.is_finished() {
                break;
            }
            if admin_get(admin, "/ready").await == Some(200) {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if ready {
            print_instructions(&dir, admin);
        }
        gateway.await?
    })
}

fn print_instructions(dir: &Path, admin: SocketAddr) {
    println!(
        "\nSluice is serving {} (edit the files: changes apply live).\n",
        dir.display()
    );
    match std::fs::read_to_string(dir.join("curl.txt")) {
        Ok(text) => {
            for line in text.lines() {
                println!("  {}", line.replace("ADMIN", &admin.to_string()));
            }
        }
        Err(_) => println!("  curl -s http://{admin}/status"),
    }
    println!("\nPress Ctrl-C to stop.");
}
