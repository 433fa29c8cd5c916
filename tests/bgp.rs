//! Upstream mitigation over BGP through the product: `detector run` in the
//! router lab's router, with a `bgp:` section, supervises gobgpd there,
//! peered with BIRD 2 in an upstream namespace linked to the router
//! (`detector::lab::bgp::RouterUpstream`), configured as a provider would
//! be. The shipped ladder (`runbooks/upstream/`: FlowSpec over 50% of the
//! interface's configured capacity, RTBH over 90%) answers an hping3 flood
//! at a customer:
//!
//! - the FlowSpec rule is in BIRD's `flowspec4` with the signature's
//!   components, the /32 with (65535,666) is there and blackholed, both
//!   noted in the incident's timeline; the time from the flood's first
//!   frame to each is printed;
//! - refused through the CLI: outside the protected networks, a FlowSpec
//!   rule broader than the limit, more than the maximum;
//! - metrics, checked with promtool;
//! - `kill -9` of gobgpd: restarted, and the announcements restored;
//! - `kill -9` of the controller mid-incident: gobgpd keeps announcing;
//!   restarted after the flood ended, the controller adopts it, the
//!   incident resolves and both announcements are withdrawn.
//!
//! And in a transit lab (`detector::lab::bgp::Transit`: BIRD in the router
//! lab's inet, which forwards, the attackers behind it), where the flood
//! crosses the upstream: the blackhole drops it there, counted on the
//! upstream's interfaces, for IPv4 (hping3) and IPv6 (`detector flood`,
//! over a session of its own); a session flap brings the routes back
//! without a daemon restart, and a withdrawal made while the session is
//! down stays withdrawn when it comes back.

mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use common::{cli, cli_json, detector_bin, incidents, promtool_check, require_root, Controller};
use detector::{
    bgp::daemon::{end_recorded, Record},
    lab::{
        bgp::{RouterUpstream, Transit, ATTACK_V6, ROUTER_PEERING_V4, UPSTREAM_PEERING_V4},
        bird::{provider_config_with_v6, Bird, Upstream},
        hping3::Hping3,
        link_packets,
        router::{INET_V4, INET_V6, OUTSIDE_V4, OUTSIDE_V6, SERVERS_V4, SERVERS_V6},
        DetectorCommand, RouterLab,
    },
};
use serde_json::Value;

const FLOOD_PORT: &str = "27015";

const CONVERGE: Duration = Duration::from_secs(30);

/// Ends the gobgpd recorded in the state directory, whatever happens
/// (it outlives the controller by design).
struct EndGobgpd(std::path::PathBuf);

impl Drop for EndGobgpd {
    fn drop(&mut self) {
        end_recorded(&self.0);
    }
}

fn config(lab: &RouterLab) -> String {
    format!(
        "detection:\n  hold: 300ms\n  quiet: 2s\n  baseline: {{ warmup: 1h }}\nnetworks:\n  hostgroups:\n    - name: \
         customers\n      prefixes: [198.51.100.0/24]\n      families:\n        udp_flood: {{ pps: 5000 }}\n      \
         total:\n        udp_flood: {{ pps: 6000 }}\ninterfaces:\n  {iface}: {{ capacity_bps: 1M }}\nbgp:\n  \
         local_as: 64512\n  router_id: {ROUTER_PEERING_V4}\n  neighbors:\n    - {{ address: {UPSTREAM_PEERING_V4}, \
         remote_as: 65000, connect_retry: 1s, families: [ipv4_unicast, ipv4_flowspec] }}\n  limits: {{ \
         max_announcements: 2, flowspec_min_v4: 28 }}\n  gobgpd: {{ api_port: 50061 }}\n",
        iface = lab.outside_if
    )
}

/// The shipped ladder's upstream rungs: FlowSpec past 50% of the
/// interface's capacity, RTBH past 90%.
const UPSTREAM_RUNBOOKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../runbooks/upstream");

fn until<T>(c: &Controller, what: &str, f: impl FnMut() -> Result<T, String>) -> T {
    common::until(c, what, CONVERGE, f)
}

fn birdc(bird: &Bird, args: &[&str]) -> String {
    bird.birdc(args).unwrap_or_else(|e| e.to_string())
}

/// The kernel's routes to `dst` in namespace `ns` (`ip route show`).
fn kernel_routes(ns: &str, dst: &str) -> String {
    let family = if dst.contains(':') { "-6" } else { "-4" };
    let out = std::process::Command::new("ip").args(["-n", ns, family, "route", "show", dst]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The FlowSpec rule for the flood at `dst` (a server address) in BIRD's
/// `flowspec4` or `flowspec6`.
fn flowspec_in_bird(bird: &Bird, dst: &str) -> Result<String, String> {
    let (table, host, proto) =
        if dst.contains(':') { ("flowspec6", 128, "next header 17") } else { ("flowspec4", 32, "proto 17") };
    let f = birdc(bird, &["show", "route", "table", table, "all"]);
    (f.contains(&format!("dst {dst}/{host}")) && f.contains(proto) && f.contains(&format!("dport {FLOOD_PORT}")))
        .then(|| f.clone())
        .ok_or(f)
}

/// `addr` blackholed: in BIRD with (65535,666), and a blackhole route in
/// the upstream's kernel (namespace `ns`).
fn blackhole_in_bird(bird: &Bird, ns: &str, addr: &str) -> Result<String, String> {
    let bh = birdc(bird, &["show", "route", "for", addr, "all"]);
    let kernel = kernel_routes(ns, addr);
    (bh.contains("(65535,666)") && bh.contains("blackhole") && kernel.contains("blackhole"))
        .then(|| bh.clone())
        .ok_or(format!("{bh}\nupstream kernel: {kernel}"))
}

/// Nothing announced for `addr` is left in BIRD or the upstream's kernel.
fn gone_from_bird(bird: &Bird, ns: &str, addr: &str) -> Result<(), String> {
    let table = if addr.contains(':') { "flowspec6" } else { "flowspec4" };
    let f = birdc(bird, &["show", "route", "table", table]);
    let bh = birdc(bird, &["show", "route", "for", addr, "all"]);
    let kernel = kernel_routes(ns, addr);
    if f.contains(&format!("Table {table}"))
        && !f.contains(addr)
        && !bh.contains("65535,666")
        && !kernel.contains("blackhole")
    {
        Ok(())
    } else {
        Err(format!("{f}\n{bh}\nupstream kernel: {kernel}"))
    }
}

fn start(lab: &RouterLab, cfg: &str, runbooks: &Path) -> Controller {
    Controller::start_in_router(
        lab,
        &["--config", cfg, "--runbooks", runbooks.to_str().unwrap(), "--on-stop", "detach"],
    )
}

fn status(c: &Controller) -> Value {
    cli_json(c, &["bgp", "status"])
}

fn refused(c: &Controller, args: &[&str]) -> String {
    let (success, out, err) = cli(c, args);
    assert!(!success, "{args:?} was accepted: {out}");
    err
}

#[test]
fn the_ladder_announces_upstream_and_survives_crashes() {
    require_root!();
    let _serial = common::serial();
    let t_all = Instant::now();
    assert!(Path::new(&detector_bin()).exists());
    let lab = RouterLab::new().unwrap_or_else(|e| panic!("{e}"));
    let up = RouterUpstream::attach(&lab.router_ns).unwrap_or_else(|e| panic!("{e}"));
    let bird = up.start_bird().unwrap_or_else(|e| panic!("{e}"));
    let cfg_path = lab.dir.join("bgp.yaml");
    std::fs::write(&cfg_path, config(&lab)).unwrap();
    let cfg = cfg_path.to_str().unwrap();
    let runbooks = Path::new(UPSTREAM_RUNBOOKS);

    let mut c = start(&lab, cfg, runbooks);
    let _end = EndGobgpd(c.state_dir.clone());
    until(&c, "the session Established", || {
        let s = status(&c);
        (s["neighbors"][0]["state"] == "established").then_some(()).ok_or(s.to_string())
    });

    // The flood; the ladder's two rungs answer it.
    let t_flood = Instant::now();
    let flood = Hping3::start(&lab.inet_ns, &["--udp", "-n", "-p", FLOOD_PORT, "-i", "u50", "-d", "64", SERVERS_V4[0]])
        .unwrap_or_else(|e| panic!("{e}"));
    let f4 = until(&c, "the FlowSpec rule in BIRD", || flowspec_in_bird(&bird, SERVERS_V4[0]));
    let flowspec_after = t_flood.elapsed();
    assert!(f4.contains("(generic, 0x80060000, 0x0)"), "no discard action:\n{f4}");
    until(&c, "the blackhole in BIRD", || blackhole_in_bird(&bird, &up.ns, SERVERS_V4[0]));
    let blackhole_after = t_flood.elapsed();

    let s = status(&c);
    let anns = s["announcements"].as_array().unwrap();
    assert_eq!(anns.len(), 2, "{s}");
    for a in anns {
        assert_eq!(a["origin"]["by"], "runbook", "{a}");
        assert!(a["origin"]["incident"].as_str().is_some(), "{a}");
        assert!(a["expires_at"].as_str().is_some(), "{a}");
    }
    let inc = until(&c, "both escalations in the timeline", || {
        let open = incidents(&c, true);
        let inc = open.first().cloned().ok_or("no incident")?;
        let notes = inc["timeline"].to_string();
        (notes.contains("escalated upstream by runbook upstream-flowspec")
            && notes.contains("escalated upstream by runbook upstream-rtbh"))
        .then_some(inc)
        .ok_or(notes)
    });
    assert_eq!(inc["target"], SERVERS_V4[0]);

    // Refused, one line each.
    let e = refused(&c, &["bgp", "announce", "blackhole", "203.0.113.1", "--ttl", "1m"]);
    assert!(e.contains("outside the protected networks"), "{e}");
    let e = refused(&c, &["bgp", "announce", "flowspec", "--dst", "198.51.100.64/26", "--proto", "udp", "--ttl", "1m"]);
    assert!(e.contains("FlowSpec destination 198.51.100.64/26 is broader than /28"), "{e}");
    let e = refused(&c, &["bgp", "announce", "blackhole", SERVERS_V4[2], "--ttl", "1m"]);
    assert!(e.contains("2 announcements are in force already"), "{e}");

    // Metrics.
    let m = c.metrics();
    for line in [
        "detector_bgp_announcements{type=\"flowspec\"} 1",
        "detector_bgp_announcements{type=\"blackhole\"} 1",
        &format!("detector_bgp_session_up{{neighbor=\"{UPSTREAM_PEERING_V4}\"}} 1"),
        "detector_bgp_changes_total{type=\"blackhole\",change=\"announce\"} 1",
        "detector_bgp_refused_total{reason=\"outside\"} 1",
        "detector_bgp_refused_total{reason=\"full\"} 1",
        "detector_bgp_refused_total{reason=\"too_broad\"} 1",
    ] {
        assert!(
            m.contains(line),
            "no {line} in:\n{}",
            m.lines().filter(|l| l.contains("bgp")).collect::<Vec<_>>().join("\n")
        );
    }
    let (ok, why) = promtool_check(&m);
    assert!(ok, "promtool: {why}");

    // gobgpd killed: restarted, announcements restored.
    let rec = Record::load(&c.state_dir).expect("gobgpd recorded");
    unsafe { libc::kill(rec.pid as i32, libc::SIGKILL) };
    let t_kill = Instant::now();
    until(&c, "gobgpd restarted", || {
        let s = status(&c);
        (s["daemon"]["restarts"].as_u64() >= Some(1) && s["daemon"]["pid"].as_u64().is_some())
            .then_some(())
            .ok_or(s["daemon"].to_string())
    });
    until(&c, "the announcements restored", || {
        flowspec_in_bird(&bird, SERVERS_V4[0])?;
        blackhole_in_bird(&bird, &up.ns, SERVERS_V4[0])
    });
    let restored_after = t_kill.elapsed();
    assert!(c.metrics().contains("detector_bgp_daemon_restarts_total 1"));

    // The controller killed mid-incident: gobgpd keeps announcing.
    let gobgpd = Record::load(&c.state_dir).expect("gobgpd recorded").pid;
    c.stop_with(libc::SIGKILL);
    flood.stop().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    flowspec_in_bird(&bird, SERVERS_V4[0]).expect("gobgpd announces through a controller crash");
    blackhole_in_bird(&bird, &up.ns, SERVERS_V4[0]).expect("gobgpd announces through a controller crash");

    // Restarted after the incident would have ended: adopted, resolved, withdrawn.
    let t_restart = Instant::now();
    let mut c = start(&lab, cfg, runbooks);
    let s = status(&c);
    assert_eq!(s["daemon"]["pid"].as_u64(), Some(gobgpd as u64), "not adopted: {s}");
    assert_eq!(s["daemon"]["adopted"], true, "{s}");
    until(&c, "the stale announcements withdrawn from BIRD", || gone_from_bird(&bird, &up.ns, SERVERS_V4[0]));
    let withdrawn_after = t_restart.elapsed();
    assert!(status(&c)["announcements"].as_array().unwrap().is_empty());

    // A clean stop with --on-stop detach stops gobgpd.
    c.stop().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(Record::load(&c.state_dir).is_none(), "gobgpd still recorded after a detach stop");
    eprintln!(
        "bgp: flood to FlowSpec in BIRD {flowspec_after:?}, to blackhole in BIRD {blackhole_after:?}; restored \
         {restored_after:?} after kill -9 of gobgpd; stale withdrawn {withdrawn_after:?} after the restart; {:?} in \
         all",
        t_all.elapsed()
    );
    assert!(lab.default_routes().unwrap().is_empty());
}

/// The transit test's hold on the blackhole, in seconds.
const HOLD: u64 = 12;

/// The transit lab's configuration: both families protected, a session
/// per family with the upstream (BIRD in the router lab's inet), a quiet
/// time long enough to look at a blackhole before the incident it ended
/// resolves.
fn transit_config(lab: &RouterLab) -> String {
    format!(
        "detection:\n  hold: 300ms\n  quiet: 4s\n  baseline: {{ warmup: 1h }}\nnetworks:\n  hostgroups:\n    - name: \
         customers\n      prefixes: [198.51.100.0/24, '2001:db8:100::/64']\n      families:\n        udp_flood: {{ \
         pps: 5000 }}\n      total:\n        udp_flood: {{ pps: 6000 }}\ninterfaces:\n  {iface}: {{ capacity_bps: 1M \
         }}\nbgp:\n  local_as: 64512\n  router_id: {OUTSIDE_V4}\n  neighbors:\n    - {{ address: {INET_V4}, \
         remote_as: 65000, connect_retry: 1s, families: [ipv4_unicast, ipv4_flowspec] }}\n    - {{ address: \
         '{INET_V6}', remote_as: 65000, connect_retry: 1s, families: [ipv6_unicast, ipv6_flowspec] }}\n  limits: {{ \
         max_announcements: 4, flowspec_min_v4: 28, flowspec_min_v6: 64 }}\n  gobgpd: {{ api_port: 50062 }}\n",
        iface = lab.outside_if
    )
}

/// Packets into the upstream from the attackers, and out of it towards
/// the router, over `window`.
fn across_upstream(lab: &RouterLab, transit: &Transit, window: Duration) -> (u64, u64) {
    let (rx0, _) = link_packets(&lab.inet_ns, &transit.transit_if).unwrap();
    let (_, tx0) = link_packets(&lab.inet_ns, &lab.inet_if).unwrap();
    std::thread::sleep(window);
    let (rx1, _) = link_packets(&lab.inet_ns, &transit.transit_if).unwrap();
    let (_, tx1) = link_packets(&lab.inet_ns, &lab.inet_if).unwrap();
    (rx1 - rx0, tx1 - tx0)
}

/// The neighbor's session, as `detector bgp status` says.
fn session(c: &Controller, neighbor: &str) -> String {
    let s = status(c);
    s["neighbors"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["address"] == neighbor))
        .and_then(|n| n["state"].as_str())
        .unwrap_or("unlisted")
        .to_string()
}

/// A flood that crosses the upstream: the blackhole the ladder announces
/// drops it there, counted on the upstream's interfaces (in from the
/// attackers, not out towards the router), for IPv4 (hping3) and IPv6
/// (`detector flood`). A session flap (BIRD's side, gobgpd untouched)
/// takes the routes away and gives them back; a withdrawal made while the
/// session is down is not lost when it comes back. The blackhole's step
/// has a hold: it outlives the incident it hid until the hold ends.
#[test]
fn a_blackhole_drops_the_flood_at_the_upstream() {
    require_root!();
    let _serial = common::serial();
    let lab = RouterLab::new().unwrap_or_else(|e| panic!("{e}"));
    let transit = Transit::attach(&lab).unwrap_or_else(|e| panic!("{e}"));
    let upstream = Upstream {
        router_id: INET_V4,
        local_address: INET_V4,
        local_as: 65000,
        neighbor: OUTSIDE_V4,
        neighbor_as: 64512,
    };
    let bird = Bird::start(&lab.inet_ns, &transit.dir, &provider_config_with_v6(&upstream, INET_V6, OUTSIDE_V6))
        .unwrap_or_else(|e| panic!("{e}"));
    let cfg_path = lab.dir.join("transit.yaml");
    std::fs::write(&cfg_path, transit_config(&lab)).unwrap();
    // The shipped ladder, the blackhole with a hold.
    let runbooks = lab.dir.join("runbooks");
    std::fs::create_dir_all(&runbooks).unwrap();
    let shipped = |f: &str| std::fs::read_to_string(Path::new(UPSTREAM_RUNBOOKS).join(f)).unwrap();
    std::fs::write(runbooks.join("upstream-flowspec.yaml"), shipped("upstream-flowspec.yaml")).unwrap();
    let rtbh = shipped("upstream-rtbh.yaml");
    let held =
        rtbh.replace("{ action: blackhole, ttl: 1h }", &format!("{{ action: blackhole, ttl: 1h, hold: {HOLD}s }}"));
    assert_ne!(rtbh, held);
    std::fs::write(runbooks.join("upstream-rtbh.yaml"), held).unwrap();
    let c = start(&lab, cfg_path.to_str().unwrap(), &runbooks);
    let _end = EndGobgpd(c.state_dir.clone());
    until(&c, "both sessions Established", || {
        let (v4, v6) = (session(&c, INET_V4), session(&c, INET_V6));
        (v4 == "established" && v6 == "established").then_some(()).ok_or(format!("{v4}, {v6}"))
    });
    let gobgpd = status(&c)["daemon"]["pid"].as_u64().expect("gobgpd runs");

    // IPv4: hping3 from behind the upstream.
    let victim = SERVERS_V4[0];
    let flood = Hping3::start(&transit.ns, &["--udp", "-n", "-p", FLOOD_PORT, "-i", "u50", "-d", "64", victim])
        .unwrap_or_else(|e| panic!("{e}"));
    until(&c, "the FlowSpec rule in BIRD", || flowspec_in_bird(&bird, victim));
    until(&c, "the blackhole in the upstream", || blackhole_in_bird(&bird, &lab.inet_ns, victim));
    let (arrived, forwarded) = across_upstream(&lab, &transit, Duration::from_secs(1));
    assert!(arrived > 5000, "the flood is not reaching the upstream: {arrived} packets in 1 s");
    assert!(forwarded < arrived / 100, "the upstream forwarded {forwarded} of {arrived} packets");
    eprintln!("bgp: IPv4 blackhole: {arrived} packets into the upstream in 1 s, {forwarded} out towards the router");

    // A session flap, gobgpd untouched: the routes go with the session and
    // come back with it.
    birdc(&bird, &["disable", "detector"]);
    until(&c, "the blackhole gone with the session", || {
        let k = kernel_routes(&lab.inet_ns, victim);
        (!k.contains("blackhole")).then_some(()).ok_or(k)
    });
    birdc(&bird, &["enable", "detector"]);
    until(&c, "the blackhole back with the session", || blackhole_in_bird(&bird, &lab.inet_ns, victim));
    flowspec_in_bird(&bird, victim).expect("the FlowSpec rule back with the session");
    let s = status(&c);
    assert_eq!(s["daemon"]["pid"].as_u64(), Some(gobgpd), "{s}");
    assert_eq!(s["daemon"]["restarts"].as_u64(), Some(0), "{s}");

    // A withdrawal while the session is down is not lost.
    birdc(&bird, &["disable", "detector"]);
    flood.stop().unwrap();
    until(&c, "the incident resolved and its announcements withdrawn", || {
        let s = status(&c);
        (s["announcements"].as_array().unwrap().is_empty() && incidents(&c, true).is_empty())
            .then_some(())
            .ok_or(s.to_string())
    });
    birdc(&bird, &["enable", "detector"]);
    until(&c, "the IPv4 session back", || {
        let v4 = session(&c, INET_V4);
        (v4 == "established").then_some(()).ok_or(v4)
    });
    std::thread::sleep(Duration::from_secs(2));
    gone_from_bird(&bird, &lab.inet_ns, victim).expect("a withdrawal made while the session was down is lost");

    // IPv6: `detector flood` from behind the upstream.
    let victim = SERVERS_V6[0];
    let mac = transit.transit_mac(&lab).unwrap().iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let flood = DetectorCommand::new(detector_bin(), &transit.ns)
        .args([
            "flood",
            "--iface",
            &transit.attack_if,
            "--kind",
            "udp",
            "--src",
            ATTACK_V6,
            "--dst",
            victim,
            "--dst-port",
            FLOOD_PORT,
            "--dst-mac",
            &mac,
            "--rate",
            "15000",
            "--duration",
            "60s",
        ])
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let f6 = until(&c, "the IPv6 FlowSpec rule in BIRD", || flowspec_in_bird(&bird, victim));
    assert!(f6.contains("(generic, 0x80060000, 0x0)"), "no discard action:\n{f6}");
    until(&c, "the IPv6 blackhole in the upstream", || blackhole_in_bird(&bird, &lab.inet_ns, victim));
    let t_blackhole = Instant::now();
    let (arrived, forwarded) = across_upstream(&lab, &transit, Duration::from_secs(1));
    assert!(arrived > 5000, "the IPv6 flood is not reaching the upstream: {arrived} packets in 1 s");
    assert!(forwarded < arrived / 100, "the upstream forwarded {forwarded} of {arrived} IPv6 packets");
    eprintln!("bgp: IPv6 blackhole: {arrived} packets into the upstream in 1 s, {forwarded} out towards the router");
    let inc = incidents(&c, true).into_iter().next().expect("the IPv6 incident");
    assert_eq!(inc["target"], victim, "{inc}");
    flood.stop(libc::SIGINT, Duration::from_secs(5)).unwrap();
    // Resolved (the blackhole hides the flood): the FlowSpec rule is
    // withdrawn, the blackhole kept until its hold ends.
    until(&c, "the IPv6 incident resolved and its FlowSpec rule withdrawn", || {
        let f6 = birdc(&bird, &["show", "route", "table", "flowspec6"]);
        (incidents(&c, true).is_empty() && f6.contains("Table flowspec6") && !f6.contains(victim))
            .then_some(())
            .ok_or(f6)
    });
    assert!(t_blackhole.elapsed() < Duration::from_secs(HOLD - 2), "resolved too late to see the hold");
    blackhole_in_bird(&bird, &lab.inet_ns, victim).expect("the blackhole is kept for its hold");
    let s = status(&c);
    let kept = &s["announcements"][0];
    assert!(kept["held_until"].as_str().is_some() && kept["type"] == "blackhole", "{s}");
    until(&c, "the IPv6 blackhole withdrawn when its hold ends", || gone_from_bird(&bird, &lab.inet_ns, victim));
    let held_for = t_blackhole.elapsed();
    assert!(held_for >= Duration::from_secs(HOLD - 1), "withdrawn after {held_for:?}, before its hold ended");
    eprintln!("bgp: the IPv6 blackhole was held {held_for:?} (hold {HOLD}s)");
    assert!(status(&c)["announcements"].as_array().unwrap().is_empty());
    assert!(lab.default_routes().unwrap().is_empty());
    assert!(transit.default_routes().unwrap().is_empty());
}
