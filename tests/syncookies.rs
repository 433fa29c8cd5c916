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
