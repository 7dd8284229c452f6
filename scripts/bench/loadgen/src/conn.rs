//! The per-connection I/O loop: writes what the [`Session`] queues, reads and
//! hands replies back to it, and waits for the next scheduled send.
//!
//! Per round trip the loop costs one `write` (every request that fits is
//! encoded into one reusable buffer and written together) and, thanks to
//! tokio clearing readiness after a short read, one `read`. No allocation
//! happens on this path once the buffers have grown to their working size.

use std::io::ErrorKind as IoErrorKind;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::session::{Abort, Session};
use crate::stats::ConnStats;

/// How long replies outstanding at the end of the window may take before
/// they count as timeouts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Initial read buffer: many pipelined replies per `read`.
const READ_CAPACITY: usize = 64 * 1024;
/// Grow the read buffer when less than this is free, so a read is never tiny.
const READ_MIN_FREE: usize = 4 * 1024;
/// Initial write buffer; it grows to the largest batch and stays there.
const WRITE_CAPACITY: usize = 16 * 1024;
/// Tokio's timer ticks in milliseconds; waits shorter than this are done by
/// yielding to the scheduler and checking the clock, so an open-loop
/// schedule is not rounded up to the next tick.
const SPIN_BELOW: Duration = Duration::from_millis(1);

/// Runs one connection to the end of the plan and returns what it saw.
pub(crate) async fn drive(mut stream: TcpStream, mut session: Session) -> ConnStats {
    if let Err(why) = pump(&mut stream, &mut session).await {
        session.abort(why);
    }
    session.finish()
}

async fn pump(stream: &mut TcpStream, s: &mut Session) -> Result<(), Abort> {
    let end = s.plan().end;
    let (mut rd, wr) = stream.split();
    let mut wbuf = Vec::with_capacity(WRITE_CAPACITY);
    let mut written = 0;
    let mut rbuf = BytesMut::with_capacity(READ_CAPACITY);
    let drain = tokio::time::sleep_until((end + DRAIN_TIMEOUT).into());
    tokio::pin!(drain);
    loop {
        let now = Instant::now();
        s.fill(&mut wbuf, now);
        if written < wbuf.len() {
            match wr.try_write(&wbuf[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == IoErrorKind::WouldBlock => {}
                Err(e) => return Err(Abort::Io(e)),
            }
            if written == wbuf.len() {
                wbuf.clear();
                written = 0;
            }
        }
        if s.done(now) {
            return Ok(());
        }
        let next_send = s.next_send();
        tokio::select! {
            biased;
            read = rd.read_buf(&mut rbuf), if s.awaiting_reply() => {
                if read.map_err(Abort::Io)? == 0 {
                    return Err(Abort::Closed);
                }
                let used = s.on_bytes(&rbuf, Instant::now())?;
                rbuf.advance(used);
                if rbuf.capacity() - rbuf.len() < READ_MIN_FREE {
                    rbuf.reserve(READ_CAPACITY);
                }
            }
            ready = wr.writable(), if written < wbuf.len() => ready.map_err(Abort::Io)?,
            () = pace(next_send.unwrap_or(now)), if next_send.is_some() => {}
            () = &mut drain => return Err(Abort::Timeout),
        }
    }
}

/// Waits until about `at`: sleeps on the timer while more than a tick away,
/// then yields, so the caller re-checks the clock at scheduler speed.
async fn pace(at: Instant) {
    let now = Instant::now();
    if at > now + SPIN_BELOW {
        tokio::time::sleep_until((at - SPIN_BELOW).into()).await;
    } else {
        tokio::task::yield_now().await;
    }
}
