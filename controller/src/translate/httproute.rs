//! HTTPRoute: rules to IR route entries (matches, filters, backends, timeouts, retries),
//! attached to listeners and virtual hosts.

use super::attach::{self, Attachment, RouteInfo, RouteVerdict};
use super::backends::{self, BackendRef, Need, ROUTE_GROUP, Referrer};
use super::builder::Precedence;
use super::conditions::{Problem, reason};
use super::gateway::{Gateways, RouteKind};
use super::{Age, Ctx, Out, convert, duration, generation, hostname, object_ref};
use sluice_gateway_crds::HttpRoute;
use sluice_gateway_crds::httproutes::{
    HttpRouteRulesBackendRefs, HttpRouteRulesFilters, HttpRouteRulesFiltersRequestRedirectPathType,
    HttpRouteRulesFiltersRequestRedirectScheme, HttpRouteRulesFiltersType,
    HttpRouteRulesFiltersUrlRewritePathType, HttpRouteRulesMatches,
    HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesPathType,
    HttpRouteRulesMatchesQueryParamsType,
};
use sluice_ir as ir;
use sluice_ir::{
    Cors, HeaderMatch, HeaderModifier, HeaderValue, HttpFilter, HttpMatch, Mirror, PathMatch,
    PathModifier, QueryParamMatch, Redirect, RetryPolicy, RouteId, StringMatch, Timeouts,
    UrlRewrite, WeightedBackend,
};

/// `IncompatibleFilters` (Accepted reason for filter combinations that cannot be served).
pub const INCOMPATIBLE_FILTERS: &str = "IncompatibleFilters";

/// A compiled rule: what every (listener, hostname) it attaches to serves.
#[derive(Debug, Clone)]
pub(crate) struct CompiledRule {
    /// Route entries of the rule, one per match.
    pub entries: Vec<ir::HttpRoute>,
}

/// Translates every HTTPRoute.
pub(crate) fn process(ctx: &Ctx<'_>, gws: &mut Gateways, out: &mut Out) {
    for route in ctx.res.http_routes.values() {
        let object = object_ref("HTTPRoute", &route.metadata);
        let generation = generation(&route.metadata);
        let (hostnames, host_problem) =
            valid_hostnames(route.spec.hostnames.as_deref().unwrap_or_default());
        let refs = attach::with_default_gateways(
            gws,
            attach::parent_refs!(route.spec.parent_refs),
            matches!(
                route.spec.use_default_gateways,
                Some(sluice_gateway_crds::httproutes::HttpRouteUseDefaultGateways::All)
            ),
        );
        let info = RouteInfo {
            kind: RouteKind::Http,
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
        let age = Age::of(&route.metadata);
        emit(gws, out, &accepted, rules, &age);
    }
}

/// Splits route hostnames into valid ones and a problem naming the first invalid one.
pub(crate) fn valid_hostnames(hs: &[String]) -> (Vec<String>, Option<Problem>) {
    let mut ok = Vec::new();
    let mut problem = None;
    for (i, h) in hs.iter().enumerate() {
        match hostname::validate(h) {
            Ok(()) => ok.push(h.clone()),
            Err(e) => {
                problem.get_or_insert(Problem::new(
                    reason::UNSUPPORTED_VALUE,
                    format!("spec.hostnames[{i}]: {e}"),
                ));
            }
        }
    }
    (ok, problem)
}

/// Adds the entries of accepted attachments to every programmed listener's virtual hosts.
pub(crate) fn emit(
    gws: &Gateways,
    out: &mut Out,
    accepted: &[Attachment],
    rules: Vec<CompiledRule>,
    age: &Age,
) {
    let age = std::rc::Rc::new(age.clone());
    let mut kinds: Vec<std::rc::Rc<str>> = Vec::new();
    let mut entries: Vec<(Precedence, ir::HttpRoute)> = rules
        .into_iter()
        .flat_map(|r| r.entries)
        .map(|e| {
            let kind = match kinds.iter().find(|k| &k[..] == e.id.route.kind.as_str()) {
                Some(k) => k.clone(),
                None => {
                    let k: std::rc::Rc<str> = e.id.route.kind.as_str().into();
                    kinds.push(k.clone());
                    k
                }
            };
            (Precedence::of(&e, &age, &kind), e)
        })
        .collect();
    for att in accepted {
        let gateway = gws.list[att.gateway].object.clone();
        for (_, e) in &entries {
            let mirrors = e.filters.iter().filter_map(|f| match f {
                ir::HttpFilter::RequestMirror(m) => m.cluster.as_deref(),
                _ => None,
            });
            for c in e
                .backends
                .iter()
                .filter_map(|b| b.cluster.as_deref())
                .chain(mirrors)
            {
                out.use_cluster(c, &gateway);
            }
        }
    }
    // Every (listener, virtual host) the entries go to; the last one gets the entries
    // themselves, the others copies. Listeners that could not be registered (see
    // `register_listeners`) serve nothing.
    let mut targets: Vec<(&str, &str, Option<&str>)> = Vec::new();
    for att in accepted {
        for (l, hosts) in &att.listeners {
            if !gws.programmed(*l) {
                continue;
            }
            let ls = &gws.listeners[*l];
            for addr in &gws.list[ls.gateway].addresses {
                let Some(key) = out.listener_keys.get(&(*l, *addr)) else {
                    continue;
                };
                for h in hosts {
                    targets.push((key, h, ls.hostname.as_deref()));
                }
            }
        }
    }
    let Some(((last_key, last_host, last_lh), others)) = targets.split_last() else {
        return;
    };
    for (key, h, lh) in others {
        for (p, e) in &entries {
            out.ir.http(key, h, *lh, p.clone(), e.clone());
        }
    }
    for (p, e) in entries.drain(..) {
        out.ir.http(last_key, last_host, *last_lh, p, e);
    }
}

/// Registers every programmed listener on its sockets, with certificates, so that listeners
/// without routes still bind (and answer 404).
pub(crate) fn register_listeners(gws: &Gateways, out: &mut Out) {
    for (l, ls) in gws.listeners.iter().enumerate() {
        if !gws.programmed(l) {
            continue;
        }
        let Some(protocol) = ls.protocol else {
            continue;
        };
        for &addr in &gws.list[ls.gateway].addresses {
            let source = ir::ListenerSource {
                parent: ls.parent.clone(),
                listener: ls.name.clone(),
            };
            if let Ok(key) =
                out.ir
                    .listener(addr, ls.port, protocol, source, ls.hostname.as_deref())
            {
                out.listener_keys.insert((l, addr), key.clone());
                out.ir.certificates(&key, &ls.certificates);
                if ls.http3.unwrap_or(gws.list[ls.gateway].class_http3) {
                    out.ir.http3(&key);
                }
                if let Some(v) = &ls.client_validation {
                    out.ir.client_validation(&key, v);
                }
            }
        }
    }
}

fn compile(
    ctx: &Ctx<'_>,
    out: &mut Out,
    route: &HttpRoute,
    object: &ir::ObjectRef,
) -> (Vec<CompiledRule>, RouteVerdict) {
    let mut verdict = RouteVerdict::default();
    let rules = route.spec.rules.as_deref().unwrap_or_default();
    verdict.rules = rules.len();
    let from = Referrer {
        kind: "HTTPRoute",
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
            need: Need::Http,
            unresolved: &mut verdict.unresolved,
        };
        let (backends, backend_filter_error) =
            rc.backends(rule.backend_refs.as_deref().unwrap_or_default(), &field);
        let mut problem: Option<Problem> = None;
        let matches = match compile_matches(rule.matches.as_deref().unwrap_or_default(), &field) {
            Ok(m) => m,
            Err(p) => {
                problem = Some(p);
                Vec::new()
            }
        };
        let filters = rc
            .filters(
                rule.filters.as_deref().unwrap_or_default(),
                &field,
                &matches,
            )
            .and_then(|f| backend_filter_error.map_or(Ok(f), Err));
        let (filters, serve_error) = match filters {
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
        let timeouts = match timeouts(
            rule.timeouts
                .as_ref()
                .map(|t| (t.request.as_deref(), t.backend_request.as_deref())),
            &field,
        ) {
            Ok(t) => t,
            Err(p) => {
                problem.get_or_insert(p);
                Timeouts::default()
            }
        };
        let retry = match rule
            .retry
            .as_ref()
            .map(|r| retry(r.attempts, r.backoff.as_deref(), r.codes.as_deref(), &field))
        {
            None => None,
            Some(Ok(r)) => Some(r),
            Some(Err(p)) => {
                problem.get_or_insert(p);
                None
            }
        };
        let mut entries = Vec::new();
        // A rule with a filter Sluice cannot apply keeps its matches but answers 500: the
        // filter must not be skipped.
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
                    timeouts,
                    retry: if serve_error { None } else { retry.clone() },
                    grpc: false,
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

fn regex_ok(re: &str, field: &str) -> Result<(), Problem> {
    regex::Regex::new(re).map(|_| ()).map_err(|e| {
        Problem::new(
            reason::UNSUPPORTED_VALUE,
            format!(
                "{field}: invalid regular expression {re:?}: {}",
                e.to_string().lines().last().unwrap_or_default().trim()
            ),
        )
    })
}

/// A header name as the IR stores it (lower-case token), or why it is invalid.
pub(crate) fn header_name(name: &str, field: &str) -> Result<String, Problem> {
    let lower = name.to_ascii_lowercase();
    let ok = !lower.is_empty()
        && lower.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        });
    if ok {
        Ok(lower)
    } else {
        Err(Problem::new(
            reason::UNSUPPORTED_VALUE,
            format!("{field}: {name:?} is not a valid header name"),
        ))
    }
}

fn compile_matches(
    matches: &[HttpRouteRulesMatches],
    field: &str,
) -> Result<Vec<HttpMatch>, Problem> {
    if matches.is_empty() {
        return Ok(vec![HttpMatch::default()]);
    }
    let mut out = Vec::new();
    for (mi, m) in matches.iter().enumerate() {
        let f = format!("{field}.matches[{mi}]");
        let path = match &m.path {
            None => PathMatch::Prefix("/".into()),
            Some(p) => {
                let value = p.value.clone().unwrap_or_else(|| "/".into());
                match p
                    .r#type
                    .as_ref()
                    .unwrap_or(&HttpRouteRulesMatchesPathType::PathPrefix)
                {
                    HttpRouteRulesMatchesPathType::RegularExpression => {
                        regex_ok(&value, &format!("{f}.path.value"))?;
                        PathMatch::Regex(value)
                    }
                    t => {
                        if !value.starts_with('/') {
                            return Err(Problem::new(
                                reason::UNSUPPORTED_VALUE,
                                format!("{f}.path.value: {value:?} must start with \"/\""),
                            ));
                        }
                        if value.contains("//")
                            || value.contains("/./")
                            || value.contains("/../")
                            || value.ends_with("/..")
                            || value.ends_with("/.")
                        {
                            return Err(Problem::new(
                                reason::UNSUPPORTED_VALUE,
                                format!("{f}.path.value: {value:?} is not a normalized path"),
                            ));
                        }
                        if matches!(t, HttpRouteRulesMatchesPathType::Exact) {
                            PathMatch::Exact(value)
                        } else {
                            PathMatch::Prefix(value)
                        }
                    }
                }
            }
        };
        let mut headers: Vec<HeaderMatch> = Vec::new();
        for (hi, h) in m.headers.iter().flatten().enumerate() {
            let hf = format!("{f}.headers[{hi}]");
            let name = header_name(&h.name, &format!("{hf}.name"))?;
            if headers.iter().any(|x| x.name == name) {
                continue; // only the first entry of a name counts
            }
            let value = match h.r#type.as_ref() {
                Some(HttpRouteRulesMatchesHeadersType::RegularExpression) => {
                    regex_ok(&h.value, &format!("{hf}.value"))?;
                    StringMatch::Regex(h.value.clone())
                }
                _ => StringMatch::Exact(h.value.clone()),
            };
            headers.push(HeaderMatch { name, value });
        }
        let mut query_params: Vec<QueryParamMatch> = Vec::new();
        for (qi, q) in m.query_params.iter().flatten().enumerate() {
            let qf = format!("{f}.queryParams[{qi}]");
            if query_params.iter().any(|x| x.name == q.name) {
                continue;
            }
            let value = match q.r#type.as_ref() {
                Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression) => {
                    regex_ok(&q.value, &format!("{qf}.value"))?;
                    StringMatch::Regex(q.value.clone())
                }
                _ => StringMatch::Exact(q.value.clone()),
            };
            query_params.push(QueryParamMatch {
                name: q.name.clone(),
                value,
            });
        }
        let method = m.method.as_ref().map(|x| {
            serde_json::to_value(x)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        });
        out.push(HttpMatch {
            path,
            method,
            headers,
            query_params,
        });
    }
    Ok(out)
}

/// `timeouts.request` and `timeouts.backendRequest`.
pub(crate) fn timeouts(
    t: Option<(Option<&str>, Option<&str>)>,
    field: &str,
) -> Result<Timeouts, Problem> {
    let Some((request, backend)) = t else {
        return Ok(Timeouts::default());
    };
    let parse = |v: Option<&str>, name: &str| -> Result<Option<u64>, Problem> {
        v.map(|s| {
            duration::parse_timeout_ms(s).map_err(|e| {
                Problem::new(
                    reason::UNSUPPORTED_VALUE,
                    format!("{field}.timeouts.{name}: {e}"),
                )
            })
        })
        .transpose()
        .map(Option::flatten)
    };
    let request_ms = parse(request, "request")?;
    let backend_request_ms = parse(backend, "backendRequest")?;
    if let (Some(r), Some(b)) = (request_ms, backend_request_ms)
        && b > r
    {
        return Err(Problem::new(
            reason::UNSUPPORTED_VALUE,
            format!("{field}.timeouts: backendRequest ({b}ms) must not exceed request ({r}ms)"),
        ));
    }
    Ok(Timeouts {
        request_ms,
        backend_request_ms,
    })
}

/// `retry`: attempts (default 1), backoff, codes (400-599).
pub(crate) fn retry(
    attempts: Option<i64>,
    backoff: Option<&str>,
    codes: Option<&[i64]>,
    field: &str,
) -> Result<RetryPolicy, Problem> {
    let attempts = match attempts {
        None => 1,
        Some(a) if (0..=i64::from(u32::MAX)).contains(&a) => a as u32,
        Some(a) => {
            return Err(Problem::new(
                reason::UNSUPPORTED_VALUE,
                format!("{field}.retry.attempts: {a} is out of range"),
            ));
        }
    };
    let backoff_ms = backoff
        .map(|b| {
            duration::parse_ms(b).map_err(|e| {
                Problem::new(
                    reason::UNSUPPORTED_VALUE,
                    format!("{field}.retry.backoff: {e}"),
                )
            })
        })
        .transpose()?;
    let mut out_codes = Vec::new();
    for &c in codes.unwrap_or_default() {
        if !(400..=599).contains(&c) {
            return Err(Problem::new(
                reason::UNSUPPORTED_VALUE,
                format!("{field}.retry.codes: {c} is not between 400 and 599"),
            ));
        }
        if !out_codes.contains(&(c as u16)) {
            out_codes.push(c as u16);
        }
    }
    Ok(RetryPolicy {
        codes: out_codes,
        attempts,
        backoff_ms,
    })
}

/// Why a rule's filters cannot be used.
pub(crate) enum FilterError {
    /// A filter type Sluice does not implement: requests it would process get 500.
    Unsupported(Problem),
    /// A malformed or incompatible filter: the rule is not served.
    Invalid(Problem),
}

/// Compiles filters and backend references of one rule.
pub(crate) struct RuleCompiler<'c, 'a, 'o> {
    pub ctx: &'c Ctx<'a>,
    pub out: &'o mut Out,
    pub from: Referrer<'c>,
    pub need: Need,
    pub unresolved: &'o mut Vec<Problem>,
}

impl RuleCompiler<'_, '_, '_> {
    fn resolve(&mut self, r: &BackendRef<'_>, field: &str) -> Option<String> {
        match backends::resolve(self.ctx, self.out, self.from, r, self.need, field) {
            Ok(c) => Some(c),
            Err(p) => {
                self.unresolved.push(p);
                None
            }
        }
    }

    /// Weighted backends; invalid references keep their weight with no cluster (their share
    /// gets 500). Also returns the first backend-level filter that cannot be used.
    pub fn backends(
        &mut self,
        refs: &[HttpRouteRulesBackendRefs],
        field: &str,
    ) -> (Vec<WeightedBackend>, Option<FilterError>) {
        let mut out = Vec::new();
        let mut error = None;
        for (bi, b) in refs.iter().enumerate() {
            let f = format!("{field}.backendRefs[{bi}]");
            let cluster = self.resolve(
                &BackendRef {
                    group: b.group.as_deref(),
                    kind: b.kind.as_deref(),
                    name: &b.name,
                    namespace: b.namespace.as_deref(),
                    port: b.port,
                },
                &f,
            );
            let filters: Vec<HttpRouteRulesFilters> =
                b.filters.iter().flatten().filter_map(convert).collect();
            let filters = match self.filters(&filters, &f, &[]) {
                Ok(fs) => fs,
                Err(e) => {
                    error.get_or_insert(e);
                    Vec::new()
                }
            };
            out.push(WeightedBackend {
                weight: weight(b.weight),
                cluster,
                filters,
            });
        }
        (out, error)
    }

    /// Filters in declaration order. `matches` are the rule's matches (ReplacePrefixMatch
    /// needs path prefix matches); empty for backend-level filters.
    pub fn filters(
        &mut self,
        filters: &[HttpRouteRulesFilters],
        field: &str,
        matches: &[HttpMatch],
    ) -> Result<Vec<HttpFilter>, FilterError> {
        let mut out = Vec::new();
        let mut seen: Vec<&'static str> = Vec::new();
        let mut once = |name: &'static str, f: &str| -> Result<(), FilterError> {
            if seen.contains(&name) {
                return Err(FilterError::Invalid(Problem::new(
                    reason::UNSUPPORTED_VALUE,
                    format!("{f}: {name} may appear only once per rule"),
                )));
            }
            seen.push(name);
            Ok(())
        };
        for (fi, flt) in filters.iter().enumerate() {
            let f = format!("{field}.filters[{fi}]");
            let missing = |what: &str| {
                FilterError::Invalid(Problem::new(
                    reason::UNSUPPORTED_VALUE,
                    format!("{f}: type {what} needs the {} field", lower_first(what)),
                ))
            };
            match flt.r#type {
                HttpRouteRulesFiltersType::RequestHeaderModifier => {
                    once("RequestHeaderModifier", &f)?;
                    let m = flt
                        .request_header_modifier
                        .as_ref()
                        .ok_or_else(|| missing("RequestHeaderModifier"))?;
                    let hm = header_modifier(
                        m.set
                            .iter()
                            .flatten()
                            .map(|h| (h.name.as_str(), h.value.as_str())),
                        m.add
                            .iter()
                            .flatten()
                            .map(|h| (h.name.as_str(), h.value.as_str())),
                        m.remove.as_deref().unwrap_or_default(),
                        &f,
                    )
                    .map_err(FilterError::Invalid)?;
                    out.push(HttpFilter::RequestHeaderModifier(hm));
                }
                HttpRouteRulesFiltersType::ResponseHeaderModifier => {
                    once("ResponseHeaderModifier", &f)?;
                    let m = flt
                        .response_header_modifier
                        .as_ref()
                        .ok_or_else(|| missing("ResponseHeaderModifier"))?;
                    let hm = header_modifier(
                        m.set
                            .iter()
                            .flatten()
                            .map(|h| (h.name.as_str(), h.value.as_str())),
                        m.add
                            .iter()
                            .flatten()
                            .map(|h| (h.name.as_str(), h.value.as_str())),
                        m.remove.as_deref().unwrap_or_default(),
                        &f,
                    )
                    .map_err(FilterError::Invalid)?;
                    out.push(HttpFilter::ResponseHeaderModifier(hm));
                }
                HttpRouteRulesFiltersType::RequestRedirect => {
                    once("RequestRedirect", &f)?;
                    let r = flt
                        .request_redirect
                        .as_ref()
                        .ok_or_else(|| missing("RequestRedirect"))?;
                    let status_code = match r.status_code.unwrap_or(302) {
                        c @ (301 | 302 | 303 | 307 | 308) => c as u16,
                        c => {
                            return Err(FilterError::Invalid(Problem::new(
                                reason::UNSUPPORTED_VALUE,
                                format!(
                                    "{f}.requestRedirect.statusCode: {c} is not 301, 302, 303, 307 or 308"
                                ),
                            )));
                        }
                    };
                    let path = match &r.path {
                        None => None,
                        Some(p) => Some(path_modifier(
                            matches!(
                                p.r#type,
                                HttpRouteRulesFiltersRequestRedirectPathType::ReplaceFullPath
                            ),
                            p.replace_full_path.as_deref(),
                            p.replace_prefix_match.as_deref(),
                            matches,
                            &format!("{f}.requestRedirect.path"),
                        )?),
                    };
                    let port = match r.port {
                        None => None,
                        Some(p) => {
                            Some(u16::try_from(p).ok().filter(|p| *p > 0).ok_or_else(|| {
                                FilterError::Invalid(Problem::new(
                                    reason::UNSUPPORTED_VALUE,
                                    format!("{f}.requestRedirect.port: {p} is not a port"),
                                ))
                            })?)
                        }
                    };
                    if let Some(h) = &r.hostname
                        && let Err(e) = hostname::validate(h)
                    {
                        return Err(FilterError::Invalid(Problem::new(
                            reason::UNSUPPORTED_VALUE,
                            format!("{f}.requestRedirect.hostname: {e}"),
                        )));
                    }
                    out.push(HttpFilter::RequestRedirect(Redirect {
                        scheme: r.scheme.as_ref().map(|s| match s {
                            HttpRouteRulesFiltersRequestRedirectScheme::Http => "http".into(),
                            HttpRouteRulesFiltersRequestRedirectScheme::Https => "https".into(),
                        }),
                        hostname: r.hostname.clone(),
                        path,
                        port,
                        status_code,
                    }));
                }
                HttpRouteRulesFiltersType::UrlRewrite => {
                    once("URLRewrite", &f)?;
                    let r = flt
                        .url_rewrite
                        .as_ref()
                        .ok_or_else(|| missing("URLRewrite"))?;
                    let path = match &r.path {
                        None => None,
                        Some(p) => Some(path_modifier(
                            matches!(
                                p.r#type,
                                HttpRouteRulesFiltersUrlRewritePathType::ReplaceFullPath
                            ),
                            p.replace_full_path.as_deref(),
                            p.replace_prefix_match.as_deref(),
                            matches,
                            &format!("{f}.urlRewrite.path"),
                        )?),
                    };
                    if let Some(h) = &r.hostname
                        && let Err(e) = hostname::validate(h)
                    {
                        return Err(FilterError::Invalid(Problem::new(
                            reason::UNSUPPORTED_VALUE,
                            format!("{f}.urlRewrite.hostname: {e}"),
                        )));
                    }
                    out.push(HttpFilter::UrlRewrite(UrlRewrite {
                        hostname: r.hostname.clone(),
                        path,
                    }));
                }
                HttpRouteRulesFiltersType::RequestMirror => {
                    let m = flt
                        .request_mirror
                        .as_ref()
                        .ok_or_else(|| missing("RequestMirror"))?;
                    let per_million = match (m.percent, m.fraction.as_ref()) {
                        (Some(_), Some(_)) => {
                            return Err(FilterError::Invalid(Problem::new(
                                reason::UNSUPPORTED_VALUE,
                                format!(
                                    "{f}.requestMirror: only one of percent and fraction may be set"
                                ),
                            )));
                        }
                        (Some(p), None) if (0..=100).contains(&p) => p as u32 * 10_000,
                        (None, Some(fr)) => {
                            let den = fr.denominator.unwrap_or(100);
                            if den <= 0 || fr.numerator < 0 || fr.numerator > den {
                                return Err(FilterError::Invalid(Problem::new(
                                    reason::UNSUPPORTED_VALUE,
                                    format!(
                                        "{f}.requestMirror.fraction: {}/{den} is not a fraction between 0 and 1",
                                        fr.numerator
                                    ),
                                )));
                            }
                            (i64::from(fr.numerator) * 1_000_000 / i64::from(den)) as u32
                        }
                        (None, None) => 1_000_000,
                        (Some(p), None) => {
                            return Err(FilterError::Invalid(Problem::new(
                                reason::UNSUPPORTED_VALUE,
                                format!("{f}.requestMirror.percent: {p} is not between 0 and 100"),
                            )));
                        }
                    };
                    let b = &m.backend_ref;
                    let cluster = self.resolve(
                        &BackendRef {
                            group: b.group.as_deref(),
                            kind: b.kind.as_deref(),
                            name: &b.name,
                            namespace: b.namespace.as_deref(),
                            port: b.port,
                        },
                        &format!("{f}.requestMirror.backendRef"),
                    );
                    out.push(HttpFilter::RequestMirror(Mirror {
                        cluster,
                        per_million,
                    }));
                }
                HttpRouteRulesFiltersType::Cors => {
                    once("CORS", &f)?;
                    let c = flt.cors.as_ref().ok_or_else(|| missing("CORS"))?;
                    let invalid = FilterError::Invalid;
                    let origins = c
                        .allow_origins
                        .iter()
                        .flatten()
                        .map(|o| cors_origin(o, &format!("{f}.cors.allowOrigins")))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(invalid)?;
                    let tokens = |list: &Option<Vec<String>>, what: &str| {
                        list.iter()
                            .flatten()
                            .map(|h| {
                                if h == "*" {
                                    Ok(h.clone())
                                } else {
                                    header_name(h, &format!("{f}.cors.{what}")).map(|_| h.clone())
                                }
                            })
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(invalid)
                    };
                    let allow_methods = tokens(&c.allow_methods, "allowMethods")?;
                    let allow_headers = tokens(&c.allow_headers, "allowHeaders")?;
                    let expose_headers = tokens(&c.expose_headers, "exposeHeaders")?;
                    out.push(HttpFilter::Cors(Cors {
                        allow_origins: origins,
                        allow_credentials: c.allow_credentials.unwrap_or(false),
                        allow_methods,
                        allow_headers,
                        expose_headers,
                        max_age_seconds: c.max_age.and_then(|a| u32::try_from(a).ok()),
                    }));
                }
                HttpRouteRulesFiltersType::ExtensionRef => {
                    let what = flt
                        .extension_ref
                        .as_ref()
                        .map(|e| format!(" ({}/{} {:?})", e.group, e.kind, e.name))
                        .unwrap_or_default();
                    return Err(FilterError::Unsupported(Problem::new(
                        reason::UNSUPPORTED_VALUE,
                        format!(
                            "{f}: ExtensionRef filters{what} are not supported by Sluice; matching requests get 500"
                        ),
                    )));
                }
                HttpRouteRulesFiltersType::ExternalAuth => {
                    return Err(FilterError::Unsupported(Problem::new(
                        reason::UNSUPPORTED_VALUE,
                        format!(
                            "{f}: ExternalAuth filters are not supported by Sluice; matching requests get 500"
                        ),
                    )));
                }
            }
        }
        let redirect = out
            .iter()
            .any(|f| matches!(f, HttpFilter::RequestRedirect(_)));
        let rewrite = out.iter().any(|f| matches!(f, HttpFilter::UrlRewrite(_)));
        if redirect && rewrite {
            return Err(FilterError::Invalid(Problem::new(
                INCOMPATIBLE_FILTERS,
                format!("{field}.filters: RequestRedirect and URLRewrite cannot be combined"),
            )));
        }
        Ok(out)
    }
}

fn lower_first(s: &str) -> String {
    match s {
        "URLRewrite" => "urlRewrite".into(),
        "CORS" => "cors".into(),
        _ => {
            let mut c = s.chars();
            match c.next() {
                Some(f) => f.to_ascii_lowercase().to_string() + c.as_str(),
                None => String::new(),
            }
        }
    }
}

fn weight(w: Option<i32>) -> u32 {
    w.map(|w| w.max(0) as u32).unwrap_or(1)
}

/// A header value: visible ASCII, spaces and tabs (no line breaks or other control
/// characters).
pub(crate) fn header_value(v: &str, field: &str) -> Result<String, Problem> {
    if v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) {
        Ok(v.to_string())
    } else {
        Err(Problem::new(
            reason::UNSUPPORTED_VALUE,
            format!("{field}: {v:?} is not a valid header value (visible ASCII only)"),
        ))
    }
}

/// A CORS origin: `*`, or `http(s)://host[:port]` where the host may start with a `*` label.
fn cors_origin(o: &str, field: &str) -> Result<String, Problem> {
    let bad = || {
        Problem::new(
            reason::UNSUPPORTED_VALUE,
            format!(
                "{field}: {o:?} is not \"*\" or scheme://host[:port] with scheme http or https"
            ),
        )
    };
    if o == "*" {
        return Ok(o.to_string());
    }
    let (scheme, rest) = o.split_once("://").ok_or_else(bad)?;
    if scheme != "http" && scheme != "https" {
        return Err(bad());
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => (h, Some(p)),
        _ => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.*[]:".contains(&b));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    if host_ok && port_ok {
        Ok(o.to_string())
    } else {
        Err(bad())
    }
}

/// A header modifier with lower-case names.
pub(crate) fn header_modifier<'a>(
    set: impl Iterator<Item = (&'a str, &'a str)>,
    add: impl Iterator<Item = (&'a str, &'a str)>,
    remove: &[String],
    field: &str,
) -> Result<HeaderModifier, Problem> {
    let hv = |(n, v): (&str, &str), what: &str| -> Result<HeaderValue, Problem> {
        Ok(HeaderValue {
            name: header_name(n, &format!("{field}.{what}"))?,
            value: header_value(v, &format!("{field}.{what}"))?,
        })
    };
    let mut m = HeaderModifier::default();
    for p in set {
        let h = hv(p, "set")?;
        if !m.set.iter().any(|x| x.name == h.name) {
            m.set.push(h);
        }
    }
    for p in add {
        m.add.push(hv(p, "add")?);
    }
    for r in remove {
        let n = header_name(r, &format!("{field}.remove"))?;
        if !m.remove.contains(&n) {
            m.remove.push(n);
        }
    }
    Ok(m)
}

fn path_modifier(
    full: bool,
    replace_full: Option<&str>,
    replace_prefix: Option<&str>,
    matches: &[HttpMatch],
    field: &str,
) -> Result<PathModifier, FilterError> {
    let invalid = |m: String| FilterError::Invalid(Problem::new(reason::UNSUPPORTED_VALUE, m));
    if full {
        let p = replace_full.ok_or_else(|| {
            invalid(format!(
                "{field}: type ReplaceFullPath needs replaceFullPath"
            ))
        })?;
        if !p.starts_with('/') {
            return Err(invalid(format!(
                "{field}.replaceFullPath: {p:?} must start with \"/\""
            )));
        }
        Ok(PathModifier::ReplaceFullPath(p.to_string()))
    } else {
        let p = replace_prefix.ok_or_else(|| {
            invalid(format!(
                "{field}: type ReplacePrefixMatch needs replacePrefixMatch"
            ))
        })?;
        if !p.starts_with('/') {
            return Err(invalid(format!(
                "{field}.replacePrefixMatch: {p:?} must start with \"/\""
            )));
        }
        if let Some(m) = matches
            .iter()
            .find(|m| !matches!(m.path, PathMatch::Prefix(_)))
        {
            return Err(invalid(format!(
                "{field}: ReplacePrefixMatch needs PathPrefix matches, but the rule also matches {:?}",
                m.path
            )));
        }
        Ok(PathModifier::ReplacePrefixMatch(p.to_string()))
    }
}
