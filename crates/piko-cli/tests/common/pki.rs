//! Generated certificates for the TLS tests.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair,
};

/// A directory of PEM files: a CA, a server certificate for `localhost` and 127.0.0.1, and a
/// client certificate, all issued by that CA.
pub(crate) struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub(crate) fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("piko-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Self { dir };
        pki.issue();
        pki
    }

    /// Writes a new CA and new certificates over the old ones (the key first, as a careless
    /// renewal might).
    pub(crate) fn issue(&self) {
        // Distinct names: OpenSSL (curl) takes a certificate whose subject is its issuer's for a
        // self-signed one.
        let name = |cn: &str| {
            let mut name = DistinguishedName::new();
            name.push(DnType::CommonName, cn);
            name
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name = name("piko test ca");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        server_params.distinguished_name = name("localhost");
        let server = server_params.signed_by(&server_key, &ca).unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(vec!["client".to_owned()]).unwrap();
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        client_params.distinguished_name = name("client");
        let client = client_params.signed_by(&client_key, &ca).unwrap();
        self.write("key.pem", &server_key.serialize_pem());
        self.write("cert.pem", &server.pem());
        self.write("ca.pem", &ca.pem());
        self.write("client-key.pem", &client_key.serialize_pem());
        self.write("client.pem", &client.pem());
    }

    fn write(&self, name: &str, text: &str) {
        // Written whole then renamed: a reader never sees half a file.
        let temp = self.dir.join(format!(".{name}"));
        std::fs::write(&temp, text).unwrap();
        std::fs::rename(temp, self.dir.join(name)).unwrap();
    }

    pub(crate) fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_owned()
    }

    /// Another file with the current CA, for clients of the next renewal to keep using.
    pub(crate) fn keep_ca(&self, name: &str) -> String {
        std::fs::copy(self.dir.join("ca.pem"), self.dir.join(name)).unwrap();
        self.path(name)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
