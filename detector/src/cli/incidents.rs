//! `detector incidents`: the history in the state directory, as a table,
//! one incident in full, or JSON. Reads the database directly, so it works
//! whether the controller runs or not.

use std::path::PathBuf;

use detector::{
    detect::incident::{time_ms, Incident},
    history::{Query, Store},
};

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
    /// At most this many, newest first.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub limit: usize,
    /// The state directory `detector run` uses.
    #[arg(long, value_name = "DIR", default_value = detector::statedir::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

pub fn run(args: IncidentsArgs) -> anyhow::Result<()> {
    let store = Store::open_read_only(&args.state_dir)?;
    if let Some(id) = &args.id {
        let inc = store
            .incident(id)?
            .ok_or_else(|| anyhow::anyhow!("no incident with id '{id}' in {}", args.state_dir.display()))?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&inc)?);
        } else {
            print_one(&inc);
        }
        return Ok(());
    }
    let list = store.incidents(Query { open_only: args.active, limit: args.limit })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "incidents": list }))?);
        return Ok(());
    }
    if list.is_empty() {
        println!("no {}incidents", if args.active { "open " } else { "" });
        return Ok(());
    }
    println!(
        "{:<44} {:<9} {:<8} {:<24} {:<20} {:>9} {:>12}  TOP SOURCE",
        "ID", "STATUS", "SEVERITY", "FAMILIES", "STARTED", "DURATION", "PEAK PPS"
    );
    for i in &list {
        println!(
            "{:<44} {:<9} {:<8} {:<24} {:<20} {:>9} {:>12.0}  {}",
            i.id,
            i.status.name(),
            i.severity.name(),
            families(i),
            &time_ms::rfc3339(i.started_at)[..19],
            duration(i),
            i.peak_pps,
            i.top_sources.first().map(|s| s.addr.to_string()).unwrap_or_else(|| "-".into())
        );
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

fn print_one(i: &Incident) {
    println!("incident  {}", i.id);
    println!("node      {} ({})", i.node, i.iface);
    println!("families  {}", families(i));
    println!("vectors   {}", i.vectors.join(", "));
    println!("severity  {}", i.severity);
    println!("status    {}", i.status);
    println!("started   {}", time_ms::rfc3339(i.started_at));
    println!("ended     {}", i.ended_at.map(time_ms::rfc3339).unwrap_or_else(|| "-".into()));
    println!("rate      {:.0} pps, {:.0} bit/s now; peak {:.0} pps, {:.0} bit/s", i.pps, i.bps, i.peak_pps, i.peak_bps);
    if !i.top_sources.is_empty() {
        println!("top sources");
        for s in &i.top_sources {
            println!("  {:<40} {:>12.0} pps {:>5.1}%", s.addr, s.pps, s.share * 100.0);
        }
    }
    if !i.top_ports.is_empty() {
        println!("top destination ports");
        for p in &i.top_ports {
            println!("  {}/{:<34} {:>12.0} pps {:>5.1}%", p.proto, p.port, p.pps, p.share * 100.0);
        }
    }
    println!("timeline");
    for t in &i.timeline {
        println!("  {}  {:<17} {}", time_ms::rfc3339(t.at), t.kind.name(), t.detail);
    }
}
