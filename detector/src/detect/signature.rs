//! An attack's signature: the narrowest description of its packets that an
//! XDP rule can match. Pure.
//!
//! Spoofed and reflected floods come from random sources, so blocking the
//! top sources does not stop them; what they share is the shape of their
//! packets. From the incident's sampled headers this module derives that
//! shape, field by field, in the terms of a rule slot (source /0, a
//! destination, a class set, port spans, a frame-length span and a TTL
//! span), and measures it: the share of the attack it matches (`coverage`)
//! and the share of the interface's peacetime traffic it matches
//! (`collateral`, what a rule built from it would cut off).
//!
//! # The algorithm
//!
//! 0. **The interface's ordinary traffic goes on during an attack** and is
//!    sampled with it. A (class, destination port) or (class, source port)
//!    pair that carries at least [`BACKGROUND_SHARE`] of the peacetime
//!    samples is that background when the attack's samples carry less than
//!    [`DOMINANT_SHARE`] of it, or less than [`DILUTED_SHARE`] of its
//!    peacetime share: its samples are set aside before the rest (a DNS
//!    server's 1% of queries amid a flood on a game port must not add port
//!    53 to the flood's signature, and its collateral to the rule). The
//!    second test is the one that holds whatever the flood's rate: a
//!    service going on at its usual rate keeps its packets while the flood
//!    multiplies the total, so its share falls by the flood's factor (a
//!    1,000 pps service that was all of the peacetime is 5% of a 20,000
//!    pps flood, and more than that in the first polls, whose samples are
//!    taken before the sampling rate falls). A pair the attack carries
//!    more of is the attack, however ordinary.
//! 1. **Classes**: of the incident's classes, the fewest (busiest first)
//!    that carry [`FIELD_COVERAGE`] of the attack's samples; the rest is
//!    other traffic of the same families.
//! 2. **Destination**: the attacked address when one address receives
//!    [`DST_SHARE`] of those samples, else none. A lower bar than the other
//!    fields on purpose: what goes elsewhere is mostly the other hosts'
//!    ordinary traffic of the same class, which a rule must spare.
//! 3. The samples of those classes (to that address) are *the attack*; its
//!    packets' shape is chosen field by field, first each field on all of
//!    them, then each again on the samples that fit the other fields. The
//!    second pass keeps what is not the attack from widening a field: a
//!    few ordinary SYNs to 443 amid a SYN flood to 80 are outliers of the
//!    port, and must not stretch the flood's length and TTL to theirs.
//!    Each field so describes the attack's own packets, and reads on its
//!    own ("its lengths are 54-60"):
//!    - **ports**, each direction: the fewest single ports (at most
//!      [`MAX_PORT_SPANS`]) that carry [`FIELD_COVERAGE`] of the attack
//!      (a reflected service's source port, the flooded services); failing
//!      that, the ports that carry [`DOMINANT_SHARE`] each (at most three)
//!      and one span for the rest, with outliers trimmed at both ends. When
//!      the rest is spread over many ports it is the sender's choice,
//!      random or counting up from a random start, and the window the
//!      samples saw says nothing of the next packets' (a counter wraps to
//!      port 0): no restriction. A result that spans every port is no
//!      restriction either: empty. Packets without ports (ICMP, fragments) have port 0, as the
//!      XDP rule sees them; when no class of the attack has ports, the
//!      ports are left empty;
//!    - **length** and **TTL**: the span holding all but [`TAIL_SHARE`] of
//!      the samples at each end (99.5% of them), widened likewise when the
//!      values are spread; a TTL span of all 256 values is no restriction
//!      (random TTLs).
//!
//! Two floods to 80 and 443 give two ports, never `80-443`: a span is only
//! drawn over ports the attack spreads across. The signature is then
//! matched ([`Signature::matches`], the rule's semantics) against every
//! attack and peacetime sample for its figures.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
};

use detector_common::{sample::PacketSample, TrafficClass, CLASS_COUNT};
use serde::{Deserialize, Serialize};

use crate::span::{Span, SpanValue};

/// Below this many attack samples there is no signature: too few to tell
/// a field's outliers from its values.
pub const MIN_SAMPLES: usize = 20;
/// The share of the attack's samples each field covers.
pub const FIELD_COVERAGE: f64 = 0.99;
/// The share of the attack one address must receive to be named.
pub const DST_SHARE: f64 = 0.95;
/// The share of samples trimmed at each end of a length or TTL span.
pub const TAIL_SHARE: f64 = 0.0025;
/// The most port spans per direction (a rule is made per span).
pub const MAX_PORT_SPANS: usize = 4;
/// A port that carries this share of the attack keeps a span of its own
/// when the rest is spread.
pub const DOMINANT_SHARE: f64 = 0.05;
/// A (class, port) pair with this share of the peacetime samples is
/// ordinary traffic, unless the attack carries [`DOMINANT_SHARE`] of it
/// and at least [`DILUTED_SHARE`] of its peacetime share.
pub const BACKGROUND_SHARE: f64 = 0.01;
/// An ordinary (class, port) pair whose share of the attack's samples fell
/// below this fraction of its peacetime share was diluted by the flood, not
/// part of it: the traffic it carries did not grow with the attack.
pub const DILUTED_SHARE: f64 = 0.25;
/// Values (ports, lengths, TTLs) are a spread, whose extremes sampling
/// misses, from this many distinct ones on.
const SPREAD_VALUES: usize = 32;

/// The narrowest description of an attack's packets, and how well it fits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Signature {
    /// Class names ([`TrafficClass::name`]), in class order.
    pub classes: Vec<String>,
    /// The attacked address, when one receives nearly all the attack.
    pub dst: Option<IpAddr>,
    /// Destination ports: any of these spans; empty for any port.
    pub dst_ports: Vec<Span<u16>>,
    /// Source ports: any of these spans; empty for any port.
    pub src_ports: Vec<Span<u16>>,
    /// Frame length, Ethernet header included.
    pub length: Option<Span<u16>>,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: Option<Span<u8>>,
    /// The share of the attack's samples it matches (0 to 1).
    pub coverage: f64,
    /// The share of the peacetime samples it matches (0 to 1): what a rule
    /// built from it would cut off. 0 when there were none
    /// (`peacetime_samples` says so).
    pub collateral: f64,
    /// Attack samples it was derived from.
    pub samples: usize,
    /// Peacetime samples its collateral was measured on.
    pub peacetime_samples: usize,
    /// For a reflected attack (DNS or amplification replies): the rule on
    /// the reflected services alone, their classes and source ports (with
    /// the attacked address and the length span), whatever ports they hit;
    /// with its own coverage and collateral. `None` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vectors: Option<Box<Signature>>,
}

impl Signature {
    /// Whether a packet fits, as the XDP rule built from the signature
    /// would decide: its class is one of `classes`, it goes to `dst` when
    /// set, its ports fall in one of the spans of each non-empty list, its
    /// length and TTL in their spans.
    pub fn matches(&self, s: &PacketSample) -> bool {
        Matcher::new(self).matches(s)
    }

    /// The classes, as a mask of class ids (names that are no class are
    /// ignored: they match nothing).
    pub fn class_mask(&self) -> u32 {
        self.classes.iter().filter_map(|n| TrafficClass::from_name(n)).fold(0, |m, c| m | 1 << c.index())
    }
}

/// `tcp_syn dst 10.0.0.2 dport 80 len 54-60 ttl 64`: the fields that
/// restrict, in the order of a rule.
impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let spans = |v: &[Span<u16>]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",");
        f.write_str(&self.classes.join(","))?;
        if let Some(d) = self.dst {
            write!(f, " dst {d}")?;
        }
        if !self.src_ports.is_empty() {
            write!(f, " sport {}", spans(&self.src_ports))?;
        }
        if !self.dst_ports.is_empty() {
            write!(f, " dport {}", spans(&self.dst_ports))?;
        }
        if let Some(l) = self.length {
            write!(f, " len {l}")?;
        }
        if let Some(t) = self.ttl {
            write!(f, " ttl {t}")?;
        }
        Ok(())
    }
}

/// [`Signature::matches`] with the class names and address resolved once.
struct Matcher<'a> {
    sig: &'a Signature,
    mask: u32,
    dst: Option<[u8; 16]>,
}

impl<'a> Matcher<'a> {
    fn new(sig: &'a Signature) -> Matcher<'a> {
        Matcher { sig, mask: sig.class_mask(), dst: sig.dst.map(|d| mapped(&d)) }
    }

    fn matches(&self, s: &PacketSample) -> bool {
        let in_any = |spans: &[Span<u16>], v: u16| spans.is_empty() || spans.iter().any(|p| p.contains(v));
        (s.class as usize) < CLASS_COUNT
            && (self.mask >> s.class) & 1 == 1
            && self.dst.is_none_or(|d| d == s.dst)
            && in_any(&self.sig.src_ports, s.sport)
            && in_any(&self.sig.dst_ports, s.dport)
            && self.sig.length.is_none_or(|l| l.contains(frame_len(s)))
            && self.sig.ttl.is_none_or(|t| t.contains(s.ttl))
    }

    fn share<'s>(&self, samples: impl ExactSizeIterator<Item = &'s PacketSample>) -> f64 {
        let n = samples.len();
        if n == 0 {
            return 0.0;
        }
        samples.filter(|s| self.matches(s)).count() as f64 / n as f64
    }
}

/// Derives the signature of an attack from its samples (those of `classes`
/// count; an empty `classes` takes every class) and measures it against
/// the interface's `peacetime` samples. `None` under [`MIN_SAMPLES`].
pub fn derive(attack: &[PacketSample], peacetime: &[PacketSample], classes: &[TrafficClass]) -> Option<Signature> {
    // The samples are referred to, not copied: a derivation runs every
    // second of an attack, over thousands of them, on the poll thread.
    let wanted = |c: u8| TrafficClass::from_id(c as u32).is_some_and(|c| classes.is_empty() || classes.contains(&c));
    let attack: Vec<&PacketSample> = attack.iter().filter(|s| wanted(s.class)).collect();
    let attack = without_background(attack, peacetime);
    if attack.len() < MIN_SAMPLES {
        return None;
    }

    // 1. The fewest classes that carry the attack.
    let mut per_class = [0usize; CLASS_COUNT];
    for s in &attack {
        per_class[s.class as usize] += 1;
    }
    let mut busiest: Vec<TrafficClass> = TrafficClass::ALL.into_iter().filter(|c| per_class[c.index()] > 0).collect();
    busiest.sort_by_key(|c| std::cmp::Reverse(per_class[c.index()]));
    let need = needed(attack.len(), FIELD_COVERAGE);
    let mut chosen = Vec::new();
    let mut carried = 0;
    for c in busiest {
        if carried >= need {
            break;
        }
        carried += per_class[c.index()];
        chosen.push(c);
    }
    chosen.sort();
    let in_classes: Vec<&PacketSample> =
        attack.iter().copied().filter(|s| chosen.iter().any(|c| *c as u8 == s.class)).collect();

    // 2. The attacked address, if one takes nearly all: then it is the
    // samples' majority, which one pass finds (Boyer-Moore's vote), and a
    // second counts.
    let (mut vote, mut lead) = (None, 0usize);
    for s in &in_classes {
        if lead == 0 {
            (vote, lead) = (Some(s.dst), 1);
        } else if vote == Some(s.dst) {
            lead += 1;
        } else {
            lead -= 1;
        }
    }
    let dst = vote.filter(|d| {
        let n = in_classes.iter().filter(|s| s.dst == *d).count();
        n as f64 >= DST_SHARE * in_classes.len() as f64
    });
    let core: Vec<&PacketSample> = in_classes.into_iter().filter(|s| dst.is_none_or(|d| d == s.dst)).collect();

    // 3. The packets' shape: each field on all of them, then each again on
    // those the other fields keep.
    let has_ports = chosen.iter().any(|c| c.has_ports());
    let mut shape = Shape::default();
    for field in Field::ALL {
        shape.choose(field, &core, has_ports);
    }
    for field in Field::ALL {
        let kept: Vec<&PacketSample> = core.iter().copied().filter(|s| shape.fits_except(s, field)).collect();
        // All of them kept: the same choice again (a clean flood's fields).
        if kept.len() >= MIN_SAMPLES && kept.len() < core.len() {
            shape.choose(field, &kept, has_ports);
        }
    }
    let Shape { dst_ports, src_ports, length, ttl } = shape;

    let mut sig = Signature {
        classes: chosen.iter().map(|c| c.name().to_string()).collect(),
        dst: dst.map(|d| addr(&d)),
        dst_ports,
        src_ports,
        length,
        ttl,
        coverage: 0.0,
        collateral: 0.0,
        samples: attack.len(),
        peacetime_samples: peacetime.len(),
        vectors: None,
    };
    measure(&mut sig, &attack, peacetime);
    let reflected = |c: &TrafficClass| matches!(c, TrafficClass::UdpAmplification | TrafficClass::DnsResponse);
    if chosen.iter().all(reflected) && !sig.src_ports.is_empty() {
        let mut v = Signature { dst_ports: Vec::new(), ttl: None, vectors: None, ..sig.clone() };
        measure(&mut v, &attack, peacetime);
        sig.vectors = Some(Box::new(v));
    }
    Some(sig)
}

/// The attack's samples without those of the interface's ordinary traffic
/// (step 0 of the algorithm).
fn without_background<'a>(attack: Vec<&'a PacketSample>, peacetime: &[PacketSample]) -> Vec<&'a PacketSample> {
    if peacetime.is_empty() || attack.is_empty() {
        return attack;
    }
    // Keys: class, direction (0 = destination, 1 = source) and port, in
    // one word.
    fn pairs(s: &PacketSample) -> [u32; 2] {
        let k = (s.class as u32) << 17;
        [k | s.dport as u32, k | 1 << 16 | s.sport as u32]
    }
    let (nc, nh) = (peacetime.len() as f64, attack.len() as f64);
    // The pairs with BACKGROUND_SHARE of the peacetime samples: at most
    // 2 / BACKGROUND_SHARE of them, whatever the thousands of distinct
    // ports (clients' ephemeral ones) around them. Counted by sorting: a
    // hash map of every pair, for both sides, was most of a derivation.
    let calm: Vec<u32> = peacetime.iter().flat_map(pairs).collect();
    let ordinary: Vec<(u32, usize)> =
        counted(calm).into_iter().filter(|(_, c)| *c as f64 / nc >= BACKGROUND_SHARE).collect();
    if ordinary.is_empty() {
        return attack;
    }
    let find = |k: u32| ordinary.binary_search_by_key(&k, |(key, _)| *key).ok();
    let mut hot = vec![0usize; ordinary.len()];
    for s in &attack {
        for k in pairs(s) {
            if let Some(i) = find(k) {
                hot[i] += 1;
            }
        }
    }
    let background: Vec<bool> = ordinary
        .iter()
        .zip(&hot)
        .map(|(&(_, c), &h)| {
            let (calm_share, hot_share) = (c as f64 / nc, h as f64 / nh);
            h > 0 && (hot_share < DOMINANT_SHARE || hot_share < DILUTED_SHARE * calm_share)
        })
        .collect();
    attack.into_iter().filter(|s| !pairs(s).into_iter().any(|k| find(k).is_some_and(|i| background[i]))).collect()
}

/// Sets the signature's coverage of `attack` and collateral on `peacetime`.
fn measure(sig: &mut Signature, attack: &[&PacketSample], peacetime: &[PacketSample]) {
    let m = Matcher::new(sig);
    let (coverage, collateral) = (m.share(attack.iter().copied()), m.share(peacetime.iter()));
    sig.coverage = coverage;
    sig.collateral = collateral;
}

/// The fields chosen from the packets themselves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    DstPorts,
    SrcPorts,
    Length,
    Ttl,
}

impl Field {
    const ALL: [Field; 4] = [Field::DstPorts, Field::SrcPorts, Field::Length, Field::Ttl];
}

#[derive(Default)]
struct Shape {
    dst_ports: Vec<Span<u16>>,
    src_ports: Vec<Span<u16>>,
    length: Option<Span<u16>>,
    ttl: Option<Span<u8>>,
}

impl Shape {
    /// Chooses one field from `samples`; ports only for classes that have
    /// them.
    fn choose(&mut self, field: Field, samples: &[&PacketSample], has_ports: bool) {
        match field {
            Field::DstPorts if has_ports => self.dst_ports = port_spans(samples.iter().map(|s| s.dport).collect()),
            Field::SrcPorts if has_ports => self.src_ports = port_spans(samples.iter().map(|s| s.sport).collect()),
            Field::DstPorts | Field::SrcPorts => {}
            Field::Length => {
                self.length = trimmed(samples.iter().map(|s| frame_len(s)).collect()).filter(|s| !s.is_full())
            }
            Field::Ttl => self.ttl = trimmed(samples.iter().map(|s| s.ttl).collect()).filter(|s| !s.is_full()),
        }
    }

    /// Whether a sample fits every field but `skip`.
    fn fits_except(&self, s: &PacketSample, skip: Field) -> bool {
        let in_any = |spans: &[Span<u16>], v: u16| spans.is_empty() || spans.iter().any(|p| p.contains(v));
        (skip == Field::DstPorts || in_any(&self.dst_ports, s.dport))
            && (skip == Field::SrcPorts || in_any(&self.src_ports, s.sport))
            && (skip == Field::Length || self.length.is_none_or(|l| l.contains(frame_len(s))))
            && (skip == Field::Ttl || self.ttl.is_none_or(|t| t.contains(s.ttl)))
    }
}

/// How many of `n` samples make `share` of them (rounded up).
fn needed(n: usize, share: f64) -> usize {
    ((n as f64 * share).ceil() as usize).min(n)
}

/// The frame length as a rule compares it.
fn frame_len(s: &PacketSample) -> u16 {
    u16::try_from(s.len).unwrap_or(u16::MAX)
}

/// An address from a sample: IPv4 when mapped.
pub fn addr(bytes: &[u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(*bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// An address as samples carry it: IPv4 mapped into IPv6.
pub fn mapped(a: &IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Values with their counts, ascending.
fn counted<T: Copy + Ord>(mut values: Vec<T>) -> Vec<(T, usize)> {
    // Sorted and run-length counted: no hashing, a few thousand values a
    // derivation (it runs every second of an attack, on the poll thread).
    values.sort_unstable();
    let mut out: Vec<(T, usize)> = Vec::new();
    for v in values {
        match out.last_mut() {
            Some((last, n)) if *last == v => *n += 1,
            _ => out.push((v, 1)),
        }
    }
    out
}

/// The first value of `(value, count)`s once up to `per_tail` samples are
/// dropped from their start.
fn past_tail<'a, T: Copy + 'a>(it: impl Iterator<Item = &'a (T, usize)>, per_tail: usize) -> Option<T> {
    let mut dropped = 0;
    for (v, n) in it {
        if dropped + n > per_tail {
            return Some(*v);
        }
        dropped += n;
    }
    None
}

/// The span of ascending `(value, count)`s left when up to `per_tail`
/// samples are dropped from each end; widened to a round boundary when the
/// values are a spread ([`round_out`]).
fn trim_span<T: SpanValue>(asc: &[(T, usize)], per_tail: usize) -> Option<Span<T>> {
    let lo = past_tail(asc.iter(), per_tail)?;
    let hi = past_tail(asc.iter().rev(), per_tail)?;
    let distinct = asc.iter().filter(|(v, _)| lo <= *v && *v <= hi).count();
    if distinct >= SPREAD_VALUES {
        Some(round_out(lo, hi))
    } else {
        Span::new(lo, hi).ok()
    }
}

/// The span holding all but [`TAIL_SHARE`] of the values at each end.
fn trimmed<T: SpanValue + std::hash::Hash>(values: Vec<T>) -> Option<Span<T>> {
    let per_tail = (values.len() as f64 * TAIL_SHARE).floor() as usize;
    trim_span(&counted(values), per_tail)
}

/// The port spans of one direction (see the module's algorithm); empty for
/// any port.
fn port_spans(ports: Vec<u16>) -> Vec<Span<u16>> {
    let n = ports.len();
    if n == 0 {
        return Vec::new();
    }
    let need = needed(n, FIELD_COVERAGE);
    let asc = counted(ports);
    // The busiest few, busiest first (a spread has thousands of ports,
    // whose order past the first few nothing reads).
    let mut busiest: Vec<(u16, usize)> = Vec::with_capacity(MAX_PORT_SPANS + 1);
    for &e in &asc {
        let at = busiest.partition_point(|b| b.1 > e.1 || (b.1 == e.1 && b.0 < e.0));
        if at < MAX_PORT_SPANS {
            busiest.insert(at, e);
            busiest.truncate(MAX_PORT_SPANS);
        }
    }

    // A few single ports carry it.
    let mut carried = 0;
    for (i, (_, k)) in busiest.iter().take(MAX_PORT_SPANS).enumerate() {
        carried += k;
        if carried >= need {
            return merged(busiest[..=i].iter().map(|(p, _)| Span::one(*p)).collect());
        }
    }

    // The dominant ports, and one span for the rest.
    let dominant: Vec<u16> = busiest
        .iter()
        .take(MAX_PORT_SPANS - 1)
        .filter(|(_, k)| *k as f64 >= DOMINANT_SHARE * n as f64)
        .map(|(p, _)| *p)
        .collect();
    let rest: Vec<(u16, usize)> = asc.into_iter().filter(|(p, _)| !dominant.contains(p)).collect();
    let per_tail = (n - need) / 2;
    let mut spans: Vec<Span<u16>> = dominant.iter().map(|p| Span::one(*p)).collect();
    match trim_span(&rest, per_tail) {
        // Spread ports are the sender's choice, random or counting up from
        // a random start and wrapping (hping3 does): the window the samples
        // saw is not where the next packets go. No restriction.
        Some(span) if rest.iter().filter(|(p, _)| span.contains(*p)).count() >= SPREAD_VALUES => {
            return Vec::new();
        }
        other => spans.extend(other),
    }
    let spans = merged(spans);
    if spans.iter().any(|s| s.is_full()) {
        Vec::new()
    } else {
        spans
    }
}

/// A spread's span widened to a boundary on the scale of its width: a
/// thirty-second of it, rounded down to a power of two, at most 1024 (for
/// ports, the end of the privileged ones). Sampling sees few of a spread's
/// extreme values: `1024-65535`, not `1187-65529`.
fn round_out<T: SpanValue>(lo: T, hi: T) -> Span<T> {
    let (l, h): (u64, u64) = (lo.into(), hi.into());
    let step = ((h - l + 1) / 32).max(1);
    let step = (1u64 << (63 - step.leading_zeros())).min(1024);
    Span::checked(l & !(step - 1), (h | (step - 1)).min(T::MAX)).unwrap_or(Span { lo, hi })
}

/// Spans sorted, with overlapping and adjacent ones joined.
fn merged(mut spans: Vec<Span<u16>>) -> Vec<Span<u16>> {
    spans.sort();
    let mut out: Vec<Span<u16>> = Vec::with_capacity(spans.len());
    for s in spans {
        match out.last_mut() {
            Some(last) if s.lo as u32 <= last.hi as u32 + 1 => last.hi = last.hi.max(s.hi),
            _ => out.push(s),
        }
    }
    out
}

/// The most recent samples, up to a bound: what an interface keeps of its
/// peacetime and of an open incident's classes. In no order (a signature
/// does not depend on one); the oldest is overwritten first.
#[derive(Clone, Debug)]
pub struct RecentSamples {
    buf: Vec<PacketSample>,
    next: usize,
    cap: usize,
}

impl RecentSamples {
    pub fn new(cap: usize) -> RecentSamples {
        RecentSamples { buf: Vec::new(), next: 0, cap }
    }

    pub fn push(&mut self, s: PacketSample) {
        if self.cap == 0 {
            return;
        }
        if self.buf.len() < self.cap {
            self.buf.push(s);
        } else {
            self.buf[self.next] = s;
            self.next = (self.next + 1) % self.cap;
        }
    }

    pub fn extend<'a>(&mut self, samples: impl IntoIterator<Item = &'a PacketSample>) {
        for s in samples {
            self.push(*s);
        }
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.next = 0;
    }

    pub fn samples(&self) -> &[PacketSample] {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// Uniform in lo..=hi.
        fn range(&mut self, lo: u64, hi: u64) -> u64 {
            lo + self.next() % (hi - lo + 1)
        }

        fn v4(&mut self) -> [u8; 16] {
            mapped(&IpAddr::V4((self.next() as u32).into()))
        }
    }

    fn ip(s: &str) -> [u8; 16] {
        mapped(&s.parse().unwrap())
    }

    fn pkt(class: TrafficClass, dst: [u8; 16], sport: u16, dport: u16, len: u32, ttl: u8) -> PacketSample {
        PacketSample { class: class as u8, dst, sport, dport, len, ttl, ..Default::default() }
    }

    fn syn_flood(r: &mut Rng, n: usize, dst: [u8; 16], random_src: impl Fn(&mut Rng) -> [u8; 16]) -> Vec<PacketSample> {
        (0..n)
            .map(|_| PacketSample {
                src: random_src(r),
                ..pkt(TrafficClass::TcpSyn, dst, r.range(0, 65535) as u16, 80, r.range(54, 60) as u32, 64)
            })
            .collect()
    }

    /// Ordinary traffic of a web server: ACKs to 443 and 80, DNS answers.
    fn peacetime(r: &mut Rng, dst: [u8; 16]) -> Vec<PacketSample> {
        (0..4096)
            .map(|i| match i % 3 {
                0 => pkt(TrafficClass::TcpAck, dst, r.range(32768, 60999) as u16, 443, r.range(66, 1514) as u32, 52),
                1 => pkt(TrafficClass::TcpAck, dst, r.range(32768, 60999) as u16, 80, r.range(66, 1514) as u32, 57),
                _ => pkt(TrafficClass::DnsResponse, dst, 53, r.range(32768, 60999) as u16, 120, 60),
            })
            .collect()
    }

    #[test]
    fn spoofed_syn_flood() {
        let mut r = Rng(7);
        let dst = ip("10.0.0.2");
        let attack = syn_flood(&mut r, 4000, dst, Rng::v4);
        let calm = peacetime(&mut r, dst);
        let sig = derive(&attack, &calm, &[TrafficClass::TcpSyn]).expect("a signature");
        assert_eq!(sig.classes, vec!["tcp_syn"]);
        assert_eq!(sig.dst, Some("10.0.0.2".parse().unwrap()));
        assert_eq!(sig.dst_ports, vec![Span::one(80)]);
        assert!(sig.src_ports.is_empty(), "{:?}", sig.src_ports);
        assert_eq!(sig.length, Some(Span { lo: 54, hi: 60 }));
        assert_eq!(sig.ttl, Some(Span::one(64)));
        assert!(sig.coverage >= 0.99, "{}", sig.coverage);
        assert_eq!(sig.collateral, 0.0);
        assert_eq!((sig.samples, sig.peacetime_samples), (4000, 4096));
        assert_eq!(sig.to_string(), "tcp_syn dst 10.0.0.2 dport 80 len 54-60 ttl 64");
        assert!(attack.iter().all(|s| sig.matches(s)));
    }

    #[test]
    fn ordinary_packets_amid_a_flood_do_not_widen_it() {
        let mut r = Rng(29);
        let dst = ip("10.0.0.2");
        let mut attack = syn_flood(&mut r, 2000, dst, Rng::v4);
        // 0.6% of real connections to 443, longer and with another TTL.
        attack.extend((0..12).map(|_| pkt(TrafficClass::TcpSyn, dst, r.range(32768, 60999) as u16, 443, 74, 52)));
        let sig = derive(&attack, &[], &[TrafficClass::TcpSyn]).expect("a signature");
        assert_eq!(sig.dst_ports, vec![Span::one(80)]);
        assert_eq!((sig.length, sig.ttl), (Some(Span { lo: 54, hi: 60 }), Some(Span::one(64))));
        assert!((sig.coverage - 2000.0 / 2012.0).abs() < 1e-9, "{}", sig.coverage);
    }

    #[test]
    fn ntp_reflection() {
        let mut r = Rng(11);
        let dst = ip("192.0.2.10");
        let attack: Vec<PacketSample> = (0..3000)
            .map(|_| PacketSample {
                src: r.v4(),
                ..pkt(
                    TrafficClass::UdpAmplification,
                    dst,
                    123,
                    r.range(1024, 65535) as u16,
                    r.range(440, 490) as u32,
                    r.range(40, 60) as u8,
                )
            })
            .collect();
        assert!(attack.iter().map(|s| s.src).collect::<std::collections::HashSet<_>>().len() > 1000);
        // The host's own NTP client gets replies from its servers (length
        // 90, its ports above 1024 too), and DNS answers.
        let calm: Vec<PacketSample> = (0..2000)
            .map(|i| {
                if i % 2 == 0 {
                    pkt(TrafficClass::UdpAmplification, dst, 123, r.range(32768, 60999) as u16, 90, 55)
                } else {
                    pkt(TrafficClass::DnsResponse, dst, 53, r.range(32768, 60999) as u16, 200, 58)
                }
            })
            .collect();
        let sig = derive(&attack, &calm, &[TrafficClass::UdpAmplification]).expect("a signature");
        assert_eq!(sig.classes, vec!["udp_amplification"]);
        assert_eq!(sig.src_ports, vec![Span::one(123)]);
        assert!(sig.dst_ports.is_empty(), "random destination ports are no restriction");
        let len = sig.length.expect("a length");
        assert!(!len.contains(90) && len.lo >= 430 && len.hi <= 490, "{len}");
        assert_eq!(sig.ttl, Some(Span { lo: 40, hi: 60 }));
        assert_eq!(sig.collateral, 0.0);
        assert!(sig.coverage >= 0.99, "{}", sig.coverage);
        // The reflected services alone: any destination port, any TTL; the
        // length still spares the host's own NTP replies.
        let v = sig.vectors.as_deref().expect("a reflected attack has vectors");
        assert_eq!(
            (v.src_ports.clone(), v.dst_ports.clone(), v.ttl, v.length),
            (vec![Span::one(123)], vec![], None, sig.length)
        );
        assert!(v.coverage >= sig.coverage && v.collateral == 0.0, "{v:?}");
        let json = serde_json::to_value(&sig).unwrap();
        assert_eq!(json["src_ports"], serde_json::json!([123]));
        assert_eq!(json["dst_ports"], serde_json::json!([]));
        assert_eq!(serde_json::from_value::<Signature>(json).unwrap(), sig);
    }

    #[test]
    fn dns_flood_like_its_queries_cuts_them_off() {
        let mut r = Rng(3);
        let dst = ip("198.51.100.53");
        let query = |r: &mut Rng, ttl: u8| {
            pkt(TrafficClass::DnsQuery, dst, r.range(1024, 65535) as u16, 53, r.range(74, 90) as u32, ttl)
        };
        let attack: Vec<PacketSample> = (0..2000)
            .map(|_| {
                let ttl = r.range(40, 64) as u8;
                query(&mut r, ttl)
            })
            .collect();
        let calm: Vec<PacketSample> = (0..1000)
            .map(|i| {
                if i % 10 == 0 {
                    pkt(TrafficClass::TcpAck, dst, 50000, 22, 100, 60)
                } else {
                    let ttl = r.range(50, 60) as u8;
                    query(&mut r, ttl)
                }
            })
            .collect();
        let sig = derive(&attack, &calm, &[TrafficClass::DnsQuery]).expect("a signature");
        assert_eq!(sig.dst_ports, vec![Span::one(53)]);
        assert!(sig.collateral > 0.5, "{}", sig.collateral);
        assert!(sig.coverage >= 0.99);
    }

    #[test]
    fn two_ports_are_two_spans() {
        let mut r = Rng(5);
        let dst = ip("10.0.0.2");
        let mut attack = syn_flood(&mut r, 3000, dst, Rng::v4);
        for (i, s) in attack.iter_mut().enumerate() {
            s.dport = if i % 3 == 0 { 443 } else { 80 };
        }
        let sig = derive(&attack, &[], &[TrafficClass::TcpSyn]).expect("a signature");
        assert_eq!(sig.dst_ports, vec![Span::one(80), Span::one(443)]);
        assert_eq!((sig.collateral, sig.peacetime_samples), (0.0, 0));
        assert!(sig.to_string().contains(" dport 80,443 "), "{sig}");
    }

    #[test]
    fn too_few_samples() {
        let mut r = Rng(9);
        let attack = syn_flood(&mut r, MIN_SAMPLES - 1, ip("10.0.0.2"), Rng::v4);
        assert_eq!(derive(&attack, &[], &[TrafficClass::TcpSyn]), None);
        assert!(derive(&attack, &[], &[]).is_none());
        // Samples of other classes do not count.
        let mut more = attack.clone();
        more.extend(syn_flood(&mut r, 100, ip("10.0.0.2"), Rng::v4));
        assert_eq!(derive(&more, &[], &[TrafficClass::Udp]), None);
        assert!(derive(&more, &[], &[TrafficClass::TcpSyn]).is_some());
    }

    #[test]
    fn ipv6_works_the_same() {
        let mut r = Rng(13);
        let dst = ip("2001:db8::80");
        let attack = syn_flood(&mut r, 2000, dst, |r| {
            let mut a = ip("2001:db8:ffff::");
            a[8..].copy_from_slice(&r.next().to_be_bytes());
            a
        });
        let calm = peacetime(&mut r, dst);
        let sig = derive(&attack, &calm, &[TrafficClass::TcpSyn]).expect("a signature");
        assert_eq!(sig.dst, Some("2001:db8::80".parse().unwrap()));
        assert_eq!(sig.dst_ports, vec![Span::one(80)]);
        assert!(sig.src_ports.is_empty());
        assert_eq!(sig.length, Some(Span { lo: 54, hi: 60 }));
        assert_eq!(sig.collateral, 0.0);
        assert!(sig.matches(&attack[0]));
        assert!(!sig.matches(&PacketSample { dst: ip("2001:db8::81"), ..attack[0] }));
    }

    #[test]
    fn spread_destinations_and_minor_classes() {
        let mut r = Rng(17);
        // A carpet-bombing UDP flood over a /24, with a little of other UDP
        // classes (DNS answers the hosts asked for) in the same families.
        let mut attack: Vec<PacketSample> = (0..3000)
            .map(|_| {
                let mut d = ip("203.0.113.0");
                d[15] = r.range(0, 255) as u8;
                pkt(TrafficClass::Udp, d, r.range(0, 65535) as u16, r.range(0, 65535) as u16, 1000, 250)
            })
            .collect();
        attack.extend((0..10).map(|_| pkt(TrafficClass::DnsResponse, ip("203.0.113.7"), 53, 40000, 300, 60)));
        let sig = derive(&attack, &[], &[TrafficClass::Udp, TrafficClass::DnsResponse]).expect("a signature");
        assert_eq!(sig.classes, vec!["udp"]);
        assert_eq!(sig.dst, None);
        assert!(sig.dst_ports.is_empty() && sig.src_ports.is_empty());
        assert_eq!(sig.length, Some(Span::one(1000)));
        assert_eq!(sig.ttl, Some(Span::one(250)));
        assert!(sig.coverage > 0.99 && sig.coverage < 1.0, "{}", sig.coverage);
        assert_eq!(sig.to_string(), "udp len 1000 ttl 250");
    }

    #[test]
    fn portless_classes_have_no_ports() {
        let mut r = Rng(19);
        let attack: Vec<PacketSample> = (0..500)
            .map(|_| pkt(TrafficClass::Icmp, ip("10.0.0.2"), 0, 0, r.range(98, 1514) as u32, r.range(0, 255) as u8))
            .collect();
        let sig = derive(&attack, &[], &[TrafficClass::Icmp]).expect("a signature");
        assert!(sig.dst_ports.is_empty() && sig.src_ports.is_empty());
        assert_eq!(sig.ttl, None);
        // A spread of lengths, widened to round ends.
        let len = sig.length.expect("a length");
        assert!(len.lo.is_multiple_of(32) && len.lo >= 96 && len.hi % 32 == 31 && len.hi <= 1535, "{len}");
    }

    #[test]
    fn dominant_ports_and_a_spread() {
        // Half to DNS, half to random high ports: the spread is the
        // sender's choice, so no restriction (a rule on 53 alone would
        // miss half the attack).
        let mut r = Rng(23);
        let ports: Vec<u16> = (0..4000).map(|i| if i % 2 == 0 { 53 } else { r.range(1024, 65535) as u16 }).collect();
        assert_eq!(port_spans(ports), vec![]);
        // A narrow spread is not widened; adjacent ports join.
        let ports: Vec<u16> = (0..1000).map(|i| 5000 + (i % 10) as u16).collect();
        assert_eq!(port_spans(ports), vec![Span { lo: 5000, hi: 5009 }]);
        assert_eq!(port_spans(vec![7, 8, 7, 8]), vec![Span { lo: 7, hi: 8 }]);
        // Outliers under 1% are trimmed.
        let mut ports = vec![80u16; 995];
        ports.extend([1, 2, 3, 4, 5]);
        assert_eq!(port_spans(ports), vec![Span::one(80)]);
        assert_eq!(round_out(1187u16, 65529), Span { lo: 1024, hi: 65535 });
        assert_eq!(round_out(10u16, 20), Span { lo: 10, hi: 20 });
        assert_eq!(round_out(3u8, 252), Span { lo: 0, hi: 255 });
    }

    #[test]
    fn recent_samples_keep_the_newest() {
        let mut ring = RecentSamples::new(3);
        let s = |len| PacketSample { len, ..Default::default() };
        ring.extend(&[s(1), s(2)]);
        assert_eq!(ring.samples().len(), 2);
        ring.extend(&[s(3), s(4), s(5)]);
        let mut lens: Vec<u32> = ring.samples().iter().map(|s| s.len).collect();
        lens.sort();
        assert_eq!(lens, vec![3, 4, 5]);
        ring.clear();
        assert!(ring.samples().is_empty());
        RecentSamples::new(0).push(s(1));
    }
}

#[cfg(test)]
mod background_tests {
    use super::*;

    fn udp(dst: [u8; 16], sport: u16, dport: u16, len: u32) -> PacketSample {
        PacketSample { class: TrafficClass::Udp as u8, dst, sport, dport, len, ttl: 64, ..Default::default() }
    }

    /// A service's ordinary 1% amid a flood on another port is background:
    /// not in the signature, so the rule does not cut it off.
    #[test]
    fn ordinary_traffic_amid_a_flood_is_not_the_flood() {
        let dst = mapped(&"192.0.2.2".parse().unwrap());
        let calm: Vec<PacketSample> = (0..500).map(|i| udp(dst, 40000 + i, 5353, 60)).collect();
        let mut attack: Vec<PacketSample> =
            (0..4000).map(|i| udp(dst, 1024 + (i * 7 % 60000) as u16, 27015, 142)).collect();
        attack.extend((0..50).map(|i| udp(dst, 41000 + i, 5353, 60)));
        let sig = derive(&attack, &calm, &[TrafficClass::Udp]).unwrap();
        assert_eq!(sig.dst_ports, vec![Span::one(27015)], "{sig}");
        assert_eq!(sig.length, Some(Span::one(142)), "{sig}");
        assert_eq!(sig.collateral, 0.0);
        // The same port, flooded: the attack, however ordinary the port.
        let flood: Vec<PacketSample> = (0..4000).map(|i| udp(dst, 40000 + (i % 500) as u16, 5353, 60)).collect();
        let sig = derive(&flood, &calm, &[TrafficClass::Udp]).unwrap();
        assert_eq!(sig.dst_ports, vec![Span::one(5353)]);
        assert!(sig.collateral > 0.9, "its rule would cut the service off: {sig:?}");
    }

    /// A smaller flood, or its first polls: the service's packets are more
    /// than `DOMINANT_SHARE` of the attack's samples, but a fraction of
    /// their peacetime share. Still the background (the signature once
    /// took port 5353 in at an incident's opening, and its rule would have
    /// cut off all the peacetime traffic).
    #[test]
    fn the_background_is_told_by_its_fall_in_share_too() {
        let dst = mapped(&"192.0.2.2".parse().unwrap());
        let mut calm: Vec<PacketSample> = (0..500).map(|i| udp(dst, 40000 + i, 5353, 60)).collect();
        calm.extend((0..5).map(|_| udp(dst, 27005, 27015, 106)));
        for bg in [60u16, 100, 240] {
            let mut attack: Vec<PacketSample> =
                (0..1800).map(|i| udp(dst, 1024 + (i * 7 % 60000) as u16, 27015, 142)).collect();
            attack.extend((0..bg).map(|i| udp(dst, 41000 + i, 5353, 60)));
            let sig = derive(&attack, &calm, &[TrafficClass::Udp]).unwrap();
            assert_eq!(sig.dst_ports, vec![Span::one(27015)], "{bg} background samples: {sig}");
            assert_eq!(sig.collateral, 0.0, "{bg} background samples: {sig}");
        }
        // A second vector on an ordinary port, a third of the attack: it
        // grew with the attack (a third, against its peacetime share of
        // nearly all), so it stays the attack's.
        let mut attack: Vec<PacketSample> =
            (0..1200).map(|i| udp(dst, 1024 + (i * 7 % 60000) as u16, 27015, 142)).collect();
        attack.extend((0..600).map(|i| udp(dst, 1024 + (i * 11 % 60000) as u16, 5353, 142)));
        let sig = derive(&attack, &calm, &[TrafficClass::Udp]).unwrap();
        assert_eq!(sig.dst_ports, vec![Span::one(5353), Span::one(27015)], "{sig}");
        assert_eq!(sig.length, Some(Span::one(142)), "{sig}");
        assert_eq!(sig.collateral, 0.0, "the flood's length spares the service: {sig}");
    }
}

#[cfg(test)]
mod spread_tests {
    use super::*;

    /// hping3 counts its source port up from a random start, and wraps:
    /// the samples see a window, the next packets are past it. A spread
    /// of ports is no restriction, never the window.
    #[test]
    fn counting_ports_are_not_a_window() {
        let dst = mapped(&"192.0.2.2".parse().unwrap());
        let attack: Vec<PacketSample> = (0..3000u16)
            .map(|i| PacketSample {
                class: TrafficClass::Udp as u8,
                dst,
                sport: 12_416 + i * 2,
                dport: 27015,
                len: 142,
                ttl: 64,
                ..Default::default()
            })
            .collect();
        let sig = derive(&attack, &[], &[TrafficClass::Udp]).unwrap();
        assert!(sig.src_ports.is_empty(), "{sig}");
        assert_eq!(sig.dst_ports, vec![Span::one(27015)]);
    }
}
