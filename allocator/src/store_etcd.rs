//! The registry in etcd, for several allocator replicas of one cluster (`--etcd`): the
//! leader reads it when it takes over and writes every batch of [`RegistryOp`]s fenced by
//! its [`Leadership`], so that a replica that lost leadership (and may not know it yet)
//! cannot change what its successor relies on.
//!
//! Layout, under `/strata/<cluster>/registry/`: `agents/<id>`, `frameworks/<id>`,
//! `weights/<role>`, `quotas/<role>` (roles may hold `/`: the key's rest is the role) and
//! `tasks/<number>` (the terminal-task history, numbers zero-padded to 20 digits so keys
//! sort as numbers), each a JSON document as in the redb store. A batch is written in
//! transactions of at most [`OPS_PER_TXN`] operations (etcd refuses more than 128 by
//! default; a later op on a key already in the transaction starts the next one, as etcd
//! refuses a key twice), each fenced; a batch split so is not atomic as a whole, but each
//! record is.
//!
//! [`Store`] is synchronous (the actor calls it between events), the etcd client async: the
//! store runs its client on a thread and runtime of its own and waits for each answer, so it
//! works under any runtime the caller has.

use std::sync::mpsc;
use std::time::Duration;

use strata_allocator_core::registry::{Registry, RegistryOp};
use strata_etcd::LeaseGuard;
use strata_etcd::election::Leadership;
use strata_etcd::{Client, RequestOp, delete_op, put_op};
use tokio::sync::watch;
use tonic::transport::ClientTlsConfig;

use crate::store::{Store, StoreError, json};

/// The most operations in one etcd transaction (etcd's default limit is 128).
pub const OPS_PER_TXN: usize = 100;

/// The most bytes of keys and values in one transaction (etcd's default request limit is
/// 1.5 MiB).
const BYTES_PER_TXN: usize = 1024 * 1024;

/// The registry of one cluster in etcd; see the module documentation.
pub struct EtcdStore {
    jobs: mpsc::Sender<Job>,
    cluster: String,
    deposed: watch::Receiver<Option<String>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

enum Job {
    Load(mpsc::Sender<Result<Registry, StoreError>>),
    Apply(Vec<RegistryOp>, mpsc::Sender<Result<(), StoreError>>),
}

/// Whether `name` may name a cluster: 1 to 64 ASCII letters, digits, `-`, `_` or `.` (it
/// becomes part of etcd keys).
pub fn valid_cluster_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name != "."
        && name != ".."
}

/// The key prefix of everything cluster `cluster` keeps in etcd.
pub fn cluster_prefix(cluster: &str) -> String {
    format!("/strata/{cluster}/")
}

/// The election key of cluster `cluster`.
pub fn leader_key(cluster: &str) -> String {
    format!("{}leader", cluster_prefix(cluster))
}

impl EtcdStore {
    /// The registry of `cluster` in the etcd cluster at `endpoints` (over TLS with `tls`, for
    /// `https://` ones), each call bounded by `timeout`; writes are fenced by `leadership`
    /// (none: unfenced, for a single replica or tests) and, with `lease`, given up once the
    /// lease is no longer surely held: a leader cut off from etcd then stops within its lease,
    /// not after the call timeout.
    pub fn open(
        endpoints: &[String],
        tls: Option<&ClientTlsConfig>,
        cluster: &str,
        leadership: Option<Leadership>,
        lease: Option<LeaseGuard>,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        if !valid_cluster_name(cluster) {
            return Err(StoreError::Etcd {
                cluster: cluster.to_owned(),
                why: "a cluster name is 1 to 64 letters, digits, '-', '_' or '.'".to_owned(),
            });
        }
        let (jobs, rx) = mpsc::channel::<Job>();
        let (deposed_tx, deposed) = watch::channel(None);
        let (ready_tx, ready_rx) = mpsc::channel();
        let endpoints = endpoints.to_vec();
        let tls = tls.cloned();
        let name = cluster.to_owned();
        std::thread::Builder::new()
            .name("etcd-store".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(StoreError::Etcd {
                            cluster: name,
                            why: format!("cannot start the etcd client's runtime: {e}"),
                        }));
                        return;
                    }
                };
                let client = match runtime
                    .block_on(async { Client::with_tls(&endpoints, tls.as_ref(), timeout) })
                {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(StoreError::Etcd {
                            cluster: name,
                            why: e.to_string(),
                        }));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let worker = Worker {
                    client,
                    prefix: format!("{}registry/", cluster_prefix(&name)),
                    cluster: name,
                    leadership,
                    lease,
                    deposed: deposed_tx,
                };
                while let Ok(job) = rx.recv() {
                    match job {
                        Job::Load(reply) => {
                            let _ = reply.send(runtime.block_on(worker.load()));
                        }
                        Job::Apply(ops, reply) => {
                            let _ = reply.send(runtime.block_on(worker.apply(&ops)));
                        }
                    }
                }
            })
            .map_err(|e| StoreError::Etcd {
                cluster: cluster.to_owned(),
                why: format!("cannot start the etcd client's thread: {e}"),
            })?;
        ready_rx.recv().map_err(|_| StoreError::Etcd {
            cluster: cluster.to_owned(),
            why: "the etcd client's thread ended".to_owned(),
        })??;
        Ok(Self {
            jobs,
            cluster: cluster.to_owned(),
            deposed,
        })
    }

    /// `Some(why)` once a fenced write was refused: another replica leads now.
    pub fn deposed(&self) -> watch::Receiver<Option<String>> {
        self.deposed.clone()
    }

    fn gone(&self) -> StoreError {
        StoreError::Etcd {
            cluster: self.cluster.clone(),
            why: "the etcd client's thread ended".to_owned(),
        }
    }
}

impl Store for EtcdStore {
    fn load(&self) -> Result<Registry, StoreError> {
        let (tx, rx) = mpsc::channel();
        self.jobs.send(Job::Load(tx)).map_err(|_| self.gone())?;
        rx.recv().map_err(|_| self.gone())?
    }

    fn apply(&mut self, ops: &[RegistryOp]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let (tx, rx) = mpsc::channel();
        self.jobs
            .send(Job::Apply(ops.to_vec(), tx))
            .map_err(|_| self.gone())?;
        rx.recv().map_err(|_| self.gone())?
    }
}

/// The store's side on its own thread.
struct Worker {
    client: Client,
    cluster: String,
    /// `/strata/<cluster>/registry/`.
    prefix: String,
    leadership: Option<Leadership>,
    /// The leader's lease: a write still waiting on etcd when it is no longer surely held is
    /// given up.
    lease: Option<LeaseGuard>,
    deposed: watch::Sender<Option<String>>,
}

impl Worker {
    fn error(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Etcd {
            cluster: self.cluster.clone(),
            why: e.to_string(),
        }
    }

    async fn table<T: serde::de::DeserializeOwned>(
        &self,
        table: &str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let prefix = format!("{}{table}/", self.prefix);
        let mut out = Vec::new();
        for kv in self
            .client
            .list_prefix(prefix.as_bytes())
            .await
            .map_err(|e| self.error(e))?
        {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            let name = key[prefix.len()..].to_owned();
            let value = serde_json::from_slice(&kv.value).map_err(|e| StoreError::EtcdCorrupt {
                cluster: self.cluster.clone(),
                key: key.clone(),
                why: e.to_string(),
            })?;
            out.push((name, value));
        }
        Ok(out)
    }

    async fn load(&self) -> Result<Registry, StoreError> {
        let mut terminal_tasks = std::collections::BTreeMap::new();
        for (number, record) in self.table("tasks").await? {
            let n: u64 = number.parse().map_err(|_| StoreError::EtcdCorrupt {
                cluster: self.cluster.clone(),
                key: format!("{}tasks/{number}", self.prefix),
                why: "the key's last part is not a number".to_owned(),
            })?;
            terminal_tasks.insert(n, record);
        }
        Ok(Registry {
            agents: self.table("agents").await?.into_iter().collect(),
            frameworks: self.table("frameworks").await?.into_iter().collect(),
            weights: self.table("weights").await?.into_iter().collect(),
            quotas: self.table("quotas").await?.into_iter().collect(),
            terminal_tasks,
        })
    }

    /// The etcd operation of `op`.
    fn op(&self, op: &RegistryOp) -> RequestOp {
        let key = |table: &str, name: &str| format!("{}{table}/{name}", self.prefix).into_bytes();
        match op {
            RegistryOp::PutAgent(id, r) => put_op(key("agents", id), json(r)),
            RegistryOp::PutFramework(id, r) => put_op(key("frameworks", id), json(r)),
            RegistryOp::RemoveFramework(id) => delete_op(key("frameworks", id)),
            RegistryOp::PutWeight(role, w) if *w == 1.0 => delete_op(key("weights", role)),
            RegistryOp::PutWeight(role, w) => put_op(key("weights", role), json(w)),
            RegistryOp::PutQuota(role, q) => put_op(key("quotas", role), json(q)),
            RegistryOp::RemoveQuota(role) => delete_op(key("quotas", role)),
            RegistryOp::PutTerminalTask(n, r) => put_op(key("tasks", &format!("{n:020}")), json(r)),
            RegistryOp::RemoveTerminalTask(n) => delete_op(key("tasks", &format!("{n:020}"))),
        }
    }

    async fn apply(&self, ops: &[RegistryOp]) -> Result<(), StoreError> {
        let mut batch = Vec::new();
        let mut keys = std::collections::HashSet::new();
        let mut bytes = 0;
        for op in ops {
            let op = self.op(op);
            let (key, size) = key_and_size(&op);
            // etcd refuses a transaction naming a key twice: a later op on the same key starts
            // the next one (so ops still apply in order).
            if !batch.is_empty()
                && (batch.len() >= OPS_PER_TXN
                    || bytes + size > BYTES_PER_TXN
                    || keys.contains(&key))
            {
                self.write(std::mem::take(&mut batch)).await?;
                keys.clear();
                bytes = 0;
            }
            bytes += size;
            keys.insert(key);
            batch.push(op);
        }
        if !batch.is_empty() {
            self.write(batch).await?;
        }
        Ok(())
    }

    /// One fenced transaction.
    async fn write(&self, ops: Vec<RequestOp>) -> Result<(), StoreError> {
        let fence: Vec<_> = self.leadership.iter().map(Leadership::fence).collect();
        let txn = self.client.txn(fence, ops, Vec::new());
        let answer = match &self.lease {
            Some(lease) => tokio::select! {
                answer = txn => answer,
                () = lease.expired() => {
                    return Err(self.error(
                        "this replica's etcd lease is no longer surely held (no refresh \
                         answered for 9/10 of its ttl) and the registry write was still \
                         waiting on etcd: given up, this replica stops leading (being fenced, \
                         the write lands only if the lease still held in etcd)",
                    ));
                }
            },
            None => txn.await,
        };
        let response = answer.map_err(|e| self.error(e))?;
        if response.succeeded {
            return Ok(());
        }
        let why = format!(
            "another allocator leads cluster {} now (this one's leader key is gone or was \
             replaced): its registry write was refused",
            self.cluster
        );
        tracing::error!(cluster = %self.cluster, "{why}");
        let _ = self.deposed.send(Some(why.clone()));
        Err(StoreError::Fenced {
            cluster: self.cluster.clone(),
        })
    }
}

/// The key `op` writes, and the bytes of its key and value.
fn key_and_size(op: &RequestOp) -> (Vec<u8>, usize) {
    use strata_etcd::pb::request_op::Request;
    match &op.request {
        Some(Request::RequestPut(p)) => (p.key.clone(), p.key.len() + p.value.len()),
        Some(Request::RequestDeleteRange(d)) => (d.key.clone(), d.key.len()),
        _ => (Vec::new(), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_are_bounded_and_safe_in_keys() {
        for ok in ["strata", "prod-1", "a.b_c", &"x".repeat(64)] {
            assert!(valid_cluster_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(65), "ü"] {
            assert!(!valid_cluster_name(bad), "{bad:?}");
        }
        assert_eq!(leader_key("prod"), "/strata/prod/leader");
    }
}
