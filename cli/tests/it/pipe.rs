//! `strata` writing into a closed pipe, as in `strata frameworks --json | head -1`: every
//! command that prints stops quietly with status 0 (before, `print!` panicked on EPIPE).

use std::process::Stdio;

use anyhow::Result;
use strata_test_support::cluster::*;

/// Commands that print to stdout and end on their own.
const COMMANDS: &[&[&str]] = &[
    &["--help"],
    &["agents"],
    &["agents", "--json"],
    &["frameworks"],
    &["frameworks", "--json"],
    &["ps", "--all"],
    &["ps", "--all", "--json"],
    &["roles"],
    &["roles", "--json"],
    &["reservations"],
    &["reservations", "--json"],
    &["quota", "get"],
    &["quota", "get", "--json"],
    &["top", "--interval", "10ms"],
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_writing_into_a_closed_pipe_exit_quietly() -> Result<()> {
    let cluster = Cluster::start().await?;
    let (_fw, _events) = cluster.framework("pipe").await?;
    for args in COMMANDS {
        let open = cluster.cli(args);
        assert!(
            open.status.success() && !open.stdout.is_empty(),
            "strata {args:?} prints: {open:?}"
        );
        // The reader is gone before strata writes anything: its first write fails with EPIPE.
        let (reader, writer) = std::io::pipe()?;
        drop(reader);
        let closed = cluster
            .strata(args)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()?;
        let stderr = String::from_utf8_lossy(&closed.stderr);
        assert!(
            closed.status.success() && stderr.trim().is_empty(),
            "strata {args:?} into a closed pipe: {}, stderr: {stderr}",
            closed.status
        );
    }
    Ok(())
}
