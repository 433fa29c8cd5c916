//! OpsGenie's Alert API (v2): an alert keyed by the incident (its alias),
//! created at the attack's start, and closed at its end.

use std::collections::BTreeMap;

use serde_json::json;

use super::{api_url, facts, finish_with, text, to_bytes, truncate, Request};
use crate::{
    detect::incident::time_ms,
    format::{bits, pps},
    runbook::{
        context::{AttackEvent, Context},
        schema::Notify,
    },
};

/// OpsGenie's API, when an opsgenie step gives no `url` (EU accounts:
/// `https://api.eu.opsgenie.com`).
pub const OPSGENIE_URL: &str = "https://api.opsgenie.com";
/// OpsGenie's limits: an alert's `message`, `alias`, `description`, a
/// close's `note`, `entity`; 20 tags of 50 characters.
pub const OPSGENIE_MESSAGE_MAX: usize = 130;
pub const OPSGENIE_ALIAS_MAX: usize = 512;
const DESCRIPTION_MAX: usize = 15_000;
const NOTE_MAX: usize = 25_000;
const ENTITY_MAX: usize = 512;
const TAGS_MAX: usize = 20;
const TAG_MAX: usize = 50;
/// Each of `details`' values (OpsGenie takes 8000 characters in all).
const DETAIL_MAX: usize = 400;

/// OpsGenie's priority for our severity: critical → `P1`, high → `P2`,
/// medium → `P3`, low (or anything else) → `P4`.
pub fn opsgenie_priority(severity: &str) -> &'static str {
    match severity {
        "critical" => "P1",
        "high" => "P2",
        "medium" => "P3",
        _ => "P4",
    }
}

/// OpsGenie's Alert API v2, `Authorization: GenieKey <api_key>`.
/// `attack_start` and `attack_update` create an alert (`POST
/// <url>/v2/alerts`) whose `alias` is the incident id, so an update lands
/// on the open alert (OpsGenie counts it rather than opening another):
/// `message` (the message cut to [`OPSGENIE_MESSAGE_MAX`] characters),
/// `description` (the whole message and the incident's facts), `priority`
/// ([`opsgenie_priority`]), `source` (`detector`), `entity` (the target,
/// or the node and interface), `tags` (`ddos`, the families, the node),
/// `details` (the context as strings). `attack_end` closes it: `POST
/// <url>/v2/alerts/<alias>/close?identifierType=alias` with `source` and
/// `note` (the summary). OpsGenie answers `202 Accepted` to both, and
/// processes them later.
pub fn opsgenie(step: &Notify, ctx: &Context, message: &str) -> Result<Request, String> {
    let key = step.api_key.as_ref().ok_or("notify opsgenie: the step has no api_key")?;
    let alias: String = ctx.incident_id.chars().take(OPSGENIE_ALIAS_MAX).collect();
    let text = text(message, ctx);
    let (path, body) = if ctx.event == AttackEvent::AttackEnd {
        (
            format!("/v2/alerts/{}/close?identifierType=alias", percent_encode(&alias)),
            json!({ "source": "detector", "note": truncate(&text, NOTE_MAX) }),
        )
    } else {
        let facts: Vec<String> =
            facts(ctx).into_iter().map(|(k, v)| format!("{k}: {}", v.replace('\n', "; "))).collect();
        let description =
            format!("{text}\n\n{}\n\nincident {} · runbook {}", facts.join("\n"), ctx.incident_id, ctx.runbook);
        let entity = if ctx.target.is_empty() { format!("{} ({})", ctx.node, ctx.iface) } else { ctx.target.clone() };
        let mut tags = vec!["ddos".to_string()];
        tags.extend(ctx.families.iter().cloned());
        tags.push(ctx.node.clone());
        tags.retain(|t| !t.is_empty());
        tags.dedup();
        let tags: Vec<String> = tags.iter().take(TAGS_MAX).map(|t| truncate(t, TAG_MAX)).collect();
        (
            "/v2/alerts".to_string(),
            json!({
                "message": truncate(&text, OPSGENIE_MESSAGE_MAX),
                "alias": alias,
                "description": truncate(&description, DESCRIPTION_MAX),
                "priority": opsgenie_priority(&ctx.severity),
                "source": "detector",
                "entity": truncate(&entity, ENTITY_MAX),
                "tags": tags,
                "details": details(ctx),
            }),
        )
    };
    let (url, shown_url) = api_url(step.url.as_ref(), OPSGENIE_URL, &path);
    let auth = ("Authorization", format!("GenieKey {}", key.expose()), format!("GenieKey {}", key.shown()));
    Ok(finish_with(url, shown_url, &step.headers, &[auth], to_bytes(&body)))
}

/// The alert's `details`: string values only, each cut to a few hundred
/// characters.
fn details(ctx: &Context) -> BTreeMap<&'static str, String> {
    let mut d = BTreeMap::from([
        ("incident_id", ctx.incident_id.clone()),
        ("runbook", ctx.runbook.clone()),
        ("event", ctx.event.name().to_string()),
        ("node", ctx.node.clone()),
        ("iface", ctx.iface.clone()),
        ("target", ctx.target.clone()),
        ("hostgroup", ctx.hostgroup.clone()),
        ("direction", ctx.direction.to_string()),
        ("severity", ctx.severity.clone()),
        ("status", ctx.status.clone()),
        ("families", ctx.families.join(", ")),
        ("vectors", ctx.vectors.join(", ")),
        ("rate", format!("{}, {}", pps(ctx.pps), bits(ctx.bps))),
        ("peak", format!("{}, {}", pps(ctx.peak_pps), bits(ctx.peak_bps))),
        ("started_at", time_ms::rfc3339(ctx.started_at)),
    ]);
    if !ctx.top_sources.is_empty() {
        let list: Vec<String> =
            ctx.top_sources.iter().map(|s| format!("{} {} ({:.0}%)", s.addr, pps(s.pps), s.share * 100.0)).collect();
        d.insert("top_sources", list.join(", "));
    }
    if !ctx.rules.is_empty() {
        d.insert("rules", ctx.rules.iter().map(|r| r.rule.as_str()).collect::<Vec<_>>().join("; "));
    }
    d.retain(|_, v| !v.is_empty());
    d.into_iter().map(|(k, v)| (k, truncate(&v, DETAIL_MAX))).collect()
}

/// `s` as one URL path segment: letters, digits and `-._~` as they are,
/// every other byte of its UTF-8 as `%XX`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{
        super::{notify, testing::*},
        *,
    };

    #[test]
    fn opsgenie_create_and_close_by_alias() {
        for (sev, p) in [("critical", "P1"), ("high", "P2"), ("medium", "P3"), ("low", "P4"), ("", "P4")] {
            assert_eq!(opsgenie_priority(sev), p);
        }
        let s = notify_step(
            "notify: { channel: opsgenie, api_key: '${OG_KEY}', headers: { authorization: forged, X-Team: netops } }",
        );
        for event in [AttackEvent::AttackStart, AttackEvent::AttackUpdate] {
            let r = http(notify(&s, &ctx(event), &format!("UDP flood {}", "x".repeat(200)), 0));
            assert_eq!(
                (r.url.as_str(), r.shown_url.as_str()),
                ("https://api.opsgenie.com/v2/alerts", "https://api.opsgenie.com/v2/alerts")
            );
            assert_standard_headers(&r);
            assert_hidden(&r);
            assert_eq!(r.header("Authorization"), Some("GenieKey OG_KEY-s3cret"), "the step cannot set it");
            assert_eq!(r.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("authorization")).count(), 1);
            assert!(r.shown_headers.contains(&("Authorization".into(), "GenieKey ${OG_KEY}".into())));
            assert_eq!(r.header("X-Team"), Some("netops"));
            let v = json(&r);
            let message = v["message"].as_str().unwrap();
            assert_eq!(message.chars().count(), OPSGENIE_MESSAGE_MAX);
            assert!(message.starts_with("UDP flood xxx") && message.ends_with('…'));
            assert_eq!(v["alias"], "web1-eth0-20261124T223501.123Z");
            assert_eq!(v["priority"], "P2");
            assert_eq!(v["source"], "detector");
            assert_eq!(v["entity"], "192.0.2.2");
            assert_eq!(v["tags"], json!(["ddos", "multi_vector", "udp_flood", "syn_flood", "web1"]));
            let d = v["description"].as_str().unwrap();
            assert!(d.starts_with("UDP flood xxx") && !d.starts_with(message), "the whole message: {d}");
            assert!(d.contains("\nRate: 1.2M pps, 512.0 Mbit/s\n"), "{d}");
            assert!(d.ends_with("incident web1-eth0-20261124T223501.123Z · runbook notify-every-attack"), "{d}");
            let details = v["details"].as_object().unwrap();
            assert!(details.values().all(|x| x.is_string()), "OpsGenie takes strings only: {details:?}");
            assert_eq!(details["incident_id"], "web1-eth0-20261124T223501.123Z");
            assert_eq!(details["severity"], "high");
            assert_eq!(details["event"], event.name());
            assert_eq!(details["top_sources"], "198.51.100.7 400.0k pps (32%), 2001:db8::1 100.0k pps (8%)");
            assert_eq!(details["rules"], "r3 drop 198.51.100.7/32 class udp");
            assert_eq!(details["started_at"], "2026-11-24T22:35:01.123Z");
        }
        let mut c = ctx(AttackEvent::AttackStart);
        c.severity = "critical".into();
        assert_eq!(json(&opsgenie(&s, &c, "m").unwrap())["priority"], "P1");

        // The end closes the alert the start opened, by its alias.
        let r = http(notify(&s, &ctx(AttackEvent::AttackEnd), "ignored at the end", 0));
        assert_eq!(
            r.url,
            "https://api.opsgenie.com/v2/alerts/web1-eth0-20261124T223501.123Z/close?identifierType=alias"
        );
        assert_eq!(r.header("Authorization"), Some("GenieKey OG_KEY-s3cret"));
        assert_hidden(&r);
        let v = json(&r);
        assert_eq!(v["source"], "detector");
        assert_eq!(v["note"], "ignored at the end", "the builder sends the message it is given");
        assert_eq!(v.as_object().unwrap().len(), 2);
    }

    #[test]
    fn opsgenie_alias_is_encoded_and_the_eu_url_kept() {
        let s = notify_step("notify: { channel: opsgenie, url: 'https://api.eu.opsgenie.com/', api_key: k-1 }");
        let mut c = ctx(AttackEvent::AttackEnd);
        c.incident_id = "web 1/eth0-2001_db8__1-20261124T223501.123Z?é".into();
        let r = opsgenie(&s, &c, "over").unwrap();
        assert_eq!(
            r.url,
            "https://api.eu.opsgenie.com/v2/alerts/web%201%2Feth0-2001_db8__1-20261124T223501.123Z%3F%C3%A9/close?identifierType=alias"
        );
        assert!(
            r.shown_headers.contains(&("Authorization".into(), "GenieKey ***".into())),
            "a key in the file is masked"
        );
        assert_eq!(r.header("authorization"), Some("GenieKey k-1"));
        let start = json(&opsgenie(&s, &ctx(AttackEvent::AttackStart), "m").unwrap());
        assert_eq!(start["alias"], "web1-eth0-20261124T223501.123Z");
        assert_eq!(percent_encode("a-Z_0.~"), "a-Z_0.~");
        assert_eq!(percent_encode("a b/c:d"), "a%20b%2Fc%3Ad");
        // No target (an incident from before targets): the node and interface.
        let mut c = ctx(AttackEvent::AttackStart);
        c.target.clear();
        assert_eq!(json(&opsgenie(&s, &c, "m").unwrap())["entity"], "web1 (eth0)");
    }
}
