//! Kubernetes Services for the kernel datapath: ClusterIP, NodePorts and external IPs become
//! IR L4 services whose ports point at clusters of the Service's endpoints.

use super::backends::{ensure_cluster, natural_protocol};
use super::{Ctx, Out};
use sluice_ir::{L4Protocol, L4Service, ServicePort};
use std::net::IpAddr;

/// Default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours), as Kubernetes sets it.
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;

/// Adds an L4 service for every Service with a cluster IP, node ports or external IPs.
pub(crate) fn process(ctx: &Ctx<'_>, out: &mut Out) {
    let mut services = Vec::new();
    for (key, svc) in &ctx.res.services {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let cluster_ip = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty() && *ip != "None")
            .and_then(|ip| ip.parse::<IpAddr>().ok());
        let mut external_ips: Vec<IpAddr> = spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        for ing in svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .into_iter()
            .flatten()
        {
            if let Some(ip) = ing.ip.as_deref().and_then(|ip| ip.parse().ok())
                && !external_ips.contains(&ip)
            {
                external_ips.push(ip);
            }
        }
        let has_node_ports = spec
            .ports
            .iter()
            .flatten()
            .any(|p| p.node_port.is_some_and(|n| n > 0));
        if cluster_ip.is_none() && external_ips.is_empty() && !has_node_ports {
            continue;
        }
        let mut ports = Vec::new();
        for p in spec.ports.iter().flatten() {
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => L4Protocol::Tcp,
                "UDP" => L4Protocol::Udp,
                _ => continue,
            };
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            let cluster = ensure_cluster(
                ctx,
                out,
                svc,
                &key.namespace,
                &key.name,
                p,
                natural_protocol(p),
            );
            ports.push(ServicePort {
                name: p.name.clone().unwrap_or_default(),
                protocol,
                port,
                node_port: p
                    .node_port
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|n| *n > 0),
                cluster,
                l7_redirect: None,
            });
        }
        let has_node_ports = ports.iter().any(|p| p.node_port.is_some());
        if ports.is_empty() || (cluster_ip.is_none() && external_ips.is_empty() && !has_node_ports)
        {
            continue;
        }
        let session_affinity_timeout_s = (spec.session_affinity.as_deref() == Some("ClientIP"))
            .then(|| {
                spec.session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds)
                    .and_then(|t| u32::try_from(t).ok())
                    .filter(|t| *t > 0)
                    .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_S)
            });
        services.push(L4Service {
            name: key.to_string(),
            cluster_ip,
            external_ips,
            ports,
            session_affinity_timeout_s,
            external_traffic_local: spec.external_traffic_policy.as_deref() == Some("Local"),
        });
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    out.services = services;
}
