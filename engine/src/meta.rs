//! What memcached's meta commands ask of an item beyond a plain read:
//! [`Bucket::meta_get`] (`mg` with `T` touch, `N` vivify on miss, `R`
//! recache, and the hit-before/last-access/stale/win answers `h l X W Z`)
//! and [`Bucket::invalidate`] (`md … I`: mark stale instead of deleting).
//! Each runs in one critical section, as memcached does under its item lock,
//! so exactly one client wins the recache of an item (`W`) and every later
//! one sees `Z` until the item is rewritten. The hints themselves are
//! memory-only (see `item::Hints`).

use bytes::Bytes;

use super::item::Hints;
use super::touch::Cas;
use super::vbucket::{VbInner, VbucketState};
use super::{Bucket, EngineError, Hit, Mutated, OpError};
use crate::mutation::VbucketId;

/// What an `mg` wants besides the value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetaGetRequest {
    /// `T`: the new absolute exptime (0 = never).
    pub touch: Option<u32>,
    /// `N`: on a miss, create an empty item with this absolute exptime and
    /// hand this client the win token.
    pub vivify: Option<u32>,
    /// `R`: win the recache when the item expires before this absolute
    /// time (and nobody won it yet).
    pub recache: Option<u32>,
    /// `u` absent: count this as a fetch (`h`, `l` and the pager see it).
    pub bump: bool,
}

/// An `mg` hit and what the meta flags report about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaHit {
    /// The item (after `T`).
    pub hit: Hit,
    /// `h`: it had been fetched before this request.
    pub fetched_before: bool,
    /// `l`: seconds since its last fetch or write, before this request.
    pub idle_secs: u32,
    /// `Z`: a client had already been handed the win token.
    pub win_sent_before: bool,
    /// `X`: it was invalidated.
    pub stale: bool,
    /// `W`: this client won the recache (or created the item with `N`).
    pub won: bool,
    /// `N` created the item just now (a miss, for the counters).
    pub created: bool,
    /// It was written with a base64 key (see [`Bucket::mark_binary_key`]).
    pub binary_key: bool,
}

// === impl Bucket ===

impl Bucket {
    /// `mg`: reads `key` on an active vbucket with the meta flags' side
    /// effects. A miss without `vivify` is `Err(NotFound)`; an ejected value
    /// is `Err(ValueEjected)` before anything changes (fetch it and retry).
    pub fn meta_get(
        &self,
        vb: VbucketId,
        key: &[u8],
        req: &MetaGetRequest,
        now: u32,
    ) -> Result<MetaHit, EngineError> {
        let writes = req.touch.is_some() || req.vivify.is_some();
        let vbucket = if writes {
            self.admit_write(vb)?
        } else {
            self.admit(vb, VbucketState::Active)?
        };
        self.stats.cmd_get.incr();
        if req.touch.is_some() {
            self.stats.cmd_touch.incr();
        }
        let result = self.with_memory(|| {
            let mut inner = self.lock_in(vbucket, VbucketState::Active)?;
            self.meta_get_locked(vb, &mut inner, key, req, now)
        });
        match &result {
            Ok(m) if !m.created => self.stats.get_hits.incr(),
            Ok(_) | Err(EngineError::NotFound) => self.stats.get_misses.incr(),
            Err(_) => {}
        }
        if let (Ok(_), Some(_)) = (&result, req.touch) {
            self.stats.touch_hits.incr();
        }
        result
    }

    fn meta_get_locked(
        &self,
        vb: VbucketId,
        inner: &mut VbInner,
        key: &[u8],
        req: &MetaGetRequest,
        now: u32,
    ) -> Result<MetaHit, OpError> {
        let Ok(item) = self.find_live(vb, inner, key, now, true) else {
            return self.vivify_locked(vb, inner, key, req, now);
        };
        let value = item.value.clone().ok_or(EngineError::ValueEjected)?;
        let fetched_before = item.hints.has(Hints::FETCHED);
        let idle_secs = now.saturating_sub(item.accessed);
        let mut hit = Hit {
            value,
            flags: item.flags,
            exptime: item.exptime,
            cas: item.cas,
            seqno: item.seqno,
        };
        if let Some(exptime) = req.touch {
            hit = self
                .rewrite_locked(vb, inner, key, exptime, Cas::Keep, now)?
                .1;
        }
        let item = inner.table.get_mut(key).ok_or(EngineError::NotFound)?;
        let win_sent_before = item.hints.has(Hints::WIN_SENT);
        let stale = item.hints.has(Hints::STALE);
        let expires_soon = req
            .recache
            .is_some_and(|r| item.exptime != 0 && item.exptime < r);
        let won = !win_sent_before && (stale || expires_soon);
        if won {
            item.hints.set(Hints::WIN_SENT);
        }
        if req.bump {
            item.bump(now);
        }
        Ok(MetaHit {
            hit,
            fetched_before,
            idle_secs,
            win_sent_before,
            stale,
            won,
            created: false,
            binary_key: item.hints.has(Hints::BINARY_KEY),
        })
    }

    /// A miss: with `N`, an empty item the caller wins; else NotFound.
    fn vivify_locked(
        &self,
        vb: VbucketId,
        inner: &mut VbInner,
        key: &[u8],
        req: &MetaGetRequest,
        now: u32,
    ) -> Result<MetaHit, OpError> {
        let exptime = req.vivify.ok_or(EngineError::NotFound)?;
        let key = Bytes::copy_from_slice(key);
        let Mutated { cas, seqno } =
            self.write_item(vb, inner, &key, Bytes::new(), 0, exptime, now)?;
        if let Some(item) = inner.table.get_mut(&key[..]) {
            item.hints.set(Hints::WIN_SENT);
            if req.bump {
                item.bump(now);
            }
        }
        self.stats.total_items.incr();
        Ok(MetaHit {
            hit: Hit {
                value: Bytes::new(),
                flags: 0,
                exptime,
                cas,
                seqno,
            },
            fetched_before: false,
            idle_secs: 0,
            win_sent_before: false,
            stale: false,
            won: true,
            created: true,
            binary_key: false,
        })
    }

    /// Records that the live item for `key` was just written with a base64
    /// key, so meta replies name it that way (memcached keeps the same
    /// bit). A separate step after the write: only `b` writes pay for it.
    pub fn mark_binary_key(&self, vb: VbucketId, key: &[u8]) {
        let Ok(vbucket) = self.admit(vb, VbucketState::Active) else {
            return;
        };
        let mut inner = vbucket.lock();
        if let Some(item) = inner.table.get_mut(key) {
            item.hints.set(Hints::BINARY_KEY);
        }
    }

    /// `md … I`: instead of deleting, marks the live item stale with a new
    /// CAS (and `exptime`, when given), and takes back the win token so
    /// the next reader recaches it. `cas` (0 = none) must match first.
    pub fn invalidate(
        &self,
        vb: VbucketId,
        key: &[u8],
        cas: u64,
        exptime: Option<u32>,
        now: u32,
    ) -> Result<Mutated, EngineError> {
        let vbucket = self.admit_write(vb)?;
        let result = self.with_memory(|| {
            let mut inner = self.lock_in(vbucket, VbucketState::Active)?;
            let item = self
                .find_live(vb, &mut inner, key, now, true)
                .map_err(|_| EngineError::NotFound)?;
            if cas != 0 && item.cas != cas {
                return Err(EngineError::Exists.into());
            }
            let exptime = exptime.unwrap_or(item.exptime);
            let (mutated, _) = self.rewrite_locked(vb, &mut inner, key, exptime, Cas::New, now)?;
            if let Some(item) = inner.table.get_mut(key) {
                item.hints.set(Hints::STALE);
                item.hints.clear(Hints::WIN_SENT);
            }
            Ok(mutated)
        });
        match result {
            Ok(_) => self.stats.delete_hits.incr(),
            Err(EngineError::NotFound) => self.stats.delete_misses.incr(),
            Err(_) => {}
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{active_bucket, set, set_with, NOW};
    use super::*;
    use crate::{StoreMode, StoreRequest};

    fn mg(b: &Bucket, key: &str, req: MetaGetRequest, now: u32) -> Result<MetaHit, EngineError> {
        b.meta_get(0, key.as_bytes(), &req, now)
    }

    const BUMP: MetaGetRequest = MetaGetRequest {
        touch: None,
        vivify: None,
        recache: None,
        bump: true,
    };

    #[test]
    fn hit_before_and_last_access_follow_fetches() {
        let b = active_bucket();
        set(&b, "k", "v");
        let first = mg(&b, "k", BUMP, NOW + 5).unwrap();
        assert_eq!((first.fetched_before, first.idle_secs), (false, 5));
        let second = mg(&b, "k", BUMP, NOW + 7).unwrap();
        assert_eq!((second.fetched_before, second.idle_secs), (true, 2));
        let quiet = MetaGetRequest {
            bump: false,
            ..BUMP
        };
        mg(&b, "k", quiet, NOW + 9).unwrap();
        assert_eq!(
            mg(&b, "k", BUMP, NOW + 10).unwrap().idle_secs,
            3,
            "`u` is not a fetch"
        );
        set(&b, "k", "w");
        assert!(
            !mg(&b, "k", BUMP, NOW).unwrap().fetched_before,
            "a write starts over"
        );
    }

    #[test]
    fn vivify_creates_an_empty_item_won_once() {
        let b = active_bucket();
        let viv = MetaGetRequest {
            vivify: Some(NOW + 30),
            ..BUMP
        };
        let created = mg(&b, "k", viv, NOW).unwrap();
        assert!(created.won && !created.win_sent_before);
        assert_eq!(
            (&created.hit.value[..], created.hit.exptime),
            (&b""[..], NOW + 30)
        );
        let again = mg(&b, "k", viv, NOW).unwrap();
        assert!(!again.won && again.win_sent_before && again.fetched_before);
        assert_eq!(mg(&b, "x", BUMP, NOW), Err(EngineError::NotFound));
    }

    #[test]
    fn recache_wins_once_below_the_threshold() {
        let b = active_bucket();
        set_with(&b, "k", "v", 0, NOW + 100);
        set(&b, "forever", "v");
        let r = |t| MetaGetRequest {
            recache: Some(t),
            ..BUMP
        };
        assert!(
            !mg(&b, "k", r(NOW + 50), NOW).unwrap().won,
            "100 s left, threshold 50"
        );
        assert!(
            !mg(&b, "forever", r(NOW + 500), NOW).unwrap().won,
            "never expires"
        );
        let win = mg(&b, "k", r(NOW + 200), NOW).unwrap();
        assert!(win.won && !win.win_sent_before);
        let late = mg(&b, "k", r(NOW + 200), NOW).unwrap();
        assert!(!late.won && late.win_sent_before);
    }

    #[test]
    fn invalidate_marks_stale_bumps_cas_and_hands_out_one_win() {
        let b = active_bucket();
        let m = set_with(&b, "k", "v", 0, NOW + 100);
        assert_eq!(
            b.invalidate(0, b"k", m.cas + 1, None, NOW),
            Err(EngineError::Exists)
        );
        assert_eq!(
            b.invalidate(0, b"nope", 0, None, NOW),
            Err(EngineError::NotFound)
        );
        let inv = b.invalidate(0, b"k", m.cas, Some(NOW + 30), NOW).unwrap();
        assert!(inv.cas > m.cas && inv.seqno > m.seqno);
        let first = mg(&b, "k", BUMP, NOW).unwrap();
        assert!(first.stale && first.won && !first.win_sent_before);
        assert_eq!(
            (first.hit.cas, first.hit.exptime, &first.hit.value[..]),
            (inv.cas, NOW + 30, &b"v"[..])
        );
        let second = mg(&b, "k", BUMP, NOW).unwrap();
        assert!(second.stale && !second.won && second.win_sent_before);
        // A stale write with an older CAS stays stale and keeps the token.
        let req = StoreRequest {
            mode: StoreMode::Set,
            key: "k".into(),
            value: "new".into(),
            flags: 0,
            exptime: 0,
            cas: m.cas,
        };
        let w = b.store_invalidating(0, &req, NOW).unwrap();
        let after = mg(&b, "k", BUMP, NOW).unwrap();
        assert!(after.stale && after.win_sent_before && !after.won);
        assert_eq!(
            (&after.hit.value[..], after.hit.exptime),
            (&b"new"[..], NOW + 30)
        );
        // A newer CAS is a plain mismatch; a plain set is fresh again.
        let newer = StoreRequest {
            cas: w.cas + 1,
            ..req.clone()
        };
        assert_eq!(
            b.store_invalidating(0, &newer, NOW),
            Err(EngineError::Exists)
        );
        set(&b, "k", "fresh");
        let fresh = mg(&b, "k", BUMP, NOW).unwrap();
        assert!(!fresh.stale && !fresh.won && !fresh.win_sent_before);
        b.assert_accounting();
    }

    #[test]
    fn touch_applies_before_the_recache_check() {
        let b = active_bucket();
        set_with(&b, "k", "v", 0, NOW + 1000);
        let req = MetaGetRequest {
            touch: Some(NOW + 10),
            recache: Some(NOW + 60),
            ..BUMP
        };
        let hit = mg(&b, "k", req, NOW).unwrap();
        assert_eq!(hit.hit.exptime, NOW + 10);
        assert!(hit.won);
    }
}
