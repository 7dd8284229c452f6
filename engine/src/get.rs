//! Reads: get/gets (one key per call; the server loops over a multi-get),
//! GET_REPLICA, and `restore_value`, which puts a value fetched from disk
//! back into an ejected item. Also `find_live`, the lookup every verb uses:
//! an expired or flushed item reads as missing and, in an active vbucket,
//! is deleted on the spot (queueing a tombstone so disk agrees), as
//! memcached reclaims expired items on access.

use bytes::Bytes;

use super::item::Item;
use super::vbucket::{VbInner, VbucketState};
use super::{Bucket, EngineError, OpError};
use crate::mutation::VbucketId;

/// A found item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The value is in memory.
    Hit(Hit),
    /// The value was ejected: fetch it from disk (the record with this
    /// seqno), serve it with these flags and CAS, and hand it to
    /// [`Bucket::restore_value`].
    Ejected {
        /// The item's CAS.
        cas: u64,
        /// Client flags.
        flags: u32,
        /// Absolute expiry, 0 = never.
        exptime: u32,
        /// Seqno of the version on disk.
        seqno: u64,
    },
}

/// An item whose value is in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    /// The value (shared, not copied).
    pub value: Bytes,
    /// Client flags.
    pub flags: u32,
    /// Absolute expiry, 0 = never (meta get's `t` flag needs it).
    pub exptime: u32,
    /// CAS, for gets.
    pub cas: u64,
    /// Seqno of this version.
    pub seqno: u64,
}

impl Lookup {
    /// The hit, if the value was in memory.
    pub fn hit(self) -> Option<Hit> {
        match self {
            Lookup::Hit(hit) => Some(hit),
            Lookup::Ejected { .. } => None,
        }
    }

    /// The item's CAS.
    pub fn cas(&self) -> u64 {
        match self {
            Lookup::Hit(hit) => hit.cas,
            Lookup::Ejected { cas, .. } => *cas,
        }
    }

    /// The item's flags.
    pub fn flags(&self) -> u32 {
        match self {
            Lookup::Hit(hit) => hit.flags,
            Lookup::Ejected { flags, .. } => *flags,
        }
    }

    fn of(item: &Item) -> Lookup {
        match &item.value {
            Some(value) => Lookup::Hit(Hit {
                value: value.clone(),
                flags: item.flags,
                exptime: item.exptime,
                cas: item.cas,
                seqno: item.seqno,
            }),
            None => Lookup::Ejected {
                cas: item.cas,
                flags: item.flags,
                exptime: item.exptime,
                seqno: item.seqno,
            },
        }
    }
}

/// Why a lookup found nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Miss {
    Absent,
    Expired,
    Flushed,
}

// === impl Bucket ===

impl Bucket {
    /// get/gets on an active vbucket; a miss is `Err(NotFound)`.
    pub fn get(&self, vb: VbucketId, key: &[u8], now: u32) -> Result<Lookup, EngineError> {
        self.lookup(vb, key, now, VbucketState::Active)
    }

    /// GET_REPLICA: a read from a replica vbucket (NOT_MY_VBUCKET unless it
    /// is one). Never deletes: a replica's expiries and flushes reach it as
    /// deletions from its active copy, in seqno order.
    pub fn get_replica(&self, vb: VbucketId, key: &[u8], now: u32) -> Result<Lookup, EngineError> {
        self.lookup(vb, key, now, VbucketState::Replica)
    }

    fn lookup(
        &self,
        vb: VbucketId,
        key: &[u8],
        now: u32,
        want: VbucketState,
    ) -> Result<Lookup, EngineError> {
        let vbucket = self.admit(vb, want)?;
        self.stats.cmd_get.incr();
        let mut inner = self.lock_in(vbucket, want)?;
        let purge = want == VbucketState::Active;
        match self.find_live(vb, &mut inner, key, now, purge) {
            Ok(item) => {
                item.bump(now);
                self.stats.get_hits.incr();
                Ok(Lookup::of(item))
            }
            Err(miss) => {
                self.stats.get_misses.incr();
                match miss {
                    Miss::Expired => self.stats.get_expired.incr(),
                    Miss::Flushed => self.stats.get_flushed.incr(),
                    Miss::Absent => {}
                }
                Err(EngineError::NotFound)
            }
        }
    }

    /// Puts a value fetched from disk back into its ejected item — only if
    /// the item is still the version with `seqno` and still ejected (a
    /// write since then, or a concurrent restore, wins) and the quota has
    /// room after inline ejection. Returns whether it did. Call it after
    /// every background fetch: it counts `ep_bg_fetched`. Works in any
    /// vbucket state and during warmup.
    pub fn restore_value(&self, vb: VbucketId, key: &[u8], seqno: u64, value: Bytes) -> bool {
        self.stats.ep_bg_fetched.incr();
        let Ok(vbucket) = self.vbucket(vb) else {
            return false;
        };
        let restored = self.with_memory(|| {
            let mut inner = vbucket.lock();
            let Some(item) = inner.table.get_mut(key) else {
                return Ok(false);
            };
            if item.seqno != seqno || item.value.is_some() {
                return Ok(false);
            }
            self.mem.apply(value.len(), 0)?;
            item.value = Some(value.clone());
            item.referenced = true;
            Ok::<_, OpError>(true)
        });
        restored.unwrap_or(false)
    }

    /// Finds the live item for `key`. A dead one (expired, flushed) is a
    /// miss and, with `purge`, deleted now — only ever in an active
    /// vbucket, the one place mutations are born.
    pub(super) fn find_live<'a>(
        &self,
        vb: VbucketId,
        inner: &'a mut VbInner,
        key: &[u8],
        now: u32,
        purge: bool,
    ) -> Result<&'a mut Item, Miss> {
        let death = inner.table.get(key).map(|it| self.death(it, now));
        match death {
            None => Err(Miss::Absent),
            Some(None) => inner.table.get_mut(key).ok_or(Miss::Absent),
            Some(Some(miss)) => {
                if purge && self.remove_item(vb, inner, key, now).is_some() {
                    self.stats.ep_expired_access.incr();
                }
                Err(miss)
            }
        }
    }

    /// Why an item is dead at `now`, or `None` if it is live.
    pub(super) fn death(&self, item: &Item, now: u32) -> Option<Miss> {
        if item.is_expired(now) {
            Some(Miss::Expired)
        } else if self.flush.is_flushed(item.time, item.cas, now) {
            Some(Miss::Flushed)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{active_bucket, get_value, set, set_with, NOW};
    use super::*;

    #[test]
    fn hit_and_miss() {
        let b = active_bucket();
        assert_eq!(b.get(0, b"k", NOW), Err(EngineError::NotFound));
        let m = set_with(&b, "k", "v", 9, 0);
        let hit = b.get(0, b"k", NOW).unwrap().hit().unwrap();
        assert_eq!(
            hit,
            Hit {
                value: Bytes::from_static(b"v"),
                flags: 9,
                exptime: 0,
                cas: m.cas,
                seqno: m.seqno
            }
        );
        let stats = b.stats();
        for (name, want) in [("cmd_get", 2), ("get_hits", 1), ("get_misses", 1)] {
            assert!(stats.contains(&(name, want)), "{name}: {stats:?}");
        }
    }

    #[test]
    fn expired_item_is_deleted_on_access() {
        let b = active_bucket();
        set_with(&b, "k", "v", 0, NOW + 5);
        assert_eq!(get_value(&b, "k"), Some("v".into()));
        assert!(b.get(0, b"k", NOW + 4).is_ok(), "one second before");
        assert_eq!(b.get(0, b"k", NOW + 5), Err(EngineError::NotFound));
        assert_eq!(b.curr_items(), 0);
        let mut out = Vec::new();
        b.drain_mutations(0, 10, &mut out);
        assert!(
            matches!(
                out.last().map(|m| &m.kind),
                Some(crate::MutationKind::Delete)
            ),
            "a tombstone, so disk cannot resurrect it: {out:?}"
        );
        assert!(b.stats().contains(&("get_expired", 1)));
    }

    #[test]
    fn replica_reads_need_a_replica_and_never_delete() {
        let b = active_bucket();
        set_with(&b, "k", "v", 0, NOW + 5);
        assert_eq!(b.get_replica(0, b"k", NOW), Err(EngineError::NotMyVbucket));
        b.set_vbucket_state(0, VbucketState::Replica).unwrap();
        assert!(b.get_replica(0, b"k", NOW).unwrap().hit().is_some());
        assert_eq!(b.get_replica(0, b"k", NOW + 5), Err(EngineError::NotFound));
        assert_eq!(b.curr_items(), 1, "left for the active's deletion");
    }

    #[test]
    fn restore_value_only_into_the_same_ejected_version() {
        let b = active_bucket();
        let m = set(&b, "k", "v1");
        assert!(!b.restore_value(0, b"k", m.seqno, "x".into()), "resident");
        b.drain_mutations(0, 10, &mut Vec::new());
        b.mark_persisted(0, m.seqno);
        assert_eq!(b.eject_all_clean(), 1);
        let Lookup::Ejected { seqno, cas, .. } = b.get(0, b"k", NOW).unwrap() else {
            panic!("should be ejected");
        };
        assert_eq!((seqno, cas), (m.seqno, m.cas));
        assert!(
            !b.restore_value(0, b"k", seqno + 1, "x".into()),
            "other version"
        );
        assert!(!b.restore_value(0, b"nokey", seqno, "x".into()));
        assert!(
            !b.restore_value(7, b"k", seqno, "x".into()),
            "no such vbucket"
        );
        assert!(b.restore_value(0, b"k", seqno, "v1".into()));
        assert!(!b.restore_value(0, b"k", seqno, "v1".into()), "twice");
        assert_eq!(get_value(&b, "k"), Some("v1".into()));
        // A write after the ejection wins over a late restore.
        b.eject_all_clean();
        let m2 = set(&b, "k", "v2");
        assert!(!b.restore_value(0, b"k", m.seqno, "v1".into()));
        assert_eq!(get_value(&b, "k"), Some("v2".into()));
        assert!(m2.seqno > m.seqno);
        assert!(b.stats().contains(&("ep_bg_fetched", 7)));
        b.assert_accounting();
    }
}
