//! Idle HTTP/1.1 keep-alive connections: parked without buffers after a short idle time, served
//! again when the client sends its next request (also one split across the park), closed when
//! the client closes, when the header read timeout runs out, and at once when their listener
//! is removed; parking lets the allocator return the freed memory.

use sluice_ir::Snapshot;
use sluice_proxy::test_util::*;
use sluice_proxy::{Proxy, ProxyOptions};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Long enough for any idle connection to be parked (they are after 100-200 ms).
const PARKED: Duration = Duration::from_millis(600);

const GET: &[u8] = b"GET /idle HTTP/1.1\r\nHost: h\r\n\r\n";

async fn proxy(workers: usize, header_read_timeout: Option<Duration>) -> (Proxy, Echo, u16) {
    proxy_with(ProxyOptions {
        workers,
        header_read_timeout,
        ..Default::default()
    })
    .await
}

async fn proxy_with(opts: ProxyOptions) -> (Proxy, Echo, u16) {
    let e = echo("p").await;
    let port = free_port();
    let p = Proxy::start(opts).expect("start");
    let r = p.apply(catch_all(port, &e)).await;
    assert!(r.applied && r.listener_errors.is_empty(), "{r:?}");
    (p, e, port)
}

/// One listener on `port` whose single route sends everything to `e`.
fn catch_all(port: u16, e: &Echo) -> Snapshot {
    snapshot(
        vec![http_listener(
            port,
            vec![vhost("*", vec![route("r").backend("c", 1).build()])],
        )],
        vec![cluster("c", &[e.addr])],
    )
}

/// `n` connections to `port`, each having been answered 200 for one request.
async fn served(port: u16, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (head, _) = get_on(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        conns.push(s);
    }
    conns
}

/// Reads one response with a Content-Length body; returns (head, body).
async fn response(s: &mut TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or_else(|| panic!("no content-length in {head}"));
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                return (head, body);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n > 0, "connection closed before a full response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn get_on(s: &mut TcpStream) -> (String, String) {
    s.write_all(GET).await.expect("write");
    response(s).await
}

/// The value of `name{listener="tcp:127.0.0.1:port"}` in the proxy's metrics.
fn gauge(p: &Proxy, name: &str, port: u16) -> i64 {
    let m = p.metrics().encode();
    let prefix = format!("{name}{{listener=\"tcp:127.0.0.1:{port}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{m}"))
        .parse()
        .expect("a gauge value")
}

/// Waits up to `within` for the connection to be closed by the proxy (EOF or reset).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 64];
    match tokio::time::timeout(within, s.read(&mut b)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(n)) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&b[..n])),
        Err(_) => false,
    }
}

#[tokio::test]
async fn idle_connections_are_parked_and_serve_their_next_request() {
    let (p, _e, port) = proxy(2, Some(Duration::from_secs(30))).await;
    let mut conns = served(port, 50).await;
    tokio::time::sleep(PARKED).await;
    assert_eq!(gauge(&p, "sluice_parked_connections", port), 50);
    assert_eq!(gauge(&p, "sluice_active_connections", port), 50);

    // Every parked connection serves its next request, with the client's address intact.
    for s in &mut conns {
        let (head, body) = get_on(s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let echoed: Echoed = serde_json::from_str(&body).expect("an echo");
        assert_eq!(echoed.path, "/idle");
        assert_eq!(echoed.header("x-forwarded-for"), Some("127.0.0.1"));
    }
    // Several requests back to back on one connection, then idle again.
    for _ in 0..20 {
        assert!(get_on(&mut conns[0]).await.0.starts_with("HTTP/1.1 200"));
    }
    tokio::time::sleep(PARKED).await;
    assert_eq!(gauge(&p, "sluice_parked_connections", port), 50);

    // Clients that close are forgotten: the lot sees the end of the stream.
    conns.truncate(20);
    let deadline = Instant::now() + Duration::from_secs(3);
    while gauge(&p, "sluice_active_connections", port) != 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gauge(&p, "sluice_active_connections", port), 20);
    assert_eq!(gauge(&p, "sluice_parked_connections", port), 20);
    for s in &mut conns {
        assert!(get_on(s).await.0.starts_with("HTTP/1.1 200"));
    }
    p.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_request_head_split_across_the_idle_time_is_served() {
    let (p, _e, port) = proxy(1, Some(Duration::from_secs(30))).await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // A request and the start of a pipelined second one, then a pause longer than the park.
    let mut first = GET.to_vec();
    first.extend_from_slice(b"GET /second HTTP/1.1\r\nHo");
    s.write_all(&first).await.unwrap();
    assert!(response(&mut s).await.0.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(PARKED).await;
    // The partial head is not an idle connection: it was not parked.
    assert_eq!(gauge(&p, "sluice_parked_connections", port), 0);
    s.write_all(b"st: h\r\n\r\n").await.unwrap();
    let (head, body) = response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let echoed: Echoed = serde_json::from_str(&body).expect("an echo");
    assert_eq!(echoed.path, "/second");

    // A head started after the previous response finished, paused over the park time.
    s.write_all(b"GET /third HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(PARKED).await;
    assert_eq!(gauge(&p, "sluice_parked_connections", port), 0);
    s.write_all(b"Host: h\r\n\r\n").await.unwrap();
    let (_, body) = response(&mut s).await;
    assert_eq!(
        serde_json::from_str::<Echoed>(&body).unwrap().path,
        "/third"
    );
    p.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn parked_connections_close_when_the_header_read_timeout_runs_out() {
    let (p, _e, port) = proxy(1, Some(Duration::from_millis(1500))).await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert!(get_on(&mut s).await.0.starts_with("HTTP/1.1 200"));
    let idle = Instant::now();
    assert!(!closed_within(&mut s, PARKED).await, "closed too early");
    assert_eq!(gauge(&p, "sluice_parked_connections", port), 1);
    // Closed by the lot's sweep (four times a second) once 1.5 s of idle time are over.
    assert!(
        closed_within(&mut s, Duration::from_secs(3)).await,
        "parked connection still open {:?} after its last request",
        idle.elapsed()
    );
    assert!(idle.elapsed() >= Duration::from_millis(1400));
    assert_eq!(gauge(&p, "sluice_parked_connections", port), 0);
    assert_eq!(gauge(&p, "sluice_active_connections", port), 0);
    p.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_closed_after_the_header_read_timeout() {
    let (p, _e, port) = proxy(1, Some(Duration::from_millis(800))).await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let start = Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(3)).await,
        "a silent connection is still open after {:?}",
        start.elapsed()
    );
    assert!(start.elapsed() >= Duration::from_millis(700));
    assert_eq!(gauge(&p, "sluice_active_connections", port), 0);
    p.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn parked_connections_close_at_once_when_their_listener_goes() {
    let (p, e, port) = proxy(2, Some(Duration::from_secs(30))).await;
    let mut conns = served(port, 10).await;
    tokio::time::sleep(PARKED).await;
    assert_eq!(gauge(&p, "sluice_parked_connections", port), 10);
    // A snapshot with another listener only: this one drains, and parked connections have
    // nothing in flight, so they close without waiting for the lot's next sweep.
    assert!(p.apply(catch_all(free_port(), &e)).await.applied);
    for s in &mut conns {
        assert!(
            closed_within(s, Duration::from_millis(500)).await,
            "a parked connection outlived its listener"
        );
    }
    assert_eq!(gauge(&p, "sluice_parked_connections", port), 0);
    p.shutdown(Duration::from_secs(1)).await;
}

static RELEASED: AtomicUsize = AtomicUsize::new(0);

fn count_release() {
    RELEASED.fetch_add(1, Ordering::SeqCst);
}

#[tokio::test]
async fn the_allocator_is_asked_to_return_memory_after_connections_are_parked() {
    let (p, _e, port) = proxy_with(ProxyOptions {
        workers: 1,
        release_memory: Some(count_release),
        ..Default::default()
    })
    .await;
    let mut conns = served(port, 5).await;
    // Parked after at most 200 ms; the lot's next sweep (every 250 ms) calls the hook (twice
    // if the parks straddle a sweep).
    tokio::time::sleep(PARKED).await;
    assert_eq!(gauge(&p, "sluice_parked_connections", port), 5);
    let n = RELEASED.load(Ordering::SeqCst);
    assert!((1..=2).contains(&n), "called {n} times");
    // Nothing parked since: not called again.
    tokio::time::sleep(PARKED).await;
    assert_eq!(RELEASED.load(Ordering::SeqCst), n);
    // One more connection parked: called again.
    assert!(get_on(&mut conns[0]).await.0.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(PARKED).await;
    assert_eq!(RELEASED.load(Ordering::SeqCst), n + 1);
    p.shutdown(Duration::from_secs(1)).await;
}
