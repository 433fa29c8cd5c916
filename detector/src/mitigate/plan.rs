//! Compiling rules and the allowlist into the XDP program's LPM trie.
//!
//! The trie gives one entry per lookup: the longest prefix that holds the
//! source. So every entry must carry every rule that covers its prefix,
//! not only the rules written for exactly that prefix, and the allowlist
//! flag of every allowlisted prefix that holds it. Built here, the XDP
//! side stays one lookup and a fixed walk over [`MAX_SLOTS`] slots.

use std::collections::BTreeMap;

use detector_common::{
    rules::{
        dst_words, RuleEntry, RuleSlot, ACTION_DROP, ACTION_RATE_LIMIT, ACTION_SYN_COOKIES, ALL_CLASSES, ENTRY_ALLOW,
        MAX_SLOTS, SLOT_AGGREGATE, SLOT_DST, SLOT_SPARE_KNOWN,
    },
    TrafficClass,
};
use thiserror::Error;

use crate::clock::Clock;

use super::{
    prefix::Prefix,
    rule::{class_mask, Action, Match, Rule},
};
use crate::span::Span;

/// The trie's contents: one entry per prefix.
pub type Plan = BTreeMap<Prefix, RuleEntry>;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("{prefix} would be covered by {count} rules ({ids}); at most {MAX_SLOTS} rules may cover one address")]
    TooManyOverlapping { prefix: Prefix, count: usize, ids: String },
}

/// The slot a rule becomes in the kernel.
pub fn slot(rule: &Rule, clock: Clock) -> RuleSlot {
    let mut s = RuleSlot {
        index: rule.index,
        class_mask: rule.class_mask(),
        action: ACTION_DROP,
        expires_ns: rule.expires_ms.map(|t| clock.mono_ns_at(t)).unwrap_or(0),
        ..RuleSlot::any()
    };
    let m = &rule.m;
    if let Some(p) = m.sport {
        (s.sport_lo, s.sport_hi) = (p.lo, p.hi);
    }
    if let Some(p) = m.dport {
        (s.dport_lo, s.dport_hi) = (p.lo, p.hi);
    }
    if let Some(l) = m.length {
        (s.len_lo, s.len_hi) = (l.lo, l.hi);
    }
    if let Some(t) = m.ip_ttl {
        (s.ttl_lo, s.ttl_hi) = (t.lo, t.hi);
    }
    if let Some(d) = m.dst {
        let (net, bits) = d.key();
        let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
        s.dst = dst_words(&net);
        s.dst_mask = dst_words(&mask.to_be_bytes());
        s.flags |= SLOT_DST;
    }
    if rule.prefix.is_any_source() {
        s.flags |= SLOT_SPARE_KNOWN;
    }
    let (pps, burst, bps, byte_burst) = match &rule.action {
        Action::Drop => return s,
        Action::SynCookies => {
            // Known peers are handled by the SYN-cookie program itself:
            // their SYNs are answered too, their other segments pass.
            s.action = ACTION_SYN_COOKIES;
            s.flags &= !SLOT_SPARE_KNOWN;
            return s;
        }
        Action::RateLimit { pps, burst, bps, byte_burst } => (Some(*pps), Some(*burst), *bps, *byte_burst),
        Action::AggregateLimit { pps, burst, bps, byte_burst } => {
            s.flags |= SLOT_AGGREGATE;
            (*pps, *burst, *bps, *byte_burst)
        }
    };
    s.action = ACTION_RATE_LIMIT;
    if let Some(pps) = pps {
        s.interval_ns = 1_000_000_000 / pps.max(1);
        s.tolerance_ns = s.interval_ns * burst.unwrap_or(1).saturating_sub(1);
    }
    if let Some(bps) = bps {
        s.byte_interval_ps = byte_interval_ps(bps);
        // In range: a rule's byte burst is checked where the rule is
        // (`RuleRequest::check` computes it; a saved one is checked
        // against this).
        s.byte_tolerance_ns = byte_tolerance_ns(bps, byte_burst.unwrap_or(bps / 10)).unwrap_or(u64::MAX);
    }
    s
}

/// The time one byte takes at `bps` bytes per second, in picoseconds.
fn byte_interval_ps(bps: u64) -> u64 {
    1_000_000_000_000 / bps.max(1)
}

/// How far ahead of its rate the byte bucket may run, in ns, for a burst of
/// `burst_bytes` at `bps`; none when that does not fit a slot.
pub fn byte_tolerance_ns(bps: u64, burst_bytes: u64) -> Option<u64> {
    burst_bytes.checked_mul(byte_interval_ps(bps)).map(|ps| ps / 1000)
}

/// Which of two rules covering the same address decides first: drops, then
/// SYN cookies, then rate limits, per-source limits before aggregate ones (the stronger action
/// wins), then the longer prefix, then the narrower scope (more match
/// fields given, then fewer classes), then the older rule. Older is by the rule's number, not its counter index: indexes are
/// reused as rules come and go, so a new rule can hold a lower one.
fn precedence(r: &Rule) -> (u8, std::cmp::Reverse<u8>, u32, u64, u32) {
    let action = match r.action {
        Action::Drop => 0,
        Action::SynCookies => 1,
        Action::RateLimit { .. } => 2,
        Action::AggregateLimit { .. } => 3,
    };
    let open = 5 - r.m.narrowing();
    (action, std::cmp::Reverse(r.prefix.bits()), open * 64 + r.class_mask().count_ones(), number(r), r.index)
}

/// A rule's number: ids are `r<N>`, given in creation order and never
/// reused. An id of another form sorts after every numbered one.
fn number(r: &Rule) -> u64 {
    r.id.strip_prefix('r').and_then(|n| n.parse().ok()).unwrap_or(u64::MAX)
}

/// Builds the trie's contents. Fails, naming the prefix and the rules, when
/// more than [`MAX_SLOTS`] rules cover one prefix.
pub fn plan(rules: &[&Rule], allow: &[Prefix], clock: Clock) -> Result<Plan, PlanError> {
    let mut prefixes: Vec<Prefix> = rules.iter().map(|r| r.prefix).chain(allow.iter().copied()).collect();
    prefixes.sort();
    prefixes.dedup();

    let mut sorted: Vec<&Rule> = rules.to_vec();
    sorted.sort_by_key(|r| precedence(r));

    let mut out = Plan::new();
    for p in prefixes {
        let covering: Vec<&Rule> = sorted.iter().copied().filter(|r| r.prefix.contains(&p)).collect();
        if covering.len() > MAX_SLOTS {
            let ids = covering.iter().map(|r| r.id.as_str()).collect::<Vec<_>>().join(", ");
            return Err(PlanError::TooManyOverlapping { prefix: p, count: covering.len(), ids });
        }
        let mut entry = RuleEntry::default();
        if allow.iter().any(|a| a.contains(&p)) {
            entry.allow = ENTRY_ALLOW;
        }
        for (slot_out, r) in entry.slots.iter_mut().zip(covering) {
            *slot_out = slot(r, clock);
            if slot_out.flags & SLOT_DST != 0 {
                entry.dst = 1;
            }
        }
        out.insert(p, entry);
    }
    Ok(out)
}

/// What to write to and delete from the trie to go from `old` to `new`.
/// Writes come first, then deletions, so no address is ever left uncovered
/// by a rule that stays in force.
pub fn diff<'a>(old: &Plan, new: &'a Plan) -> (Vec<(&'a Prefix, &'a RuleEntry)>, Vec<Prefix>) {
    let writes = new.iter().filter(|(p, e)| old.get(p) != Some(e)).collect();
    let deletes = old.keys().filter(|p| !new.contains_key(p)).copied().collect();
    (writes, deletes)
}

/// A rule as the kernel holds it: what a trie left by an earlier run says,
/// without the id, reason and origin only the state directory keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRule {
    /// Its counters' index (the rule's identity in the kernel).
    pub index: u32,
    /// The shortest prefix whose entry holds it: the rule's own (entries of
    /// longer prefixes inherit it).
    pub prefix: Prefix,
    pub slot: RuleSlot,
}

impl KernelRule {
    /// Traffic classes of the slot's mask, as a rule names them: `tcp`,
    /// `udp` and `icmp` for whole groups, single classes for the rest,
    /// nothing for every class.
    pub fn classes(&self) -> Vec<String> {
        let mut mask = self.slot.class_mask;
        if mask & ALL_CLASSES == ALL_CLASSES {
            return Vec::new();
        }
        let mut out = Vec::new();
        for group in ["tcp", "udp", "icmp"] {
            let bits = class_mask(&[group.to_string()]).unwrap_or(0);
            if bits != 0 && mask & bits == bits {
                out.push(group.to_string());
                mask &= !bits;
            }
        }
        for c in TrafficClass::ALL {
            if mask & (1 << c.index()) != 0 {
                out.push(c.name().to_string());
            }
        }
        out
    }

    /// The slot's action, back in a rule's terms: the rates and bursts
    /// that [`slot`] turns into exactly this slot again (a rate may read a
    /// little above the one first given: 3,000,000 bytes/s comes back as
    /// 3,000,003, whose interval is the same whole number of picoseconds).
    pub fn action(&self) -> Option<Action> {
        let s = &self.slot;
        match s.action {
            ACTION_DROP => Some(Action::Drop),
            ACTION_SYN_COOKIES => Some(Action::SynCookies),
            ACTION_RATE_LIMIT if s.flags & SLOT_AGGREGATE != 0 => {
                let pps = (s.interval_ns > 0).then(|| (1_000_000_000 / s.interval_ns).max(1));
                let burst = pps.map(|_| s.tolerance_ns / s.interval_ns + 1);
                let bps = 1_000_000_000_000u64.checked_div(s.byte_interval_ps).map(|b| b.max(1));
                let byte_burst = bps.map(|_| s.byte_tolerance_ns.saturating_mul(1000).div_ceil(s.byte_interval_ps));
                (pps.is_some() || bps.is_some()).then_some(Action::AggregateLimit { pps, burst, bps, byte_burst })
            }
            ACTION_RATE_LIMIT if s.interval_ns > 0 => {
                // The largest rate with this interval: the rule's own rate
                // lies in (1e9 / (interval + 1), 1e9 / interval], so this one
                // does too.
                let pps = (1_000_000_000 / s.interval_ns).max(1);
                let burst = s.tolerance_ns / s.interval_ns + 1;
                // The same for the byte limit: the largest byte rate with
                // this interval, the smallest byte burst with this tolerance.
                let bps = 1_000_000_000_000u64.checked_div(s.byte_interval_ps).map(|b| b.max(1));
                let byte_burst = bps.map(|_| s.byte_tolerance_ns.saturating_mul(1000).div_ceil(s.byte_interval_ps));
                Some(Action::RateLimit { pps, burst, bps, byte_burst })
            }
            _ => None,
        }
    }

    /// The slot's match fields, back in a rule's terms.
    pub fn matcher(&self) -> Match {
        let s = &self.slot;
        let span16 = |lo: u16, hi: u16| (lo, hi) != (0, u16::MAX) && lo <= hi;
        Match {
            sport: span16(s.sport_lo, s.sport_hi).then_some(Span { lo: s.sport_lo, hi: s.sport_hi }),
            dport: span16(s.dport_lo, s.dport_hi).then_some(Span { lo: s.dport_lo, hi: s.dport_hi }),
            length: span16(s.len_lo, s.len_hi).then_some(Span { lo: s.len_lo, hi: s.len_hi }),
            ip_ttl: ((s.ttl_lo, s.ttl_hi) != (0, u8::MAX) && s.ttl_lo <= s.ttl_hi)
                .then_some(Span { lo: s.ttl_lo, hi: s.ttl_hi }),
            dst: (s.flags & SLOT_DST != 0).then(|| dst_prefix(&s.dst, &s.dst_mask)).flatten(),
        }
    }

    /// When the slot stops matching, on the wall clock; `None`: never.
    pub fn expires_ms(&self, clock: Clock) -> Option<u64> {
        (self.slot.expires_ns != 0).then(|| {
            let delta_ms = (self.slot.expires_ns as i128 - clock.mono_ns as i128) / 1_000_000;
            (clock.wall_ms as i128 + delta_ms).max(0) as u64
        })
    }
}

/// The destination prefix of a slot's words, when the mask is a prefix.
fn dst_prefix(dst: &[u64; 2], mask: &[u64; 2]) -> Option<Prefix> {
    let bytes = |w: &[u64; 2]| {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&w[0].to_ne_bytes());
        b[8..].copy_from_slice(&w[1].to_ne_bytes());
        u128::from_be_bytes(b)
    };
    let m = bytes(mask);
    let bits = m.leading_ones();
    if m.count_ones() != bits {
        return None;
    }
    Prefix::from_key(bytes(dst).to_be_bytes(), bits)
}

/// The rules a trie holds: one per counters index, at the shortest prefix
/// that carries it. The inverse of [`plan`], for a trie an earlier run left
/// pinned when the state directory's copy is missing or unreadable.
pub fn rules_in(plan: &Plan) -> Vec<KernelRule> {
    let mut out: BTreeMap<u32, KernelRule> = BTreeMap::new();
    for (prefix, entry) in plan {
        for slot in entry.slots.iter().filter(|s| s.index != 0) {
            let shorter = out.get(&slot.index).is_none_or(|k| prefix.bits() < k.prefix.bits());
            if shorter {
                out.insert(slot.index, KernelRule { index: slot.index, prefix: *prefix, slot: *slot });
            }
        }
    }
    out.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mitigate::rule::Origin;

    fn rule(id: u32, prefix: &str, action: Action) -> Rule {
        Rule {
            id: format!("r{id}"),
            index: id,
            prefix: prefix.parse().unwrap(),
            classes: vec![],
            m: Match::default(),
            action,
            reason: String::new(),
            origin: Origin::operator(),
            created_ms: 0,
            expires_ms: None,
        }
    }

    const CLOCK: Clock = Clock { wall_ms: 1_000_000, mono_ns: 5_000_000_000 };

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    /// What the XDP program decides for `src`: the longest matching entry,
    /// then its first matching slot (a drop or rate limit), unless allowed.
    fn lookup<'a>(plan: &'a Plan, src: &str) -> Option<&'a RuleEntry> {
        let host = p(src);
        plan.iter().filter(|(k, _)| k.contains(&host)).max_by_key(|(k, _)| k.bits()).map(|(_, e)| e)
    }

    #[test]
    fn a_more_specific_entry_inherits_the_covering_rules() {
        let wide = rule(1, "10.0.0.0/8", Action::Drop);
        let mut narrow = rule(2, "10.1.0.0/16", Action::RateLimit { pps: 10, burst: 5, bps: None, byte_burst: None });
        narrow.classes = vec!["udp".into()];
        let plan = plan(&[&wide, &narrow], &[], CLOCK).unwrap();
        let e = lookup(&plan, "10.1.2.3").unwrap();
        // The drop covers every class, so it decides first even for UDP.
        assert_eq!(e.slots[0].index, 1);
        assert_eq!(e.slots[1].index, 2);
        assert_eq!(e.slots[1].class_mask.count_ones(), 4);
        assert_eq!(e.slots[1].interval_ns, 100_000_000);
        assert_eq!(e.slots[1].tolerance_ns, 400_000_000);
        assert_eq!(e.slots[2].index, 0);
        let e = lookup(&plan, "10.2.0.1").unwrap();
        assert_eq!((e.slots[0].index, e.slots[1].index), (1, 0));
        assert!(lookup(&plan, "11.0.0.1").is_none());
    }

    #[test]
    fn a_syn_cookie_rule_acts_on_syns_and_what_may_carry_a_cookie_back() {
        let mut cookies = rule(2, "::/0", Action::SynCookies);
        cookies.m.dport = Some(crate::span::Span::one(80));
        let block = rule(1, "10.0.0.0/8", Action::Drop);
        let plan = plan(&[&cookies, &block], &[], CLOCK).unwrap();
        let e = lookup(&plan, "192.0.2.9").unwrap();
        let s = &e.slots[0];
        assert_eq!(s.action, ACTION_SYN_COOKIES);
        assert_eq!((s.dport_lo, s.dport_hi), (80, 80));
        let bit = |c: TrafficClass| 1u32 << c as u32;
        assert_eq!(
            s.class_mask,
            bit(TrafficClass::TcpSyn) | bit(TrafficClass::TcpAck) | bit(TrafficClass::HttpRequest)
        );
        // The SYN-cookie program handles known peers itself.
        assert_eq!(s.flags & detector_common::rules::SLOT_SPARE_KNOWN, 0);
        // A drop on the source decides first; the slot reads back as the rule's action.
        let e = lookup(&plan, "10.0.0.1").unwrap();
        assert_eq!((e.slots[0].index, e.slots[1].index), (1, 2));
        assert_eq!(KernelRule { index: 2, slot: e.slots[1], prefix: p("::/0") }.action(), Some(Action::SynCookies));
    }

    #[test]
    fn an_allowlisted_address_inside_a_blocked_prefix_passes() {
        let wide = rule(1, "10.0.0.0/8", Action::Drop);
        let plan = plan(&[&wide], &[p("10.0.0.1/32"), p("127.0.0.0/8")], CLOCK).unwrap();
        let e = lookup(&plan, "10.0.0.1").unwrap();
        assert_eq!(e.allow, ENTRY_ALLOW);
        // The rule is still there, so its counters see what it let through.
        assert_eq!(e.slots[0].index, 1);
        assert_eq!(lookup(&plan, "10.0.0.2").unwrap().allow, 0);
        assert_eq!(lookup(&plan, "127.0.0.1").unwrap().allow, ENTRY_ALLOW);
    }

    #[test]
    fn slot_fields() {
        let mut r = rule(3, "192.0.2.0/24", Action::Drop);
        r.classes = vec!["tcp_syn".into()];
        r.m.dport = Some(Span::one(80));
        r.m.sport = Some(Span::one(11211));
        r.expires_ms = Some(CLOCK.wall_ms + 2_000);
        let s = slot(&r, CLOCK);
        assert_eq!(s.class_mask, 1 << TrafficClass::TcpSyn.index());
        assert_eq!((s.sport_lo, s.sport_hi, s.dport_lo, s.dport_hi, s.action), (11211, 11211, 80, 80, ACTION_DROP));
        assert_eq!(s.expires_ns, CLOCK.mono_ns + 2_000_000_000);
        let mut r = rule(4, "::/0", Action::RateLimit { pps: 1000, burst: 1, bps: Some(1_000_000), byte_burst: None });
        r.expires_ms = Some(1);
        let s = slot(&r, CLOCK);
        assert_eq!(s.class_mask, ALL_CLASSES);
        assert_eq!((s.interval_ns, s.tolerance_ns), (1_000_000, 0));
        assert_eq!(s.byte_interval_ps, 1_000_000);
        assert_eq!(s.byte_tolerance_ns, 100_000_000);
        assert_eq!(s.expires_ns, 1, "a time already past expires at once");
    }

    #[test]
    fn signature_slots() {
        let mut r = rule(5, "0.0.0.0/0", Action::Drop);
        r.classes = vec!["udp".into()];
        r.m = Match {
            sport: Some(Span { lo: 1024, hi: 65535 }),
            dport: Some(Span::one(27015)),
            dst: Some("192.0.2.0/24".parse().unwrap()),
            length: Some(Span { lo: 60, hi: 80 }),
            ip_ttl: Some(Span { lo: 50, hi: 64 }),
        };
        let s = slot(&r, CLOCK);
        assert_eq!((s.sport_lo, s.sport_hi, s.dport_lo, s.dport_hi), (1024, 65535, 27015, 27015));
        assert_eq!((s.len_lo, s.len_hi, s.ttl_lo, s.ttl_hi), (60, 80, 50, 64));
        assert_eq!(s.flags, SLOT_DST | SLOT_SPARE_KNOWN, "a rule on every source spares known peers");
        let mut addr = [0u8; 16];
        addr[10..].copy_from_slice(&[0xff, 0xff, 192, 0, 2, 9]);
        assert!(s.covers_dst(&dst_words(&addr)));
        addr[14] = 3;
        assert!(!s.covers_dst(&dst_words(&addr)));
        // The trie entry knows a slot reads the destination.
        let plan = plan(&[&r], &[], CLOCK).unwrap();
        assert_eq!(plan.values().next().unwrap().dst, 1);
        // Read back from the kernel, the rule is the same rule.
        let back = rules_in(&plan);
        assert_eq!(back[0].matcher(), r.m);
        assert_eq!(back[0].classes(), vec!["udp"]);
        // A rule that names a source does not spare known peers.
        let named = rule(6, "198.51.100.0/24", Action::Drop);
        assert_eq!(slot(&named, CLOCK).flags & SLOT_SPARE_KNOWN, 0);
        // Any source in IPv6 spares them too; a matcher with every field
        // open reads back as no fields.
        let any6 = rule(7, "::/0", Action::Drop);
        assert_ne!(slot(&any6, CLOCK).flags & SLOT_SPARE_KNOWN, 0);
        let k = KernelRule { index: 7, prefix: any6.prefix, slot: slot(&any6, CLOCK) };
        assert_eq!(k.matcher(), Match::default());
    }

    #[test]
    fn aggregate_slots_read_back() {
        for (pps, burst, bps) in
            [(Some(20_000), Some(2_000), None), (None, None, Some(5_000_000)), (Some(100), Some(5), Some(150_000))]
        {
            let byte_burst = bps.map(|b: u64| (b / 10).max(7500));
            let r = rule(8, "0.0.0.0/0", Action::AggregateLimit { pps, burst, bps, byte_burst });
            let s = slot(&r, CLOCK);
            assert_eq!(s.action, ACTION_RATE_LIMIT);
            assert_ne!(s.flags & SLOT_AGGREGATE, 0);
            assert_eq!(s.interval_ns == 0, pps.is_none(), "no packet limit without pps");
            let k = KernelRule { index: 8, prefix: r.prefix, slot: s };
            let back = k.action().unwrap();
            let again = rule(8, "0.0.0.0/0", back.clone());
            assert_eq!(slot(&again, CLOCK), s, "{back:?} plans to the same slot");
        }
    }

    #[test]
    fn too_many_rules_on_one_prefix_are_refused_by_name() {
        let rules: Vec<Rule> = (1..=9)
            .map(|i| {
                let mut r = rule(i, "10.0.0.0/8", Action::Drop);
                r.m.dport = Some(Span::one(i as u16));
                r
            })
            .collect();
        let refs: Vec<&Rule> = rules.iter().collect();
        let err = plan(&refs, &[], CLOCK).unwrap_err();
        assert!(err.to_string().starts_with("10.0.0.0/8 would be covered by 9 rules (r1, r2"), "{err}");
        assert!(plan(&refs[..8], &[], CLOCK).is_ok());
    }

    /// Found by the property test (`plan_props`): with equal action, prefix
    /// and scope width, the older rule must decide even when a newer one
    /// reused a lower counter index.
    #[test]
    fn among_equals_the_older_rule_decides_whatever_its_index() {
        let limit = |pps| Action::RateLimit { pps, burst: 5, bps: None, byte_burst: None };
        let mut older = rule(7, "10.0.0.0/8", limit(10));
        older.classes = vec!["icmp".into(), "tcp_syn".into()];
        let mut newer = rule(1, "10.0.0.0/8", limit(1000));
        newer.id = "r9".into();
        newer.classes = vec!["icmp".into(), "tcp_synack".into()];
        for rules in [[&older, &newer], [&newer, &older]] {
            let plan = plan(&rules, &[], CLOCK).unwrap();
            let e = lookup(&plan, "10.1.2.3").unwrap();
            assert_eq!((e.slots[0].index, e.slots[1].index), (7, 1), "r7 is older than r9");
        }
    }

    #[test]
    fn diff_writes_before_it_deletes() {
        let a = rule(1, "10.0.0.0/8", Action::Drop);
        let b = rule(2, "10.1.0.0/16", Action::Drop);
        let old = plan(&[&a, &b], &[], CLOCK).unwrap();
        let new = plan(&[&a], &[], CLOCK).unwrap();
        let (w, d) = diff(&old, &new);
        assert!(w.is_empty());
        assert_eq!(d, vec![p("10.1.0.0/16")]);
        let (w, d) = diff(&new, &old);
        assert_eq!(w.len(), 1);
        assert!(d.is_empty());
    }

    #[test]
    fn the_rules_a_trie_holds_are_read_back() {
        let wide = rule(1, "10.0.0.0/8", Action::Drop);
        let mut narrow = rule(
            2,
            "10.1.0.0/16",
            Action::RateLimit { pps: 50, burst: 7, bps: Some(3_000_000), byte_burst: Some(400_000) },
        );
        narrow.classes = vec!["udp".into(), "tcp_syn".into()];
        narrow.m.dport = Some(Span::one(53));
        narrow.expires_ms = Some(CLOCK.wall_ms + 60_000);
        let mut v6 = rule(5, "2001:db8::/32", Action::Drop);
        v6.classes = vec!["icmp".into(), "tcp".into()];
        let rules = [&wide, &narrow, &v6];
        let plan = plan(&rules, &[p("10.1.2.3/32")], CLOCK).unwrap();
        let back = rules_in(&plan);
        assert_eq!(
            back.iter().map(|k| (k.index, k.prefix)).collect::<Vec<_>>(),
            vec![(1, p("10.0.0.0/8")), (2, p("10.1.0.0/16")), (5, p("2001:db8::/32")),]
        );
        for (k, r) in back.iter().zip(rules) {
            assert_eq!(k.slot, slot(r, CLOCK));
            assert_eq!(k.expires_ms(CLOCK), r.expires_ms);
            assert_eq!(class_mask(&k.classes()).unwrap(), r.class_mask());
            // A rule rebuilt from what the kernel holds plans to the same slot
            // (rates come back rounded: 3 Mbyte/s reads as 3000003).
            let mut rebuilt = r.clone();
            rebuilt.action = k.action().unwrap();
            rebuilt.classes = k.classes();
            assert_eq!(slot(&rebuilt, CLOCK), k.slot, "{}", r.id);
        }
        assert_eq!(back[0].action(), Some(Action::Drop));
        assert_eq!(
            back[1].action(),
            Some(Action::RateLimit { pps: 50, burst: 7, bps: Some(3_000_003), byte_burst: Some(400_000) })
        );
        assert_eq!(back[1].classes(), vec!["udp", "tcp_syn"]);
        assert_eq!(back[2].classes(), vec!["tcp", "icmp"]);
        assert!(back[0].classes().is_empty());
        assert!(rules_in(&Plan::new()).is_empty());
    }

    #[test]
    fn a_recovered_rate_limit_plans_to_the_very_same_slot() {
        // Rates and bursts across their whole ranges (a fixed LCG: the same
        // cases every run); each slot read back must plan to itself.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |range: std::ops::RangeInclusive<u64>| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            range.start() + (x >> 11) % (range.end() - range.start() + 1)
        };
        for _ in 0..200_000 {
            let pps = next(1..=1_000_000_000);
            let burst = next(1..=10_000_000);
            let bps = if next(0..=1) == 1 { Some(next(1500..=100_000_000_000)) } else { None };
            let byte_burst = bps.map(|b| (b / 10).max(7500) + next(0..=1000));
            let r = rule(1, "10.0.0.0/8", Action::RateLimit { pps, burst, bps, byte_burst });
            let s = slot(&r, CLOCK);
            let k = KernelRule { index: 1, prefix: r.prefix, slot: s };
            let mut back = r.clone();
            back.action = k.action().unwrap();
            assert_eq!(slot(&back, CLOCK), s, "{:?} came back as {:?}", r.action, back.action);
        }
    }
}
