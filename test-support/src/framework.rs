//! A framework over a real Subscribe stream to a real allocator, without the SDK: the test (or a
//! benchmark) writes each call and reads each event itself.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use strata_proto::names::{CPUS, MEM};
use strata_proto::scheduler_service_client::SchedulerServiceClient;
use strata_proto::{
    Call, CommandInfo, Event, Filters, FrameworkInfo, Offer, Operation, Resource, TaskInfo,
    TaskStatus, call, event, operation,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::StreamOptions;
use crate::wait::bounded_for;

/// A framework over a real Subscribe stream.
#[derive(Debug)]
pub struct Framework {
    /// The calls it sends.
    pub tx: mpsc::Sender<Call>,
    /// The events it receives.
    pub rx: Streaming<Event>,
    /// Its id, from SUBSCRIBED.
    pub id: String,
    step: Duration,
}

impl Framework {
    /// Queues SUBSCRIBE and opens the stream on `channel`, without reading from it.
    pub async fn open_on(
        channel: Channel,
        info: FrameworkInfo,
        opts: StreamOptions,
    ) -> Result<(mpsc::Sender<Call>, Streaming<Event>)> {
        let mut client = SchedulerServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(opts.capacity);
        let subscribe = Call {
            framework_id: String::new(),
            call: Some(call::Call::Subscribe(call::Subscribe {
                framework_info: Some(info),
                suppressed_roles: Vec::new(),
            })),
        };
        bounded_for(opts.step, "queueing SUBSCRIBE", tx.send(subscribe)).await??;
        let response = bounded_for(
            opts.step,
            "Subscribe",
            client.subscribe(ReceiverStream::new(rx)),
        )
        .await??;
        Ok((tx, response.into_inner()))
    }

    /// Subscribes on `channel` and reads SUBSCRIBED.
    pub async fn subscribe_on(
        channel: Channel,
        info: FrameworkInfo,
        opts: StreamOptions,
    ) -> Result<Self> {
        let (tx, rx) = Self::open_on(channel, info, opts).await?;
        let mut fw = Self {
            tx,
            rx,
            id: String::new(),
            step: opts.step,
        };
        match fw.next().await? {
            event::Event::Subscribed(s) => fw.id = s.framework_id,
            other => bail!("expected SUBSCRIBED, got {other:?}"),
        }
        Ok(fw)
    }

    /// The next event other than HEARTBEAT.
    pub async fn next(&mut self) -> Result<event::Event> {
        loop {
            let event = bounded_for(self.step, "an event", self.rx.message())
                .await??
                .context("allocator ended the framework stream")?;
            match event.event.context("empty event")? {
                event::Event::Heartbeat(_) => continue,
                other => return Ok(other),
            }
        }
    }

    /// The next event `pick` accepts, skipping the others.
    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(event::Event) -> Option<T>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + self.step;
        loop {
            let event = tokio::time::timeout_at(deadline, self.next())
                .await
                .map_err(|_| anyhow!("timed out waiting for {what}"))??;
            if let Some(found) = pick(event) {
                return Ok(found);
            }
        }
    }

    /// The first offer of the next OFFERS event.
    pub async fn offer(&mut self) -> Result<Offer> {
        self.wait_for("an offer", |e| match e {
            event::Event::Offers(o) => o.offers.into_iter().next(),
            _ => None,
        })
        .await
    }

    /// The status of the next UPDATE event.
    pub async fn update(&mut self) -> Result<TaskStatus> {
        self.wait_for("an update", |e| match e {
            event::Event::Update(u) => u.status,
            _ => None,
        })
        .await
    }

    /// Sends `c` with this framework's id.
    pub async fn call(&self, c: call::Call) -> Result<()> {
        bounded_for(
            self.step,
            "framework send",
            self.tx.send(Call {
                framework_id: self.id.clone(),
                call: Some(c),
            }),
        )
        .await??;
        Ok(())
    }

    /// Accepts `offer` with `tasks`, refusing nothing of what is left.
    pub async fn launch(&self, offer: &Offer, tasks: Vec<TaskInfo>) -> Result<()> {
        self.call(call::Call::Accept(call::Accept {
            offer_ids: vec![offer.id.clone()],
            operations: vec![Operation {
                operation: Some(operation::Operation::Launch(operation::Launch { tasks })),
            }],
            filters: Some(Filters {
                refuse_seconds: Some(0.0),
            }),
        }))
        .await
    }
}

/// A `sleep 1` shell task asking for `cpus` and `mem`.
pub fn task(id: &str, cpus: f64, mem: f64) -> TaskInfo {
    TaskInfo {
        task_id: id.to_owned(),
        name: id.to_owned(),
        resources: vec![Resource::scalar(CPUS, cpus), Resource::scalar(MEM, mem)],
        command: Some(CommandInfo {
            shell: true,
            value: "sleep 1".to_owned(),
            ..CommandInfo::default()
        }),
        ..TaskInfo::default()
    }
}
