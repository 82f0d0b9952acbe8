//! The HTTP/3 load generator (`peer-bench h3-load`), since neither wrk nor Debian's h2load
//! speaks QUIC: `conns` QUIC connections (quinn, one UDP socket each) with `streams` concurrent
//! request streams each (h3), `GET` in a loop for the given time on one thread, as `h2load -t1`
//! does. The runner starts it as a child process pinned to the load CPUs (so its CPU counts as
//! load, not as the proxy's) and reads one JSON [`LoadResult`] from its stdout.

use anyhow::{Context, Result, bail};
use bytes::{Buf, Bytes};
use clap::Parser;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::load::LoadResult;
use crate::stats::percentile;

/// The subcommand name (`peer-bench h3-load ...`).
pub const SUBCOMMAND: &str = "h3-load";

/// A request slower than this counts as an error and ends its stream's loop (wrk's `--timeout
/// 5s`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `peer-bench h3-load`: HTTP/3 load against one URL; prints a JSON `LoadResult`.
#[derive(Debug, Parser)]
#[command(name = "peer-bench h3-load")]
pub struct Args {
    /// `https://IP:PORT/PATH` (the host is the address dialled and the name verified).
    #[arg(long)]
    pub url: String,
    /// QUIC connections.
    #[arg(long, default_value_t = 16)]
    pub conns: usize,
    /// Concurrent request streams per connection.
    #[arg(long, default_value_t = 16)]
    pub streams: usize,
    /// Seconds of load (counted from when every connection is up).
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// The server's certificate (PEM), trusted as its own root.
    #[arg(long)]
    pub cert: PathBuf,
}

/// Runs the subcommand with `args` (after the subcommand name).
pub fn main(args: &[String]) -> Result<()> {
    let a = Args::parse_from(std::iter::once(SUBCOMMAND.to_string()).chain(args.iter().cloned()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let r = rt.block_on(load(&a))?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

/// Reads the [`LoadResult`] `h3-load` prints (its last JSON line).
pub fn parse_output(text: &str) -> Result<LoadResult> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("no JSON result in h3-load output")?;
    serde_json::from_str(line).context("h3-load result")
}

/// Latencies and errors, per stream and then summed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tally {
    /// Latency of every 2xx/3xx response (µs, until its body's end).
    pub latencies_us: Vec<u32>,
    /// Transport errors, timeouts and other status codes.
    pub errors: u64,
}

impl Tally {
    /// Adds `other`'s requests.
    pub fn merge(&mut self, mut other: Tally) {
        self.latencies_us.append(&mut other.latencies_us);
        self.errors += other.errors;
    }

    /// The figures for a run that took `elapsed`.
    pub fn result(&self, elapsed: Duration) -> LoadResult {
        let ms: Vec<f64> = self
            .latencies_us
            .iter()
            .map(|&us| f64::from(us) / 1000.0)
            .collect();
        let seconds = elapsed.as_secs_f64();
        let requests = self.latencies_us.len() as u64;
        LoadResult {
            requests,
            seconds,
            rps: if seconds > 0.0 {
                requests as f64 / seconds
            } else {
                0.0
            },
            p50_ms: percentile(&ms, 50.0).unwrap_or(f64::NAN),
            p99_ms: percentile(&ms, 99.0).unwrap_or(f64::NAN),
            errors: self.errors,
        }
    }
}

/// Where and what to request, from an `https://IP:PORT/PATH` URL.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Address dialled.
    pub addr: SocketAddr,
    /// Name the certificate is checked against (an IP here: no SNI, as h2load sends none for
    /// an IP URL).
    pub server_name: String,
    /// The request URI (scheme, authority, path).
    pub uri: http::Uri,
}

impl Target {
    /// Parses `url`.
    pub fn parse(url: &str) -> Result<Target> {
        let uri: http::Uri = url.parse().with_context(|| format!("URL {url:?}"))?;
        if uri.scheme_str() != Some("https") {
            bail!("HTTP/3 needs an https:// URL, not {url:?}");
        }
        let host = uri.host().context("URL without a host")?;
        let port = uri.port_u16().unwrap_or(443);
        let ip: std::net::IpAddr = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .with_context(|| format!("{host:?} is not an IP address"))?;
        Ok(Target {
            addr: SocketAddr::new(ip, port),
            server_name: ip.to_string(),
            uri,
        })
    }
}

type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// One QUIC connection with its h3 driver running.
struct Conn {
    send: Sender,
    _endpoint: quinn::Endpoint,
}

async fn load(a: &Args) -> Result<LoadResult> {
    let target = Target::parse(&a.url)?;
    let tls = client_config(&a.cert)?;
    let mut conns = Vec::with_capacity(a.conns);
    for i in 0..a.conns {
        conns.push(
            connect(&tls, &target)
                .await
                .with_context(|| format!("QUIC connection {i} to {}", target.addr))?,
        );
    }
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(a.seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for c in &conns {
        for _ in 0..a.streams {
            tasks.spawn(stream_loop(c.send.clone(), target.uri.clone(), deadline));
        }
    }
    let mut total = Tally::default();
    while let Some(t) = tasks.join_next().await {
        total.merge(t?);
    }
    Ok(total.result(t0.elapsed()))
}

/// Requests one after another on new streams of one connection until `deadline`; stops at the
/// first transport error or timeout (the connection is then unusable; the error is counted).
async fn stream_loop(mut send: Sender, uri: http::Uri, deadline: Instant) -> Tally {
    let mut t = Tally::default();
    while Instant::now() < deadline {
        let start = Instant::now();
        match tokio::time::timeout(REQUEST_TIMEOUT, get(&mut send, &uri)).await {
            Ok(Ok((status, _))) if (200..400).contains(&status) => {
                let us = start.elapsed().as_micros();
                t.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
            }
            Ok(Ok(_)) => t.errors += 1,
            Ok(Err(_)) | Err(_) => {
                t.errors += 1;
                break;
            }
        }
    }
    t
}

/// One `GET`: the status and the body's length.
async fn get(send: &mut Sender, uri: &http::Uri) -> Result<(u16, usize)> {
    let req = http::Request::get(uri.clone()).body(())?;
    let mut stream = send.send_request(req).await?;
    stream.finish().await?;
    let resp = stream.recv_response().await?;
    let mut len = 0;
    while let Some(chunk) = stream.recv_data().await? {
        len += chunk.remaining();
    }
    Ok((resp.status().as_u16(), len))
}

/// One request on a new connection (for checking what the listener serves): status and body
/// length.
pub fn fetch(url: &str, cert: &Path) -> Result<(u16, usize)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let target = Target::parse(url)?;
        let mut c = connect(&client_config(cert)?, &target).await?;
        let r = tokio::time::timeout(REQUEST_TIMEOUT, get(&mut c.send, &target.uri))
            .await
            .context("no response within 5 s")??;
        drop(c);
        Ok(r)
    })
}

async fn connect(tls: &quinn::ClientConfig, target: &Target) -> Result<Conn> {
    let bind: SocketAddr = match target.addr {
        SocketAddr::V4(_) => ([127, 0, 0, 1], 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::LOCALHOST, 0).into(),
    };
    let mut endpoint = quinn::Endpoint::client(bind)?;
    endpoint.set_default_client_config(tls.clone());
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        endpoint.connect(target.addr, &target.server_name)?,
    )
    .await
    .context("QUIC handshake timed out")??;
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn)).await?;
    tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    Ok(Conn {
        send,
        _endpoint: endpoint,
    })
}

/// TLS 1.3 with ALPN h3, trusting the certificate in `cert` (the benchmark's self-signed one,
/// an end-entity certificate and its own root).
fn client_config(cert: &Path) -> Result<quinn::ClientConfig> {
    let pem = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    Ok(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_merge_into_rate_percentiles_and_errors() {
        let mut total = Tally::default();
        total.merge(Tally {
            latencies_us: (1..=50).map(|i| i * 100).collect(),
            errors: 1,
        });
        total.merge(Tally {
            latencies_us: (51..=100).map(|i| i * 100).collect(),
            errors: 2,
        });
        let r = total.result(Duration::from_millis(2500));
        assert_eq!(r.requests, 100);
        assert_eq!(r.errors, 3);
        assert!((r.rps - 40.0).abs() < 1e-9);
        assert!((r.p50_ms - 5.0).abs() < 1e-9, "{}", r.p50_ms);
        assert!((r.p99_ms - 9.9).abs() < 1e-9, "{}", r.p99_ms);
        assert_eq!(r.seconds, 2.5);
        let none = Tally::default().result(Duration::ZERO);
        assert_eq!((none.requests, none.rps), (0, 0.0));
        assert!(none.p99_ms.is_nan());
    }

    #[test]
    fn output_round_trips_and_garbage_is_an_error() {
        let r = Tally {
            latencies_us: vec![800, 1200],
            errors: 0,
        }
        .result(Duration::from_secs(1));
        let text = format!(
            "warning: something\n{}\n",
            serde_json::to_string(&r).unwrap()
        );
        assert_eq!(parse_output(&text).unwrap(), r);
        assert!(parse_output("Error: QUIC connection 0 to 127.0.0.1:1").is_err());
        assert!(parse_output("{not json").is_err());
    }

    #[test]
    fn targets_are_ip_https_urls() {
        let t = Target::parse("https://127.0.0.1:28102/").unwrap();
        assert_eq!(t.addr, "127.0.0.1:28102".parse().unwrap());
        assert_eq!(t.server_name, "127.0.0.1");
        assert_eq!(t.uri.path(), "/");
        let t = Target::parse("https://[::1]/x").unwrap();
        assert_eq!(t.addr, "[::1]:443".parse().unwrap());
        assert!(Target::parse("http://127.0.0.1:1/").is_err());
        assert!(Target::parse("https://bench.example/").is_err());
    }

    #[test]
    fn subcommand_arguments() {
        let a = Args::try_parse_from([
            SUBCOMMAND,
            "--url",
            "https://127.0.0.1:1/",
            "--conns",
            "2",
            "--cert",
            "c.pem",
        ])
        .unwrap();
        assert_eq!((a.conns, a.streams, a.seconds), (2, 16, 5));
    }
}
