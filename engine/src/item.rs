//! [`Item`]: what the hash table holds per key — the value (or nothing when it
//! was ejected to disk), the client's flags and expiry, the CAS, the seqno of
//! the mutation that produced this version, the second of that change (for
//! `flush_all`) and the pager's reference bit. Also the expiry vocabulary the
//! engine speaks: absolute unix seconds, with [`resolve_exptime`] turning a
//! client's memcached exptime into one.

use bytes::Bytes;

/// Seconds in 30 days: memcached reads an exptime above this as an absolute
/// unix time, at or below it as seconds from now (`REALTIME_MAXDELTA` in
/// memcached's `memcached.c`).
pub const RELATIVE_EXPTIME_MAX: i64 = 60 * 60 * 24 * 30;

/// The absolute exptime of an item that is already expired: unix second 1,
/// which every real clock has passed. memcached stores an item sent with a
/// negative (or past absolute) exptime and makes it invisible at once; the
/// engine does the same with this value.
pub const EXPIRED: u32 = 1;

/// Resolves a memcached exptime as a client sent it into the engine's
/// absolute form (unix seconds, `0` = never), the way memcached's
/// `realtime()` does: `0` never expires; negative is already expired
/// ([`EXPIRED`]); `1..=30 days` is relative to `now`; anything larger is an
/// absolute unix time (already expired if not after `now`). Times past
/// 2106 saturate at `u32::MAX`.
///
/// `now` must be a real clock (≥ 2): the engine compares `exptime <= now`.
pub fn resolve_exptime(raw: i64, now: u32) -> u32 {
    match raw {
        0 => 0,
        t if t < 0 => EXPIRED,
        t if t <= RELATIVE_EXPTIME_MAX => {
            // `t` is in 1..=2_592_000 here, so the conversion cannot fail.
            now.saturating_add(u32::try_from(t).unwrap_or(u32::MAX))
        }
        t if t <= i64::from(now) => EXPIRED,
        t => u32::try_from(t).unwrap_or(u32::MAX),
    }
}

/// Metadata of an item read back from disk, for [`Bucket::load_item`]
/// (warmup): everything [`crate::Mutation`] persisted besides key and value.
///
/// [`Bucket::load_item`]: super::Bucket::load_item
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ItemMeta {
    /// Client flags.
    pub flags: u32,
    /// Absolute expiry, unix seconds; 0 = never.
    pub exptime: u32,
    /// CAS of the stored version.
    pub cas: u64,
    /// Seqno of the mutation that stored it.
    pub seqno: u64,
    /// Unix second of that mutation (checked against `flush_all`).
    pub time: u32,
}

/// One key's current version in a vbucket's hash table. Deleted keys are
/// not kept: a deletion goes to disk as a tombstone through the checkpoint
/// queue, and since every live key's metadata stays resident (only values
/// are ejected), a key absent from the table is absent, full stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Item {
    /// The value, or `None` when the pager ejected it (it is on disk: the
    /// item was clean) and a read must fetch it.
    pub(super) value: Option<Bytes>,
    /// Client flags, opaque to the engine.
    pub(super) flags: u32,
    /// Absolute expiry, unix seconds; 0 = never.
    pub(super) exptime: u32,
    /// The CAS of this version; never 0 for a version the engine wrote.
    pub(super) cas: u64,
    /// Seqno of the mutation that produced this version (touch included).
    /// `seqno <= persisted_seqno` is what makes the item clean.
    pub(super) seqno: u64,
    /// Unix second of the last change, for `flush_all` (memcached's
    /// `it->time`).
    pub(super) time: u32,
    /// Set on every access, cleared by the pager's clock hand: an item is
    /// ejected only if the hand finds it unreferenced (second chance).
    pub(super) referenced: bool,
    /// The meta protocol's cache hints (fetched, stale, win sent).
    pub(super) hints: Hints,
    /// Unix second of the last fetch or write (meta `l`, memcached's
    /// `it->time`).
    pub(super) accessed: u32,
}

/// What memcached keeps per item for its meta commands: whether it was
/// fetched since written (`h`), whether it was invalidated (`X`), and
/// whether one client was already told to recache it (`W` once, then
/// `Z`). They live in memory only, like memcached's item flags: a restart
/// or a failover forgets them (a stale item then reads as fresh, and the
/// next `R`/`I` flow starts over), and replicas do not see them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Hints(u8);

impl Hints {
    /// Fetched at least once since it was written.
    pub(super) const FETCHED: Hints = Hints(1);
    /// Invalidated: serve it, flagged `X`, until rewritten.
    pub(super) const STALE: Hints = Hints(2);
    /// A client was handed the win token (`W`); later ones see `Z`.
    pub(super) const WIN_SENT: Hints = Hints(4);
    /// Written by a meta command with a base64 (`b`) key: `mg k` and `me`
    /// name it base64-encoded, whatever form the reader used.
    pub(super) const BINARY_KEY: Hints = Hints(8);

    pub(super) fn has(self, h: Hints) -> bool {
        self.0 & h.0 != 0
    }

    pub(super) fn set(&mut self, h: Hints) {
        self.0 |= h.0;
    }

    pub(super) fn clear(&mut self, h: Hints) {
        self.0 &= !h.0;
    }
}

// === impl Item ===

impl Item {
    /// memcached's rule (`items.c`): expired once `exptime <= current_time`.
    pub(super) fn is_expired(&self, now: u32) -> bool {
        self.exptime != 0 && self.exptime <= now
    }

    /// A fetch: what memcached's `do_item_bump` records (`u` skips it).
    pub(super) fn bump(&mut self, now: u32) {
        self.referenced = true;
        self.hints.set(Hints::FETCHED);
        self.accessed = now;
    }

    /// Bytes of value held in memory (0 when ejected).
    pub(super) fn resident_len(&self) -> usize {
        self.value.as_ref().map_or(0, Bytes::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u32 = 1_800_000_000;

    fn item(exptime: u32) -> Item {
        Item {
            value: Some(Bytes::from_static(b"v")),
            flags: 0,
            exptime,
            cas: 1,
            seqno: 1,
            time: NOW,
            referenced: false,
            hints: Hints::default(),
            accessed: NOW,
        }
    }

    #[test]
    fn resolve_follows_memcached_realtime() {
        assert_eq!(resolve_exptime(0, NOW), 0);
        assert_eq!(resolve_exptime(-1, NOW), EXPIRED);
        assert_eq!(resolve_exptime(i64::MIN, NOW), EXPIRED);
        assert_eq!(resolve_exptime(1, NOW), NOW + 1);
        assert_eq!(resolve_exptime(RELATIVE_EXPTIME_MAX, NOW), NOW + 2_592_000);
        // Just past 30 days is an absolute time, long in the past.
        assert_eq!(resolve_exptime(RELATIVE_EXPTIME_MAX + 1, NOW), EXPIRED);
        assert_eq!(resolve_exptime(i64::from(NOW), NOW), EXPIRED);
        assert_eq!(resolve_exptime(i64::from(NOW) + 5, NOW), NOW + 5);
        // Beyond 2106: saturates instead of wrapping into the past.
        assert_eq!(resolve_exptime(i64::MAX, NOW), u32::MAX);
        assert_eq!(resolve_exptime(10, u32::MAX - 3), u32::MAX);
    }

    #[test]
    fn negative_exptime_is_expired_at_once() {
        let it = item(resolve_exptime(-1, NOW));
        assert!(it.is_expired(NOW));
    }

    #[test]
    fn expiry_boundary_is_inclusive() {
        let it = item(resolve_exptime(10, NOW));
        assert!(!it.is_expired(NOW));
        assert!(!it.is_expired(NOW + 9));
        assert!(it.is_expired(NOW + 10), "memcached: exptime <= now is gone");
        assert!(!item(0).is_expired(u32::MAX));
    }

    #[test]
    fn resident_len_counts_only_values_in_memory() {
        let mut it = item(0);
        assert_eq!(it.resident_len(), 1);
        it.value = None;
        assert_eq!(it.resident_len(), 0);
    }
}
