//! Runbook files: the schema, what a bad file is told, trigger matching
//! and cooldown over scripted events.

use std::time::Duration;

use super::{
    engine::rule_requests,
    limits::MAX_STEPS,
    load::{self, parse, FileError},
    schema::{Families, Mode, Runbook, Step},
    secret::{tests::Fake, Lookup},
    trigger::{matches, Fired},
};
use crate::{
    detect::{
        family::Family,
        incident::{EventKind, Incident, Status, TopSource},
        severity::Severity,
    },
    mitigate::rule::{Action, RuleRequest, Shape},
    span::Span,
};

/// Every variable set, to something URL-shaped.
struct AnyEnv;

impl Lookup for AnyEnv {
    fn env(&self, name: &str) -> Option<String> {
        Some(format!("https://example.test/{name}"))
    }
    fn file(&self, _: &str) -> Result<String, String> {
        Ok("from-a-file".into())
    }
}

fn ok(text: &str) -> Runbook {
    parse("rb.yaml", text, Box::new(Fake)).unwrap_or_else(|e| panic!("{e}"))
}

fn err(text: &str) -> FileError {
    parse("rb.yaml", text, Box::new(Fake)).expect_err("should not parse")
}

const GOOD: &str = r#"
name: udp-flood-auto-response
description: Rate-limit UDP floods per source
enabled: true
mode: dry_run
trigger:
  families: [udp_flood, dns_amplification]
  min_severity: medium
  min_pps: 50000
  nodes: [edge-1, edge-2]
cooldown: 2m
continue_on_error: false
steps:
  - mitigate: { action: rate_limit, scope: top_sources, top: 5, class: udp, pps: 50, ttl: 10m }
  - mitigate: { action: drop, scope: prefix, prefix: 203.0.113.0/24, class: [udp], source_port: 11211, ttl: 1h, remove_on_resolve: false }
  - notify: { channel: slack, url: "${SLACK_URL}", message: "UDP flood on {{ node }}: {{ pps }} pps" }
  - notify: { channel: pagerduty, routing_key: "${PD_KEY}", timeout: 2s, retries: 1 }
  - webhook: { url: "https://hooks.example.test/ddos", secret: "${HMAC}", headers: { X-Team: netops } }
  - incident: { status: escalated }
  - note: "Rate limit applied to {{ top_sources | length }} sources"
"#;

#[test]
fn a_full_runbook_parses() {
    let rb = ok(GOOD);
    assert_eq!(rb.name.0, "udp-flood-auto-response");
    assert_eq!(rb.mode, Mode::DryRun);
    assert_eq!(rb.cooldown, Duration::from_secs(120));
    assert!(!rb.continue_on_error);
    assert_eq!(rb.trigger.families, Families::These(vec![Family::UdpFlood, Family::DnsAmplification]));
    let kinds: Vec<&str> = rb.steps.0.iter().map(Step::kind).collect();
    assert_eq!(kinds, ["mitigate", "mitigate", "notify", "notify", "webhook", "incident", "note"]);
    let Step::Notify(n) = &rb.steps.0[2] else { panic!() };
    let url = n.url.as_ref().unwrap();
    assert_eq!(url.0.to_string(), "${SLACK_URL}", "only the reference is shown");
    assert!(url.0.expose().starts_with("https://hooks.slack.com/"));
    assert!(!format!("{rb:?}").contains("s3cret"), "secrets never reach Debug output");
    let Step::Mitigate(m) = &rb.steps.0[0] else { panic!() };
    assert_eq!((m.top, m.remove_on_resolve), (5, true));
    assert_eq!(m.shape.action, Action::RateLimit { pps: 50, burst: 5, bps: None, byte_burst: None });
    assert_eq!(m.shape.classes, ["udp"]);
    assert_eq!(m.shape.ttl, Some(Duration::from_secs(600)));
}

#[test]
fn defaults() {
    let rb = ok("name: x\ntrigger: { families: [any] }\nsteps: [ { note: hi } ]\n");
    assert!(rb.enabled && rb.continue_on_error);
    assert_eq!(rb.mode, Mode::Enforce);
    assert_eq!(rb.cooldown, Duration::from_secs(300));
    assert_eq!(rb.trigger.families, Families::Any);
}

/// (file, line or 0 for "any", what the message must contain)
const BAD: &[(&str, usize, &str)] = &[
    ("name: x\ntrigger: { families: [udp_flod] }\nsteps: [ { note: hi } ]\n", 2, "unknown family 'udp_flod' (use any, or: udp_flood, syn_flood"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - shout: hi\n", 4, "unknown variant `shout`, expected one of `notify`, `webhook`, `mitigate`, `incident`, `note`"),
    ("name: x\ntrigger: { families: [any] }\ncooldown: soon\nsteps: [ { note: hi } ]\n", 3, "'soon' is not a duration"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - webhook: { url: \"not a url\" }\n", 4, "bad URL not a url"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - webhook: { url: \"ftp://files.example.test/\" }\n", 4, "only http:// and https://"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - note: \"{{ node \"\n", 4, "template syntax error"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - note: \"{{ nodes }}\"\n", 4, "template uses 'nodes'"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - notify: { channel: slack, url: \"${NOT_SET}\" }\n", 4, "environment variable NOT_SET is not set"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - webhook: { url: \"https://x.test/\", secret: \"${file:/nope}\" }\n", 4, "secret file /nope cannot be read"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - notify: { channel: sms, url: \"https://x.test/\" }\n", 4, "unknown variant `sms`"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - incident: { status: closed }\n", 4, "unknown variant `closed`"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - mitigate: { action: rate_limit, scope: top_sources, ttl: 1m }\n", 4, "mitigate: a rate limit needs a rate: pps from 1 to 1000000000"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - mitigate: { action: drop, scope: prefix, ttl: 1m }\n", 4, "scope prefix needs a prefix"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - mitigate: { action: drop, scope: top_sources, class: udpp, ttl: 1m }\n", 4, "mitigate: unknown traffic class 'udpp'"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - mitigate: { action: drop, scope: prefix, prefix: 10.1.2.3/8, ttl: 1m }\n", 4, "did you mean 10.0.0.0/8"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - mitigate: { action: drop, scope: top_sources, pps: 5, ttl: 1m }\n", 4, "mitigate: pps, burst and bps only apply to a rate_limit rule"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - mitigate: { action: drop, scope: top_sources }\n", 4, "missing field `ttl`"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - mitigate: { action: block, scope: top_sources, ttl: 1m }\n", 4, "unknown variant `block`"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - mitigate: { action: drop, scope: top_sources, top: 0, ttl: 1m }\n", 4, "mitigate.top must be 1 to 100"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - mitigate: { action: syn_cookies, scope: top_sources, ttl: 1m }\n", 4, "syn_cookies takes scope signature"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - mitigate: { action: syn_cookies, scope: signature, class: udp, ttl: 1m }\n", 4, "syn_cookies takes no class"),
    ("name: x\ntrigger: { families: [any] }\nsteps: []\n", 3, "at least one step"),
    ("name: x\ntrigger: { families: [] }\nsteps: [ { note: hi } ]\n", 2, "trigger.families is empty"),
    ("name: x\ntrigger: { families: [any], min_severity: severe }\nsteps: [ { note: hi } ]\n", 2, "unknown variant `severe`"),
    ("name: x\ntrigger: { families: [any], nodes: some }\nsteps: [ { note: hi } ]\n", 2, "neither all nor a list"),
    ("name: x\ntrigger: { families: [any] }\nmode: loud\nsteps: [ { note: hi } ]\n", 3, "unknown variant `loud`, expected `enforce` or `dry_run`"),
    ("name: x\ntrigger: { families: [any] }\nstepz: [ { note: hi } ]\n", 3, "unknown field `stepz`"),
    ("name: Bad Name\ntrigger: { families: [any] }\nsteps: [ { note: hi } ]\n", 1, "runbook name 'Bad Name' must be"),
    ("trigger: { families: [any] }\nsteps: [ { note: hi } ]\n", 0, "missing field `name`"),
    ("name: x\nsteps: [ { note: hi } ]\n", 0, "missing field `trigger`"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - notify: { channel: slack, url: \"https://x.test/\", timeout: forever }\n", 4, "'forever' is not a duration"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - webhook: { url: \"https://x.test/\", retries: -1 }\n", 4, "steps[0].webhook.retries: invalid type: integer `-1`, expected u32"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - mitigate: { action: drop, scope: top_sources, ttl: 500ms }\n", 4, "mitigate: ttl must be between 1s and 365 days"),
    ("name: \"x\ntrigger: {}\n", 0, "found unexpected end of stream"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - mitigate: { action: drop, scope: signature, port: 80, ttl: 1m }\n", 4, "scope signature and vectors take their match from the incident"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - mitigate: { action: drop, scope: signature, top: 5, ttl: 1m }\n", 4, "prefix and top do not apply to scopes signature and vectors"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - mitigate: { action: drop, scope: signature, max_collateral: 2, ttl: 1m }\n", 4, "2 is not a share between 0 and 1"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - mitigate: { action: drop, scope: vectors, max_collateral: lots, ttl: 1m }\n", 4, "'lots' is not a share (give 0.01 or 1%)"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - mitigate: { action: drop, scope: top_sources, max_collateral: 1%, ttl: 1m }\n", 4, "max_collateral applies to scopes signature and vectors only"),
    ("name: x\ntrigger: { families: [any] }\nsteps:\n  - mitigate: { action: rate_limit, aggregate: true, scope: signature, pps: 0, ttl: 1m }\n", 4, "mitigate: rate 0 packets per second is out of range"),
];

/// The channels with more than a URL: (step, what the message must say).
/// Each is one line that names the field.
const BAD_CHANNELS: &[(&str, &str)] = &[
    ("{ channel: telegram, chat_id: 1 }", "notify telegram: bot_token is missing (the token @BotFather gave the bot"),
    ("{ channel: telegram, bot_token: \"${TG_TOKEN}\" }", "notify telegram: chat_id is missing"),
    ("{ channel: telegram, bot_token: \"${TG_TOKEN}\", chat_id: general }", "chat_id: 'general' is not a Telegram chat: give the chat's number"),
    ("{ channel: telegram, bot_token: \"${TG_TOKEN}\", chat_id: \"@abc\" }", "chat_id: '@abc' is not a Telegram chat"),
    ("{ channel: telegram, bot_token: \"${TG_TOKEN}\", chat_id: 1.5 }", "chat_id: give the chat's number or a channel's @username"),
    ("{ channel: telegram, bot_token: \"${TG_TOKEN}\", chat_id: \"${NOT_SET}\" }", "chat_id: environment variable NOT_SET is not set"),
    ("{ channel: telegram, bot_token: \"${HMAC}\", chat_id: 1 }", "notify telegram: bot_token ${HMAC} is not a bot token"),
    ("{ channel: telegram, bot_token: \"12:ab/../x\", chat_id: 1 }", "notify telegram: bot_token as written is not a bot token"),
    ("{ channel: telegram, bot_token: \"${TG_TOKEN}\", chat_id: 1, url: \"tg.example.test\" }", "bad URL tg.example.test"),
    ("{ channel: opsgenie }", "notify opsgenie: api_key is missing (an API integration's key"),
    ("{ channel: opsgenie, api_key: \"${OG_KEY}\", chat_id: 5 }", "notify opsgenie: chat_id applies to channel telegram only"),
    ("{ channel: slack, url: \"https://x.test/\", api_key: k }", "notify slack: api_key applies to channel opsgenie only"),
    ("{ channel: slack, url: \"https://x.test/\", subject: hi }", "notify slack: subject applies to channel email only"),
    ("{ channel: email, from: a@example.test, to: b@example.test }", "notify email: smtp is missing (the server"),
    ("{ channel: email, smtp: { host: mail.example.test }, to: b@example.test }", "notify email: from is missing"),
    ("{ channel: email, smtp: { host: mail.example.test }, from: a@example.test }", "notify email: to is missing"),
    ("{ channel: email, smtp: { host: mail.example.test }, from: a@example.test, to: [] }", "notify email: to is an empty list"),
    ("{ channel: email, smtp: { host: mail.example.test }, from: not-an-address, to: b@example.test }", "from: 'not-an-address' is not a mail address ("),
    ("{ channel: email, smtp: { host: mail.example.test }, from: a@example.test, to: [b@example.test, \"c@@example.test\"] }", "to: 'c@@example.test' is not a mail address"),
    ("{ channel: email, smtp: { host: mail.example.test }, from: a@example.test, to: \"Ops <ops@>\" }", "to: 'Ops <ops@>' is not a mail address"),
    ("{ channel: email, smtp: { host: mail.example.test, tls: none }, from: a@example.test, to: b@example.test }", "smtp.tls: none sends the password and the mail in clear text, so it is only allowed to a loopback host (localhost, 127.0.0.1, ::1), not mail.example.test"),
    ("{ channel: email, smtp: { host: mail.example.test, tls: ssl }, from: a@example.test, to: b@example.test }", "unknown variant `ssl`, expected one of `starttls`, `tls`, `none`"),
    ("{ channel: email, smtp: { host: mail.example.test, username: u }, from: a@example.test, to: b@example.test }", "smtp.password is missing: a username needs its password"),
    ("{ channel: email, smtp: { host: mail.example.test, password: \"${SMTP_PASSWORD}\" }, from: a@example.test, to: b@example.test }", "smtp.username is missing"),
    ("{ channel: email, smtp: { host: mail.example.test, password: \"${NOT_SET}\", username: u }, from: a@example.test, to: b@example.test }", "environment variable NOT_SET is not set"),
    ("{ channel: email, smtp: { host: \"mail example\" }, from: a@example.test, to: b@example.test }", "smtp.host: 'mail example' is not a host name or an IP address"),
    ("{ channel: email, smtp: { host: mail.example.test, port: 0 }, from: a@example.test, to: b@example.test }", "smtp.port: 0 is not a port"),
    ("{ channel: email, smtp: { host: mail.example.test, port: 70000 }, from: a@example.test, to: b@example.test }", "smtp.port: invalid value: integer `70000`, expected u16"),
    ("{ channel: email, smtp: { hots: mail.example.test }, from: a@example.test, to: b@example.test }", "unknown field `hots`, expected one of `host`, `port`, `tls`"),
    ("{ channel: email, smtp: { host: mail.example.test, ca_file: /nope/ca.pem }, from: a@example.test, to: b@example.test }", "smtp.ca_file: /nope/ca.pem cannot be read: No such file"),
    ("{ channel: email, smtp: { host: localhost, tls: none, ca_file: /etc/ssl/ca.pem }, from: a@example.test, to: b@example.test }", "smtp.ca_file applies to tls: starttls or tls, not none"),
    ("{ channel: email, smtp: { host: mail.example.test }, from: a@example.test, to: b@example.test, url: \"https://x.test/\" }", "notify email: url does not apply (email goes through smtp)"),
    ("{ channel: email, smtp: { host: mail.example.test }, from: a@example.test, to: b@example.test, subject: \"{{ nodes }}\" }", "template uses 'nodes'"),
    ("{ channel: email, smtp: { host: mail.example.test }, form: a@example.test, to: b@example.test }", "unknown field `form`"),
];

#[test]
fn channel_fields_are_checked_at_load() {
    for (step, expect) in BAD_CHANNELS {
        let text = format!("name: x\ntrigger: {{ families: [any] }}\nsteps:\n  - notify: {step}\n");
        let e = err(&text);
        assert!(e.message.contains(expect), "{step}: expected {expect:?} in {e}");
        assert_eq!(e.line, 4, "{step}: {e}");
        assert!(!e.to_string().contains('\n'), "one line: {e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
}

#[test]
fn channels_with_more_than_a_url_parse() {
    let dir = std::env::temp_dir().join(format!("detector-channels-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    // Any certificate will do: the check is that the file holds one.
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n").unwrap();
    let text = format!(
        r#"
name: channels
trigger: {{ families: [any] }}
steps:
  - notify: {{ channel: telegram, bot_token: "${{TG_TOKEN}}", chat_id: "${{TG_CHAT}}" }}
  - notify: {{ channel: telegram, bot_token: "${{TG_TOKEN}}", chat_id: "@ddos_alerts", url: "http://127.0.0.1:8081" }}
  - notify: {{ channel: opsgenie, api_key: "${{OG_KEY}}", url: "https://api.eu.opsgenie.com", retries: 1 }}
  - notify:
      channel: email
      smtp: {{ host: mail.example.test, username: detector, password: "${{SMTP_PASSWORD}}", ca_file: {ca} }}
      from: "DDoS detector <detector@example.test>"
      to: ops@example.test
      subject: "[{{{{ severity }}}}] {{{{ node }}}}"
  - notify: {{ channel: email, smtp: {{ host: "::1", tls: none }}, from: a@example.test, to: [b@example.test, "C <c@example.test>"] }}
  - notify: {{ channel: email, smtp: {{ host: smtp.example.test, tls: tls }}, from: a@example.test, to: b@example.test }}
"#,
        ca = ca.display()
    );
    let rb = ok(&text);
    std::fs::remove_dir_all(&dir).unwrap();
    let n: Vec<&crate::runbook::schema::Notify> =
        rb.steps.0.iter().map(|s| if let Step::Notify(n) = s { n } else { panic!("{s:?}") }).collect();
    use crate::runbook::channels::{ChatId, SmtpTls};
    assert_eq!(n[0].chat_id, Some(ChatId::Id(-1001234567890)));
    assert_eq!(n[0].bot_token.as_ref().unwrap().expose(), "123456:AAs3cret");
    assert_eq!(n[1].chat_id, Some(ChatId::Username("@ddos_alerts".into())));
    assert_eq!((n[2].api_key.as_ref().unwrap().expose(), n[2].retries), ("og-s3cret", 1));
    let e = n[3].email.as_ref().unwrap();
    assert_eq!((e.smtp.host.as_str(), e.smtp.port, e.smtp.tls), ("mail.example.test", 587, SmtpTls::Starttls));
    assert_eq!(e.smtp.login.as_ref().unwrap().password.expose(), "smtp-s3cret");
    assert!(e.smtp.ca_file.as_ref().unwrap().pem.starts_with(b"-----BEGIN CERTIFICATE-----"));
    assert_eq!(e.from.to_string(), "DDoS detector <detector@example.test>");
    assert_eq!(e.to.len(), 1);
    assert!(e.subject.is_some());
    let e = n[4].email.as_ref().unwrap();
    assert_eq!((e.smtp.host.as_str(), e.smtp.port, e.smtp.tls, e.to.len()), ("::1", 25, SmtpTls::None, 2));
    assert_eq!(e.smtp.describe(), "[::1]:25 (none)");
    let e = n[5].email.as_ref().unwrap();
    assert_eq!((e.smtp.port, e.smtp.tls), (465, SmtpTls::Tls));
    let debug = format!("{rb:?}");
    assert!(!debug.contains("s3cret"), "secrets never reach Debug output: {debug}");
    assert!(debug.contains("${SMTP_PASSWORD}"), "{debug}");

    // A password written in the file is never shown either.
    let rb = ok("name: x\ntrigger: { families: [any] }\nsteps:\n  - notify: { channel: email, smtp: { host: localhost, tls: none, username: u, password: hunter2 }, from: a@example.test, to: b@example.test }\n");
    assert!(!format!("{rb:?}").contains("hunter2"));
}

/// `detector runbooks validate` without secrets: references stand for a
/// placeholder, and a CA file is not looked for.
#[test]
fn channels_validate_without_their_secrets() {
    let text = "name: x\ntrigger: { families: [any] }\nsteps:\n  - notify: { channel: telegram, bot_token: \"${T}\", chat_id: \"${C}\" }\n  - notify: { channel: email, smtp: { host: mail.example.test, username: \"${U}\", password: \"${P}\", ca_file: /etc/detector/ca.pem }, from: a@example.test, to: b@example.test }\n";
    parse("rb.yaml", text, Box::new(super::secret::Unresolved)).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn bad_files_say_what_and_where() {
    assert!(BAD.len() >= 20);
    for (text, line, expect) in BAD {
        let e = err(text);
        assert!(e.message.contains(expect), "{text:?}: expected {expect:?} in {e}");
        if *line != 0 {
            assert_eq!(e.line, *line, "{text:?}: {e}");
        }
        assert!(e.to_string().starts_with("rb.yaml:"), "{e}");
        assert!(!e.to_string().contains("s3cret") && !e.to_string().contains("R0UT1NGKEY"), "{e}");
    }
}

#[test]
fn the_shipped_runbooks_validate() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../runbooks");
    let loaded = load::load_dir(&dir, &|| Box::new(AnyEnv)).unwrap();
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let names: Vec<&str> = loaded.runbooks.iter().map(|l| l.runbook.name.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "flood-signature-response",
            "notify-every-attack",
            "pagerduty-critical",
            "reflection-auto-response",
            "syn-flood-auto-response",
            "udp-flood-auto-response"
        ]
    );
    assert!(loaded.runbooks.iter().all(|l| l.hash.len() == 64));
}

#[test]
fn a_directory_loads_what_it_can_and_names_the_rest() {
    let dir = std::env::temp_dir().join(format!("detector-runbooks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.yaml"), "name: a\ntrigger: { families: [any] }\nsteps: [ { note: hi } ]\n").unwrap();
    std::fs::write(dir.join("b.yml"), "name: a\ntrigger: { families: [any] }\nsteps: [ { note: hi } ]\n").unwrap();
    std::fs::write(dir.join("c.yaml"), "name: c\ntrigger: { families: [nope] }\nsteps: [ { note: hi } ]\n").unwrap();
    std::fs::write(dir.join("notes.txt"), "not a runbook").unwrap();
    let loaded = load::load_dir(&dir, &|| Box::new(Fake)).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(loaded.runbooks.len(), 1);
    assert_eq!(loaded.errors.len(), 2);
    assert!(loaded.errors[0].to_string().contains("runbook name 'a' is already used by"), "{}", loaded.errors[0]);
    assert!(loaded.errors[1].to_string().contains("c.yaml:2:"), "{}", loaded.errors[1]);
    let missing = load::load_dir(std::path::Path::new("/nonexistent/runbooks"), &|| Box::new(Fake)).unwrap_err();
    assert!(missing.to_string().contains("cannot read the runbook directory"), "{missing}");
}

fn incident(families: &[Family], severity: Severity, pps: f64) -> Incident {
    Incident {
        id: "lab-veth0-20261125T000000.000Z".into(),
        node: "edge-1".into(),
        iface: "veth0".into(),
        target: "192.0.2.2".into(),
        hostgroup: "host".into(),
        direction: Default::default(),
        target_prefixes: vec!["192.0.2.2/32".parse().unwrap()],
        families: families.to_vec(),
        vectors: vec![],
        severity,
        status: Status::Active,
        started_at: 0,
        ended_at: None,
        pps,
        bps: pps * 512.0,
        peak_pps: pps,
        peak_bps: pps * 512.0,
        top_sources: vec![],
        top_ports: vec![],
        signature: None,
        timeline: vec![],
        capture: None,
    }
}

#[test]
fn triggers_match_families_severity_rate_and_nodes() {
    let rb = ok(GOOD);
    assert!(matches(&rb, &incident(&[Family::UdpFlood], Severity::High, 60_000.0)));
    assert!(!matches(&rb, &incident(&[Family::SynFlood], Severity::High, 60_000.0)), "family");
    assert!(!matches(&rb, &incident(&[Family::UdpFlood], Severity::Low, 60_000.0)), "severity");
    assert!(!matches(&rb, &incident(&[Family::UdpFlood], Severity::High, 10_000.0)), "rate");
    let mut elsewhere = incident(&[Family::UdpFlood], Severity::High, 60_000.0);
    elsewhere.node = "core-9".into();
    assert!(!matches(&rb, &elsewhere), "node");
    let mut off = rb.clone();
    off.enabled = false;
    assert!(!matches(&off, &incident(&[Family::UdpFlood], Severity::High, 60_000.0)), "disabled");
    let any = ok("name: any\ntrigger: { families: [any] }\nsteps: [ { note: hi } ]\n");
    assert!(matches(&any, &incident(&[Family::MultiVector, Family::HttpFlood], Severity::Low, 1.0)));
}

#[test]
fn a_runbook_runs_once_per_incident_within_its_cooldown() {
    let rb = ok(GOOD); // cooldown 2m
    let books = [&rb];
    let mut fired = Fired::default();
    let mut inc = incident(&[Family::UdpFlood], Severity::Medium, 60_000.0);
    assert_eq!(fired.due(&books, EventKind::Opened, &inc, 1_000), vec![0]);
    fired.record("udp-flood-auto-response", &inc.id, 1_000);
    inc.severity = Severity::High;
    assert!(fired.due(&books, EventKind::SeverityChanged, &inc, 60_000).is_empty(), "inside the cooldown");
    assert_eq!(fired.due(&books, EventKind::SeverityChanged, &inc, 121_000), vec![0], "after it");
    assert!(fired.due(&books, EventKind::NoteAdded, &inc, 500_000).is_empty(), "notes fire nothing");
    assert!(fired.due(&books, EventKind::Updated, &inc, 500_000).is_empty(), "updates fire only what never ran");
    assert!(fired.due(&books, EventKind::Resolved, &inc, 500_000).is_empty());
    assert!(fired.ran("udp-flood-auto-response", &inc.id));
    // Seeded from the history after a restart: the latest run counts, in any order.
    let mut seeded = Fired::default();
    seeded.seed("udp-flood-auto-response", &inc.id, 100_000);
    seeded.seed("udp-flood-auto-response", &inc.id, 1_000);
    assert!(seeded.due(&books, EventKind::Updated, &inc, 150_000).is_empty(), "it ran before the restart");
    assert!(seeded.due(&books, EventKind::SeverityChanged, &inc, 200_000).is_empty(), "within its cooldown");
    assert_eq!(seeded.due(&books, EventKind::SeverityChanged, &inc, 220_000), vec![0], "after it");
    // Another incident is another count.
    let mut other = inc.clone();
    other.id = "other".into();
    assert_eq!(fired.due(&books, EventKind::Opened, &other, 2_000), vec![0]);
    // An attack that grows past min_pps after it opened fires at its next update.
    let mut growing = incident(&[Family::UdpFlood], Severity::Medium, 40_000.0);
    growing.id = "growing".into();
    assert!(fired.due(&books, EventKind::Opened, &growing, 3_000).is_empty(), "below min_pps at the start");
    growing.pps = 60_000.0;
    growing.peak_pps = 60_000.0;
    assert_eq!(fired.due(&books, EventKind::Updated, &growing, 4_000), vec![0]);
    fired.forget(&inc.id);
    assert!(!fired.ran("udp-flood-auto-response", &inc.id));
}

#[test]
fn templates_render_the_attack_context() {
    use super::context::{AttackEvent, Context};
    use crate::detect::incident::TopSource;
    let mut inc = incident(&[Family::MultiVector, Family::UdpFlood, Family::SynFlood], Severity::High, 61_500.4);
    inc.top_sources = vec![TopSource {
        addr: "198.51.100.9".parse().unwrap(),
        pps: 30_100.0,
        share: 0.49,
        seen_before_attack: false,
    }];
    let ctx = Context::new(EventKind::Opened, &inc, "udp-auto", false, vec![]);
    assert_eq!(ctx.event, AttackEvent::AttackStart);
    let text = ctx
        .render("{{ event }} {{ families | join(', ') }} on {{ node }}/{{ iface }}: {{ pps | round | int }} pps from {{ top_sources[0].addr }} ({{ severity }}, {{ runbook }})")
        .unwrap();
    assert_eq!(
        text,
        "attack_start multi_vector, udp_flood, syn_flood on edge-1/veth0: 61500 pps from 198.51.100.9 (high, udp-auto)"
    );
    // Every variable the loader admits exists in the context.
    for v in super::schema::TEMPLATE_VARIABLES {
        let out = ctx.render(&format!("{{% if {v} is defined %}}yes{{% endif %}}")).unwrap();
        assert_eq!(out, "yes", "{v}");
    }
    let end = Context::new(EventKind::Resolved, &inc, "udp-auto", true, vec![]);
    assert_eq!(end.event, AttackEvent::AttackEnd);
    assert!(
        end.summary().starts_with(
            "Attack on edge-1 (veth0, target 192.0.2.2) is over: multi_vector, udp_flood, syn_flood, peak 61500 pps"
        ),
        "{}",
        end.summary()
    );
}

#[test]
fn steps_are_limited() {
    let many = |n: usize| format!("name: x\ntrigger: {{ families: [any] }}\nsteps:\n{}", "  - note: hi\n".repeat(n));
    assert_eq!(ok(&many(MAX_STEPS)).steps.0.len(), MAX_STEPS);
    let e = err(&many(MAX_STEPS + 1));
    assert_eq!(e.message, "steps: a runbook has at most 100 steps; this one has more", "{e}");
    assert_eq!(e.line, 4, "the steps' first line: {e}");
    // As many as fit in the size limit: refused fast.
    let t0 = std::time::Instant::now();
    let e = err(&many(5_000));
    assert!(t0.elapsed() < Duration::from_millis(500), "{:?}", t0.elapsed());
    assert!(e.message.contains("at most 100 steps"), "{e}");
}

/// A tiny deterministic generator, so the sweep is the same on every run.
struct Lcg(u64);

impl Lcg {
    fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        &from[(self.0 >> 33) as usize % from.len()]
    }
}

/// Mitigate steps made of every kind of value, good and bad: a step loads
/// exactly when the rule check accepts its fields, and the requests a
/// loaded step makes at an incident are all accepted by the rule check,
/// with the shape the step holds.
#[test]
fn a_mitigate_step_that_loads_makes_rules_the_rule_check_accepts() {
    let actions = ["drop", "rate_limit"];
    let classes: [&[&str]; 6] = [&[], &[], &["udp"], &["tcp_syn", "udp"], &["UDP"], &["udpp"]];
    // Mostly good values, so that many steps load; each bad one is refused.
    let ports = [None, None, None, Some(53), Some(65535), Some(0u32)];
    let rates = [Some(1u64), Some(50), Some(50), Some(1_000_000_000), None, Some(0), Some(1_000_000_001)];
    let bursts = [None, None, None, Some(1u64), Some(5_000), Some(10_000_000), Some(0), Some(10_000_001)];
    let byte_rates = [None, None, None, Some(1500u64), Some(100_000_000_000), Some(10), Some(100_000_000_001)];
    let ttls = [
        ("1s", 1_000u64),
        ("10m", 600_000),
        ("10m", 600_000),
        ("365days", 365 * 86_400_000),
        ("500ms", 500),
        ("366days", 366 * 86_400_000),
    ];
    let tops = [None, Some(1usize), Some(10), Some(100), Some(0), Some(101)];
    let mut inc = incident(&[Family::UdpFlood, Family::SynFlood], Severity::High, 60_000.0);
    inc.top_sources = (1..=120)
        .map(|i| TopSource {
            addr: format!("198.51.100.{i}").parse().unwrap(),
            pps: 3_000.0,
            share: 0.05,
            seen_before_attack: false,
        })
        .collect();
    inc.iface = "veth0\u{7}".into();
    let mut rng = Lcg(7);
    let (mut loaded, mut refused) = (0, 0);
    for _ in 0..2000 {
        let action = *rng.pick(&actions);
        let class: Vec<String> = rng.pick(&classes).iter().map(|c| c.to_string()).collect();
        let (port, source_port) = (*rng.pick(&ports), *rng.pick(&ports));
        let (mut pps, mut burst, mut bps) = (*rng.pick(&rates), *rng.pick(&bursts), *rng.pick(&byte_rates));
        if action == "drop" && *rng.pick(&[true, true, true, false]) {
            // A drop with rate fields is refused; mostly, give none.
            (pps, burst, bps) = (None, None, None);
        }
        let (ttl, ttl_ms) = *rng.pick(&ttls);
        let top = *rng.pick(&tops);
        let prefix_scope = rng.pick(&[false, true]) == &true;
        let mut fields = vec![format!("action: {action}"), format!("ttl: {ttl}"), format!("class: {class:?}")];
        if prefix_scope {
            fields.push("scope: prefix".into());
            fields.push("prefix: 203.0.113.0/24".into());
        } else {
            fields.push("scope: top_sources".into());
            if let Some(t) = top {
                fields.push(format!("top: {t}"));
            }
        }
        for (name, v) in [
            ("port", port.map(u64::from)),
            ("source_port", source_port.map(u64::from)),
            ("pps", pps),
            ("burst", burst),
            ("bps", bps),
        ] {
            if let Some(v) = v {
                fields.push(format!("{name}: {v}"));
            }
        }
        let text =
            format!("name: x\ntrigger: {{ families: [any] }}\nsteps:\n  - mitigate: {{ {} }}\n", fields.join(", "));
        // What the rule check says of the same fields, as the API gets them.
        let direct = RuleRequest {
            action: action.into(),
            prefix: "203.0.113.0/24".into(),
            classes: class.clone(),
            sport: source_port.map(|p| Span::one(p as u16)),
            dport: port.map(|p| Span::one(p as u16)),
            pps,
            burst,
            bps,
            ttl_ms: Some(ttl_ms),
            reason: None,
            origin: None,
            ..Default::default()
        }
        .check();
        match parse("rb.yaml", &text, Box::new(Fake)) {
            Ok(rb) => {
                loaded += 1;
                let direct = direct.unwrap_or_else(|e| panic!("{text} loaded, but the rule check says: {e}"));
                let Step::Mitigate(m) = &rb.steps.0[0] else { panic!() };
                let Ok(reqs) = rule_requests(0, m, "x", &inc) else { panic!("{text}: no requests") };
                let want = if prefix_scope { 1 } else { top.unwrap_or(10) };
                assert_eq!(reqs.len(), want, "{text}");
                for r in &reqs {
                    let c = r.check().unwrap_or_else(|e| panic!("{text}: the request {r:?} is refused: {e}"));
                    // Limited to the incident's target, otherwise as the step says.
                    assert_eq!(c.shape.m.dst, Some("192.0.2.2/32".parse().unwrap()), "{text}");
                    let m_any_dst = crate::mitigate::rule::Match { dst: None, ..c.shape.m };
                    let shape = Shape { reason: String::new(), m: m_any_dst, ..c.shape };
                    assert_eq!(shape, m.shape, "{text}");
                    assert_eq!(shape.action, direct.shape.action, "{text}");
                    assert!(c.origin.is_step("x", &inc.id, 0));
                }
            }
            Err(e) => {
                refused += 1;
                // Refused for the rule's shape exactly when the rule check refuses it;
                // otherwise for a field only runbooks have (top, port 0 is both).
                let scope_problem = !prefix_scope && top.is_some_and(|t| t == 0 || t > 100);
                assert!(direct.is_err() || scope_problem, "{text} was refused ({e}), yet the rule check accepts it");
                assert_eq!(e.line, 4, "{text}: {e}");
            }
        }
    }
    assert!(loaded > 100 && refused > 100, "the sweep covers both: {loaded} loaded, {refused} refused");
}

/// A `scope: signature` step turns the incident's signature into rules on
/// every source; with no signature it is skipped, and above its
/// max_collateral it fails, saying why.
#[test]
fn signature_scopes_build_rules_from_the_incident() {
    use crate::{detect::signature::Signature, runbook::engine::StepError};
    let text = "name: x\ntrigger: { families: [any] }\nsteps:\n  - mitigate: { action: rate_limit, aggregate: true, pps: 1000, scope: signature, max_collateral: 0.5%, ttl: 10m }\n  - mitigate: { action: drop, scope: vectors, ttl: 10m }\n";
    let rb = parse("rb.yaml", text, Box::new(Fake)).unwrap();
    let (Step::Mitigate(sig_step), Step::Mitigate(vec_step)) = (&rb.steps.0[0], &rb.steps.0[1]) else { panic!() };
    assert_eq!(sig_step.max_collateral, 0.005);
    assert_eq!(vec_step.max_collateral, 0.01, "the default is 1%");
    let mut inc = incident(&[Family::UdpAmplification], Severity::Critical, 500_000.0);
    assert!(matches!(rule_requests(0, sig_step, "x", &inc), Err(StepError::Skip(_))), "no signature yet");
    let sig = Signature {
        classes: vec!["udp_amplification".into()],
        dst: Some("192.0.2.2".parse().unwrap()),
        dst_ports: vec![Span { lo: 1024, hi: 65535 }],
        src_ports: vec![Span::one(123)],
        length: Some(Span { lo: 440, hi: 500 }),
        ttl: None,
        coverage: 0.999,
        collateral: 0.0,
        samples: 4096,
        peacetime_samples: 4096,
        vectors: None,
    };
    inc.signature = Some(sig.clone());
    let reqs = rule_requests(0, sig_step, "x", &inc).unwrap_or_else(|_| panic!("rules expected"));
    assert_eq!(reqs.len(), 1);
    let c = reqs[0].check().unwrap();
    assert_eq!(c.prefix.to_string(), "0.0.0.0/0");
    assert!(c.shape.action.name() == "aggregate_limit" && c.shape.m.sport == Some(Span::one(123)), "{c:?}");
    assert_eq!(c.origin.step, Some(0));
    // Not reflected (no vectors): the vectors step is skipped.
    assert!(matches!(rule_requests(1, vec_step, "x", &inc), Err(StepError::Skip(_))));
    inc.signature.as_mut().unwrap().vectors = Some(Box::new(Signature { dst_ports: vec![], ..sig.clone() }));
    let reqs = rule_requests(1, vec_step, "x", &inc).unwrap_or_else(|_| panic!("rules expected"));
    assert_eq!((reqs[0].sport, reqs[0].dport), (Some(Span::one(123)), None));
    // Too much collateral: the step fails, naming it.
    inc.signature.as_mut().unwrap().collateral = 0.02;
    match rule_requests(0, sig_step, "x", &inc) {
        Err(StepError::Fail(why)) => assert!(why.contains("above max_collateral 0.50%"), "{why}"),
        _ => panic!("a signature with 2% collateral was installed under a 0.5% limit"),
    }
}

/// A spoofed flood's top sources are the host's ordinary users: a
/// `top_sources` step leaves alone those under its min_share.
#[test]
fn top_sources_under_min_share_are_left_alone() {
    use crate::runbook::engine::StepError;
    let text = "name: x\ntrigger: { families: [any] }\nsteps:\n  - mitigate: { action: rate_limit, pps: 50, scope: top_sources, ttl: 10m }\n  - mitigate: { action: drop, scope: top_sources, min_share: 0.5%, ttl: 10m }\n";
    let rb = parse("rb.yaml", text, Box::new(Fake)).unwrap();
    let (Step::Mitigate(default), Step::Mitigate(low)) = (&rb.steps.0[0], &rb.steps.0[1]) else { panic!() };
    assert_eq!((default.min_share, low.min_share), (0.02, 0.005));
    let mut inc = incident(&[Family::UdpFlood], Severity::High, 100_000.0);
    inc.top_sources = vec![
        TopSource { addr: "198.51.100.1".parse().unwrap(), pps: 20_000.0, share: 0.2, seen_before_attack: false },
        TopSource { addr: "203.0.113.5".parse().unwrap(), pps: 1_000.0, share: 0.01, seen_before_attack: false },
    ];
    let reqs = rule_requests(0, default, "x", &inc).unwrap_or_else(|_| panic!("a rule expected"));
    assert_eq!(reqs.iter().map(|r| r.prefix.as_str()).collect::<Vec<_>>(), ["198.51.100.1/32"]);
    assert_eq!(rule_requests(1, low, "x", &inc).unwrap_or_else(|_| panic!()).len(), 2);
    inc.top_sources.remove(0);
    assert!(matches!(rule_requests(0, default, "x", &inc), Err(StepError::Skip(why)) if why.contains("min_share")));
}

#[test]
fn top_sources_that_were_the_hosts_users_before_the_attack_are_left_alone() {
    use crate::runbook::engine::StepError;
    let text =
        "name: x\ntrigger: { families: [any] }\nsteps:\n  - mitigate: { action: drop, scope: top_sources, ttl: 10m }\n";
    let rb = parse("rb.yaml", text, Box::new(Fake)).unwrap();
    let Step::Mitigate(m) = &rb.steps.0[0] else { panic!() };
    let mut inc = incident(&[Family::UdpFlood], Severity::High, 100_000.0);
    inc.top_sources = vec![
        TopSource { addr: "203.0.113.5".parse().unwrap(), pps: 30_000.0, share: 0.3, seen_before_attack: true },
        TopSource { addr: "198.51.100.1".parse().unwrap(), pps: 20_000.0, share: 0.2, seen_before_attack: false },
    ];
    let reqs = rule_requests(0, m, "x", &inc).unwrap_or_else(|_| panic!("a rule expected"));
    assert_eq!(reqs.iter().map(|r| r.prefix.as_str()).collect::<Vec<_>>(), ["198.51.100.1/32"]);
    inc.top_sources.remove(1);
    assert!(matches!(rule_requests(0, m, "x", &inc), Err(StepError::Skip(why)) if why.contains("its users")));
}

/// Network mode: a trigger names host groups and directions (incoming
/// only unless it says otherwise), and rules are limited to the target.
#[test]
fn triggers_name_host_groups_and_directions() {
    let rb = |t: &str| parse("rb.yaml", &format!("name: x\ntrigger: {t}\nsteps:\n  - note: hi\n"), Box::new(Fake));
    let mut inc = incident(&[Family::UdpFlood], Severity::High, 50_000.0);
    inc.hostgroup = "customers".into();
    assert!(matches(&rb("{ families: [any] }").unwrap(), &inc));
    assert!(matches(&rb("{ families: [any], hostgroups: [customers, vip] }").unwrap(), &inc));
    assert!(!matches(&rb("{ families: [any], hostgroups: [vip] }").unwrap(), &inc));
    inc.direction = crate::targets::Direction::Outgoing;
    assert!(!matches(&rb("{ families: [any] }").unwrap(), &inc), "incoming only by default");
    assert!(matches(&rb("{ families: [any], directions: [outgoing] }").unwrap(), &inc));
    assert!(matches(&rb("{ families: [any], directions: [incoming, outgoing], hostgroups: all }").unwrap(), &inc));
    let e = rb("{ families: [any], hostgroups: [] }").unwrap_err();
    assert!(e.message.contains("trigger.hostgroups is an empty list"), "{e}");
    let e = rb("{ families: [any], directions: [sideways] }").unwrap_err();
    assert!(e.message.contains("unknown variant `sideways`"), "{e}");
}

#[test]
fn runbook_rules_are_limited_to_the_incident_target() {
    use crate::runbook::engine::StepError;
    let text = "name: x\ntrigger: { families: [any] }\nsteps:\n  - mitigate: { action: drop, scope: top_sources, top: 2, ttl: 10m }\n  - mitigate: { action: drop, scope: prefix, prefix: 0.0.0.0/0, dst: 198.51.100.0/25, class: [udp], ttl: 10m }\n";
    let rb = parse("rb.yaml", text, Box::new(Fake)).unwrap();
    let (Step::Mitigate(top), Step::Mitigate(pre)) = (&rb.steps.0[0], &rb.steps.0[1]) else { panic!() };
    let mut inc = incident(&[Family::UdpFlood], Severity::High, 50_000.0);
    // A carpet-bombing incident on a group of two prefixes.
    inc.target = "customers".into();
    inc.target_prefixes = vec!["198.51.100.0/24".parse().unwrap(), "2001:db8:c::/64".parse().unwrap()];
    inc.top_sources = ["203.0.113.7", "203.0.113.8"]
        .iter()
        .map(|a| TopSource { addr: a.parse().unwrap(), pps: 20_000.0, share: 0.4, seen_before_attack: false })
        .collect();
    let reqs = rule_requests(0, top, "x", &inc).ok().expect("requests");
    let got: Vec<(String, String)> = reqs
        .iter()
        .map(|r| r.check().unwrap())
        .map(|c| (c.prefix.to_string(), c.shape.m.dst.unwrap().to_string()))
        .collect();
    // The IPv4 top sources, to the IPv4 prefix only.
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|(_, d)| d == "198.51.100.0/24"), "{got:?}");
    // A step's own destination is narrowed to what of it is the target's.
    let reqs = rule_requests(1, pre, "x", &inc).ok().expect("requests");
    let dsts: Vec<String> = reqs.iter().map(|r| r.check().unwrap().shape.m.dst.unwrap().to_string()).collect();
    assert_eq!(dsts, vec!["198.51.100.0/25"]);
    // ... and refused when it holds none of it.
    inc.target_prefixes = vec!["203.0.113.0/24".parse().unwrap()];
    match rule_requests(1, pre, "x", &inc) {
        Err(StepError::Fail(e)) => assert!(e.contains("holds none of the target customers"), "{e}"),
        _ => panic!("not refused"),
    }
    // An outgoing flood: XDP sees what arrives, not what leaves.
    inc.direction = crate::targets::Direction::Outgoing;
    match rule_requests(0, top, "x", &inc) {
        Err(StepError::Skip(e)) => assert!(e.contains("outgoing flood"), "{e}"),
        _ => panic!("not skipped"),
    }
}

#[test]
fn share_triggers_climb_the_ladder_with_the_attack() {
    use crate::runbook::trigger::matches_at;
    let flowspec = ok("name: fs\ntrigger: { families: [udp_flood], min_bps_share: 0.5 }\nsteps:\n  - bgp: { action: flowspec, ttl: 10m }\n");
    let rtbh = ok("name: bh\ntrigger: { families: [udp_flood], min_bps_share: 90% }\nsteps:\n  - bgp: { action: blackhole, ttl: 1h }\n");
    assert_eq!(rtbh.trigger.min_bps_share, Some(0.9));
    let base = incident(&[Family::UdpFlood], Severity::High, 60_000.0);
    let gbit = Some(1e9);
    let at = |bps: f64| {
        let mut i = base.clone();
        (i.bps, i.peak_bps) = (bps, bps);
        i
    };
    assert!(!matches_at(&flowspec, &at(4e8), gbit) && !matches_at(&rtbh, &at(4e8), gbit), "40%: XDP only");
    assert!(matches_at(&flowspec, &at(6e8), gbit) && !matches_at(&rtbh, &at(6e8), gbit), "60%: FlowSpec");
    assert!(matches_at(&flowspec, &at(9.5e8), gbit) && matches_at(&rtbh, &at(9.5e8), gbit), "95%: both");
    // The peak counts: a share passed once stays passed.
    let mut inc = at(9.5e8);
    inc.bps = 1e8;
    assert!(matches_at(&rtbh, &inc, gbit));
    // No known capacity: never fires (the engine says why, once).
    assert!(!matches_at(&rtbh, &at(9.5e8), None));
    assert!(matches(&ok(GOOD), &at(9.5e8)), "no share trigger: no capacity needed");
    // An updated incident that grew past the share fires the rung then.
    let books = [&flowspec];
    let fired = Fired::default();
    assert!(fired.due_at(&books, EventKind::Updated, &at(4e8), 1_000, gbit).is_empty());
    assert_eq!(fired.due_at(&books, EventKind::Updated, &at(6e8), 2_000, gbit), vec![0]);
    assert!(err("name: x\ntrigger: { families: [any], min_bps_share: 1.5 }\nsteps: [ { note: hi } ]\n")
        .message
        .contains("1.5 is not a share between 0 and 1"));
    let e = err(
        "name: x\ntrigger: { families: [any] }\nsteps:\n  - bgp: { action: blackhole, ttl: 1m, rate_limit: 8000 }\n",
    );
    assert!(e.message.contains("bgp.rate_limit applies to action flowspec only"), "{e}");
}
