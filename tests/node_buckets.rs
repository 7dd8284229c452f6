//! Bucket selection on a real `shoal node --standalone` process, over real
//! sockets: a connection starts on `default`; binary SASL PLAIN (the user
//! names the bucket; `default` has no password, so the password must be
//! empty) and SELECT_BUCKET select it again; an unknown bucket or a wrong
//! password is refused — 0x20 for SASL, 0x01 for SELECT_BUCKET, as
//! Couchbase answers — and the connection keeps the bucket it had. Creating and deleting buckets at runtime is covered in
//! `node/tests/buckets.rs`, which drives a node's `Buckets` in-process.

mod common;

use common::{binary_header, BinaryResponse, Conn, NodeProcess, TestDir};

/// Opcodes and statuses (Couchbase's BinaryProtocol.md).
const GET: u8 = 0x00;
const SASL_LIST_MECHS: u8 = 0x20;
const SASL_AUTH: u8 = 0x21;
const SASL_STEP: u8 = 0x22;
const SELECT_BUCKET: u8 = 0x89;
const OK: u16 = 0x00;
const KEY_NOT_FOUND: u16 = 0x01;
const AUTH_ERROR: u16 = 0x20;

/// Sends one binary request (no extras) and reads its reply.
fn call(conn: &mut Conn, opcode: u8, key: &[u8], value: &[u8], opaque: u32) -> BinaryResponse {
    let body = u32::try_from(key.len() + value.len()).unwrap();
    let mut request = binary_header(opcode, key.len() as u16, 0, 0, body, opaque).to_vec();
    request.extend_from_slice(key);
    request.extend_from_slice(value);
    conn.send(&request).expect("send");
    let reply = conn.read_binary().expect("binary reply");
    assert_eq!((reply.opcode, reply.opaque), (opcode, opaque));
    reply
}

#[test]
fn connections_select_buckets_with_sasl_and_select_bucket() {
    let dir = TestDir::new("buckets");
    let mut node = NodeProcess::start(dir.path(), &["--vbuckets", "16"]);
    node.wait_ready();
    let mut conn = Conn::connect(node.addr).expect("connect");
    assert_eq!(conn.set("k", 3, b"v"), "STORED", "starts on default");

    let mechs = call(&mut conn, SASL_LIST_MECHS, b"", b"", 1);
    assert_eq!(
        (mechs.status, &mechs.value[..]),
        (OK, &b"SCRAM-SHA512 SCRAM-SHA256 SCRAM-SHA1 PLAIN"[..])
    );
    let auth = call(&mut conn, SASL_AUTH, b"PLAIN", b"\0default\0", 2);
    assert_eq!((auth.status, &auth.value[..]), (OK, &b"Authenticated"[..]));
    assert_eq!(
        call(&mut conn, SELECT_BUCKET, b"default", b"", 3).status,
        OK
    );

    let refused = [
        call(&mut conn, SASL_AUTH, b"PLAIN", b"\0nope\0", 4).status,
        call(&mut conn, SASL_AUTH, b"PLAIN", b"no separators", 5).status,
        call(&mut conn, SASL_STEP, b"PLAIN", b"", 6).status,
        call(&mut conn, SELECT_BUCKET, b"nope", b"", 7).status,
        call(&mut conn, SASL_AUTH, b"PLAIN", b"\0default\0any", 9).status,
    ];
    assert_eq!(
        refused,
        [
            AUTH_ERROR,
            AUTH_ERROR,
            AUTH_ERROR,
            KEY_NOT_FOUND,
            AUTH_ERROR
        ]
    );
    // Still on default.
    let got = call(&mut conn, GET, b"k", b"", 8);
    assert_eq!((got.status, &got.value[..]), (OK, &b"v"[..]));
    let value = conn.get("k").expect("a hit");
    assert_eq!((value.flags, &value.data[..]), (3, &b"v"[..]));
}
