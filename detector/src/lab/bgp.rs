//! A lab for upstream mitigation over BGP: the detector's speaker (gobgpd)
//! in one namespace, its upstream router (BIRD, [`super::bird`]) in
//! another, a veth between them. Uniquely named, torn down on drop (and on
//! panic), like every lab ([`super::Lab`]); no default route anywhere.
//!
//! ```text
//!  netns <name>-speaker                netns <name>-upstream
//!  <speaker_if> 192.0.2.1/24 ========= <upstream_if> 192.0.2.2/24
//!  AS 64512 (gobgpd)                    AS 65000 (BIRD)
//!                                       198.51.100.0/24 via 192.0.2.1
//! ```
//!
//! The upstream routes the customers' network ([`CUSTOMERS_NET_V4`]) to
//! the speaker, as a provider routes a customer's prefix: a blackhole the
//! speaker announces for one of its addresses overrides that route in the
//! upstream's kernel.

use std::path::PathBuf;

use super::{add_addr, ip, make_dir, sysctl, teardown, veth, LabError, LabNames};
use crate::netns::NetnsGuard;

pub const SPEAKER_V4: &str = "192.0.2.1";
pub const UPSTREAM_V4: &str = "192.0.2.2";
pub const SPEAKER_AS: u32 = 64512;
pub const UPSTREAM_AS: u32 = 65000;
/// The network behind the speaker: what it protects and may announce.
pub const CUSTOMERS_NET_V4: &str = "198.51.100.0/24";
pub const CUSTOMERS_NET_V6: &str = "2001:db8:100::/48";

/// The two namespaces and the link between them.
pub struct BgpLab {
    pub speaker_ns: String,
    pub upstream_ns: String,
    pub speaker_if: String,
    pub upstream_if: String,
    /// A scratch directory (configurations, sockets, logs), removed with
    /// the lab.
    pub dir: PathBuf,
}

impl BgpLab {
    pub fn new() -> Result<BgpLab, LabError> {
        let names = LabNames::next();
        let lab = BgpLab {
            speaker_ns: names.ns("speaker"),
            upstream_ns: names.ns("upstream"),
            speaker_if: names.iface('s'),
            upstream_if: names.iface('u'),
            dir: names.dir(),
        };
        // From here on, drop cleans up whatever was made.
        lab.build()?;
        Ok(lab)
    }

    fn build(&self) -> Result<(), LabError> {
        make_dir(&self.dir)?;
        for ns in [&self.speaker_ns, &self.upstream_ns] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        sysctl(&self.upstream_ns, "net/ipv4/ip_forward", "1")?;
        veth(&self.speaker_ns, &self.speaker_if, &self.upstream_ns, &self.upstream_if)?;
        for (ns, ifname, v4) in
            [(&self.speaker_ns, &self.speaker_if, SPEAKER_V4), (&self.upstream_ns, &self.upstream_if, UPSTREAM_V4)]
        {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", ifname])?;
            ip(&["-n", ns, "link", "set", ifname, "up"])?;
        }
        ip(&["-n", &self.upstream_ns, "route", "add", CUSTOMERS_NET_V4, "via", SPEAKER_V4])?;
        Ok(())
    }

    /// Moves the calling thread into the speaker's namespace until the
    /// guard drops.
    pub fn enter_speaker(&self) -> Result<NetnsGuard, LabError> {
        NetnsGuard::enter(&self.speaker_ns).map_err(|source| LabError::Enter { ns: self.speaker_ns.clone(), source })
    }

    /// The upstream kernel's routes to `dst` (`ip route show <dst>`), one
    /// per line.
    pub fn upstream_routes(&self, dst: &str) -> Result<String, LabError> {
        let out = ip(&["-n", &self.upstream_ns, "route", "show", dst])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Every default route in the lab: none, unless a test added one.
    pub fn default_routes(&self) -> Result<Vec<String>, LabError> {
        let mut found = Vec::new();
        for ns in [&self.speaker_ns, &self.upstream_ns] {
            for family in ["-4", "-6"] {
                let out = ip(&["-n", ns, family, "route", "show", "default"])?;
                let text = String::from_utf8_lossy(&out.stdout);
                found.extend(text.lines().filter(|l| !l.trim().is_empty()).map(|l| format!("{ns}: {l}")));
            }
        }
        Ok(found)
    }
}

impl Drop for BgpLab {
    fn drop(&mut self) {
        teardown(&[&self.speaker_ns, &self.upstream_ns], &self.dir);
    }
}

/// The router lab's router's own address towards its BGP upstream.
pub const ROUTER_PEERING_V4: &str = "100.64.0.1";
/// The upstream's (BIRD's) address.
pub const UPSTREAM_PEERING_V4: &str = "100.64.0.2";

/// An upstream router for the router lab ([`super::RouterLab`]): one more
/// namespace, linked to the router's namespace by a veth of its own
/// (`100.64.0.0/30`), where BIRD runs and peers with the detector's gobgpd
/// running in the router. It routes the customers' network to the router,
/// as a provider routes a customer's prefix. Torn down on drop (its end of
/// the veth in the router's namespace goes with it); no default route.
pub struct RouterUpstream {
    pub ns: String,
    /// Its end of the link, in `ns`.
    pub upstream_if: String,
    /// The router's end of the link, in the router's namespace.
    pub router_if: String,
    pub dir: PathBuf,
}

impl RouterUpstream {
    pub fn attach(router_ns: &str) -> Result<RouterUpstream, LabError> {
        let names = LabNames::next();
        let up = RouterUpstream {
            ns: names.ns("upstream"),
            upstream_if: names.iface('u'),
            router_if: names.iface('p'),
            dir: names.dir(),
        };
        make_dir(&up.dir)?;
        ip(&["netns", "add", &up.ns])?;
        ip(&["-n", &up.ns, "link", "set", "lo", "up"])?;
        veth(router_ns, &up.router_if, &up.ns, &up.upstream_if)?;
        for (ns, ifname, v4) in
            [(router_ns, &up.router_if, ROUTER_PEERING_V4), (up.ns.as_str(), &up.upstream_if, UPSTREAM_PEERING_V4)]
        {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/30"), "dev", ifname])?;
            ip(&["-n", ns, "link", "set", ifname, "up"])?;
        }
        ip(&["-n", &up.ns, "route", "add", CUSTOMERS_NET_V4, "via", ROUTER_PEERING_V4])?;
        Ok(up)
    }

    /// Starts BIRD in the upstream's namespace, configured as a provider
    /// ([`super::bird::provider_config`], AS 65000) peered with the
    /// router's speaker (AS [`SPEAKER_AS`] at [`ROUTER_PEERING_V4`]).
    pub fn start_bird(&self) -> Result<super::bird::Bird, super::bird::BirdError> {
        let upstream = super::bird::Upstream {
            router_id: UPSTREAM_PEERING_V4,
            local_address: UPSTREAM_PEERING_V4,
            local_as: UPSTREAM_AS,
            neighbor: ROUTER_PEERING_V4,
            neighbor_as: SPEAKER_AS,
        };
        super::bird::Bird::start(&self.ns, &self.dir, &super::bird::provider_config(&upstream))
    }

    /// The upstream kernel's routes to `dst`.
    pub fn routes(&self, dst: &str) -> Result<String, LabError> {
        let out = ip(&["-n", &self.ns, "route", "show", dst])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for RouterUpstream {
    fn drop(&mut self) {
        teardown(&[&self.ns], &self.dir);
    }
}

/// The attackers' side of a [`Transit`]: their address, behind the
/// upstream.
pub const ATTACK_V4: &str = "100.64.2.2";
pub const ATTACK_V6: &str = "2001:db8:64::2";
/// The upstream's address towards the attackers.
pub const TRANSIT_V4: &str = "100.64.2.1";
pub const TRANSIT_V6: &str = "2001:db8:64::1";

/// The router lab's inet namespace made the router's transit provider:
/// it forwards (IPv4 and IPv6), runs the upstream's BIRD (peered with the
/// detector's gobgpd over the outside link), and has the attackers behind
/// it, in a namespace of their own. A flood from there crosses the
/// upstream before it reaches the router, so a blackhole the upstream
/// installs drops it there: it is counted arriving on [`Self::transit_if`]
/// and not leaving on the router lab's `inet_if`.
///
/// ```text
///  netns <name>-attack         netns <lab>-inet (the upstream)      netns <lab>-router ...
///  <attack_if> ============== <transit_if>     <inet_if> ========= <outside_if>
///  100.64.2.2/30              100.64.2.1/30    203.0.113.1/24       203.0.113.254/24
///  2001:db8:64::2/64          2001:db8:64::1/64
/// ```
///
/// The attackers route the customers' networks via the upstream and have
/// no other route; the customers have none back to them (what a flood
/// provokes dies there). Torn down on drop (the upstream's end of the link
/// goes with the attackers' namespace).
pub struct Transit {
    /// The attackers' namespace.
    pub ns: String,
    /// The attackers' end of the link, in `ns`.
    pub attack_if: String,
    /// The upstream's end, in the router lab's `inet_ns`.
    pub transit_if: String,
    /// A scratch directory (BIRD's configuration, socket), removed on drop.
    pub dir: PathBuf,
}

impl Transit {
    pub fn attach(lab: &super::RouterLab) -> Result<Transit, LabError> {
        let names = LabNames::next();
        let t = Transit {
            ns: names.ns("attack"),
            attack_if: names.iface('a'),
            transit_if: names.iface('t'),
            dir: names.dir(),
        };
        // From here on, drop cleans up whatever was made.
        t.build(lab)?;
        Ok(t)
    }

    fn build(&self, lab: &super::RouterLab) -> Result<(), LabError> {
        use super::router::{add_namespace, wait_links_ready, CUSTOMERS_NET_V4, CUSTOMERS_NET_V6};
        make_dir(&self.dir)?;
        add_namespace(&self.ns)?;
        sysctl(&lab.inet_ns, "net/ipv4/ip_forward", "1")?;
        sysctl(&lab.inet_ns, "net/ipv6/conf/all/forwarding", "1")?;
        veth(&self.ns, &self.attack_if, &lab.inet_ns, &self.transit_if)?;
        for (ns, ifname, v4, v6) in [
            (self.ns.as_str(), &self.attack_if, ATTACK_V4, ATTACK_V6),
            (lab.inet_ns.as_str(), &self.transit_if, TRANSIT_V4, TRANSIT_V6),
        ] {
            add_addr(ns, ifname, &format!("{v4}/30"))?;
            add_addr(ns, ifname, &format!("{v6}/64"))?;
            ip(&["-n", ns, "link", "set", ifname, "up"])?;
        }
        ip(&["-n", &self.ns, "route", "add", CUSTOMERS_NET_V4, "via", TRANSIT_V4])?;
        ip(&["-n", &self.ns, "-6", "route", "add", CUSTOMERS_NET_V6, "via", TRANSIT_V6])?;
        wait_links_ready(&[(&self.ns, &self.attack_if), (&lab.inet_ns, &self.transit_if)])
    }

    /// The MAC address of the upstream's end of the link: where frames
    /// built by the attackers (`detector flood --dst-mac`) must go.
    pub fn transit_mac(&self, lab: &super::RouterLab) -> Result<[u8; 6], LabError> {
        let _in = lab.enter_inet()?;
        crate::iface::mac(&self.transit_if)
            .map_err(|e| LabError::Ip { args: "SIOCGIFHWADDR".into(), stderr: e.to_string() })
    }

    /// Every default route in the attackers' namespace: none.
    pub fn default_routes(&self) -> Result<Vec<String>, LabError> {
        let mut found = Vec::new();
        for family in ["-4", "-6"] {
            let out = ip(&["-n", &self.ns, family, "route", "show", "default"])?;
            let text = String::from_utf8_lossy(&out.stdout);
            found.extend(text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string));
        }
        Ok(found)
    }
}

impl Drop for Transit {
    fn drop(&mut self) {
        teardown(&[&self.ns], &self.dir);
    }
}
