//! ASCII multi-gets through an in-process proxy in static ketama mode, over
//! scripted binary nodes on 127.0.0.1:0 that record every request frame:
//!
//! - each node gets one batch per multi-get — quiet GETKQs ended by one
//!   non-quiet GETK, no NOOP — with each distinct key once, in the client's
//!   order, and the reply lists hits in the client's order, repeats
//!   included;
//! - with one server refusing connections, a multi-get returns the other
//!   keys and counts the left-out ones, or, with `strict_multiget`, fails
//!   as a whole.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use shoal_protocol::binary::{encode_response, Opcode, ResponseFields, Status};
use shoal_proxy::{MapSource, Proxy, ProxyConfig};
use shoal_vbmap::config::ServerAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long any awaited step may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// The frames a scripted node received: opcode and key, in arrival order.
type Seen = Arc<Mutex<Vec<(Opcode, Vec<u8>)>>>;

/// A node holding `items` (flags 0): answers GET, GETQ, GETK and GETKQ by
/// the binary protocol's rules (a quiet miss is silent), NOOP with OK, and
/// anything else with UNKNOWN_COMMAND.
async fn scripted_node(items: Arc<HashMap<Vec<u8>, Vec<u8>>>) -> (ServerAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = ServerAddr::parse(&listener.local_addr().unwrap().to_string()).unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_node(stream, items.clone(), log.clone()));
        }
    });
    (addr, seen)
}

async fn serve_node(mut stream: TcpStream, items: Arc<HashMap<Vec<u8>, Vec<u8>>>, seen: Seen) {
    loop {
        let mut h = [0u8; 24];
        if stream.read_exact(&mut h).await.is_err() {
            return;
        }
        assert_eq!(h[0], 0x80, "request magic");
        let key_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let extras_len = usize::from(h[4]);
        let body = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize;
        let opaque = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
        let mut rest = vec![0u8; body];
        stream.read_exact(&mut rest).await.unwrap();
        let key = rest[extras_len..extras_len + key_len].to_vec();
        let opcode = Opcode::from_u8(h[1]);
        seen.lock().unwrap().push((opcode, key.clone()));
        let mut out = BytesMut::new();
        let reply = |out: &mut BytesMut, status, extras: &[u8], key: &[u8], value: &[u8]| {
            let fields = ResponseFields {
                opaque,
                ..ResponseFields::new(opcode, status)
            };
            encode_response(out, &fields, extras, key, value).unwrap();
        };
        match opcode {
            Opcode::Get | Opcode::GetQ | Opcode::GetK | Opcode::GetKQ => {
                let echo: &[u8] = if matches!(opcode, Opcode::GetK | Opcode::GetKQ) {
                    &key
                } else {
                    &[]
                };
                match items.get(&key) {
                    Some(value) => reply(&mut out, Status::OK, &[0; 4], echo, value),
                    None if opcode.is_quiet() => {}
                    None => reply(&mut out, Status::KEY_NOT_FOUND, &[], echo, b"Not found"),
                }
            }
            Opcode::Noop => reply(&mut out, Status::OK, &[], &[], &[]),
            _ => reply(&mut out, Status::UNKNOWN_COMMAND, &[], &[], &[]),
        }
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// A proxy over `servers` (libketama ring, as `--servers`).
async fn proxy(servers: Vec<ServerAddr>, strict_multiget: bool) -> Proxy {
    let config = ProxyConfig {
        source: MapSource::Static {
            weights: vec![1; servers.len()],
            servers,
        },
        port: 0,
        admin_port: 0,
        retry_deadline: Duration::from_millis(300),
        strict_multiget,
        ..ProxyConfig::default()
    };
    let proxy = Proxy::start(config.validate().unwrap()).await.unwrap();
    tokio::time::timeout(PATIENCE, proxy.ready()).await.unwrap();
    proxy
}

/// Which server (index into the proxy's list) `key` goes to.
fn server_of(proxy: &Proxy, key: &str) -> usize {
    let route = proxy.shared().maps.load().route(key.as_bytes());
    usize::from(route.server.expect("every key has a server"))
}

/// Sends `get <keys>` on a fresh connection; the whole reply.
async fn get(addr: SocketAddr, keys: &[String]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("get {}\r\n", keys.join(" ")).as_bytes())
        .await
        .unwrap();
    let mut reply = Vec::new();
    let complete = |r: &[u8]| {
        r.ends_with(b"END\r\n") || (r.starts_with(b"SERVER_ERROR") && r.ends_with(b"\r\n"))
    };
    while !complete(&reply) {
        let n = tokio::time::timeout(PATIENCE, stream.read_buf(&mut reply))
            .await
            .expect("reply in time")
            .unwrap();
        assert!(
            n > 0,
            "proxy closed after {:?}",
            String::from_utf8_lossy(&reply)
        );
    }
    reply
}

/// memcached's reply to `get <keys>`: a VALUE block per key present, in
/// order, repeats included.
fn expected(keys: &[String], items: &HashMap<Vec<u8>, Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for key in keys {
        if let Some(value) = items.get(key.as_bytes()) {
            out.extend_from_slice(format!("VALUE {key} 0 {}\r\n", value.len()).as_bytes());
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"END\r\n");
    out
}

fn held_items(n: usize) -> Arc<HashMap<Vec<u8>, Vec<u8>>> {
    Arc::new(
        (0..n)
            .map(|i| {
                (
                    format!("k{i}").into_bytes(),
                    format!("value {i}").into_bytes(),
                )
            })
            .collect(),
    )
}

#[tokio::test]
async fn multi_get_sends_one_batch_per_node_without_a_noop() {
    let items = held_items(20);
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(scripted_node(items.clone()).await);
    }
    let proxy = proxy(nodes.iter().map(|(a, _)| a.clone()).collect(), false).await;
    // Hits and misses interleaved, then repeats of a hit and of a miss.
    let mut keys: Vec<String> = (0..20)
        .flat_map(|i| [format!("k{}", (i * 7) % 20), format!("absent{i}")])
        .take(30)
        .collect();
    keys.push(keys[0].clone());
    keys.push(keys[1].clone());
    keys.push(keys[2].clone());
    let reply = get(proxy.data_addr(), &keys).await;
    assert_eq!(
        String::from_utf8_lossy(&reply),
        String::from_utf8_lossy(&expected(&keys, &items))
    );

    let mut distinct: Vec<&String> = Vec::new();
    for key in &keys {
        if !distinct.contains(&key) {
            distinct.push(key);
        }
    }
    let mut used = 0;
    for (n, (_, seen)) in nodes.iter().enumerate() {
        let seen = seen.lock().unwrap().clone();
        // This node's keys, once each, in the client's order.
        let mine: Vec<&str> = distinct
            .iter()
            .filter(|k| server_of(&proxy, k) == n)
            .map(|k| k.as_str())
            .collect();
        let got: Vec<String> = seen
            .iter()
            .map(|(_, k)| String::from_utf8_lossy(k).into_owned())
            .collect();
        assert_eq!(got, mine, "node {n}: the keys it was asked for");
        let opcodes: Vec<Opcode> = seen.iter().map(|(op, _)| *op).collect();
        if let Some((last, quiet)) = opcodes.split_last() {
            used += 1;
            assert_eq!(*last, Opcode::GetK, "node {n}: {opcodes:?}");
            assert!(
                quiet.iter().all(|op| *op == Opcode::GetKQ),
                "node {n}: {opcodes:?}"
            );
        }
    }
    assert!(used >= 2, "the keys should spread over the nodes");
    proxy.shutdown(PATIENCE).await;
}

/// Keys (`k<i>`, all held by the live nodes) with at least three on each
/// of the three servers, and the ones on server 2.
fn keys_on_every_server(proxy: &Proxy) -> (Vec<String>, Vec<String>) {
    let mut keys = Vec::new();
    let mut per_server = [0; 3];
    let mut i = 0;
    while per_server.iter().any(|&n| n < 3) {
        let key = format!("k{i}");
        per_server[server_of(proxy, &key)] += 1;
        keys.push(key);
        i += 1;
    }
    let lost = keys
        .iter()
        .filter(|k| server_of(proxy, k) == 2)
        .cloned()
        .collect();
    (keys, lost)
}

#[tokio::test]
async fn multi_get_with_a_server_down_leaves_its_keys_out_or_fails_when_strict() {
    let items = held_items(1000);
    let mut servers = Vec::new();
    for _ in 0..2 {
        servers.push(scripted_node(items.clone()).await.0);
    }
    // A port nobody listens on: connections are refused.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    servers.push(ServerAddr::parse(&dead.local_addr().unwrap().to_string()).unwrap());
    drop(dead);

    for strict in [false, true] {
        let proxy = proxy(servers.clone(), strict).await;
        let (mut keys, lost) = keys_on_every_server(&proxy);
        keys.push(lost[0].clone());
        keys.push(keys[0].clone());
        let reply = get(proxy.data_addr(), &keys).await;
        let stats = &proxy.shared().stats;
        let left_out = stats.multiget_missing_keys.load(Ordering::Relaxed);
        let errors = stats.errors.load(Ordering::Relaxed);
        if strict {
            assert_eq!(reply, b"SERVER_ERROR temporary failure\r\n");
            assert_eq!(errors, 1);
        } else {
            let reachable: Vec<String> =
                keys.iter().filter(|k| !lost.contains(k)).cloned().collect();
            assert_eq!(
                String::from_utf8_lossy(&reply),
                String::from_utf8_lossy(&expected(&reachable, &items))
            );
            let lost_occurrences = keys.iter().filter(|k| lost.contains(k)).count();
            assert_eq!(left_out, lost_occurrences as u64);
            assert_eq!(errors, 0);
        }
        proxy.shutdown(PATIENCE).await;
    }
}
