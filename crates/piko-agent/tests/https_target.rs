//! An agent in front of an `https://` local service with its own CA: trusted through `root_cas`,
//! refused without it (502), accepted with `insecure_skip_verify`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

mod common;

use piko_agent::{ClientTls, HttpConfig, Target};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls_pki_types::{PrivateKeyDer, pem::PemObject};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// A CA, and an HTTPS service for `localhost` with a certificate it issued. Returns the service
/// address and the CA's PEM.
async fn https_service() -> (SocketAddr, String) {
    https_service_with(false).await
}

/// With `h2`, the service also offers HTTP/2 by ALPN (and refuses connections that take it), and
/// answers upgrade requests with 101 then echoes bytes.
async fn https_service_with(h2: bool) -> (SocketAddr, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let mut server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
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
    if h2 {
        server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut chunk = [0u8; 1024];
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    // This service only speaks HTTP/1.1 behind its h2 offer.
                    return;
                }
                if String::from_utf8_lossy(&head)
                    .to_ascii_lowercase()
                    .contains("upgrade: websocket")
                {
                    let switched = b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n";
                    if tls.write_all(switched).await.is_err() {
                        return;
                    }
                    let (mut rd, mut wr) = tokio::io::split(tls);
                    let _ = tokio::io::copy(&mut rd, &mut wr).await;
                    return;
                }
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nsecure",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, ca.pem())
}

/// A server and an agent serving `endpoint` from `service` over https; the proxy's address.
async fn tunnel(
    endpoint: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    service: SocketAddr,
) -> SocketAddr {
    let target = Target::parse(&format!("https://localhost:{}", service.port())).unwrap();
    common::tunnel(
        endpoint,
        HttpConfig {
            tls,
            ..HttpConfig::new(target)
        },
    )
    .await
}

async fn status_through_agent(
    tls: Option<Arc<rustls::ClientConfig>>,
    service: SocketAddr,
) -> (u16, Vec<u8>) {
    let proxy = tunnel("secure", tls, service).await;
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: secure.example.com\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let status = String::from_utf8_lossy(&response[9..12]).parse().unwrap();
    let body_start = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    (status, response[body_start..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_targets_are_verified_against_the_configured_roots() {
    let (service, ca_pem) = https_service().await;
    let dir = std::env::temp_dir().join(format!("piko-agent-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca_pem).unwrap();

    let trusted = ClientTls {
        root_cas: Some(ca_path.clone()),
        ..Default::default()
    };
    let (status, body) = status_through_agent(trusted.client_config().unwrap(), service).await;
    assert_eq!(status, 200);
    assert!(body.ends_with(b"secure"));

    // The system's roots do not know this CA: the agent answers 502 rather than trusting it.
    let (status, body) = status_through_agent(None, service).await;
    assert_eq!(status, 502);
    assert_eq!(body, b"{\"error\":\"upstream unreachable\"}\n");

    let insecure = ClientTls {
        insecure_skip_verify: true,
        ..Default::default()
    };
    let (status, _) = status_through_agent(insecure.client_config().unwrap(), service).await;
    assert_eq!(status, 200);

    let missing = ClientTls {
        root_cas: Some(dir.join("missing.pem")),
        ..Default::default()
    };
    assert!(
        missing
            .client_config()
            .unwrap_err()
            .to_string()
            .contains("missing.pem")
    );
    let half = ClientTls {
        cert: Some(ca_path),
        ..Default::default()
    };
    assert_eq!(half.client_config().unwrap_err().to_string(), "missing key");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_to_https_targets_use_http1_even_when_h2_is_offered() {
    let (service, ca_pem) = https_service_with(true).await;
    let dir = std::env::temp_dir().join(format!("piko-agent-tls-h2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca_pem).unwrap();
    let tls = ClientTls {
        root_cas: Some(ca_path),
        ..Default::default()
    }
    .client_config()
    .unwrap();

    let proxy = tunnel("ws", tls, service).await;

    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(b"GET /chat HTTP/1.1\r\nhost: ws.example.com\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0u8; 256];
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "closed before the upgrade: {}",
                String::from_utf8_lossy(&head)
            );
            head.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap();
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp.write_all(b"through the pipe").await.unwrap();
    let mut echoed = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(20), tcp.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"through the pipe");
    std::fs::remove_dir_all(&dir).unwrap();
}
