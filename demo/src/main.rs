//! `cargo xtask demo`: the whole product in one run, in a lab.
//!
//! A lab (two network namespaces joined by a veth pair); a local HTTP
//! receiver in the target namespace standing in for Slack, PagerDuty and a
//! webhook; `detector run` on the target's end with the shipped runbooks
//! and a demo config with low floors; a 5 s UDP flood from the generator's
//! end. The demo tells what happens as it happens: the incident, the XDP
//! rules a runbook installs and what they drop, every notification, the
//! resolution, and the runbook history. Then it stops the detector and
//! removes the lab.
//!
//! Cleanup: the lab and the processes are dropped on every path out,
//! errors included. Ctrl-C (SIGINT), SIGTERM and SIGHUP set a flag every
//! wait checks, so the demo unwinds through the same cleanup. A demo killed
//! with SIGKILL leaves its lab behind; the next `Lab::new()` (the next demo,
//! bench or test run) sweeps the labs of processes that are gone.

mod procs;
mod watch;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use detector::lab::{Controller, Lab};

#[derive(Parser)]
#[command(name = "detector-demo", about = "A UDP flood in a lab: detected, mitigated, notified, resolved")]
struct Args {
    /// The `detector` binary (release build).
    #[arg(long, value_name = "FILE")]
    detector: PathBuf,
    /// The repository's runbooks directory (copied into the lab).
    #[arg(long, value_name = "DIR")]
    runbooks: PathBuf,
}

/// The receiver's port, inside the target namespace (nothing else there).
const RECEIVER_PORT: u16 = 18080;
/// Where `detector run` serves /metrics and the API, inside the namespace.
const API_PORT: u16 = 9477;
const WEBHOOK_SECRET: &str = "demo-secret";
const NODE: &str = "demo";
const FLOOD_PPS: u64 = 100_000;
const FLOOD_SECONDS: u64 = 5;
const UDP_FLOOR_PPS: u64 = 3000;

/// Low static floors, so a short flood is detected at once and resolves
/// soon after. Severity is the worse of the two scales: 100k pps is 33x the
/// floor, so critical by ratio (10x), which fires every shipped runbook
/// that covers UDP floods, PagerDuty's included.
const CONFIG: &str = "\
# detector-demo: low floors, so a short lab flood is detected at once.
detection:
  hold: 200ms
  quiet: 2s
  baseline: { warmup: 1h }
  severity:
    ratios: { medium: 2, high: 5, critical: 10 }
    pps: { medium: 100000, high: 1000000, critical: 5000000 }
  families:
    udp_flood: { pps: 3000 }
";

fn main() -> ExitCode {
    let args = Args::parse();
    procs::install_stop_handler();
    if let Err(e) = preflight(&args) {
        eprintln!("detector-demo: error: {e:#}");
        return ExitCode::FAILURE;
    }
    let lab = match Lab::new() {
        Ok(lab) => lab,
        Err(e) => {
            eprintln!("detector-demo: error: building the lab: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = demo(&args, &lab);
    let (gen_ns, tgt_ns) = (lab.gen_ns.clone(), lab.tgt_ns.clone());
    // Namespaces, veth pair, anything pinned in bpffs, the scratch directory.
    drop(lab);
    match result {
        Ok(()) => {
            println!("Lab removed: namespaces {gen_ns} and {tgt_ns}, their veth pair and scratch directory.");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("detector-demo: error: {e:#}");
            eprintln!("detector-demo: cleaned up: namespaces {gen_ns} and {tgt_ns} removed.");
            if procs::interrupted() {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn preflight(args: &Args) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo needs root (network namespaces, XDP): run it through `cargo xtask demo`");
    }
    if !args.detector.is_file() {
        bail!("no detector binary at {} (build it: cargo xtask build)", args.detector.display());
    }
    if !args.runbooks.is_dir() {
        bail!("no runbooks directory at {}", args.runbooks.display());
    }
    Ok(())
}

fn demo(args: &Args, lab: &Lab) -> Result<()> {
    let mac = lab.tgt_mac().context("reading the target's MAC address")?;
    let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    println!("detector demo: a UDP flood against a lab host, detected, mitigated in XDP, notified and resolved.");
    println!();
    println!("Lab: two network namespaces joined by a veth pair (nothing on this host's own interfaces changes).");
    println!("  attacker  {:<20} {:<15} {}", lab.gen_ns, lab.gen_if, detector::lab::GEN_V4);
    println!("  target    {:<20} {:<15} {} ({mac})", lab.tgt_ns, lab.tgt_if, detector::lab::TGT_V4);

    let rx = detector::lab::receiver::Receiver::start(&lab.tgt_ns, RECEIVER_PORT)?;
    let base = format!("http://127.0.0.1:{RECEIVER_PORT}");
    println!(
        "Receiver: {base} inside the target namespace stands in for Slack (/slack), PagerDuty (/pagerduty) and \
         the webhook (/webhook), answering 202."
    );

    let runbooks = copy_runbooks(&args.runbooks, &lab.dir.join("runbooks"), &format!("{base}/pagerduty"))?;
    let env = [
        ("SLACK_WEBHOOK_URL", format!("{base}/slack")),
        ("DETECTOR_WEBHOOK_URL", format!("{base}/webhook")),
        ("DETECTOR_WEBHOOK_SECRET", WEBHOOK_SECRET.to_string()),
        ("PAGERDUTY_ROUTING_KEY", "demo-routing-key".to_string()),
    ];
    println!("Runbooks: the shipped ones, copied to {}.", runbooks.display());
    println!(
        "  pagerduty-critical.yaml has no `url` (it pages the real PagerDuty): the copy's notify step got \
         url: \"{base}/pagerduty\"."
    );
    println!(
        "  SLACK_WEBHOOK_URL, DETECTOR_WEBHOOK_URL, DETECTOR_WEBHOOK_SECRET and PAGERDUTY_ROUTING_KEY point there too."
    );
    let rb = runbooks.to_string_lossy().to_string();
    let out =
        procs::detector(&args.detector, &lab.tgt_ns).args(["runbooks", "validate", &rb]).envs(env.clone()).output()?;
    println!("  `detector runbooks validate` on the copy:");
    print!("{}", indent(&String::from_utf8_lossy(&out.stdout), "    "));
    if !out.status.success() {
        bail!("`detector runbooks validate` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }

    let config = lab.dir.join("detector.yaml");
    std::fs::write(&config, CONFIG).with_context(|| format!("writing {}", config.display()))?;
    println!(
        "Config: udp_flood alarms above {UDP_FLOOR_PPS} pps held 200ms, resolves after 2s quiet, critical at 10x the \
         floor."
    );

    let state_dir = lab.dir.join("state");
    // Runs `detector run --iface <tgt_if> --metrics-addr ... --state-dir ...` and these.
    let mut ctl = Controller::builder(&args.detector, lab)
        .metrics_addr(&format!("127.0.0.1:{API_PORT}"))
        .state_dir(&state_dir)
        .args(["--runbooks", &rb, "--node", NODE, "--interval", "50ms", "--config"])
        .arg(&config)
        .envs(env)
        .log(lab.dir.join("detector.log"))
        .supervise(procs::supervision())
        .start()?;
    let result = (|| {
        println!(
            "Detector: `detector run --iface {} --node {NODE} --interval 50ms ...` (pid {}), serving 127.0.0.1:{API_PORT} in \
             the target namespace.",
            lab.tgt_if,
            ctl.pid().unwrap_or_default()
        );
        println!();
        let w = watch::Watch {
            bin: &args.detector,
            lab,
            state_dir: &state_dir,
            rx: &rx,
            ctl: &ctl,
            secret: WEBHOOK_SECRET.as_bytes(),
        };
        // `detector flood --iface <gen_if>` and these.
        let flood_args: Vec<String> = [
            "--kind",
            "udp",
            "--dst",
            detector::lab::TGT_V4,
            "--dst-mac",
            &mac,
            "--src",
            "198.18.0.0/24",
            "--sources",
            "10",
            "--spread",
            "seq",
            "--rate",
            &FLOOD_PPS.to_string(),
            "--duration",
            &format!("{FLOOD_SECONDS}s"),
            "--engine",
            "fast",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        println!(
            "Flood: {FLOOD_PPS} pps of UDP from 10 sources in 198.18.0.0/24 to {} for {FLOOD_SECONDS}s (`detector flood`). \
             Times are from its start.",
            detector::lab::TGT_V4
        );
        let t0 = w.story(&flood_args, Duration::from_secs(FLOOD_SECONDS + 20))?;
        println!();
        w.history(t0)?;
        println!();
        stop(&mut ctl, &args.detector, lab)
    })();
    if result.is_err() && !procs::interrupted() {
        eprintln!("detector-demo: the detector's log, last lines:");
        eprint!("{}", indent(&ctl.log_tail(15), "  | "));
    }
    result
}

/// Copies every runbook; in pagerduty-critical.yaml, gives the PagerDuty
/// notify step `url` (parsed and written back as YAML: the copy loses the
/// file's comments, nothing else).
fn copy_runbooks(from: &Path, to: &Path, pagerduty_url: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let mut patched = false;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let path = entry?.path();
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().to_string()) else { continue };
        if !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let text = if name == "pagerduty-critical.yaml" {
            patched = true;
            with_pagerduty_url(&text, pagerduty_url).with_context(|| format!("patching {}", path.display()))?
        } else {
            text
        };
        std::fs::write(to.join(&name), text).with_context(|| format!("writing {}", to.join(&name).display()))?;
    }
    if !patched {
        bail!("no pagerduty-critical.yaml in {}: the demo would not know where it pages", from.display());
    }
    Ok(to.to_path_buf())
}

/// The runbook with `url` set on each `notify` step of channel pagerduty.
fn with_pagerduty_url(text: &str, url: &str) -> Result<String> {
    use serde_yaml::Value;
    let mut doc: Value = serde_yaml::from_str(text)?;
    let steps = doc.get_mut("steps").and_then(Value::as_sequence_mut).context("the runbook has no steps list")?;
    let mut n = 0;
    for step in steps {
        if let Some(notify) = step.get_mut("notify").and_then(Value::as_mapping_mut) {
            if notify.get("channel").and_then(Value::as_str) == Some("pagerduty") {
                notify.insert(Value::from("url"), Value::from(url));
                n += 1;
            }
        }
    }
    if n == 0 {
        bail!("no notify step with channel pagerduty");
    }
    Ok(format!(
        "# Copied by detector-demo, with `url` added so the page goes to the lab's receiver.\n{}",
        serde_yaml::to_string(&doc)?
    ))
}

/// SIGTERM; with rules still in force (on_stop keep), `detector detach`.
fn stop(ctl: &mut Controller, bin: &Path, lab: &Lab) -> Result<()> {
    let status = ctl.stop()?;
    let log = ctl.log_text();
    if status.success() {
        println!("Stopped the detector with SIGTERM: it exited 0.");
    } else {
        println!("Stopped the detector with SIGTERM: it exited with {status}.");
    }
    if log.contains("XDP program detached") {
        println!("  No rule was left in force, so it detached its XDP program from {}.", lab.tgt_if);
    } else if log.contains("stay in force") {
        let out = procs::detector(bin, &lab.tgt_ns).args(["detach", "--iface", &lab.tgt_if]).output()?;
        println!(
            "  Rules were still in force (on_stop: keep); `detector detach`: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(())
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines().map(|l| format!("{prefix}{l}\n")).collect()
}
