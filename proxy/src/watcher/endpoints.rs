//! [`Endpoints`]: the admin URLs the watcher streams from — the configured
//! ones first, then every node learned from the configs — and
//! [`substitute_host`], which fills in Couchbase's `$HOST` placeholder.

use std::fmt;

use reqwest::Url;
use shoal_vbmap::config::BucketConfig;

/// Most URLs the list may hold. A cluster has far fewer nodes; the cap only
/// stops a broken or hostile config from growing the list without bound.
const MAX_ENDPOINTS: usize = 256;

/// The placeholder a Couchbase node writes for its own address while it
/// does not know it (a fresh, single-node cluster bound to all
/// interfaces).
const HOST_PLACEHOLDER: &str = "$HOST";

/// The admin URLs to stream from, in the order they are tried.
#[derive(Debug)]
pub(crate) struct Endpoints {
    /// Configured URLs first, then learned ones; no duplicates.
    urls: Vec<Url>,
    /// Index of the URL in use (or to try next).
    cursor: usize,
    /// Credentials of the first configured URL that had some, given to
    /// learned URLs too: every node of a cluster takes the same ones.
    credentials: Option<(String, Option<String>)>,
    /// `https` when the proxy talks to the cluster over TLS only, `http`
    /// otherwise: every URL has it.
    scheme: &'static str,
}

impl Endpoints {
    /// The list of `configured` URLs that parse as `http://host[:port]`
    /// (`https://` with `tls`); the others are returned as errors to log.
    pub(crate) fn new(configured: &[String], tls: bool) -> (Endpoints, Vec<String>) {
        let scheme = if tls { "https" } else { "http" };
        let mut endpoints = Endpoints {
            urls: Vec::new(),
            cursor: 0,
            credentials: None,
            scheme,
        };
        let mut rejected = Vec::new();
        for text in configured {
            match Url::parse(text) {
                Ok(url) if url.scheme() == scheme && url.host_str().is_some() => {
                    if endpoints.credentials.is_none() && !url.username().is_empty() {
                        endpoints.credentials =
                            Some((url.username().to_owned(), url.password().map(str::to_owned)));
                    }
                    endpoints.push(base_of(url));
                }
                _ => rejected.push(text.clone()),
            }
        }
        (endpoints, rejected)
    }

    /// True when no URL is usable.
    pub(crate) fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// How many URLs are known.
    pub(crate) fn len(&self) -> usize {
        self.urls.len()
    }

    /// The URL in use.
    pub(crate) fn current(&self) -> &Url {
        &self.urls[self.cursor % self.urls.len()]
    }

    /// Moves on to the next URL, wrapping around.
    pub(crate) fn advance(&mut self) {
        self.cursor = (self.cursor + 1) % self.urls.len();
    }

    /// Adds the admin URL of every node of `config` not yet known
    /// (`http://` and its `hostname`; with TLS, `https://`, its host and
    /// its `httpsMgmt` port); returns how many were added.
    pub(crate) fn learn(&mut self, config: &BucketConfig) -> usize {
        let before = self.urls.len();
        for node in &config.nodes {
            let address = match self.scheme {
                "https" => {
                    let Some(port) = node.ports.extra.get("httpsMgmt").and_then(|p| p.as_u64())
                    else {
                        continue;
                    };
                    let host = node
                        .hostname
                        .rsplit_once(':')
                        .map_or(&*node.hostname, |(h, _)| h);
                    format!("https://{host}:{port}")
                }
                _ => format!("http://{}", node.hostname),
            };
            let Ok(mut url) = Url::parse(&address) else {
                continue;
            };
            if url.host_str().is_none() {
                continue;
            }
            if let Some((user, password)) = &self.credentials {
                // Cannot fail: the URL has a host.
                let _ = url.set_username(user);
                let _ = url.set_password(password.as_deref());
            }
            self.push(url);
        }
        self.urls.len() - before
    }

    fn push(&mut self, url: Url) {
        if self.urls.len() < MAX_ENDPOINTS && !self.urls.contains(&url) {
            self.urls.push(url);
        }
    }
}

/// `url` with only scheme, credentials, host and port: the REST paths are
/// appended to the root, as every Couchbase client does.
fn base_of(mut url: Url) -> Url {
    url.set_path("/");
    url.set_query(None);
    url.set_fragment(None);
    url
}

/// `base` + `/pools/default/{kind}/{bucket}`, the bucket name escaped.
pub(crate) fn bucket_url(base: &Url, kind: &str, bucket: &str) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.clear().extend(["pools", "default", kind, bucket]);
    }
    url
}

/// A URL for logs: the password is masked.
#[derive(Debug)]
pub(crate) struct Redacted<'a>(pub(crate) &'a Url);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.password().is_none() {
            return fmt::Display::fmt(self.0, f);
        }
        let mut url = self.0.clone();
        let _ = url.set_password(Some("***"));
        fmt::Display::fmt(&url, f)
    }
}

/// Replaces `$HOST` in the addresses of `config` with `host`, the host of
/// the URL the config was fetched from (IPv6 in brackets, as `Url` gives
/// it). Returns true if anything changed.
///
/// A Couchbase node that was never told its address (bound to all
/// interfaces, not yet part of a cluster) writes `$HOST` in `hostname`,
/// `serverList` and `couchApiBase`, and clients substitute the host they
/// reached it at — libcouchbase's `lcbvb_replace_host`, the Java client's
/// `ConfigParserUtils`. `nodesExt` is left alone: an absent `hostname`
/// there already means "this host".
pub(crate) fn substitute_host(config: &mut BucketConfig, host: &str) -> bool {
    let mut changed = false;
    let mut fix = |text: &mut String| {
        if text.contains(HOST_PLACEHOLDER) {
            *text = text.replace(HOST_PLACEHOLDER, host);
            changed = true;
        }
    };
    for node in &mut config.nodes {
        fix(&mut node.hostname);
        if let Some(base) = &mut node.couch_api_base {
            fix(base);
        }
    }
    if let Some(map) = &mut config.vbucket_server_map {
        for server in &mut map.server_list {
            fix(server);
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> BucketConfig {
        BucketConfig::parse(json).unwrap()
    }

    const PLACEHOLDERS: &str = r#"{"rev":1,"name":"default",
        "nodes":[{"hostname":"$HOST:8091","ports":{"direct":11210},
                  "couchApiBase":"http://$HOST:8092/default"}],
        "vBucketServerMap":{"hashAlgorithm":"CRC","numReplicas":0,
            "serverList":["$HOST:11210"],"vBucketMap":[[0],[0]]}}"#;

    #[test]
    fn host_placeholder_is_replaced_everywhere() {
        let mut c = config(PLACEHOLDERS);
        assert!(substitute_host(&mut c, "10.1.2.3"));
        assert_eq!(c.nodes[0].hostname, "10.1.2.3:8091");
        assert_eq!(
            c.nodes[0].couch_api_base.as_deref(),
            Some("http://10.1.2.3:8092/default")
        );
        let map = c.validate().unwrap();
        assert_eq!(map.servers()[0].to_string(), "10.1.2.3:11210");
        // Nothing left to replace the second time.
        assert!(!substitute_host(&mut c, "10.1.2.3"));
    }

    #[test]
    fn ipv6_host_is_bracketed() {
        let url = Url::parse("http://[::1]:8091").unwrap();
        let mut c = config(PLACEHOLDERS);
        assert!(substitute_host(&mut c, url.host_str().unwrap()));
        assert_eq!(c.nodes[0].hostname, "[::1]:8091");
        let map = c.validate().unwrap();
        assert_eq!(map.servers()[0].host, "::1");
    }

    #[test]
    fn configured_urls_are_checked_and_deduplicated() {
        let (e, rejected) = Endpoints::new(
            &[
                "http://a:8091/pools".into(),
                "http://a:8091".into(),
                "https://b:18091".into(),
                "c:8091".into(),
                "http://d:9000/".into(),
            ],
            false,
        );
        assert_eq!(rejected, ["https://b:18091", "c:8091"]);
        assert_eq!(e.len(), 2);
        assert_eq!(e.current().as_str(), "http://a:8091/");
    }

    #[test]
    fn with_tls_only_https_urls_are_taken_and_learned() {
        let (mut e, rejected) =
            Endpoints::new(&["http://a:8091".into(), "https://b:18091".into()], true);
        assert_eq!(rejected, ["http://a:8091"]);
        let c = config(
            r#"{"nodes":[
                {"hostname":"10.0.0.2:8091","ports":{"direct":11210,"httpsMgmt":18091}},
                {"hostname":"10.0.0.3:8091","ports":{"direct":11210}}]}"#,
        );
        assert_eq!(e.learn(&c), 1);
        e.advance();
        assert_eq!(e.current().as_str(), "https://10.0.0.2:18091/");
    }

    #[test]
    fn nodes_are_learned_once_with_the_configured_credentials() {
        let (mut e, _) = Endpoints::new(&["http://admin:secret@10.0.0.1:8091".into()], false);
        let c = config(
            r#"{"nodes":[
                {"hostname":"10.0.0.1:8091","ports":{"direct":11210}},
                {"hostname":"10.0.0.2:8091","ports":{"direct":11210}},
                {"hostname":"[::2]:8091","ports":{"direct":11210}},
                {"hostname":"bad host:x","ports":{"direct":11210}}]}"#,
        );
        assert_eq!(e.learn(&c), 2);
        assert_eq!(e.learn(&c), 0);
        assert_eq!(e.len(), 3);
        e.advance();
        assert_eq!(e.current().as_str(), "http://admin:secret@10.0.0.2:8091/");
        assert_eq!(
            Redacted(e.current()).to_string(),
            "http://admin:***@10.0.0.2:8091/"
        );
        e.advance();
        assert_eq!(e.current().host_str(), Some("[::2]"));
        e.advance();
        assert_eq!(e.current().host_str(), Some("10.0.0.1"));
    }

    #[test]
    fn learning_is_bounded() {
        let (mut e, _) = Endpoints::new(&["http://seed:8091".into()], false);
        let nodes: Vec<String> = (0..1000)
            .map(|i| format!(r#"{{"hostname":"n{i}:8091","ports":{{"direct":11210}}}}"#))
            .collect();
        let c = config(&format!(r#"{{"nodes":[{}]}}"#, nodes.join(",")));
        e.learn(&c);
        assert_eq!(e.len(), MAX_ENDPOINTS);
    }

    #[test]
    fn bucket_urls_escape_the_name() {
        let base = Url::parse("http://a:8091/").unwrap();
        assert_eq!(
            bucket_url(&base, "bucketsStreaming", "default").as_str(),
            "http://a:8091/pools/default/bucketsStreaming/default"
        );
        assert_eq!(
            bucket_url(&base, "buckets", "a b/c").as_str(),
            "http://a:8091/pools/default/buckets/a%20b%2Fc"
        );
    }
}
