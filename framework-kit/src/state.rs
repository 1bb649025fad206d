//! The state file: `STATE_DIR/state.json` holds what a framework keeps across restarts (its
//! framework id and its target). Each write goes to a temporary file that is synced, then
//! renamed over the old one (and the directory synced), so a crash leaves the old state or the
//! new one, never a torn file.

use std::io::Write as _;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The state file's name in the state directory.
pub const STATE_FILE: &str = "state.json";

/// The state file cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O error on `path`.
    #[error("cannot {action} {path}: {source}; check the state directory and its permissions")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a state file.
    #[error("{path} is not a {program} state file ({reason}); move it away to start empty")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Whose state file it should be.
        program: &'static str,
        /// The parser's words.
        reason: String,
    },
}

/// The state directory of one framework, holding a `T`.
#[derive(Debug, Clone)]
pub struct StateFile<T> {
    dir: PathBuf,
    program: &'static str,
    saved: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned + Default> StateFile<T> {
    /// Opens (creating, mode 0700) the state directory `dir` of `program`.
    pub fn open(dir: &Path, program: &'static str) -> Result<Self, StoreError> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StoreError::Io {
                action: "create",
                path: dir.to_owned(),
                source,
            })?;
        Ok(Self {
            dir: dir.to_owned(),
            program,
            saved: PhantomData,
        })
    }

    /// The state file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// What was saved last, or the empty state when nothing was.
    pub fn load(&self) -> Result<T, StoreError> {
        let path = self.path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path,
                program: self.program,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
            Err(source) => Err(StoreError::Io {
                action: "read",
                path,
                source,
            }),
        }
    }

    /// Replaces the state file with `bytes` (a serialized `T`) atomically.
    pub fn save_bytes(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.path();
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let io = |action: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io {
                action,
                path,
                source,
            }
        };
        let mut file = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
        file.write_all(bytes).map_err(io("write", &tmp))?;
        file.sync_all().map_err(io("sync", &tmp))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(io("rename to", &path))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync", &self.dir))?;
        Ok(())
    }

    /// Saves `saved`.
    pub fn save(&self, saved: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(saved).expect("the state serializes");
        self.save_bytes(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, Serialize, serde::Deserialize)]
    struct Saved {
        framework_id: String,
        next: u64,
    }

    #[test]
    fn state_round_trips_and_a_torn_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateFile::<Saved>::open(&dir.path().join("x"), "strata-x").unwrap();
        assert_eq!(store.load().unwrap(), Saved::default());
        let saved = Saved {
            framework_id: "f-1".into(),
            next: 7,
        };
        store.save(&saved).unwrap();
        let again = StateFile::<Saved>::open(&dir.path().join("x"), "strata-x").unwrap();
        assert_eq!(again.load().unwrap(), saved);
        assert!(!dir.path().join("x").join("state.json.tmp").exists());
        std::fs::write(store.path(), b"{\"framework_id\": \"f").unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("not a strata-x state file"), "{err}");
    }
}
