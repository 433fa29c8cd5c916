//! What `/api/top` serves and the summary line logs: the latest rates of
//! each interface and the top talkers of each class. Built from pure data.

use std::{collections::BTreeMap, net::IpAddr};

use detector_common::{TrafficClass, CLASS_COUNT};
use serde::Serialize;

use crate::{
    detect::signature::Signature,
    format::{bits, count, pps},
    rates::ClassRate,
    sources::{top_sources, SourceRate, TopSource},
    targets::{Direction, TargetsReading},
};

#[derive(Clone, Debug, Default, Serialize)]
pub struct TopView {
    pub interfaces: BTreeMap<String, IfaceView>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct IfaceView {
    pub mode: String,
    /// Length of the interval the rates were measured over.
    pub interval_seconds: f64,
    pub pps: f64,
    pub bps: f64,
    /// Classes with traffic in the interval, busiest first.
    pub classes: Vec<ClassView>,
    /// Sources tracked in the per-source map.
    pub tracked_sources: usize,
    /// The busiest protected addresses, receiving (`incoming`) or sending
    /// (`outgoing`), busiest first per direction.
    pub top_targets: Vec<TargetView>,
    /// Every host group's totals per direction.
    pub hostgroups: Vec<GroupView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetView {
    pub addr: IpAddr,
    pub hostgroup: String,
    pub direction: Direction,
    pub pps: f64,
    pub bps: f64,
    /// Its classes with traffic, busiest first.
    pub classes: Vec<ClassRateView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct GroupView {
    pub hostgroup: String,
    pub direction: Direction,
    pub pps: f64,
    pub bps: f64,
    pub classes: Vec<ClassRateView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ClassRateView {
    pub class: &'static str,
    pub pps: f64,
    pub bps: f64,
}

fn class_rates(rates: &[ClassRate; CLASS_COUNT]) -> Vec<ClassRateView> {
    let mut v: Vec<ClassRateView> = TrafficClass::ALL
        .iter()
        .zip(rates.iter())
        .filter(|(_, r)| r.packets > 0)
        .map(|(c, r)| ClassRateView { class: c.name(), pps: r.pps, bps: r.bps })
        .collect();
    v.sort_by(|a, b| b.pps.total_cmp(&a.pps));
    v
}

/// The busiest `top_n` protected addresses per direction, and every host
/// group's totals; `names` are the groups' names by index.
pub fn targets_view(reading: &TargetsReading, names: &[&str], top_n: usize) -> (Vec<TargetView>, Vec<GroupView>) {
    let name = |i: usize| names.get(i).map(|n| n.to_string()).unwrap_or_default();
    let mut targets = Vec::new();
    for direction in Direction::ALL {
        let mut v: Vec<TargetView> = reading
            .targets(direction)
            .iter()
            .map(|t| TargetView {
                addr: t.addr,
                hostgroup: name(t.group),
                direction,
                pps: t.classes.iter().map(|r| r.pps).sum(),
                bps: t.classes.iter().map(|r| r.bps).sum(),
                classes: class_rates(&t.classes),
            })
            .filter(|t| t.pps > 0.0)
            .collect();
        v.sort_by(|a, b| b.pps.total_cmp(&a.pps).then(a.addr.cmp(&b.addr)));
        v.truncate(top_n);
        targets.extend(v);
    }
    let groups = reading
        .groups
        .iter()
        .map(|g| GroupView {
            hostgroup: name(g.group),
            direction: g.direction,
            pps: g.classes.iter().map(|r| r.pps).sum(),
            bps: g.classes.iter().map(|r| r.bps).sum(),
            classes: class_rates(&g.classes),
        })
        .collect();
    (targets, groups)
}

#[derive(Clone, Debug, Serialize)]
pub struct ClassView {
    pub class: &'static str,
    pub pps: f64,
    pub bps: f64,
    pub top_sources: Vec<TopSource>,
}

/// Builds one interface's view from a poll's results.
pub fn iface_view(
    mode: &str,
    interval_seconds: f64,
    rates: &[ClassRate; CLASS_COUNT],
    active: &[SourceRate],
    tracked_sources: usize,
    top_n: usize,
) -> IfaceView {
    let mut classes: Vec<ClassView> = TrafficClass::ALL
        .iter()
        .zip(rates.iter())
        .filter(|(_, r)| r.packets > 0)
        .map(|(c, r)| ClassView {
            class: c.name(),
            pps: r.pps,
            bps: r.bps,
            top_sources: top_sources(active, *c, r.pps, top_n),
        })
        .collect();
    classes.sort_by(|a, b| b.pps.total_cmp(&a.pps));
    IfaceView {
        mode: mode.to_string(),
        interval_seconds,
        pps: rates.iter().map(|r| r.pps).sum(),
        bps: rates.iter().map(|r| r.bps).sum(),
        classes,
        tracked_sources,
        top_targets: Vec::new(),
        hostgroups: Vec::new(),
    }
}

/// One compact log line: totals, then the three busiest classes with their
/// top source.
pub fn summary_line(v: &IfaceView) -> String {
    let mut s = format!("{}, {}", pps(v.pps), bits(v.bps));
    for c in v.classes.iter().take(3) {
        s.push_str(&format!(" | {} {}", c.class, pps(c.pps)));
        if let Some(t) = c.top_sources.first() {
            s.push_str(&format!(" (top {} {:.0}%)", t.addr, t.share * 100.0));
        }
    }
    s
}

/// An incident's signature on one line: `tcp_syn dst 10.0.0.2 dport 80
/// len 54-60 ttl 64  covers 99.8%, collateral 0.0% (1,234 samples, 4,096
/// peacetime)`.
pub fn signature_line(s: &Signature) -> String {
    format!(
        "{s}  covers {:.1}%, collateral {:.1}% ({} samples, {} peacetime)",
        s.coverage * 100.0,
        s.collateral * 100.0,
        count(s.samples),
        count(s.peacetime_samples)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_and_summary() {
        let mut rates = [ClassRate::default(); CLASS_COUNT];
        rates[TrafficClass::Udp.index()] =
            ClassRate { packets: 2000, bytes: 128_000, pps: 20_000.0, bps: 10_240_000.0 };
        rates[TrafficClass::TcpSyn.index()] = ClassRate { packets: 10, bytes: 600, pps: 100.0, bps: 4_800.0 };
        let mut class_pps = [0.0; CLASS_COUNT];
        class_pps[TrafficClass::Udp.index()] = 15_000.0;
        let active = vec![SourceRate {
            addr: "198.18.0.1".parse().unwrap(),
            pps: 15_000.0,
            bps: 0.0,
            class_pps,
            seen_for_ms: 0,
        }];
        let v = iface_view("native", 0.1, &rates, &active, 1, 10);
        assert_eq!(v.classes.len(), 2);
        assert_eq!(v.classes[0].class, "udp");
        assert_eq!(v.classes[0].top_sources.len(), 1);
        assert!((v.classes[0].top_sources[0].share - 0.75).abs() < 1e-9);
        assert!(v.classes[1].top_sources.is_empty());
        assert_eq!(v.pps, 20_100.0);
        let line = summary_line(&v);
        assert_eq!(line, "20.1k pps, 10.2 Mbit/s | udp 20.0k pps (top 198.18.0.1 75%) | tcp_syn 100 pps");
    }

    #[test]
    fn signature_on_one_line() {
        let s = Signature {
            classes: vec!["tcp_syn".into()],
            dst: Some("10.0.0.2".parse().unwrap()),
            dst_ports: vec![crate::span::Span::one(80)],
            src_ports: vec![],
            length: Some(crate::span::Span { lo: 54, hi: 60 }),
            ttl: Some(crate::span::Span::one(64)),
            coverage: 0.998,
            collateral: 0.0,
            samples: 1_234,
            peacetime_samples: 4_096,
            vectors: None,
        };
        assert_eq!(
            signature_line(&s),
            "tcp_syn dst 10.0.0.2 dport 80 len 54-60 ttl 64  covers 99.8%, collateral 0.0% (1,234 samples, 4,096 peacetime)"
        );
        let any = Signature { dst: None, dst_ports: vec![], length: None, ttl: None, ..s };
        assert!(signature_line(&any).starts_with("tcp_syn  covers"));
    }
}
