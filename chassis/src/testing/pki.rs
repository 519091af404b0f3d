//! Certificates made at test time: a CA and the server and client certificates it issues,
//! written as PEM files for `[http.tls]` and `[clients.<name>.tls]`.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority for tests. Its files live in a directory of their own that is
/// removed when the `TestPki` is dropped.
///
/// ```
/// let pki = chassis::testing::TestPki::new("test CA");
/// let server = pki.server(&["localhost", "127.0.0.1"]);
/// assert!(std::fs::read_to_string(&server.cert_file).unwrap().contains("BEGIN CERTIFICATE"));
/// assert!(std::fs::read_to_string(pki.ca_file()).unwrap().contains("BEGIN CERTIFICATE"));
/// ```
pub struct TestPki {
    dir: PathBuf,
    ca_file: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
    issued: std::sync::atomic::AtomicU32,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// The certificate's PEM file.
    pub cert_file: String,
    /// The private key's PEM file.
    pub key_file: String,
}

impl TestPki {
    /// A new CA named `name`, valid from 1975 to 4096.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("chassis-pki-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("a key pair");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("a self-signed CA");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, issuer.pem()).expect("the CA file is written");
        Self {
            ca_file: ca_file.display().to_string(),
            dir,
            issuer,
            issued: Default::default(),
        }
    }

    /// The CA's certificate file, for `ca_file` / `client_ca_file`.
    pub fn ca_file(&self) -> &str {
        &self.ca_file
    }

    /// A server certificate for `hosts` (names or IP addresses), valid from 1975 to 4096.
    pub fn server(&self, hosts: &[&str]) -> IssuedCertificate {
        self.issue(hosts, ExtendedKeyUsagePurpose::ServerAuth, None)
    }

    /// A server certificate for `hosts` that expired in 2001.
    pub fn expired_server(&self, hosts: &[&str]) -> IssuedCertificate {
        self.issue(
            hosts,
            ExtendedKeyUsagePurpose::ServerAuth,
            Some(((2000, 1, 1), (2001, 1, 1))),
        )
    }

    /// A client certificate named `name`, for mutual TLS.
    pub fn client(&self, name: &str) -> IssuedCertificate {
        self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth, None)
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose, validity: Option<(Day, Day)>) -> IssuedCertificate {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("certificate parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().cloned().unwrap_or_default());
        params.extended_key_usages = vec![usage];
        if let Some(((y0, m0, d0), (y1, m1, d1))) = validity {
            params.not_before = rcgen::date_time_ymd(y0, m0, d0);
            params.not_after = rcgen::date_time_ymd(y1, m1, d1);
        }
        let key = KeyPair::generate().expect("a key pair");
        let certificate = params.signed_by(&key, &self.issuer).expect("a certificate");
        let n = self.issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cert_file = self.dir.join(format!("cert-{n}.pem"));
        let key_file = self.dir.join(format!("key-{n}.pem"));
        std::fs::write(&cert_file, certificate.pem()).expect("the certificate file is written");
        std::fs::write(&key_file, key.serialize_pem()).expect("the key file is written");
        IssuedCertificate {
            cert_file: cert_file.display().to_string(),
            key_file: key_file.display().to_string(),
        }
    }
}

/// A calendar day: year, month, day.
type Day = (i32, u8, u8);

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
