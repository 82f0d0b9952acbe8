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
use crate::l4_send;
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

    /// A field (JSON pointer) of an applied object `ns/name`.
    async fn field(&self, kind: &str, nn: &str, pointer: &str) -> Option<serde_json::Value> {
        let (namespace, name) = checks::nn(nn);
        let c = self.cluster.lock().await;
        c.get(&ObjKey {
            kind: kind.into(),
            namespace,
            name,
        })
        .and_then(|o| o.pointer(pointer))
        .cloned()
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
    ("TLSRouteHostnameIntersection", 91),
    ("TLSRouteHostnameIntersection", 129),
    ("TLSRouteHostnameIntersection", 167),
];

/// One iteration of an upstream loop: variable name and value pairs.
type LoopRow = &'static [(&'static str, &'static str)];

/// Loops cases.yaml flattens: upstream runs the steps from `line` on once per row (a `for`
/// over listeners, or one closure called per sub-test); each row binds these variables.
const LOOP_ERRATA: &[(&str, u64, &[LoopRow])] = &[
    (
        "TCPRouteParentRefAttachAll",
        82,
        &[
            &[("$listener", "one")],
            &[("$listener", "two")],
            &[("$listener", "three")],
            &[("$listener", "four")],
        ],
    ),
    (
        "TCPRouteParentRefPortAndSectionName",
        76,
        &[
            &[("$listener", "one"), ("$backend", "tcp-echo-one")],
            &[("$listener", "two"), ("$backend", "tcp-echo-two")],
            &[("$listener", "three"), ("$backend", "tcp-echo-three")],
        ],
    ),
    (
        "UDPRouteParentRefAttachAllListeners",
        124,
        &[
            &[("$listener", "udp-1")],
            &[("$listener", "udp-2")],
            &[("$listener", "udp-3")],
        ],
    ),
];

/// Where upstream names the hostnames a `GatewayAndTLSRoutesMustBeAccepted` returns other
/// than `hostnames`: (test, line, variable).
const HOSTNAME_VARS: &[(&str, u64, &str)] = &[
    (
        "TLSRouteMixedTerminationSameNamespace",
        56,
        "$hostnamesPassthrough",
    ),
    (
        "TLSRouteMixedTerminationSameNamespace",
        94,
        "$hostnamesTerminate",
    ),
];

/// Objects a test deletes right after one of its sends (upstream deletes them in Go code):
/// (test, send number, kind, namespace, name).
const DELETE_AFTER_SEND: &[(&str, usize, &str, &str, &str)] = &[
    (
        "HTTPRouteReferenceGrant",
        1,
        "ReferenceGrant",
        "gateway-conformance-web-backend",
        "reference-grant",
    ),
    (
        "TCPRouteReferenceGrant",
        1,
        "ReferenceGrant",
        "gateway-conformance-web-backend",
        "tcp-reference-grant",
    ),
    (
        "UDPRouteReferenceGrant",
        1,
        "ReferenceGrant",
        "gateway-conformance-app-backend",
        "udp-reference-grant",
    ),
];

/// The second route upstream creates from Go code, one second after the check at `line`
/// held, to test that only the oldest of two routes on a listener gets traffic.
fn created_after(test: &str, line: u64) -> Option<serde_json::Value> {
    let (kind, name, gateway, section, backend, port) = match (test, line) {
        ("TCPRouteMultipleRoutesAttachment", 60) => (
            "TCPRoute",
            "tcproute-attach-newer",
            "tcp-multi-route-attach-gateway",
            "tcp",
            "tcp-attach-backend-2",
            3000,
        ),
        ("UDPRouteMultipleRoutesAttachment", 62) => (
            "UDPRoute",
            "udproute-attach-newer",
            "udp-multi-route-attach-gateway",
            "udp",
            "udp-attach-backend-2",
            8080,
        ),
        _ => return None,
    };
    Some(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "gateway-conformance-infra"},
        "spec": {
            "parentRefs": [{"name": gateway, "sectionName": section}],
            "rules": [{"backendRefs": [{"name": backend, "port": port}]}],
        },
    }))
}

/// The layer the suite applies a test's manifests as (see `crate::run`).
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
    /// Address of the last TCP/UDP send or probe (the weighted senders' target).
    last_l4_addr: Option<SocketAddr>,
    /// Backend the last TCP send expected (what `tcp.EchoSendOnce` samples must hit).
    last_tcp_backend: Option<String>,
    /// `spec.validation.caCertificateRefs` a mutation replaced, to restore later.
    saved_ca_refs: Option<serde_json::Value>,
}

/// The variables a table column binds: `$tc.<c>` and `$s.<c>`, or `$c` itself for the loops of
/// [`LOOP_ERRATA`].
fn row_vars(column: &str) -> Vec<String> {
    if column.starts_with('$') {
        vec![column.to_string()]
    } else {
        ["$tc", "$s"]
            .iter()
            .map(|p| format!("{p}.{column}"))
            .collect()
    }
}

/// The `cases` of a send step.
fn parse_cases<T: serde::de::DeserializeOwned>(step: &Value) -> Result<Vec<T>, StepError> {
    step.get("cases")
        .and_then(Value::as_sequence)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            serde_yaml::from_value(c).map_err(|e| StepError::Unsupported(format!("case: {e}")))
        })
        .collect()
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
        let secs = |d: Duration| Value::from(format!("{}s", d.as_secs()));
        for (k, v) in [
            ("DefaultTestTimeout", secs(env.timing.max_time * 2)),
            ("MaxTimeToConsistency", secs(env.timing.max_time)),
            ("DefaultPollInterval", Value::from("1s")),
            ("RequestTimeout", secs(env.timing.request_timeout)),
        ] {
            vars.insert(format!("$suite.TimeoutConfig.{k}"), v);
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
            last_l4_addr: None,
            last_tcp_backend: None,
            saved_ca_refs: None,
        }
    }

    async fn run(&mut self) -> StepResult {
        let mut steps = self.test.steps.clone();
        for (t, line, rows) in LOOP_ERRATA {
            if *t != self.test.name {
                continue;
            }
            if let Some(i) = steps
                .iter()
                .position(|s| s.get("line").and_then(Value::as_u64) == Some(*line))
            {
                let rows: Vec<Value> = rows
                    .iter()
                    .map(|r| {
                        Value::Mapping(
                            r.iter()
                                .map(|(k, v)| (Value::from(*k), Value::from(*v)))
                                .collect(),
                        )
                    })
                    .collect();
                let mut table = serde_yaml::Mapping::new();
                table.insert("table".into(), "upstream loop".into());
                table.insert("rows".into(), Value::Sequence(rows));
                steps.insert(i, Value::Mapping(table));
            }
        }
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
                            for name in row_vars(c) {
                                self.vars.insert(name, Value::from(""));
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
                    for name in row_vars(k) {
                        self.vars.insert(name, v.clone());
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
            "weight.TestWeightedDistribution" => return self.weighted(step).await,
            "GetConfigMapData" => return self.config_map_ca(step).await,
            "tcp.ExpectAddressBeAvailable" => return self.tcp_available(step).await,
            "tcp.EchoSendOnce" => return self.tcp_samples(step).await,
            "http.AwaitConvergence" if self.test.name == "HTTPRouteBackendProtocolWebSocket" => {
                return self.websocket().await;
            }
            "http.MakeRequest" => return Ok(()),
            _ => {}
        }
        let line = step.get("line").and_then(Value::as_u64).unwrap_or(0);
        self.before_check(line).await?;
        let mut step = self.accepted_parents(step);
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
            self.after_check(name, &args, line).await?;
        }
        Ok(())
    }

    /// What upstream's helper returns (the gateway address, a route's hostnames) becomes a
    /// variable, and objects upstream creates in code after this check are created.
    async fn after_check(&mut self, name: &str, args: &Value, line: u64) -> StepResult {
        let gw_ref = match name {
            "WaitForGatewayAddress" => args.get("gwRef"),
            n if n.starts_with("GatewayAnd") => args.get("gw"),
            _ => None,
        };
        if let Some(g) = gw_ref
            && let Some(gateway) = str_arg(g, "gateway")
        {
            let mut addr = serde_yaml::Mapping::new();
            addr.insert("gateway".into(), gateway.into());
            if let Some(l) = g
                .get("listeners")
                .and_then(|l| l.get(0))
                .and_then(Value::as_str)
            {
                addr.insert("listener".into(), l.into());
            }
            self.vars.insert("$gwAddr".into(), Value::Mapping(addr));
        }
        if name == "GatewayAndTLSRoutesMustBeAccepted"
            && let Some(route) = self.last_routes.last()
        {
            let hostnames: Vec<String> = self
                .env
                .field("TLSRoute", route, "/spec/hostnames")
                .await
                .and_then(|h| serde_json::from_value(h).ok())
                .unwrap_or_default();
            let var = HOSTNAME_VARS
                .iter()
                .find(|(t, l, _)| *t == self.test.name && *l == line)
                .map_or("$hostnames", |(_, _, v)| *v);
            for (i, h) in hostnames.iter().enumerate() {
                self.vars
                    .insert(format!("{var}[{i}]"), Value::from(h.clone()));
            }
        }
        if let Some(obj) = created_after(&self.test.name, line) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.env
                .cluster
                .lock()
                .await
                .create(TEST_LAYER, obj)
                .map_err(|e| StepError::Failed(format!("creating the newer route: {e:#}")))?;
        }
        Ok(())
    }

    /// Replaces upstream's `acceptedParent()` (a parent status built in Go) by its value: the
    /// Gateway the test waits on, Accepted=True.
    fn accepted_parents(&self, step: &Value) -> Value {
        let mut step = step.clone();
        let gateway = self.test.steps.iter().find_map(|s| {
            s.get("gwRef")
                .and_then(|g| str_arg(g, "gateway"))
                .map(str::to_string)
        });
        if let (Some(parents), Some(gw)) = (
            step.get_mut("parents").and_then(Value::as_sequence_mut),
            gateway,
        ) {
            let (ns, name) = checks::nn(&gw);
            for p in parents.iter_mut() {
                if str_arg(p, "call") == Some("acceptedParent") {
                    *p = serde_yaml::to_value(json!({
                        "parentRef": {
                            "group": "gateway.networking.k8s.io",
                            "kind": "Gateway",
                            "name": name,
                            "namespace": ns,
                        },
                        "controllerName": crate::cluster::CONTROLLER_NAME,
                        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted"}],
                    }))
                    .unwrap_or_default();
                }
            }
        }
        step
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
        self.send(kind, step).await?;
        for (t, n, kind, namespace, name) in DELETE_AFTER_SEND {
            if *t == self.test.name && *n == self.sends {
                self.env
                    .cluster
                    .lock()
                    .await
                    .delete(&ObjKey {
                        kind: (*kind).into(),
                        namespace: (*namespace).into(),
                        name: (*name).into(),
                    })
                    .map_err(|e| StepError::Failed(e.to_string()))?;
            }
        }
        Ok(())
    }

    async fn send(&mut self, kind: &str, step: &Value) -> StepResult {
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
            "tcp" => return self.tcp_send(&step).await,
            "udp" => return self.udp_send(&step).await,
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
        let cases: Vec<HttpCase> = parse_cases(&step)?;
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

    /// A `tcp` send (upstream `MakeTCPRequestAndExpectEventuallyValidResponse`): each case's
    /// session (optionally over TLS with `serverName`, trusting `serverCertificate`) must
    /// reach the expected backend.
    async fn tcp_send(&mut self, step: &Value) -> StepResult {
        let (addr, _) = self.target(step, "tcp").await?;
        self.last_l4_addr = Some(addr);
        let use_tls = step.get("useTLS").and_then(Value::as_bool).unwrap_or(false);
        let tls = if use_tls {
            // `serverCertificate: {call: '[]byte', args: [$caString]}` is the CA's PEM.
            let roots = match step.get("serverCertificate") {
                Some(Value::String(p)) => p.clone(),
                Some(v) => v
                    .get("args")
                    .and_then(|a| a.get(0))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                None => String::new(),
            };
            if roots.is_empty() {
                return unsupported("TLS tcp send without a trusted certificate");
            }
            Some(l4_send::TcpTls {
                server_name: str_arg(step, "serverName").unwrap_or_default().to_string(),
                roots_pem: roots,
                known_sans: self.env.known_sans.clone(),
            })
        } else {
            None
        };
        let cases: Vec<l4_send::TcpCase> = parse_cases(step)?;
        if cases.is_empty() {
            return unsupported("tcp send without cases");
        }
        let timeout = self.env.timing.request_timeout;
        for case in &cases {
            let tls = tls.as_ref();
            await_convergence(&self.env.timing, || async move {
                let s = l4_send::tcp_session(addr, tls, timeout)
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                l4_send::check_tcp(case, &s)
            })
            .await
            .map_err(|e| StepError::Failed(format!("TCP session to {addr}: {e}")))?;
            self.last_tcp_backend = Some(case.backend.clone());
        }
        Ok(())
    }

    /// A `udp` send (upstream `udp.ExpectEchoResponse[FromBackend]`): a datagram must be
    /// answered, by the expected service and namespace when the case names them.
    async fn udp_send(&mut self, step: &Value) -> StepResult {
        let (addr, _) = self.target(step, "udp").await?;
        self.last_l4_addr = Some(addr);
        let mut cases: Vec<l4_send::UdpCase> = parse_cases(step)?;
        if cases.is_empty() {
            cases.push(l4_send::UdpCase::default());
        }
        for case in &cases {
            await_convergence(&self.env.timing, || async move {
                l4_send::udp_round_trip(addr, l4_send::UDP_PROBE, case, Duration::from_secs(2))
                    .await
                    .map(|_| ())
            })
            .await
            .map_err(|e| StepError::Failed(format!("UDP echo through {addr}: {e}")))?;
        }
        Ok(())
    }

    /// `GetConfigMapData`: the CA of the named ConfigMap becomes `$caString`.
    async fn config_map_ca(&mut self, step: &Value) -> StepResult {
        let name = str_arg(step, "name")
            .ok_or_else(|| StepError::Unsupported("GetConfigMapData without name".into()))?;
        let ca = self.env.field("ConfigMap", name, "/data/ca.crt").await;
        match ca.as_ref().and_then(serde_json::Value::as_str) {
            Some(ca) => {
                self.vars.insert("$caString".into(), Value::from(ca));
                Ok(())
            }
            None => fail(format!("ca.crt not found in ConfigMap {name}")),
        }
    }

    /// `tcp.ExpectAddressBeAvailable`: the address accepts TCP connections within the
    /// timeout.
    async fn tcp_available(&mut self, step: &Value) -> StepResult {
        let (addr, _) = self.target(step, "tcp").await?;
        self.last_l4_addr = Some(addr);
        let t = &self.env.timing;
        let deadline = Instant::now() + t.max_time;
        loop {
            match l4_send::tcp_connects(addr, t.request_timeout).await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return fail(format!("no TCP connection within {:?}: {e:#}", t.max_time));
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    /// `tcp.EchoSendOnce` sampled 100 times: every connection must reach the backend the
    /// preceding TCP send expected (only the oldest of two routes on a listener is used).
    async fn tcp_samples(&mut self, step: &Value) -> StepResult {
        let mut target = serde_yaml::Mapping::new();
        target.insert(
            "address".into(),
            step.get("gwAddr").cloned().unwrap_or_default(),
        );
        let (addr, _) = self.target(&Value::Mapping(target), "tcp").await?;
        let backend = self.last_tcp_backend.clone().ok_or_else(|| {
            StepError::Unsupported("EchoSendOnce without a prior TCP send".into())
        })?;
        for i in 1..=100 {
            let pod = l4_send::tcp_echo_pod(addr, Duration::from_secs(5))
                .await
                .map_err(|e| StepError::Failed(format!("TCP echo request {i}/100: {e:#}")))?;
            if !pod.starts_with(&format!("{backend}-")) {
                return fail(format!(
                    "TCP echo request {i}/100 reached {pod:?}, want a pod of {backend}"
                ));
            }
        }
        Ok(())
    }

    /// The shared Gateway `same-namespace` (the weight and retry tests' `gwAddr`).
    async fn same_namespace_target(&self) -> Result<(SocketAddr, String), StepError> {
        let target = serde_yaml::to_value(
            json!({"address": {"gateway": "gateway-conformance-infra/same-namespace"}}),
        )
        .unwrap_or_default();
        self.target(&target, "http").await
    }

    /// `weight.TestWeightedDistribution`: up to 10 rounds of 500 requests (10 in flight) whose
    /// answering backends must match the expected weights; the sender follows the test kind
    /// (HTTP requests, gRPC `Echo` calls, TCP `EchoSendOnce`, UDP datagrams).
    async fn weighted(&self, step: &Value) -> StepResult {
        let want: BTreeMap<String, f64> = step
            .get("expectedWeights")
            .and_then(|w| serde_yaml::from_value(w.clone()).ok())
            .ok_or_else(|| StepError::Unsupported("expectedWeights".into()))?;
        let timeout = self.env.timing.request_timeout;
        if self.test.name.starts_with("TCPRoute") || self.test.name.starts_with("UDPRoute") {
            let addr = self.last_l4_addr.ok_or_else(|| {
                StepError::Unsupported("weighted TCP/UDP sender without a probed address".into())
            })?;
            if self.test.name.starts_with("TCPRoute") {
                return self
                    .distribution(&want, || async move {
                        l4_send::tcp_echo_pod(addr, timeout)
                            .await
                            .map_err(|e| format!("{e:#}"))
                    })
                    .await;
            }
            return self
                .distribution(&want, || async move {
                    let case = l4_send::UdpCase::default();
                    let v = l4_send::udp_round_trip(
                        addr,
                        "gateway-api-conformance-udp-weight\n",
                        &case,
                        Duration::from_secs(2),
                    )
                    .await?;
                    match v.get("pod").and_then(serde_json::Value::as_str) {
                        Some(p) if !p.is_empty() => Ok(p.to_string()),
                        _ => Err(format!("UDP echo answer without a pod name: {v}")),
                    }
                })
                .await;
        }
        if self.test.name == "GRPCRouteWeight" {
            return self.grpc_weighted(&want).await;
        }
        if self.test.name != "HTTPRouteWeight" {
            return unsupported(format!("weighted sender of {}", self.test.name));
        }
        let (addr, authority) = self.same_namespace_target().await?;
        let case = HttpCase {
            request: crate::expect::RequestSpec {
                path: "/".into(),
                ..Default::default()
            },
            namespace: "gateway-conformance-infra".into(),
            ..Default::default()
        };
        let (case, authority) = (&case, authority.as_str());
        self.distribution(&want, || async move {
            let mut c = case.clone();
            if rand::random::<bool>() {
                let mut h = BTreeMap::new();
                h.insert(
                    "X-Jitter".to_string(),
                    (rand::random::<u32>() % 10000).to_string(),
                );
                c.request.headers = Some(h);
            }
            let req = self.request(&c, addr, authority, None);
            let resp = client::round_trip(&req)
                .await
                .map_err(|e| format!("{e:#}"))?;
            compare_round_trip(case, &resp, "http", authority)?;
            Ok(crate::expect::CapturedRequest::from_response(&resp, "GET")?.pod)
        })
        .await
    }

    /// Runs up to 10 rounds of 500 sends (10 concurrent) and checks which backends answered.
    async fn distribution<F, Fut>(&self, want: &BTreeMap<String, f64>, send: F) -> StepResult
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<String, String>>,
    {
        const TOTAL: usize = 500;
        let mut last = String::new();
        for _ in 0..10 {
            let sem = tokio::sync::Semaphore::new(10);
            let tasks = (0..TOTAL).map(|_| async {
                let _permit = sem.acquire().await.map_err(|e| e.to_string())?;
                send().await
            });
            let pods = match futures::future::join_all(tasks)
                .await
                .into_iter()
                .collect::<Result<Vec<String>, String>>()
            {
                Ok(p) => p,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let mut seen = BTreeMap::<String, f64>::new();
            for p in &pods {
                *seen.entry(l4_send::backend_of_pod(p)).or_default() += 1.0;
            }
            match l4_send::check_distribution(want, &seen, TOTAL) {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        fail(format!("weighted distribution failed 10 times: {last}"))
    }

    /// GRPCRouteWeight's sender: `Echo` calls (half with random `x-jitter` metadata, upstream's
    /// `grpc.AddEntropy`) that must succeed; the pod that answered.
    async fn grpc_weighted(&self, want: &BTreeMap<String, f64>) -> StepResult {
        let (addr, _) = self.same_namespace_target().await?;
        let authority = addr.to_string();
        let (authority, timeout) = (authority.as_str(), self.env.timing.request_timeout);
        self.distribution(want, || async move {
            let mut md = Vec::new();
            if rand::random::<bool>() {
                md.push((
                    "x-jitter".to_string(),
                    (rand::random::<u32>() % 10000).to_string(),
                ));
            }
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
        })
        .await
    }

    /// A `send: grpc` step: every case converges (in parallel, like upstream's subtests).
    async fn grpc_send(&self, step: &Value) -> StepResult {
        let (addr, _) = self.target(step, "http").await?;
        let line = step.get("line").and_then(Value::as_u64).unwrap_or(0);
        let mut cases = Vec::new();
        for (i, case) in parse_cases::<GrpcCase>(step)?.into_iter().enumerate() {
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
