//! [`VbucketMap`]: for each vbucket, the chain of servers that hold it.
//!
//! Position 0 of a chain is the active copy, positions 1..=R the replicas.
//! Chains are stored flat (`(R + 1) × V` slots) so the router's lookup is one
//! multiplication and one index, with no pointer chasing.

/// A vbucket number, `0..num_vbuckets`.
pub type VbucketId = u16;

/// A server's position in the server list that goes with a map.
pub type ServerIdx = u16;

/// Most replicas a map may have. Couchbase allows 3; the bound exists so a
/// hostile config cannot make [`VbucketMap::empty`] allocate without limit.
pub const MAX_REPLICAS: usize = 16;

/// Which servers hold each vbucket. Invariant: `slots.len() == num_vbuckets *
/// (num_replicas + 1)`, and `num_vbuckets` is a power of two.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VbucketMap {
    num_replicas: usize,
    slots: Vec<Option<ServerIdx>>,
}

/// Why a map could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// The vbucket count is zero or not a power of two.
    #[error("number of vbuckets must be a power of two greater than zero (got {0})")]
    VbucketCount(usize),
    /// More replicas than [`MAX_REPLICAS`].
    #[error("numReplicas must be at most {MAX_REPLICAS} (got {0})")]
    Replicas(usize),
    /// A chain's length differs from `num_replicas + 1`.
    #[error("vbucket {vbucket} has {len} entries, expected {expected} (numReplicas + 1)")]
    ChainLength {
        /// The offending vbucket.
        vbucket: usize,
        /// Its chain length.
        len: usize,
        /// `num_replicas + 1`.
        expected: usize,
    },
    /// A chain names a server index outside the server list.
    #[error("vbucket {vbucket} names server {server}, but there are only {servers} servers")]
    ServerIndex {
        /// The offending vbucket.
        vbucket: usize,
        /// The index it names.
        server: i64,
        /// The size of the server list.
        servers: usize,
    },
}

impl VbucketMap {
    /// A map with every slot empty.
    pub fn empty(num_vbuckets: usize, num_replicas: usize) -> Result<Self, MapError> {
        if num_vbuckets == 0 || !num_vbuckets.is_power_of_two() || num_vbuckets > 1 << 16 {
            return Err(MapError::VbucketCount(num_vbuckets));
        }
        if num_replicas > MAX_REPLICAS {
            return Err(MapError::Replicas(num_replicas));
        }
        Ok(VbucketMap {
            num_replicas,
            slots: vec![None; num_vbuckets * (num_replicas + 1)],
        })
    }

    /// Build from chains as they appear in a bucket config (`-1` = no
    /// server), checking every invariant against a list of `num_servers`.
    pub fn from_chains(
        chains: &[Vec<i64>],
        num_replicas: usize,
        num_servers: usize,
    ) -> Result<Self, MapError> {
        let mut map = VbucketMap::empty(chains.len(), num_replicas)?;
        for (vb, chain) in chains.iter().enumerate() {
            if chain.len() != num_replicas + 1 {
                return Err(MapError::ChainLength {
                    vbucket: vb,
                    len: chain.len(),
                    expected: num_replicas + 1,
                });
            }
            for (pos, &server) in chain.iter().enumerate() {
                let slot = match server {
                    -1 => None,
                    s if s >= 0 && (s as usize) < num_servers && s <= ServerIdx::MAX as i64 => {
                        Some(s as ServerIdx)
                    }
                    s => {
                        return Err(MapError::ServerIndex {
                            vbucket: vb,
                            server: s,
                            servers: num_servers,
                        })
                    }
                };
                map.set(vb as VbucketId, pos, slot);
            }
        }
        Ok(map)
    }

    /// The chains in bucket-config form (`-1` = no server).
    pub fn to_chains(&self) -> Vec<Vec<i64>> {
        self.slots
            .chunks(self.num_replicas + 1)
            .map(|c| c.iter().map(|s| s.map_or(-1, i64::from)).collect())
            .collect()
    }

    /// Number of vbuckets (a power of two).
    pub fn num_vbuckets(&self) -> usize {
        self.slots.len() / (self.num_replicas + 1)
    }

    /// Number of replicas per vbucket.
    pub fn num_replicas(&self) -> usize {
        self.num_replicas
    }

    /// The server holding the active copy of `vb`, if any.
    #[inline]
    pub fn active(&self, vb: VbucketId) -> Option<ServerIdx> {
        self.slots
            .get(vb as usize * (self.num_replicas + 1))
            .copied()
            .flatten()
    }

    /// The whole chain of `vb`: active first, then replicas.
    pub fn chain(&self, vb: VbucketId) -> &[Option<ServerIdx>] {
        let width = self.num_replicas + 1;
        let start = vb as usize * width;
        &self.slots[start..start + width]
    }

    /// Set position `pos` (0 = active) of `vb`'s chain.
    pub fn set(&mut self, vb: VbucketId, pos: usize, server: Option<ServerIdx>) {
        assert!(pos <= self.num_replicas, "chain position out of range");
        let width = self.num_replicas + 1;
        self.slots[vb as usize * width + pos] = server;
    }

    /// Iterate `(vbucket, chain)` pairs.
    pub fn chains(&self) -> impl Iterator<Item = (VbucketId, &[Option<ServerIdx>])> {
        self.slots
            .chunks(self.num_replicas + 1)
            .enumerate()
            .map(|(vb, c)| (vb as VbucketId, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_round_trip() {
        let chains = vec![vec![0, 1], vec![1, -1], vec![1, 0], vec![-1, -1]];
        let map = VbucketMap::from_chains(&chains, 1, 2).unwrap();
        assert_eq!(map.num_vbuckets(), 4);
        assert_eq!(map.active(0), Some(0));
        assert_eq!(map.active(3), None);
        assert_eq!(map.chain(1), &[Some(1), None]);
        assert_eq!(map.to_chains(), chains);
    }

    #[test]
    fn rejects_bad_shapes() {
        assert_eq!(
            VbucketMap::from_chains(&[vec![0], vec![0], vec![0]], 0, 1),
            Err(MapError::VbucketCount(3))
        );
        assert!(matches!(
            VbucketMap::from_chains(&[vec![0, 1]], 0, 2),
            Err(MapError::ChainLength { .. })
        ));
        assert_eq!(VbucketMap::empty(4, 1000), Err(MapError::Replicas(1000)));
        assert!(matches!(
            VbucketMap::from_chains(&[vec![2]], 0, 2),
            Err(MapError::ServerIndex { server: 2, .. })
        ));
        assert!(matches!(
            VbucketMap::from_chains(&[vec![-2]], 0, 2),
            Err(MapError::ServerIndex { server: -2, .. })
        ));
    }
}
