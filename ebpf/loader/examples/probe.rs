//! Network probe for the eBPF datapath's tests and benchmarks: small servers and clients that
//! report what each side saw (peer addresses, replies, errors, latencies) as `key=value` lines.
//!
//! ```text
//! probe serve --id NAME [--tcp ADDR] [--udp ADDR] [--echo] [--cgroup DIR]
//! probe tcp ADDR [--count N] [--requests N] [--interval-ms MS] [--timeout-ms MS] [--sport P]
//!     [--cgroup DIR]
//! probe udp ADDR [--count N] [--size BYTES] [--connected] [--timeout-ms MS] [--cgroup DIR]
//! probe pingpong ADDR [--size BYTES] [--count N] [--cgroup DIR]
//! probe connect-bench ADDR [--seconds S] [--cgroup DIR]
//! ```
//! `--cgroup DIR` moves the probe into that cgroup v2 directory before it opens any socket.
//! `serve` answers each TCP line with `NAME <peer> <local>` (or echoes bytes with `--echo`),
//! and each UDP datagram with `NAME <peer>` padded to the request's size.

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

struct Args {
    rest: Vec<String>,
}

impl Args {
    fn flag(&mut self, name: &str) -> bool {
        if let Some(i) = self.rest.iter().position(|a| a == name) {
            self.rest.remove(i);
            true
        } else {
            false
        }
    }

    fn opt(&mut self, name: &str) -> Result<Option<String>> {
        match self.rest.iter().position(|a| a == name) {
            Some(i) => {
                self.rest.remove(i);
                if i >= self.rest.len() {
                    bail!("{name} needs a value");
                }
                Ok(Some(self.rest.remove(i)))
            }
            None => Ok(None),
        }
    }

    fn num(&mut self, name: &str, default: u64) -> Result<u64> {
        Ok(match self.opt(name)? {
            Some(v) => v.parse().with_context(|| format!("{name} {v}"))?,
            None => default,
        })
    }

    fn pos(&mut self, what: &str) -> Result<String> {
        if self.rest.is_empty() {
            bail!("missing {what}");
        }
        Ok(self.rest.remove(0))
    }
}

fn main() -> Result<()> {
    let mut a = Args {
        rest: std::env::args().skip(1).collect(),
    };
    if let Some(cg) = a.opt("--cgroup")? {
        std::fs::write(format!("{cg}/cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("joining cgroup {cg}"))?;
    }
    let cmd = a.pos("command")?;
    match cmd.as_str() {
        "serve" => serve(&mut a),
        "tcp" => tcp(&mut a),
        "udp" => udp(&mut a),
        "pingpong" => pingpong(&mut a),
        "connect-bench" => connect_bench(&mut a),
        other => bail!("unknown command {other}"),
    }
}

fn serve(a: &mut Args) -> Result<()> {
    let id = a.opt("--id")?.unwrap_or_else(|| "server".into());
    let echo = a.flag("--echo");
    let tcp = a.opt("--tcp")?;
    let udp = a.opt("--udp")?;
    let mut threads = Vec::new();
    if let Some(addr) = udp {
        let sock = UdpSocket::bind(&addr).with_context(|| format!("binding UDP {addr}"))?;
        let id = id.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let mut reply = format!("{id} {peer}\n").into_bytes();
                if reply.len() < n {
                    reply.resize(n, b'.');
                }
                let _ = sock.send_to(&reply, peer);
            }
        }));
    }
    if let Some(addr) = tcp {
        let l = TcpListener::bind(&addr).with_context(|| format!("binding TCP {addr}"))?;
        println!("listening {addr}");
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
            let id = id.clone();
            std::thread::spawn(move || {
                let _ = if echo {
                    echo_conn(conn)
                } else {
                    line_conn(conn, &id)
                };
            });
        }
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn echo_conn(mut c: TcpStream) -> std::io::Result<()> {
    c.set_nodelay(true)?;
    let mut buf = vec![0u8; 65536];
    loop {
        let n = c.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        c.write_all(&buf[..n])?;
    }
}

fn line_conn(c: TcpStream, id: &str) -> std::io::Result<()> {
    c.set_nodelay(true)?;
    let peer = c.peer_addr()?;
    let local = c.local_addr()?;
    let mut w = c.try_clone()?;
    let mut r = BufReader::new(c);
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        w.write_all(format!("{id} {peer} {local}\n").as_bytes())?;
    }
}

fn tcp(a: &mut Args) -> Result<()> {
    let addr: SocketAddr = a.pos("address")?.parse()?;
    let count = a.num("--count", 1)?;
    let requests = a.num("--requests", 1)?;
    let interval = Duration::from_millis(a.num("--interval-ms", 0)?);
    let timeout = Duration::from_millis(a.num("--timeout-ms", 3000)?);
    let sport = a.num("--sport", 0)? as u16;
    let mut failed = false;
    for i in 0..count {
        let conn = if sport != 0 {
            connect_from(sport, addr, timeout)
        } else {
            TcpStream::connect_timeout(&addr, timeout)
        };
        let c = match conn {
            Ok(c) => c,
            Err(e) => {
                println!("conn={i} error={:?}", e.kind());
                failed = true;
                continue;
            }
        };
        c.set_read_timeout(Some(timeout))?;
        c.set_nodelay(true)?;
        let peer = c.peer_addr()?;
        let local = c.local_addr()?;
        let mut w = c.try_clone()?;
        let mut r = BufReader::new(c);
        for j in 0..requests {
            if j > 0 {
                std::thread::sleep(interval);
            }
            let mut line = String::new();
            let res = w.write_all(b"hello\n").and_then(|_| r.read_line(&mut line));
            match res {
                Ok(n) if n > 0 => println!(
                    "conn={i} req={j} peer={peer} local={local} reply={}",
                    line.trim_end().replace(' ', ",")
                ),
                Ok(_) => {
                    println!("conn={i} req={j} error=closed");
                    failed = true;
                    break;
                }
                Err(e) => {
                    println!("conn={i} req={j} error={:?}", e.kind());
                    failed = true;
                    break;
                }
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

fn udp(a: &mut Args) -> Result<()> {
    let addr: SocketAddr = a.pos("address")?.parse()?;
    let count = a.num("--count", 1)?;
    let size = a.num("--size", 6)? as usize;
    let connected = a.flag("--connected");
    let timeout = Duration::from_millis(a.num("--timeout-ms", 2000)?);
    let mut failed = false;
    for i in 0..count {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(timeout))?;
        let mut payload = b"hello\n".to_vec();
        payload.resize(size.max(1), b'x');
        let sent = if connected {
            s.connect(addr)?;
            s.send(&payload)
        } else {
            s.send_to(&payload, addr)
        };
        if let Err(e) = sent {
            println!("dgram={i} error={:?}", e.kind());
            failed = true;
            continue;
        }
        let mut buf = vec![0u8; 65536];
        let got = if connected {
            s.recv(&mut buf).map(|n| (n, s.peer_addr().ok()))
        } else {
            s.recv_from(&mut buf).map(|(n, p)| (n, Some(p)))
        };
        match got {
            Ok((n, from)) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                let first = text.lines().next().unwrap_or("").replace(' ', ",");
                println!(
                    "dgram={i} from={} bytes={n} reply={first}",
                    from.map(|f| f.to_string()).unwrap_or_default()
                );
            }
            Err(e) => {
                let kind = if e.kind() == ErrorKind::ConnectionRefused {
                    "ConnectionRefused".to_string()
                } else {
                    format!("{:?}", e.kind())
                };
                println!("dgram={i} error={kind}");
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

fn pingpong(a: &mut Args) -> Result<()> {
    let addr: SocketAddr = a.pos("address")?.parse()?;
    let size = a.num("--size", 64)? as usize;
    let count = a.num("--count", 1000)?;
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut lat = Vec::with_capacity(count as usize);
    let mut out = vec![0u8; size];
    let mut back = vec![0u8; size];
    let start = Instant::now();
    for i in 0..count {
        for (j, b) in out.iter_mut().enumerate() {
            *b = (i as usize + j) as u8;
        }
        let t = Instant::now();
        c.write_all(&out)?;
        c.read_exact(&mut back)?;
        lat.push(t.elapsed());
        if back != out {
            println!("error=mismatch at={i}");
            std::process::exit(1);
        }
    }
    let total = start.elapsed();
    report("pingpong", &mut lat, total);
    Ok(())
}

fn connect_bench(a: &mut Args) -> Result<()> {
    let addr: SocketAddr = a.pos("address")?.parse()?;
    let seconds = a.num("--seconds", 5)?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut lat = Vec::new();
    let mut errors = 0u64;
    let start = Instant::now();
    while Instant::now() < deadline {
        let t = Instant::now();
        let ok = (|| -> std::io::Result<()> {
            let c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            c.set_nodelay(true)?;
            abortive_close(&c)?;
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut w = c.try_clone()?;
            w.write_all(b"hello\n")?;
            let mut line = String::new();
            BufReader::new(c).read_line(&mut line)?;
            Ok(())
        })();
        match ok {
            Ok(()) => lat.push(t.elapsed()),
            Err(_) => errors += 1,
        }
    }
    let total = start.elapsed();
    report("connect", &mut lat, total);
    println!("errors={errors}");
    Ok(())
}

/// Connects from a fixed local port (SO_REUSEADDR, so a port in TIME_WAIT can be reused).
fn connect_from(sport: u16, addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(dst) = addr else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    #[allow(unsafe_code)]
    // SAFETY: plain socket syscalls on a descriptor owned here, handed to TcpStream at the end.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let sin = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        let local = sin(std::net::Ipv4Addr::UNSPECIFIED, sport);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, &local as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        let remote = sin(*dst.ip(), dst.port());
        if libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len) != 0 {
            let e = std::io::Error::last_os_error();
            // SO_SNDTIMEO makes a timed-out connect fail with EINPROGRESS.
            if e.raw_os_error() == Some(libc::EINPROGRESS) {
                return Err(std::io::Error::from(ErrorKind::TimedOut));
            }
            return Err(e);
        }
        Ok(stream)
    }
}

/// SO_LINGER 0: close() resets the connection, so a connect benchmark leaves no TIME_WAIT
/// sockets behind to exhaust the ephemeral ports.
fn abortive_close(c: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket fd and a linger struct of the advertised size.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn report(what: &str, lat: &mut [Duration], total: Duration) {
    lat.sort();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        lat[i].as_secs_f64() * 1e6
    };
    println!(
        "bench={what} n={} p50_us={:.1} p99_us={:.1} ops_per_s={:.0}",
        lat.len(),
        pct(0.5),
        pct(0.99),
        lat.len() as f64 / total.as_secs_f64()
    );
}
