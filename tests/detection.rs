//! Detection against real floods in the lab: each family is recognised
//! within a second of its start and resolved after it stops, two at once
//! are a multi-vector incident, normal traffic with short bursts opens
//! nothing, incidents survive a restart, and a bad config is refused.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{detector_in, flood_in_background as flood, get_json, incidents, require_root, sample, Controller, Lab};
use serde_json::Value;

/// Low floors, static only (no warm-up ends during a test), short quiet.
const CONFIG: &str = "\
detection:
  hold: 200ms
  quiet: 1s
  baseline: { warmup: 1h }
  families:
    udp_flood: { pps: 3000 }
    syn_flood: { pps: 3000 }
    ack_flood: { pps: 3000 }
    icmp_flood: { pps: 3000 }
    dns_flood: { pps: 3000 }
    dns_amplification: { pps: 3000 }
    udp_amplification: { pps: 3000 }
    http_flood: { pps: 3000, new_connections_pps: 3000 }
    fragment_flood: { pps: 3000 }
";

fn config_file(lab: &Lab, text: &str, name: &str) -> String {
    let p = lab.dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn start(lab: &Lab) -> Controller {
    let cfg = config_file(lab, CONFIG, "detector.yaml");
    Controller::start(lab, &["--config", &cfg])
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn time_of(v: &Value) -> u64 {
    detector::detect::incident::time_ms::parse(v.as_str().unwrap()).unwrap()
}

/// Floods with `args` for 1.5 s and checks the incident: its families,
/// vectors, detection time and resolution.
fn detects(lab: &Lab, c: &Controller, args: &[&str], families: &[&str], vectors: &[&str]) {
    let t0 = now_ms();
    let mut full = args.to_vec();
    full.extend(["--rate", "20000", "--duration", "1500ms"]);
    let f = flood(lab, &full);
    let inc = wait_for(&format!("an incident for {args:?}"), Duration::from_secs(3), || {
        incidents(c, true).into_iter().next()
    });
    let opened_at = time_of(&inc["timeline"][0]["at"]);
    assert_eq!(inc["timeline"][0]["kind"], "opened");
    assert!(opened_at - t0 <= 1000, "{args:?}: detected {} ms after the flood began", opened_at - t0);
    assert_eq!(strings(&inc["families"]), families, "{args:?}");
    for v in vectors {
        assert!(
            strings(&inc["vectors"]).contains(&v.to_string()),
            "{args:?}: vector {v} missing from {}",
            inc["vectors"]
        );
    }
    assert_eq!(inc["status"], "active");
    assert_eq!(inc["node"], "lab");
    assert_eq!(inc["iface"], lab.tgt_if);
    let out = f.join().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = inc["id"].as_str().unwrap().to_string();
    let done = wait_for("the incident to resolve", Duration::from_secs(5), || {
        let v = get_json(c, &format!("/api/incidents/{id}"));
        (v["status"] == "resolved").then_some(v)
    });
    let kinds: Vec<&str> = done["timeline"].as_array().unwrap().iter().map(|t| t["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"opened"));
    assert_eq!(kinds.last(), Some(&"resolved"));
    assert!(done["peak_pps"].as_f64().unwrap() > 10_000.0, "{done}");
    let ended = time_of(&done["ended_at"]);
    assert!(ended >= time_of(&done["started_at"]) + 1000, "{done}");
}

#[test]
fn tcp_floods_are_detected_and_resolved() {
    require_root!();
    let lab = Lab::new().unwrap();
    let c = start(&lab);
    detects(&lab, &c, &["--kind", "syn"], &["syn_flood"], &["syn"]);
    detects(&lab, &c, &["--kind", "ack"], &["ack_flood"], &["ack"]);
    detects(&lab, &c, &["--kind", "rst"], &["ack_flood"], &["rst"]);
    detects(&lab, &c, &["--kind", "http-get"], &["http_flood"], &["requests"]);
    let m = c.metrics();
    assert!(sample(&m, "detector_incidents_total{family=\"syn_flood\",severity=\"high\"}") >= 1.0, "{m}");
    assert_eq!(sample(&m, "detector_active_incidents{family=\"syn_flood\"}"), 0.0);
}

#[test]
fn udp_floods_and_reflection_are_detected_with_their_vectors() {
    require_root!();
    let lab = Lab::new().unwrap();
    let c = start(&lab);
    detects(&lab, &c, &["--kind", "udp"], &["udp_flood"], &["udp"]);
    detects(&lab, &c, &["--kind", "dns-query"], &["dns_flood"], &[]);
    detects(&lab, &c, &["--kind", "dns-response"], &["dns_amplification"], &["dns"]);
    detects(&lab, &c, &["--kind", "ntp-amplification"], &["udp_amplification"], &["ntp"]);
    detects(&lab, &c, &["--kind", "memcached-amplification"], &["udp_amplification"], &["memcached"]);
}

#[test]
fn icmp_both_families_and_fragments_are_detected() {
    require_root!();
    let lab = Lab::new().unwrap();
    let c = start(&lab);
    detects(&lab, &c, &["--kind", "icmp"], &["icmp_flood"], &["icmp"]);
    detects(&lab, &c, &["--kind", "icmp", "--dst", "2001:db8::2"], &["icmp_flood"], &["icmpv6"]);
    detects(&lab, &c, &["--kind", "fragment"], &["fragment_flood"], &["fragments"]);
}

#[test]
fn two_floods_at_once_are_one_multi_vector_incident() {
    require_root!();
    let lab = Lab::new().unwrap();
    let c = start(&lab);
    let a = flood(&lab, &["--kind", "syn", "--src", "198.51.100.9", "--rate", "15000", "--duration", "2s"]);
    let b =
        flood(&lab, &["--kind", "ntp-amplification", "--src", "203.0.113.0/24", "--rate", "15000", "--duration", "2s"]);
    let inc = wait_for("a multi-vector incident", Duration::from_secs(3), || {
        incidents(&c, true).into_iter().find(|i| strings(&i["families"]).contains(&"multi_vector".to_string()))
    });
    let fams = strings(&inc["families"]);
    assert_eq!(fams[0], "multi_vector");
    assert!(fams.contains(&"syn_flood".to_string()) && fams.contains(&"udp_amplification".to_string()), "{fams:?}");
    assert!(strings(&inc["vectors"]).contains(&"ntp".to_string()));
    a.join().unwrap();
    b.join().unwrap();
    // One incident only, and it names its sources and ports.
    let id = inc["id"].as_str().unwrap().to_string();
    let done = wait_for("resolution", Duration::from_secs(5), || {
        let v = get_json(&c, &format!("/api/incidents/{id}"));
        (v["status"] == "resolved").then_some(v)
    });
    assert_eq!(incidents(&c, false).len(), 1);
    let sources: Vec<&str> =
        done["top_sources"].as_array().unwrap().iter().map(|s| s["addr"].as_str().unwrap()).collect();
    assert!(sources.contains(&"198.51.100.9"), "{sources:?}");
    let ports: Vec<u64> = done["top_ports"].as_array().unwrap().iter().map(|p| p["port"].as_u64().unwrap()).collect();
    assert!(ports.contains(&80) && ports.contains(&40000), "{ports:?}");
}

#[test]
fn normal_traffic_with_short_bursts_opens_nothing() {
    require_root!();
    let lab = Lab::new().unwrap();
    // Floors at twice the normal rates; bursts at three times normal for
    // less than the hold time.
    let cfg = config_file(
        &lab,
        "detection:\n  hold: 400ms\n  quiet: 1s\n  baseline: { warmup: 1h }\n  families:\n    ack_flood: { pps: 2000 }\n    dns_flood: { pps: 600 }\n    icmp_flood: { pps: 200 }\n",
        "benign.yaml",
    );
    let c = Controller::start(&lab, &["--config", &cfg]);
    let steady = [
        flood(
            &lab,
            &["--kind", "ack", "--src", "198.51.100.0/28", "--spread", "seq", "--rate", "1000", "--duration", "8s"],
        ),
        flood(&lab, &["--kind", "dns-query", "--src", "198.51.100.32/28", "--rate", "300", "--duration", "8s"]),
        flood(&lab, &["--kind", "icmp", "--src", "198.51.100.64/28", "--rate", "100", "--duration", "8s"]),
    ];
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(1000));
        let bursts = [
            flood(&lab, &["--kind", "ack", "--rate", "3000", "--duration", "150ms"]),
            flood(&lab, &["--kind", "dns-query", "--rate", "900", "--duration", "150ms"]),
            flood(&lab, &["--kind", "icmp", "--rate", "300", "--duration", "150ms"]),
        ];
        for b in bursts {
            assert!(b.join().unwrap().status.success());
        }
    }
    for s in steady {
        assert!(s.join().unwrap().status.success());
    }
    let m = c.metrics();
    assert!(common::packets(&m, &lab.tgt_if, "tcp_ack") >= 6000, "the mix did not arrive:\n{m}");
    assert!(incidents(&c, false).is_empty(), "{:?}", incidents(&c, false));
}

#[test]
fn incidents_and_baselines_survive_a_restart() {
    require_root!();
    let lab = Lab::new().unwrap();
    let mut c = start(&lab);
    let f = flood(&lab, &["--kind", "syn", "--rate", "15000", "--duration", "4s"]);
    let inc = wait_for("an incident", Duration::from_secs(3), || incidents(&c, true).into_iter().next());
    let id = inc["id"].as_str().unwrap().to_string();
    // Stop the controller mid-flood, start it again on the same state.
    assert!(c.stop_with(libc::SIGTERM).success());
    assert!(c.state_dir.join("baselines.json").exists());
    let c2 = start(&lab);
    assert!(c2.log_text().contains("resuming an incident open at the last stop"), "{}", c2.log_text());
    let open = incidents(&c2, true);
    assert_eq!(open.len(), 1);
    assert_eq!(open[0]["id"], id.as_str());
    f.join().unwrap();
    wait_for("resolution", Duration::from_secs(6), || {
        let v = get_json(&c2, &format!("/api/incidents/{id}"));
        (v["status"] == "resolved").then_some(v)
    });
    assert_eq!(incidents(&c2, false).len(), 1, "the attack was counted twice");

    // The CLI reads the same history.
    let dir = c2.state_dir.to_str().unwrap().to_string();
    let out = detector_in(&lab.tgt_ns, &["incidents", "--state-dir", &dir]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains(&id) && text.contains("syn_flood") && text.contains("resolved"), "{text}");
    let out = detector_in(&lab.tgt_ns, &["incidents", &id, "--state-dir", &dir]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("timeline") && text.contains("opened") && text.contains("resolved"), "{text}");
    let out = detector_in(&lab.tgt_ns, &["incidents", "--json", "--active", "--state-dir", &dir]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["incidents"].as_array().unwrap().is_empty());
    let out = detector_in(&lab.tgt_ns, &["incidents", "nope", "--state-dir", &dir]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no incident with id 'nope'"));
    let (code, _) = common::http_get(&c2.ns, "/api/incidents/nope").unwrap();
    assert_eq!(code, 404);
}

#[test]
fn a_bad_config_is_refused_with_file_line_and_field() {
    require_root!();
    let lab = Lab::new().unwrap();
    let dir = common::state_dir(&lab);
    let dir = dir.to_str().unwrap();
    for (name, text, expect) in [
        (
            "unknown.yaml",
            "detection:\n  families:\n    smurf_flood: { pps: 1 }\n",
            ":3:5: detection.families: unknown field `smurf_flood`",
        ),
        ("negative.yaml", "detection:\n  families:\n    syn_flood: { pps: -5 }\n", ":3:"),
        (
            "ratios.yaml",
            "detection:\n  severity:\n    ratios: { medium: 5, high: 2, critical: 10 }\n",
            ":3:5: detection.severity: ratios must rise",
        ),
    ] {
        let path = config_file(&lab, text, name);
        let out = detector_in(&lab.tgt_ns, &["run", "--iface", &lab.tgt_if, "--config", &path, "--state-dir", dir]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} accepted");
        assert!(err.contains(&format!("{path}{expect}")), "{name}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    assert_eq!(common::xdp_attached(&lab.tgt_ns, &lab.tgt_if), None);
}
