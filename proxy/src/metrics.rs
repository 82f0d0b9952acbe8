//! Prometheus metrics of the data plane (prometheus-client): requests by listener, route,
//! backend and status code; request latency by listener; upstream connect errors by cluster;
//! active and parked (idle) downstream connections by listener. Request counters are looked up
//! once per worker and label set, then cached in a thread-local map, so the hot path is one hash
//! of pointers and one atomic add.

use crate::fxhash::FxHashMap as HashMap;
use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::cell::RefCell;
use std::sync::Arc;

/// Labels of `sluice_http_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RequestLabels {
    /// IR listener name.
    pub listener: Arc<str>,
    /// Route id (`HTTPRoute/ns/name/rule/0/match/0`), or `none`.
    pub route: Arc<str>,
    /// Cluster name, `<invalid>`, or `none`.
    pub backend: Arc<str>,
    /// HTTP status code answered.
    pub code: u16,
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        let code = self.code.to_string();
        [
            ("listener", &*self.listener),
            ("route", &*self.route),
            ("backend", &*self.backend),
            ("code", code.as_str()),
        ]
        .encode(encoder)
    }
}

/// A single `name="value"` label set.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct OneLabel(&'static str, Arc<str>);

impl EncodeLabelSet for OneLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        [(self.0, &*self.1)].encode(encoder)
    }
}

/// The proxy's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<OneLabel, Histogram, fn() -> Histogram>,
    connect_errors: Family<OneLabel, Counter>,
    active: Family<OneLabel, Gauge>,
    parked: Family<OneLabel, Gauge>,
}

fn latency_histogram() -> Histogram {
    // 100µs .. ~26s
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

type CacheKey = (usize, usize, usize, u16);

thread_local! {
    static COUNTERS: RefCell<HashMap<CacheKey, (Counter, RequestLabels)>> = RefCell::new(HashMap::default());
}

impl Metrics {
    /// A registry with Sluice's metrics under the `sluice` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<OneLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let connect_errors = Family::<OneLabel, Counter>::default();
        let active = Family::<OneLabel, Gauge>::default();
        let parked = Family::<OneLabel, Gauge>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by listener, route, backend and status code",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request head to response head, by listener",
            duration.clone(),
        );
        registry.register(
            "upstream_connect_errors",
            "Failed or timed out connects to upstream endpoints, by cluster",
            connect_errors.clone(),
        );
        registry.register(
            "active_connections",
            "Open downstream connections, by listener",
            active.clone(),
        );
        registry.register(
            "parked_connections",
            "Idle downstream HTTP/1.1 connections parked without buffers or a task, by listener",
            parked.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
            connect_errors,
            active,
            parked,
        }
    }

    /// The registry, for encoding or for adding the binary's own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }

    /// Counts one answered request.
    pub(crate) fn request(
        &self,
        listener: &Arc<str>,
        route: &Arc<str>,
        backend: &Arc<str>,
        code: u16,
    ) {
        let key = (
            Arc::as_ptr(listener) as *const u8 as usize,
            Arc::as_ptr(route) as *const u8 as usize,
            Arc::as_ptr(backend) as *const u8 as usize,
            code,
        );
        COUNTERS.with(|c| {
            let mut c = c.borrow_mut();
            if let Some((counter, _)) = c.get(&key) {
                counter.inc();
                return;
            }
            if c.len() > 50_000 {
                c.clear();
            }
            // The labels keep the Arcs alive, so the pointers in the key stay unique.
            let labels = RequestLabels {
                listener: listener.clone(),
                route: route.clone(),
                backend: backend.clone(),
                code,
            };
            let counter = self.requests.get_or_create_owned(&labels);
            counter.inc();
            c.insert(key, (counter, labels));
        });
    }

    /// The latency histogram of a listener.
    pub(crate) fn latency(&self, listener: &Arc<str>) -> Histogram {
        self.duration
            .get_or_create_owned(&OneLabel("listener", listener.clone()))
    }

    /// Counts a failed upstream connect.
    pub(crate) fn connect_error(&self, cluster: &Arc<str>) {
        self.connect_errors
            .get_or_create(&OneLabel("cluster", cluster.clone()))
            .inc();
    }

    /// The active connection gauge of a listener.
    pub(crate) fn active(&self, listener: &Arc<str>) -> Gauge {
        self.active
            .get_or_create_owned(&OneLabel("listener", listener.clone()))
    }

    /// The parked (idle) connection gauge of a listener.
    pub(crate) fn parked(&self, listener: &Arc<str>) -> Gauge {
        self.parked
            .get_or_create_owned(&OneLabel("listener", listener.clone()))
    }
}
