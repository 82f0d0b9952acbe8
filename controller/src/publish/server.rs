//! The controller side of the snapshot stream: per-scope published snapshots, connected
//! agents and their acknowledgements, and the gRPC service.

use super::proto::{AgentMessage, SERVICE, SUBSCRIBE_PATH, SnapshotMessage};
use super::tls::{Ca, CertKey, common_name};
use super::{AgentState, Published, Scope, fingerprint, status_json};
use sluice_ir::Snapshot;
use sluice_ir::status::StatusReport;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tonic::codegen::{BoxFuture, BoxStream, http};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// Why the stream endpoint stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// TLS or HTTP/2 server failure.
    #[error("snapshot stream server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The published snapshots and the agents streaming them. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("Publisher")
            .field("scopes", &st.scopes.len())
            .field("agents", &st.agents.len())
            .finish()
    }
}

struct Inner {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    acks: watch::Sender<u64>,
}

struct State {
    scopes: BTreeMap<Scope, Published>,
    agents: BTreeMap<u64, AgentState>,
    next_conn: u64,
    next_version: u64,
}

impl Default for Publisher {
    fn default() -> Self {
        Self::new()
    }
}

impl Publisher {
    /// An empty publisher. Versions start at the current Unix time in milliseconds so that
    /// they keep increasing across controller restarts.
    pub fn new() -> Self {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        Publisher {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    scopes: BTreeMap::new(),
                    agents: BTreeMap::new(),
                    next_conn: 0,
                    next_version: now_ms.max(1),
                }),
                changed: watch::channel(0).0,
                acks: watch::channel(0).0,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes a scope's snapshot and the status shown with it. A snapshot equal to the
    /// current one keeps its version (only a changed status is re-sent). Returns the version.
    pub fn publish(&self, scope: Scope, mut snapshot: Snapshot, status: &StatusReport) -> u64 {
        let fp = fingerprint(&snapshot);
        let status = Arc::new(status_json(status));
        let mut st = self.state();
        if let Some(p) = st.scopes.get_mut(&scope)
            && p.fingerprint == fp
        {
            let v = p.version;
            if p.status_json != status {
                p.status_json = status;
                drop(st);
                self.inner.changed.send_modify(|n| *n += 1);
            }
            return v;
        }
        let version = st.next_version;
        st.next_version += 1;
        snapshot.version = version;
        let json = Arc::new(serde_json::to_vec(&snapshot).unwrap_or_default());
        tracing::info!(%scope, version, fingerprint = %fp, listeners = snapshot.listeners.len(), clusters = snapshot.clusters.len(), "snapshot published");
        st.scopes.insert(
            scope,
            Published {
                version,
                fingerprint: fp,
                snapshot,
                snapshot_json: json,
                status_json: status,
                since: Instant::now(),
            },
        );
        drop(st);
        self.inner.changed.send_modify(|n| *n += 1);
        version
    }

    /// Forgets the scopes `keep` rejects (Gateways that are gone or no longer dedicated).
    pub fn retain_scopes(&self, keep: impl Fn(&Scope) -> bool) {
        self.state().scopes.retain(|s, _| keep(s));
    }

    /// The snapshot currently published for a scope.
    pub fn current(&self, scope: &Scope) -> Option<Published> {
        self.state().scopes.get(scope).cloned()
    }

    /// Connected agents and what they reported.
    pub fn agents(&self) -> Vec<AgentState> {
        self.state().agents.values().cloned().collect()
    }

    /// Changes whenever an agent connects, disconnects or acknowledges.
    pub fn ack_changes(&self) -> watch::Receiver<u64> {
        self.inner.acks.subscribe()
    }

    /// Serves the stream on `listener` with mutual TLS: `server` is the controller's
    /// certificate, clients must present one issued by `ca`. Returns after `shutdown`
    /// resolves and every stream is closed.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        server: &CertKey,
        ca: &Ca,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(&server.cert_pem, &server.key_pem))
            .client_ca_root(Certificate::from_pem(&ca.pair.cert_pem));
        let (closing_tx, closing) = watch::channel(false);
        let svc = PublisherService {
            publisher: self.clone(),
            closing,
        };
        let shutdown = async move {
            shutdown.await;
            let _ = closing_tx.send(true);
        };
        Server::builder()
            .tls_config(tls)?
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .add_service(svc)
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
            .await?;
        Ok(())
    }

    fn register(&self, agent: AgentState) -> u64 {
        let mut st = self.state();
        st.next_conn += 1;
        let id = st.next_conn;
        st.agents.insert(id, agent);
        drop(st);
        self.inner.acks.send_modify(|n| *n += 1);
        id
    }

    fn record(&self, id: u64, msg: &AgentMessage) {
        let mut st = self.state();
        let Some(a) = st.agents.get_mut(&id) else {
            return;
        };
        if a.node.is_empty() {
            a.node.clone_from(&msg.node);
        }
        if msg.applied {
            if msg.version != 0 {
                a.applied_version = msg.version;
                a.applied_fingerprint.clone_from(&msg.fingerprint);
                a.rejected = None;
            }
            a.listener_errors.clone_from(&msg.listener_errors);
            tracing::debug!(scope = %a.scope, node = %a.node, version = msg.version, listener_errors = msg.listener_errors.len(), "agent acknowledged");
        } else {
            tracing::warn!(scope = %a.scope, node = %a.node, version = msg.version, errors = ?msg.errors, "agent rejected the snapshot");
            a.rejected = Some((msg.version, msg.errors.clone()));
        }
        drop(st);
        self.inner.acks.send_modify(|n| *n += 1);
    }

    fn unregister(&self, id: u64) {
        if let Some(a) = self.state().agents.remove(&id) {
            tracing::info!(scope = %a.scope, node = %a.node, peer = %a.peer, "agent disconnected");
        }
        self.inner.acks.send_modify(|n| *n += 1);
    }
}

#[derive(Clone)]
struct PublisherService {
    publisher: Publisher,
    closing: watch::Receiver<bool>,
}

impl tonic::server::NamedService for PublisherService {
    const NAME: &'static str = SERVICE;
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for PublisherService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() != SUBSCRIBE_PATH {
            return Box::pin(async {
                Ok(tonic::Status::unimplemented("unknown method").into_http())
            });
        }
        let handler = Subscribe(self.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.streaming(handler, req).await)
        })
    }
}

struct Subscribe(PublisherService);

impl tonic::server::StreamingService<AgentMessage> for Subscribe {
    type Response = SnapshotMessage;
    type ResponseStream = BoxStream<SnapshotMessage>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<AgentMessage>>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move {
            let peer = request
                .remote_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let cn = request
                .peer_certs()
                .and_then(|certs| certs.first().and_then(|c| common_name(c)));
            let Some(scope) = cn.as_deref().and_then(Scope::from_common_name) else {
                tracing::warn!(%peer, common_name = ?cn, "agent refused: its certificate names no Sluice scope");
                return Err(tonic::Status::permission_denied(
                    "the client certificate names no Sluice agent scope",
                ));
            };
            let mut inbound = request.into_inner();
            let hello = match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await
            {
                Ok(Ok(Some(m))) => m,
                _ => {
                    return Err(tonic::Status::invalid_argument(
                        "expected the agent's first message",
                    ));
                }
            };
            tracing::info!(%scope, node = %hello.node, %peer, serving = hello.version, "agent connected");
            let id = svc.publisher.register(AgentState {
                scope: scope.clone(),
                node: hello.node.clone(),
                peer,
                applied_version: hello.version,
                applied_fingerprint: hello.fingerprint.clone(),
                rejected: None,
                listener_errors: hello.listener_errors.clone(),
                connected: Instant::now(),
            });
            let (tx, rx) = mpsc::channel::<Result<SnapshotMessage, tonic::Status>>(4);
            tokio::spawn(stream_to_agent(
                svc,
                id,
                scope,
                hello.fingerprint,
                inbound,
                tx,
            ));
            let out =
                futures::stream::unfold(
                    rx,
                    |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
                );
            Ok(tonic::Response::new(Box::pin(out) as Self::ResponseStream))
        })
    }
}

/// Sends the scope's snapshot whenever it changes and records acknowledgements until the
/// agent goes away or the server closes.
async fn stream_to_agent(
    svc: PublisherService,
    id: u64,
    scope: Scope,
    mut agent_fingerprint: String,
    mut inbound: tonic::Streaming<AgentMessage>,
    tx: mpsc::Sender<Result<SnapshotMessage, tonic::Status>>,
) {
    let publisher = svc.publisher.clone();
    let mut changed = publisher.inner.changed.subscribe();
    let mut closing = svc.closing.clone();
    let mut sent: Option<(u64, Arc<Vec<u8>>)> = None;
    loop {
        if *closing.borrow_and_update() {
            break;
        }
        changed.borrow_and_update();
        if let Some(p) = publisher.current(&scope) {
            let fresh = sent
                .as_ref()
                .is_none_or(|(v, s)| *v != p.version || !Arc::ptr_eq(s, &p.status_json));
            if fresh {
                let body = if p.fingerprint == agent_fingerprint {
                    Vec::new()
                } else {
                    p.snapshot_json.as_ref().clone()
                };
                let msg = SnapshotMessage {
                    version: p.version,
                    fingerprint: p.fingerprint.clone(),
                    snapshot: body,
                    status: p.status_json.as_ref().clone(),
                    scope: scope.to_string(),
                };
                if tx.send(Ok(msg)).await.is_err() {
                    break;
                }
                agent_fingerprint.clone_from(&p.fingerprint);
                sent = Some((p.version, p.status_json.clone()));
            }
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { break },
            r = closing.changed() => if r.is_err() { break },
            m = inbound.message() => match m {
                Ok(Some(m)) => publisher.record(id, &m),
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(%scope, error = %e, "agent stream ended");
                    break;
                }
            },
            _ = tx.closed() => break,
        }
    }
    publisher.unregister(id);
}
