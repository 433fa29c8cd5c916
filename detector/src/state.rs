//! The state directory: incident history (`detector.db`) and learned
//! baselines (`baselines.json`), kept across restarts.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use thiserror::Error;

use crate::detect::{engine::BASELINES_VERSION, SavedBaselines};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/detector";
pub const BASELINES_FILE: &str = "baselines.json";

#[derive(Debug, Error)]
pub enum StateError {
    #[error("cannot create the state directory {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Creates the directory (owner-only) if it is missing.
pub fn ensure_dir(dir: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StateError::Create { path: dir.to_path_buf(), source })
}

/// What loading the saved baselines found.
pub enum Loaded {
    Baselines(SavedBaselines),
    /// No file: a first start.
    None,
    /// A file that does not parse; it was moved aside, with the reason.
    Unreadable(String),
}

pub fn load_baselines(dir: &Path) -> Loaded {
    let path = dir.join(BASELINES_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::None,
        Err(e) => return Loaded::Unreadable(format!("{}: {e}", path.display())),
    };
    match serde_json::from_str::<SavedBaselines>(&text) {
        Ok(b) if b.version == BASELINES_VERSION => Loaded::Baselines(b),
        Ok(b) => Loaded::Unreadable(format!("{}: version {} is not {BASELINES_VERSION}", path.display(), b.version)),
        Err(e) => {
            // Keep the evidence, start learning afresh.
            let aside = dir.join(format!("{BASELINES_FILE}.unreadable"));
            let _ = fs::rename(&path, &aside);
            Loaded::Unreadable(format!("{}: {e} (moved to {})", path.display(), aside.display()))
        }
    }
}

/// Writes the baselines atomically (a temporary file renamed over the old).
pub fn save_baselines(dir: &Path, b: &SavedBaselines) -> Result<(), StateError> {
    let path = dir.join(BASELINES_FILE);
    let tmp = dir.join(format!(".{BASELINES_FILE}.tmp"));
    let werr = |source| StateError::Write { path: path.clone(), source };
    let mut f = fs::File::create(&tmp).map_err(werr)?;
    f.write_all(serde_json::to_string_pretty(b).expect("baselines serialize").as_bytes()).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    fs::rename(&tmp, &path).map_err(werr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_a_bad_file_moved_aside() {
        let dir = std::env::temp_dir().join(format!("detector-state-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        ensure_dir(&dir).unwrap();
        assert!(matches!(load_baselines(&dir), Loaded::None));
        let mut b = SavedBaselines { version: BASELINES_VERSION, ..Default::default() };
        b.interfaces.insert("eth0".into(), Default::default());
        save_baselines(&dir, &b).unwrap();
        match load_baselines(&dir) {
            Loaded::Baselines(got) => assert_eq!(got, b),
            _ => panic!("not loaded"),
        }
        fs::write(dir.join(BASELINES_FILE), "{ not json").unwrap();
        match load_baselines(&dir) {
            Loaded::Unreadable(why) => assert!(why.contains("moved to"), "{why}"),
            _ => panic!("a bad file was accepted"),
        }
        assert!(dir.join("baselines.json.unreadable").exists());
        assert!(matches!(load_baselines(&dir), Loaded::None));
        let _ = fs::remove_dir_all(&dir);
    }
}
