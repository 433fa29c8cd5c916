//! The fuzzer's seed corpus and every regression frame, through the real
//! XDP program under `BPF_PROG_TEST_RUN` and through the reference: they
//! must agree on every frame. No network namespace: the program is loaded,
//! never attached.

use std::path::Path;

use detector_common::TrafficClass;
use detector_fuzz::{check, corpus, describe, gen::Generator, hex, kernel::Program, Check, Tally};

/// The seed corpus: this many generated frames from this seed.
const SEED: u64 = 0x5eed_f022;
const SEED_FRAMES: usize = 5000;

/// True when the test can run. Without root it skips with a message,
/// except under `CI=true`, where skipping would hide it (as the other
/// kernel tests do, `tests/common/mod.rs`).
fn have_root(test: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false);
    if root {
        return true;
    }
    let msg = format!("{test}: needs root (CAP_BPF, to load the XDP program)");
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{msg}; CI=true, so it may not be skipped");
    }
    eprintln!("SKIPPED {msg}");
    false
}

#[test]
fn the_xdp_parser_agrees_with_the_reference_on_the_seed_corpus_and_every_regression() {
    if !have_root(module_path!()) {
        return;
    }
    let mut program = Program::load().expect("loading the detector's XDP program");
    let mut failures = Vec::new();

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz/regressions.txt");
    let regressions = corpus::read(&path).expect("reading the regression corpus");
    for e in &regressions {
        if let Check::Mismatch { reference, xdp } = check(&mut program, &e.bytes).unwrap() {
            failures.push(format!(
                "regressions.txt:{}: reference {} / program {}: {}",
                e.line,
                reference.name(),
                describe(&xdp),
                e.note
            ));
        }
    }

    let mut tally = Tally::default();
    for (n, f) in Generator::new(SEED).take(SEED_FRAMES).enumerate() {
        let c = check(&mut program, &f.bytes).unwrap();
        tally.add(&c);
        if let Check::Mismatch { reference, xdp } = c {
            failures.push(format!(
                "seed corpus frame {n}: reference {} / program {}: {}\n  {}",
                reference.name(),
                describe(&xdp),
                f.what,
                hex(&f.bytes)
            ));
        }
    }
    program.finish().expect("every class counter holds what the frames put there");
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));

    // The seed corpus is worth its name: every class a frame alone can be
    // (tcp_established needs a known peer), and the kernel's limit.
    for c in TrafficClass::ALL.into_iter().filter(|c| *c != TrafficClass::TcpEstablished) {
        assert!(tally.per_class[c.index()] > 0, "the seed corpus has no {} frame", c.name());
    }
    assert!(tally.refused > 0, "no frame shorter than an Ethernet header");
    assert_eq!(tally.frames + tally.refused, SEED_FRAMES as u64);
}
