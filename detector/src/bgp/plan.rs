//! What should be announced, and the changes that make the daemon announce
//! exactly that. Pure: time comes in as an argument.
//!
//! - [`Desired`] holds the announcements in force, each with its origin and
//!   expiry ([`Entry`]); it admits new ones through the one check
//!   ([`Scope::check`]), drops them at their TTL, and is what persistence
//!   saves ([`Saved`]) and metrics count ([`Desired::counts`]). When the
//!   saved set was lost (an unreadable `bgp.json`), what the daemon still
//!   announces is taken back ([`Desired::recover`]), as the XDP rules are
//!   read back from the kernel: the daemon wins.
//! - [`reconcile`] compares it with what the daemon holds and gives the
//!   changes: withdraw what is announced and not wanted (stale, expired,
//!   left by a previous run), announce what is wanted and missing or
//!   announced differently; nothing else. It is stateless, so a controller
//!   restart, a daemon restart (nothing held: everything announced again)
//!   and a session flap (the daemon keeps its paths and re-advertises them
//!   itself: nothing to do) are all the same call.
//! - [`Planner`] paces those changes: at most `max_changes_per_minute`
//!   sent in any minute. Withdrawals go first and are never held back (a
//!   withdrawal held back keeps traffic dropped upstream); announcements
//!   over the budget are deferred, not dropped: the next step computes
//!   them again. In dry run nothing is sent: the planner records what it
//!   would have sent and remembers it as announced, so each change is
//!   recorded once.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{
    announce::{Announcement, Kind},
    check::{Refused, Scope},
};
use crate::mitigate::rule::Origin;

/// The window of the change budget.
pub const BUDGET_WINDOW_MS: u64 = 60_000;
/// Changes the planner remembers ([`Planner::recent`]).
pub const RECENT_CHANGES: usize = 256;
/// The TTL of an announcement taken back from the daemon
/// ([`Desired::recover`]): the daemon holds no TTLs, and an announcement
/// nobody renews must not stay in force for ever.
pub const RECOVERED_TTL: Duration = Duration::from_secs(3600);

/// An announcement wanted in force, who asked for it and until when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub announcement: Announcement,
    pub origin: Origin,
    pub created_ms: u64,
    /// Withdrawn at this time; never when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// Kept until this time even when its incident resolves sooner (a
    /// runbook step's `hold`); see [`Desired::release_where`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_until_ms: Option<u64>,
}

impl Entry {
    pub fn key(&self) -> String {
        self.announcement.key()
    }

    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|t| t <= now_ms)
    }
}

/// What persistence keeps across restarts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub entries: Vec<Entry>,
    /// The saved set was lost (the file was unreadable) and the daemon's
    /// paths have not been listed since: the next listing takes them back
    /// ([`Desired::recover`]). Saved, so that a controller killed before
    /// that listing does not withdraw them at its next start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recover: bool,
}

/// The announcements that should be in force, by key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    entries: BTreeMap<String, Entry>,
}

impl Desired {
    pub fn new() -> Desired {
        Desired::default()
    }

    /// Checks `entry` (see [`Scope::check`]) and puts it in force, in place
    /// of one with the same key (returned: a blackhole given another
    /// community, a FlowSpec rule another action or TTL).
    pub fn admit(&mut self, mut entry: Entry, scope: &Scope) -> Result<Option<Entry>, Refused> {
        entry.announcement = entry.announcement.normalized();
        let key = entry.key();
        let others = self.entries.len() - usize::from(self.entries.contains_key(&key));
        scope.check(&entry.announcement, others)?;
        Ok(self.entries.insert(key, entry))
    }

    pub fn remove(&mut self, key: &str) -> Option<Entry> {
        self.entries.remove(key)
    }

    /// Removes every entry `pred` picks (those of an incident that
    /// resolved, say), returning them.
    pub fn remove_where(&mut self, mut pred: impl FnMut(&Entry) -> bool) -> Vec<Entry> {
        let keys: Vec<String> = self.entries.iter().filter(|(_, e)| pred(e)).map(|(k, _)| k.clone()).collect();
        keys.iter().filter_map(|k| self.entries.remove(k)).collect()
    }

    /// An incident's end, for the entries `pred` picks: those with no
    /// hold, or whose hold has ended, are removed and returned first; the
    /// others stay until their hold ends (their expiry brought forward to
    /// it, never pushed back) and are returned second.
    pub fn release_where(&mut self, mut pred: impl FnMut(&Entry) -> bool, now_ms: u64) -> (Vec<Entry>, Vec<Entry>) {
        let held_until = |e: &Entry| e.hold_until_ms.filter(|t| *t > now_ms);
        let gone = self.remove_where(|e| pred(e) && held_until(e).is_none());
        let mut held = Vec::new();
        for e in self.entries.values_mut().filter(|e| pred(e)) {
            if let Some(until) = held_until(e) {
                e.expires_ms = Some(e.expires_ms.map_or(until, |t| t.min(until)));
                held.push(e.clone());
            }
        }
        (gone, held)
    }

    /// Removes the entries whose TTL has run out by `now_ms`.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Entry> {
        self.remove_where(|e| e.expired(now_ms))
    }

    /// When the next entry expires.
    pub fn next_expiry(&self) -> Option<u64> {
        self.entries.values().filter_map(|e| e.expires_ms).min()
    }

    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries per kind, both kinds present (`detector_bgp_announcements{type}`).
    pub fn counts(&self) -> BTreeMap<Kind, usize> {
        let mut c = BTreeMap::from([(Kind::Blackhole, 0), (Kind::Flowspec, 0)]);
        for e in self.entries.values() {
            *c.entry(e.announcement.kind()).or_default() += 1;
        }
        c
    }

    pub fn saved(&self) -> Saved {
        Saved { entries: self.entries.values().cloned().collect(), recover: false }
    }

    /// The saved entries, each checked as a new one is (the networks or
    /// limits may have changed since); those expired by `now_ms` are left
    /// out, so the next [`reconcile`] withdraws them if the daemon still
    /// holds them. Returns the refused ones with why.
    pub fn restore(saved: Saved, scope: &Scope, now_ms: u64) -> (Desired, Vec<(Entry, String)>) {
        let mut d = Desired::new();
        let mut refused = Vec::new();
        for e in saved.entries {
            if e.expired(now_ms) {
                continue;
            }
            if d.entries.contains_key(&e.announcement.clone().normalized().key()) {
                refused.push((e, "its key is saved twice".to_string()));
                continue;
            }
            if let Err(why) = d.admit(e.clone(), scope) {
                refused.push((e, why.to_string()));
            }
        }
        (d, refused)
    }

    /// Takes back what the daemon announces (`held`) and is not in force:
    /// the saved set was lost, and these are the announcements of the last
    /// run. Each passes the one check, in key order, and is in force with
    /// origin `recovered` (who asked for it is lost) until `now_ms` +
    /// [`RECOVERED_TTL`] (its TTL is lost). Refused ones are left out, so
    /// the next [`reconcile`] withdraws them. An entry already in force for
    /// the same key stays as it is. Returns (taken back, refused with why).
    pub fn recover(
        &mut self,
        held: &[Announcement],
        scope: &Scope,
        now_ms: u64,
    ) -> (Vec<Entry>, Vec<(Announcement, Refused)>) {
        let mut held: Vec<Announcement> = held.iter().map(|a| a.clone().normalized()).collect();
        held.sort_by_key(Announcement::key);
        held.dedup_by_key(|a| a.key());
        let (mut back, mut refused) = (Vec::new(), Vec::new());
        for a in held {
            if self.entries.contains_key(&a.key()) {
                continue;
            }
            let e = Entry {
                announcement: a.clone(),
                origin: Origin::recovered(),
                created_ms: now_ms,
                expires_ms: Some(now_ms + RECOVERED_TTL.as_millis() as u64),
                hold_until_ms: None,
            };
            match self.admit(e.clone(), scope) {
                Ok(_) => back.push(e),
                Err(why) => refused.push((a, why)),
            }
        }
        (back, refused)
    }
}

/// One change to what the daemon announces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", content = "announcement", rename_all = "snake_case")]
pub enum Change {
    /// Announce it (replacing an announcement with the same key).
    Announce(Announcement),
    Withdraw(Announcement),
}

impl Change {
    pub fn announcement(&self) -> &Announcement {
        match self {
            Change::Announce(a) | Change::Withdraw(a) => a,
        }
    }

    pub fn is_withdraw(&self) -> bool {
        matches!(self, Change::Withdraw(_))
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Announce(a) => write!(f, "announce {a}"),
            Change::Withdraw(a) => write!(f, "withdraw {}", a.key()),
        }
    }
}

/// The changes that make `actual` (what the daemon holds) equal to what
/// `desired` wants in force at `now_ms`: withdrawals first, then
/// announcements, each in key order.
pub fn reconcile(desired: &Desired, actual: &[Announcement], now_ms: u64) -> Vec<Change> {
    changes(desired.entries.values(), actual, now_ms)
}

/// [`reconcile`] over entries as saved (`bgp.json`): what the TTL keeper
/// compares the daemon's paths with while no controller runs.
pub fn changes<'a>(wanted: impl IntoIterator<Item = &'a Entry>, actual: &[Announcement], now_ms: u64) -> Vec<Change> {
    let wanted: BTreeMap<String, &Announcement> =
        wanted.into_iter().filter(|e| !e.expired(now_ms)).map(|e| (e.key(), &e.announcement)).collect();
    let held: BTreeMap<String, Announcement> =
        actual.iter().map(|a| a.clone().normalized()).map(|a| (a.key(), a)).collect();
    let mut changes: Vec<Change> =
        held.iter().filter(|(k, _)| !wanted.contains_key(*k)).map(|(_, a)| Change::Withdraw(a.clone())).collect();
    for (k, a) in &wanted {
        if held.get(k) != Some(*a) {
            changes.push(Change::Announce((*a).clone()));
        }
    }
    changes
}

/// A change the planner sent (or, in dry run, would have).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub at_ms: u64,
    pub change: Change,
    pub dry_run: bool,
}

/// Changes made since the start, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub announced: u64,
    pub withdrawn: u64,
    /// Announcements a step held back for the budget (counted each time).
    pub deferred: u64,
}

/// What one [`Planner::step`] decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Step {
    /// To send to the daemon now, in order (empty in dry run).
    pub apply: Vec<Change>,
    /// Held back for the budget: the next step computes them again.
    pub deferred: Vec<Change>,
    /// When the budget has room again, if anything was deferred.
    pub retry_at_ms: Option<u64>,
}

/// Paces the changes [`reconcile`] gives (see the [module](self)).
#[derive(Clone, Debug)]
pub struct Planner {
    per_minute: u32,
    dry_run: bool,
    /// When each change of the last minute was sent.
    sent: VecDeque<u64>,
    /// In dry run: what would be announced.
    pretend: Vec<Announcement>,
    recent: VecDeque<Record>,
    counters: Counters,
}

impl Planner {
    pub fn new(max_changes_per_minute: u32, dry_run: bool) -> Planner {
        Planner {
            per_minute: max_changes_per_minute.max(1),
            dry_run,
            sent: VecDeque::new(),
            pretend: Vec::new(),
            recent: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// The changes to send now to make the daemon's `actual` paths what
    /// `desired` wants, within the budget. In dry run `actual` is ignored
    /// (the daemon holds nothing of ours) and nothing is to be sent.
    pub fn step(&mut self, desired: &Desired, actual: &[Announcement], now_ms: u64) -> Step {
        while self.sent.front().is_some_and(|t| now_ms.saturating_sub(*t) >= BUDGET_WINDOW_MS) {
            self.sent.pop_front();
        }
        let changes = reconcile(desired, if self.dry_run { &self.pretend } else { actual }, now_ms);
        let mut step = Step::default();
        for c in changes {
            // Withdrawals are never held back; they use the budget all the same.
            if c.is_withdraw() || self.sent.len() < self.per_minute as usize {
                self.sent.push_back(now_ms);
                step.apply.push(c);
            } else {
                step.deferred.push(c);
            }
        }
        if !step.deferred.is_empty() {
            self.counters.deferred += step.deferred.len() as u64;
            step.retry_at_ms = self.sent.front().map(|t| t + BUDGET_WINDOW_MS);
        }
        for c in &step.apply {
            match c {
                Change::Announce(_) => self.counters.announced += 1,
                Change::Withdraw(_) => self.counters.withdrawn += 1,
            }
            if self.recent.len() == RECENT_CHANGES {
                self.recent.pop_front();
            }
            self.recent.push_back(Record { at_ms: now_ms, change: c.clone(), dry_run: self.dry_run });
        }
        if self.dry_run {
            for c in std::mem::take(&mut step.apply) {
                let key = c.announcement().key();
                self.pretend.retain(|a| a.key() != key);
                if let Change::Announce(a) = c {
                    self.pretend.push(a);
                }
            }
        }
        step
    }

    /// The last [`RECENT_CHANGES`] changes sent (or, in dry run, recorded).
    pub fn recent(&self) -> impl Iterator<Item = &Record> {
        self.recent.iter()
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        bgp::{
            announce::{Community, FlowAction, FlowSpecRule, BLACKHOLE},
            config::BgpConfig,
        },
        config::ConfigFile,
        mitigate::prefix::Prefix,
        networks::Protected,
        span::Span,
    };

    const MIN: u64 = 60_000;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn setup(max: usize) -> (BgpConfig, Protected) {
        let text = format!(
            "networks:\n  hostgroups:\n    - {{ name: c, prefixes: [198.51.100.0/24] }}\nbgp:\n  local_as: 64512\n  \
             router_id: 192.0.2.1\n  neighbors: [ {{ address: 192.0.2.2, remote_as: 65000 }} ]\n  limits: {{ \
             max_announcements: {max} }}\n"
        );
        let c = ConfigFile::parse("t.yaml", &text).unwrap();
        (c.bgp.unwrap(), Protected::new(c.networks.as_ref(), &c.detection.families))
    }

    fn blackhole(host: u8) -> Announcement {
        Announcement::blackhole(p(&format!("198.51.100.{host}/32")), [BLACKHOLE])
    }

    fn flow(host: u8) -> Announcement {
        Announcement::Flowspec(FlowSpecRule {
            dst: p(&format!("198.51.100.{host}/32")),
            src: None,
            protocols: vec![17],
            dst_ports: vec![Span::one(53)],
            src_ports: vec![],
            packet_lengths: vec![],
            tcp_flags: None,
            fragment: false,
            action: FlowAction::Discard,
        })
    }

    fn entry(a: Announcement, created_ms: u64, ttl_ms: Option<u64>) -> Entry {
        Entry {
            announcement: a,
            origin: Origin {
                by: "runbook".into(),
                runbook: Some("rtbh".into()),
                incident: Some("i1".into()),
                step: Some(0),
            },
            created_ms,
            expires_ms: ttl_ms.map(|t| created_ms + t),
            hold_until_ms: None,
        }
    }

    /// What a daemon holds after the changes are applied to it.
    fn apply(actual: &mut Vec<Announcement>, changes: &[Change]) {
        for c in changes {
            let key = c.announcement().key();
            actual.retain(|a| a.key() != key);
            if let Change::Announce(a) = c {
                actual.push(a.clone());
            }
        }
    }

    #[test]
    fn announces_what_is_missing_and_withdraws_what_is_stale() {
        let (cfg, protected) = setup(10);
        let scope = Scope::new(&cfg, &protected, &[]);
        let mut d = Desired::new();
        d.admit(entry(blackhole(10), 0, None), &scope).unwrap();
        d.admit(entry(flow(11), 0, None), &scope).unwrap();
        let stale = blackhole(99);
        let changes = reconcile(&d, &[stale.clone(), flow(11)], 0);
        assert_eq!(changes, vec![Change::Withdraw(stale), Change::Announce(blackhole(10))]);
        // In sync: nothing.
        assert_eq!(reconcile(&d, &[flow(11), blackhole(10)], 0), vec![]);
        // A new community for the same prefix: announced again, no withdrawal.
        let other = Announcement::blackhole(p("198.51.100.10/32"), [Community::Standard(65000, 666)]);
        assert_eq!(reconcile(&d, &[flow(11), other], 0), vec![Change::Announce(blackhole(10))]);
        assert_eq!(d.counts(), BTreeMap::from([(Kind::Blackhole, 1), (Kind::Flowspec, 1)]));
    }

    #[test]
    fn a_hold_keeps_an_announcement_past_its_incident() {
        let (cfg, protected) = setup(10);
        let scope = Scope::new(&cfg, &protected, &[]);
        let held = |a, ttl, hold| Entry { hold_until_ms: Some(1000 + hold), ..entry(a, 1000, Some(ttl)) };
        let mut d = Desired::new();
        d.admit(held(blackhole(10), 60 * MIN, 10 * MIN), &scope).unwrap();
        d.admit(entry(flow(10), 1000, Some(60 * MIN)), &scope).unwrap();
        d.admit(held(blackhole(11), 5 * MIN, 10 * MIN), &scope).unwrap();
        let ours = |e: &Entry| e.key() != blackhole(11).key();
        // Resolved after 4 minutes: the blackhole is kept until its hold
        // ends, the rule without a hold is withdrawn.
        let mut early = d.clone();
        let (gone, kept) = early.release_where(ours, 1000 + 4 * MIN);
        assert_eq!(gone.iter().map(Entry::key).collect::<Vec<_>>(), vec![flow(10).key()]);
        assert_eq!(kept.iter().map(Entry::key).collect::<Vec<_>>(), vec![blackhole(10).key()]);
        assert_eq!(early.get(&blackhole(10).key()).unwrap().expires_ms, Some(1000 + 10 * MIN));
        // A hold past the TTL never pushes the expiry back.
        let (_, kept) = d.clone().release_where(|e| e.key() == blackhole(11).key(), 1000 + MIN);
        assert_eq!(kept[0].expires_ms, Some(1000 + 5 * MIN));
        // Past the hold: withdrawn.
        let (gone, kept) = d.release_where(ours, 1000 + 10 * MIN);
        assert_eq!((gone.len(), kept.len(), d.len()), (2, 0, 1));
    }

    #[test]
    fn ttl_expiry_withdraws() {
        let (cfg, protected) = setup(10);
        let scope = Scope::new(&cfg, &protected, &[]);
        let mut d = Desired::new();
        d.admit(entry(blackhole(10), 1000, Some(MIN)), &scope).unwrap();
        d.admit(entry(flow(10), 1000, None), &scope).unwrap();
        let mut actual = Vec::new();
        let mut planner = Planner::new(60, false);
        let s = planner.step(&d, &actual, 1000);
        assert_eq!(s.apply.len(), 2);
        apply(&mut actual, &s.apply);
        assert_eq!(d.next_expiry(), Some(61_000));
        assert!(planner.step(&d, &actual, 60_999).apply.is_empty());
        // At its expiry, even before `expire` runs, it is withdrawn.
        let s = planner.step(&d, &actual, 61_000);
        assert_eq!(s.apply, vec![Change::Withdraw(blackhole(10))]);
        apply(&mut actual, &s.apply);
        assert_eq!(d.expire(61_000).len(), 1);
        assert_eq!(d.len(), 1);
        assert_eq!(actual, vec![flow(10)]);
        assert_eq!(planner.counters(), Counters { announced: 2, withdrawn: 1, deferred: 0 });
    }

    #[test]
    fn a_restart_after_the_incident_ended_withdraws_the_stale_announcement() {
        // Killed mid-incident: the state directory has the announcement,
        // the daemon (adopted, or reconnected) still holds it.
        let (cfg, protected) = setup(10);
        let scope = Scope::new(&cfg, &protected, &[]);
        let mut before = Desired::new();
        before.admit(entry(blackhole(10), 0, Some(5 * MIN)), &scope).unwrap();
        before.admit(entry(flow(12), 0, Some(60 * MIN)), &scope).unwrap();
        let saved: Saved = serde_json::from_str(&serde_json::to_string(&before.saved()).unwrap()).unwrap();
        let held = vec![blackhole(10), flow(12)];
        // Restarted after the blackhole's TTL: restored without it.
        let (after, refused) = Desired::restore(saved, &scope, 10 * MIN);
        assert!(refused.is_empty());
        assert_eq!(after.len(), 1);
        let s = Planner::new(60, false).step(&after, &held, 10 * MIN);
        assert_eq!(s.apply, vec![Change::Withdraw(blackhole(10))]);
    }

    #[test]
    fn restore_checks_saved_entries_again() {
        let (cfg, protected) = setup(10);
        let scope = Scope::new(&cfg, &protected, &[]);
        let outside = entry(Announcement::blackhole(p("192.0.2.9/32"), [BLACKHOLE]), 0, None);
        let entries = vec![entry(blackhole(10), 0, None), outside.clone(), entry(blackhole(10), 0, None)];
        let saved = Saved { entries, recover: false };
        let (d, refused) = Desired::restore(saved, &scope, 0);
        assert_eq!(d.len(), 1);
        assert_eq!(refused.len(), 2);
        assert!(refused[0].1.contains("outside the protected networks"), "{}", refused[0].1);
        assert_eq!(refused[1].1, "its key is saved twice");
    }

    #[test]
    fn a_lost_saved_set_takes_back_what_the_daemon_announces() {
        // bgp.json was unreadable: nothing in force, the adopted daemon
        // still announces the last run's blackhole and FlowSpec rule.
        let (cfg, protected) = setup(10);
        let scope = Scope::new(&cfg, &protected, &[]);
        let held = vec![flow(12), blackhole(10), blackhole(10)];
        let mut d = Desired::new();
        let (back, refused) = d.recover(&held, &scope, 5 * MIN);
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(
            back.iter().map(Entry::key).collect::<Vec<_>>(),
            vec!["blackhole 198.51.100.10/32".to_string(), flow(12).key()]
        );
        for e in d.entries() {
            assert_eq!(e.origin, Origin::recovered());
            assert_eq!(e.created_ms, 5 * MIN);
            assert_eq!(e.expires_ms, Some(5 * MIN + 60 * MIN), "{RECOVERED_TTL:?}");
        }
        // Nothing flaps: what the daemon holds is what is wanted.
        assert_eq!(reconcile(&d, &held, 5 * MIN), vec![]);
        // Until the bounded TTL runs out.
        assert_eq!(reconcile(&d, &held, 65 * MIN), vec![Change::Withdraw(blackhole(10)), Change::Withdraw(flow(12))]);
    }

    #[test]
    fn recovery_checks_each_announcement_and_keeps_what_is_in_force() {
        let (cfg, protected) = setup(2);
        let scope = Scope::new(&cfg, &protected, &[]);
        let mut d = Desired::new();
        // Announced meanwhile (by the CLI, a runbook): it stays as it is.
        let mine = entry(blackhole(11), 0, Some(MIN));
        d.admit(mine.clone(), &scope).unwrap();
        let outside = Announcement::blackhole(p("192.0.2.9/32"), [BLACKHOLE]);
        let other_community = Announcement::blackhole(p("198.51.100.11/32"), [Community::Standard(65000, 666)]);
        let held = vec![outside.clone(), other_community, blackhole(12), blackhole(13)];
        let (back, refused) = d.recover(&held, &scope, 1000);
        assert_eq!(back.len(), 1, "{back:?}");
        assert_eq!(back[0].key(), "blackhole 198.51.100.12/32");
        let why: Vec<(String, &str)> = refused.iter().map(|(a, r)| (a.key(), r.reason())).collect();
        assert_eq!(
            why,
            vec![("blackhole 192.0.2.9/32".to_string(), "outside"), ("blackhole 198.51.100.13/32".to_string(), "full"),]
        );
        assert_eq!(d.get("blackhole 198.51.100.11/32"), Some(&mine));
        // The refused are withdrawn; the one in force is announced as it wants.
        assert_eq!(
            reconcile(&d, &held, 1000),
            vec![Change::Withdraw(outside), Change::Withdraw(blackhole(13)), Change::Announce(blackhole(11)),]
        );
    }

    #[test]
    fn a_pending_recovery_is_saved_and_read_back() {
        let plain = serde_json::to_string(&Desired::new().saved()).unwrap();
        assert_eq!(plain, "{\"entries\":[]}", "the flag is left out when false");
        let pending = Saved { entries: vec![], recover: true };
        let back: Saved = serde_json::from_str(&serde_json::to_string(&pending).unwrap()).unwrap();
        assert_eq!(back, pending);
        let old: Saved = serde_json::from_str("{\"entries\":[]}").unwrap();
        assert!(!old.recover);
    }

    #[test]
    fn a_daemon_restart_announces_everything_again() {
        let (cfg, protected) = setup(10);
        let scope = Scope::new(&cfg, &protected, &[]);
        let mut d = Desired::new();
        for h in 10..14 {
            d.admit(entry(blackhole(h), 0, None), &scope).unwrap();
        }
        let mut planner = Planner::new(60, false);
        let mut actual = Vec::new();
        let s = planner.step(&d, &actual, 0);
        apply(&mut actual, &s.apply);
        assert_eq!(actual.len(), 4);
        // The daemon died and came back empty.
        actual.clear();
        let s = planner.step(&d, &actual, 5000);
        assert_eq!(s.apply.len(), 4);
        assert!(s.apply.iter().all(|c| !c.is_withdraw()));
    }

    #[test]
    fn flapping_within_the_budget_and_past_it() {
        let (cfg, protected) = setup(10);
        let scope = Scope::new(&cfg, &protected, &[]);
        let mut d = Desired::new();
        for h in 10..13 {
            d.admit(entry(blackhole(h), 0, None), &scope).unwrap();
        }
        let mut planner = Planner::new(7, false);
        let mut actual = Vec::new();
        // Up: 3 sent. Down and up: 3 more, 6 of 7.
        let s = planner.step(&d, &actual, 0);
        apply(&mut actual, &s.apply);
        actual.clear();
        let s = planner.step(&d, &actual, 1000);
        apply(&mut actual, &s.apply);
        assert_eq!(actual.len(), 3);
        // Down again: 1 left in the minute, 2 deferred, never dropped.
        actual.clear();
        let s = planner.step(&d, &actual, 2000);
        assert_eq!((s.apply.len(), s.deferred.len()), (1, 2));
        assert_eq!(s.retry_at_ms, Some(MIN));
        apply(&mut actual, &s.apply);
        // Still no room before the first change of the window is a minute old.
        let s = planner.step(&d, &actual, MIN - 1);
        assert_eq!((s.apply.len(), s.deferred.len()), (0, 2));
        let s = planner.step(&d, &actual, MIN);
        assert_eq!((s.apply.len(), s.deferred.len()), (2, 0), "{s:?}");
        apply(&mut actual, &s.apply);
        assert_eq!(actual.len(), 3);
        assert_eq!(planner.counters().deferred, 4);
    }

    #[test]
    fn withdrawals_go_first_and_are_never_held_back() {
        let (cfg, protected) = setup(20);
        let scope = Scope::new(&cfg, &protected, &[]);
        let mut d = Desired::new();
        for h in 10..15 {
            d.admit(entry(blackhole(h), 0, None), &scope).unwrap();
        }
        let stale: Vec<Announcement> = (20..24).map(blackhole).collect();
        let mut planner = Planner::new(2, false);
        let s = planner.step(&d, &stale, 0);
        // 4 withdrawals (over the budget of 2, all sent), then no room.
        assert_eq!(s.apply.len(), 4);
        assert!(s.apply.iter().all(Change::is_withdraw));
        assert_eq!(s.deferred.len(), 5);
        assert!(s.deferred.iter().all(|c| !c.is_withdraw()));
    }

    #[test]
    fn dry_run_records_once_and_sends_nothing() {
        let (cfg, protected) = setup(10);
        let scope = Scope::new(&cfg, &protected, &[]);
        let mut d = Desired::new();
        d.admit(entry(blackhole(10), 0, Some(MIN)), &scope).unwrap();
        let mut planner = Planner::new(60, true);
        let s = planner.step(&d, &[], 0);
        assert!(s.apply.is_empty());
        assert_eq!(planner.step(&d, &[], 1000), Step::default(), "recorded once");
        let s = planner.step(&d, &[], MIN);
        assert!(s.apply.is_empty());
        let recent: Vec<String> = planner.recent().map(|r| format!("{} {}", r.at_ms, r.change)).collect();
        assert_eq!(
            recent,
            vec![
                "0 announce blackhole 198.51.100.10/32 community 65535:666".to_string(),
                "60000 withdraw blackhole 198.51.100.10/32".to_string(),
            ]
        );
        assert!(planner.recent().all(|r| r.dry_run));
    }

    #[test]
    fn admission_replaces_and_counts_the_limit() {
        let (cfg, protected) = setup(2);
        let scope = Scope::new(&cfg, &protected, &[]);
        let mut d = Desired::new();
        assert_eq!(d.admit(entry(blackhole(10), 0, None), &scope), Ok(None));
        d.admit(entry(blackhole(11), 0, None), &scope).unwrap();
        // Full; the same key again replaces.
        assert_eq!(d.admit(entry(blackhole(12), 0, None), &scope).unwrap_err().reason(), "full");
        let replaced = d.admit(entry(blackhole(11), 500, Some(MIN)), &scope).unwrap();
        assert_eq!(replaced.map(|e| e.created_ms), Some(0));
        assert_eq!(d.get("blackhole 198.51.100.11/32").and_then(|e| e.expires_ms), Some(500 + MIN));
        let gone = d.remove_where(|e| e.origin.incident.as_deref() == Some("i1"));
        assert_eq!(gone.len(), 2);
        assert!(d.is_empty());
        assert_eq!(d.remove("blackhole 198.51.100.11/32"), None);
    }
}
