//! `detector runbooks validate DIR`: checks a runbook directory the way
//! the controller loads it, for CI pipelines: structure, rules, templates,
//! limits, and the syntax of `${...}` references. A CI pipeline has no
//! production secrets, so they are resolved only with `--secrets` (from
//! this environment and filesystem, as `detector run` does).

use std::path::PathBuf;

use detector::runbook::{
    load::load_dir,
    schema::{Families, Mode, Step},
    secret::{Lookup, Real, Unresolved},
};

use super::out::outln;

#[derive(clap::Subcommand, Debug)]
pub enum RunbooksCommand {
    /// Check every runbook in DIR; exit non-zero if any file is refused.
    Validate {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Also resolve every ${NAME} and ${file:PATH} reference, as
        /// `detector run` does: a missing secret fails the check.
        #[arg(long)]
        secrets: bool,
    },
}

pub fn run(cmd: RunbooksCommand) -> anyhow::Result<()> {
    let RunbooksCommand::Validate { dir, secrets } = cmd;
    let lookup = move || -> Box<dyn Lookup> {
        if secrets {
            Box::new(Real)
        } else {
            Box::new(Unresolved)
        }
    };
    let loaded = load_dir(&dir, &lookup).map_err(|e| anyhow::anyhow!("{e}"))?;
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
    if !secrets {
        println!(
            "secrets not resolved (their syntax is checked); pass --secrets to resolve them as `detector run` does"
        );
    }
    Ok(())
}
