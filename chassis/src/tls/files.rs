//! Reading PEM certificates and keys, with errors that name the file.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsError;

fn file_error(what: &'static str, path: &str, reason: impl Into<String>) -> TlsError {
    TlsError::File {
        what,
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn read(what: &'static str, path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| file_error(what, path, format!("cannot be read: {e}")))
}

/// Every certificate of a PEM file, in order (a leaf, then its intermediates).
pub(super) fn certificates(what: &'static str, path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, format!("is not valid PEM: {e}")))?;
    if certificates.is_empty() {
        return Err(file_error(
            what,
            path,
            "holds no certificate (expected one or more \"-----BEGIN CERTIFICATE-----\" blocks)",
        ));
    }
    Ok(certificates)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(super) fn private_key(path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    const WHAT: &str = "private key file";
    let pem = read(WHAT, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        file_error(
            WHAT,
            path,
            format!("holds no usable private key ({e}); expected a PKCS#8, PKCS#1 or SEC1 PEM block"),
        )
    })
}

/// A root store of the certificates of a CA file.
pub(super) fn root_store(path: &str) -> Result<rustls::RootCertStore, TlsError> {
    const WHAT: &str = "CA file";
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates(WHAT, path)? {
        roots
            .add(certificate)
            .map_err(|e| file_error(WHAT, path, format!("holds a certificate rustls cannot use: {e}")))?;
    }
    Ok(roots)
}

/// The last modification time of each file, to notice a change.
pub(super) fn modified(paths: &[&str]) -> Vec<Option<std::time::SystemTime>> {
    paths
        .iter()
        .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
        .collect()
}
