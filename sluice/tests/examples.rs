//! The examples run: `sluice quickstart` on each example directory, checked with the curl lines
//! it prints and with what each example promises.

mod common;

use common::curl;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Quickstart {
    child: Child,
    printed: String,
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `sluice quickstart ARGS` and returns once it printed its instructions.
fn quickstart(args: &[&str]) -> Quickstart {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("quickstart")
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut printed = String::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap_or_default();
            printed.push_str(&line);
            printed.push('\n');
            if line.contains("Press Ctrl-C") {
                let _ = tx.send(printed.clone());
            }
        }
    });
    let printed = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("quickstart prints its instructions within 30 s");
    Quickstart { child, printed }
}

fn sh(line: &str) -> (bool, String) {
    let out = Command::new("sh").args(["-c", line]).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

fn pod_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["pod"].as_str().unwrap_or_default().to_string()
}

#[test]
fn quickstart_prints_curl_lines_that_work() {
    let qs = quickstart(&["--admin", "127.0.0.1:9902"]);
    let lines: Vec<&str> = qs
        .printed
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("curl ") || l.starts_with("for "))
        .collect();
    assert!(lines.len() >= 8, "{}", qs.printed);
    for line in &lines {
        let (ok, out) = sh(line);
        assert!(ok, "`{line}` failed");
        assert!(!out.trim().is_empty(), "`{line}` printed nothing");
    }

    // The canary split: 90/10 within a statistical bound (400 requests: sd = 6).
    let mut v1 = 0;
    for _ in 0..400 {
        let (_, body) = curl(&["-H", "Host: www.example.com", "http://127.0.0.1:8080/"]);
        match pod_of(&body).as_str() {
            p if p.starts_with("web-v1") => v1 += 1,
            p if p.starts_with("web-v2") => {}
            other => panic!("unexpected backend {other:?}: {body}"),
        }
    }
    assert!((336..=384).contains(&v1), "web-v1 got {v1} of 400");

    // The header-matched route.
    let (_, out) = curl(&[
        "-i",
        "-H",
        "Host: www.example.com",
        "-H",
        "x-canary: true",
        "http://127.0.0.1:8080/api/users",
    ]);
    assert!(out.to_lowercase().contains("x-api-version: v2"), "{out}");
    assert!(out.contains("\"pod\": \"api-v2"), "{out}");
    assert!(out.contains("sluice-canary"), "request header added: {out}");
    let (_, out) = curl(&[
        "-i",
        "-H",
        "Host: www.example.com",
        "http://127.0.0.1:8080/api/users",
    ]);
    assert!(out.to_lowercase().contains("x-api-version: v1"), "{out}");
    let (_, out) = curl(&[
        "-i",
        "-H",
        "Host: nope.example.com",
        "http://127.0.0.1:8080/",
    ]);
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
}

#[test]
fn per_namespace_gateways_get_their_own_addresses() {
    let dir = repo().join("examples/per-namespace");
    let _qs = quickstart(&[
        "--dir",
        dir.to_str().unwrap(),
        "--address-pool",
        "127.0.67.0/24",
        "--admin",
        "127.0.66.1:9901",
    ]);
    let (_, status) = curl(&["http://127.0.66.1:9901/status"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let resources = status["resources"].as_array().unwrap();
    let mut addresses = Vec::new();
    for team in ["team-a", "team-b"] {
        let gw = resources
            .iter()
            .find(|r| r["kind"] == "Gateway" && r["namespace"] == team)
            .unwrap_or_else(|| panic!("{team} gateway in {status}"));
        let addr = gw["addresses"][0]["value"].as_str().unwrap().to_string();
        assert!(addr.starts_with("127.0.67."), "{addr}");
        let deadline = Instant::now() + Duration::from_secs(10);
        let body = loop {
            let (_, body) = curl(&[&format!("http://{addr}:8080/")]);
            if pod_of(&body).starts_with("app-") || Instant::now() > deadline {
                break body;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(pod_of(&body), format!("app-{team}-0"), "{team} via {addr}");
        addresses.push(addr);
    }
    assert_ne!(addresses[0], addresses[1], "each Gateway its own address");
    let intruder = resources
        .iter()
        .find(|r| r["kind"] == "HTTPRoute" && r["name"] == "intruder")
        .unwrap();
    let cond = &intruder["parents"][0]["conditions"][0];
    assert_eq!(cond["type"], "Accepted", "{intruder}");
    assert_eq!(cond["status"], "False", "{intruder}");
    assert_eq!(cond["reason"], "NotAllowedByListeners", "{intruder}");
}

#[test]
fn ingress_example_serves_rules_wildcards_and_default_backend() {
    if !Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
    {
        eprintln!("SKIPPED: the ingress example binds port 80, which needs root");
        return;
    }
    let dir = repo().join("examples/ingress");
    let _qs = quickstart(&[
        "--dir",
        dir.to_str().unwrap(),
        "--address-pool",
        "127.0.68.1/32",
        "--admin",
        "127.0.68.1:9901",
    ]);
    let get = |host: &str, path: &str| {
        let (_, body) = curl(&[
            "-H",
            &format!("Host: {host}"),
            &format!("http://127.0.68.1{path}"),
        ]);
        pod_of(&body)
    };
    assert_eq!(get("shop.example.com", "/cart/items"), "cart-0");
    assert_eq!(get("shop.example.com", "/healthz"), "web-0");
    assert_eq!(get("eu.shop.example.com", "/"), "web-0");
    assert_eq!(
        get("unknown.example.org", "/anything"),
        "web-0",
        "defaultBackend"
    );
    let (_, status) = curl(&["http://127.0.68.1:9901/status"]);
    assert!(status.contains("\"kind\": \"Ingress\""), "{status}");
}
