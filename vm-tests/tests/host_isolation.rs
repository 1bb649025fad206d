//! The isolation and accounting scenarios of `strata_vm_tests::isolation` and
//! `strata_vm_tests::accounting` on this host (hybrid cgroups on the development machines; v2
//! elsewhere). Each creates its cgroups below the test's own cgroup and sets every limit before
//! the workload starts; the same scenarios run in the qemu guest (`tests/guest.rs`, pure cgroup
//! v2). They are declared once, with the guest's, in `strata_vm_tests::scenarios!`.
//!
//! They need root (to create cgroups); elsewhere they skip with a message.

strata_vm_tests::scenarios!(containerizer => host_tests);
