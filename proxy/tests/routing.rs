//! Route matching and precedence through real sockets.

mod common;
use common::*;
use sluice_proxy::test_util::*;

#[tokio::test]
async fn smoke_proxy_to_echo() {
    let e = echo("pod-a").await;
    let port = free_port();
    let s = snapshot(
        vec![http_listener(
            port,
            vec![vhost(
                "*",
                vec![route("r").backend("default/a:80", 1).build()],
            )],
        )],
        vec![cluster("default/a:80", &[e.addr])],
    );
    let _p = start(s).await;
    let c = client();
    let r = get(&c, port, "example.com", "/hello?x=1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e = r.echo();
    assert_eq!(e.pod, "pod-a");
    assert_eq!(e.path, "/hello?x=1");
    assert_eq!(e.host, "example.com");
}
