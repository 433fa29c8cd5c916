//! Packet captures per incident, read back by a tool we did not write:
//! `tshark` (Wireshark's command line) decodes the pcapng the controller
//! wrote for an incident, served by its API (fetched with `curl`) and by
//! `detector incidents ID --pcap FILE`, byte for byte the same.
//!
//! The lab: a burst of ACKs under their floor (which raises the sampling
//! divisor, and the calm after it must still be sampled whole), calm
//! traffic (UDP to port 7777 from the generator's address), then a UDP flood from hping3 with a fixed source port and
//! 400-byte payloads (442-byte frames, cut to the 256-byte snap length),
//! dropped in XDP by a rule halfway through. The file must hold the calm
//! packets before the opening, then the flood's packets with the
//! addresses, ports and sizes hping3 sent, the dropped ones included, in
//! time order; and the incident and its figures must agree with the file.
//! A controller killed with SIGKILL mid-incident carries the same file on
//! when it starts again.

mod common;

use std::{
    net::SocketAddr,
    path::Path,
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::{cli, ok, require_root, until, Controller, Lab};
use detector::lab::{
    hping3::Hping3,
    udp::{Reply, UdpClient, UdpServer},
    GEN_V4, TGT_V4,
};
use serde_json::Value;

const CONFIG: &str = "\
detection:
  hold: 200ms
  quiet: 1500ms
  baseline: { warmup: 1h }
  families:
    udp_flood: { pps: 3000 }
    # The ACK burst below must not be an attack: hping3 sends well over
    # the default 100,000 pps on a fast host.
    ack_flood: { pps: 100000000 }
capture:
  packets_per_incident: 30000
";

const CALM_PORT: u16 = 7777;
const FLOOD_PORT: u16 = 5353;
const FLOOD_SPORT: u16 = 40000;
/// hping3's UDP payload: 442-byte frames (14 + 20 + 8 + 400).
const PAYLOAD: usize = 400;
const FRAME: u64 = 442;

fn config(lab: &Lab) -> String {
    let p = lab.dir.join("detector.yaml");
    std::fs::write(&p, CONFIG).unwrap();
    p.to_str().unwrap().to_string()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn ms(v: &Value) -> u64 {
    detector::detect::incident::time_ms::parse(v.as_str().expect("a time")).expect("RFC 3339")
}

/// One packet as tshark decodes it.
#[derive(Debug)]
struct Decoded {
    at_ms: f64,
    iface: String,
    src: String,
    dst: String,
    sport: Option<u16>,
    dport: Option<u16>,
    len: u64,
    cap_len: u64,
    comment: String,
}

/// `tshark -r FILE` with the fields the test reads; fails the test unless
/// tshark reads the whole file without an error.
fn tshark(file: &Path) -> Vec<Decoded> {
    let fields = [
        "frame.time_epoch",
        "frame.interface_name",
        "ip.src",
        "ip.dst",
        "udp.srcport",
        "udp.dstport",
        "frame.len",
        "frame.cap_len",
        "frame.comment",
    ];
    let mut cmd = Command::new("tshark");
    cmd.args(["-r", file.to_str().unwrap(), "-T", "fields", "-E", "separator=|", "-E", "occurrence=f"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("tshark (`cargo xtask test` installs it: Debian package tshark)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tshark could not read {}: {err}", file.display());
    // tshark says it runs as root; anything else on stderr is a problem.
    let complaints: Vec<&str> =
        err.lines().filter(|l| !l.contains("as user \"root\"") && !l.trim().is_empty()).collect();
    assert!(complaints.is_empty(), "tshark complained about {}: {complaints:?}", file.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            assert_eq!(f.len(), fields.len(), "{l}");
            Decoded {
                at_ms: f[0].parse::<f64>().unwrap() * 1000.0,
                iface: f[1].to_string(),
                src: f[2].to_string(),
                dst: f[3].to_string(),
                sport: f[4].parse().ok(),
                dport: f[5].parse().ok(),
                len: f[6].parse().unwrap(),
                cap_len: f[7].parse().unwrap(),
                comment: f[8].to_string(),
            }
        })
        .collect()
}

/// The capture file's section comment, as `capinfos` reads it.
fn capture_comment(file: &Path) -> String {
    let out =
        Command::new("capinfos").args(["-k", file.to_str().unwrap()]).output().expect("capinfos (tshark's package)");
    assert!(out.status.success(), "capinfos: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// GET the capture with curl inside the controller's namespace.
fn curl_pcap(c: &Controller, id: &str, to: &Path) -> u16 {
    let url = format!("http://127.0.0.1:{}/api/incidents/{id}/pcap", common::METRICS_PORT);
    let out = Command::new("ip")
        .args(["netns", "exec", &c.ns, "curl", "-s", "-o", to.to_str().unwrap(), "-w", "%{http_code}", &url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

fn active_incident(c: &Controller) -> Result<Value, String> {
    common::incidents(c, true).into_iter().next().ok_or_else(|| "no open incident".to_string())
}

#[test]
fn an_incidents_capture_holds_the_calm_before_then_the_attack_as_sent_and_tshark_reads_it() {
    require_root!();
    let lab = Lab::new().unwrap();
    let cfg = config(&lab);
    let mut c = Controller::start(&lab, &["--config", &cfg]);
    // The sampling divisor comes down to 1 within a few quiet polls, so
    // the calm traffic is sampled whole.
    std::thread::sleep(Duration::from_millis(800));

    // Calm: a client talks to a UDP service.
    let server =
        UdpServer::start(&lab.tgt_ns, SocketAddr::new("0.0.0.0".parse().unwrap(), CALM_PORT), Reply::Echo).unwrap();
    let client = UdpClient::bind(
        &lab.gen_ns,
        SocketAddr::new(GEN_V4.parse().unwrap(), 17777),
        SocketAddr::new(TGT_V4.parse().unwrap(), CALM_PORT),
    )
    .unwrap();
    // First a burst of ACKs (under the ack_flood floor, not an attack)
    // raises the sampling divisor; each CPU's countdown to its
    // next sample is drawn at it. Once the divisor is back at 1, the XDP
    // program cuts those countdowns to its gaps as a poll begins: the calm
    // exchange is sampled whole from its first packet, on any CPU.
    let burst =
        Hping3::start(&lab.gen_ns, &["-A", "--flood", "-p", "9", "-n", TGT_V4]).unwrap_or_else(|e| panic!("{e}"));
    let gauge = |m: &str, name: &str| {
        m.lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let divisor = |m: &str| gauge(m, "detector_sample_divisor");
    c.metrics_until("the burst to raise the sampling divisor", |m| divisor(m) >= 8.0);
    drop(burst.stop());
    // And every sample with its frame again.
    c.metrics_until("the sampling and frame divisors back at 1", |m| {
        divisor(m) == 1.0 && gauge(m, "detector_sample_frame_divisor") == 1.0
    });
    // Calm: samples taken under attack go to the onset, not the calm buffer.
    let so_far = common::incidents(&c, false);
    assert!(so_far.is_empty(), "the ACK burst opened an incident: {so_far:?}");
    let calm = client.exchange(30, 100.0, 20, Duration::from_millis(300)).unwrap();
    assert_eq!(calm.answered, 30, "{calm:?}");
    let calm_over = now_ms();
    // Its last request read by a poll before the flood's first: a poll
    // above the floor is the onset, and all its samples go to the attack.
    // Two polls ended after the exchange: the second began after it.
    let polls = |m: &str| common::sample(m, "detector_poll_duration_seconds_count");
    let after_calm = polls(&c.metrics());
    c.metrics_until("two polls after the calm exchange", |m| polls(m) >= after_calm + 2.0);

    // The flood: not spoofed, so its addresses can be checked exactly.
    let (sport, dport, size) = (FLOOD_SPORT.to_string(), FLOOD_PORT.to_string(), PAYLOAD.to_string());
    // A sink on the flooded port: no ICMP errors back to hping3, which
    // (out of flood mode) prints each reply and can crash doing so; `-n`
    // for numeric output besides.
    let sink =
        UdpServer::start(&lab.tgt_ns, SocketAddr::new("0.0.0.0".parse().unwrap(), FLOOD_PORT), Reply::None).unwrap();
    // About 10,000 pps, of which about 1,000 a second come with their
    // frames (the frame divisor), so the capture is not full before the
    // restart.
    let args = ["--udp", "-n", "-i", "u100", "-s", &sport, "-k", "-p", &dport, "-d", &size, TGT_V4];
    let flood = Hping3::start(&lab.gen_ns, &args).unwrap_or_else(|e| panic!("{e}"));
    let inc = until(&c, "the flood's incident", Duration::from_secs(5), || active_incident(&c));
    let id = inc["id"].as_str().unwrap().to_string();
    assert_eq!(inc["timeline"][0]["kind"], "opened");
    // The opening, a hold after the onset (`started_at`).
    let opened = ms(&inc["timeline"][0]["at"]);

    // Halfway: a rule drops the flood in XDP; the capture goes on.
    std::thread::sleep(Duration::from_millis(700));
    ok(&c, &["block", "add", &format!("{GEN_V4}/32"), "--class", "udp", "--ttl", "10m"]);
    let blocked_at = now_ms();
    std::thread::sleep(Duration::from_millis(700));
    let report = flood.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(report.sent > 3_000, "hping3 sent only {}: {}", report.sent, report.output);
    let dropped = c.metrics_until("the rule's drops", |m| {
        common::sample(
            m,
            &format!("detector_dropped_packets_total{{iface=\"{}\",class=\"udp\",reason=\"rule\"}}", lab.tgt_if),
        ) > 1000.0
    });
    drop(dropped);

    // Killed mid-incident: the next start carries the same file on.
    let held_before = until(&c, "the capture's figures", Duration::from_secs(3), || {
        let v = active_incident(&c)?;
        v["capture"]["packets"].as_u64().ok_or_else(|| format!("no capture figures in {v}"))
    });
    c.stop_with(libc::SIGKILL);
    let c = Controller::start(&lab, &["--config", &cfg]);
    assert!(c.log_text().contains("packet capture resumed"), "{}", c.log_text());
    // The flood again, briefly, so the resumed incident captures more.
    let flood = Hping3::start(&lab.gen_ns, &args).unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_millis(500));
    flood.stop().unwrap_or_else(|e| panic!("{e}"));

    // Resolved: the file is complete.
    let inc = until(&c, "the incident's resolution", Duration::from_secs(10), || {
        let v = common::get_json(&c, &format!("/api/incidents/{id}"));
        if v["status"] == "resolved" {
            Ok(v)
        } else {
            Err(format!("still {}", v["status"]))
        }
    });
    let figures = &inc["capture"];
    let packets = figures["packets"].as_u64().expect("capture figures in the incident");
    let pre = figures["pre_attack"].as_u64().unwrap();
    assert!(packets > held_before, "the resumed capture took no packets: {packets} <= {held_before}");

    let api_file = lab.dir.join("api.pcapng");
    assert_eq!(curl_pcap(&c, &id, &api_file), 200);
    let cli_file = lab.dir.join("cli.pcapng");
    let out = ok(&c, &["incidents", &id, "--pcap", cli_file.to_str().unwrap()]);
    eprintln!("{out}");
    assert_eq!(std::fs::read(&api_file).unwrap(), std::fs::read(&cli_file).unwrap(), "API and CLI differ");
    let shown = ok(&c, &["incidents", &id]);
    assert!(shown.contains(&format!("capture   {packets} packets ({pre} before the attack")), "{shown}");

    let decoded = tshark(&api_file);
    eprintln!("tshark read {} packets, {pre} before the attack; the incident opened at {opened}", decoded.len());
    assert_eq!(decoded.len() as u64, packets, "the incident's figure and the file disagree");
    assert!(capture_comment(&api_file).contains(&format!("detector incident {id}")), "{}", capture_comment(&api_file));
    assert!(decoded.iter().all(|p| p.iface == lab.tgt_if), "every packet names the interface");

    // In time order, the whole file.
    for w in decoded.windows(2) {
        assert!(w[0].at_ms <= w[1].at_ms, "out of order: {:?} then {:?}", w[0], w[1]);
    }

    // Before the attack: sampled before the opening, the calm exchange in it.
    let (before, attack) = decoded.split_at(pre as usize);
    assert!(!before.is_empty(), "nothing before the attack");
    assert!(before[0].comment.contains("before the attack"), "{:?}", before[0]);
    let late: Vec<&Decoded> = before.iter().filter(|p| p.at_ms > opened as f64).collect();
    assert!(late.is_empty(), "calm packets after the opening at {opened}: {late:?}; timeline {}", inc["timeline"]);
    let calm_seen = before.iter().filter(|p| p.dport == Some(CALM_PORT) && p.src == GEN_V4).count();
    // Sampled at a divisor of 1: every packet, on whichever CPU.
    let flood_before = before.iter().filter(|p| p.dport == Some(FLOOD_PORT)).count();
    assert_eq!(
        calm_seen,
        30,
        "{calm_seen} of the 30 calm requests are in the capture, whose calm part holds {} packets, {flood_before} of \
         them the flood's",
        before.len()
    );
    // A poll in which the flood had only begun (under the floor) still
    // counts as calm: its packets may close the calm part, never precede
    // the calm exchange.
    let last_calm = before.iter().rposition(|p| p.dport == Some(CALM_PORT)).unwrap();
    let first_flood = before.iter().position(|p| p.dport == Some(FLOOD_PORT)).unwrap_or(before.len());
    assert!(first_flood > last_calm, "a flood packet at {first_flood} before the calm exchange ended at {last_calm}");
    // (`calm_over` is in whole milliseconds, the packets' times are not.)
    let late: Vec<&Decoded> = before[..=last_calm].iter().filter(|p| p.at_ms > (calm_over + 1) as f64).collect();
    assert!(late.is_empty(), "calm packets stamped after the exchange ended at {calm_over}: {late:?}");

    // The attack: what hping3 sent, cut to the snap length; some of it
    // after the rule dropped it.
    assert!(attack[0].comment.contains("the attack"), "{:?}", attack[0]);
    let flood_pkts: Vec<&Decoded> = attack
        .iter()
        .filter(|p| p.src == GEN_V4 && p.dst == TGT_V4 && p.dport == Some(FLOOD_PORT) && p.sport == Some(FLOOD_SPORT))
        .collect();
    assert!(
        flood_pkts.len() as f64 >= 0.95 * attack.len() as f64,
        "{} of {} attack packets are hping3's",
        flood_pkts.len(),
        attack.len()
    );
    assert!(flood_pkts.iter().all(|p| p.len == FRAME && p.cap_len == 256), "sizes: {:?}", flood_pkts.first());
    assert!(
        flood_pkts.iter().any(|p| p.at_ms > blocked_at as f64 + 100.0),
        "no packet sampled after the rule dropped the flood"
    );
    assert!(attack.len() <= 30_000, "over the per-incident cap: {}", attack.len());

    // Asking for what is not there.
    assert_eq!(curl_pcap(&c, "no-such-incident", &lab.dir.join("none")), 404);
    assert_eq!(curl_pcap(&c, "..%2Fdetector.yaml", &lab.dir.join("none")), 400);
    let (success, _, err) = cli(&c, &["incidents", "no-such-incident", "--pcap", "/dev/null"]);
    assert!(!success && err.contains("no packet capture"), "{err}");
    drop((server, sink));
}
