//! [`Stats`]: the engine's counters, as relaxed atomics bumped on the hot
//! path, under the names memcached and Couchbase use (`get_hits`,
//! `cas_badval`, `ep_num_value_ejects`, `ep_queue_size`…) so existing
//! dashboards and scripts read them. Gauges that live elsewhere (memory,
//! queue length, item count) are added when [`Bucket::stats`] is called.
//!
//! [`Bucket::stats`]: super::Bucket::stats

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonic counter.
#[derive(Debug, Default)]
pub(super) struct Counter(AtomicU64);

impl Counter {
    pub(super) fn incr(&self) {
        self.add(1);
    }

    pub(super) fn add(&self, n: u64) {
        // Relaxed: counters order nothing; a reader wants a recent value.
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Declares `Stats` with one `Counter` per name and the list of
/// `(name, value)` pairs, so a name can never be added to one and not the
/// other.
macro_rules! counters {
    ($($(#[doc = $doc:literal])* $field:ident,)*) => {
        /// The engine's counters.
        #[derive(Debug, Default)]
        pub(super) struct Stats {
            $($(#[doc = $doc])* pub(super) $field: Counter,)*
        }

        impl Stats {
            /// Every counter with its stat name.
            pub(super) fn counters(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field.get()),)*]
            }
        }
    };
}

counters! {
    /// Lookups by get/gets/gat (one per key).
    cmd_get,
    /// Lookups that found the key (ejected values included).
    get_hits,
    /// Lookups that did not.
    get_misses,
    /// Misses because the item had expired (memcached 1.6).
    get_expired,
    /// Misses because the item was flushed (memcached 1.6).
    get_flushed,
    /// Storage commands (set/add/replace/append/prepend/cas), whatever
    /// their outcome, as memcached counts them.
    cmd_set,
    /// Items stored since start.
    total_items,
    /// touch and gat commands.
    cmd_touch,
    /// touch/gat that found the key.
    touch_hits,
    /// touch/gat that did not.
    touch_misses,
    /// incr that found a number.
    incr_hits,
    /// incr on a missing key (without auto-create).
    incr_misses,
    /// decr that found a number.
    decr_hits,
    /// decr on a missing key (without auto-create).
    decr_misses,
    /// Deletions that removed an item.
    delete_hits,
    /// Deletions of missing keys.
    delete_misses,
    /// CAS stores that matched.
    cas_hits,
    /// CAS stores against a different CAS.
    cas_badval,
    /// CAS stores on a missing key.
    cas_misses,
    /// flush_all commands.
    cmd_flush,
    /// Values the pager ejected (Couchbase).
    ep_num_value_ejects,
    /// Whole items evicted to make room (memcached's LRU evictions; only
    /// ephemeral buckets evict, the others eject values).
    evictions,
    /// Values fetched back from disk (Couchbase; counted by restore_value).
    ep_bg_fetched,
    /// Expired or flushed items deleted when a request found them.
    ep_expired_access,
    /// Expired or flushed items deleted by the background purge.
    ep_expired_pager,
    /// Writes refused because the quota was reached and nothing clean
    /// could be ejected (Couchbase's temporary OOM).
    ep_tmp_oom_errors,
    /// Requests answered NOT_MY_VBUCKET (Couchbase).
    ep_num_not_my_vbuckets,
    /// Writes refused with a temporary failure because the disk is failing
    /// and the disk queue is past its bound.
    ep_disk_queue_refusals,
    /// Mutations ever queued for persistence (Couchbase).
    ep_total_enqueued,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn counters_count() {
        let s = Stats::default();
        s.get_hits.incr();
        s.get_hits.add(2);
        assert!(s.counters().contains(&("get_hits", 3)));
        assert!(s.counters().contains(&("get_misses", 0)));
    }

    #[test]
    fn names_are_unique() {
        let s = Stats::default();
        let names = s.counters();
        let unique: HashSet<_> = names.iter().map(|(n, _)| n).collect();
        assert_eq!(unique.len(), names.len());
    }
}
