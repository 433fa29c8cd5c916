//! What a runbook file may say. Every field is checked while the YAML is
//! read, so a mistake is reported with its line and column: an unknown
//! family or step kind, a bad duration or URL, a template that does not
//! parse or names a variable the context lacks, a missing secret.

use std::{collections::BTreeMap, fmt, time::Duration};

use serde::{de, Deserialize, Deserializer};

use super::{
    channels::{self, Address, ChatId, Email, Smtp},
    limits::MAX_STEPS,
    secret::{SecretText, SecretUrl},
};
use crate::{
    detect::{family::Family, severity::Severity},
    mitigate::{
        derived::DEFAULT_MAX_COLLATERAL,
        prefix::Prefix,
        rule::{Match, Shape, ShapeRequest},
    },
    span::Span,
    targets::Direction,
};

/// The variables a template may use: the incident context (see README).
pub const TEMPLATE_VARIABLES: &[&str] = &[
    "event",
    "runbook",
    "dry_run",
    "incident_id",
    "node",
    "iface",
    "target",
    "hostgroup",
    "direction",
    "families",
    "vectors",
    "severity",
    "status",
    "started_at",
    "ended_at",
    "pps",
    "bps",
    "peak_pps",
    "peak_bps",
    "top_sources",
    "top_ports",
    "signature",
    "rules",
];

/// One runbook: one file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runbook {
    pub name: Name,
    #[serde(default)]
    pub description: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub mode: Mode,
    pub trigger: Trigger,
    /// Not again for the same incident within this long.
    #[serde(default = "default_cooldown", deserialize_with = "top_cooldown")]
    pub cooldown: Duration,
    /// Run the next steps after one fails.
    #[serde(default = "yes")]
    pub continue_on_error: bool,
    pub steps: Steps,
}

// serde_yaml places errors of the top-level mapping's own values at 1:1;
// their messages start with the field's name (here, and in `Name` and
// `Steps`), so `load::parse` can point at its line instead.
fn top_cooldown<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    named(duration(d), "cooldown")
}

fn named<T, E: de::Error>(r: Result<T, E>, field: &str) -> Result<T, E> {
    r.map_err(|e| E::custom(format!("{field}: {e}")))
}

fn yes() -> bool {
    true
}

fn default_cooldown() -> Duration {
    Duration::from_secs(300)
}

/// `[a-z0-9_-]`, 1 to 64: it names metrics series and history rows.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(pub String);

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty()
            || s.len() > 64
            || !s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            return Err(de::Error::custom(format!(
                "name: runbook name '{s}' must be 1 to 64 lowercase letters, digits, '-' or '_'"
            )));
        }
        Ok(Name(s))
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    /// Log and record what would be done; change nothing, send nothing.
    DryRun,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    pub families: Families,
    #[serde(default)]
    pub min_severity: MinSeverity,
    #[serde(default)]
    pub min_pps: f64,
    /// The escalation ladder: fires when the attack's bit rate (its peak)
    /// passes this share of its interface's capacity (`interfaces.<name>.
    /// capacity_bps` in the configuration, or the link speed).
    #[serde(default, deserialize_with = "share")]
    pub min_bps_share: Option<f64>,
    #[serde(default)]
    pub nodes: Nodes,
    /// The host groups whose incidents it fires for (`all` by default).
    #[serde(default)]
    pub hostgroups: Hostgroups,
    /// Incoming attacks only by default: a runbook written to defend a
    /// host must not answer a flood one of its own servers sends unless
    /// it says so.
    #[serde(default)]
    pub directions: Directions,
}

/// `[any]`, or a list of families.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Families {
    Any,
    These(Vec<Family>),
}

impl<'de> Deserialize<'de> for Families {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Families, D::Error> {
        let list = Vec::<String>::deserialize(d)?;
        if list.is_empty() {
            return Err(de::Error::custom("trigger.families is empty; list families, or [any]"));
        }
        let mut out = Vec::new();
        for name in &list {
            if name == "any" {
                return Ok(Families::Any);
            }
            let f = Family::ALL.iter().copied().find(|f| f.name() == name).ok_or_else(|| {
                let names: Vec<&str> = Family::ALL.iter().map(|f| f.name()).collect();
                de::Error::custom(format!("unknown family '{name}' (use any, or: {})", names.join(", ")))
            })?;
            out.push(f);
        }
        Ok(Families::These(out))
    }
}

/// `any`, or the lowest severity that fires.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MinSeverity {
    #[default]
    Any,
    Low,
    Medium,
    High,
    Critical,
}

impl MinSeverity {
    pub fn admits(self, s: Severity) -> bool {
        let floor = match self {
            MinSeverity::Any => return true,
            MinSeverity::Low => Severity::Low,
            MinSeverity::Medium => Severity::Medium,
            MinSeverity::High => Severity::High,
            MinSeverity::Critical => Severity::Critical,
        };
        s >= floor
    }
}

/// `all`, or a list of node names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Nodes {
    #[default]
    All,
    These(Vec<String>),
}

impl<'de> Deserialize<'de> for Nodes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Nodes, D::Error> {
        Ok(all_or_list(d, "nodes", "node names")?.map(Nodes::These).unwrap_or(Nodes::All))
    }
}

/// `all`, or a list of host group names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Hostgroups {
    #[default]
    All,
    These(Vec<String>),
}

impl<'de> Deserialize<'de> for Hostgroups {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Hostgroups, D::Error> {
        Ok(all_or_list(d, "hostgroups", "host group names")?.map(Hostgroups::These).unwrap_or(Hostgroups::All))
    }
}

/// `all` (none), or a non-empty list of names.
fn all_or_list<'de, D: Deserializer<'de>>(d: D, field: &str, what: &str) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    match Raw::deserialize(d)? {
        Raw::One(s) if s == "all" => Ok(None),
        Raw::One(s) => Err(de::Error::custom(format!("trigger.{field}: '{s}' is neither all nor a list of {what}"))),
        Raw::Many(v) if v.is_empty() => Err(de::Error::custom(format!("trigger.{field} is an empty list; write all"))),
        Raw::Many(v) => Ok(Some(v)),
    }
}

/// The directions of the incidents it fires for: `[incoming]` unless
/// told otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<Direction>")]
pub struct Directions(pub Vec<Direction>);

impl Default for Directions {
    fn default() -> Self {
        Directions(vec![Direction::Incoming])
    }
}

impl TryFrom<Vec<Direction>> for Directions {
    type Error = String;
    fn try_from(v: Vec<Direction>) -> Result<Self, String> {
        if v.is_empty() {
            return Err("trigger.directions is an empty list; write [incoming], [outgoing] or both".into());
        }
        Ok(Directions(v))
    }
}

/// At least one step, at most [`MAX_STEPS`].
#[derive(Clone, Debug)]
pub struct Steps(pub Vec<Step>);

impl<'de> Deserialize<'de> for Steps {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Steps, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Steps;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of steps")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Steps, A::Error> {
                let mut v = Vec::new();
                while let Some(step) = seq.next_element::<Step>()? {
                    if v.len() == MAX_STEPS {
                        // Refused at the 101st: the rest is not deserialized.
                        return Err(de::Error::custom(format!(
                            "a runbook has at most {MAX_STEPS} steps; this one has more"
                        )));
                    }
                    v.push(step);
                }
                if v.is_empty() {
                    return Err(de::Error::custom("a runbook needs at least one step"));
                }
                Ok(Steps(v))
            }
        }
        d.deserialize_seq(V)
    }
}

/// One step, written as a map with one key: its kind.
#[derive(Clone, Debug)]
pub enum Step {
    Notify(Notify),
    Webhook(Webhook),
    Mitigate(Mitigate),
    Incident(IncidentStep),
    Note(Template),
    /// Upstream mitigation over BGP ([`crate::bgp::step`]).
    Bgp(crate::bgp::step::BgpStep),
}

impl Step {
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Notify(_) => "notify",
            Step::Webhook(_) => "webhook",
            Step::Mitigate(_) => "mitigate",
            Step::Incident(_) => "incident",
            Step::Note(_) => "note",
            Step::Bgp(_) => "bgp",
        }
    }
}

const STEP_KINDS: &[&str] = &["notify", "webhook", "mitigate", "incident", "note", "bgp"];

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Step, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Step;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a step: a map with one key, its kind ({})", STEP_KINDS.join(", "))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Step, A::Error> {
                let Some(kind) = map.next_key::<String>()? else {
                    return Err(de::Error::custom("an empty step; give it a kind"));
                };
                let step = match kind.as_str() {
                    "notify" => Step::Notify(map.next_value()?),
                    "webhook" => Step::Webhook(map.next_value()?),
                    "mitigate" => Step::Mitigate(map.next_value()?),
                    "incident" => Step::Incident(map.next_value()?),
                    "note" => Step::Note(map.next_value()?),
                    "bgp" => Step::Bgp(map.next_value()?),
                    other => return Err(de::Error::unknown_variant(other, STEP_KINDS)),
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "a step has one kind; '{extra}' after '{kind}' starts another (begin it with '- ')"
                    )));
                }
                Ok(step)
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Slack,
    Discord,
    Pagerduty,
    Teams,
    Alertmanager,
    Webhook,
    Telegram,
    Opsgenie,
    Email,
}

impl Channel {
    pub fn name(self) -> &'static str {
        match self {
            Channel::Slack => "slack",
            Channel::Discord => "discord",
            Channel::Pagerduty => "pagerduty",
            Channel::Teams => "teams",
            Channel::Alertmanager => "alertmanager",
            Channel::Webhook => "webhook",
            Channel::Telegram => "telegram",
            Channel::Opsgenie => "opsgenie",
            Channel::Email => "email",
        }
    }
}

/// A `notify` step. What its channel needs is checked at load
/// ([`channels::check`]): a step that loads has it.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "RawNotify")]
pub struct Notify {
    pub channel: Channel,
    /// The incoming webhook (Slack, Discord, Teams, generic), the Events API
    /// (PagerDuty: `https://events.pagerduty.com/v2/enqueue` by default),
    /// Alertmanager's base URL, or the API's base URL (Telegram:
    /// `https://api.telegram.org`, OpsGenie: `https://api.opsgenie.com` by
    /// default).
    pub url: Option<SecretUrl>,
    pub message: Option<Template>,
    /// PagerDuty's integration (routing) key.
    pub routing_key: Option<SecretText>,
    /// Telegram: the bot's token. It goes into the request's URL.
    pub bot_token: Option<SecretText>,
    /// Telegram: the chat the bot writes to.
    pub chat_id: Option<ChatId>,
    /// OpsGenie: an API integration's key (`Authorization: GenieKey <key>`).
    pub api_key: Option<SecretText>,
    /// Email: the server, the sender, the recipients and the subject.
    pub email: Option<Box<Email>>,
    pub timeout: Duration,
    pub retries: u32,
    pub headers: BTreeMap<String, SecretText>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    channel: Channel,
    #[serde(default)]
    url: Option<SecretUrl>,
    #[serde(default)]
    message: Option<Template>,
    #[serde(default)]
    routing_key: Option<SecretText>,
    #[serde(default)]
    bot_token: Option<SecretText>,
    #[serde(default)]
    chat_id: Option<ChatId>,
    #[serde(default)]
    api_key: Option<SecretText>,
    #[serde(default)]
    smtp: Option<Smtp>,
    #[serde(default, deserialize_with = "address")]
    from: Option<Address>,
    #[serde(default, deserialize_with = "addresses")]
    to: Option<Vec<Address>>,
    #[serde(default)]
    subject: Option<Template>,
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    timeout: Duration,
    #[serde(default = "default_retries")]
    retries: u32,
    #[serde(default)]
    headers: BTreeMap<String, SecretText>,
}

impl TryFrom<RawNotify> for Notify {
    type Error = String;
    fn try_from(r: RawNotify) -> Result<Notify, String> {
        let email = channels::check(channels::Fields {
            channel: r.channel,
            has_url: r.url.is_some(),
            has_headers: !r.headers.is_empty(),
            has_routing_key: r.routing_key.is_some(),
            bot_token: r.bot_token.as_ref(),
            has_chat_id: r.chat_id.is_some(),
            has_api_key: r.api_key.is_some(),
            smtp: r.smtp,
            from: r.from,
            to: r.to,
            subject: r.subject,
        })?;
        Ok(Notify {
            channel: r.channel,
            url: r.url,
            message: r.message,
            routing_key: r.routing_key,
            bot_token: r.bot_token,
            chat_id: r.chat_id,
            api_key: r.api_key,
            email,
            timeout: r.timeout,
            retries: r.retries,
            headers: r.headers,
        })
    }
}

fn address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Address>, D::Error> {
    let s = String::deserialize(d)?;
    Address::parse(&s).map(Some).map_err(|e| de::Error::custom(format!("from: {e}")))
}

/// One address, or a list of them.
fn addresses<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Address>>, D::Error> {
    let list = one_or_many(d)?;
    list.iter()
        .map(|s| Address::parse(s).map_err(|e| de::Error::custom(format!("to: {e}"))))
        .collect::<Result<_, _>>()
        .map(Some)
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub url: SecretUrl,
    #[serde(default)]
    pub headers: BTreeMap<String, SecretText>,
    /// Signs the body: `X-Detector-Signature: sha256=<hex HMAC-SHA256>`.
    #[serde(default)]
    pub secret: Option<SecretText>,
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_retries() -> u32 {
    3
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MitigateAction {
    Drop,
    RateLimit,
    /// SYN cookies from XDP on the attacked ports (scope `signature`: the
    /// signature's destination ports, or the step's `port`).
    SynCookies,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One rule per top source of the incident (`top` of them).
    TopSources,
    /// One rule for `prefix`.
    Prefix,
    /// Rules built from the incident's signature (its classes, ports,
    /// attacked address, lengths and TTLs), on every source.
    Signature,
    /// For a reflected attack: rules on the reflected services (their
    /// classes and source ports, with the attacked address and lengths).
    Vectors,
}

/// A rule (or one per top source) installed through the mitigation layer,
/// with the runbook and the incident as its origin.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawMitigate")]
pub struct Mitigate {
    pub scope: Scope,
    /// How many top sources (scope `top_sources`).
    pub top: usize,
    /// The one prefix (scope `prefix`).
    pub prefix: Option<Prefix>,
    /// What each rule does and matches, checked at load by the rule check
    /// itself ([`ShapeRequest::check`]): the rules a step asks for at an
    /// incident cannot be refused for their shape.
    pub shape: Shape,
    /// Remove the rules when the incident resolves.
    pub remove_on_resolve: bool,
    /// Scopes `signature` and `vectors`: the largest share of the
    /// interface's peacetime traffic the rules may also match.
    pub max_collateral: f64,
    /// Scope `top_sources`: the least share of the incident's traffic a
    /// source must send to get a rule. A spoofed flood has no heavy
    /// sources, and its top list is the host's ordinary users.
    pub min_share: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMitigate {
    action: MitigateAction,
    scope: Scope,
    #[serde(default)]
    top: Option<usize>,
    #[serde(default)]
    prefix: Option<Prefix>,
    #[serde(default, deserialize_with = "one_or_many")]
    class: Vec<String>,
    #[serde(default)]
    port: Option<Span<u16>>,
    #[serde(default)]
    source_port: Option<Span<u16>>,
    #[serde(default)]
    dst: Option<Prefix>,
    #[serde(default)]
    length: Option<Span<u16>>,
    #[serde(default)]
    ip_ttl: Option<Span<u8>>,
    #[serde(default)]
    aggregate: bool,
    #[serde(default)]
    pps: Option<u64>,
    #[serde(default)]
    burst: Option<u64>,
    #[serde(default)]
    bps: Option<u64>,
    #[serde(deserialize_with = "duration")]
    ttl: Duration,
    #[serde(default = "yes")]
    remove_on_resolve: bool,
    #[serde(default, deserialize_with = "share")]
    max_collateral: Option<f64>,
    #[serde(default, deserialize_with = "share")]
    min_share: Option<f64>,
}

/// Default `min_share` of a `top_sources` step.
pub const DEFAULT_MIN_SHARE: f64 = 0.02;

/// A share: a number from 0 to 1, or a percentage (`"1%"`, `"0.5%"`).
fn share<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Num(f64),
        Text(String),
    }
    let v = match Raw::deserialize(d)? {
        Raw::Num(v) => v,
        Raw::Text(t) => match t.trim().strip_suffix('%').map(|n| n.trim().parse::<f64>()) {
            Some(Ok(p)) => p / 100.0,
            _ => return Err(de::Error::custom(format!("'{t}' is not a share (give 0.01 or 1%)"))),
        },
    };
    if !(0.0..=1.0).contains(&v) || v.is_nan() {
        return Err(de::Error::custom(format!("{v} is not a share between 0 and 1 (0% and 100%)")));
    }
    Ok(Some(v))
}

/// The most rules one `top_sources` step installs.
pub const MAX_TOP: usize = 100;

impl TryFrom<RawMitigate> for Mitigate {
    type Error = String;
    fn try_from(r: RawMitigate) -> Result<Mitigate, String> {
        match (r.scope, &r.prefix, r.top) {
            (Scope::Prefix, None, _) => return Err("mitigate: scope prefix needs a prefix".into()),
            (Scope::Prefix, Some(_), Some(_)) => return Err("mitigate: top applies to scope top_sources only".into()),
            (Scope::TopSources, Some(_), _) => {
                return Err("mitigate: prefix applies to scope prefix only (top_sources takes top)".into())
            }
            (Scope::TopSources, None, Some(n)) if n == 0 || n > MAX_TOP => {
                return Err(format!("mitigate.top must be 1 to {MAX_TOP}, not {n}"))
            }
            (Scope::Signature | Scope::Vectors, Some(_), _) | (Scope::Signature | Scope::Vectors, _, Some(_)) => {
                return Err("mitigate: prefix and top do not apply to scopes signature and vectors".into())
            }
            _ => {}
        }
        let derived = matches!(r.scope, Scope::Signature | Scope::Vectors);
        let cookies = r.action == MitigateAction::SynCookies;
        if cookies && r.scope != Scope::Signature {
            return Err("mitigate: syn_cookies takes scope signature (the attacked ports, or the step's port)".into());
        }
        if derived
            && (r.port.is_some() && !cookies
                || r.source_port.is_some()
                || r.dst.is_some()
                || r.length.is_some()
                || r.ip_ttl.is_some())
        {
            return Err("mitigate: scope signature and vectors take their match from the incident; leave out port, source_port, dst, length and ip_ttl".into());
        }
        if !derived && r.max_collateral.is_some() {
            return Err("mitigate: max_collateral applies to scopes signature and vectors only".into());
        }
        if r.scope != Scope::TopSources && r.min_share.is_some() {
            return Err("mitigate: min_share applies to scope top_sources only".into());
        }
        let shape = ShapeRequest {
            action: match r.action {
                MitigateAction::Drop => "drop",
                MitigateAction::RateLimit => "rate_limit",
                MitigateAction::SynCookies => "syn_cookies",
            },
            classes: &r.class,
            // A SYN-cookie step's ports come from the incident when it
            // gives none: checked here with a stand-in, left open below.
            m: Match {
                sport: r.source_port,
                dport: r.port.or(cookies.then(|| Span::one(1))),
                dst: r.dst,
                length: r.length,
                ip_ttl: r.ip_ttl,
            },
            aggregate: r.aggregate,
            prefix: r.prefix,
            pps: r.pps,
            burst: r.burst,
            bps: r.bps,
            ttl_ms: Some(u64::try_from(r.ttl.as_millis()).unwrap_or(u64::MAX)),
            reason: None,
        }
        .check()
        .map_err(|e| format!("mitigate: {e}"))?;
        let mut shape = shape;
        shape.m.dport = r.port;
        Ok(Mitigate {
            scope: r.scope,
            top: r.top.unwrap_or(10),
            prefix: r.prefix,
            shape,
            remove_on_resolve: r.remove_on_resolve,
            max_collateral: r.max_collateral.unwrap_or(DEFAULT_MAX_COLLATERAL),
            min_share: r.min_share.unwrap_or(DEFAULT_MIN_SHARE),
        })
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::One(s) => vec![s],
        Raw::Many(v) => v,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetStatus {
    Acknowledged,
    Escalated,
    Resolved,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentStep {
    pub status: SetStatus,
}

/// A minijinja template over the incident context, checked at load: it
/// must parse and use only [`TEMPLATE_VARIABLES`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template(pub String);

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Template, D::Error> {
        let src = String::deserialize(d)?;
        check_template(&src).map_err(de::Error::custom)?;
        Ok(Template(src))
    }
}

pub fn check_template(src: &str) -> Result<(), String> {
    let env = minijinja::Environment::new();
    let t = env.template_from_str(src).map_err(|e| format!("template syntax error: {}", e.detail().unwrap_or("")))?;
    let mut unknown: Vec<String> =
        t.undeclared_variables(false).into_iter().filter(|v| !TEMPLATE_VARIABLES.contains(&v.as_str())).collect();
    unknown.sort();
    if let Some(v) = unknown.first() {
        return Err(format!(
            "template uses '{v}', which the incident context does not have (it has: {})",
            TEMPLATE_VARIABLES.join(", ")
        ));
    }
    Ok(())
}

/// A duration like `250ms`, `5s`, `10m`.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| de::Error::custom(format!("'{s}' is not a duration ({e}); write it like 30s, 5m or 1h")))
}
