//! Fuzzes a proxy client session with a live backend: a real Shoal node in
//! this process (its data port on loopback, bucket `default` on disk in a
//! temp dir) behind the proxy's [`Shared`] with a static map, and
//! `session::serve_io` over in-memory pipes.
//!
//! The input is a stream of requests: its first byte sets the size of the
//! pieces the pipelined run writes (`0`: all at once, else `1 + b % 64`),
//! and the rest is split at `\n` into units. A unit's first byte picks a
//! template of `tests/pipeline/mod.rs` (accepted, refused or closing
//! requests of all three protocols) or, past the templates, a raw text
//! line; the second picks the keys, the next bytes give a number (eight
//! little-endian bytes when the unit has them, else one) and the rest, as
//! letters and digits, a value. A raw line is the unit's bytes made
//! printable; one whose verb could touch data or answer with counters is
//! defused with a leading `x`, since its keys would carry no run prefix and
//! the two runs below would then not start from the same data.
//!
//! Each input runs twice, under two key prefixes of the same length:
//! pipelined (every unit back to back, in pieces, then the write side shut)
//! and one at a time (each unit followed by a binary NOOP, waiting for the
//! NOOP's reply). Invariants beyond "no panic" (libfuzzer-sys aborts on a
//! panic in any thread, the node's and the pools' included):
//!
//! - in step: the pipelined run's replies, CAS values and key prefix
//!   normalised, are exactly the one-at-a-time replies concatenated —
//!   every request got exactly its own reply, in order, whatever was
//!   refused before it; if the connection closed after some unit, it did
//!   so in both runs, after the same replies;
//! - every refused request is answered (unless it said `noreply`);
//! - no hang: each run ends within [`RUN_BOUND`].
#![no_main]

#[path = "../../tests/pipeline/mod.rs"]
mod pipeline;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use pipeline::{Args, Unit, KEYS, MAX_VALUE, TEMPLATES};
use shoal_node::{Node, NodeConfig};
use shoal_proxy::Shared;
use shoal_vbmap::config::ServerAddr;
use tokio::runtime::Runtime;

/// Longest either run may take. Each reply comes from a node on loopback
/// in well under a millisecond; this leaves room for sanitizer builds on a
/// loaded machine, and stays below libFuzzer's `-timeout`.
const RUN_BOUND: Duration = Duration::from_secs(5);

/// Units past this are dropped: short streams carry the structure.
const MAX_UNITS: usize = 40;

/// Longest raw line kept (well under the line limit: over-long lines are a
/// template of their own).
const MAX_RAW: usize = 200;

/// Longest value taken from a unit.
const MAX_VALUE_BYTES: usize = 48;

/// Selector values past the templates that mean "raw line".
const RAW_SLOTS: usize = 12;

/// The pipes' buffer each way.
const PIPE_BUFFER: usize = 64 * 1024;

/// Directory prefix of the node's data under the temp dir.
const DIR_PREFIX: &str = "shoal-fuzz-proxy-pipeline-";

/// Verbs a raw line may not start with: they name keys (which would carry
/// no run prefix), change every key (`flush_all`), or answer with counters
/// and clocks that differ between runs (`stats`, `me`).
const DEFUSED_VERBS: &[&[u8]] = &[
    b"get",
    b"bget",
    b"gets",
    b"gat",
    b"gats",
    b"set",
    b"add",
    b"replace",
    b"append",
    b"prepend",
    b"cas",
    b"delete",
    b"incr",
    b"decr",
    b"touch",
    b"flush_all",
    b"stats",
    b"mg",
    b"ms",
    b"md",
    b"ma",
    b"me",
];

/// The node, the proxy's state, and the runtime both run on.
struct Harness {
    shared: Arc<Shared>,
    _node: Node,
    _runtime: Runtime,
}

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
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let tmp = std::env::temp_dir();
        remove_stale_dirs(&tmp);
        let dir: PathBuf = tmp.join(format!("{DIR_PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("node runtime");
        let node = runtime.block_on(async {
            let node = Node::start(NodeConfig {
                data_dir: dir,
                port: 0,
                admin_port: 0,
                standalone: true,
                num_vbuckets: 64,
                ram_quota_mb: 128,
                max_value_len: MAX_VALUE,
                ..NodeConfig::default()
            })
            .await
            .expect("start the node");
            node.ready().await.expect("node warms up");
            node
        });
        let server = ServerAddr::parse(&node.data_addr().to_string()).expect("address");
        let config = pipeline::proxy_config(server.clone());
        let (servers, weights) = (vec![server], vec![1]);
        let shared = Shared::new(config);
        // The pools spawn their connection tasks on the runtime they are
        // created in.
        runtime.block_on(async { shared.maps.install_static(servers, &weights) });
        Harness {
            shared,
            _node: node,
            _runtime: runtime,
        }
    })
}

thread_local! {
    static SESSION_RUNTIME: Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("session runtime");
}

/// What one unit of the input asks for, before a prefix is chosen.
enum Choice<'a> {
    Template { index: usize, unit: &'a [u8] },
    Raw(Vec<u8>),
}

fn choices(stream: &[u8]) -> Vec<Choice<'_>> {
    stream
        .split(|&b| b == b'\n')
        .filter(|unit| !unit.is_empty())
        .take(MAX_UNITS)
        .map(|unit| {
            let pick = usize::from(unit[0]) % (TEMPLATES.len() + RAW_SLOTS);
            if pick < TEMPLATES.len() {
                Choice::Template { index: pick, unit }
            } else {
                Choice::Raw(raw_line(&unit[1..]))
            }
        })
        .collect()
}

/// `bytes` as one printable line ending in CRLF, defused (see the module
/// doc).
fn raw_line(bytes: &[u8]) -> Vec<u8> {
    let mut line: Vec<u8> = bytes
        .iter()
        .take(MAX_RAW)
        .map(|&b| if (0x20..0x7f).contains(&b) { b } else { b'.' })
        .collect();
    let verb = line
        .split(|&b| b == b' ')
        .find(|w| !w.is_empty())
        .unwrap_or(&[]);
    if DEFUSED_VERBS.contains(&verb) {
        line.insert(0, b'x');
    }
    line.extend_from_slice(b"\r\n");
    line
}

/// A template unit's arguments under `prefix`.
fn args(unit: &[u8], prefix: &str) -> Args {
    let keys = unit.get(1).copied().unwrap_or(0);
    let (num, rest) = match unit.get(2..10) {
        Some(eight) => (
            u64::from_le_bytes(eight.try_into().expect("eight bytes")),
            &unit[10..],
        ),
        None => (
            unit.get(2).copied().map_or(0, u64::from),
            unit.get(3..).unwrap_or(&[]),
        ),
    };
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let value = rest
        .iter()
        .take(MAX_VALUE_BYTES)
        .map(|&b| char::from(ALPHABET[usize::from(b) % ALPHABET.len()]))
        .collect();
    Args {
        key: format!("{prefix}{}", KEYS[usize::from(keys) % KEYS.len()]),
        key2: format!("{prefix}{}", KEYS[usize::from(keys >> 4) % KEYS.len()]),
        num,
        value,
        opaque: u16::from_le_bytes([keys, unit.get(2).copied().unwrap_or(0)]),
    }
}

fn units(choices: &[Choice<'_>], prefix: &str) -> Vec<Unit> {
    let mut units: Vec<Unit> = choices
        .iter()
        .map(|choice| match choice {
            Choice::Template { index, unit } => Unit::of(&TEMPLATES[*index], &args(unit, prefix)),
            Choice::Raw(line) => Unit {
                name: "raw",
                bytes: line.clone(),
                closes: false,
            },
        })
        .collect();
    pipeline::up_to_close(&mut units);
    units
}

fuzz_target!(|data: &[u8]| {
    let Some((&size, stream)) = data.split_first() else {
        return;
    };
    let piece = match size {
        0 => 0,
        n => usize::from(n % 64) + 1,
    };
    let pieces = [piece];
    let choices = choices(stream);
    if choices.is_empty() {
        return;
    }
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let (piped_prefix, one_prefix) = (format!("f{run:010}p:"), format!("f{run:010}s:"));
    let piped_units = units(&choices, &piped_prefix);
    let one_units = units(&choices, &one_prefix);
    debug_assert_eq!(
        piped_units.iter().map(|u| u.name).collect::<Vec<_>>(),
        one_units.iter().map(|u| u.name).collect::<Vec<_>>()
    );
    let shared = &harness().shared;

    let (piped, one) = SESSION_RUNTIME.with(|rt| {
        rt.block_on(async {
            let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
            let (client, server) = tokio::io::duplex(PIPE_BUFFER);
            let session =
                shoal_proxy::session::serve_io(server, shared.clone(), shutdown_rx.clone());
            let run = pipeline::pipelined(client, &piped_units, &pieces, RUN_BOUND);
            let ((), piped) = tokio::join!(session, run);
            let piped = piped.unwrap_or_else(|e| panic!("{e}"));

            let (client, server) = tokio::io::duplex(PIPE_BUFFER);
            let session = shoal_proxy::session::serve_io(server, shared.clone(), shutdown_rx);
            let run = async {
                tokio::time::timeout(RUN_BOUND, pipeline::one_at_a_time(client, &one_units))
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!("one at a time: not done within {RUN_BOUND:?}"))
                    })
            };
            let ((), one) = tokio::join!(session, run);
            drop(shutdown_tx);
            (piped, one.unwrap_or_else(|e| panic!("{e}")))
        })
    });

    let piped = pipeline::normalize(&piped, &piped_prefix);
    let alone = pipeline::normalize(&one.concat(), &one_prefix);
    assert!(
        piped == alone,
        "pipelined replies differ from one-at-a-time replies\n{}",
        pipeline::explain(&one_units, &one, &one_prefix, &piped)
    );
    if let Some(e) = pipeline::unanswered_refusal(&one_units, &one) {
        panic!("{e}");
    }
});
