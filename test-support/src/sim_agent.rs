//! A simulated agent for fault-injection runs and benchmarks: it speaks the real Connect
//! stream to replicated allocators the way `strata-agent` does (the addresses in turn, a
//! follower's answer naming the leader followed at once, another follower's retried after
//! [`strata_proto::leader::FOLLOWER_RETRY`], else 100 ms doubling to 5 s), re-registers with
//! its tasks, heartbeats, and keeps each task's latest update until the allocator
//! acknowledges it, sending it again after each registration (as the agent's status update
//! manager does). Tasks run without processes: one labelled [`LABEL_SECONDS`] ends after that
//! long with the exit code in [`LABEL_EXIT`] (FINISHED for 0, else FAILED), others run until
//! killed. It can be told to crash (its stream dropped, back after a while with its tasks, as
//! a restarted agent recovers them) or to be partitioned (unheard of for a while; its tasks
//! go on meanwhile).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_common::Backoff;
use strata_proto::agent_service_client::AgentServiceClient;
use strata_proto::{
    AgentInfo, AgentMessage, AgentTask, Resource, TaskSource, TaskState, TaskStatus, agent_message,
    allocator_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

/// The label saying how many seconds a simulated task runs.
pub const LABEL_SECONDS: &str = "sim.seconds";
/// The label saying the exit code of a simulated task that ends by itself.
pub const LABEL_EXIT: &str = "sim.exit";

/// The index of the allocator replica among `urls` that leads now (it answers `GetLeader`),
/// if one does.
pub async fn leader(urls: &[String]) -> Option<usize> {
    for (i, url) in urls.iter().enumerate() {
        let ask = async {
            let channel = Endpoint::from_shared(url.clone())
                .ok()?
                .connect()
                .await
                .ok()?;
            strata_proto::operator_service_client::OperatorServiceClient::new(channel)
                .get_leader(strata_proto::GetLeaderRequest {})
                .await
                .ok()
        };
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(1), ask).await {
            return Some(i);
        }
    }
    None
}

/// How often unacknowledged updates are sent again.
const RESEND: Duration = Duration::from_secs(3);

/// What a simulated agent is told to do.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Drop the stream and come back after this long, with its tasks.
    Crash(Duration),
    /// Be unheard of for this long (no stream), tasks going on.
    Partition(Duration),
}

/// Each agent's newest registration: the leader's term, when, and the agent id.
pub type Registrations = Arc<Mutex<Vec<(u64, Instant, String)>>>;

/// A running simulated agent.
#[derive(Debug)]
pub struct SimAgent {
    faults: mpsc::UnboundedSender<Fault>,
    task: tokio::task::JoinHandle<()>,
}

impl SimAgent {
    /// Starts agent `index` (of `cpus` cores and `mem` MiB) on the allocator replicas `urls`
    /// (`http://HOST:PORT`), recording its registrations in `book[index]`.
    pub fn spawn(
        index: usize,
        urls: Arc<Vec<String>>,
        cpus: f64,
        mem: f64,
        book: Registrations,
    ) -> Self {
        let (faults, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(
            Sim {
                index,
                urls,
                cpus,
                mem,
                book,
                faults: rx,
                id: String::new(),
                tasks: HashMap::new(),
                ends: BTreeMap::new(),
            }
            .run(),
        );
        Self { faults, task }
    }

    /// Injects `fault`.
    pub fn inject(&self, fault: Fault) {
        let _ = self.faults.send(fault);
    }
}

impl Drop for SimAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct SimTask {
    info: AgentTask,
    /// The latest update, until the allocator acknowledges it.
    unacked: Option<TaskStatus>,
}

struct Sim {
    index: usize,
    urls: Arc<Vec<String>>,
    cpus: f64,
    mem: f64,
    book: Registrations,
    faults: mpsc::UnboundedReceiver<Fault>,
    id: String,
    tasks: HashMap<(String, String), SimTask>,
    /// When tasks that end by themselves end: (when, framework, task).
    ends: BTreeMap<(Instant, String, String), i32>,
}

/// Why a session ended.
enum Ended {
    Lost,
    Fault(Fault),
}

fn msg(message: agent_message::Message) -> AgentMessage {
    AgentMessage {
        message: Some(message),
    }
}

impl Sim {
    async fn run(mut self) {
        let n = self.urls.len();
        let mut at = self.index % n;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut redirects = 0;
        loop {
            // The addresses in turn from `at`; back off only when none answers.
            let mut channel = None;
            for i in 0..n {
                let try_at = (at + i) % n;
                if let Ok(endpoint) = Endpoint::from_shared(self.urls[try_at].clone())
                    && let Ok(Ok(c)) =
                        tokio::time::timeout(Duration::from_secs(2), endpoint.connect()).await
                {
                    at = try_at;
                    channel = Some(c);
                    break;
                }
            }
            let Some(channel) = channel else {
                self.wait(backoff.next_delay()).await;
                continue;
            };
            let (tx, rx) = mpsc::channel::<AgentMessage>(4096);
            let register = agent_message::Register {
                info: Some(AgentInfo {
                    id: self.id.clone(),
                    hostname: format!("sim-{}", self.index),
                    resources: vec![
                        Resource::scalar("cpus", self.cpus),
                        Resource::scalar("mem", self.mem),
                    ],
                    ..AgentInfo::default()
                }),
                tasks: self.tasks.values().map(|t| t.info.clone()).collect(),
            };
            let _ = tx.try_send(msg(agent_message::Message::Register(register)));
            let stream = AgentServiceClient::new(channel)
                .connect(ReceiverStream::new(rx))
                .await;
            let stream = match stream {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    let hinted = strata_proto::leader::leader_among(
                        &status,
                        self.urls.iter().map(String::as_str),
                    )
                    .index();
                    at = hinted.unwrap_or((at + 1) % n);
                    if hinted.is_some() && redirects < n {
                        redirects += 1;
                    } else if strata_proto::leader::is_follower(&status) {
                        self.wait(strata_proto::leader::FOLLOWER_RETRY).await;
                    } else {
                        self.wait(backoff.next_delay()).await;
                    }
                    continue;
                }
            };
            match self.session(stream, tx).await {
                Ended::Lost => {
                    backoff.reset();
                    redirects = 0;
                    at = (at + 1) % n;
                }
                Ended::Fault(Fault::Crash(away) | Fault::Partition(away)) => {
                    backoff.reset();
                    redirects = 0;
                    self.away(away).await;
                }
            }
        }
    }

    /// Sleeps `d` while tasks end meanwhile (their updates wait to be sent).
    async fn wait(&mut self, d: Duration) {
        let until = tokio::time::Instant::now() + d;
        loop {
            let next = self.next_end();
            tokio::select! {
                () = tokio::time::sleep_until(until) => return,
                () = tokio::time::sleep_until(next), if self.has_ends() => self.end_due(None).await,
            }
        }
    }

    /// Away for `d`: faults meanwhile are ignored.
    async fn away(&mut self, d: Duration) {
        self.wait(d).await;
        while self.faults.try_recv().is_ok() {}
    }

    fn has_ends(&self) -> bool {
        !self.ends.is_empty()
    }

    fn next_end(&self) -> tokio::time::Instant {
        self.ends.keys().next().map_or_else(
            || tokio::time::Instant::now() + Duration::from_secs(3600),
            |k| tokio::time::Instant::from_std(k.0),
        )
    }

    /// Ends the tasks that are due, sending their updates on `tx` when connected.
    async fn end_due(&mut self, tx: Option<&mpsc::Sender<AgentMessage>>) {
        let now = Instant::now();
        while let Some(entry) = self.ends.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, framework, task), exit) = entry.remove_entry();
            let state = if exit == 0 {
                TaskState::Finished
            } else {
                TaskState::Failed
            };
            self.set_state(&framework, &task, state, Some(exit), tx)
                .await;
        }
    }

    /// Records a new state of a task (its update kept until acknowledged) and sends it.
    async fn set_state(
        &mut self,
        framework: &str,
        task: &str,
        state: TaskState,
        exit: Option<i32>,
        tx: Option<&mpsc::Sender<AgentMessage>>,
    ) {
        let key = (framework.to_owned(), task.to_owned());
        let Some(t) = self.tasks.get_mut(&key) else {
            return;
        };
        let status = TaskStatus {
            task_id: task.to_owned(),
            framework_id: framework.to_owned(),
            agent_id: self.id.clone(),
            state: state as i32,
            source: TaskSource::Agent as i32,
            uuid: uuid::Uuid::new_v4().as_bytes().to_vec(),
            exit_code: exit,
            ..TaskStatus::default()
        };
        t.info.latest_status = Some(status.clone());
        t.unacked = Some(status.clone());
        if let Some(tx) = tx {
            let update = agent_message::StatusUpdate {
                status: Some(status),
            };
            let _ = tx
                .send(msg(agent_message::Message::StatusUpdate(update)))
                .await;
        }
    }

    async fn session(
        &mut self,
        mut stream: tonic::Streaming<strata_proto::AllocatorMessage>,
        tx: mpsc::Sender<AgentMessage>,
    ) -> Ended {
        let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
        // Unacknowledged updates go again now and then, as the agent's status update manager
        // resends them (every 10 s at first there; sooner here, for short runs).
        let mut resend = tokio::time::interval_at(tokio::time::Instant::now() + RESEND, RESEND);
        loop {
            let next = self.next_end();
            tokio::select! {
                _ = resend.tick() => self.resend(&tx).await,
                message = stream.message() => {
                    let Ok(Some(message)) = message else { return Ended::Lost };
                    self.handle(message.message, &tx, &mut heartbeat).await;
                }
                _ = heartbeat.tick() => {
                    let _ = tx.send(msg(agent_message::Message::Heartbeat(agent_message::Heartbeat {}))).await;
                }
                () = tokio::time::sleep_until(next), if self.has_ends() => self.end_due(Some(&tx)).await,
                Some(fault) = self.faults.recv() => return Ended::Fault(fault),
            }
        }
    }

    /// Sends every update not acknowledged yet again.
    async fn resend(&self, tx: &mpsc::Sender<AgentMessage>) {
        let unacked: Vec<TaskStatus> = self
            .tasks
            .values()
            .filter_map(|t| t.unacked.clone())
            .collect();
        for status in unacked {
            let update = agent_message::StatusUpdate {
                status: Some(status),
            };
            let _ = tx
                .send(msg(agent_message::Message::StatusUpdate(update)))
                .await;
        }
    }

    async fn handle(
        &mut self,
        message: Option<allocator_message::Message>,
        tx: &mpsc::Sender<AgentMessage>,
        heartbeat: &mut tokio::time::Interval,
    ) {
        match message {
            Some(allocator_message::Message::Registered(r)) => {
                self.id = r.agent_id.clone();
                if r.heartbeat_interval_seconds > 0.0 {
                    *heartbeat = tokio::time::interval(Duration::from_secs_f64(
                        r.heartbeat_interval_seconds.max(0.1),
                    ));
                }
                if let Ok(mut book) = self.book.lock()
                    && let Some(slot) = book.get_mut(self.index)
                {
                    *slot = (r.leader_epoch, Instant::now(), r.agent_id);
                }
                // What the last allocator did not acknowledge goes again.
                self.resend(tx).await;
            }
            Some(allocator_message::Message::LaunchTask(launch)) => {
                let Some(task) = launch.task else { return };
                let key = (launch.framework_id.clone(), task.task_id.clone());
                if self.tasks.contains_key(&key) {
                    return;
                }
                let seconds = task
                    .labels
                    .get(LABEL_SECONDS)
                    .and_then(|s| s.parse::<f64>().ok());
                let exit = task
                    .labels
                    .get(LABEL_EXIT)
                    .and_then(|s| s.parse::<i32>().ok())
                    .unwrap_or(0);
                let task_id = task.task_id.clone();
                self.tasks.insert(
                    key,
                    SimTask {
                        info: AgentTask {
                            framework_id: launch.framework_id.clone(),
                            task: Some(task),
                            latest_status: None,
                        },
                        unacked: None,
                    },
                );
                if let Some(seconds) = seconds {
                    let when = Instant::now() + Duration::from_secs_f64(seconds.clamp(0.0, 3600.0));
                    self.ends
                        .insert((when, launch.framework_id.clone(), task_id.clone()), exit);
                }
                self.set_state(
                    &launch.framework_id,
                    &task_id,
                    TaskState::Running,
                    None,
                    Some(tx),
                )
                .await;
            }
            Some(allocator_message::Message::KillTask(kill)) => {
                let key = (kill.framework_id.clone(), kill.task_id.clone());
                let running = self.tasks.get(&key).is_some_and(|t| {
                    t.info
                        .latest_status
                        .as_ref()
                        .is_some_and(|s| !s.state().is_terminal())
                });
                if running {
                    self.ends.retain(|k, _| !(k.1 == key.0 && k.2 == key.1));
                    self.set_state(
                        &kill.framework_id,
                        &kill.task_id,
                        TaskState::Killed,
                        None,
                        Some(tx),
                    )
                    .await;
                }
            }
            Some(allocator_message::Message::Acknowledge(ack)) => {
                let key = (ack.framework_id, ack.task_id);
                let done = match self.tasks.get_mut(&key) {
                    Some(t) if t.unacked.as_ref().is_some_and(|s| s.uuid == ack.uuid) => {
                        t.unacked = None;
                        t.info
                            .latest_status
                            .as_ref()
                            .is_some_and(|s| s.state().is_terminal())
                    }
                    _ => false,
                };
                // A terminal update acknowledged: the agent forgets the task.
                if done {
                    self.tasks.remove(&key);
                }
            }
            Some(allocator_message::Message::Shutdown(_)) | None => {}
        }
    }
}
