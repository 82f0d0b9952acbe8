//! The report: Markdown tables (full results and the README section), the targets and whether
//! they are met, SVG plots and the raw numbers as JSON.

use anyhow::Result;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

use crate::peers::Peer;
use crate::scenarios::{
    MemorySummary, Outcome, ReloadSummary, ScenarioResult, Settings, Summary, Unsupported,
};
use crate::svg::{Bar, Group, bar_chart};

/// The machine the run was on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// `nproc`.
    pub nproc: usize,
    /// CPU model from /proc/cpuinfo.
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
    /// Memory (GiB).
    pub memory_gib: f64,
    /// /proc/loadavg when the run started.
    pub loadavg_at_start: String,
}

/// Versions of everything measured.
#[derive(Debug, Clone, Serialize)]
pub struct Versions {
    /// Sluice's git revision (with `-dirty` when the tree had changes).
    pub sluice: String,
    /// `nginx -v`.
    pub nginx: String,
    /// `haproxy -v`, first line.
    pub haproxy: String,
    /// `wrk -v`, first line.
    pub wrk: String,
    /// `h2load --version`.
    pub h2load: String,
    /// `openssl version` (nginx's and HAProxy's TLS library on Debian).
    pub openssl: String,
}

/// The backend loaded directly (no proxy), to show it is not the limit.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    /// Requests/s of wrk -c64 straight at the backend, both on the load CPUs.
    pub rps: f64,
    /// Load CPUs busy fraction meanwhile.
    pub load_core_busy: Option<f64>,
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// UTC start time.
    pub started: String,
    /// `cargo xtask bench` arguments.
    pub command: String,
    /// Machine.
    pub machine: Machine,
    /// Versions.
    pub versions: Versions,
    /// Settings.
    pub settings: Settings,
    /// CPU pinning, as text.
    pub pinning: String,
    /// Backend loaded directly.
    pub baseline: Option<Baseline>,
    /// What each peer's HTTPS listener negotiates with an OpenSSL client.
    pub tls: Vec<String>,
    /// Peers measured.
    pub peers: Vec<Peer>,
    /// Peers or protocols left out, with the reason.
    pub not_measured: Vec<String>,
    /// Per scenario.
    pub scenarios: Vec<ScenarioResult>,
}

/// A target from the issue and where Sluice stands.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// The target.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// Met, missed, or not measured in this run.
    pub verdict: Verdict,
}

/// Whether a target is met.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub enum Verdict {
    /// Met.
    Met,
    /// Missed.
    Missed,
    /// Not measured in this run.
    NotMeasured,
    /// Measured, but no peer can be compared (none supports it).
    NoPeer,
}

impl Verdict {
    fn text(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "**missed**",
            Verdict::NotMeasured => "not measured",
            Verdict::NoPeer => "measured, no peer supports it",
        }
    }
    fn of(ok: bool) -> Verdict {
        if ok { Verdict::Met } else { Verdict::Missed }
    }
}

fn throughput<'a>(r: &'a Report, name: &str) -> Option<&'a [Summary]> {
    r.scenarios
        .iter()
        .find(|s| s.name == name)
        .and_then(|s| match &s.outcome {
            Outcome::Throughput { peers, .. } => Some(peers.as_slice()),
            _ => None,
        })
}

fn reloads<'a>(r: &'a Report, name: &str) -> Option<&'a [ReloadSummary]> {
    r.scenarios
        .iter()
        .find(|s| s.name == name)
        .and_then(|s| match &s.outcome {
            Outcome::Reload { peers, .. } => Some(peers.as_slice()),
            _ => None,
        })
}

/// The HTTP/3 scenario's figures: over QUIC, over HTTP/2 + TLS, and the peers left out.
fn http3(r: &Report) -> Option<(&Summary, &Summary, &[Unsupported])> {
    r.scenarios.iter().find_map(|s| match &s.outcome {
        Outcome::Http3 {
            h3,
            h2,
            unsupported,
            ..
        } => Some((&**h3, &**h2, unsupported.as_slice())),
        _ => None,
    })
}

/// What QUIC costs against TCP + TLS, one sentence.
fn http3_sentence(r: &Report) -> Option<String> {
    let (h3, h2, _) = http3(r)?;
    Some(format!(
        "Sluice over HTTP/3 served {:.0} req/s ({} its HTTP/2 + TLS rate on the same listener, \
         {:.0} req/s) with p99 {:.2} ms (against {:.2} ms), at {:.1} µs of proxy CPU per request \
         ({} the {:.1} µs over HTTP/2 + TLS).",
        h3.rps,
        ratio(h3.rps, h2.rps),
        h2.rps,
        h3.p99_ms,
        h2.p99_ms,
        h3.cpu_us(),
        ratio(h3.cpu_us(), h2.cpu_us()),
        h2.cpu_us()
    ))
}

fn memory(r: &Report) -> Option<&[MemorySummary]> {
    r.scenarios.iter().find_map(|s| match &s.outcome {
        Outcome::Memory { peers } => Some(peers.as_slice()),
        _ => None,
    })
}

/// `b`'s CPU per request over `a`'s, for each round both ran (in round order).
fn paired_cpu_ratios(a: &Summary, b: &Summary) -> Vec<f64> {
    let cpu = |s: &crate::scenarios::Sample| s.user_us + s.sys_us;
    b.samples
        .iter()
        .filter_map(|sb| {
            let sa = a.samples.iter().find(|sa| sa.round == sb.round)?;
            (cpu(sa) > 0.0).then(|| cpu(sb) / cpu(sa))
        })
        .collect()
}

fn get<T>(list: &[T], peer: Peer, f: impl Fn(&T) -> Peer) -> Option<&T> {
    list.iter().find(|x| f(x) == peer)
}

/// Evaluates the targets against this run.
pub fn targets(r: &Report) -> Vec<Target> {
    let mut out = vec![];
    // The comparisons with the peers, for Sluice alone and (when run) with its eBPF datapath.
    for me in [Peer::Sluice, Peer::SluiceEbpf] {
        if r.peers.contains(&me) {
            peer_targets(r, me, &mut out);
        }
    }
    // HTTP/3: only Sluice serves it, so there is nothing to beat; the figures are reported.
    {
        let target = "HTTP/3 (QUIC), 16 connections x 16 streams".to_string();
        match http3(r) {
            Some((h3, h2, _)) => out.push(Target {
                target,
                measured: format!(
                    "Sluice {:.0} req/s, p99 {:.2} ms, {:.1} µs/req; HTTP/2 + TLS on the same listener {:.0} req/s, p99 {:.2} ms, {:.1} µs/req",
                    h3.rps,
                    h3.p99_ms,
                    h3.cpu_us(),
                    h2.rps,
                    h2.p99_ms,
                    h2.cpu_us()
                ),
                verdict: Verdict::NoPeer,
            }),
            None => out.push(not_measured(target)),
        }
    }
    // 10,000 routes: per-request cost within 10% of 10 routes.
    {
        let target = "10,000 routes: per-request cost within 10% of the 10-route case".to_string();
        let a = throughput(r, "routes-10").and_then(|p| get(p, Peer::Sluice, |x| x.peer));
        let b = throughput(r, "routes-10000").and_then(|p| get(p, Peer::Sluice, |x| x.peer));
        match (a, b) {
            (Some(a), Some(b)) => {
                // The two run back to back in each round (see scenarios::ALTERNATED): the
                // median of the rounds' ratios leaves out drift between rounds.
                let paired = paired_cpu_ratios(a, b);
                let ratio =
                    crate::stats::median(&paired).unwrap_or_else(|| b.cpu_us() / a.cpu_us());
                out.push(Target {
                    target,
                    measured: format!(
                        "CPU/request {:.2} us at 10,000 vs {:.2} us at 10; {}; req/s {:.0} vs {:.0}",
                        b.cpu_us(),
                        a.cpu_us(),
                        if paired.is_empty() {
                            format!("{:+.1}%", (ratio - 1.0) * 100.0)
                        } else {
                            format!(
                                "round by round {}, median {:+.1}%",
                                paired
                                    .iter()
                                    .map(|r| format!("{:+.1}%", (r - 1.0) * 100.0))
                                    .collect::<Vec<_>>()
                                    .join(" "),
                                (ratio - 1.0) * 100.0
                            )
                        },
                        b.rps,
                        a.rps
                    ),
                    verdict: Verdict::of(ratio <= 1.10),
                });
            }
            _ => out.push(not_measured(target)),
        }
    }
    // Route change serving within 100 ms.
    for (name, n) in [("reload-10", "10"), ("reload-10000", "10,000")] {
        let target = format!("route change serving within 100 ms ({n} routes)");
        match reloads(r, name).and_then(|p| get(p, Peer::Sluice, |x| x.peer)) {
            Some(s) => out.push(Target {
                target,
                measured: format!(
                    "median {:.1} ms, slowest {:.1} ms, {} failed",
                    s.median_ms, s.max_ms, s.failures
                ),
                verdict: Verdict::of(s.max_ms <= 100.0 && s.failures == 0),
            }),
            None => out.push(not_measured(target)),
        }
    }
    // Memory per idle connection below every peer.
    out.push(memory_target(
        r,
        "memory per idle connection lower than every peer's".to_string(),
    ));
    out
}

/// `me` on HTTP/1.1 keep-alive with 64 connections against each of `peers` that ran: at least
/// `ratio` times its req/s with a p99 no higher (medians over the rounds, with their range).
fn keepalive_target(r: &Report, me: Peer, target: String, ratio: f64, peers: &[Peer]) -> Target {
    let Some(p) = throughput(r, crate::scenarios::P99_TARGET) else {
        return not_measured(target);
    };
    let others: Vec<&Summary> = p.iter().filter(|x| peers.contains(&x.peer)).collect();
    let Some(s) = get(p, me, |x| x.peer).filter(|_| !others.is_empty()) else {
        return not_measured(target);
    };
    let mut parts = vec![];
    let mut ok = true;
    for o in &others {
        let rr = s.rps / o.rps;
        ok &= rr >= ratio && s.p99_ms <= o.p99_ms;
        let ((s_lo, s_hi), (o_lo, o_hi)) = (s.p99_range(), o.p99_range());
        parts.push(format!(
            "{rr:.2}x {} req/s, p99 {:.2} vs {:.2} ms (rounds {s_lo:.2}-{s_hi:.2} vs {o_lo:.2}-{o_hi:.2})",
            o.peer.name(),
            s.p99_ms,
            o.p99_ms
        ));
    }
    Target {
        target,
        measured: parts.join("; "),
        verdict: Verdict::of(ok),
    }
}

/// `me`'s capacity on HTTP/1.1 keep-alive with 64 connections (req/s per proxy core, the
/// inverse of CPU per request) against every peer: at least 1.3x each.
fn cpu_target(r: &Report, me: Peer, target: String) -> Target {
    let Some(p) = throughput(r, "h1-keepalive-64") else {
        return not_measured(target);
    };
    let Some(s) = get(p, me, |x| x.peer) else {
        return not_measured(target);
    };
    let others: Vec<&Summary> = p.iter().filter(|x| !x.peer.is_sluice()).collect();
    let ok = !others.is_empty() && others.iter().all(|o| s.capacity() >= 1.3 * o.capacity());
    let measured = others
        .iter()
        .map(|o| {
            format!(
                "{:.2}x {} ({:.2} vs {:.2} µs/req)",
                s.capacity() / o.capacity(),
                o.peer.name(),
                s.cpu_us(),
                o.cpu_us()
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    Target {
        target,
        measured,
        verdict: Verdict::of(ok),
    }
}

/// Sluice's memory per idle connection against every peer's: lower than each.
fn memory_target(r: &Report, target: String) -> Target {
    let Some(p) = memory(r) else {
        return not_measured(target);
    };
    let Some(s) = get(p, Peer::Sluice, |x| x.peer) else {
        return not_measured(target);
    };
    let others: Vec<&MemorySummary> = p.iter().filter(|x| !x.peer.is_sluice()).collect();
    let ok = others.iter().all(|o| s.bytes_per_conn < o.bytes_per_conn);
    let mut measured = format!("Sluice {:.0} B", s.bytes_per_conn);
    for o in others {
        let _ = write!(measured, ", {} {:.0} B", o.peer.name(), o.bytes_per_conn);
    }
    Target {
        target,
        measured,
        verdict: Verdict::of(ok),
    }
}

/// The targets that compare `me` (Sluice, with or without its datapath) with nginx and HAProxy.
fn peer_targets(r: &Report, me: Peer, out: &mut Vec<Target>) {
    let who = match me {
        Peer::SluiceEbpf => " (Sluice with its eBPF datapath)",
        _ => "",
    };
    // HTTP/1.1 keep-alive 64, the standalone gateway's target: nginx's req/s, p99 no higher.
    out.push(keepalive_target(
        r,
        me,
        format!(
            "HTTP/1.1 keep-alive, 64 connections: req/s >= nginx, p99 no higher (standalone gateway){who}"
        ),
        1.0,
        &[Peer::Nginx],
    ));
    // The benchmark target: 1.3x req/s of each peer, p99 no higher.
    out.push(keepalive_target(
        r,
        me,
        format!(
            "HTTP/1.1 keep-alive, 64 connections: req/s >= 1.3x nginx and 1.3x HAProxy, p99 no higher than either{who}"
        ),
        1.3,
        &[Peer::Nginx, Peer::Haproxy],
    ));
    // The same target by CPU per request, which a saturated load generator does not cap.
    out.push(cpu_target(
        r,
        me,
        format!(
            "HTTP/1.1 keep-alive, 64 connections, by CPU per request: req/s per proxy core >= 1.3x nginx and 1.3x HAProxy{who}"
        ),
    ));
    // HTTP/2 and TLS: at least equal to the better peer.
    for (name, what) in [
        ("h2c", "HTTP/2 cleartext"),
        ("tls-h1", "TLS, HTTP/1.1 keep-alive"),
        ("tls-h2", "TLS, HTTP/2"),
        ("tls-new-conn", "TLS, handshake per request"),
    ] {
        let target = format!("{what}: req/s at least equal to the better peer{who}");
        let Some(p) = throughput(r, name) else {
            out.push(not_measured(target));
            continue;
        };
        let s = get(p, me, |x| x.peer);
        let best = p
            .iter()
            .filter(|x| !x.peer.is_sluice())
            .max_by(|a, b| a.rps.total_cmp(&b.rps));
        match (s, best) {
            (Some(s), Some(b)) => out.push(Target {
                target,
                measured: format!(
                    "{} {:.0} req/s, best peer {} {:.0} ({:.2}x)",
                    me.name(),
                    s.rps,
                    b.peer.name(),
                    b.rps,
                    s.rps / b.rps
                ),
                // Within run-to-run noise (1%) counts as equal.
                verdict: Verdict::of(s.rps >= 0.99 * b.rps),
            }),
            _ => out.push(not_measured(target)),
        }
    }
}

fn not_measured(target: String) -> Target {
    Target {
        target,
        measured: "-".into(),
        verdict: Verdict::NotMeasured,
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{:.0}%", x * 100.0))
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

fn header(r: &Report, s: &mut String) {
    let m = &r.machine;
    let _ = writeln!(
        s,
        "Machine: {} CPUs ({}), {:.0} GiB, Linux {}; load average at start {}.",
        m.nproc, m.cpu_model, m.memory_gib, m.kernel, m.loadavg_at_start
    );
    let v = &r.versions;
    let _ = writeln!(
        s,
        "Peers: Sluice {}, {}, {} ({}). Load: {}, {}.",
        v.sluice, v.nginx, v.haproxy, v.openssl, v.wrk, v.h2load
    );
    let st = &r.settings;
    let _ = writeln!(
        s,
        "Settings: one proxy worker each (Sluice `--workers 1`, nginx `worker_processes 1`, HAProxy \
         `nbthread 1`), keep-alive to clients and a pooled keep-alive upstream, no access log, \
         X-Forwarded-For/-Proto added by all; {}; {} round(s) of {} s per scenario ({} for {}, \
         whose p99 is a target, and for {}, alternated round by round, whose ratio is a \
         target), peers alternated (A B C, B C A, ...) after a {} s warm-up each; medians \
         reported. Run {} with `{}`.",
        r.pinning,
        st.rounds,
        st.seconds,
        st.rounds_for(crate::scenarios::P99_TARGET),
        crate::scenarios::P99_TARGET,
        crate::scenarios::ALTERNATED
            .iter()
            .map(|pair| pair.join(" + "))
            .collect::<Vec<_>>()
            .join(", "),
        st.warmup_seconds,
        r.started,
        r.command
    );
    if !r.tls.is_empty() {
        let _ = writeln!(
            s,
            "TLS: a self-signed ECDSA P-256 certificate for all; with an OpenSSL client: {}.",
            r.tls.join("; ")
        );
    }
    if let Some(b) = &r.baseline {
        let _ = writeln!(
            s,
            "Backend: nginx (1 worker, on the load CPU) answering a 64-byte body; loaded directly \
             with wrk -c64 it serves {:.0} req/s with the load CPU {} busy, so it is not the \
             limit of any proxied run below (see the load-core column).",
            b.rps,
            pct(b.load_core_busy)
        );
    }
    s.push('\n');
}

fn throughput_table(r: &Report, s: &mut String) {
    let _ = writeln!(
        s,
        "| scenario | proxy | req/s | p50 ms | p99 ms | CPU µs/req (user + sys) | req/s per proxy core | proxy CPU (cores) | load core busy | other load (cores) | errors |"
    );
    let _ = writeln!(s, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for sc in &r.scenarios {
        match &sc.outcome {
            Outcome::Throughput { peers, .. } => {
                for p in peers {
                    throughput_row(s, &sc.name, p.peer.name(), p);
                }
            }
            Outcome::Http3 {
                h3,
                h2,
                unsupported,
                ..
            } => {
                throughput_row(s, &sc.name, "sluice (HTTP/3)", h3);
                throughput_row(s, &sc.name, "sluice (HTTP/2 + TLS, same listener)", h2);
                for u in unsupported {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | - | - | - | - | - | - | - | - |",
                        sc.name,
                        u.peer.name(),
                        u.reason
                    );
                }
            }
            _ => {}
        }
    }
    s.push('\n');
}

fn throughput_row(s: &mut String, scenario: &str, proxy: &str, p: &Summary) {
    let _ = writeln!(
        s,
        "| {scenario} | {proxy} | {:.0} | {:.2} | {:.2} | {:.2} ({:.2} + {:.2}) | {:.0} | {:.2} | {} | {:.2} | {} |",
        p.rps,
        p.p50_ms,
        p.p99_ms,
        p.cpu_us(),
        p.user_us,
        p.sys_us,
        p.capacity(),
        p.proxy_cores,
        pct(p.load_core_busy),
        p.other_cores,
        p.errors
    );
}

fn ratio_table(r: &Report, s: &mut String) {
    let others: Vec<Peer> = r.peers.iter().copied().filter(|p| !p.is_sluice()).collect();
    let any = r
        .scenarios
        .iter()
        .any(|sc| matches!(sc.outcome, Outcome::Throughput { .. }));
    if others.is_empty() || !r.peers.iter().any(|p| p.is_sluice()) || !any {
        return;
    }
    let mut head = "| scenario |".to_string();
    let mut line = "|---|".to_string();
    for what in ["req/s", "p99", "CPU/req"] {
        for o in &others {
            let _ = write!(head, " {what} vs {} |", o.name());
            line.push_str("--:|");
        }
    }
    let _ = writeln!(s, "{head}\n{line}");
    for (sc, who) in r.scenarios.iter().flat_map(|sc| {
        [Peer::Sluice, Peer::SluiceEbpf]
            .into_iter()
            .map(move |who| (sc, who))
    }) {
        if let Outcome::Throughput { peers, .. } = &sc.outcome {
            let Some(me) = get(peers, who, |x| x.peer) else {
                continue;
            };
            let mut row = match who {
                Peer::Sluice => format!("| {} |", sc.name),
                _ => format!("| {} ({}) |", sc.name, who.name()),
            };
            for f in [
                (|x: &Summary| x.rps) as fn(&Summary) -> f64,
                |x| x.p99_ms,
                |x| x.cpu_us(),
            ] {
                for o in &others {
                    let v = get(peers, *o, |x| x.peer).map_or("-".into(), |p| ratio(f(me), f(p)));
                    let _ = write!(row, " {v} |");
                }
            }
            let _ = writeln!(s, "{row}");
        }
    }
    s.push('\n');
}

fn reload_table(r: &Report, s: &mut String) {
    let mut any = false;
    for sc in &r.scenarios {
        if let Outcome::Reload { routes, peers } = &sc.outcome {
            if !any {
                let _ = writeln!(
                    s,
                    "| routes | proxy | change to serving, median ms | slowest ms | change command ms | proxy busy after the change, ms | never served |"
                );
                let _ = writeln!(s, "|--:|---|--:|--:|--:|--:|--:|");
                any = true;
            }
            for p in peers {
                let _ = writeln!(
                    s,
                    "| {routes} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {} |",
                    p.peer.name(),
                    p.median_ms,
                    p.max_ms,
                    p.command_ms,
                    p.busy_ms,
                    p.failures
                );
            }
        }
    }
    if any {
        s.push('\n');
    }
}

fn memory_table(r: &Report, s: &mut String) {
    if let Some(p) = memory(r) {
        let _ = writeln!(
            s,
            "| proxy | idle connections | RSS before (MiB) | RSS with them open (MiB) | bytes per idle connection |"
        );
        let _ = writeln!(s, "|---|--:|--:|--:|--:|");
        for m in p {
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} | {:.1} | {:.0} |",
                m.peer.name(),
                m.conns,
                m.rss_before_kib / 1024.0,
                m.rss_open_kib / 1024.0,
                m.bytes_per_conn
            );
        }
        s.push('\n');
    }
}

fn targets_table(r: &Report, s: &mut String) {
    let _ = writeln!(s, "| target | measured | verdict |\n|---|---|---|");
    for t in targets(r) {
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            t.target,
            t.measured,
            t.verdict.text()
        );
    }
    s.push('\n');
}

fn other_outcomes(r: &Report, s: &mut String) {
    for n in &r.not_measured {
        let _ = writeln!(s, "- {n}");
    }
    for sc in &r.scenarios {
        match &sc.outcome {
            Outcome::Slot { reason } => {
                let _ = writeln!(s, "- `{}` ({}): {reason}", sc.name, sc.title);
            }
            Outcome::Failed { error } => {
                let _ = writeln!(s, "- `{}` ({}) FAILED: {error}", sc.name, sc.title);
            }
            Outcome::Http3 { unsupported, .. } => {
                for u in unsupported {
                    let _ = writeln!(s, "- `{}`, {}: {}.", sc.name, u.peer.name(), u.reason);
                }
            }
            _ => {}
        }
    }
    s.push('\n');
}

/// The full results page.
pub fn markdown(r: &Report, plot_prefix: &str) -> String {
    let mut s = String::from("# Sluice against nginx and HAProxy\n\n");
    s.push_str(
        "Generated by `cargo xtask bench`; do not edit. How to read it: `benches/README.md`.\n\n",
    );
    header(r, &mut s);
    s.push_str("## Targets\n\n");
    targets_table(r, &mut s);
    s.push_str("## Throughput, latency, CPU per request\n\n");
    s.push_str("Medians over the rounds. CPU per request is the proxy's user + system time (from /proc, all its processes and threads) divided by the requests completed; \"req/s per proxy core\" is its inverse, what one core could serve with the proxy as the only bottleneck. \"proxy CPU\" is that time over the run's wall time: near 1.00 the proxy was the bottleneck. \"load core busy\" near 100% means the load generator and backend were. \"other load\" is CPU used by anything else on the machine during the run: when it is well above zero, requests/s and latency of that run are disturbed, CPU per request much less so.\n\n");
    throughput_table(r, &mut s);
    s.push_str("### Sluice relative to each peer\n\nRows marked (sluice-ebpf) are Sluice with its eBPF datapath. Above 1.00x is better for req/s, below 1.00x is better for p99 and CPU/req.\n\n");
    ratio_table(r, &mut s);
    if let Some(h3) = http3_sentence(r) {
        let _ = writeln!(
            s,
            "### HTTP/3\n\nOnly Sluice serves HTTP/3 here, so `h3` compares it with itself over HTTP/2 + TLS (h2load, the same connections and streams, the same listener over TCP), alternated round by round; the HTTP/3 load generator is `peer-bench h3-load` (quinn + h3, one thread on the load CPU). {h3}\n"
        );
    }
    s.push_str("## Route change to serving\n\nFrom the change (Sluice: a new HTTPRoute file in the watched directory; nginx: a server block and `nginx -s reload`; HAProxy: a line in the host map, `haproxy -c` and SIGUSR2 to the master, as `systemctl reload haproxy` does) to the first 200 for the new host on a new connection, polled every millisecond. Every change starts from a settled proxy; \"busy after the change\" is when the proxy's processes last used CPU for it (work after serving delays the next change).\n\n");
    reload_table(r, &mut s);
    s.push_str("## Memory per idle connection\n\nResident memory of the proxy's processes before and after opening idle HTTP/1.1 keep-alive connections (each served one request first), divided by the connections.\n\n");
    memory_table(r, &mut s);
    s.push_str("## Not measured\n\n");
    other_outcomes(r, &mut s);
    s.push_str("## Plots\n\n");
    for (f, t) in PLOTS {
        let _ = writeln!(s, "![{t}]({plot_prefix}{f})");
    }
    s
}

/// The README's performance section (links relative to the repository root).
pub fn readme_section(r: &Report) -> String {
    let mut s = String::new();
    s.push_str("<!-- Generated by `cargo xtask bench` into benches/results/README-section.md; do not edit by hand. -->\n");
    s.push_str("Sluice against nginx and HAProxy, side by side in one run on one machine (`cargo xtask bench`; method and how to read the numbers in [benches/README.md](benches/README.md), every figure in [benches/results/results.md](benches/results/results.md)).\n\n");
    header(r, &mut s);
    let peers: Vec<Peer> = r.peers.clone();
    let mut head = "| scenario |".to_string();
    let mut line = "|---|".to_string();
    for p in &peers {
        let _ = write!(head, " {} req/s (p99 ms, CPU µs/req) |", p.name());
        line.push_str("--:|");
    }
    let _ = writeln!(s, "{head}\n{line}");
    let cell = |x: &Summary| format!(" {:.0} ({:.2}, {:.1}) |", x.rps, x.p99_ms, x.cpu_us());
    for sc in &r.scenarios {
        match &sc.outcome {
            Outcome::Throughput { peers: ps, .. } => {
                let mut row = format!("| {} |", sc.title);
                for p in &peers {
                    match get(ps, *p, |x| x.peer) {
                        Some(x) => row.push_str(&cell(x)),
                        None => row.push_str(" - |"),
                    }
                }
                let _ = writeln!(s, "{row}");
            }
            Outcome::Http3 {
                h3,
                h2,
                unsupported,
                ..
            } => {
                for (what, x) in [
                    ("HTTP/3 (QUIC)", h3),
                    ("HTTP/2 + TLS on the HTTP/3 listener", h2),
                ] {
                    let mut row = format!("| {what}, 16 connections x 16 streams |");
                    for p in &peers {
                        if *p == Peer::Sluice {
                            row.push_str(&cell(x));
                        } else if let Some(u) = get(unsupported, *p, |u| u.peer) {
                            let _ = write!(row, " {} |", u.reason);
                        } else {
                            row.push_str(" - |");
                        }
                    }
                    let _ = writeln!(s, "{row}");
                }
            }
            _ => {}
        }
    }
    s.push('\n');
    if let Some(h3) = http3_sentence(r) {
        let _ = writeln!(s, "{h3}\n");
    }
    reload_table(r, &mut s);
    memory_table(r, &mut s);
    s.push_str("Targets:\n\n");
    targets_table(r, &mut s);
    other_outcomes(r, &mut s);
    for (f, t) in PLOTS {
        let _ = writeln!(s, "![{t}](benches/results/{f})");
    }
    s
}

/// Plot files and their titles.
pub const PLOTS: &[(&str, &str)] = &[
    ("throughput.svg", "Requests per second"),
    ("cpu.svg", "Proxy CPU per request"),
    ("latency.svg", "p99 latency"),
    ("reload.svg", "Route change to serving"),
    ("memory.svg", "Memory per idle connection"),
];

fn si(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Writes the SVG plots into `dir`.
pub fn write_plots(r: &Report, dir: &Path) -> Result<()> {
    let sub = format!(
        "{} CPUs ({}), one proxy worker, medians of {} rounds; each scenario scaled to its largest value",
        r.machine.nproc, r.machine.cpu_model, r.settings.rounds
    );
    let mut rps = vec![];
    let mut cpu = vec![];
    let mut lat = vec![];
    for sc in &r.scenarios {
        if let Outcome::Throughput { peers, .. } = &sc.outcome {
            let bars = |f: &dyn Fn(&Summary) -> (Vec<f64>, String)| Group {
                label: sc.name.clone(),
                bars: peers
                    .iter()
                    .map(|p| {
                        let (segments, label) = f(p);
                        Bar {
                            series: p.peer.name().into(),
                            segments,
                            label,
                        }
                    })
                    .collect(),
            };
            rps.push(bars(&|p| (vec![p.rps], format!("{} req/s", si(p.rps)))));
            cpu.push(bars(&|p| {
                (
                    vec![p.user_us, p.sys_us],
                    format!("{:.2} + {:.2} µs", p.user_us, p.sys_us),
                )
            }));
            lat.push(bars(&|p| (vec![p.p99_ms], format!("{:.2} ms", p.p99_ms))));
        }
        if let Outcome::Http3 { h3, h2, .. } = &sc.outcome {
            for (label, p) in [("h3 (QUIC)", h3), ("h3: HTTP/2 + TLS", h2)] {
                let one = |segments: Vec<f64>, text: String| Group {
                    label: label.into(),
                    bars: vec![Bar {
                        series: p.peer.name().into(),
                        segments,
                        label: text,
                    }],
                };
                rps.push(one(vec![p.rps], format!("{} req/s", si(p.rps))));
                cpu.push(one(
                    vec![p.user_us, p.sys_us],
                    format!("{:.2} + {:.2} µs", p.user_us, p.sys_us),
                ));
                lat.push(one(vec![p.p99_ms], format!("{:.2} ms", p.p99_ms)));
            }
        }
    }
    std::fs::write(
        dir.join("throughput.svg"),
        bar_chart("Requests per second (higher is better)", &sub, &rps, &[]),
    )?;
    std::fs::write(
        dir.join("cpu.svg"),
        bar_chart(
            "Proxy CPU time per request (lower is better)",
            &sub,
            &cpu,
            &["user", "system"],
        ),
    )?;
    std::fs::write(
        dir.join("latency.svg"),
        bar_chart("p99 latency (lower is better)", &sub, &lat, &[]),
    )?;
    let mut rel = vec![];
    for sc in &r.scenarios {
        if let Outcome::Reload { routes, peers } = &sc.outcome {
            rel.push(Group {
                label: format!("{routes} routes"),
                bars: peers
                    .iter()
                    .map(|p| Bar {
                        series: p.peer.name().into(),
                        segments: vec![p.median_ms],
                        label: format!("{:.1} ms (slowest {:.1})", p.median_ms, p.max_ms),
                    })
                    .collect(),
            });
        }
    }
    std::fs::write(
        dir.join("reload.svg"),
        bar_chart(
            "Route change to the new route serving, median (lower is better)",
            &sub,
            &rel,
            &[],
        ),
    )?;
    let mem: Vec<Group> = memory(r)
        .map(|p| {
            vec![Group {
                label: format!("{} idle connections", p.first().map_or(0, |m| m.conns)),
                bars: p
                    .iter()
                    .map(|m| Bar {
                        series: m.peer.name().into(),
                        segments: vec![m.bytes_per_conn],
                        label: format!("{:.0} bytes", m.bytes_per_conn),
                    })
                    .collect(),
            }]
        })
        .unwrap_or_default();
    std::fs::write(
        dir.join("memory.svg"),
        bar_chart(
            "Resident memory per idle connection (lower is better)",
            &sub,
            &mem,
            &[],
        ),
    )?;
    Ok(())
}

/// Writes results.md, README-section.md, results.json and the plots into `dir`.
pub fn write_all(r: &Report, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("results.md"), markdown(r, ""))?;
    std::fs::write(dir.join("README-section.md"), readme_section(r))?;
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(r)?)?;
    write_plots(r, dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::LoadResult;
    use crate::scenarios::Sample;

    fn summary(peer: Peer, rps: f64, p99: f64, user: f64, sys: f64) -> Summary {
        Summary {
            peer,
            rps,
            p50_ms: p99 / 2.0,
            p99_ms: p99,
            user_us: user,
            sys_us: sys,
            proxy_cores: 1.0,
            proxy_core_busy: Some(1.0),
            load_core_busy: Some(0.8),
            other_cores: 0.0,
            errors: 0,
            samples: vec![Sample {
                round: 0,
                load: LoadResult {
                    rps,
                    p99_ms: p99,
                    ..LoadResult::default()
                },
                user_us: user,
                sys_us: sys,
                proxy_cores: 1.0,
                proxy_core_busy: None,
                load_core_busy: None,
                other_cores: 0.0,
            }],
        }
    }

    fn report(scenarios: Vec<ScenarioResult>) -> Report {
        Report {
            started: "2026-01-01T00:00Z".into(),
            command: "cargo xtask bench".into(),
            machine: Machine {
                nproc: 2,
                cpu_model: "Test CPU".into(),
                kernel: "6.0".into(),
                memory_gib: 1.0,
                loadavg_at_start: "0.00".into(),
            },
            versions: Versions {
                sluice: "abc".into(),
                nginx: "nginx/1".into(),
                haproxy: "HAProxy 2".into(),
                wrk: "wrk 4".into(),
                h2load: "h2load 1".into(),
                openssl: "OpenSSL 3".into(),
            },
            settings: Settings {
                rounds: 3,
                target_rounds: 7,
                seconds: 5,
                warmup_seconds: 1,
                reload_trials: 5,
                memory_rounds: 1,
                quiet_wait_seconds: 0,
            },
            pinning: "pinned".into(),
            baseline: None,
            tls: vec![],
            peers: vec![Peer::Sluice, Peer::Nginx, Peer::Haproxy],
            not_measured: vec!["envoy: not installable".into()],
            scenarios,
        }
    }

    fn tp(name: &str, peers: Vec<Summary>) -> ScenarioResult {
        ScenarioResult {
            name: name.into(),
            title: name.into(),
            outcome: Outcome::Throughput {
                tool: "wrk".into(),
                peers,
            },
        }
    }

    #[test]
    fn sluice_with_its_datapath_gets_its_own_rows_against_the_peers_only() {
        let mut r = report(vec![tp(
            "h1-keepalive-64",
            vec![
                summary(Peer::Sluice, 100.0, 1.0, 1.0, 1.0),
                summary(Peer::SluiceEbpf, 150.0, 0.5, 1.0, 1.0),
                summary(Peer::Nginx, 100.0, 1.0, 1.0, 1.0),
                summary(Peer::Haproxy, 90.0, 2.0, 1.0, 1.0),
            ],
        )]);
        r.peers = Peer::ALL.to_vec();
        let t = targets(&r);
        let ka: Vec<&Target> = t
            .iter()
            .filter(|t| {
                t.target
                    .starts_with("HTTP/1.1 keep-alive, 64 connections: req/s >= 1.3x")
            })
            .collect();
        assert_eq!(ka.len(), 2, "{t:?}");
        // The standalone gateway's target: nginx's req/s (equal counts), p99 no higher (equal).
        let standalone: Vec<&Target> = t
            .iter()
            .filter(|t| t.target.contains("req/s >= nginx, p99 no higher"))
            .collect();
        assert_eq!(standalone.len(), 2, "{t:?}");
        assert_eq!(standalone[0].verdict, Verdict::Met, "{:?}", standalone[0]);
        assert_eq!(
            standalone[0].measured,
            "1.00x nginx req/s, p99 1.00 vs 1.00 ms (rounds 1.00-1.00 vs 1.00-1.00)"
        );
        assert_eq!(ka[0].verdict, Verdict::Missed);
        assert!(ka[1].target.ends_with("(Sluice with its eBPF datapath)"));
        assert_eq!(ka[1].verdict, Verdict::Met, "{:?}", ka[1]);
        // Compared with nginx and HAProxy, never with the other Sluice.
        assert_eq!(
            ka[1].measured,
            "1.50x nginx req/s, p99 0.50 vs 1.00 ms (rounds 0.50-0.50 vs 1.00-1.00); \
             1.67x haproxy req/s, p99 0.50 vs 2.00 ms (rounds 0.50-0.50 vs 2.00-2.00)"
        );
        let md = markdown(&r, "");
        assert!(
            md.contains("| h1-keepalive-64 (sluice-ebpf) | 1.50x |"),
            "{md}"
        );
    }

    #[test]
    fn keepalive_target_needs_both_rate_and_latency() {
        let r = report(vec![tp(
            "h1-keepalive-64",
            vec![
                summary(Peer::Sluice, 130.0, 1.0, 1.0, 1.0),
                summary(Peer::Nginx, 100.0, 1.0, 1.0, 1.0),
                summary(Peer::Haproxy, 90.0, 2.0, 1.0, 1.0),
            ],
        )]);
        assert_eq!(targets(&r)[0].verdict, Verdict::Met);
        let r = report(vec![tp(
            "h1-keepalive-64",
            vec![
                summary(Peer::Sluice, 200.0, 1.1, 1.0, 1.0),
                summary(Peer::Nginx, 100.0, 1.0, 1.0, 1.0),
                summary(Peer::Haproxy, 90.0, 2.0, 1.0, 1.0),
            ],
        )]);
        assert_eq!(targets(&r)[0].verdict, Verdict::Missed, "p99 above nginx's");
        let r = report(vec![]);
        assert!(
            targets(&r)
                .iter()
                .all(|t| t.verdict == Verdict::NotMeasured)
        );
    }

    #[test]
    fn route_table_target_compares_cpu_per_request() {
        let r = report(vec![
            tp(
                "routes-10",
                vec![summary(Peer::Sluice, 100.0, 1.0, 2.0, 8.0)],
            ),
            tp(
                "routes-10000",
                vec![summary(Peer::Sluice, 95.0, 1.0, 2.5, 8.4)],
            ),
        ]);
        let t = targets(&r);
        let t = t
            .iter()
            .find(|t| t.target.starts_with("10,000 routes"))
            .unwrap();
        assert_eq!(t.verdict, Verdict::Met, "{}", t.measured);
        assert!(t.measured.contains("+9.0%"), "{}", t.measured);
    }

    /// Rounds run back to back are compared with each other: drift between rounds (here
    /// the machine gets slower round by round) stays out of the ratio. The medians of the
    /// two sides alone (10.2 and 13.5 us) would differ by 32%.
    #[test]
    fn route_table_target_pairs_the_rounds() {
        let rounds = |cpus: &[f64]| {
            let mut s = summary(Peer::Sluice, 100.0, 1.0, 0.0, 0.0);
            s.samples = cpus
                .iter()
                .enumerate()
                .map(|(round, &cpu)| Sample {
                    round,
                    user_us: cpu,
                    ..s.samples[0].clone()
                })
                .collect();
            s.user_us = crate::stats::median(cpus).unwrap();
            s
        };
        let r = report(vec![
            tp("routes-10", vec![rounds(&[10.0, 10.2, 13.0])]),
            tp("routes-10000", vec![rounds(&[10.5, 13.5, 14.0])]),
        ]);
        let t = targets(&r);
        let t = t
            .iter()
            .find(|t| t.target.starts_with("10,000 routes"))
            .unwrap();
        assert!(
            t.measured
                .contains("round by round +5.0% +32.4% +7.7%, median +7.7%"),
            "{}",
            t.measured
        );
        assert_eq!(t.verdict, Verdict::Met, "{}", t.measured);
    }

    #[test]
    fn http3_rows_target_and_reasons_for_the_peers() {
        let r = report(vec![ScenarioResult {
            name: "h3".into(),
            title: "HTTP/3".into(),
            outcome: Outcome::Http3 {
                tool: "peer-bench h3-load".into(),
                h2_tool: "h2load".into(),
                h3: Box::new(summary(Peer::Sluice, 8000.0, 4.0, 60.0, 40.0)),
                h2: Box::new(summary(Peer::Sluice, 16000.0, 2.0, 20.0, 30.0)),
                unsupported: vec![
                    Unsupported {
                        peer: Peer::Nginx,
                        reason: "no HTTP/3 in Debian's nginx 1.22.1 (built without it)".into(),
                    },
                    Unsupported {
                        peer: Peer::Haproxy,
                        reason: "no HTTP/3 in Debian's HAProxy 2.6.12 (built without it)".into(),
                    },
                ],
            },
        }]);
        let t = targets(&r);
        let t = t.iter().find(|t| t.target.starts_with("HTTP/3")).unwrap();
        assert_eq!(t.verdict, Verdict::NoPeer);
        assert!(t.measured.contains("Sluice 8000 req/s"), "{}", t.measured);
        let md = markdown(&r, "");
        assert!(
            md.contains("| h3 | sluice (HTTP/3) | 8000 | 2.00 | 4.00 | 100.00 (60.00 + 40.00) |"),
            "{md}"
        );
        assert!(
            md.contains("| h3 | sluice (HTTP/2 + TLS, same listener) | 16000 |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| h3 | nginx | no HTTP/3 in Debian's nginx 1.22.1 (built without it) | - |"
            ),
            "{md}"
        );
        assert!(md.contains("| measured, no peer supports it |"), "{md}");
        assert!(md.contains("(0.50x its HTTP/2 + TLS rate"), "{md}");
        assert!(md.contains("(2.00x the 50.0 µs over HTTP/2 + TLS)"), "{md}");
        assert!(
            md.contains("- `h3`, haproxy: no HTTP/3 in Debian's HAProxy 2.6.12"),
            "{md}"
        );
        let sec = readme_section(&r);
        assert!(
            sec.contains("| HTTP/3 (QUIC), 16 connections x 16 streams | 8000 (4.00, 100.0) | no HTTP/3 in Debian's nginx"),
            "{sec}"
        );
        // No ratio table: nothing of the peers' was measured.
        assert!(!md.contains("req/s vs nginx"), "{md}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["scenarios"][0]["outcome"]["type"], "http3");
        assert_eq!(json["scenarios"][0]["outcome"]["h3"]["rps"], 8000.0);
    }

    #[test]
    fn markdown_has_every_table_and_ratio() {
        let r = report(vec![tp(
            "h1-keepalive-64",
            vec![
                summary(Peer::Sluice, 150.0, 1.0, 1.0, 1.0),
                summary(Peer::Nginx, 100.0, 2.0, 1.0, 3.0),
                summary(Peer::Haproxy, 75.0, 1.0, 2.0, 2.0),
            ],
        )]);
        let md = markdown(&r, "");
        assert!(md.contains("| h1-keepalive-64 | sluice | 150 |"));
        // req/s vs nginx, vs haproxy; p99 vs nginx, vs haproxy; CPU vs nginx, vs haproxy.
        assert!(
            md.contains("| h1-keepalive-64 | 1.50x | 2.00x | 0.50x | 1.00x | 0.50x | 0.50x |"),
            "{md}"
        );
        assert!(md.contains("envoy: not installable"));
        let sec = readme_section(&r);
        assert!(sec.contains("2 CPUs (Test CPU)"));
        assert!(sec.contains("(benches/results/throughput.svg)"));
    }
}
