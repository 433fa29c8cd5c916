//! Announcements as GoBGP's API paths, and back. Pure.
//!
//! A path is an NLRI and attributes, each a `google.protobuf.Any` of one of
//! GoBGP's messages (`apipb.IPAddressPrefix`, `apipb.FlowSpecNLRI`, ...):
//! - a blackhole: the prefix (IPv4 or IPv6 unicast), origin IGP, next hop
//!   "self" (`0.0.0.0` / `::`, which gobgpd replaces with the session's
//!   own address), its standard and large communities;
//! - a FlowSpec rule (IPv4 or IPv6 FlowSpec): destination and source
//!   prefixes and the component list of RFC 8955 (protocol, ports, packet
//!   length, TCP flags, fragment), and the traffic-rate extended community
//!   (rate 0: discard).
//!
//! [`from_path`] reads back only what [`to_path`] writes: the paths the
//! detector added. Numeric components are written as RFC 8955 operator
//! lists (`=v`, or `>=lo && <=hi`, ORed); they are read back to the same
//! spans, so a listed path compares equal to the announcement it came from.

use prost::Name;
use prost_types::Any;

use super::api::{
    family::{Afi, Safi},
    CommunitiesAttribute, ExtendedCommunitiesAttribute, Family, FlowSpecComponent, FlowSpecComponentItem,
    FlowSpecIpPrefix, FlowSpecNlri, IpAddressPrefix, LargeCommunitiesAttribute, LargeCommunity, MpReachNlriAttribute,
    NextHopAttribute, OriginAttribute, Path, TrafficRateExtended,
};
use crate::{
    bgp::announce::{Announcement, Community, FlowAction, FlowSpecRule, TcpFlags},
    mitigate::prefix::Prefix,
    span::Span,
};

/// FlowSpec component types (RFC 8955 section 4.2.2).
const FS_DST: u32 = 1;
const FS_SRC: u32 = 2;
const FS_PROTO: u32 = 3;
const FS_DST_PORT: u32 = 5;
const FS_SRC_PORT: u32 = 6;
const FS_TCP_FLAGS: u32 = 9;
const FS_LENGTH: u32 = 10;
const FS_FRAGMENT: u32 = 12;

/// Numeric operator bits (RFC 8955 section 4.2.1.1).
const OP_AND: u32 = 0x40;
const OP_LT: u32 = 0x04;
const OP_GT: u32 = 0x02;
const OP_EQ: u32 = 0x01;
/// Bitmask operator bits (section 4.2.1.2).
const BM_NOT: u32 = 0x02;
const BM_MATCH: u32 = 0x01;
/// The end-of-list and length bits, which gobgpd sets itself.
const OP_ENCODING: u32 = 0x80 | 0x30;
/// Fragment bits: is a fragment other than the first, first fragment.
const FRAG_ISF: u64 = 0x02;
const FRAG_FF: u64 = 0x04;

/// The address families of paths, as the API names them.
pub fn family(ipv4: bool, flowspec: bool) -> Family {
    Family {
        afi: if ipv4 { Afi::Ip } else { Afi::Ip6 } as i32,
        safi: if flowspec { Safi::FlowSpecUnicast } else { Safi::Unicast } as i32,
    }
}

/// The four families the detector announces in.
pub fn families() -> [Family; 4] {
    [family(true, false), family(false, false), family(true, true), family(false, true)]
}

fn any<M: Name>(m: &M) -> Any {
    // Encoding into a Vec cannot fail.
    Any::from_msg(m).unwrap_or_default()
}

fn addr_and_len(p: &Prefix) -> (String, u32) {
    let s = p.to_string();
    let (addr, len) = s.split_once('/').unwrap_or((&s, "0"));
    (addr.to_string(), len.parse().unwrap_or(0))
}

/// The path that announces `a` (or, given to DeletePath, withdraws it).
pub fn to_path(a: &Announcement) -> Path {
    let ipv4 = a.is_ipv4();
    let next_hop = if ipv4 { "0.0.0.0" } else { "::" }.to_string();
    let (fam, nlri, mut pattrs) = match a {
        Announcement::Blackhole { prefix, communities } => {
            let (prefix, prefix_len) = addr_and_len(prefix);
            let nlri = any(&IpAddressPrefix { prefix_len, prefix });
            let mut pattrs = Vec::new();
            let standard: Vec<u32> = communities.iter().filter_map(Community::standard_value).collect();
            if !standard.is_empty() {
                pattrs.push(any(&CommunitiesAttribute { communities: standard }));
            }
            let large: Vec<LargeCommunity> = communities
                .iter()
                .filter_map(|c| match c {
                    Community::Large(g, l1, l2) => {
                        Some(LargeCommunity { global_admin: *g, local_data1: *l1, local_data2: *l2 })
                    }
                    Community::Standard(..) => None,
                })
                .collect();
            if !large.is_empty() {
                pattrs.push(any(&LargeCommunitiesAttribute { communities: large }));
            }
            (family(ipv4, false), nlri, pattrs)
        }
        Announcement::Flowspec(r) => {
            let nlri = any(&FlowSpecNlri { rules: components(r) });
            let rate = match r.action {
                FlowAction::Discard => 0.0,
                FlowAction::RateLimit { bytes_per_second } => bytes_per_second as f32,
            };
            let pattrs = vec![any(&ExtendedCommunitiesAttribute {
                communities: vec![any(&TrafficRateExtended { asn: 0, rate })],
            })];
            (family(ipv4, true), nlri, pattrs)
        }
    };
    pattrs.insert(0, any(&OriginAttribute { origin: 0 }));
    if ipv4 && fam.safi == Safi::Unicast as i32 {
        pattrs.push(any(&NextHopAttribute { next_hop }));
    } else {
        pattrs.push(any(&MpReachNlriAttribute {
            family: Some(fam),
            next_hops: vec![next_hop],
            nlris: vec![nlri.clone()],
        }));
    }
    Path { nlri: Some(nlri), pattrs, family: Some(fam), ..Default::default() }
}

/// A FlowSpec rule's components, in type order (as RFC 8955 requires).
fn components(r: &FlowSpecRule) -> Vec<Any> {
    let mut out = Vec::new();
    let prefix = |kind: u32, p: &Prefix| {
        let (prefix, prefix_len) = addr_and_len(p);
        any(&FlowSpecIpPrefix { r#type: kind, prefix_len, prefix, offset: 0 })
    };
    out.push(prefix(FS_DST, &r.dst));
    if let Some(src) = &r.src {
        out.push(prefix(FS_SRC, src));
    }
    let component = |kind: u32, items: Vec<FlowSpecComponentItem>| any(&FlowSpecComponent { r#type: kind, items });
    if !r.protocols.is_empty() {
        let spans: Vec<Span<u16>> = r.protocols.iter().map(|p| Span::one(*p as u16)).collect();
        out.push(component(FS_PROTO, numeric(&spans)));
    }
    if !r.dst_ports.is_empty() {
        out.push(component(FS_DST_PORT, numeric(&r.dst_ports)));
    }
    if !r.src_ports.is_empty() {
        out.push(component(FS_SRC_PORT, numeric(&r.src_ports)));
    }
    if let Some(f) = r.tcp_flags {
        let mut items = Vec::new();
        if f.set != 0 {
            items.push(FlowSpecComponentItem { op: BM_MATCH, value: f.set as u64 });
        }
        if f.unset != 0 {
            let and = if items.is_empty() { 0 } else { OP_AND };
            items.push(FlowSpecComponentItem { op: and | BM_NOT, value: f.unset as u64 });
        }
        out.push(component(FS_TCP_FLAGS, items));
    }
    if !r.packet_lengths.is_empty() {
        out.push(component(FS_LENGTH, numeric(&r.packet_lengths)));
    }
    if r.fragment {
        out.push(component(FS_FRAGMENT, vec![FlowSpecComponentItem { op: 0, value: FRAG_ISF | FRAG_FF }]));
    }
    out
}

/// Spans as a numeric operator list: `=v` for one value, `>=lo && <=hi`
/// for a span; the spans ORed.
fn numeric(spans: &[Span<u16>]) -> Vec<FlowSpecComponentItem> {
    let mut items = Vec::new();
    for s in spans {
        if s.lo == s.hi {
            items.push(FlowSpecComponentItem { op: OP_EQ, value: s.lo as u64 });
        } else {
            items.push(FlowSpecComponentItem { op: OP_GT | OP_EQ, value: s.lo as u64 });
            items.push(FlowSpecComponentItem { op: OP_AND | OP_LT | OP_EQ, value: s.hi as u64 });
        }
    }
    items
}

/// Reads numeric items back into spans; `None` for an operator list
/// [`numeric`] does not write.
fn spans(items: &[FlowSpecComponentItem]) -> Option<Vec<Span<u16>>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < items.len() {
        let op = items[i].op & !OP_ENCODING;
        let v = u16::try_from(items[i].value).ok()?;
        match op {
            OP_EQ => {
                out.push(Span::one(v));
                i += 1;
            }
            x if x == OP_GT | OP_EQ => {
                let next = items.get(i + 1)?;
                if next.op & !OP_ENCODING != OP_AND | OP_LT | OP_EQ {
                    return None;
                }
                out.push(Span::new(v, u16::try_from(next.value).ok()?).ok()?);
                i += 2;
            }
            _ => return None,
        }
    }
    Some(out)
}

fn prefix_of(addr: &str, len: u32) -> Result<Prefix, String> {
    format!("{addr}/{len}").parse()
}

/// The announcement a path of ours carries; why not, for any other.
pub fn from_path(path: &Path) -> Result<Announcement, String> {
    let nlri = path.nlri.as_ref().ok_or("a path without NLRI")?;
    let mut communities = Vec::new();
    let mut rate: Option<f32> = None;
    for a in &path.pattrs {
        if let Ok(c) = a.to_msg::<CommunitiesAttribute>() {
            communities.extend(c.communities.into_iter().map(Community::from_standard_value));
        } else if let Ok(c) = a.to_msg::<LargeCommunitiesAttribute>() {
            communities.extend(
                c.communities.into_iter().map(|l| Community::Large(l.global_admin, l.local_data1, l.local_data2)),
            );
        } else if let Ok(x) = a.to_msg::<ExtendedCommunitiesAttribute>() {
            for c in &x.communities {
                if let Ok(t) = c.to_msg::<TrafficRateExtended>() {
                    rate = Some(t.rate);
                }
            }
        }
    }
    if let Ok(p) = nlri.to_msg::<IpAddressPrefix>() {
        let prefix = prefix_of(&p.prefix, p.prefix_len)?;
        return Ok(Announcement::blackhole(prefix, communities));
    }
    let flow = nlri.to_msg::<FlowSpecNlri>().map_err(|_| format!("an NLRI of type {}", nlri.type_url))?;
    let rate = rate.ok_or("a FlowSpec path without a traffic-rate action")?;
    let action =
        if rate <= 0.0 { FlowAction::Discard } else { FlowAction::RateLimit { bytes_per_second: rate as u32 } };
    let mut dst = None;
    let mut r = FlowSpecRule {
        dst: Prefix::any(true),
        src: None,
        protocols: Vec::new(),
        dst_ports: Vec::new(),
        src_ports: Vec::new(),
        packet_lengths: Vec::new(),
        tcp_flags: None,
        fragment: false,
        action,
    };
    for c in &flow.rules {
        if let Ok(p) = c.to_msg::<FlowSpecIpPrefix>() {
            let prefix = prefix_of(&p.prefix, p.prefix_len)?;
            match p.r#type {
                FS_DST => dst = Some(prefix),
                FS_SRC => r.src = Some(prefix),
                t => return Err(format!("a FlowSpec prefix component of type {t}")),
            }
            continue;
        }
        let comp =
            c.to_msg::<FlowSpecComponent>().map_err(|_| format!("a FlowSpec component of type {}", c.type_url))?;
        let unreadable = || format!("FlowSpec component {} with operators the detector does not write", comp.r#type);
        match comp.r#type {
            FS_PROTO => {
                let s = spans(&comp.items).ok_or_else(unreadable)?;
                for span in s {
                    for p in span.lo..=span.hi {
                        r.protocols.push(u8::try_from(p).map_err(|_| unreadable())?);
                    }
                }
            }
            FS_DST_PORT => r.dst_ports = spans(&comp.items).ok_or_else(unreadable)?,
            FS_SRC_PORT => r.src_ports = spans(&comp.items).ok_or_else(unreadable)?,
            FS_LENGTH => r.packet_lengths = spans(&comp.items).ok_or_else(unreadable)?,
            FS_TCP_FLAGS => {
                let mut f = TcpFlags::default();
                for item in &comp.items {
                    let v = u8::try_from(item.value).map_err(|_| unreadable())?;
                    match item.op & !OP_ENCODING & !OP_AND {
                        BM_MATCH => f.set |= v,
                        BM_NOT => f.unset |= v,
                        _ => return Err(unreadable()),
                    }
                }
                r.tcp_flags = Some(f);
            }
            FS_FRAGMENT => match comp.items.as_slice() {
                [item] if item.op & !OP_ENCODING == 0 && item.value == FRAG_ISF | FRAG_FF => r.fragment = true,
                _ => return Err(unreadable()),
            },
            t => return Err(format!("a FlowSpec component of type {t}")),
        }
    }
    r.dst = dst.ok_or("a FlowSpec rule without a destination")?;
    Ok(Announcement::Flowspec(r.normalized()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::announce::{TCP_ACK, TCP_SYN};

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn rule(dst: &str) -> FlowSpecRule {
        FlowSpecRule {
            dst: p(dst),
            src: None,
            protocols: vec![],
            dst_ports: vec![],
            src_ports: vec![],
            packet_lengths: vec![],
            tcp_flags: None,
            fragment: false,
            action: FlowAction::Discard,
        }
    }

    #[test]
    fn announcements_round_trip() {
        let all = [
            Announcement::blackhole(p("198.51.100.10/32"), [Community::Standard(65535, 666)]),
            Announcement::blackhole(
                p("2001:db8::10/128"),
                [Community::Standard(65535, 666), Community::Large(64512, 1, 2)],
            ),
            Announcement::Flowspec(FlowSpecRule {
                src: Some(p("203.0.113.0/24")),
                protocols: vec![6],
                dst_ports: vec![Span::one(80), Span { lo: 8000, hi: 8080 }],
                src_ports: vec![Span { lo: 1024, hi: 65535 }],
                packet_lengths: vec![Span { lo: 40, hi: 60 }],
                tcp_flags: Some(TcpFlags { set: TCP_SYN, unset: TCP_ACK }),
                action: FlowAction::RateLimit { bytes_per_second: 125_000 },
                ..rule("198.51.100.10/32")
            }),
            Announcement::Flowspec(FlowSpecRule { protocols: vec![17, 58], ..rule("2001:db8::/64") }),
            Announcement::Flowspec(FlowSpecRule { fragment: true, ..rule("198.51.100.0/24") }),
            Announcement::Flowspec(FlowSpecRule {
                protocols: vec![6],
                tcp_flags: Some(TcpFlags { set: 0, unset: TCP_ACK }),
                ..rule("198.51.100.7/32")
            }),
        ];
        for a in all {
            let a = a.normalized();
            let path = to_path(&a);
            assert_eq!(from_path(&path), Ok(a.clone()), "{a}");
            // As gobgpd hands them back: end-of-list and length bits set.
            let mut listed = path.clone();
            if let Some(nlri) = listed.nlri.as_mut() {
                if let Ok(mut f) = nlri.to_msg::<FlowSpecNlri>() {
                    for c in f.rules.iter_mut() {
                        if let Ok(mut comp) = c.to_msg::<FlowSpecComponent>() {
                            if let Some(last) = comp.items.last_mut() {
                                last.op |= 0x80 | 0x10;
                            }
                            *c = any(&comp);
                        }
                    }
                    *nlri = any(&f);
                }
            }
            assert_eq!(from_path(&listed), Ok(a.clone()), "{a}");
        }
    }

    #[test]
    fn the_path_is_what_gobgpd_needs() {
        let path = to_path(&Announcement::blackhole(p("198.51.100.10/32"), [Community::Standard(65535, 666)]));
        assert_eq!(path.family, Some(family(true, false)));
        let nlri: IpAddressPrefix = path.nlri.as_ref().unwrap().to_msg().unwrap();
        assert_eq!((nlri.prefix.as_str(), nlri.prefix_len), ("198.51.100.10", 32));
        assert_eq!(path.nlri.as_ref().unwrap().type_url, "type.googleapis.com/apipb.IPAddressPrefix");
        let urls: Vec<&str> = path.pattrs.iter().map(|a| a.type_url.rsplit('.').next().unwrap()).collect();
        assert_eq!(urls, vec!["OriginAttribute", "CommunitiesAttribute", "NextHopAttribute"]);
        let c: CommunitiesAttribute = path.pattrs[1].to_msg().unwrap();
        assert_eq!(c.communities, vec![0xFFFF_029A]);

        let path = to_path(&Announcement::Flowspec(FlowSpecRule {
            protocols: vec![17],
            dst_ports: vec![Span::one(53), Span { lo: 1000, hi: 2000 }],
            ..rule("2001:db8::10/128")
        }));
        assert_eq!(path.family, Some(family(false, true)));
        let urls: Vec<&str> = path.pattrs.iter().map(|a| a.type_url.rsplit('.').next().unwrap()).collect();
        assert_eq!(urls, vec!["OriginAttribute", "ExtendedCommunitiesAttribute", "MpReachNLRIAttribute"]);
        let f: FlowSpecNlri = path.nlri.as_ref().unwrap().to_msg().unwrap();
        let ports: FlowSpecComponent = f.rules[2].to_msg().unwrap();
        let items: Vec<(u32, u64)> = ports.items.iter().map(|i| (i.op, i.value)).collect();
        assert_eq!((ports.r#type, items), (5, vec![(0x01, 53), (0x03, 1000), (0x45, 2000)]));
    }

    #[test]
    fn foreign_paths_are_named() {
        let mut path = to_path(&Announcement::Flowspec(rule("198.51.100.10/32")));
        path.pattrs.retain(|a| !a.type_url.ends_with("ExtendedCommunitiesAttribute"));
        assert_eq!(from_path(&path), Err("a FlowSpec path without a traffic-rate action".into()));
        path.nlri = Some(any(&NextHopAttribute { next_hop: "x".into() }));
        assert!(from_path(&path)
            .unwrap_err()
            .starts_with("an NLRI of type type.googleapis.com/apipb.NextHopAttribute"));
        let odd = FlowSpecNlri {
            rules: vec![
                any(&FlowSpecIpPrefix { r#type: 1, prefix_len: 32, prefix: "198.51.100.10".into(), offset: 0 }),
                any(&FlowSpecComponent { r#type: 5, items: vec![FlowSpecComponentItem { op: OP_GT, value: 1024 }] }),
            ],
        };
        let path = Path { nlri: Some(any(&odd)), ..to_path(&Announcement::Flowspec(rule("198.51.100.10/32"))) };
        assert_eq!(from_path(&path), Err("FlowSpec component 5 with operators the detector does not write".into()));
    }
}
