//! The config watcher: follows a bucket's config stream from any reachable
//! node and offers every document to the [`MapStore`], which swaps in the
//! newer revisions.
//!
//! One explicit loop ([`run`]): take the next admin URL (the configured
//! ones, then every node learned from the configs), `GET
//! /pools/default/bucketsStreaming/<bucket>`, cut the chunked body into
//! documents with a [`StreamSplitter`], parse each, fill in `$HOST`, offer
//! it. A stream that ends, fails, or stays silent past the liveness timeout
//! sends the watcher to the next URL, with backoff once every URL has
//! failed in a row. While a stream runs, a wake-up on [`Shared::refresh`]
//! (a request met NOT_MY_VBUCKET) fetches `/pools/default/buckets/<bucket>`
//! once from the same node, without tearing the stream down.
//!
//! Every offer happens on this one task: [`MapStore::offer`] loads,
//! compares and stores without a lock, so two concurrent offers could
//! install an older revision over a newer one.
//!
//! Layer 3: may import `shared` and the layers below it. Must not import:
//! `session`, `admin`, `server`.
//!
//! Modules:
//! - `endpoints`: the URLs to try, in order, and the `$HOST` substitution.
//! - `backoff`: the pause after a round in which every URL failed.
//!
//! [`MapStore`]: crate::routing::MapStore
//! [`MapStore::offer`]: crate::routing::MapStore::offer

mod backoff;
mod endpoints;

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Client, StatusCode, Url};
use shoal_vbmap::config::{BucketConfig, ConfigError, StreamSplitter, DEFAULT_MAX_DOCUMENT_SIZE};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{MapSource, Password};
use crate::shared::Shared;
use backoff::RoundBackoff;
use endpoints::{bucket_url, substitute_host, Endpoints, Redacted};

/// Give up connecting to a node after this long. Nodes are on the same
/// network as the proxy, where a connect takes well under a millisecond; a
/// node that does not answer in a second is down or partitioned, and the
/// next one should be tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A stream that delivers nothing — not a config, not a keep-alive — for
/// this long is dead. Shoal nodes send a keep-alive (a bare separator) at
/// least every 5 s; twice that tolerates one lost or late keep-alive.
/// Also bounds the wait for a stream's response headers.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(10);

/// The whole one-shot `GET` of a refresh, headers to end of body. Requests
/// waiting for the fresh map retry for 2 s by default (`retry_deadline`),
/// so a slower answer would help none of them; the stream still brings it.
pub const REFRESH_TIMEOUT: Duration = Duration::from_secs(2);

/// Least time between two refresh fetches. A rebalance can make every
/// in-flight request see NOT_MY_VBUCKET at once; the wake-ups coalesce
/// into at most one fetch per interval per proxy.
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(100);

/// First pause after every URL failed in a row; doubles up to
/// [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// Longest pause between rounds over the URLs. Short, like the downstream
/// pools' reconnect backoff (2 s): while no node answers, the proxy serves
/// from its last map and wants the next one as soon as any node is back,
/// and one `GET` per URL every 2 s is no load for a cluster.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A stream that ends sooner than this after it started counts as a failed
/// attempt for backoff, even if it delivered a config: a node that answers
/// and hangs up at once must not make the watcher spin.
pub const MIN_HEALTHY_STREAM: Duration = Duration::from_secs(1);

/// The watcher's timing and limits; [`Default`] gives the constants above
/// (tests shorten them).
#[derive(Clone, Debug)]
pub struct WatcherSettings {
    /// TCP connect timeout per attempt.
    pub connect_timeout: Duration,
    /// Longest silence on a stream (and wait for its headers).
    pub liveness_timeout: Duration,
    /// Deadline of a one-shot refresh fetch.
    pub refresh_timeout: Duration,
    /// Least time between refresh fetches.
    pub refresh_interval: Duration,
    /// First backoff after a failed round.
    pub min_backoff: Duration,
    /// Largest backoff.
    pub max_backoff: Duration,
    /// Largest config document accepted, bytes.
    pub max_document_size: usize,
}

impl Default for WatcherSettings {
    fn default() -> Self {
        WatcherSettings {
            connect_timeout: CONNECT_TIMEOUT,
            liveness_timeout: LIVENESS_TIMEOUT,
            refresh_timeout: REFRESH_TIMEOUT,
            refresh_interval: REFRESH_INTERVAL,
            min_backoff: MIN_BACKOFF,
            max_backoff: MAX_BACKOFF,
            max_document_size: DEFAULT_MAX_DOCUMENT_SIZE,
        }
    }
}

/// Why the watcher left a node. Every one is the node's (or the
/// network's) fault, and every one is retried on the next URL.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// Connecting or sending the request failed.
    #[error("request failed: {0}")]
    Request(#[source] reqwest::Error),
    /// The node answered, but not with 2xx (404: it has no such bucket).
    #[error("node answered HTTP {0}")]
    Status(StatusCode),
    /// No response headers, or no bytes on the stream, in time.
    #[error("nothing received for {0:?}")]
    Silent(Duration),
    /// The body broke off.
    #[error("reading the body failed: {0}")]
    Body(#[source] reqwest::Error),
    /// The node closed the stream.
    #[error("the node closed the stream")]
    Closed,
    /// The stream's framing cannot be trusted (a document too large).
    #[error(transparent)]
    Framing(ConfigError),
}

/// Follows the cluster's config for `MapSource::Cluster` until `shutdown`
/// turns true (or its sender is dropped). Returns at once for a static
/// map source. Spawn it once per proxy.
pub async fn run(shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    run_with(shared, shutdown, WatcherSettings::default()).await;
}

/// [`run`] with explicit timing.
pub async fn run_with(
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    settings: WatcherSettings,
) {
    let MapSource::Cluster {
        urls,
        bucket,
        password,
    } = &shared.config.source
    else {
        tracing::debug!("static map: no config watcher");
        return;
    };
    let tls = shared.config.downstream.tls.as_ref();
    let (endpoints, rejected) = Endpoints::new(urls, tls.is_some());
    for url in rejected {
        let want = if tls.is_some() { "https" } else { "http" };
        tracing::error!(%url, "ignoring cluster URL: not {want}://host[:port]");
    }
    if endpoints.is_empty() {
        tracing::error!("no usable cluster URL: the proxy will never get a map");
        return;
    }
    let client = match shoal_net::tls::http_client(tls)
        .connect_timeout(settings.connect_timeout)
        // Admin ports are cluster-internal: never go through an HTTP proxy
        // from the environment.
        .no_proxy()
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "cannot build the HTTP client for the config watcher");
            return;
        }
    };
    let mut watcher = Watcher {
        shared: shared.clone(),
        client,
        bucket: bucket.clone(),
        password: password.clone(),
        settings,
        endpoints,
        next_refresh: Instant::now(),
    };
    tokio::select! {
        () = watcher.follow_forever() => {}
        () = stopped(&mut shutdown) => tracing::debug!("config watcher stopped"),
    }
}

/// Resolves once shutdown is signalled or can no longer be.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// A refresh fetch in progress: the documents of the body.
type Refresh = Pin<Box<dyn Future<Output = Result<Vec<Vec<u8>>, WatchError>> + Send>>;

/// The watcher's state (one per proxy, on one task).
#[derive(Debug)]
struct Watcher {
    shared: Arc<Shared>,
    client: Client,
    bucket: String,
    /// The bucket's password, sent as HTTP Basic credentials (the bucket's
    /// name and password) for a bucket that has one.
    password: Option<Password>,
    settings: WatcherSettings,
    endpoints: Endpoints,
    /// No refresh fetch may start before this.
    next_refresh: Instant,
}

// === impl Watcher ===

impl Watcher {
    /// The outer loop: one URL after another, backing off after a round in
    /// which every URL failed.
    async fn follow_forever(&mut self) {
        let mut backoff = RoundBackoff::new(self.settings.min_backoff, self.settings.max_backoff);
        loop {
            let url = self.endpoints.current().clone();
            tracing::info!(url = %Redacted(&url), bucket = %self.bucket, "streaming bucket config");
            let started = Instant::now();
            let mut delivered = 0usize;
            let error = self.follow(&url, &mut delivered).await;
            let lived = started.elapsed();
            self.endpoints.advance();
            let next = Redacted(self.endpoints.current());
            tracing::warn!(
                url = %Redacted(&url), %error, configs = delivered, ?lived, next = %next,
                "config stream lost; switching node"
            );
            if delivered > 0 && lived >= MIN_HEALTHY_STREAM {
                backoff.healthy();
            } else {
                backoff.failed(self.endpoints.len()).await;
            }
        }
    }

    /// Streams from `base` until the stream fails; returns why. Counts the
    /// documents that parsed in `delivered`.
    async fn follow(&mut self, base: &Url, delivered: &mut usize) -> WatchError {
        let liveness = self.settings.liveness_timeout;
        let url = bucket_url(base, "bucketsStreaming", &self.bucket);
        let request = self.authorized(self.client.get(url));
        let mut response = match tokio::time::timeout(liveness, request.send()).await {
            Err(_) => return WatchError::Silent(liveness),
            Ok(Err(error)) => return WatchError::Request(error),
            Ok(Ok(response)) if !response.status().is_success() => {
                self.note_refusal(response.status());
                return WatchError::Status(response.status());
            }
            Ok(Ok(response)) => response,
        };
        self.note_refusal(response.status());
        let mut splitter = StreamSplitter::new(self.settings.max_document_size);
        // A clone so the pinned `Notified` does not borrow `self`.
        let shared = self.shared.clone();
        // Kept armed across iterations (`enable`), so neither a
        // `notify_one` permit nor a `notify_waiters` wake-up is lost.
        let mut wakeup = pin!(shared.refresh.notified());
        wakeup.as_mut().enable();
        let mut refresh: Option<Refresh> = None;
        let mut deadline = Instant::now() + liveness;
        loop {
            tokio::select! {
                // `Response::chunk` is cancel-safe: a chunk is taken from
                // the body only when the future completes.
                chunk = tokio::time::timeout_at(deadline, response.chunk()) => {
                    let bytes = match chunk {
                        Err(_) => return WatchError::Silent(liveness),
                        Ok(Err(error)) => return WatchError::Body(error),
                        Ok(Ok(None)) => return WatchError::Closed,
                        Ok(Ok(Some(bytes))) => bytes,
                    };
                    deadline = Instant::now() + liveness;
                    let documents = match splitter.push(&bytes) {
                        Ok(documents) => documents,
                        Err(error) => return WatchError::Framing(error),
                    };
                    for document in documents {
                        *delivered += usize::from(self.apply(&document, base));
                    }
                }
                () = wakeup.as_mut(), if refresh.is_none() => {
                    wakeup.set(shared.refresh.notified());
                    wakeup.as_mut().enable();
                    refresh = Some(self.refresh(base));
                }
                fetched = async { refresh.as_mut().expect("guarded by is_some").await },
                    if refresh.is_some() =>
                {
                    refresh = None;
                    self.refreshed(fetched, base);
                }
            }
        }
    }

    /// `request` with the bucket's credentials, if it has a password.
    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.password {
            Some(Password(password)) => request.basic_auth(&self.bucket, Some(password)),
            None => request,
        }
    }

    /// Notes whether the node refused the credentials (401, 403): `/health`
    /// and every request report it until a node accepts them.
    fn note_refusal(&self, status: StatusCode) {
        let refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
        if self.shared.config_refused.swap(refused, Ordering::Relaxed) != refused && refused {
            tracing::error!(bucket = %self.bucket, "the cluster refused the bucket's credentials");
        }
    }

    /// The one-shot fetch of `/pools/default/buckets/<bucket>` from `base`,
    /// started no earlier than the refresh interval allows.
    fn refresh(&self, base: &Url) -> Refresh {
        let request = self.authorized(self.client.get(bucket_url(base, "buckets", &self.bucket)));
        let not_before = self.next_refresh;
        let timeout = self.settings.refresh_timeout;
        let max = self.settings.max_document_size;
        tracing::debug!(url = %Redacted(base), "refreshing bucket config");
        Box::pin(async move {
            tokio::time::sleep_until(not_before).await;
            let body = async {
                let mut response = request.send().await.map_err(WatchError::Request)?;
                if !response.status().is_success() {
                    return Err(WatchError::Status(response.status()));
                }
                // The splitter bounds the body as it bounds a stream, and
                // `finish` hands back the unseparated document.
                let mut splitter = StreamSplitter::new(max);
                let mut documents = Vec::new();
                while let Some(bytes) = response.chunk().await.map_err(WatchError::Body)? {
                    documents.extend(splitter.push(&bytes).map_err(WatchError::Framing)?);
                }
                documents.extend(splitter.finish().map_err(WatchError::Framing)?);
                Ok(documents)
            };
            tokio::time::timeout(timeout, body)
                .await
                .unwrap_or(Err(WatchError::Silent(timeout)))
        })
    }

    /// Applies what a refresh fetch from `base` brought, and holds the next
    /// one back for the refresh interval.
    fn refreshed(&mut self, fetched: Result<Vec<Vec<u8>>, WatchError>, base: &Url) {
        self.next_refresh = Instant::now() + self.settings.refresh_interval;
        match fetched {
            Ok(documents) => {
                for document in documents {
                    self.apply(&document, base);
                }
            }
            Err(error) => {
                tracing::warn!(url = %Redacted(base), %error, "config refresh failed");
            }
        }
    }

    /// Parses one document from `base`, fills in `$HOST`, offers it, and
    /// learns its nodes if it was installed. Returns true if it parsed and is
    /// for our bucket (the stream is healthy).
    fn apply(&mut self, document: &[u8], base: &Url) -> bool {
        let mut config = match BucketConfig::parse_slice(document) {
            Ok(config) => config,
            Err(error) => {
                tracing::warn!(url = %Redacted(base), %error, "skipping unparsable bucket config");
                return false;
            }
        };
        if let Some(name) = config.name.as_deref() {
            if name != self.bucket {
                tracing::warn!(url = %Redacted(base), bucket = %self.bucket, got = name,
                    "skipping config of another bucket");
                return false;
            }
        }
        let host = base.host_str().unwrap_or_default();
        let source: Arc<str> = if substitute_host(&mut config, host) {
            Arc::from(config.to_json())
        } else {
            Arc::from(String::from_utf8_lossy(document))
        };
        match self.shared.maps.offer(&config, source) {
            Ok(true) => {
                let learned = self.endpoints.learn(&config);
                tracing::info!(
                    url = %Redacted(base), rev = ?config.rev, epoch = ?config.rev_epoch,
                    learned, "installed bucket config"
                );
            }
            Ok(false) => {
                tracing::debug!(url = %Redacted(base), rev = ?config.rev,
                    "ignored bucket config: not newer than the one in use");
            }
            Err(error) => {
                tracing::warn!(url = %Redacted(base), rev = ?config.rev, %error,
                    "skipping invalid bucket config");
            }
        }
        true
    }
}
