//! Which sampled packets go into which incident's capture. Pure: each poll
//! hands it an interface's samples, whether the interface is under attack
//! and its open incidents; it answers with the file operations to make.
//!
//! Per interface it keeps two rolling buffers:
//! - **before any attack**: the last `pre_attack_packets` samples taken
//!   while the interface was calm. It stops moving at an attack's onset,
//!   so what it holds is the traffic just before, not the attack's first
//!   polls.
//! - **the onset**: the samples taken while under attack in the last
//!   onset span (the detector's hold and a few polls, at least a second;
//!   see [`super::onset_span`]), at most `packets_per_incident`. An
//!   incident opens a few polls after its onset (the detector's hold); its
//!   file starts with its target's packets from here, so the attack's
//!   first packets are in it. Older ones are no incident's onset: a
//!   second target attacked later has its own, within the span of its
//!   opening.
//!
//! An incident's file starts with the calm buffer, then its target's
//! packets (to its address, or from it when outgoing; to its host group's
//! prefixes for a host-group incident) until it ends or holds
//! `packets_per_incident` of them. Reconciled with the open incidents at
//! every poll, not driven by events: an incident resolved by a runbook
//! between polls ends its capture at the next one.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use detector_common::sample::SampleRecord;

use super::CaptureConfig;
use crate::{
    detect::incident::{CaptureInfo, Incident},
    mitigate::prefix::Prefix,
    targets::Direction,
};

/// One sampled packet, as it goes into a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// When it was sampled: nanoseconds since the Unix epoch.
    pub at_ns: u64,
    /// The frame's length on the wire.
    pub orig_len: u32,
    /// Addresses, IPv4 mapped into IPv6 (what the target is matched on).
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// The frame's first bytes (at most the snap length).
    pub data: Box<[u8]>,
}

impl Packet {
    /// From a ring record; `mono_to_wall_ns` turns the program's
    /// CLOCK_MONOTONIC into wall-clock time. None without captured bytes.
    pub fn from_record(r: &SampleRecord, mono_to_wall_ns: i128, snaplen: usize) -> Option<Packet> {
        let bytes = r.captured();
        if bytes.is_empty() {
            return None;
        }
        let at = (r.ts_ns as i128 + mono_to_wall_ns).max(0) as u64;
        Some(Packet {
            at_ns: at,
            orig_len: r.header.len.max(bytes.len() as u32),
            src: r.header.src,
            dst: r.header.dst,
            data: bytes[..bytes.len().min(snaplen)].into(),
        })
    }
}

/// One poll's samples as the program took them, in time order: turned
/// into [`Packet`]s only where a buffer or a file keeps them (a busy
/// interface samples thousands a poll, of which the calm buffer keeps the
/// last thousand).
#[derive(Clone, Copy)]
pub struct Batch<'a> {
    pub records: &'a Arc<Vec<SampleRecord>>,
    /// What turns the program's CLOCK_MONOTONIC into wall-clock time.
    pub mono_to_wall_ns: i128,
}

/// What the store does with a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileOp {
    /// A new file: its header, the calm buffer, then the first packets.
    Start { id: String, iface: String, comment: String, pre_attack: Vec<Packet>, packets: Vec<Packet> },
    /// More packets at the end of a started file.
    Append { id: String, packets: Vec<Packet> },
    /// The incident ended: nothing more goes into its file.
    Finish { id: String },
}

#[derive(Default)]
struct Buffers {
    calm: Rolling,
    onset: Rolling,
}

/// A rolling buffer of the last `keep` samples with captured bytes, as
/// records (turned into [`Packet`]s only if a file takes them: as
/// `Packet`s that was an allocation and a free per sample). Copied in: a
/// poll brings at most a few hundred frames (one sample in the frame
/// divisor carries one), and the memory stays the buffer's. Holding the
/// polls' own vectors instead kept them from going back to the poll for
/// reuse, and a new vector each poll was fresh pages for the kernel to
/// fault in, a fifth of the controller's time under a long attack.
#[derive(Default)]
struct Rolling {
    kept: VecDeque<(SampleRecord, i128)>,
}

impl Rolling {
    /// Adds the poll's frames, keeping the last `keep`, and with `span_ns`
    /// none sampled longer than that before the newest.
    fn push(&mut self, batch: Batch<'_>, keep: usize, span_ns: Option<u64>) {
        if keep == 0 {
            self.clear();
            return;
        }
        let fresh = batch.records.iter().filter(|r| !r.captured().is_empty());
        // Of a poll with more than `keep`, only its last ones stay.
        let count = fresh.clone().count();
        for r in fresh.skip(count.saturating_sub(keep)) {
            if self.kept.len() >= keep {
                self.kept.pop_front();
            }
            self.kept.push_back((*r, batch.mono_to_wall_ns));
        }
        while self.kept.len() > keep {
            self.kept.pop_front();
        }
        if let (Some(span), Some((newest, _))) = (span_ns, self.kept.back()) {
            let oldest = newest.ts_ns.saturating_sub(span);
            while self.kept.front().is_some_and(|(r, _)| r.ts_ns < oldest) {
                self.kept.pop_front();
            }
        }
    }

    fn clear(&mut self) {
        self.kept.clear();
    }

    /// The kept samples, oldest first, with their clock offset.
    fn iter(&self) -> impl Iterator<Item = (&SampleRecord, i128)> + '_ {
        self.kept.iter().map(|(r, offset)| (r, *offset))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.kept.len()
    }
}

struct Tracked {
    iface: String,
    direction: Direction,
    /// Empty: every packet of the interface is the target's.
    prefixes: Vec<Prefix>,
    info: CaptureInfo,
}

impl Tracked {
    fn wants(&self, src: &[u8; 16], dst: &[u8; 16]) -> bool {
        if self.prefixes.is_empty() {
            return true;
        }
        let addr = match self.direction {
            Direction::Incoming => dst,
            Direction::Outgoing => src,
        };
        let Some(host) = Prefix::from_key(*addr, 128) else { return false };
        self.prefixes.iter().any(|net| net.contains(&host))
    }
}

pub struct Recorder {
    cfg: CaptureConfig,
    onset_span_ns: u64,
    ifaces: HashMap<String, Buffers>,
    open: BTreeMap<String, Tracked>,
    /// The captures that ended at the last poll, for its events.
    ended: HashMap<String, CaptureInfo>,
}

impl Recorder {
    /// `onset_span`: how long before its opening an incident's attack
    /// can have begun ([`super::onset_span`]).
    pub fn new(cfg: CaptureConfig, onset_span: Duration) -> Recorder {
        let onset_span_ns = onset_span.as_nanos().min(u64::MAX as u128) as u64;
        Recorder { cfg, onset_span_ns, ifaces: HashMap::new(), open: BTreeMap::new(), ended: HashMap::new() }
    }

    /// Carries on the capture of an incident open at the last stop, whose
    /// file already holds `held` (found by [`super::store`]); without a
    /// file, the next poll starts one (without the calm buffer, which the
    /// restart lost).
    pub fn resume(&mut self, inc: &Incident, held: Option<CaptureInfo>) {
        if let Some(mut info) = held {
            info.full = info.packets - info.pre_attack.min(info.packets) >= self.cfg.packets_per_incident as u64;
            self.open.insert(inc.id.clone(), tracked(inc, info));
        }
    }

    /// One poll of `iface`: its samples, whether it is under attack after
    /// this poll, and its open incidents.
    pub fn poll<'a>(
        &mut self,
        iface: &str,
        batch: Batch<'_>,
        under_attack: bool,
        open: impl IntoIterator<Item = &'a Incident>,
    ) -> Vec<FileOp> {
        self.ended.clear();
        let mut ops = Vec::new();
        let open: Vec<&Incident> = open.into_iter().filter(|i| i.iface == iface).collect();
        let ended: Vec<String> = self
            .open
            .iter()
            .filter(|(id, t)| t.iface == iface && !open.iter().any(|i| &i.id == *id))
            .map(|(id, _)| id.clone())
            .collect();
        let cap = self.cfg.packets_per_incident as u64;
        let snaplen = self.cfg.snaplen;
        let convert = |r: &SampleRecord| Packet::from_record(r, batch.mono_to_wall_ns, snaplen);
        let records = batch.records;
        let bufs = self.ifaces.entry(iface.to_string()).or_default();

        for inc in open {
            if let Some(t) = self.open.get_mut(&inc.id) {
                let room = cap.saturating_sub(t.info.packets - t.info.pre_attack) as usize;
                let more: Vec<Packet> = records
                    .iter()
                    .filter(|r| t.wants(&r.header.src, &r.header.dst))
                    .filter_map(convert)
                    .take(room)
                    .collect();
                t.info.packets += more.len() as u64;
                t.info.full = t.info.packets - t.info.pre_attack >= cap;
                if !more.is_empty() {
                    ops.push(FileOp::Append { id: inc.id.clone(), packets: more });
                }
                continue;
            }
            let mut t = tracked(inc, CaptureInfo::default());
            let pre: Vec<Packet> =
                bufs.calm.iter().filter_map(|(r, offset)| Packet::from_record(r, offset, snaplen)).collect();
            // The onset's packets (the polls before this one), then this
            // poll's; over the cap, the newest are left out, not the first.
            let mut first: Vec<Packet> = bufs
                .onset
                .iter()
                .filter(|(r, _)| t.wants(&r.header.src, &r.header.dst))
                .filter_map(|(r, offset)| Packet::from_record(r, offset, snaplen))
                .take(cap as usize)
                .collect();
            let room = (cap as usize).saturating_sub(first.len());
            first.extend(
                records.iter().filter(|r| t.wants(&r.header.src, &r.header.dst)).filter_map(convert).take(room),
            );
            t.info = CaptureInfo {
                packets: (pre.len() + first.len()) as u64,
                pre_attack: pre.len() as u64,
                full: first.len() as u64 >= cap,
            };
            ops.push(FileOp::Start {
                id: inc.id.clone(),
                iface: iface.to_string(),
                comment: describe(inc, &self.cfg),
                pre_attack: pre,
                packets: first,
            });
            self.open.insert(inc.id.clone(), t);
        }
        for id in ended {
            if let Some(t) = self.open.remove(&id) {
                self.ended.insert(id.clone(), t.info);
                ops.push(FileOp::Finish { id });
            }
        }

        // The buffers move after the files took what they needed.
        if under_attack {
            bufs.onset.push(batch, self.cfg.packets_per_incident, Some(self.onset_span_ns));
        } else {
            bufs.onset.clear();
            bufs.calm.push(batch, self.cfg.pre_attack_packets, None);
        }
        ops
    }

    /// What the capture of incident `id` holds: an open one, or one that
    /// ended at the last poll.
    pub fn info(&self, id: &str) -> Option<CaptureInfo> {
        self.open.get(id).map(|t| t.info).or_else(|| self.ended.get(id).copied())
    }

    /// The open captures and what each holds.
    pub fn open(&self) -> impl Iterator<Item = (&str, CaptureInfo)> {
        self.open.iter().map(|(id, t)| (id.as_str(), t.info))
    }

    /// The packets in the calm buffer of `iface`.
    #[cfg(test)]
    fn calm_len(&self, iface: &str) -> usize {
        self.ifaces.get(iface).map_or(0, |b| b.calm.len())
    }
}

fn tracked(inc: &Incident, info: CaptureInfo) -> Tracked {
    Tracked { iface: inc.iface.clone(), direction: inc.direction, prefixes: inc.target_prefixes.clone(), info }
}

/// The file's comment: which incident, where, and how the packets were
/// chosen.
fn describe(inc: &Incident, cfg: &CaptureConfig) -> String {
    let target = if inc.target.is_empty() { "the interface".to_string() } else { inc.target.clone() };
    format!(
        "detector incident {} (node {}, interface {}, {} {}): up to {} packets sampled before the attack's onset, then up to {} sampled packets of the attack while it ran, the ones XDP dropped included; {} bytes of each.",
        inc.id,
        inc.node,
        inc.iface,
        inc.direction.name(),
        target,
        cfg.pre_attack_packets,
        cfg.packets_per_incident,
        cfg.snaplen,
    )
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn addr(last: u8) -> [u8; 16] {
        Ipv4Addr::new(10, 0, 0, last).to_ipv6_mapped().octets()
    }

    /// A sample taken at `at` ns (the clock offset is 0 in these tests).
    fn pkt(at: u64, src: u8, dst: u8) -> SampleRecord {
        let mut r = SampleRecord { ts_ns: at, cap_len: 60, ..SampleRecord::default() };
        (r.header.src, r.header.dst, r.header.len) = (addr(src), addr(dst), 60);
        r
    }

    fn packet(at: u64, src: u8, dst: u8) -> Packet {
        Packet::from_record(&pkt(at, src, dst), 0, 256).unwrap()
    }

    fn poll<'a>(
        r: &mut Recorder,
        iface: &str,
        records: Vec<SampleRecord>,
        under_attack: bool,
        open: impl IntoIterator<Item = &'a Incident>,
    ) -> Vec<FileOp> {
        r.poll(iface, Batch { records: &Arc::new(records), mono_to_wall_ns: 0 }, under_attack, open)
    }

    fn incident(id: &str, iface: &str, target: Option<u8>, direction: Direction) -> Incident {
        let mut inc: Incident = serde_json::from_value(serde_json::json!({
            "id": id, "node": "n1", "iface": iface, "families": [], "vectors": [], "severity": "low",
            "status": "active", "started_at": "2026-11-30T10:00:00.000Z", "pps": 0.0, "bps": 0.0,
            "peak_pps": 0.0, "peak_bps": 0.0, "top_sources": [], "top_ports": [], "timeline": []
        }))
        .unwrap();
        inc.direction = direction;
        if let Some(t) = target {
            inc.target = format!("10.0.0.{t}");
            inc.target_prefixes = vec![Prefix::host(IpAddr::V4(Ipv4Addr::new(10, 0, 0, t)))];
        }
        inc
    }

    impl Recorder {
        /// With an onset span longer than any test's timeline (its
        /// samples' times are a few ns).
        fn new_for_test(cfg: CaptureConfig) -> Recorder {
            Recorder::new(cfg, Duration::from_secs(1))
        }
    }

    fn cfg(pre: usize, per: usize) -> CaptureConfig {
        CaptureConfig { pre_attack_packets: pre, packets_per_incident: per, ..CaptureConfig::default() }
    }

    fn times(ps: &[Packet]) -> Vec<u64> {
        ps.iter().map(|p| p.at_ns).collect()
    }

    #[test]
    fn calm_buffer_then_onset_then_the_attack_until_the_cap() {
        let mut r = Recorder::new_for_test(cfg(3, 5));
        // Calm: the rolling buffer keeps the last three.
        let none: [&Incident; 0] = [];
        assert!(poll(&mut r, "eth0", (1..=4).map(|t| pkt(t, 9, 1)).collect(), false, none).is_empty());
        assert_eq!(r.calm_len("eth0"), 3);
        // Onset (under attack, nothing open yet): the calm buffer stays.
        assert!(poll(&mut r, "eth0", vec![pkt(10, 7, 1), pkt(11, 7, 2)], true, none).is_empty());
        assert_eq!(r.calm_len("eth0"), 3);
        // Opening: the calm buffer, then the target's onset and this poll.
        let inc = incident("a", "eth0", Some(1), Direction::Incoming);
        let ops = poll(&mut r, "eth0", vec![pkt(20, 7, 1), pkt(21, 7, 1)], true, [&inc]);
        let [FileOp::Start { id, pre_attack, packets, comment, .. }] = ops.as_slice() else { panic!("{ops:?}") };
        assert_eq!(id, "a");
        assert_eq!(times(pre_attack), vec![2, 3, 4]);
        assert_eq!(times(packets), vec![10, 20, 21], "the onset's packet to 10.0.0.2 is another target's");
        assert!(comment.contains("incident a") && comment.contains("incoming 10.0.0.1"), "{comment}");
        assert_eq!(r.info("a"), Some(CaptureInfo { packets: 6, pre_attack: 3, full: false }));
        // Running: up to five packets of the attack in all.
        let ops = poll(&mut r, "eth0", (30..35).map(|t| pkt(t, 7, 1)).collect(), true, [&inc]);
        let [FileOp::Append { packets, .. }] = ops.as_slice() else { panic!("{ops:?}") };
        assert_eq!(times(packets), vec![30, 31]);
        assert_eq!(r.info("a"), Some(CaptureInfo { packets: 8, pre_attack: 3, full: true }));
        assert!(poll(&mut r, "eth0", vec![pkt(40, 7, 1)], true, [&inc]).is_empty(), "full");
        // Resolved: finished, its figures kept for the poll's events.
        let ops = poll(&mut r, "eth0", vec![pkt(50, 9, 1)], false, none);
        assert_eq!(ops, vec![FileOp::Finish { id: "a".into() }]);
        assert_eq!(r.info("a").map(|i| i.packets), Some(8));
        // Calm again: the buffer moves on from where the attack left it.
        poll(&mut r, "eth0", vec![pkt(60, 9, 1)], false, none);
        assert_eq!(r.info("a"), None);
        assert_eq!(r.calm_len("eth0"), 3);
    }

    #[test]
    fn the_onset_keeps_only_its_span() {
        let mut r = Recorder::new(cfg(3, 100), Duration::from_nanos(10));
        let none: [&Incident; 0] = [];
        // Under attack for a while, nothing open: samples at 0 to 49.
        for poll_at in [0u64, 10, 20, 30, 40] {
            poll(&mut r, "eth0", (poll_at..poll_at + 10).map(|t| pkt(t, 7, 1)).collect(), true, none);
        }
        // An incident opens: its onset is what the last 10 ns sampled
        // (39 to 49 with this poll's), not the attack's first polls.
        let inc = incident("a", "eth0", Some(1), Direction::Incoming);
        let ops = poll(&mut r, "eth0", vec![pkt(49, 7, 1)], true, [&inc]);
        let [FileOp::Start { packets, .. }] = ops.as_slice() else { panic!("{ops:?}") };
        assert_eq!(times(packets), (39..50).chain([49]).collect::<Vec<_>>());
    }

    #[test]
    fn targets_directions_and_interfaces_are_kept_apart() {
        let mut r = Recorder::new_for_test(cfg(10, 100));
        let a = incident("a", "eth0", Some(1), Direction::Incoming);
        let b = incident("b", "eth0", Some(2), Direction::Outgoing);
        let c = incident("c", "eth1", None, Direction::Incoming);
        let ops = poll(&mut r, "eth0", vec![pkt(1, 5, 1), pkt(2, 2, 5), pkt(3, 5, 2)], true, [&a, &b, &c]);
        assert_eq!(ops.len(), 2, "eth1's incident waits for eth1's poll: {ops:?}");
        for op in &ops {
            let FileOp::Start { id, packets, .. } = op else { panic!() };
            let want = if id == "a" { vec![1] } else { vec![2] };
            assert_eq!(times(packets), want, "{id}");
        }
        // Without prefixes (an interface-wide incident) every packet is its.
        let ops = poll(&mut r, "eth1", vec![pkt(4, 5, 1), pkt(5, 6, 7)], true, [&a, &b, &c]);
        let [FileOp::Start { packets, .. }] = ops.as_slice() else { panic!("{ops:?}") };
        assert_eq!(times(packets), vec![4, 5]);
        // a ends (resolved by a runbook between polls); b carries on.
        let ops = poll(&mut r, "eth0", vec![pkt(6, 2, 9)], true, [&b, &c]);
        assert_eq!(
            ops,
            vec![FileOp::Append { id: "b".into(), packets: vec![packet(6, 2, 9)] }, FileOp::Finish { id: "a".into() }]
        );
    }

    #[test]
    fn a_resumed_capture_carries_on_counting() {
        let mut r = Recorder::new_for_test(cfg(10, 4));
        let a = incident("a", "eth0", None, Direction::Incoming);
        r.resume(&a, Some(CaptureInfo { packets: 5, pre_attack: 2, full: false }));
        let ops = poll(&mut r, "eth0", (0..5).map(|t| pkt(t, 1, 1)).collect(), true, [&a]);
        let [FileOp::Append { packets, .. }] = ops.as_slice() else { panic!("{ops:?}") };
        assert_eq!(packets.len(), 1, "three of four were taken before the restart");
        assert!(r.info("a").unwrap().full);
        // One that was full at the stop stays full.
        let mut r = Recorder::new_for_test(cfg(10, 4));
        r.resume(&a, Some(CaptureInfo { packets: 6, pre_attack: 2, full: false }));
        assert!(r.info("a").unwrap().full);
        assert!(poll(&mut r, "eth0", vec![pkt(1, 1, 1)], true, [&a]).is_empty());
        // Without a file, the next poll starts one.
        let mut r = Recorder::new_for_test(cfg(10, 4));
        r.resume(&a, None);
        assert!(matches!(poll(&mut r, "eth0", vec![pkt(1, 1, 1)], true, [&a]).as_slice(), [FileOp::Start { .. }]));
    }

    #[test]
    fn packets_from_records() {
        let mut rec = SampleRecord::default();
        assert_eq!(Packet::from_record(&rec, 0, 256), None, "nothing captured");
        rec.cap_len = 200;
        rec.header.len = 1500;
        rec.ts_ns = 1_000;
        rec.frame[0] = 0xaa;
        let p = Packet::from_record(&rec, 5_000, 128).unwrap();
        assert_eq!((p.at_ns, p.orig_len, p.data.len(), p.data[0]), (6_000, 1500, 128, 0xaa));
    }
}
