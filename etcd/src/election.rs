//! Leader election on one key, with fencing.
//!
//! A candidate creates the election key with its lease, in a transaction that succeeds only if
//! the key does not exist: the first one leads, and the revision at which it created the key
//! names its term. The others poll until the key is gone (its leader resigned, or its lease
//! expired because it died or lost etcd), then try again. Every write of the leader carries
//! [`Leadership::fence`]: a compare that the key still has that creation revision, so a
//! leader that lost its key (and perhaps does not know it yet) cannot change anything its
//! successor relies on.

use std::time::Duration;

use crate::pb::{RangeRequest, request_op, response_op};
use crate::{Client, Compare, EtcdError, RequestOp, created_at};

/// This candidate leads: the election key and the revision that created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    /// The election key.
    pub key: Vec<u8>,
    /// The revision at which this candidate created it: its term.
    pub revision: i64,
    /// The lease the key is attached to.
    pub lease: i64,
}

impl Leadership {
    /// The compare every write of this leader carries: the election key still exists with the
    /// revision this leader created it at.
    pub fn fence(&self) -> Compare {
        created_at(self.key.clone(), self.revision)
    }

    /// Gives leadership up at once (deletes the key if it is still this leader's).
    pub async fn resign(&self, client: &Client) -> Result<(), EtcdError> {
        client
            .txn(
                vec![self.fence()],
                vec![crate::delete_op(self.key.clone())],
                Vec::new(),
            )
            .await?;
        Ok(())
    }
}

/// Campaigns for `key` with `value` (what followers read as the leader's address) under
/// `lease` until this candidate leads. While another leads, calls `waiting` with its value
/// whenever that changes, and polls every `poll`.
pub async fn campaign(
    client: &Client,
    key: &[u8],
    value: &[u8],
    lease: i64,
    poll: Duration,
    mut waiting: impl FnMut(&[u8]),
) -> Result<Leadership, EtcdError> {
    let mut last_seen: Option<Vec<u8>> = None;
    loop {
        let create = RequestOp {
            request: Some(request_op::Request::RequestPut(crate::pb::PutRequest {
                key: key.to_vec(),
                value: value.to_vec(),
                lease,
            })),
        };
        let read = RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: key.to_vec(),
                ..RangeRequest::default()
            })),
        };
        let response = client
            .txn(vec![created_at(key.to_vec(), 0)], vec![create], vec![read])
            .await?;
        if response.succeeded {
            let revision = response.header.as_ref().map_or(0, |h| h.revision);
            tracing::info!(revision, "elected: leading");
            return Ok(Leadership {
                key: key.to_vec(),
                revision,
                lease,
            });
        }
        let holder = response
            .responses
            .into_iter()
            .find_map(|r| match r.response {
                Some(response_op::Response::ResponseRange(range)) => range.kvs.into_iter().next(),
                _ => None,
            });
        if let Some(holder) = holder
            && last_seen.as_deref() != Some(holder.value.as_slice())
        {
            waiting(&holder.value);
            last_seen = Some(holder.value);
        }
        tokio::time::sleep(poll).await;
    }
}

/// The current leader's value, if any leads.
pub async fn leader(client: &Client, key: &[u8]) -> Result<Option<Vec<u8>>, EtcdError> {
    Ok(client.get(key).await?.map(|kv| kv.value))
}
