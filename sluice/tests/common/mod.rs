//! Fixtures for tests of the `sluice` binary: a standalone gateway process on a temporary
//! directory, echo backends, and small HTTP helpers.
#![allow(dead_code)]

use serde_json::Value;
use sluice_conformance::echo::{EchoConfig, RunningEcho, start};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running `sluice standalone` process; killed on drop.
pub struct Gateway {
    pub child: Child,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    /// Starts the binary on a fresh directory holding `files`, with its admin API and address
    /// pool on `ip` (one loopback address per test keeps tests apart).
    pub fn start(ip: &str, files: &[(&str, String)]) -> Gateway {
        Self::start_with(ip, files, &[])
    }

    /// [`Gateway::start`] with extra command-line arguments.
    pub fn start_with(ip: &str, files: &[(&str, String)], extra: &[&str]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let admin: SocketAddr = format!("{ip}:9901").parse().unwrap();
        let log = dir.path().join("../").join(format!(
            "sluice-{}.log",
            dir.path().file_name().unwrap().to_string_lossy()
        ));
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("standalone")
            .arg(dir.path())
            .args(["--admin", &admin.to_string()])
            .args(["--address-pool", &format!("{ip}/32")])
            .args(["--workers", "1"])
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start sluice");
        Gateway {
            child,
            admin,
            dir,
            log,
        }
    }

    pub fn write(&self, name: &str, text: &str) {
        // Write then rename: the gateway never sees a half-written file.
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.path().join(name)).unwrap();
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET on the admin API: (status, body).
    pub async fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        raw_get(self.admin, "admin", path).await
    }

    pub async fn status(&self) -> Value {
        let (_, body) = self.admin_get("/status").await.expect("admin answers");
        serde_json::from_str(&body).expect("status is JSON")
    }

    /// Waits until `/ready` is 200.
    pub async fn ready(&self) {
        self.wait_for("ready", Duration::from_secs(20), |_| async {
            matches!(self.admin_get("/ready").await, Some((200, _)))
        })
        .await;
    }

    /// Polls `check` every 20 ms until it holds; panics with the gateway log after `timeout`.
    pub async fn wait_for<F, Fut>(&self, what: &str, timeout: Duration, check: F)
    where
        F: Fn(()) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if check(()).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "timed out waiting for {what}; gateway log:\n{}",
            self.log_text()
        );
    }
}

/// A minimal HTTP/1.1 GET over a new connection: (status, body). `None` if nothing answered.
pub async fn raw_get(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Starts an HTTP echo backend on an ephemeral port of `ip`.
pub async fn echo(ip: &str, pod: &str) -> (RunningEcho, SocketAddr) {
    let cfg = EchoConfig::http(format!("{ip}:0").parse().unwrap(), pod, "default");
    let e = start(cfg).await.expect("echo starts");
    let addr = e.bound[0];
    (e, addr)
}

/// A GatewayClass plus a Gateway `gw` in `default` with one HTTP listener on `port`.
pub fn gateway_yaml(port: u16) -> String {
    gateway_with_listeners(&format!(
        "  - {{name: http, protocol: HTTP, port: {port}}}\n"
    ))
}

/// A GatewayClass plus a Gateway `gw` in `default` with these `listeners` (YAML list items,
/// indented two spaces).
pub fn gateway_with_listeners(listeners: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: sluice}}
spec: {{controllerName: sluice.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: sluice
  listeners:
{listeners}"
    )
}

/// A Service `name` (port 80) with an EndpointSlice pointing at `backend`.
pub fn service_yaml(name: &str, backend: SocketAddr) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  ports: [{{name: http, port: 80, targetPort: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: default
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints:
- addresses: [\"{ip}\"]
",
        port = backend.port(),
        ip = backend.ip()
    )
}

/// An HTTPRoute `name` on `gw` for `path` to `service`, adding response header
/// `x-version: <version>`.
pub fn route_yaml(name: &str, path: &str, service: &str, version: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches:
    - path: {{type: PathPrefix, value: {path}}}
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{{name: x-version, value: \"{version}\"}}]
    backendRefs: [{{name: {service}, port: 80}}]
"
    )
}

/// Runs curl with `args`; returns (exit ok, stdout).
pub fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .args(args)
        .output()
        .expect("curl is installed (cargo xtask test installs it)");
    if !out.status.success() {
        eprintln!("curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}
