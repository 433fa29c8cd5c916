//! What the sampled headers say: destination ports per class, reflector
//! services, and new connections to web ports. Pure.

use std::{mem::size_of, time::Duration};

use detector_common::{
    class::amplification_vector,
    sample::{PacketSample, SampleRecord, MAX_FRAME_DIVISOR, SAMPLES_RING_BYTES},
    TrafficClass, CLASS_COUNT,
};
use foldhash::{HashMap, HashMapExt};

use crate::detect::incident::TopPort;

/// Ports of the web services whose new connections http_flood watches.
pub const WEB_PORTS: [u16; 4] = [80, 443, 8080, 8443];

/// Samples wanted per second: 512 a poll at the default 100 ms. Enough for
/// stable shares (a share measured on 512 samples is within about 2
/// points), and for a signature within a poll or two of an attack's onset;
/// few enough that sampling stays a small part of the per-packet cost.
/// Each sample costs the program a ring entry (56 bytes, 312 with the
/// frame's head for captures) and the controller its reading: at 2,048 a
/// poll, a flood under about 20,000 pps had every packet sampled, and that
/// sampling was about 40% of the program's live cost per packet (`cargo
/// xtask bench`, BENCHMARKS.md, 2026-11-30). A budget per second, not per
/// poll, so a shorter interval does not sample more packets.
pub const TARGET_PER_SECOND: usize = 5_120;
/// A poll's target never goes under this (a 10 ms interval still has
/// shares to read)...
const MIN_PER_POLL: usize = 64;
/// ... nor over this: twice the target and the entries' headers must fit
/// in the ring (4 MiB) between two polls.
const MAX_PER_POLL: usize = (SAMPLES_RING_BYTES as usize / (size_of::<SampleRecord>() + 8)) / 4;

/// Frames wanted per second, for packet captures: one sample in a frame
/// divisor carries its frame's head (see
/// `detector_common::sample::carries_frame`), the rest only their headers.
/// At this rate a busy interface fills the calm buffer (1,000 packets by
/// default) in a second and an incident's capture (10,000) in ten; a quiet
/// one's every sample keeps its frame. A frame is 256 bytes the program
/// copies and the controller reads back from another CPU's cache: at every
/// sample's frame, that reading was two fifths of the controller's time at
/// 16k pps (a profile of the bench's flood).
pub const FRAMES_PER_SECOND: usize = 1_024;

/// Samples read from the ring in one poll, at most: this many times the
/// poll's target (the divisor is adapted on what was read).
const MAX_SAMPLES_FACTOR: usize = 4;

/// Samples wanted from a poll of `interval`.
fn target_per_poll(interval: Duration) -> usize {
    ((TARGET_PER_SECOND as f64 * interval.as_secs_f64()).round() as usize).clamp(MIN_PER_POLL, MAX_PER_POLL)
}
/// Frames wanted from a poll of `interval` (at least one).
fn frame_target_per_poll(interval: Duration) -> usize {
    ((FRAMES_PER_SECOND as f64 * interval.as_secs_f64()).round() as usize).max(1)
}

/// What the program is told to sample, and what a poll wants of it: the
/// one place the two divisors are adapted, poll after poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sampling {
    /// One packet in this many is sampled.
    pub divisor: u32,
    /// One sample in this many carries its frame; 0: none (captures off).
    pub frame_divisor: u32,
    /// Samples and frames wanted a poll.
    target: usize,
    frame_target: usize,
}

impl Sampling {
    /// At `divisor` to begin with, every sample with its frame when
    /// `captures`, for polls of `interval`.
    pub fn new(divisor: u32, captures: bool, interval: Duration) -> Sampling {
        Sampling {
            divisor,
            frame_divisor: u32::from(captures),
            target: target_per_poll(interval),
            frame_target: frame_target_per_poll(interval),
        }
    }

    /// Samples a poll reads from the ring, at most.
    pub fn max_drain(&self) -> usize {
        MAX_SAMPLES_FACTOR * self.target
    }

    /// Whether `next` is written to the program at once (a larger divisor,
    /// or only the frame divisor changed) or as the next window begins (a
    /// smaller divisor). Each CPU cuts its countdown to the next sample to
    /// the divisor in force at its first packet of a window (see
    /// `detector_common::sample::current_countdown`). A smaller divisor
    /// written mid-window misses the CPUs that have already cut theirs
    /// this window: one may skip up to twice the old divisor of calm
    /// packets after an attack, the packets the calm buffer wants whole.
    /// A larger one cannot wait a poll: a flood's samples fill the ring.
    pub fn at_once(&self, next: &Sampling) -> bool {
        next.divisor >= self.divisor
    }

    /// What to sample at after a poll that read `samples`: the same when
    /// nothing is to change. Captures stay off when they are.
    pub fn next(&self, samples: usize) -> Sampling {
        let frame_divisor = if self.frame_divisor == 0 {
            0
        } else {
            next_frame_divisor(self.frame_divisor, samples, self.frame_target)
        };
        Sampling { divisor: next_divisor(self.divisor, samples, self.target), frame_divisor, ..*self }
    }
}

pub const MIN_DIVISOR: u32 = 1;
pub const MAX_DIVISOR: u32 = 1 << 16;

#[derive(Clone, Debug, Default)]
pub struct ClassSamples {
    pub count: u64,
    pub dst_ports: HashMap<u16, u64>,
}

/// One poll's samples, grouped.
#[derive(Clone, Debug, Default)]
pub struct SampleView {
    pub classes: Vec<ClassSamples>,
    /// udp_amplification samples per reflector service (by source port).
    /// No other class's source ports are kept: nothing reads them, and in a
    /// flood from counting or random ports (hping3's) each sample would be
    /// a new entry.
    pub reflected: HashMap<&'static str, u64>,
    /// Sampled SYNs and ACKs to the web ports.
    pub web_syn: u64,
    pub web_ack: u64,
    /// One sample stood for this many packets.
    pub divisor: u32,
    pub seconds: f64,
}

impl SampleView {
    pub fn new<'a>(samples: impl IntoIterator<Item = &'a PacketSample>, divisor: u32, seconds: f64) -> SampleView {
        let mut v =
            SampleView { classes: vec![ClassSamples::default(); CLASS_COUNT], divisor, seconds, ..Default::default() };
        for s in samples {
            let Some(class) = TrafficClass::from_id(s.class as u32) else { continue };
            let c = &mut v.classes[class.index()];
            c.count += 1;
            if s.dport != 0 || s.sport != 0 {
                *c.dst_ports.entry(s.dport).or_default() += 1;
            }
            if class == TrafficClass::UdpAmplification {
                if let Some(service) = amplification_vector(s.sport) {
                    *v.reflected.entry(service).or_default() += 1;
                }
            }
            match web_side(s) {
                Some(WebSide::Syn) => v.web_syn += 1,
                Some(WebSide::Ack) => v.web_ack += 1,
                None => {}
            }
        }
        v
    }

    fn per_second(&self, count: u64) -> f64 {
        per_second(count, self.divisor, self.seconds)
    }

    /// New connections per second to the web ports, as far as the samples
    /// tell: SYNs that are followed by as many ACKs. A spoofed SYN flood has
    /// no ACKs, so it does not count as an HTTP connection flood.
    pub fn web_connections_pps(&self) -> f64 {
        self.per_second(self.web_syn.min(self.web_ack))
    }

    /// The busiest destination ports of `classes`, with their share of those
    /// classes' samples and that share of `pps`.
    pub fn top_dst_ports(&self, classes: &[TrafficClass], pps: f64, n: usize) -> Vec<TopPort> {
        let mut counts: HashMap<(&'static str, u16), u64> = HashMap::new();
        let mut total = 0;
        for c in classes {
            let cs = &self.classes[c.index()];
            total += cs.count;
            let proto = if c.is_tcp() { "tcp" } else { "udp" };
            for (port, k) in &cs.dst_ports {
                *counts.entry((proto, *port)).or_default() += k;
            }
        }
        if total == 0 {
            return Vec::new();
        }
        let mut top: Vec<TopPort> = counts
            .into_iter()
            .map(|((proto, port), k)| {
                let share = k as f64 / total as f64;
                TopPort { proto: proto.to_string(), port, pps: share * pps, share }
            })
            .collect();
        top.sort_by(|a, b| b.share.total_cmp(&a.share).then(a.port.cmp(&b.port)));
        top.truncate(n);
        top
    }

    /// The reflector services behind the udp_amplification class that carry
    /// at least `min_share` of it, busiest first.
    pub fn amplification_vectors(&self, min_share: f64) -> Vec<&'static str> {
        let cs = &self.classes[TrafficClass::UdpAmplification.index()];
        if cs.count == 0 {
            return Vec::new();
        }
        let mut v: Vec<(&'static str, u64)> = self
            .reflected
            .iter()
            .map(|(name, k)| (*name, *k))
            .filter(|(_, k)| *k as f64 / cs.count as f64 >= min_share)
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v.into_iter().map(|(name, _)| name).collect()
    }
}

/// Which side of a connection to a web port a sample is.
enum WebSide {
    Syn,
    Ack,
}

fn web_side(s: &PacketSample) -> Option<WebSide> {
    if !WEB_PORTS.contains(&s.dport) {
        return None;
    }
    match TrafficClass::from_id(s.class as u32)? {
        TrafficClass::TcpSyn => Some(WebSide::Syn),
        TrafficClass::TcpAck | TrafficClass::HttpRequest | TrafficClass::TcpEstablished => Some(WebSide::Ack),
        _ => None,
    }
}

fn per_second(count: u64, divisor: u32, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 * divisor as f64 / seconds
    } else {
        0.0
    }
}

/// [`SampleView::web_connections_pps`] of `samples`, without the rest of
/// a view (its port tables): what a poll needs of every attacked address.
pub fn web_connections_pps<'a>(samples: impl IntoIterator<Item = &'a PacketSample>, divisor: u32, seconds: f64) -> f64 {
    let (mut syn, mut ack) = (0, 0);
    for s in samples {
        match web_side(s) {
            Some(WebSide::Syn) => syn += 1,
            Some(WebSide::Ack) => ack += 1,
            None => {}
        }
    }
    per_second(u64::min(syn, ack), divisor, seconds)
}

/// The next sampling divisor: double it when a poll brought more than twice
/// its `target`, halve it when under half. Powers of two, bounded.
fn next_divisor(current: u32, got: usize, target: usize) -> u32 {
    let d = current.clamp(MIN_DIVISOR, MAX_DIVISOR);
    if got > 2 * target {
        (d * 2).min(MAX_DIVISOR)
    } else if got < target / 2 {
        (d / 2).max(MIN_DIVISOR)
    } else {
        d
    }
}

/// The next frame divisor, from a poll's `samples` and the frames wanted
/// of a poll: kept while the frames it gives those samples are within half
/// and twice the target (or it is already 1), otherwise the power of two
/// that meets the target at once. At once, not a halving a poll: as an
/// attack ends the samples fall by orders of magnitude, and the calm
/// traffic after it is what the calm buffer wants whole.
fn next_frame_divisor(current: u32, samples: usize, target: usize) -> u32 {
    let target = target.max(1);
    let current = current.clamp(1, MAX_FRAME_DIVISOR);
    let frames = samples / current as usize;
    if frames <= 2 * target && (frames >= target / 2 || current == 1) {
        return current;
    }
    samples.div_ceil(target).next_power_of_two().clamp(1, MAX_FRAME_DIVISOR as usize) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_adapts_both_divisors_and_keeps_captures_off() {
        let poll = Duration::from_millis(100);
        let s = Sampling::new(64, true, poll);
        assert_eq!((s.divisor, s.frame_divisor, s.max_drain()), (64, 1, 2048));
        // 16k pps at one in 64: 25 samples, under half the target.
        let s = s.next(25);
        assert_eq!((s.divisor, s.frame_divisor), (32, 1));
        // A flood: more than twice the target, and frames thinned at once.
        let s = s.next(2_000);
        assert_eq!((s.divisor, s.frame_divisor), (64, 32));
        let s = s.next(1_000);
        assert_eq!((s.divisor, s.frame_divisor), (64, 16));
        assert_eq!(s.next(1_000), s, "within both bands: unchanged");
        let off = Sampling::new(64, false, poll);
        assert_eq!(off.frame_divisor, 0);
        assert_eq!(off.next(2_000).frame_divisor, 0, "captures off stay off");
        assert_eq!(off.next(2_000).divisor, 128);
    }

    #[test]
    fn a_smaller_divisor_waits_for_the_next_window() {
        let poll = Duration::from_millis(100);
        let s = Sampling::new(64, true, poll);
        let up = s.next(2_000);
        assert!(up.divisor > s.divisor && s.at_once(&up), "a flood's divisor is written at once");
        let down = s.next(25);
        assert!(down.divisor < s.divisor && !s.at_once(&down), "a calmer one waits for the window");
        let frames_only = Sampling { frame_divisor: 32, ..s };
        assert!(s.at_once(&frames_only), "the frame divisor has no countdown to cut");
    }

    #[test]
    fn frame_divisor_follows_the_samples_a_poll() {
        let target = frame_target_per_poll(Duration::from_millis(100));
        assert_eq!(target, 102);
        // A quiet interface: every sample keeps its frame.
        assert_eq!(next_frame_divisor(1, 30, target), 1);
        assert_eq!(next_frame_divisor(1, 204, target), 1);
        // 16k pps at a sampling divisor of 2: 800 samples, one in 8 framed
        // (100 frames a poll), and kept while the rate wobbles.
        assert_eq!(next_frame_divisor(1, 800, target), 8);
        assert_eq!(next_frame_divisor(8, 900, target), 8);
        assert_eq!(next_frame_divisor(8, 500, target), 8);
        // The attack ends: back to every sample at once.
        assert_eq!(next_frame_divisor(64, 40, target), 1);
        // Never past the bits the program reads, nor under 1.
        assert_eq!(next_frame_divisor(1, usize::MAX / 2, 1), MAX_FRAME_DIVISOR);
        assert_eq!(next_frame_divisor(0, 0, 0), 1);
        assert_eq!(next_frame_divisor(u32::MAX, 10, 102), 1);
    }

    fn s(class: TrafficClass, sport: u16, dport: u16) -> PacketSample {
        PacketSample { class: class as u8, sport, dport, len: 64, ..Default::default() }
    }

    #[test]
    fn ports_vectors_and_connections() {
        let mut samples = Vec::new();
        samples.extend((0..60).map(|_| s(TrafficClass::UdpAmplification, 123, 40000)));
        samples.extend((0..30).map(|_| s(TrafficClass::UdpAmplification, 11211, 40001)));
        samples.extend((0..2).map(|_| s(TrafficClass::UdpAmplification, 1900, 40001)));
        samples.extend((0..50).map(|_| s(TrafficClass::TcpSyn, 5555, 443)));
        samples.extend((0..20).map(|_| s(TrafficClass::TcpAck, 5555, 443)));
        let v = SampleView::new(&samples, 64, 0.5);
        assert_eq!(v.amplification_vectors(0.05), vec!["ntp", "memcached"]);
        let ports = v.top_dst_ports(&[TrafficClass::UdpAmplification], 1000.0, 5);
        assert_eq!((ports[0].port, ports[0].proto.as_str()), (40000, "udp"));
        assert!((ports[0].share - 60.0 / 92.0).abs() < 1e-9);
        assert!((ports[0].pps - 1000.0 * 60.0 / 92.0).abs() < 1e-6);
        assert_eq!(v.top_dst_ports(&[TrafficClass::TcpSyn], 0.0, 5)[0].proto, "tcp");
        // min(50, 20) samples x 64 / 0.5 s.
        assert_eq!(v.web_connections_pps(), 20.0 * 64.0 / 0.5);
        assert_eq!(web_connections_pps(&samples, 64, 0.5), v.web_connections_pps());
        assert!(v.top_dst_ports(&[TrafficClass::Icmp], 10.0, 5).is_empty());
    }

    #[test]
    fn divisor_adapts() {
        let t = target_per_poll(Duration::from_millis(100));
        assert_eq!(t, 512);
        assert_eq!(next_divisor(64, 2 * t + 1, t), 128);
        assert_eq!(next_divisor(64, 2 * t, t), 64);
        assert_eq!(next_divisor(64, t, t), 64);
        assert_eq!(next_divisor(64, t / 2, t), 64);
        assert_eq!(next_divisor(64, t / 2 - 1, t), 32);
        assert_eq!(next_divisor(1, 0, t), 1);
        assert_eq!(next_divisor(MAX_DIVISOR, 1_000_000, t), MAX_DIVISOR);
        assert_eq!(next_divisor(0, 0, t), 1);
    }

    #[test]
    fn the_budget_is_per_second_within_what_a_poll_can_hold() {
        // A shorter interval samples as many packets a second, not more.
        assert_eq!(target_per_poll(Duration::from_millis(50)), 256);
        assert_eq!(target_per_poll(Duration::from_secs(1) / 4), 1280);
        // A 10 ms poll still gets shares to read; a long one what the ring
        // holds between polls with room for twice as many.
        assert_eq!(target_per_poll(Duration::from_millis(10)), MIN_PER_POLL);
        assert_eq!(target_per_poll(Duration::from_secs(60)), MAX_PER_POLL);
        let records = SAMPLES_RING_BYTES as usize / (size_of::<SampleRecord>() + 8);
        assert!(2 * MAX_PER_POLL <= records && MAX_PER_POLL > 2_000, "{MAX_PER_POLL} of {records}");
    }
}
