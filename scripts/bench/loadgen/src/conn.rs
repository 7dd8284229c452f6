//! The per-connection I/O loops: each writes what the [`Session`] queues,
//! reads and hands replies back to it, and waits for the next scheduled send.
//!
//! - `pump`, for plain TCP: per round trip one `write` (every request that
//!   fits is encoded into one reusable buffer and written together) and,
//!   thanks to tokio clearing readiness after a short read, one `read`. No
//!   allocation happens on this path once the buffers have grown to their
//!   working size.
//! - `pump_flushed`, for TLS (`--tls-ca`), or any `AsyncRead + AsyncWrite`
//!   stream: the same batches, written with `write` (cancel safe, so it can
//!   sit in the `select!` beside the read) and then flushed, because a TLS
//!   stream may keep the last record of a write in its session until it is
//!   flushed. Reads and writes share the stream through `tokio::io::split`
//!   (a lock taken per poll, never contended: one task owns both halves).
//!
//! The plain loop does not go through the TLS loop's generic path: it keeps
//! `try_write` on the socket, which costs nothing when the kernel takes the
//! whole batch at once (the usual case).

use std::io::ErrorKind as IoErrorKind;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use shoal_net::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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
/// How long a TLS connection's `close_notify` may take once the run is over
/// (after the window: not measured).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs one connection to the end of the plan and returns what it saw.
pub(crate) async fn drive(stream: Stream, mut session: Session) -> ConnStats {
    let outcome = match stream {
        Stream::Plain(mut tcp) => pump(&mut tcp, &mut session).await,
        Stream::Tls(mut tls) => {
            let outcome = pump_flushed(&mut *tls, &mut session).await;
            // Say goodbye properly, so the server sees a clean close rather
            // than a truncated TLS stream; whatever happens is not counted.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, tls.shutdown()).await;
            outcome
        }
    };
    if let Err(why) = outcome {
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
            read = rd.read_buf(&mut rbuf), if s.awaiting_reply() => take_replies(s, &mut rbuf, read)?,
            ready = wr.writable(), if written < wbuf.len() => ready.map_err(Abort::Io)?,
            () = pace(next_send.unwrap_or(now)), if next_send.is_some() => {}
            () = &mut drain => return Err(Abort::Timeout),
        }
    }
}

/// The loop of `pump` for a stream that must be flushed after writes (TLS).
/// A batch is written with `write`, which is cancel safe (when another
/// branch of the `select!` wins, nothing was taken), then flushed once it is
/// all written; replies are read meanwhile, as in `pump`.
async fn pump_flushed<S>(stream: &mut S, s: &mut Session) -> Result<(), Abort>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let end = s.plan().end;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut wbuf = Vec::with_capacity(WRITE_CAPACITY);
    let mut written = 0;
    // Bytes handed to the stream since its last flush.
    let mut unflushed = false;
    let mut rbuf = BytesMut::with_capacity(READ_CAPACITY);
    let drain = tokio::time::sleep_until((end + DRAIN_TIMEOUT).into());
    tokio::pin!(drain);
    loop {
        let now = Instant::now();
        s.fill(&mut wbuf, now);
        // Nothing outstanding means every request was written and answered,
        // hence flushed.
        if s.done(now) {
            return Ok(());
        }
        let next_send = s.next_send();
        tokio::select! {
            biased;
            sent = write_or_flush(&mut wr, &wbuf[written..]), if written < wbuf.len() || unflushed => {
                match sent.map_err(Abort::Io)? {
                    Sent::Wrote(0) => return Err(Abort::Io(IoErrorKind::WriteZero.into())),
                    Sent::Wrote(n) => {
                        written += n;
                        unflushed = true;
                        if written == wbuf.len() {
                            wbuf.clear();
                            written = 0;
                        }
                    }
                    Sent::Flushed => unflushed = false,
                }
            }
            read = rd.read_buf(&mut rbuf), if s.awaiting_reply() => take_replies(s, &mut rbuf, read)?,
            () = pace(next_send.unwrap_or(now)), if next_send.is_some() => {}
            () = &mut drain => return Err(Abort::Timeout),
        }
    }
}

/// What one step of `write_or_flush` did.
enum Sent {
    /// Took this many bytes of the batch.
    Wrote(usize),
    /// Flushed everything taken before.
    Flushed,
}

/// Writes some of `pending`, or flushes when it is empty. Cancel safe: a
/// `write` that did not finish took nothing, and a flush cut short is
/// resumed by the next one.
async fn write_or_flush<W>(wr: &mut W, pending: &[u8]) -> std::io::Result<Sent>
where
    W: AsyncWrite + Unpin,
{
    if pending.is_empty() {
        wr.flush().await?;
        Ok(Sent::Flushed)
    } else {
        wr.write(pending).await.map(Sent::Wrote)
    }
}

/// Hands what a read brought to the session and keeps room in `rbuf` for
/// the next read; a closed or failed connection aborts the run.
fn take_replies(
    s: &mut Session,
    rbuf: &mut BytesMut,
    read: std::io::Result<usize>,
) -> Result<(), Abort> {
    if read.map_err(Abort::Io)? == 0 {
        return Err(Abort::Closed);
    }
    let used = s.on_bytes(rbuf, Instant::now())?;
    rbuf.advance(used);
    if rbuf.capacity() - rbuf.len() < READ_MIN_FREE {
        rbuf.reserve(READ_CAPACITY);
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{ready, Context, Poll};

    use tokio::io::{DuplexStream, ReadBuf};

    use crate::config::Config;
    use crate::session::Plan;

    /// A stream that, like TLS, takes every write at once and keeps it until
    /// flushed: a loop that forgot to flush would wait for replies forever.
    struct HoldUntilFlush {
        inner: DuplexStream,
        held: Vec<u8>,
    }

    impl AsyncRead for HoldUntilFlush {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for HoldUntilFlush {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().held.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            while !this.held.is_empty() {
                let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &this.held))?;
                if n == 0 {
                    return Poll::Ready(Err(IoErrorKind::WriteZero.into()));
                }
                this.held.drain(..n);
            }
            Pin::new(&mut this.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            ready!(self.as_mut().poll_flush(cx))?;
            Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
        }
    }

    /// Answers every request line with `END` (a miss), reading 5 bytes at a
    /// time: enough of a server for a run of single-key gets.
    async fn answer_misses(mut server: DuplexStream) {
        let mut buf = [0u8; 5];
        let mut last = 0u8;
        loop {
            let n = match server.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            for &byte in &buf[..n] {
                if last == b'\r' && byte == b'\n' && server.write_all(b"END\r\n").await.is_err() {
                    return;
                }
                last = byte;
            }
        }
    }

    /// A 200 ms run of gets, 8 in flight, over `stream`, whose other end is
    /// `server`, through `pump_flushed`.
    async fn gets_through<S>(mut stream: S, server: DuplexStream) -> ConnStats
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let config = Config {
            get_ratio: 1.0,
            pipeline: 8,
            keys: 1000,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(200),
            ..Config::default()
        };
        let mut session = Session::new(Arc::new(Plan::new(&config, Instant::now())), 0);
        let answering = tokio::spawn(answer_misses(server));
        let outcome = pump_flushed(&mut stream, &mut session).await;
        assert!(outcome.is_ok(), "{outcome:?}");
        drop(stream);
        answering.await.unwrap();
        session.finish()
    }

    fn assert_all_answered(stats: &ConnStats) {
        assert!(stats.gets > 0, "no get completed");
        assert_eq!(stats.misses, stats.get_keys);
        assert_eq!(stats.error_total(), 0, "{:?}", stats.first_error);
        assert!(!stats.lost);
    }

    #[tokio::test]
    async fn flushed_loop_flushes_what_the_stream_holds() {
        let (client, server) = tokio::io::duplex(64);
        let client = HoldUntilFlush {
            inner: client,
            held: Vec::new(),
        };
        assert_all_answered(&gets_through(client, server).await);
    }

    #[tokio::test]
    async fn flushed_loop_with_writes_and_reads_cut_into_pieces() {
        // 7 bytes of buffer each way: writes are partial, and replies arrive
        // cut through their lines.
        let (client, server) = tokio::io::duplex(7);
        assert_all_answered(&gets_through(client, server).await);
    }
}
