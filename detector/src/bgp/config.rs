//! The `bgp:` section of the configuration file: the speaker (its AS and
//! router id), its neighbors, the communities a blackhole carries, the
//! safety limits, and where the GoBGP daemon is and listens. Checked in
//! one function, [`BgpConfig::check`], whose error is one line naming the
//! field.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    time::Duration,
};

use serde::Deserialize;

use super::announce::{Community, BLACKHOLE, MAX_COMMUNITIES};
use crate::mitigate::prefix::Prefix;

/// AS_TRANS (RFC 6793): a placeholder, never an AS of its own.
const AS_TRANS: u32 = 23456;
/// Neighbors at most.
pub const MAX_NEIGHBORS: usize = 16;
/// The longest neighbor description.
const MAX_DESCRIPTION: usize = 80;

/// `bgp:` in the file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BgpConfig {
    /// This speaker's AS (4-byte ASNs welcome).
    pub local_as: u32,
    /// This speaker's BGP identifier: an IPv4 address, usually one of the
    /// host's.
    pub router_id: Ipv4Addr,
    pub neighbors: Vec<NeighborConfig>,
    #[serde(default)]
    pub communities: CommunitiesConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Record what would be announced and withdrawn; announce nothing.
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub gobgpd: GobgpdConfig,
    /// Addresses never blackholed nor filtered upstream (the host's
    /// management addresses, a router's loopback), unless
    /// `allow_management` is true. The host's own addresses and gateways,
    /// which the allowlist holds, count as management addresses too.
    #[serde(default)]
    pub management_addresses: Vec<Prefix>,
    #[serde(default)]
    pub allow_management: bool,
}

/// One BGP neighbor (an upstream router).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NeighborConfig {
    pub address: IpAddr,
    pub remote_as: u32,
    #[serde(default)]
    pub description: Option<String>,
    /// The address families negotiated with it; all four when left out.
    #[serde(default = "Family::all")]
    pub families: Vec<Family>,
    /// How long to wait between attempts to connect to it.
    #[serde(default = "default_connect_retry", deserialize_with = "crate::detect::config::duration")]
    pub connect_retry: Duration,
}

/// An address family of a BGP session.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Ipv4Unicast,
    Ipv6Unicast,
    Ipv4Flowspec,
    Ipv6Flowspec,
}

impl Family {
    pub fn all() -> Vec<Family> {
        vec![Family::Ipv4Unicast, Family::Ipv6Unicast, Family::Ipv4Flowspec, Family::Ipv6Flowspec]
    }

    /// GoBGP's name of it (`afi-safi-name`).
    pub fn gobgp_name(&self) -> &'static str {
        match self {
            Family::Ipv4Unicast => "ipv4-unicast",
            Family::Ipv6Unicast => "ipv6-unicast",
            Family::Ipv4Flowspec => "ipv4-flowspec",
            Family::Ipv6Flowspec => "ipv6-flowspec",
        }
    }
}

fn default_connect_retry() -> Duration {
    Duration::from_secs(10)
}

/// `communities:`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CommunitiesConfig {
    /// What marks a blackhole: RFC 7999's BLACKHOLE by default, or the
    /// provider's own.
    pub blackhole: Community,
    /// More communities every blackhole carries (a provider's scope
    /// communities: "do not export to peers", ...).
    pub extra: Vec<Community>,
}

impl Default for CommunitiesConfig {
    fn default() -> Self {
        CommunitiesConfig { blackhole: BLACKHOLE, extra: Vec::new() }
    }
}

impl CommunitiesConfig {
    /// The communities a blackhole carries: the blackhole one, then the
    /// extra ones.
    pub fn for_blackhole(&self) -> Vec<Community> {
        std::iter::once(self.blackhole).chain(self.extra.iter().copied()).collect()
    }
}

/// `limits:`: what keeps a mistake (or an attacker steering detection)
/// from announcing too much, too broadly or too often.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Announcements in force at once, blackholes and FlowSpec together.
    pub max_announcements: usize,
    /// Announcements and withdrawals sent per minute; more wait for the
    /// next minute (withdrawals first, never dropped).
    pub max_changes_per_minute: u32,
    /// The shortest IPv4 destination prefix of a FlowSpec rule.
    pub flowspec_min_v4: u8,
    /// The shortest IPv6 destination prefix of a FlowSpec rule.
    pub flowspec_min_v6: u8,
    /// The shortest IPv4 prefix blackholed: host routes only by default.
    pub blackhole_min_v4: u8,
    /// The shortest IPv6 prefix blackholed.
    pub blackhole_min_v6: u8,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_announcements: 100,
            max_changes_per_minute: 60,
            flowspec_min_v4: 24,
            flowspec_min_v6: 48,
            blackhole_min_v4: 32,
            blackhole_min_v6: 128,
        }
    }
}

/// `gobgpd:`: the daemon the detector runs.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GobgpdConfig {
    /// The `gobgpd` binary; found on PATH (or in /usr/sbin) when left out.
    pub path: Option<PathBuf>,
    /// Its gRPC API's port, on 127.0.0.1 only.
    pub api_port: u16,
    /// The port it accepts BGP sessions on; 0 to only connect out.
    pub listen_port: u16,
}

impl Default for GobgpdConfig {
    fn default() -> Self {
        GobgpdConfig { path: None, api_port: 50051, listen_port: 179 }
    }
}

impl BgpConfig {
    /// The one check of the section, for the file and any other way in.
    /// The first problem is the error, naming its field.
    pub fn check(&self) -> Result<(), String> {
        check_as("bgp.local_as", self.local_as)?;
        if self.router_id.is_unspecified() || self.router_id.is_broadcast() || self.router_id.is_multicast() {
            return Err(format!("bgp.router_id: {} is not a usable BGP identifier", self.router_id));
        }
        if self.neighbors.is_empty() {
            return Err("bgp.neighbors: name at least one neighbor (the upstream router to announce to)".into());
        }
        if self.neighbors.len() > MAX_NEIGHBORS {
            return Err(format!("bgp.neighbors: {} neighbors, at most {MAX_NEIGHBORS}", self.neighbors.len()));
        }
        for (i, n) in self.neighbors.iter().enumerate() {
            let at = format!("bgp.neighbors[{i}]");
            if n.address.is_unspecified() || n.address.is_multicast() || n.address.is_loopback() {
                return Err(format!("{at}.address: {} is not a neighbor's address", n.address));
            }
            if self.neighbors[..i].iter().any(|o| o.address == n.address) {
                return Err(format!("{at}.address: {} is listed twice", n.address));
            }
            check_as(&format!("{at}.remote_as"), n.remote_as)?;
            if let Some(d) = &n.description {
                if d.chars().count() > MAX_DESCRIPTION || d.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
                    return Err(format!(
                        "{at}.description: at most {MAX_DESCRIPTION} characters, without quotes, backslashes or \
                         control characters"
                    ));
                }
            }
            if n.families.is_empty() {
                return Err(format!(
                    "{at}.families: name at least one (ipv4_unicast, ipv6_unicast, ipv4_flowspec, ipv6_flowspec)"
                ));
            }
            if n.connect_retry < Duration::from_secs(1) || n.connect_retry > Duration::from_secs(3600) {
                return Err(format!("{at}.connect_retry: 1s to 1h"));
            }
        }
        let c = &self.communities;
        if 1 + c.extra.len() > MAX_COMMUNITIES {
            return Err(format!("bgp.communities.extra: at most {} besides the blackhole one", MAX_COMMUNITIES - 1));
        }
        if c.extra.contains(&c.blackhole) {
            return Err(format!("bgp.communities.extra: {} is already the blackhole community", c.blackhole));
        }
        let l = &self.limits;
        if !(1..=10_000).contains(&l.max_announcements) {
            return Err("bgp.limits.max_announcements: 1 to 10000".into());
        }
        if !(1..=6000).contains(&l.max_changes_per_minute) {
            return Err("bgp.limits.max_changes_per_minute: 1 to 6000".into());
        }
        for (field, v, lo, hi) in [
            ("flowspec_min_v4", l.flowspec_min_v4, 8, 32),
            ("flowspec_min_v6", l.flowspec_min_v6, 16, 128),
            ("blackhole_min_v4", l.blackhole_min_v4, 24, 32),
            ("blackhole_min_v6", l.blackhole_min_v6, 48, 128),
        ] {
            if !(lo..=hi).contains(&v) {
                return Err(format!("bgp.limits.{field}: a prefix length from {lo} to {hi}, not {v}"));
            }
        }
        if self.gobgpd.api_port == 0 {
            return Err("bgp.gobgpd.api_port: 1 to 65535".into());
        }
        if self.gobgpd.api_port == self.gobgpd.listen_port {
            return Err("bgp.gobgpd.api_port: the BGP listen_port is the same port".into());
        }
        Ok(())
    }
}

fn check_as(field: &str, asn: u32) -> Result<(), String> {
    if asn == 0 || asn == AS_TRANS || asn == u32::MAX || asn == 65535 {
        return Err(format!("{field}: {asn} is a reserved AS number"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigFile;

    fn parse(text: &str) -> Result<ConfigFile, String> {
        ConfigFile::parse("detector.yaml", text).map_err(|e| e.to_string())
    }

    const MINIMAL: &str = "\
bgp:
  local_as: 64512
  router_id: 192.0.2.1
  neighbors:
    - { address: 192.0.2.2, remote_as: 65000 }
";

    #[test]
    fn a_minimal_section_takes_the_defaults() {
        let b = parse(MINIMAL).unwrap().bgp.expect("a bgp section");
        assert_eq!(b.local_as, 64512);
        assert_eq!(b.neighbors[0].families, Family::all());
        assert_eq!(b.neighbors[0].connect_retry, Duration::from_secs(10));
        assert_eq!(b.communities.for_blackhole(), vec![BLACKHOLE]);
        assert_eq!(b.limits, LimitsConfig::default());
        assert_eq!(b.limits.blackhole_min_v4, 32);
        assert_eq!(b.gobgpd.api_port, 50051);
        assert!(!b.dry_run && !b.allow_management);
        assert_eq!(parse("").unwrap().bgp, None);
    }

    #[test]
    fn a_full_section() {
        let text = "\
bgp:
  local_as: 4200000001
  router_id: 192.0.2.1
  dry_run: true
  neighbors:
    - address: 192.0.2.2
      remote_as: 65000
      description: transit A
      families: [ipv4_unicast, ipv4_flowspec]
      connect_retry: 2s
    - { address: '2001:db8::2', remote_as: 65001 }
  communities: { blackhole: '65000:666', extra: ['65000:0', '65000:1:2'] }
  limits: { max_announcements: 10, max_changes_per_minute: 5, flowspec_min_v4: 28, blackhole_min_v4: 30 }
  gobgpd: { path: /opt/gobgp/gobgpd, api_port: 50100, listen_port: 0 }
  management_addresses: [192.0.2.1, '2001:db8::1']
";
        let b = parse(text).unwrap().bgp.unwrap();
        assert_eq!(b.local_as, 4_200_000_001);
        assert!(b.dry_run);
        assert_eq!(b.neighbors[0].families, vec![Family::Ipv4Unicast, Family::Ipv4Flowspec]);
        assert_eq!(b.neighbors[0].connect_retry, Duration::from_secs(2));
        assert_eq!(
            b.communities.for_blackhole(),
            vec![Community::Standard(65000, 666), Community::Standard(65000, 0), Community::Large(65000, 1, 2)]
        );
        assert_eq!(b.limits.flowspec_min_v4, 28);
        assert_eq!(b.limits.flowspec_min_v6, 48, "not named: the default");
        assert_eq!(b.gobgpd.path, Some(PathBuf::from("/opt/gobgp/gobgpd")));
        assert_eq!(b.management_addresses.len(), 2);
    }

    #[test]
    fn refusals_name_the_field() {
        let e = |extra: &str| parse(&format!("{MINIMAL}{extra}")).unwrap_err();
        assert!(e("  limits: { flowspec_min_v4: 4 }\n")
            .contains("bgp.limits.flowspec_min_v4: a prefix length from 8 to 32, not 4"));
        assert!(e("  limits: { blackhole_min_v6: 8 }\n").contains("bgp.limits.blackhole_min_v6"));
        assert!(e("  limits: { max_announcements: 0 }\n").contains("bgp.limits.max_announcements: 1 to 10000"));
        assert!(e("  limits: { max_changes_per_minute: 0 }\n").contains("bgp.limits.max_changes_per_minute"));
        assert!(e("  communities: { blackhole: '70000:1' }\n").contains("'70000' is not a number from 0 to 65535"));
        assert!(e("  communities: { extra: ['65535:666'] }\n").contains("already the blackhole community"));
        assert!(e("  gobgpd: { api_port: 179 }\n").contains("bgp.gobgpd.api_port: the BGP listen_port"));
        assert!(e("  gobgpd: { grpc: 1 }\n").contains("unknown field `grpc`"));
        assert!(e("  speed: fast\n").contains("unknown field `speed`"));
        assert!(e("  management_addresses: [10.1.2.3/8]\n").contains("did you mean 10.0.0.0/8"));

        let with = |n: &str| {
            parse(&format!("bgp:\n  local_as: 64512\n  router_id: 192.0.2.1\n  neighbors:\n{n}")).unwrap_err()
        };
        assert!(with("    - { address: 192.0.2.2, remote_as: 0 }\n")
            .contains("bgp.neighbors[0].remote_as: 0 is a reserved AS number"));
        assert!(with("    - { address: 192.0.2.2, remote_as: 1 }\n    - { address: 192.0.2.2, remote_as: 2 }\n")
            .contains("bgp.neighbors[1].address: 192.0.2.2 is listed twice"));
        assert!(with("    - { address: 127.0.0.1, remote_as: 1 }\n").contains("is not a neighbor's address"));
        assert!(
            with("    - { address: 192.0.2.2, remote_as: 1, families: [] }\n").contains("bgp.neighbors[0].families")
        );
        assert!(
            with("    - { address: 192.0.2.2, remote_as: 1, families: [l2vpn] }\n").contains("unknown variant `l2vpn`")
        );
        assert!(with("    - { address: 192.0.2.2, remote_as: 1, description: 'a \"b\"' }\n").contains("description"));
        assert!(with("    - { address: 192.0.2.2, remote_as: 1, connect_retry: soon }\n")
            .contains("'soon' is not a duration"));
        assert!(with("    []\n").contains("bgp.neighbors: name at least one"), "{}", with("    []\n"));
        let e = parse("bgp:\n  local_as: 23456\n  router_id: 192.0.2.1\n  neighbors: []\n").unwrap_err();
        assert!(e.contains("bgp.local_as: 23456 is a reserved AS number"), "{e}");
        let e = parse("bgp:\n  local_as: 1\n  router_id: 0.0.0.0\n  neighbors: []\n").unwrap_err();
        assert!(e.contains("bgp.router_id: 0.0.0.0 is not a usable BGP identifier"), "{e}");
        let e = parse("bgp:\n  local_as: 1\n  neighbors: []\n").unwrap_err();
        assert!(e.contains("missing field `router_id`"), "{e}");
    }
}
