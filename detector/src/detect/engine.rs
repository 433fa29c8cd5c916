//! The detector: per interface, per family, from a poll's rates to incident
//! events. Pure: the caller passes each poll's data and the time.

use std::{collections::BTreeMap, net::IpAddr};

use detector_common::{sample::PacketSample, TrafficClass, CLASS_COUNT};
use foldhash::{HashMap, HashMapExt, HashSet};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{
    baseline::{self, ClassBaseline},
    config::{DetectionConfig, FamilyConfig},
    family::Family,
    incident::{
        incident_id, CaptureInfo, EventKind, Incident, IncidentEvent, Status, TimelineEntry, TopSource,
        SEEN_BEFORE_ATTACK,
    },
    severity::{assess, Severity},
    signature::{self, RecentSamples},
};
use crate::{
    mitigate::prefix::Prefix,
    networks::{Protected, HOST_GROUP},
    rates::ClassRate,
    samples::{self, SampleView},
    sources::SourceRate,
    targets::{Direction, TargetRate, TargetsReading},
};

const FAMILIES: usize = Family::DETECTED.len();

/// The hold is counted in whole poll windows, whose lengths come from the
/// wall clock in milliseconds: two 100 ms windows may add up to 199 ms.
/// Without this slack a 200 ms hold took a third poll about half the time.
const HOLD_SLACK_MS: u64 = 5;

/// Peacetime samples an interface keeps, and samples an open incident
/// keeps of its classes: the most recent of each.
pub const SIGNATURE_SAMPLES: usize = 4096;
/// An open incident's signature is derived again at most this often (ms).
const SIGNATURE_EVERY_MS: u64 = 1000;

/// One poll of one interface, as the detector needs it.
pub struct Observation<'a> {
    pub iface: &'a str,
    /// Wall-clock time of the poll, Unix milliseconds.
    pub now_ms: u64,
    /// Seconds since the previous poll (0 for the first).
    pub seconds: f64,
    pub classes: &'a [ClassRate; CLASS_COUNT],
    /// Sources that sent in the interval.
    pub sources: &'a [SourceRate],
    pub samples: &'a SampleView,
    /// The poll's sampled headers, for the attack's signature.
    pub packets: &'a [PacketSample],
    /// Per protected address and host group.
    pub targets: &'a TargetsReading,
}

/// One family's signal in one poll, against its thresholds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Signal {
    pub pps: f64,
    pub bps: f64,
    pub pps_threshold: f64,
    pub bps_threshold: Option<f64>,
    /// http_flood: new connections per second to the web ports.
    pub connections: f64,
    pub connections_threshold: Option<f64>,
}

impl Signal {
    /// How far over its thresholds the signal is (1.0 = at threshold).
    pub fn ratio(&self) -> f64 {
        let mut r = self.pps / self.pps_threshold.max(1.0);
        if let Some(t) = self.bps_threshold {
            r = r.max(self.bps / t.max(1.0));
        }
        if let Some(t) = self.connections_threshold {
            r = r.max(self.connections / t.max(1.0));
        }
        r
    }

    pub fn above(&self) -> bool {
        self.ratio() >= 1.0
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Track {
    above_since: Option<u64>,
    below_since: Option<u64>,
    signal: Signal,
}

/// What an incident is about: an interface, a direction and a target (one
/// address, or a host group's name for an attack spread over its
/// addresses). At most one incident per scope at a time.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct ScopeKey {
    iface: String,
    direction: Direction,
    target: String,
}

/// A scope with an incident open or a family above its threshold. A scope
/// that is calm again is forgotten: all it has is tracks and samples.
struct Scope {
    group: usize,
    /// The address; none for the group's total.
    addr: Option<IpAddr>,
    tracks: [Track; FAMILIES],
    /// The last poll's class rates.
    classes: [ClassRate; CLASS_COUNT],
    incident: Option<Incident>,
    /// Samples of the classes of the open incident and of the families
    /// above their threshold (from the onset, before the incident opens).
    attack: RecentSamples,
    /// When the open incident's signature was last derived.
    signature_at: Option<u64>,
}

impl Scope {
    fn new(group: usize, addr: Option<IpAddr>) -> Scope {
        Scope {
            group,
            addr,
            tracks: [Track::default(); FAMILIES],
            classes: [ClassRate::default(); CLASS_COUNT],
            incident: None,
            attack: RecentSamples::new(SIGNATURE_SAMPLES),
            signature_at: None,
        }
    }

    /// Open, or at the onset of one.
    fn watched(&self) -> bool {
        self.incident.is_some() || self.tracks.iter().any(|t| t.above_since.is_some())
    }

    /// Whether family `f` is watched: in the open incident, or above.
    fn watches(&self, f: Family) -> bool {
        self.incident.as_ref().is_some_and(|i| i.families.contains(&f)) || self.tracks[f.index()].above_since.is_some()
    }

    /// The classes of the families it watches.
    fn watched_classes(&self) -> [bool; CLASS_COUNT] {
        let mut w = [false; CLASS_COUNT];
        for f in Family::DETECTED {
            if self.watches(f) {
                for c in f.traffic_classes() {
                    w[c.index()] = true;
                }
            }
        }
        w
    }
}

/// A host group's learned levels in one direction on one interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupBaselines {
    /// The group's total per class.
    pub total: [ClassBaseline; CLASS_COUNT],
    /// Its busiest address per class: what one address normally gets.
    pub address: [ClassBaseline; CLASS_COUNT],
}

struct IfaceState {
    /// Per (group name, direction).
    baselines: BTreeMap<(String, Direction), GroupBaselines>,
    /// Samples of no watched scope, from polls before: what a signature's
    /// collateral is measured on.
    peacetime: RecentSamples,
    /// The last poll's samples of no watched scope, held one poll before
    /// they become peacetime: a flood that starts late in a poll leaves it
    /// below every threshold, yet its first packets (sampled at the calm's
    /// high rate) would fill the peacetime and then count as collateral.
    pending: Vec<PacketSample>,
}

impl IfaceState {
    fn new() -> Self {
        IfaceState { baselines: BTreeMap::new(), peacetime: RecentSamples::new(SIGNATURE_SAMPLES), pending: Vec::new() }
    }
}

/// Learned baselines of every interface, as saved to the state directory.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedBaselines {
    pub version: u32,
    /// Version 1 only: interface -> class name -> baseline (the whole
    /// interface's; loaded as host mode's group).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub interfaces: BTreeMap<String, BTreeMap<String, ClassBaseline>>,
    /// Interface -> host group -> direction -> levels.
    #[serde(default)]
    pub groups: BTreeMap<String, BTreeMap<String, BTreeMap<Direction, SavedGroup>>>,
}

/// One group's levels as saved: class name -> baseline.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedGroup {
    pub total: BTreeMap<String, ClassBaseline>,
    pub address: BTreeMap<String, ClassBaseline>,
}

pub const BASELINES_VERSION: u32 = 2;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DetectError {
    #[error("no open incident with id '{0}'")]
    NoSuchIncident(String),
    #[error("a note may not be empty")]
    EmptyNote,
}

pub struct Detector {
    cfg: DetectionConfig,
    node: String,
    protected: Protected,
    ifaces: BTreeMap<String, IfaceState>,
    scopes: BTreeMap<ScopeKey, Scope>,
}

/// A threshold in force (see [`Detector::thresholds`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    pub group: String,
    pub direction: Direction,
    /// For the group's total; else for one of its addresses.
    pub total: bool,
    pub family: Family,
    pub pps: f64,
}

/// One scope's input in one poll.
struct Input {
    key: ScopeKey,
    group: usize,
    addr: Option<IpAddr>,
    classes: [ClassRate; CLASS_COUNT],
}

impl Detector {
    /// Host mode: the host's addresses, once [`Detector::set_host_addresses`]
    /// names them.
    pub fn new(cfg: DetectionConfig, node: impl Into<String>) -> Detector {
        let protected = Protected::new(None, &cfg.families);
        Detector::with_protected(cfg, protected, node)
    }

    pub fn with_protected(cfg: DetectionConfig, protected: Protected, node: impl Into<String>) -> Detector {
        Detector { cfg, node: node.into(), protected, ifaces: BTreeMap::new(), scopes: BTreeMap::new() }
    }

    pub fn config(&self) -> &DetectionConfig {
        &self.cfg
    }

    pub fn protected(&self) -> &Protected {
        &self.protected
    }

    /// Host mode: protects exactly these addresses; true when that changed.
    pub fn set_host_addresses(&mut self, addrs: impl IntoIterator<Item = IpAddr>) -> bool {
        self.protected.set_host_addresses(addrs)
    }

    fn iface(&mut self, iface: &str) -> &mut IfaceState {
        self.ifaces.entry(iface.to_string()).or_insert_with(IfaceState::new)
    }

    /// Takes learned baselines saved by an earlier run. A version 1 file
    /// (one set per interface) becomes host mode's group, incoming. Those
    /// no learning could have made (see [`ClassBaseline::check`]) are left
    /// out, to be learned afresh, and returned with where and why.
    pub fn load_baselines(&mut self, saved: &SavedBaselines) -> Vec<String> {
        let mut refused = Vec::new();
        let mut classes = |m: &BTreeMap<String, ClassBaseline>, at: &str| {
            let mut out = [ClassBaseline::default(); CLASS_COUNT];
            for (name, b) in m {
                let Some(c) = TrafficClass::from_name(name) else { continue };
                match b.check() {
                    Ok(()) => out[c.index()] = *b,
                    Err(why) => refused.push(format!("{at}, class {name}: {why}; learned afresh")),
                }
            }
            out
        };
        let mut loaded = Vec::new();
        for (iface, m) in &saved.interfaces {
            let b = classes(m, &format!("interface {iface}"));
            loaded.push((
                iface,
                (HOST_GROUP.to_string(), Direction::Incoming),
                GroupBaselines { total: b, address: b },
            ));
        }
        for (iface, groups) in &saved.groups {
            for (group, dirs) in groups {
                for (dir, sg) in dirs {
                    let at = format!("interface {iface}, host group {group}, {}", dir.name());
                    let total = classes(&sg.total, &format!("{at} total"));
                    let address = classes(&sg.address, &format!("{at} per address"));
                    loaded.push((iface, (group.clone(), *dir), GroupBaselines { total, address }));
                }
            }
        }
        for (iface, key, g) in loaded {
            self.iface(iface).baselines.insert(key, g);
        }
        refused
    }

    pub fn baselines(&self) -> SavedBaselines {
        let named = |b: &[ClassBaseline; CLASS_COUNT]| {
            TrafficClass::ALL.iter().map(|c| (c.name().to_string(), b[c.index()])).collect::<BTreeMap<_, _>>()
        };
        let mut groups: BTreeMap<String, BTreeMap<String, BTreeMap<Direction, SavedGroup>>> = BTreeMap::new();
        for (iface, st) in &self.ifaces {
            for ((group, dir), b) in &st.baselines {
                groups
                    .entry(iface.clone())
                    .or_default()
                    .entry(group.clone())
                    .or_default()
                    .insert(*dir, SavedGroup { total: named(&b.total), address: named(&b.address) });
            }
        }
        SavedBaselines { version: BASELINES_VERSION, interfaces: BTreeMap::new(), groups }
    }

    /// The learned total of one class of a group, incoming, if known.
    pub fn class_baseline(&self, iface: &str, group: &str, class: TrafficClass) -> Option<ClassBaseline> {
        self.group_baselines(iface, group, Direction::Incoming).map(|b| b.total[class.index()])
    }

    /// Every group's learned levels on an interface.
    pub fn iface_baselines(&self, iface: &str) -> Vec<(String, Direction, GroupBaselines)> {
        self.ifaces
            .get(iface)
            .map(|st| st.baselines.iter().map(|((g, d), b)| (g.clone(), *d, *b)).collect())
            .unwrap_or_default()
    }

    pub fn group_baselines(&self, iface: &str, group: &str, direction: Direction) -> Option<&GroupBaselines> {
        self.ifaces.get(iface)?.baselines.get(&(group.to_string(), direction))
    }

    /// Whether an interface's incoming baselines, every group's, have
    /// finished their warm-up.
    pub fn warm(&self, iface: &str) -> bool {
        let Some(st) = self.ifaces.get(iface) else { return false };
        let mut any = false;
        for ((_, dir), b) in &st.baselines {
            if *dir == Direction::Incoming {
                any = true;
                if !b.total.iter().chain(b.address.iter()).all(|c| c.warm(&self.cfg.baseline)) {
                    return false;
                }
            }
        }
        any
    }

    /// Continues an incident found open at start instead of opening
    /// another. Its families count as below from the first poll on, so it
    /// resolves after the quiet period unless the attack goes on (however
    /// long the start took). False when its host group is no longer
    /// configured (or it predates host groups): nothing will measure it,
    /// and the caller resolves it.
    pub fn resume(&mut self, mut incident: Incident) -> bool {
        let key =
            ScopeKey { iface: incident.iface.clone(), direction: incident.direction, target: incident.target.clone() };
        let addr: Option<IpAddr> = incident.target.parse().ok();
        let group = self.protected.index_of(&incident.hostgroup);
        let scope_group = group.unwrap_or(0);
        let mut scope = Scope::new(scope_group, addr);
        incident.ended_at = None;
        scope.incident = Some(incident);
        self.iface(&key.iface.clone());
        self.scopes.insert(key, scope);
        group.is_some()
    }

    /// True while `iface` has an open incident or a family above its
    /// threshold, in any scope (an attack's onset, before the hold opens
    /// an incident).
    pub fn under_attack(&self, iface: &str) -> bool {
        self.scopes.iter().any(|(k, s)| k.iface == iface && s.watched())
    }

    /// Open incidents: one per interface, direction and target at most.
    pub fn open_incidents(&self) -> impl Iterator<Item = &Incident> {
        self.scopes.values().filter_map(|s| s.incident.as_ref())
    }

    /// The packet-rate thresholds in force on an interface, for metrics:
    /// per group, direction and family, for one address and for the
    /// group's total (the static floor or the learned level, whichever is
    /// higher).
    pub fn thresholds(&self, iface: &str) -> Vec<Threshold> {
        let zero = [ClassRate::default(); CLASS_COUNT];
        let mut out = Vec::new();
        for group in self.protected.groups() {
            for direction in Direction::ALL {
                let learned = self.group_baselines(iface, &group.name, direction);
                for total in [false, true] {
                    let Some(floors) = group.floors(direction, total) else { continue };
                    for f in Family::DETECTED {
                        let Some(fc) = floors.get(f).filter(|fc| fc.enabled) else { continue };
                        let b = learned.map(|b| if total { &b.total } else { &b.address });
                        let s = signal(f, fc, &zero, b, &self.cfg, 0.0);
                        out.push(Threshold {
                            group: group.name.clone(),
                            direction,
                            total,
                            family: f,
                            pps: s.pps_threshold,
                        });
                    }
                }
            }
        }
        out
    }

    /// Takes one poll of one interface; returns what happened to incidents.
    pub fn observe(&mut self, obs: &Observation<'_>) -> Vec<IncidentEvent> {
        let cfg = self.cfg.clone();
        let now = obs.now_ms;
        // The rate covers the whole interval: a change dates from its start.
        let interval_start = now.saturating_sub((obs.seconds * 1000.0).round() as u64);
        self.iface(obs.iface);

        // The poll's samples per attacked address and per group.
        let mut group_cache: HashMap<IpAddr, Option<usize>> = HashMap::new();
        let mut by_dst: HashMap<IpAddr, Vec<&PacketSample>> = HashMap::new();
        let mut by_group: HashMap<usize, Vec<&PacketSample>> = HashMap::new();
        // A flood's samples come in runs to one address: a run is looked
        // up and filed once.
        let packets = obs.packets;
        let mut start = 0;
        while start < packets.len() {
            let raw = packets[start].dst;
            let end = packets[start..].iter().position(|s| s.dst != raw).map_or(packets.len(), |n| start + n);
            let dst = sample_addr(&raw);
            if let Some(g) = *group_cache.entry(dst).or_insert_with(|| self.protected.group_of(dst)) {
                by_dst.entry(dst).or_default().extend(&packets[start..end]);
                by_group.entry(g).or_default().extend(&packets[start..end]);
            }
            start = end;
        }
        let divisor = obs.samples.divisor;
        let view_of = |samples: Option<&Vec<&PacketSample>>| {
            SampleView::new(samples.into_iter().flatten().copied(), divisor, obs.seconds)
        };

        // Web connections per attacked address, from its samples.
        let connections: HashMap<IpAddr, f64> = by_dst
            .iter()
            .map(|(a, v)| (*a, samples::web_connections_pps(v.iter().copied(), divisor, obs.seconds)))
            .collect();

        // 1. Signals: every address, then every group's total.
        let groups = self.protected.groups().to_vec();
        // The poll's addresses by direction and group, once.
        let mut buckets: [Vec<Vec<&TargetRate>>; 2] = [vec![Vec::new(); groups.len()], vec![Vec::new(); groups.len()]];
        for direction in Direction::ALL {
            for t in obs.targets.targets(direction) {
                if let Some(v) = buckets[direction.index()].get_mut(t.group) {
                    v.push(t);
                }
            }
        }
        for direction in Direction::ALL {
            let by_group_targets = &buckets[direction.index()];
            for (gi, group) in groups.iter().enumerate() {
                let Some(floors) = group.floors(direction, false) else { continue };
                let learned = self.ifaces[obs.iface].baselines.get(&(group.name.clone(), direction)).copied();
                // The group's addresses that have a scope: watched, or at
                // the onset.
                let mut scoped: HashMap<IpAddr, bool> = self
                    .scopes
                    .iter()
                    .filter(|(k, s)| k.iface == obs.iface && k.direction == direction && s.group == gi)
                    .filter_map(|(_, s)| s.addr.map(|a| (a, false)))
                    .collect();
                let zero = [ClassRate::default(); CLASS_COUNT];
                let seen = by_group_targets[gi].iter().map(|t| (t.addr, &t.classes));
                let mut inputs: Vec<(IpAddr, &[ClassRate; CLASS_COUNT])> = seen.collect();
                // Scopes with no traffic this poll go below.
                for t in &inputs {
                    if let Some(s) = scoped.get_mut(&t.0) {
                        *s = true;
                    }
                }
                inputs.extend(scoped.iter().filter(|(_, seen)| !**seen).map(|(a, _)| (*a, &zero)));
                for (addr, classes) in inputs {
                    let conn = match direction {
                        Direction::Incoming => connections.get(&addr).copied().unwrap_or(0.0),
                        Direction::Outgoing => 0.0,
                    };
                    let signals: Vec<(Family, Signal)> = Family::DETECTED
                        .iter()
                        .filter_map(|f| {
                            let fc = floors.get(*f).filter(|fc| fc.enabled)?;
                            Some((*f, signal(*f, fc, classes, learned.as_ref().map(|b| &b.address), &cfg, conn)))
                        })
                        .collect();
                    // Most addresses are calm and have no scope: nothing to do.
                    if !scoped.contains_key(&addr) && !signals.iter().any(|(_, s)| s.above()) {
                        continue;
                    }
                    let input = Input {
                        key: ScopeKey { iface: obs.iface.to_string(), direction, target: addr.to_string() },
                        group: gi,
                        addr: Some(addr),
                        classes: *classes,
                    };
                    track(&mut self.scopes, &input, &signals, interval_start);
                }

                // The group's total, less what its attacked addresses
                // account for: many addresses each below their floor,
                // together above the group's.
                let Some(total_floors) = group.floors(direction, true) else { continue };
                let Some(total) = group_total(&self.protected, obs, gi, direction) else { continue };
                let key = ScopeKey { iface: obs.iface.to_string(), direction, target: group.name.clone() };
                let mut signals = Vec::new();
                for f in Family::DETECTED {
                    let Some(fc) = total_floors.get(f).filter(|fc| fc.enabled) else { continue };
                    let mut s = signal(f, fc, &total, learned.as_ref().map(|b| &b.total), &cfg, 0.0);
                    for (k, sc) in &self.scopes {
                        if k.iface == obs.iface
                            && k.direction == direction
                            && sc.group == gi
                            && sc.addr.is_some()
                            && sc.watches(f)
                        {
                            let a = sc.tracks[f.index()].signal;
                            s.pps = (s.pps - a.pps).max(0.0);
                            s.bps = (s.bps - a.bps).max(0.0);
                        }
                    }
                    signals.push((f, s));
                }
                let input = Input { key, group: gi, addr: None, classes: total };
                track(&mut self.scopes, &input, &signals, interval_start);
            }
        }

        // 2. Baselines learn from classes no scope of the group watches.
        for direction in Direction::ALL {
            for (gi, group) in self.protected.groups().iter().enumerate() {
                if group.floors(direction, false).is_none() {
                    continue;
                }
                let Some(total) = group_total(&self.protected, obs, gi, direction) else { continue };
                let mut frozen = [false; CLASS_COUNT];
                for (k, s) in &self.scopes {
                    if k.iface == obs.iface && k.direction == direction && s.group == gi {
                        for (i, w) in s.watched_classes().iter().enumerate() {
                            frozen[i] |= *w;
                        }
                    }
                }
                let mut busiest = [ClassRate::default(); CLASS_COUNT];
                for t in &buckets[direction.index()][gi] {
                    for (b, c) in busiest.iter_mut().zip(t.classes.iter()) {
                        if c.pps > b.pps {
                            *b = *c;
                        }
                    }
                }
                let st = self.ifaces.get_mut(obs.iface).expect("made above");
                let b = st.baselines.entry((group.name.clone(), direction)).or_default();
                for c in TrafficClass::ALL {
                    if !frozen[c.index()] {
                        let (r, a) = (total[c.index()], busiest[c.index()]);
                        b.total[c.index()].learn(r.pps, r.bps, obs.seconds, &cfg.baseline);
                        b.address[c.index()].learn(a.pps, a.bps, obs.seconds, &cfg.baseline);
                    }
                }
            }
        }

        // 3. The samples, for signatures (before incidents change: the poll
        // one opens in is the attack's).
        self.keep_samples(obs.iface, obs.packets, &mut group_cache);

        // 4. Open, grow, update or resolve each scope's incident.
        let several = self
            .scopes
            .iter()
            .filter(|(k, s)| k.iface == obs.iface && k.direction == Direction::Incoming && s.watched())
            .count()
            > 1;
        let mut events = Vec::new();
        let keys: Vec<ScopeKey> = self.scopes.keys().filter(|k| k.iface == obs.iface).cloned().collect();
        for key in keys {
            let sc = self.scopes.get_mut(&key).expect("listed");
            let group = self.protected.group(sc.group);
            let group_name = group.map(|g| g.name.clone()).unwrap_or_default();
            let prefixes = match sc.addr {
                Some(a) => vec![Prefix::host(a)],
                // Host mode's group is the whole interface (see
                // [`group_total`]): its rules are not limited.
                None if self.protected.host_mode() => Vec::new(),
                None => group.map(|g| g.prefixes.clone()).unwrap_or_default(),
            };
            let samples = match (key.direction, sc.addr) {
                (Direction::Incoming, Some(a)) => view_of(by_dst.get(&a)),
                (Direction::Incoming, None) => view_of(by_group.get(&sc.group)),
                (Direction::Outgoing, _) => view_of(None),
            };
            // Top sources: when several targets are attacked at once, those
            // seen in this one's sampled attack packets.
            let sources: Vec<SourceRate> = match key.direction {
                Direction::Outgoing => Vec::new(),
                Direction::Incoming if several => {
                    let seen: HashSet<IpAddr> = sc.attack.samples().iter().map(|s| sample_addr(&s.src)).collect();
                    obs.sources.iter().filter(|s| seen.contains(&s.addr)).cloned().collect()
                }
                Direction::Incoming => obs.sources.to_vec(),
            };
            let ctx = ScopeContext { classes: sc.classes, samples: &samples, sources: &sources, now_ms: now };
            let peacetime = &self.ifaces[obs.iface].peacetime;
            let target = Target { key: &key, group: &group_name, prefixes };
            events.extend(step(sc, &target, &self.node, &cfg, &ctx, peacetime));
        }
        // 5. Calm scopes are forgotten.
        self.scopes.retain(|k, s| k.iface != obs.iface || s.watched());
        events
    }

    /// Keeps the poll's samples: when nothing on the interface is watched,
    /// all of them go to the peacetime (a poll late); else those of a
    /// watched scope's classes go to its attack samples. The onset counts
    /// as attack: samples of a family above its threshold never reach the
    /// peacetime, even before an incident opens.
    fn keep_samples(&mut self, iface: &str, packets: &[PacketSample], groups: &mut HashMap<IpAddr, Option<usize>>) {
        // Each with what it is about: its address, or (no address) its
        // whole group.
        let watched: Vec<(ScopeKey, [bool; CLASS_COUNT], Option<IpAddr>, usize)> = self
            .scopes
            .iter()
            .filter(|(k, s)| k.iface == iface && k.direction == Direction::Incoming && s.watched())
            .map(|(k, s)| (k.clone(), s.watched_classes(), s.addr, s.group))
            .collect();
        let st = self.ifaces.get_mut(iface).expect("made by observe");
        if watched.is_empty() {
            st.peacetime.extend(&st.pending);
            st.pending.clear();
            st.pending.extend_from_slice(packets);
            return;
        }
        // The poll before was the onset.
        let pending = std::mem::take(&mut st.pending);
        for s in pending.iter().chain(packets.iter()) {
            let dst = sample_addr(&s.dst);
            let group = *groups.entry(dst).or_insert_with(|| self.protected.group_of(dst));
            let Some(gi) = group else { continue };
            for (k, classes, addr, group) in &watched {
                let about = match addr {
                    Some(a) => *a == dst,
                    None => *group == gi,
                };
                let hit = about && classes.get(s.class as usize).copied().unwrap_or(false);
                if hit {
                    if let Some(sc) = self.scopes.get_mut(k) {
                        sc.attack.push(*s);
                    }
                }
            }
        }
    }

    /// Sets an open incident's status (by an operator or a runbook).
    /// `resolved` closes it now: if the attack goes on, a new one opens.
    pub fn set_status(
        &mut self,
        id: &str,
        status: Status,
        now_ms: u64,
        why: &str,
    ) -> Result<IncidentEvent, DetectError> {
        let sc = self.find(id)?;
        let inc = sc.incident.as_mut().expect("found");
        let detail = if why.is_empty() {
            format!("{} -> {status}", inc.status)
        } else {
            format!("{} -> {status}: {why}", inc.status)
        };
        inc.status = status;
        if status == Status::Resolved {
            inc.ended_at = Some(now_ms);
            let mut done = sc.incident.take().expect("found");
            sc.attack.clear();
            sc.signature_at = None;
            for t in sc.tracks.iter_mut() {
                t.above_since = None;
            }
            return Ok(record(&mut done, EventKind::StatusChanged, now_ms, detail));
        }
        Ok(record(inc, EventKind::StatusChanged, now_ms, detail))
    }

    /// Appends a note to an open incident's timeline.
    pub fn add_note(&mut self, id: &str, text: &str, now_ms: u64) -> Result<IncidentEvent, DetectError> {
        if text.trim().is_empty() {
            return Err(DetectError::EmptyNote);
        }
        let sc = self.find(id)?;
        let inc = sc.incident.as_mut().expect("found");
        Ok(record(inc, EventKind::NoteAdded, now_ms, text.trim().to_string()))
    }

    /// Records what the packet capture of open incident `id` holds (the
    /// capture is kept outside detection; its figures travel with the
    /// incident to the history, the API and runbooks).
    pub fn set_capture(&mut self, id: &str, info: CaptureInfo) {
        if let Ok(sc) = self.find(id) {
            if let Some(inc) = sc.incident.as_mut() {
                inc.capture = Some(info);
            }
        }
    }

    fn find(&mut self, id: &str) -> Result<&mut Scope, DetectError> {
        self.scopes
            .values_mut()
            .find(|s| s.incident.as_ref().is_some_and(|i| i.id == id))
            .ok_or_else(|| DetectError::NoSuchIncident(id.to_string()))
    }
}

/// A group's total in one direction. Host mode's group, incoming, is the
/// whole interface's traffic, whatever its destination: a flood to an
/// address the host does not have (a broadcast, a neighbour's address) still
/// reaches it, and is still an attack on it (a host-group incident).
fn group_total(
    protected: &Protected,
    obs: &Observation<'_>,
    group: usize,
    direction: Direction,
) -> Option<[ClassRate; CLASS_COUNT]> {
    if protected.host_mode() && direction == Direction::Incoming {
        return Some(*obs.classes);
    }
    obs.targets.group(group, direction).map(|g| g.classes)
}

/// Updates (or starts, when a family is above) a scope's tracks.
fn track(scopes: &mut BTreeMap<ScopeKey, Scope>, input: &Input, signals: &[(Family, Signal)], interval_start: u64) {
    let sc = match scopes.get_mut(&input.key) {
        Some(sc) => sc,
        None if signals.iter().any(|(_, s)| s.above()) => {
            scopes.entry(input.key.clone()).or_insert_with(|| Scope::new(input.group, input.addr))
        }
        None => return,
    };
    sc.classes = input.classes;
    for f in Family::DETECTED {
        let t = &mut sc.tracks[f.index()];
        let Some((_, signal)) = signals.iter().find(|(g, _)| *g == f) else {
            *t = Track::default();
            continue;
        };
        t.signal = *signal;
        if signal.above() {
            t.below_since = None;
            t.above_since.get_or_insert(interval_start);
        } else {
            t.above_since = None;
            t.below_since.get_or_insert(interval_start);
        }
    }
}

/// The address a sample's 16 bytes stand for (IPv4 mapped).
fn sample_addr(bytes: &[u8; 16]) -> IpAddr {
    crate::sources::key_addr(&detector_common::maps::SourceKey { addr: *bytes })
}

/// One family's signal from a scope's class rates, against its floor and,
/// once warm, its learned level.
fn signal(
    f: Family,
    fc: &FamilyConfig,
    classes: &[ClassRate; CLASS_COUNT],
    learned: Option<&[ClassBaseline; CLASS_COUNT]>,
    cfg: &DetectionConfig,
    connections: f64,
) -> Signal {
    let fcl = f.classes();
    let pps: f64 = fcl.iter().map(|c| classes[c.index()].pps).sum();
    let bps: f64 = fcl.iter().map(|c| classes[c.index()].bps).sum();
    let (dyn_pps, dyn_bps) = match learned {
        Some(b) if fcl.iter().all(|c| b[c.index()].warm(&cfg.baseline)) => {
            let p = baseline::sum(fcl.iter().map(|c| b[c.index()].pps));
            let q = baseline::sum(fcl.iter().map(|c| b[c.index()].bps));
            (baseline::abnormal_above(&p, &cfg.baseline), baseline::abnormal_above(&q, &cfg.baseline))
        }
        _ => (0.0, 0.0),
    };
    let http = f == Family::HttpFlood;
    Signal {
        pps,
        bps,
        pps_threshold: (fc.pps as f64).max(dyn_pps),
        bps_threshold: fc.bps.map(|b| (b as f64).max(dyn_bps)),
        connections: if http { connections } else { 0.0 },
        connections_threshold: if http { fc.new_connections_pps.map(|c| c as f64) } else { None },
    }
}

/// Who an incident is about.
struct Target<'a> {
    key: &'a ScopeKey,
    group: &'a str,
    prefixes: Vec<Prefix>,
}

/// What a scope's incident is refreshed from, besides its tracks.
struct ScopeContext<'a> {
    classes: [ClassRate; CLASS_COUNT],
    samples: &'a SampleView,
    sources: &'a [SourceRate],
    now_ms: u64,
}

/// Opens, grows, updates or resolves one scope's incident.
fn step(
    sc: &mut Scope,
    target: &Target<'_>,
    node: &str,
    cfg: &DetectionConfig,
    ctx: &ScopeContext<'_>,
    peacetime: &RecentSamples,
) -> Vec<IncidentEvent> {
    let key = target.key;
    let now = ctx.now_ms;
    let hold = cfg.hold.as_millis() as u64;
    let quiet = cfg.quiet.as_millis() as u64;
    let mut events = Vec::new();
    // Families held above their threshold long enough.
    let triggered: Vec<Family> = Family::DETECTED
        .into_iter()
        .filter(|f| sc.tracks[f.index()].above_since.is_some_and(|s| now.saturating_sub(s) + HOLD_SLACK_MS >= hold))
        .collect();
    if sc.incident.is_none() && !triggered.is_empty() {
        let started_at = triggered.iter().filter_map(|f| sc.tracks[f.index()].above_since).min().unwrap_or(now);
        let mut inc = Incident {
            id: incident_id(node, &key.iface, &key.target, key.direction, started_at),
            node: node.to_string(),
            iface: key.iface.clone(),
            target: key.target.clone(),
            hostgroup: target.group.to_string(),
            direction: key.direction,
            target_prefixes: target.prefixes.clone(),
            families: Vec::new(),
            vectors: Vec::new(),
            severity: Severity::Low,
            status: Status::Active,
            started_at,
            ended_at: None,
            pps: 0.0,
            bps: 0.0,
            peak_pps: 0.0,
            peak_bps: 0.0,
            top_sources: Vec::new(),
            top_ports: Vec::new(),
            signature: None,
            timeline: Vec::new(),
            capture: None,
        };
        add_families(&mut inc, &triggered);
        refresh(&mut inc, &sc.tracks, ctx, cfg);
        sign(&mut inc, &sc.attack, peacetime);
        sc.signature_at = Some(now);
        inc.severity = severity_of(&inc, &sc.tracks, cfg);
        let detail = describe_open(&inc, &sc.tracks);
        events.push(record(&mut inc, EventKind::Opened, now, detail));
        sc.incident = Some(inc);
    } else if let Some(inc) = sc.incident.as_mut() {
        let new: Vec<Family> = triggered.iter().copied().filter(|f| !inc.families.contains(f)).collect();
        let was_multi = inc.families.contains(&Family::MultiVector);
        add_families(inc, &new);
        refresh(inc, &sc.tracks, ctx, cfg);
        // Again once a second while it lasts, and at once for a new
        // family's classes.
        if !new.is_empty() || sc.signature_at.is_none_or(|t| now.saturating_sub(t) >= SIGNATURE_EVERY_MS) {
            sign(inc, &sc.attack, peacetime);
            sc.signature_at = Some(now);
        }
        for f in &new {
            let s = sc.tracks[f.index()].signal;
            let detail = format!("{f} at {:.0} pps (threshold {:.0})", s.pps, s.pps_threshold);
            events.push(family_added(inc, *f, now, detail));
        }
        if !was_multi && inc.families.contains(&Family::MultiVector) {
            let detail = format!("multi_vector: {}", names(inc.detected_families()));
            events.push(family_added(inc, Family::MultiVector, now, detail));
        }
        let sev = severity_of(inc, &sc.tracks, cfg);
        if sev > inc.severity {
            let detail = format!("{} -> {sev} at {:.0} pps", inc.severity, inc.pps);
            inc.severity = sev;
            events.push(record(inc, EventKind::SeverityChanged, now, detail));
        }
        let all_quiet = inc.detected_families().all(|f| {
            let t = &sc.tracks[f.index()];
            t.above_since.is_none() && t.below_since.is_some_and(|b| now.saturating_sub(b) >= quiet)
        });
        if all_quiet {
            let ended = inc.detected_families().filter_map(|f| sc.tracks[f.index()].below_since).max().unwrap_or(now);
            inc.ended_at = Some(ended);
            inc.status = Status::Resolved;
            let detail = format!("quiet for {:?}; peak {:.0} pps, {:.0} bps", cfg.quiet, inc.peak_pps, inc.peak_bps);
            let mut done = sc.incident.take().expect("incident present");
            sc.attack.clear();
            sc.signature_at = None;
            events.push(record(&mut done, EventKind::Resolved, now, detail));
        }
    }
    events
}

/// Derives the signature of `inc` from the samples an interface kept; keeps
/// the last one when there are too few for a new one.
fn sign(inc: &mut Incident, attack: &RecentSamples, peacetime: &RecentSamples) {
    let mut classes: Vec<TrafficClass> =
        inc.detected_families().flat_map(|f| f.traffic_classes().iter().copied()).collect();
    classes.sort();
    classes.dedup();
    if let Some(sig) = signature::derive(attack.samples(), peacetime.samples(), &classes) {
        inc.signature = Some(sig);
    }
}

fn names(fs: impl Iterator<Item = Family>) -> String {
    fs.map(|f| f.name()).collect::<Vec<_>>().join(", ")
}

/// Adds families, keeping `multi_vector` first once there are two.
fn add_families(inc: &mut Incident, fs: &[Family]) {
    for f in fs {
        if !inc.families.contains(f) {
            inc.families.push(*f);
        }
    }
    if inc.detected_families().count() >= 2 && !inc.families.contains(&Family::MultiVector) {
        inc.families.insert(0, Family::MultiVector);
    }
}

fn record(inc: &mut Incident, kind: EventKind, at: u64, detail: String) -> IncidentEvent {
    inc.timeline.push(TimelineEntry { at, kind, detail: detail.clone() });
    IncidentEvent { kind, at, detail, family: None, incident: inc.clone() }
}

fn family_added(inc: &mut Incident, family: Family, at: u64, detail: String) -> IncidentEvent {
    IncidentEvent { family: Some(family), ..record(inc, EventKind::FamilyAdded, at, detail) }
}

fn describe_open(inc: &Incident, tracks: &[Track; FAMILIES]) -> String {
    let parts: Vec<String> = inc
        .detected_families()
        .map(|f| {
            let s = tracks[f.index()].signal;
            format!("{f} at {:.0} pps (threshold {:.0})", s.pps, s.pps_threshold)
        })
        .collect();
    format!("{}; severity {}", parts.join(", "), inc.severity)
}

/// The worst severity among the incident's families that are above now.
fn severity_of(inc: &Incident, tracks: &[Track; FAMILIES], cfg: &DetectionConfig) -> Severity {
    inc.detected_families()
        .map(|f| tracks[f.index()].signal)
        .filter(|s| s.above())
        .map(|s| assess(&cfg.severity, s.ratio(), s.pps))
        .max()
        .unwrap_or(Severity::Low)
}

/// Current and peak rates, vectors, top sources and ports of an incident,
/// from the poll's data for its families' classes.
fn refresh(inc: &mut Incident, tracks: &[Track; FAMILIES], obs: &ScopeContext<'_>, cfg: &DetectionConfig) {
    let fams: Vec<Family> = inc.detected_families().collect();
    // http_flood counts requests and new connections alike.
    inc.pps = fams.iter().map(|f| tracks[f.index()].signal.pps + tracks[f.index()].signal.connections).sum();
    inc.bps = fams.iter().map(|f| tracks[f.index()].signal.bps).sum();
    inc.peak_pps = inc.peak_pps.max(inc.pps);
    inc.peak_bps = inc.peak_bps.max(inc.bps);

    let classes: Vec<TrafficClass> = fams.iter().flat_map(|f| f.traffic_classes().iter().copied()).collect();
    let mut vectors: Vec<String> = Vec::new();
    for f in &fams {
        let s = tracks[f.index()].signal;
        let share = |c: TrafficClass| if s.pps > 0.0 { obs.classes[c.index()].pps / s.pps } else { 0.0 };
        match f {
            Family::UdpAmplification => {
                vectors.extend(obs.samples.amplification_vectors(0.05).iter().map(|v| v.to_string()))
            }
            Family::DnsAmplification => vectors.push("dns".into()),
            Family::AckFlood => {
                if share(TrafficClass::TcpAck) >= 0.1 {
                    vectors.push("ack".into());
                }
                if share(TrafficClass::TcpRst) >= 0.1 {
                    vectors.push("rst".into());
                }
            }
            Family::IcmpFlood => {
                if share(TrafficClass::Icmp) >= 0.1 {
                    vectors.push("icmp".into());
                }
                if share(TrafficClass::Icmpv6) >= 0.1 {
                    vectors.push("icmpv6".into());
                }
            }
            Family::HttpFlood => {
                if s.pps >= s.pps_threshold {
                    vectors.push("requests".into());
                }
                if s.connections_threshold.is_some_and(|t| s.connections >= t) {
                    vectors.push("connections".into());
                }
            }
            Family::UdpFlood => vectors.push("udp".into()),
            Family::SynFlood => vectors.push("syn".into()),
            Family::DnsFlood => vectors.push("dns_query".into()),
            Family::FragmentFlood => vectors.push("fragments".into()),
            Family::MultiVector => {}
        }
    }
    for v in vectors {
        if !inc.vectors.contains(&v) {
            inc.vectors.push(v);
        }
    }

    // Top talkers and ports of the attack traffic, while it flows: not
    // from the polls of its tail, below every floor, where whoever sent
    // last (a straggler of another vector, the host's users) would stand
    // in for the attack's sources.
    if !fams.iter().any(|f| tracks[f.index()].above_since.is_some()) {
        return;
    }
    let seen_before = |s: &SourceRate| {
        obs.now_ms.saturating_sub(s.seen_for_ms) + SEEN_BEFORE_ATTACK.as_millis() as u64 <= inc.started_at
    };
    let mut top: Vec<TopSource> = obs
        .sources
        .iter()
        .map(|s| (s, classes.iter().map(|c| s.class_pps[c.index()]).sum::<f64>()))
        .filter(|(_, pps)| *pps > 0.0)
        .map(|(s, pps)| TopSource {
            addr: s.addr,
            pps,
            share: if inc.pps > 0.0 { (pps / inc.pps).min(1.0) } else { 0.0 },
            seen_before_attack: seen_before(s),
        })
        .collect();
    if !top.is_empty() {
        top.sort_by(|a, b| b.pps.total_cmp(&a.pps).then(a.addr.cmp(&b.addr)));
        top.truncate(cfg.top_sources);
        inc.top_sources = top;
    }
    let ports = obs.samples.top_dst_ports(&classes, inc.pps, cfg.top_ports);
    if !ports.is_empty() {
        inc.top_ports = ports;
    }
}
