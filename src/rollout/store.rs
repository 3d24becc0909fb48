//! The persisted rollout states of one process: one JSON file holding every service's
//! [`RolloutState`], written atomically (a temporary file in the same directory, synced,
//! then renamed over the old one, and the directory synced), so a crash at any moment
//! leaves the old file or the new one, never a torn one. The only I/O of the rollout
//! module; the engine never calls it.

use super::state::{RolloutState, STATE_VERSION};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file: `{"version": 1, "services": {"<service>": <RolloutState>}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    pub version: u32,
    pub services: BTreeMap<String, RolloutState>,
}

impl StateFile {
    pub fn new(services: BTreeMap<String, RolloutState>) -> StateFile {
        StateFile {
            version: STATE_VERSION,
            services,
        }
    }
}

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a rollout state file: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: rollout state version {found}, this cohort reads version {STATE_VERSION}")]
    Version { path: PathBuf, found: u32 },
}

/// Reads the file: `Ok(None)` when it does not exist (nothing persisted yet).
pub fn load(path: &Path) -> Result<Option<StateFile>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let file: StateFile = serde_json::from_slice(&bytes).map_err(|source| StoreError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    let stale = std::iter::once(file.version).chain(file.services.values().map(|s| s.version));
    if let Some(found) = stale.into_iter().find(|v| *v != STATE_VERSION) {
        return Err(StoreError::Version {
            path: path.to_path_buf(),
            found,
        });
    }
    Ok(Some(file))
}

/// Writes the file atomically (temporary file + rename).
pub fn save(path: &Path, file: &StateFile) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = serde_json::to_vec_pretty(file).map_err(|e| io(std::io::Error::other(e)))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let written = write_and_rename(&bytes, &tmp, path, &dir);
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io)
}

fn write_and_rename(bytes: &[u8], tmp: &Path, path: &Path, dir: &Path) -> std::io::Result<()> {
    let mut f = std::fs::File::create(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)?;
    // The rename is durable once the directory is synced (best effort: not every
    // platform can open a directory).
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::state::Phase;
    use crate::rollout::tests::{engine, snap};

    fn sample() -> StateFile {
        let e = engine(|_| {});
        let s = e.resume(None, 1_700_000_000, &snap(10, 0, 100, 0)).state;
        StateFile::new([("api".to_string(), s)].into_iter().collect())
    }

    #[test]
    fn a_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(&dir.path().join("rollout.json")).unwrap().is_none());
    }

    #[test]
    fn save_then_load_round_trips_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rollout.json");
        let file = sample();
        save(&path, &file).unwrap();
        assert_eq!(load(&path).unwrap(), Some(file.clone()));
        // Overwrite: the new content replaces the old one whole.
        let mut next = file.clone();
        next.services.get_mut("api").unwrap().phase = Phase::Paused;
        save(&path, &next).unwrap();
        assert_eq!(load(&path).unwrap(), Some(next));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["rollout.json"], "only the file itself remains");
    }

    #[test]
    fn another_version_or_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rollout.json");
        let mut file = sample();
        file.version = 2;
        save(&path, &file).unwrap();
        assert!(matches!(
            load(&path),
            Err(StoreError::Version { found: 2, .. })
        ));
        let mut file = sample();
        file.services.get_mut("api").unwrap().version = 9;
        save(&path, &file).unwrap();
        assert!(matches!(
            load(&path),
            Err(StoreError::Version { found: 9, .. })
        ));
        std::fs::write(&path, b"{\"version\": 1, \"serv").unwrap();
        assert!(matches!(load(&path), Err(StoreError::Parse { .. })));
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rollout.json");
        save(&path, &sample()).unwrap();
        // A directory cannot be renamed over by a file.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("x"), b"x").unwrap();
        assert!(save(&blocked, &sample()).is_err());
        assert_eq!(load(&path).unwrap(), Some(sample()));
        let leftovers = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".tmp.")
            })
            .count();
        assert_eq!(leftovers, 0);
    }
}
