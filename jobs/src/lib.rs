//! strata-jobs: a framework that runs jobs on a Strata cluster, now or on cron schedules.
pub mod core;
pub mod schedule;
pub mod spec;
