//! The state file: `STATE_DIR/state.json` holds the framework id, every job definition, the
//! active runs and the histories, written atomically ([`strata_framework_kit::state`]).

pub use strata_framework_kit::state::{STATE_FILE, StoreError};

use crate::core::State;

/// What the file holds: the framework id and the core's state.
pub type Saved = strata_framework_kit::host::Saved<State>;

/// The state directory.
pub type Store = strata_framework_kit::state::StateFile<Saved>;

/// The program named in errors about the file.
pub const PROGRAM: &str = "strata-jobs";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jobs_state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("jobs"), PROGRAM).unwrap();
        let mut saved = Saved {
            framework_id: "f-1".into(),
            ..Saved::default()
        };
        saved.state.next_run = 7;
        store.save(&saved).unwrap();
        assert_eq!(store.load().unwrap(), saved);
        std::fs::write(store.path(), b"{").unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("not a strata-jobs state file"), "{err}");
    }
}
