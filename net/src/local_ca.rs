//! A local certificate authority for `shoal up --tls` and tests: a CA
//! certificate and one certificate for the given hosts signed by it, as
//! PEM files in one directory (private keys mode 0600). Clients are given
//! the CA file to trust. Kept across restarts: made once, reused while all
//! four files exist, so clients that trust the CA keep working.
//!
//! For a laptop, a CI runner or a private test cluster; production
//! clusters bring certificates from their own CA (`--tls-cert`,
//! `--tls-key`, `--tls-ca`).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::private::write_private;
use crate::tls::TlsError;

/// Where a local CA's files are.
#[derive(Clone, Debug)]
pub struct LocalCa {
    /// The CA certificate clients trust (`ca.pem`).
    pub ca: PathBuf,
    /// The certificate servers present (`node.pem`).
    pub cert: PathBuf,
    /// Its private key (`node-key.pem`, mode 0600).
    pub key: PathBuf,
}

impl LocalCa {
    /// The CA in `dir`, made if any of its files is missing: a CA
    /// certificate and a server certificate valid for every name and
    /// address in `hosts`.
    pub fn ensure(dir: &Path, hosts: &[&str]) -> Result<LocalCa, TlsError> {
        let ca = LocalCa {
            ca: dir.join("ca.pem"),
            cert: dir.join("node.pem"),
            key: dir.join("node-key.pem"),
        };
        let ca_key = dir.join("ca-key.pem");
        if [&ca.ca, &ca.cert, &ca.key, &ca_key]
            .iter()
            .all(|p| p.exists())
        {
            return Ok(ca);
        }
        let fail = |path: &Path, reason: String| TlsError::File {
            path: path.to_owned(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(dir, e.to_string()))?;
        let (ca_pem, ca_key_pem, cert_pem, key_pem) =
            generate(hosts).map_err(|e| fail(dir, format!("making certificates: {e}")))?;
        write_private(&ca_key, ca_key_pem.as_bytes()).map_err(|e| fail(&ca_key, e.to_string()))?;
        write_private(&ca.key, key_pem.as_bytes()).map_err(|e| fail(&ca.key, e.to_string()))?;
        std::fs::write(&ca.ca, ca_pem).map_err(|e| fail(&ca.ca, e.to_string()))?;
        std::fs::write(&ca.cert, cert_pem).map_err(|e| fail(&ca.cert, e.to_string()))?;
        Ok(ca)
    }
}

/// A CA and a server certificate for `hosts`, as PEM: CA certificate, CA
/// key, server certificate (followed by the CA's, a full chain), server
/// key.
fn generate(hosts: &[&str]) -> Result<(String, String, String, String), rcgen::Error> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Shoal local CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let key = KeyPair::generate()?;
    let names: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(
        DnType::CommonName,
        hosts.first().copied().unwrap_or("shoal"),
    );
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer)?;
    let chain = format!("{}{}", cert.pem(), ca_cert.pem());
    Ok((
        ca_cert.pem(),
        ca_key.serialize_pem(),
        chain,
        key.serialize_pem(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn made_once_then_reused_with_private_keys() {
        let dir = std::env::temp_dir().join(format!("shoal-local-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = LocalCa::ensure(&dir, &["localhost", "127.0.0.1"]).unwrap();
        let ca_pem = std::fs::read(&first.ca).unwrap();
        let second = LocalCa::ensure(&dir, &["localhost"]).unwrap();
        assert_eq!(std::fs::read(&second.ca).unwrap(), ca_pem, "CA kept");
        for key in [&first.key, &dir.join("ca-key.pem")] {
            let mode = std::fs::metadata(key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
        // The server file holds the chain: its certificate, then the CA's.
        let chain = crate::tls::read_certificates(&first.cert).unwrap();
        assert_eq!(chain.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
