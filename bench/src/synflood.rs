//! CPU per spoofed SYN: SYN cookies answered in XDP by the detector (a
//! `syn_cookies` rule) against the kernel's own (`net.ipv4.tcp_syncookies
//! = 2`, no XDP program), beside a reflector (an XDP program that sends
//! every frame back unchanged: the lab's own cost of an XDP answer). Each
//! gets a lab of its own with a real listener on the target's port, and
//! the same flood: the exact engine (see [`send_exact`] for why not the
//! fast one), a SYN as Linux sends it (74 bytes, options MSS, SACK
//! permitted, timestamps, window scale) from a random source of
//! 198.18.0.0/16 each, to the listener's address and port. The labs are
//! flooded in turns, as in `firewall.rs`, and CPU is counted the same way:
//! the softirq time of all CPUs (`/proc/stat`) over the flood, divided by
//! the SYNs answered.
//!
//! Both ways the answer really leaves: the target's namespace routes
//! 198.18.0.0/16 to a neighbour whose address is the flood's source MAC,
//! so the kernel's SYN-ACKs go back out of the veth with the same Ethernet
//! addresses as the XDP program's (which swaps the SYN's), and the
//! generator's namespace discards them (not addressed to it) either way. A
//! veth delivers XDP_TX frames only to a peer with an XDP program of its
//! own, so the XDP lab has the empty program on the generator's end
//! (`Lab::accept_xdp_tx`); the kernel's lab needs none, and its SYN-ACKs
//! reach the generator's stack through the backlog instead. That
//! receiving is softirq too, counted both ways.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use aya::programs::XdpMode;
use detector::{
    clock::Clock,
    flood::{
        self,
        sources::{Sources, Spread},
        FloodPlan, FloodReport, Limit, Rate,
    },
    iface,
    kernel::{
        counters::CounterMaps,
        ebpf::{self, CountingOptions},
        rules::RuleMaps,
        syncookie,
        xdp::{self, ModeChoice},
    },
    lab::{counters::NetCounters, sysctl, tcp::HttpServer, Lab, TGT_V4},
    mitigate::{
        prefix::Prefix,
        rule::RuleRequest,
        ruleset::{AllowSource, Limits, RuleSet},
    },
    netns::NetnsGuard,
    span::Span,
};
use detector_common::{
    flood::FLOOD_PROGRAM,
    maps::DEFAULT_MAX_SOURCES,
    rules::{DEFAULT_MAX_ALLOW, DEFAULT_MAX_RULES},
};

use crate::{
    firewall::{in_netns, pin_to, rx_packets, sender_cpu, softirq_ns, ROUNDS},
    frames,
};

/// The listener's port.
pub const PORT: u16 = 8080;
/// The flood's sources.
pub const SOURCES: &str = "198.18.0.0/16";
/// The next hop the target routes the flood's sources to: a neighbour
/// entry with the flood's source MAC.
const NEXT_HOP: &str = "192.0.2.254";
const GEN_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Handler {
    /// The detector's `syn_cookies` rule: answered in XDP (`XDP_TX`).
    Xdp,
    /// No XDP program; `net.ipv4.tcp_syncookies = 2`: the listener's stack
    /// answers every SYN with a cookie.
    Kernel,
    /// The flood object's program with no configuration on the target's
    /// end: every frame goes back out unchanged (`XDP_TX`). What the lab's
    /// way of an XDP answer costs with no work in the program: the veth's
    /// copy of the frame into a page of its own, the transmission, and the
    /// generator's end taking the frame in and discarding it.
    Reflector,
}

impl Handler {
    pub fn label(self) -> String {
        match self {
            Handler::Xdp => format!("XDP: the detector, `syncookies add --port {PORT}` (SYN-ACK by XDP_TX)"),
            Handler::Kernel => "the kernel: no XDP program, `net.ipv4.tcp_syncookies = 2`".into(),
            Handler::Reflector => "XDP reflector: every frame sent back unchanged (XDP_TX), no work".into(),
        }
    }
}

/// Figures of one lab, summed over the rounds.
#[derive(Clone, Copy, Default, Debug)]
pub struct SynTotals {
    pub sent: u64,
    /// Frames that reached the target veth (its rx counter).
    pub arrived: u64,
    /// SYNs answered with a cookie: the XDP program's SYN-cookie count, or
    /// the kernel's `TcpExt: SyncookiesSent`.
    pub answered: u64,
    /// SYNs that reached the target's TCP stack (request sockets, the
    /// kernel's cookies, drops at the listener's queue).
    pub in_stack: u64,
    /// Frames that reached the generator's end (its rx counter): the
    /// SYN-ACKs on their way back.
    pub back_at_generator: u64,
    pub seconds: f64,
    /// Softirq time of all CPUs during the floods.
    pub softirq_ns: u64,
}

impl SynTotals {
    pub fn answered_pps(&self) -> f64 {
        self.answered as f64 / self.seconds
    }

    pub fn ns_per_answer(&self) -> f64 {
        self.softirq_ns as f64 / self.answered.max(1) as f64
    }
}

pub struct SynRun {
    pub handler: Handler,
    pub t: SynTotals,
}

pub struct SynComparison {
    pub rounds: u32,
    /// Flood length of one round.
    pub round_seconds: f64,
    pub runs: Vec<SynRun>,
}

impl SynComparison {
    pub fn get(&self, h: Handler) -> Option<&SynTotals> {
        self.runs.iter().find(|r| r.handler == h).map(|r| &r.t)
    }
}

/// What answers the SYNs in one lab; dropped, it goes (program detached)
/// before the lab.
enum Answerer {
    Xdp {
        _attachment: Box<xdp::Attachment>,
        counters: Box<CounterMaps>,
    },
    Kernel,
    /// Counted at the generator's end.
    Reflector {
        _obj: Box<aya::Ebpf>,
    },
}

struct Station {
    answerer: Answerer,
    _server: HttpServer,
    lab: Lab,
    handler: Handler,
    totals: SynTotals,
}

/// Both handlers in their labs, set up first, then flooded in turns for
/// [`ROUNDS`] rounds of `total / ROUNDS`.
pub fn compare(total: Duration) -> Result<SynComparison> {
    let round = total / ROUNDS;
    eprintln!(
        "bench:   spoofed SYNs to a listener, generator pinned to CPU {}; {ROUNDS} rounds of {round:?}",
        sender_cpu()
    );
    let mut stations = Vec::new();
    for h in [Handler::Xdp, Handler::Kernel, Handler::Reflector] {
        stations.push(Station::new(h).with_context(|| format!("setting up {}", h.label()))?);
    }
    for _ in 0..ROUNDS {
        for s in &mut stations {
            s.flood(round).with_context(|| format!("flooding the lab of {}", s.handler.label()))?;
        }
    }
    let mut runs = Vec::new();
    for s in &stations {
        let t = s.totals;
        ensure!(t.answered > 0, "{}: no SYN was answered; the flood never reached the listener", s.handler.label());
        eprintln!(
            "bench:   {:>9.0} SYNs/s answered {:>5.0} ns/SYN  {} ({} of {} arrived answered, {} in the stack, {} back at the generator)",
            t.answered_pps(),
            t.ns_per_answer(),
            s.handler.label(),
            t.answered,
            t.arrived,
            t.in_stack,
            t.back_at_generator
        );
        runs.push(SynRun { handler: s.handler, t });
    }
    Ok(SynComparison { rounds: ROUNDS, round_seconds: round.as_secs_f64(), runs })
}

impl Station {
    fn new(handler: Handler) -> Result<Station> {
        let mut lab = Lab::new()?;
        lab.accept_spoofed_sources()?;
        // As in every lab of `firewall.rs`: a veth without XDP takes live
        // frames only when it runs NAPI, which GRO turns on.
        in_netns(&lab.tgt_ns, "ethtool", &["-K", &lab.tgt_if, "gro", "on"])?;
        // The answers' way back: to the generator's side, addressed to the
        // flood's source MAC.
        let mac = GEN_MAC.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        in_netns(
            &lab.tgt_ns,
            "ip",
            &["neigh", "add", NEXT_HOP, "lladdr", &mac, "dev", &lab.tgt_if, "nud", "permanent"],
        )?;
        in_netns(&lab.tgt_ns, "ip", &["route", "add", SOURCES, "via", NEXT_HOP, "dev", &lab.tgt_if])?;
        let server =
            HttpServer::start(&lab.tgt_ns, SocketAddr::new(TGT_V4.parse()?, PORT)).context("starting the listener")?;
        let answerer = match handler {
            Handler::Xdp => {
                lab.accept_xdp_tx()?;
                detector_syn_cookies(&lab)?
            }
            Handler::Kernel => {
                sysctl(&lab.tgt_ns, "net/ipv4/tcp_syncookies", "2")?;
                Answerer::Kernel
            }
            Handler::Reflector => {
                lab.accept_xdp_tx()?;
                let _in = lab.enter_tgt()?;
                let mut obj = ebpf::load_flood()?;
                // No configuration written: the program leaves the frame as it is.
                ebpf::load_xdp(&mut obj, "flood", FLOOD_PROGRAM)?.attach(&lab.tgt_if, XdpMode::Driver)?;
                Answerer::Reflector { _obj: Box::new(obj) }
            }
        };
        Ok(Station { answerer, _server: server, lab, handler, totals: SynTotals::default() })
    }

    fn answered(&self, net: &NetCounters) -> Result<u64> {
        Ok(match &self.answerer {
            Answerer::Reflector { .. } => rx_packets(&self.lab.gen_ns, &self.lab.gen_if)?,
            Answerer::Xdp { counters, .. } => {
                let snap = counters.classes()?;
                snap.dropped.iter().flatten().map(|c| c.packets).sum()
            }
            Answerer::Kernel => net.get("TcpExt", "SyncookiesSent").unwrap_or(0) as u64,
        })
    }

    /// One flood into this lab, added to the totals.
    fn flood(&mut self, duration: Duration) -> Result<()> {
        let lab = &self.lab;
        let plan = plan(lab, duration)?;
        let net_before = NetCounters::read(&lab.tgt_ns)?;
        let answered_before = self.answered(&net_before)?;
        let rx_before = rx_packets(&lab.tgt_ns, &lab.tgt_if)?;
        let back_before = rx_packets(&lab.gen_ns, &lab.gen_if)?;
        let cpu_before = softirq_ns()?;
        let report = send_exact(lab, plan)?;
        let cpu_after = softirq_ns()?;
        let back_after = rx_packets(&lab.gen_ns, &lab.gen_if)?;
        let rx_after = rx_packets(&lab.tgt_ns, &lab.tgt_if)?;
        let net_after = NetCounters::read(&lab.tgt_ns)?;
        let answered_after = self.answered(&net_after)?;

        let d = net_after.since(&net_before);
        let get = |g: &str, n: &str| d.get(g, n).unwrap_or(0).max(0) as u64;
        let t = &mut self.totals;
        t.sent += report.sent;
        t.arrived += rx_after.saturating_sub(rx_before);
        t.answered += answered_after.saturating_sub(answered_before);
        t.in_stack += get("Tcp", "PassiveOpens") + get("TcpExt", "SyncookiesSent") + get("TcpExt", "ListenDrops");
        t.back_at_generator += back_after.saturating_sub(back_before);
        t.seconds += report.seconds;
        t.softirq_ns += cpu_after.saturating_sub(cpu_before);
        Ok(())
    }
}

/// Runs `plan` with the exact engine (one `send` per frame on a packet
/// socket) out of the lab's generator end, from a thread pinned to
/// [`sender_cpu`].
///
/// Not the fast engine of `firewall.rs`: it runs 65,536 frames per test run
/// with live frames, and the kernel recycles a run's pages without copying
/// the template into them again. A veth hands the page itself to its peer,
/// whose XDP program works on it in place, so the SYN-cookie answer turns
/// the generator's page into the SYN-ACK; once the run's pages have each
/// gone round once, every frame it sends is that SYN-ACK with a new source
/// (seen in this lab: 2,112 SYNs answered, then 2,160,576 SYN-ACKs, which
/// the rule does not match). One batch per test run keeps every frame fresh
/// but sets a run up each time: 2,000 frames a second. The packet socket
/// sends a new buffer every time.
fn send_exact(lab: &Lab, plan: FloodPlan) -> Result<FloodReport> {
    let (gen_ns, gen_if) = (lab.gen_ns.clone(), lab.gen_if.clone());
    std::thread::spawn(move || -> Result<FloodReport> {
        pin_to(sender_cpu())?;
        let _in = NetnsGuard::enter(&gen_ns).with_context(|| format!("entering netns {gen_ns}"))?;
        Ok(flood::run(flood::Engine::Exact, iface::index(&gen_if)?, &plan)?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("flood thread panicked"))?
}

/// The flood: the 74-byte Linux SYN to the listener, a random source of
/// [`SOURCES`] per frame, addressed to the target's MAC (the stack takes
/// only frames for its own address).
fn plan(lab: &Lab, duration: Duration) -> Result<FloodPlan> {
    let sources = Sources::plan(SOURCES.parse()?, None, Some(Spread::Random), None)?;
    let std::net::IpAddr::V4(first) = sources.first else {
        anyhow::bail!("{SOURCES} is not IPv4");
    };
    let tgt: Ipv4Addr = TGT_V4.parse()?;
    let frame = frames::linux_syn(first, tgt, (GEN_MAC, lab.tgt_mac()?), (40000, PORT), 0x1000_0000);
    Ok(FloodPlan { frame, sources, limit: Limit::Duration(duration), rate: Rate::Max, threads: 1 })
}

/// The detector's program on the target's end with one rule, as `detector
/// syncookies add --port PORT` installs it (the host's own address on the
/// allowlist, as on a real host), and the SYN-cookie program in its slot.
fn detector_syn_cookies(lab: &Lab) -> Result<Answerer> {
    let _in = lab.enter_tgt()?;
    let mut obj = ebpf::load_counting(&CountingOptions::new(DEFAULT_MAX_SOURCES))?;
    let counters = CounterMaps::take(&mut obj)?;
    let mut rules = RuleMaps::take(&mut obj)?;
    let mut set = RuleSet::new(Limits { max_rules: DEFAULT_MAX_RULES, max_allow: DEFAULT_MAX_ALLOW });
    set.add_allow(TGT_V4.parse::<Prefix>().map_err(anyhow::Error::msg)?, AllowSource::Host, "bench", 0)?;
    let req = RuleRequest {
        action: "syn_cookies".into(),
        prefix: "::/0".into(),
        dport: Some(Span::one(PORT)),
        ..Default::default()
    };
    set.add_rule(&req, 0)?;
    rules.apply(&set.plan(Clock::now())?)?;
    let mut attachment = xdp::attach(obj, &lab.tgt_if, ModeChoice::Native, false, None)?;
    syncookie::install(attachment.ebpf_mut(), &lab.tgt_if)?;
    Ok(Answerer::Xdp { _attachment: Box::new(attachment), counters: Box::new(counters) })
}
