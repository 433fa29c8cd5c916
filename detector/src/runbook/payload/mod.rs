//! What `notify` and `webhook` steps send, built here and sent by
//! [`super::send`]: one module per service family, each producing the
//! payload its service documents: [`chat`] (Slack, Discord, Teams),
//! [`telegram`], [`pagerduty`], [`opsgenie`], [`alertmanager`], [`webhook`]
//! (the generic webhook, documented in `docs/webhook.md`, and its
//! signature), and [`email`] (a mail for an SMTP server). The other
//! channels are documented in `docs/channels.md`. Pure: no network, no
//! clock (the one time a payload needs, "now", is an argument).
//!
//! Every HTTP request is a `POST`. A [`Request`] holds its resolved URL and
//! headers, which may carry secrets, next to what is safe to show: its
//! `Debug` output shows only the latter, and never the body (PagerDuty's
//! carries the routing key). A [`Mail`] likewise shows its server and
//! recipients, never its login.

pub mod alertmanager;
pub mod chat;
pub mod email;
pub mod opsgenie;
pub mod pagerduty;
pub mod telegram;
pub mod webhook;

#[cfg(test)]
pub(crate) mod testing;

use std::{collections::BTreeMap, fmt};

use serde_json::Value;

pub use self::{
    alertmanager::{
        alertmanager, alertmanager_url, ALERTMANAGER_FIRING_FOR, ALERTMANAGER_PATH, ALERTMANAGER_RESEND, ALERTNAME,
    },
    chat::{discord, slack, teams, DISCORD_CONTENT_MAX},
    email::{email, Mail, SUBJECT_MAX},
    opsgenie::{opsgenie, opsgenie_priority, percent_encode, OPSGENIE_ALIAS_MAX, OPSGENIE_MESSAGE_MAX, OPSGENIE_URL},
    pagerduty::{pagerduty, pagerduty_severity, PAGERDUTY_SUMMARY_MAX, PAGERDUTY_URL},
    telegram::{telegram, TELEGRAM_TEXT_MAX, TELEGRAM_URL},
    webhook::{notify_webhook, sign, verify, webhook, EVENT_HEADER, SIGNATURE_HEADER},
};
use super::{
    context::{AttackEvent, Context},
    schema::{Channel, Notify},
    secret::{SecretText, SecretUrl},
};
use crate::{
    detect::incident::time_ms,
    format::{bits, pps},
};

/// `detector/<version>`, on every request.
pub const USER_AGENT: &str = concat!("detector/", env!("CARGO_PKG_VERSION"));

/// One HTTP `POST`, ready to send.
#[derive(Clone, PartialEq, Eq)]
pub struct Request {
    /// The resolved URL: may hold secrets (Slack, Discord and Teams webhook
    /// URLs are credentials). For the wire only: never log it.
    pub url: String,
    /// The URL as the runbook wrote it (`${SLACK_WEBHOOK_URL}`): safe to log.
    pub shown_url: String,
    /// Resolved header values, in sending order. For the wire only.
    pub headers: Vec<(String, String)>,
    /// The same headers with step headers as written (`Bearer ${TOKEN}`):
    /// safe to log.
    pub shown_headers: Vec<(String, String)>,
    /// JSON. May hold secrets (PagerDuty's routing key): never log it.
    pub body: Vec<u8>,
}

impl Request {
    /// A header's resolved value; names compare case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("url", &self.shown_url)
            .field("headers", &self.shown_headers)
            .field("body", &format_args!("<{} bytes>", self.body.len()))
            .finish()
    }
}

/// What a `notify` step sends: an HTTP request, or a mail.
#[derive(Clone, Debug)]
pub enum Delivery {
    Http(Request),
    Mail(Box<Mail>),
}

impl Delivery {
    /// Where it goes, safe to show: the URL as the runbook wrote it, or
    /// the recipients and the SMTP server.
    pub fn shown(&self) -> String {
        match self {
            Delivery::Http(r) => r.shown_url.clone(),
            Delivery::Mail(m) => m.shown(),
        }
    }
}

/// The message a `notify` step sends: for `attack_start` and
/// `attack_update`, its `message` template rendered over the context; for
/// `attack_end`, and when the step has no template (or it renders to
/// nothing but whitespace), [`Context::summary`], which names the event
/// (templates are written for a running attack: "dropping the top 10
/// sources"). `Err` is a template error.
pub fn message(step: &Notify, ctx: &Context) -> Result<String, String> {
    let text = match &step.message {
        Some(t) if ctx.event != AttackEvent::AttackEnd => ctx.render(&t.0)?,
        _ => String::new(),
    };
    Ok(if text.trim().is_empty() { ctx.summary() } else { text })
}

/// What a `notify` step sends, for its channel. `message` is the rendered
/// message (see [`message`]); `now_ms` is Alertmanager's `endsAt` when an
/// ended attack has no `ended_at`, and a mail's `Date`. `Err` when the step
/// lacks what its channel needs (a `url`, PagerDuty's `routing_key`), or a
/// mail's subject template fails.
pub fn notify(step: &Notify, ctx: &Context, message: &str, now_ms: u64) -> Result<Delivery, String> {
    let http = match step.channel {
        Channel::Slack => slack(step, ctx, message),
        Channel::Discord => discord(step, ctx, message),
        Channel::Teams => teams(step, ctx, message),
        Channel::Telegram => telegram(step, ctx, message),
        Channel::Pagerduty => pagerduty(step, ctx, message),
        Channel::Opsgenie => opsgenie(step, ctx, message),
        Channel::Alertmanager => alertmanager(step, ctx, message, now_ms),
        Channel::Webhook => notify_webhook(step, ctx, message),
        Channel::Email => return email(step, ctx, message, now_ms).map(|m| Delivery::Mail(Box::new(m))),
    };
    http.map(Delivery::Http)
}

/// Cuts `s` to at most `max` characters (Unicode scalar values), at a
/// character boundary; a cut string ends in `…` (counted in `max`).
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

// --- shared pieces ---

fn need_url<'a>(step: &'a Notify, channel: &str) -> Result<&'a SecretUrl, String> {
    step.url.as_ref().ok_or_else(|| format!("notify {channel}: the step has no url"))
}

/// The message, or the summary when it is blank (services refuse empty text).
fn text(message: &str, ctx: &Context) -> String {
    if message.trim().is_empty() {
        ctx.summary()
    } else {
        message.to_string()
    }
}

/// What is safe to show of a URL: as written (references, not values),
/// with a password written in it masked.
fn shown(t: &SecretText) -> String {
    if !t.is_secret() {
        if let Ok(mut u) = url::Url::parse(&t.raw) {
            if u.password().is_some() && u.set_password(Some("***")).is_ok() {
                return u.to_string();
            }
        }
    }
    t.raw.clone()
}

fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value serializes")
}

/// A chat or alerting request: the step's headers and the standard ones.
fn build(url: &SecretUrl, headers: &BTreeMap<String, SecretText>, body: Value) -> Request {
    finish(url.0.expose().to_string(), shown(&url.0), headers, &[], to_bytes(&body))
}

/// The step's headers (in name order), then `Content-Type`, `User-Agent`
/// and `extra`. A step header named like one of those (in any case) is
/// dropped: the detector's own win.
fn finish(
    url: String,
    shown_url: String,
    step_headers: &BTreeMap<String, SecretText>,
    extra: &[(&str, String)],
    body: Vec<u8>,
) -> Request {
    let extra: Vec<(&str, String, String)> = extra.iter().map(|(n, v)| (*n, v.clone(), v.clone())).collect();
    finish_with(url, shown_url, step_headers, &extra, body)
}

/// [`finish`], with `extra` headers that may hold secrets: (name, value
/// for the wire, value to show).
fn finish_with(
    url: String,
    shown_url: String,
    step_headers: &BTreeMap<String, SecretText>,
    extra: &[(&str, String, String)],
    body: Vec<u8>,
) -> Request {
    let mut own: Vec<(String, String, String)> = vec![
        ("Content-Type".into(), "application/json".into(), "application/json".into()),
        ("User-Agent".into(), USER_AGENT.into(), USER_AGENT.into()),
    ];
    own.extend(extra.iter().map(|(n, v, s)| (n.to_string(), v.clone(), s.clone())));
    let mut headers = Vec::new();
    let mut shown_headers = Vec::new();
    for (name, value) in step_headers {
        if own.iter().any(|(n, _, _)| n.eq_ignore_ascii_case(name)) {
            continue;
        }
        headers.push((name.clone(), value.expose().to_string()));
        shown_headers.push((name.clone(), value.raw.clone()));
    }
    for (name, value, shown) in own {
        headers.push((name.clone(), value));
        shown_headers.push((name, shown));
    }
    Request { url, shown_url, headers, shown_headers, body }
}

/// A base URL (a step's `url`, or the service's default) with `path`
/// appended, resolved and as shown; trailing slashes of the base dropped.
fn api_url(base: Option<&SecretUrl>, default: &str, path: &str) -> (String, String) {
    match base {
        Some(u) => (
            format!("{}{path}", u.0.expose().trim_end_matches('/')),
            format!("{}{path}", shown(&u.0).trim_end_matches('/')),
        ),
        None => (format!("{default}{path}"), format!("{default}{path}")),
    }
}

/// The context as a JSON value (PagerDuty's `custom_details`).
fn context_value(ctx: &Context) -> Value {
    serde_json::to_value(ctx).expect("the context serializes")
}

/// `DDoS attack started on web1 (eth0)`.
fn title(ctx: &Context) -> String {
    let what = match ctx.event {
        AttackEvent::AttackStart => "DDoS attack started",
        AttackEvent::AttackUpdate => "DDoS attack update",
        AttackEvent::AttackEnd => "DDoS attack ended",
    };
    format!("{what} on {} ({})", ctx.node, ctx.iface)
}

/// The incident's facts, in the order cards show them (at most ten, for
/// Slack). Empty lists are left out.
fn facts(ctx: &Context) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("Severity", ctx.severity.clone()),
        ("Status", ctx.status.clone()),
        ("Families", if ctx.families.is_empty() { "none".into() } else { ctx.families.join(", ") }),
        ("Rate", format!("{}, {}", pps(ctx.pps), bits(ctx.bps))),
        ("Peak", format!("{}, {}", pps(ctx.peak_pps), bits(ctx.peak_bps))),
        ("Node", format!("{} ({})", ctx.node, ctx.iface)),
        ("Started", time_ms::rfc3339(ctx.started_at)),
    ];
    if !ctx.target.is_empty() {
        f.insert(5, ("Target", format!("{} (host group {}, {})", ctx.target, ctx.hostgroup, ctx.direction)));
    }
    if let Some(end) = ctx.ended_at {
        f.push(("Ended", time_ms::rfc3339(end)));
    }
    if !ctx.top_sources.is_empty() {
        let list = ctx.top_sources.iter().map(|s| format!("{} {} ({:.0}%)", s.addr, pps(s.pps), s.share * 100.0));
        f.push(("Top sources", first(list, ctx.top_sources.len(), 5)));
    }
    if !ctx.rules.is_empty() {
        f.push(("Rules", first(ctx.rules.iter().map(|r| r.rule.clone()), ctx.rules.len(), 5)));
    }
    f
}

/// The first `n` lines of `items` (`len` of them), then `+k more`.
fn first(items: impl Iterator<Item = String>, len: usize, n: usize) -> String {
    let mut lines: Vec<String> = items.take(n).collect();
    if len > n {
        lines.push(format!("+{} more", len - n));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::{testing::*, *};

    #[test]
    fn message_is_the_template_or_the_summary() {
        let c = ctx(AttackEvent::AttackStart);
        let with =
            notify_step("notify: { channel: slack, url: '${SLACK_URL}', message: '{{ node }}: {{ severity }}' }");
        assert_eq!(message(&with, &c).unwrap(), "web1: high");
        let without = notify_step("notify: { channel: slack, url: '${SLACK_URL}' }");
        assert_eq!(message(&without, &c).unwrap(), c.summary());
        let blank =
            notify_step("notify: { channel: slack, url: '${SLACK_URL}', message: '{% if false %}x{% endif %}' }");
        assert_eq!(message(&blank, &c).unwrap(), c.summary());
        let end = ctx(AttackEvent::AttackEnd);
        assert_eq!(message(&with, &end).unwrap(), end.summary());
        assert!(end.summary().starts_with("Attack on web1 (eth0, target 192.0.2.2) is over"), "{}", end.summary());
        assert_eq!(message(&with, &ctx(AttackEvent::AttackUpdate)).unwrap(), "web1: high");
    }

    #[test]
    fn missing_urls_are_errors() {
        let c = ctx(AttackEvent::AttackStart);
        for ch in ["slack", "discord", "teams", "alertmanager", "webhook"] {
            let s = notify_step(&format!("notify: {{ channel: {ch} }}"));
            let e = notify(&s, &c, "m", 0).unwrap_err();
            assert_eq!(e, format!("notify {ch}: the step has no url"));
        }
    }

    #[test]
    fn truncate_cuts_at_a_character() {
        assert_eq!(truncate("héllo", 3), "hé…");
        assert_eq!(truncate("héllo", 5), "héllo");
        assert_eq!(truncate("héllo", 0), "");
    }
}
