//! Fuzzes a storage node's session handling: `shoal_node::server::drive`,
//! the connection's read/parse/run/write loop without a socket, against a
//! real bucket and store. The input's first byte says how many cut points
//! follow (`first % 8`); each following byte places one (a fraction of the
//! rest); the rest is the byte stream a client sends — ASCII, meta and
//! binary requests in any mix — delivered in the chunks the cuts make.
//!
//! The node is opened once per process ([`OnceLock`]): a 16 MiB quota, 64
//! vbuckets all active, warmup done, in a temp dir. State carries over from
//! input to input, as on a real node; after each input the harness does
//! what the node's background tasks would, synchronously so a crash
//! reproduces: drains the write queue into the store (marking it
//! persisted) and runs the pager when memory is past the high watermark, so
//! ejection and background fetches are reached too.
//!
//! Invariants beyond "no panic":
//!
//! - termination: `drive` returns (libFuzzer's `-timeout` catches a loop);
//! - framing does not depend on how the bytes arrived: the stream fed whole
//!   and fed in the chosen chunks closes (or not) alike, and when it stays
//!   open leaves the same number of bytes unparsed. Closing (`quit`, an
//!   unrecoverable parse error) and request boundaries depend on the bytes
//!   only, never on the bucket's state, so this holds even though the second
//!   run sees the first one's writes;
//! - bounded output: at most [`OUTPUT_PER_BYTE`] reply bytes per input byte
//!   plus [`OUTPUT_SLACK`], in both runs. The largest legitimate ratio is a
//!   multi-get hit — a 2-byte ` k` naming a [`MAX_VALUE`]-byte value — so
//!   the value limit is kept small here to make the bound tight enough to
//!   catch a reply that repeats or runs away.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use shoal_engine::VbucketState;
use shoal_node::bucket::open::open_standalone;
use shoal_node::bucket::LiveBucket;
use shoal_node::server::drive;
use shoal_node::NodeConfig;
use shoal_persist::Store;

/// Largest value the node accepts here (its `--max-value-bytes`).
const MAX_VALUE: usize = 1024;

/// Reply bytes allowed per input byte: half a maximal value plus its
/// `VALUE` line per byte (two bytes name a key), which also covers `stats`
/// (6 bytes in, ~2.5 KiB out).
const OUTPUT_PER_BYTE: usize = (MAX_VALUE + 512) / 2 + 512;

/// Reply bytes allowed on top of the per-byte allowance.
const OUTPUT_SLACK: usize = 8 * 1024;

/// Longer inputs are skipped: the interesting structure is in short ones,
/// and the per-input work stays small.
const MAX_INPUT: usize = 64 * 1024;

/// vbuckets in the fuzzed bucket.
const VBUCKETS: usize = 64;

/// The node's shared state, and the store it must outlive.
struct Harness {
    ctx: Arc<LiveBucket>,
    _store: Store,
}

static HARNESS: OnceLock<Harness> = OnceLock::new();

/// Directory prefix of the node's data under the temp dir.
const DIR_PREFIX: &str = "shoal-fuzz-node-session-";

/// Removes data dirs left by earlier runs whose process is gone (a fuzzer
/// process ends without running destructors).
fn remove_stale_dirs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn harness() -> &'static Harness {
    HARNESS.get_or_init(|| {
        let tmp = std::env::temp_dir();
        remove_stale_dirs(&tmp);
        let dir: PathBuf = tmp.join(format!("{DIR_PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = NodeConfig {
            data_dir: dir,
            standalone: true,
            num_vbuckets: VBUCKETS,
            ram_quota_mb: 16,
            max_value_len: MAX_VALUE,
            ..NodeConfig::default()
        };
        let (ctx, store) = open_standalone(&config).expect("open the node's bucket");
        ctx.engine.set_warming_up(false);
        for vb in 0..VBUCKETS {
            ctx.engine
                .set_vbucket_state(vb as u16, VbucketState::Active)
                .expect("activate vbucket");
        }
        Harness { ctx, _store: store }
    })
}

/// The background work of a node, done synchronously: persist what was
/// queued, then page if memory is high.
fn settle(ctx: &LiveBucket) {
    let batch = ctx.engine.drain(usize::MAX);
    if !batch.is_empty() {
        ctx.store
            .as_ref()
            .expect("bucket `default` is persistent")
            .write_batch(&batch)
            .expect("write the queue to the store");
        let mut top: Vec<(u16, u64)> = Vec::new();
        for m in &batch {
            match top.iter_mut().find(|(vb, _)| *vb == m.vbucket) {
                Some(entry) => entry.1 = entry.1.max(m.seqno),
                None => top.push((m.vbucket, m.seqno)),
            }
        }
        ctx.engine.mark_persisted_all(&top);
    }
    if ctx.engine.needs_paging() {
        ctx.engine.run_pager(ctx.clock.now());
    }
}

/// Splits `data` into its cut points and the stream, then the stream into
/// chunks at those points.
fn chunks(data: &[u8]) -> (&[u8], Vec<&[u8]>) {
    let Some((&first, rest)) = data.split_first() else {
        return (&[], Vec::new());
    };
    let cuts = usize::from(first % 8).min(rest.len());
    let (cut_bytes, stream) = rest.split_at(cuts);
    let mut at: Vec<usize> = cut_bytes
        .iter()
        .map(|&b| usize::from(b) * stream.len() / 255)
        .collect();
    at.sort_unstable();
    let mut pieces = Vec::with_capacity(at.len() + 1);
    let mut start = 0;
    for cut in at {
        pieces.push(&stream[start..cut]);
        start = cut;
    }
    pieces.push(&stream[start..]);
    (stream, pieces)
}

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT {
        return;
    }
    let ctx = &harness().ctx;
    let (stream, pieces) = chunks(data);
    let bound = stream.len() * OUTPUT_PER_BYTE + OUTPUT_SLACK;

    let whole = drive(ctx, &[stream]);
    settle(ctx);
    let split = drive(ctx, &pieces);
    settle(ctx);

    for (how, run) in [("whole", &whole), ("split", &split)] {
        assert!(
            run.output.len() <= bound,
            "{how}: {} reply bytes for {} input bytes",
            run.output.len(),
            stream.len()
        );
        assert!(
            run.buffered <= stream.len(),
            "{how}: buffered more than was sent"
        );
    }
    assert_eq!(
        whole.closed,
        split.closed,
        "closing depends on how the bytes arrived ({} pieces)",
        pieces.len()
    );
    if !whole.closed {
        assert_eq!(
            whole.buffered,
            split.buffered,
            "the unparsed tail depends on how the bytes arrived ({} pieces)",
            pieces.len()
        );
    }
});
