//! Tests of [`BucketStore`](super::BucketStore): round trips through a
//! real store on disk, reopen, corruption, warmup and scans.

use super::*;
use crate::record::{RecordHeader, RecordKind};
use crate::testdir::TestDir;
use crate::{Store, StoreOptions};
use shoal_engine::mutation::MutationKind;
use std::time::Instant;

pub(crate) fn set(vb: VbucketId, seqno: u64, key: &str, value: &[u8]) -> Mutation {
    Mutation {
        vbucket: vb,
        seqno,
        key: Bytes::copy_from_slice(key.as_bytes()),
        cas: seqno * 1000 + u64::from(vb),
        time: 1_700_000_000,
        kind: MutationKind::Set {
            value: Bytes::copy_from_slice(value),
            flags: 7,
            exptime: 0,
        },
    }
}

fn del(vb: VbucketId, seqno: u64, key: &str) -> Mutation {
    Mutation {
        kind: MutationKind::Delete,
        ..set(vb, seqno, key, b"")
    }
}

fn open(dir: &TestDir) -> Store {
    Store::open(dir.path(), StoreOptions::default()).unwrap()
}

/// (vbucket, key) of every live item, via warmup, with the stats.
fn live_keys(b: &BucketStore) -> (Vec<(VbucketId, Bytes)>, WarmupStats) {
    let mut keys = Vec::new();
    let stats = b
        .warmup(|vb, k, _| {
            keys.push((vb, k));
            ControlFlow::Continue(())
        })
        .unwrap();
    (keys, stats)
}

#[test]
fn reopen_finds_every_item() {
    let dir = TestDir::new("reopen");
    let big = vec![0xabu8; 64 * 1024]; // past the blob-file threshold
    let mut written = Vec::new();
    {
        let store = open(&dir);
        let b = store.bucket("default").unwrap();
        for round in 0..5u64 {
            let batch: Vec<Mutation> = (0..100u64)
                .map(|i| {
                    let vb = (i % 8) as VbucketId;
                    let value: &[u8] = if i == 7 { &big } else { b"small value" };
                    set(vb, round * 100 + i + 1, &format!("key-{round}-{i}"), value)
                })
                .collect();
            b.write_batch(&batch).unwrap();
            written.extend(batch);
        }
    }
    let store = open(&dir);
    assert_eq!(store.bucket_names(), vec!["default".to_string()]);
    let b = store.bucket("default").unwrap();
    for m in &written {
        let got = b
            .get(m.vbucket, &m.key)
            .unwrap()
            .expect("item survives reopen");
        assert_eq!(got.header, RecordHeader::from_mutation(m));
        let MutationKind::Set { value, .. } = &m.kind else {
            unreachable!("only sets were written")
        };
        assert_eq!(&got.value, value);
    }
    let (keys, stats) = live_keys(&b);
    assert_eq!(keys.len(), written.len());
    assert_eq!(stats.items, written.len() as u64);
    assert!(b.get(0, b"never-written").unwrap().is_none());
    assert!(b.item_count() >= written.len());
}

#[test]
fn tombstones_hide_older_values() {
    let dir = TestDir::new("tombstones");
    {
        let store = open(&dir);
        let b = store.bucket("default").unwrap();
        b.write_batch(&[set(3, 1, "gone", b"old"), set(3, 2, "kept", b"v")])
            .unwrap();
        b.write_batch(&[del(3, 3, "gone")]).unwrap();
        // Several versions of one key in one batch: the highest seqno
        // wins whatever the order in the slice.
        b.write_batch(&[
            set(3, 5, "twice", b"new"),
            set(3, 4, "twice", b"older"),
            set(4, 1, "flip", b"x"),
            del(4, 2, "flip"),
        ])
        .unwrap();
    }
    let store = open(&dir);
    let b = store.bucket("default").unwrap();
    let gone = b.get(3, b"gone").unwrap().unwrap();
    assert_eq!(gone.header.kind, RecordKind::Tombstone);
    assert_eq!(gone.header.seqno, 3);
    assert!(gone.value.is_empty());
    assert_eq!(&b.get(3, b"twice").unwrap().unwrap().value[..], b"new");
    assert!(b.get(4, b"flip").unwrap().unwrap().is_tombstone());

    let (keys, stats) = live_keys(&b);
    assert_eq!(
        keys,
        vec![(3, Bytes::from("kept")), (3, Bytes::from("twice"))]
    );
    assert_eq!((stats.items, stats.tombstones, stats.corrupt), (2, 2, 0));
}

#[test]
fn persisted_seqnos_survive_reopen_and_never_go_back() {
    let dir = TestDir::new("seqnos");
    {
        let store = open(&dir);
        let b = store.bucket("default").unwrap();
        b.write_batch(&[
            set(1, 10, "a", b"1"),
            set(2, 3, "b", b"2"),
            set(1, 11, "c", b"3"),
        ])
        .unwrap();
        assert_eq!(b.persisted_seqnos(), vec![(1, 11), (2, 3)]);
        // A lower seqno (a contract breach upstream) must not move the
        // persisted seqno backwards.
        b.write_batch(&[set(1, 5, "d", b"4"), set(7, 1, "e", b"5")])
            .unwrap();
        assert_eq!(b.persisted_seqnos(), vec![(1, 11), (2, 3), (7, 1)]);
        b.write_batch(&[]).unwrap();
    }
    let store = open(&dir);
    let b = store.bucket("default").unwrap();
    assert_eq!(b.persisted_seqnos(), vec![(1, 11), (2, 3), (7, 1)]);
    // Buckets do not see each other's metadata.
    assert!(store.bucket("other").unwrap().persisted_seqnos().is_empty());
}

#[test]
fn vbucket_states_and_flush_deadline_survive_reopen() {
    let dir = TestDir::new("states");
    {
        let store = open(&dir);
        let b = store.bucket("default").unwrap();
        assert_eq!(b.flush_deadline().unwrap(), 0);
        b.set_vbucket_state(0, 1).unwrap();
        b.set_vbucket_state(513, 2).unwrap();
        b.set_vbucket_state(0, 4).unwrap();
        b.set_flush_deadline(1_700_000_123).unwrap();
        store.bucket("b2").unwrap().set_vbucket_state(9, 3).unwrap();
    }
    let store = open(&dir);
    let b = store.bucket("default").unwrap();
    assert_eq!(b.vbucket_states().unwrap(), vec![(0, 4), (513, 2)]);
    assert_eq!(b.flush_deadline().unwrap(), 1_700_000_123);
    assert_eq!(
        store.bucket("b2").unwrap().vbucket_states().unwrap(),
        vec![(9, 3)]
    );
    assert_eq!(
        store.bucket_names(),
        vec!["b2".to_string(), "default".to_string()]
    );
}

#[test]
fn delete_vbucket_removes_exactly_that_range() {
    let dir = TestDir::new("delvb");
    let store = open(&dir);
    let b = store.bucket("default").unwrap();
    let mut batch = Vec::new();
    for vb in [0u16, 1, 2, 255, 256, u16::MAX] {
        for i in 0..50u64 {
            batch.push(set(vb, i + 1, &format!("k{i}"), b"v"));
        }
        b.set_vbucket_state(vb, 1).unwrap();
    }
    // The highest key of vb 1's range: 0x00 0x01 0xff 0xff sorts just
    // below vb 2's prefix 0x00 0x02, so it must go and vb 2 must stay.
    let mut edge = set(1, 51, "", b"edge");
    edge.key = Bytes::from_static(&[0xff, 0xff]);
    batch.push(edge);
    b.write_batch(&batch).unwrap();

    assert_eq!(b.delete_vbucket(1).unwrap(), 51);
    assert_eq!(b.delete_vbucket(u16::MAX).unwrap(), 50);
    assert_eq!(b.delete_vbucket(1).unwrap(), 0, "idempotent");

    let check = |b: &BucketStore| {
        let (keys, _) = live_keys(b);
        let mut per_vb: BTreeMap<VbucketId, usize> = BTreeMap::new();
        for (vb, _) in keys {
            *per_vb.entry(vb).or_default() += 1;
        }
        assert_eq!(
            per_vb,
            BTreeMap::from([(0, 50), (2, 50), (255, 50), (256, 50)])
        );
        assert_eq!(
            b.persisted_seqnos(),
            vec![(0, 50), (2, 50), (255, 50), (256, 50)]
        );
        assert_eq!(
            b.vbucket_states().unwrap(),
            vec![(0, 1), (2, 1), (255, 1), (256, 1)]
        );
        assert!(b.get(1, b"k0").unwrap().is_none());
        assert!(b.get(2, b"k0").unwrap().is_some());
    };
    check(&b);
    drop(b);
    drop(store);
    let store = open(&dir);
    check(&store.bucket("default").unwrap());
}

#[test]
fn interrupted_vbucket_deletion_is_finished_on_open() {
    let dir = TestDir::new("delresume");
    {
        let store = open(&dir);
        let b = store.bucket("default").unwrap();
        b.write_batch(&[set(5, 1, "a", b"1"), set(6, 1, "b", b"2")])
            .unwrap();
        // What a crash right after the marker leaves behind.
        b.inner
            .shared
            .meta
            .insert(meta_key("default", TAG_DELETING, Some(5)), Vec::new())
            .unwrap();
    }
    let store = open(&dir);
    let b = store.bucket("default").unwrap();
    assert!(b.get(5, b"a").unwrap().is_none());
    assert!(b.get(6, b"b").unwrap().is_some());
    assert_eq!(b.persisted_seqnos(), vec![(6, 1)]);
    assert_eq!(
        b.inner
            .shared
            .meta
            .prefix(meta_prefix("default", TAG_DELETING))
            .count(),
        0
    );
}

#[test]
fn scan_reports_items_and_tombstones_after_a_seqno() {
    let dir = TestDir::new("scan");
    let store = open(&dir);
    let b = store.bucket("default").unwrap();
    b.write_batch(&[
        set(9, 1, "a", b"1"),
        set(9, 2, "b", b"2"),
        set(10, 3, "other-vb", b"x"),
    ])
    .unwrap();
    b.write_batch(&[del(9, 3, "a"), set(9, 4, "c", b"3")])
        .unwrap();
    let mut seen = Vec::new();
    let stats = b
        .scan(9, 2, |k, item| {
            seen.push((k, item.header.seqno, item.is_tombstone()));
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(
        seen,
        vec![(Bytes::from("a"), 3, true), (Bytes::from("c"), 4, false)]
    );
    assert_eq!(
        stats,
        ScanStats {
            records: 2,
            skipped: 1
        }
    );

    let mut first = Vec::new();
    b.scan(9, 0, |k, _| {
        first.push(k);
        ControlFlow::Break(())
    })
    .unwrap();
    assert_eq!(first, vec![Bytes::from("a")]);
}

#[test]
fn corrupt_record_fails_get_and_is_skipped_by_warmup() {
    let dir = TestDir::new("corrupt");
    let store = open(&dir);
    let b = store.bucket("default").unwrap();
    b.write_batch(&[set(0, 1, "good", b"v")]).unwrap();
    let mut key = Vec::new();
    record::encode_key(0, b"bad", &mut key);
    let mut value = Vec::new();
    record::encode_mutation(&set(0, 2, "bad", b"payload"), &mut value);
    *value.last_mut().unwrap() ^= 1; // one flipped bit in the value
    b.inner.data.insert(key, value).unwrap();
    b.inner
        .data
        .insert(vec![0u8], b"key shorter than a vbucket prefix".to_vec())
        .unwrap();

    assert!(matches!(
        b.get(0, b"bad"),
        Err(PersistError::Corrupt {
            reason: "record checksum mismatch"
        })
    ));
    let (keys, stats) = live_keys(&b);
    assert_eq!(keys, vec![(0, Bytes::from("good"))]);
    assert_eq!((stats.items, stats.corrupt), (1, 2));
    assert!(b.scan(0, 0, |_, _| ControlFlow::Continue(())).is_err());
}

#[test]
fn warmup_stops_when_asked() {
    let dir = TestDir::new("warmstop");
    let store = open(&dir);
    let b = store.bucket("default").unwrap();
    let batch: Vec<Mutation> = (0..10)
        .map(|i| set(0, i + 1, &format!("k{i}"), b"v"))
        .collect();
    b.write_batch(&batch).unwrap();
    let mut n = 0;
    let stats = b
        .warmup(|_, _, _| {
            n += 1;
            if n == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!((n, stats.items), (3, 3));
}

#[test]
fn oversized_key_is_refused() {
    let dir = TestDir::new("bigkey");
    let store = open(&dir);
    let b = store.bucket("default").unwrap();
    let long = "k".repeat(record::MAX_ITEM_KEY_LEN + 1);
    assert!(matches!(
        b.write_batch(&[set(0, 1, &long, b"v")]),
        Err(PersistError::KeyTooLong { .. })
    ));
    assert!(b.persisted_seqnos().is_empty());
}

/// 200k small items written, the store reopened, and warmup streams them
/// all. Debug builds are slow; the bound only catches pathologies (like
/// loading everything at once or quadratic iteration).
#[test]
fn warmup_streams_200k_items() {
    const N: u64 = 200_000;
    let dir = TestDir::new("warm200k");
    let write_started = Instant::now();
    {
        let store = Store::open(
            dir.path(),
            StoreOptions {
                fsync: crate::FsyncPolicy::Never,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        let b = store.bucket("default").unwrap();
        let mut seqno = [0u64; 1024];
        let mut batch = Vec::with_capacity(10_000);
        for i in 0..N {
            let vb = (i % 1024) as usize;
            seqno[vb] += 1;
            batch.push(set(
                vb as VbucketId,
                seqno[vb],
                &format!("key:{i:08}"),
                b"0123456789",
            ));
            if batch.len() == 10_000 {
                b.write_batch(&batch).unwrap();
                batch.clear();
            }
        }
        b.write_batch(&batch).unwrap();
    }
    let write_took = write_started.elapsed();
    let open_started = Instant::now();
    let store = open(&dir);
    let b = store.bucket("default").unwrap();
    let open_took = open_started.elapsed();
    let started = Instant::now();
    let mut last: Option<(VbucketId, Bytes)> = None;
    let mut ordered = true;
    let stats = b
        .warmup(|vb, k, _| {
            let here = (vb, k);
            if let Some(prev) = &last {
                ordered &= *prev < here;
            }
            last = Some(here);
            ControlFlow::Continue(())
        })
        .unwrap();
    let took = started.elapsed();
    println!(
        "wrote {N} items in {write_took:?}; reopen (journal replay) {open_took:?}; \
         warmup of {} items took {took:?} ({:.0} items/s)",
        stats.items,
        stats.items as f64 / took.as_secs_f64()
    );
    assert_eq!(stats.items, N);
    assert!(ordered, "warmup streams in (vbucket, key) order");
    assert_eq!(b.persisted_seqnos().len(), 1024);
    assert!(took.as_secs() < 60, "warmup took {took:?}");
}

/// Release-only throughput probe: `cargo test --release -p shoal-node
/// --lib persist::bucket::tests::write_throughput -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark; run in release by hand"]
fn write_throughput() {
    for (name, fsync) in [
        ("every-batch", crate::FsyncPolicy::EveryBatch),
        ("never", crate::FsyncPolicy::Never),
    ] {
        const N: u64 = 1_000_000;
        let dir = TestDir::new("throughput");
        let store = Store::open(
            dir.path(),
            StoreOptions {
                fsync,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        let b = store.bucket("default").unwrap();
        let value = [b'x'; 100];
        let all: Vec<Mutation> = (0..N)
            .map(|i| {
                set(
                    (i % 1024) as VbucketId,
                    i / 1024 + 1,
                    &format!("key:{i:010}"),
                    &value,
                )
            })
            .collect();
        let started = Instant::now();
        for chunk in all.chunks(10_000) {
            b.write_batch(chunk).unwrap();
        }
        let took = started.elapsed();
        println!(
            "{name}: {N} x 100-byte values in {took:?} = {:.0} items/s",
            N as f64 / took.as_secs_f64()
        );
        drop(b);
        drop(store);
        let started = Instant::now();
        let store = open(&dir);
        let b = store.bucket("default").unwrap();
        println!("{name}: reopen (journal replay) {:?}", started.elapsed());
        let started = Instant::now();
        let stats = b.warmup(|_, _, _| ControlFlow::Continue(())).unwrap();
        let took = started.elapsed();
        println!(
            "{name}: warmup of {} items in {took:?} = {:.0} items/s",
            stats.items,
            stats.items as f64 / took.as_secs_f64()
        );
    }
}
