//! Chat services: Slack, Discord and Microsoft Teams, each with the
//! payload its incoming webhook documents.

use serde_json::{json, Value};

use super::{build, facts, need_url, text, title, truncate, Request};
use crate::{
    detect::incident::time_ms,
    runbook::{
        context::{AttackEvent, Context},
        schema::Notify,
    },
};

/// Discord refuses a `content` longer than this many characters.
pub const DISCORD_CONTENT_MAX: usize = 2000;

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

/// Slack's three control characters in `mrkdwn` text.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{
        super::{notify, testing::*},
        *,
    };

    #[test]
    fn slack_shape() {
        let s = notify_step("notify: { channel: slack, url: '${SLACK_URL}', headers: { X-Token: '${TOKEN}' } }");
        let c = ctx(AttackEvent::AttackStart);
        let r = http(notify(&s, &c, "UDP flood <b> & co", 0));
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
        let r = http(notify(&s, &c, "SYN flood @here", 0));
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
    }

    #[test]
    fn teams_shape() {
        let s = notify_step("notify: { channel: teams, url: '${TEAMS_URL}' }");
        let r = http(notify(&s, &ctx(AttackEvent::AttackStart), "Flood", 0));
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
}
