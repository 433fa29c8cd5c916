//! Shared by the kernel tests: the root check, a `detector run` child in a
//! lab namespace, HTTP from inside a namespace, and metric parsing.
#![allow(dead_code)]

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

pub use detector::lab::Lab;

/// True when the kernel tests can run. Without root they skip with a
/// message, except under `CI=true`, where skipping would hide them.
pub fn have_root(test: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false);
    if root {
        return true;
    }
    let msg = format!("{test}: needs root (CAP_BPF, CAP_NET_ADMIN, network namespaces)");
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{msg}; CI=true, so it may not be skipped");
    }
    eprintln!("SKIPPED {msg}");
    false
}

macro_rules! require_root {
    () => {
        if !common::have_root(module_path!()) {
            return;
        }
    };
}
pub(crate) use require_root;

pub fn detector_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_detector"))
}

/// Runs `detector ARGS` inside namespace `ns` to completion. One that is
/// still running after a minute is killed and the test fails: a command
/// expected to fail that runs on instead must not hang the suite.
pub fn detector_in(ns: &str, args: &[&str]) -> Output {
    let child = Lab::command_in(ns, &detector_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running detector");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.expect("waiting for detector"),
        Err(_) => {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("`detector {}` was still running after 60 s", args.join(" "));
        }
    }
}

/// `detector flood ARGS` out of the lab's generator end, in the background;
/// `--dst` defaults to the target's address.
pub fn flood_in_background(lab: &Lab, args: &[&str]) -> std::thread::JoinHandle<Output> {
    let mut full: Vec<String> = ["flood", "--iface", &lab.gen_if].iter().map(|s| s.to_string()).collect();
    if !args.contains(&"--dst") {
        full.extend(["--dst".to_string(), detector::lab::TGT_V4.to_string()]);
    }
    full.extend(args.iter().map(|s| s.to_string()));
    let ns = lab.gen_ns.clone();
    std::thread::spawn(move || detector_in(&ns, &full.iter().map(String::as_str).collect::<Vec<_>>()))
}

/// A `detector run` child; SIGTERM and reaped on drop.
pub struct Controller {
    pub child: Option<Child>,
    pub ns: String,
    pub log: PathBuf,
    /// Its state directory (incident history, baselines).
    pub state_dir: PathBuf,
}

/// A state directory in the lab's scratch directory (removed with the lab);
/// tests never touch /var/lib/detector.
pub fn state_dir(lab: &Lab) -> PathBuf {
    let d = lab.dir.join("state");
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub const METRICS_PORT: u16 = 9477;

impl Controller {
    /// Starts `detector run --iface <tgt_if> EXTRA` in the target namespace
    /// and waits until it serves /healthz.
    pub fn start(lab: &Lab, extra: &[&str]) -> Controller {
        Self::start_with_addr(lab, &format!("127.0.0.1:{METRICS_PORT}"), extra)
    }

    /// As [`Controller::start`], watching `iface` instead.
    pub fn start_on(lab: &Lab, iface: &str, extra: &[&str]) -> Controller {
        Self::spawn(lab, iface, &format!("127.0.0.1:{METRICS_PORT}"), extra)
    }

    /// As [`Controller::start`], listening on `addr` (on port 9477).
    pub fn start_with_addr(lab: &Lab, addr: &str, extra: &[&str]) -> Controller {
        Self::spawn(lab, &lab.tgt_if, addr, extra)
    }

    /// As [`Controller::start`], with these environment variables set.
    pub fn start_with_env(lab: &Lab, extra: &[&str], env: &[(&str, &str)]) -> Controller {
        Self::spawn_env(lab, &lab.tgt_if, &format!("127.0.0.1:{METRICS_PORT}"), extra, env)
    }

    fn spawn(lab: &Lab, iface: &str, addr: &str, extra: &[&str]) -> Controller {
        Self::spawn_env(lab, iface, addr, extra, &[])
    }

    fn spawn_env(lab: &Lab, iface: &str, addr: &str, extra: &[&str], env: &[(&str, &str)]) -> Controller {
        let log = lab.dir.join("run.log");
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        let state_dir = state_dir(lab);
        let has = |flag: &str| extra.contains(&flag);
        let mut cmd = Lab::command_in(&lab.tgt_ns, &detector_bin());
        cmd.args(["run", "--iface", iface, "--metrics-addr", addr]);
        if !has("--interval") {
            cmd.args(["--interval", "50ms"]);
        }
        if !has("--node") {
            cmd.args(["--node", "lab"]);
        }
        let child = cmd
            .arg("--state-dir")
            .arg(&state_dir)
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawning detector run");
        let mut c = Controller { child: Some(child), ns: lab.tgt_ns.clone(), log, state_dir };
        c.wait_ready();
        c
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("detector run exited early ({status}):\n{}", self.log_text());
            }
            // 401: up, behind a token.
            if http_get(&self.ns, "/healthz").is_ok_and(|(code, _)| code == 200 || code == 401) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("detector run never became ready:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        let (code, body) = http_get(&self.ns, "/metrics").expect("GET /metrics");
        assert_eq!(code, 200, "{body}");
        body
    }

    /// Polls /metrics until `cond` holds or 10 s pass; returns the last text.
    pub fn metrics_until(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let m = self.metrics();
            if cond(&m) {
                return m;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; last /metrics:\n{m}\nlog:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `sig` and waits for the exit status. A controller that has not
    /// exited after 10 s is killed and reported as hung (a test must never
    /// hang CI).
    pub fn stop_with(&mut self, sig: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // `Lab::command_in` execs the detector: the child pid is the detector.
        unsafe { libc::kill(child.id() as i32, sig) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("detector run did not exit within 10 s of signal {sig}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    // Never hang; the tests that care stop it explicitly.
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
        }
    }
}

/// GET `path` from the controller in namespace `ns`; (status, body).
pub fn http_get(ns: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_get_with(ns, METRICS_PORT, path, None)
}

pub fn http_get_with(ns: &str, port: u16, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    detector::lab::http_get(ns, port, path, token)
}

/// The value of the sample `name{labels}` in a metrics text, 0 if absent.
pub fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.trim().parse().expect("a number"))
        .unwrap_or(0.0)
}

pub fn packets(text: &str, iface: &str, class: &str) -> u64 {
    sample(text, &format!("detector_packets_total{{iface=\"{iface}\",class=\"{class}\"}}")) as u64
}

/// The XDP attachment of an interface as `ip -d link` shows it, if any.
pub fn xdp_attached(ns: &str, ifname: &str) -> Option<detector::kernel::xdp::Existing> {
    let out = Command::new("ip").args(["-n", ns, "-j", "-d", "link", "show", "dev", ifname]).output().unwrap();
    detector::kernel::xdp::parse_ip_link_xdp(&String::from_utf8_lossy(&out.stdout))
}

/// `promtool check metrics` on a metrics text: (ok, what it said).
pub fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask test installs it)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}
