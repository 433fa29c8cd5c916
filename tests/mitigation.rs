//! Mitigation in XDP, end to end: `detector run` in a lab namespace, rules
//! added with the CLI verbs, real frames from `detector flood`, and what
//! reached the target's stack counted by the kernel (`/proc/net/snmp`) or
//! by a UDP socket.

mod common;

use std::{
    collections::HashMap,
    net::{Ipv4Addr, UdpSocket},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use common::{
    cli, detector_in, ok, promtool_check, reaching_stack, require_root, rules, sample, send, xdp_attached, Controller,
    Lab,
};
use detector::{
    lab::{GEN_V4, TGT_V4},
    netns::NetnsGuard,
};

fn refused(c: &Controller, args: &[&str], expect: &str) -> String {
    let (success, _, err) = cli(c, args);
    assert!(!success, "{args:?} succeeded");
    assert!(err.contains(expect), "{args:?}: expected {expect:?} in:\n{err}");
    // (clap adds a hint line after a usage error.)
    let lines = err.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("For more information")).count();
    assert_eq!(lines, 1, "{args:?}: one line expected:\n{err}");
    err
}

fn rule<'a>(v: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    v["rules"].as_array().unwrap().iter().find(|r| r["id"] == id).unwrap_or_else(|| panic!("no rule {id} in {v}"))
}

#[test]
fn block_allow_and_scoped_rules_drop_exactly_their_match() {
    require_root!();
    let lab = Lab::new().unwrap();
    let c = Controller::start(&lab, &[]);

    // A blocked prefix: nothing of it reaches the stack.
    let out = ok(&c, &["block", "add", "198.18.0.0/16", "--reason", "lab flood"]);
    assert!(out.contains("added r1 drop 198.18.0.0/16"), "{out}");
    let through = reaching_stack(&lab, || {
        send(
            &lab,
            &["--kind", "udp", "--count", "1000", "--rate", "20000", "--src", "198.18.0.0/24", "--sources", "50"],
        )
    });
    assert!(through <= 5, "{through} datagrams of a blocked prefix got through");
    let v = rules(&c);
    assert_eq!(rule(&v, "r1")["dropped_packets"], 1000, "{v}");
    assert_eq!(rule(&v, "r1")["reason"], "lab flood");

    // Other sources pass.
    let through = reaching_stack(&lab, || {
        send(&lab, &["--kind", "udp", "--count", "500", "--rate", "20000", "--src", "198.19.0.1"])
    });
    assert!(through >= 500, "only {through} of 500 datagrams from an unblocked source arrived");

    // An allowlisted address inside the blocked prefix passes.
    let out = ok(&c, &["allow", "add", "198.18.5.5", "--reason", "partner"]);
    assert!(out.contains("198.18.5.5/32"), "{out}");
    let through = reaching_stack(&lab, || {
        send(&lab, &["--kind", "udp", "--count", "500", "--rate", "20000", "--src", "198.18.5.5"])
    });
    assert!(through >= 500, "only {through} of 500 datagrams from an allowlisted source arrived");
    let v = rules(&c);
    assert_eq!(rule(&v, "r1")["dropped_packets"], 1000, "{v}");
    assert_eq!(rule(&v, "r1")["passed_packets"], 500, "the rule counts what the allowlist let through: {v}");

    // Class and port scope: UDP from source port 11211 (memcached
    // reflectors) is dropped; other UDP and TCP from the same source pass.
    let out = ok(&c, &["block", "add", "203.0.113.0/24", "--class", "udp", "--source-port", "11211", "--ttl", "10m"]);
    assert!(out.contains("r2 drop 203.0.113.0/24 class udp sport 11211"), "{out}");
    let src = ["--src", "203.0.113.7"];
    let through = reaching_stack(&lab, || {
        send(&lab, &[&["--kind", "memcached-amplification", "--count", "300", "--rate", "20000"][..], &src].concat())
    });
    assert!(through <= 5, "{through} memcached replies got through");
    let through = reaching_stack(&lab, || {
        send(&lab, &[&["--kind", "udp", "--src-port", "5000", "--count", "300", "--rate", "20000"][..], &src].concat());
        send(&lab, &[&["--kind", "syn", "--count", "300", "--rate", "20000"][..], &src].concat());
    });
    assert!(through >= 600, "only {through} of 600 out-of-scope packets arrived");
    let v = rules(&c);
    assert_eq!(rule(&v, "r2")["dropped_packets"], 300, "{v}");
    assert!(rule(&v, "r2")["ttl_left_ms"].as_u64().unwrap() > 590_000, "{v}");

    // The host's own address is allowlisted: a rule on it is refused, naming the entry.
    let e = refused(&c, &["block", "add", TGT_V4], "is inside allowlist entry");
    assert!(e.contains(&format!("address of {}", lab.tgt_if)), "{e}");
    refused(&c, &["block", "add", "127.0.0.1"], "loopback");
    // An address the host gains while running is allowlisted within seconds.
    let out = std::process::Command::new("ip")
        .args(["-n", &lab.tgt_ns, "addr", "add", "192.0.2.77/24", "dev", &lab.tgt_if])
        .output()
        .unwrap();
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rules(&c)["allow"].as_array().unwrap().iter().any(|a| a["prefix"] == "192.0.2.77/32") {
        assert!(Instant::now() < deadline, "the new address was not allowlisted:\n{}", c.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    refused(&c, &["block", "add", "192.0.2.77"], "is inside allowlist entry");

    // The table, the metrics and promtool agree.
    let table = ok(&c, &["rules", "list"]);
    assert!(table.contains("r1") && table.contains("198.18.0.0/16") && table.contains("lab flood"), "{table}");
    assert!(table.contains("198.18.5.5/32") && table.contains("partner"), "{table}");
    let m = c.metrics_until("rule counters in the metrics", |m| {
        sample(m, "detector_rule_dropped_packets_total{rule=\"r1\"}") == 1000.0
    });
    let iface = &lab.tgt_if;
    assert_eq!(
        sample(&m, &format!("detector_dropped_packets_total{{iface=\"{iface}\",class=\"udp\",reason=\"rule\"}}")),
        1000.0
    );
    assert_eq!(
        sample(
            &m,
            &format!("detector_dropped_packets_total{{iface=\"{iface}\",class=\"udp_amplification\",reason=\"rule\"}}")
        ),
        300.0
    );
    assert_eq!(sample(&m, "detector_rule_passed_packets_total{rule=\"r1\"}"), 500.0);
    assert_eq!(sample(&m, "detector_rules{action=\"drop\"}"), 2.0);
    assert!(sample(&m, "detector_rules_refused_total{reason=\"allowlisted\"}") >= 2.0, "{m}");
    // Dropped packets are still counted in their class: detection sees them.
    assert!(common::packets(&m, iface, "udp") >= 2300, "{m}");
    let (good, said) = promtool_check(&m);
    assert!(good, "{said}");

    // Removing a rule lets its traffic through again, and its series go.
    assert!(ok(&c, &["rules", "remove", "r1"]).contains("removed r1"));
    let through = reaching_stack(&lab, || {
        send(&lab, &["--kind", "udp", "--count", "200", "--rate", "20000", "--src", "198.18.0.9"])
    });
    assert!(through >= 200, "{through}");
    c.metrics_until("r1's series removed", |m| !m.contains("rule=\"r1\""));
    refused(&c, &["rules", "remove", "r1"], "no rule or allowlist entry 'r1'");
}

#[test]
fn ttl_expiry_restores_traffic() {
    require_root!();
    let lab = Lab::new().unwrap();
    let c = Controller::start(&lab, &[]);
    ok(&c, &["block", "add", "198.18.0.0/24", "--ttl", "2s"]);
    let through = reaching_stack(&lab, || {
        send(&lab, &["--kind", "udp", "--count", "300", "--rate", "20000", "--src", "198.18.0.1"])
    });
    assert!(through <= 5, "{through}");
    std::thread::sleep(Duration::from_millis(2200));
    let through = reaching_stack(&lab, || {
        send(&lab, &["--kind", "udp", "--count", "300", "--rate", "20000", "--src", "198.18.0.1"])
    });
    assert!(through >= 300, "only {through} of 300 arrived after the TTL");
    let v = rules(&c);
    assert!(v["rules"].as_array().unwrap().is_empty(), "{v}");
    let m = c.metrics_until("the expiry counted", |m| sample(m, "detector_rules_expired_total") == 1.0);
    assert_eq!(sample(&m, "detector_rules{action=\"drop\"}"), 0.0);
}

#[test]
fn rules_survive_kill_9_and_a_restart_adopts_them() {
    require_root!();
    let lab = Lab::new().unwrap();
    let mut c = Controller::start(&lab, &[]);
    ok(&c, &["block", "add", "198.18.0.0/24"]);
    send(&lab, &["--kind", "udp", "--count", "400", "--rate", "20000", "--src", "198.18.0.1"]);
    let prog_before = xdp_attached(&lab.tgt_ns, &lab.tgt_if).unwrap().prog_id;
    assert!(!c.stop_with(libc::SIGKILL).success());

    // No controller: the pinned link and rules keep dropping.
    let (success, _, err) = cli(&c, &["rules", "list"]);
    assert!(!success && err.contains("no detector is running with the state directory"), "{err}");
    let through = reaching_stack(&lab, || {
        send(&lab, &["--kind", "udp", "--count", "400", "--rate", "20000", "--src", "198.18.0.1"])
    });
    assert!(through <= 5, "{through} datagrams got through with the controller dead");
    assert!(xdp_attached(&lab.tgt_ns, &lab.tgt_if).is_some());

    // A restart adopts the link: one program, the same rule, counters carried on.
    let mut c = Controller::start(&lab, &[]);
    assert!(c.log_text().contains("replaced in the pinned link"), "{}", c.log_text());
    let attached = xdp_attached(&lab.tgt_ns, &lab.tgt_if).unwrap();
    assert_ne!(attached.prog_id, prog_before, "the new controller's program runs");
    let v = rules(&c);
    assert_eq!(v["rules"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(rule(&v, "r1")["dropped_packets"], 800, "counted while dead too: {v}");
    send(&lab, &["--kind", "udp", "--count", "200", "--rate", "20000", "--src", "198.18.0.1"]);
    assert_eq!(rule(&rules(&c), "r1")["dropped_packets"], 1000);
    let out = ok(&c, &["block", "add", "198.51.100.0/24"]);
    assert!(out.contains("r2"), "ids carry on: {out}");

    // A normal stop keeps rules in force (the default)...
    assert!(c.stop_with(libc::SIGTERM).success());
    assert!(c.log_text().contains("stay in force"), "{}", c.log_text());
    assert!(xdp_attached(&lab.tgt_ns, &lab.tgt_if).is_some());
    let through = reaching_stack(&lab, || {
        send(&lab, &["--kind", "udp", "--count", "100", "--rate", "20000", "--src", "198.18.0.1"])
    });
    assert!(through <= 5, "{through}");
    // ...until `detector detach` removes everything.
    let out = detector_in(&lab.tgt_ns, &["detach", "--iface", &lab.tgt_if]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(xdp_attached(&lab.tgt_ns, &lab.tgt_if), None);
    let through = reaching_stack(&lab, || {
        send(&lab, &["--kind", "udp", "--count", "100", "--rate", "20000", "--src", "198.18.0.1"])
    });
    assert!(through >= 100, "{through}");

    // --on-stop detach: the stop removes program and rules.
    let mut c = Controller::start(&lab, &["--on-stop", "detach"]);
    assert_eq!(rules(&c)["rules"].as_array().unwrap().len(), 2, "the rules file outlived the detach");
    let out = detector_in(&lab.tgt_ns, &["detach", "--iface", &lab.tgt_if]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("a detector is running on"), "{err}");
    assert!(c.stop_with(libc::SIGTERM).success());
    assert_eq!(xdp_attached(&lab.tgt_ns, &lab.tgt_if), None);
    let c = Controller::start(&lab, &[]);
    assert!(rules(&c)["rules"].as_array().unwrap().is_empty());
}

#[test]
fn a_full_table_refuses_and_bad_input_is_named() {
    require_root!();
    let lab = Lab::new().unwrap();
    let config = lab.dir.join("small.yaml");
    std::fs::write(&config, "mitigation:\n  max_rules: 2\n").unwrap();
    let mut c = Controller::start(&lab, &["--config", config.to_str().unwrap()]);
    ok(&c, &["block", "add", "198.18.0.0/24"]);
    ok(&c, &["ratelimit", "add", "198.18.1.0/24", "--pps", "100"]);
    refused(&c, &["block", "add", "198.18.2.0/24"], "the rule table is full (2 rules)");
    let m =
        c.metrics_until("the refusal counted", |m| sample(m, "detector_rules_refused_total{reason=\"full\"}") == 1.0);
    assert_eq!(sample(&m, "detector_rule_table_capacity{table=\"rules\"}"), 2.0);
    assert!(c.log_text().contains("the rule table is full"), "logged too");
    // Nothing was evicted.
    assert_eq!(rules(&c)["rules"].as_array().unwrap().len(), 2);

    refused(&c, &["block", "add", "198.18.0.0/24"], "rule r1 already matches the same packets");
    refused(&c, &["block", "add", "10.0.0.1/8"], "has host bits set; did you mean 10.0.0.0/8?");
    refused(&c, &["block", "add", "300.0.0.0/8"], "'300.0.0.0' is not an IP address");
    refused(&c, &["block", "add", "10.0.0.0/40"], "at most 32");
    refused(&c, &["block", "add", "10.0.0.0/8", "--port", "0"], "port 0 cannot be matched");
    refused(&c, &["block", "add", "0.0.0.0/0", "--length", "80-60"], "the range 80-60 is inverted");
    refused(&c, &["block", "add", "0.0.0.0/0", "--length", ""], "is not a number or a range");
    refused(&c, &["block", "add", "0.0.0.0/0", "--ip-ttl", "50-300"], "300 is out of range (0 to 255)");
    refused(&c, &["block", "add", "0.0.0.0/0", "--class", "icmp", "--port", "80"], "the rule can match no packet");
    refused(&c, &["block", "add", "10.0.0.0/8", "--dst", "2001:db8::/32"], "of different IP families");
    refused(&c, &["ratelimit", "add", "0.0.0.0/0", "--aggregate", "--pps", "0"], "rate 0 packets per second");
    refused(&c, &["ratelimit", "add", "0.0.0.0/0", "--aggregate"], "an aggregate limit needs a rate");
    refused(&c, &["block", "add", "10.0.0.0/8", "--port", "70000"], "70000");
    refused(&c, &["block", "add", "10.0.0.0/8", "--ttl", "soon"], "'soon' is not a duration");
    refused(&c, &["block", "add", "10.0.0.0/8", "--class", "udpp"], "unknown traffic class 'udpp'");
    refused(&c, &["ratelimit", "add", "10.0.0.0/8", "--pps", "0"], "rate 0 packets per second is out of range");
    refused(&c, &["rules", "remove", "a1"], "cannot be removed");
    refused(&c, &["rules", "remove", "../x"], "is not a rule id");

    // With no controller on a state directory, the verbs say so.
    let other = lab.dir.join("nobody");
    std::fs::create_dir_all(&other).unwrap();
    let out = detector_in(&lab.tgt_ns, &["block", "add", "10.0.0.0/8", "--state-dir", other.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no detector is running with the state directory"), "{err}");
    // Pinned maps keep their sizes: a restart with other sizes is refused,
    // saying how to start afresh, and leaves the rules in force.
    assert!(c.stop_with(libc::SIGTERM).success());
    let dir = c.state_dir.to_str().unwrap().to_string();
    let out = detector_in(&lab.tgt_ns, &["run", "--iface", &lab.tgt_if, "--state-dir", &dir]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("are configured; run `detector detach --iface"), "{err}");
    assert!(xdp_attached(&lab.tgt_ns, &lab.tgt_if).is_some());
    // A bad allowlist in the configuration stops the start, naming the line.
    std::fs::write(&config, "mitigation:\n  allowlist:\n    - 10.1.2.3/8\n").unwrap();
    let out = detector_in(&lab.tgt_ns, &["run", "--iface", &lab.tgt_if, "--config", config.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("small.yaml:3:5") && err.contains("10.0.0.0/8"), "{err}");
}

/// Receives UDP on `port` in namespace `ns` until `until`, counting
/// datagrams per source address. Returns the counts and the time from the
/// first datagram to the last.
fn receive(ns: &str, port: u16, until: Instant) -> (HashMap<Ipv4Addr, u64>, Duration) {
    let _in = NetnsGuard::enter(ns).unwrap();
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).unwrap();
    let size: libc::c_int = 32 << 20;
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &size as *const _ as *const libc::c_void,
            4,
        );
    }
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut counts = HashMap::new();
    let mut buf = [0u8; 2048];
    let (mut first, mut last) = (None, Instant::now());
    while Instant::now() < until {
        if let Ok((_, from)) = sock.recv_from(&mut buf) {
            let now = Instant::now();
            first.get_or_insert(now);
            last = now;
            if let std::net::IpAddr::V4(a) = from.ip() {
                *counts.entry(a).or_insert(0) += 1;
            }
        }
    }
    (counts, first.map(|f| last - f).unwrap_or_default())
}

#[test]
fn a_rate_limit_admits_its_rate_per_source() {
    require_root!();
    let lab = Lab::new().unwrap();
    let c = Controller::start(&lab, &[]);
    let pps = 50;
    ok(&c, &["ratelimit", "add", "198.18.0.0/16", "--pps", &pps.to_string(), "--burst", "5", "--class", "udp"]);
    let mac = lab.tgt_mac().unwrap().iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let port = 9999;
    let until = Instant::now() + Duration::from_secs(5);
    let recv = {
        let ns = lab.tgt_ns.clone();
        std::thread::spawn(move || receive(&ns, port, until))
    };
    std::thread::sleep(Duration::from_millis(300));
    // 1,000 sources, as fast as the fast engine goes, for 3 s.
    let out = detector_in(
        &lab.gen_ns,
        &[
            "flood",
            "--iface",
            &lab.gen_if,
            "--dst",
            TGT_V4,
            "--dst-mac",
            &mac,
            "--dst-port",
            &port.to_string(),
            "--kind",
            "udp",
            "--rate",
            "max",
            "--duration",
            "3s",
            "--src",
            "198.18.0.0/16",
            "--sources",
            "1000",
            "--engine",
            "fast",
        ],
    );
    let report = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    let (counts, window) = recv.join().unwrap();
    let v = rules(&c);
    let r = rule(&v, "r1");
    let (dropped, passed) = (r["dropped_packets"].as_u64().unwrap(), r["passed_packets"].as_u64().unwrap());
    let offered_pps = (dropped + passed) as f64 / 3.0;
    eprintln!("offered {offered_pps:.0} pps from 1000 sources; admitted {passed}, dropped {dropped}; window {window:?}; flood: {report}");
    assert_eq!(counts.len(), 1000, "every source got some through");
    let expect = pps as f64 * window.as_secs_f64() + 5.0;
    let mut worst: f64 = 0.0;
    for (src, n) in &counts {
        let err = (*n as f64 - expect) / expect;
        worst = worst.max(err.abs());
        assert!(err.abs() <= 0.10, "{src}: {n} admitted, {expect:.0} expected (±10%)");
    }
    eprintln!("worst per-source deviation {:.1}%", worst * 100.0);
    let total: u64 = counts.values().sum();
    assert!((total as f64 - passed as f64).abs() / (passed as f64) < 0.02, "socket got {total}, rule passed {passed}");
}

/// Rules on what a spoofed flood's packets have in common (class, port,
/// length, destination), not on their sources; and an aggregate limit, one
/// budget for every source together. Counted at the target's stack.
#[test]
fn signature_rules_and_aggregate_limits() {
    require_root!();
    let lab = Lab::new().unwrap();
    let c = Controller::start(&lab, &[]);
    let out = ok(&c, &["block", "add", "0.0.0.0/0", "--class", "udp", "--dport", "27015", "--length", "100-200"]);
    assert!(out.contains("r1 drop 0.0.0.0/0 class udp dport 27015 len 100-200"), "{out}");
    let flood = |port: &str, size: &str, count: &str| {
        let args =
            ["--kind", "udp", "--count", count, "--rate", "50000", "--src", "198.18.0.0/16", "--sources", "5000"];
        reaching_stack(&lab, || send(&lab, &[&args[..], &["--dst-port", port, "--size", size]].concat()))
    };
    // 5,000 spoofed sources, the signature's port and length: dropped.
    let through = flood("27015", "150", "5000");
    assert!(through <= 50, "{through} of 5000 flood datagrams got through (at most 1% may)");
    // The same sources to another port, or with another length: untouched.
    assert!(flood("27016", "150", "1000") >= 1000, "another port passes");
    assert!(flood("27015", "300", "1000") >= 1000, "another length passes");
    let v = rules(&c);
    assert_eq!(rule(&v, "r1")["dropped_packets"], 5000, "{v}");
    assert_eq!(rule(&v, "r1")["length"], "100-200", "{v}");

    // A destination prefix: only floods to it match.
    let other =
        ok(&c, &["block", "add", "0.0.0.0/0", "--class", "udp", "--dport", "27016", "--dst", "198.51.100.0/24"]);
    assert!(other.contains("dst 198.51.100.0/24"), "{other}");
    assert!(flood("27016", "150", "500") >= 500, "the lab's target is not in 198.51.100.0/24");
    ok(&c, &["rules", "remove", "r2"]);
    let tgt = format!("{TGT_V4}/32");
    ok(&c, &["block", "add", "0.0.0.0/0", "--class", "udp", "--dport", "27016", "--dst", &tgt]);
    assert!(flood("27016", "150", "500") <= 5, "a flood at the rule's destination is dropped");

    // One budget for all sources: 2,000 packets per second with a burst of
    // 200, whatever the number of sources.
    let out = ok(
        &c,
        &[
            "ratelimit",
            "add",
            "0.0.0.0/0",
            "--aggregate",
            "--pps",
            "2000",
            "--burst",
            "200",
            "--class",
            "udp",
            "--dport",
            "27017",
        ],
    );
    assert!(out.contains("aggregate_limit 0.0.0.0/0 class udp dport 27017 2000/s burst 200"), "{out}");
    let started = Instant::now();
    let through = flood("27017", "150", "20000");
    let secs = started.elapsed().as_secs_f64();
    // 20,000 datagrams at 50,000/s take 0.4 s or more: at most the burst
    // and 2,000 a second for the time the flood ran (with a tick of slack).
    let most = 200.0 + 2000.0 * (secs + 0.02);
    eprintln!("aggregate: {through} of 20000 admitted in {secs:.2} s (at most {most:.0})");
    assert!((through as f64) <= most, "{through} admitted, more than {most:.0}");
    assert!(through >= 200 + 2000 * 4 / 10 - 100, "{through} admitted: the budget was not granted");
}

/// The egress program learns the peers the host talks to; a rule on every
/// source (a signature) lets them through, a rule on their own prefix does
/// not.
#[test]
fn known_good_peers_pass_signature_rules() {
    require_root!();
    let lab = Lab::new().unwrap();
    let c = Controller::start(&lab, &[]);
    // The host sends a few datagrams to a server on the generator's side,
    // from an ephemeral port: its own conversation.
    {
        let ns = lab.tgt_ns.clone();
        std::thread::spawn(move || {
            let _in = NetnsGuard::enter(&ns).unwrap();
            let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            for _ in 0..3 {
                sock.send_to(b"query", (GEN_V4.parse::<Ipv4Addr>().unwrap(), 4000)).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .join()
        .unwrap();
    }
    let m = c.metrics_until("the peer learned", |m| {
        sample(m, &format!("detector_known_peers_learned{{iface=\"{}\"}}", lab.tgt_if)) >= 1.0
    });
    assert_eq!(sample(&m, &format!("detector_known_peers_learning{{iface=\"{}\"}}", lab.tgt_if)), 1.0);

    ok(&c, &["block", "add", "0.0.0.0/0", "--class", "udp", "--dport", "27015"]);
    let flood = |src: &str, sources: &str| {
        let args = ["--kind", "udp", "--count", "500", "--rate", "20000", "--dst-port", "27015"];
        reaching_stack(&lab, || send(&lab, &[&args[..], &["--src", src, "--sources", sources]].concat()))
    };
    assert!(flood("198.18.0.0/16", "500") <= 5, "spoofed sources are dropped");
    assert!(flood(GEN_V4, "1") >= 500, "the known peer passes the signature rule");
    let v = rules(&c);
    assert_eq!(rule(&v, "r1")["passed_packets"], 500, "{v}");
    assert_eq!(rule(&v, "r1")["dropped_packets"], 500, "{v}");
    // A rule on the peer's own address applies to it.
    ok(&c, &["block", "add", &format!("{GEN_V4}/32"), "--class", "udp", "--dport", "27015"]);
    assert!(flood(GEN_V4, "1") <= 5, "a rule naming the source drops it, known or not");
}
