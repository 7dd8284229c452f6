//! [`Transport`]: how this node reaches other nodes — their data ports
//! (replication streams) and admin ports (Raft, `/internal/*`, forwarded
//! changes). Plain by default; with cluster TLS (Couchbase's node-to-node
//! encryption) every connection goes to the peer's TLS port instead and
//! checks its certificate against the cluster's CA.
//!
//! The cluster knows nodes by their plain addresses (maps, node lists,
//! Raft membership), so the transport keeps an address book from each
//! plain address to its TLS twin, which the cluster manager refreshes from
//! the metadata. With TLS on, an address missing from the book is refused,
//! never reached in plaintext.
//!
//! Layer 0, with `config` and `access`: imports nothing of this crate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use shoal_net::{Stream, TlsConnector};
use tokio::net::TcpStream;

/// How this node reaches its peers. Cheap to clone: clones share the
/// address book.
#[derive(Clone, Debug, Default)]
pub struct Transport {
    tls: Option<Arc<PeerTls>>,
}

/// Cluster TLS: the connector trusting the cluster's CA and the address
/// book.
#[derive(Debug)]
struct PeerTls {
    connector: TlsConnector,
    /// Plain `host:port` (data or admin) → the same node's TLS `host:port`.
    book: ArcSwap<HashMap<String, String>>,
}

/// A peer's plain and TLS addresses, data and admin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPorts {
    /// Host both ports listen on.
    pub host: String,
    /// Plain data port.
    pub data: u16,
    /// Plain admin port.
    pub admin: u16,
    /// TLS data port, if any.
    pub tls_data: Option<u16>,
    /// HTTPS admin port, if any.
    pub tls_admin: Option<u16>,
}

impl Transport {
    /// Plain TCP and HTTP to every peer.
    pub fn plain() -> Transport {
        Transport::default()
    }

    /// TLS to every peer's TLS ports, trusting `connector`'s CA.
    pub fn tls(connector: TlsConnector) -> Transport {
        Transport {
            tls: Some(Arc::new(PeerTls {
                connector,
                book: ArcSwap::from_pointee(HashMap::new()),
            })),
        }
    }

    /// True with cluster TLS on.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Replaces the address book with `peers` (the cluster's nodes).
    pub fn learn(&self, peers: impl IntoIterator<Item = PeerPorts>) {
        if let Some(tls) = &self.tls {
            let mut book = HashMap::new();
            for peer in peers {
                insert(&mut book, &peer);
            }
            tls.book.store(Arc::new(book));
        }
    }

    /// Adds one peer to the address book (a node being added, before the
    /// metadata lists it).
    pub fn add(&self, peer: &PeerPorts) {
        if let Some(tls) = &self.tls {
            let mut book = HashMap::clone(&tls.book.load());
            insert(&mut book, peer);
            tls.book.store(Arc::new(book));
        }
    }

    /// The address to dial for `addr`: itself in plain mode, its TLS twin
    /// with TLS on (`None` if the book has none).
    fn resolve(&self, addr: &str) -> Option<String> {
        match &self.tls {
            None => Some(addr.to_owned()),
            Some(tls) => tls.book.load().get(addr).cloned(),
        }
    }

    /// Connects to the data port at `addr` (its TLS twin with TLS on),
    /// handshake included, within `deadline`.
    pub async fn connect_data(&self, addr: &str, deadline: Duration) -> std::io::Result<Stream> {
        let target = self.resolve(addr).ok_or_else(|| no_tls_port(addr))?;
        let tcp = tokio::time::timeout(deadline, TcpStream::connect(target.as_str()))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting"))??;
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some(tls) => {
                let host = host_of(&target);
                tls.connector
                    .connect(host, tcp, deadline)
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))
            }
        }
    }

    /// The URL of `path` on the admin port at `admin_addr`: plain HTTP, or
    /// HTTPS on its TLS twin with TLS on. An address without a known twin
    /// gets an HTTPS URL on the plain port, which fails the handshake:
    /// refused, never sent in plaintext.
    pub fn admin_url(&self, admin_addr: &str, path: &str) -> String {
        match &self.tls {
            None => format!("http://{admin_addr}{path}"),
            Some(_) => {
                let target = self.resolve(admin_addr);
                format!("https://{}{path}", target.as_deref().unwrap_or(admin_addr))
            }
        }
    }

    /// A builder for HTTP clients to peers: with TLS on, HTTPS trusts the
    /// cluster's CA alone.
    pub fn http_client(&self) -> reqwest::ClientBuilder {
        shoal_net::tls::http_client(self.tls.as_ref().map(|t| &t.connector))
    }
}

fn insert(book: &mut HashMap<String, String>, peer: &PeerPorts) {
    let join = |port: u16| join_host_port(&peer.host, port);
    if let Some(tls) = peer.tls_data {
        book.insert(join(peer.data), join(tls));
    }
    if let Some(tls) = peer.tls_admin {
        book.insert(join(peer.admin), join(tls));
    }
}

/// `host:port`, bracketing IPv6 hosts.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The host of `host:port` (brackets dropped).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn no_tls_port(addr: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("cluster TLS is on and no TLS port is known for {addr}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerPorts {
        PeerPorts {
            host: "10.0.0.2".into(),
            data: 11210,
            admin: 8091,
            tls_data: Some(11207),
            tls_admin: Some(18091),
        }
    }

    #[test]
    fn plain_mode_dials_what_it_is_given() {
        let plain = Transport::plain();
        assert_eq!(
            plain.admin_url("10.0.0.2:8091", "/x"),
            "http://10.0.0.2:8091/x"
        );
        assert_eq!(plain.resolve("10.0.0.2:11210").unwrap(), "10.0.0.2:11210");
    }

    #[test]
    fn tls_mode_dials_the_twin_and_refuses_the_unknown() {
        let dir = std::env::temp_dir().join(format!("shoal-transport-{}", std::process::id()));
        let ca = shoal_net::local_ca::LocalCa::ensure(&dir, &["10.0.0.2"]).unwrap();
        let tls = Transport::tls(TlsConnector::trusting(&ca.ca).unwrap());
        assert_eq!(tls.resolve("10.0.0.2:11210"), None);
        assert_eq!(
            tls.admin_url("10.0.0.2:8091", "/x"),
            "https://10.0.0.2:8091/x"
        );
        tls.add(&peer());
        assert_eq!(tls.resolve("10.0.0.2:11210").unwrap(), "10.0.0.2:11207");
        assert_eq!(
            tls.admin_url("10.0.0.2:8091", "/x"),
            "https://10.0.0.2:18091/x"
        );
        tls.learn([]);
        assert_eq!(tls.resolve("10.0.0.2:11210"), None);
        assert_eq!(host_of("[::1]:11207"), "::1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
