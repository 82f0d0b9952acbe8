//! Load generators: wrk (HTTP/1.1, plain and TLS), h2load (HTTP/2, h2c and TLS) and
//! `peer-bench h3-load` (HTTP/3, [`crate::h3load`]), their command lines and the parsing of what
//! they print.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::procs::Pinning;
use crate::stats::percentile;

/// One load run's client-side figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LoadResult {
    /// Completed requests.
    pub requests: u64,
    /// Measured duration (s).
    pub seconds: f64,
    /// Requests per second.
    pub rps: f64,
    /// Median latency (ms).
    pub p50_ms: f64,
    /// 99th percentile latency (ms).
    pub p99_ms: f64,
    /// Socket errors, timeouts, failed requests and non-2xx/3xx responses.
    pub errors: u64,
}

/// A load generator invocation.
#[derive(Debug, Clone)]
pub enum Tool {
    /// wrk, one thread.
    Wrk {
        /// Connections.
        conns: usize,
        /// Send `Connection: close` (a new connection per request).
        close: bool,
        /// Lua script (request generation), if any.
        script: Option<PathBuf>,
    },
    /// h2load, one thread.
    H2load {
        /// Connections.
        conns: usize,
        /// Concurrent streams per connection.
        streams: usize,
    },
    /// `peer-bench h3-load` (quinn + h3), one thread.
    H3 {
        /// QUIC connections.
        conns: usize,
        /// Concurrent request streams per connection.
        streams: usize,
        /// The server's certificate (PEM), which the client trusts as its own root.
        cert: PathBuf,
    },
}

impl Tool {
    /// The tool's name and settings for the report.
    pub fn describe(&self) -> String {
        match self {
            Tool::Wrk {
                conns,
                close,
                script,
            } => {
                let mut s = format!("wrk -t1 -c{conns}");
                if *close {
                    s.push_str(" -H 'Connection: close'");
                }
                if script.is_some() {
                    s.push_str(" -s routes.lua");
                }
                s
            }
            Tool::H2load { conns, streams } => format!("h2load -t1 -c{conns} -m{streams}"),
            Tool::H3 { conns, streams, .. } => {
                format!("peer-bench h3-load (quinn + h3, 1 thread) -c{conns} -m{streams}")
            }
        }
    }

    /// Runs the tool against `url` for `secs` seconds on the load CPUs.
    pub fn run(&self, pin: &Pinning, url: &str, secs: u64, scratch: &Path) -> Result<LoadResult> {
        match self {
            Tool::Wrk {
                conns,
                close,
                script,
            } => {
                let mut cmd = pin.load_cmd("wrk");
                cmd.args([
                    "-t1",
                    &format!("-c{conns}"),
                    &format!("-d{secs}s"),
                    "--latency",
                ]);
                cmd.arg("--timeout").arg("5s");
                if *close {
                    cmd.args(["-H", "Connection: close"]);
                }
                if let Some(s) = script {
                    cmd.arg("-s").arg(s);
                }
                cmd.arg(url);
                let text = stdout_of(cmd, "wrk")?;
                parse_wrk(&text).with_context(|| format!("parsing wrk output:\n{text}"))
            }
            Tool::H2load { conns, streams } => {
                let log = scratch.join("h2load.log");
                let _ = std::fs::remove_file(&log);
                let mut cmd = pin.load_cmd("h2load");
                cmd.args([
                    "-t1",
                    &format!("-c{conns}"),
                    &format!("-m{streams}"),
                    "-D",
                    &secs.to_string(),
                ]);
                cmd.arg(format!("--log-file={}", log.display()));
                cmd.arg(url);
                let text = stdout_of(cmd, "h2load")?;
                let mut r = parse_h2load(&text)
                    .with_context(|| format!("parsing h2load output:\n{text}"))?;
                let lat = read_h2load_log(&log)?;
                r.p50_ms = percentile(&lat, 50.0).unwrap_or(f64::NAN);
                r.p99_ms = percentile(&lat, 99.0).unwrap_or(f64::NAN);
                let _ = std::fs::remove_file(&log);
                Ok(r)
            }
            Tool::H3 {
                conns,
                streams,
                cert,
            } => {
                let exe = std::env::current_exe().context("locating peer-bench")?;
                let mut cmd = pin.load_cmd(exe);
                cmd.args([crate::h3load::SUBCOMMAND, "--url", url]);
                cmd.args(["--conns", &conns.to_string()]);
                cmd.args(["--streams", &streams.to_string()]);
                cmd.args(["--seconds", &secs.to_string()]);
                cmd.arg("--cert").arg(cert);
                let text = stdout_of(cmd, "h3-load")?;
                crate::h3load::parse_output(&text)
            }
        }
    }
}

/// Runs a load generator to its end; its stdout, or an error with everything it printed.
fn stdout_of(mut cmd: std::process::Command, name: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {name}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{name} failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

/// Parses a wrk duration like `812.34us`, `1.20ms`, `2.00s`, `1.00m` into milliseconds.
fn wrk_ms(v: &str) -> Option<f64> {
    let units = [("us", 0.001), ("ms", 1.0), ("s", 1000.0), ("m", 60_000.0)];
    for (u, f) in units {
        if let Some(n) = v.strip_suffix(u) {
            return n.parse::<f64>().ok().map(|x| x * f);
        }
    }
    None
}

/// Parses `wrk --latency` output.
pub fn parse_wrk(text: &str) -> Result<LoadResult> {
    let mut r = LoadResult::default();
    let (mut have_n, mut have_rps) = (false, false);
    for line in text.lines() {
        let t = line.trim();
        let w: Vec<&str> = t.split_whitespace().collect();
        if t.contains(" requests in ") && w.len() >= 4 {
            r.requests = w[0].parse().context("request count")?;
            r.seconds = wrk_ms(w[3].trim_end_matches(',')).context("duration")? / 1000.0;
            have_n = true;
        } else if t.starts_with("Requests/sec:") {
            r.rps = w[1].parse().context("requests/s")?;
            have_rps = true;
        } else if w.first() == Some(&"50%") {
            r.p50_ms = wrk_ms(w[1]).context("p50")?;
        } else if w.first() == Some(&"99%") {
            r.p99_ms = wrk_ms(w[1]).context("p99")?;
        } else if t.starts_with("Socket errors:") {
            // Socket errors: connect 0, read 0, write 0, timeout 0
            r.errors += t
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        } else if t.starts_with("Non-2xx or 3xx responses:") {
            r.errors += w.last().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    if !have_n || !have_rps {
        bail!("no request count or rate in wrk output");
    }
    Ok(r)
}

/// Parses h2load's summary (latency percentiles come from its log file).
pub fn parse_h2load(text: &str) -> Result<LoadResult> {
    let mut r = LoadResult::default();
    let (mut have_fin, mut have_req) = (false, false);
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("finished in ") {
            // finished in 5.00s, 123456.70 req/s, 4.56MB/s
            let parts: Vec<&str> = rest.split(',').map(str::trim).collect();
            r.seconds = wrk_ms(parts[0]).context("duration")? / 1000.0;
            r.rps = parts
                .get(1)
                .and_then(|p| p.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .context("req/s")?;
            have_fin = true;
        } else if let Some(rest) = t.strip_prefix("requests: ") {
            // requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
            for part in rest.split(',') {
                let w: Vec<&str> = part.split_whitespace().collect();
                let (Some(n), Some(what)) = (w.first(), w.get(1)) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match *what {
                    "succeeded" => r.requests = n,
                    "failed" | "errored" | "timeout" => r.errors += n,
                    _ => {}
                }
            }
            have_req = true;
        }
    }
    if !have_fin || !have_req {
        bail!("no summary in h2load output");
    }
    // "succeeded" counts 2xx/3xx responses; "failed" the others (4xx/5xx included).
    Ok(r)
}

/// Latencies (ms) of the 2xx responses in an h2load `--log-file`.
pub fn read_h2load_log(path: &Path) -> Result<Vec<f64>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading h2load log {}", path.display()))?;
    Ok(parse_h2load_log(&text))
}

fn parse_h2load_log(text: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split('\t');
            let _start = it.next()?;
            let status: u16 = it.next()?.parse().ok()?;
            let us: f64 = it.next()?.trim().parse().ok()?;
            (200..300).contains(&status).then_some(us / 1000.0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 5s test @ http://127.0.0.1:28100/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   780.22us  120.00us   5.10ms   90.00%
    Req/Sec    82.00k     1.00k   84.00k    70.00%
  Latency Distribution
     50%  750.00us
     75%  800.00us
     90%    0.90ms
     99%    1.52ms
  412345 requests in 5.00s, 60.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 12
Requests/sec:  82469.00
Transfer/sec:     12.00MB
";

    #[test]
    fn wrk_summary_with_errors() {
        let r = parse_wrk(WRK).unwrap();
        assert_eq!(r.requests, 412_345);
        assert_eq!(r.seconds, 5.0);
        assert_eq!(r.rps, 82_469.0);
        assert!((r.p50_ms - 0.75).abs() < 1e-9);
        assert!((r.p99_ms - 1.52).abs() < 1e-9);
        assert_eq!(r.errors, 15);
    }

    #[test]
    fn wrk_output_without_a_rate_is_an_error() {
        assert!(parse_wrk("unable to connect to 127.0.0.1:1 Connection refused").is_err());
    }

    #[test]
    fn wrk_units() {
        assert_eq!(wrk_ms("2.00s"), Some(2000.0));
        assert_eq!(wrk_ms("1.00m"), Some(60_000.0));
        assert_eq!(wrk_ms("10.5ms"), Some(10.5));
        assert_eq!(wrk_ms("abc"), None);
    }

    const H2LOAD: &str = "starting benchmark...
spawning thread #0: 16 total client(s). Timing-based test with 0s of warm-up time and 5s of main duration for measurements.
Main benchmark duration is started.

finished in 5.00s, 95432.40 req/s, 3.21MB/s
requests: 477162 total, 477418 started, 477162 done, 477150 succeeded, 12 failed, 0 errored, 0 timeout
status codes: 477150 2xx, 0 3xx, 3 4xx, 0 5xx
traffic: 16.06MB (16838954) total, 1.37MB (1431486) headers (space savings 93.18%), 29.12MB (30538368) data
";

    #[test]
    fn h2load_summary() {
        let r = parse_h2load(H2LOAD).unwrap();
        assert_eq!(r.requests, 477_150);
        assert_eq!(r.seconds, 5.0);
        assert_eq!(r.rps, 95_432.4);
        assert_eq!(r.errors, 12);
        assert!(parse_h2load("connect failed").is_err());
    }

    #[test]
    fn h2load_log_keeps_only_2xx() {
        let log =
            "1700000000000000\t200\t1500\n1700000000000001\t404\t90\n1700000000000002\t200\t500\n";
        assert_eq!(parse_h2load_log(log), vec![1.5, 0.5]);
    }
}
