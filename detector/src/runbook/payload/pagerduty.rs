//! PagerDuty's Events API v2: a `trigger` keyed by the incident, and its
//! `resolve`.

use serde_json::json;

use super::{context_value, finish, shown, text, to_bytes, truncate, Request};
use crate::runbook::{
    context::{AttackEvent, Context},
    schema::Notify,
};

/// PagerDuty's Events API v2, when a pagerduty step gives no `url`.
pub const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";
/// PagerDuty truncates `payload.summary` past this many characters.
pub const PAGERDUTY_SUMMARY_MAX: usize = 1024;

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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{
        super::{notify, testing::*},
        *,
    };

    #[test]
    fn pagerduty_trigger_resolve_and_severity() {
        assert_eq!(pagerduty_severity("critical"), "critical");
        assert_eq!(pagerduty_severity("high"), "error");
        assert_eq!(pagerduty_severity("medium"), "warning");
        assert_eq!(pagerduty_severity("low"), "info");

        let s = notify_step("notify: { channel: pagerduty, routing_key: '${PD_KEY}' }");
        for event in [AttackEvent::AttackStart, AttackEvent::AttackUpdate] {
            let r = http(notify(&s, &ctx(event), &"x".repeat(1500), 0));
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
}
