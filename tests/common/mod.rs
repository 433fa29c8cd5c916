//! Shared by the kernel tests: the root check, and thin wrappers over the
//! lab harness (`detector::lab`) that fail the test with context instead of
//! returning errors: a `detector run` child, `detector` commands and floods
//! in a lab namespace, HTTP from inside one; and metric parsing.
#![allow(dead_code)]

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use detector::lab;
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

/// One test of a file at a time, for the files whose tests each hold the
/// machine: floods at full speed (two at once on two cores lose each
/// other's measured traffic), router labs with BGP daemons, or the pins a
/// `detector run` sweeps in every namespace. Each test file is its own
/// binary, so the lock is per file. Held for the test's whole run; one that
/// panicked leaves it poisoned, and the guard protects nothing but the
/// order.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn detector_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_detector"))
}

/// Runs `detector ARGS` inside namespace `ns` to completion. One that is
/// still running after a minute is killed and the test fails: a command
/// expected to fail that runs on instead must not hang the suite.
pub fn detector_in(ns: &str, args: &[&str]) -> Output {
    lab::DetectorCommand::new(detector_bin(), ns).args(args).output().unwrap_or_else(|e| panic!("{e}"))
}

/// `detector flood ARGS` out of the lab's generator end, in the background;
/// `--dst` defaults to the target's address.
pub fn flood_in_background(lab: &Lab, args: &[&str]) -> std::thread::JoinHandle<Output> {
    let flood = lab::DetectorCommand::flood(detector_bin(), lab, args);
    std::thread::spawn(move || flood.output().unwrap_or_else(|e| panic!("{e}")))
}

/// A `detector run` child ([`lab::Controller`], whose fields and methods it
/// derefs to) whose failures fail the test; stopped and reaped on drop.
pub struct Controller(lab::Controller);

impl std::ops::Deref for Controller {
    type Target = lab::Controller;
    fn deref(&self) -> &lab::Controller {
        &self.0
    }
}

impl std::ops::DerefMut for Controller {
    fn deref_mut(&mut self) -> &mut lab::Controller {
        &mut self.0
    }
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
        Self::spawn(lab, iface, &format!("127.0.0.1:{METRICS_PORT}"), extra, &[])
    }

    /// As [`Controller::start`], listening on `addr` (on port 9477).
    pub fn start_with_addr(lab: &Lab, addr: &str, extra: &[&str]) -> Controller {
        Self::spawn(lab, &lab.tgt_if, addr, extra, &[])
    }

    /// As [`Controller::start`], with these environment variables set.
    pub fn start_with_env(lab: &Lab, extra: &[&str], env: &[(&str, &str)]) -> Controller {
        Self::spawn(lab, &lab.tgt_if, &format!("127.0.0.1:{METRICS_PORT}"), extra, env)
    }

    /// A fast poll (`--interval 50ms`) and node `lab` unless `extra` says
    /// otherwise.
    fn spawn(lab: &Lab, iface: &str, addr: &str, extra: &[&str], env: &[(&str, &str)]) -> Controller {
        let mut b = lab::Controller::builder(detector_bin(), lab)
            .iface(iface)
            .metrics_addr(addr)
            .state_dir(state_dir(lab))
            .envs(env.iter().copied());
        if !extra.contains(&"--interval") {
            b = b.args(["--interval", "50ms"]);
        }
        if !extra.contains(&"--node") {
            b = b.args(["--node", "lab"]);
        }
        Controller(b.args(extra).start().unwrap_or_else(|e| panic!("{e}")))
    }

    /// `detector run` in the router lab's router, on its outside
    /// interface (facing inet), polling every 50 ms, node `router`.
    pub fn start_in_router(lab: &lab::RouterLab, extra: &[&str]) -> Controller {
        let b = lab::Controller::builder_in(detector_bin(), &lab.router_ns, &lab.outside_if, &lab.dir)
            .metrics_addr(&format!("127.0.0.1:{METRICS_PORT}"))
            .args(["--interval", "50ms", "--node", "router"]);
        Controller(b.args(extra).start().unwrap_or_else(|e| panic!("{e}")))
    }

    pub fn metrics(&self) -> String {
        self.0.metrics().unwrap_or_else(|e| panic!("{e}"))
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
        self.0.stop_with(sig, lab::Controller::STOP_GRACE).unwrap_or_else(|e| panic!("{e}"))
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

/// `detector ARGS --state-dir <the controller's>` in the target namespace:
/// (success, stdout, stderr). A panic in the command fails the test.
pub fn cli(c: &Controller, args: &[&str]) -> (bool, String, String) {
    let mut full: Vec<&str> = args.to_vec();
    let dir = c.state_dir.to_str().unwrap().to_string();
    full.extend(["--state-dir", &dir]);
    let out = detector_in(&c.ns, &full);
    let (o, e) = (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string());
    assert!(!e.contains("panicked"), "{args:?} panicked:\n{e}");
    (out.status.success(), o, e)
}

/// [`cli`], which must succeed; its stdout.
pub fn ok(c: &Controller, args: &[&str]) -> String {
    let (success, out, err) = cli(c, args);
    assert!(success, "{args:?} failed:\n{err}\nlog:\n{}", c.log_text());
    out
}

/// The rules in force, as `detector rules list --json` prints them.
pub fn rules(c: &Controller) -> serde_json::Value {
    serde_json::from_str(&ok(c, &["rules", "list", "--json"])).unwrap()
}

/// Frames sent with the exact engine (every one delivered to the veth),
/// addressed to the target's MAC so its stack takes them.
pub fn send(lab: &Lab, args: &[&str]) {
    let mac = lab.tgt_mac().unwrap();
    let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let tgt = detector::lab::TGT_V4;
    let mut full = vec!["flood", "--iface", &lab.gen_if, "--dst", tgt, "--dst-mac", &mac, "--engine", "exact"];
    full.extend(args);
    let out = detector_in(&lab.gen_ns, &full);
    assert!(out.status.success(), "flood {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// IP datagrams the target's stack received (`Ip: InReceives`): counted
/// on the other side of XDP, not by the detector.
pub fn ip_in_receives(lab: &Lab) -> u64 {
    let ns = lab.tgt_ns.clone();
    std::thread::spawn(move || {
        let _in = detector::netns::NetnsGuard::enter(&ns).unwrap();
        let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap();
        let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
        let (names, values) = (ip.next().unwrap(), ip.next().unwrap());
        let i = names.split_whitespace().position(|n| n == "InReceives").unwrap();
        values.split_whitespace().nth(i).unwrap().parse().unwrap()
    })
    .join()
    .unwrap()
}

/// Runs `f` and returns how many IP datagrams reached the target's stack meanwhile.
pub fn reaching_stack(lab: &Lab, f: impl FnOnce()) -> u64 {
    let before = ip_in_receives(lab);
    f();
    std::thread::sleep(Duration::from_millis(100));
    ip_in_receives(lab) - before
}

/// A controller running the shipped runbooks (`runbooks/`) with `config`,
/// their Slack, webhook and PagerDuty steps sent to a receiver on
/// 127.0.0.1:`port` in the target namespace (paths `/slack`, `/hook`,
/// `/pd`); the webhook secret is `hook_secret`.
pub fn shipped_runbooks(
    lab: &Lab,
    config: &str,
    port: u16,
    hook_secret: &str,
) -> (Controller, detector::lab::receiver::Receiver) {
    let rx = detector::lab::receiver::Receiver::start(&lab.tgt_ns, port).unwrap();
    let dir = lab.dir.join("shipped");
    std::fs::create_dir_all(&dir).unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../runbooks");
    for e in std::fs::read_dir(&shipped).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.ends_with(".yaml") {
            continue;
        }
        let mut text = std::fs::read_to_string(e.path()).unwrap();
        if name == "pagerduty-critical.yaml" {
            let with_url = format!("      channel: pagerduty\n      url: \"http://127.0.0.1:{port}/pd\"\n");
            assert!(text.contains("      channel: pagerduty\n"), "{text}");
            text = text.replace("      channel: pagerduty\n", &with_url);
        }
        std::fs::write(dir.join(&name), text).unwrap();
    }
    let cfg = lab.dir.join("shipped.yaml");
    std::fs::write(&cfg, config).unwrap();
    let (slack, hook) = (format!("http://127.0.0.1:{port}/slack"), format!("http://127.0.0.1:{port}/hook"));
    let env = [
        ("SLACK_WEBHOOK_URL", slack.as_str()),
        ("DETECTOR_WEBHOOK_URL", hook.as_str()),
        ("DETECTOR_WEBHOOK_SECRET", hook_secret),
        ("PAGERDUTY_ROUTING_KEY", "R0UT1NG"),
    ];
    let c = Controller::start_with_env(
        lab,
        &["--config", cfg.to_str().unwrap(), "--runbooks", dir.to_str().unwrap()],
        &env,
    );
    assert!(!c.log_text().contains("runbook refused"), "{}", c.log_text());
    (c, rx)
}

/// A benign background on a thread: `count` UDP datagrams at `rate` a
/// second from `src` to the target's `port`, sent with `detector flood
/// --engine exact` from the generator's end (one address, as a real
/// client). The thread returns the generator's output.
pub fn background_udp(lab: &Lab, src: &str, port: u16, count: u64, rate: u64) -> std::thread::JoinHandle<Output> {
    let (gen_ns, gen_if, mac) = (lab.gen_ns.clone(), lab.gen_if.clone(), lab.tgt_mac().unwrap());
    let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let (src, port, n, rate) = (src.to_string(), port.to_string(), count.to_string(), rate.to_string());
    std::thread::spawn(move || {
        detector_in(
            &gen_ns,
            &[
                "flood",
                "--iface",
                &gen_if,
                "--dst",
                lab::TGT_V4,
                "--dst-mac",
                &mac,
                "--engine",
                "exact",
                "--kind",
                "udp",
                "--dst-port",
                &port,
                "--src",
                &src,
                "--count",
                &n,
                "--rate",
                &rate,
            ],
        )
    })
}

/// GET `path` from the controller as JSON; the test fails unless it is 200.
pub fn get_json(c: &Controller, path: &str) -> serde_json::Value {
    let (code, body) = http_get(&c.ns, path).unwrap();
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The controller's incidents (`active`: the open ones only).
pub fn incidents(c: &Controller, active: bool) -> Vec<serde_json::Value> {
    let v = get_json(c, if active { "/api/incidents?active=true" } else { "/api/incidents" });
    v["incidents"].as_array().unwrap().clone()
}

/// `detector ARGS --json --state-dir DIR` against the controller's state
/// directory; the test fails unless it succeeds.
pub fn cli_json(c: &Controller, args: &[&str]) -> serde_json::Value {
    let dir = c.state_dir.to_str().unwrap().to_string();
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["--json", "--state-dir", &dir]);
    let out = detector_in(&c.ns, &full);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Calls `f` every 50 ms until it returns `Ok`, for at most `within`;
/// then panics naming `what`, the last `Err` it returned and the tail of
/// the controller's log.
pub fn until<T>(c: &Controller, what: &str, within: Duration, f: impl FnMut() -> Result<T, String>) -> T {
    until_or(what, within, || format!("log:\n{}", c.log_tail(60)), f)
}

/// [`until`] for a wait that no one controller's log explains (several
/// nodes, a Prometheus): on timeout, the panic carries what `context`
/// returns instead.
pub fn until_or<T>(
    what: &str,
    within: Duration,
    context: impl FnOnce() -> String,
    mut f: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        match f() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not after {within:?}; last seen:\n{last}\n{}", context());
}

/// What a per-address map entry holds after `n` packets to (or from) one
/// address in one window, `before` packets with an address counted in the
/// window ahead of them, the window's heavy place free: the sketch's
/// weights up to its first sampled packet, which makes the address heavy,
/// then its packets past the sketch in whole batches (`Hot`; what is left
/// of a batch is held until the next window). An address never sampled is
/// the sketch's alone.
pub fn expected_count(n: u32, before: u32) -> u64 {
    use detector_common::sketch::{weight, HOT_BATCH, SAMPLE_EVERY};
    let mut total = 0;
    for k in 1..=n {
        let w = weight(k, before + k);
        total += w as u64;
        if w == SAMPLE_EVERY {
            return total + ((n - k) / HOT_BATCH * HOT_BATCH) as u64;
        }
    }
    total
}

/// What the sketch alone counts of `n` packets of one address in one
/// window, `before` packets with an address counted ahead of them: the
/// weight of each (an address that never takes the heavy place, or up to
/// the packet that makes it heavy).
pub fn sketched_count(n: u32, before: u32) -> u64 {
    (1..=n).map(|k| detector_common::sketch::weight(k, before + k) as u64).sum()
}

/// The CPUs this process may run on (the test harness's threads start with
/// the process's set).
pub fn cpus() -> Vec<usize> {
    // SAFETY: a zeroed set is valid; the call fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set), 0);
        (0..libc::CPU_SETSIZE as usize).filter(|c| libc::CPU_ISSET(*c, &set)).collect()
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_to(cpu: usize) {
    lab::process::pin_to_cpu(0, cpu).unwrap_or_else(|e| panic!("pinning to CPU {cpu}: {e}"));
}
