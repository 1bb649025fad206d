//! `strata-jobs`: the jobs framework binary (being written).

fn main() {}
