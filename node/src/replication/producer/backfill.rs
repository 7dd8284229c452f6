//! Backfills: what a stream must send from disk because the checkpoint
//! queue no longer holds it. A vbucket is scanned in key order and has no
//! seqno index, so [`scan_chunk`] collects, in one pass, the records with
//! the lowest seqnos of the range up to a byte budget ([`ChunkCollector`]);
//! the stream sends them sorted by seqno (the consumer applies in seqno
//! order) and scans again from where the chunk ended. A backfill's memory
//! is one chunk whatever the vbucket's size, for one more scan per chunk.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, VecDeque};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

use shoal_engine::mutation::VbucketId;
use shoal_persist::BucketStore;

/// One chunk holds the lowest-seqno records up to this many bytes.
pub(super) const BACKFILL_CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// Fixed per-record accounting (struct, heap slot, allocations), so a chunk
/// of empty values is bounded too.
const RECORD_OVERHEAD: usize = 64;

/// One record read from disk, owning its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct BackfillRecord {
    pub(super) seqno: u64,
    pub(super) key: Bytes,
    pub(super) cas: u64,
    /// (value, flags, exptime); `None` for a tombstone.
    pub(super) value: Option<(Bytes, u32, u32)>,
}

impl BackfillRecord {
    /// What the record counts against the chunk budget.
    fn cost(&self) -> usize {
        let value = self.value.as_ref().map_or(0, |(v, _, _)| v.len());
        RECORD_OVERHEAD
            .saturating_add(self.key.len())
            .saturating_add(value)
    }
}

/// A record ordered by seqno alone (seqnos are unique in a vbucket), for
/// the collector's max-heap.
#[derive(Debug)]
struct BySeqno(BackfillRecord);

impl PartialEq for BySeqno {
    fn eq(&self, other: &Self) -> bool {
        self.0.seqno == other.0.seqno
    }
}

impl Eq for BySeqno {}

impl PartialOrd for BySeqno {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for BySeqno {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        self.0.seqno.cmp(&other.0.seqno)
    }
}

/// A backfill chunk: every record on disk with a seqno in (where the scan
/// started, `end`], sorted by seqno.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Chunk {
    pub(super) end: u64,
    pub(super) records: VecDeque<BackfillRecord>,
}

/// Builds one chunk from records offered in any order: keeps the lowest
/// seqnos up to a byte budget. Whenever the budget is exceeded the highest
/// seqno is evicted and becomes the `cut`, and records at or above the cut
/// are refused from then on. So the chunk holds exactly the records below
/// the final cut — none of those was evicted (an eviction lowers the cut to
/// at most its seqno) or refused — and the next chunk starts at the cut.
/// At least one record is kept, so one larger than the budget still makes
/// progress.
#[derive(Debug)]
pub(super) struct ChunkCollector {
    until: u64,
    budget: usize,
    bytes: usize,
    heap: BinaryHeap<BySeqno>,
    cut: Option<u64>,
}

impl ChunkCollector {
    /// A collector for records up to `until`, keeping about `budget` bytes.
    pub(super) fn new(until: u64, budget: usize) -> ChunkCollector {
        ChunkCollector {
            until,
            budget,
            bytes: 0,
            heap: BinaryHeap::new(),
            cut: None,
        }
    }

    /// Whether a record with this seqno would be kept now (so the caller
    /// copies its bytes only then).
    pub(super) fn wants(&self, seqno: u64) -> bool {
        seqno <= self.until && self.cut.is_none_or(|cut| seqno < cut)
    }

    /// Offers one record.
    pub(super) fn offer(&mut self, record: BackfillRecord) {
        if !self.wants(record.seqno) {
            return;
        }
        self.bytes = self.bytes.saturating_add(record.cost());
        self.heap.push(BySeqno(record));
        while self.bytes > self.budget && self.heap.len() > 1 {
            if let Some(BySeqno(evicted)) = self.heap.pop() {
                self.bytes = self.bytes.saturating_sub(evicted.cost());
                self.cut = Some(self.cut.map_or(evicted.seqno, |c| c.min(evicted.seqno)));
            }
        }
    }

    /// The chunk: its records in seqno order, ending just below the cut
    /// (or at `until` when everything fitted).
    pub(super) fn finish(self) -> Chunk {
        let end = self.cut.map_or(self.until, |cut| cut.saturating_sub(1));
        let records = self
            .heap
            .into_sorted_vec()
            .into_iter()
            .map(|BySeqno(r)| r)
            .collect();
        Chunk { end, records }
    }
}

/// Reads the next chunk of `vb`'s backfill — records with seqnos in
/// (`after`, `until`] — from disk. Blocking: run it on the blocking pool.
/// Gives up early once `cancel` is set (the connection is gone and nobody
/// will read the chunk).
pub(super) fn scan_chunk(
    store: &BucketStore,
    vb: VbucketId,
    after: u64,
    until: u64,
    cancel: &AtomicBool,
) -> Result<Chunk, String> {
    let mut collector = ChunkCollector::new(until, BACKFILL_CHUNK_BYTES);
    let mut cancelled = false;
    store
        .scan(vb, after, |key, item| {
            if cancel.load(Ordering::Relaxed) {
                cancelled = true;
                return ControlFlow::Break(());
            }
            let h = item.header;
            if collector.wants(h.seqno) {
                // Kept until sent: own the bytes rather than pin the
                // store's blocks (see `StoredItem::detach`).
                let value = (!item.is_tombstone())
                    .then(|| (Bytes::copy_from_slice(&item.value), h.flags, h.exptime));
                collector.offer(BackfillRecord {
                    seqno: h.seqno,
                    key: Bytes::copy_from_slice(&key),
                    cas: h.cas,
                    value,
                });
            }
            ControlFlow::Continue(())
        })
        .map_err(|e| e.to_string())?;
    if cancelled {
        // A partial chunk must never pass for the whole range.
        return Err("cancelled".to_owned());
    }
    Ok(collector.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seqno: u64, len: usize) -> BackfillRecord {
        BackfillRecord {
            seqno,
            key: Bytes::from(format!("k{seqno}")),
            cas: seqno * 10,
            value: Some((Bytes::from(vec![b'v'; len]), 0, 0)),
        }
    }

    fn seqnos(chunk: &Chunk) -> Vec<u64> {
        chunk.records.iter().map(|r| r.seqno).collect()
    }

    #[test]
    fn a_chunk_that_fits_is_the_whole_range_in_seqno_order() {
        let mut c = ChunkCollector::new(10, 1 << 20);
        for s in [7, 3, 12, 9, 1] {
            c.offer(record(s, 10));
        }
        let chunk = c.finish();
        assert_eq!(chunk.end, 10);
        assert_eq!(seqnos(&chunk), [1, 3, 7, 9], "12 is past the backfill");
    }

    #[test]
    fn an_over_budget_chunk_keeps_the_lowest_seqnos_and_ends_below_the_cut() {
        // Four records fit in the budget.
        let cost = record(10, 100).cost();
        let mut c = ChunkCollector::new(1_000, cost * 4);
        // Key order is not seqno order.
        for s in [50, 20, 90, 10, 70, 30, 60, 40, 80] {
            c.offer(record(s, 100));
        }
        let chunk = c.finish();
        assert_eq!(seqnos(&chunk), [10, 20, 30, 40]);
        assert_eq!(chunk.end, 49, "everything below the cut is in the chunk");
        // The next scan, after 49, carries on.
        let mut next = ChunkCollector::new(1_000, cost * 4);
        for s in [50, 90, 70, 60, 80] {
            next.offer(record(s, 100));
        }
        let next = next.finish();
        assert_eq!(seqnos(&next), [50, 60, 70, 80]);
        assert_eq!(next.end, 89);
    }

    #[test]
    fn a_record_larger_than_the_budget_still_makes_progress() {
        let mut c = ChunkCollector::new(100, 10);
        c.offer(record(5, 1_000));
        assert!(c.wants(3) && c.wants(6), "nothing cut yet");
        c.offer(record(8, 1_000));
        assert!(!c.wants(8) && c.wants(6), "8 was cut: only below it");
        c.offer(record(2, 1_000));
        assert!(!c.wants(5), "a refused seqno is never copied");
        let chunk = c.finish();
        assert_eq!(seqnos(&chunk), [2]);
        assert_eq!(chunk.end, 4);
    }

    #[test]
    fn tombstones_and_empty_ranges() {
        let chunk = ChunkCollector::new(40, 1 << 20).finish();
        assert_eq!((chunk.end, chunk.records.len()), (40, 0));
        let mut c = ChunkCollector::new(40, 1 << 20);
        c.offer(BackfillRecord {
            seqno: 3,
            key: Bytes::from_static(b"gone"),
            cas: 1,
            value: None,
        });
        let chunk = c.finish();
        assert_eq!(chunk.records.front().map(|r| r.value.clone()), Some(None));
    }

    #[test]
    fn a_scan_reads_the_range_from_disk_tombstones_included() {
        use shoal_engine::mutation::{Mutation, MutationKind};
        let dir = shoal_persist::testdir::TestDir::new("backfill-scan");
        let store = shoal_persist::Store::open(
            dir.path(),
            shoal_persist::StoreOptions::for_quota(16 << 20),
        )
        .unwrap();
        let bucket = store.bucket("b").unwrap();
        let m = |seqno: u64, key: &'static str, kind: MutationKind| Mutation {
            vbucket: 3,
            seqno,
            key: Bytes::from_static(key.as_bytes()),
            cas: 100 + seqno,
            time: 0,
            kind,
        };
        let set = |v: &'static str| MutationKind::Set {
            value: Bytes::from_static(v.as_bytes()),
            flags: 9,
            exptime: 77,
        };
        bucket
            .write_batch(&[
                m(1, "b", set("one")),
                m(2, "a", set("two")),
                m(3, "b", MutationKind::Delete),
                m(4, "c", set("four")),
            ])
            .unwrap();
        let cancel = AtomicBool::new(false);
        let chunk = scan_chunk(&bucket, 3, 1, 3, &cancel).unwrap();
        assert_eq!(chunk.end, 3);
        let got: Vec<_> = chunk
            .records
            .iter()
            .map(|r| (r.seqno, r.key.clone(), r.cas, r.value.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (2, Bytes::from("a"), 102, Some((Bytes::from("two"), 9, 77))),
                (3, Bytes::from("b"), 103, None),
            ]
        );
        assert!(scan_chunk(&bucket, 4, 0, 10, &cancel)
            .unwrap()
            .records
            .is_empty());
        cancel.store(true, Ordering::Relaxed);
        assert!(
            scan_chunk(&bucket, 3, 0, 10, &cancel).is_err(),
            "never a partial chunk"
        );
    }
}
