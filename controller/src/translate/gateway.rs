//! Gateways and ListenerSets of our classes: listener validation (protocol, hostname, TLS
//! certificates, client certificate validation, route kinds), conflicts between the listeners
//! of one Gateway (and its ListenerSets), address assignment from the pool, ports shared by
//! several Gateways, and finally Gateway/ListenerSet status.

use super::conditions::{self as c, Problem, reason};
use super::gatewayclass::Classes;
use super::hostname;
use super::referencegrant::{self, From, To};
use super::selector::Selector;
use super::{Age, Ctx, GATEWAY_GROUP, Out, certs, convert, generation, object_ref};
use crate::Key;
use sluice_gateway_crds::Gateway;
use sluice_gateway_crds::gateways::{
    GatewayAllowedListenersNamespacesFrom, GatewayListeners,
    GatewayListenersAllowedRoutesNamespacesFrom, GatewayListenersTlsMode,
};
use sluice_ir::status::{Condition, GatewayAddress, ListenerStatus, RouteGroupKind};
use sluice_ir::{
    ClientValidation, ClientValidationMode, ListenerProtocol, ObjectRef, ServerCertificate,
    TlsMode, Transport,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Listener protocols Sluice serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// HTTP.
    Http,
    /// HTTPS (TLS terminated, then HTTP).
    Https,
    /// TLS (passthrough or terminate, routed by SNI).
    Tls,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// Listeners of one family can share a port; different families cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// HTTP.
    Http,
    /// HTTPS and TLS (told apart by SNI).
    Tls,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Family {
    /// A short description for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Family::Http => "HTTP",
            Family::Tls => "HTTPS/TLS",
            Family::Tcp => "TCP",
            Family::Udp => "UDP",
        }
    }
}

impl Protocol {
    /// The protocol for a `spec.listeners[].protocol` value.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "HTTP" => Protocol::Http,
            "HTTPS" => Protocol::Https,
            "TLS" => Protocol::Tls,
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            _ => return None,
        })
    }

    /// The IR protocol.
    pub fn ir(self) -> ListenerProtocol {
        match self {
            Protocol::Http => ListenerProtocol::Http,
            Protocol::Https => ListenerProtocol::Https,
            Protocol::Tls => ListenerProtocol::Tls,
            Protocol::Tcp => ListenerProtocol::Tcp,
            Protocol::Udp => ListenerProtocol::Udp,
        }
    }

    /// Which listeners it can share a port with.
    pub fn family(self) -> Family {
        match self {
            Protocol::Http => Family::Http,
            Protocol::Https | Protocol::Tls => Family::Tls,
            Protocol::Tcp => Family::Tcp,
            Protocol::Udp => Family::Udp,
        }
    }

    /// Socket type.
    pub fn transport(self) -> Transport {
        self.ir().transport()
    }

    /// Route kinds this protocol serves.
    pub fn kinds(self) -> &'static [RouteKind] {
        match self {
            Protocol::Http | Protocol::Https => &[RouteKind::Http, RouteKind::Grpc],
            Protocol::Tls => &[RouteKind::Tls],
            Protocol::Tcp => &[RouteKind::Tcp],
            Protocol::Udp => &[RouteKind::Udp],
        }
    }

    /// Whether hostnames apply (HTTP, HTTPS, TLS).
    pub fn uses_hostname(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Https | Protocol::Tls)
    }
}

/// Route kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    /// HTTPRoute.
    Http,
    /// GRPCRoute.
    Grpc,
    /// TLSRoute.
    Tls,
    /// TCPRoute.
    Tcp,
    /// UDPRoute.
    Udp,
}

impl RouteKind {
    /// The Kubernetes kind.
    pub fn name(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
            RouteKind::Tls => "TLSRoute",
            RouteKind::Tcp => "TCPRoute",
            RouteKind::Udp => "UDPRoute",
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        [
            RouteKind::Http,
            RouteKind::Grpc,
            RouteKind::Tls,
            RouteKind::Tcp,
            RouteKind::Udp,
        ]
        .into_iter()
        .find(|k| k.name() == s)
    }
}

/// `allowedRoutes.namespaces`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedNamespaces {
    /// Only the listener's own namespace (default).
    Same,
    /// Any namespace.
    All,
    /// Namespaces whose labels match.
    Selector(Selector),
}

/// One listener of a Gateway or ListenerSet, validated.
#[derive(Debug, Clone)]
pub struct ListenerState {
    /// Index of its Gateway in [`Gateways::list`].
    pub gateway: usize,
    /// The Gateway or ListenerSet that declares it.
    pub parent: ObjectRef,
    /// Index in [`Gateways::sets`] when declared by a ListenerSet.
    pub set: Option<usize>,
    /// `metadata.generation` of the declaring object.
    pub generation: i64,
    /// `name`.
    pub name: String,
    /// `port` (0 when out of range; then not accepted).
    pub port: u16,
    /// `None` when the protocol is not supported.
    pub protocol: Option<Protocol>,
    /// `hostname` (HTTP, HTTPS, TLS only).
    pub hostname: Option<String>,
    /// TLS mode (HTTPS: terminate; TLS: as configured).
    pub tls_mode: TlsMode,
    /// Valid certificates (terminating listeners).
    pub certificates: Vec<ServerCertificate>,
    /// Client certificate validation (HTTPS).
    pub client_validation: Option<ClientValidation>,
    /// HTTP/3 on the same port (HTTPS) as `tls.options["sluice.dev/http3"]` says; `None`: as
    /// the class's `http3` parameter says ([`GatewayState::class_http3`]).
    pub http3: Option<bool>,
    /// Where routes may come from.
    pub allowed_namespaces: AllowedNamespaces,
    /// Supported route kinds (`status.supportedKinds`).
    pub kinds: Vec<RouteKind>,
    /// Why the listener is not accepted.
    pub not_accepted: Option<Problem>,
    /// Unresolved references (`ResolvedRefs=False`).
    pub unresolved: Vec<Problem>,
    /// Conflict with another listener.
    pub conflict: Option<Problem>,
    /// Routes attached (`attachedRoutes`).
    pub attached_routes: i32,
}

impl ListenerState {
    /// Accepted, references resolved and no conflict: it can be programmed if its Gateway is.
    pub fn valid(&self) -> bool {
        self.not_accepted.is_none() && self.unresolved.is_empty() && self.conflict.is_none()
    }

    /// The namespace of the declaring object.
    pub fn namespace(&self) -> &str {
        &self.parent.namespace
    }
}

/// One Gateway of ours.
#[derive(Debug, Clone)]
pub struct GatewayState {
    /// The Gateway.
    pub object: ObjectRef,
    /// `metadata.generation`.
    pub generation: i64,
    /// Its GatewayClass is accepted.
    pub class_accepted: bool,
    /// The class's `http3` parameter: the default of its HTTPS listeners.
    pub class_http3: bool,
    /// Why the Gateway is not accepted (class, parameters, addresses).
    pub not_accepted: Option<Problem>,
    /// Why it cannot be programmed although accepted (addresses).
    pub not_programmed: Option<Problem>,
    /// Addresses it is served on.
    pub addresses: Vec<IpAddr>,
    /// Wants an address from the pool.
    wants_dynamic: bool,
    /// Own listeners, indices into [`Gateways::listeners`], spec order.
    pub listeners: Vec<usize>,
    /// ListenerSets that reference it, indices into [`Gateways::sets`], precedence order.
    pub sets: Vec<usize>,
    /// Extra Gateway conditions (ResolvedRefs for the backend client certificate,
    /// InsecureFrontendValidationMode).
    pub extra_conditions: Vec<Condition>,
    /// `spec.defaultScope: All`: routes with `useDefaultGateways: All` attach to it.
    pub default_scope_all: bool,
    /// `spec.tls.backend.clientCertificateRef`, validated: presented to TLS backends.
    pub backend_client_certificate: Option<ServerCertificate>,
    /// The key, for lookups.
    pub key: Key,
}

impl GatewayState {
    /// Data plane configuration is generated for it.
    pub fn served(&self) -> bool {
        self.class_accepted && self.not_accepted.is_none() && !self.addresses.is_empty()
    }
}

/// One ListenerSet that references a Gateway of ours.
#[derive(Debug, Clone)]
pub struct ListenerSetState {
    /// The ListenerSet.
    pub object: ObjectRef,
    /// `metadata.generation`.
    pub generation: i64,
    /// Its Gateway.
    pub gateway: usize,
    /// Why the Gateway does not take it (`NotAllowed`).
    pub not_allowed: Option<Problem>,
    /// Its listeners, indices into [`Gateways::listeners`], spec order.
    pub listeners: Vec<usize>,
}

/// All Gateways of ours, oldest first, with their listeners.
#[derive(Debug, Clone, Default)]
pub struct Gateways {
    /// Gateways, oldest first (creation time, namespace, name).
    pub list: Vec<GatewayState>,
    /// Every listener (Gateway and ListenerSet).
    pub listeners: Vec<ListenerState>,
    /// ListenerSets.
    pub sets: Vec<ListenerSetState>,
    /// Listeners a route is not accepted on because an older route of the other kind
    /// (HTTPRoute/GRPCRoute) serves an intersecting hostname there, with the reason.
    pub route_conflicts: BTreeMap<ObjectRef, BTreeMap<usize, String>>,
    by_key: BTreeMap<Key, usize>,
    set_by_key: BTreeMap<Key, usize>,
}

impl Gateways {
    /// A Gateway of ours by namespace and name.
    pub fn gateway(&self, namespace: &str, name: &str) -> Option<usize> {
        self.by_key.get(&Key::new(namespace, name)).copied()
    }

    /// A ListenerSet attached to a Gateway of ours, by namespace and name.
    pub fn set(&self, namespace: &str, name: &str) -> Option<usize> {
        self.set_by_key.get(&Key::new(namespace, name)).copied()
    }

    /// Whether a listener is programmed into the data plane.
    pub fn programmed(&self, l: usize) -> bool {
        let ls = &self.listeners[l];
        ls.valid()
            && self.list[ls.gateway].served()
            && ls.set.is_none_or(|s| self.sets[s].not_allowed.is_none())
    }
}

/// Reads our Gateways and ListenerSets, validates listeners, resolves conflicts, assigns
/// addresses and checks ports across Gateways.
pub(crate) fn process(ctx: &Ctx<'_>, classes: &Classes, out: &mut Out) -> Gateways {
    let _ = out;
    let mut gws = Gateways::default();
    let mut ours: Vec<(&Key, &Gateway)> = ctx
        .res
        .gateways
        .iter()
        .filter(|(_, g)| classes.contains_key(&g.spec.gateway_class_name))
        .collect();
    ours.sort_by_cached_key(|(_, g)| Age::of(&g.metadata));
    for (key, gw) in ours {
        let idx = gws.list.len();
        let state = gateway_state(ctx, classes, key, gw);
        gws.by_key.insert(key.clone(), idx);
        gws.list.push(state);
        let object = gws.list[idx].object.clone();
        let generation = gws.list[idx].generation;
        for l in &gw.spec.listeners {
            let ls = listener_state(ctx, gw, idx, &object, None, generation, l);
            gws.list[idx].listeners.push(gws.listeners.len());
            gws.listeners.push(ls);
        }
    }
    listener_sets(ctx, &mut gws);
    for g in 0..gws.list.len() {
        resolve_conflicts(&mut gws, g);
    }
    assign_addresses(ctx, &mut gws);
    check_ports(&mut gws);
    gws
}

fn gateway_state(ctx: &Ctx<'_>, classes: &Classes, key: &Key, gw: &Gateway) -> GatewayState {
    let generation = generation(&gw.metadata);
    let class = classes
        .get(&gw.spec.gateway_class_name)
        .and_then(Option::as_ref);
    let class_accepted = class.is_some();
    let mut not_accepted = None;
    let mut not_programmed = None;
    if !class_accepted {
        not_accepted = Some(Problem::new(
            reason::INVALID,
            format!(
                "GatewayClass {:?} is not accepted",
                gw.spec.gateway_class_name
            ),
        ));
    }
    if not_accepted.is_none()
        && let Some(p) = gw
            .spec
            .infrastructure
            .as_ref()
            .and_then(|i| i.parameters_ref.as_ref())
    {
        let exists = p.group.is_empty()
            && p.kind == "ConfigMap"
            && ctx
                .res
                .config_maps
                .contains_key(&Key::new(&key.namespace, &p.name));
        if !exists {
            not_accepted = Some(Problem::new(
                reason::INVALID_PARAMETERS,
                format!(
                    "spec.infrastructure.parametersRef {}/{} {:?} does not resolve to a ConfigMap in namespace {}",
                    if p.group.is_empty() { "core" } else { &p.group },
                    p.kind,
                    p.name,
                    key.namespace
                ),
            ));
        }
    }
    let mut addresses = Vec::new();
    let mut wants_dynamic = false;
    match gw.spec.addresses.as_deref() {
        None | Some([]) => wants_dynamic = true,
        Some(list) => {
            for (i, a) in list.iter().enumerate() {
                let ty = a.r#type.as_deref().unwrap_or("IPAddress");
                let value = a.value.as_deref().unwrap_or_default();
                if ty != "IPAddress" {
                    not_accepted.get_or_insert_with(|| {
                        Problem::new(
                            reason::UNSUPPORTED_ADDRESS,
                            format!(
                                "spec.addresses[{i}]: address type {ty:?} is not supported (only IPAddress)"
                            ),
                        )
                    });
                    continue;
                }
                if value.is_empty() {
                    wants_dynamic = true;
                    continue;
                }
                match value.parse::<IpAddr>() {
                    Err(_) => {
                        not_accepted.get_or_insert_with(|| {
                            Problem::new(
                                reason::UNSUPPORTED_ADDRESS,
                                format!("spec.addresses[{i}]: {value:?} is not an IP address"),
                            )
                        });
                    }
                    Ok(ip) if ip.is_unspecified() || ctx.opts.address_pool.contains(&ip) => {
                        if !addresses.contains(&ip) {
                            addresses.push(ip);
                        }
                    }
                    Ok(ip) => {
                        not_programmed.get_or_insert_with(|| {
                            Problem::new(
                                reason::ADDRESS_NOT_USABLE,
                                format!(
                                    "spec.addresses[{i}]: {ip} is not in the address pool this Sluice serves"
                                ),
                            )
                        });
                    }
                }
            }
        }
    }
    let mut extra_conditions = Vec::new();
    let mut backend_client_certificate = None;
    if let Some(r) = gw
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.backend.as_ref())
        .and_then(|b| b.client_certificate_ref.as_ref())
    {
        let ns = r.namespace.as_deref().unwrap_or(&key.namespace);
        let res = resolve_secret(
            ctx,
            "Gateway",
            &key.namespace,
            r.group.as_deref(),
            r.kind.as_deref(),
            ns,
            &r.name,
            "spec.tls.backend.clientCertificateRef",
        );
        extra_conditions.push(match res {
            Ok(cert) => {
                backend_client_certificate = Some(cert);
                c::ok(
                    c::RESOLVED_REFS,
                    "backend client certificate resolved",
                    generation,
                )
            }
            Err(p) => {
                let reason = if p.reason == reason::REF_NOT_PERMITTED {
                    reason::REF_NOT_PERMITTED
                } else {
                    reason::INVALID_CLIENT_CERTIFICATE_REF
                };
                c::cond(c::RESOLVED_REFS, false, reason, p.message, generation)
            }
        });
    }
    let insecure = gw
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.frontend.as_ref())
        .is_some_and(|f| {
            f.default
                .validation
                .as_ref()
                .and_then(|v| v.mode.as_ref())
                .is_some_and(|m| format!("{m:?}") == "AllowInsecureFallback")
                || f.per_port.iter().flatten().any(|p| {
                    p.tls
                        .validation
                        .as_ref()
                        .and_then(|v| v.mode.as_ref())
                        .is_some_and(|m| format!("{m:?}") == "AllowInsecureFallback")
                })
        });
    if insecure {
        extra_conditions.push(c::cond(
            c::INSECURE_FRONTEND_VALIDATION_MODE,
            true,
            reason::CONFIGURATION_CHANGED,
            "client certificate validation uses AllowInsecureFallback: connections without a valid client certificate are accepted",
            generation,
        ));
    }
    GatewayState {
        object: object_ref("Gateway", &gw.metadata),
        generation,
        class_accepted,
        class_http3: class.is_some_and(|c| c.http3),
        not_accepted,
        not_programmed,
        addresses,
        wants_dynamic,
        listeners: Vec::new(),
        sets: Vec::new(),
        extra_conditions,
        default_scope_all: matches!(
            gw.spec.default_scope,
            Some(sluice_gateway_crds::gateways::GatewayDefaultScope::All)
        ),
        backend_client_certificate,
        key: key.clone(),
    }
}

/// Resolves a Secret reference holding a TLS key pair. `from_kind` is the referencing kind
/// (for ReferenceGrants), `field` names the field in messages.
#[allow(clippy::too_many_arguments)]
fn resolve_secret(
    ctx: &Ctx<'_>,
    from_kind: &str,
    from_ns: &str,
    group: Option<&str>,
    kind: Option<&str>,
    ns: &str,
    name: &str,
    field: &str,
) -> Result<ServerCertificate, Problem> {
    let group = group.unwrap_or_default();
    let kind = kind.unwrap_or("Secret");
    if !group.is_empty() || kind != "Secret" {
        return Err(Problem::new(
            reason::INVALID_CERTIFICATE_REF,
            format!(
                "{field}: {}/{kind} {name:?} is not supported (only core Secrets)",
                if group.is_empty() { "core" } else { group }
            ),
        ));
    }
    let allowed = referencegrant::allowed(
        ctx.res,
        From {
            group: GATEWAY_GROUP,
            kind: from_kind,
            namespace: from_ns,
        },
        To {
            group: "",
            kind: "Secret",
            namespace: ns,
            name,
        },
    );
    if !allowed {
        return Err(Problem::new(
            reason::REF_NOT_PERMITTED,
            format!(
                "{field}: Secret {ns}/{name} is in another namespace and no ReferenceGrant in {ns} allows {from_kind}s from {from_ns} to use it"
            ),
        ));
    }
    let Some(secret) = ctx.res.secrets.get(&Key::new(ns, name)) else {
        return Err(Problem::new(
            reason::INVALID_CERTIFICATE_REF,
            format!("{field}: Secret {ns}/{name} does not exist"),
        ));
    };
    let kp = certs::tls_secret(secret)
        .map_err(|e| Problem::new(reason::INVALID_CERTIFICATE_REF, format!("{field}: {e}")))?;
    Ok(ServerCertificate {
        server_names: Vec::new(),
        cert_chain_pem: kp.cert_chain_pem,
        private_key_pem: kp.private_key_pem,
        source: format!("{ns}/{name}"),
    })
}

/// One resolved `caCertificateRefs` entry of a frontend validation config.
fn resolve_ca(
    ctx: &Ctx<'_>,
    from_kind: &str,
    from_ns: &str,
    group: &str,
    kind: &str,
    ns: &str,
    name: &str,
) -> Result<String, Problem> {
    if !group.is_empty() || (kind != "ConfigMap" && kind != "Secret") {
        return Err(Problem::new(
            reason::INVALID_CA_CERTIFICATE_KIND,
            format!(
                "caCertificateRefs: {}/{kind} {name:?} is not supported (only core ConfigMaps and Secrets)",
                if group.is_empty() { "core" } else { group }
            ),
        ));
    }
    let allowed = referencegrant::allowed(
        ctx.res,
        From {
            group: GATEWAY_GROUP,
            kind: from_kind,
            namespace: from_ns,
        },
        To {
            group: "",
            kind,
            namespace: ns,
            name,
        },
    );
    if !allowed {
        return Err(Problem::new(
            reason::REF_NOT_PERMITTED,
            format!(
                "caCertificateRefs: {kind} {ns}/{name} is in another namespace and no ReferenceGrant in {ns} allows it"
            ),
        ));
    }
    let key = Key::new(ns, name);
    let res = if kind == "ConfigMap" {
        match ctx.res.config_maps.get(&key) {
            Some(cm) => certs::ca_config_map(cm),
            None => Err(format!("ConfigMap {ns}/{name} does not exist")),
        }
    } else {
        match ctx.res.secrets.get(&key) {
            Some(s) => certs::ca_secret(s),
            None => Err(format!("Secret {ns}/{name} does not exist")),
        }
    };
    res.map_err(|e| {
        Problem::new(
            reason::INVALID_CA_CERTIFICATE_REF,
            format!("caCertificateRefs: {e}"),
        )
    })
}

/// A CA certificate reference: group, kind, namespace, name.
type CaRef = (String, String, String, String);

/// The Gateway's frontend validation settings for a port: refs (group, kind, ns, name) and
/// mode. Per-port settings override the default.
fn frontend_validation(gw: &Gateway, port: i32) -> Option<(Vec<CaRef>, ClientValidationMode)> {
    let ns = gw.metadata.namespace.clone().unwrap_or_default();
    let frontend = gw.spec.tls.as_ref()?.frontend.as_ref()?;
    let mode_of = |m: Option<String>| match m.as_deref() {
        Some("AllowInsecureFallback") => ClientValidationMode::AllowInsecureFallback,
        _ => ClientValidationMode::AllowValidOnly,
    };
    if let Some(p) = frontend.per_port.iter().flatten().find(|p| p.port == port) {
        let v = p.tls.validation.as_ref()?;
        let refs = v
            .ca_certificate_refs
            .iter()
            .map(|r| {
                (
                    r.group.clone(),
                    r.kind.clone(),
                    r.namespace.clone().unwrap_or_else(|| ns.clone()),
                    r.name.clone(),
                )
            })
            .collect();
        return Some((refs, mode_of(v.mode.as_ref().map(|m| format!("{m:?}")))));
    }
    let v = frontend.default.validation.as_ref()?;
    let refs = v
        .ca_certificate_refs
        .iter()
        .map(|r| {
            (
                r.group.clone(),
                r.kind.clone(),
                r.namespace.clone().unwrap_or_else(|| ns.clone()),
                r.name.clone(),
            )
        })
        .collect();
    Some((refs, mode_of(v.mode.as_ref().map(|m| format!("{m:?}")))))
}

/// Validates one listener.
#[allow(clippy::too_many_arguments)]
fn listener_state(
    ctx: &Ctx<'_>,
    gw: &Gateway,
    gateway: usize,
    parent: &ObjectRef,
    set: Option<usize>,
    generation: i64,
    l: &GatewayListeners,
) -> ListenerState {
    let ns = parent.namespace.clone();
    let mut st = ListenerState {
        gateway,
        parent: parent.clone(),
        set,
        generation,
        name: l.name.clone(),
        port: 0,
        protocol: Protocol::parse(&l.protocol),
        hostname: None,
        tls_mode: TlsMode::Terminate,
        certificates: Vec::new(),
        client_validation: None,
        http3: None,
        allowed_namespaces: AllowedNamespaces::Same,
        kinds: Vec::new(),
        not_accepted: None,
        unresolved: Vec::new(),
        conflict: None,
        attached_routes: 0,
    };
    let Some(protocol) = st.protocol else {
        st.not_accepted = Some(Problem::new(
            reason::UNSUPPORTED_PROTOCOL,
            format!(
                "protocol {:?} is not supported (HTTP, HTTPS, TLS, TCP and UDP are)",
                l.protocol
            ),
        ));
        return st;
    };
    match u16::try_from(l.port) {
        Ok(p) if p > 0 => st.port = p,
        _ => {
            st.not_accepted = Some(Problem::new(
                reason::UNSUPPORTED_VALUE,
                format!("port {} is not between 1 and 65535", l.port),
            ));
        }
    }
    if protocol.uses_hostname()
        && let Some(h) = l.hostname.as_deref().filter(|h| !h.is_empty())
    {
        match hostname::validate(h) {
            Ok(()) => st.hostname = Some(h.to_string()),
            Err(e) => {
                st.not_accepted
                    .get_or_insert(Problem::new(reason::UNSUPPORTED_VALUE, e));
            }
        }
    }

    // Route kinds and namespaces.
    let supported = protocol.kinds();
    match l
        .allowed_routes
        .as_ref()
        .and_then(|a| a.kinds.as_deref())
        .filter(|k| !k.is_empty())
    {
        None => st.kinds = supported.to_vec(),
        Some(kinds) => {
            for k in kinds {
                let group = k.group.as_deref().unwrap_or(GATEWAY_GROUP);
                match RouteKind::from_name(&k.kind) {
                    Some(rk) if group == GATEWAY_GROUP && supported.contains(&rk) => {
                        if !st.kinds.contains(&rk) {
                            st.kinds.push(rk);
                        }
                    }
                    _ => st.unresolved.push(Problem::new(
                        reason::INVALID_ROUTE_KINDS,
                        format!(
                            "allowedRoutes.kinds: {group}/{} is not supported on {} listeners",
                            k.kind, l.protocol
                        ),
                    )),
                }
            }
        }
    }
    if let Some(nsel) = l
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref())
    {
        st.allowed_namespaces = match nsel.from {
            Some(GatewayListenersAllowedRoutesNamespacesFrom::All) => AllowedNamespaces::All,
            Some(GatewayListenersAllowedRoutesNamespacesFrom::Selector) => {
                let s = nsel.selector.as_ref();
                let sel = Selector {
                    labels: s.and_then(|s| s.match_labels.clone()).unwrap_or_default(),
                    expressions: s
                        .and_then(|s| s.match_expressions.as_ref())
                        .map(|e| {
                            e.iter()
                                .map(|x| {
                                    (
                                        x.key.clone(),
                                        x.operator.clone(),
                                        x.values.clone().unwrap_or_default(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                };
                if s.is_none() {
                    st.not_accepted.get_or_insert(Problem::new(
                        reason::UNSUPPORTED_VALUE,
                        "allowedRoutes.namespaces.from is Selector but no selector is set",
                    ));
                } else if let Some(p) = sel.problem() {
                    st.not_accepted.get_or_insert(Problem::new(
                        reason::UNSUPPORTED_VALUE,
                        format!("allowedRoutes.namespaces: {p}"),
                    ));
                }
                AllowedNamespaces::Selector(sel)
            }
            _ => AllowedNamespaces::Same,
        };
    }

    // TLS.
    let from_kind = parent.kind.as_str();
    match (protocol, l.tls.as_ref()) {
        (Protocol::Http | Protocol::Tcp | Protocol::Udp, Some(_)) => {
            st.not_accepted.get_or_insert(Problem::new(
                reason::UNSUPPORTED_VALUE,
                format!("tls must not be set on {} listeners", l.protocol),
            ));
        }
        (Protocol::Https | Protocol::Tls, None) => {
            st.unresolved.push(Problem::new(
                reason::INVALID_CERTIFICATE_REF,
                format!("{} listeners need tls.certificateRefs", l.protocol),
            ));
        }
        (Protocol::Https | Protocol::Tls, Some(tls)) => {
            let passthrough = matches!(tls.mode, Some(GatewayListenersTlsMode::Passthrough));
            if passthrough && protocol == Protocol::Https {
                st.not_accepted.get_or_insert(Problem::new(
                    reason::UNSUPPORTED_VALUE,
                    "tls.mode Passthrough is not valid on HTTPS listeners (use protocol TLS)",
                ));
            }
            if protocol == Protocol::Https {
                match http3_option(tls.options.as_ref()) {
                    Ok(on) => st.http3 = on,
                    Err(p) => {
                        st.not_accepted.get_or_insert(p);
                    }
                }
            }
            if passthrough {
                st.tls_mode = TlsMode::Passthrough;
            } else {
                let refs = tls.certificate_refs.as_deref().unwrap_or_default();
                if refs.is_empty() {
                    st.unresolved.push(Problem::new(
                        reason::INVALID_CERTIFICATE_REF,
                        "tls.certificateRefs is empty (required in Terminate mode)",
                    ));
                }
                for (i, r) in refs.iter().enumerate() {
                    let rns = r.namespace.as_deref().unwrap_or(&ns);
                    match resolve_secret(
                        ctx,
                        from_kind,
                        &ns,
                        r.group.as_deref(),
                        r.kind.as_deref(),
                        rns,
                        &r.name,
                        &format!("tls.certificateRefs[{i}]"),
                    ) {
                        Ok(mut cert) => {
                            cert.server_names = st.hostname.iter().cloned().collect();
                            st.certificates.push(cert);
                        }
                        Err(p) => st.unresolved.push(p),
                    }
                }
            }
        }
        _ => {}
    }

    // Client certificate validation (HTTPS listeners, from the Gateway's spec.tls.frontend).
    if protocol == Protocol::Https
        && let Some((refs, mode)) = frontend_validation(gw, l.port)
    {
        let gw_ns = gw.metadata.namespace.clone().unwrap_or_default();
        let mut bundle = String::new();
        let mut problems = Vec::new();
        for (group, kind, rns, name) in &refs {
            match resolve_ca(ctx, "Gateway", &gw_ns, group, kind, rns, name) {
                Ok(pem) => {
                    bundle.push_str(&pem);
                    if !bundle.ends_with('\n') {
                        bundle.push('\n');
                    }
                }
                Err(p) => problems.push(p),
            }
        }
        if bundle.is_empty() {
            st.not_accepted.get_or_insert(Problem::new(
                reason::NO_VALID_CA_CERTIFICATE,
                "spec.tls.frontend: no valid CA certificate to validate client certificates with",
            ));
        } else {
            st.client_validation = Some(ClientValidation {
                ca_pem: bundle,
                mode,
            });
        }
        st.unresolved.extend(problems);
    }
    st
}

/// The listener option that switches HTTP/3 (QUIC on the same port) on or off.
pub const HTTP3_OPTION: &str = "sluice.dev/http3";

/// `tls.options["sluice.dev/http3"]`: `Some(on)` when set, an `UnsupportedValue` problem
/// when it is neither `"true"` nor `"false"`.
fn http3_option(options: Option<&BTreeMap<String, String>>) -> Result<Option<bool>, Problem> {
    match options.and_then(|o| o.get(HTTP3_OPTION)).map(|v| v.trim()) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(v) => Err(Problem::new(
            reason::UNSUPPORTED_VALUE,
            format!("tls.options[{HTTP3_OPTION:?}]: {v:?} is neither \"true\" nor \"false\""),
        )),
    }
}

/// Reads ListenerSets that reference our Gateways and checks `allowedListeners`.
fn listener_sets(ctx: &Ctx<'_>, gws: &mut Gateways) {
    let mut sets: Vec<_> = ctx
        .res
        .listener_sets
        .iter()
        .filter_map(|(key, ls)| {
            let p = &ls.spec.parent_ref;
            let group = p.group.as_deref().unwrap_or(GATEWAY_GROUP);
            let kind = p.kind.as_deref().unwrap_or("Gateway");
            if group != GATEWAY_GROUP || kind != "Gateway" {
                return None;
            }
            let ns = p.namespace.as_deref().unwrap_or(&key.namespace);
            let g = gws.gateway(ns, &p.name)?;
            Some((key, ls, g))
        })
        .collect();
    sets.sort_by_cached_key(|(_, ls, _)| Age::of(&ls.metadata));
    for (key, ls, g) in sets {
        let gw = &ctx.res.gateways[&gws.list[g].key];
        let object = object_ref("ListenerSet", &ls.metadata);
        let generation = generation(&ls.metadata);
        let allowed = gw
            .spec
            .allowed_listeners
            .as_ref()
            .and_then(|a| a.namespaces.as_ref());
        let gw_ns = gws.list[g].key.namespace.clone();
        let not_allowed = match allowed.and_then(|a| a.from.as_ref()) {
            Some(GatewayAllowedListenersNamespacesFrom::All) => None,
            Some(GatewayAllowedListenersNamespacesFrom::Same) if key.namespace == gw_ns => None,
            Some(GatewayAllowedListenersNamespacesFrom::Selector) => {
                let s = allowed.and_then(|a| a.selector.as_ref());
                let sel = Selector {
                    labels: s.and_then(|s| s.match_labels.clone()).unwrap_or_default(),
                    expressions: s
                        .and_then(|s| s.match_expressions.as_ref())
                        .map(|e| {
                            e.iter()
                                .map(|x| {
                                    (
                                        x.key.clone(),
                                        x.operator.clone(),
                                        x.values.clone().unwrap_or_default(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                };
                if s.is_some() && sel.matches(&ctx.namespace_labels(&key.namespace)) {
                    None
                } else {
                    Some(format!(
                        "Gateway {gw_ns}/{} does not allow ListenerSets from namespace {} (allowedListeners selector)",
                        gws.list[g].key.name, key.namespace
                    ))
                }
            }
            Some(GatewayAllowedListenersNamespacesFrom::Same) => Some(format!(
                "Gateway {gw_ns}/{} only allows ListenerSets from its own namespace",
                gws.list[g].key.name
            )),
            Some(GatewayAllowedListenersNamespacesFrom::None) | None => Some(format!(
                "Gateway {gw_ns}/{} does not allow ListenerSets (spec.allowedListeners)",
                gws.list[g].key.name
            )),
        };
        let s = gws.sets.len();
        gws.set_by_key.insert(key.clone(), s);
        gws.sets.push(ListenerSetState {
            object: object.clone(),
            generation,
            gateway: g,
            not_allowed: not_allowed.map(|m| Problem::new(reason::NOT_ALLOWED, m)),
            listeners: Vec::new(),
        });
        gws.list[g].sets.push(s);
        for l in &ls.spec.listeners {
            let Some(gl) = convert::<_, GatewayListeners>(l) else {
                continue;
            };
            let st = listener_state(ctx, gw, g, &object, Some(s), generation, &gl);
            gws.sets[s].listeners.push(gws.listeners.len());
            gws.listeners.push(st);
        }
    }
}

/// How two listeners on the same port clash, if they do.
fn clash(a: &ListenerState, b: &ListenerState) -> Option<(&'static str, String)> {
    let (pa, pb) = (a.protocol?, b.protocol?);
    if a.port != b.port || pa.transport() != pb.transport() {
        return None;
    }
    if pa.family() != pb.family() {
        return Some((
            reason::PROTOCOL_CONFLICT,
            format!(
                "port {} is also used by listener {:?} of {} with an incompatible protocol",
                a.port, b.name, b.parent
            ),
        ));
    }
    match pa.family() {
        Family::Tcp | Family::Udp => Some((
            reason::PROTOCOL_CONFLICT,
            format!(
                "port {} is also used by listener {:?} of {} ({} listeners are told apart by port only)",
                a.port,
                b.name,
                b.parent,
                if pa == Protocol::Udp { "UDP" } else { "TCP" }
            ),
        )),
        _ if a.hostname == b.hostname => Some((
            reason::HOSTNAME_CONFLICT,
            format!(
                "listener {:?} of {} uses the same port {} and hostname {}",
                b.name,
                b.parent,
                a.port,
                a.hostname.as_deref().unwrap_or("(none)")
            ),
        )),
        _ => None,
    }
}

/// Marks conflicted listeners of one Gateway: listeners of the Gateway itself that clash are
/// all conflicted (no winner); a ListenerSet listener that clashes with a listener of higher
/// precedence (the Gateway's, or an older ListenerSet's) is conflicted.
fn resolve_conflicts(gws: &mut Gateways, g: usize) {
    let own = gws.list[g].listeners.clone();
    let candidates = |gws: &Gateways, i: usize| {
        let l = &gws.listeners[i];
        l.protocol.is_some() && l.port > 0
    };
    for &a in &own {
        for &b in &own {
            if a == b || !candidates(gws, a) || !candidates(gws, b) {
                continue;
            }
            if let Some((r, m)) = clash(&gws.listeners[a], &gws.listeners[b]) {
                gws.listeners[a].conflict.get_or_insert(Problem::new(r, m));
            }
        }
    }
    // ListenerSet listeners, in precedence order, lose against every earlier listener that
    // is not itself conflicted.
    let mut earlier: Vec<usize> = own
        .iter()
        .copied()
        .filter(|&i| candidates(gws, i) && gws.listeners[i].conflict.is_none())
        .collect();
    for s in gws.list[g].sets.clone() {
        if gws.sets[s].not_allowed.is_some() {
            continue;
        }
        for a in gws.sets[s].listeners.clone() {
            if !candidates(gws, a) {
                continue;
            }
            let clash = earlier
                .iter()
                .find_map(|&b| clash(&gws.listeners[a], &gws.listeners[b]));
            match clash {
                Some((r, m)) => gws.listeners[a].conflict = Some(Problem::new(r, m)),
                None => earlier.push(a),
            }
        }
    }
}

/// FNV-1a, a hash stable across builds and platforms.
fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Picks a pool address for a Gateway: the hash of `namespace/name` selects a start slot,
/// then the first address not yet taken after it; when every address is taken, the start
/// slot is shared.
pub fn pick_address(pool: &[IpAddr], taken: &BTreeSet<IpAddr>, key: &str) -> Option<IpAddr> {
    if pool.is_empty() {
        return None;
    }
    let n = pool.len();
    let start = (fnv1a(key) % n as u64) as usize;
    (0..n)
        .map(|i| pool[(start + i) % n])
        .find(|a| !taken.contains(a))
        .or(Some(pool[start]))
}

/// Gives every accepted Gateway that asks for one a stable pool address, oldest Gateway first
/// so that a new Gateway never moves an existing one.
fn assign_addresses(ctx: &Ctx<'_>, gws: &mut Gateways) {
    let mut taken = BTreeSet::new();
    for g in &mut gws.list {
        if !g.class_accepted || g.not_accepted.is_some() {
            continue;
        }
        if g.wants_dynamic {
            match pick_address(&ctx.opts.address_pool, &taken, &g.key.to_string()) {
                Some(a) => {
                    if !g.addresses.contains(&a) {
                        g.addresses.push(a);
                    }
                }
                None => {
                    g.not_programmed.get_or_insert(Problem::new(
                        reason::ADDRESS_NOT_ASSIGNED,
                        "the address pool is empty",
                    ));
                }
            }
        }
        taken.extend(g.addresses.iter().copied());
    }
}

/// Listeners of different Gateways on one (transport, address, port) share a socket when
/// their families match (HTTP with HTTP, HTTPS/TLS with HTTPS/TLS). Otherwise the younger
/// Gateway's listener is not accepted (`PortUnavailable`). TCP and UDP ports are never shared.
fn check_ports(gws: &mut Gateways) {
    let mut owners: BTreeMap<(Transport, IpAddr, u16), (Family, usize, String)> = BTreeMap::new();
    for g in 0..gws.list.len() {
        if !gws.list[g].served() {
            continue;
        }
        let mut order = gws.list[g].listeners.clone();
        for &s in &gws.list[g].sets {
            if gws.sets[s].not_allowed.is_none() {
                order.extend(gws.sets[s].listeners.iter().copied());
            }
        }
        let addresses = gws.list[g].addresses.clone();
        for l in order {
            let ls = &gws.listeners[l];
            if ls.not_accepted.is_some() || ls.conflict.is_some() {
                continue;
            }
            let Some(p) = ls.protocol else { continue };
            let fam = p.family();
            let mut clash = None;
            for &a in &addresses {
                if let Some((f, og, oname)) = owners.get(&(p.transport(), a, ls.port))
                    && *og != g
                    && (*f != fam || matches!(fam, Family::Tcp | Family::Udp))
                {
                    clash = Some(format!(
                        "{a}:{} is already served by listener {oname:?} of {} ({}), which cannot share it",
                        ls.port,
                        gws.list[*og].object,
                        f.describe()
                    ));
                    break;
                }
            }
            match clash {
                Some(m) => {
                    gws.listeners[l].not_accepted = Some(Problem::new(reason::PORT_UNAVAILABLE, m));
                }
                None => {
                    for &a in &addresses {
                        owners.entry((p.transport(), a, ls.port)).or_insert((
                            fam,
                            g,
                            ls.name.clone(),
                        ));
                    }
                }
            }
        }
    }
}

fn listener_status(gws: &Gateways, l: usize) -> ListenerStatus {
    let ls = &gws.listeners[l];
    let generation = ls.generation;
    let mut conditions = Vec::new();
    let programmed = gws.programmed(l);
    conditions.push(match (&ls.conflict, &ls.not_accepted) {
        (Some(p), _) | (None, Some(p)) => {
            c::cond(c::ACCEPTED, false, p.reason, p.message.clone(), generation)
        }
        (None, None) => c::ok(c::ACCEPTED, "listener is valid", generation),
    });
    conditions.push(if programmed {
        c::ok(c::PROGRAMMED, "listener is programmed", generation)
    } else if let Some(p) = &ls.conflict {
        c::cond(
            c::PROGRAMMED,
            false,
            p.reason,
            p.message.clone(),
            generation,
        )
    } else {
        let why = ls
            .not_accepted
            .as_ref()
            .map(|p| p.message.clone())
            .or_else(|| c::summarize(&ls.unresolved).map(|(_, m)| m))
            .or_else(|| {
                let g = &gws.list[ls.gateway];
                g.not_accepted
                    .as_ref()
                    .or(g.not_programmed.as_ref())
                    .map(|p| format!("Gateway: {}", p.message))
            })
            .or_else(|| {
                ls.set
                    .and_then(|s| gws.sets[s].not_allowed.as_ref())
                    .map(|p| p.message.clone())
            })
            .unwrap_or_else(|| "Gateway has no address".into());
        c::cond(c::PROGRAMMED, false, reason::INVALID, why, generation)
    });
    conditions.push(match c::summarize(&ls.unresolved) {
        None => c::ok(c::RESOLVED_REFS, "all references resolved", generation),
        Some((r, m)) => c::cond(c::RESOLVED_REFS, false, r, m, generation),
    });
    conditions.push(match &ls.conflict {
        Some(p) => c::cond(c::CONFLICTED, true, p.reason, p.message.clone(), generation),
        None => c::cond(
            c::CONFLICTED,
            false,
            reason::NO_CONFLICTS,
            "no conflicts",
            generation,
        ),
    });
    ListenerStatus {
        name: ls.name.clone(),
        supported_kinds: if ls.protocol.is_none() {
            Vec::new()
        } else {
            ls.kinds
                .iter()
                .map(|k| RouteGroupKind {
                    group: GATEWAY_GROUP.into(),
                    kind: k.name().into(),
                })
                .collect()
        },
        attached_routes: ls.attached_routes,
        conditions,
    }
}

fn names(gws: &Gateways, ls: &[usize], f: impl Fn(&ListenerState) -> bool) -> String {
    ls.iter()
        .map(|&l| &gws.listeners[l])
        .filter(|l| f(l))
        .map(|l| format!("{:?}", l.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes Gateway and ListenerSet status once routes have attached.
pub(crate) fn finish(_ctx: &Ctx<'_>, gws: &Gateways, out: &mut Out) {
    for (g, gw) in gws.list.iter().enumerate() {
        let generation = gw.generation;
        let own = &gw.listeners;
        let any_accepted = own.iter().any(|&l| {
            gws.listeners[l].not_accepted.is_none() && gws.listeners[l].conflict.is_none()
        });
        let all_valid = own.iter().all(|&l| gws.listeners[l].valid());
        let invalid = names(gws, own, |l| !l.valid());
        let accepted = gw.not_accepted.is_none() && any_accepted;
        let st = out.status_mut(&gw.object, generation);
        st.conditions.push(match &gw.not_accepted {
            Some(p) => c::cond(c::ACCEPTED, false, p.reason, p.message.clone(), generation),
            None if !any_accepted => c::cond(
                c::ACCEPTED,
                false,
                reason::LISTENERS_NOT_VALID,
                format!("no listener is valid: {invalid}"),
                generation,
            ),
            None if !all_valid => c::cond(
                c::ACCEPTED,
                true,
                reason::LISTENERS_NOT_VALID,
                format!("some listeners are not valid: {invalid}"),
                generation,
            ),
            None => c::ok(c::ACCEPTED, "Gateway is valid", generation),
        });
        let any_programmed = own.iter().any(|&l| gws.programmed(l))
            || gw
                .sets
                .iter()
                .flat_map(|&s| gws.sets[s].listeners.iter())
                .any(|&l| gws.programmed(l));
        st.conditions.push(if !accepted {
            c::cond(
                c::PROGRAMMED,
                false,
                reason::INVALID,
                "Gateway is not accepted",
                generation,
            )
        } else if let Some(p) = &gw.not_programmed {
            c::cond(
                c::PROGRAMMED,
                false,
                p.reason,
                p.message.clone(),
                generation,
            )
        } else if !any_programmed {
            c::cond(
                c::PROGRAMMED,
                false,
                reason::INVALID,
                "no listener can be programmed",
                generation,
            )
        } else {
            c::ok(c::PROGRAMMED, "Gateway is programmed", generation)
        });
        st.conditions.extend(gw.extra_conditions.iter().cloned());
        if gw.served() {
            st.addresses = gw
                .addresses
                .iter()
                .map(|a| GatewayAddress {
                    type_: "IPAddress".into(),
                    value: a.to_string(),
                })
                .collect();
        }
        st.listeners = own.iter().map(|&l| listener_status(gws, l)).collect();
        let attached_sets = gw.sets.iter().filter(|&&s| set_accepted(gws, s)).count();
        if !gw.sets.is_empty() || attached_sets > 0 {
            st.attached_listener_sets = Some(attached_sets as i32);
        } else {
            st.attached_listener_sets = Some(0);
        }
        let _ = g;
    }
    for (s, set) in gws.sets.iter().enumerate() {
        let generation = set.generation;
        let st = out.status_mut(&set.object, generation);
        if let Some(p) = &set.not_allowed {
            st.conditions.push(c::cond(
                c::ACCEPTED,
                false,
                p.reason,
                p.message.clone(),
                generation,
            ));
            st.conditions.push(c::cond(
                c::PROGRAMMED,
                false,
                p.reason,
                p.message.clone(),
                generation,
            ));
            continue;
        }
        let valid = set
            .listeners
            .iter()
            .filter(|&&l| gws.listeners[l].valid())
            .count();
        let invalid = names(gws, &set.listeners, |l| !l.valid());
        let gw = &gws.list[set.gateway];
        if !set_accepted(gws, s) {
            let m = if gw.not_accepted.is_some() {
                format!("Gateway {} is not accepted", gw.object)
            } else {
                format!("no listener is valid: {invalid}")
            };
            st.conditions.push(c::cond(
                c::ACCEPTED,
                false,
                reason::LISTENERS_NOT_VALID,
                m.clone(),
                generation,
            ));
            st.conditions.push(c::cond(
                c::PROGRAMMED,
                false,
                reason::LISTENERS_NOT_VALID,
                m,
                generation,
            ));
        } else {
            st.conditions.push(if valid == set.listeners.len() {
                c::ok(c::ACCEPTED, "ListenerSet is attached", generation)
            } else {
                c::cond(
                    c::ACCEPTED,
                    true,
                    reason::LISTENERS_NOT_VALID,
                    format!("some listeners are not valid: {invalid}"),
                    generation,
                )
            });
            st.conditions
                .push(if set.listeners.iter().any(|&l| gws.programmed(l)) {
                    c::ok(c::PROGRAMMED, "ListenerSet is programmed", generation)
                } else {
                    c::cond(
                        c::PROGRAMMED,
                        false,
                        reason::INVALID,
                        "no listener can be programmed",
                        generation,
                    )
                });
        }
        st.listeners = set
            .listeners
            .iter()
            .map(|&l| listener_status(gws, l))
            .collect();
    }
}

/// A ListenerSet is accepted when its Gateway allows it, is accepted, and at least one of its
/// listeners is valid.
fn set_accepted(gws: &Gateways, s: usize) -> bool {
    let set = &gws.sets[s];
    set.not_allowed.is_none()
        && gws.list[set.gateway].not_accepted.is_none()
        && set.listeners.iter().any(|&l| gws.listeners[l].valid())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: u8) -> Vec<IpAddr> {
        (1..=n).map(|i| IpAddr::from([10, 0, 0, i])).collect()
    }

    /// Assigns addresses to Gateways in the given (oldest first) order.
    fn assign(pool: &[IpAddr], names: &[&str]) -> Vec<IpAddr> {
        let mut taken = BTreeSet::new();
        names
            .iter()
            .map(|n| {
                let a = pick_address(pool, &taken, n).unwrap();
                taken.insert(a);
                a
            })
            .collect()
    }

    #[test]
    fn addresses_are_stable_when_gateways_are_added() {
        let p = pool(8);
        let before = assign(&p, &["ns/a", "ns/b", "ns/c"]);
        let after = assign(&p, &["ns/a", "ns/b", "ns/c", "ns/d", "other/e"]);
        assert_eq!(before[..], after[..3]);
        // Distinct while the pool lasts.
        let set: BTreeSet<_> = after.iter().collect();
        assert_eq!(set.len(), 5);
        // Same input, same output.
        assert_eq!(
            after,
            assign(&p, &["ns/a", "ns/b", "ns/c", "ns/d", "other/e"])
        );
    }

    #[test]
    fn removing_a_gateway_moves_no_other_that_did_not_probe_past_it() {
        let p = pool(16);
        let all = assign(&p, &["ns/a", "ns/b", "ns/c"]);
        let without_b = assign(&p, &["ns/a", "ns/c"]);
        assert_eq!(all[0], without_b[0]);
        // c only moves if it had to probe past b's slot.
        let start_c = p[(fnv1a("ns/c") % 16) as usize];
        if start_c != all[1] {
            assert_eq!(all[2], without_b[1]);
        }
    }

    #[test]
    fn a_one_address_pool_is_shared_and_an_empty_pool_assigns_nothing() {
        let p = pool(1);
        assert_eq!(assign(&p, &["a/a", "b/b", "c/c"]), vec![p[0]; 3]);
        assert_eq!(pick_address(&[], &BTreeSet::new(), "a/a"), None);
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
