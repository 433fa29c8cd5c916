//! The `detector` binary: parse the command line, call the library, and turn
//! any error into one clear line and a non-zero exit.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging(cli.verbose);
    match cli::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout went away (`detector incidents | head -1`):
        // what it wanted was printed; exit quietly, like `rg` and `fd`.
        Err(e) if e.chain().any(|c| c.downcast_ref::<cli::out::StdoutError>().is_some_and(|o| o.is_closed_pipe())) => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            // One line: the error and its causes, no backtrace.
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once. Many of the library's errors
/// name their cause in their own message (`cannot create {path}:
/// {source}`) and give it as their source as well; the chain printed as is
/// (`{:#}`) said it twice.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot create the pin directory {path}: {source}")]
    struct Named {
        path: String,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("loading the programs failed")]
    struct Bare(#[source] std::io::Error);

    fn not_found() -> std::io::Error {
        std::io::Error::from(std::io::ErrorKind::NotFound)
    }

    #[test]
    fn each_cause_is_said_once() {
        let named = anyhow::Error::new(Named { path: "/sys/fs/bpf/x".into(), source: not_found() });
        assert_eq!(one_line(&named), "cannot create the pin directory /sys/fs/bpf/x: entity not found");
        let with_context = named.context("attaching eth0");
        assert_eq!(
            one_line(&with_context),
            "attaching eth0: cannot create the pin directory /sys/fs/bpf/x: entity not found"
        );
        // A message that leaves its cause to the chain still shows it.
        let bare = anyhow::Error::new(Bare(not_found()));
        assert_eq!(one_line(&bare), "loading the programs failed: entity not found");
    }
}
