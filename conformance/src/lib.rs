//! Gateway API conformance for Sluice: the upstream suite's cases (as data) run against the
//! `sluice standalone` gateway on one machine, with an in-process echo backend, producing an
//! upstream-shaped ConformanceReport.
#![forbid(unsafe_code)]

pub mod cases;
pub mod certs;
pub mod checks;
pub mod client;
pub mod cluster;
pub mod echo;
pub mod expect;
pub mod gateway;
pub mod grpc_send;
pub mod l4_send;
pub mod report;
pub mod runner;

use anyhow::Context as _;
use cases::{CasesFile, Claims};
use cluster::{Cluster, ClusterOptions, ObjKey};
use gateway::Gateway;
use report::{ConformanceReport, Outcome, TestResult};
use runner::{Env, Timing};
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Options of a conformance run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where to write the ConformanceReport YAML (`None`: not written).
    pub report: Option<PathBuf>,
    /// Run only these tests (upstream ShortNames); empty: all.
    pub only: Vec<String>,
    /// The shared suite data (`cases.yaml`, `upstream/`); default `../shared/conformance`.
    pub shared_dir: PathBuf,
    /// The `sluice` binary to run as `sluice standalone`; default `$SLUICE_BIN` or this
    /// executable.
    pub sluice_bin: PathBuf,
    /// Tests that must pass (one name per line, `#` comments); a failure of one of them makes
    /// [`Summary::ok`] false. Default `conformance/expected-pass.txt`.
    pub expected_pass: Option<PathBuf>,
    /// Claimed features; default `conformance/features.yaml`.
    pub features: PathBuf,
    /// Scratch directory (the standalone config dir lives below it); default a fresh temporary
    /// directory.
    pub work_dir: Option<PathBuf>,
    /// Admin API address given to the gateway; `None`: `127.N.0.1:19901` where `127.N.0.0/16`
    /// is the first loopback network no other run is using.
    pub admin: Option<SocketAddr>,
    /// `--address-pool` given to the gateway; `None`: `127.N.250.0/24`.
    pub address_pool: Option<String>,
    /// Extra arguments for `sluice standalone`.
    pub gateway_args: Vec<String>,
    /// Do not spawn a gateway: one is already serving `admin` and watching
    /// `<work_dir>/config`.
    pub external_gateway: bool,
    /// Timing knobs.
    pub timing: Timing,
    /// Print a progress line per test (default true).
    pub progress: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        let sluice_bin = std::env::var_os("SLUICE_BIN")
            .map(PathBuf::from)
            .or_else(|| std::env::current_exe().ok())
            .unwrap_or_else(|| PathBuf::from("sluice"));
        RunOptions {
            report: None,
            only: Vec::new(),
            shared_dir: PathBuf::from("../shared/conformance"),
            sluice_bin,
            expected_pass: Some(PathBuf::from("conformance/expected-pass.txt")),
            features: PathBuf::from("conformance/features.yaml"),
            work_dir: None,
            admin: None,
            address_pool: None,
            gateway_args: Vec::new(),
            external_gateway: false,
            timing: Timing::default(),
            progress: true,
        }
    }
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Every test's outcome, suite order.
    pub results: Vec<TestResult>,
    /// The report.
    pub report: ConformanceReport,
    /// Tests listed in expected-pass that did not pass (with their outcome).
    pub regressions: Vec<(String, String)>,
}

impl Summary {
    /// False when a test listed in expected-pass did not pass: CI must fail.
    pub fn ok(&self) -> bool {
        self.regressions.is_empty()
    }

    /// Outcome of a test by name.
    pub fn outcome(&self, name: &str) -> Option<&Outcome> {
        self.results
            .iter()
            .find(|r| r.test.name == name)
            .map(|r| &r.outcome)
    }
}

fn read_list(path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// The first `127.N.0.0/16` (N in 1..=60) that no other run holds and whose pod, admin and
/// gateway addresses are free, so concurrent runs on one machine do not collide. The returned
/// listener (on `127.N.255.254:9`) is the claim: keep it for the run; the kernel releases it
/// when the process ends, however it ends.
fn pick_loopback_net() -> anyhow::Result<(u8, std::net::TcpListener)> {
    use std::net::{Ipv4Addr, TcpListener};
    for n in 1..=60u8 {
        let Ok(claim) = TcpListener::bind((Ipv4Addr::new(127, n, 255, 254), 9)) else {
            continue;
        };
        let free = |ip: Ipv4Addr, port: u16| TcpListener::bind((ip, port)).is_ok();
        if free(Ipv4Addr::new(127, n, 0, 2), 3000)
            && free(Ipv4Addr::new(127, n, 0, 1), 19901)
            && free(Ipv4Addr::new(127, n, 250, 1), 80)
        {
            return Ok((n, claim));
        }
    }
    anyhow::bail!("no free loopback network 127.N.0.0/16 for the conformance run")
}

/// Tests whose upstream `Test` function is another test's (same steps, other manifests).
const STEP_ALIASES: &[(&str, &str)] = &[(
    "HTTPRouteBackendRequestHeaderModifier",
    "HTTPRouteRequestHeaderModifier",
)];

/// Tests whose upstream Go code returns before any check when the implementation claims a
/// feature (they are for implementations without it): (test, feature). They are reported
/// skipped, never passed.
const NOT_RUN_WHEN_CLAIMED: &[(&str, &str)] = &[
    (
        "TLSRouteListenerMixedTerminationNotSupported",
        "TLSRouteModeMixed",
    ),
    (
        "TLSRouteListenerTerminateNotSupported",
        "TLSRouteModeTerminate",
    ),
];

/// Names of the status objects of a layer the gateway reports (for the "dropped" wait).
fn reported_kinds(k: &ObjKey) -> bool {
    matches!(
        k.kind.as_str(),
        "Gateway"
            | "HTTPRoute"
            | "GRPCRoute"
            | "TLSRoute"
            | "TCPRoute"
            | "UDPRoute"
            | "BackendTLSPolicy"
    )
}

async fn wait_dropped(env: &Env, keys: &[ObjKey]) -> anyhow::Result<()> {
    let deadline = Instant::now() + env.timing.max_time;
    loop {
        let report = env.gateway.lock().await.status().await?;
        let left: Vec<&ObjKey> = keys
            .iter()
            .filter(|k| reported_kinds(k) && report.get(&k.kind, &k.namespace, &k.name).is_some())
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the gateway still reports {} after its manifest was removed",
                left[0]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn test_manifests(shared: &Path, t: &cases::TestCase) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for m in &t.manifests {
        out.extend(cluster::read_manifest(&shared.join("upstream").join(m))?);
    }
    Ok(out)
}

/// Runs the suite (or the `only` tests) and returns the summary; writes the report when asked.
pub async fn run(opts: RunOptions) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let suite = CasesFile::load(&opts.shared_dir.join("cases.yaml"))?;
    let claims = Claims::load(&opts.features)?;
    let expected = match &opts.expected_pass {
        Some(p) if p.exists() => read_list(p)?,
        _ => Vec::new(),
    };
    for name in opts.only.iter().chain(&expected) {
        anyhow::ensure!(
            suite.tests.iter().any(|t| &t.name == name),
            "unknown test {name} (not in cases.yaml)"
        );
    }

    let tmp;
    let work = match &opts.work_dir {
        Some(w) => w.clone(),
        None => {
            tmp = std::env::temp_dir().join(format!("sluice-conformance-{}", std::process::id()));
            tmp
        }
    };
    let dir = work.join("config");
    if !opts.external_gateway && dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let (net, _claim) = pick_loopback_net()?;
    let admin = opts
        .admin
        .unwrap_or(SocketAddr::from(([127, net, 0, 1], 19901)));
    let pool = opts
        .address_pool
        .clone()
        .unwrap_or(format!("127.{net}.250.0/24"));
    let certs = certs::generate()?;
    let mut cluster = Cluster::new(ClusterOptions {
        dir: dir.clone(),
        scratch: work.join("pods"),
        gateway_class: "sluice".into(),
        usable_addresses: vec![("IPAddress".into(), format!("127.{net}.250.254"))],
        unusable_addresses: vec![("IPAddress".into(), "198.51.100.1".into())],
        pod_net: net,
    })?;
    let mut base = vec![json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": "sluice"},
        "spec": {"controllerName": cluster::CONTROLLER_NAME},
    })];
    base.extend(cluster::read_manifest(
        &opts.shared_dir.join("upstream/base/manifests.yaml"),
    )?);
    base.extend(certs.objects.clone());
    cluster.apply_layer("00-base", base).await?;

    let gateway = if opts.external_gateway {
        Gateway::external(admin)
    } else {
        Gateway::spawn(
            &opts.sluice_bin,
            &dir,
            admin,
            &pool,
            &opts.gateway_args,
            &work.join("gateway.log"),
        )?
    };
    let env = Env::new(cluster, gateway, certs, opts.timing.clone(), claims.clone());
    let ns_args: serde_yaml::Value = serde_yaml::to_value(json!({"namespaces": [
        "gateway-conformance-infra", "gateway-conformance-app-backend", "gateway-conformance-web-backend"
    ]}))?;
    let base_ready = env.wait_check("NamespacesMustBeReady", &ns_args).await;
    if opts.progress {
        match &base_ready {
            Ok(()) => println!(
                "base manifests ready in {:.1}s (gateway log: {})",
                started.elapsed().as_secs_f64(),
                work.join("gateway.log").display()
            ),
            Err(e) => println!("base manifests NOT ready: {e}"),
        }
    }

    let mut results = Vec::new();
    for test in &suite.tests {
        let t0 = Instant::now();
        let outcome = if !opts.only.is_empty() && !opts.only.contains(&test.name) {
            Outcome::Skipped("not selected (--only)".into())
        } else if let Some(f) = claims.missing_feature(test) {
            Outcome::NotSupported(format!("feature {f} not claimed"))
        } else if test.profiles.is_empty() && test.features.is_empty() {
            // A test in no profile runs when the features it names are claimed, as upstream
            // (the report's profiles do not count it); one that names none is not run.
            Outcome::NotSupported("in no conformance profile".into())
        } else if let Some(why) = claims.skip_tests.get(&test.name) {
            Outcome::Skipped(why.clone())
        } else if let Some((_, f)) = NOT_RUN_WHEN_CLAIMED
            .iter()
            .find(|(t, f)| *t == test.name && claims.supported_features.contains(*f))
        {
            Outcome::Skipped(format!(
                "upstream checks nothing when {f} is claimed (the test is for implementations without it)"
            ))
        } else if let Err(e) = &base_ready {
            Outcome::Failed(format!("base manifests not ready: {e}"))
        } else {
            let layer = runner::TEST_LAYER;
            let applied = match test_manifests(&opts.shared_dir, test) {
                Ok(objs) => env.cluster.lock().await.apply_layer(layer, objs).await,
                Err(e) => Err(e),
            };
            // Tests upstream defines as another test's function with other manifests.
            let mut effective = test.clone();
            if effective.steps.is_empty()
                && let Some(src) = STEP_ALIASES
                    .iter()
                    .find(|(t, _)| *t == test.name)
                    .and_then(|(_, src)| suite.tests.iter().find(|x| x.name == *src))
            {
                effective.steps = src.steps.clone();
            }
            let outcome = match applied {
                Ok(()) => runner::run_test(&env, &effective).await,
                Err(e) => Outcome::Failed(format!("applying manifests: {e:#}")),
            };
            let keys = {
                let mut c = env.cluster.lock().await;
                let keys = c.layer_keys(layer);
                c.remove_layer(layer)?;
                keys
            };
            match wait_dropped(&env, &keys).await {
                Ok(()) => outcome,
                Err(e) if outcome == Outcome::Passed => Outcome::Failed(format!("cleanup: {e:#}")),
                Err(_) => outcome,
            }
        };
        let seconds = t0.elapsed().as_secs_f64();
        if opts.progress
            && !matches!(outcome, Outcome::NotSupported(_))
            && !(matches!(&outcome, Outcome::Skipped(w) if w.starts_with("not selected")))
        {
            println!("{:<60} {:<5} {:>6.1}s", test.name, outcome.label(), seconds);
            match &outcome {
                Outcome::Failed(why) | Outcome::Skipped(why) => println!("    {why}"),
                _ => {}
            }
        }
        results.push(TestResult {
            test: test.clone(),
            outcome,
            seconds,
        });
    }

    let report = report::build(
        &results,
        &cases::profiles(),
        &claims,
        env!("CARGO_PKG_VERSION"),
    );
    if let Some(path) = &opts.report {
        std::fs::write(path, serde_yaml::to_string(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let regressions: Vec<(String, String)> = expected
        .iter()
        .filter_map(|name| {
            let r = results.iter().find(|r| &r.test.name == name)?;
            match &r.outcome {
                Outcome::Passed => None,
                Outcome::Skipped(w) if w.starts_with("not selected") => None,
                o => Some((
                    name.clone(),
                    format!(
                        "{}: {}",
                        o.label(),
                        match o {
                            Outcome::Failed(w) | Outcome::Skipped(w) | Outcome::NotSupported(w) =>
                                w.as_str(),
                            Outcome::Passed => "",
                        }
                    ),
                )),
            }
        })
        .collect();
    if opts.progress {
        print!("{}", report::summary_table(&report, &results));
        let count = |f: fn(&Outcome) -> bool| results.iter().filter(|r| f(&r.outcome)).count();
        println!(
            "conformance run took {:.0}s",
            started.elapsed().as_secs_f64()
        );
        println!(
            "conformance: {} passed, {} failed, {} skipped",
            count(|o| *o == Outcome::Passed),
            count(|o| matches!(o, Outcome::Failed(_))),
            count(|o| matches!(o, Outcome::Skipped(w) if !w.starts_with("not selected"))),
        );
        for (name, why) in &regressions {
            println!("REGRESSION: {name} is in expected-pass.txt but did not pass ({why})");
        }
    }
    Ok(Summary {
        results,
        report,
        regressions,
    })
}
