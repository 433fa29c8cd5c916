//! Upstream mitigation over BGP when things go wrong, through the product:
//! `detector run` in the router lab's router with a `bgp:` section,
//! supervising gobgpd there, peered with BIRD 2 in an upstream namespace
//! (`detector::lab::bgp::RouterUpstream`) configured as a provider would be.
//!
//! - `bgp.json` garbled while the controller is down (killed with SIGKILL,
//!   gobgpd announcing a blackhole): the next start moves it aside and
//!   takes the blackhole back (origin `recovered`, a bounded TTL); BIRD
//!   never loses it.
//! - `bgp.dry_run: true`: a runbook's blackhole and one from the CLI are
//!   recorded (timeline, execution history, `detector bgp status`) and
//!   BIRD, its session up, receives nothing.
//! - `detector detach` after a controller stopped with `--on-stop keep`
//!   also stops the gobgpd it left announcing; BIRD loses the route.
//! - A TTL ends while the controller is killed: the TTL keeper beside
//!   gobgpd withdraws that blackhole on time and nothing else.

mod common;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use common::{cli_json, detector_in, incidents, ok, require_root, Controller};
use detector::{
    bgp::daemon::{end_recorded, Record},
    lab::{
        bgp::{RouterUpstream, ROUTER_PEERING_V4, UPSTREAM_PEERING_V4},
        bird::Bird,
        hping3::Hping3,
        router::SERVERS_V4,
        RouterLab,
    },
};
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(30);
/// gobgpd's API port for these tests (`tests/bgp.rs` uses 50061).
const API_PORT: u16 = 50071;
const FLOOD_PORT: &str = "27015";

/// Ends the gobgpd recorded in the state directory, whatever happens
/// (it outlives the controller by design).
struct EndGobgpd(PathBuf);

impl Drop for EndGobgpd {
    fn drop(&mut self) {
        end_recorded(&self.0);
    }
}

/// The router lab, its BGP upstream with BIRD, and the files
/// `detector run` is started with.
struct Setup {
    // Dropped in this order: BIRD, the upstream, the lab.
    bird: Bird,
    up: RouterUpstream,
    lab: RouterLab,
    config: PathBuf,
    runbooks: PathBuf,
}

impl Setup {
    fn new(dry_run: bool, runbooks: &[(&str, &str)]) -> Setup {
        let lab = RouterLab::new().unwrap_or_else(|e| panic!("{e}"));
        let up = RouterUpstream::attach(&lab.router_ns).unwrap_or_else(|e| panic!("{e}"));
        let bird = up.start_bird().unwrap_or_else(|e| panic!("{e}"));
        let config = lab.dir.join("bgp.yaml");
        std::fs::write(&config, config_text(dry_run)).unwrap();
        let dir = lab.dir.join("runbooks");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in runbooks {
            std::fs::write(dir.join(name), text).unwrap();
        }
        Setup { bird, up, lab, config, runbooks: dir }
    }

    /// `detector run` in the router, with `--on-stop ON_STOP`.
    fn start(&self, on_stop: &str) -> Controller {
        Controller::start_in_router(
            &self.lab,
            &[
                "--config",
                self.config.to_str().unwrap(),
                "--runbooks",
                self.runbooks.to_str().unwrap(),
                "--on-stop",
                on_stop,
            ],
        )
    }

    fn birdc(&self, args: &[&str]) -> String {
        self.bird.birdc(args).unwrap_or_else(|e| e.to_string())
    }

    /// The blackhole for `addr` in BIRD, with (65535,666), and in the
    /// upstream's kernel.
    fn blackhole_in_bird(&self, addr: &str) -> Result<String, String> {
        let bh = self.birdc(&["show", "route", "for", addr, "all"]);
        let kernel = self.up.routes(addr).unwrap_or_default();
        (bh.contains("(65535,666)") && bh.contains("blackhole") && kernel.contains("blackhole"))
            .then(|| bh.clone())
            .ok_or(format!("{bh}\nupstream kernel: {kernel}"))
    }

    fn no_blackhole_in_bird(&self, addr: &str) -> Result<(), String> {
        let bh = self.birdc(&["show", "route", "for", addr, "all"]);
        let kernel = self.up.routes(addr).unwrap_or_default();
        (!bh.contains("blackhole") && !kernel.contains("blackhole"))
            .then_some(())
            .ok_or(format!("{bh}\nupstream kernel: {kernel}"))
    }

    fn session_established(&self) -> Result<(), String> {
        match self.bird.bgp_state("detector") {
            Ok(Some(s)) if s == "Established" => Ok(()),
            other => Err(format!("BIRD's session: {other:?}")),
        }
    }
}

/// Ends a watching loop when dropped.
struct StopWatching<'a>(&'a AtomicBool);

impl Drop for StopWatching<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Whether `pid` runs (a zombie no parent reaps does not).
fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next());
    !matches!(state, None | Some("Z") | Some("X"))
}

fn config_text(dry_run: bool) -> String {
    format!(
        "detection:\n  hold: 300ms\n  quiet: 2s\n  baseline: {{ warmup: 1h }}\nnetworks:\n  hostgroups:\n    - name: \
         customers\n      prefixes: [198.51.100.0/24]\n      families:\n        udp_flood: {{ pps: 5000 }}\n      \
         total:\n        udp_flood: {{ pps: 6000 }}\nbgp:\n  local_as: 64512\n  router_id: {ROUTER_PEERING_V4}\n  \
         neighbors:\n    - {{ address: {UPSTREAM_PEERING_V4}, remote_as: 65000, connect_retry: 1s, families: \
         [ipv4_unicast, ipv4_flowspec] }}\n  dry_run: {dry_run}\n  gobgpd: {{ api_port: {API_PORT}, listen_port: 0 \
         }}\n"
    )
}

fn until<T>(c: &Controller, what: &str, f: impl FnMut() -> Result<T, String>) -> T {
    common::until(c, what, CONVERGE, f)
}

fn status(c: &Controller) -> Value {
    cli_json(c, &["bgp", "status"])
}

fn established(c: &Controller) -> Result<(), String> {
    let s = status(c);
    (s["neighbors"][0]["state"] == "established").then_some(()).ok_or(s.to_string())
}

#[test]
fn an_unreadable_bgp_json_never_withdraws_the_blackhole_in_force() {
    require_root!();
    let _serial = common::serial();
    let t_all = Instant::now();
    let s = Setup::new(false, &[]);
    let target = SERVERS_V4[0];

    let mut c = s.start("detach");
    let _end = EndGobgpd(c.state_dir.clone());
    until(&c, "the session Established", || established(&c));
    let out = ok(&c, &["bgp", "announce", "blackhole", target, "--ttl", "10m"]);
    assert!(out.contains("announced blackhole 198.51.100.10/32"), "{out}");
    until(&c, "the blackhole in BIRD", || s.blackhole_in_bird(target));

    // Killed; bgp.json garbled while no controller runs.
    let gobgpd = Record::load(&c.state_dir).expect("gobgpd recorded").pid;
    assert!(!c.stop_with(libc::SIGKILL).success());
    let dir = c.state_dir.clone();
    let garbage = b"{\"entries\": [ {\"announcement\": garbage";
    std::fs::write(dir.join("bgp.json"), garbage).unwrap();

    // BIRD is watched from now on: the blackhole must never go.
    let watching = AtomicBool::new(true);
    let (c, missing, checks) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let (mut missing, mut checks) = (Vec::new(), 0u32);
            while watching.load(Ordering::Relaxed) {
                if let Err(e) = s.blackhole_in_bird(target) {
                    missing.push(e);
                }
                checks += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            (missing, checks)
        });
        // Whatever happens below, the watcher stops (a panic would
        // otherwise wait for it for ever).
        let stop_watching = StopWatching(&watching);
        let t_restart = Instant::now();
        let c = s.start("detach");
        let st = status(&c);
        assert_eq!(st["daemon"]["pid"].as_u64(), Some(gobgpd as u64), "not adopted: {st}");
        let e = until(&c, "the blackhole taken back", || {
            let st = status(&c);
            let list = st["announcements"].as_array().cloned().unwrap_or_default();
            list.iter().find(|e| e["key"] == "blackhole 198.51.100.10/32").cloned().ok_or(st.to_string())
        });
        eprintln!("recovered {:?} after the restart", t_restart.elapsed());
        // A few seconds of reconciliation after it: nothing withdrawn.
        std::thread::sleep(Duration::from_secs(4));
        drop(stop_watching);
        let (missing, checks) = watcher.join().unwrap();
        assert_eq!(e["origin"]["by"], "recovered", "{e}");
        assert!(e["expires_at"].as_str().is_some(), "{e}");
        (c, missing, checks)
    });
    assert!(missing.is_empty(), "the blackhole left BIRD {} times of {checks}: {}", missing.len(), missing[0]);
    assert!(checks > 40, "BIRD checked only {checks} times");

    let log = c.log_text();
    let line = log.lines().find(|l| l.contains("bgp.json is unreadable")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("moved to") && line.contains("bgp.json.unreadable"), "{line}");
    assert!(line.contains("taken back") && line.contains("1h"), "{line}");
    assert!(log.contains("announcement in force recovered from gobgpd"), "{log}");
    assert!(!log.contains("withdraw blackhole"), "{log}");
    assert_eq!(std::fs::read(dir.join("bgp.json.unreadable")).unwrap(), garbage);

    // The text status says so, with an expiry about an hour ahead.
    let text = ok(&c, &["bgp", "status"]);
    let entry = text.lines().find(|l| l.contains("blackhole 198.51.100.10/32")).unwrap_or_else(|| panic!("{text}"));
    assert!(entry.contains("[recovered; expires 20"), "{entry}");
    let expires = status(&c)["announcements"][0]["expires_at"].as_str().unwrap().to_string();
    let left = humantime::parse_rfc3339(&expires).unwrap().duration_since(std::time::SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(55 * 60) && left <= Duration::from_secs(3600), "{expires}: {left:?} left");
    // Saved again, the recovery done.
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("bgp.json")).unwrap()).unwrap();
    assert_eq!(saved["entries"][0]["origin"]["by"], "recovered", "{saved}");
    assert!(saved.get("recover").is_none(), "{saved}");

    // A clean stop with --on-stop detach withdraws it.
    let mut c = c;
    assert!(c.stop().unwrap().success());
    until(&c, "the blackhole withdrawn from BIRD", || s.no_blackhole_in_bird(target));
    eprintln!("an unreadable bgp.json: {:?} in all", t_all.elapsed());
}

const RTBH: &str =
    "name: upstream-rtbh\ntrigger: { families: [udp_flood] }\nsteps:\n  - bgp: { action: blackhole, ttl: 10m }\n";

/// What BIRD received from the detector: the `Import updates:` counters
/// of each channel of the session (received first).
fn imports_received(s: &Setup) -> Vec<u64> {
    let all = s.birdc(&["show", "protocols", "all", "detector"]);
    all.lines()
        .filter_map(|l| l.trim().strip_prefix("Import updates:"))
        .map(|rest| rest.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(u64::MAX))
        .collect()
}

/// BIRD holds nothing from the detector, its session up.
fn nothing_in_bird(s: &Setup) -> Result<(), String> {
    s.session_established()?;
    for addr in &SERVERS_V4[..2] {
        let r = s.birdc(&["show", "route", "for", addr, "all"]);
        if r.contains("BGP") || r.contains("blackhole") {
            return Err(format!("a route for {addr}:\n{r}"));
        }
        s.no_blackhole_in_bird(addr)?;
    }
    let f4 = s.birdc(&["show", "route", "table", "flowspec4"]);
    if !f4.contains("Table flowspec4") || f4.contains("198.51.100") {
        return Err(format!("flowspec4:\n{f4}"));
    }
    let imports = imports_received(s);
    // The channels both sides have: ipv4 and flow4.
    if imports.len() < 2 || imports.iter().any(|n| *n != 0) {
        return Err(format!("imports received {imports:?}:\n{}", s.birdc(&["show", "protocols", "all", "detector"])));
    }
    Ok(())
}

#[test]
fn dry_run_records_what_it_would_announce_and_sends_nothing() {
    require_root!();
    let _serial = common::serial();
    let t_all = Instant::now();
    let s = Setup::new(false, &[("rtbh.yaml", RTBH)]);
    let target = SERVERS_V4[0];

    // A sending run leaves gobgpd announcing a blackhole (`--on-stop
    // keep`); switched to dry run, the next start replaces that gobgpd
    // (dry run never lists nor withdraws its paths) and BIRD loses it.
    let mut c = s.start("keep");
    let _end = EndGobgpd(c.state_dir.clone());
    until(&c, "the session Established", || established(&c));
    ok(&c, &["bgp", "announce", "blackhole", SERVERS_V4[2], "--ttl", "10m"]);
    until(&c, "the sending run's blackhole in BIRD", || s.blackhole_in_bird(SERVERS_V4[2]));
    assert!(c.stop().unwrap().success());
    std::fs::write(&s.config, config_text(true)).unwrap();

    let mut c = s.start("detach");
    until(&c, "the session Established", || {
        established(&c)?;
        s.session_established()
    });
    assert_eq!(status(&c)["dry_run"], true);
    assert_eq!(status(&c)["daemon"]["adopted"], false, "a sending run's gobgpd adopted by a dry run");
    until(&c, "the sending run's blackhole gone", || s.no_blackhole_in_bird(SERVERS_V4[2]));

    // A flood: the incident opens and the runbook's step is recorded.
    let flood = Hping3::start(&s.lab.inet_ns, &["--udp", "-n", "-p", FLOOD_PORT, "-i", "u50", "-d", "64", target])
        .unwrap_or_else(|e| panic!("{e}"));
    let would = "recorded (bgp.dry_run: nothing sent) for 10m: blackhole 198.51.100.10/32 community 65535:666";
    let inc = until(&c, "the step in the incident's timeline", || {
        let open = incidents(&c, true);
        let inc = open.first().cloned().ok_or("no incident")?;
        let notes = inc["timeline"].to_string();
        notes.contains(&format!("escalated upstream by runbook upstream-rtbh: {would}")).then_some(inc).ok_or(notes)
    });
    assert_eq!(inc["target"], target);
    let id = inc["id"].as_str().unwrap().to_string();
    let st = until(&c, "the would-be announcement in the status", || {
        let st = status(&c);
        let recorded = st["recent"].as_array().cloned().unwrap_or_default().iter().any(|r| {
            r["dry_run"] == true
                && r["change"]["op"] == "announce"
                && r["change"]["announcement"].to_string().contains("198.51.100.10/32")
        });
        recorded.then_some(st.clone()).ok_or(st.to_string())
    });
    let a = &st["announcements"][0];
    assert_eq!(a["key"], "blackhole 198.51.100.10/32", "{st}");
    assert_eq!(a["origin"]["runbook"], "upstream-rtbh", "{st}");
    assert_eq!(a["origin"]["incident"], id.as_str(), "{st}");

    // The execution history says what would have been announced.
    let h = cli_json(&c, &["history", "--incident", &id]);
    let ex = h["executions"].as_array().unwrap();
    let run = ex.iter().find(|e| e["runbook"] == "upstream-rtbh").unwrap_or_else(|| panic!("{h}"));
    let step = &run["steps"][0];
    assert_eq!(step["kind"], "bgp", "{run}");
    assert_eq!(step["outcome"], "dry_run", "{run}");
    assert_eq!(step["detail"], would, "{run}");

    // The CLI announces under dry run too, and says it is not sent.
    let out = ok(&c, &["bgp", "announce", "blackhole", SERVERS_V4[1], "--ttl", "10m"]);
    assert!(
        out.starts_with("recorded, not announced (bgp.dry_run: nothing is sent) blackhole 198.51.100.11/32"),
        "{out}"
    );
    let text = until(&c, "both in the text status", || {
        let text = ok(&c, &["bgp", "status"]);
        text.contains("announce blackhole 198.51.100.11/32").then_some(text.clone()).ok_or(text)
    });
    for line in [
        "DRY RUN: nothing is sent",
        // The two above, and the sending run's, restored from bgp.json.
        "announcements in force (dry run: recorded, not sent): 3",
        "change(s) recorded, not sent:",
        "announce blackhole 198.51.100.10/32 community 65535:666",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }

    // BIRD, its session up all along, never received anything: checked
    // again over a few seconds, reconciliation running every second.
    for _ in 0..6 {
        nothing_in_bird(&s).unwrap_or_else(|e| panic!("{e}\nlog:\n{}", c.log_tail(40)));
        std::thread::sleep(Duration::from_millis(500));
    }
    flood.stop().unwrap();
    assert!(c.stop().unwrap().success());
    eprintln!("bgp.dry_run: {:?} in all", t_all.elapsed());
}

#[test]
fn detach_stops_the_gobgpd_a_stopped_controller_left() {
    require_root!();
    let _serial = common::serial();
    let t_all = Instant::now();
    let s = Setup::new(false, &[]);
    let target = SERVERS_V4[0];

    let mut c = s.start("keep");
    let _end = EndGobgpd(c.state_dir.clone());
    let dir = c.state_dir.to_str().unwrap().to_string();
    until(&c, "the session Established", || established(&c));
    ok(&c, &["bgp", "announce", "blackhole", target, "--ttl", "10m"]);
    until(&c, "the blackhole in BIRD", || s.blackhole_in_bird(target));

    // Refused while the controller runs with the state directory (on an
    // interface with nothing pinned, so the XDP part passes).
    let out = detector_in(&s.lab.router_ns, &["detach", "--iface", &s.up.router_if, "--state-dir", &dir]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains("not stopped: a detector is running with"), "{err}");
    assert_eq!(err.lines().filter(|l| !l.trim().is_empty()).count(), 1, "{err}");
    s.blackhole_in_bird(target).expect("gobgpd left alone");

    // A clean stop with --on-stop keep: gobgpd stays, announcing.
    assert!(c.stop().unwrap().success());
    let gobgpd = Record::load(&c.state_dir).expect("gobgpd still recorded").pid;
    std::thread::sleep(Duration::from_secs(2));
    s.blackhole_in_bird(target).expect("gobgpd announces after a keep stop");

    // `detector detach` stops it; BIRD loses the route.
    let t_detach = Instant::now();
    let out = detector_in(&s.lab.router_ns, &["detach", "--iface", &s.lab.outside_if, "--state-dir", &dir]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let line = text.lines().find(|l| l.starts_with("gobgpd")).unwrap_or_else(|| panic!("{text}"));
    assert_eq!(
        line,
        format!(
            "gobgpd (pid {gobgpd}) recorded in {dir} stopped; its BGP sessions closed, so the upstream withdraws what \
             it announced"
        )
    );
    assert!(Record::load(&c.state_dir).is_none());
    assert!(!alive(gobgpd), "gobgpd {gobgpd} still runs");
    until(&c, "the blackhole gone from BIRD", || s.no_blackhole_in_bird(target));
    let gone_after = t_detach.elapsed();

    // Again: nothing left to stop, nothing said about gobgpd.
    let out = detector_in(&s.lab.router_ns, &["detach", "--iface", &s.lab.outside_if, "--state-dir", &dir]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && !text.contains("gobgpd"), "{text}");
    eprintln!("detach: the blackhole gone from BIRD {gone_after:?} after; {:?} in all", t_all.elapsed());
}

/// The pids of the TTL keepers running for `state_dir` (`detector bgp
/// keep --state-dir DIR`, started by `detector run`).
fn keepers(state_dir: &std::path::Path) -> Vec<u32> {
    let want = format!("bgp\0keep\0--state-dir\0{}\0", state_dir.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).contains(&want) && alive(*pid)
        })
        .collect()
}

/// The keys `bgp.json` holds.
fn saved_keys(state_dir: &std::path::Path) -> Vec<String> {
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(state_dir.join("bgp.json")).unwrap()).unwrap();
    saved["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let a = &e["announcement"];
            format!("{} {}", a["type"].as_str().unwrap_or("?"), a["prefix"].as_str().unwrap_or("?"))
        })
        .collect()
}

/// gobgpd holds no TTLs, and outlives the controller: with the controller
/// killed, the TTL keeper `detector run` started beside gobgpd withdraws
/// a blackhole when its TTL ends (out of `bgp.json` first), leaves the
/// one whose TTL runs on, and BIRD's session stays up. The next start
/// adopts gobgpd and restores only what is left; one keeper per state
/// directory; it exits once gobgpd is stopped.
#[test]
fn a_ttl_ends_on_time_while_no_controller_runs() {
    require_root!();
    let _serial = common::serial();
    let t_all = Instant::now();
    let s = Setup::new(false, &[]);
    let (short, long) = (SERVERS_V4[0], SERVERS_V4[1]);
    const TTL: Duration = Duration::from_secs(8);

    let mut c = s.start("keep");
    let _end = EndGobgpd(c.state_dir.clone());
    let dir = c.state_dir.clone();
    until(&c, "the session Established", || established(&c));
    let keeper = until(&c, "one TTL keeper", || match keepers(&dir)[..] {
        [pid] => Ok(pid),
        ref other => Err(format!("keepers {other:?}")),
    });
    let t_announced = Instant::now();
    ok(&c, &["bgp", "announce", "blackhole", short, "--ttl", &format!("{}s", TTL.as_secs())]);
    ok(&c, &["bgp", "announce", "blackhole", long, "--ttl", "10m"]);
    until(&c, "both blackholes in BIRD", || s.blackhole_in_bird(short).and_then(|_| s.blackhole_in_bird(long)));

    // The controller crashes well before the short TTL ends.
    let gobgpd = Record::load(&dir).expect("gobgpd recorded").pid;
    assert!(!c.stop_with(libc::SIGKILL).success());
    assert!(t_announced.elapsed() < TTL - Duration::from_secs(3), "too slow to test: {:?}", t_announced.elapsed());
    s.blackhole_in_bird(short).expect("still announced before its TTL");

    until(&c, "the short blackhole withdrawn with no controller", || s.no_blackhole_in_bird(short));
    let gone_after = t_announced.elapsed();
    assert!(gone_after >= TTL, "withdrawn {gone_after:?} after it was announced, before its TTL of {TTL:?}");
    assert!(gone_after < TTL + Duration::from_secs(4), "withdrawn {gone_after:?} after it was announced, TTL {TTL:?}");
    // A withdrawal, not a lost session: gobgpd and BIRD's session stay
    // up, and the long one stays announced.
    assert!(alive(gobgpd), "gobgpd {gobgpd} ended");
    s.session_established().unwrap();
    s.blackhole_in_bird(long).expect("the long blackhole stays");
    assert_eq!(saved_keys(&dir), vec![format!("blackhole {long}/32")]);
    let log = std::fs::read_to_string(dir.join("bgp-keeper.log")).unwrap_or_default();
    assert!(
        log.lines().any(|l| l.contains("withdrawn with no controller running") && l.contains(&format!("{short}/32"))),
        "{log}"
    );
    assert_eq!(keepers(&dir), vec![keeper]);

    // The next start adopts gobgpd with what is left; the keeper it starts
    // finds the first one and exits.
    let mut c = s.start("keep");
    until(&c, "the session Established", || established(&c));
    let st = status(&c);
    assert_eq!(st["daemon"]["pid"].as_u64(), Some(gobgpd as u64), "not adopted: {st}");
    let keys: Vec<&str> = st["announcements"].as_array().unwrap().iter().filter_map(|a| a["key"].as_str()).collect();
    assert_eq!(keys, vec![format!("blackhole {long}/32")], "{st}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(keepers(&dir), vec![keeper]);
    s.blackhole_in_bird(long).expect("the long blackhole stays");
    s.no_blackhole_in_bird(short).expect("the expired one stays withdrawn");

    // A clean stop leaves both running; `detector bgp stop` ends gobgpd,
    // and the keeper follows.
    assert!(c.stop().unwrap().success());
    assert_eq!(keepers(&dir), vec![keeper]);
    let out = detector_in(&s.lab.router_ns, &["bgp", "stop", "--state-dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    until(&c, "the keeper gone", || if keepers(&dir).is_empty() { Ok(()) } else { Err("keeper runs".to_string()) });
    let log = std::fs::read_to_string(dir.join("bgp-keeper.log")).unwrap_or_default();
    assert!(log.contains("no gobgpd runs and no controller"), "{log}");
    eprintln!("TTL with no controller: withdrawn {gone_after:?} after the announcement; {:?} in all", t_all.elapsed());
}
