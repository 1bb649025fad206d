//! Where the registry is kept between allocator runs: the [`Store`] trait, an embedded
//! [`RedbStore`] (the default when the allocator has a work dir) and a [`MemoryStore`]
//! (nothing survives a restart). A replicated backend (etcd) implements the same trait.
//!
//! Each record is a JSON document under its key in one redb table per kind (`agents`,
//! `frameworks`, `weights`, `quotas`; `terminal_tasks`, the bounded history of ended
//! tasks, under their numbers); a batch of [`RegistryOp`]s is one write transaction,
//! so a crash keeps either all of a batch or none of it.
//!
//! Invariants: [`Store::load`] returns what the applied ops make, in order; a file that is
//! not a readable registry gives [`StoreError::Corrupt`] naming the file and what to do.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable as _, TableDefinition, TableHandle as _};
use strata_allocator_core::registry::{Registry, RegistryOp, TaskRecord};

const AGENTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("agents");
const FRAMEWORKS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("frameworks");
const WEIGHTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("weights");
const QUOTAS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("quotas");
const TERMINAL_TASKS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("terminal_tasks");

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be opened or created.
    #[error("cannot open the allocator's registry store {path}: {source}")]
    Open {
        /// The store file.
        path: PathBuf,
        /// What failed.
        source: Box<redb::Error>,
    },
    /// The file is not a readable registry.
    #[error(
        "the allocator's registry store {path} is corrupt ({why}): move it away to start with \
         an empty registry (framework ids, weights, quota and dynamic reservations are then \
         lost), or restore it from a backup"
    )]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Another allocator holds the store.
    #[error(
        "the allocator's registry store {path} is in use by another allocator: stop it, or \
         give this one another --store or --work-dir"
    )]
    InUse {
        /// The store file.
        path: PathBuf,
    },
    /// A read or write failed.
    #[error("the allocator's registry store {path} failed: {source}")]
    Io {
        /// The store file.
        path: PathBuf,
        /// What failed.
        source: Box<redb::Error>,
    },
    /// The registry in etcd could not be read or written (etcd unreachable, or refused).
    #[error("the registry of cluster {cluster} in etcd: {why}")]
    Etcd {
        /// The cluster (`--cluster`).
        cluster: String,
        /// What failed.
        why: String,
    },
    /// A record in etcd is not readable.
    #[error(
        "the registry of cluster {cluster} in etcd has an unreadable record {key} ({why}): \
         delete that key to start without it, or restore etcd from a backup"
    )]
    EtcdCorrupt {
        /// The cluster.
        cluster: String,
        /// The key.
        key: String,
        /// What is wrong.
        why: String,
    },
    /// A fenced write was refused: another replica leads.
    #[error(
        "this allocator no longer leads cluster {cluster}: another replica does, and the \
         registry write was refused"
    )]
    Fenced {
        /// The cluster.
        cluster: String,
    },
}

/// Keeps the registry; see the module documentation.
pub trait Store: Send + std::fmt::Debug {
    /// Everything kept.
    fn load(&self) -> Result<Registry, StoreError>;
    /// Applies a batch of changes atomically.
    fn apply(&mut self, ops: &[RegistryOp]) -> Result<(), StoreError>;
}

/// A store that keeps nothing across restarts.
#[derive(Debug, Default)]
pub struct MemoryStore {
    registry: Registry,
}

impl Store for MemoryStore {
    fn load(&self) -> Result<Registry, StoreError> {
        Ok(self.registry.clone())
    }

    fn apply(&mut self, ops: &[RegistryOp]) -> Result<(), StoreError> {
        for op in ops {
            self.registry.apply(op);
        }
        Ok(())
    }
}

/// The registry in an embedded redb file.
pub struct RedbStore {
    path: PathBuf,
    db: Database,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish()
    }
}

fn is_corruption(e: &redb::Error) -> bool {
    match e {
        redb::Error::Corrupted(_)
        | redb::Error::UpgradeRequired(_)
        | redb::Error::TypeDefinitionChanged { .. } => true,
        // A file that is not a redb file at all (bad magic number).
        redb::Error::Io(io) => io.kind() == std::io::ErrorKind::InvalidData,
        _ => false,
    }
}

impl RedbStore {
    /// Opens the store at `path`, creating it (and its directory) when absent, and checks
    /// that it can be read.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let path = path.to_owned();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                path: path.clone(),
                source: Box::new(redb::Error::Io(e)),
            })?;
        }
        let db = Database::create(&path).map_err(|e| {
            let e = redb::Error::from(e);
            if matches!(e, redb::Error::DatabaseAlreadyOpen) {
                StoreError::InUse { path: path.clone() }
            } else if is_corruption(&e) {
                StoreError::Corrupt {
                    path: path.clone(),
                    why: e.to_string(),
                }
            } else {
                StoreError::Open {
                    path: path.clone(),
                    source: Box::new(e),
                }
            }
        })?;
        let store = Self { path, db };
        // Create the tables, so reads never meet a missing one.
        store.write(|_| Ok(()))?;
        store.load()?;
        Ok(store)
    }

    fn io(&self, e: impl Into<redb::Error>) -> StoreError {
        let e = e.into();
        if is_corruption(&e) {
            StoreError::Corrupt {
                path: self.path.clone(),
                why: e.to_string(),
            }
        } else {
            StoreError::Io {
                path: self.path.clone(),
                source: Box::new(e),
            }
        }
    }

    fn write(
        &self,
        body: impl FnOnce(&redb::WriteTransaction) -> Result<(), Box<redb::Error>>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.io(e))?;
        for table in [AGENTS, FRAMEWORKS, WEIGHTS, QUOTAS] {
            txn.open_table(table).map_err(|e| self.io(e))?;
        }
        txn.open_table(TERMINAL_TASKS).map_err(|e| self.io(e))?;
        body(&txn).map_err(|e| self.io(*e))?;
        txn.commit().map_err(|e| self.io(e))
    }

    fn read_table<T: serde::de::DeserializeOwned>(
        &self,
        txn: &redb::ReadTransaction,
        table: TableDefinition<'_, &str, &[u8]>,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let t = txn.open_table(table).map_err(|e| self.io(e))?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(|e| self.io(e))? {
            let (k, v) = entry.map_err(|e| self.io(e))?;
            let key = k.value().to_owned();
            let value = serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                why: format!("record {key:?} of table {}: {e}", table.name()),
            })?;
            out.push((key, value));
        }
        Ok(out)
    }
}

impl RedbStore {
    fn read_terminal_tasks(
        &self,
        txn: &redb::ReadTransaction,
    ) -> Result<std::collections::BTreeMap<u64, TaskRecord>, StoreError> {
        let t = txn.open_table(TERMINAL_TASKS).map_err(|e| self.io(e))?;
        let mut out = std::collections::BTreeMap::new();
        for entry in t.iter().map_err(|e| self.io(e))? {
            let (k, v) = entry.map_err(|e| self.io(e))?;
            let key = k.value();
            let value = serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                why: format!("record {key} of table {}: {e}", TERMINAL_TASKS.name()),
            })?;
            out.insert(key, value);
        }
        Ok(out)
    }
}

/// Boxes a redb error (they are large).
fn boxed(e: impl Into<redb::Error>) -> Box<redb::Error> {
    Box::new(e.into())
}

/// A registry record as stored (JSON), by every store.
pub(crate) fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("registry records serialize")
}

impl Store for RedbStore {
    fn load(&self) -> Result<Registry, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.io(e))?;
        Ok(Registry {
            agents: self.read_table(&txn, AGENTS)?.into_iter().collect(),
            frameworks: self.read_table(&txn, FRAMEWORKS)?.into_iter().collect(),
            weights: self.read_table(&txn, WEIGHTS)?.into_iter().collect(),
            quotas: self.read_table(&txn, QUOTAS)?.into_iter().collect(),
            terminal_tasks: self.read_terminal_tasks(&txn)?,
        })
    }

    fn apply(&mut self, ops: &[RegistryOp]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.write(|txn| {
            for op in ops {
                match op {
                    RegistryOp::PutAgent(id, r) => {
                        txn.open_table(AGENTS)
                            .map_err(boxed)?
                            .insert(id.as_str(), json(r).as_slice())
                            .map_err(boxed)?;
                    }
                    RegistryOp::PutFramework(id, r) => {
                        txn.open_table(FRAMEWORKS)
                            .map_err(boxed)?
                            .insert(id.as_str(), json(r).as_slice())
                            .map_err(boxed)?;
                    }
                    RegistryOp::RemoveFramework(id) => {
                        txn.open_table(FRAMEWORKS)
                            .map_err(boxed)?
                            .remove(id.as_str())
                            .map_err(boxed)?;
                    }
                    RegistryOp::PutWeight(role, w) => {
                        let mut t = txn.open_table(WEIGHTS).map_err(boxed)?;
                        if *w == 1.0 {
                            t.remove(role.as_str()).map_err(boxed)?;
                        } else {
                            t.insert(role.as_str(), json(w).as_slice()).map_err(boxed)?;
                        }
                    }
                    RegistryOp::PutQuota(role, q) => {
                        txn.open_table(QUOTAS)
                            .map_err(boxed)?
                            .insert(role.as_str(), json(q).as_slice())
                            .map_err(boxed)?;
                    }
                    RegistryOp::RemoveQuota(role) => {
                        txn.open_table(QUOTAS)
                            .map_err(boxed)?
                            .remove(role.as_str())
                            .map_err(boxed)?;
                    }
                    RegistryOp::PutTerminalTask(seq, r) => {
                        txn.open_table(TERMINAL_TASKS)
                            .map_err(boxed)?
                            .insert(*seq, json(r).as_slice())
                            .map_err(boxed)?;
                    }
                    RegistryOp::RemoveTerminalTask(seq) => {
                        txn.open_table(TERMINAL_TASKS)
                            .map_err(boxed)?
                            .remove(*seq)
                            .map_err(boxed)?;
                    }
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_allocator_core::registry::{
        AgentRecord, FrameworkRecord, QuotaRecord, StoredResource, TaskRecord,
    };

    fn ops() -> Vec<RegistryOp> {
        let cpus = |v: f64, role: &str| StoredResource {
            name: "cpus".into(),
            role: role.into(),
            scalar: Some(v),
            ranges: vec![],
            set: vec![],
        };
        vec![
            RegistryOp::PutAgent(
                "a1".into(),
                AgentRecord {
                    hostname: "h1".into(),
                    dynamic: vec![cpus(2.0, "eng")],
                    mode: "deactivated".into(),
                    principal: "agent-1".into(),
                },
            ),
            RegistryOp::PutFramework(
                "f1".into(),
                FrameworkRecord {
                    name: "one".into(),
                    roles: vec!["eng".into()],
                    failover_timeout_seconds: 60.0,
                    partition_aware: true,
                    registered_at: 1.0,
                    disconnected_at: Some(2.0),
                    principal: "batch".into(),
                },
            ),
            RegistryOp::PutFramework("f2".into(), FrameworkRecord::default()),
            RegistryOp::RemoveFramework("f2".into()),
            RegistryOp::PutWeight("eng".into(), 2.0),
            RegistryOp::PutWeight("ads".into(), 3.0),
            RegistryOp::PutWeight("ads".into(), 1.0),
            RegistryOp::PutQuota(
                "eng".into(),
                QuotaRecord {
                    guarantee: vec![cpus(10.0, "")],
                    limit: vec![cpus(20.0, "")],
                },
            ),
            RegistryOp::PutQuota("ads".into(), QuotaRecord::default()),
            RegistryOp::RemoveQuota("ads".into()),
            RegistryOp::PutTerminalTask(
                7,
                TaskRecord {
                    framework_id: "f1".into(),
                    task_id: "t1".into(),
                    name: "one task".into(),
                    agent_id: "a1".into(),
                    role: "eng".into(),
                    resources: vec![cpus(0.5, "")],
                    state: "TASK_FAILED".into(),
                    reason: "REASON_COMMAND_EXECUTOR_FAILED".into(),
                    message: "exited with 3".into(),
                    exit_code: Some(3),
                    unreachable: false,
                    launched_at: 10.0,
                    updated_at: 12.5,
                },
            ),
            RegistryOp::PutTerminalTask(8, TaskRecord::default()),
            RegistryOp::PutTerminalTask(9, TaskRecord::default()),
            RegistryOp::RemoveTerminalTask(8),
        ]
    }

    /// Against a real etcd (`cargo xtask setup` installs it): what the ops make, read back
    /// by a fresh store; a batch larger than one transaction; roles holding `/`.
    #[test]
    fn etcd_keeps_what_memory_keeps_in_a_real_etcd() {
        use crate::store_etcd::{EtcdStore, OPS_PER_TXN};
        let etcd = strata_test_support::etcd::Etcd::start().expect("etcd");
        let endpoints = [etcd.url.clone()];
        let timeout = std::time::Duration::from_secs(5);
        let mut memory = MemoryStore::default();
        let mut store =
            EtcdStore::open(&endpoints, None, "test", None, None, timeout).expect("open");
        assert_eq!(store.load().expect("load"), Registry::default());
        let mut all = ops();
        // Three transactions' worth more, and a hierarchical role.
        all.extend(
            (0..2 * OPS_PER_TXN as u64 + 7)
                .map(|n| RegistryOp::PutTerminalTask(100 + n, TaskRecord::default())),
        );
        all.push(RegistryOp::PutWeight("eng/ml".into(), 4.0));
        memory.apply(&all).expect("memory");
        store.apply(&all[..3]).expect("apply");
        store.apply(&all[3..]).expect("apply");
        // Another cluster's registry is apart.
        let other = EtcdStore::open(&endpoints, None, "other", None, None, timeout).expect("open");
        assert_eq!(other.load().expect("load"), Registry::default());
        let fresh = EtcdStore::open(&endpoints, None, "test", None, None, timeout).expect("reopen");
        let loaded = fresh.load().expect("load");
        assert_eq!(loaded, memory.load().expect("memory"));
        assert_eq!(loaded.weights["eng/ml"], 4.0);
        assert_eq!(loaded.terminal_tasks.len(), 2 + 2 * OPS_PER_TXN + 7);
        assert_eq!(loaded.terminal_tasks[&7].exit_code, Some(3));
    }

    /// A store whose leadership is gone writes nothing and says it was deposed.
    #[test]
    fn etcd_writes_of_a_deposed_leader_are_refused() {
        use crate::store_etcd::{EtcdStore, leader_key};
        let etcd = strata_test_support::etcd::Etcd::start().expect("etcd");
        let endpoints = [etcd.url.clone()];
        let timeout = std::time::Duration::from_secs(5);
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let key = leader_key("test").into_bytes();
        let poll = std::time::Duration::from_millis(100);
        let (client, a) = runtime.block_on(async {
            let client = strata_etcd::Client::new(&endpoints, timeout).expect("client");
            let lease = client
                .grant(std::time::Duration::from_secs(30))
                .await
                .expect("lease");
            let a = strata_etcd::election::campaign(&client, &key, b"a", lease, poll, |_| {})
                .await
                .expect("a leads");
            (client, a)
        });
        let mut store = EtcdStore::open(&endpoints, None, "test", Some(a.clone()), None, timeout)
            .expect("open");
        let deposed = store.deposed();
        store.apply(&ops()[..1]).expect("the leader writes");
        // A resigns and B is elected: A's store, still open, is refused.
        runtime.block_on(async {
            a.resign(&client).await.expect("resign");
            let lease = client
                .grant(std::time::Duration::from_secs(30))
                .await
                .expect("lease");
            strata_etcd::election::campaign(&client, &key, b"b", lease, poll, |_| {})
                .await
                .expect("b leads")
        });
        let err = store.apply(&ops()[1..2]).unwrap_err();
        assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
        assert!(deposed.borrow().is_some());
        let loaded = store.load().expect("load");
        assert_eq!(loaded.agents.len(), 1);
        assert!(
            loaded.frameworks.is_empty(),
            "a deposed leader's write landed"
        );
    }

    /// A leader's registry write that waits on an etcd which stopped answering is given up
    /// once its lease is no longer surely held, long before the call timeout: a leader cut off
    /// from etcd stops within its lease.
    #[test]
    fn etcd_a_write_waiting_on_etcd_is_given_up_when_the_lease_runs_out() {
        use crate::store_etcd::EtcdStore;
        let etcd = strata_test_support::etcd::Etcd::start().expect("etcd");
        let endpoints = [etcd.url.clone()];
        let call_timeout = std::time::Duration::from_secs(60);
        let lease = strata_etcd::LeaseGuard::granted_now(std::time::Duration::from_secs(3));
        let mut store = EtcdStore::open(
            &endpoints,
            None,
            "test",
            None,
            Some(lease.clone()),
            call_timeout,
        )
        .expect("open");
        store
            .apply(&ops()[..1])
            .expect("written while the lease holds");
        let signal = |sig: &str| {
            let status = std::process::Command::new("kill")
                .args([sig, &etcd.pid().to_string()])
                .status()
                .expect("kill");
            assert!(status.success(), "kill {sig}");
        };
        signal("-STOP");
        let started = std::time::Instant::now();
        let err = store.apply(&ops()[1..2]).unwrap_err();
        let waited = started.elapsed();
        signal("-CONT");
        assert!(err.to_string().contains("no longer surely held"), "{err}");
        assert!(!lease.holds());
        assert!(
            waited < call_timeout / 4,
            "the write waited {waited:?}, as long as the call timeout"
        );
    }

    #[test]
    fn redb_keeps_what_memory_keeps_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("registry.redb");
        let mut memory = MemoryStore::default();
        memory.apply(&ops()).expect("memory");
        {
            let mut store = RedbStore::open(&path).expect("open");
            assert_eq!(store.load().expect("load"), Registry::default());
            store.apply(&ops()[..3]).expect("apply");
            store.apply(&ops()[3..]).expect("apply");
            // A second allocator on the same file is refused while this one holds it.
            let err = RedbStore::open(&path).unwrap_err();
            assert!(matches!(err, StoreError::InUse { .. }), "{err}");
        }
        let store = RedbStore::open(&path).expect("reopen");
        let loaded = store.load().expect("load");
        assert_eq!(loaded, memory.load().expect("memory"));
        assert_eq!(loaded.frameworks.len(), 1);
        assert_eq!(loaded.weights.len(), 1);
        assert_eq!(loaded.quotas.len(), 1);
        assert_eq!(
            loaded.terminal_tasks.keys().copied().collect::<Vec<_>>(),
            vec![7, 9],
            "the terminal-task history survives a reopen, in order"
        );
        assert_eq!(loaded.terminal_tasks[&7].exit_code, Some(3));
    }

    #[test]
    fn a_corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("registry.redb");
        std::fs::write(&path, vec![0x5a; 64 * 1024]).expect("write");
        let err = RedbStore::open(&path).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{text}");
        assert!(
            text.contains("is corrupt") && text.contains("move it away"),
            "{text}"
        );
    }
}
