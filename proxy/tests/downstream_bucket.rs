//! Downstream connections to a bucket other than `default`: each new
//! connection authenticates as the bucket before any request goes out on
//! it — SASL PLAIN with an empty password for an open bucket, SCRAM-SHA512
//! with the bucket's password for one that has one — and a refused
//! authentication fails the batch unsent (`AuthRefused`: retrying will not
//! help until the password is fixed). The node is scripted on 127.0.0.1:0
//! (its SCRAM side is shoal-auth's server).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use shoal_protocol::binary::{
    encode_request, encode_response, Opcode, RequestFields, ResponseFields, Status,
};
use shoal_proxy::downstream::{Batch, DownstreamConfig, DownstreamError, NodePool};
use shoal_vbmap::config::ServerAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long any awaited step may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// Reads one request frame: opcode, opaque, key, value (no extras here).
async fn read_frame(stream: &mut TcpStream) -> (u8, u32, Vec<u8>, Vec<u8>) {
    let mut h = [0u8; 24];
    stream.read_exact(&mut h).await.expect("request header");
    assert_eq!(h[0], 0x80, "request magic");
    let key_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    let body = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize;
    let mut rest = vec![0u8; body];
    stream.read_exact(&mut rest).await.expect("request body");
    let opaque = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
    let value = rest.split_off(usize::from(h[4]) + key_len);
    (h[1], opaque, rest, value)
}

/// Answers `opcode`/`opaque` with `status` and `value`.
async fn answer(stream: &mut TcpStream, opcode: u8, opaque: u32, status: Status, value: &[u8]) {
    let mut out = BytesMut::new();
    let fields = ResponseFields {
        opaque,
        ..ResponseFields::new(Opcode::from_u8(opcode), status)
    };
    encode_response(&mut out, &fields, &[], &[], value).unwrap();
    stream.write_all(&out).await.unwrap();
}

/// A NOOP batch with `opaque`.
fn noop(opaque: u32) -> Batch {
    let mut frame = BytesMut::new();
    let fields = RequestFields {
        opaque,
        ..RequestFields::new(Opcode::Noop)
    };
    encode_request(&mut frame, &fields, &[], &[], &[]).unwrap();
    Batch {
        frames: Bytes::from(frame),
        first: opaque,
        terminator: opaque,
    }
}

/// Sends a NOOP through a pool for bucket `b1` to a scripted node that
/// answers SASL with `auth_status`, then the NOOP; returns the call's
/// outcome (replies received) and the node's view of the SASL request.
async fn run(auth_status: Status) -> (Result<usize, DownstreamError>, (u8, Vec<u8>, Vec<u8>)) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = ServerAddr::parse(&listener.local_addr().unwrap().to_string()).unwrap();
    let node = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let (opcode, opaque, key, value) = read_frame(&mut stream).await;
        answer(&mut stream, opcode, opaque, auth_status, b"Authenticated").await;
        if auth_status == Status::OK {
            let (op, opaque, _, _) = read_frame(&mut stream).await;
            assert_eq!(op, Opcode::Noop.to_u8());
            answer(&mut stream, op, opaque, Status::OK, &[]).await;
        }
        (opcode, key, value)
    });
    let config = DownstreamConfig {
        bucket: Some("b1".into()),
        ..DownstreamConfig::default()
    };
    let pool = NodePool::new(addr, &config);
    let result = tokio::time::timeout(PATIENCE, pool.call(noop(7)))
        .await
        .expect("a reply or an error in time")
        .map(|replies| replies.len());
    let seen = tokio::time::timeout(PATIENCE, node)
        .await
        .expect("node done")
        .unwrap();
    (result, seen)
}

#[tokio::test]
async fn connections_authenticate_as_the_bucket_before_use() {
    let (result, (opcode, key, value)) = run(Status::OK).await;
    assert_eq!(opcode, Opcode::SaslAuth.to_u8());
    assert_eq!((&key[..], &value[..]), (&b"PLAIN"[..], &b"\0b1\0"[..]));
    assert_eq!(result, Ok(1), "the NOOP went out after the SASL reply");
}

#[tokio::test]
async fn a_refused_bucket_fails_the_batch_unsent() {
    let (result, (opcode, _, _)) = run(Status::AUTH_ERROR).await;
    assert_eq!(opcode, Opcode::SaslAuth.to_u8());
    assert_eq!(result, Err(DownstreamError::AuthRefused));
    assert!(DownstreamError::AuthRefused.not_sent());
}

/// A scripted node whose bucket `b1` has `stored` as its password: it runs
/// the server side of SCRAM, then answers one NOOP if the login worked.
/// Returns the outcome of a NOOP sent through a pool holding `password`.
async fn scram_run(password: &str) -> Result<usize, DownstreamError> {
    use shoal_auth::scram::{Credential, Mechanism, ServerFirst};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = ServerAddr::parse(&listener.local_addr().unwrap().to_string()).unwrap();
    let node = tokio::spawn(async move {
        let stored =
            shoal_auth::PasswordHash::with_salt(b"right-password", b"saltsaltsaltsalt", 4096)
                .unwrap();
        let (mut stream, _) = listener.accept().await.unwrap();
        let (opcode, opaque, mech, first) = read_frame(&mut stream).await;
        assert_eq!(
            (opcode, &mech[..]),
            (Opcode::SaslAuth.to_u8(), &b"SCRAM-SHA512"[..])
        );
        let mech = Mechanism::parse(&mech).unwrap();
        let lookup = |user: &str| {
            (user == "b1").then(|| Credential {
                salt: stored.salt().to_vec(),
                iterations: stored.iterations(),
                keys: stored.keys(mech.0).clone(),
            })
        };
        let (server, reply) = ServerFirst::start(mech, &first, lookup, "servernonce").unwrap();
        answer(&mut stream, opcode, opaque, Status::AUTH_CONTINUE, &reply).await;
        let (opcode, opaque, _, last) = read_frame(&mut stream).await;
        assert_eq!(opcode, Opcode::SaslStep.to_u8());
        match server.finish(&last) {
            Ok((_, server_final)) => {
                answer(&mut stream, opcode, opaque, Status::OK, &server_final).await;
                let (op, opaque, _, _) = read_frame(&mut stream).await;
                answer(&mut stream, op, opaque, Status::OK, &[]).await;
            }
            Err(_) => answer(&mut stream, opcode, opaque, Status::AUTH_ERROR, b"").await,
        }
    });
    let config = DownstreamConfig {
        bucket: Some("b1".into()),
        password: Some(shoal_proxy::downstream::Password(password.into())),
        ..DownstreamConfig::default()
    };
    let pool = NodePool::new(addr, &config);
    let result = tokio::time::timeout(PATIENCE, pool.call(noop(9)))
        .await
        .expect("a reply or an error in time")
        .map(|replies| replies.len());
    tokio::time::timeout(PATIENCE, node)
        .await
        .expect("node done")
        .unwrap();
    result
}

#[tokio::test]
async fn a_bucket_with_a_password_is_logged_in_with_scram() {
    assert_eq!(scram_run("right-password").await, Ok(1));
    assert_eq!(
        scram_run("wrong-password").await,
        Err(DownstreamError::AuthRefused)
    );
}
