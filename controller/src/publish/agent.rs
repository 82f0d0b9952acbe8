//! The agent side of the snapshot stream: connect with the agent's client certificate, apply
//! every snapshot to a [`SnapshotSink`] (the proxy), acknowledge it, and reconnect with
//! exponential backoff after any failure. The sink keeps serving its last snapshot while the
//! controller is away.

use super::fingerprint;
use super::proto::{AgentMessage, SUBSCRIBE_PATH, SnapshotMessage};
use super::tls::CertKey;
use sluice_ir::Snapshot;
use sluice_ir::status::StatusReport;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How an agent reaches the controller.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Controller stream endpoint, e.g. `https://sluice-controller.sluice-system.svc:9902`.
    pub endpoint: String,
    /// Name the controller's certificate must carry (default: the endpoint's host).
    pub server_name: Option<String>,
    /// CA certificate (PEM) the controller's certificate must chain to.
    pub ca_pem: String,
    /// The agent's client certificate and key; its common name selects the scope.
    pub identity: CertKey,
    /// Node or pod name reported to the controller.
    pub node: String,
    /// First reconnect delay (default 250 ms); doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Longest reconnect delay (default 30 s).
    pub backoff_max: Duration,
    /// Period of re-applying a snapshot whose listeners could not all be bound (default 2 s).
    pub bind_retry: Duration,
}

impl AgentOptions {
    /// Options with the default timings.
    pub fn new(endpoint: &str, ca_pem: &str, identity: CertKey, node: &str) -> Self {
        AgentOptions {
            endpoint: endpoint.to_string(),
            server_name: None,
            ca_pem: ca_pem.to_string(),
            identity,
            node: node.to_string(),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            bind_retry: Duration::from_secs(2),
        }
    }
}

/// The outcome of applying one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The snapshot is serving.
    pub applied: bool,
    /// Why it was rejected (the previous one keeps serving).
    pub errors: Vec<String>,
    /// Listeners that could not be bound (IR listener name to reason).
    pub listener_errors: BTreeMap<String, String>,
}

/// Where an agent puts what it receives (the proxy and its admin API in `sluice agent`).
pub trait SnapshotSink: Send + Sync + 'static {
    /// Applies a complete snapshot; a rejected one must leave the previous one serving.
    fn apply(&self, snapshot: Snapshot) -> impl Future<Output = Applied> + Send;
    /// Shows the status the controller computed, with the serving snapshot and its listener
    /// errors (for `/status`).
    fn show_status(
        &self,
        status: StatusReport,
        serving: &Snapshot,
        listener_errors: &BTreeMap<String, String>,
    );
}

/// Why one stream session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Connecting or TLS failed.
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        /// Endpoint.
        endpoint: String,
        /// Cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// The controller refused or ended the stream.
    #[error("stream: {0}")]
    Stream(#[from] tonic::Status),
    /// The endpoint is not a valid URI.
    #[error("invalid endpoint {0:?}")]
    Endpoint(String),
}

#[derive(Default)]
struct Serving {
    version: u64,
    fingerprint: String,
    snapshot: Snapshot,
    listener_errors: BTreeMap<String, String>,
    status: StatusReport,
}

/// Runs the agent until `shutdown` resolves: stream, apply, acknowledge, reconnect.
pub async fn run<S: SnapshotSink>(opts: AgentOptions, sink: S, shutdown: impl Future<Output = ()>) {
    let mut serving = Serving::default();
    let mut delay = opts.backoff_initial;
    tokio::pin!(shutdown);
    loop {
        let mut got_message = false;
        let result = tokio::select! {
            r = session(&opts, &sink, &mut serving, &mut got_message) => r,
            _ = &mut shutdown => return,
        };
        if got_message {
            delay = opts.backoff_initial;
        }
        match result {
            Ok(()) => {
                tracing::warn!(endpoint = %opts.endpoint, "the controller closed the stream; still serving version {}", serving.version)
            }
            Err(e) => {
                tracing::warn!(error = %e, "snapshot stream failed; still serving version {}, retrying in {} ms", serving.version, delay.as_millis())
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(jitter(delay)) => {}
            _ = &mut shutdown => return,
        }
        delay = (delay * 2).min(opts.backoff_max);
    }
}

/// `d` minus up to 20 %, so that agents restarted together spread their reconnects.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    let cut = d.as_millis() as u64 * u64::from(nanos % 200) / 1000;
    d.saturating_sub(Duration::from_millis(cut))
}

async fn connect(opts: &AgentOptions) -> Result<Channel, SessionError> {
    let endpoint = Endpoint::from_shared(opts.endpoint.clone())
        .map_err(|_| SessionError::Endpoint(opts.endpoint.clone()))?;
    let host = endpoint.uri().host().unwrap_or_default().to_string();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&opts.ca_pem))
        .identity(Identity::from_pem(
            &opts.identity.cert_pem,
            &opts.identity.key_pem,
        ))
        .domain_name(opts.server_name.clone().unwrap_or(host));
    let map = |source| SessionError::Connect {
        endpoint: opts.endpoint.clone(),
        source,
    };
    endpoint
        .tls_config(tls)
        .map_err(map)?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .connect()
        .await
        .map_err(map)
}

async fn session<S: SnapshotSink>(
    opts: &AgentOptions,
    sink: &S,
    serving: &mut Serving,
    got_message: &mut bool,
) -> Result<(), SessionError> {
    let channel = connect(opts).await?;
    let (tx, rx) = mpsc::channel::<AgentMessage>(8);
    let hello = AgentMessage {
        node: opts.node.clone(),
        version: serving.version,
        fingerprint: serving.fingerprint.clone(),
        applied: true,
        errors: Vec::new(),
        listener_errors: serving.listener_errors.clone(),
    };
    let _ = tx.send(hello).await;
    let outbound =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let response = grpc
        .streaming(
            tonic::Request::new(outbound),
            PathAndQuery::from_static(SUBSCRIBE_PATH),
            tonic_prost::ProstCodec::<AgentMessage, SnapshotMessage>::default(),
        )
        .await?;
    let mut inbound = response.into_inner();
    tracing::info!(endpoint = %opts.endpoint, serving = serving.version, "snapshot stream open");
    loop {
        let retry = !serving.listener_errors.is_empty();
        let msg = tokio::select! {
            m = inbound.message() => m?,
            _ = tokio::time::sleep(opts.bind_retry), if retry => {
                let before = serving.listener_errors.clone();
                let applied = sink.apply(serving.snapshot.clone()).await;
                if applied.applied && applied.listener_errors != before {
                    serving.listener_errors = applied.listener_errors;
                    sink.show_status(serving.status.clone(), &serving.snapshot, &serving.listener_errors);
                    let _ = tx.send(ack(opts, serving, true, Vec::new())).await;
                }
                continue;
            }
        };
        let Some(msg) = msg else {
            return Ok(());
        };
        *got_message = true;
        if let Ok(status) = serde_json::from_slice::<StatusReport>(&msg.status) {
            serving.status = status;
        }
        let reply = if msg.fingerprint == serving.fingerprint && msg.snapshot.is_empty() {
            // Already serving it (e.g. the controller restarted): adopt the version.
            serving.version = msg.version;
            serving.snapshot.version = msg.version;
            ack(opts, serving, true, Vec::new())
        } else {
            match decode(&msg) {
                Err(e) => {
                    tracing::error!(version = msg.version, error = %e, "snapshot rejected; the last good snapshot keeps serving");
                    let mut m = ack(opts, serving, false, vec![e]);
                    m.version = msg.version;
                    m
                }
                Ok(snapshot) => {
                    let applied = sink.apply(snapshot.clone()).await;
                    if applied.applied {
                        tracing::info!(
                            version = msg.version,
                            listeners = snapshot.listeners.len(),
                            clusters = snapshot.clusters.len(),
                            "configuration applied"
                        );
                        serving.version = msg.version;
                        serving.fingerprint = msg.fingerprint.clone();
                        serving.snapshot = snapshot;
                        serving.listener_errors = applied.listener_errors;
                        ack(opts, serving, true, Vec::new())
                    } else {
                        tracing::error!(version = msg.version, errors = ?applied.errors, "snapshot rejected; the last good snapshot keeps serving");
                        let mut m = ack(opts, serving, false, applied.errors);
                        m.version = msg.version;
                        m
                    }
                }
            }
        };
        sink.show_status(
            serving.status.clone(),
            &serving.snapshot,
            &serving.listener_errors,
        );
        if tx.send(reply).await.is_err() {
            return Ok(());
        }
    }
}

fn decode(msg: &SnapshotMessage) -> Result<Snapshot, String> {
    if msg.snapshot.is_empty() {
        return Err(format!(
            "snapshot {} arrived without a body and is not the one being served",
            msg.version
        ));
    }
    let mut s: Snapshot = serde_json::from_slice(&msg.snapshot)
        .map_err(|e| format!("snapshot {} is not valid IR JSON: {e}", msg.version))?;
    s.version = msg.version;
    if fingerprint(&s) != msg.fingerprint {
        return Err(format!(
            "snapshot {} does not match its fingerprint {}",
            msg.version, msg.fingerprint
        ));
    }
    Ok(s)
}

fn ack(opts: &AgentOptions, serving: &Serving, applied: bool, errors: Vec<String>) -> AgentMessage {
    AgentMessage {
        node: opts.node.clone(),
        version: serving.version,
        fingerprint: serving.fingerprint.clone(),
        applied,
        errors,
        listener_errors: serving.listener_errors.clone(),
    }
}
