//! One watched interface: its program attached (or adopted from the pins of
//! an earlier run), its counting maps, and what the poller remembers of it
//! from one poll to the next.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use detector_common::{
    sample::{PacketSample, SampleRecord},
    targets::TargetStats,
    CLASS_COUNT,
};

use crate::{
    capture::recorder::Batch,
    kernel::{
        counters::{CounterError, CounterMaps},
        ebpf::{self, CountingOptions},
        egress::{self, Learning},
        peers::KnownPeers,
        pins,
        rules::RuleMaps,
        syncookie,
        targets::{TargetError, TargetMaps, TargetsRead},
        xdp::{self, AttachError, Attachment},
    },
    metrics::Metrics,
    mitigate::{mitigator::Mitigator, prefix::Prefix},
    rates::{class_rates, ClassRate, ClassSnapshot},
    samples::{SampleView, Sampling},
    sources::{SourceTracker, SourcesUpdate},
    targets::{Direction, TargetTracker, TargetsReading},
};

use super::{RunConfig, RunError};

/// How often the peer learning's counters reach the metrics.
const LEARNING_METRICS_EVERY: Duration = Duration::from_secs(1);

/// One packet in this many is sampled at the start; the poller adapts it.
const FIRST_DIVISOR: u32 = 64;

pub struct Probe {
    pub attachment: Attachment,
    /// Held while this controller drives the interface's pinned state.
    _lock: std::fs::File,
    maps: CounterMaps,
    prev: ClassSnapshot,
    tracker: SourceTracker,
    /// The divisors the program samples at, adapted at every poll.
    sampling: Sampling,
    /// A smaller divisor the next window begins with (see
    /// [`Sampling::at_once`]).
    pending: Option<Sampling>,
    learning: Learning,
    /// When the learning counters were last read for the metrics.
    learning_read: Option<Instant>,
    targets: TargetMaps,
    /// The group totals the last poll read (`None`: to be read).
    last_groups: Option<Vec<(u32, Direction, TargetStats)>>,
    target_tracker: TargetTracker,
    /// Whether packet captures are on (the samples' frames are kept).
    captures: bool,
    /// The sample vectors of earlier polls, for the next ones.
    records: RecordPool,
    /// How many samples and frames the last poll drained: the next poll's
    /// vectors are sized for about as many, not grown a push at a time
    /// (each growth a copy into fresh memory the kernel faults in).
    last_drained: (usize, usize),
}

/// What one poll of an interface read.
pub struct Reading {
    pub rates: [ClassRate; CLASS_COUNT],
    pub sources: SourcesUpdate,
    /// Sources tracked after idle ones were removed.
    pub tracked: usize,
    pub samples: Vec<PacketSample>,
    /// The samples that carried their frame, whole, in time order, for
    /// packet captures (one in the frame divisor; none with captures off).
    pub frames: Frames,
    /// The divisor the samples were taken at.
    pub divisor: u32,
    /// Network mode: per protected address and per host group (empty
    /// while no protected network is installed).
    pub targets: TargetsReading,
}

impl Probe {
    /// Loads the counting program for `iface`, attaches it (adopting the
    /// pinned link of an earlier run), hands its rule maps to `mitigator`.
    /// Dropping the probe detaches the program unless it is pinned.
    pub fn attach(
        cfg: &RunConfig,
        iface: &str,
        mitigator: &mut Mitigator,
        metrics: &Metrics,
    ) -> Result<Probe, RunError> {
        let counters_err = |source| RunError::Counters { iface: iface.to_string(), source: Box::new(source) };
        let m = &cfg.mitigation;
        let pin_dir = pins::dir(iface)?;
        pins::prepare(&pin_dir)?;
        let lock = pins::lock(&pin_dir, iface)?;
        let opts = CountingOptions {
            max_sources: cfg.max_sources,
            max_targets: detector_common::targets::DEFAULT_MAX_TARGETS,
            max_rules: m.max_rules,
            max_allow: m.max_allow,
            max_buckets: m.max_rate_limited_sources,
            pins: Some((pin_dir.clone(), iface.to_string())),
        };
        let mut obj = ebpf::load_counting(&opts).map_err(AttachError::from)?;
        let mut maps = CounterMaps::take(&mut obj).map_err(counters_err)?;
        let rule_maps = RuleMaps::take(&mut obj)
            .map_err(|source| RunError::Rules { iface: iface.to_string(), source: Box::new(source) })?;
        let peers = KnownPeers::take(&mut obj)
            .map_err(|source| RunError::Rules { iface: iface.to_string(), source: Box::new(source) })?;
        // Every sample with its frame at first, while captures are on.
        let sampling = Sampling::new(FIRST_DIVISOR, cfg.capture.enabled, cfg.interval);
        maps.set_sampling(sampling.divisor, sampling.frame_divisor).map_err(counters_err)?;
        let targets = TargetMaps::take(&mut obj).map_err(|e| counters_err(e.into()))?;
        let learn_err = |e: egress::EgressError| RunError::Egress { iface: iface.to_string(), reason: e.to_string() };
        let learning = Learning::take(&mut obj).map_err(learn_err)?;
        let mut attachment = xdp::attach(obj, iface, cfg.mode, cfg.force, Some(&pin_dir))?;
        let adopted = egress::attach(attachment.ebpf_mut(), iface, &pin_dir).map_err(learn_err)?;
        tracing::info!(iface, adopted, "egress program learning known-good peers");
        syncookie::install(attachment.ebpf_mut(), iface)
            .map_err(|e| RunError::SynCookies { iface: iface.to_string(), reason: e.to_string() })?;
        if attachment.adopted {
            tracing::info!(
                iface,
                mode = %attachment.mode,
                entries = rule_maps.entries(),
                "XDP program replaced in the pinned link of an earlier run; its rules and counters carry on"
            );
        } else {
            tracing::info!(iface, mode = %attachment.mode, "XDP program attached");
        }
        mitigator.add_interface(iface, rule_maps);
        mitigator.add_peers(iface, peers);
        metrics.interface_attached(iface, attachment.mode.name(), maps.source_capacity());
        Ok(Probe {
            attachment,
            _lock: lock,
            maps,
            prev: ClassSnapshot::default(),
            tracker: SourceTracker::new(cfg.idle_after),
            sampling,
            pending: None,
            learning,
            learning_read: None,
            targets,
            last_groups: None,
            target_tracker: TargetTracker::new(cfg.idle_after),
            captures: cfg.capture.enabled,
            records: RecordPool::default(),
            last_drained: (0, 0),
        })
    }

    /// Learning of known-good peers: on in peacetime, off while the
    /// interface is under attack, from the first poll over a threshold (the
    /// host's answers to a spoofed flood must not teach it the flood's
    /// sources).
    ///
    /// Its counters reach the metrics at once when it is switched, else
    /// once every [`LEARNING_METRICS_EVERY`]: a syscall every poll for a
    /// scraped gauge was a twentieth of an idle controller's CPU.
    pub fn set_learning(&mut self, on: bool, metrics: &Metrics) {
        let mut switched = false;
        if on != self.learning.enabled() {
            switched = true;
            match self.learning.set(on) {
                Ok(()) => tracing::info!(
                    iface = self.iface(),
                    "known-good peer learning {}",
                    if on { "resumed" } else { "paused" }
                ),
                Err(e) => tracing::warn!(iface = self.iface(), "cannot switch peer learning: {e}"),
            }
        }
        let now = Instant::now();
        if switched || self.learning_read.is_none_or(|t| now.duration_since(t) >= LEARNING_METRICS_EVERY) {
            self.learning_read = Some(now);
            let c = self.learning.counts();
            metrics.known_peers(self.iface(), self.learning.enabled(), c.learned, c.over_budget);
        }
    }

    /// Installs the protected networks (prefix, host group id below
    /// `detector_common::targets::MAX_HOSTGROUPS`) in place of the ones in
    /// force; an empty list turns per-target counting off. Returns whether
    /// anything changed.
    pub fn set_protected(&mut self, nets: &[(Prefix, u32)]) -> Result<bool, TargetError> {
        let changed = self.targets.set_protected(nets)?;
        if changed {
            self.last_groups = None;
            tracing::info!(
                iface = self.iface(),
                prefixes = self.targets.protected().len(),
                groups = self.targets.installed_groups().len(),
                "protected networks installed"
            );
        }
        Ok(changed)
    }

    /// Tells the program to sample at `next` (kept as it was when the
    /// write fails; the next poll decides again).
    fn write_sampling(&mut self, next: Sampling) {
        if self.maps.set_sampling(next.divisor, next.frame_divisor).is_ok() {
            self.sampling = next;
        }
    }

    pub fn iface(&self) -> &str {
        &self.attachment.iface
    }

    /// Reads the maps: class rates over `elapsed`, the active sources, the
    /// samples; starts a new heavy-hitter window, prunes idle sources and
    /// adapts the sampling. Counters go to `metrics` as they are read.
    pub fn read(&mut self, mono: Duration, elapsed: Duration, metrics: &Metrics) -> Result<Reading, CounterError> {
        let cur = self.maps.classes()?;
        // The window ends here; the per-address maps are read after it, from
        // the addresses the program listed as counted in it.
        let window = self.maps.epoch();
        // The samples this poll drains were taken at the divisor in force
        // until now; a smaller one decided at the last poll begins with
        // the new window, so that every CPU cuts its countdown to it.
        let divisor = self.sampling.divisor;
        if let Some(next) = self.pending.take() {
            self.write_sampling(next);
        }
        self.maps.new_window()?;
        // Every map's windows in one call.
        let windows = self.maps.windows()?;
        let sources = self.maps.read_sources(window, self.tracker.len(), &windows)?;
        // Nothing to read in host mode until the networks are installed,
        // nor once they are gone and the tracker has forgotten the rest.
        let (incoming, outgoing, groups) = if self.targets.protected().is_empty() && self.target_tracker.is_empty() {
            (TargetsRead::default(), TargetsRead::default(), Vec::new())
        } else {
            let tracked = |d| self.target_tracker.len(d);
            let incoming = self.targets.read(Direction::Incoming, window, tracked(Direction::Incoming), &windows)?;
            let outgoing = self.targets.read(Direction::Outgoing, window, tracked(Direction::Outgoing), &windows)?;
            // The group totals move only with a packet counted.
            let groups = match self.last_groups.take() {
                Some(last) if incoming.quiet && outgoing.quiet => last,
                _ => self.targets.groups()?,
            };
            self.last_groups = Some(groups.clone());
            (incoming, outgoing, groups)
        };
        let room = |n: usize| n + n / 4 + 16;
        let mut headers = Vec::with_capacity(room(self.last_drained.0));
        let mut drained = self.records.take();
        drained.reserve(room(self.last_drained.1));
        self.maps.drain_samples(self.sampling.max_drain(), &mut headers, &mut drained);

        let rates = class_rates(&self.prev, &cur, elapsed);
        metrics.count_classes(self.iface(), &self.prev, &cur);
        self.prev = cur;

        let update = self.tracker.update(mono, elapsed, &sources.entries, sources.whole);
        let pruned = if update.idle.is_empty() { 0 } else { self.maps.remove_sources(&update.idle) };
        let tracked = self.tracker.len();
        metrics.sources(self.iface(), tracked, pruned);

        let listed = [(incoming.entries.as_slice(), incoming.whole), (outgoing.entries.as_slice(), outgoing.whole)];
        let targets = self.target_tracker.update_read(mono, elapsed, listed, &groups);
        for dir in Direction::ALL {
            let idle = &targets.idle[dir.index()];
            if !idle.is_empty() {
                self.targets.remove_targets(dir, idle);
            }
        }

        self.last_drained = (headers.len(), drained.len());
        let next = self.sampling.next(headers.len());
        if next != self.sampling {
            if self.sampling.at_once(&next) {
                self.write_sampling(next);
            } else {
                self.pending = Some(next);
            }
        }
        metrics.sample_divisor(self.iface(), self.sampling.divisor, self.sampling.frame_divisor);
        let mut mono_to_wall = 0;
        if self.captures {
            // The ring is in the order the CPUs reserved their entries,
            // which can differ from their clocks by a hair (now and then).
            if !drained.is_sorted_by_key(|r| r.ts_ns) {
                drained.sort_by_key(|r| r.ts_ns);
            }
            mono_to_wall = mono_to_wall_ns();
        }
        let records = if self.captures {
            self.records.lend(drained)
        } else {
            self.records.put(drained);
            Arc::default()
        };
        let frames = Frames { records, mono_to_wall_ns: mono_to_wall };
        Ok(Reading { rates, sources: update, tracked, samples: headers, frames, divisor, targets: targets.reading })
    }
}

/// The vectors a poll drains the sample ring's frames into, reused. A new
/// vector each poll is memory the kernel faults in and zeroes page by
/// page, and an allocation for malloc to consolidate around, which
/// together were two fifths of the poll thread's time at 16k pps in a
/// profile. The capture recorder reads a poll's records shared rather than
/// copied (see [`Frames`]) and copies what its buffers keep; a vector
/// comes back once nobody else holds it.
#[derive(Default)]
struct RecordPool {
    /// Handed to the capture recorder, maybe still held there.
    lent: Vec<Arc<Vec<SampleRecord>>>,
    /// Back, for the next polls.
    free: Vec<Vec<SampleRecord>>,
}

impl RecordPool {
    /// Vectors kept for reuse, at most: a poll takes one.
    const FREE: usize = 2;

    /// A vector for this poll's records: one that came back, or a new one.
    fn take(&mut self) -> Vec<SampleRecord> {
        for arc in std::mem::take(&mut self.lent) {
            match Arc::try_unwrap(arc) {
                Ok(v) => self.put(v),
                Err(held) => self.lent.push(held),
            }
        }
        self.free.pop().unwrap_or_default()
    }

    /// Keeps `v` for a later poll (or drops it when enough are kept).
    fn put(&mut self, v: Vec<SampleRecord>) {
        if self.free.len() < Self::FREE {
            self.free.push(v);
        }
    }

    /// Shares `v` with the capture recorder; it comes back when the
    /// recorder lets it go.
    fn lend(&mut self, v: Vec<SampleRecord>) -> Arc<Vec<SampleRecord>> {
        let shared = Arc::new(v);
        self.lent.push(Arc::clone(&shared));
        shared
    }
}

/// A poll's samples whole, for the capture recorder.
#[derive(Default)]
pub struct Frames {
    /// Shared with the capture recorder for the poll, which copies what
    /// its buffers keep, so the vector comes back for the next poll.
    pub records: Arc<Vec<SampleRecord>>,
    pub mono_to_wall_ns: i128,
}

impl Frames {
    pub fn batch(&self) -> Batch<'_> {
        Batch { records: &self.records, mono_to_wall_ns: self.mono_to_wall_ns }
    }
}

/// What to add to CLOCK_MONOTONIC (the program's `bpf_ktime_get_ns`) to
/// get nanoseconds since the Unix epoch, now.
fn mono_to_wall_ns() -> i128 {
    let read = |clock| {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: a valid clock id and a timespec to fill.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
    };
    let mono = read(libc::CLOCK_MONOTONIC);
    read(libc::CLOCK_REALTIME) - mono
}

impl Reading {
    pub fn sample_view(&self, seconds: f64) -> SampleView {
        SampleView::new(&self.samples, self.divisor, seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_polls_records_come_back_once_the_recorder_lets_them_go() {
        let mut pool = RecordPool::default();
        let mut v = pool.take();
        v.resize(100, SampleRecord::default());
        let at = v.as_ptr();
        let held = pool.lend(v);
        // Still held (by a reader that kept the poll's frames): a new one.
        let other = pool.take();
        assert_eq!(other.capacity(), 0);
        pool.put(other);
        drop(held);
        // Let go: the same memory, for the next poll; the empty one stays
        // kept beside it.
        let again = pool.take();
        assert_eq!(again.as_ptr(), at);
        assert_eq!(pool.free.len(), 1);
        assert!(pool.lent.is_empty());
        // Never more than a few kept.
        for _ in 0..5 {
            pool.put(Vec::with_capacity(1));
        }
        assert_eq!(pool.free.len(), RecordPool::FREE);
    }
}
