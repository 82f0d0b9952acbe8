//! `sluice standalone DIR`: the file provider, the translator and the proxy in one process.
//!
//! Loop: load the directory (changed files only; a bad file keeps its last good version) ->
//! translate -> apply to the proxy when the snapshot changed -> fold the proxy's listener
//! errors into the status -> publish the status on the admin API and log what turned bad.

use anyhow::{Context, Result};
use ipnet::IpNet;
use sluice_controller::provider::file::{FileProvider, watch};
use sluice_controller::status::programmed::mark_listener_errors;
use sluice_controller::{TranslateOptions, translate};
use sluice_ir::Snapshot;
use sluice_ir::status::{Condition, ConditionStatus, StatusReport};
use sluice_proxy::{ApplyReport, Proxy, ProxyOptions, admin};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `sluice standalone` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Directory of Kubernetes YAML manifests (searched recursively for *.yaml and *.yml).
    pub dir: PathBuf,
    /// Admin API address (/ready, /config_dump, /status, /metrics).
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// Addresses for Gateways without spec.addresses; each Gateway gets a stable one. The default
    /// shares 127.0.0.1 between all Gateways.
    #[arg(long, default_value = "127.0.0.1/32")]
    pub address_pool: IpNet,
    /// Proxy worker threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// The eBPF datapath; detached again on shutdown.
    #[command(flatten)]
    pub datapath: crate::datapath::DatapathArgs,
}

/// How long the directory must be quiet before a reload: after a file may have been left
/// half-written, after a change finished (closed after writing, renamed, removed: this only
/// gathers the rest of a multi-file change), and the longest a reload waits.
const DEBOUNCE_QUIET: Duration = Duration::from_millis(15);
const DEBOUNCE_SETTLED: Duration = Duration::from_millis(5);
const DEBOUNCE_MAX: Duration = Duration::from_millis(150);
/// Retry period for listeners that could not bind.
const BIND_RETRY: Duration = Duration::from_secs(2);

/// Expands the pool into usable host addresses (at most 65,536).
pub fn pool_addresses(pool: &IpNet) -> Vec<IpAddr> {
    let hosts: Vec<IpAddr> = pool.hosts().take(65_536).collect();
    if hosts.is_empty() {
        vec![pool.addr()]
    } else {
        hosts
    }
}

pub fn main(args: Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sluice-control")
        .enable_all()
        .build()?;
    rt.block_on(run(args, shutdown_signal()))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Runs the standalone gateway until `shutdown` resolves.
pub async fn run(args: Args, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let dir = args.dir.clone();
    anyhow::ensure!(dir.is_dir(), "{} is not a directory", dir.display());
    let options = TranslateOptions {
        address_pool: pool_addresses(&args.address_pool),
        ..Default::default()
    };
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let proxy = Proxy::start(ProxyOptions {
        workers,
        release_memory: Some(crate::release_memory),
        ..Default::default()
    })
    .context("starting the proxy")?;
    let admin_state = admin::AdminState::new(proxy.clone());
    let admin_listener = tokio::net::TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("binding the admin API on {}", args.admin))?;
    tokio::spawn(admin::serve_listener(admin_listener, admin_state.clone()));
    tracing::info!(dir = %dir.display(), admin = %args.admin, pool = %args.address_pool, workers, "sluice standalone starting");
    let mut pipeline = Pipeline::default();
    if args.datapath.ebpf {
        let dp = crate::datapath::KernelDatapath::load(&args.datapath)?;
        admin_state.register_metrics(|registry| dp.metrics().register(registry));
        pipeline.datapath = Some(dp);
    }

    let mut changes = watch(&dir, DEBOUNCE_QUIET, DEBOUNCE_SETTLED, DEBOUNCE_MAX)
        .with_context(|| format!("watching {}", dir.display()))?;
    let mut provider = FileProvider::new(&dir);
    tokio::pin!(shutdown);
    loop {
        let started = Instant::now();
        let retry = pipeline
            .reload(&mut provider, &options, &proxy, &admin_state)
            .await;
        tracing::debug!(
            took_ms = started.elapsed().as_millis() as u64,
            "reload done"
        );
        let retry_in = if retry { BIND_RETRY } else { Duration::MAX };
        tokio::select! {
            changed = changes.recv() => {
                if changed.is_none() {
                    anyhow::bail!("the file watcher of {} stopped", dir.display());
                }
            }
            _ = tokio::time::sleep(retry_in) => {}
            _ = &mut shutdown => break,
        }
    }
    tracing::info!("shutting down: draining connections");
    admin_state
        .not_ready
        .store(true, std::sync::atomic::Ordering::Release);
    proxy.shutdown(Duration::from_secs(5)).await;
    if let Some(dp) = pipeline.datapath.take() {
        dp.detach();
    }
    Ok(())
}

/// The state kept between reloads.
#[derive(Default)]
struct Pipeline {
    applied: Option<Arc<Snapshot>>,
    version: u64,
    listener_errors: BTreeMap<String, String>,
    previous_status: Arc<StatusReport>,
    datapath: Option<crate::datapath::KernelDatapath>,
}

impl Pipeline {
    /// One load-translate-apply round; returns true when some listener should be retried.
    async fn reload(
        &mut self,
        provider: &mut FileProvider,
        options: &TranslateOptions,
        proxy: &Proxy,
        admin_state: &admin::AdminState,
    ) -> bool {
        let started = Instant::now();
        if let Err(e) = provider.load() {
            tracing::error!(error = %e, "cannot read the configuration directory; the last good configuration keeps serving");
            return true;
        }
        let load_ms = ms(started);
        if !provider.changed() && self.applied.is_some() && self.listener_errors.is_empty() {
            // Nothing on disk differs (an editor's temporary file, a touch): the snapshot
            // and status that serve are still right.
            return false;
        }
        let resources = provider.resources();
        let started = Instant::now();
        let translation = translate(resources, options);
        let translate_ms = ms(started);
        let mut snapshot = translation.snapshot;
        let mut status = translation.status;

        // Compare with what serves (its version aside) instead of keeping a second copy.
        let unchanged = self.applied.as_ref().is_some_and(|a| {
            snapshot.version = a.version;
            **a == snapshot
        });
        if !unchanged || !self.listener_errors.is_empty() {
            self.version += 1;
            snapshot.version = self.version;
            let (listeners, clusters) = (snapshot.listeners.len(), snapshot.clusters.len());
            let started = Instant::now();
            let report: ApplyReport = proxy.apply(snapshot).await;
            let apply_ms = ms(started);
            if report.applied {
                tracing::info!(
                    version = self.version,
                    listeners,
                    clusters,
                    objects = resources.len(),
                    load_ms,
                    translate_ms,
                    apply_ms,
                    "configuration applied"
                );
                let serving = proxy.snapshot();
                if let Some(dp) = &mut self.datapath {
                    dp.sync(&serving);
                }
                self.applied = Some(serving);
                self.listener_errors = report.listener_errors;
            } else {
                // A translator bug (it must never emit an invalid snapshot): keep serving the
                // last good one and say exactly what was wrong.
                for e in &report.validation_errors {
                    tracing::error!(error = %e, "internal error: the translated configuration is invalid; the last good configuration keeps serving");
                }
            }
        }
        if let Some(applied) = &self.applied {
            let retrying: BTreeMap<String, String> = self
                .listener_errors
                .iter()
                .map(|(l, e)| {
                    (
                        l.clone(),
                        format!("{e}; retrying every {}s", BIND_RETRY.as_secs()),
                    )
                })
                .collect();
            mark_listener_errors(&mut status, applied, &retrying, None);
        }
        log_status_changes(&self.previous_status, &status);
        let status = Arc::new(status);
        admin_state.status.store(status.clone());
        self.previous_status = status;
        !self.listener_errors.is_empty()
    }
}

/// Milliseconds since `t`, rounded to 0.1.
fn ms(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e4).round() / 10.0
}

/// True when a condition reports a problem: `Conflicted` is bad when True, every other
/// Gateway API condition when False.
fn is_problem(c: &Condition) -> bool {
    match c.type_.as_str() {
        "Conflicted" => c.status == ConditionStatus::True,
        _ => c.status == ConditionStatus::False,
    }
}

/// Logs every condition that turned into a problem (and load errors that are new), once.
fn log_status_changes(previous: &StatusReport, current: &StatusReport) {
    for e in &current.errors {
        if !previous.errors.contains(e) {
            tracing::warn!(error = %e, "configuration error");
        }
    }
    for r in &current.resources {
        let before = previous.get(&r.object.kind, &r.object.namespace, &r.object.name);
        let report = |scope: String, c: &Condition, old: Option<&Condition>| {
            let changed = old.is_none_or(|o| o.status != c.status || o.reason != c.reason);
            if is_problem(c) && changed {
                let source = r.source.as_ref().map(|s| s.to_string()).unwrap_or_default();
                tracing::warn!(object = %r.object, %scope, condition = %c.type_, status = %c.status, reason = %c.reason, %source, "{}", c.message);
            }
        };
        for c in &r.conditions {
            let old = before.and_then(|b| b.condition(&c.type_));
            report(String::new(), c, old);
        }
        for l in &r.listeners {
            let old_l = before.and_then(|b| b.listeners.iter().find(|x| x.name == l.name));
            for c in &l.conditions {
                let old = old_l.and_then(|o| o.conditions.iter().find(|x| x.type_ == c.type_));
                report(format!("listener {}", l.name), c, old);
            }
        }
        for p in &r.parents {
            let old_p =
                before.and_then(|b| b.parents.iter().find(|x| x.parent_ref == p.parent_ref));
            for c in &p.conditions {
                let old = old_p.and_then(|o| o.conditions.iter().find(|x| x.type_ == c.type_));
                report(format!("parent {}", p.parent_ref.name), c, old);
            }
        }
    }
}
