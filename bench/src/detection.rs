//! The controller itself, as a user runs it: how long from a flood's first
//! frame to an open incident, and what a poll costs (time, memory) while a
//! flood comes from over a million distinct spoofed sources.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use detector::{
    detect::incident::time_ms,
    flood::{
        self,
        frame::{self, FrameSpec, Kind},
        sources::{Sources, Spread},
        FloodPlan, FloodReport, Limit, Rate,
    },
    iface,
    lab::{self, Controller, Lab},
};

/// Floors low enough for the lab's rates; interval and hold stay default.
const CONFIG: &str = "detection:\n  quiet: 1s\n  families:\n    syn_flood: { pps: 5000 }\n";

pub struct DetectionFigures {
    pub trials: usize,
    pub latencies_ms: Vec<f64>,
    pub interval_ms: u64,
    pub hold_ms: u64,
    pub spoof: SpoofFigures,
}

pub struct SpoofFigures {
    pub frames: u64,
    pub distinct_sources: u64,
    pub seconds: f64,
    pub polls: u64,
    pub poll_p50_ms: f64,
    pub poll_p99_ms: f64,
    pub rss_mb: f64,
    pub peak_rss_mb: f64,
}

fn start(lab: &Lab) -> Result<Controller> {
    let bin = crate::detector_bin()?;
    let dir = lab.dir.join("state");
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("detector.yaml");
    std::fs::write(&cfg, CONFIG)?;
    // `detector run` in the lab's target namespace, on its target end.
    let c = Controller::builder(bin, lab).state_dir(&dir).args(["--node", "bench", "--config"]).arg(&cfg).start()?;
    Ok(c)
}

fn get(c: &Controller, path: &str) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(&c.get_ok(path)?)?)
}

fn plan(kind: Kind, net: &str, spread: Spread, limit: Limit, rate: Rate) -> Result<FloodPlan> {
    let sources = Sources::plan(net.parse()?, None, Some(spread), None)?;
    let spec = FrameSpec {
        kind,
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [0xff; 6],
        vlans: vec![],
        src: sources.first,
        dst: lab::TGT_V4.parse()?,
        src_port: None,
        dst_port: None,
        size: None,
    };
    Ok(FloodPlan { frame: frame::build(&spec)?, sources, limit, rate, threads: 1 })
}

fn flood_in(lab: &Lab, plan: FloodPlan) -> std::thread::JoinHandle<Result<FloodReport>> {
    let (ns, ifname) = (lab.gen_ns.clone(), lab.gen_if.clone());
    std::thread::spawn(move || {
        let _in = detector::netns::NetnsGuard::enter(&ns)?;
        Ok(flood::run(flood::Engine::Fast, iface::index(&ifname)?, &plan)?)
    })
}

/// Histogram buckets of `detector_poll_duration_seconds`: (le, count).
fn poll_buckets(metrics: &str) -> Vec<(f64, u64)> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("detector_poll_duration_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, rest) = l.split_once("\"} ")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, rest.trim().parse().ok()?))
        })
        .collect()
}

/// The upper bound of the bucket holding quantile `q` of the polls between
/// two scrapes.
fn quantile_bound(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> (u64, f64) {
    let deltas: Vec<(f64, u64)> = after.iter().zip(before).map(|((le, a), (_, b))| (*le, a - b)).collect();
    let total = deltas.last().map(|d| d.1).unwrap_or(0);
    let want = (total as f64 * q).ceil() as u64;
    let le = deltas.iter().find(|(_, n)| *n >= want.max(1)).map(|d| d.0).unwrap_or(f64::NAN);
    (total, le * 1000.0)
}

fn rss_mb(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| -> Result<f64> {
        let line = status.lines().find(|l| l.starts_with(key)).ok_or_else(|| anyhow!("no {key}"))?;
        Ok(line.split_whitespace().nth(1).unwrap_or("0").parse::<f64>()? / 1024.0)
    };
    Ok((kb("VmRSS:")?, kb("VmHWM:")?))
}

pub fn run(trials: usize, spoof_seconds: u64) -> Result<DetectionFigures> {
    let lab = Lab::new()?;
    let c = start(&lab)?;

    let mut latencies = Vec::new();
    for t in 0..trials {
        let f = flood_in(
            &lab,
            plan(
                Kind::Syn,
                "198.51.100.0/24",
                Spread::Random,
                Limit::Duration(Duration::from_millis(800)),
                Rate::Pps(50_000),
            )?,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        let inc = loop {
            let v = get(&c, "/api/incidents?active=true")?;
            if let Some(i) = v["incidents"].as_array().and_then(|a| a.first()).cloned() {
                break i;
            }
            if Instant::now() > deadline {
                bail!("trial {t}: no incident within 5 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let report = f.join().map_err(|_| anyhow!("flood thread panicked"))??;
        let opened =
            inc["timeline"][0]["at"].as_str().and_then(time_ms::parse).ok_or_else(|| anyhow!("no opened time"))?;
        latencies.push(opened as f64 - report.first_frame_ms as f64);
        let id = inc["id"].as_str().unwrap_or_default().to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        while get(&c, &format!("/api/incidents/{id}"))?["status"] != "resolved" {
            if Instant::now() > deadline {
                bail!("trial {t}: the incident did not resolve");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("bench:   detection trial {:>2}: {:.0} ms", t + 1, latencies[t]);
    }

    // A spoofed flood over 10.0.0.0/8 (2^24 addresses), long enough that
    // over a million distinct sources arrive.
    let before = poll_buckets(&c.metrics()?);
    let pid = c.pid().context("the controller is gone")?;
    let f = flood_in(
        &lab,
        plan(Kind::Udp, "10.0.0.0/8", Spread::Random, Limit::Duration(Duration::from_secs(spoof_seconds)), Rate::Max)?,
    );
    let mut rss = (0.0f64, 0.0f64);
    while !f.is_finished() {
        let r = rss_mb(pid)?;
        rss = (rss.0.max(r.0), r.1);
        std::thread::sleep(Duration::from_millis(200));
    }
    let report = f.join().map_err(|_| anyhow!("flood thread panicked"))??;
    std::thread::sleep(Duration::from_millis(300));
    let after = poll_buckets(&c.metrics()?);
    let (polls, p99) = quantile_bound(&before, &after, 0.99);
    let (_, p50) = quantile_bound(&before, &after, 0.50);
    let (_, peak) = rss_mb(pid)?;
    // Distinct addresses among n uniform draws from N: N (1 - e^(-n/N)).
    let n = report.sent as f64;
    let space = (1u64 << 24) as f64;
    let distinct = (space * (1.0 - (-n / space).exp())) as u64;

    Ok(DetectionFigures {
        trials,
        latencies_ms: latencies,
        interval_ms: 100,
        hold_ms: 200,
        spoof: SpoofFigures {
            frames: report.sent,
            distinct_sources: distinct,
            seconds: report.seconds,
            polls,
            poll_p50_ms: p50,
            poll_p99_ms: p99,
            rss_mb: rss.0,
            peak_rss_mb: peak,
        },
    })
}

/// The p-th percentile (nearest rank).
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}
