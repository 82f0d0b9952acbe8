//! The `sluice` binary: standalone gateway, quickstart, echo backend, conformance runner.

mod cluster;
mod datapath;
mod quickstart;
mod standalone;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

// The proxy allocates per request (header maps, bodies, futures) and the translator per object;
// mimalloc serves both faster than glibc's allocator (figures in benches/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_decommits` in mimalloc 3's `mi_option_e` (libmimalloc-sys names only the
/// older options).
const MI_OPTION_PURGE_DECOMMITS: libmimalloc_sys::mi_option_t = 5;

/// Memory mimalloc purges is handed back with `MADV_FREE` instead of `MADV_DONTNEED`: the kernel
/// still takes it under memory pressure, but the next configuration reload reuses it without a
/// page fault and zeroing per page (at 10,000 routes that was a quarter of a reload's time).
/// `MIMALLOC_PURGE_DECOMMITS=1` in the environment keeps mimalloc's default (resident memory
/// drops at once, as `top` shows it).
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DECOMMITS").is_some() {
        return;
    }
    // SAFETY: mi_option_set only stores a value in mimalloc's option table (atomically); the
    // option index is checked by `allocator_option_index_is_purge_decommits` below.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DECOMMITS, 0);
    }
}

/// The proxy's [`sluice_proxy::ProxyOptions::release_memory`]: after idle connections were
/// parked, mimalloc returns the memory their buffers used at once, with `MADV_DONTNEED` for this
/// collection (so resident memory drops after a burst of connections) whatever purges use
/// otherwise.
pub(crate) fn release_memory() {
    // SAFETY: mi_option_get and mi_option_set read and store one entry of mimalloc's option
    // table; mi_collect frees and purges the calling thread's unused pages and has no
    // preconditions.
    #[allow(unsafe_code)]
    unsafe {
        let decommits = libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DECOMMITS);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DECOMMITS, 1);
        libmimalloc_sys::mi_collect(true);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DECOMMITS, decommits);
    }
}

/// Sluice: a Kubernetes gateway and service load balancer.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, long_about = None)]
struct Cli {
    /// Log format: human-readable text or one JSON object per line. Filter with RUST_LOG.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the Gateway API and Ingress objects found in a directory of YAML files, reloading
    /// on every change.
    Standalone(standalone::Args),
    /// Start example backends and a gateway on examples/quickstart and print curl lines to try.
    Quickstart(quickstart::Args),
    /// Run the conformance-compatible echo backend.
    Echo(EchoArgs),
    /// Run the cluster controller (watches Kubernetes, streams snapshots to the agents).
    Controller(cluster::ControllerArgs),
    /// Run a node agent or dedicated Gateway proxy fed by the controller.
    Agent(cluster::AgentArgs),
    /// Print the cluster manifests (CRDs, controller, agents, RBAC, GatewayClasses) as YAML.
    Install(cluster::InstallArgs),
    /// Run the Gateway API conformance suite against this binary in standalone mode.
    Conformance(ConformanceArgs),
}

#[derive(Debug, clap::Args)]
struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Pod name reported in responses (env POD_NAME).
    #[arg(long, env = "POD_NAME", default_value = "")]
    pod: String,
    /// Namespace reported in responses (env NAMESPACE).
    #[arg(long, env = "NAMESPACE", default_value = "")]
    namespace: String,
}

#[derive(Debug, clap::Args)]
struct ConformanceArgs {
    /// Write the ConformanceReport (YAML) here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Run only these tests (upstream ShortNames).
    #[arg(long, num_args = 1..)]
    only: Vec<String>,
    /// The conformance material (default: ../shared/conformance beside the repository).
    #[arg(long)]
    shared: Option<PathBuf>,
    /// Fail when a test listed in this file does not pass (default:
    /// conformance/expected-pass.txt of the repository).
    #[arg(long)]
    expected_pass: Option<PathBuf>,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The repository this binary was built from (for default paths of examples and conformance).
pub(crate) fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn main() -> Result<()> {
    tune_allocator();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Standalone(args) => standalone::main(args),
        Command::Quickstart(args) => quickstart::main(args),
        Command::Echo(args) => runtime()?.block_on(echo(args)),
        Command::Controller(args) => cluster::controller(args),
        Command::Agent(args) => cluster::agent(args),
        Command::Install(args) => cluster::install(args),
        Command::Conformance(args) => runtime()?.block_on(conformance(args)),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

async fn echo(args: EchoArgs) -> Result<()> {
    let cfg = sluice_conformance::echo::EchoConfig::http(args.listen, &args.pod, &args.namespace);
    sluice_conformance::echo::serve(cfg).await
}

async fn conformance(args: ConformanceArgs) -> Result<()> {
    let repo = repo_dir();
    let opts = sluice_conformance::RunOptions {
        report: args.report,
        only: args.only,
        shared_dir: args
            .shared
            .unwrap_or_else(|| repo.join("../shared/conformance")),
        sluice_bin: std::env::current_exe()?,
        expected_pass: Some(
            args.expected_pass
                .unwrap_or_else(|| repo.join("conformance/expected-pass.txt")),
        ),
        features: repo.join("conformance/features.yaml"),
        ..Default::default()
    };
    let summary = sluice_conformance::run(opts).await?;
    if !summary.ok() {
        for (test, outcome) in &summary.regressions {
            eprintln!("regression: {test}: {outcome}");
        }
        anyhow::bail!(
            "{} conformance test(s) listed in expected-pass.txt did not pass",
            summary.regressions.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// mimalloc reads `MIMALLOC_PURGE_DECOMMITS` when the process loads, so a child test process
    /// started with it set sees that value at [`super::MI_OPTION_PURGE_DECOMMITS`] if the index
    /// names that option.
    #[test]
    fn allocator_option_index_is_purge_decommits() {
        #[allow(unsafe_code)]
        // SAFETY: reads an entry of mimalloc's option table.
        let value = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DECOMMITS) };
        if std::env::var_os("MIMALLOC_PURGE_DECOMMITS").is_some() {
            assert_eq!(value, 7, "the index names another mimalloc option");
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tests::allocator_option_index_is_purge_decommits",
            ])
            .env("MIMALLOC_PURGE_DECOMMITS", "7")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}"
        );
    }
}
