//! The servers under test as child processes: starting them on a free loopback port,
//! waiting until they answer, reading their CPU time and peak RSS from `/proc`, and
//! stopping them (always, also on error and on a signal: see [`Server`]'s `Drop`).

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustix::process::{kill_process, Pid, Signal};

/// A free TCP port on 127.0.0.1 for a server to bind a moment later. It is taken below
/// the kernel's ephemeral range: a port found by binding port 0 comes from that range,
/// where any outgoing connection of the run (wrk, the client, node to node) may take
/// it before the server binds it (a cluster node once failed to start that way). Each
/// call moves on to the next port, so servers started one after another never meet
/// each other's old connections either.
pub fn free_port() -> Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (first, end) = (10_000u32, ephemeral_low.max(10_001));
    let span = end - first;
    // Runs started close together begin at different places.
    let _ = NEXT.compare_exchange(0, 1 + std::process::id() % span, Relaxed, Relaxed);
    for _ in 0..span {
        let port = first + NEXT.fetch_add(1, Relaxed) % span;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return Ok(port as u16);
        }
    }
    bail!("no free TCP port on 127.0.0.1 between {first} and {end}")
}

/// Which server a process is; nginx's CPU is the sum over its master and workers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Cairnd,
    Nginx,
    /// One process (its workers are threads).
    Harmonia,
}

/// A running server. Dropping it stops it: SIGTERM, up to 5 s for a clean exit, then
/// SIGKILL (for nginx also of every worker, which would otherwise outlive a killed master).
pub struct Server {
    pub name: String,
    pub kind: Kind,
    pub base_url: String,
    child: Option<Child>,
    log: PathBuf,
    pid_file: PathBuf,
}

impl Server {
    /// Spawns `cmd` (stdout and stderr to `log`), records its pid in `pid_file` (for
    /// `bench/run`'s exit trap) and waits up to 30 s for `GET /nix-cache-info` to answer 200.
    pub async fn start(
        name: &str,
        kind: Kind,
        mut cmd: Command,
        port: u16,
        log: &Path,
        pid_file: &Path,
    ) -> Result<Server> {
        let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        let mut pids = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(pid_file)
            .with_context(|| format!("opening {}", pid_file.display()))?;
        writeln!(pids, "{}", child.id())?;
        let mut server = Server {
            name: name.to_string(),
            kind,
            base_url: format!("http://127.0.0.1:{port}"),
            child: Some(child),
            log: log.to_path_buf(),
            pid_file: pid_file.to_path_buf(),
        };
        server.wait_ready().await?;
        Ok(server)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let client = reqwest::Client::builder().no_proxy().build()?;
        let url = format!("{}/nix-cache-info", self.base_url);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "{} exited during start-up ({status}); its log {}:\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log, 20)
                );
            }
            match client.get(&url).send().await {
                Ok(r) if r.status() == 200 => return Ok(()),
                Ok(r) if Instant::now() > deadline => {
                    bail!("{} answers {} on /nix-cache-info", self.name, r.status())
                }
                Err(e) if Instant::now() > deadline => {
                    bail!("{} did not come up within 30 s: {e}", self.name)
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The pids whose CPU time counts for this server.
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.pid()];
        if self.kind == Kind::Nginx {
            pids.extend(children_of(self.pid()));
        }
        pids
    }

    /// utime + stime of the server so far, in seconds (all threads; for nginx, the master
    /// and its workers).
    pub fn cpu_seconds(&self) -> Result<f64> {
        let mut sum = 0u64;
        for pid in self.pids() {
            sum += cpu_ticks(pid)
                .with_context(|| format!("reading the CPU time of {} (pid {pid})", self.name))?;
        }
        Ok(ticks_to_seconds(sum))
    }

    /// Peak resident set size (VmHWM) in bytes, of the main process.
    pub fn peak_rss(&self) -> Result<u64> {
        let pid = self.pid();
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status of {}", self.name))?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .context("no VmHWM line in /proc/PID/status")?;
        Ok(kb * 1024)
    }

    /// Fails when the server has exited (crashed) since it started.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            bail!(
                "{} exited unexpectedly ({status}); its log {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 20)
            );
        }
        Ok(())
    }

    /// Stops the server now (the same as dropping it, but explicit at a call site).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let workers = if self.kind == Kind::Nginx {
            children_of(child.id())
        } else {
            Vec::new()
        };
        signal(child.id(), Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !matches!(child.try_wait(), Ok(Some(_))) {
            let _ = child.kill();
            let _ = child.wait();
        }
        for w in workers {
            signal(w, Signal::KILL);
        }
        forget_pid(&self.pid_file, child.id());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn signal(pid: u32, sig: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        // ESRCH (already gone) is the only expected failure and needs no action.
        let _ = kill_process(pid, sig);
    }
}

/// Removes `pid` from the pid file once it is stopped, so `bench/run`'s trap never
/// signals a pid the kernel may have handed to someone else since.
fn forget_pid(pid_file: &Path, pid: u32) {
    if let Ok(text) = fs::read_to_string(pid_file) {
        let rest: String = text
            .lines()
            .filter(|l| l.trim() != pid.to_string())
            .map(|l| format!("{l}\n"))
            .collect();
        let _ = fs::write(pid_file, rest);
    }
}

/// CPU seconds (user + system) this benchmark process has used so far.
pub fn own_cpu_seconds() -> Result<f64> {
    Ok(ticks_to_seconds(cpu_ticks(std::process::id())?))
}

fn ticks_to_seconds(ticks: u64) -> f64 {
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

/// utime + stime (in clock ticks) from `/proc/PID/stat`; the command name in field 2
/// may hold spaces and parentheses, so fields are counted from the last `)`.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("malformed stat")? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) ... utime(14) stime(15), so indexes 11 and 12.
    let utime: u64 = f.get(11).context("short stat")?.parse()?;
    let stime: u64 = f.get(12).context("short stat")?.parse()?;
    Ok(utime + stime)
}

/// The pids whose parent is `pid` (nginx's workers), found by scanning `/proc`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| {
            fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s[s.rfind(')')? + 1..].to_string();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// The last `n` lines of a log file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
