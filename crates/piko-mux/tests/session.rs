//! Two of our sessions talking to each other: data integrity under concurrency, large transfers
//! and random interleavings of every stream operation.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use piko_mux::{Config, Session, Stream};
use proptest::prelude::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn sessions(pipe_capacity: usize, config: &Config) -> (Session, Session) {
    let (a, b) = tokio::io::duplex(pipe_capacity);
    (
        Session::client(a, config.clone()),
        Session::server(b, config.clone()),
    )
}

/// Echoes every accepted stream until EOF, then half-closes.
fn spawn_echo(session: Session) {
    tokio::spawn(async move {
        while let Ok(stream) = session.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = tokio::io::split(stream);
                tokio::io::copy(&mut rd, &mut wr).await.unwrap();
                wr.shutdown().await.unwrap();
            });
        }
    });
}

async fn echo_round_trip(stream: Stream, payload: Vec<u8>) -> Vec<u8> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        wr.write_all(&payload).await.unwrap();
        wr.shutdown().await.unwrap();
        wr
    });
    let mut got = Vec::new();
    rd.read_to_end(&mut got).await.unwrap();
    drop(writer.await.unwrap());
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_on_256_concurrent_streams_both_directions() {
    let (client, server) = sessions(64 * 1024, &Config::default());
    spawn_echo(client.clone());
    spawn_echo(server.clone());
    let mut tasks = Vec::new();
    for i in 0..256 {
        let opener = if i % 2 == 0 {
            client.clone()
        } else {
            server.clone()
        };
        tasks.push(tokio::spawn(async move {
            let stream = opener.open().await.unwrap();
            let payload = pattern(1000 + i * 97);
            assert_eq!(echo_round_trip(stream, payload.clone()).await, payload);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way() {
    let (client, server) = sessions(256 * 1024, &Config::default());
    spawn_echo(client);
    let stream = server.open().await.unwrap();
    let payload = pattern(64 << 20);
    let got = echo_round_trip(stream, payload.clone()).await;
    assert!(got == payload, "64 MiB echo differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reader_holds_the_writer_and_loses_nothing() {
    let (client, server) = sessions(1 << 20, &Config::default());
    let mut stream = server.open().await.unwrap();
    let payload = pattern(4 << 20);
    let writer = tokio::spawn({
        let payload = payload.clone();
        async move {
            stream.write_all(&payload).await.unwrap();
            stream.shutdown().await.unwrap();
            stream
        }
    });
    let mut accepted = client.accept().await.unwrap();
    // Let the writer run into the window before reading anything.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !writer.is_finished(),
        "writer finished without the reader reading"
    );
    let mut got = Vec::new();
    accepted.read_to_end(&mut got).await.unwrap();
    assert!(got == payload);
    writer.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_lets_the_reply_through() {
    let (client, server) = sessions(64 * 1024, &Config::default());
    let mut stream = server.open().await.unwrap();
    stream.write_all(b"question").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut accepted = client.accept().await.unwrap();
    let mut question = Vec::new();
    accepted.read_to_end(&mut question).await.unwrap();
    assert_eq!(question, b"question");
    accepted.write_all(b"answer").await.unwrap();
    accepted.shutdown().await.unwrap();
    drop(accepted);
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"answer");
    drop(stream);
    // Both FINs seen and both handles gone: nothing is left behind.
    wait_until(|| client.num_streams() == 0 && server.num_streams() == 0).await;
}

async fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---- random interleavings ---------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// Write everything, shutdown, read to EOF.
    Finish,
    /// Write everything, shutdown, stop reading and drop.
    Abandon,
    /// Write part, then reset.
    Reset,
}

#[derive(Clone, Debug)]
struct StreamPlan {
    opened_by_client: bool,
    opener_sends: Vec<Vec<u8>>,
    acceptor_sends: Vec<Vec<u8>>,
    opener_ending: Ending,
    acceptor_ending: Ending,
}

#[derive(Clone, Debug)]
struct Plan {
    streams: Vec<StreamPlan>,
    /// Side (true = client) that sends GoAway, and before which of its own opens.
    go_away: Option<(bool, usize)>,
    pipe_capacity: usize,
}

fn ending() -> impl Strategy<Value = Ending> {
    prop_oneof![4 => Just(Ending::Finish), 1 => Just(Ending::Abandon), 1 => Just(Ending::Reset)]
}

fn chunks() -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            (1usize..300_000).prop_map(pattern),
        ],
        0..4,
    )
}

fn plan() -> impl Strategy<Value = Plan> {
    let stream = (any::<bool>(), chunks(), chunks(), ending(), ending()).prop_map(
        |(opened_by_client, opener_sends, acceptor_sends, opener_ending, acceptor_ending)| {
            StreamPlan {
                opened_by_client,
                opener_sends,
                acceptor_sends,
                opener_ending,
                acceptor_ending,
            }
        },
    );
    (
        proptest::collection::vec(stream, 1..6),
        proptest::option::of((any::<bool>(), 0usize..4)),
        prop_oneof![Just(64usize), Just(4096), Just(1 << 20)],
    )
        .prop_map(|(streams, go_away, pipe_capacity)| Plan {
            streams,
            go_away,
            pipe_capacity,
        })
}

type Received = Arc<Mutex<HashMap<(usize, bool), Vec<u8>>>>;

/// Runs one side of one stream; records what it read under `(plan index, is_opener)`.
async fn drive(
    stream: Stream,
    sends: Vec<Vec<u8>>,
    ending: Ending,
    key: (usize, bool),
    received: Received,
    already: Vec<u8>,
) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let record = received.clone();
    let reader = async move {
        let mut got = already;
        let read = read_until_end(&mut rd, &mut got);
        if ending == Ending::Finish {
            read.await;
        } else {
            tokio::select! { _ = read => {}, _ = stop_rx => {} }
        }
        record.lock().unwrap().insert(key, got);
        rd
    };
    let writer = async move {
        let last = if ending == Ending::Reset {
            sends.len() / 2
        } else {
            sends.len()
        };
        for chunk in &sends[..last] {
            if wr.write_all(chunk).await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
        if ending != Ending::Reset {
            let _ = wr.shutdown().await;
        }
        if ending != Ending::Finish {
            let _ = stop_tx.send(());
        } else {
            std::mem::forget(stop_tx);
        }
        wr
    };
    let (rd, wr) = tokio::join!(reader, writer);
    let mut stream = rd.unsplit(wr);
    if ending == Ending::Reset {
        stream.reset();
    }
}

async fn read_until_end(rd: &mut (impl AsyncRead + Unpin), got: &mut Vec<u8>) {
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = rd.read(&mut buf).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// What the opener writes: the plan index first, so the acceptor knows which plan it has.
fn opener_bytes(index: usize, plan: &StreamPlan) -> Vec<Vec<u8>> {
    let mut sends = vec![vec![index as u8]];
    sends.extend(plan.opener_sends.iter().cloned());
    sends
}

async fn run_plan(plan: Plan) {
    let config = Config::default();
    let (client, server) = sessions(plan.pipe_capacity, &config);
    let received: Received = Arc::default();
    let accepted: Arc<Mutex<Vec<usize>>> = Arc::default();
    let mut tasks = Vec::new();
    for (session, is_client) in [(client.clone(), true), (server.clone(), false)] {
        let plans = plan.streams.clone();
        let received = received.clone();
        let accepted = accepted.clone();
        tasks.push(tokio::spawn(async move {
            let mut handlers = Vec::new();
            while let Ok(stream) = session.accept().await {
                let plans = plans.clone();
                let received = received.clone();
                let accepted = accepted.clone();
                handlers.push(tokio::spawn(async move {
                    let mut stream = stream;
                    let mut index = [0u8; 1];
                    if stream.read_exact(&mut index).await.is_err() {
                        return;
                    }
                    let index = index[0] as usize;
                    accepted.lock().unwrap().push(index);
                    let p = &plans[index];
                    drive(
                        stream,
                        p.acceptor_sends.clone(),
                        p.acceptor_ending,
                        (index, false),
                        received,
                        index.to_be_bytes()[7..].to_vec(),
                    )
                    .await;
                }));
            }
            let _ = is_client;
            for handler in handlers {
                handler.await.unwrap();
            }
        }));
    }
    let mut openers = Vec::new();
    for (session, is_client) in [(client.clone(), true), (server.clone(), false)] {
        let streams = plan.streams.clone();
        let received = received.clone();
        let go_away = plan.go_away;
        openers.push(tokio::spawn(async move {
            let mut drivers = Vec::new();
            let mine = streams
                .iter()
                .enumerate()
                .filter(|(_, s)| s.opened_by_client == is_client);
            for (n, (index, stream_plan)) in mine.enumerate() {
                if go_away == Some((is_client, n)) {
                    session.go_away();
                }
                let Ok(stream) = session.open().await else {
                    continue;
                };
                let sends = opener_bytes(index, stream_plan);
                let ending = stream_plan.opener_ending;
                drivers.push(tokio::spawn(drive(
                    stream,
                    sends,
                    ending,
                    (index, true),
                    received.clone(),
                    Vec::new(),
                )));
            }
            for driver in drivers {
                driver.await.unwrap();
            }
        }));
    }
    for opener in openers {
        opener.await.unwrap();
    }
    // Every stream has been driven to its end on the opening side; the accepting side finishes
    // once its streams do. Then the sessions close and the accept loops end.
    wait_until_async(&received, &accepted).await;
    client.close();
    server.close();
    for task in tasks {
        task.await.unwrap();
    }

    let received = received.lock().unwrap();
    let accepted = accepted.lock().unwrap();
    for (index, stream) in plan.streams.iter().enumerate() {
        let opener_sent = opener_bytes(index, stream).concat();
        let acceptor_sent = [vec![index as u8], stream.acceptor_sends.concat()].concat();
        let by_acceptor = received.get(&(index, false)).cloned().unwrap_or_default();
        let by_opener = received.get(&(index, true)).cloned().unwrap_or_default();
        assert!(
            opener_sent.starts_with(&by_acceptor),
            "stream {index}: acceptor got a non-prefix"
        );
        // The opener's record does not include the acceptor's echo of the index byte.
        assert!(
            acceptor_sent[1..].starts_with(&by_opener),
            "stream {index}: opener got a non-prefix"
        );
        let clean =
            stream.opener_ending != Ending::Reset && stream.acceptor_ending != Ending::Reset;
        if clean && accepted.contains(&index) {
            if stream.acceptor_ending == Ending::Finish {
                assert_eq!(
                    by_acceptor.len(),
                    opener_sent.len(),
                    "stream {index}: acceptor missed data"
                );
            }
            if stream.opener_ending == Ending::Finish {
                assert_eq!(
                    by_opener.len(),
                    acceptor_sent.len() - 1,
                    "stream {index}: opener missed data"
                );
            }
        }
    }
}

/// The accepting side records its result when its reader ends; give it a bounded time to do so.
async fn wait_until_async(received: &Received, accepted: &Arc<Mutex<Vec<usize>>>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let done = {
            let received = received.lock().unwrap();
            accepted
                .lock()
                .unwrap()
                .iter()
                .all(|index| received.contains_key(&(*index, false)))
        };
        if done {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "accepting side never finished"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever the interleaving, each side receives a prefix of what the other sent, all of it
    /// when neither side reset, and every run terminates.
    #[test]
    fn random_interleavings_deliver_prefixes(plan in plan()) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), run_plan(plan))
                .await
                .expect("run did not terminate");
        });
    }
}
