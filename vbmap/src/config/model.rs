//! The serde model of a Couchbase bucket config: [`BucketConfig`] and the
//! objects inside it, plus [`BucketConfig::parse`] and
//! [`BucketConfig::to_json`]. Field names follow the JSON (camelCase on the
//! wire, snake_case in Rust); every object keeps the fields Shoal does not
//! model in an `extra` map, so parse → serialise loses nothing a server sent
//! (stats, quotas, auth settings…). Parsing here checks only JSON shape and
//! types; the routing invariants are checked by
//! [`BucketConfig::validate`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::ConfigError;

/// How keys are placed on servers (`nodeLocator`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeLocator {
    /// Couchbase/membase buckets: key → vbucket (CRC32) → server via
    /// `vBucketServerMap`.
    Vbucket,
    /// Memcached buckets: key → server on a ketama ring built from `nodes`.
    Ketama,
}

impl fmt::Display for NodeLocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeLocator::Vbucket => "vbucket",
            NodeLocator::Ketama => "ketama",
        })
    }
}

/// One bucket's config, as served at `/pools/default/buckets/<name>` and
/// streamed from `/pools/default/bucketsStreaming/<name>`.
///
/// Every field but `nodes` is optional because real documents omit them:
/// libvbucket's test configs carry only a `vBucketServerMap`, and servers
/// before Couchbase 2.0 send no `rev`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BucketConfig {
    /// Revision of the config; a newer config has a higher one. Absent in
    /// configs from servers older than Couchbase 2.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rev: Option<i64>,
    /// Epoch of `rev` (Couchbase 7.1+): a higher epoch wins whatever the
    /// revs say, because revs restart after a cluster is rebuilt.
    #[serde(rename = "revEpoch", default, skip_serializing_if = "Option::is_none")]
    pub rev_epoch: Option<i64>,
    /// Bucket name, e.g. `"default"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// REST path of this config, `/pools/default/buckets/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// REST path of the config stream,
    /// `/pools/default/bucketsStreaming/<name>`.
    #[serde(
        rename = "streamingUri",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub streaming_uri: Option<String>,
    /// Key placement; absent means `vbucket`, as in libvbucket (see
    /// [`BucketConfig::locator`] for the memcached-bucket exception).
    #[serde(
        rename = "nodeLocator",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub node_locator: Option<NodeLocator>,
    /// `"membase"` (Couchbase bucket), `"memcached"` or `"ephemeral"`; kept
    /// as a string so unknown types round-trip.
    #[serde(
        rename = "bucketType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub bucket_type: Option<String>,
    /// The bucket's UUID, which changes when a bucket is deleted and
    /// recreated under the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// The servers of the bucket with their admin and data ports. Absent
    /// (and so empty) in envelope-only configs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<Node>,
    /// Per-node service ports (Couchbase 3.0+), including TLS ports.
    #[serde(rename = "nodesExt", default, skip_serializing_if = "Option::is_none")]
    pub nodes_ext: Option<Vec<NodeExt>>,
    /// The vbucket map; present for `vbucket` buckets, absent for memcached
    /// buckets.
    #[serde(
        rename = "vBucketServerMap",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub vbucket_server_map: Option<VBucketServerMap>,
    /// Features the bucket supports, e.g. `["touch", "sync", "couchapi"]`.
    #[serde(
        rename = "bucketCapabilities",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub bucket_capabilities: Option<Vec<String>>,
    /// Version tag of `bucketCapabilities`, e.g. `"sync-1.0"`.
    #[serde(
        rename = "bucketCapabilitiesVer",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub bucket_capabilities_ver: Option<String>,
    /// Every other top-level field (`authType`, `quota`, `basicStats`, …),
    /// kept verbatim so the config round-trips.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One server of a bucket (an entry of `nodes`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// `host:adminport` (the REST port, 8091 on a stock Couchbase). IPv6
    /// hosts are bracketed: `[::1]:8091`.
    pub hostname: String,
    /// Memcached-protocol ports of the node.
    pub ports: Ports,
    /// Base URL of the node's CouchDB/views API, when it has one.
    #[serde(
        rename = "couchApiBase",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub couch_api_base: Option<String>,
    /// Health as the cluster manager sees it: `"healthy"`, `"unhealthy"`,
    /// `"warmup"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Erlang node name, e.g. `"ns_1@10.0.0.1"`.
    #[serde(rename = "otpNode", default, skip_serializing_if = "Option::is_none")]
    pub otp_node: Option<String>,
    /// True on the entry for the node that served this config.
    #[serde(rename = "thisNode", default, skip_serializing_if = "Option::is_none")]
    pub this_node: Option<bool>,
    /// Every other node field (`version`, `systemStats`, …), verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A node's memcached-protocol ports (`nodes[].ports`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ports {
    /// The data port that speaks the memcached protocol directly (11210 on
    /// a stock Couchbase).
    pub direct: u16,
    /// Moxi's port on the node (11211), gone since Couchbase 5.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<u16>,
    /// Any other port (`httpsMgmt`, `httpsCAPI`, …), verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of `nodesExt`: the ports of every service on a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeExt {
    /// Host of the node, without a port; absent means "the host this
    /// config was fetched from".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Service name → port, e.g. `{"kv": 11210, "mgmt": 8091, "kvSSL":
    /// 11207}`.
    #[serde(default)]
    pub services: BTreeMap<String, u16>,
    /// True on the entry for the node that served this config.
    #[serde(rename = "thisNode", default, skip_serializing_if = "Option::is_none")]
    pub this_node: Option<bool>,
    /// Any other field, verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `vBucketServerMap`: which servers hold each vbucket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VBucketServerMap {
    /// Key → vbucket hash; only `"CRC"` exists in practice.
    #[serde(rename = "hashAlgorithm")]
    pub hash_algorithm: String,
    /// Replicas per vbucket; every row of the maps has `numReplicas + 1`
    /// entries.
    #[serde(rename = "numReplicas")]
    pub num_replicas: usize,
    /// Data addresses, `host:port`; the maps index into this list.
    #[serde(rename = "serverList")]
    pub server_list: Vec<String>,
    /// One row per vbucket: the active server's index, then the replicas';
    /// `-1` means "no server".
    #[serde(rename = "vBucketMap")]
    pub vbucket_map: Vec<Vec<i64>>,
    /// During a rebalance, where each vbucket will be once it finishes; a
    /// client told NOT_MY_VBUCKET tries this map next.
    #[serde(
        rename = "vBucketMapForward",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub vbucket_map_forward: Option<Vec<Vec<i64>>>,
    /// Any other field (old servers send `user` and `password`), verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The fields of a bare `vBucketServerMap`; any of them at the top level
/// (with no `vBucketServerMap` key) marks a config without its envelope.
const BARE_MAP_FIELDS: [&str; 4] = ["hashAlgorithm", "numReplicas", "serverList", "vBucketMap"];

impl BucketConfig {
    /// Parse a config document.
    ///
    /// Accepts the three shapes libvbucket accepts: a full bucket config, an
    /// envelope holding just `vBucketServerMap` (plus fields to ignore), and
    /// a bare `vBucketServerMap` object at the top level. A bare map is
    /// normalised into the envelope, so [`BucketConfig::to_json`] writes
    /// `{"vBucketServerMap": …}`; no data is lost.
    ///
    /// Only the JSON shape is checked here; call
    /// [`BucketConfig::validate`] before
    /// routing with it.
    pub fn parse(json: &str) -> Result<Self, ConfigError> {
        let config: BucketConfig =
            serde_json::from_str(json).map_err(|e| ConfigError::from_json(&e))?;
        if config.vbucket_server_map.is_none()
            && BARE_MAP_FIELDS
                .iter()
                .any(|f| config.extra.contains_key(*f))
        {
            // A second pass over the text rather than converting `extra`,
            // so a missing or mistyped map field is reported with its
            // position in the document.
            let map: VBucketServerMap =
                serde_json::from_str(json).map_err(|e| ConfigError::from_json(&e))?;
            return Ok(BucketConfig {
                vbucket_server_map: Some(map),
                ..BucketConfig::default()
            });
        }
        Ok(config)
    }

    /// [`BucketConfig::parse`] on bytes, as they come out of a
    /// [`StreamSplitter`](super::StreamSplitter); invalid UTF-8 is a
    /// [`ConfigError::Syntax`].
    pub fn parse_slice(json: &[u8]) -> Result<Self, ConfigError> {
        let text = std::str::from_utf8(json).map_err(|e| {
            // Report the position like serde_json does: 1-based line and
            // byte column of the first bad byte.
            let valid = &json[..e.valid_up_to()];
            let line_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            ConfigError::Syntax {
                line: 1 + valid.iter().filter(|&&b| b == b'\n').count(),
                column: 1 + valid.len() - line_start,
                reason: "invalid UTF-8".to_owned(),
            }
        })?;
        Self::parse(text)
    }

    /// Compact JSON, as a server sends it.
    pub fn to_json(&self) -> String {
        // Cannot fail: every map key is a string and no Serialize impl here
        // returns an error.
        serde_json::to_string(self).expect("a BucketConfig always serialises")
    }

    /// Indented JSON, for humans (the proxy's `/config` page, logs).
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("a BucketConfig always serialises")
    }

    /// The placement this config asks for: `nodeLocator` when present;
    /// otherwise `ketama` for a `bucketType: "memcached"` bucket (memcached
    /// buckets have no vbuckets, whatever the locator field says) and
    /// `vbucket` for everything else, as libvbucket defaults.
    pub fn locator(&self) -> NodeLocator {
        match (self.node_locator, self.bucket_type.as_deref()) {
            (Some(locator), _) => locator,
            (None, Some("memcached")) => NodeLocator::Ketama,
            (None, _) => NodeLocator::Vbucket,
        }
    }
}

impl FromStr for BucketConfig {
    type Err = ConfigError;

    fn from_str(json: &str) -> Result<Self, ConfigError> {
        Self::parse(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_map_is_normalised_into_the_envelope() {
        let bare =
            r#"{"hashAlgorithm":"CRC","numReplicas":0,"serverList":["a:1"],"vBucketMap":[[0]]}"#;
        let config = BucketConfig::parse(bare).unwrap();
        let map = config.vbucket_server_map.as_ref().unwrap();
        assert_eq!(map.server_list, ["a:1"]);
        assert!(
            config.extra.is_empty(),
            "map fields must not leak into extra"
        );
        assert_eq!(
            config.to_json(),
            r#"{"vBucketServerMap":{"hashAlgorithm":"CRC","numReplicas":0,"serverList":["a:1"],"vBucketMap":[[0]]}}"#
        );
    }

    #[test]
    fn bare_map_missing_a_field_names_it() {
        let err = BucketConfig::parse("{\n\"serverList\": [\"a:1\"]\n}").unwrap_err();
        assert!(matches!(err, ConfigError::Schema { .. }), "{err:?}");
        assert!(
            err.to_string().contains("missing field `hashAlgorithm`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_are_kept() {
        let json = r#"{"name":"b","nodes":[{"hostname":"h:8091","ports":{"direct":11210,"httpsMgmt":18091},"version":"7"}],"quota":{"ram":1}}"#;
        let config = BucketConfig::parse(json).unwrap();
        assert_eq!(config.extra["quota"]["ram"], 1);
        assert_eq!(config.nodes[0].extra["version"], "7");
        assert_eq!(config.nodes[0].ports.extra["httpsMgmt"], 18091);
        assert_eq!(config.to_json(), json);
    }

    #[test]
    fn nodes_ext_is_typed() {
        let json = r#"{"nodesExt":[{"services":{"kv":11210,"mgmt":8091},"thisNode":true}]}"#;
        let config = BucketConfig::parse(json).unwrap();
        let ext = &config.nodes_ext.as_ref().unwrap()[0];
        assert_eq!(ext.services["kv"], 11210);
        assert_eq!(ext.this_node, Some(true));
        assert_eq!(config.to_json(), json);
    }

    #[test]
    fn garbage_is_a_syntax_error_with_position() {
        let err = BucketConfig::parse("{\n  \"name\": \"x\",\n  oops\n}").unwrap_err();
        match &err {
            ConfigError::Syntax { line, column, .. } => assert_eq!((*line, *column), (3, 3)),
            other => panic!("expected a syntax error, got {other:?}"),
        }
        let message = err.to_string();
        assert!(message.contains("not valid JSON"), "{message}");
        assert!(message.contains("line 3, column 3"), "{message}");
        assert!(
            !message.contains(" at line "),
            "position repeated: {message}"
        );
        assert!(matches!(
            BucketConfig::parse("").unwrap_err(),
            ConfigError::Syntax { .. }
        ));
        assert!(matches!(
            BucketConfig::parse(r#"{"name": "x""#).unwrap_err(),
            ConfigError::Syntax { .. }
        ));
        // Well-formed JSON of the wrong kind is a schema error.
        let err = BucketConfig::parse("[1, 2]").unwrap_err();
        assert!(matches!(err, ConfigError::Schema { .. }), "{err:?}");
        assert!(err.to_string().contains("invalid type: sequence"), "{err}");
    }

    #[test]
    fn wrong_types_are_schema_errors() {
        for (json, needle) in [
            (r#"{"rev":"seven"}"#, "invalid type"),
            (
                r#"{"nodeLocator":"consistent"}"#,
                "unknown variant `consistent`",
            ),
            (
                r#"{"nodes":[{"hostname":"h:8091","ports":{}}]}"#,
                "missing field `direct`",
            ),
            (
                r#"{"nodes":[{"hostname":"h:8091","ports":{"direct":70000}}]}"#,
                "70000",
            ),
            (
                r#"{"vBucketServerMap":{"hashAlgorithm":"CRC","numReplicas":-1,"serverList":[],"vBucketMap":[]}}"#,
                "-1",
            ),
        ] {
            let err = BucketConfig::parse(json).unwrap_err();
            assert!(matches!(err, ConfigError::Schema { .. }), "{json}: {err:?}");
            assert!(err.to_string().contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn invalid_utf8_is_a_syntax_error() {
        let err = BucketConfig::parse_slice(b"{\n\"name\":\"\xff\"}").unwrap_err();
        assert_eq!(
            err,
            ConfigError::Syntax {
                line: 2,
                column: 9,
                reason: "invalid UTF-8".to_owned()
            }
        );
        assert_eq!(
            BucketConfig::parse_slice(br#"{"name":"b"}"#)
                .unwrap()
                .name
                .as_deref(),
            Some("b")
        );
    }

    #[test]
    fn locator_defaults() {
        let mut config = BucketConfig::default();
        assert_eq!(config.locator(), NodeLocator::Vbucket);
        config.bucket_type = Some("memcached".into());
        assert_eq!(config.locator(), NodeLocator::Ketama);
        config.node_locator = Some(NodeLocator::Vbucket);
        assert_eq!(config.locator(), NodeLocator::Vbucket);
    }
}
