//! Engine-wide tests: shared helpers for the per-file tests, the memory
//! quota under sustained writes with a simulated flusher, and many threads
//! on one bucket. `model` holds the property test of random operation
//! sequences against a small model of memcached's semantics.

mod model;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use bytes::Bytes;

use super::*;
use crate::mutation::{Mutation, MutationKind};

/// A fixed "now" for tests: 2027-01-15.
pub(super) const NOW: u32 = 1_800_000_000;

// === helpers ===

/// Four vbuckets, none active; `quota` bytes.
pub(super) fn bucket_with_quota(quota: usize) -> Bucket {
    Bucket::try_new(EngineConfig {
        num_vbuckets: 4,
        quota_bytes: quota,
        ..EngineConfig::default()
    })
    .unwrap()
}

/// Four vbuckets, vbucket 0 active, a roomy quota.
pub(super) fn active_bucket() -> Bucket {
    let b = bucket_with_quota(64 << 20);
    b.set_vbucket_state(0, VbucketState::Active).unwrap();
    b
}

pub(super) fn set_full(
    b: &Bucket,
    vb: VbucketId,
    key: &str,
    value: &str,
    flags: u32,
    exptime: u32,
    now: u32,
) -> Mutated {
    let req = StoreRequest {
        mode: StoreMode::Set,
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        flags,
        exptime,
        cas: 0,
    };
    b.store(vb, &req, now).unwrap()
}

pub(super) fn set(b: &Bucket, key: &str, value: &str) -> Mutated {
    set_full(b, 0, key, value, 0, 0, NOW)
}

pub(super) fn set_with(b: &Bucket, key: &str, value: &str, flags: u32, exptime: u32) -> Mutated {
    set_full(b, 0, key, value, flags, exptime, NOW)
}

pub(super) fn set_at(b: &Bucket, key: &str, value: &str, now: u32) -> Mutated {
    set_full(b, 0, key, value, 0, 0, now)
}

pub(super) fn set_in(b: &Bucket, vb: VbucketId, key: &str, value: &str) -> Mutated {
    set_full(b, vb, key, value, 0, 0, NOW)
}

/// The value of `key` in vbucket 0 at `NOW`, if resident.
pub(super) fn get_value(b: &Bucket, key: &str) -> Option<String> {
    let hit = b.get(0, key.as_bytes(), NOW).ok()?.hit()?;
    Some(String::from_utf8_lossy(&hit.value).into_owned())
}

impl Bucket {
    /// Recomputes every running total from the tables and queues.
    pub(super) fn assert_accounting(&self) {
        let (mut charged, mut items, mut queued) = (0, 0, 0);
        for vbucket in self.vbuckets.iter() {
            let inner = vbucket.lock();
            charged += inner.charged();
            items += inner.table.len();
            queued += inner.queued();
            assert_eq!(
                inner.drained_seqno + inner.queued() as u64,
                inner.high_seqno
            );
            assert!(inner.persisted_seqno <= inner.drained_seqno);
        }
        assert_eq!(self.mem.used(), charged, "mem_used");
        assert_eq!(self.curr_items(), items, "curr_items");
        assert_eq!(self.queue_len(), queued, "ep_queue_size");
        assert!(self.mem.used() <= self.mem.quota(), "over quota");
    }
}

/// A simulated store: the latest record per (vbucket, key).
#[derive(Debug, Default)]
pub(super) struct Disk(pub(super) HashMap<(VbucketId, Bytes), (u64, Bytes)>);

impl Disk {
    pub(super) fn apply(&mut self, mutations: &[Mutation]) {
        for m in mutations {
            let key = (m.vbucket, m.key.clone());
            match &m.kind {
                MutationKind::Set { value, .. } => {
                    self.0.insert(key, (m.seqno, value.clone()));
                }
                MutationKind::Delete => {
                    self.0.remove(&key);
                }
            }
        }
    }

    /// Drains everything into the disk and reports it persisted.
    pub(super) fn flush(&mut self, b: &Bucket) -> usize {
        let batch = b.drain(usize::MAX);
        self.apply(&batch);
        for m in &batch {
            b.mark_persisted(m.vbucket, m.seqno);
        }
        batch.len()
    }

    pub(super) fn get(&self, vb: VbucketId, key: &[u8]) -> Option<(u64, Bytes)> {
        self.0.get(&(vb, Bytes::copy_from_slice(key))).cloned()
    }
}

// === quota ===

#[test]
fn writing_four_times_the_quota_stays_within_it() {
    const QUOTA: usize = 4 << 20;
    const VALUE: usize = 4096;
    for use_pager in [false, true] {
        let b = bucket_with_quota(QUOTA);
        for vb in 0..4 {
            b.set_vbucket_state(vb, VbucketState::Active).unwrap();
        }
        let mut disk = Disk::default();
        let total = 4 * QUOTA / VALUE;
        for i in 0..total {
            let vb = (i % 4) as VbucketId;
            let value = format!("{i:0>width$}", width = VALUE);
            set_full(&b, vb, &format!("key{i}"), &value, 0, 0, NOW);
            assert!(
                b.mem_used() <= QUOTA,
                "write {i}: {} > {QUOTA}",
                b.mem_used()
            );
            if i % 64 == 63 {
                disk.flush(&b);
                if use_pager && b.needs_paging() {
                    b.run_pager(NOW);
                }
            }
        }
        b.assert_accounting();
        let mut ejected = 0;
        for i in 0..total {
            let vb = (i % 4) as VbucketId;
            let key = format!("key{i}");
            let want = format!("{i:0>width$}", width = VALUE);
            match b.get(vb, key.as_bytes(), NOW).unwrap() {
                Lookup::Hit(hit) => assert_eq!(hit.value, want),
                Lookup::Ejected { seqno, .. } => {
                    ejected += 1;
                    let (disk_seqno, value) = disk.get(vb, key.as_bytes()).unwrap();
                    assert_eq!((disk_seqno, &value[..]), (seqno, want.as_bytes()));
                }
            }
        }
        assert!(
            ejected >= total / 2,
            "most values live on disk only: {ejected}"
        );
        assert_eq!(
            b.stats().iter().find(|s| s.0 == "ep_tmp_oom_errors"),
            Some(&("ep_tmp_oom_errors", 0))
        );
    }
}

#[test]
fn out_of_memory_when_nothing_is_clean() {
    let b = bucket_with_quota(256 << 10);
    b.set_vbucket_state(0, VbucketState::Active).unwrap();
    let value = "x".repeat(1000);
    let mut stored = 0;
    let err = loop {
        let req = StoreRequest {
            mode: StoreMode::Set,
            key: Bytes::from(format!("k{stored}")),
            value: Bytes::copy_from_slice(value.as_bytes()),
            flags: 0,
            exptime: 0,
            cas: 0,
        };
        match b.store(0, &req, NOW) {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 1000, "the quota never bit");
    };
    assert_eq!(err, EngineError::OutOfMemory);
    assert!(b.mem_used() <= 256 << 10);
    assert!(b.stats().contains(&("ep_tmp_oom_errors", 1)));
    // A full bucket can still delete.
    b.delete(0, b"k0", 0, NOW).unwrap();
    b.assert_accounting();
    // Once persisted, old values can be ejected (inline, by the writes
    // themselves) and writes go through again — as many as the room the
    // ejected values leave for new, dirty items.
    Disk::default().flush(&b);
    for i in 0..stored / 2 {
        set(&b, &format!("again{i}"), &value);
    }
    assert!(b.stats().contains(&("ep_tmp_oom_errors", 1)));
    assert!(matches!(b.get(0, b"k1", NOW), Ok(Lookup::Ejected { .. })));
    b.assert_accounting();
}

// === threads ===

#[test]
fn many_threads_on_one_bucket() {
    const THREADS: usize = 8;
    const OPS: usize = 3_000;
    let b = Bucket::try_new(EngineConfig {
        num_vbuckets: 16,
        quota_bytes: 1 << 20,
        ..EngineConfig::default()
    })
    .unwrap();
    for vb in 0..16 {
        b.set_vbucket_state(vb, VbucketState::Active).unwrap();
    }
    let disk = Mutex::new(Disk::default());
    let drained: Mutex<Vec<Mutation>> = Mutex::new(Vec::new());
    let running = std::sync::atomic::AtomicUsize::new(THREADS);
    let acked: Vec<Vec<(VbucketId, u64)>> = std::thread::scope(|s| {
        // The flusher: drain, write, report.
        s.spawn(|| loop {
            let done = running.load(Ordering::Acquire) == 0;
            let batch = b.drain(256);
            disk.lock().unwrap().apply(&batch);
            for m in &batch {
                b.mark_persisted(m.vbucket, m.seqno);
            }
            drained.lock().unwrap().extend(batch);
            if done && b.queue_len() == 0 {
                break;
            }
            std::thread::yield_now();
        });
        // The pager.
        s.spawn(|| {
            while running.load(Ordering::Acquire) != 0 {
                if b.needs_paging() {
                    b.run_pager(NOW);
                }
                std::thread::yield_now();
            }
        });
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (b, disk, running) = (&b, &disk, &running);
                s.spawn(move || {
                    let mut acked = Vec::new();
                    let mut rng = t as u64 * 7919 + 1;
                    for _ in 0..OPS {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let k = (rng % 64) as usize;
                        let vb = (k % 16) as VbucketId;
                        let key = Bytes::from(format!("key{k}"));
                        for _attempt in 0..10 {
                            let result = match (rng >> 8) % 6 {
                                0 => b.get(vb, &key, NOW).map(|_| None),
                                1 => b.delete(vb, &key, 0, NOW).map(|m| Some(m.seqno)),
                                2 => b
                                    .arith(
                                        vb,
                                        &ArithRequest {
                                            key: key.clone(),
                                            op: ArithOp::Incr,
                                            delta: 1,
                                            create: Some(ArithCreate {
                                                initial: 0,
                                                exptime: 0,
                                            }),
                                            cas: 0,
                                        },
                                        NOW,
                                    )
                                    .map(|o| Some(o.seqno)),
                                3 => b
                                    .store(
                                        vb,
                                        &StoreRequest {
                                            mode: StoreMode::Append,
                                            key: key.clone(),
                                            value: Bytes::from_static(b"+"),
                                            flags: 0,
                                            exptime: 0,
                                            cas: 0,
                                        },
                                        NOW,
                                    )
                                    .map(|m| Some(m.seqno)),
                                _ => b
                                    .store(
                                        vb,
                                        &StoreRequest {
                                            mode: StoreMode::Set,
                                            key: key.clone(),
                                            value: Bytes::from(vec![b'7'; (rng % 2000) as usize]),
                                            flags: 0,
                                            exptime: 0,
                                            cas: 0,
                                        },
                                        NOW,
                                    )
                                    .map(|m| Some(m.seqno)),
                            };
                            match result {
                                Ok(Some(seqno)) => acked.push((vb, seqno)),
                                Err(EngineError::ValueEjected) => {
                                    let record = disk.lock().unwrap().get(vb, &key);
                                    if let Some((seqno, value)) = record {
                                        b.restore_value(vb, &key, seqno, value);
                                    }
                                    continue;
                                }
                                Ok(None) | Err(_) => {}
                            }
                            break;
                        }
                    }
                    running.fetch_sub(1, Ordering::Release);
                    acked
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    b.assert_accounting();
    assert_eq!(b.queue_len(), 0);
    let drained = drained.into_inner().unwrap();
    // Every acknowledged mutation was drained exactly once, in seqno order.
    let mut per_vb: HashMap<VbucketId, Vec<u64>> = HashMap::new();
    for m in &drained {
        per_vb.entry(m.vbucket).or_default().push(m.seqno);
    }
    for (vb, seqnos) in &per_vb {
        let want: Vec<u64> = (1..=b.high_seqno(*vb).unwrap()).collect();
        assert_eq!(seqnos, &want, "vbucket {vb}");
    }
    let mut acked: Vec<(VbucketId, u64)> = acked.into_iter().flatten().collect();
    let mut got: Vec<(VbucketId, u64)> = drained.iter().map(|m| (m.vbucket, m.seqno)).collect();
    acked.sort_unstable();
    got.sort_unstable();
    assert_eq!(acked, got);
    // Memory and disk agree with the last mutation of every key.
    let disk = disk.into_inner().unwrap();
    for k in 0..64 {
        let vb = (k % 16) as VbucketId;
        let key = format!("key{k}");
        let on_disk = disk.get(vb, key.as_bytes());
        match b.get(vb, key.as_bytes(), NOW) {
            Err(EngineError::NotFound) => assert_eq!(on_disk, None),
            Ok(Lookup::Hit(hit)) => assert_eq!(on_disk, Some((hit.seqno, hit.value))),
            Ok(Lookup::Ejected { seqno, .. }) => assert_eq!(on_disk.map(|d| d.0), Some(seqno)),
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn writes_are_refused_only_while_the_disk_fails_with_a_full_queue() {
    let b = active_bucket();
    for i in 0..MAX_QUEUE_WHILE_DISK_FAILS {
        set(&b, &format!("k{i}"), "v");
    }
    b.set_disk_failing(true);
    // At the bound, one more write is still taken.
    set(&b, "at-the-bound", "v");
    let req = StoreRequest {
        mode: StoreMode::Set,
        key: Bytes::from_static(b"past"),
        value: Bytes::from_static(b"v"),
        flags: 0,
        exptime: 0,
        cas: 0,
    };
    assert_eq!(b.store(0, &req, NOW), Err(EngineError::TempFail));
    assert_eq!(
        b.delete(0, b"k1", 0, NOW).map(|_| ()),
        Err(EngineError::TempFail)
    );
    assert!(b.get(0, b"k1", NOW).is_ok(), "reads go on");
    assert!(b
        .stats()
        .iter()
        .any(|(name, v)| *name == "ep_disk_queue_refusals" && *v == 2));
    b.set_disk_failing(false);
    assert!(b.store(0, &req, NOW).is_ok());
}
