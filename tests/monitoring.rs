//! The monitoring kit in `deploy/`: the Prometheus alert rules pass
//! `promtool check rules` and their unit tests (each rule firing and not);
//! the rules and the Grafana dashboard name only metrics the controller
//! exports; and in a lab, a real Prometheus scrapes a detector under a
//! flood: every dashboard query runs there without an error, the panels
//! have data, and the attack and runbook alerts fire (and nothing else).

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use common::{require_root, Controller, Lab};
use detector::lab::{self, prometheus::Prometheus};
use serde_json::Value;

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(path)
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool (`cargo xtask test` installs it: Debian package prometheus)");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn rules_file() -> serde_yaml::Value {
    serde_yaml::from_str(&std::fs::read_to_string(deploy("prometheus/detector-rules.yml")).unwrap()).unwrap()
}

/// Every rule of the rule file, mutably: (alert name, rule).
fn rules_of(file: &mut serde_yaml::Value) -> Vec<(String, &mut serde_yaml::Value)> {
    let groups = file["groups"].as_sequence_mut().expect("groups");
    groups
        .iter_mut()
        .flat_map(|g| g["rules"].as_sequence_mut().expect("rules").iter_mut())
        .map(|r| (r["alert"].as_str().expect("only alerting rules").to_string(), r))
        .collect()
}

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(deploy("grafana/detector.json")).unwrap()).unwrap()
}

/// The dashboard's panels, those inside collapsed rows included; rows left out.
fn panels(d: &Value) -> Vec<&Value> {
    fn walk<'a>(ps: &'a Value, out: &mut Vec<&'a Value>) {
        for p in ps.as_array().into_iter().flatten() {
            if p["type"] == "row" {
                walk(&p["panels"], out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    out
}

/// Each panel's title and its targets' expressions.
fn panel_exprs(d: &Value) -> Vec<(String, Vec<String>)> {
    panels(d)
        .into_iter()
        .map(|p| {
            let exprs = p["targets"].as_array().into_iter().flatten();
            (p["title"].as_str().unwrap().to_string(), exprs.map(|t| t["expr"].as_str().unwrap().to_string()).collect())
        })
        .collect()
}

/// The dashboard's `label_values(SELECTOR, LABEL)` query variables: (name, selector, label).
fn query_variables(d: &Value) -> Vec<(String, String, String)> {
    d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let q = v["definition"].as_str().unwrap();
            let inner = q.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')).expect(q);
            let (selector, label) = inner.rsplit_once(',').expect(q);
            (v["name"].as_str().unwrap().to_string(), selector.trim().to_string(), label.trim().to_string())
        })
        .collect()
}

/// The `detector_*` selectors of a PromQL expression: (metric name, its
/// label matchers as written, without the braces).
fn selectors(expr: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("detector_") {
        let preceded = rest[..at].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let len = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(tail.len());
        let (name, after) = tail.split_at(len);
        rest = after;
        if preceded {
            continue;
        }
        let matchers = after.strip_prefix('{').and_then(|a| a.split_once('}')).map(|(m, _)| m.to_string());
        out.push((name.to_string(), matchers.unwrap_or_default()));
    }
    out
}

#[test]
fn the_alert_rules_pass_promtool_and_each_is_unit_tested_firing_and_not() {
    let rules = deploy("prometheus/detector-rules.yml");
    let (ok, out) = promtool(&["check", "rules", rules.to_str().unwrap()]);
    assert!(ok, "promtool check rules:\n{out}");
    let tests = deploy("prometheus/detector-rules.test.yml");
    let (ok, out) = promtool(&["test", "rules", tests.to_str().unwrap()]);
    assert!(ok, "promtool test rules:\n{out}");

    // (alert, fires) pairs the unit tests check.
    let t: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&tests).unwrap()).unwrap();
    let mut checked = BTreeSet::new();
    for case in t["tests"].as_sequence().unwrap() {
        for a in case["alert_rule_test"].as_sequence().into_iter().flatten() {
            let fires = a["exp_alerts"].as_sequence().is_some_and(|e| !e.is_empty());
            checked.insert((a["alertname"].as_str().unwrap().to_string(), fires));
        }
    }
    for (name, rule) in rules_of(&mut rules_file()) {
        assert!(checked.contains(&(name.clone(), true)), "{name} has no unit test where it fires");
        assert!(checked.contains(&(name.clone(), false)), "{name} has no unit test where it stays quiet");
        let labels = &rule["labels"];
        assert!(
            matches!(labels["severity"].as_str(), Some("critical" | "warning")),
            "{name}: severity must be critical or warning"
        );
        for a in ["summary", "description"] {
            assert!(rule["annotations"][a].as_str().is_some_and(|s| !s.is_empty()), "{name}: no {a}");
        }
    }
}

#[test]
fn the_rules_and_the_dashboard_name_only_metrics_the_controller_exports() {
    let mut registry = prometheus_client::registry::Registry::default();
    let _m = detector::metrics::Metrics::register(&mut registry);
    let _b = detector::bgp::metrics::BgpMetrics::register(&mut registry, &["192.0.2.254".to_string()]);
    let text = detector::metrics::encode(&registry);
    let families: BTreeMap<&str, &str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split_once(' ')).collect();
    assert!(families.contains_key("detector_packets_total"), "{text}");
    let exported = |name: &str| {
        families.contains_key(name)
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name.strip_suffix(s).is_some_and(|base| families.get(base).is_some_and(|t| *t == "histogram")))
    };

    let mut exprs: Vec<(String, String)> = Vec::new();
    for (name, rule) in rules_of(&mut rules_file()) {
        exprs.push((format!("rule {name}"), rule["expr"].as_str().unwrap().to_string()));
    }
    let d = dashboard();
    for (title, es) in panel_exprs(&d) {
        exprs.extend(es.into_iter().map(|e| (format!("panel {title:?}"), e)));
    }
    for (name, selector, _) in query_variables(&d) {
        exprs.push((format!("variable {name}"), selector));
    }
    let mut used = BTreeSet::new();
    for (what, expr) in &exprs {
        for (name, _) in selectors(expr) {
            assert!(exported(&name), "{what} uses {name}, which the controller does not export:\n{expr}");
            used.insert(name);
        }
    }
    assert!(used.len() > 30, "{used:?}");
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_with_its_variables() {
    let d = dashboard();
    let vars = d["templating"]["list"].as_array().unwrap();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no variable {name}"));
    assert_eq!(var("DS_PROMETHEUS")["type"], "datasource");
    assert_eq!(var("DS_PROMETHEUS")["query"], "prometheus");
    for name in ["instance", "iface"] {
        assert_eq!(var(name)["type"], "query", "{name}");
        assert_eq!(var(name)["datasource"]["uid"], "${DS_PROMETHEUS}", "{name}");
        assert_eq!(var(name)["multi"], true, "{name}");
    }
    // Rows and panels, those in collapsed rows included.
    let mut every: Vec<&Value> = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        every.push(p);
        every.extend(p["panels"].as_array().into_iter().flatten());
    }
    let mut ids = BTreeSet::new();
    for p in &every {
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(x + w <= 24 && g["h"].as_u64().unwrap() > 0, "{p}");
        assert!(ids.insert(p["id"].as_u64().unwrap()), "panel id {} used twice", p["id"]);
    }
    let mut titles = BTreeSet::new();
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap();
        assert!(titles.insert(title), "two panels titled {title:?}");
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        let refs: BTreeSet<&str> = targets.iter().map(|t| t["refId"].as_str().unwrap()).collect();
        assert_eq!(refs.len(), targets.len(), "{title}: refIds are unique");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            let expr = t["expr"].as_str().unwrap();
            for (name, matchers) in selectors(expr) {
                assert!(matchers.contains("instance=~\"$instance\""), "{title}: {name} not filtered on $instance");
            }
        }
    }
    for want in
        ["Packets per second by class", "Active incidents by family", "Poll duration", "BGP announcements by type"]
    {
        assert!(titles.contains(want), "no panel {want:?}");
    }
}

/// Low static floors (no warm-up ends in a test), an incident that stays
/// open for the whole test.
const CONFIG: &str = "\
detection:
  hold: 200ms
  quiet: 30s
  baseline: { warmup: 1h }
  families:
    udp_flood: { pps: 1000 }
";

/// One runbook that drops the flood (so drops, rules and runbook panels
/// have data), one whose webhook cannot succeed (DetectorRunbookFailed).
fn runbooks(lab: &Lab) -> String {
    let dir = lab.dir.join("runbooks");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("drop.yaml"),
        "name: drop-flood\ntrigger: { families: [udp_flood] }\nsteps:\n  \
         - mitigate: { action: drop, scope: prefix, prefix: 198.18.0.0/15, ttl: 10m }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("failing.yaml"),
        "name: failing-webhook\ntrigger: { families: [udp_flood] }\nsteps:\n  \
         - webhook: { url: \"http://127.0.0.1:9/dead\", timeout: 1s, retries: 0 }\n",
    )
    .unwrap();
    dir.to_str().unwrap().to_string()
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A value as Grafana puts a multi-value variable into a regex matcher
/// (`=~"$instance"`): regex metacharacters escaped, and the escapes
/// escaped again for the PromQL string.
fn regex_value(v: &str) -> String {
    let mut out = String::new();
    for c in v.chars() {
        if r".+*?()|[]{}^$\".contains(c) {
            out.push_str(r"\\");
        }
        out.push(c);
    }
    out
}

/// An expression with the dashboard's variables and Grafana's built-ins
/// replaced (for a 1 s scrape interval: `$__rate_interval` is four of it).
fn substitute(expr: &str, vars: &BTreeMap<String, String>) -> String {
    let builtins = [("__rate_interval", "4s"), ("__interval", "1s"), ("__range", "5m")];
    let mut all: Vec<(String, String)> = builtins.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    all.extend(vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    // Longest first: `$__interval` must not eat `$__interval_ms`.
    all.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    let mut e = expr.to_string();
    for (k, v) in &all {
        e = e.replace(&format!("${{{k}}}"), v).replace(&format!("${k}"), v);
    }
    assert!(!e.contains('$'), "a variable the test does not know in {expr}");
    e
}

#[test]
fn prometheus_scrapes_a_flooded_detector_every_panel_queries_and_the_attack_alerts_fire() {
    require_root!();
    let t0 = Instant::now();
    let lab = Lab::new().unwrap();
    let cfg = lab.dir.join("detector.yaml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let dir = runbooks(&lab);
    let c = Controller::start(&lab, &["--config", cfg.to_str().unwrap(), "--runbooks", &dir]);

    // The shipped rules, each `for:` cut to a second so that a test of
    // seconds sees them fire (and any that should not, too).
    let mut rules = rules_file();
    for (_, rule) in rules_of(&mut rules) {
        if rule.get("for").is_some() {
            rule["for"] = "1s".into();
        }
    }
    let rules_path = lab.dir.join("detector-rules.yml");
    std::fs::write(&rules_path, serde_yaml::to_string(&rules).unwrap()).unwrap();
    let instance = format!("127.0.0.1:{}", common::METRICS_PORT);
    let prom = Prometheus::builder(&lab.tgt_ns, &lab.dir)
        .scrape(&instance)
        .rule_file(&rules_path)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    // A few scrapes before the flood: the rules tell a series born in
    // their window by it having fewer samples than detector_build_info.
    wait_for("three scrapes of the detector", Duration::from_secs(15), || {
        let r = prom.query("count_over_time(detector_build_info[1m]) >= 3").unwrap();
        (!r.as_array().unwrap().is_empty()).then_some(())
    });
    eprintln!("prometheus ready and scraping after {:?}", t0.elapsed());

    // The variables, as Grafana would list them.
    let d = dashboard();
    let mut vars = BTreeMap::new();
    for (name, selector, label) in query_variables(&d) {
        let values = prom.label_values(&substitute(&selector, &vars), &label).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = if name == "instance" { instance.clone() } else { lab.tgt_if.clone() };
        assert_eq!(values, vec![want.clone()], "variable {name}");
        vars.insert(name, regex_value(&want));
    }

    let flood = lab::DetectorCommand::flood(
        common::detector_bin(),
        &lab,
        &["--kind", "udp", "--rate", "20000", "--duration", "40s", "--engine", "exact"],
    )
    .spawn()
    .unwrap();

    // The attack, its severity, and the runbook whose webhook cannot
    // succeed: firing, and nothing else pending or firing.
    let expected = ["DetectorAttackInProgress", "DetectorSevereAttack", "DetectorRunbookFailed"];
    let alerts = wait_for("the attack and runbook alerts to fire", Duration::from_secs(25), || {
        let alerts = prom.alerts().unwrap();
        let firing: BTreeSet<&str> = alerts.iter().filter(|a| a.state == "firing").map(|a| a.name()).collect();
        expected.iter().all(|e| firing.contains(e)).then_some(alerts)
    });
    eprintln!("alerts firing after {:?}", t0.elapsed());
    for a in &alerts {
        assert!(expected.contains(&a.name()), "unexpected alert {} ({}): {:?}", a.name(), a.state, a.annotations);
        assert_eq!(a.label("job"), Some("detector"), "{a:?}");
        assert_eq!(a.label("instance"), Some(instance.as_str()), "{a:?}");
        match a.name() {
            "DetectorAttackInProgress" => assert_eq!(a.label("family"), Some("udp_flood"), "{a:?}"),
            "DetectorSevereAttack" => {
                assert_eq!(a.label("family"), Some("udp_flood"), "{a:?}");
                assert!(matches!(a.label("incident_severity"), Some("high" | "critical")), "{a:?}");
            }
            _ => assert_eq!(a.label("runbook"), Some("failing-webhook"), "{a:?}"),
        }
        assert!(a.annotations.get("summary").is_some_and(|s| !s.contains("<no value>")), "{a:?}");
    }
    // Every rule evaluates against the real series without an error (a
    // many-to-many match, say).
    for g in prom.rules().unwrap().as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            assert_eq!(r["health"], "ok", "rule {}: {}", r["name"], r["lastError"]);
        }
    }

    // Metrics with an `iface` label: the panels must filter them on $iface.
    let with_iface: BTreeSet<String> = prom
        .query("group by (__name__) ({__name__=~\"detector_.+\", iface!=\"\"})")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["metric"]["__name__"].as_str().unwrap().to_string())
        .collect();
    assert!(with_iface.contains("detector_packets_total"), "{with_iface:?}");

    // Every panel's every query, as Grafana would send it: never an
    // error, and data on every panel but the BGP ones (no bgp: section
    // here). Rates need two scrapes of a series: the rule's counters, say,
    // appear only once the runbook has dropped the flood for a moment.
    for (title, exprs) in panel_exprs(&d) {
        for expr in &exprs {
            for (name, matchers) in selectors(expr) {
                if with_iface.contains(&name) {
                    assert!(matchers.contains("iface=~\"$iface\""), "{title}: {name} not filtered on $iface");
                }
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut report = Vec::new();
        let mut empty = Vec::new();
        for (title, exprs) in panel_exprs(&d) {
            let mut series = 0;
            for expr in &exprs {
                let q = substitute(expr, &vars);
                let r = prom.query(&q).unwrap_or_else(|e| panic!("panel {title:?}: {e}\n{q}"));
                series += r.as_array().map_or(1, Vec::len);
            }
            report.push(format!("{series:>4}  {title}"));
            if series == 0 && !title.starts_with("BGP") {
                empty.push(title);
            }
        }
        if empty.is_empty() || Instant::now() > deadline {
            eprintln!("series per panel during the flood:\n{}", report.join("\n"));
            assert!(empty.is_empty(), "panels without data during the flood: {empty:?}");
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("every panel has data after {:?}", t0.elapsed());

    // The traffic panel shows the flood in its class.
    let (_, exprs) = panel_exprs(&d).into_iter().find(|(t, _)| t == "Packets per second by class").unwrap();
    let r = prom.query(&substitute(&exprs[0], &vars)).unwrap();
    let udp = r
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["metric"]["class"] == "udp")
        .map(|s| s["value"][1].as_str().unwrap().parse::<f64>().unwrap())
        .unwrap_or(0.0);
    assert!(udp > 1000.0, "udp at {udp} pps:\n{r}");

    let out = flood.stop(libc::SIGTERM, Duration::from_secs(10)).unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(c.log_text().contains("runbook loaded"), "{}", c.log_text());
    eprintln!("done after {:?}", t0.elapsed());
}
