//! Detection never waits for anything else: hostile runbook files (deep
//! nesting, tens of thousands of steps, a huge file) reloaded again and
//! again during a flood hold up neither the incident nor `/healthz`.

mod common;

use std::time::{Duration, Instant};

use common::{flood_in_background as flood, require_root, Controller, Lab};
use serde_json::Value;

const CONFIG: &str = "\
detection:
  hold: 200ms
  quiet: 1s
  baseline: { warmup: 1h }
  families:
    udp_flood: { pps: 3000 }
";

/// Files a stranger with write access to the runbook directory (or a
/// broken generator) could leave there.
fn hostile_runbooks(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let depth = 100_000;
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    std::fs::write(
        dir.join("nested.yaml"),
        format!("name: nested\ntrigger: {{ families: [any] }}\nsteps:\n  - note: {nested}\n"),
    )
    .unwrap();
    let mut steps = String::from("name: many\ntrigger: { families: [any] }\nsteps:\n");
    // Small enough to pass the size limit: refused for its step count.
    for i in 0..3_000 {
        steps.push_str(&format!("  - note: s{i}\n"));
    }
    std::fs::write(dir.join("many.yaml"), steps).unwrap();
    let mut indented = String::from("name: indented\ntrigger: { families: [any] }\nsteps:\n  - note:\n");
    for i in 0..150 {
        indented.push_str(&" ".repeat(4 + 2 * i));
        indented.push_str("k:\n");
    }
    std::fs::write(dir.join("indented.yaml"), indented).unwrap();
    let huge =
        format!("name: huge\ntrigger: {{ families: [any] }}\nsteps:\n  - note: \"{}\"\n", "x".repeat(32 * 1024 * 1024));
    std::fs::write(dir.join("huge.yaml"), huge).unwrap();
    std::fs::write(
        dir.join("fine.yaml"),
        "name: fine\ntrigger: { families: [udp_flood] }\nsteps:\n  - note: \"seen\"\n",
    )
    .unwrap();
}

#[test]
fn hostile_runbooks_reloaded_during_a_flood_hold_up_nothing() {
    require_root!();
    let lab = Lab::new().unwrap();
    let cfg = lab.dir.join("detector.yaml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let books = lab.dir.join("runbooks");
    hostile_runbooks(&books);
    let t0 = Instant::now();
    let c = Controller::start(&lab, &["--config", cfg.to_str().unwrap(), "--runbooks", books.to_str().unwrap()]);
    assert!(t0.elapsed() < Duration::from_secs(10), "the start took {:?}", t0.elapsed());
    let log = c.log_text();
    for (file, what) in [("nested.yaml", "nest"), ("many.yaml", "steps"), ("indented.yaml", "nest"), ("huge.yaml", "")]
    {
        let line = log
            .lines()
            .find(|l| l.contains("runbook refused") && l.contains(file))
            .unwrap_or_else(|| panic!("{file} was not refused:\n{log}"));
        assert!(line.contains(what), "{line}");
    }
    assert!(log.contains("runbook loaded") && log.contains("fine"), "{log}");

    // Reload the directory every 100 ms for the whole flood.
    let pid = c.child.as_ref().unwrap().id() as i32;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hup = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                unsafe { libc::kill(pid, libc::SIGHUP) };
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let start = Instant::now();
    let f = flood(&lab, &["--kind", "udp", "--rate", "20000", "--duration", "3s"]);
    let mut slowest = Duration::ZERO;
    let mut opened = None;
    while start.elapsed() < Duration::from_secs(3) {
        let t = Instant::now();
        let (code, body) = common::http_get(&c.ns, "/api/top").expect("GET /api/top");
        slowest = slowest.max(t.elapsed());
        assert_eq!(code, 200);
        let (code, _) = common::http_get(&c.ns, "/healthz").expect("GET /healthz");
        assert_eq!(code, 200);
        if opened.is_none() {
            let m = c.metrics();
            if common::sample(&m, "detector_active_incidents{family=\"udp_flood\"}") == 1.0 {
                opened = Some(start.elapsed());
            }
        }
        let _: Value = serde_json::from_str(&body).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    hup.join().unwrap();
    f.join().unwrap();
    let opened = opened.unwrap_or_else(|| panic!("no incident during the flood:\n{}", c.log_text()));
    assert!(opened < Duration::from_millis(1500), "the incident opened {opened:?} into the flood");
    assert!(slowest < Duration::from_millis(500), "an API request took {slowest:?} during the reloads");
    let reloads = c.log_text().matches("SIGHUP: reloading the runbooks").count();
    assert!(reloads >= 10, "only {reloads} reloads happened");
}
