//! TLS with rustls (the `ring` provider): the acceptor a TLS port wraps
//! each accepted socket in, and the connector a node or proxy uses to
//! reach another node's TLS port or HTTPS admin port, trusting the CA it
//! was given. Certificates and keys come from PEM files.
//!
//! A TLS port speaks nothing else: a plaintext client's first bytes fail
//! the handshake and the connection closes without a reply. The handshake
//! must finish within a deadline, so a peer that connects and stays
//! silent holds nothing for long.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;

use crate::stream::Stream;

/// Why TLS could not be set up or a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or held nothing usable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// rustls refused the configuration (a key that does not match its
    /// certificate, say).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The host is not a name or address a certificate can be for.
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    /// The handshake failed (a plaintext client on a TLS port, a
    /// certificate the peer does not trust).
    #[error("TLS handshake: {0}")]
    Handshake(io::Error),
    /// The handshake did not finish in time.
    #[error("TLS handshake timed out")]
    Timeout,
}

/// The crypto provider every config here is built with: *ring*, which
/// builds with the Rust toolchain alone (aws-lc needs a C toolchain and
/// CMake). Its only lack is the post-quantum key exchange, which no
/// memcached or Couchbase client offers today.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A builder for Shoal's HTTP clients (node to node, proxy to cluster,
/// `shoal ctl`): with `tls`, HTTPS trusts that CA alone; without, HTTPS
/// trusts the system's roots. Also makes `ring` the process's default
/// provider (once), which the HTTP client needs before it builds.
pub fn http_client(tls: Option<&TlsConnector>) -> reqwest::ClientBuilder {
    let _ = CryptoProvider::install_default(CryptoProvider::clone(&provider()));
    let builder = reqwest::Client::builder().no_proxy();
    match tls {
        Some(tls) => builder.tls_backend_preconfigured(tls.client_config()),
        None => builder,
    }
}

/// Every certificate in the PEM file at `path` (at least one).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |reason: String| TlsError::File {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error("no certificate in the file".into()));
    }
    Ok(certs)
}

/// The private key in the PEM file at `path` (PKCS#8, PKCS#1 or SEC1).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        path: path.to_owned(),
        reason: format!("no usable private key ({e})"),
    })
}

/// Wraps accepted sockets in TLS with one certificate chain and key.
#[derive(Clone)]
pub struct TlsAcceptor {
    inner: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsAcceptor")
    }
}

/// Where a server's certificate chain and private key are (PEM files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain presented, leaf first.
    pub cert: std::path::PathBuf,
    /// Its private key.
    pub key: std::path::PathBuf,
}

impl TlsAcceptor {
    /// An acceptor presenting `files`' chain and key.
    pub fn from_files(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
        TlsAcceptor::from_pem_files(&files.cert, &files.key)
    }

    /// An acceptor presenting the chain in `cert` (leaf first) with the
    /// key in `key`.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(read_certificates(cert)?, read_key(key)?)?;
        Ok(TlsAcceptor {
            inner: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Runs the server side of the handshake on `tcp`, which must finish
    /// within `deadline`.
    pub async fn accept(&self, tcp: TcpStream, deadline: Duration) -> Result<Stream, TlsError> {
        match tokio::time::timeout(deadline, self.inner.accept(tcp)).await {
            Ok(Ok(tls)) => Ok(Stream::Tls(Box::new(tls.into()))),
            Ok(Err(e)) => Err(TlsError::Handshake(e)),
            Err(_) => Err(TlsError::Timeout),
        }
    }
}

/// Opens TLS connections to servers whose certificates the configured CA
/// signed.
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConnector")
    }
}

impl TlsConnector {
    /// A connector trusting the CA certificates in the PEM file `ca` (and
    /// nothing else: a cluster's CA is its own).
    pub fn trusting(ca: &Path) -> Result<TlsConnector, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in read_certificates(ca)? {
            roots.add(cert)?;
        }
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsConnector {
            config: Arc::new(config),
        })
    }

    /// The rustls client config, for HTTP clients that take one.
    pub fn client_config(&self) -> ClientConfig {
        (*self.config).clone()
    }

    /// Runs the client side of the handshake on `tcp`, checking that the
    /// server's certificate is for `host` (a name or an IP address).
    pub async fn connect(
        &self,
        host: &str,
        tcp: TcpStream,
        deadline: Duration,
    ) -> Result<Stream, TlsError> {
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
            .map_err(|_| TlsError::ServerName(host.to_owned()))?
            .to_owned();
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        match tokio::time::timeout(deadline, connector.connect(name, tcp)).await {
            Ok(Ok(tls)) => Ok(Stream::Tls(Box::new(tls.into()))),
            Ok(Err(e)) => Err(TlsError::Handshake(e)),
            Err(_) => Err(TlsError::Timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local_ca::LocalCa;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const DEADLINE: Duration = Duration::from_secs(5);

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shoal-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    async fn listener() -> (TcpListener, std::net::SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    #[tokio::test]
    async fn a_client_trusting_the_ca_talks_to_the_server() {
        let dir = scratch("roundtrip");
        let ca = LocalCa::ensure(&dir, &["localhost", "127.0.0.1"]).unwrap();
        let acceptor = TlsAcceptor::from_pem_files(&ca.cert, &ca.key).unwrap();
        let connector = TlsConnector::trusting(&ca.ca).unwrap();
        let (listener, addr) = listener().await;
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut stream = acceptor.accept(tcp, DEADLINE).await.unwrap();
            let mut buf = [0u8; 4];
            stream.read_exact(&mut buf).await.unwrap();
            stream.write_all(&buf).await.unwrap();
            stream.flush().await.unwrap();
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut stream = connector.connect("127.0.0.1", tcp, DEADLINE).await.unwrap();
        assert!(stream.is_tls());
        stream.write_all(b"ping").await.unwrap();
        stream.flush().await.unwrap();
        let mut echo = [0u8; 4];
        stream.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping");
        server.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn plaintext_to_a_tls_port_gets_no_reply() {
        let dir = scratch("plaintext");
        let ca = LocalCa::ensure(&dir, &["127.0.0.1"]).unwrap();
        let acceptor = TlsAcceptor::from_pem_files(&ca.cert, &ca.key).unwrap();
        let (listener, addr) = listener().await;
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            acceptor.accept(tcp, DEADLINE).await
        });
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(b"get foo\r\n").await.unwrap();
        let outcome = server.await.unwrap();
        assert!(
            matches!(outcome, Err(TlsError::Handshake(_))),
            "{outcome:?}"
        );
        // Whatever the server sent (a TLS alert at most), never a memcached
        // reply; then the connection ends.
        let mut reply = Vec::new();
        let _ = client.read_to_end(&mut reply).await;
        assert!(!reply.starts_with(b"END") && !reply.starts_with(b"ERROR"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_server_whose_certificate_names_another_host_is_refused() {
        let dir = scratch("wrongname");
        let ca = LocalCa::ensure(&dir, &["db.example"]).unwrap();
        let acceptor = TlsAcceptor::from_pem_files(&ca.cert, &ca.key).unwrap();
        let connector = TlsConnector::trusting(&ca.ca).unwrap();
        let (listener, addr) = listener().await;
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = acceptor.accept(tcp, DEADLINE).await;
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let refused = connector.connect("127.0.0.1", tcp, DEADLINE).await;
        assert!(matches!(refused, Err(TlsError::Handshake(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_silent_client_times_the_handshake_out() {
        let dir = scratch("silent");
        let ca = LocalCa::ensure(&dir, &["127.0.0.1"]).unwrap();
        let acceptor = TlsAcceptor::from_pem_files(&ca.cert, &ca.key).unwrap();
        let (listener, addr) = listener().await;
        let _client = TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let outcome = acceptor.accept(tcp, Duration::from_millis(100)).await;
        assert!(matches!(outcome, Err(TlsError::Timeout)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_without_pem_are_named_in_the_error() {
        let dir = scratch("badfiles");
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not pem").unwrap();
        let error = TlsAcceptor::from_pem_files(&junk, &junk).unwrap_err();
        assert!(error.to_string().contains("junk.pem"), "{error}");
        let error = TlsConnector::trusting(&dir.join("missing.pem")).unwrap_err();
        assert!(error.to_string().contains("missing.pem"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
