//! A pipelined client stays in step through the proxy: for a generated
//! stream mixing accepted and refused requests of all three protocols
//! (classic ASCII, meta, binary; see `pipeline/mod.rs` for the vocabulary),
//! sending the whole stream at once, cut into random pieces, gives exactly
//! the bytes that sending each request alone and waiting for its reply
//! gives. So every request gets exactly its own reply, in order, whatever
//! is refused along the way; and every refused request is answered.
//!
//! The proxy and its node run in this process, as `shoal proxy --servers`
//! and `shoal node --standalone` would: a real node (its data port, bucket
//! `default` on disk in a throwaway directory) behind a real proxy with a
//! static map. Each case runs twice on fresh client connections: pipelined
//! under one key prefix, then one at a time under another of the same
//! length, so both start from the same (empty) data; CAS values and the
//! prefix are normalised away before the comparison. A request after which
//! the connection may close (`quit`, an over-long line…) only ever ends a
//! stream.
//!
//! The seed is fixed and the case count small, so the test takes seconds
//! (`PROPTEST_RNG_SEED` and `PROPTEST_CASES` change them); a failure prints
//! the shrunk stream, each request's reply alone and the pipelined
//! replies.

mod common;
mod pipeline;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use shoal_node::{Node, NodeConfig};
use shoal_proxy::Proxy;
use shoal_vbmap::config::ServerAddr;
use tokio::net::TcpStream;

use common::TestDir;
use pipeline::{Args, Kind, Unit, KEYS, MAX_VALUE};

/// Cases per run: each is two runs of up to 25 requests.
const CASES: u32 = 128;

/// The seed when `PROPTEST_RNG_SEED` does not give one.
const SEED: u64 = 0x5EED_F10A_7ED5;

/// How long shrinking a failure may take, ms.
const SHRINK_BOUND_MS: u32 = 60_000;

/// Longest stream before the closing request.
const MAX_REQUESTS: usize = 24;

/// How long a whole pipelined stream may take (a hang bound, not an
/// expectation).
const STREAM_BOUND: Duration = Duration::from_secs(30);

/// How long start-up and warmup may take.
const START_BOUND: Duration = Duration::from_secs(60);

/// One generated request: which template, and its arguments.
#[derive(Clone, Debug)]
struct Request {
    template: usize,
    key: usize,
    key2: usize,
    num: u64,
    value: String,
    opaque: u16,
}

/// A case: the requests, an optional closing one, and the piece sizes the
/// pipelined run cuts the stream into.
#[derive(Clone, Debug)]
struct Case {
    requests: Vec<Request>,
    pieces: Vec<usize>,
}

impl Case {
    /// The stream under `prefix`.
    fn units(&self, prefix: &str) -> Vec<Unit> {
        let mut units: Vec<Unit> = self
            .requests
            .iter()
            .map(|r| {
                let args = Args {
                    key: format!("{prefix}{}", KEYS[r.key]),
                    key2: format!("{prefix}{}", KEYS[r.key2]),
                    num: r.num,
                    value: r.value.clone(),
                    opaque: r.opaque,
                };
                Unit::of(&pipeline::TEMPLATES[r.template], &args)
            })
            .collect();
        pipeline::up_to_close(&mut units);
        units
    }
}

fn request(templates: Vec<usize>) -> impl Strategy<Value = Request> {
    (
        prop::sample::select(templates),
        0..KEYS.len(),
        0..KEYS.len(),
        prop_oneof![0u64..30, any::<u64>()],
        "[a-z0-9]{0,24}",
        any::<u16>(),
    )
        .prop_map(|(template, key, key2, num, value, opaque)| Request {
            template,
            key,
            key2,
            num,
            value,
            opaque,
        })
}

fn indices(kinds: &[Kind]) -> Vec<usize> {
    (0..pipeline::TEMPLATES.len())
        .filter(|&i| kinds.contains(&pipeline::TEMPLATES[i].kind))
        .collect()
}

fn case() -> impl Strategy<Value = Case> {
    let body = prop::collection::vec(
        request(indices(&[Kind::Accepted, Kind::Refused])),
        1..=MAX_REQUESTS,
    );
    let last = prop::option::weighted(0.25, request(indices(&[Kind::Closing])));
    // Piece sizes: mostly small, to cut through requests; 0 is "the rest".
    let pieces = prop::collection::vec(prop_oneof![1usize..8, 8usize..200, Just(0)], 1..6);
    (body, last, pieces).prop_map(|(mut requests, last, pieces)| {
        requests.extend(last);
        Case { requests, pieces }
    })
}

/// A node and the proxy in front of it.
struct Cluster {
    /// Removed when the test ends.
    _dir: TestDir,
    node: Node,
    proxy: Proxy,
}

async fn start(dir: TestDir) -> Cluster {
    let node = Node::start(NodeConfig {
        data_dir: dir.path().join("node"),
        port: 0,
        admin_port: 0,
        standalone: true,
        num_vbuckets: 64,
        ram_quota_mb: 64,
        max_value_len: MAX_VALUE,
        ..NodeConfig::default()
    })
    .await
    .expect("start the node");
    node.ready().await.expect("node warms up");
    let server = ServerAddr::parse(&node.data_addr().to_string()).expect("node address");
    let config = pipeline::proxy_config(server);
    let proxy = Proxy::start(config).await.expect("start the proxy");
    proxy.ready().await;
    Cluster {
        _dir: dir,
        node,
        proxy,
    }
}

/// Runs `case` both ways through the proxy at `addr` and compares.
async fn check(addr: SocketAddr, case: &Case) -> Result<(), TestCaseError> {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let (piped_prefix, one_prefix) = (format!("r{run:06}p:"), format!("r{run:06}s:"));
    let piped_units = case.units(&piped_prefix);
    let one_units = case.units(&one_prefix);

    let conn = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    conn.set_nodelay(true).expect("nodelay");
    let piped = pipeline::pipelined(conn, &piped_units, &case.pieces, STREAM_BOUND)
        .await
        .map_err(TestCaseError::fail)?;

    let conn = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    conn.set_nodelay(true).expect("nodelay");
    let one = pipeline::one_at_a_time(conn, &one_units)
        .await
        .map_err(TestCaseError::fail)?;
    let closes_last = one_units.last().is_some_and(|u| u.closes);
    if one.closed && !closes_last {
        return Err(TestCaseError::fail(format!(
            "the connection closed after request {} ({}), which does not close it\n{}",
            one.each.len() - 1,
            one_units[one.each.len() - 1].name,
            pipeline::explain(&one_units, &one, &one_prefix, &[])
        )));
    }

    if let Some(e) = pipeline::unanswered_refusal(&one_units, &one) {
        return Err(TestCaseError::fail(e));
    }
    let piped = pipeline::normalize(&piped, &piped_prefix);
    let alone = pipeline::normalize(&one.concat(), &one_prefix);
    if piped != alone {
        return Err(TestCaseError::fail(format!(
            "pipelined replies differ from one-at-a-time replies\n{}",
            pipeline::explain(&one_units, &one, &one_prefix, &piped)
        )));
    }
    Ok(())
}

#[test]
fn pipelined_stream_stays_in_step() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let cluster = runtime.block_on(async {
        tokio::time::timeout(START_BOUND, start(TestDir::new("proxy-pipeline")))
            .await
            .expect("node and proxy start in time")
    });
    let addr = cluster.proxy.data_addr();

    // `PROPTEST_CASES` and `PROPTEST_RNG_SEED` set a longer or another
    // run (read, never set, here).
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CASES);
    let mut config = Config {
        cases,
        failure_persistence: None,
        // A failure that depends on timing may not reproduce while
        // shrinking: bound the search, then report the case as found.
        max_shrink_time: SHRINK_BOUND_MS,
        ..Config::default()
    };
    if config.rng_seed == RngSeed::Random {
        config.rng_seed = RngSeed::Fixed(SEED);
    }
    let mut runner = TestRunner::new(config);
    let result = runner.run(&case(), |case| runtime.block_on(check(addr, &case)));
    runtime.block_on(async {
        cluster.proxy.shutdown(Duration::from_secs(5)).await;
        cluster.node.shutdown().await.expect("node stops cleanly");
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
