//! One run: connect every connection (and log it in), preload, start the
//! clock, drive every connection to the end, merge what they saw into a
//! [`Report`].

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Opens one connection and, with `--sasl-user`, logs it in: set-up, all
/// of it before the clock starts.
async fn connect(config: &Config) -> Result<TcpStream, RunError> {
    let server = &config.server;
    let failed = |source| RunError::Connect {
        server: server.to_string(),
        source,
    };
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(server))
        .await
        .map_err(|_| failed(io::ErrorKind::TimedOut.into()))?
        .map_err(failed)?;
    // Requests are written whole; never let Nagle hold one back.
    stream.set_nodelay(true).map_err(failed)?;
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
    let mut streams = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        streams.push(connect(config).await?);
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
