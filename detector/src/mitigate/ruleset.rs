//! The rules and the allowlist in force, and every change to them: the one
//! place a rule is added, refused, expired or removed. Pure: time comes in
//! as an argument, and the kernel learns of a change through [`RuleSet::plan`].

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::clock::Clock;

use detector_common::rules::RuleSlot;

use super::{
    plan::{self, KernelRule, Plan, PlanError},
    prefix::Prefix,
    rule::{check_reason, Action, Checked, Origin, RequestError, Rule, RuleRequest},
};

/// Where an allowlist entry comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllowSource {
    /// The host's own addresses, gateways and loopback, found at start.
    Host,
    /// The configuration file.
    Config,
    /// `detector allow add` or the API.
    Operator,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowEntry {
    /// `a<N>`; host and config entries are numbered afresh at each start.
    pub id: String,
    pub prefix: Prefix,
    pub source: AllowSource,
    pub reason: String,
    pub created_ms: u64,
}

/// Capacity, from the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_rules: u32,
    pub max_allow: u32,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RuleError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("{prefix} is inside allowlist entry {id} ({allowed}, {why}); a rule there could never act")]
    Allowlisted { prefix: Prefix, id: String, allowed: Prefix, why: String },
    #[error("rule {0} already matches the same packets; remove it first")]
    Duplicate(String),
    #[error("the rule table is full ({0} rules); remove a rule or raise mitigation.max_rules")]
    RulesFull(u32),
    #[error("the allowlist is full ({0} entries); raise mitigation.max_allow")]
    AllowFull(u32),
    #[error("no {0} id is left (ids are numbered below {MAX_ID})")]
    IdsUsedUp(&'static str),
    #[error("{prefix} is already on the allowlist as {id}")]
    AlreadyAllowed { prefix: Prefix, id: String },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("no rule or allowlist entry '{0}'")]
    NotFound(String),
    #[error("allowlist entry {id} ({prefix}) comes from the {from} and cannot be removed here")]
    Protected { id: String, prefix: Prefix, from: &'static str },
}

/// What the state directory keeps across restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub next_rule: u64,
    pub next_allow: u64,
    pub rules: Vec<Rule>,
    /// Operator entries only; host and config entries are found afresh.
    pub allow: Vec<AllowEntry>,
}

/// What a removal took out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Removed {
    Rule(Box<Rule>),
    Allow(AllowEntry),
}

/// What [`RuleSet::restore`] did beside restoring, for the log.
#[derive(Debug, Default)]
pub struct Restored {
    /// Saved rules not restored, and why.
    pub refused: Vec<(Rule, String)>,
    /// Saved allowlist entries not restored, and why.
    pub refused_allow: Vec<(AllowEntry, String)>,
    /// Saved rules the pinned tries no longer hold (removed while the file
    /// could not be written): not restored.
    pub stale: Vec<Rule>,
    /// Rules the pinned tries hold that the file lacked: recovered.
    pub recovered: Vec<Rule>,
    /// Saved id counters not taken, and why.
    pub counters: Vec<String>,
}

/// The reason a recovered rule carries.
pub const RECOVERED_REASON: &str = "recovered from the kernel: the state directory had no record of it";

/// The number in a rule id `r<N>`.
fn rule_id(id: &str) -> Option<u64> {
    numbered(id, 'r')
}

/// The number in an allowlist id `a<N>`.
fn allow_id(id: &str) -> Option<u64> {
    numbered(id, 'a')
}

/// Ids are numbered below [`MAX_ID`].
fn numbered(id: &str, letter: char) -> Option<u64> {
    id.strip_prefix(letter)
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse().ok())
        .filter(|n| *n < MAX_ID)
}

/// Rule and allowlist ids are numbered from 1 to below this (2^53, what a
/// JSON number holds exactly): far more than a host ever hands out, and an
/// id's successor is always a number. A saved counter past it (a damaged
/// or hand-edited `rules.json`) is not taken; the ids saved number on.
pub const MAX_ID: u64 = 1 << 53;

/// A saved rule, checked as a new rule is: through [`RuleRequest::check`],
/// which every other way in also takes. Returns its id's number.
fn check_saved(r: &Rule, ids: &[String]) -> Result<u64, String> {
    let n = rule_id(&r.id).ok_or_else(|| format!("'{}' is not a rule id", r.id))?;
    if ids.contains(&r.id) {
        return Err(format!("id {} is used twice", r.id));
    }
    let shape = r.shape_request().check().map_err(|e| e.to_string())?;
    // The byte burst is not in the request (a recovered rule keeps the
    // kernel's): it must only fit the slot's byte tolerance.
    if let (Some(bps), Some(b)) = (r.action.rates().2, r.action.byte_burst()) {
        if super::plan::byte_tolerance_ns(bps, b).is_none() {
            return Err(format!("its byte burst {b} is out of range at {bps} bytes per second"));
        }
    }
    // As saved, the fields are in the form the check gives them (sorted
    // classes, a rate limit's byte burst aside: a recovered rule keeps the
    // kernel's).
    let same_action = match (&shape.action, &r.action) {
        (Action::Drop, Action::Drop) => true,
        (a, b) => a.name() == b.name() && a.rates() == b.rates(),
    };
    if !same_action || shape.classes != r.classes {
        return Err("its fields are not in the form a rule is saved in".into());
    }
    if r.expires_ms.is_some_and(|t| t < r.created_ms) {
        return Err("it expires before it was created".into());
    }
    Ok(n)
}

/// Two slots that match the same packets the same way (the expiry, which
/// the wall clock converts, may differ by a clock adjustment).
fn same_slot(a: &RuleSlot, b: &RuleSlot) -> bool {
    let both_expire = (a.expires_ns == 0) == (b.expires_ns == 0);
    let mut a = *a;
    a.expires_ns = b.expires_ns;
    a == *b && both_expire
}

#[derive(Clone, Debug)]
pub struct RuleSet {
    limits: Limits,
    rules: Vec<Rule>,
    allow: Vec<AllowEntry>,
    next_rule: u64,
    next_allow: u64,
}

impl RuleSet {
    pub fn new(limits: Limits) -> RuleSet {
        RuleSet { limits, rules: Vec::new(), allow: Vec::new(), next_rule: 1, next_allow: 1 }
    }

    /// Restores what was saved, under the current limits, each saved rule
    /// and allowlist entry checked as a new one would be (a hand-edited or
    /// damaged file cannot install a rule the API would refuse).
    ///
    /// `kernel` is what the pinned tries of an earlier run hold, when there
    /// are any: the rules really in force. It wins over the file, which may
    /// be stale (a disk that was full) or unreadable: a saved rule the
    /// kernel no longer holds is not restored, and a rule the kernel holds
    /// that the file lacks is recovered from its slot (without its id,
    /// reason and origin, which only the file kept). Without pinned tries
    /// (a fresh attach), the file is all there is.
    pub fn restore(&mut self, saved: Saved, kernel: Option<&[KernelRule]>, clock: Clock) -> Restored {
        let mut out = Restored::default();
        let mut ids: Vec<String> = Vec::new();
        let mut counter = |n: u64, what: &str| {
            if n <= MAX_ID {
                return n;
            }
            out.counters
                .push(format!("{what} {n} is past the last id ({MAX_ID}): numbering goes on from the saved ids"));
            0
        };
        let mut next_rule = counter(saved.next_rule, "next_rule");
        let mut next_allow = counter(saved.next_allow, "next_allow");
        for a in saved.allow {
            let why = match allow_id(&a.id) {
                _ if a.source != AllowSource::Operator => Some("only operator entries are saved".to_string()),
                None => Some(format!("'{}' is not an allowlist id", a.id)),
                Some(_) if ids.contains(&a.id) => Some(format!("id {} is used twice", a.id)),
                Some(_) if check_reason(&a.reason).is_err() => Some(RequestError::Reason.to_string()),
                Some(_) if self.allow.iter().any(|e| e.prefix == a.prefix) => None,
                Some(n) => {
                    next_allow = next_allow.max(n + 1);
                    ids.push(a.id.clone());
                    if self.allow.len() as u32 >= self.limits.max_allow {
                        Some(RuleError::AllowFull(self.limits.max_allow).to_string())
                    } else {
                        self.allow.push(a.clone());
                        None
                    }
                }
            };
            if let Some(why) = why {
                out.refused_allow.push((a, why));
            }
        }
        let mut checked: Vec<Rule> = Vec::new();
        for r in saved.rules {
            match check_saved(&r, &ids) {
                Ok(n) => {
                    next_rule = next_rule.max(n + 1);
                    ids.push(r.id.clone());
                    checked.push(r);
                }
                Err(why) => out.refused.push((r, why)),
            }
        }
        self.next_rule = self.next_rule.max(next_rule);
        self.next_allow = self.next_allow.max(next_allow);

        let to_install: Vec<Rule> = match kernel {
            None => checked,
            Some(kernel) => {
                let mut keep = Vec::new();
                for r in checked {
                    let found = kernel.iter().any(|k| {
                        k.index == r.index && k.prefix == r.prefix && same_slot(&k.slot, &plan::slot(&r, clock))
                    });
                    if found {
                        keep.push(r);
                    } else {
                        out.stale.push(r);
                    }
                }
                for k in kernel {
                    if keep.iter().any(|r| r.index == k.index) {
                        continue;
                    }
                    let expires_ms = k.expires_ms(clock);
                    if expires_ms.is_some_and(|t| t <= clock.wall_ms) {
                        continue;
                    }
                    let Some(action) = k.action() else { continue };
                    if self.next_rule >= MAX_ID {
                        out.counters.push(format!(
                            "no rule id left for the kernel's rule in slot {} (ids are numbered below {MAX_ID}): not \
                             recovered",
                            k.index
                        ));
                        continue;
                    }
                    let rule = Rule {
                        id: format!("r{}", self.next_rule),
                        index: k.index,
                        prefix: k.prefix,
                        classes: k.classes(),
                        m: k.matcher(),
                        action,
                        reason: RECOVERED_REASON.into(),
                        origin: Origin::recovered(),
                        created_ms: clock.wall_ms,
                        expires_ms,
                    };
                    self.next_rule += 1;
                    out.recovered.push(rule.clone());
                    keep.push(rule);
                }
                keep
            }
        };
        for r in to_install {
            if let Err(e) = self.admit(&r) {
                out.refused.push((r, e.to_string()));
                continue;
            }
            self.rules.push(r);
            if let Err(e) = self.plan(Clock { wall_ms: 0, mono_ns: 0 }) {
                let r = self.rules.pop().expect("just pushed");
                out.refused.push((r, e.to_string()));
            }
        }
        out.recovered.retain(|r| self.rules.iter().any(|o| o.id == r.id));
        out
    }

    /// Checks a rule against the allowlist, the capacity and the rules in force.
    fn admit(&self, r: &Rule) -> Result<(), RuleError> {
        self.conflicts(r)?;
        if r.index == 0 || r.index > self.limits.max_rules || self.rules.iter().any(|o| o.index == r.index) {
            return Err(RuleError::RulesFull(self.limits.max_rules));
        }
        Ok(())
    }

    /// A rule the allowlist makes pointless, or one already in force.
    fn conflicts(&self, r: &Rule) -> Result<(), RuleError> {
        if let Some(a) = self.allow.iter().find(|a| a.prefix.contains(&r.prefix)) {
            return Err(RuleError::Allowlisted {
                prefix: r.prefix,
                id: a.id.clone(),
                allowed: a.prefix,
                why: allow_why(a),
            });
        }
        if let Some(d) = self.rules.iter().find(|o| o.same_match(r)) {
            return Err(RuleError::Duplicate(d.id.clone()));
        }
        Ok(())
    }

    pub fn saved(&self) -> Saved {
        Saved {
            next_rule: self.next_rule,
            next_allow: self.next_allow,
            rules: self.rules.clone(),
            allow: self.allow.iter().filter(|a| a.source == AllowSource::Operator).cloned().collect(),
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn allow(&self) -> &[AllowEntry] {
        &self.allow
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Adds a rule; `now_ms` is its creation time and the start of its TTL.
    pub fn add_rule(&mut self, req: &RuleRequest, now_ms: u64) -> Result<Rule, RuleError> {
        let c = req.check()?;
        self.add_checked(c, now_ms)
    }

    pub fn add_checked(&mut self, c: Checked, now_ms: u64) -> Result<Rule, RuleError> {
        if self.next_rule >= MAX_ID {
            return Err(RuleError::IdsUsedUp("rule"));
        }
        let mut rule = Rule {
            id: format!("r{}", self.next_rule),
            index: 0,
            prefix: c.prefix,
            classes: c.shape.classes,
            m: c.shape.m,
            action: c.shape.action,
            reason: c.shape.reason,
            origin: c.origin,
            created_ms: now_ms,
            expires_ms: c.shape.ttl.map(|t| now_ms + t.as_millis() as u64),
        };
        // The most telling refusal first: a pointless or repeated rule is
        // that, whether or not there is room.
        self.conflicts(&rule)?;
        rule.index = self.free_index().ok_or(RuleError::RulesFull(self.limits.max_rules))?;
        self.rules.push(rule.clone());
        // Checked on the real plan, so an overlap refused here is refused
        // before the kernel sees anything.
        if let Err(e) = self.plan(Clock { wall_ms: now_ms, mono_ns: 0 }) {
            self.rules.pop();
            return Err(e.into());
        }
        self.next_rule += 1;
        Ok(rule)
    }

    /// Adds an allowlist entry. Allowing always succeeds while there is room:
    /// the rules it overrides are returned so the caller can say so.
    pub fn add_allow(
        &mut self,
        prefix: Prefix,
        source: AllowSource,
        reason: &str,
        now_ms: u64,
    ) -> Result<(AllowEntry, Vec<Rule>), RuleError> {
        if let Some(a) = self.allow.iter().find(|a| a.prefix == prefix) {
            return Err(RuleError::AlreadyAllowed { prefix, id: a.id.clone() });
        }
        if self.allow.len() as u32 >= self.limits.max_allow {
            return Err(RuleError::AllowFull(self.limits.max_allow));
        }
        if self.next_allow >= MAX_ID {
            return Err(RuleError::IdsUsedUp("allowlist"));
        }
        let entry = AllowEntry {
            id: format!("a{}", self.next_allow),
            prefix,
            source,
            reason: reason.chars().filter(|c| !c.is_control()).take(super::rule::MAX_REASON).collect(),
            created_ms: now_ms,
        };
        self.next_allow += 1;
        self.allow.push(entry.clone());
        let overridden = self.rules.iter().filter(|r| prefix.contains(&r.prefix)).cloned().collect();
        Ok((entry, overridden))
    }

    /// Removes a rule or an operator allowlist entry by id.
    pub fn remove(&mut self, id: &str) -> Result<Removed, RuleError> {
        if let Some(i) = self.rules.iter().position(|r| r.id == id) {
            return Ok(Removed::Rule(Box::new(self.rules.remove(i))));
        }
        if let Some(i) = self.allow.iter().position(|a| a.id == id) {
            let a = &self.allow[i];
            if a.source != AllowSource::Operator {
                let from = if a.source == AllowSource::Host { "host's own addresses" } else { "configuration file" };
                return Err(RuleError::Protected { id: a.id.clone(), prefix: a.prefix, from });
            }
            return Ok(Removed::Allow(self.allow.remove(i)));
        }
        Err(RuleError::NotFound(id.to_string()))
    }

    /// Removes the rules whose TTL has run out at `now_ms`.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Rule> {
        let (gone, kept) =
            std::mem::take(&mut self.rules).into_iter().partition(|r| r.expires_ms.is_some_and(|t| t <= now_ms));
        self.rules = kept;
        gone
    }

    /// The counters index the next rule gets.
    pub fn free_index(&self) -> Option<u32> {
        (1..=self.limits.max_rules).find(|i| !self.rules.iter().any(|r| r.index == *i))
    }

    /// Removes every rule.
    pub fn clear_rules(&mut self) -> Vec<Rule> {
        std::mem::take(&mut self.rules)
    }

    /// When the next rule expires, if any does.
    pub fn next_expiry(&self) -> Option<u64> {
        self.rules.iter().filter_map(|r| r.expires_ms).min()
    }

    /// The trie's contents for the rules and allowlist in force.
    pub fn plan(&self, clock: Clock) -> Result<Plan, PlanError> {
        let rules: Vec<&Rule> = self.rules.iter().collect();
        let allow: Vec<Prefix> = self.allow.iter().map(|a| a.prefix).collect();
        plan::plan(&rules, &allow, clock)
    }

    /// Time left on a rule at `now_ms`.
    pub fn ttl_left(rule: &Rule, now_ms: u64) -> Option<Duration> {
        rule.expires_ms.map(|t| Duration::from_millis(t.saturating_sub(now_ms)))
    }
}

pub(crate) fn allow_why(a: &AllowEntry) -> String {
    match a.source {
        AllowSource::Host => format!("the host's own: {}", a.reason),
        AllowSource::Config => "from the configuration".into(),
        AllowSource::Operator if a.reason.is_empty() => "added by an operator".into(),
        AllowSource::Operator => format!("added by an operator: {}", a.reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::Span;

    const LIMITS: Limits = Limits { max_rules: 4, max_allow: 3 };

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn drop(prefix: &str) -> RuleRequest {
        RuleRequest { action: "drop".into(), prefix: prefix.into(), ..Default::default() }
    }

    #[test]
    fn rules_get_ids_and_indexes_and_expire_on_time() {
        let mut set = RuleSet::new(LIMITS);
        let mut req = drop("10.0.0.0/8");
        req.ttl_ms = Some(5_000);
        let a = set.add_rule(&req, 1_000).unwrap();
        assert_eq!((a.id.as_str(), a.index, a.expires_ms), ("r1", 1, Some(6_000)));
        let b = set.add_rule(&drop("192.0.2.0/24"), 1_000).unwrap();
        assert_eq!((b.id.as_str(), b.index), ("r2", 2));
        assert_eq!(set.next_expiry(), Some(6_000));
        assert!(set.expire(5_999).is_empty());
        assert_eq!(set.expire(6_000), vec![a]);
        // Index 1 is free again; the id is not reused.
        let c = set.add_rule(&drop("198.51.100.0/24"), 7_000).unwrap();
        assert_eq!((c.id.as_str(), c.index), ("r3", 1));
    }

    #[test]
    fn a_rule_inside_the_allowlist_is_refused_naming_the_entry() {
        let mut set = RuleSet::new(LIMITS);
        set.add_allow(p("10.0.0.0/24"), AllowSource::Host, "address of veth0", 0).unwrap();
        let err = set.add_rule(&drop("10.0.0.7"), 0).unwrap_err().to_string();
        assert_eq!(
            err,
            "10.0.0.7/32 is inside allowlist entry a1 (10.0.0.0/24, the host's own: address of veth0); a rule there could never act"
        );
        // A wider prefix is fine: the allowlisted part keeps passing.
        set.add_rule(&drop("10.0.0.0/8"), 0).unwrap();
        let (_, overridden) = set.add_allow(p("10.0.0.0/8"), AllowSource::Operator, "", 0).unwrap();
        assert_eq!(overridden.len(), 1, "allowing always works, and names the rules it overrides");
    }

    #[test]
    fn full_tables_refuse_and_never_evict() {
        let mut set = RuleSet::new(LIMITS);
        for i in 0..4 {
            set.add_rule(&drop(&format!("10.0.{i}.0/24")), 0).unwrap();
        }
        assert_eq!(set.add_rule(&drop("10.0.9.0/24"), 0).unwrap_err(), RuleError::RulesFull(4));
        assert_eq!(set.rules().len(), 4);
        for i in 0..3 {
            set.add_allow(p(&format!("192.0.2.{i}")), AllowSource::Operator, "", 0).unwrap();
        }
        let err = set.add_allow(p("192.0.2.9"), AllowSource::Operator, "", 0).unwrap_err();
        assert!(err.to_string().contains("allowlist is full (3 entries)"));
        assert!(matches!(
            set.add_allow(p("192.0.2.1"), AllowSource::Operator, "", 0),
            Err(RuleError::AlreadyAllowed { .. })
        ));
    }

    #[test]
    fn duplicates_and_overlaps_are_refused() {
        let mut set = RuleSet::new(Limits { max_rules: 20, max_allow: 3 });
        set.add_rule(&drop("10.0.0.0/8"), 0).unwrap();
        assert_eq!(set.add_rule(&drop("10.0.0.0/8"), 0).unwrap_err(), RuleError::Duplicate("r1".into()));
        for port in 1..=7 {
            let mut r = drop("10.0.0.0/16");
            r.dport = Some(Span::one(port));
            set.add_rule(&r, 0).unwrap();
        }
        let mut r = drop("10.0.0.0/24");
        r.dport = Some(Span::one(99));
        let err = set.add_rule(&r, 0).unwrap_err();
        assert!(matches!(err, RuleError::Plan(_)), "{err}");
        assert_eq!(set.rules().len(), 8, "the refused rule left nothing behind");
    }

    #[test]
    fn remove_and_protected_entries() {
        let mut set = RuleSet::new(LIMITS);
        set.add_allow(p("127.0.0.0/8"), AllowSource::Host, "loopback", 0).unwrap();
        set.add_allow(p("192.0.2.1"), AllowSource::Operator, "monitoring", 0).unwrap();
        set.add_rule(&drop("10.0.0.0/8"), 0).unwrap();
        assert!(matches!(set.remove("r1"), Ok(Removed::Rule(_))));
        assert!(matches!(set.remove("a2"), Ok(Removed::Allow(_))));
        assert!(set.remove("a1").unwrap_err().to_string().contains("host's own addresses"));
        assert_eq!(set.remove("r9").unwrap_err().to_string(), "no rule or allowlist entry 'r9'");
    }

    #[test]
    fn save_and_restore() {
        let mut set = RuleSet::new(LIMITS);
        set.add_allow(p("192.0.2.1"), AllowSource::Operator, "", 0).unwrap();
        set.add_allow(p("127.0.0.0/8"), AllowSource::Host, "loopback", 0).unwrap();
        set.add_rule(&drop("10.0.0.0/8"), 0).unwrap();
        set.add_rule(&drop("10.1.0.0/16"), 0).unwrap();
        let saved = set.saved();
        assert_eq!(saved.allow.len(), 1, "host entries are found afresh");
        let json = serde_json::to_string(&saved).unwrap();
        let back: Saved = serde_json::from_str(&json).unwrap();
        assert_eq!(back, saved);

        // A new start where 10.1.0.0/16 is now the host's own network.
        let mut fresh = RuleSet::new(LIMITS);
        fresh.add_allow(p("10.1.0.0/16"), AllowSource::Host, "address of eth1", 0).unwrap();
        let r = fresh.restore(back, None, CLOCK);
        assert_eq!(r.refused.len(), 1);
        assert_eq!(r.refused[0].0.prefix, p("10.1.0.0/16"));
        assert_eq!(fresh.rules().len(), 1);
        assert_eq!(fresh.rules()[0].index, 1, "indexes survive, and with them the counters");
        assert_eq!(fresh.add_rule(&drop("198.51.100.0/24"), 0).unwrap().id, "r3");
    }

    const CLOCK: Clock = Clock { wall_ms: 1_000_000, mono_ns: 5_000_000_000 };

    fn saved_with(rules: Vec<Rule>) -> Saved {
        Saved { next_rule: 1, next_allow: 1, rules, allow: vec![] }
    }

    #[test]
    fn saved_rules_are_checked_like_new_ones() {
        let mut set = RuleSet::new(LIMITS);
        let good = set.add_rule(&drop("10.0.0.0/8"), 0).unwrap();
        let mut zero = good.clone();
        zero.id = "r7".into();
        zero.index = 2;
        zero.prefix = p("192.0.2.0/24");
        zero.action = Action::RateLimit { pps: 0, burst: 0, bps: None, byte_burst: None };
        let mut twice = good.clone();
        twice.index = 3;
        twice.prefix = p("198.51.100.0/24");
        let mut bad_id = good.clone();
        bad_id.id = "x1".into();
        bad_id.index = 4;
        bad_id.prefix = p("203.0.113.0/24");
        let mut control = good.clone();
        control.id = "r9".into();
        control.index = 4;
        control.prefix = p("203.0.113.0/24");
        control.reason = "a\u{1b}[2Jb".into();
        let mut high = good.clone();
        high.id = "r40".into();
        high.index = 2;
        high.prefix = p("100.64.0.0/10");

        let mut fresh = RuleSet::new(LIMITS);
        let mut saved = saved_with(vec![good.clone(), zero, twice, bad_id, control, high]);
        saved.next_rule = 2;
        let r = fresh.restore(saved, None, CLOCK);
        let refused: Vec<(&str, &str)> = r.refused.iter().map(|(r, why)| (r.id.as_str(), why.as_str())).collect();
        assert_eq!(refused.len(), 4, "{refused:?}");
        assert!(refused[0].0 == "r7" && refused[0].1.contains("rate 0"), "{refused:?}");
        assert!(refused[1].0 == "r1" && refused[1].1.contains("used twice"), "{refused:?}");
        assert!(refused[2].0 == "x1" && refused[2].1.contains("not a rule id"), "{refused:?}");
        assert!(refused[3].0 == "r9" && refused[3].1.contains("control characters"), "{refused:?}");
        assert_eq!(fresh.rules().iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), vec!["r1", "r40"]);
        // A new rule never takes an id a restored one has.
        assert_eq!(fresh.add_rule(&drop("192.0.2.0/24"), 0).unwrap().id, "r41");
    }

    #[test]
    fn saved_ids_and_counters_past_the_last_id_are_not_taken() {
        let mut set = RuleSet::new(LIMITS);
        let good = set.add_rule(&drop("10.0.0.0/8"), 0).unwrap();
        let mut last = good.clone();
        last.id = format!("r{MAX_ID}");
        last.index = 2;
        last.prefix = p("192.0.2.0/24");
        let mut saved = saved_with(vec![good, last]);
        saved.next_rule = u64::MAX;
        saved.next_allow = MAX_ID + 1;
        let mut fresh = RuleSet::new(LIMITS);
        let r = fresh.restore(saved, None, CLOCK);
        assert_eq!(r.refused.len(), 1);
        assert!(r.refused[0].1.contains("not a rule id"), "{:?}", r.refused);
        assert_eq!(r.counters.len(), 2, "{:?}", r.counters);
        assert!(r.counters[0].starts_with("next_rule 18446744073709551615 is past the last id"), "{:?}", r.counters);
        // Numbering goes on from the ids saved.
        assert_eq!(fresh.add_rule(&drop("198.51.100.0/24"), 0).unwrap().id, "r2");

        // At the last id, adding is refused, by name.
        let mut saved = fresh.saved();
        saved.next_rule = MAX_ID;
        let mut end = RuleSet::new(LIMITS);
        assert!(end.restore(saved, None, CLOCK).counters.is_empty());
        assert_eq!(end.add_rule(&drop("203.0.113.0/24"), 0), Err(RuleError::IdsUsedUp("rule")));
    }

    #[test]
    fn a_saved_byte_burst_past_its_slot_is_refused() {
        let mut set = RuleSet::new(LIMITS);
        let req =
            RuleRequest { action: "rate_limit".into(), pps: Some(100), bps: Some(1_000_000), ..drop("10.0.0.0/8") };
        let good = set.add_rule(&req, 0).unwrap();
        let mut huge = good.clone();
        huge.id = "r2".into();
        huge.index = 2;
        huge.prefix = p("192.0.2.0/24");
        huge.action = Action::RateLimit { pps: 100, burst: 10, bps: Some(1_000_000), byte_burst: Some(u64::MAX) };
        let mut fresh = RuleSet::new(LIMITS);
        let r = fresh.restore(saved_with(vec![good, huge]), None, CLOCK);
        assert_eq!(r.refused.len(), 1, "{:?}", r.refused);
        assert!(r.refused[0].1.contains("byte burst 18446744073709551615 is out of range"), "{:?}", r.refused);
        fresh.plan(CLOCK).unwrap();
    }

    #[test]
    fn the_kernel_wins_over_a_stale_or_lost_file() {
        let mut before = RuleSet::new(LIMITS);
        let mut req = drop("10.0.0.0/8");
        req.reason = Some("kept".into());
        let kept = before.add_rule(&req, CLOCK.wall_ms).unwrap();
        let removed = before.add_rule(&drop("192.0.2.0/24"), CLOCK.wall_ms).unwrap();
        let saved = before.saved();
        // Since the file was written: r2 removed, a rate limit added, and
        // the disk full throughout.
        before.remove(&removed.id).unwrap();
        let mut rl = RuleRequest {
            action: "rate_limit".into(),
            prefix: "198.51.100.0/24".into(),
            pps: Some(100),
            classes: vec!["udp".into()],
            dport: Some(Span::one(27015)),
            ..Default::default()
        };
        rl.ttl_ms = Some(600_000);
        let added = before.add_rule(&rl, CLOCK.wall_ms).unwrap();
        let in_kernel = plan::rules_in(&before.plan(CLOCK).unwrap());

        let mut after = RuleSet::new(LIMITS);
        let r = after.restore(saved, Some(&in_kernel), CLOCK);
        assert_eq!(r.stale.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), vec!["r2"]);
        assert_eq!(r.recovered.len(), 1);
        let got: Vec<&Rule> = after.rules().iter().collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], &kept, "a rule the file and the kernel agree on keeps its id and reason");
        let rec = got[1];
        assert_eq!((rec.index, rec.prefix, rec.m.dport), (added.index, added.prefix, added.m.dport));
        assert_eq!(rec.classes, vec!["udp"]);
        assert_eq!(rec.action, added.action);
        assert_eq!(rec.expires_ms, added.expires_ms);
        assert_eq!(rec.origin, Origin::recovered());
        assert_ne!(rec.id, kept.id);
        assert_eq!(after.plan(CLOCK).unwrap(), before.plan(CLOCK).unwrap(), "the kernel is left as it was");

        // An unreadable file (nothing saved): everything comes back from the kernel.
        let mut lost = RuleSet::new(LIMITS);
        let r = lost.restore(Saved::default(), Some(&in_kernel), CLOCK);
        assert_eq!(r.recovered.len(), 2);
        assert_eq!(lost.plan(CLOCK).unwrap(), before.plan(CLOCK).unwrap());
    }
}
