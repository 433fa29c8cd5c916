//! From a flood's first frame to the first packet a runbook's rule drops:
//! the whole loop a user relies on (detection, the incident event, the
//! runbook engine, the rule in XDP), as a user runs it. Each trial has its
//! own lab and its own `detector run` with one runbook.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use detector::{
    detect::incident::time_ms,
    kernel::pins,
    lab::{process, Background, Controller, DetectorCommand, Lab},
    netns::NetnsGuard,
};
use serde_json::Value;

pub const RUNBOOK: &str = "bench-drop";
pub const FLOOD_PPS: u64 = 50_000;
pub const FLOOR_PPS: u64 = 5_000;
pub const SOURCES: u32 = 20;
pub const TOP: u32 = 10;
/// The default poll interval (not passed: the controller runs as a user
/// would run it) and the configured hold time.
pub const INTERVAL_MS: u64 = 100;
pub const HOLD_MS: u64 = 200;
/// How often the rule list is read while waiting for a drop.
pub const POLL_MS: u64 = 40;
/// A trial that has no dropping rule this long after the flood started fails.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long the controller may take to exit on SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Lines of the controller's log shown with an error.
const LOG_TAIL: usize = 30;

fn config() -> String {
    format!(
        "detection:\n  hold: {HOLD_MS}ms\n  baseline: {{ warmup: 1h }}\n  families:\n    udp_flood: {{ pps: {FLOOR_PPS} }}\n"
    )
}

fn runbook() -> String {
    format!(
        "name: {RUNBOOK}\ntrigger: {{ families: [udp_flood] }}\nsteps:\n  - mitigate: {{ action: drop, scope: top_sources, top: {TOP}, class: udp, ttl: 10m }}\n"
    )
}

/// One trial's wall-clock times, Unix milliseconds.
#[derive(Clone, Debug)]
pub struct Trial {
    /// The flood's first frame (`first_frame_ms` of its JSON report).
    pub first_frame_ms: u64,
    /// The incident's `opened` timeline entry.
    pub opened_ms: u64,
    /// The earliest `created_ms` among the runbook's rules that dropped.
    pub first_drop_ms: u64,
    /// Rules the runbook had installed when the first drop was seen.
    pub rules: usize,
}

impl Trial {
    pub fn total_ms(&self) -> f64 {
        self.first_drop_ms as f64 - self.first_frame_ms as f64
    }

    pub fn detect_ms(&self) -> f64 {
        self.opened_ms as f64 - self.first_frame_ms as f64
    }

    pub fn install_ms(&self) -> f64 {
        self.first_drop_ms as f64 - self.opened_ms as f64
    }
}

pub struct ReactionFigures {
    pub trials: Vec<Trial>,
}

impl ReactionFigures {
    pub fn total(&self) -> Vec<f64> {
        self.trials.iter().map(Trial::total_ms).collect()
    }

    pub fn detect(&self) -> Vec<f64> {
        self.trials.iter().map(Trial::detect_ms).collect()
    }

    pub fn install(&self) -> Vec<f64> {
        self.trials.iter().map(Trial::install_ms).collect()
    }
}

pub fn run(trials: usize) -> Result<ReactionFigures> {
    let bin = crate::detector_bin()?;
    let mut out = Vec::new();
    for t in 0..trials {
        // Floods start at phases spread evenly over a poll interval, as
        // real floods land anywhere in one.
        let stagger = Duration::from_millis(t as u64 * INTERVAL_MS / trials as u64);
        let trial = one(&bin, stagger).with_context(|| format!("reaction trial {}", t + 1))?;
        eprintln!(
            "bench:   reaction trial {:>2}: {:.0} ms to the first drop ({:.0} ms to the incident, {:.0} ms to the rule; {} rules)",
            t + 1,
            trial.total_ms(),
            trial.detect_ms(),
            trial.install_ms(),
            trial.rules
        );
        out.push(trial);
    }
    Ok(ReactionFigures { trials: out })
}

/// One trial in a fresh lab. The lab is declared first, so it is dropped
/// last, after the flood and the controller (on error too).
fn one(bin: &Path, stagger: Duration) -> Result<Trial> {
    let lab = Lab::new()?;
    let books = lab.dir.join("runbooks");
    std::fs::create_dir_all(&books)?;
    std::fs::write(books.join("bench-drop.yaml"), runbook())?;
    let cfg = lab.dir.join("detector.yaml");
    std::fs::write(&cfg, config())?;

    let mut ctl = start(&lab, bin, &books, &cfg)?;
    std::thread::sleep(stagger);
    let result = measure(&lab, bin, &mut ctl);
    let stopped = ctl.stop_with(libc::SIGTERM, STOP_GRACE);
    let clean = detached(&lab);
    let trial = result.map_err(|e| anyhow!("{e:#}\ncontroller log (tail):\n{}", ctl.log_tail(LOG_TAIL)))?;
    let status = stopped?;
    if !status.success() {
        bail!("`detector run` exited with {status} on SIGTERM\n{}", ctl.log_tail(LOG_TAIL));
    }
    clean?;
    Ok(trial)
}

fn measure(lab: &Lab, bin: &Path, ctl: &mut Controller) -> Result<Trial> {
    let flood = flood(lab, bin)?;
    let started = Instant::now();
    let state = ctl.state_dir.clone();
    let state_arg = state.to_str().ok_or_else(|| anyhow!("state dir is not UTF-8"))?;
    let (rules, view) = loop {
        ctl.check_alive()?;
        let v = cli_json(&lab.tgt_ns, bin, &["rules", "list", "--json", "--state-dir", state_arg])?;
        let ours: Vec<Value> = v["rules"]
            .as_array()
            .ok_or_else(|| anyhow!("no rules array: {v}"))?
            .iter()
            .filter(|r| r["origin"]["runbook"] == RUNBOOK)
            .cloned()
            .collect();
        if ours.iter().any(|r| r["dropped_packets"].as_u64().unwrap_or(0) > 0) {
            break (ours, v);
        }
        if started.elapsed() > TIMEOUT {
            bail!("no rule of runbook {RUNBOOK} dropped a packet within {TIMEOUT:?} of the flood's start: {v}");
        }
        std::thread::sleep(Duration::from_millis(POLL_MS));
    };
    let what = flood.what().to_string();
    let report: Value = process::json_of(&what, &flood.stop(libc::SIGTERM, Duration::from_secs(10))?)?;
    let first_frame_ms = report["first_frame_ms"]
        .as_u64()
        .ok_or_else(|| anyhow!("no first_frame_ms in the flood's report: {report}"))?;
    let first_drop_ms = rules
        .iter()
        .filter(|r| r["dropped_packets"].as_u64().unwrap_or(0) > 0)
        .filter_map(|r| r["created_ms"].as_u64())
        .min()
        .ok_or_else(|| anyhow!("no created_ms on the dropping rules: {view}"))?;
    let incident = rules
        .iter()
        .find_map(|r| r["origin"]["incident"].as_str())
        .ok_or_else(|| anyhow!("the runbook's rules name no incident: {view}"))?
        .to_string();

    let v = cli_json(&lab.tgt_ns, bin, &["incidents", &incident, "--json", "--state-dir", state_arg])?;
    let opened_ms = v["timeline"]
        .as_array()
        .and_then(|t| t.iter().find(|e| e["kind"] == "opened"))
        .and_then(|e| e["at"].as_str())
        .and_then(time_ms::parse)
        .ok_or_else(|| anyhow!("incident {incident} has no opened entry: {v}"))?;

    // Every time comes from SystemTime::now() on this machine (the flood,
    // the detection loop, the rule layer), so they compare; the order of
    // cause and effect checks it.
    if !(first_frame_ms <= opened_ms && opened_ms <= first_drop_ms) {
        bail!(
            "times out of order: first frame {first_frame_ms}, incident opened {opened_ms}, rule created {first_drop_ms} (Unix ms)"
        );
    }
    Ok(Trial { first_frame_ms, opened_ms, first_drop_ms, rules: rules.len() })
}

/// `detector ARGS` in namespace `ns`, stdout parsed as JSON; killed (and
/// an error) after 10 s: a hung command must not hang the bench.
fn cli_json(ns: &str, bin: &Path, args: &[&str]) -> Result<Value> {
    Ok(DetectorCommand::new(bin, ns).args(args).timeout(Duration::from_secs(10)).json()?)
}

/// `detector flood` out of the generator's end, as detection.rs floods;
/// stopped with SIGTERM (it reports what it sent) at the latest when dropped.
fn flood(lab: &Lab, bin: &Path) -> Result<Background> {
    let (rate, sources) = (FLOOD_PPS.to_string(), SOURCES.to_string());
    let args = ["--engine", "fast", "--kind", "udp", "--rate", &rate, "--duration", "3s", "--src", "198.18.0.0/24"];
    let args = [&args[..], &["--sources", &sources, "--spread", "seq", "--json"]].concat();
    Ok(DetectorCommand::flood(bin, lab, &args).spawn()?)
}

/// `detector run` in the lab's target namespace with the runbook; stopped
/// with SIGTERM (and `--on-stop detach`) at the latest when dropped.
fn start(lab: &Lab, bin: &Path, books: &Path, cfg: &Path) -> Result<Controller> {
    let c = Controller::builder(bin, lab)
        .args(["--node", "bench", "--on-stop", "detach", "--runbooks"])
        .arg(books)
        .arg("--config")
        .arg(cfg)
        .start()?;
    if !c.log_text().contains("runbook loaded") {
        // Say so, but carry on: the trial fails on its own if the
        // runbook never fires.
        eprintln!("bench:   the controller's log does not say the runbook loaded:\n{}", c.log_tail(LOG_TAIL));
    }
    Ok(c)
}

/// After the stop: `--on-stop detach` must have left no pinned state for
/// the lab's interface. Anything left is removed (the lab's namespace goes
/// next; pins in bpffs would outlive it) and reported.
fn detached(lab: &Lab) -> Result<()> {
    detached_in(&lab.tgt_ns, &lab.tgt_if)
}

/// The same for `ifname` in namespace `ns` (another lab's interface).
pub fn detached_in(ns: &str, ifname: &str) -> Result<()> {
    let (ns, ifname2) = (ns.to_string(), ifname.to_string());
    let left = std::thread::spawn(move || -> Result<Option<usize>> {
        let _in = NetnsGuard::enter(&ns)?;
        let dir = pins::dir(&ifname2)?;
        if !dir.exists() {
            return Ok(None);
        }
        Ok(Some(pins::detach_now(&dir)?))
    })
    .join()
    .map_err(|_| anyhow!("pin check panicked"))??;
    if let Some(n) = left {
        bail!("`--on-stop detach` left {n} pins for {ifname} (removed now)");
    }
    Ok(())
}
