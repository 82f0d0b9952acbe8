//! Runs the suite: lays out the base manifests, starts the gateway, then per test applies its
//! manifests, evaluates its steps (status checks, request cases, mutations) and removes them.

use crate::cases::{Claims, TestCase, substitute};
use crate::certs::Generated;
use crate::checks::{self, CheckState, Outcome as CheckOutcome, View};
use crate::client::{self, ClientTls, HttpRequest, Protocol};
use crate::cluster::{Cluster, ObjKey};
use crate::echo::grpc_echo_client_call;
use crate::expect::{HttpCase, compare_round_trip};
use crate::gateway::Gateway;
use crate::grpc_send::{self, GrpcCase};
use crate::report::Outcome;
use serde_json::json;
use serde_yaml::Value;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Timing knobs (upstream defaults, faster retry pacing).
#[derive(Debug, Clone)]
pub struct Timing {
    /// MaxTimeToConsistency and the status-check timeout (default 30 s).
    pub max_time: Duration,
    /// RequiredConsecutiveSuccesses (default 3).
    pub consecutive: usize,
    /// Delay after a failed attempt (default 200 ms; upstream uses 1 s).
    pub retry_delay: Duration,
    /// Per-request timeout (default 10 s).
    pub request_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            max_time: Duration::from_secs(30),
            consecutive: 3,
            retry_delay: Duration::from_millis(200),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Shared state of a run.
pub struct Env {
    /// The emulated cluster.
    pub cluster: Mutex<Cluster>,
    /// The gateway under test.
    pub gateway: Mutex<Gateway>,
    /// Generated certificates.
    pub certs: Generated,
    /// Timing.
    pub timing: Timing,
    /// Claimed features.
    pub claims: Claims,
    known_sans: Arc<HashMap<Vec<u8>, Vec<String>>>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env").finish_non_exhaustive()
    }
}

/// Error of a test: a failed expectation or a step the runner cannot run.
#[derive(Debug)]
enum StepError {
    Failed(String),
    Unsupported(String),
}

type StepResult = Result<(), StepError>;

fn fail<T>(msg: impl Into<String>) -> Result<T, StepError> {
    Err(StepError::Failed(msg.into()))
}

fn unsupported<T>(msg: impl Into<String>) -> Result<T, StepError> {
    Err(StepError::Unsupported(msg.into()))
}

impl Env {
    /// A run environment.
    pub fn new(
        cluster: Cluster,
        gateway: Gateway,
        certs: Generated,
        timing: Timing,
        claims: Claims,
    ) -> Self {
        let known_sans = certs
            .secrets
            .values()
            .map(|c| (c.der.clone(), c.sans.clone()))
            .collect();
        Env {
            cluster: Mutex::new(cluster),
            gateway: Mutex::new(gateway),
            certs,
            timing,
            claims,
            known_sans: Arc::new(known_sans),
        }
    }

    /// Polls a status check until it holds or the timeout passes.
    pub async fn wait_check(&self, name: &str, args: &Value) -> Result<(), String> {
        let deadline = Instant::now() + self.timing.max_time;
        let mut st = CheckState::default();
        let mut last;
        loop {
            {
                let mut gw = self.gateway.lock().await;
                gw.check_alive().map_err(|e| e.to_string())?;
                match gw.status().await {
                    Ok(report) => {
                        let cluster = self.cluster.lock().await;
                        let view = View {
                            status: &report,
                            cluster: &cluster,
                        };
                        match checks::evaluate(name, args, view, &mut st) {
                            CheckOutcome::Holds => return Ok(()),
                            CheckOutcome::Pending(why) => last = why,
                            CheckOutcome::Unsupported(why) => return Err(format!("\u{0}{why}")),
                        }
                    }
                    Err(e) => last = format!("admin API: {e:#}"),
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{name} did not hold within {:?}: {last}",
                    self.timing.max_time
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn gateway_ip(&self, gw: &str) -> Result<IpAddr, StepError> {
        let args: Value =
            serde_yaml::to_value(json!({"gwRef": {"gateway": gw}})).unwrap_or_default();
        self.wait_check("WaitForGatewayAddress", &args)
            .await
            .map_err(StepError::Failed)?;
        let report = self
            .gateway
            .lock()
            .await
            .status()
            .await
            .map_err(|e| StepError::Failed(e.to_string()))?;
        let cluster = self.cluster.lock().await;
        let addr = View {
            status: &report,
            cluster: &cluster,
        }
        .gateway_address(gw)
        .map_err(StepError::Failed)?;
        addr.parse()
            .map_err(|_| StepError::Unsupported(format!("gateway address {addr:?} is not an IP")))
    }

    async fn listener_port(&self, gw: &str, listener: Option<&str>) -> Result<u16, StepError> {
        let (ns, name) = checks::nn(gw);
        let cluster = self.cluster.lock().await;
        let obj = cluster
            .get(&ObjKey {
                kind: "Gateway".into(),
                namespace: ns,
                name,
            })
            .ok_or_else(|| StepError::Failed(format!("Gateway {gw} is not applied")))?;
        let ls = obj
            .pointer("/spec/listeners")
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default();
        let l = listener
            .and_then(|n| {
                ls.iter()
                    .find(|l| l.get("name").and_then(|x| x.as_str()) == Some(n))
            })
            .or(ls.first())
            .ok_or_else(|| StepError::Failed(format!("Gateway {gw} has no listeners")))?;
        Ok(l.get("port").and_then(|p| p.as_u64()).unwrap_or(80) as u16)
    }
}

/// Checks that cases.yaml transcribes with a fixed `routeNN` where upstream loops over the
/// routes of the preceding accepted-check (`for _, routeNN := range routes`): (test, line).
const ROUTE_LOOP_ERRATA: &[(&str, u64)] = &[
    ("HTTPRouteHostnameIntersection", 61),
    ("HTTPRouteHostnameIntersection", 321),
];

/// The layer a test's manifests are applied as.
pub const TEST_LAYER: &str = "50-test";

/// Upstream `http.AwaitConvergence`: repeats `attempt` until it succeeds `consecutive` times in
/// a row, waiting `retry_delay` after each failure; fails with the last error once `max_time`
/// has passed.
async fn await_convergence<F, Fut>(t: &Timing, mut attempt: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + t.max_time;
    let (mut ok, mut attempts) = (0usize, 0usize);
    loop {
        attempts += 1;
        match attempt().await {
            Ok(()) => {
                ok += 1;
                if ok >= t.consecutive {
                    return Ok(());
                }
                continue;
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(format!(
                    "did not converge after {attempts} attempts in {:?}: {e}",
                    t.max_time
                ));
            }
            Err(_) => ok = 0,
        }
        tokio::time::sleep(t.retry_delay).await;
    }
}

/// Runs the cases together (upstream's parallel subtests); fails with every case's error.
async fn all_cases<I>(cases: I) -> StepResult
where
    I: IntoIterator,
    I::Item: Future<Output = Result<(), String>>,
{
    let errors: Vec<String> = futures::future::join_all(cases)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        fail(errors.join("\n      "))
    }
}

/// Upstream `weight.extractBackendName`: the Deployment name of a pod `<deployment>-<rs>-<id>`.
fn backend_of_pod(pod: &str) -> String {
    let parts: Vec<&str> = pod.split('-').collect();
    if parts.len() < 3 {
        pod.to_string()
    } else {
        parts[..parts.len() - 2].join("-")
    }
}

/// Upstream `weight.TestWeightedDistribution`, retried `MaxTestRetries` (10) times: 500 samples,
/// 10 at a time, each naming the pod that answered; every backend must be expected, exactly
/// the backends with a weight above 0 must be hit, and each share must be within 0.05 of its
/// weight.
async fn weighted_distribution<F, Fut>(want: &BTreeMap<String, f64>, sample: F) -> StepResult
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<String, String>>,
{
    use futures::StreamExt as _;
    const TOTAL: usize = 500;
    let mut last = String::new();
    for _ in 0..10 {
        let pods: Vec<Result<String, String>> = futures::stream::iter(0..TOTAL)
            .map(|_| sample())
            .buffer_unordered(10)
            .collect()
            .await;
        let mut seen = BTreeMap::<String, f64>::new();
        let mut errs = Vec::new();
        for p in pods {
            match p {
                Ok(pod) => {
                    let b = backend_of_pod(&pod);
                    if want.contains_key(&b) {
                        *seen.entry(b).or_default() += 1.0;
                    } else {
                        errs.push(format!("request was handled by an unexpected pod {pod:?}"));
                    }
                }
                Err(e) => errs.push(e),
            }
        }
        if let Some(e) = errs.first() {
            last = format!("error while sending requests: {e}");
            continue;
        }
        let active = want.values().filter(|w| **w > 0.0).count();
        if seen.len() != active {
            errs.push(format!(
                "expected {active} backends to receive traffic, but got {}",
                seen.len()
            ));
        }
        for (b, w) in want {
            let got = seen.get(b).copied().unwrap_or(0.0) / TOTAL as f64;
            if (got - w).abs() > 0.05 {
                errs.push(format!("{b}: {got:.3} not within 0.05 of {w}"));
            }
        }
        if errs.is_empty() {
            return Ok(());
        }
        last = errs.join("; ");
    }
    fail(format!("weighted distribution failed 10 times: {last}"))
}

/// Per-test interpretation state.
struct TestRun<'a> {
    env: &'a Env,
    test: &'a TestCase,
    vars: BTreeMap<String, Value>,
    use_port: HashMap<String, bool>,
    last_routes: Vec<String>,
    mutations: usize,
    sends: usize,
    expect_mirrors: bool,
    /// `spec.validation.caCertificateRefs` a mutation replaced, to restore later.
    saved_ca_refs: Option<serde_json::Value>,
}

fn str_arg<'v>(v: &'v Value, k: &str) -> Option<&'v str> {
    v.get(k).and_then(Value::as_str)
}

fn leaf_pem(chain: &str) -> String {
    match chain.find("-----END CERTIFICATE-----") {
        Some(i) => chain[..i + "-----END CERTIFICATE-----".len()].to_string() + "\n",
        None => chain.to_string(),
    }
}

impl<'a> TestRun<'a> {
    fn new(env: &'a Env, test: &'a TestCase) -> Self {
        let mut vars = BTreeMap::new();
        let secret = |n: &str| {
            env.certs
                .secrets
                .get(&format!("gateway-conformance-infra/{n}"))
        };
        let server_secret = if test.name.starts_with("TLSRoute") {
            "tls-checks-certificate"
        } else {
            "tls-validity-checks-certificate"
        };
        if let Some(c) = secret(server_secret) {
            vars.insert("$serverCertPem".into(), Value::from(c.cert_pem.clone()));
        }
        if let Some(c) = secret("tls-validity-checks-client-certificate") {
            vars.insert("$clientCertPem".into(), Value::from(c.cert_pem.clone()));
            vars.insert("$clientCertKey".into(), Value::from(c.key_pem.clone()));
        }
        if let Some(c) = secret("tls-validity-checks-per-port-client-certificate") {
            vars.insert(
                "$clientCertPerPortPem".into(),
                Value::from(c.cert_pem.clone()),
            );
            vars.insert(
                "$clientCertPerPortKey".into(),
                Value::from(c.key_pem.clone()),
            );
        }
        if let Some(c) = secret("tls-checks-client-certificate") {
            vars.insert(
                "$expectedClientCert".into(),
                Value::from(leaf_pem(&c.cert_pem)),
            );
        }
        vars.insert(
            "$suite.ControllerName".into(),
            Value::from(crate::cluster::CONTROLLER_NAME),
        );
        if test.name == "HTTPRouteServiceTypes" {
            vars.insert("$path".into(), Value::from("manual-endpointslices"));
        }
        TestRun {
            env,
            test,
            vars,
            use_port: HashMap::new(),
            last_routes: Vec::new(),
            mutations: 0,
            sends: 0,
            expect_mirrors: false,
            saved_ca_refs: None,
        }
    }

    async fn run(&mut self) -> StepResult {
        let steps = self.test.steps.clone();
        if !steps
            .iter()
            .any(|s| s.get("send").is_some() || s.get("check").is_some())
        {
            return unsupported("no steps transcribed for this test");
        }
        self.run_steps(&steps).await
    }

    fn run_steps<'s>(
        &'s mut self,
        steps: &'s [Value],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = StepResult> + 's>> {
        Box::pin(async move {
            for (i, step) in steps.iter().enumerate() {
                if let Some(rows) = step
                    .get("table")
                    .and(step.get("rows"))
                    .and_then(Value::as_sequence)
                {
                    if self.test.name == "HTTPRouteRetry" {
                        return self.retry_rows(rows).await;
                    }
                    let rest = &steps[i + 1..];
                    let columns: Vec<String> = rows
                        .iter()
                        .filter_map(Value::as_mapping)
                        .flat_map(|m| m.keys().filter_map(|k| k.as_str().map(str::to_string)))
                        .collect();
                    for row in rows {
                        let saved = self.vars.clone();
                        // A column a row leaves out is the Go zero value: empty.
                        for c in &columns {
                            for prefix in ["$tc", "$s"] {
                                self.vars.insert(format!("{prefix}.{c}"), Value::from(""));
                            }
                        }
                        self.bind_row(row);
                        let r = self.run_steps(rest).await;
                        self.vars = saved;
                        r?;
                    }
                    return Ok(());
                }
                // Upstream loops over the test's BackendTLSPolicies (`for _, policyNN := range
                // ...`); cases.yaml keeps the loop variable: run the rest once per policy.
                if !self.vars.contains_key("$policyNN")
                    && serde_yaml::to_string(step).is_ok_and(|t| t.contains("$policyNN"))
                {
                    let policies = self.test_objects("BackendTLSPolicy").await;
                    if policies.is_empty() {
                        return unsupported(
                            "$policyNN without a BackendTLSPolicy in the manifests",
                        );
                    }
                    for p in policies {
                        let saved = self.vars.clone();
                        self.vars.insert(
                            "$policyNN".into(),
                            Value::from(format!("{}/{}", p.namespace, p.name)),
                        );
                        self.vars
                            .insert("$policyNN.Name".into(), Value::from(p.name.clone()));
                        let r = self.run_steps(&steps[i..]).await;
                        self.vars = saved;
                        r?;
                    }
                    return Ok(());
                }
                self.run_step(step).await?;
            }
            Ok(())
        })
    }

    fn bind_row(&mut self, row: &Value) {
        if let Some(m) = row.as_mapping() {
            for (k, v) in m {
                if let Some(k) = k.as_str() {
                    for prefix in ["$tc", "$s"] {
                        self.vars.insert(format!("{prefix}.{k}"), v.clone());
                    }
                }
            }
        }
    }

    async fn run_step(&mut self, step: &Value) -> StepResult {
        if let Some(name) = str_arg(step, "check") {
            return self.run_check(name, step).await;
        }
        if let Some(kind) = str_arg(step, "send") {
            return self.run_send(kind, step).await;
        }
        if step.get("mutate").is_some() {
            self.mutations += 1;
            return self.mutate(self.mutations).await;
        }
        unsupported(format!("step {step:?}"))
    }

    async fn run_check(&mut self, name: &str, step: &Value) -> StepResult {
        match name {
            "client.InNamespace" if self.test.name == "HTTPRouteServiceTypes" => {
                let mut c = self.env.cluster.lock().await;
                let ips: Vec<_> = c
                    .service_pods("gateway-conformance-infra", "infra-backend-v1")
                    .iter()
                    .map(|p| p.ip)
                    .collect();
                c.fill_manual_slices(
                    &[
                        "manual-endpointslices-ip4",
                        "headless-manual-endpointslices-ip4",
                    ],
                    "gateway-conformance-infra",
                    &ips,
                )
                .map_err(|e| StepError::Failed(e.to_string()))?;
                return Ok(());
            }
            "http.ExpectMirroredRequest" => {
                self.expect_mirrors = true;
                return Ok(());
            }
            "weight.NewFunctionBasedSender" => return Ok(()),
            "weight.TestWeightedDistribution" if self.test.name == "HTTPRouteWeight" => {
                return self.weighted(step).await;
            }
            "weight.TestWeightedDistribution" if self.test.name == "GRPCRouteWeight" => {
                return self.grpc_weighted(step).await;
            }
            "http.AwaitConvergence" if self.test.name == "HTTPRouteBackendProtocolWebSocket" => {
                return self.websocket().await;
            }
            "http.MakeRequest" => return Ok(()),
            _ => {}
        }
        let line = step.get("line").and_then(Value::as_u64).unwrap_or(0);
        self.before_check(line).await?;
        let mut step = step.clone();
        // Upstream passes the policy object it just read; cases.yaml has no argument for it.
        if name == "BackendTLSPolicyMustHaveLatestConditions" && step.get("policyNN").is_none() {
            match self.test_objects("BackendTLSPolicy").await.as_slice() {
                [p] => step["policyNN"] = Value::from(format!("{}/{}", p.namespace, p.name)),
                _ => return unsupported(format!("{name} at line {line}: which policy?")),
            }
        }
        let step = &step;
        let args = substitute(step, &self.vars).map_err(StepError::Unsupported);
        // `$routeNN` iterates over the routes of the preceding accepted-check.
        let errata = ROUTE_LOOP_ERRATA
            .iter()
            .any(|(t, l)| *t == self.test.name && *l == line);
        let loops: Vec<Value> =
            if errata || step.get("routeNN").and_then(Value::as_str) == Some("$routeNN") {
                self.last_routes
                    .iter()
                    .map(|r| {
                        let mut s = step.clone();
                        s["routeNN"] = Value::from(r.clone());
                        s
                    })
                    .collect()
            } else {
                vec![args?]
            };
        for args in loops {
            if name.starts_with("GatewayAnd") {
                self.last_routes = args
                    .get("routeNNs")
                    .and_then(Value::as_sequence)
                    .map(|v| {
                        v.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                if let Some(g) = args.get("gw").and_then(|g| str_arg(g, "gateway")) {
                    let use_port = args.get("usePort").and_then(Value::as_bool).unwrap_or(true);
                    self.use_port.insert(g.to_string(), use_port);
                }
            }
            match self.env.wait_check(name, &args).await {
                Ok(()) => {}
                Err(e) if e.starts_with('\u{0}') => return unsupported(e[1..].to_string()),
                Err(e) => return fail(e),
            }
        }
        Ok(())
    }

    async fn target(&self, step: &Value, scheme: &str) -> Result<(SocketAddr, String), StepError> {
        let address = step
            .get("address")
            .ok_or_else(|| StepError::Unsupported("send without address".into()))?;
        let gw = str_arg(address, "gateway")
            .ok_or_else(|| StepError::Unsupported(format!("address {address:?}")))?;
        let listener = str_arg(address, "listener");
        let ip = self.env.gateway_ip(gw).await?;
        let default_port = if scheme == "https" { 443 } else { 80 };
        let port = if listener.is_none() && self.use_port.get(gw) == Some(&false) {
            default_port
        } else {
            self.env.listener_port(gw, listener).await?
        };
        let addr = SocketAddr::new(ip, port);
        let host_ip = if ip.is_ipv6() {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        let authority = if port == default_port {
            host_ip
        } else {
            format!("{host_ip}:{port}")
        };
        Ok((addr, authority))
    }

    async fn run_send(&mut self, kind: &str, step: &Value) -> StepResult {
        self.sends += 1;
        if self.test.name == "HTTPRouteReferenceGrant" && self.sends == 2 {
            // Upstream deletes the ReferenceGrant between the two requests.
            self.env
                .cluster
                .lock()
                .await
                .delete(&ObjKey {
                    kind: "ReferenceGrant".into(),
                    namespace: "gateway-conformance-web-backend".into(),
                    name: "reference-grant".into(),
                })
                .map_err(|e| StepError::Failed(e.to_string()))?;
        }
        // `casesRef`/`via` only say where upstream's loop came from.
        let mut step = step.clone();
        if let Some(m) = step.as_mapping_mut() {
            m.remove("casesRef");
            m.remove("via");
        }
        let step = substitute(&step, &self.vars).map_err(StepError::Unsupported)?;
        match kind {
            "http" | "https" | "http-expect-failure" | "https-expect-failure" => {}
            "tls-connection-rejected" => return self.tls_rejected(&step).await,
            "grpc" => return self.grpc_send(&step).await,
            other => return unsupported(format!("send {other}")),
        }
        let https = kind.starts_with("https");
        let scheme = if https { "https" } else { "http" };
        let (addr, authority) = self.target(&step, scheme).await?;
        let tls = if https {
            let server_name = str_arg(&step, "serverName").unwrap_or_default().to_string();
            let roots = str_arg(&step, "serverCertificate")
                .unwrap_or_default()
                .to_string();
            let client_cert = match (
                str_arg(&step, "clientCertificate"),
                str_arg(&step, "clientCertificateKey"),
            ) {
                (Some(c), Some(k)) => Some((c.to_string(), k.to_string())),
                _ => None,
            };
            Some(ClientTls {
                server_name,
                roots_pem: roots,
                client_cert,
                known_sans: self.env.known_sans.clone(),
            })
        } else {
            None
        };
        let cases: Vec<HttpCase> = step
            .get("cases")
            .and_then(Value::as_sequence)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|c| {
                serde_yaml::from_value(c).map_err(|e| StepError::Unsupported(format!("case: {e}")))
            })
            .collect::<Result<_, _>>()?;
        if cases
            .iter()
            .any(|c| c.mirrored_to.iter().any(|m| m.percent.is_some()))
        {
            return unsupported("percentage mirror distribution check is not implemented");
        }
        let this: &TestRun<'_> = self;
        let futs = cases.into_iter().enumerate().map(|(i, mut case)| {
            let tls = tls.clone();
            let authority = authority.clone();
            let mirror = this.expect_mirrors && !case.mirrored_to.is_empty();
            // HTTPRouteListenerPortMatching sends each case to the listener whose port is in
            // the case's Host header.
            let addr = match case.request.host.rsplit_once(':') {
                Some((_, p)) if this.test.name == "HTTPRouteListenerPortMatching" => {
                    SocketAddr::new(addr.ip(), p.parse().unwrap_or(addr.port()))
                }
                _ => addr,
            };
            async move {
                let name = case.display_name(i);
                if mirror {
                    let id = format!("{:016x}", rand::random::<u64>());
                    let sep = if case.request.path.contains('?') {
                        '&'
                    } else {
                        '?'
                    };
                    case.request.path = format!(
                        "{}{sep}gateway-api-conformance-request-id={id}",
                        case.request.path
                    );
                    if let Some(er) = case.expected_request.as_mut() {
                        er.request.path = case.request.path.clone();
                    }
                }
                let r = match kind {
                    "http-expect-failure" => this.expect_failure(&case, addr, &authority).await,
                    "https-expect-failure" => {
                        this.one_shot_must_fail(&case, addr, &authority, tls).await
                    }
                    _ => this.converge(&case, addr, &authority, scheme, tls).await,
                };
                let r = match r {
                    Ok(()) if mirror => this.check_mirrors(&case).await,
                    other => other,
                };
                r.map_err(|e| format!("case {name:?}: {e}"))
            }
        });
        all_cases(futs).await
    }

    fn request(
        &self,
        case: &HttpCase,
        addr: SocketAddr,
        authority: &str,
        tls: Option<ClientTls>,
    ) -> HttpRequest {
        let mut headers: Vec<(String, String)> = case
            .request
            .headers
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        headers.push(("X-Echo-Set-Header".into(), case.echo_set_header()));
        let protocol = match (case.request.protocol.as_str(), tls.is_some()) {
            ("H2C_PRIOR_KNOWLEDGE", _) => Protocol::H2cPriorKnowledge,
            (_, true) => Protocol::Https,
            _ => Protocol::Http1,
        };
        HttpRequest {
            addr,
            host: if case.request.host.is_empty() {
                authority.to_string()
            } else {
                case.request.host.clone()
            },
            method: if case.request.method.is_empty() {
                "GET".into()
            } else {
                case.request.method.clone()
            },
            path: if case.request.path.is_empty() {
                "/".into()
            } else {
                case.request.path.clone()
            },
            headers,
            body: (!case.request.body.is_empty()).then(|| case.request.body.clone()),
            protocol,
            tls,
            timeout: self.env.timing.request_timeout,
        }
    }

    async fn converge(
        &self,
        case: &HttpCase,
        addr: SocketAddr,
        authority: &str,
        scheme: &str,
        tls: Option<ClientTls>,
    ) -> Result<(), String> {
        let t = &self.env.timing;
        let want_client_cert = tls.as_ref().is_some_and(|t| t.client_cert.is_some());
        let req = self.request(case, addr, authority, tls);
        let deadline = Instant::now() + t.max_time;
        let (mut ok, mut attempts) = (0usize, 0usize);
        let mut last;
        loop {
            attempts += 1;
            match client::round_trip(&req).await {
                Ok(resp) => match compare_round_trip(case, &resp, scheme, authority) {
                    Ok(()) if want_client_cert && !resp.client_cert_requested => {
                        return Err(
                            "client certificate was not requested during the handshake".into()
                        );
                    }
                    Ok(()) => {
                        ok += 1;
                        if ok >= t.consecutive {
                            return Ok(());
                        }
                        continue;
                    }
                    Err(e) => last = e,
                },
                Err(e) => last = format!("request failed: {e:#}"),
            }
            ok = 0;
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} {} (Host {}) did not converge after {attempts} attempts in {:?}: {last}",
                    req.method, req.path, req.host, t.max_time
                ));
            }
            tokio::time::sleep(t.retry_delay).await;
        }
    }

    async fn expect_failure(
        &self,
        case: &HttpCase,
        addr: SocketAddr,
        authority: &str,
    ) -> Result<(), String> {
        let t = &self.env.timing;
        let req = self.request(case, addr, authority, None);
        let deadline = Instant::now() + t.max_time;
        let mut ok = 0;
        let mut last;
        loop {
            match client::round_trip(&req).await {
                Ok(r) if r.status == 200 => {
                    return Err(format!("{} {} should fail, got 200", req.method, req.path));
                }
                Ok(r) if r.status == 408 || r.status == 504 => {
                    last = format!("status {}", r.status)
                }
                Ok(_) => {
                    ok += 1;
                    if ok >= 5 {
                        return Ok(());
                    }
                    continue;
                }
                Err(e) => last = format!("{e:#}"),
            }
            ok = 0;
            if Instant::now() >= deadline {
                return Err(format!("no consistent failure response: {last}"));
            }
            tokio::time::sleep(t.retry_delay).await;
        }
    }

    async fn one_shot_must_fail(
        &self,
        case: &HttpCase,
        addr: SocketAddr,
        authority: &str,
        tls: Option<ClientTls>,
    ) -> Result<(), String> {
        let req = self.request(case, addr, authority, tls);
        match client::round_trip(&req).await {
            Ok(r) => Err(format!("request should fail, got status {}", r.status)),
            Err(_) => Ok(()),
        }
    }

    async fn check_mirrors(&self, case: &HttpCase) -> Result<(), String> {
        let deadline = Instant::now() + self.env.timing.request_timeout;
        for m in &case.mirrored_to {
            let (ns, name) = checks::nn(&m.backend_ref);
            loop {
                let seen = {
                    let c = self.env.cluster.lock().await;
                    c.service_pods(&ns, &name).iter().any(|p| {
                        p.log
                            .entries()
                            .iter()
                            .any(|e| e.request_uri == case.request.path)
                    })
                };
                if seen {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "no mirrored request {} logged by {ns}/{name}",
                        case.request.path
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    async fn tls_rejected(&self, step: &Value) -> StepResult {
        let (addr, _) = self.target(step, "https").await?;
        let names: Vec<String> = match step.get("serverName") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Sequence(v)) => v
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            _ => return unsupported("tls-connection-rejected without serverName"),
        };
        for name in names {
            let deadline = Instant::now() + self.env.timing.max_time;
            loop {
                match client::tls_connection_rejected(addr, &name, self.env.timing.request_timeout)
                    .await
                {
                    Ok(true) => break,
                    Ok(false) | Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(self.env.timing.retry_delay).await;
                    }
                    Ok(false) => {
                        return fail(format!(
                            "TLS handshake with SNI {name} to {addr} was accepted"
                        ));
                    }
                    Err(e) => return fail(format!("SNI {name} to {addr}: {e:#}")),
                }
            }
        }
        Ok(())
    }

    fn expected_weights(step: &Value) -> Result<BTreeMap<String, f64>, StepError> {
        step.get("expectedWeights")
            .and_then(|w| serde_yaml::from_value(w.clone()).ok())
            .ok_or_else(|| StepError::Unsupported("expectedWeights".into()))
    }

    /// The shared Gateway `same-namespace` (the weight and retry tests' `gwAddr`).
    async fn same_namespace_target(&self) -> Result<(SocketAddr, String), StepError> {
        let target = serde_yaml::to_value(
            json!({"address": {"gateway": "gateway-conformance-infra/same-namespace"}}),
        )
        .unwrap_or_default();
        self.target(&target, "http").await
    }

    async fn weighted(&self, step: &Value) -> StepResult {
        let want = Self::expected_weights(step)?;
        let (addr, authority) = self.same_namespace_target().await?;
        let case = HttpCase {
            request: crate::expect::RequestSpec {
                path: "/".into(),
                ..Default::default()
            },
            namespace: "gateway-conformance-infra".into(),
            ..Default::default()
        };
        weighted_distribution(&want, || {
            let mut c = case.clone();
            if rand::random::<bool>() {
                let mut h = BTreeMap::new();
                h.insert(
                    "X-Jitter".to_string(),
                    (rand::random::<u32>() % 10000).to_string(),
                );
                c.request.headers = Some(h);
            }
            let req = self.request(&c, addr, &authority, None);
            let (case, authority) = (&case, &authority);
            async move {
                let resp = client::round_trip(&req)
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                compare_round_trip(case, &resp, "http", authority)?;
                let creq = crate::expect::CapturedRequest::from_response(&resp, "GET")?;
                Ok(creq.pod)
            }
        })
        .await
    }

    /// GRPCRouteWeight's sampler: `Echo` calls (half with random `x-jitter` metadata, upstream's
    /// `grpc.AddEntropy`) that must succeed; the pod that answered.
    async fn grpc_weighted(&self, step: &Value) -> StepResult {
        let want = Self::expected_weights(step)?;
        let (addr, _) = self.same_namespace_target().await?;
        let authority = addr.to_string();
        let timeout = self.env.timing.request_timeout;
        weighted_distribution(&want, || {
            let mut md = Vec::new();
            if rand::random::<bool>() {
                md.push((
                    "x-jitter".to_string(),
                    (rand::random::<u32>() % 10000).to_string(),
                ));
            }
            let authority = &authority;
            async move {
                let (code, resp) = grpc_echo_client_call(addr, authority, "Echo", &md, timeout)
                    .await
                    .map_err(|e| format!("failed to send gRPC request: {e:#}"))?;
                if code != tonic::Code::Ok {
                    return Err(format!(
                        "expected OK response, got {}",
                        grpc_send::code_name(code)
                    ));
                }
                grpc_send::pod_of(resp.as_ref()).ok_or_else(|| "response without a pod".into())
            }
        })
        .await
    }

    /// A `send: grpc` step: every case converges (in parallel, like upstream's subtests).
    async fn grpc_send(&self, step: &Value) -> StepResult {
        let (addr, _) = self.target(step, "http").await?;
        let line = step.get("line").and_then(Value::as_u64).unwrap_or(0);
        let mut cases = Vec::new();
        for (i, c) in step
            .get("cases")
            .and_then(Value::as_sequence)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let case: GrpcCase = serde_yaml::from_value(c)
                .map_err(|e| StepError::Unsupported(format!("grpc case: {e}")))?;
            if !matches!(case.rpc.as_str(), "Echo" | "EchoTwo" | "EchoThree") {
                return unsupported(format!("grpc case {i}: rpc {:?}", case.rpc));
            }
            let want = case
                .expected_code(&self.test.name, line, i)
                .map_err(StepError::Unsupported)?;
            cases.push((i, case, want));
        }
        if cases.is_empty() {
            return unsupported("grpc send without cases");
        }
        let t = &self.env.timing;
        let futs = cases.iter().map(|(i, case, want)| async move {
            let authority = if case.request_metadata.authority.is_empty() {
                addr.to_string()
            } else {
                case.request_metadata.authority.clone()
            };
            let md = case.metadata();
            let (authority, md) = (&authority, &md);
            await_convergence(t, || async move {
                let (code, resp) =
                    grpc_echo_client_call(addr, authority, &case.rpc, md, t.request_timeout)
                        .await
                        .map_err(|e| format!("failed to send RPC: {e:#}"))?;
                grpc_send::compare(case, *want, code, resp.as_ref())
            })
            .await
            .map_err(|e| format!("case {:?}: {e}", case.display_name(*i, *want)))
        });
        all_cases(futs).await
    }

    async fn websocket(&self) -> StepResult {
        let (addr, authority) = self.same_namespace_target().await?;
        let t = &self.env.timing;
        await_convergence(t, || async {
            client::websocket_echo(addr, &authority, "/ws", t.request_timeout)
                .await
                .map_err(|e| format!("{e:#}"))
        })
        .await
        .map_err(|e| StepError::Failed(format!("websocket echo: {e}")))
    }

    async fn retry_rows(&self, rows: &[Value]) -> StepResult {
        let (addr, authority) = self.same_namespace_target().await?;
        let futs = rows.iter().map(|row| {
            let authority = authority.clone();
            async move {
                let args = row.get("args").cloned().unwrap_or_default();
                let path = str_arg(&args, "path").unwrap_or("/").to_string();
                let cfg = args
                    .get("retrySimulationConfig")
                    .cloned()
                    .unwrap_or_default();
                let first = |k: &str| {
                    cfg.get(k)
                        .and_then(|v| v.get(0))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                };
                let want = row
                    .get("want")
                    .and_then(|w| w.get("statusCode"))
                    .and_then(Value::as_u64)
                    .unwrap_or(200) as u16;
                let t = &self.env.timing;
                let deadline = Instant::now() + t.max_time;
                let mut ok = 0;
                let mut last;
                loop {
                    let mut q = Vec::new();
                    if let Some(c) = first("responseCode") {
                        q.push(format!("responseCode={c}"));
                    }
                    if let Some(s) = first("succeedAfter") {
                        q.push(format!("succeedAfter={s}"));
                    }
                    q.push(format!("uuid={:032x}", rand::random::<u128>()));
                    let case = HttpCase {
                        request: crate::expect::RequestSpec {
                            path: format!("{path}?{}", q.join("&")),
                            ..Default::default()
                        },
                        response: crate::expect::ResponseSpec {
                            status_codes: vec![want],
                            ..Default::default()
                        },
                        backend: "infra-backend-v3".into(),
                        namespace: "gateway-conformance-infra".into(),
                        ..Default::default()
                    };
                    let req = self.request(&case, addr, &authority, None);
                    match client::round_trip(&req).await {
                        Ok(resp) => match compare_round_trip(&case, &resp, "http", &authority) {
                            Ok(()) => {
                                ok += 1;
                                if ok >= t.consecutive {
                                    return Ok(());
                                }
                                continue;
                            }
                            Err(e) => last = e,
                        },
                        Err(e) => last = format!("{e:#}"),
                    }
                    ok = 0;
                    if Instant::now() >= deadline {
                        return Err(format!("{}: {last}", str_arg(row, "name").unwrap_or(&path)));
                    }
                    tokio::time::sleep(t.retry_delay).await;
                }
            }
        });
        all_cases(futs).await
    }

    /// Objects of a kind the test's manifests applied, manifest order.
    async fn test_objects(&self, kind: &str) -> Vec<ObjKey> {
        self.env
            .cluster
            .lock()
            .await
            .layer_keys(TEST_LAYER)
            .into_iter()
            .filter(|k| k.kind == kind)
            .collect()
    }

    /// What upstream does in Go code right before the check at `line` and cases.yaml has no
    /// step for.
    async fn before_check(&self, line: u64) -> StepResult {
        const CM: &str = "tls-checks-ca-certificate-reconcile-test";
        let infra = "gateway-conformance-infra";
        let cm_key = |name: &str| ObjKey {
            kind: "ConfigMap".into(),
            namespace: infra.into(),
            name: name.into(),
        };
        let mut c = self.env.cluster.lock().await;
        let original_ca = || {
            c.get(&cm_key("tls-checks-ca-certificate"))
                .and_then(|o| o.pointer("/data/ca.crt"))
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| StepError::Failed("ConfigMap tls-checks-ca-certificate".into()))
        };
        // BackendTLSPolicy's CA-reconcile subtest: create the ConfigMap the policy now refers
        // to (a copy of the shared CA), empty its ca.crt, then restore it.
        let r = match (self.test.name.as_str(), line) {
            ("BackendTLSPolicy", 223) => {
                let ca = original_ca()?;
                c.create(
                    TEST_LAYER,
                    json!({"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": CM, "namespace": infra},
                           "data": {"ca.crt": ca}}),
                )
            }
            ("BackendTLSPolicy", 228) => c
                .mutate(&cm_key(CM), |o| o["data"]["ca.crt"] = json!(""))
                .map(|_| ()),
            ("BackendTLSPolicy", 233) => {
                let ca = original_ca()?;
                c.mutate(&cm_key(CM), |o| o["data"]["ca.crt"] = json!(ca))
                    .map(|_| ())
            }
            _ => Ok(()),
        };
        r.map_err(|e| StepError::Failed(format!("{e:#}")))
    }

    async fn mutate(&mut self, n: usize) -> StepResult {
        let infra = "gateway-conformance-infra";
        let gw = |name: &str| ObjKey {
            kind: "Gateway".into(),
            namespace: infra.into(),
            name: name.into(),
        };
        let policy = |name: &str| ObjKey {
            kind: "BackendTLSPolicy".into(),
            namespace: infra.into(),
            name: name.into(),
        };
        let mut c = self.env.cluster.lock().await;
        let r = match (self.test.name.as_str(), n) {
            ("BackendTLSPolicyObservedGenerationBump", 1) => {
                let k = policy("observed-generation-bump");
                let before = c.generation(&k);
                let g = c
                    .mutate(&k, |o| {
                        o["spec"]["validation"]["hostname"] = json!("foo.example.com")
                    })
                    .map_err(|e| StepError::Failed(e.to_string()))?;
                if before == Some(g) {
                    return fail("generation should change after an update");
                }
                Ok(g)
            }
            ("BackendTLSPolicy", 1) => {
                let saved = &mut self.saved_ca_refs;
                c.mutate(&policy("reconcile-test"), |o| {
                    let refs = &mut o["spec"]["validation"]["caCertificateRefs"];
                    *saved = Some(refs.clone());
                    *refs = json!([{"group": "", "kind": "ConfigMap",
                                    "name": "tls-checks-ca-certificate-reconcile-test"}]);
                })
            }
            ("BackendTLSPolicy", 2) => {
                let Some(refs) = self.saved_ca_refs.take() else {
                    return fail("no caCertificateRefs saved to restore");
                };
                c.mutate(&policy("reconcile-test"), |o| {
                    o["spec"]["validation"]["caCertificateRefs"] = refs
                })
            }
            ("GatewayObservedGenerationBump", 1) => c.mutate(&gw("gateway-observed-generation-bump"), |o| {
                if let Some(ls) = o["spec"]["listeners"].as_array_mut() {
                    ls.push(json!({"name": "alternate", "hostname": "foo.com", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}}));
                }
            }),
            ("GatewayClassObservedGenerationBump", 1) => c.mutate(
                &ObjKey { kind: "GatewayClass".into(), namespace: String::new(), name: "gatewayclass-observed-generation-bump".into() },
                |o| o["spec"]["description"] = json!("new"),
            ),
            ("HTTPRouteObservedGenerationBump", 1) => c.mutate(
                &ObjKey { kind: "HTTPRoute".into(), namespace: infra.into(), name: "observed-generation-bump".into() },
                |o| o["spec"]["rules"][0]["backendRefs"][0]["name"] = json!("infra-backend-v2"),
            ),
            ("GatewayModifyListeners", 1) => c.mutate(&gw("gateway-add-listener"), |o| {
                if let Some(ls) = o["spec"]["listeners"].as_array_mut() {
                    ls.push(json!({"name": "http", "port": 80, "protocol": "HTTP", "hostname": "data.test.com", "allowedRoutes": {"namespaces": {"from": "All"}}}));
                }
            }),
            ("GatewayModifyListeners", 2) => c.mutate(&gw("gateway-remove-listener"), |o| {
                if let Some(ls) = o["spec"]["listeners"].as_array_mut() {
                    ls.retain(|l| l["name"] == "http");
                }
            }),
            ("GatewayStaticAddresses", 1 | 2) => c.mutate(&gw("gateway-static-addresses"), |o| {
                if let Some(a) = o["spec"]["addresses"].as_array_mut()
                    && !a.is_empty()
                {
                    a.remove(0);
                }
            }),
            (t, n) => return unsupported(format!("mutation #{n} of {t} is not transcribed")),
        };
        r.map(|_| ()).map_err(|e| StepError::Failed(e.to_string()))
    }
}

/// Runs one test whose manifests are applied; returns its outcome.
pub async fn run_test(env: &Env, test: &TestCase) -> Outcome {
    let mut run = TestRun::new(env, test);
    match run.run().await {
        Ok(()) => Outcome::Passed,
        Err(StepError::Failed(e)) => Outcome::Failed(e),
        Err(StepError::Unsupported(e)) => Outcome::Skipped(format!("runner cannot evaluate: {e}")),
    }
}
