//! Fuzzes a whole client session of the proxy: `session::serve_io` over an
//! in-memory pipe, fed the input as a client would send it — ASCII, meta
//! and binary requests in any mix, in chunks whose size the input's first
//! two bytes choose (the rest is the stream).
//!
//! The proxy is real: one [`Shared`] built once, with a static ketama map
//! over two servers on loopback ports that are closed, so every request
//! goes through routing, the downstream pools (connect refused) and the
//! retry rules down to the "temporary failure" at a 5 ms retry deadline.
//! The pools live on a background runtime, as in the proxy; each input's
//! session runs on a current-thread runtime.
//!
//! Invariants beyond "no panic" (libfuzzer-sys aborts on a panic in any
//! thread, pool tasks included):
//!
//! - no hang: once the input is written and the client's write side is
//!   shut, the session finishes (closing its end) within [`SESSION_BOUND`];
//! - bounded output: at most [`OUTPUT_PER_BYTE`] reply bytes per input byte
//!   (plus a constant), so no request makes the proxy amplify without
//!   bound;
//! - never a success without a node: with every node down, no reply says a
//!   key was found or written (`VALUE`, `STORED`, `DELETED`, `TOUCHED`
//!   lines).
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use shoal_proxy::downstream::DownstreamConfig;
use shoal_proxy::{MapSource, ProxyConfig, Shared};
use shoal_vbmap::config::ServerAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

/// Longest a session may take from the first byte to its close. Every
/// request ends by the retry deadline (5 ms) once it is read; this leaves
/// room for a loaded machine and sanitizer builds.
const SESSION_BOUND: Duration = Duration::from_secs(5);

/// Reply bytes allowed per input byte. The largest ratio is `stats proxy`
/// (13 bytes in, about 1 KiB of counters out, with two servers).
const OUTPUT_PER_BYTE: usize = 256;

/// Reply bytes allowed on top (a short input's local replies).
const OUTPUT_SLACK: usize = 8 * 1024;

/// The pipe's buffer each way: small, so the session also meets a client
/// that is slow to read its replies.
const PIPE_BUFFER: usize = 4 * 1024;

/// The proxy's state and the runtime its downstream pools run on.
struct Harness {
    shared: Arc<Shared>,
    _pools: Runtime,
}

/// A loopback port nothing listens on (bound, read back, closed).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local addr").port()
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let servers: Vec<ServerAddr> = (0..2)
            .map(|_| ServerAddr::parse(&format!("127.0.0.1:{}", closed_port())).expect("address"))
            .collect();
        let weights = vec![1; servers.len()];
        let config = ProxyConfig {
            source: MapSource::Static {
                servers: servers.clone(),
                weights: weights.clone(),
            },
            port: 0,
            admin_port: 0,
            retry_deadline: Duration::from_millis(5),
            downstream: DownstreamConfig {
                connections_per_node: 1,
                connect_timeout: Duration::from_millis(20),
                request_timeout: Duration::from_millis(50),
                ..DownstreamConfig::default()
            },
            ..ProxyConfig::default()
        }
        .validate()
        .expect("valid proxy config");
        let shared = Shared::new(config);
        let pools = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("pool runtime");
        // The pools spawn their connection tasks on the runtime they are
        // created in.
        pools.block_on(async { shared.maps.install_static(servers, &weights) });
        Harness {
            shared,
            _pools: pools,
        }
    })
}

thread_local! {
    static SESSION_RUNTIME: Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("session runtime");
}

/// True if a reply line claims a hit or a write.
fn claims_success(output: &[u8]) -> bool {
    output.split(|&b| b == b'\n').any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        line.starts_with(b"VALUE ") || line == b"STORED" || line == b"DELETED" || line == b"TOUCHED"
    })
}

fuzz_target!(|data: &[u8]| {
    let [size, mode, stream @ ..] = data else {
        return;
    };
    let chunk = usize::from(*size % 64) + 1;
    let yield_between = mode & 1 == 1;
    let harness = harness();
    let (client, server) = tokio::io::duplex(PIPE_BUFFER);
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let bound = OUTPUT_PER_BYTE * stream.len() + OUTPUT_SLACK;

    let output = SESSION_RUNTIME.with(|rt| {
        rt.block_on(async {
            let (mut read, mut write) = tokio::io::split(client);
            let session =
                shoal_proxy::session::serve_io(server, harness.shared.clone(), shutdown_rx);
            let writer = async {
                for piece in stream.chunks(chunk) {
                    // The session may close first (quit, fatal error).
                    if write.write_all(piece).await.is_err() {
                        return;
                    }
                    if yield_between {
                        tokio::task::yield_now().await;
                    }
                }
                let _ = write.shutdown().await;
            };
            let reader = async {
                let mut output = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match read.read(&mut buf).await {
                        Ok(0) | Err(_) => return output,
                        Ok(n) => output.extend_from_slice(&buf[..n]),
                    }
                    assert!(
                        output.len() <= bound,
                        "{} reply bytes for {} input bytes",
                        output.len(),
                        stream.len()
                    );
                }
            };
            let ran = tokio::time::timeout(SESSION_BOUND, async {
                let ((), (), output) = tokio::join!(session, writer, reader);
                output
            })
            .await;
            ran.unwrap_or_else(|_| panic!("session still running after {SESSION_BOUND:?}"))
        })
    });
    drop(shutdown_tx);
    assert!(
        !claims_success(&output),
        "a success reply with every node down: {:?}",
        String::from_utf8_lossy(&output[..output.len().min(512)])
    );
});
