//! tc load balancing on the node interface: NodePort and external/LoadBalancer IP traffic is
//! DNATed to a backend at ingress with a conntrack entry, and reverse-translated on the way
//! back (egress for backends reached through another interface, ingress for SNATed flows).
//!
//! - Source preservation: the client's address is kept when the backend's replies come back
//!   through this node (a backend reached through another interface, e.g. a local pod), and
//!   for externalTrafficPolicy Local. When the backend sits behind the same interface the
//!   packet came in on (hairpin), the source is rewritten to the node (SNAT), so that the
//!   replies return here.
//! - Fragments: the first fragment's ports are remembered (`FRAGS`) under (source,
//!   destination, IP id, protocol) and later fragments are translated with them; a later
//!   fragment seen before its first fragment is passed untranslated and counted (`FragMiss`).
//! - ICMP: errors (destination unreachable, time exceeded, parameter problem) whose embedded
//!   packet belongs to a translated flow are reverse-translated, outer and inner headers and
//!   checksums, so the client's socket sees the error against the frontend it used. Other
//!   ICMP (echo) is passed to the stack.
//! - A frontend without backends drops the packet (counted and reported).
//! - Conntrack entries live in LRU maps and age out under pressure; a TCP RST removes its
//!   flow's entries, and a SYN replaces whatever an earlier connection left for its tuple
//!   (also the reverse entry of a direct connection to a backend, which would otherwise
//!   rewrite that connection's replies).

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_ANY, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_NOEXIST, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
        bpf_fib_lookup,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect_neigh},
    macros::classifier,
    programs::TcContext,
};
use sluice_ebpf_common::{
    AffinityKey, Counter, CtForward, CtKey, CtReply, EventKind, FlowEvent, FragKey, FragPorts,
    PROTO_ICMP, PROTO_TCP, PROTO_UDP, SVC_EXTERNAL, SVC_L7_REDIRECT, SVC_LOCAL_ONLY, SVC_NODE_PORT,
    ServiceKey, ServiceValue, Verdict,
};

use crate::{
    maps::{BACKENDS, CT_FWD, CT_REV, FRAGS, SERVICES},
    util::{choose, config, count, csum_replace2, csum_replace4, emit, flow_hash, is_node_addr},
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IP_CSUM: usize = ETH_HLEN + 10;
const IP_SADDR: usize = ETH_HLEN + 12;
const IP_DADDR: usize = ETH_HLEN + 16;
const AF_INET: u8 = 2;
const OK: i32 = TC_ACT_OK;
const SHOT: i32 = TC_ACT_SHOT;

#[classifier]
pub fn sluice_tc_ingress(ctx: TcContext) -> i32 {
    match try_tc_ingress(&ctx) {
        Ok(v) => v,
        Err(v) => v,
    }
}

#[classifier]
pub fn sluice_tc_egress(ctx: TcContext) -> i32 {
    match try_tc_egress(&ctx) {
        Ok(v) => v,
        Err(v) => v,
    }
}

/// What the programs need from an IPv4 packet.
#[derive(Clone, Copy)]
struct Pkt {
    /// Offset of the L4 header.
    l4: usize,
    proto: u8,
    saddr: u32,
    daddr: u32,
    /// IP id (raw).
    id: u16,
    /// More-fragments flag.
    mf: bool,
    /// Fragment offset (units of 8 bytes); non-zero = no L4 header in this packet.
    frag_off: u16,
    /// Ports (raw network order); from `FRAGS` for later fragments.
    sport: u16,
    dport: u16,
}

impl Pkt {
    #[inline(always)]
    fn has_l4(&self) -> bool {
        self.frag_off == 0
    }

    #[inline(always)]
    fn l4_csum(&self) -> usize {
        if self.proto == PROTO_TCP {
            self.l4 + 16
        } else {
            self.l4 + 6
        }
    }

    #[inline(always)]
    fn l4_flags(&self) -> u64 {
        if self.proto == PROTO_UDP {
            BPF_F_MARK_MANGLED_0 as u64
        } else {
            0
        }
    }

    #[inline(always)]
    fn key(&self) -> CtKey {
        CtKey {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            pad: [0; 3],
        }
    }
}

/// Parses Ethernet + IPv4; `Ok(None)` for anything else.
#[inline(always)]
fn parse(ctx: &TcContext) -> Result<Option<Pkt>, i32> {
    let eth_proto: u16 = ctx.load(12).map_err(|_| OK)?;
    if eth_proto != ETH_P_IP.to_be() {
        return Ok(None);
    }
    let vihl: u8 = ctx.load(ETH_HLEN).map_err(|_| OK)?;
    if vihl >> 4 != 4 {
        return Ok(None);
    }
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Ok(None);
    }
    let frag: u16 = ctx.load(ETH_HLEN + 6).map_err(|_| OK)?;
    let frag = u16::from_be(frag);
    Ok(Some(Pkt {
        l4: ETH_HLEN + ihl,
        proto: ctx.load(ETH_HLEN + 9).map_err(|_| OK)?,
        saddr: ctx.load(IP_SADDR).map_err(|_| OK)?,
        daddr: ctx.load(IP_DADDR).map_err(|_| OK)?,
        id: ctx.load(ETH_HLEN + 4).map_err(|_| OK)?,
        mf: frag & 0x2000 != 0,
        frag_off: frag & 0x1fff,
        sport: 0,
        dport: 0,
    }))
}

const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// TCP flags of a packet with an L4 header (0 otherwise).
#[inline(always)]
fn tcp_flags(ctx: &TcContext, p: &Pkt) -> u8 {
    if p.proto != PROTO_TCP || !p.has_l4() {
        return 0;
    }
    ctx.load::<u8>(p.l4 + 13).unwrap_or(0)
}

/// The reply-direction key of a forward conntrack entry.
#[inline(always)]
fn reply_key(fwd: &CtKey, f: &CtForward) -> CtKey {
    let (daddr, dport) = if f.snat_addr != 0 {
        (f.snat_addr, f.snat_port)
    } else {
        (fwd.saddr, fwd.sport)
    };
    CtKey {
        saddr: f.backend_addr,
        daddr,
        sport: f.backend_port,
        dport,
        proto: fwd.proto,
        pad: [0; 3],
    }
}

/// The forward-direction key of a reply conntrack entry.
#[inline(always)]
fn forward_key(r: &CtReply, proto: u8) -> CtKey {
    CtKey {
        saddr: r.client_addr,
        daddr: r.frontend_addr,
        sport: r.client_port,
        dport: r.frontend_port,
        proto,
        pad: [0; 3],
    }
}

/// Fills in the ports: from the L4 header (remembering them for the later fragments of a
/// fragmented datagram) or, for a later fragment, from its first fragment.
/// `Err(OK)`: a later fragment whose first fragment was not seen.
#[inline(always)]
fn ports(ctx: &TcContext, p: &mut Pkt) -> Result<(), i32> {
    let fkey = FragKey {
        saddr: p.saddr,
        daddr: p.daddr,
        id: p.id,
        proto: p.proto,
        pad: 0,
    };
    if p.frag_off != 0 {
        // SAFETY: read-only copy of a map value.
        match unsafe { FRAGS.get(&fkey) } {
            Some(f) => {
                p.sport = f.sport;
                p.dport = f.dport;
                return Ok(());
            }
            None => {
                count(Counter::FragMiss);
                return Err(OK);
            }
        }
    }
    p.sport = ctx.load(p.l4).map_err(|_| OK)?;
    p.dport = ctx.load(p.l4 + 2).map_err(|_| OK)?;
    if p.mf {
        let v = FragPorts {
            sport: p.sport,
            dport: p.dport,
        };
        let _ = FRAGS.insert(&fkey, &v, BPF_ANY as u64);
    }
    Ok(())
}

/// Rewrites the source or destination address, fixing the IP and L4 checksums.
#[inline(always)]
fn set_addr(ctx: &TcContext, p: &Pkt, off: usize, old: u32, new: u32) -> Result<(), i32> {
    if old == new {
        return Ok(());
    }
    if p.has_l4() && p.proto != PROTO_ICMP {
        ctx.l4_csum_replace(
            p.l4_csum(),
            old as u64,
            new as u64,
            BPF_F_PSEUDO_HDR as u64 | 4 | p.l4_flags(),
        )
        .map_err(|_| SHOT)?;
    }
    ctx.l3_csum_replace(IP_CSUM, old as u64, new as u64, 4)
        .map_err(|_| SHOT)?;
    store(ctx, off, &new)
}

/// Rewrites a port (offset 0 = source, 2 = destination), fixing the L4 checksum.
#[inline(always)]
fn set_port(ctx: &TcContext, p: &Pkt, which: usize, old: u16, new: u16) -> Result<(), i32> {
    if old == new || !p.has_l4() {
        return Ok(());
    }
    ctx.l4_csum_replace(p.l4_csum(), old as u64, new as u64, 2 | p.l4_flags())
        .map_err(|_| SHOT)?;
    store(ctx, p.l4 + which, &new)
}

#[inline(always)]
fn store<T>(ctx: &TcContext, off: usize, v: &T) -> Result<(), i32> {
    // bpf_skb_store_bytes needs a mutable context; the helper only touches the packet.
    let mut c = TcContext::new(ctx.skb.skb);
    c.store(off, v, 0).map_err(|_| SHOT)
}

/// Applies a full translation: new source and destination.
#[inline(always)]
fn translate(
    ctx: &TcContext,
    p: &Pkt,
    saddr: u32,
    sport: u16,
    daddr: u32,
    dport: u16,
) -> Result<(), i32> {
    set_addr(ctx, p, IP_SADDR, p.saddr, saddr)?;
    set_addr(ctx, p, IP_DADDR, p.daddr, daddr)?;
    set_port(ctx, p, 0, p.sport, sport)?;
    set_port(ctx, p, 2, p.dport, dport)
}

/// Finds a NodePort or external IP frontend.
#[inline(always)]
fn lookup_service(p: &Pkt) -> Option<ServiceValue> {
    let key = ServiceKey {
        addr: p.daddr,
        port: p.dport,
        proto: p.proto,
        pad: 0,
    };
    // SAFETY: read-only copies of map values.
    if let Some(v) = unsafe { SERVICES.get(&key) }
        && v.flags & (SVC_EXTERNAL | SVC_NODE_PORT) != 0
    {
        return Some(*v);
    }
    if !is_node_addr(p.daddr) {
        return None;
    }
    let np = ServiceKey { addr: 0, ..key };
    match unsafe { SERVICES.get(&np) } {
        Some(v) if v.flags & SVC_NODE_PORT != 0 => Some(*v),
        _ => None,
    }
}

/// `BPF_FIB_LOOKUP_SRC` (kernel 6.8+): also select the source address for the route.
const FIB_LOOKUP_SRC: u32 = 1 << 4;

/// When the backend is reached through the interface the packet came in on, its replies
/// would bypass this node, so the flow needs SNAT: returns the source address to use (the
/// route's preferred source, 0 when the kernel cannot tell). `None`: no SNAT needed.
#[inline(always)]
fn hairpin(ctx: &TcContext, p: &Pkt, backend: u32) -> Option<u32> {
    // SAFETY: reading the skb's ingress interface.
    let ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    let mut flags = FIB_LOOKUP_SRC;
    let mut tries = 0;
    while tries < 2 {
        // SAFETY: zero is a valid bpf_fib_lookup.
        let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
        params.family = AF_INET;
        params.l4_protocol = p.proto;
        params.ifindex = ifindex;
        params.__bindgen_anon_3.ipv4_src = p.saddr;
        params.__bindgen_anon_4.ipv4_dst = backend;
        // SAFETY: params is a valid, fully sized bpf_fib_lookup.
        let rc = unsafe {
            fib_lookup(
                ctx.as_ptr(),
                &mut params,
                core::mem::size_of::<bpf_fib_lookup>() as i32,
                flags,
            )
        };
        if rc < 0 {
            // Older kernel without BPF_FIB_LOOKUP_SRC: ask again without it.
            flags = 0;
            tries += 1;
            continue;
        }
        let rc = rc as u32;
        if (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH)
            && params.ifindex == ifindex
        {
            let src = if flags != 0 {
                // SAFETY: the kernel filled the IPv4 variant.
                unsafe { params.__bindgen_anon_3.ipv4_src }
            } else {
                0
            };
            return Some(src);
        }
        return None;
    }
    None
}

/// Sends a hairpinned (SNATed) packet back out of the interface it came in on. Its source is
/// now a node address, which the stack's input path would drop as martian; the neighbour
/// subsystem fills in the link-layer header.
#[inline(always)]
fn hairpin_out(ctx: &TcContext) -> i32 {
    // SAFETY: reading the skb's ingress interface.
    let ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    // SAFETY: no neighbour parameters (the helper looks the next hop up itself).
    let rc = unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) };
    if rc == TC_ACT_REDIRECT as i64 {
        TC_ACT_REDIRECT
    } else {
        count(Counter::TcErrors);
        SHOT
    }
}

#[inline(always)]
fn try_tc_ingress(ctx: &TcContext) -> Result<i32, i32> {
    let Some(mut p) = parse(ctx)? else {
        return Ok(OK);
    };
    if p.proto == PROTO_ICMP {
        return icmp_error(ctx, &p);
    }
    if p.proto != PROTO_TCP && p.proto != PROTO_UDP {
        return Ok(OK);
    }
    ports(ctx, &mut p)?;
    let flags = tcp_flags(ctx, &p);
    // A SYN opens a new connection: whatever conntrack holds for its tuple is left over from
    // an earlier one (conntrack entries otherwise only age out of the LRU maps).
    let syn = flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let rst = flags & TCP_RST != 0;

    // 1. A reply to a flow this node SNATed.
    // SAFETY: read-only copies of map values.
    if let Some(r) = unsafe { CT_REV.get(&p.key()) }.copied() {
        if rst {
            let _ = CT_FWD.remove(&forward_key(&r, p.proto));
            let _ = CT_REV.remove(&p.key());
        }
        translate(
            ctx,
            &p,
            r.frontend_addr,
            r.frontend_port,
            r.client_addr,
            r.client_port,
        )?;
        // Only SNATed flows have reply entries keyed by what arrives here.
        return Ok(hairpin_out(ctx));
    }

    // 2. A known flow, as long as its backend still exists.
    let fwd = p.key();
    // SAFETY: read-only copies of map values.
    if let Some(f) = unsafe { CT_FWD.get(&fwd) }.copied() {
        let alive = matches!(unsafe { BACKENDS.get(&f.backend_id) },
            Some(b) if b.addr == f.backend_addr && b.port == f.backend_port);
        if syn || !alive {
            let _ = CT_FWD.remove(&fwd);
            let _ = CT_REV.remove(&reply_key(&fwd, &f));
        } else {
            if rst {
                let _ = CT_FWD.remove(&fwd);
                let _ = CT_REV.remove(&reply_key(&fwd, &f));
            }
            let (sa, sp) = if f.snat_addr != 0 {
                (f.snat_addr, f.snat_port)
            } else {
                (p.saddr, p.sport)
            };
            translate(ctx, &p, sa, sp, f.backend_addr, f.backend_port)?;
            if f.snat_addr != 0 {
                return Ok(hairpin_out(ctx));
            }
            return Ok(OK);
        }
    }

    // 3. A new flow to a frontend.
    let Some(svc) = lookup_service(&p) else {
        if syn {
            // A new connection straight to an address behind this node: a reverse entry for
            // its tuple is stale and would rewrite its replies.
            let stale = CtKey {
                saddr: p.daddr,
                daddr: p.saddr,
                sport: p.dport,
                dport: p.sport,
                proto: p.proto,
                pad: [0; 3],
            };
            let _ = CT_REV.remove(&stale);
        }
        return Ok(OK);
    };
    if svc.flags & SVC_L7_REDIRECT != 0 {
        // sk_lookup hands it to the proxy once the stack delivers it locally.
        return Ok(OK);
    }
    if !p.has_l4() {
        count(Counter::FragMiss);
        return Ok(OK);
    }
    let mut ev = FlowEvent {
        proto: p.proto,
        service_id: svc.service_id,
        src_addr: p.saddr,
        src_port: p.sport,
        dst_addr: p.daddr,
        dst_port: p.dport,
        ..FlowEvent::default()
    };
    if svc.backend_count == 0 {
        count(Counter::NoBackend);
        ev.kind = EventKind::NoBackend as u8;
        ev.verdict = Verdict::Dropped as u8;
        emit(&ev);
        return Ok(SHOT);
    }
    let hash = flow_hash(p.saddr, p.daddr, p.sport, p.dport, p.proto);
    let aff = AffinityKey {
        client: p.saddr as u64,
        service_id: svc.service_id,
        kind: 0,
    };
    let Some((backend_id, be)) = choose(&svc, &aff, hash) else {
        count(Counter::TcErrors);
        return Err(SHOT);
    };

    let route_src = if svc.flags & SVC_LOCAL_ONLY == 0 {
        hairpin(ctx, &p, be.addr)
    } else {
        None
    };
    let snat = route_src.is_some();
    let reply = CtReply {
        frontend_addr: p.daddr,
        client_addr: p.saddr,
        frontend_port: p.dport,
        client_port: p.sport,
        service_id: svc.service_id,
    };
    let mut rkey = CtKey {
        saddr: be.addr,
        daddr: p.saddr,
        sport: be.port,
        dport: p.sport,
        proto: p.proto,
        pad: [0; 3],
    };
    let (mut snat_addr, mut snat_port) = (0u32, 0u16);
    if snat {
        let cfg = config().ok_or(SHOT)?;
        // Configured address, else the route's source towards the backend, else (NodePort)
        // the node address the client used.
        snat_addr = match route_src {
            _ if cfg.snat_addr != 0 => cfg.snat_addr,
            Some(src) if src != 0 => src,
            _ => p.daddr,
        };
        let min = cfg.snat_port_min as u32;
        let span = (cfg.snat_port_max as u32).saturating_sub(min) + 1;
        rkey.daddr = snat_addr;
        let mut found = false;
        let mut i = 0u32;
        while i < 8 {
            let port = (min + (hash.wrapping_add(i.wrapping_mul(0x9e37)) % span)) as u16;
            rkey.dport = port.to_be();
            if CT_REV.insert(&rkey, &reply, BPF_NOEXIST as u64).is_ok() {
                found = true;
                snat_port = port.to_be();
                break;
            }
            i += 1;
        }
        if !found {
            count(Counter::SnatExhausted);
            return Ok(SHOT);
        }
    } else if CT_REV.insert(&rkey, &reply, BPF_ANY as u64).is_err() {
        count(Counter::CtInsertFailed);
        return Err(SHOT);
    }
    let fval = CtForward {
        backend_addr: be.addr,
        backend_port: be.port,
        snat_port,
        snat_addr,
        backend_id,
        service_id: svc.service_id,
        pad: 0,
    };
    if CT_FWD.insert(&fwd, &fval, BPF_ANY as u64).is_err() {
        count(Counter::CtInsertFailed);
        let _ = CT_REV.remove(&rkey);
        return Err(SHOT);
    }
    let (sa, sp) = if snat {
        (snat_addr, snat_port)
    } else {
        (p.saddr, p.sport)
    };
    translate(ctx, &p, sa, sp, be.addr, be.port)?;
    ev.kind = EventKind::TcNewFlow as u8;
    ev.verdict = if snat {
        Verdict::Snat as u8
    } else {
        Verdict::Dnat as u8
    };
    ev.nat_addr = be.addr;
    ev.nat_port = be.port;
    ev.backend_id = backend_id;
    emit(&ev);
    if snat {
        return Ok(hairpin_out(ctx));
    }
    Ok(OK)
}

#[inline(always)]
fn try_tc_egress(ctx: &TcContext) -> Result<i32, i32> {
    let Some(mut p) = parse(ctx)? else {
        return Ok(OK);
    };
    if p.proto == PROTO_ICMP {
        return icmp_error(ctx, &p);
    }
    if p.proto != PROTO_TCP && p.proto != PROTO_UDP {
        return Ok(OK);
    }
    ports(ctx, &mut p)?;
    // A reply from a backend that kept the client's address: show the frontend as source.
    // SAFETY: read-only copy of a map value.
    if let Some(r) = unsafe { CT_REV.get(&p.key()) }.copied()
        && r.client_addr == p.daddr
        && r.client_port == p.dport
    {
        if tcp_flags(ctx, &p) & TCP_RST != 0 {
            let _ = CT_FWD.remove(&forward_key(&r, p.proto));
            let _ = CT_REV.remove(&p.key());
        }
        set_addr(ctx, &p, IP_SADDR, p.saddr, r.frontend_addr)?;
        set_port(ctx, &p, 0, p.sport, r.frontend_port)?;
    }
    Ok(OK)
}

/// Reverse-translates an ICMP error about a translated flow (either hook).
#[inline(always)]
fn icmp_error(ctx: &TcContext, p: &Pkt) -> Result<i32, i32> {
    if !p.has_l4() {
        return Ok(OK);
    }
    let ty: u8 = ctx.load(p.l4).map_err(|_| OK)?;
    // Destination unreachable, time exceeded, parameter problem.
    if ty != 3 && ty != 11 && ty != 12 {
        return Ok(OK);
    }
    let inner = p.l4 + 8;
    let vihl: u8 = ctx.load(inner).map_err(|_| OK)?;
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Ok(OK);
    }
    let iproto: u8 = ctx.load(inner + 9).map_err(|_| OK)?;
    if iproto != PROTO_TCP && iproto != PROTO_UDP {
        return Ok(OK);
    }
    let isaddr: u32 = ctx.load(inner + 12).map_err(|_| OK)?;
    let idaddr: u32 = ctx.load(inner + 16).map_err(|_| OK)?;
    let il4 = inner + ihl;
    let isport: u16 = ctx.load(il4).map_err(|_| OK)?;
    let idport: u16 = ctx.load(il4 + 2).map_err(|_| OK)?;
    // The embedded packet went towards the backend; its reverse is the reply key.
    let key = CtKey {
        saddr: idaddr,
        daddr: isaddr,
        sport: idport,
        dport: isport,
        proto: iproto,
        pad: [0; 3],
    };
    // SAFETY: read-only copy of a map value.
    let Some(r) = (unsafe { CT_REV.get(&key) }).copied() else {
        return Ok(OK);
    };

    // Inner header: source := client, destination := frontend.
    let icsum_off = inner + 10;
    let icmp_csum_off = p.l4 + 2;
    let old_icsum: u16 = ctx.load(icsum_off).map_err(|_| OK)?;
    let mut icsum = csum_replace4(old_icsum, isaddr, r.client_addr);
    icsum = csum_replace4(icsum, idaddr, r.frontend_addr);
    let mut icmp_csum: u16 = ctx.load(icmp_csum_off).map_err(|_| OK)?;
    icmp_csum = csum_replace4(icmp_csum, isaddr, r.client_addr);
    icmp_csum = csum_replace4(icmp_csum, idaddr, r.frontend_addr);
    icmp_csum = csum_replace2(icmp_csum, old_icsum, icsum);
    icmp_csum = csum_replace2(icmp_csum, isport, r.client_port);
    icmp_csum = csum_replace2(icmp_csum, idport, r.frontend_port);
    store(ctx, inner + 12, &r.client_addr)?;
    store(ctx, inner + 16, &r.frontend_addr)?;
    store(ctx, icsum_off, &icsum)?;
    store(ctx, il4, &r.client_port)?;
    store(ctx, il4 + 2, &r.frontend_port)?;
    store(ctx, icmp_csum_off, &icmp_csum)?;

    // Outer header: an error from the backend comes from the frontend; one addressed to
    // the SNAT address goes to the client.
    if p.saddr == idaddr {
        set_addr(ctx, p, IP_SADDR, p.saddr, r.frontend_addr)?;
    }
    let hairpinned = p.daddr == isaddr && isaddr != r.client_addr;
    if hairpinned {
        set_addr(ctx, p, IP_DADDR, p.daddr, r.client_addr)?;
    }
    emit(&FlowEvent {
        kind: EventKind::TcIcmpError as u8,
        proto: iproto,
        verdict: Verdict::Translated as u8,
        service_id: r.service_id,
        src_addr: r.client_addr,
        src_port: r.client_port,
        dst_addr: r.frontend_addr,
        dst_port: r.frontend_port,
        nat_addr: idaddr,
        nat_port: idport,
        ..FlowEvent::default()
    });
    if hairpinned {
        // An error about an SNATed flow: its new source is a node address (see hairpin_out).
        return Ok(hairpin_out(ctx));
    }
    Ok(OK)
}
