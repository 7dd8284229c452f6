//! Builders for the configs Shoal's cluster manager serves:
//! [`BucketConfig::for_vbucket_map`] and [`BucketConfig::for_ketama`]. They
//! write the shape Couchbase 2.x–6.x servers send, which every smart client
//! of that era reads, and validate the result so the cluster never
//! publishes a config its own proxies would refuse.

use serde_json::{Map, Value};

use super::{BucketConfig, ConfigError, Node, NodeLocator, Ports, ServerAddr, VBucketServerMap};
use crate::map::VbucketMap;

/// A node's addresses as the cluster manager knows them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeAddress {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Memcached-protocol port (`ports.direct`, `serverList`).
    pub data_port: u16,
    /// REST port (`nodes[].hostname`).
    pub admin_port: u16,
    /// TLS memcached port (`ports.sslDirect`), if the node has one.
    pub tls_data_port: Option<u16>,
    /// HTTPS REST port (`ports.httpsMgmt`), if the node has one.
    pub tls_admin_port: Option<u16>,
}

impl NodeAddress {
    /// A node at `host` with the given data and admin ports.
    pub fn new(host: impl Into<String>, data_port: u16, admin_port: u16) -> Self {
        NodeAddress {
            host: host.into(),
            data_port,
            admin_port,
            tls_data_port: None,
            tls_admin_port: None,
        }
    }

    /// This node with TLS data and HTTPS admin ports (`None`: not open).
    pub fn with_tls(mut self, data_port: Option<u16>, admin_port: Option<u16>) -> Self {
        self.tls_data_port = data_port;
        self.tls_admin_port = admin_port;
        self
    }

    /// `host:port` with IPv6 brackets, as the JSON writes addresses.
    fn join(&self, port: u16) -> String {
        ServerAddr {
            host: self.host.clone(),
            port,
        }
        .to_string()
    }

    /// The `nodes` entry for this node.
    fn to_node(&self) -> Node {
        // The TLS ports under the names Couchbase 2.5+ gave them.
        let tls_ports = [
            ("sslDirect", self.tls_data_port),
            ("httpsMgmt", self.tls_admin_port),
        ];
        let extra = tls_ports
            .into_iter()
            .filter_map(|(name, port)| Some((name.to_owned(), Value::from(port?))))
            .collect();
        Node {
            hostname: self.join(self.admin_port),
            ports: Ports {
                direct: self.data_port,
                proxy: None,
                extra,
            },
            couch_api_base: None,
            // Servers always send it, and some 1.x-era clients read it.
            status: Some("healthy".to_owned()),
            otp_node: None,
            this_node: None,
            extra: Map::new(),
        }
    }
}

impl BucketConfig {
    /// The config of a Couchbase (`membase`) bucket placed by `map`, with
    /// `servers[i]` being server index `i` of the map, and an optional
    /// forward map during a rebalance.
    ///
    /// Fails, with the error a client would report, if the result would not
    /// validate: no servers, a map naming a server beyond `servers`, or a
    /// forward map of another size or replica count.
    pub fn for_vbucket_map(
        name: &str,
        rev: i64,
        servers: &[NodeAddress],
        map: &VbucketMap,
        forward: Option<&VbucketMap>,
    ) -> Result<Self, ConfigError> {
        let config = BucketConfig {
            bucket_type: Some("membase".to_owned()),
            node_locator: Some(NodeLocator::Vbucket),
            vbucket_server_map: Some(VBucketServerMap {
                hash_algorithm: "CRC".to_owned(),
                num_replicas: map.num_replicas(),
                server_list: servers.iter().map(|s| s.join(s.data_port)).collect(),
                vbucket_map: map.to_chains(),
                vbucket_map_forward: forward.map(VbucketMap::to_chains),
                extra: Map::new(),
            }),
            ..Self::skeleton(name, rev, servers)
        };
        config.validate()?;
        Ok(config)
    }

    /// The config of a memcached bucket: no vbuckets, keys placed on a
    /// ketama ring over `servers`' data ports.
    ///
    /// Fails if `servers` is empty.
    pub fn for_ketama(name: &str, rev: i64, servers: &[NodeAddress]) -> Result<Self, ConfigError> {
        let config = BucketConfig {
            bucket_type: Some("memcached".to_owned()),
            node_locator: Some(NodeLocator::Ketama),
            ..Self::skeleton(name, rev, servers)
        };
        config.validate()?;
        Ok(config)
    }

    /// The fields both bucket kinds share.
    fn skeleton(name: &str, rev: i64, servers: &[NodeAddress]) -> Self {
        BucketConfig {
            rev: Some(rev),
            name: Some(name.to_owned()),
            uri: Some(format!("/pools/default/buckets/{name}")),
            streaming_uri: Some(format!("/pools/default/bucketsStreaming/{name}")),
            nodes: servers.iter().map(NodeAddress::to_node).collect(),
            ..BucketConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::MapError;
    use proptest::prelude::*;

    fn servers(n: usize) -> Vec<NodeAddress> {
        (0..n)
            .map(|i| NodeAddress::new(format!("10.0.0.{i}"), 11210 + i as u16, 8091))
            .collect()
    }

    #[test]
    fn vbucket_shape_matches_couchbase() {
        let map = VbucketMap::from_chains(&[vec![0, 1], vec![1, -1]], 1, 2).unwrap();
        let nodes = [
            NodeAddress::new("10.0.0.1", 11210, 8091),
            NodeAddress::new("::1", 11211, 9000),
        ];
        let config = BucketConfig::for_vbucket_map("default", 7, &nodes, &map, None).unwrap();
        assert_eq!(
            config.to_json(),
            concat!(
                r#"{"rev":7,"name":"default","uri":"/pools/default/buckets/default","#,
                r#""streamingUri":"/pools/default/bucketsStreaming/default","#,
                r#""nodeLocator":"vbucket","bucketType":"membase","#,
                r#""nodes":[{"hostname":"10.0.0.1:8091","ports":{"direct":11210},"status":"healthy"},"#,
                r#"{"hostname":"[::1]:9000","ports":{"direct":11211},"status":"healthy"}],"#,
                r#""vBucketServerMap":{"hashAlgorithm":"CRC","numReplicas":1,"#,
                r#""serverList":["10.0.0.1:11210","[::1]:11211"],"vBucketMap":[[0,1],[1,-1]]}}"#
            )
        );
    }

    #[test]
    fn tls_ports_are_listed_as_couchbase_names_them() {
        let map = VbucketMap::from_chains(&[vec![0]], 0, 1).unwrap();
        let nodes = [NodeAddress::new("10.0.0.1", 11210, 8091).with_tls(Some(11207), Some(18091))];
        let json = BucketConfig::for_vbucket_map("b", 1, &nodes, &map, None)
            .unwrap()
            .to_json();
        assert!(
            json.contains(r#""ports":{"direct":11210,"httpsMgmt":18091,"sslDirect":11207}"#),
            "{json}"
        );
        let parsed = BucketConfig::parse(&json).unwrap();
        assert_eq!(parsed.nodes[0].ports.extra["sslDirect"], 11207);
    }

    #[test]
    fn ketama_shape() {
        let config = BucketConfig::for_ketama("cache", 3, &servers(2)).unwrap();
        assert_eq!(config.bucket_type.as_deref(), Some("memcached"));
        assert!(config.vbucket_server_map.is_none());
        let parsed = BucketConfig::parse(&config.to_json()).unwrap();
        assert_eq!(parsed, config);
        let map = parsed.validate().unwrap();
        assert_eq!(map.locator(), NodeLocator::Ketama);
        assert_eq!(map.servers()[1].to_string(), "10.0.0.1:11211");
        assert_eq!(map.rev(), Some(3));
        assert_eq!(
            BucketConfig::for_ketama("cache", 3, &[]).unwrap_err(),
            ConfigError::EmptyServerList { field: "nodes" }
        );
    }

    #[test]
    fn builder_refuses_what_clients_would() {
        let map = VbucketMap::from_chains(&[vec![0], vec![2]], 0, 3).unwrap();
        let err = BucketConfig::for_vbucket_map("b", 1, &servers(2), &map, None).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Map {
                source: MapError::ServerIndex { server: 2, .. },
                ..
            }
        ));
        let small = VbucketMap::from_chains(&[vec![0]], 0, 1).unwrap();
        let err =
            BucketConfig::for_vbucket_map("b", 1, &servers(3), &map, Some(&small)).unwrap_err();
        assert_eq!(
            err,
            ConfigError::ForwardMapSize {
                current: 2,
                forward: 1
            }
        );
    }

    /// A random valid map: 2^k vbuckets, `replicas`, indices in
    /// `-1..servers`, built through the validating constructor.
    fn arb_map(vbuckets: usize, replicas: usize, servers: usize) -> BoxedStrategy<VbucketMap> {
        let row = prop::collection::vec(-1..servers as i64, replicas + 1);
        prop::collection::vec(row, vbuckets)
            .prop_map(move |rows| VbucketMap::from_chains(&rows, replicas, servers).unwrap())
            .boxed()
    }

    proptest! {
        /// Law: build → JSON → parse → validate gives back the same maps
        /// and servers.
        #[test]
        fn builder_round_trips(
            (map, forward, n) in (0u32..7, 0usize..4, 1usize..6).prop_flat_map(|(k, r, n)| {
                let v = 1usize << k;
                (arb_map(v, r, n), prop::option::of(arb_map(v, r, n)), Just(n))
            }),
            rev in any::<i64>(),
        ) {
            let nodes = servers(n);
            let config =
                BucketConfig::for_vbucket_map("b", rev, &nodes, &map, forward.as_ref()).unwrap();
            let parsed = BucketConfig::parse(&config.to_json()).unwrap();
            prop_assert_eq!(&parsed, &config);
            let cluster = parsed.validate().unwrap();
            prop_assert_eq!(cluster.rev(), Some(rev));
            prop_assert_eq!(cluster.vbucket_map(), Some(&map));
            prop_assert_eq!(cluster.forward_map(), forward.as_ref());
            let expected: Vec<ServerAddr> = nodes
                .iter()
                .map(|s| ServerAddr { host: s.host.clone(), port: s.data_port })
                .collect();
            prop_assert_eq!(cluster.servers(), &expected[..]);
        }
    }
}
