//! HTTPS listeners as users meet them: curl with SNI for several names over HTTP/1.1 and
//! HTTP/2, `openssl s_client -servername` seeing each name's certificate, certificate rotation
//! while a connection stays open, a broken certificate that disturbs no other listener, and a
//! WebSocket session (tokio-tungstenite on both ends) through the proxy.

mod common;
use common::*;
use futures::{SinkExt, StreamExt};
use sluice_ir::*;
use sluice_proxy::test_util::*;
use std::time::Duration;

fn https_listener(port: u16, certs: Vec<ServerCertificate>, tag: &str) -> Listener {
    let mut l = Listener::new(LOCALHOST, port, ListenerProtocol::Https);
    l.tls = Some(TlsTermination {
        certificates: certs,
        ..Default::default()
    });
    l.virtual_hosts = vec![vhost(
        "*",
        vec![
            route("r")
                .backend("web", 1)
                .filter(HttpFilter::ResponseHeaderModifier(headers(
                    &[("x-config", tag)],
                    &[],
                    &[],
                )))
                .build(),
        ],
    )];
    l
}

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-https-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn pem_body(pem: &str) -> String {
    pem.lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect::<String>()
}

#[tokio::test]
async fn curl_and_openssl_see_the_certificate_of_each_name() {
    let e = echo("web").await;
    let a = self_signed_cert(&["a.example.com"]);
    let b = self_signed_cert(&["b.example.com"]);
    let wild = self_signed_cert(&["*.c.example.com"]);
    let port = free_port();
    let l = https_listener(
        port,
        vec![
            ir_cert(&a, &["a.example.com"], "default/a"),
            ir_cert(&b, &["b.example.com"], "default/b"),
            ir_cert(&wild, &["*.c.example.com"], "default/c"),
        ],
        "v1",
    );
    let _p = start(snapshot(vec![l], vec![cluster("web", &[e.addr])])).await;
    let dir = tmpdir("curl");
    let cases = [
        ("a.example.com", &a),
        ("b.example.com", &b),
        ("x.c.example.com", &wild),
    ];
    for (name, cert) in cases {
        let ca = dir.join(format!("{name}.pem"));
        std::fs::write(&ca, &cert.cert_pem).unwrap();
        let ca = ca.to_string_lossy().into_owned();
        let url = format!("https://{name}:{port}/who");
        let resolve = format!("{name}:{port}:127.0.0.1");
        for (flag, want) in [("--http1.1", "1.1"), ("--http2", "2")] {
            let args: Vec<String> = [
                "-sS",
                flag,
                "--cacert",
                &ca,
                "--resolve",
                &resolve,
                "-w",
                "\n%{http_version} %{ssl_verify_result}",
                &url,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let (ok, out, err) = tokio::task::spawn_blocking(move || {
                curl(&args.iter().map(String::as_str).collect::<Vec<_>>())
            })
            .await
            .unwrap();
            assert!(ok, "{name} {flag}: {err}");
            assert!(
                out.ends_with(&format!("\n{want} 0")),
                "{name} {flag}: {out}"
            );
            assert!(
                out.contains(&format!("\"host\":\"{name}:{port}\"")),
                "{out}"
            );
        }

        // openssl s_client: the certificate presented for this SNI.
        let addr = format!("127.0.0.1:{port}");
        let sni = name.to_string();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("openssl")
                .args([
                    "s_client",
                    "-connect",
                    &addr,
                    "-servername",
                    &sni,
                    "-showcerts",
                ])
                .stdin(std::process::Stdio::null())
                .output()
                .expect("openssl installed (apt-get install openssl)")
        })
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            pem_body(&text),
            pem_body(&cert.cert_pem),
            "openssl -servername {name}: {text}"
        );
    }
}

async fn h1_over_tls(
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let (tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

async fn get_config(
    tx: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
) -> String {
    let resp = tx
        .send_request(
            http::Request::get("/")
                .header("host", "www.example.com")
                .body(http_body_util::Empty::new())
                .unwrap(),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    resp.headers()["x-config"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn certificate_rotation_keeps_open_connections() {
    let e = echo("web").await;
    let old = self_signed_cert(&["www.example.com"]);
    let new = self_signed_cert(&["www.example.com"]);
    let port = free_port();
    let snap = |cert: &Cert, tag: &str, version: u64| {
        let mut s = snapshot(
            vec![https_listener(
                port,
                vec![ir_cert(cert, &[], "default/www")],
                tag,
            )],
            vec![cluster("web", &[e.addr])],
        );
        s.version = version;
        s
    };
    let p = start(snap(&old, "v1", 1)).await;
    let (tls, leaf) = tls_connect(port, "www.example.com", &old, &["http/1.1"])
        .await
        .unwrap();
    assert_eq!(leaf, old.der);
    let mut open = h1_over_tls(tls).await;
    assert_eq!(get_config(&mut open).await, "v1");

    let rep = p.apply(snap(&new, "v2", 2)).await;
    assert!(rep.applied && rep.listener_errors.is_empty(), "{rep:?}");
    // New handshakes get the new certificate.
    let (tls, leaf) = tls_connect(port, "www.example.com", &new, &["http/1.1"])
        .await
        .expect("handshake with the new certificate");
    assert_eq!(leaf, new.der);
    assert_eq!(get_config(&mut h1_over_tls(tls).await).await, "v2");
    assert!(
        tls_connect(port, "www.example.com", &old, &["http/1.1"])
            .await
            .is_err()
    );
    // The connection opened with the old certificate keeps working, on the new routes.
    assert_eq!(get_config(&mut open).await, "v2");
}

#[tokio::test]
async fn a_broken_certificate_disturbs_no_other_listener() {
    let e = echo("web").await;
    let cert1 = self_signed_cert(&["one.example.com"]);
    let cert2 = self_signed_cert(&["two.example.com"]);
    let (p1, p2) = (free_port(), free_port());
    let snap = |tag: &str, version: u64, broken: bool| {
        let mut c2 = ir_cert(&cert2, &[], "default/two");
        if broken {
            // A renewal that wrote another certificate's key.
            c2.private_key_pem = cert1.key_pem.clone();
        }
        let mut s = snapshot(
            vec![
                https_listener(p1, vec![ir_cert(&cert1, &[], "default/one")], tag),
                https_listener(p2, vec![c2], tag),
            ],
            vec![cluster("web", &[e.addr])],
        );
        s.version = version;
        s
    };
    let p = start(snap("v1", 1, false)).await;
    let rep = p.apply(snap("v2", 2, true)).await;
    assert!(rep.applied, "{rep:?}");
    let name2 = format!("tcp:127.0.0.1:{p2}");
    assert_eq!(rep.listener_errors.len(), 1, "{rep:?}");
    let why = &rep.listener_errors[&name2];
    assert!(
        why.contains("default/two") && why.contains("previous certificates keep serving"),
        "{why}"
    );
    // The healthy listener took the new configuration.
    let (tls, _) = tls_connect(p1, "one.example.com", &cert1, &["http/1.1"])
        .await
        .unwrap();
    assert_eq!(get_config(&mut h1_over_tls(tls).await).await, "v2");
    // The broken one still presents its previous certificate, with the new routes.
    let (tls, leaf) = tls_connect(p2, "two.example.com", &cert2, &["http/1.1"])
        .await
        .expect("previous certificate still served");
    assert_eq!(leaf, cert2.der);
    assert_eq!(get_config(&mut h1_over_tls(tls).await).await, "v2");
}

/// A WebSocket server: greets first, then answers text with `echo:<text>` and binary reversed.
async fn ws_server() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                use tokio_tungstenite::tungstenite::Message;
                let _ = ws.send(Message::text("hello from the server")).await;
                while let Some(Ok(m)) = ws.next().await {
                    let reply = match m {
                        Message::Text(t) => Message::text(format!("echo:{}", t.as_str())),
                        Message::Binary(b) => {
                            Message::binary(b.iter().rev().copied().collect::<Vec<u8>>())
                        }
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    if ws.send(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_both_directions_through_the_proxy() {
    use tokio_tungstenite::tungstenite::Message;
    let up = ws_server().await;
    let port = free_port();
    let _p = start(snapshot(
        vec![http_listener(
            port,
            vec![vhost("*", vec![route("ws").backend("ws", 1).build()])],
        )],
        vec![cluster("ws", &[up])],
    ))
    .await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://ws.example.com/chat", tcp)
        .await
        .expect("WebSocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    // Server to client first, unprompted.
    assert_eq!(
        ws_next(&mut ws).await,
        Message::text("hello from the server")
    );
    for i in 0..5 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        assert_eq!(ws_next(&mut ws).await, Message::text(format!("echo:m{i}")));
    }
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(ws_next(&mut ws).await, Message::binary(vec![3u8, 2, 1]));
    ws.close(None).await.unwrap();
}

async fn ws_next(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
) -> tokio_tungstenite::tungstenite::Message {
    tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("message in time")
        .expect("open")
        .expect("valid frame")
}
