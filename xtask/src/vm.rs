//! `cargo xtask vm-test`: kernel integration tests in a qemu guest.
//!
//! For each kernel (`--kernel 6.1`, `--kernel 6.12`, or every kernel in `vm-tests/kernels.lock`):
//!
//! 1. [`kernel`]: fetches the exact Debian kernel package the lock file names (a private apt
//!    configuration under `.vm/apt`, so the machine's own apt sources are neither used nor
//!    changed), checks its sha256, and extracts and decompresses the kernel image to a `vmlinux`.
//!    Everything is cached under `.vm/` (gitignored); a fresh clone fetches it again.
//! 2. [`guest`]: builds `strata-vm-tests` static (x86_64-unknown-linux-musl, in
//!    `target/vm-tests`), packs the test binaries, the helper, busybox and our init into an
//!    initramfs, boots it with qemu (TCG; KVM only when `STRATA_VM_KVM=1`), streams the guest's
//!    console, and exits with the status the init reports on its marker line. A guest that runs
//!    past `--timeout` is killed, with a message saying so.
//!
//! `--relock` resolves the current kernel of each Debian suite, downloads it and rewrites the lock
//! file (commit it).

use std::time::Instant;

use anyhow::{Result, bail};

mod guest;
mod kernel;

/// Arguments of `cargo xtask vm-test`.
#[derive(Debug, clap::Args)]
pub struct VmTestArgs {
    /// The kernel series to boot (a key of vm-tests/kernels.lock: 6.1, 6.12); all when absent.
    #[arg(long)]
    pub kernel: Option<String>,
    /// Resolve each suite's current kernel package, download it and rewrite vm-tests/kernels.lock.
    #[arg(long)]
    pub relock: bool,
    /// Kill the guest after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Test-name filters and libtest flags, passed to the test binaries in the guest.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub filters: Vec<String>,
}

/// Boots the guest on each kernel asked for and runs the tests.
pub fn run(args: &VmTestArgs) -> Result<()> {
    let started = Instant::now();
    let lock = if args.relock {
        kernel::relock()?
    } else {
        kernel::Lock::read()?
    };
    let entries: Vec<&kernel::LockEntry> = match &args.kernel {
        Some(k) => vec![lock.get(k)?],
        None => lock.entries.iter().collect(),
    };
    let tests = guest::build_tests()?;
    let mut failed = Vec::new();
    for entry in entries {
        let vmlinux = kernel::vmlinux(entry)?;
        let modules = kernel::modules(entry)?;
        let initramfs = guest::initramfs(&tests, &modules, &args.filters)?;
        match guest::boot(entry, &vmlinux, &initramfs.image, args.timeout) {
            Ok(()) => {}
            Err(e) if args.kernel.is_none() => {
                eprintln!("vm-test: kernel {}: {e:#}", entry.kernel);
                failed.push(entry.kernel.clone());
            }
            Err(e) => return Err(e),
        }
    }
    if !failed.is_empty() {
        bail!("the vm tests failed on kernel(s) {}", failed.join(", "));
    }
    eprintln!(
        "vm-test: passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
