//! `detector run` as a user runs it: attached to the lab's target end,
//! counting what `detector flood` sends, serving /metrics that promtool
//! accepts, detaching on SIGTERM, and refusing bad input with one clear line.

mod common;

use std::{process::Command, time::Duration};

use common::{detector_in, flood_in_background, packets, require_root, sample, xdp_attached, Controller, Lab};

fn flood(lab: &Lab, args: &[&str]) {
    let out = flood_in_background(lab, args).join().unwrap();
    assert!(out.status.success(), "flood {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn metrics_show_exactly_what_was_sent_and_pass_promtool() {
    require_root!();
    let lab = Lab::new().unwrap();
    let c = Controller::start(&lab, &[]);
    let iface = lab.tgt_if.clone();
    let mix: &[(&str, u64, &str)] = &[
        ("udp", 1000, "udp"),
        ("syn", 700, "tcp_syn"),
        ("dns-query", 300, "dns_query"),
        ("ntp-amplification", 250, "udp_amplification"),
        ("icmp", 120, "icmp"),
        ("http-get", 90, "http_request"),
        ("fragment", 40, "fragment"),
        ("arp", 10, "non_ip"),
    ];
    for (kind, n, _) in mix {
        flood(&lab, &["--kind", kind, "--count", &n.to_string(), "--rate", "20000", "--engine", "exact"]);
    }
    // IPv6 too.
    let out = detector_in(
        &lab.gen_ns,
        &["flood", "--iface", &lab.gen_if, "--kind", "icmp", "--dst", "2001:db8::2", "--count", "33", "--rate", "5000"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let total: u64 = mix.iter().map(|(_, n, _)| n).sum::<u64>() + 33;
    let m = c.metrics_until("every frame counted", |m| {
        detector_common::TrafficClass::ALL.iter().map(|cl| packets(m, &iface, cl.name())).sum::<u64>() >= total
    });
    // Let one more poll pass: nothing else may arrive.
    std::thread::sleep(Duration::from_millis(200));
    let m2 = c.metrics();
    for (kind, n, class) in mix {
        assert_eq!(packets(&m2, &iface, class), *n, "{kind} -> {class}\n{m}");
    }
    assert_eq!(packets(&m2, &iface, "icmpv6"), 33);
    for class in ["tcp_synack", "tcp_rst", "tcp_ack", "dns_response", "other_ip", "malformed"] {
        assert_eq!(packets(&m2, &iface, class), 0, "{class}");
    }
    // Bytes: 1000 minimal UDP frames of 60 bytes.
    assert_eq!(sample(&m2, &format!("detector_bytes_total{{iface=\"{iface}\",class=\"udp\"}}")), 60_000.0);
    assert_eq!(sample(&m2, &format!("detector_xdp_attached{{iface=\"{iface}\",mode=\"native\"}}")), 1.0);
    assert!(sample(&m2, "detector_poll_duration_seconds_count") > 0.0);
    assert!(m2.contains("detector_build_info{version="));
    // Counters that have not moved are there at zero from the start.
    for series in [
        format!("detector_poll_errors_total{{iface=\"{iface}\"}} 0"),
        format!("detector_source_map_pruned_total{{iface=\"{iface}\"}} 0"),
        "detector_incidents_total{family=\"syn_flood\",severity=\"critical\"} 0".to_string(),
    ] {
        assert!(m2.lines().any(|l| l == series), "no `{series}` in\n{m2}");
    }

    let (ok, said) = common::promtool_check(&m2);
    assert!(ok, "promtool check metrics failed:\n{said}\n{m2}");
}

#[test]
fn top_sources_name_the_flooder() {
    require_root!();
    let lab = Lab::new().unwrap();
    let _c = Controller::start(&lab, &[]);
    // One address floods SYNs while 256 others send a little each.
    let noise = flood_in_background(
        &lab,
        &["--kind", "syn", "--src", "203.0.113.0/24", "--spread", "seq", "--duration", "1500ms", "--rate", "1000"],
    );
    let flooder = flood_in_background(
        &lab,
        &["--kind", "syn", "--src", "198.51.100.66", "--duration", "1500ms", "--rate", "8000"],
    );
    std::thread::sleep(Duration::from_millis(900));
    let (code, body) = common::http_get(&lab.tgt_ns, "/api/top").unwrap();
    assert!(noise.join().unwrap().status.success());
    assert!(flooder.join().unwrap().status.success());
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let view = &v["interfaces"][&lab.tgt_if];
    assert_eq!(view["mode"], "native");
    let syn =
        view["classes"].as_array().unwrap().iter().find(|c| c["class"] == "tcp_syn").expect("tcp_syn in the view");
    let top = &syn["top_sources"][0];
    assert_eq!(top["addr"], "198.51.100.66", "{body}");
    assert!(top["share"].as_f64().unwrap() > 0.7, "{body}");
    assert!(syn["pps"].as_f64().unwrap() > 5000.0, "{body}");
}

/// A poll reads the sources counted in the window that ended, not every
/// bucket of the per-source map, and nothing in a quiet window: a source
/// that comes back after quiet polls is seen again, and one gone quiet is
/// still pruned on time, found idle by the sweep.
#[test]
fn quiet_polls_skip_the_source_map_yet_miss_no_source() {
    require_root!();
    let lab = Lab::new().unwrap();
    let c = Controller::start(&lab, &["--idle-after", "1s"]);
    let entries = format!("detector_source_map_entries{{iface=\"{}\"}}", lab.tgt_if);
    let pruned = format!("detector_source_map_pruned_total{{iface=\"{}\"}}", lab.tgt_if);
    for round in 1..=2 {
        // Quiet polls first (50 ms each), then the source.
        std::thread::sleep(Duration::from_millis(500));
        flood(&lab, &["--kind", "syn", "--src", "198.51.100.66", "--duration", "300ms", "--rate", "2000"]);
        c.metrics_until(&format!("round {round}: the source tracked"), |m| sample(m, &entries) == 1.0);
        // Quiet again: pruned once idle for 1 s (the sweep lists it).
        c.metrics_until(&format!("round {round}: the idle source pruned"), |m| {
            sample(m, &pruned) == round as f64 && sample(m, &entries) == 0.0
        });
    }
}

#[test]
fn several_interfaces_are_counted_apart() {
    require_root!();
    let lab = Lab::new().unwrap();
    // A second veth pair inside the target namespace: the detector watches
    // one end, a raw socket in the same namespace sends from the other.
    let (watch, feed) =
        (format!("{}x", &lab.tgt_if[..lab.tgt_if.len() - 1]), format!("{}y", &lab.tgt_if[..lab.tgt_if.len() - 1]));
    let ip =
        |args: &[&str]| assert!(Command::new("ip").args(["-n", &lab.tgt_ns]).args(args).status().unwrap().success());
    ip(&["link", "add", &watch, "type", "veth", "peer", "name", &feed]);
    ip(&["link", "set", &watch, "up"]);
    ip(&["link", "set", &feed, "up"]);
    let mut c = Controller::start(&lab, &["--iface", &watch]);
    flood(&lab, &["--kind", "udp", "--count", "300", "--rate", "20000"]);
    let out = detector_in(
        &lab.tgt_ns,
        &["flood", "--iface", &feed, "--kind", "syn", "--dst", "192.0.2.9", "--count", "200", "--rate", "20000"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (a, b) = (lab.tgt_if.clone(), watch.clone());
    let m = c.metrics_until("both interfaces", |m| packets(m, &a, "udp") >= 300 && packets(m, &b, "tcp_syn") >= 200);
    assert_eq!(packets(&m, &a, "tcp_syn"), 0);
    assert_eq!(packets(&m, &b, "udp"), 0);
    assert_eq!(sample(&m, &format!("detector_xdp_attached{{iface=\"{b}\",mode=\"native\"}}")), 1.0);

    // The second interface goes away, its program with it: the metric says
    // so within a scan of the host (5 s), and the log once; the first
    // interface stays attached.
    ip(&["link", "del", &watch]);
    let attached = |m: &str, i: &str| sample(m, &format!("detector_xdp_attached{{iface=\"{i}\",mode=\"native\"}}"));
    let m = c.metrics_until("the deleted interface's program gone", |m| attached(m, &b) == 0.0);
    assert_eq!(attached(&m, &a), 1.0);
    let log = c.log_text();
    assert_eq!(log.matches("the interface is gone").count(), 1, "{log}");
    // The stop detaches what is left, and is a clean one.
    assert!(c.stop_with(libc::SIGTERM).success(), "{}", c.log_text());
}

#[test]
fn auto_mode_falls_back_to_skb_where_native_is_missing() {
    require_root!();
    let lab = Lab::new().unwrap();
    let mut c = Controller::start_on(&lab, "lo", &[]);
    let m = c.metrics();
    assert_eq!(sample(&m, "detector_xdp_attached{iface=\"lo\",mode=\"skb\"}"), 1.0, "{m}");
    assert!(c.log_text().contains("native XDP not available; using generic (skb) mode"), "{}", c.log_text());
    assert!(c.stop_with(libc::SIGTERM).success());
}

#[test]
fn sigterm_detaches_and_exits_zero() {
    require_root!();
    let lab = Lab::new().unwrap();
    let mut c = Controller::start(&lab, &["--xdp-mode", "skb"]);
    let attached = xdp_attached(&lab.tgt_ns, &lab.tgt_if).expect("a program is attached");
    assert_eq!(attached.mode, "skb");
    let status = c.stop_with(libc::SIGTERM);
    assert!(status.success(), "exit status {status}\n{}", c.log_text());
    assert_eq!(xdp_attached(&lab.tgt_ns, &lab.tgt_if), None, "still attached after SIGTERM");
    let log = c.log_text();
    assert!(log.contains("XDP program detached"), "{log}");

    // SIGINT the same.
    let mut c = Controller::start(&lab, &[]);
    assert_eq!(xdp_attached(&lab.tgt_ns, &lab.tgt_if).unwrap().mode, "native");
    assert!(c.stop_with(libc::SIGINT).success());
    assert_eq!(xdp_attached(&lab.tgt_ns, &lab.tgt_if), None);
}

#[test]
fn a_signal_right_after_start_is_not_lost() {
    require_root!();
    let lab = Lab::new().unwrap();
    for _ in 0..10 {
        let mut c = Controller::start(&lab, &[]);
        assert!(c.stop_with(libc::SIGTERM).success());
        assert_eq!(xdp_attached(&lab.tgt_ns, &lab.tgt_if), None);
    }
}

#[test]
fn a_second_controller_is_refused_and_kill_9_is_adopted_by_the_next() {
    require_root!();
    let lab = Lab::new().unwrap();
    let mut first = Controller::start(&lab, &[]);
    let other = lab.dir.join("second");
    let other = other.to_str().unwrap();
    // Another state directory, same interface: refused, with or without --force.
    for force in [false, true] {
        let mut args = vec!["run", "--iface", &lab.tgt_if, "--metrics-addr", "127.0.0.1:9478", "--state-dir", other];
        if force {
            args.push("--force");
        }
        let out = detector_in(&lab.tgt_ns, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(&format!("another detector is running on '{}'", lab.tgt_if)), "{err}");
    }
    // The same state directory: refused before touching the interface.
    let dir = common::state_dir(&lab);
    let out = detector_in(
        &lab.tgt_ns,
        &["run", "--iface", &lab.tgt_if, "--metrics-addr", "127.0.0.1:9478", "--state-dir", dir.to_str().unwrap()],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running with the state directory"));
    // The first one is untouched.
    assert!(first.metrics().contains("detector_packets_total"));
    // kill -9: the pinned link keeps the program attached (rules would keep
    // applying); the next start takes it over instead of attaching twice.
    let before = xdp_attached(&lab.tgt_ns, &lab.tgt_if).unwrap();
    let status = first.stop_with(libc::SIGKILL);
    assert!(!status.success());
    assert_eq!(xdp_attached(&lab.tgt_ns, &lab.tgt_if), Some(before));
    let mut again = Controller::start(&lab, &[]);
    assert!(again.log_text().contains("replaced in the pinned link"), "{}", again.log_text());
    // With no rule in force a normal stop detaches everything.
    assert!(again.stop_with(libc::SIGTERM).success());
    assert_eq!(xdp_attached(&lab.tgt_ns, &lab.tgt_if), None);
}

/// Runs `detector ARGS` in the lab's target namespace and returns its stderr,
/// asserting it failed with a single line that contains `expect`.
fn refused(lab: &Lab, args: &[&str], expect: &str) -> String {
    let dir = common::state_dir(lab);
    let mut args: Vec<&str> = args.to_vec();
    if args[0] == "run" {
        args.extend(["--state-dir", dir.to_str().unwrap()]);
    }
    let out = detector_in(&lab.tgt_ns, &args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(err.contains(expect), "{args:?}: expected {expect:?} in:\n{err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{args:?} panicked:\n{err}");
    err
}

#[test]
fn bad_input_gets_one_clear_line() {
    require_root!();
    let lab = Lab::new().unwrap();
    let e = refused(&lab, &["run", "--iface", "nosuch0"], "interface 'nosuch0' does not exist");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    refused(&lab, &["run", "--iface", "bad/name"], "'bad/name' is not a valid interface name");
    refused(&lab, &["run", "--iface", &lab.tgt_if, "--interval", "soon"], "'soon' is not a duration");
    refused(&lab, &["run", "--iface", &lab.tgt_if, "--interval", "5ms"], "between 10ms and 60s");
    refused(&lab, &["run", "--iface", &lab.tgt_if, "--metrics-addr", "localhost"], "--metrics-addr");
    refused(&lab, &["run", "--iface", &lab.tgt_if, "--xdp-mode", "turbo"], "'turbo' is not an XDP mode");
    refused(&lab, &["run", "--iface", &lab.tgt_if, "--iface", &lab.tgt_if], "is named twice");
    let e = refused(&lab, &["run", "--iface", &lab.tgt_if, "--metrics-addr", "0.0.0.0:9477"], "needs a bearer token");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    // Nothing was left attached by any of these.
    assert_eq!(xdp_attached(&lab.tgt_ns, &lab.tgt_if), None);
    // `lo` has no native XDP: asked for explicitly, that is refused clearly.
    refused(&lab, &["run", "--iface", "lo", "--xdp-mode", "native"], "refused native XDP");
}

#[test]
fn without_privileges_the_missing_capabilities_are_named() {
    require_root!();
    if Command::new("setpriv").arg("--version").output().is_err() {
        panic!("setpriv (util-linux) is needed to drop privileges in this test");
    }
    let lab = Lab::new().unwrap();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.tgt_ns,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(common::detector_bin())
        .args(["run", "--iface", &lab.tgt_if])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("missing CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"), "{err}");
    assert_eq!(xdp_attached(&lab.tgt_ns, &lab.tgt_if), None);
}

#[test]
fn a_token_guards_a_listener_off_loopback() {
    require_root!();
    let lab = Lab::new().unwrap();
    let token_file = lab.dir.join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let c = Controller::start_with_addr(&lab, "0.0.0.0:9477", &["--api-token-file", token_file.to_str().unwrap()]);
    let (code, _) = common::http_get(&lab.tgt_ns, "/metrics").unwrap();
    assert_eq!(code, 401);
    let (code, _) = common::http_get_with(&lab.tgt_ns, 9477, "/metrics", Some("wrong")).unwrap();
    assert_eq!(code, 401);
    let (code, body) = common::http_get_with(&lab.tgt_ns, 9477, "/metrics", Some("s3cret-token")).unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("detector_packets_total"));
    assert!(!c.log_text().contains("s3cret"), "the token reached the log");
}
