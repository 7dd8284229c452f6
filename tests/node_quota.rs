//! The RAM quota, end to end: a node with `--ram-quota-mb 64` takes 256 MiB
//! of values (16,384 keys × 16 KiB), ejecting clean values to disk as it
//! goes, and then serves every key back correctly — from disk where the
//! value was ejected (`bg_fetches` > 0 proves the disk path ran). Writes the
//! node cannot take yet (quota full of values not yet persisted) answer
//! `SERVER_ERROR out of memory storing object` or `temporary failure`; the
//! client backs off and retries them, as a memcached client would, and the
//! test counts them.
//!
//! Throughout, the node's resident set (`VmRSS`) is sampled and must stay
//! under the quota plus [`OVERHEAD_BOUND`] — memory the node uses outside
//! the quota's accounting. Its make-up, with the store sized by
//! `StoreOptions::for_quota` for a 64 MiB quota — first what is live
//! (worst case by construction):
//!
//! | what | bound |
//! |---|---|
//! | fjall block cache (quota / 4), filled by the background fetches | 16 MiB |
//! | fjall memtables: the active one plus at most four sealed (fjall stalls writers at four), each sealed by the flusher at quota / 16 = 4 MiB plus at most one 4 MiB flusher batch; they hold whole values until flushed (key-value separation happens at flush) | 40 MiB |
//! | the flusher's batch in flight: drained mutations whose items were overwritten or ejected, and its encoding | 8 MiB |
//! | binary, runtime, thread stacks (an idle node is ~6 MiB), connection buffers (≤ 1 MiB each here) | 8 MiB |
//! | **live, worst case** | **72 MiB** |
//!
//! then what glibc keeps: freed 16 KiB values stay in the per-thread arena
//! that allocated them (two tokio workers, the flusher, fjall's workers),
//! reusable only by that arena's threads. The bound allows 40 MiB for it,
//! for **112 MiB** in all.
//!
//! Measured here with the fixes that came with this test (about 30 runs;
//! `malloc_stats` at the end of a few): live overhead 19–31 MiB, allocator
//! retention 27–61 MiB, peak RSS 123–157 MiB — at least 19 MiB under the
//! 176 MiB limit, as live memory and retention do not peak together.
//! The bound fails what came before those fixes. With fjall's defaults (a
//! 32 MiB cache, 64 MiB memtables) a similar load peaked near 250 MiB; with
//! only those sized from the quota, this test still peaked at 186–291 MiB,
//! because the flusher drained 512 values per step past its 4 MiB batch
//! budget and, above all, the active memtable outgrew its size while
//! fjall's workers were busy flushing (90 MB against a 4 MiB limit; see
//! `BucketStore::seal_full_memtable`). An overwrite-heavy run (ten rounds
//! of all 256 MiB) levels off near 145 MiB.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{on_threads, push_get, push_set, rss_of, stat_u64, Conn, NodeProcess, TestDir};

const MIB: u64 = 1024 * 1024;

/// The node's RAM quota.
const QUOTA_MB: u64 = 64;

/// RSS allowed beyond the quota (see the module docs for its make-up).
const OVERHEAD_BOUND: u64 = 112 * MIB;

/// Value size: past fjall's 4 KiB separation threshold, so values go to
/// blob files, and large enough that 16k of them are 4× the quota.
const VALUE_LEN: usize = 16 * 1024;

/// Keys written: 16,384 × 16 KiB = 256 MiB.
const KEYS: usize = 16_384;

/// Client connections.
const CONNECTIONS: usize = 2;

/// `set`s in flight per connection (512 KiB of requests).
const SET_PIPELINE: usize = 32;

/// Keys per `get` (a 256 KiB reply).
const KEYS_PER_GET: usize = 16;

/// How long a write that was refused for memory waits before its retry:
/// time for the flusher to make values clean and the pager to eject them.
const RETRY_BACKOFF: Duration = Duration::from_millis(20);

/// Bound on the whole write phase (a hang bound, not an expectation).
const WRITE_DEADLINE: Duration = Duration::from_secs(120);

fn key(i: usize) -> String {
    format!("q:{i:05}")
}

/// 16 KiB from a splitmix64 stream seeded by the key's index: every value
/// differs, so a value read back under the wrong key, or from a stale or
/// torn disk record, does not compare equal.
fn value_of(i: usize) -> Vec<u8> {
    let mut state = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xd1b5_4a32_d192_ed03;
    let mut out = Vec::with_capacity(VALUE_LEN);
    while out.len() < VALUE_LEN {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out
}

fn flags_of(i: usize) -> u32 {
    i as u32 ^ 0xa5a5_0000
}

/// Retries per connection: refused for memory, refused as temporary.
#[derive(Debug, Default, Clone, Copy)]
struct Refusals {
    out_of_memory: u64,
    temporary: u64,
}

/// Writes every key, retrying the refused ones after a pause.
fn write_all(addr: SocketAddr) -> Refusals {
    let per_conn = on_threads(CONNECTIONS, |t| {
        let mut conn = Conn::connect(addr).expect("connect");
        let mut refusals = Refusals::default();
        let mut pending: Vec<usize> = (t..KEYS).step_by(CONNECTIONS).collect();
        let deadline = Instant::now() + WRITE_DEADLINE;
        let mut req = Vec::with_capacity(SET_PIPELINE * (VALUE_LEN + 64));
        while !pending.is_empty() {
            assert!(
                Instant::now() < deadline,
                "{} writes still refused after {WRITE_DEADLINE:?} ({refusals:?})",
                pending.len()
            );
            let mut refused = Vec::new();
            for chunk in pending.chunks(SET_PIPELINE) {
                req.clear();
                for &i in chunk {
                    push_set(&mut req, key(i).as_bytes(), flags_of(i), &value_of(i));
                }
                conn.send(&req).expect("send sets");
                for &i in chunk {
                    match conn.line().as_str() {
                        "STORED" => {}
                        "SERVER_ERROR out of memory storing object" => {
                            refusals.out_of_memory += 1;
                            refused.push(i);
                        }
                        "SERVER_ERROR temporary failure" => {
                            refusals.temporary += 1;
                            refused.push(i);
                        }
                        other => panic!("set {}: unexpected reply {other:?}", key(i)),
                    }
                }
            }
            if !refused.is_empty() {
                std::thread::sleep(RETRY_BACKOFF);
            }
            pending = refused;
        }
        refusals
    });
    per_conn.iter().fold(Refusals::default(), |a, r| Refusals {
        out_of_memory: a.out_of_memory + r.out_of_memory,
        temporary: a.temporary + r.temporary,
    })
}

/// Reads every key back and compares flags and value; returns how many
/// were checked.
fn verify_all(addr: SocketAddr) -> usize {
    let counts = on_threads(CONNECTIONS, |t| {
        let mut conn = Conn::connect(addr).expect("connect");
        let mine: Vec<usize> = (t..KEYS).step_by(CONNECTIONS).collect();
        let mut req = Vec::new();
        let mut checked = 0;
        for chunk in mine.chunks(KEYS_PER_GET) {
            req.clear();
            let keys: Vec<String> = chunk.iter().map(|&i| key(i)).collect();
            push_get(&mut req, &keys);
            conn.send(&req).expect("send get");
            let hits = conn.read_values().expect("read get reply");
            let got: Vec<String> = hits
                .iter()
                .map(|h| String::from_utf8_lossy(&h.key).into_owned())
                .collect();
            assert_eq!(got, keys, "every key must be found, in order");
            for (hit, &i) in hits.iter().zip(chunk) {
                assert_eq!(hit.flags, flags_of(i), "flags of {}", key(i));
                assert!(hit.data == value_of(i), "value of {} differs", key(i));
                checked += 1;
            }
        }
        checked
    });
    counts.iter().sum()
}

/// Samples a process's RSS every few milliseconds until stopped; keeps the
/// peak.
struct RssSampler {
    peak: AtomicU64,
    samples: AtomicU64,
    stop: AtomicBool,
}

impl RssSampler {
    fn run(&self, pid: u32) {
        while !self.stop.load(Ordering::Relaxed) {
            if let Some(rss) = rss_of(pid) {
                self.peak.fetch_max(rss, Ordering::Relaxed);
                self.samples.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[test]
fn writes_four_times_the_quota_and_reads_it_all_back_within_bounded_rss() {
    let dir = TestDir::new("quota");
    let quota_arg = QUOTA_MB.to_string();
    let mut node = NodeProcess::start(dir.path(), &["--ram-quota-mb", &quota_arg]);
    node.wait_ready();
    let quota = stat_u64(&node.stats(), "ep_max_data_size");
    assert_eq!(quota, QUOTA_MB * MIB);
    let baseline = node.rss();

    let sampler = RssSampler {
        peak: AtomicU64::new(0),
        samples: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    };
    let pid = node.pid();
    let addr = node.addr;
    let (refusals, after_write, checked, after_read) = std::thread::scope(|s| {
        s.spawn(|| sampler.run(pid));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let started = Instant::now();
            let refusals = write_all(addr);
            println!(
                "wrote {} MiB in {:?}",
                (KEYS * VALUE_LEN) as u64 / MIB,
                started.elapsed()
            );
            let after_write = node.stats();
            let started = Instant::now();
            let checked = verify_all(addr);
            println!("read back {checked} values in {:?}", started.elapsed());
            (refusals, after_write, checked, node.stats())
        }));
        sampler.stop.store(true, Ordering::Relaxed);
        result.unwrap_or_else(|e| std::panic::resume_unwind(e))
    });
    let peak = sampler.peak.load(Ordering::Relaxed);
    println!(
        "refused and retried: {} out of memory, {} temporary failure",
        refusals.out_of_memory, refusals.temporary
    );
    println!(
        "after writes: mem_used {} MiB, curr_items {}, ejections {}, ep_tmp_oom_errors {}",
        stat_u64(&after_write, "mem_used") / MIB,
        stat_u64(&after_write, "curr_items"),
        stat_u64(&after_write, "ep_num_value_ejects"),
        stat_u64(&after_write, "ep_tmp_oom_errors"),
    );
    println!(
        "after reads: bg_fetches {}, ejections {}, mem_used {} MiB",
        stat_u64(&after_read, "bg_fetches"),
        stat_u64(&after_read, "ep_num_value_ejects"),
        stat_u64(&after_read, "mem_used") / MIB,
    );
    println!(
        "RSS: baseline {} MiB, peak {} MiB over {} samples; quota {} MiB + bound {} MiB = {} MiB",
        baseline / MIB,
        peak / MIB,
        sampler.samples.load(Ordering::Relaxed),
        quota / MIB,
        OVERHEAD_BOUND / MIB,
        (quota + OVERHEAD_BOUND) / MIB
    );

    assert_eq!(checked, KEYS);
    assert_eq!(stat_u64(&after_write, "curr_items"), KEYS as u64);
    for stats in [&after_write, &after_read] {
        assert!(
            stat_u64(stats, "mem_used") <= quota,
            "mem_used {} over the quota",
            stat_u64(stats, "mem_used")
        );
    }
    assert!(
        stat_u64(&after_write, "ep_num_value_ejects") > 0,
        "256 MiB cannot fit a 64 MiB quota without ejecting"
    );
    assert!(
        stat_u64(&after_read, "bg_fetches") > 0,
        "ejected values must have been read back from disk"
    );
    assert!(
        peak <= quota + OVERHEAD_BOUND,
        "peak RSS {} MiB is over quota {} MiB + {} MiB",
        peak / MIB,
        quota / MIB,
        OVERHEAD_BOUND / MIB
    );
    let status = node.sigterm_and_wait();
    assert_eq!(status.code(), Some(0));
}
