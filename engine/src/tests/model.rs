//! The property test: random sequences of operations on a few keys in two
//! vbuckets — stores of every mode with and without CAS, gets, deletes,
//! incr/decr with auto-create, touch, gat, time passing, flush_all with and
//! without delay, persisting, ejecting, purging — must give the outcomes,
//! values, flags and CAS behaviour of a plain model of memcached's rules.
//! A simulated disk answers the engine's "value is on disk" outcomes as the
//! server will, and at the end disk must hold exactly what clients can
//! read (write-behind never resurrects a deleted, expired or flushed key).

use std::collections::HashMap;

use bytes::Bytes;
use proptest::prelude::*;

use super::super::*;
use super::{active_bucket, bucket_with_quota, set, set_at, Disk, NOW};

/// A compare-CAS choice, resolved against the model at run time.
#[derive(Clone, Copy, Debug)]
enum CasPick {
    None,
    Current,
    Wrong,
}

#[derive(Clone, Debug)]
enum Op {
    Store(StoreMode, usize, &'static str, u32, u32, CasPick),
    Get(usize),
    Delete(usize, CasPick),
    Arith(usize, ArithOp, u64, Option<u64>, CasPick),
    Touch(usize, u32),
    Gat(usize, u32),
    Advance(u32),
    Flush(u32),
    Persist,
    Eject,
    Purge,
}

const KEYS: [&str; 3] = ["a", "b", "c"];
const VALUES: [&str; 8] = [
    "",
    "0",
    "5",
    "12",
    " 7",
    "abc",
    "18446744073709551615",
    "9 x",
];

fn vb_of(key: usize) -> VbucketId {
    (key % 2) as VbucketId
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS.len();
    let value = prop::sample::select(VALUES.to_vec());
    let exp = 0u32..4; // 0 never, 1..=2 seconds from now, 3 already expired
    let cas = prop_oneof![
        Just(CasPick::None),
        Just(CasPick::Current),
        Just(CasPick::Wrong)
    ];
    let mode = prop::sample::select(vec![
        StoreMode::Set,
        StoreMode::Add,
        StoreMode::Replace,
        StoreMode::Append,
        StoreMode::Prepend,
    ]);
    let arith = prop_oneof![Just(ArithOp::Incr), Just(ArithOp::Decr)];
    let delta = prop::sample::select(vec![0, 1, 5, u64::MAX]);
    let initial = prop::option::of(0u64..20);
    let store = (mode, key.clone(), value, 0u32..3, exp.clone(), cas.clone())
        .prop_map(|(m, k, v, f, e, c)| Op::Store(m, k, v, f, e, c));
    let arith = (key.clone(), arith, delta, initial, cas.clone())
        .prop_map(|(k, o, d, i, c)| Op::Arith(k, o, d, i, c));
    prop_oneof![
        4 => store,
        3 => key.clone().prop_map(Op::Get),
        1 => (key.clone(), cas).prop_map(|(k, c)| Op::Delete(k, c)),
        2 => arith,
        1 => (key.clone(), exp.clone()).prop_map(|(k, e)| Op::Touch(k, e)),
        1 => (key, exp).prop_map(|(k, e)| Op::Gat(k, e)),
        1 => (1u32..3).prop_map(Op::Advance),
        1 => prop::sample::select(vec![0u32, 1, 2, 5]).prop_map(Op::Flush),
        1 => Just(Op::Persist),
        1 => Just(Op::Eject),
        1 => Just(Op::Purge),
    ]
}

#[derive(Clone, Debug)]
struct ModelItem {
    value: Vec<u8>,
    flags: u32,
    exptime: u32,
    cas: u64,
    time: u32,
}

/// memcached semantics, written plainly.
struct Model {
    items: HashMap<usize, ModelItem>,
    now: u32,
    /// Items changed at or before this second are flushed.
    flushed_upto: u32,
    /// A delayed flush's oldest_live.
    pending_flush: Option<u32>,
}

impl Model {
    fn tick(&mut self) {
        if let Some(at) = self.pending_flush.filter(|&at| at <= self.now) {
            self.flushed_upto = self.flushed_upto.max(at);
            self.pending_flush = None;
        }
        let (now, upto) = (self.now, self.flushed_upto);
        self.items
            .retain(|_, it| !(it.exptime != 0 && it.exptime <= now) && it.time > upto);
    }

    fn exptime(&self, pick: u32) -> u32 {
        match pick {
            0 => 0,
            3 => EXPIRED,
            n => self.now + n,
        }
    }

    fn cas(&self, key: usize, pick: CasPick) -> u64 {
        let current = self.items.get(&key).map_or(1 << 40, |it| it.cas);
        match pick {
            CasPick::None => 0,
            CasPick::Current => current,
            CasPick::Wrong => current + 1_000_000,
        }
    }

    fn number(value: &[u8]) -> Option<u64> {
        let s = std::str::from_utf8(value)
            .ok()?
            .trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b');
        let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        if !s[digits..].is_empty() && !s[digits..].starts_with(' ') {
            return None;
        }
        s[..digits].parse().ok()
    }
}

/// Runs an engine call; on "value is on disk", fetches it from the
/// simulated disk, restores it and retries, as the server does.
fn with_disk<T>(
    b: &Bucket,
    disk: &Disk,
    vb: VbucketId,
    key: &[u8],
    mut f: impl FnMut() -> Result<T, EngineError>,
) -> Result<T, EngineError> {
    match f() {
        Err(EngineError::ValueEjected) => {
            let (seqno, value) = disk.get(vb, key).expect("ejected values are on disk");
            assert!(b.restore_value(vb, key, seqno, value));
            f()
        }
        other => other,
    }
}

fn run_model(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let b = bucket_with_quota(64 << 20);
    b.set_vbucket_state(0, VbucketState::Active).unwrap();
    b.set_vbucket_state(1, VbucketState::Active).unwrap();
    let mut disk = Disk::default();
    let mut m = Model {
        items: HashMap::new(),
        now: NOW,
        flushed_upto: 0,
        pending_flush: None,
    };
    for op in ops {
        m.tick();
        let now = m.now;
        match op {
            Op::Store(mode, k, value, flags, exp, cas) => {
                let req = StoreRequest {
                    mode,
                    key: Bytes::from_static(KEYS[k].as_bytes()),
                    value: Bytes::from_static(value.as_bytes()),
                    flags,
                    exptime: m.exptime(exp),
                    cas: m.cas(k, cas),
                };
                let got = with_disk(&b, &disk, vb_of(k), KEYS[k].as_bytes(), || {
                    b.store(vb_of(k), &req, now)
                });
                let live = m.items.get(&k).cloned();
                let want: Result<ModelItem, EngineError> = match (mode, &live) {
                    (StoreMode::Set | StoreMode::Add | StoreMode::Replace, None)
                        if req.cas != 0 =>
                    {
                        Err(EngineError::NotFound)
                    }
                    (StoreMode::Set | StoreMode::Add | StoreMode::Replace, Some(it))
                        if req.cas != 0 && req.cas != it.cas =>
                    {
                        Err(EngineError::Exists)
                    }
                    // A matching CAS makes add and replace a plain CAS store.
                    (StoreMode::Add, Some(_)) | (StoreMode::Replace, None) if req.cas == 0 => {
                        Err(EngineError::NotStored)
                    }
                    (StoreMode::Append | StoreMode::Prepend, None) => Err(EngineError::NotStored),
                    (StoreMode::Append | StoreMode::Prepend, Some(it))
                        if req.cas != 0 && req.cas != it.cas =>
                    {
                        Err(EngineError::Exists)
                    }
                    (StoreMode::Append, Some(it)) => Ok(ModelItem {
                        value: [&it.value[..], value.as_bytes()].concat(),
                        ..it.clone()
                    }),
                    (StoreMode::Prepend, Some(it)) => Ok(ModelItem {
                        value: [value.as_bytes(), &it.value[..]].concat(),
                        ..it.clone()
                    }),
                    _ => Ok(ModelItem {
                        value: value.as_bytes().to_vec(),
                        flags,
                        exptime: req.exptime,
                        cas: 0,
                        time: now,
                    }),
                };
                match (got, want) {
                    (Ok(mutated), Ok(mut item)) => {
                        prop_assert!(live.is_none_or(|l| mutated.cas > l.cas));
                        item.cas = mutated.cas;
                        item.time = now;
                        m.items.insert(k, item);
                    }
                    (got, want) => prop_assert_eq!(got.map(drop), want.map(drop)),
                }
            }
            Op::Get(k) => {
                let got = b.get(vb_of(k), KEYS[k].as_bytes(), now);
                let got = got.map(|l| match l {
                    Lookup::Hit(h) => (h.value.to_vec(), h.flags, h.cas),
                    Lookup::Ejected {
                        cas, flags, seqno, ..
                    } => {
                        let (disk_seqno, value) =
                            disk.get(vb_of(k), KEYS[k].as_bytes()).expect("on disk");
                        assert_eq!(disk_seqno, seqno);
                        (value.to_vec(), flags, cas)
                    }
                });
                let want = m
                    .items
                    .get(&k)
                    .map(|it| (it.value.clone(), it.flags, it.cas))
                    .ok_or(EngineError::NotFound);
                prop_assert_eq!(got, want);
            }
            Op::Delete(k, cas) => {
                let cas = m.cas(k, cas);
                let got = b.delete(vb_of(k), KEYS[k].as_bytes(), cas, now).map(drop);
                let want = match m.items.get(&k) {
                    None => Err(EngineError::NotFound),
                    Some(it) if cas != 0 && cas != it.cas => Err(EngineError::Exists),
                    Some(_) => Ok(()),
                };
                if want.is_ok() {
                    m.items.remove(&k);
                }
                prop_assert_eq!(got, want);
            }
            Op::Arith(k, op, delta, initial, cas) => {
                let req = ArithRequest {
                    key: Bytes::from_static(KEYS[k].as_bytes()),
                    op,
                    delta,
                    create: initial.map(|initial| ArithCreate {
                        initial,
                        exptime: 0,
                    }),
                    cas: m.cas(k, cas),
                };
                let got = with_disk(&b, &disk, vb_of(k), KEYS[k].as_bytes(), || {
                    b.arith(vb_of(k), &req, now)
                });
                let want = match (m.items.get(&k), initial) {
                    (None, None) => Err(EngineError::NotFound),
                    (None, Some(i)) => Ok((
                        i,
                        ModelItem {
                            value: i.to_string().into_bytes(),
                            flags: 0,
                            exptime: 0,
                            cas: 0,
                            time: now,
                        },
                    )),
                    (Some(it), _) if req.cas != 0 && req.cas != it.cas => Err(EngineError::Exists),
                    (Some(it), _) => match Model::number(&it.value) {
                        None => Err(EngineError::NonNumeric),
                        Some(n) => {
                            let n = match op {
                                ArithOp::Incr => n.wrapping_add(delta),
                                ArithOp::Decr => n.saturating_sub(delta),
                            };
                            Ok((
                                n,
                                ModelItem {
                                    value: n.to_string().into_bytes(),
                                    time: now,
                                    ..it.clone()
                                },
                            ))
                        }
                    },
                };
                match (got, want) {
                    (Ok(o), Ok((n, mut item))) => {
                        prop_assert_eq!(o.value, n);
                        item.cas = o.cas;
                        m.items.insert(k, item);
                    }
                    (got, want) => prop_assert_eq!(got.map(|o| o.value), want.map(|w| w.0)),
                }
            }
            Op::Touch(k, exp) | Op::Gat(k, exp) => {
                let exptime = m.exptime(exp);
                let key = KEYS[k].as_bytes();
                let got = if matches!(op, Op::Gat(..)) {
                    with_disk(&b, &disk, vb_of(k), key, || {
                        b.gat(vb_of(k), key, exptime, now)
                    })
                    .map(|h| (Some((h.value.to_vec(), h.flags)), h.cas))
                } else {
                    with_disk(&b, &disk, vb_of(k), key, || {
                        b.touch(vb_of(k), key, exptime, now)
                    })
                    .map(|t| (None, t.cas))
                };
                let want = match m.items.get_mut(&k) {
                    None => Err(EngineError::NotFound),
                    Some(it) => {
                        it.exptime = exptime;
                        it.time = now;
                        let shown = matches!(op, Op::Gat(..)).then(|| (it.value.clone(), it.flags));
                        Ok((shown, it.cas))
                    }
                };
                prop_assert_eq!(got, want);
            }
            Op::Advance(secs) => m.now += secs,
            Op::Flush(delay) => {
                let deadline = if delay == 0 {
                    0
                } else {
                    resolve_exptime(i64::from(delay), now)
                };
                b.flush_all(deadline, now).unwrap();
                let oldest_live = if delay == 0 { now - 1 } else { now + delay - 1 };
                if oldest_live <= now {
                    m.items.clear();
                    m.flushed_upto = m.flushed_upto.max(oldest_live);
                    m.pending_flush = None;
                } else {
                    m.pending_flush = Some(oldest_live);
                }
            }
            Op::Persist => {
                disk.flush(&b);
            }
            Op::Eject => {
                b.eject_all_clean();
            }
            Op::Purge => {
                b.purge_expired(now, usize::MAX);
            }
        }
        b.assert_accounting();
    }
    // The law behind write-behind: once dead items are purged and the
    // queue is flushed, disk holds exactly what clients can read.
    m.tick();
    b.purge_expired(m.now, usize::MAX);
    disk.flush(&b);
    let mut on_disk: Vec<(Bytes, Bytes)> = disk
        .0
        .iter()
        .map(|((_, k), (_, v))| (k.clone(), v.clone()))
        .collect();
    let mut model: Vec<(Bytes, Bytes)> = m
        .items
        .iter()
        .map(|(k, it)| {
            (
                Bytes::from_static(KEYS[*k].as_bytes()),
                Bytes::from(it.value.clone()),
            )
        })
        .collect();
    on_disk.sort();
    model.sort();
    prop_assert_eq!(on_disk, model);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_match_the_model(ops in prop::collection::vec(op(), 1..60)) {
        run_model(ops)?;
    }
}

#[test]
fn regression_store_after_flush_in_the_same_second() {
    // `flush_all 1` puts oldest_live at now: memcached hides writes made
    // later in that same second too.
    run_model(vec![
        Op::Flush(1),
        Op::Store(StoreMode::Set, 0, "v", 0, 0, CasPick::None),
        Op::Get(0),
    ])
    .unwrap();
    let b = active_bucket();
    b.flush_all(NOW + 1, NOW).unwrap();
    set(&b, "k", "v");
    assert_eq!(b.get(0, b"k", NOW), Err(EngineError::NotFound));
    assert!(set_at(&b, "k", "v", NOW + 1).seqno > 0);
    assert!(b.get(0, b"k", NOW + 1).is_ok());
}

/// Cases the property test once shrank to (while the model itself was
/// wrong or the engine was deliberately broken), kept as plain tests:
/// proptest's saved seeds do not survive changes to the strategy.
#[test]
fn regression_shrunk_cases() {
    let cases = [
        // A binary add with the item's own CAS is a CAS store.
        vec![
            Op::Arith(0, ArithOp::Incr, 0, Some(0), CasPick::None),
            Op::Store(StoreMode::Add, 0, "", 0, 0, CasPick::Current),
            Op::Get(0),
        ],
        // A delayed flush covers writes made in its oldest_live second.
        vec![
            Op::Flush(2),
            Op::Advance(1),
            Op::Store(StoreMode::Set, 0, "", 0, 0, CasPick::None),
            Op::Get(0),
        ],
        // Append keeps the item's exptime, not the request's.
        vec![
            Op::Arith(0, ArithOp::Incr, 0, Some(0), CasPick::None),
            Op::Store(StoreMode::Append, 0, "", 0, 3, CasPick::None),
            Op::Get(0),
        ],
    ];
    for ops in cases {
        run_model(ops).unwrap();
    }
}
