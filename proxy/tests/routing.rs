//! Route matching and precedence through real sockets: path kinds and their IR order,
//! element-wise prefixes, method/header/query conditions, host lookup.

mod common;
use common::*;
use sluice_ir::Snapshot;
use sluice_proxy::test_util::*;

/// One echo pod per cluster; cluster `c<i>` is served by pod `p<i>`.
struct Pods(Vec<Echo>);

impl Pods {
    async fn new(n: usize) -> Self {
        let mut v = Vec::new();
        for i in 0..n {
            v.push(echo(&format!("p{i}")).await);
        }
        Pods(v)
    }
    fn clusters(&self) -> Vec<sluice_ir::Cluster> {
        self.0
            .iter()
            .enumerate()
            .map(|(i, e)| cluster(&format!("c{i}"), &[e.addr]))
            .collect()
    }
}

async fn serve(port: u16, vhosts: Vec<sluice_ir::VirtualHost>, pods: &Pods) -> sluice_proxy::Proxy {
    let s: Snapshot = snapshot(vec![http_listener(port, vhosts)], pods.clusters());
    start(s).await
}

/// The pod that answered, or the status when no echo answered.
async fn who(
    c: &HttpClient,
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    method: &str,
) -> String {
    let r = send(c, method, port, host, path, headers, "").await;
    if r.status == 200 {
        r.echo().pod
    } else {
        r.status.as_u16().to_string()
    }
}

#[tokio::test]
async fn smoke_proxy_to_echo() {
    let pods = Pods::new(1).await;
    let port = free_port();
    let _p = serve(
        port,
        vec![vhost("*", vec![route("r").backend("c0", 1).build()])],
        &pods,
    )
    .await;
    let c = client();
    let r = get(&c, port, "example.com", "/hello?x=1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e = r.echo();
    assert_eq!(e.pod, "p0");
    assert_eq!(e.path, "/hello?x=1");
    assert_eq!(e.host, "example.com");
    assert_eq!(e.method, "GET");
}

#[tokio::test]
async fn path_kinds_follow_ir_order() {
    let pods = Pods::new(5).await;
    let port = free_port();
    // IR order is the precedence: exact, regex, longest prefix, shorter prefix, catch-all.
    let routes = vec![
        route("exact").exact("/foo").backend("c0", 1).build(),
        route("regex").regex("/foo/[0-9]+").backend("c1", 1).build(),
        route("long").prefix("/foo/bar/").backend("c2", 1).build(),
        route("short").prefix("/foo").backend("c3", 1).build(),
        route("all").prefix("/").backend("c4", 1).build(),
    ];
    let _p = serve(port, vec![vhost("*", routes)], &pods).await;
    let c = client();
    let cases = [
        ("/foo", "p0"),
        ("/foo?q=1", "p0"),
        ("/foo/", "p3"),
        ("/foo/123", "p1"),
        ("/foo/123/x", "p3"),
        ("/foo/bar", "p2"),
        ("/foo/bar/", "p2"),
        ("/foo/bar/baz", "p2"),
        ("/foo/barbaz", "p3"),
        ("/foobar", "p4"),
        ("/", "p4"),
        ("/other", "p4"),
    ];
    for (path, want) in cases {
        assert_eq!(who(&c, port, "h", path, &[], "GET").await, want, "{path}");
    }
}

#[tokio::test]
async fn rank_beats_index_structure() {
    // A prefix route listed before an exact route wins even though exact lookups come first.
    let pods = Pods::new(2).await;
    let port = free_port();
    let routes = vec![
        route("p")
            .prefix("/a")
            .header("x-pick", "prefix")
            .backend("c0", 1)
            .build(),
        route("e").exact("/a/b").backend("c1", 1).build(),
    ];
    let _p = serve(port, vec![vhost("*", routes)], &pods).await;
    let c = client();
    assert_eq!(
        who(&c, port, "h", "/a/b", &[("x-pick", "prefix")], "GET").await,
        "p0"
    );
    assert_eq!(who(&c, port, "h", "/a/b", &[], "GET").await, "p1");
    assert_eq!(who(&c, port, "h", "/a/c", &[], "GET").await, "404");
}

#[tokio::test]
async fn method_header_and_query_conditions() {
    let pods = Pods::new(6).await;
    let port = free_port();
    let routes = vec![
        route("m")
            .prefix("/")
            .method("POST")
            .backend("c0", 1)
            .build(),
        route("h2")
            .prefix("/")
            .header("version", "two")
            .header("color", "blue")
            .backend("c1", 1)
            .build(),
        route("h")
            .prefix("/")
            .header("version", "two")
            .backend("c2", 1)
            .build(),
        route("re")
            .prefix("/")
            .header_regex("x-id", "[a-f]+-[0-9]+")
            .backend("c3", 1)
            .build(),
        route("q")
            .prefix("/")
            .query("animal", "whale")
            .backend("c4", 1)
            .build(),
        route("all").prefix("/").backend("c5", 1).build(),
    ];
    let _p = serve(port, vec![vhost("*", routes)], &pods).await;
    let c = client();
    assert_eq!(who(&c, port, "h", "/", &[], "POST").await, "p0");
    assert_eq!(
        who(
            &c,
            port,
            "h",
            "/",
            &[("version", "two"), ("color", "blue")],
            "GET"
        )
        .await,
        "p1"
    );
    assert_eq!(
        who(
            &c,
            port,
            "h",
            "/",
            &[("version", "two"), ("color", "red")],
            "GET"
        )
        .await,
        "p2"
    );
    assert_eq!(
        who(&c, port, "h", "/", &[("Version", "two")], "GET").await,
        "p2"
    );
    assert_eq!(
        who(&c, port, "h", "/", &[("version", "Two")], "GET").await,
        "p5"
    );
    assert_eq!(
        who(&c, port, "h", "/", &[("x-id", "abc-42")], "GET").await,
        "p3"
    );
    assert_eq!(
        who(&c, port, "h", "/", &[("x-id", "abc-42x")], "GET").await,
        "p5"
    );
    assert_eq!(who(&c, port, "h", "/?animal=whale", &[], "GET").await, "p4");
    assert_eq!(
        who(&c, port, "h", "/?x=1&animal=whale", &[], "GET").await,
        "p4"
    );
    assert_eq!(
        who(&c, port, "h", "/?animal=dolphin&animal=whale", &[], "GET").await,
        "p5"
    );
    assert_eq!(who(&c, port, "h", "/?Animal=whale", &[], "GET").await, "p5");
}

#[tokio::test]
async fn multiple_header_values_are_joined() {
    let pods = Pods::new(2).await;
    let port = free_port();
    let routes = vec![
        route("j")
            .prefix("/")
            .header("x-multi", "a,b")
            .backend("c0", 1)
            .build(),
        route("all").prefix("/").backend("c1", 1).build(),
    ];
    let _p = serve(port, vec![vhost("*", routes)], &pods).await;
    let c = client();
    assert_eq!(
        who(
            &c,
            port,
            "h",
            "/",
            &[("x-multi", "a"), ("x-multi", "b")],
            "GET"
        )
        .await,
        "p0"
    );
    assert_eq!(
        who(&c, port, "h", "/", &[("x-multi", "a")], "GET").await,
        "p1"
    );
}

#[tokio::test]
async fn hostnames_exact_wildcard_and_catch_all() {
    let pods = Pods::new(4).await;
    let port = free_port();
    let r = |c: &str| vec![route(c).backend(c, 1).build()];
    let vhosts = vec![
        vhost("foo.example.com", r("c0")),
        vhost("*.bar.example.com", r("c1")),
        vhost("*.example.com", r("c2")),
        vhost("*", r("c3")),
    ];
    let _p = serve(port, vhosts, &pods).await;
    let c = client();
    let cases = [
        ("foo.example.com", "p0"),
        ("FOO.Example.COM", "p0"),
        ("foo.example.com:8080", "p0"),
        ("x.bar.example.com", "p1"),
        ("a.b.bar.example.com", "p1"),
        ("bar.example.com", "p2"),
        ("x.example.com", "p2"),
        ("a.foo.example.com", "p2"),
        ("example.com", "p3"),
        ("other.org", "p3"),
        ("127.0.0.1", "p3"),
    ];
    for (host, want) in cases {
        assert_eq!(who(&c, port, host, "/", &[], "GET").await, want, "{host}");
    }
}

#[tokio::test]
async fn no_vhost_or_route_is_404() {
    let pods = Pods::new(1).await;
    let port = free_port();
    let vhosts = vec![vhost(
        "a.com",
        vec![route("r").prefix("/only").backend("c0", 1).build()],
    )];
    let _p = serve(port, vhosts, &pods).await;
    let c = client();
    let r = get(&c, port, "b.com", "/only").await;
    assert_eq!(r.status, 404);
    assert_eq!(get(&c, port, "a.com", "/other").await.status, 404);
    assert_eq!(get(&c, port, "a.com", "/only/x").await.status, 200);
}
