//! The `gobgpd` child: started with the configuration file the detector
//! wrote, its log forwarded through `tracing`, restarted with a growing
//! backoff when it exits, stopped on [`Daemon::stop`] or drop.
//!
//! The daemon holds the announcements in its own memory; a restart comes
//! back empty, which the reconciliation repairs (see [`super::plan`]):
//! each start bumps [`Daemon::starts`], which the caller watches to
//! reconcile at once rather than at its next tick.
//!
//! Two lifetimes ([`Lifetime`]):
//!
//! - [`Lifetime::Owned`] (the adapter test's): the child gets SIGTERM if
//!   the thread that started it dies (`PR_SET_PDEATHSIG`), and its log goes
//!   through `tracing`. Start it from a thread that outlives it.
//! - [`Lifetime::Persistent`] (`detector run`'s): the daemon outlives the
//!   controller, as the XDP rules do. It runs in a session of its own (a
//!   Ctrl-C to the controller's terminal does not reach it), writes its log
//!   to `<state_dir>/gobgpd.log` (a pipe would kill it with the
//!   controller), and its pid, API port and a hash of how it was started
//!   are recorded in `<state_dir>/gobgpd.json`. The next start **adopts**
//!   a recorded daemon that still runs with the same binary, configuration
//!   and API port (its sessions and paths stay up: nothing flaps), and
//!   replaces one started differently. An adopted daemon is not our child:
//!   the supervisor watches its pid, and starts a new one when it is gone.
//!   [`Daemon::release`] leaves it running; [`Daemon::stop`] ends it.
//!
//! The child runs in the network namespace of the thread that spawns it:
//! the lab runs the supervisor on a current-thread runtime inside the
//! speaker's namespace.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use thiserror::Error;
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
    sync::watch,
    task::JoinHandle,
};

/// The first wait before a restart, doubled after each quick exit.
pub const MIN_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A run this long resets the backoff: the daemon was working.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
/// From SIGTERM to SIGKILL when stopping it.
const STOP_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error(
        "gobgpd is not installed (Debian package gobgpd; `cargo xtask test` installs it for the tests), or set \
         bgp.gobgpd.path"
    )]
    NotInstalled,
    #[error("bgp.gobgpd.path: {0} is not a file")]
    NotAFile(PathBuf),
    #[error("cannot write gobgpd's configuration {path}: {source}")]
    Config { path: PathBuf, source: std::io::Error },
}

/// Whether the daemon outlives the detector (see the [module](self)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lifetime {
    Owned,
    /// Recorded in, and logging to, this state directory.
    Persistent {
        state_dir: PathBuf,
    },
}

/// Where a persistent daemon is recorded.
pub const RECORD_FILE: &str = "gobgpd.json";
/// Where a persistent daemon logs.
pub const LOG_FILE: &str = "gobgpd.log";

/// What `<state_dir>/gobgpd.json` holds: enough to find the daemon again
/// and to tell whether it runs as this start would run it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub pid: u32,
    pub api_port: u16,
    /// SHA-256 of the binary's path, the configuration file's text and the
    /// API port.
    pub fingerprint: String,
}

impl Record {
    pub fn load(state_dir: &Path) -> Option<Record> {
        let bytes = std::fs::read(state_dir.join(RECORD_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// Ends the daemon recorded in `state_dir`, if it still runs (SIGTERM,
/// then SIGKILL after a grace), and forgets it: `detector detach`, and a
/// daemon started with another configuration. Returns its pid.
pub fn end_recorded(state_dir: &Path) -> Option<u32> {
    let rec = Record::load(state_dir)?;
    let _ = std::fs::remove_file(state_dir.join(RECORD_FILE));
    if !is_gobgpd(rec.pid) {
        return None;
    }
    // SAFETY: a plain signal to a pid checked to be a gobgpd.
    unsafe { libc::kill(rec.pid as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_GRACE;
    while is_gobgpd(rec.pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if is_gobgpd(rec.pid) {
        // SAFETY: as above.
        unsafe { libc::kill(rec.pid as libc::pid_t, libc::SIGKILL) };
    }
    Some(rec.pid)
}

/// Whether `pid` is a live (not zombie) process whose command is gobgpd.
pub(crate) fn is_gobgpd(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // `pid (comm) S ...`: the state follows the last parenthesis.
    let state = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next());
    if matches!(state, Some("Z") | Some("X") | None) {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|c| c.split(|b| *b == 0).next().map(|a| a.ends_with(b"gobgpd")))
        .unwrap_or(false)
}

/// How to run it.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub binary: PathBuf,
    /// Its TOML configuration ([`super::gobgp::config_toml`]).
    pub config_file: PathBuf,
    /// Its gRPC API, on 127.0.0.1.
    pub api_port: u16,
    pub lifetime: Lifetime,
}

impl DaemonConfig {
    /// Writes `toml` to `<state_dir>/gobgpd.toml` and finds the binary: the
    /// one configured, or `gobgpd` on PATH or in the sbin directories.
    pub fn prepare(
        state_dir: &Path,
        toml: &str,
        binary: Option<&Path>,
        api_port: u16,
    ) -> Result<DaemonConfig, DaemonError> {
        let binary = match binary {
            Some(b) if b.is_file() => b.to_path_buf(),
            Some(b) => return Err(DaemonError::NotAFile(b.to_path_buf())),
            None => find_gobgpd().ok_or(DaemonError::NotInstalled)?,
        };
        let config_file = state_dir.join("gobgpd.toml");
        std::fs::write(&config_file, toml)
            .map_err(|source| DaemonError::Config { path: config_file.clone(), source })?;
        Ok(DaemonConfig { binary, config_file, api_port, lifetime: Lifetime::Owned })
    }

    /// The same daemon, outliving the detector, recorded in the directory
    /// its configuration file is in.
    pub fn persistent(mut self) -> DaemonConfig {
        let dir = self.config_file.parent().map(Path::to_path_buf).unwrap_or_default();
        self.lifetime = Lifetime::Persistent { state_dir: dir };
        self
    }

    fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.binary.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(std::fs::read(&self.config_file).unwrap_or_default());
        h.update(self.api_port.to_be_bytes());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A persistent daemon left by an earlier run: its pid if it runs as
    /// this configuration would run it (adopt it); otherwise it is ended.
    fn adoptable(&self) -> Option<u32> {
        let Lifetime::Persistent { state_dir } = &self.lifetime else { return None };
        let rec = Record::load(state_dir)?;
        if !is_gobgpd(rec.pid) {
            return None;
        }
        if rec.fingerprint == self.fingerprint() && rec.api_port == self.api_port {
            return Some(rec.pid);
        }
        tracing::info!(
            pid = rec.pid,
            "the gobgpd an earlier run left was started with another configuration; restarting it"
        );
        end_recorded(state_dir);
        None
    }

    fn record(&self, pid: u32) {
        if let Lifetime::Persistent { state_dir } = &self.lifetime {
            let rec = Record { pid, api_port: self.api_port, fingerprint: self.fingerprint() };
            if let Err(e) = crate::statedir::write_json(state_dir, RECORD_FILE, &rec) {
                tracing::error!("cannot record gobgpd's pid: {e}; the next start will not adopt it");
            }
        }
    }

    fn forget(&self) {
        if let Lifetime::Persistent { state_dir } = &self.lifetime {
            let _ = std::fs::remove_file(state_dir.join(RECORD_FILE));
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("-f")
            .arg(&self.config_file)
            .args(["-t", "toml", "-p", "-l", "info", "--pprof-disable"])
            .arg(format!("--api-hosts=127.0.0.1:{}", self.api_port))
            .stdin(Stdio::null());
        match &self.lifetime {
            Lifetime::Owned => {
                c.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
                // SAFETY: prctl is async-signal-safe and touches no memory of ours.
                unsafe {
                    c.pre_exec(|| {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            }
            Lifetime::Persistent { state_dir } => detached(c.as_std_mut(), &state_dir.join(LOG_FILE)),
        }
        c
    }
}

/// Makes `c` a process that outlives its starter: a session of its own (a
/// Ctrl-C to the starter's terminal does not reach it) and its output
/// appended to `log` (a pipe would end it with the starter). gobgpd and
/// the TTL keeper.
pub(crate) fn detached(c: &mut std::process::Command, log: &Path) {
    use std::os::unix::process::CommandExt as _;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log);
    match log.and_then(|l| Ok((l.try_clone()?, l))) {
        Ok((out, err)) => c.stdout(out).stderr(err),
        Err(_) => c.stdout(Stdio::null()).stderr(Stdio::null()),
    };
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        c.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `gobgpd` on PATH, or in the sbin directories a non-root PATH may lack.
pub fn find_gobgpd() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join("gobgpd"))
        .find(|p| p.is_file())
}

/// What the supervisor tells the owner.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// How many times the daemon was started or adopted (1 after the
    /// first).
    pub starts: u64,
    /// Starts after it exited (`detector_bgp_daemon_restarts_total`).
    pub restarts: u64,
    /// The running daemon's pid.
    pub pid: Option<u32>,
    /// The running daemon was left by an earlier run, and adopted.
    pub adopted: bool,
}

/// The supervised daemon. Needs a tokio runtime (with the process and
/// time drivers).
pub struct Daemon {
    persistent: bool,
    stop: watch::Sender<bool>,
    status: watch::Receiver<Status>,
    task: Option<JoinHandle<()>>,
}

impl Daemon {
    /// Starts it, and restarts it whenever it exits, until stopped.
    pub fn spawn(cfg: DaemonConfig) -> Daemon {
        let (stop, stop_rx) = watch::channel(false);
        let (status_tx, status) = watch::channel(Status::default());
        let persistent = matches!(cfg.lifetime, Lifetime::Persistent { .. });
        let task = tokio::spawn(supervise(Arc::new(cfg), stop_rx, status_tx));
        Daemon { persistent, stop, status, task: Some(task) }
    }

    pub fn status(&self) -> Status {
        *self.status.borrow()
    }

    /// Changes whenever the daemon starts or exits: wait on it to
    /// reconcile after a restart.
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Stops the daemon (SIGTERM, then SIGKILL after a grace period) and
    /// the supervisor.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// Stops supervising, and leaves a persistent daemon running (and
    /// announcing) for the next start to adopt. An owned one is stopped.
    pub async fn release(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A persistent daemon is left running (see [`Daemon::release`]).
        if !self.persistent {
            let _ = self.stop.send(true);
        }
        // Aborting drops the child; an owned one's `kill_on_drop` kills it.
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn supervise(cfg: Arc<DaemonConfig>, mut stop: watch::Receiver<bool>, status: watch::Sender<Status>) {
    let mut backoff = MIN_BACKOFF;
    if let Some(pid) = cfg.adoptable() {
        status.send_modify(|s| {
            s.starts += 1;
            s.pid = Some(pid);
            s.adopted = true;
        });
        tracing::info!(pid, api_port = cfg.api_port, "adopted the gobgpd an earlier run left running");
        let gone = async {
            while is_gobgpd(pid) {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        };
        tokio::select! {
            _ = gone => {
                status.send_modify(|s| { s.pid = None; s.adopted = false; });
                tracing::warn!(pid, "the adopted gobgpd exited; starting a new one");
            }
            _ = stopped(&mut stop) => {
                if let Lifetime::Persistent { state_dir } = &cfg.lifetime {
                    end_recorded(state_dir);
                }
                status.send_modify(|s| s.pid = None);
                return;
            }
        }
    }
    loop {
        let started = Instant::now();
        match cfg.command().spawn() {
            Err(e) => tracing::error!(binary = %cfg.binary.display(), "cannot start gobgpd: {e}"),
            Ok(mut child) => {
                let pid = child.id();
                status.send_modify(|s| {
                    if s.starts > 0 {
                        s.restarts += 1;
                    }
                    s.starts += 1;
                    s.pid = pid;
                    s.adopted = false;
                });
                if let Some(pid) = pid {
                    cfg.record(pid);
                }
                tracing::info!(pid, api_port = cfg.api_port, "gobgpd started");
                forward_logs(&mut child);
                tokio::select! {
                    exit = child.wait() => {
                        status.send_modify(|s| s.pid = None);
                        match exit {
                            Ok(st) => tracing::warn!(pid, "gobgpd exited ({st}); restarting it in {backoff:?}"),
                            Err(e) => tracing::warn!(pid, "waiting for gobgpd: {e}; restarting it in {backoff:?}"),
                        }
                    }
                    _ = stopped(&mut stop) => {
                        terminate(child).await;
                        cfg.forget();
                        status.send_modify(|s| s.pid = None);
                        return;
                    }
                }
            }
        }
        if started.elapsed() >= HEALTHY_RUN {
            backoff = MIN_BACKOFF;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped(&mut stop) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Resolves once a stop is asked for (or the owner is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, not held across the
    // caller's awaits.
    let _ = stop.wait_for(|s| *s).await.map(drop);
}

/// SIGTERM, a grace period, then SIGKILL; reaped either way.
async fn terminate(mut child: Child) {
    if let Some(pid) = child.id() {
        // SAFETY: signals our own child, not yet reaped (its pid is ours).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
            tracing::info!(pid, "gobgpd stopped");
            return;
        }
    }
    let _ = child.kill().await;
}

/// Each line gobgpd prints (logrus, plain: `time=... level=info msg=...`)
/// as a `tracing` event of target `gobgpd`, at its level.
fn forward_logs(child: &mut Child) {
    fn pump<R: tokio::io::AsyncRead + Unpin + Send + 'static>(r: R) {
        tokio::spawn(async move {
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log_line(&line);
            }
        });
    }
    if let Some(out) = child.stdout.take() {
        pump(out);
    }
    if let Some(err) = child.stderr.take() {
        pump(err);
    }
}

fn log_line(line: &str) {
    let level = line.split_whitespace().find_map(|w| w.strip_prefix("level=")).unwrap_or("info");
    // The time is the daemon's; ours is on the event.
    let text = match line.strip_prefix("time=\"") {
        Some(rest) => rest.split_once("\" ").map(|(_, r)| r).unwrap_or(rest),
        None => line,
    };
    match level {
        "panic" | "fatal" | "error" => tracing::error!(target: "gobgpd", "{text}"),
        "warning" | "warn" => tracing::warn!(target: "gobgpd", "{text}"),
        "debug" => tracing::debug!(target: "gobgpd", "{text}"),
        "trace" => tracing::trace!(target: "gobgpd", "{text}"),
        _ => tracing::info!(target: "gobgpd", "{text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_is_named() {
        let dir = std::env::temp_dir();
        let e = DaemonConfig::prepare(&dir, "", Some(Path::new("/nonexistent/gobgpd")), 50051).unwrap_err();
        assert_eq!(e.to_string(), "bgp.gobgpd.path: /nonexistent/gobgpd is not a file");
    }

    /// A daemon that exits at once is restarted, with a growing wait, and
    /// stopping ends it all.
    #[tokio::test(flavor = "current_thread")]
    async fn an_exiting_daemon_is_restarted_until_stopped() {
        let dir = std::env::temp_dir().join(format!("detector-bgp-daemon-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // `false` ignores its arguments and exits 1: a daemon that dies.
        let cfg = DaemonConfig::prepare(&dir, "", Some(Path::new("/bin/false")), 50051).unwrap();
        let d = Daemon::spawn(cfg);
        let mut w = d.watch();
        tokio::time::timeout(Duration::from_secs(5), w.wait_for(|s| s.starts >= 3)).await.unwrap().unwrap();
        d.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn log_lines_lose_the_daemon_time() {
        // Only checks it does not panic on odd input; the level routing is
        // by match.
        log_line("time=\"2024-01-01T00:00:00Z\" level=info msg=\"Add a peer configuration\" Key=192.0.2.2");
        log_line("time=\"unterminated");
        log_line("");
    }
}
