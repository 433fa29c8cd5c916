//! Upstream mitigation over BGP against real daemons: the detector's GoBGP
//! adapter starts and supervises `gobgpd` in a speaker namespace, peered
//! with BIRD 2 in an upstream namespace configured as a provider would be
//! (`detector::lab::bird::provider_config`). Announcements go through the
//! pure core (the config check, the one admission check, the planner) and
//! the gRPC client, as the controller will send them.
//!
//! Checked from both sides: the session is Established for gobgpd (its
//! peer list) and for BIRD (`show protocols`); an IPv4 FlowSpec rule built
//! from a signature is in BIRD's `flowspec4` table with its components and the
//! discard action, an IPv6 one in `flowspec6`; a blackhole /32 carries
//! (65535,666), BIRD makes it a blackhole route, the upstream kernel has
//! it, and a datagram to it is refused there while its neighbor address
//! still routes; withdrawing removes all three; `kill -9` of gobgpd: the
//! supervisor starts it again and reconciliation restores everything.
//!
//! Needs `gobgpd` and `bird`/`birdc`: `cargo xtask test` installs them
//! (Debian packages gobgpd and bird2); without them the test fails, saying
//! so.

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use common::require_root;
use detector::{
    bgp::{
        announce::{Announcement, FlowAction, FlowSpecRule},
        check::Scope,
        daemon::{Daemon, DaemonConfig},
        gobgp::{config_toml, Client, SessionState},
        plan::{Desired, Entry, Planner},
    },
    config::ConfigFile,
    detect::signature::Signature,
    lab::{
        bgp::{BgpLab, SPEAKER_AS, SPEAKER_V4, UPSTREAM_AS, UPSTREAM_V4},
        bird::{provider_config, Bird, Upstream},
    },
    mitigate::rule::Origin,
    netns::NetnsGuard,
    networks::Protected,
    span::Span,
};

/// How long BGP gets to bring a session up or carry a change.
const CONVERGE: Duration = Duration::from_secs(30);
const API_PORT: u16 = 50051;

fn config() -> ConfigFile {
    let text = format!(
        "networks:\n  hostgroups:\n    - {{ name: customers, prefixes: [198.51.100.0/24, '2001:db8:100::/48'] }}\n\
         bgp:\n  local_as: {SPEAKER_AS}\n  router_id: {SPEAKER_V4}\n  neighbors:\n    - {{ address: {UPSTREAM_V4}, \
         remote_as: {UPSTREAM_AS}, connect_retry: 1s, families: [ipv4_unicast, ipv4_flowspec, ipv6_flowspec] }}\n  \
         gobgpd: {{ api_port: {API_PORT} }}\n"
    );
    ConfigFile::parse("bgp_lab.yaml", &text).unwrap_or_else(|e| panic!("{e}"))
}

fn signature(classes: &[&str], dst: &str, port: u16) -> Signature {
    Signature {
        classes: classes.iter().map(|c| c.to_string()).collect(),
        dst: Some(dst.parse().unwrap()),
        dst_ports: vec![Span::one(port)],
        src_ports: vec![],
        length: None,
        ttl: None,
        coverage: 1.0,
        collateral: 0.0,
        samples: 1000,
        peacetime_samples: 0,
        vectors: None,
    }
}

fn entry(a: Announcement) -> Entry {
    let origin =
        Origin { by: "runbook".into(), runbook: Some("bgp-lab".into()), incident: Some("i1".into()), step: Some(0) };
    Entry { announcement: a, origin, created_ms: 0, expires_ms: None, hold_until_ms: None }
}

/// Polls `f` until it returns `Some`, or fails after [`CONVERGE`] with the
/// last thing `f` saw.
async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Result<T, String>) -> T {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < CONVERGE {
        match f().await {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not after {CONVERGE:?}; last seen:\n{last}");
}

/// birdc's answer, or its error as text ("Network not found" is an exit
/// status of 1: a route not there yet).
fn birdc(bird: &Bird, args: &[&str]) -> String {
    bird.birdc(args).unwrap_or_else(|e| e.to_string())
}

/// Whether the upstream's kernel lets a datagram to `dst` out.
fn upstream_sends_to(ns: &str, dst: &str) -> std::io::Result<()> {
    let (ns, dst) = (ns.to_string(), dst.to_string());
    std::thread::spawn(move || {
        let _in = NetnsGuard::enter(&ns)?;
        let s = UdpSocket::bind("0.0.0.0:0")?;
        let to: SocketAddr = format!("{dst}:9").parse().map_err(std::io::Error::other)?;
        s.send_to(b"x", to).map(drop)
    })
    .join()
    .expect("send thread")
}

#[test]
fn announcements_reach_bird_and_survive_a_gobgpd_crash() {
    require_root!();
    let started = Instant::now();
    let cfg = config();
    let bgp = cfg.bgp.clone().expect("a bgp section");
    let protected = Protected::new(cfg.networks.as_ref(), &cfg.detection.families);
    let scope = Scope::new(&bgp, &protected, &[]);

    let lab = BgpLab::new().unwrap_or_else(|e| panic!("{e}"));
    let upstream = Upstream {
        router_id: UPSTREAM_V4,
        local_address: UPSTREAM_V4,
        local_as: UPSTREAM_AS,
        neighbor: SPEAKER_V4,
        neighbor_as: SPEAKER_AS,
    };
    let bird = Bird::start(&lab.upstream_ns, &lab.dir, &provider_config(&upstream)).unwrap_or_else(|e| panic!("{e}"));
    let daemon_cfg = DaemonConfig::prepare(&lab.dir, &config_toml(&bgp), bgp.gobgpd.path.as_deref(), API_PORT)
        .unwrap_or_else(|e| panic!("{e}"));

    // gobgpd runs where the supervisor spawns it: this thread, inside the
    // speaker's namespace, on a current-thread runtime.
    let _in = lab.enter_speaker().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let daemon = Daemon::spawn(daemon_cfg);
        let mut client = Client::new(API_PORT);

        // The session, from both sides.
        until("the session Established in gobgpd and in BIRD", async || {
            let peers = client.peers().await.map_err(|e| e.to_string())?;
            let bird_state = bird.bgp_state("detector").map_err(|e| e.to_string())?;
            match (peers.as_slice(), bird_state.as_deref()) {
                ([p], Some("Established")) if p.state == SessionState::Established => Ok(()),
                _ => Err(format!("gobgpd: {peers:?}, BIRD: {bird_state:?}")),
            }
        })
        .await;
        let established = started.elapsed();

        // Refused before anything is sent.
        let mut desired = Desired::new();
        let outside = Announcement::blackhole("203.0.113.7/32".parse().unwrap(), bgp.communities.for_blackhole());
        let e = desired.admit(entry(outside), &scope).unwrap_err();
        assert!(e.to_string().contains("outside the protected networks"), "{e}");
        let broad = FlowSpecRule::from_signature(&signature(&["udp"], "198.51.100.1", 53), None, FlowAction::Discard)
            .map(|r| FlowSpecRule { dst: "198.51.100.0/23".parse().unwrap(), ..r })
            .unwrap();
        assert!(desired.admit(entry(Announcement::Flowspec(broad)), &scope).is_err());

        let flow4 = FlowSpecRule::from_signature(&signature(&["udp"], "198.51.100.10", 53), None, FlowAction::Discard)
            .unwrap_or_else(|e| panic!("{e}"));
        let flow6 = FlowSpecRule::from_signature(
            &signature(&["tcp_syn"], "2001:db8:100::10", 80),
            None,
            FlowAction::RateLimit { bytes_per_second: 125_000 },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let blackhole = Announcement::blackhole("198.51.100.20/32".parse().unwrap(), bgp.communities.for_blackhole());
        let all = [Announcement::Flowspec(flow4), Announcement::Flowspec(flow6), blackhole];
        for a in &all {
            desired.admit(entry(a.clone()), &scope).unwrap_or_else(|e| panic!("{a}: {e}"));
        }

        // Dry run: recorded, nothing reaches the daemon.
        let mut dry = Planner::new(bgp.limits.max_changes_per_minute, true);
        let step = client.sync(&mut dry, &desired, 0).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(step.apply.is_empty());
        assert_eq!(dry.recent().count(), 3);
        assert!(client.list().await.unwrap().announcements.is_empty(), "dry run sent something");

        let mut planner = Planner::new(bgp.limits.max_changes_per_minute, false);
        let step = client.sync(&mut planner, &desired, 0).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(step.apply.len(), 3, "{step:?}");
        let listed = client.list().await.unwrap();
        assert!(listed.unreadable.is_empty(), "{listed:?}");
        assert_eq!(listed.announcements.len(), 3, "{listed:?}");
        for a in &all {
            assert!(listed.announcements.contains(a), "gobgpd lists {:?}, not {a}", listed.announcements);
        }

        let in_bird = async || {
            let f4 = birdc(&bird, &["show", "route", "table", "flowspec4", "all"]);
            let f6 = birdc(&bird, &["show", "route", "table", "flowspec6", "all"]);
            let bh = birdc(&bird, &["show", "route", "for", "198.51.100.20", "all"]);
            let kernel = lab.upstream_routes("198.51.100.20").unwrap();
            let ok = f4.contains("dst 198.51.100.10/32")
                && f4.contains("proto 17")
                && f4.contains("dport 53")
                && f6.contains("dst 2001:db8:100::10/128")
                && f6.contains("dport 80")
                && bh.contains("(65535,666)")
                && kernel.contains("blackhole");
            if ok {
                Ok((f4, f6, bh, kernel))
            } else {
                Err(format!("flow4:\n{f4}\nflow6:\n{f6}\n198.51.100.20:\n{bh}\nupstream kernel:\n{kernel}"))
            }
        };
        let sent = Instant::now();
        let (f4, f6, bh, kernel) = until("the announcements in BIRD", &in_bird).await;
        let announce_latency = sent.elapsed();
        // Discard: the traffic-rate extended community with rate 0; the
        // rate limit: 125000 bytes/s as a float (0x47f42400).
        assert!(f4.contains("(generic, 0x80060000, 0x0)"), "no discard action in flow4:\n{f4}");
        assert!(f6.contains("0x47f42400"), "no rate limit in flow6:\n{f6}");
        assert!(f6.contains("tcp flags 0x2/0x2 && 0x0/0x10"), "SYN set and ACK clear:\n{f6}");
        assert!(bh.contains("blackhole"), "BIRD did not blackhole the route:\n{bh}");
        assert!(kernel.contains("proto bird"), "{kernel}");
        let refused = upstream_sends_to(&lab.upstream_ns, "198.51.100.20").unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EINVAL), "the blackhole let a datagram out: {refused}");
        upstream_sends_to(&lab.upstream_ns, "198.51.100.21").expect("its neighbor still routes to the speaker");

        // Withdraw: gone from BIRD and from the upstream kernel.
        let keys: Vec<String> = all.iter().map(Announcement::key).collect();
        for k in &keys {
            desired.remove(k).expect("in force");
        }
        let step = client.sync(&mut planner, &desired, 1000).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(step.apply.len(), 3);
        assert!(step.apply.iter().all(|c| c.is_withdraw()));
        until("the withdrawals in BIRD", async || {
            let f4 = birdc(&bird, &["show", "route", "table", "flowspec4"]);
            let f6 = birdc(&bird, &["show", "route", "table", "flowspec6"]);
            let kernel = lab.upstream_routes("198.51.100.20").unwrap();
            let answered = f4.contains("Table flowspec4") && f6.contains("Table flowspec6");
            if !answered
                || f4.contains("198.51.100.10")
                || f6.contains("2001:db8:100::10")
                || kernel.contains("blackhole")
            {
                Err(format!("flow4:\n{f4}\nflow6:\n{f6}\nkernel:\n{kernel}"))
            } else {
                Ok(())
            }
        })
        .await;
        upstream_sends_to(&lab.upstream_ns, "198.51.100.20").expect("routed again after the withdrawal");

        // Announced again, then gobgpd dies: restarted empty, restored.
        for a in &all {
            desired.admit(entry(a.clone()), &scope).unwrap();
        }
        client.sync(&mut planner, &desired, 2000).await.unwrap_or_else(|e| panic!("{e}"));
        until("the announcements in BIRD again", &in_bird).await;
        let before = daemon.status();
        let pid = before.pid.expect("gobgpd running");
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let killed = Instant::now();
        let mut watch = daemon.watch();
        tokio::time::timeout(CONVERGE, watch.wait_for(|s| s.starts > before.starts && s.pid.is_some()))
            .await
            .expect("gobgpd restarted")
            .unwrap();
        let mut t = 3000;
        until("the announcements restored after kill -9", async || {
            t += 100;
            // Fails while the new gobgpd is not yet answering: retried.
            client.sync(&mut planner, &desired, t).await.map_err(|e| e.to_string())?;
            in_bird().await.map(drop)
        })
        .await;
        let restored = killed.elapsed();
        assert_eq!(client.list().await.unwrap().announcements.len(), 3);

        daemon.stop().await;
        eprintln!(
            "bgp_lab: session up {established:?} after start; announced to BIRD in {announce_latency:?}; restored \
             {restored:?} after kill -9; {:?} in all",
            started.elapsed()
        );
    });
    assert!(lab.default_routes().unwrap().is_empty(), "{:?}", lab.default_routes());
}
