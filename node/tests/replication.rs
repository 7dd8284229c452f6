//! Replication end to end: two real [`Node`]s on `127.0.0.1:0`. Node A's
//! vbuckets are active, node B's replicas (set through the engine, as the
//! cluster manager does); a [`Replicator`] on B streams them from A over
//! A's data port, and every write goes through a real binary client
//! connection to A.
//!
//! - live writes, overwrites and deletions reach B with A's seqnos and
//!   CAS; B acknowledges them to A's durability monitor; GET_REPLICA on B
//!   serves them (and A, whose vbuckets are active, refuses it);
//! - a replica started after the writes backfills from disk (A's flusher
//!   ran, so A's queue no longer holds them), then follows from memory;
//! - a replica whose history is not A's rolls back to 0 and streams again;
//! - with a TLS transport, B's streams reach A's TLS data port (a CA made
//!   for the test) and replicate the same;
//! - a raw DCP client sees the producer's side of the protocol: flow
//!   control holds the stream at the window until BUFFER_ACKs return it,
//!   and stream requests are refused, rolled back, closed and ended as
//!   they should be.
//!
//! Every wait polls with a deadline; nothing sleeps a fixed time.

mod common;

use common::TestDir;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use shoal_engine::{CursorStart, EngineError, Lookup, VbucketId, VbucketState};
use shoal_net::local_ca::LocalCa;
use shoal_net::{TlsConnector, TlsFiles};
use shoal_node::bucket::LiveBucket;
use shoal_node::replication::consumer::Replicator;
use shoal_node::transport::{PeerPorts, Transport};
use shoal_node::{Node, NodeConfig};
use shoal_protocol::binary::dcp::{
    encode_buffer_ack, encode_close_stream, encode_control, encode_noop, encode_open,
    encode_stream_req, OpenFlags, StreamEndStatus, StreamReq, StreamReqFlags,
};
use shoal_protocol::binary::{
    encode_request, parse_dcp, DcpMessage, Opcode, RequestFields, Status,
};
use shoal_protocol::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A reply, or a state, that does not come within this is a hang.
const DEADLINE: Duration = Duration::from_secs(30);

const NUM_VBUCKETS: u16 = 16;

/// Binary opcodes and statuses used here.
const SET: u8 = 0x01;
const DELETE: u8 = 0x04;
const GET_REPLICA: u8 = 0x83;
const OK: u16 = 0x00;
const KEY_NOT_FOUND: u16 = 0x01;
const NOT_MY_VBUCKET: u16 = 0x07;

// === helpers ===

/// A standalone node (every vbucket active, bucket `default`) in `dir`.
async fn start(dir: &Path) -> (Node, Arc<LiveBucket>) {
    start_with(dir, NodeConfig::default()).await
}

/// [`start`] with the other settings of `config`.
async fn start_with(dir: &Path, config: NodeConfig) -> (Node, Arc<LiveBucket>) {
    let node = Node::start(NodeConfig {
        data_dir: dir.to_path_buf(),
        port: 0,
        admin_port: 0,
        standalone: true,
        num_vbuckets: usize::from(NUM_VBUCKETS),
        ram_quota_mb: 64,
        ..config
    })
    .await
    .expect("start the node");
    node.ready().await.expect("warm up");
    let ctx = node.default_bucket().expect("bucket default");
    (node, ctx)
}

/// Node A (active) and node B (every vbucket a replica), and B's
/// replicator, not streaming yet.
struct Pair {
    a: Node,
    a_ctx: Arc<LiveBucket>,
    b: Node,
    b_ctx: Arc<LiveBucket>,
    replicator: Replicator,
    _dirs: (TestDir, TestDir),
}

impl Pair {
    async fn start(name: &str) -> Pair {
        Pair::start_with(name, false).await
    }

    /// With `tls`, both nodes have a TLS data port and B's streams reach
    /// A's over TLS only, checking its certificate against a CA made for
    /// the test.
    async fn start_with(name: &str, tls: bool) -> Pair {
        let (da, db) = (
            TestDir::new("replication", &format!("{name}-a")),
            TestDir::new("replication", &format!("{name}-b")),
        );
        let ca = tls.then(|| LocalCa::ensure(&da.path().join("tls"), &["127.0.0.1"]).unwrap());
        let config = || NodeConfig {
            tls: ca.as_ref().map(|ca| TlsFiles {
                cert: ca.cert.clone(),
                key: ca.key.clone(),
            }),
            tls_port: tls.then_some(0),
            ..NodeConfig::default()
        };
        let (a, a_ctx) = start_with(da.path(), config()).await;
        let (b, b_ctx) = start_with(db.path(), config()).await;
        for vb in 0..NUM_VBUCKETS {
            b_ctx
                .engine
                .set_vbucket_state(vb, VbucketState::Replica)
                .expect("replica");
        }
        let transport = match &ca {
            None => Transport::plain(),
            Some(ca) => {
                let tls = Transport::tls(TlsConnector::trusting(&ca.ca).unwrap());
                let (plain, secure) = (a.data_addr(), a.tls_data_addr().unwrap());
                tls.add(&PeerPorts {
                    host: plain.ip().to_string(),
                    data: plain.port(),
                    admin: a.admin_addr().port(),
                    tls_data: Some(secure.port()),
                    tls_admin: None,
                });
                tls
            }
        };
        // b's streams log in to a as the cluster: with a's secret.
        let replicator = Replicator::new(
            b.data_addr().to_string(),
            a.cluster_secret().clone(),
            transport,
        );
        Pair {
            a,
            a_ctx,
            b,
            b_ctx,
            replicator,
            _dirs: (da, db),
        }
    }

    /// B streams every vbucket from A.
    fn stream(&self) {
        let all: Vec<VbucketId> = (0..NUM_VBUCKETS).collect();
        let sources = BTreeMap::from([(self.a.data_addr().to_string(), all)]);
        self.replicator
            .set_streams(self.b_ctx.clone(), sources, false);
    }

    /// Waits until B has every seqno A has, in every vbucket.
    async fn converged(&self) {
        let (a, b) = (&self.a_ctx.engine, &self.b_ctx.engine);
        eventually("B catches up with A", || {
            (0..NUM_VBUCKETS).all(|vb| a.high_seqno(vb) == b.high_seqno(vb))
        })
        .await;
    }

    /// A pair whose B streamed a first batch of writes from A, caught up
    /// and stopped streaming; with A's client and the model.
    async fn replicated_then_cut(name: &str) -> (Pair, Client, Model) {
        let pair = Pair::start(name).await;
        let mut client = Client::connect(&pair.a).await;
        let mut model = Model::new();
        write_batch(&mut client, &mut model, "first-", 100).await;
        pair.stream();
        pair.converged().await;
        pair.replicator.stop_all();
        (pair, client, model)
    }

    /// Writes a second batch to A, streams again and checks that B holds
    /// everything A does.
    async fn resume(&self, client: &mut Client, model: &mut Model) {
        write_batch(client, model, "second-", 100).await;
        self.stream();
        self.converged().await;
        assert_replicated(&self.a_ctx, &self.b_ctx, model);
    }

    async fn shutdown(self) {
        self.replicator.stop_all();
        self.b.shutdown().await.expect("stop B");
        self.a.shutdown().await.expect("stop A");
    }
}

/// Polls `ready` every 10 ms until it holds; fails the test after
/// [`DEADLINE`].
async fn eventually(what: &str, mut ready: impl FnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + DEADLINE;
    while !ready() {
        assert!(tokio::time::Instant::now() < give_up, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A binary request frame.
fn frame(opcode: u8, extras: &[u8], key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 24];
    f[0] = 0x80;
    f[1] = opcode;
    f[2..4].copy_from_slice(&(key.len() as u16).to_be_bytes());
    f[4] = extras.len() as u8;
    let body = extras.len() + key.len() + value.len();
    f[8..12].copy_from_slice(&(body as u32).to_be_bytes());
    f[12..16].copy_from_slice(&0xfeed_u32.to_be_bytes());
    f.extend_from_slice(extras);
    f.extend_from_slice(key);
    f.extend_from_slice(value);
    f
}

/// One binary reply.
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    status: u16,
    cas: u64,
    extras: Vec<u8>,
    value: Vec<u8>,
}

/// A binary client on bucket `default`.
struct Client(TcpStream);

impl Client {
    async fn connect(node: &Node) -> Client {
        let stream = TcpStream::connect(node.data_addr()).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Client(stream)
    }

    async fn call(&mut self, request: Vec<u8>) -> Reply {
        self.0.write_all(&request).await.expect("send");
        let mut h = [0u8; 24];
        tokio::time::timeout(DEADLINE, self.0.read_exact(&mut h))
            .await
            .expect("reply in time")
            .expect("reply");
        assert_eq!(h[0], 0x81, "response magic");
        let body = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize;
        let (extras, key) = (
            usize::from(h[4]),
            usize::from(u16::from_be_bytes([h[2], h[3]])),
        );
        let mut rest = vec![0u8; body];
        tokio::time::timeout(DEADLINE, self.0.read_exact(&mut rest))
            .await
            .expect("body in time")
            .expect("body");
        Reply {
            status: u16::from_be_bytes([h[6], h[7]]),
            cas: u64::from_be_bytes(h[16..24].try_into().expect("8 bytes")),
            extras: rest[..extras].to_vec(),
            value: rest[extras + key..].to_vec(),
        }
    }

    async fn set(&mut self, key: &str, value: &str, flags: u32) {
        let mut extras = flags.to_be_bytes().to_vec();
        extras.extend_from_slice(&0u32.to_be_bytes());
        let reply = self
            .call(frame(SET, &extras, key.as_bytes(), value.as_bytes()))
            .await;
        assert_eq!(reply.status, OK, "set {key}");
    }

    async fn delete(&mut self, key: &str) {
        let reply = self.call(frame(DELETE, &[], key.as_bytes(), b"")).await;
        assert_eq!(reply.status, OK, "delete {key}");
    }

    async fn get_replica(&mut self, key: &str) -> Reply {
        self.call(frame(GET_REPLICA, &[], key.as_bytes(), b""))
            .await
    }
}

/// What the test wrote: key → (value, flags), `None` once deleted.
type Model = BTreeMap<String, Option<(String, u32)>>;

/// Writes `n` keys `{prefix}{i}`, overwrites every fifth, deletes every
/// seventh.
async fn write_batch(client: &mut Client, model: &mut Model, prefix: &str, n: usize) {
    for i in 0..n {
        let key = format!("{prefix}{i}");
        let value = format!("value-{i}-{}", "x".repeat(i % 50));
        client.set(&key, &value, i as u32).await;
        model.insert(key, Some((value, i as u32)));
    }
    for i in (0..n).step_by(5) {
        let key = format!("{prefix}{i}");
        let value = format!("again-{i}");
        client.set(&key, &value, 7).await;
        model.insert(key, Some((value, 7)));
    }
    for i in (0..n).step_by(7) {
        let key = format!("{prefix}{i}");
        client.delete(&key).await;
        model.insert(key, None);
    }
}

/// B holds every key of `model` as A does: same value, flags, CAS and
/// seqno; deleted keys are gone from both.
fn assert_replicated(a: &LiveBucket, b: &LiveBucket, model: &Model) {
    let now = a.clock.now();
    for (key, want) in model {
        let vb = a.vbucket_of(key.as_bytes());
        let on_a = a.engine.get(vb, key.as_bytes(), now);
        let on_b = b.engine.get_replica(vb, key.as_bytes(), now);
        match want {
            None => {
                assert_eq!(on_a, Err(EngineError::NotFound), "{key} deleted on A");
                assert_eq!(on_b, Err(EngineError::NotFound), "{key} deleted on B");
            }
            Some((value, flags)) => {
                let Ok(Lookup::Hit(hit_a)) = on_a else {
                    panic!("{key} on A: {on_a:?}");
                };
                let Ok(Lookup::Hit(hit_b)) = on_b else {
                    panic!("{key} on B: {on_b:?}");
                };
                assert_eq!(hit_a.value, value.as_bytes(), "{key} on A");
                assert_eq!(hit_b, hit_a, "{key}: B's copy differs from A's");
                assert_eq!(hit_b.flags, *flags);
            }
        }
    }
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_streams_over_tls_when_the_transport_asks_for_it() {
    let pair = Pair::start_with("tls", true).await;
    pair.stream();
    let mut client = Client::connect(&pair.a).await;
    let mut model = Model::new();
    write_batch(&mut client, &mut model, "tls-", 200).await;
    pair.converged().await;
    assert_replicated(&pair.a_ctx, &pair.b_ctx, &model);
    // The stream came in on A's TLS port: its handshake counted nowhere
    // as a failure, and A served it as a connection of the cluster.
    let stats = pair.a.buckets().stats();
    assert_eq!(stats.tls_handshake_failures.load(Ordering::Relaxed), 0);
    assert!(stats.system_connections.load(Ordering::Relaxed) >= 1);
    pair.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_writes_and_deletions_reach_the_replica_with_their_seqnos_and_cas() {
    let pair = Pair::start("live").await;
    pair.stream();
    eventually("B's stream connects", || {
        pair.replicator.streams().iter().all(|s| s.3) && !pair.replicator.streams().is_empty()
    })
    .await;
    let mut client = Client::connect(&pair.a).await;
    let mut model = Model::new();
    write_batch(&mut client, &mut model, "live-", 300).await;
    pair.converged().await;
    assert_replicated(&pair.a_ctx, &pair.b_ctx, &model);

    // B acknowledged every seqno to A's durability monitor, under its name.
    let me = pair.b.data_addr().to_string();
    let (a, durability) = (&pair.a_ctx.engine, &pair.a_ctx.durability);
    eventually("A hears B's acknowledgements", || {
        (0..NUM_VBUCKETS).all(|vb| {
            let acked = durability.snapshot(vb).map_or(0, |s| s.acked_by(&me));
            Some(acked) == a.high_seqno(vb)
        })
    })
    .await;

    // GET_REPLICA on B serves the copies; A's vbuckets are not replicas.
    let mut on_b = Client::connect(&pair.b).await;
    let now = pair.a_ctx.clock.now();
    for (key, want) in model.iter().take(40) {
        let reply = on_b.get_replica(key).await;
        match want {
            Some((value, flags)) => {
                let vb = pair.a_ctx.vbucket_of(key.as_bytes());
                let Ok(Lookup::Hit(hit)) = a.get(vb, key.as_bytes(), now) else {
                    panic!("{key} on A");
                };
                assert_eq!(
                    reply,
                    Reply {
                        status: OK,
                        cas: hit.cas,
                        extras: flags.to_be_bytes().to_vec(),
                        value: value.as_bytes().to_vec(),
                    },
                    "{key}"
                );
            }
            None => assert_eq!(reply.status, KEY_NOT_FOUND, "{key}"),
        }
    }
    let mut on_a = Client::connect(&pair.a).await;
    assert_eq!(on_a.get_replica("live-1").await.status, NOT_MY_VBUCKET);

    let counters = pair.replicator.counters("default").expect("counters");
    assert!(counters.messages.load(Ordering::Relaxed) > 0);
    assert!(counters.snapshots.load(Ordering::Relaxed) > 0);
    pair.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_replica_backfills_from_disk_then_follows_from_memory() {
    let pair = Pair::start("backfill").await;
    let mut client = Client::connect(&pair.a).await;
    let mut model = Model::new();
    write_batch(&mut client, &mut model, "disk-", 300).await;
    // Over 8 MiB in one vbucket: more than one backfill chunk.
    let big = "b".repeat(600 * 1024);
    let mut in_vb0 = (0..)
        .map(|i| format!("big-{i}"))
        .filter(|k| pair.a_ctx.vbucket_of(k.as_bytes()) == 0);
    for key in in_vb0.by_ref().take(16) {
        client.set(&key, &big, 1).await;
        model.insert(key, Some((big.clone(), 1)));
    }
    let flusher_ctx = pair.a_ctx.clone();
    tokio::task::spawn_blocking(move || flusher_ctx.flusher.flush_now())
        .await
        .expect("flush task")
        .expect("flush A");
    // Nothing keeps A's flushed mutations queued: a stream from 0 must
    // start with a backfill from disk.
    let noop: shoal_engine::CursorWake = Arc::new(|| {});
    let backfills = (0..NUM_VBUCKETS)
        .filter(|&vb| {
            let (id, start) = pair
                .a_ctx
                .engine
                .open_cursor(vb, 0, noop.clone())
                .expect("cursor");
            pair.a_ctx.engine.close_cursor(vb, id);
            matches!(start, CursorStart::Backfill { .. })
        })
        .count();
    assert!(backfills > 0, "no vbucket needs a backfill");
    // Written after the flush: these may still be in A's queue.
    write_batch(&mut client, &mut model, "mem-", 50).await;

    pair.stream();
    pair.converged().await;
    assert_replicated(&pair.a_ctx, &pair.b_ctx, &model);

    // Then the live stream.
    write_batch(&mut client, &mut model, "after-", 100).await;
    pair.converged().await;
    assert_replicated(&pair.a_ctx, &pair.b_ctx, &model);
    pair.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_another_history_rolls_back_and_streams_again() {
    let (pair, mut client, mut model) = Pair::replicated_then_cut("rollback").await;
    // B's copies now claim a history A never had (as if B had been
    // promoted and taken writes while cut off).
    for vb in 0..NUM_VBUCKETS {
        pair.b_ctx.adopt_failover_log(vb, vec![(0xdead_beef, 0)]);
    }
    pair.resume(&mut client, &mut model).await;
    let counters = pair.replicator.counters("default").expect("counters");
    assert!(
        counters.rollbacks.load(Ordering::Relaxed) > 0,
        "B rolled back"
    );
    // B now carries A's history.
    for vb in 0..NUM_VBUCKETS {
        assert_eq!(
            pair.b_ctx.engine.failover_log(vb),
            pair.a_ctx.engine.failover_log(vb),
            "vbucket {vb}"
        );
    }
    pair.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_dropped_and_made_replica_again_streams_everything_again() {
    let (pair, mut client, mut model) = Pair::replicated_then_cut("dropped").await;
    // B's copies move away and are dropped (a rebalance that stopped),
    // then come back as replicas (the next rebalance): their seqnos carry
    // on, but nothing below them is there any more.
    let b = &pair.b_ctx.engine;
    for vb in 0..NUM_VBUCKETS {
        b.delete_vbucket(vb).expect("drop");
        b.set_vbucket_state(vb, VbucketState::Replica)
            .expect("replica");
    }
    assert_eq!(b.curr_items(), 0);
    pair.resume(&mut client, &mut model).await;
    pair.shutdown().await;
}

/// A raw DCP connection, for what the Shoal consumer never does on purpose.
struct RawDcp {
    stream: TcpStream,
    rbuf: BytesMut,
    /// Bytes read and not yet acknowledged.
    unacked: usize,
}

impl RawDcp {
    /// Opens a producer connection on `node`'s bucket `default` with a
    /// window of `buffer` bytes; expects both replies.
    async fn open(node: &Node, buffer: usize) -> RawDcp {
        let stream = TcpStream::connect(node.data_addr()).await.expect("connect");
        let mut dcp = RawDcp {
            stream,
            rbuf: BytesMut::new(),
            unacked: 0,
        };
        // Only the cluster opens DCP streams: log in with its secret.
        let mut out = BytesMut::new();
        let hex = node.cluster_secret().current().to_hex();
        let login = shoal_auth::plain::encode("@cluster", &hex);
        let fields = RequestFields::new(Opcode::SaslAuth);
        encode_request(&mut out, &fields, &[], b"PLAIN", &login).unwrap();
        dcp.send(&out).await;
        let reply = dcp.next().await.expect("login reply");
        assert!(
            matches!(&reply, DcpMessage::Reply(r) if r.header.status == Status::OK),
            "{reply:?}"
        );
        let mut out = BytesMut::new();
        encode_open(&mut out, 1, 0, OpenFlags::PRODUCER, b"replica:raw").unwrap();
        encode_control(
            &mut out,
            2,
            b"connection_buffer_size",
            buffer.to_string().as_bytes(),
        )
        .unwrap();
        dcp.send(&out).await;
        for opcode in [Opcode::DcpOpen, Opcode::DcpControl] {
            let reply = dcp.next().await.expect("reply");
            assert!(
                matches!(reply, DcpMessage::Reply(r) if r.header.opcode == opcode && r.header.status == Status::OK),
                "{reply:?}"
            );
        }
        dcp
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    async fn request(&mut self, vb: VbucketId, opaque: u32, start: u64, uuid: u64) {
        self.request_with(vb, opaque, start, uuid, StreamReqFlags(0))
            .await;
    }

    async fn request_with(
        &mut self,
        vb: VbucketId,
        opaque: u32,
        start: u64,
        uuid: u64,
        flags: StreamReqFlags,
    ) {
        let mut out = BytesMut::new();
        encode_stream_req(
            &mut out,
            &StreamReq {
                vbucket: vb,
                opaque,
                flags,
                start_seqno: start,
                end_seqno: u64::MAX,
                vbucket_uuid: uuid,
                snap_start_seqno: start,
                snap_end_seqno: start,
            },
        );
        self.send(&out).await;
    }

    /// The next message, or `None` if nothing comes for `quiet`. Message
    /// spans are not kept: tests look at fixed fields only.
    async fn next_within(&mut self, quiet: Duration) -> Option<DcpMessage> {
        loop {
            if let Some((msg, used)) = parse_dcp(&self.rbuf, &Limits::default()).expect("valid DCP")
            {
                self.rbuf.advance(used);
                self.unacked += used;
                return Some(msg);
            }
            match tokio::time::timeout(quiet, self.stream.read_buf(&mut self.rbuf)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => panic!("the producer closed the connection"),
                Ok(Ok(_)) => {}
            }
        }
    }

    async fn next(&mut self) -> Option<DcpMessage> {
        self.next_within(DEADLINE).await
    }

    /// The next reply (typed or not) with this opaque, skipping stream
    /// traffic.
    async fn reply_to(&mut self, opaque: u32) -> DcpMessage {
        loop {
            let msg = self.next().await.expect("a reply");
            let reply = matches!(
                msg,
                DcpMessage::Reply(_)
                    | DcpMessage::StreamAccepted { .. }
                    | DcpMessage::StreamRollback { .. }
            );
            if reply && msg.opaque() == opaque {
                return msg;
            }
        }
    }

    /// Returns every byte read so far to the producer.
    async fn ack(&mut self) {
        let mut out = BytesMut::new();
        encode_buffer_ack(&mut out, 0, self.unacked as u32);
        self.unacked = 0;
        self.send(&out).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_holds_the_stream_at_the_window_and_answers_stream_requests() {
    let dir = TestDir::new("replication", "raw");
    let (node, ctx) = start(dir.path()).await;
    let mut client = Client::connect(&node).await;
    let value = "v".repeat(1000);
    let keys = 1000;
    for i in 0..keys {
        client.set(&format!("key-{i}"), &value, 0).await;
    }

    // The smallest window: 64 KiB. Without acknowledgements the producer
    // stops after the window plus at most one stream's turn (64 KiB and a
    // value) and a few control frames.
    let window = 64 * 1024;
    let mut dcp = RawDcp::open(&node, window).await;
    for vb in 0..NUM_VBUCKETS {
        dcp.request(vb, 0x100 + u32::from(vb), 0, 0).await;
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut accepted = 0;
    let mut count = |msg: &DcpMessage, seen: &mut std::collections::BTreeSet<u64>| match msg {
        DcpMessage::StreamAccepted { .. } => accepted += 1,
        DcpMessage::Mutation(m) => {
            seen.insert(u64::from(m.fields.vbucket) << 32 | m.fields.by_seqno);
        }
        _ => {}
    };
    let mut stalled_at = 0;
    while let Some(msg) = dcp.next_within(Duration::from_millis(300)).await {
        count(&msg, &mut seen);
        stalled_at = dcp.unacked;
    }
    assert!(stalled_at > 0, "something was sent");
    assert!(
        stalled_at <= window + 64 * 1024 + 4 * 1024,
        "the producer ran past its window: {stalled_at} bytes unacknowledged"
    );
    assert!(seen.len() < keys, "held back before the end");
    // Acknowledging lets the rest through.
    while seen.len() < keys {
        dcp.ack().await;
        let msg = dcp.next().await.expect("more after an ack");
        count(&msg, &mut seen);
    }
    assert_eq!(accepted, NUM_VBUCKETS);

    // A second request for a streaming vbucket is refused.
    dcp.ack().await;
    dcp.request(1, 0x999, 0, 0).await;
    let reply = dcp.reply_to(0x999).await;
    assert!(
        matches!(reply, DcpMessage::Reply(r) if r.header.status == Status::KEY_EXISTS),
        "{reply:?}"
    );
    // CLOSE_STREAM closes it; asked again with a history A never had, it
    // must roll back to 0.
    let mut out = BytesMut::new();
    encode_close_stream(&mut out, 2, 0x55);
    dcp.send(&out).await;
    let closed = dcp.reply_to(0x55).await;
    assert!(
        matches!(closed, DcpMessage::Reply(r) if r.header.opcode == Opcode::DcpCloseStream && r.header.status == Status::OK),
        "{closed:?}"
    );
    dcp.request(2, 0x998, 5, 0xbad).await;
    assert_eq!(
        dcp.reply_to(0x998).await,
        DcpMessage::StreamRollback {
            opaque: 0x998,
            seqno: 0
        }
    );

    // A vbucket that dies under its stream ends it; a dead one is refused
    // to a consumer that follows actives only (a replica), and served to
    // one that does not (a takeover fetching the old active's last writes).
    ctx.engine
        .set_vbucket_state(3, VbucketState::Dead)
        .expect("dead");
    let mut out = BytesMut::new();
    encode_noop(&mut out, 0x77);
    dcp.send(&out).await;
    let ended = loop {
        match dcp.next().await.expect("stream end") {
            DcpMessage::StreamEnd {
                vbucket, status, ..
            } => break (vbucket, status),
            _ => continue,
        }
    };
    assert_eq!(ended, (3, StreamEndStatus::STATE_CHANGED));
    dcp.request_with(3, 0x333, 0, 0, StreamReqFlags::ACTIVE_VB_ONLY)
        .await;
    let refused = dcp.reply_to(0x333).await;
    assert!(
        matches!(refused, DcpMessage::Reply(r) if r.header.status == Status::NOT_MY_VBUCKET),
        "{refused:?}"
    );
    dcp.request(3, 0x334, 0, 0).await;
    let served = dcp.reply_to(0x334).await;
    assert!(
        matches!(served, DcpMessage::StreamAccepted { opaque: 0x334, .. }),
        "{served:?}"
    );
    node.shutdown().await.expect("stop");
}
