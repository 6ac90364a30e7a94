//! What the database did during a run: its operation counters
//! (`serverStatus.opcounters`: on the embedded server each is one round
//! trip, whatever the number of documents) and the CPU time of its process
//! (found by the port it listens on, when it runs on this machine).

use mongodb::bson::{Document, doc};
use std::time::Duration;

pub struct DbStats {
    client: mongodb::Client,
    pid: Option<u32>,
    ticks_per_s: f64,
}

/// One reading, or the difference between two (`Sample::to`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// insert, query, update, delete, getmore, command.
    pub ops: [i64; 6],
    pub cpu: Option<Duration>,
}

impl Sample {
    pub fn total_ops(&self) -> i64 {
        self.ops.iter().sum()
    }

    /// `ops 1.23/msg (i 0.5 q 0.1 u 0.6 c 0.03) db cpu 0.41 ms/msg`
    pub fn per(&self, n: usize) -> String {
        let n = n.max(1) as f64;
        let [i, q, u, d, g, c] = self.ops.map(|o| o as f64 / n);
        let cpu = self.cpu.map_or("n/a".to_string(), |c| format!("{:.3} ms/msg", c.as_secs_f64() * 1000.0 / n));
        format!(
            "db ops {:.3}/msg (insert {i:.3} query {q:.3} update {u:.3} delete {d:.3} getmore {g:.3} command {c:.3}), db cpu {cpu}",
            self.total_ops() as f64 / n
        )
    }
}

impl DbStats {
    pub async fn new(mongodb_base: &str) -> DbStats {
        let client = mongodb::Client::with_uri_str(mongodb_base).await.expect("mongodb client");
        DbStats { client, pid: pid_serving(mongodb_base), ticks_per_s: ticks_per_s() }
    }

    pub async fn sample(&self) -> Sample {
        let status: Document =
            self.client.database("admin").run_command(doc! {"serverStatus": 1}).await.expect("serverStatus");
        let oc = status.get_document("opcounters").cloned().unwrap_or_default();
        let get = |k: &str| oc.get_i64(k).or_else(|_| oc.get_i32(k).map(i64::from)).unwrap_or(0);
        let ops = ["insert", "query", "update", "delete", "getmore", "command"].map(get);
        Sample { ops, cpu: self.pid.and_then(|p| cpu_of(p, self.ticks_per_s)) }
    }
}

impl Sample {
    /// What happened between `self` and `later` (less the reading's own
    /// `serverStatus` command).
    pub fn to(&self, later: &Sample) -> Sample {
        let mut ops = [0; 6];
        for (i, o) in ops.iter_mut().enumerate() {
            *o = later.ops[i] - self.ops[i];
        }
        ops[5] = (ops[5] - 1).max(0);
        let cpu = match (self.cpu, later.cpu) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        Sample { ops, cpu }
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
pub fn ticks_per_s() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The local process serving `url` (`scheme://host:port[/]`), found by the
/// port on its command line.
pub fn pid_serving(url: &str) -> Option<u32> {
    url.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse::<u16>().ok()).and_then(pid_listening_on)
}

/// The process listening on `port`: the owner of the listening socket in
/// `/proc/net/tcp`, else the one whose command line says so (`--port P`
/// or `-p P`).
fn pid_listening_on(port: u16) -> Option<u32> {
    owner_of_listener(port).or_else(|| pid_by_cmdline(port))
}

fn owner_of_listener(port: u16) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    // `sl local_address rem_address st ... inode`: state 0A is LISTEN.
    let inode = table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
        (local_port == port && *f.get(3)? == "0A").then(|| f.get(9).map(|s| s.to_string()))?
    })?;
    let wanted = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == wanted) {
                return Some(pid);
            }
        }
    }
    None
}

fn pid_by_cmdline(port: u16) -> Option<u32> {
    let wants = [format!("--port\0{port}\0"), format!("-p\0{port}\0")];
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd);
        if wants.iter().any(|w| cmd.contains(w.as_str())) && !cmd.starts_with("bash") {
            return Some(pid);
        }
    }
    None
}

/// User and system CPU time of a process.
pub fn cpu_of(pid: u32, ticks_per_s: f64) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(Duration::from_secs_f64(ticks / ticks_per_s))
}

/// CPU time of named processes, to split a run's cost between them.
pub struct ProcStats {
    procs: Vec<(String, u32)>,
    ticks_per_s: f64,
}

impl ProcStats {
    pub fn new(procs: Vec<(String, u32)>) -> ProcStats {
        ProcStats { procs, ticks_per_s: ticks_per_s() }
    }

    pub fn sample(&self) -> Vec<Duration> {
        self.procs.iter().map(|(_, pid)| cpu_of(*pid, self.ticks_per_s).unwrap_or_default()).collect()
    }

    /// `edge 0.21, nats 0.30, ...` in ms of CPU per message between two samples.
    pub fn per(&self, before: &[Duration], after: &[Duration], n: usize) -> String {
        let n = n.max(1) as f64;
        let parts: Vec<String> = self
            .procs
            .iter()
            .zip(before.iter().zip(after))
            .map(|((name, _), (b, a))| format!("{name} {:.3}", a.saturating_sub(*b).as_secs_f64() * 1000.0 / n))
            .collect();
        let total: f64 = before.iter().zip(after).map(|(b, a)| a.saturating_sub(*b).as_secs_f64()).sum::<f64>();
        format!("cpu ms/msg: {} (all {:.3})", parts.join(", "), total * 1000.0 / n)
    }
}
