//! Warmup: rebuilding the tables from disk at start. While the server loads
//! it sets the warming-up flag, and clients get TempFail (never
//! NOT_MY_VBUCKET, which would send smart clients elsewhere for nothing).
//! Loading creates no mutations — the items are on disk already, so they
//! are clean — keeps every item's metadata, and keeps values only while
//! they fit below the high watermark (like Couchbase's warmup thresholds),
//! so the node does not start life paging.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::item::{Hints, Item, ItemMeta};
use super::memory::item_charge;
use super::{Bucket, EngineError};
use crate::mutation::VbucketId;

/// What [`Bucket::load_item`] kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loaded {
    /// Metadata and value are in memory.
    Resident,
    /// Metadata only: no value was given, or it did not fit.
    Ejected,
    /// The table already holds a newer (or the same) version of the key.
    Stale,
}

// === impl Bucket ===

impl Bucket {
    /// Sets or clears the warming-up flag.
    pub fn set_warming_up(&self, warming_up: bool) {
        self.set_gate(crate::Gate::WARMING_UP, warming_up);
    }

    /// Whether the bucket is warming up (`ep_warmup_thread` running).
    pub fn is_warming_up(&self) -> bool {
        self.gate.load(Ordering::Acquire) & crate::Gate::WARMING_UP != 0
    }

    /// Loads one item read from disk into `vb` (any state), as clean. Also
    /// raises the vbucket's seqnos to the item's and the bucket's CAS
    /// counter past the item's CAS. `OutOfMemory` when even the metadata
    /// does not fit in the quota; `NotStored` if the vbucket already has
    /// queued mutations (loading is for before the vbucket takes writes).
    pub fn load_item(
        &self,
        vb: VbucketId,
        key: Bytes,
        value: Option<Bytes>,
        meta: ItemMeta,
    ) -> Result<Loaded, EngineError> {
        let vbucket = self.vbucket(vb)?;
        let mut inner = vbucket.lock();
        if inner.queued() != 0 {
            return Err(EngineError::NotStored);
        }
        let old = inner
            .table
            .get(&key[..])
            .map(|it| (it.seqno, it.resident_len()));
        if old.is_some_and(|(seqno, _)| seqno >= meta.seqno) {
            return Ok(Loaded::Stale);
        }
        // Replacing an older copy (never queued: the queue is empty) gives
        // its whole charge back in the same step.
        let release = old.map_or(0, |(_, len)| item_charge(key.len(), len));
        let metadata = item_charge(key.len(), 0);
        let value = value.filter(|v| {
            let full = metadata.saturating_add(v.len());
            let high = self.mem.high();
            self.mem.apply_within(full, release, high).is_ok()
        });
        if value.is_none() && self.mem.apply(metadata, release).is_err() {
            return Err(EngineError::OutOfMemory);
        }
        let loaded = if value.is_some() {
            Loaded::Resident
        } else {
            Loaded::Ejected
        };
        inner.load_seqno(meta.seqno);
        self.cas.fetch_max(meta.cas, Ordering::Relaxed);
        let item = Item {
            value,
            flags: meta.flags,
            exptime: meta.exptime,
            cas: meta.cas,
            seqno: meta.seqno,
            time: meta.time,
            referenced: false,
            hints: Hints::default(),
            accessed: meta.time,
        };
        if inner.table.insert(key, item).is_none() {
            self.note_item_added();
        }
        Ok(loaded)
    }

    /// Raises `vb`'s high and persisted seqnos to at least `seqno` — the
    /// persisted seqno the store recorded, which may belong to a tombstone
    /// newer than every loaded item. `NotStored` if mutations are queued.
    pub fn load_seqno(&self, vb: VbucketId, seqno: u64) -> Result<(), EngineError> {
        if self.vbucket(vb)?.lock().load_seqno(seqno) {
            Ok(())
        } else {
            Err(EngineError::NotStored)
        }
    }

    /// Restores a `flush_all` deadline the store recorded (0 = none).
    pub fn load_flush_deadline(&self, deadline: u32) {
        self.flush.restore(deadline);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{active_bucket, bucket_with_quota, set, NOW};
    use super::super::{Lookup, VbucketState};
    use super::*;

    fn meta(seqno: u64, cas: u64) -> ItemMeta {
        ItemMeta {
            flags: 4,
            exptime: 0,
            cas,
            seqno,
            time: NOW - 10,
        }
    }

    #[test]
    fn loaded_items_are_clean_and_create_no_mutations() {
        let b = active_bucket();
        b.set_warming_up(true);
        let load = |k: &'static str, v: Option<&'static str>, m| {
            let v = v.map(|v: &'static str| Bytes::from_static(v.as_bytes()));
            b.load_item(0, Bytes::from_static(k.as_bytes()), v, m)
        };
        assert_eq!(load("a", Some("1"), meta(5, 500)), Ok(Loaded::Resident));
        assert_eq!(load("b", None, meta(9, 900)), Ok(Loaded::Ejected));
        assert_eq!(load("a", Some("0"), meta(4, 400)), Ok(Loaded::Stale));
        b.load_seqno(0, 12).unwrap();
        b.set_warming_up(false);
        assert_eq!(b.queue_len(), 0);
        assert_eq!(
            (b.high_seqno(0), b.persisted_seqno(0)),
            (Some(12), Some(12))
        );
        let hit = b.get(0, b"a", NOW).unwrap().hit().unwrap();
        assert_eq!((&hit.value[..], hit.flags, hit.cas), (&b"1"[..], 4, 500));
        assert_eq!(
            b.get(0, b"b", NOW),
            Ok(Lookup::Ejected {
                cas: 900,
                flags: 4,
                exptime: 0,
                seqno: 9
            })
        );
        let m = set(&b, "c", "3");
        assert_eq!(m.seqno, 13, "seqnos continue after the loaded ones");
        assert!(m.cas > 900, "CAS continues past loaded ones");
        assert_eq!(
            b.load_item(0, "d".into(), None, meta(20, 1)),
            Err(EngineError::NotStored)
        );
        assert_eq!(b.load_seqno(0, 50), Err(EngineError::NotStored));
        assert_eq!(b.load_seqno(4000, 50), Err(EngineError::NotMyVbucket));
        b.assert_accounting();
    }

    #[test]
    fn newer_copy_replaces_older_one() {
        let b = active_bucket();
        b.load_item(0, "a".into(), Some("old".into()), meta(3, 3))
            .unwrap();
        b.load_item(0, "a".into(), Some("new".into()), meta(7, 7))
            .unwrap();
        assert_eq!(b.get(0, b"a", NOW).unwrap().hit().unwrap().value, "new");
        assert_eq!(b.curr_items(), 1);
        b.assert_accounting();
    }

    #[test]
    fn values_load_only_below_the_high_watermark() {
        let b = bucket_with_quota(64 * 1024);
        b.set_vbucket_state(0, VbucketState::Active).unwrap();
        let mut outcomes = Vec::new();
        for i in 0..200u64 {
            let key = Bytes::from(format!("key{i}"));
            match b.load_item(
                0,
                key,
                Some(Bytes::from(vec![b'x'; 500])),
                meta(i + 1, i + 1),
            ) {
                Ok(o) => outcomes.push(o),
                Err(e) => {
                    assert_eq!(e, EngineError::OutOfMemory);
                    break;
                }
            }
            assert!(b.mem_used() <= b.config().quota_bytes);
        }
        assert!(outcomes.contains(&Loaded::Resident) && outcomes.contains(&Loaded::Ejected));
        // Once values stop fitting, none is loaded again.
        let first_ejected = outcomes.iter().position(|o| *o == Loaded::Ejected).unwrap();
        assert!(outcomes[first_ejected..]
            .iter()
            .all(|o| *o == Loaded::Ejected));
        b.assert_accounting();
    }

    #[test]
    fn flush_deadline_survives_a_restart() {
        let b = active_bucket();
        b.load_item(0, "a".into(), Some("1".into()), meta(1, 1))
            .unwrap();
        b.load_flush_deadline(NOW - 5);
        assert_eq!(b.get(0, b"a", NOW), Err(EngineError::NotFound));
    }
}
