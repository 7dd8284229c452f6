//! [`BucketSpec`]: a bucket's settings, defined once. The REST API parses
//! them from a form, the cluster metadata embeds them in its bucket record,
//! and the runtime builds a [`LiveBucket`](super::LiveBucket) from them.
//! Plain data: imports nothing of this crate.
//!
//! A bucket password is kept as a salted hash ([`PasswordHash`]), in the
//! metadata and in memory alike; the password itself is never stored.

use serde::{Deserialize, Serialize};
use shoal_auth::PasswordHash;

/// What a bucket is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BucketKind {
    /// Persistent: vbuckets, write-behind to disk, warmup, value ejection
    /// (Couchbase's "membase"/"couchbase" bucket).
    Membase,
    /// Memory only, one vbucket, LRU-style eviction of whole items: a
    /// clustered memcached (Couchbase's "memcached" bucket). Keys are placed
    /// by ketama at the proxy, so the node takes any key.
    Memcached,
}

/// The durability a bucket applies to every write (Couchbase's
/// `durabilityMinLevel`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Durability {
    /// Acknowledged once in the active's memory.
    #[default]
    None,
    /// In memory on a majority of the chain.
    Majority,
    /// Majority in memory and persisted on the active.
    MajorityAndPersistActive,
    /// Persisted on a majority.
    PersistToMajority,
}

impl Durability {
    /// Every level, weakest first.
    pub const ALL: [Durability; 4] = [
        Durability::None,
        Durability::Majority,
        Durability::MajorityAndPersistActive,
        Durability::PersistToMajority,
    ];

    /// The REST spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::None => "none",
            Durability::Majority => "majority",
            Durability::MajorityAndPersistActive => "majorityAndPersistActive",
            Durability::PersistToMajority => "persistToMajority",
        }
    }

    /// Parses the REST spelling.
    pub fn parse(s: &str) -> Option<Durability> {
        Durability::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// A bucket's settings. The field names are also its JSON in the cluster
/// metadata (embedded, flattened, in the bucket record), so renaming one
/// changes the replicated state's format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketSpec {
    /// 1 to 100 of `[A-Za-z0-9_.-]`, not starting with `.`.
    pub name: String,
    /// Persistent (`membase`) or memory only (`memcached`).
    pub kind: BucketKind,
    /// RAM quota per node, MiB.
    pub ram_quota_mb: u64,
    /// Replica copies per vbucket (0 for memcached buckets).
    pub replicas: u8,
    /// Minimum durability of every write.
    pub durability: Durability,
    /// vbuckets, a power of two (1 for memcached buckets).
    pub num_vbuckets: u32,
    /// The bucket's SASL password (Membase's `authType=sasl`), hashed;
    /// `None` for an open bucket, which any client may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<PasswordHash>,
    /// Whether `flush_all` (binary FLUSH) may empty the bucket; off unless
    /// asked for, as in Couchbase.
    #[serde(default)]
    pub flush_enabled: bool,
}

impl BucketSpec {
    /// The RAM quota in bytes.
    pub fn quota_bytes(&self) -> u64 {
        self.ram_quota_mb.saturating_mul(1024 * 1024)
    }
}
