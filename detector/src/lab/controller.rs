//! A controller under test: `detector run` as a child in a lab namespace,
//! started and waited for until it serves `/healthz`, asked over HTTP from
//! inside the namespace, stopped with a signal and a grace period. The
//! tests, the demo and the bench each drive theirs through this one.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use detector::lab::{controller::Controller, Lab};
//! let lab = Lab::new()?;
//! let mut ctl = Controller::builder("target/release/detector", &lab).args(["--node", "lab"]).start()?;
//! let metrics = ctl.metrics()?;
//! let status = ctl.stop()?;
//! # Ok(()) }
//! ```

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Child, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use thiserror::Error;

use super::{
    http_get,
    process::{kill, stop_child, DetectorCommand, Supervision},
    Lab,
};

#[derive(Debug, Error)]
pub enum ControllerError {
    #[error("--metrics-addr {0} names no port")]
    Addr(String),
    #[error("cannot create {path}: {source}")]
    Files { path: PathBuf, source: std::io::Error },
    #[error("cannot start `detector run`: {0}")]
    Spawn(std::io::Error),
    #[error("waiting for `detector run`: {0}")]
    Wait(std::io::Error),
    #[error("`detector run` exited early ({status}); its log ends:\n{log_tail}")]
    Exited { status: ExitStatus, log_tail: String },
    #[error("`detector run` did not answer /healthz within {after:?}; its log ends:\n{log_tail}")]
    NotReady { after: Duration, log_tail: String },
    #[error("interrupted while `detector run` started: killed")]
    Cancelled,
    #[error("GET {path}: {source}")]
    Http { path: String, source: std::io::Error },
    #[error("GET {path}: HTTP {code}: {body}")]
    Status { path: String, code: u16, body: String },
    #[error("`detector run` did not exit within {grace:?} of signal {sig}: killed; its log ends:\n{log_tail}")]
    Hung { sig: i32, grace: Duration, log_tail: String },
    #[error("`detector run` was already stopped")]
    Stopped,
}

fn files(path: &Path) -> impl FnOnce(std::io::Error) -> ControllerError + '_ {
    move |source| ControllerError::Files { path: path.to_path_buf(), source }
}

/// How many lines of the log an error carries.
const TAIL: usize = 40;

/// What to start; [`Controller::builder`] fills in the lab's defaults.
#[must_use]
pub struct ControllerBuilder {
    /// The binary, the namespace, the arguments after the harness's own,
    /// the environment, the supervision.
    cmd: DetectorCommand,
    iface: String,
    metrics_addr: String,
    state_dir: PathBuf,
    log: PathBuf,
    ready_timeout: Duration,
}

impl ControllerBuilder {
    /// The namespace to run in (default: the lab's target).
    pub fn ns(mut self, ns: &str) -> Self {
        self.cmd.ns = ns.to_string();
        self
    }

    /// The `--iface` it watches (default: the lab's target end); more can
    /// follow among the arguments.
    pub fn iface(mut self, iface: &str) -> Self {
        self.iface = iface.to_string();
        self
    }

    /// `--metrics-addr` (default `127.0.0.1:9477`). Its port is where the
    /// harness asks, on 127.0.0.1 inside the namespace.
    pub fn metrics_addr(mut self, addr: &str) -> Self {
        self.metrics_addr = addr.to_string();
        self
    }

    /// An argument after the harness's own (`run --iface IF --metrics-addr
    /// ADDR --state-dir DIR`).
    pub fn arg(self, arg: impl AsRef<OsStr>) -> Self {
        Self { cmd: self.cmd.arg(arg), ..self }
    }

    /// Arguments after the harness's own.
    pub fn args<S: AsRef<OsStr>>(self, args: impl IntoIterator<Item = S>) -> Self {
        Self { cmd: self.cmd.args(args), ..self }
    }

    pub fn env(self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        Self { cmd: self.cmd.env(key, value), ..self }
    }

    pub fn envs<K: AsRef<OsStr>, V: AsRef<OsStr>>(self, vars: impl IntoIterator<Item = (K, V)>) -> Self {
        Self { cmd: self.cmd.envs(vars), ..self }
    }

    pub fn supervise(self, supervision: Supervision) -> Self {
        Self { cmd: self.cmd.supervise(supervision), ..self }
    }

    /// `--state-dir` (default: `state` in the lab's directory), created if
    /// missing.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = dir.into();
        self
    }

    /// Where its stdout and stderr go (default: `run.log` in the lab's
    /// directory). The file is appended to: controllers started one after
    /// another in a lab leave one log, in order.
    pub fn log(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = path.into();
        self
    }

    /// How long it may take to answer `/healthz` (default 20 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Starts it and waits until it serves `/healthz` (200, or 401 behind a
    /// token). If it exits or never answers, it is stopped and the error
    /// carries the end of its log.
    pub fn start(self) -> Result<Controller, ControllerError> {
        let port = self
            .metrics_addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .ok_or_else(|| ControllerError::Addr(self.metrics_addr.clone()))?;
        std::fs::create_dir_all(&self.state_dir).map_err(files(&self.state_dir))?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).map_err(files(&self.log))?;
        let log2 = log.try_clone().map_err(files(&self.log))?;
        let mut cmd = self.cmd;
        let extra = std::mem::take(&mut cmd.args);
        let cmd = cmd
            .args(["run", "--iface", &self.iface, "--metrics-addr", &self.metrics_addr])
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(extra);
        let child =
            cmd.command().stdin(Stdio::null()).stdout(log).stderr(log2).spawn().map_err(ControllerError::Spawn)?;
        let mut c = Controller {
            child: Some(child),
            ns: cmd.ns,
            log: self.log,
            state_dir: self.state_dir,
            port,
            supervision: cmd.supervision,
        };
        c.wait_ready(self.ready_timeout)?;
        Ok(c)
    }
}

/// A `detector run` child. Dropped while it runs, it gets SIGTERM, then
/// SIGKILL after 10 s, and is reaped.
pub struct Controller {
    /// The process; `None` once stopped. Public so a test can signal it
    /// (SIGHUP) or watch it.
    pub child: Option<Child>,
    pub ns: String,
    /// Its stdout and stderr.
    pub log: PathBuf,
    pub state_dir: PathBuf,
    port: u16,
    supervision: Supervision,
}

impl Controller {
    /// The grace period of [`stop`](Self::stop) and of drop.
    pub const STOP_GRACE: Duration = Duration::from_secs(10);

    /// `bin run` in the lab's target namespace, on its target end, with a
    /// state directory and a log in the lab's directory.
    pub fn builder(bin: impl Into<PathBuf>, lab: &Lab) -> ControllerBuilder {
        Controller::builder_in(bin, &lab.tgt_ns, &lab.tgt_if, &lab.dir)
    }

    /// `bin run` in namespace `ns` on `iface`, with a state directory and
    /// a log in `dir` (another lab's: the router lab's router, say).
    pub fn builder_in(bin: impl Into<PathBuf>, ns: &str, iface: &str, dir: &std::path::Path) -> ControllerBuilder {
        ControllerBuilder {
            cmd: DetectorCommand::new(bin, ns),
            iface: iface.to_string(),
            metrics_addr: "127.0.0.1:9477".into(),
            state_dir: dir.join("state"),
            log: dir.join("run.log"),
            ready_timeout: Duration::from_secs(20),
        }
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), ControllerError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Err(e) = self.check_alive() {
                kill(&mut self.child);
                return Err(e);
            }
            // 401: up, behind a token.
            if self.get("/healthz").is_ok_and(|(code, _)| code == 200 || code == 401) {
                return Ok(());
            }
            if self.supervision.cancelled() {
                kill(&mut self.child);
                return Err(ControllerError::Cancelled);
            }
            if Instant::now() > deadline {
                kill(&mut self.child);
                return Err(ControllerError::NotReady { after: timeout, log_tail: self.log_tail(TAIL) });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its pid, until it is stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Err` once it has exited (or was stopped).
    pub fn check_alive(&mut self) -> Result<(), ControllerError> {
        let child = self.child.as_mut().ok_or(ControllerError::Stopped)?;
        match child.try_wait().map_err(ControllerError::Wait)? {
            None => Ok(()),
            Some(status) => Err(ControllerError::Exited { status, log_tail: self.log_tail(TAIL) }),
        }
    }

    /// GET `path` from its listener, inside its namespace: (status, body).
    pub fn get(&self, path: &str) -> Result<(u16, String), ControllerError> {
        http_get(&self.ns, self.port, path, None)
            .map_err(|source| ControllerError::Http { path: path.to_string(), source })
    }

    /// The body of GET `path`; anything but 200 is an error.
    pub fn get_ok(&self, path: &str) -> Result<String, ControllerError> {
        match self.get(path)? {
            (200, body) => Ok(body),
            (code, body) => Err(ControllerError::Status { path: path.to_string(), code, body }),
        }
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> Result<String, ControllerError> {
        self.get_ok("/metrics")
    }

    /// Its whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Sends `sig` and returns the exit status; one still running after
    /// `grace` is killed and reported as hung.
    pub fn stop_with(&mut self, sig: i32, grace: Duration) -> Result<ExitStatus, ControllerError> {
        let mut child = self.child.take().ok_or(ControllerError::Stopped)?;
        stop_child(&mut child, sig, grace).ok_or_else(|| ControllerError::Hung {
            sig,
            grace,
            log_tail: self.log_tail(TAIL),
        })
    }

    /// SIGTERM, within [`STOP_GRACE`](Self::STOP_GRACE).
    pub fn stop(&mut self) -> Result<ExitStatus, ControllerError> {
        self.stop_with(libc::SIGTERM, Self::STOP_GRACE)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, libc::SIGTERM, Self::STOP_GRACE);
        }
    }
}
