//! `detector runbooks validate DIR`: checks a runbook directory the way
//! the controller loads it, for CI pipelines. Secrets are resolved from
//! this environment, so a missing one is an error here too.

use std::path::PathBuf;

use detector::runbook::{
    load::load_dir,
    schema::{Families, Mode, Step},
    secret::Real,
};

use super::out::outln;

#[derive(clap::Subcommand, Debug)]
pub enum RunbooksCommand {
    /// Check every runbook in DIR; exit non-zero if any file is refused.
    Validate {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

pub fn run(cmd: RunbooksCommand) -> anyhow::Result<()> {
    let RunbooksCommand::Validate { dir } = cmd;
    let loaded = load_dir(&dir, &|| Box::new(Real)).map_err(|e| anyhow::anyhow!("{e}"))?;
    for l in &loaded.runbooks {
        let rb = &l.runbook;
        let families = match &rb.trigger.families {
            Families::Any => "any".to_string(),
            Families::These(f) => f.iter().map(|f| f.name()).collect::<Vec<_>>().join(","),
        };
        let steps: Vec<&str> = rb.steps.0.iter().map(Step::kind).collect();
        outln!(
            "ok   {} ({}): {}{}on {families}; steps: {}",
            rb.name,
            l.path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
            if rb.enabled { "" } else { "disabled; " },
            if rb.mode == Mode::DryRun { "dry run; " } else { "" },
            steps.join(", ")
        )?;
    }
    for e in &loaded.errors {
        outln!("FAIL {e}")?;
    }
    if !loaded.errors.is_empty() {
        anyhow::bail!(
            "{} of {} runbook files in {} were refused",
            loaded.errors.len(),
            loaded.errors.len() + loaded.runbooks.len(),
            dir.display()
        );
    }
    if loaded.runbooks.is_empty() {
        anyhow::bail!("no runbooks (*.yaml, *.yml) in {}", dir.display());
    }
    Ok(())
}
