//! What `shoal ctl` prints: serde views of `/pools/default` and
//! `/pools/default/buckets`, the vbucket counts per server, and the plain
//! text tables. Pure functions of the documents and no I/O, so tests feed
//! them sample JSON.
//!
//! The views are deliberately lenient: every field is optional and shown
//! as `-` when a server leaves it out, because an admin CLI that refuses a
//! whole cluster status over one missing field is no help in an outage.
//! Only a field of the wrong JSON type fails the parse.

use std::fmt;

use serde::Deserialize;
use serde_json::Value;

/// Bytes per MiB, for `quota.rawRAM`.
const MIB: u64 = 1024 * 1024;

/// Shown for a value the server did not send.
const ABSENT: &str = "-";

// === views ===

/// `/pools/default`: only what the nodes table shows.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Pool {
    /// Every node the cluster knows, active or not.
    pub nodes: Vec<PoolNode>,
    /// `none` unless a rebalance is running.
    pub rebalance_status: Option<String>,
    /// Whether every bucket's map matches the cluster's nodes.
    pub balanced: Option<bool>,
}

/// One entry of `/pools/default`'s `nodes`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PoolNode {
    /// Admin address, `host:port`.
    pub hostname: Option<String>,
    /// The node's name in the cluster, e.g. `ns_1@127.0.0.1`.
    pub otp_node: Option<String>,
    /// `active`, `inactiveAdded` or `inactiveFailed`.
    pub cluster_membership: Option<String>,
    /// `healthy` or `unhealthy`.
    pub status: Option<String>,
    /// The node's ports.
    pub ports: Ports,
    /// `voter`, `learner` or `leader` in the metadata Raft group.
    pub raft_role: Option<String>,
}

/// A node's `ports` object.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Ports {
    /// The memcached data port.
    pub direct: Option<u16>,
}

/// One entry of `/pools/default/buckets`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Bucket {
    /// The bucket's name.
    pub name: Option<String>,
    /// `membase` or `memcached`.
    pub bucket_type: Option<String>,
    /// `vbucket` or `ketama`; names the type when `bucketType` is absent.
    pub node_locator: Option<String>,
    /// Config revision.
    pub rev: Option<i64>,
    /// Replicas per vbucket the bucket asks for.
    pub replica_number: Option<u64>,
    /// RAM quota.
    pub quota: Quota,
    /// Which server holds each vbucket; absent for memcached buckets.
    #[serde(rename = "vBucketServerMap")]
    pub vbucket_server_map: Option<ServerMap>,
}

/// A bucket's `quota` object, bytes.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Quota {
    /// Over the whole cluster.
    pub ram: Option<u64>,
    /// Per node: what `ramQuotaMB` set.
    #[serde(rename = "rawRAM")]
    pub raw_ram: Option<u64>,
}

/// The two fields of `vBucketServerMap` the counts need. Not
/// `shoal_vbmap::config::VBucketServerMap`, which (rightly, for routing)
/// requires `hashAlgorithm` and `numReplicas` too.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ServerMap {
    /// Data addresses, `host:port`; the map's entries index into it.
    #[serde(rename = "serverList")]
    pub server_list: Vec<String>,
    /// One row per vbucket: the active server's index, then the replicas';
    /// `-1` means none.
    #[serde(rename = "vBucketMap")]
    pub vbucket_map: Vec<Vec<i64>>,
}

// === vbucket counts ===

/// How many vbuckets each server of a map holds.
#[derive(Debug, PartialEq, Eq)]
pub struct VbucketCounts {
    /// Active copies, per index of `serverList`.
    pub active: Vec<usize>,
    /// Replica copies, per index of `serverList`.
    pub replica: Vec<usize>,
    /// vbuckets whose active entry is `-1` (or names no server): nobody
    /// serves their keys.
    pub unserved: usize,
}

/// Counts, for server `i` of `serverList`, the rows of `vBucketMap` whose
/// first entry is `i` (active) and the entries after the first that are
/// `i` (replicas). Entries outside `serverList` count for no server.
pub fn count_vbuckets(map: &ServerMap) -> VbucketCounts {
    let servers = map.server_list.len();
    let index = |entry: i64| usize::try_from(entry).ok().filter(|&i| i < servers);
    let mut counts = VbucketCounts {
        active: vec![0; servers],
        replica: vec![0; servers],
        unserved: 0,
    };
    for row in &map.vbucket_map {
        match row.first().copied().and_then(index) {
            Some(i) => counts.active[i] += 1,
            None => counts.unserved += 1,
        }
        for i in row.iter().skip(1).copied().filter_map(index) {
            counts.replica[i] += 1;
        }
    }
    counts
}

// === tables ===

/// Left-aligned columns two spaces apart, the first row a header; lines
/// carry no trailing spaces.
#[derive(Debug)]
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Table {
        Table {
            rows: vec![header.into_iter().map(Into::into).collect()],
        }
    }

    fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = widths[c] - cell.chars().count();
                line.extend(std::iter::repeat_n(' ', pad));
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

fn or_absent<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| ABSENT.to_owned(), |v| v.to_string())
}

/// The nodes table of `shoal ctl status`, then the rebalance state when
/// the server reports it.
pub fn nodes_table(pool: &Pool) -> String {
    if pool.nodes.is_empty() {
        return "no nodes\n".to_owned();
    }
    let mut table = Table::new([
        "NODE",
        "HOSTNAME",
        "DATA PORT",
        "MEMBERSHIP",
        "HEALTH",
        "RAFT",
    ]);
    for node in &pool.nodes {
        table.push(vec![
            or_absent(node.otp_node.as_deref()),
            or_absent(node.hostname.as_deref()),
            or_absent(node.ports.direct),
            or_absent(node.cluster_membership.as_deref()),
            or_absent(node.status.as_deref()),
            or_absent(node.raft_role.as_deref()),
        ]);
    }
    let mut out = table.to_string();
    if pool.rebalance_status.is_some() || pool.balanced.is_some() {
        let balanced = pool.balanced.map(|b| if b { "yes" } else { "no" });
        out.push_str(&format!(
            "rebalance: {}  balanced: {}\n",
            or_absent(pool.rebalance_status.as_deref()),
            or_absent(balanced),
        ));
    }
    out
}

/// `membase`/`memcached`, from `bucketType` or else `nodeLocator`.
fn bucket_type(bucket: &Bucket) -> String {
    match (
        bucket.bucket_type.as_deref(),
        bucket.node_locator.as_deref(),
    ) {
        (Some(t), _) => t.to_owned(),
        (None, Some("vbucket")) => "membase".to_owned(),
        (None, Some("ketama")) => "memcached".to_owned(),
        (None, _) => ABSENT.to_owned(),
    }
}

/// `GET /settings/rbac/users` as a table: name and role.
pub fn users_table(users: &Value) -> String {
    let mut out = String::from("USER                 ROLE\n");
    for user in users.as_array().map(Vec::as_slice).unwrap_or_default() {
        let name = user.get("id").and_then(Value::as_str).unwrap_or("?");
        let role = user
            .pointer("/roles/0/role")
            .and_then(Value::as_str)
            .unwrap_or("?");
        out.push_str(&format!("{name:<20} {role}\n"));
    }
    out
}

/// The buckets table: one row per bucket, and one column per data server
/// (every server of any bucket's `serverList`, in order of appearance)
/// holding `active/replica` vbucket counts. A memcached bucket, or a
/// server outside a bucket's map, shows `-`. A line after the table warns
/// of vbuckets that no server serves.
pub fn buckets_table(buckets: &[Bucket]) -> String {
    if buckets.is_empty() {
        return "no buckets\n".to_owned();
    }
    let mut servers: Vec<&str> = Vec::new();
    for map in buckets.iter().filter_map(|b| b.vbucket_server_map.as_ref()) {
        for server in &map.server_list {
            if !servers.contains(&server.as_str()) {
                servers.push(server);
            }
        }
    }
    let mut header = vec!["NAME", "TYPE", "REV", "REPLICAS", "RAM MiB"];
    header.extend(servers.iter().copied());
    let mut table = Table::new(header);
    let mut warnings = String::new();
    for bucket in buckets {
        let name = or_absent(bucket.name.as_deref());
        let mut row = vec![
            name.clone(),
            bucket_type(bucket),
            or_absent(bucket.rev),
            or_absent(bucket.replica_number),
            or_absent(bucket.quota.raw_ram.or(bucket.quota.ram).map(|b| b / MIB)),
        ];
        match &bucket.vbucket_server_map {
            Some(map) => {
                let counts = count_vbuckets(map);
                for server in &servers {
                    let cell = map
                        .server_list
                        .iter()
                        .position(|s| s == server)
                        .map(|i| format!("{}/{}", counts.active[i], counts.replica[i]));
                    row.push(or_absent(cell));
                }
                if counts.unserved > 0 {
                    warnings.push_str(&format!(
                        "warning: bucket {name}: {} of {} vbuckets have no active server\n",
                        counts.unserved,
                        map.vbucket_map.len()
                    ));
                }
            }
            None => row.extend(servers.iter().map(|_| ABSENT.to_owned())),
        }
        table.push(row);
    }
    let mut out = table.to_string();
    if !servers.is_empty() {
        out.push_str("(per server: active/replica vbuckets)\n");
    }
    out.push_str(&warnings);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/pools/default/buckets` of a 3-node cluster: a membase bucket over
    /// all three servers (8 vbuckets, one replica, vbucket 7 without an
    /// active), a memcached bucket, and a membase bucket on two servers.
    const BUCKETS: &str = r#"[
      {"name":"default","bucketType":"membase","nodeLocator":"vbucket","rev":12,
       "replicaNumber":1,"durabilityMinLevel":"none",
       "quota":{"ram":805306368,"rawRAM":268435456},
       "vBucketServerMap":{"hashAlgorithm":"CRC","numReplicas":1,
         "serverList":["127.0.0.1:12000","127.0.0.1:12002","127.0.0.1:12004"],
         "vBucketMap":[[0,1],[0,2],[0,1],[1,2],[1,0],[2,0],[2,-1],[-1,1]]},
       "nodes":[{"hostname":"127.0.0.1:12001","ports":{"direct":12000}}]},
      {"name":"sessions","bucketType":"memcached","nodeLocator":"ketama","rev":3,
       "replicaNumber":0,"quota":{"ram":402653184,"rawRAM":134217728},
       "nodes":[{"hostname":"127.0.0.1:12001","ports":{"direct":12000}}]},
      {"name":"two","nodeLocator":"vbucket","rev":1,"quota":{"rawRAM":104857600},
       "vBucketServerMap":{"hashAlgorithm":"CRC","numReplicas":0,
         "serverList":["127.0.0.1:12002","127.0.0.1:12004"],
         "vBucketMap":[[0],[1],[1],[0]]}}
    ]"#;

    const POOL: &str = r#"{"name":"default","nodes":[
      {"hostname":"127.0.0.1:12001","otpNode":"ns_1@127.0.0.1","clusterMembership":"active",
       "status":"healthy","thisNode":true,"ports":{"direct":12000},"version":"0.1.0",
       "raftRole":"leader"},
      {"hostname":"127.0.0.1:12003","otpNode":"ns_2@127.0.0.1","clusterMembership":"active",
       "status":"healthy","thisNode":false,"ports":{"direct":12002},"raftRole":"voter"},
      {"hostname":"127.0.0.1:12005","otpNode":"ns_3@127.0.0.1",
       "clusterMembership":"inactiveFailed","status":"unhealthy","ports":{"direct":12004}}
     ],"buckets":{"uri":"/pools/default/buckets"},"rebalanceStatus":"none","balanced":false}"#;

    fn buckets() -> Vec<Bucket> {
        serde_json::from_str(BUCKETS).expect("sample buckets parse")
    }

    #[test]
    fn counts_active_and_replica_per_server() {
        let buckets = buckets();
        let map = buckets[0].vbucket_server_map.as_ref().unwrap();
        assert_eq!(
            count_vbuckets(map),
            VbucketCounts {
                active: vec![3, 2, 2],
                replica: vec![2, 3, 2],
                unserved: 1,
            }
        );
    }

    #[test]
    fn counts_ignore_entries_outside_the_server_list() {
        let map = ServerMap {
            server_list: vec!["a:1".into()],
            vbucket_map: vec![vec![0, 5], vec![3, 0], vec![], vec![0, -1, 0]],
        };
        assert_eq!(
            count_vbuckets(&map),
            VbucketCounts {
                active: vec![2],
                replica: vec![2],
                unserved: 2,
            }
        );
    }

    #[test]
    fn buckets_table_is_byte_exact() {
        let want = "\
NAME      TYPE       REV  REPLICAS  RAM MiB  127.0.0.1:12000  127.0.0.1:12002  127.0.0.1:12004
default   membase    12   1         256      3/2              2/3              2/2
sessions  memcached  3    0         128      -                -                -
two       membase    1    -         100      -                2/0              2/0
(per server: active/replica vbuckets)
warning: bucket default: 1 of 8 vbuckets have no active server
";
        assert_eq!(buckets_table(&buckets()), want);
    }

    #[test]
    fn nodes_table_is_byte_exact() {
        let pool: Pool = serde_json::from_str(POOL).unwrap();
        let want = "\
NODE            HOSTNAME         DATA PORT  MEMBERSHIP      HEALTH     RAFT
ns_1@127.0.0.1  127.0.0.1:12001  12000      active          healthy    leader
ns_2@127.0.0.1  127.0.0.1:12003  12002      active          healthy    voter
ns_3@127.0.0.1  127.0.0.1:12005  12004      inactiveFailed  unhealthy  -
rebalance: none  balanced: no
";
        assert_eq!(nodes_table(&pool), want);
    }

    #[test]
    fn missing_fields_show_as_absent() {
        let pool: Pool = serde_json::from_str(r#"{"nodes":[{}]}"#).unwrap();
        assert_eq!(
            nodes_table(&pool),
            "NODE  HOSTNAME  DATA PORT  MEMBERSHIP  HEALTH  RAFT\n-     -         -          -           -       -\n"
        );
        let buckets: Vec<Bucket> = serde_json::from_str(r#"[{"name":"x"}]"#).unwrap();
        assert_eq!(
            buckets_table(&buckets),
            "NAME  TYPE  REV  REPLICAS  RAM MiB\nx     -     -    -         -\n"
        );
    }

    #[test]
    fn empty_documents_say_so() {
        assert_eq!(nodes_table(&Pool::default()), "no nodes\n");
        assert_eq!(buckets_table(&[]), "no buckets\n");
    }

    #[test]
    fn wrong_types_are_parse_errors() {
        assert!(serde_json::from_str::<Vec<Bucket>>(r#"[{"rev":"twelve"}]"#).is_err());
        assert!(serde_json::from_str::<Pool>(r#"{"nodes":{}}"#).is_err());
    }
}
