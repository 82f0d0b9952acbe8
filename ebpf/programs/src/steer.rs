//! sk_lookup: delivers traffic for Gateway listener addresses and L7 service frontends to the
//! proxy's listening socket. The packet is untouched, so the proxy sees the client's source
//! and the original destination as its accepted socket's peer and local address.

use core::ptr::addr_of_mut;

use aya_ebpf::{macros::sk_lookup, programs::SkLookupContext};
use sluice_ebpf_common::{EventKind, FlowEvent, ListenerKey, PROTO_TCP, Verdict};

use crate::{
    maps::{LISTENERS, PROXY_SOCKS},
    util::emit,
};

const AF_INET: u32 = 2;
/// Continue (with the socket assigned, if any).
const SK_PASS: u32 = 1;

#[sk_lookup]
pub fn sluice_sk_lookup(ctx: SkLookupContext) -> u32 {
    match try_sk_lookup(&ctx) {
        Ok(v) => v,
        Err(v) => v,
    }
}

#[inline(always)]
fn try_sk_lookup(ctx: &SkLookupContext) -> Result<u32, u32> {
    let l = ctx.lookup;
    // SAFETY: ctx fields readable by sk_lookup programs.
    let (family, proto, laddr, lport, raddr, rport) = unsafe {
        (
            (*l).family,
            (*l).protocol as u8,
            (*l).local_ip4,
            (*l).local_port as u16,
            (*l).remote_ip4,
            (*l).remote_port,
        )
    };
    if family != AF_INET {
        return Ok(SK_PASS);
    }
    let mut key = ListenerKey {
        addr: laddr,
        port: lport.to_be(),
        proto,
        pad: 0,
    };
    // SAFETY: read-only copies of map values.
    let slot = match unsafe { LISTENERS.get(&key) } {
        Some(s) => *s,
        None => {
            key.addr = 0;
            match unsafe { LISTENERS.get(&key) } {
                Some(s) => *s,
                None => return Ok(SK_PASS),
            }
        }
    };
    // No proxy socket registered in that slot (yet): the regular socket lookup decides.
    // SAFETY: the sockmap is only used through helpers that take the map pointer.
    let socks = unsafe { &mut *addr_of_mut!(PROXY_SOCKS) };
    socks
        .redirect_sk_lookup(ctx, slot, 0)
        .map_err(|_| SK_PASS)?;
    if proto == PROTO_TCP {
        emit(&FlowEvent {
            kind: EventKind::SkLookupRedirect as u8,
            proto,
            verdict: Verdict::Redirected as u8,
            src_addr: raddr,
            src_port: rport,
            dst_addr: laddr,
            dst_port: lport.to_be(),
            ..FlowEvent::default()
        });
    }
    Ok(SK_PASS)
}
