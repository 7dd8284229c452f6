//! Key → server consistent-hash (ketama) rings, placement-compatible with the
//! clients legacy deployments already run.
//!
//! A [`KetamaRing`] is a sorted continuum of 32-bit points, each owned by a
//! server; a key goes to the owner of the first point ≥ the key's hash,
//! wrapping to the first point. Three [`KetamaMode`]s reproduce three
//! reference implementations bit for bit:
//! - [`KetamaMode::Libketama`]: libmemcached's libketama-compatible weighted
//!   MD5 continuum (`MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED`, pylibmc's
//!   `ketama_weighted=True`), pinned by `shared/vectors/ketama.tsv`.
//! - [`KetamaMode::OneAtATime`]: libmemcached's plain
//!   `MEMCACHED_DISTRIBUTION_CONSISTENT_KETAMA` with its default
//!   one-at-a-time hash (pylibmc's `ketama=True`), pinned by
//!   `shared/vectors/ketama-oaat.tsv`.
//! - [`KetamaMode::Libvbucket`]: libvbucket's ring for Couchbase memcached
//!   buckets (`nodeLocator: "ketama"`), pinned by the
//!   `configs/ketama-eight-nodes.json` checks in `shared/vectors/README.md`.
//!
//! Servers are always reported by their index in the caller's list
//! ([`ServerIdx`]), even in the mode that sorts them internally. Building
//! allocates; [`KetamaRing::server_for`] does not (one hash and one binary
//! search over a flat `Vec<u32>`). No I/O here, like the rest of the crate.
//!
//! Submodules: `digest` (the MD5 and one-at-a-time hashes), `continuum`
//! (point generation per mode).

mod continuum;
mod digest;
#[cfg(test)]
mod tests;

pub use digest::{md5_hash, one_at_a_time};

use crate::map::ServerIdx;

/// Which reference client's ring to reproduce. The modes differ in how
/// points are named and hashed, in how keys are hashed, and in weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KetamaMode {
    /// libmemcached's weighted, libketama-compatible continuum: per server
    /// `floor(weight/total × 40 × n)` names (40 at equal weights), named
    /// `host:port-i` or `host-i` on port 11211, four MD5 points per name;
    /// keys hashed with [`md5_hash`]. A weight of 0 counts as 1, as
    /// libmemcached stores it.
    Libketama,
    /// libmemcached's unweighted continuum with the default hash: 100 names
    /// per server (`host:port-i`, `host-i` on port 11211), one
    /// [`one_at_a_time`] point each; keys hashed with [`one_at_a_time`].
    /// Weights are ignored. (libmemcached's `server_add` and
    /// `memcached_server_push` turn on its weighted MD5 continuum, keeping
    /// this key hash, when a server of weight > 1 arrives, depending on
    /// whether the servers or the distribution were set first; that
    /// order-dependent hybrid is not reproduced. Use
    /// [`KetamaMode::Libketama`] for weighted pools.)
    OneAtATime,
    /// libvbucket's ring for memcached buckets: servers sorted by
    /// `host:port`, 40 names `host:port-i` each (no default-port exception),
    /// four MD5 points per name; keys hashed with [`md5_hash`]. Weights are
    /// ignored. libvbucket truncates host names past about 92 bytes (its
    /// 100-byte authority buffer); such names are hashed whole here.
    Libvbucket,
}

/// One server as a ring sees it: the host string exactly as the client
/// names it (it is hashed as text, so `localhost` and `127.0.0.1` are
/// different servers), its port, and a weight (used only by
/// [`KetamaMode::Libketama`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServerSpec<'a> {
    /// Host name or address, as written in the client's server list.
    pub host: &'a str,
    /// The memcached data port.
    pub port: u16,
    /// Relative weight; 1 is the default and 0 is treated as 1.
    pub weight: u32,
}

impl<'a> ServerSpec<'a> {
    /// A server of weight 1.
    pub fn new(host: &'a str, port: u16) -> Self {
        ServerSpec {
            host,
            port,
            weight: 1,
        }
    }

    /// The same server with `weight`.
    pub fn with_weight(self, weight: u32) -> Self {
        ServerSpec { weight, ..self }
    }
}

impl<'a> From<(&'a str, u16)> for ServerSpec<'a> {
    fn from((host, port): (&'a str, u16)) -> Self {
        ServerSpec::new(host, port)
    }
}

impl<'a> From<(&'a str, u16, u32)> for ServerSpec<'a> {
    fn from((host, port, weight): (&'a str, u16, u32)) -> Self {
        ServerSpec { host, port, weight }
    }
}

/// Why a ring could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KetamaError {
    /// More servers than a [`ServerIdx`] can number.
    #[error("{count} servers is more than a ring can index (at most {max})")]
    TooManyServers {
        /// How many servers were given.
        count: usize,
        /// The most a ring accepts.
        max: usize,
    },
}

/// A consistent-hash ring: points sorted ascending, each with the index of
/// the server that owns it. Invariant: `points` is sorted and
/// `points.len() == owners.len()`; every owner is `< num_servers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KetamaRing {
    mode: KetamaMode,
    num_servers: usize,
    /// The continuum's points, kept apart from their owners so the binary
    /// search touches only 4 bytes per probe.
    points: Vec<u32>,
    /// `owners[i]` owns `points[i]`.
    owners: Vec<ServerIdx>,
}

impl KetamaRing {
    /// The most servers a ring accepts: every index must fit a [`ServerIdx`].
    pub const MAX_SERVERS: usize = ServerIdx::MAX as usize + 1;

    /// Build the ring `mode` places `servers` on. Indices returned by
    /// lookups are positions in `servers`. An empty list gives an empty
    /// ring, whose lookups return `None`.
    pub fn new<'a, S>(mode: KetamaMode, servers: &[S]) -> Result<Self, KetamaError>
    where
        S: Copy + Into<ServerSpec<'a>>,
    {
        if servers.len() > Self::MAX_SERVERS {
            return Err(KetamaError::TooManyServers {
                count: servers.len(),
                max: Self::MAX_SERVERS,
            });
        }
        let specs: Vec<ServerSpec<'a>> = servers.iter().map(|&s| s.into()).collect();
        let mut entries = continuum::build(mode, &specs);
        // Equal points are ordered as the reference client orders them (the
        // middle field); see `continuum`.
        entries.sort_unstable();
        let (points, owners) = entries.into_iter().map(|(p, _, s)| (p, s)).unzip();
        Ok(KetamaRing {
            mode,
            num_servers: specs.len(),
            points,
            owners,
        })
    }

    /// The server `key` belongs to, or `None` if the ring has no points.
    /// Allocation-free: one hash, one binary search.
    #[inline]
    pub fn server_for(&self, key: &[u8]) -> Option<ServerIdx> {
        self.server_for_hash(self.hash_key(key))
    }

    /// The server owning the first point ≥ `hash`, wrapping to the first
    /// point past the top of the ring (libmemcached `dispatch_host`,
    /// libvbucket `vbucket_map`), or `None` if the ring has no points.
    #[inline]
    pub fn server_for_hash(&self, hash: u32) -> Option<ServerIdx> {
        self.position(hash).map(|i| self.owners[i])
    }

    /// The index in `points` a hash lands on (see [`Self::server_for_hash`]).
    #[inline]
    fn position(&self, hash: u32) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let i = self.points.partition_point(|&p| p < hash);
        Some(if i == self.points.len() { 0 } else { i })
    }

    /// The key hash this ring's mode uses ([`md5_hash`] or
    /// [`one_at_a_time`]).
    #[inline]
    pub fn hash_key(&self, key: &[u8]) -> u32 {
        match self.mode {
            KetamaMode::Libketama | KetamaMode::Libvbucket => md5_hash(key),
            KetamaMode::OneAtATime => one_at_a_time(key),
        }
    }

    /// The mode the ring was built with.
    pub fn mode(&self) -> KetamaMode {
        self.mode
    }

    /// How many servers the ring was built from (including any that got no
    /// points).
    pub fn num_servers(&self) -> usize {
        self.num_servers
    }

    /// How many points the continuum has.
    pub fn num_points(&self) -> usize {
        self.points.len()
    }

    /// True when the ring has no points, so every lookup returns `None`.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The continuum in ascending order: `(point, owning server)`.
    pub fn points(&self) -> impl ExactSizeIterator<Item = (u32, ServerIdx)> + '_ {
        self.points.iter().copied().zip(self.owners.iter().copied())
    }
}
