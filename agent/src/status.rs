//! The reliable status-update manager: pure logic (no I/O, no async, an injected clock) that
//! decides which task status updates to send and when, Mesos-style.
//!
//! Invariants:
//! - Every update gets a fresh 16-byte uuid when it is queued; resends keep that uuid.
//! - Per task, updates form an ordered queue and only its head is in flight: the next update
//!   is sent only after the head is acknowledged.
//! - An unacknowledged head is resent after the retry interval, which doubles each time up to
//!   [`MAX_RETRY_INTERVAL`] (10 minutes), and on every (re-)registration
//!   ([`StatusUpdateManager::resend_all`], which restarts the interval).
//! - An acknowledgement pops the head only if its uuid matches the head's; any other is stale
//!   and changes nothing.
//! - A task's queue disappears when it is empty; once a terminal update is acknowledged the
//!   caller may forget the task.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use strata_proto::TaskStatus;

/// The cap on the resend interval (Mesos: 10 minutes).
pub const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(600);

/// Identifies a task on this agent: task ids are unique only within their framework.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskKey {
    /// The framework the task belongs to.
    pub framework_id: String,
    /// The task id the framework chose.
    pub task_id: String,
}

impl TaskKey {
    /// The key of the task `task_id` of framework `framework_id`.
    pub fn new(framework_id: impl Into<String>, task_id: impl Into<String>) -> Self {
        Self {
            framework_id: framework_id.into(),
            task_id: task_id.into(),
        }
    }

    /// The key of the task a status is about.
    pub fn of(status: &TaskStatus) -> Self {
        Self::new(status.framework_id.clone(), status.task_id.clone())
    }
}

impl std::fmt::Display for TaskKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.framework_id, self.task_id)
    }
}

/// A freshly queued update.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    /// The update as queued, with its uuid.
    pub status: TaskStatus,
    /// Whether it became its task's head and must be sent now.
    pub send_now: bool,
}

/// What an acknowledgement did.
#[derive(Debug, Clone, PartialEq)]
pub enum AckOutcome {
    /// The head was acknowledged and popped.
    Accepted {
        /// Whether the acknowledged update was terminal (the task can be forgotten).
        terminal: bool,
        /// The task's next update, now in flight: send it.
        next: Option<TaskStatus>,
    },
    /// The uuid is not the head's (an old or duplicate acknowledgement); nothing changed.
    Stale,
    /// No updates are pending for that task; nothing changed.
    UnknownTask,
}

#[derive(Debug)]
struct TaskQueue {
    updates: VecDeque<TaskStatus>,
    /// When the head is resent next.
    next_retry: Instant,
    /// The wait before the following resend.
    interval: Duration,
}

/// Reliable, per-task ordered delivery of status updates. See the module docs.
#[derive(Debug)]
pub struct StatusUpdateManager {
    initial_interval: Duration,
    max_interval: Duration,
    queues: BTreeMap<TaskKey, TaskQueue>,
}

impl StatusUpdateManager {
    /// A manager whose first resend comes `retry_interval` after a send, doubling to
    /// [`MAX_RETRY_INTERVAL`].
    pub fn new(retry_interval: Duration) -> Self {
        let initial_interval = retry_interval.max(Duration::from_millis(1));
        Self {
            initial_interval,
            max_interval: MAX_RETRY_INTERVAL.max(initial_interval),
            queues: BTreeMap::new(),
        }
    }

    /// Queues `status` for its task with a fresh uuid.
    pub fn update(&mut self, mut status: TaskStatus, now: Instant) -> Queued {
        status.uuid = uuid::Uuid::new_v4().as_bytes().to_vec();
        let key = TaskKey::of(&status);
        let initial = self.initial_interval;
        let queue = self.queues.entry(key).or_insert_with(|| TaskQueue {
            updates: VecDeque::new(),
            next_retry: now + initial,
            interval: initial,
        });
        let send_now = queue.updates.is_empty();
        if send_now {
            queue.next_retry = now + initial;
            queue.interval = initial;
        }
        queue.updates.push_back(status.clone());
        Queued { status, send_now }
    }

    /// Queues a checkpointed update again, keeping its uuid (agent recovery).
    pub fn restore(&mut self, status: TaskStatus, now: Instant) {
        let key = TaskKey::of(&status);
        let initial = self.initial_interval;
        self.queues
            .entry(key)
            .or_insert_with(|| TaskQueue {
                updates: VecDeque::new(),
                next_retry: now + initial,
                interval: initial,
            })
            .updates
            .push_back(status);
    }

    /// The unacknowledged updates of the task `key`, oldest first.
    pub fn pending_updates(&self, key: &TaskKey) -> Vec<TaskStatus> {
        self.queues
            .get(key)
            .map(|q| q.updates.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Handles an acknowledgement of `uuid` for the task `key`.
    pub fn acknowledge(&mut self, key: &TaskKey, uuid: &[u8], now: Instant) -> AckOutcome {
        let Some(queue) = self.queues.get_mut(key) else {
            return AckOutcome::UnknownTask;
        };
        match queue.updates.front() {
            Some(head) if head.uuid == uuid => {}
            _ => return AckOutcome::Stale,
        }
        let acked = queue
            .updates
            .pop_front()
            .expect("the head was just matched");
        let terminal = acked.state().is_terminal();
        let next = queue.updates.front().cloned();
        if next.is_some() {
            queue.next_retry = now + self.initial_interval;
            queue.interval = self.initial_interval;
        } else {
            self.queues.remove(key);
        }
        AckOutcome::Accepted { terminal, next }
    }

    /// The heads whose resend is due at `now`; each one's next resend is scheduled after a
    /// doubled interval.
    pub fn due(&mut self, now: Instant) -> Vec<TaskStatus> {
        let max = self.max_interval;
        let mut out = Vec::new();
        for queue in self.queues.values_mut() {
            if queue.next_retry > now {
                continue;
            }
            if let Some(head) = queue.updates.front() {
                out.push(head.clone());
                queue.interval = (queue.interval * 2).min(max);
                queue.next_retry = now + queue.interval;
            }
        }
        out
    }

    /// Every head, to send after a (re-)registration; their resend intervals restart.
    pub fn resend_all(&mut self, now: Instant) -> Vec<TaskStatus> {
        let initial = self.initial_interval;
        self.queues
            .values_mut()
            .filter_map(|queue| {
                queue.next_retry = now + initial;
                queue.interval = initial;
                queue.updates.front().cloned()
            })
            .collect()
    }

    /// When the earliest resend is due; `None` when nothing is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queues.values().map(|q| q.next_retry).min()
    }

    /// Whether any update is pending.
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// How many updates are pending for the task `key`.
    pub fn pending(&self, key: &TaskKey) -> usize {
        self.queues.get(key).map_or(0, |q| q.updates.len())
    }

    /// Whether the task `key` has a terminal update pending.
    pub fn has_pending_terminal(&self, key: &TaskKey) -> bool {
        self.queues
            .get(key)
            .is_some_and(|q| q.updates.iter().any(|s| s.state().is_terminal()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::TaskState;

    const RETRY: Duration = Duration::from_secs(10);

    fn status(task: &str, state: TaskState) -> TaskStatus {
        TaskStatus {
            framework_id: "fw".to_owned(),
            task_id: task.to_owned(),
            state: state as i32,
            ..TaskStatus::default()
        }
    }

    #[test]
    fn each_update_gets_a_fresh_16_byte_uuid() {
        let mut m = StatusUpdateManager::new(RETRY);
        let now = Instant::now();
        let a = m.update(status("t", TaskState::Starting), now).status;
        let b = m.update(status("t", TaskState::Running), now).status;
        assert_eq!(a.uuid.len(), 16);
        assert_eq!(b.uuid.len(), 16);
        assert_ne!(a.uuid, b.uuid);
    }

    #[test]
    fn only_the_head_is_in_flight_and_an_ack_releases_the_next() {
        let mut m = StatusUpdateManager::new(RETRY);
        let now = Instant::now();
        let starting = m.update(status("t", TaskState::Starting), now);
        assert!(starting.send_now);
        let running = m.update(status("t", TaskState::Running), now);
        assert!(!running.send_now);
        let key = TaskKey::new("fw", "t");
        assert_eq!(m.pending(&key), 2);

        // Acknowledging the second one out of order is stale and changes nothing.
        assert_eq!(
            m.acknowledge(&key, &running.status.uuid, now),
            AckOutcome::Stale
        );
        assert_eq!(m.pending(&key), 2);

        match m.acknowledge(&key, &starting.status.uuid, now) {
            AckOutcome::Accepted { terminal, next } => {
                assert!(!terminal);
                assert_eq!(next, Some(running.status.clone()));
            }
            other => panic!("unexpected {other:?}"),
        }
        // A duplicate of the first acknowledgement is now stale.
        assert_eq!(
            m.acknowledge(&key, &starting.status.uuid, now),
            AckOutcome::Stale
        );
        assert_eq!(m.pending(&key), 1);
    }

    #[test]
    fn acknowledging_the_terminal_update_empties_the_task() {
        let mut m = StatusUpdateManager::new(RETRY);
        let now = Instant::now();
        let key = TaskKey::new("fw", "t");
        let finished = m.update(status("t", TaskState::Finished), now).status;
        assert!(m.has_pending_terminal(&key));
        assert_eq!(
            m.acknowledge(&key, &finished.uuid, now),
            AckOutcome::Accepted {
                terminal: true,
                next: None
            }
        );
        assert!(m.is_empty());
        assert_eq!(m.next_deadline(), None);
        assert!(!m.has_pending_terminal(&key));
        assert_eq!(
            m.acknowledge(&key, &finished.uuid, now),
            AckOutcome::UnknownTask
        );
    }

    #[test]
    fn the_head_is_resent_with_doubling_intervals_capped_at_ten_minutes() {
        let mut m = StatusUpdateManager::new(RETRY);
        let t0 = Instant::now();
        let head = m.update(status("t", TaskState::Starting), t0).status;
        let _second = m.update(status("t", TaskState::Running), t0);
        assert_eq!(m.next_deadline(), Some(t0 + RETRY));
        assert!(m.due(t0 + RETRY - Duration::from_millis(1)).is_empty());

        // Resends at +10 s, then 20 s later, then 40 s later, ... each the head only.
        let mut at = t0 + RETRY;
        let mut expected_gap = RETRY * 2;
        for _ in 0..12 {
            let due = m.due(at);
            assert_eq!(due, vec![head.clone()]);
            assert_eq!(m.next_deadline(), Some(at + expected_gap));
            assert!(
                m.due(at + expected_gap - Duration::from_millis(1))
                    .is_empty()
            );
            at += expected_gap;
            expected_gap = (expected_gap * 2).min(MAX_RETRY_INTERVAL);
        }
        assert_eq!(expected_gap, MAX_RETRY_INTERVAL);
    }

    #[test]
    fn an_ack_restarts_the_interval_for_the_next_update() {
        let mut m = StatusUpdateManager::new(RETRY);
        let t0 = Instant::now();
        let key = TaskKey::new("fw", "t");
        let head = m.update(status("t", TaskState::Starting), t0).status;
        m.update(status("t", TaskState::Running), t0);
        m.due(t0 + RETRY);
        m.due(t0 + RETRY * 3);
        let t1 = t0 + RETRY * 4;
        m.acknowledge(&key, &head.uuid, t1);
        assert_eq!(m.next_deadline(), Some(t1 + RETRY));
    }

    #[test]
    fn resend_all_returns_every_head_and_restarts_their_intervals() {
        let mut m = StatusUpdateManager::new(RETRY);
        let t0 = Instant::now();
        let a = m.update(status("a", TaskState::Starting), t0).status;
        m.update(status("a", TaskState::Running), t0);
        let b = m.update(status("b", TaskState::Finished), t0).status;
        m.due(t0 + RETRY);
        let t1 = t0 + RETRY * 2;
        let mut heads = m.resend_all(t1);
        heads.sort_by(|x, y| x.task_id.cmp(&y.task_id));
        assert_eq!(heads, vec![a, b]);
        assert_eq!(m.next_deadline(), Some(t1 + RETRY));
    }

    #[test]
    fn tasks_are_independent() {
        let mut m = StatusUpdateManager::new(RETRY);
        let now = Instant::now();
        let a = m.update(status("a", TaskState::Starting), now);
        let b = m.update(status("b", TaskState::Starting), now);
        assert!(a.send_now && b.send_now);
        let key_b = TaskKey::new("fw", "b");
        // b's uuid does not acknowledge a.
        assert_eq!(
            m.acknowledge(&TaskKey::new("fw", "a"), &b.status.uuid, now),
            AckOutcome::Stale
        );
        assert!(matches!(
            m.acknowledge(&key_b, &b.status.uuid, now),
            AckOutcome::Accepted { next: None, .. }
        ));
        assert_eq!(m.pending(&TaskKey::new("fw", "a")), 1);
        assert_eq!(m.pending(&key_b), 0);
        // Same task id in another framework is another task.
        let other = TaskStatus {
            framework_id: "fw2".to_owned(),
            ..status("a", TaskState::Starting)
        };
        assert!(m.update(other, now).send_now);
    }

    #[test]
    fn a_new_head_after_an_empty_queue_is_sent_at_once() {
        let mut m = StatusUpdateManager::new(RETRY);
        let t0 = Instant::now();
        let key = TaskKey::new("fw", "t");
        let s = m.update(status("t", TaskState::Starting), t0).status;
        m.acknowledge(&key, &s.uuid, t0);
        let t1 = t0 + RETRY * 7;
        let r = m.update(status("t", TaskState::Running), t1);
        assert!(r.send_now);
        assert_eq!(m.next_deadline(), Some(t1 + RETRY));
    }
}
