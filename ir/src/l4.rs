//! L4: TCPRoute/UDPRoute entries and Services for the kernel datapath.

use crate::{RouteId, WeightedBackend};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

/// A TCPRoute or UDPRoute rule attached to a listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L4Route {
    /// Where it came from.
    pub id: RouteId,
    /// Weighted backends: chosen once per TCP connection, or per UDP flow (client address).
    pub backends: Vec<WeightedBackend>,
    /// UDP flow idle timeout in milliseconds (default 60000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
}

/// L4 protocol of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum L4Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A Kubernetes Service as the kernel datapath balances it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L4Service {
    /// `namespace/name`.
    pub name: String,
    /// `spec.clusterIP` (absent for headless Services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<IpAddr>,
    /// `spec.externalIPs` and `status.loadBalancer.ingress[].ip`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_ips: Vec<IpAddr>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// `sessionAffinity: ClientIP` timeout in seconds; `None` = no affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_timeout_s: Option<u32>,
    /// `externalTrafficPolicy: Local`: NodePort/external traffic only to local endpoints,
    /// client source preserved.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external_traffic_local: bool,
}

/// One Service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Port name (may be empty).
    #[serde(default)]
    pub name: String,
    /// TCP or UDP.
    pub protocol: L4Protocol,
    /// Service port.
    pub port: u16,
    /// NodePort, when allocated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
    /// The [`crate::Cluster`] holding this port's endpoints.
    pub cluster: String,
    /// Deliver to the local proxy at this address instead of the endpoints (L7 handling,
    /// Gateway listener addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7_redirect: Option<SocketAddr>,
}
