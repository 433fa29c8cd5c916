//! Frames for the differential fuzzer: well-formed frames of every class,
//! built with random header stacks, and then mutated.
//!
//! Each "case" is one of:
//! - a built frame, as built or with one to four mutations (lies in length
//!   fields, IHL and data offsets, versions, protocol numbers, extension
//!   header lengths, fragment fields, bit flips, truncation, garbage
//!   appended);
//! - a truncation sweep: one built frame cut at every byte, from empty to
//!   whole (about one case in 400, a quarter of all frames);
//! - a tiny frame of random bytes (0 to 20), most of which the kernel
//!   refuses to run at all (shorter than an Ethernet header).
//!
//! The stream is a pure function of the seed.

use std::collections::VecDeque;

use detector_common::class::AMPLIFICATION_PORTS;

use crate::rng::Rng;

/// No generated frame is longer. `BPF_PROG_TEST_RUN` hands an XDP program at
/// most a page less headroom (256 bytes) and the `skb_shared_info` tail
/// (320 on x86-64), 3,520 bytes, as linear data; the rest of a longer frame
/// goes into fragments the program does not see between `data` and
/// `data_end`, so the program and the reference would not be reading the
/// same bytes. A 1,500-byte MTU never gets near either bound.
pub const MAX_FRAME: usize = 2048;

/// One generated frame and how it was made (for reports).
#[derive(Clone, Debug)]
pub struct Frame {
    pub bytes: Vec<u8>,
    pub what: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// Where a built frame's headers start, for the mutators that lie in one
/// of their fields.
#[derive(Clone, Debug, Default)]
struct Layout {
    /// The innermost EtherType field.
    ethertype_at: usize,
    l3: Option<(Family, usize)>,
    /// IPv6 extension headers.
    ext: Vec<usize>,
    /// The transport protocol number and its header.
    l4: Option<(u8, usize)>,
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const FRAGMENT: u8 = 44;
const AH: u8 = 51;
const TPIDS: [u16; 3] = [0x8100, 0x88a8, 0x9100];

/// The seeded stream of frames.
pub struct Generator {
    rng: Rng,
    queue: VecDeque<Frame>,
}

impl Generator {
    pub fn new(seed: u64) -> Generator {
        Generator { rng: Rng::new(seed), queue: VecDeque::new() }
    }

    fn case(&mut self) {
        let roll = self.rng.below(400);
        if roll == 0 {
            let (bytes, _, what) = self.built();
            for n in 0..=bytes.len() {
                self.queue.push_back(Frame { bytes: bytes[..n].to_vec(), what: format!("{what}; cut at {n}") });
            }
        } else if roll < 9 {
            let n = self.rng.range(0, 20);
            self.queue.push_back(Frame { bytes: self.rng.bytes(n), what: format!("{n} random bytes") });
        } else {
            let (mut bytes, layout, mut what) = self.built();
            let mutations = match self.rng.below(20) {
                0..=7 => 0,
                8..=14 => 1,
                _ => self.rng.range(2, 4),
            };
            for _ in 0..mutations {
                self.mutate(&mut bytes, &layout, &mut what);
            }
            bytes.truncate(MAX_FRAME);
            self.queue.push_back(Frame { bytes, what });
        }
    }

    /// A well-formed frame (as far as its own headers go: a random EtherType
    /// or TPID may still make it something else).
    fn built(&mut self) -> (Vec<u8>, Layout, String) {
        let r = &mut self.rng;
        let mut f = r.bytes(12);
        let mut l = Layout::default();
        let mut what = String::new();
        let tags = match r.below(100) {
            0..=59 => 0,
            60..=79 => 1,
            80..=96 => 2,
            _ => 3,
        };
        for _ in 0..tags {
            let tpid = if r.chance(1, 30) { r.u16() } else { r.pick(&TPIDS) };
            what.push_str(&format!("tag {tpid:04x} "));
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&r.u16().to_be_bytes());
        }
        l.ethertype_at = f.len();
        match r.below(100) {
            0..=46 => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                self.ipv4(&mut f, &mut l, &mut what);
            }
            47..=93 => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                self.ipv6(&mut f, &mut l, &mut what);
            }
            _ => {
                let r = &mut self.rng;
                let ethertype = {
                    let short = r.below(0x600) as u16;
                    r.pick_or_any_u16(&[0x0806, 0x88cc, 0x8847, 0x8863, 0x0842, short])
                };
                what.push_str(&format!("ethertype {ethertype:04x}"));
                f.extend_from_slice(&ethertype.to_be_bytes());
                let n = r.range(0, 100);
                f.extend(r.bytes(n));
            }
        }
        let r = &mut self.rng;
        if f.len() < 60 && r.chance(1, 3) {
            what.push_str("; padded");
            f.resize(60, 0);
        }
        if r.chance(1, 10) {
            let n = r.range(1, 30);
            what.push_str(&format!("; {n} trailing bytes"));
            f.extend(r.bytes(n));
        }
        f.truncate(MAX_FRAME);
        (f, l, what)
    }

    fn ipv4(&mut self, f: &mut Vec<u8>, l: &mut Layout, what: &mut String) {
        let r = &mut self.rng;
        let start = f.len();
        l.l3 = Some((Family::V4, start));
        let ihl = if r.chance(3, 4) { 5 } else { r.range(6, 15) };
        let frag: u16 = match r.below(100) {
            0..=54 => 0x4000,
            55..=74 => 0,
            75..=84 => 0x2000,
            85..=94 => (r.range(1, 0x1fff) as u16) | if r.chance(1, 2) { 0x2000 } else { 0 },
            _ => r.u16(),
        };
        let (proto, l4, l4_what) = self.transport(Family::V4);
        let r = &mut self.rng;
        what.push_str(&format!("ipv4 ihl {ihl} frag {frag:04x} {l4_what}"));
        let total = (ihl * 4 + l4.len()) as u16;
        f.extend_from_slice(&[0x40 | ihl as u8, r.u8()]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&r.u16().to_be_bytes());
        f.extend_from_slice(&frag.to_be_bytes());
        f.extend_from_slice(&[r.u8(), proto, 0, 0]);
        f.extend(r.bytes(8));
        for _ in 0..(ihl - 5) * 4 {
            // NOP and end-of-list options, and anything else.
            f.push(r.pick_or_any_u8(&[1, 1, 1, 0]));
        }
        l.l4 = Some((proto, f.len()));
        f.extend(l4);
    }

    fn ipv6(&mut self, f: &mut Vec<u8>, l: &mut Layout, what: &mut String) {
        let start = f.len();
        l.l3 = Some((Family::V6, start));
        let r = &mut self.rng;
        let chain = if r.chance(11, 20) { 0 } else { r.range(1, 8) };
        let kinds: Vec<u8> =
            (0..chain).map(|_| if r.chance(1, 8) { FRAGMENT } else { r.pick(&[0, 43, 60, 51, 135]) }).collect();
        let (proto, l4, l4_what) = self.transport(Family::V6);
        let r = &mut self.rng;
        what.push_str(&format!("ipv6 ext {kinds:?} {l4_what}"));
        let mut headers = Vec::new();
        let mut offsets = Vec::new();
        for (i, kind) in kinds.iter().enumerate() {
            let next = kinds.get(i + 1).copied().unwrap_or(proto);
            offsets.push(headers.len());
            if *kind == FRAGMENT {
                let offset_and_more = if r.chance(1, 2) { r.u16() } else { 1 };
                headers.extend_from_slice(&[next, 0]);
                headers.extend_from_slice(&offset_and_more.to_be_bytes());
                headers.extend(r.bytes(4));
            } else {
                let len_field = if *kind == AH { r.range(1, 6) } else { r.range(0, 3) };
                let len = if *kind == AH { (len_field + 2) * 4 } else { (len_field + 1) * 8 };
                headers.extend_from_slice(&[next, len_field as u8]);
                headers.extend(r.bytes(len - 2));
            }
        }
        let payload = (headers.len() + l4.len()) as u16;
        f.extend_from_slice(&[0x60 | (r.u8() & 0x0f), r.u8(), r.u8(), r.u8()]);
        f.extend_from_slice(&payload.to_be_bytes());
        f.extend_from_slice(&[kinds.first().copied().unwrap_or(proto), r.u8()]);
        f.extend(r.bytes(32));
        let ext_start = f.len();
        l.ext = offsets.iter().map(|o| ext_start + o).collect();
        f.extend(headers);
        l.l4 = Some((proto, f.len()));
        f.extend(l4);
    }

    /// A transport protocol number and its header and payload.
    fn transport(&mut self, family: Family) -> (u8, Vec<u8>, String) {
        let r = &mut self.rng;
        let (own_icmp, other_icmp) = if family == Family::V4 { (ICMP, ICMPV6) } else { (ICMPV6, ICMP) };
        match r.below(100) {
            0..=37 => self.tcp(),
            38..=75 => self.udp(),
            76..=88 => {
                let proto = if r.chance(1, 5) { other_icmp } else { own_icmp };
                let n = if r.chance(1, 10) { r.range(0, 3) } else { r.range(4, 40) };
                (proto, r.bytes(n), format!("icmp proto {proto} {n} bytes"))
            }
            _ => {
                let proto = r.pick_or_any_u8(&[47, 50, 132, 59, 4, 41, 2, 0, 43, 60]);
                let n = r.range(0, 60);
                (proto, r.bytes(n), format!("proto {proto}"))
            }
        }
    }

    fn port(&mut self) -> u16 {
        let r = &mut self.rng;
        match r.below(100) {
            0..=24 => 53,
            25..=49 => r.pick(&AMPLIFICATION_PORTS).0,
            50..=64 => r.pick(&[80, 8080, 443, 8443]),
            _ => r.u16(),
        }
    }

    fn tcp(&mut self) -> (u8, Vec<u8>, String) {
        let (sport, dport) = (self.port(), self.port());
        let r = &mut self.rng;
        let http = r.chance(1, 2);
        // Requests mostly to the web ports, the rest anywhere.
        let dport = if r.chance(if http { 3 } else { 1 }, 4) { r.pick(&[80, 8080]) } else { dport };
        let flags = r.pick_or_any_u8(&[0x02, 0x12, 0x04, 0x14, 0x10, 0x18, 0x11, 0x01, 0x00, 0x06, 0x03]);
        let doff = if r.chance(3, 4) { 5 } else { r.range(6, 15) };
        let payload = if http {
            self.http_like()
        } else {
            let r = &mut self.rng;
            let n = if r.chance(1, 50) { r.range(1000, 1800) } else { r.range(0, 120) };
            r.bytes(n)
        };
        let r = &mut self.rng;
        let mut s = Vec::with_capacity(doff * 4 + payload.len());
        s.extend_from_slice(&sport.to_be_bytes());
        s.extend_from_slice(&dport.to_be_bytes());
        s.extend(r.bytes(8));
        s.extend_from_slice(&[(doff as u8) << 4 | (r.u8() & 0x0f), flags]);
        s.extend(r.bytes(6));
        s.extend(r.bytes((doff - 5) * 4));
        let what = format!("tcp {sport}->{dport} flags {flags:02x} doff {doff} payload {:?}", preview(&payload));
        s.extend(payload);
        (TCP, s, what)
    }

    /// Request lines and near misses: whole, cut, lower case, one letter off.
    fn http_like(&mut self) -> Vec<u8> {
        const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];
        const NEAR: [&str; 10] =
            ["GETX", "POSTAL", "DELEGATE", "HEADER", "PUTS", "OPTIONZ", "TRACER", "PATCHY", "GE", "G"];
        let r = &mut self.rng;
        let method = match r.below(10) {
            0..=5 => r.pick(&METHODS).to_string(),
            6 => r.pick(&METHODS).to_ascii_lowercase(),
            7 => r.pick(&NEAR).to_string(),
            _ => (0..r.range(1, 8)).map(|_| (b'A' + r.below(26) as u8) as char).collect(),
        };
        let mut line = format!("{method} /index.html HTTP/1.1\r\nHost: example\r\n\r\n").into_bytes();
        if r.chance(1, 4) {
            line.truncate(r.range(0, 8));
        }
        line
    }

    fn udp(&mut self) -> (u8, Vec<u8>, String) {
        let (sport, dport) = (self.port(), self.port());
        let r = &mut self.rng;
        let n = if r.chance(1, 50) { r.range(1000, 1800) } else { r.range(0, 200) };
        let mut s = Vec::with_capacity(8 + n);
        s.extend_from_slice(&sport.to_be_bytes());
        s.extend_from_slice(&dport.to_be_bytes());
        s.extend_from_slice(&((8 + n) as u16).to_be_bytes());
        s.extend(r.bytes(2 + n));
        (UDP, s, format!("udp {sport}->{dport} {n} bytes"))
    }

    /// One mutation; a targeted one whose field is not in this frame falls
    /// back to flipping a random bit.
    fn mutate(&mut self, f: &mut Vec<u8>, l: &Layout, what: &mut String) {
        let r = &mut self.rng;
        let set = |f: &mut Vec<u8>, at: usize, b: u8| -> bool {
            match f.get_mut(at) {
                Some(x) => {
                    *x = b;
                    true
                }
                None => false,
            }
        };
        let set16 = |f: &mut Vec<u8>, at: usize, v: u16| -> bool {
            if at + 2 <= f.len() {
                f[at..at + 2].copy_from_slice(&v.to_be_bytes());
                true
            } else {
                false
            }
        };
        let v4 = match l.l3 {
            Some((Family::V4, at)) => Some(at),
            _ => None,
        };
        let v6 = match l.l3 {
            Some((Family::V6, at)) => Some(at),
            _ => None,
        };
        let l3 = l.l3.map(|(_, at)| at);
        let headers_end = l.l4.map(|(_, at)| at + 20).unwrap_or(f.len()).min(f.len());
        let kind = r.below(17);
        let done = match kind {
            0 => {
                let n = r.below(f.len() + 1);
                f.truncate(n);
                what.push_str(&format!("; cut at {n}"));
                true
            }
            1 if headers_end > 0 => {
                let bits = r.range(1, 8);
                for _ in 0..bits {
                    let at = r.below(headers_end);
                    f[at] ^= 1 << r.below(8);
                }
                what.push_str(&format!("; {bits} header bits flipped"));
                true
            }
            2 if headers_end > 0 => {
                let at = r.below(headers_end);
                let b = r.pick(&[0, 1, 0x7f, 0x80, 0xff, 0x40, 0x45, 0x4f, 0x60, 44, 6, 17, 58]);
                what.push_str(&format!("; byte {at} = {b:#x}"));
                set(f, at, b)
            }
            3 if v4.is_some() => {
                let ihl = r.below(16) as u8;
                what.push_str(&format!("; ihl {ihl}"));
                set(f, v4.unwrap_or(0), 0x40 | ihl)
            }
            4 if v4.is_some() => {
                let at = v4.unwrap_or(0) + 2;
                let Some(actual) = f.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]])) else { return };
                let lie = length_lie(r, actual);
                what.push_str(&format!("; total length {lie} (was {actual})"));
                set16(f, at, lie)
            }
            5 if v4.is_some() => {
                let v = r.pick_or_any_u16(&[0x2000, 0x0001, 0x3fff, 0x8000, 0x4000]);
                what.push_str(&format!("; frag field {v:04x}"));
                set16(f, v4.unwrap_or(0) + 6, v)
            }
            6 if l3.is_some() => {
                let at = l3.unwrap_or(0);
                let Some(b) = f.get(at).copied() else { return };
                let version = r.below(16) as u8;
                what.push_str(&format!("; version {version}"));
                set(f, at, version << 4 | (b & 0x0f))
            }
            7 if v6.is_some() => {
                let at = v6.unwrap_or(0) + 4;
                let Some(actual) = f.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]])) else { return };
                let lie = length_lie(r, actual);
                what.push_str(&format!("; payload length {lie} (was {actual})"));
                set16(f, at, lie)
            }
            8 if !l.ext.is_empty() => {
                let at = l.ext[r.below(l.ext.len())] + 1;
                let len = r.pick_or_any_u8(&[0, 1, 2, 0xff]);
                what.push_str(&format!("; extension length byte {at} = {len}"));
                set(f, at, len)
            }
            9 if v6.is_some() => {
                // A next-header field: in the IPv6 header or in an extension.
                let mut fields = vec![v6.unwrap_or(0) + 6];
                fields.extend(l.ext.iter().copied());
                let at = fields[r.below(fields.len())];
                let next = r.pick_or_any_u8(&[0, 43, 44, 60, 51, 135, 6, 17, 58, 1, 59, 50]);
                what.push_str(&format!("; next header at {at} = {next}"));
                set(f, at, next)
            }
            10 if matches!(l.l4, Some((TCP, _))) => {
                let at = l.l4.map(|(_, at)| at).unwrap_or(0);
                let doff = r.below(16) as u8;
                let flags = r.u8();
                what.push_str(&format!("; tcp doff {doff} flags {flags:02x}"));
                if r.chance(1, 2) {
                    set(f, at + 13, flags);
                }
                set(f, at + 12, doff << 4)
            }
            11 if matches!(l.l4, Some((UDP, _))) => {
                let at = l.l4.map(|(_, at)| at).unwrap_or(0) + 4;
                let v = r.u16();
                what.push_str(&format!("; udp length {v}"));
                set16(f, at, v)
            }
            12 => {
                let n = r.range(1, 64);
                f.extend(r.bytes(n));
                what.push_str(&format!("; {n} bytes appended"));
                true
            }
            13 => {
                let v = r.pick_or_any_u16(&[0x8100, 0x88a8, 0x9100, 0x0800, 0x86dd, 0x0806]);
                what.push_str(&format!("; ethertype {v:04x}"));
                set16(f, l.ethertype_at, v)
            }
            14 if l3.is_some() => {
                let at = match l.l3 {
                    Some((Family::V4, at)) => at + 9,
                    Some((Family::V6, at)) => at + 6,
                    None => 0,
                };
                let p = r.pick_or_any_u8(&[6, 17, 1, 58, 47, 50, 0, 44]);
                what.push_str(&format!("; protocol {p}"));
                set(f, at, p)
            }
            15 if l.l4.is_some() => {
                // Ports: the class boundaries (53, 80, 8080, reflector ports).
                let at = l.l4.map(|(_, at)| at).unwrap_or(0) + if r.chance(1, 2) { 0 } else { 2 };
                let port = r.pick_or_any_u16(&[53, 80, 8080, 123, 11211, 0, 0xffff]);
                what.push_str(&format!("; port at {at} = {port}"));
                set16(f, at, port)
            }
            _ => false,
        };
        if !done && !f.is_empty() {
            let at = r.below(f.len());
            f[at] ^= 1 << r.below(8);
            what.push_str(&format!("; bit flipped at {at}"));
        }
    }
}

impl Iterator for Generator {
    type Item = Frame;

    fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.queue.pop_front() {
                return Some(f);
            }
            self.case();
        }
    }
}

/// A length field's lie: off by a little, zero, half, the maximum, anything.
fn length_lie(r: &mut Rng, actual: u16) -> u16 {
    match r.below(6) {
        0 => actual.wrapping_add(r.range(1, 8) as u16),
        1 => actual.wrapping_sub(r.range(1, 8) as u16),
        2 => 0,
        3 => actual / 2,
        4 => 0xffff,
        _ => r.u16(),
    }
}

fn preview(payload: &[u8]) -> String {
    String::from_utf8_lossy(&payload[..payload.len().min(8)]).into_owned()
}

#[cfg(test)]
mod tests {
    use detector_common::{reference::classify, TrafficClass, CLASS_COUNT};

    use super::*;

    #[test]
    fn the_stream_is_a_function_of_the_seed() {
        let a: Vec<Vec<u8>> = Generator::new(7).take(500).map(|f| f.bytes).collect();
        let b: Vec<Vec<u8>> = Generator::new(7).take(500).map(|f| f.bytes).collect();
        let c: Vec<Vec<u8>> = Generator::new(8).take(500).map(|f| f.bytes).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn every_class_and_every_length_bucket_comes_up() {
        let mut classes = [0u64; CLASS_COUNT];
        let mut tiny = 0;
        let mut longest = 0;
        for f in Generator::new(1).take(200_000) {
            assert!(f.bytes.len() <= MAX_FRAME, "{}", f.what);
            classes[classify(&f.bytes).index()] += 1;
            tiny += (f.bytes.len() < 14) as u64;
            longest = longest.max(f.bytes.len());
        }
        // tcp_established is decided after the parse, from the known
        // peers; no frame alone is one.
        for c in TrafficClass::ALL.into_iter().filter(|c| *c != TrafficClass::TcpEstablished) {
            assert!(classes[c.index()] > 500, "{}: {} frames", c.name(), classes[c.index()]);
        }
        assert!(tiny > 1000, "{tiny} frames shorter than an Ethernet header");
        assert!(longest > 1000, "the longest frame is {longest} bytes");
    }
}
