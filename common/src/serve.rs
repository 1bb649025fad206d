//! Serving an axum router on a listener, in plain HTTP/1.1 or over TLS (the allocator's Mesos
//! API and metrics, the agent's HTTP server). Over TLS, the principal of the connection's
//! verified client certificate (as `principal_of` reads it) is put in every request's
//! extensions ([`PeerPrincipal`]) for the handlers to authenticate with.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::serve::ListenerExt as _;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The principal of a TLS connection's verified client certificate, in each request's
/// extensions; absent on plain connections.
#[derive(Clone, Debug, Default)]
pub struct PeerPrincipal(pub Option<String>);

/// Reads the principal a verified client certificate names.
pub type PrincipalOf = fn(&rustls::pki_types::CertificateDer<'_>) -> Option<String>;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections may take to finish on shutdown.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `stop` resolves; over TLS with `tls`, client
/// certificates read by `principal_of`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<(Arc<rustls::ServerConfig>, PrincipalOf)>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Some(tls) = tls else {
        // Small responses must not wait for Nagle's algorithm.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        return axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await;
    };
    let (tls, principal_of) = tls;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let (stopped_tx, stopped) = watch::channel(false);
    let mut stop = std::pin::pin!(stop);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        connections.spawn(connection(
            acceptor.clone(),
            tcp,
            peer,
            app.clone(),
            principal_of,
            stopped.clone(),
        ));
        // Reap finished connections as we go.
        while connections.try_join_next().is_some() {}
    }
    let _ = stopped_tx.send(true);
    let _ = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
    Ok(())
}

async fn connection(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    principal_of: PrincipalOf,
    mut stopped: watch::Receiver<bool>,
) {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let principal = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(principal_of);
    let app = app.layer(axum::Extension(PeerPrincipal(principal)));
    let service = TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        () = async { let _ = stopped.wait_for(|s| *s).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
