//! `sluice install`: everything a cluster needs, built from typed objects and printed as one
//! YAML stream (`sluice install | kubectl apply -f -`): the Gateway API CRDs (standard channel,
//! verbatim), the namespace, the controller (two replicas, one leads through a Lease) with its
//! Service and RBAC, the node agent DaemonSet, the default GatewayClasses with their parameter
//! ConfigMaps, and the IngressClass. The Helm chart in `deploy/helm/sluice` renders the same
//! objects (a test compares them).
//!
//! The node agent needs no Kubernetes API access at all (it streams from the controller with
//! a client certificate), so it runs without a token. Its Linux capabilities are the ones the
//! eBPF datapath needs on kernels 5.11 and later, and nothing else:
//! - `BPF`: load programs and create maps (`bpf(2)` without `SYS_ADMIN`, kernel 5.8+).
//! - `NET_ADMIN`: attach tc programs to the node interface, cgroup `sock_addr` programs and the
//!   `sk_lookup` program of the host network namespace.
//! - `NET_BIND_SERVICE`: bind Gateway listeners on ports below 1024 (the agent shares the
//!   node's network namespace, where `ip_unprivileged_port_start` cannot be set per pod).
//!
//! Not needed: `SYS_ADMIN` (bpffs is mounted by the host and passed in as a hostPath; pinning is
//! a file write), `PERFMON` (no tracing programs), `SYS_RESOURCE` (BPF memory is charged to
//! the cgroup since 5.11, no memlock rlimit).

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, Deployment, DeploymentSpec,
    RollingUpdateDaemonSet,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    HostPathVolumeSource, Namespace, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, TCPSocketAction,
    Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{IngressClass, IngressClassSpec};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Data plane mode of the default GatewayClass `sluice`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InstallMode {
    /// Node agents serve the class (default).
    #[default]
    Shared,
    /// A proxy Deployment per Gateway.
    Dedicated,
}

/// What `sluice install` prints.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Namespace of the controller and agents (default `sluice-system`).
    pub namespace: String,
    /// Mode of the default class `sluice` (the class `sluice-dedicated` is always dedicated).
    pub mode: InstallMode,
    /// The Sluice image (default `ghcr.io/sluice-dev/sluice:<version>`).
    pub image: String,
    /// Addresses handed to shared Gateways (default `10.255.0.0/24`; must be routed to the
    /// nodes).
    pub address_pool: String,
    /// Controller replicas (default 2: one leads, one stands by).
    pub controller_replicas: i32,
    /// Include the Gateway API CRDs (default true).
    pub crds: bool,
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            namespace: "sluice-system".into(),
            mode: InstallMode::Shared,
            image: format!("ghcr.io/sluice-dev/sluice:{}", env!("CARGO_PKG_VERSION")),
            address_pool: "10.255.0.0/24".into(),
            controller_replicas: 2,
            crds: true,
        }
    }
}

/// Port of the snapshot stream.
pub const STREAM_PORT: u16 = 9902;
/// Port of the agents' admin API (loopback of the node).
pub const AGENT_ADMIN_PORT: u16 = 9901;

fn labels(component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "sluice".to_string()),
        (
            "app.kubernetes.io/component".to_string(),
            component.to_string(),
        ),
    ])
}

fn meta(name: &str, ns: Option<&str>, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: ns.map(str::to_string),
        labels: Some(labels(component)),
        ..Default::default()
    }
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let s = |v: &[&str]| Some(v.iter().map(|x| x.to_string()).collect::<Vec<_>>());
    PolicyRule {
        api_groups: s(groups),
        resources: s(resources),
        verbs: verbs.iter().map(|x| x.to_string()).collect(),
        ..Default::default()
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn resources(cpu: &str, memory: &str, mem_limit: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity(mem_limit.into()),
        )])),
        ..Default::default()
    }
}

fn to_value<T: serde::Serialize>(o: T) -> Value {
    serde_json::to_value(o).expect("typed objects serialize")
}

/// Every object, in apply order.
pub fn objects(opts: &InstallOptions) -> Vec<Value> {
    let ns = opts.namespace.as_str();
    let mut out = Vec::new();
    if opts.crds {
        out.extend(crds());
    }
    out.push(to_value(Namespace {
        metadata: meta(ns, None, "namespace"),
        ..Default::default()
    }));

    // Controller identity and RBAC: read what is watched, write status, provision.
    out.push(to_value(ServiceAccount {
        metadata: meta("sluice-controller", Some(ns), "controller"),
        ..Default::default()
    }));
    let gw = "gateway.networking.k8s.io";
    out.push(to_value(ClusterRole {
        metadata: meta("sluice-controller", None, "controller"),
        rules: Some(vec![
            rule(
                &[gw],
                &[
                    "gatewayclasses",
                    "gateways",
                    "listenersets",
                    "httproutes",
                    "grpcroutes",
                    "tlsroutes",
                    "tcproutes",
                    "udproutes",
                    "referencegrants",
                    "backendtlspolicies",
                ],
                &["get", "list", "watch"],
            ),
            rule(
                &[gw],
                &[
                    "gatewayclasses/status",
                    "gateways/status",
                    "listenersets/status",
                    "httproutes/status",
                    "grpcroutes/status",
                    "tlsroutes/status",
                    "tcproutes/status",
                    "udproutes/status",
                    "backendtlspolicies/status",
                ],
                &["patch"],
            ),
            rule(
                &["networking.k8s.io"],
                &["ingresses", "ingressclasses"],
                &["get", "list", "watch"],
            ),
            rule(&["networking.k8s.io"], &["ingresses/status"], &["patch"]),
            rule(
                &[""],
                &["namespaces", "configmaps"],
                &["get", "list", "watch"],
            ),
            rule(
                &["discovery.k8s.io"],
                &["endpointslices"],
                &["get", "list", "watch"],
            ),
            // Services and Secrets are read everywhere (backends, certificates) and written
            // for dedicated Gateways (their LoadBalancer Service, their proxies' certificate).
            rule(
                &[""],
                &["services", "secrets"],
                &["get", "list", "watch", "create", "patch", "delete"],
            ),
            rule(
                &["apps"],
                &["deployments"],
                &["get", "list", "watch", "create", "patch", "delete"],
            ),
        ]),
        ..Default::default()
    }));
    out.push(to_value(ClusterRoleBinding {
        metadata: meta("sluice-controller", None, "controller"),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: "sluice-controller".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "sluice-controller".into(),
            namespace: Some(ns.to_string()),
            ..Default::default()
        }]),
    }));
    out.push(to_value(Role {
        metadata: meta("sluice-controller-leader", Some(ns), "controller"),
        rules: Some(vec![rule(
            &["coordination.k8s.io"],
            &["leases"],
            &["get", "create", "update"],
        )]),
    }));
    out.push(to_value(RoleBinding {
        metadata: meta("sluice-controller-leader", Some(ns), "controller"),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "sluice-controller-leader".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "sluice-controller".into(),
            namespace: Some(ns.to_string()),
            ..Default::default()
        }]),
    }));

    // Controller Deployment and the Service agents dial (ready = leading).
    let controller_sel = BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "sluice".to_string()),
        (
            "app.kubernetes.io/component".to_string(),
            "controller".to_string(),
        ),
    ]);
    out.push(to_value(Deployment {
        metadata: meta("sluice-controller", Some(ns), "controller"),
        spec: Some(DeploymentSpec {
            replicas: Some(opts.controller_replicas),
            selector: LabelSelector {
                match_labels: Some(controller_sel.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels("controller")),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some("sluice-controller".into()),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    containers: vec![Container {
                        name: "controller".into(),
                        image: Some(opts.image.clone()),
                        args: Some(vec![
                            "controller".into(),
                            "--namespace".into(),
                            "$(POD_NAMESPACE)".into(),
                            "--identity".into(),
                            "$(POD_NAME)".into(),
                            "--address-pool".into(),
                            opts.address_pool.clone(),
                            "--proxy-image".into(),
                            opts.image.clone(),
                            "--log-format".into(),
                            "json".into(),
                        ]),
                        env: Some(vec![
                            env_field("POD_NAME", "metadata.name"),
                            env_field("POD_NAMESPACE", "metadata.namespace"),
                        ]),
                        ports: Some(vec![ContainerPort {
                            name: Some("stream".into()),
                            container_port: i32::from(STREAM_PORT),
                            protocol: Some("TCP".into()),
                            ..Default::default()
                        }]),
                        // Only the leader listens on the stream port: the Service sends
                        // agents to it alone.
                        readiness_probe: Some(Probe {
                            tcp_socket: Some(TCPSocketAction {
                                port: IntOrString::Int(i32::from(STREAM_PORT)),
                                ..Default::default()
                            }),
                            period_seconds: Some(2),
                            ..Default::default()
                        }),
                        resources: Some(resources("100m", "128Mi", "512Mi")),
                        security_context: Some(restricted()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }));
    out.push(to_value(Service {
        metadata: meta("sluice-controller", Some(ns), "controller"),
        spec: Some(ServiceSpec {
            selector: Some(controller_sel),
            ports: Some(vec![ServicePort {
                name: Some("stream".into()),
                port: i32::from(STREAM_PORT),
                target_port: Some(IntOrString::Int(i32::from(STREAM_PORT))),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }));

    // Node agents.
    out.push(to_value(ServiceAccount {
        metadata: meta("sluice-agent", Some(ns), "agent"),
        automount_service_account_token: Some(false),
        ..Default::default()
    }));
    let agent_sel = BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "sluice".to_string()),
        (
            "app.kubernetes.io/component".to_string(),
            "agent".to_string(),
        ),
    ]);
    let host_path = |name: &str, path: &str, ty: &str| Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: Some(ty.into()),
        }),
        ..Default::default()
    };
    out.push(to_value(DaemonSet {
        metadata: meta("sluice-agent", Some(ns), "agent"),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(agent_sel),
                ..Default::default()
            },
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_unavailable: Some(IntOrString::Int(1)),
                    ..Default::default()
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels("agent")),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some("sluice-agent".into()),
                    automount_service_account_token: Some(false),
                    host_network: Some(true),
                    dns_policy: Some("ClusterFirstWithHostNet".into()),
                    priority_class_name: Some("system-node-critical".into()),
                    tolerations: Some(vec![Toleration {
                        operator: Some("Exists".into()),
                        ..Default::default()
                    }]),
                    containers: vec![Container {
                        name: "agent".into(),
                        image: Some(opts.image.clone()),
                        args: Some(vec![
                            "agent".into(),
                            "--controller".into(),
                            format!("https://sluice-controller.{ns}.svc:{STREAM_PORT}"),
                            "--tls-dir".into(),
                            "/etc/sluice/tls".into(),
                            "--admin".into(),
                            format!("127.0.0.1:{AGENT_ADMIN_PORT}"),
                            "--ebpf".into(),
                            "--cgroup".into(),
                            "/sys/fs/cgroup".into(),
                            "--log-format".into(),
                            "json".into(),
                        ]),
                        env: Some(vec![env_field("NODE_NAME", "spec.nodeName")]),
                        readiness_probe: Some(Probe {
                            http_get: Some(HTTPGetAction {
                                host: Some("127.0.0.1".into()),
                                path: Some("/ready".into()),
                                port: IntOrString::Int(i32::from(AGENT_ADMIN_PORT)),
                                ..Default::default()
                            }),
                            period_seconds: Some(5),
                            ..Default::default()
                        }),
                        resources: Some(resources("200m", "128Mi", "1Gi")),
                        security_context: Some(SecurityContext {
                            allow_privilege_escalation: Some(false),
                            read_only_root_filesystem: Some(true),
                            capabilities: Some(Capabilities {
                                add: Some(vec![
                                    "BPF".into(),
                                    "NET_ADMIN".into(),
                                    "NET_BIND_SERVICE".into(),
                                ]),
                                drop: Some(vec!["ALL".into()]),
                            }),
                            ..Default::default()
                        }),
                        volume_mounts: Some(vec![
                            VolumeMount {
                                name: "agent-tls".into(),
                                mount_path: "/etc/sluice/tls".into(),
                                read_only: Some(true),
                                ..Default::default()
                            },
                            VolumeMount {
                                name: "bpffs".into(),
                                mount_path: "/sys/fs/bpf".into(),
                                mount_propagation: Some("HostToContainer".into()),
                                ..Default::default()
                            },
                            VolumeMount {
                                name: "cgroup".into(),
                                mount_path: "/sys/fs/cgroup".into(),
                                read_only: Some(true),
                                ..Default::default()
                            },
                        ]),
                        ..Default::default()
                    }],
                    volumes: Some(vec![
                        Volume {
                            name: "agent-tls".into(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some("sluice-agent-tls".into()),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                        host_path("bpffs", "/sys/fs/bpf", "Directory"),
                        host_path("cgroup", "/sys/fs/cgroup", "Directory"),
                    ]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }));

    // Classes.
    let mode = match opts.mode {
        InstallMode::Shared => "shared",
        InstallMode::Dedicated => "dedicated",
    };
    for (cm, m) in [
        ("sluice-gatewayclass", mode),
        ("sluice-dedicated", "dedicated"),
    ] {
        out.push(to_value(ConfigMap {
            metadata: meta(cm, Some(ns), "gatewayclass"),
            data: Some(BTreeMap::from([
                ("mode".to_string(), m.to_string()),
                ("replicas".to_string(), "1".to_string()),
            ])),
            ..Default::default()
        }));
    }
    for (class, cm) in [
        ("sluice", "sluice-gatewayclass"),
        ("sluice-dedicated", "sluice-dedicated"),
    ] {
        out.push(json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": class, "labels": labels("gatewayclass")},
            "spec": {
                "controllerName": crate::CONTROLLER_NAME,
                "parametersRef": {"group": "", "kind": "ConfigMap", "name": cm, "namespace": ns},
                "description": format!("Sluice: {} data plane", if class == "sluice" { mode } else { "dedicated" }),
            },
        }));
    }
    out.push(to_value(IngressClass {
        metadata: meta(crate::INGRESS_CLASS, None, "ingressclass"),
        spec: Some(IngressClassSpec {
            controller: Some(crate::INGRESS_CONTROLLER.into()),
            ..Default::default()
        }),
    }));
    out
}

/// The Gateway API CRDs (standard channel, verbatim) and the ValidatingAdmissionPolicy that
/// ships with them.
pub fn crds() -> Vec<Value> {
    let mut out = Vec::new();
    for (_, text) in sluice_gateway_crds::STANDARD_CRDS {
        for doc in serde_yaml::Deserializer::from_str(text) {
            if let Ok(v) = <Value as serde::Deserialize>::deserialize(doc)
                && !v.is_null()
            {
                out.push(v);
            }
        }
    }
    out
}

/// The objects as one YAML stream (`---` separated).
pub fn render(objects: &[Value]) -> String {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(o).expect("JSON values serialize as YAML"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_unique_and_namespaced_where_they_should_be() {
        let objs = objects(&InstallOptions::default());
        let mut seen = std::collections::BTreeSet::new();
        for o in &objs {
            let id = (
                o["kind"].as_str().unwrap().to_string(),
                o["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                o["metadata"]["name"].as_str().unwrap().to_string(),
            );
            assert!(seen.insert(id.clone()), "duplicate {id:?}");
        }
        let crd_count = objs
            .iter()
            .filter(|o| o["kind"] == "CustomResourceDefinition")
            .count();
        assert_eq!(crd_count, 10);
        let ds = objs.iter().find(|o| o["kind"] == "DaemonSet").unwrap();
        let caps =
            &ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"];
        assert_eq!(caps["add"], json!(["BPF", "NET_ADMIN", "NET_BIND_SERVICE"]));
        assert_eq!(caps["drop"], json!(["ALL"]));
    }
}
