//! External processes: where their binaries are, free ports, and a reaper
//! so that servers shared by a test binary die with it (statics are never
//! dropped): each shared server runs under a shell that kills it when our
//! end of its stdin pipe closes, which happens whenever this process exits.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

/// A tool from the project's virtualenv (`infra/install.sh` puts it there),
/// or from the variable `env` if set.
pub fn tool(env: &str, name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    let p = root().join(".venv/bin").join(name);
    assert!(p.exists(), "{} not found: run infra/install.sh (or set {env})", p.display());
    p
}

/// A tool installed with `cargo install` (`infra/install.sh --s3`), or
/// from the variable `env` if set.
pub fn cargo_tool(env: &str, name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo"));
    let p = home.join("bin").join(name);
    assert!(p.exists(), "{} not found: run infra/install.sh --s3 (or set {env})", p.display());
    p
}

/// A binary of this workspace from the same build as the running one (a
/// test in `target/<profile>/deps/`, or a binary beside it).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let beside = exe.parent().expect("target dir");
    let p = [beside.join(name), beside.parent().map(|d| d.join(name)).unwrap_or_default()]
        .into_iter()
        .find(|p| p.exists() && p != &exe);
    p.unwrap_or_else(|| panic!("{name} not built: run `cargo build --workspace --bins` first"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Waits until something accepts TCP connections on `port`.
pub async fn wait_for_port(port: u16, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "nothing listens on port {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `program args` under a reaper shell; keep the returned child
/// (its stdin) alive as long as the server should live.
pub fn spawn_reaped(program: &PathBuf, args: &[String], log: &str) -> std::process::Child {
    let script = r#"exec 3<&0; "$@" >"$LOG" 2>&1 </dev/null & pid=$!; read -r _ <&3; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null; exit 0"#;
    std::process::Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("reaper")
        .arg(program)
        .args(args)
        .env("LOG", log)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn reaper")
}

/// A process owned by one test: killed (SIGKILL) on drop.
pub struct Owned {
    pub child: Child,
}

impl Owned {
    pub fn spawn(program: &PathBuf, args: &[String], envs: &[(String, String)], log: &str) -> Owned {
        let log = std::fs::File::create(log).expect("log file");
        let child = Command::new(program)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        Owned { child }
    }

    /// `kill -9`.
    pub async fn kill9(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Sends `signal` (`STOP`, `CONT`) with `kill`.
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
        }
    }

    /// SIGTERM, then wait for exit.
    pub async fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
        tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await.ok().and_then(|r| r.ok())
    }
}

/// The arguments that start nats-server with JetStream on `port`, its
/// store in `dir/store` and its file store set to `max_file_store` (a
/// nats size: `1TB`, `256MB`), from a config file written in `dir`.
pub fn nats_args(dir: &std::path::Path, port: u16, max_file_store: &str) -> Vec<String> {
    let conf = dir.join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {:?}, max_file_store: {max_file_store} }}\n",
            dir.join("store").display().to_string()
        ),
    )
    .expect("nats.conf");
    vec!["-c".into(), conf.display().to_string()]
}

/// The resident memory of process `pid` (KiB), from `/proc`; 0 if unknown.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
