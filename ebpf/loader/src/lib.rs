//! Loads Sluice's eBPF programs, attaches them (cgroup socket-LB and sock_ops, tc on the node
//! interface, sk_lookup, sk_msg), pins their maps and links under bpffs so traffic keeps
//! flowing across agent restarts, and syncs the maps from IR snapshots without a window where a
//! Service has no backends.
//!
//! ```no_run
//! # fn main() -> Result<(), sluice_ebpf_loader::LoaderError> {
//! use sluice_ebpf_loader::{Datapath, DatapathOptions};
//! let mut dp = Datapath::load(DatapathOptions {
//!     iface: Some("eth0".into()),
//!     ..DatapathOptions::default()
//! })?;
//! let report = dp.sync(&sluice_ir::Snapshot::default())?;
//! println!("{report}");
//! dp.detach()?;
//! # Ok(()) }
//! ```
#![allow(unsafe_code)]

mod events;
pub mod maglev;
mod plan;
mod sys;

pub use events::{CounterLabels, FlowEvents, FlowLabels, FlowMetrics, FlowRecord, ServiceNames};
pub use plan::ProxyTarget;
pub use sluice_ebpf_common::{EventKind, Verdict};

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{
    Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, RingBuf, SockHash, SockMap,
};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::SchedClassifierLink;
use aya::programs::{
    CgroupAttachMode, CgroupSockAddr, ProgramError, SchedClassifier, SkLookup, SkMsg, SockOps,
    TcAttachType,
};
use aya::{Ebpf, EbpfLoader};
use ipnet::Ipv4Net;
use plan::{BackendAddr, Plan, SetId};
use sluice_ebpf_common::{
    BACKEND_LOCAL, BACKEND_TERMINATING, Backend, CONFIG_EVENTS, CONFIG_SOCKMAP, Config, Counter,
    ListenerKey, OrigDst, OrigDstKey, ServiceKey, ServiceValue, SockKey, TableMeta, ip4, maps,
    programs,
};
use sluice_ir::{Snapshot, Transport};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Errors of the loader. Each says what was being done and to what.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The kernel object file does not exist.
    #[error(
        "eBPF object {path} not found: build it with `cargo xtask ebpf` (or point \
         DatapathOptions::object / SLUICE_EBPF_OBJECT at it)"
    )]
    ObjectMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// Loading needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN).
    #[error("loading eBPF programs needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)")]
    NotRoot,
    /// An option is out of range.
    #[error("invalid datapath option {option}: {reason}")]
    InvalidOption {
        /// The option's field name.
        option: &'static str,
        /// Why.
        reason: String,
    },
    /// The object could not be loaded (ELF, BTF, map creation).
    #[error("loading eBPF object {path}: {source}")]
    Load {
        /// The object.
        path: PathBuf,
        /// aya's error.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// A program could not be loaded into the kernel (verifier) or attached.
    #[error("eBPF program {program} ({action}): {source}")]
    Program {
        /// Program name.
        program: &'static str,
        /// What was being done (`load`, `attach to cgroup /sys/fs/cgroup/x`, ...).
        action: String,
        /// aya's error (the verifier log for load failures).
        #[source]
        source: Box<ProgramError>,
    },
    /// A map operation failed.
    #[error("eBPF map {map} ({action}): {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// What was being done.
        action: String,
        /// aya's error.
        #[source]
        source: Box<MapError>,
    },
    /// A link could not be converted or pinned.
    #[error("eBPF program {program} ({action}): {source}")]
    Link {
        /// Program name.
        program: &'static str,
        /// What was being done.
        action: String,
        /// aya's error.
        #[source]
        source: Box<aya::programs::links::LinkError>,
    },
    /// A file system or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Every Maglev table is in use.
    #[error(
        "all {tables} Maglev tables are in use (one per distinct backend set plus one per set \
         changing in a sync): raise DatapathOptions::maglev_tables"
    )]
    TablesExhausted {
        /// The configured number of tables.
        tables: u32,
    },
    /// More proxy sockets than the sockmap holds.
    #[error("more than {slots} proxy sockets registered")]
    ProxySlotsExhausted {
        /// Capacity of the proxy sockmap.
        slots: u32,
    },
    /// The flow event reader was already handed out.
    #[error("the flow event reader was already taken from this datapath")]
    EventsTaken,
    /// The operation is not supported (e.g. IPv6).
    #[error("unsupported: {0}")]
    Unsupported(String),
}

fn map_err(map: &'static str, action: impl Into<String>) -> impl FnOnce(MapError) -> LoaderError {
    let action = action.into();
    move |e| LoaderError::Map {
        map,
        action,
        source: Box::new(e),
    }
}

fn prog_err(
    program: &'static str,
    action: impl Into<String>,
) -> impl FnOnce(ProgramError) -> LoaderError {
    let action = action.into();
    move |e| LoaderError::Program {
        program,
        action,
        source: Box::new(e),
    }
}

fn link_err(
    program: &'static str,
    action: impl Into<String>,
) -> impl FnOnce(aya::programs::links::LinkError) -> LoaderError {
    let action = action.into();
    move |e| LoaderError::Link {
        program,
        action,
        source: Box::new(e),
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LoaderError {
    let what = what.into();
    move |source| LoaderError::Io { what, source }
}

/// Where `cargo xtask ebpf` puts the kernel object (overridden by `SLUICE_EBPF_OBJECT`).
pub fn default_object_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_EBPF_OBJECT") {
        return PathBuf::from(p);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .map(|root| root.join("target/bpf/sluice.bpf.o"))
        .unwrap_or_else(|| PathBuf::from("target/bpf/sluice.bpf.o"))
}

/// The cgroup v2 hierarchy: `/sys/fs/cgroup/unified` on hybrid systems, else `/sys/fs/cgroup`.
pub fn default_cgroup() -> PathBuf {
    let unified = Path::new("/sys/fs/cgroup/unified");
    if unified.join("cgroup.procs").exists() {
        unified.to_path_buf()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

/// How to load the datapath.
#[derive(Debug, Clone)]
pub struct DatapathOptions {
    /// The kernel object built by `cargo xtask ebpf`. Default: [`default_object_path`].
    pub object: PathBuf,
    /// cgroup v2 directory the socket-LB and sock_ops programs attach to; they apply to every
    /// process below it. Default: [`default_cgroup`] (the whole node).
    pub cgroup: PathBuf,
    /// Node interface for the tc NodePort/external IP balancer; `None` = no tc programs.
    pub iface: Option<String>,
    /// bpffs directory for pinned maps and links (a `v1` layout directory is created below
    /// it). Default: `/sys/fs/bpf/sluice`.
    pub pin_dir: PathBuf,
    /// Slots per Maglev table; must be a prime, ideally > 100 × the largest backend set.
    /// Default: 16381.
    pub maglev_table_size: u32,
    /// Number of Maglev tables (distinct backend sets, plus headroom for those changing in one
    /// sync). Memory: `maglev_tables × maglev_table_size × 4` bytes. Default: 256.
    pub maglev_tables: u32,
    /// Network namespace of the node (a file such as `/var/run/netns/NAME`) where `iface`
    /// lives and where sk_lookup attaches; `None` = the loader's own.
    pub netns: Option<PathBuf>,
    /// Attach the socket-LB (cgroup connect4/sendmsg4/recvmsg4/getpeername4). Default: true.
    pub socket_lb: bool,
    /// Attach sk_lookup (Gateway listener and L7 steering to proxy sockets). Default: true.
    pub sk_lookup: bool,
    /// Attach sock_ops + sk_msg and accelerate node-local TCP with the sockmap. Default: true.
    pub sockmap: bool,
    /// Emit flow events to the ring buffer. Default: true.
    pub flow_events: bool,
    /// Pod networks of this node: their endpoints count as local (externalTrafficPolicy
    /// Local) and their sockets are sockmap-accelerated. Empty (default) = every endpoint is
    /// local (single-node) and only loopback/node addresses are accelerated.
    pub local_cidrs: Vec<Ipv4Net>,
    /// Extra addresses NodePorts answer on, besides the node's interface addresses (which are
    /// discovered in `netns`). Default: none.
    pub node_addresses: Vec<Ipv4Addr>,
    /// Source address for SNATed NodePort flows; `None` (default) = the address the client
    /// sent to.
    pub snat_addr: Option<Ipv4Addr>,
    /// Port range (inclusive) for SNATed NodePort flows; keep it outside the node's
    /// `ip_local_port_range`. Default: 61000–65000.
    pub snat_ports: (u16, u16),
}

impl Default for DatapathOptions {
    fn default() -> Self {
        DatapathOptions {
            object: default_object_path(),
            cgroup: default_cgroup(),
            iface: None,
            pin_dir: PathBuf::from("/sys/fs/bpf/sluice"),
            maglev_table_size: sluice_ebpf_common::DEFAULT_MAGLEV_TABLE_SIZE,
            maglev_tables: 256,
            netns: None,
            socket_lb: true,
            sk_lookup: true,
            sockmap: true,
            flow_events: true,
            local_cidrs: Vec::new(),
            node_addresses: Vec::new(),
            snat_addr: None,
            snat_ports: (61000, 65000),
        }
    }
}

/// What a [`Datapath::sync`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Snapshot version applied.
    pub version: u64,
    /// Frontends (ClusterIP, external IP, NodePort entries) now in the datapath.
    pub frontends: usize,
    /// Frontends added or changed.
    pub frontends_changed: usize,
    /// Frontends removed.
    pub frontends_removed: usize,
    /// Backends (endpoint addresses) known.
    pub backends: usize,
    /// Maglev tables built in this sync.
    pub tables_built: usize,
    /// Maglev tables in use.
    pub tables_in_use: usize,
    /// sk_lookup redirects (listeners and L7 frontends).
    pub redirects: usize,
    /// Redirects whose proxy socket is not registered yet.
    pub redirects_unbound: usize,
    /// What could not be projected (IPv6, missing clusters, duplicate frontends).
    pub warnings: Vec<String>,
}

impl fmt::Display for SyncReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "version {}: {} frontends ({} changed, {} removed), {} backends, {} Maglev tables \
             ({} built), {} redirects ({} without proxy socket), {} warnings",
            self.version,
            self.frontends,
            self.frontends_changed,
            self.frontends_removed,
            self.backends,
            self.tables_in_use,
            self.tables_built,
            self.redirects,
            self.redirects_unbound,
            self.warnings.len()
        )
    }
}

/// Kernel-side counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DatapathCounters {
    /// Flow events lost because the ring buffer was full.
    pub events_lost: u64,
    /// Packets dropped because their frontend had no backend.
    pub no_backend: u64,
    /// Later fragments passed untranslated (first fragment not seen).
    pub frag_miss: u64,
    /// NodePort flows dropped for lack of a free SNAT port.
    pub snat_exhausted: u64,
    /// Conntrack insertions that failed.
    pub ct_insert_failed: u64,
    /// Packets the tc programs could not translate.
    pub tc_errors: u64,
    /// Messages the sockmap moved socket to socket.
    pub sockmap_redirected: u64,
    /// Messages of sockmap sockets that took the TCP path (peer not in the map).
    pub sockmap_passed: u64,
}

impl DatapathCounters {
    /// `(name, value)` pairs, names as in the metrics.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("events_lost", self.events_lost),
            ("no_backend", self.no_backend),
            ("frag_miss", self.frag_miss),
            ("snat_exhausted", self.snat_exhausted),
            ("ct_insert_failed", self.ct_insert_failed),
            ("tc_errors", self.tc_errors),
            ("sockmap_redirected", self.sockmap_redirected),
            ("sockmap_passed", self.sockmap_passed),
        ]
        .into_iter()
    }
}

/// Capacity of the proxy socket map (must match ebpf/programs).
const PROXY_SLOTS: u32 = 256;

/// Userspace mirror of what the maps hold, rebuilt from the pinned maps on load.
#[derive(Debug, Default)]
struct State {
    backend_ids: HashMap<BackendAddr, u32>,
    next_backend_id: u32,
    /// content hash -> table index, for tables in use.
    table_by_hash: HashMap<u64, u32>,
    /// table index -> content hash.
    hash_by_table: HashMap<u32, u64>,
    free_tables: VecDeque<u32>,
    revision: u32,
    proxy_slots: HashMap<ProxyTarget, u32>,
    bound_slots: HashSet<u32>,
}

/// The loaded, attached datapath.
pub struct Datapath {
    ebpf: Ebpf,
    opts: DatapathOptions,
    maps_dir: PathBuf,
    links_dir: PathBuf,
    links: Vec<(PathBuf, PinnedLink)>,
    sk_msg_link: Option<aya::programs::sk_msg::SkMsgLink>,
    state: State,
    names: ServiceNames,
    detached: bool,
}

impl fmt::Debug for Datapath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Datapath")
            .field("opts", &self.opts)
            .field("maps_dir", &self.maps_dir)
            .field(
                "links",
                &self.links.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Datapath {
    /// Loads the object, adopts pinned maps left by a previous run (so established flows keep
    /// their conntrack and backends), attaches the programs (replacing a previous run's
    /// attachments without a gap) and pins the links.
    pub fn load(opts: DatapathOptions) -> Result<Datapath, LoaderError> {
        if !opts.object.exists() {
            return Err(LoaderError::ObjectMissing {
                path: opts.object.clone(),
            });
        }
        if !sys::is_root() {
            return Err(LoaderError::NotRoot);
        }
        if !maglev::is_prime(opts.maglev_table_size) {
            return Err(LoaderError::InvalidOption {
                option: "maglev_table_size",
                reason: format!("{} is not a prime", opts.maglev_table_size),
            });
        }
        let total = opts.maglev_tables as u64 * opts.maglev_table_size as u64;
        if opts.maglev_tables == 0 || total > (1 << 28) {
            return Err(LoaderError::InvalidOption {
                option: "maglev_tables",
                reason: format!(
                    "{} tables of {} slots: need at least 1 and at most 2^28 slots in all",
                    opts.maglev_tables, opts.maglev_table_size
                ),
            });
        }
        if opts.snat_ports.0 == 0 || opts.snat_ports.0 > opts.snat_ports.1 {
            return Err(LoaderError::InvalidOption {
                option: "snat_ports",
                reason: format!(
                    "{}-{} is not a port range",
                    opts.snat_ports.0, opts.snat_ports.1
                ),
            });
        }

        let base = opts.pin_dir.join(sluice_ebpf_common::LAYOUT);
        sys::ensure_bpffs(&base).map_err(io_err("mounting bpffs at /sys/fs/bpf"))?;
        let maps_dir = base.join("maps");
        let links_dir = base.join("links");
        for d in [&maps_dir, &links_dir] {
            std::fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
        }
        if !sys::is_bpffs(&maps_dir) {
            return Err(LoaderError::InvalidOption {
                option: "pin_dir",
                reason: format!("{} is not on a bpf filesystem", maps_dir.display()),
            });
        }
        // Maglev maps pinned with another geometry cannot be reused: start them afresh (the
        // programs of the previous run keep their own copy until they are replaced below).
        let want = [
            (maps::MAGLEV, total as u32),
            (maps::MAGLEV_META, opts.maglev_tables),
        ];
        let mut geometry_changed = false;
        for (name, entries) in want {
            let p = maps_dir.join(name);
            if let Ok(info) = aya::maps::MapInfo::from_pin(&p)
                && info.max_entries() != entries
            {
                geometry_changed = true;
            }
        }
        if geometry_changed {
            tracing::warn!(
                dir = %maps_dir.display(),
                "Maglev geometry changed since the pinned maps were created; rebuilding tables"
            );
            for (name, _) in want {
                let _ = std::fs::remove_file(maps_dir.join(name));
            }
            // The services point at old table indexes; they are rewritten by the next sync.
        }

        let ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .map_max_entries(maps::MAGLEV, total as u32)
            .map_max_entries(maps::MAGLEV_META, opts.maglev_tables)
            .load_file(&opts.object)
            .map_err(|e| LoaderError::Load {
                path: opts.object.clone(),
                source: Box::new(e),
            })?;

        let mut dp = Datapath {
            ebpf,
            opts,
            maps_dir,
            links_dir,
            links: Vec::new(),
            sk_msg_link: None,
            state: State::default(),
            names: Arc::new(RwLock::new(HashMap::new())),
            detached: false,
        };
        dp.write_config()?;
        dp.write_node_addresses()?;
        dp.write_local_nets()?;
        dp.adopt()?;
        dp.attach_all()?;
        Ok(dp)
    }

    /// The options this datapath was loaded with.
    pub fn options(&self) -> &DatapathOptions {
        &self.opts
    }

    fn write_config(&mut self) -> Result<(), LoaderError> {
        let mut flags = 0;
        if self.opts.sockmap {
            flags |= CONFIG_SOCKMAP;
        }
        if self.opts.flow_events {
            flags |= CONFIG_EVENTS;
        }
        let cfg = Config {
            maglev_table_size: self.opts.maglev_table_size,
            maglev_tables: self.opts.maglev_tables,
            flags,
            snat_addr: self.opts.snat_addr.map(|a| ip4(a.octets())).unwrap_or(0),
            snat_port_min: self.opts.snat_ports.0,
            snat_port_max: self.opts.snat_ports.1,
            pad: 0,
        };
        let mut a: Array<&mut MapData, Config> = Array::try_from(
            self.ebpf
                .map_mut(maps::CONFIG)
                .ok_or(missing(maps::CONFIG))?,
        )
        .map_err(map_err(maps::CONFIG, "open"))?;
        a.set(0, cfg, 0).map_err(map_err(maps::CONFIG, "write"))
    }

    /// Refreshes the node addresses NodePorts answer on (the interfaces of the node's network
    /// namespace plus [`DatapathOptions::node_addresses`]).
    pub fn write_node_addresses(&mut self) -> Result<(), LoaderError> {
        let found = sys::in_netns(self.opts.netns.as_deref(), sys::ipv4_addrs)
            .and_then(|r| r)
            .map_err(io_err("listing the node's interface addresses"))?;
        let mut want: BTreeSet<u32> = found
            .iter()
            .filter(|(_, a)| !a.is_loopback())
            .map(|(_, a)| ip4(a.octets()))
            .collect();
        want.extend(self.opts.node_addresses.iter().map(|a| ip4(a.octets())));
        let mut m: BpfHashMap<&mut MapData, u32, u32> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(maps::NODE_ADDRS)
                .ok_or(missing(maps::NODE_ADDRS))?,
        )
        .map_err(map_err(maps::NODE_ADDRS, "open"))?;
        let have: Vec<u32> = m.keys().filter_map(Result::ok).collect();
        for a in &want {
            m.insert(a, 1, 0)
                .map_err(map_err(maps::NODE_ADDRS, "insert"))?;
        }
        for a in have {
            if !want.contains(&a) {
                let _ = m.remove(&a);
            }
        }
        Ok(())
    }

    fn write_local_nets(&mut self) -> Result<(), LoaderError> {
        let mut t: LpmTrie<&mut MapData, u32, u32> = LpmTrie::try_from(
            self.ebpf
                .map_mut(maps::LOCAL_NETS)
                .ok_or(missing(maps::LOCAL_NETS))?,
        )
        .map_err(map_err(maps::LOCAL_NETS, "open"))?;
        let have: Vec<LpmKey<u32>> = t.keys().filter_map(Result::ok).collect();
        for k in have {
            let _ = t.remove(&k);
        }
        for net in &self.opts.local_cidrs {
            let key = LpmKey::new(net.prefix_len() as u32, ip4(net.network().octets()));
            t.insert(&key, 1, 0)
                .map_err(map_err(maps::LOCAL_NETS, "insert"))?;
        }
        Ok(())
    }

    /// Rebuilds the userspace mirror from pinned maps (a previous run's state, or empty).
    fn adopt(&mut self) -> Result<(), LoaderError> {
        let backends: BpfHashMap<&MapData, u32, Backend> = BpfHashMap::try_from(
            self.ebpf
                .map(maps::BACKENDS)
                .ok_or(missing(maps::BACKENDS))?,
        )
        .map_err(map_err(maps::BACKENDS, "open"))?;
        let mut next = 1;
        for item in backends.iter() {
            let (id, b) = item.map_err(map_err(maps::BACKENDS, "read"))?;
            let addr = BackendAddr {
                addr: Ipv4Addr::from(b.addr.to_ne_bytes()),
                port: u16::from_be(b.port),
            };
            self.state.backend_ids.insert(addr, id);
            next = next.max(id + 1);
        }
        self.state.next_backend_id = next;

        let meta: Array<&MapData, TableMeta> = Array::try_from(
            self.ebpf
                .map(maps::MAGLEV_META)
                .ok_or(missing(maps::MAGLEV_META))?,
        )
        .map_err(map_err(maps::MAGLEV_META, "open"))?;
        for i in 0..self.opts.maglev_tables {
            let m = meta
                .get(&i, 0)
                .map_err(map_err(maps::MAGLEV_META, "read"))?;
            if m.in_use != 0 && !self.state.table_by_hash.contains_key(&m.content_hash) {
                self.state.table_by_hash.insert(m.content_hash, i);
                self.state.hash_by_table.insert(i, m.content_hash);
            } else {
                self.state.free_tables.push_back(i);
            }
        }

        let services: BpfHashMap<&MapData, ServiceKey, ServiceValue> = BpfHashMap::try_from(
            self.ebpf
                .map(maps::SERVICES)
                .ok_or(missing(maps::SERVICES))?,
        )
        .map_err(map_err(maps::SERVICES, "open"))?;
        for item in services.iter() {
            let (_, v) = item.map_err(map_err(maps::SERVICES, "read"))?;
            self.state.revision = self.state.revision.max(v.revision);
        }
        if !self.state.backend_ids.is_empty() || !self.state.table_by_hash.is_empty() {
            tracing::info!(
                backends = self.state.backend_ids.len(),
                tables = self.state.table_by_hash.len(),
                "adopted pinned eBPF datapath state"
            );
        }
        Ok(())
    }

    fn attach_all(&mut self) -> Result<(), LoaderError> {
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut keep: Vec<PathBuf> = Vec::new();

        if self.opts.socket_lb || self.opts.sockmap {
            let cgroup = File::open(&self.opts.cgroup).map_err(io_err(format!(
                "opening cgroup {}",
                self.opts.cgroup.display()
            )))?;
            let cg = self.opts.cgroup.display().to_string();
            if self.opts.socket_lb {
                for name in [
                    programs::CONNECT4,
                    programs::SENDMSG4,
                    programs::RECVMSG4,
                    programs::GETPEERNAME4,
                ] {
                    let prog: &mut CgroupSockAddr = self
                        .ebpf
                        .program_mut(name)
                        .ok_or(missing_prog(name))?
                        .try_into()
                        .map_err(prog_err(name, "type"))?;
                    prog.load().map_err(prog_err(name, "load"))?;
                    // bpf_link attachments to a cgroup always coexist with others (the flags
                    // must be 0, which is what `Single` maps to).
                    let id = prog
                        .attach(&cgroup, CgroupAttachMode::Single)
                        .map_err(prog_err(name, format!("attach to cgroup {cg}")))?;
                    let link = prog.take_link(id).map_err(prog_err(name, "take link"))?;
                    let fd: FdLink = link.try_into().map_err(link_err(name, "link"))?;
                    keep.push(self.pin(name, &format!("{name}@{generation}"), fd)?);
                }
            }
            if self.opts.sockmap {
                let name = programs::SOCK_OPS;
                let prog: &mut SockOps = self
                    .ebpf
                    .program_mut(name)
                    .ok_or(missing_prog(name))?
                    .try_into()
                    .map_err(prog_err(name, "type"))?;
                prog.load().map_err(prog_err(name, "load"))?;
                let id = prog
                    .attach(&cgroup, CgroupAttachMode::Single)
                    .map_err(prog_err(name, format!("attach to cgroup {cg}")))?;
                let link = prog.take_link(id).map_err(prog_err(name, "take link"))?;
                let fd: FdLink = link.try_into().map_err(link_err(name, "link"))?;
                keep.push(self.pin(name, &format!("{name}@{generation}"), fd)?);

                let hash_fd = {
                    let h: SockHash<&MapData, SockKey> = SockHash::try_from(
                        self.ebpf
                            .map(maps::SOCK_HASH)
                            .ok_or(missing(maps::SOCK_HASH))?,
                    )
                    .map_err(map_err(maps::SOCK_HASH, "open"))?;
                    h.fd()
                        .try_clone()
                        .map_err(io_err("duplicating the sockhash fd"))?
                };
                let name = programs::SK_MSG;
                let prog: &mut SkMsg = self
                    .ebpf
                    .program_mut(name)
                    .ok_or(missing_prog(name))?
                    .try_into()
                    .map_err(prog_err(name, "type"))?;
                prog.load().map_err(prog_err(name, "load"))?;
                // Replaces the previous run's program on the pinned sockhash, if any.
                let id = prog
                    .attach(&hash_fd)
                    .map_err(prog_err(name, "attach to the sockhash"))?;
                self.sk_msg_link = Some(prog.take_link(id).map_err(prog_err(name, "take link"))?);
            }
        }

        if let Some(iface) = self.opts.iface.clone() {
            for (name, dir, tag) in [
                (programs::TC_INGRESS, TcAttachType::Ingress, "ingress"),
                (programs::TC_EGRESS, TcAttachType::Egress, "egress"),
            ] {
                let base = format!("tc-{tag}-{iface}");
                let old = self.find_pins(&base).into_iter().next();
                let prog: &mut SchedClassifier = self
                    .ebpf
                    .program_mut(name)
                    .ok_or(missing_prog(name))?
                    .try_into()
                    .map_err(prog_err(name, "type"))?;
                prog.load().map_err(prog_err(name, "load"))?;
                let netns = self.opts.netns.clone();
                let iface2 = iface.clone();
                let fd: FdLink =
                    sys::in_netns(netns.as_deref(), || -> Result<FdLink, LoaderError> {
                        // Atomically swap the program of the previous run's link when there is one.
                        let previous = old
                            .and_then(|p| PinnedLink::from_pin(p).ok())
                            .and_then(|pl| SchedClassifierLink::try_from(FdLink::from(pl)).ok());
                        let id = match previous {
                            Some(link) => prog
                                .attach_to_link(link)
                                .map_err(prog_err(name, format!("replace on {iface2}")))?,
                            None => prog
                                .attach(&iface2, dir)
                                .map_err(prog_err(name, format!("attach to {iface2}")))?,
                        };
                        let link = prog.take_link(id).map_err(prog_err(name, "take link"))?;
                        link.try_into().map_err(link_err(
                            name,
                            format!("link on {iface2} (needs tcx, kernel >= 6.6)"),
                        ))
                    })
                    .map_err(io_err("entering the node network namespace"))??;
                keep.push(self.pin(name, &format!("{base}@{generation}"), fd)?);
            }
        }

        if self.opts.sk_lookup {
            let name = programs::SK_LOOKUP;
            let ns_path = self
                .opts
                .netns
                .clone()
                .unwrap_or_else(|| PathBuf::from("/proc/thread-self/ns/net"));
            let netns = File::open(&ns_path).map_err(io_err(format!(
                "opening network namespace {}",
                ns_path.display()
            )))?;
            let prog: &mut SkLookup = self
                .ebpf
                .program_mut(name)
                .ok_or(missing_prog(name))?
                .try_into()
                .map_err(prog_err(name, "type"))?;
            prog.load().map_err(prog_err(name, "load"))?;
            let id = prog
                .attach(netns.as_fd())
                .map_err(prog_err(name, format!("attach to {}", ns_path.display())))?;
            let link = prog.take_link(id).map_err(prog_err(name, "take link"))?;
            keep.push(self.pin(name, &format!("{name}@{generation}"), FdLink::from(link))?);
        }

        // The new programs are attached: release the previous run's links (detaching them).
        let entries = std::fs::read_dir(&self.links_dir)
            .map_err(io_err(format!("listing {}", self.links_dir.display())))?;
        for e in entries.flatten() {
            let p = e.path();
            if !keep.contains(&p) {
                tracing::debug!(link = %p.display(), "releasing the previous run's link");
                let _ = std::fs::remove_file(&p);
            }
        }
        Ok(())
    }

    fn find_pins(&self, base: &str) -> Vec<PathBuf> {
        let prefix = format!("{base}@");
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.links_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect();
        v.sort();
        v.reverse();
        v
    }

    fn pin(
        &mut self,
        program: &'static str,
        file: &str,
        link: FdLink,
    ) -> Result<PathBuf, LoaderError> {
        let path = self.links_dir.join(file);
        let pinned = link.pin(&path).map_err(|e| LoaderError::Io {
            what: format!("pinning the link of {program} at {}", path.display()),
            source: std::io::Error::other(e.to_string()),
        })?;
        self.links.push((path.clone(), pinned));
        Ok(path)
    }

    /// Applies a snapshot: backends first, then new Maglev tables, then the frontends that
    /// point at them (one atomic map update each), then removal of what is gone. A frontend
    /// switches from its complete old table to its complete new one, never through an empty
    /// or partial one.
    pub fn sync(&mut self, snapshot: &Snapshot) -> Result<SyncReport, LoaderError> {
        let plan = plan::project(snapshot, &self.opts.local_cidrs);
        for w in &plan.warnings {
            tracing::warn!(warning = %w, "eBPF datapath");
        }
        let mut report = SyncReport {
            version: snapshot.version,
            warnings: plan.warnings.clone(),
            ..SyncReport::default()
        };
        self.write_node_addresses()?;
        self.sync_backends(&plan)?;
        let tables = self.sync_tables(&plan, &mut report)?;
        self.sync_frontends(&plan, &tables, &mut report)?;
        self.sync_redirects(&plan, &mut report)?;
        self.release_tables(&tables)?;
        self.release_backends(&plan)?;
        report.backends = self.state.backend_ids.len();
        report.tables_in_use = self.state.table_by_hash.len();
        if let Ok(mut names) = self.names.write() {
            names.clear();
            for f in &plan.frontends {
                names.insert(f.service_id, f.service.clone());
            }
        }
        tracing::info!(%report, "eBPF datapath synced");
        Ok(report)
    }

    fn sync_backends(&mut self, plan: &Plan) -> Result<(), LoaderError> {
        let mut m: BpfHashMap<&mut MapData, u32, Backend> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(maps::BACKENDS)
                .ok_or(missing(maps::BACKENDS))?,
        )
        .map_err(map_err(maps::BACKENDS, "open"))?;
        for (b, st) in &plan.backends {
            let id = match self.state.backend_ids.get(b) {
                Some(id) => *id,
                None => {
                    let id = self.state.next_backend_id;
                    self.state.next_backend_id += 1;
                    self.state.backend_ids.insert(*b, id);
                    id
                }
            };
            let mut flags = 0;
            if st.terminating {
                flags |= BACKEND_TERMINATING;
            }
            if st.local {
                flags |= BACKEND_LOCAL;
            }
            let v = Backend {
                addr: ip4(b.addr.octets()),
                port: b.port.to_be(),
                flags,
                pad: 0,
            };
            if m.get(&id, 0).ok() != Some(v) {
                m.insert(id, v, 0).map_err(map_err(
                    maps::BACKENDS,
                    format!("write backend {}", b.name()),
                ))?;
            }
        }
        Ok(())
    }

    /// Builds (or reuses) one table per distinct backend set; returns set -> (table, count).
    fn sync_tables(
        &mut self,
        plan: &Plan,
        report: &mut SyncReport,
    ) -> Result<HashMap<SetId, (u32, u32)>, LoaderError> {
        let m = self.opts.maglev_table_size;
        let mut out = HashMap::new();
        for (set, members) in &plan.sets {
            if members.is_empty() {
                out.insert(set.clone(), (0, 0));
                continue;
            }
            let ids: Vec<u32> = members.iter().map(|b| self.state.backend_ids[b]).collect();
            let mut h = Vec::with_capacity(members.len() * 10 + 4);
            h.extend_from_slice(&m.to_le_bytes());
            for (b, id) in members.iter().zip(&ids) {
                h.extend_from_slice(&b.addr.octets());
                h.extend_from_slice(&b.port.to_le_bytes());
                h.extend_from_slice(&id.to_le_bytes());
            }
            let hash = maglev::hash64(&h, 0x7ab1e).max(1);
            if let Some(t) = self.state.table_by_hash.get(&hash) {
                out.insert(set.clone(), (*t, members.len() as u32));
                continue;
            }
            let t = self
                .state
                .free_tables
                .pop_front()
                .ok_or(LoaderError::TablesExhausted {
                    tables: self.opts.maglev_tables,
                })?;
            let names: Vec<String> = members.iter().map(BackendAddr::name).collect();
            let table = maglev::build_table(&names, m);
            {
                let mut arr: Array<&mut MapData, u32> = Array::try_from(
                    self.ebpf
                        .map_mut(maps::MAGLEV)
                        .ok_or(missing(maps::MAGLEV))?,
                )
                .map_err(map_err(maps::MAGLEV, "open"))?;
                let base = t * m;
                for (i, idx) in table.iter().enumerate() {
                    arr.set(base + i as u32, ids[*idx as usize], 0)
                        .map_err(map_err(
                            maps::MAGLEV,
                            format!("write table {t} for cluster {}", set.cluster),
                        ))?;
                }
            }
            let mut meta: Array<&mut MapData, TableMeta> = Array::try_from(
                self.ebpf
                    .map_mut(maps::MAGLEV_META)
                    .ok_or(missing(maps::MAGLEV_META))?,
            )
            .map_err(map_err(maps::MAGLEV_META, "open"))?;
            meta.set(
                t,
                TableMeta {
                    content_hash: hash,
                    backend_count: members.len() as u32,
                    in_use: 1,
                },
                0,
            )
            .map_err(map_err(maps::MAGLEV_META, "write"))?;
            self.state.table_by_hash.insert(hash, t);
            self.state.hash_by_table.insert(t, hash);
            report.tables_built += 1;
            out.insert(set.clone(), (t, members.len() as u32));
        }
        Ok(out)
    }

    fn sync_frontends(
        &mut self,
        plan: &Plan,
        tables: &HashMap<SetId, (u32, u32)>,
        report: &mut SyncReport,
    ) -> Result<(), LoaderError> {
        self.state.revision = self.state.revision.wrapping_add(1);
        let revision = self.state.revision;
        let mut m: BpfHashMap<&mut MapData, ServiceKey, ServiceValue> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(maps::SERVICES)
                .ok_or(missing(maps::SERVICES))?,
        )
        .map_err(map_err(maps::SERVICES, "open"))?;
        let mut want = HashSet::new();
        for f in &plan.frontends {
            let (table, count) = tables.get(&f.set).copied().unwrap_or((0, 0));
            let mut v = ServiceValue {
                service_id: f.service_id,
                flags: f.flags,
                table,
                backend_count: count,
                affinity_timeout_s: f.affinity_timeout_s,
                redirect_addr: f.redirect.map(|a| ip4(a.ip().octets())).unwrap_or(0),
                redirect_port: f.redirect.map(|a| a.port().to_be()).unwrap_or(0),
                pad: 0,
                revision,
            };
            want.insert(f.key);
            if let Ok(old) = m.get(&f.key, 0) {
                v.revision = old.revision;
                if old == v {
                    continue;
                }
                v.revision = revision;
            }
            m.insert(f.key, v, 0).map_err(map_err(
                maps::SERVICES,
                format!("write {} ({})", plan::describe(&f.key), f.service),
            ))?;
            report.frontends_changed += 1;
        }
        let stale: Vec<ServiceKey> = m
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !want.contains(k))
            .collect();
        for k in stale {
            m.remove(&k).map_err(map_err(
                maps::SERVICES,
                format!("remove {}", plan::describe(&k)),
            ))?;
            report.frontends_removed += 1;
        }
        report.frontends = want.len();
        Ok(())
    }

    fn sync_redirects(&mut self, plan: &Plan, report: &mut SyncReport) -> Result<(), LoaderError> {
        let mut want = HashMap::new();
        for r in &plan.redirects {
            let slot = self.slot_for(r.target)?;
            if !self.state.bound_slots.contains(&slot) {
                report.redirects_unbound += 1;
            }
            want.insert(r.key, slot);
        }
        let mut m: BpfHashMap<&mut MapData, ListenerKey, u32> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(maps::LISTENERS)
                .ok_or(missing(maps::LISTENERS))?,
        )
        .map_err(map_err(maps::LISTENERS, "open"))?;
        for (k, slot) in &want {
            if m.get(k, 0).ok() != Some(*slot) {
                m.insert(k, slot, 0)
                    .map_err(map_err(maps::LISTENERS, "write"))?;
            }
        }
        let stale: Vec<ListenerKey> = m
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !want.contains_key(k))
            .collect();
        for k in stale {
            let _ = m.remove(&k);
        }
        report.redirects = want.len();
        Ok(())
    }

    fn slot_for(&mut self, target: ProxyTarget) -> Result<u32, LoaderError> {
        if let Some(s) = self.state.proxy_slots.get(&target) {
            return Ok(*s);
        }
        let used: HashSet<u32> = self.state.proxy_slots.values().copied().collect();
        let slot = (0..PROXY_SLOTS)
            .find(|s| !used.contains(s))
            .ok_or(LoaderError::ProxySlotsExhausted { slots: PROXY_SLOTS })?;
        self.state.proxy_slots.insert(target, slot);
        Ok(slot)
    }

    /// Frees tables no frontend points at any more (after the frontends moved away).
    fn release_tables(&mut self, tables: &HashMap<SetId, (u32, u32)>) -> Result<(), LoaderError> {
        let used: HashSet<u32> = tables
            .values()
            .filter(|(_, n)| *n > 0)
            .map(|(t, _)| *t)
            .collect();
        let unused: Vec<u32> = self
            .state
            .hash_by_table
            .keys()
            .copied()
            .filter(|t| !used.contains(t))
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        let mut meta: Array<&mut MapData, TableMeta> = Array::try_from(
            self.ebpf
                .map_mut(maps::MAGLEV_META)
                .ok_or(missing(maps::MAGLEV_META))?,
        )
        .map_err(map_err(maps::MAGLEV_META, "open"))?;
        for t in unused {
            meta.set(t, TableMeta::default(), 0)
                .map_err(map_err(maps::MAGLEV_META, "free"))?;
            if let Some(h) = self.state.hash_by_table.remove(&t) {
                self.state.table_by_hash.remove(&h);
            }
            // Reused last, so a program that read the old index an instant ago still finds
            // the old contents.
            self.state.free_tables.push_back(t);
        }
        Ok(())
    }

    fn release_backends(&mut self, plan: &Plan) -> Result<(), LoaderError> {
        let gone: Vec<(BackendAddr, u32)> = self
            .state
            .backend_ids
            .iter()
            .filter(|(b, _)| !plan.backends.contains_key(b))
            .map(|(b, id)| (*b, *id))
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        let mut m: BpfHashMap<&mut MapData, u32, Backend> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(maps::BACKENDS)
                .ok_or(missing(maps::BACKENDS))?,
        )
        .map_err(map_err(maps::BACKENDS, "open"))?;
        for (b, id) in gone {
            let _ = m.remove(&id);
            self.state.backend_ids.remove(&b);
        }
        Ok(())
    }

    /// Registers the proxy's socket serving `addr` (a Gateway listener address, or an L7
    /// redirect address of a Service): sk_lookup delivers that destination's connections
    /// (TCP listener) or datagrams (UDP socket) to it, with the client's source and the
    /// original destination intact. Call again after re-binding; a closed socket leaves the
    /// sockmap by itself.
    pub fn register_proxy_listener(
        &mut self,
        addr: SocketAddr,
        listener: &impl AsFd,
    ) -> Result<(), LoaderError> {
        let ty = sys::socket_type(listener.as_fd())
            .map_err(io_err(format!("inspecting the proxy socket for {addr}")))?;
        let transport = match ty {
            libc::SOCK_STREAM => Transport::Tcp,
            libc::SOCK_DGRAM => Transport::Udp,
            other => {
                return Err(LoaderError::Unsupported(format!(
                    "proxy socket for {addr} has type {other}; need a TCP listener or UDP socket"
                )));
            }
        };
        let slot = self.slot_for(ProxyTarget { addr, transport })?;
        let mut m: SockMap<&mut MapData> = SockMap::try_from(
            self.ebpf
                .map_mut(maps::PROXY_SOCKS)
                .ok_or(missing(maps::PROXY_SOCKS))?,
        )
        .map_err(map_err(maps::PROXY_SOCKS, "open"))?;
        let fd = listener.as_fd();
        m.set(slot, &fd, 0).map_err(map_err(
            maps::PROXY_SOCKS,
            format!("register the proxy socket for {addr} (a TCP socket must be listening)"),
        ))?;
        self.state.bound_slots.insert(slot);
        Ok(())
    }

    /// The original destination of a connection the socket-LB redirected to the proxy, as
    /// seen on accept(): `client` is the peer address, `proxy` the local address. `None` when
    /// the connection was not redirected by the socket-LB (for sk_lookup deliveries the
    /// local address already is the original destination).
    pub fn original_destination(
        &self,
        client: SocketAddrV4,
        proxy: SocketAddrV4,
    ) -> Result<Option<(SocketAddrV4, Option<String>)>, LoaderError> {
        let m: BpfHashMap<&MapData, OrigDstKey, OrigDst> = BpfHashMap::try_from(
            self.ebpf
                .map(maps::ORIG_DST)
                .ok_or(missing(maps::ORIG_DST))?,
        )
        .map_err(map_err(maps::ORIG_DST, "open"))?;
        let key = OrigDstKey {
            client_addr: ip4(client.ip().octets()),
            proxy_addr: ip4(proxy.ip().octets()),
            client_port: client.port().to_be(),
            proxy_port: proxy.port().to_be(),
        };
        match m.get(&key, 0) {
            Ok(v) => {
                let dst =
                    SocketAddrV4::new(Ipv4Addr::from(v.addr.to_ne_bytes()), u16::from_be(v.port));
                let name = self
                    .names
                    .read()
                    .ok()
                    .and_then(|n| n.get(&v.service_id).cloned());
                Ok(Some((dst, name)))
            }
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(maps::ORIG_DST, "lookup")(e)),
        }
    }

    /// Takes the flow event reader (once per datapath).
    pub fn flow_events(&mut self) -> Result<FlowEvents, LoaderError> {
        let map = self
            .ebpf
            .take_map(maps::EVENTS)
            .ok_or(LoaderError::EventsTaken)?;
        let ring = RingBuf::try_from(map).map_err(map_err(maps::EVENTS, "open"))?;
        Ok(FlowEvents::new(ring, self.names.clone()))
    }

    /// Service id -> name table used to label flow events.
    pub fn service_names(&self) -> ServiceNames {
        self.names.clone()
    }

    /// Reads the kernel-side counters.
    pub fn counters(&self) -> Result<DatapathCounters, LoaderError> {
        let a: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map(maps::STATS).ok_or(missing(maps::STATS))?)
                .map_err(map_err(maps::STATS, "open"))?;
        read_counters(&a)
    }

    /// A handle on the kernel-side counters of its own (the pinned map), for a thread that
    /// publishes them while the datapath runs.
    pub fn counter_reader(&self) -> Result<CounterReader, LoaderError> {
        let data = MapData::from_pin(self.maps_dir.join(maps::STATS))
            .map_err(map_err(maps::STATS, "open pinned"))?;
        let map = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
            .map_err(map_err(maps::STATS, "open"))?;
        Ok(CounterReader(map))
    }

    /// Number of sockets currently in the sockmap.
    pub fn sockmap_len(&self) -> Result<usize, LoaderError> {
        let h: SockHash<&MapData, SockKey> = SockHash::try_from(
            self.ebpf
                .map(maps::SOCK_HASH)
                .ok_or(missing(maps::SOCK_HASH))?,
        )
        .map_err(map_err(maps::SOCK_HASH, "open"))?;
        Ok(h.keys().filter_map(Result::ok).count())
    }

    /// The bpffs directory holding this datapath's pinned maps.
    pub fn maps_dir(&self) -> &Path {
        &self.maps_dir
    }

    /// Detaches every program, unpins links and maps, and removes the pin directory. After
    /// this, traffic flows as if Sluice had never been loaded (connections the socket-LB
    /// already connected to backends stay connected to them).
    pub fn detach(mut self) -> Result<(), LoaderError> {
        self.detached = true;
        self.sk_msg_link.take();
        for (path, link) in self.links.drain(..) {
            drop(link);
            let _ = std::fs::remove_file(&path);
        }
        // Links pinned by an earlier run that this one did not replace.
        if let Ok(entries) = std::fs::read_dir(&self.links_dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.maps_dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let base = self.maps_dir.parent().map(Path::to_path_buf);
        let _ = std::fs::remove_dir(&self.maps_dir);
        let _ = std::fs::remove_dir(&self.links_dir);
        if let Some(b) = base {
            let _ = std::fs::remove_dir(&b);
            let _ = std::fs::remove_dir(&self.opts.pin_dir);
        }
        Ok(())
    }
}

impl Drop for Datapath {
    /// Dropping without [`Datapath::detach`] leaves everything attached and pinned, so the
    /// next [`Datapath::load`] (an agent restart) adopts it with traffic flowing throughout.
    fn drop(&mut self) {
        if !self.detached
            && let Some(link) = self.sk_msg_link.take()
        {
            // The sk_msg attachment lives on the pinned sockhash; dropping the link would
            // detach it.
            std::mem::forget(link);
        }
    }
}

/// Reads the kernel-side counters from a handle of its own: see [`Datapath::counter_reader`].
pub struct CounterReader(PerCpuArray<MapData, u64>);

impl CounterReader {
    /// The counters now.
    pub fn read(&self) -> Result<DatapathCounters, LoaderError> {
        read_counters(&self.0)
    }
}

fn read_counters<T: std::borrow::Borrow<MapData>>(
    a: &PerCpuArray<T, u64>,
) -> Result<DatapathCounters, LoaderError> {
    let sum = |c: Counter| -> Result<u64, LoaderError> {
        let v = a
            .get(&(c as u32), 0)
            .map_err(map_err(maps::STATS, "read"))?;
        Ok(v.iter().sum())
    };
    Ok(DatapathCounters {
        events_lost: sum(Counter::EventsLost)?,
        no_backend: sum(Counter::NoBackend)?,
        frag_miss: sum(Counter::FragMiss)?,
        snat_exhausted: sum(Counter::SnatExhausted)?,
        ct_insert_failed: sum(Counter::CtInsertFailed)?,
        tc_errors: sum(Counter::TcErrors)?,
        sockmap_redirected: sum(Counter::SockmapRedirected)?,
        sockmap_passed: sum(Counter::SockmapPassed)?,
    })
}

fn missing(name: &'static str) -> LoaderError {
    LoaderError::Map {
        map: name,
        action: "find in the object (is the object from this Sluice version?)".into(),
        source: Box::new(MapError::InvalidName {
            name: name.to_string(),
        }),
    }
}

fn missing_prog(name: &'static str) -> LoaderError {
    LoaderError::Program {
        program: name,
        action: "find in the object (is the object from this Sluice version?)".into(),
        source: Box::new(ProgramError::NotLoaded),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binary keeps the datapath in async tasks and threads.
    #[test]
    fn datapath_handles_are_send() {
        fn send<T: Send>() {}
        send::<Datapath>();
        send::<FlowEvents>();
        send::<FlowMetrics>();
    }

    #[test]
    fn missing_object_says_how_to_build_it() {
        let err = Datapath::load(DatapathOptions {
            object: PathBuf::from("/nonexistent/sluice.bpf.o"),
            ..DatapathOptions::default()
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/sluice.bpf.o"), "{msg}");
        assert!(msg.contains("cargo xtask ebpf"), "{msg}");
    }

    #[test]
    fn defaults_are_sane() {
        let o = DatapathOptions::default();
        assert!(maglev::is_prime(o.maglev_table_size));
        assert!(
            o.object.ends_with("target/bpf/sluice.bpf.o")
                || std::env::var_os("SLUICE_EBPF_OBJECT").is_some()
        );
        assert_eq!(o.pin_dir, PathBuf::from("/sys/fs/bpf/sluice"));
        assert!(o.snat_ports.0 <= o.snat_ports.1);
    }
}
