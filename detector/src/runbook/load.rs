//! Reading a directory of runbooks. Each `*.yaml` / `*.yml` file is one
//! runbook; a file that does not parse or validate is reported with its
//! file, line and column and skipped, and the others still load.
//!
//! Loading is blocking work (files, secrets, parsing): the engine runs it
//! on a blocking thread, never on the async runtime, and
//! [`super::limits`] bounds what one file may cost.

use std::{
    collections::BTreeMap,
    fmt,
    io::Read as _,
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

use super::{
    limits,
    schema::Runbook,
    secret::{self, Lookup},
};

/// A runbook and where it came from.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub path: PathBuf,
    /// SHA-256 of the file, hex: the history records which version ran.
    pub hash: String,
    pub runbook: Runbook,
}

/// A file that was not loaded, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileError {
    pub file: String,
    /// 0 when the problem has no position (an unreadable file).
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)
        }
    }
}

/// Parses one runbook file's text, after [`limits::check`].
pub fn parse(file: &str, text: &str, lookup: Box<dyn Lookup>) -> Result<Runbook, FileError> {
    limits::check(text).map_err(|r| FileError {
        file: file.to_string(),
        line: r.line,
        column: r.column,
        message: r.message,
    })?;
    secret::with_lookup(lookup, || serde_yaml::from_str::<Runbook>(text)).map_err(|e| {
        let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
        let mut message = e.to_string();
        // serde_yaml appends the position we already lead with.
        if let Some(i) = message.rfind(" at line ") {
            message.truncate(i);
        }
        let (line, column) =
            if (line, column) == (1, 1) { top_level_key(text, &message).unwrap_or((1, 1)) } else { (line, column) };
        FileError { file: file.to_string(), line, column, message }
    })
}

/// The position of the top-level key an error message starts with
/// (`cooldown: ...`), for the errors serde_yaml places at 1:1.
fn top_level_key(text: &str, message: &str) -> Option<(usize, usize)> {
    let key = message.split_once(": ")?.0;
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    text.lines()
        .position(|l| l.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with(':')))
        .map(|i| (i + 1, 1))
}

/// Everything a directory holds: the runbooks that loaded, and the files
/// that did not.
#[derive(Debug, Default)]
pub struct DirLoad {
    pub runbooks: Vec<Loaded>,
    pub errors: Vec<FileError>,
}

/// Loads every runbook in `dir`, in file name order. Two files with the same
/// runbook name: the second is refused.
pub fn load_dir(dir: &Path, lookup: &dyn Fn() -> Box<dyn Lookup>) -> Result<DirLoad, FileError> {
    let unreadable = |e: std::io::Error| FileError {
        file: dir.display().to_string(),
        line: 0,
        column: 0,
        message: format!("cannot read the runbook directory: {e}"),
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(unreadable)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut out = DirLoad::default();
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for path in files {
        let file = path.display().to_string();
        let bytes = match read_capped(&path) {
            Ok(Ok(b)) => b,
            Ok(Err(r)) => {
                out.errors.push(FileError { file, line: r.line, column: r.column, message: r.message });
                continue;
            }
            Err(e) => {
                out.errors.push(FileError { file, line: 0, column: 0, message: format!("cannot read it: {e}") });
                continue;
            }
        };
        let Ok(text) = std::str::from_utf8(&bytes) else {
            out.errors.push(FileError { file, line: 0, column: 0, message: "is not UTF-8 text".into() });
            continue;
        };
        match parse(&file, text, lookup()) {
            Ok(runbook) => {
                if let Some(first) = names.get(&runbook.name.0) {
                    out.errors.push(FileError {
                        file,
                        line: 0,
                        column: 0,
                        message: format!("runbook name '{}' is already used by {first}", runbook.name),
                    });
                    continue;
                }
                names.insert(runbook.name.0.clone(), file);
                let hash = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
                out.runbooks.push(Loaded { path, hash, runbook });
            }
            Err(e) => out.errors.push(e),
        }
    }
    Ok(out)
}

/// A file's bytes, reading no more than one past [`limits::MAX_FILE_BYTES`]:
/// a huge file is refused without being read whole.
fn read_capped(path: &Path) -> std::io::Result<Result<Vec<u8>, limits::Refusal>> {
    let f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut bytes = Vec::new();
    f.take(limits::MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes)?;
    let len = len.max(bytes.len() as u64);
    Ok(match limits::size(&bytes, len) {
        Some(r) => Err(r),
        None => Ok(bytes),
    })
}
