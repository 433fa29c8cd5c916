//! `detector incidents`: the history in the state directory, as a table,
//! one incident in full, or JSON. Reads the database directly, so it works
//! whether the controller runs or not.

use std::path::PathBuf;

use detector::{
    detect::incident::{time_ms, Incident},
    history::{Query, Store},
    view::signature_line,
};

use super::out::{self, outln, StdoutError};

#[derive(clap::Args, Debug)]
pub struct IncidentsArgs {
    /// Show this incident in full, with its timeline.
    pub id: Option<String>,
    /// Only incidents not yet resolved.
    #[arg(long)]
    pub active: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// At most this many, newest first; 0 for the whole history (read a
    /// page at a time, so memory stays bounded).
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub limit: usize,
    /// Start after this incident: the cursor a limited listing ends with
    /// (`<started_at ms>,<id>`).
    #[arg(long, value_name = "CURSOR")]
    pub before: Option<String>,
    /// With an ID: write its packet capture (pcapng) to FILE (`-` for
    /// standard output), for Wireshark or tshark.
    #[arg(long, value_name = "FILE", requires = "id")]
    pub pcap: Option<PathBuf>,
    /// The state directory `detector run` uses.
    #[arg(long, value_name = "DIR", default_value = detector::statedir::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

pub fn run(args: IncidentsArgs) -> anyhow::Result<()> {
    let before = out::cursor(args.before.as_deref())?;
    let store = Store::open_read_only(&args.state_dir)?;
    if let (Some(id), Some(file)) = (&args.id, &args.pcap) {
        return write_pcap(&args.state_dir, id, file);
    }
    if let Some(id) = &args.id {
        let (inc, skipped) = store
            .incident_report(id)?
            .ok_or_else(|| anyhow::anyhow!("no incident with id '{id}' in {}", args.state_dir.display()))?;
        for s in &skipped {
            out::note(&format!("warning: skipped part of {} in the history: {}", s.id, s.reason));
        }
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&inc)?)?;
        } else {
            print_one(&inc)?;
        }
        return Ok(());
    }
    let read = |limit, before| store.incident_page(&Query { open_only: args.active, limit, before });
    if args.json {
        outln!("{{\n  \"incidents\": [")?;
        let mut list = out::JsonList::default();
        let walked = out::walk(args.limit, before, read, |_, i: &Incident| list.push(i))?;
        list.finish()?;
        outln!("  ],")?;
        outln!("  \"next\": {},", serde_json::to_string(&walked.next)?)?;
        outln!("  \"skipped\": {}\n}}", serde_json::to_string(&walked.skipped)?)?;
        return Ok(());
    }
    let walked = out::walk(args.limit, before, read, |n, i: &Incident| {
        if n == 0 {
            outln!(
                "{:<52} {:<9} {:<8} {:<24} {:<20} {:>9} {:>12}  TOP SOURCE",
                "ID",
                "STATUS",
                "SEVERITY",
                "FAMILIES",
                "STARTED",
                "DURATION",
                "PEAK PPS"
            )?;
        }
        outln!(
            "{:<52} {:<9} {:<8} {:<24} {:<20} {:>9} {:>12.0}  {}",
            i.id,
            i.status.name(),
            i.severity.name(),
            families(i),
            &time_ms::rfc3339(i.started_at)[..19],
            duration(i),
            i.peak_pps,
            i.top_sources.first().map(|s| s.addr.to_string()).unwrap_or_else(|| "-".into())
        )?;
        Ok(())
    })?;
    if walked.shown == 0 {
        outln!("no {}incidents", if args.active { "open " } else { "" })?;
    }
    if let Some(next) = walked.next {
        out::note(&format!("more: --before '{next}' for the next {}, --limit 0 for all", args.limit));
    }
    Ok(())
}

fn families(i: &Incident) -> String {
    i.families.iter().map(|f| f.name()).collect::<Vec<_>>().join(",")
}

fn duration(i: &Incident) -> String {
    match i.ended_at {
        Some(end) => {
            humantime::format_duration(std::time::Duration::from_secs(end.saturating_sub(i.started_at) / 1000))
                .to_string()
        }
        None => "ongoing".into(),
    }
}

/// Copies the capture of incident `id` to `file` (whole blocks only).
fn write_pcap(state_dir: &std::path::Path, id: &str, file: &std::path::Path) -> anyhow::Result<()> {
    let bytes = detector::capture::store::read(state_dir, id)?;
    let summary = detector::capture::pcapng::summarize(&bytes).map_err(anyhow::Error::msg)?;
    if file == std::path::Path::new("-") {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        out.write_all(&bytes).and_then(|()| out.flush())?;
    } else {
        std::fs::write(file, &bytes).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", file.display()))?;
        out::note(&format!(
            "wrote {} packets ({} before the attack) of incident {id} to {}",
            summary.packets,
            summary.pre_attack,
            file.display()
        ));
    }
    Ok(())
}

fn print_one(i: &Incident) -> Result<(), StdoutError> {
    outln!("incident  {}", i.id)?;
    outln!("node      {} ({})", i.node, i.iface)?;
    if !i.target.is_empty() {
        outln!("target    {} (host group {}, {})", i.target, i.hostgroup, i.direction)?;
    }
    outln!("families  {}", families(i))?;
    outln!("vectors   {}", i.vectors.join(", "))?;
    outln!("severity  {}", i.severity)?;
    outln!("status    {}", i.status)?;
    outln!("started   {}", time_ms::rfc3339(i.started_at))?;
    outln!("ended     {}", i.ended_at.map(time_ms::rfc3339).unwrap_or_else(|| "-".into()))?;
    outln!("rate      {:.0} pps, {:.0} bit/s now; peak {:.0} pps, {:.0} bit/s", i.pps, i.bps, i.peak_pps, i.peak_bps)?;
    if let Some(s) = &i.signature {
        outln!("signature {}", signature_line(s))?;
    }
    if let Some(c) = &i.capture {
        outln!(
            "capture   {} packets ({} before the attack{}): detector incidents {} --pcap FILE",
            c.packets,
            c.pre_attack,
            if c.full { ", full" } else { "" },
            i.id
        )?;
    }
    if !i.top_sources.is_empty() {
        outln!("top sources")?;
        for s in &i.top_sources {
            outln!("  {:<40} {:>12.0} pps {:>5.1}%", s.addr, s.pps, s.share * 100.0)?;
        }
    }
    if !i.top_ports.is_empty() {
        outln!("top destination ports")?;
        for p in &i.top_ports {
            outln!("  {}/{:<34} {:>12.0} pps {:>5.1}%", p.proto, p.port, p.pps, p.share * 100.0)?;
        }
    }
    outln!("timeline")?;
    for t in &i.timeline {
        outln!("  {}  {:<17} {}", time_ms::rfc3339(t.at), t.kind.name(), t.detail)?;
    }
    Ok(())
}
