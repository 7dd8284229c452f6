//! One client connection of the proxy.
//!
//! Requests are sniffed by their first byte (0x80 binary, `m` meta,
//! otherwise classic ASCII), parsed zero-copy from the read buffer, and
//! every complete request of a read is started at once — so a pipeline
//! spread over several nodes is served in parallel — while replies are
//! written strictly in request order, all of a batch in one write. A read
//! holding one request (a client waiting for each reply, the common case)
//! runs it in the session's own task, its reply encoded straight into the
//! write buffer.

mod ascii;
mod binary;
pub mod call;
mod meta;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::stream::{FuturesOrdered, StreamExt};
use shoal_protocol::binary::{
    encode_error_response, parse_request, peek_request_header, Request, Status,
};
use shoal_protocol::{ascii as ascii_codec, meta as meta_codec, ParseError, Recovery};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::Shared;

/// What `version` answers: memcached's protocol level, then the proxy's.
pub const VERSION: &str = concat!("1.6.18-shoal-proxy-", env!("CARGO_PKG_VERSION"));

/// Read buffer per client; grows for large values.
const READ_BUFFER: usize = 16 * 1024;

/// Most requests of one read started together: bounds the memory a client
/// pipelining without reading replies can make the proxy hold.
const MAX_PIPELINE: usize = 1024;

/// What follows a request whose reply (possibly empty: quiet, noreply or
/// `quit`) has been appended to the output buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Serve the next request.
    Continue,
    /// Write the reply, then close.
    Close,
}

/// A parsed request (spans into its frame).
#[derive(Clone, Copy, Debug)]
enum Parsed {
    Ascii(ascii_codec::Command),
    Meta(meta_codec::MetaCommand),
    Binary(Request),
}

/// Serves one client until it closes, errs, quits or the proxy drains.
pub async fn serve(stream: TcpStream, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    // The socket's own halves: no lock per read and write, unlike
    // `tokio::io::split`.
    let (read, write) = stream.into_split();
    run(read, write, shared, shutdown).await;
}

/// [`serve`] over any byte stream (tests and fuzzing use in-memory pipes).
pub async fn serve_io<S>(stream: S, shared: Arc<Shared>, shutdown: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Send,
{
    let (read, write) = tokio::io::split(stream);
    run(read, write, shared, shutdown).await;
}

async fn run<R, W>(
    mut read: R,
    mut write: W,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut rbuf = BytesMut::with_capacity(READ_BUFFER);
    let mut wbuf = BytesMut::new();
    let mut skip = 0usize;
    // Requests of one read that run together; kept across reads (an empty
    // `FuturesOrdered` is two allocations to make).
    let mut pending: FuturesOrdered<Handled> = FuturesOrdered::new();
    loop {
        let mut close = false;
        let mut inline = None;
        while pending.len() < MAX_PIPELINE {
            if skip > 0 {
                let n = skip.min(rbuf.len());
                rbuf.advance(n);
                skip -= n;
            }
            if skip > 0 || rbuf.is_empty() {
                break;
            }
            match parse(&rbuf, &shared) {
                Ok(Some((parsed, used))) => {
                    let frame = rbuf.split_to(used).freeze();
                    if pending.is_empty() && rbuf.is_empty() {
                        // The read's only request (a client waiting for
                        // each reply): run it below, in this task, its
                        // reply written straight into `wbuf` — no boxed
                        // future and no copy.
                        inline = Some((frame, parsed));
                        break;
                    }
                    pending.push_back(handle(shared.clone(), frame, parsed));
                }
                Ok(None) => break,
                Err(e) => {
                    shared.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    let mut out = BytesMut::new();
                    if rbuf[0] == 0x80 {
                        if let Some(header) = peek_request_header(&rbuf) {
                            encode_error_response(&mut out, &header, Status::for_parse_error(&e));
                        }
                    } else {
                        e.write_ascii_reply(&mut out);
                    }
                    // A write refused as too large unlinks its key on the
                    // owning node, as memcached does, before the client
                    // hears the error.
                    let unlink = e
                        .key
                        .and_then(|span| rbuf.get(span.start..span.end))
                        .map(Bytes::copy_from_slice);
                    let shared = shared.clone();
                    pending.push_back(Box::pin(async move {
                        if let Some(key) = unlink {
                            let request = call::Plain {
                                opcode: shoal_protocol::binary::Opcode::Delete,
                                cas: 0,
                                extras: &[],
                                key: &key,
                                value: &[],
                            };
                            let _ = call::keyed(&shared, &key, &request, false).await;
                        }
                        (out, Outcome::Continue)
                    }));
                    match e.recovery {
                        Recovery::Skip(n) => skip = n,
                        Recovery::Close => {
                            close = true;
                            break;
                        }
                    }
                }
            }
        }
        if let Some((frame, parsed)) = inline {
            close = execute(&shared, &frame, &parsed, &mut wbuf).await == Outcome::Close;
        }
        while let Some((bytes, outcome)) = pending.next().await {
            wbuf.put_slice(&bytes);
            if outcome == Outcome::Close {
                close = true;
                break;
            }
        }
        if !wbuf.is_empty() {
            if write.write_all(&wbuf).await.is_err() {
                return;
            }
            wbuf.clear();
        }
        if close {
            return;
        }
        if !rbuf.is_empty()
            && skip == 0
            && rbuf.len() < READ_BUFFER
            && can_parse_more(&rbuf, &shared)
        {
            continue;
        }
        rbuf.reserve(READ_BUFFER / 4);
        let read_result = tokio::select! {
            r = read.read_buf(&mut rbuf) => r,
            _ = shutdown.changed() => return,
        };
        match read_result {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// True when the buffer still holds a complete request (the pipeline cap
/// stopped the last pass early).
fn can_parse_more(rbuf: &BytesMut, shared: &Shared) -> bool {
    !matches!(parse(rbuf, shared), Ok(None))
}

/// A request running alongside others of its read: its reply bytes and
/// what follows them.
type Handled = std::pin::Pin<Box<dyn std::future::Future<Output = (BytesMut, Outcome)> + Send>>;

fn handle(shared: Arc<Shared>, frame: Bytes, parsed: Parsed) -> Handled {
    Box::pin(async move {
        let mut out = BytesMut::new();
        let outcome = execute(&shared, &frame, &parsed, &mut out).await;
        (out, outcome)
    })
}

/// Runs one request, appending its reply to `out`, and counts it.
async fn execute(shared: &Shared, frame: &Bytes, parsed: &Parsed, out: &mut BytesMut) -> Outcome {
    let started = Instant::now();
    let outcome = match parsed {
        Parsed::Ascii(cmd) => ascii::execute(shared, frame, cmd, out).await,
        Parsed::Binary(req) => binary::execute(shared, frame, req, out).await,
        Parsed::Meta(cmd) => meta::execute(shared, frame, cmd, out).await,
    };
    shared.stats.requests.fetch_add(1, Ordering::Relaxed);
    shared.stats.observe(started.elapsed());
    outcome
}

fn parse(buf: &[u8], shared: &Shared) -> Result<Option<(Parsed, usize)>, ParseError> {
    let limits = &shared.config.downstream.limits;
    Ok(match buf[0] {
        0x80 => parse_request(buf, limits)?.map(|(r, n)| (Parsed::Binary(r), n)),
        b'm' => meta_codec::parse_meta(buf, limits)?.map(|(m, n)| (Parsed::Meta(m), n)),
        _ => ascii_codec::parse_command(buf, limits)?.map(|(c, n)| (Parsed::Ascii(c), n)),
    })
}

/// `stats proxy`: the proxy's own counters, map and per-node figures.
pub(crate) fn proxy_stats(shared: &Shared) -> Vec<(String, String)> {
    let s = &shared.stats;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed).to_string();
    let routing = shared.maps.load();
    let mut stats = vec![
        ("proxy_version".to_string(), VERSION.to_string()),
        ("proxy_curr_connections".into(), load(&s.curr_connections)),
        ("proxy_total_connections".into(), load(&s.total_connections)),
        ("proxy_requests".into(), load(&s.requests)),
        ("proxy_errors".into(), load(&s.errors)),
        ("proxy_retries".into(), load(&s.retries)),
        ("proxy_not_my_vbucket".into(), load(&s.not_my_vbucket)),
        (
            "proxy_multiget_missing_keys".into(),
            load(&s.multiget_missing_keys),
        ),
        ("proxy_protocol_errors".into(), load(&s.protocol_errors)),
        (
            "proxy_map_rev".into(),
            routing
                .revision
                .and_then(|r| r.rev)
                .map_or("none".into(), |r| r.to_string()),
        ),
        ("proxy_servers".into(), routing.servers.len().to_string()),
        (
            "proxy_latency_p50_us".into(),
            s.latency_quantile_micros(0.5).to_string(),
        ),
        (
            "proxy_latency_p99_us".into(),
            s.latency_quantile_micros(0.99).to_string(),
        ),
    ];
    for (addr, pool) in routing.servers.iter().zip(&routing.pools) {
        let n = &pool.stats;
        let prefix = format!("node_{addr}");
        stats.push((format!("{prefix}_batches"), load(&n.batches)));
        stats.push((format!("{prefix}_errors"), load(&n.errors)));
        stats.push((format!("{prefix}_in_flight"), load(&n.in_flight)));
        stats.push((
            format!("{prefix}_down"),
            u8::from(pool.is_down()).to_string(),
        ));
    }
    stats
}
