//! Map keys and values shared by Sluice's eBPF programs and the userspace loader.
//!
//! Every type here is `#[repr(C)]`, has explicit padding fields (always zero) and no implicit
//! padding, so the kernel and user space agree byte for byte. Conventions:
//! - IPv4 addresses are stored as the `u32` whose in-memory bytes are the address in network
//!   order (what `bpf_sock_addr.user_ip4` and the IP header hold); use [`ip4`] / [`ip4_addr`]
//!   to convert in user space.
//! - Ports named `port` are in network byte order (`u16::to_be`), except in [`SockKey`], whose
//!   ports are host order.
//!
//! With the `user` feature, each type implements `aya::Pod` so the loader can use it in maps.
#![no_std]
#![allow(unsafe_code)]

/// Name of the pinned-state layout. The loader pins under `<pin_dir>/<LAYOUT>`; bump it when a
/// map's key or value changes so an old pinned set is never read with a new layout.
pub const LAYOUT: &str = "v1";

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;

/// Default number of Maglev table slots per backend set (a prime; Cilium's default).
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 16381;

/// Names of the maps in the kernel object, shared so the loader never misspells one.
pub mod maps {
    /// [`super::ServiceKey`] -> [`super::ServiceValue`]: every frontend (ClusterIP, external IP,
    /// NodePort with address 0).
    pub const SERVICES: &str = "SERVICES";
    /// `u32` backend id -> [`super::Backend`].
    pub const BACKENDS: &str = "BACKENDS";
    /// Array of `u32` backend ids: `table * maglev_table_size + slot`.
    pub const MAGLEV: &str = "MAGLEV";
    /// Array of [`super::TableMeta`], one per Maglev table: what each table holds (for
    /// adoption after a restart).
    pub const MAGLEV_META: &str = "MAGLEV_META";
    /// Array with one [`super::Config`].
    pub const CONFIG: &str = "CONFIG";
    /// Hash of node addresses (`u32` -> `u32` flags) that NodePorts answer on.
    pub const NODE_ADDRS: &str = "NODE_ADDRS";
    /// LPM trie of node-local networks (`u32` address) -> `u32`: sockets whose peer is in it
    /// are accelerated by the sockmap.
    pub const LOCAL_NETS: &str = "LOCAL_NETS";
    /// LRU [`super::AffinityKey`] -> [`super::AffinityValue`] (sessionAffinity: ClientIP).
    pub const AFFINITY: &str = "AFFINITY";
    /// LRU [`super::SockRevKey`] -> [`super::SockRevValue`]: socket-LB reverse translation.
    pub const SOCK_REVNAT: &str = "SOCK_REVNAT";
    /// LRU `u64` socket cookie -> [`super::OrigDst`]: L7-redirected connects awaiting their
    /// source port.
    pub const SOCK_ORIG: &str = "SOCK_ORIG";
    /// LRU [`super::OrigDstKey`] -> [`super::OrigDst`]: original destination of connections
    /// the socket-LB redirected to the proxy.
    pub const ORIG_DST: &str = "ORIG_DST";
    /// LRU [`super::CtKey`] -> [`super::CtForward`]: tc NodePort conntrack, original direction.
    pub const CT_FWD: &str = "CT_FWD";
    /// LRU [`super::CtKey`] -> [`super::CtReply`]: tc NodePort conntrack, reply direction.
    pub const CT_REV: &str = "CT_REV";
    /// LRU [`super::FragKey`] -> [`super::FragPorts`]: ports of fragmented datagrams.
    pub const FRAGS: &str = "FRAGS";
    /// [`super::ListenerKey`] -> `u32` slot in [`PROXY_SOCKS`]: sk_lookup steering.
    pub const LISTENERS: &str = "LISTENERS";
    /// Sockmap of the proxy's listening sockets, indexed by slot.
    pub const PROXY_SOCKS: &str = "PROXY_SOCKS";
    /// Sockhash [`super::SockKey`] -> established local TCP socket (sockmap acceleration).
    pub const SOCK_HASH: &str = "SOCK_HASH";
    /// Ring buffer of [`super::FlowEvent`].
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU array of `u64` counters indexed by [`super::Counter`].
    pub const STATS: &str = "STATS";
}

/// Names of the programs in the kernel object.
pub mod programs {
    /// cgroup/connect4: socket-LB for connect() (TCP and connected UDP).
    pub const CONNECT4: &str = "sluice_connect4";
    /// cgroup/sendmsg4: socket-LB for unconnected UDP sendmsg().
    pub const SENDMSG4: &str = "sluice_sendmsg4";
    /// cgroup/recvmsg4: reverse translation of UDP sources.
    pub const RECVMSG4: &str = "sluice_recvmsg4";
    /// cgroup/getpeername4: reverse translation of getpeername().
    pub const GETPEERNAME4: &str = "sluice_getpeername4";
    /// tc ingress on the node interface: NodePort/external IP DNAT, SNAT replies.
    pub const TC_INGRESS: &str = "sluice_tc_ingress";
    /// tc egress on the node interface: reverse NAT of replies from local backends.
    pub const TC_EGRESS: &str = "sluice_tc_egress";
    /// sk_lookup: delivers listener and L7 service traffic to the proxy's sockets.
    pub const SK_LOOKUP: &str = "sluice_sk_lookup";
    /// sock_ops: records local TCP sockets in the sockhash and original destinations.
    pub const SOCK_OPS: &str = "sluice_sock_ops";
    /// sk_msg: redirects payload between local sockets.
    pub const SK_MSG: &str = "sluice_sk_msg";
}

/// [`ServiceValue::flags`]: the frontend is a ClusterIP.
pub const SVC_CLUSTER_IP: u32 = 1 << 0;
/// [`ServiceValue::flags`]: the frontend is a NodePort (key address 0: any node address).
pub const SVC_NODE_PORT: u32 = 1 << 1;
/// [`ServiceValue::flags`]: the frontend is an external or LoadBalancer IP.
pub const SVC_EXTERNAL: u32 = 1 << 2;
/// [`ServiceValue::flags`]: deliver to the local proxy ([`ServiceValue::redirect_addr`]).
pub const SVC_L7_REDIRECT: u32 = 1 << 3;
/// [`ServiceValue::flags`]: sessionAffinity ClientIP.
pub const SVC_AFFINITY: u32 = 1 << 4;
/// [`ServiceValue::flags`]: externalTrafficPolicy Local (backends are node-local only, the
/// client source is never rewritten).
pub const SVC_LOCAL_ONLY: u32 = 1 << 5;

/// [`Backend::flags`]: the endpoint is terminating (kept for established flows, never chosen
/// by affinity).
pub const BACKEND_TERMINATING: u8 = 1 << 0;
/// [`Backend::flags`]: the endpoint lives on this node.
pub const BACKEND_LOCAL: u8 = 1 << 1;

/// [`Config::flags`]: sock_ops inserts node-local TCP sockets into the sockhash.
pub const CONFIG_SOCKMAP: u32 = 1 << 0;
/// [`Config::flags`]: emit flow events to the ring buffer.
pub const CONFIG_EVENTS: u32 = 1 << 1;

/// A frontend: address, port and protocol a Service answers on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceKey {
    /// Frontend address (network order); 0 for NodePorts (any node address).
    pub addr: u32,
    /// Frontend port (network order).
    pub port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// Always 0.
    pub pad: u8,
}

/// What a frontend balances to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// Stable id of the Service port (`namespace/name:port`), for affinity, events and metrics.
    pub service_id: u32,
    /// `SVC_*` flags.
    pub flags: u32,
    /// Index of the Maglev table holding this frontend's backends.
    pub table: u32,
    /// Number of backends in that table; 0 = no endpoint (connects are refused, packets dropped).
    pub backend_count: u32,
    /// sessionAffinity ClientIP timeout in seconds (0 = no affinity).
    pub affinity_timeout_s: u32,
    /// With [`SVC_L7_REDIRECT`]: the proxy's address (network order).
    pub redirect_addr: u32,
    /// With [`SVC_L7_REDIRECT`]: the proxy's port (network order).
    pub redirect_port: u16,
    /// Always 0.
    pub pad: u16,
    /// Revision of the table contents (increases on every change), for logs.
    pub revision: u32,
}

/// One endpoint address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Backend {
    /// Address (network order).
    pub addr: u32,
    /// Port (network order).
    pub port: u16,
    /// `BACKEND_*` flags.
    pub flags: u8,
    /// Always 0.
    pub pad: u8,
}

/// What a Maglev table holds, so a restarted loader can adopt tables whose contents match.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TableMeta {
    /// Hash of the table size and the sorted backend ids it was built from; 0 = free.
    pub content_hash: u64,
    /// Number of backends in the table.
    pub backend_count: u32,
    /// 1 while a frontend points at it.
    pub in_use: u32,
}

/// Datapath-wide settings written by the loader.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Slots per Maglev table (a prime).
    pub maglev_table_size: u32,
    /// Number of Maglev tables in [`maps::MAGLEV`].
    pub maglev_tables: u32,
    /// `CONFIG_*` flags.
    pub flags: u32,
    /// Source address for SNAT of NodePort traffic to backends behind the same interface
    /// (network order); 0 = the frontend address the packet was sent to.
    pub snat_addr: u32,
    /// First port of the SNAT range (host order).
    pub snat_port_min: u16,
    /// Last port of the SNAT range (host order).
    pub snat_port_max: u16,
    /// Always 0.
    pub pad: u32,
}

/// sessionAffinity key: the client and the Service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AffinityKey {
    /// The client: its IPv4 address (tc), or its network namespace cookie (socket-LB).
    pub client: u64,
    /// [`ServiceValue::service_id`].
    pub service_id: u32,
    /// 0 for tc (client address), 1 for socket-LB (netns cookie).
    pub kind: u32,
}

/// sessionAffinity value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityValue {
    /// Last time the client used it (`bpf_ktime_get_ns`).
    pub last_used_ns: u64,
    /// The backend id.
    pub backend_id: u32,
    /// Always 0.
    pub pad: u32,
}

/// Socket-LB reverse translation key: the socket and the backend it was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockRevKey {
    /// `bpf_get_socket_cookie`.
    pub cookie: u64,
    /// Backend address (network order).
    pub addr: u32,
    /// Backend port (network order).
    pub port: u16,
    /// Always 0.
    pub pad: u16,
}

/// Socket-LB reverse translation value: the frontend the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockRevValue {
    /// Frontend address (network order).
    pub addr: u32,
    /// Frontend port (network order).
    pub port: u16,
    /// Always 0.
    pub pad: u16,
    /// [`ServiceValue::service_id`].
    pub service_id: u32,
}

/// Original destination of a connection redirected to the proxy.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OrigDst {
    /// Address the client connected to (network order).
    pub addr: u32,
    /// Port the client connected to (network order).
    pub port: u16,
    /// Always 0.
    pub pad: u16,
    /// [`ServiceValue::service_id`].
    pub service_id: u32,
}

/// A redirected connection as the proxy sees it on accept().
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct OrigDstKey {
    /// Client address (network order).
    pub client_addr: u32,
    /// Proxy address the connection was redirected to (network order).
    pub proxy_addr: u32,
    /// Client port (network order).
    pub client_port: u16,
    /// Proxy port (network order).
    pub proxy_port: u16,
}

/// A packet's 5-tuple as the tc conntrack keys it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    /// Source address (network order).
    pub saddr: u32,
    /// Destination address (network order).
    pub daddr: u32,
    /// Source port (network order).
    pub sport: u16,
    /// Destination port (network order).
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Always 0.
    pub pad: [u8; 3],
}

/// Conntrack entry of the original direction (client -> frontend).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtForward {
    /// Chosen backend address (network order).
    pub backend_addr: u32,
    /// Chosen backend port (network order).
    pub backend_port: u16,
    /// SNAT source port (network order), 0 = source preserved.
    pub snat_port: u16,
    /// SNAT source address (network order), 0 = source preserved.
    pub snat_addr: u32,
    /// Backend id (to notice removed backends).
    pub backend_id: u32,
    /// [`ServiceValue::service_id`].
    pub service_id: u32,
    /// Always 0.
    pub pad: u32,
}

/// Conntrack entry of the reply direction (backend -> client or SNAT address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtReply {
    /// Frontend address the client sent to (network order).
    pub frontend_addr: u32,
    /// Client address (network order).
    pub client_addr: u32,
    /// Frontend port (network order).
    pub frontend_port: u16,
    /// Client port (network order).
    pub client_port: u16,
    /// [`ServiceValue::service_id`].
    pub service_id: u32,
}

/// Identifies the fragments of one datagram.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    /// Source address (network order).
    pub saddr: u32,
    /// Destination address (network order).
    pub daddr: u32,
    /// IP identification (network order).
    pub id: u16,
    /// IP protocol.
    pub proto: u8,
    /// Always 0.
    pub pad: u8,
}

/// L4 ports of a fragmented datagram, learned from its first fragment.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragPorts {
    /// Source port (network order).
    pub sport: u16,
    /// Destination port (network order).
    pub dport: u16,
}

/// A Gateway listener or L7 frontend that sk_lookup steers to a proxy socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ListenerKey {
    /// Destination address (network order); 0 = any local address.
    pub addr: u32,
    /// Destination port (network order).
    pub port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// Always 0.
    pub pad: u8,
}

/// Key of an established TCP socket in the sockhash, from that socket's point of view.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockKey {
    /// Local address (network order).
    pub local_addr: u32,
    /// Remote address (network order).
    pub remote_addr: u32,
    /// Local port (host order).
    pub local_port: u32,
    /// Remote port (host order).
    pub remote_port: u32,
}

/// Kinds of [`FlowEvent`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Socket-LB translated a connect() (TCP or connected UDP).
    SockConnect = 1,
    /// Socket-LB translated an unconnected UDP sendmsg() to a new backend.
    SockSendmsg = 2,
    /// Socket-LB rewrote a connect() to the local proxy (L7 service).
    SockL7Redirect = 3,
    /// tc created a NodePort/external IP flow.
    TcNewFlow = 4,
    /// tc reverse-translated an ICMP error of a flow.
    TcIcmpError = 5,
    /// sk_lookup delivered a connection or datagram to a proxy socket.
    SkLookupRedirect = 6,
    /// sock_ops added a local socket to the sockhash.
    SockmapAdd = 7,
    /// A frontend had no backend.
    NoBackend = 8,
}

impl EventKind {
    /// Decodes [`FlowEvent::kind`].
    pub fn from_u8(v: u8) -> Option<EventKind> {
        Some(match v {
            1 => EventKind::SockConnect,
            2 => EventKind::SockSendmsg,
            3 => EventKind::SockL7Redirect,
            4 => EventKind::TcNewFlow,
            5 => EventKind::TcIcmpError,
            6 => EventKind::SkLookupRedirect,
            7 => EventKind::SockmapAdd,
            8 => EventKind::NoBackend,
            _ => return None,
        })
    }

    /// Stable lower-case name, for metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::SockConnect => "sock_connect",
            EventKind::SockSendmsg => "sock_sendmsg",
            EventKind::SockL7Redirect => "sock_l7_redirect",
            EventKind::TcNewFlow => "tc_new_flow",
            EventKind::TcIcmpError => "tc_icmp_error",
            EventKind::SkLookupRedirect => "sk_lookup_redirect",
            EventKind::SockmapAdd => "sockmap_add",
            EventKind::NoBackend => "no_backend",
        }
    }
}

/// Verdicts carried by [`FlowEvent::verdict`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Destination (and possibly source) rewritten to a backend.
    Translated = 0,
    /// Source preserved, destination rewritten (tc).
    Dnat = 1,
    /// Destination and source rewritten (tc SNAT).
    Snat = 2,
    /// Delivered to the proxy.
    Redirected = 3,
    /// Refused (socket-LB connect with no backend).
    Rejected = 4,
    /// Dropped (tc with no backend).
    Dropped = 5,
    /// Accelerated by the sockmap.
    Accelerated = 6,
}

impl Verdict {
    /// Decodes [`FlowEvent::verdict`].
    pub fn from_u8(v: u8) -> Option<Verdict> {
        Some(match v {
            0 => Verdict::Translated,
            1 => Verdict::Dnat,
            2 => Verdict::Snat,
            3 => Verdict::Redirected,
            4 => Verdict::Rejected,
            5 => Verdict::Dropped,
            6 => Verdict::Accelerated,
            _ => return None,
        })
    }

    /// Stable lower-case name, for metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Translated => "translated",
            Verdict::Dnat => "dnat",
            Verdict::Snat => "snat",
            Verdict::Redirected => "redirected",
            Verdict::Rejected => "rejected",
            Verdict::Dropped => "dropped",
            Verdict::Accelerated => "accelerated",
        }
    }
}

/// One per-connection event in the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns` (monotonic, boot-based).
    pub ts_ns: u64,
    /// [`EventKind`] as `u8`.
    pub kind: u8,
    /// IP protocol.
    pub proto: u8,
    /// [`Verdict`] as `u8`.
    pub verdict: u8,
    /// Always 0.
    pub pad: u8,
    /// [`ServiceValue::service_id`] (0 when not a Service).
    pub service_id: u32,
    /// Client address (network order; 0 when unknown, e.g. at connect()).
    pub src_addr: u32,
    /// Destination the client used (network order).
    pub dst_addr: u32,
    /// Where it went: backend or proxy address (network order).
    pub nat_addr: u32,
    /// Client port (network order; 0 when unknown).
    pub src_port: u16,
    /// Destination port the client used (network order).
    pub dst_port: u16,
    /// Backend or proxy port (network order).
    pub nat_port: u16,
    /// Always 0.
    pub pad2: u16,
    /// Backend id (0 when not a backend).
    pub backend_id: u32,
}

/// Per-CPU counters in [`maps::STATS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    /// Flow events lost because the ring buffer was full.
    EventsLost = 0,
    /// Packets dropped because their frontend had no backend.
    NoBackend = 1,
    /// Non-first fragments whose first fragment was not seen (passed untranslated).
    FragMiss = 2,
    /// NodePort flows that found no free SNAT port (dropped).
    SnatExhausted = 3,
    /// Conntrack insertions that failed.
    CtInsertFailed = 4,
    /// Packets the tc programs could not parse or rewrite (passed or dropped, see logs).
    TcErrors = 5,
    /// sk_msg messages redirected socket to socket.
    SockmapRedirected = 6,
    /// sk_msg messages passed to the TCP stack (peer not in the sockhash).
    SockmapPassed = 7,
}

/// Number of [`Counter`] slots.
pub const COUNTERS: u32 = 8;

/// Converts an address to the in-map representation (network-order bytes in a `u32`).
#[inline(always)]
pub const fn ip4(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// Converts the in-map representation back to octets.
#[inline(always)]
pub const fn ip4_addr(v: u32) -> [u8; 4] {
    v.to_ne_bytes()
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type is #[repr(C)], Copy, made of integers, with no implicit padding (the
    // layout tests check that size equals the sum of the fields).
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for TableMeta {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for SockRevKey {}
    unsafe impl aya::Pod for SockRevValue {}
    unsafe impl aya::Pod for OrigDst {}
    unsafe impl aya::Pod for OrigDstKey {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtForward {}
    unsafe impl aya::Pod for CtReply {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragPorts {}
    unsafe impl aya::Pod for ListenerKey {}
    unsafe impl aya::Pod for SockKey {}
    unsafe impl aya::Pod for FlowEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn keys_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey>(), 8);
        assert_eq!(offset_of!(ServiceKey, port), 4);
        assert_eq!(offset_of!(ServiceKey, proto), 6);
        assert_eq!(size_of::<ListenerKey>(), 8);
        assert_eq!(size_of::<CtKey>(), 16);
        assert_eq!(offset_of!(CtKey, sport), 8);
        assert_eq!(offset_of!(CtKey, proto), 12);
        assert_eq!(size_of::<FragKey>(), 12);
        assert_eq!(offset_of!(FragKey, id), 8);
        assert_eq!(size_of::<SockKey>(), 16);
        assert_eq!(size_of::<SockRevKey>(), 16);
        assert_eq!(offset_of!(SockRevKey, addr), 8);
        assert_eq!(align_of::<SockRevKey>(), 8);
        assert_eq!(size_of::<AffinityKey>(), 16);
        assert_eq!(size_of::<OrigDstKey>(), 12);
        assert_eq!(offset_of!(OrigDstKey, client_port), 8);
    }

    #[test]
    fn values_have_the_agreed_layout() {
        assert_eq!(size_of::<ServiceValue>(), 32);
        assert_eq!(offset_of!(ServiceValue, table), 8);
        assert_eq!(offset_of!(ServiceValue, redirect_addr), 20);
        assert_eq!(offset_of!(ServiceValue, redirect_port), 24);
        assert_eq!(offset_of!(ServiceValue, revision), 28);
        assert_eq!(size_of::<Backend>(), 8);
        assert_eq!(size_of::<TableMeta>(), 16);
        assert_eq!(align_of::<TableMeta>(), 8);
        assert_eq!(size_of::<Config>(), 24);
        assert_eq!(offset_of!(Config, snat_port_min), 16);
        assert_eq!(size_of::<AffinityValue>(), 16);
        assert_eq!(size_of::<SockRevValue>(), 12);
        assert_eq!(size_of::<OrigDst>(), 12);
        assert_eq!(size_of::<CtForward>(), 24);
        assert_eq!(offset_of!(CtForward, snat_addr), 8);
        assert_eq!(size_of::<CtReply>(), 16);
        assert_eq!(offset_of!(CtReply, frontend_port), 8);
        assert_eq!(size_of::<FragPorts>(), 4);
    }

    #[test]
    fn flow_event_layout() {
        assert_eq!(size_of::<FlowEvent>(), 40);
        assert_eq!(align_of::<FlowEvent>(), 8);
        assert_eq!(offset_of!(FlowEvent, kind), 8);
        assert_eq!(offset_of!(FlowEvent, service_id), 12);
        assert_eq!(offset_of!(FlowEvent, src_port), 28);
        assert_eq!(offset_of!(FlowEvent, backend_id), 36);
    }

    #[test]
    fn addresses_round_trip_in_network_order() {
        let v = ip4([10, 96, 0, 1]);
        assert_eq!(v.to_ne_bytes(), [10, 96, 0, 1]);
        assert_eq!(ip4_addr(v), [10, 96, 0, 1]);
    }

    #[test]
    fn enums_decode() {
        for k in 1..=8u8 {
            assert_eq!(EventKind::from_u8(k).map(|e| e as u8), Some(k));
        }
        assert_eq!(EventKind::from_u8(0), None);
        for v in 0..=6u8 {
            assert_eq!(Verdict::from_u8(v).map(|e| e as u8), Some(v));
        }
        assert_eq!(Verdict::from_u8(7), None);
    }
}
