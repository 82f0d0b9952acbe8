//! Gateway API filters through real sockets: header modifiers, redirects, URL rewrites,
//! mirrors, CORS, backend-level filters.

mod common;
use common::*;
use sluice_ir::*;
use sluice_proxy::test_util::*;
use std::sync::atomic::Ordering;
use std::time::Duration;

async fn one_route(r: HttpRoute, clusters: Vec<Cluster>) -> (sluice_proxy::Proxy, u16) {
    let port = free_port();
    let s = snapshot(
        vec![http_listener(port, vec![vhost("*", vec![r])])],
        clusters,
    );
    (start(s).await, port)
}

#[tokio::test]
async fn request_and_response_header_modifiers() {
    let e = echo("p").await;
    let r = route("h")
        .filter(HttpFilter::RequestHeaderModifier(headers(
            &[("x-header-set", "set-overwrites-values")],
            &[
                ("x-header-add", "header-val-1"),
                ("x-header-add-append", "header-val-2"),
            ],
            &["x-header-remove"],
        )))
        .filter(HttpFilter::ResponseHeaderModifier(headers(
            &[("x-resp-set", "set")],
            &[("x-resp-add", "added")],
            &["x-resp-remove"],
        )))
        .backend("c", 1)
        .build();
    let (_p, port) = one_route(r, vec![cluster("c", &[e.addr])]).await;
    let c = client();
    let reply = send(
        &c,
        "GET",
        port,
        "h",
        "/",
        &[
            ("x-header-set", "set-val"),
            ("x-header-add-append", "append-val-1"),
            ("x-header-remove", "remove-val"),
            (
                "x-echo-set-header",
                "x-resp-set:orig,x-resp-add:orig,x-resp-remove:gone",
            ),
        ],
        "",
    )
    .await;
    assert_eq!(reply.status, 200);
    let echoed = reply.echo();
    assert_eq!(echoed.headers["x-header-set"], ["set-overwrites-values"]);
    assert_eq!(echoed.headers["x-header-add"], ["header-val-1"]);
    assert_eq!(
        echoed.headers["x-header-add-append"],
        ["append-val-1", "header-val-2"]
    );
    assert!(!echoed.headers.contains_key("x-header-remove"));
    assert_eq!(reply.header("x-resp-set"), Some("set"));
    let adds: Vec<_> = reply.headers.get_all("x-resp-add").iter().collect();
    assert_eq!(adds, ["orig", "added"]);
    assert!(reply.headers.get("x-resp-remove").is_none());
}

fn redirect(
    scheme: Option<&str>,
    host: Option<&str>,
    path: Option<PathModifier>,
    port: Option<u16>,
    code: u16,
) -> HttpFilter {
    HttpFilter::RequestRedirect(Redirect {
        scheme: scheme.map(Into::into),
        hostname: host.map(Into::into),
        path,
        port,
        status_code: code,
    })
}

#[tokio::test]
async fn redirects_follow_gateway_port_and_scheme_rules() {
    let port = free_port();
    let routes = vec![
        route("a")
            .prefix("/hostname")
            .filter(redirect(None, Some("example.org"), None, None, 302))
            .build(),
        route("b")
            .prefix("/scheme")
            .filter(redirect(Some("https"), None, None, None, 301))
            .build(),
        route("c")
            .prefix("/port")
            .filter(redirect(None, None, None, Some(8443), 302))
            .build(),
        route("d")
            .prefix("/both")
            .filter(redirect(Some("https"), Some("x.org"), None, Some(443), 308))
            .build(),
        route("e")
            .prefix("/http80")
            .filter(redirect(Some("http"), None, None, Some(80), 307))
            .build(),
        route("f")
            .prefix("/prefix/old")
            .filter(redirect(
                None,
                None,
                Some(PathModifier::ReplacePrefixMatch("/new".into())),
                None,
                302,
            ))
            .build(),
        route("g")
            .prefix("/full")
            .filter(redirect(
                None,
                None,
                Some(PathModifier::ReplaceFullPath("/replaced".into())),
                None,
                303,
            ))
            .build(),
    ];
    let s = snapshot(vec![http_listener(port, vec![vhost("*", routes)])], vec![]);
    let _p = start(s).await;
    let c = client();
    let cases = [
        (
            "/hostname/x?q=1",
            302,
            format!("http://example.org:{port}/hostname/x?q=1"),
        ),
        (
            "/scheme",
            301,
            "https://redirect.example/scheme".to_string(),
        ),
        (
            "/port",
            302,
            "http://redirect.example:8443/port".to_string(),
        ),
        ("/both", 308, "https://x.org/both".to_string()),
        ("/http80", 307, "http://redirect.example/http80".to_string()),
        (
            "/prefix/old/a/b",
            302,
            format!("http://redirect.example:{port}/new/a/b"),
        ),
        (
            "/prefix/old",
            302,
            format!("http://redirect.example:{port}/new"),
        ),
        (
            "/full/a?z=2",
            303,
            format!("http://redirect.example:{port}/replaced?z=2"),
        ),
    ];
    for (path, code, loc) in cases {
        let r = get(&c, port, &format!("redirect.example:{port}"), path).await;
        assert_eq!(r.status.as_u16(), code, "{path}");
        assert_eq!(r.header("location"), Some(loc.as_str()), "{path}");
    }
}

#[tokio::test]
async fn url_rewrites_host_and_paths() {
    let e = echo("p").await;
    let port = free_port();
    let rw = |host: Option<&str>, path: Option<PathModifier>| {
        HttpFilter::UrlRewrite(UrlRewrite {
            hostname: host.map(Into::into),
            path,
        })
    };
    let prefix = |s: &str| Some(PathModifier::ReplacePrefixMatch(s.into()));
    let routes = vec![
        route("host")
            .prefix("/host")
            .filter(rw(Some("rewritten.example"), None))
            .backend("c", 1)
            .build(),
        route("one")
            .prefix("/prefix/one")
            .filter(rw(None, prefix("/one")))
            .backend("c", 1)
            .build(),
        route("strip")
            .prefix("/strip-prefix")
            .filter(rw(None, prefix("/")))
            .backend("c", 1)
            .build(),
        route("slash")
            .prefix("/slash/")
            .filter(rw(None, prefix("/xyz/")))
            .backend("c", 1)
            .build(),
        route("empty")
            .prefix("/empty")
            .filter(rw(None, prefix("")))
            .backend("c", 1)
            .build(),
        route("full")
            .prefix("/full/one")
            .filter(rw(None, Some(PathModifier::ReplaceFullPath("/one".into()))))
            .backend("c", 1)
            .build(),
    ];
    let s = snapshot(
        vec![http_listener(port, vec![vhost("*", routes)])],
        vec![cluster("c", &[e.addr])],
    );
    let _p = start(s).await;
    let c = client();
    let r = get(&c, port, "orig.example", "/host/x").await.echo();
    assert_eq!(
        (r.host.as_str(), r.path.as_str()),
        ("rewritten.example", "/host/x")
    );
    let cases = [
        ("/prefix/one/two", "/one/two"),
        ("/prefix/one", "/one"),
        ("/prefix/one/", "/one/"),
        ("/strip-prefix/three", "/three"),
        ("/strip-prefix", "/"),
        ("/strip-prefix/", "/"),
        ("/slash/bar", "/xyz/bar"),
        ("/slash", "/xyz"),
        ("/empty/bar", "/bar"),
        ("/empty", "/"),
        ("/full/one/two?x=1", "/one?x=1"),
    ];
    for (path, want) in cases {
        let r = get(&c, port, "orig.example", path).await.echo();
        assert_eq!(r.path, want, "{path}");
        assert_eq!(r.host, "orig.example");
    }
}

#[tokio::test]
async fn mirror_gets_a_copy_with_body_and_share_is_respected() {
    let main = echo("main").await;
    let mirror = echo("mirror").await;
    let never = echo("never").await;
    let port = free_port();
    let m = |c: &str, per_million| {
        HttpFilter::RequestMirror(Mirror {
            cluster: Some(c.into()),
            per_million,
        })
    };
    let r = route("m")
        .filter(m("mirror", 1_000_000))
        .filter(m("never", 0))
        .backend("main", 1)
        .build();
    let s = snapshot(
        vec![http_listener(port, vec![vhost("*", vec![r])])],
        vec![
            cluster("main", &[main.addr]),
            cluster("mirror", &[mirror.addr]),
            cluster("never", &[never.addr]),
        ],
    );
    let _p = start(s).await;
    let c = client();
    for i in 0..10 {
        let r = send(&c, "POST", port, "h", "/m", &[], &format!("body-{i}")).await;
        assert_eq!(r.echo().pod, "main");
        assert_eq!(r.echo().body, format!("body-{i}"));
    }
    // The mirror is fire-and-forget: wait for it.
    for _ in 0..100 {
        if mirror.requests.load(Ordering::Relaxed) == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mirror.requests.load(Ordering::Relaxed), 10);
    assert_eq!(never.requests.load(Ordering::Relaxed), 0);
    assert_eq!(main.requests.load(Ordering::Relaxed), 10);
}

#[tokio::test]
async fn mirror_copy_carries_the_streamed_body() {
    // A body of unknown length streams through the tee to both upstreams.
    let main = echo("main").await;
    let port = free_port();
    // The mirror is a tiny server that records the body it got.
    let mirror_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mirror_addr = mirror_l.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        loop {
            let (s, _) = mirror_l.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            use http_body_util::BodyExt;
                            let b = req.into_body().collect().await.unwrap().to_bytes();
                            let _ = tx.send(String::from_utf8_lossy(&b).into_owned());
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::new()),
                            ))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let r = route("m")
        .filter(HttpFilter::RequestMirror(Mirror {
            cluster: Some("mirror".into()),
            per_million: 1_000_000,
        }))
        .backend("main", 1)
        .build();
    let s = snapshot(
        vec![http_listener(port, vec![vhost("*", vec![r])])],
        vec![
            cluster("main", &[main.addr]),
            cluster("mirror", &[mirror_addr]),
        ],
    );
    let _p = start(s).await;
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        curl(&[
            "-s",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            "streamed-body",
            &format!("http://127.0.0.1:{port}/x"),
        ])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("\"body\":\"streamed-body\""), "{out}");
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, "streamed-body");
}

#[tokio::test]
async fn cors_preflight_and_actual_requests() {
    let e = echo("p").await;
    let cors = HttpFilter::Cors(Cors {
        allow_origins: vec!["https://www.foo.com".into(), "https://*.bar.com".into()],
        allow_credentials: true,
        allow_methods: vec!["GET".into(), "OPTIONS".into()],
        allow_headers: vec!["x-header-1".into(), "x-header-2".into()],
        expose_headers: vec!["x-header-3".into(), "x-header-4".into()],
        max_age_seconds: Some(3600),
    });
    let r = route("cors").filter(cors).backend("c", 1).build();
    let (_p, port) = one_route(r, vec![cluster("c", &[e.addr])]).await;
    let c = client();
    let pre = |origin: &'static str| {
        let c = c.clone();
        async move {
            send(
                &c,
                "OPTIONS",
                port,
                "h",
                "/cors-1",
                &[
                    ("origin", origin),
                    ("access-control-request-method", "GET"),
                    ("access-control-request-headers", "x-header-1, x-header-2"),
                ],
                "",
            )
            .await
        }
    };
    for origin in [
        "https://www.foo.com",
        "https://www.bar.com",
        "https://xpto.www.bar.com",
    ] {
        let r = pre(origin).await;
        assert!(r.status == 200 || r.status == 204, "{}", r.status);
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        assert_eq!(
            r.header("access-control-allow-methods"),
            Some("GET, OPTIONS")
        );
        assert_eq!(
            r.header("access-control-allow-headers"),
            Some("x-header-1, x-header-2")
        );
        assert_eq!(
            r.header("access-control-expose-headers"),
            Some("x-header-3, x-header-4")
        );
        assert_eq!(r.header("access-control-max-age"), Some("3600"));
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    }
    assert_eq!(
        e.requests.load(Ordering::Relaxed),
        0,
        "preflights are answered by the proxy"
    );
    let r = pre("https://foobar.com").await;
    assert!(r.status == 200 || r.status == 204);
    assert!(r.header("access-control-allow-origin").is_none());
    // An actual cross-origin request is proxied and gets the CORS response headers.
    let r = send(
        &c,
        "GET",
        port,
        "h",
        "/cors-1",
        &[("origin", "https://www.foo.com")],
        "",
    )
    .await;
    assert_eq!(r.echo().pod, "p");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://www.foo.com")
    );
    let r = send(
        &c,
        "GET",
        port,
        "h",
        "/cors-1",
        &[("origin", "https://evil.com")],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.header("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn backend_filters_apply_only_to_their_backend() {
    let a = echo("a").await;
    let b = echo("b").await;
    let f = vec![HttpFilter::RequestHeaderModifier(headers(
        &[("x-backend", "a")],
        &[],
        &[],
    ))];
    let r = route("r").backend_with("a", 1, f).backend("b", 1).build();
    let (_p, port) = one_route(r, vec![cluster("a", &[a.addr]), cluster("b", &[b.addr])]).await;
    let c = client();
    let (mut seen_a, mut seen_b) = (0, 0);
    for _ in 0..60 {
        let e = get(&c, port, "h", "/").await.echo();
        match e.pod.as_str() {
            "a" => {
                seen_a += 1;
                assert_eq!(e.header("x-backend"), Some("a"));
            }
            _ => {
                seen_b += 1;
                assert_eq!(e.header("x-backend"), None);
            }
        }
    }
    assert!(seen_a > 5 && seen_b > 5, "{seen_a} {seen_b}");
}
