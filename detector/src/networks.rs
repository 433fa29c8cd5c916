//! The protected networks: the `networks:` section of the configuration
//! file, and what it resolves to at run time.
//!
//! A node protects prefixes, grouped into named host groups. Each group
//! has its own static floors per family (falling back, family by family,
//! to the global `detection.families`) for one of its addresses, for the
//! whole group (carpet bombing), and, when given, for traffic its
//! addresses send (outgoing floods); and its own learned baselines.
//!
//! Without a `networks:` section the node protects itself: one group,
//! [`HOST_GROUP`], holding the host's own addresses (kept up to date as
//! they change), with the global floors, incoming only.
//!
//! Pure: lookups and validation take data and return answers. The
//! controller installs [`Protected::kernel_entries`] in the XDP program's
//! prefix trie; the detector uses [`Protected::group_of`] on sampled
//! headers.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use serde::Deserialize;

use crate::{
    detect::{
        config::{FamiliesConfig, FamilyConfig},
        family::Family,
    },
    mitigate::prefix::Prefix,
    targets::Direction,
};

/// The group of host mode (no `networks:` section): the host's addresses.
pub const HOST_GROUP: &str = "host";
/// Host groups at most (the kernel's per-group counters are sized for it).
pub const MAX_HOSTGROUPS: usize = 64;
/// Protected prefixes at most, all groups together.
pub const MAX_PREFIXES: usize = 4096;
/// The shortest protected IPv4 and IPv6 prefixes: a node protects its own
/// networks, never a share of the internet.
pub const MIN_V4_LEN: u8 = 8;
pub const MIN_V6_LEN: u8 = 16;

/// `networks:` in the file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetworksConfig {
    pub hostgroups: Vec<HostGroupConfig>,
}

/// One host group in the file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostGroupConfig {
    /// Letters, digits, `_` and `-`: it names incidents and labels metrics.
    pub name: String,
    pub prefixes: Vec<Prefix>,
    /// Floors for one address of the group; families not named here take
    /// the global `detection.families`.
    #[serde(default)]
    pub families: FamilyFloors,
    /// Floors for the group's total (many addresses each below its own
    /// floor, together above these: carpet bombing). Families not named
    /// take the group's per-address floors.
    #[serde(default)]
    pub total: FamilyFloors,
    /// Floors for what one address of the group sends. Absent: outgoing
    /// floods are not watched for this group.
    #[serde(default)]
    pub outgoing: Option<FamilyFloors>,
}

/// Floors of some families; the others fall back to a full set.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FamilyFloors {
    pub udp_flood: Option<FamilyConfig>,
    pub syn_flood: Option<FamilyConfig>,
    pub ack_flood: Option<FamilyConfig>,
    pub icmp_flood: Option<FamilyConfig>,
    pub dns_flood: Option<FamilyConfig>,
    pub dns_amplification: Option<FamilyConfig>,
    pub udp_amplification: Option<FamilyConfig>,
    pub http_flood: Option<FamilyConfig>,
    pub fragment_flood: Option<FamilyConfig>,
}

impl FamilyFloors {
    /// `base` with the families named here replaced.
    pub fn over(&self, base: &FamiliesConfig) -> FamiliesConfig {
        let pick = |o: &Option<FamilyConfig>, b: &FamilyConfig| o.unwrap_or(*b);
        FamiliesConfig {
            udp_flood: pick(&self.udp_flood, &base.udp_flood),
            syn_flood: pick(&self.syn_flood, &base.syn_flood),
            ack_flood: pick(&self.ack_flood, &base.ack_flood),
            icmp_flood: pick(&self.icmp_flood, &base.icmp_flood),
            dns_flood: pick(&self.dns_flood, &base.dns_flood),
            dns_amplification: pick(&self.dns_amplification, &base.dns_amplification),
            udp_amplification: pick(&self.udp_amplification, &base.udp_amplification),
            http_flood: pick(&self.http_flood, &base.http_flood),
            fragment_flood: pick(&self.fragment_flood, &base.fragment_flood),
        }
    }
}

impl NetworksConfig {
    /// Checks what serde cannot: names, sizes, prefix lengths, duplicates.
    /// The message names the group and the field.
    pub fn check(&self) -> Result<(), String> {
        if self.hostgroups.is_empty() {
            return Err("networks.hostgroups: name at least one host group, or leave `networks:` out to protect \
                        the host's own addresses"
                .into());
        }
        if self.hostgroups.len() > MAX_HOSTGROUPS {
            return Err(format!("networks.hostgroups: {} groups, at most {MAX_HOSTGROUPS}", self.hostgroups.len()));
        }
        let mut names = BTreeSet::new();
        let mut seen: Vec<(Prefix, &str)> = Vec::new();
        for g in &self.hostgroups {
            let at = format!("networks.hostgroups[{}]", g.name);
            check_name(&g.name).map_err(|e| format!("networks.hostgroups: name '{}': {e}", g.name))?;
            if !names.insert(g.name.as_str()) {
                return Err(format!("{at}: the name is used twice"));
            }
            if g.prefixes.is_empty() {
                return Err(format!("{at}.prefixes: a group protects at least one prefix"));
            }
            for p in &g.prefixes {
                let (len, min) = if p.is_ipv4() { (p.bits() - 96, MIN_V4_LEN) } else { (p.bits(), MIN_V6_LEN) };
                if len < min {
                    return Err(format!(
                        "{at}.prefixes: {p} is broader than /{min}; list the networks this node protects"
                    ));
                }
                if let Some((_, other)) = seen.iter().find(|(q, _)| q == p) {
                    return Err(format!("{at}.prefixes: {p} is already in group '{other}'"));
                }
                seen.push((*p, &g.name));
            }
            for (floors, field) in
                [(Some(&g.families), "families"), (Some(&g.total), "total"), (g.outgoing.as_ref(), "outgoing")]
            {
                if let Some(f) = floors {
                    f.check().map_err(|e| format!("{at}.{field}.{e}"))?;
                }
            }
        }
        if seen.len() > MAX_PREFIXES {
            return Err(format!("networks.hostgroups: {} prefixes, at most {MAX_PREFIXES}", seen.len()));
        }
        Ok(())
    }
}

impl FamilyFloors {
    fn check(&self) -> Result<(), String> {
        for f in Family::DETECTED {
            if let Some(c) = self.get(f) {
                if c.enabled && c.pps == 0 {
                    return Err(format!("{f}.pps: 0 would alarm on any packet; use enabled: false to stop watching"));
                }
            }
        }
        Ok(())
    }

    fn get(&self, f: Family) -> Option<&FamilyConfig> {
        match f {
            Family::UdpFlood => self.udp_flood.as_ref(),
            Family::SynFlood => self.syn_flood.as_ref(),
            Family::AckFlood => self.ack_flood.as_ref(),
            Family::IcmpFlood => self.icmp_flood.as_ref(),
            Family::DnsFlood => self.dns_flood.as_ref(),
            Family::DnsAmplification => self.dns_amplification.as_ref(),
            Family::UdpAmplification => self.udp_amplification.as_ref(),
            Family::HttpFlood => self.http_flood.as_ref(),
            Family::FragmentFlood => self.fragment_flood.as_ref(),
            Family::MultiVector => None,
        }
    }
}

fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 32 {
        return Err("1 to 32 characters");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err("letters, digits, '_' and '-' only");
    }
    Ok(())
}

/// A host group as detection uses it: floors resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct HostGroup {
    pub name: String,
    pub prefixes: Vec<Prefix>,
    /// Floors for one of its addresses, incoming.
    pub per_address: FamiliesConfig,
    /// Floors for the group's total, incoming.
    pub total: FamiliesConfig,
    /// Floors for one of its addresses and for the total, outgoing; none
    /// when outgoing floods are not watched.
    pub outgoing: Option<FamiliesConfig>,
}

impl HostGroup {
    /// The floors of one address (`total` false) or of the whole group, in
    /// one direction; none when that direction is not watched.
    pub fn floors(&self, direction: Direction, total: bool) -> Option<&FamiliesConfig> {
        match (direction, total) {
            (Direction::Incoming, false) => Some(&self.per_address),
            (Direction::Incoming, true) => Some(&self.total),
            (Direction::Outgoing, _) => self.outgoing.as_ref(),
        }
    }
}

/// What the node protects, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Protected {
    groups: Vec<HostGroup>,
    /// Host mode: one group, the host's addresses, refreshed at run time.
    host_mode: bool,
    /// Per prefix length, longest first: network address -> group. A
    /// lookup costs a hash probe per length in use, not a scan of every
    /// prefix (the detector looks up every sampled destination).
    index: Vec<(u8, HashMap<u128, usize>)>,
}

impl Protected {
    /// From the file's `networks:` (checked) and the global floors; host
    /// mode, with no addresses yet, when there is no section.
    pub fn new(networks: Option<&NetworksConfig>, global: &FamiliesConfig) -> Protected {
        match networks {
            None => Protected::host(global, Vec::new()),
            Some(n) => Protected {
                groups: n
                    .hostgroups
                    .iter()
                    .map(|g| {
                        let per_address = g.families.over(global);
                        HostGroup {
                            name: g.name.clone(),
                            prefixes: g.prefixes.clone(),
                            total: g.total.over(&per_address),
                            outgoing: g.outgoing.as_ref().map(|o| o.over(global)),
                            per_address,
                        }
                    })
                    .collect(),
                host_mode: false,
                index: Vec::new(),
            }
            .indexed(),
        }
    }

    fn indexed(mut self) -> Protected {
        self.reindex();
        self
    }

    /// Builds the lookup index from the groups' prefixes.
    fn reindex(&mut self) {
        let mut by_len: HashMap<u8, HashMap<u128, usize>> = HashMap::new();
        for (i, g) in self.groups.iter().enumerate() {
            for p in &g.prefixes {
                let (addr, len) = p.key();
                by_len.entry(len as u8).or_default().insert(u128::from_be_bytes(addr), i);
            }
        }
        let mut index: Vec<(u8, HashMap<u128, usize>)> = by_len.into_iter().collect();
        index.sort_by_key(|e| std::cmp::Reverse(e.0));
        self.index = index;
    }

    /// Host mode over `addrs`.
    pub fn host(global: &FamiliesConfig, addrs: Vec<IpAddr>) -> Protected {
        let mut p = Protected {
            groups: vec![HostGroup {
                name: HOST_GROUP.to_string(),
                prefixes: Vec::new(),
                per_address: global.clone(),
                total: global.clone(),
                outgoing: None,
            }],
            host_mode: true,
            index: Vec::new(),
        };
        p.set_host_addresses(addrs);
        p
    }

    pub fn host_mode(&self) -> bool {
        self.host_mode
    }

    /// In host mode, protects exactly `addrs` (loopback left out: nothing
    /// from outside reaches it); true when that changed anything. Ignored
    /// with a `networks:` section.
    pub fn set_host_addresses(&mut self, addrs: impl IntoIterator<Item = IpAddr>) -> bool {
        if !self.host_mode {
            return false;
        }
        let mut prefixes: Vec<Prefix> =
            addrs.into_iter().filter(|a| !a.is_loopback() && !a.is_unspecified()).map(Prefix::host).collect();
        prefixes.sort();
        prefixes.dedup();
        let g = &mut self.groups[0];
        if g.prefixes == prefixes {
            return false;
        }
        g.prefixes = prefixes;
        self.reindex();
        true
    }

    pub fn groups(&self) -> &[HostGroup] {
        &self.groups
    }

    pub fn group(&self, index: usize) -> Option<&HostGroup> {
        self.groups.get(index)
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.groups.iter().position(|g| g.name == name)
    }

    /// The group whose longest prefix holds `addr`, as the kernel's trie
    /// finds it.
    pub fn group_of(&self, addr: IpAddr) -> Option<usize> {
        let (bytes, _) = Prefix::host(addr).key();
        let a = u128::from_be_bytes(bytes);
        self.index.iter().find_map(|(len, nets)| {
            let mask = if *len == 0 { 0 } else { u128::MAX << (128 - *len as u32) };
            nets.get(&(a & mask)).copied()
        })
    }

    /// The trie's entries: every prefix with its group's index.
    pub fn kernel_entries(&self) -> Vec<(Prefix, u32)> {
        self.groups.iter().enumerate().flat_map(|(i, g)| g.prefixes.iter().map(move |p| (*p, i as u32))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigFile;

    fn parse(text: &str) -> Result<ConfigFile, String> {
        ConfigFile::parse("detector.yaml", text).map_err(|e| e.to_string())
    }

    const TWO_GROUPS: &str = "\
detection:
  families:
    syn_flood: { pps: 2000 }
networks:
  hostgroups:
    - name: customers
      prefixes: [198.51.100.0/24, 2001:db8:c::/48]
      families:
        udp_flood: { pps: 30000, bps: 100Mbit }
      total:
        udp_flood: { pps: 200000 }
      outgoing:
        udp_flood: { pps: 20000 }
    - name: vip
      prefixes: [198.51.100.10/32]
";

    #[test]
    fn groups_resolve_their_floors_family_by_family() {
        let c = parse(TWO_GROUPS).unwrap();
        let p = Protected::new(c.networks.as_ref(), &c.detection.families);
        assert!(!p.host_mode());
        let g = p.group(0).unwrap();
        assert_eq!(g.name, "customers");
        assert_eq!(g.per_address.udp_flood.pps, 30_000);
        assert_eq!(g.per_address.udp_flood.bps, Some(100_000_000));
        // Not named: the global floor.
        assert_eq!(g.per_address.syn_flood.pps, 2000);
        assert_eq!(g.total.udp_flood.pps, 200_000);
        // Not named in total: the group's per-address floor.
        assert_eq!(g.total.syn_flood.pps, 2000);
        assert_eq!(g.floors(Direction::Outgoing, false).unwrap().udp_flood.pps, 20_000);
        let vip = p.group(1).unwrap();
        assert_eq!(vip.floors(Direction::Outgoing, true), None, "outgoing not watched");
        assert_eq!(vip.per_address, c.detection.families);
    }

    #[test]
    fn the_longest_prefix_names_the_group() {
        let c = parse(TWO_GROUPS).unwrap();
        let p = Protected::new(c.networks.as_ref(), &c.detection.families);
        assert_eq!(p.group_of("198.51.100.10".parse().unwrap()), Some(1));
        assert_eq!(p.group_of("198.51.100.11".parse().unwrap()), Some(0));
        assert_eq!(p.group_of("2001:db8:c::7".parse().unwrap()), Some(0));
        assert_eq!(p.group_of("203.0.113.1".parse().unwrap()), None);
        assert_eq!(p.group_of("::ffff:198.51.100.11".parse().unwrap()), Some(0), "mapped is the same address");
        assert_eq!(p.kernel_entries().len(), 3);
        assert_eq!(p.index_of("vip"), Some(1));
    }

    #[test]
    fn host_mode_protects_the_host_addresses() {
        let global = FamiliesConfig::default();
        let mut p = Protected::new(None, &global);
        assert!(p.host_mode());
        assert!(p.kernel_entries().is_empty());
        let addrs: Vec<IpAddr> =
            ["192.0.2.2", "2001:db8::2", "127.0.0.1", "192.0.2.2"].iter().map(|s| s.parse().unwrap()).collect();
        assert!(p.set_host_addresses(addrs.clone()));
        assert!(!p.set_host_addresses(addrs), "unchanged");
        assert_eq!(p.kernel_entries().len(), 2, "loopback left out, duplicates once");
        assert_eq!(p.group_of("192.0.2.2".parse().unwrap()), Some(0));
        assert_eq!(p.group(0).unwrap().name, HOST_GROUP);
        assert_eq!(p.group(0).unwrap().floors(Direction::Outgoing, false), None);
    }

    #[test]
    fn bad_networks_are_named() {
        let e = |t: &str| parse(t).unwrap_err();
        assert!(
            e("networks: {hostgroups: []}").contains("name at least one host group"),
            "{}",
            e("networks: {hostgroups: []}")
        );
        let t = "networks:\n  hostgroups:\n    - {name: 'a b', prefixes: [10.0.0.0/8]}\n";
        assert!(e(t).contains("name 'a b': letters, digits"), "{}", e(t));
        let t = "networks:\n  hostgroups:\n    - {name: a, prefixes: [10.0.0.0/8]}\n    - {name: a, prefixes: [10.1.0.0/16]}\n";
        assert!(e(t).contains("networks.hostgroups[a]: the name is used twice"), "{}", e(t));
        let t = "networks:\n  hostgroups:\n    - {name: a, prefixes: [0.0.0.0/0]}\n";
        assert!(e(t).contains("networks.hostgroups[a].prefixes: 0.0.0.0/0 is broader than /8"), "{}", e(t));
        let t = "networks:\n  hostgroups:\n    - {name: a, prefixes: ['2000::/3']}\n";
        assert!(e(t).contains("is broader than /16"), "{}", e(t));
        let t = "networks:\n  hostgroups:\n    - {name: a, prefixes: [10.0.0.0/8]}\n    - {name: b, prefixes: [10.0.0.0/8]}\n";
        assert!(e(t).contains("networks.hostgroups[b].prefixes: 10.0.0.0/8 is already in group 'a'"), "{}", e(t));
        let t = "networks:\n  hostgroups:\n    - {name: a, prefixes: []}\n";
        assert!(e(t).contains("at least one prefix"), "{}", e(t));
        let t = "networks:\n  hostgroups:\n    - {name: a, prefixes: [10.0.0.300/32]}\n";
        assert!(e(t).contains("detector.yaml:3:"), "{}", e(t));
        let t = "networks:\n  hostgroups:\n    - {name: a, prefixes: [10.0.0.0/8], total: {syn_flood: {pps: 0}}}\n";
        assert!(e(t).contains("networks.hostgroups[a].total.syn_flood.pps: 0 would alarm"), "{}", e(t));
        let t = "networks:\n  hostgroups:\n    - {name: a, prefixes: [10.0.0.0/8], families: {smurf: {pps: 1}}}\n";
        assert!(e(t).contains("unknown field `smurf`"), "{}", e(t));
    }
}
