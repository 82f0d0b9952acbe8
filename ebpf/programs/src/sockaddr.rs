//! Socket-LB: cgroup connect4/sendmsg4 translate a Service frontend to a backend (or to the
//! local proxy for L7 services) before any packet exists; recvmsg4/getpeername4 translate
//! the backend back so the application only ever sees the frontend.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use sluice_ebpf_common::{
    AffinityKey, EventKind, FlowEvent, OrigDst, PROTO_TCP, PROTO_UDP, SVC_L7_REDIRECT,
    SVC_NODE_PORT, ServiceKey, ServiceValue, SockRevKey, SockRevValue, Verdict,
};

use crate::{
    maps::{SERVICES, SOCK_ORIG, SOCK_REVNAT},
    util::{choose, emit, is_node_addr},
};

const AF_INET: u32 = 2;
/// Verdict: let the call proceed.
const ALLOW: i32 = 1;
/// Verdict: fail the call with EPERM.
const REJECT: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn sluice_connect4(ctx: SockAddrContext) -> i32 {
    match try_translate(&ctx, false) {
        Ok(v) => v,
        Err(v) => v,
    }
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sluice_sendmsg4(ctx: SockAddrContext) -> i32 {
    match try_translate(&ctx, true) {
        Ok(v) => v,
        Err(v) => v,
    }
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sluice_recvmsg4(ctx: SockAddrContext) -> i32 {
    // recvmsg4 may only return 1; the result only says whether anything was rewritten.
    match try_reverse(&ctx) {
        Ok(_) | Err(_) => ALLOW,
    }
}

#[cgroup_sock_addr(getpeername4)]
pub fn sluice_getpeername4(ctx: SockAddrContext) -> i32 {
    // getpeername4 may only return 1, like recvmsg4.
    match try_reverse(&ctx) {
        Ok(_) | Err(_) => ALLOW,
    }
}

/// Finds the service behind a destination: exact frontend, else a NodePort on a node address.
#[inline(always)]
fn lookup_service(addr: u32, port: u16, proto: u8) -> Option<ServiceValue> {
    let key = ServiceKey {
        addr,
        port,
        proto,
        pad: 0,
    };
    // SAFETY: read-only copies of map values.
    if let Some(v) = unsafe { SERVICES.get(&key) } {
        return Some(*v);
    }
    if !is_node_addr(addr) {
        return None;
    }
    let np = ServiceKey { addr: 0, ..key };
    match unsafe { SERVICES.get(&np) } {
        Some(v) if v.flags & SVC_NODE_PORT != 0 => Some(*v),
        _ => None,
    }
}

/// connect4/sendmsg4: rewrite a frontend destination to a backend or the proxy.
#[inline(always)]
fn try_translate(ctx: &SockAddrContext, sendmsg: bool) -> Result<i32, i32> {
    let sa = ctx.sock_addr;
    // SAFETY: ctx fields readable by cgroup sock_addr programs.
    let (family, proto, daddr, dport) = unsafe {
        (
            (*sa).user_family,
            (*sa).protocol,
            (*sa).user_ip4,
            (*sa).user_port as u16,
        )
    };
    if family != AF_INET {
        return Ok(ALLOW);
    }
    let proto = match proto {
        6 => PROTO_TCP,
        17 => PROTO_UDP,
        _ => return Ok(ALLOW),
    };
    let Some(svc) = lookup_service(daddr, dport, proto) else {
        return Ok(ALLOW);
    };
    // SAFETY: helper valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let mut ev = FlowEvent {
        proto,
        service_id: svc.service_id,
        dst_addr: daddr,
        dst_port: dport,
        ..FlowEvent::default()
    };

    let (new_addr, new_port, backend_id, kind) = if svc.flags & SVC_L7_REDIRECT != 0 {
        if proto == PROTO_TCP {
            let orig = OrigDst {
                addr: daddr,
                port: dport,
                pad: 0,
                service_id: svc.service_id,
            };
            // Best effort: without it the proxy still gets the connection, only without its
            // original destination.
            let _ = SOCK_ORIG.insert(&cookie, &orig, 0);
        }
        (
            svc.redirect_addr,
            svc.redirect_port,
            0,
            EventKind::SockL7Redirect,
        )
    } else {
        if svc.backend_count == 0 {
            ev.kind = EventKind::NoBackend as u8;
            ev.verdict = Verdict::Rejected as u8;
            emit(&ev);
            return Ok(REJECT);
        }
        let aff = AffinityKey {
            // SAFETY: helper valid for sock_addr programs.
            client: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
            service_id: svc.service_id,
            kind: 1,
        };
        // SAFETY: helper without preconditions.
        let hash = unsafe { bpf_get_prandom_u32() };
        // A service with backends but no table entry means the maps are inconsistent: refuse
        // rather than connect to a frontend address nothing answers on.
        let (id, be) = choose(&svc, &aff, hash).ok_or(REJECT)?;
        let kind = if sendmsg {
            EventKind::SockSendmsg
        } else {
            EventKind::SockConnect
        };
        (be.addr, be.port, id, kind)
    };

    let rkey = SockRevKey {
        cookie,
        addr: new_addr,
        port: new_port,
        pad: 0,
    };
    let known = sendmsg && SOCK_REVNAT.get_ptr(&rkey).is_some();
    if !known {
        let rval = SockRevValue {
            addr: daddr,
            port: dport,
            pad: 0,
            service_id: svc.service_id,
        };
        // Without the reverse entry the application would see the backend as its peer:
        // refuse instead of breaking that promise.
        SOCK_REVNAT.insert(&rkey, &rval, 0).map_err(|_| REJECT)?;
    }
    // SAFETY: user_ip4/user_port are writable in connect4/sendmsg4.
    unsafe {
        (*sa).user_ip4 = new_addr;
        (*sa).user_port = new_port as u32;
    }
    if !known {
        ev.kind = kind as u8;
        ev.verdict = if kind == EventKind::SockL7Redirect {
            Verdict::Redirected as u8
        } else {
            Verdict::Translated as u8
        };
        ev.nat_addr = new_addr;
        ev.nat_port = new_port;
        ev.backend_id = backend_id;
        emit(&ev);
    }
    Ok(ALLOW)
}

/// recvmsg4/getpeername4: show the frontend instead of the backend. `Ok(true)` when rewritten.
#[inline(always)]
fn try_reverse(ctx: &SockAddrContext) -> Result<bool, ()> {
    let sa = ctx.sock_addr;
    // SAFETY: ctx fields readable by cgroup sock_addr programs.
    let (family, addr, port) =
        unsafe { ((*sa).user_family, (*sa).user_ip4, (*sa).user_port as u16) };
    if family != AF_INET {
        return Ok(false);
    }
    let key = SockRevKey {
        // SAFETY: helper valid for sock_addr programs.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        addr,
        port,
        pad: 0,
    };
    // SAFETY: read-only copy of a map value.
    let Some(v) = (unsafe { SOCK_REVNAT.get(&key) }).copied() else {
        return Ok(false);
    };
    // SAFETY: user_ip4/user_port are writable in recvmsg4/getpeername4.
    unsafe {
        (*sa).user_ip4 = v.addr;
        (*sa).user_port = v.port as u32;
    }
    Ok(true)
}
