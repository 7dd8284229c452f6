//! The HTTP admin port: `GET /health` for load-balancer checks, `GET
//! /config` for the map in use, `GET /metrics` for Prometheus.
//!
//! Everything here reads shared state ([`Shared`]) and changes nothing.
//! The port keeps answering while the proxy drains, so a load balancer
//! reads `503 draining` from `/health` rather than a refused connection.
//!
//! Modules:
//! - `metrics`: the Prometheus text rendering.
//!
//! Layer 3: may import `shared` and the layers below it. Must not import:
//! `watcher`, `session`, `server`.

mod metrics;

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::config::MapSource;
use crate::routing::Locator;
use crate::shared::Shared;

pub use metrics::{render as render_metrics, CONTENT_TYPE as METRICS_CONTENT_TYPE};

/// `/health`'s reason while the proxy is shutting down.
const DRAINING: &str = "draining";
/// `/health` and `/config`'s reason before the first map.
const NO_MAP: &str = "no cluster map yet";
/// `/health`'s reason while the cluster refuses the bucket's credentials.
const REFUSED: &str = "the cluster refuses the bucket's credentials (check the bucket password)";

/// The admin routes. The wiring serves them (with the admin port's
/// connection cap and header deadline) and keeps serving through a drain.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/config", get(config))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// 200 `ok` when requests can be served; 503 and the reason otherwise.
async fn health(State(shared): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    if shared.draining.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, DRAINING)
    } else if shared.credentials_refused() {
        (StatusCode::SERVICE_UNAVAILABLE, REFUSED)
    } else if !shared.maps.load().is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, NO_MAP)
    } else {
        (StatusCode::OK, "ok")
    }
}

/// The bucket config the current map came from, or for a static ring a
/// small description of it; 503 before the first map.
async fn config(State(shared): State<Arc<Shared>>) -> Response {
    let routing = shared.maps.snapshot();
    let json: String = match (&routing.source, &routing.locator) {
        (Some(source), _) => source.to_string(),
        (None, Locator::Empty) => return (StatusCode::SERVICE_UNAVAILABLE, NO_MAP).into_response(),
        (None, _) => {
            let weights = match &shared.config.source {
                MapSource::Static { weights, .. } if weights.len() == routing.servers.len() => {
                    weights.as_slice()
                }
                _ => &[],
            };
            let servers: Vec<String> = routing.servers.iter().map(ToString::to_string).collect();
            static_map_json(&servers, weights)
        }
    };
    ([(header::CONTENT_TYPE, "application/json")], json).into_response()
}

/// Prometheus text.
async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(&shared),
    )
}

/// `{"source":"static","nodeLocator":"ketama","hashing":"libketama",
/// "servers":[{"address":"h:p","weight":1},…]}`.
fn static_map_json(servers: &[String], weights: &[u32]) -> String {
    let mut json = String::from(
        r#"{"source":"static","nodeLocator":"ketama","hashing":"libketama","servers":["#,
    );
    for (i, server) in servers.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(r#"{"address":"#);
        push_json_string(&mut json, server);
        let weight = weights.get(i).copied().unwrap_or(1);
        let _ = write!(json, r#","weight":{weight}}}"#);
    }
    json.push_str("]}");
    json
}

/// `text` as a JSON string literal (RFC 8259 §7).
fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use shoal_vbmap::config::{BucketConfig, ServerAddr};

    use super::*;
    use crate::config::ProxyConfig;
    use tokio::net::TcpListener;
    use tokio::sync::watch;

    struct NoTls;

    impl shoal_net::http::HttpCounters for NoTls {
        fn handshake_failed(&self) {}
    }

    /// A running admin port over fresh shared state.
    struct Admin {
        shared: Arc<Shared>,
        base: String,
        client: reqwest::Client,
        shutdown: Option<watch::Sender<bool>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Admin {
        async fn start(config: ProxyConfig) -> Admin {
            let shared = Shared::new(config);
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let (tx, rx) = watch::channel(false);
            let task = tokio::spawn(shoal_net::http::serve(
                listener,
                router(shared.clone()),
                None,
                shoal_net::http::HttpLimits::default(),
                Arc::new(NoTls),
                rx,
                std::time::Duration::from_secs(1),
            ));
            Admin {
                shared,
                base,
                client: shoal_net::tls::http_client(None).build().unwrap(),
                shutdown: Some(tx),
                task,
            }
        }

        async fn get(&self, path: &str) -> (StatusCode, String, String) {
            let response = self
                .client
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let content_type = response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            (status, content_type, response.text().await.unwrap())
        }
    }

    const CONFIG: &str = r#"{"rev":42,"name":"default","nodes":[{"hostname":"127.0.0.1:8091","ports":{"direct":11210}}],"vBucketServerMap":{"hashAlgorithm":"CRC","numReplicas":0,"serverList":["127.0.0.1:11210"],"vBucketMap":[[0],[0]]}}"#;

    #[tokio::test]
    async fn health_follows_the_map_and_the_drain() {
        let mut admin = Admin::start(ProxyConfig::default()).await;
        let (status, _, body) = admin.get("/health").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, NO_MAP)
        );
        let (status, _, _) = admin.get("/config").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

        let config = BucketConfig::parse(CONFIG).unwrap();
        assert!(admin.shared.maps.offer(&config, Arc::from(CONFIG)).unwrap());
        let (status, _, body) = admin.get("/health").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
        let (status, content_type, body) = admin.get("/config").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "application/json");
        assert_eq!(body, CONFIG);

        // A drain: 503 at once, and the port still answers.
        admin.shared.draining.store(true, Ordering::Release);
        let (status, _, body) = admin.get("/health").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, DRAINING)
        );
        // Once the drain is over the wiring stops the port.
        admin.shutdown.take().unwrap().send(true).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), &mut admin.task)
            .await
            .expect("admin port stops once the shutdown sender is gone")
            .unwrap();
    }

    #[tokio::test]
    async fn static_config_describes_the_ring() {
        let servers = vec![
            ServerAddr::parse("10.0.0.1:11211").unwrap(),
            ServerAddr::parse("[::1]:11212").unwrap(),
        ];
        let config = ProxyConfig {
            source: MapSource::Static {
                servers: servers.clone(),
                weights: vec![1, 3],
            },
            ..ProxyConfig::default()
        };
        let admin = Admin::start(config).await;
        admin.shared.maps.install_static(servers, &[1, 3]);
        let (status, _, body) = admin.get("/config").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            concat!(
                r#"{"source":"static","nodeLocator":"ketama","hashing":"libketama","servers":["#,
                r#"{"address":"10.0.0.1:11211","weight":1},{"address":"[::1]:11212","weight":3}]}"#
            )
        );
        let (status, _, _) = admin.get("/health").await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_page_is_served() {
        let admin = Admin::start(ProxyConfig::default()).await;
        let config = BucketConfig::parse(CONFIG).unwrap();
        admin.shared.maps.offer(&config, Arc::from(CONFIG)).unwrap();
        admin.shared.stats.retries.store(3, Ordering::Relaxed);
        let (status, content_type, body) = admin.get("/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, METRICS_CONTENT_TYPE);
        for line in [
            "# TYPE shoal_proxy_retries_total counter",
            "shoal_proxy_retries_total 3",
            "shoal_proxy_map_revision 42",
            "shoal_proxy_map_ready 1",
            "shoal_proxy_draining 0",
            "shoal_proxy_node_down{node=\"127.0.0.1:11210\"} 0",
            "shoal_proxy_node_in_flight{node=\"127.0.0.1:11210\"} 0",
            "shoal_proxy_request_duration_seconds_bucket{le=\"+Inf\"} 0",
        ] {
            assert!(
                body.lines().any(|l| l == line),
                "missing {line:?} in\n{body}"
            );
        }
        let (status, _, _) = admin.get("/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        push_json_string(&mut out, "a\"b\\c\u{1}");
        assert_eq!(out, r#""a\"b\\c\u0001""#);
        assert_eq!(
            static_map_json(&[], &[]),
            r#"{"source":"static","nodeLocator":"ketama","hashing":"libketama","servers":[]}"#
        );
    }
}
