//! One replica of a highly available allocator (`--etcd`): it keeps an etcd lease alive,
//! campaigns for the cluster's leader key (waiting while another replica leads), and once
//! elected serves with the registry in etcd ([`EtcdStore`]), every write fenced by its
//! leadership. It stops leading (and the binary exits, for its supervisor to start it again
//! as a candidate) when its lease is lost or a fenced write is refused, as a Mesos master
//! that loses leadership does; on a clean stop it resigns so that another takes over at once.

use std::time::Duration;

use strata_etcd::election::{self, Leadership};
use strata_etcd::{Client, EtcdError, KeepAlive};
use tokio::sync::watch;

use crate::flags::HaArgs;
use crate::follower::LeaderAddress;
use crate::store::StoreError;
use crate::store_etcd::{EtcdStore, leader_key};

/// How long each etcd call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a waiting replica looks whether the leader key is gone: one small transaction
/// per replica, and at most this long added to a failover.
const POLL: Duration = Duration::from_millis(250);

/// What stops a replica from leading.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    /// etcd could not be reached or refused a call.
    #[error("cluster {cluster}: cannot use etcd at {endpoints}: {source}")]
    Etcd {
        /// The cluster.
        cluster: String,
        /// The endpoints.
        endpoints: String,
        /// What failed.
        source: EtcdError,
    },
    /// The replica's lease was lost (it could not reach etcd for a whole ttl).
    #[error("cluster {cluster}: this replica's etcd lease was lost: {why}")]
    LeaseLost {
        /// The cluster.
        cluster: String,
        /// Why.
        why: String,
    },
}

/// A replica that leads its cluster.
#[derive(Debug)]
pub struct Leader {
    client: Client,
    keep_alive: KeepAlive,
    leadership: Leadership,
    cluster: String,
    endpoints: Vec<String>,
}

/// Campaigns until this replica leads `ha.cluster`, advertising `me` (what the others log and
/// redirect clients to); while another replica leads, `leader` holds its address (for the
/// follower's answers, [`crate::follower`]). Returns early with an error if etcd cannot be
/// used or the lease is lost while waiting.
pub async fn lead(
    ha: &HaArgs,
    me: &LeaderAddress,
    leader: &watch::Sender<Option<LeaderAddress>>,
) -> Result<Leader, HaError> {
    let cluster = ha.cluster.clone();
    let etcd_error = |source| HaError::Etcd {
        cluster: cluster.clone(),
        endpoints: ha.etcd.join(","),
        source,
    };
    let client = Client::new(&ha.etcd, CALL_TIMEOUT).map_err(etcd_error)?;
    let lease = client.grant(ha.etcd_lease_ttl).await.map_err(etcd_error)?;
    let mut keep_alive = client.keep_alive(lease, ha.etcd_lease_ttl);
    let key = leader_key(&cluster).into_bytes();
    tracing::info!(%cluster, etcd = %client.endpoints(), lease = format!("{lease:x}"), "campaigning to lead the cluster");
    let value = me.encode();
    let campaign = election::campaign(&client, &key, &value, lease, POLL, |value| {
        let other = LeaderAddress::decode(value);
        match &other {
            Some(other) => {
                tracing::info!(%cluster, leader = %other.grpc, mesos = ?other.mesos, "another replica leads; waiting to take over")
            }
            None => {
                tracing::warn!(%cluster, value = %String::from_utf8_lossy(&value[..value.len().min(256)]), "another replica leads but its address cannot be read; clients are not redirected to it")
            }
        }
        leader.send_replace(other);
    });
    let leadership = tokio::select! {
        elected = campaign => elected.map_err(etcd_error)?,
        why = keep_alive.lost() => return Err(HaError::LeaseLost { cluster, why }),
    };
    leader.send_replace(None);
    tracing::info!(%cluster, revision = leadership.revision, advertise = %me.grpc, "this replica leads the cluster");
    Ok(Leader {
        client,
        keep_alive,
        leadership,
        cluster,
        endpoints: ha.etcd.clone(),
    })
}

impl Leader {
    /// This leader's term: the etcd revision at which it was elected (agents refuse older
    /// ones).
    pub fn epoch(&self) -> u64 {
        u64::try_from(self.leadership.revision).unwrap_or(0)
    }

    /// The registry, written under this leadership.
    pub fn store(&self) -> Result<EtcdStore, StoreError> {
        EtcdStore::open(
            &self.endpoints,
            &self.cluster,
            Some(self.leadership.clone()),
            CALL_TIMEOUT,
        )
    }

    /// The guard of this replica's lease: it acts only while the lease is surely held.
    pub fn lease(&self) -> strata_etcd::LeaseGuard {
        self.keep_alive.guard()
    }

    /// Completes when this replica stops leading: its lease is lost or no longer surely held,
    /// or `deposed` (the store's) says a fenced write was refused; gives why.
    pub fn lost(
        &self,
        deposed: watch::Receiver<Option<String>>,
    ) -> impl Future<Output = String> + Send + 'static {
        let lease = self.keep_alive.subscribe();
        let guard = self.keep_alive.guard();
        async move {
            tokio::select! {
                why = first(lease) => format!("the etcd lease was lost: {why}"),
                () = guard.expired() => "the etcd lease is no longer surely held: no refresh was answered for 9/10 of its ttl".to_owned(),
                why = first(deposed) => why,
            }
        }
    }

    /// Gives leadership up (a clean stop): the leader key goes, so another replica takes
    /// over at once instead of after the lease's ttl.
    pub async fn resign(self) {
        let Self {
            client,
            keep_alive,
            leadership,
            cluster,
            ..
        } = self;
        drop(keep_alive);
        match leadership.resign(&client).await {
            Ok(()) => tracing::info!(%cluster, "resigned leadership"),
            Err(e) => {
                tracing::warn!(%cluster, error = %e, "cannot resign leadership; the lease's ttl ends it")
            }
        }
        let _ = client.revoke(leadership.lease).await;
    }
}

/// The first `Some` a watch holds; pending forever if its sender goes without one.
async fn first(mut rx: watch::Receiver<Option<String>>) -> String {
    loop {
        if let Some(why) = rx.borrow().clone() {
            return why;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
