//! The Couchbase bucket config that smart clients read, and that Shoal's
//! cluster manager serves and its proxies follow. Pure: no sockets, files or
//! clocks (tests read the shared vectors only).
//!
//! Modules:
//! - `model`: serde types ([`BucketConfig`], [`Node`], [`VBucketServerMap`],
//!   …) that round-trip every field, and [`BucketConfig::parse`] /
//!   [`BucketConfig::to_json`].
//! - `cluster_map`: [`BucketConfig::validate`] → [`ClusterMap`], the
//!   router's view (rev, locator, parsed [`ServerAddr`]s, [`VbucketMap`] and
//!   forward map), and [`Revision`] for "does a new config replace mine?".
//! - `build`: [`BucketConfig::for_vbucket_map`] and
//!   [`BucketConfig::for_ketama`], the configs the cluster manager serves.
//! - `stream`: [`StreamSplitter`], which cuts a streamed body into
//!   documents on [`STREAM_SEPARATOR`].
//! - `error`: [`ConfigError`].
//!
//! [`VbucketMap`]: crate::map::VbucketMap

mod build;
mod cluster_map;
mod error;
mod model;
mod stream;

pub use build::NodeAddress;
pub use cluster_map::{should_replace, ClusterMap, Revision, ServerAddr};
pub use error::ConfigError;
pub use model::{BucketConfig, Node, NodeExt, NodeLocator, Ports, VBucketServerMap};
pub use stream::{StreamSplitter, DEFAULT_MAX_DOCUMENT_SIZE, STREAM_SEPARATOR};

/// Tests over the real configs in `shared/vectors/configs`.
#[cfg(test)]
mod vector_tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::hash::vbucket_of;
    use crate::map::MapError;

    const CONFIGS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors/configs");

    /// `(file name, contents)` of every `*.json` directly in `dir`, sorted.
    fn json_files(dir: &Path) -> Vec<(String, String)> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
            .collect();
        paths.sort();
        assert!(!paths.is_empty(), "no configs in {}", dir.display());
        paths
            .into_iter()
            .map(|path| {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(&path).unwrap())
            })
            .collect()
    }

    fn load(name: &str) -> BucketConfig {
        let text = std::fs::read_to_string(Path::new(CONFIGS).join(name)).unwrap();
        BucketConfig::parse(&text).unwrap()
    }

    #[test]
    fn every_shared_config_parses_validates_and_round_trips() {
        for (name, text) in json_files(Path::new(CONFIGS)) {
            let config = BucketConfig::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            let cluster = config.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            let memcached = config.bucket_type.as_deref() == Some("memcached");
            let expected = if memcached {
                NodeLocator::Ketama
            } else {
                NodeLocator::Vbucket
            };
            assert_eq!(cluster.locator(), expected, "{name}");
            assert_eq!(cluster.vbucket_map().is_some(), !memcached, "{name}");

            for json in [config.to_json(), config.to_json_pretty()] {
                let again = BucketConfig::parse(&json).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(again, config, "{name} changed in a round trip");
            }
            // Nothing lost: the serialised document holds the same JSON
            // values as the file (a bare map gains its envelope).
            let original: serde_json::Value = serde_json::from_str(&text).unwrap();
            let written: serde_json::Value = serde_json::from_str(&config.to_json()).unwrap();
            let written = match original.get("vBucketServerMap") {
                None if original.get("vBucketMap").is_some() => written["vBucketServerMap"].clone(),
                _ => written,
            };
            assert_eq!(written, original, "{name} lost data");
        }
    }

    #[test]
    fn every_invalid_config_is_rejected_with_a_reason() {
        let expected_reason = |name: &str| match name {
            "testapp-config-wrong-num-vbuckets.json" => "power of two",
            other => panic!("add the expected reason for invalid/{other}"),
        };
        for (name, text) in json_files(&Path::new(CONFIGS).join("invalid")) {
            let err = BucketConfig::parse(&text)
                .and_then(|config| config.validate())
                .expect_err(&name);
            let message = err.to_string();
            assert!(
                message.contains(expected_reason(&name)),
                "{name}: {message}"
            );
        }
        let text = std::fs::read_to_string(
            Path::new(CONFIGS).join("invalid/testapp-config-wrong-num-vbuckets.json"),
        )
        .unwrap();
        assert_eq!(
            BucketConfig::parse(&text).unwrap().validate().unwrap_err(),
            ConfigError::Map {
                field: "vBucketMap",
                source: MapError::VbucketCount(5)
            }
        );
    }

    /// libvbucket bug 2112: a 1024-vbucket map from Membase 1.6.
    #[test]
    fn regression_bug2112() {
        let cluster = load("regression-bug2112.json").validate().unwrap();
        let map = cluster.vbucket_map().unwrap();
        assert_eq!(map.num_vbuckets(), 1024);
        let vb = vbucket_of(b"00000000", map.num_vbuckets());
        assert_eq!(vb, 8);
        let master = cluster.server(map.active(vb).unwrap()).unwrap();
        assert_eq!(master.to_string(), "10.2.1.12:11210");
    }

    #[test]
    fn vbucket_eight_nodes() {
        let config = load("vbucket-eight-nodes.json");
        let cluster = config.validate().unwrap();
        let map = cluster.vbucket_map().unwrap();
        assert_eq!(map.num_vbuckets(), 16);
        assert_eq!(map.num_replicas(), 2);
        assert_eq!(cluster.servers().len(), 8);
        assert_eq!(cluster.name(), Some("default"));
        assert_eq!(cluster.rev(), None);
        assert!(cluster.forward_map().is_none());
        assert_eq!(
            config.bucket_capabilities.as_deref().unwrap(),
            ["touch", "sync", "couchapi"]
        );
        assert_eq!(
            config
                .nodes
                .iter()
                .filter(|n| n.this_node == Some(true))
                .count(),
            1
        );
    }

    #[test]
    fn ketama_eight_nodes_uses_direct_ports() {
        let cluster = load("ketama-eight-nodes.json").validate().unwrap();
        assert_eq!(cluster.locator(), NodeLocator::Ketama);
        let mut servers: Vec<String> = cluster.servers().iter().map(ToString::to_string).collect();
        servers.sort();
        let expected: Vec<String> = (0..8)
            .map(|i| format!("172.16.16.76:{}", 12000 + 2 * i))
            .collect();
        assert_eq!(servers, expected);
    }

    #[test]
    fn envelope_with_forward_map() {
        let config = load("testapp-config-in-envelope-fft.json");
        assert_eq!(config.extra["otherKeyThatIsIgnored"], 12345);
        let cluster = config.validate().unwrap();
        assert_eq!(cluster.servers().len(), 4);
        let forward = cluster.forward_map().unwrap();
        assert_eq!(forward.num_vbuckets(), 4);
        assert_eq!(forward.chain(0), [Some(3), Some(0), Some(0)]);
        assert_eq!(
            cluster.vbucket_map().unwrap().chain(2),
            [Some(2), Some(1), None]
        );
    }

    #[test]
    fn bare_map_and_couch_api_base() {
        let cluster = load("testapp-config.json").validate().unwrap();
        assert_eq!(
            cluster.servers()[1],
            ServerAddr {
                host: "server2".into(),
                port: 11210
            }
        );
        let config = load("testapp-config-couch-api-base.json");
        assert_eq!(
            config.nodes[0].couch_api_base.as_deref(),
            Some("http://192.168.2.123:9502/default")
        );
        assert_eq!(config.nodes[0].ports.proxy, Some(12005));
        assert_eq!(
            config
                .validate()
                .unwrap()
                .vbucket_map()
                .unwrap()
                .num_replicas(),
            1
        );
    }

    /// The splitter and the parser together: a stream of every shared
    /// config, fed a few bytes at a time, gives back every config.
    #[test]
    fn streamed_shared_configs() {
        let configs: Vec<BucketConfig> = json_files(Path::new(CONFIGS))
            .iter()
            .map(|(_, text)| BucketConfig::parse(text).unwrap())
            .collect();
        let body: Vec<u8> = configs
            .iter()
            .flat_map(|c| [c.to_json().into_bytes(), STREAM_SEPARATOR.to_vec()].concat())
            .collect();
        let mut splitter = StreamSplitter::default();
        let mut received = Vec::new();
        for chunk in body.chunks(7) {
            for document in splitter.push(chunk).unwrap() {
                received.push(BucketConfig::parse_slice(&document).unwrap());
            }
        }
        assert_eq!(received, configs);
    }
}
