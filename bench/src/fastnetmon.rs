//! Side by side with FastNetMon Community (Debian's `fastnetmon`), the
//! open-source detector operators run for this job: the same router lab
//! (`RouterLab`), the same hping3 floods to one customer address, the same
//! per-host floor. Two figures:
//!
//! - **Detection time**: from the flood's first frame (seen leaving inet's
//!   end of the outside link by a packet socket opened for that one frame)
//!   to each detector naming the attacked host: the detector's incident for
//!   that address opening (`timeline[0].at`), FastNetMon's log line
//!   `Attack with direction: incoming IP: <host>` (the moment it decides to
//!   ban; its notify script runs just after, and is recorded too). Each
//!   trial has a fresh lab and one detector, alone.
//! - **CPU per forwarded packet** under a sustained flood forwarded by the
//!   router: each detector's process CPU (its threads' run time by the
//!   scheduler, the process's CPU clock, and its waited-for
//!   children's: FastNetMon's notify script), plus its kernel-side
//!   per-packet work, sampled for both the same way by `perf` (see
//!   [`crate::profile`]): the detector's
//!   XDP program and egress classifier, FastNetMon's AF_PACKET delivery
//!   into its ring. The kernel's BPF statistics time the detector's
//!   programs too, as a check. Divided by the router's forwarded datagrams
//!   (`Ip: ForwDatagrams`).
//!
//! FastNetMon runs in the router's namespace with its own configuration,
//! log, networks list and notify script in the lab's directory, no PID file
//! (`--disable_pid_logic`), no API, no metrics, no BGP, and is killed when
//! its handle drops (and gets SIGTERM if the bench dies).

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
    sync::mpsc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use aya::sys::{enable_stats, Stats};
use detector::{
    detect::incident::time_ms,
    iface,
    lab::{
        find_program,
        hping3::{Hping3, Hping3Report},
        router::SERVERS_V4,
        Background, Controller, Lab, RouterLab, Supervision,
    },
    netns::NetnsGuard,
};
use serde_json::Value;

use crate::profile::{self, Matcher, Recording};

/// The per-host floor both detectors get: the detector's host group floor
/// for `udp_flood`, FastNetMon's `threshold_pps` with `ban_for_pps`.
pub const FLOOR_PPS: u64 = 5_000;
/// The detector's hold time (as in the reaction part); its poll interval
/// is the default, [`INTERVAL_MS`].
pub const HOLD_MS: u64 = 200;
pub const INTERVAL_MS: u64 = 100;
/// FastNetMon's fastest: speeds recomputed every second (the smallest
/// `speed_calculation_delay`, whole seconds), no moving average
/// (`average_calculation_time = 0`).
pub const FNM_PERIOD_MS: u64 = 1_000;
/// hping3's gap between packets for the detection flood (`-i u25`): about
/// 20,000 pps here, four times the floor.
pub const DETECT_GAP: &str = "u25";
/// The attacked customer.
pub const TARGET: &str = SERVERS_V4[0];
/// Where the floods go (no server listens there).
pub const PORT: &str = "27015";
/// UDP payload bytes of every flood.
pub const PAYLOAD: &str = "64";
/// A trial whose detector has not named the host this long after the
/// flood's start fails.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Quiet time after a detector is ready and before the flood (and, in the
/// CPU runs, before the counters are read): both start clean.
const SETTLE: Duration = Duration::from_millis(1_000);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Who {
    Detector,
    /// The detector with no hold: a single poll over the floor opens the
    /// incident, as a single recalculation over it makes FastNetMon's ban
    /// (detection trials only).
    DetectorNoHold,
    FastNetMon,
    /// The router forwarding with neither: the forwarding rate, and no
    /// sample in any hook.
    Nothing,
    /// An empty XDP program (`return XDP_PASS`) on the router's outside
    /// interface: what any XDP program costs per packet in this lab (CPU
    /// runs only).
    EmptyXdp,
}

impl Who {
    pub fn label(self) -> &'static str {
        match self {
            Who::Detector => "detector (XDP)",
            Who::DetectorNoHold => "detector, no hold (XDP)",
            Who::FastNetMon => "FastNetMon (AF_PACKET)",
            Who::Nothing => "no detector (plain forwarding)",
            Who::EmptyXdp => "empty XDP program (the floor)",
        }
    }
}

/// One detection trial, Unix ms (fractional for the first frame).
#[derive(Clone, Debug)]
pub struct Trial {
    pub who: Who,
    pub first_frame_ms: f64,
    /// The detector's `opened`, or FastNetMon's attack log line.
    pub named_ms: f64,
    /// FastNetMon only: its notify script's `date +%s.%N` for the ban.
    pub notify_ms: Option<f64>,
    pub flood_pps: f64,
}

impl Trial {
    pub fn detect_ms(&self) -> f64 {
        self.named_ms - self.first_frame_ms
    }
    pub fn notify_delay_ms(&self) -> Option<f64> {
        self.notify_ms.map(|n| n - self.first_frame_ms)
    }
}

/// One sustained flood through the router with one setup.
#[derive(Clone, Debug)]
pub struct CpuRun {
    pub who: Who,
    /// hping3's gap (`u25`) or `flood` (as fast as it sends).
    pub gap: &'static str,
    pub seconds: f64,
    pub sent: u64,
    pub forwarded: u64,
    /// The process's CPU time by the scheduler (see [`ProcessCpu`]).
    pub process_ns: u64,
    /// The same as `/proc/PID/stat` charges it, a tick at a time.
    pub process_ticks_ns: u64,
    /// Detector only: the XDP program's run time and runs.
    pub xdp_ns: Option<u64>,
    pub xdp_runs: Option<u64>,
    /// Detector only: its egress classifier's run time (on the same
    /// interface: what the router sends back out, the customers' answers).
    pub egress_ns: Option<u64>,
    /// Sampled CPU time in the same window, per [`HOOKS`] entry (see
    /// [`crate::profile`]).
    pub sampled_ns: [u64; HOOKS.len()],
    /// Every sample perf took in the window.
    pub perf_samples: u64,
}

/// The kernel-side hooks whose CPU time is sampled in every CPU run: where
/// each setup works per packet outside its process.
pub const HOOKS: [(&str, Matcher); 4] = [
    ("the detector's XDP program", |c| profile::in_bpf_prog(c, "detector")),
    ("the detector's egress classifier", |c| profile::in_bpf_prog(c, detector_common::known::EGRESS_PROGRAM)),
    ("the empty XDP program", |c| profile::in_bpf_prog(c, detector_common::flood::PASS_PROGRAM)),
    // FastNetMon's sockets are in a fanout group: the receive path hands
    // the frame to `packet_rcv_fanout`, which copies it into the chosen
    // socket's ring in `tpacket_rcv`.
    ("AF_PACKET delivery of received frames", profile::in_af_packet_receive),
];
/// Indexes into [`HOOKS`].
pub const HOOK_XDP: usize = 0;
pub const HOOK_EGRESS: usize = 1;
pub const HOOK_EMPTY: usize = 2;
pub const HOOK_AF_PACKET: usize = 3;

pub struct Figures {
    pub fastnetmon_version: String,
    pub detector_version: String,
    pub kernel: String,
    pub trials: Vec<Trial>,
    pub cpu: Vec<CpuRun>,
    pub cpu_seconds: u64,
}

impl Figures {
    pub fn detect(&self, who: Who) -> Vec<f64> {
        self.trials.iter().filter(|t| t.who == who).map(Trial::detect_ms).collect()
    }

    pub fn notify(&self) -> Vec<f64> {
        self.trials.iter().filter_map(Trial::notify_delay_ms).collect()
    }

    /// One setup's runs at one flood, summed over the rounds.
    pub fn cpu_total(&self, who: Who, gap: &str) -> Option<CpuTotal> {
        CpuTotal::of(self.cpu_runs(who, gap))
    }

    /// One setup's runs at one flood, each alone, round by round.
    pub fn cpu_rounds(&self, who: Who, gap: &str) -> Vec<CpuTotal> {
        self.cpu_runs(who, gap).filter_map(|r| CpuTotal::of([r])).collect()
    }

    fn cpu_runs<'a>(&'a self, who: Who, gap: &'a str) -> impl Iterator<Item = &'a CpuRun> + 'a {
        self.cpu.iter().filter(move |r| r.who == who && r.gap == gap)
    }
}

impl CpuTotal {
    /// The sum of `runs`; None when there are none.
    fn of<'a>(runs: impl IntoIterator<Item = &'a CpuRun>) -> Option<CpuTotal> {
        let mut runs = runs.into_iter().peekable();
        runs.peek()?;
        let mut t = CpuTotal::default();
        for r in runs {
            t.seconds += r.seconds;
            t.sent += r.sent;
            t.forwarded += r.forwarded;
            t.process_ns += r.process_ns;
            t.process_ticks_ns += r.process_ticks_ns;
            t.xdp_ns += r.xdp_ns.unwrap_or(0);
            t.xdp_runs += r.xdp_runs.unwrap_or(0);
            t.egress_ns += r.egress_ns.unwrap_or(0);
            for (a, b) in t.sampled_ns.iter_mut().zip(r.sampled_ns) {
                *a += b;
            }
        }
        Some(t)
    }
}

#[derive(Clone, Copy, Default, Debug)]
pub struct CpuTotal {
    pub seconds: f64,
    pub sent: u64,
    pub forwarded: u64,
    pub process_ns: u64,
    pub process_ticks_ns: u64,
    pub xdp_ns: u64,
    pub xdp_runs: u64,
    pub egress_ns: u64,
    pub sampled_ns: [u64; HOOKS.len()],
}

impl CpuTotal {
    fn per_packet(&self, ns: u64) -> f64 {
        ns as f64 / self.forwarded.max(1) as f64
    }
    pub fn process_per_packet(&self) -> f64 {
        self.per_packet(self.process_ns)
    }
    pub fn process_ticks_per_packet(&self) -> f64 {
        self.per_packet(self.process_ticks_ns)
    }
    pub fn xdp_per_packet(&self) -> f64 {
        self.per_packet(self.xdp_ns)
    }
    pub fn egress_per_packet(&self) -> f64 {
        self.per_packet(self.egress_ns)
    }
    /// Sampled CPU time in hook `i` ([`HOOKS`]) per forwarded packet.
    pub fn sampled_per_packet(&self, i: usize) -> f64 {
        self.per_packet(self.sampled_ns[i])
    }
    /// What the setup spends per forwarded packet, all sampled but its
    /// process: the detector's process and programs, FastNetMon's process
    /// and AF_PACKET delivery, the empty program alone. None for plain
    /// forwarding.
    pub fn cost_per_packet(&self, who: Who) -> Option<f64> {
        Some(match who {
            Who::Detector | Who::DetectorNoHold => {
                self.process_per_packet() + self.sampled_per_packet(HOOK_XDP) + self.sampled_per_packet(HOOK_EGRESS)
            }
            Who::FastNetMon => self.process_per_packet() + self.sampled_per_packet(HOOK_AF_PACKET),
            Who::EmptyXdp => self.sampled_per_packet(HOOK_EMPTY),
            Who::Nothing => return None,
        })
    }
    pub fn forwarded_pps(&self) -> f64 {
        self.forwarded as f64 / self.seconds.max(1e-9)
    }
}

/// The CPU hping3 runs on in the CPU runs (see `Hping3::pin_to_cpu`), so
/// every setup receives on the same CPU. (The host's two levels remain:
/// the same setup's XDP figure still reads about 700 or about 1,200 ns
/// at 23k pps from one run to the next, pinned or not.)
pub const GENERATOR_CPU: usize = 0;

/// The floods of the CPU runs: the detection flood, and hping3 as fast as
/// it sends.
pub const CPU_GAPS: [&str; 2] = [DETECT_GAP, "flood"];
/// The setups of the CPU runs, in the order they run and are reported.
pub const CPU_SETUPS: [Who; 4] = [Who::Nothing, Who::EmptyXdp, Who::FastNetMon, Who::Detector];

pub fn run(trials: usize, cpu_seconds: u64, rounds: usize) -> Result<Figures> {
    let bin = crate::detector_bin()?;
    let fnm = fastnetmon_bin()?;
    let fastnetmon_version = fastnetmon_version()?;
    let detector_version = detector_version(&bin)?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    eprintln!("bench:   FastNetMon {fastnetmon_version}, {detector_version}");

    let mut out = Vec::new();
    for t in 0..trials {
        for who in [Who::Detector, Who::DetectorNoHold, Who::FastNetMon] {
            // Floods land at phases spread evenly over each one's period.
            let period = if who == Who::FastNetMon { FNM_PERIOD_MS } else { INTERVAL_MS };
            let stagger = Duration::from_millis(t as u64 * period / trials as u64);
            // One retry: hping3 now and then sends nothing at all here
            // (the error says so); a second failure ends the part.
            let trial = match detect_trial(&bin, &fnm, who, stagger) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("bench:   {} detection trial {} failed, once more: {e:#}", who.label(), t + 1);
                    detect_trial(&bin, &fnm, who, stagger)
                        .with_context(|| format!("{} detection trial {}", who.label(), t + 1))?
                }
            };
            eprintln!(
                "bench:   trial {:>2} {:<24} {:>6.0} ms to naming {TARGET}{} ({:.0} pps)",
                t + 1,
                who.label(),
                trial.detect_ms(),
                trial.notify_delay_ms().map(|n| format!(", notify script at {n:.0} ms")).unwrap_or_default(),
                trial.flood_pps
            );
            out.push(trial);
        }
    }

    let mut cpu = Vec::new();
    for round in 0..rounds {
        for gap in CPU_GAPS {
            for who in CPU_SETUPS {
                let r = cpu_run(&bin, &fnm, who, gap, Duration::from_secs(cpu_seconds))
                    .with_context(|| format!("{} CPU run, hping3 {gap}, round {}", who.label(), round + 1))?;
                let per = |ns: u64| ns as f64 / r.forwarded.max(1) as f64;
                let sampled: Vec<String> = HOOKS
                    .iter()
                    .zip(r.sampled_ns)
                    .filter(|(_, ns)| *ns > 0)
                    .map(|((what, _), ns)| format!("{what} {:.0}", per(ns)))
                    .collect();
                eprintln!(
                    "bench:   cpu {gap:<5} {:<30} {:>8.0} pps forwarded, process {:>6.0} ns/pkt (ticks {:.0}){}{}; {} perf samples; sampled ns/pkt: {}",
                    who.label(),
                    r.forwarded as f64 / r.seconds,
                    per(r.process_ns),
                    per(r.process_ticks_ns),
                    r.xdp_ns.map(|x| format!(", XDP {:.0} ns/pkt", per(x))).unwrap_or_default(),
                    r.egress_ns.map(|x| format!(", egress {:.0} ns/pkt", per(x))).unwrap_or_default(),
                    r.perf_samples,
                    sampled.join(", ")
                );
                cpu.push(r);
            }
        }
    }
    Ok(Figures { fastnetmon_version, detector_version, kernel, trials: out, cpu, cpu_seconds })
}

fn fastnetmon_bin() -> Result<PathBuf> {
    find_program("fastnetmon").ok_or_else(|| {
        anyhow!("fastnetmon is not installed (`cargo xtask bench` installs it: Debian package fastnetmon)")
    })
}

fn fastnetmon_version() -> Result<String> {
    let out = Command::new("dpkg-query").args(["-W", "-f", "${Version}", "fastnetmon"]).output()?;
    ensure!(out.status.success(), "dpkg-query -W fastnetmon: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub(crate) fn detector_version(bin: &Path) -> Result<String> {
    let out = Command::new(bin).arg("--version").output()?;
    ensure!(out.status.success(), "detector --version failed");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The detector's configuration: the customers' /24 as a host group whose
/// per-address floor is [`FLOOR_PPS`], with a hold of `hold_ms`.
fn detector_config(hold_ms: u64) -> String {
    format!(
        "detection:\n  hold: {hold_ms}ms\n  baseline: {{ warmup: 1h }}\nnetworks:\n  hostgroups:\n    - name: customers\n      prefixes: [198.51.100.0/24]\n      families:\n        udp_flood: {{ pps: {FLOOR_PPS} }}\n"
    )
}

/// Either detector, running in a lab's router.
enum Running {
    Detector(Box<Controller>),
    FastNetMon(FastNetMon),
    Nothing,
    /// The empty program, loaded and attached in the router (detached when
    /// dropped).
    Empty {
        _obj: Box<aya::Ebpf>,
    },
}

impl Running {
    fn start(lab: &RouterLab, bin: &Path, fnm: &Path, who: Who) -> Result<Running> {
        Ok(match who {
            Who::Detector | Who::DetectorNoHold => {
                let cfg = lab.dir.join("detector.yaml");
                std::fs::write(&cfg, detector_config(if who == Who::Detector { HOLD_MS } else { 0 }))?;
                let c = Controller::builder_in(bin, &lab.router_ns, &lab.outside_if, &lab.dir)
                    .args(["--node", "bench", "--on-stop", "detach", "--config"])
                    .arg(&cfg)
                    .start()?;
                Running::Detector(Box::new(c))
            }
            Who::FastNetMon => Running::FastNetMon(FastNetMon::start(lab, fnm)?),
            Who::Nothing => Running::Nothing,
            Who::EmptyXdp => {
                let _in = NetnsGuard::enter(&lab.router_ns)?;
                let mut obj = detector::kernel::ebpf::load_flood()?;
                let p = detector::kernel::ebpf::load_xdp(&mut obj, "flood", detector_common::flood::PASS_PROGRAM)?;
                p.attach(&lab.outside_if, aya::programs::XdpMode::Driver)?;
                Running::Empty { _obj: Box::new(obj) }
            }
        })
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Running::Detector(c) => c.pid(),
            Running::FastNetMon(f) => f.child.pid(),
            Running::Nothing | Running::Empty { .. } => None,
        }
    }

    /// Stops it; the detector must leave no pinned state behind.
    fn stop(self, lab: &RouterLab) -> Result<()> {
        match self {
            Running::Detector(mut c) => {
                let status = c.stop_with(libc::SIGTERM, Duration::from_secs(15))?;
                ensure!(status.success(), "`detector run` exited with {status}\n{}", c.log_tail(30));
                crate::reaction::detached_in(&lab.router_ns, &lab.outside_if)
            }
            Running::FastNetMon(f) => f.stop(),
            Running::Nothing | Running::Empty { .. } => Ok(()),
        }
    }
}

fn detect_trial(bin: &Path, fnm: &Path, who: Who, stagger: Duration) -> Result<Trial> {
    // Declared first, dropped last: after the flood and the detector.
    let lab = RouterLab::new()?;
    let mut running = Running::start(&lab, bin, fnm, who)?;
    std::thread::sleep(SETTLE + stagger);
    let result = measure_detection(&lab, &mut running, who);
    let stopped = running.stop(&lab);
    let trial = result?;
    stopped?;
    Ok(trial)
}

fn measure_detection(lab: &RouterLab, running: &mut Running, who: Who) -> Result<Trial> {
    let probe = FirstFrame::open(&lab.inet_ns, &lab.inet_if, TARGET.parse()?)?;
    let flood = Hping3::start(&lab.inet_ns, &flood_args(DETECT_GAP))?;
    let started = Instant::now();
    let named_ms = loop {
        let found = match running {
            Running::Detector(c) => {
                c.check_alive()?;
                incident_opened(c)?.map(|ms| ms as f64)
            }
            Running::FastNetMon(f) => {
                f.check_alive()?;
                f.attack_logged()?
            }
            Running::Nothing | Running::Empty { .. } => bail!("nothing to detect with"),
        };
        if let Some(v) = found {
            break v;
        }
        if started.elapsed() > TIMEOUT {
            let what = match running {
                Running::FastNetMon(f) => format!("FastNetMon's log:\n{}", f.log_tail(20)),
                Running::Detector(c) => format!("the controller's log:\n{}", c.log_tail(20)),
                Running::Nothing | Running::Empty { .. } => String::new(),
            };
            let flood = match flood.stop() {
                Ok(r) => format!("hping3 sent {} packets", r.sent),
                Err(e) => format!("hping3: {e}"),
            };
            bail!("{TARGET} not named within {TIMEOUT:?} of the flood's start ({flood}); {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // FastNetMon's notify script runs just after its log line.
    let notify_ms = match running {
        Running::FastNetMon(f) => {
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                if let Some(ms) = f.notified()? {
                    break Some(ms);
                }
                if Instant::now() > deadline {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        _ => None,
    };
    let report = flood.stop()?;
    let first_frame_ms = probe.wait()?;
    ensure!(
        first_frame_ms <= named_ms + 1.0,
        "{} named {TARGET} at {named_ms} ms, before the flood's first frame at {first_frame_ms:.1} (Unix ms)",
        who.label()
    );
    Ok(Trial { who, first_frame_ms, named_ms, notify_ms, flood_pps: report.pps() })
}

fn flood_args(gap: &str) -> Vec<String> {
    let rate = if gap == "flood" { vec!["--flood".to_string()] } else { vec!["-i".to_string(), gap.to_string()] };
    // -n: no reverse lookup of the customers' ICMP answers, which now and
    // then crashes hping3 (a malloc assertion) a packet into the flood.
    let mut args: Vec<String> = ["--udp", "-n", "-p", PORT, "-d", PAYLOAD].iter().map(|s| s.to_string()).collect();
    args.extend(rate);
    args.push(TARGET.to_string());
    args
}

/// The detector's incident for [`TARGET`]: when it opened (Unix ms).
fn incident_opened(c: &Controller) -> Result<Option<u64>> {
    let v: Value = serde_json::from_str(&c.get_ok("/api/incidents?active=true")?)?;
    let incidents = v["incidents"].as_array().ok_or_else(|| anyhow!("no incidents array: {v}"))?;
    let Some(i) = incidents.iter().find(|i| i["target"] == TARGET) else { return Ok(None) };
    let at = i["timeline"][0]["at"].as_str().ok_or_else(|| anyhow!("incident without timeline[0].at: {i}"))?;
    Ok(Some(time_ms::parse(at).ok_or_else(|| anyhow!("bad time {at}"))?))
}

/// FastNetMon in the router's namespace, its files in the lab's directory.
pub struct FastNetMon {
    child: Background,
    log: PathBuf,
    notify_log: PathBuf,
}

impl FastNetMon {
    fn start(lab: &RouterLab, bin: &Path) -> Result<FastNetMon> {
        let dir = lab.dir.join("fastnetmon");
        std::fs::create_dir_all(&dir)?;
        let path = |name: &str| dir.join(name);
        let notify_log = path("notify.log");
        let script = path("notify.sh");
        // Arguments: IP, direction, pps, action (ban, unban,
        // attack_details); the details come on stdin.
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nt=$(date +%s.%N)\necho \"$t $1 $2 $3 $4\" >> {}\ncat > /dev/null\n",
                notify_log.display()
            ),
        )?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        std::fs::write(path("networks"), "198.51.100.0/24\n")?;
        std::fs::write(path("whitelist"), "")?;
        let conf = path("fastnetmon.conf");
        std::fs::write(&conf, fastnetmon_config(&dir, &lab.outside_if))?;
        let log = path("fastnetmon.log");

        let mut cmd = Lab::command_in(&lab.router_ns, bin);
        cmd.arg("--configuration_file")
            .arg(&conf)
            .arg("--log_file")
            .arg(&log)
            .arg("--disable_pid_logic")
            // Its log's times are local: UTC, to compare.
            .env("TZ", "UTC")
            .current_dir(&dir);
        detector::lab::process::die_with_parent(&mut cmd);
        let what = format!("fastnetmon --configuration_file {}", conf.display());
        let child = Background::spawn(cmd, what, Supervision::default())?;
        let mut f = FastNetMon { child, log, notify_log };
        f.wait_ready(&lab.outside_if)?;
        Ok(f)
    }

    /// Until its capture workers have started on the interface.
    fn wait_ready(&mut self, ifname: &str) -> Result<()> {
        let needle = format!("Start AF_PACKET worker process for {ifname}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.check_alive()?;
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.contains(&needle) {
                // The workers (one per CPU, started together) bind their
                // sockets right after saying so.
                std::thread::sleep(Duration::from_millis(300));
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "FastNetMon started no AF_PACKET worker on {ifname} within 20 s; its log:\n{}",
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(out) = self.child.try_finish()? {
            bail!(
                "FastNetMon exited ({}): {}{}\nits log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(30)
            );
        }
        Ok(())
    }

    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The time of its first `Attack with direction: incoming IP: TARGET`
    /// line (`2026-01-30 08:38:37,082 [INFO] ...`, UTC), Unix ms.
    fn attack_logged(&self) -> Result<Option<f64>> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let needle = format!("Attack with direction: incoming IP: {TARGET} ");
        let Some(line) = log.lines().find(|l| l.contains(&needle)) else { return Ok(None) };
        let stamp = line.get(..23).ok_or_else(|| anyhow!("no time in '{line}'"))?;
        let rfc = format!("{}T{}Z", &stamp[..10], stamp[11..].replace(',', "."));
        let ms = time_ms::parse(&rfc).ok_or_else(|| anyhow!("cannot read the time of '{line}'"))?;
        Ok(Some(ms as f64))
    }

    /// Its notify script's time for the ban of [`TARGET`], Unix ms.
    fn notified(&self) -> Result<Option<f64>> {
        let text = std::fs::read_to_string(&self.notify_log).unwrap_or_default();
        for line in text.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            if w.len() >= 5 && w[1] == TARGET && w[4] == "ban" {
                let secs: f64 = w[0].parse().with_context(|| format!("notify line '{line}'"))?;
                return Ok(Some(secs * 1e3));
            }
        }
        Ok(None)
    }

    /// SIGTERM; it must exit within the grace period.
    fn stop(self) -> Result<()> {
        let out = self.child.stop(libc::SIGTERM, Duration::from_secs(10))?;
        // Killed by SIGTERM or exiting on it: both are a stop.
        let _ = out.status;
        Ok(())
    }
}

/// FastNetMon 1.2's configuration for the lab: AF_PACKET on the router's
/// outside interface, the customers' /24, a per-host pps threshold, its
/// fastest detection, the notify script, and nothing else.
fn fastnetmon_config(dir: &Path, ifname: &str) -> String {
    let p = |name: &str| dir.join(name).display().to_string();
    format!(
        "\
logging_level = info
logging_local_syslog_logging = off
logging_remote_syslog_logging = off
disable_usage_report = on
enable_ban = on
enable_ban_ipv6 = off
process_incoming_traffic = on
process_outgoing_traffic = on
ban_time = 60
unban_only_if_attack_finished = on
ban_details_records_count = 20
networks_list_path = {networks}
white_list_path = {whitelist}
enable_connection_tracking = off
ban_for_pps = on
ban_for_bandwidth = off
ban_for_flows = off
threshold_pps = {FLOOR_PPS}
ban_for_tcp_bandwidth = off
ban_for_udp_bandwidth = off
ban_for_icmp_bandwidth = off
ban_for_tcp_pps = off
ban_for_udp_pps = off
ban_for_icmp_pps = off
mirror_afpacket = on
mirror_af_packet_custom_sampling_rate = 1
mirror_af_packet_fanout_mode = cpu
mirror_afxdp = off
mirror_netmap = off
pcap = off
netflow = off
sflow = off
interfaces = {ifname}
average_calculation_time = 0
speed_calculation_delay = {period}
notify_script_path = {script}
collect_attack_pcap_dumps = off
monitor_local_ip_addresses = off
pid_path = {pid}
cli_stats_file_path = {dat}
cli_stats_ipv6_file_path = {dat6}
enable_api = off
prometheus = off
exabgp = off
gobgp = off
redis_enabled = off
mongodb_enabled = off
influxdb = off
graphite = off
kafka_traffic_export = off
",
        networks = p("networks"),
        whitelist = p("whitelist"),
        period = FNM_PERIOD_MS / 1000,
        script = p("notify.sh"),
        pid = p("fastnetmon.pid"),
        dat = p("fastnetmon.dat"),
        dat6 = p("fastnetmon_ipv6.dat"),
    )
}

/// The wall-clock time of the first UDP frame to a destination leaving an
/// interface: a packet socket in the interface's namespace, open from
/// before the flood until that frame (then closed: it costs nothing during
/// the rest of the flood).
pub(crate) struct FirstFrame {
    thread: std::thread::JoinHandle<Result<f64>>,
}

impl FirstFrame {
    pub(crate) fn open(ns: &str, ifname: &str, dst: Ipv4Addr) -> Result<FirstFrame> {
        let (ns, ifname) = (ns.to_string(), ifname.to_string());
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let thread = std::thread::spawn(move || -> Result<f64> {
            let sock = (|| -> Result<OwnedFd> {
                let _in = NetnsGuard::enter(&ns)?;
                let index = iface::index(&ifname)?;
                // ETH_P_ALL: a socket bound to one protocol sees only frames
                // coming in, not those leaving.
                let proto = (libc::ETH_P_ALL as u16).to_be();
                // SAFETY: plain socket calls on a descriptor we own.
                unsafe {
                    let fd = libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, proto as i32);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error()).context("packet socket");
                    }
                    let fd = OwnedFd::from_raw_fd(fd);
                    let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                    sll.sll_family = libc::AF_PACKET as u16;
                    sll.sll_protocol = proto;
                    sll.sll_ifindex = index as i32;
                    let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                    if libc::bind(fd.as_raw_fd(), &sll as *const _ as *const libc::sockaddr, len) != 0 {
                        return Err(std::io::Error::last_os_error()).context("binding the packet socket");
                    }
                    let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
                    let tvlen = std::mem::size_of::<libc::timeval>() as u32;
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_RCVTIMEO,
                        &tv as *const _ as *const libc::c_void,
                        tvlen,
                    );
                    Ok(fd)
                }
            })();
            let sock = match sock {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow!("{e:#}")));
                    return Err(e);
                }
            };
            let deadline = Instant::now() + TIMEOUT;
            let mut buf = [0u8; 256];
            loop {
                // SAFETY: recv into a buffer we own, within its length.
                let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64() * 1e3;
                if n >= 20 && buf[0] >> 4 == 4 && buf[9] == libc::IPPROTO_UDP as u8 && buf[16..20] == dst.octets() {
                    return Ok(now);
                }
                if Instant::now() > deadline {
                    bail!("no frame to {dst} left {ifname} within {TIMEOUT:?}");
                }
            }
        });
        ready_rx.recv().map_err(|_| anyhow!("the first-frame probe died"))??;
        Ok(FirstFrame { thread })
    }

    pub(crate) fn wait(self) -> Result<f64> {
        self.thread.join().map_err(|_| anyhow!("the first-frame probe panicked"))?
    }
}

/// A process's CPU time so far, two ways.
///
/// - **Scheduler**: the process's CPU clock (`clock_getcpuclockid`, read
///   with `clock_gettime`): the scheduler's own nanoseconds, summed over
///   its threads, those that ended included; plus its waited-for
///   children's (cutime + cstime: FastNetMon's notify script).
/// - **Ticks**: utime + stime + cutime + cstime of `/proc/PID/stat`, as
///   `top` shows it. This kernel charges it a whole tick (4 ms at 250 Hz)
///   to whatever runs when the tick fires: a process waking ten times a
///   second for half a millisecond is charged anything from nothing to
///   40 ms a second, by the phase of its wake-ups against the tick. Kept
///   for the log, beside the scheduler's figure.
#[derive(Debug, Default)]
struct ProcessCpu {
    run_ns: u64,
    children_ns: u64,
    ticks_ns: u64,
}

impl ProcessCpu {
    fn read(pid: u32) -> Result<ProcessCpu> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
        // After "pid (comm) ": state is field 3; utime is 14 .. cstime 17.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow!("bad /proc/{pid}/stat"))?;
        let f: Vec<u64> = rest.split_whitespace().map(|t| t.parse::<u64>().unwrap_or(0)).collect();
        let ticks = f.get(11..15).ok_or_else(|| anyhow!("short /proc/{pid}/stat"))?;
        // SAFETY: sysconf has no preconditions.
        let hz = (unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64).max(1);
        let ns = |t: u64| t * 1_000_000_000 / hz;
        Ok(ProcessCpu {
            run_ns: cpu_clock_ns(pid)?,
            children_ns: ns(ticks[2] + ticks[3]),
            ticks_ns: ns(ticks.iter().sum()),
        })
    }

    /// (scheduler, ticks) ns since `before`.
    fn since(&self, before: &ProcessCpu) -> (u64, u64) {
        (
            self.run_ns.saturating_sub(before.run_ns) + self.children_ns.saturating_sub(before.children_ns),
            self.ticks_ns.saturating_sub(before.ticks_ns),
        )
    }
}

/// The CPU time of process `pid`, every thread it has had, ns.
fn cpu_clock_ns(pid: u32) -> Result<u64> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: a valid pointer; the call only writes the clock's id.
    let e = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
    ensure!(e == 0, "clock_getcpuclockid({pid}): {}", std::io::Error::from_raw_os_error(e));
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a clock id the call above gave, and a valid pointer.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        bail!("the CPU clock of process {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// The id of the XDP program on `ifname` in `ns` (`ip -j link`).
fn xdp_prog_id(ns: &str, ifname: &str) -> Result<u64> {
    let out = Command::new("ip").args(["-n", ns, "-j", "link", "show", "dev", ifname]).output()?;
    let v: Value = serde_json::from_slice(&out.stdout).context("ip -j link")?;
    v.pointer("/0/xdp/prog/id").and_then(Value::as_u64).ok_or_else(|| anyhow!("no XDP program on {ifname}: {v}"))
}

/// The detector's egress classifier: the loaded program of that name that
/// shares a map with its XDP program `xdp` (its known peers, its epoch).
fn egress_prog_id(xdp: u64) -> Result<u64> {
    let mut infos = Vec::new();
    for info in aya::programs::loaded_programs() {
        let info = info?;
        let maps = info.map_ids()?.unwrap_or_default();
        infos.push((u64::from(info.id()), info.name_as_str().unwrap_or_default().to_string(), maps));
    }
    let xdp_maps = infos.iter().find(|(id, ..)| *id == xdp).map(|(.., m)| m.clone()).unwrap_or_default();
    let name = &detector_common::known::EGRESS_PROGRAM[..detector_common::known::EGRESS_PROGRAM.len().min(15)];
    infos
        .iter()
        .find(|(_, n, maps)| n == name && maps.iter().any(|m| xdp_maps.contains(m)))
        .map(|(id, ..)| *id)
        .ok_or_else(|| anyhow!("no egress classifier {name} sharing a map with XDP program {xdp}"))
}

/// (run time ns, runs) of a loaded program, from the kernel's statistics.
fn prog_stats(id: u64) -> Result<(u64, u64)> {
    for info in aya::programs::loaded_programs() {
        let info = info?;
        if u64::from(info.id()) == id {
            return Ok((info.run_time().as_nanos() as u64, info.run_count()));
        }
    }
    bail!("no loaded program with id {id}")
}

fn forwarded(lab: &RouterLab) -> Result<u64> {
    let c = lab.router_counters()?;
    Ok(c.get("Ip", "ForwDatagrams").ok_or_else(|| anyhow!("no Ip ForwDatagrams"))? as u64)
}

fn cpu_run(bin: &Path, fnm: &Path, who: Who, gap: &'static str, duration: Duration) -> Result<CpuRun> {
    let lab = RouterLab::new()?;
    let xdp = matches!(who, Who::Detector | Who::EmptyXdp);
    let _stats =
        if xdp { Some(enable_stats(Stats::RunTime).context("enabling BPF run-time statistics")?) } else { None };
    let running = Running::start(&lab, bin, fnm, who)?;
    let result = (|| -> Result<CpuRun> {
        let prog = if xdp { Some(xdp_prog_id(&lab.router_ns, &lab.outside_if)?) } else { None };
        let egress = match (who, prog) {
            (Who::Detector, Some(id)) => Some(egress_prog_id(id)?),
            _ => None,
        };
        let flood = Hping3::start(&lab.inet_ns, &flood_args(gap))?;
        flood.pin_to_cpu(GENERATOR_CPU)?;
        // Set up while the flood settles: its own start takes a moment.
        let recording = Recording::start(&lab.dir)?;
        // Past the start (and the detector's incident opening) before counting.
        std::thread::sleep(SETTLE);
        let pid = running.pid();
        let from_ns = profile::now_ns();
        let cpu0 = pid.map(ProcessCpu::read).transpose()?.unwrap_or_default();
        let fwd0 = forwarded(&lab)?;
        let xdp0 = prog.map(prog_stats).transpose()?;
        let egress0 = egress.map(prog_stats).transpose()?;
        let t0 = Instant::now();
        std::thread::sleep(duration);
        let cpu1 = pid.map(ProcessCpu::read).transpose()?.unwrap_or_default();
        let fwd1 = forwarded(&lab)?;
        let xdp1 = prog.map(prog_stats).transpose()?;
        let egress1 = egress.map(prog_stats).transpose()?;
        let seconds = t0.elapsed().as_secs_f64();
        let (process_ns, process_ticks_ns) = cpu1.since(&cpu0);
        let to_ns = profile::now_ns();
        let matchers: Vec<Matcher> = HOOKS.iter().map(|h| h.1).collect();
        let sampled = recording.stop(from_ns, to_ns, &matchers)?;
        let report: Hping3Report = flood.stop()?;
        let (xdp_ns, xdp_runs) = match (xdp0, xdp1) {
            (Some(a), Some(b)) => (Some(b.0 - a.0), Some(b.1 - a.1)),
            _ => (None, None),
        };
        Ok(CpuRun {
            who,
            gap,
            seconds,
            sent: report.sent,
            forwarded: fwd1 - fwd0,
            process_ns,
            process_ticks_ns,
            xdp_ns,
            xdp_runs,
            egress_ns: egress0.zip(egress1).map(|(a, b)| b.0 - a.0),
            sampled_ns: std::array::from_fn(|i| sampled.ns(i)),
            perf_samples: sampled.samples,
        })
    })();
    let stopped = running.stop(&lab);
    let r = result?;
    stopped?;
    Ok(r)
}
