//! Buckets created and deleted at runtime, end to end: a real [`Node`] on
//! `127.0.0.1:0`, driven through [`Node::buckets`] the way the cluster
//! manager does, and real client connections that pick their bucket with
//! binary SASL PLAIN or SELECT_BUCKET.
//!
//! - one key, a different value in each of three buckets (membase
//!   `default` and `b1`, memcached `m1`), each read back through its own
//!   selection; unknown buckets are refused without losing the selection;
//! - a node without buckets answers "no bucket" until one exists;
//! - a bucket with a password: nothing read or written without it, PLAIN
//!   and SCRAM with it, wrong passwords refused, SELECT_BUCKET refused to
//!   an unauthenticated connection; vbucket commands and DCP refused to
//!   anyone but the cluster;
//! - deleting a bucket closes the connections on it (idle ones at once)
//!   and its data is gone, also after a restart;
//! - a memcached bucket's items do not survive a restart; a membase
//!   bucket's do, once it is created again (warmup).
//!
//! Every wait polls with a deadline; nothing sleeps a fixed time.

mod common;

use common::TestDir;

use std::sync::atomic::Ordering;
use std::time::Duration;

use shoal_node::bucket::{BucketKind, BucketSpec, Durability};
use shoal_node::{Node, NodeConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A reply that does not come within this is a hang: fail the test.
const IO_DEADLINE: Duration = Duration::from_secs(30);

/// SASL_AUTH, SELECT_BUCKET, GET, NOOP, SASL_LIST_MECHS.
const SASL_AUTH: u8 = 0x21;
const SASL_LIST_MECHS: u8 = 0x20;
const SELECT_BUCKET: u8 = 0x89;
const GET: u8 = 0x00;
const NOOP: u8 = 0x0a;

/// Binary statuses.
const OK: u16 = 0x00;
const KEY_NOT_FOUND: u16 = 0x01;
const NO_BUCKET: u16 = 0x08;
const AUTH_ERROR: u16 = 0x20;
const AUTH_CONTINUE: u16 = 0x21;
const NO_ACCESS: u16 = 0x24;

/// SASL_STEP, SET_VBUCKET, DEL_VBUCKET, DCP_OPEN, FLUSH.
const SASL_STEP: u8 = 0x22;
const SET_VBUCKET: u8 = 0x3d;
const DEL_VBUCKET: u8 = 0x3f;
const DCP_OPEN: u8 = 0x50;
const FLUSH: u8 = 0x08;

// === helpers ===

/// A standalone node in `dir`; `default_bucket` as given.
async fn start(dir: &TestDir, default_bucket: bool) -> Node {
    let node = Node::start(NodeConfig {
        data_dir: dir.path().to_path_buf(),
        port: 0,
        admin_port: 0,
        standalone: true,
        num_vbuckets: 16,
        ram_quota_mb: 16,
        default_bucket,
        ..NodeConfig::default()
    })
    .await
    .expect("start the node");
    node.ready().await.expect("warm up");
    node
}

fn spec(name: &str, kind: BucketKind) -> BucketSpec {
    BucketSpec {
        name: name.into(),
        kind,
        ram_quota_mb: 8,
        replicas: 0,
        durability: Durability::None,
        num_vbuckets: 16,
        password: None,
        flush_enabled: true,
    }
}

/// Creates bucket `name` and waits for its warmup.
async fn create(node: &Node, name: &str, kind: BucketKind) {
    node.buckets()
        .create(spec(name, kind))
        .await
        .expect("create");
    node.buckets().ready(name).await.expect("warm up");
}

/// A binary request frame.
fn frame(opcode: u8, key: &[u8], value: &[u8], vbucket: u16) -> Vec<u8> {
    let mut f = vec![0u8; 24];
    f[0] = 0x80;
    f[1] = opcode;
    f[2..4].copy_from_slice(&(key.len() as u16).to_be_bytes());
    f[6..8].copy_from_slice(&vbucket.to_be_bytes());
    f[8..12].copy_from_slice(&((key.len() + value.len()) as u32).to_be_bytes());
    f[12..16].copy_from_slice(&0xfeed_u32.to_be_bytes());
    f.extend_from_slice(key);
    f.extend_from_slice(value);
    f
}

/// A client connection with a read buffer.
struct Client {
    stream: BufReader<TcpStream>,
}

/// One binary reply: opcode, status and value.
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    opcode: u8,
    status: u16,
    value: Vec<u8>,
}

impl Client {
    async fn connect(node: &Node) -> Client {
        let stream = TcpStream::connect(node.data_addr()).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        Client {
            stream: BufReader::new(stream),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.expect("send");
    }

    /// One reply line, without its `\r\n`.
    async fn line(&mut self) -> String {
        let mut line = String::new();
        let read = tokio::time::timeout(IO_DEADLINE, self.stream.read_line(&mut line)).await;
        assert!(
            matches!(read, Ok(Ok(n)) if n > 0),
            "no reply line: {read:?}"
        );
        line.trim_end().to_owned()
    }

    /// Sends `request` and reads one binary reply.
    async fn binary(&mut self, request: Vec<u8>) -> Reply {
        self.send(&request).await;
        let mut h = [0u8; 24];
        tokio::time::timeout(IO_DEADLINE, self.stream.read_exact(&mut h))
            .await
            .expect("binary reply in time")
            .expect("binary reply");
        assert_eq!(h[0], 0x81, "response magic");
        let body = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize;
        let skip = usize::from(h[4]) + usize::from(u16::from_be_bytes([h[2], h[3]]));
        let mut rest = vec![0u8; body];
        tokio::time::timeout(IO_DEADLINE, self.stream.read_exact(&mut rest))
            .await
            .expect("body in time")
            .expect("body");
        Reply {
            opcode: h[1],
            status: u16::from_be_bytes([h[6], h[7]]),
            value: rest[skip..].to_vec(),
        }
    }

    /// SASL PLAIN as `user` with no password (an open bucket's login).
    async fn auth(&mut self, user: &str) -> u16 {
        self.auth_with(user, "").await
    }

    /// SASL PLAIN as `user` with `password`.
    async fn auth_with(&mut self, user: &str, password: &str) -> u16 {
        let message = format!("\0{user}\0{password}");
        self.binary(frame(SASL_AUTH, b"PLAIN", message.as_bytes(), 0))
            .await
            .status
    }

    /// A SCRAM-SHA512 login as `user` with `password`: the final status.
    async fn scram(&mut self, user: &str, password: &str) -> u16 {
        use shoal_auth::scram::{new_nonce, Client as Scram, Mechanism};
        let mech = Mechanism(shoal_auth::Hash::Sha512);
        let (client, first) = Scram::new(mech, user, password, &new_nonce().unwrap());
        let reply = self
            .binary(frame(SASL_AUTH, b"SCRAM-SHA512", &first, 0))
            .await;
        if reply.status != AUTH_CONTINUE {
            return reply.status;
        }
        let (waiting, last) = client.respond(&reply.value).expect("server-first");
        let reply = self
            .binary(frame(SASL_STEP, b"SCRAM-SHA512", &last, 0))
            .await;
        if reply.status == OK {
            waiting
                .verify(&reply.value)
                .expect("the server knows the password");
        }
        reply.status
    }

    async fn select(&mut self, bucket: &str) -> u16 {
        self.binary(frame(SELECT_BUCKET, bucket.as_bytes(), b"", 0))
            .await
            .status
    }

    async fn set(&mut self, key: &str, value: &str) {
        let request = format!("set {key} 0 0 {}\r\n{value}\r\n", value.len());
        self.send(request.as_bytes()).await;
        assert_eq!(self.line().await, "STORED");
    }

    /// `get` of one key over ASCII: the value, or `None` on a miss.
    async fn get(&mut self, key: &str) -> Option<String> {
        self.send(format!("get {key}\r\n").as_bytes()).await;
        let first = self.line().await;
        if first == "END" {
            return None;
        }
        assert!(first.starts_with("VALUE "), "{first:?}");
        let value = self.line().await;
        assert_eq!(self.line().await, "END");
        Some(value)
    }

    /// Waits for the node to close the connection (EOF or reset).
    async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(IO_DEADLINE, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_three_buckets_three_values() {
    let dir = TestDir::new("buckets", "select");
    let node = start(&dir, true).await;
    create(&node, "b1", BucketKind::Membase).await;
    create(&node, "m1", BucketKind::Memcached).await;
    assert_eq!(node.buckets().names(), ["b1", "default", "m1"]);

    let mut c = Client::connect(&node).await;
    let mechs = c.binary(frame(SASL_LIST_MECHS, b"", b"", 0)).await;
    assert_eq!(
        (mechs.status, &mechs.value[..]),
        (OK, &b"SCRAM-SHA512 SCRAM-SHA256 SCRAM-SHA1 PLAIN"[..])
    );
    // A connection starts on `default`.
    c.set("k", "in default").await;
    // An open bucket has no password: a made-up one is wrong.
    let wrong = c
        .binary(frame(SASL_AUTH, b"PLAIN", b"\0b1\0made-up", 0))
        .await;
    assert_eq!(wrong.status, AUTH_ERROR);
    let auth = c.binary(frame(SASL_AUTH, b"PLAIN", b"\0b1\0", 0)).await;
    assert_eq!(
        (auth.opcode, auth.status, &auth.value[..]),
        (SASL_AUTH, OK, &b"Authenticated"[..])
    );
    c.set("k", "in b1").await;
    assert_eq!(c.select("m1").await, OK);
    c.set("k", "in m1").await;
    // A memcached bucket ignores the header's vbucket id.
    let got = c.binary(frame(GET, b"k", b"", 777)).await;
    assert_eq!((got.status, &got.value[..]), (OK, &b"in m1"[..]));

    // Unknown buckets: refused, and the selection stays.
    assert_eq!(c.select("nope").await, KEY_NOT_FOUND);
    assert_eq!(c.auth("nope").await, AUTH_ERROR);
    let other_mech = c.binary(frame(SASL_AUTH, b"CRAM-MD5", b"b1", 0)).await;
    assert_eq!(other_mech.status, AUTH_ERROR);
    assert_eq!(c.get("k").await.as_deref(), Some("in m1"));

    assert_eq!(c.select("b1").await, OK);
    assert_eq!(c.get("k").await.as_deref(), Some("in b1"));
    assert_eq!(c.auth("default").await, OK);
    assert_eq!(c.get("k").await.as_deref(), Some("in default"));

    // Each connection has its own selection.
    let mut d = Client::connect(&node).await;
    assert_eq!(d.auth("m1").await, OK);
    assert_eq!(d.get("k").await.as_deref(), Some("in m1"));
    assert_eq!(c.get("k").await.as_deref(), Some("in default"));
    node.shutdown().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_with_a_password_serves_only_those_who_prove_it() {
    let dir = TestDir::new("buckets", "password");
    let node = start(&dir, true).await;
    let hash = tokio::task::spawn_blocking(|| shoal_auth::PasswordHash::new(b"s3cret-pw"))
        .await
        .unwrap()
        .unwrap();
    let spec = BucketSpec {
        password: Some(hash),
        ..spec("locked", BucketKind::Membase)
    };
    node.buckets().create(spec).await.expect("create");
    node.buckets().ready("locked").await.expect("warm");

    // Without credentials: not selectable, nothing touched.
    let mut c = Client::connect(&node).await;
    assert_eq!(c.select("locked").await, NO_ACCESS);
    c.set("k", "in default").await;
    for password in ["", "wrong", "s3cret-pw "] {
        assert_eq!(
            c.auth_with("locked", password).await,
            AUTH_ERROR,
            "{password:?}"
        );
    }
    assert_eq!(
        c.get("k").await.as_deref(),
        Some("in default"),
        "selection kept"
    );

    // PLAIN with the password selects it.
    assert_eq!(c.auth_with("locked", "s3cret-pw").await, OK);
    c.set("k", "in locked").await;
    assert_eq!(c.get("k").await.as_deref(), Some("in locked"));

    // SCRAM-SHA512 (our client) with the password, and a wrong one.
    for (password, want) in [("s3cret-pw", OK), ("wrong", AUTH_ERROR)] {
        let mut s = Client::connect(&node).await;
        let status = s.scram("locked", password).await;
        assert_eq!(status, want, "{password}");
        if want == OK {
            assert_eq!(s.get("k").await.as_deref(), Some("in locked"));
        } else {
            assert_eq!(s.get("k").await.as_deref(), Some("in default"));
        }
    }

    // The cluster's own commands: refused to buckets and nobody alike.
    let mut anyone = Client::connect(&node).await;
    for opcode in [SET_VBUCKET, DEL_VBUCKET, DCP_OPEN] {
        let reply = anyone.binary(frame(opcode, b"", &[0, 0, 0, 1], 0)).await;
        assert_eq!(reply.status, NO_ACCESS, "opcode {opcode:#x}");
    }
    assert_eq!(anyone.get("k").await.as_deref(), Some("in default"));
    // The cluster (the node's secret) may.
    let hex = node.cluster_secret().current().to_hex();
    assert_eq!(anyone.auth_with("@cluster", &hex).await, OK);
    assert_eq!(
        anyone.select("locked").await,
        OK,
        "the cluster uses any bucket"
    );
    node.shutdown().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_is_refused_unless_the_bucket_allows_it() {
    let dir = TestDir::new("buckets", "flush");
    let node = start(&dir, true).await;
    let spec = BucketSpec {
        flush_enabled: false,
        ..spec("keep", BucketKind::Membase)
    };
    node.buckets().create(spec).await.expect("create");
    node.buckets().ready("keep").await.expect("warm");
    let mut c = Client::connect(&node).await;
    assert_eq!(c.select("keep").await, OK);
    c.set("k", "v").await;
    c.send(b"flush_all\r\n").await;
    assert_eq!(c.line().await, "CLIENT_ERROR flush_all not allowed");
    let flush = c.binary(frame(FLUSH, b"", b"", 0)).await;
    assert_eq!(flush.status, 0x83, "NOT_SUPPORTED, as memcached -F answers");
    assert_eq!(c.get("k").await.as_deref(), Some("v"), "nothing flushed");
    // `default` of a standalone node flushes, like memcached.
    assert_eq!(c.select("default").await, OK);
    c.send(b"flush_all\r\n").await;
    assert_eq!(c.line().await, "OK");
    node.shutdown().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_buckets_answers_no_bucket() {
    let dir = TestDir::new("buckets", "none");
    let node = start(&dir, false).await;
    assert!(node.default_bucket().is_none() && node.buckets().names().is_empty());
    let mut c = Client::connect(&node).await;
    c.send(b"get k\r\nset k 0 0 1 noreply\r\nv\r\nmg k v\r\nmn\r\nversion\r\n")
        .await;
    for _ in 0..3 {
        assert_eq!(c.line().await, "SERVER_ERROR no bucket selected");
    }
    assert_eq!(c.line().await, "MN");
    assert!(c.line().await.starts_with("VERSION 1.6"));
    let get = c.binary(frame(GET, b"k", b"", 0)).await;
    assert_eq!(get.status, NO_BUCKET);
    assert_eq!(c.binary(frame(NOOP, b"", b"", 0)).await.status, OK);
    assert_eq!(c.select("default").await, KEY_NOT_FOUND);

    create(&node, "default", BucketKind::Membase).await;
    // An open connection selects it; a new one starts on it.
    assert_eq!(c.select("default").await, OK);
    c.set("k", "v").await;
    let mut fresh = Client::connect(&node).await;
    assert_eq!(fresh.get("k").await.as_deref(), Some("v"));
    assert!(node.default_bucket().is_some());
    node.shutdown().await.expect("clean stop");
}

/// META (0xe7), the proxy's meta envelope, is a data command like GET:
/// without a bucket it is refused; on one it runs the meta request in its
/// value and answers the meta reply text; anything but one whole meta
/// request (or `mn`, which a proxy answers itself) is invalid arguments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meta_envelope_needs_a_bucket_and_carries_one_request() {
    const META: u8 = 0xe7;
    const INVALID_ARGUMENTS: u16 = 0x04;
    let dir = TestDir::new("buckets", "meta");
    let node = start(&dir, false).await;
    let mut c = Client::connect(&node).await;
    let refused = c.binary(frame(META, b"k", b"mg k v\r\n", 0)).await;
    assert_eq!(refused.status, NO_BUCKET);

    create(&node, "default", BucketKind::Membase).await;
    assert_eq!(c.select("default").await, OK);
    let set = c
        .binary(frame(META, b"k", b"ms k 2 T0 c\r\nhi\r\n", 0))
        .await;
    assert_eq!(set.status, OK);
    assert!(set.value.starts_with(b"HD c"), "{:?}", set.value);
    let got = c.binary(frame(META, b"k", b"mg k v h\r\n", 0)).await;
    assert_eq!(
        (got.status, &got.value[..]),
        (OK, &b"VA 2 h0\r\nhi\r\n"[..])
    );
    let quiet = c.binary(frame(META, b"k", b"md k q\r\n", 0)).await;
    assert_eq!((quiet.status, &quiet.value[..]), (OK, &b""[..]));
    for body in [&b"mn\r\n"[..], b"mg k v\r\nmg k v\r\n", b"mg k v"] {
        let bad = c.binary(frame(META, b"k", body, 0)).await;
        assert_eq!(bad.status, INVALID_ARGUMENTS, "{body:?}");
    }
    node.shutdown().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_bucket_closes_its_connections_and_removes_its_data() {
    let dir = TestDir::new("buckets", "delete");
    let node = start(&dir, true).await;
    create(&node, "b1", BucketKind::Membase).await;
    let mut writer = Client::connect(&node).await;
    assert_eq!(writer.auth("b1").await, OK);
    for i in 0..100 {
        writer.set(&format!("k{i}"), "in b1").await;
    }
    let mut idle = Client::connect(&node).await;
    assert_eq!(idle.select("b1").await, OK);
    let mut elsewhere = Client::connect(&node).await;
    elsewhere.set("k0", "in default").await;
    // On disk before the delete, so the delete has something to remove.
    let b1 = node.buckets().get("b1").expect("b1");
    tokio::task::spawn_blocking(move || b1.flusher.flush_now())
        .await
        .unwrap()
        .expect("flush b1");

    assert!(node.buckets().delete("b1").await.expect("delete"));
    assert!(idle.closed().await, "an idle connection on b1 is closed");
    // The writer is closed too; whatever it sends now is not served.
    writer.send(b"get k0\r\n").await;
    assert!(writer.closed().await, "a connection on b1 is closed");
    assert!(node.buckets().get("b1").is_none());
    assert!(!node.buckets().delete("b1").await.unwrap(), "already gone");
    assert_eq!(elsewhere.get("k0").await.as_deref(), Some("in default"));
    let mut late = Client::connect(&node).await;
    assert_eq!(late.select("b1").await, KEY_NOT_FOUND);
    node.shutdown().await.expect("clean stop");

    // After a restart, a new b1 starts empty; default kept its data.
    let node = start(&dir, true).await;
    create(&node, "b1", BucketKind::Membase).await;
    let mut c = Client::connect(&node).await;
    assert_eq!(c.get("k0").await.as_deref(), Some("in default"));
    assert_eq!(c.auth("b1").await, OK);
    assert_eq!(c.get("k0").await, None);
    assert_eq!(c.get("k99").await, None);
    node.shutdown().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membase_buckets_warm_up_again_and_memcached_buckets_start_empty() {
    let dir = TestDir::new("buckets", "restart");
    let node = start(&dir, false).await;
    create(&node, "b1", BucketKind::Membase).await;
    create(&node, "m1", BucketKind::Memcached).await;
    let mut c = Client::connect(&node).await;
    assert_eq!(c.auth("b1").await, OK);
    for i in 0..500 {
        c.set(&format!("k{i}"), &format!("b1 {i}")).await;
    }
    assert_eq!(c.select("m1").await, OK);
    for i in 0..500 {
        c.set(&format!("k{i}"), &format!("m1 {i}")).await;
    }
    let m1 = node.buckets().get("m1").expect("m1");
    assert_eq!(
        m1.engine.queue_len(),
        0,
        "a memcached bucket queues nothing"
    );
    drop(m1);
    // A clean stop writes b1's queue to disk.
    node.shutdown().await.expect("clean stop");

    let node = start(&dir, false).await;
    assert!(
        node.buckets().names().is_empty(),
        "buckets come back when created, not by themselves"
    );
    create(&node, "b1", BucketKind::Membase).await;
    create(&node, "m1", BucketKind::Memcached).await;
    let b1 = node.buckets().get("b1").expect("b1");
    assert_eq!(b1.warmup_count.load(Ordering::Relaxed), 500);
    let mut c = Client::connect(&node).await;
    assert_eq!(c.auth("b1").await, OK);
    for i in 0..500 {
        assert_eq!(c.get(&format!("k{i}")).await, Some(format!("b1 {i}")));
    }
    assert_eq!(c.select("m1").await, OK);
    assert_eq!(c.get("k0").await, None);
    assert_eq!(c.get("k499").await, None);
    node.shutdown().await.expect("clean stop");
}
