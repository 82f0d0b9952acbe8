//! TCP and UDP sends, as upstream's `conformance/utils/tcp` and `conformance/utils/udp`: a TCP
//! session with the echo backend (welcome line, `PING`, `IS_TLS`, `TEST`) in plain text or over
//! TLS with a server name, and UDP datagrams answered with the backend's identity.

use crate::client::{self, ClientTls};
use anyhow::{Context as _, bail};
use rustls::pki_types::ServerName;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// The payload upstream's UDP echo probe sends.
pub const UDP_PROBE: &str = "gateway-api-conformance-udp-echo";

/// TLS parameters of a TCP send (`useTLS: true`).
#[derive(Debug, Clone)]
pub struct TcpTls {
    /// SNI and the name the certificate must be valid for.
    pub server_name: String,
    /// Trusted CA certificates (PEM).
    pub roots_pem: String,
    /// SANs of the certificates this run generated (Go-style wildcard matching).
    pub known_sans: Arc<HashMap<Vec<u8>, Vec<String>>>,
}

/// What one TCP case expects (upstream `tcp.ExpectedResponse`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpCase {
    /// The answering pod's name must start with `<backend>-`.
    #[serde(default)]
    pub backend: String,
    /// The answering pod's namespace.
    #[serde(default)]
    pub namespace: String,
    /// The backend must see a TLS connection (passthrough) or a plain one.
    #[serde(default, rename = "backendIsTLS")]
    pub backend_is_tls: bool,
    /// When set, the SNI the backend saw must equal it.
    #[serde(default)]
    pub hostname: String,
}

/// The `TEST` answer of the TCP echo (`tcpserver.TCPAssertions`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TcpAnswer {
    /// Pod namespace.
    #[serde(default)]
    pub namespace: String,
    /// Pod name.
    #[serde(default)]
    pub pod: String,
    /// TLS details when the backend terminated TLS.
    #[serde(default)]
    pub tls: Option<TcpAnswerTls>,
}

/// The `tls` object of a `TEST` answer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpAnswerTls {
    /// SNI the backend saw.
    #[serde(default)]
    pub server_name: String,
}

/// A finished TCP session: the `IS_TLS` answer and the `TEST` answer.
#[derive(Debug, Clone)]
pub struct TcpSession {
    /// `IS_TLS` said `true`.
    pub is_tls: bool,
    /// `TEST` answer.
    pub answer: TcpAnswer,
}

async fn read_line<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    what: &str,
) -> anyhow::Result<String> {
    let mut line = String::new();
    let n = r.read_line(&mut line).await?;
    if n == 0 {
        bail!("connection closed before the {what}");
    }
    Ok(line)
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(s: S) -> anyhow::Result<TcpSession> {
    let (r, mut w) = tokio::io::split(s);
    let mut r = BufReader::new(r);
    let welcome = read_line(&mut r, "welcome line").await?;
    if welcome != crate::echo::TCP_WELCOME {
        bail!("unexpected welcome line {welcome:?}");
    }
    w.write_all(b"PING\n").await?;
    let pong = read_line(&mut r, "PING answer").await?;
    if pong != "PONG\n" {
        bail!("PING answered {pong:?}, want \"PONG\\n\"");
    }
    w.write_all(b"IS_TLS\n").await?;
    let is_tls = match read_line(&mut r, "IS_TLS answer").await?.trim_end() {
        "true" => true,
        "false" => false,
        other => bail!("IS_TLS answered {other:?}"),
    };
    w.write_all(b"TEST\n").await?;
    let line = read_line(&mut r, "TEST answer").await?;
    let answer =
        serde_json::from_str(&line).with_context(|| format!("bad TEST answer {line:?}"))?;
    Ok(TcpSession { is_tls, answer })
}

/// One TCP session through `addr` on a fresh connection, over TLS when `tls` is set.
pub async fn tcp_session(
    addr: SocketAddr,
    tls: Option<&TcpTls>,
    timeout: Duration,
) -> anyhow::Result<TcpSession> {
    let fut = async {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("client could not connect to {addr}"))?;
        match tls {
            None => exchange(stream).await,
            Some(t) => {
                let (cfg, _) = client::client_config(
                    &ClientTls {
                        server_name: t.server_name.clone(),
                        roots_pem: t.roots_pem.clone(),
                        client_cert: None,
                        known_sans: t.known_sans.clone(),
                    },
                    Vec::new(),
                )?;
                let name = ServerName::try_from(t.server_name.clone())
                    .with_context(|| format!("server name {:?}", t.server_name))?;
                let s = tokio_rustls::TlsConnector::from(cfg)
                    .connect(name, stream)
                    .await
                    .with_context(|| format!("TLS handshake with SNI {}", t.server_name))?;
                exchange(s).await
            }
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| anyhow::anyhow!("TCP session timed out after {timeout:?}"))?
}

/// Checks a session against a case as upstream's `assertTestMessage` and `IS_TLS` check do.
pub fn check_tcp(case: &TcpCase, s: &TcpSession) -> Result<(), String> {
    let mut errs = Vec::new();
    if s.is_tls != case.backend_is_tls {
        errs.push(format!(
            "backend saw TLS={}, want {}",
            s.is_tls, case.backend_is_tls
        ));
    }
    if s.answer.namespace != case.namespace {
        errs.push(format!(
            "namespace {:?}, want {:?}",
            s.answer.namespace, case.namespace
        ));
    }
    if !s.answer.pod.starts_with(&format!("{}-", case.backend)) {
        errs.push(format!(
            "pod {:?} is not from backend {:?}",
            s.answer.pod, case.backend
        ));
    }
    if !case.hostname.is_empty() {
        let sni = s
            .answer
            .tls
            .as_ref()
            .map(|t| t.server_name.as_str())
            .unwrap_or_default();
        if sni != case.hostname {
            errs.push(format!("backend saw SNI {sni:?}, want {:?}", case.hostname));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("; "))
    }
}

/// Upstream `tcp.EchoSendOnce`: a plain connection, welcome line, `TEST`; the answering pod.
pub async fn tcp_echo_pod(addr: SocketAddr, timeout: Duration) -> anyhow::Result<String> {
    let v = client::tcp_echo_test(addr, timeout).await?;
    match v.get("pod").and_then(serde_json::Value::as_str) {
        Some(p) if !p.is_empty() => Ok(p.to_string()),
        _ => bail!("TCP echo answer without a pod name: {v}"),
    }
}

/// Whether a TCP connection to `addr` can be established (upstream `ExpectAddressBeAvailable`).
pub async fn tcp_connects(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {addr} timed out"))?
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(())
}

/// What one UDP case expects (upstream `udp.ExpectedResponse`); empty fields are not checked.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UdpCase {
    /// The answering backend's `service`.
    #[serde(default)]
    pub service: String,
    /// The answering backend's `namespace`.
    #[serde(default)]
    pub namespace: String,
}

/// One datagram through `addr` and its JSON answer, checked against `case`.
pub async fn udp_round_trip(
    addr: SocketAddr,
    payload: &str,
    case: &UdpCase,
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    let v = client::udp_echo(addr, payload, timeout)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let field = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    if field("request") != payload {
        return Err(format!("answer does not echo the request: {v}"));
    }
    if !case.service.is_empty() && field("service") != case.service {
        return Err(format!(
            "service {:?}, want {:?} (pod {:?})",
            field("service"),
            case.service,
            field("pod")
        ));
    }
    if !case.namespace.is_empty() && field("namespace") != case.namespace {
        return Err(format!(
            "namespace {:?}, want {:?}",
            field("namespace"),
            case.namespace
        ));
    }
    Ok(v)
}

/// Upstream `weight.extractBackendName`: a pod name without its two hash segments.
pub fn backend_of_pod(pod: &str) -> String {
    let parts: Vec<&str> = pod.split('-').collect();
    if parts.len() < 3 {
        pod.to_string()
    } else {
        parts[..parts.len() - 2].join("-")
    }
}

/// Upstream `weight.TestWeightedDistribution`'s verdict over the backends that answered
/// `total` requests: exactly the backends with a positive weight answered, each within ±0.05
/// of its weight.
pub fn check_distribution(
    want: &BTreeMap<String, f64>,
    seen: &BTreeMap<String, f64>,
    total: usize,
) -> Result<(), String> {
    let mut errs = Vec::new();
    for b in seen.keys() {
        if !want.contains_key(b) {
            errs.push(format!("unexpected backend {b}"));
        }
    }
    let active = want.values().filter(|w| **w > 0.0).count();
    if seen.len() != active {
        errs.push(format!(
            "expected {active} backends to receive traffic, but got {}",
            seen.len()
        ));
    }
    for (b, w) in want {
        let got = seen.get(b).copied().unwrap_or(0.0);
        if got == 0.0 && *w != 0.0 {
            errs.push(format!("backend {b} received no traffic"));
            continue;
        }
        let frac = got / total as f64;
        if (frac - w).abs() > 0.05 {
            errs.push(format!("{b}: {frac:.3} not within 0.05 of {w}"));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(is_tls: bool, pod: &str, sni: Option<&str>) -> TcpSession {
        TcpSession {
            is_tls,
            answer: TcpAnswer {
                namespace: "ns".into(),
                pod: pod.into(),
                tls: sni.map(|s| TcpAnswerTls {
                    server_name: s.into(),
                }),
            },
        }
    }

    #[test]
    fn tcp_case_checks_backend_tls_and_sni() {
        let case = TcpCase {
            backend: "tcp-backend".into(),
            namespace: "ns".into(),
            backend_is_tls: true,
            hostname: "abc.example.com".into(),
        };
        let ok = session(true, "tcp-backend-abc12-xyz34", Some("abc.example.com"));
        assert!(check_tcp(&case, &ok).is_ok());
        assert!(check_tcp(&case, &session(false, "tcp-backend-a-b", None)).is_err());
        assert!(check_tcp(&case, &session(true, "tcp-backend-a-b", Some("x.org"))).is_err());
        // The pod must start with "<backend>-", not merely with the backend name.
        assert!(
            check_tcp(
                &case,
                &session(true, "tcp-backend2-a-b", Some("abc.example.com"))
            )
            .is_err()
        );
    }

    #[test]
    fn tcp_case_reads_cases_yaml() {
        let c: TcpCase = serde_yaml::from_str(
            "{backend: tcp-backend, backendIsTLS: true, hostname: abc.example.com, namespace: ns, request: {}}",
        )
        .expect("case");
        assert!(c.backend_is_tls);
        assert_eq!(c.hostname, "abc.example.com");
    }

    #[test]
    fn distribution_follows_upstream() {
        let want: BTreeMap<String, f64> =
            [("a".to_string(), 0.7), ("b".into(), 0.3), ("c".into(), 0.0)]
                .into_iter()
                .collect();
        let seen = |a: f64, b: f64, c: f64| {
            let mut m = BTreeMap::new();
            for (k, v) in [("a", a), ("b", b), ("c", c)] {
                if v > 0.0 {
                    m.insert(k.to_string(), v);
                }
            }
            m
        };
        assert!(check_distribution(&want, &seen(350.0, 150.0, 0.0), 500).is_ok());
        assert!(check_distribution(&want, &seen(340.0, 160.0, 0.0), 500).is_ok());
        // A zero-weight backend must get nothing at all, even within the tolerance.
        assert!(check_distribution(&want, &seen(345.0, 150.0, 5.0), 500).is_err());
        assert!(check_distribution(&want, &seen(400.0, 100.0, 0.0), 500).is_err());
        assert_eq!(
            backend_of_pod("tcp-backend-v1-5d8f9-x2k4p"),
            "tcp-backend-v1"
        );
    }
}
