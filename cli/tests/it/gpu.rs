//! The GPU_RESOURCES gate end to end: a real agent (in-process) on a fake NVML with one GPU and a
//! real allocator (in-process): a framework without the capability is offered a CPU-only agent
//! but never the GPU agent; one with it is offered the GPU agent's `gpus` and `gpu_model`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use strata_agent::gpu::fake::{FakeBackend, fake_device};
use strata_proto::{FrameworkCapability, FrameworkInfo, Offer, event, names, scalar_sum};
use strata_test_support::allocator::Allocator;
use strata_test_support::fake_agent::FakeAgent;
use strata_test_support::framework::Framework;
use strata_test_support::wait::{Poll, poll_until};
use strata_test_support::{STEP, init_tracing};

const GPU_HOST: &str = "gpu-host";

/// Every offer `fw` gets within `window`.
async fn offers_within(fw: &mut Framework, window: Duration) -> Result<Vec<Offer>> {
    let deadline = tokio::time::Instant::now() + window;
    let mut offers = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, fw.next()).await {
            Ok(event) => {
                if let event::Event::Offers(o) = event? {
                    offers.extend(o.offers);
                }
            }
            Err(_) => return Ok(offers),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_frameworks_declaring_gpu_resources_are_offered_a_gpu_agent() -> Result<()> {
    init_tracing();
    let allocator = Allocator::start().await?;
    let dir = tempfile::tempdir()?;
    let mut config =
        strata_agent::AgentConfig::new(format!("http://{}", allocator.grpc), dir.path());
    config.hostname = Some(GPU_HOST.to_owned());
    config.cpus = Some(2.0);
    config.mem_mib = Some(1024.0);
    config.disk_mib = Some(1024.0);
    config.isolation = strata_agent::Isolation::None;
    config.ebpf = false;
    config.gpu_backend = Some(Arc::new(FakeBackend::new(vec![fake_device(0)])));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(strata_agent::run(config, async move {
        let _ = stopped.await;
    }));
    let id_file = dir.path().join("agent_id");
    poll_until(STEP, Duration::from_millis(50), || async {
        Ok(if id_file.is_file() {
            Poll::Ready(())
        } else {
            Poll::Pending("the GPU agent did not register".to_owned())
        })
    })
    .await?;
    let _cpu_only = FakeAgent::register(&allocator, 1.0, 512.0).await?;

    // Without GPU_RESOURCES: the CPU-only agent is offered, the GPU agent never.
    let mut plain = Framework::named(&allocator, "cpu-only").await?;
    let offers = offers_within(&mut plain, Duration::from_secs(3)).await?;
    ensure!(
        offers.iter().any(|o| o.hostname == "fake-host"),
        "the CPU-only agent was not offered: {offers:?}"
    );
    ensure!(
        offers
            .iter()
            .all(|o| o.hostname != GPU_HOST && scalar_sum(&o.resources, names::GPUS) == 0.0),
        "a framework without GPU_RESOURCES was offered the GPU agent: {offers:?}"
    );

    // With it: the GPU agent, its GPU and its model.
    let mut gpu = Framework::subscribe(
        &allocator,
        FrameworkInfo {
            name: "gpu-user".to_owned(),
            capabilities: vec![FrameworkCapability::GpuResources as i32],
            ..FrameworkInfo::default()
        },
    )
    .await?;
    let offer = gpu
        .wait_for("the GPU agent's offer", |e| match e {
            event::Event::Offers(o) => o.offers.into_iter().find(|o| o.hostname == GPU_HOST),
            _ => None,
        })
        .await?;
    assert_eq!(scalar_sum(&offer.resources, names::GPUS), 1.0);
    let model = offer
        .attributes
        .iter()
        .find(|a| a.name == "gpu_model")
        .context("no gpu_model attribute")?;
    assert_eq!(model.value, "Fake GPU 80GB");

    let _ = stop.send(());
    tokio::time::timeout(STEP, agent).await???;
    Ok(())
}
