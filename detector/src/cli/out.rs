//! Printing to stdout, and walking the history a page at a time.
//!
//! `detector incidents | head -1` closes the pipe after one line; the next
//! write fails with EPIPE (Rust ignores SIGPIPE), where `println!` would
//! panic with a backtrace. Every line goes through [`outln!`], which
//! returns the error instead, and `main` exits 0, quietly, when it finds
//! that stdout was closed ([`StdoutError::is_closed_pipe`]).

use detector::history::{Cursor, Page, Skipped, StoreError, MAX_PAGE};

#[derive(Debug, thiserror::Error)]
#[error("cannot write to stdout: {0}")]
pub struct StdoutError(pub std::io::Error);

impl StdoutError {
    /// The reader went away (`| head`, `| less` quit): not an error.
    pub fn is_closed_pipe(&self) -> bool {
        self.0.kind() == std::io::ErrorKind::BrokenPipe
    }
}

/// `println!` that returns `Err(StdoutError)` instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::cli::out::StdoutError)
    }};
}
pub(crate) use outln;

/// A line on stderr (a warning, a hint), after what stdout holds so far, so
/// the two stay in order on a terminal.
pub fn note(line: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    eprintln!("{line}");
}

/// A JSON array printed as its items come, indented to sit in an object
/// (`"incidents": [ ... ]`): each item is held until the next arrives, so
/// the comma goes after it, where a reader expects it.
#[derive(Default)]
pub struct JsonList {
    pending: Option<String>,
}

impl JsonList {
    pub fn push(&mut self, value: &impl serde::Serialize) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(value)?;
        let indented = text.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n");
        if let Some(before) = self.pending.replace(indented) {
            outln!("{before},")?;
        }
        Ok(())
    }

    pub fn finish(self) -> Result<(), StdoutError> {
        match self.pending {
            Some(last) => outln!("{last}"),
            None => Ok(()),
        }
    }
}

/// Where a walk through a listing stopped.
pub struct Walked {
    pub shown: usize,
    /// Where the rest starts, if `limit` stopped the walk before the end.
    pub next: Option<Cursor>,
    pub skipped: Vec<Skipped>,
}

/// Reads pages from `read` (given the page size and where to start) and
/// hands each item to `each`, until `limit` items (0: all of them) or the
/// end. Memory stays at one page whatever the history's size. Skipped rows
/// are warned about on stderr as they come, one line each.
pub fn walk<T>(
    limit: usize,
    mut before: Option<Cursor>,
    mut read: impl FnMut(usize, Option<Cursor>) -> Result<Page<T>, StoreError>,
    mut each: impl FnMut(usize, &T) -> anyhow::Result<()>,
) -> anyhow::Result<Walked> {
    let mut walked = Walked { shown: 0, next: None, skipped: Vec::new() };
    loop {
        let want = if limit == 0 { MAX_PAGE } else { (limit - walked.shown).min(MAX_PAGE) };
        let page = read(want, before.take())?;
        for s in &page.skipped {
            note(&format!("warning: skipped {} in the history: {}", s.id, s.reason));
        }
        walked.skipped.extend(page.skipped);
        for item in &page.items {
            each(walked.shown, item)?;
            walked.shown += 1;
        }
        match page.next {
            None => return Ok(walked),
            Some(next) if limit != 0 && walked.shown >= limit => {
                walked.next = Some(next);
                return Ok(walked);
            }
            Some(next) => before = Some(next),
        }
    }
}

/// A `--before` value, checked.
pub fn cursor(before: Option<&str>) -> anyhow::Result<Option<Cursor>> {
    before.map(|b| b.parse::<Cursor>().map_err(|e| anyhow::anyhow!("--before: {e}"))).transpose()
}
