//! What a runbook's `bgp` step announces for an incident. Pure: the step
//! (checked at load) and the incident in, announcements out; each then
//! goes through the one check ([`super::check::Scope::check`]) when it is
//! admitted.
//!
//! - `blackhole`: the incident's target, as a host route (`/32`, `/128`),
//!   with the step's communities or the configured ones. A host-group
//!   target (an attack spread over a group's addresses) is refused: a
//!   blackhole of the group's prefixes would cut off every customer in it.
//! - `flowspec`: the rule built from the incident's signature
//!   ([`FlowSpecRule::from_signature`]), limited to the target as the XDP
//!   rules are: the signature's destination when it lies inside the
//!   target's prefixes, else one rule per target prefix (each still bound
//!   by `bgp.limits.flowspec_min_v4`/`_v6`).

use std::{net::IpAddr, time::Duration};

use serde::Deserialize;

use super::{
    announce::{Announcement, Community, FlowAction, FlowSpecRule, MAX_COMMUNITIES},
    service::check_ttl,
};
use crate::{detect::incident::Incident, mitigate::prefix::Prefix, targets::Direction};

/// FlowSpec rules one step announces at most (one per target prefix).
pub const MAX_RULES_PER_STEP: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BgpAction {
    Blackhole,
    Flowspec,
}

/// `bgp:` in a runbook's steps, checked once, at load.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawBgpStep")]
pub struct BgpStep {
    pub action: BgpAction,
    pub ttl: Duration,
    /// Blackhole: these communities instead of the configured ones.
    pub communities: Vec<Community>,
    /// FlowSpec: rate-limit to this many bytes per second instead of
    /// discarding.
    pub rate_limit: Option<u32>,
    /// Kept at least this long after it is announced, even when the
    /// incident resolves sooner (never past `ttl`). A blackhole hides the
    /// attack from this host: without a hold, the incident resolves after
    /// its quiet time, the blackhole is withdrawn, and an attack that goes
    /// on comes back and climbs the ladder again.
    pub hold: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBgpStep {
    action: BgpAction,
    #[serde(deserialize_with = "crate::runbook::schema::duration")]
    ttl: Duration,
    #[serde(default)]
    community: Vec<Community>,
    /// Bits per second.
    #[serde(default)]
    rate_limit: Option<u64>,
    #[serde(default, deserialize_with = "hold")]
    hold: Option<Duration>,
}

fn hold<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    crate::runbook::schema::duration(d).map(Some)
}

impl TryFrom<RawBgpStep> for BgpStep {
    type Error = String;
    fn try_from(r: RawBgpStep) -> Result<BgpStep, String> {
        let ttl = check_ttl(r.ttl).map_err(|e| format!("bgp.{e}"))?;
        if r.action != BgpAction::Blackhole && !r.community.is_empty() {
            return Err("bgp.community applies to action blackhole only".into());
        }
        if r.community.len() > MAX_COMMUNITIES {
            return Err(format!("bgp.community: at most {MAX_COMMUNITIES}, not {}", r.community.len()));
        }
        let rate_limit = match r.rate_limit {
            None => None,
            Some(_) if r.action != BgpAction::Flowspec => {
                return Err("bgp.rate_limit applies to action flowspec only".into())
            }
            Some(bps) if bps < 8 || bps / 8 > u64::from(u32::MAX) => {
                return Err(format!(
                    "bgp.rate_limit: {bps} bits per second is not from 8 to {} (use action flowspec without \
                     rate_limit to discard)",
                    u64::from(u32::MAX) * 8
                ))
            }
            Some(bps) => Some((bps / 8) as u32),
        };
        if let Some(hold) = r.hold {
            if hold < Duration::from_secs(1) || hold > ttl {
                return Err(format!(
                    "bgp.hold: {} is not from 1s to the ttl ({})",
                    humantime::format_duration(hold),
                    humantime::format_duration(ttl)
                ));
            }
        }
        Ok(BgpStep { action: r.action, ttl, communities: r.community, rate_limit, hold: r.hold })
    }
}

/// Why a step announces nothing for an incident.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotAnnounced {
    /// Not applicable now (no signature yet, an outgoing flood).
    Skip(String),
    /// Refused, saying why.
    Refuse(String),
}

/// The announcements `step` makes for `inc` (see the [module](self)).
/// `blackhole_communities`: the configured ones, for a step naming none.
pub fn announcements(
    step: &BgpStep,
    inc: &Incident,
    blackhole_communities: &[Community],
) -> Result<Vec<Announcement>, NotAnnounced> {
    if inc.direction == Direction::Outgoing {
        return Err(NotAnnounced::Skip(format!(
            "an outgoing flood from {}: asking the upstream to drop traffic to it would not stop it",
            inc.target
        )));
    }
    match step.action {
        BgpAction::Blackhole => {
            let Ok(addr) = inc.target.parse::<IpAddr>() else {
                return Err(NotAnnounced::Refuse(format!(
                    "the target is host group '{}', not one address: a blackhole takes one address (/32 or /128) and \
                     would cut off the whole group; use action flowspec",
                    inc.target
                )));
            };
            let communities =
                if step.communities.is_empty() { blackhole_communities.to_vec() } else { step.communities.clone() };
            Ok(vec![Announcement::blackhole(Prefix::host(addr), communities)])
        }
        BgpAction::Flowspec => {
            let Some(sig) = inc.signature.as_ref() else {
                return Err(NotAnnounced::Skip("the incident has no signature yet (too few samples)".into()));
            };
            let action = match step.rate_limit {
                Some(b) => FlowAction::RateLimit { bytes_per_second: b },
                None => FlowAction::Discard,
            };
            let target: Vec<Prefix> = if inc.target_prefixes.is_empty() {
                inc.target.parse::<IpAddr>().map(Prefix::host).into_iter().collect()
            } else {
                inc.target_prefixes.clone()
            };
            let dsts: Vec<Option<Prefix>> = match sig.dst.map(Prefix::host) {
                Some(d) if target.is_empty() || target.iter().any(|t| t.contains(&d)) => vec![None],
                Some(d) => {
                    return Err(NotAnnounced::Refuse(format!(
                        "the signature's destination {d} is outside the target {}",
                        inc.target
                    )))
                }
                None if target.is_empty() => {
                    return Err(NotAnnounced::Refuse(
                        "the signature names no destination and the incident no target".into(),
                    ))
                }
                None => target.into_iter().map(Some).collect(),
            };
            if dsts.len() > MAX_RULES_PER_STEP {
                return Err(NotAnnounced::Refuse(format!(
                    "limited to the target {} ({} prefixes), the step makes {} rules; at most {MAX_RULES_PER_STEP}",
                    inc.target,
                    dsts.len(),
                    dsts.len()
                )));
            }
            dsts.into_iter()
                .map(|d| {
                    FlowSpecRule::from_signature(sig, d, action)
                        .map(Announcement::Flowspec)
                        .map_err(|e| NotAnnounced::Refuse(e.to_string()))
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        bgp::announce::BLACKHOLE,
        detect::{family::Family, incident::Status, severity::Severity, signature::Signature},
        span::Span,
    };

    fn step(yaml: &str) -> Result<BgpStep, String> {
        serde_yaml::from_str::<BgpStep>(yaml).map_err(|e| e.to_string())
    }

    fn incident(target: &str, prefixes: &[&str], sig_dst: Option<&str>) -> Incident {
        Incident {
            id: "i1".into(),
            node: "n".into(),
            iface: "eth0".into(),
            target: target.into(),
            hostgroup: "customers".into(),
            direction: Direction::Incoming,
            target_prefixes: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
            families: vec![Family::UdpFlood],
            vectors: vec![],
            severity: Severity::High,
            status: Status::Active,
            started_at: 0,
            ended_at: None,
            pps: 1e5,
            bps: 8e8,
            peak_pps: 1e5,
            peak_bps: 8e8,
            top_sources: vec![],
            top_ports: vec![],
            signature: Some(Signature {
                classes: vec!["udp".into()],
                dst: sig_dst.map(|d| d.parse().unwrap()),
                dst_ports: vec![Span::one(27015)],
                src_ports: vec![],
                length: None,
                ttl: None,
                coverage: 1.0,
                collateral: 0.0,
                samples: 100,
                peacetime_samples: 0,
                vectors: None,
            }),
            timeline: vec![],
            capture: None,
        }
    }

    #[test]
    fn steps_are_checked_at_load() {
        let s = step("{ action: flowspec, ttl: 10m, rate_limit: 8000000 }").unwrap();
        assert_eq!((s.ttl, s.rate_limit), (Duration::from_secs(600), Some(1_000_000)));
        let s = step("{ action: blackhole, ttl: 1h, community: ['65000:666'] }").unwrap();
        assert_eq!(s.communities, vec![Community::Standard(65000, 666)]);
        let e = |y: &str| step(y).unwrap_err();
        assert!(e("{ action: blackhole, ttl: 10m, rate_limit: 800 }").contains("rate_limit applies to action flowspec"));
        assert!(e("{ action: flowspec, ttl: 10m, community: [blackhole] }")
            .contains("community applies to action blackhole"));
        assert!(e("{ action: flowspec, ttl: 10m, rate_limit: 0 }").contains("bgp.rate_limit: 0 bits per second"));
        assert!(e("{ action: flowspec, ttl: 0s }").contains("bgp.ttl: 0s is not from 1s to 7d"));
        assert!(e("{ action: flowspec, ttl: 30d }").contains("is not from 1s to 7d"));
        assert!(e("{ action: null_route, ttl: 1m }").contains("unknown variant `null_route`"));
        assert!(e("{ action: flowspec }").contains("missing field `ttl`"));
        assert!(e("{ action: blackhole, ttl: 1m, community: ['70000:1'] }").contains("not a number from 0 to 65535"));
        assert_eq!(step("{ action: blackhole, ttl: 1h, hold: 10m }").unwrap().hold, Some(Duration::from_secs(600)));
        assert_eq!(step("{ action: blackhole, ttl: 1h }").unwrap().hold, None);
        assert!(e("{ action: blackhole, ttl: 10m, hold: 1h }").contains("bgp.hold: 1h is not from 1s to the ttl (10m)"));
        assert!(e("{ action: blackhole, ttl: 10m, hold: 0s }").contains("bgp.hold: 0s"));
        assert!(e("{ action: blackhole, ttl: 10m, hold: soon }").contains("'soon' is not a duration"));
    }

    #[test]
    fn a_blackhole_takes_the_target_address_and_refuses_a_group() {
        let s = step("{ action: blackhole, ttl: 10m }").unwrap();
        let inc = incident("198.51.100.10", &["198.51.100.10/32"], Some("198.51.100.10"));
        let a = announcements(&s, &inc, &[BLACKHOLE]).unwrap();
        assert_eq!(a[0].describe(), "blackhole 198.51.100.10/32 community 65535:666");
        let group = incident("customers", &["198.51.100.0/24"], None);
        match announcements(&s, &group, &[BLACKHOLE]) {
            Err(NotAnnounced::Refuse(why)) => assert!(why.contains("host group 'customers'"), "{why}"),
            other => panic!("{other:?}"),
        }
        let mut out = inc.clone();
        out.direction = Direction::Outgoing;
        assert!(matches!(announcements(&s, &out, &[BLACKHOLE]), Err(NotAnnounced::Skip(_))));
    }

    #[test]
    fn flowspec_is_limited_to_the_target() {
        let s = step("{ action: flowspec, ttl: 10m, rate_limit: 8000 }").unwrap();
        let inc = incident("198.51.100.10", &["198.51.100.10/32"], Some("198.51.100.10"));
        let a = announcements(&s, &inc, &[BLACKHOLE]).unwrap();
        assert_eq!(a[0].describe(), "flowspec 198.51.100.10/32 proto 17 dport 27015 rate-limit 1000 B/s");
        // A signature pointing elsewhere is refused.
        let wrong = incident("198.51.100.10", &["198.51.100.10/32"], Some("198.51.100.99"));
        assert!(matches!(announcements(&s, &wrong, &[]), Err(NotAnnounced::Refuse(_))));
        // A spread attack: one rule per prefix of the group (the check
        // refuses one broader than the limit later).
        let group = incident("customers", &["198.51.100.0/24", "2001:db8:100::/64"], None);
        let a = announcements(&s, &group, &[]).unwrap();
        let dsts: Vec<String> = a.iter().map(|a| a.dst().to_string()).collect();
        assert_eq!(dsts, vec!["198.51.100.0/24", "2001:db8:100::/64"]);
        let mut none = inc.clone();
        none.signature = None;
        assert!(matches!(announcements(&s, &none, &[]), Err(NotAnnounced::Skip(_))));
    }
}
