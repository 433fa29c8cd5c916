//! `detector flood` as a user runs it: exact counts with the exact engine,
//! millions of sources with the fast one, frames the target's own kernel
//! accepts (checksums right after every source rewrite), clear refusals.

mod common;

use std::time::Duration;

use common::{detector_in, packets, require_root, Controller, Lab};

fn flood_json(lab: &Lab, args: &[&str]) -> serde_json::Value {
    let mut full = vec!["flood", "--iface", &lab.gen_if, "--json"];
    full.extend_from_slice(args);
    let out = detector_in(&lab.gen_ns, &full);
    assert!(out.status.success(), "flood {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("a JSON report")
}

#[test]
fn the_exact_engine_delivers_every_frame_from_many_sources() {
    require_root!();
    let lab = Lab::new().unwrap();
    let c = Controller::start(&lab, &[]);
    let r = flood_json(
        &lab,
        &[
            "--kind",
            "dns-response",
            "--dst",
            "192.0.2.2",
            "--src",
            "198.18.0.0/16",
            "--sources",
            "1000",
            "--spread",
            "seq",
            "--count",
            "5000",
            "--rate",
            "25000",
        ],
    );
    assert_eq!(r["engine"], "exact");
    assert_eq!(r["sent"], 5000);
    let iface = lab.tgt_if.clone();
    c.metrics_until("5000 dns responses", |m| packets(m, &iface, "dns_response") >= 5000);
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(packets(&c.metrics(), &iface, "dns_response"), 5000);
}

#[test]
fn the_fast_engine_sends_what_it_reports() {
    require_root!();
    let lab = Lab::new().unwrap();
    let c = Controller::start(&lab, &[]);
    let r = flood_json(
        &lab,
        &["--kind", "udp", "--dst", "192.0.2.2", "--src", "10.0.0.0/8", "--count", "300000", "--rate", "max"],
    );
    assert_eq!(r["engine"], "fast");
    assert_eq!(r["sent"], 300_000);
    let iface = lab.tgt_if.clone();
    // A flood at full speed may lose frames on the way (that is what a
    // flood does); the counter never shows more than was sent.
    let m = c.metrics_until("most of the flood", |m| packets(m, &iface, "udp") >= 150_000);
    std::thread::sleep(Duration::from_millis(150));
    let counted = packets(&c.metrics(), &iface, "udp");
    assert!(counted <= 300_000, "{counted} counted of 300000 sent\n{m}");

    // A paced fast flood keeps its rate.
    let r = flood_json(
        &lab,
        &["--kind", "syn", "--dst", "192.0.2.2", "--duration", "1s", "--rate", "200000", "--engine", "fast"],
    );
    let pps = r["pps"].as_f64().unwrap();
    assert!((160_000.0..=240_000.0).contains(&pps), "paced at {pps} pps");
}

/// The target kernel's own SNMP counters (`/proc/net/snmp`), read from a
/// thread inside its namespace: (protocol, field) -> value.
fn snmp(lab: &Lab) -> std::collections::HashMap<(String, String), i64> {
    let ns = lab.tgt_ns.clone();
    std::thread::spawn(move || {
        let _in = detector::netns::NetnsGuard::enter(&ns).unwrap();
        let text = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut out = std::collections::HashMap::new();
        for pair in lines.chunks(2) {
            let (Some(h), Some(v)) = (pair.first(), pair.get(1)) else { continue };
            let proto = h.split(':').next().unwrap().to_string();
            for (k, val) in h.split_whitespace().skip(1).zip(v.split_whitespace().skip(1)) {
                out.insert((proto.clone(), k.to_string()), val.parse().unwrap_or(0));
            }
        }
        out
    })
    .join()
    .unwrap()
}

#[test]
fn rewritten_sources_keep_every_checksum_valid() {
    require_root!();
    let lab = Lab::new().unwrap();
    // Live frames out of a veth reach the peer only when the peer runs XDP
    // (or has GRO on); the detector passes every frame on to the stack.
    let _c = Controller::start(&lab, &[]);
    let mac = lab.tgt_mac().unwrap();
    let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let get =
        |m: &std::collections::HashMap<(String, String), i64>, p: &str, k: &str| m[&(p.to_string(), k.to_string())];
    // Sources inside the lab subnet, so reverse-path filtering keeps them.
    for engine in ["fast", "exact"] {
        let before = snmp(&lab);
        for kind in ["udp", "syn"] {
            let r = flood_json(
                &lab,
                &[
                    "--kind",
                    kind,
                    "--dst",
                    "192.0.2.2",
                    "--dst-mac",
                    &mac,
                    "--src",
                    "192.0.2.128/25",
                    "--spread",
                    "random",
                    "--count",
                    "4000",
                    "--rate",
                    "20000",
                    "--engine",
                    engine,
                ],
            );
            assert_eq!(r["sent"], 4000);
        }
        std::thread::sleep(Duration::from_millis(300));
        let after = snmp(&lab);
        let d = |p: &str, k: &str| get(&after, p, k) - get(&before, p, k);
        assert_eq!(d("Ip", "InHdrErrors"), 0, "{engine}: IPv4 header checksum errors");
        assert_eq!(d("Udp", "InCsumErrors"), 0, "{engine}: UDP checksum errors");
        assert_eq!(d("Tcp", "InCsumErrors"), 0, "{engine}: TCP checksum errors");
        // Port 9 is closed: every UDP datagram is a no-port; every SYN a segment.
        assert!(d("Udp", "NoPorts") >= 3600, "{engine}: only {} UDP datagrams accepted", d("Udp", "NoPorts"));
        assert!(d("Tcp", "InSegs") >= 3600, "{engine}: only {} TCP segments accepted", d("Tcp", "InSegs"));
    }
}

fn refused(lab: &Lab, args: &[&str], expect: &str) {
    let mut full = vec!["flood", "--iface", &lab.gen_if];
    full.extend_from_slice(args);
    let out = detector_in(&lab.gen_ns, &full);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(err.contains(expect), "{args:?}: expected {expect:?} in:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_flood_input_is_refused_clearly() {
    require_root!();
    let lab = Lab::new().unwrap();
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v: Vec<&'static str> = vec!["--dst", "192.0.2.2", "--count", "1"];
        v.extend_from_slice(extra);
        v
    };
    refused(&lab, &with(&["--kind", "smurf"]), "'smurf' is not a flood kind");
    refused(&lab, &with(&["--kind", "udp", "--rate", "0"]), "'0' is not a rate");
    refused(&lab, &with(&["--kind", "udp", "--src", "10.0.0/8x"]), "--src '10.0.0/8x' is not an address or a CIDR");
    refused(&lab, &with(&["--kind", "udp", "--src", "2001:db8::/64"]), "are not the same IP version");
    refused(&lab, &with(&["--kind", "udp", "--size", "9000"]), "--size 9000 is over the 1518-byte limit");
    refused(&lab, &with(&["--kind", "udp", "--size", "30"]), "is too small");
    refused(
        &lab,
        &with(&["--kind", "udp", "--src", "198.18.0.0/24", "--sources", "1000"]),
        "more than the 256 addresses",
    );
    refused(&lab, &with(&["--kind", "udp", "--heavy", "10"]), "is not N:PERCENT");
    refused(&lab, &with(&["--kind", "udp", "--dst-mac", "02:00"]), "is not a MAC address");
    refused(&lab, &["--kind", "arp", "--dst", "2001:db8::2", "--count", "1"], "needs IPv4");
    refused(&lab, &["--kind", "udp", "--dst", "192.0.2.2"], "--count");
    let out = detector_in(
        &lab.gen_ns,
        &["flood", "--iface", "nosuch0", "--kind", "udp", "--dst", "192.0.2.2", "--count", "1"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("interface 'nosuch0' does not exist"));
}
