//! One run: connect every connection (TLS handshake and login included),
//! preload, start the clock, drive every connection to the end, merge what
//! they saw into a [`Report`].

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_net::{Stream, TlsConnector, TlsError};
use tokio::net::TcpStream;

use crate::config::Config;
use crate::login::{self, LoginError};
use crate::session::{Plan, Session};
use crate::stats::{ConnStats, Report};
use crate::{conn, cpu, preload};

/// How long one connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one SASL login may take. The connect's bound is enough: a
/// server's first check of a password costs thousands of HMACs (Shoal
/// caches it after that), milliseconds, not seconds.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one TLS handshake may take (`--tls-ca`): a loopback handshake
/// takes about a millisecond; the connect's bound is plenty.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A run that could not take place (as opposed to one that saw errors,
/// which the [`Report`] counts).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A connection could not be opened.
    #[error("cannot connect to {server}: {source}")]
    Connect {
        /// The address tried.
        server: String,
        /// Why.
        source: io::Error,
    },
    /// The CA file of `--tls-ca` could not be used.
    #[error("cannot use the TLS CA: {0}")]
    TlsCa(TlsError),
    /// A TLS handshake failed (`--tls-ca`): a plaintext port, a certificate
    /// the CA did not sign or that does not name the host.
    #[error("cannot open TLS to {server}: {source}")]
    Tls {
        /// The address tried.
        server: String,
        /// Why.
        source: TlsError,
    },
    /// A connection could not log in (`--sasl-user`).
    #[error("cannot log in to {server} as {user:?}: {source}")]
    Login {
        /// The address.
        server: String,
        /// The SASL user (never the password).
        user: String,
        /// Why.
        source: LoginError,
    },
    /// Preloading failed on the network.
    #[error("preload failed: {0}")]
    Preload(io::Error),
    /// The server refused to store a preloaded key.
    #[error("preload failed: the server did not store key number {0}")]
    PreloadRejected(u64),
    /// The server's reply to a preload set was not a reply.
    #[error("preload failed: {0}")]
    PreloadReply(&'static str),
    /// A connection task panicked.
    #[error("connection task failed: {0}")]
    Task(String),
}

/// The host part of `host:port` (`[v6]:port` included), which a server's
/// certificate must name.
fn server_host(server: &str) -> &str {
    let host = server.rsplit_once(':').map_or(server, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Opens one connection, runs the TLS handshake with `tls`, and with
/// `--sasl-user` logs it in: set-up, all of it before the clock starts.
async fn connect(config: &Config, tls: Option<&TlsConnector>) -> Result<Stream, RunError> {
    let server = &config.server;
    let failed = |source| RunError::Connect {
        server: server.to_string(),
        source,
    };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(server))
        .await
        .map_err(|_| failed(io::ErrorKind::TimedOut.into()))?
        .map_err(failed)?;
    // Requests are written whole; never let Nagle hold one back.
    tcp.set_nodelay(true).map_err(failed)?;
    let mut stream = match tls {
        None => Stream::Plain(tcp),
        Some(tls) => tls
            .connect(server_host(server), tcp, HANDSHAKE_TIMEOUT)
            .await
            .map_err(|source| RunError::Tls {
                server: server.to_string(),
                source,
            })?,
    };
    if let Some(credentials) = &config.sasl {
        tokio::time::timeout(LOGIN_TIMEOUT, login::login(&mut stream, credentials))
            .await
            .unwrap_or(Err(LoginError::Timeout))
            .map_err(|source| RunError::Login {
                server: server.to_string(),
                user: credentials.user.clone(),
                source,
            })?;
    }
    Ok(stream)
}

/// Runs `config` (already validated) on the current tokio runtime.
pub async fn run(config: &Config) -> Result<Report, RunError> {
    let tls = match &config.tls_ca {
        Some(ca) => Some(TlsConnector::trusting(ca).map_err(RunError::TlsCa)?),
        None => None,
    };
    let mut streams = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        streams.push(connect(config, tls.as_ref()).await?);
    }
    if config.preload {
        let plan = Arc::new(Plan::new(config, Instant::now()));
        streams = preload::preload(streams, plan).await?;
    }

    let plan = Arc::new(Plan::new(config, Instant::now()));
    let cpu = tokio::spawn(cpu::measure(plan.measure_start, plan.end));
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(id, stream)| tokio::spawn(conn::drive(stream, Session::new(plan.clone(), id))))
        .collect();

    let mut all = ConnStats::new(config.open_loop());
    let mut lost = 0;
    for task in tasks {
        let stats = task.await.map_err(|e| RunError::Task(e.to_string()))?;
        lost += usize::from(stats.lost);
        all.merge(&stats);
    }
    let cpu = cpu.await.ok().flatten();
    Ok(Report::build(config, &all, lost, cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_host_is_what_the_certificate_must_name() {
        assert_eq!(server_host("127.0.0.1:11207"), "127.0.0.1");
        assert_eq!(server_host("localhost:11207"), "localhost");
        assert_eq!(server_host("[::1]:11207"), "::1");
        assert_eq!(server_host("cache.example"), "cache.example");
    }
}
