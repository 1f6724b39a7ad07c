//! The SDK's two TCP halves against a real server node: `Upstream::listen_and_forward` in front
//! of a local service, reached with `Dialer::dial`.

use std::time::Duration;

use piko_server::{Config, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server node on loopback ports: its proxy and upstream addresses, and its routing table.
async fn start_server() -> (
    std::net::SocketAddr,
    std::net::SocketAddr,
    std::sync::Arc<piko_server::Upstreams>,
) {
    let server = Server::bind(Config {
        proxy_bind_addr: "127.0.0.1:0".into(),
        upstream_bind_addr: "127.0.0.1:0".into(),
        admin_bind_addr: "127.0.0.1:0".into(),
        gossip_bind_addr: "127.0.0.1:0".into(),
        ..Config::default()
    })
    .await
    .unwrap();
    let addrs = (
        server.proxy_addr(),
        server.upstream_addr(),
        server.upstreams(),
    );
    tokio::spawn(server.run(std::future::pending()));
    addrs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_reaches_a_forwarded_local_service() {
    let (proxy, upstream, upstreams) = start_server().await;

    // A local service that answers with the upper-cased request, once the request has ended.
    let service = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service_addr = service.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = service.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                tcp.read_to_end(&mut request).await.unwrap();
                tcp.write_all(&request.to_ascii_uppercase()).await.unwrap();
            });
        }
    });

    let forwarder = piko::Upstream::new(format!("http://{upstream}"))
        .listen_and_forward("shout", service_addr.to_string())
        .await
        .unwrap();
    let mut changes = upstreams.subscribe();
    tokio::time::timeout(
        Duration::from_secs(10),
        changes.wait_for(|_| upstreams.count("shout") == 1),
    )
    .await
    .unwrap()
    .unwrap();

    let dialer = piko::Dialer::new(format!("http://{proxy}"));
    let mut conn = dialer.dial("shout").await.unwrap();
    assert_eq!(conn.server_addr(), proxy);
    conn.write_all(b"hello").await.unwrap();
    conn.shutdown().await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, b"HELLO");

    // Closing stops the registration: the endpoint is gone, and the forwarder ends.
    forwarder.close();
    tokio::time::timeout(Duration::from_secs(10), forwarder.wait())
        .await
        .expect("forwarder never ended")
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        changes.wait_for(|_| upstreams.count("shout") == 0),
    )
    .await
    .expect("the server kept the closed forwarder's upstream")
    .unwrap();
    let err = dialer.dial("shout").await.unwrap_err();
    assert_eq!(err.to_string(), "502: no available upstreams");
}

/// A TLS terminator for `localhost` in front of `backend`, with a certificate from a fresh CA.
/// Returns its address and the CA's PEM file.
async fn tls_terminator(backend: std::net::SocketAddr) -> (std::net::SocketAddr, TempPem) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls_pki_types::{PrivateKeyDer, pem::PemObject};

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (addr, TempPem::new(&ca.pem()))
}

/// A PEM file removed when dropped.
struct TempPem(std::path::PathBuf);

impl TempPem {
    fn new(pem: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("piko-sdk-ca-{}-{n}.pem", std::process::id()));
        std::fs::write(&path, pem).unwrap();
        Self(path)
    }
}

impl Drop for TempPem {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_and_dialers_reach_a_server_behind_tls() {
    let (proxy, upstream, _) = start_server().await;
    let (tls_upstream, ca) = tls_terminator(upstream).await;
    let (tls_proxy, _other_ca) = tls_terminator(proxy).await;

    let trusted = piko::ClientTls {
        root_cas: Some(ca.0.clone()),
        ..Default::default()
    }
    .config_or_system()
    .unwrap();
    let mut listener = piko::Upstream::new(format!("https://localhost:{}", tls_upstream.port()))
        .tls(trusted)
        .listen("secure")
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok(mut stream) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.write_all(b"over tls").await;
                let _ = stream.shutdown().await;
            });
        }
    });

    // The proxy's terminator has a certificate from another CA: only skipping verification
    // reaches it, and the system's roots refuse it.
    let url = format!("https://localhost:{}", tls_proxy.port());
    let refused = piko::Dialer::new(&url).dial("secure").await.unwrap_err();
    assert!(refused.to_string().contains("certificate"), "{refused}");
    let insecure = piko::ClientTls {
        insecure_skip_verify: true,
        ..Default::default()
    }
    .config_or_system()
    .unwrap();
    let mut conn = piko::Dialer::new(&url)
        .tls(insecure)
        .dial("secure")
        .await
        .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, b"over tls");
}

/// A one-connection-at-a-time HTTP CONNECT proxy that requires `alice:secret`; counts tunnels.
async fn connect_proxy(tunnels: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let tunnels = tunnels.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    head.push(client.read_u8().await.unwrap());
                }
                let head = String::from_utf8(head).unwrap();
                let target = head.split_whitespace().nth(1).unwrap().to_owned();
                // alice:secret
                if !head.contains("Proxy-Authorization: Basic YWxpY2U6c2VjcmV0\r\n") {
                    let _ = client
                        .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                        .await;
                    return;
                }
                let mut server = tokio::net::TcpStream::connect(target).await.unwrap();
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                tunnels.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    format!("http://alice:secret@{addr}")
}

/// A SOCKS5 proxy (no authentication, domain or IPv4 targets); counts tunnels.
async fn socks5_proxy(tunnels: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let tunnels = tunnels.clone();
            tokio::spawn(async move {
                let mut greeting = [0u8; 2];
                client.read_exact(&mut greeting).await.unwrap();
                let mut methods = vec![0u8; usize::from(greeting[1])];
                client.read_exact(&mut methods).await.unwrap();
                assert!(methods.contains(&0));
                client.write_all(&[5, 0]).await.unwrap();
                let mut request = [0u8; 4];
                client.read_exact(&mut request).await.unwrap();
                let host = match request[3] {
                    1 => {
                        let mut ip = [0u8; 4];
                        client.read_exact(&mut ip).await.unwrap();
                        std::net::Ipv4Addr::from(ip).to_string()
                    }
                    3 => {
                        let mut name = vec![0u8; usize::from(client.read_u8().await.unwrap())];
                        client.read_exact(&mut name).await.unwrap();
                        String::from_utf8(name).unwrap()
                    }
                    other => panic!("address type {other}"),
                };
                let port = client.read_u16().await.unwrap();
                let mut server = tokio::net::TcpStream::connect((host.as_str(), port))
                    .await
                    .unwrap();
                client
                    .write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0])
                    .await
                    .unwrap();
                tunnels.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    format!("socks5://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_connect_through_connect_and_socks5_proxies() {
    let (proxy, upstream, _) = start_server().await;
    let upstream_url = format!("http://localhost:{}", upstream.port());
    let dialer = piko::Dialer::new(format!("http://{proxy}"));

    for (name, make_proxy) in [("connect", true), ("socks5", false)] {
        let tunnels = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let proxy_url = if make_proxy {
            connect_proxy(tunnels.clone()).await
        } else {
            socks5_proxy(tunnels.clone()).await
        };
        let mut listener = piko::Upstream::new(&upstream_url)
            .proxy(&proxy_url)
            .listen(name)
            .await
            .unwrap();
        assert_eq!(
            tunnels.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{name}"
        );
        tokio::spawn(async move {
            while let Ok(mut stream) = listener.accept().await {
                let _ = stream.write_all(b"via proxy").await;
                let _ = stream.shutdown().await;
            }
        });
        let mut conn = dialer.dial(name).await.unwrap();
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut reply))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply, b"via proxy", "{name}");
    }

    // Wrong credentials: the proxy's refusal is the error (retryable, like any failure without
    // the server's answer).
    let tunnels = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let proxy_url = connect_proxy(tunnels).await.replace("secret", "wrong");
    let refused = tokio::time::timeout(
        Duration::from_millis(500),
        piko::Upstream::new(&upstream_url)
            .proxy(proxy_url)
            .listen("refused"),
    )
    .await;
    assert!(refused.is_err(), "kept retrying until the caller gave up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_http_answers_through_the_proxy_and_drains_on_shutdown() {
    use http_body_util::Full;
    use hyper::{
        Request, Response,
        body::{Bytes, Incoming},
        service::service_fn,
    };

    let (proxy, upstream, upstreams) = start_server().await;
    let listener = piko::Upstream::new(format!("http://{upstream}"))
        .listen("web")
        .await
        .unwrap();
    let service = service_fn(|request: Request<Incoming>| async move {
        let text = format!("served {}", request.uri());
        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(text))))
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(piko::serve_http(listener, service, stopped));
    let mut changes = upstreams.subscribe();
    tokio::time::timeout(
        Duration::from_secs(10),
        changes.wait_for(|_| upstreams.count("web") == 1),
    )
    .await
    .unwrap()
    .unwrap();

    let mut tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(b"GET /page?x=1 HTTP/1.1\r\nhost: web.example.com\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("served /page?x=1"), "{response}");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("serve_http did not stop")
        .unwrap()
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        changes.wait_for(|_| upstreams.count("web") == 0),
    )
    .await
    .expect("the endpoint outlived its server")
    .unwrap();
}
