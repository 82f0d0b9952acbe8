//! `peer-bench`: Sluice, nginx and HAProxy side by side on one machine, each with one worker in
//! front of the same backend, alternated round by round; writes Markdown, JSON and SVG results.
//! Run it through `cargo xtask bench`, which installs the peers and load generators and builds
//! Sluice first.

#![forbid(unsafe_code)]

mod client;
mod h3load;
mod load;
mod peers;
mod procs;
mod report;
mod scenarios;
mod stats;
mod svg;

use anyhow::{Context, Result, bail};
use clap::Parser;
use std::path::{Path, PathBuf};
use std::process::Command;

use peers::{Env, Layout, Peer};
use report::{Baseline, Machine, Report, Versions};
use scenarios::{Instances, Kind, Outcome, SCENARIOS, ScenarioResult, Settings};

/// Sluice against nginx and HAProxy.
#[derive(Debug, Parser)]
#[command(name = "peer-bench")]
struct Cli {
    /// Short runs (1 round of 2 s per scenario, fewer trials) for trying things.
    #[arg(long)]
    quick: bool,
    /// Scenarios to run (default: all; `--list` names them).
    #[arg(long = "scenario", num_args = 1..)]
    scenarios: Vec<String>,
    /// Peers to run, comma-separated (default: sluice,sluice-ebpf,nginx,haproxy; sluice-ebpf
    /// only as root with `--ebpf-object`).
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Rounds per throughput scenario (default 3, quick 1).
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds per throughput run (default 5, quick 2).
    #[arg(long)]
    seconds: Option<u64>,
    /// The `sluice` binary to measure.
    #[arg(long)]
    sluice: PathBuf,
    /// The eBPF object (`cargo xtask ebpf` builds it) for the `sluice-ebpf` peer: Sluice with
    /// its kernel datapath. Without it, or without root, that peer is not measured.
    #[arg(long)]
    ebpf_object: Option<PathBuf>,
    /// Results directory (default: benches/results for a full default run, else
    /// benches/results/scratch, so partial runs never overwrite the committed results).
    #[arg(long)]
    out: Option<PathBuf>,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// Keep the scratch directory (configs, logs) after the run.
    #[arg(long)]
    keep: bool,
    /// The Sluice revision to print in the report (default: the working tree's, `-dirty` when it
    /// has changes).
    #[arg(long)]
    sluice_version: Option<String>,
    /// The command line to print in the report.
    #[arg(long, default_value = "cargo xtask bench")]
    command: String,
}

fn main() -> Result<()> {
    // The HTTP/3 load generator runs as a child process of the runner (pinned like wrk).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(h3load::SUBCOMMAND) {
        return h3load::main(&args[2..]);
    }
    let cli = Cli::parse();
    if cli.list {
        print!("{}", scenarios::list());
        return Ok(());
    }
    procs::stop_servers_on_signal()?;
    for name in &cli.scenarios {
        if !SCENARIOS.iter().any(|s| s.name == name) {
            bail!(
                "unknown scenario {name:?}; the scenarios are:\n{}",
                scenarios::list()
            );
        }
    }
    let ebpf = ebpf_unavailable(cli.ebpf_object.as_deref());
    let defaults: Vec<Peer> = Peer::ALL
        .into_iter()
        .filter(|p| *p != Peer::SluiceEbpf || ebpf.is_none())
        .collect();
    let peers: Vec<Peer> = if cli.peers.is_empty() {
        defaults.clone()
    } else {
        let mut v = vec![];
        for p in &cli.peers {
            v.push(Peer::parse(p).with_context(|| {
                format!("unknown peer {p:?} (sluice, sluice-ebpf, nginx, haproxy)")
            })?);
        }
        v.sort();
        v.dedup();
        if let (true, Some(why)) = (v.contains(&Peer::SluiceEbpf), &ebpf) {
            bail!("sluice-ebpf cannot run: {why}");
        }
        v
    };
    let selected: Vec<&scenarios::Scenario> = SCENARIOS
        .iter()
        .filter(|s| cli.scenarios.is_empty() || cli.scenarios.iter().any(|n| n == s.name))
        .collect();
    let settings = if cli.quick {
        Settings {
            rounds: cli.rounds.unwrap_or(1),
            target_rounds: cli.rounds.unwrap_or(1),
            seconds: cli.seconds.unwrap_or(2),
            warmup_seconds: 1,
            reload_trials: 2,
            memory_rounds: 1,
            quiet_wait_seconds: 30,
        }
    } else {
        Settings {
            rounds: cli.rounds.unwrap_or(3),
            // An explicit --rounds holds for every scenario.
            target_rounds: cli.rounds.unwrap_or(7),
            seconds: cli.seconds.unwrap_or(5),
            warmup_seconds: 1,
            reload_trials: 5,
            memory_rounds: 2,
            quiet_wait_seconds: 300,
        }
    };
    let full = !cli.quick
        && cli.scenarios.is_empty()
        && peers == defaults
        && cli.rounds.is_none()
        && cli.seconds.is_none();
    let results_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    let out = cli.out.clone().unwrap_or_else(|| {
        if full {
            results_root.clone()
        } else {
            results_root.join("scratch")
        }
    });

    for tool in ["nginx", "haproxy", "wrk", "h2load", "openssl", "taskset"] {
        if !have(tool) {
            bail!("{tool} is not installed; `cargo xtask bench` installs the Debian packages");
        }
    }
    let fd_limit = raise_nofile(65_536);
    check_ports_free()?;

    let machine = machine();
    let ncpu = machine.nproc;
    let pin = procs::Pinning::for_cpus(ncpu);
    let tmp = std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id()));
    let mut env = Env::new(tmp.clone(), pin, cli.sluice.clone(), fd_limit)?;
    if ebpf.is_none() {
        env.ebpf_object = cli.ebpf_object.clone();
    }
    env.quiet_budget
        .set(std::time::Duration::from_secs(settings.quiet_wait_seconds));
    eprintln!(
        "==> {} CPUs ({}); {}; open-file limit {fd_limit}; scratch {}",
        ncpu,
        machine.cpu_model,
        env.pin.describe(),
        tmp.display()
    );

    let result = run(&mut env, &peers, &selected, &settings);
    let ran = match result {
        Ok(v) => v,
        Err(e) => {
            if !cli.keep {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            return Err(e);
        }
    };

    let report = Report {
        started: command_line("date", &["-u", "+%Y-%m-%dT%H:%MZ"]),
        command: cli.command.clone(),
        machine,
        versions: versions(cli.sluice_version.as_deref()),
        settings,
        pinning: env.pin.describe(),
        baseline: ran.baseline,
        tls: ran.tls,
        peers: peers.clone(),
        not_measured: not_measured(
            ebpf.as_deref()
                .filter(|_| !peers.contains(&Peer::SluiceEbpf)),
        ),
        scenarios: ran.results,
    };
    report::write_all(&report, &out)?;
    if out == results_root {
        let readme = results_root.join("../../README.md");
        splice_readme(&readme, &report::readme_section(&report))
            .with_context(|| format!("updating {}", readme.display()))?;
        eprintln!("==> README.md performance section regenerated");
    }
    println!("{}", report::markdown(&report, ""));
    eprintln!("==> results written to {}", out.display());
    if !cli.keep {
        let _ = std::fs::remove_dir_all(&tmp);
    } else {
        eprintln!("==> scratch kept in {}", tmp.display());
    }
    Ok(())
}

/// Starts the backend, measures it alone, then runs each scenario on the instances its layout
/// needs (started when the layout changes).
fn run(
    env: &mut Env,
    peers: &[Peer],
    selected: &[&scenarios::Scenario],
    settings: &Settings,
) -> Result<Ran> {
    eprintln!("==> backend");
    let backend = peers::start_backend(env)?;
    env.backend_pid = backend.pid();
    let env = &*env;
    let baseline = {
        let tool = load::Tool::Wrk {
            conns: 64,
            close: false,
            script: None,
        };
        let url = format!("http://127.0.0.1:{}/", peers::BACKEND_PORT);
        let t0 = procs::core_times();
        let r = tool.run(&env.pin, &url, settings.seconds, &env.tmp)?;
        let t1 = procs::core_times();
        let b = Baseline {
            rps: r.rps,
            load_core_busy: procs::busy_fraction(&t0, &t1, &env.pin.load_cpus),
        };
        eprintln!(
            "    backend alone: {:.0} req/s, load core {:.0}% busy",
            b.rps,
            b.load_core_busy.unwrap_or(f64::NAN) * 100.0
        );
        Some(b)
    };
    let mut results = vec![];
    let mut tls = vec![];
    let mut current: Option<Instances> = None;
    let mut done: Vec<&str> = vec![];
    for (at, sc) in selected.iter().enumerate() {
        if done.contains(&sc.name) {
            continue;
        }
        // Scenarios compared with each other run together, round by round.
        let together: Vec<&scenarios::Scenario> = scenarios::ALTERNATED
            .iter()
            .find(|pair| pair[0] == sc.name)
            .map(|pair| {
                selected[at..]
                    .iter()
                    .filter(|s| pair.contains(&s.name))
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        if together.len() > 1 {
            let names: Vec<&str> = together.iter().map(|s| s.name).collect();
            eprintln!("==> {}: alternated round by round", names.join(" + "));
            for s in &together {
                eprintln!("    {}: {}", s.name, s.title);
            }
            let layouts: Vec<Layout> = together.iter().map(|s| scenarios::layout(s)).collect();
            current = None; // stops the previous instances first (same ports)
            let outcomes = Instances::start(env, peers, &layouts).and_then(|mut both| {
                scenarios::run_alternated(env, &together, settings, &mut both)
            });
            let outcomes = match outcomes {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("    FAILED: {e:#}");
                    let error = format!("{e:#}");
                    together
                        .iter()
                        .map(|_| Outcome::Failed {
                            error: error.clone(),
                        })
                        .collect()
                }
            };
            for (s, outcome) in together.iter().zip(outcomes) {
                results.push(ScenarioResult {
                    name: s.name.into(),
                    title: s.title.into(),
                    outcome,
                });
            }
            done.extend(names);
            continue;
        }
        eprintln!("==> {}: {}", sc.name, sc.title);
        let layout = scenarios::layout(sc);
        let outcome = (|| -> Result<Outcome> {
            // Idle memory is measured on fresh processes: memory a proxy kept from earlier
            // scenarios (allocator caches, grown pools) would hide the per-connection cost.
            let fresh = matches!(sc.kind, Kind::IdleMemory { .. });
            if fresh || current.as_ref().map(|c| c.layouts.as_slice()) != Some(&[layout]) {
                current = None; // stops the previous instances first (same ports)
                let mut started = Instances::start(env, peers, &[layout])?;
                if layout == Layout::Base && tls.is_empty() {
                    for inst in &mut started.list {
                        let info =
                            inst.while_running(env, |inst| Ok(peers::tls_info(inst.ports.https)))?;
                        tls.push(format!("{}: {info}", inst.peer.name()));
                    }
                }
                current = Some(started);
            }
            let inst = current.as_mut().expect("started above");
            scenarios::run(env, sc, settings, inst)
        })();
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                eprintln!("    FAILED: {e:#}");
                current = None; // restart on the next scenario
                Outcome::Failed {
                    error: format!("{e:#}"),
                }
            }
        };
        results.push(ScenarioResult {
            name: sc.name.into(),
            title: sc.title.into(),
            outcome,
        });
    }
    drop(current);
    drop(backend);
    Ok(Ran {
        results,
        baseline,
        tls,
    })
}

/// What [`run`] measured.
struct Ran {
    results: Vec<ScenarioResult>,
    baseline: Option<Baseline>,
    tls: Vec<String>,
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

fn command_line(program: &str, args: &[&str]) -> String {
    procs::command_text(program, args)
        .lines()
        .next()
        .unwrap_or("unknown")
        .to_string()
}

/// Raises this process's open-file limit (children inherit it) to `n`, or at least to its hard
/// limit when raising the hard limit is not permitted; returns the limit now in force. 10,000
/// idle connections and wrk's 1,000 need more than the usual 1,024.
fn raise_nofile(n: u64) -> u64 {
    let pid = std::process::id().to_string();
    let set = |v: u64| {
        Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={v}:{v}")])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !set(n) {
        let hard = procs::nofile_limits().map_or(1024, |(_, h)| h);
        set(hard);
    }
    procs::nofile_limits().map_or(1024, |(s, _)| s)
}

fn check_ports_free() -> Result<()> {
    let mut ports = vec![peers::BACKEND_PORT];
    ports.extend(28901..=28906);
    for base in [28100u16, 28200, 28300] {
        for p in 0..4 {
            for k in 0..3 {
                ports.push(base + 10 * p + k);
            }
        }
    }
    for p in ports {
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_err() {
            bail!("port {p} is in use (another benchmark running?)");
        }
    }
    // Sluice's HTTP/3 listener takes the UDP port of the same number too.
    if let Some(p) = peers::Ports::of(Peer::Sluice, Layout::Base).h3
        && std::net::UdpSocket::bind(("127.0.0.1", p)).is_err()
    {
        bail!("UDP port {p} is in use (another benchmark running?)");
    }
    Ok(())
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".into(), |(_, v)| v.trim().to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        memory_gib: mem_kib / 1024.0 / 1024.0,
        loadavg_at_start: std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn versions(sluice: Option<&str>) -> Versions {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches sits in the repository");
    let root = root.to_string_lossy();
    let rev = command_line("git", &["-C", &root, "rev-parse", "--short", "HEAD"]);
    let dirty = !procs::command_text(
        "git",
        &[
            "-C",
            &root,
            "status",
            "--porcelain",
            "--",
            "proxy",
            "sluice",
            "controller",
            "ir",
        ],
    )
    .is_empty();
    Versions {
        sluice: sluice.map_or_else(
            || format!("{rev}{}", if dirty { "-dirty" } else { "" }),
            str::to_string,
        ),
        nginx: command_line("nginx", &["-v"]).replace("nginx version: ", ""),
        // "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/"
        haproxy: command_line("haproxy", &["-v"])
            .split_whitespace()
            .nth(2)
            .map_or("HAProxy (unknown version)".into(), |v| {
                format!("HAProxy {v}")
            }),
        wrk: command_line("wrk", &["-v"])
            .split(" [")
            .next()
            .unwrap_or_default()
            .to_string(),
        h2load: command_line("h2load", &["--version"]),
        // "OpenSSL 3.0.19 27 Jan 2026 (Library: ...)"
        openssl: command_line("openssl", &["version"])
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Marks the generated part of the README's performance section.
const README_BEGIN: &str = "<!-- benches:begin -->";
const README_END: &str = "<!-- benches:end -->";

/// Replaces what lies between the README's markers with `section`.
fn splice_readme(readme: &Path, section: &str) -> Result<()> {
    let text = std::fs::read_to_string(readme)?;
    let (Some(a), Some(b)) = (text.find(README_BEGIN), text.find(README_END)) else {
        bail!("no {README_BEGIN} ... {README_END} markers");
    };
    if b < a {
        bail!("{README_END} comes before {README_BEGIN}");
    }
    let new = format!(
        "{}{README_BEGIN}\n{}\n{}",
        &text[..a],
        section.trim_end(),
        &text[b..]
    );
    std::fs::write(readme, new)?;
    Ok(())
}

/// Why the `sluice-ebpf` peer cannot run here, if it cannot.
fn ebpf_unavailable(object: Option<&Path>) -> Option<String> {
    let Some(object) = object else {
        return Some(
            "no eBPF object given (`cargo xtask bench` builds it with `cargo xtask ebpf`)".into(),
        );
    };
    if !object.exists() {
        return Some(format!(
            "{} does not exist (`cargo xtask ebpf` builds it)",
            object.display()
        ));
    }
    if procs::command_text("id", &["-u"]).trim() != "0" {
        return Some("the eBPF datapath needs root".into());
    }
    None
}

/// Peers and protocols the issue asks for that this machine cannot run (`ebpf`: why
/// `sluice-ebpf` cannot, when it was left out for that).
fn not_measured(ebpf: Option<&str>) -> Vec<String> {
    let mut v = vec![];
    if let Some(why) = ebpf {
        v.push(format!(
            "Sluice with its eBPF datapath (sluice-ebpf): not measured: {why}."
        ));
    }
    if !have("envoy") {
        let policy = procs::command_text("apt-cache", &["policy", "envoy"]);
        let why = if policy.contains("Candidate:") && !policy.contains("Candidate: (none)") {
            "installable from apt but not installed".to_string()
        } else {
            "no Debian package (`apt-cache policy envoy` has no candidate on this release)".into()
        };
        v.push(format!("Envoy: not measured: {why}."));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_section_is_replaced_between_the_markers_only() {
        let dir = std::env::temp_dir().join(format!("peer-bench-readme-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let readme = dir.join("README.md");
        std::fs::write(
            &readme,
            format!("# Top\n\n## Performance\n\nkept\n{README_BEGIN}\nold table\n{README_END}\n\n## Layout\n"),
        )
        .unwrap();
        splice_readme(&readme, "new table\n").unwrap();
        let text = std::fs::read_to_string(&readme).unwrap();
        assert_eq!(
            text,
            format!(
                "# Top\n\n## Performance\n\nkept\n{README_BEGIN}\nnew table\n{README_END}\n\n## Layout\n"
            )
        );
        std::fs::write(&readme, "no markers\n").unwrap();
        assert!(splice_readme(&readme, "x").is_err());
        assert_eq!(std::fs::read_to_string(&readme).unwrap(), "no markers\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
