//! The loop at a framework's edge, shared by strata-jobs and strata-services: it feeds the
//! core ([`Decide`]) the allocator's events, the control API's requests and a tick every
//! second; after each (or each burst of up to 256 events already waiting), it saves the core's
//! state (only when it changed) before answering and before carrying out the commands the core
//! made, so nothing is done that a restart would forget.

use std::future::Future;
use std::time::Duration;

use strata_framework::proto::TaskStatus;
use strata_framework::{Event, Framework};
use tokio::sync::{mpsc, oneshot};

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
    loop {
        let mut reply = None;
        tokio::select! {
            () = &mut shutdown => return Ok(Ended::Shutdown),
            event = events.recv() => match event {
                None => return Ok(Ended::Removed),
                Some(event) => {
                    core.event(event);
                    // A burst (a thousand updates of a deploy) is saved once.
                    for _ in 1..MAX_BATCH {
                        match events.try_recv() {
                            Ok(event) => core.event(event),
                            Err(_) => break,
                        }
                    }
                }
            },
            Some(request) = requests.recv() => {
                let answer = core.request(request.op);
                reply = Some((request.reply, answer));
            }
            _ = tick.tick() => core.tick(),
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
    }
}
