//! Helpers shared by the programs: configuration, counters, flow events, backend selection.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_ktime_get_ns,
    maps::lpm_trie::Key,
};
use sluice_ebpf_common::{
    AffinityKey, AffinityValue, BACKEND_TERMINATING, Backend, CONFIG_EVENTS, Config, Counter,
    FlowEvent, ServiceValue,
};

use crate::maps::{AFFINITY, BACKENDS, CONFIG, EVENTS, LOCAL_NETS, MAGLEV, NODE_ADDRS, STATS};

/// The loader's configuration (absent only before the loader wrote it).
#[inline(always)]
pub fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn count(c: Counter) {
    if let Some(p) = STATS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

/// Pending ring buffer bytes that wake the reader (about 100 events).
const WAKEUP_BYTES: u64 = 4096;

/// Sends a flow event to user space (when enabled); counts it as lost when the ring is full.
#[inline(always)]
pub fn emit(ev: &FlowEvent) {
    let enabled = match config() {
        Some(c) => c.flags & CONFIG_EVENTS != 0,
        None => false,
    };
    if !enabled {
        return;
    }
    let mut e = *ev;
    // SAFETY: helper without preconditions.
    e.ts_ns = unsafe { bpf_ktime_get_ns() };
    // Wake the reader only once a batch is pending: a wakeup per event would put a
    // context switch on every connection. The reader also drains on its poll timeout.
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let flags = if pending >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if EVENTS.output(&e, flags as u64).is_err() {
        count(Counter::EventsLost);
    }
}

/// True for 127.0.0.0/8.
#[inline(always)]
pub fn is_loopback(addr: u32) -> bool {
    addr.to_ne_bytes()[0] == 127
}

/// True for an address of this node (NodePorts answer on it).
#[inline(always)]
pub fn is_node_addr(addr: u32) -> bool {
    is_loopback(addr) || NODE_ADDRS.get_ptr(&addr).is_some()
}

/// True when a socket peer lives on this node (loopback, node address or local network).
#[inline(always)]
pub fn is_node_local(addr: u32) -> bool {
    if is_node_addr(addr) {
        return true;
    }
    LOCAL_NETS.get(&Key::new(32, addr)).is_some()
}

/// Picks a backend of a service: the Maglev table slot for `hash`.
#[inline(always)]
pub fn maglev_pick(svc: &ServiceValue, hash: u32) -> Option<(u32, Backend)> {
    let cfg = config()?;
    let m = cfg.maglev_table_size;
    if m == 0 || svc.table >= cfg.maglev_tables {
        return None;
    }
    let idx = svc.table * m + hash % m;
    let id = *MAGLEV.get(idx)?;
    // SAFETY: read-only copy of a map value.
    let be = unsafe { *BACKENDS.get(&id)? };
    Some((id, be))
}

/// The backend a client is pinned to by sessionAffinity, if still valid (refreshes its time).
#[inline(always)]
pub fn affinity_get(key: &AffinityKey, timeout_s: u32) -> Option<(u32, Backend)> {
    let v = AFFINITY.get_ptr_mut(key)?;
    // SAFETY: map value pointer from a successful lookup.
    let (last, id) = unsafe { ((*v).last_used_ns, (*v).backend_id) };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(last) > (timeout_s as u64) * 1_000_000_000 {
        return None;
    }
    // SAFETY: read-only copy of a map value.
    let be = unsafe { *BACKENDS.get(&id)? };
    if be.flags & BACKEND_TERMINATING != 0 {
        return None;
    }
    // SAFETY: as above; a racing update only refreshes the same timestamp.
    unsafe { (*v).last_used_ns = now };
    Some((id, be))
}

/// Records a client's backend for sessionAffinity.
#[inline(always)]
pub fn affinity_set(key: &AffinityKey, backend_id: u32) {
    let v = AffinityValue {
        // SAFETY: helper without preconditions.
        last_used_ns: unsafe { bpf_ktime_get_ns() },
        backend_id,
        pad: 0,
    };
    let _ = AFFINITY.insert(key, &v, 0);
}

/// Chooses a backend: sessionAffinity first (when the service has it), then Maglev.
#[inline(always)]
pub fn choose(svc: &ServiceValue, aff: &AffinityKey, hash: u32) -> Option<(u32, Backend)> {
    let affinity = svc.flags & sluice_ebpf_common::SVC_AFFINITY != 0 && svc.affinity_timeout_s > 0;
    if affinity && let Some(hit) = affinity_get(aff, svc.affinity_timeout_s) {
        return Some(hit);
    }
    let picked = maglev_pick(svc, hash)?;
    if affinity {
        affinity_set(aff, picked.0);
    }
    Some(picked)
}

/// murmur3's 32-bit finalizer.
#[inline(always)]
fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Hash of a 5-tuple (for Maglev and SNAT port choice).
#[inline(always)]
pub fn flow_hash(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> u32 {
    let mut h = fmix(saddr ^ 0x9e37_79b9);
    h = fmix(h ^ daddr);
    h = fmix(h ^ (((sport as u32) << 16) | dport as u32));
    fmix(h ^ proto as u32)
}

/// One's-complement fold of a 32-bit sum.
#[inline(always)]
fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Incremental checksum update (RFC 1624) for a 32-bit field change. Works on the raw
/// in-packet representation of both the checksum and the field.
#[inline(always)]
pub fn csum_replace4(check: u16, from: u32, to: u32) -> u16 {
    let mut s = (!check) as u32;
    s += (!(from as u16)) as u32 + (!((from >> 16) as u16)) as u32;
    s += (to as u16) as u32 + ((to >> 16) as u16) as u32;
    !fold(s)
}

/// Incremental checksum update (RFC 1624) for a 16-bit field change.
#[inline(always)]
pub fn csum_replace2(check: u16, from: u16, to: u16) -> u16 {
    let s = (!check) as u32 + (!from) as u32 + to as u32;
    !fold(s)
}
