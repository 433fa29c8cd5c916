//! `detector history`: the runbook executions in the history in the state
//! directory, each with its steps, as a table or JSON. Reads the database
//! directly, so it works whether the controller runs or not.

use std::{path::PathBuf, time::Duration};

use detector::{
    detect::incident::time_ms,
    history::{ExecutionQuery, Store},
    runbook::record::Execution,
};

#[derive(clap::Args, Debug)]
pub struct HistoryArgs {
    /// Only executions for this incident.
    #[arg(long, value_name = "ID")]
    pub incident: Option<String>,
    /// Only executions of this runbook.
    #[arg(long, value_name = "NAME")]
    pub runbook: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// At most this many, newest first (0 for all).
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub limit: usize,
    /// The state directory `detector run` uses.
    #[arg(long, value_name = "DIR", default_value = detector::statedir::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

pub fn run(args: HistoryArgs) -> anyhow::Result<()> {
    let store = Store::open_read_only(&args.state_dir)?;
    let list = store.executions(ExecutionQuery {
        incident: args.incident.clone(),
        runbook: args.runbook.clone(),
        limit: args.limit,
    })?;
    if args.json {
        // A struct, not `json!`, so each execution keeps its fields' order.
        #[derive(serde::Serialize)]
        struct Out<'a> {
            executions: &'a [Execution],
        }
        println!("{}", serde_json::to_string_pretty(&Out { executions: &list })?);
        return Ok(());
    }
    if list.is_empty() {
        let mut what = String::from("no runbook executions");
        if let Some(r) = &args.runbook {
            what += &format!(" of '{r}'");
        }
        if let Some(i) = &args.incident {
            what += &format!(" for incident '{i}'");
        }
        println!("{what}");
        return Ok(());
    }
    println!(
        "{:<20} {:<24} {:<44} {:<16} {:<8} {:<7} {:>9}",
        "STARTED", "RUNBOOK", "INCIDENT", "TRIGGER", "OUTCOME", "DRY RUN", "DURATION"
    );
    for ex in &list {
        print_execution(ex);
    }
    Ok(())
}

fn print_execution(ex: &Execution) {
    println!(
        "{:<20} {:<24} {:<44} {:<16} {:<8} {:<7} {:>9}",
        &time_ms::rfc3339(ex.started_at)[..19],
        clean(&ex.runbook),
        clean(&ex.incident_id),
        clean(&ex.trigger),
        ex.outcome.name(),
        if ex.dry_run { "yes" } else { "-" },
        duration(ex.started_at, ex.ended_at)
    );
    for st in &ex.steps {
        let error = st.error.as_deref().map(|e| format!("  error: {}", clean(e))).unwrap_or_default();
        println!(
            "    {:>3} {:<10} {:<8} {:>9}  {}{}",
            st.index,
            clean(&st.kind),
            st.outcome.name(),
            duration(st.started_at, st.ended_at),
            clean(&st.detail),
            error
        );
    }
}

/// Milliseconds kept: a step often takes less than a second.
fn duration(start: u64, end: u64) -> String {
    humantime::format_duration(Duration::from_millis(end.saturating_sub(start))).to_string()
}

/// One line, no control characters: details and errors can quote what a
/// webhook answered.
fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}
