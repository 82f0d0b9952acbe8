//! The `sluice` binary: standalone gateway, quickstart, echo backend, conformance runner.

mod quickstart;
mod standalone;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

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
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Standalone(args) => standalone::main(args),
        Command::Quickstart(args) => quickstart::main(args),
        Command::Echo(args) => runtime()?.block_on(echo(args)),
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
