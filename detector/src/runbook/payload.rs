//! The HTTP requests that `notify` and `webhook` steps send, built here and
//! sent elsewhere: one function per channel, each producing the payload its
//! service documents; the generic webhook (its body and headers are
//! documented in `docs/webhook.md`) and its signature; and the retry rules
//! the sending adapter follows ([`retryable`], [`backoff`]). Pure: no
//! network, no clock (the one time a payload needs, "now", is an argument).
//!
//! Every request is a `POST`. A [`Request`] holds its resolved URL and
//! headers, which may carry secrets, next to what is safe to show: its
//! `Debug` output shows only the latter, and never the body (PagerDuty's
//! carries the routing key).

use std::{collections::BTreeMap, fmt, time::Duration};

use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::Sha256;

use super::{
    context::{AttackEvent, Context},
    schema::{Channel, Notify, Webhook},
    secret::{SecretText, SecretUrl},
};
use crate::detect::incident::time_ms;

/// `detector/<version>`, on every request.
pub const USER_AGENT: &str = concat!("detector/", env!("CARGO_PKG_VERSION"));
/// PagerDuty's Events API v2, when a pagerduty step gives no `url`.
pub const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";
/// Appended to an Alertmanager step's base URL.
pub const ALERTMANAGER_PATH: &str = "/api/v2/alerts";
/// The `alertname` label of every alert sent to Alertmanager.
pub const ALERTNAME: &str = "DDoSAttack";
/// Discord refuses a `content` longer than this many characters.
pub const DISCORD_CONTENT_MAX: usize = 2000;
/// PagerDuty truncates `payload.summary` past this many characters.
pub const PAGERDUTY_SUMMARY_MAX: usize = 1024;
/// `sha256=<hex HMAC-SHA256 of the body>`, when the webhook step has a secret.
pub const SIGNATURE_HEADER: &str = "X-Detector-Signature";
/// `attack_start`, `attack_update` or `attack_end`, on generic webhooks.
pub const EVENT_HEADER: &str = "X-Detector-Event";

/// How often a firing Alertmanager alert is posted again.
pub const ALERTMANAGER_RESEND: Duration = Duration::from_secs(60);
/// How far ahead a firing alert's `endsAt` is (four resends, as Prometheus).
pub const ALERTMANAGER_FIRING_FOR: Duration = Duration::from_secs(240);

/// Base delay of [`backoff`].
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest delay [`backoff`] returns.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

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

/// The request of a `notify` step, for its channel. `message` is the
/// rendered message (see [`message`]); `now_ms` is only used for
/// Alertmanager's `endsAt` when an ended attack has no `ended_at`.
/// `Err` when the step lacks what its channel needs (a `url`, PagerDuty's
/// `routing_key`).
pub fn notify(step: &Notify, ctx: &Context, message: &str, now_ms: u64) -> Result<Request, String> {
    match step.channel {
        Channel::Slack => slack(step, ctx, message),
        Channel::Discord => discord(step, ctx, message),
        Channel::Teams => teams(step, ctx, message),
        Channel::Pagerduty => pagerduty(step, ctx, message),
        Channel::Alertmanager => alertmanager(step, ctx, message, now_ms),
        Channel::Webhook => notify_webhook(step, ctx, message),
    }
}

/// A Slack incoming webhook: `text` (the message; Slack shows it in
/// notifications and where blocks cannot be shown) and `blocks`: a header,
/// the message, and the incident's facts as fields. The message is sent as
/// the runbook wrote it, so Slack's `mrkdwn` (links, mentions) works in it;
/// the facts are escaped.
pub fn slack(step: &Notify, ctx: &Context, message: &str) -> Result<Request, String> {
    let url = need_url(step, "slack")?;
    let text = text(message, ctx);
    // Slack's limits: a header's text 150 characters, a section's text
    // 3000, a field's text 2000, ten fields per section.
    let fields: Vec<Value> = facts(ctx)
        .into_iter()
        .take(10)
        .map(|(k, v)| json!({ "type": "mrkdwn", "text": truncate(&format!("*{k}*\n{}", slack_escape(&v)), 2000) }))
        .collect();
    let footer = format!("incident `{}` · runbook {}", slack_escape(&ctx.incident_id), slack_escape(&ctx.runbook));
    let body = json!({
        "text": text,
        "blocks": [
            { "type": "header", "text": { "type": "plain_text", "text": truncate(&title(ctx), 150), "emoji": true } },
            { "type": "section", "text": { "type": "mrkdwn", "text": truncate(&text, 3000) } },
            { "type": "section", "fields": fields },
            { "type": "context", "elements": [{ "type": "mrkdwn", "text": footer }] },
        ],
    });
    Ok(build(url, &step.headers, body))
}

/// A Discord webhook: `content` (the message, cut to
/// [`DISCORD_CONTENT_MAX`] characters at a character boundary, ending in
/// `…` when cut) and one embed with the incident's facts, coloured by
/// severity (green once the attack ended). Mentions in the message are left
/// to Discord, so a runbook may write `@here`.
pub fn discord(step: &Notify, ctx: &Context, message: &str) -> Result<Request, String> {
    let url = need_url(step, "discord")?;
    // Discord's limits: title 256, field name 256, field value 1024, 25 fields.
    let fields: Vec<Value> = facts(ctx)
        .into_iter()
        .map(|(k, v)| {
            let inline = !v.contains('\n');
            json!({ "name": k, "value": truncate(&v, 1024), "inline": inline })
        })
        .collect();
    let body = json!({
        "content": truncate(&text(message, ctx), DISCORD_CONTENT_MAX),
        "embeds": [{
            "title": truncate(&title(ctx), 256),
            "color": color(ctx),
            "fields": fields,
            "footer": { "text": truncate(&format!("incident {} · runbook {}", ctx.incident_id, ctx.runbook), 2048) },
            "timestamp": time_ms::rfc3339(ctx.started_at),
        }],
    });
    Ok(build(url, &step.headers, body))
}

/// A Microsoft Teams webhook, as an Adaptive Card in a `message` wrapper
/// (`{"type": "message", "attachments": [{"contentType":
/// "application/vnd.microsoft.card.adaptive", "content": {...}}]}`), not a
/// legacy `MessageCard`: Teams webhooks are now made with the Workflows app
/// ("When a Teams webhook request is received"), which accepts Adaptive
/// Cards only, since Microsoft 365 (Office 365) connectors are retired;
/// the connectors' incoming webhooks that remain accept this same wrapper.
/// The card: a title in a container styled by severity, the message, and
/// the incident's facts as a `FactSet`. Version 1.4, which every Teams
/// client renders.
pub fn teams(step: &Notify, ctx: &Context, message: &str) -> Result<Request, String> {
    let url = need_url(step, "teams")?;
    let style = match (ctx.event, ctx.severity.as_str()) {
        (AttackEvent::AttackEnd, _) => "good",
        (_, "critical" | "high") => "attention",
        (_, "medium") => "warning",
        _ => "accent",
    };
    let facts: Vec<Value> = facts(ctx).into_iter().map(|(k, v)| json!({ "title": k, "value": v })).collect();
    let card = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "msteams": { "width": "Full" },
        "body": [
            {
                "type": "Container",
                "style": style,
                "bleed": true,
                "items": [{ "type": "TextBlock", "text": title(ctx), "weight": "Bolder", "size": "Medium", "wrap": true }],
            },
            { "type": "TextBlock", "text": text(message, ctx), "wrap": true },
            { "type": "FactSet", "facts": facts },
            {
                "type": "TextBlock",
                "text": format!("incident {} · runbook {}", ctx.incident_id, ctx.runbook),
                "isSubtle": true,
                "size": "Small",
                "wrap": true,
            },
        ],
    });
    let body = json!({
        "type": "message",
        "attachments": [{ "contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": null, "content": card }],
    });
    Ok(build(url, &step.headers, body))
}

/// PagerDuty's severity for ours: critical → `critical`, high → `error`,
/// medium → `warning`, low (or anything else) → `info`.
pub fn pagerduty_severity(severity: &str) -> &'static str {
    match severity {
        "critical" => "critical",
        "high" => "error",
        "medium" => "warning",
        _ => "info",
    }
}

/// PagerDuty Events API v2 (`url`, or [`PAGERDUTY_URL`]). `attack_start`
/// and `attack_update` send a `trigger` whose `dedup_key` is the incident
/// id, so updates land on the same alert; `attack_end` sends a `resolve`
/// with only `routing_key`, `event_action` and `dedup_key`. The trigger's
/// `payload.summary` is the message cut to [`PAGERDUTY_SUMMARY_MAX`]
/// characters, and its `custom_details` the whole context (as the generic
/// webhook sends it).
pub fn pagerduty(step: &Notify, ctx: &Context, message: &str) -> Result<Request, String> {
    let key = step.routing_key.as_ref().ok_or("notify pagerduty: the step has no routing_key")?;
    let (url, shown_url) = match &step.url {
        Some(u) => (u.0.expose().to_string(), shown(&u.0)),
        None => (PAGERDUTY_URL.to_string(), PAGERDUTY_URL.to_string()),
    };
    let body = if ctx.event == AttackEvent::AttackEnd {
        json!({ "routing_key": key.expose(), "event_action": "resolve", "dedup_key": ctx.incident_id })
    } else {
        let source = if ctx.node.is_empty() { "detector" } else { ctx.node.as_str() };
        json!({
            "routing_key": key.expose(),
            "event_action": "trigger",
            "dedup_key": ctx.incident_id,
            "client": "detector",
            "payload": {
                "summary": truncate(&text(message, ctx), PAGERDUTY_SUMMARY_MAX),
                "source": source,
                "severity": pagerduty_severity(&ctx.severity),
                "component": ctx.iface,
                "group": "ddos",
                "class": ctx.families.join(", "),
                "custom_details": context_value(ctx),
            },
        })
    };
    Ok(finish(url, shown_url, &step.headers, &[], to_bytes(&body)))
}

/// Where Alertmanager's v2 API takes alerts, from a step's base URL:
/// [`ALERTMANAGER_PATH`] appended without doubling a `/`, and a URL that
/// already ends in it kept (trailing slashes dropped).
pub fn alertmanager_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with(ALERTMANAGER_PATH) {
        base.to_string()
    } else {
        format!("{base}{ALERTMANAGER_PATH}")
    }
}

/// Alertmanager's v2 API: `POST <url>/api/v2/alerts` with an array of one
/// alert. Its labels identify the incident and never change while it
/// lasts, so `attack_end` resolves the very alert `attack_start` fired:
/// `alertname` ([`ALERTNAME`]), `incident_id`, `node`, `iface`. The
/// severity and families change during an attack; they are annotations
/// (`severity`, `families`), with `summary` (the message) and
/// `description` (the facts, one per line). `startsAt` is the attack's
/// start; `endsAt` is sent only with `attack_end`: the attack's end, or
/// `now_ms` if it has none.
///
/// A firing alert carries `endsAt` [`ALERTMANAGER_FIRING_FOR`] ahead, as
/// Prometheus does, and the engine posts it again every
/// [`ALERTMANAGER_RESEND`] while the incident lasts: a long attack keeps
/// firing, and if the detector dies its alert ends by itself soon after.
pub fn alertmanager(step: &Notify, ctx: &Context, message: &str, now_ms: u64) -> Result<Request, String> {
    let base = need_url(step, "alertmanager")?;
    let resolved = base.0.expose().trim_end_matches('/');
    let url = alertmanager_url(resolved);
    let shown_url = if resolved.ends_with(ALERTMANAGER_PATH) && base.0.is_secret() {
        // The reference already names the full path.
        shown(&base.0)
    } else {
        alertmanager_url(&shown(&base.0))
    };
    let description: Vec<String> =
        facts(ctx).into_iter().map(|(k, v)| format!("{k}: {}", v.replace('\n', "; "))).collect();
    let description = description.join("\n");
    let mut alert = json!({
        "labels": {
            "alertname": ALERTNAME,
            "incident_id": ctx.incident_id,
            "node": ctx.node,
            "iface": ctx.iface,
        },
        "annotations": {
            "summary": text(message, ctx),
            "description": description,
            "severity": ctx.severity,
            "families": ctx.families.join(","),
        },
        "startsAt": time_ms::rfc3339(ctx.started_at),
    });
    let ends_at = if ctx.event == AttackEvent::AttackEnd {
        ctx.ended_at.unwrap_or(now_ms)
    } else {
        now_ms + ALERTMANAGER_FIRING_FOR.as_millis() as u64
    };
    alert["endsAt"] = Value::String(time_ms::rfc3339(ends_at));
    Ok(finish(url, shown_url, &step.headers, &[], to_bytes(&json!([alert]))))
}

/// The `webhook` channel of a `notify` step: the generic webhook body (the
/// whole context) with `message` added, unsigned (a notify step has no
/// `secret`).
pub fn notify_webhook(step: &Notify, ctx: &Context, message: &str) -> Result<Request, String> {
    #[derive(Serialize)]
    struct WithMessage<'a> {
        #[serde(flatten)]
        ctx: &'a Context,
        message: &'a str,
    }
    let url = need_url(step, "webhook")?;
    let body = serde_json::to_vec(&WithMessage { ctx, message }).expect("the context serializes");
    Ok(generic(url, &step.headers, None, ctx.event, body))
}

/// A `webhook` step: the whole context as JSON (see `docs/webhook.md`),
/// signed when the step has a `secret`.
pub fn webhook(step: &Webhook, ctx: &Context) -> Request {
    let body = serde_json::to_vec(ctx).expect("the context serializes");
    generic(&step.url, &step.headers, step.secret.as_ref(), ctx.event, body)
}

/// The `X-Detector-Signature` value for `body`: `sha256=` and the lowercase
/// hex HMAC-SHA256 of the exact body bytes, keyed with the secret's bytes.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

/// True when `header` (an `X-Detector-Signature` value) signs `body` with
/// `secret`. Compares in constant time; hex digits may be either case;
/// anything malformed is false.
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(digits) = header.trim().strip_prefix("sha256=") else { return false };
    let Some(tag) = unhex(digits) else { return false };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&tag).is_ok()
}

/// True when a response with this status means the step succeeded: any 2xx.
pub fn success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// Whether an attempt that got this status is tried again (within the
/// step's `retries`): `408 Request Timeout`, `429 Too Many Requests` and
/// every 5xx are. A 2xx is success, and nothing else is retried: other 4xx
/// (the request is wrong and will stay wrong), 1xx and 3xx (redirects are
/// not followed: give the final URL). An attempt that gets no status (the
/// connection fails, or the step's `timeout` passes before a response) is
/// retried too.
///
/// So a step makes at most `1 + retries` attempts, each bounded by
/// `timeout`, waiting [`backoff`]`(0)`, `(1)`, ... between them; it fails
/// with the last attempt's error.
pub fn retryable(status: u16) -> bool {
    status == 408 || status == 429 || (500..600).contains(&status)
}

/// How long to wait before retry number `attempt + 1` (`attempt` counts
/// from 0: the wait after the first failed attempt is `backoff(0)`):
/// 200ms × 2^attempt, at most 5s. So 200ms, 400ms, 800ms, 1.6s, 3.2s, then
/// 5s. No jitter, and a `Retry-After` header is not followed.
pub fn backoff(attempt: u32) -> Duration {
    BACKOFF_BASE.saturating_mul(2u32.saturating_pow(attempt)).min(BACKOFF_MAX)
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

/// The generic webhook's request: signed when there is a secret.
fn generic(
    url: &SecretUrl,
    headers: &BTreeMap<String, SecretText>,
    secret: Option<&SecretText>,
    event: AttackEvent,
    body: Vec<u8>,
) -> Request {
    let mut extra = vec![(EVENT_HEADER, event.name().to_string())];
    if let Some(s) = secret {
        extra.push((SIGNATURE_HEADER, sign(s.expose().as_bytes(), &body)));
    }
    finish(url.0.expose().to_string(), shown(&url.0), headers, &extra, body)
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
    let mut own: Vec<(String, String)> =
        vec![("Content-Type".into(), "application/json".into()), ("User-Agent".into(), USER_AGENT.into())];
    own.extend(extra.iter().map(|(n, v)| (n.to_string(), v.clone())));
    let mut headers = Vec::new();
    let mut shown_headers = Vec::new();
    for (name, value) in step_headers {
        if own.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            continue;
        }
        headers.push((name.clone(), value.expose().to_string()));
        shown_headers.push((name.clone(), value.raw.clone()));
    }
    headers.extend(own.iter().cloned());
    shown_headers.extend(own);
    Request { url, shown_url, headers, shown_headers, body }
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

/// Discord's embed colour: red, orange, yellow, blue by severity; green
/// once the attack ended.
fn color(ctx: &Context) -> u32 {
    match (ctx.event, ctx.severity.as_str()) {
        (AttackEvent::AttackEnd, _) => 0x2E_B6_7D,
        (_, "critical") => 0xD0_02_1B,
        (_, "high") => 0xF5_7C_00,
        (_, "medium") => 0xF8_C5_1C,
        _ => 0x4A_90_E2,
    }
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

fn si(x: f64) -> (f64, &'static str) {
    if x >= 1e9 {
        (x / 1e9, "G")
    } else if x >= 1e6 {
        (x / 1e6, "M")
    } else if x >= 1e3 {
        (x / 1e3, "k")
    } else {
        (x, "")
    }
}

/// `850 pps`, `1.2M pps`.
fn pps(x: f64) -> String {
    match si(x) {
        (v, "") => format!("{v:.0} pps"),
        (v, p) => format!("{v:.1}{p} pps"),
    }
}

/// `900 bit/s`, `1.5 Gbit/s`.
fn bits(x: f64) -> String {
    match si(x) {
        (v, "") => format!("{v:.0} bit/s"),
        (v, p) => format!("{v:.1} {p}bit/s"),
    }
}

/// Slack's three control characters in `mrkdwn` text.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes().chunks(2).map(|p| Some(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::{
        detect::incident::{TopPort, TopSource},
        runbook::{
            context::RuleSummary,
            schema::Step,
            secret::{with_lookup, Lookup},
        },
    };

    /// Secrets that are easy to look for: every value holds `s3cret`.
    struct Secrets;

    impl Lookup for Secrets {
        fn env(&self, name: &str) -> Option<String> {
            Some(match name {
                "SLACK_URL" => "https://hooks.slack.com/services/T0/B0/s3cret".into(),
                "DISCORD_URL" => "https://discord.com/api/webhooks/1/s3cret".into(),
                "TEAMS_URL" => "https://prod.westeurope.logic.azure.com/workflows/1/triggers?sig=s3cret".into(),
                "AM_URL" => "https://am:s3cret@alertmanager.example.test:9093/".into(),
                "AM_FULL" => "https://s3cret.example.test/api/v2/alerts".into(),
                "HOOK_URL" => "https://hooks.example.test/ddos?token=s3cret".into(),
                _ => format!("{name}-s3cret"),
            })
        }
        fn file(&self, _: &str) -> Result<String, String> {
            Ok("file-s3cret".into())
        }
    }

    fn step(yaml: &str) -> Step {
        with_lookup(Box::new(Secrets), || serde_yaml::from_str::<Step>(yaml)).unwrap()
    }

    fn notify_step(yaml: &str) -> Notify {
        match step(yaml) {
            Step::Notify(n) => n,
            s => panic!("not a notify step: {s:?}"),
        }
    }

    fn webhook_step(yaml: &str) -> Webhook {
        match step(yaml) {
            Step::Webhook(w) => w,
            s => panic!("not a webhook step: {s:?}"),
        }
    }

    // 2026-11-24T22:35:01.123Z
    const START: u64 = 1_795_991_701_123 - 5 * 86_400_000;

    fn ctx(event: AttackEvent) -> Context {
        let ended = event == AttackEvent::AttackEnd;
        Context {
            event,
            runbook: "notify-every-attack".into(),
            dry_run: false,
            incident_id: "web1-eth0-20261124T223501.123Z".into(),
            node: "web1".into(),
            iface: "eth0".into(),
            families: vec!["multi_vector".into(), "udp_flood".into(), "syn_flood".into()],
            vectors: vec!["udp".into(), "syn".into()],
            severity: "high".into(),
            status: if ended { "resolved".into() } else { "active".into() },
            started_at: START,
            ended_at: ended.then_some(START + 95_000),
            pps: 1_250_000.0,
            bps: 5.12e8,
            peak_pps: 1_400_000.0,
            peak_bps: 5.7e8,
            top_sources: vec![
                TopSource { addr: "198.51.100.7".parse::<IpAddr>().unwrap(), pps: 400_000.0, share: 0.32 },
                TopSource { addr: "2001:db8::1".parse::<IpAddr>().unwrap(), pps: 100_000.0, share: 0.08 },
            ],
            top_ports: vec![TopPort { proto: "udp".into(), port: 53, pps: 900_000.0, share: 0.72 }],
            rules: vec![RuleSummary {
                id: "r3".into(),
                rule: "r3 drop 198.51.100.7/32 class udp".into(),
                origin: "runbook udp-flood-auto-response".into(),
                expires_at: Some(START + 600_000),
            }],
        }
    }

    fn json(r: &Request) -> Value {
        serde_json::from_slice(&r.body).expect("the body is JSON")
    }

    fn assert_standard_headers(r: &Request) {
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("User-Agent"), Some(USER_AGENT));
        assert!(USER_AGENT.starts_with("detector/") && USER_AGENT.len() > "detector/".len());
    }

    /// Neither `shown_url`, `shown_headers` nor `Debug` holds a secret.
    fn assert_hidden(r: &Request) {
        assert!(!r.shown_url.contains("s3cret"), "{}", r.shown_url);
        assert!(!format!("{:?}", r.shown_headers).contains("s3cret"));
        let debug = format!("{r:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains(&r.shown_url));
    }

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
        assert!(end.summary().starts_with("Attack on web1 (eth0) is over"), "{}", end.summary());
        assert_eq!(message(&with, &ctx(AttackEvent::AttackUpdate)).unwrap(), "web1: high");
    }

    #[test]
    fn slack_shape() {
        let s = notify_step("notify: { channel: slack, url: '${SLACK_URL}', headers: { X-Token: '${TOKEN}' } }");
        let c = ctx(AttackEvent::AttackStart);
        let r = notify(&s, &c, "UDP flood <b> & co", 0).unwrap();
        assert_eq!(r.url, "https://hooks.slack.com/services/T0/B0/s3cret");
        assert_eq!(r.shown_url, "${SLACK_URL}");
        assert_standard_headers(&r);
        assert_eq!(r.header("x-token"), Some("TOKEN-s3cret"));
        assert!(r.shown_headers.contains(&("X-Token".into(), "${TOKEN}".into())));
        assert_hidden(&r);
        let v = json(&r);
        assert_eq!(v["text"], "UDP flood <b> & co", "the message is sent as written");
        let blocks = v["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["type"], "plain_text");
        assert_eq!(blocks[0]["text"]["text"], "DDoS attack started on web1 (eth0)");
        assert_eq!(blocks[1]["text"]["text"], "UDP flood <b> & co");
        let fields = blocks[2]["fields"].as_array().unwrap();
        assert!(!fields.is_empty() && fields.len() <= 10);
        assert_eq!(fields[0]["text"], "*Severity*\nhigh");
        assert!(fields.iter().any(|f| f["text"] == "*Rate*\n1.2M pps, 512.0 Mbit/s"), "{fields:?}");
        assert!(fields.iter().any(|f| f["text"].as_str().unwrap().contains("198.51.100.7 400.0k pps (32%)")));
        assert!(blocks[3]["elements"][0]["text"].as_str().unwrap().contains("web1-eth0-20261124T223501.123Z"));
        // A blank message falls back to the summary.
        let v = json(&slack(&s, &c, " ").unwrap());
        assert_eq!(v["text"], c.summary());
    }

    #[test]
    fn discord_shape_and_truncation() {
        let s = notify_step("notify: { channel: discord, url: '${DISCORD_URL}' }");
        let c = ctx(AttackEvent::AttackStart);
        let r = notify(&s, &c, "SYN flood @here", 0).unwrap();
        assert_eq!(r.shown_url, "${DISCORD_URL}");
        assert_standard_headers(&r);
        assert_hidden(&r);
        let v = json(&r);
        assert_eq!(v["content"], "SYN flood @here");
        let embed = &v["embeds"][0];
        assert_eq!(embed["title"], "DDoS attack started on web1 (eth0)");
        assert_eq!(embed["color"], 0xF57C00);
        assert_eq!(embed["timestamp"], "2026-11-24T22:35:01.123Z");
        assert_eq!(embed["fields"][0], json!({ "name": "Severity", "value": "high", "inline": true }));
        let sources = embed["fields"].as_array().unwrap().iter().find(|f| f["name"] == "Top sources").unwrap();
        assert_eq!(sources["inline"], false);
        assert_eq!(json(&discord(&s, &ctx(AttackEvent::AttackEnd), "x").unwrap())["embeds"][0]["color"], 0x2EB67D);

        // 2500 characters of 1 to 4 bytes each: cut to 2000 characters, on a boundary.
        let long: String = "aé€😀".repeat(625);
        let v = json(&discord(&s, &c, &long).unwrap());
        let content = v["content"].as_str().unwrap();
        assert_eq!(content.chars().count(), DISCORD_CONTENT_MAX);
        assert!(content.ends_with('…'));
        assert!(long.starts_with(content.trim_end_matches('…')));
        let exact = "€".repeat(DISCORD_CONTENT_MAX);
        assert_eq!(json(&discord(&s, &c, &exact).unwrap())["content"], exact.as_str(), "2000 is not cut");
        assert_eq!(truncate("héllo", 3), "hé…");
        assert_eq!(truncate("héllo", 5), "héllo");
        assert_eq!(truncate("héllo", 0), "");
    }

    #[test]
    fn teams_shape() {
        let s = notify_step("notify: { channel: teams, url: '${TEAMS_URL}' }");
        let r = notify(&s, &ctx(AttackEvent::AttackStart), "Flood", 0).unwrap();
        assert!(r.url.contains("sig=s3cret"));
        assert_standard_headers(&r);
        assert_hidden(&r);
        let v = json(&r);
        assert_eq!(v["type"], "message");
        let att = &v["attachments"][0];
        assert_eq!(att["contentType"], "application/vnd.microsoft.card.adaptive");
        let card = &att["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(card["version"], "1.4");
        let body = card["body"].as_array().unwrap();
        assert_eq!(body[0]["style"], "attention");
        assert_eq!(body[0]["items"][0]["text"], "DDoS attack started on web1 (eth0)");
        assert_eq!(body[1]["text"], "Flood");
        assert_eq!(body[2]["type"], "FactSet");
        assert_eq!(body[2]["facts"][0], json!({ "title": "Severity", "value": "high" }));
        let end = json(&teams(&s, &ctx(AttackEvent::AttackEnd), "over").unwrap());
        assert_eq!(end["attachments"][0]["content"]["body"][0]["style"], "good");
        let facts = &end["attachments"][0]["content"]["body"][2]["facts"];
        assert!(facts.as_array().unwrap().iter().any(|f| f["title"] == "Ended"));
    }

    #[test]
    fn pagerduty_trigger_resolve_and_severity() {
        assert_eq!(pagerduty_severity("critical"), "critical");
        assert_eq!(pagerduty_severity("high"), "error");
        assert_eq!(pagerduty_severity("medium"), "warning");
        assert_eq!(pagerduty_severity("low"), "info");

        let s = notify_step("notify: { channel: pagerduty, routing_key: '${PD_KEY}' }");
        for event in [AttackEvent::AttackStart, AttackEvent::AttackUpdate] {
            let r = notify(&s, &ctx(event), &"x".repeat(1500), 0).unwrap();
            assert_eq!((r.url.as_str(), r.shown_url.as_str()), (PAGERDUTY_URL, PAGERDUTY_URL));
            assert_standard_headers(&r);
            assert_hidden(&r);
            let v = json(&r);
            assert_eq!(v["routing_key"], "PD_KEY-s3cret");
            assert_eq!(v["event_action"], "trigger");
            assert_eq!(v["dedup_key"], "web1-eth0-20261124T223501.123Z");
            let p = &v["payload"];
            assert_eq!(p["summary"].as_str().unwrap().chars().count(), PAGERDUTY_SUMMARY_MAX);
            assert_eq!(p["source"], "web1");
            assert_eq!(p["severity"], "error");
            assert_eq!(p["component"], "eth0");
            assert_eq!(p["group"], "ddos");
            assert_eq!(p["class"], "multi_vector, udp_flood, syn_flood");
            assert_eq!(p["custom_details"]["incident_id"], "web1-eth0-20261124T223501.123Z");
            assert_eq!(p["custom_details"]["top_sources"][0]["addr"], "198.51.100.7");
        }
        for (sev, pd) in [("critical", "critical"), ("medium", "warning"), ("low", "info")] {
            let mut c = ctx(AttackEvent::AttackStart);
            c.severity = sev.into();
            assert_eq!(json(&pagerduty(&s, &c, "m").unwrap())["payload"]["severity"], pd);
        }

        let r = pagerduty(&s, &ctx(AttackEvent::AttackEnd), "over").unwrap();
        assert_eq!(
            json(&r),
            json!({ "routing_key": "PD_KEY-s3cret", "event_action": "resolve", "dedup_key": "web1-eth0-20261124T223501.123Z" })
        );
        assert_hidden(&r);

        let own =
            notify_step("notify: { channel: pagerduty, url: 'https://pd.example.test/v2/enqueue', routing_key: k }");
        assert_eq!(
            pagerduty(&own, &ctx(AttackEvent::AttackStart), "m").unwrap().url,
            "https://pd.example.test/v2/enqueue"
        );
        let none = notify_step("notify: { channel: pagerduty }");
        assert!(notify(&none, &ctx(AttackEvent::AttackStart), "m", 0).unwrap_err().contains("routing_key"));
    }

    #[test]
    fn alertmanager_urls() {
        for (base, want) in [
            ("http://am:9093", "http://am:9093/api/v2/alerts"),
            ("http://am:9093/", "http://am:9093/api/v2/alerts"),
            ("http://am:9093//", "http://am:9093/api/v2/alerts"),
            ("https://ops.example.test/alertmanager/", "https://ops.example.test/alertmanager/api/v2/alerts"),
            ("http://am:9093/api/v2/alerts", "http://am:9093/api/v2/alerts"),
            ("http://am:9093/api/v2/alerts/", "http://am:9093/api/v2/alerts"),
        ] {
            assert_eq!(alertmanager_url(base), want, "{base}");
        }
        let c = ctx(AttackEvent::AttackStart);
        let r = notify(&notify_step("notify: { channel: alertmanager, url: '${AM_URL}' }"), &c, "m", 0).unwrap();
        assert_eq!(r.url, "https://am:s3cret@alertmanager.example.test:9093/api/v2/alerts");
        assert_eq!(r.shown_url, "${AM_URL}/api/v2/alerts");
        assert_hidden(&r);
        let r = notify(&notify_step("notify: { channel: alertmanager, url: '${AM_FULL}' }"), &c, "m", 0).unwrap();
        assert_eq!(r.url, "https://s3cret.example.test/api/v2/alerts");
        assert_eq!(r.shown_url, "${AM_FULL}");
        // A password written in the file is masked too.
        let r =
            notify(&notify_step("notify: { channel: alertmanager, url: 'http://u:pw@am:9093' }"), &c, "m", 0).unwrap();
        assert_eq!(r.url, "http://u:pw@am:9093/api/v2/alerts");
        assert_eq!(r.shown_url, "http://u:***@am:9093/api/v2/alerts");
    }

    #[test]
    fn alertmanager_firing_and_resolved_match() {
        let s = notify_step("notify: { channel: alertmanager, url: 'http://am:9093' }");
        let now = START + 500_000;
        let firing = json(&alertmanager(&s, &ctx(AttackEvent::AttackStart), "UDP flood", now).unwrap());
        let alerts = firing.as_array().unwrap();
        assert_eq!(alerts.len(), 1);
        let a = &alerts[0];
        assert_eq!(
            a["labels"],
            json!({
                "alertname": "DDoSAttack",
                "incident_id": "web1-eth0-20261124T223501.123Z",
                "node": "web1",
                "iface": "eth0",
            })
        );
        assert_eq!(a["annotations"]["severity"], "high", "what changes during an attack is no label");
        assert_eq!(a["annotations"]["families"], "multi_vector,udp_flood,syn_flood");
        assert_eq!(a["annotations"]["summary"], "UDP flood");
        assert!(a["annotations"]["description"].as_str().unwrap().contains("Rate: 1.2M pps, 512.0 Mbit/s"));
        assert_eq!(a["startsAt"], "2026-11-24T22:35:01.123Z");
        assert_eq!(a["endsAt"], time_ms::rfc3339(now + 240_000), "firing: ends unless posted again");
        assert!(a.get("generatorURL").is_none());
        assert_eq!(time_ms::parse(a["startsAt"].as_str().unwrap()), Some(START));

        let update = json(&alertmanager(&s, &ctx(AttackEvent::AttackUpdate), "m", now).unwrap());
        assert_eq!(update[0]["endsAt"], time_ms::rfc3339(now + 240_000));

        let resolved = json(&alertmanager(&s, &ctx(AttackEvent::AttackEnd), "over", now).unwrap());
        assert_eq!(resolved[0]["labels"], a["labels"], "the same labels, so Alertmanager resolves the same alert");
        assert_eq!(resolved[0]["endsAt"], time_ms::rfc3339(START + 95_000));
        let mut no_end = ctx(AttackEvent::AttackEnd);
        no_end.ended_at = None;
        let resolved = json(&alertmanager(&s, &no_end, "over", now).unwrap());
        assert_eq!(resolved[0]["endsAt"], time_ms::rfc3339(now), "no ended_at: now");
    }

    #[test]
    fn generic_webhook_step() {
        let s = webhook_step(
            "webhook: { url: '${HOOK_URL}', secret: '${HMAC}', headers: { Authorization: 'Bearer ${TOKEN}', X-Team: netops, content-type: text/plain, X-Detector-Signature: forged } }",
        );
        for event in [AttackEvent::AttackStart, AttackEvent::AttackUpdate, AttackEvent::AttackEnd] {
            let c = ctx(event);
            let r = webhook(&s, &c);
            assert_eq!(r.url, "https://hooks.example.test/ddos?token=s3cret");
            assert_eq!(r.shown_url, "${HOOK_URL}");
            assert_standard_headers(&r);
            assert_hidden(&r);
            assert_eq!(r.header("Authorization"), Some("Bearer TOKEN-s3cret"));
            assert_eq!(r.header("X-Team"), Some("netops"));
            assert_eq!(r.header(EVENT_HEADER), Some(event.name()));
            assert_eq!(r.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("content-type")).count(), 1);
            let sig = r.header(SIGNATURE_HEADER).unwrap();
            assert_ne!(sig, "forged", "the step cannot set the detector's own headers");
            assert_eq!(sig, sign(b"HMAC-s3cret", &r.body));
            assert!(verify(b"HMAC-s3cret", &r.body, sig));
            assert!(!verify(b"other", &r.body, sig));
            // The body is the context, whole, and nothing else.
            let back: Context = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(back, c);
            assert!(json(&r).get("message").is_none());
        }
        // No secret, no signature.
        let plain = webhook_step("webhook: { url: 'https://hooks.example.test/ddos' }");
        let r = webhook(&plain, &ctx(AttackEvent::AttackStart));
        assert_eq!(r.shown_url, "https://hooks.example.test/ddos");
        assert!(r.header(SIGNATURE_HEADER).is_none());
        assert_eq!(r.header(EVENT_HEADER), Some("attack_start"));
        assert_eq!(r.headers.len(), 3);
    }

    #[test]
    fn notify_webhook_adds_the_message() {
        let s = notify_step("notify: { channel: webhook, url: '${HOOK_URL}' }");
        let c = ctx(AttackEvent::AttackEnd);
        let r = notify(&s, &c, "it ended", 0).unwrap();
        assert_standard_headers(&r);
        assert_hidden(&r);
        assert!(r.header(SIGNATURE_HEADER).is_none());
        assert_eq!(r.header(EVENT_HEADER), Some("attack_end"));
        let mut v = json(&r);
        assert_eq!(v["message"], "it ended");
        assert_eq!(v["ended_at"], "2026-11-24T22:36:36.123Z");
        v.as_object_mut().unwrap().remove("message");
        assert_eq!(serde_json::from_value::<Context>(v).unwrap(), c);
        // The body keeps the context's field order, message last.
        let text = String::from_utf8(r.body.clone()).unwrap();
        assert!(text.starts_with("{\"event\":\"attack_end\",\"runbook\":"), "{text}");
        assert!(text.ends_with(",\"message\":\"it ended\"}"), "{text}");
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
    fn signature_known_answers() {
        // RFC 4231, test case 2.
        let sig = sign(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(sig, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert!(verify(b"Jefe", b"what do ya want for nothing?", &sig));
        assert!(verify(b"Jefe", b"what do ya want for nothing?", &sig.to_uppercase().replace("SHA256=", "sha256=")));
        assert!(verify(b"Jefe", b"what do ya want for nothing?", &format!(" {sig}\n")));
        // RFC 4231, test case 1: a 20-byte key of 0x0b, "Hi There".
        assert_eq!(
            sign(&[0x0b; 20], b"Hi There"),
            "sha256=b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        let body = b"what do ya want for nothing?";
        assert!(!verify(b"Jefe", b"what do ya want for nothing!", &sig));
        assert!(!verify(b"Jefe", body, &sig[7..]), "no sha256= prefix");
        assert!(!verify(b"Jefe", body, &sig[..sig.len() - 2]), "truncated");
        assert!(!verify(b"Jefe", body, &format!("{sig}00")), "too long");
        assert!(!verify(b"Jefe", body, &sig.replace('5', "g")), "not hex");
        assert!(!verify(b"Jefe", body, &format!("{}x", &sig[..sig.len() - 1])), "odd");
        assert!(!verify(b"Jefe", body, "sha256="));
        assert!(!verify(b"Jefe", body, ""));
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(unhex("000fA5ff"), Some(vec![0x00, 0x0f, 0xa5, 0xff]));
        assert_eq!(unhex("€€"), None);
    }

    #[test]
    fn retries() {
        for s in [200, 201, 202, 204, 299] {
            assert!(success(s) && !retryable(s), "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert!(!success(s) && retryable(s), "{s}");
        }
        for s in [100, 301, 302, 304, 400, 401, 403, 404, 405, 410, 413, 422] {
            assert!(!success(s) && !retryable(s), "{s}");
        }
        let ms: Vec<u128> = (0..8).map(|a| backoff(a).as_millis()).collect();
        assert_eq!(ms, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(backoff(u32::MAX), Duration::from_secs(5));
    }

    /// The signed example of `docs/webhook.md` is what the code sends.
    #[test]
    fn doc_signature_example() {
        const BODY: &str = r#"{"event":"attack_start","runbook":"notify-every-attack","dry_run":false,"incident_id":"web1-eth0-20261124T223501.123Z","node":"web1","iface":"eth0","families":["multi_vector","udp_flood","syn_flood"],"vectors":["udp","syn"],"severity":"high","status":"active","started_at":"2026-11-24T22:35:01.123Z","ended_at":null,"pps":1250000.0,"bps":512000000.0,"peak_pps":1400000.0,"peak_bps":570000000.0,"top_sources":[{"addr":"198.51.100.7","pps":400000.0,"share":0.32},{"addr":"2001:db8::1","pps":100000.0,"share":0.08}],"top_ports":[{"proto":"udp","port":53,"pps":900000.0,"share":0.72}],"rules":[{"id":"r3","rule":"r3 drop 198.51.100.7/32 class udp","origin":"runbook udp-flood-auto-response","expires_at":"2026-11-24T22:45:01.123Z"}]}"#;
        const SIGNATURE: &str = "sha256=8566ec854f961b484469c6537154bc8b10354846ea601c3048bd03c228854a8d";
        let s = webhook_step("webhook: { url: 'https://hooks.example.test/ddos', secret: example-secret }");
        let r = webhook(&s, &ctx(AttackEvent::AttackStart));
        assert_eq!(String::from_utf8(r.body.clone()).unwrap(), BODY);
        assert_eq!(r.header(SIGNATURE_HEADER), Some(SIGNATURE));
        assert!(verify(b"example-secret", BODY.as_bytes(), SIGNATURE));
    }
}
