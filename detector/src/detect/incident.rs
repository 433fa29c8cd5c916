//! What an incident is, and what happens to it: the types the detector
//! returns, the store keeps and the API serves.

use std::{fmt, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::{family::Family, severity::Severity, signature::Signature};
use crate::{mitigate::prefix::Prefix, targets::Direction};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    Acknowledged,
    Mitigated,
    Escalated,
    Resolved,
}

impl Status {
    pub const ALL: [Status; 5] =
        [Status::Active, Status::Acknowledged, Status::Mitigated, Status::Escalated, Status::Resolved];

    pub fn name(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Acknowledged => "acknowledged",
            Status::Mitigated => "mitigated",
            Status::Escalated => "escalated",
            Status::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.iter().copied().find(|v| v.name() == s)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Opened,
    SeverityChanged,
    FamilyAdded,
    NoteAdded,
    StatusChanged,
    Resolved,
    /// The incident's figures as they stand, sent to runbooks every second
    /// (so a trigger that becomes true as an attack grows still fires);
    /// never in a timeline.
    Updated,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Opened => "opened",
            EventKind::SeverityChanged => "severity_changed",
            EventKind::FamilyAdded => "family_added",
            EventKind::NoteAdded => "note_added",
            EventKind::StatusChanged => "status_changed",
            EventKind::Resolved => "resolved",
            EventKind::Updated => "updated",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        [
            EventKind::Opened,
            EventKind::SeverityChanged,
            EventKind::FamilyAdded,
            EventKind::NoteAdded,
            EventKind::StatusChanged,
            EventKind::Resolved,
        ]
        .into_iter()
        .find(|k| k.name() == s)
    }
}

/// One line of an incident's timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    #[serde(with = "time_ms")]
    pub at: u64,
    pub kind: EventKind,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopSource {
    pub addr: IpAddr,
    pub pps: f64,
    pub share: f64,
    /// The source was sending to the host [`SEEN_BEFORE_ATTACK`] or more
    /// before the attack's onset: one of its users, not the attack's. A
    /// runbook's `top_sources` step gives it no rule.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub seen_before_attack: bool,
}

/// How long before an attack's onset a source must have been sending to
/// count as the host's user ([`TopSource::seen_before_attack`]): longer
/// than a flood tool's ramp-up, shorter than any real user's session.
pub const SEEN_BEFORE_ATTACK: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopPort {
    /// "tcp" or "udp".
    pub proto: String,
    pub port: u16,
    pub pps: f64,
    pub share: f64,
}

/// An attack on one target through one interface, from the first poll
/// over threshold to the end of its quiet period.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: String,
    pub node: String,
    pub iface: String,
    /// What is attacked (incoming) or attacking (outgoing): one protected
    /// address, or a host group's name when the attack is spread over many
    /// of its addresses, each below its own floor (carpet bombing). Empty
    /// in incidents stored before network mode.
    #[serde(default)]
    pub target: String,
    /// The host group of the target (`host` without a `networks:` section).
    #[serde(default)]
    pub hostgroup: String,
    #[serde(default)]
    pub direction: Direction,
    /// The target's prefixes: its address, or its host group's prefixes.
    /// What a runbook's rules for it are limited to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_prefixes: Vec<Prefix>,
    /// The attack families seen, in order; `multi_vector` first once there
    /// are two or more.
    pub families: Vec<Family>,
    /// What the families are made of: reflector services, ack/rst, ...
    pub vectors: Vec<String>,
    pub severity: Severity,
    pub status: Status,
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
    /// The attack's packets as a rule would match them, once there are
    /// samples enough; absent from incidents stored before signatures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
    pub timeline: Vec<TimelineEntry>,
    /// What its packet capture holds (see [`crate::capture`]); absent
    /// with captures off, and from incidents stored before them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<CaptureInfo>,
}

/// An incident's packet capture, in figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureInfo {
    /// Packets in the file.
    pub packets: u64,
    /// Of which sampled before the attack (they come first).
    pub pre_attack: u64,
    /// Whether it holds as many of the attack's packets as it may.
    pub full: bool,
}

impl Incident {
    /// The families detection watches, without `multi_vector`.
    pub fn detected_families(&self) -> impl Iterator<Item = Family> + '_ {
        self.families.iter().copied().filter(|f| *f != Family::MultiVector)
    }

    pub fn is_open(&self) -> bool {
        self.status != Status::Resolved
    }
}

/// Something that happened to an incident, with the incident as it is after.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IncidentEvent {
    pub kind: EventKind,
    #[serde(with = "time_ms")]
    pub at: u64,
    pub detail: String,
    /// For `family_added`: the family that joined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<Family>,
    pub incident: Incident,
}

/// The stable id of an incident: node, interface, target, direction and
/// start time, readable and unique (one incident per interface, target and
/// direction at a time). An IPv6 target's colons become underscores.
pub fn incident_id(node: &str, iface: &str, target: &str, direction: Direction, started_at_ms: u64) -> String {
    let t = time_ms::rfc3339(started_at_ms).replace(['-', ':'], "");
    let target = target.replace(':', "_");
    match direction {
        Direction::Incoming => format!("{node}-{iface}-{target}-{t}"),
        Direction::Outgoing => format!("{node}-{iface}-{target}-out-{t}"),
    }
}

/// Unix milliseconds on the wire as RFC 3339 (UTC, milliseconds).
pub mod time_ms {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn rfc3339(ms: u64) -> String {
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
    }

    pub fn parse(s: &str) -> Option<u64> {
        let t: SystemTime = humantime::parse_rfc3339(s).ok()?;
        Some(t.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64)
    }

    pub fn serialize<S: Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&rfc3339(*ms))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).ok_or_else(|| serde::de::Error::custom(format!("'{s}' is not an RFC 3339 time")))
    }

    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(ms: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
            match ms {
                Some(ms) => s.serialize_str(&super::rfc3339(*ms)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
            match Option::<String>::deserialize(d)? {
                Some(s) => super::parse(&s)
                    .map(Some)
                    .ok_or_else(|| serde::de::Error::custom(format!("'{s}' is not an RFC 3339 time"))),
                None => Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_times() {
        // 2026-11-24T22:35:01.123Z
        let ms = 1_795_991_701_123 - 5 * 86_400_000;
        assert_eq!(time_ms::rfc3339(ms), "2026-11-24T22:35:01.123Z");
        assert_eq!(time_ms::parse("2026-11-24T22:35:01.123Z"), Some(ms));
        assert_eq!(
            incident_id("web1", "eth0", "192.0.2.7", Direction::Incoming, ms),
            "web1-eth0-192.0.2.7-20261124T223501.123Z"
        );
        assert_eq!(
            incident_id("web1", "eth0", "2001:db8::7", Direction::Outgoing, ms),
            "web1-eth0-2001_db8__7-out-20261124T223501.123Z"
        );
        for s in Status::ALL {
            assert_eq!(Status::parse(s.name()), Some(s));
        }
        assert_eq!(EventKind::parse("family_added"), Some(EventKind::FamilyAdded));
    }

    #[test]
    fn incidents_stored_before_signatures_still_load() {
        let json = r#"{"id":"n-eth0-20261124T223501.123Z","node":"n","iface":"eth0","families":["syn_flood"],
            "vectors":["syn"],"severity":"low","status":"active","started_at":"2026-11-24T22:35:01.123Z",
            "ended_at":null,"pps":1.0,"bps":8.0,"peak_pps":1.0,"peak_bps":8.0,"top_sources":[],
            "top_ports":[],"timeline":[]}"#;
        let inc: Incident = serde_json::from_str(json).unwrap();
        assert_eq!(inc.signature, None);
        // And none is written while there is none.
        assert!(!serde_json::to_string(&inc).unwrap().contains("signature"));
    }
}
