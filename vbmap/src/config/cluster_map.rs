//! [`ClusterMap`]: a [`BucketConfig`] checked and converted into what a
//! router needs — revision, placement kind, parsed server addresses, the
//! [`VbucketMap`] and its forward map — plus [`Revision`], which decides
//! whether a newly received config replaces the one held. All checks of the
//! routing invariants live here, so a `ClusterMap` that exists is one every
//! key can be routed with.

use std::fmt;

use super::{BucketConfig, ConfigError, NodeLocator};
use crate::map::{MapError, ServerIdx, VbucketMap};

/// Where `serverList` entries come from, for error messages.
const SERVER_LIST: &str = "vBucketServerMap.serverList";
/// Where ketama hosts come from, for error messages.
const NODES_HOSTNAME: &str = "nodes[].hostname";

/// A server's data address: host and memcached-protocol port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerAddr {
    /// Host name or IP address, without IPv6 brackets.
    pub host: String,
    /// Data (memcached protocol) port.
    pub port: u16,
}

impl ServerAddr {
    /// Parse `host:port` or `[ipv6]:port`; the port is required.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        match split_host_port(text)? {
            (host, Some(port)) => Ok(ServerAddr {
                host: host.to_owned(),
                port,
            }),
            (_, None) => Err("missing :port"),
        }
    }
}

/// `host:port`, bracketing IPv6 hosts so the result parses back.
impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Split `host[:port]` / `[ipv6][:port]` into the host and optional port.
fn split_host_port(text: &str) -> Result<(&str, Option<u16>), &'static str> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("unclosed '['")?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or("junk after ']'")?)),
        }
    } else {
        match text.split_once(':') {
            None => (text, None),
            Some((_, port)) if port.contains(':') => {
                return Err("an IPv6 host must be written in brackets");
            }
            Some((host, port)) => (host, Some(port)),
        }
    };
    if host.is_empty() {
        return Err("empty host");
    }
    let port = match port {
        None => None,
        Some(port) => match port.parse::<u16>() {
            Ok(0) => return Err("port 0"),
            Ok(port) => Some(port),
            Err(_) => return Err("port is not a number in 1..=65535"),
        },
    };
    Ok((host, port))
}

/// A config's position in time, for choosing between two configs.
///
/// Ordered by `(epoch, rev)`, an absent epoch counting as 0: servers before
/// Couchbase 7.1 send no `revEpoch`, and later ones start it above 0, so a
/// client moving to an upgraded cluster keeps moving forward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Revision {
    /// `revEpoch`, if the config had one.
    pub epoch: Option<i64>,
    /// `rev`, if the config had one.
    pub rev: Option<i64>,
}

impl Revision {
    /// Whether a config at `self`, just received, should replace one held at
    /// `held`.
    ///
    /// - Both have a `rev`: only if `self` is strictly newer. A lower rev is
    ///   a stale node's view and is ignored (DESIGN); an equal rev is the
    ///   same map again, and rebuilding the router for it would only cost.
    /// - Either lacks a `rev` (Membase 1.x, hand-written configs): always.
    ///   Without revs there is no order but arrival order, and the stream
    ///   sends the current config, so the latest to arrive wins — what
    ///   libcouchbase does too.
    pub fn supersedes(self, held: Revision) -> bool {
        match (self.rev, held.rev) {
            (Some(new), Some(old)) => {
                (self.epoch.unwrap_or(0), new) > (held.epoch.unwrap_or(0), old)
            }
            _ => true,
        }
    }
}

/// Whether a config at revision `new` should replace the one held (if any);
/// see [`Revision::supersedes`].
pub fn should_replace(held: Option<Revision>, new: Revision) -> bool {
    held.is_none_or(|held| new.supersedes(held))
}

/// A validated bucket config, ready for routing: every server address
/// parsed, and for a `vbucket` bucket a [`VbucketMap`] whose every index is
/// a valid position in [`ClusterMap::servers`].
///
/// Built by [`BucketConfig::validate`] (or `ClusterMap::try_from`); the
/// fields are private so those invariants cannot be broken afterwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterMap {
    revision: Revision,
    name: Option<String>,
    locator: NodeLocator,
    servers: Vec<ServerAddr>,
    vbuckets: Option<VbucketMap>,
    forward: Option<VbucketMap>,
}

impl ClusterMap {
    /// The config's `rev`, if it had one.
    pub fn rev(&self) -> Option<i64> {
        self.revision.rev
    }

    /// The config's `(revEpoch, rev)`, for [`Revision::supersedes`].
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The bucket's name, if the config had one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// How keys are placed: through [`ClusterMap::vbucket_map`] or on a
    /// ketama ring over [`ClusterMap::servers`].
    pub fn locator(&self) -> NodeLocator {
        self.locator
    }

    /// Data addresses. For `vbucket` buckets, `serverList` in order (the
    /// maps index into it); for `ketama` buckets, one per `nodes` entry in
    /// document order — the ring builder sorts them as libvbucket does.
    pub fn servers(&self) -> &[ServerAddr] {
        &self.servers
    }

    /// The server at a map index, `None` when out of range.
    pub fn server(&self, idx: ServerIdx) -> Option<&ServerAddr> {
        self.servers.get(usize::from(idx))
    }

    /// The vbucket map; `Some` exactly when the locator is `vbucket`.
    pub fn vbucket_map(&self) -> Option<&VbucketMap> {
        self.vbuckets.as_ref()
    }

    /// The forward map (where vbuckets will be after the running
    /// rebalance), same size as [`ClusterMap::vbucket_map`], if the config
    /// had one.
    pub fn forward_map(&self) -> Option<&VbucketMap> {
        self.forward.as_ref()
    }
}

impl BucketConfig {
    /// Check every routing invariant and build the router's view; see
    /// [`ClusterMap`] and, for the failures, [`ConfigError`].
    pub fn validate(&self) -> Result<ClusterMap, ConfigError> {
        ClusterMap::try_from(self)
    }

    /// The config's `(revEpoch, rev)`.
    pub fn revision(&self) -> Revision {
        Revision {
            epoch: self.rev_epoch,
            rev: self.rev,
        }
    }
}

impl TryFrom<&BucketConfig> for ClusterMap {
    type Error = ConfigError;

    fn try_from(config: &BucketConfig) -> Result<Self, ConfigError> {
        let locator = config.locator();
        let (servers, vbuckets, forward) = match locator {
            NodeLocator::Vbucket => {
                let map = config
                    .vbucket_server_map
                    .as_ref()
                    .ok_or(ConfigError::MissingServerMap)?;
                // Lenient on case: "crc" can only mean the one CRC rule.
                if !map.hash_algorithm.eq_ignore_ascii_case("CRC") {
                    return Err(ConfigError::HashAlgorithm(map.hash_algorithm.clone()));
                }
                if map.server_list.is_empty() {
                    return Err(ConfigError::EmptyServerList { field: SERVER_LIST });
                }
                let servers = map
                    .server_list
                    .iter()
                    .map(|entry| {
                        ServerAddr::parse(entry).map_err(|reason| ConfigError::ServerAddress {
                            field: SERVER_LIST,
                            entry: entry.clone(),
                            reason,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let replicas = map.num_replicas;
                let current = build_map("vBucketMap", &map.vbucket_map, replicas, servers.len())?;
                let forward = match &map.vbucket_map_forward {
                    None => None,
                    Some(rows) if rows.len() != map.vbucket_map.len() => {
                        return Err(ConfigError::ForwardMapSize {
                            current: map.vbucket_map.len(),
                            forward: rows.len(),
                        });
                    }
                    Some(rows) => Some(build_map(
                        "vBucketMapForward",
                        rows,
                        replicas,
                        servers.len(),
                    )?),
                };
                (servers, Some(current), forward)
            }
            NodeLocator::Ketama => {
                if config.nodes.is_empty() {
                    return Err(ConfigError::EmptyServerList { field: "nodes" });
                }
                let servers = config
                    .nodes
                    .iter()
                    .map(|node| {
                        // hostname carries the admin port, which is not
                        // where keys go: keep the host, take ports.direct.
                        let (host, _admin_port) =
                            split_host_port(&node.hostname).map_err(|reason| {
                                ConfigError::ServerAddress {
                                    field: NODES_HOSTNAME,
                                    entry: node.hostname.clone(),
                                    reason,
                                }
                            })?;
                        Ok(ServerAddr {
                            host: host.to_owned(),
                            port: node.ports.direct,
                        })
                    })
                    .collect::<Result<Vec<_>, ConfigError>>()?;
                (servers, None, None)
            }
        };
        Ok(ClusterMap {
            revision: config.revision(),
            name: config.name.clone(),
            locator,
            servers,
            vbuckets,
            forward,
        })
    }
}

/// Convert one map's rows, naming `field` in any error.
fn build_map(
    field: &'static str,
    rows: &[Vec<i64>],
    num_replicas: usize,
    num_servers: usize,
) -> Result<VbucketMap, ConfigError> {
    // `VbucketMap::from_chains` sizes its table as rows × (numReplicas + 1)
    // before looking at any row, and numReplicas comes from the peer: check
    // the row lengths first, so the table can be no larger than the
    // document itself and a hostile numReplicas cannot exhaust memory.
    let expected = num_replicas.saturating_add(1);
    if let Some((vbucket, row)) = rows.iter().enumerate().find(|(_, r)| r.len() != expected) {
        return Err(ConfigError::Map {
            field,
            source: MapError::ChainLength {
                vbucket,
                len: row.len(),
                expected,
            },
        });
    }
    VbucketMap::from_chains(rows, num_replicas, num_servers)
        .map_err(|source| ConfigError::Map { field, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(json: &str) -> ConfigError {
        BucketConfig::parse(json).unwrap().validate().unwrap_err()
    }

    #[test]
    fn server_addresses() {
        let ok = |s: &str| ServerAddr::parse(s).unwrap();
        assert_eq!(
            ok("10.0.0.1:11210"),
            ServerAddr {
                host: "10.0.0.1".into(),
                port: 11210
            }
        );
        assert_eq!(
            ok("[::1]:11210"),
            ServerAddr {
                host: "::1".into(),
                port: 11210
            }
        );
        assert_eq!(ok("[::1]:11210").to_string(), "[::1]:11210");
        assert_eq!(ok("db.example:1").to_string(), "db.example:1");
        for (bad, reason) in [
            ("host", "missing :port"),
            ("host:", "port is not a number"),
            ("host:x", "port is not a number"),
            ("host:65536", "port is not a number"),
            ("host:0", "port 0"),
            (":11210", "empty host"),
            ("", "empty host"),
            ("::1:11210", "brackets"),
            ("[::1", "unclosed"),
            ("[::1]11210", "junk"),
            ("[]:1", "empty host"),
        ] {
            let err = ServerAddr::parse(bad).unwrap_err();
            assert!(err.contains(reason), "{bad:?}: {err}");
        }
    }

    #[test]
    fn row_length_wrong() {
        let err = parse_err(
            r#"{"hashAlgorithm":"CRC","numReplicas":1,"serverList":["a:1","b:2"],
                "vBucketMap":[[0,1],[1]]}"#,
        );
        assert_eq!(
            err,
            ConfigError::Map {
                field: "vBucketMap",
                source: MapError::ChainLength {
                    vbucket: 1,
                    len: 1,
                    expected: 2
                }
            }
        );
        let message = err.to_string();
        assert!(
            message.contains("vBucketMap: vbucket 1 has 1 entries"),
            "{message}"
        );
        assert!(message.contains("numReplicas + 1"), "{message}");
    }

    #[test]
    fn huge_num_replicas_is_refused_before_allocating() {
        for replicas in ["4000000000", "18446744073709551615"] {
            let err = parse_err(&format!(
                r#"{{"hashAlgorithm":"CRC","numReplicas":{replicas},"serverList":["a:1"],
                    "vBucketMap":[[0],[0]]}}"#
            ));
            assert!(
                matches!(
                    err,
                    ConfigError::Map {
                        source: MapError::ChainLength {
                            vbucket: 0,
                            len: 1,
                            ..
                        },
                        ..
                    }
                ),
                "{err:?}"
            );
        }
    }

    #[test]
    fn server_index_out_of_range() {
        for bad in ["2", "-2"] {
            let err = parse_err(&format!(
                r#"{{"hashAlgorithm":"CRC","numReplicas":1,"serverList":["a:1","b:2"],
                    "vBucketMap":[[0,1],[1,{bad}]]}}"#
            ));
            assert!(
                matches!(
                    err,
                    ConfigError::Map {
                        field: "vBucketMap",
                        source: MapError::ServerIndex {
                            vbucket: 1,
                            servers: 2,
                            ..
                        }
                    }
                ),
                "{err:?}"
            );
            let message = err.to_string();
            assert!(
                message.contains(&format!("names server {bad}")),
                "{message}"
            );
        }
    }

    #[test]
    fn empty_server_list() {
        let err = parse_err(
            r#"{"hashAlgorithm":"CRC","numReplicas":0,"serverList":[],"vBucketMap":[[-1]]}"#,
        );
        assert_eq!(err, ConfigError::EmptyServerList { field: SERVER_LIST });
        assert!(err.to_string().contains("serverList is empty"), "{err}");
        let err = parse_err(r#"{"name":"m","nodeLocator":"ketama"}"#);
        assert_eq!(err, ConfigError::EmptyServerList { field: "nodes" });
    }

    #[test]
    fn bad_server_list_entry() {
        let err = parse_err(
            r#"{"hashAlgorithm":"CRC","numReplicas":0,"serverList":["a:1","b"],"vBucketMap":[[0]]}"#,
        );
        assert!(
            matches!(&err, ConfigError::ServerAddress { entry, .. } if entry == "b"),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("\"b\" is not a valid host:port"),
            "{err}"
        );
    }

    #[test]
    fn forward_map_wrong_size() {
        let err = parse_err(
            r#"{"vBucketServerMap":{"hashAlgorithm":"CRC","numReplicas":0,"serverList":["a:1"],
                "vBucketMap":[[0],[0]],"vBucketMapForward":[[0],[0],[0],[0]]}}"#,
        );
        assert_eq!(
            err,
            ConfigError::ForwardMapSize {
                current: 2,
                forward: 4
            }
        );
        let message = err.to_string();
        assert!(
            message.contains("vBucketMapForward has 4 vbuckets"),
            "{message}"
        );
        assert!(message.contains("vBucketMap has 2"), "{message}");
    }

    #[test]
    fn forward_map_rows_are_checked_too() {
        let err = parse_err(
            r#"{"vBucketServerMap":{"hashAlgorithm":"CRC","numReplicas":0,"serverList":["a:1"],
                "vBucketMap":[[0],[0]],"vBucketMapForward":[[0],[1]]}}"#,
        );
        assert!(
            matches!(
                err,
                ConfigError::Map {
                    field: "vBucketMapForward",
                    source: MapError::ServerIndex { .. }
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("vBucketServerMap.vBucketMapForward:"),
            "{err}"
        );
    }

    #[test]
    fn vbucket_count_not_a_power_of_two() {
        for rows in ["[]", "[[0],[0],[0]]"] {
            let err = parse_err(&format!(
                r#"{{"hashAlgorithm":"CRC","numReplicas":0,"serverList":["a:1"],"vBucketMap":{rows}}}"#
            ));
            assert!(
                matches!(
                    err,
                    ConfigError::Map {
                        source: MapError::VbucketCount(_),
                        ..
                    }
                ),
                "{err:?}"
            );
            assert!(err.to_string().contains("power of two"), "{err}");
        }
    }

    #[test]
    fn missing_server_map_and_unknown_hash() {
        let err = parse_err(r#"{"name":"b","nodeLocator":"vbucket"}"#);
        assert_eq!(err, ConfigError::MissingServerMap);
        assert!(err.to_string().contains("no vBucketServerMap"), "{err}");
        let err = parse_err(
            r#"{"hashAlgorithm":"MD5","numReplicas":0,"serverList":["a:1"],"vBucketMap":[[0]]}"#,
        );
        assert_eq!(err, ConfigError::HashAlgorithm("MD5".into()));
        assert!(
            err.to_string().contains("hashAlgorithm is \"MD5\""),
            "{err}"
        );
    }

    #[test]
    fn ketama_takes_host_from_hostname_and_port_from_direct() {
        let map = BucketConfig::parse(
            r#"{"nodeLocator":"ketama","nodes":[
                {"hostname":"10.0.0.1:8091","ports":{"direct":11210}},
                {"hostname":"[fe80::1]:8091","ports":{"direct":12000}},
                {"hostname":"bare","ports":{"direct":11211}}]}"#,
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(map.locator(), NodeLocator::Ketama);
        assert!(map.vbucket_map().is_none() && map.forward_map().is_none());
        let servers: Vec<String> = map.servers().iter().map(ToString::to_string).collect();
        assert_eq!(servers, ["10.0.0.1:11210", "[fe80::1]:12000", "bare:11211"]);
        let err = parse_err(
            r#"{"nodeLocator":"ketama","nodes":[{"hostname":":8091","ports":{"direct":1}}]}"#,
        );
        assert!(err.to_string().contains("nodes[].hostname"), "{err}");
    }

    #[test]
    fn revisions() {
        let r = |epoch, rev| Revision { epoch, rev };
        assert!(r(None, Some(2)).supersedes(r(None, Some(1))));
        assert!(
            !r(None, Some(1)).supersedes(r(None, Some(2))),
            "lower rev is ignored"
        );
        assert!(
            !r(None, Some(2)).supersedes(r(None, Some(2))),
            "equal rev is ignored"
        );
        assert!(
            r(Some(2), Some(1)).supersedes(r(Some(1), Some(9))),
            "epoch wins"
        );
        assert!(
            r(Some(1), Some(1)).supersedes(r(None, Some(9))),
            "absent epoch is 0"
        );
        assert!(!r(None, Some(1)).supersedes(r(Some(1), Some(0))));
        assert!(
            r(None, None).supersedes(r(None, Some(5))),
            "no rev: arrival wins"
        );
        assert!(r(None, Some(1)).supersedes(r(None, None)));
        assert!(should_replace(None, r(None, None)));
        assert!(!should_replace(Some(r(None, Some(3))), r(None, Some(3))));
    }
}
