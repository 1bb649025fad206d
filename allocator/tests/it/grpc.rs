//! The allocator through real gRPC on 127.0.0.1 (port 0): a fake agent (this test speaking
//! AgentService over a real channel), framework streams and operator calls. Every wait is
//! bounded by a timeout so a bug fails a test instead of hanging it.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use strata_proto::agent_service_client::AgentServiceClient;
use strata_proto::names::{CPUS, MEM};
use strata_proto::operator_service_client::OperatorServiceClient;
use strata_proto::scheduler_service_client::SchedulerServiceClient;
use strata_proto::{
    AgentInfo, AgentState, AgentSummary, Call, CpuUsage, FrameworkCapability, FrameworkInfo,
    FrameworkSummary, GetStateRequest, GetStateResponse, GetUsageRequest, ListAgentsRequest,
    ListFrameworksRequest, ListTasksRequest, Resource, TaskInfo, TaskReason, TaskSource, TaskState,
    TaskStatus, TaskSummary, TaskUsage, agent_message, allocator_message, call, event,
};
use strata_test_support::allocator::Allocator;
use strata_test_support::bounded;
use strata_test_support::fake_agent::{FakeAgent, agent_msg};
use strata_test_support::framework::{Framework, task};
use strata_test_support::wait::{Poll, poll_until};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

/// OperatorService calls, each bounded.
struct Operator(OperatorServiceClient<Channel>);

impl Operator {
    async fn connect(allocator: &Allocator) -> Result<Self> {
        Ok(Self(OperatorServiceClient::new(allocator.channel().await?)))
    }

    async fn agents(&mut self) -> Result<Vec<AgentSummary>> {
        let response = bounded("ListAgents", self.0.list_agents(ListAgentsRequest {})).await??;
        Ok(response.into_inner().agents)
    }

    async fn frameworks(&mut self) -> Result<Vec<FrameworkSummary>> {
        let call = self.0.list_frameworks(ListFrameworksRequest {});
        Ok(bounded("ListFrameworks", call)
            .await??
            .into_inner()
            .frameworks)
    }

    async fn tasks(&mut self, request: ListTasksRequest) -> Result<Vec<TaskSummary>> {
        let response = bounded("ListTasks", self.0.list_tasks(request)).await??;
        Ok(response.into_inner().tasks)
    }

    async fn state(&mut self) -> Result<GetStateResponse> {
        let response = bounded("GetState", self.0.get_state(GetStateRequest {})).await??;
        Ok(response.into_inner())
    }

    async fn usage(&mut self, request: GetUsageRequest) -> Result<Vec<TaskUsage>> {
        let response = bounded("GetUsage", self.0.get_usage(request)).await??;
        Ok(response.into_inner().tasks)
    }

    /// Asks GetUsage (every 20 ms, at most 10 s) until `done` accepts the answer: usage reports
    /// are taken in as they come, with no answer to wait for.
    async fn usage_until(
        &mut self,
        what: &str,
        done: impl Fn(&[TaskUsage]) -> bool,
    ) -> Result<Vec<TaskUsage>> {
        let done = &done;
        poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
            let mut op = Self(self.0.clone());
            async move {
                let tasks = op.usage(GetUsageRequest::default()).await?;
                Ok(if done(&tasks) {
                    Poll::Ready(tasks)
                } else {
                    Poll::Pending(format!(
                        "GetUsage never showed {what}: it answers {tasks:?}"
                    ))
                })
            }
        })
        .await
    }
}

async fn launch_task(agent: &mut FakeAgent, fw: &mut Framework, id: &str) -> Result<TaskInfo> {
    let offer = fw.offer().await?;
    assert_eq!(offer.agent_id, agent.id);
    fw.launch(&offer, vec![task(id, 1.0, 64.0)]).await?;
    match agent.next().await? {
        allocator_message::Message::LaunchTask(l) => {
            assert_eq!(l.framework_id, fw.id);
            let t = l.task.context("launch without task")?;
            assert_eq!(t.task_id, id);
            Ok(t)
        }
        other => bail!("expected LaunchTask, got {other:?}"),
    }
}

#[tokio::test]
async fn a_task_travels_from_framework_to_agent_and_back() -> Result<()> {
    let allocator = Allocator::start().await?;
    let mut agent = FakeAgent::register(&allocator, 2.0, 1024.0).await?;
    let mut fw = Framework::named(&allocator, "lifecycle").await?;

    // A launch larger than the offer is refused with TASK_ERROR and launches nothing.
    let offer = fw.offer().await?;
    assert_eq!(offer.agent_id, agent.id);
    assert_eq!(strata_proto::scalar_sum(&offer.resources, CPUS), 2.0);
    fw.launch(&offer, vec![task("too-big", 4.0, 64.0)]).await?;
    let refused = fw.update().await?;
    assert_eq!(refused.state(), TaskState::Error);
    assert_eq!(refused.reason(), TaskReason::TaskInvalid);
    assert_eq!(
        refused.message,
        format!(
            "task \"too-big\" asks for cpus=4 but offer {} has cpus=2",
            offer.id
        )
    );
    assert!(refused.uuid.is_empty());

    // The rejected ACCEPT used the offer up (as in Mesos): the agent is offered again
    // (the call refused nothing). Launch for real on the new offer.
    let offer = fw.offer().await?;
    assert_eq!(strata_proto::scalar_sum(&offer.resources, CPUS), 2.0);
    fw.launch(&offer, vec![task("t1", 1.0, 64.0)]).await?;
    let launched = match agent.next().await? {
        allocator_message::Message::LaunchTask(l) => l,
        other => bail!("expected LaunchTask, got {other:?}"),
    };
    assert_eq!(launched.framework_id, fw.id);
    let t = launched.task.context("task")?;
    assert_eq!(
        (t.task_id.as_str(), t.agent_id.as_str()),
        ("t1", agent.id.as_str())
    );

    // The operator sees the agent, the framework and the staging task.
    let mut op = Operator::connect(&allocator).await?;
    let agents = op.agents().await?;
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].id, agent.id);
    assert_eq!(agents[0].state(), AgentState::Active);
    assert_eq!(strata_proto::scalar_sum(&agents[0].allocated, CPUS), 1.0);
    let frameworks = op.frameworks().await?;
    assert_eq!(frameworks.len(), 1);
    assert_eq!(frameworks[0].name, "lifecycle");
    assert!(frameworks[0].connected);
    assert_eq!(frameworks[0].active_tasks, 1);

    // STARTING, RUNNING, FINISHED with uuids; each forwarded, acknowledged, and the
    // acknowledgement forwarded to the agent.
    for (state, uuid) in [
        (TaskState::Starting, 1u8),
        (TaskState::Running, 2),
        (TaskState::Finished, 3),
    ] {
        agent.update(&fw.id, "t1", state, &[uuid; 16]).await?;
        let status = fw.update().await?;
        assert_eq!(status.task_id, "t1");
        assert_eq!(status.state(), state);
        assert_eq!(status.uuid, vec![uuid; 16]);
        assert_eq!(status.agent_id, agent.id);
        if state == TaskState::Running {
            let tasks = op.tasks(ListTasksRequest::default()).await?;
            assert_eq!(tasks.len(), 1);
            assert_eq!(tasks[0].state(), TaskState::Running);
            assert_eq!(tasks[0].framework_id, fw.id);
        }
        fw.call(call::Call::Acknowledge(call::Acknowledge {
            agent_id: status.agent_id.clone(),
            task_id: status.task_id.clone(),
            uuid: status.uuid.clone(),
        }))
        .await?;
        match agent.next().await? {
            allocator_message::Message::Acknowledge(a) => {
                assert_eq!(a.framework_id, fw.id);
                assert_eq!(a.task_id, "t1");
                assert_eq!(a.uuid, vec![uuid; 16]);
            }
            other => bail!("expected AcknowledgeUpdate, got {other:?}"),
        }
    }

    // Finished: no active task, one in the history; the agent's resources are free.
    let active = op.tasks(ListTasksRequest::default()).await?;
    assert!(active.is_empty(), "{active:?}");
    let all = op
        .tasks(ListTasksRequest {
            include_terminal: true,
            framework_id: fw.id.clone(),
            ..ListTasksRequest::default()
        })
        .await?;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state(), TaskState::Finished);
    assert_eq!(all[0].exit_code, Some(0));
    let agents = op.agents().await?;
    assert!(agents[0].allocated.is_empty(), "{:?}", agents[0]);
    let state = op.state().await?;
    assert_eq!(
        (
            state.agents.len(),
            state.frameworks.len(),
            state.tasks.len()
        ),
        (1, 1, 1)
    );
    assert!(!state.allocator_version.is_empty());

    allocator.shutdown().await
}

#[tokio::test]
async fn a_dropped_agent_stream_reports_its_tasks_lost_or_unreachable() -> Result<()> {
    for (partition_aware, expected) in [(false, TaskState::Lost), (true, TaskState::Unreachable)] {
        let allocator = Allocator::start().await?;
        let mut agent = FakeAgent::register(&allocator, 2.0, 1024.0).await?;
        let capabilities = if partition_aware {
            vec![FrameworkCapability::PartitionAware as i32]
        } else {
            vec![]
        };
        let mut fw = Framework::subscribe(
            &allocator,
            FrameworkInfo {
                name: "watcher".into(),
                capabilities,
                ..FrameworkInfo::default()
            },
        )
        .await?;
        launch_task(&mut agent, &mut fw, "t1").await?;
        agent
            .update(&fw.id, "t1", TaskState::Running, &[1; 16])
            .await?;
        assert_eq!(fw.update().await?.state(), TaskState::Running);
        let agent_id = agent.id.clone();
        drop(agent);

        let mut failure = false;
        let lost = fw
            .wait_for("the lost update", |e| match e {
                event::Event::Update(u) => u.status,
                event::Event::Failure(f) => {
                    failure |= f.agent_id == agent_id;
                    None
                }
                _ => None,
            })
            .await?;
        assert_eq!(lost.task_id, "t1");
        assert_eq!(lost.state(), expected, "partition aware: {partition_aware}");
        assert_eq!(lost.reason(), TaskReason::AgentDisconnected);
        assert_eq!(lost.source(), TaskSource::Allocator);
        assert!(lost.uuid.is_empty());
        if !failure {
            fw.wait_for("FAILURE", |e| match e {
                event::Event::Failure(f) if f.agent_id == agent_id => Some(()),
                _ => None,
            })
            .await?;
        }
        let mut op = Operator::connect(&allocator).await?;
        let agents = op.agents().await?;
        assert_eq!(agents[0].state(), AgentState::Unreachable);
        allocator.shutdown().await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_dropped_framework_stream_frees_its_offers() -> Result<()> {
    let allocator = Allocator::start().await?;
    let agent = FakeAgent::register(&allocator, 2.0, 1024.0).await?;
    let mut first = Framework::named(&allocator, "first").await?;
    let offer = first.offer().await?;
    assert_eq!(offer.agent_id, agent.id);
    // The agent's resources are in `first`'s offer: `second` gets nothing until it goes.
    let mut second = Framework::named(&allocator, "second").await?;
    let early = tokio::time::timeout(Duration::from_millis(300), second.offer()).await;
    assert!(
        early.is_err(),
        "second got an offer while first held it: {early:?}"
    );
    drop(first);
    let offer = second.offer().await?;
    assert_eq!(offer.agent_id, agent.id);
    assert_eq!(strata_proto::scalar_sum(&offer.resources, CPUS), 2.0);
    // failover_timeout 0: the first framework is gone from the state.
    let mut op = Operator::connect(&allocator).await?;
    let names: Vec<String> = op.frameworks().await?.into_iter().map(|f| f.name).collect();
    assert_eq!(names, vec!["second".to_owned()]);
    allocator.shutdown().await
}

#[tokio::test]
async fn an_outstanding_offer_is_rescinded_when_its_agent_goes() -> Result<()> {
    let allocator = Allocator::start().await?;
    let agent = FakeAgent::register(&allocator, 2.0, 1024.0).await?;
    let mut fw = Framework::named(&allocator, "one").await?;
    let offer = fw.offer().await?;
    drop(agent);
    let rescinded = fw
        .wait_for("RESCIND", |e| match e {
            event::Event::Rescind(r) => Some(r.offer_id),
            _ => None,
        })
        .await?;
    assert_eq!(rescinded, offer.id);
    // The rescinded offer cannot be used.
    fw.launch(&offer, vec![task("late", 0.1, 8.0)]).await?;
    let dropped = fw.update().await?;
    assert_eq!(dropped.state(), TaskState::Dropped);
    assert_eq!(dropped.reason(), TaskReason::InvalidOffers);
    allocator.shutdown().await
}

#[tokio::test]
async fn an_unknown_framework_id_is_refused_with_not_found() -> Result<()> {
    let allocator = Allocator::start().await?;
    let (_tx, mut rx) = Framework::open(
        &allocator,
        FrameworkInfo {
            id: "no-such-framework".into(),
            ..FrameworkInfo::default()
        },
    )
    .await?;
    let status = bounded("the refusal", rx.message())
        .await?
        .expect_err("subscription refused");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        status.message(),
        "unknown framework id no-such-framework: subscribe without an id to register a new framework"
    );
    let mut op = Operator::connect(&allocator).await?;
    assert!(op.frameworks().await?.is_empty());
    allocator.shutdown().await
}

#[tokio::test]
async fn the_first_call_must_be_subscribe() -> Result<()> {
    let allocator = Allocator::start().await?;
    let mut client = SchedulerServiceClient::new(allocator.channel().await?);
    let (tx, rx) = mpsc::channel(4);
    let revive = Call {
        framework_id: String::new(),
        call: Some(call::Call::Revive(call::Revive::default())),
    };
    bounded("queueing REVIVE", tx.send(revive)).await??;
    let mut events = bounded("Subscribe", client.subscribe(ReceiverStream::new(rx)))
        .await??
        .into_inner();
    let status = bounded("the refusal", events.message())
        .await?
        .expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition);
    allocator.shutdown().await
}

#[tokio::test]
async fn a_framework_resubscribes_with_its_id_and_keeps_its_tasks() -> Result<()> {
    let allocator = Allocator::start().await?;
    let mut agent = FakeAgent::register(&allocator, 2.0, 1024.0).await?;
    let mut fw = Framework::subscribe(
        &allocator,
        FrameworkInfo {
            name: "durable".into(),
            failover_timeout_seconds: 60.0,
            ..FrameworkInfo::default()
        },
    )
    .await?;
    launch_task(&mut agent, &mut fw, "t1").await?;
    let id = fw.id.clone();
    drop(fw);
    let mut again = Framework::subscribe(
        &allocator,
        FrameworkInfo {
            id: id.clone(),
            name: "durable".into(),
            failover_timeout_seconds: 60.0,
            ..FrameworkInfo::default()
        },
    )
    .await?;
    assert_eq!(again.id, id);
    // Updates reach the new stream; the task was never killed.
    agent
        .update(&id, "t1", TaskState::Running, &[5; 16])
        .await?;
    let status = again.update().await?;
    assert_eq!(status.state(), TaskState::Running);
    let mut op = Operator::connect(&allocator).await?;
    let tasks = op.tasks(ListTasksRequest::default()).await?;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].state(), TaskState::Running);
    allocator.shutdown().await
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_serve_returns() -> Result<()> {
    let allocator = Allocator::start().await?;
    let mut agent = FakeAgent::register(&allocator, 1.0, 128.0).await?;
    let mut fw = Framework::named(&allocator, "one").await?;
    fw.offer().await?;
    allocator.shutdown().await?;
    // Both streams end (cleanly or with an error), they do not hang.
    let agent_end = bounded("agent stream end", agent.rx.message()).await?;
    assert!(!matches!(agent_end, Ok(Some(_))), "{agent_end:?}");
    // Heartbeats or offers already in flight may come first; then the stream ends.
    while let Ok(Some(_)) = bounded("framework stream end", fw.rx.message()).await? {}
    Ok(())
}

#[tokio::test]
async fn an_agent_reregistering_with_its_tasks_brings_them_back() -> Result<()> {
    let allocator = Allocator::start().await?;
    let mut agent = FakeAgent::register(&allocator, 2.0, 1024.0).await?;
    let mut fw = Framework::subscribe(
        &allocator,
        FrameworkInfo {
            name: "aware".into(),
            capabilities: vec![FrameworkCapability::PartitionAware as i32],
            ..FrameworkInfo::default()
        },
    )
    .await?;
    let info = launch_task(&mut agent, &mut fw, "t1").await?;
    agent
        .update(&fw.id, "t1", TaskState::Running, &[1; 16])
        .await?;
    assert_eq!(fw.update().await?.state(), TaskState::Running);
    let agent_id = agent.id.clone();
    drop(agent);
    assert_eq!(fw.update().await?.state(), TaskState::Unreachable);

    // Reconnect with the same id and the running task.
    let mut client = AgentServiceClient::new(allocator.channel().await?);
    let (tx, rx) = mpsc::channel(8);
    let register = agent_msg(agent_message::Message::Register(agent_message::Register {
        info: Some(AgentInfo {
            id: agent_id.clone(),
            hostname: "fake-host".into(),
            resources: vec![Resource::scalar(CPUS, 2.0), Resource::scalar(MEM, 1024.0)],
            ..AgentInfo::default()
        }),
        tasks: vec![strata_proto::AgentTask {
            framework_id: fw.id.clone(),
            task: Some(info),
            latest_status: Some(TaskStatus {
                task_id: "t1".into(),
                framework_id: fw.id.clone(),
                state: TaskState::Running as i32,
                ..TaskStatus::default()
            }),
        }],
    }));
    bounded("queueing Register", tx.send(register)).await??;
    let mut back = bounded("Connect", client.connect(ReceiverStream::new(rx)))
        .await??
        .into_inner();
    let registered = bounded("Registered", back.message())
        .await??
        .context("ended")?;
    assert!(matches!(
        registered.message,
        Some(allocator_message::Message::Registered(ref r)) if r.agent_id == agent_id
    ));
    let status = fw.update().await?;
    assert_eq!(
        (status.task_id.as_str(), status.state()),
        ("t1", TaskState::Running)
    );
    assert!(status.uuid.is_empty());
    drop(tx);
    allocator.shutdown().await
}

#[tokio::test]
async fn operator_calls_steer_roles_quota_reservations_and_agents() -> Result<()> {
    use strata_proto::{
        DeactivateAgentRequest, DrainAgentRequest, GetQuotaRequest, ListReservationsRequest,
        ListRolesRequest, QuotaInfo, ReactivateAgentRequest, ReserveRequest, SetQuotaRequest,
        SetWeightsRequest, TeardownFrameworkRequest, WatchRequest,
    };
    let allocator = Allocator::start().await?;
    let mut op = OperatorServiceClient::new(allocator.channel().await?);
    let mut watch = bounded("Watch", op.watch(WatchRequest {}))
        .await??
        .into_inner();
    let agent = FakeAgent::register(&allocator, 4.0, 1024.0).await?;

    // Weights and quota, read back through ListRoles and GetQuota.
    bounded(
        "SetWeights",
        op.set_weights(SetWeightsRequest {
            weights: [("eng".to_owned(), 2.0)].into(),
        }),
    )
    .await??;
    let bad = bounded(
        "SetWeights",
        op.set_weights(SetWeightsRequest {
            weights: [("eng".to_owned(), -1.0)].into(),
        }),
    )
    .await?
    .expect_err("negative weight");
    assert_eq!(bad.code(), Code::InvalidArgument);
    bounded(
        "SetQuota",
        op.set_quota(SetQuotaRequest {
            quota: Some(QuotaInfo {
                role: "eng".to_owned(),
                guarantee: vec![Resource::scalar(CPUS, 1.0)],
                limit: vec![Resource::scalar(CPUS, 3.0)],
            }),
        }),
    )
    .await??;
    let quotas = bounded("GetQuota", op.get_quota(GetQuotaRequest {}))
        .await??
        .into_inner()
        .quotas;
    assert_eq!(quotas.len(), 1);
    // A limit of 0 is kept: an operator may cap a role at nothing.
    bounded(
        "SetQuota",
        op.set_quota(SetQuotaRequest {
            quota: Some(QuotaInfo {
                role: "ads".to_owned(),
                guarantee: vec![],
                limit: vec![Resource::scalar(CPUS, 0.0)],
            }),
        }),
    )
    .await??;
    let quotas = bounded("GetQuota", op.get_quota(GetQuotaRequest {}))
        .await??
        .into_inner()
        .quotas;
    let ads = quotas
        .iter()
        .find(|q| q.role == "ads")
        .context("the zero limit of ads")?;
    assert_eq!(ads.limit, vec![Resource::scalar(CPUS, 0.0)]);
    // A reservation of the agent's cpus for eng.
    bounded(
        "Reserve",
        op.reserve(ReserveRequest {
            agent_id: agent.id.clone(),
            resources: vec![Resource {
                role: "eng".to_owned(),
                ..Resource::scalar(CPUS, 2.0)
            }],
        }),
    )
    .await??;
    let reservations = bounded(
        "ListReservations",
        op.list_reservations(ListReservationsRequest {}),
    )
    .await??
    .into_inner()
    .reservations;
    assert_eq!(reservations.len(), 1);
    assert!(reservations[0].dynamic);
    let roles = bounded("ListRoles", op.list_roles(ListRolesRequest {}))
        .await??
        .into_inner()
        .roles;
    let eng = roles.iter().find(|r| r.name == "eng").context("role eng")?;
    assert_eq!(eng.weight, 2.0);
    assert_eq!(eng.reserved.len(), 1);

    // A framework of role eng gets offers; deactivating the agent rescinds them.
    let mut fw = Framework::subscribe(
        &allocator,
        FrameworkInfo {
            name: "eng".to_owned(),
            roles: vec!["eng".to_owned()],
            ..FrameworkInfo::default()
        },
    )
    .await?;
    let offer = fw.offer().await?;
    assert_eq!(offer.allocation_role, "eng");
    bounded(
        "DeactivateAgent",
        op.deactivate_agent(DeactivateAgentRequest {
            agent_id: agent.id.clone(),
        }),
    )
    .await??;
    let rescinded = fw
        .wait_for("a rescind", |e| match e {
            event::Event::Rescind(r) => Some(r.offer_id),
            _ => None,
        })
        .await?;
    assert_eq!(rescinded, offer.id);
    let listed = bounded("ListAgents", op.list_agents(ListAgentsRequest {}))
        .await??
        .into_inner();
    assert_eq!(listed.deactivated, vec![agent.id.clone()]);
    bounded(
        "ReactivateAgent",
        op.reactivate_agent(ReactivateAgentRequest {
            agent_id: agent.id.clone(),
        }),
    )
    .await??;
    fw.offer().await?;
    let unknown = bounded(
        "DrainAgent",
        op.drain_agent(DrainAgentRequest {
            agent_id: "nope".to_owned(),
            grace_period_seconds: None,
        }),
    )
    .await?
    .expect_err("unknown agent");
    assert_eq!(unknown.code(), Code::NotFound);

    // Teardown by the operator, and the watch stream saw it all happen.
    bounded(
        "TeardownFramework",
        op.teardown_framework(TeardownFrameworkRequest {
            framework_id: fw.id.clone(),
        }),
    )
    .await??;
    let mut kinds = Vec::new();
    while !kinds.contains(&"framework_subscribed".to_owned()) {
        let e = bounded("a watch event", watch.message())
            .await??
            .context("watch ended")?;
        kinds.push(e.kind);
    }
    assert!(kinds.contains(&"agent_registered".to_owned()), "{kinds:?}");
    let mut ops = Operator(op);
    assert!(ops.frameworks().await?.is_empty());
    drop(agent);
    allocator.shutdown().await
}

#[tokio::test]
async fn usage_reports_are_served_carried_forward_and_go_with_their_stream() -> Result<()> {
    let allocator = Allocator::start().await?;
    let agent = FakeAgent::register(&allocator, 2.0, 1024.0).await?;
    let mut op = Operator::connect(&allocator).await?;
    let record = |task_id: &str, timestamp: f64, cores: f64| TaskUsage {
        task_id: task_id.to_owned(),
        framework_id: "fw".to_owned(),
        agent_id: agent.id.clone(),
        timestamp,
        interval_seconds: 1.0,
        cpu: Some(CpuUsage {
            user_seconds_total: 3.0,
            cores,
            ..CpuUsage::default()
        }),
        ..TaskUsage::default()
    };

    // A full report, then a delta: "busy" changed, "ends" ended, "idle" stands.
    agent
        .send(agent_message::Message::Usage(agent_message::Usage {
            tasks: vec![
                record("busy", 100.0, 0.5),
                record("ends", 100.0, 0.0),
                record("idle", 100.0, 0.0),
            ],
            delta: false,
            ended: vec![],
            timestamp: 100.0,
        }))
        .await?;
    agent
        .send(agent_message::Message::Usage(agent_message::Usage {
            tasks: vec![record("busy", 102.0, 0.25)],
            delta: true,
            ended: vec![agent_message::UsageTaskKey {
                framework_id: "fw".to_owned(),
                task_id: "ends".to_owned(),
            }],
            timestamp: 102.0,
        }))
        .await?;
    let usage = op
        .usage_until("the delta applied", |tasks| {
            tasks.len() == 2 && tasks.iter().all(|t| t.timestamp == 102.0)
        })
        .await?;
    let ids: Vec<&str> = usage.iter().map(|t| t.task_id.as_str()).collect();
    assert_eq!(ids, ["busy", "idle"]);
    let cores = |t: &TaskUsage| t.cpu.as_ref().map(|c| c.cores);
    assert_eq!(cores(&usage[0]), Some(0.25));
    let idle = &usage[1];
    assert_eq!(
        (idle.interval_seconds, cores(idle)),
        (2.0, Some(0.0)),
        "the record that stands is carried forward to the latest report"
    );
    assert_eq!(idle.cpu.as_ref().map(|c| c.user_seconds_total), Some(3.0));

    // GetState holds the same records; GetUsage filters.
    assert_eq!(op.state().await?.usage, usage);
    let one = op
        .usage(GetUsageRequest {
            task_id: "idle".to_owned(),
            ..GetUsageRequest::default()
        })
        .await?;
    assert_eq!(one, std::slice::from_ref(idle));

    // The agent's stream ends: its records go.
    drop(agent);
    op.usage_until("no records", <[TaskUsage]>::is_empty)
        .await?;
    assert!(op.state().await?.usage.is_empty());
    allocator.shutdown().await
}
