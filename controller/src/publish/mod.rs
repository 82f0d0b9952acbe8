//! Config distribution: the controller publishes one versioned IR snapshot per [`Scope`] and
//! streams it to node agents and dedicated Gateway proxies over gRPC with mutual TLS.
//!
//! Protocol ([`proto`]): the agent opens `Subscribe` and says what it serves (version and
//! fingerprint); the controller sends the full snapshot of the agent's scope (the body is left
//! out when the agent already serves that fingerprint, e.g. after a controller restart), then
//! every change as another full snapshot. The agent answers each one with an acknowledgement:
//! applied (plus listeners it could not bind) or rejected (with the errors). The controller
//! turns those into `Programmed` conditions. The agent's scope comes from its client
//! certificate's common name, never from what it claims; a client without a certificate
//! issued by the controller's CA does not get past the TLS handshake.

pub mod agent;
pub mod proto;
mod server;
pub mod tls;

pub use server::{Publisher, ServeError};

use sluice_ir::Snapshot;
use sluice_ir::status::StatusReport;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Instant;

/// Common name of the node agents' client certificate.
pub const SHARED_AGENT_NAME: &str = "sluice-agent";

/// Which snapshot an agent receives.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Node agents: every Gateway of the shared classes, Ingress, and the Services of the
    /// kernel datapath.
    Shared,
    /// The proxy Deployment of one dedicated Gateway (namespace, name): that Gateway only.
    Gateway(String, String),
}

impl Scope {
    /// The scope a client certificate common name stands for (`None` for any other name).
    pub fn from_common_name(cn: &str) -> Option<Scope> {
        if cn == SHARED_AGENT_NAME {
            return Some(Scope::Shared);
        }
        let rest = cn.strip_prefix("gateway:")?;
        let (ns, name) = rest.split_once('/')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains('/'))
            .then(|| Scope::Gateway(ns.to_string(), name.to_string()))
    }

    /// The client certificate common name of this scope.
    pub fn common_name(&self) -> String {
        match self {
            Scope::Shared => SHARED_AGENT_NAME.to_string(),
            Scope::Gateway(ns, name) => format!("gateway:{ns}/{name}"),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Shared => f.write_str("shared"),
            Scope::Gateway(ns, name) => write!(f, "gateway:{ns}/{name}"),
        }
    }
}

/// FNV-1a (64 bit) of the snapshot's JSON with version 0, as 16 hex digits: equal snapshots
/// have equal fingerprints whatever version they were published under.
pub fn fingerprint(snapshot: &Snapshot) -> String {
    let mut s = snapshot.clone();
    s.version = 0;
    let json = serde_json::to_vec(&s).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in json {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// What one connected agent last reported.
#[derive(Debug, Clone)]
pub struct AgentState {
    /// Scope from its certificate.
    pub scope: Scope,
    /// Node or pod name it gave.
    pub node: String,
    /// Peer address.
    pub peer: String,
    /// Version it serves (0 = none), and that version's fingerprint.
    pub applied_version: u64,
    /// Fingerprint of the snapshot it serves.
    pub applied_fingerprint: String,
    /// The last version it rejected, with the errors.
    pub rejected: Option<(u64, Vec<String>)>,
    /// Listeners of the serving snapshot it could not bind.
    pub listener_errors: BTreeMap<String, String>,
    /// When it connected.
    pub connected: Instant,
}

/// A snapshot as published for one scope.
#[derive(Debug, Clone)]
pub struct Published {
    /// Version.
    pub version: u64,
    /// [`fingerprint`] of the snapshot.
    pub fingerprint: String,
    /// The snapshot (with `version` set).
    pub snapshot: Snapshot,
    /// JSON of the snapshot.
    pub snapshot_json: std::sync::Arc<Vec<u8>>,
    /// JSON of the status report sent along.
    pub status_json: std::sync::Arc<Vec<u8>>,
    /// When this version was published.
    pub since: Instant,
}

/// The status report sent along with a scope's snapshot.
pub fn status_json(status: &StatusReport) -> Vec<u8> {
    serde_json::to_vec(status).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip_through_common_names() {
        for s in [Scope::Shared, Scope::Gateway("team-a".into(), "web".into())] {
            assert_eq!(Scope::from_common_name(&s.common_name()), Some(s));
        }
        assert_eq!(Scope::from_common_name("gateway:a"), None);
        assert_eq!(Scope::from_common_name("gateway:/x"), None);
        assert_eq!(Scope::from_common_name("admin"), None);
    }

    #[test]
    fn fingerprints_ignore_the_version() {
        let mut a = Snapshot::default();
        let f0 = fingerprint(&a);
        a.version = 7;
        assert_eq!(fingerprint(&a), f0);
        a.clusters
            .push(sluice_ir::Cluster::new("default/x:80", vec![]));
        assert_ne!(fingerprint(&a), f0);
    }
}
