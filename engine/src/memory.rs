//! [`Memory`]: the bucket's RAM quota and what counts against it. The
//! engine charges every resident key and value plus a fixed per-item
//! overhead, and every queued mutation's key plus a fixed per-entry overhead
//! (plus, when a queued mutation is the last holder of an overwritten value,
//! that value — see `VbInner::retire_value`). Each operation computes its
//! whole charge and release under its vbucket lock and applies them with one
//! atomic update that refuses to pass the quota, so the accounted total
//! never exceeds the quota, even with many writers racing.
//!
//! What the figure assumes: values own their allocation. A `Bytes` sliced
//! out of a 64 KiB socket read buffer would keep the whole buffer alive for
//! as long as the item lives while being charged for its own length only, so
//! the server copies a value once (into an exactly sized allocation) before
//! it calls the engine.

use std::mem::size_of;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use super::item::Item;
use super::vbucket::Queued;

/// What a `Bytes` built from a `Vec` costs beyond its bytes once it is
/// shared (the engine always shares keys and values with queued
/// mutations): malloc's header and rounding (~16 bytes on glibc) plus the
/// 24-byte `Shared` header `bytes` allocates on the first clone, itself a
/// 32-byte malloc chunk.
const SHARED_ALLOCATION_OVERHEAD: usize = 16 + 32;

/// Bytes charged per resident item on top of its key and value: the hash
/// table entry (`(Bytes, Item)` plus one control byte) scaled by 3/2 because
/// hashbrown runs between 7/16 and 7/8 full (about 2/3 on average), plus the
/// allocation overhead of the key and of the value. With today's layouts
/// that is 253 bytes — more than memcached's ~50-byte item header, because
/// a `Bytes` handle alone is 32 bytes; the tests pin the layout assumptions.
/// (The meta protocol's per-item hints and last-access second cost 8 of
/// the `Item`'s 72 bytes, 12 of the 253.)
pub const ITEM_OVERHEAD: usize =
    (size_of::<(Bytes, Item)>() + 1) * 3 / 2 + 2 * SHARED_ALLOCATION_OVERHEAD;

/// Bytes charged per queued mutation on top of its key (the key's bytes are
/// charged again although shared with the item: keys are small, and a
/// deleted key's allocation lives on in the queue). The `VecDeque` slot
/// scaled by 3/2 for the deque's growth slack.
pub const MUTATION_OVERHEAD: usize = size_of::<Queued>() * 3 / 2;

// A deletion (or expiry) releases an item and queues a tombstone; it must
// never need memory, or a full bucket could not even delete.
const _: () = assert!(ITEM_OVERHEAD >= MUTATION_OVERHEAD);

/// The charge of a resident item.
pub(super) fn item_charge(key_len: usize, resident_len: usize) -> usize {
    key_len
        .saturating_add(resident_len)
        .saturating_add(ITEM_OVERHEAD)
}

/// The base charge of a queued mutation (without any value it inherits).
pub(super) fn mutation_charge(key_len: usize) -> usize {
    key_len.saturating_add(MUTATION_OVERHEAD)
}

/// Returned when a charge would take the bucket over its quota; carries how
/// many bytes were missing, for inline ejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct NeedMemory(pub(super) usize);

/// The quota and the running total (`mem_used`).
#[derive(Debug)]
pub(super) struct Memory {
    /// Bytes charged right now.
    used: AtomicUsize,
    /// `ep_max_data_size`.
    quota: usize,
    /// Above this the pager should run (`ep_mem_high_wat`).
    high: usize,
    /// The pager ejects down to this (`ep_mem_low_wat`).
    low: usize,
}

// === impl Memory ===

impl Memory {
    /// A quota with its watermarks as fractions of it (validated by
    /// `EngineConfig::validate`).
    pub(super) fn new(quota: usize, high: f64, low: f64) -> Memory {
        // Float-to-int `as` saturates and maps NaN to 0; the config was
        // validated, so these are in 0..=quota.
        let frac = |f: f64| ((quota as f64) * f) as usize;
        Memory {
            used: AtomicUsize::new(0),
            quota,
            high: frac(high).min(quota),
            low: frac(low).min(quota),
        }
    }

    pub(super) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub(super) fn quota(&self) -> usize {
        self.quota
    }

    pub(super) fn high(&self) -> usize {
        self.high
    }

    pub(super) fn low(&self) -> usize {
        self.low
    }

    /// Charges `charge` and releases `release` in one atomic step. When the
    /// net is an increase that would pass the quota nothing changes and the
    /// shortfall comes back; a net decrease always succeeds.
    pub(super) fn apply(&self, charge: usize, release: usize) -> Result<(), NeedMemory> {
        self.apply_within(charge, release, self.quota)
    }

    /// Like [`Memory::apply`], but a net increase may only bring the total
    /// up to `limit` (warmup loads values only below the high watermark).
    pub(super) fn apply_within(
        &self,
        charge: usize,
        release: usize,
        limit: usize,
    ) -> Result<(), NeedMemory> {
        if charge <= release {
            self.release(release - charge);
            return Ok(());
        }
        let n = charge - release;
        let limit = limit.min(self.quota);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= limit)
            })
            .map(drop)
            .map_err(|used| NeedMemory(used.saturating_add(n).saturating_sub(limit)))
    }

    /// Returns `n` bytes to the quota.
    pub(super) fn release(&self, n: usize) {
        // Saturating so that an accounting bug shows up as a wrong figure in
        // the tests (which recompute it) rather than a wrapped one.
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(n))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_assumptions_hold() {
        // If these move, re-derive the overhead constants' docs.
        assert_eq!(size_of::<Bytes>(), 32);
        assert!(size_of::<Item>() <= 72, "Item is {}", size_of::<Item>());
        assert_eq!(ITEM_OVERHEAD, 253);
        assert!(ITEM_OVERHEAD >= size_of::<(Bytes, Item)>());
        assert!(MUTATION_OVERHEAD >= size_of::<Queued>());
        assert_eq!(item_charge(3, 10), 13 + ITEM_OVERHEAD);
        assert_eq!(mutation_charge(3), 3 + MUTATION_OVERHEAD);
    }

    #[test]
    fn apply_never_passes_the_quota() {
        let m = Memory::new(1000, 0.85, 0.75);
        assert_eq!((m.high(), m.low(), m.quota()), (850, 750, 1000));
        assert_eq!(m.apply(600, 0), Ok(()));
        assert_eq!(m.apply(500, 0), Err(NeedMemory(100)));
        assert_eq!(m.used(), 600, "a refused charge changes nothing");
        assert_eq!(m.apply(500, 100), Ok(()));
        assert_eq!(m.used(), 1000);
        assert_eq!(m.apply(1, 0), Err(NeedMemory(1)));
        // A net release always succeeds, even at the quota.
        assert_eq!(m.apply(10, 50), Ok(()));
        assert_eq!(m.used(), 960);
        assert!(m.apply(usize::MAX, 0).is_err(), "no overflow");
        m.release(usize::MAX);
        assert_eq!(m.used(), 0);
    }

    #[test]
    fn reserve_within_a_lower_limit() {
        let m = Memory::new(1000, 0.85, 0.75);
        assert_eq!(m.apply_within(800, 0, m.high()), Ok(()));
        assert_eq!(m.apply_within(100, 0, m.high()), Err(NeedMemory(50)));
        assert_eq!(m.apply_within(100, 60, m.high()), Ok(()));
        assert_eq!(m.used(), 840);
        m.release(40);
        assert_eq!(m.apply(100, 0), Ok(()), "the quota itself still has room");
    }

    #[test]
    fn concurrent_charges_stay_within_quota() {
        let m = Memory::new(10_000, 0.85, 0.75);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        if m.apply(7, 0).is_ok() {
                            assert!(m.used() <= 10_000);
                            m.release(7);
                        }
                    }
                });
            }
        });
        assert_eq!(m.used(), 0);
    }
}
