//! TCP and UDP modes of the echo backend.

use super::PodContext;
use super::tls::{cipher_suite_name, tls_version_name};
use serde::Serialize;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, UdpSocket};

/// The first line a TCP-mode echo sends on every connection.
pub const WELCOME: &str = "Gateway API Test TCP Server\n";

#[derive(Debug)]
pub(crate) struct TcpInfo {
    pub ctx: PodContext,
    pub tcp_port: String,
    pub tls_port: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TcpTls {
    version: String,
    server_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    negotiated_protocol: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    curves: String,
    cipher_suite: String,
}

#[derive(Debug, Serialize)]
struct TcpAssertions<'a> {
    namespace: &'a str,
    ingress: &'a str,
    service: &'a str,
    pod: &'a str,
    tcpport: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    tlsport: &'a str,
    #[serde(rename = "isTLS")]
    is_tls: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<TcpTls>,
}

pub(crate) async fn serve_tcp(
    l: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    info: Arc<TcpInfo>,
) -> anyhow::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let Ok((stream, _)) = l.accept().await else {
            continue;
        };
        let info = info.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                None => {
                    let payload = assertions(&info, None);
                    let _ = session(stream, payload, false).await;
                }
                Some(a) => {
                    let Ok(s) = a.accept(stream).await else {
                        return;
                    };
                    let c = s.get_ref().1;
                    let t = TcpTls {
                        version: tls_version_name(c.protocol_version()),
                        server_name: c.server_name().unwrap_or_default().to_string(),
                        negotiated_protocol: c
                            .alpn_protocol()
                            .map(|p| String::from_utf8_lossy(p).into_owned())
                            .unwrap_or_default(),
                        curves: c
                            .negotiated_key_exchange_group()
                            .map(|g| format!("{:?}", g.name()))
                            .unwrap_or_default(),
                        cipher_suite: cipher_suite_name(c.negotiated_cipher_suite()),
                    };
                    let payload = assertions(&info, Some(t));
                    let _ = session(s, payload, true).await;
                }
            }
        });
    }
}

fn assertions(info: &TcpInfo, tls: Option<TcpTls>) -> String {
    serde_json::to_string(&TcpAssertions {
        namespace: &info.ctx.namespace,
        ingress: &info.ctx.ingress,
        service: &info.ctx.service,
        pod: &info.ctx.pod,
        tcpport: &info.tcp_port,
        tlsport: &info.tls_port,
        is_tls: tls.is_some(),
        tls,
    })
    .unwrap_or_default()
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    s: S,
    payload: String,
    is_tls: bool,
) -> std::io::Result<()> {
    let (r, mut w) = tokio::io::split(s);
    w.write_all(WELCOME.as_bytes()).await?;
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = match line.trim_end_matches('\r') {
            "TEST" => format!("{payload}\n"),
            "IS_TLS" => format!("{is_tls}\n"),
            "PING" => "PONG\n".to_string(),
            _ => continue,
        };
        w.write_all(reply.as_bytes()).await?;
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct UdpReply<'a> {
    request: &'a str,
    namespace: &'a str,
    ingress: &'a str,
    service: &'a str,
    pod: &'a str,
}

pub(crate) async fn serve_udp(sock: UdpSocket, ctx: Arc<PodContext>) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 1024];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let request = String::from_utf8_lossy(&buf[..n]).into_owned();
        let reply = serde_json::to_vec(&UdpReply {
            request: &request,
            namespace: &ctx.namespace,
            ingress: &ctx.ingress,
            service: &ctx.service,
            pod: &ctx.pod,
        })
        .unwrap_or_default();
        let _ = sock.send_to(&reply, peer).await;
    }
}
