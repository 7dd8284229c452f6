//! touch and gat/gats: set a live item's exptime (gat also returns it).
//! As in memcached 1.6 (`do_item_touch`), the CAS does not change — checked
//! against memcached 1.6.18 — but the change is a mutation like any other:
//! it gets a seqno and is queued with the full value, since disk and
//! replicas store whole records. That is why touching an ejected item needs
//! its value back first ([`EngineError::ValueEjected`]).

use super::vbucket::{VbInner, VbucketState};
use super::{Bucket, EngineError, Hit, Mutated, OpError};
use crate::mutation::{Mutation, MutationKind, VbucketId};

/// Whether a rewrite keeps the item's CAS or takes a new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cas {
    /// touch: memcached keeps the CAS.
    Keep,
    /// `md I`: memcached bumps it, so a client holding the old one loses.
    New,
}

// === impl Bucket ===

impl Bucket {
    /// touch: gives a live item a new absolute `exptime` (0 = never).
    pub fn touch(
        &self,
        vb: VbucketId,
        key: &[u8],
        exptime: u32,
        now: u32,
    ) -> Result<Mutated, EngineError> {
        let vbucket = self.admit_write(vb)?;
        self.stats.cmd_touch.incr();
        let result = self.with_memory(|| {
            let mut inner = self.lock_in(vbucket, VbucketState::Active)?;
            self.rewrite_locked(vb, &mut inner, key, exptime, Cas::Keep, now)
        });
        self.count_touch(&result);
        result.map(|(mutated, _)| mutated)
    }

    /// gat/gats: touch and return the value. memcached counts a gat as a
    /// get command and as a touch hit or miss (not as a get hit or miss).
    pub fn gat(
        &self,
        vb: VbucketId,
        key: &[u8],
        exptime: u32,
        now: u32,
    ) -> Result<Hit, EngineError> {
        let vbucket = self.admit_write(vb)?;
        self.stats.cmd_get.incr();
        self.stats.cmd_touch.incr();
        let result = self.with_memory(|| {
            let mut inner = self.lock_in(vbucket, VbucketState::Active)?;
            self.rewrite_locked(vb, &mut inner, key, exptime, Cas::Keep, now)
        });
        self.count_touch(&result);
        result.map(|(_, hit)| hit)
    }

    fn count_touch<T>(&self, result: &Result<T, EngineError>) {
        match result {
            Ok(_) => self.stats.touch_hits.incr(),
            Err(EngineError::NotFound) => self.stats.touch_misses.incr(),
            Err(_) => {}
        }
    }

    /// Queues the live item for `key` again with a new `exptime` (and, for
    /// [`Cas::New`], a new CAS): touch, and meta `md I`. A fetch too.
    pub(super) fn rewrite_locked(
        &self,
        vb: VbucketId,
        inner: &mut VbInner,
        key: &[u8],
        exptime: u32,
        cas: Cas,
        now: u32,
    ) -> Result<(Mutated, Hit), OpError> {
        let item = self
            .find_live(vb, inner, key, now, true)
            .map_err(|_| EngineError::NotFound)?;
        let value = item.value.clone().ok_or(EngineError::ValueEjected)?;
        let flags = item.flags;
        let cas = match cas {
            Cas::Keep => item.cas,
            Cas::New => self.next_cas(),
        };
        let queue_charge = self.queue_charge(key.len());
        self.mem.apply(queue_charge, 0)?;
        let key = inner
            .table
            .get_key_value(key)
            .map(|(k, _)| k.clone())
            .ok_or(EngineError::NotFound)?;
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
        if let Some(item) = inner.table.get_mut(&key[..]) {
            item.cas = cas;
            item.exptime = exptime;
            item.seqno = seqno;
            item.time = now;
            // memcached's touch is a fetch too (`h1` after it).
            item.bump(now);
        }
        let hit = Hit {
            value,
            flags,
            exptime,
            cas,
            seqno,
        };
        Ok((Mutated { cas, seqno }, hit))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{active_bucket, set, set_with, NOW};
    use super::*;

    #[test]
    fn touch_moves_expiry_and_keeps_cas() {
        let b = active_bucket();
        assert_eq!(b.touch(0, b"k", 0, NOW), Err(EngineError::NotFound));
        let m = set_with(&b, "k", "v", 3, NOW + 5);
        let t = b.touch(0, b"k", NOW + 100, NOW + 1).unwrap();
        assert_eq!(t.cas, m.cas, "memcached keeps the CAS on touch");
        assert!(t.seqno > m.seqno, "but it is a mutation");
        assert!(b.get(0, b"k", NOW + 50).is_ok(), "no longer expires at +5");
        assert_eq!(b.get(0, b"k", NOW + 100), Err(EngineError::NotFound));
        assert_eq!(b.touch(0, b"k", 0, NOW + 100), Err(EngineError::NotFound));
        let stats = b.stats();
        for (name, want) in [("cmd_touch", 3), ("touch_hits", 1), ("touch_misses", 2)] {
            assert!(stats.contains(&(name, want)), "{name}: {stats:?}");
        }
    }

    #[test]
    fn touch_queues_the_whole_record() {
        let b = active_bucket();
        set_with(&b, "k", "v", 3, 0);
        b.touch(0, b"k", NOW + 9, NOW).unwrap();
        let mut out = Vec::new();
        b.drain_mutations(0, 10, &mut out);
        assert_eq!(
            out[1].kind,
            MutationKind::Set {
                value: "v".into(),
                flags: 3,
                exptime: NOW + 9
            }
        );
    }

    #[test]
    fn gat_returns_the_value_and_touches() {
        let b = active_bucket();
        assert_eq!(b.gat(0, b"k", 0, NOW), Err(EngineError::NotFound));
        let m = set_with(&b, "k", "v", 3, NOW + 5);
        let hit = b.gat(0, b"k", 0, NOW).unwrap();
        assert_eq!(
            (&hit.value[..], hit.flags, hit.cas, hit.exptime),
            (&b"v"[..], 3, m.cas, 0)
        );
        assert!(b.get(0, b"k", NOW + 1000).is_ok(), "exptime cleared");
        let stats = b.stats();
        for (name, want) in [("cmd_get", 3), ("get_hits", 1), ("touch_hits", 1)] {
            assert!(stats.contains(&(name, want)), "{name}: {stats:?}");
        }
    }

    #[test]
    fn touching_an_ejected_value_asks_for_it() {
        let b = active_bucket();
        let m = set(&b, "k", "v");
        b.drain_mutations(0, 10, &mut Vec::new());
        b.mark_persisted(0, m.seqno);
        b.eject_all_clean();
        assert_eq!(b.touch(0, b"k", 0, NOW), Err(EngineError::ValueEjected));
        assert_eq!(b.gat(0, b"k", 0, NOW), Err(EngineError::ValueEjected));
        assert!(b.restore_value(0, b"k", m.seqno, "v".into()));
        b.touch(0, b"k", NOW + 9, NOW).unwrap();
        b.assert_accounting();
    }
}
