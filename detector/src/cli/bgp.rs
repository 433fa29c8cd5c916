//! `detector bgp status|announce|withdraw|stop`: upstream mitigation over
//! BGP, through the control socket of the running controller (as `detector
//! rules` is). `stop` ends a gobgpd that a stopped controller left
//! running.

use std::{net::IpAddr, time::Duration};

use detector::{
    api::control::Client,
    bgp::{
        announce::{Announcement, Community, FlowAction, FlowSpecRule, PROTO_ICMP, PROTO_TCP, PROTO_UDP},
        daemon, keeper,
        service::{check_ttl, AnnounceRequest, EntryView, StatusView},
    },
    detect::incident::time_ms,
    mitigate::prefix::Prefix,
    span::Span,
};

use super::{out::outln, parse_duration, rules::runtime, rules::StateDirArg};

#[derive(clap::Subcommand, Debug)]
pub enum BgpCommand {
    /// The BGP daemon, the sessions per neighbour, the announcements in
    /// force with their origin and expiry.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: StateDirArg,
    },
    /// Announce a blackhole or a FlowSpec rule (checked as a runbook's are).
    #[command(subcommand)]
    Announce(AnnounceCommand),
    /// Withdraw an announcement: its key (as `status` shows it), or every
    /// announcement for an address.
    Withdraw {
        target: String,
        #[command(flatten)]
        dir: StateDirArg,
    },
    /// Stop the gobgpd a stopped controller left running (its sessions
    /// close, and the upstream withdraws everything it announced).
    Stop {
        #[command(flatten)]
        dir: StateDirArg,
    },
    /// The TTL keeper `detector run` starts beside gobgpd: ends
    /// announcements on time while no controller runs.
    #[command(hide = true)]
    Keep {
        #[command(flatten)]
        dir: StateDirArg,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum AnnounceCommand {
    /// Blackhole one address (RTBH: /32 or /128 with the BLACKHOLE community).
    Blackhole {
        addr: IpAddr,
        /// How long it stays announced.
        #[arg(long, value_parser = parse_duration)]
        ttl: Duration,
        /// Communities instead of the configured ones (65535:666, 64512:1:2).
        #[arg(long = "community", value_name = "COMMUNITY")]
        communities: Vec<Community>,
        #[command(flatten)]
        dir: StateDirArg,
    },
    /// A FlowSpec rule: discard (or rate-limit) what matches.
    Flowspec {
        /// Destination address or prefix (inside the protected networks).
        #[arg(long)]
        dst: Prefix,
        /// Source prefix; any when left out.
        #[arg(long)]
        src: Option<Prefix>,
        /// udp, tcp, icmp or a protocol number; repeat for several.
        #[arg(long = "proto", value_parser = parse_proto)]
        protocols: Vec<u8>,
        /// Destination port or range (53, 1000-2000); repeat for several.
        #[arg(long = "dport")]
        dst_ports: Vec<Span<u16>>,
        #[arg(long = "sport")]
        src_ports: Vec<Span<u16>>,
        /// IP packet length or range; repeat for several.
        #[arg(long = "length")]
        lengths: Vec<Span<u16>>,
        /// Rate-limit to this many bits per second instead of discarding.
        #[arg(long, value_parser = detector::capacity::parse_bits)]
        rate_limit: Option<u64>,
        #[arg(long, value_parser = parse_duration)]
        ttl: Duration,
        #[command(flatten)]
        dir: StateDirArg,
    },
}

fn parse_proto(s: &str) -> Result<u8, String> {
    match s {
        "udp" => Ok(PROTO_UDP),
        "tcp" => Ok(PROTO_TCP),
        "icmp" => Ok(PROTO_ICMP),
        n => n.parse().map_err(|_| format!("'{s}' is not a protocol (udp, tcp, icmp or a number)")),
    }
}

pub fn run(cmd: BgpCommand) -> anyhow::Result<()> {
    let rt = runtime()?;
    match cmd {
        BgpCommand::Status { json, dir } => {
            let v = rt.block_on(Client::new(&dir.state_dir).bgp_status())?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                print_status(&v)?;
            }
        }
        BgpCommand::Announce(a) => {
            let (req, dir) = request(a)?;
            let a = rt.block_on(Client::new(&dir.state_dir).bgp_announce(&req))?;
            if a.dry_run {
                outln!("recorded, not announced (bgp.dry_run: nothing is sent) {}", line(&a.entry))?;
            } else {
                outln!("announced {}", line(&a.entry))?;
            }
        }
        BgpCommand::Withdraw { target, dir } => {
            let w = rt.block_on(Client::new(&dir.state_dir).bgp_withdraw(&target))?;
            for e in w.withdrawn {
                outln!("withdrawn {}", e.describe)?;
            }
        }
        BgpCommand::Keep { dir } => rt.block_on(keeper::keep(&dir.state_dir))?,
        BgpCommand::Stop { dir } => {
            if rt.block_on(Client::new(&dir.state_dir).bgp_status()).is_ok() {
                anyhow::bail!(
                    "a detector is running with {}; stop it with --on-stop detach (which withdraws and stops gobgpd)",
                    dir.state_dir.display()
                );
            }
            match daemon::end_recorded(&dir.state_dir) {
                Some(pid) => outln!("gobgpd (pid {pid}) stopped; its sessions closed")?,
                None => outln!("no gobgpd recorded in {} is running", dir.state_dir.display())?,
            }
        }
    }
    Ok(())
}

fn request(a: AnnounceCommand) -> anyhow::Result<(AnnounceRequest, StateDirArg)> {
    let (announcement, ttl, dir) = match a {
        AnnounceCommand::Blackhole { addr, ttl, communities, dir } => {
            // No community: the server takes the configured ones.
            (Announcement::Blackhole { prefix: Prefix::host(addr), communities }, ttl, dir)
        }
        AnnounceCommand::Flowspec { dst, src, protocols, dst_ports, src_ports, lengths, rate_limit, ttl, dir } => {
            let action = match rate_limit {
                Some(bps) => FlowAction::RateLimit { bytes_per_second: u32::try_from(bps / 8).unwrap_or(u32::MAX) },
                None => FlowAction::Discard,
            };
            let rule = FlowSpecRule {
                dst,
                src,
                protocols,
                dst_ports,
                src_ports,
                packet_lengths: lengths,
                tcp_flags: None,
                fragment: false,
                action,
            };
            (Announcement::Flowspec(rule), ttl, dir)
        }
    };
    let ttl = check_ttl(ttl).map_err(anyhow::Error::msg)?;
    Ok((AnnounceRequest { announcement, ttl_ms: ttl.as_millis() as u64 }, dir))
}

fn line(e: &EntryView) -> String {
    let by = match (&e.origin.runbook, &e.origin.incident) {
        (Some(r), Some(i)) => format!("runbook {r}, incident {i}"),
        _ => e.origin.by.clone(),
    };
    let expires = e.expires_at.map(time_ms::rfc3339).unwrap_or_else(|| "never".into());
    let held = e.held_until.map(|t| format!("; held until {}", time_ms::rfc3339(t))).unwrap_or_default();
    format!("{}  [{by}; expires {expires}{held}]", e.describe)
}

fn print_status(v: &StatusView) -> anyhow::Result<()> {
    let d = &v.daemon;
    let pid = d.pid.map(|p| p.to_string()).unwrap_or_else(|| "not running".into());
    outln!(
        "gobgpd: pid {pid}, API 127.0.0.1:{}, {} start(s), {} restart(s){}{}",
        d.api_port,
        d.starts,
        d.restarts,
        if d.adopted { ", adopted from an earlier run" } else { "" },
        if v.dry_run { "; DRY RUN: nothing is sent" } else { "" }
    )?;
    if let Some(e) = &v.error {
        outln!("last error: {e}")?;
    }
    outln!("neighbours:")?;
    for n in &v.neighbors {
        outln!("  {} AS{} {} {}", n.address, n.remote_as, n.state, n.description)?;
    }
    let not_sent = if v.dry_run { " (dry run: recorded, not sent)" } else { "" };
    outln!("announcements in force{not_sent}: {}", v.announcements.len())?;
    for e in &v.announcements {
        outln!("  {}", line(e))?;
    }
    let shown = v.recent.len().min(RECENT_SHOWN);
    if shown > 0 {
        let sent = if v.dry_run { "recorded, not sent" } else { "sent to gobgpd" };
        outln!("last {shown} change(s) {sent}:")?;
        for r in &v.recent[v.recent.len() - shown..] {
            outln!("  {}  {}", time_ms::rfc3339(r.at_ms), r.change)?;
        }
    }
    Ok(())
}

/// The changes `status` prints (`--json` has all it keeps).
const RECENT_SHOWN: usize = 10;
