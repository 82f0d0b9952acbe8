//! GRPCRoute: gRPC method matches become path matches on `/service/method`; entries are
//! marked `grpc` and reach their backends over HTTP/2 (h2c unless a BackendTLSPolicy applies).

use super::attach::{self, RouteInfo, RouteVerdict};
use super::backends::{Need, ROUTE_GROUP, Referrer};
use super::conditions::{Problem, reason};
use super::gateway::{Gateways, RouteKind};
use super::httproute::{self, CompiledRule, FilterError, RuleCompiler, header_name};
use super::{Age, Ctx, Out, convert, generation, object_ref};
use sluice_gateway_crds::GrpcRoute;
use sluice_gateway_crds::grpcroutes::{
    GrpcRouteRulesMatches, GrpcRouteRulesMatchesHeadersType, GrpcRouteRulesMatchesMethodType,
};
use sluice_gateway_crds::httproutes::{HttpRouteRulesBackendRefs, HttpRouteRulesFilters};
use sluice_ir as ir;
use sluice_ir::{HeaderMatch, HttpMatch, PathMatch, RouteId, StringMatch, Timeouts};

/// Translates every GRPCRoute.
pub(crate) fn process(ctx: &Ctx<'_>, gws: &mut Gateways, out: &mut Out) {
    for route in ctx.res.grpc_routes.values() {
        let object = object_ref("GRPCRoute", &route.metadata);
        let generation = generation(&route.metadata);
        let (hostnames, host_problem) =
            httproute::valid_hostnames(route.spec.hostnames.as_deref().unwrap_or_default());
        let refs = attach::with_default_gateways(
            gws,
            attach::parent_refs!(route.spec.parent_refs),
            matches!(
                route.spec.use_default_gateways,
                Some(sluice_gateway_crds::grpcroutes::GrpcRouteUseDefaultGateways::All)
            ),
        );
        let info = RouteInfo {
            kind: RouteKind::Grpc,
            object: object.clone(),
            generation,
            hostnames: &hostnames,
        };
        let attachments = attach::attach(ctx, gws, &info, &refs);
        if attachments.is_empty() {
            continue;
        }
        let (rules, mut verdict) = compile(ctx, out, route, &object);
        verdict.route_problem = host_problem;
        let accepted = attach::finish_route(
            out,
            gws,
            &info,
            attachments,
            &verdict,
            &ctx.opts.controller_name,
        );
        httproute::emit(gws, out, &accepted, rules, &Age::of(&route.metadata));
    }
}

fn compile(
    ctx: &Ctx<'_>,
    out: &mut Out,
    route: &GrpcRoute,
    object: &ir::ObjectRef,
) -> (Vec<CompiledRule>, RouteVerdict) {
    let mut verdict = RouteVerdict::default();
    let rules = route.spec.rules.as_deref().unwrap_or_default();
    verdict.rules = rules.len();
    let from = Referrer {
        kind: "GRPCRoute",
        group: ROUTE_GROUP,
        namespace: &object.namespace,
    };
    let mut compiled = Vec::new();
    for (ri, rule) in rules.iter().enumerate() {
        let field = format!("spec.rules[{ri}]");
        let mut rc = RuleCompiler {
            ctx,
            out,
            from,
            need: Need::Grpc,
            unresolved: &mut verdict.unresolved,
        };
        let refs: Vec<HttpRouteRulesBackendRefs> = rule
            .backend_refs
            .iter()
            .flatten()
            .filter_map(convert)
            .collect();
        let (backends, backend_filter_error) = rc.backends(&refs, &field);
        let mut problem: Option<Problem> = None;
        let matches = match compile_matches(rule.matches.as_deref().unwrap_or_default(), &field) {
            Ok(m) => m,
            Err(p) => {
                problem = Some(p);
                Vec::new()
            }
        };
        let filters: Vec<HttpRouteRulesFilters> =
            rule.filters.iter().flatten().filter_map(convert).collect();
        let (filters, serve_error) = match rc
            .filters(&filters, &field, &matches)
            .and_then(|f| backend_filter_error.map_or(Ok(f), Err))
        {
            Ok(f) => (f, false),
            Err(FilterError::Unsupported(p)) => {
                problem.get_or_insert(p);
                (Vec::new(), true)
            }
            Err(FilterError::Invalid(p)) => {
                problem.get_or_insert(p);
                (Vec::new(), false)
            }
        };
        let mut entries = Vec::new();
        if problem.is_none() || serve_error {
            for (mi, m) in matches.iter().enumerate() {
                entries.push(ir::HttpRoute {
                    id: RouteId {
                        route: object.clone(),
                        rule: ri as u32,
                        matcher: mi as u32,
                        rule_name: rule.name.clone(),
                    },
                    matcher: m.clone(),
                    filters: if serve_error {
                        Vec::new()
                    } else {
                        filters.clone()
                    },
                    backends: if serve_error {
                        Vec::new()
                    } else {
                        backends.clone()
                    },
                    timeouts: Timeouts::default(),
                    retry: None,
                    grpc: true,
                });
            }
        }
        if let Some(p) = problem {
            verdict.invalid_rules.push(p);
        }
        compiled.push(CompiledRule { entries });
    }
    (compiled, verdict)
}

/// A gRPC service or method name: letters, digits, `_` and `.` (service only).
fn grpc_name(s: &str, dots: bool) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || (dots && b == b'.'))
}

/// The path condition for a gRPC method match.
pub fn method_path(
    service: Option<&str>,
    method: Option<&str>,
    regex: bool,
    field: &str,
) -> Result<PathMatch, Problem> {
    let service = service.filter(|s| !s.is_empty());
    let method = method.filter(|s| !s.is_empty());
    let bad = |m: String| Problem::new(reason::UNSUPPORTED_VALUE, format!("{field}: {m}"));
    if regex {
        for (what, v) in [("service", service), ("method", method)] {
            if let Some(v) = v {
                regex::Regex::new(v)
                    .map_err(|e| bad(format!("invalid {what} regular expression {v:?}: {e}")))?;
            }
        }
        return Ok(PathMatch::Regex(format!(
            "/(?:{})/(?:{})",
            service.unwrap_or("[^/]+"),
            method.unwrap_or("[^/]+")
        )));
    }
    if let Some(s) = service
        && !grpc_name(s, true)
    {
        return Err(bad(format!("{s:?} is not a gRPC service name")));
    }
    if let Some(m) = method
        && !grpc_name(m, false)
    {
        return Err(bad(format!("{m:?} is not a gRPC method name")));
    }
    Ok(match (service, method) {
        (Some(s), Some(m)) => PathMatch::Exact(format!("/{s}/{m}")),
        (Some(s), None) => PathMatch::Prefix(format!("/{s}")),
        (None, Some(m)) => PathMatch::Regex(format!("/[^/]+/{}", regex::escape(m))),
        (None, None) => {
            return Err(bad("method match needs a service or a method".to_string()));
        }
    })
}

fn compile_matches(
    matches: &[GrpcRouteRulesMatches],
    field: &str,
) -> Result<Vec<HttpMatch>, Problem> {
    if matches.is_empty() {
        return Ok(vec![HttpMatch::default()]);
    }
    let mut out = Vec::new();
    for (mi, m) in matches.iter().enumerate() {
        let f = format!("{field}.matches[{mi}]");
        let path = match &m.method {
            None => PathMatch::Prefix("/".into()),
            Some(mm) => method_path(
                mm.service.as_deref(),
                mm.method.as_deref(),
                matches!(
                    mm.r#type,
                    Some(GrpcRouteRulesMatchesMethodType::RegularExpression)
                ),
                &format!("{f}.method"),
            )?,
        };
        let mut headers: Vec<HeaderMatch> = Vec::new();
        for (hi, h) in m.headers.iter().flatten().enumerate() {
            let hf = format!("{f}.headers[{hi}]");
            let name = header_name(&h.name, &format!("{hf}.name"))?;
            if headers.iter().any(|x| x.name == name) {
                continue;
            }
            let value = match h.r#type {
                Some(GrpcRouteRulesMatchesHeadersType::RegularExpression) => {
                    regex::Regex::new(&h.value).map_err(|e| {
                        Problem::new(
                            reason::UNSUPPORTED_VALUE,
                            format!("{hf}.value: invalid regular expression {:?}: {e}", h.value),
                        )
                    })?;
                    StringMatch::Regex(h.value.clone())
                }
                _ => StringMatch::Exact(h.value.clone()),
            };
            headers.push(HeaderMatch { name, value });
        }
        out.push(HttpMatch {
            path,
            method: None,
            headers,
            query_params: Vec::new(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_matches_become_paths() {
        let f = "m";
        assert_eq!(
            method_path(Some("pkg.Svc"), Some("Get"), false, f).unwrap(),
            PathMatch::Exact("/pkg.Svc/Get".into())
        );
        assert_eq!(
            method_path(Some("pkg.Svc"), None, false, f).unwrap(),
            PathMatch::Prefix("/pkg.Svc".into())
        );
        assert_eq!(
            method_path(None, Some("Get"), false, f).unwrap(),
            PathMatch::Regex("/[^/]+/Get".into())
        );
        assert_eq!(
            method_path(Some("pkg\\..*"), None, true, f).unwrap(),
            PathMatch::Regex("/(?:pkg\\..*)/(?:[^/]+)".into())
        );
        assert!(method_path(None, None, false, f).is_err());
        assert!(method_path(Some("a/b"), None, false, f).is_err());
        assert!(method_path(Some("("), None, true, f).is_err());
    }
}
