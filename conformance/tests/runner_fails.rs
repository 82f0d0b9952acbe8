//! The runner must be able to fail: it runs real cases against a stand-in gateway that serves
//! `/status` like Sluice but forwards every request unchanged (no filters applied, every gRPC
//! call to one backend, whatever the route says), and must report the header-modifier and
//! gRPC header-matching tests as FAILED naming the cases, while a plain routing test passes.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_conformance::report::Outcome;
use sluice_conformance::runner::Timing;
use sluice_conformance::{RunOptions, run};
use sluice_ir::ObjectRef;
use sluice_ir::status::{
    Condition, GatewayAddress, ListenerStatus, ParentRef, ResourceStatus, RouteGroupKind,
    RouteParentStatus, StatusReport,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const GW_IP: [u8; 4] = [127, 0, 12, 1];

fn docs(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        for d in serde_yaml::Deserializer::from_str(&text) {
            if let Ok(v) = <serde_json::Value as serde::Deserialize>::deserialize(d)
                && !v.is_null()
            {
                out.push(v);
            }
        }
    }
    out
}

fn ok(t: &str, g: i64) -> Condition {
    Condition::new(t, true, t, "", g)
}

/// Status as a gateway that accepts everything would report it.
fn status(dir: &Path) -> StatusReport {
    let mut report = StatusReport::default();
    for d in docs(dir) {
        let kind = d["kind"].as_str().unwrap_or_default();
        let ns = d["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = d["metadata"]["name"].as_str().unwrap_or_default();
        let g = d["metadata"]["generation"].as_i64().unwrap_or(1);
        let mut r = ResourceStatus::new(ObjectRef::new(kind, ns, name), g);
        match kind {
            "Gateway" => {
                r.conditions = vec![ok("Accepted", g), ok("Programmed", g)];
                r.addresses = vec![GatewayAddress {
                    type_: "IPAddress".into(),
                    value: "127.0.12.1".into(),
                }];
                for l in d["spec"]["listeners"].as_array().into_iter().flatten() {
                    r.listeners.push(ListenerStatus {
                        name: l["name"].as_str().unwrap_or_default().into(),
                        supported_kinds: vec![RouteGroupKind {
                            group: "gateway.networking.k8s.io".into(),
                            kind: "HTTPRoute".into(),
                        }],
                        attached_routes: 1,
                        conditions: vec![
                            ok("Accepted", g),
                            ok("ResolvedRefs", g),
                            ok("Programmed", g),
                        ],
                    });
                }
            }
            "HTTPRoute" | "GRPCRoute" => {
                for p in d["spec"]["parentRefs"].as_array().into_iter().flatten() {
                    r.parents.push(RouteParentStatus {
                        parent_ref: ParentRef {
                            name: p["name"].as_str().unwrap_or_default().into(),
                            namespace: p["namespace"].as_str().map(str::to_string),
                            ..Default::default()
                        },
                        controller_name: "sluice.dev/gateway-controller".into(),
                        conditions: vec![ok("Accepted", g), ok("ResolvedRefs", g)],
                    });
                }
            }
            _ => continue,
        }
        report.resources.push(r);
    }
    report
}

/// The first endpoint of a Service's pods (port 3000), from the EndpointSlices the runner
/// wrote.
fn backend(dir: &Path, service: &str) -> Option<SocketAddr> {
    let slice = format!("{service}-sluice");
    docs(dir).into_iter().find_map(|d| {
        (d["kind"] == "EndpointSlice" && d["metadata"]["name"] == slice.as_str())
            .then(|| d["endpoints"][0]["addresses"][0].as_str()?.parse().ok())
            .flatten()
            .map(|ip| SocketAddr::new(ip, 3000))
    })
}

type Resp = http::Response<BoxBody<Bytes, hyper::Error>>;

fn full(body: impl Into<Bytes>) -> BoxBody<Bytes, hyper::Error> {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

async fn admin(
    req: http::Request<hyper::body::Incoming>,
    dir: PathBuf,
) -> Result<Resp, hyper::Error> {
    let body = match req.uri().path() {
        "/status" => serde_json::to_vec(&status(&dir)).unwrap_or_default(),
        _ => b"ready".to_vec(),
    };
    Ok(http::Response::new(full(body)))
}

/// Forwards the request, unmodified, to infra-backend-v1 (no filter is applied); HTTP/2 (gRPC)
/// requests go to grpc-infra-backend-v1, whatever they match.
async fn proxy(
    req: http::Request<hyper::body::Incoming>,
    dir: PathBuf,
) -> Result<Resp, hyper::Error> {
    let bad = |code: u16| {
        let mut r = http::Response::new(full(Bytes::new()));
        *r.status_mut() = http::StatusCode::from_u16(code).unwrap_or_default();
        Ok(r)
    };
    let h2 = req.version() == http::Version::HTTP_2;
    let service = if h2 {
        "grpc-infra-backend-v1"
    } else {
        "infra-backend-v1"
    };
    let Some(addr) = backend(&dir, service) else {
        return bad(503);
    };
    if h2 {
        let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
            return bad(502);
        };
        let Ok((mut send, conn)) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await
        else {
            return bad(502);
        };
        tokio::spawn(conn);
        // Streamed both ways so that the gRPC trailers pass through.
        let Ok(resp) = send.send_request(req).await else {
            return bad(502);
        };
        return Ok(resp.map(|b| b.boxed()));
    }
    let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
        return bad(502);
    };
    let Ok((mut send, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return bad(502);
    };
    tokio::spawn(conn);
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let up = http::Request::from_parts(parts, Full::new(body));
    let Ok(resp) = send.send_request(up).await else {
        return bad(502);
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(http::Response::from_parts(parts, full(body)))
}

async fn serve<F, Fut>(addr: SocketAddr, dir: PathBuf, f: F)
where
    F: Fn(http::Request<hyper::body::Incoming>, PathBuf) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Resp, hyper::Error>> + Send + 'static,
{
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind stand-in");
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let dir = dir.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |r| f(r, dir.clone()));
                // HTTP/1.1 and prior-knowledge h2c (gRPC).
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_modifier_and_grpc_header_match_cases_fail_against_a_gateway_that_ignores_them() {
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance");
    if !shared.join("cases.yaml").exists() {
        eprintln!("SKIPPED: no suite data at {}", shared.display());
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("config");
    let admin_addr: SocketAddr = "127.0.0.1:19971".parse().expect("addr");
    serve(admin_addr, dir.clone(), admin).await;
    serve(SocketAddr::from((GW_IP, 80)), dir.clone(), proxy).await;

    let opts = RunOptions {
        only: vec![
            "HTTPRouteRequestHeaderModifier".into(),
            "HTTPRouteSimpleSameNamespace".into(),
            "GRPCRouteHeaderMatching".into(),
        ],
        shared_dir: shared,
        expected_pass: None,
        features: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("features.yaml"),
        work_dir: Some(work.path().to_path_buf()),
        admin: Some(admin_addr),
        external_gateway: true,
        timing: Timing {
            max_time: Duration::from_secs(3),
            ..Timing::default()
        },
        progress: true,
        ..RunOptions::default()
    };
    let summary = run(opts).await.expect("run");
    assert_eq!(
        summary.outcome("HTTPRouteSimpleSameNamespace"),
        Some(&Outcome::Passed),
        "plain routing through the stand-in must pass"
    );
    match summary.outcome("HTTPRouteRequestHeaderModifier") {
        Some(Outcome::Failed(why)) => {
            assert!(
                why.contains("case \"#0 GET /set\""),
                "failure names the case: {why}"
            );
            assert!(
                why.contains("X-Header-Set"),
                "failure names the header: {why}"
            );
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    match summary.outcome("GRPCRouteHeaderMatching") {
        Some(Outcome::Failed(why)) => {
            assert!(
                why.contains("with headers '{Version:two}' should go to grpc-infra-backend-v2")
                    && why.contains("expected pod name to start with grpc-infra-backend-v2"),
                "failure names the misrouted case: {why}"
            );
            assert!(
                why.contains("with headers '{Color:purple}' should receive a Unimplemented (12)")
                    && why
                        .contains("expected status code to be Unimplemented (12), but got OK (0)"),
                "failure names the case that must not match: {why}"
            );
            assert!(
                !why.contains("{Version:one}"),
                "the case the stand-in happens to route right passes: {why}"
            );
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    let http = summary
        .report
        .profiles
        .iter()
        .find(|p| p.name == "GATEWAY-HTTP")
        .expect("GATEWAY-HTTP profile");
    assert_eq!(http.core.result, "failure");
    assert!(
        http.core
            .failed_tests
            .contains(&"HTTPRouteRequestHeaderModifier".to_string())
    );
}
