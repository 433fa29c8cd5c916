//! `detector rules|block|ratelimit|allow|detach`: the operator's verbs on
//! the mitigation rules. All but `detach` talk to the running controller
//! through the control socket in its state directory; `detach` clears
//! what a stopped one left (the XDP program and rules, and gobgpd).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use detector::{
    api::control::{self, AllowRequest, Client},
    bgp::daemon,
    kernel::pins,
    mitigate::{
        mitigator::{RuleView, RulesView},
        prefix::Prefix,
        rule::{check_reason, Rule, RuleRequest},
        ruleset::Removed,
    },
    privileges::{self, Need},
    span::Span,
};

use super::{
    out::{outln, StdoutError},
    parse_duration,
};

#[derive(clap::Args, Debug)]
pub struct StateDirArg {
    /// The state directory of the `detector run` to talk to.
    #[arg(long, value_name = "DIR", default_value = detector::statedir::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

#[derive(clap::Subcommand, Debug)]
pub enum RulesCommand {
    /// The rules and allowlist in force, with their counters.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: StateDirArg,
    },
    /// Remove a rule (r<N>) or an operator allowlist entry (a<N>).
    Remove {
        id: String,
        #[command(flatten)]
        dir: StateDirArg,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum PeersCommand {
    /// The known-good peers of each interface, most recently confirmed first.
    List {
        /// Peers shown per interface.
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: StateDirArg,
    },
    /// Forget every known-good peer (they are learned again as the host
    /// talks to them; learning is paused while an interface is attacked).
    Flush {
        #[command(flatten)]
        dir: StateDirArg,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum AddCommand<T: clap::Args> {
    /// Add one.
    Add(T),
}

/// What a drop or rate-limit rule matches.
#[derive(clap::Args, Debug)]
pub struct MatchArgs {
    /// Source prefix (`203.0.113.0/24`, `2001:db8::/32`) or one address.
    #[arg(value_name = "CIDR")]
    pub prefix: String,
    /// Only this traffic class: tcp, udp, icmp (groups) or a class name
    /// (tcp_syn, dns_response, udp_amplification, ...). Repeat for several.
    #[arg(long = "class", value_name = "CLASS", value_delimiter = ',')]
    pub classes: Vec<String>,
    /// Only this destination port or range (`53`, `1024-65535`).
    #[arg(long, visible_alias = "dport", value_name = "PORT[-PORT]")]
    pub port: Option<Span<u16>>,
    /// Only this source port or range (for example 11211, the memcached
    /// reflectors).
    #[arg(long, visible_alias = "sport", value_name = "PORT[-PORT]")]
    pub source_port: Option<Span<u16>>,
    /// Only packets to this destination prefix or address.
    #[arg(long, value_name = "CIDR")]
    pub dst: Option<String>,
    /// Only frames of this length in bytes, Ethernet header included
    /// (`60-80`, `1514`).
    #[arg(long, value_name = "BYTES[-BYTES]")]
    pub length: Option<Span<u16>>,
    /// Only packets whose IPv4 TTL or IPv6 hop limit is in this range
    /// (`50-64`): spoofed floods often come from one distance.
    #[arg(long, visible_alias = "hop-limit", value_name = "N[-N]")]
    pub ip_ttl: Option<Span<u8>>,
    /// Remove the rule after this long (for example 10m, 2h); without it the
    /// rule stays until removed.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// Why, for whoever reads the rule list later.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    #[command(flatten)]
    pub dir: StateDirArg,
}

#[derive(clap::Args, Debug)]
pub struct BlockArgs {
    #[command(flatten)]
    pub m: MatchArgs,
}

#[derive(clap::Args, Debug)]
pub struct RateLimitArgs {
    #[command(flatten)]
    pub m: MatchArgs,
    /// Packets per second admitted per source address (with --aggregate:
    /// for all matching packets together).
    #[arg(long, value_name = "N", required_unless_present = "aggregate")]
    pub pps: Option<u64>,
    /// One budget shared by every matching packet, whatever its source,
    /// instead of one per source: packets (--pps) and/or bytes (--bps)
    /// per second.
    #[arg(long)]
    pub aggregate: bool,
    /// Packets a source may send at once above the rate (default: a tenth
    /// of a second's worth, at least 5).
    #[arg(long, value_name = "N")]
    pub burst: Option<u64>,
    /// Also limit each source (with --aggregate: all of them together) to
    /// this many bytes per second.
    #[arg(long, value_name = "N")]
    pub bps: Option<u64>,
}

#[derive(clap::Args, Debug)]
pub struct SynCookiesArgs {
    /// The TCP port or range to protect (`80`, `8000-8080`); a listener
    /// must be there.
    #[arg(long, visible_alias = "dport", value_name = "PORT[-PORT]")]
    pub port: Span<u16>,
    /// Only SYNs from this source prefix. Default: every source (`::/0`,
    /// which covers IPv4 too; `0.0.0.0/0` with an IPv4 --dst).
    #[arg(long, value_name = "CIDR")]
    pub source: Option<String>,
    /// Only SYNs to this destination prefix or address.
    #[arg(long, value_name = "CIDR")]
    pub dst: Option<String>,
    /// Remove the rule after this long (for example 10m, 2h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    #[command(flatten)]
    pub dir: StateDirArg,
}

#[derive(clap::Args, Debug)]
pub struct AllowArgs {
    /// Prefix or address that must always pass.
    #[arg(value_name = "CIDR")]
    pub prefix: String,
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    #[command(flatten)]
    pub dir: StateDirArg,
}

#[derive(clap::Args, Debug)]
pub struct DetachArgs {
    /// Interface to clear; repeat for several.
    #[arg(long = "iface", value_name = "IF", required = true)]
    pub ifaces: Vec<String>,
    /// The state directory of the stopped `detector run`: the gobgpd it
    /// left running (recorded there) is stopped too.
    #[command(flatten)]
    pub dir: StateDirArg,
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")
}

fn request(action: &str, m: &MatchArgs) -> RuleRequest {
    let ttl_ms = m.ttl.map(|d| d.as_millis() as u64);
    RuleRequest {
        action: action.into(),
        prefix: m.prefix.clone(),
        classes: m.classes.clone(),
        sport: m.source_port,
        dport: m.port,
        dst: m.dst.clone(),
        length: m.length,
        ip_ttl: m.ip_ttl,
        ttl_ms,
        reason: m.reason.clone(),
        ..Default::default()
    }
}

/// Checks `req` with the rule check the controller applies, so a typo
/// fails before the controller is asked.
fn checked(req: RuleRequest) -> anyhow::Result<RuleRequest> {
    req.check()?;
    Ok(req)
}

pub fn rules(cmd: RulesCommand) -> anyhow::Result<()> {
    let rt = runtime()?;
    match cmd {
        RulesCommand::List { json, dir } => {
            let view = rt.block_on(Client::new(&dir.state_dir).list())?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&view)?)?;
            } else {
                print_view(&view)?;
            }
        }
        RulesCommand::Remove { id, dir } => match rt.block_on(Client::new(&dir.state_dir).remove(&id))? {
            Removed::Rule(r) => outln!("removed {}", r.describe())?,
            Removed::Allow(a) => outln!("removed allowlist entry {} {}", a.id, a.prefix)?,
        },
    }
    Ok(())
}

pub fn block(cmd: AddCommand<BlockArgs>) -> anyhow::Result<()> {
    let AddCommand::Add(args) = cmd;
    let req = checked(request("drop", &args.m))?;
    let rule = runtime()?.block_on(Client::new(&args.m.dir.state_dir).add_rule(&req))?;
    print_added(&rule)?;
    Ok(())
}

pub fn ratelimit(cmd: AddCommand<RateLimitArgs>) -> anyhow::Result<()> {
    let AddCommand::Add(args) = cmd;
    let req = checked(RuleRequest {
        pps: args.pps,
        aggregate: args.aggregate,
        burst: args.burst,
        bps: args.bps,
        ..request("rate_limit", &args.m)
    })?;
    let rule = runtime()?.block_on(Client::new(&args.m.dir.state_dir).add_rule(&req))?;
    print_added(&rule)?;
    Ok(())
}

pub fn peers(cmd: PeersCommand) -> anyhow::Result<()> {
    let rt = runtime()?;
    match cmd {
        PeersCommand::List { limit, json, dir } => {
            let views = rt.block_on(Client::new(&dir.state_dir).peers(limit))?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&views)?)?;
                return Ok(());
            }
            for v in views {
                outln!(
                    "{}: {} known-good peers{}",
                    v.iface,
                    v.total,
                    if v.total > v.peers.len() {
                        format!(" (the {} most recent shown)", v.peers.len())
                    } else {
                        String::new()
                    }
                )?;
                for p in v.peers {
                    outln!("  {:<40} {:<18} {}s ago", p.addr.to_string(), p.how.join(","), p.age_s)?;
                }
            }
        }
        PeersCommand::Flush { dir } => {
            let n = rt.block_on(Client::new(&dir.state_dir).flush_peers())?;
            outln!("forgot {n} known-good peers")?;
        }
    }
    Ok(())
}

pub fn syncookies(cmd: AddCommand<SynCookiesArgs>) -> anyhow::Result<()> {
    let AddCommand::Add(args) = cmd;
    // `::/0` covers every source, IPv4 ones too (they are mapped into IPv6).
    let prefix = match (&args.source, args.dst.as_deref().and_then(|d| d.parse::<Prefix>().ok())) {
        (Some(s), _) => s.clone(),
        (None, Some(d)) if d.is_ipv4() => "0.0.0.0/0".to_string(),
        (None, _) => "::/0".to_string(),
    };
    let reqs = vec![checked(RuleRequest {
        action: "syn_cookies".into(),
        prefix,
        dport: Some(args.port),
        dst: args.dst.clone(),
        ttl_ms: args.ttl.map(|d| d.as_millis() as u64),
        reason: args.reason.clone(),
        ..Default::default()
    })?];
    let rt = runtime()?;
    let client = Client::new(&args.dir.state_dir);
    for req in reqs {
        let rule = rt.block_on(client.add_rule(&req))?;
        print_added(&rule)?;
    }
    Ok(())
}

pub fn allow(cmd: AddCommand<AllowArgs>) -> anyhow::Result<()> {
    let AddCommand::Add(args) = cmd;
    args.prefix.parse::<Prefix>().map_err(anyhow::Error::msg)?;
    check_reason(args.reason.as_deref().unwrap_or_default())?;
    let req = AllowRequest { prefix: args.prefix.clone(), reason: args.reason.clone() };
    let added = runtime()?.block_on(Client::new(&args.dir.state_dir).add_allow(&req))?;
    outln!("added allowlist entry {} {}", added.entry.id, added.entry.prefix)?;
    for r in added.overridden {
        outln!("note: {} no longer applies to {}", r.describe(), added.entry.prefix)?;
    }
    Ok(())
}

/// Removes the XDP program and every pinned rule from the interfaces, now,
/// then stops the gobgpd a stopped controller left running with the state
/// directory. Refused while a controller drives the interface, or (for
/// gobgpd) runs with the state directory.
pub fn detach(args: DetachArgs) -> anyhow::Result<()> {
    privileges::check(Need::Xdp)?;
    for s in pins::sweep_gone() {
        println!(
            "{}: the interface no longer exists; {} pinned objects left behind removed from {}",
            s.iface,
            s.pins,
            s.dir.display()
        );
    }
    for iface in &args.ifaces {
        detector::iface::validate_name(iface)?;
        let dir = pins::dir(iface)?;
        if !dir.exists() {
            outln!("{iface}: nothing pinned (no detector state in {})", dir.display())?;
            continue;
        }
        // A running controller holds the directory's lock: detaching under
        // it would leave it counting nothing, unaware.
        let lock = pins::lock(&dir, iface).map_err(|e| match e {
            pins::LockError::Busy { .. } => anyhow::anyhow!(
                "a detector is running on '{iface}'; stop it first (with --on-stop detach, or then run this again)"
            ),
            other => other.into(),
        })?;
        let n = pins::detach_now(&dir)?;
        drop(lock);
        if let Err(e) = detector::kernel::syncookie::remove_nft(iface) {
            eprintln!("{iface}: {e}");
        }
        outln!("{iface}: XDP program detached; {n} pinned objects removed from {}", dir.display())?;
    }
    end_gobgpd(&args.dir.state_dir)
}

/// Stops the gobgpd recorded in `dir` that a stopped controller left
/// running (`--on-stop keep`, or killed): its sessions close, and the
/// upstream withdraws everything it announced. Refused while a controller
/// runs with `dir`: that gobgpd is its own.
fn end_gobgpd(dir: &Path) -> anyhow::Result<()> {
    let Some(rec) = daemon::Record::load(dir) else { return Ok(()) };
    if control::answers(dir) {
        anyhow::bail!(
            "gobgpd (pid {}) not stopped: a detector is running with {} and drives it; stop that one with \
             --on-stop detach (which withdraws and stops gobgpd)",
            rec.pid,
            dir.display()
        );
    }
    if let Some(pid) = daemon::end_recorded(dir) {
        outln!(
            "gobgpd (pid {pid}) recorded in {} stopped; its BGP sessions closed, so the upstream withdraws what it \
             announced",
            dir.display()
        )?;
    }
    Ok(())
}

fn print_added(r: &Rule) -> Result<(), StdoutError> {
    match r.expires_ms {
        Some(t) => outln!(
            "added {} (expires in {})",
            r.describe(),
            humantime::format_duration(Duration::from_secs(t.saturating_sub(r.created_ms) / 1000))
        ),
        None => outln!("added {}", r.describe()),
    }
}

fn print_view(v: &RulesView) -> Result<(), StdoutError> {
    outln!(
        "{} of {} rules, {} of {} allowlist entries, on {}",
        v.capacity.rules,
        v.capacity.max_rules,
        v.capacity.allow,
        v.capacity.max_allow,
        v.interfaces.join(", ")
    )?;
    if v.rules.is_empty() {
        outln!("no rules")?;
    } else {
        outln!(
            "{:<6} {:<48} {:>10} {:>14} {:>14}  {:<16} reason",
            "id",
            "rule",
            "ttl left",
            "dropped pkts",
            "passed pkts",
            "origin"
        )?;
        for r in &v.rules {
            print_rule(r)?;
        }
    }
    outln!("allowlist:")?;
    for a in &v.allow {
        let source =
            serde_json::to_value(a.source).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        outln!("  {:<6} {:<43} {:<9} {}", a.id, a.prefix.to_string(), source, a.reason)?;
    }
    Ok(())
}

fn print_rule(v: &RuleView) -> Result<(), StdoutError> {
    let r = &v.rule;
    let what = r.describe();
    let what = what.split_once(' ').map(|(_, rest)| rest).unwrap_or(&what);
    let ttl = v
        .ttl_left_ms
        .map(|ms| humantime::format_duration(Duration::from_secs(ms.div_ceil(1000))).to_string())
        .unwrap_or_else(|| "-".into());
    let origin = match (&r.origin.runbook, &r.origin.incident) {
        (Some(rb), _) => format!("runbook {rb}"),
        (None, Some(i)) => format!("incident {i}"),
        _ => r.origin.by.clone(),
    };
    outln!(
        "{:<6} {:<48} {:>10} {:>14} {:>14}  {:<16} {}",
        r.id,
        what,
        ttl,
        v.dropped_packets,
        v.passed_packets,
        origin,
        r.reason
    )
}
