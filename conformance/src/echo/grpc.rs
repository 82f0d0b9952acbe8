//! gRPC mode of the echo backend (`gateway_api_conformance.echo_basic.grpcecho.GrpcEcho`) and the
//! matching client call the runner uses.

use super::EchoLog;
use super::PodContext;
use super::proto::{Assertions, Context, EchoRequest, EchoResponse, Header, TlsAssertions};
use super::tls::{cipher_suite_name, pem_encode_certificate, tls_version_name};
use anyhow::Context as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::server::UnaryService;

/// Fully qualified name of the echo service.
pub const GRPC_SERVICE: &str = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";

struct EchoUnary {
    method: String,
    authority: String,
    ctx: Arc<PodContext>,
    tls: Option<TlsAssertions>,
}

impl UnaryService<EchoRequest> for EchoUnary {
    type Response = EchoResponse;
    type Future = std::future::Ready<Result<tonic::Response<EchoResponse>, tonic::Status>>;

    fn call(&mut self, req: tonic::Request<EchoRequest>) -> Self::Future {
        let mut headers = vec![Header {
            key: ":authority".into(),
            value: self.authority.clone(),
        }];
        for (k, v) in req.metadata().clone().into_headers().iter() {
            headers.push(Header {
                key: k.as_str().to_string(),
                value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
            });
        }
        let resp = EchoResponse {
            assertions: Some(Assertions {
                fully_qualified_method: self.method.clone(),
                headers,
                authority: self.authority.clone(),
                context: Some(Context {
                    namespace: self.ctx.namespace.clone(),
                    ingress: self.ctx.ingress.clone(),
                    service_name: self.ctx.service.clone(),
                    pod: self.ctx.pod.clone(),
                }),
                tls_assertions: self.tls.clone(),
            }),
            request: Some(req.into_inner()),
        };
        std::future::ready(Ok(tonic::Response::new(resp)))
    }
}

async fn handle(
    req: http::Request<Incoming>,
    ctx: Arc<PodContext>,
    tls: Option<TlsAssertions>,
    log: EchoLog,
    peer: SocketAddr,
) -> Result<http::Response<tonic::body::Body>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let method = path
        .strip_prefix('/')
        .and_then(|p| p.strip_prefix(GRPC_SERVICE))
        .and_then(|p| p.strip_prefix('/'))
        .unwrap_or_default()
        .to_string();
    if method != "Echo" && method != "EchoTwo" {
        return Ok(
            tonic::Status::unimplemented(format!("method {path} is not implemented")).into_http(),
        );
    }
    log.record(&path, peer);
    let authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        })
        .unwrap_or_default();
    let svc = EchoUnary {
        method: path,
        authority,
        ctx,
        tls,
    };
    let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
    Ok(grpc.unary(svc, req).await)
}

pub(crate) async fn serve(
    l: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    ctx: Arc<PodContext>,
    log: EchoLog,
) -> anyhow::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let Ok((stream, peer)) = l.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (ctx, log, acceptor) = (ctx.clone(), log.clone(), acceptor.clone());
        tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            match acceptor {
                None => {
                    let svc =
                        service_fn(move |req| handle(req, ctx.clone(), None, log.clone(), peer));
                    let _ = builder
                        .http2_only()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                }
                Some(a) => {
                    let Ok(s) = a.accept(stream).await else {
                        return;
                    };
                    let c = s.get_ref().1;
                    let tls = TlsAssertions {
                        version: tls_version_name(c.protocol_version()),
                        negotiated_protocol: c
                            .alpn_protocol()
                            .map(|p| String::from_utf8_lossy(p).into_owned())
                            .unwrap_or_default(),
                        server_name: c.server_name().unwrap_or_default().to_string(),
                        cipher_suite: cipher_suite_name(c.negotiated_cipher_suite()),
                        peer_certificates: c
                            .peer_certificates()
                            .unwrap_or_default()
                            .iter()
                            .map(|d| pem_encode_certificate(d))
                            .collect(),
                    };
                    let svc = service_fn(move |req| {
                        handle(req, ctx.clone(), Some(tls.clone()), log.clone(), peer)
                    });
                    let _ = builder
                        .http2_only()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                }
            }
        });
    }
}

/// Calls `method` (`Echo`, `EchoTwo`, `EchoThree`) of the echo service at `addr` over cleartext
/// HTTP/2 with `:authority` set to `authority` and the given request metadata. Returns the gRPC
/// status code and, on OK, the response. Transport failures are errors.
pub async fn grpc_echo_client_call(
    addr: SocketAddr,
    authority: &str,
    method: &str,
    metadata: &[(String, String)],
    timeout: Duration,
) -> anyhow::Result<(tonic::Code, Option<EchoResponse>)> {
    let origin = http::Uri::from_str(&format!("http://{authority}"))
        .with_context(|| format!("invalid authority {authority:?}"))?;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .origin(origin)
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.context("gRPC channel not ready")?;
    let mut req = tonic::Request::new(EchoRequest {});
    for (k, v) in metadata {
        let key = tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
            .with_context(|| format!("invalid metadata key {k:?}"))?;
        let val = tonic::metadata::MetadataValue::try_from(v.as_str())
            .with_context(|| format!("invalid metadata value {v:?}"))?;
        req.metadata_mut().insert(key, val);
    }
    let path = http::uri::PathAndQuery::from_str(&format!("/{GRPC_SERVICE}/{method}"))?;
    let codec = tonic_prost::ProstCodec::<EchoRequest, EchoResponse>::default();
    match client.unary(req, path, codec).await {
        Ok(r) => Ok((tonic::Code::Ok, Some(r.into_inner()))),
        Err(s) => Ok((s.code(), None)),
    }
}
