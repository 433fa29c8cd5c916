//! The processes the demo runs: `detector run` in the background,
//! `detector flood` in the background, and short `detector` commands; all
//! inside lab namespaces, none left behind. Ctrl-C (SIGINT), SIGTERM and
//! SIGHUP set a flag the waits check, so the demo unwinds and cleans up.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, ExitStatus, Output, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use detector::lab::Lab;

static STOP: AtomicBool = AtomicBool::new(false);

/// SIGINT, SIGTERM and SIGHUP ask the demo to stop (see [`check`]).
pub fn install_stop_handler() {
    extern "C" fn on_signal(_: libc::c_int) {
        STOP.store(true, Ordering::Relaxed);
    }
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; the struct is fully initialised.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

pub fn interrupted() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// `Err` once the demo was asked to stop.
pub fn check() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d`, waking early (with `Err`) when asked to stop.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check()?;
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(20)));
    }
    check()
}

/// Sends `sig` to `child`, waits up to `grace` for it to exit, then kills it.
fn stop_child(child: &mut Child, sig: i32, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    // `Lab::command_in` execs the program itself: the pid is the program's.
    // The child is not reaped yet, so the pid is still ours.
    unsafe { libc::kill(child.id() as i32, sig) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A command running `program` in namespace `ns` that gets SIGTERM if the
/// demo dies without cleaning up (SIGKILL): no detector outlives it. (The
/// lab it leaves is swept by the next `Lab::new()`.) Children are spawned
/// from the main thread, which lives as long as the demo.
fn command_in(ns: &str, program: &Path) -> std::process::Command {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = Lab::command_in(ns, program);
    let parent = std::process::id();
    // SAFETY: prctl and getppid are async-signal-safe; nothing allocates.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The demo died before the prctl took effect.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("the demo is gone"));
            }
            Ok(())
        });
    }
    cmd
}

/// `detector ARGS` inside namespace `ns`, to completion (at most 30 s).
pub fn detector(bin: &Path, ns: &str, args: &[&str], env: &[(&str, String)]) -> Result<Output> {
    let mut cmd = command_in(ns, bin);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
    // Read the pipes on threads, so a long output cannot block the child.
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if interrupted() || Instant::now() > deadline {
            stop_child(&mut child, libc::SIGKILL, Duration::from_secs(1));
            check()?;
            bail!("`detector {}` was still running after 30 s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok(Output { status, stdout, stderr })
}

fn drain<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut v);
        }
        v
    })
}

/// `detector ARGS --json`, parsed; `Err` with its stderr when it fails.
pub fn detector_json<T: serde::de::DeserializeOwned>(bin: &Path, ns: &str, args: &[&str]) -> Result<T> {
    let mut full = args.to_vec();
    full.push("--json");
    let out = detector(bin, ns, &full, &[])?;
    if !out.status.success() {
        bail!("`detector {}` failed: {}", full.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("reading the JSON of `detector {}`", full.join(" ")))
}

/// A `detector run` in the background; stopped (SIGTERM, then SIGKILL
/// after 10 s) on drop.
pub struct Controller {
    child: Option<Child>,
    pub ns: String,
    pub log: PathBuf,
}

impl Controller {
    pub fn spawn(ns: &str, bin: &Path, args: &[String], env: &[(&str, String)], log: PathBuf) -> Result<Controller> {
        let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = command_in(ns, bin);
        cmd.arg("run").args(args).stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("starting {} run", bin.display()))?;
        Ok(Controller { child: Some(child), ns: ns.to_string(), log })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Waits until it serves /healthz on 127.0.0.1:`port`.
    pub fn wait_ready(&mut self, port: u16) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            check()?;
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("`detector run` exited at start ({status})");
                }
            }
            if detector::lab::http_get(&self.ns, port, "/healthz", None).is_ok_and(|(code, _)| code == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("`detector run` did not answer /healthz within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, and the exit status (`None`: it had to be killed).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        stop_child(&mut child, libc::SIGTERM, Duration::from_secs(10))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `detector flood` in the background; killed on drop.
pub struct Flood {
    child: Option<Child>,
}

impl Flood {
    pub fn spawn(ns: &str, bin: &Path, args: &[String]) -> Result<Flood> {
        let child = command_in(ns, bin)
            .arg("flood")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} flood", bin.display()))?;
        Ok(Flood { child: Some(child) })
    }

    /// `Some(Ok(report line))` once it has ended well, `Some(Err)` if it
    /// failed, `None` while it runs. Its output is one line: the pipes
    /// cannot fill.
    pub fn finished(&mut self) -> Option<Result<String>> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => {
                let mut child = self.child.take()?;
                let (mut out, mut err) = (String::new(), String::new());
                if let Some(mut p) = child.stdout.take() {
                    let _ = p.read_to_string(&mut out);
                }
                if let Some(mut p) = child.stderr.take() {
                    let _ = p.read_to_string(&mut err);
                }
                Some(if status.success() {
                    Ok(out.trim().to_string())
                } else {
                    Err(anyhow::anyhow!("`detector flood` failed ({status}): {}", err.trim()))
                })
            }
            Err(e) => Some(Err(e.into())),
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, libc::SIGTERM, Duration::from_secs(2));
        }
    }
}
