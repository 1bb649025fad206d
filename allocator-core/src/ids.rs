//! Identifier newtypes used by the allocator core.
//!
//! Agent, framework and offer ids are made by the core from a per-process prefix (a UUID
//! chosen at start) and a counter, Mesos style: frameworks `<prefix>-0000`, agents
//! `<prefix>-S0`, offers `<prefix>-O0`, so ids never repeat across allocator restarts.
//! Task ids are chosen by frameworks and are unique within one framework only, so a task is
//! identified by [`TaskKey`] (framework id, task id). [`ConnId`] names one gRPC stream; it
//! is chosen by the edge and is opaque to the core.

use std::fmt;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub String);

        impl $name {
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
    };
}

string_id!(
    /// An agent's id, assigned at its first registration and kept across agent restarts.
    AgentId
);
string_id!(
    /// A framework's id, assigned at its first subscription.
    FrameworkId
);
string_id!(
    /// A task's id, chosen by its framework and unique within it.
    TaskId
);

/// A task's identity across the cluster: (framework, task id).
pub type TaskKey = (FrameworkId, TaskId);

/// An offer's number, unique for the allocator's life; an offer is used at most once. On
/// the wire it is `<prefix>-O<number>` (the core parses and makes that form).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OfferId(pub u64);

impl fmt::Display for OfferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "O{}", self.0)
    }
}

/// One agent or framework stream, numbered by the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn-{}", self.0)
    }
}
