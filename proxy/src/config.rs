//! [`ProxyConfig`]: the proxy's settings (the `shoal proxy` flags), checked
//! once by [`ProxyConfig::validate`].
//!
//! Layer 1: may import `downstream` and `stats`. Must not import: `routing`,
//! `shared`, `watcher`, `session`, `admin`, `server`.

use std::net::IpAddr;
use std::time::Duration;

use shoal_net::deadline::Deadlines;
use shoal_net::http::HttpLimits;
pub use shoal_net::TlsFiles;
use shoal_vbmap::config::ServerAddr;

use crate::downstream::DownstreamConfig;
pub use crate::downstream::Password;

/// Where the proxy's map comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapSource {
    /// Stream a bucket's config from the cluster (any of these admin URLs,
    /// e.g. `http://127.0.0.1:8091`).
    Cluster {
        /// Admin base URLs, tried in turn.
        urls: Vec<String>,
        /// The bucket to serve.
        bucket: String,
        /// The bucket's password, for a bucket that has one: downstream
        /// connections log in with it and the config stream sends it.
        password: Option<Password>,
    },
    /// A fixed ketama ring over plain memcached servers (twemproxy's job).
    Static {
        /// The servers.
        servers: Vec<ServerAddr>,
        /// Their weights (same length; 1 each by default).
        weights: Vec<u32>,
    },
}

/// The proxy's settings.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Where the map comes from.
    pub source: MapSource,
    /// Address to listen on.
    pub host: IpAddr,
    /// memcached port for clients; 0 lets the OS choose.
    pub port: u16,
    /// HTTP admin port (`/health`, `/metrics`, `/config`); 0 lets the OS
    /// choose.
    pub admin_port: u16,
    /// How long a request may keep retrying (NOT_MY_VBUCKET, node down)
    /// before the client gets a temporary failure.
    pub retry_deadline: Duration,
    /// Fail a whole multi-get when any of its nodes stays unreachable,
    /// instead of returning the keys that could be fetched.
    pub strict_multiget: bool,
    /// Downstream pools.
    pub downstream: DownstreamConfig,
    /// Most client connections at once; more are told so and closed.
    pub max_connections: usize,
    /// Deadlines for half-sent requests, unread replies and idle clients.
    pub deadlines: Deadlines,
    /// The admin port's connection cap and header deadline.
    pub admin_limits: HttpLimits,
    /// Certificate and key for the TLS client port.
    pub tls: Option<TlsFiles>,
    /// TLS client port (Couchbase's 11207); `None`: none; 0 lets the OS
    /// choose.
    pub tls_port: Option<u16>,
    /// Largest value a client may store (memcached's item size limit):
    /// larger writes are refused as memcached refuses them, the old value
    /// unlinked. Node replies are parsed with `downstream.limits`.
    pub max_value_len: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            source: MapSource::Static {
                servers: Vec::new(),
                weights: Vec::new(),
            },
            host: IpAddr::from([127, 0, 0, 1]),
            port: 11211,
            admin_port: 11212,
            retry_deadline: Duration::from_millis(2000),
            strict_multiget: false,
            downstream: DownstreamConfig::default(),
            max_connections: 10_000,
            deadlines: Deadlines::default(),
            admin_limits: HttpLimits::default(),
            tls: None,
            tls_port: None,
            // memcached's and the node's default item size limit.
            max_value_len: 1024 * 1024,
        }
    }
}

/// A [`ProxyConfig`] that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyConfigError {
    /// Neither cluster URLs nor servers.
    #[error("give --cluster URL[,URL…] with --bucket, or --servers host:port[,…]")]
    NoSource,
    /// A cluster URL that is not http://host:port (https:// with TLS to
    /// the cluster).
    #[error("cluster URL {0:?} must start with {1}")]
    Url(String, &'static str),
    /// Weights do not match servers.
    #[error("{weights} weights for {servers} servers")]
    Weights {
        /// Servers given.
        servers: usize,
        /// Weights given.
        weights: usize,
    },
    /// No connections per node.
    #[error("connections per node must be at least 1")]
    Connections,
    /// No client connections at all.
    #[error("--max-connections must be at least 1")]
    MaxConnections,
    /// A TLS port without a certificate and key.
    #[error("--tls-port needs --tls-cert and --tls-key")]
    NoCertificate,
}

impl ProxyConfig {
    /// Checks every field.
    pub fn validate(self) -> Result<ProxyConfig, ProxyConfigError> {
        match &self.source {
            MapSource::Cluster { urls, .. } => {
                if urls.is_empty() {
                    return Err(ProxyConfigError::NoSource);
                }
                // With TLS to the cluster, its admin ports too: no
                // plaintext URL is taken.
                let scheme = match self.downstream.tls {
                    Some(_) => "https://",
                    None => "http://",
                };
                if let Some(bad) = urls.iter().find(|u| !u.starts_with(scheme)) {
                    return Err(ProxyConfigError::Url(bad.clone(), scheme));
                }
            }
            MapSource::Static { servers, weights } => {
                if servers.is_empty() {
                    return Err(ProxyConfigError::NoSource);
                }
                if weights.len() != servers.len() {
                    return Err(ProxyConfigError::Weights {
                        servers: servers.len(),
                        weights: weights.len(),
                    });
                }
            }
        }
        if self.downstream.connections_per_node == 0 {
            return Err(ProxyConfigError::Connections);
        }
        if self.max_connections == 0 {
            return Err(ProxyConfigError::MaxConnections);
        }
        if self.tls_port.is_some() && self.tls.is_none() {
            return Err(ProxyConfigError::NoCertificate);
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_sources() {
        let base = ProxyConfig::default();
        assert_eq!(
            base.clone().validate().unwrap_err(),
            ProxyConfigError::NoSource
        );
        let cluster = |urls: Vec<&str>| ProxyConfig {
            source: MapSource::Cluster {
                urls: urls.into_iter().map(String::from).collect(),
                bucket: "default".into(),
                password: None,
            },
            ..base.clone()
        };
        assert!(cluster(vec!["http://127.0.0.1:8091"]).validate().is_ok());
        assert_eq!(
            cluster(vec!["127.0.0.1:8091"]).validate().unwrap_err(),
            ProxyConfigError::Url("127.0.0.1:8091".into(), "http://")
        );
        let servers = vec![ServerAddr::parse("127.0.0.1:11211").unwrap()];
        let weights_off = ProxyConfig {
            source: MapSource::Static {
                servers,
                weights: vec![],
            },
            ..base
        };
        assert!(matches!(
            weights_off.clone().validate(),
            Err(ProxyConfigError::Weights { .. })
        ));
        let servers = vec![ServerAddr::parse("127.0.0.1:11211").unwrap()];
        let fixed = ProxyConfig {
            source: MapSource::Static {
                servers,
                weights: vec![1],
            },
            ..weights_off
        };
        assert!(fixed.clone().validate().is_ok());
        let no_cert = ProxyConfig {
            tls_port: Some(11207),
            ..fixed.clone()
        };
        assert_eq!(
            no_cert.validate().unwrap_err(),
            ProxyConfigError::NoCertificate
        );
        let closed = ProxyConfig {
            max_connections: 0,
            ..fixed
        };
        assert_eq!(
            closed.validate().unwrap_err(),
            ProxyConfigError::MaxConnections
        );
    }
}
