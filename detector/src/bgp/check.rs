//! What may be announced: the one check every way in (a runbook step, the
//! CLI, a saved announcement restored at start) goes through before an
//! announcement is in force. Pure.
//!
//! An announcement is refused, with one line saying why, when
//! - its shape is wrong ([`Announcement::check_shape`]);
//! - its destination is not wholly inside the protected networks: nothing
//!   is ever announced for addresses this node does not protect;
//! - its destination overlaps a management address (`bgp.management_addresses`,
//!   and the host's own addresses and gateways from the allowlist) and
//!   `bgp.allow_management` is not set: blackholing them cuts the operator
//!   off the host;
//! - its destination overlaps an allowlist entry from the configuration or
//!   an operator (addresses that always pass), or a FlowSpec rule's source
//!   lies inside any allowlist entry (as an XDP rule's would);
//! - a FlowSpec destination is broader than `bgp.limits.flowspec_min_v4`
//!   (`_v6`), or a blackhole is broader than `blackhole_min_v4` (`_v6`):
//!   host routes only by default;
//! - `bgp.limits.max_announcements` are in force already.

use thiserror::Error;

use super::{
    announce::{Announcement, ShapeError},
    config::{BgpConfig, LimitsConfig},
};
use crate::{
    mitigate::{
        prefix::Prefix,
        ruleset::{allow_why, AllowEntry, AllowSource},
    },
    networks::Protected,
};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum Refused {
    #[error(transparent)]
    Shape(#[from] ShapeError),
    #[error("{0} is outside the protected networks; nothing is announced for addresses this node does not protect")]
    Outside(Prefix),
    #[error("{prefix} covers management address {management}; set bgp.allow_management to announce it")]
    Management { prefix: Prefix, management: Prefix },
    #[error("{prefix} overlaps allowlist entry {id} ({allowed}, {why}); those addresses always pass")]
    Allowlisted { prefix: Prefix, id: String, allowed: Prefix, why: String },
    #[error("source {prefix} is inside allowlist entry {id} ({allowed}, {why}); those addresses always pass")]
    SourceAllowlisted { prefix: Prefix, id: String, allowed: Prefix, why: String },
    #[error("FlowSpec destination {prefix} is broader than /{min} (bgp.limits.{field})")]
    FlowSpecTooBroad { prefix: Prefix, min: u8, field: &'static str },
    #[error("blackhole {prefix} is broader than /{min}: only prefixes of /{min} or longer are blackholed (bgp.limits.{field})")]
    BlackholeTooBroad { prefix: Prefix, min: u8, field: &'static str },
    #[error("{0} announcements are in force already (bgp.limits.max_announcements)")]
    TooMany(usize),
}

impl Refused {
    /// A short label for metrics (`detector_bgp_refused_total{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::Shape(_) => "shape",
            Refused::Outside(_) => "outside",
            Refused::Management { .. } => "management",
            Refused::Allowlisted { .. } | Refused::SourceAllowlisted { .. } => "allowlisted",
            Refused::FlowSpecTooBroad { .. } | Refused::BlackholeTooBroad { .. } => "too_broad",
            Refused::TooMany(_) => "full",
        }
    }
}

/// What an announcement is checked against.
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    pub protected: &'a Protected,
    /// The allowlist in force (the mitigator's), host entries included.
    pub allowlist: &'a [AllowEntry],
    pub management: &'a [Prefix],
    pub allow_management: bool,
    pub limits: &'a LimitsConfig,
}

impl<'a> Scope<'a> {
    pub fn new(cfg: &'a BgpConfig, protected: &'a Protected, allowlist: &'a [AllowEntry]) -> Scope<'a> {
        Scope {
            protected,
            allowlist,
            management: &cfg.management_addresses,
            allow_management: cfg.allow_management,
            limits: &cfg.limits,
        }
    }

    /// The one check (see the [module](self)). `others` is how many
    /// announcements are in force besides one with the same key (which
    /// this one would replace).
    pub fn check(&self, a: &Announcement, others: usize) -> Result<(), Refused> {
        a.check_shape()?;
        let dst = a.dst();
        let protected = self.protected.groups().iter().flat_map(|g| g.prefixes.iter());
        if !protected.clone().any(|p| p.contains(&dst)) {
            return Err(Refused::Outside(dst));
        }
        let l = self.limits;
        let len = |p: &Prefix| if p.is_ipv4() { p.bits() - 96 } else { p.bits() };
        match a {
            Announcement::Flowspec(r) => {
                if let Some(src) = r.src {
                    if let Some(e) = self.allowlist.iter().find(|e| e.prefix.contains(&src)) {
                        return Err(Refused::SourceAllowlisted {
                            prefix: src,
                            id: e.id.clone(),
                            allowed: e.prefix,
                            why: allow_why(e),
                        });
                    }
                }
                let (min, field) = if dst.is_ipv4() {
                    (l.flowspec_min_v4, "flowspec_min_v4")
                } else {
                    (l.flowspec_min_v6, "flowspec_min_v6")
                };
                if len(&dst) < min {
                    return Err(Refused::FlowSpecTooBroad { prefix: dst, min, field });
                }
            }
            Announcement::Blackhole { .. } => {
                let (min, field) = if dst.is_ipv4() {
                    (l.blackhole_min_v4, "blackhole_min_v4")
                } else {
                    (l.blackhole_min_v6, "blackhole_min_v6")
                };
                if len(&dst) < min {
                    return Err(Refused::BlackholeTooBroad { prefix: dst, min, field });
                }
            }
        }
        if !self.allow_management {
            let host = self.allowlist.iter().filter(|e| e.source == AllowSource::Host).map(|e| &e.prefix);
            if let Some(m) = self.management.iter().chain(host).find(|m| m.overlaps(&dst)) {
                return Err(Refused::Management { prefix: dst, management: *m });
            }
        }
        if let Some(e) = self.allowlist.iter().find(|e| e.source != AllowSource::Host && e.prefix.overlaps(&dst)) {
            return Err(Refused::Allowlisted { prefix: dst, id: e.id.clone(), allowed: e.prefix, why: allow_why(e) });
        }
        if others >= l.max_announcements {
            return Err(Refused::TooMany(others));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        bgp::announce::{FlowAction, FlowSpecRule, BLACKHOLE},
        config::ConfigFile,
        span::Span,
    };

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    const CONFIG: &str = "\
networks:
  hostgroups:
    - { name: customers, prefixes: [198.51.100.0/24, '2001:db8:100::/48'] }
bgp:
  local_as: 64512
  router_id: 192.0.2.1
  neighbors: [ { address: 192.0.2.2, remote_as: 65000 } ]
  limits: { max_announcements: 3 }
  management_addresses: [198.51.100.200]
";

    fn setup() -> (BgpConfig, Protected, Vec<AllowEntry>) {
        let c = ConfigFile::parse("detector.yaml", CONFIG).unwrap();
        let protected = Protected::new(c.networks.as_ref(), &c.detection.families);
        let entry = |id: &str, prefix: &str, source| AllowEntry {
            id: id.into(),
            prefix: p(prefix),
            source,
            reason: "address of eth0".into(),
            created_ms: 0,
        };
        let allow = vec![
            entry("a1", "198.51.100.254/32", AllowSource::Host),
            entry("a2", "198.51.100.128/28", AllowSource::Config),
            entry("a3", "203.0.113.0/24", AllowSource::Operator),
        ];
        (c.bgp.unwrap(), protected, allow)
    }

    fn flow(dst: &str) -> FlowSpecRule {
        FlowSpecRule {
            dst: p(dst),
            src: None,
            protocols: vec![17],
            dst_ports: vec![Span::one(53)],
            src_ports: vec![],
            packet_lengths: vec![],
            tcp_flags: None,
            fragment: false,
            action: FlowAction::Discard,
        }
    }

    #[test]
    fn inside_the_protected_networks_passes() {
        let (cfg, protected, allow) = setup();
        let s = Scope::new(&cfg, &protected, &allow);
        assert_eq!(s.check(&Announcement::blackhole(p("198.51.100.10/32"), [BLACKHOLE]), 0), Ok(()));
        assert_eq!(s.check(&Announcement::blackhole(p("2001:db8:100::10/128"), [BLACKHOLE]), 0), Ok(()));
        assert_eq!(s.check(&Announcement::Flowspec(flow("198.51.100.0/25")), 2), Ok(()));
        assert_eq!(s.check(&Announcement::Flowspec(flow("2001:db8:100::/48")), 0), Ok(()));
    }

    #[test]
    fn refusals_say_why_in_one_line() {
        let (cfg, protected, allow) = setup();
        let s = Scope::new(&cfg, &protected, &allow);
        let e = |a: Announcement, others| s.check(&a, others).unwrap_err().to_string();
        let bh = |x: &str| Announcement::blackhole(p(x), [BLACKHOLE]);
        assert_eq!(
            e(bh("192.0.2.7/32"), 0),
            "192.0.2.7/32 is outside the protected networks; nothing is announced for addresses this node does not protect"
        );
        assert!(e(Announcement::Flowspec(flow("198.51.100.0/23")), 0).contains("outside the protected networks"));
        assert_eq!(
            e(bh("198.51.100.200/32"), 0),
            "198.51.100.200/32 covers management address 198.51.100.200/32; set bgp.allow_management to announce it"
        );
        assert!(e(bh("198.51.100.254/32"), 0).contains("covers management address 198.51.100.254/32"), "host entries");
        assert_eq!(
            e(bh("198.51.100.130/32"), 0),
            "198.51.100.130/32 overlaps allowlist entry a2 (198.51.100.128/28, from the configuration); those \
             addresses always pass"
        );
        assert_eq!(
            e(bh("198.51.100.0/31"), 0),
            "blackhole 198.51.100.0/31 is broader than /32: only prefixes of /32 or longer are blackholed \
             (bgp.limits.blackhole_min_v4)"
        );
        assert!(e(bh("2001:db8:100::/64"), 0).contains("broader than /128"));
        assert_eq!(
            e(Announcement::Flowspec(flow("198.51.100.0/24")), 0),
            "198.51.100.0/24 covers management address 198.51.100.200/32; set bgp.allow_management to announce it"
        );
        assert_eq!(
            e(Announcement::Flowspec(flow("2001:db8:100::/47")), 0),
            "2001:db8:100::/47 is outside the protected networks; nothing is announced for addresses this node does \
             not protect"
        );
        let from_allowed = FlowSpecRule { src: Some(p("203.0.113.7/32")), ..flow("198.51.100.10/32") };
        assert!(e(Announcement::Flowspec(from_allowed), 0)
            .starts_with("source 203.0.113.7/32 is inside allowlist entry a3"));
        assert_eq!(e(bh("198.51.100.10/32"), 3), "3 announcements are in force already (bgp.limits.max_announcements)");
        let empty = Announcement::Blackhole { prefix: p("198.51.100.10/32"), communities: vec![] };
        assert!(e(empty, 0).contains("at least one community"));
    }

    #[test]
    fn flowspec_breadth_has_its_own_limit() {
        let (mut cfg, protected, allow) = setup();
        cfg.management_addresses.clear();
        cfg.limits.flowspec_min_v4 = 25;
        cfg.limits.flowspec_min_v6 = 56;
        let s = Scope::new(&cfg, &protected, &allow);
        let r = s.check(&Announcement::Flowspec(flow("198.51.100.0/24")), 0).unwrap_err();
        assert_eq!(
            r.to_string(),
            "FlowSpec destination 198.51.100.0/24 is broader than /25 (bgp.limits.flowspec_min_v4)"
        );
        assert_eq!(r.reason(), "too_broad");
        assert!(s
            .check(&Announcement::Flowspec(flow("2001:db8:100::/48")), 0)
            .unwrap_err()
            .to_string()
            .contains("/56"));
    }

    #[test]
    fn management_addresses_when_allowed() {
        let (mut cfg, protected, allow) = setup();
        cfg.allow_management = true;
        let s = Scope::new(&cfg, &protected, &allow);
        assert_eq!(s.check(&Announcement::blackhole(p("198.51.100.200/32"), [BLACKHOLE]), 0), Ok(()));
        assert_eq!(s.check(&Announcement::blackhole(p("198.51.100.254/32"), [BLACKHOLE]), 0), Ok(()));
        // Configured allowlist entries still apply.
        assert_eq!(
            s.check(&Announcement::blackhole(p("198.51.100.130/32"), [BLACKHOLE]), 0).unwrap_err().reason(),
            "allowlisted"
        );
    }
}
