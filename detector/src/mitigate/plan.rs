//! Compiling rules and the allowlist into the XDP program's LPM trie.
//!
//! The trie gives one entry per lookup: the longest prefix that holds the
//! source. So every entry must carry every rule that covers its prefix,
//! not only the rules written for exactly that prefix, and the allowlist
//! flag of every allowlisted prefix that holds it. Built here, the XDP
//! side stays one lookup and a fixed walk over [`MAX_SLOTS`] slots.

use std::collections::BTreeMap;

use detector_common::rules::{RuleEntry, RuleSlot, ACTION_DROP, ACTION_RATE_LIMIT, ENTRY_ALLOW, MAX_SLOTS};
use thiserror::Error;

use super::{
    prefix::Prefix,
    rule::{Action, Rule},
};

/// The trie's contents: one entry per prefix.
pub type Plan = BTreeMap<Prefix, RuleEntry>;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("{prefix} would be covered by {count} rules ({ids}); at most {MAX_SLOTS} rules may cover one address")]
    TooManyOverlapping { prefix: Prefix, count: usize, ids: String },
}

/// Converts wall-clock milliseconds to the kernel's `CLOCK_MONOTONIC`
/// nanoseconds (what `bpf_ktime_get_ns` reads).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub wall_ms: u64,
    pub mono_ns: u64,
}

impl Clock {
    pub fn mono_ns_at(&self, wall_ms: u64) -> u64 {
        let delta_ns = (wall_ms as i128 - self.wall_ms as i128) * 1_000_000;
        // A time already past expires at once (1 ns after boot is long gone).
        (self.mono_ns as i128 + delta_ns).max(1) as u64
    }
}

/// The slot a rule becomes in the kernel.
pub fn slot(rule: &Rule, clock: Clock) -> RuleSlot {
    let mut s = RuleSlot {
        index: rule.index,
        class_mask: rule.class_mask(),
        sport: rule.sport.unwrap_or(0),
        dport: rule.dport.unwrap_or(0),
        action: ACTION_DROP,
        expires_ns: rule.expires_ms.map(|t| clock.mono_ns_at(t)).unwrap_or(0),
        ..Default::default()
    };
    if let Action::RateLimit { pps, burst, bps, byte_burst } = &rule.action {
        s.action = ACTION_RATE_LIMIT;
        s.interval_ns = 1_000_000_000 / (*pps).max(1);
        s.tolerance_ns = s.interval_ns * burst.saturating_sub(1);
        if let Some(bps) = bps {
            s.byte_interval_ps = 1_000_000_000_000 / (*bps).max(1);
            let burst_bytes = byte_burst.unwrap_or(*bps / 10);
            s.byte_tolerance_ns = burst_bytes * s.byte_interval_ps / 1000;
        }
    }
    s
}

/// Which of two rules covering the same address decides first: drops before
/// rate limits (the stronger action wins), then the longer prefix, then the
/// narrower scope (more ports given, then fewer classes), then the older
/// rule. Older is by the rule's number, not its counter index: indexes are
/// reused as rules come and go, so a new rule can hold a lower one.
fn precedence(r: &Rule) -> (u8, std::cmp::Reverse<u8>, u32, u64, u32) {
    let action = match r.action {
        Action::Drop => 0,
        Action::RateLimit { .. } => 1,
    };
    let ports = r.sport.is_none() as u32 + r.dport.is_none() as u32;
    (action, std::cmp::Reverse(r.prefix.bits()), ports * 64 + r.class_mask().count_ones(), number(r), r.index)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mitigate::rule::Origin;
    use detector_common::{rules::ALL_CLASSES, TrafficClass};

    fn rule(id: u32, prefix: &str, action: Action) -> Rule {
        Rule {
            id: format!("r{id}"),
            index: id,
            prefix: prefix.parse().unwrap(),
            classes: vec![],
            sport: None,
            dport: None,
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
        r.dport = Some(80);
        r.sport = Some(11211);
        r.expires_ms = Some(CLOCK.wall_ms + 2_000);
        let s = slot(&r, CLOCK);
        assert_eq!(s.class_mask, 1 << TrafficClass::TcpSyn.index());
        assert_eq!((s.sport, s.dport, s.action), (11211, 80, ACTION_DROP));
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
    fn too_many_rules_on_one_prefix_are_refused_by_name() {
        let rules: Vec<Rule> = (1..=9)
            .map(|i| {
                let mut r = rule(i, "10.0.0.0/8", Action::Drop);
                r.dport = Some(i as u16);
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
}
