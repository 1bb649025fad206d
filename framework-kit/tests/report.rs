//! The edge reports what its core runs (`Decide::workloads`) to a real in-process allocator:
//! the first report right after subscribing, later ones only when changed and at most one per
//! `REPORT_INTERVAL` (a burst of changes goes as its last state), as the dashboard's event
//! stream shows them.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use strata_allocator::mesos::Leadership;
use strata_framework::proto::{TaskStatus, Workload};
use strata_framework::{Event, FrameworkBuilder};
use strata_framework_kit::command::Command;
use strata_framework_kit::edge::{self, Decide, REPORT_INTERVAL, Request};
use strata_test_support::allocator::Allocator;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// A core whose one app's wanted count the API sets.
#[derive(Debug, Default)]
struct Counter {
    wanted: u32,
}

impl Decide for Counter {
    type Op = u32;
    type Answer = ();

    fn event(&mut self, _event: Event) {}

    fn request(&mut self, op: u32) {
        self.wanted = op;
    }

    fn tick(&mut self) {}

    fn update(&mut self, _status: &TaskStatus) {}

    fn take_commands(&mut self) -> Vec<Command> {
        Vec::new()
    }

    fn saved(&self, _framework_id: &str) -> Vec<u8> {
        Vec::new()
    }

    fn workloads(&self) -> Option<Vec<Workload>> {
        Some(vec![Workload {
            kind: "app".into(),
            id: "web".into(),
            state: "running".into(),
            instances_wanted: self.wanted,
            ..Workload::default()
        }])
    }
}

/// The dashboard's event stream, read for `workloads` changes.
struct Stream {
    tcp: TcpStream,
    text: String,
    seen: usize,
}

impl Stream {
    async fn open(addr: std::net::SocketAddr) -> Result<Self> {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.write_all(b"GET /ui/api/stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        Ok(Self {
            tcp,
            text: String::new(),
            seen: 0,
        })
    }

    /// The wanted count of the next `workloads` change (SSE events are one chunk each, so a
    /// `data:` line arrives whole).
    async fn next_wanted(&mut self) -> Result<u32> {
        loop {
            while let Some(start) = self.text[self.seen..].find("data: ") {
                let from = self.seen + start + "data: ".len();
                let Some(len) = self.text[from..].find('\n') else {
                    break;
                };
                self.seen = from + len;
                let data: Value = serde_json::from_str(&self.text[from..from + len])?;
                if let Some(change) = data
                    .as_array()
                    .and_then(|a| a.iter().find(|c| c["k"] == "workloads"))
                {
                    return change["workloads"][0]["wanted"]
                        .as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .context("a wanted count");
                }
            }
            let mut buf = [0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(10), self.tcp.read(&mut buf))
                .await
                .context("no workloads change within 10 s")??;
            ensure!(n > 0, "the stream ended");
            self.text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
}

#[tokio::test]
async fn reports_are_sent_after_subscribing_and_debounced() -> Result<()> {
    let allocator = Allocator::with_mesos(Leadership::Leader).await?;
    let mut stream = Stream::open(allocator.http()).await?;
    let (client, mut events) = FrameworkBuilder::new(format!("http://{}", allocator.grpc))
        .name("reporter")
        .subscribe()
        .await?;
    let (requests_tx, mut requests) = mpsc::channel::<Request<u32, ()>>(64);
    let (stop, stopped) = oneshot::channel::<()>();
    let driver = tokio::spawn(async move {
        let mut core = Counter::default();
        edge::drive(
            &mut core,
            &client,
            &mut events,
            &mut requests,
            async {
                let _ = stopped.await;
            },
            |_| Ok::<(), std::io::Error>(()),
        )
        .await
    });

    // The first report goes at once after subscribing.
    assert_eq!(stream.next_wanted().await?, 0);
    // A burst of changes: each answered at once, reported at most once per interval, the
    // last state certainly.
    let burst = std::time::Instant::now();
    for wanted in 1..=40 {
        let (reply, answer) = oneshot::channel();
        requests_tx.send(Request { op: wanted, reply }).await?;
        answer.await?;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut reports = 0u32;
    loop {
        let wanted = stream.next_wanted().await?;
        reports += 1;
        if wanted == 40 {
            break;
        }
    }
    let elapsed = burst.elapsed();
    let most = u32::try_from(elapsed.as_millis() / REPORT_INTERVAL.as_millis())? + 1;
    assert!(
        reports <= most,
        "{reports} reports in {elapsed:?}, more than one per {REPORT_INTERVAL:?}"
    );
    assert!(
        reports < 40,
        "{reports} reports for 40 changes: not debounced"
    );
    let _ = stop.send(());
    driver.await??;
    allocator.shutdown().await
}
