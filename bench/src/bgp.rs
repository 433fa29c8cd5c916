//! Upstream mitigation over BGP, timed as the upstream sees it: the router
//! lab with BIRD 2 as the upstream (`detector::lab::bgp::RouterUpstream`,
//! `detector::lab::bird::provider_config`, as `tests/bgp.rs` runs them),
//! `detector run` (release build) in the router with a `bgp:` section, so
//! it supervises its gobgpd there, peered with BIRD, and the escalation
//! ladder of `tests/bgp.rs`: FlowSpec over 50% of the interface's
//! configured capacity, RTBH over 90%. One lab, one controller, the trials
//! in sequence; each trial floods a customer with hping3 and times:
//!
//! - from the flood's first frame (a packet socket on inet's end of the
//!   outside link sees it leave, as in the FastNetMon part) to the FlowSpec
//!   rule in BIRD's `flowspec4` (destination, protocol and port of the
//!   flood) and to the /32 with (65535,666) blackholed in BIRD, `birdc`
//!   asked every [`POLL_MS`] ms;
//! - the flood stopped, from the incident's resolution (its `resolved`
//!   timeline entry) to each route being gone from BIRD.
//!
//! gobgpd is ended on the way out whatever happens (it outlives a
//! controller by design); the lab's namespaces go with their handles.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use detector::{
    bgp::daemon::{end_recorded, find_gobgpd},
    detect::incident::time_ms,
    lab::{
        bgp::{RouterUpstream, ROUTER_PEERING_V4, UPSTREAM_PEERING_V4},
        bird::{Bird, BirdError},
        find_program,
        hping3::Hping3,
        router::SERVERS_V4,
        Controller, RouterLab,
    },
};
use serde_json::Value;

use crate::fastnetmon::FirstFrame;

/// The attacked customer and the flood's port.
pub const TARGET: &str = SERVERS_V4[0];
pub const PORT: &str = "27015";
/// hping3's gap between packets (`-i u50`, as `tests/bgp.rs`), 64-byte
/// UDP payloads.
pub const GAP: &str = "u50";
pub const PAYLOAD: &str = "64";
/// The detector's settings: per-address floor, hold, quiet, the default
/// poll interval (not passed), the interface's configured capacity.
pub const FLOOR_PPS: u64 = 5_000;
pub const HOLD_MS: u64 = 200;
pub const QUIET_MS: u64 = 1_000;
pub const INTERVAL_MS: u64 = 100;
pub const CAPACITY: &str = "1M";
/// How often BIRD is asked (two `birdc` calls a round, then this sleep).
pub const POLL_MS: u64 = 10;
/// A route not in BIRD (or not gone) this long after the flood's start
/// (or stop) fails the trial.
const TIMEOUT: Duration = Duration::from_secs(15);
/// Between trials, once the routes are gone.
pub const SETTLE: Duration = Duration::from_millis(1_000);
const LOG_TAIL: usize = 30;

/// One trial, wall-clock Unix ms (fractional where the bench read its clock).
#[derive(Clone, Debug)]
pub struct Trial {
    pub first_frame_ms: f64,
    /// The incident's `opened` entry.
    pub opened_ms: f64,
    /// The `birdc` answer that first showed each route came back.
    pub flowspec_in_ms: f64,
    pub blackhole_in_ms: f64,
    /// The incident's `resolved` entry.
    pub resolved_ms: f64,
    /// The `birdc` answer that first showed each route gone came back.
    pub flowspec_gone_ms: f64,
    pub blackhole_gone_ms: f64,
    pub flood_pps: f64,
}

impl Trial {
    pub fn detect(&self) -> f64 {
        self.opened_ms - self.first_frame_ms
    }
    pub fn flowspec_in(&self) -> f64 {
        self.flowspec_in_ms - self.first_frame_ms
    }
    pub fn blackhole_in(&self) -> f64 {
        self.blackhole_in_ms - self.first_frame_ms
    }
    pub fn flowspec_gone(&self) -> f64 {
        self.flowspec_gone_ms - self.resolved_ms
    }
    pub fn blackhole_gone(&self) -> f64 {
        self.blackhole_gone_ms - self.resolved_ms
    }
    pub fn both_gone(&self) -> f64 {
        self.flowspec_gone().max(self.blackhole_gone())
    }
}

pub struct Figures {
    pub detector_version: String,
    pub gobgpd_version: String,
    pub bird_version: String,
    pub kernel: String,
    pub cpu_model: String,
    pub trials: Vec<Trial>,
    /// The mean time of one round of BIRD polls (two `birdc` calls and the
    /// sleep): how late a figure may be.
    pub poll_round_ms: f64,
}

impl Figures {
    pub fn of(&self, f: fn(&Trial) -> f64) -> Vec<f64> {
        self.trials.iter().map(f).collect()
    }
}

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0)
}

/// The detector's configuration: the customers' /24 with a per-address
/// floor, the outside interface's capacity (for `min_bps_share`), and BGP
/// to BIRD with room for both announcements and every change of the run.
fn config(iface: &str) -> String {
    format!(
        "detection:\n  hold: {HOLD_MS}ms\n  quiet: {QUIET_MS}ms\n  baseline: {{ warmup: 1h }}\nnetworks:\n  hostgroups:\n    - name: customers\n      prefixes: [198.51.100.0/24]\n      families:\n        udp_flood: {{ pps: {FLOOR_PPS} }}\ninterfaces:\n  {iface}: {{ capacity_bps: {CAPACITY} }}\nbgp:\n  local_as: 64512\n  router_id: {ROUTER_PEERING_V4}\n  neighbors:\n    - {{ address: {UPSTREAM_PEERING_V4}, remote_as: 65000, connect_retry: 1s, families: [ipv4_unicast, ipv4_flowspec] }}\n  limits: {{ max_announcements: 2, max_changes_per_minute: 600, flowspec_min_v4: 28 }}\n  gobgpd: {{ api_port: 50061, listen_port: 0 }}\n"
    )
}

pub const FLOWSPEC: &str =
    "name: upstream-flowspec\ntrigger: { families: [udp_flood], min_bps_share: 0.5 }\nsteps:\n  - bgp: { action: flowspec, ttl: 10m }\n";
pub const RTBH: &str =
    "name: upstream-rtbh\ntrigger: { families: [udp_flood], min_bps_share: 90% }\nsteps:\n  - bgp: { action: blackhole, ttl: 10m }\n";

/// Ends the gobgpd recorded in a state directory when dropped.
struct EndGobgpd(std::path::PathBuf);

impl Drop for EndGobgpd {
    fn drop(&mut self) {
        end_recorded(&self.0);
    }
}

/// What BIRD holds of the two routes, from one round of `birdc`; `None`
/// where `birdc` failed.
#[derive(Clone, Copy, Debug)]
struct Seen {
    flowspec: Option<bool>,
    blackhole: Option<bool>,
}

fn look(bird: &Bird) -> Seen {
    let flowspec = bird.birdc(&["show", "route", "table", "flowspec4", "all"]).ok().map(|f4| {
        f4.contains(&format!("dst {TARGET}/32")) && f4.contains("proto 17") && f4.contains(&format!("dport {PORT}"))
    });
    // With no route to the address, `birdc` says `Network not found` and
    // exits non-zero.
    let blackhole = match bird.birdc(&["show", "route", "for", TARGET, "all"]) {
        Ok(bh) => Some(bh.contains("(65535,666)") && bh.contains("blackhole")),
        Err(BirdError::Birdc { output, .. }) if output.contains("Network not found") => Some(false),
        Err(_) => None,
    };
    Seen { flowspec, blackhole }
}

fn version_of(program: &Path) -> Result<String> {
    let out = Command::new(program).arg("--version").output().with_context(|| format!("{}", program.display()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

pub fn run(trials: usize) -> Result<Figures> {
    let bin = crate::detector_bin()?;
    let gobgpd = find_gobgpd().ok_or_else(|| anyhow!("gobgpd is not installed (Debian package gobgpd)"))?;
    let bird_bin = find_program("bird").ok_or_else(|| anyhow!("BIRD 2 is not installed (Debian package bird2)"))?;
    let machine = crate::report::Machine::read();
    let mut figures = Figures {
        detector_version: crate::fastnetmon::detector_version(&bin)?,
        gobgpd_version: version_of(&gobgpd)?,
        bird_version: version_of(&bird_bin)?,
        kernel: machine.kernel,
        cpu_model: machine.cpu_model,
        trials: Vec::new(),
        poll_round_ms: 0.0,
    };
    eprintln!("bench:   {}, {}, {}", figures.gobgpd_version, figures.bird_version, figures.detector_version);

    // Declared in this order, dropped in the reverse: the controller, then
    // gobgpd, BIRD, the upstream's namespace, the lab.
    let lab = RouterLab::new()?;
    let up = RouterUpstream::attach(&lab.router_ns)?;
    let bird = up.start_bird()?;
    let cfg = lab.dir.join("bgp.yaml");
    std::fs::write(&cfg, config(&lab.outside_if))?;
    let books = lab.dir.join("runbooks");
    std::fs::create_dir_all(&books)?;
    std::fs::write(books.join("flowspec.yaml"), FLOWSPEC)?;
    std::fs::write(books.join("rtbh.yaml"), RTBH)?;
    let state = lab.dir.join("state");
    let _end = EndGobgpd(state.clone());
    let mut ctl = Controller::builder_in(&bin, &lab.router_ns, &lab.outside_if, &lab.dir)
        .state_dir(&state)
        .args(["--node", "bench", "--on-stop", "detach", "--runbooks"])
        .arg(&books)
        .arg("--config")
        .arg(&cfg)
        .start()?;

    let mut polls = (0u64, Duration::ZERO);
    let result = (|| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while bird.bgp_state("detector")?.as_deref() != Some("Established") {
            ctl.check_alive()?;
            if Instant::now() > deadline {
                bail!("the session with BIRD is not Established after 30 s: {:?}", bird.bgp_state("detector")?);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for t in 0..trials {
            // Floods start at phases spread evenly over a poll interval.
            let stagger = Duration::from_millis(t as u64 * INTERVAL_MS / trials as u64);
            let trial =
                one(&lab, &bird, &mut ctl, stagger, &mut polls).with_context(|| format!("BGP trial {}", t + 1))?;
            eprintln!(
                "bench:   bgp trial {:>2}: FlowSpec in BIRD {:.0} ms, blackhole {:.0} ms after the first frame (incident at {:.0}); withdrawn {:.0} / {:.0} ms after the resolution ({:.0} pps)",
                t + 1,
                trial.flowspec_in(),
                trial.blackhole_in(),
                trial.detect(),
                trial.flowspec_gone(),
                trial.blackhole_gone(),
                trial.flood_pps
            );
            figures.trials.push(trial);
            std::thread::sleep(SETTLE);
        }
        Ok(())
    })();
    let stopped = ctl.stop_with(libc::SIGTERM, Duration::from_secs(15));
    let clean = crate::reaction::detached_in(&lab.router_ns, &lab.outside_if);
    result.map_err(|e| anyhow!("{e:#}\ncontroller log (tail):\n{}", ctl.log_tail(LOG_TAIL)))?;
    let status = stopped?;
    ensure!(status.success(), "`detector run` exited with {status} on SIGTERM\n{}", ctl.log_tail(LOG_TAIL));
    clean?;
    figures.poll_round_ms = polls.1.as_secs_f64() * 1e3 / polls.0.max(1) as f64;
    Ok(figures)
}

fn one(
    lab: &RouterLab,
    bird: &Bird,
    ctl: &mut Controller,
    stagger: Duration,
    polls: &mut (u64, Duration),
) -> Result<Trial> {
    let s = look(bird);
    ensure!(s.flowspec == Some(false) && s.blackhole == Some(false), "routes in BIRD before the flood: {s:?}");
    std::thread::sleep(stagger);

    let probe = FirstFrame::open(&lab.inet_ns, &lab.inet_if, TARGET.parse()?)?;
    let args = ["--udp", "-n", "-p", PORT, "-i", GAP, "-d", PAYLOAD, TARGET];
    let flood = Hping3::start(&lab.inet_ns, &args)?;
    let started = Instant::now();
    let (mut fs_in, mut bh_in) = (None, None);
    while fs_in.is_none() || bh_in.is_none() {
        let round = Instant::now();
        let s = look(bird);
        let at = now_ms();
        if s.flowspec == Some(true) {
            fs_in.get_or_insert(at);
        }
        if s.blackhole == Some(true) {
            bh_in.get_or_insert(at);
        }
        if started.elapsed() > TIMEOUT {
            let _ = flood.stop();
            bail!("not both routes in BIRD within {TIMEOUT:?} of the flood's start: FlowSpec {fs_in:?}, blackhole {bh_in:?}");
        }
        std::thread::sleep(Duration::from_millis(POLL_MS));
        polls.0 += 1;
        polls.1 += round.elapsed();
    }
    ctl.check_alive()?;
    let v: Value = serde_json::from_str(&ctl.get_ok("/api/incidents?active=true")?)?;
    let inc = v["incidents"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["target"] == TARGET))
        .ok_or_else(|| anyhow!("no open incident for {TARGET}: {v}"))?;
    let id = inc["id"].as_str().ok_or_else(|| anyhow!("incident without id: {inc}"))?.to_string();
    let opened_ms = entry_at(inc, "opened").ok_or_else(|| anyhow!("incident {id} has no opened entry: {inc}"))?;

    let report = flood.stop()?;
    let first_frame_ms = probe.wait()?;
    let stopped = Instant::now();
    let (mut fs_gone, mut bh_gone) = (None, None);
    while fs_gone.is_none() || bh_gone.is_none() {
        let round = Instant::now();
        let s = look(bird);
        let at = now_ms();
        if s.flowspec == Some(false) {
            fs_gone.get_or_insert(at);
        }
        if s.blackhole == Some(false) {
            bh_gone.get_or_insert(at);
        }
        if stopped.elapsed() > TIMEOUT {
            bail!("not both routes gone from BIRD within {TIMEOUT:?} of the flood's stop: FlowSpec {fs_gone:?}, blackhole {bh_gone:?}");
        }
        std::thread::sleep(Duration::from_millis(POLL_MS));
        polls.0 += 1;
        polls.1 += round.elapsed();
    }
    // The resolution is stored before its runbook steps run; read it back.
    let deadline = Instant::now() + Duration::from_secs(5);
    let resolved_ms = loop {
        let inc: Value = serde_json::from_str(&ctl.get_ok(&format!("/api/incidents/{id}"))?)?;
        if let Some(at) = entry_at(&inc, "resolved") {
            break at;
        }
        if Instant::now() > deadline {
            bail!("incident {id} has no resolved entry though its routes are withdrawn: {inc}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (flowspec_in_ms, blackhole_in_ms) = (fs_in.unwrap_or_default(), bh_in.unwrap_or_default());
    let (flowspec_gone_ms, blackhole_gone_ms) = (fs_gone.unwrap_or_default(), bh_gone.unwrap_or_default());
    // Every time is this machine's wall clock; cause comes before effect
    // (the incident's times are whole ms, the first frame's fractional).
    ensure!(
        first_frame_ms <= opened_ms + 1.0 && opened_ms <= flowspec_in_ms.min(blackhole_in_ms) + 1.0,
        "times out of order: first frame {first_frame_ms:.1}, opened {opened_ms}, FlowSpec {flowspec_in_ms:.1}, blackhole {blackhole_in_ms:.1} (Unix ms)"
    );
    ensure!(
        resolved_ms <= flowspec_gone_ms.min(blackhole_gone_ms) + 1.0,
        "withdrawn before the resolution: resolved {resolved_ms}, FlowSpec gone {flowspec_gone_ms:.1}, blackhole gone {blackhole_gone_ms:.1} (Unix ms)"
    );
    Ok(Trial {
        first_frame_ms,
        opened_ms,
        flowspec_in_ms,
        blackhole_in_ms,
        resolved_ms,
        flowspec_gone_ms,
        blackhole_gone_ms,
        flood_pps: report.pps(),
    })
}

/// The time of an incident's first timeline entry of `kind`, Unix ms.
fn entry_at(inc: &Value, kind: &str) -> Option<f64> {
    inc["timeline"]
        .as_array()?
        .iter()
        .find(|e| e["kind"] == kind)
        .and_then(|e| e["at"].as_str())
        .and_then(time_ms::parse)
        .map(|ms| ms as f64)
}
