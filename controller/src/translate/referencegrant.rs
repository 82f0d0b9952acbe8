//! ReferenceGrant: whether a cross-namespace reference is permitted.

use crate::resources::Resources;

/// The referencing side: group, kind and namespace of the object holding the reference.
#[derive(Debug, Clone, Copy)]
pub struct From<'a> {
    /// API group (`gateway.networking.k8s.io`; empty for core).
    pub group: &'a str,
    /// Kind, e.g. `HTTPRoute`, `Gateway`.
    pub kind: &'a str,
    /// Namespace.
    pub namespace: &'a str,
}

/// The referenced object.
#[derive(Debug, Clone, Copy)]
pub struct To<'a> {
    /// API group (empty for core).
    pub group: &'a str,
    /// Kind, e.g. `Service`, `Secret`.
    pub kind: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
}

/// True when the reference stays in its namespace, or a ReferenceGrant in the target
/// namespace lists the source (group, kind, namespace) in `from` and the target (group, kind,
/// and name when set) in `to`.
pub fn allowed(res: &Resources, from: From<'_>, to: To<'_>) -> bool {
    if from.namespace == to.namespace {
        return true;
    }
    res.reference_grants
        .range(
            crate::Key::new(to.namespace, "")..crate::Key::new(&format!("{}\0", to.namespace), ""),
        )
        .filter(|(k, _)| k.namespace == to.namespace)
        .any(|(_, g)| {
            g.spec.from.iter().any(|f| {
                f.group == from.group && f.kind == from.kind && f.namespace == from.namespace
            }) && g.spec.to.iter().any(|t| {
                t.group == to.group
                    && t.kind == to.kind
                    && t.name
                        .as_deref()
                        .is_none_or(|n| n.is_empty() || n == to.name)
            })
        })
}
