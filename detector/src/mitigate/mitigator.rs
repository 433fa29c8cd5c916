//! The rule set bound to the kernel: every change goes to the rule set
//! (pure), then to each interface's maps; a change an interface refuses is
//! rolled back, so the set and the kernel never disagree for longer than
//! one call. Then the set is handed to the state directory's writer
//! (`rules.json`), which never makes a change wait: a full disk does not
//! stop mitigation, and the file catches up when it can.

use std::path::{Path, PathBuf};

use detector_common::rules::RuleCounters;

use crate::{
    clock::Clock,
    kernel::{
        peers::{KnownPeers, Peer},
        rules::{KernelError, RuleMaps},
    },
    statedir::{self, FileWriter, RULES_FILE},
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{
    plan::{rules_in, KernelRule},
    prefix::Prefix,
    rule::{Action, RequestError, Rule, RuleRequest},
    ruleset::{AllowEntry, AllowSource, Limits, Removed, RuleError, RuleSet, Saved},
};

#[derive(Debug, Error)]
pub enum MitigateError {
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error("{0}")]
    SynProxy(String),
    #[error("interface '{iface}': {source}")]
    Kernel { iface: String, source: Box<KernelError> },
}

impl MitigateError {
    /// A short, stable name for the `reason` label of refusals.
    pub fn kind(&self) -> &'static str {
        match self {
            MitigateError::Rule(RuleError::Request(_)) => "invalid",
            MitigateError::Rule(RuleError::Allowlisted { .. }) => "allowlisted",
            MitigateError::Rule(RuleError::Duplicate(_)) | MitigateError::Rule(RuleError::AlreadyAllowed { .. }) => {
                "duplicate"
            }
            MitigateError::Rule(RuleError::RulesFull(_))
            | MitigateError::Rule(RuleError::AllowFull(_))
            | MitigateError::Rule(RuleError::IdsUsedUp(_)) => "full",
            MitigateError::Rule(RuleError::Plan(_)) => "overlap",
            MitigateError::Rule(RuleError::NotFound(_)) => "not_found",
            MitigateError::Rule(RuleError::Protected { .. }) => "protected",
            MitigateError::Kernel { .. } | MitigateError::SynProxy(_) => "internal",
        }
    }
}

/// A rule as listed: its definition, the time left and its counters over
/// every interface.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RuleView {
    #[serde(flatten)]
    pub rule: Rule,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_left_ms: Option<u64>,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
    pub passed_packets: u64,
    pub passed_bytes: u64,
}

/// One interface's known-good peers, as `GET /v1/peers` gives them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeersView {
    pub iface: String,
    /// How many the map holds.
    pub total: usize,
    /// The most recently confirmed, at most the limit asked for.
    pub peers: Vec<Peer>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Capacity {
    pub rules: usize,
    pub max_rules: u32,
    pub allow: usize,
    pub max_allow: u32,
}

/// Everything in force, for `detector rules list` and the API.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RulesView {
    pub rules: Vec<RuleView>,
    pub allow: Vec<AllowEntry>,
    pub capacity: Capacity,
    pub interfaces: Vec<String>,
}

/// Installs netfilter's SYNPROXY rule on the named interfaces.
pub type SynProxyInstall = fn(&[String]) -> Result<(), String>;

pub struct Mitigator {
    set: RuleSet,
    ifaces: Vec<(String, RuleMaps)>,
    /// Each interface's known-good peers (see `kernel::peers`).
    peers: Vec<(String, KnownPeers)>,
    state_dir: PathBuf,
    files: FileWriter,
    /// The TCP ports with a listener (a SYN-cookie rule needs one).
    listening: fn() -> Vec<u16>,
    /// Installs netfilter's SYNPROXY rule for these interfaces (see
    /// `kernel::syncookie`); `None`: not wanted (tests without a kernel).
    synproxy: Option<SynProxyInstall>,
    /// Whether the SYNPROXY rule is in place for every interface.
    synproxy_ready: bool,
}

impl Mitigator {
    /// Rules saved in `state_dir` (read by [`Mitigator::restore`]) and
    /// written through `files`.
    pub fn new(limits: Limits, state_dir: &Path, files: FileWriter) -> Mitigator {
        Mitigator {
            set: RuleSet::new(limits),
            ifaces: Vec::new(),
            peers: Vec::new(),
            state_dir: state_dir.to_path_buf(),
            files,
            listening: super::host::listening_tcp_ports,
            synproxy: None,
            synproxy_ready: false,
        }
    }

    /// Installs netfilter's SYNPROXY rule with `install` once a SYN-cookie
    /// rule is in force (the controller passes the nftables adapter).
    pub fn with_synproxy(mut self, install: SynProxyInstall) -> Mitigator {
        self.synproxy = Some(install);
        self
    }

    /// Where the listening TCP ports come from (tests give their own).
    pub fn with_listeners(mut self, listening: fn() -> Vec<u16>) -> Mitigator {
        self.listening = listening;
        self
    }

    pub fn add_interface(&mut self, iface: &str, maps: RuleMaps) {
        self.ifaces.push((iface.to_string(), maps));
    }

    /// The known-good peers map of `iface`, for `peers` and `flush_peers`.
    pub fn add_peers(&mut self, iface: &str, peers: KnownPeers) {
        self.peers.push((iface.to_string(), peers));
    }

    /// Each interface's known-good peers, at most `limit` per interface
    /// (the most recently confirmed), with how many there are.
    pub fn peers(&self, limit: usize, clock: Clock) -> Result<Vec<PeersView>, MitigateError> {
        self.peers
            .iter()
            .map(|(iface, p)| {
                let mut all = p
                    .list(clock.mono_ns)
                    .map_err(|source| MitigateError::Kernel { iface: iface.clone(), source: Box::new(source) })?;
                let total = all.len();
                all.truncate(limit);
                Ok(PeersView { iface: iface.clone(), total, peers: all })
            })
            .collect()
    }

    /// Forgets every known-good peer of every interface; returns how many.
    pub fn flush_peers(&mut self) -> Result<usize, MitigateError> {
        let mut n = 0;
        for (iface, p) in &mut self.peers {
            n +=
                p.flush().map_err(|source| MitigateError::Kernel { iface: iface.clone(), source: Box::new(source) })?;
        }
        tracing::info!(peers = n, "known-good peers flushed by the operator");
        Ok(n)
    }

    pub fn interfaces(&self) -> impl Iterator<Item = &str> {
        self.ifaces.iter().map(|(i, _)| i.as_str())
    }

    /// Allows `prefix` for the host or the configuration (not saved: found
    /// afresh at every start). Call before [`Mitigator::restore`].
    pub fn allow_fixed(&mut self, prefix: Prefix, source: AllowSource, reason: &str, now_ms: u64) {
        if let Err(e) = self.set.add_allow(prefix, source, reason, now_ms) {
            tracing::debug!(%prefix, "not allowlisted again: {e}");
        }
    }

    /// Allowlists host prefixes not yet on the list (an address added since
    /// the start), and returns them.
    pub fn refresh_host(&mut self, found: &[(Prefix, String)], clock: Clock) -> Result<Vec<AllowEntry>, MitigateError> {
        let known: Vec<Prefix> = self.set.allow().iter().map(|a| a.prefix).collect();
        let new: Vec<&(Prefix, String)> = found.iter().filter(|(p, _)| !known.contains(p)).collect();
        if new.is_empty() {
            return Ok(Vec::new());
        }
        self.change(clock, |set| {
            new.iter()
                .map(|(p, why)| set.add_allow(*p, AllowSource::Host, why, clock.wall_ms).map(|(e, _)| e))
                .collect()
        })
    }

    /// Reads the saved rules, reconciles them with what the pinned tries of
    /// an earlier run hold (see [`RuleSet::restore`]: the kernel wins, so a
    /// missing, stale or unreadable `rules.json` never loses a rule in
    /// force), drops those that expired while no controller ran, and makes
    /// every interface's trie hold exactly the rest (an adopted trie keeps
    /// enforcing throughout).
    pub fn restore(&mut self, clock: Clock) -> Result<Vec<Rule>, MitigateError> {
        let path = self.state_dir.join(RULES_FILE);
        let saved = match statedir::read(&self.state_dir, RULES_FILE) {
            statedir::Read::Bytes(bytes) => match serde_json::from_slice::<Saved>(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    match statedir::move_aside(&path) {
                        Ok(aside) => tracing::error!(
                            "{} is unreadable ({e}); moved to {}; rules in force are read back from the kernel",
                            path.display(),
                            aside.display()
                        ),
                        Err(m) => {
                            tracing::error!("{} is unreadable ({e}) and cannot be moved aside: {m}", path.display())
                        }
                    }
                    Saved::default()
                }
            },
            statedir::Read::Missing => Saved::default(),
            statedir::Read::Failed(why) => {
                tracing::error!("cannot read the saved rules: {why}; rules in force are read back from the kernel");
                Saved::default()
            }
        };
        let kernel = self.kernel_rules();
        let r = self.set.restore(saved, kernel.as_deref(), clock);
        for (rule, why) in &r.refused {
            tracing::warn!(rule = %rule.describe(), "saved rule not restored: {why}");
        }
        for (a, why) in &r.refused_allow {
            tracing::warn!(id = %a.id, prefix = %a.prefix, "saved allowlist entry not restored: {why}");
        }
        for rule in &r.stale {
            tracing::warn!(rule = %rule.describe(), "saved rule not restored: the kernel no longer holds it (removed while the state directory could not be written)");
        }
        for why in &r.counters {
            tracing::warn!("rules.json: {why}");
        }
        for rule in &r.recovered {
            tracing::warn!(rule = %rule.describe(), "rule in force recovered from the kernel; rules.json had no record of it, so its reason and origin are lost");
        }
        let expired = self.set.expire(clock.wall_ms);
        self.commit(clock)?;
        Ok(expired)
    }

    /// The rules the interfaces' adopted tries hold, if any interface
    /// adopted one (a fresh attach starts empty).
    fn kernel_rules(&self) -> Option<Vec<KernelRule>> {
        let adopted: Vec<(&str, Vec<KernelRule>)> = self
            .ifaces
            .iter()
            .filter(|(_, m)| m.entries() > 0)
            .map(|(i, m)| (i.as_str(), rules_in(m.applied())))
            .collect();
        let (_, first) = adopted.first()?;
        let mut all = first.clone();
        for (iface, rules) in &adopted[1..] {
            for k in rules {
                match all.iter().find(|a| a.index == k.index) {
                    Some(a) if a != k => tracing::warn!(
                        iface,
                        index = k.index,
                        "the pinned tries disagree on a rule; the first interface's is kept"
                    ),
                    Some(_) => {}
                    None => all.push(k.clone()),
                }
            }
        }
        Some(all)
    }

    /// Writes the rule set to every interface, then hands it to the state
    /// directory's writer.
    fn commit(&mut self, clock: Clock) -> Result<(), MitigateError> {
        let plan = self.set.plan(clock).map_err(RuleError::from)?;
        // SYNPROXY first: a SYN-cookie rule in XDP without it would answer
        // SYNs for handshakes nothing completes.
        if !self.synproxy_ready && self.set.rules().iter().any(|r| r.action == Action::SynCookies) {
            if let Some(install) = self.synproxy {
                let ifaces: Vec<String> = self.ifaces.iter().map(|(i, _)| i.clone()).collect();
                install(&ifaces).map_err(MitigateError::SynProxy)?;
                self.synproxy_ready = true;
            }
        }
        for (iface, maps) in &mut self.ifaces {
            maps.apply(&plan)
                .map_err(|source| MitigateError::Kernel { iface: iface.clone(), source: Box::new(source) })?;
        }
        self.save();
        Ok(())
    }

    /// The state directory's writer, to wait on outside the mitigator's
    /// lock until a change is written ([`FileWriter::flush`]).
    pub fn files(&self) -> FileWriter {
        self.files.clone()
    }

    /// Hands the rule set to the state directory's writer (it is written
    /// after every change; this writes it again, for a directory that was
    /// recreated).
    pub fn save(&self) {
        self.files.save_json(RULES_FILE, &self.set.saved());
    }

    /// Applies a change to a copy of the rule set; keeps it only if every
    /// interface took it.
    fn change<T>(
        &mut self,
        clock: Clock,
        f: impl FnOnce(&mut RuleSet) -> Result<T, RuleError>,
    ) -> Result<T, MitigateError> {
        let before = self.set.clone();
        let out = f(&mut self.set)?;
        if let Err(e) = self.commit(clock) {
            self.set = before;
            if let Err(again) = self.commit(clock) {
                tracing::error!("restoring the rules after a failed change also failed: {again}");
            }
            return Err(e);
        }
        Ok(out)
    }

    pub fn add_rule(&mut self, req: &RuleRequest, clock: Clock) -> Result<Rule, MitigateError> {
        let checked = req.check().map_err(RuleError::from)?;
        // A SYN-cookie rule protects a service: one must be listening.
        if let (Action::SynCookies, Some(dport)) = (&checked.shape.action, checked.shape.m.dport) {
            if !(self.listening)().iter().any(|p| dport.contains(*p)) {
                return Err(RuleError::Request(RequestError::NoListener(dport)).into());
            }
        }
        // A reused index starts from zero, before any slot points at it.
        if let Some(index) = self.set.free_index() {
            for (iface, maps) in &mut self.ifaces {
                if let Err(e) = maps.reset_counters(index) {
                    tracing::warn!(iface, "{e}");
                }
            }
        }
        let rule = self.change(clock, |set| set.add_checked(checked, clock.wall_ms))?;
        tracing::info!(rule = %rule.describe(), reason = %rule.reason, origin = ?rule.origin, "rule added");
        Ok(rule)
    }

    pub fn add_allow(
        &mut self,
        prefix: Prefix,
        reason: &str,
        clock: Clock,
    ) -> Result<(AllowEntry, Vec<Rule>), MitigateError> {
        let (entry, overridden) =
            self.change(clock, |set| set.add_allow(prefix, AllowSource::Operator, reason, clock.wall_ms))?;
        tracing::info!(id = %entry.id, prefix = %entry.prefix, "allowlist entry added");
        for r in &overridden {
            tracing::warn!(rule = %r.describe(), "rule no longer applies to {}: allowlisted", entry.prefix);
        }
        Ok((entry, overridden))
    }

    pub fn remove(&mut self, id: &str, clock: Clock) -> Result<Removed, MitigateError> {
        let removed = self.change(clock, |set| set.remove(id))?;
        match &removed {
            Removed::Rule(r) => tracing::info!(rule = %r.describe(), "rule removed"),
            Removed::Allow(a) => tracing::info!(id = %a.id, prefix = %a.prefix, "allowlist entry removed"),
        }
        Ok(removed)
    }

    /// Removes the rules whose TTL ran out (the kernel already ignores them).
    pub fn expire(&mut self, clock: Clock) -> Vec<Rule> {
        if self.set.next_expiry().is_none_or(|t| t > clock.wall_ms) {
            return Vec::new();
        }
        match self.change(clock, |set| Ok(set.expire(clock.wall_ms))) {
            Ok(gone) => {
                for r in &gone {
                    tracing::info!(rule = %r.describe(), "rule expired");
                }
                gone
            }
            Err(e) => {
                tracing::error!("expiring rules: {e}");
                Vec::new()
            }
        }
    }

    /// Removes every rule (the allowlist stays).
    pub fn clear(&mut self, clock: Clock) -> Result<Vec<Rule>, MitigateError> {
        self.change(clock, |set| Ok(set.clear_rules()))
    }

    pub fn rules(&self) -> &[Rule] {
        self.set.rules()
    }

    pub fn allow(&self) -> &[AllowEntry] {
        self.set.allow()
    }

    pub fn limits(&self) -> Limits {
        self.set.limits()
    }

    /// A rule's counters on each interface.
    pub fn counters(&self, index: u32) -> Vec<(&str, RuleCounters)> {
        self.ifaces.iter().filter_map(|(i, m)| m.counters(index).ok().map(|c| (i.as_str(), c))).collect()
    }

    /// Trie entries in use on the fullest interface.
    pub fn trie_entries(&self) -> usize {
        self.ifaces.iter().map(|(_, m)| m.entries()).max().unwrap_or(0)
    }

    pub fn view(&self, now_ms: u64) -> RulesView {
        let rules = self
            .set
            .rules()
            .iter()
            .map(|r| {
                let mut v = RuleView {
                    rule: r.clone(),
                    ttl_left_ms: RuleSet::ttl_left(r, now_ms).map(|d| d.as_millis() as u64),
                    dropped_packets: 0,
                    dropped_bytes: 0,
                    passed_packets: 0,
                    passed_bytes: 0,
                };
                for (_, c) in self.counters(r.index) {
                    v.dropped_packets += c.dropped_packets;
                    v.dropped_bytes += c.dropped_bytes;
                    v.passed_packets += c.passed_packets;
                    v.passed_bytes += c.passed_bytes;
                }
                v
            })
            .collect();
        let limits = self.set.limits();
        RulesView {
            rules,
            allow: self.set.allow().to_vec(),
            capacity: Capacity {
                rules: self.set.rules().len(),
                max_rules: limits.max_rules,
                allow: self.set.allow().len(),
                max_allow: limits.max_allow,
            },
            interfaces: self.ifaces.iter().map(|(i, _)| i.clone()).collect(),
        }
    }
}
