//! Scripted traffic timelines through the detector, in milliseconds.

use std::time::Duration;

use detector_common::{sample::PacketSample, TrafficClass, CLASS_COUNT};

use super::{
    config::{DetectionConfig, FamilyConfig},
    engine::{DetectError, Detector, Observation},
    family::Family,
    incident::{EventKind, IncidentEvent, Status},
    severity::Severity,
};
use crate::{
    rates::ClassRate,
    samples::SampleView,
    sources::SourceRate,
    span::Span,
    targets::{Direction, GroupRate, TargetRate, TargetsReading},
};

/// The host's address in host mode: every test's traffic goes to it.
const HOST: &str = "192.0.2.2";

const POLL: f64 = 0.1;
const T0: u64 = 1_795_559_700_000;

fn cfg() -> DetectionConfig {
    let mut c =
        DetectionConfig { hold: Duration::from_millis(300), quiet: Duration::from_secs(5), ..Default::default() };
    c.baseline.window = Duration::from_secs(60);
    c.baseline.warmup = Duration::from_secs(30);
    let f = &mut c.families;
    for fc in [
        &mut f.udp_flood,
        &mut f.syn_flood,
        &mut f.ack_flood,
        &mut f.icmp_flood,
        &mut f.dns_flood,
        &mut f.dns_amplification,
        &mut f.udp_amplification,
        &mut f.http_flood,
        &mut f.fragment_flood,
    ] {
        *fc = FamilyConfig { enabled: true, pps: 1_000, bps: None, new_connections_pps: None };
    }
    f.http_flood.new_connections_pps = Some(500);
    c
}

/// A detector fed poll by poll.
struct Run {
    det: Detector,
    now: u64,
    events: Vec<IncidentEvent>,
    sources: Vec<SourceRate>,
    samples: Vec<PacketSample>,
}

impl Run {
    fn new(cfg: DetectionConfig) -> Run {
        let mut det = Detector::new(cfg, "node1");
        det.set_host_addresses([HOST.parse().unwrap()]);
        Run { det, now: T0, events: Vec::new(), sources: Vec::new(), samples: Vec::new() }
    }

    /// `secs` of polls at the given per-class rates (bps = 512 bits/packet).
    fn traffic(&mut self, rates: &[(TrafficClass, f64)], secs: f64) -> Vec<IncidentEvent> {
        let mut out = Vec::new();
        let polls = (secs / POLL).round() as usize;
        for _ in 0..polls {
            self.now += (POLL * 1000.0) as u64;
            let mut classes = [ClassRate::default(); CLASS_COUNT];
            for (c, pps) in rates {
                classes[c.index()] = ClassRate {
                    packets: (pps * POLL) as u64,
                    bytes: (pps * POLL * 64.0) as u64,
                    pps: *pps,
                    bps: pps * 512.0,
                };
            }
            // Samples with no destination are the host's.
            for s in self.samples.iter_mut().filter(|s| s.dst == [0; 16]) {
                s.dst = crate::sources::addr_key(HOST.parse().unwrap()).addr;
            }
            let samples = SampleView::new(&self.samples, 1, POLL);
            let targets = host_traffic(&classes);
            let obs = Observation {
                iface: "eth0",
                now_ms: self.now,
                seconds: POLL,
                classes: &classes,
                sources: &self.sources,
                samples: &samples,
                packets: &self.samples,
                targets: &targets,
            };
            out.extend(self.det.observe(&obs));
        }
        self.events.extend(out.clone());
        out
    }

    fn quiet(&mut self, secs: f64) -> Vec<IncidentEvent> {
        self.traffic(&[], secs)
    }

    fn kinds(&self) -> Vec<EventKind> {
        self.events.iter().map(|e| e.kind).collect()
    }
}

/// All the traffic to the host's one address.
fn host_traffic(classes: &[ClassRate; CLASS_COUNT]) -> TargetsReading {
    TargetsReading {
        incoming: vec![TargetRate { addr: HOST.parse().unwrap(), group: 0, classes: *classes }],
        outgoing: Vec::new(),
        groups: vec![
            GroupRate { group: 0, direction: Direction::Incoming, classes: *classes },
            GroupRate { group: 0, direction: Direction::Outgoing, classes: [ClassRate::default(); CLASS_COUNT] },
        ],
    }
}

fn opened(events: &[IncidentEvent]) -> &IncidentEvent {
    events.iter().find(|e| e.kind == EventKind::Opened).expect("an incident opened")
}

#[test]
fn every_family_is_detected_from_its_classes() {
    let cases: &[(TrafficClass, Family, &[&str])] = &[
        (TrafficClass::Udp, Family::UdpFlood, &["udp"]),
        (TrafficClass::TcpSyn, Family::SynFlood, &["syn"]),
        (TrafficClass::TcpAck, Family::AckFlood, &["ack"]),
        (TrafficClass::TcpRst, Family::AckFlood, &["rst"]),
        (TrafficClass::Icmp, Family::IcmpFlood, &["icmp"]),
        (TrafficClass::Icmpv6, Family::IcmpFlood, &["icmpv6"]),
        (TrafficClass::DnsQuery, Family::DnsFlood, &["dns_query"]),
        (TrafficClass::DnsResponse, Family::DnsAmplification, &["dns"]),
        (TrafficClass::UdpAmplification, Family::UdpAmplification, &["ntp"]),
        (TrafficClass::HttpRequest, Family::HttpFlood, &["requests"]),
        (TrafficClass::Fragment, Family::FragmentFlood, &["fragments"]),
    ];
    for (class, family, vectors) in cases {
        let mut r = Run::new(cfg());
        r.samples = vec![PacketSample { class: *class as u8, sport: 123, dport: 40000, ..Default::default() }; 10];
        r.quiet(1.0);
        let ev = r.traffic(&[(*class, 5_000.0)], 1.0);
        let o = opened(&ev);
        assert_eq!(o.incident.families, vec![*family], "{}", class.name());
        assert_eq!(o.incident.vectors, vectors.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "{}", class.name());
        assert_eq!(o.incident.status, Status::Active);
        assert_eq!(o.incident.node, "node1");
        assert!(o.incident.id.starts_with("node1-eth0-192.0.2.2-"), "{}", o.incident.id);
        assert_eq!((o.incident.target.as_str(), o.incident.hostgroup.as_str()), (HOST, "host"));
        assert_eq!(o.incident.direction, Direction::Incoming);
        // Opened one hold time after the flood began.
        assert_eq!(o.at - o.incident.started_at, 300, "{}", class.name());
        let ev = r.quiet(6.0);
        let res = ev.iter().find(|e| e.kind == EventKind::Resolved).expect("resolved");
        assert_eq!(res.incident.status, Status::Resolved);
        assert_eq!(res.incident.ended_at, Some(o.incident.started_at + 1000));
    }
}

#[test]
fn a_connection_flood_on_the_web_ports_is_an_http_flood_but_spoofed_syns_are_not() {
    let mut r = Run::new(cfg());
    // Spoofed SYNs to 443: SYN samples, no ACKs: a SYN flood only.
    r.samples =
        vec![PacketSample { class: TrafficClass::TcpSyn as u8, sport: 999, dport: 443, ..Default::default() }; 200];
    let ev = r.traffic(&[(TrafficClass::TcpSyn, 5_000.0)], 1.0);
    assert_eq!(opened(&ev).incident.families, vec![Family::SynFlood]);
    // Real connections: as many ACKs as SYNs to the port, 200 + 200 samples
    // per 0.1 s poll at divisor 1 = 2,000 connections/s, over the 500 floor.
    let mut r = Run::new(cfg());
    r.samples.extend(vec![PacketSample { class: TrafficClass::TcpSyn as u8, dport: 443, ..Default::default() }; 200]);
    r.samples.extend(vec![PacketSample { class: TrafficClass::TcpAck as u8, dport: 443, ..Default::default() }; 200]);
    let ev = r.traffic(&[(TrafficClass::TcpSyn, 800.0), (TrafficClass::TcpAck, 800.0)], 1.0);
    let o = opened(&ev);
    assert_eq!(o.incident.families, vec![Family::HttpFlood]);
    assert_eq!(o.incident.vectors, vec!["connections".to_string()]);
    assert_eq!(o.incident.top_ports[0].port, 443);
}

#[test]
fn bursts_shorter_than_the_hold_open_nothing() {
    let mut r = Run::new(cfg());
    for _ in 0..20 {
        r.traffic(&[(TrafficClass::TcpSyn, 50_000.0)], 0.2);
        r.quiet(0.5);
    }
    assert!(r.events.is_empty(), "{:?}", r.kinds());
    r.traffic(&[(TrafficClass::TcpSyn, 50_000.0)], 0.3);
    assert_eq!(r.kinds(), vec![EventKind::Opened]);
}

#[test]
fn a_flapping_flood_is_one_incident() {
    let mut r = Run::new(cfg());
    for _ in 0..5 {
        r.traffic(&[(TrafficClass::Udp, 20_000.0)], 2.0);
        r.quiet(3.0); // shorter than the 5 s quiet period
    }
    assert_eq!(r.kinds(), vec![EventKind::Opened]);
    let ev = r.quiet(3.0);
    assert_eq!(ev.iter().map(|e| e.kind).collect::<Vec<_>>(), vec![EventKind::Resolved]);
    let inc = &ev[0].incident;
    // It ended when the last burst did, 25 s after it started.
    assert_eq!(inc.ended_at.unwrap() - inc.started_at, 22_000);
}

#[test]
fn severity_rises_in_steps_and_never_falls() {
    let mut r = Run::new(cfg());
    r.traffic(&[(TrafficClass::TcpSyn, 1_500.0)], 1.0);
    assert_eq!(opened(&r.events).incident.severity, Severity::Low);
    let mut seen = Vec::new();
    for (rate, sev) in [(3_000.0, Severity::Medium), (6_000.0, Severity::High), (12_000.0, Severity::Critical)] {
        let ev = r.traffic(&[(TrafficClass::TcpSyn, rate)], 0.5);
        let change = ev.iter().find(|e| e.kind == EventKind::SeverityChanged).expect("a severity change");
        assert_eq!(change.incident.severity, sev);
        seen.push(change.detail.clone());
    }
    assert_eq!(seen[0], "low -> medium at 3000 pps");
    // Lower rates later do not lower it.
    let ev = r.traffic(&[(TrafficClass::TcpSyn, 1_500.0)], 1.0);
    assert!(ev.is_empty());
    assert_eq!(r.det.open_incidents().next().unwrap().severity, Severity::Critical);
    assert_eq!(r.det.open_incidents().next().unwrap().peak_pps, 12_000.0);
}

#[test]
fn absolute_rates_set_a_minimum_severity() {
    let mut c = cfg();
    c.families.udp_flood.pps = 1_000_000;
    let mut r = Run::new(c);
    r.traffic(&[(TrafficClass::Udp, 1_200_000.0)], 1.0);
    // Only 1.2x the floor, but over a million packets per second.
    assert_eq!(opened(&r.events).incident.severity, Severity::High);
}

#[test]
fn two_families_at_once_are_a_multi_vector_incident() {
    let mut r = Run::new(cfg());
    r.traffic(&[(TrafficClass::TcpSyn, 5_000.0)], 1.0);
    let ev = r.traffic(&[(TrafficClass::TcpSyn, 5_000.0), (TrafficClass::UdpAmplification, 8_000.0)], 1.0);
    let kinds: Vec<_> = ev.iter().map(|e| (e.kind, e.detail.split(' ').next().unwrap().to_string())).collect();
    assert_eq!(
        kinds,
        vec![(EventKind::FamilyAdded, "udp_amplification".into()), (EventKind::FamilyAdded, "multi_vector:".into())]
    );
    assert_eq!(
        ev.iter().map(|e| e.family).collect::<Vec<_>>(),
        vec![Some(Family::UdpAmplification), Some(Family::MultiVector)]
    );
    let inc = &ev[1].incident;
    assert_eq!(inc.families, vec![Family::MultiVector, Family::SynFlood, Family::UdpAmplification]);
    assert_eq!(inc.pps, 13_000.0);
    // Both at once from the start: multi_vector at open.
    let mut r = Run::new(cfg());
    r.traffic(&[(TrafficClass::Icmp, 5_000.0), (TrafficClass::Fragment, 5_000.0)], 1.0);
    assert_eq!(
        opened(&r.events).incident.families,
        vec![Family::MultiVector, Family::IcmpFlood, Family::FragmentFlood]
    );
    // It resolves only when both are quiet.
    r.traffic(&[(TrafficClass::Icmp, 5_000.0)], 6.0);
    assert!(r.det.open_incidents().next().is_some());
    let ev = r.quiet(6.0);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].kind, EventKind::Resolved);
}

#[test]
fn baselines_learn_normal_and_raise_the_bar_above_the_floor() {
    let mut r = Run::new(cfg());
    // A busy but normal UDP service at 2,000 pps: over the 1,000 floor, so
    // during warm-up it is an incident; that is what a floor means.
    let ev = r.traffic(&[(TrafficClass::Udp, 2_000.0)], 1.0);
    assert_eq!(opened(&ev).incident.families, vec![Family::UdpFlood]);
    // With the floor raised above it, it learns for two minutes...
    let mut c = cfg();
    c.families.udp_flood.pps = 3_000;
    let mut r = Run::new(c);
    for i in 0..1200 {
        let x = if i % 2 == 0 { 2_200.0 } else { 1_800.0 };
        r.traffic(&[(TrafficClass::Udp, x)], POLL);
    }
    assert!(r.det.warm("eth0"));
    let b = r.det.class_baseline("eth0", "host", TrafficClass::Udp).unwrap();
    assert!((b.pps.mean - 2_000.0).abs() < 50.0, "{:?}", b.pps);
    // ... so 4,000 pps (over the floor, under 3 x normal) is no attack...
    assert!(r.traffic(&[(TrafficClass::Udp, 4_000.0)], 2.0).is_empty());
    // ... and 7,000 pps is.
    let ev = r.traffic(&[(TrafficClass::Udp, 7_000.0)], 1.0);
    let o = opened(&ev);
    assert!(o.detail.contains("threshold 6"), "{}", o.detail);
}

#[test]
fn baselines_freeze_during_an_incident_and_survive_a_restart() {
    let mut r = Run::new(cfg());
    for _ in 0..400 {
        r.traffic(&[(TrafficClass::TcpSyn, 200.0), (TrafficClass::Udp, 100.0)], POLL);
    }
    let before = r.det.class_baseline("eth0", "host", TrafficClass::TcpSyn).unwrap();
    r.traffic(&[(TrafficClass::TcpSyn, 50_000.0), (TrafficClass::Udp, 100.0)], 10.0);
    let during = r.det.class_baseline("eth0", "host", TrafficClass::TcpSyn).unwrap();
    assert_eq!(before, during, "learned from the attack");
    // Other classes keep learning.
    let udp = r.det.class_baseline("eth0", "host", TrafficClass::Udp).unwrap();
    assert!(udp.learned_seconds > 40.0);

    // Saved and loaded into a new detector: warm at once, same levels.
    let saved = r.det.baselines();
    let json = serde_json::to_string(&saved).unwrap();
    let mut d2 = Detector::new(cfg(), "node1");
    d2.load_baselines(&serde_json::from_str(&json).unwrap());
    assert!(d2.warm("eth0"));
    assert_eq!(d2.class_baseline("eth0", "host", TrafficClass::TcpSyn), Some(before));
}

#[test]
fn a_saved_baseline_no_learning_could_make_is_refused_not_a_blind_spot() {
    let mut r = Run::new(cfg());
    for _ in 0..400 {
        r.traffic(&[(TrafficClass::TcpSyn, 200.0), (TrafficClass::Udp, 100.0)], POLL);
    }
    let mut saved = r.det.baselines();
    let host = saved.groups.get_mut("eth0").unwrap().get_mut("host").unwrap().get_mut(&Direction::Incoming).unwrap();
    host.total.get_mut("tcp_syn").unwrap().pps.mean = 1e300;
    host.address.get_mut("udp").unwrap().learned_seconds = -1.0;

    let mut r2 = Run::new(cfg());
    let refused = r2.det.load_baselines(&saved);
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused[0].starts_with("interface eth0, host group host, incoming total, class tcp_syn: its pps average 1e300"),
        "{refused:?}"
    );
    assert!(refused[1].contains("per address, class udp: its learned time -1e0 s"), "{refused:?}");
    // The class is learned afresh, the others kept...
    assert_eq!(r2.det.class_baseline("eth0", "host", TrafficClass::TcpSyn).unwrap().learned_seconds, 0.0);
    assert!(r2.det.class_baseline("eth0", "host", TrafficClass::Udp).unwrap().learned_seconds > 30.0);
    // ... and a SYN flood over the floor is an attack (the saved average
    // would have put its threshold at 3e300).
    opened(&r2.traffic(&[(TrafficClass::TcpSyn, 5_000.0)], 1.0));
}

#[test]
fn an_incident_open_at_a_restart_is_resumed_not_duplicated() {
    let mut r = Run::new(cfg());
    r.traffic(&[(TrafficClass::TcpSyn, 5_000.0)], 1.0);
    let inc = r.det.open_incidents().next().unwrap().clone();

    // The attack goes on after the restart: same incident, no new open.
    let mut r2 = Run::new(cfg());
    r2.now = r.now + 2_000;
    assert!(r2.det.resume(inc.clone()));
    let ev = r2.traffic(&[(TrafficClass::TcpSyn, 5_000.0)], 2.0);
    assert!(ev.iter().all(|e| e.kind != EventKind::Opened), "{:?}", ev.iter().map(|e| e.kind).collect::<Vec<_>>());
    assert_eq!(r2.det.open_incidents().next().unwrap().id, inc.id);

    // It was over during the restart: it resolves after the quiet period.
    let mut r3 = Run::new(cfg());
    r3.now = r.now + 2_000;
    assert!(r3.det.resume(inc.clone()));
    // However long the start took: the quiet period counts from the first poll.
    r3.now += 60_000;
    let ev = r3.quiet(4.0);
    assert!(ev.is_empty(), "resolved before a quiet period of polls");
    let ev = r3.quiet(2.0);
    assert_eq!(ev.iter().map(|e| e.kind).collect::<Vec<_>>(), vec![EventKind::Resolved]);
    assert_eq!(ev[0].incident.id, inc.id);

    // Its host group is gone from the configuration: not resumed.
    let mut gone = inc.clone();
    gone.hostgroup = "customers".into();
    assert!(!Run::new(cfg()).det.resume(gone));
}

#[test]
fn status_and_notes_go_on_the_timeline() {
    let mut r = Run::new(cfg());
    r.traffic(&[(TrafficClass::TcpSyn, 5_000.0)], 1.0);
    let id = r.det.open_incidents().next().unwrap().id.clone();
    let e = r.det.add_note(&id, "  rate limit applied  ", r.now).unwrap();
    assert_eq!((e.kind, e.detail.as_str()), (EventKind::NoteAdded, "rate limit applied"));
    let e = r.det.set_status(&id, Status::Mitigated, r.now, "runbook syn-guard").unwrap();
    assert_eq!(e.detail, "active -> mitigated: runbook syn-guard");
    assert_eq!(
        e.incident.timeline.iter().map(|t| t.kind).collect::<Vec<_>>(),
        vec![EventKind::Opened, EventKind::NoteAdded, EventKind::StatusChanged]
    );
    assert_eq!(r.det.add_note(&id, " ", r.now), Err(DetectError::EmptyNote));
    assert_eq!(r.det.add_note("nope", "x", r.now), Err(DetectError::NoSuchIncident("nope".into())));
    // Resolved by hand: closed now.
    let e = r.det.set_status(&id, Status::Resolved, r.now, "").unwrap();
    assert_eq!(e.incident.status, Status::Resolved);
    assert!(r.det.open_incidents().next().is_none());
}

#[test]
fn top_sources_and_ports_of_the_attack_traffic() {
    let mut r = Run::new(cfg());
    let mut flooder = [0.0; CLASS_COUNT];
    flooder[TrafficClass::TcpSyn.index()] = 4_000.0;
    let mut bystander = [0.0; CLASS_COUNT];
    bystander[TrafficClass::Udp.index()] = 900.0;
    r.sources = vec![
        SourceRate {
            addr: "198.51.100.7".parse().unwrap(),
            pps: 4_000.0,
            bps: 0.0,
            class_pps: flooder,
            seen_for_ms: 0,
        },
        SourceRate { addr: "203.0.113.1".parse().unwrap(), pps: 900.0, bps: 0.0, class_pps: bystander, seen_for_ms: 0 },
    ];
    r.samples =
        vec![PacketSample { class: TrafficClass::TcpSyn as u8, sport: 1234, dport: 22, ..Default::default() }; 30];
    r.samples.extend(vec![
        PacketSample {
            class: TrafficClass::TcpSyn as u8,
            sport: 1234,
            dport: 80,
            ..Default::default()
        };
        10
    ]);
    let ev = r.traffic(&[(TrafficClass::TcpSyn, 5_000.0), (TrafficClass::Udp, 900.0)], 1.0);
    let inc = &opened(&ev).incident;
    assert_eq!(inc.top_sources.len(), 1, "the UDP bystander is not attack traffic");
    assert_eq!(inc.top_sources[0].addr, "198.51.100.7".parse::<std::net::IpAddr>().unwrap());
    assert!((inc.top_sources[0].share - 0.8).abs() < 1e-9);
    assert_eq!((inc.top_ports[0].port, inc.top_ports[0].share), (22, 0.75));
    assert_eq!(inc.top_ports[1].port, 80);
    assert!(!inc.top_sources[0].seen_before_attack, "it appeared with the attack");
}

#[test]
fn the_tail_of_an_attack_does_not_replace_its_top_sources_and_ports() {
    let mut r = Run::new(cfg());
    let rate = |addr: &str, pps: f64| {
        let mut class_pps = [0.0; CLASS_COUNT];
        class_pps[TrafficClass::TcpSyn.index()] = pps;
        SourceRate { addr: addr.parse().unwrap(), pps, bps: 0.0, class_pps, seen_for_ms: 0 }
    };
    let syn = |dport| PacketSample { class: TrafficClass::TcpSyn as u8, sport: 1234, dport, ..Default::default() };
    r.sources = vec![rate("198.51.100.7", 5_000.0)];
    r.samples = vec![syn(22); 40];
    let ev = r.traffic(&[(TrafficClass::TcpSyn, 5_000.0)], 1.0);
    assert_eq!(opened(&ev).incident.top_sources[0].addr.to_string(), "198.51.100.7");
    // The flood stops; a straggler's few SYNs to another port are all the
    // next poll sees, far below the floor.
    r.sources = vec![rate("203.0.113.1", 20.0)];
    r.samples = vec![syn(443); 2];
    r.traffic(&[(TrafficClass::TcpSyn, 20.0)], 1.0);
    let inc = r.det.open_incidents().next().expect("still open, in its quiet time");
    assert_eq!(inc.top_sources.len(), 1, "{:?}", inc.top_sources);
    assert_eq!(inc.top_sources[0].addr.to_string(), "198.51.100.7");
    assert_eq!(inc.top_ports[0].port, 22);
}

#[test]
fn a_top_source_that_sent_long_before_the_attack_is_marked_as_the_hosts_user() {
    let mut r = Run::new(cfg());
    let mut syn = [0.0; CLASS_COUNT];
    syn[TrafficClass::TcpSyn.index()] = 2_000.0;
    // A user, tracked for a minute; a flooder, new.
    r.sources = vec![
        SourceRate {
            addr: "203.0.113.1".parse().unwrap(),
            pps: 2_000.0,
            bps: 0.0,
            class_pps: syn,
            seen_for_ms: 60_000,
        },
        SourceRate { addr: "198.51.100.7".parse().unwrap(), pps: 2_000.0, bps: 0.0, class_pps: syn, seen_for_ms: 500 },
    ];
    let ev = r.traffic(&[(TrafficClass::TcpSyn, 50_000.0)], 1.0);
    let inc = &opened(&ev).incident;
    let user = inc.top_sources.iter().find(|s| s.addr.to_string() == "203.0.113.1").unwrap();
    let flooder = inc.top_sources.iter().find(|s| s.addr.to_string() == "198.51.100.7").unwrap();
    assert!(user.seen_before_attack && !flooder.seen_before_attack, "{:?}", inc.top_sources);
}

#[test]
fn disabled_families_are_not_watched() {
    let mut c = cfg();
    c.families.fragment_flood.enabled = false;
    let mut r = Run::new(c);
    r.traffic(&[(TrafficClass::Fragment, 100_000.0)], 2.0);
    assert!(r.events.is_empty());
}

#[test]
fn an_incident_carries_its_signature_measured_against_peacetime() {
    let mut r = Run::new(cfg());
    let syn = |dport: u16, len: u32, ttl: u8| PacketSample {
        class: TrafficClass::TcpSyn as u8,
        sport: 40_000,
        dport,
        len,
        ttl,
        dst: crate::detect::signature::mapped(&HOST.parse().unwrap()),
        ..Default::default()
    };
    // Peacetime: connections to 443 (a SYN and ten ACKs a poll).
    let calm: Vec<PacketSample> = std::iter::once(syn(443, 66, 57))
        .chain((0..10).map(|_| PacketSample { class: TrafficClass::TcpAck as u8, dport: 443, ..syn(443, 1514, 57) }))
        .collect();
    r.samples = calm.clone();
    r.quiet(2.0);
    // A SYN flood to 80 on top.
    r.samples.extend((0..200).map(|_| syn(80, 60, 64)));
    let ev = r.traffic(&[(TrafficClass::TcpSyn, 5_000.0)], 0.3);
    let sig = opened(&ev).incident.signature.clone().expect("a signature at open");
    assert_eq!(sig.classes, vec!["tcp_syn"]);
    assert_eq!(sig.dst, Some(HOST.parse().unwrap()));
    assert_eq!(sig.dst_ports, vec![Span::one(80)]);
    assert_eq!((sig.length, sig.ttl), (Some(Span::one(60)), Some(Span::one(64))));
    // The hold's polls are the attack's, not peacetime, and so is the calm
    // poll just before (it may hold the flood's first packets): 19 of the
    // 20 calm polls.
    assert_eq!(sig.peacetime_samples, 19 * 11);
    assert_eq!(sig.collateral, 0.0);
    // Three polls of the flood's SYNs: the connections' SYNs to 443 are
    // the interface's ordinary traffic (background), and ACKs are aside.
    assert_eq!(sig.samples, 3 * 200);
    assert_eq!(sig.coverage, 1.0);

    // Derived again at most once a second.
    let samples = |r: &Run| r.det.open_incidents().next().unwrap().signature.as_ref().unwrap().samples;
    r.traffic(&[(TrafficClass::TcpSyn, 5_000.0)], 0.5);
    assert_eq!(samples(&r), 3 * 200);
    r.traffic(&[(TrafficClass::TcpSyn, 5_000.0)], 0.5);
    assert_eq!(samples(&r), 13 * 200);
    // It stays on the resolved incident; the next peacetime starts anew.
    r.samples = calm;
    let ev = r.quiet(6.0);
    let resolved = ev.iter().find(|e| e.kind == EventKind::Resolved).expect("resolved");
    assert!(resolved.incident.signature.is_some());
}

/// Peer learning pauses from the first poll over a threshold, before the
/// hold opens an incident, and resumes when the incident ends.
#[test]
fn under_attack_from_the_onset_to_the_end() {
    let mut r = Run::new(cfg());
    r.quiet(1.0);
    assert!(!r.det.under_attack("eth0"));
    let ev = r.traffic(&[(TrafficClass::TcpSyn, 5_000.0)], POLL);
    assert!(ev.iter().all(|e| e.kind != EventKind::Opened), "one poll is within the hold");
    assert!(r.det.under_attack("eth0"), "above the threshold is the onset");
    r.traffic(&[(TrafficClass::TcpSyn, 5_000.0)], 1.0);
    assert!(r.det.under_attack("eth0"));
    r.quiet(10.0);
    assert!(!r.det.under_attack("eth0"), "resolved");
}
