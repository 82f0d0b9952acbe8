//! Map definitions. Names match `sluice_ebpf_common::maps`; all are pinned by name so a
//! restarted loader adopts them. Sizes marked "set at load" are placeholders the loader
//! overrides.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, SockHash, SockMap},
};
use sluice_ebpf_common::{
    AffinityKey, AffinityValue, Backend, COUNTERS, Config, CtForward, CtKey, CtReply, FragKey,
    FragPorts, ListenerKey, OrigDst, OrigDstKey, ServiceKey, ServiceValue, SockKey, SockRevKey,
    SockRevValue, TableMeta,
};

#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(16384, 0);

#[map]
pub static BACKENDS: HashMap<u32, Backend> = HashMap::pinned(65536, 0);

/// Set at load: maglev_tables * maglev_table_size.
#[map]
pub static MAGLEV: Array<u32> = Array::pinned(1, 0);

/// Set at load: maglev_tables.
#[map]
pub static MAGLEV_META: Array<TableMeta> = Array::pinned(1, 0);

#[map]
pub static CONFIG: Array<Config> = Array::pinned(1, 0);

#[map]
pub static NODE_ADDRS: HashMap<u32, u32> = HashMap::pinned(256, 0);

#[map]
pub static LOCAL_NETS: LpmTrie<u32, u32> = LpmTrie::pinned(256, BPF_F_NO_PREALLOC);

#[map]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(65536, 0);

#[map]
pub static SOCK_REVNAT: LruHashMap<SockRevKey, SockRevValue> = LruHashMap::pinned(65536, 0);

#[map]
pub static SOCK_ORIG: LruHashMap<u64, OrigDst> = LruHashMap::pinned(16384, 0);

#[map]
pub static ORIG_DST: LruHashMap<OrigDstKey, OrigDst> = LruHashMap::pinned(65536, 0);

#[map]
pub static CT_FWD: LruHashMap<CtKey, CtForward> = LruHashMap::pinned(65536, 0);

#[map]
pub static CT_REV: LruHashMap<CtKey, CtReply> = LruHashMap::pinned(65536, 0);

#[map]
pub static FRAGS: LruHashMap<FragKey, FragPorts> = LruHashMap::pinned(8192, 0);

#[map]
pub static LISTENERS: HashMap<ListenerKey, u32> = HashMap::pinned(1024, 0);

#[map]
pub static mut PROXY_SOCKS: SockMap = SockMap::pinned(256, 0);

#[map]
pub static SOCK_HASH: SockHash<SockKey> = SockHash::pinned(65536, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::pinned(1 << 20, 0);

#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTERS, 0);
