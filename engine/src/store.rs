//! Storage commands — set, add, replace, append, prepend, each with an
//! optional compare-CAS — with memcached 1.6's `do_store_item` semantics,
//! checked against memcached 1.6.18 over both protocols: a non-zero CAS
//! turns set, add and replace alike into a compare-and-swap (NOT_FOUND when
//! the key is missing, EXISTS on a mismatch; memcached's binary protocol
//! makes all three `NREAD_CAS`); append and prepend need an existing key
//! (NOT_STORED), keep its flags and exptime, and check a non-zero CAS too.
//! Also `write_item`, the one place a new version of an item is installed,
//! shared with incr/decr.

use bytes::{Bytes, BytesMut};

use super::item::{Hints, Item};
use super::memory::{item_charge, NeedMemory};
use super::vbucket::{VbInner, VbucketState};
use super::{Bucket, EngineError, Mutated, OpError};
use crate::mutation::{Mutation, MutationKind, VbucketId};

/// Which storage command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreMode {
    /// Store unconditionally.
    Set,
    /// Store only if the key is missing.
    Add,
    /// Store only if the key exists.
    Replace,
    /// Add the value after the existing one.
    Append,
    /// Add the value before the existing one.
    Prepend,
}

/// One storage command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreRequest {
    /// Which command.
    pub mode: StoreMode,
    /// The key (validated by the caller: memcached allows 1–250 bytes).
    pub key: Bytes,
    /// The value. Must own its allocation (see the `memory` module): the
    /// engine keeps it as given and charges its length.
    pub value: Bytes,
    /// Client flags; append/prepend keep the item's.
    pub flags: u32,
    /// Absolute expiry (unix seconds, 0 = never; see
    /// [`resolve_exptime`](super::resolve_exptime)); append/prepend keep the
    /// item's.
    pub exptime: u32,
    /// Compare-CAS; 0 = none (memcached's convention; the engine never
    /// hands out 0).
    pub cas: u64,
}

/// Whether a compare-and-swap with an older CAS stores a stale value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Invalidate {
    No,
    IfOlder,
}

/// What a critical section needs to know of the live item, copied out so
/// the table can be written.
struct Current {
    cas: u64,
    value: Option<Bytes>,
    flags: u32,
    exptime: u32,
    hints: Hints,
}

// === impl Bucket ===

impl Bucket {
    /// Runs a storage command on an active vbucket.
    pub fn store(
        &self,
        vb: VbucketId,
        req: &StoreRequest,
        now: u32,
    ) -> Result<Mutated, EngineError> {
        self.store_with(vb, req, Invalidate::No, now)
    }

    /// [`Bucket::store`] for meta `ms … I`: a compare-and-swap whose CAS is
    /// *older* than the item's still stores the value, marked stale, keeping
    /// the item's TTL and win-token state (memcached's `set_stale`: a slow
    /// recache must not pass for fresh data). Any other CAS works as in
    /// `store`.
    pub fn store_invalidating(
        &self,
        vb: VbucketId,
        req: &StoreRequest,
        now: u32,
    ) -> Result<Mutated, EngineError> {
        self.store_with(vb, req, Invalidate::IfOlder, now)
    }

    fn store_with(
        &self,
        vb: VbucketId,
        req: &StoreRequest,
        invalidate: Invalidate,
        now: u32,
    ) -> Result<Mutated, EngineError> {
        let vbucket = self.admit_write(vb)?;
        if req.value.len() > self.config.max_value_len {
            // memcached refuses it before reading the value, uncounted.
            return Err(EngineError::TooLarge);
        }
        self.stats.cmd_set.incr();
        let compare = req.cas != 0
            && matches!(
                req.mode,
                StoreMode::Set | StoreMode::Add | StoreMode::Replace
            );
        let result = self.with_memory(|| {
            let mut inner = self.lock_in(vbucket, VbucketState::Active)?;
            self.store_locked(vb, &mut inner, req, invalidate, now)
        });
        if compare {
            let counter = match result {
                Ok(_) => &self.stats.cas_hits,
                Err(EngineError::Exists) => &self.stats.cas_badval,
                Err(EngineError::NotFound) => &self.stats.cas_misses,
                Err(_) => return result,
            };
            counter.incr();
        }
        if result.is_ok() {
            self.stats.total_items.incr();
        }
        result
    }

    fn store_locked(
        &self,
        vb: VbucketId,
        inner: &mut VbInner,
        req: &StoreRequest,
        invalidate: Invalidate,
        now: u32,
    ) -> Result<Mutated, OpError> {
        let current = inner
            .table
            .get(&req.key[..])
            .filter(|it| self.is_live(it, now))
            .map(|it| Current {
                cas: it.cas,
                value: it.value.clone(),
                flags: it.flags,
                exptime: it.exptime,
                hints: it.hints,
            });
        let (flags, exptime) = (req.flags, req.exptime);
        let value = match (req.mode, current) {
            (StoreMode::Set | StoreMode::Add | StoreMode::Replace, None) if req.cas != 0 => {
                return Err(EngineError::NotFound.into())
            }
            (StoreMode::Set | StoreMode::Add | StoreMode::Replace, Some(cur)) if req.cas != 0 => {
                if cur.cas == req.cas {
                    req.value.clone()
                } else if invalidate == Invalidate::IfOlder && req.cas < cur.cas {
                    return Ok(self.write_stale(vb, inner, req, &cur, now)?);
                } else {
                    return Err(EngineError::Exists.into());
                }
            }
            (StoreMode::Add, Some(_)) => {
                // memcached still bumps the item in its LRU.
                if let Some(it) = inner.table.get_mut(&req.key[..]) {
                    it.referenced = true;
                }
                return Err(EngineError::NotStored.into());
            }
            (StoreMode::Replace, None) => return Err(EngineError::NotStored.into()),
            (StoreMode::Set | StoreMode::Add | StoreMode::Replace, _) => req.value.clone(),
            (StoreMode::Append | StoreMode::Prepend, None) => {
                return Err(EngineError::NotStored.into())
            }
            (StoreMode::Append | StoreMode::Prepend, Some(cur)) => {
                if req.cas != 0 && cur.cas != req.cas {
                    return Err(EngineError::Exists.into());
                }
                let old = cur.value.ok_or(EngineError::ValueEjected)?;
                let len = old.len().saturating_add(req.value.len());
                if len > self.config.max_value_len {
                    return Err(EngineError::TooLarge.into());
                }
                let (first, second) = match req.mode {
                    StoreMode::Append => (&old, &req.value),
                    _ => (&req.value, &old),
                };
                // One exactly sized allocation the item owns.
                let mut joined = BytesMut::with_capacity(len);
                joined.extend_from_slice(first);
                joined.extend_from_slice(second);
                let value = joined.freeze();
                return Ok(self.write_item(
                    vb,
                    inner,
                    &req.key,
                    value,
                    cur.flags,
                    cur.exptime,
                    now,
                )?);
            }
        };
        Ok(self.write_item(vb, inner, &req.key, value, flags, exptime, now)?)
    }

    /// The stale write of [`Bucket::store_invalidating`].
    fn write_stale(
        &self,
        vb: VbucketId,
        inner: &mut VbInner,
        req: &StoreRequest,
        cur: &Current,
        now: u32,
    ) -> Result<Mutated, NeedMemory> {
        let value = req.value.clone();
        let mutated = self.write_item(vb, inner, &req.key, value, req.flags, cur.exptime, now)?;
        if let Some(item) = inner.table.get_mut(&req.key[..]) {
            item.hints.set(Hints::STALE);
            if cur.hints.has(Hints::WIN_SENT) {
                item.hints.set(Hints::WIN_SENT);
            }
        }
        Ok(mutated)
    }

    /// Installs a new version of `key` — over a live item, a dead one
    /// (expired or flushed: the new version supersedes it on disk, so no
    /// tombstone is needed) or nothing — and queues its mutation. Charges
    /// everything first; on a full quota nothing changes.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn write_item(
        &self,
        vb: VbucketId,
        inner: &mut VbInner,
        key: &Bytes,
        value: Bytes,
        flags: u32,
        exptime: u32,
        now: u32,
    ) -> Result<Mutated, NeedMemory> {
        let old = inner
            .table
            .get_key_value(&key[..])
            .map(|(k, it)| (k.clone(), it.seqno, it.resident_len()));
        let queue_charge = self.queue_charge(key.len());
        let (charge, release) = match &old {
            Some((_, seqno, len)) => (
                value.len().saturating_add(queue_charge),
                inner.release_of(*seqno, *len),
            ),
            None => (
                item_charge(key.len(), value.len()).saturating_add(queue_charge),
                0,
            ),
        };
        self.mem.apply(charge, release)?;
        if let Some((_, seqno, len)) = &old {
            inner.retire_value(*seqno, *len);
        }
        // Keep the table's key allocation (it is what was charged).
        let key = old.map_or_else(|| key.clone(), |(k, _, _)| k);
        let cas = self.next_cas();
        let seqno = inner.push(queue_charge, |seqno| Mutation {
            vbucket: vb,
            seqno,
            key: key.clone(),
            cas,
            time: now,
            kind: MutationKind::Set {
                value: value.clone(),
                flags,
                exptime,
            },
        });
        self.note_queued();
        let item = Item {
            value: Some(value),
            flags,
            exptime,
            cas,
            seqno,
            time: now,
            referenced: true,
            hints: Hints::default(),
            accessed: now,
        };
        if inner.table.insert(key, item).is_none() {
            self.note_item_added();
        }
        Ok(Mutated { cas, seqno })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{active_bucket, get_value, set, NOW};
    use super::*;

    fn req(mode: StoreMode, key: &'static str, value: &'static str, cas: u64) -> StoreRequest {
        StoreRequest {
            mode,
            key: Bytes::from_static(key.as_bytes()),
            value: Bytes::from_static(value.as_bytes()),
            flags: 7,
            exptime: 0,
            cas,
        }
    }

    #[test]
    fn set_add_replace() {
        let b = active_bucket();
        assert_eq!(
            b.store(0, &req(StoreMode::Replace, "k", "r", 0), NOW),
            Err(EngineError::NotStored),
            "replace on missing"
        );
        b.store(0, &req(StoreMode::Add, "k", "a", 0), NOW).unwrap();
        assert_eq!(
            b.store(0, &req(StoreMode::Add, "k", "b", 0), NOW),
            Err(EngineError::NotStored),
            "add on existing"
        );
        assert_eq!(get_value(&b, "k"), Some("a".into()));
        b.store(0, &req(StoreMode::Replace, "k", "r", 0), NOW)
            .unwrap();
        assert_eq!(get_value(&b, "k"), Some("r".into()));
        b.store(0, &req(StoreMode::Set, "k", "s", 0), NOW).unwrap();
        assert_eq!(get_value(&b, "k"), Some("s".into()));
    }

    #[test]
    fn compare_and_swap() {
        let b = active_bucket();
        assert_eq!(
            b.store(0, &req(StoreMode::Set, "k", "x", 99), NOW),
            Err(EngineError::NotFound),
            "cas on missing"
        );
        let first = set(&b, "k", "v1");
        assert_eq!(
            b.store(0, &req(StoreMode::Set, "k", "x", first.cas + 1), NOW),
            Err(EngineError::Exists),
            "cas mismatch"
        );
        let second = b
            .store(0, &req(StoreMode::Set, "k", "v2", first.cas), NOW)
            .unwrap();
        assert!(second.cas > first.cas && second.seqno > first.seqno);
        // memcached's binary add/replace with a CAS are CAS too.
        assert_eq!(
            b.store(0, &req(StoreMode::Add, "k", "x", first.cas), NOW),
            Err(EngineError::Exists)
        );
        b.store(0, &req(StoreMode::Add, "k", "v3", second.cas), NOW)
            .unwrap();
        assert_eq!(
            b.store(0, &req(StoreMode::Add, "nokey", "x", 5), NOW),
            Err(EngineError::NotFound)
        );
        let stats = b.stats();
        for (name, want) in [("cas_hits", 2), ("cas_badval", 2), ("cas_misses", 2)] {
            assert!(stats.contains(&(name, want)), "{name}: {stats:?}");
        }
    }

    #[test]
    fn append_prepend() {
        let b = active_bucket();
        assert_eq!(
            b.store(0, &req(StoreMode::Append, "k", "x", 0), NOW),
            Err(EngineError::NotStored),
            "append to missing"
        );
        assert_eq!(
            b.store(0, &req(StoreMode::Prepend, "k", "x", 5), NOW),
            Err(EngineError::NotStored),
            "missing wins over a cas"
        );
        let mut r = req(StoreMode::Set, "k", "mid", 0);
        r.flags = 5;
        r.exptime = NOW + 100;
        let m = b.store(0, &r, NOW).unwrap();
        let mut a = req(StoreMode::Append, "k", "+", 0);
        a.flags = 1;
        a.exptime = NOW + 1;
        b.store(0, &a, NOW).unwrap();
        b.store(0, &req(StoreMode::Prepend, "k", "-", 0), NOW)
            .unwrap();
        let hit = b.get(0, b"k", NOW + 50).unwrap().hit().unwrap();
        assert_eq!(&hit.value[..], b"-mid+");
        assert_eq!((hit.flags, hit.exptime), (5, NOW + 100), "kept");
        assert_eq!(
            b.store(0, &req(StoreMode::Append, "k", "x", m.cas), NOW),
            Err(EngineError::Exists),
            "binary append checks a non-zero cas"
        );
        b.store(0, &req(StoreMode::Append, "k", "!", hit.cas), NOW)
            .unwrap();
        assert_eq!(get_value(&b, "k"), Some("-mid+!".into()));
    }

    #[test]
    fn too_large() {
        let b = active_bucket();
        let big = Bytes::from(vec![b'x'; b.config().max_value_len + 1]);
        let mut r = req(StoreMode::Set, "k", "", 0);
        r.value = big;
        assert_eq!(b.store(0, &r, NOW), Err(EngineError::TooLarge));
        r.value = Bytes::from(vec![b'x'; b.config().max_value_len]);
        b.store(0, &r, NOW).unwrap();
        assert_eq!(
            b.store(0, &req(StoreMode::Append, "k", "y", 0), NOW),
            Err(EngineError::TooLarge),
            "the joined value counts"
        );
    }

    #[test]
    fn writes_over_expired_items_see_them_missing() {
        let b = active_bucket();
        let mut r = req(StoreMode::Set, "k", "old", 0);
        r.exptime = NOW + 10;
        b.store(0, &r, NOW).unwrap();
        let later = NOW + 10;
        assert_eq!(
            b.store(0, &req(StoreMode::Replace, "k", "x", 0), later),
            Err(EngineError::NotStored)
        );
        assert_eq!(
            b.store(0, &req(StoreMode::Append, "k", "x", 0), later),
            Err(EngineError::NotStored)
        );
        b.store(0, &req(StoreMode::Add, "k", "new", 0), later)
            .unwrap();
        assert_eq!(b.get(0, b"k", later).unwrap().hit().unwrap().value, "new");
        assert_eq!(b.curr_items(), 1);
    }
}
