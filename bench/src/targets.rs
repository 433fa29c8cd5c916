//! Network mode's costs: ns per packet of per-destination counting under
//! `BPF_PROG_TEST_RUN` beside the empty program (protected table empty,
//! destination outside the protected networks, destination inside), and
//! the poll cycle and map memory with 65,536 tracked destinations and under
//! a carpet-bombing flood over a /16.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use aya::{
    maps::{Array, Map, MapData, PerCpuHashMap, PerCpuValues},
    programs::{Xdp, XdpMode},
    util::nr_cpus,
    Ebpf,
};
use detector::{
    config::ConfigFile,
    detect::{Detector, Observation},
    kernel::targets::TargetsRead,
    kernel::{
        batch,
        dirty::Windows,
        ebpf::{self, CountingOptions},
        targets::TargetMaps,
    },
    lab::Lab,
    mitigate::prefix::Prefix,
    networks::Protected,
    rates::ClassRate,
    samples::SampleView,
    targets::{Direction, TargetTracker},
};
use detector_common::{
    flood::PASS_PROGRAM,
    maps::{CpuWindows, SourceKey, DEFAULT_MAX_SOURCES, DETECTOR_PROGRAM, EPOCH_MAP, WINDOW_MAP},
    sketch::EPOCH_MASK,
    targets::{
        TargetStats, GROUP_STATS_MAP, PROTECTED_MAP, TARGETS_IN_MAP, TARGETS_OUT_MAP, TARGET_CACHE_MAP,
        TARGET_CONTROL_MAP, TARGET_DIRTY_MAP, TARGET_SKETCH_MAP,
    },
    TrafficClass, CLASS_COUNT,
};

use crate::testrun::{median, new_destination_each, ns_per_packet};

/// Active destinations in the poll figures.
pub const ACTIVE: u32 = 65_536;
/// Polls measured per scenario.
const POLLS: usize = 30;
/// Batches per path in the per-packet figures, taken in turns.
const ROUNDS: u32 = 9;
/// Unrelated prefixes in the protected table besides the one under test.
const BACKGROUND_PREFIXES: u32 = 200;

/// (map, bytes).
type MapMemory = Vec<(&'static str, u64)>;

pub struct PathCost {
    pub label: &'static str,
    pub detector_ns: f64,
    pub empty_ns: f64,
}

pub struct PollCost {
    pub label: &'static str,
    /// Addresses the poll read (both directions), at most.
    pub entries: usize,
    /// A whole read (the first, or after a ring overflowed), not the
    /// probe's steady state.
    pub whole: bool,
    /// Addresses the program listed as counted in a window, on average.
    pub changed: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub struct Figures {
    pub repeat: u32,
    pub paths: Vec<PathCost>,
    pub polls: Vec<PollCost>,
    /// (map, bytes) of network mode's maps, from the kernel's `memlock`.
    pub memory: MapMemory,
    pub max_targets: u32,
    pub cpus: usize,
}

impl Figures {
    pub fn memory_total(&self) -> u64 {
        self.memory.iter().map(|(_, b)| b).sum()
    }
}

pub(crate) fn udp(dst: &str) -> Result<Vec<u8>> {
    crate::frames::udp("198.18.0.1", dst, None)
}

/// Keeps the programs in the kernel's XDP dispatcher for the bench's
/// lifetime by attaching them (native) to a lab veth: a test run of a
/// program the dispatcher does not hold adds it and takes it out again,
/// each a `synchronize_rcu`, which makes runs of one frame crawl. No
/// traffic crosses the lab.
pub(crate) fn hold_in_dispatcher(lab: &Lab, det: &mut Xdp, pass: Option<&mut Xdp>) -> Result<()> {
    {
        let _in = lab.enter_tgt()?;
        det.attach(&lab.tgt_if, XdpMode::Driver).context("attaching the detector in the lab")?;
    }
    if let Some(pass) = pass {
        hold_empty_in_dispatcher(lab, pass)?;
    }
    Ok(())
}

/// [`hold_in_dispatcher`] for the empty program alone, on the lab's other
/// end.
pub(crate) fn hold_empty_in_dispatcher(lab: &Lab, pass: &mut Xdp) -> Result<()> {
    let _in = lab.enter_gen()?;
    pass.attach(&lab.gen_if, XdpMode::Driver).context("attaching the empty program in the lab")?;
    Ok(())
}

fn prefixes(list: &[(&str, u32)]) -> Result<Vec<(Prefix, u32)>> {
    list.iter().map(|(p, g)| Ok((p.parse::<Prefix>().map_err(anyhow::Error::msg)?, *g))).collect()
}

/// The protected table of the per-packet runs: 10.1.0.0/16 in group 0 and
/// 200 unrelated /24s in other groups, so lookups walk a real trie.
pub(crate) fn table() -> Result<Vec<(Prefix, u32)>> {
    let mut nets = prefixes(&[("10.1.0.0/16", 0)])?;
    for i in 0..BACKGROUND_PREFIXES {
        let p = format!("172.{}.{}.0/24", 16 + i / 256, i % 256);
        nets.push((p.parse::<Prefix>().map_err(anyhow::Error::msg)?, 1 + i % 63));
    }
    Ok(nets)
}

pub fn run_all(repeat: u32) -> Result<Figures> {
    let paths = paths(repeat)?;
    let (polls, memory, max_targets) = polls_and_memory()?;
    Ok(Figures { repeat, paths, polls, memory, max_targets, cpus: nr_cpus().map_err(|(_, e)| e)? })
}

/// ns per packet, detector against the empty program, one frame repeated.
/// The last case is the figure the target is about.
pub fn paths(repeat: u32) -> Result<Vec<PathCost>> {
    let mut obj = ebpf::load_counting(&CountingOptions::new(DEFAULT_MAX_SOURCES))?;
    let mut targets = TargetMaps::take(&mut obj)?;
    let mut epoch: Array<_, u32> = Array::try_from(ebpf::take_map(&mut obj, "detector", EPOCH_MAP)?)?;
    let det = ebpf::load_xdp(&mut obj, "detector", DETECTOR_PROGRAM)?;
    let mut pass_obj = ebpf::load_flood()?;
    let pass = ebpf::load_xdp(&mut pass_obj, "flood", PASS_PROGRAM)?;
    let lab = Lab::new()?;
    hold_in_dispatcher(&lab, det, Some(pass))?;
    let inside = udp("10.1.2.3")?;
    let outside = udp("192.0.2.2")?;

    let one = prefixes(&[("10.1.0.0/16", 0)])?;
    let full = table()?;
    type Case<'a> = (&'static str, &'a [(Prefix, u32)], &'a [u8]);
    let cases: [Case; 4] = [
        ("protected table empty", &[], &outside),
        ("destination outside the protected networks", &full, &outside),
        ("destination inside, the /16 alone in the table", &one, &inside),
        ("destination inside (one heavy destination)", &full, &inside),
    ];
    let mut next_epoch = 1u32;
    for (label, nets, frame) in &cases {
        targets.set_protected(nets)?;
        // The frame counts where it should: in group 0 only when inside.
        let before = targets.group(0, Direction::Incoming)?.counts[TrafficClass::Udp.index()].packets;
        ns_per_packet(det, frame, 1)?;
        let after = targets.group(0, Direction::Incoming)?.counts[TrafficClass::Udp.index()].packets;
        ensure!(
            after - before == (*frame == inside.as_slice()) as u64,
            "{label}: counted {} in group 0",
            after - before
        );
    }
    // The cases take turns, a batch each per round, so the host's drift
    // (on a shared VM, tens of percent over a minute) falls on all alike
    // and the differences between them stand.
    let mut d = vec![Vec::new(); cases.len()];
    let mut e = vec![Vec::new(); cases.len()];
    for _ in 0..ROUNDS {
        for (i, (_, nets, frame)) in cases.iter().enumerate() {
            targets.set_protected(nets)?;
            // A new window per batch, as the poller makes them (a sketch
            // counter saturates at 2^20 packets).
            epoch.set(0, next_epoch, 0)?;
            next_epoch += 1;
            d[i].push(ns_per_packet(det, frame, repeat / ROUNDS)?);
            e[i].push(ns_per_packet(pass, frame, repeat / ROUNDS)?);
        }
    }
    let mut out = Vec::new();
    for (i, (label, _, _)) in cases.iter().enumerate() {
        let cost = PathCost { label, detector_ns: median(&mut d[i]), empty_ns: median(&mut e[i]) };
        eprintln!("bench:   {label:<45} detector {:>6.1} ns  empty {:>6.1} ns", cost.detector_ns, cost.empty_ns);
        out.push(cost);
    }
    // The same with a new destination every packet: each run is one frame,
    // so the per-CPU cache of address to group misses (inside: the trie is
    // walked every time) and the prefilter is all that spares the trie
    // (outside). Both programs run the same frames; the last heavy-path
    // case is appended after, as the headline figure.
    let heavy = out.pop();
    targets.set_protected(&full)?;
    for (label, base) in [
        ("inside, a new destination every packet (over the /16)", [10u8, 1]),
        ("outside, a new destination every packet (over 10.2.0.0/16)", [10, 2]),
    ] {
        let mut frame = udp(&format!("{}.{}.0.0", base[0], base[1]))?;
        epoch.set(0, next_epoch, 0)?;
        next_epoch += 1;
        let (d, e) = new_destination_each(det, pass, &mut frame, 0..SPREAD, |_| Ok(()))?;
        let cost = PathCost { label, detector_ns: d, empty_ns: e };
        eprintln!("bench:   {label:<45} detector {:>6.1} ns  empty {:>6.1} ns", cost.detector_ns, cost.empty_ns);
        out.push(cost);
    }
    out.extend(heavy);
    Ok(out)
}

/// Destinations of the spread paths, one frame each.
const SPREAD: u32 = 65_536;

/// The kernel's `memlock` figure for a map (its memory use, on 6.4 and later).
fn memlock(data: &MapData) -> Result<u64> {
    let fd = data.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:").and_then(|v| v.trim().parse().ok()))
        .context("no memlock in the map's fdinfo")
}

fn map_memory(obj: &Ebpf) -> Result<MapMemory> {
    let mut out = Vec::new();
    for name in [
        PROTECTED_MAP,
        TARGET_CONTROL_MAP,
        GROUP_STATS_MAP,
        TARGETS_IN_MAP,
        TARGETS_OUT_MAP,
        TARGET_SKETCH_MAP,
        WINDOW_MAP,
        TARGET_DIRTY_MAP,
        TARGET_CACHE_MAP,
        "TARGET_SCRATCH",
    ] {
        let data = match obj.map(name).with_context(|| format!("no map {name}"))? {
            Map::LpmTrie(d) | Map::Array(d) | Map::PerCpuArray(d) | Map::PerCpuLruHashMap(d) => d,
            _ => anyhow::bail!("map {name} has an unexpected type"),
        };
        out.push((name, memlock(data)?));
    }
    Ok(out)
}

fn key(i: u32) -> SourceKey {
    let [_, _, c, d] = i.to_be_bytes();
    SourceKey::from_ipv4_octets([10, 1, c, d])
}

/// What a bench poll moves the window with and reads the windows from, as
/// the probe does through `CounterMaps`.
struct Epoch {
    epoch: Array<MapData, u32>,
    windows: Array<MapData, CpuWindows>,
    buf: batch::Buffers,
}

impl Epoch {
    fn take(obj: &mut Ebpf) -> Result<Epoch> {
        let epoch = Array::try_from(ebpf::take_map(obj, "detector", EPOCH_MAP)?)?;
        let windows = Array::try_from(ebpf::take_map(obj, "detector", WINDOW_MAP)?)?;
        Ok(Epoch { epoch, windows, buf: Default::default() })
    }

    fn set(&mut self, window: u32) -> Result<()> {
        Ok(self.epoch.set(0, window, 0)?)
    }

    fn windows(&mut self) -> Result<Windows> {
        Ok(Windows::read(&self.windows, WINDOW_MAP, &mut self.buf)?)
    }
}

/// How a bench poll reads the per-address maps.
#[derive(Clone, Copy, PartialEq)]
enum ReadMode {
    /// As the probe does: the addresses counted in the window that just
    /// ended, and a slice of the sweep.
    Window,
    /// The whole of both maps (the probe's first read, or after a ring
    /// overflowed).
    Whole,
}

/// One poll as the probe and the poll loop do it: the window ended (a new
/// epoch), both directions' maps and the groups read, the tracker updated,
/// idle addresses removed, and detection over every address read and the
/// group. Returns (addresses read, addresses counted in the window, time).
/// With `BENCH_POLL_SPLIT` set, prints each poll's read, tracker and
/// detection times.
fn poll(
    maps: &mut TargetMaps,
    epoch: &mut Epoch,
    window: &mut u32,
    tracker: &mut TargetTracker,
    det: &mut Detector,
    now: Duration,
    mode: ReadMode,
) -> Result<(usize, usize, Duration)> {
    let t0 = Instant::now();
    let ended = *window;
    *window = (*window + 1) & EPOCH_MASK;
    epoch.set(*window)?;
    let (incoming, outgoing) = match mode {
        ReadMode::Window => {
            let (i, o) = (tracker.len(Direction::Incoming), tracker.len(Direction::Outgoing));
            let windows = epoch.windows()?;
            (maps.read(Direction::Incoming, ended, i, &windows)?, maps.read(Direction::Outgoing, ended, o, &windows)?)
        }
        ReadMode::Whole => {
            let whole = |entries: Vec<_>| TargetsRead { changed: entries.len(), entries, whole: true, quiet: false };
            (whole(maps.targets(Direction::Incoming)?), whole(maps.targets(Direction::Outgoing)?))
        }
    };
    let groups = maps.groups()?;
    let t1 = Instant::now();
    let listed = [(incoming.entries.as_slice(), incoming.whole), (outgoing.entries.as_slice(), outgoing.whole)];
    let u = tracker.update_read(now, Duration::from_millis(100), listed, &groups);
    let t2 = Instant::now();
    for dir in Direction::ALL {
        maps.remove_targets(dir, &u.idle[dir.index()]);
    }
    let classes = [ClassRate::default(); CLASS_COUNT];
    let samples = SampleView::new(&[], 1, 0.1);
    let obs = Observation {
        iface: "bench0",
        now_ms: now.as_millis() as u64,
        seconds: 0.1,
        classes: &classes,
        sources: &[],
        samples: &samples,
        packets: &[],
        targets: &u.reading,
    };
    // The carpet bombing opens its group's incident, as it should.
    let _ = det.observe(&obs);
    let t3 = Instant::now();
    if std::env::var_os("BENCH_POLL_SPLIT").is_some() {
        eprintln!("split: read {:?} tracker {:?} detect {:?}", t1 - t0, t2 - t1, t3 - t2);
    }
    let read = incoming.entries.len() + outgoing.entries.len();
    Ok((read, incoming.changed + outgoing.changed, t0.elapsed()))
}

/// Network mode's detector over the bench's /16, default floors (the
/// bench's 100 pps per address is far below them; the carpet bombing's
/// total is not).
fn detector() -> Result<Detector> {
    let c = ConfigFile::parse(
        "bench.yaml",
        "networks:\n  hostgroups:\n    - { name: bench, prefixes: [10.1.0.0/16], outgoing: {} }\n",
    )?;
    let protected = Protected::new(c.networks.as_ref(), &c.detection.families);
    Ok(Detector::with_protected(c.detection, protected, "bench"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(label: &'static str, entries: usize, changed: usize, whole: bool, mut ms: Vec<f64>) -> PollCost {
    ms.sort_by(f64::total_cmp);
    let cost = PollCost {
        label,
        entries,
        whole,
        changed,
        p50_ms: percentile(&ms, 0.5),
        p99_ms: percentile(&ms, 0.99),
        max_ms: *ms.last().unwrap_or(&0.0),
    };
    eprintln!(
        "bench:   poll, {label}: {entries} entries read, {changed} counted a window, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        cost.p50_ms, cost.p99_ms, cost.max_ms
    );
    cost
}

/// Destinations the program counts per CPU per window in the bench's
/// steady state: about the most its sketch admits (an address is counted
/// once its estimate passes 1/2048 of the CPU's packets in the window, so
/// fewer than 2,048 can be), each with [`PER_DESTINATION`] packets.
const COUNTED_PER_CPU: u32 = 1_900;
const PER_DESTINATION: u32 = 64;

/// The poll cycle with [`ACTIVE`] tracked destinations: the map full, and
/// in every window the program counting packets to as many of them as its
/// sketch lets through on each CPU (a different set each window), read as
/// the probe reads them, and read whole (the first read, or after a ring
/// overflowed); and under a carpet bombing of a /16 run through the
/// program. Also the maps' memory.
pub fn polls_and_memory() -> Result<(Vec<PollCost>, MapMemory, u32)> {
    let max_targets = ACTIVE;
    let mut opts = CountingOptions::new(DEFAULT_MAX_SOURCES);
    opts.max_targets = max_targets;
    let mut obj = ebpf::load_counting(&opts)?;
    let memory = map_memory(&obj)?;
    // A second handle on the incoming map, to fill it as traffic would.
    let fill_data = match obj.map(TARGETS_IN_MAP).context("no incoming map")? {
        Map::PerCpuLruHashMap(d) => MapData::from_id(d.info()?.id())?,
        _ => anyhow::bail!("unexpected type of {TARGETS_IN_MAP}"),
    };
    let mut fill: PerCpuHashMap<_, SourceKey, TargetStats> = PerCpuHashMap::try_from(Map::PerCpuLruHashMap(fill_data))?;
    let mut maps = TargetMaps::take(&mut obj)?;
    let mut epoch = Epoch::take(&mut obj)?;
    let det = ebpf::load_xdp(&mut obj, "detector", DETECTOR_PROGRAM)?;
    let lab = Lab::new()?;
    hold_in_dispatcher(&lab, det, None)?;
    maps.set_protected(&prefixes(&[("10.1.0.0/16", 0)])?)?;
    let cpus = nr_cpus().map_err(|(_, e)| e)?;
    let mut window = 1u32;
    epoch.set(window)?;

    // Every destination tracked, as a program admitting it would have
    // written it.
    for i in 0..ACTIVE {
        let mut v = TargetStats::default();
        v.counts[TrafficClass::Udp.index()].packets = 10;
        v.counts[TrafficClass::Udp.index()].bytes = 640;
        let mut values = vec![TargetStats::default(); cpus];
        values[i as usize % cpus] = v;
        fill.insert(key(i), PerCpuValues::try_from(values)?, 0)?;
    }
    let mut frame = udp("10.1.0.0")?;
    let mut next = 0u32;
    // One window's traffic: on each CPU in turn, COUNTED_PER_CPU new
    // destinations, PER_DESTINATION packets each.
    let mut traffic = |frame: &mut Vec<u8>| -> Result<()> {
        for cpu in 0..cpus {
            crate::firewall::pin_to(cpu)?;
            for _ in 0..COUNTED_PER_CPU {
                frame[14 + 18..14 + 20].copy_from_slice(&(next as u16).to_be_bytes());
                next = next.wrapping_add(1);
                ns_per_packet(det, frame, PER_DESTINATION)?;
            }
        }
        Ok(())
    };
    let mut tracker = TargetTracker::new(Duration::from_secs(30));
    let mut detection = detector()?;
    let mut polls = Vec::new();
    let mut now = 0u64;
    let mut measure = |label: &'static str,
                       mode: ReadMode,
                       maps: &mut TargetMaps,
                       epoch: &mut Epoch,
                       window: &mut u32,
                       tracker: &mut TargetTracker,
                       frame: &mut Vec<u8>|
     -> Result<PollCost> {
        // The first read of a fresh reader is whole; warm it up.
        now += 100;
        poll(maps, epoch, window, tracker, &mut detection, Duration::from_millis(now), mode)?;
        let mut ms = Vec::new();
        let (mut read, mut changed) = (0, 0);
        for _ in 0..POLLS {
            traffic(frame)?;
            now += 100;
            let (r, c, took) = poll(maps, epoch, window, tracker, &mut detection, Duration::from_millis(now), mode)?;
            read = read.max(r);
            changed += c;
            ms.push(took.as_secs_f64() * 1e3);
        }
        Ok(summary(label, read, changed / POLLS, mode == ReadMode::Whole, ms))
    };
    polls.push(measure(
        "65,536 tracked destinations, the probe's read",
        ReadMode::Window,
        &mut maps,
        &mut epoch,
        &mut window,
        &mut tracker,
        &mut frame,
    )?);
    polls.push(measure(
        "65,536 tracked destinations, read whole",
        ReadMode::Whole,
        &mut maps,
        &mut epoch,
        &mut window,
        &mut tracker,
        &mut frame,
    )?);
    let tracked = maps.targets(Direction::Incoming)?.len();
    ensure!(tracked >= ACTIVE as usize * 99 / 100, "only {tracked} of {ACTIVE} destinations in the map");

    // Carpet bombing: every address of the /16 in turn through the program,
    // a window per poll; the map is emptied of the filled entries first.
    let all: Vec<SourceKey> = (0..ACTIVE).map(key).collect();
    maps.remove_targets(Direction::Incoming, &all);
    let mut tracker = TargetTracker::new(Duration::from_secs(30));
    let mut ms = Vec::new();
    let (mut read, mut changed) = (0, 0);
    for _ in 0..POLLS {
        // A window of 16,384 packets over the /16.
        for _ in 0..16_384 {
            frame[14 + 18..14 + 20].copy_from_slice(&(next as u16).to_be_bytes());
            next = next.wrapping_add(1);
            ns_per_packet(det, &frame, 1)?;
        }
        now += 100;
        let (r, c, took) = poll(
            &mut maps,
            &mut epoch,
            &mut window,
            &mut tracker,
            &mut detection,
            Duration::from_millis(now),
            ReadMode::Window,
        )?;
        read = read.max(r);
        changed += c;
        ms.push(took.as_secs_f64() * 1e3);
    }
    polls.push(summary("carpet bombing of a /16 (16,384 packets a poll)", read, changed / POLLS, false, ms));
    Ok((polls, memory, max_targets))
}
