//! Privileged tests of the eBPF datapath on the real kernel. Each test builds its own
//! topology of network namespaces (a node, a client and a remote host on a bridged LAN, two
//! local pods) and a dedicated child cgroup, loads the datapath into them, and drives real
//! sockets with the `probe` example. Everything is removed afterwards, also on failure.
//!
//! They skip (printing `SKIPPED: <reason>`) when not root or when the kernel object is
//! missing (`cargo xtask ebpf` builds it).

use anyhow::{Context, Result, bail};
use sluice_ebpf_loader::{Datapath, DatapathOptions, EventKind, FlowRecord, Verdict};
use sluice_ir::{
    Cluster, Endpoint, L4Protocol, L4Service, Listener, ListenerProtocol, ServicePort, Snapshot,
};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The tests share the CPU and the kernel: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());
static NEXT: AtomicU32 = AtomicU32::new(0);

fn object() -> PathBuf {
    sluice_ebpf_loader::default_object_path()
}

fn probe() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/datapath-<hash> -> target/<profile>/examples/probe
    exe.parent()
        .and_then(Path::parent)
        .map(|p| p.join("examples/probe"))
        .expect("target layout")
}

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    #[allow(unsafe_code)]
    if unsafe { libc::geteuid() } != 0 {
        return Some("eBPF datapath tests need root".into());
    }
    if !object().exists() {
        return Some(format!(
            "eBPF object {} is missing; build it with `cargo xtask ebpf`",
            object().display()
        ));
    }
    if !probe().exists() {
        return Some(format!("probe example {} is missing", probe().display()));
    }
    None
}

macro_rules! require_privileges {
    () => {
        if let Some(reason) = skip_reason() {
            println!("SKIPPED: {reason}");
            eprintln!("SKIPPED: {reason}");
            return Ok(());
        }
    };
}

fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("sh").arg("-c").arg(cmd).output()?;
    if !out.status.success() {
        bail!(
            "`{cmd}` failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Parses `k=v k=v` lines.
fn kv(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const NODE_IP: &str = "10.99.0.1";
const CLIENT_IP: &str = "10.99.0.2";
const REMOTE_IP: &str = "10.99.0.3";
const BE1: &str = "10.98.1.2";
const BE2: &str = "10.98.2.2";

/// Namespaces, cgroup, pins and processes of one test; all removed on drop.
struct Topo {
    id: String,
    cgroup: PathBuf,
    pin_dir: PathBuf,
    children: Vec<Child>,
}

impl Topo {
    fn new() -> Result<Topo> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("slt{}x{n}", std::process::id());
        let topo = Topo {
            cgroup: PathBuf::from(format!("/sys/fs/cgroup/unified/sluice-test-{id}")),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/sluice-test-{id}")),
            id,
            children: Vec::new(),
        };
        topo.build().context("building the test topology")?;
        Ok(topo)
    }

    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.id)
    }

    fn build(&self) -> Result<()> {
        std::fs::create_dir_all(&self.cgroup)?;
        let (n, c, l, r, b1, b2) = (
            self.ns("node"),
            self.ns("client"),
            self.ns("lan"),
            self.ns("remote"),
            self.ns("be1"),
            self.ns("be2"),
        );
        let mut s = String::from("set -e\n");
        for ns in [&n, &c, &l, &r, &b1, &b2] {
            s += &format!("ip netns add {ns}\nip -n {ns} link set lo up\n");
        }
        s += &format!("ip -n {l} link add br0 type bridge\nip -n {l} link set br0 up\n");
        for (ns, port, ip) in [
            (&n, "pn", NODE_IP),
            (&c, "pc", CLIENT_IP),
            (&r, "pr", REMOTE_IP),
        ] {
            s += &format!(
                "ip -n {ns} link add eth0 type veth peer name {port} netns {l}\n\
                 ip -n {l} link set {port} master br0 up\n\
                 ip -n {ns} addr add {ip}/24 dev eth0\nip -n {ns} link set eth0 up\n"
            );
        }
        for (ns, dev, gw, ip) in [
            (&b1, "pod1", "10.98.1.1", BE1),
            (&b2, "pod2", "10.98.2.1", BE2),
        ] {
            s += &format!(
                "ip -n {n} link add {dev} type veth peer name eth0 netns {ns}\n\
                 ip -n {n} addr add {gw}/24 dev {dev}\nip -n {n} link set {dev} up\n\
                 ip -n {ns} addr add {ip}/24 dev eth0\nip -n {ns} link set eth0 up\n\
                 ip -n {ns} route add default via {gw}\n"
            );
        }
        s += &format!(
            "ip netns exec {n} sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 \
             net.ipv4.conf.default.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0 \
             net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.eth0.send_redirects=0\n\
             ip -n {c} route add 192.0.2.0/24 via {NODE_IP}\n\
             ip -n {c} route add 10.98.0.0/16 via {NODE_IP}\n\
             ip -n {n} route add local 192.0.2.20/32 dev lo\n"
        );
        sh(&s)?;
        Ok(())
    }

    fn opts(&self) -> DatapathOptions {
        DatapathOptions {
            object: object(),
            cgroup: self.cgroup.clone(),
            iface: Some("eth0".into()),
            pin_dir: self.pin_dir.clone(),
            maglev_table_size: 251,
            maglev_tables: 16,
            netns: Some(PathBuf::from(format!("/var/run/netns/{}", self.ns("node")))),
            local_cidrs: vec!["10.98.0.0/16".parse().unwrap()],
            ..DatapathOptions::default()
        }
    }

    /// `ip netns exec NS probe ARGS [--cgroup CG]`.
    /// The cgroup is joined before `ip netns exec`, which remounts /sys for the namespace.
    fn probe_cmd(&self, role: &str, in_cgroup: bool, args: &[&str]) -> Command {
        let mut cmd = Command::new("sh");
        let script = if in_cgroup {
            "echo $$ > \"$0/cgroup.procs\" && exec \"$@\""
        } else {
            "exec \"$@\""
        };
        cmd.arg("-c")
            .arg(script)
            .arg(&self.cgroup)
            .args(["ip", "netns", "exec", &self.ns(role)])
            .arg(probe())
            .args(args);
        cmd
    }

    /// Starts a server and waits until its TCP port answers (or a moment for UDP only).
    fn serve(&mut self, role: &str, in_cgroup: bool, args: &[&str]) -> Result<()> {
        let mut child = self
            .probe_cmd(role, in_cgroup, &[&["serve"], args].concat())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let tcp = args.contains(&"--tcp");
        if tcp {
            let out = child.stdout.take().context("server stdout")?;
            let mut line = String::new();
            BufReader::new(out).read_line(&mut line)?;
            if !line.starts_with("listening") {
                let _ = child.kill();
                bail!("server in {role} did not start: {line:?}");
            }
        } else {
            std::thread::sleep(Duration::from_millis(200));
        }
        self.children.push(child);
        Ok(())
    }

    /// Runs a client probe; returns its `k=v` lines and whether it exited 0.
    fn run(
        &self,
        role: &str,
        in_cgroup: bool,
        args: &[&str],
    ) -> Result<(Vec<BTreeMap<String, String>>, bool)> {
        let out = self.probe_cmd(role, in_cgroup, args).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.stderr.is_empty() {
            eprintln!(
                "probe {args:?} stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        println!("probe {role} {args:?}:\n{text}");
        Ok((text.lines().map(kv).collect(), out.status.success()))
    }

    /// Like [`Topo::run`], failing unless the probe succeeded.
    fn run_ok(
        &self,
        role: &str,
        in_cgroup: bool,
        args: &[&str],
    ) -> Result<Vec<BTreeMap<String, String>>> {
        let (lines, ok) = self.run(role, in_cgroup, args)?;
        if !ok {
            bail!("probe in {role} {args:?} failed: {lines:?}");
        }
        Ok(lines)
    }

    /// Binds a TCP listener inside a namespace (sk_lookup only assigns sockets of the
    /// packet's own namespace).
    fn bind_in(&self, role: &str, addr: &str) -> Result<TcpListener> {
        let path = format!("/var/run/netns/{}", self.ns(role));
        let addr = addr.to_string();
        std::thread::spawn(move || -> Result<TcpListener> {
            let f = std::fs::File::open(&path)?;
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this short-lived thread only.
            #[allow(unsafe_code)]
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                bail!("setns {path}: {}", std::io::Error::last_os_error());
            }
            Ok(TcpListener::bind(&addr)?)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("bind thread panicked"))?
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Releasing the pins detaches whatever a failed test left attached.
        let _ = sh(&format!("rm -rf {}", self.pin_dir.display()));
        for role in ["node", "client", "lan", "remote", "be1", "be2"] {
            let _ = sh(&format!("ip netns del {}", self.ns(role)));
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn ep(a: &str, port: u16) -> Endpoint {
    Endpoint::new(a.parse().unwrap(), port)
}

fn port(protocol: L4Protocol, port: u16, node_port: Option<u16>, cluster: &str) -> ServicePort {
    ServicePort {
        name: String::new(),
        protocol,
        port,
        node_port,
        cluster: cluster.into(),
        l7_redirect: None,
    }
}

fn service(name: &str, ip: &str, ports: Vec<ServicePort>) -> L4Service {
    L4Service {
        name: name.into(),
        cluster_ip: Some(ip.parse().unwrap()),
        external_ips: vec![],
        ports,
        session_affinity_timeout_s: None,
        external_traffic_local: false,
    }
}

fn snapshot(version: u64, services: Vec<L4Service>, mut clusters: Vec<Cluster>) -> Snapshot {
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    let mut services = services;
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Snapshot {
        version,
        services,
        clusters,
        ..Snapshot::default()
    }
}

/// The web service: ClusterIP 10.96.0.10:80 TCP+UDP, NodePort 30080, on both local pods.
fn web(version: u64, endpoints: Vec<Endpoint>) -> Snapshot {
    snapshot(
        version,
        vec![service(
            "default/web",
            "10.96.0.10",
            vec![
                port(L4Protocol::Tcp, 80, Some(30080), "default/web:80"),
                port(L4Protocol::Udp, 80, Some(30080), "default/web:80"),
            ],
        )],
        vec![Cluster::new("default/web:80", endpoints)],
    )
}

fn start_backends(t: &mut Topo) -> Result<()> {
    t.serve(
        "be1",
        false,
        &[
            "--id",
            "be1",
            "--tcp",
            "0.0.0.0:8080",
            "--udp",
            "0.0.0.0:8080",
        ],
    )?;
    t.serve(
        "be2",
        false,
        &[
            "--id",
            "be2",
            "--tcp",
            "0.0.0.0:8080",
            "--udp",
            "0.0.0.0:8080",
        ],
    )?;
    Ok(())
}

/// Backend ids (`be1`, ...) of `reply=be1,PEER,LOCAL` lines, and the peers the backends saw.
fn replies(lines: &[BTreeMap<String, String>]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter_map(|l| l.get("reply"))
        .map(|r| {
            let mut it = r.split(',');
            (
                it.next().unwrap_or_default().to_string(),
                it.next().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn drain_events(dp: &mut sluice_ebpf_loader::FlowEvents) -> Result<Vec<FlowRecord>> {
    let mut v = Vec::new();
    dp.read(Duration::from_millis(100), |r| v.push(r))?;
    Ok(v)
}

#[test]
fn cluster_ip_tcp_and_udp_reach_backends_and_peer_is_the_cluster_ip() -> Result<()> {
    require_privileges!();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Topo::new()?;
    start_backends(&mut t)?;
    let mut dp = Datapath::load(t.opts())?;
    let report = dp.sync(&web(1, vec![ep(BE1, 8080), ep(BE2, 8080)]))?;
    assert_eq!(report.frontends, 4, "{report}");
    let mut events = dp.flow_events()?;

    // TCP from the node's network (hostNetwork clients).
    let lines = t.run_ok("node", true, &["tcp", "10.96.0.10:80", "--count", "24"])?;
    assert_eq!(lines.len(), 24);
    for l in &lines {
        assert_eq!(
            l["peer"], "10.96.0.10:80",
            "getpeername must show the ClusterIP"
        );
    }
    let backends: BTreeSet<String> = replies(&lines).into_iter().map(|r| r.0).collect();
    assert_eq!(
        backends,
        BTreeSet::from(["be1".to_string(), "be2".to_string()])
    );

    // TCP from a pod to the service: the pod reaches either backend directly.
    let lines = t.run_ok("be1", true, &["tcp", "10.96.0.10:80", "--count", "8"])?;
    assert!(lines.iter().all(|l| l["peer"] == "10.96.0.10:80"));

    // UDP, unconnected: recvfrom() reports the ClusterIP as the source.
    let lines = t.run_ok("node", true, &["udp", "10.96.0.10:80", "--count", "12"])?;
    assert_eq!(lines.len(), 12);
    for l in &lines {
        assert_eq!(
            l["from"], "10.96.0.10:80",
            "recvfrom must show the ClusterIP"
        );
        assert!(l["reply"].starts_with("be"), "{l:?}");
    }
    // UDP, connected: getpeername() shows the ClusterIP.
    let lines = t.run_ok(
        "node",
        true,
        &["udp", "10.96.0.10:80", "--connected", "--count", "4"],
    )?;
    assert!(lines.iter().all(|l| l["from"] == "10.96.0.10:80"));

    // Flow events name the service and the backend.
    let ev = drain_events(&mut events)?;
    let connects: Vec<&FlowRecord> = ev
        .iter()
        .filter(|r| r.kind == EventKind::SockConnect)
        .collect();
    assert!(connects.len() >= 32, "{} connect events", connects.len());
    assert!(
        connects
            .iter()
            .all(|r| r.service.as_deref() == Some("default/web:80/TCP")
                || r.service.as_deref() == Some("default/web:80/UDP"))
    );
    assert!(
        connects
            .iter()
            .all(|r| r.destination == "10.96.0.10:80".parse::<SocketAddrV4>().unwrap())
    );
    assert!(
        ev.iter()
            .any(|r| r.kind == EventKind::SockSendmsg && r.verdict == Verdict::Translated)
    );

    // A terminating endpoint is drained: new connections all go to be1.
    let mut term = ep(BE2, 8080);
    term.terminating = true;
    term.ready = false;
    let report = dp.sync(&web(2, vec![ep(BE1, 8080), term]))?;
    assert_eq!(report.tables_built, 1, "{report}");
    let lines = t.run_ok("node", true, &["tcp", "10.96.0.10:80", "--count", "12"])?;
    assert!(replies(&lines).iter().all(|r| r.0 == "be1"), "{lines:?}");

    // No endpoint at all: connect() is refused at once instead of hanging.
    dp.sync(&web(3, vec![]))?;
    let (lines, ok) = t.run(
        "node",
        true,
        &["tcp", "10.96.0.10:80", "--timeout-ms", "2000"],
    )?;
    assert!(!ok);
    assert_eq!(lines[0]["error"], "PermissionDenied", "{lines:?}");

    // Outside the cgroup nothing is translated (the ClusterIP is not routed anywhere).
    let (_, ok) = t.run(
        "node",
        false,
        &["tcp", "10.96.0.10:80", "--timeout-ms", "500"],
    )?;
    assert!(!ok, "a process outside the cgroup must not be balanced");

    dp.detach()?;
    assert!(!t.pin_dir.join("v1").exists(), "detach removes the pins");
    Ok(())
}

#[test]
fn node_port_and_external_ip_from_another_host_with_reply_nat() -> Result<()> {
    require_privileges!();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Topo::new()?;
    start_backends(&mut t)?;
    t.serve(
        "remote",
        false,
        &[
            "--id",
            "remote",
            "--tcp",
            "0.0.0.0:8080",
            "--udp",
            "0.0.0.0:8080",
        ],
    )?;
    let mut snap = web(1, vec![ep(BE1, 8080), ep(BE2, 8080)]);
    let mut remote = service(
        "default/remote",
        "10.96.0.11",
        vec![port(L4Protocol::Tcp, 80, Some(30081), "default/remote:80")],
    );
    remote.external_ips = vec!["192.0.2.11".parse().unwrap()];
    let mut ext = service(
        "default/ext",
        "10.96.0.12",
        vec![port(L4Protocol::Tcp, 80, None, "default/web:80")],
    );
    ext.external_ips = vec!["192.0.2.10".parse().unwrap()];
    let mut sticky = service(
        "default/sticky",
        "10.96.0.13",
        vec![port(L4Protocol::Tcp, 80, Some(30083), "default/web:80")],
    );
    sticky.session_affinity_timeout_s = Some(600);
    let empty = service(
        "default/empty",
        "10.96.0.14",
        vec![port(L4Protocol::Tcp, 80, Some(30084), "default/empty:80")],
    );
    snap.services.extend([remote, ext, sticky, empty]);
    snap.services.sort_by(|a, b| a.name.cmp(&b.name));
    snap.clusters
        .push(Cluster::new("default/remote:80", vec![ep(REMOTE_IP, 8080)]));
    snap.clusters.push(Cluster::new("default/empty:80", vec![]));
    snap.clusters.sort_by(|a, b| a.name.cmp(&b.name));
    let mut dp = Datapath::load(t.opts())?;
    dp.sync(&snap)?;
    let mut events = dp.flow_events()?;

    // NodePort to local pods: DNAT only, the backend sees the client's own address, and the
    // reply comes back from the NodePort.
    let lines = t.run_ok(
        "client",
        false,
        &["tcp", &format!("{NODE_IP}:30080"), "--count", "16"],
    )?;
    let r = replies(&lines);
    assert_eq!(r.len(), 16);
    assert!(
        r.iter()
            .all(|(_, peer)| peer.starts_with(&format!("{CLIENT_IP}:"))),
        "{r:?}"
    );
    let used: BTreeSet<&str> = r.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(used, BTreeSet::from(["be1", "be2"]));
    assert!(
        lines
            .iter()
            .all(|l| l["peer"] == format!("{NODE_IP}:30080"))
    );

    // A later direct connection that happens to reuse the tuple of a finished NodePort flow
    // (same client port, same backend) must not have its replies rewritten by the leftover
    // conntrack entry (which would cost it its SYN-ACK and a 1 s retransmission, past the
    // 800 ms timeout).
    let lines = t.run_ok(
        "client",
        false,
        &["tcp", &format!("{NODE_IP}:30080"), "--sport", "40123"],
    )?;
    let np_backend = replies(&lines)[0].0.clone();
    let backend_ip = if np_backend == "be1" { BE1 } else { BE2 };
    let lines = t.run_ok(
        "client",
        false,
        &[
            "tcp",
            &format!("{backend_ip}:8080"),
            "--sport",
            "40123",
            "--timeout-ms",
            "800",
        ],
    )?;
    assert_eq!(lines[0]["peer"], format!("{backend_ip}:8080"));
    assert_eq!(replies(&lines)[0].0, np_backend);

    // UDP NodePort: the reply's source is the NodePort.
    let lines = t.run_ok(
        "client",
        false,
        &["udp", &format!("{NODE_IP}:30080"), "--count", "6"],
    )?;
    assert!(
        lines
            .iter()
            .all(|l| l["from"] == format!("{NODE_IP}:30080")),
        "{lines:?}"
    );

    // External IP to local pods.
    let lines = t.run_ok("client", false, &["tcp", "192.0.2.10:80", "--count", "4"])?;
    assert!(
        replies(&lines)
            .iter()
            .all(|(_, p)| p.starts_with(CLIENT_IP))
    );
    assert!(lines.iter().all(|l| l["peer"] == "192.0.2.10:80"));

    // Backend behind the same interface (hairpin): SNAT to the node, replies un-NATed.
    let lines = t.run_ok(
        "client",
        false,
        &[
            "tcp",
            &format!("{NODE_IP}:30081"),
            "--count",
            "4",
            "--requests",
            "3",
        ],
    )?;
    for (b, peer) in replies(&lines) {
        assert_eq!(b, "remote");
        let p: SocketAddrV4 = peer.parse()?;
        assert_eq!(p.ip().to_string(), NODE_IP, "SNAT source");
        assert!((61000..=65000).contains(&p.port()), "SNAT port {p}");
    }
    let lines = t.run_ok("client", false, &["tcp", "192.0.2.11:80"])?;
    assert_eq!(replies(&lines)[0].0, "remote");

    // sessionAffinity ClientIP: every connection from the client lands on one backend.
    let lines = t.run_ok(
        "client",
        false,
        &["tcp", &format!("{NODE_IP}:30083"), "--count", "10"],
    )?;
    let used: BTreeSet<String> = replies(&lines).into_iter().map(|r| r.0).collect();
    assert_eq!(used.len(), 1, "affinity: {used:?}");

    // No endpoint: dropped, counted and reported.
    let (_, ok) = t.run(
        "client",
        false,
        &["tcp", &format!("{NODE_IP}:30084"), "--timeout-ms", "700"],
    )?;
    assert!(!ok);
    assert!(dp.counters()?.no_backend >= 1);

    let ev = drain_events(&mut events)?;
    let snat = ev
        .iter()
        .filter(|r| r.kind == EventKind::TcNewFlow && r.verdict == Verdict::Snat)
        .count();
    let dnat = ev
        .iter()
        .filter(|r| r.kind == EventKind::TcNewFlow && r.verdict == Verdict::Dnat)
        .count();
    assert!(snat >= 5 && dnat >= 30, "snat={snat} dnat={dnat}");
    assert!(ev.iter().any(|r| r.kind == EventKind::NoBackend
        && r.verdict == Verdict::Dropped
        && r.service.as_deref() == Some("default/empty:80/TCP")));
    dp.detach()?;
    Ok(())
}

#[test]
fn icmp_errors_and_fragments_are_translated() -> Result<()> {
    require_privileges!();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Topo::new()?;
    start_backends(&mut t)?;
    let mut snap = web(1, vec![ep(BE1, 8080)]);
    // A port nothing listens on: the backend answers with ICMP port unreachable.
    snap.services.push(service(
        "default/closed",
        "10.96.0.15",
        vec![port(L4Protocol::Udp, 53, Some(30053), "default/closed:53")],
    ));
    snap.services.sort_by(|a, b| a.name.cmp(&b.name));
    snap.clusters
        .push(Cluster::new("default/closed:53", vec![ep(BE1, 5353)]));
    snap.clusters.sort_by(|a, b| a.name.cmp(&b.name));
    let mut dp = Datapath::load(t.opts())?;
    dp.sync(&snap)?;
    let mut events = dp.flow_events()?;

    // The ICMP error is rewritten to come from the NodePort, so the client's connected
    // socket gets ECONNREFUSED instead of a timeout.
    let (lines, ok) = t.run(
        "client",
        false,
        &["udp", &format!("{NODE_IP}:30053"), "--connected"],
    )?;
    assert!(!ok);
    assert_eq!(lines[0]["error"], "ConnectionRefused", "{lines:?}");
    let ev = drain_events(&mut events)?;
    assert!(
        ev.iter().any(|r| r.kind == EventKind::TcIcmpError),
        "{ev:?}"
    );

    // 4000-byte datagrams are fragmented both ways (MTU 1500): every fragment is
    // translated with the ports of its first fragment.
    let lines = t.run_ok(
        "client",
        false,
        &[
            "udp",
            &format!("{NODE_IP}:30080"),
            "--size",
            "4000",
            "--count",
            "3",
        ],
    )?;
    for l in &lines {
        assert_eq!(l["bytes"], "4000", "{l:?}");
        assert_eq!(l["from"], format!("{NODE_IP}:30080"));
        assert!(l["reply"].starts_with("be1"));
    }
    assert_eq!(dp.counters()?.frag_miss, 0);
    dp.detach()?;
    Ok(())
}

#[test]
fn l7_redirect_delivers_to_the_proxy_with_client_address_and_original_destination() -> Result<()> {
    require_privileges!();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Topo::new()?;
    start_backends(&mut t)?;
    let mut snap = web(1, vec![ep(BE1, 8080)]);
    let mut api = service(
        "default/api",
        "10.96.0.30",
        vec![port(L4Protocol::Tcp, 80, Some(30090), "default/web:80")],
    );
    api.ports[0].l7_redirect = Some("10.99.0.1:15002".parse()?);
    snap.services.push(api);
    snap.services.sort_by(|a, b| a.name.cmp(&b.name));
    snap.listeners = vec![Listener::new(
        "192.0.2.20".parse()?,
        80,
        ListenerProtocol::Http,
    )];
    let mut dp = Datapath::load(t.opts())?;
    let report = dp.sync(&snap)?;
    assert_eq!(report.redirects, 3, "{report}");
    assert_eq!(report.redirects_unbound, 3);

    // The "proxy": two listeners in the node namespace answering `proxy <peer> <local>`.
    let gw = t.bind_in("node", "127.0.0.1:15001")?;
    let l7 = t.bind_in("node", "10.99.0.1:15002")?;
    dp.register_proxy_listener("192.0.2.20:80".parse()?, &gw)?;
    dp.register_proxy_listener("10.99.0.1:15002".parse()?, &l7)?;
    let seen: std::sync::Arc<Mutex<Vec<(SocketAddr, SocketAddr)>>> = Default::default();
    for l in [gw, l7] {
        let seen = seen.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let (peer, local) = (c.peer_addr().unwrap(), c.local_addr().unwrap());
                seen.lock().unwrap().push((peer, local));
                let mut w = c.try_clone().unwrap();
                let mut line = String::new();
                if BufReader::new(c).read_line(&mut line).is_ok() {
                    let _ = w.write_all(format!("proxy {peer} {local}\n").as_bytes());
                }
            }
        });
    }

    // Gateway listener address from another host: sk_lookup hands the connection to the
    // proxy; the proxy sees the client's address and the listener address it dialed.
    let lines = t.run_ok("client", false, &["tcp", "192.0.2.20:80"])?;
    let reply = &lines[0]["reply"];
    assert!(reply.starts_with(&format!("proxy,{CLIENT_IP}:")), "{reply}");
    assert!(reply.ends_with(",192.0.2.20:80"), "{reply}");

    // NodePort of an L7 service: tc leaves it alone, sk_lookup delivers it to the proxy.
    let lines = t.run_ok("client", false, &["tcp", &format!("{NODE_IP}:30090")])?;
    let reply = &lines[0]["reply"];
    assert!(reply.starts_with(&format!("proxy,{CLIENT_IP}:")), "{reply}");
    assert!(reply.ends_with(&format!(",{NODE_IP}:30090")), "{reply}");

    // ClusterIP of an L7 service from a pod: the socket-LB connects it to the proxy; the
    // pod still sees the ClusterIP, and the proxy recovers the original destination.
    let lines = t.run_ok("be1", true, &["tcp", "10.96.0.30:80"])?;
    assert_eq!(lines[0]["peer"], "10.96.0.30:80");
    let reply = &lines[0]["reply"];
    assert!(reply.starts_with(&format!("proxy,{BE1}:")), "{reply}");
    let (peer, local) = *seen
        .lock()
        .unwrap()
        .iter()
        .find(|(p, _)| p.ip().to_string() == BE1)
        .context("proxy saw the pod")?;
    let (SocketAddr::V4(peer), SocketAddr::V4(local)) = (peer, local) else {
        bail!("IPv4 expected");
    };
    let (orig, svc) = dp
        .original_destination(peer, local)?
        .context("original destination recorded")?;
    assert_eq!(orig, "10.96.0.30:80".parse::<SocketAddrV4>()?);
    assert_eq!(svc.as_deref(), Some("default/api:80/TCP"));
    dp.detach()?;
    Ok(())
}

#[test]
fn sockmap_redirect_carries_data_and_falls_back_without_a_peer() -> Result<()> {
    require_privileges!();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Topo::new()?;
    // The "proxy" on the node, a "pod" client on the same node: both in the cgroup.
    t.serve(
        "node",
        true,
        &["--id", "proxy", "--tcp", "10.98.1.1:9000", "--echo"],
    )?;
    let dp = Datapath::load(t.opts())?;
    let before = dp.counters()?;
    let lines = t.run_ok(
        "be1",
        true,
        &[
            "pingpong",
            "10.98.1.1:9000",
            "--size",
            "64",
            "--count",
            "2000",
        ],
    )?;
    assert_eq!(lines[0]["n"], "2000", "{lines:?}");
    let mid = dp.counters()?;
    let redirected = mid.sockmap_redirected - before.sockmap_redirected;
    assert!(
        redirected >= 4000,
        "both directions bypass TCP: {redirected} redirects"
    );

    // A client outside the cgroup is not in the sockhash: the proxy's replies find no peer
    // and take the TCP path, and the data is still right.
    let lines = t.run_ok(
        "be1",
        false,
        &[
            "pingpong",
            "10.98.1.1:9000",
            "--size",
            "64",
            "--count",
            "500",
        ],
    )?;
    assert_eq!(lines[0]["n"], "500");
    let after = dp.counters()?;
    assert!(
        after.sockmap_passed - mid.sockmap_passed >= 500,
        "{after:?}"
    );
    dp.detach()?;
    Ok(())
}

#[test]
fn agent_restart_keeps_established_and_new_connections_working() -> Result<()> {
    require_privileges!();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Topo::new()?;
    start_backends(&mut t)?;
    let snap = web(7, vec![ep(BE1, 8080), ep(BE2, 8080)]);
    let dp = {
        let mut dp = Datapath::load(t.opts())?;
        dp.sync(&snap)?;
        dp
    };
    // Long-lived connections through the NodePort (tc + conntrack) and the ClusterIP
    // (socket-LB), one request every 100 ms for 4 s.
    let long = |role: &str, cg: bool, addr: &str| {
        t.probe_cmd(
            role,
            cg,
            &["tcp", addr, "--requests", "40", "--interval-ms", "100"],
        )
        .stdout(Stdio::piped())
        .spawn()
    };
    let np = long("client", false, &format!("{NODE_IP}:30080"))?;
    let cip = long("node", true, "10.96.0.10:80")?;
    std::thread::sleep(Duration::from_millis(800));

    // The agent goes away without detaching.
    drop(dp);
    let links = std::fs::read_dir(t.pin_dir.join("v1/links"))?.count();
    assert!(links >= 8, "links stay pinned: {links}");
    // New connections work while no agent runs.
    let lines = t.run_ok(
        "client",
        false,
        &["tcp", &format!("{NODE_IP}:30080"), "--count", "3"],
    )?;
    assert_eq!(lines.len(), 3);
    let lines = t.run_ok("node", true, &["tcp", "10.96.0.10:80", "--count", "3"])?;
    assert!(lines.iter().all(|l| l["peer"] == "10.96.0.10:80"));

    // The agent comes back: it adopts the pinned state (same tables, nothing rebuilt) and
    // replaces the programs.
    let started = Instant::now();
    let mut dp = Datapath::load(t.opts())?;
    let report = dp.sync(&snap)?;
    assert_eq!(report.tables_built, 0, "{report}");
    assert_eq!(report.frontends_changed, 0, "{report}");
    println!("reload and sync took {:?}", started.elapsed());
    let links = std::fs::read_dir(t.pin_dir.join("v1/links"))?.count();
    assert_eq!(links, 8, "the previous run's links were released");
    let lines = t.run_ok(
        "client",
        false,
        &["tcp", &format!("{NODE_IP}:30080"), "--count", "3"],
    )?;
    assert_eq!(lines.len(), 3);

    for (name, child) in [("NodePort", np), ("ClusterIP", cip)] {
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<_> = text.lines().map(kv).collect();
        assert!(out.status.success(), "{name} connection broke: {text}");
        assert_eq!(lines.len(), 40, "{name}: {text}");
        let used: BTreeSet<String> = replies(&lines).into_iter().map(|r| r.0).collect();
        assert_eq!(used.len(), 1, "{name} stayed on one backend: {used:?}");
    }
    dp.detach()?;
    assert!(!t.pin_dir.join("v1").exists());
    Ok(())
}
