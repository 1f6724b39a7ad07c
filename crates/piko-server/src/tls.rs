//! TLS on a server port (spec §8.1): a certificate and key from PEM files, optionally client
//! certificates required and verified against a CA bundle. Unlike Piko, the files are watched and
//! loaded again when they change (a renewed certificate needs no restart); connections already
//! open keep the settings they started with.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use rustls::{RootCertStore, ServerConfig, crypto::aws_lc_rs, server::WebPkiClientVerifier};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// How often the files are checked for changes: a few `stat` calls.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// What Go's `net/http` answers a plain HTTP request sent to a TLS port (spec §2.2).
const PLAIN_HTTP_REPLY: &[u8] =
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The files a TLS port is served with.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf (PKCS#1, PKCS#8 or SEC1).
    pub key: PathBuf,
    /// PEM bundle of CAs client certificates must chain to; when set, every client must present
    /// one.
    pub client_cas: Option<PathBuf>,
}

/// Why TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the certificate, the key or the CAs (a key that is not the certificate's,
    /// for one).
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The TLS side of one server port, reloaded when its files change.
#[derive(Debug)]
pub struct ServerTls {
    files: TlsFiles,
    alpn: Vec<Vec<u8>>,
    current: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    config: Arc<ServerConfig>,
    /// The files' identities when `config` was read.
    stamps: Vec<Option<FileStamp>>,
    /// The identities of files that failed to load, so that the failure is logged once.
    refused: Option<Vec<Option<FileStamp>>>,
}

/// What tells a changed file: a rewrite changes its time or size, a Kubernetes secret update
/// swaps a symbolic link (another inode).
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let metadata = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&metadata);
    #[cfg(not(unix))]
    let inode = 0;
    Some(FileStamp {
        modified: metadata.modified().ok(),
        len: metadata.len(),
        inode,
    })
}

impl ServerTls {
    /// Loads the files. `http2` offers HTTP/2 through ALPN besides HTTP/1.1 (the proxy port).
    ///
    /// # Errors
    /// A file is missing or unreadable, holds no certificate or key, or the key is not the
    /// certificate's.
    pub fn load(files: TlsFiles, http2: bool) -> Result<Self, TlsError> {
        let alpn = if http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        let stamps = files.stamps();
        let config = build(&files, &alpn)?;
        Ok(Self {
            files,
            alpn,
            current: RwLock::new(Loaded {
                config,
                stamps,
                refused: None,
            }),
        })
    }

    /// The settings new connections get.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.read().config.clone())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads the files again if they changed since they were last read. Files that do not load
    /// (half written, or a key not matching its new certificate yet) leave the current settings
    /// in place; they are tried again once they change again.
    pub(crate) fn reload_if_changed(&self) {
        let stamps = self.files.stamps();
        {
            let loaded = self.read();
            if loaded.stamps == stamps || loaded.refused.as_ref() == Some(&stamps) {
                return;
            }
        }
        let outcome = build(&self.files, &self.alpn);
        let mut loaded = self.current.write().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(config) => {
                tracing::info!(cert = %self.files.cert.display(), "tls certificate reloaded");
                *loaded = Loaded {
                    config,
                    stamps,
                    refused: None,
                };
            }
            Err(err) => {
                tracing::warn!(error = %err, "tls files changed but do not load; serving the previous certificate");
                loaded.refused = Some(stamps);
            }
        }
    }

    /// Reloads the files whenever they change, forever.
    pub(crate) async fn watch(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(WATCH_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let tls = self.clone();
            // `stat` and reading files block.
            let _ = tokio::task::spawn_blocking(move || tls.reload_if_changed()).await;
        }
    }

    /// The TLS connection of a client that just connected, within `limit`. A client speaking
    /// plain HTTP gets Go's 400; other garbage, a failed handshake or a client too slow gets the
    /// connection closed (`None`).
    pub(crate) async fn accept(
        &self,
        mut tcp: TcpStream,
        limit: Duration,
    ) -> Option<TlsStream<TcpStream>> {
        let acceptor = self.acceptor();
        let handshake = async {
            let mut first = [0u8; 1];
            if tcp.peek(&mut first).await.ok()? == 0 {
                return None;
            }
            if first[0] != TLS_HANDSHAKE_RECORD {
                if first[0].is_ascii_uppercase() {
                    refuse_plain_http(&mut tcp).await;
                }
                return None;
            }
            match acceptor.accept(tcp).await {
                Ok(stream) => Some(stream),
                Err(err) => {
                    tracing::debug!(error = %err, "tls handshake failed");
                    None
                }
            }
        };
        tokio::time::timeout(limit, handshake).await.ok().flatten()
    }
}

/// Answers Go's 400 and lets the client read it: the request is read and dropped for a moment,
/// since closing a socket with unread bytes resets it and may destroy the reply in flight.
async fn refuse_plain_http(tcp: &mut TcpStream) {
    if tcp.write_all(PLAIN_HTTP_REPLY).await.is_err() || tcp.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut sink = [0u8; 4096];
        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

impl TlsFiles {
    fn stamps(&self) -> Vec<Option<FileStamp>> {
        [Some(&self.cert), Some(&self.key), self.client_cas.as_ref()]
            .into_iter()
            .flatten()
            .map(|path| stamp(path))
            .collect()
    }
}

fn build(files: &TlsFiles, alpn: &[Vec<u8>]) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &files.client_cas {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(path)? {
                roots.add(cert).map_err(|e| file_error(path, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| file_error(path, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let chain = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_error(&files.key, e))?;
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = alpn.to_vec();
    Ok(Arc::new(config))
}

/// Every certificate in a PEM file; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no certificate found"));
    }
    Ok(certs)
}

/// How this node reaches other nodes' TLS ports (spec §8.2, `proxy.tls.client.*`).
#[derive(Clone, Debug)]
pub struct PeerTls {
    /// Roots, and a client certificate for nodes that require one.
    pub config: Arc<rustls::ClientConfig>,
    /// The name certificates are verified against instead of the address's host.
    pub server_name: Option<rustls_pki_types::ServerName<'static>>,
}

#[cfg(test)]
mod tests;
