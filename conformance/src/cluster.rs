//! A stand-in for the Kubernetes cluster the upstream suite runs against: the objects written
//! into the `sluice standalone` directory (rewritten as upstream's applier rewrites them), the
//! "pods" (in-process echo instances on their own loopback addresses) and the EndpointSlices
//! that point Services at them.

use crate::echo::{self, EchoConfig, EchoLog, EchoMode, EchoTls, RunningEcho};
use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// The GatewayClass controllerName Sluice answers to.
pub const CONTROLLER_NAME: &str = "sluice.dev/gateway-controller";

/// Identity of an object: kind, namespace (empty when cluster-scoped), name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    /// Kind.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjKey {
    /// The key of an object.
    pub fn of(v: &Value) -> Option<ObjKey> {
        Some(ObjKey {
            kind: v.get("kind")?.as_str()?.to_string(),
            namespace: v
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            name: v.pointer("/metadata/name")?.as_str()?.to_string(),
        })
    }
}

impl std::fmt::Display for ObjKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// One emulated pod: an echo instance.
#[derive(Debug)]
pub struct Pod {
    /// `<deployment>-<hash>-<suffix>`.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Loopback address the pod's ports are bound on.
    pub ip: Ipv4Addr,
    /// Pod template labels.
    pub labels: BTreeMap<String, String>,
    /// Container ports by name.
    pub named_ports: BTreeMap<String, u16>,
    /// The echo request log.
    pub log: EchoLog,
    /// Which layer created it.
    pub layer: String,
    _running: RunningEcho,
}

/// Options for the emulated cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The directory `sluice standalone` watches.
    pub dir: PathBuf,
    /// Where pod TLS material is written.
    pub scratch: PathBuf,
    /// GatewayClass name written into every Gateway.
    pub gateway_class: String,
    /// Addresses substituted for `PLACEHOLDER_USABLE_ADDRS`.
    pub usable_addresses: Vec<(String, String)>,
    /// Addresses substituted for `PLACEHOLDER_UNUSABLE_ADDRS`.
    pub unusable_addresses: Vec<(String, String)>,
    /// Second octet of pod addresses (`127.<n>.x.y`).
    pub pod_net: u8,
}

/// The emulated cluster.
#[derive(Debug)]
pub struct Cluster {
    opts: ClusterOptions,
    /// Objects by layer (file stem), in apply order.
    layers: BTreeMap<String, Vec<Value>>,
    /// Current generation of every object written.
    generations: BTreeMap<ObjKey, i64>,
    /// Every pod, all layers.
    pub pods: Vec<Pod>,
    next_ip: u32,
    /// Secrets and ConfigMaps by `namespace/name` (for pod volumes).
    secret_files: BTreeMap<String, BTreeMap<String, String>>,
}

fn yaml_docs(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v: serde_yaml::Value = serde::Deserialize::deserialize(doc)?;
        if v.is_null() {
            continue;
        }
        out.push(serde_json::to_value(v)?);
    }
    Ok(out)
}

/// Reads a multi-document YAML file into JSON values.
pub fn read_manifest(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    yaml_docs(&text).with_context(|| format!("parsing {}", path.display()))
}

fn b64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let clean: Vec<u32> = s.bytes().filter_map(val).collect();
    let mut out = Vec::new();
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= c << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    out
}

fn short_hash(s: &str, len: usize) -> String {
    // FNV-1a, rendered in Kubernetes' pod-name alphabet.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (0..len)
        .map(|i| {
            let idx = ((h >> (i * 5)) % ALPHABET.len() as u64) as usize;
            ALPHABET[idx] as char
        })
        .collect()
}

impl Cluster {
    /// An empty cluster writing into `opts.dir`.
    pub fn new(opts: ClusterOptions) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&opts.dir)?;
        std::fs::create_dir_all(&opts.scratch)?;
        Ok(Cluster {
            opts,
            layers: BTreeMap::new(),
            generations: BTreeMap::new(),
            pods: Vec::new(),
            next_ip: 1,
            secret_files: BTreeMap::new(),
        })
    }

    /// Rewrites an object as upstream's applier does and stamps its generation.
    fn prepare(&mut self, mut v: Value) -> Value {
        let kind = v
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        match kind.as_str() {
            "Gateway" => {
                v["spec"]["gatewayClassName"] = json!(self.opts.gateway_class);
                if let Some(addrs) = v
                    .pointer("/spec/addresses")
                    .and_then(Value::as_array)
                    .cloned()
                {
                    let mut out = Vec::new();
                    let mut usable = false;
                    let mut unusable = false;
                    for a in &addrs {
                        match a.get("value").and_then(Value::as_str) {
                            Some("PLACEHOLDER_USABLE_ADDRS") => usable = true,
                            Some("PLACEHOLDER_UNUSABLE_ADDRS") => unusable = true,
                            _ => {}
                        }
                        if a.get("type").and_then(Value::as_str) == Some("test/fake-invalid-type") {
                            out.push(a.clone());
                        }
                    }
                    if usable || unusable {
                        if unusable {
                            for (t, val) in &self.opts.unusable_addresses {
                                out.push(json!({"type": t, "value": val}));
                            }
                        }
                        if usable {
                            for (t, val) in &self.opts.usable_addresses {
                                out.push(json!({"type": t, "value": val}));
                            }
                        }
                        v["spec"]["addresses"] = Value::Array(out);
                    }
                }
            }
            "GatewayClass" => {
                v["spec"]["controllerName"] = json!(CONTROLLER_NAME);
            }
            _ => {}
        }
        if let Some(key) = ObjKey::of(&v) {
            let g = *self.generations.entry(key).or_insert(1);
            if v.get("metadata").is_some() {
                v["metadata"]["generation"] = json!(g);
            }
        }
        v
    }

    /// The object with this key, from any layer.
    pub fn get(&self, key: &ObjKey) -> Option<&Value> {
        self.layers
            .values()
            .flatten()
            .find(|v| ObjKey::of(v).as_ref() == Some(key))
    }

    /// The generation last written for an object.
    pub fn generation(&self, key: &ObjKey) -> Option<i64> {
        self.generations.get(key).copied()
    }

    /// Every object of a kind in a namespace, all layers.
    pub fn list(&self, kind: &str, namespace: &str) -> Vec<&Value> {
        self.layers
            .values()
            .flatten()
            .filter(|v| ObjKey::of(v).is_some_and(|k| k.kind == kind && k.namespace == namespace))
            .collect()
    }

    /// Keys of every object in a layer.
    pub fn layer_keys(&self, layer: &str) -> Vec<ObjKey> {
        self.layers
            .get(layer)
            .map(|l| l.iter().filter_map(ObjKey::of).collect())
            .unwrap_or_default()
    }

    /// Adds objects as a new layer: rewrites them, drops objects another layer already holds,
    /// starts pods for Deployments and writes the layer's file plus its EndpointSlices.
    pub async fn apply_layer(&mut self, layer: &str, objects: Vec<Value>) -> anyhow::Result<()> {
        let existing: BTreeSet<ObjKey> = self
            .layers
            .values()
            .flatten()
            .filter_map(ObjKey::of)
            .collect();
        let mut out = Vec::new();
        for o in objects {
            let Some(key) = ObjKey::of(&o) else { continue };
            if existing.contains(&key) {
                continue;
            }
            if key.kind == "Secret" || key.kind == "ConfigMap" {
                self.remember_files(&key, &o);
            }
            out.push(self.prepare(o));
        }
        self.layers.insert(layer.to_string(), out);
        self.start_pods(layer).await?;
        self.write_layer(layer)?;
        self.write_endpoints()?;
        Ok(())
    }

    fn remember_files(&mut self, key: &ObjKey, o: &Value) {
        let mut files = BTreeMap::new();
        if let Some(d) = o.get("data").and_then(Value::as_object) {
            for (k, v) in d {
                let s = v.as_str().unwrap_or_default();
                let content = if key.kind == "Secret" {
                    String::from_utf8_lossy(&b64_decode(s)).into_owned()
                } else {
                    s.to_string()
                };
                files.insert(k.clone(), content);
            }
        }
        if let Some(d) = o.get("stringData").and_then(Value::as_object) {
            for (k, v) in d {
                files.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
            }
        }
        self.secret_files
            .insert(format!("{}/{}", key.namespace, key.name), files);
    }

    /// Creates one object in an existing layer while a test runs (as upstream's applier or
    /// `kubectl create` does from Go code; removed with the layer) and rewrites the layer file.
    /// Stamps `metadata.creationTimestamp` with the current second, so routes created later are
    /// younger than the ones applied from manifests (which carry none and so count as oldest).
    /// Only objects without pods (no Deployments: pods are started per layer).
    pub fn create(&mut self, layer: &str, mut object: Value) -> anyhow::Result<()> {
        let key = ObjKey::of(&object).context("object without kind or name")?;
        anyhow::ensure!(self.get(&key).is_none(), "{key} already exists");
        anyhow::ensure!(
            key.kind != "Deployment",
            "{key}: pods are started per layer"
        );
        object["metadata"]["creationTimestamp"] = json!(crate::report::now_rfc3339());
        let object = self.prepare(object);
        self.layers
            .entry(layer.to_string())
            .or_default()
            .push(object);
        self.write_layer(layer)
    }

    /// Removes a layer: deletes its file, stops its pods and rewrites the EndpointSlices.
    pub fn remove_layer(&mut self, layer: &str) -> anyhow::Result<()> {
        let path = self.opts.dir.join(format!("{layer}.yaml"));
        if path.exists() {
            std::fs::remove_file(&path)?;
        }
        if let Some(objs) = self.layers.remove(layer) {
            for o in objs {
                if let Some(k) = ObjKey::of(&o) {
                    self.generations.remove(&k);
                }
            }
        }
        self.pods.retain(|p| p.layer != layer);
        self.write_endpoints()
    }

    /// Replaces an object (same key) with `f(object)`, bumping `metadata.generation` when the
    /// spec changed, and rewrites its layer file.
    pub fn mutate(&mut self, key: &ObjKey, f: impl FnOnce(&mut Value)) -> anyhow::Result<i64> {
        let (layer, idx) = self
            .layers
            .iter()
            .find_map(|(l, objs)| {
                objs.iter()
                    .position(|v| ObjKey::of(v).as_ref() == Some(key))
                    .map(|i| (l.clone(), i))
            })
            .with_context(|| format!("{key} is not applied"))?;
        let obj = &mut self.layers.get_mut(&layer).context("layer")?[idx];
        let before = obj.get("spec").cloned();
        f(obj);
        let changed = obj.get("spec").cloned() != before;
        let g = self.generations.entry(key.clone()).or_insert(1);
        if changed {
            *g += 1;
        }
        let g = *g;
        obj["metadata"]["generation"] = json!(g);
        self.write_layer(&layer)?;
        Ok(g)
    }

    /// Deletes an object (as `kubectl delete`) and rewrites its layer file.
    pub fn delete(&mut self, key: &ObjKey) -> anyhow::Result<()> {
        let layer = self
            .layers
            .iter()
            .find(|(_, objs)| objs.iter().any(|v| ObjKey::of(v).as_ref() == Some(key)))
            .map(|(l, _)| l.clone())
            .with_context(|| format!("{key} is not applied"))?;
        if let Some(objs) = self.layers.get_mut(&layer) {
            objs.retain(|v| ObjKey::of(v).as_ref() != Some(key));
        }
        self.generations.remove(key);
        self.write_layer(&layer)
    }

    fn write_file(&self, name: &str, docs: &[Value]) -> anyhow::Result<()> {
        let mut text = String::new();
        for d in docs {
            text.push_str("---\n");
            text.push_str(&serde_yaml::to_string(d)?);
        }
        let tmp = self.opts.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.opts.dir.join(format!("{name}.yaml")))?;
        Ok(())
    }

    fn write_layer(&self, layer: &str) -> anyhow::Result<()> {
        let docs = self.layers.get(layer).cloned().unwrap_or_default();
        self.write_file(layer, &docs)
    }

    fn alloc_ip(&mut self) -> Ipv4Addr {
        let n = self.next_ip;
        self.next_ip += 1;
        Ipv4Addr::new(127, self.opts.pod_net, (n / 250) as u8, (n % 250 + 2) as u8)
    }

    fn volume_file(
        &self,
        ns: &str,
        spec: &Value,
        container: &Value,
        path: &str,
    ) -> Option<PathBuf> {
        let mounts = container.get("volumeMounts")?.as_array()?;
        let (mount_path, vol_name) = mounts.iter().find_map(|m| {
            let mp = m.get("mountPath")?.as_str()?;
            let name = m.get("name")?.as_str()?.to_string();
            path.starts_with(mp).then(|| (mp.to_string(), name))
        })?;
        let file = path[mount_path.len()..].trim_start_matches('/').to_string();
        let vol = spec
            .get("volumes")?
            .as_array()?
            .iter()
            .find(|v| v.get("name").and_then(Value::as_str) == Some(vol_name.as_str()))?;
        let (src_name, items) = if let Some(s) = vol.get("secret") {
            (
                s.get("secretName")?.as_str()?.to_string(),
                s.get("items").cloned(),
            )
        } else if let Some(c) = vol.get("configMap") {
            (
                c.get("name")?.as_str()?.to_string(),
                c.get("items").cloned(),
            )
        } else {
            return None;
        };
        let key = match items.as_ref().and_then(Value::as_array) {
            Some(items) => items.iter().find_map(|i| {
                (i.get("path")?.as_str()? == file)
                    .then(|| i.get("key")?.as_str().map(str::to_string))?
            })?,
            None => file.clone(),
        };
        let content = self
            .secret_files
            .get(&format!("{ns}/{src_name}"))?
            .get(&key)?;
        let out = self.opts.scratch.join(format!("{ns}-{src_name}-{key}"));
        std::fs::write(&out, content).ok()?;
        Some(out)
    }

    async fn start_pods(&mut self, layer: &str) -> anyhow::Result<()> {
        let deployments: Vec<Value> = self.layers[layer]
            .iter()
            .filter(|v| v.get("kind").and_then(Value::as_str) == Some("Deployment"))
            .cloned()
            .collect();
        for d in deployments {
            let Some(key) = ObjKey::of(&d) else { continue };
            let ns = key.namespace.clone();
            let spec = d
                .pointer("/spec/template/spec")
                .cloned()
                .unwrap_or_default();
            let Some(container) = spec.pointer("/containers/0").cloned() else {
                continue;
            };
            let image = container
                .get("image")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !image.contains("echo-basic") {
                // Only the conformance echo image is emulated (not coredns).
                continue;
            }
            let labels: BTreeMap<String, String> = d
                .pointer("/spec/template/metadata/labels")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            let named_ports: BTreeMap<String, u16> = container
                .get("ports")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .filter_map(|p| {
                            Some((
                                p.get("name")?.as_str()?.to_string(),
                                p.get("containerPort")?.as_u64()? as u16,
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let replicas = d
                .pointer("/spec/replicas")
                .and_then(Value::as_u64)
                .unwrap_or(1);
            let rs_hash = short_hash(&format!("{ns}/{}", key.name), 10);
            for i in 0..replicas {
                let pod_name = format!(
                    "{}-{rs_hash}-{}",
                    key.name,
                    short_hash(&format!("{ns}/{}/{i}", key.name), 5)
                );
                let mut env: BTreeMap<String, String> = BTreeMap::new();
                for e in container
                    .get("env")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let Some(name) = e.get("name").and_then(Value::as_str) else {
                        continue;
                    };
                    let value = if let Some(v) = e.get("value").and_then(Value::as_str) {
                        v.to_string()
                    } else {
                        match e
                            .pointer("/valueFrom/fieldRef/fieldPath")
                            .and_then(Value::as_str)
                        {
                            Some("metadata.name") => pod_name.clone(),
                            Some("metadata.namespace") => ns.clone(),
                            _ => String::new(),
                        }
                    };
                    env.insert(name.to_string(), value);
                }
                let ip = self.alloc_ip();
                let port = |k: &str, d: u16| -> anyhow::Result<u16> {
                    match env.get(k) {
                        Some(v) if !v.is_empty() => v
                            .parse()
                            .with_context(|| format!("{key}: env {k}={v:?} is not a port")),
                        _ => Ok(d),
                    }
                };
                let sa = |p: u16| SocketAddr::new(IpAddr::V4(ip), p);
                let mode = if env.contains_key("GRPC_ECHO_SERVER") {
                    EchoMode::Grpc
                } else if env.contains_key("TCP_ECHO_SERVER") {
                    EchoMode::Tcp
                } else if env.contains_key("UDP_ECHO_SERVER") {
                    EchoMode::Udp
                } else {
                    EchoMode::Http
                };
                let key_env = match mode {
                    EchoMode::Tcp | EchoMode::Grpc => "TLS_SERVER_PRIV_KEY",
                    _ => "TLS_SERVER_PRIVKEY",
                };
                let tls = match (env.get("TLS_SERVER_CERT"), env.get(key_env)) {
                    (Some(c), Some(k)) if !c.is_empty() && !k.is_empty() => {
                        let cert = self
                            .volume_file(&ns, &spec, &container, c)
                            .with_context(|| format!("{key}: cannot resolve {c}"))?;
                        let keyf = self
                            .volume_file(&ns, &spec, &container, k)
                            .with_context(|| format!("{key}: cannot resolve {k}"))?;
                        let client_ca = match env.get("TLS_CLIENT_CACERTS") {
                            Some(p) if !p.is_empty() => Some(
                                self.volume_file(&ns, &spec, &container, p)
                                    .with_context(|| format!("{key}: cannot resolve {p}"))?,
                            ),
                            _ => None,
                        };
                        Some(EchoTls {
                            cert,
                            key: keyf,
                            client_ca,
                        })
                    }
                    _ => None,
                };
                let (listen, h2c, tls_listen) = match mode {
                    EchoMode::Http => (
                        sa(port("HTTP_PORT", 3000)?),
                        Some(sa(port("H2C_PORT", 3001)?)),
                        Some(sa(port("HTTPS_PORT", 8443)?)),
                    ),
                    EchoMode::Grpc => (
                        sa(port("HTTP_PORT", 3000)?),
                        None,
                        Some(sa(port("HTTPS_PORT", 8443)?)),
                    ),
                    EchoMode::Tcp => (
                        sa(port("TCP_PORT", 3000)?),
                        None,
                        Some(sa(port("TLS_PORT", 8443)?)),
                    ),
                    EchoMode::Udp => (sa(port("UDP_PORT", 8080)?), None, None),
                };
                let log = EchoLog::default();
                let cfg = EchoConfig {
                    listen,
                    h2c_listen: h2c,
                    tls_listen,
                    tls,
                    pod: env.get("POD_NAME").cloned().unwrap_or_default(),
                    namespace: env.get("NAMESPACE").cloned().unwrap_or_default(),
                    service: env.get("SERVICE_NAME").cloned().unwrap_or_default(),
                    ingress: env.get("INGRESS_NAME").cloned().unwrap_or_default(),
                    mode,
                    log: log.clone(),
                };
                let running = echo::start(cfg)
                    .await
                    .with_context(|| format!("starting pod {ns}/{pod_name}"))?;
                self.pods.push(Pod {
                    name: pod_name,
                    namespace: ns.clone(),
                    ip,
                    labels: labels.clone(),
                    named_ports: named_ports.clone(),
                    log,
                    layer: layer.to_string(),
                    _running: running,
                });
            }
        }
        Ok(())
    }

    /// Pods a Service selects.
    pub fn service_pods(&self, namespace: &str, service: &str) -> Vec<&Pod> {
        let Some(svc) = self.get(&ObjKey {
            kind: "Service".into(),
            namespace: namespace.into(),
            name: service.into(),
        }) else {
            return Vec::new();
        };
        let Some(sel) = svc.pointer("/spec/selector").and_then(Value::as_object) else {
            return Vec::new();
        };
        self.pods
            .iter()
            .filter(|p| {
                p.namespace == namespace
                    && sel
                        .iter()
                        .all(|(k, v)| p.labels.get(k).map(String::as_str) == v.as_str())
            })
            .collect()
    }

    /// Fills manually managed EndpointSlices (no endpoints in the manifest) with the addresses
    /// of `pods`, as HTTPRouteServiceTypes does.
    pub fn fill_manual_slices(
        &mut self,
        slice_names: &[&str],
        namespace: &str,
        pods: &[Ipv4Addr],
    ) -> anyhow::Result<()> {
        for name in slice_names {
            let key = ObjKey {
                kind: "EndpointSlice".into(),
                namespace: namespace.into(),
                name: name.to_string(),
            };
            let Some(obj) = self.get(&key) else {
                bail!("EndpointSlice {namespace}/{name} is not applied");
            };
            if obj.get("addressType").and_then(Value::as_str) != Some("IPv4") {
                continue;
            }
            let eps: Vec<Value> = pods
                .iter()
                .map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true, "serving": true, "terminating": false}}))
                .collect();
            self.mutate(&key, |o| o["endpoints"] = Value::Array(eps))?;
        }
        Ok(())
    }

    fn write_endpoints(&self) -> anyhow::Result<()> {
        let mut slices = Vec::new();
        for svc in self.layers.values().flatten() {
            if svc.get("kind").and_then(Value::as_str) != Some("Service") {
                continue;
            }
            let Some(key) = ObjKey::of(svc) else { continue };
            if svc.pointer("/spec/selector").is_none() {
                continue;
            }
            let pods = self.service_pods(&key.namespace, &key.name);
            let mut ports = Vec::new();
            for p in svc
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let port = p.get("port").and_then(Value::as_u64).unwrap_or(0);
                let target = match p.get("targetPort") {
                    Some(Value::Number(n)) => n.as_u64().unwrap_or(port),
                    Some(Value::String(name)) => pods
                        .first()
                        .and_then(|pod| pod.named_ports.get(name))
                        .map(|p| u64::from(*p))
                        .or_else(|| name.parse().ok())
                        .unwrap_or(port),
                    _ => port,
                };
                let mut ep = json!({
                    "port": target,
                    "protocol": p.get("protocol").and_then(Value::as_str).unwrap_or("TCP"),
                });
                if let Some(n) = p.get("name") {
                    ep["name"] = n.clone();
                }
                if let Some(a) = p.get("appProtocol") {
                    ep["appProtocol"] = a.clone();
                }
                ports.push(ep);
            }
            let endpoints: Vec<Value> = pods
                .iter()
                .map(|p| {
                    json!({
                        "addresses": [p.ip.to_string()],
                        "conditions": {"ready": true, "serving": true, "terminating": false},
                        "targetRef": {"kind": "Pod", "name": p.name, "namespace": p.namespace},
                    })
                })
                .collect();
            slices.push(json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": format!("{}-sluice", key.name),
                    "namespace": key.namespace,
                    "generation": 1,
                    "labels": {
                        "kubernetes.io/service-name": key.name,
                        "endpointslice.kubernetes.io/managed-by": "conformance.sluice.dev",
                    },
                },
                "addressType": "IPv4",
                "ports": ports,
                "endpoints": endpoints,
            }));
        }
        self.write_file("zz-endpointslices", &slices)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        assert_eq!(b64_decode("Zm9vYmFy"), b"foobar");
        assert_eq!(b64_decode("Zm8="), b"fo");
        assert_eq!(b64_decode("Zg=="), b"f");
    }

    #[test]
    fn pod_names_have_two_hash_segments() {
        let h = short_hash("gateway-conformance-infra/infra-backend-v1", 10);
        assert_eq!(h.len(), 10);
        assert!(!h.contains('-'));
    }
}
