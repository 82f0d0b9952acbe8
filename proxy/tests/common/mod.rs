//! Shared helpers of the proxy's in-process tests: a started proxy, HTTP clients, JSON echo.
#![allow(dead_code)]

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sluice_ir::Snapshot;
use sluice_proxy::test_util::Echoed;
use sluice_proxy::{Proxy, ProxyOptions};
use std::time::Duration;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A proxy with two workers serving `s` (panics when the apply is not clean).
pub async fn start(s: Snapshot) -> Proxy {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let p = Proxy::start(ProxyOptions {
        workers: 2,
        ..Default::default()
    })
    .expect("start");
    let r = p.apply(s).await;
    assert!(r.applied, "{:?}", r.validation_errors);
    assert!(r.listener_errors.is_empty(), "{:?}", r.listener_errors);
    p
}

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn echo(&self) -> Echoed {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not an echo ({e}): {} {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn header(&self, n: &str) -> Option<&str> {
        self.headers.get(n).and_then(|v| v.to_str().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends a request to `http://127.0.0.1:port{path}` with `Host: host` and extra headers.
pub async fn send(
    c: &HttpClient,
    method: &str,
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .expect("response in time")
        .expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(c: &HttpClient, port: u16, host: &str, path: &str) -> Reply {
    send(c, "GET", port, host, path, &[], "").await
}

/// Runs curl with args; returns stdout. Panics if curl is missing.
pub fn curl(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new("curl")
        .args(args)
        .output()
        .expect("curl installed (apt-get install curl)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
