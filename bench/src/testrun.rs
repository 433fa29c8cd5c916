//! ns per packet under `BPF_PROG_TEST_RUN`: the detector's program and the
//! empty one, frame by frame.

use anyhow::{ensure, Context as _, Result};
use aya::programs::{TestRun, TestRunOptions, TestRunResult};
use detector::{
    kernel::counters::CounterMaps,
    kernel::ebpf::{self, CountingOptions},
};
use detector_common::{
    flood::PASS_PROGRAM,
    maps::{DEFAULT_MAX_SOURCES, DETECTOR_PROGRAM},
    TrafficClass,
};

use crate::frames;

pub struct ClassCost {
    pub label: &'static str,
    pub detector_ns: f64,
    pub empty_ns: f64,
}

/// The kernel's mean time of one run of `prog` (an XDP program or a
/// classifier) over `repeat` runs of `frame`.
pub(crate) fn ns_per_packet<P>(prog: &P, frame: &[u8], repeat: u32) -> Result<f64>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let r = prog
        .test_run(TestRunOptions { data_in: Some(frame), repeat, ..TestRunOptions::new() })
        .context("BPF_PROG_TEST_RUN")?;
    // The kernel reports the mean time of one run.
    Ok(r.duration.as_nanos() as f64)
}

/// The mean time of one run of `det` and of `empty` over one frame per
/// number in `numbers`: `frame` with its IPv4 destination's last two octets
/// set to the number (a new destination every packet), `before(number)`
/// called first. One test run per frame, both programs alike, so each
/// figure carries the cold caches of a syscall per packet.
pub(crate) fn new_destination_each<P, Q>(
    det: &P,
    empty: &Q,
    frame: &mut [u8],
    numbers: std::ops::Range<u32>,
    mut before: impl FnMut(u32) -> Result<()>,
) -> Result<(f64, f64)>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
    Q: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let n = f64::from(numbers.len() as u32);
    let (mut d, mut e) = (0.0, 0.0);
    for i in numbers {
        before(i)?;
        set_destination_low(frame, i);
        d += ns_per_packet(det, frame, 1)?;
        e += ns_per_packet(empty, frame, 1)?;
    }
    Ok((d / n, e / n))
}

/// Sets an IPv4 frame's destination's last two octets to `i`.
pub(crate) fn set_destination_low(frame: &mut [u8], i: u32) {
    frame[14 + 18..14 + 20].copy_from_slice(&(i as u16).to_be_bytes());
}

pub fn per_class(repeat: u32) -> Result<Vec<ClassCost>> {
    let mut det_obj = ebpf::load_counting(&CountingOptions::new(DEFAULT_MAX_SOURCES))?;
    let mut maps = CounterMaps::take(&mut det_obj)?;
    let det = ebpf::load_xdp(&mut det_obj, "detector", DETECTOR_PROGRAM)?;
    let mut pass_obj = ebpf::load_flood()?;
    let pass = ebpf::load_xdp(&mut pass_obj, "flood", PASS_PROGRAM)?;

    let mut out = Vec::new();
    for (label, class, frame) in frames::all() {
        // First, that the frame lands in the class it stands for.
        let before = maps.classes()?;
        ns_per_packet(det, &frame, 1)?;
        let after = maps.classes()?;
        let got: Vec<TrafficClass> =
            TrafficClass::ALL.into_iter().filter(|c| after.get(*c).packets != before.get(*c).packets).collect();
        ensure!(got == vec![class], "bench frame {label} was counted as {got:?}, not {}", class.name());

        // Interleave the two programs so drift hits both alike.
        let mut d = Vec::new();
        let mut e = Vec::new();
        for _ in 0..3 {
            // A new window per batch, as the controller's polls make them:
            // the source's first packets in it go through the sketch, the
            // rest are its heavy source's. (In one window of millions the
            // sketch's counters saturate, and it stops sampling the map.)
            maps.new_window()?;
            d.push(ns_per_packet(det, &frame, repeat / 3)?);
            e.push(ns_per_packet(pass, &frame, repeat / 3)?);
        }
        let cost = ClassCost { label, detector_ns: median(&mut d), empty_ns: median(&mut e) };
        eprintln!("bench:   {label:<18} detector {:>6.1} ns  empty {:>6.1} ns", cost.detector_ns, cost.empty_ns);
        out.push(cost);
    }
    Ok(out)
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
