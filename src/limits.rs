//! The flags `shoal node` and `shoal proxy` share: TLS certificate and
//! key, and the limits against slow and hostile clients, each with a
//! default a busy production cluster accepts (`docs/security.md` lists
//! them).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use shoal_net::deadline::Deadlines;
use shoal_net::http::HttpLimits;
use shoal_net::TlsFiles;

/// Certificate and key for the TLS ports.
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// PEM certificate chain (leaf first) the TLS ports present.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The files, when both were given.
    pub fn files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
        })
    }
}

/// Deadlines on the data ports and limits on the admin port.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Close a connection holding a half-sent request (or an unfinished
    /// TLS handshake) after this many seconds with nothing new.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub request_timeout: u64,
    /// Close a connection whose client reads none of its replies for this
    /// many seconds (it is not read from meanwhile).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub write_timeout: u64,
    /// Close a connection idle this many seconds (0: never, memcached's
    /// default, as clients pool connections).
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub idle_timeout: u64,
    /// Most connections the admin port serves at once.
    #[arg(long, default_value_t = 1000)]
    pub admin_max_connections: usize,
    /// Seconds the admin port waits for a request's headers.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub admin_header_timeout: u64,
}

impl LimitArgs {
    /// The data ports' deadlines.
    pub fn deadlines(&self) -> anyhow::Result<Deadlines> {
        anyhow::ensure!(
            self.request_timeout > 0 && self.write_timeout > 0,
            "--request-timeout and --write-timeout must be at least 1 second"
        );
        Ok(Deadlines {
            request: Duration::from_secs(self.request_timeout),
            write: Duration::from_secs(self.write_timeout),
            idle: (self.idle_timeout > 0).then(|| Duration::from_secs(self.idle_timeout)),
        })
    }

    /// The admin port's limits.
    pub fn admin(&self) -> anyhow::Result<HttpLimits> {
        anyhow::ensure!(
            self.admin_max_connections > 0 && self.admin_header_timeout > 0,
            "--admin-max-connections and --admin-header-timeout must be at least 1"
        );
        Ok(HttpLimits {
            max_connections: self.admin_max_connections,
            header_timeout: Duration::from_secs(self.admin_header_timeout),
        })
    }
}
