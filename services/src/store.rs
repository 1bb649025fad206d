//! The state file: `STATE_DIR/state.json` holds the framework id and every app's target
//! (definition, version, deployment) with the instances last seen, written atomically
//! ([`strata_framework_kit::state`]). Instances are only what reconciliation confirms or
//! corrects after a restart.

pub use strata_framework_kit::state::{STATE_FILE, StoreError};

use crate::core::State;

/// What the file holds: the framework id and the core's state.
pub type Saved = strata_framework_kit::host::Saved<State>;

/// The state directory.
pub type Store = strata_framework_kit::state::StateFile<Saved>;

/// The program named in errors about the file.
pub const PROGRAM: &str = "strata-services";
