//! `--ebpf`: the kernel datapath next to the proxy. Loads the programs, syncs the maps after
//! every applied snapshot, feeds the flow-event metrics, detaches on shutdown.

use anyhow::{Context, Result};
use sluice_ebpf_loader::{Datapath, DatapathOptions, FlowMetrics};
use sluice_ir::Snapshot;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The `--ebpf` options, shared by `sluice standalone` and `sluice agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct DatapathArgs {
    /// Load the eBPF datapath: Service load balancing in the kernel, L7 steering to the proxy
    /// (needs root and the kernel object from `cargo xtask ebpf`).
    #[arg(long)]
    pub ebpf: bool,
    /// cgroup v2 directory the socket-level load balancer attaches to (default: the node's).
    #[arg(long, requires = "ebpf")]
    pub cgroup: Option<PathBuf>,
    /// Node interface for the tc load balancer (NodePort, external IPs).
    #[arg(long, requires = "ebpf")]
    pub iface: Option<String>,
    /// bpffs directory where the datapath pins its maps and links.
    #[arg(long, requires = "ebpf", default_value = "/sys/fs/bpf/sluice")]
    pub pin_dir: PathBuf,
}

/// The loaded datapath and its metrics reader.
pub struct KernelDatapath {
    dp: Datapath,
    metrics: FlowMetrics,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl KernelDatapath {
    /// Loads and attaches the programs (cgroup: `cgroup`, or the whole node; tc on `iface`).
    pub fn load(args: &DatapathArgs) -> Result<Self> {
        let mut opts = DatapathOptions {
            iface: args.iface.clone(),
            pin_dir: args.pin_dir.clone(),
            ..DatapathOptions::default()
        };
        if let Some(c) = &args.cgroup {
            opts.cgroup = c.clone();
        }
        let (object, cgroup) = (opts.object.clone(), opts.cgroup.clone());
        let mut dp = Datapath::load(opts).context("--ebpf")?;
        let metrics = FlowMetrics::new();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = match dp.flow_events() {
            Ok(events) => {
                // The kernel counters are published as they change, not only at each sync.
                let counters = dp
                    .counter_reader()
                    .inspect_err(|e| tracing::warn!(error = %e, "datapath counters will refresh only when the configuration changes"))
                    .ok();
                Some(events.spawn_metrics(metrics.clone(), counters, stop.clone()))
            }
            Err(e) => {
                tracing::warn!(error = %e, "flow events unavailable; datapath metrics will only show kernel counters");
                None
            }
        };
        tracing::info!(object = %object.display(), cgroup = %cgroup.display(), "eBPF datapath attached");
        Ok(KernelDatapath {
            dp,
            metrics,
            stop,
            reader,
        })
    }

    /// The metrics to register on the admin API's registry.
    pub fn metrics(&self) -> FlowMetrics {
        self.metrics.clone()
    }

    /// Projects the snapshot onto the maps. Errors are logged: the maps keep their last good
    /// content (the loader flips each service only once its new backends and table are in).
    pub fn sync(&mut self, snapshot: &Snapshot) {
        match self.dp.sync(snapshot) {
            Ok(report) => {
                tracing::info!(%report, "eBPF datapath synced");
                for w in &report.warnings {
                    tracing::warn!(warning = %w, "eBPF datapath: not projected");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "eBPF datapath sync failed; the kernel keeps the previous state")
            }
        }
        match self.dp.counters() {
            Ok(c) => self.metrics.set_counters(&c),
            Err(e) => tracing::debug!(error = %e, "reading datapath counters"),
        }
    }

    fn stop_reader(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }

    /// Stops reading events but leaves the programs attached and the maps pinned, so traffic
    /// keeps flowing until the next agent adopts them.
    pub fn leave_attached(mut self) {
        self.stop_reader();
        tracing::info!("eBPF datapath left attached for the next agent");
    }

    /// Detaches every program and removes the pinned state.
    pub fn detach(mut self) {
        self.stop_reader();
        match self.dp.detach() {
            Ok(()) => tracing::info!("eBPF datapath detached"),
            Err(e) => tracing::error!(error = %e, "detaching the eBPF datapath"),
        }
    }
}
