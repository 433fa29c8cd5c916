//! A fleet on one machine: several detector nodes, each a [`Lab`] of its
//! own (a generator and a target namespace, the veth a flood crosses
//! between them), and one monitoring namespace linked to every node's
//! target namespace by a veth of its own, where the fleet's Prometheus and
//! Alertmanager run. Named, swept and torn down as every lab is (a test
//! that fails midway unwinds through drop).
//!
//! ```text
//!                         netns <name>-mon: Prometheus, Alertmanager
//!                         lo 100.64.255.1/32 (SERVICE_V4)
//!    <mon_if> 100.64.0.1/24     <mon_if> 100.64.1.1/24     <mon_if> 100.64.2.1/24
//!          ||                         ||                         ||
//!    <link_if> 100.64.0.2/24    <link_if> 100.64.1.2/24    <link_if> 100.64.2.2/24
//!    node 0: netns <lab>-tgt    node 1: netns <lab>-tgt    node 2: netns <lab>-tgt
//!    <tgt_if> 192.0.2.2/24      (each node a Lab: the detector watches tgt_if)
//!          ||
//!    <gen_if> 192.0.2.1/24
//!    netns <lab>-gen
//! ```
//!
//! - **The monitoring namespace** reaches node `i` at
//!   `100.64.<i>.2` ([`FleetNode::addr`]: where Prometheus scrapes its
//!   `/metrics`), and has [`SERVICE_V4`] on its loopback: one address every
//!   node reaches, as a fleet reaches its Alertmanager by one name.
//! - **Each node** routes [`SERVICE_V4`] (a /32) via its link's other end;
//!   nothing else. Its generator namespace knows only the flooded link,
//!   and the node does not forward (a new namespace's default), so no
//!   flood reaches the monitoring namespace.
//!
//! No namespace has a default route ([`FleetLab::default_routes`]). IPv6 is
//! off on the monitoring links as on the labs' own links.

use std::{net::Ipv4Addr, path::PathBuf};

use super::{disable_ipv6, ip, make_dir, router::wait_links_ready, teardown, veth, Lab, LabError, LabNames};

/// The monitoring namespace's service address (on its loopback): every
/// node routes it via its monitoring link. An Alertmanager listening here
/// is one URL for the whole fleet.
pub const SERVICE_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 255, 1);

/// The most nodes a fleet lab has (its interface names take one character
/// per node).
pub const MAX_NODES: usize = 10;

/// One node: its lab and its link to the monitoring namespace.
pub struct FleetNode {
    /// The node's own lab: `lab.tgt_ns` is the node's namespace, where its
    /// controller runs on `lab.tgt_if`; `lab.gen_ns` floods it.
    pub lab: Lab,
    /// The node's end of its monitoring link, in `lab.tgt_ns`.
    pub link_if: String,
    /// The monitoring namespace's end of it.
    pub mon_if: String,
    /// The node's address on the link (`100.64.<i>.2`): what Prometheus
    /// scrapes.
    pub addr: Ipv4Addr,
    /// The monitoring namespace's address on the link (`100.64.<i>.1`).
    pub mon_addr: Ipv4Addr,
}

impl FleetNode {
    /// `<addr>:<port>`: a scrape target for a controller listening on
    /// `port` of every address (or of [`addr`](Self::addr)).
    pub fn target(&self, port: u16) -> String {
        format!("{}:{port}", self.addr)
    }
}

/// The nodes and the monitoring namespace. See the [module](self).
pub struct FleetLab {
    /// Where the fleet's Prometheus and Alertmanager run.
    pub mon_ns: String,
    pub nodes: Vec<FleetNode>,
    /// A scratch directory for the fleet's own files (the monitoring
    /// configurations, shared runbooks), removed with it; each node's lab
    /// has its own.
    pub dir: PathBuf,
}

impl FleetLab {
    /// `n` nodes (1 to [`MAX_NODES`]), each a [`Lab`], and the monitoring
    /// namespace linked to each; returns once every monitoring link is up.
    pub fn new(n: usize) -> Result<FleetLab, LabError> {
        if n == 0 || n > MAX_NODES {
            return Err(LabError::FleetSize { n, max: MAX_NODES });
        }
        let names = LabNames::next();
        let mut fleet = FleetLab { mon_ns: names.ns("mon"), nodes: Vec::with_capacity(n), dir: names.dir() };
        // From here on, drop cleans up whatever was made: the monitoring
        // namespace (and with it every link's end there) by the fleet, each
        // node's namespaces by its lab.
        fleet.build(&names, n)?;
        Ok(fleet)
    }

    fn build(&mut self, names: &LabNames, n: usize) -> Result<(), LabError> {
        make_dir(&self.dir)?;
        ip(&["netns", "add", &self.mon_ns])?;
        ip(&["-n", &self.mon_ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &self.mon_ns, "addr", "add", &format!("{SERVICE_V4}/32"), "dev", "lo"])?;
        for i in 0..n {
            let lab = Lab::new()?;
            let octet = i as u8;
            let node = FleetNode {
                link_if: names.iface(char::from(b'a' + octet)),
                mon_if: names.iface(char::from(b'0' + octet)),
                addr: Ipv4Addr::new(100, 64, octet, 2),
                mon_addr: Ipv4Addr::new(100, 64, octet, 1),
                lab,
            };
            // Pushed first: a failure below still tears this lab down.
            self.nodes.push(node);
            let node = &self.nodes[i];
            let tgt = node.lab.tgt_ns.as_str();
            veth(&self.mon_ns, &node.mon_if, tgt, &node.link_if)?;
            for (ns, ifname, addr) in
                [(self.mon_ns.as_str(), &node.mon_if, node.mon_addr), (tgt, &node.link_if, node.addr)]
            {
                disable_ipv6(ns, ifname)?;
                ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", ifname])?;
                ip(&["-n", ns, "link", "set", ifname, "up"])?;
            }
            ip(&["-n", tgt, "route", "add", &format!("{SERVICE_V4}/32"), "via", &node.mon_addr.to_string()])?;
        }
        let links: Vec<(&str, &str)> = self
            .nodes
            .iter()
            .flat_map(|n| [(self.mon_ns.as_str(), n.mon_if.as_str()), (n.lab.tgt_ns.as_str(), n.link_if.as_str())])
            .collect();
        wait_links_ready(&links)?;
        tracing::debug!(mon = %self.mon_ns, nodes = n, "fleet lab ready");
        Ok(())
    }

    /// Every default route in the fleet (every node's two namespaces and
    /// the monitoring one), IPv4 and IPv6, as `<ns>: <route>`: none, unless
    /// a test added one.
    pub fn default_routes(&self) -> Result<Vec<String>, LabError> {
        let mut namespaces = vec![self.mon_ns.as_str()];
        for n in &self.nodes {
            namespaces.extend([n.lab.gen_ns.as_str(), n.lab.tgt_ns.as_str()]);
        }
        let mut found = Vec::new();
        for ns in namespaces {
            for family in ["-4", "-6"] {
                let out = ip(&["-n", ns, family, "route", "show", "default"])?;
                let text = String::from_utf8_lossy(&out.stdout);
                found.extend(text.lines().filter(|l| !l.trim().is_empty()).map(|l| format!("{ns}: {l}")));
            }
        }
        Ok(found)
    }
}

impl Drop for FleetLab {
    fn drop(&mut self) {
        // The nodes' labs go after this, with their own drop.
        teardown(&[&self.mon_ns], &self.dir);
    }
}
