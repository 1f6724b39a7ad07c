//! Faults between real processes, put there by a fault proxy (delay, drop, reset, stall): agents
//! recover, no request is ever answered with another request's bytes, and every failure is
//! visible to the client (a status, a reset or an early end), never a short body passed off as
//! complete.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{PATIENCE, Process, agent_http, ok_service, start_server};
use piko_testkit::fault_proxy::{Fault, FaultProxy};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

/// How one request ended, as its client saw it.
#[derive(Debug)]
enum Answer {
    /// A whole response: status and body.
    Complete(u16, String),
    /// The connection failed, ended or went silent before the response was whole.
    Failed,
}

/// One keep-alive client connection speaking just enough HTTP/1.1: `content-length` bodies.
struct Client {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Option<Self> {
        let tcp = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
        let (reader, writer) = tcp.into_split();
        Some(Self {
            reader: BufReader::new(reader),
            writer,
        })
    }

    /// `GET /<id>` for `endpoint`, answered within `limit`.
    async fn get(&mut self, endpoint: &str, id: &str, limit: Duration) -> Answer {
        let exchange = async {
            let request = format!("GET /{id} HTTP/1.1\r\nhost: {endpoint}.example.com\r\n\r\n");
            self.writer.write_all(request.as_bytes()).await.ok()?;
            let mut line = String::new();
            if self.reader.read_line(&mut line).await.ok()? == 0 {
                return None;
            }
            let status: u16 = line.get(9..12)?.parse().ok()?;
            let mut length = None;
            loop {
                line.clear();
                if self.reader.read_line(&mut line).await.ok()? == 0 {
                    return None;
                }
                if line == "\r\n" {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse::<usize>().ok();
                }
            }
            let mut body = vec![0u8; length?];
            self.reader.read_exact(&mut body).await.ok()?;
            Some(Answer::Complete(
                status,
                String::from_utf8_lossy(&body).into_owned(),
            ))
        };
        tokio::time::timeout(limit, exchange)
            .await
            .ok()
            .flatten()
            .unwrap_or(Answer::Failed)
    }
}

/// A request on a fresh connection, until one is answered 200 with its own body (bounded).
async fn until_served(proxy: SocketAddr, endpoint: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for n in 0.. {
        if let Some(mut client) = Client::connect(proxy).await {
            let id = format!("probe-{n}");
            if let Answer::Complete(200, body) =
                client.get(endpoint, &id, Duration::from_secs(2)).await
            {
                assert_eq!(body, format!("ok /{id}"));
                return;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Counts of what `clients` connections saw while sending requests through `proxy` for
/// `endpoint` during `period` (served, failed visibly); panics on a complete answer that is not
/// its own request's.
async fn traffic(
    proxy: SocketAddr,
    endpoint: &'static str,
    clients: usize,
    period: Duration,
) -> (usize, usize) {
    let end = tokio::time::Instant::now() + period;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            tokio::spawn(async move {
                let (mut served, mut failed) = (0, 0);
                let mut client = None;
                for n in 0.. {
                    if tokio::time::Instant::now() >= end {
                        break;
                    }
                    if client.is_none() {
                        client = Client::connect(proxy).await;
                    }
                    let Some(open) = client.as_mut() else {
                        failed += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    let id = format!("c{c}-r{n}");
                    match open.get(endpoint, &id, Duration::from_secs(2)).await {
                        Answer::Complete(200, body) => {
                            assert_eq!(
                                body,
                                format!("ok /{id}"),
                                "answered with another request's bytes"
                            );
                            served += 1;
                        }
                        // A status is a visible failure; the connection may go on.
                        Answer::Complete(status, _) => {
                            assert!(status >= 500, "unexpected status {status}");
                            failed += 1;
                        }
                        Answer::Failed => {
                            failed += 1;
                            client = None;
                            // As a client would back off before trying again.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                (served, failed)
            })
        })
        .collect();
    let mut totals = (0, 0);
    for task in tasks {
        let (served, failed) = task.await.unwrap();
        totals.0 += served;
        totals.1 += failed;
    }
    totals
}

/// Cycles `faults` on `proxy` until `stop` fires: each fault for a moment, then a pass.
fn cycle_faults(
    proxy: std::sync::Arc<FaultProxy>,
    faults: Vec<Fault>,
) -> tokio::sync::oneshot::Sender<()> {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        for fault in faults.iter().cycle() {
            proxy.set(*fault);
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = &mut stopped => break,
            }
            proxy.set(Fault::Pass);
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(400)) => {}
                _ = &mut stopped => break,
            }
        }
        proxy.set(Fault::Pass);
    });
    stop
}

/// A server, and an agent for `endpoint` whose connection to the upstream port goes through a
/// fault proxy.
async fn agent_behind_faults(
    endpoint: &str,
) -> (Process, Process, std::sync::Arc<FaultProxy>, SocketAddr) {
    let service = ok_service().await;
    let (mut server, _admin, upstream, proxy) = start_server(&[]).await;
    let faults = FaultProxy::start("127.0.0.1:0", upstream.parse().unwrap())
        .await
        .unwrap();
    let agent = agent_http(
        endpoint,
        &service.to_string(),
        &faults.addr().to_string(),
        &[],
    );
    server.wait_log("upstream connected").await;
    (
        server,
        agent,
        std::sync::Arc::new(faults),
        proxy.parse().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_recovers_from_resets_delays_and_stalls() {
    let (_server, _agent, faults, proxy) = agent_behind_faults("web").await;
    until_served(proxy, "web").await;

    for fault in [
        Fault::Reset,
        Fault::Delay(Duration::from_millis(100)),
        Fault::Stall,
        Fault::Reset,
    ] {
        faults.set(fault);
        // Requests made meanwhile fail visibly or are served; none is mixed up.
        let _ = traffic(proxy, "web", 2, Duration::from_millis(500)).await;
        faults.set(Fault::Pass);
        until_served(proxy, "web").await;
    }
    // Every reset made the agent connect again.
    assert!(faults.accepted() >= 3, "{} connections", faults.accepted());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_between_agent_and_server_never_mix_up_answers() {
    let (_server, _agent, faults, proxy) = agent_behind_faults("web").await;
    until_served(proxy, "web").await;
    let stop = cycle_faults(
        faults.clone(),
        vec![
            Fault::Reset,
            Fault::Delay(Duration::from_millis(30)),
            Fault::Stall,
        ],
    );
    let (served, failed) = traffic(proxy, "web", 8, Duration::from_secs(6)).await;
    let _ = stop.send(());
    println!("agent side: {served} served, {failed} failed visibly");
    assert!(served > 0, "nothing was served");
    until_served(proxy, "web").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_between_client_and_server_never_mix_up_answers() {
    let service = ok_service().await;
    let (mut server, _admin, upstream, proxy) = start_server(&[]).await;
    let _agent = agent_http("web", &service.to_string(), &upstream, &[]);
    server.wait_log("upstream connected").await;
    let proxy: SocketAddr = proxy.parse().unwrap();
    until_served(proxy, "web").await;
    let faults = std::sync::Arc::new(FaultProxy::start("127.0.0.1:0", proxy).await.unwrap());
    let stop = cycle_faults(
        faults.clone(),
        vec![
            Fault::Reset,
            Fault::Drop,
            Fault::Delay(Duration::from_millis(30)),
            Fault::Stall,
        ],
    );
    let (served, failed) = traffic(faults.addr(), "web", 8, Duration::from_secs(6)).await;
    let _ = stop.send(());
    println!("client side: {served} served, {failed} failed visibly");
    assert!(served > 0 && failed > 0, "{served} served, {failed} failed");
    // The node serves on.
    until_served(proxy, "web").await;
}
