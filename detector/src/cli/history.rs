//! `detector history`: the runbook executions in the history in the state
//! directory, each with its steps, as a table or JSON. Reads the database
//! directly, so it works whether the controller runs or not.

use std::{path::PathBuf, time::Duration};

use detector::{
    detect::incident::time_ms,
    history::{ExecutionQuery, Store},
    runbook::record::Execution,
};

use super::out::{self, outln, StdoutError};

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
    /// At most this many, newest first; 0 for all of them (read a page at
    /// a time, so memory stays bounded).
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub limit: usize,
    /// Start after this execution: the cursor a limited listing ends with
    /// (`<started_at ms>,<id>`).
    #[arg(long, value_name = "CURSOR")]
    pub before: Option<String>,
    /// The state directory `detector run` uses.
    #[arg(long, value_name = "DIR", default_value = detector::statedir::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

pub fn run(args: HistoryArgs) -> anyhow::Result<()> {
    let before = out::cursor(args.before.as_deref())?;
    let store = Store::open_read_only(&args.state_dir)?;
    let read = |limit, before| {
        store.execution_page(&ExecutionQuery {
            incident: args.incident.clone(),
            runbook: args.runbook.clone(),
            limit,
            before,
        })
    };
    if args.json {
        outln!("{{\n  \"executions\": [")?;
        let mut list = out::JsonList::default();
        let walked = out::walk(args.limit, before, read, |_, ex: &Execution| list.push(ex))?;
        list.finish()?;
        outln!("  ],")?;
        outln!("  \"next\": {},", serde_json::to_string(&walked.next)?)?;
        outln!("  \"skipped\": {}\n}}", serde_json::to_string(&walked.skipped)?)?;
        return Ok(());
    }
    let walked = out::walk(args.limit, before, read, |n, ex: &Execution| {
        if n == 0 {
            outln!(
                "{:<20} {:<24} {:<44} {:<16} {:<8} {:<7} {:>9}",
                "STARTED",
                "RUNBOOK",
                "INCIDENT",
                "TRIGGER",
                "OUTCOME",
                "DRY RUN",
                "DURATION"
            )?;
        }
        print_execution(ex)?;
        Ok(())
    })?;
    if walked.shown == 0 {
        let mut what = String::from("no runbook executions");
        if let Some(r) = &args.runbook {
            what += &format!(" of '{r}'");
        }
        if let Some(i) = &args.incident {
            what += &format!(" for incident '{i}'");
        }
        outln!("{what}")?;
    }
    if let Some(next) = walked.next {
        out::note(&format!("more: --before '{next}' for the next {}, --limit 0 for all", args.limit));
    }
    Ok(())
}

fn print_execution(ex: &Execution) -> Result<(), StdoutError> {
    outln!(
        "{:<20} {:<24} {:<44} {:<16} {:<8} {:<7} {:>9}",
        &time_ms::rfc3339(ex.started_at)[..19],
        clean(&ex.runbook),
        clean(&ex.incident_id),
        clean(&ex.trigger),
        ex.outcome.name(),
        if ex.dry_run { "yes" } else { "-" },
        duration(ex.started_at, ex.ended_at)
    )?;
    for st in &ex.steps {
        let error = st.error.as_deref().map(|e| format!("  error: {}", clean(e))).unwrap_or_default();
        outln!(
            "    {:>3} {:<10} {:<8} {:>9}  {}{}",
            st.index,
            clean(&st.kind),
            st.outcome.name(),
            duration(st.started_at, st.ended_at),
            clean(&st.detail),
            error
        )?;
    }
    Ok(())
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
