//! Property test of the rule planner: for random rule sets and allowlists
//! (built through [`RuleSet`], as the controller builds them: validation,
//! refusals, removals, index reuse, expiry) and random packets, the
//! compiled trie read the way the XDP program reads it decides exactly what
//! a brute-force reading of the rules decides.
//!
//! - The compiled side mirrors `detector-ebpf/src/bin/detector/mitigate.rs`:
//!   nothing while no entry holds a rule (`RULES_ACTIVE`), else one
//!   longest-prefix lookup, then the entry's slots in order, stopping at
//!   the first empty one, skipping slots whose scope does not match or
//!   whose expiry has passed; the first that is left decides, and the
//!   entry's allow flag turns its drop into a pass.
//! - The brute force reads the rules as the README documents them: of the
//!   rules in force whose prefix holds the source and whose scope (classes,
//!   groups, ports) covers the packet, drops decide before rate limits,
//!   then the longer prefix, then the narrower scope (more ports given,
//!   then fewer classes), then the older rule; an allowlisted source
//!   passes. At most [`MAX_SLOTS`] rules may cover one address.
//!
//! Rate limits are compared by which rule decides, not by simulating the
//! per-source schedule (`detector_common::rules::gcra` has its own tests).

use std::{
    cmp::Reverse,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicU64, Ordering},
};

use crate::{clock::Clock, span::Span};
use detector_common::{
    rules::{PacketKey, RuleEntry, ACTION_DROP, ACTION_RATE_LIMIT, ENTRY_ALLOW, MAX_SLOTS},
    TrafficClass,
};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};

use super::{
    plan::Plan,
    prefix::Prefix,
    rule::{Action, Rule, RuleRequest},
    ruleset::{AllowEntry, AllowSource, Limits, RuleError, RuleSet},
};

/// Who decides a packet: a rule (by counter index, with its action), and
/// whether the source is allowlisted (then nothing is dropped, and the rule
/// counts the packet as passed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    NoRule,
    Rule { index: u32, drop: bool, allowed: bool },
}

#[derive(Clone, Debug)]
struct RuleSpec {
    prefix: Prefix,
    classes: Vec<&'static str>,
    sport: Option<u16>,
    dport: Option<u16>,
    /// A rate limit's pps; `None`: a drop.
    pps: Option<u64>,
    ttl_s: Option<u64>,
}

#[derive(Clone, Debug)]
enum Op {
    Rule(RuleSpec),
    Allow(Prefix),
    /// Removes the rule at this position (modulo the count), if any.
    Remove(usize),
    /// Removes expired rules, as the controller does now and then.
    Expire,
    /// The clock moves on.
    Wait(u64),
}

#[derive(Clone, Debug)]
struct Packet {
    /// IPv6, or IPv4 mapped into IPv6, as the XDP program keys sources.
    src: u128,
    class: TrafficClass,
    sport: u16,
    dport: u16,
    /// After the last change to the rules.
    after_ms: u64,
}

const V4_BASES: [u32; 6] = [0x0a00_0000, 0x0a00_0080, 0x0a00_0100, 0x0a01_0000, 0xc000_0200, 0x0000_0000];
const V6_BASES: [u128; 5] = [
    0x2001_0db8_0000_0000_0000_0000_0000_0000,
    0x2001_0db8_0000_0001_0000_0000_0000_0000,
    0x2001_0db8_0000_0000_0000_0000_0000_0005,
    0,
    // IPv4-mapped space: an IPv6 prefix shorter than 96 bits covers IPv4 sources.
    0x0000_0000_0000_0000_0000_ffff_0a00_0000,
];
const PORTS: [u16; 6] = [53, 80, 123, 443, 11211, 40000];
const SCOPES: [&str; 18] = [
    "tcp",
    "udp",
    "icmp",
    "tcp_syn",
    "tcp_synack",
    "tcp_rst",
    "tcp_ack",
    "http_request",
    "udp",
    "dns_query",
    "dns_response",
    "udp_amplification",
    "icmp",
    "icmpv6",
    "fragment",
    "other_ip",
    "non_ip",
    "malformed",
];

fn mapped(v4: u32) -> u128 {
    0xffff_0000_0000 | v4 as u128
}

/// A rule's prefix: any length, often a round one, nested and overlapping
/// (a few bases, small offsets).
fn prefix() -> impl Strategy<Value = Prefix> {
    let v4_len = prop_oneof![Just(0u8), Just(8), Just(16), Just(24), Just(25), Just(32), 0u8..=32].boxed();
    let v6_len =
        prop_oneof![Just(0u8), Just(32), Just(64), Just(90), Just(96), Just(120), Just(128), 0u8..=128].boxed();
    prefix_of(v4_len, v6_len)
}

/// An allowlist entry: mostly hosts and small networks, as the host's own
/// addresses and operators' entries are; a very short one now and then.
fn allow_prefix() -> impl Strategy<Value = Prefix> {
    let v4_len = prop_oneof![8 => 24u8..=32, 1 => 0u8..24].boxed();
    let v6_len = prop_oneof![8 => 96u8..=128, 1 => 0u8..96].boxed();
    prefix_of(v4_len, v6_len)
}

fn prefix_of(v4_len: BoxedStrategy<u8>, v6_len: BoxedStrategy<u8>) -> impl Strategy<Value = Prefix> {
    let v4 = (prop::sample::select(&V4_BASES[..]), 0u32..512, v4_len)
        .prop_map(|(b, off, len)| Prefix::new(IpAddr::V4(Ipv4Addr::from(b + off)), len).expect("len <= 32"));
    let v6 = (prop::sample::select(&V6_BASES[..]), 0u128..512, v6_len)
        .prop_map(|(b, off, len)| Prefix::new(IpAddr::V6(Ipv6Addr::from(b + off)), len).expect("len <= 128"));
    prop_oneof![3 => v4, 1 => v6]
}

fn rule_spec() -> impl Strategy<Value = RuleSpec> {
    let port = prop::option::weighted(0.3, prop::sample::select(&PORTS[..]));
    (
        prefix(),
        prop::collection::vec(prop::sample::select(&SCOPES[..]), 0..3),
        port.clone(),
        port,
        prop::option::of(1u64..1000),
        prop::option::weighted(0.4, 1u64..120),
    )
        .prop_map(|(prefix, classes, sport, dport, pps, ttl_s)| {
            // Ports on a scope of portless classes match nothing, and the
            // rule check refuses them.
            let ported = classes.is_empty()
                || classes.iter().any(|c| scope_classes(&[c.to_string()]).iter().any(|k| k.has_ports()));
            let (sport, dport) = if ported { (sport, dport) } else { (None, None) };
            RuleSpec { prefix, classes, sport, dport, pps, ttl_s }
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => rule_spec().prop_map(Op::Rule),
        2 => allow_prefix().prop_map(Op::Allow),
        2 => any::<usize>().prop_map(Op::Remove),
        1 => Just(Op::Expire),
        2 => (0u64..60_000).prop_map(Op::Wait),
    ]
}

fn packet() -> impl Strategy<Value = Packet> {
    let v4 = (prop::sample::select(&V4_BASES[..]), 0u32..1024).prop_map(|(b, off)| mapped(b + off));
    let v6 = (prop::sample::select(&V6_BASES[..]), 0u128..1024).prop_map(|(b, off)| b + off);
    let any_src = any::<u128>();
    (
        prop_oneof![4 => v4, 2 => v6, 1 => any_src],
        prop::sample::select(&TrafficClass::ALL[..]),
        prop::sample::select(&PORTS[..]),
        prop::sample::select(&PORTS[..]),
        0u64..150_000,
    )
        .prop_map(|(src, class, sport, dport, after_ms)| {
            // Only TCP and UDP packets carry ports; the program gives others 0.
            let ports = class.index() <= TrafficClass::UdpAmplification.index();
            let (sport, dport) = if ports { (sport, dport) } else { (0, 0) };
            Packet { src, class, sport, dport, after_ms }
        })
}

// ---- The brute force: the rules as documented. ----

fn bits(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

/// True when `p` holds the address `a`.
fn holds(p: &Prefix, a: u128) -> bool {
    let (net, len) = p.key();
    let len = len as u8;
    a & bits(len) == u128::from_be_bytes(net) & bits(len)
}

/// The classes a scope names: the README's groups, or one class; all when empty.
fn scope_classes(names: &[String]) -> Vec<TrafficClass> {
    use TrafficClass as C;
    if names.is_empty() {
        return TrafficClass::ALL.to_vec();
    }
    let mut out: Vec<TrafficClass> = Vec::new();
    for n in names {
        let group: Vec<TrafficClass> = match n.as_str() {
            "tcp" => vec![C::TcpSyn, C::TcpSynAck, C::TcpRst, C::TcpAck, C::HttpRequest, C::TcpEstablished],
            "udp" => vec![C::Udp, C::DnsQuery, C::DnsResponse, C::UdpAmplification],
            "icmp" => vec![C::Icmp, C::Icmpv6],
            one => TrafficClass::from_name(one).into_iter().collect(),
        };
        for c in group {
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out
}

fn age(r: &Rule) -> u64 {
    r.id.trim_start_matches('r').parse().expect("rule ids are r<N>")
}

fn brute(rules: &[Rule], allow: &[AllowEntry], p: &Packet, now_ms: u64) -> Verdict {
    let deciding = rules
        .iter()
        .filter(|r| holds(&r.prefix, p.src))
        .filter(|r| scope_classes(&r.classes).contains(&p.class))
        .filter(|r| r.m.sport.is_none_or(|s| s.contains(p.sport)) && r.m.dport.is_none_or(|d| d.contains(p.dport)))
        .filter(|r| r.expires_ms.is_none_or(|t| now_ms < t))
        .min_by_key(|r| {
            let drop_first = !matches!(r.action, Action::Drop);
            let ports_open = 5 - r.m.narrowing();
            (drop_first, Reverse(r.prefix.bits()), ports_open, scope_classes(&r.classes).len(), age(r))
        });
    match deciding {
        None => Verdict::NoRule,
        Some(r) => Verdict::Rule {
            index: r.index,
            drop: matches!(r.action, Action::Drop),
            allowed: allow.iter().any(|a| holds(&a.prefix, p.src)),
        },
    }
}

/// The most rules that cover any one address. The deepest point of any
/// overlap is the network address of some rule's prefix, so those are the
/// addresses to count at.
fn max_cover(rules: &[&Prefix]) -> usize {
    rules
        .iter()
        .map(|p| u128::from_be_bytes(p.key().0))
        .map(|a| rules.iter().filter(|q| holds(q, a)).count())
        .max()
        .unwrap_or(0)
}

// ---- The compiled side: the trie as the XDP program reads it. ----

fn compiled(plan: &Plan, p: &Packet, now_ns: u64) -> Verdict {
    // RULES_ACTIVE, as `kernel::RuleMaps::apply` sets it.
    if !plan.values().any(|e| e.slots[0].index != 0) {
        return Verdict::NoRule;
    }
    // The LPM trie: the longest stored prefix whose bits match the key's.
    let entry: Option<&RuleEntry> = plan
        .iter()
        .filter(|(k, _)| {
            let (net, len) = k.key();
            p.src & bits(len as u8) == u128::from_be_bytes(net)
        })
        .max_by_key(|(k, _)| k.key().1)
        .map(|(_, e)| e);
    let Some(entry) = entry else {
        return Verdict::NoRule;
    };
    for s in entry.slots.iter() {
        if s.index == 0 {
            break;
        }
        let k = PacketKey { class: p.class as u32, sport: p.sport, dport: p.dport, len: 100, ttl: 64 };
        if s.matches(&k) && (s.expires_ns == 0 || now_ns < s.expires_ns) {
            assert!(s.action == ACTION_DROP || s.action == ACTION_RATE_LIMIT, "slot {s:?}");
            return Verdict::Rule {
                index: s.index,
                drop: s.action == ACTION_DROP,
                allowed: entry.allow == ENTRY_ALLOW,
            };
        }
    }
    Verdict::NoRule
}

// ---- The property. ----

/// How each attempted change ended, over all cases: each must come up, or
/// the generator is not testing what it claims to.
static ADDED: AtomicU64 = AtomicU64::new(0);
static REFUSED_OVERLAP: AtomicU64 = AtomicU64::new(0);
static REFUSED_ALLOWLISTED: AtomicU64 = AtomicU64::new(0);
static REFUSED_DUPLICATE: AtomicU64 = AtomicU64::new(0);
static DECIDED_BY_RULE: AtomicU64 = AtomicU64::new(0);
static DECIDED_ALLOWED: AtomicU64 = AtomicU64::new(0);
static DECIDED_EXPIRED_SKIPPED: AtomicU64 = AtomicU64::new(0);

const START_MS: u64 = 1_700_000_000_000;
const MONO_NS: u64 = 5_000_000_000_000;

fn request(s: &RuleSpec) -> RuleRequest {
    RuleRequest {
        action: if s.pps.is_some() { "rate_limit" } else { "drop" }.into(),
        prefix: s.prefix.to_string(),
        classes: s.classes.iter().map(|c| c.to_string()).collect(),
        sport: s.sport.map(Span::one),
        dport: s.dport.map(Span::one),
        pps: s.pps,
        ttl_ms: s.ttl_s.map(|t| t * 1000),
        ..Default::default()
    }
}

fn one_case(ops: &[Op], packets: &[Packet]) -> Result<(), TestCaseError> {
    let mut set = RuleSet::new(Limits { max_rules: 48, max_allow: 16 });
    let mut now = START_MS;
    for op in ops {
        match op {
            Op::Rule(spec) => {
                let req = request(spec);
                let checked = req.check().map_err(|e| TestCaseError::fail(format!("{req:?}: {e}")))?;
                prop_assert_eq!(checked.prefix, spec.prefix, "the prefix survives its text form");
                // What the documented rules predict, before the set is asked.
                let allowlisted = set.allow().iter().any(|a| a.prefix.contains(&spec.prefix));
                let probe = Rule {
                    id: String::new(),
                    index: 0,
                    prefix: checked.prefix,
                    classes: checked.shape.classes.clone(),
                    m: checked.shape.m.clone(),
                    action: checked.shape.action.clone(),
                    reason: String::new(),
                    origin: checked.origin.clone(),
                    created_ms: now,
                    expires_ms: None,
                };
                let duplicate = set.rules().iter().any(|r| r.same_match(&probe));
                let mut prefixes: Vec<&Prefix> = set.rules().iter().map(|r| &r.prefix).collect();
                prefixes.push(&spec.prefix);
                let overlap = max_cover(&prefixes) > MAX_SLOTS;
                let full = set.rules().len() as u32 >= set.limits().max_rules;
                match set.add_rule(&req, now) {
                    Ok(_) => {
                        prop_assert!(!allowlisted && !duplicate && !full && !overlap, "{req:?} was added");
                        ADDED.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(RuleError::Allowlisted { .. }) => {
                        prop_assert!(allowlisted);
                        REFUSED_ALLOWLISTED.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(RuleError::Duplicate(_)) => {
                        prop_assert!(!allowlisted && duplicate);
                        REFUSED_DUPLICATE.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(RuleError::RulesFull(_)) => {
                        prop_assert!(!allowlisted && !duplicate && full);
                    }
                    Err(RuleError::Plan(e)) => {
                        prop_assert!(!allowlisted && !duplicate && !full && overlap, "{req:?} refused: {e}");
                        REFUSED_OVERLAP.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("{req:?}: unexpected refusal: {e}"))),
                }
            }
            Op::Allow(p) => {
                // Allowing succeeds unless the prefix is already on the list or the list is full.
                let _ = set.add_allow(*p, AllowSource::Operator, "", now);
            }
            Op::Remove(i) => {
                if !set.rules().is_empty() {
                    let id = set.rules()[i % set.rules().len()].id.clone();
                    set.remove(&id).map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
            }
            Op::Expire => {
                set.expire(now);
            }
            Op::Wait(ms) => now += ms,
        }
    }

    let clock = Clock { wall_ms: now, mono_ns: MONO_NS };
    let plan = set.plan(clock).map_err(|e| TestCaseError::fail(format!("the set in force does not plan: {e}")))?;
    for p in packets {
        let at_ms = now + p.after_ms;
        let at_ns = MONO_NS + p.after_ms * 1_000_000;
        let want = brute(set.rules(), set.allow(), p, at_ms);
        let got = compiled(&plan, p, at_ns);
        prop_assert_eq!(
            got,
            want,
            "packet {:?} at +{} ms; rules {:#?}; allow {:?}",
            p,
            p.after_ms,
            set.rules(),
            set.allow()
        );
        if let Verdict::Rule { allowed, .. } = got {
            DECIDED_BY_RULE.fetch_add(1, Ordering::Relaxed);
            if allowed {
                DECIDED_ALLOWED.fetch_add(1, Ordering::Relaxed);
            }
        }
        let expired_cover =
            set.rules().iter().any(|r| holds(&r.prefix, p.src) && r.expires_ms.is_some_and(|t| t <= at_ms));
        if expired_cover {
            DECIDED_EXPIRED_SKIPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

#[test]
fn the_compiled_trie_decides_as_the_rules_read() {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let strategy = (prop::collection::vec(op(), 1..60), prop::collection::vec(packet(), 1..64));
    let result = runner.run(&strategy, |(ops, packets)| one_case(&ops, &packets));
    if let Err(e) = result {
        panic!("{e}");
    }
    let counts = [
        ("rules added", &ADDED),
        ("refused: more than MAX_SLOTS rules over one address", &REFUSED_OVERLAP),
        ("refused: inside the allowlist", &REFUSED_ALLOWLISTED),
        ("refused: a duplicate", &REFUSED_DUPLICATE),
        ("packets a rule decided", &DECIDED_BY_RULE),
        ("of those, allowlisted", &DECIDED_ALLOWED),
        ("packets from a source under an expired rule", &DECIDED_EXPIRED_SKIPPED),
    ];
    for (what, n) in counts {
        let n = n.load(Ordering::Relaxed);
        eprintln!("plan property: {what}: {n}");
        assert!(n > 0, "no case exercised: {what}");
    }
}
