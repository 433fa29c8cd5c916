//! The regression corpus: every frame a fuzz run found the XDP program and
//! the reference disagreeing on, one per line, replayed by the test suite.
//!
//! ```text
//! # comment
//! <frame as hex> seed=<seed> frame=<n> reference=<class> xdp=<verdict> <how it was made>
//! ```
//!
//! Only the hex is read back; the rest records where the frame came from
//! and what each side said when it was found (the replay asks both sides
//! again). An empty frame is written as `-`.

use std::{fs, io, path::Path};

use thiserror::Error;

use crate::{describe, hex, Mismatch};

#[derive(Debug, Error)]
pub enum CorpusError {
    #[error("{path}:{line}: '{token}' is not a frame in hex")]
    Hex { path: String, line: usize, token: String },
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: io::Error },
}

/// One frame of the corpus and the rest of its line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub bytes: Vec<u8>,
    pub note: String,
    pub line: usize,
}

/// Parses the corpus text (`path` names it in errors).
pub fn parse(path: &str, text: &str) -> Result<Vec<Entry>, CorpusError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let (token, note) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
        let bytes = unhex(token).ok_or_else(|| CorpusError::Hex {
            path: path.to_string(),
            line: i + 1,
            token: token.to_string(),
        })?;
        out.push(Entry { bytes, note: note.trim().to_string(), line: i + 1 });
    }
    Ok(out)
}

fn unhex(token: &str) -> Option<Vec<u8>> {
    if token == "-" {
        return Some(Vec::new());
    }
    if !token.len().is_multiple_of(2) {
        return None;
    }
    (0..token.len()).step_by(2).map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok()).collect()
}

/// Reads the corpus at `path`; a missing file is an empty corpus.
pub fn read(path: &Path) -> Result<Vec<Entry>, CorpusError> {
    match fs::read_to_string(path) {
        Ok(text) => parse(&path.display().to_string(), &text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(CorpusError::Read { path: path.display().to_string(), source }),
    }
}

/// The corpus line for a mismatch found at frame `n` of seed `seed`.
pub fn line(m: &Mismatch, seed: u64, n: u64) -> String {
    let frame = if m.bytes.is_empty() { "-".to_string() } else { hex(&m.bytes) };
    format!(
        "{frame} seed={seed} frame={n} reference={} xdp={} {}",
        m.reference.name(),
        describe(&m.xdp).replace(' ', "_"),
        m.what
    )
}

const HEADER: &str = "# Frames on which the XDP parser and the reference classifier\n\
# (detector-common/src/reference.rs) disagreed, found by `cargo xtask fuzz`.\n\
# The test suite (fuzz_replay) runs every one through both, forever after.\n\
# Format: <frame hex> seed=<seed> frame=<n> reference=<class> xdp=<verdict> <how the frame was made>\n";

/// Appends `lines` to the corpus at `path`, skipping frames it already
/// holds; returns how many were added.
pub fn append(path: &Path, lines: &[(Vec<u8>, String)]) -> Result<usize, CorpusError> {
    let existing = read(path)?;
    let mut text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => HEADER.to_string(),
        Err(source) => return Err(CorpusError::Read { path: path.display().to_string(), source }),
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let mut seen: Vec<&[u8]> = existing.iter().map(|e| e.bytes.as_slice()).collect();
    let mut added = 0;
    for (bytes, l) in lines {
        if seen.contains(&bytes.as_slice()) {
            continue;
        }
        seen.push(bytes);
        text.push_str(l);
        text.push('\n');
        added += 1;
    }
    if added > 0 {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|source| CorpusError::Write { path: dir.display().to_string(), source })?;
        }
        fs::write(path, text).map_err(|source| CorpusError::Write { path: path.display().to_string(), source })?;
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use detector_common::TrafficClass;

    use super::*;
    use crate::kernel::Outcome;

    #[test]
    fn lines_round_trip_and_bad_hex_is_located() {
        let m = Mismatch {
            bytes: vec![0, 1, 0xab, 0xff],
            reference: TrafficClass::Malformed,
            xdp: Outcome::Ran { class: TrafficClass::Fragment, action: 2 },
            what: "ipv6 ext [44]; cut at 4".into(),
        };
        let empty = Mismatch { bytes: vec![], ..m.clone() };
        let text = format!("{HEADER}\n{}\n{}\n", line(&m, 9, 12), line(&empty, 9, 13));
        assert!(text.contains("0001abff seed=9 frame=12 reference=malformed xdp=fragment ipv6 ext [44]; cut at 4"));
        let entries = parse("c", &text).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].bytes, m.bytes);
        assert_eq!(entries[1].bytes, Vec::<u8>::new());
        let err = parse("c", "# x\n00zz seed=1\n").unwrap_err().to_string();
        assert_eq!(err, "c:2: '00zz' is not a frame in hex");
        assert!(parse("c", "abc").is_err(), "an odd number of digits");
    }

    #[test]
    fn append_keeps_one_line_per_frame() {
        let dir = std::env::temp_dir().join(format!("detector-fuzz-corpus-{}", std::process::id()));
        let path = dir.join("regressions.txt");
        let _ = fs::remove_dir_all(&dir);
        let a = (vec![1, 2], "0102 first".to_string());
        let b = (vec![3], "03 second".to_string());
        assert_eq!(append(&path, &[a.clone(), a.clone()]).unwrap(), 1);
        assert_eq!(append(&path, &[a, b]).unwrap(), 1);
        let entries = read(&path).unwrap();
        assert_eq!(entries.iter().map(|e| e.bytes.clone()).collect::<Vec<_>>(), vec![vec![1, 2], vec![3]]);
        assert!(fs::read_to_string(&path).unwrap().starts_with("# Frames on which"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
