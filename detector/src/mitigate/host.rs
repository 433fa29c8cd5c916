//! The host's own addresses and default gateways, which the allowlist
//! always holds: a rule must never cut the host off from itself or from
//! its way out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::prefix::{self, Prefix};

/// Everything the host calls its own, with why: loopback, the address of
/// every interface of this network namespace, and the default gateways.
pub fn own_prefixes() -> Vec<(Prefix, String)> {
    let mut out: Vec<(Prefix, String)> = prefix::loopback().into_iter().map(|p| (p, "loopback".to_string())).collect();
    for (ifname, ip) in addresses() {
        out.push((Prefix::host(ip), format!("address of {ifname}")));
    }
    for gw in gateways() {
        out.push((Prefix::host(gw), "default gateway".to_string()));
    }
    out
}

/// Every address configured on any interface of this network namespace.
pub fn addresses() -> Vec<(String, IpAddr)> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        tracing::warn!("getifaddrs failed: {}", std::io::Error::last_os_error());
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy().into_owned();
        let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
        let ip = match family {
            libc::AF_INET => {
                let sa = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)))
            }
            libc::AF_INET6 => {
                let sa = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                IpAddr::V6(Ipv6Addr::from(sa.sin6_addr.s6_addr))
            }
            _ => continue,
        };
        out.push((name, ip));
    }
    unsafe { libc::freeifaddrs(head) };
    out
}

/// Default gateways from the kernel's routing tables.
pub fn gateways() -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/proc/net/route") {
        out.extend(parse_route_v4(&t).into_iter().map(IpAddr::V4));
    }
    if let Ok(t) = std::fs::read_to_string("/proc/net/ipv6_route") {
        out.extend(parse_route_v6(&t).into_iter().map(IpAddr::V6));
    }
    out
}

/// Gateways of the default routes in `/proc/net/route` (hex, host order).
pub fn parse_route_v4(table: &str) -> Vec<Ipv4Addr> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dest, gw, mask) = (f.get(1)?, f.get(2)?, f.get(7)?);
            if *dest != "00000000" || *mask != "00000000" {
                return None;
            }
            let gw = u32::from_str_radix(gw, 16).ok()?;
            // Printed as the in-memory (network order) word read on a little-endian host.
            (gw != 0).then(|| Ipv4Addr::from(gw.to_le_bytes()))
        })
        .collect()
}

/// Gateways of the default routes in `/proc/net/ipv6_route`.
pub fn parse_route_v6(table: &str) -> Vec<Ipv6Addr> {
    table
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dest, len, gw) = (f.first()?, f.get(1)?, f.get(4)?);
            if dest.chars().any(|c| c != '0') || *len != "00" {
                return None;
            }
            let gw = u128::from_str_radix(gw, 16).ok()?;
            (gw != 0).then(|| Ipv6Addr::from(gw))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_gateways_from_proc() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  eth0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(parse_route_v4(v4), vec![Ipv4Addr::new(192, 168, 2, 1)]);
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n\
                  20010db8000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n";
        assert_eq!(parse_route_v6(v6), vec!["fe80::1".parse::<Ipv6Addr>().unwrap()]);
    }

    #[test]
    fn finds_loopback() {
        assert!(addresses().iter().any(|(_, ip)| ip.is_loopback()));
    }
}

/// The TCP ports something listens on in this network namespace (IPv4
/// and IPv6), from `/proc/net/tcp` and `/proc/net/tcp6`.
pub fn listening_tcp_ports() -> Vec<u16> {
    let mut ports = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(file) {
            ports.extend(parse_listeners(&text));
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The local ports of the sockets in state LISTEN (0A) in the text of
/// `/proc/net/tcp` or `/proc/net/tcp6`.
fn parse_listeners(text: &str) -> Vec<u16> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let local = f.nth(1)?;
            let state = f.nth(1)?;
            if state != "0A" {
                return None;
            }
            u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod listener_tests {
    use super::*;

    #[test]
    fn reads_listeners_only() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue\n\
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1\n\
   1: 0100007F:0035 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2\n\
   2: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 0 0 0 0 0 3\n";
        assert_eq!(parse_listeners(text), vec![8080, 80]);
    }
}
