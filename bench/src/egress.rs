//! The egress classifier's cost: ns per packet the host sends, under
//! `BPF_PROG_TEST_RUN`, beside an empty classifier. It runs on every packet
//! leaving a watched interface: it learns the host's real peers (while the
//! interface is calm) and, in network mode, counts what protected addresses
//! send.

use anyhow::{ensure, Result};
use aya::maps::Array;
use detector::{
    kernel::{
        ebpf::{self, CountingOptions},
        egress::Learning,
        targets::TargetMaps,
    },
    mitigate::prefix::Prefix,
    targets::Direction,
};
use detector_common::{
    flood::PASS_CLASSIFIER, known::EGRESS_PROGRAM, maps::DEFAULT_MAX_SOURCES, maps::EPOCH_MAP, TrafficClass,
};

use crate::testrun::{median, ns_per_packet};

/// Batches per case, taken in turns.
const ROUNDS: u32 = 9;

pub struct EgressCost {
    pub label: &'static str,
    pub detector_ns: f64,
    pub empty_ns: f64,
}

/// A 64-byte UDP datagram from `src` port 40000 to `dst` port 5000: what a
/// host's own application sends (not from a DNS or reflector port).
fn datagram(src: &str, dst: &str) -> Result<Vec<u8>> {
    crate::frames::udp(src, dst, Some((40_000, 5_000)))
}

/// ns per packet of the egress classifier and the empty one, per case.
pub fn costs(repeat: u32) -> Result<Vec<EgressCost>> {
    let mut obj = ebpf::load_counting(&CountingOptions::new(DEFAULT_MAX_SOURCES))?;
    let mut targets = TargetMaps::take(&mut obj)?;
    let mut learning = Learning::take(&mut obj)?;
    let mut epoch: Array<_, u32> = Array::try_from(ebpf::take_map(&mut obj, "detector", EPOCH_MAP)?)?;
    let det = ebpf::load_classifier(&mut obj, "detector", EGRESS_PROGRAM)?;
    let mut pass_obj = ebpf::load_flood()?;
    let pass = ebpf::load_classifier(&mut pass_obj, "flood", PASS_CLASSIFIER)?;

    let host = datagram("192.0.2.1", "198.51.100.7")?;
    let protected = datagram("10.1.2.3", "198.51.100.8")?;
    let one: Vec<(Prefix, u32)> = vec![("10.1.0.0/16".parse::<Prefix>().map_err(anyhow::Error::msg)?, 0)];
    // (label, learning on, protected networks, frame).
    type Case<'a> = (&'static str, bool, &'a [(Prefix, u32)], &'a [u8]);
    let cases: [Case; 4] = [
        ("nothing to do (learning off under attack, no network protected)", false, &[], &host),
        ("learning: the host's datagram to a known peer", true, &[], &host),
        ("network mode: a protected address's datagram (learning off)", false, &one, &protected),
        ("network mode and learning: a protected address's datagram to a known peer", true, &one, &protected),
    ];
    // Each case does what it stands for: learning learns the peer once (the
    // timed runs find it known), network mode counts the packet in its
    // group's outgoing totals.
    for (label, learn, nets, frame) in &cases {
        learning.set(*learn)?;
        targets.set_protected(nets)?;
        let before = (learning.counts().learned, outgoing(&targets)?);
        ns_per_packet(det, frame, 1)?;
        let after = (learning.counts().learned, outgoing(&targets)?);
        let want_counted = !nets.is_empty() as u64;
        ensure!(after.1 - before.1 == want_counted, "{label}: {} counted outgoing", after.1 - before.1);
        ensure!(after.0 - before.0 <= *learn as u64, "{label}: {} peers learned", after.0 - before.0);
    }
    ensure!(learning.counts().learned == 2, "two peers learned: {}", learning.counts().learned);

    let mut d = vec![Vec::new(); cases.len()];
    let mut e = vec![Vec::new(); cases.len()];
    let mut next_epoch = 1u32;
    for _ in 0..ROUNDS {
        for (i, (_, learn, nets, frame)) in cases.iter().enumerate() {
            learning.set(*learn)?;
            targets.set_protected(nets)?;
            // A new window per batch, as the poller makes them.
            epoch.set(0, next_epoch, 0)?;
            next_epoch += 1;
            d[i].push(ns_per_packet(det, frame, repeat / ROUNDS)?);
            e[i].push(ns_per_packet(pass, frame, repeat / ROUNDS)?);
        }
    }
    Ok(cases
        .iter()
        .enumerate()
        .map(|(i, (label, ..))| EgressCost { label, detector_ns: median(&mut d[i]), empty_ns: median(&mut e[i]) })
        .collect())
}

/// Group 0's outgoing UDP packets.
fn outgoing(targets: &TargetMaps) -> Result<u64> {
    Ok(targets.group(0, Direction::Outgoing)?.counts[TrafficClass::Udp.index()].packets)
}
