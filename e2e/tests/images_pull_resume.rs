//! Pulls that are interrupted resume instead of starting over: a TCP proxy between berth and
//! the registry cuts connections mid-blob (the pull resumes with Range requests and completes
//! with the right digests), and berth-image killed with SIGKILL mid-pull leaves an ingest the
//! next pull continues from.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_api::berth::image::v1::transfer_client::TransferClient;
use berth_api::berth::image::v1::{BlobState, PullProgress, PullRequest, pull_progress};
use berth_e2e::content::{in_namespace, read_all};
use berth_e2e::images::{self, large, layered};
use berth_e2e::registry::Registry;
use berth_e2e::{Stack, procs};
use containerd_client::services::v1::ListStatusesRequest;
use containerd_client::services::v1::content_client::ContentClient;
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to the registry's answers.
#[derive(Default)]
struct Plan {
    /// Cut a connection once it has carried this many response bytes...
    cut_after: Option<u64>,
    /// ...this many times.
    cuts_left: usize,
    /// Response bytes per second, per connection.
    rate: Option<u64>,
    /// Connections cut so far.
    cuts: usize,
}

/// A TCP proxy on loopback in front of `upstream`.
struct Proxy {
    addr: SocketAddr,
    plan: Arc<Mutex<Plan>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr, plan: Plan) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let plan = Arc::new(Mutex::new(plan));
        let shared = plan.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let plan = shared.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, plan).await;
                    }
                });
            }
        });
        Proxy { addr, plan, task }
    }

    fn set(&self, change: impl FnOnce(&mut Plan)) {
        change(&mut self.plan.lock().unwrap());
    }

    fn cuts(&self) -> usize {
        self.plan.lock().unwrap().cuts
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, server: TcpStream, plan: Arc<Mutex<Plan>>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upload = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
    });
    let mut carried = 0u64;
    let started = Instant::now();
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match server_read.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let (cut, rate) = {
            let mut plan = plan.lock().unwrap();
            let cut = plan.cuts_left > 0 && plan.cut_after.is_some_and(|limit| carried + n as u64 > limit);
            if cut {
                plan.cuts_left -= 1;
                plan.cuts += 1;
            }
            (cut, plan.rate)
        };
        if cut {
            // Send what fits under the limit, then drop the connection mid-answer.
            break;
        }
        if client_write.write_all(&buffer[..n]).await.is_err() {
            break;
        }
        carried += n as u64;
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(carried as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    upload.abort();
}

fn request(reference: &str) -> PullRequest {
    PullRequest { reference: reference.to_string(), plain_http: true, ..Default::default() }
}

/// Runs a pull to its end: the events, and the image or the error.
async fn pull(stack: &Stack, request: PullRequest) -> (Vec<PullProgress>, Result<(), tonic::Status>) {
    let mut client = TransferClient::new(stack.channel());
    let mut stream = match client.pull(in_namespace(request, "default")).await {
        Ok(response) => response.into_inner(),
        Err(status) => return (Vec::new(), Err(status)),
    };
    let mut events = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(event)) => events.push(event),
            Ok(None) => break,
            Err(status) => return (events, Err(status)),
        }
    }
    let done = events.iter().any(|e| matches!(e.event, Some(pull_progress::Event::Image(_))));
    (events, if done { Ok(()) } else { Err(tonic::Status::internal("no image at the end of the stream")) })
}

/// The largest `resumed_from` reported for each blob.
fn resumed(events: &[PullProgress]) -> HashMap<String, i64> {
    let mut resumed: HashMap<String, i64> = HashMap::new();
    for event in events {
        if let Some(pull_progress::Event::Blob(blob)) = &event.event
            && blob.state() == BlobState::Downloading
        {
            let entry = resumed.entry(blob.digest.clone()).or_default();
            *entry = (*entry).max(blob.resumed_from);
        }
    }
    resumed
}

fn registry_addr(registry: &Registry) -> SocketAddr {
    registry.addr().parse().unwrap()
}

#[tokio::test]
async fn a_pull_through_connections_cut_mid_blob_resumes_and_completes() {
    let registry = Registry::start();
    let image = layered();
    images::push(&registry, image, "cut/layered:1");
    let plan = Plan { cut_after: Some(96 * 1024), cuts_left: 8, ..Default::default() };
    let proxy = Proxy::start(registry_addr(&registry), plan).await;
    let stack = Stack::start().await;

    let reference = format!("{}/cut/layered:1", proxy.addr);
    let (events, outcome) = pull(&stack, request(&reference)).await;
    outcome.unwrap_or_else(|status| panic!("pull through a cutting proxy failed: {status:?}\n{}", stack.logs()));
    assert!(proxy.cuts() >= 2, "the proxy cut connections ({} cuts)", proxy.cuts());
    let resumed = resumed(&events);
    assert!(resumed.values().any(|r| *r > 0), "some download resumed mid-blob: {resumed:?}");

    let mut content = ContentClient::new(stack.containerd_channel().await);
    let manifest = image.manifest();
    for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
        let data = read_all(&mut content, "default", &blob.digest).await.unwrap();
        assert_eq!(berth_e2e::digest_of(&data), blob.digest);
    }
}

#[tokio::test]
async fn after_berth_image_is_killed_mid_pull_the_next_pull_resumes() {
    let registry = Registry::start();
    let image = large(8, 1);
    images::push(&registry, image, "slow/large:1");
    // 1 MiB/s: the 8 MiB layer takes long enough to kill the service in the middle.
    let plan = Plan { rate: Some(1 << 20), ..Default::default() };
    let proxy = Proxy::start(registry_addr(&registry), plan).await;
    let stack = Stack::start().await;
    let reference = format!("{}/slow/large:1", proxy.addr);
    let layer = &image.manifest().layers[0];

    let first = tokio::spawn({
        let mut client = TransferClient::new(stack.channel());
        let request = in_namespace(request(&reference), "default");
        async move {
            let mut stream = client.pull(request).await?.into_inner();
            while stream.message().await?.is_some() {}
            Ok::<_, tonic::Status>(())
        }
    });
    // Wait until the layer's ingest holds a few MiB.
    let mut content = ContentClient::new(stack.containerd_channel().await);
    let ingest_ref = format!("layer-{}", layer.digest);
    let deadline = Instant::now() + Duration::from_secs(30);
    let offset = loop {
        let statuses = content
            .list_statuses(in_namespace(ListStatusesRequest { filters: vec![] }, "default"))
            .await
            .unwrap()
            .into_inner()
            .statuses;
        let offset = statuses.iter().find(|s| s.r#ref == ingest_ref).map_or(0, |s| s.offset);
        if offset >= 2 << 20 {
            break offset;
        }
        assert!(Instant::now() < deadline, "the layer's ingest did not grow: {statuses:?}\n{}", stack.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let pid = stack.wait_service_pid("berth-image", Duration::from_secs(5));
    procs::signal(pid, Signal::SIGKILL);
    let outcome = first.await.unwrap();
    assert!(outcome.is_err(), "the watched pull ends when the service dies");
    // berthd starts berth-image again.
    assert!(
        procs::wait_until(Duration::from_secs(20), || stack.service_pids("berth-image").iter().any(|p| *p != pid)),
        "berth-image was not restarted:\n{}",
        stack.logs()
    );

    proxy.set(|plan| plan.rate = None);
    let mut second = None;
    // The restarted service may take a moment to answer through the gateway.
    for _ in 0..50 {
        let attempt = pull(&stack, request(&reference)).await;
        match &attempt.1 {
            Err(status) if status.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => {
                second = Some(attempt);
                break;
            }
        }
    }
    let (events, outcome) = second.expect("berth-image answered again");
    outcome.unwrap_or_else(|status| panic!("second pull failed: {status:?}"));
    let resumed = resumed(&events);
    let from = resumed.get(&layer.digest).copied().unwrap_or_default();
    assert!(from >= offset, "the layer resumed from {from}, the ingest held {offset} bytes: {resumed:?}");
    let data = read_all(&mut content, "default", &layer.digest).await.unwrap();
    assert_eq!(berth_e2e::digest_of(&data), layer.digest);
}
