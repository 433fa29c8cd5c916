//! What the payload tests share: secrets that are easy to look for, steps
//! parsed from YAML, and one attack context.

use std::net::IpAddr;

use serde_json::Value;

pub use super::{Delivery, Request, USER_AGENT};
pub use crate::runbook::{
    context::{AttackEvent, Context},
    schema::{Notify, Webhook},
};
use crate::{
    detect::{
        incident::{TopPort, TopSource},
        signature::Signature,
    },
    runbook::{
        context::RuleSummary,
        schema::Step,
        secret::{with_lookup, Lookup},
    },
    span::Span,
};

/// Secrets that are easy to look for: every value holds `s3cret`.
pub struct Secrets;

impl Lookup for Secrets {
    fn env(&self, name: &str) -> Option<String> {
        Some(match name {
            "SLACK_URL" => "https://hooks.slack.com/services/T0/B0/s3cret".into(),
            "DISCORD_URL" => "https://discord.com/api/webhooks/1/s3cret".into(),
            "TEAMS_URL" => "https://prod.westeurope.logic.azure.com/workflows/1/triggers?sig=s3cret".into(),
            "AM_URL" => "https://am:s3cret@alertmanager.example.test:9093/".into(),
            "AM_FULL" => "https://s3cret.example.test/api/v2/alerts".into(),
            "HOOK_URL" => "https://hooks.example.test/ddos?token=s3cret".into(),
            "TG_TOKEN" => "123456:TG_TOKEN-s3cret".into(),
            _ => format!("{name}-s3cret"),
        })
    }
    fn file(&self, _: &str) -> Result<String, String> {
        Ok("file-s3cret".into())
    }
}

pub fn step(yaml: &str) -> Step {
    with_lookup(Box::new(Secrets), || serde_yaml::from_str::<Step>(yaml)).unwrap()
}

pub fn notify_step(yaml: &str) -> Notify {
    match step(yaml) {
        Step::Notify(n) => n,
        s => panic!("not a notify step: {s:?}"),
    }
}

pub fn webhook_step(yaml: &str) -> Webhook {
    match step(yaml) {
        Step::Webhook(w) => w,
        s => panic!("not a webhook step: {s:?}"),
    }
}

// 2026-11-24T22:35:01.123Z
pub const START: u64 = 1_795_991_701_123 - 5 * 86_400_000;

pub fn ctx(event: AttackEvent) -> Context {
    let ended = event == AttackEvent::AttackEnd;
    Context {
        event,
        runbook: "notify-every-attack".into(),
        dry_run: false,
        incident_id: "web1-eth0-20261124T223501.123Z".into(),
        node: "web1".into(),
        iface: "eth0".into(),
        target: "192.0.2.2".into(),
        hostgroup: "host".into(),
        direction: crate::targets::Direction::Incoming,
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
            TopSource {
                addr: "198.51.100.7".parse::<IpAddr>().unwrap(),
                pps: 400_000.0,
                share: 0.32,
                seen_before_attack: false,
            },
            TopSource {
                addr: "2001:db8::1".parse::<IpAddr>().unwrap(),
                pps: 100_000.0,
                share: 0.08,
                seen_before_attack: false,
            },
        ],
        top_ports: vec![TopPort { proto: "udp".into(), port: 53, pps: 900_000.0, share: 0.72 }],
        signature: Some(Signature {
            classes: vec!["tcp_syn".into(), "udp".into()],
            dst: Some("203.0.113.10".parse::<IpAddr>().unwrap()),
            dst_ports: vec![Span::one(53), Span::one(80)],
            src_ports: vec![],
            length: Some(Span { lo: 60, hi: 74 }),
            ttl: Some(Span { lo: 40, hi: 64 }),
            coverage: 0.993,
            collateral: 0.002,
            samples: 4096,
            peacetime_samples: 4096,
            vectors: None,
        }),
        rules: vec![RuleSummary {
            id: "r3".into(),
            rule: "r3 drop 198.51.100.7/32 class udp".into(),
            origin: "runbook udp-flood-auto-response".into(),
            expires_at: Some(START + 600_000),
        }],
        capture: Some(crate::detect::incident::CaptureInfo { packets: 4_321, pre_attack: 1_000, full: false }),
    }
}

/// The HTTP request of a notification (a panic for a mail, or an error).
pub fn http(d: Result<Delivery, String>) -> Request {
    match d {
        Ok(Delivery::Http(r)) => r,
        Ok(Delivery::Mail(m)) => panic!("a mail, not a request: {m:?}"),
        Err(e) => panic!("{e}"),
    }
}

pub fn json(r: &Request) -> Value {
    serde_json::from_slice(&r.body).expect("the body is JSON")
}

pub fn assert_standard_headers(r: &Request) {
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("User-Agent"), Some(USER_AGENT));
    assert!(USER_AGENT.starts_with("detector/") && USER_AGENT.len() > "detector/".len());
}

/// Neither `shown_url`, `shown_headers` nor `Debug` holds a secret.
pub fn assert_hidden(r: &Request) {
    assert!(!r.shown_url.contains("s3cret"), "{}", r.shown_url);
    assert!(!format!("{:?}", r.shown_headers).contains("s3cret"));
    let debug = format!("{r:?}");
    assert!(!debug.contains("s3cret"), "{debug}");
    assert!(debug.contains(&r.shown_url));
}
