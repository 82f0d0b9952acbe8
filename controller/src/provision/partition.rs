//! Translation per data plane: the shared node agents serve every Gateway except the
//! dedicated ones (plus Ingress and the kernel datapath's Services); each dedicated Gateway
//! is translated alone, its listeners bound on the pod's wildcard address. The statuses of
//! all translations are merged into one report (route parents and policy ancestors are
//! combined by parentRef).

use super::{ClassParams, class_params, dedicated_gateways};
use crate::resources::{Key, Resources};
use crate::translate::{TranslateOptions, Translation, translate};
use sluice_ir::Snapshot;
use sluice_ir::status::{ResourceStatus, RouteParentStatus, StatusReport};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

/// Snapshots per data plane and the merged status.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// What the node agents serve.
    pub shared: Snapshot,
    /// Per dedicated Gateway: its snapshot and class parameters.
    pub dedicated: BTreeMap<Key, (Snapshot, ClassParams)>,
    /// Status of everything, merged.
    pub status: StatusReport,
    /// Status report of each dedicated Gateway's own translation (for its proxies' `/status`).
    pub dedicated_status: BTreeMap<Key, StatusReport>,
    /// Class parameter problems (class name, message).
    pub param_errors: Vec<(String, String)>,
}

/// Translates `res` per data plane. `res.gateways` is restored before returning.
pub fn plan(res: &mut Resources, opts: &TranslateOptions) -> Plan {
    let (classes, errors) = class_params(res, &opts.controller_name);
    let dedicated = dedicated_gateways(res, &classes);
    let all = std::mem::take(&mut res.gateways);

    res.gateways = all
        .iter()
        .filter(|(k, _)| !dedicated.contains_key(*k))
        .map(|(k, g)| (k.clone(), g.clone()))
        .collect();
    let shared = translate(res, opts);

    let mut out = Plan {
        shared: shared.snapshot,
        status: shared.status,
        param_errors: errors
            .into_iter()
            .map(|(c, e)| (c, e.to_string()))
            .collect(),
        ..Default::default()
    };
    if !dedicated.is_empty() {
        let ingresses = std::mem::take(&mut res.ingresses);
        let ded_opts = TranslateOptions {
            address_pool: vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)],
            ..opts.clone()
        };
        for (key, params) in &dedicated {
            res.gateways = all
                .get(key)
                .map(|g| BTreeMap::from([(key.clone(), g.clone())]))
                .unwrap_or_default();
            let Translation {
                mut snapshot,
                status,
            } = translate(res, &ded_opts);
            snapshot.services.clear();
            merge_status(&mut out.status, &status, key);
            out.dedicated_status.insert(key.clone(), status);
            out.dedicated
                .insert(key.clone(), (snapshot, params.clone()));
        }
        res.ingresses = ingresses;
    }
    res.gateways = all;
    out
}

/// Folds a dedicated Gateway's translation into the merged report: the Gateway itself and
/// ListenerSets attached to it come from `part`; routes and policies get `part`'s entries for
/// parents they do not have yet.
fn merge_status(merged: &mut StatusReport, part: &StatusReport, gateway: &Key) {
    for rs in &part.resources {
        let o = &rs.object;
        let own =
            (o.kind == "Gateway" && o.namespace == gateway.namespace && o.name == gateway.name)
                || (o.kind == "ListenerSet" && attached_to(rs, gateway));
        match merged.get_mut(&o.kind, &o.namespace, &o.name) {
            Some(m) if own => *m = rs.clone(),
            None if own => merged.resources.push(rs.clone()),
            Some(m) => {
                add_parents(&mut m.parents, &rs.parents);
                add_parents(&mut m.ancestors, &rs.ancestors);
            }
            None if !rs.parents.is_empty() || !rs.ancestors.is_empty() => {
                let mut n = ResourceStatus::new(o.clone(), rs.generation);
                n.parents = rs.parents.clone();
                n.ancestors = rs.ancestors.clone();
                merged.resources.push(n);
            }
            None => {}
        }
    }
    merged.resources.sort_by(|a, b| {
        (&a.object.kind, &a.object.namespace, &a.object.name).cmp(&(
            &b.object.kind,
            &b.object.namespace,
            &b.object.name,
        ))
    });
}

/// A ListenerSet's status names its parent Gateway in its listeners' sources only through the
/// translation; treat a ListenerSet accepted in the dedicated translation as attached to it.
fn attached_to(rs: &ResourceStatus, _gateway: &Key) -> bool {
    rs.condition("Accepted").is_some_and(|c| c.is_true())
}

fn add_parents(into: &mut Vec<RouteParentStatus>, from: &[RouteParentStatus]) {
    for p in from {
        if !into.iter().any(|x| x.parent_ref == p.parent_ref) {
            into.push(p.clone());
        }
    }
}
