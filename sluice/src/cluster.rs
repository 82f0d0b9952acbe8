//! `sluice controller`, `sluice agent` and `sluice install`: Sluice in a Kubernetes cluster.
//!
//! The agent is the standalone pipeline with snapshots from the controller instead of a
//! translation: apply to the proxy, fold listener bind errors into the status the controller
//! sent, serve both on the admin API, keep serving the last snapshot while the controller is
//! away.

use crate::datapath::KernelDatapath;
use anyhow::{Context, Result};
use ipnet::IpNet;
use sluice_controller::install::{InstallMode, InstallOptions};
use sluice_controller::provider::kubernetes::ControllerOptions;
use sluice_controller::provider::kubernetes::controller::run_in_cluster;
use sluice_controller::publish::agent::{self, AgentOptions, Applied, SnapshotSink};
use sluice_controller::publish::tls::CertKey;
use sluice_controller::status::programmed::mark_listener_errors;
use sluice_ir::Snapshot;
use sluice_ir::status::StatusReport;
use sluice_proxy::{Proxy, ProxyOptions, admin};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `sluice controller` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// Namespace the controller runs in (Lease, CA and agent certificate Secrets).
    #[arg(long, env = "POD_NAMESPACE", default_value = "sluice-system")]
    pub namespace: String,
    /// This replica's identity in the leader election (default: the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Addresses handed to Gateways of shared classes (must be routed to the nodes).
    #[arg(long, default_value = "10.255.0.0/24")]
    pub address_pool: IpNet,
    /// Where the snapshot stream listens while this replica leads.
    #[arg(long, default_value = "0.0.0.0:9902")]
    pub stream_listen: SocketAddr,
    /// Image of the proxies of dedicated Gateways.
    #[arg(long, default_value = concat!("ghcr.io/sluice-dev/sluice:", env!("CARGO_PKG_VERSION")))]
    pub proxy_image: String,
}

/// `sluice agent` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// The controller's snapshot stream.
    #[arg(
        long,
        default_value = "https://sluice-controller.sluice-system.svc:9902"
    )]
    pub controller: String,
    /// Directory with ca.crt (the stream CA), tls.crt and tls.key (this agent's certificate).
    #[arg(long, default_value = "/etc/sluice/tls")]
    pub tls_dir: PathBuf,
    /// Name the controller's certificate must carry (default: the host of --controller).
    #[arg(long)]
    pub server_name: Option<String>,
    /// Admin API address (/ready, /config_dump, /status, /metrics).
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// Proxy worker threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Node or pod name reported to the controller.
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node: String,
    /// The eBPF datapath; the agent leaves it attached across its restarts.
    #[command(flatten)]
    pub datapath: crate::datapath::DatapathArgs,
}

/// `sluice install` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct InstallArgs {
    /// Data plane of the default GatewayClass `sluice` (`sluice-dedicated` is always dedicated).
    #[arg(long, value_enum, default_value_t = Mode::Shared)]
    pub mode: Mode,
    /// Namespace of the controller and agents.
    #[arg(long, default_value = "sluice-system")]
    pub namespace: String,
    /// The Sluice image.
    #[arg(long, default_value = concat!("ghcr.io/sluice-dev/sluice:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// Addresses for shared Gateways.
    #[arg(long, default_value = "10.255.0.0/24")]
    pub address_pool: IpNet,
    /// Print only the Gateway API CRDs (apply them first, then everything).
    #[arg(long, conflicts_with = "skip_crds")]
    pub crds_only: bool,
    /// Leave the Gateway API CRDs out (they are installed already).
    #[arg(long)]
    pub skip_crds: bool,
}

/// `--mode`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Mode {
    /// Node agents serve every Gateway of the class.
    Shared,
    /// One proxy Deployment and LoadBalancer Service per Gateway.
    Dedicated,
}

pub fn install(args: InstallArgs) -> Result<()> {
    let opts = InstallOptions {
        namespace: args.namespace,
        mode: match args.mode {
            Mode::Shared => InstallMode::Shared,
            Mode::Dedicated => InstallMode::Dedicated,
        },
        image: args.image,
        address_pool: args.address_pool.to_string(),
        crds: !args.skip_crds,
        ..Default::default()
    };
    let objects = if args.crds_only {
        sluice_controller::install::crds()
    } else {
        sluice_controller::install::objects(&opts)
    };
    print!("{}", sluice_controller::install::render(&objects));
    Ok(())
}

pub fn controller(args: ControllerArgs) -> Result<()> {
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| format!("sluice-controller-{}", std::process::id()))
    });
    let mut opts = ControllerOptions::new(&args.namespace, &identity);
    opts.translate.address_pool = crate::standalone::pool_addresses(&args.address_pool);
    opts.stream_listen = args.stream_listen;
    opts.provision.image = args.proxy_image.clone();
    tracing::info!(namespace = %args.namespace, %identity, pool = %args.address_pool, stream = %args.stream_listen, "sluice controller starting");
    crate::runtime()?.block_on(async move {
        run_in_cluster(opts, crate::standalone::shutdown_signal())
            .await
            .context("sluice controller")
    })
}

/// The proxy and its admin API as the agent's sink.
struct ProxySink {
    proxy: Proxy,
    admin: Arc<admin::AdminState>,
    datapath: Option<Arc<std::sync::Mutex<KernelDatapath>>>,
}

impl SnapshotSink for ProxySink {
    async fn apply(&self, snapshot: Snapshot) -> Applied {
        let r = self.proxy.apply(snapshot.clone()).await;
        if r.applied
            && let Some(dp) = &self.datapath
        {
            dp.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .sync(&snapshot);
        }
        Applied {
            applied: r.applied,
            errors: r.validation_errors.iter().map(|e| e.to_string()).collect(),
            listener_errors: r.listener_errors,
        }
    }

    fn show_status(
        &self,
        mut status: StatusReport,
        serving: &Snapshot,
        listener_errors: &BTreeMap<String, String>,
    ) {
        mark_listener_errors(&mut status, serving, listener_errors, None);
        self.admin.status.store(Arc::new(status));
    }
}

fn read(dir: &std::path::Path, file: &str) -> Result<String> {
    let p = dir.join(file);
    std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
}

pub fn agent(args: AgentArgs) -> Result<()> {
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let ca_pem = read(&args.tls_dir, "ca.crt")?;
    let identity = CertKey {
        cert_pem: read(&args.tls_dir, "tls.crt")?,
        key_pem: read(&args.tls_dir, "tls.key")?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sluice-agent")
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let proxy = Proxy::start(ProxyOptions {
            workers,
            release_memory: Some(crate::release_memory),
            ..Default::default()
        })
        .context("starting the proxy")?;
        let admin_state = admin::AdminState::new(proxy.clone());
        let listener = tokio::net::TcpListener::bind(args.admin)
            .await
            .with_context(|| format!("binding the admin API on {}", args.admin))?;
        tokio::spawn(admin::serve_listener(listener, admin_state.clone()));
        let node = if args.node.is_empty() {
            std::fs::read_to_string("/etc/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        } else {
            args.node.clone()
        };
        tracing::info!(controller = %args.controller, admin = %args.admin, %node, workers, "sluice agent starting");
        let mut opts = AgentOptions::new(&args.controller, &ca_pem, identity, &node);
        opts.server_name = args.server_name.clone();
        let datapath = if args.datapath.ebpf {
            let dp = KernelDatapath::load(&args.datapath)?;
            admin_state.register_metrics(|registry| dp.metrics().register(registry));
            Some(Arc::new(std::sync::Mutex::new(dp)))
        } else {
            None
        };
        let sink = ProxySink {
            proxy: proxy.clone(),
            admin: admin_state.clone(),
            datapath: datapath.clone(),
        };
        agent::run(opts, sink, crate::standalone::shutdown_signal()).await;
        tracing::info!("shutting down: draining connections");
        admin_state
            .not_ready
            .store(true, std::sync::atomic::Ordering::Release);
        proxy.shutdown(Duration::from_secs(5)).await;
        if let Some(dp) = datapath.and_then(Arc::into_inner) {
            dp.into_inner()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .leave_attached();
        }
        Ok(())
    })
}
