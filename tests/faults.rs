//! Faults survived: the state directory full, read-only, corrupted or
//! deleted while running, and an interface that vanished with its rules
//! pinned. Each is made real (a small tmpfs filled up, a read-only mount,
//! garbage written over a file, `rm -rf`, `ip link del`) against a
//! `detector run` in a lab.

mod common;

use std::{
    ffi::CString,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{
    cli, detector_in, flood_in_background as flood, ok, reaching_stack, require_root, rules, sample, send, Controller,
    Lab,
};
use serde_json::Value;

/// Low floors, static only, short quiet.
const CONFIG: &str = "\
detection:
  hold: 200ms
  quiet: 1s
  baseline: { warmup: 1h }
  families:
    syn_flood: { pps: 3000 }
    udp_flood: { pps: 3000 }
";

fn config(lab: &Lab) -> String {
    let p = lab.dir.join("detector.yaml");
    std::fs::write(&p, CONFIG).unwrap();
    p.to_str().unwrap().to_string()
}

/// A tmpfs mounted on a directory, unmounted on drop (before the lab's
/// scratch directory is removed).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, options: &str, read_only: bool) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let c = |s: &str| CString::new(s).unwrap();
        let (src, target, opts) = (c("tmpfs"), c(dir.to_str().unwrap()), c(options));
        let flags = if read_only { libc::MS_RDONLY } else { 0 };
        let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), src.as_ptr(), flags, opts.as_ptr().cast()) };
        assert_eq!(rc, 0, "mount tmpfs on {}: {}", dir.display(), std::io::Error::last_os_error());
        Tmpfs(dir.to_path_buf())
    }

    /// Writes zeros into a file until the filesystem refuses (ENOSPC).
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 * 1024];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        let _ = f.flush();
        // Even a byte more is refused now.
        assert!(std::fs::write(self.0.join("probe"), b"x").is_err(), "the tmpfs is not full");
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let t = CString::new(self.0.to_str().unwrap()).unwrap();
        unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
    }
}

fn get_json(c: &Controller, path: &str) -> Value {
    let (code, body) = common::http_get(&c.ns, path).unwrap();
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn wait_for<T>(what: &str, timeout: Duration, c: &Controller, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; log:\n{}", c.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn error_lines(log: &str) -> usize {
    log.lines().filter(|l| l.contains("ERROR")).count()
}

#[test]
fn a_full_state_directory_stops_neither_detection_nor_mitigation() {
    require_root!();
    let _serial = common::serial();
    let lab = Lab::new().unwrap();
    let cfg = config(&lab);
    let fs = Tmpfs::mount(&common::state_dir(&lab), "size=4m,mode=0700", false);
    let c = Controller::start(&lab, &["--config", &cfg]);
    let filler = fs.fill();

    // Detection: an incident opens, and /metrics says so.
    let f = flood(&lab, &["--kind", "syn", "--rate", "15000", "--duration", "3s"]);
    let m = c.metrics_until("the incident on /metrics", |m| {
        sample(m, "detector_active_incidents{family=\"syn_flood\"}") == 1.0
    });
    assert_eq!(
        sample(&m, "detector_incidents_total{family=\"syn_flood\",severity=\"low\"}")
            + sample(&m, "detector_incidents_total{family=\"syn_flood\",severity=\"medium\"}")
            + sample(&m, "detector_incidents_total{family=\"syn_flood\",severity=\"high\"}")
            + sample(&m, "detector_incidents_total{family=\"syn_flood\",severity=\"critical\"}"),
        1.0,
        "{m}"
    );
    // Mitigation: a rule goes in and drops, though rules.json cannot be written.
    ok(&c, &["block", "add", "198.18.0.0/24"]);
    ok(&c, &["block", "add", "198.18.1.0/24", "--ttl", "2s"]);
    let through = reaching_stack(&lab, || {
        send(&lab, &["--kind", "udp", "--count", "300", "--rate", "20000", "--src", "198.18.0.1"])
    });
    assert!(through <= 5, "{through} datagrams got through a rule with the disk full");
    let v = rules(&c);
    let r1 = v["rules"].as_array().unwrap().iter().find(|r| r["id"] == "r1").unwrap();
    assert!(r1["dropped_packets"].as_u64().unwrap() >= 295, "{v}");
    f.join().unwrap();
    // The TTL'd rule expires on time, with the disk still full.
    wait_for("the TTL'd rule to expire", Duration::from_secs(6), &c, || {
        (rules(&c)["rules"].as_array().unwrap().len() == 1).then_some(())
    });
    // The errors are counted, and logged without flooding the log.
    let m = c.metrics_until("the refused writes counted", |m| {
        sample(m, "detector_history_write_errors_total") >= 1.0
            && sample(m, "detector_state_write_errors_total{file=\"rules.json\"}") >= 1.0
    });
    assert!(sample(&m, "detector_history_backlog") >= 1.0, "{m}");
    std::thread::sleep(Duration::from_secs(2));
    let log = c.log_text();
    assert!(!log.contains("panicked"), "{log}");
    assert!(error_lines(&log) <= 6, "repeated errors are not rate-limited:\n{log}");
    assert!(log.contains("incident history:"), "{log}");

    // Space again: what waited reaches the disk.
    std::fs::remove_file(filler).unwrap();
    let inc = wait_for("the incident in the history", Duration::from_secs(10), &c, || {
        let (code, body) = common::http_get(&c.ns, "/api/incidents").ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (code == 200).then(|| v["incidents"].as_array()?.first().cloned()).flatten()
    });
    assert_eq!(inc["families"][0], "syn_flood");
    let inc = get_json(&c, &format!("/api/incidents/{}", inc["id"].as_str().unwrap()));
    assert_eq!(inc["timeline"][0]["kind"], "opened", "the opening was kept and written: {inc}");
    let saved = wait_for("rules.json", Duration::from_secs(10), &c, || {
        let text = std::fs::read_to_string(c.state_dir.join("rules.json")).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        (v["rules"].as_array()?.len() == 1).then_some(v)
    });
    assert_eq!(saved["rules"][0]["id"], "r1", "{saved}");
    drop(c);
    drop(fs);
}

#[test]
fn a_read_only_state_directory_is_refused_in_one_line() {
    require_root!();
    let _serial = common::serial();
    let lab = Lab::new().unwrap();
    let dir = lab.dir.join("ro-state");
    let _fs = Tmpfs::mount(&dir, "size=1m", true);
    let out = detector_in(
        &lab.tgt_ns,
        &["run", "--iface", &lab.tgt_if, "--state-dir", dir.to_str().unwrap(), "--metrics-addr", "127.0.0.1:9478"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let last: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(last.len(), 1, "{err}");
    assert!(
        last[0].contains(&format!("the state directory {} is not writable", dir.display()))
            && last[0].contains("Read-only file system"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(common::xdp_attached(&lab.tgt_ns, &lab.tgt_if), None, "nothing was left attached");
}

#[test]
fn corrupted_state_files_never_lose_the_rules_in_force() {
    require_root!();
    let _serial = common::serial();
    let lab = Lab::new().unwrap();
    let mut c = Controller::start(&lab, &[]);
    ok(&c, &["block", "add", "198.18.0.0/24", "--reason", "the flood of last night"]);
    ok(&c, &["ratelimit", "add", "203.0.113.0/24", "--pps", "100", "--class", "udp"]);
    assert!(!c.stop_with(libc::SIGKILL).success());
    let dir = c.state_dir.clone();
    std::fs::write(dir.join("rules.json"), "{\"rules\": [ garbage").unwrap();
    std::fs::write(dir.join("baselines.json"), [0xff, 0xfe, 0x00, 0x9c]).unwrap();

    let c = Controller::start(&lab, &[]);
    let log = c.log_text();
    assert!(log.contains("rules.json is unreadable"), "{log}");
    assert!(log.contains("moved to"), "{log}");
    assert!(log.contains("recovered from the kernel"), "{log}");
    assert!(log.contains("saved baselines unreadable"), "{log}");
    assert!(dir.join("rules.json.unreadable").exists());
    assert_eq!(std::fs::read(dir.join("baselines.json.unreadable")).unwrap(), vec![0xff, 0xfe, 0x00, 0x9c]);
    // Both rules are in force and listed, and the drop still drops.
    let v = rules(&c);
    let list = v["rules"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{v}");
    let drop = list.iter().find(|r| r["prefix"] == "198.18.0.0/24").unwrap();
    assert_eq!(drop["origin"]["by"], "recovered", "{v}");
    let rl = list.iter().find(|r| r["prefix"] == "203.0.113.0/24").unwrap();
    assert_eq!(rl["action"]["pps"], 100, "{v}");
    assert_eq!(rl["classes"], serde_json::json!(["udp"]), "{v}");
    let through = reaching_stack(&lab, || {
        send(&lab, &["--kind", "udp", "--count", "200", "--rate", "20000", "--src", "198.18.0.1"])
    });
    assert!(through <= 5, "{through} datagrams got through the recovered rule");
    // The recovered set is saved again.
    let saved = wait_for("rules.json written again", Duration::from_secs(5), &c, || {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("rules.json")).ok()?).ok()?;
        (v["rules"].as_array()?.len() == 2).then_some(v)
    });
    assert!(saved["next_rule"].as_u64().unwrap() >= 3, "{saved}");

    // A saved rule the API would refuse is not restored (the file edited by
    // hand: a rate limit of 0 with a burst of 0, and an id given twice).
    let mut c = c;
    assert!(c.stop_with(libc::SIGTERM).success());
    let out = detector_in(&lab.tgt_ns, &["detach", "--iface", &lab.tgt_if]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("rules.json")).unwrap()).unwrap();
    let list = v["rules"].as_array_mut().unwrap();
    let rl = list.iter_mut().find(|r| r["prefix"] == "203.0.113.0/24").unwrap();
    rl["action"]["pps"] = 0.into();
    rl["action"]["burst"] = 0.into();
    let mut twin = list.iter().find(|r| r["prefix"] == "198.18.0.0/24").unwrap().clone();
    twin["prefix"] = "192.0.2.128/25".into();
    twin["index"] = 9.into();
    list.push(twin);
    std::fs::write(dir.join("rules.json"), serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let c = Controller::start(&lab, &[]);
    let log = c.log_text();
    assert!(log.contains("saved rule not restored") && log.contains("rate 0 packets per second"), "{log}");
    assert!(log.contains("is used twice"), "{log}");
    let v = rules(&c);
    assert_eq!(v["rules"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["rules"][0]["prefix"], "198.18.0.0/24");
}

#[test]
fn a_state_directory_removed_while_running_comes_back() {
    require_root!();
    let _serial = common::serial();
    let lab = Lab::new().unwrap();
    let cfg = config(&lab);
    let c = Controller::start(&lab, &["--config", &cfg]);
    ok(&c, &["block", "add", "198.18.0.0/24"]);
    std::fs::remove_dir_all(&c.state_dir).unwrap();
    // The CLI reaches the controller again, the rules file is back...
    wait_for("the control socket again", Duration::from_secs(15), &c, || {
        cli(&c, &["rules", "list", "--json"]).0.then_some(())
    });
    wait_for("rules.json again", Duration::from_secs(5), &c, || c.state_dir.join("rules.json").exists().then_some(()));
    // ...and a new incident reaches a new history.
    let f = flood(&lab, &["--kind", "syn", "--rate", "15000", "--duration", "2s"]);
    f.join().unwrap();
    let inc = wait_for("the incident in the new history", Duration::from_secs(15), &c, || {
        let (code, body) = common::http_get(&c.ns, "/api/incidents").ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (code == 200).then(|| v["incidents"].as_array()?.first().cloned()).flatten()
    });
    assert_eq!(inc["families"][0], "syn_flood");
    let log = c.log_text();
    assert!(log.contains("disappeared while running"), "{log}");
    assert!(log.contains("control API listening again"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn pins_of_a_vanished_interface_are_removed() {
    require_root!();
    let _serial = common::serial();
    let lab = Lab::new().unwrap();
    let mut c = Controller::start(&lab, &[]);
    ok(&c, &["block", "add", "198.18.0.0/24"]);
    assert!(!c.stop_with(libc::SIGKILL).success());
    let pins = {
        let _in = lab.enter_tgt().unwrap();
        detector::kernel::pins::dir(&lab.tgt_if).unwrap()
    };
    assert!(pins.join("link").exists());
    // The interface goes away (a deleted namespace does the same to it).
    let del = std::process::Command::new("ip").args(["-n", &lab.tgt_ns, "link", "del", &lab.tgt_if]).status().unwrap();
    assert!(del.success());
    assert!(pins.join("link").exists(), "the kernel does not remove pins by itself");

    // `detector detach` (here for another interface) finds and removes them.
    let out = detector_in(&lab.tgt_ns, &["detach", "--iface", "lo"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("{}: the interface no longer exists", lab.tgt_if)),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!pins.exists(), "{} is still there", pins.display());

    // So does the next `detector run`, on an interface of its own.
    let ns = &lab.tgt_ns;
    let ip = |args: &[&str]| assert!(std::process::Command::new("ip").args(args).status().unwrap().success());
    ip(&["-n", ns, "link", "add", "dlvan0", "type", "veth", "peer", "name", "dlvan1"]);
    ip(&["-n", ns, "link", "set", "dlvan0", "up"]);
    ip(&["-n", ns, "link", "set", "dlvan1", "up"]);
    let mut c = Controller::start_on(&lab, "dlvan0", &[]);
    assert_eq!(
        rules(&c)["rules"].as_array().unwrap().len(),
        1,
        "the saved rule applies to the new interface; log:\n{}",
        c.log_text()
    );
    assert!(!c.stop_with(libc::SIGKILL).success());
    let pins = {
        let _in = lab.enter_tgt().unwrap();
        detector::kernel::pins::dir("dlvan0").unwrap()
    };
    assert!(pins.join("link").exists());
    ip(&["-n", ns, "link", "del", "dlvan0"]);
    ip(&["-n", ns, "link", "add", "dlvan2", "type", "veth", "peer", "name", "dlvan3"]);
    ip(&["-n", ns, "link", "set", "dlvan2", "up"]);
    ip(&["-n", ns, "link", "set", "dlvan3", "up"]);
    let c = Controller::start_on(&lab, "dlvan2", &[]);
    let log = c.log_text();
    assert!(log.contains("no longer exists") && log.contains("dlvan0"), "{log}");
    assert!(!pins.exists(), "{} is still there", pins.display());
}
