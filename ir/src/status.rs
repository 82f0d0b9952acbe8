//! Status of configuration objects as Sluice reports it: the shape of the admin API's
//! `/status` and the input of the Kubernetes status writer. Field names follow the Kubernetes
//! JSON (camelCase) so the two read alike.

use crate::ObjectRef;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Everything `/status` reports: per-object status plus configuration load errors.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// Object status, sorted by (kind, namespace, name).
    #[serde(default)]
    pub resources: Vec<ResourceStatus>,
    /// Files or objects that could not be loaded at all (bad YAML, unknown kind, schema errors),
    /// sorted by file and line.
    #[serde(default)]
    pub errors: Vec<ConfigError>,
}

impl StatusReport {
    /// The status of one object: a binary search over the sorted `resources` (a linear scan
    /// when it misses, in case a caller appended out of order).
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<&ResourceStatus> {
        self.position(kind, namespace, name)
            .map(|i| &self.resources[i])
    }

    /// Mutable status of one object.
    pub fn get_mut(
        &mut self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<&mut ResourceStatus> {
        self.position(kind, namespace, name)
            .map(|i| &mut self.resources[i])
    }

    fn position(&self, kind: &str, namespace: &str, name: &str) -> Option<usize> {
        fn of(r: &ResourceStatus) -> (&str, &str, &str) {
            (
                r.object.kind.as_str(),
                r.object.namespace.as_str(),
                r.object.name.as_str(),
            )
        }
        let key = (kind, namespace, name);
        self.resources
            .binary_search_by(|r| of(r).cmp(&key))
            .ok()
            .or_else(|| self.resources.iter().position(|r| of(r) == key))
    }
}

/// Where an object was defined (standalone mode).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceLocation {
    /// File path as given on the command line plus the path below it.
    pub file: String,
    /// 1-based line of the document's first line (or of the error).
    pub line: u32,
    /// 1-based column of the error, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.column {
            Some(c) => write!(f, "{}:{}:{}", self.file, self.line, c),
            None => write!(f, "{}:{}", self.file, self.line),
        }
    }
}

/// An object or file that was rejected before translation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigError {
    /// Where.
    pub source: SourceLocation,
    /// The object, when its kind and name could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectRef>,
    /// Why, in one sentence.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.object {
            Some(o) => write!(f, "{}: {}: {}", self.source, o, self.message),
            None => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

/// Status of one object.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    /// The object.
    #[serde(flatten)]
    pub object: ObjectRef,
    /// `metadata.generation` the status was computed for.
    #[serde(default)]
    pub generation: i64,
    /// Object-level conditions (GatewayClass, Gateway, Ingress, policies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Gateway `status.addresses`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GatewayAddress>,
    /// Gateway `status.attachedListenerSets`: ListenerSets accepted by this Gateway (Gateways
    /// only; `None` elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached_listener_sets: Option<i32>,
    /// Gateway `status.listeners`, in spec order (ListenerSet: its `status.listeners`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<ListenerStatus>,
    /// Route `status.parents` (only parents whose Gateway Sluice controls), in parentRef order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<RouteParentStatus>,
    /// Policy `status.ancestors` (BackendTLSPolicy).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<RouteParentStatus>,
    /// Ingress `status.loadBalancer.ingress[].ip`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_balancer: Vec<String>,
    /// Where the object was defined (standalone mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceLocation>,
}

impl ResourceStatus {
    /// An empty status for an object at a generation.
    pub fn new(object: ObjectRef, generation: i64) -> Self {
        ResourceStatus {
            object,
            generation,
            ..Default::default()
        }
    }

    /// The object-level condition of a type.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// `True`, `False` or `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// It does not.
    False,
    /// Not known yet.
    Unknown,
}

impl From<bool> for ConditionStatus {
    fn from(b: bool) -> Self {
        if b {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

impl fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        })
    }
}

/// A status condition (metav1.Condition without the transition time, which the status writer
/// keeps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. `Accepted`.
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: ConditionStatus,
    /// CamelCase reason from the Gateway API spec.
    pub reason: String,
    /// Human-readable detail naming the offending field or reference.
    #[serde(default)]
    pub message: String,
    /// The object generation this condition was computed for.
    #[serde(default)]
    pub observed_generation: i64,
}

impl Condition {
    /// A condition.
    pub fn new(
        type_: &str,
        status: impl Into<ConditionStatus>,
        reason: &str,
        message: impl Into<String>,
        observed_generation: i64,
    ) -> Self {
        Condition {
            type_: type_.to_string(),
            status: status.into(),
            reason: reason.to_string(),
            message: message.into(),
            observed_generation,
        }
    }

    /// True when status is `True`.
    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }
}

/// Sets `cond` in `conditions`, replacing any condition of the same type.
pub fn set_condition(conditions: &mut Vec<Condition>, cond: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == cond.type_) {
        Some(c) => *c = cond,
        None => conditions.push(cond),
    }
}

/// Gateway `status.addresses[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayAddress {
    /// `IPAddress` or `Hostname`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The address.
    pub value: String,
}

/// Gateway `status.listeners[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    /// Listener name.
    pub name: String,
    /// Route kinds the listener accepts.
    pub supported_kinds: Vec<RouteGroupKind>,
    /// Number of routes successfully attached.
    pub attached_routes: i32,
    /// Accepted, Programmed, ResolvedRefs, Conflicted, ...
    pub conditions: Vec<Condition>,
}

/// A route group and kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteGroupKind {
    /// API group (`gateway.networking.k8s.io`).
    pub group: String,
    /// Kind (`HTTPRoute`).
    pub kind: String,
}

/// A parent reference as written in a route's `status.parents[].parentRef`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// Group (default `gateway.networking.k8s.io`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind (default `Gateway`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Namespace (default: the route's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// Listener name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// Listener port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// A route's status for one parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    /// The parentRef, as written in the route.
    pub parent_ref: ParentRef,
    /// `sluice.dev/gateway-controller`.
    pub controller_name: String,
    /// Accepted, ResolvedRefs, ...
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod lookup_tests {
    use super::*;
    use crate::ObjectRef;

    fn st(kind: &str, ns: &str, name: &str) -> ResourceStatus {
        ResourceStatus {
            object: ObjectRef::new(kind, ns, name),
            ..ResourceStatus::default()
        }
    }

    #[test]
    fn get_finds_sorted_and_appended_objects() {
        let mut r = StatusReport::default();
        for i in 0..100 {
            r.resources
                .push(st("HTTPRoute", "default", &format!("r{i:03}")));
        }
        r.resources.push(st("Gateway", "default", "late"));
        assert_eq!(
            r.get("HTTPRoute", "default", "r042").unwrap().object.name,
            "r042"
        );
        assert!(r.get("HTTPRoute", "default", "r100").is_none());
        assert_eq!(
            r.get("Gateway", "default", "late").unwrap().object.kind,
            "Gateway"
        );
        r.get_mut("HTTPRoute", "default", "r007")
            .unwrap()
            .conditions
            .clear();
    }
}
