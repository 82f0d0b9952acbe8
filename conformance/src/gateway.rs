//! The gateway under test: the `sluice standalone` process and its admin API.

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use sluice_ir::status::StatusReport;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::net::TcpStream;

/// A running `sluice standalone` (killed on drop), or an external gateway's admin address.
#[derive(Debug)]
pub struct Gateway {
    /// Admin API address.
    pub admin: SocketAddr,
    child: Option<tokio::process::Child>,
}

impl Gateway {
    /// Starts `BIN standalone DIR --admin ADMIN --address-pool POOL EXTRA...`, logging to `log`.
    pub fn spawn(
        bin: &Path,
        dir: &Path,
        admin: SocketAddr,
        pool: &str,
        extra: &[String],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = tokio::process::Command::new(bin)
            .arg("standalone")
            .arg(dir)
            .arg("--admin")
            .arg(admin.to_string())
            .arg("--address-pool")
            .arg(pool)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} standalone", bin.display()))?;
        Ok(Gateway {
            admin,
            child: Some(child),
        })
    }

    /// A gateway someone else runs (tests, or an already-running instance).
    pub fn external(admin: SocketAddr) -> Self {
        Gateway { admin, child: None }
    }

    /// Errors when the spawned process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(c) = self.child.as_mut()
            && let Some(status) = c.try_wait()?
        {
            anyhow::bail!("the gateway process exited: {status}");
        }
        Ok(())
    }

    async fn get(&self, path: &str) -> anyhow::Result<(u16, Bytes)> {
        let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(self.admin))
            .await
            .context("admin connect timed out")??;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header(http::header::HOST, self.admin.to_string())
            .body(Empty::<Bytes>::new())?;
        let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
            .await
            .context("admin request timed out")??;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// `GET /status`.
    pub async fn status(&self) -> anyhow::Result<StatusReport> {
        let (code, body) = self.get("/status").await?;
        anyhow::ensure!(code == 200, "GET /status answered {code}");
        serde_json::from_slice(&body).context("parsing /status")
    }

    /// Whether `GET /ready` answers 200.
    pub async fn ready(&self) -> bool {
        matches!(self.get("/ready").await, Ok((200, _)))
    }
}
