//! The eBPF scheduling and profiling scenarios of `strata_vm_tests::profiling` on this host
//! (hybrid cgroups on the development machines; v2 elsewhere). The workloads run as tasks of a
//! real containerizer in cgroups below the test's own, with cpu limits set before they start;
//! the same scenarios run in the qemu guest (`tests/guest.rs`). They are declared once, with the
//! guest's, in `strata_vm_tests::scenarios!`.
//!
//! They need root (cgroups, eBPF and perf events) and a kernel with BTF; elsewhere they skip
//! with a message.

strata_vm_tests::scenarios!(tracing => host_tests);
