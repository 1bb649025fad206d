//! Bounded waits: a future with a time limit, polling until a condition holds, a process gone.

use std::future::Future;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};

/// The longest any single step of a test may take.
pub const STEP: Duration = Duration::from_secs(10);

/// `fut`, failing after [`STEP`].
pub async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> Result<T> {
    bounded_for(STEP, what, fut).await
}

/// `fut`, failing after `limit`.
pub async fn bounded_for<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = T>,
) -> Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| anyhow!("timed out after {limit:?} waiting for {what}"))
}

/// `fut`, panicking after [`STEP`]: for tests that unwrap rather than return errors.
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// What one attempt of [`poll_until`] found.
#[derive(Debug)]
pub enum Poll<T> {
    /// The condition holds: this is the answer.
    Ready(T),
    /// Not yet; the error to fail with if time runs out now.
    Pending(String),
}

/// Runs `attempt` every `every` until it is [`Poll::Ready`], for at most `limit` (the last
/// attempt starts before then); fails with the last [`Poll::Pending`]'s message once time is up.
/// An error from an attempt ends the wait at once.
pub async fn poll_until<T, F, Fut>(limit: Duration, every: Duration, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Poll<T>>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match attempt().await? {
            Poll::Ready(found) => return Ok(found),
            Poll::Pending(why) if tokio::time::Instant::now() >= deadline => bail!("{why}"),
            Poll::Pending(_) => tokio::time::sleep(every).await,
        }
    }
}

/// Gone, or dead and waiting to be reaped (a zombie, e.g. a supervisor orphaned by a killed
/// agent, until init reaps it).
pub fn process_gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'))
    })
}

/// Whether `pid` is gone (see [`process_gone`]) within [`STEP`], looking every 10 ms: a task's
/// supervisor reports the task's end just before it exits itself, so a terminal update can come
/// a moment before that.
pub async fn gone_soon(pid: u32) -> bool {
    poll_until(STEP, Duration::from_millis(10), || async {
        Ok(if process_gone(pid) {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("process {pid} is still there"))
        })
    })
    .await
    .is_ok()
}

/// `child`'s exit status once it exits, looking every `every` for at most `limit`; `None` when it
/// was still running then, and has been SIGKILLed and reaped.
pub fn reap_within(
    child: &mut Child,
    limit: Duration,
    every: Duration,
) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(every);
    }
}
