//! Spoofed floods from a real tool (hping3) against real UDP services, and
//! the operator's signature rule (`detector block add 0.0.0.0/0 --class ...
//! --dport/--sport ... --length ...`) that must drop the flood in XDP while
//! the service's real users keep working.
//!
//! Both ends live in namespaces of their own with no default route: the
//! target's kernel answers spoofed sources (echoes, ICMP errors), and with
//! no route those answers go nowhere. Reverse-path filtering is off on the
//! target, so without a rule the flood reaches its stack, as on a host with
//! a default route. What reached the target is counted by its own kernel
//! (`/proc/net/snmp`, UDP datagrams that got to the UDP layer) and by the
//! server's socket, not by the detector.

mod common;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use common::{ok, require_root, rules, Controller, Lab};
use detector::lab::{
    counters::NetCounters,
    hping3::{Hping3, Hping3Report},
    udp::{Reply, UdpClient, UdpServer},
    GEN_V4, TGT_V4,
};

/// A second host on the generator's side: the legitimate client, which
/// sends from its own, real address.
const CLIENT_V4: &str = "192.0.2.10";
/// How long a flood runs with no rule, to show it reaches the stack.
const BASELINE: Duration = Duration::from_millis(1500);
/// From stopping a flood to reading the counters: frames still in flight.
const SETTLE: Duration = Duration::from_millis(200);
/// A measured flood must be a flood: at least this many packets sent, or
/// a share of 1% or 0.1% says little.
const MIN_FLOOD: u64 = 10_000;

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn ip(a: &str) -> IpAddr {
    IpAddr::V4(a.parse::<Ipv4Addr>().unwrap())
}

/// The lab for a spoofed flood: spoofed sources accepted by the target's
/// stack, a controller on the target end.
fn lab() -> (Lab, Controller) {
    let lab = Lab::new().unwrap();
    lab.accept_spoofed_sources().unwrap();
    let c = Controller::start(&lab, &[]);
    (lab, c)
}

fn hping3(lab: &Lab, args: &[&str]) -> Hping3 {
    Hping3::start(&lab.gen_ns, args).unwrap_or_else(|e| panic!("{e}"))
}

fn stopped(h: Hping3) -> Hping3Report {
    h.stop().unwrap_or_else(|e| panic!("{e}"))
}

/// Runs the flood for [`BASELINE`] with no rule in force, and checks that
/// most of it reaches the target's UDP layer: otherwise the measurement
/// with the rule would prove nothing (a lab that drops spoofed sources by
/// itself, say).
fn baseline(lab: &Lab, flood: &[&str]) {
    let before = NetCounters::read(&lab.tgt_ns).unwrap();
    let h = hping3(lab, flood);
    std::thread::sleep(BASELINE);
    let r = stopped(h);
    std::thread::sleep(SETTLE);
    let reached = NetCounters::read(&lab.tgt_ns).unwrap().since(&before).udp_received();
    let share = reached as f64 / r.sent.max(1) as f64;
    eprintln!(
        "no rule: hping3 sent {} packets in {:.2?} ({:.0} pps); {reached} reached the target's UDP layer ({:.1}%)",
        r.sent,
        r.elapsed,
        r.pps(),
        share * 100.0
    );
    // Random sources include martians (multicast, 0/8, 127/8: about 13%),
    // which the stack drops before UDP; a veth under a flood may drop some.
    assert!(share >= 0.5, "without a rule only {reached} of {} datagrams reached the stack:\n{}", r.sent, r.output);
}

/// The newest rule, as `detector rules list --json` shows it.
fn last_rule(c: &Controller) -> serde_json::Value {
    let v = rules(c);
    v["rules"].as_array().and_then(|r| r.last().cloned()).unwrap_or_else(|| panic!("no rule in {v}"))
}

#[test]
fn a_spoofed_flood_on_a_game_port_is_dropped_by_its_signature_while_a_player_keeps_playing() {
    require_root!();
    // Each floods at full speed: two at once lose each other's measured traffic.
    let _serial = common::serial();
    let (lab, c) = lab();
    lab.add_addr(&lab.gen_ns, &lab.gen_if, &format!("{CLIENT_V4}/24")).unwrap();
    let port = 27015;
    let server = UdpServer::start(&lab.tgt_ns, addr("0.0.0.0", port), Reply::Echo).unwrap();
    // The player, on the game's client port, from its own address.
    let player = UdpClient::bind(&lab.gen_ns, addr(CLIENT_V4, 27005), addr(TGT_V4, port)).unwrap();
    // 64 bytes of payload: 106-byte frames, inside the rule's length span.
    // The player gets through as a known-good peer (the host answered it
    // before the flood), not by its size.
    let payload = 64;

    // Playing before the flood.
    let warm = player.exchange(5, 50.0, payload, Duration::from_millis(500)).unwrap();
    assert_eq!((warm.sent, warm.answered), (5, 5), "the player was not answered before the flood: {warm:?}");

    let port_s = port.to_string();
    let flood = ["--udp", "--flood", "--rand-source", "-p", &port_s, "-d", "100", TGT_V4];
    baseline(&lab, &flood);

    // The operator's signature: UDP to the game port, 60-200 byte frames
    // (hping3's are 142), from anywhere.
    let out = ok(&c, &["block", "add", "0.0.0.0/0", "--class", "udp", "--dport", &port_s, "--length", "60-200"]);
    eprintln!("{}", out.trim());

    // The flood again; the player sends 2,000 datagrams at 1,000/s through it.
    let before = NetCounters::read(&lab.tgt_ns).unwrap();
    let at_server = server.stats();
    let h = hping3(&lab, &flood);
    std::thread::sleep(Duration::from_millis(200));
    let ex = player.exchange(2000, 1000.0, payload, Duration::from_millis(500)).unwrap();
    let r = stopped(h);
    std::thread::sleep(SETTLE);
    let delta = NetCounters::read(&lab.tgt_ns).unwrap().since(&before);
    let now_at_server = server.stats();

    let player_in = now_at_server.count_from(ip(CLIENT_V4)) - at_server.count_from(ip(CLIENT_V4));
    let flood_at_socket = now_at_server.total_except(ip(CLIENT_V4)) - at_server.total_except(ip(CLIENT_V4));
    let flood_in = delta.udp_received() - player_in as i64;
    let share = flood_in as f64 / r.sent.max(1) as f64;
    eprintln!(
        "rule in: hping3 sent {} packets in {:.2?} ({:.0} pps); {flood_in} of them reached the target's UDP layer \
         ({:.3}%), {flood_at_socket} the server's socket",
        r.sent,
        r.elapsed,
        r.pps(),
        share * 100.0
    );
    eprintln!(
        "player: sent {}, {player_in} reached the server, {} answered (slowest {:.1?}); rule: {}",
        ex.sent,
        ex.answered,
        ex.max_rtt,
        last_rule(&c)
    );
    assert!(r.sent >= MIN_FLOOD, "hping3 sent only {} packets:\n{}", r.sent, r.output);
    assert!(share <= 0.01, "{flood_in} of {} flood datagrams reached the target's stack (more than 1%)", r.sent);
    assert_eq!(ex.sent, 2000, "{ex:?}");
    assert!(
        player_in * 100 >= ex.sent * 99,
        "only {player_in} of the player's {} datagrams reached the server",
        ex.sent
    );
    assert!(ex.answered * 100 >= ex.sent * 99, "the player got only {} answers to {}: {ex:?}", ex.answered, ex.sent);
}

#[test]
fn an_ntp_reflection_flood_is_dropped_by_its_signature_while_the_hosts_own_ntp_queries_are_answered() {
    require_root!();
    // Each floods at full speed: two at once lose each other's measured traffic.
    let _serial = common::serial();
    let (lab, c) = lab();
    // A time server on the generator's side, answering 48 bytes (90-byte
    // frames) to each query, and the target's own NTP client.
    let ntp = UdpServer::start(&lab.gen_ns, addr(GEN_V4, 123), Reply::Sized(48)).unwrap();
    let client = UdpClient::bind(&lab.tgt_ns, addr(TGT_V4, 0), ntp.addr()).unwrap();
    let warm = client.exchange(3, 10.0, 48, Duration::from_millis(500)).unwrap();
    assert_eq!((warm.sent, warm.answered), (3, 3), "no time before the flood: {warm:?}");

    // Reflected NTP: from port 123, 440 bytes of payload (482-byte frames),
    // to ever-changing ports from 1024 up, from random reflectors.
    let flood = ["--udp", "--flood", "--rand-source", "-s", "123", "-k", "-p", "++1024", "-d", "440", TGT_V4];
    baseline(&lab, &flood);

    let out = ok(
        &c,
        &["block", "add", "0.0.0.0/0", "--class", "udp_amplification", "--sport", "123", "--length", "400-1500"],
    );
    eprintln!("{}", out.trim());

    // The flood again; the client asks the time 5 times a second through it.
    let before = NetCounters::read(&lab.tgt_ns).unwrap();
    let h = hping3(&lab, &flood);
    std::thread::sleep(Duration::from_millis(200));
    let ex = client.exchange(12, 5.0, 48, Duration::from_millis(500)).unwrap();
    let r = stopped(h);
    std::thread::sleep(SETTLE);
    let delta = NetCounters::read(&lab.tgt_ns).unwrap().since(&before);

    // The client's answers are the only UDP the target should take in.
    let flood_in = delta.udp_received() - ex.from_peer as i64;
    let share = flood_in as f64 / r.sent.max(1) as f64;
    eprintln!(
        "rule in: hping3 sent {} packets in {:.2?} ({:.0} pps); {flood_in} of them reached the target's UDP layer \
         ({:.4}%), {} the client's socket",
        r.sent,
        r.elapsed,
        r.pps(),
        share * 100.0,
        ex.from_others
    );
    eprintln!(
        "ntp client: {} queries, {} answered (slowest {:.1?}); rule: {}",
        ex.sent,
        ex.answered,
        ex.max_rtt,
        last_rule(&c)
    );
    assert!(r.sent >= MIN_FLOOD, "hping3 sent only {} packets:\n{}", r.sent, r.output);
    assert!(share <= 0.001, "{flood_in} of {} reflected datagrams reached the target's stack (more than 0.1%)", r.sent);
    assert_eq!(ex.sent, 12, "{ex:?}");
    assert_eq!(ex.answered, ex.sent, "answers lost under the rule: {ex:?}");
}

/// The harness itself: a flood running when a test panics is stopped and
/// reaped, and the lab is removed, by unwinding alone.
#[test]
fn a_panicking_test_leaves_no_flood_and_no_lab() {
    require_root!();
    // Each floods at full speed: two at once lose each other's measured traffic.
    let _serial = common::serial();
    let (pid, namespaces) = {
        let (tx, rx) = std::sync::mpsc::channel();
        let result = std::panic::catch_unwind(move || {
            let lab = Lab::new().unwrap();
            let h = hping3(&lab, &["--udp", "--flood", "-p", "9", TGT_V4]);
            tx.send((h.pid().unwrap(), [lab.gen_ns.clone(), lab.tgt_ns.clone()])).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            panic!("a failed assertion while the flood runs");
        });
        assert!(result.is_err());
        rx.recv().unwrap()
    };
    // Reaped: no process, not even a zombie, under that pid (the pid could
    // be reused, but not by an hping3 this soon).
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_ne!(comm.trim(), "hping3", "hping3 (pid {pid}) outlived the test");
    let listed = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    for ns in namespaces {
        assert!(!listed.contains(&ns), "namespace {ns} outlived the test");
    }
}

/// Floors low enough that any flood is one (5,000 pps of ACKs), and below
/// what a bulk TCP transfer sends (a download's ACKs too, fewer with GRO):
/// the transfer must still open nothing, because its segments belong to a
/// conversation the host knows.
const ACK_FLOOR: f64 = 5_000.0;
const BULK_CONFIG: &str = "\
detection:
  hold: 200ms
  quiet: 1s
  baseline: { warmup: 1h }
  families:
    ack_flood: { pps: 5000 }
    syn_flood: { pps: 20000 }
    udp_flood: { pps: 20000 }
";

fn incidents(c: &Controller) -> Vec<serde_json::Value> {
    let (code, body) = common::http_get(&c.ns, "/api/incidents").unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["incidents"].as_array().unwrap().clone()
}

fn tcp_ack_pps(c: &Controller, iface: &str, class: &str, secs: f64, before: u64) -> (u64, f64) {
    let now = common::packets(&c.metrics(), iface, class);
    (now, (now - before) as f64 / secs)
}

#[test]
fn bulk_tcp_is_not_an_ack_flood_but_a_spoofed_ack_flood_is() {
    require_root!();
    // Each floods at full speed: two at once lose each other's measured traffic.
    let _serial = common::serial();
    let lab = Lab::new().unwrap();
    lab.accept_spoofed_sources().unwrap();
    let cfg = lab.dir.join("bulk.yaml");
    std::fs::write(&cfg, BULK_CONFIG).unwrap();
    let c = Controller::start(&lab, &["--config", cfg.to_str().unwrap()]);
    let iperf3 = detector::lab::find_program("iperf3").expect("iperf3 (cargo xtask test installs it)");
    let supervision = detector::lab::process::Supervision { die_with_parent: true, cancel: None };
    let _server =
        detector::lab::process::Background::spawn_in(&lab.tgt_ns, &iperf3, &["-s", "-B", TGT_V4], supervision).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut established = 0;
    for (what, extra) in [("upload", &[][..]), ("download", &["-R"][..]), ("8 parallel streams", &["-P", "8"][..])] {
        let before = common::packets(&c.metrics(), &lab.tgt_if, "tcp_established");
        let mut args = vec!["-c", TGT_V4, "-t", "3", "-J"];
        args.extend(extra);
        let out = Lab::command_in(&lab.gen_ns, &iperf3).args(&args).output().unwrap();
        assert!(out.status.success(), "iperf3 {what}: {}", String::from_utf8_lossy(&out.stdout));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let gbps = report["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9;
        let (_, pps) = tcp_ack_pps(&c, &lab.tgt_if, "tcp_established", 3.0, before);
        eprintln!("iperf3 {what}: {gbps:.1} Gbit/s; {pps:.0} pps of segments from a known peer at the target");
        assert!(pps > ACK_FLOOR, "{what}: the transfer is not bulk enough to prove anything ({pps:.0} pps)");
        established = established.max(pps as u64);
        let open = incidents(&c);
        assert!(
            open.is_empty(),
            "{what} opened an incident: {open:?}\n{}\npeers: {}\n{}",
            c.log_text(),
            String::from_utf8_lossy(
                &common::detector_in(&c.ns, &["peers", "list", "--state-dir", c.state_dir.to_str().unwrap()]).stdout
            ),
            c.metrics()
                .lines()
                .filter(|l| l.contains("peer") || l.contains("tcp_ack") || l.contains("tcp_established"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // A spoofed ACK flood (random sources, no conversation): ack_flood.
    let h = Hping3::start(&lab.gen_ns, &["-A", "--flood", "--rand-source", "-p", "5201", TGT_V4]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let inc = loop {
        if let Some(i) = incidents(&c).into_iter().next() {
            break i;
        }
        assert!(std::time::Instant::now() < deadline, "no incident for a spoofed ACK flood");
        std::thread::sleep(Duration::from_millis(50));
    };
    let r = h.stop().unwrap();
    eprintln!(
        "hping3 ACK flood: {:.0} pps (the bulk transfers peaked at {established} pps); incident {}",
        r.pps(),
        inc["families"]
    );
    assert_eq!(inc["families"], serde_json::json!(["ack_flood"]), "{inc}");
}

/// Static floors a lab generator passes (a real attack is larger), a short
/// quiet period: the shipped runbooks then act as on a real host.
const SHIPPED_CONFIG: &str = "\
detection:
  hold: 200ms
  quiet: 3s
  baseline: { warmup: 1h }
  families:
    udp_flood: { pps: 10000 }
";

/// Waits for a rule `runbook` installed on every source; returns it.
fn runbook_rule(c: &Controller, runbook: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = rules(c);
        let found = v["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["origin"]["runbook"] == runbook && r["prefix"] == "0.0.0.0/0")
            .cloned();
        if let Some(r) = found {
            return r;
        }
        assert!(std::time::Instant::now() < deadline, "{runbook} installed no signature rule: {v}\n{}", c.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A measured flood: `flood` while `during` runs, counted at the target's
/// UDP layer; returns (flood datagrams that got in, sent) and `during`'s result.
fn measured<T>(lab: &Lab, flood: &[&str], others: impl Fn() -> i64, during: impl FnOnce() -> T) -> (i64, u64, T) {
    let before = NetCounters::read(&lab.tgt_ns).unwrap();
    let others_before = others();
    let h = hping3(lab, flood);
    std::thread::sleep(Duration::from_millis(200));
    let out = during();
    let r = stopped(h);
    std::thread::sleep(SETTLE);
    let delta = NetCounters::read(&lab.tgt_ns).unwrap().since(&before);
    let got_in = delta.udp_received() - (others() - others_before);
    eprintln!(
        "hping3 {flood:?}: {} sent ({:.0} pps), {got_in} reached the target's UDP layer ({:.4}%)",
        r.sent,
        r.pps(),
        got_in as f64 * 100.0 / r.sent.max(1) as f64
    );
    assert!(r.sent >= MIN_FLOOD, "hping3 sent only {} packets:\n{}", r.sent, r.output);
    (got_in, r.sent, out)
}

/// The table, measured again: with the shipped runbooks alone, a
/// spoofed UDP flood and an NTP reflection are dropped in XDP by their
/// signatures, while a player who talked to the game server before goes on
/// playing, the host's own NTP queries are answered, and a benign
/// background loses nothing.
#[test]
fn the_shipped_runbooks_stop_a_spoofed_udp_flood_and_a_reflection() {
    require_root!();
    // Each floods at full speed: two at once lose each other's measured traffic.
    let _serial = common::serial();
    let lab = Lab::new().unwrap();
    lab.accept_spoofed_sources().unwrap();
    lab.add_addr(&lab.gen_ns, &lab.gen_if, &format!("{CLIENT_V4}/24")).unwrap();
    let (c, rx) = common::shipped_runbooks(&lab, SHIPPED_CONFIG, 18081, "s3cret");

    // The benign background: 1,000 datagrams a second to another service,
    // from one address, all through the test.
    let bg_server = UdpServer::start(&lab.tgt_ns, addr("0.0.0.0", 5353), Reply::None).unwrap();
    let bg_count = 40_000u64;
    let bg = common::background_udp(&lab, "203.0.113.5", 5353, bg_count, 1000);
    let background = || bg_server.stats().count_from(ip("203.0.113.5")) as i64;

    // The game server and a player who played before the attack.
    let server = UdpServer::start(&lab.tgt_ns, addr("0.0.0.0", 27015), Reply::Echo).unwrap();
    let player = UdpClient::bind(&lab.gen_ns, addr(CLIENT_V4, 27005), addr(TGT_V4, 27015)).unwrap();
    let warm = player.exchange(5, 50.0, 64, Duration::from_millis(500)).unwrap();
    assert_eq!(warm.answered, 5, "{warm:?}");
    std::thread::sleep(Duration::from_secs(2));

    // 1. A spoofed UDP flood on the game port until the runbook acts.
    let flood = ["--udp", "--flood", "--rand-source", "-p", "27015", "-d", "100", TGT_V4];
    let h = hping3(&lab, &flood);
    let rule = runbook_rule(&c, "udp-flood-auto-response");
    eprintln!("udp-flood-auto-response: {rule}");
    drop(stopped(h));
    std::thread::sleep(Duration::from_millis(300));
    for r in rules(&c)["rules"].as_array().unwrap() {
        eprintln!("rule in force: {r}");
    }
    let inc = incidents(&c);
    eprintln!("top sources: {}", inc.last().map(|i| i["top_sources"].to_string()).unwrap_or_default());
    let player_in = || server.stats().count_from(ip(CLIENT_V4)) as i64;
    let others = || background() + player_in();
    let (got_in, sent, ex) =
        measured(&lab, &flood, others, || player.exchange(1000, 500.0, 64, Duration::from_millis(500)).unwrap());
    assert!(got_in as f64 <= sent as f64 * 0.01, "{got_in} of {sent} flood datagrams reached the stack");
    assert!(ex.answered * 100 >= ex.sent * 99, "the player got {} answers to {}: {ex:?}", ex.answered, ex.sent);

    // Let the UDP incident resolve (and its rules go) before the next attack.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !incidents(&c).iter().all(|i| i["status"] == "resolved") {
        assert!(std::time::Instant::now() < deadline, "the UDP incident did not resolve");
        std::thread::sleep(Duration::from_millis(200));
    }

    // 2. NTP reflection at the host, whose own NTP client keeps asking.
    let ntp = UdpServer::start(&lab.gen_ns, addr(GEN_V4, 123), Reply::Sized(48)).unwrap();
    let client = UdpClient::bind(&lab.tgt_ns, addr(TGT_V4, 0), ntp.addr()).unwrap();
    assert_eq!(client.exchange(3, 10.0, 48, Duration::from_millis(500)).unwrap().answered, 3);
    std::thread::sleep(Duration::from_millis(500));
    let reflection = ["--udp", "--flood", "--rand-source", "-s", "123", "-k", "-p", "++1024", "-d", "440", TGT_V4];
    let h = hping3(&lab, &reflection);
    let rule = runbook_rule(&c, "reflection-auto-response");
    eprintln!("reflection-auto-response: {rule}");
    assert_eq!((rule["sport"].as_u64(), rule["classes"][0].as_str()), (Some(123), Some("udp_amplification")), "{rule}");
    drop(stopped(h));
    let answers = std::sync::atomic::AtomicI64::new(0);
    let others = || background() + answers.load(std::sync::atomic::Ordering::Relaxed);
    let (got_in, sent, ex) = measured(&lab, &reflection, others, || {
        let ex = client.exchange(12, 5.0, 48, Duration::from_millis(500)).unwrap();
        answers.store(ex.from_peer as i64, std::sync::atomic::Ordering::Relaxed);
        ex
    });
    assert!(got_in as f64 <= sent as f64 * 0.001, "{got_in} of {sent} reflected datagrams reached the stack");
    assert_eq!(ex.answered, ex.sent, "the host's NTP queries lost answers: {ex:?}");

    // The background lost at most 1% through both.
    let out = bg.join().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(SETTLE);
    let got = background() as u64;
    eprintln!("background: {got} of {bg_count} delivered");
    assert!(got * 100 >= bg_count * 99, "the background lost {} of {bg_count}", bg_count - got);
    assert!(!rx.on("/slack").is_empty(), "the on-call channel heard of it");
}
