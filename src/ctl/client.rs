//! The HTTP side of `shoal ctl`: each request goes to the cluster URLs in
//! turn until one answers, so no single node is needed for administration.
//!
//! When to move on to the next URL (the retry-safety rule of STYLE.md
//! rule 19): a failure to *connect* (refused, unreachable, connect
//! timeout) means nothing was sent, so every request moves on. A failure
//! after the request went out (no reply in time, connection reset) moves
//! on only for a GET: a POST or DELETE may already have been applied, and
//! repeating it elsewhere could, say, create a bucket twice or report a
//! confusing 404 for a delete that succeeded. Such a request ends with
//! [`CtlError::Unknown`] and the user checks with `shoal ctl status`.
//!
//! A node that answers, with any status, has answered: an error status is
//! the cluster's verdict, not a reason to ask another node.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use shoal_node::config::Credentials;

/// How long each URL may take to accept a connection before the next one
/// is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a whole exchange may take: the connect budget plus 5 s for the
/// reply. The REST calls here answer in milliseconds; a node that accepts
/// connections but does not answer (stopped, wedged) is the case this
/// bounds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest server error body quoted verbatim, in characters.
const MAX_QUOTED_BODY: usize = 200;

/// The timeouts of a [`Cluster`]; tests shorten them.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Per connection attempt.
    pub connect: Duration,
    /// Per exchange, connect included.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: CONNECT_TIMEOUT,
            request: REQUEST_TIMEOUT,
        }
    }
}

/// Why a command failed.
#[derive(Debug)]
pub enum CtlError {
    /// The cluster answered with a non-2xx status.
    Refused {
        /// The HTTP status.
        status: StatusCode,
        /// What the server said (its `error` field, or the body).
        message: String,
        /// The body, when it is JSON (printed with `--json`).
        body: Option<Value>,
    },
    /// No URL answered; one line per attempt, in order.
    Unreachable { attempts: Vec<String> },
    /// A write was sent to `url` but no reply came: it may or may not
    /// have been applied.
    Unknown { url: String, reason: String },
    /// A 2xx reply whose body is not what the API promises.
    BadReply { url: String, reason: String },
    /// Something on this side (building the HTTP client or runtime), or a
    /// request that cannot be sent as asked.
    Local(String),
    /// A long-running operation the cluster accepted ended in failure.
    Failed(String),
}

impl CtlError {
    /// The process exit code: 1 when the cluster said no (or said
    /// nonsense), 3 when it could not be asked or did not answer. 2 is
    /// clap's, for usage errors.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Refused { .. }
            | CtlError::BadReply { .. }
            | CtlError::Local(_)
            | CtlError::Failed(_) => 1,
            CtlError::Unreachable { .. } | CtlError::Unknown { .. } => 3,
        }
    }
}

impl std::fmt::Display for CtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CtlError::Refused {
                status, message, ..
            } => write!(f, "{message} (HTTP {})", status.as_u16()),
            CtlError::Unreachable { attempts } => {
                write!(f, "no cluster node answered: {}", attempts.join("; "))
            }
            CtlError::Unknown { url, reason } => write!(
                f,
                "{url}: {reason}; the request may have been applied (check with `shoal ctl status`)"
            ),
            CtlError::BadReply { url, reason } => write!(f, "{url}: unexpected reply: {reason}"),
            CtlError::Local(reason) | CtlError::Failed(reason) => f.write_str(reason),
        }
    }
}

/// A 2xx reply.
#[derive(Debug)]
pub struct Reply {
    /// The URL that answered, password masked (for messages).
    pub url: String,
    /// The body as text.
    pub body: String,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Result<Value, CtlError> {
        serde_json::from_str(&self.body).map_err(|e| self.bad(e))
    }

    /// A [`CtlError::BadReply`] about this reply.
    pub fn bad(&self, reason: impl ToString) -> CtlError {
        CtlError::BadReply {
            url: self.url.clone(),
            reason: reason.to_string(),
        }
    }
}

/// The cluster's admin URLs and an HTTP client.
#[derive(Debug)]
pub struct Cluster {
    /// Base URLs; the REST paths replace their path.
    urls: Vec<Url>,
    http: reqwest::Client,
    /// Sent with every request (HTTP Basic).
    credentials: Option<Credentials>,
    /// The URL that answered last; the next request starts there, so the
    /// two GETs of `status` do not both wait out a dead first URL.
    preferred: AtomicUsize,
}

impl Cluster {
    /// A client for `urls` (at least one).
    pub fn new(
        urls: Vec<Url>,
        timeouts: Timeouts,
        credentials: Option<Credentials>,
    ) -> Result<Cluster, CtlError> {
        if urls.is_empty() {
            return Err(CtlError::Local("no cluster URL given".to_owned()));
        }
        let http = shoal_net::tls::http_client(None)
            // An admin tool talks to the cluster it names; an HTTP(S)_PROXY
            // meant for the internet must not capture loopback addresses.
            .no_proxy()
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.request)
            .build()
            .map_err(|e| CtlError::Local(format!("building the HTTP client: {e}")))?;
        Ok(Cluster {
            urls,
            http,
            credentials,
            preferred: AtomicUsize::new(0),
        })
    }

    /// `GET path`.
    pub async fn get(&self, path: &[&str]) -> Result<Reply, CtlError> {
        self.send(Method::GET, path, None).await
    }

    /// `POST path` with a form-urlencoded body.
    pub async fn post_form(
        &self,
        path: &[&str],
        form: &[(&str, String)],
    ) -> Result<Reply, CtlError> {
        self.send(Method::POST, path, Some(form)).await
    }

    /// `PUT path` with a form-urlencoded body.
    pub async fn put_form(
        &self,
        path: &[&str],
        form: &[(&str, String)],
    ) -> Result<Reply, CtlError> {
        self.send(Method::PUT, path, Some(form)).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &[&str]) -> Result<Reply, CtlError> {
        self.send(Method::DELETE, path, None).await
    }

    /// Sends one request, moving through the URLs as the module doc says.
    async fn send(
        &self,
        method: Method,
        path: &[&str],
        form: Option<&[(&str, String)]>,
    ) -> Result<Reply, CtlError> {
        let start = self.preferred.load(Ordering::Relaxed);
        let mut attempts = Vec::new();
        for k in 0..self.urls.len() {
            let i = (start + k) % self.urls.len();
            let url = endpoint(&self.urls[i], path);
            let shown = redacted(&url);
            let mut request = self.http.request(method.clone(), url);
            if let Some(c) = &self.credentials {
                request = request.basic_auth(&c.username, Some(&c.password));
            }
            if let Some(form) = form {
                request = request.form(form);
            }
            let exchange = async {
                let response = request.send().await?;
                let status = response.status();
                Ok::<_, reqwest::Error>((status, response.text().await?))
            };
            match exchange.await {
                Ok((status, body)) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    if status.is_success() {
                        return Ok(Reply { url: shown, body });
                    }
                    return Err(refusal(status, &body));
                }
                Err(e) if e.is_connect() || method == Method::GET => {
                    attempts.push(format!("{shown}: {}", describe(&e)));
                }
                Err(e) => {
                    return Err(CtlError::Unknown {
                        url: shown,
                        reason: describe(&e),
                    })
                }
            }
        }
        Err(CtlError::Unreachable { attempts })
    }
}

/// `base` with its path replaced by `path`, each segment escaped (a bucket
/// named `a/b` stays one segment). REST paths hang off the root, as every
/// Couchbase client has them (the proxy's watcher does the same).
fn endpoint(base: &Url, path: &[&str]) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    // Cannot fail: `parse_cluster_url` accepts only http URLs, which have
    // a path.
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.clear().extend(path);
    }
    url
}

/// A URL for messages: the password (if the URL carries one) masked.
pub fn redacted(url: &Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.to_string()
}

/// What a transport error comes down to: the innermost cause ("Connection
/// refused (os error 111)", "operation timed out"), which reqwest's own
/// message ("error sending request for url …") hides.
fn describe(error: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The error of a non-2xx reply. The message is, in order of preference:
/// the JSON `error` string; Couchbase's per-field `errors` object
/// (`field: reason; …`); a JSON array of strings; the body text (cut to
/// [`MAX_QUOTED_BODY`] characters); the status's reason phrase.
pub fn refusal(status: StatusCode, body: &str) -> CtlError {
    let json: Option<Value> = serde_json::from_str(body).ok();
    let from_json = json.as_ref().and_then(|v| match v {
        Value::Object(o) => match (o.get("error"), o.get("errors")) {
            (Some(Value::String(s)), _) => Some(s.clone()),
            (_, Some(Value::Object(errors))) if !errors.is_empty() => Some(
                errors
                    .iter()
                    .map(|(field, reason)| match reason {
                        Value::String(s) => format!("{field}: {s}"),
                        other => format!("{field}: {other}"),
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            _ => None,
        },
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_string) => Some(
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; "),
        ),
        _ => None,
    });
    let message = from_json.unwrap_or_else(|| {
        let text = body.trim();
        if text.is_empty() {
            status.canonical_reason().unwrap_or("error").to_owned()
        } else if text.chars().count() > MAX_QUOTED_BODY {
            let cut: String = text.chars().take(MAX_QUOTED_BODY).collect();
            format!("{cut}…")
        } else {
            text.to_owned()
        }
    });
    let message = if status == StatusCode::UNAUTHORIZED {
        format!(
            "{message}: give --username with --password, --password-file or --credentials, \
             set SHOAL_USERNAME and SHOAL_PASSWORD, or run from the directory `shoal up` runs in"
        )
    } else {
        message
    };
    CtlError::Refused {
        status,
        message,
        body: json,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Short timeouts so the "no reply" cases finish quickly.
    const FAST: Timeouts = Timeouts {
        connect: Duration::from_millis(500),
        request: Duration::from_millis(500),
    };

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    /// A URL on which nothing listens: a port that was just bound and
    /// released (the kernel does not hand it out again at once).
    async fn dead_url() -> Url {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        url(&format!("http://127.0.0.1:{port}"))
    }

    /// Serves `response` (a whole HTTP/1.1 response) to each of `count`
    /// connections and returns every request it read (head and body).
    async fn canned(
        response: &'static str,
        count: usize,
    ) -> (Url, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = url(&format!("http://{}", listener.local_addr().unwrap()));
        let task = tokio::spawn(async move {
            let mut requests = Vec::new();
            for _ in 0..count {
                let (mut conn, _) = listener.accept().await.unwrap();
                requests.push(read_request(&mut conn).await);
                conn.write_all(response.as_bytes()).await.unwrap();
                conn.shutdown().await.unwrap();
            }
            requests
        });
        (base, task)
    }

    /// Reads one request: the head, then `Content-Length` bytes of body.
    async fn read_request(conn: &mut tokio::net::TcpStream) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    return text;
                }
            }
            let n = conn.read(&mut chunk).await.unwrap();
            assert!(n > 0, "client closed mid-request");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// A listener that accepts connections and never answers.
    async fn silent_url() -> (Url, TcpListener) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = url(&format!("http://{}", listener.local_addr().unwrap()));
        (base, listener)
    }

    const OK_JSON: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n[]";

    #[tokio::test]
    async fn a_refused_connection_moves_to_the_next_url() {
        let (good, server) = canned(OK_JSON, 1).await;
        let cluster = Cluster::new(vec![dead_url().await, good], FAST, None).unwrap();
        let reply = cluster
            .post_form(&["pools", "default", "buckets"], &[("name", "b".into())])
            .await
            .unwrap();
        assert_eq!(reply.body, "[]");
        let requests = server.await.unwrap();
        assert!(requests[0].starts_with("POST /pools/default/buckets HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn a_get_without_reply_moves_to_the_next_url() {
        let (silent, _held) = silent_url().await;
        let (good, _server) = canned(OK_JSON, 1).await;
        let cluster = Cluster::new(vec![silent, good], FAST, None).unwrap();
        assert_eq!(cluster.get(&["pools", "default"]).await.unwrap().body, "[]");
    }

    #[tokio::test]
    async fn a_write_without_reply_is_not_repeated_elsewhere() {
        let (silent, _held) = silent_url().await;
        let (good, server) = canned(OK_JSON, 1).await;
        let cluster = Cluster::new(vec![silent, good], FAST, None).unwrap();
        let started = Instant::now();
        let error = cluster
            .delete(&["pools", "default", "buckets", "b"])
            .await
            .unwrap_err();
        assert!(matches!(error, CtlError::Unknown { .. }), "{error:?}");
        assert_eq!(error.exit_code(), 3);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!server.is_finished(), "the second URL was asked");
        server.abort();
    }

    #[tokio::test]
    async fn no_url_answering_lists_every_attempt() {
        let (a, b) = (dead_url().await, dead_url().await);
        let cluster = Cluster::new(vec![a.clone(), b.clone()], FAST, None).unwrap();
        let error = cluster.get(&["pools", "default"]).await.unwrap_err();
        let CtlError::Unreachable { attempts } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(attempts.len(), 2);
        assert!(attempts[0].starts_with(&format!("{a}pools/default: ")));
        assert!(attempts[1].starts_with(&format!("{b}pools/default: ")));
        assert!(error.to_string().starts_with("no cluster node answered: "));
        assert_eq!(error.exit_code(), 3);
    }

    #[tokio::test]
    async fn an_error_status_is_the_answer() {
        const BAD: &str = "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 53\r\nconnection: close\r\n\r\n{\"error\":\"ramQuotaMB must be at least 100\",\"min\":100}";
        let (bad, _server) = canned(BAD, 1).await;
        let (good, second) = canned(OK_JSON, 1).await;
        let cluster = Cluster::new(vec![bad, good], FAST, None).unwrap();
        let error = cluster
            .post_form(&["pools", "default", "buckets"], &[])
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "ramQuotaMB must be at least 100 (HTTP 400)"
        );
        assert_eq!(error.exit_code(), 1);
        let CtlError::Refused { body, .. } = error else {
            unreachable!()
        };
        assert_eq!(body.unwrap()["min"], 100);
        assert!(!second.is_finished());
        second.abort();
    }

    #[tokio::test]
    async fn the_url_that_answered_is_asked_first_next_time() {
        let (good, server) = canned(OK_JSON, 2).await;
        let cluster = Cluster::new(vec![dead_url().await, good], FAST, None).unwrap();
        cluster.get(&["a"]).await.unwrap();
        assert_eq!(cluster.preferred.load(Ordering::Relaxed), 1);
        cluster.get(&["b"]).await.unwrap();
        let requests = server.await.unwrap();
        assert!(requests[1].starts_with("GET /b HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn forms_are_urlencoded() {
        let (good, server) = canned(OK_JSON, 1).await;
        let cluster = Cluster::new(vec![good], FAST, None).unwrap();
        let form = [
            ("name", "a b&c".to_owned()),
            ("ramQuotaMB", "256".to_owned()),
        ];
        cluster.post_form(&["x"], &form).await.unwrap();
        let request = server.await.unwrap().remove(0);
        let lower = request.to_ascii_lowercase();
        assert!(lower.contains("content-type: application/x-www-form-urlencoded\r\n"));
        assert!(request.ends_with("\r\n\r\nname=a+b%26c&ramQuotaMB=256"));
    }

    #[test]
    fn endpoints_replace_the_path_and_escape_segments() {
        let base = url("http://admin:secret@h:8091/ignored/?q=1#f");
        let url = endpoint(&base, &["pools", "default", "buckets", "a/b c"]);
        assert_eq!(
            url.as_str(),
            "http://admin:secret@h:8091/pools/default/buckets/a%2Fb%20c"
        );
        assert_eq!(
            redacted(&url),
            "http://admin:***@h:8091/pools/default/buckets/a%2Fb%20c"
        );
    }

    fn message(status: u16, body: &str) -> String {
        refusal(StatusCode::from_u16(status).unwrap(), body).to_string()
    }

    #[test]
    fn error_messages_come_from_the_body() {
        assert_eq!(
            message(404, r#"{"error":"no such bucket"}"#),
            "no such bucket (HTTP 404)"
        );
        assert_eq!(
            message(
                400,
                r#"{"errors":{"ramQuotaMB":"too small","name":"taken"}}"#
            ),
            "name: taken; ramQuotaMB: too small (HTTP 400)"
        );
        assert_eq!(
            message(500, r#"["Unexpected server error"]"#),
            "Unexpected server error (HTTP 500)"
        );
        assert_eq!(message(502, "  bad gateway\n"), "bad gateway (HTTP 502)");
        assert_eq!(message(503, ""), "Service Unavailable (HTTP 503)");
        assert_eq!(message(500, "{}"), "{} (HTTP 500)");
        let long = "x".repeat(300);
        assert_eq!(
            message(500, &long),
            format!("{}… (HTTP 500)", "x".repeat(MAX_QUOTED_BODY))
        );
    }
}
