//! Network mode over scripted timelines: incidents per target, host
//! groups' floors, carpet bombing, outgoing floods.

use std::{net::IpAddr, time::Duration};

use detector_common::{sample::PacketSample, TrafficClass, CLASS_COUNT};

use super::{
    config::DetectionConfig,
    engine::{Detector, Observation, SavedBaselines},
    family::Family,
    incident::{EventKind, IncidentEvent},
};
use crate::{
    config::ConfigFile,
    networks::Protected,
    rates::ClassRate,
    samples::SampleView,
    targets::{Direction, GroupRate, TargetRate, TargetsReading},
};

const POLL: f64 = 0.1;
const T0: u64 = 1_795_559_700_000;

const NETWORKS: &str = "\
detection:
  hold: 300ms
  quiet: 2s
  families:
    udp_flood: { pps: 10000 }
    syn_flood: { pps: 5000 }
networks:
  hostgroups:
    - name: customers
      prefixes: [198.51.100.0/24, 2001:db8:c::/64]
      families:
        udp_flood: { pps: 20000 }
      total:
        udp_flood: { pps: 50000 }
      outgoing:
        udp_flood: { pps: 3000 }
    - name: vip
      prefixes: [203.0.113.0/28]
      families:
        udp_flood: { pps: 1000 }
";

fn rates(pps: f64) -> [ClassRate; CLASS_COUNT] {
    let mut c = [ClassRate::default(); CLASS_COUNT];
    c[TrafficClass::Udp.index()] =
        ClassRate { packets: (pps * POLL) as u64, bytes: (pps * POLL * 100.0) as u64, pps, bps: pps * 800.0 };
    c
}

fn add(a: &mut [ClassRate; CLASS_COUNT], b: &[ClassRate; CLASS_COUNT]) {
    for (x, y) in a.iter_mut().zip(b.iter()) {
        x.packets += y.packets;
        x.bytes += y.bytes;
        x.pps += y.pps;
        x.bps += y.bps;
    }
}

struct Net {
    det: Detector,
    now: u64,
    events: Vec<IncidentEvent>,
}

impl Net {
    fn new(text: &str) -> Net {
        let c = ConfigFile::parse("t.yaml", text).unwrap();
        let p = Protected::new(c.networks.as_ref(), &c.detection.families);
        Net { det: Detector::with_protected(c.detection, p, "r1"), now: T0, events: Vec::new() }
    }

    /// `secs` of polls: UDP at `pps` to (incoming) or from (outgoing)
    /// each address; group totals are their sums. Only addresses over
    /// `tracked_from` pps are in the per-address map (the kernel's sketch
    /// admits heavy ones only); the totals count every one.
    fn udp(&mut self, flows: &[(Direction, &str, f64)], tracked_from: f64, secs: f64) -> Vec<IncidentEvent> {
        let mut out = Vec::new();
        for _ in 0..(secs / POLL).round() as usize {
            self.now += (POLL * 1000.0) as u64;
            let mut reading = TargetsReading::default();
            for (gi, _) in self.det.protected().groups().iter().enumerate() {
                for d in Direction::ALL {
                    reading.groups.push(GroupRate { group: gi, direction: d, classes: rates(0.0) });
                }
            }
            let mut packets = Vec::new();
            for (d, addr, pps) in flows {
                let a: IpAddr = addr.parse().unwrap();
                let gi = self.det.protected().group_of(a).expect("protected");
                let g = reading.groups.iter_mut().find(|g| g.group == gi && g.direction == *d).unwrap();
                add(&mut g.classes, &rates(*pps));
                if *pps >= tracked_from {
                    let t = TargetRate { addr: a, group: gi, classes: rates(*pps) };
                    match d {
                        Direction::Incoming => reading.incoming.push(t),
                        Direction::Outgoing => reading.outgoing.push(t),
                    }
                }
                if *d == Direction::Incoming {
                    let key = crate::sources::addr_key(a).addr;
                    packets.push(PacketSample {
                        class: TrafficClass::Udp as u8,
                        dst: key,
                        dport: 27015,
                        ..Default::default()
                    });
                }
            }
            let mut iface = rates(0.0);
            for g in &reading.groups {
                add(&mut iface, &g.classes);
            }
            let samples = SampleView::new(&packets, 1, POLL);
            let obs = Observation {
                iface: "eth0",
                now_ms: self.now,
                seconds: POLL,
                classes: &iface,
                sources: &[],
                samples: &samples,
                packets: &packets,
                targets: &reading,
            };
            out.extend(self.det.observe(&obs));
        }
        self.events.extend(out.clone());
        out
    }

    fn opened(&self) -> Vec<&IncidentEvent> {
        self.events.iter().filter(|e| e.kind == EventKind::Opened).collect()
    }
}

use Direction::{Incoming, Outgoing};

#[test]
fn two_customers_attacked_at_once_get_an_incident_each_with_their_group_floor() {
    let mut n = Net::new(NETWORKS);
    n.udp(&[(Incoming, "198.51.100.10", 500.0), (Incoming, "198.51.100.11", 500.0)], 1.0, 1.0);
    assert!(n.events.is_empty());
    // 15k pps: over the global 10k floor, under the customers' 20k: nothing.
    n.udp(&[(Incoming, "198.51.100.10", 15_000.0)], 1.0, 1.0);
    assert!(n.events.is_empty(), "{:?}", n.events);
    n.udp(&[(Incoming, "198.51.100.10", 30_000.0), (Incoming, "2001:db8:c::11", 25_000.0)], 1.0, 1.0);
    let opened = n.opened();
    assert_eq!(opened.len(), 2, "{:?}", n.events);
    let mut targets: Vec<(&str, &str, Direction)> = opened
        .iter()
        .map(|e| (e.incident.target.as_str(), e.incident.hostgroup.as_str(), e.incident.direction))
        .collect();
    targets.sort();
    assert_eq!(targets, vec![("198.51.100.10", "customers", Incoming), ("2001:db8:c::11", "customers", Incoming)]);
    for e in &opened {
        assert!(e.detail.contains("threshold 20000"), "{}", e.detail);
        assert_eq!(e.incident.families, vec![Family::UdpFlood]);
        assert_eq!(e.incident.vectors, vec!["udp"]);
        assert_eq!(e.incident.top_ports[0].port, 27015, "ports from the target's own samples");
    }
    let ids: Vec<&str> = opened.iter().map(|e| e.incident.id.as_str()).collect();
    assert!(ids.iter().any(|i| i.starts_with("r1-eth0-198.51.100.10-")), "{ids:?}");
    assert!(ids.iter().any(|i| i.starts_with("r1-eth0-2001_db8_c__11-")), "{ids:?}");
    assert_eq!(n.det.open_incidents().count(), 2);
    // The two together are 55k pps, over the group's 50k total: no group
    // incident, the addresses over their floor account for it.
    assert!(!opened.iter().any(|e| e.incident.target == "customers"));

    // One stops: it resolves on its own, the other goes on.
    let ev = n.udp(&[(Incoming, "2001:db8:c::11", 25_000.0)], 1.0, 3.0);
    let resolved: Vec<&str> =
        ev.iter().filter(|e| e.kind == EventKind::Resolved).map(|e| e.incident.target.as_str()).collect();
    assert_eq!(resolved, vec!["198.51.100.10"]);
    assert_eq!(n.det.open_incidents().map(|i| i.target.as_str()).collect::<Vec<_>>(), vec!["2001:db8:c::11"]);
}

#[test]
fn a_smaller_group_inside_a_bigger_one_has_its_own_floor() {
    let text = NETWORKS.replace("[203.0.113.0/28]", "[198.51.100.128/28]");
    let mut n = Net::new(&text);
    n.udp(&[(Incoming, "198.51.100.130", 2_000.0)], 1.0, 1.0);
    let o = n.opened();
    assert_eq!(o.len(), 1, "{:?}", n.events);
    assert_eq!((o[0].incident.target.as_str(), o[0].incident.hostgroup.as_str()), ("198.51.100.130", "vip"));
}

#[test]
fn carpet_bombing_over_the_group_opens_one_group_incident() {
    let mut n = Net::new(NETWORKS);
    let addrs: Vec<String> = (1..=200).map(|i| format!("198.51.100.{i}")).collect();
    // 200 addresses at 400 pps: 80k pps, each far below 20k, none in the
    // per-address map.
    let flows: Vec<(Direction, &str, f64)> = addrs.iter().map(|a| (Incoming, a.as_str(), 400.0)).collect();
    n.udp(&flows, 1_000.0, 1.0);
    let o = n.opened();
    assert_eq!(o.len(), 1, "{:?}", n.events);
    let inc = &o[0].incident;
    assert_eq!((inc.target.as_str(), inc.hostgroup.as_str(), inc.direction), ("customers", "customers", Incoming));
    assert!(inc.id.starts_with("r1-eth0-customers-"), "{}", inc.id);
    assert!(o[0].detail.contains("threshold 50000"), "{}", o[0].detail);
    assert!((inc.pps - 80_000.0).abs() < 1.0, "{}", inc.pps);
    // Below the total again: it resolves.
    n.udp(&flows[..50], 1_000.0, 3.0);
    assert!(n.events.iter().any(|e| e.kind == EventKind::Resolved && e.incident.target == "customers"));
    assert_eq!(n.det.open_incidents().count(), 0);
}

#[test]
fn one_big_target_does_not_also_count_as_carpet_bombing() {
    let mut n = Net::new(NETWORKS);
    // 60k pps at one address (over the 50k total too) and a little
    // background on others.
    let flows = [(Incoming, "198.51.100.9", 60_000.0), (Incoming, "198.51.100.20", 300.0)];
    n.udp(&flows, 1_000.0, 2.0);
    let targets: Vec<&str> = n.opened().iter().map(|e| e.incident.target.as_str()).collect();
    assert_eq!(targets, vec!["198.51.100.9"]);
}

#[test]
fn outgoing_floods_are_watched_only_where_floors_are_given() {
    let mut n = Net::new(NETWORKS);
    n.udp(&[(Outgoing, "198.51.100.10", 5_000.0), (Outgoing, "203.0.113.5", 50_000.0)], 1.0, 1.0);
    let o = n.opened();
    assert_eq!(o.len(), 1, "vip has no outgoing floors: {:?}", n.events);
    let inc = &o[0].incident;
    assert_eq!((inc.target.as_str(), inc.direction), ("198.51.100.10", Outgoing));
    assert!(inc.id.starts_with("r1-eth0-198.51.100.10-out-"), "{}", inc.id);
    assert!(o[0].detail.contains("threshold 3000"), "{}", o[0].detail);
    assert!(inc.top_sources.is_empty());
}

#[test]
fn host_mode_two_addresses_flooded_at_once_give_two_incidents() {
    let mut det = Detector::new(DetectionConfig { hold: Duration::from_millis(300), ..Default::default() }, "web1");
    det.set_host_addresses(["192.0.2.2".parse().unwrap(), "192.0.2.3".parse().unwrap()]);
    let mut n = Net { det, now: T0, events: Vec::new() };
    n.udp(&[(Incoming, "192.0.2.2", 150_000.0), (Incoming, "192.0.2.3", 150_000.0)], 1.0, 1.0);
    let mut t: Vec<(String, String)> =
        n.opened().iter().map(|e| (e.incident.target.clone(), e.incident.hostgroup.clone())).collect();
    t.sort();
    assert_eq!(t, vec![("192.0.2.2".into(), "host".into()), ("192.0.2.3".into(), "host".into())]);
}

#[test]
fn baselines_are_per_group_and_direction_and_old_files_load_as_the_host_group() {
    let mut n = Net::new(NETWORKS);
    n.udp(&[(Incoming, "198.51.100.10", 500.0), (Outgoing, "198.51.100.10", 100.0)], 1.0, 2.0);
    let saved = n.det.baselines();
    let json = serde_json::to_value(&saved).unwrap();
    let udp = &json["groups"]["eth0"]["customers"]["incoming"]["total"]["udp"]["pps"]["mean"];
    assert!((udp.as_f64().unwrap() - 500.0).abs() < 1.0, "{json}");
    assert!(json["groups"]["eth0"]["customers"]["outgoing"]["address"]["udp"].is_object());
    let back: SavedBaselines = serde_json::from_value(json).unwrap();
    assert_eq!(back, saved);

    // Version 1: one set per interface.
    let v1 = r#"{"version":1,"interfaces":{"eth0":{"udp":{"pps":{"mean":42.0,"var":0.0},"bps":{"mean":0.0,"var":0.0},"learned_seconds":900.0}}}}"#;
    let mut d = Detector::new(DetectionConfig::default(), "web1");
    d.load_baselines(&serde_json::from_str(v1).unwrap());
    assert_eq!(d.class_baseline("eth0", "host", TrafficClass::Udp).unwrap().pps.mean, 42.0);
}

#[test]
fn host_mode_counts_the_whole_interface_in_its_group() {
    // A flood to an address the host does not have: no address of the
    // host's is above, the interface is; a host-group incident whose rules
    // are not limited to the host's addresses.
    let mut det = Detector::new(DetectionConfig { hold: Duration::from_millis(300), ..Default::default() }, "web1");
    det.set_host_addresses(["192.0.2.2".parse().unwrap()]);
    let mut events = Vec::new();
    let mut now = T0;
    for _ in 0..10 {
        now += 100;
        let classes = rates(150_000.0);
        let reading = TargetsReading {
            incoming: Vec::new(),
            outgoing: Vec::new(),
            groups: vec![GroupRate { group: 0, direction: Incoming, classes: rates(0.0) }],
        };
        let samples = SampleView::new(&[], 1, POLL);
        let obs = Observation {
            iface: "eth0",
            now_ms: now,
            seconds: POLL,
            classes: &classes,
            sources: &[],
            samples: &samples,
            packets: &[],
            targets: &reading,
        };
        events.extend(det.observe(&obs));
    }
    let o: Vec<&IncidentEvent> = events.iter().filter(|e| e.kind == EventKind::Opened).collect();
    assert_eq!(o.len(), 1, "{events:?}");
    assert_eq!((o[0].incident.target.as_str(), o[0].incident.hostgroup.as_str()), ("host", "host"));
    assert!(o[0].incident.target_prefixes.is_empty());
}
