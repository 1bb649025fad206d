//! Against a real etcd member (`strata_test_support::etcd::Etcd`): reads by prefix across
//! pages, leases kept alive and lost, leader election with fencing, and TLS with client
//! certificates.

use std::time::Duration;

use anyhow::{Result, ensure};
use strata_etcd::election::{self, Leadership};
use strata_etcd::{Client, created_at, put_op};
use strata_test_support::etcd::Etcd;

const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn prefixes_are_read_across_pages_at_one_revision() -> Result<()> {
    let etcd = Etcd::start()?;
    let client = Client::new(std::slice::from_ref(&etcd.url), TIMEOUT)?;
    // 2,500 keys under the prefix (more than two pages), in transactions of 100, and
    // neighbours outside it.
    for batch in 0..25 {
        let ops = (0..100)
            .map(|i| {
                let n = batch * 100 + i;
                put_op(
                    format!("/p/{n:05}").into_bytes(),
                    n.to_string().into_bytes(),
                )
            })
            .collect();
        let r = client.txn(Vec::new(), ops, Vec::new()).await?;
        ensure!(r.succeeded);
    }
    client.put(b"/p", b"not under /p/", 0).await?;
    client.put(b"/q/1", b"other", 0).await?;
    let all = client.list_prefix(b"/p/").await?;
    assert_eq!(all.len(), 2500);
    for (n, kv) in all.iter().enumerate() {
        assert_eq!(kv.key, format!("/p/{n:05}").into_bytes());
        assert_eq!(kv.value, n.to_string().into_bytes());
    }
    client.delete(b"/p/00000").await?;
    assert!(client.get(b"/p/00000").await?.is_none());
    assert_eq!(
        client.get(b"/q/1").await?.map(|kv| kv.value),
        Some(b"other".to_vec())
    );
    Ok(())
}

#[tokio::test]
async fn a_kept_lease_holds_its_key_and_a_lost_one_is_reported() -> Result<()> {
    let etcd = Etcd::start()?;
    let client = Client::new(std::slice::from_ref(&etcd.url), Duration::from_secs(1))?;
    let ttl = Duration::from_secs(2);
    let lease = client.grant(ttl).await?;
    client.put(b"/held", b"x", lease).await?;
    let mut kept = client.keep_alive(lease, ttl);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        client.get(b"/held").await?.is_some(),
        "the key outlived ttl x 2"
    );
    // etcd goes away: the keep-alive says so within about a ttl.
    drop(etcd);
    let why = tokio::time::timeout(ttl * 4, kept.lost()).await?;
    assert!(why.contains("etcd"), "{why}");
    Ok(())
}

#[tokio::test]
async fn one_candidate_leads_the_next_takes_over_when_its_lease_ends_and_the_old_one_is_fenced()
-> Result<()> {
    let etcd = Etcd::start()?;
    let client = Client::new(std::slice::from_ref(&etcd.url), TIMEOUT)?;
    let key = b"/strata/test/leader".to_vec();
    let ttl = Duration::from_secs(2);
    let poll = Duration::from_millis(200);

    let lease_a = client.grant(ttl).await?;
    let keep_a = client.keep_alive(lease_a, ttl);
    let a: Leadership = election::campaign(&client, &key, b"a:5050", lease_a, poll, |_| {}).await?;
    assert_eq!(
        election::leader(&client, &key).await?,
        Some(b"a:5050".to_vec())
    );
    // A's fenced write goes through.
    let r = client
        .txn(
            vec![a.fence()],
            vec![put_op(b"/reg/x".to_vec(), b"a".to_vec())],
            Vec::new(),
        )
        .await?;
    assert!(r.succeeded);

    // B waits while A's lease is kept, seeing A as the leader.
    let lease_b = client.grant(ttl).await?;
    let _keep_b = client.keep_alive(lease_b, ttl);
    let b_client = client.clone();
    let b_key = key.clone();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let b = tokio::spawn(async move {
        election::campaign(&b_client, &b_key, b"b:5050", lease_b, poll, |holder| {
            let _ = seen_tx.send(holder.to_vec());
        })
        .await
    });
    assert_eq!(
        tokio::time::timeout(TIMEOUT, seen_rx.recv()).await?,
        Some(b"a:5050".to_vec())
    );
    tokio::time::sleep(ttl * 2).await;
    assert!(!b.is_finished(), "b leads while a's lease is alive");

    // A dies (its keep-alive stops): B leads once A's lease expires.
    drop(keep_a);
    let b = tokio::time::timeout(ttl * 4, b).await???;
    assert!(b.revision > a.revision);
    assert_eq!(
        election::leader(&client, &key).await?,
        Some(b"b:5050".to_vec())
    );
    // A, unaware, writes with its old fence: refused, nothing changed.
    let r = client
        .txn(
            vec![a.fence()],
            vec![put_op(b"/reg/x".to_vec(), b"stale".to_vec())],
            Vec::new(),
        )
        .await?;
    assert!(!r.succeeded, "a deposed leader's write went through");
    assert_eq!(
        client.get(b"/reg/x").await?.map(|kv| kv.value),
        Some(b"a".to_vec())
    );
    // B resigns: the key is gone at once, and a new candidate can lead.
    b.resign(&client).await?;
    assert!(election::leader(&client, &key).await?.is_none());
    let lease_c = client.grant(ttl).await?;
    let c = election::campaign(&client, &key, b"c:5050", lease_c, poll, |_| {}).await?;
    assert!(c.revision > b.revision);
    // A key that does not exist compares as created at revision 0.
    let r = client
        .txn(
            vec![created_at(b"/nothing".to_vec(), 0)],
            Vec::new(),
            Vec::new(),
        )
        .await?;
    assert!(r.succeeded);
    Ok(())
}

/// A member that serves TLS only and requires client certificates (`--client-cert-auth`):
/// reached with the CA and a certificate of that CA; refused without a certificate, with one
/// of another CA, in plain text, and not trusted when verified with another CA.
#[tokio::test]
async fn a_tls_member_needs_its_ca_and_a_client_certificate() -> Result<()> {
    use strata_auth::certs;
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};

    let dir = tempfile::tempdir()?;
    let (pki, other_pki) = (dir.path().join("pki"), dir.path().join("other"));
    let ca = certs::init_ca(&pki)?;
    let server = certs::issue(&pki, "etcd", &["127.0.0.1".to_owned()])?;
    let client = certs::issue(&pki, "allocator", &[])?;
    let other_ca = certs::init_ca(&other_pki)?;
    let stranger = certs::issue(&other_pki, "allocator", &[])?;
    let etcd = Etcd::start_tls(&strata_test_support::etcd::MemberTls {
        client_ca: ca.cert.clone(),
        cert: server.cert,
        key: server.key,
    })?;
    ensure!(etcd.url.starts_with("https://"), "{}", etcd.url);
    let url = std::slice::from_ref(&etcd.url);
    let pem = |p: &std::path::Path| std::fs::read(p);
    let verified_by = |ca: &std::path::Path| -> Result<ClientTlsConfig> {
        Ok(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem(ca)?)))
    };
    let short = Duration::from_secs(3);

    let good =
        verified_by(&ca.cert)?.identity(Identity::from_pem(pem(&client.cert)?, pem(&client.key)?));
    let c = Client::with_tls(url, Some(&good), TIMEOUT)?;
    c.put(b"/tls/k", b"v", 0).await?;
    let kv = c.get(b"/tls/k").await?.expect("the key is there");
    assert_eq!(kv.value, b"v".to_vec());

    let refused = [
        ("no client certificate", verified_by(&ca.cert)?),
        (
            "a client certificate of another CA",
            verified_by(&ca.cert)?.identity(Identity::from_pem(
                pem(&stranger.cert)?,
                pem(&stranger.key)?,
            )),
        ),
        (
            "the member verified with another CA",
            verified_by(&other_ca.cert)?
                .identity(Identity::from_pem(pem(&client.cert)?, pem(&client.key)?)),
        ),
    ];
    for (what, tls) in refused {
        let c = Client::with_tls(url, Some(&tls), short)?;
        let err = c.get(b"/tls/k").await.expect_err(what);
        assert!(err.to_string().contains("etcd range"), "{what}: {err}");
    }
    // Plain text to the TLS port.
    let plain = etcd.url.replacen("https://", "http://", 1);
    let c = Client::new(std::slice::from_ref(&plain), short)?;
    c.get(b"/tls/k")
        .await
        .expect_err("plain text to a TLS member");
    Ok(())
}
