//! delete, with an optional CAS (binary DELETE: a non-zero CAS must match,
//! else EXISTS; memcached 1.6 `process_bin_delete`), and `remove_item`, the
//! one place an item leaves the table with a tombstone queued behind it —
//! shared with the lazy and background expiry purges. Removing never needs
//! memory: the tombstone's charge is below the item's (`ITEM_OVERHEAD >=
//! MUTATION_OVERHEAD`), so a full bucket can always delete.

use super::memory::item_charge;
use super::vbucket::{VbInner, VbucketState};
use super::{Bucket, EngineError, Mutated};
use crate::mutation::{Mutation, MutationKind, VbucketId};

// === impl Bucket ===

impl Bucket {
    /// Deletes a key from an active vbucket. `cas` 0 = unconditional.
    pub fn delete(
        &self,
        vb: VbucketId,
        key: &[u8],
        cas: u64,
        now: u32,
    ) -> Result<Mutated, EngineError> {
        let vbucket = self.admit_write(vb)?;
        let mut inner = self.lock_in(vbucket, VbucketState::Active)?;
        let current = match self.find_live(vb, &mut inner, key, now, true) {
            Ok(item) => item.cas,
            Err(_) => {
                self.stats.delete_misses.incr();
                return Err(EngineError::NotFound);
            }
        };
        if cas != 0 && cas != current {
            return Err(EngineError::Exists);
        }
        let deleted = self
            .remove_item(vb, &mut inner, key, now)
            .ok_or(EngineError::NotFound)?;
        self.stats.delete_hits.incr();
        Ok(deleted)
    }

    /// Removes `key` (live or dead) and queues its tombstone; `None` if it
    /// was not there.
    pub(super) fn remove_item(
        &self,
        vb: VbucketId,
        inner: &mut VbInner,
        key: &[u8],
        now: u32,
    ) -> Option<Mutated> {
        let (key, item) = inner.table.remove_entry(key)?;
        self.note_item_removed();
        let release = item_charge(key.len(), 0)
            .saturating_add(inner.retire_value(item.seqno, item.resident_len()));
        let queue_charge = self.queue_charge(key.len());
        // One net update: release >= queue_charge, see the module doc.
        self.mem.release(release.saturating_sub(queue_charge));
        let cas = self.next_cas();
        let seqno = inner.push(queue_charge, |seqno| Mutation {
            vbucket: vb,
            seqno,
            key,
            cas,
            time: now,
            kind: MutationKind::Delete,
        });
        self.note_queued();
        Some(Mutated { cas, seqno })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{active_bucket, set, NOW};
    use super::*;

    #[test]
    fn delete_hit_miss_and_cas() {
        let b = active_bucket();
        assert_eq!(b.delete(0, b"k", 0, NOW), Err(EngineError::NotFound));
        let m = set(&b, "k", "v");
        assert_eq!(b.delete(0, b"k", m.cas + 1, NOW), Err(EngineError::Exists));
        let d = b.delete(0, b"k", m.cas, NOW).unwrap();
        assert!(d.seqno == m.seqno + 1 && d.cas > m.cas);
        assert_eq!(b.get(0, b"k", NOW), Err(EngineError::NotFound));
        assert_eq!(b.delete(0, b"k", 0, NOW), Err(EngineError::NotFound));
        set(&b, "k", "v");
        b.delete(0, b"k", 0, NOW).unwrap();
        assert_eq!(b.curr_items(), 0);
        let stats = b.stats();
        for (name, want) in [("delete_hits", 2), ("delete_misses", 2)] {
            assert!(stats.contains(&(name, want)), "{name}: {stats:?}");
        }
        b.assert_accounting();
    }

    #[test]
    fn delete_queues_a_tombstone() {
        let b = active_bucket();
        set(&b, "k", "v");
        let d = b.delete(0, b"k", 0, NOW).unwrap();
        let mut out = Vec::new();
        b.drain_mutations(0, 10, &mut out);
        let last = out.last().unwrap();
        assert_eq!(
            (&last.key[..], &last.kind, last.seqno, last.cas),
            (&b"k"[..], &MutationKind::Delete, d.seqno, d.cas)
        );
    }

    #[test]
    fn delete_of_an_expired_key_is_a_miss() {
        let b = active_bucket();
        super::super::tests::set_with(&b, "k", "v", 0, NOW + 1);
        assert_eq!(b.delete(0, b"k", 0, NOW + 1), Err(EngineError::NotFound));
        assert_eq!(b.curr_items(), 0, "reclaimed anyway");
    }
}
