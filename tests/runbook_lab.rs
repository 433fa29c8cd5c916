//! Runbooks end to end: a UDP flood in a lab fires a runbook that
//! rate-limits the top sources in XDP, notifies Slack, PagerDuty and a
//! signed webhook (a local receiver stands in for them), notes and
//! acknowledges the incident; a dead and a slow endpoint fail on record
//! while the rest carries on; a dry run changes nothing; at resolution
//! PagerDuty is resolved and the rules are removed; the history has it all.

mod common;

use std::time::{Duration, Instant};

use common::{cli_json, flood_in_background as flood, require_root, Controller, Lab};
use detector::{clock::now_ms, lab::receiver::Receiver};
use serde_json::Value;

/// Waits until `cond` holds of what the receiver got (20 s at most).
fn wait_for(rx: &Receiver, what: &str, cond: impl Fn(&Receiver) -> bool, c: &Controller) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond(rx) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}; got {:#?}\nlog:\n{}", rx.all(), c.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

const CONFIG: &str = "\
detection:
  hold: 200ms
  quiet: 1s
  baseline: { warmup: 1h }
  families:
    udp_flood: { pps: 3000 }
";

const PORT: u16 = 18080;

fn runbooks(lab: &Lab) -> String {
    let dir = lab.dir.join("runbooks");
    std::fs::create_dir_all(&dir).unwrap();
    let secret = |name: &str, value: &str| {
        let p = lab.dir.join(name);
        std::fs::write(&p, value).unwrap();
        p.to_str().unwrap().to_string()
    };
    let pd = secret("pd-key", "R0UT1NG");
    let hmac = secret("hook-secret", "hook-s3cret");
    let base = format!("http://127.0.0.1:{PORT}");
    std::fs::write(
        dir.join("udp.yaml"),
        format!(
            r#"name: udp-auto
trigger: {{ families: [udp_flood] }}
steps:
  - mitigate: {{ action: rate_limit, scope: top_sources, top: 10, class: udp, pps: 50, ttl: 10m }}
  - notify: {{ channel: slack, url: "{base}/slack", message: "UDP flood on {{{{ node }}}}: {{{{ pps | round | int }}}} pps" }}
  - notify: {{ channel: pagerduty, url: "{base}/pd", routing_key: "${{file:{pd}}}" }}
  - webhook: {{ url: "{base}/hook", secret: "${{file:{hmac}}}" }}
  - note: "Rate-limited {{{{ top_sources | length }}}} sources to 50/s"
  - incident: {{ status: acknowledged }}
"#
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("failing.yaml"),
        format!(
            r#"name: failing-endpoints
trigger: {{ families: [any] }}
steps:
  - webhook: {{ url: "http://127.0.0.1:9/dead", timeout: 1s, retries: 1 }}
  - webhook: {{ url: "{base}/slow", timeout: 500ms, retries: 0 }}
  - note: "after the failures"
"#
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("dry.yaml"),
        r#"name: dry
mode: dry_run
trigger: { families: [any] }
steps:
  - mitigate: { action: drop, scope: prefix, prefix: 198.18.0.0/16, ttl: 10m }
  - incident: { status: escalated }
"#,
    )
    .unwrap();
    dir.to_str().unwrap().to_string()
}

#[test]
fn a_udp_flood_fires_the_runbook_end_to_end() {
    require_root!();
    let lab = Lab::new().unwrap();
    let rx = Receiver::start(&lab.tgt_ns, PORT).unwrap();
    let cfg = lab.dir.join("detector.yaml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let dir = runbooks(&lab);
    let c = Controller::start(&lab, &["--config", cfg.to_str().unwrap(), "--runbooks", &dir]);
    assert!(c.log_text().contains("runbook loaded"), "{}", c.log_text());

    let f = flood(
        &lab,
        &[
            "--kind",
            "udp",
            "--rate",
            "100000",
            "--duration",
            "4s",
            "--src",
            "198.18.0.0/24",
            "--sources",
            "20",
            "--spread",
            "seq",
            "--engine",
            "fast",
        ],
    );
    wait_for(
        &rx,
        "slack, pagerduty and the webhook",
        |r| !r.on("/slack").is_empty() && !r.on("/pd").is_empty() && !r.on("/hook").is_empty(),
        &c,
    );

    // Slack: its incoming-webhook shape, the template rendered.
    let slack = rx.on("/slack")[0].json();
    assert!(slack["text"].as_str().unwrap().starts_with("UDP flood on lab: "), "{slack}");
    // PagerDuty Events API v2: trigger, keyed by the incident.
    let pd = rx.on("/pd")[0].json();
    assert_eq!(pd["event_action"], "trigger");
    assert_eq!(pd["routing_key"], "R0UT1NG");
    let incident = pd["dedup_key"].as_str().unwrap().to_string();
    assert!(incident.starts_with("lab-"), "{pd}");
    // The webhook: the attack context, signed.
    let hook = &rx.on("/hook")[0];
    let body = hook.json();
    assert_eq!(body["event"], "attack_start");
    assert_eq!(body["incident_id"], incident.as_str());
    assert_eq!(body["runbook"], "udp-auto");
    assert_eq!(body["dry_run"], false);
    assert!(body["families"].as_array().unwrap().iter().any(|f| f == "udp_flood"), "{body}");
    let sig = hook.header("x-detector-signature").expect("signed");
    assert!(detector::runbook::payload::verify(b"hook-s3cret", hook.body.as_bytes(), sig), "bad signature {sig}");

    // The rate limit is in the XDP maps, from the runbook, and drops.
    let deadline = Instant::now() + Duration::from_secs(10);
    let rules = loop {
        let v = cli_json(&c, &["rules", "list"]);
        let rules: Vec<Value> = v["rules"].as_array().unwrap().clone();
        if !rules.is_empty() && rules.iter().any(|r| r["dropped_packets"].as_u64().unwrap_or(0) > 0) {
            break rules;
        }
        assert!(Instant::now() < deadline, "no runbook rule drops: {v}\n{}", c.log_text());
        std::thread::sleep(Duration::from_millis(200));
    };
    for r in &rules {
        assert_eq!(r["origin"]["runbook"], "udp-auto", "{r}");
        assert_eq!(r["origin"]["incident"], incident.as_str(), "{r}");
        assert_eq!(r["action"]["kind"], "rate_limit", "{r}");
        let age_s = (now_ms() - r["created_ms"].as_u64().unwrap()) as f64 / 1000.0;
        let passed = r["passed_packets"].as_u64().unwrap() as f64;
        assert!(passed <= 50.0 * age_s * 1.1 + 10.0, "{} admitted {passed} in {age_s:.1}s: {r}", r["prefix"]);
    }
    assert!(f.join().unwrap().status.success());

    // Resolution: PagerDuty resolves the same key, the webhook gets
    // attack_end, the rules go.
    wait_for(&rx, "the resolve", |r| r.on("/pd").iter().any(|p| p.json()["event_action"] == "resolve"), &c);
    let resolve = rx.on("/pd").into_iter().find(|p| p.json()["event_action"] == "resolve").unwrap().json();
    assert_eq!(resolve["dedup_key"], incident.as_str());
    wait_for(&rx, "attack_end", |r| r.on("/hook").iter().any(|h| h.json()["event"] == "attack_end"), &c);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cli_json(&c, &["rules", "list"])["rules"].as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "runbook rules still in force after resolution");
        std::thread::sleep(Duration::from_millis(200));
    }

    // The timeline: the note and the status change.
    let inc = cli_json(&c, &["incidents", &incident]);
    let timeline = inc["timeline"].as_array().unwrap();
    assert!(
        timeline
            .iter()
            .any(|e| e["kind"] == "note_added" && e["detail"].as_str().unwrap().starts_with("Rate-limited ")),
        "{inc}"
    );
    assert!(
        timeline
            .iter()
            .any(|e| e["kind"] == "status_changed" && e["detail"].as_str().unwrap().contains("acknowledged")),
        "{inc}"
    );

    // The history: every execution, every step.
    let h = cli_json(&c, &["history", "--incident", &incident]);
    let ex = h["executions"].as_array().unwrap();
    let find = |rb: &str, trigger: &str| {
        ex.iter()
            .find(|e| e["runbook"] == rb && e["trigger"] == trigger)
            .unwrap_or_else(|| panic!("no {rb}/{trigger} in {h}"))
    };
    let start = find("udp-auto", "opened");
    assert_eq!(start["outcome"], "ok", "{start}");
    let kinds: Vec<&str> = start["steps"].as_array().unwrap().iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["mitigate", "notify", "notify", "webhook", "note", "incident"]);
    assert!(start["file_hash"].as_str().unwrap().len() == 64);
    let failing = find("failing-endpoints", "opened");
    assert_eq!(failing["outcome"], "failed");
    let steps = failing["steps"].as_array().unwrap();
    assert_eq!(steps[0]["outcome"], "failed");
    assert!(steps[0]["error"].as_str().unwrap().contains("127.0.0.1:9"), "{failing}");
    assert_eq!(steps[1]["outcome"], "failed");
    assert!(steps[1]["error"].as_str().unwrap().contains("timed out"), "{failing}");
    assert_eq!(steps[2]["outcome"], "ok", "a failed step does not stop the next: {failing}");
    let dry = find("dry", "opened");
    assert_eq!(dry["outcome"], "dry_run");
    assert!(
        dry["steps"][0]["detail"].as_str().unwrap().contains("would install 1 rule(s): drop 198.18.0.0/16"),
        "{dry}"
    );
    assert!(dry["steps"][1]["detail"].as_str().unwrap().contains("would set the status to escalated"), "{dry}");
    assert!(
        !h.to_string().contains("R0UT1NG") && !h.to_string().contains("hook-s3cret"),
        "secrets stay out of the history"
    );
    let m = c.metrics();
    assert!(common::sample(&m, "detector_runbook_executions_total{runbook=\"udp-auto\",outcome=\"ok\"}") >= 1.0, "{m}");
    assert!(
        common::sample(&m, "detector_runbook_executions_total{runbook=\"failing-endpoints\",outcome=\"failed\"}")
            >= 1.0
    );
    let (good, said) = common::promtool_check(&m);
    assert!(good, "{said}");
}

#[test]
fn runbooks_reload_on_change_and_on_sighup_and_a_broken_file_keeps_its_last_good_version() {
    require_root!();
    let lab = Lab::new().unwrap();
    let dir = lab.dir.join("rb");
    std::fs::create_dir_all(&dir).unwrap();
    let book = |name: &str, family: &str| {
        format!("name: {name}\ntrigger: {{ families: [{family}] }}\nsteps: [ {{ note: hi }} ]\n")
    };
    std::fs::write(dir.join("a.yaml"), book("a", "udp_flood")).unwrap();
    let c = Controller::start(&lab, &["--runbooks", dir.to_str().unwrap()]);
    c.metrics_until("one runbook", |m| common::sample(m, "detector_runbooks_loaded") == 1.0);

    // A new file is picked up by itself.
    std::fs::write(dir.join("b.yaml"), book("b", "syn_flood")).unwrap();
    c.metrics_until("two runbooks", |m| common::sample(m, "detector_runbooks_loaded") == 2.0);

    // A broken edit is reported, and the version before keeps running.
    std::fs::write(dir.join("a.yaml"), book("a", "udp_flod")).unwrap();
    let m = c.metrics_until("the refused file", |m| common::sample(m, "detector_runbook_load_errors") == 1.0);
    assert_eq!(common::sample(&m, "detector_runbooks_loaded"), 2.0, "{}", c.log_text());
    let log = c.log_text();
    assert!(log.contains("a.yaml:2:") && log.contains("unknown family 'udp_flod'"), "{log}");
    assert!(log.contains("keeping the version loaded before"), "{log}");

    // SIGHUP reloads too.
    unsafe { libc::kill(c.child.as_ref().unwrap().id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !c.log_text().contains("SIGHUP: reloading the runbooks") {
        assert!(Instant::now() < deadline, "{}", c.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::remove_file(dir.join("b.yaml")).unwrap();
    c.metrics_until("b gone", |m| common::sample(m, "detector_runbooks_loaded") == 1.0);
}

/// The demo's severity scale: 100k pps over a 3,000 pps floor is critical,
/// so every shipped runbook that covers UDP floods fires.
const SHIPPED_CONFIG: &str = "\
detection:
  hold: 200ms
  quiet: 1s
  baseline: { warmup: 1h }
  severity:
    ratios: { medium: 2, high: 5, critical: 10 }
    pps: { medium: 100000, high: 1000000, critical: 5000000 }
  families:
    udp_flood: { pps: 3000 }
";

#[test]
fn the_shipped_runbooks_answer_a_udp_flood() {
    require_root!();
    let lab = Lab::new().unwrap();
    let (c, rx) = common::shipped_runbooks(&lab, SHIPPED_CONFIG, PORT, "shipped-s3cret");
    // Peacetime: ordinary traffic for the signature's collateral to be
    // measured against (without it the signature step refuses to guess).
    common::send(
        &lab,
        &["--kind", "udp", "--count", "4000", "--rate", "2000", "--src", "203.0.113.5", "--dst-port", "5353"],
    );

    let f = flood(
        &lab,
        &[
            "--kind",
            "udp",
            "--rate",
            "100000",
            "--duration",
            "3s",
            "--src",
            "198.18.0.0/24",
            "--sources",
            "10",
            "--spread",
            "seq",
            "--engine",
            "fast",
        ],
    );
    wait_for(
        &rx,
        "both Slack messages, PagerDuty and the webhook",
        |r| r.on("/slack").len() >= 2 && !r.on("/pd").is_empty() && !r.on("/hook").is_empty(),
        &c,
    );
    let texts: Vec<String> = rx.on("/slack").iter().map(|s| s.json()["text"].as_str().unwrap().to_string()).collect();
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("UDP flood on lab (") && t.contains("dropping its signature (udp dport 9) for 10m")),
        "{texts:?}"
    );
    assert!(texts.iter().any(|t| t.starts_with("udp_flood on lab (")), "{texts:?}");
    let pd = rx.on("/pd")[0].json();
    assert_eq!(
        (pd["event_action"].as_str(), pd["payload"]["severity"].as_str()),
        (Some("trigger"), Some("critical")),
        "{pd}"
    );
    let hook = &rx.on("/hook")[0];
    assert!(detector::runbook::payload::verify(
        b"shipped-s3cret",
        hook.body.as_bytes(),
        hook.header("x-detector-signature").unwrap()
    ));

    // udp-flood-auto-response drops the flood by its signature, on every
    // source, and installs nothing per source.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = cli_json(&c, &["rules", "list"]);
        let rules = v["rules"].as_array().unwrap();
        if rules.len() == 1 && rules[0]["dropped_packets"].as_u64().unwrap() > 10_000 {
            let s = &rules[0];
            assert_eq!((s["prefix"].as_str(), s["dport"].as_u64()), (Some("0.0.0.0/0"), Some(9)), "{s}");
            assert_eq!(
                (s["origin"]["runbook"].as_str(), s["origin"]["step"].as_u64()),
                (Some("udp-flood-auto-response"), Some(0)),
                "{s}"
            );
            assert_eq!(s["action"]["kind"], "drop", "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "{v}\n{}", c.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(f.join().unwrap().status.success());
    wait_for(&rx, "PagerDuty's resolve", |r| r.on("/pd").iter().any(|p| p.json()["event_action"] == "resolve"), &c);
    let incident = pd["dedup_key"].as_str().unwrap().to_string();
    // The history holds executions from their start (`running`): wait for
    // the resolve side to finish.
    let deadline = Instant::now() + Duration::from_secs(10);
    let h = loop {
        let h = cli_json(&c, &["history", "--incident", &incident]);
        if h["executions"].as_array().unwrap().iter().all(|e| e["outcome"] != "running") {
            break h;
        }
        assert!(Instant::now() < deadline, "executions still running: {h}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let runbooks: Vec<&str> =
        h["executions"].as_array().unwrap().iter().map(|e| e["runbook"].as_str().unwrap()).collect();
    for rb in ["udp-flood-auto-response", "notify-every-attack", "pagerduty-critical"] {
        assert!(runbooks.contains(&rb), "{rb} not in {h}");
    }
    assert!(!runbooks.contains(&"syn-flood-auto-response"), "a UDP flood does not fire the SYN runbook");
    assert!(h["executions"].as_array().unwrap().iter().all(|e| e["outcome"] == "ok"), "{h}");
}

#[test]
fn rules_a_runbook_installed_are_removed_at_resolution_even_after_a_restart() {
    require_root!();
    let lab = Lab::new().unwrap();
    let dir = lab.dir.join("rb");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("drop.yaml"),
        "name: drop-top\ntrigger: { families: [udp_flood] }\nsteps:\n  - mitigate: { action: drop, scope: top_sources, top: 5, class: udp, ttl: 1h }\n",
    )
    .unwrap();
    let cfg = lab.dir.join("detector.yaml");
    // A long quiet, so the incident is still open across the restart.
    std::fs::write(&cfg, CONFIG.replace("quiet: 1s", "quiet: 4s")).unwrap();
    let args = ["--config", cfg.to_str().unwrap(), "--runbooks", dir.to_str().unwrap()];
    let mut c = Controller::start(&lab, &args);
    let f = flood(
        &lab,
        &[
            "--kind",
            "udp",
            "--rate",
            "50000",
            "--duration",
            "1500ms",
            "--src",
            "198.18.0.0/24",
            "--sources",
            "5",
            "--spread",
            "seq",
            "--engine",
            "fast",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while cli_json(&c, &["rules", "list"])["rules"].as_array().unwrap().len() < 5 {
        assert!(Instant::now() < deadline, "{}", c.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(f.join().unwrap().status.success());
    // Restart while the incident is open: the runbook's rules stay (keep).
    assert!(c.stop_with(libc::SIGTERM).success());
    let c = Controller::start(&lab, &args);
    assert_eq!(cli_json(&c, &["rules", "list"])["rules"].as_array().unwrap().len(), 5);
    // The resumed incident resolves; the new controller removes the rules.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cli_json(&c, &["rules", "list"])["rules"].as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "rules left after resolution:\n{}", c.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Its step is recorded as it finishes, just after the rules go.
    let deadline = Instant::now() + Duration::from_secs(5);
    let resolved = loop {
        let h = cli_json(&c, &["history", "--runbook", "drop-top"]);
        let done = h["executions"].as_array().unwrap().iter().find(|e| e["trigger"] == "resolved").cloned();
        match done {
            Some(e) if e["steps"][0]["outcome"] != "pending" => break e,
            _ => assert!(Instant::now() < deadline, "no finished resolve run in {h}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(resolved["steps"][0]["detail"].as_str().unwrap().starts_with("removed 5 rule(s)"), "{resolved}");
}

#[test]
fn a_runbook_does_not_fire_again_for_an_incident_resumed_after_a_restart() {
    require_root!();
    let lab = Lab::new().unwrap();
    let port = PORT + 1;
    let rx = Receiver::start(&lab.tgt_ns, port).unwrap();
    let dir = lab.dir.join("rb-once");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("page.yaml"),
        format!(
            "name: page-once\ntrigger: {{ families: [udp_flood] }}\ncooldown: 10m\nsteps:\n  - webhook: {{ url: \"http://127.0.0.1:{port}/page\" }}\n"
        ),
    )
    .unwrap();
    let cfg = lab.dir.join("detector.yaml");
    // A long quiet, so the incident is still open across the restart.
    std::fs::write(&cfg, CONFIG.replace("quiet: 1s", "quiet: 6s")).unwrap();
    let args = ["--config", cfg.to_str().unwrap(), "--runbooks", dir.to_str().unwrap()];
    let mut c = Controller::start(&lab, &args);
    let f = flood(&lab, &["--kind", "udp", "--rate", "20000", "--duration", "1500ms"]);
    wait_for(&rx, "the page", |rx| rx.on("/page").len() == 1, &c);
    assert!(f.join().unwrap().status.success());
    // Restart while the incident is open.
    assert!(c.stop_with(libc::SIGTERM).success());
    let c = Controller::start(&lab, &args);
    assert!(c.log_text().contains("resuming an incident open at the last stop"), "{}", c.log_text());
    // The resumed incident is seen every second ('updated'); within the
    // cooldown, the runbook must not page again.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(rx.on("/page").len(), 1, "paged again after the restart:\n{}", c.log_text());
    let h = cli_json(&c, &["history", "--runbook", "page-once"]);
    let opened: Vec<&Value> =
        h["executions"].as_array().unwrap().iter().filter(|e| e["trigger"] != "resolved").collect();
    assert_eq!(opened.len(), 1, "{h}");
    assert_eq!(opened[0]["outcome"], "ok", "{h}");
}
