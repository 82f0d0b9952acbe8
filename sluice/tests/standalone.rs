//! The `sluice standalone` binary on a directory of YAML: reloads, bad files, listeners coming
//! and going, the admin API. Real sockets, curl and a hyper client.

mod common;

use common::*;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

fn header(resp_headers: &str, name: &str) -> Option<String> {
    resp_headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// curl -si: (status, headers+body text).
fn get(url: &str, host: &str) -> (u16, String) {
    let (_, out) = curl(&["-i", "-H", &format!("Host: {host}"), url]);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out)
}

fn errors(status: &serde_json::Value) -> Vec<String> {
    status["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "{}:{}: {}",
                e["source"]["file"].as_str().unwrap_or_default(),
                e["source"]["line"],
                e["message"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_keep_the_last_good_configuration() {
    let ip = "127.0.61.1";
    let (_e1, b1) = echo(ip, "app-v1-0").await;
    let (_e2, b2) = echo(ip, "other-0").await;
    let gw = Gateway::start(
        ip,
        &[
            ("gateway.yaml", gateway_yaml(8080)),
            ("svc.yaml", service_yaml("app", b1)),
            ("route.yaml", route_yaml("app", "/app", "app", "1")),
        ],
    );
    gw.ready().await;
    let url = format!("http://{ip}:8080/app/x");
    let (code, out) = get(&url, "example.com");
    assert_eq!(code, 200, "{out}");
    assert_eq!(header(&out, "x-version").as_deref(), Some("1"));
    assert!(out.contains("\"pod\": \"app-v1-0\""), "{out}");

    let good_route = route_yaml("app", "/app", "app", "1");
    // 1. Invalid YAML.
    gw.write("route.yaml", &format!("{good_route}  - broken: [\n"));
    gw.wait_for(
        "a YAML error on /status",
        Duration::from_secs(10),
        |_| async {
            errors(&gw.status().await)
                .iter()
                .any(|e| e.contains("route.yaml") && e.contains("invalid YAML"))
        },
    )
    .await;
    let (code, out) = get(&url, "example.com");
    assert_eq!(code, 200, "the last good route keeps serving: {out}");
    assert_eq!(header(&out, "x-version").as_deref(), Some("1"));

    // 2. A bad regular expression, with its line.
    let bad_regex = good_route.replace(
        "{type: PathPrefix, value: /app}",
        "{type: RegularExpression, value: \"/app[\"}",
    );
    gw.write("route.yaml", &bad_regex);
    gw.wait_for(
        "a regex error on /status",
        Duration::from_secs(10),
        |_| async {
            errors(&gw.status().await).iter().any(|e| {
                e.contains("route.yaml:8:") && e.contains("invalid regular expression \"/app[\"")
            })
        },
    )
    .await;
    assert_eq!(get(&url, "example.com").0, 200);

    // 3. Another file with an unknown kind next to a good new file: the good one applies.
    gw.write(
        "junk.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n",
    );
    gw.write(
        "other.yaml",
        &format!(
            "{}---\n{}",
            service_yaml("other", b2),
            route_yaml("other", "/other", "other", "o")
        ),
    );
    let other = format!("http://{ip}:8080/other");
    gw.wait_for("the other route", Duration::from_secs(10), |_| async {
        get(&other, "example.com").0 == 200
    })
    .await;
    let errs = errors(&gw.status().await);
    assert!(
        errs.iter()
            .any(|e| e.contains("junk.yaml:1:") && e.contains("unknown kind \"Widget\"")),
        "{errs:?}"
    );
    assert_eq!(
        header(&get(&url, "example.com").1, "x-version").as_deref(),
        Some("1")
    );
    let log = gw.log_text();
    assert!(
        log.contains("route.yaml:8"),
        "the log names file and line:\n{log}"
    );
    assert!(log.contains("invalid regular expression"), "{log}");

    // 4. Fixed: the new version serves and the errors go away.
    std::fs::remove_file(gw.path().join("junk.yaml")).unwrap();
    gw.write("route.yaml", &route_yaml("app", "/app", "app", "2"));
    gw.wait_for("version 2", Duration::from_secs(10), |_| async {
        header(&get(&url, "example.com").1, "x-version").as_deref() == Some("2")
    })
    .await;
    assert!(errors(&gw.status().await).is_empty());
}

/// One keep-alive connection sending GETs until `stop`; counts successes and failures and
/// records the `x-version` values seen.
async fn hammer(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) -> BTreeSet<String> {
    let mut versions = BTreeSet::new();
    'reconnect: while !stop.load(Ordering::Relaxed) {
        let stream = match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("connect failed: {e}");
                failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        while !stop.load(Ordering::Relaxed) {
            let req = hyper::Request::get("/load")
                .header("host", "example.com")
                .body(Empty::<Bytes>::new())
                .unwrap();
            match send.send_request(req).await {
                Ok(resp) => {
                    let status = resp.status();
                    if let Some(v) = resp.headers().get("x-version") {
                        versions.insert(v.to_str().unwrap_or_default().to_string());
                    }
                    let body = resp.into_body().collect().await;
                    if status == 200 && body.is_ok() {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        eprintln!("request failed: {status}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    eprintln!("request error: {e}");
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue 'reconnect;
                }
            }
        }
    }
    versions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_lose_no_request() {
    let ip = "127.0.62.1";
    let (_e, b) = echo(ip, "load-0").await;
    let gw = Gateway::start(
        ip,
        &[
            ("gateway.yaml", gateway_yaml(8080)),
            ("svc.yaml", service_yaml("load", b)),
            ("route.yaml", route_yaml("load", "/load", "load", "0")),
        ],
    );
    gw.ready().await;
    let addr: std::net::SocketAddr = format!("{ip}:8080").parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| tokio::spawn(hammer(addr, stop.clone(), ok.clone(), failed.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 1..=50 {
        gw.write(
            "route.yaml",
            &route_yaml("load", "/load", "load", &i.to_string()),
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    gw.wait_for("the 50th version", Duration::from_secs(10), |_| async {
        header(
            &get(&format!("http://{addr}/load"), "example.com").1,
            "x-version",
        )
        .as_deref()
            == Some("50")
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = BTreeSet::new();
    for c in clients {
        seen.extend(c.await.unwrap());
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "{ok} requests succeeded, {failed} failed, {} versions seen",
        seen.len()
    );
    assert_eq!(failed, 0, "no request may fail during reloads");
    assert!(ok > 500, "the load ran ({ok} requests)");
    assert!(
        seen.len() >= 20,
        "reloads took effect while the load ran: {seen:?}"
    );
    let applied = gw.log_text().matches("configuration applied").count();
    assert!(applied >= 30, "{applied} reloads applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_come_and_go_and_a_taken_port_is_reported() {
    let ip = "127.0.63.1";
    let (_e, b) = echo(ip, "app-0").await;
    let gateway = |ports: &[u16]| {
        let mut g = gateway_yaml(ports[0]);
        for p in &ports[1..] {
            g.push_str(&format!(
                "  - {{name: http-{p}, protocol: HTTP, port: {p}}}\n"
            ));
        }
        g
    };
    let gw = Gateway::start(
        ip,
        &[
            ("gateway.yaml", gateway(&[8080])),
            ("svc.yaml", service_yaml("app", b)),
            ("route.yaml", route_yaml("app", "/", "app", "1")),
        ],
    );
    gw.ready().await;
    let url = |port: u16| format!("http://{ip}:{port}/");
    assert_eq!(get(&url(8080), "a").0, 200);

    // Added live.
    gw.write("gateway.yaml", &gateway(&[8080, 8081]));
    gw.wait_for("port 8081", Duration::from_secs(10), |_| async {
        get(&url(8081), "a").0 == 200
    })
    .await;

    // A port someone else holds: reported, the others keep serving.
    let squatter = std::net::TcpListener::bind(format!("{ip}:8082")).unwrap();
    gw.write("gateway.yaml", &gateway(&[8080, 8081, 8082]));
    let listener_status = |status: serde_json::Value, name: &str| {
        status["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == "Gateway" && r["name"] == "gw")
            .and_then(|g| {
                g["listeners"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|l| l["name"] == name)
                    .cloned()
            })
    };
    gw.wait_for(
        "Programmed=False on http-8082",
        Duration::from_secs(10),
        |_| async {
            listener_status(gw.status().await, "http-8082").is_some_and(|l| {
                l["conditions"].as_array().unwrap().iter().any(|c| {
                    c["type"] == "Programmed"
                        && c["status"] == "False"
                        && c["message"].as_str().unwrap_or_default().contains("8082")
                })
            })
        },
    )
    .await;
    assert_eq!(get(&url(8080), "a").0, 200);
    assert_eq!(get(&url(8081), "a").0, 200);

    // Freed: retried and served.
    drop(squatter);
    gw.wait_for(
        "port 8082 after it is freed",
        Duration::from_secs(10),
        |_| async { get(&url(8082), "a").0 == 200 },
    )
    .await;

    // Removed live: refused, the others unaffected.
    gw.write("gateway.yaml", &gateway(&[8081, 8082]));
    gw.wait_for("port 8080 closed", Duration::from_secs(10), |_| async {
        raw_get(format!("{ip}:8080").parse().unwrap(), "a", "/")
            .await
            .is_none()
    })
    .await;
    assert_eq!(get(&url(8081), "a").0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_and_http2_with_curl() {
    let ip = "127.0.64.1";
    let (_e, b) = echo(ip, "app-0").await;
    let gw = Gateway::start(
        ip,
        &[
            ("gateway.yaml", gateway_yaml(8080)),
            ("svc.yaml", service_yaml("app", b)),
            ("route.yaml", route_yaml("app", "/", "app", "1")),
        ],
    );
    gw.ready().await;
    let (_, out) = curl(&[
        "-i",
        "--http2-prior-knowledge",
        "-H",
        "Host: example.com",
        &format!("http://{ip}:8080/h2"),
    ]);
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    assert!(out.contains("\"path\": \"/h2\""), "{out}");
    let (code, _) = get(&format!("http://{ip}:8080/"), "example.com");
    assert_eq!(code, 200);

    let (code, dump) = gw.admin_get("/config_dump").await.unwrap();
    assert_eq!(code, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["listeners"][0]["name"], format!("tcp:{ip}:8080"));
    assert_eq!(dump["clusters"][0]["name"], "default/app:80");

    let (code, metrics) = gw.admin_get("/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics
            .lines()
            .any(|l| !l.starts_with('#') && l.contains("200")),
        "request counters by status code:\n{metrics}"
    );
    let status = gw.status().await;
    let route = status["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "HTTPRoute")
        .unwrap();
    assert_eq!(route["parents"][0]["conditions"][0]["type"], "Accepted");
    assert_eq!(route["parents"][0]["conditions"][0]["status"], "True");
    assert!(
        route["source"]["file"]
            .as_str()
            .unwrap()
            .ends_with("route.yaml")
    );
}
