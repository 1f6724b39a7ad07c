use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

/// A CA and a leaf for `localhost`, as PEM.
struct Issued {
    ca: String,
    cert: String,
    key: String,
}

fn issue(name: &str) -> Issued {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    Issued {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn write_files(dir: &Path, issued: &Issued) -> TlsFiles {
    std::fs::write(dir.join("cert.pem"), &issued.cert).unwrap();
    std::fs::write(dir.join("key.pem"), &issued.key).unwrap();
    TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        client_cas: None,
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("piko-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Serves one connection with `tls` and returns what the handshake gave.
async fn handshake_with(
    tls: &ServerTls,
    ca_pem: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tokio_rustls::TlsConnector::from(client_config(ca_pem))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    };
    let server = async {
        let (tcp, _) = listener.accept().await.unwrap();
        tls.accept(tcp, Duration::from_secs(5)).await
    };
    let (client, _server) = tokio::join!(client, server);
    client
}

use rustls_pki_types::ServerName;

#[test]
fn missing_files_and_mismatched_keys_are_refused_with_the_path() {
    let dir = temp_dir("errors");
    let issued = issue("localhost");
    let files = write_files(&dir, &issued);

    let missing = TlsFiles {
        cert: dir.join("absent.pem"),
        ..files.clone()
    };
    let err = ServerTls::load(missing, false).unwrap_err().to_string();
    assert!(err.contains("absent.pem"), "{err}");

    std::fs::write(dir.join("empty.pem"), "not pem\n").unwrap();
    let empty = TlsFiles {
        cert: dir.join("empty.pem"),
        ..files.clone()
    };
    let err = ServerTls::load(empty, false).unwrap_err().to_string();
    assert!(err.contains("no certificate found"), "{err}");

    let other = issue("localhost");
    std::fs::write(dir.join("other-key.pem"), &other.key).unwrap();
    let mismatched = TlsFiles {
        key: dir.join("other-key.pem"),
        ..files.clone()
    };
    assert!(ServerTls::load(mismatched, false).is_err());

    ServerTls::load(files, false).unwrap();
}

#[tokio::test]
async fn a_changed_certificate_is_served_to_new_connections() {
    let dir = temp_dir("reload");
    let first = issue("localhost");
    let files = write_files(&dir, &first);
    let tls = ServerTls::load(files, true).unwrap();
    let stream = handshake_with(&tls, &first.ca).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), None);

    let second = issue("localhost");
    write_files(&dir, &second);
    tls.reload_if_changed();
    assert!(handshake_with(&tls, &first.ca).await.is_err());
    handshake_with(&tls, &second.ca).await.unwrap();

    // A key that does not match yet (written before its certificate) keeps the old settings.
    let third = issue("localhost");
    std::fs::write(dir.join("key.pem"), &third.key).unwrap();
    tls.reload_if_changed();
    handshake_with(&tls, &second.ca).await.unwrap();
    std::fs::write(dir.join("cert.pem"), &third.cert).unwrap();
    tls.reload_if_changed();
    handshake_with(&tls, &third.ca).await.unwrap();
}

#[tokio::test]
async fn plain_http_gets_go_s_400() {
    let dir = temp_dir("plain");
    let tls = ServerTls::load(write_files(&dir, &issue("localhost")), false).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = async {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut reply = Vec::new();
        tcp.read_to_end(&mut reply).await.unwrap();
        reply
    };
    let server = async {
        let (tcp, _) = listener.accept().await.unwrap();
        tls.accept(tcp, Duration::from_secs(5)).await.is_none()
    };
    let (reply, refused) = tokio::join!(client, server);
    assert!(refused);
    assert_eq!(reply, PLAIN_HTTP_REPLY);
}

#[tokio::test]
async fn a_silent_client_is_dropped_at_the_limit() {
    let dir = temp_dir("silent");
    let tls = ServerTls::load(write_files(&dir, &issue("localhost")), false).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _client = TcpStream::connect(addr).await.unwrap();
    let (tcp, _) = listener.accept().await.unwrap();
    let accepted = tokio::time::timeout(
        Duration::from_secs(5),
        tls.accept(tcp, Duration::from_millis(100)),
    )
    .await
    .expect("the handshake limit ends the wait");
    assert!(accepted.is_none());
}
