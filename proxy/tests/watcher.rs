//! The config watcher against scripted HTTP servers on 127.0.0.1:0 that
//! stream bucket configs the way a node does: documents separated by
//! `"\n\n\n\n"`, cut into chunks anywhere, with pauses.
//!
//! The servers list data ports nobody listens on: the map store gives each
//! server an idle pool, which connects only when a request needs it.
//!
//! These tests run on real time: the watcher talks HTTP over real loopback
//! sockets, and a paused clock jumps to the next timer whenever the runtime
//! parks — IO readiness does not hold it back — so a response still in
//! flight would meet an expired connect or liveness timeout. The exact
//! waits are checked on paused time where no socket is involved: the
//! backoff schedule in `watcher::backoff`'s unit tests, and
//! `static_source_returns_at_once` below.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use shoal_proxy::watcher::{self, WatcherSettings};
use shoal_proxy::{MapSource, ProxyConfig, Shared};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// How long any awaited condition may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// One step of a scripted stream response.
#[derive(Clone, Debug)]
enum Step {
    /// Send these bytes as one chunk.
    Send(String),
    /// Pause.
    Wait(Duration),
    /// End the body (the node hangs up).
    Close,
}

/// What a test server answers.
#[derive(Debug)]
struct Script {
    /// Status of the streaming endpoint (200 or an error).
    status: StatusCode,
    /// The streaming body; without a final `Close` the stream stays open.
    stream: Vec<Step>,
    /// The body of the one-shot `/pools/default/buckets/default`.
    fetch: String,
}

/// A scripted config server.
#[derive(Clone, Debug)]
struct ConfigServer {
    url: String,
    port: u16,
    streams: Arc<AtomicUsize>,
    fetches: Arc<AtomicUsize>,
    script: Arc<Mutex<Script>>,
}

impl ConfigServer {
    async fn start(stream: Vec<Step>) -> ConfigServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = ConfigServer {
            url: format!("http://127.0.0.1:{port}"),
            port,
            streams: Arc::default(),
            fetches: Arc::default(),
            script: Arc::new(Mutex::new(Script {
                status: StatusCode::OK,
                stream,
                fetch: String::new(),
            })),
        };
        let app = Router::new()
            .route(
                "/pools/default/bucketsStreaming/default",
                get(stream_config),
            )
            .route("/pools/default/buckets/default", get(fetch_config))
            .with_state(server.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        server
    }

    fn set_status(&self, status: StatusCode) {
        self.script.lock().unwrap().status = status;
    }

    fn set_fetch(&self, body: String) {
        self.script.lock().unwrap().fetch = body;
    }
}

async fn stream_config(State(server): State<ConfigServer>) -> Response {
    server.streams.fetch_add(1, Ordering::SeqCst);
    let (status, steps) = {
        let script = server.script.lock().unwrap();
        (script.status, script.stream.clone())
    };
    if !status.is_success() {
        return (status, "no").into_response();
    }
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        for step in steps {
            match step {
                Step::Send(text) => {
                    if tx.send(Bytes::from(text)).await.is_err() {
                        return;
                    }
                }
                Step::Wait(pause) => tokio::time::sleep(pause).await,
                Step::Close => return,
            }
        }
        // Hold the stream open, silent, until the client goes away.
        tx.closed().await;
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, Infallible>(chunk), rx))
    });
    Body::from_stream(body).into_response()
}

async fn fetch_config(State(server): State<ConfigServer>) -> String {
    server.fetches.fetch_add(1, Ordering::SeqCst);
    server.script.lock().unwrap().fetch.clone()
}

/// A bucket config at `rev` whose `nodes` have the given admin
/// `host:port`s, every vbucket on data server `data`.
fn config(rev: i64, admin: &[String], data: &str) -> String {
    let nodes: Vec<String> = admin
        .iter()
        .map(|h| format!(r#"{{"hostname":"{h}","ports":{{"direct":1}}}}"#))
        .collect();
    format!(
        r#"{{"rev":{rev},"name":"default","nodeLocator":"vbucket","nodes":[{}],"vBucketServerMap":{{"hashAlgorithm":"CRC","numReplicas":0,"serverList":["{data}"],"vBucketMap":[[0],[0],[0],[0]]}}}}"#,
        nodes.join(",")
    )
}

/// The document, then the separator, cut in two chunks mid-separator,
/// with a pause after each.
fn slowly(document: &str) -> Vec<Step> {
    let pause = Step::Wait(Duration::from_millis(15));
    let whole = format!("{document}\n\n\n\n");
    let (a, b) = whole.split_at(document.len() + 2);
    vec![
        Step::Send(a.to_owned()),
        pause.clone(),
        Step::Send(b.to_owned()),
        pause,
    ]
}

fn shared(urls: Vec<String>) -> Arc<Shared> {
    Shared::new(ProxyConfig {
        source: MapSource::Cluster {
            urls,
            bucket: "default".into(),
            password: None,
        },
        ..ProxyConfig::default()
    })
}

/// A running watcher and its shutdown switch.
struct Running {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    fn start(shared: Arc<Shared>, settings: WatcherSettings) -> Running {
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(watcher::run_with(shared.clone(), rx, settings));
        Running { shared, stop, task }
    }

    fn rev(&self) -> Option<i64> {
        self.shared.maps.load().revision.and_then(|r| r.rev)
    }

    fn source(&self) -> String {
        self.shared
            .maps
            .load()
            .source
            .as_deref()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until the map in use is at `rev`.
    async fn until_rev(&self, rev: i64) {
        let mut changes = self.shared.maps.subscribe();
        let reached = tokio::time::timeout(PATIENCE, async {
            while self.rev() != Some(rev) {
                changes.changed().await.unwrap();
            }
        })
        .await;
        assert!(
            reached.is_ok(),
            "map never reached rev {rev}; at {:?}",
            self.rev()
        );
    }

    /// Maps swapped in so far.
    fn swaps(&self) -> u64 {
        *self.shared.maps.subscribe().borrow()
    }

    /// Signals shutdown; the watcher must return promptly.
    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .expect("watcher stops on shutdown")
            .unwrap();
    }
}

#[tokio::test]
async fn stream_installs_newer_revs_and_skips_bad_and_stale_ones() {
    let data = "127.0.0.1:1";
    let mut steps = Vec::new();
    for document in [
        config(1, &[], data),
        config(2, &[], data),
        // Not JSON.
        r#"{"rev":7,"name":"#.to_owned(),
        // JSON, but 3 vbuckets is not a power of two.
        config(9, &[], data).replace("[[0],[0],[0],[0]]", "[[0],[0],[0]]"),
        config(5, &[], data),
        // Older than what is held: a stale node's view.
        config(3, &[], data),
    ] {
        steps.extend(slowly(&document));
    }
    // A keep-alive (a blank document), then one more config.
    steps.push(Step::Send("\n\n\n\n".into()));
    steps.extend(slowly(&config(6, &[], data)));
    let server = ConfigServer::start(steps).await;

    let watcher = Running::start(shared(vec![server.url.clone()]), WatcherSettings::default());
    watcher.until_rev(6).await;
    // rev 1, 2, 5, 6 were swapped in; 3 (stale) and the two bad documents
    // were not, and the stream was never dropped for them.
    assert_eq!(watcher.swaps(), 4);
    assert_eq!(watcher.source(), config(6, &[], data));
    assert_eq!(server.streams.load(Ordering::SeqCst), 1);
    watcher.stop().await;
}

#[tokio::test]
async fn closed_stream_fails_over_to_the_next_and_to_learned_nodes() {
    // C is in no one's list: the watcher learns it from A's config, which
    // (like an unconfigured Couchbase node) names hosts as `$HOST`.
    let c = ConfigServer::start(slowly(&config(3, &[], "127.0.0.1:3"))).await;
    let a_doc = config(
        1,
        &["127.0.0.1:9".into(), format!("$HOST:{}", c.port)],
        "$HOST:1",
    );
    let a = ConfigServer::start([slowly(&a_doc), vec![Step::Close]].concat()).await;
    let b =
        ConfigServer::start([slowly(&config(2, &[], "127.0.0.1:2")), vec![Step::Close]].concat())
            .await;

    let watcher = Running::start(
        shared(vec![a.url.clone(), b.url.clone()]),
        WatcherSettings::default(),
    );
    watcher.until_rev(3).await;
    assert_eq!(a.streams.load(Ordering::SeqCst), 1);
    assert_eq!(b.streams.load(Ordering::SeqCst), 1);
    assert_eq!(c.streams.load(Ordering::SeqCst), 1);
    watcher.stop().await;
}

#[tokio::test]
async fn host_placeholder_becomes_the_streaming_host() {
    let doc = config(4, &["$HOST:8091".into()], "$HOST:11210");
    let server = ConfigServer::start(slowly(&doc)).await;
    let watcher = Running::start(shared(vec![server.url.clone()]), WatcherSettings::default());
    watcher.until_rev(4).await;
    let routing = watcher.shared.maps.snapshot();
    assert_eq!(routing.servers[0].to_string(), "127.0.0.1:11210");
    let source = watcher.source();
    assert!(!source.contains("$HOST"), "{source}");
    assert!(
        source.contains(r#""hostname":"127.0.0.1:8091""#),
        "{source}"
    );
    watcher.stop().await;
}

#[tokio::test]
async fn unreachable_and_failing_nodes_are_skipped() {
    // A port nobody listens on any more: connection refused.
    let refused = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let missing = ConfigServer::start(Vec::new()).await;
    missing.set_status(StatusCode::NOT_FOUND);
    let good = ConfigServer::start(slowly(&config(8, &[], "127.0.0.1:1"))).await;

    let watcher = Running::start(
        shared(vec![refused, missing.url.clone(), good.url.clone()]),
        WatcherSettings::default(),
    );
    watcher.until_rev(8).await;
    assert_eq!(missing.streams.load(Ordering::SeqCst), 1);
    watcher.stop().await;
}

// Real time (see the module doc); the length of each pause is checked on
// paused time in `watcher::backoff`'s tests, so the pauses here are short.
#[tokio::test]
async fn backs_off_while_every_node_fails_then_recovers() {
    let server = ConfigServer::start(slowly(&config(5, &[], "127.0.0.1:1"))).await;
    server.set_status(StatusCode::SERVICE_UNAVAILABLE);
    let settings = WatcherSettings {
        min_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        ..WatcherSettings::default()
    };
    let started = tokio::time::Instant::now();
    let watcher = Running::start(shared(vec![server.url.clone()]), settings);
    let deadline = started + PATIENCE;
    while server.streams.load(Ordering::SeqCst) < 4 {
        assert!(tokio::time::Instant::now() < deadline, "no retries");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Three pauses before the fourth attempt: 5 + 10 + 20 ms at least.
    assert!(started.elapsed() >= Duration::from_millis(35));
    assert_eq!(watcher.rev(), None);
    server.set_status(StatusCode::OK);
    watcher.until_rev(5).await;
    watcher.stop().await;
}

// Real time (see the module doc): the silence is measured on a real HTTP
// stream, and the switch to B needs B's socket to make progress.
#[tokio::test]
async fn silent_stream_is_abandoned_after_the_liveness_timeout() {
    // A sends one config and then nothing, not even keep-alives.
    let a = ConfigServer::start(slowly(&config(1, &[], "127.0.0.1:1"))).await;
    let b = ConfigServer::start(slowly(&config(2, &[], "127.0.0.1:2"))).await;
    let settings = WatcherSettings {
        liveness_timeout: Duration::from_millis(300),
        ..WatcherSettings::default()
    };
    let watcher = Running::start(shared(vec![a.url.clone(), b.url.clone()]), settings);
    watcher.until_rev(1).await;
    let started = tokio::time::Instant::now();
    watcher.until_rev(2).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(b.streams.load(Ordering::SeqCst), 1);
    watcher.stop().await;
}

#[tokio::test]
async fn refresh_fetches_once_without_dropping_the_stream() {
    let server = ConfigServer::start(slowly(&config(1, &[], "127.0.0.1:1"))).await;
    let watcher = Running::start(shared(vec![server.url.clone()]), WatcherSettings::default());
    watcher.until_rev(1).await;
    assert_eq!(server.fetches.load(Ordering::SeqCst), 0);

    // A request saw NOT_MY_VBUCKET.
    server.set_fetch(config(2, &[], "127.0.0.1:2"));
    watcher.shared.refresh.notify_one();
    watcher.until_rev(2).await;
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1);

    // `notify_waiters` works as well (the wake-up is always armed).
    server.set_fetch(config(3, &[], "127.0.0.1:3"));
    watcher.shared.refresh.notify_waiters();
    watcher.until_rev(3).await;
    assert_eq!(server.fetches.load(Ordering::SeqCst), 2);
    assert_eq!(watcher.source(), config(3, &[], "127.0.0.1:3"));

    // A stale answer changes nothing.
    server.set_fetch(config(2, &[], "127.0.0.1:2"));
    let swaps = watcher.swaps();
    watcher.shared.refresh.notify_one();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while server.fetches.load(Ordering::SeqCst) < 3 {
        assert!(tokio::time::Instant::now() < deadline, "no third fetch");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Fetches are applied in order: once rev 4 is in, rev 2 was seen and
    // ignored.
    server.set_fetch(config(4, &[], "127.0.0.1:4"));
    watcher.shared.refresh.notify_one();
    watcher.until_rev(4).await;
    assert_eq!(watcher.swaps(), swaps + 1);
    assert_eq!(server.streams.load(Ordering::SeqCst), 1, "stream kept");
    watcher.stop().await;
}

// No socket: on paused time the timeout would fire at once, with no real
// wait, if the watcher did not return by itself.
#[tokio::test(start_paused = true)]
async fn static_source_returns_at_once() {
    let (_stop, rx) = watch::channel(false);
    let run = watcher::run(Shared::new(ProxyConfig::default()), rx);
    let started = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(1), run)
        .await
        .expect("nothing to watch");
    assert_eq!(started.elapsed(), Duration::ZERO, "no time passed");
}
