//! The loop at a framework's edge, shared by strata-jobs and strata-services: it feeds the
//! core ([`Decide`]) the allocator's events, the control API's requests and a tick every
//! second; after each (or each burst of up to 256 events already waiting), it saves the core's
//! state (only when it changed) before answering and before carrying out the commands the core
//! made, so nothing is done that a restart would forget.
//!
//! It also reports what the core runs ([`Decide::workloads`]) to the allocator for the
//! dashboard: after each (re)subscription and whenever it changed, at most once per
//! [`REPORT_INTERVAL`] ([`Reporter`]).

use std::future::Future;
use std::time::Duration;

use strata_framework::proto::{TaskStatus, Workload};
use strata_framework::{Event, Framework};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::command::{Command, execute};

/// The most events handled before the state is saved and the commands carried out.
const MAX_BATCH: usize = 256;

/// A framework's decisions, as the edge drives them (each call reads the clock itself).
pub trait Decide {
    /// A request of the control API.
    type Op: Send;
    /// Its answer.
    type Answer: Send;
    /// An event from the allocator.
    fn event(&mut self, event: Event);
    /// A request of the control API.
    fn request(&mut self, op: Self::Op) -> Self::Answer;
    /// A second passed.
    fn tick(&mut self);
    /// An update the edge made (a launch that could not be sent).
    fn update(&mut self, status: &TaskStatus);
    /// The commands made since the last call.
    fn take_commands(&mut self) -> Vec<Command>;
    /// The state to save, serialized, with the framework id.
    fn saved(&self, framework_id: &str) -> Vec<u8>;
    /// What it runs, for the dashboard's "Apps & jobs" page (at most 1000 workloads, each
    /// string at most 256 bytes); `None`, the default, reports nothing.
    fn workloads(&self) -> Option<Vec<Workload>> {
        None
    }
}

/// The least time between two workload reports.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// When to report the workloads: a report goes when they differ from the last one sent, and
/// no sooner than [`REPORT_INTERVAL`] after it.
#[derive(Debug, Default)]
pub struct Reporter {
    sent: Option<Vec<Workload>>,
    sent_at: Option<Instant>,
}

/// What [`Reporter::next`] says to do.
#[derive(Debug, PartialEq)]
pub enum Report {
    /// Send these now.
    Now(Vec<Workload>),
    /// They changed; ask again at this instant.
    At(Instant),
    /// Nothing changed since the last report.
    Unchanged,
}

impl Reporter {
    /// What to do with `current` at `now`; a [`Report::Now`] counts as sent.
    pub fn next(&mut self, now: Instant, current: Vec<Workload>) -> Report {
        if self.sent.as_ref() == Some(&current) {
            return Report::Unchanged;
        }
        if let Some(at) = self.sent_at
            && now < at + REPORT_INTERVAL
        {
            return Report::At(at + REPORT_INTERVAL);
        }
        self.sent = Some(current.clone());
        self.sent_at = Some(now);
        Report::Now(current)
    }

    /// The last report did not arrive, or the allocator that had it is gone (the framework
    /// subscribed again): the next [`Self::next`] sends whatever there is.
    pub fn forget(&mut self) {
        self.sent = None;
    }
}

/// One request of the control API, with where its answer goes.
#[derive(Debug)]
pub struct Request<Op, Answer> {
    /// What it asks.
    pub op: Op,
    /// The answer.
    pub reply: oneshot::Sender<Answer>,
}

/// Why [`drive`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The shutdown future resolved.
    Shutdown,
    /// The allocator removed the framework (torn down, or away past its failover timeout).
    Removed,
}

/// Runs `core` until `shutdown` or until the allocator removes the framework; `save` writes
/// the serialized state.
pub async fn drive<D: Decide, E>(
    core: &mut D,
    client: &Framework,
    events: &mut mpsc::Receiver<Event>,
    requests: &mut mpsc::Receiver<Request<D::Op, D::Answer>>,
    shutdown: impl Future<Output = ()>,
    mut save: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<Ended, E> {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut last = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut reporter = Reporter::default();
    // When a changed report may go (none pending: far away).
    let mut report_at: Option<Instant> = None;
    loop {
        let mut reply = None;
        let wake = report_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            () = &mut shutdown => return Ok(Ended::Shutdown),
            event = events.recv() => match event {
                None => return Ok(Ended::Removed),
                Some(event) => {
                    let mut event = Some(event);
                    // A burst (a thousand updates of a deploy) is saved once.
                    for _ in 0..MAX_BATCH {
                        let Some(e) = event.take().or_else(|| events.try_recv().ok()) else {
                            break;
                        };
                        if matches!(e, Event::Subscribed { .. }) {
                            // A new stream (perhaps a new leader): report again.
                            reporter.forget();
                        }
                        core.event(e);
                    }
                }
            },
            Some(request) = requests.recv() => {
                let answer = core.request(request.op);
                reply = Some((request.reply, answer));
            }
            _ = tick.tick() => core.tick(),
            () = tokio::time::sleep_until(wake), if report_at.is_some() => {}
        }
        // Save what was decided before doing it, and before answering.
        let bytes = core.saved(&client.framework_id());
        if bytes != last {
            save(&bytes)?;
            last = bytes;
        }
        if let Some((reply, answer)) = reply {
            let _ = reply.send(answer);
        }
        for command in core.take_commands() {
            for status in execute(client, command).await {
                core.update(&status);
            }
        }
        if report_at.is_none_or(|at| at <= Instant::now())
            && let Some(current) = core.workloads()
        {
            report_at = None;
            match reporter.next(Instant::now(), current) {
                Report::Now(workloads) => {
                    if let Err(e) = client.report_workloads(workloads).await {
                        tracing::debug!(error = %e, "workloads not reported; again after the next subscription");
                        reporter.forget();
                    }
                }
                Report::At(at) => report_at = Some(at),
                Report::Unchanged => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(id: &str, running: u32) -> Workload {
        Workload {
            kind: "app".into(),
            id: id.into(),
            instances_wanted: 2,
            instances_running: running,
            ..Workload::default()
        }
    }

    /// The first report goes at once; an unchanged one never; a change within the interval
    /// waits for its end, and only the latest goes then; after a re-subscription the same
    /// report goes again.
    #[test]
    fn reports_go_when_changed_at_most_once_per_interval() {
        let t0 = Instant::now();
        let mut r = Reporter::default();
        assert_eq!(
            r.next(t0, vec![app("web", 0)]),
            Report::Now(vec![app("web", 0)])
        );
        assert_eq!(r.next(t0, vec![app("web", 0)]), Report::Unchanged);
        let soon = t0 + Duration::from_millis(100);
        assert_eq!(
            r.next(soon, vec![app("web", 1)]),
            Report::At(t0 + REPORT_INTERVAL)
        );
        let later = t0 + Duration::from_millis(900);
        assert_eq!(
            r.next(later, vec![app("web", 2)]),
            Report::At(t0 + REPORT_INTERVAL)
        );
        let due = t0 + REPORT_INTERVAL;
        assert_eq!(
            r.next(due, vec![app("web", 2)]),
            Report::Now(vec![app("web", 2)])
        );
        // Unchanged long after: nothing.
        assert_eq!(
            r.next(due + Duration::from_secs(60), vec![app("web", 2)]),
            Report::Unchanged
        );
        r.forget();
        assert_eq!(
            r.next(due + Duration::from_secs(61), vec![app("web", 2)]),
            Report::Now(vec![app("web", 2)])
        );
        // An empty list is a report too (everything was removed).
        let end = due + Duration::from_secs(70);
        assert_eq!(r.next(end, Vec::new()), Report::Now(Vec::new()));
    }
}
