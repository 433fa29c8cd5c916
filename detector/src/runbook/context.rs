//! The attack context: what templates see, and the JSON body of the
//! generic webhook (documented in `docs/webhook.md`). Built from an
//! incident and the event that fired the runbook; pure.

use serde::{Deserialize, Serialize};

use crate::{
    detect::{
        incident::{time_ms, CaptureInfo, EventKind, Incident, TopPort, TopSource},
        signature::Signature,
    },
    mitigate::rule::Rule,
    targets::Direction,
};

/// What happened to the attack: the webhook's `event`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttackEvent {
    AttackStart,
    AttackUpdate,
    AttackEnd,
}

impl AttackEvent {
    pub fn of(kind: EventKind) -> AttackEvent {
        match kind {
            EventKind::Opened => AttackEvent::AttackStart,
            EventKind::Resolved => AttackEvent::AttackEnd,
            _ => AttackEvent::AttackUpdate,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AttackEvent::AttackStart => "attack_start",
            AttackEvent::AttackUpdate => "attack_update",
            AttackEvent::AttackEnd => "attack_end",
        }
    }
}

/// A mitigation rule in force, as the context shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleSummary {
    pub id: String,
    /// `r3 drop 198.51.100.7/32 class udp`
    pub rule: String,
    pub origin: String,
    #[serde(with = "time_ms::option", default)]
    pub expires_at: Option<u64>,
}

impl RuleSummary {
    pub fn of(r: &Rule) -> RuleSummary {
        let origin = match (&r.origin.runbook, &r.origin.incident) {
            (Some(rb), _) => format!("runbook {rb}"),
            (None, Some(i)) => format!("incident {i}"),
            _ => r.origin.by.clone(),
        };
        RuleSummary { id: r.id.clone(), rule: r.describe(), origin, expires_at: r.expires_ms }
    }
}

/// Everything a runbook knows about the attack when it runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Context {
    /// `attack_start`, `attack_update` or `attack_end`.
    pub event: AttackEvent,
    pub runbook: String,
    pub dry_run: bool,
    pub incident_id: String,
    pub node: String,
    pub iface: String,
    /// The attacked (incoming) or attacking (outgoing) address, or the
    /// host group's name for an attack spread over its addresses.
    #[serde(default)]
    pub target: String,
    #[serde(default)]
    pub hostgroup: String,
    /// `incoming` or `outgoing`.
    #[serde(default)]
    pub direction: Direction,
    pub families: Vec<String>,
    pub vectors: Vec<String>,
    pub severity: String,
    pub status: String,
    #[serde(with = "time_ms")]
    pub started_at: u64,
    #[serde(with = "time_ms::option", default)]
    pub ended_at: Option<u64>,
    pub pps: f64,
    pub bps: f64,
    pub peak_pps: f64,
    pub peak_bps: f64,
    pub top_sources: Vec<TopSource>,
    pub top_ports: Vec<TopPort>,
    /// The attack's packets as a rule would match them; null until the
    /// incident has samples enough.
    #[serde(default)]
    pub signature: Option<Signature>,
    /// Mitigation rules in force for this incident.
    pub rules: Vec<RuleSummary>,
    /// What the incident's packet capture holds (`packets`, `pre_attack`,
    /// `full`); null with captures off. The file itself:
    /// `GET /api/incidents/{incident_id}/pcap`.
    #[serde(default)]
    pub capture: Option<CaptureInfo>,
}

impl Context {
    pub fn new(kind: EventKind, inc: &Incident, runbook: &str, dry_run: bool, rules: Vec<RuleSummary>) -> Context {
        Context {
            event: AttackEvent::of(kind),
            runbook: runbook.to_string(),
            dry_run,
            incident_id: inc.id.clone(),
            node: inc.node.clone(),
            iface: inc.iface.clone(),
            target: inc.target.clone(),
            hostgroup: inc.hostgroup.clone(),
            direction: inc.direction,
            families: inc.families.iter().map(|f| f.name().to_string()).collect(),
            vectors: inc.vectors.clone(),
            severity: inc.severity.name().to_string(),
            status: inc.status.name().to_string(),
            started_at: inc.started_at,
            ended_at: inc.ended_at,
            pps: inc.pps,
            bps: inc.bps,
            peak_pps: inc.peak_pps,
            peak_bps: inc.peak_bps,
            top_sources: inc.top_sources.clone(),
            top_ports: inc.top_ports.clone(),
            signature: inc.signature.clone(),
            rules,
            capture: inc.capture,
        }
    }

    /// Renders a template (checked at load) over this context.
    pub fn render(&self, template: &str) -> Result<String, String> {
        let env = minijinja::Environment::new();
        let value = minijinja::Value::from(minijinja::value::Serde(self));
        env.render_str(template, value).map_err(|e| format!("template: {e}"))
    }

    /// `, target 192.0.2.7`, `, from 192.0.2.7` for an outgoing flood;
    /// nothing for incidents stored before targets.
    fn on_target(&self) -> String {
        match (self.target.is_empty(), self.direction) {
            (true, _) => String::new(),
            (false, Direction::Incoming) => format!(", target {}", self.target),
            (false, Direction::Outgoing) => format!(", from {}", self.target),
        }
    }

    /// A one-line summary for messages with no template of their own, and
    /// for every notification at the attack's end (a start template talks
    /// of a running attack).
    pub fn summary(&self) -> String {
        if self.event == AttackEvent::AttackEnd {
            let lasted = self
                .ended_at
                .map(|e| format!(" after {:.1}s", e.saturating_sub(self.started_at) as f64 / 1000.0))
                .unwrap_or_default();
            return format!(
                "Attack on {} ({}{}) is over{lasted}: {}, peak {:.0} pps, severity {}, status {}",
                self.node,
                self.iface,
                self.on_target(),
                self.families.join(", "),
                self.peak_pps,
                self.severity,
                self.status
            );
        }
        format!(
            "{} on {} ({}{}): {}, {:.0} pps, severity {}, status {}",
            self.event.name(),
            self.node,
            self.iface,
            self.on_target(),
            self.families.join(", "),
            self.pps,
            self.severity,
            self.status
        )
    }
}
