//! The scratch directory of the targets that go through files: one per process, reused by every
//! run. Under `$STRATA_FUZZ_SCRATCH` (which `cargo xtask fuzz` sets and removes afterwards),
//! else `/dev/shm` (checkpoint writes fsync: on tmpfs that costs nothing), else the temp dir.

use std::path::Path;
use std::sync::OnceLock;

pub fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::env::var_os("STRATA_FUZZ_SCRATCH")
            .map(std::path::PathBuf::from)
            .filter(|p| p.is_dir())
            .or_else(|| Some(Path::new("/dev/shm").to_path_buf()).filter(|p| p.is_dir()))
            .unwrap_or_else(std::env::temp_dir);
        tempfile::Builder::new()
            .prefix("strata-fuzz-")
            .tempdir_in(base)
            .expect("a scratch directory")
    })
    .path()
}
