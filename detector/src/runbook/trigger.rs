//! Which runbooks an incident event fires. Pure: the event, the runbooks,
//! what fired before and the time in; the runbooks to run out.

use std::collections::HashMap;

use super::schema::{Families, Hostgroups, Nodes, Runbook};
use crate::detect::incident::{EventKind, Incident};

/// True when `rb`'s trigger covers the incident as it stands.
pub fn matches(rb: &Runbook, inc: &Incident) -> bool {
    matches_at(rb, inc, None)
}

/// The share of `capacity_bps` the incident's bit rate (its peak) is at.
pub fn bps_share(inc: &Incident, capacity_bps: f64) -> f64 {
    inc.bps.max(inc.peak_bps) / capacity_bps
}

/// As [`matches`], with the capacity of the incident's interface (bits
/// per second) for a `min_bps_share` trigger; one without a known
/// capacity never matches (the engine says so, once).
pub fn matches_at(rb: &Runbook, inc: &Incident, capacity_bps: Option<f64>) -> bool {
    let t = &rb.trigger;
    let family = match &t.families {
        Families::Any => true,
        Families::These(list) => list.iter().any(|f| inc.families.contains(f)),
    };
    let node = match &t.nodes {
        Nodes::All => true,
        Nodes::These(list) => list.contains(&inc.node),
    };
    let hostgroup = match &t.hostgroups {
        Hostgroups::All => true,
        Hostgroups::These(list) => list.contains(&inc.hostgroup),
    };
    let direction = t.directions.0.contains(&inc.direction);
    rb.enabled
        && family
        && node
        && hostgroup
        && direction
        && t.min_severity.admits(inc.severity)
        && inc.pps.max(inc.peak_pps) >= t.min_pps
        && match (t.min_bps_share, capacity_bps) {
            (None, _) => true,
            (Some(share), Some(c)) if c > 0.0 => bps_share(inc, c) >= share,
            (Some(_), _) => false,
        }
}

/// The events that may fire a runbook: an incident opening, every change
/// of its severity or families, and its periodic update (which fires only
/// runbooks that have not run for it: a trigger that became true as the
/// attack grew, `min_pps` say).
pub fn fires_on(kind: EventKind) -> bool {
    matches!(kind, EventKind::Opened | EventKind::SeverityChanged | EventKind::FamilyAdded | EventKind::Updated)
}

/// When each runbook last ran for each incident.
#[derive(Debug, Default)]
pub struct Fired {
    last: HashMap<(String, String), u64>,
}

impl Fired {
    /// The runbooks (by index in `runbooks`) this event runs at `now_ms`:
    /// those whose trigger matches and that have not run for this incident
    /// within their cooldown.
    pub fn due(&self, runbooks: &[&Runbook], kind: EventKind, inc: &Incident, now_ms: u64) -> Vec<usize> {
        self.due_at(runbooks, kind, inc, now_ms, None)
    }

    /// As [`Fired::due`], with the capacity of the incident's interface
    /// (see [`matches_at`]).
    pub fn due_at(
        &self,
        runbooks: &[&Runbook],
        kind: EventKind,
        inc: &Incident,
        now_ms: u64,
        capacity_bps: Option<f64>,
    ) -> Vec<usize> {
        if !fires_on(kind) {
            return Vec::new();
        }
        runbooks
            .iter()
            .enumerate()
            .filter(|(_, rb)| matches_at(rb, inc, capacity_bps))
            .filter(|(_, rb)| match self.last.get(&(rb.name.0.clone(), inc.id.clone())) {
                None => true,
                Some(_) if kind == EventKind::Updated => false,
                Some(t) => now_ms.saturating_sub(*t) >= rb.cooldown.as_millis() as u64,
            })
            .map(|(i, _)| i)
            .collect()
    }

    pub fn record(&mut self, runbook: &str, incident: &str, now_ms: u64) {
        self.last.insert((runbook.to_string(), incident.to_string()), now_ms);
    }

    /// Remembers that `runbook` ran for `incident` at `at_ms`, unless a
    /// later run is known: for seeding from the history after a restart,
    /// in any order.
    pub fn seed(&mut self, runbook: &str, incident: &str, at_ms: u64) {
        let t = self.last.entry((runbook.to_string(), incident.to_string())).or_insert(at_ms);
        *t = (*t).max(at_ms);
    }

    /// Has `runbook` run for `incident`? (On resolution, it decides whether
    /// the runbook's resolve-side work applies.)
    pub fn ran(&self, runbook: &str, incident: &str) -> bool {
        self.last.contains_key(&(runbook.to_string(), incident.to_string()))
    }

    /// Forgets a resolved incident.
    pub fn forget(&mut self, incident: &str) {
        self.last.retain(|(_, i), _| i != incident);
    }
}
