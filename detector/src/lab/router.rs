//! A router lab for network mode: the detector on a router's outside
//! interface, watching the traffic for a customers' network behind it.
//! Three namespaces, two veth pairs, named, swept and torn down as a
//! [`Lab`](super::Lab) is (a test that fails midway unwinds through drop).
//!
//! ```text
//!  netns <name>-inet          netns <name>-router                  netns <name>-customers
//!  the generators             IPv4 and IPv6 forwarding             the servers
//!
//!  <inet_if> ============ <outside_if>   <inside_if> ============ <customers_if>
//!  203.0.113.1/24         203.0.113.254/24  192.0.2.1/24          192.0.2.2/24
//!  2001:db8:113::1/64     2001:db8:113::fe  2001:db8:2::1/64      2001:db8:2::2/64
//!                         (attach the                             + 198.51.100.10-12/32
//!                          detector here)                         + 2001:db8:100::10-12/128
//!                                                                 local 198.51.100.0/24, 2001:db8:100::/64 on lo
//! ```
//!
//! - **inet** routes the customers' prefixes ([`CUSTOMERS_NET_V4`],
//!   [`CUSTOMERS_NET_V6`]) via the router's outside address.
//! - **router** forwards (IPv4 and IPv6); it routes the customers'
//!   prefixes via the customers' link address, and reaches inet's prefix
//!   on its outside link.
//! - **customers** route inet's prefix ([`INET_NET_V4`], [`INET_NET_V6`])
//!   via the router's inside address, from the first server's address
//!   (an unbound socket's source is a customer address, not the link's).
//!   The whole customers' prefix is local ([`CUSTOMERS_NET_V4`] and
//!   [`CUSTOMERS_NET_V6`] as `local` routes on `lo`): a flood spread over
//!   it (carpet bombing) is delivered to every address, and counted there
//!   (by a [`UdpSink`] on a wildcard address, or the kernel's counters).
//!   The three servers ([`SERVERS_V4`], [`SERVERS_V6`]) are configured on
//!   the customers' link too, as a host's own addresses.
//!
//! No namespace has a default route. The customers answer spoofed sources
//! (echoes, port unreachables) and, with no route to them, those answers
//! die in the customers' namespace: nothing a flood provokes leaves the
//! lab. Reverse-path filtering is off in every namespace (`all`,
//! `default`, and so every interface): the router forwards random sources
//! it has no route back to, and the customers accept them, as on hosts
//! with default routes. Sources the kernel calls martians (0/8, 127/8,
//! multicast, limited broadcast) are dropped by the router whatever the
//! setting: about 13% of `hping3 --rand-source`.
//!
//! IPv6 is on everywhere, with duplicate address detection, router
//! solicitations and router advertisements off (every address is usable at
//! once, no kernel adds routes or solicits its own): the only IPv6 the
//! kernels send by themselves are neighbor discovery and MLD reports.
//! [`RouterLab::new`] returns once every link is up and every IPv6 address
//! usable (a veth's carrier reaches IPv6 up to a second late, and until
//! then the router would not answer neighbor solicitations).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use super::{
    add_addr,
    counters::NetCounters,
    ip, make_dir, sysctl, teardown,
    udp::{Reply, UdpServer, UdpSink},
    veth, Lab, LabError, LabNames,
};
use crate::netns::NetnsGuard;

/// inet's side of the outside link.
pub const INET_NET_V4: &str = "203.0.113.0/24";
pub const INET_NET_V6: &str = "2001:db8:113::/64";
/// inet's address: the generators' real source.
pub const INET_V4: &str = "203.0.113.1";
pub const INET_V6: &str = "2001:db8:113::1";
/// The router's outside address (the customers' gateway, seen from inet).
pub const OUTSIDE_V4: &str = "203.0.113.254";
pub const OUTSIDE_V6: &str = "2001:db8:113::fe";
/// The inside link, between the router and the customers.
pub const INSIDE_NET_V4: &str = "192.0.2.0/24";
pub const INSIDE_NET_V6: &str = "2001:db8:2::/64";
/// The router's inside address (inet's gateway, seen from the customers).
pub const INSIDE_V4: &str = "192.0.2.1";
pub const INSIDE_V6: &str = "2001:db8:2::1";
/// The customers' address on the inside link (the router's next hop to
/// the customers' prefixes).
pub const CUSTOMERS_LINK_V4: &str = "192.0.2.2";
pub const CUSTOMERS_LINK_V6: &str = "2001:db8:2::2";
/// The customers' network, all of it local in the customers' namespace.
pub const CUSTOMERS_NET_V4: &str = "198.51.100.0/24";
pub const CUSTOMERS_NET_V6: &str = "2001:db8:100::/64";
/// The servers: addresses configured in the customers' namespace. The
/// first is the customers' source towards inet.
pub const SERVERS_V4: [&str; 3] = ["198.51.100.10", "198.51.100.11", "198.51.100.12"];
pub const SERVERS_V6: [&str; 3] = ["2001:db8:100::10", "2001:db8:100::11", "2001:db8:100::12"];

/// How long [`RouterLab::new`] waits for its links to come up.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Three namespaces (inet, router, customers) and the two veth pairs
/// between them. See the [module](self) for the addressing.
pub struct RouterLab {
    /// The generators' namespace (hping3, `detector flood`, clients).
    pub inet_ns: String,
    /// The router's namespace: forwarding on, the detector runs here.
    pub router_ns: String,
    /// The servers' namespace.
    pub customers_ns: String,
    /// inet's end of the outside link, in `inet_ns`.
    pub inet_if: String,
    /// The router's outside interface, facing inet, in `router_ns`: attach
    /// the detector here.
    pub outside_if: String,
    /// The router's inside interface, facing the customers, in `router_ns`.
    pub inside_if: String,
    /// The customers' end of the inside link, in `customers_ns`.
    pub customers_if: String,
    /// A scratch directory for the lab's files, removed with the lab.
    pub dir: PathBuf,
}

impl RouterLab {
    /// Creates the namespaces, links, addresses and routes, all up.
    pub fn new() -> Result<RouterLab, LabError> {
        let names = LabNames::next();
        let lab = RouterLab {
            inet_ns: names.ns("inet"),
            router_ns: names.ns("router"),
            customers_ns: names.ns("customers"),
            inet_if: names.iface('i'),
            outside_if: names.iface('o'),
            inside_if: names.iface('n'),
            customers_if: names.iface('c'),
            dir: names.dir(),
        };
        // From here on, drop cleans up whatever was made.
        lab.build()?;
        Ok(lab)
    }

    fn namespaces(&self) -> [&str; 3] {
        [&self.inet_ns, &self.router_ns, &self.customers_ns]
    }

    fn build(&self) -> Result<(), LabError> {
        make_dir(&self.dir)?;
        for ns in self.namespaces() {
            add_namespace(ns)?;
        }
        sysctl(&self.router_ns, "net/ipv4/ip_forward", "1")?;
        sysctl(&self.router_ns, "net/ipv6/conf/all/forwarding", "1")?;
        veth(&self.inet_ns, &self.inet_if, &self.router_ns, &self.outside_if)?;
        veth(&self.router_ns, &self.inside_if, &self.customers_ns, &self.customers_if)?;

        let links = [
            (&self.inet_ns, &self.inet_if, INET_V4, INET_V6),
            (&self.router_ns, &self.outside_if, OUTSIDE_V4, OUTSIDE_V6),
            (&self.router_ns, &self.inside_if, INSIDE_V4, INSIDE_V6),
            (&self.customers_ns, &self.customers_if, CUSTOMERS_LINK_V4, CUSTOMERS_LINK_V6),
        ];
        for (ns, ifname, v4, v6) in links {
            add_addr(ns, ifname, &format!("{v4}/24"))?;
            add_addr(ns, ifname, &format!("{v6}/64"))?;
        }
        for server in SERVERS_V4 {
            add_addr(&self.customers_ns, &self.customers_if, &format!("{server}/32"))?;
        }
        for server in SERVERS_V6 {
            add_addr(&self.customers_ns, &self.customers_if, &format!("{server}/128"))?;
        }
        for (ns, ifname) in self.links() {
            ip(&["-n", ns, "link", "set", ifname, "up"])?;
        }

        let c = self.customers_ns.as_str();
        ip(&["-n", c, "route", "add", "local", CUSTOMERS_NET_V4, "dev", "lo"])?;
        ip(&["-n", c, "-6", "route", "add", "local", CUSTOMERS_NET_V6, "dev", "lo"])?;
        ip(&["-n", c, "route", "add", INET_NET_V4, "via", INSIDE_V4, "src", SERVERS_V4[0]])?;
        ip(&["-n", c, "-6", "route", "add", INET_NET_V6, "via", INSIDE_V6, "src", SERVERS_V6[0]])?;
        let r = self.router_ns.as_str();
        ip(&["-n", r, "route", "add", CUSTOMERS_NET_V4, "via", CUSTOMERS_LINK_V4])?;
        ip(&["-n", r, "-6", "route", "add", CUSTOMERS_NET_V6, "via", CUSTOMERS_LINK_V6])?;
        let i = self.inet_ns.as_str();
        ip(&["-n", i, "route", "add", CUSTOMERS_NET_V4, "via", OUTSIDE_V4])?;
        ip(&["-n", i, "-6", "route", "add", CUSTOMERS_NET_V6, "via", OUTSIDE_V6])?;
        self.wait_ready()
    }

    fn links(&self) -> [(&str, &str); 4] {
        [
            (&self.inet_ns, &self.inet_if),
            (&self.router_ns, &self.outside_if),
            (&self.router_ns, &self.inside_if),
            (&self.customers_ns, &self.customers_if),
        ]
    }

    /// Waits until every link is up and no IPv6 address is tentative
    /// ([`wait_links_ready`]).
    fn wait_ready(&self) -> Result<(), LabError> {
        wait_links_ready(&self.links())
    }

    /// Moves the calling thread into inet's namespace until the guard drops.
    pub fn enter_inet(&self) -> Result<NetnsGuard, LabError> {
        enter(&self.inet_ns)
    }

    /// Moves the calling thread into the router's namespace until the guard
    /// drops.
    pub fn enter_router(&self) -> Result<NetnsGuard, LabError> {
        enter(&self.router_ns)
    }

    /// Moves the calling thread into the customers' namespace until the
    /// guard drops.
    pub fn enter_customers(&self) -> Result<NetnsGuard, LabError> {
        enter(&self.customers_ns)
    }

    /// A command that runs `program` inside namespace `ns` (one of the
    /// lab's): see [`Lab::command_in`].
    pub fn command_in(ns: &str, program: &Path) -> Command {
        Lab::command_in(ns, program)
    }

    /// Adds `cidr` to `ifname` in namespace `ns` (IPv6 without DAD): a
    /// second client in inet, say.
    pub fn add_addr(&self, ns: &str, ifname: &str, cidr: &str) -> Result<(), LabError> {
        add_addr(ns, ifname, cidr)
    }

    /// The servers' IPv4 addresses.
    /// The MAC address of the router's outside interface: where frames
    /// built in inet (`detector flood --dst-mac`) must go.
    pub fn outside_mac(&self) -> Result<[u8; 6], LabError> {
        let _in = self.enter_router()?;
        crate::iface::mac(&self.outside_if)
            .map_err(|e| LabError::Ip { args: "SIOCGIFHWADDR".into(), stderr: e.to_string() })
    }

    pub fn servers_v4() -> [IpAddr; 3] {
        SERVERS_V4.map(|a| IpAddr::V4(a.parse::<Ipv4Addr>().expect("an IPv4 address")))
    }

    /// The servers' IPv6 addresses.
    pub fn servers_v6() -> [IpAddr; 3] {
        SERVERS_V6.map(|a| IpAddr::V6(a.parse::<Ipv6Addr>().expect("an IPv6 address")))
    }

    /// A [`UdpServer`] on `port` of each address in `addrs` (the servers,
    /// say), in the customers' namespace: each counts what it received.
    pub fn udp_servers(&self, addrs: &[IpAddr], port: u16, reply: Reply) -> std::io::Result<Vec<UdpServer>> {
        addrs.iter().map(|a| UdpServer::start(&self.customers_ns, SocketAddr::new(*a, port), reply)).collect()
    }

    /// A [`UdpSink`] on `port` of every address of the customers' (the
    /// wildcard `0.0.0.0`, or `[::]` with `v6`): datagrams per destination,
    /// for a flood spread over the customers' network.
    pub fn customers_sink(&self, port: u16, v6: bool) -> std::io::Result<UdpSink> {
        let any = if v6 { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
        UdpSink::start(&self.customers_ns, SocketAddr::new(any, port))
    }

    /// The customers' kernel counters (`/proc/net/snmp`, `netstat`): what
    /// reached their stack.
    pub fn customers_counters(&self) -> std::io::Result<NetCounters> {
        NetCounters::read(&self.customers_ns)
    }

    /// The router's kernel counters (`Ip ForwDatagrams`, `IpExt`, ...).
    pub fn router_counters(&self) -> std::io::Result<NetCounters> {
        NetCounters::read(&self.router_ns)
    }

    /// Every default route in the lab, IPv4 and IPv6, as `<ns>: <route>`:
    /// none, unless a test added one.
    pub fn default_routes(&self) -> Result<Vec<String>, LabError> {
        let mut found = Vec::new();
        for ns in self.namespaces() {
            for family in ["-4", "-6"] {
                let out = ip(&["-n", ns, family, "route", "show", "default"])?;
                let text = String::from_utf8_lossy(&out.stdout);
                found.extend(text.lines().filter(|l| !l.trim().is_empty()).map(|l| format!("{ns}: {l}")));
            }
        }
        Ok(found)
    }
}

impl Drop for RouterLab {
    fn drop(&mut self) {
        teardown(&self.namespaces(), &self.dir);
    }
}

/// Adds namespace `ns` set as every router-lab namespace is (see the
/// [module](self)): reverse-path filtering off, IPv6 addresses usable at
/// once and no router advertisements or solicitations, `lo` up. Before its
/// links exist: they take their settings from `default`.
pub(super) fn add_namespace(ns: &str) -> Result<(), LabError> {
    ip(&["netns", "add", ns])?;
    for (key, value) in [
        // A namespace may inherit rp_filter from the host; the
        // effective value is the larger of `all` and the interface's.
        ("net/ipv4/conf/all/rp_filter", "0"),
        ("net/ipv4/conf/default/rp_filter", "0"),
        ("net/ipv6/conf/default/accept_dad", "0"),
        ("net/ipv6/conf/default/accept_ra", "0"),
        ("net/ipv6/conf/default/router_solicitations", "0"),
    ] {
        sysctl(ns, key, value)?;
    }
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    Ok(())
}

/// Waits until every link in `links` (namespace, interface) is up and
/// none has a tentative IPv6 address.
///
/// A veth's carrier reaches IPv6 through the kernel's link watch, up to
/// a second after `ip link set up`; until then its addresses stay
/// tentative (`nodad` or not), and the kernel takes a neighbor
/// solicitation for one as duplicate address detection: it does not
/// answer. The first IPv6 datagram of a test would wait a second for
/// the next solicitation. (IPv4 has no such state.)
pub(super) fn wait_links_ready(links: &[(&str, &str)]) -> Result<(), LabError> {
    let started = Instant::now();
    loop {
        let mut pending = Vec::new();
        for &(ns, ifname) in links {
            let link = ip(&["-n", ns, "-o", "link", "show", "dev", ifname])?;
            if !String::from_utf8_lossy(&link.stdout).contains("state UP") {
                pending.push(format!("{ifname} is not up"));
            }
            let tentative = ip(&["-n", ns, "-o", "-6", "addr", "show", "dev", ifname, "tentative"])?;
            if !tentative.stdout.is_empty() {
                pending.push(format!("{ifname} has tentative addresses"));
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if started.elapsed() > READY_TIMEOUT {
            return Err(LabError::NotReady { after: READY_TIMEOUT, pending: pending.join(", ") });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn enter(ns: &str) -> Result<NetnsGuard, LabError> {
    NetnsGuard::enter(ns).map_err(|source| LabError::Enter { ns: ns.to_string(), source })
}
