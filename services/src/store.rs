//! The state file: `STATE_DIR/state.json` holds the framework id and every app's target
//! (definition, version, deployment) with the instances last seen, written atomically
//! ([`strata_framework_kit::state`]). Instances are only what reconciliation confirms or
//! corrects after a restart.

use serde::{Deserialize, Serialize};
pub use strata_framework_kit::state::{STATE_FILE, StoreError};

use crate::core::State;

/// What the file holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    /// The framework id the allocator gave (empty before the first subscription).
    #[serde(default)]
    pub framework_id: String,
    /// The core's state.
    #[serde(default)]
    pub state: State,
}

/// The state directory.
pub type Store = strata_framework_kit::state::StateFile<Saved>;

/// The program named in errors about the file.
pub const PROGRAM: &str = "strata-services";
