//! `detector flood`: build the frame template and the source plan from the
//! flags, pick an engine, send, report.

use std::{net::IpAddr, time::Duration};

use anyhow::Context as _;
use detector::{
    flood::{
        self,
        frame::{self, FrameSpec, Kind},
        sources::{Heavy, Sources, Spread},
        EngineChoice, FloodPlan, Limit, Rate,
    },
    iface,
    privileges::{self, Need},
};
use ipnet::IpNet;

use super::{out::outln, parse_duration};

#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("limit").required(true).args(["count", "duration"]))]
pub struct FloodArgs {
    /// Interface to send out of.
    #[arg(long, value_name = "IF")]
    pub iface: String,
    /// What to send: udp, syn, synack, ack, rst, icmp, dns-query,
    /// dns-response, ntp-amplification, memcached-amplification,
    /// ssdp-amplification, cldap-amplification, chargen-amplification,
    /// snmp-amplification, http-get, fragment, other-ip, arp.
    #[arg(long, value_name = "KIND")]
    pub kind: Kind,
    /// Frames per second, or 'max'.
    #[arg(long, value_name = "PPS|max", default_value = "1000")]
    pub rate: Rate,
    /// Send exactly this many frames.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Send for this long.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Source address or range (CIDR). Defaults to 198.18.0.1 or 2001:2::1
    /// (the benchmarking ranges of RFC 2544 and RFC 5180).
    #[arg(long, value_name = "CIDR")]
    pub src: Option<String>,
    /// Use only the first N addresses of the source range.
    #[arg(long, value_name = "N")]
    pub sources: Option<u64>,
    /// How sources are picked: seq (round robin) or random (spoofed).
    #[arg(long, value_name = "SPREAD")]
    pub spread: Option<Spread>,
    /// Heavy hitters hidden in the flood: N addresses (the first of the range)
    /// sending PERCENT of all frames, e.g. 10:5.
    #[arg(long, value_name = "N:PERCENT")]
    pub heavy: Option<Heavy>,
    /// Destination address.
    #[arg(long, value_name = "IP")]
    pub dst: IpAddr,
    /// Destination port (UDP and TCP kinds; each kind has a default).
    #[arg(long, value_name = "PORT")]
    pub dst_port: Option<u16>,
    /// Source port (UDP and TCP kinds; amplification kinds use the vector's).
    #[arg(long, value_name = "PORT")]
    pub src_port: Option<u16>,
    /// Frame size in bytes, Ethernet header included (60 to 1518).
    #[arg(long, value_name = "BYTES")]
    pub size: Option<usize>,
    /// Destination MAC address (default: broadcast).
    #[arg(long, value_name = "MAC", value_parser = parse_mac)]
    pub dst_mac: Option<[u8; 6]>,
    /// Source MAC address (default: the interface's).
    #[arg(long, value_name = "MAC", value_parser = parse_mac)]
    pub src_mac: Option<[u8; 6]>,
    /// 802.1Q tag; repeat for QinQ (outermost first, at most two).
    #[arg(long = "vlan", value_name = "ID")]
    pub vlans: Vec<u16>,
    /// fast (BPF live frames, millions of pps), exact (raw socket, every
    /// frame delivered) or auto (exact up to 100000 pps).
    #[arg(long, value_name = "ENGINE", default_value = "auto")]
    pub engine: EngineChoice,
    /// Sending threads of the fast engine.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let err = || format!("'{s}' is not a MAC address (write it like 02:00:00:00:00:01)");
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(err());
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(err());
        }
        *m = u8::from_str_radix(p, 16).map_err(|_| err())?;
    }
    Ok(mac)
}

/// `--src`: a CIDR or a bare address; the default matches `--dst`'s family.
fn source_net(src: Option<&str>, dst: IpAddr) -> anyhow::Result<IpNet> {
    let s = match src {
        Some(s) => s.to_string(),
        None if dst.is_ipv4() => "198.18.0.1/32".into(),
        None => "2001:2::1/128".into(),
    };
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| anyhow::anyhow!("--src '{s}' is not an address or a CIDR (like 198.18.0.0/16)"))
}

pub fn run(args: FloodArgs) -> anyhow::Result<()> {
    let net = source_net(args.src.as_deref(), args.dst)?;
    let sources = Sources::plan(net, args.sources, args.spread, args.heavy)?;
    let limit = match (args.count, args.duration) {
        (Some(n), _) => Limit::Count(n),
        (None, Some(d)) => Limit::Duration(d),
        (None, None) => anyhow::bail!("give --count N or --duration D"),
    };
    let ifindex = iface::index(&args.iface)?;
    let src_mac = match args.src_mac {
        Some(m) => m,
        None => iface::mac(&args.iface)?,
    };
    let spec = FrameSpec {
        kind: args.kind,
        src_mac,
        dst_mac: args.dst_mac.unwrap_or([0xff; 6]),
        vlans: args.vlans,
        src: sources.first,
        dst: args.dst,
        src_port: args.src_port,
        dst_port: args.dst_port,
        size: args.size,
    };
    let frame = frame::build(&spec)?;
    let plan = FloodPlan { frame, sources: sources.clone(), limit, rate: args.rate, threads: args.threads as usize };
    let engine = args.engine.resolve(args.rate);
    privileges::check(Need::Flood)?;
    install_stop_handler();

    let report = flood::run(engine, ifindex, &plan).with_context(|| format!("flooding out of '{}'", args.iface))?;
    if args.json {
        outln!("{}", serde_json::to_string(&report)?)?;
    } else {
        let from =
            if sources.count == 1 { sources.first.to_string() } else { format!("{net}, {} sources", sources.count) };
        outln!(
            "sent {} {} frames ({} bytes each) from {} out of {} in {:.2}s: {:.0} pps, {} engine",
            report.sent,
            args.kind,
            plan.frame.bytes.len(),
            from,
            args.iface,
            report.seconds,
            report.pps,
            report.engine,
        )?;
    }
    Ok(())
}

/// SIGINT and SIGTERM end the flood early; the report still prints.
fn install_stop_handler() {
    extern "C" fn on_signal(_: libc::c_int) {
        flood::STOP.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(parse_mac("02:00:00:0a:0B:ff"), Ok([2, 0, 0, 10, 11, 255]));
        for bad in ["", "02:00:00:00:00", "02:00:00:00:00:0g", "2:0:0:0:0:1"] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn source_nets() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(source_net(None, v4).unwrap().to_string(), "198.18.0.1/32");
        assert_eq!(source_net(None, v6).unwrap().to_string(), "2001:2::1/128");
        assert_eq!(source_net(Some("10.0.0.0/8"), v4).unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(source_net(Some("10.1.2.3"), v4).unwrap().to_string(), "10.1.2.3/32");
        assert!(source_net(Some("10.0.0/8x"), v4).unwrap_err().to_string().contains("'10.0.0/8x'"));
    }
}
