//! Client TLS settings, as Piko's config files give them (`connect.tls`, a listener's `tls`): the
//! system's roots by default, or a given CA bundle; optionally a client certificate; optionally no
//! verification at all (Piko's `insecure_skip_verify`, for throwaway certificates).

use std::{path::PathBuf, sync::Arc};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{WebPkiSupportedAlgorithms, aws_lc_rs},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use rustls_platform_verifier::BuilderVerifierExt;

/// Client TLS settings: towards a Piko server ([`Upstream::tls`](crate::Upstream::tls),
/// [`Dialer::tls`](crate::Dialer::tls)) or, in the agent, towards an `https` local service.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    /// PEM bundle of CAs to trust instead of the system's.
    pub root_cas: Option<PathBuf>,
    /// PEM client certificate chain, for services that ask for one.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// Accept any server certificate.
    pub insecure_skip_verify: bool,
}

/// A TLS setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A client certificate without its key, or the reverse.
    #[error("missing key")]
    MissingKey,
    /// A client key without its certificate.
    #[error("missing cert")]
    MissingCert,
    /// rustls refused the configuration.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

fn file_error(path: &std::path::Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl ClientTls {
    /// Whether anything differs from "system roots, no client certificate".
    pub fn is_custom(&self) -> bool {
        self.root_cas.is_some()
            || self.cert.is_some()
            || self.key.is_some()
            || self.insecure_skip_verify
    }

    /// The rustls configuration, or `None` for the system defaults (the platform verifier).
    ///
    /// # Errors
    /// Unreadable or invalid files, or half a client certificate.
    pub fn client_config(&self) -> Result<Option<Arc<ClientConfig>>, TlsError> {
        if !self.is_custom() {
            return Ok(None);
        }
        let provider = Arc::new(aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = if self.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(
                    provider.signature_verification_algorithms,
                )))
        } else if let Some(path) = &self.root_cas {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| file_error(path, e))? {
                roots
                    .add(cert.map_err(|e| file_error(path, e))?)
                    .map_err(|e| file_error(path, e))?;
            }
            if roots.is_empty() {
                return Err(file_error(path, "no certificate found"));
            }
            builder.with_root_certificates(roots)
        } else {
            // A client certificate with the system's roots.
            builder.with_platform_verifier()?
        };
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| file_error(cert, e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| file_error(cert, e))?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
                builder.with_client_auth_cert(chain, key)?
            }
            (Some(_), None) => return Err(TlsError::MissingKey),
            (None, Some(_)) => return Err(TlsError::MissingCert),
            (None, None) => builder.with_no_client_auth(),
        };
        Ok(Some(Arc::new(config)))
    }

    /// The rustls configuration, with the system's roots when nothing is custom.
    ///
    /// # Errors
    /// As [`ClientTls::client_config`], or the system's roots cannot be loaded.
    pub fn config_or_system(&self) -> Result<Arc<ClientConfig>, TlsError> {
        match self.client_config()? {
            Some(config) => Ok(config),
            None => Ok(Arc::new(system_config()?)),
        }
    }
}

/// The system's roots, as Go's `crypto/tls` uses them.
pub(crate) fn system_config() -> Result<ClientConfig, rustls::Error> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_platform_verifier()?
        .with_no_client_auth())
}

/// `insecure_skip_verify`: any certificate is accepted, but handshake signatures are still
/// checked (the peer must hold the key of the certificate it sent).
#[derive(Debug)]
struct AcceptAnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
