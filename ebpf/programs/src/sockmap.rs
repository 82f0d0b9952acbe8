//! Sockmap acceleration: sock_ops records established node-local TCP sockets in a sockhash
//! (and the original destination of connects the socket-LB sent to the proxy); sk_msg moves
//! each sent message straight into the peer socket's receive queue. A socket whose peer is not
//! in the sockhash keeps using the TCP stack.

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_ANY, BPF_F_INGRESS, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, sk_action::SK_PASS,
    },
    helpers::bpf_get_socket_cookie,
    macros::{sk_msg, sock_ops},
    programs::{SkMsgContext, SockOpsContext},
};
use sluice_ebpf_common::{
    CONFIG_SOCKMAP, Counter, EventKind, FlowEvent, OrigDstKey, PROTO_TCP, SockKey, Verdict,
};

use crate::{
    maps::{ORIG_DST, SOCK_HASH, SOCK_ORIG},
    util::{config, count, emit, is_node_local},
};

const AF_INET: u32 = 2;

#[sock_ops]
pub fn sluice_sock_ops(ctx: SockOpsContext) -> u32 {
    match try_sock_ops(&ctx) {
        Ok(v) => v,
        Err(v) => v,
    }
}

#[sk_msg]
pub fn sluice_sk_msg(ctx: SkMsgContext) -> u32 {
    match try_sk_msg(&ctx) {
        Ok(v) => v,
        Err(v) => v,
    }
}

#[inline(always)]
fn try_sock_ops(ctx: &SockOpsContext) -> Result<u32, u32> {
    let op = ctx.op();
    if op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        return Ok(1);
    }
    if ctx.family() != AF_INET {
        return Ok(1);
    }
    let local_addr = ctx.local_ip4();
    let remote_addr = ctx.remote_ip4();
    let local_port = ctx.local_port();
    let remote_port = u32::from_be(ctx.remote_port());

    if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        // SAFETY: helper valid for sock_ops programs.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        // SAFETY: read-only copy of a map value.
        if let Some(orig) = unsafe { SOCK_ORIG.get(&cookie) }.copied() {
            let key = OrigDstKey {
                client_addr: local_addr,
                proxy_addr: remote_addr,
                client_port: (local_port as u16).to_be(),
                proxy_port: (remote_port as u16).to_be(),
            };
            let _ = ORIG_DST.insert(&key, &orig, 0);
            let _ = SOCK_ORIG.remove(&cookie);
        }
    }

    let enabled = matches!(config(), Some(c) if c.flags & CONFIG_SOCKMAP != 0);
    if !enabled || !is_node_local(remote_addr) {
        return Ok(1);
    }
    let mut key = SockKey {
        local_addr,
        remote_addr,
        local_port,
        remote_port,
    };
    // SAFETY: the context pointer is the kernel's bpf_sock_ops for this callback.
    let ops = unsafe { &mut *ctx.ops };
    // A socket that cannot be added simply stays on the TCP path.
    SOCK_HASH
        .update(&mut key, ops, BPF_ANY as u64)
        .map_err(|_| 1u32)?;
    emit(&FlowEvent {
        kind: EventKind::SockmapAdd as u8,
        proto: PROTO_TCP,
        verdict: Verdict::Accelerated as u8,
        src_addr: local_addr,
        src_port: (local_port as u16).to_be(),
        dst_addr: remote_addr,
        dst_port: (remote_port as u16).to_be(),
        ..FlowEvent::default()
    });
    Ok(1)
}

#[inline(always)]
fn try_sk_msg(ctx: &SkMsgContext) -> Result<u32, u32> {
    let md = ctx.msg;
    // SAFETY: ctx fields readable by sk_msg programs.
    let (family, local_addr, remote_addr, local_port, remote_port) = unsafe {
        (
            (*md).family,
            (*md).local_ip4,
            (*md).remote_ip4,
            (*md).local_port,
            u32::from_be((*md).remote_port),
        )
    };
    if family != AF_INET {
        return Ok(SK_PASS);
    }
    // The peer socket, keyed from its own point of view.
    let mut peer = SockKey {
        local_addr: remote_addr,
        remote_addr: local_addr,
        local_port: remote_port,
        remote_port: local_port,
    };
    let ret = SOCK_HASH.redirect_msg(ctx, &mut peer, BPF_F_INGRESS as u64);
    if ret == SK_PASS as i64 {
        count(Counter::SockmapRedirected);
    } else {
        // Not in the sockhash: SK_PASS without a redirect sends it through TCP as usual.
        count(Counter::SockmapPassed);
    }
    Ok(SK_PASS)
}
