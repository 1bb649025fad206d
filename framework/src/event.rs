//! The events a framework receives, converted from the wire `strata.v1.Event`, plus the
//! connection events the SDK itself produces (`Disconnected`, and `Subscribed` after a
//! reconnect).

use strata_proto::{Offer, TaskStatus, event};

/// What happened, delivered in order on the receiver [`FrameworkBuilder::subscribe`] returns.
///
/// The stream starts with `Subscribed`. After a broken stream the SDK sends `Disconnected`,
/// re-subscribes with the same framework id and sends `Subscribed` again. When the receiver yields
/// `None` the framework has stopped (torn down, or removed by the allocator: an `Error` event
/// explaining why comes first).
///
/// [`FrameworkBuilder::subscribe`]: crate::FrameworkBuilder::subscribe
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The allocator accepted the subscription (first event, and again after each reconnect).
    Subscribed {
        /// The framework's id, the same across reconnects.
        framework_id: String,
    },
    /// Resources offered to this framework; accept (launch into) or decline each one.
    Offers(Vec<Offer>),
    /// An outstanding offer is no longer valid (its agent went away, or the allocator took it back).
    Rescind {
        /// The offer that is gone.
        offer_id: String,
    },
    /// A task changed state. With auto-acknowledgement on (the default) the SDK acknowledges
    /// updates that carry a uuid right after handing them over here.
    Update(TaskStatus),
    /// An agent was lost; its tasks are reported LOST or UNREACHABLE separately.
    Failure {
        /// The agent that was lost.
        agent_id: String,
    },
    /// A call was rejected, or the framework was removed; the message says what was wrong.
    Error {
        /// The allocator's (or the SDK's) explanation.
        message: String,
    },
    /// The allocator is alive.
    Heartbeat,
    /// The stream to the allocator broke; the SDK is reconnecting. Calls fail with
    /// [`Error::NotConnected`](crate::Error::NotConnected) until the next `Subscribed`.
    Disconnected {
        /// Why the stream broke.
        reason: String,
    },
}

impl Event {
    /// Converts a wire event; `None` for an empty event (nothing to deliver).
    pub fn from_proto(event: strata_proto::Event) -> Option<Self> {
        Some(match event.event? {
            event::Event::Subscribed(s) => Self::Subscribed {
                framework_id: s.framework_id,
            },
            event::Event::Offers(o) => Self::Offers(o.offers),
            event::Event::Rescind(r) => Self::Rescind {
                offer_id: r.offer_id,
            },
            event::Event::Update(u) => Self::Update(u.status.unwrap_or_default()),
            event::Event::Failure(f) => Self::Failure {
                agent_id: f.agent_id,
            },
            event::Event::Error(e) => Self::Error { message: e.message },
            event::Event::Heartbeat(_) => Self::Heartbeat,
        })
    }

    /// The status of an `Update`, if this is one.
    pub fn as_update(&self) -> Option<&TaskStatus> {
        match self {
            Self::Update(status) => Some(status),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::TaskState;

    #[test]
    fn wire_events_convert() {
        let update = strata_proto::Event {
            event: Some(event::Event::Update(event::Update {
                status: Some(TaskStatus {
                    task_id: "t1".into(),
                    state: TaskState::Running as i32,
                    ..TaskStatus::default()
                }),
            })),
        };
        let converted = Event::from_proto(update).expect("an update");
        assert_eq!(
            converted.as_update().map(|s| s.task_id.as_str()),
            Some("t1")
        );
        assert_eq!(
            converted.as_update().map(|s| s.state()),
            Some(TaskState::Running)
        );

        let subscribed = strata_proto::Event {
            event: Some(event::Event::Subscribed(event::Subscribed {
                framework_id: "f-1".into(),
                heartbeat_interval_seconds: 15.0,
                leader_epoch: 0,
            })),
        };
        assert_eq!(
            Event::from_proto(subscribed),
            Some(Event::Subscribed {
                framework_id: "f-1".into()
            })
        );
        assert_eq!(
            Event::from_proto(strata_proto::Event {
                event: Some(event::Event::Heartbeat(event::Heartbeat {}))
            }),
            Some(Event::Heartbeat)
        );
        assert_eq!(Event::from_proto(strata_proto::Event { event: None }), None);
    }
}
