//! The proxies compared (Sluice, nginx, HAProxy) and the backend: equivalent configurations,
//! starting them pinned, readiness, and the route change each one makes to serve a new route.
//!
//! Equivalence: one worker (nginx `worker_processes 1`, HAProxy `nbthread 1`, Sluice
//! `--workers 1`), keep-alive to clients and to the backend (pooled upstream connections), no
//! access log, and the same request headers added (`X-Forwarded-For` with the client address,
//! `X-Forwarded-Proto`, `Host` passed through).

use anyhow::{Context, Result, bail};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::client;
use crate::procs::{Pinning, Server};

/// A proxy under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Peer {
    /// `sluice standalone DIR --workers 1`: the proxy alone, every byte through the kernel's
    /// TCP stack like the other peers.
    Sluice,
    /// The same with `--ebpf`: Sluice's kernel datapath is loaded, and its sockmap moves the
    /// bytes between node-local sockets (client to proxy, proxy to backend) without the TCP
    /// stack. It is attached only while this peer is measured (started for each of its runs,
    /// stopped after, its pinned state checked gone), so it never speeds up another peer.
    SluiceEbpf,
    /// nginx from Debian, one worker process.
    Nginx,
    /// HAProxy from Debian, one thread (master-worker mode, for reloads).
    Haproxy,
}

impl Peer {
    /// Every peer, in report order.
    pub const ALL: [Peer; 4] = [Peer::Sluice, Peer::SluiceEbpf, Peer::Nginx, Peer::Haproxy];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Sluice => "sluice",
            Peer::SluiceEbpf => "sluice-ebpf",
            Peer::Nginx => "nginx",
            Peer::Haproxy => "haproxy",
        }
    }

    /// Parses a lower-case name.
    pub fn parse(s: &str) -> Option<Peer> {
        Peer::ALL.into_iter().find(|p| p.name() == s)
    }

    fn index(self) -> u16 {
        match self {
            Peer::Sluice => 0,
            Peer::Nginx => 1,
            Peer::Haproxy => 2,
            Peer::SluiceEbpf => 3,
        }
    }

    /// Sluice, with or without its eBPF datapath (the other peers are what it is compared to).
    pub fn is_sluice(self) -> bool {
        matches!(self, Peer::Sluice | Peer::SluiceEbpf)
    }

    /// Runs only while measured: its kernel datapath would otherwise also carry the other
    /// peers' connections. Takes part in the throughput scenarios only (route changes, idle
    /// memory and HTTP/3 are the same proxy as `sluice`).
    pub fn on_demand(self) -> bool {
        self == Peer::SluiceEbpf
    }

    /// Admin API port of a Sluice instance.
    fn admin_port(self, layout: Layout) -> u16 {
        let base = match self {
            Peer::SluiceEbpf => 28904,
            _ => 28901,
        };
        base + layout.slot()
    }
}

/// Where `sluice-ebpf` pins its maps (not the default `/sys/fs/bpf/sluice`, which a Sluice
/// running on the machine may own). Gone again once the instance has stopped.
pub const EBPF_PIN_DIR: &str = "/sys/fs/bpf/sluice-bench";

/// What an instance is configured to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// One catch-all route; HTTP (HTTP/1.1 and h2c), HTTPS (h2 and HTTP/1.1 by ALPN); Sluice
    /// also HTTPS with HTTP/3 on a port of its own.
    Base,
    /// `n` routes, route i for host `r{i}.bench.example`; unknown hosts get 404. HTTP only.
    Routes(usize),
}

impl Layout {
    /// Which block of ports (and which admin port) instances of this layout use: a small and
    /// a large route table run side by side when they are alternated (see
    /// [`crate::scenarios::ALTERNATED`]).
    pub fn slot(self) -> u16 {
        match self {
            Layout::Base => 0,
            Layout::Routes(n) if n > 100 => 1,
            Layout::Routes(_) => 2,
        }
    }
}

/// The host of route `i` in a [`Layout::Routes`] instance.
pub fn route_host(i: usize) -> String {
    format!("r{i}.bench.example")
}

/// Listening ports of an instance.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// HTTP/1.1 (Sluice: also h2c prior knowledge on the same port).
    pub http: u16,
    /// h2c prior knowledge.
    pub h2c: u16,
    /// HTTPS (TLS 1.2/1.3, ALPN h2 and http/1.1).
    pub https: u16,
    /// HTTPS with HTTP/3: QUIC on this UDP port, TLS over TCP (with `Alt-Svc`) on the same
    /// number. Sluice only (the Debian peers have no HTTP/3), base layout only; a listener of
    /// its own, so the `Alt-Svc` header stays out of the other TLS scenarios.
    pub h3: Option<u16>,
}

/// Backend port (nginx answering a fixed 64-byte body on `/`, a 100 KiB file on `/100k`).
pub const BACKEND_PORT: u16 = 28080;
/// Size of the large response.
pub const LARGE_BODY: usize = 100 * 1024;

impl Ports {
    /// The ports of `peer` serving `layout`.
    pub fn of(peer: Peer, layout: Layout) -> Ports {
        let base = 28100 + 100 * layout.slot() + 10 * peer.index();
        let (h2c, https) = match peer {
            // Sluice serves HTTP/1.1 and h2c prior knowledge on one port (it sniffs the preface).
            Peer::Sluice | Peer::SluiceEbpf => (base, base + 1),
            _ => (base + 1, base + 2),
        };
        Ports {
            http: base,
            h2c,
            https,
            h3: (peer == Peer::Sluice && layout == Layout::Base).then_some(base + 2),
        }
    }
}

/// Shared settings and files of a benchmark run.
#[derive(Debug)]
pub struct Env {
    /// Scratch directory (configs, logs, certificates).
    pub tmp: PathBuf,
    /// CPU pinning.
    pub pin: Pinning,
    /// The `sluice` binary.
    pub sluice: PathBuf,
    /// The eBPF object for `sluice-ebpf` (`--ebpf-object`, handed to Sluice as
    /// `SLUICE_EBPF_OBJECT`), when it can run here.
    pub ebpf_object: Option<PathBuf>,
    /// Self-signed certificate (PEM), `bench.example`.
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// Open-file limit the proxies inherit.
    pub fd_limit: u64,
    /// The backend's process id, once started.
    pub backend_pid: u32,
    /// Time left for waiting until the machine is quiet before a measured run.
    pub quiet_budget: std::cell::Cell<Duration>,
}

impl Env {
    /// Creates the scratch layout and a self-signed P-256 end-entity certificate with openssl.
    pub fn new(tmp: PathBuf, pin: Pinning, sluice: PathBuf, fd_limit: u64) -> Result<Env> {
        std::fs::create_dir_all(&tmp)?;
        let cert = tmp.join("cert.pem");
        let key = tmp.join("key.pem");
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .arg("ec_paramgen_curve:prime256v1")
            .args(["-nodes", "-days", "30", "-subj", "/CN=bench.example"])
            .args(["-addext", "subjectAltName=DNS:bench.example,IP:127.0.0.1"])
            // An end-entity certificate (not `openssl req`'s default CA), so that a verifying
            // client (the HTTP/3 load generator, rustls) can trust it as its own root.
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .context("running openssl")?;
        if !out.status.success() {
            bail!(
                "openssl req failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Env {
            tmp,
            pin,
            sluice,
            ebpf_object: None,
            cert,
            key,
            fd_limit,
            backend_pid: 0,
            quiet_budget: std::cell::Cell::new(Duration::from_secs(300)),
        })
    }

    /// Connections every proxy can hold at once under the open-file limit: HAProxy reserves
    /// two descriptors per connection (client and server side) plus a few hundred.
    pub fn max_conns(&self) -> u64 {
        (self.fd_limit.min(200_000).saturating_sub(400) / 2).max(100)
    }

    /// nginx `worker_connections` (client and upstream connections count alike).
    fn nginx_worker_connections(&self) -> u64 {
        self.fd_limit.min(65_536).saturating_sub(100).max(1024)
    }
}

/// The backend: nginx, one worker, on the load CPUs.
pub fn start_backend(env: &Env) -> Result<Server> {
    let dir = env.tmp.join("backend");
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::create_dir_all(dir.join("tmp"))?;
    std::fs::write(dir.join("www/100k"), vec![b'y'; LARGE_BODY])?;
    let body = format!("{}\\n", "x".repeat(63));
    let conf = format!(
        "worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {wc}; }}
http {{
    access_log off;
    {temps}
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{BACKEND_PORT} backlog=4096;
        root {d}/www;
        location = /100k {{ }}
        location / {{ return 200 \"{body}\"; }}
    }}
}}
",
        d = dir.display(),
        temps = nginx_temp_paths(&dir),
        wc = env.nginx_worker_connections(),
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let mut cmd = env.pin.load_cmd("nginx");
    nginx_args(&mut cmd, &dir, &conf_path);
    let mut s = Server::spawn("backend nginx", cmd, &dir.join("stdout.log"))?;
    let addr: SocketAddr = ([127, 0, 0, 1], BACKEND_PORT).into();
    wait_for(&mut s, Duration::from_secs(10), || {
        client::probe(addr, "backend", "/").ok() == Some(200)
    })?;
    Ok(s)
}

fn nginx_temp_paths(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy; \
         fastcgi_temp_path {d}/tmp/fcgi; uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;"
    )
}

fn nginx_args(cmd: &mut Command, dir: &Path, conf: &Path) {
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(conf)
        .arg("-e")
        .arg(dir.join("error.log"))
        .args(["-g", "daemon off;"]);
}

/// Polls `ready` every 20 ms until it holds; fails when `s` exits or after `timeout`.
fn wait_for(s: &mut Server, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        s.check_alive()?;
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{} not serving after {:?} (see its logs)", s.name, timeout)
}

/// A running proxy instance.
#[derive(Debug)]
pub struct Instance {
    /// Which proxy.
    pub peer: Peer,
    /// What it serves.
    pub layout: Layout,
    /// Its ports.
    pub ports: Ports,
    /// The process (Sluice; nginx and HAProxy masters).
    pub server: Server,
    /// Its configuration directory.
    pub dir: PathBuf,
    /// Time from start to serving (ms).
    pub startup_ms: f64,
    probes: Vec<String>,
}

impl Instance {
    /// Writes the configuration and starts the proxy pinned to the proxy CPU, waiting until
    /// it serves.
    pub fn start(env: &Env, peer: Peer, layout: Layout) -> Result<Instance> {
        let ports = Ports::of(peer, layout);
        let tag = match layout {
            Layout::Base => "base".to_string(),
            Layout::Routes(n) => format!("routes-{n}"),
        };
        let dir = env.tmp.join(format!("{}-{tag}", peer.name()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let t0 = Instant::now();
        let server = match peer {
            Peer::Sluice | Peer::SluiceEbpf => {
                sluice_config(env, &dir, layout, ports)?;
                Server::spawn(
                    peer.name(),
                    sluice_cmd(env, peer, &dir, layout)?,
                    &dir.join("stdout.log"),
                )?
            }
            Peer::Nginx => {
                let conf = nginx_config(env, &dir, layout, ports)?;
                let mut cmd = env.pin.proxy_cmd(Path::new("nginx"));
                nginx_args(&mut cmd, &dir, &conf);
                Server::spawn("nginx", cmd, &dir.join("stdout.log"))?
            }
            Peer::Haproxy => {
                let conf = haproxy_config(env, &dir, layout, ports)?;
                let mut cmd = env.pin.proxy_cmd(Path::new("haproxy"));
                cmd.args(["-W", "-db", "-f"]).arg(&conf);
                Server::spawn("haproxy", cmd, &dir.join("stdout.log"))?
            }
        };
        let mut inst = Instance {
            peer,
            layout,
            ports,
            server,
            dir,
            startup_ms: 0.0,
            probes: vec![],
        };
        inst.wait_serving()?;
        inst.startup_ms = t0.elapsed().as_secs_f64() * 1000.0;
        if peer.on_demand() {
            inst.suspend()?;
        }
        Ok(inst)
    }

    /// Waits until every probe host gets 200 (and, with many routes, an unknown host 404).
    fn wait_serving(&mut self) -> Result<()> {
        let addr = self.http_addr();
        let hosts: Vec<String> = match self.layout {
            Layout::Base => vec!["bench.example".into()],
            Layout::Routes(n) => vec![route_host(0), route_host(n - 1)],
        };
        wait_for(&mut self.server, Duration::from_secs(120), || {
            hosts
                .iter()
                .all(|h| client::probe(addr, h, "/").ok() == Some(200))
        })?;
        if let Layout::Routes(_) = self.layout {
            let code = client::probe(addr, "unknown.bench.example", "/")?;
            if code != 404 {
                bail!(
                    "{}: an unknown host got {code}, expected 404",
                    self.peer.name()
                );
            }
        }
        Ok(())
    }

    /// Runs `f` with the instance serving: an on-demand instance (see [`Peer::on_demand`]) is
    /// started for it and stopped after, also when `f` fails; the others run anyway.
    pub fn while_running<T>(
        &mut self,
        env: &Env,
        f: impl FnOnce(&mut Instance) -> Result<T>,
    ) -> Result<T> {
        if !self.peer.on_demand() {
            return f(self);
        }
        self.resume(env)?;
        let r = f(self);
        self.suspend()?;
        r
    }

    /// Starts an on-demand instance again, on the configuration it was created with; returns
    /// once it serves.
    fn resume(&mut self, env: &Env) -> Result<()> {
        if self.server.is_running() {
            return Ok(());
        }
        let cmd = sluice_cmd(env, self.peer, &self.dir, self.layout)?;
        self.server = Server::spawn(self.peer.name(), cmd, &self.dir.join("stdout.log"))?;
        self.wait_serving()
    }

    /// Stops an on-demand instance; for `sluice-ebpf`, checks that its kernel datapath went
    /// with it (no pinned maps left), so the next peer runs on the plain TCP stack.
    fn suspend(&mut self) -> Result<()> {
        self.server.stop();
        if self.peer == Peer::SluiceEbpf && Path::new(EBPF_PIN_DIR).exists() {
            bail!(
                "sluice-ebpf stopped but {EBPF_PIN_DIR} is still there: its datapath may still be attached"
            );
        }
        Ok(())
    }

    /// The plain HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.ports.http).into()
    }

    /// The processes whose CPU time and memory count (the proxy and its workers).
    pub fn pids(&self) -> Vec<u32> {
        crate::procs::tree(self.server.pid())
    }

    /// Adds a route for `host` the way an operator would (Sluice: a new file in the watched
    /// directory; nginx: a server block and `nginx -s reload`; HAProxy: a map line, `haproxy
    /// -c` and SIGUSR2 to the master, as Debian's `systemctl reload haproxy` does). Returns when
    /// the change has been handed over; serving is what the caller polls for.
    pub fn add_route(&mut self, host: &str) -> Result<()> {
        self.probes.push(host.to_string());
        match self.peer {
            Peer::Sluice | Peer::SluiceEbpf => {
                let name = host.split('.').next().unwrap_or(host);
                std::fs::write(
                    self.dir.join("config").join(format!("{name}.yaml")),
                    sluice_route(name, Some(host)),
                )?;
            }
            Peer::Nginx => {
                let mut s = String::new();
                for h in &self.probes {
                    s.push_str(&nginx_route_server(self.ports.http, h));
                }
                std::fs::write(self.dir.join("probes.conf"), s)?;
                let mut cmd = Command::new("nginx");
                nginx_args(&mut cmd, &self.dir, &self.dir.join("nginx.conf"));
                cmd.args(["-s", "reload"]);
                let out = cmd.output()?;
                if !out.status.success() {
                    bail!("nginx -s reload: {}", String::from_utf8_lossy(&out.stderr));
                }
            }
            Peer::Haproxy => {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(self.dir.join("hosts.map"))?;
                writeln!(f, "{host} be_app")?;
                drop(f);
                let out = Command::new("haproxy")
                    .args(["-c", "-q", "-f"])
                    .arg(self.dir.join("haproxy.cfg"))
                    .output()?;
                if !out.status.success() {
                    bail!("haproxy -c: {}", String::from_utf8_lossy(&out.stderr));
                }
                self.server.signal("USR2")?;
            }
        }
        Ok(())
    }
}

/// What an OpenSSL client (the library wrk and h2load use) negotiates with the HTTPS listener
/// on `port`, and whether a second connection resumes the first one's session.
pub fn tls_info(port: u16) -> String {
    let sess =
        std::env::temp_dir().join(format!("sluice-bench-sess-{port}-{}", std::process::id()));
    let connect = format!("127.0.0.1:{port}");
    let run = |extra: &[&str]| -> String {
        // `-ign_eof` with a short input keeps the connection until the server's session
        // tickets (TLS 1.3 sends them after the handshake) have arrived.
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "(printf 'GET / HTTP/1.1\\r\\nHost: bench.example\\r\\nConnection: close\\r\\n\\r\\n'; sleep 0.3) | \
                 openssl s_client -connect {connect} -servername bench.example -ign_eof {} 2>&1",
                extra.join(" ")
            ))
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    };
    let s = sess.display().to_string();
    let first = run(&["-sess_out", &s]);
    let second = run(&["-sess_in", &s]);
    let _ = std::fs::remove_file(&sess);
    let field = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| "?".into())
    };
    let proto = first
        .lines()
        .find_map(|l| {
            let l = l.trim();
            (l.starts_with("New, ") || l.starts_with("Reused, ")).then(|| l.to_string())
        })
        .unwrap_or_else(|| "no handshake".into());
    let resumed = second.lines().any(|l| l.trim().starts_with("Reused, "));
    format!(
        "{proto}, key exchange {}, {}",
        field(&first, "Server Temp Key:"),
        if resumed {
            "sessions resumed"
        } else {
            "sessions not resumed"
        }
    )
}

// ---- Sluice ----

/// The command line of a Sluice instance (its configuration written by [`sluice_config`]).
fn sluice_cmd(env: &Env, peer: Peer, dir: &Path, layout: Layout) -> Result<Command> {
    let mut cmd = env.pin.proxy_cmd(&env.sluice);
    cmd.arg("standalone")
        .arg(dir.join("config"))
        .args(["--workers", "1", "--admin"])
        .arg(format!("127.0.0.1:{}", peer.admin_port(layout)))
        .env("RUST_LOG", "warn");
    if peer == Peer::SluiceEbpf {
        let object = env
            .ebpf_object
            .as_ref()
            .context("sluice-ebpf needs root and the eBPF object (`cargo xtask ebpf`)")?;
        cmd.args(["--ebpf", "--pin-dir", EBPF_PIN_DIR])
            .env("SLUICE_EBPF_OBJECT", object);
    }
    Ok(cmd)
}

fn sluice_config(env: &Env, dir: &Path, layout: Layout, ports: Ports) -> Result<()> {
    let cfg = dir.join("config");
    std::fs::create_dir_all(&cfg)?;
    let mut g = String::new();
    g.push_str(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: sluice
spec:
  controllerName: sluice.dev/gateway-controller
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: bench
  namespace: default
spec:
  gatewayClassName: sluice
  listeners:
",
    );
    let _ = write!(
        g,
        "  - name: http
    protocol: HTTP
    port: {}
    allowedRoutes:
      namespaces:
        from: Same
",
        ports.http
    );
    if layout == Layout::Base {
        let _ = write!(
            g,
            "  - name: https
    protocol: HTTPS
    port: {}
    tls:
      mode: Terminate
      certificateRefs:
      - kind: Secret
        name: bench-tls
    allowedRoutes:
      namespaces:
        from: Same
",
            ports.https,
        );
        if let Some(h3) = ports.h3 {
            let _ = write!(
                g,
                "  - name: https-h3
    protocol: HTTPS
    port: {h3}
    tls:
      mode: Terminate
      certificateRefs:
      - kind: Secret
        name: bench-tls
      options:
        sluice.dev/http3: \"true\"
    allowedRoutes:
      namespaces:
        from: Same
"
            );
        }
        let _ = write!(
            g,
            "---
apiVersion: v1
kind: Secret
metadata:
  name: bench-tls
  namespace: default
type: kubernetes.io/tls
stringData:
  tls.crt: |
{}
  tls.key: |
{}
",
            indent(&std::fs::read_to_string(&env.cert)?, 4),
            indent(&std::fs::read_to_string(&env.key)?, 4),
        );
    }
    let _ = write!(
        g,
        "---
apiVersion: v1
kind: Service
metadata:
  name: backend
  namespace: default
spec:
  ports:
  - name: http
    port: 80
    targetPort: {BACKEND_PORT}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: backend-local
  namespace: default
  labels:
    kubernetes.io/service-name: backend
addressType: IPv4
ports:
- name: http
  port: {BACKEND_PORT}
  protocol: TCP
endpoints:
- addresses: [\"127.0.0.1\"]
  conditions:
    ready: true
"
    );
    std::fs::write(cfg.join("gateway.yaml"), g)?;
    let routes = match layout {
        Layout::Base => sluice_route("app", None),
        Layout::Routes(n) => {
            let mut s = String::with_capacity(n * 300);
            for i in 0..n {
                s.push_str(&sluice_route(&format!("r{i}"), Some(&route_host(i))));
            }
            s
        }
    };
    std::fs::write(cfg.join("routes.yaml"), routes)?;
    Ok(())
}

fn indent(s: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    s.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One HTTPRoute document (with a leading `---`), for `host` or for every host.
fn sluice_route(name: &str, host: Option<&str>) -> String {
    let hostnames = host
        .map(|h| format!("  hostnames: [\"{h}\"]\n"))
        .unwrap_or_default();
    format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: {name}
  namespace: default
spec:
  parentRefs:
  - name: bench
{hostnames}  rules:
  - backendRefs:
    - name: backend
      port: 80
"
    )
}

// ---- nginx ----

fn nginx_config(env: &Env, dir: &Path, layout: Layout, ports: Ports) -> Result<PathBuf> {
    std::fs::create_dir_all(dir.join("tmp"))?;
    let mut servers = String::new();
    match layout {
        Layout::Base => {
            let _ = write!(
                servers,
                "    server {{
        listen 127.0.0.1:{http} backlog=4096;
        listen 127.0.0.1:{h2c} http2 backlog=4096;
        listen 127.0.0.1:{https} ssl http2 backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{ proxy_pass http://backend; }}
    }}
",
                http = ports.http,
                h2c = ports.h2c,
                https = ports.https,
                cert = env.cert.display(),
                key = env.key.display(),
            );
        }
        Layout::Routes(n) => {
            let _ = writeln!(
                servers,
                "    server {{ listen 127.0.0.1:{} default_server backlog=4096; return 404; }}",
                ports.http
            );
            for i in 0..n {
                servers.push_str(&nginx_route_server(ports.http, &route_host(i)));
            }
            let _ = writeln!(servers, "    include {}/probes.conf;", dir.display());
            std::fs::write(dir.join("probes.conf"), "")?;
        }
    }
    let conf = format!(
        "worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {wc}; }}
http {{
    access_log off;
    {temps}
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server_names_hash_max_size 65536;
    server_names_hash_bucket_size 64;
    upstream backend {{
        server 127.0.0.1:{BACKEND_PORT};
        keepalive 256;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }}
    proxy_http_version 1.1;
    proxy_set_header Connection \"\";
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    # Stream large responses through memory buffers, never a temporary file (as the others do).
    proxy_buffers 8 16k;
    proxy_busy_buffers_size 32k;
    proxy_max_temp_file_size 0;
{servers}}}
",
        d = dir.display(),
        temps = nginx_temp_paths(dir),
        wc = env.nginx_worker_connections(),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}

fn nginx_route_server(port: u16, host: &str) -> String {
    format!(
        "    server {{ listen 127.0.0.1:{port}; server_name {host}; location / {{ proxy_pass http://backend; }} }}\n"
    )
}

// ---- HAProxy ----

fn haproxy_config(env: &Env, dir: &Path, layout: Layout, ports: Ports) -> Result<PathBuf> {
    let pem = dir.join("bench.pem");
    std::fs::write(
        &pem,
        format!(
            "{}{}",
            std::fs::read_to_string(&env.cert)?,
            std::fs::read_to_string(&env.key)?
        ),
    )?;
    let frontend = match layout {
        Layout::Base => format!(
            "    bind 127.0.0.1:{http} backlog 4096
    bind 127.0.0.1:{h2c} proto h2 backlog 4096
    bind 127.0.0.1:{https} ssl crt {pem} alpn h2,http/1.1 backlog 4096
    http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
    http-request set-header X-Forwarded-Proto http unless {{ ssl_fc }}
    default_backend be_app
",
            http = ports.http,
            h2c = ports.h2c,
            https = ports.https,
            pem = pem.display(),
        ),
        Layout::Routes(n) => {
            let mut map = String::with_capacity(n * 32);
            for i in 0..n {
                let _ = writeln!(map, "{} be_app", route_host(i));
            }
            std::fs::write(dir.join("hosts.map"), map)?;
            format!(
                "    bind 127.0.0.1:{http} backlog 4096
    http-request set-header X-Forwarded-Proto http
    use_backend %[req.hdr(host),lower,map_str({d}/hosts.map,be_404)]
",
                http = ports.http,
                d = dir.display(),
            )
        }
    };
    let conf = format!(
        "global
    nbthread 1
    maxconn {maxconn}
    pidfile {d}/haproxy.pid
    ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
    mode http
    maxconn {maxconn}
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    timeout http-request 30s
    option http-keep-alive
    option forwardfor
    http-reuse always

frontend fe
{frontend}
backend be_app
    server app 127.0.0.1:{BACKEND_PORT}

backend be_404
    http-request return status 404
",
        d = dir.display(),
        maxconn = env.max_conns(),
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_do_not_collide() {
        let mut seen = std::collections::HashSet::new();
        for layout in [Layout::Base, Layout::Routes(10)] {
            for p in Peer::ALL {
                let ports = Ports::of(p, layout);
                seen.insert(ports.http);
                if !p.is_sluice() {
                    assert!(seen.insert(ports.h2c));
                } else {
                    assert_eq!(ports.h2c, ports.http, "Sluice sniffs h2c on its HTTP port");
                }
                if layout == Layout::Base {
                    assert!(seen.insert(ports.https));
                }
                if let Some(h3) = ports.h3 {
                    assert_eq!((p, layout), (Peer::Sluice, Layout::Base));
                    assert!(seen.insert(h3));
                }
            }
        }
        assert!(!seen.contains(&BACKEND_PORT));
    }

    #[test]
    fn sluice_route_yaml_names_the_host_and_the_backend() {
        let y = sluice_route("r7", Some("r7.bench.example"));
        assert!(y.contains("name: r7\n"));
        assert!(y.contains("hostnames: [\"r7.bench.example\"]"));
        assert!(y.contains("- name: backend\n      port: 80"));
        assert!(!sluice_route("app", None).contains("hostnames"));
    }

    #[test]
    fn sluice_serves_http3_on_a_listener_of_its_own_in_the_base_layout() {
        let tmp = std::env::temp_dir().join(format!("sluice-bench-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let env = Env {
            cert: tmp.join("cert.pem"),
            key: tmp.join("key.pem"),
            tmp: tmp.clone(),
            pin: Pinning::for_cpus(1),
            sluice: PathBuf::from("sluice"),
            ebpf_object: None,
            fd_limit: 1024,
            backend_pid: 0,
            quiet_budget: std::cell::Cell::new(Duration::ZERO),
        };
        std::fs::write(&env.cert, "CERT\n").unwrap();
        std::fs::write(&env.key, "KEY\n").unwrap();
        let base = Ports::of(Peer::Sluice, Layout::Base);
        sluice_config(&env, &tmp.join("base"), Layout::Base, base).unwrap();
        let g = std::fs::read_to_string(tmp.join("base/config/gateway.yaml")).unwrap();
        let h3 = g
            .split("- name: https-h3\n")
            .nth(1)
            .expect("an HTTP/3 listener");
        let h3 = h3.split("---").next().unwrap();
        assert!(
            h3.contains(&format!("port: {}\n", base.h3.unwrap())),
            "{h3}"
        );
        assert!(h3.contains("sluice.dev/http3: \"true\""), "{h3}");
        let https = g.split("- name: https\n").nth(1).unwrap();
        let https = https.split("- name: https-h3").next().unwrap();
        assert!(
            !https.contains("http3"),
            "the other TLS scenarios get no Alt-Svc: {https}"
        );
        let routes = Ports::of(Peer::Sluice, Layout::Routes(10));
        assert_eq!(routes.h3, None);
        sluice_config(&env, &tmp.join("routes"), Layout::Routes(10), routes).unwrap();
        let g = std::fs::read_to_string(tmp.join("routes/config/gateway.yaml")).unwrap();
        assert!(!g.contains("https"));
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn peer_names_round_trip() {
        for p in Peer::ALL {
            assert_eq!(Peer::parse(p.name()), Some(p));
        }
        assert_eq!(Peer::parse("envoy"), None);
    }
}
