//! The conformance echo backend: a Rust counterpart of upstream's `echo-basic` image. It answers
//! with what it received (path, host, method, protocol, headers, its pod identity) so the runner
//! can check what the gateway forwarded. Four modes: HTTP (HTTP/1.1, h2c, HTTPS), gRPC, TCP and
//! UDP.

mod grpc;
mod http;
mod l4;
pub mod proto;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::task::JoinSet;

pub use grpc::{GRPC_SERVICE, grpc_echo_client_call};
pub use http::{canonical_header_name, parse_go_duration};
pub use l4::WELCOME as TCP_WELCOME;
pub use tls::{cipher_suite_name, pem_encode_certificate, tls_version_name};

/// What an echo instance speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EchoMode {
    /// HTTP/1.1 on `listen`, h2c on `h2c_listen`, HTTPS on `tls_listen` (default).
    #[default]
    Http,
    /// gRPC (`gateway_api_conformance.echo_basic.grpcecho.GrpcEcho`) over h2c on `listen`, over
    /// TLS on `tls_listen`.
    Grpc,
    /// Line protocol over TCP on `listen` and TLS on `tls_listen`: welcome line, then
    /// `TEST`/`IS_TLS`/`PING` commands.
    Tcp,
    /// One JSON answer per datagram on `listen`.
    Udp,
}

/// TLS material of an echo instance, as PEM file paths (the way the upstream image gets them).
#[derive(Debug, Clone)]
pub struct EchoTls {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// CA bundle (PEM) used to verify client certificates when a client sends one; `None`: no
    /// client certificate is requested.
    pub client_ca: Option<PathBuf>,
}

/// One request an echo instance served, as it logs it.
#[derive(Debug, Clone)]
pub struct EchoLogEntry {
    /// When it was received.
    pub at: Instant,
    /// The request URI as received (path and query).
    pub request_uri: String,
    /// The full log line: `Echoing back request made to <URI> to client (<peer>)`.
    pub line: String,
}

/// The in-memory request log of an echo instance (what the mirror tests read instead of pod
/// logs). Cheap to clone; clones share the log.
#[derive(Debug, Clone, Default)]
pub struct EchoLog {
    entries: Arc<Mutex<Vec<EchoLogEntry>>>,
    /// Also print each line to stdout (the `sluice echo` command does; the in-process runner
    /// does not).
    print: bool,
}

impl EchoLog {
    /// A log that also prints every line on stdout.
    pub fn printing() -> Self {
        EchoLog {
            entries: Arc::default(),
            print: true,
        }
    }

    /// Records one echoed request.
    pub fn record(&self, request_uri: &str, peer: SocketAddr) {
        let line = format!("Echoing back request made to {request_uri} to client ({peer})");
        if self.print {
            println!("{line}");
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.push(EchoLogEntry {
            at: Instant::now(),
            request_uri: request_uri.to_string(),
            line,
        });
    }

    /// Every entry logged so far, oldest first.
    pub fn entries(&self) -> Vec<EchoLogEntry> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many logged requests had exactly this request URI, at or after `since`.
    pub fn count_uri_since(&self, request_uri: &str, since: Instant) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|e| e.at >= since && e.request_uri == request_uri)
            .count()
    }
}

/// Configuration of one echo instance (one "pod").
#[derive(Debug, Clone)]
pub struct EchoConfig {
    /// Main address: the HTTP port (`HTTP_PORT`, default 3000) in HTTP mode, the cleartext gRPC
    /// port in gRPC mode, `TCP_PORT` in TCP mode, `UDP_PORT` in UDP mode.
    pub listen: SocketAddr,
    /// Cleartext HTTP/2 address (`H2C_PORT`, default 3001); HTTP mode only. `None`: no h2c port.
    pub h2c_listen: Option<SocketAddr>,
    /// TLS address (`HTTPS_PORT`/`TLS_PORT`, default 8443); used only when `tls` is set.
    pub tls_listen: Option<SocketAddr>,
    /// Server certificate, key and optional client CA; `None`: no TLS port.
    pub tls: Option<EchoTls>,
    /// Reported as `pod` (`POD_NAME`).
    pub pod: String,
    /// Reported as `namespace` (`NAMESPACE`).
    pub namespace: String,
    /// Reported as `service` (`SERVICE_NAME`).
    pub service: String,
    /// Reported as `ingress` (`INGRESS_NAME`).
    pub ingress: String,
    /// Protocol mode (default HTTP).
    pub mode: EchoMode,
    /// Where served requests are logged.
    pub log: EchoLog,
}

impl EchoConfig {
    /// An HTTP-mode echo on `listen` with no h2c or TLS port and a silent log.
    pub fn http(listen: SocketAddr, pod: &str, namespace: &str) -> Self {
        EchoConfig {
            listen,
            h2c_listen: None,
            tls_listen: None,
            tls: None,
            pod: pod.to_string(),
            namespace: namespace.to_string(),
            service: String::new(),
            ingress: String::new(),
            mode: EchoMode::Http,
            log: EchoLog::default(),
        }
    }
}

/// Identity fields every mode reports.
#[derive(Debug, Clone, Default)]
pub(crate) struct PodContext {
    pub namespace: String,
    pub ingress: String,
    pub service: String,
    pub pod: String,
}

impl From<&EchoConfig> for PodContext {
    fn from(c: &EchoConfig) -> Self {
        PodContext {
            namespace: c.namespace.clone(),
            ingress: c.ingress.clone(),
            service: c.service.clone(),
            pod: c.pod.clone(),
        }
    }
}

/// A bound, running echo instance. Dropping it stops every listener.
#[derive(Debug)]
pub struct RunningEcho {
    tasks: JoinSet<anyhow::Result<()>>,
    /// Addresses actually bound (port 0 in the config resolves here): main, h2c, TLS.
    pub bound: Vec<SocketAddr>,
}

impl RunningEcho {
    /// Waits until a listener fails (they otherwise run forever).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        while let Some(res) = self.tasks.join_next().await {
            res??;
        }
        Ok(())
    }
}

/// Binds every listener of `cfg` and starts serving in the background. Errors when an address
/// cannot be bound or the TLS material cannot be read.
pub async fn start(cfg: EchoConfig) -> anyhow::Result<RunningEcho> {
    let mut tasks = JoinSet::new();
    let mut bound = Vec::new();
    let ctx = Arc::new(PodContext::from(&cfg));
    let tls_config = match &cfg.tls {
        Some(t) => Some(tls::server_config(t, cfg.mode)?),
        None => None,
    };
    match cfg.mode {
        EchoMode::Http => {
            let l = bind_tcp(cfg.listen).await?;
            let port = l.local_addr()?.port();
            bound.push(l.local_addr()?);
            let state = http::HttpState::new(ctx.clone(), port, cfg.log.clone());
            tasks.spawn(http::serve_http1(l, state.clone()));
            if let Some(a) = cfg.h2c_listen {
                let l = bind_tcp(a).await?;
                bound.push(l.local_addr()?);
                tasks.spawn(http::serve_h2c(l, state.clone()));
            }
            if let (Some(a), Some(tc)) = (cfg.tls_listen, tls_config) {
                let l = bind_tcp(a).await?;
                bound.push(l.local_addr()?);
                tasks.spawn(http::serve_https(l, tc, state));
            }
        }
        EchoMode::Grpc => {
            let l = bind_tcp(cfg.listen).await?;
            bound.push(l.local_addr()?);
            tasks.spawn(grpc::serve(l, None, ctx.clone(), cfg.log.clone()));
            if let (Some(a), Some(tc)) = (cfg.tls_listen, tls_config) {
                let l = bind_tcp(a).await?;
                bound.push(l.local_addr()?);
                tasks.spawn(grpc::serve(l, Some(tc), ctx, cfg.log.clone()));
            }
        }
        EchoMode::Tcp => {
            let tcp_port = cfg.listen.port().to_string();
            let tls_port = cfg
                .tls_listen
                .map(|a| a.port().to_string())
                .unwrap_or_else(|| "8443".to_string());
            let l = bind_tcp(cfg.listen).await?;
            bound.push(l.local_addr()?);
            let info = Arc::new(l4::TcpInfo {
                ctx: (*ctx).clone(),
                tcp_port,
                tls_port,
            });
            tasks.spawn(l4::serve_tcp(l, None, info.clone()));
            if let (Some(a), Some(tc)) = (cfg.tls_listen, tls_config) {
                let l = bind_tcp(a).await?;
                bound.push(l.local_addr()?);
                tasks.spawn(l4::serve_tcp(l, Some(tc), info));
            }
        }
        EchoMode::Udp => {
            let sock = tokio::net::UdpSocket::bind(cfg.listen).await.map_err(|e| {
                anyhow::anyhow!("echo {}: cannot bind udp {}: {e}", cfg.pod, cfg.listen)
            })?;
            bound.push(sock.local_addr()?);
            tasks.spawn(l4::serve_udp(sock, ctx));
        }
    }
    Ok(RunningEcho { tasks, bound })
}

/// Runs an echo instance until one of its listeners fails.
pub async fn serve(cfg: EchoConfig) -> anyhow::Result<()> {
    start(cfg).await?.wait().await
}

async fn bind_tcp(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)
        .map_err(|e| anyhow::anyhow!("echo: cannot bind tcp {addr}: {e}"))?;
    Ok(sock.listen(1024)?)
}
