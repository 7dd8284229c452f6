//! Crash safety of a standalone node, end to end: what `stats` says is on
//! disk survives `kill -9`, and what was acknowledged before SIGTERM
//! survives a clean stop.
//!
//! 1. Write 200,000 items with pipelined `set`s over a few connections —
//!    each with flags and a value derived from its key, so every one can be
//!    checked — poll `stats` until `ep_diskqueue_items` is 0, `kill -9`,
//!    restart on the same data dir, wait for warmup and read every item back
//!    (pipelined multi-gets) with its flags and value.
//! 2. Write another batch, send SIGTERM right after the last `STORED`, wait
//!    for exit code 0 (the node drains its queue to disk before exiting),
//!    restart and check both batches.
//!
//! Each step fails if a single item is missing or wrong; timings are
//! printed, never asserted.

mod common;

use std::net::SocketAddr;
use std::ops::Range;

use common::{on_threads, push_get, push_set, stat_u64, Conn, NodeProcess, TestDir};

/// Items in the first batch (crash after persistence).
const FIRST: usize = 200_000;

/// Items in the second batch (SIGTERM with the queue full).
const SECOND: usize = 50_000;

/// Client connections writing and reading in parallel.
const CONNECTIONS: usize = 4;

/// `set`s sent before their replies are read: ~60 KiB of requests, whose
/// 8 KiB of `STORED` replies fit the socket buffers, so neither side blocks.
const SET_PIPELINE: usize = 1_000;

/// Keys per `get` line (~1.2 KiB, well under the node's 8 KiB line limit).
const KEYS_PER_GET: usize = 100;

/// `get` lines sent before their replies are read.
const GET_PIPELINE: usize = 10;

fn key(prefix: &str, i: usize) -> String {
    format!("{prefix}:{i:07}")
}

/// Distinct for every `i` below 2^32: multiplying by an odd constant is a
/// bijection modulo 2^32.
fn flags_of(i: usize) -> u32 {
    (i as u32).wrapping_mul(0x9e37_79b1) ^ 0x5bd1_e995
}

/// 8 to 127 bytes cycling through the key's own text, so a value stored
/// under the wrong key, truncated or shifted shows up.
fn value_of(prefix: &str, i: usize) -> Vec<u8> {
    let len = 8 + (i * 7919) % 120;
    let seed = format!("{prefix}/{i}/");
    seed.bytes().cycle().take(len).collect()
}

/// Writes items `range` of `prefix`, split round-robin over the
/// connections; every reply must be `STORED`.
fn write_items(addr: SocketAddr, prefix: &str, range: Range<usize>) {
    on_threads(CONNECTIONS, |t| {
        let mut conn = Conn::connect(addr).expect("connect");
        let mine: Vec<usize> = range.clone().skip(t).step_by(CONNECTIONS).collect();
        let mut req = Vec::new();
        for chunk in mine.chunks(SET_PIPELINE) {
            req.clear();
            for &i in chunk {
                push_set(
                    &mut req,
                    key(prefix, i).as_bytes(),
                    flags_of(i),
                    &value_of(prefix, i),
                );
            }
            conn.send(&req).expect("send sets");
            for &i in chunk {
                let reply = conn.line();
                assert_eq!(reply, "STORED", "set of {}", key(prefix, i));
            }
        }
    });
}

/// Reads items `range` of `prefix` back; panics listing the first few
/// missing or wrong ones. Returns how many were checked.
fn verify_items(addr: SocketAddr, prefix: &str, range: Range<usize>) -> usize {
    let counts = on_threads(CONNECTIONS, |t| {
        let mut conn = Conn::connect(addr).expect("connect");
        let mine: Vec<usize> = range.clone().skip(t).step_by(CONNECTIONS).collect();
        let mut problems = Vec::new();
        let mut missing = 0usize;
        let mut checked = 0usize;
        let mut req = Vec::new();
        for round in mine.chunks(KEYS_PER_GET * GET_PIPELINE) {
            req.clear();
            let lines: Vec<&[usize]> = round.chunks(KEYS_PER_GET).collect();
            for line in &lines {
                let keys: Vec<String> = line.iter().map(|&i| key(prefix, i)).collect();
                push_get(&mut req, &keys);
            }
            conn.send(&req).expect("send gets");
            for line in &lines {
                let hits = conn.read_values().expect("read get reply");
                let mut hits = hits.into_iter().peekable();
                for &i in *line {
                    let k = key(prefix, i);
                    checked += 1;
                    // Hits come in request order; a miss is simply absent.
                    match hits.peek() {
                        Some(hit) if hit.key == k.as_bytes() => {
                            let hit = hits.next().unwrap();
                            if hit.flags != flags_of(i) || hit.data != value_of(prefix, i) {
                                problems.push(format!(
                                    "{k}: flags {} value {:?}",
                                    hit.flags,
                                    String::from_utf8_lossy(&hit.data)
                                ));
                            }
                        }
                        _ => missing += 1,
                    }
                }
                if let Some(extra) = hits.next() {
                    problems.push(format!(
                        "unexpected or out-of-order key {:?}",
                        String::from_utf8_lossy(&extra.key)
                    ));
                }
            }
        }
        (checked, missing, problems)
    });
    let checked: usize = counts.iter().map(|c| c.0).sum();
    let missing: usize = counts.iter().map(|c| c.1).sum();
    let problems: Vec<&String> = counts.iter().flat_map(|c| &c.2).collect();
    assert!(
        missing == 0 && problems.is_empty(),
        "{prefix}: {missing} of {checked} items missing, {} wrong; first wrong: {:?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    );
    checked
}

#[test]
fn acknowledged_writes_survive_kill_9_and_sigterm() {
    let dir = TestDir::new("durability");

    // --- kill -9 once everything is on disk ---
    let mut node = NodeProcess::start(dir.path(), &[]);
    node.wait_ready();
    let started = std::time::Instant::now();
    write_items(node.addr, "a", 0..FIRST);
    let wrote = started.elapsed();
    let stats = node.wait_persisted();
    let persisted = started.elapsed();
    assert_eq!(stat_u64(&stats, "curr_items"), FIRST as u64);
    assert_eq!(
        stat_u64(&stats, "ep_high_seqno_total"),
        stat_u64(&stats, "ep_persisted_seqno_total"),
        "an empty disk queue means every seqno is persisted"
    );
    println!(
        "wrote {FIRST} items in {wrote:?}; disk queue empty after {persisted:?} (ep_total_persisted {})",
        stat_u64(&stats, "ep_total_persisted")
    );
    node.kill9();

    let mut node = NodeProcess::start(dir.path(), &[]);
    let warmup = node.wait_ready();
    let stats = node.stats();
    println!(
        "after kill -9: warmup of {} items took {warmup:?} (spawn to ready)",
        stat_u64(&stats, "ep_warmup_count")
    );
    assert_eq!(
        stat_u64(&stats, "curr_items"),
        FIRST as u64,
        "items after warmup"
    );
    let checked = verify_items(node.addr, "a", 0..FIRST);
    println!("after kill -9: verified {checked} items (flags and values)");

    // --- SIGTERM straight after the last acknowledgement ---
    write_items(node.addr, "b", 0..SECOND);
    // One stats round trip (well under a millisecond), to show how much the
    // shutdown had to drain; it is printed, not asserted: how far the
    // flusher got is up to the scheduler.
    let waiting = node.stat("ep_diskqueue_items");
    let status = node.sigterm_and_wait();
    println!("SIGTERM sent with {waiting} of {SECOND} mutations still waiting for disk");
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM must drain and exit 0: {status:?}"
    );

    let mut node = NodeProcess::start(dir.path(), &[]);
    let warmup = node.wait_ready();
    let stats = node.stats();
    println!(
        "after SIGTERM: warmup of {} items took {warmup:?}",
        stat_u64(&stats, "ep_warmup_count")
    );
    assert_eq!(
        stat_u64(&stats, "curr_items"),
        (FIRST + SECOND) as u64,
        "items after warmup"
    );
    let checked = verify_items(node.addr, "a", 0..FIRST) + verify_items(node.addr, "b", 0..SECOND);
    println!("after SIGTERM: verified {checked} items (flags and values)");
    let status = node.sigterm_and_wait();
    assert_eq!(status.code(), Some(0));
}
