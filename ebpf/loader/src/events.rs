//! Flow events: the kernel programs' per-connection ring buffer, decoded, and Prometheus
//! counters built from it.

use crate::LoaderError;
use aya::maps::{MapData, RingBuf};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sluice_ebpf_common::{EventKind, FlowEvent, PROTO_TCP, PROTO_UDP, Verdict};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Service id -> `namespace/name:port/PROTO`, kept current by [`crate::Datapath::sync`].
pub type ServiceNames = Arc<RwLock<HashMap<u32, String>>>;

/// One decoded flow event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRecord {
    /// Monotonic kernel time (ns since boot).
    pub ts_ns: u64,
    /// What happened.
    pub kind: EventKind,
    /// The outcome.
    pub verdict: Verdict,
    /// `"TCP"`, `"UDP"` or the protocol number.
    pub protocol: String,
    /// The Service port (`namespace/name:port/PROTO`), when the event concerns one.
    pub service: Option<String>,
    /// Client address, when known (not at connect() time).
    pub source: Option<SocketAddrV4>,
    /// Destination the client used.
    pub destination: SocketAddrV4,
    /// Where it went (backend or proxy), when translated or redirected.
    pub translated: Option<SocketAddrV4>,
    /// Backend id (0: none).
    pub backend_id: u32,
}

fn sock(addr: u32, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(addr.to_ne_bytes()), u16::from_be(port))
}

/// Decodes a raw ring buffer record; `None` for a malformed or unknown one.
pub fn decode(bytes: &[u8], names: &HashMap<u32, String>) -> Option<FlowRecord> {
    if bytes.len() < std::mem::size_of::<FlowEvent>() {
        return None;
    }
    // SAFETY: FlowEvent is plain old data and the buffer holds at least one; read_unaligned
    // copes with any alignment.
    #[allow(unsafe_code)]
    let ev: FlowEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const FlowEvent) };
    let kind = EventKind::from_u8(ev.kind)?;
    let verdict = Verdict::from_u8(ev.verdict)?;
    let protocol = match ev.proto {
        PROTO_TCP => "TCP".to_string(),
        PROTO_UDP => "UDP".to_string(),
        p => p.to_string(),
    };
    Some(FlowRecord {
        ts_ns: ev.ts_ns,
        kind,
        verdict,
        protocol,
        service: (ev.service_id != 0).then(|| {
            names
                .get(&ev.service_id)
                .cloned()
                .unwrap_or_else(|| format!("service#{}", ev.service_id))
        }),
        source: (ev.src_addr != 0).then(|| sock(ev.src_addr, ev.src_port)),
        destination: sock(ev.dst_addr, ev.dst_port),
        translated: (ev.nat_addr != 0).then(|| sock(ev.nat_addr, ev.nat_port)),
        backend_id: ev.backend_id,
    })
}

/// Reader of the flow event ring buffer (one per datapath).
pub struct FlowEvents {
    ring: RingBuf<MapData>,
    names: ServiceNames,
}

impl std::fmt::Debug for FlowEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowEvents").finish_non_exhaustive()
    }
}

impl FlowEvents {
    pub(crate) fn new(ring: RingBuf<MapData>, names: ServiceNames) -> Self {
        FlowEvents { ring, names }
    }

    /// Hands each pending event to `f`; when none is pending, waits up to `timeout` (events
    /// are batched: the kernel wakes the reader once about 100 are pending, so a quiet
    /// datapath's events show up after `timeout`). Returns how many were read.
    pub fn read(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(FlowRecord),
    ) -> Result<usize, LoaderError> {
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let mut n = self.drain(&mut f);
        if n == 0 {
            // The programs wake readers only once a batch is pending, so drain after the
            // timeout too.
            crate::sys::poll_readable(self.ring.as_fd(), ms).map_err(|source| LoaderError::Io {
                what: "waiting for flow events".into(),
                source,
            })?;
            n = self.drain(&mut f);
        }
        Ok(n)
    }

    fn drain(&mut self, f: &mut impl FnMut(FlowRecord)) -> usize {
        let names = self.names.read().map(|g| g.clone()).unwrap_or_default();
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            if let Some(rec) = decode(&item, &names) {
                f(rec);
                n += 1;
            }
        }
        n
    }

    /// Feeds `metrics` from this reader on a background thread until `stop` is set, and
    /// with `counters`, refreshes the kernel counters at least every 200 ms.
    pub fn spawn_metrics(
        mut self,
        metrics: FlowMetrics,
        counters: Option<crate::CounterReader>,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name("sluice-flow-events".into())
            .spawn(move || {
                let mut failed = false;
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = self.read(Duration::from_millis(200), |r| metrics.observe(&r)) {
                        tracing::warn!(error = %e, "reading flow events failed");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    match counters.as_ref().map(crate::CounterReader::read) {
                        Some(Ok(c)) => metrics.set_counters(&c),
                        Some(Err(e)) if !failed => {
                            failed = true;
                            tracing::warn!(error = %e, "reading the datapath counters failed");
                        }
                        _ => {}
                    }
                }
            })
            .expect("spawning a thread")
    }
}

/// Labels of [`FlowMetrics::flows`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    /// [`EventKind::as_str`].
    pub kind: String,
    /// [`Verdict::as_str`].
    pub verdict: String,
    /// Service port, or empty.
    pub service: String,
}

/// Labels of [`FlowMetrics::datapath`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CounterLabels {
    /// Counter name (see [`crate::DatapathCounters`]).
    pub counter: String,
}

/// Prometheus metrics of the eBPF datapath. Clones share the same series.
#[derive(Clone, Debug, Default)]
pub struct FlowMetrics {
    /// `sluice_ebpf_flows_total{kind,verdict,service}`: flow events seen.
    pub flows: Family<FlowLabels, Counter>,
    /// `sluice_ebpf_datapath{counter}`: kernel-side counters, as of the last
    /// [`FlowMetrics::set_counters`].
    pub datapath: Family<CounterLabels, Gauge<u64, AtomicU64>>,
}

impl FlowMetrics {
    /// New, empty metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the series under `registry` as `ebpf_flows` and `ebpf_datapath`: with the
    /// admin API's registry (prefix `sluice`) they read `sluice_ebpf_flows_total{...}` and
    /// `sluice_ebpf_datapath{...}`.
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("ebpf");
        sub.register(
            "flows",
            "Per-connection events of the eBPF datapath (socket-LB, tc, sk_lookup, sockmap)",
            self.flows.clone(),
        );
        sub.register(
            "datapath",
            "Kernel-side counters of the eBPF datapath (drops, misses, lost events)",
            self.datapath.clone(),
        );
    }

    /// Counts one event.
    pub fn observe(&self, r: &FlowRecord) {
        self.flows
            .get_or_create(&FlowLabels {
                kind: r.kind.as_str().to_string(),
                verdict: r.verdict.as_str().to_string(),
                service: r.service.clone().unwrap_or_default(),
            })
            .inc();
    }

    /// Publishes kernel counters read with [`crate::Datapath::counters`].
    pub fn set_counters(&self, c: &crate::DatapathCounters) {
        for (name, v) in c.iter() {
            self.datapath
                .get_or_create(&CounterLabels {
                    counter: name.to_string(),
                })
                .set(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_ebpf_common::ip4;

    fn raw(ev: &FlowEvent) -> Vec<u8> {
        let p = ev as *const FlowEvent as *const u8;
        // SAFETY: reading the bytes of a plain struct.
        #[allow(unsafe_code)]
        unsafe { std::slice::from_raw_parts(p, std::mem::size_of::<FlowEvent>()) }.to_vec()
    }

    #[test]
    fn decodes_and_counts_events() {
        let ev = FlowEvent {
            ts_ns: 5,
            kind: EventKind::TcNewFlow as u8,
            proto: PROTO_TCP,
            verdict: Verdict::Snat as u8,
            service_id: 7,
            src_addr: ip4([10, 99, 0, 2]),
            src_port: 40000u16.to_be(),
            dst_addr: ip4([10, 99, 0, 1]),
            dst_port: 30080u16.to_be(),
            nat_addr: ip4([10, 98, 0, 2]),
            nat_port: 8080u16.to_be(),
            backend_id: 3,
            ..FlowEvent::default()
        };
        let names = HashMap::from([(7, "default/web:80/TCP".to_string())]);
        let r = decode(&raw(&ev), &names).unwrap();
        assert_eq!(r.kind, EventKind::TcNewFlow);
        assert_eq!(r.verdict, Verdict::Snat);
        assert_eq!(r.service.as_deref(), Some("default/web:80/TCP"));
        assert_eq!(r.source, Some("10.99.0.2:40000".parse().unwrap()));
        assert_eq!(r.destination, "10.99.0.1:30080".parse().unwrap());
        assert_eq!(r.translated, Some("10.98.0.2:8080".parse().unwrap()));

        let m = FlowMetrics::new();
        let mut reg = Registry::with_prefix("sluice");
        m.register(&mut reg);
        m.observe(&r);
        m.observe(&r);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(
            out.contains(
                "sluice_ebpf_flows_total{kind=\"tc_new_flow\",verdict=\"snat\",service=\"default/web:80/TCP\"} 2"
            ),
            "{out}"
        );
    }

    #[test]
    fn rejects_short_or_unknown_records() {
        assert_eq!(decode(&[0u8; 8], &HashMap::new()), None);
        let ev = FlowEvent {
            kind: 200,
            ..FlowEvent::default()
        };
        assert_eq!(decode(&raw(&ev), &HashMap::new()), None);
    }
}
