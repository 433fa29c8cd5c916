//! The detector: per interface, per family, from a poll's rates to incident
//! events. Pure: the caller passes each poll's data and the time.

use std::collections::BTreeMap;

use detector_common::{sample::PacketSample, TrafficClass, CLASS_COUNT};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{
    baseline::{self, ClassBaseline},
    config::DetectionConfig,
    family::Family,
    incident::{incident_id, EventKind, Incident, IncidentEvent, Status, TimelineEntry, TopSource, SEEN_BEFORE_ATTACK},
    severity::{assess, Severity},
    signature::{self, RecentSamples},
};
use crate::{rates::ClassRate, samples::SampleView, sources::SourceRate};

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

struct IfaceState {
    baselines: [ClassBaseline; CLASS_COUNT],
    tracks: [Track; FAMILIES],
    incident: Option<Incident>,
    /// Samples of polls with no incident open and no family above its
    /// threshold: what a signature's collateral is measured on.
    peacetime: RecentSamples,
    /// Samples of the classes of the open incident and of the families
    /// above their threshold (from the onset, before the incident opens).
    attack: RecentSamples,
    /// The last calm poll's samples, held one poll before they become
    /// peacetime: a flood that starts late in a poll leaves it below every
    /// threshold, yet its first packets (sampled at the calm's high rate)
    /// would fill the peacetime and then count as collateral.
    pending: Vec<PacketSample>,
    /// When the open incident's signature was last derived.
    signature_at: Option<u64>,
}

impl IfaceState {
    fn new() -> Self {
        IfaceState {
            baselines: [ClassBaseline::default(); CLASS_COUNT],
            tracks: [Track::default(); FAMILIES],
            incident: None,
            peacetime: RecentSamples::new(SIGNATURE_SAMPLES),
            attack: RecentSamples::new(SIGNATURE_SAMPLES),
            pending: Vec::new(),
            signature_at: None,
        }
    }

    /// Keeps the poll's samples: all of them in peacetime; else those of
    /// the classes under attack. The onset counts as attack: samples of a
    /// family above its threshold never reach the peacetime, even before
    /// an incident opens.
    fn keep_samples(&mut self, packets: &[PacketSample]) {
        let mut watched = [false; CLASS_COUNT];
        for f in Family::DETECTED {
            let open = self.incident.as_ref().is_some_and(|i| i.families.contains(&f));
            if open || self.tracks[f.index()].above_since.is_some() {
                for c in f.traffic_classes() {
                    watched[c.index()] = true;
                }
            }
        }
        if self.incident.is_none() && !watched.contains(&true) {
            self.peacetime.extend(&self.pending);
            self.pending.clear();
            self.pending.extend_from_slice(packets);
            self.attack.clear();
        } else {
            let under_attack = |s: &&PacketSample| watched.get(s.class as usize).copied().unwrap_or(false);
            // The poll before was the onset.
            self.attack.extend(self.pending.iter().filter(under_attack));
            self.pending.clear();
            self.attack.extend(packets.iter().filter(under_attack));
        }
    }

    /// Forgets what belonged to the incident that closed.
    fn closed(&mut self) {
        self.attack.clear();
        self.signature_at = None;
    }
}

/// Learned baselines of every interface, as saved to the state directory.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedBaselines {
    pub version: u32,
    /// Interface -> class name -> baseline.
    pub interfaces: BTreeMap<String, BTreeMap<String, ClassBaseline>>,
}

pub const BASELINES_VERSION: u32 = 1;

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
    ifaces: BTreeMap<String, IfaceState>,
}

impl Detector {
    pub fn new(cfg: DetectionConfig, node: impl Into<String>) -> Detector {
        Detector { cfg, node: node.into(), ifaces: BTreeMap::new() }
    }

    pub fn config(&self) -> &DetectionConfig {
        &self.cfg
    }

    fn iface(&mut self, iface: &str) -> &mut IfaceState {
        self.ifaces.entry(iface.to_string()).or_insert_with(IfaceState::new)
    }

    /// Takes learned baselines saved by an earlier run.
    pub fn load_baselines(&mut self, saved: &SavedBaselines) {
        for (iface, classes) in &saved.interfaces {
            let st = self.iface(iface);
            for (name, b) in classes {
                if let Some(c) = TrafficClass::from_name(name) {
                    st.baselines[c.index()] = *b;
                }
            }
        }
    }

    pub fn baselines(&self) -> SavedBaselines {
        SavedBaselines {
            version: BASELINES_VERSION,
            interfaces: self
                .ifaces
                .iter()
                .map(|(i, st)| {
                    let classes =
                        TrafficClass::ALL.iter().map(|c| (c.name().to_string(), st.baselines[c.index()])).collect();
                    (i.clone(), classes)
                })
                .collect(),
        }
    }

    /// The baseline of one class, if the interface is known.
    pub fn class_baseline(&self, iface: &str, class: TrafficClass) -> Option<ClassBaseline> {
        self.ifaces.get(iface).map(|st| st.baselines[class.index()])
    }

    /// Whether an interface's baselines have finished their warm-up.
    pub fn warm(&self, iface: &str) -> bool {
        self.ifaces.get(iface).is_some_and(|st| st.baselines.iter().all(|b| b.warm(&self.cfg.baseline)))
    }

    /// Continues an incident found open at start instead of opening another.
    pub fn resume(&mut self, mut incident: Incident, now_ms: u64) {
        let st = self.iface(&incident.iface.clone());
        for f in incident.detected_families() {
            // Until the first poll says otherwise, it is below: it resolves
            // after the quiet period unless the attack goes on.
            st.tracks[f.index()].below_since = Some(now_ms);
        }
        incident.ended_at = None;
        st.incident = Some(incident);
    }

    /// True while `iface` has an open incident or a family above its
    /// threshold (an attack's onset, before the hold opens an incident).
    pub fn under_attack(&self, iface: &str) -> bool {
        self.ifaces.get(iface).is_some_and(|s| s.incident.is_some() || s.tracks.iter().any(|t| t.above_since.is_some()))
    }

    /// Open incidents, one per interface at most.
    pub fn open_incidents(&self) -> impl Iterator<Item = &Incident> {
        self.ifaces.values().filter_map(|s| s.incident.as_ref())
    }

    /// The signals of the last poll of an interface (for metrics and tests).
    pub fn signals(&self, iface: &str) -> Vec<(Family, Signal)> {
        self.ifaces
            .get(iface)
            .map(|st| Family::DETECTED.iter().map(|f| (*f, st.tracks[f.index()].signal)).collect())
            .unwrap_or_default()
    }

    /// Takes one poll; returns what happened to incidents.
    pub fn observe(&mut self, obs: &Observation<'_>) -> Vec<IncidentEvent> {
        let cfg = self.cfg.clone();
        let node = self.node.clone();
        let now = obs.now_ms;
        let hold = cfg.hold.as_millis() as u64;
        let quiet = cfg.quiet.as_millis() as u64;
        let st = self.iface(obs.iface);
        let mut events = Vec::new();

        // 1. Signals against thresholds.
        for f in Family::DETECTED {
            let Some(fc) = cfg.families.get(f).filter(|fc| fc.enabled) else {
                st.tracks[f.index()] = Track::default();
                continue;
            };
            let classes = f.classes();
            let pps: f64 = classes.iter().map(|c| obs.classes[c.index()].pps).sum();
            let bps: f64 = classes.iter().map(|c| obs.classes[c.index()].bps).sum();
            let warm = classes.iter().all(|c| st.baselines[c.index()].warm(&cfg.baseline));
            let (dyn_pps, dyn_bps) = if warm {
                let p = baseline::sum(classes.iter().map(|c| st.baselines[c.index()].pps));
                let b = baseline::sum(classes.iter().map(|c| st.baselines[c.index()].bps));
                (baseline::abnormal_above(&p, &cfg.baseline), baseline::abnormal_above(&b, &cfg.baseline))
            } else {
                (0.0, 0.0)
            };
            let signal = Signal {
                pps,
                bps,
                pps_threshold: (fc.pps as f64).max(dyn_pps),
                bps_threshold: fc.bps.map(|b| (b as f64).max(dyn_bps)),
                connections: if f == Family::HttpFlood { obs.samples.web_connections_pps() } else { 0.0 },
                connections_threshold: if f == Family::HttpFlood {
                    fc.new_connections_pps.map(|c| c as f64)
                } else {
                    None
                },
            };
            let t = &mut st.tracks[f.index()];
            t.signal = signal;
            // The rate covers the whole interval: a change dates from its start.
            let interval_start = now.saturating_sub((obs.seconds * 1000.0).round() as u64);
            if signal.above() {
                t.below_since = None;
                t.above_since.get_or_insert(interval_start);
            } else {
                t.above_since = None;
                t.below_since.get_or_insert(interval_start);
            }
        }

        // 2. Baselines learn from classes that are not under attack.
        let frozen: Vec<TrafficClass> = Family::DETECTED
            .iter()
            .filter(|f| {
                st.tracks[f.index()].above_since.is_some()
                    || st.incident.as_ref().is_some_and(|i| i.families.contains(f))
            })
            .flat_map(|f| f.classes().iter().copied())
            .collect();
        for c in TrafficClass::ALL {
            if !frozen.contains(&c) {
                let r = obs.classes[c.index()];
                st.baselines[c.index()].learn(r.pps, r.bps, obs.seconds, &cfg.baseline);
            }
        }

        // 3. Families held above their threshold long enough.
        let triggered: Vec<Family> = Family::DETECTED
            .into_iter()
            .filter(|f| st.tracks[f.index()].above_since.is_some_and(|s| now.saturating_sub(s) + HOLD_SLACK_MS >= hold))
            .collect();

        // 4. The samples, for signatures (before the incident changes: the
        // poll it opens in is the attack's).
        st.keep_samples(obs.packets);

        // 5. Open, grow, update or resolve the interface's incident.
        if st.incident.is_none() && !triggered.is_empty() {
            let started_at = triggered.iter().filter_map(|f| st.tracks[f.index()].above_since).min().unwrap_or(now);
            let mut inc = Incident {
                id: incident_id(&node, obs.iface, started_at),
                node: node.clone(),
                iface: obs.iface.to_string(),
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
            };
            add_families(&mut inc, &triggered);
            refresh(&mut inc, &st.tracks, obs, &cfg);
            sign(&mut inc, &st.attack, &st.peacetime);
            st.signature_at = Some(now);
            inc.severity = severity_of(&inc, &st.tracks, &cfg);
            let detail = describe_open(&inc, &st.tracks);
            events.push(record(&mut inc, EventKind::Opened, now, detail));
            st.incident = Some(inc);
        } else if let Some(inc) = st.incident.as_mut() {
            let new: Vec<Family> = triggered.iter().copied().filter(|f| !inc.families.contains(f)).collect();
            let was_multi = inc.families.contains(&Family::MultiVector);
            add_families(inc, &new);
            refresh(inc, &st.tracks, obs, &cfg);
            // Again once a second while it lasts, and at once for a new
            // family's classes.
            if !new.is_empty() || st.signature_at.is_none_or(|t| now.saturating_sub(t) >= SIGNATURE_EVERY_MS) {
                sign(inc, &st.attack, &st.peacetime);
                st.signature_at = Some(now);
            }
            for f in &new {
                let s = st.tracks[f.index()].signal;
                let detail = format!("{f} at {:.0} pps (threshold {:.0})", s.pps, s.pps_threshold);
                events.push(family_added(inc, *f, now, detail));
            }
            if !was_multi && inc.families.contains(&Family::MultiVector) {
                let detail = format!("multi_vector: {}", names(inc.detected_families()));
                events.push(family_added(inc, Family::MultiVector, now, detail));
            }
            let sev = severity_of(inc, &st.tracks, &cfg);
            if sev > inc.severity {
                let detail = format!("{} -> {sev} at {:.0} pps", inc.severity, inc.pps);
                inc.severity = sev;
                events.push(record(inc, EventKind::SeverityChanged, now, detail));
            }
            let all_quiet = inc.detected_families().all(|f| {
                let t = &st.tracks[f.index()];
                t.above_since.is_none() && t.below_since.is_some_and(|b| now.saturating_sub(b) >= quiet)
            });
            if all_quiet {
                let ended =
                    inc.detected_families().filter_map(|f| st.tracks[f.index()].below_since).max().unwrap_or(now);
                inc.ended_at = Some(ended);
                inc.status = Status::Resolved;
                let detail =
                    format!("quiet for {:?}; peak {:.0} pps, {:.0} bps", cfg.quiet, inc.peak_pps, inc.peak_bps);
                let mut done = st.incident.take().expect("incident present");
                st.closed();
                events.push(record(&mut done, EventKind::Resolved, now, detail));
            }
        }
        events
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
        let st = self.find(id)?;
        let inc = st.incident.as_mut().expect("found");
        let detail = if why.is_empty() {
            format!("{} -> {status}", inc.status)
        } else {
            format!("{} -> {status}: {why}", inc.status)
        };
        inc.status = status;
        if status == Status::Resolved {
            inc.ended_at = Some(now_ms);
            let mut done = st.incident.take().expect("found");
            st.closed();
            for t in st.tracks.iter_mut() {
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
        let st = self.find(id)?;
        let inc = st.incident.as_mut().expect("found");
        Ok(record(inc, EventKind::NoteAdded, now_ms, text.trim().to_string()))
    }

    fn find(&mut self, id: &str) -> Result<&mut IfaceState, DetectError> {
        self.ifaces
            .values_mut()
            .find(|s| s.incident.as_ref().is_some_and(|i| i.id == id))
            .ok_or_else(|| DetectError::NoSuchIncident(id.to_string()))
    }
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
fn refresh(inc: &mut Incident, tracks: &[Track; FAMILIES], obs: &Observation<'_>, cfg: &DetectionConfig) {
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

    // Top talkers of the attack traffic, while it flows.
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
