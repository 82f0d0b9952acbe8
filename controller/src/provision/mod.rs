//! Provisioning: GatewayClass parameters choose per class between **shared** data planes (the
//! node agents serve every Gateway of the class, addresses come from the controller's address
//! pool) and **dedicated** ones (each Gateway gets its own proxy Deployment and LoadBalancer
//! Service in its namespace, owned by the Gateway so that deleting the Gateway deletes them).
//!
//! Class parameters are a ConfigMap named by the GatewayClass `parametersRef`
//! (`group: ""`, `kind: ConfigMap`, with a namespace). Keys (all optional):
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `mode` | `shared` or `dedicated` | `shared` |
//! | `replicas` | dedicated: proxy replicas per Gateway | `1` |
//! | `resources` | dedicated: the proxy container's `resources` (YAML of a core/v1 ResourceRequirements) | none |
//! | `serviceType` | dedicated: `LoadBalancer`, `NodePort` or `ClusterIP` | `LoadBalancer` |
//! | `workers` | dedicated: proxy worker threads | `2` |

pub mod partition;

use crate::resources::{Key, Resources};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    Secret, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Sysctl, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_gateway_crds::Gateway;
use sluice_ir::status::GatewayAddress;
use std::collections::BTreeMap;

/// Label naming the Gateway a provisioned object serves.
pub const GATEWAY_LABEL: &str = "sluice.dev/gateway";
/// Annotation holding the hash of what the controller last applied.
pub const CONFIG_HASH_ANNOTATION: &str = "sluice.dev/config-hash";
/// Port of the proxy's admin API in provisioned pods.
pub const ADMIN_PORT: u16 = 9901;

/// How a class's Gateways are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// By the node agents (DaemonSet); addresses from the pool.
    #[default]
    Shared,
    /// By a proxy Deployment per Gateway behind its own Service.
    Dedicated,
}

/// The parameters of one GatewayClass.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClassParams {
    /// Shared or dedicated.
    pub mode: Mode,
    /// Dedicated: replicas per Gateway (default 1).
    pub replicas: i32,
    /// Dedicated: container resources.
    pub resources: Option<ResourceRequirements>,
    /// Dedicated: Service type (default `LoadBalancer`).
    pub service_type: String,
    /// Dedicated: proxy worker threads (default 2).
    pub workers: u32,
    /// HTTP/3 on HTTPS listeners unless a listener says otherwise (default false).
    pub http3: bool,
}

/// A parameters ConfigMap that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameters ConfigMap {config_map}: {message}")]
pub struct ParamsError {
    /// namespace/name.
    pub config_map: String,
    /// What is wrong.
    pub message: String,
}

impl ClassParams {
    /// Parameters from a ConfigMap's data.
    pub fn from_data(
        config_map: &str,
        data: &BTreeMap<String, String>,
    ) -> Result<Self, ParamsError> {
        let err = |message: String| ParamsError {
            config_map: config_map.to_string(),
            message,
        };
        let mut p = ClassParams {
            replicas: 1,
            service_type: "LoadBalancer".into(),
            workers: 2,
            ..Default::default()
        };
        for (k, v) in data {
            let v = v.trim();
            match k.as_str() {
                "mode" => {
                    p.mode = match v {
                        "shared" => Mode::Shared,
                        "dedicated" => Mode::Dedicated,
                        _ => {
                            return Err(err(format!(
                                "mode: {v:?} is neither \"shared\" nor \"dedicated\""
                            )));
                        }
                    }
                }
                "replicas" => {
                    p.replicas = v
                        .parse()
                        .ok()
                        .filter(|n: &i32| (0..=1000).contains(n))
                        .ok_or_else(|| {
                            err(format!("replicas: {v:?} is not a number from 0 to 1000"))
                        })?
                }
                "workers" => {
                    p.workers = v
                        .parse()
                        .ok()
                        .filter(|n: &u32| (1..=256).contains(n))
                        .ok_or_else(|| {
                            err(format!("workers: {v:?} is not a number from 1 to 256"))
                        })?
                }
                "serviceType" => match v {
                    "LoadBalancer" | "NodePort" | "ClusterIP" => p.service_type = v.to_string(),
                    _ => {
                        return Err(err(format!(
                            "serviceType: {v:?} is not LoadBalancer, NodePort or ClusterIP"
                        )));
                    }
                },
                "http3" => {
                    p.http3 = match v {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(err(format!(
                                "http3: {v:?} is neither \"true\" nor \"false\""
                            )));
                        }
                    }
                }
                "resources" => {
                    p.resources =
                        Some(serde_yaml::from_str(v).map_err(|e| err(format!("resources: {e}")))?)
                }
                _ => {
                    return Err(err(format!(
                        "unknown key {k:?} (known: http3, mode, replicas, resources, serviceType, workers)"
                    )));
                }
            }
        }
        Ok(p)
    }
}

/// The parameters of every GatewayClass of `controller_name`, by class name. A class whose
/// ConfigMap is missing or invalid is served shared (the translator reports
/// `InvalidParameters` for both); errors are returned alongside.
pub fn class_params(
    res: &Resources,
    controller_name: &str,
) -> (BTreeMap<String, ClassParams>, Vec<(String, ParamsError)>) {
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for (key, gc) in &res.gateway_classes {
        if gc.spec.controller_name != controller_name {
            continue;
        }
        let mut params = ClassParams::from_data("", &BTreeMap::new()).unwrap_or_default();
        if let Some(p) = &gc.spec.parameters_ref
            && p.group.is_empty()
            && p.kind == "ConfigMap"
            && let Some(ns) = p.namespace.as_deref()
            && let Some(cm) = res.config_maps.get(&Key::new(ns, &p.name))
        {
            match ClassParams::from_data(
                &format!("{ns}/{}", p.name),
                &cm.data.clone().unwrap_or_default(),
            ) {
                Ok(x) => params = x,
                Err(e) => errors.push((key.name.clone(), e)),
            }
        }
        out.insert(key.name.clone(), params);
    }
    (out, errors)
}

/// Gateways of dedicated classes, with their class parameters.
pub fn dedicated_gateways(
    res: &Resources,
    classes: &BTreeMap<String, ClassParams>,
) -> BTreeMap<Key, ClassParams> {
    res.gateways
        .iter()
        .filter_map(|(k, g)| {
            let p = classes.get(&g.spec.gateway_class_name)?;
            (p.mode == Mode::Dedicated).then(|| (k.clone(), p.clone()))
        })
        .collect()
}

/// Cluster-wide settings of provisioned proxies.
#[derive(Debug, Clone)]
pub struct ProvisionConfig {
    /// Image of the proxy (the Sluice image), e.g. `ghcr.io/sluice-dev/sluice:0.1.0`.
    pub image: String,
    /// The controller's stream endpoint, e.g. `https://sluice-controller.sluice-system.svc:9902`.
    pub controller_endpoint: String,
}

/// Object name of a Gateway's proxy Deployment and Service: `sluice-<gateway>`, shortened
/// with a hash to stay a valid DNS label.
pub fn proxy_name(gateway: &str) -> String {
    let name = format!("sluice-{gateway}");
    if name.len() <= 63 {
        return name;
    }
    let mut h: u32 = 0x811c_9dc5;
    for b in gateway.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let mut cut = 54;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{h:08x}", name[..cut].trim_end_matches('-'))
}

/// Name of the Secret holding a dedicated Gateway's agent certificate.
pub fn agent_secret_name(gateway: &str) -> String {
    let base = proxy_name(gateway);
    if base.len() + 4 <= 63 {
        format!("{base}-tls")
    } else {
        format!("{}-tls", &base[..59].trim_end_matches('-'))
    }
}

fn labels(gw: &Gateway) -> BTreeMap<String, String> {
    let mut l: BTreeMap<String, String> = gw
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.labels.clone())
        .unwrap_or_default();
    l.insert("app.kubernetes.io/name".into(), "sluice-proxy".into());
    l.insert(
        "app.kubernetes.io/instance".into(),
        gw.metadata.name.clone().unwrap_or_default(),
    );
    l.insert(
        crate::provider::kubernetes::MANAGED_BY_LABEL.into(),
        crate::provider::kubernetes::MANAGED_BY.into(),
    );
    l.insert(
        GATEWAY_LABEL.into(),
        gw.metadata.name.clone().unwrap_or_default(),
    );
    l
}

fn selector(gw: &Gateway) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "sluice-proxy".to_string(),
        ),
        (
            GATEWAY_LABEL.to_string(),
            gw.metadata.name.clone().unwrap_or_default(),
        ),
    ])
}

fn owner(gw: &Gateway) -> OwnerReference {
    OwnerReference {
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: "Gateway".into(),
        name: gw.metadata.name.clone().unwrap_or_default(),
        uid: gw.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn meta(gw: &Gateway, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: gw.metadata.namespace.clone(),
        labels: Some(labels(gw)),
        annotations: gw
            .spec
            .infrastructure
            .as_ref()
            .and_then(|i| i.annotations.clone()),
        owner_references: Some(vec![owner(gw)]),
        ..Default::default()
    }
}

/// (port, protocol) of every listener, deduplicated, in port order.
fn listener_ports(gw: &Gateway) -> Vec<(u16, &'static str)> {
    let mut ports: Vec<(u16, &'static str)> = gw
        .spec
        .listeners
        .iter()
        .filter_map(|l| {
            let proto = if l.protocol == "UDP" { "UDP" } else { "TCP" };
            u16::try_from(l.port).ok().map(|p| (p, proto))
        })
        .collect();
    ports.sort();
    ports.dedup();
    ports
}

/// The proxy Deployment of a dedicated Gateway.
pub fn deployment(gw: &Gateway, params: &ClassParams, cfg: &ProvisionConfig) -> Deployment {
    let name = proxy_name(gw.metadata.name.as_deref().unwrap_or_default());
    let secret = agent_secret_name(gw.metadata.name.as_deref().unwrap_or_default());
    let ports = listener_ports(gw);
    let mut container_ports: Vec<ContainerPort> = ports
        .iter()
        .map(|(p, proto)| ContainerPort {
            container_port: i32::from(*p),
            protocol: Some((*proto).to_string()),
            ..Default::default()
        })
        .collect();
    container_ports.push(ContainerPort {
        name: Some("admin".into()),
        container_port: i32::from(ADMIN_PORT),
        protocol: Some("TCP".into()),
        ..Default::default()
    });
    let container = Container {
        name: "proxy".into(),
        image: Some(cfg.image.clone()),
        args: Some(vec![
            "agent".into(),
            "--controller".into(),
            cfg.controller_endpoint.clone(),
            "--tls-dir".into(),
            "/etc/sluice/tls".into(),
            "--admin".into(),
            format!("0.0.0.0:{ADMIN_PORT}"),
            "--workers".into(),
            params.workers.to_string(),
        ]),
        env: Some(vec![EnvVar {
            name: "NODE_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ports: Some(container_ports),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/ready".into()),
                port: IntOrString::Int(i32::from(ADMIN_PORT)),
                ..Default::default()
            }),
            period_seconds: Some(5),
            ..Default::default()
        }),
        resources: params.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "agent-tls".into(),
            mount_path: "/etc/sluice/tls".into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    };
    Deployment {
        metadata: meta(gw, &name),
        spec: Some(DeploymentSpec {
            replicas: Some(params.replicas),
            selector: LabelSelector {
                match_labels: Some(selector(gw)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(gw)),
                    annotations: gw
                        .spec
                        .infrastructure
                        .as_ref()
                        .and_then(|i| i.annotations.clone()),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    containers: vec![container],
                    security_context: Some(PodSecurityContext {
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        run_as_non_root: Some(true),
                        // Listeners on ports below 1024 without any capability.
                        sysctls: Some(vec![Sysctl {
                            name: "net.ipv4.ip_unprivileged_port_start".into(),
                            value: "0".into(),
                        }]),
                        ..Default::default()
                    }),
                    volumes: Some(vec![Volume {
                        name: "agent-tls".into(),
                        secret: Some(SecretVolumeSource {
                            secret_name: Some(secret),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// The Service in front of a dedicated Gateway's proxies.
pub fn service(gw: &Gateway, params: &ClassParams) -> Service {
    let name = proxy_name(gw.metadata.name.as_deref().unwrap_or_default());
    let ports = listener_ports(gw)
        .into_iter()
        .map(|(p, proto)| ServicePort {
            name: Some(format!("{}-{p}", proto.to_ascii_lowercase())),
            port: i32::from(p),
            target_port: Some(IntOrString::Int(i32::from(p))),
            protocol: Some(proto.into()),
            ..Default::default()
        })
        .collect();
    Service {
        metadata: meta(gw, &name),
        spec: Some(ServiceSpec {
            type_: Some(params.service_type.clone()),
            selector: Some(selector(gw)),
            ports: Some(ports),
            ..Default::default()
        }),
        status: None,
    }
}

/// The Secret with a dedicated Gateway's agent certificate (common name
/// `gateway:<namespace>/<name>`) and the CA.
pub fn agent_secret(gw: &Gateway, ca_pem: &str, cert: &crate::publish::tls::CertKey) -> Secret {
    let name = agent_secret_name(gw.metadata.name.as_deref().unwrap_or_default());
    Secret {
        metadata: meta(gw, &name),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(tls_data(ca_pem, cert)),
        ..Default::default()
    }
}

/// `ca.crt`, `tls.crt`, `tls.key` Secret data.
pub fn tls_data(ca_pem: &str, cert: &crate::publish::tls::CertKey) -> BTreeMap<String, ByteString> {
    BTreeMap::from([
        ("ca.crt".to_string(), ByteString(ca_pem.as_bytes().to_vec())),
        (
            "tls.crt".to_string(),
            ByteString(cert.cert_pem.as_bytes().to_vec()),
        ),
        (
            "tls.key".to_string(),
            ByteString(cert.key_pem.as_bytes().to_vec()),
        ),
    ])
}

/// The addresses a dedicated Gateway's Service got (`status.loadBalancer.ingress`; for
/// ClusterIP/NodePort Services, the cluster IPs).
pub fn service_addresses(svc: &Service) -> Vec<GatewayAddress> {
    let mut out = Vec::new();
    let lb = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer");
    if lb {
        for i in svc
            .status
            .iter()
            .flat_map(|s| s.load_balancer.iter())
            .flat_map(|l| l.ingress.iter().flatten())
        {
            if let Some(ip) = &i.ip {
                out.push(GatewayAddress {
                    type_: "IPAddress".into(),
                    value: ip.clone(),
                });
            } else if let Some(h) = &i.hostname {
                out.push(GatewayAddress {
                    type_: "Hostname".into(),
                    value: h.clone(),
                });
            }
        }
    } else {
        for ip in svc
            .spec
            .iter()
            .flat_map(|s| s.cluster_ips.iter().flatten())
            .filter(|ip| *ip != "None")
        {
            out.push(GatewayAddress {
                type_: "IPAddress".into(),
                value: ip.clone(),
            });
        }
    }
    out
}

/// FNV-1a of an object's JSON, stored in [`CONFIG_HASH_ANNOTATION`] to apply only changes.
pub fn config_hash<T: serde::Serialize>(o: &T) -> String {
    let json = serde_json::to_vec(o).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in json {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_parse_and_name_the_bad_key() {
        let data = BTreeMap::from([
            ("mode".to_string(), "dedicated".to_string()),
            ("replicas".to_string(), "3".to_string()),
            (
                "resources".to_string(),
                "requests: {cpu: 100m, memory: 64Mi}".to_string(),
            ),
        ]);
        let p = ClassParams::from_data("sluice-system/dedicated", &data).unwrap();
        assert_eq!(p.mode, Mode::Dedicated);
        assert_eq!(p.replicas, 3);
        assert!(p.resources.unwrap().requests.unwrap().contains_key("cpu"));
        let bad = BTreeMap::from([("mode".to_string(), "exclusive".to_string())]);
        let e = ClassParams::from_data("sluice-system/x", &bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sluice-system/x") && e.contains("exclusive"),
            "{e}"
        );
    }

    #[test]
    fn long_gateway_names_give_valid_object_names() {
        let long = "a".repeat(80);
        assert!(proxy_name(&long).len() <= 63);
        assert!(agent_secret_name(&long).len() <= 63);
        assert_ne!(proxy_name(&long), proxy_name(&"a".repeat(81)));
        assert_eq!(proxy_name("web"), "sluice-web");
    }
}
