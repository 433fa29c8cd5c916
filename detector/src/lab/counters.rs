//! The kernel's own network counters in a lab namespace: `/proc/net/snmp`
//! (`Ip`, `Icmp`, `Tcp`, `Udp`, ...) and `/proc/net/netstat` (`TcpExt`,
//! `IpExt`, ...), read from a thread inside the namespace. What reached the
//! target's stack, counted on the far side of XDP, not by the detector.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use detector::lab::{counters::NetCounters, Lab};
//! let lab = Lab::new()?;
//! let before = NetCounters::read(&lab.tgt_ns)?;
//! // ... traffic ...
//! let delta = NetCounters::read(&lab.tgt_ns)?.since(&before);
//! println!("{} UDP datagrams reached the stack", delta.udp_received());
//! println!("{:?} passive TCP opens", delta.get("Tcp", "PassiveOpens"));
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;

use crate::netns::NetnsGuard;

/// Counters by group and name (`Udp`, `InDatagrams`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    values: BTreeMap<(String, String), i64>,
}

impl NetCounters {
    /// `/proc/net/snmp` and `/proc/net/netstat` of namespace `ns`.
    pub fn read(ns: &str) -> std::io::Result<NetCounters> {
        let ns = ns.to_string();
        std::thread::spawn(move || {
            let _in = NetnsGuard::enter(&ns)?;
            // thread-self: /proc/self/net shows the namespace of the main
            // thread, not of this one.
            let mut text = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
            text.push_str(&std::fs::read_to_string("/proc/thread-self/net/netstat")?);
            Ok(NetCounters::parse(&text))
        })
        .join()
        .map_err(|_| std::io::Error::other("the counters thread panicked"))?
    }

    /// The files' format: for each group a line of names then a line of
    /// values, both led by `Group:`. Lines that do not pair up are skipped.
    pub fn parse(text: &str) -> NetCounters {
        let mut values = BTreeMap::new();
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.windows(2) {
            let (Some((group, names)), Some((group2, vals))) = (pair[0].split_once(':'), pair[1].split_once(':'))
            else {
                continue;
            };
            // A names line: its first field is not a number.
            if group != group2 || names.split_whitespace().next().is_none_or(|n| n.parse::<i64>().is_ok()) {
                continue;
            }
            for (name, v) in names.split_whitespace().zip(vals.split_whitespace()) {
                // Every counter fits in i64 but a few (octets) are u64 in the kernel.
                let Some(v) = v.parse::<i64>().ok().or_else(|| v.parse::<u64>().ok().map(|u| u as i64)) else {
                    continue;
                };
                values.insert((group.to_string(), name.to_string()), v);
            }
        }
        NetCounters { values }
    }

    /// One counter, `None` if this kernel has no such counter.
    pub fn get(&self, group: &str, name: &str) -> Option<i64> {
        self.values.get(&(group.to_string(), name.to_string())).copied()
    }

    /// What each counter grew by since `earlier` (gauges such as
    /// `Tcp CurrEstab` give their change, which may be negative).
    pub fn since(&self, earlier: &NetCounters) -> NetCounters {
        let values = self
            .values
            .iter()
            .map(|(k, v)| (k.clone(), v.wrapping_sub(earlier.values.get(k).copied().unwrap_or(0))))
            .collect();
        NetCounters { values }
    }

    /// UDP datagrams that reached the UDP layer: delivered to a socket
    /// (`InDatagrams`), to no socket (`NoPorts`), or dropped there, a full
    /// receive buffer or a bad checksum (`InErrors`).
    pub fn udp_received(&self) -> i64 {
        ["InDatagrams", "NoPorts", "InErrors"].iter().map(|n| self.get("Udp", n).unwrap_or(0)).sum()
    }

    /// Every counter: ((group, name), value).
    pub fn iter(&self) -> impl Iterator<Item = (&(String, String), &i64)> {
        self.values.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_header_and_value_pairs() {
        let text = "Ip: Forwarding DefaultTTL InReceives\nIp: 2 64 1234\n\
                    Tcp: RtoAlgorithm MaxConn CurrEstab\nTcp: 1 -1 3\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams\nUdp: 10 20 3 7\n\
                    IpExt: InNoRoutes InOctets\nIpExt: 0 18446744073709551615\n";
        let c = NetCounters::parse(text);
        assert_eq!(c.get("Ip", "InReceives"), Some(1234));
        assert_eq!(c.get("Tcp", "MaxConn"), Some(-1));
        assert_eq!(c.get("Udp", "OutDatagrams"), Some(7));
        assert_eq!(c.get("IpExt", "InOctets"), Some(-1), "a u64 wraps into i64, and deltas still subtract");
        assert_eq!(c.get("Udp", "Nope"), None);
        assert_eq!(c.udp_received(), 33);
        let later = NetCounters::parse(&text.replace("Udp: 10 20 3 7", "Udp: 15 20 4 9"));
        let d = later.since(&c);
        assert_eq!(d.udp_received(), 6);
        assert_eq!(d.get("Ip", "InReceives"), Some(0));
    }
}
