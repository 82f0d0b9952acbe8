//! GatewayClass: ours when `spec.controllerName` equals the configured controller name.
//! Status: `Accepted` (or `InvalidParameters` when `parametersRef` does not resolve to a
//! supported object) and `SupportedVersion`.

use super::conditions::{self as c, reason};
use super::{Ctx, GATEWAY_GROUP, Out, generation, object_ref};
use std::collections::BTreeMap;

/// The Gateway API bundle version Sluice's types come from.
pub const SUPPORTED_BUNDLE_VERSION: &str = "v1.6.1";

/// Our GatewayClasses by name: `true` when accepted.
pub type Classes = BTreeMap<String, bool>;

/// Computes GatewayClass status; returns our classes.
pub(crate) fn process(ctx: &Ctx<'_>, out: &mut Out) -> Classes {
    let mut classes = Classes::new();
    for (key, gc) in &ctx.res.gateway_classes {
        if gc.spec.controller_name != ctx.opts.controller_name {
            continue;
        }
        let generation = generation(&gc.metadata);
        let problem = gc.spec.parameters_ref.as_ref().and_then(|p| {
            let supported = p.group.is_empty() && p.kind == "ConfigMap";
            if !supported {
                return Some(format!(
                    "parametersRef {}/{} {:?}: Sluice reads no parameters of this kind (only core ConfigMaps are accepted)",
                    if p.group.is_empty() { "core" } else { &p.group },
                    p.kind,
                    p.name
                ));
            }
            let Some(ns) = p.namespace.as_deref().filter(|n| !n.is_empty()) else {
                return Some(format!(
                    "parametersRef ConfigMap {:?} needs a namespace",
                    p.name
                ));
            };
            match ctx.res.config_maps.get(&crate::Key::new(ns, &p.name)) {
                None => Some(format!(
                    "parametersRef ConfigMap {ns}/{} does not exist",
                    p.name
                )),
                Some(cm) => crate::provision::ClassParams::from_data(
                    &format!("{ns}/{}", p.name),
                    &cm.data.clone().unwrap_or_default(),
                )
                .err()
                .map(|e| e.to_string()),
            }
        });
        let st = out.status_mut(&object_ref("GatewayClass", &gc.metadata), generation);
        st.conditions.push(match &problem {
            None => c::ok(
                c::ACCEPTED,
                "Sluice controls Gateways of this class",
                generation,
            ),
            Some(m) => c::cond(
                c::ACCEPTED,
                false,
                reason::INVALID_PARAMETERS,
                m.clone(),
                generation,
            ),
        });
        st.conditions.push(c::ok(
            c::SUPPORTED_VERSION,
            format!("Gateway API {SUPPORTED_BUNDLE_VERSION} ({GATEWAY_GROUP})"),
            generation,
        ));
        classes.insert(key.name.clone(), problem.is_none());
    }
    classes
}
