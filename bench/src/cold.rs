//! ns per packet with the caches evicted before each run: what a packet
//! costs in place at a few tens of thousands a second, where the sender
//! and the stack run on the receiving CPU between two packets and leave
//! little of the program's code and maps in the caches (the FastNetMon
//! section's in-place figures, about three times the warm test runs'). A
//! test run repeated millions of times (`testrun`) finds everything in the
//! L1 cache and the branch predictors trained, and cannot see that cost;
//! in place, the host's noise hides differences of tens of ns.
//!
//! One test run of one frame at a time, a buffer of [`EVICT_BYTES`] written
//! through before each (about what the sender's syscall and the stack
//! touch between two packets: it evicts the L1 and L2 caches and the TLB,
//! not the L3), the builds compared and the empty program taking turns run
//! by run, so the host's drift falls on all alike. The figure is a trimmed
//! mean (a tenth dropped at each end: interrupts, the odd migration).

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use aya::{maps::Array, programs::Xdp, Ebpf};
use detector::{
    kernel::{
        ebpf::{self, CountingOptions},
        targets::TargetMaps,
    },
    lab::Lab,
};
use detector_common::{
    flood::PASS_PROGRAM,
    maps::{DEFAULT_MAX_SOURCES, DETECTOR_PROGRAM, EPOCH_MAP},
};

use crate::{
    targets::{hold_empty_in_dispatcher, hold_in_dispatcher, table, udp},
    testrun::ns_per_packet,
};

/// Written through before each run.
pub const EVICT_BYTES: usize = 1 << 20;
/// Runs per build and case, spread over its loads.
pub const RUNS: u32 = 20_000;
/// Loads of each build per case. Where a load's maps and code land in
/// memory is worth ns by itself: three loads of one object, in the same
/// turns, kept their order over both halves of a case's runs, 15 to 25 ns
/// apart (2026-12-03, AMD EPYC). A build's figure is the mean over its
/// loads, with their range beside it.
pub const LOADS: usize = 4;
/// Runs per heavy-hitter window (a new epoch after each), as at 10,000
/// packets a second polled every 100 ms.
const WINDOW_RUNS: u32 = 1_000;

/// One build's figure in one case.
pub struct ColdCost {
    pub build: String,
    pub case: &'static str,
    /// The mean over the build's loads.
    pub detector_ns: f64,
    /// The cheapest and the dearest of its loads.
    pub loads_ns: (f64, f64),
    pub empty_ns: f64,
}

/// The cases: host mode, and a destination inside the protected networks.
const CASES: [(&str, bool); 2] =
    [("host mode (no protected networks)", false), ("network mode, to a protected address", true)];

/// The embedded build as `detector`, and each of `objects` (name, file of
/// another build of the counting object).
pub fn run(objects: &[(String, PathBuf)], runs: u32) -> Result<Vec<ColdCost>> {
    let mut builds: Vec<(String, Option<Vec<u8>>)> = vec![("detector".into(), None)];
    for (name, path) in objects {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        builds.push((name.clone(), Some(bytes)));
    }
    // Test runs execute on the calling CPU: one CPU for all, so no build
    // gets another CPU's caches.
    crate::firewall::pin_to(crate::firewall::sender_cpu())?;
    let mut out = Vec::new();
    for (case, networks) in CASES {
        out.extend(case_costs(&builds, case, networks, runs)?);
    }
    Ok(out)
}

/// A build loaded, its maps set for the case, its program held in a lab's
/// dispatcher.
struct Loaded {
    build: usize,
    obj: Ebpf,
    epoch: Array<aya::maps::MapData, u32>,
    _targets: TargetMaps,
    _lab: Lab,
}

fn case_costs(
    builds: &[(String, Option<Vec<u8>>)],
    case: &'static str,
    networks: bool,
    runs: u32,
) -> Result<Vec<ColdCost>> {
    let table = if networks { table()? } else { Vec::new() };
    // The builds' loads in turns (b0, b1, .., b0, b1, ..), so no build's
    // loads all come first.
    let mut loaded = Vec::new();
    for _ in 0..LOADS {
        for (build, (name, bytes)) in builds.iter().enumerate() {
            let opts = CountingOptions::new(DEFAULT_MAX_SOURCES);
            let mut obj = match bytes {
                Some(b) => ebpf::load_counting_object(b, &opts),
                None => ebpf::load_counting(&opts),
            }
            .with_context(|| format!("loading the {name} build"))?;
            let mut targets = TargetMaps::take(&mut obj)?;
            targets.set_protected(&table)?;
            let epoch = Array::try_from(ebpf::take_map(&mut obj, "detector", EPOCH_MAP)?)?;
            let lab = Lab::new()?;
            hold_in_dispatcher(&lab, ebpf::load_xdp(&mut obj, "detector", DETECTOR_PROGRAM)?, None)?;
            loaded.push(Loaded { build, obj, epoch, _targets: targets, _lab: lab });
        }
    }
    let mut pass_obj = ebpf::load_flood()?;
    let pass = ebpf::load_xdp(&mut pass_obj, "flood", PASS_PROGRAM)?;
    let pass_lab = Lab::new()?;
    hold_empty_in_dispatcher(&pass_lab, pass)?;
    let frame = if networks { udp("10.1.2.3")? } else { udp("192.0.2.2")? };

    let mut evict = vec![0u8; EVICT_BYTES];
    // A turn: one run of every load, then one of the empty program; as
    // many turns as a build has runs over its loads.
    let turns = runs / LOADS as u32;
    let mut times = vec![Vec::with_capacity(turns as usize); loaded.len() + 1];
    // The turn's order rotates turn by turn: whichever place in it a load
    // takes could be worth some ns by itself, so each takes every place
    // equally often.
    let places = loaded.len() + 1;
    for i in 0..turns {
        if i % WINDOW_RUNS == 0 {
            for l in loaded.iter_mut() {
                l.epoch.set(0, i / WINDOW_RUNS + 1, 0)?;
            }
        }
        for k in 0..places {
            let j = (k + i as usize) % places;
            write_through(&mut evict, i as u8);
            let ns = match loaded.get(j) {
                Some(l) => {
                    let det: &Xdp = l.obj.program(DETECTOR_PROGRAM).context("no detector program")?.try_into()?;
                    ns_per_packet(det, &frame, 1)?
                }
                None => ns_per_packet(pass, &frame, 1)?,
            };
            times[j].push(ns);
        }
    }
    let empty_ns = trimmed_mean(times.pop().unwrap_or_default());
    let per_load: Vec<f64> = times.into_iter().map(trimmed_mean).collect();
    let mut out = Vec::new();
    for (b, (name, _)) in builds.iter().enumerate() {
        let mine: Vec<f64> = loaded.iter().zip(&per_load).filter(|(l, _)| l.build == b).map(|(_, t)| *t).collect();
        let mean = mine.iter().sum::<f64>() / mine.len() as f64;
        let low = mine.iter().copied().fold(f64::INFINITY, f64::min);
        let high = mine.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let cost = ColdCost { build: name.clone(), case, detector_ns: mean, loads_ns: (low, high), empty_ns };
        eprintln!(
            "bench:   {case:<40} {name:<12} detector {mean:>6.1} ns (loads {low:.1} to {high:.1})  empty {:>6.1} ns  \
             added {:>6.1} ns",
            cost.empty_ns,
            mean - cost.empty_ns
        );
        out.push(cost);
    }
    Ok(out)
}

/// Writes a byte in every cache line of `buf`.
fn write_through(buf: &mut [u8], v: u8) {
    for i in (0..buf.len()).step_by(64) {
        buf[i] = buf[i].wrapping_add(v | 1);
    }
    std::hint::black_box(&buf);
}

/// The mean of the middle eight tenths.
fn trimmed_mean(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let cut = v.len() / 10;
    let mid = &v[cut..v.len() - cut];
    mid.iter().sum::<f64>() / mid.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trimmed_mean_drops_a_tenth_at_each_end() {
        let mut v: Vec<f64> = (1..=10).map(f64::from).collect();
        v[9] = 1e9;
        assert_eq!(trimmed_mean(v), (2..=9).map(f64::from).sum::<f64>() / 8.0);
        assert!(trimmed_mean(Vec::new()).is_nan());
    }
}
