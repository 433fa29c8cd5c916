//! A fleet on one machine (`detector::lab::fleet`): three detector nodes,
//! each its own `--node` in namespaces of its own, one real Prometheus
//! scraping all three (the shipped `deploy/prometheus/fleet.yml`), a
//! second one federating it (`deploy/prometheus/federate.yml`), and one
//! real Alertmanager (the shipped `deploy/alertmanager/alertmanager.yml`)
//! taking every node's runbook alerts. An attack on two nodes at once is
//! two alerts in one group and one notification, both resolve when it
//! ends; queries over the three nodes give the fleet's totals; a runbook
//! whose trigger names one node runs there only.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::{require_root, until_or, Controller};
use detector::lab::{
    self,
    alertmanager::{AlertGroup, Alertmanager},
    fleet::{FleetLab, SERVICE_V4},
    prometheus::Prometheus,
    receiver::Receiver,
};
use serde_json::Value;

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(path)
}

fn yaml(path: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&std::fs::read_to_string(deploy(path)).unwrap()).unwrap()
}

/// `amtool ARGS`: (success, stdout, stderr).
fn amtool(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("amtool")
        .args(args)
        .output()
        .expect("amtool (`cargo xtask test` installs it: Debian package prometheus-alertmanager)");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// The route the runbooks' alerts take, and the one grouping the README
/// and the fleet test below rely on.
#[test]
fn the_shipped_alertmanager_config_checks_and_groups_by_alertname_and_hostgroup() {
    let file = deploy("alertmanager/alertmanager.yml");
    let file = file.to_str().unwrap();
    let (ok, out, err) = amtool(&["check-config", file]);
    assert!(ok, "amtool check-config:\n{out}{err}");
    let config = format!("--config.file={file}");
    // (It warns on stderr that the file overrides --alertmanager.url.)
    let (ok, out, err) = amtool(&["config", "routes", "test", &config, "alertname=DDoSAttack", "hostgroup=host"]);
    assert!(ok && out.trim() == "ddos-oncall", "a runbook alert goes to ddos-oncall:\n{out}{err}");
    let c = yaml("alertmanager/alertmanager.yml");
    let group_by: Vec<&str> =
        c["route"]["group_by"].as_sequence().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(group_by, ["alertname", "hostgroup"]);
    assert_eq!(c["receivers"][0]["webhook_configs"][0]["send_resolved"], true);
}

const NODES: [&str; 3] = ["edge-a", "edge-b", "edge-c"];
const TOKEN: &str = "fleet-scrape-t0ken";
/// Where Alertmanager's webhook notifications arrive, in the monitoring
/// namespace.
const RECEIVER_PORT: u16 = 5001;
const FLOOD_PPS: u64 = 2500;
const NOTE: &str = "edge-a: transit filtering requested";

/// Low static floors (no warm-up ends in a test) and a short quiet period.
const CONFIG: &str = "\
detection:
  hold: 200ms
  quiet: 3s
  baseline: { warmup: 1h }
  families:
    udp_flood: { pps: 1000 }
";

/// One runbook directory for the whole fleet: every attack to the one
/// Alertmanager, and a note on edge-a's incidents only (`trigger.nodes`).
fn runbooks(fleet: &FleetLab, am: &Alertmanager) -> PathBuf {
    let dir = fleet.dir.join("runbooks");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("fleet-alertmanager.yaml"),
        format!(
            "name: fleet-alertmanager\ntrigger: {{ families: [any], nodes: all }}\nsteps:\n  \
             - notify: {{ channel: alertmanager, url: \"{}\", message: \"{{{{ families | join(', ') }}}} on {{{{ node \
             }}}}\" }}\n",
            am.url()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("edge-a-note.yaml"),
        format!("name: edge-a-note\ntrigger: {{ families: [any], nodes: [edge-a] }}\nsteps:\n  - note: \"{NOTE}\"\n"),
    )
    .unwrap();
    dir
}

/// The shipped site Prometheus configuration with the lab in it: its
/// nodes, its token, the shipped rules, its Alertmanager, and a 1 s
/// interval.
fn site_config(fleet: &FleetLab, token: &std::path::Path, am: &Alertmanager) -> String {
    let mut c = yaml("prometheus/fleet.yml");
    for key in ["scrape_interval", "evaluation_interval"] {
        c["global"][key] = "1s".into();
    }
    c["rule_files"][0] = deploy("prometheus/detector-rules.yml").to_str().unwrap().into();
    c["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = vec![am.addr().to_string()].into();
    let job = &mut c["scrape_configs"][0];
    assert_eq!(job["job_name"], "detector");
    job["authorization"]["credentials_file"] = token.to_str().unwrap().into();
    let targets: Vec<String> = fleet.nodes.iter().map(|n| n.target(common::METRICS_PORT)).collect();
    job["static_configs"][0]["targets"] = targets.into();
    serde_yaml::to_string(&c).unwrap()
}

/// The shipped global Prometheus configuration federating the site's.
fn global_config(site: &Prometheus) -> String {
    let mut c = yaml("prometheus/federate.yml");
    c["global"]["scrape_interval"] = "1s".into();
    c["scrape_configs"][0]["static_configs"][0]["targets"] = vec![format!("127.0.0.1:{}", site.port())].into();
    serde_yaml::to_string(&c).unwrap()
}

/// GET `path` from a node's controller, with the fleet's token.
fn api(c: &Controller, path: &str) -> Value {
    let (code, body) = common::http_get_with(&c.ns, common::METRICS_PORT, path, Some(TOKEN)).unwrap();
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn metrics(c: &Controller) -> String {
    let (code, body) = common::http_get_with(&c.ns, common::METRICS_PORT, "/metrics", Some(TOKEN)).unwrap();
    assert_eq!(code, 200, "{body}");
    body
}

/// An instant query at `time` (Unix seconds): {instance or "": value}.
fn query_at(prom: &Prometheus, expr: &str, time: f64) -> Result<BTreeMap<String, f64>, String> {
    let q: String = url::form_urlencoded::byte_serialize(expr.as_bytes()).collect();
    let data = prom.api(&format!("/api/v1/query?query={q}&time={time:.3}")).map_err(|e| e.to_string())?;
    by_instance(&data["result"])
}

fn query(prom: &Prometheus, expr: &str) -> Result<BTreeMap<String, f64>, String> {
    by_instance(&prom.query(expr).map_err(|e| e.to_string())?)
}

fn by_instance(result: &Value) -> Result<BTreeMap<String, f64>, String> {
    let mut out = BTreeMap::new();
    for s in result.as_array().ok_or_else(|| format!("not a vector: {result}"))? {
        let instance = s["metric"]["instance"].as_str().unwrap_or("").to_string();
        let v = s["value"][1].as_str().and_then(|v| v.parse().ok()).ok_or_else(|| format!("no value: {s}"))?;
        out.insert(instance, v);
    }
    Ok(out)
}

/// The single value of a query that aggregates everything.
fn total(m: &BTreeMap<String, f64>) -> Result<f64, String> {
    match m.get("") {
        Some(v) if m.len() == 1 => Ok(*v),
        _ => Err(format!("not one total: {m:?}")),
    }
}

/// The nodes an Alertmanager group's runbook alerts came from.
fn group_nodes(g: &AlertGroup) -> BTreeSet<String> {
    g.alerts.iter().filter_map(|a| a.label("node").map(str::to_string)).collect()
}

#[test]
fn an_attack_on_two_of_three_nodes_is_one_alert_group_in_alertmanager_and_prometheus_sums_the_fleet() {
    require_root!();
    let t0 = Instant::now();
    let fleet = FleetLab::new(NODES.len()).unwrap();
    assert_eq!(fleet.default_routes().unwrap(), Vec::<String>::new(), "no default route anywhere in the fleet");

    // The one Alertmanager, with the shipped routing; its notifications
    // go to a receiver beside it.
    let rx = Receiver::start(&fleet.mon_ns, RECEIVER_PORT).unwrap();
    let mut am_config = yaml("alertmanager/alertmanager.yml");
    am_config["receivers"][0]["webhook_configs"][0]["url"] = format!("http://127.0.0.1:{RECEIVER_PORT}/ddos").into();
    let am = Alertmanager::builder(&fleet.mon_ns, &fleet.dir)
        .listen(SERVICE_V4.into())
        .config(serde_yaml::to_string(&am_config).unwrap())
        .start()
        .unwrap_or_else(|e| panic!("{e}"));

    // Three nodes: one configuration, one runbook directory, one token,
    // each its own --node, listening off loopback for Prometheus.
    let cfg = fleet.dir.join("detector.yaml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let token = fleet.dir.join("api.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let books = runbooks(&fleet, &am);
    let controllers: Vec<Controller> = fleet
        .nodes
        .iter()
        .zip(NODES)
        .map(|(n, name)| {
            Controller::start_with_addr(
                &n.lab,
                &format!("0.0.0.0:{}", common::METRICS_PORT),
                &[
                    "--node",
                    name,
                    "--config",
                    cfg.to_str().unwrap(),
                    "--runbooks",
                    books.to_str().unwrap(),
                    "--api-token-file",
                    token.to_str().unwrap(),
                ],
            )
        })
        .collect();
    for (c, name) in controllers.iter().zip(NODES) {
        let m = metrics(c);
        assert_eq!(common::sample(&m, "detector_runbooks_loaded"), 2.0, "{name}:\n{}", c.log_text());
    }
    let logs = || {
        controllers
            .iter()
            .zip(NODES)
            .map(|(c, name)| format!("--- {name}:\n{}", c.log_tail(30)))
            .collect::<Vec<_>>()
            .join("\n")
    };

    // The site's Prometheus (the shipped fleet.yml) and a global one
    // federating it (the shipped federate.yml).
    let site_dir = fleet.dir.join("site");
    let global_dir = fleet.dir.join("global");
    for d in [&site_dir, &global_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    let site = Prometheus::builder(&fleet.mon_ns, &site_dir)
        .config_text(site_config(&fleet, &token, &am))
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let global = Prometheus::builder(&fleet.mon_ns, &global_dir)
        .config_text(global_config(&site))
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let instances: Vec<String> = fleet.nodes.iter().map(|n| n.target(common::METRICS_PORT)).collect();
    until_or("Prometheus scraping the three nodes", Duration::from_secs(20), logs, || {
        let up = total(&query(&site, "count(up{job=\"detector\"} == 1)")?)?;
        (up == 3.0).then_some(()).ok_or(format!("{up} nodes up"))
    });
    // The site's Prometheus found the fleet's Alertmanager.
    until_or("the site Prometheus to find the Alertmanager", Duration::from_secs(10), logs, || {
        let v = site.api("/api/v1/alertmanagers").map_err(|e| e.to_string())?;
        let urls: Vec<&str> =
            v["activeAlertmanagers"].as_array().into_iter().flatten().filter_map(|a| a["url"].as_str()).collect();
        urls.iter().any(|u| u.starts_with(&am.url())).then_some(()).ok_or(format!("{urls:?}"))
    });
    eprintln!("fleet up after {:?}", t0.elapsed());

    // The attack: edge-a and edge-b flooded at once, edge-c left alone.
    let floods: Vec<lab::Background> = fleet.nodes[..2]
        .iter()
        .map(|n| {
            let rate = FLOOD_PPS.to_string();
            let args = ["--kind", "udp", "--rate", &rate, "--duration", "120s", "--engine", "exact", "--json"];
            lab::DetectorCommand::flood(common::detector_bin(), &n.lab, &args).spawn().unwrap()
        })
        .collect();
    let incident_ids: Vec<String> = controllers[..2]
        .iter()
        .zip(NODES)
        .map(|(c, name)| {
            common::until(c, &format!("{name}'s incident"), Duration::from_secs(10), || {
                let v = api(c, "/api/incidents?active=true");
                let id = v["incidents"][0]["id"].as_str().map(str::to_string);
                id.ok_or(v.to_string())
            })
        })
        .collect();
    for id in &incident_ids {
        assert!(id.contains("edge-"), "{id}");
    }

    // Alertmanager: the two alerts, in one group (group_by alertname and
    // hostgroup: both nodes are in host mode, host group `host`), to the
    // shipped receiver.
    let group = until_or("two runbook alerts in one Alertmanager group", Duration::from_secs(15), logs, || {
        let groups = am.groups().map_err(|e| e.to_string())?;
        let ddos: Vec<&AlertGroup> =
            groups.iter().filter(|g| g.labels.get("alertname").is_some_and(|n| n == "DDoSAttack")).collect();
        match ddos.as_slice() {
            [g] if g.alerts.len() == 2 => Ok((*g).clone()),
            _ => Err(format!("{ddos:#?}")),
        }
    });
    eprintln!("two alerts in one group after {:?}", t0.elapsed());
    let want_labels: BTreeMap<String, String> =
        [("alertname", "DDoSAttack"), ("hostgroup", "host")].map(|(k, v)| (k.to_string(), v.to_string())).into();
    assert_eq!(group.labels, want_labels, "grouped by alertname and hostgroup");
    assert_eq!(group.receiver.name, "ddos-oncall");
    assert_eq!(group_nodes(&group), BTreeSet::from(["edge-a".to_string(), "edge-b".to_string()]));
    for (i, name) in NODES[..2].iter().enumerate() {
        let a = group.alerts.iter().find(|a| a.label("node") == Some(name)).unwrap();
        assert_eq!(a.status.state, "active", "{a:?}");
        assert_eq!(a.label("incident_id"), Some(incident_ids[i].as_str()), "{a:?}");
        assert_eq!(a.label("iface"), Some(fleet.nodes[i].lab.tgt_if.as_str()), "{a:?}");
        assert_eq!(a.label("target"), Some(lab::TGT_V4), "{a:?}");
        assert!(a.annotations["summary"].contains(&format!("udp_flood on {name}")), "{a:?}");
        assert_eq!(a.annotations["families"], "udp_flood", "{a:?}");
    }
    // Nothing at all about edge-c, whatever sent it (the runbooks or the
    // site Prometheus's rules).
    let edge_c = &instances[2];
    for a in am.alerts().unwrap() {
        assert!(a.label("node") != Some("edge-c") && a.label("instance") != Some(edge_c), "{a:?}");
    }

    // The notification: one, with both alerts, after the group's wait.
    let note = until_or("Alertmanager's notification of the group", Duration::from_secs(25), logs, || {
        let got = rx.on("/ddos");
        got.first().map(|r| r.json()).ok_or_else(|| "none yet".to_string())
    });
    eprintln!("notified after {:?}", t0.elapsed());
    assert_eq!(note["status"], "firing", "{note:#}");
    assert_eq!(note["receiver"], "ddos-oncall", "{note:#}");
    assert_eq!(note["groupLabels"], serde_json::json!({"alertname": "DDoSAttack", "hostgroup": "host"}), "{note:#}");
    let notified: BTreeSet<&str> =
        note["alerts"].as_array().unwrap().iter().filter_map(|a| a["labels"]["node"].as_str()).collect();
    assert_eq!(notified, BTreeSet::from(["edge-a", "edge-b"]), "both nodes in the first notification:\n{note:#}");

    // The fleet's traffic, from the site's Prometheus, at one instant: the
    // total is the sum of the three nodes', the flooded two at about the
    // flood's rate each, edge-c at none.
    let rate = "rate(detector_packets_total{job=\"detector\"}[5s])";
    let (fleet_pps, per_node) =
        until_or("five seconds of the flood in Prometheus", Duration::from_secs(15), logs, || {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
            let fleet_pps = total(&query_at(&site, &format!("sum({rate})"), now)?)?;
            let per_node = query_at(&site, &format!("sum by (instance) ({rate})"), now)?;
            let flooded = instances[..2].iter().all(|i| per_node.get(i).is_some_and(|v| *v > FLOOD_PPS as f64 * 0.8));
            (flooded && per_node.len() == 3).then_some((fleet_pps, per_node.clone())).ok_or(format!("{per_node:?}"))
        });
    eprintln!("fleet {fleet_pps:.0} pps: {per_node:?}");
    let sum: f64 = per_node.values().sum();
    assert!((fleet_pps - sum).abs() <= 1e-6 * fleet_pps, "fleet {fleet_pps} != sum of nodes {sum}: {per_node:?}");
    assert_eq!(per_node[edge_c], 0.0, "{per_node:?}");
    for i in &instances[..2] {
        assert!(per_node[i] < FLOOD_PPS as f64 * 1.5, "{i}: {per_node:?}");
    }
    assert!(fleet_pps > 2.0 * FLOOD_PPS as f64 * 0.8, "{fleet_pps}");

    // The attack ends: both alerts resolve, each with its incident.
    let sent: Vec<u64> = floods
        .into_iter()
        .map(|f| {
            let out = f.stop(libc::SIGTERM, Duration::from_secs(10)).unwrap();
            let report: Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
            report["sent"].as_u64().unwrap()
        })
        .collect();
    eprintln!("floods stopped after {:?}: sent {sent:?}", t0.elapsed());
    until_or("both runbook alerts resolved in Alertmanager", Duration::from_secs(30), logs, || {
        let alerts = am.alerts().map_err(|e| e.to_string())?;
        let groups = am.groups().map_err(|e| e.to_string())?;
        let left: Vec<String> =
            alerts.iter().filter(|a| a.name() == "DDoSAttack").map(|a| format!("{:?}", a.labels)).collect();
        let grouped = groups.iter().any(|g| g.labels.get("alertname").is_some_and(|n| n == "DDoSAttack"));
        (left.is_empty() && !grouped).then_some(()).ok_or(format!("{left:?}, grouped: {grouped}"))
    });
    eprintln!("alerts resolved after {:?}", t0.elapsed());
    for (c, id) in controllers.iter().zip(&incident_ids) {
        let inc = api(c, &format!("/api/incidents/{id}"));
        assert_eq!(inc["status"], "resolved", "{inc:#}");
        assert!(inc["ended_at"].is_string(), "{inc:#}");
    }

    // trigger.nodes: edge-a's incident has its note, edge-b's has not; edge-c none at all.
    let timeline_notes = |c: &Controller, id: &str| -> Vec<String> {
        let inc = api(c, &format!("/api/incidents/{id}"));
        inc["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "note_added")
            .map(|e| e["detail"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(timeline_notes(&controllers[0], &incident_ids[0]).iter().any(|n| n.contains(NOTE)), "edge-a's note");
    assert!(timeline_notes(&controllers[1], &incident_ids[1]).iter().all(|n| !n.contains(NOTE)), "no note on edge-b");
    let ran_on_b: BTreeSet<String> =
        api(&controllers[1], &format!("/api/runbooks/executions?incident={}", incident_ids[1]))["executions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["runbook"].as_str().unwrap().to_string())
            .collect();
    assert_eq!(ran_on_b, BTreeSet::from(["fleet-alertmanager".to_string()]));
    assert_eq!(api(&controllers[2], "/api/incidents")["incidents"], serde_json::json!([]), "edge-c saw no attack");

    // The fleet's counters once the floods are over: each node counted
    // every frame its flood sent (the exact engine delivers every one), and
    // the site's sum over the nodes, and the global one's over the
    // federated series, are the two floods' frames.
    let udp = "detector_packets_total{job=\"detector\",class=\"udp\"}";
    let expected: BTreeMap<String, f64> =
        instances.iter().zip([sent[0], sent[1], 0]).map(|(i, n)| (i.clone(), n as f64)).collect();
    until_or("the site Prometheus's per-node UDP counters", Duration::from_secs(15), logs, || {
        let per_node = query(&site, &format!("sum by (instance) ({udp})"))?;
        (per_node == expected).then_some(()).ok_or(format!("{per_node:?}, want {expected:?}"))
    });
    for (c, (n, want)) in controllers.iter().zip(fleet.nodes.iter().zip([sent[0], sent[1], 0])) {
        assert_eq!(common::packets(&metrics(c), &n.lab.tgt_if, "udp"), want, "{}", n.lab.tgt_ns);
    }
    let want_total = (sent[0] + sent[1]) as f64;
    assert_eq!(total(&query(&site, &format!("sum({udp})")).unwrap()).unwrap(), want_total);
    until_or("the global Prometheus's fleet total", Duration::from_secs(15), logs, || {
        let t = total(&query(&global, &format!("sum({udp})"))?)?;
        (t == want_total).then_some(()).ok_or(format!("{t}, want {want_total}"))
    });
    // Federated with their site and each node's instance.
    let federated =
        query(&global, "count by (instance) (detector_build_info{job=\"detector\",site=\"edge-1\"})").unwrap();
    assert_eq!(federated.keys().cloned().collect::<Vec<_>>(), instances, "{federated:?}");
    assert_eq!(total(&query(&site, "count(up{job=\"detector\"} == 1)").unwrap()).unwrap(), 3.0);
    eprintln!("done after {:?}", t0.elapsed());
}
