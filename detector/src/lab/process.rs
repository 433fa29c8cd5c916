//! `detector` children in a lab namespace, spawned, waited for and stopped
//! one way for the tests, the demo and the bench: a command run to
//! completion within a timeout with its output captured
//! ([`DetectorCommand::output`], [`DetectorCommand::json`]), or left running
//! in the background, a flood for instance ([`DetectorCommand::spawn`]),
//! and stopped with a signal and a grace period. Other programs run in a
//! namespace the same way ([`Background::spawn_in`]: a traffic tool, see
//! [`super::hping3`]). No child outlives its handle: dropping one sends
//! SIGTERM, then SIGKILL, and reaps it.

use std::{
    ffi::{OsStr, OsString},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use thiserror::Error;

use super::{Lab, TGT_V4};

#[derive(Debug, Error)]
pub enum ProcessError {
    #[error("cannot start `{what}`: {source}")]
    Spawn { what: String, source: std::io::Error },
    #[error("waiting for `{what}`: {source}")]
    Wait { what: String, source: std::io::Error },
    #[error("`{what}` was still running after {after:?}: killed")]
    Timeout { what: String, after: Duration },
    #[error("`{what}` was interrupted: killed")]
    Cancelled { what: String },
    #[error("`{what}` failed ({status}): {stderr}")]
    Failed { what: String, status: ExitStatus, stderr: String },
    #[error("`{what}` printed no JSON ({source}): {stdout}")]
    Json { what: String, source: serde_json::Error, stdout: String },
}

/// How a child is tied to the process that starts it. The default (neither)
/// suits the tests; the demo, which a user may Ctrl-C or kill, asks for both.
#[derive(Clone, Copy, Debug, Default)]
pub struct Supervision {
    /// The child gets SIGTERM when the thread that spawned it ends
    /// (`PR_SET_PDEATHSIG`), so a parent killed with SIGKILL leaves no
    /// detector running. Spawn from a thread that outlives the child (the
    /// main thread): the signal follows the thread, not the process.
    pub die_with_parent: bool,
    /// A flag, set by a signal handler, that ends the harness's waits
    /// early: the child is killed and the wait fails with `Cancelled`.
    pub cancel: Option<&'static AtomicBool>,
}

impl Supervision {
    pub(super) fn cancelled(&self) -> bool {
        self.cancel.is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

/// How often waits look at the child (and the cancel flag).
const POLL: Duration = Duration::from_millis(5);

/// `detector ARGS` in a namespace: run to completion within a timeout, or
/// spawned into the background.
#[derive(Clone, Debug)]
pub struct DetectorCommand {
    bin: PathBuf,
    pub(super) ns: String,
    pub(super) args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    timeout: Duration,
    pub(super) supervision: Supervision,
}

impl DetectorCommand {
    /// A command expected to fail that runs on instead must not hang a
    /// test suite: after this long it is killed and the wait fails.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

    /// `bin` (the `detector` binary) in namespace `ns`, with no arguments yet.
    pub fn new(bin: impl Into<PathBuf>, ns: &str) -> DetectorCommand {
        DetectorCommand {
            bin: bin.into(),
            ns: ns.to_string(),
            args: Vec::new(),
            env: Vec::new(),
            timeout: Self::DEFAULT_TIMEOUT,
            supervision: Supervision::default(),
        }
    }

    /// `detector flood --iface <gen_if> ARGS` out of the lab's generator
    /// end; `--dst` is the target's address unless `args` name one.
    pub fn flood<S: AsRef<OsStr>>(bin: impl Into<PathBuf>, lab: &Lab, args: &[S]) -> DetectorCommand {
        let cmd = DetectorCommand::new(bin, &lab.gen_ns).args(["flood", "--iface", &lab.gen_if]);
        let has_dst = args.iter().any(|a| {
            let a = a.as_ref().to_string_lossy();
            a == "--dst" || a.starts_with("--dst=")
        });
        let cmd = if has_dst { cmd } else { cmd.args(["--dst", TGT_V4]) };
        cmd.args(args)
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn envs<K: AsRef<OsStr>, V: AsRef<OsStr>>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> Self {
        for (k, v) in vars {
            self = self.env(k, v);
        }
        self
    }

    /// How long [`output`](Self::output) and [`json`](Self::json) wait
    /// (default [`DEFAULT_TIMEOUT`](Self::DEFAULT_TIMEOUT)).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn supervise(mut self, supervision: Supervision) -> Self {
        self.supervision = supervision;
        self
    }

    /// `detector ARGS`, for messages.
    pub fn what(&self) -> String {
        std::iter::once("detector".into())
            .chain(self.args.iter().map(|a| a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The command, its stdio still to set: `bin ARGS` in the namespace
    /// (see [`Lab::command_in`]), tied to this process as asked.
    pub(super) fn command(&self) -> Command {
        let mut cmd = Lab::command_in(&self.ns, &self.bin);
        cmd.args(&self.args).envs(self.env.iter().map(|(k, v)| (k, v)));
        if self.supervision.die_with_parent {
            die_with_parent(&mut cmd);
        }
        cmd
    }

    /// Starts it in the background; stdin is empty, stdout and stderr are
    /// collected (on threads, so a long output never blocks the child).
    pub fn spawn(&self) -> Result<Background, ProcessError> {
        Background::spawn(self.command(), self.what(), self.supervision)
    }

    /// Runs it to completion, whatever its exit status; killed (and an
    /// error) after the timeout.
    pub fn output(&self) -> Result<Output, ProcessError> {
        self.spawn()?.wait(self.timeout)
    }

    /// Runs it to completion and parses its stdout; a non-zero exit is an
    /// error carrying its stderr. (Pass `--json` among the arguments.)
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ProcessError> {
        json_of(&self.what(), &self.output()?)
    }
}

/// Gives the child SIGTERM when the thread that spawns it ends (see
/// [`Supervision::die_with_parent`]). Public for harnesses that spawn a
/// daemon of their own (the bench's FastNetMon).
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    let parent = std::process::id();
    // SAFETY: prctl and getppid are async-signal-safe; nothing
    // allocates between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before the prctl took effect.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("the parent is gone"));
            }
            Ok(())
        });
    }
}

/// Pins a process or thread to one CPU: `pid` 0 is the calling thread.
/// For the lab's generators: a veth delivers a frame on the CPU that sent
/// it, so where the sender runs decides where the receiver's XDP program
/// and softirq run.
pub fn pin_to_cpu(pid: u32, cpu: usize) -> std::io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes within
    // it (cpu is checked against its size); the call reads it.
    let ret = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid as libc::pid_t, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `Err` with the command's stderr when it did not exit 0.
pub fn check(what: &str, out: &Output) -> Result<(), ProcessError> {
    if out.status.success() {
        return Ok(());
    }
    Err(ProcessError::Failed {
        what: what.to_string(),
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// The stdout of a command that exited 0, parsed as JSON.
pub fn json_of<T: serde::de::DeserializeOwned>(what: &str, out: &Output) -> Result<T, ProcessError> {
    check(what, out)?;
    serde_json::from_slice(&out.stdout).map_err(|source| ProcessError::Json {
        what: what.to_string(),
        source,
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
    })
}

fn drain<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> Option<JoinHandle<Vec<u8>>> {
    let mut pipe = pipe?;
    Some(std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = pipe.read_to_end(&mut v);
        v
    }))
}

/// A child running in the background. Dropped while it runs,
/// it gets SIGTERM, then SIGKILL after two seconds, and is reaped.
pub struct Background {
    child: Option<Child>,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    what: String,
    supervision: Supervision,
}

impl Background {
    const DROP_GRACE: Duration = Duration::from_secs(2);

    /// Starts `cmd` (any program; [`Lab::command_in`] puts one in a
    /// namespace) with an empty stdin, its stdout and stderr collected on
    /// threads. `what` names it in errors.
    pub fn spawn(mut cmd: Command, what: String, supervision: Supervision) -> Result<Background, ProcessError> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ProcessError::Spawn { what: what.clone(), source })?;
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        Ok(Background { child: Some(child), stdout, stderr, what, supervision })
    }

    /// `program ARGS` in namespace `ns`, in the background (see
    /// [`Lab::command_in`]: the pid is the program's own, so signals reach
    /// it), tied to this process as `supervision` asks.
    pub fn spawn_in<S: AsRef<OsStr>>(
        ns: &str,
        program: &std::path::Path,
        args: &[S],
        supervision: Supervision,
    ) -> Result<Background, ProcessError> {
        let mut cmd = Lab::command_in(ns, program);
        cmd.args(args);
        if supervision.die_with_parent {
            die_with_parent(&mut cmd);
        }
        let what = std::iter::once(program.to_string_lossy())
            .chain(args.iter().map(|a| a.as_ref().to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ");
        Background::spawn(cmd, what, supervision)
    }

    /// Its pid, while it has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    /// Its output once it has exited (whatever its status); `None` while
    /// it runs. After `Some`, the child is gone and later calls fail.
    pub fn try_finish(&mut self) -> Result<Option<Output>, ProcessError> {
        let wait_err = |source| ProcessError::Wait { what: self.what.clone(), source };
        let child = self.child.as_mut().ok_or_else(|| wait_err(std::io::Error::other("already finished")))?;
        let Some(status) = child.try_wait().map_err(wait_err)? else { return Ok(None) };
        self.child = None;
        // The child has exited, so both pipes reach their end.
        let collect = |h: Option<JoinHandle<Vec<u8>>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
        Ok(Some(Output { status, stdout: collect(self.stdout.take()), stderr: collect(self.stderr.take()) }))
    }

    /// Waits for it to exit; after `timeout` (or on cancel) it is killed
    /// and the wait fails.
    pub fn wait(mut self, timeout: Duration) -> Result<Output, ProcessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(out) = self.try_finish()? {
                return Ok(out);
            }
            if self.supervision.cancelled() {
                kill(&mut self.child);
                return Err(ProcessError::Cancelled { what: self.what.clone() });
            }
            if Instant::now() > deadline {
                kill(&mut self.child);
                return Err(ProcessError::Timeout { what: self.what.clone(), after: timeout });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Sends `sig` (a flood reports what it sent on SIGTERM) and waits
    /// `grace` for it to exit; then it is killed and the wait fails.
    pub fn stop(self, sig: i32, grace: Duration) -> Result<Output, ProcessError> {
        if let Some(pid) = self.pid() {
            // The child is not reaped yet, so the pid is still ours.
            unsafe { libc::kill(pid as i32, sig) };
        }
        self.wait(grace)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, libc::SIGTERM, Self::DROP_GRACE);
        }
    }
}

/// Kills and reaps the child in `slot`, if there is one.
pub(super) fn kill(slot: &mut Option<Child>) {
    if let Some(mut child) = slot.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Sends `sig` to `child`, waits up to `grace` for it to exit, then kills
/// and reaps it (`None`: it had to be killed).
pub(super) fn stop_child(child: &mut Child, sig: i32, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    // `Lab::command_in` execs the program itself: the pid is the program's,
    // and, not reaped yet, still ours.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_to_cpu_pins_the_calling_thread_and_refuses_a_cpu_out_of_range() {
        std::thread::spawn(|| {
            pin_to_cpu(0, 0).unwrap();
            // SAFETY: a zeroed cpu_set_t is a valid empty set, filled by the kernel.
            let set = unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                assert_eq!(libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set), 0);
                set
            };
            let on: Vec<usize> =
                (0..libc::CPU_SETSIZE as usize).filter(|c| unsafe { libc::CPU_ISSET(*c, &set) }).collect();
            assert_eq!(on, vec![0]);
            let e = pin_to_cpu(0, libc::CPU_SETSIZE as usize).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        })
        .join()
        .unwrap();
    }
}
