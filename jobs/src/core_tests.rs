//! The scheduler with an injected clock: a simulated cluster of one agent that answers launches
//! as the test says.

use std::time::Duration;

use strata_framework::proto::{Offer, Resource, TaskState, TaskStatus};

use super::*;

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn secs(n: i64) -> jiff::SignedDuration {
    jiff::SignedDuration::from_secs(n)
}

fn spec(text: &str) -> JobSpec {
    JobSpec::parse(text).unwrap()
}

fn offer(n: u32) -> Offer {
    Offer {
        id: format!("o{n}"),
        agent_id: "a1".into(),
        resources: vec![
            Resource::scalar("cpus", 4.0),
            Resource::scalar("mem", 4096.0),
        ],
        ..Offer::default()
    }
}

fn status(task_id: &str, state: TaskState, exit_code: Option<i32>) -> TaskStatus {
    TaskStatus {
        task_id: task_id.into(),
        agent_id: "a1".into(),
        state: state as i32,
        exit_code,
        ..TaskStatus::default()
    }
}

/// The scheduler and its clock.
struct Sim {
    core: Core,
    now: Timestamp,
    offers: u32,
}

impl Sim {
    fn new(now: &str) -> Self {
        Self {
            core: Core::new(State::default(), "*"),
            now: at(now),
            offers: 0,
        }
    }

    fn add(&mut self, text: &str) {
        self.core.put_job(self.now, spec(text)).unwrap();
    }

    fn advance(&mut self, by: i64) {
        self.now = self.now.checked_add(secs(by)).unwrap();
        self.core.tick(self.now);
    }

    /// One offer; returns the ids of the tasks launched into it.
    fn offer(&mut self) -> Vec<String> {
        self.offers += 1;
        self.core.offers(self.now, vec![offer(self.offers)]);
        launched(&self.core.take_commands())
    }

    fn update(&mut self, task_id: &str, state: TaskState, exit_code: Option<i32>) {
        self.core
            .update(self.now, &status(task_id, state, exit_code));
    }

    fn run_to_end(&mut self, task_id: &str, exit_code: i32) {
        self.update(task_id, TaskState::Running, None);
        let state = if exit_code == 0 {
            TaskState::Finished
        } else {
            TaskState::Failed
        };
        self.update(task_id, state, Some(exit_code));
    }

    fn history(&self, id: &str) -> Vec<(u64, u32, Outcome, Option<i32>)> {
        self.core
            .job(id)
            .unwrap()
            .history
            .iter()
            .map(|r| (r.run_id, r.attempt, r.outcome, r.exit_code))
            .collect()
    }

    fn kills(&mut self) -> Vec<String> {
        self.core
            .take_commands()
            .into_iter()
            .filter_map(|c| match c {
                Command::Kill { task_id, .. } => Some(task_id),
                _ => None,
            })
            .collect()
    }
}

fn launched(commands: &[Command]) -> Vec<String> {
    commands
        .iter()
        .flat_map(|c| match c {
            Command::Launch { tasks, .. } => tasks.iter().map(|t| t.task_id.clone()).collect(),
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn every_minute_fires_on_time_across_an_hour() {
    let mut sim = Sim::new("2026-03-01T10:00:00Z");
    sim.add(
        r#"id = "tick"
command = "date"
[schedule]
cron = "* * * * *""#,
    );
    let mut launches = Vec::new();
    // A tick and an offer every second for an hour; each run ends 5 s after it launched.
    let mut running: Vec<(String, Timestamp)> = Vec::new();
    for _ in 0..3600 {
        sim.advance(1);
        for task_id in sim.offer() {
            launches.push(sim.now);
            running.push((task_id, sim.now));
        }
        let now = sim.now;
        let (done, still): (Vec<_>, Vec<_>) = running
            .into_iter()
            .partition(|(_, t)| now.duration_since(*t).as_secs() >= 5);
        running = still;
        for (task_id, _) in done {
            sim.run_to_end(&task_id, 0);
        }
    }
    assert_eq!(
        launches.len(),
        60,
        "{:?}",
        launches.iter().map(|t| t.to_string()).collect::<Vec<_>>()
    );
    for (i, t) in launches.iter().enumerate() {
        let want = at("2026-03-01T10:01:00Z")
            .checked_add(secs(60 * i as i64))
            .unwrap();
        assert_eq!(*t, want, "launch {i} is late");
    }
    // What the dashboard is told: running now, the last run finished, the next at 11:01.
    let w = sim.core.workloads();
    assert_eq!(w.len(), 1);
    assert_eq!(
        (w[0].kind.as_str(), w[0].id.as_str(), w[0].state.as_str()),
        ("job", "tick", "running")
    );
    assert_eq!(w[0].schedule, "* * * * * (UTC)");
    assert_eq!(w[0].last_run, "2026-03-01T10:59:05Z finished (exit 0)");
    assert_eq!(w[0].next_run, "2026-03-01T11:01:00Z");
    assert_eq!(w[0].instances_running, 1);
    // The run launched at 11:00:00 is still running.
    let history = sim.history("tick");
    assert_eq!(history.len(), 59);
    assert_eq!(sim.core.job("tick").unwrap().active.len(), 1);
    assert!(
        history
            .iter()
            .all(|h| h.2 == Outcome::Finished && h.3 == Some(0))
    );
}

#[test]
fn a_failing_run_is_retried_with_exponential_backoff() {
    let mut sim = Sim::new("2026-03-01T10:00:00Z");
    sim.add(
        r#"id = "flaky"
command = "exit 1"
[retry]
max_retries = 3
initial_backoff = "10s"
max_backoff = "30s""#,
    );
    let run = sim.core.run_now(sim.now, "flaky").unwrap();
    let mut attempts = Vec::new();
    // Offers every second; each attempt fails at once.
    let start = sim.now;
    for _ in 0..100 {
        for task_id in sim.offer() {
            attempts.push((task_id.clone(), sim.now.duration_since(start).as_secs()));
            sim.run_to_end(&task_id, 1);
        }
        sim.advance(1);
    }
    let r = run;
    assert_eq!(
        attempts,
        [
            (format!("flaky.{r}.1"), 0),
            (format!("flaky.{r}.2"), 10), // initial backoff
            (format!("flaky.{r}.3"), 30), // doubled: 20 s
            (format!("flaky.{r}.4"), 60), // 40 s, capped at 30 s
        ]
    );
    assert_eq!(
        sim.history("flaky"),
        (1..=4)
            .map(|a| (r, a, Outcome::Failed, Some(1)))
            .collect::<Vec<_>>()
    );
    assert!(sim.core.job("flaky").unwrap().active.is_empty());
    // A success ends the run: no retry.
    let run = sim.core.run_now(sim.now, "flaky").unwrap();
    let ids = sim.offer();
    assert_eq!(ids, [format!("flaky.{run}.1")]);
    sim.run_to_end(&ids[0], 0);
    sim.advance(100);
    assert!(sim.offer().is_empty());
}

#[test]
fn concurrency_policies() {
    // (policy, tasks launched at the second firing, kills, manual run while active allowed,
    // outcomes in history after the first run ends)
    struct Case {
        policy: &'static str,
        launched_second: usize,
        killed_first: bool,
        manual_ok: bool,
    }
    let cases = [
        Case {
            policy: "allow",
            launched_second: 1,
            killed_first: false,
            manual_ok: true,
        },
        Case {
            policy: "forbid",
            launched_second: 0,
            killed_first: false,
            manual_ok: false,
        },
        Case {
            policy: "replace",
            launched_second: 1,
            killed_first: true,
            manual_ok: true,
        },
    ];
    for case in cases {
        let mut sim = Sim::new("2026-03-01T10:00:00Z");
        sim.add(&format!(
            r#"id = "long"
command = "sleep 1000"
[schedule]
cron = "* * * * *"
concurrency = "{}""#,
            case.policy
        ));
        sim.advance(60);
        let first = sim.offer();
        assert_eq!(first.len(), 1, "{}", case.policy);
        sim.update(&first[0], TaskState::Running, None);
        sim.advance(60);
        let kills = sim.kills();
        assert_eq!(
            !kills.is_empty(),
            case.killed_first,
            "{}: {kills:?}",
            case.policy
        );
        if case.killed_first {
            assert_eq!(kills, first);
        }
        let second = sim.offer();
        assert_eq!(second.len(), case.launched_second, "{}", case.policy);
        let history = sim.history("long");
        if case.policy == "forbid" {
            assert_eq!(history.len(), 1);
            assert_eq!(history[0].2, Outcome::Skipped);
            let err = sim.core.run_now(sim.now, "long").unwrap_err();
            assert!(matches!(err, CoreError::Forbidden { .. }), "{err}");
        } else {
            assert!(history.is_empty(), "{}: {history:?}", case.policy);
            assert_eq!(sim.core.run_now(sim.now, "long").is_ok(), case.manual_ok);
        }
        // The first run's task ends (killed, for replace): how it is recorded.
        sim.update(&first[0], TaskState::Killed, None);
        let last = sim.history("long").last().copied().unwrap();
        let want = if case.killed_first {
            Outcome::Replaced
        } else {
            Outcome::Killed
        };
        assert_eq!(last.2, want, "{}", case.policy);
    }
}

#[test]
fn replace_drops_a_run_still_waiting_for_an_offer() {
    let mut sim = Sim::new("2026-03-01T10:00:00Z");
    sim.add(
        r#"id = "r"
command = "true"
[schedule]
cron = "* * * * *"
concurrency = "replace""#,
    );
    sim.advance(60); // run 1 waits: no offer comes
    sim.advance(60); // run 2 replaces it
    let h = sim.history("r");
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].2, Outcome::Replaced);
    assert_eq!(sim.offer().len(), 1);
}

#[test]
fn a_run_that_cannot_start_by_its_deadline_is_skipped() {
    let mut sim = Sim::new("2026-03-01T10:00:00Z");
    sim.add(
        r#"id = "d"
command = "true"
[schedule]
cron = "*/10 * * * *"
starting_deadline = "30s""#,
    );
    // Due at 10:10; no offer comes for 31 s.
    sim.advance(600);
    assert_eq!(sim.core.waiting(), 1);
    sim.advance(30);
    assert_eq!(sim.core.waiting(), 1, "30 s late is within the deadline");
    sim.advance(1);
    assert_eq!(sim.core.waiting(), 0);
    let h = sim.history("d");
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].2, Outcome::Skipped);
    assert!(
        sim.core.job("d").unwrap().history[0]
            .message
            .contains("starting deadline")
    );
    assert!(sim.offer().is_empty());
}

#[test]
fn a_tick_that_comes_late_skips_past_the_deadline_and_collapses_missed_times() {
    let mut sim = Sim::new("2026-03-01T10:00:00Z");
    sim.add(
        r#"id = "late"
command = "true"
[schedule]
cron = "* * * * *"
starting_deadline = "20s""#,
    );
    sim.add(
        r#"id = "nodeadline"
command = "true"
[schedule]
cron = "* * * * *""#,
    );
    // The framework was stopped for 5 min 30 s: the latest time (10:05) is 30 s ago.
    sim.advance(330);
    let late = &sim.core.job("late").unwrap().history;
    assert_eq!(late.len(), 2, "{late:?}");
    assert!(late[0].message.contains("4 scheduled time(s)"), "{late:?}");
    assert!(late[1].message.contains("starting deadline"), "{late:?}");
    assert_eq!(
        late[1].trigger,
        Trigger::Scheduled {
            at: at("2026-03-01T10:05:00Z")
        }
    );
    // Without a deadline only the latest missed time runs.
    let nodeadline = &sim.core.job("nodeadline").unwrap().history;
    assert_eq!(nodeadline.len(), 1);
    assert_eq!(nodeadline[0].outcome, Outcome::Skipped);
    assert_eq!(
        sim.offer(),
        [format!("nodeadline.{}.1", sim.core.state().next_run)]
    );
    assert_eq!(
        sim.core.job("late").unwrap().next_fire,
        Some(at("2026-03-01T10:06:00Z"))
    );
}

#[test]
fn a_run_past_its_timeout_is_killed_and_retried() {
    let mut sim = Sim::new("2026-03-01T10:00:00Z");
    sim.add(
        r#"id = "slow"
command = "sleep 100"
timeout = "10s"
[retry]
max_retries = 1
initial_backoff = "1s""#,
    );
    let run = sim.core.run_now(sim.now, "slow").unwrap();
    let t = sim.offer();
    sim.update(&t[0], TaskState::Running, None);
    sim.advance(9);
    assert!(sim.kills().is_empty());
    sim.advance(1);
    assert_eq!(sim.kills(), t);
    sim.advance(1);
    assert!(sim.kills().is_empty(), "killed once");
    sim.update(&t[0], TaskState::Killed, None);
    sim.advance(1);
    assert_eq!(sim.offer(), [format!("slow.{run}.2")]);
    assert_eq!(sim.history("slow"), [(run, 1, Outcome::TimedOut, None)]);
}

#[test]
fn history_keeps_the_latest_records() {
    let mut sim = Sim::new("2026-03-01T10:00:00Z");
    sim.add(
        r#"id = "many"
command = "true""#,
    );
    let mut last = 0;
    for _ in 0..HISTORY_LIMIT + 25 {
        last = sim.core.run_now(sim.now, "many").unwrap();
        let t = sim.offer();
        sim.run_to_end(&t[0], 0);
    }
    let h = sim.history("many");
    assert_eq!(h.len(), HISTORY_LIMIT);
    assert_eq!(h.last().unwrap().0, last);
    assert_eq!(h[0].0, last - HISTORY_LIMIT as u64 + 1);
}

#[test]
fn a_restarted_scheduler_reconciles_and_adopts_its_tasks() {
    let mut sim = Sim::new("2026-03-01T10:00:00Z");
    sim.add(
        r#"id = "adopt"
command = "sleep 5""#,
    );
    let run = sim.core.run_now(sim.now, "adopt").unwrap();
    let t = sim.offer();
    sim.update(&t[0], TaskState::Running, None);
    // The state goes through JSON, as the state file does.
    let saved = serde_json::to_string(sim.core.state()).unwrap();
    let mut core = Core::new(serde_json::from_str(&saved).unwrap(), "*");
    assert_eq!(core.state(), sim.core.state());
    core.subscribed();
    assert_eq!(
        core.take_commands(),
        [Command::Reconcile {
            tasks: vec![(t[0].clone(), "a1".into())]
        }]
    );
    core.update(sim.now, &status(&t[0], TaskState::Running, None));
    assert!(core.take_commands().is_empty(), "adopted, not killed");
    core.update(sim.now, &status(&t[0], TaskState::Finished, Some(0)));
    let h = &core.job("adopt").unwrap().history;
    assert_eq!(
        (h[0].run_id, h[0].outcome, h[0].exit_code),
        (run, Outcome::Finished, Some(0))
    );
    // A running task no run knows is killed.
    core.update(sim.now, &status("gone.9.1", TaskState::Running, None));
    assert!(
        matches!(&core.take_commands()[..], [Command::Kill { task_id, .. }] if task_id == "gone.9.1")
    );
}

#[test]
fn offers_are_declined_and_revived_as_runs_come() {
    let mut sim = Sim::new("2026-03-01T10:00:00Z");
    sim.add(
        r#"id = "big"
command = "true"
cpus = 8"#,
    );
    sim.core.offers(sim.now, vec![offer(1)]);
    assert_eq!(
        sim.core.take_commands(),
        [Command::Decline {
            offer_ids: vec!["o1".into()],
            refuse_seconds: IDLE_REFUSE_SECONDS
        }]
    );
    sim.core.run_now(sim.now, "big").unwrap();
    assert_eq!(sim.core.take_commands(), [Command::Revive]);
    // Too small for the run: declined briefly.
    sim.core.offers(sim.now, vec![offer(2)]);
    assert_eq!(
        sim.core.take_commands(),
        [Command::Decline {
            offer_ids: vec!["o2".into()],
            refuse_seconds: BUSY_REFUSE_SECONDS
        }]
    );
}

#[test]
fn requests_for_unknown_jobs_and_wrong_roles_are_refused() {
    let mut sim = Sim::new("2026-03-01T10:00:00Z");
    assert!(matches!(
        sim.core.run_now(sim.now, "nope"),
        Err(CoreError::NoJob { .. })
    ));
    assert!(matches!(
        sim.core.remove_job("nope"),
        Err(CoreError::NoJob { .. })
    ));
    let err = sim
        .core
        .put_job(sim.now, spec("id = \"r\"\ncommand = \"x\"\nrole = \"eng\""))
        .unwrap_err();
    assert!(err.to_string().contains("--role eng"), "{err}");
    // Removing a job kills its launched attempts.
    sim.add("id = \"x\"\ncommand = \"sleep 9\"");
    sim.core.run_now(sim.now, "x").unwrap();
    let t = sim.offer();
    sim.core.remove_job("x").unwrap();
    assert_eq!(sim.kills(), t);
    assert!(sim.core.job("x").is_none());
}

#[test]
fn a_daily_job_follows_its_zone_across_dst() {
    let mut sim = Sim::new("2026-03-07T00:00:00Z");
    sim.add(
        r#"id = "ny"
command = "true"
[schedule]
cron = "30 2 * * *"
timezone = "America/New_York""#,
    );
    let mut launches = Vec::new();
    for _ in 0..(3 * 24 * 60) {
        sim.advance(60);
        for t in sim.offer() {
            launches.push(sim.now.to_string());
            sim.run_to_end(&t, 0);
        }
    }
    assert_eq!(
        launches,
        [
            "2026-03-07T07:30:00Z",
            "2026-03-08T07:00:00Z", // 02:30 does not exist: right after the gap
            "2026-03-09T06:30:00Z",
        ]
    );
    let _ = Duration::ZERO;
}
