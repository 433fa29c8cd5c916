//! The controller's Prometheus metrics, in one explicit registry (no global
//! recorder, so tests can build several).
//!
//! Labels are bounded: interface names come from the command line and
//! classes from a fixed list. Per-source data never becomes a label; the top
//! talkers are served as JSON on `/api/top` instead.

use std::sync::atomic::AtomicU64;

use detector_common::{
    rules::{DropReason, RuleCounters},
    TrafficClass,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::{
    detect::{
        engine::{GroupBaselines, Threshold},
        family::Family as AttackFamily,
        incident::{EventKind, Incident, IncidentEvent},
    },
    mitigate::rule::Rule,
    rates::{delta, ClassSnapshot},
    targets::{Direction, GroupRate},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    pub iface: String,
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IfaceLabels {
    pub iface: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IncidentLabels {
    pub family: String,
    pub severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabels {
    pub family: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupClassLabels {
    pub iface: String,
    pub hostgroup: String,
    pub direction: String,
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ThresholdLabels {
    pub iface: String,
    pub hostgroup: String,
    pub direction: String,
    /// "address" (one address of the group) or "total" (the whole group).
    pub scope: String,
    pub family: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttachLabels {
    pub iface: String,
    pub mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    pub iface: String,
    pub class: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    pub table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunbookLabels {
    pub runbook: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FileLabels {
    pub file: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerReasonLabels {
    pub listener: String,
    pub reason: String,
}

/// Why a listener closed a connection on its own (the `reason` label).
pub const CONNECTION_CLOSE_REASONS: [&str; 4] = ["full", "evicted", "header_timeout", "idle_timeout"];

/// Every metric the controller exports.
pub struct Metrics {
    packets: Family<ClassLabels, Counter>,
    bytes: Family<ClassLabels, Counter>,
    poll_duration: Histogram,
    poll_errors: Family<IfaceLabels, Counter>,
    source_entries: Family<IfaceLabels, Gauge>,
    source_capacity: Family<IfaceLabels, Gauge>,
    sources_pruned: Family<IfaceLabels, Counter>,
    attached: Family<AttachLabels, Gauge<f64, AtomicU64>>,
    incidents: Family<IncidentLabels, Counter>,
    active_incidents: Family<FamilyLabels, Gauge>,
    active_by_severity: Family<IncidentLabels, Gauge>,
    baseline_pps: Family<GroupClassLabels, Gauge<f64, AtomicU64>>,
    baseline_bytes: Family<GroupClassLabels, Gauge<f64, AtomicU64>>,
    threshold_pps: Family<ThresholdLabels, Gauge<f64, AtomicU64>>,
    hostgroup_packets: Family<GroupClassLabels, Counter>,
    hostgroup_bytes: Family<GroupClassLabels, Counter>,
    sample_divisor: Family<IfaceLabels, Gauge>,
    sample_frame_divisor: Family<IfaceLabels, Gauge>,
    peers_learned: Family<IfaceLabels, Gauge>,
    peers_over_budget: Family<IfaceLabels, Gauge>,
    peers_learning: Family<IfaceLabels, Gauge>,
    rule_dropped_packets: Family<RuleLabels, Counter>,
    rule_dropped_bytes: Family<RuleLabels, Counter>,
    rule_passed_packets: Family<RuleLabels, Counter>,
    rule_passed_bytes: Family<RuleLabels, Counter>,
    dropped_packets: Family<DropLabels, Counter>,
    dropped_bytes: Family<DropLabels, Counter>,
    rules: Family<ActionLabels, Gauge>,
    table_entries: Family<TableLabels, Gauge>,
    table_capacity: Family<TableLabels, Gauge>,
    rules_refused: Family<RefusalLabels, Counter>,
    rules_expired: Counter,
    runbook_executions: Family<RunbookLabels, Counter>,
    runbook_step_duration: Family<StepLabels, Histogram, fn() -> Histogram>,
    runbooks_loaded: Gauge,
    runbook_load_errors: Gauge,
    history_dropped: Counter,
    history_write_errors: Counter,
    history_backlog: Gauge,
    state_write_errors: Family<FileLabels, Counter>,
    api_connections: Family<ListenerLabels, Gauge>,
    api_connection_limit: Family<ListenerLabels, Gauge>,
    api_connections_accepted: Family<ListenerLabels, Counter>,
    api_connections_closed: Family<ListenerReasonLabels, Counter>,
    api_requests_timed_out: Family<ListenerLabels, Counter>,
    api_accept_errors: Family<ListenerLabels, Counter>,
    /// What [`Metrics::active_incidents`] last set (empty: nothing yet).
    active_published: std::sync::Mutex<Vec<i64>>,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            packets: Family::default(),
            bytes: Family::default(),
            // 100 µs .. ~0.8 s: a poll is a few map reads.
            poll_duration: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 14)),
            poll_errors: Family::default(),
            source_entries: Family::default(),
            source_capacity: Family::default(),
            sources_pruned: Family::default(),
            attached: Family::default(),
            incidents: Family::default(),
            active_incidents: Family::default(),
            active_by_severity: Family::default(),
            baseline_pps: Family::default(),
            baseline_bytes: Family::default(),
            threshold_pps: Family::default(),
            hostgroup_packets: Family::default(),
            hostgroup_bytes: Family::default(),
            sample_divisor: Family::default(),
            sample_frame_divisor: Family::default(),
            peers_learned: Family::default(),
            peers_over_budget: Family::default(),
            peers_learning: Family::default(),
            rule_dropped_packets: Family::default(),
            rule_dropped_bytes: Family::default(),
            rule_passed_packets: Family::default(),
            rule_passed_bytes: Family::default(),
            dropped_packets: Family::default(),
            dropped_bytes: Family::default(),
            rules: Family::default(),
            table_entries: Family::default(),
            table_capacity: Family::default(),
            rules_refused: Family::default(),
            rules_expired: Counter::default(),
            runbook_executions: Family::default(),
            // 1 ms .. ~65 s: a map write, up to a webhook's retries.
            runbook_step_duration: Family::new_with_constructor(step_histogram),
            runbooks_loaded: Gauge::default(),
            runbook_load_errors: Gauge::default(),
            history_dropped: Counter::default(),
            history_write_errors: Counter::default(),
            history_backlog: Gauge::default(),
            state_write_errors: Family::default(),
            api_connections: Family::default(),
            api_connection_limit: Family::default(),
            api_connections_accepted: Family::default(),
            api_connections_closed: Family::default(),
            api_requests_timed_out: Family::default(),
            api_accept_errors: Family::default(),
            active_published: Default::default(),
        };
        registry.register(
            "detector_packets",
            "Packets seen by the XDP program, per interface and traffic class",
            m.packets.clone(),
        );
        registry.register(
            "detector_bytes",
            "Bytes (whole frames) seen by the XDP program, per interface and traffic class",
            m.bytes.clone(),
        );
        registry.register_with_unit(
            "detector_poll_duration",
            "Time taken by one poll of the BPF maps (all interfaces)",
            Unit::Seconds,
            m.poll_duration.clone(),
        );
        registry.register("detector_poll_errors", "Polls of an interface's maps that failed", m.poll_errors.clone());
        registry.register(
            "detector_source_map_entries",
            "Entries in the per-source map after the last poll",
            m.source_entries.clone(),
        );
        registry.register("detector_source_map_capacity", "Capacity of the per-source map", m.source_capacity.clone());
        registry.register(
            "detector_source_map_pruned",
            "Idle sources removed from the per-source map by the controller",
            m.sources_pruned.clone(),
        );
        registry.register(
            "detector_xdp_attached",
            "1 for each interface the XDP program is attached to, with the mode it got; 0 once the interface is gone \
             (deleted, or recreated under the same name: the program went with the old one)",
            m.attached.clone(),
        );
        registry.register(
            "detector_incidents",
            "Incidents opened, per attack family (counted again when a family joins one) and severity at that time",
            m.incidents.clone(),
        );
        registry.register("detector_active_incidents", "Open incidents per attack family", m.active_incidents.clone());
        registry.register(
            "detector_active_incidents_by_severity",
            "Open incidents per attack family and current severity",
            m.active_by_severity.clone(),
        );
        registry.register(
            "detector_baseline_packets_per_second",
            "Learned normal packet rate of a host group's total per interface, direction and class",
            m.baseline_pps.clone(),
        );
        registry.register(
            "detector_baseline_bytes_per_second",
            "Learned normal byte rate of a host group's total per interface, direction and class",
            m.baseline_bytes.clone(),
        );
        registry.register(
            "detector_threshold_packets_per_second",
            "Current alarm threshold per interface, host group, direction, scope (one address or the group's total) and attack family: the static floor or the learned level, whichever is higher",
            m.threshold_pps.clone(),
        );
        registry.register(
            "detector_hostgroup_packets",
            "Packets to (incoming) or from (outgoing) a host group's addresses per interface and class, dropped ones included",
            m.hostgroup_packets.clone(),
        );
        registry.register(
            "detector_hostgroup_bytes",
            "Bytes to (incoming) or from (outgoing) a host group's addresses per interface and class, Ethernet header included",
            m.hostgroup_bytes.clone(),
        );
        registry.register(
            "detector_sample_divisor",
            "One packet in this many is sampled for ports and reflector services",
            m.sample_divisor.clone(),
        );
        registry.register(
            "detector_sample_frame_divisor",
            "One sample in this many carries the frame's first bytes, for packet captures (0: captures off)",
            m.sample_frame_divisor.clone(),
        );
        // Gauges holding the kernel's cumulative counts (a counter could
        // not follow a count the kernel restarts with a new object).
        registry.register(
            "detector_known_peers_learned",
            "Known-good peers the egress program learned since it was loaded",
            m.peers_learned.clone(),
        );
        registry.register(
            "detector_known_peers_over_budget",
            "New peers the egress program did not learn because a poll's learning budget was spent",
            m.peers_over_budget.clone(),
        );
        registry.register(
            "detector_known_peers_learning",
            "1 while the egress program learns known-good peers (0 while the interface is under attack)",
            m.peers_learning.clone(),
        );
        registry.register(
            "detector_rule_dropped_packets",
            "Packets dropped by a mitigation rule, over all interfaces",
            m.rule_dropped_packets.clone(),
        );
        registry.register(
            "detector_rule_dropped_bytes",
            "Bytes dropped by a mitigation rule, over all interfaces",
            m.rule_dropped_bytes.clone(),
        );
        registry.register(
            "detector_rule_passed_packets",
            "Packets a mitigation rule matched and let through (admitted by a rate limit, or allowlisted)",
            m.rule_passed_packets.clone(),
        );
        registry.register(
            "detector_rule_passed_bytes",
            "Bytes a mitigation rule matched and let through",
            m.rule_passed_bytes.clone(),
        );
        registry.register(
            "detector_dropped_packets",
            "Packets dropped in XDP, per interface, traffic class and reason (rule, rate_limit or syn_cookie)",
            m.dropped_packets.clone(),
        );
        registry.register(
            "detector_dropped_bytes",
            "Bytes dropped in XDP, per interface, traffic class and reason",
            m.dropped_bytes.clone(),
        );
        registry.register("detector_rules", "Mitigation rules in force, per action", m.rules.clone());
        registry.register(
            "detector_rule_table_entries",
            "Entries in use in the rule and allowlist tables",
            m.table_entries.clone(),
        );
        registry.register(
            "detector_rule_table_capacity",
            "Capacity of the rule and allowlist tables (mitigation.max_rules, mitigation.max_allow)",
            m.table_capacity.clone(),
        );
        registry.register(
            "detector_rules_refused",
            "Rule and allowlist changes refused, per reason (full, invalid, allowlisted, duplicate, overlap, protected, internal)",
            m.rules_refused.clone(),
        );
        registry.register("detector_rules_expired", "Rules removed when their TTL ran out", m.rules_expired.clone());
        registry.register(
            "detector_runbook_executions",
            "Runbook executions, per runbook and outcome (ok, failed, skipped, dry_run, interrupted)",
            m.runbook_executions.clone(),
        );
        registry.register_with_unit(
            "detector_runbook_step_duration",
            "Time taken by one runbook step, per step kind",
            Unit::Seconds,
            m.runbook_step_duration.clone(),
        );
        registry.register("detector_runbooks_loaded", "Runbooks loaded and enabled or not", m.runbooks_loaded.clone());
        registry.register(
            "detector_runbook_load_errors",
            "Runbook files refused at the last (re)load",
            m.runbook_load_errors.clone(),
        );
        registry.register(
            "detector_history_dropped",
            "Incident history entries dropped because the disk did not keep up (queue or backlog full) or refused them for good",
            m.history_dropped.clone(),
        );
        registry.register(
            "detector_history_write_errors",
            "Incident history writes the disk refused (full, read-only, I/O error); each is tried again",
            m.history_write_errors.clone(),
        );
        registry.register(
            "detector_history_backlog",
            "Incident history entries waiting to be written",
            m.history_backlog.clone(),
        );
        registry.register(
            "detector_state_write_errors",
            "Writes of a state directory file (rules.json, baselines.json) that failed; each is tried again",
            m.state_write_errors.clone(),
        );
        registry.register(
            "detector_api_connections",
            "Connections open on a listener (http: the metrics and API port; control: the control socket)",
            m.api_connections.clone(),
        );
        registry.register(
            "detector_api_connection_limit",
            "Most connections a listener keeps open at once",
            m.api_connection_limit.clone(),
        );
        registry.register(
            "detector_api_connections_accepted",
            "Connections a listener accepted",
            m.api_connections_accepted.clone(),
        );
        registry.register(
            "detector_api_connections_closed",
            "Connections a listener closed on its own, per reason: full (refused, every connection had a request in progress), evicted (idle, closed to make room), header_timeout, idle_timeout",
            m.api_connections_closed.clone(),
        );
        registry.register(
            "detector_api_requests_timed_out",
            "Requests answered 503 because they took longer than the listener's request time limit",
            m.api_requests_timed_out.clone(),
        );
        registry.register(
            "detector_api_accept_errors",
            "Failed accepts on a listener (out of descriptors or memory)",
            m.api_accept_errors.clone(),
        );
        // A gauge, not an OpenMetrics info: promtool and the classic text
        // format know no `info` type.
        let build = Family::<BuildLabels, Gauge>::default();
        build.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION").to_string() }).set(1);
        registry.register("detector_build_info", "Build information; always 1", build);
        // Every family and severity from the start at zero, so the first
        // incident is an increase (`increase()` of a series that appears
        // at 1 sees none).
        for f in AttackFamily::ALL {
            for sev in crate::detect::severity::Severity::ALL {
                let _ =
                    m.incidents.get_or_create(&IncidentLabels { family: f.name().into(), severity: sev.name().into() });
            }
        }
        m
    }
}

/// Recording. Every label set is built here, so a series is named the same
/// way wherever it is written.
impl Metrics {
    /// An interface's program is attached (or adopted): its mode and
    /// per-source capacity, and every class and its counters of failures
    /// and pruned sources exported from the start at zero.
    pub fn interface_attached(&self, iface: &str, mode: &str, source_capacity: u32) {
        self.attached.get_or_create(&AttachLabels { iface: iface.into(), mode: mode.into() }).set(1.0);
        let l = IfaceLabels { iface: iface.into() };
        self.source_capacity.get_or_create(&l).set(source_capacity as i64);
        let _ = self.poll_errors.get_or_create(&l);
        let _ = self.sources_pruned.get_or_create(&l);
        for class in TrafficClass::ALL {
            let l = ClassLabels { iface: iface.into(), class: class.name().into() };
            let _ = self.packets.get_or_create(&l);
            let _ = self.bytes.get_or_create(&l);
        }
    }

    /// The packets and bytes seen and dropped since the previous snapshot.
    pub fn count_classes(&self, iface: &str, prev: &ClassSnapshot, cur: &ClassSnapshot) {
        // A class that moved only: the series exist from the attachment,
        // and each lookup hashes its labels.
        for (class, (p, c)) in TrafficClass::ALL.iter().zip(prev.counters.iter().zip(cur.counters.iter())) {
            let (packets, bytes) = (delta(p.packets, c.packets), delta(p.bytes, c.bytes));
            if packets == 0 && bytes == 0 {
                continue;
            }
            let l = ClassLabels { iface: iface.into(), class: class.name().into() };
            self.packets.get_or_create(&l).inc_by(packets);
            self.bytes.get_or_create(&l).inc_by(bytes);
        }
        for reason in DropReason::ALL {
            let (before, now) = (&prev.dropped[reason as usize], &cur.dropped[reason as usize]);
            for (class, (p, c)) in TrafficClass::ALL.iter().zip(before.iter().zip(now.iter())) {
                if c.packets == 0 || (p.packets == c.packets && p.bytes == c.bytes) {
                    continue;
                }
                let l = DropLabels { iface: iface.into(), class: class.name().into(), reason: reason.name().into() };
                self.dropped_packets.get_or_create(&l).inc_by(delta(p.packets, c.packets));
                self.dropped_bytes.get_or_create(&l).inc_by(delta(p.bytes, c.bytes));
            }
        }
    }

    /// One poll of every interface took `seconds`.
    pub fn poll_took(&self, seconds: f64) {
        self.poll_duration.observe(seconds);
    }

    /// Whether an interface's program is still attached (see
    /// [`Metrics::interface_attached`] for the first time).
    pub fn interface_still_attached(&self, iface: &str, mode: &str, attached: bool) {
        let l = AttachLabels { iface: iface.into(), mode: mode.into() };
        self.attached.get_or_create(&l).set(if attached { 1.0 } else { 0.0 });
    }

    pub fn poll_failed(&self, iface: &str) {
        self.poll_errors.get_or_create(&IfaceLabels { iface: iface.into() }).inc();
    }

    /// Sources tracked after a poll, and how many idle ones it removed.
    pub fn sources(&self, iface: &str, tracked: usize, pruned: usize) {
        let l = IfaceLabels { iface: iface.into() };
        if pruned > 0 {
            self.sources_pruned.get_or_create(&l).inc_by(pruned as u64);
        }
        self.source_entries.get_or_create(&l).set(tracked as i64);
    }

    /// The egress program's learning on `iface`.
    pub fn known_peers(&self, iface: &str, learning: bool, learned: u64, over_budget: u64) {
        let l = IfaceLabels { iface: iface.into() };
        self.peers_learning.get_or_create(&l).set(learning as i64);
        self.peers_learned.get_or_create(&l).set(learned as i64);
        self.peers_over_budget.get_or_create(&l).set(over_budget as i64);
    }

    pub fn sample_divisor(&self, iface: &str, divisor: u32, frame_divisor: u32) {
        let labels = IfaceLabels { iface: iface.into() };
        self.sample_divisor.get_or_create(&labels).set(divisor as i64);
        self.sample_frame_divisor.get_or_create(&labels).set(frame_divisor as i64);
    }

    /// Counts an incident opening, or a family joining one.
    pub fn incident_event(&self, ev: &IncidentEvent) {
        let inc = &ev.incident;
        let families: Vec<AttackFamily> = match ev.kind {
            EventKind::Opened => inc.families.clone(),
            EventKind::FamilyAdded => ev.family.into_iter().collect(),
            _ => return,
        };
        for f in families {
            let l = IncidentLabels { family: f.name().into(), severity: inc.severity.name().into() };
            self.incidents.get_or_create(&l).inc();
        }
    }

    /// Open incidents per family, and per family and current severity
    /// (every family and severity exported, at zero if none).
    /// Set only when a count changed since the last call (each poll's).
    pub fn active_incidents<'a>(&self, open: impl Iterator<Item = &'a Incident>) {
        use crate::detect::severity::Severity;
        let open: Vec<&Incident> = open.collect();
        let counts: Vec<i64> = AttackFamily::ALL
            .iter()
            .flat_map(|f| {
                let of = open.iter().filter(|i| i.families.contains(f)).collect::<Vec<_>>();
                std::iter::once(of.len() as i64)
                    .chain(Severity::ALL.iter().map(move |sev| of.iter().filter(|i| i.severity == *sev).count() as i64))
            })
            .collect();
        let mut last = self.active_published.lock().unwrap_or_else(|p| p.into_inner());
        if *last == counts {
            return;
        }
        let mut n = counts.iter();
        for f in AttackFamily::ALL {
            let all = n.next().copied().unwrap_or(0);
            self.active_incidents.get_or_create(&FamilyLabels { family: f.name().into() }).set(all);
            for sev in Severity::ALL {
                let l = IncidentLabels { family: f.name().into(), severity: sev.name().into() };
                self.active_by_severity.get_or_create(&l).set(n.next().copied().unwrap_or(0));
            }
        }
        *last = counts;
    }

    /// An interface's learned levels and current thresholds.
    pub fn baselines(&self, iface: &str, groups: &[(String, Direction, GroupBaselines)], thresholds: &[Threshold]) {
        for (group, direction, b) in groups {
            for c in TrafficClass::ALL {
                let l = GroupClassLabels {
                    iface: iface.into(),
                    hostgroup: group.clone(),
                    direction: direction.name().into(),
                    class: c.name().into(),
                };
                let t = b.total[c.index()];
                self.baseline_pps.get_or_create(&l).set(t.pps.mean);
                self.baseline_bytes.get_or_create(&l).set(t.bps.mean / 8.0);
            }
        }
        for t in thresholds {
            let l = ThresholdLabels {
                iface: iface.into(),
                hostgroup: t.group.clone(),
                direction: t.direction.name().into(),
                scope: if t.total { "total" } else { "address" }.into(),
                family: t.family.name().into(),
            };
            self.threshold_pps.get_or_create(&l).set(t.pps);
        }
    }

    /// A poll's traffic of each host group (named by `names`, by index).
    pub fn hostgroups(&self, iface: &str, names: &[&str], groups: &[GroupRate]) {
        for g in groups {
            let Some(name) = names.get(g.group) else { continue };
            for c in TrafficClass::ALL {
                let r = g.classes[c.index()];
                if r.packets == 0 && r.bytes == 0 {
                    continue;
                }
                let l = GroupClassLabels {
                    iface: iface.into(),
                    hostgroup: name.to_string(),
                    direction: g.direction.name().into(),
                    class: c.name().into(),
                };
                self.hostgroup_packets.get_or_create(&l).inc_by(r.packets);
                self.hostgroup_bytes.get_or_create(&l).inc_by(r.bytes);
            }
        }
    }

    /// The rule and allowlist tables' capacity (fixed at start).
    pub fn rule_tables_capacity(&self, max_rules: u32, max_allow: u32) {
        self.table_capacity.get_or_create(&TableLabels { table: "rules".into() }).set(max_rules as i64);
        self.table_capacity.get_or_create(&TableLabels { table: "allowlist".into() }).set(max_allow as i64);
    }

    /// Rules in force per action, and the tables' use.
    pub fn rules_in_force(&self, rules: &[Rule], allow_entries: usize) {
        for action in ["drop", "rate_limit"] {
            let n = rules.iter().filter(|r| r.action.name() == action).count();
            self.rules.get_or_create(&ActionLabels { action: action.into() }).set(n as i64);
        }
        self.table_entries.get_or_create(&TableLabels { table: "rules".into() }).set(rules.len() as i64);
        self.table_entries.get_or_create(&TableLabels { table: "allowlist".into() }).set(allow_entries as i64);
    }

    /// A rule's counters moved from `prev` to `cur` (on one interface).
    pub fn rule_counters(&self, rule: &str, prev: &RuleCounters, cur: &RuleCounters) {
        let l = RuleLabels { rule: rule.into() };
        self.rule_dropped_packets.get_or_create(&l).inc_by(delta(prev.dropped_packets, cur.dropped_packets));
        self.rule_dropped_bytes.get_or_create(&l).inc_by(delta(prev.dropped_bytes, cur.dropped_bytes));
        self.rule_passed_packets.get_or_create(&l).inc_by(delta(prev.passed_packets, cur.passed_packets));
        self.rule_passed_bytes.get_or_create(&l).inc_by(delta(prev.passed_bytes, cur.passed_bytes));
    }

    /// A removed rule's series leave the metrics (the label set stays bounded).
    pub fn forget_rule(&self, rule: &str) {
        let l = RuleLabels { rule: rule.into() };
        self.rule_dropped_packets.remove(&l);
        self.rule_dropped_bytes.remove(&l);
        self.rule_passed_packets.remove(&l);
        self.rule_passed_bytes.remove(&l);
    }

    pub fn rule_expired(&self) {
        self.rules_expired.inc();
    }

    /// A rule or allowlist change refused, by the reason's stable name.
    pub fn rule_refused(&self, reason: &str) {
        self.rules_refused.get_or_create(&RefusalLabels { reason: reason.into() }).inc();
    }

    pub fn runbook_execution(&self, runbook: &str, outcome: &str) {
        self.runbook_executions
            .get_or_create(&RunbookLabels { runbook: runbook.into(), outcome: outcome.into() })
            .inc();
    }

    pub fn runbook_step(&self, kind: &str, seconds: f64) {
        self.runbook_step_duration.get_or_create(&StepLabels { kind: kind.into() }).observe(seconds);
    }

    pub fn history_dropped(&self, n: u64) {
        self.history_dropped.inc_by(n);
    }

    pub fn history_write_failed(&self) {
        self.history_write_errors.inc();
    }

    pub fn history_backlog(&self, n: usize) {
        self.history_backlog.set(n as i64);
    }

    pub fn state_write_failed(&self, file: &str) {
        self.state_write_errors.get_or_create(&FileLabels { file: file.into() }).inc();
    }

    /// A listener starts: its cap, and its series exported at zero.
    pub fn api_listener(&self, listener: &str, max_connections: usize) {
        let l = ListenerLabels { listener: listener.into() };
        self.api_connection_limit.get_or_create(&l).set(max_connections as i64);
        self.api_connections.get_or_create(&l).set(0);
        let _ = self.api_connections_accepted.get_or_create(&l);
        let _ = self.api_requests_timed_out.get_or_create(&l);
        let _ = self.api_accept_errors.get_or_create(&l);
        for reason in CONNECTION_CLOSE_REASONS {
            let _ = self
                .api_connections_closed
                .get_or_create(&ListenerReasonLabels { listener: listener.into(), reason: reason.into() });
        }
    }

    pub fn api_connection_opened(&self, listener: &str) {
        let l = ListenerLabels { listener: listener.into() };
        self.api_connections_accepted.get_or_create(&l).inc();
        self.api_connections.get_or_create(&l).inc();
    }

    /// A connection that was open has ended, for whatever reason.
    pub fn api_connection_ended(&self, listener: &str) {
        self.api_connections.get_or_create(&ListenerLabels { listener: listener.into() }).dec();
    }

    /// The listener closed (or refused) a connection on its own; `reason`
    /// is one of [`CONNECTION_CLOSE_REASONS`].
    pub fn api_connection_closed(&self, listener: &str, reason: &str) {
        self.api_connections_closed
            .get_or_create(&ListenerReasonLabels { listener: listener.into(), reason: reason.into() })
            .inc();
    }

    pub fn api_request_timed_out(&self, listener: &str) {
        self.api_requests_timed_out.get_or_create(&ListenerLabels { listener: listener.into() }).inc();
    }

    pub fn api_accept_failed(&self, listener: &str) {
        self.api_accept_errors.get_or_create(&ListenerLabels { listener: listener.into() }).inc();
    }

    /// How many runbooks loaded, and how many files were refused.
    pub fn runbooks(&self, loaded: usize, refused: usize) {
        self.runbooks_loaded.set(loaded as i64);
        self.runbook_load_errors.set(refused as i64);
    }
}

/// 1 ms .. ~65 s: a map write, up to a webhook's retries.
fn step_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 17))
}

/// The registry in the classic Prometheus text format (0.0.4), which
/// `promtool check metrics` and every Prometheus version read.
pub fn encode(registry: &Registry) -> String {
    let mut open_metrics = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut open_metrics, registry);
    to_classic_text(&open_metrics)
}

/// prometheus-client writes OpenMetrics: a counter's family is named without
/// `_total` (its samples with), and there are `# UNIT` and `# EOF` lines. The
/// classic format names the family like its samples and has neither line.
fn to_classic_text(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        open_metrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_conventions() {
        let mut r = Registry::default();
        let m = Metrics::register(&mut r);
        let l = ClassLabels { iface: "veth0".into(), class: "udp".into() };
        m.packets.get_or_create(&l).inc_by(3);
        m.bytes.get_or_create(&l).inc_by(192);
        m.poll_duration.observe(0.002);
        let text = encode(&r);
        assert!(text.contains("detector_packets_total{iface=\"veth0\",class=\"udp\"} 3"), "{text}");
        assert!(text.contains("detector_bytes_total{iface=\"veth0\",class=\"udp\"} 192"), "{text}");
        assert!(text.contains("detector_poll_duration_seconds_bucket"), "{text}");
        assert!(text.contains("detector_build_info{version="), "{text}");
        // Classic text format: counter families carry _total, no EOF/UNIT.
        assert!(text.contains("# TYPE detector_packets_total counter"), "{text}");
        assert!(text.contains("# HELP detector_packets_total "), "{text}");
        assert!(text.contains("# TYPE detector_poll_duration_seconds histogram"), "{text}");
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
    }
}
