//! `Programmed` from what the data plane reports: a Gateway is programmed once an agent of its
//! scope acknowledged a snapshot that contains its current configuration; a rejection or a
//! listener that could not be bound turns it (or that listener) `Programmed=False`.

use crate::publish::{AgentState, Scope};
use sluice_ir::status::{Condition, ConditionStatus, StatusReport, set_condition};
use sluice_ir::{ObjectRef, Snapshot};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// One Gateway as published.
#[derive(Debug, Clone)]
pub struct PublishedGateway {
    /// The scope that serves it.
    pub scope: Scope,
    /// The scope's current version.
    pub version: u64,
    /// Its current fingerprint.
    pub fingerprint: String,
    /// Version since which the Gateway's own listeners are what they are now.
    pub changed_at: u64,
    /// How long ago the current version was published.
    pub age: Duration,
}

/// Sets `Programmed` of every Gateway in `gateways` from the agents' acknowledgements.
/// `was_programmed` tells whether the Gateway's live status already says Programmed=True;
/// within `grace` of a publication such a Gateway stays programmed while agents catch up.
pub fn apply_acks(
    status: &mut StatusReport,
    gateways: &BTreeMap<ObjectRef, PublishedGateway>,
    agents: &[AgentState],
    snapshots: &BTreeMap<Scope, Snapshot>,
    was_programmed: impl Fn(&ObjectRef) -> bool,
    grace: Duration,
) {
    for (gw, p) in gateways {
        let Some(rs) = status.get_mut(&gw.kind, &gw.namespace, &gw.name) else {
            continue;
        };
        let generation = rs.generation;
        if rs
            .condition("Programmed")
            .is_some_and(|c| c.status == ConditionStatus::False)
        {
            continue;
        }
        let mine: Vec<&AgentState> = agents.iter().filter(|a| a.scope == p.scope).collect();
        let current = |a: &AgentState| {
            a.applied_version >= p.changed_at
                || (!p.fingerprint.is_empty() && a.applied_fingerprint == p.fingerprint)
        };
        let rejected = mine.iter().find_map(|a| {
            a.rejected
                .as_ref()
                .filter(|(v, _)| *v >= p.changed_at)
                .map(|(v, e)| (a, *v, e))
        });
        if let Some((a, v, errors)) = rejected {
            let first = errors.first().cloned().unwrap_or_default();
            set_condition(
                &mut rs.conditions,
                Condition::new(
                    "Programmed",
                    false,
                    "Invalid",
                    format!(
                        "agent {} rejected configuration version {v}: {first}",
                        a.node
                    ),
                    generation,
                ),
            );
            continue;
        }
        let serving: Vec<&&AgentState> = mine.iter().filter(|a| current(a)).collect();
        if serving.is_empty() {
            if was_programmed(gw) && p.age < grace {
                continue;
            }
            set_condition(
                &mut rs.conditions,
                Condition::new(
                    "Programmed",
                    false,
                    "Pending",
                    format!(
                        "waiting for a Sluice agent ({}) to apply the configuration ({} connected)",
                        p.scope,
                        mine.len()
                    ),
                    generation,
                ),
            );
            continue;
        }
        // Listener bind failures reported by agents that serve the current snapshot.
        let mut errors: BTreeMap<String, String> = BTreeMap::new();
        for a in &serving {
            for (l, e) in &a.listener_errors {
                errors
                    .entry(l.clone())
                    .or_insert_with(|| format!("node {}: {e}", a.node));
            }
        }
        if let Some(snapshot) = snapshots.get(&p.scope)
            && !errors.is_empty()
        {
            mark_listener_errors(status, snapshot, &errors, Some(gw));
        }
    }
}

/// Sets `Programmed=False` (reason Pending) on every Gateway listener merged into an IR
/// listener that could not be bound, and on the Gateway when none of its listeners could be.
/// `only` restricts it to one parent.
pub fn mark_listener_errors(
    status: &mut StatusReport,
    snapshot: &Snapshot,
    errors: &BTreeMap<String, String>,
    only: Option<&ObjectRef>,
) {
    let mut failed: BTreeMap<ObjectRef, BTreeMap<String, String>> = BTreeMap::new();
    for (name, reason) in errors {
        let Some(l) = snapshot.listener(name) else {
            continue;
        };
        for src in &l.sources {
            if only.is_some_and(|o| *o != src.parent) {
                continue;
            }
            failed
                .entry(src.parent.clone())
                .or_default()
                .insert(src.listener.clone(), reason.clone());
        }
    }
    for (parent, listeners) in failed {
        let Some(rs) = status.get_mut(&parent.kind, &parent.namespace, &parent.name) else {
            continue;
        };
        let generation = rs.generation;
        for ls in rs.listeners.iter_mut() {
            if let Some(reason) = listeners.get(&ls.name) {
                set_condition(
                    &mut ls.conditions,
                    Condition::new("Programmed", false, "Pending", reason.clone(), generation),
                );
            }
        }
        let names: BTreeSet<&String> = listeners.keys().collect();
        if rs.listeners.iter().all(|l| names.contains(&l.name)) {
            let list: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
            set_condition(
                &mut rs.conditions,
                Condition::new(
                    "Programmed",
                    false,
                    "Pending",
                    format!("no listener could be bound: {}", list.join(", ")),
                    generation,
                ),
            );
        }
    }
}

/// Fingerprint of the part of a snapshot that belongs to one Gateway (its listeners).
pub fn gateway_fingerprint(snapshot: &Snapshot, gateway: &ObjectRef) -> String {
    let mine: Vec<&sluice_ir::Listener> = snapshot
        .listeners
        .iter()
        .filter(|l| l.sources.iter().any(|s| s.parent == *gateway))
        .collect();
    let json = serde_json::to_vec(&mine).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in json {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}
