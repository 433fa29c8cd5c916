//! The cost of dropping a flood at different points of the stack: iptables'
//! raw table, nftables' netdev ingress and inet prerouting hooks, and XDP.
//! Every dropper gets a lab of its own with the same veth and the same
//! flood (the fast engine's live frames, 64-byte UDP, 1,000 sources round
//! robin), and the labs are flooded in turns.
//!
//! How CPU is counted, and why: the generator hands frames to the peer veth,
//! whose NAPI poll then runs in softirq (on the generator's CPU, when the
//! send syscall re-enables bottom halves, or in ksoftirqd). Everything the
//! receiving side does (XDP, building the skb, GRO, netfilter, the stack) is
//! that softirq; the generator's own work is system time. This kernel has
//! tick-based accounting without IRQ time accounting, so a thread's own CPU
//! time (getrusage) includes the softirq work it happened to run, and
//! "busy time minus the generator's time" would subtract the very work we
//! want. /proc/stat keeps softirq time apart, so the receive cost is the
//! softirq time of all CPUs over the run, divided by the packets the
//! dropper counted (an idle minute here shows no softirq time at all).

use std::{process::Command, time::Duration};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use detector::{
    clock::Clock,
    flood::{
        self,
        frame::{self, FrameSpec, Kind},
        sources::{Sources, Spread},
        FloodPlan, FloodReport, Limit, Rate,
    },
    iface,
    kernel::{
        counters::CounterMaps,
        ebpf::{self, CountingOptions},
        rules::RuleMaps,
        xdp::{self, ModeChoice},
    },
    lab::{Lab, TGT_V4},
    mitigate::{
        prefix::Prefix,
        rule::RuleRequest,
        ruleset::{AllowSource, Limits, RuleSet},
    },
    netns::NetnsGuard,
};
use detector_common::{
    maps::DEFAULT_MAX_SOURCES,
    rules::{DEFAULT_MAX_ALLOW, DEFAULT_MAX_RULES},
};

/// A dropper set up on the target's veth. Dropping the box removes it (the
/// lab's namespace would take it along anyway, a moment later).
pub trait Dropper {
    /// Packets dropped so far, from the dropper's own counter.
    fn dropped(&mut self) -> Result<u64>;
}

/// Sets a dropper up on interface `ifname`, the target end of `lab`'s veth
/// (in namespace `lab.tgt_ns`; enter it with `lab.enter_tgt()`). The box it
/// returns lives for the whole run and counts the drops.
pub type Setup = Box<dyn FnOnce(&Lab, &str) -> Result<Box<dyn Dropper>>>;

/// What a dropper does with the flood, so like is compared with like.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Action {
    /// Drops every frame of the flood.
    Drop,
    /// Drops what a source sends above a rate.
    RateLimit,
}

/// Where the dropper sits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Layer {
    Iptables,
    Nftables,
    Xdp,
}

pub struct Variant {
    pub label: String,
    pub layer: Layer,
    pub action: Action,
    pub setup: Setup,
}

/// The XDP droppers to compare: the detector's drop rule and its per-source
/// rate limit plug in here, as `Variant { layer: Layer::Xdp, .. }`.
pub fn xdp_droppers() -> Vec<Variant> {
    vec![
        Variant {
            label: "XDP: the detector, `block add 198.18.0.0/16 --class udp`".into(),
            layer: Layer::Xdp,
            action: Action::Drop,
            setup: detector_xdp(Action::Drop),
        },
        Variant {
            label: "XDP: the detector, `ratelimit add 198.18.0.0/16 --class udp --pps 50 --burst 5`".into(),
            layer: Layer::Xdp,
            action: Action::RateLimit,
            setup: detector_xdp(Action::RateLimit),
        },
    ]
}

/// Figures of one lab, summed over the rounds.
#[derive(Clone, Copy, Default)]
pub struct Totals {
    pub sent: u64,
    /// Frames that reached the target veth (its rx counter).
    pub arrived: u64,
    /// From the dropper's own counter.
    pub dropped: u64,
    pub seconds: f64,
    /// Softirq time of all CPUs during the floods.
    pub softirq_ns: u64,
}

impl Totals {
    pub fn dropped_pps(&self) -> f64 {
        self.dropped as f64 / self.seconds
    }

    pub fn ns_per_drop(&self) -> f64 {
        self.softirq_ns as f64 / self.dropped.max(1) as f64
    }

    pub fn ns_per_arrived(&self) -> f64 {
        self.softirq_ns as f64 / self.arrived.max(1) as f64
    }
}

pub struct DropRun {
    pub label: String,
    pub layer: Layer,
    pub action: Action,
    pub t: Totals,
}

pub struct Comparison {
    pub rounds: u32,
    /// Flood length of one round.
    pub round_seconds: f64,
    /// What `iptables -V` says (nf_tables or legacy).
    pub iptables_version: String,
    /// No dropper: the stack discards the frames itself.
    pub baseline: Totals,
    pub runs: Vec<DropRun>,
}

/// Floods per dropper, taken in turns: a drift of the machine (this one is
/// a VM whose speed wanders by ~10% over a minute) hits every dropper alike.
pub const ROUNDS: u32 = 3;

/// Every dropper (and none, as the baseline) in its own lab, all set up
/// first, then flooded in turns for [`ROUNDS`] rounds of `total / ROUNDS`.
pub fn compare(total: Duration, xdp: Vec<Variant>) -> Result<Comparison> {
    let iptables_version = tool_output("iptables", &["-V"])?.trim().to_string();
    let round = total / ROUNDS;
    eprintln!(
        "bench:   {iptables_version}; GRO on the target veth; generator pinned to CPU {}; {ROUNDS} rounds of {round:?}",
        sender_cpu()
    );
    let mut stations = vec![Station::new("no dropper (the stack discards the frames)".into(), None, None)?];
    for v in netfilter_droppers().into_iter().chain(xdp) {
        stations.push(Station::new(v.label, Some((v.layer, v.action)), Some(v.setup))?);
    }
    for _ in 0..ROUNDS {
        for s in &mut stations {
            s.flood(round).with_context(|| format!("flooding the lab of {}", s.label))?;
        }
    }
    let mut runs = Vec::new();
    for s in &stations {
        let Some((layer, action)) = s.kind else { continue };
        let t = s.totals;
        ensure!(t.dropped > 0, "{}: its counter did not move; the flood never reached it", s.label);
        eprintln!("bench:   {:>9.0} pps dropped {:>5.0} ns/drop  {}", t.dropped_pps(), t.ns_per_drop(), s.label);
        runs.push(DropRun { label: s.label.clone(), layer, action, t });
    }
    let baseline = stations[0].totals;
    eprintln!(
        "bench:   {:>9.0} pps arrived {:>5.0} ns/frame  {}",
        baseline.arrived as f64 / baseline.seconds,
        baseline.ns_per_arrived(),
        stations[0].label,
    );
    Ok(Comparison { rounds: ROUNDS, round_seconds: round.as_secs_f64(), iptables_version, baseline, runs })
}

/// A lab with its dropper, kept for all rounds. Fields drop in order: the
/// dropper (rules flushed, program detached) before its lab.
struct Station {
    dropper: Option<Box<dyn Dropper>>,
    lab: Lab,
    label: String,
    kind: Option<(Layer, Action)>,
    totals: Totals,
}

impl Station {
    fn new(label: String, kind: Option<(Layer, Action)>, setup: Option<Setup>) -> Result<Station> {
        let lab = Lab::new()?;
        // A veth without XDP runs NAPI, and so takes live frames at all, only
        // with GRO on. On in every lab, XDP ones too: the same path for all.
        in_netns(&lab.tgt_ns, "ethtool", &["-K", &lab.tgt_if, "gro", "on"])?;
        let dropper = match setup {
            Some(s) => Some(s(&lab, &lab.tgt_if).with_context(|| format!("setting up {label}"))?),
            None => None,
        };
        Ok(Station { dropper, lab, label, kind, totals: Totals::default() })
    }

    /// One flood into this lab, added to the totals.
    fn flood(&mut self, duration: Duration) -> Result<()> {
        let lab = &self.lab;
        let dropped_before = self.dropper.as_mut().map(|d| d.dropped()).transpose()?;
        let rx_before = rx_packets(&lab.tgt_ns, &lab.tgt_if)?;
        let cpu_before = softirq_ns()?;
        let report = flood_from(lab, duration)?;
        let cpu_after = softirq_ns()?;
        let rx_after = rx_packets(&lab.tgt_ns, &lab.tgt_if)?;
        let dropped_after = self.dropper.as_mut().map(|d| d.dropped()).transpose()?;

        let t = &mut self.totals;
        t.sent += report.sent;
        t.arrived += rx_after.saturating_sub(rx_before);
        t.dropped += dropped_after.zip(dropped_before).map(|(a, b)| a.saturating_sub(b)).unwrap_or(0);
        t.seconds += report.seconds;
        t.softirq_ns += cpu_after.saturating_sub(cpu_before);
        Ok(())
    }
}

/// The flood of the live bench's 1,000-source run (`live.rs`), with the
/// sending thread pinned so the softirq it triggers stays on one CPU.
fn flood_from(lab: &Lab, duration: Duration) -> Result<FloodReport> {
    let sources = Sources::plan("198.18.0.0/16".parse()?, Some(1000), Some(Spread::Sequential), None)?;
    let spec = FrameSpec {
        kind: Kind::Udp,
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [0xff; 6],
        vlans: vec![],
        src: sources.first,
        dst: TGT_V4.parse()?,
        src_port: None,
        dst_port: None,
        size: Some(64),
    };
    let plan = FloodPlan {
        frame: frame::build(&spec)?,
        sources,
        limit: Limit::Duration(duration),
        rate: Rate::Max,
        threads: 1,
    };
    let (gen_ns, gen_if) = (lab.gen_ns.clone(), lab.gen_if.clone());
    std::thread::spawn(move || -> Result<FloodReport> {
        pin_to(sender_cpu())?;
        let _in = NetnsGuard::enter(&gen_ns).with_context(|| format!("entering netns {gen_ns}"))?;
        Ok(flood::run(flood::Engine::Fast, iface::index(&gen_if)?, &plan)?)
    })
    .join()
    .map_err(|_| anyhow!("flood thread panicked"))?
}

/// The first CPU this process may run on.
pub(crate) fn sender_cpu() -> usize {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, filled by the kernel.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return 0;
        }
        (0..libc::CPU_SETSIZE as usize).find(|c| libc::CPU_ISSET(*c, &set)).unwrap_or(0)
    }
}

pub(crate) fn pin_to(cpu: usize) -> Result<()> {
    detector::lab::process::pin_to_cpu(0, cpu).with_context(|| format!("pinning the flood to CPU {cpu}"))
}

/// Softirq time of all CPUs so far, from /proc/stat.
pub(crate) fn softirq_ns() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ensure!(hz > 0, "sysconf(_SC_CLK_TCK) failed");
    // "cpu user nice system idle iowait irq softirq ...": the total line.
    let line = stat.lines().find(|l| l.starts_with("cpu ")).context("/proc/stat has no cpu line")?;
    let ticks: u64 = line
        .split_whitespace()
        .nth(7)
        .and_then(|t| t.parse().ok())
        .with_context(|| format!("/proc/stat: no softirq column in '{line}'"))?;
    Ok(ticks * 1_000_000_000 / hz as u64)
}

/// The interface's rx packet counter (a veth counts XDP's frames there too).
pub fn rx_packets(ns: &str, ifname: &str) -> Result<u64> {
    let out = tool_output("ip", &["-n", ns, "-s", "-j", "link", "show", "dev", ifname])?;
    let json: serde_json::Value = serde_json::from_str(&out).context("parsing `ip -s -j link show`")?;
    json.pointer("/0/stats64/rx/packets")
        .and_then(|p| p.as_u64())
        .with_context(|| format!("`ip -s -j link show dev {ifname}` has no stats64.rx.packets"))
}

/// The detector's own XDP program with one rule, as `detector block add` or
/// `detector ratelimit add` would install it: a drop of the flood's prefix,
/// or 50 packets per second per source (hashlimit's rate in the iptables
/// row), with the host's own address allowlisted as on a real host. Its
/// count is the kernel's drop counters (every reason and class).
fn detector_xdp(action: Action) -> Setup {
    Box::new(move |lab: &Lab, ifname: &str| -> Result<Box<dyn Dropper>> {
        struct Detector {
            // Detaches when dropped.
            _attachment: xdp::Attachment,
            counters: CounterMaps,
        }
        impl Dropper for Detector {
            fn dropped(&mut self) -> Result<u64> {
                let snap = self.counters.classes()?;
                Ok(snap.dropped.iter().flatten().map(|c| c.packets).sum())
            }
        }
        let _in = lab.enter_tgt()?;
        let mut obj = ebpf::load_counting(&CountingOptions::new(DEFAULT_MAX_SOURCES))?;
        let counters = CounterMaps::take(&mut obj)?;
        let mut rules = RuleMaps::take(&mut obj)?;
        let mut set = RuleSet::new(Limits { max_rules: DEFAULT_MAX_RULES, max_allow: DEFAULT_MAX_ALLOW });
        set.add_allow(TGT_V4.parse::<Prefix>().map_err(anyhow::Error::msg)?, AllowSource::Host, "bench", 0)?;
        let mut req = RuleRequest {
            action: "drop".into(),
            prefix: "198.18.0.0/16".into(),
            classes: vec!["udp".into()],
            ..Default::default()
        };
        if action == Action::RateLimit {
            req.action = "rate_limit".into();
            req.pps = Some(50);
            req.burst = Some(5);
        }
        set.add_rule(&req, 0)?;
        rules.apply(&set.plan(Clock::now())?)?;
        let attachment = xdp::attach(obj, ifname, ModeChoice::Native, false, None)?;
        Ok(Box::new(Detector { _attachment: attachment, counters }))
    })
}

/// iptables (raw table) and nftables droppers, all matching the flood's
/// UDP to the target address.
fn netfilter_droppers() -> Vec<Variant> {
    let nft = |label: &str, family: &'static str, hook: &'static str| Variant {
        label: label.into(),
        layer: Layer::Nftables,
        action: Action::Drop,
        setup: Box::new(move |lab: &Lab, ifname: &str| -> Result<Box<dyn Dropper>> {
            let hook = hook.replace("$IF", ifname);
            let script = format!(
                "add table {family} bench; add chain {family} bench c {{ {hook}; }}; add rule {family} bench c ip protocol udp ip daddr {TGT_V4} counter drop"
            );
            in_netns(&lab.tgt_ns, "nft", &[&script])?;
            Ok(Box::new(Nftables { ns: lab.tgt_ns.clone(), family }))
        }),
    };
    vec![
        iptables("iptables raw PREROUTING DROP", Action::Drop, ""),
        iptables(
            "iptables raw PREROUTING hashlimit above 50/s per source, DROP",
            Action::RateLimit,
            "-m hashlimit --hashlimit-above 50/sec --hashlimit-mode srcip --hashlimit-name bench",
        ),
        nft("nftables netdev ingress drop", "netdev", "type filter hook ingress device \"$IF\" priority 0"),
        nft("nftables inet prerouting (priority raw) drop", "inet", "type filter hook prerouting priority raw"),
    ]
}

/// A rule `-p udp -d <target> <matches> -j DROP` in the raw table.
fn iptables(label: &str, action: Action, matches: &'static str) -> Variant {
    Variant {
        label: label.into(),
        layer: Layer::Iptables,
        action,
        setup: Box::new(move |lab: &Lab, _ifname: &str| -> Result<Box<dyn Dropper>> {
            let mut args = vec!["-t", "raw", "-A", "PREROUTING", "-p", "udp", "-d", TGT_V4];
            args.extend(matches.split_whitespace());
            args.extend(["-j", "DROP"]);
            in_netns(&lab.tgt_ns, "iptables", &args)?;
            Ok(Box::new(Iptables { ns: lab.tgt_ns.clone() }))
        }),
    }
}

/// Our rules in the raw table's PREROUTING chain, flushed on drop.
struct Iptables {
    ns: String,
}

impl Dropper for Iptables {
    fn dropped(&mut self) -> Result<u64> {
        let out = in_netns(&self.ns, "iptables", &["-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"])?;
        // Two header lines, then one line per rule: packets first.
        let mut sum = 0;
        for line in out.lines().skip(2) {
            let pkts = line.split_whitespace().next().unwrap_or_default();
            sum += pkts.parse::<u64>().with_context(|| format!("`iptables -L -v -x`: no packet count in '{line}'"))?;
        }
        Ok(sum)
    }
}

impl Drop for Iptables {
    fn drop(&mut self) {
        if let Err(e) = in_netns(&self.ns, "iptables", &["-t", "raw", "-F", "PREROUTING"]) {
            eprintln!("bench: warning: {e:#}");
        }
    }
}

/// Our nftables table `bench`, deleted on drop.
struct Nftables {
    ns: String,
    family: &'static str,
}

impl Dropper for Nftables {
    fn dropped(&mut self) -> Result<u64> {
        let out = in_netns(&self.ns, "nft", &["-j", "list", "table", self.family, "bench"])?;
        let json: serde_json::Value = serde_json::from_str(&out).context("parsing `nft -j list table`")?;
        Ok(counter_packets(&json))
    }
}

impl Drop for Nftables {
    fn drop(&mut self) {
        if let Err(e) = in_netns(&self.ns, "nft", &["delete", "table", self.family, "bench"]) {
            eprintln!("bench: warning: {e:#}");
        }
    }
}

/// The packets of every `counter` expression in nft's JSON.
fn counter_packets(v: &serde_json::Value) -> u64 {
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, v)| match (k.as_str(), v.get("packets").and_then(|p| p.as_u64())) {
                ("counter", Some(p)) => p,
                _ => counter_packets(v),
            })
            .sum(),
        serde_json::Value::Array(a) => a.iter().map(counter_packets).sum(),
        _ => 0,
    }
}

/// `tool args` inside namespace `ns`: its stdout, or an error naming the
/// command with its stderr on one line.
pub(crate) fn in_netns(ns: &str, tool: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["netns", "exec", ns, tool];
    all.extend(args);
    run("ip", &all).map_err(|e| anyhow!("`{tool} {}` in netns {ns}: {e:#}", args.join(" ")))
}

fn tool_output(tool: &str, args: &[&str]) -> Result<String> {
    run(tool, args).map_err(|e| anyhow!("`{tool} {}`: {e:#}", args.join(" ")))
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line: Vec<&str> = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        bail!("failed ({}): {}", out.status, line.join(" / "));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
