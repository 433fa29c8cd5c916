//! SYN cookies answered from XDP, against a spoofed SYN flood from a real
//! tool (`hping3 -S --flood --rand-source`) and a real client (`curl`),
//! with a real TCP server in the target namespace.
//!
//! What reaches the target's stack is counted by its own kernel: a SYN that
//! gets to a listener makes a request socket (`Tcp: PassiveOpens`), a
//! kernel cookie (`TcpExt: SyncookiesSent`) or a drop at a full queue
//! (`TcpExt: ListenDrops`). With cookies answered in XDP, only the
//! handshakes SYNPROXY completes for real clients get there. The client's
//! successes are counted by curl and by the server's socket.
//!
//! Both ends live in namespaces of their own with no default route; the
//! SYN-ACKs to spoofed sources go back out of the target's veth into the
//! generator's namespace and die there.

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::{cli, ok, require_root, rules, Controller, Lab};
use detector::lab::{
    counters::NetCounters,
    hping3::{Hping3, Hping3Report},
    tcp::{curl_many, HttpServer},
    udp::{Reply, UdpServer},
    TGT_V4,
};

const PORT: u16 = 8080;
/// Legitimate connections made while the flood runs.
const CONNECTIONS: u64 = 200;
/// Real clients on the generator's side, each new to the host when the
/// flood starts: the first connection of each completes through a cookie
/// (which makes it a known peer; the next ones are ordinary handshakes).
const CLIENTS: u8 = 40;

fn lab() -> Lab {
    let mut lab = Lab::new().unwrap();
    lab.accept_spoofed_sources().unwrap();
    lab.accept_xdp_tx().unwrap();
    for i in 0..CLIENTS {
        lab.add_addr(&lab.gen_ns, &lab.gen_if, &format!("192.0.2.{}/24", 100 + i)).unwrap();
    }
    lab
}

fn clients() -> Vec<String> {
    (0..CLIENTS).map(|i| format!("192.0.2.{}", 100 + i)).collect()
}

fn url() -> String {
    format!("http://{TGT_V4}:{PORT}/")
}

/// SYNs that reached the target's TCP stack since `before`: request
/// sockets made, kernel cookies sent, SYNs dropped at a full queue.
fn syns_in_stack(lab: &Lab, before: &NetCounters) -> i64 {
    let d = NetCounters::read(&lab.tgt_ns).unwrap().since(before);
    let get = |g: &str, n: &str| d.get(g, n).unwrap_or(0);
    get("Tcp", "PassiveOpens") + get("TcpExt", "SyncookiesSent") + get("TcpExt", "ListenDrops")
}

fn hping3(lab: &Lab) -> Hping3 {
    let port = PORT.to_string();
    Hping3::start(&lab.gen_ns, &["-S", "--flood", "--rand-source", "-p", &port, TGT_V4])
        .unwrap_or_else(|e| panic!("{e}"))
}

fn stopped(h: Hping3) -> Hping3Report {
    h.stop().unwrap_or_else(|e| panic!("{e}"))
}

/// The flood while `CONNECTIONS` curls run; returns (SYNs of the flood in
/// the stack, SYNs sent, curls that succeeded).
fn flood_with_clients(lab: &Lab, server: &HttpServer) -> (i64, u64, u64) {
    let before = NetCounters::read(&lab.tgt_ns).unwrap();
    let accepted = server.accepted();
    let h = hping3(lab);
    std::thread::sleep(Duration::from_millis(300));
    let curls = curl_many(&lab.gen_ns, &url(), CONNECTIONS, Duration::from_secs(3), &clients()).unwrap();
    let r = stopped(h);
    std::thread::sleep(Duration::from_millis(200));
    let served = server.accepted() - accepted;
    // Each real connection is one request socket, made by SYNPROXY's SYN.
    let flood_in = syns_in_stack(lab, &before) - served as i64;
    eprintln!(
        "hping3 -S --flood --rand-source: {} SYNs ({:.0} pps); {flood_in} reached the stack ({:.4}%); \
         curl: {} of {} succeeded {:?}; the server accepted {served}",
        r.sent,
        r.pps(),
        flood_in as f64 * 100.0 / r.sent.max(1) as f64,
        curls.succeeded,
        curls.attempted,
        curls.failures
    );
    assert!(r.sent >= 10_000, "hping3 sent only {} SYNs:\n{}", r.sent, r.output);
    (flood_in, r.sent, curls.succeeded)
}

/// The operator's verb: `detector syncookies add --port 8080` refuses a
/// port nothing listens on, then answers a spoofed SYN flood from XDP
/// while curl's connections all complete through it.
#[test]
fn syn_cookies_stop_a_spoofed_syn_flood_while_real_clients_connect() {
    require_root!();
    let lab = lab();
    let server = HttpServer::start(&lab.tgt_ns, SocketAddr::new(TGT_V4.parse().unwrap(), PORT)).unwrap();
    let c = Controller::start(&lab, &[]);

    // Bad input: one line naming the field.
    let (okay, _, err) = cli(&c, &["syncookies", "add", "--port", "9"]);
    assert!(!okay);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("dport 9: no TCP listener"), "{err}");
    let (okay, _, err) = cli(&c, &["syncookies", "add", "--port", "0"]);
    assert!(!okay && err.contains("port 0"), "{err}");

    // Without the rule the flood reaches the listener.
    let before = NetCounters::read(&lab.tgt_ns).unwrap();
    let h = hping3(&lab);
    std::thread::sleep(Duration::from_millis(1000));
    let r = stopped(h);
    std::thread::sleep(Duration::from_millis(200));
    let reached = syns_in_stack(&lab, &before);
    eprintln!("no rule: {} SYNs sent, {reached} reached the stack", r.sent);
    assert!(
        reached as f64 >= r.sent as f64 * 0.3,
        "without a rule only {reached} of {} SYNs reached the stack",
        r.sent
    );

    let out = ok(&c, &["syncookies", "add", "--port", &PORT.to_string(), "--reason", "lab"]);
    assert!(out.contains("syn_cookies ::/0 dport 8080"), "{out}");
    let rule = rules(&c)["rules"][0].clone();
    assert_eq!(rule["action"]["kind"], "syn_cookies", "{rule}");

    // Real clients complete their handshakes through the cookies.
    // (From the lab's own generator address, not one of the clients.)
    let warm = curl_many(&lab.gen_ns, &url(), 10, Duration::from_secs(3), &[]).unwrap();
    assert_eq!(warm.succeeded, 10, "{warm:?}\n{}", c.log_text());

    let (flood_in, sent, succeeded) = flood_with_clients(&lab, &server);
    assert!(flood_in as f64 <= sent as f64 * 0.01, "{flood_in} of {sent} flood SYNs reached the stack");
    assert!(succeeded * 100 >= CONNECTIONS * 99, "only {succeeded} of {CONNECTIONS} connections succeeded");

    // The rule's counters saw the flood answered.
    let rule = rules(&c)["rules"][0].clone();
    assert!(rule["dropped_packets"].as_u64().unwrap_or(0) >= sent / 2, "{rule}");

    // Every client completed a handshake through a cookie: each is a known
    // peer now, learned that way, and no spoofed source is.
    let v: serde_json::Value = serde_json::from_str(&ok(&c, &["peers", "list", "--json", "--limit", "1000"])).unwrap();
    let peers = v[0]["peers"].as_array().unwrap();
    for client in clients() {
        let p =
            peers.iter().find(|p| p["addr"] == client.as_str()).unwrap_or_else(|| panic!("{client} not known: {v}"));
        assert!(p["how"].as_array().unwrap().iter().any(|h| h == "handshake"), "{p}");
    }
    assert!(
        peers.iter().all(|p| p["addr"].as_str().unwrap().starts_with("192.0.2.")),
        "a spoofed source was learned: {v}"
    );
    let (okay, _, err) = cli(&c, &["peers", "list", "--limit", "0"]);
    assert!(!okay && err.trim().lines().count() == 1 && err.contains("limit 0"), "{err}");
    let out = ok(&c, &["peers", "flush"]);
    assert!(out.contains(&format!("forgot {} known-good peers", v[0]["total"])), "{out}");
}

/// IPv6: the SYN-ACK from XDP, the ACK's mark in the traffic class, and
/// SYNPROXY's IPv6 rule complete real clients' handshakes.
#[test]
fn syn_cookies_complete_ipv6_handshakes_through_synproxy() {
    require_root!();
    let lab = lab();
    lab.enable_ipv6().unwrap();
    let sources: Vec<String> = (0..10).map(|i| format!("2001:db8::{:x}", 0x100 + i)).collect();
    for s in &sources {
        lab.add_addr(&lab.gen_ns, &lab.gen_if, &format!("{s}/64")).unwrap();
    }
    let server = HttpServer::start(&lab.tgt_ns, SocketAddr::new(detector::lab::TGT_V6.parse().unwrap(), PORT)).unwrap();
    let c = Controller::start(&lab, &[]);
    let out = ok(&c, &["syncookies", "add", "--port", &PORT.to_string(), "--dst", detector::lab::TGT_V6]);
    assert!(out.contains("syn_cookies ::/0 dport 8080 dst 2001:db8::2/128"), "{out}");
    let url = format!("http://[{}]:{PORT}/", detector::lab::TGT_V6);
    let curls = curl_many(&lab.gen_ns, &url, 20, Duration::from_secs(3), &sources).unwrap();
    assert_eq!(curls.succeeded, 20, "{curls:?}\n{}", c.log_text());
    assert_eq!(server.accepted(), 20);
    // The first connection of each source went through a cookie.
    let rule = rules(&c)["rules"][0].clone();
    assert!(rule["dropped_packets"].as_u64().unwrap() >= 10, "SYNs answered in XDP: {rule}");
    let v: serde_json::Value = serde_json::from_str(&ok(&c, &["peers", "list", "--json"])).unwrap();
    for s in &sources {
        let p = v[0]["peers"].as_array().unwrap().iter().find(|p| p["addr"] == s.as_str());
        let p = p.unwrap_or_else(|| panic!("{s} not learned: {v}"));
        assert!(p["how"].as_array().unwrap().iter().any(|h| h == "handshake"), "{p}");
    }
}

const SHIPPED_CONFIG: &str = "\
detection:
  families:
    syn_flood: { pps: 5000 }
";

/// The table, the SYN row: with the shipped runbooks alone, a
/// spoofed SYN flood is answered by cookies in XDP, curl's connections
/// complete, and a benign background loses nothing.
#[test]
fn the_shipped_syn_runbook_answers_a_spoofed_syn_flood_with_cookies() {
    require_root!();
    let lab = lab();
    let server = HttpServer::start(&lab.tgt_ns, SocketAddr::new(TGT_V4.parse().unwrap(), PORT)).unwrap();
    let (c, _rx) = common::shipped_runbooks(&lab, SHIPPED_CONFIG, 18082, "s3cret");

    // The benign background: 1,000 datagrams a second to another service.
    let bg_server =
        UdpServer::start(&lab.tgt_ns, SocketAddr::new("0.0.0.0".parse().unwrap(), 5353), Reply::None).unwrap();
    let bg_count = 20_000u64;
    let bg = common::background_udp(&lab, "203.0.113.5", 5353, bg_count, 1000);
    std::thread::sleep(Duration::from_secs(1));

    // The flood until the runbook acts.
    let h = hping3(&lab);
    let deadline = Instant::now() + Duration::from_secs(15);
    let rule = loop {
        let v = rules(&c);
        if let Some(r) =
            v["rules"].as_array().unwrap().iter().find(|r| r["origin"]["runbook"] == "syn-flood-auto-response")
        {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "syn-flood-auto-response installed no rule: {v}\n{}", c.log_text());
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(stopped(h));
    eprintln!("syn-flood-auto-response: {rule}");
    assert_eq!(rule["action"]["kind"], "syn_cookies", "{rule}");
    assert_eq!(rule["dport"], PORT, "{rule}");

    let (flood_in, sent, succeeded) = flood_with_clients(&lab, &server);
    assert!(flood_in as f64 <= sent as f64 * 0.01, "{flood_in} of {sent} flood SYNs reached the stack");
    assert!(succeeded * 100 >= CONNECTIONS * 99, "only {succeeded} of {CONNECTIONS} connections succeeded");

    let out = bg.join().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(200));
    let got = bg_server.stats().count_from("203.0.113.5".parse().unwrap());
    assert!(got * 100 >= bg_count * 99, "the background lost {} of {bg_count} datagrams", bg_count - got);
}

mod frames {
    use detector::flood::checksum::{checksum, finish, pseudo_header, sum};

    pub const CLIENT_TSVAL: u32 = 0x0102_0304;

    /// A SYN to port 80 with `options` (a multiple of 4 bytes), IPv4 or IPv6.
    pub fn syn(v6: bool, src_last: u8, options: &[u8]) -> Vec<u8> {
        tcp(v6, src_last, 0x02, 1000, 0, options)
    }

    /// A TCP segment from `...::src_last` (or 198.18.0.src_last) port
    /// 40000 to port 80, with valid checksums.
    pub fn tcp(v6: bool, src_last: u8, flags: u8, seq: u32, ack: u32, options: &[u8]) -> Vec<u8> {
        let th = 20 + options.len();
        let mut t = vec![0u8; th];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&80u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&ack.to_be_bytes());
        t[12] = ((th / 4) as u8) << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&64240u16.to_be_bytes());
        t[20..].copy_from_slice(options);
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
        if v6 {
            f.extend_from_slice(&[0x86, 0xdd]);
            let mut ip = vec![0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(th as u16).to_be_bytes());
            ip[6] = 6;
            ip[7] = 64;
            ip[8..10].copy_from_slice(&[0x20, 0x01]);
            ip[23] = src_last;
            ip[24..26].copy_from_slice(&[0x20, 0x01]);
            ip[39] = 2;
            let c = finish(sum(pseudo_header(&ip[8..24], &ip[24..40], 6, th), &t));
            t[16..18].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
        } else {
            f.extend_from_slice(&[0x08, 0x00]);
            let mut ip = vec![0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&((20 + th) as u16).to_be_bytes());
            ip[6] = 0x40;
            ip[8] = 64;
            ip[9] = 6;
            ip[12..16].copy_from_slice(&[198, 18, 0, src_last]);
            ip[16..20].copy_from_slice(&[192, 0, 2, 2]);
            let c = checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            let c = finish(sum(pseudo_header(&ip[12..16], &ip[16..20], 6, th), &t));
            t[16..18].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        f.extend_from_slice(&t);
        f
    }

    /// Linux's SYN options: MSS 1460, SACK permitted, timestamps, NOP, window scale 7.
    pub fn linux_options() -> Vec<u8> {
        let mut o = vec![2, 4, 0x05, 0xb4, 4, 2, 8, 10];
        o.extend_from_slice(&CLIENT_TSVAL.to_be_bytes());
        o.extend_from_slice(&[0, 0, 0, 0, 1, 3, 3, 7]);
        o
    }

    /// The IP header and TCP segment of `frame`, checked: lengths agree, the
    /// IPv4 header checksum and the TCP checksum are valid.
    pub fn checked(frame: &[u8]) -> (&[u8], &[u8]) {
        let v6 = frame[12..14] == [0x86, 0xdd];
        if v6 {
            let (ip, t) = frame[14..].split_at(40);
            assert_eq!(u16::from_be_bytes([ip[4], ip[5]]) as usize, t.len(), "payload length");
            assert_eq!(finish(sum(pseudo_header(&ip[8..24], &ip[24..40], 6, t.len()), t)), 0, "TCP checksum");
            (ip, t)
        } else {
            let (ip, t) = frame[14..].split_at(20);
            assert_eq!(u16::from_be_bytes([ip[2], ip[3]]) as usize, 20 + t.len(), "total length");
            assert_eq!(checksum(ip), 0, "IPv4 header checksum");
            assert_eq!(finish(sum(pseudo_header(&ip[12..16], &ip[16..20], 6, t.len()), t)), 0, "TCP checksum");
            (ip, t)
        }
    }
}

/// The frames the SYN-cookie program writes, read back from the kernel
/// (`BPF_PROG_TEST_RUN`), in both families: a SYN-ACK with swapped
/// addresses and ports, the cookie as its sequence number, the client's
/// options answered (or none for a bare SYN), valid checksums; the ACK
/// with that cookie passes, marked, and its source becomes a known peer;
/// an ACK with a wrong one is dropped.
#[test]
fn the_syn_ack_and_the_cookie_check_in_both_families() {
    use aya::{
        maps::HashMap as BpfHashMap,
        programs::{TestRun as _, TestRunOptions},
    };
    use detector::{
        clock::Clock,
        kernel::{
            ebpf::{self, CountingOptions},
            rules::RuleMaps,
            syncookie,
        },
        mitigate::{
            rule::RuleRequest,
            ruleset::{Limits, RuleSet},
        },
        span::Span,
    };
    use detector_common::{
        known::{KnownPeer, KNOWN_PEERS_MAP},
        maps::{SourceKey, DETECTOR_PROGRAM},
    };
    require_root!();
    const XDP_DROP: u32 = 1;
    const XDP_PASS: u32 = 2;
    const XDP_TX: u32 = 3;

    let mut obj = ebpf::load_counting(&CountingOptions::new(1024)).unwrap();
    let mut rule_maps = RuleMaps::take(&mut obj).unwrap();
    let known: BpfHashMap<_, SourceKey, KnownPeer> =
        BpfHashMap::try_from(ebpf::take_map(&mut obj, "detector", KNOWN_PEERS_MAP).unwrap()).unwrap();
    syncookie::install(&mut obj, "lo").unwrap();
    let mut set = RuleSet::new(Limits { max_rules: 16, max_allow: 16 });
    let req = RuleRequest {
        action: "syn_cookies".into(),
        prefix: "::/0".into(),
        dport: Some(Span::one(80)),
        ..Default::default()
    };
    set.add_rule(&req, 0).unwrap();
    rule_maps.apply(&set.plan(Clock::now()).unwrap()).unwrap();
    let prog = ebpf::load_xdp(&mut obj, "detector", DETECTOR_PROGRAM).unwrap();
    let run = |frame: &[u8]| -> (u32, Vec<u8>) {
        let mut out = vec![0u8; 256];
        let r = prog
            .test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..TestRunOptions::new() })
            .unwrap();
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    };

    for v6 in [false, true] {
        let family = if v6 { "IPv6" } else { "IPv4" };
        let syn = frames::syn(v6, 7, &frames::linux_options());
        let (verdict, out) = run(&syn);
        assert_eq!(verdict, XDP_TX, "{family}: the SYN is answered");
        assert_eq!((&out[0..6], &out[6..12]), (&syn[6..12], &syn[0..6]), "{family}: Ethernet addresses swapped");
        let (ip, t) = frames::checked(&out);
        let (sip, _) = frames::checked(&syn);
        if v6 {
            assert_eq!(
                (&ip[8..24], &ip[24..40], ip[7]),
                (&sip[24..40], &sip[8..24], 64),
                "{family}: addresses, hop limit"
            );
        } else {
            assert_eq!((&ip[12..16], &ip[16..20], ip[8]), (&sip[16..20], &sip[12..16], 64), "{family}: addresses, TTL");
        }
        assert_eq!((u16::from_be_bytes([t[0], t[1]]), u16::from_be_bytes([t[2], t[3]])), (80, 40000));
        assert_eq!(t[13], 0x12, "{family}: SYN-ACK");
        assert_eq!(u32::from_be_bytes([t[8], t[9], t[10], t[11]]), 1001, "{family}: acknowledges the SYN");
        assert_eq!(t[12] >> 4, 10, "{family}: 20 bytes of options");
        // What `install` offers for lo's MTU.
        let mtu: u32 = std::fs::read_to_string("/sys/class/net/lo/mtu").unwrap().trim().parse().unwrap();
        let cfg = syncookie::config_for(mtu);
        let mss = if v6 { cfg.mss6 } else { cfg.mss4 };
        assert_eq!(&t[20..24], &[2, 4, (mss >> 8) as u8, mss as u8], "{family}: MSS");
        assert_eq!(&t[24..28], &[4, 2, 8, 10], "{family}: SACK permitted, timestamp");
        let tsval = u32::from_be_bytes([t[28], t[29], t[30], t[31]]);
        assert_eq!(tsval & 0x3f, 7 | 1 << 4, "{family}: the cookie's timestamp keeps wscale 7 and SACK");
        assert_eq!(u32::from_be_bytes([t[32], t[33], t[34], t[35]]), frames::CLIENT_TSVAL, "{family}: TSecr");
        assert_eq!(&t[36..40], &[1, 3, 3, 7], "{family}: window scale 7");
        let cookie = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);

        // The client's ACK with the cookie passes, marked for SYNPROXY.
        let ack = frames::tcp(v6, 7, 0x10, 1001, cookie.wrapping_add(1), &[]);
        let (verdict, out) = run(&ack);
        assert_eq!(verdict, XDP_PASS, "{family}: the cookie's ACK passes");
        let (ip, _) = frames::checked(&out);
        let dscp = if v6 { ((u16::from_be_bytes([ip[0], ip[1]]) >> 4) & 0xff) as u8 >> 2 } else { ip[1] >> 2 };
        assert_eq!(dscp, 0x3f, "{family}: marked");
        let src = if v6 {
            let mut a = [0u8; 16];
            a[0..2].copy_from_slice(&[0x20, 0x01]);
            a[15] = 7;
            SourceKey { addr: a }
        } else {
            SourceKey::from_ipv4_octets([198, 18, 0, 7])
        };
        assert!(known.get(&src, 0).is_ok(), "{family}: the client is a known peer now");

        // A wrong cookie from another source is dropped.
        let bad = frames::tcp(v6, 8, 0x10, 1001, cookie.wrapping_add(2), &[]);
        assert_eq!(run(&bad).0, XDP_DROP, "{family}: a wrong cookie");
        // A bare SYN (a flood tool's) gets a SYN-ACK without options.
        let (verdict, out) = run(&frames::syn(v6, 9, &[]));
        assert_eq!(verdict, XDP_TX);
        let (_, t) = frames::checked(&out);
        assert_eq!((t.len(), t[12] >> 4, t[13]), (20, 5, 0x12), "{family}: a bare SYN-ACK");
    }
}
