//! Network mode's counting against the real kernel, read straight from
//! its maps: per host group (exact) and per protected address (behind its
//! heavy-hitter sketch), incoming in the XDP program and outgoing in the
//! egress program. Frames are crafted and sent over the lab's veth pair:
//! from the generator for incoming, out of the target's end for outgoing.
//! The protected addresses are not the target's own, so its kernel answers
//! none of them: every frame counted is one a test sent.

mod common;

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use aya::programs::{tc::TcAttachOptions, LinkOrder, TcAttachType};
use common::{cpus, expected_count, pin_to, require_root, sketched_count, Lab};
use detector::{
    flood::{
        exact::PacketSocket,
        frame::{self, Frame, FrameSpec, Kind},
    },
    iface,
    kernel::{
        counters::CounterMaps,
        ebpf::{self, CountingOptions},
        targets::{TargetMaps, SWEEP_POLLS},
        xdp::{self, Attachment, ModeChoice},
    },
    mitigate::prefix::Prefix,
    sources::{addr_key, key_addr},
    targets::Direction,
};
use detector_common::{
    known::EGRESS_PROGRAM, maps::ClassCounters, sketch::HOT_BATCH, targets::TargetStats, TrafficClass, CLASS_COUNT,
};

/// The counting program on the target's end, and, with `egress`, the
/// egress program (attached here with TCX, its link held by the object;
/// learning stays off: its switch is never set).
struct Target {
    _attachment: Attachment,
    counters: CounterMaps,
    targets: TargetMaps,
}

fn attach(lab: &Lab, egress: bool) -> Target {
    let _in = lab.enter_tgt().unwrap();
    let mut obj = ebpf::load_counting(&CountingOptions::new(4096)).unwrap();
    let counters = CounterMaps::take(&mut obj).unwrap();
    let targets = TargetMaps::take(&mut obj).unwrap();
    let mut attachment = xdp::attach(obj, &lab.tgt_if, ModeChoice::Native, false, None).unwrap();
    if egress {
        let prog = ebpf::load_classifier(attachment.ebpf_mut(), "detector", EGRESS_PROGRAM).unwrap();
        prog.attach_with_options(&lab.tgt_if, TcAttachType::Egress, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .unwrap();
    }
    Target { _attachment: attachment, counters, targets }
}

fn nets(list: &[(&str, u32)]) -> Vec<(Prefix, u32)> {
    list.iter().map(|(p, g)| (p.parse().unwrap(), *g)).collect()
}

/// Sends from a thread pinned to one CPU (as `tests/counting.rs`: the
/// frames all meet one CPU's sketch), from the generator's end or out of
/// the target's.
fn send(lab: &Lab, from_target: bool, frames: &[Vec<u8>]) {
    send_on(lab, cpus()[0], from_target, frames);
}

/// Sends from `cpu`: a veth receives a frame on the CPU that sent it.
fn send_on(lab: &Lab, cpu: usize, from_target: bool, frames: &[Vec<u8>]) {
    pin_to(cpu);
    let (_in, ifname) =
        if from_target { (lab.enter_tgt().unwrap(), &lab.tgt_if) } else { (lab.enter_gen().unwrap(), &lab.gen_if) };
    let sock = PacketSocket::open(iface::index(ifname).unwrap()).unwrap();
    for f in frames {
        sock.send(f).unwrap();
    }
}

fn build(kind: Kind, src: &str, dst: &str) -> Frame {
    build_sized(kind, src, dst, None)
}

fn build_sized(kind: Kind, src: &str, dst: &str, size: Option<usize>) -> Frame {
    frame::build(&FrameSpec {
        kind,
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [0xff; 6],
        vlans: vec![],
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        src_port: None,
        dst_port: None,
        size,
    })
    .unwrap()
}

/// Waits until the class counters hold `total` packets (the frames sent
/// out of the target are not there: this waits for the incoming ones).
fn counted(t: &Target, total: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while t.counters.classes().unwrap().total_packets() < total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Give a stray extra frame a moment to show up.
    std::thread::sleep(Duration::from_millis(100));
}

/// Waits until `group`'s outgoing totals hold `total` packets.
fn counted_out(t: &Target, group: u32, total: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while packets(&t.targets.group(group, Direction::Outgoing).unwrap()) < total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
}

fn packets(s: &TargetStats) -> u64 {
    s.counts.iter().map(|c| c.packets).sum()
}

fn find(list: &[(detector_common::maps::SourceKey, TargetStats)], ip: &str) -> Option<TargetStats> {
    list.iter().find(|(k, _)| *k == addr_key(ip.parse::<IpAddr>().unwrap())).map(|(_, s)| *s)
}

fn only(class: TrafficClass, packets: u64, bytes: u64) -> [ClassCounters; CLASS_COUNT] {
    let mut c = [ClassCounters::default(); CLASS_COUNT];
    c[class.index()] = ClassCounters { packets, bytes };
    c
}

#[test]
fn protected_destinations_count_in_their_group_and_heavy_ones_per_address() {
    require_root!();
    let lab = Lab::new().unwrap();
    let mut t = attach(&lab, false);
    let protected = nets(&[("203.0.113.0/24", 1), ("203.0.113.128/25", 2), ("2001:db8:5::/48", 3)]);
    assert!(t.targets.set_protected(&protected).unwrap());
    assert!(!t.targets.set_protected(&protected).unwrap(), "the same networks again change nothing");
    assert_eq!(t.targets.installed_groups(), vec![1, 2, 3]);

    let a = build(Kind::Udp, "198.51.100.7", "203.0.113.10");
    let b = build(Kind::Syn, "198.51.100.8", "203.0.113.200");
    let c = build(Kind::Icmp, "2001:db8:99::1", "2001:db8:5::1");
    let quiet = build(Kind::Udp, "198.51.100.9", "203.0.113.11");
    let outside = build(Kind::Udp, "198.51.100.7", "198.18.0.1");
    let mut frames = vec![a.bytes.clone(); 50];
    frames.extend(std::iter::repeat_n(b.bytes.clone(), 20));
    frames.extend(std::iter::repeat_n(c.bytes.clone(), 30));
    frames.extend(std::iter::repeat_n(quiet.bytes.clone(), 2));
    frames.extend(std::iter::repeat_n(outside.bytes.clone(), 40));
    send(&lab, false, &frames);
    counted(&t, frames.len() as u64);

    // Exact per group: the /25 is longer than the /24, so b is in group 2.
    let len = |f: &Frame| f.bytes.len() as u64;
    let g1 = t.targets.group(1, Direction::Incoming).unwrap();
    let mut want = only(TrafficClass::Udp, 52, 50 * len(&a) + 2 * len(&quiet));
    assert_eq!(g1.counts, want);
    let g2 = t.targets.group(2, Direction::Incoming).unwrap();
    want = only(TrafficClass::TcpSyn, 20, 20 * len(&b));
    assert_eq!(g2.counts, want);
    let g3 = t.targets.group(3, Direction::Incoming).unwrap();
    want = only(TrafficClass::Icmpv6, 30, 30 * len(&c));
    assert_eq!(g3.counts, want);
    for g in [0, 1, 2, 3, 4] {
        assert_eq!(packets(&t.targets.group(g, Direction::Outgoing).unwrap()), 0, "group {g} outgoing");
    }
    assert_eq!(packets(&t.targets.group(0, Direction::Incoming).unwrap()), 0);
    let groups = t.targets.groups().unwrap();
    assert_eq!(groups.iter().map(|(g, d, _)| (*g, *d)).collect::<Vec<_>>().len(), 6, "three groups, both ways");

    // Per address, from the sketch's admission on (one window: no poller).
    let incoming = t.targets.targets(Direction::Incoming).unwrap();
    let (ea, eb, ec) = (expected_count(50, 0), expected_count(20, 50), expected_count(30, 70));
    let sa = find(&incoming, "203.0.113.10").expect("a tracked");
    assert_eq!(
        (sa.group, sa.counts[TrafficClass::Udp.index()].packets, sa.counts[TrafficClass::Udp.index()].bytes),
        (1, ea, ea * len(&a))
    );
    let sb = find(&incoming, "203.0.113.200").expect("b tracked");
    assert_eq!((sb.group, sb.counts[TrafficClass::TcpSyn.index()].packets), (2, eb));
    let sc = find(&incoming, "2001:db8:5::1").expect("c tracked");
    assert_eq!((sc.group, sc.counts[TrafficClass::Icmpv6.index()].packets), (3, ec));
    assert!(find(&incoming, "203.0.113.11").is_none(), "a two-packet destination was admitted");
    assert_eq!(incoming.len(), 3, "{:?}", incoming.iter().map(|(k, _)| key_addr(k)).collect::<Vec<_>>());
    assert!(t.targets.targets(Direction::Outgoing).unwrap().is_empty());

    // Regrouped: the /25 goes, b's address falls back to the /24's group 1;
    // its entry (group 2) is removed, the others stay.
    assert!(t.targets.set_protected(&nets(&[("203.0.113.0/24", 1), ("2001:db8:5::/48", 3)])).unwrap());
    let incoming = t.targets.targets(Direction::Incoming).unwrap();
    assert!(find(&incoming, "203.0.113.200").is_none(), "an address whose group changed was kept");
    assert_eq!(incoming.len(), 2);
    let before = t.counters.classes().unwrap().total_packets();
    send(&lab, false, &vec![b.bytes.clone(); 10]);
    counted(&t, before + 10);
    let g1 = t.targets.group(1, Direction::Incoming).unwrap();
    assert_eq!(g1.counts[TrafficClass::TcpSyn.index()].packets, 10);
    assert_eq!(t.targets.group(2, Direction::Incoming).unwrap().counts[TrafficClass::TcpSyn.index()].packets, 20);

    // A neighbour of the /24 passes the prefilter (same /16) and is cached
    // as unprotected; once its own /24 is protected, the new generation of
    // the protected set makes the cache look it up again.
    let neighbour = build(Kind::Udp, "198.51.100.7", "203.0.114.10");
    let before = t.counters.classes().unwrap().total_packets();
    send(&lab, false, &vec![neighbour.bytes.clone(); 5]);
    counted(&t, before + 5);
    assert_eq!(packets(&t.targets.group(4, Direction::Incoming).unwrap()), 0);
    let with_neighbour = nets(&[("203.0.113.0/24", 1), ("203.0.114.0/24", 4), ("2001:db8:5::/48", 3)]);
    assert!(t.targets.set_protected(&with_neighbour).unwrap());
    let before = t.counters.classes().unwrap().total_packets();
    send(&lab, false, &vec![neighbour.bytes.clone(); 7]);
    counted(&t, before + 7);
    assert_eq!(t.targets.group(4, Direction::Incoming).unwrap().counts[TrafficClass::Udp.index()].packets, 7);

    // No protected networks: nothing is looked up or counted any more.
    assert!(t.targets.set_protected(&[]).unwrap());
    assert!(t.targets.targets(Direction::Incoming).unwrap().is_empty(), "entries outlived their networks");
    let before = t.counters.classes().unwrap().total_packets();
    send(&lab, false, &vec![a.bytes.clone(); 10]);
    counted(&t, before + 10);
    let g1 = t.targets.group(1, Direction::Incoming).unwrap();
    assert_eq!(g1.counts[TrafficClass::Udp.index()].packets, 52);
    assert!(t.targets.targets(Direction::Incoming).unwrap().is_empty());
}

/// Every CPU counts per destination: each has its own cache of address to
/// group and its own window, in arrays sized by the loader (a CPU without
/// them would count nothing in the groups, or per address). Frames to a protected address sent from each
/// CPU the test may run on, each CPU's counted in its group in its turn.
#[test]
fn protected_destinations_count_on_every_cpu() {
    require_root!();
    let lab = Lab::new().unwrap();
    let mut t = attach(&lab, false);
    t.targets.set_protected(&nets(&[("203.0.113.0/24", 1)])).unwrap();
    let f = build(Kind::Udp, "198.51.100.7", "203.0.113.10");
    let all = cpus();
    for (i, cpu) in all.iter().enumerate() {
        send_on(&lab, *cpu, false, &vec![f.bytes.clone(); 5]);
        let want = 5 * (i as u64 + 1);
        counted(&t, want);
        let got = packets(&t.targets.group(1, Direction::Incoming).unwrap());
        assert_eq!(got, want, "after CPU {cpu}'s frames (of {all:?})");
        let per_address: u64 = t.targets.targets(Direction::Incoming).unwrap().iter().map(|(_, s)| packets(s)).sum();
        assert_eq!(per_address, (i as u64 + 1) * sketched_count(5, 0), "per address after CPU {cpu}'s frames");
    }
}

#[test]
fn a_heavy_destination_is_added_up_exactly_past_the_sketch_and_its_rest_written_in_the_next_window() {
    require_root!();
    let lab = Lab::new().unwrap();
    let mut t = attach(&lab, false);
    t.targets.set_protected(&nets(&[("203.0.113.0/24", 1)])).unwrap();
    t.counters.new_window().unwrap();
    let short = build_sized(Kind::Udp, "198.51.100.7", "203.0.113.10", Some(64));
    let long = build_sized(Kind::Udp, "198.51.100.7", "203.0.113.10", Some(300));
    let (s, l) = (short.bytes.len() as u64, long.bytes.len() as u64);
    assert_ne!(s, l);
    let udp = TrafficClass::Udp.index();
    let entry = |t: &Target| find(&t.targets.targets(Direction::Incoming).unwrap(), "203.0.113.10").expect("tracked");

    // 24 short frames: the 24th is the sketch's first one in eight
    // (counted eight times its length) and makes the address the slot's
    // heavy one. The next batch, all long but the last, is added up and
    // written together, exactly: the sketch would have counted eight times
    // every eighth one's length. Three more long ones are held.
    let batch = HOT_BATCH as u64;
    let mut frames = vec![short.bytes.clone(); 24];
    frames.extend(std::iter::repeat_n(long.bytes.clone(), HOT_BATCH as usize - 1));
    frames.push(short.bytes.clone());
    frames.extend(std::iter::repeat_n(long.bytes.clone(), 3));
    send(&lab, false, &frames);
    counted(&t, frames.len() as u64);
    let sketched = sketched_count(24, 0);
    let e = entry(&t);
    assert_eq!((e.counts[udp].packets, e.counts[udp].bytes), (sketched + batch, sketched * s + (batch - 1) * l + s));

    // A new window: its first frame to the address writes the three held
    // ones with it (itself below the sketch's bar, not counted), and the
    // address goes through the sketch again.
    t.counters.new_window().unwrap();
    send(&lab, false, std::slice::from_ref(&short.bytes));
    counted(&t, frames.len() as u64 + 1);
    let e = entry(&t);
    assert_eq!(
        (e.counts[udp].packets, e.counts[udp].bytes),
        (sketched + batch + 3, sketched * s + (batch + 2) * l + s)
    );
    assert_eq!(packets(&t.targets.group(1, Direction::Incoming).unwrap()), frames.len() as u64 + 1, "the group exact");
}

#[test]
fn a_spray_over_a_slash_16_counts_whole_in_its_group_and_leaves_the_map_nearly_empty() {
    require_root!();
    let lab = Lab::new().unwrap();
    let mut t = attach(&lab, false);
    t.targets.set_protected(&nets(&[("10.1.0.0/16", 0)])).unwrap();
    let base = build(Kind::Udp, "198.51.100.7", "10.1.0.0");
    let heavy = build(Kind::Udp, "198.51.100.7", "10.1.77.77");
    // Every address of the /16 once, and one of them 2,000 times more
    // (3% of the packets), interleaved.
    let mut frames = Vec::with_capacity(65_536 + 2_000);
    for i in 0..65_536u32 {
        let mut f = base.bytes.clone();
        f[14 + 18..14 + 20].copy_from_slice(&(i as u16).to_be_bytes());
        frames.push(f);
        if i % 32 == 0 && i / 32 < 2_000 {
            frames.push(heavy.bytes.clone());
        }
    }
    assert_eq!(frames.len(), 65_536 + 2_000);
    send(&lab, false, &frames);
    counted(&t, frames.len() as u64);
    let g = t.targets.group(0, Direction::Incoming).unwrap();
    assert_eq!(g.counts[TrafficClass::Udp.index()].packets, frames.len() as u64, "group total not exact");
    assert_eq!(g.counts[TrafficClass::Udp.index()].bytes, frames.len() as u64 * base.bytes.len() as u64);
    let tracked = t.targets.targets(Direction::Incoming).unwrap();
    // The batch read (a few syscalls) and aya's iterator (two per entry)
    // see the same entries with the same counts.
    let mut batched = tracked.clone();
    let mut iterated = t.targets.targets_iterated(Direction::Incoming).unwrap();
    batched.sort_by_key(|(k, _)| k.addr);
    iterated.sort_by_key(|(k, _)| k.addr);
    assert_eq!(batched, iterated);
    let h = find(&tracked, "10.1.77.77").expect("the heavy destination is tracked");
    assert!(h.counts[TrafficClass::Udp.index()].packets >= 1_500, "{:?}", h.counts);
    assert!(tracked.len() <= 1 + 10, "{} destinations tracked", tracked.len());
}

#[test]
fn what_protected_sources_send_counts_as_outgoing() {
    require_root!();
    let lab = Lab::new().unwrap();
    let mut t = attach(&lab, true);
    t.targets.set_protected(&nets(&[("203.0.113.0/24", 7), ("2001:db8:5::/48", 8)])).unwrap();
    // Out of the target's end, to addresses the generator does not have
    // (it answers none of them).
    let a = build(Kind::Udp, "203.0.113.9", "198.51.100.1");
    let b = build(Kind::Ack, "2001:db8:5::9", "2001:db8:99::1");
    let outside = build(Kind::Udp, "198.18.0.9", "198.51.100.1");
    let mut frames = vec![a.bytes.clone(); 30];
    frames.extend(std::iter::repeat_n(b.bytes.clone(), 12));
    frames.extend(std::iter::repeat_n(outside.bytes.clone(), 25));
    send(&lab, true, &frames);
    counted_out(&t, 7, 30);
    counted_out(&t, 8, 12);

    let g7 = t.targets.group(7, Direction::Outgoing).unwrap();
    assert_eq!(g7.counts, only(TrafficClass::Udp, 30, 30 * a.bytes.len() as u64));
    let g8 = t.targets.group(8, Direction::Outgoing).unwrap();
    assert_eq!(g8.counts, only(TrafficClass::TcpAck, 12, 12 * b.bytes.len() as u64));
    for g in [7, 8] {
        assert_eq!(packets(&t.targets.group(g, Direction::Incoming).unwrap()), 0, "group {g} incoming");
    }
    let outgoing = t.targets.targets(Direction::Outgoing).unwrap();
    let sa = find(&outgoing, "203.0.113.9").expect("a tracked");
    assert_eq!((sa.group, sa.counts[TrafficClass::Udp.index()].packets), (7, expected_count(30, 0)));
    let sb = find(&outgoing, "2001:db8:5::9").expect("b tracked");
    assert_eq!((sb.group, sb.counts[TrafficClass::TcpAck.index()].packets), (8, expected_count(12, 30)));
    assert_eq!(outgoing.len(), 2);
    assert!(t.targets.targets(Direction::Incoming).unwrap().is_empty());
}

/// The probe's read: after the first (whole) one, the addresses counted
/// in the window that ended, each once whatever CPU counted it, and a
/// slice of the sweep, whose passes begin every `SWEEP_POLLS` polls; an
/// address quiet in that window is not among the changed ones, and its
/// counts come back unchanged when the next pass reaches it.
#[test]
fn a_poll_reads_the_addresses_counted_in_the_window_that_ended() {
    require_root!();
    let lab = Lab::new().unwrap();
    let mut t = attach(&lab, false);
    t.targets.set_protected(&nets(&[("203.0.113.0/24", 1)])).unwrap();
    let a = build(Kind::Udp, "198.51.100.7", "203.0.113.10");
    let b = build(Kind::Udp, "198.51.100.7", "203.0.113.20");

    // Window 1: a and b heavy (at their 24th packet), each then a whole
    // batch past the sketch: the cache slot they share holds nothing of
    // theirs at the window's end (what it holds is written when the slot
    // next changes hands). The first read is whole.
    let n = 24 + HOT_BATCH as usize;
    t.counters.new_window().unwrap();
    let w1 = t.counters.epoch();
    let mut frames = vec![a.bytes.clone(); n];
    frames.extend(std::iter::repeat_n(b.bytes.clone(), n));
    send(&lab, false, &frames);
    counted(&t, 2 * n as u64);
    t.counters.new_window().unwrap();
    let first = t.targets.read(Direction::Incoming, w1, 2, &t.counters.windows().unwrap()).unwrap();
    assert!(first.whole, "the first read is not whole");
    assert_eq!(first.entries.len(), 2);

    // Window 2: only a. The read lists a as counted; b, quiet, is left to
    // the sweep's next pass (the whole read was one).
    let w2 = t.counters.epoch();
    send(&lab, false, &vec![a.bytes.clone(); n]);
    counted(&t, 3 * n as u64);
    t.counters.new_window().unwrap();
    let second = t.targets.read(Direction::Incoming, w2, 2, &t.counters.windows().unwrap()).unwrap();
    assert!(!second.whole);
    assert!(!second.quiet, "a counted in the window");
    assert_eq!(second.changed, 1, "{second:?}");
    let sa = find(&second.entries, "203.0.113.10").expect("a read");
    let before = find(&first.entries, "203.0.113.10").unwrap();
    assert!(sa.counts[TrafficClass::Udp.index()].packets > before.counts[TrafficClass::Udp.index()].packets);
    assert_eq!(second.entries.len(), 1, "{:?}", second.entries.iter().map(|(k, _)| key_addr(k)).collect::<Vec<_>>());

    // Quiet windows: nothing is listed as counted, and nothing is swept
    // until a pass is due, SWEEP_POLLS reads after the whole one.
    for read in 3..=SWEEP_POLLS {
        let w = t.counters.epoch();
        t.counters.new_window().unwrap();
        let quiet = t.targets.read(Direction::Incoming, w, 2, &t.counters.windows().unwrap()).unwrap();
        assert_eq!((quiet.changed, quiet.entries.len()), (0, 0), "read {read}: {quiet:?}");
        // The rings are not read once no CPU counted since the window
        // before (the one before covers a packet that read the epoch late).
        assert_eq!(quiet.quiet, read > 3, "read {read}: {quiet:?}");
    }
    // The pass: on a map this small, everything at once, each address once.
    let w = t.counters.epoch();
    t.counters.new_window().unwrap();
    let swept = t.targets.read(Direction::Incoming, w, 2, &t.counters.windows().unwrap()).unwrap();
    assert_eq!(swept.changed, 0);
    assert_eq!(swept.entries.len(), 2, "{:?}", swept.entries.iter().map(|(k, _)| key_addr(k)).collect::<Vec<_>>());
    let sb = find(&swept.entries, "203.0.113.20").expect("b swept");
    let b_before = find(&first.entries, "203.0.113.20").unwrap();
    assert_eq!(sb.counts, b_before.counts, "b counted while quiet");
    let sa2 = find(&swept.entries, "203.0.113.10").expect("a swept");
    assert_eq!(sa2.counts, sa.counts, "a counted while quiet");
}
