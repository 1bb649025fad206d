//! Who may do what in a Strata cluster.
//!
//! - [`acl`]: principals, the actions they may be allowed ([`acl::Action`], after Mesos' ACLs)
//!   and the policy that decides: everything is allowed when authentication is off
//!   ([`acl::Policy::Open`]); otherwise only what a rule of the ACL file grants (default deny).
//! - [`credentials`] (feature `tls`): bearer tokens and HTTP Basic secrets, stored as SHA-256
//!   hashes in a credentials file (`strata token create`).
//! - [`tls`] (feature `tls`): rustls configurations from PEM files, and the principal a client
//!   certificate names (its subject's common name).
//! - [`client`] (feature `tls`): what a client presents (CA, certificate, key, token) and its
//!   checks; the SDK makes gRPC channels from it.
//! - [`certs`] (feature `tls`): a small cluster's CA and certificates (`strata certs`).
//!
//! The allocator core uses [`acl`] alone (no crypto, no I/O); the binaries use the rest.

pub mod acl;
#[cfg(feature = "tls")]
pub mod certs;
#[cfg(feature = "tls")]
pub mod client;
#[cfg(feature = "tls")]
pub mod credentials;
#[cfg(feature = "tls")]
pub mod tls;

pub use acl::{Acls, Action, Denied, Policy};
