//! Alertmanager's v2 API: one alert per incident, firing while it lasts
//! (posted again by the engine), then resolved.

use std::time::Duration;

use serde_json::{json, Value};

use super::{facts, finish, need_url, shown, text, to_bytes, Request};
use crate::{
    detect::incident::time_ms,
    runbook::{
        context::{AttackEvent, Context},
        schema::Notify,
    },
};

/// Appended to an Alertmanager step's base URL.
pub const ALERTMANAGER_PATH: &str = "/api/v2/alerts";
/// The `alertname` label of every alert sent to Alertmanager.
pub const ALERTNAME: &str = "DDoSAttack";
/// How often a firing Alertmanager alert is posted again.
pub const ALERTMANAGER_RESEND: Duration = Duration::from_secs(60);
/// How far ahead a firing alert's `endsAt` is (four resends, as Prometheus).
pub const ALERTMANAGER_FIRING_FOR: Duration = Duration::from_secs(240);

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
            "hostgroup": ctx.hostgroup,
            "target": ctx.target,
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

#[cfg(test)]
mod tests {
    use super::{
        super::{notify, testing::*},
        *,
    };

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
        let r = http(notify(&notify_step("notify: { channel: alertmanager, url: '${AM_URL}' }"), &c, "m", 0));
        assert_eq!(r.url, "https://am:s3cret@alertmanager.example.test:9093/api/v2/alerts");
        assert_eq!(r.shown_url, "${AM_URL}/api/v2/alerts");
        assert_hidden(&r);
        let r = http(notify(&notify_step("notify: { channel: alertmanager, url: '${AM_FULL}' }"), &c, "m", 0));
        assert_eq!(r.url, "https://s3cret.example.test/api/v2/alerts");
        assert_eq!(r.shown_url, "${AM_FULL}");
        // A password written in the file is masked too.
        let r = http(notify(&notify_step("notify: { channel: alertmanager, url: 'http://u:pw@am:9093' }"), &c, "m", 0));
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
                "hostgroup": "host",
                "target": "192.0.2.2",
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
}
