//! `sluice standalone --ebpf` on the real kernel: a Service's ClusterIP is answered by its
//! endpoint for a process in the gateway's cgroup, a single-backend TCPRoute listener is
//! balanced by the kernel for that process while the proxy serves it for everyone else, the
//! datapath's metrics appear on the admin API, and SIGTERM detaches everything. Needs root and `cargo xtask ebpf` (the test command
//! does both); otherwise it says SKIPPED.

mod common;

use common::{Gateway, echo, gateway_with_listeners};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn skip_reason() -> Option<String> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        return Some("not root".into());
    }
    let object = sluice_ebpf_loader::default_object_path();
    if !object.exists() {
        return Some(format!(
            "{} missing: run `cargo xtask ebpf`",
            object.display()
        ));
    }
    None
}

/// Removes what killed earlier runs of this test left in the kernel: pin directories and
/// cgroups named after a process that no longer exists. Their pinned links keep the programs
/// attached, and the sk_lookup one runs for every connection in the network namespace.
fn reap_stale_runs() {
    let dead = |name: &std::ffi::OsStr, prefix: &str| {
        name.to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| {
                pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
            })
    };
    for e in std::fs::read_dir("/sys/fs/bpf")
        .into_iter()
        .flatten()
        .flatten()
    {
        if dead(&e.file_name(), "sluice-standalone-test-") {
            eprintln!("removing {} (left by a killed run)", e.path().display());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let cgroups = sluice_ebpf_loader::default_cgroup();
    for e in std::fs::read_dir(cgroups).into_iter().flatten().flatten() {
        if dead(&e.file_name(), "sluice-standalone-") {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

struct Cgroup(PathBuf);

impl Cgroup {
    /// curl run from a process inside the cgroup; returns its output.
    fn curl(&self, url: &str) -> String {
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec curl -s --max-time 5 {url}",
            self.0.display()
        );
        let out = Command::new("sh").args(["-c", &script]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Move anything left back to the parent, then remove the directory.
        if let Ok(procs) = std::fs::read_to_string(self.0.join("cgroup.procs")) {
            let parent = self.0.parent().unwrap().join("cgroup.procs");
            for pid in procs.lines() {
                let _ = std::fs::write(&parent, pid);
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Polls the admin API's /metrics (up to 5 s) until `ok` holds; returns the last text read.
async fn metrics_until(gw: &Gateway, ok: impl Fn(&str) -> bool) -> String {
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = gw.admin_get("/metrics").await.unwrap().1;
        if ok(&metrics) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    metrics
}

/// The lines of `text` containing `needle`, for assertion messages.
fn lines_with(text: &str, needle: &str) -> String {
    text.lines()
        .filter(|l| l.contains(needle))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ip_is_balanced_in_the_kernel_for_the_gateway_cgroup() {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED: {reason}");
        return;
    }
    reap_stale_runs();
    let ip = "127.0.70.1";
    let cgroup = Cgroup(
        sluice_ebpf_loader::default_cgroup()
            .join(format!("sluice-standalone-{}", std::process::id())),
    );
    std::fs::create_dir_all(&cgroup.0).unwrap();
    let pin_dir = format!("/sys/fs/bpf/sluice-standalone-test-{}", std::process::id());
    let (_e, backend) = echo(ip, "web-0").await;
    let files = [(
        "web.yaml",
        format!(
            "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  clusterIP: 10.96.70.10
  ports: [{{name: http, port: 80, targetPort: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints:
- addresses: [\"{ip}\"]
---
{gateway}---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {{name: web-tcp, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]
",
            port = backend.port(),
            gateway = gateway_with_listeners("  - {name: tcp, protocol: TCP, port: 9000}\n"),
        ),
    )];
    let mut gw = Gateway::start_with(
        ip,
        &files,
        &[
            "--ebpf",
            "--cgroup",
            cgroup.0.to_str().unwrap(),
            "--pin-dir",
            &pin_dir,
        ],
    );
    gw.ready().await;
    gw.wait_for("the datapath sync", Duration::from_secs(10), |_| async {
        gw.log_text().contains("eBPF datapath synced")
    })
    .await;

    // A client inside the cgroup reaches the ClusterIP; nothing else routes 10.96.70.10.
    let body = cgroup.curl("http://10.96.70.10/via-clusterip");
    assert!(
        body.contains("\"pod\": \"web-0\""),
        "{body}\n{}",
        gw.log_text()
    );
    assert!(body.contains("\"path\": \"/via-clusterip\""), "{body}");

    // The TCPRoute listener has one backend: the kernel connects the client straight to it
    // (a socket-level frontend named after the listener), the proxy is not in the path.
    let body = cgroup.curl(&format!("http://{ip}:9000/via-tcproute"));
    assert!(
        body.contains("\"path\": \"/via-tcproute\""),
        "{body}\n{}",
        gw.log_text()
    );
    // Outside the cgroup the proxy serves the same listener (the userspace fallback).
    let (code, body) = common::raw_get(format!("{ip}:9000").parse().unwrap(), "x", "/fallback")
        .await
        .expect("the proxy serves the TCP listener");
    assert_eq!(code, 200, "{body}");

    // Flow events reach the metrics through a ring buffer reader: allow it a moment.
    let listener_flows = format!(
        "sluice_ebpf_flows_total{{kind=\"sock_connect\",verdict=\"translated\",service=\"listener tcp:{ip}:9000\"}}"
    );
    let metrics = metrics_until(&gw, |m| m.lines().any(|l| l.starts_with(&listener_flows))).await;
    assert!(
        metrics.lines().any(|l| l.starts_with(&listener_flows)),
        "{listener_flows} in\n{}",
        lines_with(&metrics, "ebpf")
    );

    // The kernel counters are published while traffic flows, not only when the configuration
    // changes (the last sync was before the requests above): the clients' sockets in the
    // cgroup went through the sockmap program, redirected or passed on to TCP.
    let sockmap_msgs = |m: &str| -> u64 {
        m.lines()
            .filter(|l| {
                l.starts_with("sluice_ebpf_datapath{counter=\"sockmap_redirected\"}")
                    || l.starts_with("sluice_ebpf_datapath{counter=\"sockmap_passed\"}")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let metrics = metrics_until(&gw, |m| sockmap_msgs(m) > 0).await;
    assert!(
        sockmap_msgs(&metrics) > 0,
        "sockmap counters still 0:\n{}",
        lines_with(&metrics, "sluice_ebpf_datapath")
    );

    // SIGTERM: a clean shutdown detaches and unpins.
    Command::new("kill")
        .args(["-TERM", &gw.child.id().to_string()])
        .status()
        .unwrap();
    let status = gw.child.wait().unwrap();
    assert!(status.success(), "{}", gw.log_text());
    assert!(
        gw.log_text().contains("eBPF datapath detached"),
        "{}",
        gw.log_text()
    );
    let pinned = std::fs::read_dir(&pin_dir).map(|d| d.count()).unwrap_or(0);
    let _ = std::fs::remove_dir_all(&pin_dir);
    assert_eq!(pinned, 0, "pinned state left under {pin_dir}");
}
