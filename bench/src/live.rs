//! A live-frames flood into a lab veth, with the detector (or the empty
//! program) attached natively on the other end. The kernel's BPF run-time
//! statistics give the program's own nanoseconds per packet under real
//! traffic; a poller like the controller's tracks the heavy hitters.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context as _, Result};
use aya::{
    programs::{ProgramInfo, XdpMode},
    sys::{enable_stats, Stats},
};
use detector::{
    flood::{
        self,
        frame::{self, FrameSpec, Kind},
        sources::{Heavy, Sources, Spread},
        FloodPlan, Limit, Rate,
    },
    iface,
    kernel::counters::CounterMaps,
    kernel::ebpf::{self, CountingOptions},
    kernel::xdp::{self, ModeChoice},
    lab::Lab,
    sources::SourceTracker,
};
use detector_common::{flood::PASS_PROGRAM, maps::DEFAULT_MAX_SOURCES, TrafficClass};

use crate::testrun::median;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    ThousandSources,
    Spoofed,
}

impl Scenario {
    pub fn label(self) -> &'static str {
        match self {
            Scenario::ThousandSources => "1,000 sources (round robin)",
            Scenario::Spoofed => "random spoofed sources in 10.0.0.0/8, 10 heavy hitters at 0.5% each",
        }
    }
}

pub struct LiveRun {
    pub scenario: Scenario,
    pub program: &'static str,
    pub sent: u64,
    /// Frames the program ran on, per second.
    pub received_pps: f64,
    pub ns_per_packet: f64,
    /// Detector only: packets in its class counters.
    pub counted: Option<u64>,
    /// Detector, spoofed flood only: true heavy hitters among its top 10.
    pub heavy_found: Option<usize>,
    /// Detector only: the poll cycle (read the maps, start a new window), p50 and p99 in ms.
    pub poll_ms: Option<(f64, f64)>,
    pub max_tracked: Option<usize>,
}

const HEAVY: u32 = 10;
const POLL: Duration = Duration::from_millis(100);

pub fn floods(seconds: u64) -> Result<Vec<LiveRun>> {
    // Kernel BPF statistics on while this fd lives.
    let _stats = enable_stats(Stats::RunTime).context("enabling BPF run-time statistics")?;
    let mut out = Vec::new();
    for scenario in [Scenario::ThousandSources, Scenario::Spoofed] {
        for program in ["empty", "detector"] {
            let run = one(scenario, program, seconds)?;
            eprintln!(
                "bench:   {:<9} {:<28} {:>10.0} pps  {:>6.1} ns/packet",
                program,
                scenario.label().split(',').next().unwrap_or(""),
                run.received_pps,
                run.ns_per_packet
            );
            out.push(run);
        }
    }
    Ok(out)
}

fn plan(scenario: Scenario, seconds: u64) -> Result<FloodPlan> {
    let (net, count, spread, heavy) = match scenario {
        Scenario::ThousandSources => ("198.18.0.0/16", Some(1000), Spread::Sequential, None),
        Scenario::Spoofed => ("10.0.0.0/8", None, Spread::Random, Some(Heavy { count: HEAVY, percent: 5 })),
    };
    let sources = Sources::plan(net.parse()?, count, Some(spread), heavy)?;
    let spec = FrameSpec {
        kind: Kind::Udp,
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [0xff; 6],
        vlans: vec![],
        src: sources.first,
        dst: detector::lab::TGT_V4.parse()?,
        src_port: None,
        dst_port: None,
        size: Some(64),
    };
    Ok(FloodPlan {
        frame: frame::build(&spec)?,
        sources,
        limit: Limit::Duration(Duration::from_secs(seconds)),
        rate: Rate::Max,
        threads: 1,
    })
}

/// The receiving side: the detector with its maps, or the empty program.
enum Receiver {
    Detector { attachment: Box<xdp::Attachment>, maps: Box<CounterMaps> },
    Empty { obj: aya::Ebpf },
}

impl Receiver {
    fn info(&mut self) -> Result<ProgramInfo> {
        match self {
            Receiver::Detector { attachment, .. } => attachment.program_info().map_err(|e| anyhow!(e)),
            Receiver::Empty { obj } => {
                let p: &aya::programs::Xdp = obj.program(PASS_PROGRAM).context("pass")?.try_into()?;
                Ok(p.info()?)
            }
        }
    }
}

fn attach(lab: &Lab, program: &str) -> Result<Receiver> {
    let _in = lab.enter_tgt()?;
    if program == "detector" {
        let mut obj = ebpf::load_counting(&CountingOptions::new(DEFAULT_MAX_SOURCES))?;
        let mut maps = CounterMaps::take(&mut obj)?;
        let first = detector::samples::Sampling::new(64, true, POLL);
        maps.set_sampling(first.divisor, first.frame_divisor)?;
        let attachment = xdp::attach(obj, &lab.tgt_if, ModeChoice::Native, false, None)?;
        Ok(Receiver::Detector { attachment: Box::new(attachment), maps: Box::new(maps) })
    } else {
        let mut obj = ebpf::load_flood()?;
        let p = ebpf::load_xdp(&mut obj, "flood", PASS_PROGRAM)?;
        p.attach(&lab.tgt_if, XdpMode::Driver)?;
        Ok(Receiver::Empty { obj })
    }
}

fn one(scenario: Scenario, program: &'static str, seconds: u64) -> Result<LiveRun> {
    let lab = Lab::new()?;
    let mut rx = attach(&lab, program)?;
    let plan = plan(scenario, seconds)?;
    let before = rx.info()?;

    let gen_ns = lab.gen_ns.clone();
    let gen_if = lab.gen_if.clone();
    let flood_plan = plan.clone();
    let started = Instant::now();
    let sender = std::thread::spawn(move || -> Result<flood::FloodReport> {
        let _in = detector::netns::NetnsGuard::enter(&gen_ns)?;
        Ok(flood::run(flood::Engine::Fast, iface::index(&gen_if)?, &flood_plan)?)
    });

    // Poll like the controller while the flood runs.
    let mut polls = Vec::new();
    let mut per_source: HashMap<IpAddr, f64> = HashMap::new();
    let mut max_tracked = 0;
    let mut counted = None;
    if let Receiver::Detector { maps, .. } = &mut rx {
        let mut tracker = SourceTracker::new(Duration::from_secs(30));
        let mut sampling = detector::samples::Sampling::new(64, true, POLL);
        let (mut samples, mut frames) = (Vec::new(), Vec::new());
        let mut last = Instant::now();
        while !sender.is_finished() {
            std::thread::sleep(POLL.saturating_sub(last.elapsed()));
            let t0 = Instant::now();
            let elapsed = t0 - last;
            last = t0;
            let _classes = maps.classes()?;
            // As the controller reads: the window ends, then the sources
            // counted in it and a slice of the sweep.
            let window = maps.epoch();
            maps.new_window()?;
            let windows = maps.windows()?;
            let current = maps.read_sources(window, tracker.len(), &windows)?;
            maps.drain_samples(sampling.max_drain(), &mut samples, &mut frames);
            let next = sampling.next(samples.len());
            if next != sampling {
                maps.set_sampling(next.divisor, next.frame_divisor)?;
                sampling = next;
            }
            let update = tracker.update(t0 - started, elapsed, &current.entries, current.whole);
            maps.remove_sources(&update.idle);
            polls.push(t0.elapsed().as_secs_f64() * 1e3);
            max_tracked = max_tracked.max(tracker.len());
            for s in update.active {
                *per_source.entry(s.addr).or_default() += s.pps * elapsed.as_secs_f64();
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        counted = Some(maps.classes()?.get(TrafficClass::Udp).packets);
    }
    let report = sender.join().map_err(|_| anyhow!("flood thread panicked"))??;
    let after = rx.info()?;

    let runs = after.run_count() - before.run_count();
    let ns = (after.run_time() - before.run_time()).as_nanos() as f64;
    let heavy_found = (scenario == Scenario::Spoofed && program == "detector").then(|| {
        let mut top: Vec<(IpAddr, f64)> = per_source.into_iter().collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1));
        let heavy: Vec<IpAddr> = (0..HEAVY).map(|i| IpAddr::from([10, 0, 0, i as u8])).collect();
        top.iter().take(HEAVY as usize).filter(|(a, _)| heavy.contains(a)).count()
    });
    let poll_ms = (!polls.is_empty()).then(|| {
        let mut p = polls.clone();
        let p50 = median(&mut p);
        p.sort_by(f64::total_cmp);
        (p50, p[((p.len() as f64 * 0.99) as usize).min(p.len() - 1)])
    });
    Ok(LiveRun {
        scenario,
        program,
        sent: report.sent,
        received_pps: runs as f64 / report.seconds,
        ns_per_packet: if runs > 0 { ns / runs as f64 } else { 0.0 },
        counted,
        heavy_found,
        poll_ms,
        max_tracked: (program == "detector").then_some(max_tracked),
    })
}
