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
    flood::PASS_CLASSIFIER,
    known::{DEFAULT_LEARN_BUDGET, EGRESS_PROGRAM},
    maps::DEFAULT_MAX_SOURCES,
    maps::EPOCH_MAP,
    TrafficClass,
};

use crate::testrun::{median, new_destination_each, ns_per_packet, set_destination_low};

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
    let mut out: Vec<EgressCost> = cases
        .iter()
        .enumerate()
        .map(|(i, (label, ..))| EgressCost { label, detector_ns: median(&mut d[i]), empty_ns: median(&mut e[i]) })
        .collect();

    // A new peer at every packet: one run per frame, both programs alike,
    // so these carry the cold caches of a syscall per packet. On one CPU,
    // whose budget (new peers a CPU may learn in a window) the rows count
    // on: every peer learned, the budget renewed by a new window before it
    // runs out; then, the window's budget spent, every peer refused.
    learning.set(true)?;
    targets.set_protected(&[])?;
    let (learned, refused) = std::thread::scope(|s| {
        s.spawn(|| -> Result<(EgressCost, EgressCost)> {
            crate::firewall::pin_to(0)?;
            let before = learning.counts();
            let mut frame = datagram("192.0.2.1", "198.18.0.0")?;
            let (dl, el) = new_destination_each(det, pass, &mut frame, 0..NEW_PEERS, |i| {
                if i % DEFAULT_LEARN_BUDGET == 0 {
                    epoch.set(0, next_epoch, 0)?;
                    next_epoch += 1;
                }
                Ok(())
            })?;
            let n = learning.counts().learned - before.learned;
            ensure!(n == u64::from(NEW_PEERS), "a new peer every packet: {n} of {NEW_PEERS} learned");

            // The budget spent on peers of another /16, then as many new
            // ones again.
            let mut frame = datagram("192.0.2.1", "198.19.0.0")?;
            epoch.set(0, next_epoch, 0)?;
            for i in 0..DEFAULT_LEARN_BUDGET {
                set_destination_low(&mut frame, i);
                ns_per_packet(det, &frame, 1)?;
            }
            let before = learning.counts();
            let peers = DEFAULT_LEARN_BUDGET..DEFAULT_LEARN_BUDGET + NEW_PEERS;
            let (dr, er) = new_destination_each(det, pass, &mut frame, peers, |_| Ok(()))?;
            let after = learning.counts();
            ensure!(
                after.learned == before.learned && after.over_budget - before.over_budget == u64::from(NEW_PEERS),
                "past the budget: {} learned, {} refused of {NEW_PEERS}",
                after.learned - before.learned,
                after.over_budget - before.over_budget
            );
            Ok((
                EgressCost {
                    label: "learning: a new peer every packet (each learned), one run per frame",
                    detector_ns: dl,
                    empty_ns: el,
                },
                EgressCost {
                    label: "learning: a new peer every packet past the window's budget (refused), one run per frame",
                    detector_ns: dr,
                    empty_ns: er,
                },
            ))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the new-peer runs panicked"))?
    })?;
    out.push(learned);
    out.push(refused);
    Ok(out)
}

/// New peers per row of a new peer every packet: a quarter of the
/// known-peer map, which none of them evicts from.
pub const NEW_PEERS: u32 = 16_384;

/// Group 0's outgoing UDP packets.
fn outgoing(targets: &TargetMaps) -> Result<u64> {
    Ok(targets.group(0, Direction::Outgoing)?.counts[TrafficClass::Udp.index()].packets)
}
