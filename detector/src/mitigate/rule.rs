//! What a rule is, and turning a request (from the CLI, the API or a
//! runbook) into one, refusing bad input with a message that names it.

use std::time::Duration;

use detector_common::{
    rules::{ALL_CLASSES, MAX_SLOTS},
    TrafficClass,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::prefix::Prefix;
use crate::span::{Span, SpanError};

/// The longest TTL a rule may have: a forgotten rule should not outlive a year.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest reason text kept.
pub const MAX_REASON: usize = 256;
/// Highest rate limit, in packets per second.
pub const MAX_PPS: u64 = 1_000_000_000;

/// What a rule does to the packets it matches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    Drop,
    /// Per source address: admit `pps` packets per second (with a burst of
    /// `burst`), and optionally `bps` bytes per second; drop the excess.
    RateLimit {
        pps: u64,
        burst: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bps: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        byte_burst: Option<u64>,
    },
    /// One budget for every packet the rule matches, whatever its source:
    /// admit `pps` packets and/or `bps` bytes per second, drop the excess.
    AggregateLimit {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pps: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        burst: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bps: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        byte_burst: Option<u64>,
    },
    /// Answer the SYNs to the rule's ports with a SYN cookie from XDP, and
    /// pass only the segments that carry a valid cookie back or come from
    /// a known peer (see `detector_common::syncookie`).
    SynCookies,
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Drop => "drop",
            Action::RateLimit { .. } => "rate_limit",
            Action::AggregateLimit { .. } => "aggregate_limit",
            Action::SynCookies => "syn_cookies",
        }
    }

    /// The byte bucket's depth in bytes, when it has one.
    pub fn byte_burst(&self) -> Option<u64> {
        match self {
            Action::Drop | Action::SynCookies => None,
            Action::RateLimit { byte_burst, .. } | Action::AggregateLimit { byte_burst, .. } => *byte_burst,
        }
    }

    /// The rates as a request gives them: pps, burst, bps, and whether
    /// they are one aggregate budget.
    pub fn rates(&self) -> (Option<u64>, Option<u64>, Option<u64>, bool) {
        match self {
            Action::Drop | Action::SynCookies => (None, None, None, false),
            Action::RateLimit { pps, burst, bps, .. } => (Some(*pps), Some(*burst), *bps, false),
            Action::AggregateLimit { pps, burst, bps, .. } => (*pps, *burst, *bps, true),
        }
    }
}

/// Who asked for a rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// `operator` (CLI or API) or `runbook`.
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runbook: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<String>,
    /// The runbook step (from 0) that installed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
}

impl Origin {
    pub fn operator() -> Origin {
        Origin { by: "operator".into(), runbook: None, incident: None, step: None }
    }

    /// A rule found in the kernel that the state directory had no record of.
    pub fn recovered() -> Origin {
        Origin { by: "recovered".into(), runbook: None, incident: None, step: None }
    }

    /// True when runbook `runbook`'s step `step` installed it for `incident`.
    pub fn is_step(&self, runbook: &str, incident: &str, step: usize) -> bool {
        self.runbook.as_deref() == Some(runbook)
            && self.incident.as_deref() == Some(incident)
            && self.step == Some(step)
    }

    /// Operator rules are never removed to make room, nor by a runbook.
    pub fn is_operator(&self) -> bool {
        self.by == "operator"
    }
}

/// A rule in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// `r<N>`, never reused.
    pub id: String,
    /// Where its counters live in the kernel (1..=max_rules).
    pub index: u32,
    pub prefix: Prefix,
    /// Traffic classes (and groups) it is scoped to; empty: every class.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    #[serde(flatten)]
    pub m: Match,
    pub action: Action,
    pub reason: String,
    pub origin: Origin,
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
}

/// What a rule matches besides its source prefix and classes; `None`:
/// anything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Match {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sport: Option<Span<u16>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<Span<u16>>,
    /// Destination prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<Prefix>,
    /// Frame length in bytes, Ethernet header included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<Span<u16>>,
    /// IPv4 TTL or IPv6 hop limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_ttl: Option<Span<u8>>,
}

impl Match {
    /// How many of its fields narrow the match.
    pub fn narrowing(&self) -> u32 {
        self.sport.is_some() as u32
            + self.dport.is_some() as u32
            + self.dst.is_some() as u32
            + self.length.is_some() as u32
            + self.ip_ttl.is_some() as u32
    }

    /// ` sport 123 dport 1024-65535 dst 192.0.2.7/32 len 400-1500 ttl 50-60`.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(p) = self.sport {
            s.push_str(&format!(" sport {p}"));
        }
        if let Some(p) = self.dport {
            s.push_str(&format!(" dport {p}"));
        }
        if let Some(d) = self.dst {
            s.push_str(&format!(" dst {d}"));
        }
        if let Some(l) = self.length {
            s.push_str(&format!(" len {l}"));
        }
        if let Some(t) = self.ip_ttl {
            s.push_str(&format!(" ip-ttl {t}"));
        }
        s
    }
}

impl Rule {
    /// The classes bit mask the XDP slot carries.
    pub fn class_mask(&self) -> u32 {
        if self.action == Action::SynCookies {
            return SYN_COOKIE_CLASSES;
        }
        class_mask(&self.classes).unwrap_or(ALL_CLASSES)
    }

    /// True when the two rules match the same packets the same way.
    pub fn same_match(&self, other: &Rule) -> bool {
        self.prefix == other.prefix
            && self.class_mask() == other.class_mask()
            && self.m == other.m
            && self.action.name() == other.action.name()
    }

    /// One line for logs and the CLI: `r3 drop 10.0.0.0/8 udp dport 53`.
    pub fn describe(&self) -> String {
        let mut s = format!("{} {} {}", self.id, self.action.name(), self.prefix);
        if !self.classes.is_empty() {
            s.push_str(&format!(" class {}", self.classes.join(",")));
        }
        s.push_str(&self.m.describe());
        let (pps, burst, bps, _) = self.action.rates();
        if let Some(pps) = pps {
            s.push_str(&format!(" {pps}/s"));
        }
        if let Some(burst) = burst {
            s.push_str(&format!(" burst {burst}"));
        }
        if let Some(b) = bps {
            s.push_str(&format!(" {b} B/s"));
        }
        s
    }

    /// The rule's shape as a request gives it, for checking it again (a
    /// saved rule is checked as a new one is).
    pub fn shape_request(&self) -> ShapeRequest<'_> {
        let (pps, burst, bps, aggregate) = self.action.rates();
        ShapeRequest {
            action: if aggregate { "rate_limit" } else { self.action.name() },
            classes: &self.classes,
            m: self.m.clone(),
            aggregate,
            pps,
            burst,
            bps,
            ttl_ms: None,
            reason: Some(&self.reason),
            prefix: Some(self.prefix),
        }
    }
}

/// A request for a new rule, as the API and runbooks send it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleRequest {
    /// `drop` or `rate_limit`.
    pub action: String,
    /// Source prefix; one address is a /32 or /128.
    pub prefix: String,
    #[serde(default)]
    pub classes: Vec<String>,
    /// Source port or span (`123`, `"1024-65535"`).
    #[serde(default)]
    pub sport: Option<Span<u16>>,
    /// Destination port or span.
    #[serde(default)]
    pub dport: Option<Span<u16>>,
    /// Destination prefix.
    #[serde(default)]
    pub dst: Option<String>,
    /// Frame length span in bytes.
    #[serde(default)]
    pub length: Option<Span<u16>>,
    /// IPv4 TTL or IPv6 hop-limit span.
    #[serde(default)]
    pub ip_ttl: Option<Span<u8>>,
    /// A rate limit shared by every matching packet, not per source.
    #[serde(default)]
    pub aggregate: bool,
    #[serde(default)]
    pub pps: Option<u64>,
    #[serde(default)]
    pub burst: Option<u64>,
    #[serde(default)]
    pub bps: Option<u64>,
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub origin: Option<Origin>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("{0}")]
    Prefix(String),
    #[error("unknown action '{0}' (use drop, rate_limit or syn_cookies)")]
    Action(String),
    #[error("syn_cookies needs the TCP port or ports it protects: give dport (--port)")]
    SynCookiesPort,
    #[error("syn_cookies takes no class: it answers the SYNs and checks the ACKs to its ports")]
    SynCookiesClass,
    #[error("dport {0}: no TCP listener on it in this network namespace; syn_cookies would answer SYNs for a service that is not there")]
    NoListener(Span<u16>),
    #[error("unknown traffic class '{0}' (use tcp, udp, icmp or one of: {list})", list = class_names())]
    Class(String),
    #[error("port 0 cannot be matched; give a port from 1 to 65535 or leave it out")]
    PortZero,
    #[error("{field}: {source}")]
    Span { field: &'static str, source: SpanError },
    #[error("dst: {0}")]
    Dst(String),
    #[error("length {0} cannot match: a frame is 14 to 65535 bytes")]
    Length(Span<u16>),
    #[error("{0}: the rule can match no packet ({1})")]
    MatchesNothing(&'static str, String),
    #[error("an aggregate limit needs a rate: pps and/or bps")]
    MissingAggregateRate,
    #[error("a rate limit needs a rate: pps from 1 to {MAX_PPS}")]
    MissingRate,
    #[error("rate {0} packets per second is out of range (1 to {MAX_PPS})")]
    Rate(u64),
    #[error("burst {0} is out of range (1 to {MAX_BURST})")]
    Burst(u64),
    #[error("byte rate {0} bytes per second is out of range (1500 to 100000000000)")]
    ByteRate(u64),
    #[error("aggregate only applies to a rate_limit rule")]
    AggregateOnDrop,
    #[error("pps, burst and bps only apply to a rate_limit rule")]
    RateOnDrop,
    #[error("ttl must be between 1s and 365 days")]
    Ttl,
    #[error("the reason is longer than {MAX_REASON} characters or holds control characters")]
    Reason,
}

fn class_names() -> String {
    TrafficClass::ALL.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
}

/// The classes a SYN-cookie rule acts on: the SYN it answers, and the
/// segments that may carry its cookie back (an ACK, or data: the client's
/// first request may come with it). A known peer's ACKs are
/// `tcp_established`, outside it: they pass without a check.
pub const SYN_COOKIE_CLASSES: u32 =
    1 << TrafficClass::TcpSyn as u32 | 1 << TrafficClass::TcpAck as u32 | 1 << TrafficClass::HttpRequest as u32;

/// The mask of a class scope. `tcp`, `udp` and `icmp` are groups (every
/// TCP class; every UDP class, DNS and amplification included; ICMP and
/// ICMPv6); any other name is one class.
pub fn class_mask(names: &[String]) -> Result<u32, RequestError> {
    if names.is_empty() {
        return Ok(ALL_CLASSES);
    }
    let bit = |c: TrafficClass| 1u32 << c.index();
    let mut mask = 0;
    for n in names {
        mask |= match n.as_str() {
            "tcp" => TrafficClass::ALL.iter().filter(|c| c.is_tcp()).fold(0, |m, c| m | bit(*c)),
            "udp" => TrafficClass::ALL.iter().filter(|c| c.is_udp()).fold(0, |m, c| m | bit(*c)),
            "icmp" => bit(TrafficClass::Icmp) | bit(TrafficClass::Icmpv6),
            other => TrafficClass::from_name(other).map(bit).ok_or_else(|| RequestError::Class(other.into()))?,
        };
    }
    Ok(mask)
}

/// A rule checked and ready for an id and an index: its prefix, its shape
/// and who asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    pub prefix: Prefix,
    pub shape: Shape,
    pub origin: Origin,
}

/// What a rule does and to which packets, checked: everything but the
/// prefix it applies to and who asked for it. A runbook's `mitigate` step
/// holds one, checked when the runbook loads, so the rules it asks for at
/// an incident cannot be refused for their shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Lowercase, sorted, without duplicates.
    pub classes: Vec<String>,
    pub m: Match,
    pub action: Action,
    pub ttl: Option<Duration>,
    pub reason: String,
}

/// The fields of a rule's shape as given, unchecked (see [`ShapeRequest::check`]).
#[derive(Clone, Debug, Default)]
pub struct ShapeRequest<'a> {
    /// `drop` or `rate_limit` (`ratelimit`, `rate-limit`).
    pub action: &'a str,
    pub classes: &'a [String],
    pub m: Match,
    /// With `rate_limit`: one budget for the rule, not one per source.
    pub aggregate: bool,
    pub pps: Option<u64>,
    pub burst: Option<u64>,
    pub bps: Option<u64>,
    pub ttl_ms: Option<u64>,
    pub reason: Option<&'a str>,
    /// The source prefix, when known: a destination of the other family
    /// would make a rule that matches nothing.
    pub prefix: Option<Prefix>,
}

/// Highest burst of a rate limit, in packets.
pub const MAX_BURST: u64 = 10_000_000;

impl ShapeRequest<'_> {
    /// The one check of a rule's shape, for every entry point: the CLI and
    /// the control API (through [`RuleRequest::check`]) and the runbook
    /// schema. The first problem is the error.
    pub fn check(&self) -> Result<Shape, RequestError> {
        let mut classes: Vec<String> = self.classes.iter().map(|c| c.trim().to_ascii_lowercase()).collect();
        classes.sort();
        classes.dedup();
        let mask = class_mask(&classes)?;
        self.check_match(mask)?;
        let action = match self.action {
            "drop" => {
                if self.pps.is_some() || self.burst.is_some() || self.bps.is_some() {
                    return Err(RequestError::RateOnDrop);
                }
                if self.aggregate {
                    return Err(RequestError::AggregateOnDrop);
                }
                Action::Drop
            }
            "rate_limit" | "ratelimit" | "rate-limit" | "aggregate_limit"
                if self.aggregate || self.action == "aggregate_limit" =>
            {
                self.aggregate_action()?
            }
            "rate_limit" | "ratelimit" | "rate-limit" => {
                let pps = self.pps.ok_or(RequestError::MissingRate)?;
                if pps == 0 || pps > MAX_PPS {
                    return Err(RequestError::Rate(pps));
                }
                // Default burst: a tenth of a second's worth, at least 5
                // packets (iptables' hashlimit default), at most the
                // highest burst (so a high rate given alone is valid).
                let burst = self.burst.unwrap_or((pps / 10).clamp(5, MAX_BURST));
                if burst == 0 || burst > MAX_BURST {
                    return Err(RequestError::Burst(burst));
                }
                if let Some(b) = self.bps {
                    if !(1500..=100_000_000_000).contains(&b) {
                        return Err(RequestError::ByteRate(b));
                    }
                }
                let byte_burst = self.bps.map(|b| (b / 10).max(1500 * 5));
                Action::RateLimit { pps, burst, bps: self.bps, byte_burst }
            }
            "syn_cookies" | "syn-cookies" | "syncookies" => {
                if self.pps.is_some() || self.burst.is_some() || self.bps.is_some() {
                    return Err(RequestError::RateOnDrop);
                }
                if self.aggregate {
                    return Err(RequestError::AggregateOnDrop);
                }
                if !classes.is_empty() {
                    return Err(RequestError::SynCookiesClass);
                }
                if self.m.dport.is_none() {
                    return Err(RequestError::SynCookiesPort);
                }
                Action::SynCookies
            }
            other => return Err(RequestError::Action(other.into())),
        };
        let ttl = match self.ttl_ms {
            None => None,
            Some(ms) => {
                let d = Duration::from_millis(ms);
                if d < Duration::from_secs(1) || d > MAX_TTL {
                    return Err(RequestError::Ttl);
                }
                Some(d)
            }
        };
        let reason = self.reason.unwrap_or_default().to_string();
        check_reason(&reason)?;
        Ok(Shape { classes, m: self.m.clone(), action, ttl, reason })
    }

    /// The match fields: spans that can match, a destination of the
    /// source's family, ports only on classes that have them.
    fn check_match(&self, mask: u32) -> Result<(), RequestError> {
        for p in [self.m.sport, self.m.dport].into_iter().flatten() {
            if p.lo == 0 {
                return Err(RequestError::PortZero);
            }
        }
        if let Some(l) = self.m.length {
            if l.hi < 14 {
                return Err(RequestError::Length(l));
            }
        }
        if self.m.sport.is_some() || self.m.dport.is_some() {
            let ported = TrafficClass::ALL.iter().filter(|c| c.has_ports()).fold(0, |m, c| m | 1 << c.index());
            if mask & ported == 0 {
                return Err(RequestError::MatchesNothing(
                    "sport/dport",
                    "none of its classes has ports: only TCP and UDP do".into(),
                ));
            }
        }
        if let (Some(dst), Some(src)) = (self.m.dst, self.prefix) {
            let any = Prefix::new("::".parse().expect("an address"), 0).expect("a prefix");
            if src != any && dst.is_ipv4() != src.is_ipv4() && dst != any {
                return Err(RequestError::MatchesNothing(
                    "dst",
                    format!("destination {dst} and source {src} are of different IP families"),
                ));
            }
        }
        Ok(())
    }

    /// An aggregate limit: pps and/or bps, each with its burst.
    fn aggregate_action(&self) -> Result<Action, RequestError> {
        if self.pps.is_none() && self.bps.is_none() {
            return Err(RequestError::MissingAggregateRate);
        }
        let mut burst = None;
        if let Some(pps) = self.pps {
            if pps == 0 || pps > MAX_PPS {
                return Err(RequestError::Rate(pps));
            }
            let b = self.burst.unwrap_or((pps / 10).clamp(5, MAX_BURST));
            if b == 0 || b > MAX_BURST {
                return Err(RequestError::Burst(b));
            }
            burst = Some(b);
        } else if self.burst.is_some() {
            return Err(RequestError::MissingRate);
        }
        if let Some(b) = self.bps {
            if !(1500..=100_000_000_000).contains(&b) {
                return Err(RequestError::ByteRate(b));
            }
        }
        let byte_burst = self.bps.map(|b| (b / 10).max(1500 * 5));
        Ok(Action::AggregateLimit { pps: self.pps, burst, bps: self.bps, byte_burst })
    }
}

impl Shape {
    /// The request for this shape at `prefix`, with `reason` (made fit:
    /// control characters become spaces, and it is cut to [`MAX_REASON`])
    /// and `origin`. Its [`RuleRequest::check`] gives back this shape.
    pub fn request(&self, prefix: Prefix, reason: &str, origin: Origin) -> RuleRequest {
        let (pps, burst, bps, aggregate) = self.action.rates();
        RuleRequest {
            action: if aggregate { "rate_limit".to_string() } else { self.action.name().to_string() },
            prefix: prefix.to_string(),
            classes: self.classes.clone(),
            sport: self.m.sport,
            dport: self.m.dport,
            dst: self.m.dst.map(|d| d.to_string()),
            length: self.m.length,
            ip_ttl: self.m.ip_ttl,
            aggregate,
            pps,
            burst,
            bps,
            ttl_ms: self.ttl.map(|d| d.as_millis() as u64),
            reason: Some(fit_reason(reason)),
            origin: Some(origin),
        }
    }
}

/// `text` as a reason a rule accepts: control characters become spaces,
/// and it is cut to [`MAX_REASON`] characters.
pub fn fit_reason(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).take(MAX_REASON).collect()
}

impl RuleRequest {
    /// The fields of the request that make its shape (the destination
    /// prefix parsed, or the error naming it).
    pub fn shape(&self) -> Result<ShapeRequest<'_>, RequestError> {
        let dst = match &self.dst {
            None => None,
            Some(d) => Some(d.parse::<Prefix>().map_err(RequestError::Dst)?),
        };
        Ok(ShapeRequest {
            action: &self.action,
            classes: &self.classes,
            m: Match { sport: self.sport, dport: self.dport, dst, length: self.length, ip_ttl: self.ip_ttl },
            aggregate: self.aggregate,
            pps: self.pps,
            burst: self.burst,
            bps: self.bps,
            ttl_ms: self.ttl_ms,
            reason: self.reason.as_deref(),
            prefix: self.prefix.parse().ok(),
        })
    }

    /// Validates every field: the prefix, then the shape
    /// ([`ShapeRequest::check`]); the first problem is the error.
    pub fn check(&self) -> Result<Checked, RequestError> {
        let prefix: Prefix = self.prefix.parse().map_err(RequestError::Prefix)?;
        let shape = self.shape()?.check()?;
        let origin = self.origin.clone().unwrap_or_else(Origin::operator);
        Ok(Checked { prefix, shape, origin })
    }
}

/// The most rules that may cover one address: the XDP entry's slot count.
pub const MAX_OVERLAP: usize = MAX_SLOTS;

/// The one check of an operator's reason text, for rules and allowlist
/// entries alike: at most [`MAX_REASON`] characters, no control characters
/// (it is printed in tables and logs). Refused, never trimmed.
pub fn check_reason(reason: &str) -> Result<(), RequestError> {
    if reason.chars().count() > MAX_REASON || reason.chars().any(char::is_control) {
        return Err(RequestError::Reason);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::Span;

    fn drop(prefix: &str) -> RuleRequest {
        RuleRequest { action: "drop".into(), prefix: prefix.into(), ..Default::default() }
    }

    #[test]
    fn a_good_request_checks() {
        let mut r = drop("10.0.0.0/8");
        r.classes = vec!["UDP".into(), "udp".into()];
        r.dport = Some(Span::one(53));
        r.ttl_ms = Some(60_000);
        let c = r.check().unwrap();
        assert_eq!(c.shape.classes, vec!["udp"]);
        assert_eq!(c.shape.ttl, Some(Duration::from_secs(60)));
        assert!(c.origin.is_operator());
        let rl =
            RuleRequest { action: "rate_limit".into(), prefix: "::/0".into(), pps: Some(50), ..Default::default() };
        assert_eq!(
            rl.check().unwrap().shape.action,
            Action::RateLimit { pps: 50, burst: 5, bps: None, byte_burst: None }
        );
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let err = |r: RuleRequest| r.check().unwrap_err().to_string();
        assert!(err(drop("10.0.0.300/8")).contains("'10.0.0.300' is not an IP address"));
        assert!(err(drop("10.0.0.1/8")).contains("did you mean 10.0.0.0/8"));
        let mut r = drop("10.0.0.0/8");
        r.classes = vec!["udpp".into()];
        assert!(err(r).starts_with("unknown traffic class 'udpp'"));
        let mut r = drop("10.0.0.0/8");
        r.dport = Some(Span::one(0));
        assert!(err(r).contains("port 0"));
        let mut r = drop("10.0.0.0/8");
        r.action = "block".into();
        assert_eq!(err(r), "unknown action 'block' (use drop, rate_limit or syn_cookies)");
        // SYN cookies: for a TCP port, and nothing else.
        let mut r = drop("0.0.0.0/0");
        r.action = "syn_cookies".into();
        assert_eq!(err(r.clone()), "syn_cookies needs the TCP port or ports it protects: give dport (--port)");
        r.dport = Some(Span::one(80));
        assert!(r.check().is_ok());
        let mut c = r.clone();
        c.classes = vec!["udp".into()];
        assert_eq!(err(c), "syn_cookies takes no class: it answers the SYNs and checks the ACKs to its ports");
        let mut c = r.clone();
        c.pps = Some(5);
        assert!(err(c).contains("only apply to a rate_limit"));
        let mut r = drop("10.0.0.0/8");
        r.pps = Some(5);
        assert!(err(r).contains("only apply to a rate_limit"));
        let mut r = drop("10.0.0.0/8");
        r.action = "rate_limit".into();
        assert!(err(r.clone()).contains("needs a rate"));
        r.pps = Some(0);
        assert!(err(r.clone()).contains("out of range"));
        r.pps = Some(10);
        r.bps = Some(10);
        assert!(err(r).contains("byte rate 10"));
        let mut r = drop("10.0.0.0/8");
        r.ttl_ms = Some(10);
        assert!(err(r).contains("ttl"));
        let mut r = drop("10.0.0.0/8");
        r.reason = Some("a\nb".into());
        assert!(err(r).contains("control characters"));
    }

    #[test]
    fn signature_requests_check_every_field() {
        let req = |json: &str| serde_json::from_str::<RuleRequest>(json).map_err(|e| e.to_string());
        let ok = req(r#"{"action":"drop","prefix":"0.0.0.0/0","classes":["udp"],"dport":27015,"length":"60-80","ip_ttl":"50-64","dst":"192.0.2.0/24"}"#)
            .unwrap()
            .check()
            .unwrap();
        assert_eq!(ok.shape.m.length, Some(Span { lo: 60, hi: 80 }));
        assert_eq!(ok.shape.m.dport, Some(Span::one(27015)));
        // Bad input, each refused with one line naming the field.
        assert!(req(r#"{"action":"drop","prefix":"0.0.0.0/0","length":"80-60"}"#).unwrap_err().contains("inverted"));
        assert!(req(r#"{"action":"drop","prefix":"0.0.0.0/0","ip_ttl":"50-300"}"#)
            .unwrap_err()
            .contains("300 is out of range (0 to 255)"));
        assert!(req(r#"{"action":"drop","prefix":"0.0.0.0/0","length":""}"#).is_err());
        let err = |json: &str| req(json).unwrap().check().unwrap_err().to_string();
        assert_eq!(
            err(r#"{"action":"drop","prefix":"0.0.0.0/0","classes":["icmp"],"dport":"1-100"}"#),
            "sport/dport: the rule can match no packet (none of its classes has ports: only TCP and UDP do)"
        );
        assert!(err(r#"{"action":"drop","prefix":"0.0.0.0/0","dport":"0-100"}"#).contains("port 0"));
        assert!(err(r#"{"action":"drop","prefix":"0.0.0.0/0","length":"1-13"}"#).contains("length 1-13 cannot match"));
        assert!(err(r#"{"action":"drop","prefix":"10.0.0.0/8","dst":"2001:db8::/32"}"#)
            .starts_with("dst: the rule can match no packet (destination 2001:db8::/32 and source 10.0.0.0/8"));
        assert!(err(r#"{"action":"drop","prefix":"0.0.0.0/0","dst":"10.0.0.1/8"}"#).starts_with("dst: "));
        // Aggregate limits: a rate, not zero; not on a drop.
        assert_eq!(
            err(r#"{"action":"rate_limit","aggregate":true,"prefix":"0.0.0.0/0","pps":0}"#),
            "rate 0 packets per second is out of range (1 to 1000000000)"
        );
        assert_eq!(
            err(r#"{"action":"rate_limit","aggregate":true,"prefix":"0.0.0.0/0"}"#),
            "an aggregate limit needs a rate: pps and/or bps"
        );
        assert!(err(r#"{"action":"rate_limit","aggregate":true,"prefix":"0.0.0.0/0","bps":0}"#).contains("byte rate 0"));
        assert_eq!(
            err(r#"{"action":"drop","aggregate":true,"prefix":"0.0.0.0/0"}"#),
            "aggregate only applies to a rate_limit rule"
        );
        let agg = req(r#"{"action":"rate_limit","aggregate":true,"prefix":"0.0.0.0/0","bps":8000000}"#)
            .unwrap()
            .check()
            .unwrap();
        assert_eq!(
            agg.shape.action,
            Action::AggregateLimit { pps: None, burst: None, bps: Some(8_000_000), byte_burst: Some(800_000) }
        );
    }

    #[test]
    fn rules_saved_before_ranges_still_load() {
        let old = r#"{"id":"r3","index":3,"prefix":"10.0.0.0/8","classes":["udp"],"dport":53,"action":{"kind":"drop"},"reason":"","origin":{"by":"operator"},"created_ms":1}"#;
        let r: Rule = serde_json::from_str(old).unwrap();
        assert_eq!(r.m.dport, Some(Span::one(53)));
        let again: Rule = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(again, r);
        assert!(serde_json::to_string(&r).unwrap().contains(r#""dport":53"#));
    }

    #[test]
    fn one_shape_check_behind_every_request() {
        let mut r = drop("10.0.0.0/8");
        r.action = "rate_limit".into();
        r.pps = Some(50);
        r.burst = Some(0);
        assert_eq!(r.check().unwrap_err(), RequestError::Burst(0));
        assert_eq!(r.shape().unwrap().check().unwrap_err(), RequestError::Burst(0));
        r.burst = Some(MAX_BURST + 1);
        assert!(r.check().unwrap_err().to_string().contains("burst 10000001 is out of range (1 to 10000000)"));
        // A tiny rate's default burst is 5; a large one's a tenth of it, at
        // most the highest burst.
        r.burst = None;
        assert_eq!(
            r.check().unwrap().shape.action,
            Action::RateLimit { pps: 50, burst: 5, bps: None, byte_burst: None }
        );
        r.pps = Some(MAX_PPS);
        assert_eq!(
            r.check().unwrap().shape.action,
            Action::RateLimit { pps: MAX_PPS, burst: MAX_BURST, bps: None, byte_burst: None }
        );
        // The prefix is checked first, the shape after.
        r.prefix = "nope".into();
        assert!(matches!(r.check().unwrap_err(), RequestError::Prefix(_)));
    }

    #[test]
    fn a_shape_makes_requests_that_check_back_to_it() {
        let classes = vec!["UDP".to_string(), "tcp_syn".into(), "udp".into()];
        let raw = ShapeRequest {
            action: "rate-limit",
            classes: &classes,
            m: Match { sport: Some(Span::one(123)), dport: Some(Span::one(53)), ..Default::default() },
            pps: Some(1000),
            burst: None,
            bps: Some(1_000_000),
            ttl_ms: Some(600_000),
            reason: None,
            ..Default::default()
        };
        let shape = raw.check().unwrap();
        assert_eq!(shape.classes, ["tcp_syn", "udp"]);
        let origin = Origin { by: "runbook".into(), runbook: Some("rb".into()), incident: None, step: Some(0) };
        let long = format!("udp_flood on eth0\n{}", "x".repeat(400));
        let req = shape.request("198.51.100.7/32".parse().unwrap(), &long, origin.clone());
        let c = req.check().unwrap();
        assert_eq!(Shape { reason: String::new(), ..c.shape.clone() }, shape);
        assert_eq!(c.shape.reason.chars().count(), MAX_REASON);
        assert!(c.shape.reason.starts_with("udp_flood on eth0 x"), "control characters become spaces");
        assert_eq!(c.origin, origin);
        assert_eq!(fit_reason("a\tb"), "a b");
    }

    #[test]
    fn class_groups() {
        let m = class_mask(&["udp".into()]).unwrap();
        assert_eq!(m.count_ones(), 4);
        assert_ne!(m & (1 << TrafficClass::DnsResponse.index()), 0);
        assert_eq!(class_mask(&["tcp_syn".into()]).unwrap(), 1);
        assert_eq!(class_mask(&[]).unwrap(), ALL_CLASSES);
    }
}
