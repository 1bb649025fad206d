//! One replica of a highly available allocator (`--etcd`): it keeps an etcd lease alive,
//! campaigns for the cluster's leader key (waiting while another replica leads), and once
//! elected serves with the registry in etcd ([`EtcdStore`]), every write fenced by its
//! leadership. It stops leading (and the binary exits, for its supervisor to start it again
//! as a candidate) when its lease is lost or a fenced write is refused, as a Mesos master
//! that loses leadership does; on a clean stop it resigns so that another takes over at once.

use std::time::Duration;

use strata_auth::client::{ClientError, ClientSecurity, ClientTls, is_https};
use strata_etcd::election::{self, Leadership};
use strata_etcd::{Client, EtcdError, KeepAlive};
use tokio::sync::watch;
use tonic::transport::ClientTlsConfig;

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
    /// The TLS flags for etcd do not fit its endpoints, or their files cannot be used.
    #[error("cluster {cluster}: etcd TLS: {why}")]
    EtcdTls {
        /// The cluster.
        cluster: String,
        /// What is wrong and what to give.
        why: String,
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
    tls: Option<ClientTlsConfig>,
}

/// The TLS settings for `ha.etcd`: none for `http://` members (and then no etcd TLS flag may
/// be given), the CA (`--etcd-ca`, required) and this replica's certificate and key
/// (`--etcd-cert`, `--etcd-key`, both or neither) for `https://` ones. The files are read
/// and checked here, so a bad one stops the replica at start with its path.
pub fn etcd_tls(ha: &HaArgs) -> Result<Option<ClientTlsConfig>, HaError> {
    let err = |why: String| HaError::EtcdTls {
        cluster: ha.cluster.clone(),
        why,
    };
    let Some(https) = ha.etcd.iter().find(|e| is_https(e)) else {
        if ha.etcd_ca.is_some() || ha.etcd_cert.is_some() || ha.etcd_key.is_some() {
            return Err(err(
                "--etcd-ca, --etcd-cert and --etcd-key are for https:// members, \
                 and --etcd gives http:// ones: give https:// URLs (the members' \
                 --advertise-client-urls) or drop those flags"
                    .to_owned(),
            ));
        }
        return Ok(None);
    };
    let security = ClientSecurity {
        ca: ha.etcd_ca.clone(),
        cert: ha.etcd_cert.clone(),
        key: ha.etcd_key.clone(),
        token: None,
    };
    let tls = security.tls_for(https).map_err(|e| match e {
        ClientError::NoCa { endpoint } => err(format!(
            "{endpoint} is https:// but no CA certificate was given to verify the members: \
             give --etcd-ca (the CA of etcd's --cert-file)"
        )),
        ClientError::HalfIdentity { given, missing, .. } => err(format!(
            "the etcd client {given} was given without its {missing}: give both --etcd-cert \
             and --etcd-key"
        )),
        other => err(other.to_string()),
    })?;
    Ok(tls.map(ClientTls::tonic_config))
}

/// Campaigns until this replica leads `ha.cluster` (reaching etcd with `tls`, from
/// [`etcd_tls`], for `https://` members), advertising `me` (what the others log and redirect
/// clients to); while another replica leads, `leader` holds its address (for the
/// follower's answers, [`crate::follower`]). Returns early with an error if etcd cannot be
/// used or the lease is lost while waiting.
pub async fn lead(
    ha: &HaArgs,
    tls: Option<ClientTlsConfig>,
    me: &LeaderAddress,
    leader: &watch::Sender<Option<LeaderAddress>>,
) -> Result<Leader, HaError> {
    let cluster = ha.cluster.clone();
    let etcd_error = |source| HaError::Etcd {
        cluster: cluster.clone(),
        endpoints: ha.etcd.join(","),
        source,
    };
    let client = Client::with_tls(&ha.etcd, tls.as_ref(), CALL_TIMEOUT).map_err(etcd_error)?;
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
        tls,
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
            self.tls.as_ref(),
            &self.cluster,
            Some(self.leadership.clone()),
            Some(self.keep_alive.guard()),
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn ha(etcd: &[&str], ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> HaArgs {
        HaArgs {
            etcd: etcd.iter().map(|e| (*e).to_owned()).collect(),
            cluster: "c".to_owned(),
            etcd_ca: ca.map(Path::to_path_buf),
            etcd_cert: cert.map(Path::to_path_buf),
            etcd_key: key.map(Path::to_path_buf),
            ..HaArgs::default()
        }
    }

    fn refusal(args: &HaArgs) -> String {
        etcd_tls(args).expect_err("refused").to_string()
    }

    #[test]
    fn etcd_tls_flags_fit_the_endpoints_and_their_files_are_checked() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = strata_auth::certs::init_ca(dir.path()).expect("ca").cert;
        let me = strata_auth::certs::issue(dir.path(), "replica-1", &[]).expect("cert");
        let https = ["https://10.0.0.1:2379", "https://10.0.0.2:2379"];

        // Plain members: no TLS, and TLS flags with them are a mistake, named.
        assert!(
            etcd_tls(&ha(&["http://a:2379"], None, None, None))
                .expect("plain")
                .is_none()
        );
        let e = refusal(&ha(&["http://a:2379"], Some(&ca), None, None));
        assert!(e.contains("give https:// URLs"), "{e}");
        // https:// needs the CA.
        let e = refusal(&ha(&https, None, None, None));
        assert!(e.contains("--etcd-ca"), "{e}");
        assert!(e.contains("https://10.0.0.1:2379"), "{e}");
        // The certificate and key together.
        let e = refusal(&ha(&https, Some(&ca), Some(&me.cert), None));
        assert!(e.contains("--etcd-cert and --etcd-key"), "{e}");
        let e = refusal(&ha(&https, Some(&ca), None, Some(&me.key)));
        assert!(
            e.contains("private key was given without its certificate"),
            "{e}"
        );
        // Files that are missing or are not PEM are named.
        let missing = dir.path().join("missing.pem");
        let e = refusal(&ha(&https, Some(&missing), None, None));
        assert!(e.contains("missing.pem"), "{e}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").expect("write");
        let e = refusal(&ha(&https, Some(&ca), Some(&garbage), Some(&me.key)));
        assert!(e.contains("garbage.pem"), "{e}");
        // Good files: a configuration (with or without the client's identity).
        assert!(
            etcd_tls(&ha(&https, Some(&ca), None, None))
                .expect("ca only")
                .is_some()
        );
        let both = ha(&https, Some(&ca), Some(&me.cert), Some(&me.key));
        assert!(etcd_tls(&both).expect("identity").is_some());
    }
}
