//! Processes under test: spawning (pinned with `taskset`), stopping, and reading their CPU time,
//! memory and the per-core busy time from `/proc`.

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Process ids of the servers started and not yet stopped, for [`stop_servers_on_signal`].
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// On SIGINT, SIGTERM or SIGHUP: stops every server still running (SIGTERM, as
/// [`Server::stop`] does; Sluice with its datapath detaches it then), waits up to 5 s for them,
/// and exits. Without it a killed run left its backend and proxies holding the benchmark ports.
pub fn stop_servers_on_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut int, mut term, mut hup) = rt.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        ))
    })?;
    std::thread::spawn(move || {
        let code = rt.block_on(async {
            tokio::select! {
                _ = int.recv() => 130,
                _ = term.recv() => 143,
                _ = hup.recv() => 129,
            }
        });
        let pids = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
        eprintln!("peer-bench: stopping {} server(s) and exiting", pids.len());
        for &pid in &pids {
            let _ = kill(pid, "TERM");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        // Exited children stay zombies (state Z) until the runner, which is about to exit,
        // reaps them.
        let running =
            |pid: &u32| stat_fields(*pid).is_some_and(|f| f.first().is_some_and(|s| s != "Z"));
        while Instant::now() < deadline && pids.iter().any(running) {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::process::exit(code);
    });
    Ok(())
}

/// `kill -SIG PID`: sends a signal by name (`TERM`, `HUP`, `USR2`, ...).
fn kill(pid: u32, sig: &str) -> std::io::Result<std::process::ExitStatus> {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
}

/// Which CPUs the proxy under test and the load side (load generator, backend) run on.
#[derive(Debug, Clone)]
pub struct Pinning {
    /// CPU list for the proxy under test (`taskset -c` syntax), `None` = not pinned.
    pub proxy: Option<String>,
    /// CPU list for the load generator and the backend, `None` = not pinned.
    pub load: Option<String>,
    /// Index of the proxy's CPU in `/proc/stat` (for its busy time).
    pub proxy_cpu: Option<usize>,
    /// Indexes of the load CPUs in `/proc/stat`.
    pub load_cpus: Vec<usize>,
}

impl Pinning {
    /// Proxy on the last CPU, everything else on the others; no pinning on one CPU.
    pub fn for_cpus(n: usize) -> Pinning {
        if n < 2 {
            return Pinning {
                proxy: None,
                load: None,
                proxy_cpu: None,
                load_cpus: vec![],
            };
        }
        let last = n - 1;
        let load = if last == 1 {
            "0".to_string()
        } else {
            format!("0-{}", last - 1)
        };
        Pinning {
            proxy: Some(last.to_string()),
            load: Some(load),
            proxy_cpu: Some(last),
            load_cpus: (0..last).collect(),
        }
    }

    /// A command for the proxy under test (pinned when pinning is on).
    pub fn proxy_cmd(&self, program: &Path) -> Command {
        pinned(self.proxy.as_deref(), program)
    }

    /// A command for the load side (pinned when pinning is on).
    pub fn load_cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        pinned(self.load.as_deref(), program)
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        match (&self.proxy, &self.load) {
            (Some(p), Some(l)) => format!(
                "proxy under test pinned to CPU {p}; load generator and backend pinned to CPU {l} (taskset)"
            ),
            _ => "not pinned (fewer than 2 CPUs)".into(),
        }
    }
}

fn pinned(cpus: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match cpus {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// A started server process, stopped (SIGTERM, then SIGKILL after 5 s) when dropped.
#[derive(Debug)]
pub struct Server {
    /// Short name for messages.
    pub name: String,
    child: Option<Child>,
}

impl Server {
    /// Spawns `cmd` with stdout/stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Server> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        if let Ok(mut live) = LIVE.lock() {
            live.push(child.id());
        }
        Ok(Server {
            name: name.to_string(),
            child: Some(child),
        })
    }

    /// The process id (for `taskset`-wrapped commands, taskset execs, so this is the server).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Started and not stopped (it may still have exited on its own: see `check_alive`).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Fails when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut()
            && let Some(status) = c.try_wait()?
        {
            bail!("{} exited: {status}", self.name);
        }
        Ok(())
    }

    /// Sends a signal by name (`HUP`, `USR2`, ...) to the process.
    pub fn signal(&self, sig: &str) -> Result<()> {
        if !kill(self.pid(), sig)?.success() {
            bail!("kill -{sig} {} ({}) failed", self.pid(), self.name);
        }
        Ok(())
    }

    /// Stops the process and waits for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|&p| p != child.id());
        }
        if matches!(child.try_wait(), Ok(None)) {
            let _ = kill(child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The fields after the `(comm)` of `/proc/PID/stat` (field 3 onwards).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// `pid` and all its descendants (by scanning `/proc`).
pub fn tree(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(f) = stat_fields(p)
                && let Some(pp) = f.get(1).and_then(|v| v.parse::<u32>().ok())
            {
                parent_of.push((p, pp));
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == cur)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    out
}

/// User and system CPU time of a set of processes, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    /// utime (ticks).
    pub user: u64,
    /// stime (ticks).
    pub system: u64,
}

/// CPU time of `pids` (processes that have gone are skipped).
pub fn cpu_ticks(pids: &[u32]) -> CpuTicks {
    let mut t = CpuTicks::default();
    for &p in pids {
        if let Some(f) = stat_fields(p) {
            // utime and stime are fields 14 and 15; `f` starts at field 3.
            t.user += f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
            t.system += f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    t
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 when unknown).
pub fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// Resident memory of `pids` in KiB (VmRSS summed).
pub fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

/// Per-CPU (busy, total) jiffies from `/proc/stat`, indexed by CPU number.
pub fn core_times() -> Vec<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    parse_core_times(&s)
}

fn parse_core_times(s: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for line in s.lines() {
        let mut it = line.split_whitespace();
        let Some(name) = it.next() else { continue };
        let Some(idx) = name
            .strip_prefix("cpu")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let v: Vec<u64> = it.filter_map(|x| x.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal (guest fields are inside user/nice).
        let total: u64 = v.iter().take(8).sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        if out.len() <= idx {
            out.resize(idx + 1, (0, 0));
        }
        out[idx] = (total - idle, total);
    }
    out
}

/// Busy fraction (0..=1) of the given CPUs between two `core_times` readings.
pub fn busy_fraction(before: &[(u64, u64)], after: &[(u64, u64)], cpus: &[usize]) -> Option<f64> {
    let (mut busy, mut total) = (0u64, 0u64);
    for &c in cpus {
        let (b0, t0) = *before.get(c)?;
        let (b1, t1) = *after.get(c)?;
        busy += b1.saturating_sub(b0);
        total += t1.saturating_sub(t0);
    }
    (total > 0).then(|| busy as f64 / total as f64)
}

/// CPU time of this process's waited-for children (cutime, cstime), e.g. a finished wrk.
pub fn children_ticks() -> CpuTicks {
    let f = stat_fields(std::process::id()).unwrap_or_default();
    CpuTicks {
        user: f.get(13).and_then(|v| v.parse().ok()).unwrap_or(0),
        system: f.get(14).and_then(|v| v.parse().ok()).unwrap_or(0),
    }
}

/// Measures one load run: the proxy's CPU time, the load CPUs' busy time, and the CPU used by
/// anything other than the proxy, the backend and the load generator (other load on a shared
/// machine, which makes requests/s unreliable while CPU per request stays meaningful).
#[derive(Debug)]
pub struct Meter {
    proxy: Vec<u32>,
    backend: Vec<u32>,
    cores: Vec<(u64, u64)>,
    proxy_t: CpuTicks,
    backend_t: CpuTicks,
    children_t: CpuTicks,
}

/// What a [`Meter`] saw.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// The proxy's CPU time (ticks).
    pub proxy: CpuTicks,
    /// The proxy's CPU time over the wall time (1.0 = one core).
    pub proxy_cores: f64,
    /// Busy fraction of the proxy's CPU (its own time and anybody else's).
    pub proxy_core_busy: Option<f64>,
    /// Busy fraction of the load CPUs.
    pub load_core_busy: Option<f64>,
    /// Cores used by other processes (and unattributed kernel work) meanwhile.
    pub other_cores: f64,
}

impl Meter {
    /// Starts measuring the processes in `proxy` and `backend` (pid lists).
    pub fn start(proxy: Vec<u32>, backend: Vec<u32>) -> Meter {
        Meter {
            proxy_t: cpu_ticks(&proxy),
            backend_t: cpu_ticks(&backend),
            children_t: children_ticks(),
            cores: core_times(),
            proxy,
            backend,
        }
    }

    /// Stops measuring (call after the load generator has been waited for).
    pub fn finish(self, pin: &Pinning) -> Measured {
        let cores = core_times();
        let d = |a: CpuTicks, b: CpuTicks| CpuTicks {
            user: b.user.saturating_sub(a.user),
            system: b.system.saturating_sub(a.system),
        };
        let proxy = d(self.proxy_t, cpu_ticks(&self.proxy));
        let backend = d(self.backend_t, cpu_ticks(&self.backend));
        let load = d(self.children_t, children_ticks());
        let (mut busy, mut total) = (0u64, 0u64);
        for (a, b) in self.cores.iter().zip(&cores) {
            busy += b.0.saturating_sub(a.0);
            total += b.1.saturating_sub(a.1);
        }
        let n = cores.len().max(1) as f64;
        let wall = (total as f64 / n).max(1.0);
        let ours =
            (proxy.user + proxy.system + backend.user + backend.system + load.user + load.system)
                as f64;
        Measured {
            proxy,
            proxy_cores: (proxy.user + proxy.system) as f64 / wall,
            proxy_core_busy: pin
                .proxy_cpu
                .and_then(|c| busy_fraction(&self.cores, &cores, &[c])),
            load_core_busy: busy_fraction(&self.cores, &cores, &pin.load_cpus),
            other_cores: ((busy as f64 - ours) / wall).max(0.0),
        }
    }
}

/// Waits until the machine is quiet (all CPUs together less than 0.15 of a core busy over
/// 300 ms), spending at most `budget` (which is reduced by the time waited). Returns the busy
/// cores seen last.
pub fn wait_quiet(budget: &mut Duration) -> f64 {
    loop {
        let a = core_times();
        std::thread::sleep(Duration::from_millis(300));
        let b = core_times();
        let (mut busy, mut total) = (0u64, 0u64);
        for (x, y) in a.iter().zip(&b) {
            busy += y.0.saturating_sub(x.0);
            total += y.1.saturating_sub(x.1);
        }
        let cores = busy as f64 / (total as f64 / b.len().max(1) as f64).max(1.0);
        if cores < 0.15 || budget.is_zero() {
            return cores;
        }
        let step = Duration::from_millis(700).min(*budget);
        std::thread::sleep(step);
        *budget = budget.saturating_sub(step + Duration::from_millis(300));
    }
}

/// This process's open-file limits (soft, hard) from `/proc/self/limits`.
pub fn nofile_limits() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    let mut it = line["Max open files".len()..].split_whitespace();
    let parse = |v: Option<&str>| match v {
        Some("unlimited") => Some(u64::MAX),
        Some(v) => v.parse().ok(),
        None => None,
    };
    Some((parse(it.next())?, parse(it.next())?))
}

/// Output of a command as text (stdout and stderr joined), empty when it cannot run.
pub fn command_text(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).to_string();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.trim().to_string()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_times_skip_the_aggregate_line_and_count_iowait_as_idle() {
        let s = "cpu  10 0 10 100 5 0 0 0 0 0\n\
                 cpu0 4 0 6 50 2 0 0 0 0 0\n\
                 cpu1 6 0 4 50 3 1 1 0 0 0\n\
                 intr 1 2 3\n";
        let t = parse_core_times(s);
        assert_eq!(t, vec![(10, 62), (12, 65)]);
        let later = vec![(20, 82), (12, 85)];
        assert_eq!(busy_fraction(&t, &later, &[0]), Some(0.5));
        assert_eq!(busy_fraction(&t, &later, &[1]), Some(0.0));
        assert_eq!(busy_fraction(&t, &later, &[2]), None);
    }

    #[test]
    fn own_process_is_in_its_tree_and_has_memory() {
        let me = std::process::id();
        assert_eq!(tree(me)[0], me);
        assert!(rss_kib(&[me]) > 0);
        let (soft, hard) = nofile_limits().unwrap();
        assert!(soft >= 3 && soft <= hard);
        let t = cpu_ticks(&[me]);
        // A test binary has run some code by now, but never more than it has lived.
        assert!(t.user + t.system < 100 * clock_ticks());
    }

    #[test]
    fn pinning_splits_the_last_cpu_off() {
        let p = Pinning::for_cpus(2);
        assert_eq!(p.proxy.as_deref(), Some("1"));
        assert_eq!(p.load.as_deref(), Some("0"));
        let p = Pinning::for_cpus(8);
        assert_eq!(p.proxy.as_deref(), Some("7"));
        assert_eq!(p.load.as_deref(), Some("0-6"));
        assert_eq!(p.load_cpus.len(), 7);
        assert!(Pinning::for_cpus(1).proxy.is_none());
    }
}
