//! ns per packet under `BPF_PROG_TEST_RUN` along each mitigation path:
//! no rule matching, allowlisted, prefix drop, rate-limited admit and
//! drop, signature drop, aggregate-limit admit and drop, a known-good
//! peer passing a signature rule, and an established ACK (a known peer's
//! segment, counted apart), beside the empty program on the same frame.

use anyhow::{ensure, Context as _, Result};
use aya::maps::HashMap as BpfHashMap;
use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use detector::span::Span;
use detector::{
    clock::Clock,
    kernel::{
        ebpf::{self, CountingOptions},
        rules::RuleMaps,
    },
    mitigate::{
        prefix::Prefix,
        rule::RuleRequest,
        ruleset::{AllowSource, Limits, RuleSet},
    },
};
use detector_common::{
    flood::PASS_PROGRAM,
    known::{KnownPeer, KNOWN_PEERS_MAP},
    maps::{SourceKey, DETECTOR_PROGRAM},
};

use crate::{frames, testrun::median};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

pub struct PathCost {
    pub label: &'static str,
    pub verdict: &'static str,
    pub detector_ns: f64,
    pub empty_ns: f64,
}

/// Rules in the trie besides the one under test, so lookups walk a real
/// trie: 200 unrelated /24s, as after a few incidents.
const BACKGROUND_RULES: u32 = 200;

fn run(prog: &Xdp, frame: &[u8], repeat: u32) -> Result<(f64, u32)> {
    let r = prog
        .test_run(TestRunOptions { data_in: Some(frame), repeat, ..TestRunOptions::new() })
        .context("BPF_PROG_TEST_RUN")?;
    Ok((r.duration.as_nanos() as f64, r.return_value))
}

fn request(action: &str, prefix: &str) -> RuleRequest {
    RuleRequest { action: action.into(), prefix: prefix.into(), ..Default::default() }
}

pub fn paths(repeat: u32) -> Result<Vec<PathCost>> {
    let mut obj = ebpf::load_counting(&CountingOptions::new(detector_common::maps::DEFAULT_MAX_SOURCES))?;
    let mut rule_maps = RuleMaps::take(&mut obj)?;
    let mut known: BpfHashMap<_, SourceKey, KnownPeer> =
        BpfHashMap::try_from(ebpf::take_map(&mut obj, "detector", KNOWN_PEERS_MAP)?)?;
    let det = ebpf::load_xdp(&mut obj, "detector", DETECTOR_PROGRAM)?;
    let mut pass_obj = ebpf::load_flood()?;
    let pass = ebpf::load_xdp(&mut pass_obj, "flood", PASS_PROGRAM)?;
    // The UDP frame of the per-class table, from 198.18.0.1.
    let (_, _, udp) = frames::all().into_iter().find(|(l, _, _)| *l == "udp").context("no udp bench frame")?;
    let (_, _, ack) = frames::all().into_iter().find(|(l, _, _)| *l == "tcp_ack").context("no tcp_ack bench frame")?;
    let source = SourceKey::from_ipv4_octets([198, 18, 0, 1]);

    let base = || -> Result<RuleSet> {
        let mut set = RuleSet::new(Limits { max_rules: 1024, max_allow: 1024 });
        for i in 0..BACKGROUND_RULES {
            set.add_rule(&request("drop", &format!("10.{}.{}.0/24", i / 256, i % 256)), 0)?;
        }
        set.add_allow("127.0.0.0/8".parse::<Prefix>().map_err(anyhow::Error::msg)?, AllowSource::Host, "", 0)?;
        Ok(set)
    };
    let rate = |pps: u64, burst: u64| RuleRequest {
        pps: Some(pps),
        burst: Some(burst),
        ..request("rate_limit", "198.18.0.0/16")
    };

    // What a runbook's signature step installs for a UDP flood: every
    // field of a slot in use (class, ports, length, TTL, destination).
    let signature = |action: &str| RuleRequest {
        classes: vec!["udp".into()],
        dport: Some(Span::one(9)),
        length: Some(Span { lo: 60, hi: 1514 }),
        ip_ttl: Some(Span { lo: 1, hi: 255 }),
        dst: Some("0.0.0.0/0".into()),
        ..request(action, "0.0.0.0/0")
    };
    let aggregate = move |pps: u64, burst: u64| RuleRequest {
        aggregate: true,
        pps: Some(pps),
        burst: Some(burst),
        ..signature("rate_limit")
    };

    type Setup = Box<dyn Fn(&mut RuleSet) -> Result<()>>;
    // (label, frame, the source known-good, expected verdict, rules)
    let cases: Vec<(&'static str, &[u8], bool, u32, Setup)> = vec![
        ("pass (no rule matches)", &udp, false, XDP_PASS, Box::new(|_| Ok(()))),
        (
            "allowlisted pass (inside a drop rule)",
            &udp,
            false,
            XDP_PASS,
            Box::new(|s| {
                s.add_rule(&request("drop", "198.18.0.0/16"), 0)?;
                s.add_allow("198.18.0.1/32".parse().map_err(anyhow::Error::msg)?, AllowSource::Operator, "", 0)?;
                Ok(())
            }),
        ),
        (
            "prefix drop",
            &udp,
            false,
            XDP_DROP,
            Box::new(|s| s.add_rule(&request("drop", "198.18.0.0/16"), 0).map(|_| ()).map_err(Into::into)),
        ),
        (
            "prefix drop with a TTL",
            &udp,
            false,
            XDP_DROP,
            Box::new(|s| {
                let req = RuleRequest { ttl_ms: Some(3_600_000), ..request("drop", "198.18.0.0/16") };
                s.add_rule(&req, Clock::now().wall_ms).map(|_| ()).map_err(Into::into)
            }),
        ),
        (
            "rate-limited admit",
            &udp,
            false,
            XDP_PASS,
            Box::new(move |s| s.add_rule(&rate(1_000_000_000, 10_000_000), 0).map(|_| ()).map_err(Into::into)),
        ),
        (
            "rate-limited drop",
            &udp,
            false,
            XDP_DROP,
            Box::new(move |s| s.add_rule(&rate(1, 1), 0).map(|_| ()).map_err(Into::into)),
        ),
        (
            "signature drop",
            &udp,
            false,
            XDP_DROP,
            Box::new(move |s| s.add_rule(&signature("drop"), 0).map(|_| ()).map_err(Into::into)),
        ),
        (
            "aggregate limit admit",
            &udp,
            false,
            XDP_PASS,
            Box::new(move |s| s.add_rule(&aggregate(1_000_000_000, 10_000_000), 0).map(|_| ()).map_err(Into::into)),
        ),
        (
            "aggregate limit drop",
            &udp,
            false,
            XDP_DROP,
            Box::new(move |s| s.add_rule(&aggregate(1, 1), 0).map(|_| ()).map_err(Into::into)),
        ),
        (
            "known-good pass (signature drop rule)",
            &udp,
            true,
            XDP_PASS,
            Box::new(move |s| s.add_rule(&signature("drop"), 0).map(|_| ()).map_err(Into::into)),
        ),
        ("established ACK (a known peer's, no rule)", &ack, true, XDP_PASS, Box::new(|_| Ok(()))),
    ];

    let mut out = Vec::new();
    for (label, frame, is_known, want, setup) in cases {
        let mut set = base()?;
        setup(&mut set)?;
        rule_maps.apply(&set.plan(Clock::now())?)?;
        if is_known {
            known.insert(source, KnownPeer { last_ns: 1, how: 1, _pad: 0 }, 0)?;
        } else {
            let _ = known.remove(&source);
        }
        let frame: &[u8] = frame;
        // Warm the path (the rate limit's first packet takes the burst).
        run(det, frame, 2)?;
        let (_, verdict) = run(det, frame, 1)?;
        ensure!(verdict == want, "{label}: the program returned {verdict}, not {want}");
        let mut d = Vec::new();
        let mut e = Vec::new();
        for _ in 0..3 {
            d.push(run(det, frame, repeat / 3)?.0);
            e.push(run(pass, frame, repeat / 3)?.0);
        }
        let cost = PathCost {
            label,
            verdict: if want == XDP_DROP { "drop" } else { "pass" },
            detector_ns: median(&mut d),
            empty_ns: median(&mut e),
        };
        eprintln!("bench:   {label:<40} detector {:>6.1} ns  empty {:>6.1} ns", cost.detector_ns, cost.empty_ns);
        out.push(cost);
    }
    Ok(out)
}
