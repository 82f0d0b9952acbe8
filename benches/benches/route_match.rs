//! Route lookup cost per request with 10 and 10,000 HTTPRoutes (distinct hostnames and distinct
//! paths), compiled from IR exactly as the proxy compiles a listener. The lookup is a host hash
//! lookup plus the virtual host's path index, so both sizes should cost about the same.

// The `sluice` binary allocates with mimalloc; so do its benchmarks.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method};
use sluice_ir::*;
use sluice_proxy::router::{RequestHead, Router};
use std::hint::black_box;

/// `n` routes: route i serves host `host-{i % hosts}.example.com` and path prefix
/// `/svc-{i}/api`, plus a wildcard virtual host and a catch-all with regex and exact routes.
fn snapshot(n: usize) -> Snapshot {
    let hosts = (n / 10).max(1);
    let mut vhosts: Vec<VirtualHost> = (0..hosts)
        .map(|h| VirtualHost {
            hostname: format!("host-{h}.example.com"),
            routes: vec![],
        })
        .collect();
    for i in 0..n {
        let id = RouteId {
            route: ObjectRef::new("HTTPRoute", "bench", &format!("route-{i}")),
            rule: 0,
            matcher: 0,
            rule_name: None,
        };
        vhosts[i % hosts].routes.push(HttpRoute {
            id,
            matcher: HttpMatch {
                path: PathMatch::Prefix(format!("/svc-{i}/api")),
                ..Default::default()
            },
            filters: vec![],
            backends: vec![WeightedBackend {
                weight: 1,
                cluster: Some("bench/backend:80".into()),
                filters: vec![],
            }],
            timeouts: Timeouts::default(),
            retry: None,
            grpc: false,
        });
    }
    let catch_all = |path: PathMatch, name: &str| HttpRoute {
        id: RouteId {
            route: ObjectRef::new("HTTPRoute", "bench", name),
            rule: 0,
            matcher: 0,
            rule_name: None,
        },
        matcher: HttpMatch {
            path,
            ..Default::default()
        },
        filters: vec![],
        backends: vec![WeightedBackend {
            weight: 1,
            cluster: Some("bench/backend:80".into()),
            filters: vec![],
        }],
        timeouts: Timeouts::default(),
        retry: None,
        grpc: false,
    };
    vhosts.push(VirtualHost {
        hostname: "*.wild.example.com".into(),
        routes: vec![catch_all(PathMatch::Prefix("/".into()), "wild")],
    });
    vhosts.push(VirtualHost {
        hostname: "*".into(),
        routes: vec![
            catch_all(PathMatch::Exact("/healthz".into()), "health"),
            catch_all(PathMatch::Regex("/items/[0-9]+".into()), "items"),
            catch_all(PathMatch::Prefix("/".into()), "default"),
        ],
    });
    let mut l = Listener::new([127, 0, 0, 1].into(), 8080, ListenerProtocol::Http);
    l.virtual_hosts = vhosts;
    Snapshot {
        version: 1,
        listeners: vec![l],
        clusters: vec![Cluster::new(
            "bench/backend:80",
            vec![Endpoint::new([127, 0, 0, 1].into(), 9000)],
        )],
        services: vec![],
    }
}

fn bench(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let mut g = c.benchmark_group("route_match");
    for n in [10usize, 10_000] {
        let s = snapshot(n);
        let router = Router::from_snapshot(&s, "tcp:127.0.0.1:8080").expect("compiles");
        let hosts = (n / 10).max(1);
        // A request for the last route: the worst position for a linear scan.
        let last = n - 1;
        let host = format!("host-{}.example.com:8080", last % hosts);
        let path = format!("/svc-{last}/api/v1/items");
        let head = RequestHead {
            host: &host,
            method: &Method::GET,
            path: &path,
            query: Some("page=2"),
            headers: &headers,
        };
        assert_eq!(
            router.find(&head).expect("matches").id.route.name,
            format!("route-{last}")
        );
        g.bench_with_input(BenchmarkId::new("last_route", n), &head, |b, head| {
            b.iter(|| black_box(router.find(black_box(head))).is_some())
        });
        let miss = RequestHead {
            host: "unknown.example.org",
            method: &Method::GET,
            path: "/items/42",
            query: None,
            headers: &headers,
        };
        assert_eq!(
            router.find(&miss).expect("catch-all").id.route.name,
            "items"
        );
        g.bench_with_input(BenchmarkId::new("catch_all_regex", n), &miss, |b, head| {
            b.iter(|| black_box(router.find(black_box(head))).is_some())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
