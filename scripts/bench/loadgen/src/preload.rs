//! Writes every key once before the clock starts, over a few of the run's
//! connections, in pipelined batches; every reply must be a success.

use std::ops::Range;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use shoal_net::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ascii::{self, Frame};
use crate::binary;
use crate::config::Protocol;
use crate::meta;
use crate::run::RunError;
use crate::session::Plan;

/// Connections used to preload: enough to overlap round trips, few enough
/// that the server is not flooded before the run.
const PRELOAD_CONNECTIONS: usize = 4;
/// Sets per batch (one write, then all replies).
const BATCH_KEYS: u64 = 256;
/// Stop adding sets to a batch past this many bytes (large values).
const BATCH_BYTES: usize = 256 * 1024;

/// Sets keys `0..plan.keys` over the first connections of `streams`.
pub(crate) async fn preload(
    mut streams: Vec<Stream>,
    plan: Arc<Plan>,
) -> Result<Vec<Stream>, RunError> {
    let workers = streams.len().min(PRELOAD_CONNECTIONS);
    let per_worker = plan.keys.div_ceil(workers as u64);
    let mut tasks = Vec::with_capacity(workers);
    for (i, stream) in streams.drain(..workers).enumerate() {
        let first = i as u64 * per_worker;
        let range = first.min(plan.keys)..(first + per_worker).min(plan.keys);
        tasks.push(tokio::spawn(preload_range(stream, plan.clone(), range)));
    }
    let mut done = Vec::with_capacity(workers);
    for task in tasks {
        done.push(task.await.map_err(|e| RunError::Task(e.to_string()))??);
    }
    done.append(&mut streams);
    Ok(done)
}

async fn preload_range(
    mut stream: Stream,
    plan: Arc<Plan>,
    keys: Range<u64>,
) -> Result<Stream, RunError> {
    let mut wbuf = Vec::new();
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut next = keys.start;
    while next < keys.end {
        wbuf.clear();
        let first = next;
        while next < keys.end && next - first < BATCH_KEYS && wbuf.len() < BATCH_BYTES {
            match plan.protocol {
                Protocol::Ascii => ascii::encode_set(&mut wbuf, &plan.prefix, next, &plan.value),
                Protocol::Meta => meta::encode_set(&mut wbuf, &plan.prefix, next, &plan.value),
                Protocol::Binary => binary::encode_set(
                    &mut wbuf,
                    &plan.prefix,
                    next,
                    &plan.value,
                    (next - first) as u32,
                ),
            }
            next += 1;
        }
        stream.write_all(&wbuf).await.map_err(RunError::Preload)?;
        // TLS may hold the batch's last record until flushed (free on TCP).
        stream.flush().await.map_err(RunError::Preload)?;
        let mut answered = 0;
        while answered < next - first {
            let ok = match plan.protocol {
                Protocol::Ascii => ascii::parse_frame(&rbuf).map(|(f, n)| (f == Frame::Stored, n)),
                Protocol::Meta => {
                    meta::parse_frame(&rbuf).map(|(f, n)| (f == meta::Frame::Stored, n))
                }
                Protocol::Binary => binary::parse_response(&rbuf).map(|(r, n)| {
                    let ok = r.opcode == binary::OP_SET
                        && r.status == binary::STATUS_OK
                        && u64::from(r.opaque) == answered;
                    (ok, n)
                }),
            };
            match ok {
                Ok((true, n)) => {
                    rbuf.advance(n);
                    answered += 1;
                }
                Ok((false, _)) => return Err(RunError::PreloadRejected(first + answered)),
                Err(e) if e.is_incomplete() => {
                    if stream
                        .read_buf(&mut rbuf)
                        .await
                        .map_err(RunError::Preload)?
                        == 0
                    {
                        return Err(RunError::Preload(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                }
                Err(e) => return Err(RunError::PreloadReply(e.reason())),
            }
        }
    }
    Ok(stream)
}
