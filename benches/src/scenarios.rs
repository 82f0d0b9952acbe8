//! The scenarios and how each is measured: throughput runs alternating the peers round by
//! round, time from a route change to the new route serving, and memory per idle connection.

use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::fmt::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::client;
use crate::load::{LoadResult, Tool};
use crate::peers::{Env, Instance, LARGE_BODY, Layout, Peer, route_host};
use crate::procs;
use crate::stats::median;

/// Which port and scheme a throughput scenario loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// `http://` on the HTTP/1.1 port.
    Http,
    /// `http://` on the h2c prior-knowledge port.
    H2c,
    /// `https://` on the TLS port.
    Https,
}

/// How a scenario's load is generated.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// wrk: connections, `Connection: close`, requests spread over this many routes.
    Wrk {
        /// Connections.
        conns: usize,
        /// A new connection per request.
        close: bool,
        /// Spread requests over `r0..r{n-1}.bench.example` (a Lua script).
        routes: Option<usize>,
    },
    /// h2load: connections and concurrent streams per connection.
    H2load {
        /// Connections.
        conns: usize,
        /// Streams per connection.
        streams: usize,
    },
}

/// What a scenario measures.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Requests/s, latency and proxy CPU per request.
    Throughput {
        /// Configuration served.
        layout: Layout,
        /// Port and scheme.
        proto: Proto,
        /// Request path.
        path: &'static str,
        /// Load generator.
        load: Load,
    },
    /// Time from a route change to the new route answering, at this many routes.
    Reload {
        /// Routes configured.
        routes: usize,
    },
    /// Resident memory per idle keep-alive connection.
    IdleMemory {
        /// Connections held open.
        conns: usize,
    },
    /// Sluice over HTTP/3 (QUIC) against Sluice over HTTP/2 + TLS on the same listener; the
    /// peers have no HTTP/3 and get the reason instead of a number.
    Http3 {
        /// QUIC (and, for the comparison, TCP) connections.
        conns: usize,
        /// Concurrent streams per connection.
        streams: usize,
    },
}

/// A named scenario.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Name for `--scenario`.
    pub name: &'static str,
    /// What it measures, one line.
    pub title: &'static str,
    /// How it is measured.
    pub kind: Kind,
}

const fn wrk(conns: usize, close: bool) -> Load {
    Load::Wrk {
        conns,
        close,
        routes: None,
    }
}

/// The scenario whose p99 latency is a target (no higher than nginx's and HAProxy's).
pub const P99_TARGET: &str = "h1-keepalive-64";

/// Every scenario, in run order (instances are shared by consecutive scenarios).
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "h1-keepalive-64",
        title: "HTTP/1.1 keep-alive, 64 connections, 64-byte body",
        kind: Kind::Throughput {
            layout: Layout::Base,
            proto: Proto::Http,
            path: "/",
            load: wrk(64, false),
        },
    },
    Scenario {
        name: "h1-keepalive-1000",
        title: "HTTP/1.1 keep-alive, 1,000 connections, 64-byte body",
        kind: Kind::Throughput {
            layout: Layout::Base,
            proto: Proto::Http,
            path: "/",
            load: wrk(1000, false),
        },
    },
    Scenario {
        name: "h1-new-conn",
        title: "HTTP/1.1, a new connection per request, 64 clients",
        kind: Kind::Throughput {
            layout: Layout::Base,
            proto: Proto::Http,
            path: "/",
            load: wrk(64, true),
        },
    },
    Scenario {
        name: "h2c",
        title: "HTTP/2 cleartext (prior knowledge), 16 connections x 16 streams",
        kind: Kind::Throughput {
            layout: Layout::Base,
            proto: Proto::H2c,
            path: "/",
            load: Load::H2load {
                conns: 16,
                streams: 16,
            },
        },
    },
    Scenario {
        name: "h1-100k",
        title: "HTTP/1.1 keep-alive, 64 connections, 100 KiB body",
        kind: Kind::Throughput {
            layout: Layout::Base,
            proto: Proto::Http,
            path: "/100k",
            load: wrk(64, false),
        },
    },
    Scenario {
        name: "tls-h1",
        title: "TLS termination, HTTP/1.1 keep-alive, 64 connections",
        kind: Kind::Throughput {
            layout: Layout::Base,
            proto: Proto::Https,
            path: "/",
            load: wrk(64, false),
        },
    },
    Scenario {
        name: "tls-h2",
        title: "TLS termination, HTTP/2 (ALPN), 16 connections x 16 streams",
        kind: Kind::Throughput {
            layout: Layout::Base,
            proto: Proto::Https,
            path: "/",
            load: Load::H2load {
                conns: 16,
                streams: 16,
            },
        },
    },
    Scenario {
        name: "tls-new-conn",
        title: "TLS termination, a full handshake per request, 64 clients",
        kind: Kind::Throughput {
            layout: Layout::Base,
            proto: Proto::Https,
            path: "/",
            load: wrk(64, true),
        },
    },
    Scenario {
        name: "idle-memory",
        title: "Resident memory per idle HTTP/1.1 keep-alive connection (10,000 open)",
        kind: Kind::IdleMemory { conns: 10_000 },
    },
    Scenario {
        name: "routes-10",
        title: "10 routes (one host each), requests spread over all, 64 connections",
        kind: Kind::Throughput {
            layout: Layout::Routes(10),
            proto: Proto::Http,
            path: "/",
            load: Load::Wrk {
                conns: 64,
                close: false,
                routes: Some(10),
            },
        },
    },
    Scenario {
        name: "reload-10",
        title: "Route change to the new route serving, 10 routes configured",
        kind: Kind::Reload { routes: 10 },
    },
    Scenario {
        name: "routes-10000",
        title: "10,000 routes (one host each), requests spread over all, 64 connections",
        kind: Kind::Throughput {
            layout: Layout::Routes(10_000),
            proto: Proto::Http,
            path: "/",
            load: Load::Wrk {
                conns: 64,
                close: false,
                routes: Some(10_000),
            },
        },
    },
    Scenario {
        name: "reload-10000",
        title: "Route change to the new route serving, 10,000 routes configured",
        kind: Kind::Reload { routes: 10_000 },
    },
    Scenario {
        name: "h3",
        title: "HTTP/3 (QUIC), 16 connections x 16 streams, against HTTP/2 + TLS on the same listener",
        kind: Kind::Http3 {
            conns: 16,
            streams: 16,
        },
    },
];

/// Run settings.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Rounds per throughput scenario (each round runs every peer once).
    pub rounds: usize,
    /// Seconds per throughput run.
    pub seconds: u64,
    /// Seconds of warm-up load per peer before a throughput scenario's rounds.
    pub warmup_seconds: u64,
    /// Rounds at least of [`P99_TARGET`] and of the [`ALTERNATED`] scenarios: the first's p99
    /// is compared against the peers', and p99 on this machine moves more between rounds (1.6
    /// to 3.7 ms for nginx in one run) than req/s; the second's ratio of CPU per request is a
    /// target within 10%, and single runs move by about as much.
    pub target_rounds: usize,
    /// Route-change trials per peer.
    pub reload_trials: usize,
    /// Idle-memory rounds per peer.
    pub memory_rounds: usize,
    /// Longest total wait for a quiet machine before measured runs (s).
    pub quiet_wait_seconds: u64,
}

impl Settings {
    /// Rounds of a throughput scenario: [`Settings::rounds`], and at least
    /// [`Settings::target_rounds`] for [`P99_TARGET`] and the [`ALTERNATED`] scenarios.
    pub fn rounds_for(&self, scenario: &str) -> usize {
        if scenario == P99_TARGET || ALTERNATED.iter().any(|pair| pair.contains(&scenario)) {
            self.rounds.max(self.target_rounds)
        } else {
            self.rounds
        }
    }
}

/// One throughput run of one peer.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Round number (0-based).
    pub round: usize,
    /// Client-side figures.
    pub load: LoadResult,
    /// Proxy user CPU per request (µs).
    pub user_us: f64,
    /// Proxy system CPU per request (µs).
    pub sys_us: f64,
    /// The proxy's CPU time over the run's wall time (1.0 = one core).
    pub proxy_cores: f64,
    /// Busy fraction of the proxy's CPU during the run (the proxy and anything else there).
    pub proxy_core_busy: Option<f64>,
    /// Busy fraction of the load CPUs during the run.
    pub load_core_busy: Option<f64>,
    /// Cores used by other processes during the run (a shared machine's noise).
    pub other_cores: f64,
}

/// Medians of a peer's samples in one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Peer.
    pub peer: Peer,
    /// Median requests/s.
    pub rps: f64,
    /// Median p50 latency (ms).
    pub p50_ms: f64,
    /// Median p99 latency (ms).
    pub p99_ms: f64,
    /// Median user CPU per request (µs).
    pub user_us: f64,
    /// Median system CPU per request (µs).
    pub sys_us: f64,
    /// Median proxy CPU time over wall time (cores).
    pub proxy_cores: f64,
    /// Median proxy core busy fraction.
    pub proxy_core_busy: Option<f64>,
    /// Median load cores busy fraction.
    pub load_core_busy: Option<f64>,
    /// Median cores used by other processes during the runs.
    pub other_cores: f64,
    /// Errors summed over all rounds.
    pub errors: u64,
    /// Every round.
    pub samples: Vec<Sample>,
}

impl Summary {
    /// User + system CPU per request (µs).
    pub fn cpu_us(&self) -> f64 {
        self.user_us + self.sys_us
    }

    /// Lowest and highest p99 of the rounds (ms).
    pub fn p99_range(&self) -> (f64, f64) {
        self.samples
            .iter()
            .map(|x| x.load.p99_ms)
            .fold((f64::NAN, f64::NAN), |(lo, hi), v| (lo.min(v), hi.max(v)))
    }

    /// Requests per second one core running this proxy could serve (1 / CPU per request).
    pub fn capacity(&self) -> f64 {
        1e6 / self.cpu_us()
    }

    fn of(peer: Peer, samples: Vec<Sample>) -> Summary {
        let m = |f: &dyn Fn(&Sample) -> f64| {
            median(&samples.iter().map(f).collect::<Vec<_>>()).unwrap_or(f64::NAN)
        };
        let mo = |f: &dyn Fn(&Sample) -> Option<f64>| {
            median(&samples.iter().filter_map(f).collect::<Vec<_>>())
        };
        Summary {
            peer,
            rps: m(&|s| s.load.rps),
            p50_ms: m(&|s| s.load.p50_ms),
            p99_ms: m(&|s| s.load.p99_ms),
            user_us: m(&|s| s.user_us),
            sys_us: m(&|s| s.sys_us),
            proxy_cores: m(&|s| s.proxy_cores),
            proxy_core_busy: mo(&|s| s.proxy_core_busy),
            load_core_busy: mo(&|s| s.load_core_busy),
            other_cores: m(&|s| s.other_cores),
            errors: samples.iter().map(|s| s.load.errors).sum(),
            samples,
        }
    }
}

/// One route-change trial series.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadSummary {
    /// Peer.
    pub peer: Peer,
    /// Median time from the change to the first 200 for the new route (ms).
    pub median_ms: f64,
    /// Slowest trial (ms).
    pub max_ms: f64,
    /// Median time the change command took (ms): `nginx -s reload`, `haproxy -c` + signal,
    /// or Sluice's file write.
    pub command_ms: f64,
    /// Median time until the proxy's processes stopped using CPU after the change (ms, 10 ms
    /// resolution): work that outlasts serving delays the next change.
    pub busy_ms: f64,
    /// Every trial (ms); trials that never served are left out and counted in `failures`.
    pub trials_ms: Vec<f64>,
    /// Trials where the route did not serve within 30 s.
    pub failures: usize,
}

/// Idle-connection memory of one peer.
#[derive(Debug, Clone, Serialize)]
pub struct MemorySummary {
    /// Peer.
    pub peer: Peer,
    /// Connections held open.
    pub conns: usize,
    /// Median resident memory before opening them (KiB).
    pub rss_before_kib: f64,
    /// Median resident memory with them open (KiB).
    pub rss_open_kib: f64,
    /// Median bytes per idle connection.
    pub bytes_per_conn: f64,
}

/// The outcome of a scenario.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outcome {
    /// Throughput scenario.
    Throughput {
        /// Load generator command line.
        tool: String,
        /// Per-peer medians.
        peers: Vec<Summary>,
    },
    /// Route change scenario.
    Reload {
        /// Routes configured.
        routes: usize,
        /// Per peer.
        peers: Vec<ReloadSummary>,
    },
    /// Idle memory scenario.
    Memory {
        /// Per peer.
        peers: Vec<MemorySummary>,
    },
    /// HTTP/3: Sluice only, with HTTP/2 + TLS for comparison.
    Http3 {
        /// HTTP/3 load generator command line.
        tool: String,
        /// HTTP/2 load generator command line (same listener over TCP).
        h2_tool: String,
        /// Sluice over HTTP/3.
        h3: Box<Summary>,
        /// Sluice over HTTP/2 + TLS, the same listener, the same connections and streams.
        h2: Box<Summary>,
        /// Peers that were run but cannot serve HTTP/3, with the reason.
        unsupported: Vec<Unsupported>,
    },
    /// Not measured.
    Slot {
        /// Why.
        reason: String,
    },
    /// The scenario failed to run.
    Failed {
        /// The error.
        error: String,
    },
}

/// A peer left out of a scenario it cannot serve.
#[derive(Debug, Clone, Serialize)]
pub struct Unsupported {
    /// Peer.
    pub peer: Peer,
    /// Why, for the report.
    pub reason: String,
}

/// A scenario's result.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    /// Scenario name.
    pub name: String,
    /// Scenario title.
    pub title: String,
    /// What happened.
    pub outcome: Outcome,
}

/// Running instances, one per peer for each layout.
#[derive(Debug)]
pub struct Instances {
    /// The layouts, in start order.
    pub layouts: Vec<Layout>,
    /// One per peer and layout: every peer of the first layout in peer order, then the next.
    pub list: Vec<Instance>,
}

impl Instances {
    /// Starts every peer with each of `layouts` (side by side: their ports differ).
    pub fn start(env: &Env, peers: &[Peer], layouts: &[Layout]) -> Result<Instances> {
        let mut list = Vec::new();
        for &layout in layouts {
            for &p in peers {
                eprintln!("  starting {} ({layout:?})", p.name());
                let inst = Instance::start(env, p, layout)?;
                eprintln!("    serving after {:.0} ms", inst.startup_ms);
                list.push(inst);
            }
        }
        Ok(Instances {
            layouts: layouts.to_vec(),
            list,
        })
    }
}

/// Throughput scenarios measured together: each round runs every peer's legs back to back
/// (in turns first), so drift between rounds cancels out of the comparison between them.
/// The per-request cost at 10,000 routes is a target relative to 10 routes, and measured
/// minutes apart the two moved by more than the 10% it allows.
pub const ALTERNATED: &[[&str; 2]] = &[["routes-10", "routes-10000"]];

/// Runs one scenario on `instances` (already started with the scenario's layout).
pub fn run(
    env: &Env,
    sc: &Scenario,
    settings: &Settings,
    instances: &mut Instances,
) -> Result<Outcome> {
    if let Kind::Throughput { .. } = sc.kind {
        let rounds = settings.rounds_for(sc.name);
        let legs = [Leg::of(env, sc)?];
        let mut out = throughput(env, settings, rounds, instances, &legs)?;
        return Ok(out.remove(0));
    }
    // On-demand peers (Sluice with its eBPF datapath) sit the other scenarios out: they
    // measure the same proxy as `sluice`.
    let (on_demand, list): (Vec<Instance>, Vec<Instance>) = std::mem::take(&mut instances.list)
        .into_iter()
        .partition(|i| i.peer.on_demand());
    instances.list = list;
    let r = match sc.kind {
        Kind::Throughput { .. } => unreachable!("handled above"),
        Kind::Reload { routes } => reload(settings, instances, routes),
        Kind::IdleMemory { conns } => {
            // Under a low open-file limit every peer gets the same, smaller count.
            let conns = conns.min(env.max_conns().saturating_sub(100) as usize);
            memory(env, settings, instances, conns)
        }
        Kind::Http3 { conns, streams } => http3(env, settings, instances, conns, streams),
    };
    instances.list.extend(on_demand);
    instances.list.sort_by_key(|i| i.peer);
    r
}

/// Runs throughput scenarios together (see [`ALTERNATED`]) on `instances`, started with
/// each scenario's layout; one outcome per scenario, in order.
pub fn run_alternated(
    env: &Env,
    scs: &[&Scenario],
    settings: &Settings,
    instances: &mut Instances,
) -> Result<Vec<Outcome>> {
    let legs = scs
        .iter()
        .map(|sc| Leg::of(env, sc))
        .collect::<Result<Vec<_>>>()?;
    let rounds = scs
        .iter()
        .map(|sc| settings.rounds_for(sc.name))
        .max()
        .unwrap_or(settings.rounds);
    throughput(env, settings, rounds, instances, &legs)
}

/// The layout a scenario's instances serve.
pub fn layout(sc: &Scenario) -> Layout {
    match sc.kind {
        Kind::Throughput { layout, .. } => layout,
        Kind::Reload { routes } => Layout::Routes(routes),
        Kind::IdleMemory { .. } | Kind::Http3 { .. } => Layout::Base,
    }
}

fn url(inst: &Instance, proto: Proto, path: &str) -> String {
    match proto {
        Proto::Http => format!("http://127.0.0.1:{}{path}", inst.ports.http),
        Proto::H2c => format!("http://127.0.0.1:{}{path}", inst.ports.h2c),
        Proto::Https => format!("https://127.0.0.1:{}{path}", inst.ports.https),
    }
}

/// A wrk script spreading requests over the hosts of `n` routes in a fixed shuffled order.
pub fn routes_script(dir: &Path, n: usize) -> Result<PathBuf> {
    let path = dir.join(format!("routes-{n}.lua"));
    let script = format!(
        "-- Requests for r0..r{last}.bench.example in a fixed pseudo-random order.
local n = {n}
local order = {{}}
for i = 1, n do order[i] = i - 1 end
local seed = 42
for i = n, 2, -1 do
  seed = (seed * 16807) % 2147483647
  local j = seed % i + 1
  order[i], order[j] = order[j], order[i]
end
local reqs = {{}}
for k = 1, n do
  reqs[k] = wrk.format(\"GET\", \"/\", {{ [\"Host\"] = \"r\" .. order[k] .. \".bench.example\" }})
end
local idx = 0
request = function()
  idx = idx % n + 1
  return reqs[idx]
end
",
        last = n - 1
    );
    std::fs::write(&path, script)?;
    Ok(path)
}

/// One throughput scenario's load on instances of its layout.
struct Leg {
    layout: Layout,
    proto: Proto,
    path: &'static str,
    tool: Tool,
}

impl Leg {
    fn of(env: &Env, sc: &Scenario) -> Result<Leg> {
        let Kind::Throughput {
            layout,
            proto,
            path,
            load,
        } = sc.kind
        else {
            bail!("{} is not a throughput scenario", sc.name);
        };
        let tool = match load {
            Load::Wrk {
                conns,
                close,
                routes,
            } => Tool::Wrk {
                conns,
                close,
                script: routes.map(|n| routes_script(&env.tmp, n)).transpose()?,
            },
            Load::H2load { conns, streams } => Tool::H2load { conns, streams },
        };
        Ok(Leg {
            layout,
            proto,
            path,
            tool,
        })
    }
}

/// Runs `legs` for `rounds` rounds: in each round the peers take turns (A B C, B C A, ...),
/// and each peer runs every leg back to back (in order in even rounds, reversed in odd ones).
/// One outcome per leg.
fn throughput(
    env: &Env,
    settings: &Settings,
    rounds: usize,
    instances: &mut Instances,
    legs: &[Leg],
) -> Result<Vec<Outcome>> {
    // What the client sees must be the backend's response, through every peer.
    let check = |inst: &Instance, leg: &Leg| -> Result<()> {
        if leg.proto == Proto::Http && inst.layout == Layout::Base {
            let path = leg.path;
            let (code, body) = client::fetch_body(inst.http_addr(), "bench.example", path)?;
            let want = if path == "/100k" { LARGE_BODY } else { 64 };
            if code != 200 || body.len() != want {
                bail!(
                    "{} answered {code} with {} bytes on {path}, expected 200 with {want}",
                    inst.peer.name(),
                    body.len()
                );
            }
        }
        Ok(())
    };
    let warm_up = |inst: &mut Instance, leg: &Leg| -> Result<()> {
        inst.server.check_alive()?;
        leg.tool
            .run(
                &env.pin,
                &url(inst, leg.proto, leg.path),
                settings.warmup_seconds,
                &env.tmp,
            )
            .with_context(|| format!("warm-up of {}", inst.peer.name()))?;
        Ok(())
    };
    let leg_of = |inst: &Instance| legs.iter().find(|l| l.layout == inst.layout);
    for inst in &mut instances.list {
        if let Some(leg) = leg_of(inst)
            && !inst.peer.on_demand()
        {
            check(inst, leg)?;
            warm_up(inst, leg)?;
        }
    }
    let mut peers: Vec<Peer> = Vec::new();
    for inst in &instances.list {
        if !peers.contains(&inst.peer) {
            peers.push(inst.peer);
        }
    }
    let n = peers.len();
    let mut samples: Vec<Vec<Sample>> = vec![vec![]; instances.list.len()];
    for round in 0..rounds {
        for k in 0..n {
            let peer = peers[(round + k) % n];
            let mut order: Vec<&Leg> = legs.iter().collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for leg in order {
                let i = instances
                    .list
                    .iter()
                    .position(|x| x.peer == peer && x.layout == leg.layout)
                    .with_context(|| format!("no {} instance for {:?}", peer.name(), leg.layout))?;
                let inst = &mut instances.list[i];
                let u = url(inst, leg.proto, leg.path);
                let label = match legs.len() {
                    1 => inst.peer.name().to_string(),
                    _ => format!("{} {:?}", inst.peer.name(), leg.layout),
                };
                // An on-demand peer runs only for its own runs, warmed up each time.
                let on_demand = inst.peer.on_demand();
                let sample = inst.while_running(env, |inst| {
                    if on_demand {
                        check(inst, leg)?;
                        warm_up(inst, leg)?;
                    }
                    measure(env, settings, inst, &leg.tool, &u, round, &label)
                })?;
                samples[i].push(sample);
            }
        }
    }
    Ok(legs
        .iter()
        .map(|leg| Outcome::Throughput {
            tool: leg.tool.describe(),
            peers: instances
                .list
                .iter()
                .zip(&mut samples)
                .filter(|(inst, _)| inst.layout == leg.layout)
                .map(|(inst, s)| Summary::of(inst.peer, std::mem::take(s)))
                .collect(),
        })
        .collect())
}

/// One measured run of `tool` against `url` served by `inst`: waits for a quiet machine, then
/// meters the proxy's CPU and the cores while the load runs.
fn measure(
    env: &Env,
    settings: &Settings,
    inst: &mut Instance,
    tool: &Tool,
    url: &str,
    round: usize,
    label: &str,
) -> Result<Sample> {
    let tck = procs::clock_ticks() as f64;
    inst.server.check_alive()?;
    std::thread::sleep(Duration::from_millis(200));
    let mut budget = env.quiet_budget.get();
    procs::wait_quiet(&mut budget);
    env.quiet_budget.set(budget);
    let meter = procs::Meter::start(inst.pids(), procs::tree(env.backend_pid));
    let r = tool
        .run(&env.pin, url, settings.seconds, &env.tmp)
        .with_context(|| format!("{label} round {round}"))?;
    let m = meter.finish(&env.pin);
    let reqs = r.requests.max(1) as f64;
    let s = Sample {
        round,
        user_us: m.proxy.user as f64 / tck * 1e6 / reqs,
        sys_us: m.proxy.system as f64 / tck * 1e6 / reqs,
        proxy_cores: m.proxy_cores,
        proxy_core_busy: m.proxy_core_busy,
        load_core_busy: m.load_core_busy,
        other_cores: m.other_cores,
        load: r,
    };
    eprintln!(
        "    round {round} {label:8} {:>9.0} req/s  p99 {:>7.2} ms  cpu {:>5.2}+{:<5.2} us/req  proxy {:>4.2} cores  load core {:>3.0}%  others {:.2} cores{}",
        s.load.rps,
        s.load.p99_ms,
        s.user_us,
        s.sys_us,
        s.proxy_cores,
        s.load_core_busy.unwrap_or(f64::NAN) * 100.0,
        s.other_cores,
        if s.load.errors > 0 {
            format!("  ERRORS {}", s.load.errors)
        } else {
            String::new()
        }
    );
    Ok(s)
}

/// Why `peer` (as installed) cannot be measured over HTTP/3: its build has no HTTP/3 (nginx
/// without `http_v3_module`, HAProxy without QUIC), or this runner does not configure it.
fn no_http3(peer: Peer) -> String {
    let (version, built) = match peer {
        Peer::Sluice | Peer::SluiceEbpf => return "serves HTTP/3".into(),
        Peer::Nginx => (
            procs::command_text("nginx", &["-v"]).replace("nginx version: nginx/", "nginx "),
            procs::command_text("nginx", &["-V"]).contains("http_v3_module"),
        ),
        Peer::Haproxy => (
            procs::command_text("haproxy", &["-v"])
                .split_whitespace()
                .nth(2)
                .map_or("HAProxy".into(), |v| format!("HAProxy {v}")),
            procs::command_text("haproxy", &["-vv"]).contains("+QUIC"),
        ),
    };
    if built {
        format!("{version} is built with HTTP/3, but this runner does not configure it")
    } else {
        format!("no HTTP/3 in Debian's {version} (built without it)")
    }
}

/// Sluice over HTTP/3 and, alternated with it round by round, over HTTP/2 + TLS on the same
/// listener's TCP port with the same connections and streams (h2load).
fn http3(
    env: &Env,
    settings: &Settings,
    instances: &mut Instances,
    conns: usize,
    streams: usize,
) -> Result<Outcome> {
    let unsupported: Vec<Unsupported> = instances
        .list
        .iter()
        .filter(|i| !i.peer.is_sluice())
        .map(|i| Unsupported {
            peer: i.peer,
            reason: no_http3(i.peer),
        })
        .collect();
    let Some(inst) = instances.list.iter_mut().find(|i| i.peer == Peer::Sluice) else {
        return Ok(Outcome::Slot {
            reason: "only Sluice serves HTTP/3 here, and it was not among the peers run".into(),
        });
    };
    let port = inst
        .ports
        .h3
        .context("Sluice's base layout has no HTTP/3 listener")?;
    let url = format!("https://127.0.0.1:{port}/");
    // What the client sees must be the backend's response; the QUIC side of the listener may
    // come up a little after the HTTP port Sluice's readiness was probed on.
    let t0 = Instant::now();
    loop {
        inst.server.check_alive()?;
        match crate::h3load::fetch(&url, &env.cert) {
            Ok((200, 64)) => break,
            Ok((code, len)) => {
                bail!("sluice answered {code} with {len} bytes over HTTP/3, expected 200 with 64")
            }
            Err(e) if t0.elapsed() > Duration::from_secs(10) => {
                return Err(e.context(format!("no HTTP/3 answer on {url}")));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let runs = [
        (
            "sluice-h3",
            Tool::H3 {
                conns,
                streams,
                cert: env.cert.clone(),
            },
        ),
        ("sluice-h2", Tool::H2load { conns, streams }),
    ];
    for (label, tool) in &runs {
        tool.run(&env.pin, &url, settings.warmup_seconds, &env.tmp)
            .with_context(|| format!("warm-up of {label}"))?;
    }
    let mut samples: [Vec<Sample>; 2] = [vec![], vec![]];
    for round in 0..settings.rounds {
        for k in 0..runs.len() {
            let i = (round + k) % runs.len();
            let (label, tool) = &runs[i];
            samples[i].push(measure(env, settings, inst, tool, &url, round, label)?);
        }
    }
    let [h3, h2] = samples;
    Ok(Outcome::Http3 {
        tool: runs[0].1.describe(),
        h2_tool: runs[1].1.describe(),
        h3: Box::new(Summary::of(Peer::Sluice, h3)),
        h2: Box::new(Summary::of(Peer::Sluice, h2)),
        unsupported,
    })
}

/// Polls `host` on new connections every millisecond until it answers 200.
fn wait_serving(addr: std::net::SocketAddr, host: &str, timeout: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if client::probe(addr, host, "/").ok() == Some(200) {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

/// Waits until the processes of `inst` stop using CPU (no new CPU tick for 300 ms, at most
/// `max`); returns how long after `since` they last used some.
fn settle(inst: &Instance, since: Instant, max: Duration) -> Duration {
    let total = || {
        let t = procs::cpu_ticks(&inst.pids());
        t.user + t.system
    };
    let mut last = total();
    let mut last_change = Instant::now();
    while last_change.elapsed() < Duration::from_millis(300) && since.elapsed() < max {
        std::thread::sleep(Duration::from_millis(20));
        let now = total();
        if now != last {
            last = now;
            last_change = Instant::now();
        }
    }
    last_change.saturating_duration_since(since)
}

fn reload(settings: &Settings, instances: &mut Instances, routes: usize) -> Result<Outcome> {
    let n = instances.list.len();
    let mut trials: Vec<Vec<f64>> = vec![vec![]; n];
    let mut commands: Vec<Vec<f64>> = vec![vec![]; n];
    let mut busy: Vec<Vec<f64>> = vec![vec![]; n];
    let mut failures = vec![0usize; n];
    for trial in 0..settings.reload_trials {
        for k in 0..n {
            let i = (trial + k) % n;
            let inst = &mut instances.list[i];
            inst.server.check_alive()?;
            let host = format!("probe-{routes}-{trial}.bench.example");
            let addr = inst.http_addr();
            if client::probe(addr, &host, "/").ok() == Some(200) {
                bail!("{}: {host} served before it was added", inst.peer.name());
            }
            // Each change starts from a settled proxy (the previous change fully processed).
            settle(inst, Instant::now(), Duration::from_secs(10));
            let t0 = Instant::now();
            inst.add_route(&host)?;
            let handed = t0.elapsed();
            match wait_serving(addr, &host, Duration::from_secs(30)) {
                Some(_) => {
                    let total = t0.elapsed().as_secs_f64() * 1000.0;
                    let b = settle(inst, t0, Duration::from_secs(10)).as_secs_f64() * 1000.0;
                    eprintln!(
                        "    trial {trial} {:8} {total:>8.1} ms (command {:.1} ms, busy until {b:.0} ms)",
                        inst.peer.name(),
                        handed.as_secs_f64() * 1000.0
                    );
                    trials[i].push(total);
                    commands[i].push(handed.as_secs_f64() * 1000.0);
                    busy[i].push(b);
                }
                None => {
                    eprintln!("    trial {trial} {:8} never served", inst.peer.name());
                    failures[i] += 1;
                }
            }
            // The old route table keeps serving too.
            let old = route_host(routes - 1);
            if client::probe(addr, &old, "/").ok() != Some(200) {
                bail!("{}: {old} stopped serving after a change", inst.peer.name());
            }
        }
    }
    let peers = instances
        .list
        .iter()
        .enumerate()
        .map(|(i, inst)| ReloadSummary {
            peer: inst.peer,
            median_ms: median(&trials[i]).unwrap_or(f64::NAN),
            max_ms: trials[i].iter().copied().fold(f64::NAN, f64::max),
            command_ms: median(&commands[i]).unwrap_or(f64::NAN),
            busy_ms: median(&busy[i]).unwrap_or(f64::NAN),
            trials_ms: trials[i].clone(),
            failures: failures[i],
        })
        .collect();
    Ok(Outcome::Reload { routes, peers })
}

fn memory(
    env: &Env,
    settings: &Settings,
    instances: &mut Instances,
    conns: usize,
) -> Result<Outcome> {
    let n = instances.list.len();
    let mut before: Vec<Vec<f64>> = vec![vec![]; n];
    let mut open: Vec<Vec<f64>> = vec![vec![]; n];
    let mut per: Vec<Vec<f64>> = vec![vec![]; n];
    for round in 0..settings.memory_rounds {
        for k in 0..n {
            let i = (round + k) % n;
            let inst = &mut instances.list[i];
            if round > 0 {
                // Every round on a fresh process: memory an earlier round freed but the
                // allocator kept would be reused and hide the per-connection cost.
                let (peer, layout) = (inst.peer, inst.layout);
                inst.server.stop();
                *inst = Instance::start(env, peer, layout)?;
            }
            inst.server.check_alive()?;
            let addr = inst.http_addr();
            // Warm: a few connections and requests so pools and caches exist before the baseline.
            {
                let mut warm: Vec<TcpStream> = (0..8)
                    .map(|_| TcpStream::connect(addr))
                    .collect::<std::io::Result<_>>()?;
                for _ in 0..50 {
                    for s in &mut warm {
                        client::get_on(s, "bench.example", "/", false)?;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(500));
            let pids = inst.pids();
            let rss0 = procs::rss_kib(&pids) as f64;
            let mut held = Vec::with_capacity(conns);
            for c in 0..conns {
                let mut s = TcpStream::connect(addr)
                    .with_context(|| format!("connection {c} to {}", inst.peer.name()))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                let code = client::get_on(&mut s, "bench.example", "/", false)
                    .with_context(|| format!("request on connection {c}"))?;
                if code != 200 {
                    bail!("{}: connection {c} got {code}", inst.peer.name());
                }
                held.push(s);
            }
            std::thread::sleep(Duration::from_millis(1000));
            let rss1 = procs::rss_kib(&inst.pids()) as f64;
            // Every connection must still be open and usable (none was dropped as idle).
            for (c, s) in held.iter_mut().enumerate().step_by(997) {
                client::get_on(s, "bench.example", "/", false)
                    .with_context(|| format!("{}: idle connection {c}", inst.peer.name()))?;
            }
            let b = (rss1 - rss0) * 1024.0 / conns as f64;
            eprintln!(
                "    round {round} {:8} RSS {rss0:.0} KiB -> {rss1:.0} KiB with {conns} idle connections: {b:.0} bytes each",
                inst.peer.name()
            );
            before[i].push(rss0);
            open[i].push(rss1);
            per[i].push(b);
            drop(held);
            std::thread::sleep(Duration::from_millis(1000));
        }
    }
    let peers = instances
        .list
        .iter()
        .enumerate()
        .map(|(i, inst)| MemorySummary {
            peer: inst.peer,
            conns,
            rss_before_kib: median(&before[i]).unwrap_or(f64::NAN),
            rss_open_kib: median(&open[i]).unwrap_or(f64::NAN),
            bytes_per_conn: median(&per[i]).unwrap_or(f64::NAN),
        })
        .collect();
    Ok(Outcome::Memory { peers })
}

/// The scenario names, one per line with titles (for `--list`).
pub fn list() -> String {
    let mut s = String::new();
    for sc in SCENARIOS {
        let _ = writeln!(s, "{:20} {}", sc.name, sc.title);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_names_are_unique_and_instances_are_grouped() {
        let mut names = std::collections::HashSet::new();
        for sc in SCENARIOS {
            assert!(names.insert(sc.name), "duplicate {}", sc.name);
        }
        // Reload scenarios follow the throughput scenario of the same route count, so the
        // route table is loaded once when that scenario runs alone (not alternated).
        let pos = |n: &str| SCENARIOS.iter().position(|s| s.name == n).unwrap();
        assert_eq!(pos("reload-10"), pos("routes-10") + 1);
        assert_eq!(pos("reload-10000"), pos("routes-10000") + 1);
    }

    #[test]
    fn alternated_scenarios_are_throughput_runs_whose_instances_can_run_side_by_side() {
        for pair in ALTERNATED {
            let scs: Vec<&Scenario> = pair
                .iter()
                .map(|n| {
                    SCENARIOS
                        .iter()
                        .find(|s| s.name == *n)
                        .expect("known scenario")
                })
                .collect();
            assert!(
                scs.iter()
                    .all(|s| matches!(s.kind, Kind::Throughput { .. })),
                "{pair:?}"
            );
            let (a, b) = (layout(scs[0]), layout(scs[1]));
            assert_ne!(a.slot(), b.slot(), "{pair:?} would share ports");
            for peer in [Peer::Sluice, Peer::SluiceEbpf, Peer::Nginx, Peer::Haproxy] {
                let (pa, pb) = (
                    crate::peers::Ports::of(peer, a),
                    crate::peers::Ports::of(peer, b),
                );
                let ports = |p: crate::peers::Ports| [p.http, p.h2c, p.https];
                assert!(ports(pa).iter().all(|p| !ports(pb).contains(p)), "{pair:?}");
            }
        }
    }

    /// Runs wrk with the generated script against a tiny server that records Host headers.
    #[test]
    fn routes_script_spreads_requests_over_every_route() {
        use std::io::{Read, Write};
        use std::sync::{Arc, Mutex};
        if std::process::Command::new("wrk")
            .arg("-v")
            .output()
            .is_err()
        {
            eprintln!("skipped: wrk is not installed");
            return;
        }
        let dir = std::env::temp_dir().join(format!("sluice-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = routes_script(&dir, 10).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let hosts: Arc<Mutex<std::collections::HashMap<String, u64>>> = Arc::default();
        let h = hosts.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let h = h.clone();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_string();
                            buf.drain(..end + 4);
                            if let Some(v) = head.lines().find_map(|l| l.strip_prefix("Host: ")) {
                                *h.lock().unwrap().entry(v.to_string()).or_default() += 1;
                            }
                            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                                .is_err()
                            {
                                return;
                            }
                        }
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        let out = std::process::Command::new("wrk")
            .args(["-t1", "-c2", "-d1s", "-s"])
            .arg(&script)
            .arg(format!("http://{addr}/"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen = hosts.lock().unwrap().clone();
        let want: std::collections::HashSet<String> = (0..10).map(route_host).collect();
        let got: std::collections::HashSet<String> = seen.keys().cloned().collect();
        assert_eq!(got, want, "requests went to exactly the 10 route hosts");
        let (min, max) = (seen.values().min().unwrap(), seen.values().max().unwrap());
        assert!(*max <= *min * 2 + 4, "evenly spread: {seen:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
