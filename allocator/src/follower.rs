//! What a replica that does not lead serves (`--etcd`), from its start until it is elected:
//! on its gRPC port every call is answered `UNAVAILABLE` with the leader's address in the
//! `strata-leader` metadata ([`strata_proto::leader`]), which the agent, the SDK and the CLI
//! follow; on its Mesos HTTP port every call is answered 307 to the same path on the leader's
//! Mesos API (as a Mesos master that does not lead), or 503 while no replica is known to lead;
//! `GET /health` is 200. Nothing here reads or changes the registry.
//!
//! The replica serves this on duplicates of its listening sockets, so that the sockets stay
//! open from start to leadership: when it is elected it stops this server and serves the real
//! API on the same sockets, and a client never finds the port closed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;

use crate::mesos::{HttpError, Leadership};
use crate::security::{Security, SecurityError, with_principal};

/// The most bytes of a leader key's value a replica reads.
const MAX_VALUE: usize = 1024;

/// How long open connections may take to finish when the replica starts leading.
const DRAIN: Duration = Duration::from_secs(2);

/// Where a leading replica serves: what it writes in the leader key, and what followers
/// redirect to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderAddress {
    /// Its gRPC address (`--advertise`), as clients dial it: `http://host:port`.
    pub grpc: String,
    /// `host:port` of its Mesos HTTP API, when it serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesos: Option<String>,
}

impl LeaderAddress {
    /// The leader key's value.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a leader key's value: this JSON, or (as replicas before it wrote) the bare gRPC
    /// address. `None` for anything else, which is only logged.
    pub fn decode(value: &[u8]) -> Option<Self> {
        if value.len() > MAX_VALUE {
            return None;
        }
        let parsed = if value.first() == Some(&b'{') {
            serde_json::from_slice::<Self>(value).ok()?
        } else {
            Self {
                grpc: std::str::from_utf8(value).ok()?.to_owned(),
                mesos: None,
            }
        };
        let grpc = strata_common::parse::endpoint(&parsed.grpc).ok()?;
        let mesos = match parsed.mesos {
            Some(mesos) => Some(host_port(&mesos)?),
            None => None,
        };
        Some(Self { grpc, mesos })
    }

    /// This replica's addresses: gRPC at `advertise` (`host:port` or a URL; an unspecified
    /// host such as `0.0.0.0` is replaced by `hostname`), Mesos at the same host and
    /// `mesos_port`.
    pub fn of(advertise: &str, hostname: &str, mesos_port: Option<u16>) -> Result<Self, String> {
        let url = strata_common::parse::endpoint(advertise)?;
        let (scheme, bare) = url.split_once("://").unwrap_or(("http", &url));
        let (host, port) = bare
            .rsplit_once(':')
            .ok_or_else(|| format!("no port in {advertise:?}"))?;
        let host = match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
            Ok(ip) if ip.is_unspecified() => hostname.to_owned(),
            _ => host.to_owned(),
        };
        Ok(Self {
            grpc: format!("{scheme}://{host}:{port}"),
            mesos: mesos_port.map(|p| format!("{host}:{p}")),
        })
    }
}

/// `host:port` with a port, printable, without a path.
fn host_port(text: &str) -> Option<String> {
    let (host, port) = text.rsplit_once(':')?;
    let ok = !host.is_empty()
        && port.parse::<u16>().is_ok_and(|p| p != 0)
        && text
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#' | b','));
    ok.then(|| text.to_owned())
}

/// What stops the follower's server.
#[derive(Debug, thiserror::Error)]
pub enum FollowerError {
    /// The TLS settings could not be used.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// tonic refused the TLS settings.
    #[error("invalid TLS settings for the follower's gRPC server: {0}")]
    Tls(tonic::transport::Error),
    /// The gRPC server failed.
    #[error("the follower's gRPC server failed: {0}")]
    Transport(tonic::transport::Error),
}

/// Serves a follower's answers on `grpc` (and `mesos`, when given) until `stop` resolves,
/// naming the leader `leader` holds (`None`: no replica is known to lead).
pub async fn serve(
    grpc: TcpListener,
    mesos: Option<TcpListener>,
    security: Arc<Security>,
    cluster: String,
    leader: watch::Receiver<Option<LeaderAddress>>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), FollowerError> {
    let (stopped_tx, stopped) = watch::channel(false);
    let http_task = match mesos {
        Some(listener) => {
            let tls = security.http_tls()?.map(with_principal);
            let app = mesos_router(leader.clone());
            let mut stopped = stopped.clone();
            let stopped = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            Some(tokio::spawn(async move {
                if let Err(e) = strata_common::serve::serve(listener, app, tls, stopped).await {
                    tracing::warn!(error = %e, "the follower's Mesos HTTP answers stopped");
                }
            }))
        }
        None => None,
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = security.grpc_tls()? {
        builder = builder.tls_config(tls).map_err(FollowerError::Tls)?;
    }
    let routes = tonic::service::Routes::from(grpc_router(cluster, leader));
    let incoming = TcpListenerStream::new(grpc).map(|stream| {
        let stream = stream?;
        stream.set_nodelay(true)?;
        Ok::<_, std::io::Error>(stream)
    });
    let signal = async move {
        stop.await;
        let _ = stopped_tx.send(true);
    };
    // Clients keep no call open on a follower: draining is quick, and bounded anyway.
    let served = builder
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, signal);
    let mut stopped = stopped;
    let result = tokio::select! {
        result = served => result.map_err(FollowerError::Transport),
        () = async {
            let _ = stopped.wait_for(|s| *s).await;
            tokio::time::sleep(DRAIN).await;
        } => Ok(()),
    };
    if let Some(task) = http_task {
        let _ = tokio::time::timeout(DRAIN, task).await;
    }
    result
}

/// Every gRPC call: `UNAVAILABLE` naming the leader.
fn grpc_router(cluster: String, leader: watch::Receiver<Option<LeaderAddress>>) -> Router {
    Router::new()
        .fallback(
            |State((cluster, leader)): State<(
                Arc<str>,
                watch::Receiver<Option<LeaderAddress>>,
            )>| async move {
                let grpc = leader.borrow().as_ref().map(|l| l.grpc.clone());
                strata_proto::leader::not_leader(&cluster, grpc.as_deref())
                    .into_http::<axum::body::Body>()
            },
        )
        .with_state((Arc::from(cluster), leader))
}

/// Every Mesos HTTP call but `GET /health`: 307 to the leader's Mesos API, 503 without one.
fn mesos_router(leader: watch::Receiver<Option<LeaderAddress>>) -> Router {
    Router::new()
        .route("/health", axum::routing::get(|| async { "OK" }))
        .fallback(
            |State(leader): State<watch::Receiver<Option<LeaderAddress>>>,
             uri: axum::http::Uri| async move {
                let mesos = leader.borrow().as_ref().and_then(|l| l.mesos.clone());
                let leadership = match mesos {
                    Some(leader) => Leadership::Follower { leader },
                    None => Leadership::NoLeader,
                };
                let path = uri
                    .path_and_query()
                    .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
                follower_answer(&leadership, path)
            },
        )
        .with_state(leader)
}

fn follower_answer(leadership: &Leadership, path: String) -> Response {
    match leadership {
        Leadership::Follower { leader } => HttpError::NotLeader {
            leader: leader.clone(),
            path,
        }
        .into_response(),
        Leadership::Leader | Leadership::NoLeader => HttpError::NoLeader.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_values_round_trip_and_bad_ones_are_refused() {
        let me = LeaderAddress::of("0.0.0.0:5050", "h1", Some(5051)).unwrap();
        assert_eq!(me.grpc, "http://h1:5050");
        assert_eq!(me.mesos.as_deref(), Some("h1:5051"));
        assert_eq!(LeaderAddress::decode(&me.encode()), Some(me));
        let tls = LeaderAddress::of("https://10.0.0.2:5050", "h1", None).unwrap();
        assert_eq!(tls.grpc, "https://10.0.0.2:5050");
        assert_eq!(tls.mesos, None);
        // What replicas wrote before: the bare address.
        assert_eq!(
            LeaderAddress::decode(b"10.0.0.3:5050").map(|l| l.grpc),
            Some("http://10.0.0.3:5050".to_owned())
        );
        for bad in [
            &b"{\"grpc\":\"ftp://x:1\"}"[..],
            b"{\"grpc\":\"h:1\",\"mesos\":\"h:1/evil\"}",
            b"{\"grpc\":\"h:1\",\"mesos\":\"h\"}",
            b"not an address",
            &[0xff, 0xfe],
        ] {
            assert_eq!(LeaderAddress::decode(bad), None, "{bad:?}");
        }
        let huge = format!(
            "{{\"grpc\":\"h:1\",\"mesos\":\"{}:1\"}}",
            "x".repeat(MAX_VALUE)
        );
        assert_eq!(LeaderAddress::decode(huge.as_bytes()), None);
    }
}
