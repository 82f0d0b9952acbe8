//! GatewayClass: ours when `spec.controllerName` equals the configured controller name.
//! Status: `Accepted` (or `InvalidParameters` when `parametersRef` does not resolve to a
//! supported object) and `SupportedVersion`.

use super::conditions::{self as c, reason};
use super::{Ctx, GATEWAY_GROUP, Out, generation, object_ref};
use crate::provision::ClassParams;
use std::collections::BTreeMap;

/// The Gateway API bundle version Sluice's types come from.
pub const SUPPORTED_BUNDLE_VERSION: &str = "v1.6.1";

/// Our GatewayClasses by name: their parameters when accepted, `None` when not.
pub type Classes = BTreeMap<String, Option<ClassParams>>;

/// Computes GatewayClass status; returns our classes.
pub(crate) fn process(ctx: &Ctx<'_>, out: &mut Out) -> Classes {
    let mut classes = Classes::new();
    for (key, gc) in &ctx.res.gateway_classes {
        if gc.spec.controller_name != ctx.opts.controller_name {
            continue;
        }
        let generation = generation(&gc.metadata);
        let params = match gc.spec.parameters_ref.as_ref() {
            None => Ok(ClassParams::from_data("", &BTreeMap::new()).unwrap_or_default()),
            Some(p) => class_params(ctx, p),
        };
        let problem = params.as_ref().err();
        let st = out.status_mut(&object_ref("GatewayClass", &gc.metadata), generation);
        st.conditions.push(match problem {
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
        classes.insert(key.name.clone(), params.ok());
    }
    classes
}

/// The parameters a `parametersRef` points at, or why they cannot be used.
fn class_params(
    ctx: &Ctx<'_>,
    p: &sluice_gateway_crds::gatewayclasses::GatewayClassParametersRef,
) -> Result<ClassParams, String> {
    if !(p.group.is_empty() && p.kind == "ConfigMap") {
        return Err(format!(
            "parametersRef {}/{} {:?}: Sluice reads no parameters of this kind (only core ConfigMaps are accepted)",
            if p.group.is_empty() { "core" } else { &p.group },
            p.kind,
            p.name
        ));
    }
    let Some(ns) = p.namespace.as_deref().filter(|n| !n.is_empty()) else {
        return Err(format!(
            "parametersRef ConfigMap {:?} needs a namespace",
            p.name
        ));
    };
    let Some(cm) = ctx.res.config_maps.get(&crate::Key::new(ns, &p.name)) else {
        return Err(format!(
            "parametersRef ConfigMap {ns}/{} does not exist",
            p.name
        ));
    };
    ClassParams::from_data(
        &format!("{ns}/{}", p.name),
        &cm.data.clone().unwrap_or_default(),
    )
    .map_err(|e| e.to_string())
}
