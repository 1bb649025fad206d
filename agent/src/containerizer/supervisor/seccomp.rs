//! The tasks' default seccomp profile: the system calls that container runtimes deny by default
//! (moby's `profiles/seccomp/default.json` is the reference) fail with `EPERM`, whatever
//! capabilities the task kept; everything else is allowed.
//!
//! Denied: mounting and namespaces (`mount`, `umount2`, `pivot_root`, the new mount API,
//! `unshare`, `setns`, `clone` with any namespace flag), the kernel keyring, `bpf`,
//! `perf_event_open`, kernel modules, `kexec_*`, `reboot`, swap, setting the clocks, `acct`,
//! `quotactl`, file handles (`open_by_handle_at`, `name_to_handle_at`), `lookup_dcookie`,
//! `userfaultfd`, `syslog`, `vhangup`, `nfsservctl`, `io_uring_*` (moby dropped them from its
//! default profile: a steady source of kernel exploits), `personality` with values other than
//! the ones moby allows, and on x86-64 `iopl`, `ioperm`, `uselib` and `_sysctl`. `clone3`
//! fails with `ENOSYS`, as in moby: its flags are in memory seccomp cannot read, and C
//! libraries fall back to `clone`, whose flags are checked.
//!
//! `ptrace` is allowed, as moby allows it on kernels from 4.8 on (a traced process can no
//! longer skip its filter there): a task is in a pid namespace of its own and can trace only
//! its own processes, which debuggers and `strace` in a task need.
//!
//! The program checks the architecture first: a system call made through another ABI than
//! the agent's (32-bit `int 0x80` on x86-64, say) kills the task, and so does one with the
//! x32 bit set (x32 calls share x86-64's audit architecture and would otherwise slip past the
//! numbers below).
//!
//! The filter is built by the task's init before it forks the command ([`build`], plain
//! data), and installed by the command's last step before `exec`, after `no_new_privs`
//! (`crate::sys::drop_privileges_before_exec`).

use std::collections::BTreeMap;

use nix::libc;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, sock_filter,
};
use serde::{Deserialize, Serialize};

/// Which seccomp profile tasks run under (`--seccomp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Seccomp {
    /// The default profile of this module.
    #[default]
    Default,
    /// No seccomp filter.
    Unconfined,
}

impl Seccomp {
    /// `default` or `unconfined`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "default" => Ok(Self::Default),
            "unconfined" => Ok(Self::Unconfined),
            other => Err(format!(
                "unknown seccomp profile {other:?}: use default or unconfined"
            )),
        }
    }
}

/// Errors building the profile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// This architecture has no profile.
    #[error(
        "the default seccomp profile is not available on {arch}: start the agent with --seccomp unconfined"
    )]
    Unsupported {
        /// `std::env::consts::ARCH`.
        arch: &'static str,
    },
    /// seccompiler refused a rule or the program.
    #[error("cannot build the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
}

/// The namespace flags of `clone` (moby's mask 0x7E020000): `CLONE_NEWNS`, `CLONE_NEWCGROUP`,
/// `CLONE_NEWUTS`, `CLONE_NEWIPC`, `CLONE_NEWUSER`, `CLONE_NEWPID`, `CLONE_NEWNET`.
/// (`CLONE_NEWTIME` shares its bit with the exit signal in `clone`; `unshare` is denied whole.)
const CLONE_NAMESPACE_FLAGS: [i32; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWCGROUP,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
];

/// The `personality` values moby allows: `PER_LINUX`, `UNAME26`, `PER_LINUX32`,
/// `UNAME26 | PER_LINUX32`, and the query `0xffffffff`.
const PERSONALITIES: [u64; 5] = [0x0, 0x0002_0000, 0x0008, 0x0002_0008, 0xffff_ffff];

/// The system calls denied whatever their arguments.
fn denied_syscalls() -> Vec<i64> {
    let mut denied = vec![
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_mount_setattr,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_settimeofday,
        libc::SYS_adjtimex,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_quotactl_fd,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_lookup_dcookie,
        libc::SYS_userfaultfd,
        libc::SYS_syslog,
        libc::SYS_vhangup,
        libc::SYS_nfsservctl,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ];
    #[cfg(target_arch = "x86_64")]
    denied.extend([
        libc::SYS_iopl,
        libc::SYS_ioperm,
        libc::SYS__sysctl,
        libc::SYS_uselib,
    ]);
    denied
}

/// The architecture this agent was built for, as seccompiler and the kernel's audit name it.
fn target() -> Result<(seccompiler::TargetArch, u32), SeccompError> {
    // AUDIT_ARCH_* of <linux/audit.h>: the ELF machine, 64-bit, little-endian.
    const AUDIT_64_LE: u32 = 0x8000_0000 | 0x4000_0000;
    #[cfg(target_arch = "x86_64")]
    return Ok((seccompiler::TargetArch::x86_64, 62 | AUDIT_64_LE));
    #[cfg(target_arch = "aarch64")]
    return Ok((seccompiler::TargetArch::aarch64, 183 | AUDIT_64_LE));
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = AUDIT_64_LE;
        Err(SeccompError::Unsupported {
            arch: std::env::consts::ARCH,
        })
    }
}

fn arg0(op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SeccompError> {
    Ok(SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        op,
        value,
    )?)
}

/// The default profile as a BPF program, ready for `seccompiler::apply_filter`.
pub fn build() -> Result<BpfProgram, SeccompError> {
    let (arch, audit_arch) = target()?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = denied_syscalls()
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    // clone with any namespace flag: one rule per flag (rules of a call are or-ed).
    let mut clone = Vec::new();
    for flag in CLONE_NAMESPACE_FLAGS {
        let flag = u64::from(flag.cast_unsigned());
        clone.push(SeccompRule::new(vec![arg0(
            SeccompCmpOp::MaskedEq(flag),
            flag,
        )?])?);
    }
    rules.insert(libc::SYS_clone, clone);
    // personality with any other value than the allowed ones (conditions are and-ed).
    let mut unusual = Vec::new();
    for value in PERSONALITIES {
        unusual.push(arg0(SeccompCmpOp::Ne, value)?);
    }
    rules.insert(libc::SYS_personality, vec![SeccompRule::new(unusual)?]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM.cast_unsigned()),
        arch,
    )?;
    let compiled: BpfProgram = filter.try_into()?;
    let mut program = prelude(audit_arch);
    program.extend(compiled);
    Ok(program)
}

/// What seccompiler's filter cannot say, run before it: another architecture is killed, an x32
/// call too, and `clone3` fails with `ENOSYS`. seccompiler's program follows unchanged (its
/// jumps are relative, within itself).
fn prelude(audit_arch: u32) -> Vec<sock_filter> {
    // BPF_LD | BPF_W | BPF_ABS, BPF_JMP | BPF_JEQ | BPF_K, BPF_JMP | BPF_JGE | BPF_K,
    // BPF_RET | BPF_K (<linux/bpf_common.h>).
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    // offsetof(struct seccomp_data, nr) and (.., arch).
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let op = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    let errno = |e: i32| libc::SECCOMP_RET_ERRNO | (e.cast_unsigned() & libc::SECCOMP_RET_DATA);
    vec![
        op(LD_W_ABS, 0, 0, ARCH),
        op(JEQ_K, 1, 0, audit_arch),
        op(RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        op(LD_W_ABS, 0, 0, NR),
        op(JGE_K, 0, 1, X32_SYSCALL_BIT),
        op(RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        op(
            JEQ_K,
            0,
            1,
            u32::try_from(libc::SYS_clone3).unwrap_or(u32::MAX),
        ),
        op(RET_K, 0, 0, errno(libc::ENOSYS)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a classic BPF program returns for one system call: a small interpreter of the
    /// instructions seccompiler and [`prelude`] emit, over a `struct seccomp_data`.
    fn run(program: &[sock_filter], arch: u32, nr: i64, args: [u64; 6]) -> u32 {
        let mut data = Vec::with_capacity(64);
        data.extend_from_slice(&u32::try_from(nr).unwrap().to_ne_bytes());
        data.extend_from_slice(&arch.to_ne_bytes());
        data.extend_from_slice(&0u64.to_ne_bytes());
        for a in args {
            data.extend_from_slice(&a.to_ne_bytes());
        }
        let mut acc: u32 = 0;
        let mut pc = 0usize;
        loop {
            let ins = &program[pc];
            let k = ins.k;
            pc += 1;
            match ins.code {
                0x20 => {
                    let at = k as usize;
                    acc = u32::from_ne_bytes(data[at..at + 4].try_into().unwrap());
                }
                0x54 => acc &= k,
                0x05 => pc += k as usize,
                0x15 | 0x25 | 0x35 | 0x45 => {
                    let taken = match ins.code {
                        0x15 => acc == k,
                        0x25 => acc > k,
                        0x35 => acc >= k,
                        _ => acc & k != 0,
                    };
                    pc += usize::from(if taken { ins.jt } else { ins.jf });
                }
                0x06 => return k,
                code => panic!("unexpected BPF instruction {code:#x} at {}", pc - 1),
            }
        }
    }

    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;

    fn native(program: &[sock_filter], nr: i64, arg0: u64) -> u32 {
        let (_, arch) = target().unwrap();
        run(program, arch, nr, [arg0, 0, 0, 0, 0, 0])
    }

    #[test]
    fn the_default_profile_denies_what_container_runtimes_deny() {
        let p = build().unwrap();
        for nr in [
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_keyctl,
            libc::SYS_bpf,
            libc::SYS_perf_event_open,
            libc::SYS_init_module,
            libc::SYS_kexec_load,
            libc::SYS_reboot,
            libc::SYS_clock_settime,
            libc::SYS_open_by_handle_at,
            libc::SYS_userfaultfd,
            libc::SYS_fsopen,
            libc::SYS_io_uring_setup,
        ] {
            assert_eq!(native(&p, nr, 0), EPERM, "syscall {nr} is not denied");
        }
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_ptrace,
            libc::SYS_setuid,
            libc::SYS_socket,
            libc::SYS_bind,
        ] {
            assert_eq!(
                native(&p, nr, 0),
                libc::SECCOMP_RET_ALLOW,
                "syscall {nr} is denied"
            );
        }
    }

    #[test]
    fn clone_is_denied_only_with_namespace_flags_and_clone3_is_enosys() {
        let p = build().unwrap();
        // What fork and pthread_create pass.
        let fork = u64::from(
            (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD).cast_unsigned(),
        );
        let thread = u64::from(
            (libc::CLONE_VM
                | libc::CLONE_FS
                | libc::CLONE_FILES
                | libc::CLONE_SIGHAND
                | libc::CLONE_THREAD
                | libc::CLONE_SYSVSEM
                | libc::CLONE_SETTLS
                | libc::CLONE_PARENT_SETTID
                | libc::CLONE_CHILD_CLEARTID)
                .cast_unsigned(),
        );
        assert_eq!(native(&p, libc::SYS_clone, fork), libc::SECCOMP_RET_ALLOW);
        assert_eq!(native(&p, libc::SYS_clone, thread), libc::SECCOMP_RET_ALLOW);
        for flag in CLONE_NAMESPACE_FLAGS {
            let flags = fork | u64::from(flag.cast_unsigned());
            assert_eq!(native(&p, libc::SYS_clone, flags), EPERM, "{flag:#x}");
        }
        assert_eq!(
            native(&p, libc::SYS_clone3, 0),
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32
        );
    }

    #[test]
    fn personality_allows_only_the_usual_values() {
        let p = build().unwrap();
        for value in PERSONALITIES {
            assert_eq!(
                native(&p, libc::SYS_personality, value),
                libc::SECCOMP_RET_ALLOW
            );
        }
        // ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC.
        for value in [0x0004_0000, 0x0040_0000] {
            assert_eq!(native(&p, libc::SYS_personality, value), EPERM);
        }
    }

    #[test]
    fn other_architectures_and_x32_calls_are_killed() {
        let p = build().unwrap();
        // AUDIT_ARCH_I386: 32-bit calls through int 0x80.
        let i386 = 3 | 0x4000_0000;
        assert_eq!(
            run(&p, i386, libc::SYS_read, [0; 6]),
            libc::SECCOMP_RET_KILL_PROCESS
        );
        let x32_mount = libc::SYS_mount | 0x4000_0000;
        assert_eq!(native(&p, x32_mount, 0), libc::SECCOMP_RET_KILL_PROCESS);
    }

    #[test]
    fn the_profile_names_parse() {
        assert_eq!(Seccomp::parse("default"), Ok(Seccomp::Default));
        assert_eq!(Seccomp::parse(" unconfined "), Ok(Seccomp::Unconfined));
        assert!(
            Seccomp::parse("strict")
                .unwrap_err()
                .contains("default or unconfined")
        );
    }
}
