//! Tests of the SDK's stream handling against a scripted fake SchedulerService served over real
//! gRPC on 127.0.0.1 (port 0): subscription, auto-acknowledgement after delivery, reconnect with
//! the same id, refusal, teardown. The real allocator is exercised by the CLI's end-to-end tests.

use std::time::Duration;

use strata_proto::{TaskState, TaskStatus, call, event};
use strata_test_support::fake_scheduler::FakeSchedulerService;
use strata_test_support::wait::within;
use tokio::sync::mpsc;

use crate::{Error, Event, FrameworkBuilder};

async fn next_event(events: &mut mpsc::Receiver<Event>) -> Event {
    within("an event", events.recv())
        .await
        .expect("the event stream is open")
}

fn update(task_id: &str, state: TaskState, uuid: Vec<u8>) -> event::Event {
    event::Event::Update(event::Update {
        status: Some(TaskStatus {
            task_id: task_id.into(),
            agent_id: "a-1".into(),
            framework_id: "f-1".into(),
            state: state as i32,
            uuid,
            ..TaskStatus::default()
        }),
    })
}

#[tokio::test]
async fn subscribe_delivers_events_and_acknowledges_only_after_delivery() {
    let mut fake = FakeSchedulerService::start().await;
    let (client, mut events) = within(
        "subscribe",
        FrameworkBuilder::new(&fake.addr)
            .name("t")
            .partition_aware(true)
            .event_capacity(1)
            .subscribe(),
    )
    .await
    .expect("subscribed");
    let mut session = fake.session().await;
    assert_eq!(session.info.name, "t");
    assert_eq!(client.framework_id(), "f-1");
    assert!(client.is_connected());

    // The receiver holds one event; fill it, then send an update that must wait.
    assert_eq!(
        next_event(&mut events).await,
        Event::Subscribed {
            framework_id: "f-1".into()
        }
    );
    session.send(event::Event::Heartbeat(event::Heartbeat {}));
    session.send(update("t1", TaskState::Running, vec![1; 16]));
    // The update cannot be handed over yet, so no acknowledgement may arrive; a call made now
    // is the next thing the fake sees.
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.revive().await.expect("revive while connected");
    assert!(matches!(session.next_call().await, call::Call::Revive(_)));

    assert_eq!(next_event(&mut events).await, Event::Heartbeat);
    let Event::Update(status) = next_event(&mut events).await else {
        panic!("expected the update");
    };
    assert_eq!(status.state(), TaskState::Running);
    match session.next_call().await {
        call::Call::Acknowledge(ack) => {
            assert_eq!(ack.task_id, "t1");
            assert_eq!(ack.agent_id, "a-1");
            assert_eq!(ack.uuid, vec![1; 16]);
        }
        other => panic!("expected an acknowledgement, got {other:?}"),
    }

    // An update without a uuid (made by the allocator) is not acknowledged.
    session.send(update("t2", TaskState::Lost, Vec::new()));
    assert!(matches!(next_event(&mut events).await, Event::Update(s) if s.task_id == "t2"));
    client.suppress().await.expect("suppress");
    assert!(matches!(session.next_call().await, call::Call::Suppress(_)));
}

#[tokio::test]
async fn manual_acknowledgement_when_auto_is_off() {
    let mut fake = FakeSchedulerService::start().await;
    let (client, mut events) = within(
        "subscribe",
        FrameworkBuilder::new(&fake.addr)
            .auto_acknowledge(false)
            .subscribe(),
    )
    .await
    .expect("subscribed");
    let mut session = fake.session().await;
    assert!(matches!(
        next_event(&mut events).await,
        Event::Subscribed { .. }
    ));
    session.send(update("t1", TaskState::Finished, vec![9; 16]));
    let Event::Update(status) = next_event(&mut events).await else {
        panic!("expected the update");
    };
    client.kill("t0", "a-1").await.expect("kill");
    assert!(matches!(session.next_call().await, call::Call::Kill(k) if k.task_id == "t0"));
    client.acknowledge(&status).await.expect("acknowledge");
    assert!(
        matches!(session.next_call().await, call::Call::Acknowledge(a) if a.uuid == vec![9; 16])
    );
}

#[tokio::test]
async fn reconnects_with_the_same_id_and_refuses_calls_meanwhile() {
    let mut fake = FakeSchedulerService::start().await;
    let (client, mut events) = within("subscribe", FrameworkBuilder::new(&fake.addr).subscribe())
        .await
        .expect("subscribed");
    let session = fake.session().await;
    assert!(matches!(
        next_event(&mut events).await,
        Event::Subscribed { .. }
    ));

    // Hold re-subscriptions, then break the stream.
    fake.accept_resubscribe.send_replace(false);
    drop(session);
    let Event::Disconnected { reason } = next_event(&mut events).await else {
        panic!("expected Disconnected");
    };
    assert!(!reason.is_empty());
    assert!(!client.is_connected());
    let err = client.revive().await.expect_err("no stream");
    assert!(matches!(err, Error::NotConnected { .. }), "{err:?}");
    assert!(err.to_string().contains("not connected"), "{err}");

    fake.accept_resubscribe.send_replace(true);
    let mut session = fake.session().await;
    assert_eq!(session.info.id, "f-1", "re-subscribes with the same id");
    assert_eq!(
        next_event(&mut events).await,
        Event::Subscribed {
            framework_id: "f-1".into()
        }
    );
    assert!(client.is_connected());
    client
        .reconcile(vec![("t1".into(), "a-1".into())])
        .await
        .expect("reconcile after reconnect");
    match session.next_call().await {
        call::Call::Reconcile(r) => assert_eq!(r.tasks[0].task_id, "t1"),
        other => panic!("expected reconcile, got {other:?}"),
    }
}

/// After subscribing with a leader of term 7, a stream whose SUBSCRIBED names term 5 (a
/// deposed leader that does not know it yet) is dropped before anything it says is delivered
/// or acknowledged; the SDK keeps trying and subscribes again with a leader of term 8.
#[tokio::test]
async fn a_deposed_leader_is_refused_and_nothing_it_says_is_delivered() {
    use std::sync::atomic::Ordering;
    let mut fake = FakeSchedulerService::start().await;
    fake.leader_epoch.store(7, Ordering::SeqCst);
    let (_client, mut events) = within("subscribe", FrameworkBuilder::new(&fake.addr).subscribe())
        .await
        .expect("subscribed");
    let session = fake.session().await;
    assert!(matches!(
        next_event(&mut events).await,
        Event::Subscribed { .. }
    ));

    // The stream breaks; the replica it reaches next answers as a deposed leader would.
    fake.leader_epoch.store(5, Ordering::SeqCst);
    drop(session);
    assert!(matches!(
        next_event(&mut events).await,
        Event::Disconnected { .. }
    ));
    let mut deposed = fake.session().await;
    deposed.send(update("from-the-deposed", TaskState::Lost, vec![5; 16]));
    // It is refused: its stream ends without a call (no acknowledgement) from the SDK.
    let after = within("the deposed stream to end", deposed.calls.message()).await;
    assert!(
        matches!(after, Ok(None) | Err(_)),
        "the SDK sent {after:?} to a deposed leader"
    );

    // The leader of term 8 is accepted.
    fake.leader_epoch.store(8, Ordering::SeqCst);
    let session = fake.session().await;
    assert_eq!(session.info.id, "f-1", "re-subscribes with the same id");
    session.send(update("from-the-leader", TaskState::Running, vec![8; 16]));
    let mut seen = Vec::new();
    loop {
        match next_event(&mut events).await {
            Event::Update(status) => {
                seen.push(status.task_id);
                break;
            }
            other => seen.push(format!("{other:?}")),
        }
    }
    assert!(
        !seen.iter().any(|e| e.contains("from-the-deposed")),
        "delivered from a deposed leader: {seen:?}"
    );
    assert_eq!(seen.last().map(String::as_str), Some("from-the-leader"));
    assert!(seen.iter().any(|e| e.starts_with("Subscribed")), "{seen:?}");
}

#[tokio::test]
async fn a_suppressed_framework_subscribes_and_re_subscribes_suppressed_until_it_revives() {
    let mut fake = FakeSchedulerService::start().await;
    let (client, mut events) = within(
        "subscribe",
        FrameworkBuilder::new(&fake.addr)
            .role("batch")
            .suppressed(true)
            .subscribe(),
    )
    .await
    .expect("subscribed");
    let session = fake.session().await;
    assert_eq!(session.suppressed_roles, ["batch"]);
    assert!(client.is_suppressed());
    assert!(matches!(
        next_event(&mut events).await,
        Event::Subscribed { .. }
    ));

    // Broken stream: the SDK subscribes again, still suppressed.
    drop(session);
    assert!(matches!(
        next_event(&mut events).await,
        Event::Disconnected { .. }
    ));
    let mut session = fake.session().await;
    assert_eq!(session.info.id, "f-1");
    assert_eq!(
        session.suppressed_roles,
        ["batch"],
        "suppressed across reconnects"
    );
    assert!(matches!(
        next_event(&mut events).await,
        Event::Subscribed { .. }
    ));

    // After a REVIVE, the next re-subscription asks for offers.
    client.revive().await.expect("revive");
    assert!(matches!(session.next_call().await, call::Call::Revive(_)));
    assert!(!client.is_suppressed());
    drop(session);
    assert!(matches!(
        next_event(&mut events).await,
        Event::Disconnected { .. }
    ));
    let mut session = fake.session().await;
    assert!(session.suppressed_roles.is_empty());
    assert!(matches!(
        next_event(&mut events).await,
        Event::Subscribed { .. }
    ));

    // And a SUPPRESS is kept the same way.
    client.suppress().await.expect("suppress");
    assert!(matches!(session.next_call().await, call::Call::Suppress(_)));
    drop(session);
    assert!(matches!(
        next_event(&mut events).await,
        Event::Disconnected { .. }
    ));
    assert_eq!(fake.session().await.suppressed_roles, ["batch"]);
}

#[tokio::test]
async fn a_removed_framework_stops_with_an_error_event() {
    let mut fake = FakeSchedulerService::start().await;
    let (client, mut events) = within("subscribe", FrameworkBuilder::new(&fake.addr).subscribe())
        .await
        .expect("subscribed");
    let session = fake.session().await;
    assert!(matches!(
        next_event(&mut events).await,
        Event::Subscribed { .. }
    ));
    fake.known.lock().expect("lock").clear();
    drop(session);
    assert!(matches!(
        next_event(&mut events).await,
        Event::Disconnected { .. }
    ));
    let Event::Error { message } = next_event(&mut events).await else {
        panic!("expected an error event");
    };
    assert!(message.contains("unknown framework id f-1"), "{message}");
    assert!(within("the end of events", events.recv()).await.is_none());
    let err = client.revive().await.expect_err("stopped");
    assert!(matches!(err, Error::Closed { .. }), "{err:?}");
}

#[tokio::test]
async fn unknown_framework_id_is_refused_with_the_allocators_message() {
    let fake = FakeSchedulerService::start().await;
    let err = within(
        "subscribe",
        FrameworkBuilder::new(&fake.addr)
            .framework_id("nope")
            .subscribe(),
    )
    .await
    .expect_err("refused");
    assert!(matches!(err, Error::SubscribeRefused { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "the allocator at {} refused the subscription: unknown framework id nope: subscribe without an id to register a new framework",
            fake.addr
        )
    );
}

#[tokio::test]
async fn teardown_waits_for_the_allocator_to_close_and_ends_the_events() {
    let mut fake = FakeSchedulerService::start().await;
    let (client, mut events) = within("subscribe", FrameworkBuilder::new(&fake.addr).subscribe())
        .await
        .expect("subscribed");
    let mut session = fake.session().await;
    assert!(matches!(
        next_event(&mut events).await,
        Event::Subscribed { .. }
    ));
    let teardown = tokio::spawn({
        let client = client.clone();
        async move { client.teardown().await }
    });
    assert!(matches!(session.next_call().await, call::Call::Teardown(_)));
    // The SDK half-closed its side after TEARDOWN.
    assert!(
        within("end of calls", session.calls.message())
            .await
            .expect("clean end")
            .is_none()
    );
    drop(session);
    within("teardown", teardown)
        .await
        .expect("teardown task")
        .expect("teardown ok");
    assert!(within("the end of events", events.recv()).await.is_none());
    assert!(matches!(client.revive().await, Err(Error::Closed { .. })));
}

#[tokio::test]
async fn launch_sends_an_accept_for_the_offer() {
    let mut fake = FakeSchedulerService::start().await;
    let (client, mut events) = within("subscribe", FrameworkBuilder::new(&fake.addr).subscribe())
        .await
        .expect("subscribed");
    let mut session = fake.session().await;
    assert!(matches!(
        next_event(&mut events).await,
        Event::Subscribed { .. }
    ));
    session.send(event::Event::Offers(event::Offers {
        offers: vec![strata_proto::Offer {
            id: "o-1".into(),
            agent_id: "a-1".into(),
            resources: vec![strata_proto::Resource::scalar("cpus", 1.0)],
            ..strata_proto::Offer::default()
        }],
    }));
    let Event::Offers(offers) = next_event(&mut events).await else {
        panic!("expected offers");
    };
    let t = crate::task("t1").shell("true").cpus(0.5).build();
    client.launch(&offers[0], vec![t]).await.expect("launch");
    match session.next_call().await {
        call::Call::Accept(accept) => {
            assert_eq!(accept.offer_ids, ["o-1"]);
            assert_eq!(accept.operations.len(), 1);
        }
        other => panic!("expected accept, got {other:?}"),
    }
    client
        .decline(vec!["o-2".into()], Some(1.0))
        .await
        .expect("decline");
    match session.next_call().await {
        call::Call::Decline(decline) => {
            assert_eq!(decline.offer_ids, ["o-2"]);
            assert_eq!(decline.filters.and_then(|f| f.refuse_seconds), Some(1.0));
        }
        other => panic!("expected decline, got {other:?}"),
    }
}

/// TLS and tokens: the SDK reaches a TLS server with the cluster's CA (presenting its client
/// certificate, sending its token as metadata), and is refused, with an error saying why,
/// without the CA, with another CA, or over plain HTTP.
mod security {
    use std::path::Path;

    use strata_auth::certs;
    use strata_proto::scheduler_service_client::SchedulerServiceClient;
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};

    use super::*;
    use crate::{ClientError, ClientSecurity};

    fn server_tls(dir: &Path) -> ServerTlsConfig {
        let ca = certs::ca_files(dir);
        let server = certs::issue(dir, "allocator", &["127.0.0.1".into()]).unwrap();
        ServerTlsConfig::new()
            .identity(Identity::from_pem(
                std::fs::read(&server.cert).unwrap(),
                std::fs::read(&server.key).unwrap(),
            ))
            .client_ca_root(Certificate::from_pem(std::fs::read(&ca.cert).unwrap()))
            .client_auth_optional(true)
    }

    #[tokio::test]
    async fn a_tls_allocator_is_reached_with_the_ca_and_gets_the_identity_and_token() {
        let dir = tempfile::tempdir().unwrap();
        let ca = certs::init_ca(dir.path()).unwrap();
        let me = certs::issue(dir.path(), "fw-1", &[]).unwrap();
        let mut fake = FakeSchedulerService::start_with(Some(server_tls(dir.path()))).await;
        assert!(fake.addr.starts_with("https://"));
        let security = ClientSecurity {
            ca: Some(ca.cert.clone()),
            cert: Some(me.cert.clone()),
            key: Some(me.key.clone()),
            token: Some("strata_tok".into()),
        };
        let (client, _events) = within(
            "subscribe over TLS",
            FrameworkBuilder::new(&fake.addr)
                .security(security.clone())
                .subscribe(),
        )
        .await
        .expect("subscribed over TLS");
        let session = fake.session().await;
        assert_eq!(session.authorization.as_deref(), Some("Bearer strata_tok"));
        assert_eq!(session.client_certs, 1);
        assert_eq!(client.framework_id(), "f-1");

        // The builder's own setters; a token alone (no client certificate).
        let (_client, _events) = within(
            "subscribe with a token",
            FrameworkBuilder::new(&fake.addr)
                .security(ClientSecurity::none())
                .tls_ca(&ca.cert)
                .token("strata_other")
                .subscribe(),
        )
        .await
        .expect("subscribed with a token");
        let session = fake.session().await;
        assert_eq!(
            session.authorization.as_deref(),
            Some("Bearer strata_other")
        );
        assert_eq!(session.client_certs, 0);

        // dial_secure (what the CLI uses): every call carries the token.
        let channel = crate::dial_secure(&fake.addr, &security).await.unwrap();
        let mut raw = SchedulerServiceClient::new(channel);
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(strata_proto::Call {
            framework_id: String::new(),
            call: Some(call::Call::Subscribe(call::Subscribe {
                framework_info: Some(strata_proto::FrameworkInfo::default()),
                suppressed_roles: Vec::new(),
            })),
        })
        .unwrap();
        let _stream = within(
            "a raw subscribe",
            raw.subscribe(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)),
        )
        .await
        .unwrap();
        let session = fake.session().await;
        assert_eq!(session.authorization.as_deref(), Some("Bearer strata_tok"));
        assert_eq!(session.client_certs, 1);
    }

    #[tokio::test]
    async fn without_the_right_ca_the_sdk_refuses_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        certs::init_ca(dir.path()).unwrap();
        let fake = FakeSchedulerService::start_with(Some(server_tls(dir.path()))).await;
        let subscribe = |security: ClientSecurity| {
            FrameworkBuilder::new(&fake.addr)
                .security(security)
                .subscribe_timeout(Duration::from_secs(5))
                .subscribe()
        };

        // No CA at all: refused before dialling.
        let e = subscribe(ClientSecurity::none()).await.unwrap_err();
        assert!(
            matches!(e, Error::Security(ClientError::NoCa { .. })),
            "{e:?}"
        );
        assert!(e.to_string().contains("--ca"), "{e}");
        let e = crate::dial_secure(&fake.addr, &ClientSecurity::none())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no CA certificate"), "{e}");
        assert!(crate::dial(&fake.addr).await.is_err());

        // Another cluster's CA: the handshake fails.
        let other = tempfile::tempdir().unwrap();
        let other_ca = certs::init_ca(other.path()).unwrap();
        let e = subscribe(ClientSecurity {
            ca: Some(other_ca.cert.clone()),
            ..ClientSecurity::none()
        })
        .await
        .unwrap_err();
        assert!(matches!(e, Error::Tls { .. }), "{e:?}");
        assert!(e.to_string().contains("certificate"), "{e}");
        assert!(!e.is_transient());

        // A bad CA file is named.
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "junk").unwrap();
        let e = subscribe(ClientSecurity {
            ca: Some(garbage),
            ..ClientSecurity::none()
        })
        .await
        .unwrap_err();
        assert!(e.to_string().contains("garbage.pem"), "{e}");

        // Plain HTTP/2 to a TLS server does not get through (the server drops it).
        let plain = fake.addr.replace("https://", "http://");
        FrameworkBuilder::new(&plain)
            .security(ClientSecurity::none())
            .subscribe_timeout(Duration::from_secs(5))
            .subscribe()
            .await
            .unwrap_err();
    }
}
