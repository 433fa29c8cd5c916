//! What the operator and the state directory hand the detector, mutated:
//! the configuration, every shipped runbook, the rule requests of the API
//! and the CLI, the saved rules (`rules.json`), the saved BGP
//! announcements and the saved baselines, with each value in turn
//! replaced by one that is out of range, of the wrong kind, huge, negative,
//! empty or odd, and each key in turn dropped. Whatever the value, the
//! input is taken or refused with an error (a file's names the file),
//! never a panic; a rule taken is planned into its kernel slots. Pure (no
//! kernel, no root): the parsers and the one check of each concept after
//! them.

use std::panic::{catch_unwind, AssertUnwindSafe};

use detector::{
    bgp::{
        announce::{Announcement, FlowAction, FlowSpecRule, TcpFlags, BLACKHOLE},
        check::Scope,
        gobgp::paths::{from_path, to_path},
        plan::{Desired, Entry, Planner, Saved as BgpSaved},
    },
    clock::Clock,
    config::ConfigFile,
    detect::engine::{Detector, SavedBaselines},
    mitigate::{
        rule::{Origin, RuleRequest},
        ruleset::{AllowSource, Limits, RuleSet, Saved},
    },
    networks::Protected,
    runbook::{load, secret::Unresolved},
    span::Span,
};
use serde_json::json;
use serde_yaml::Value;

/// Values each scalar is replaced by.
const HOSTILE: &[&str] = &[
    "0",
    "-1",
    "1",
    "4294967296",
    "18446744073709551616",
    "99999999999999999999999999",
    "-9223372036854775809",
    "1e400",
    "-1e400",
    "NaN",
    ".nan",
    ".inf",
    "-.inf",
    "0.0000001",
    "''",
    "' '",
    "~",
    "true",
    "[]",
    "{}",
    "[1, 2]",
    "{a: 1}",
    "0s",
    "0ms",
    "1ns",
    "99999999999999d",
    "18446744073709551615s",
    "584942417355y",
    "-5m",
    "1.5h",
    "10Q",
    "0%",
    "100%",
    "101%",
    "-1%",
    "1e3%",
    "nan%",
    "0bit",
    "1Tbit",
    "99999999999Pbit",
    "18446744073709551615",
    "0/0",
    "::/129",
    "0.0.0.0/33",
    "256.0.0.1",
    "10.0.0.0/-1",
    "::ffff:1.2.3.4/96",
    "0.0.0.0/0",
    "::/0",
    "fe80::1%eth0",
    "999999999:999999999",
    "65535:666:1",
    "a:b",
    "x",
    "\"\\u0000\"",
    "\"\\u202e\"",
    "\"é\"",
    "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\
     aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"",
    "${env:NOPE}",
    "${file:/nonexistent}",
    "${",
    "'{{'",
    "'{{ incident.nope }}'",
    "'{% if %}'",
];

/// A configuration with every section.
const CONFIG: &str = r#"
detection:
  hold: 200ms
  quiet: 10s
  top_sources: 10
  top_ports: 5
  baseline: { window: 10m, warmup: 5m, margin_sigmas: 4, margin_ratio: 3 }
  severity:
    ratios: { medium: 2, high: 5, critical: 10 }
    pps: { medium: 100000, high: 1000000, critical: 5000000 }
  families:
    udp_flood: { pps: 100000, bps: 1Gbit }
    syn_flood: { pps: 10000 }
    http_flood: { pps: 5000, new_connections_pps: 5000 }
mitigation:
  max_rules: 1024
  max_allow: 1024
  max_rate_limited_sources: 65536
  allowlist: [192.0.2.0/24, 2001:db8::/32]
  on_stop: keep
capture:
  enabled: true
  pre_attack_packets: 1000
  packets_per_incident: 10000
  snaplen: 256
  retention: 30d
  max_total_bytes: 1GiB
networks:
  hostgroups:
    - name: customers
      prefixes: [198.51.100.0/24, 2001:db8:c::/48]
      families: { udp_flood: { pps: 30000, bps: 200Mbit } }
      total: { udp_flood: { pps: 200000 } }
      outgoing: { udp_flood: { pps: 20000 } }
    - name: vip
      prefixes: [198.51.100.10/32]
bgp:
  local_as: 64512
  router_id: 192.0.2.1
  neighbors:
    - { address: 192.0.2.254, remote_as: 65000, description: transit A }
  communities: { blackhole: '65535:666', extra: [] }
  limits: { max_announcements: 100, max_changes_per_minute: 60, flowspec_min_v4: 24, flowspec_min_v6: 48 }
  dry_run: false
  gobgpd: { api_port: 50051, listen_port: 179 }
interfaces:
  eth0: { capacity_bps: 10G }
"#;

/// Every scalar's path in `v` (map keys and sequence indexes).
fn scalars(v: &Value, path: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    match v {
        Value::Mapping(m) => {
            for (k, child) in m {
                path.push(k.clone());
                scalars(child, path, out);
                path.pop();
            }
        }
        Value::Sequence(s) => {
            for (i, child) in s.iter().enumerate() {
                path.push(Value::from(i as u64));
                scalars(child, path, out);
                path.pop();
            }
        }
        Value::Tagged(t) => scalars(&t.value, path, out),
        _ => out.push(path.clone()),
    }
    if matches!(v, Value::Mapping(_) | Value::Sequence(_)) && !path.is_empty() {
        out.push(path.clone());
    }
}

fn at<'a>(v: &'a mut Value, path: &[Value]) -> &'a mut Value {
    path.iter().fold(v, |v, k| match (v, k) {
        (Value::Sequence(s), Value::Number(n)) => &mut s[n.as_u64().unwrap() as usize],
        (Value::Mapping(m), k) => m.get_mut(k).unwrap(),
        (Value::Tagged(t), _) => &mut t.value,
        _ => unreachable!(),
    })
}

/// Removes the last key of `path` from its parent.
fn drop_key(v: &mut Value, path: &[Value]) {
    let (last, parent) = path.split_last().unwrap();
    match at(v, parent) {
        Value::Mapping(m) => {
            m.remove(last);
        }
        Value::Sequence(s) => {
            s.remove(last.as_u64().unwrap() as usize);
        }
        _ => {}
    }
}

/// Every variant of `seed`: each scalar (and each map or list) replaced by
/// each hostile value, and each key dropped.
fn variants(seed: &str) -> Vec<(String, String)> {
    let doc: Value = serde_yaml::from_str(seed).unwrap();
    let mut paths = Vec::new();
    scalars(&doc, &mut Vec::new(), &mut paths);
    let mut out = Vec::new();
    for p in &paths {
        let name = p.iter().map(|k| serde_yaml::to_string(k).unwrap().trim().to_string()).collect::<Vec<_>>().join(".");
        for h in HOSTILE {
            let mut d = doc.clone();
            *at(&mut d, p) = serde_yaml::from_str(h).unwrap_or_else(|_| Value::String((*h).into()));
            let text = serde_yaml::to_string(&d).unwrap_or_else(|e| panic!("{name} = {h}: {e}: {:?}", at(&mut d, p)));
            out.push((format!("{name} = {h}"), text));
        }
        let mut d = doc.clone();
        drop_key(&mut d, p);
        out.push((format!("{name} dropped"), serde_yaml::to_string(&d).unwrap()));
    }
    out
}

/// Runs `parse` over every variant; the panics, named.
fn panics(seed: &str, parse: impl Fn(&str)) -> Vec<String> {
    caught(variants(seed), |text| parse(&text))
}

/// Runs `f` over each named input, the panic hook silenced (one test at a
/// time: the hook is the process's); the panics, named.
fn caught<T>(inputs: Vec<(String, T)>, f: impl Fn(T)) -> Vec<String> {
    static HOOK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = HOOK.lock().unwrap_or_else(|p| p.into_inner());
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut bad = Vec::new();
    for (what, input) in inputs {
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(input))) {
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            bad.push(format!("{what}: {}", msg.unwrap_or_default()));
        }
    }
    std::panic::set_hook(hook);
    bad
}

#[test]
fn a_mutated_configuration_parses_or_is_refused_never_a_panic() {
    ConfigFile::parse("detector.yaml", CONFIG).expect("the seed parses");
    let bad = panics(CONFIG, |text| {
        if let Err(e) = ConfigFile::parse("detector.yaml", text) {
            assert!(e.to_string().starts_with("detector.yaml"), "{e}");
        }
    });
    assert!(bad.is_empty(), "{} panics:\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn every_shipped_runbook_mutated_parses_or_is_refused_never_a_panic() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../runbooks");
    let mut files = Vec::new();
    for sub in [dir.to_string(), format!("{dir}/upstream")] {
        for e in std::fs::read_dir(&sub).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                files.push(p);
            }
        }
    }
    assert!(files.len() >= 6, "{files:?}");
    let mut bad = Vec::new();
    for f in files {
        let seed = std::fs::read_to_string(&f).unwrap();
        load::parse("rb.yaml", &seed, Box::new(Unresolved)).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for p in panics(&seed, |text| {
            if let Err(e) = load::parse("rb.yaml", text, Box::new(Unresolved)) {
                assert!(e.to_string().starts_with("rb.yaml"), "{e}");
            }
        }) {
            bad.push(format!("{}: {p}", f.display()));
        }
    }
    assert!(bad.is_empty(), "{} panics:\n{}", bad.len(), bad.join("\n"));
}

/// JSON values each value of a request or a saved rule is replaced by.
fn hostile_json() -> Vec<serde_json::Value> {
    let mut v = vec![
        json!(0),
        json!(-1),
        json!(1),
        json!(65535),
        json!(65536),
        json!(4294967296u64),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1e300),
        json!(-1e300),
        json!(0.5),
        json!(null),
        json!(true),
        json!([]),
        json!({}),
        json!([1]),
        json!({"a": 1}),
        json!("x".repeat(5000)),
    ];
    for s in [
        "",
        " ",
        "x",
        "0",
        "-1",
        "99999999999999999999",
        "0.0.0.0/33",
        "::/129",
        "256.1.1.1",
        "10.0.0.0/-1",
        "0.0.0.0/0",
        "::/0",
        "1.2.3.4",
        "::ffff:1.2.3.4/128",
        "fe80::1%eth0",
        "1-0",
        "0-65535",
        "65535-1",
        "70000",
        "1-",
        "-",
        "-5",
        "0-0",
        "255-0",
        "udp,tcp",
        "tcp",
        "any",
        "drop",
        "rate_limit",
        "syn_cookies",
        "r0",
        "r18446744073709551615",
        "a0",
        "a1",
        "operator",
        "host",
        "config",
        "runbook",
        "\u{0}",
        "é",
        "\u{202e}",
    ] {
        v.push(json!(s));
    }
    v
}

/// Every path to a value in `v` (object keys and array indexes), the
/// containers' too.
fn json_paths(v: &serde_json::Value, path: &mut Vec<serde_json::Value>, out: &mut Vec<Vec<serde_json::Value>>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, child) in m {
                path.push(json!(k));
                json_paths(child, path, out);
                path.pop();
            }
        }
        serde_json::Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                path.push(json!(i));
                json_paths(child, path, out);
                path.pop();
            }
        }
        _ => {}
    }
    if !path.is_empty() {
        out.push(path.clone());
    }
}

fn json_at<'a>(v: &'a mut serde_json::Value, path: &[serde_json::Value]) -> &'a mut serde_json::Value {
    path.iter().fold(v, |v, k| match k {
        serde_json::Value::Number(n) => &mut v[n.as_u64().unwrap() as usize],
        serde_json::Value::String(s) => &mut v[s.as_str()],
        _ => unreachable!(),
    })
}

/// Every variant of `seed`: each value replaced by each hostile one, and
/// each key (or element) dropped.
fn json_variants(seed: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    let mut paths = Vec::new();
    json_paths(seed, &mut Vec::new(), &mut paths);
    let hostile = hostile_json();
    let mut out = Vec::new();
    for p in &paths {
        let name = p.iter().map(|k| k.to_string().trim_matches('"').to_string()).collect::<Vec<_>>().join(".");
        for h in &hostile {
            let mut d = seed.clone();
            *json_at(&mut d, p) = h.clone();
            let shown: String = h.to_string().chars().take(40).collect();
            out.push((format!("{name} = {shown}"), d));
        }
        let (last, parent) = p.split_last().unwrap();
        let mut d = seed.clone();
        match (json_at(&mut d, parent), last) {
            (serde_json::Value::Object(m), serde_json::Value::String(k)) => {
                m.remove(k);
            }
            (serde_json::Value::Array(a), serde_json::Value::Number(i)) => {
                a.remove(i.as_u64().unwrap() as usize);
            }
            _ => unreachable!(),
        }
        out.push((format!("{name} dropped"), d));
    }
    out
}

/// Runs `f` over every variant of `seed`; the panics, named.
fn json_panics(seed: &serde_json::Value, f: impl Fn(serde_json::Value)) -> Vec<String> {
    caught(json_variants(seed), f)
}

const LIMITS: Limits = Limits { max_rules: 64, max_allow: 64 };

fn clock() -> Clock {
    Clock { wall_ms: 1_767_225_600_000, mono_ns: 1_000_000_000_000 }
}

/// Rule requests of every kind the API and the CLI send.
fn requests() -> Vec<serde_json::Value> {
    vec![
        json!({"action": "drop", "prefix": "198.18.0.0/16", "classes": ["udp"], "dport": "27015",
               "ttl_ms": 600000, "reason": "flood"}),
        json!({"action": "rate_limit", "prefix": "203.0.113.7/32", "classes": ["tcp_syn"], "pps": 50,
               "burst": 5, "ttl_ms": 60000}),
        json!({"action": "rate_limit", "prefix": "0.0.0.0/0", "classes": ["udp_amplification"], "sport": 123,
               "dst": "198.51.100.10/32", "length": "400-500", "ip_ttl": "50-60", "aggregate": true,
               "bps": 1000000}),
        json!({"action": "drop", "prefix": "2001:db8::/32", "classes": ["icmpv6", "fragment"],
               "origin": {"by": "runbook", "runbook": "rb", "incident": "i1", "step": 0}}),
    ]
}

/// A rule set as the API leaves it: the requests' rules and an operator's
/// allowlist entry.
fn rule_set() -> RuleSet {
    let mut set = RuleSet::new(LIMITS);
    let now = clock().wall_ms;
    for r in requests() {
        let req: RuleRequest = serde_json::from_value(r.clone()).unwrap_or_else(|e| panic!("{r}: {e}"));
        set.add_rule(&req, now).unwrap_or_else(|e| panic!("{r}: {e}"));
    }
    set.add_allow("192.0.2.0/24".parse().unwrap(), AllowSource::Operator, "office", now).unwrap();
    set
}

#[test]
fn a_mutated_rule_request_is_taken_or_refused_never_a_panic() {
    rule_set().plan(clock()).expect("the seed rules plan");
    let mut bad = Vec::new();
    for seed in requests() {
        bad.extend(json_panics(&seed, |v| {
            let Ok(req) = serde_json::from_value::<RuleRequest>(v) else { return };
            let mut set = RuleSet::new(LIMITS);
            if set.add_rule(&req, clock().wall_ms).is_ok() {
                set.plan(clock()).expect("a rule taken plans");
            }
        }));
    }
    assert!(bad.is_empty(), "{} panics:\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn mutated_saved_rules_are_restored_or_refused_never_a_panic() {
    let saved = serde_json::to_value(rule_set().saved()).unwrap();
    let mut again = RuleSet::new(LIMITS);
    let r = again.restore(serde_json::from_value(saved.clone()).unwrap(), None, clock());
    assert!(r.refused.is_empty() && r.refused_allow.is_empty(), "the seed restores whole: {r:?}");
    assert_eq!(again.rules().len(), requests().len());
    let bad = json_panics(&saved, |v| {
        let Ok(saved) = serde_json::from_value::<Saved>(v) else { return };
        let mut set = RuleSet::new(LIMITS);
        set.restore(saved, None, clock());
        set.plan(clock()).expect("what is restored plans");
        // And the rule set goes on: a new rule and a new entry.
        let req = RuleRequest { action: "drop".into(), prefix: "100.64.0.0/10".into(), ..Default::default() };
        if set.add_rule(&req, clock().wall_ms).is_ok() {
            set.plan(clock()).expect("a rule added after a restore plans");
        }
        let _ = set.add_allow("100.127.0.0/16".parse().unwrap(), AllowSource::Operator, "x", clock().wall_ms);
    });
    assert!(bad.is_empty(), "{} panics:\n{}", bad.len(), bad.join("\n"));
}

/// The saved BGP announcements: a blackhole and a FlowSpec rule with every
/// field, from a runbook, under the seed configuration's `bgp:` section;
/// each one taken also goes through gobgpd's path encoding and back.
#[test]
fn mutated_saved_announcements_are_restored_or_refused_never_a_panic() {
    let cfg = ConfigFile::parse("detector.yaml", CONFIG).unwrap();
    let (bgp, protected) = (cfg.bgp.unwrap(), Protected::new(cfg.networks.as_ref(), &cfg.detection.families));
    let origin =
        Origin { by: "runbook".into(), runbook: Some("rtbh".into()), incident: Some("i1".into()), step: Some(0) };
    let now = clock().wall_ms;
    let entry = |announcement| Entry {
        announcement,
        origin: origin.clone(),
        created_ms: now - 1000,
        expires_ms: Some(now + 600_000),
        hold_until_ms: Some(now + 60_000),
    };
    let flow = FlowSpecRule {
        dst: "198.51.100.10/32".parse().unwrap(),
        src: Some("203.0.113.0/24".parse().unwrap()),
        protocols: vec![6],
        dst_ports: vec![Span::one(443)],
        src_ports: vec![Span::new(1024, 65535).unwrap()],
        packet_lengths: vec![Span::new(40, 60).unwrap()],
        tcp_flags: Some(TcpFlags { set: 0x02, unset: 0x10 }),
        fragment: false,
        action: FlowAction::RateLimit { bytes_per_second: 125_000 },
    };
    let saved = BgpSaved {
        entries: vec![
            entry(Announcement::blackhole("198.51.100.7/32".parse().unwrap(), [BLACKHOLE])),
            entry(Announcement::Flowspec(flow)),
        ],
        recover: false,
    };
    let restore = |saved: BgpSaved| {
        let scope = Scope::new(&bgp, &protected, &[]);
        let (desired, refused) = Desired::restore(saved, &scope, now);
        Planner::new(60, false).step(&desired, &[], now);
        // What is taken goes to gobgpd as a path, and reads back the same.
        for e in desired.entries() {
            let back = from_path(&to_path(&e.announcement)).unwrap_or_else(|err| panic!("{e:?}: {err}"));
            assert_eq!(back.key(), e.key(), "{e:?}");
        }
        (desired, refused)
    };
    let (desired, refused) = restore(saved.clone());
    assert!(refused.is_empty(), "the seed restores whole: {refused:?}");
    assert_eq!(desired.saved().entries.len(), 2);
    let bad = json_panics(&serde_json::to_value(&saved).unwrap(), |v| {
        if let Ok(saved) = serde_json::from_value::<BgpSaved>(v) {
            restore(saved);
        }
    });
    assert!(bad.is_empty(), "{} panics:\n{}", bad.len(), bad.join("\n"));
}

/// The saved baselines (one group's, both directions), mutated: whatever is
/// loaded leaves every threshold a number, bounded by what learning could
/// make of rates no link carries (a damaged average is refused, not taken
/// as a threshold no flood reaches).
#[test]
fn mutated_saved_baselines_load_or_are_refused_never_a_panic() {
    let cfg = ConfigFile::parse("detector.yaml", CONFIG).unwrap().detection;
    let level = json!({"pps": {"mean": 200000.0, "var": 1.0e8}, "bps": {"mean": 8.0e8, "var": 1.0e14},
                       "learned_seconds": 7200.0});
    let group = json!({"total": {"udp": level, "tcp_syn": level}, "address": {"udp": level}});
    let seed = json!({"version": 2, "groups": {"eth0": {"host": {"incoming": group, "outgoing": group}}}});
    let load = |v: serde_json::Value| {
        let Ok(saved) = serde_json::from_value::<SavedBaselines>(v) else { return };
        let mut d = Detector::new(cfg.clone(), "node1");
        d.load_baselines(&saved);
        for t in d.thresholds("eth0") {
            assert!(t.pps.is_finite() && t.pps >= 0.0 && t.pps <= 1e12, "{t:?}");
        }
    };
    let mut d = Detector::new(cfg.clone(), "node1");
    let saved: SavedBaselines = serde_json::from_value(seed.clone()).unwrap();
    assert!(d.load_baselines(&saved).is_empty(), "the seed loads whole");
    let udp = d.thresholds("eth0").into_iter().find(|t| t.total && t.family.name() == "udp_flood").unwrap();
    assert!(udp.pps > 500_000.0, "the learned level raises the threshold over the floor: {udp:?}");
    let bad = json_panics(&seed, load);
    assert!(bad.is_empty(), "{} panics:\n{}", bad.len(), bad.join("\n"));
}
