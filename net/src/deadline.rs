//! Deadlines that keep slow and silent peers from holding a connection's
//! memory: how long a half-sent request may wait for its next byte, how
//! long replies may sit unread, how long a connection may idle. Their
//! defaults are what a busy production cluster accepts without noticing:
//! a healthy client never stalls mid-request or leaves replies unread for
//! seconds.
//!
//! [`write_all`] is the one way replies leave: it writes without a timer
//! while the socket takes the bytes (the common case costs nothing), and
//! only arms one when the peer stops reading.

use std::io;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// A connection's deadlines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    /// A request begun and not finished (or a TLS handshake) with nothing
    /// new arriving for this long: the connection is closed.
    pub request: Duration,
    /// Replies the peer does not read, with no progress for this long:
    /// the connection is closed. Until then it is not read from, so a
    /// client that never reads its replies cannot make the server buffer
    /// more.
    pub write: Duration,
    /// A connection with nothing pending that stays silent this long is
    /// closed; `None` keeps idle connections open (memcached's default:
    /// clients pool them).
    pub idle: Option<Duration>,
}

impl Default for Deadlines {
    fn default() -> Deadlines {
        Deadlines {
            request: Duration::from_secs(10),
            write: Duration::from_secs(30),
            idle: None,
        }
    }
}

impl Deadlines {
    /// How long the next read may wait: `request` while a request is half
    /// read, `idle` otherwise.
    pub fn for_read(&self, mid_request: bool) -> Option<Duration> {
        if mid_request {
            Some(self.request)
        } else {
            self.idle
        }
    }
}

/// Why replies could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The socket failed (the peer reset or closed it).
    #[error("write failed: {0}")]
    Io(#[from] io::Error),
    /// The peer read nothing for the whole write deadline.
    #[error("the peer stopped reading")]
    Stalled,
}

/// Writes all of `buf` and flushes (a TLS stream holds the last record
/// until then), failing with [`WriteError::Stalled`] if any step makes no
/// progress for `stall`.
pub async fn write_all<W>(writer: &mut W, mut buf: &[u8], stall: Duration) -> Result<(), WriteError>
where
    W: AsyncWrite + Unpin,
{
    while !buf.is_empty() {
        // Try first without a timer: a socket with room takes the bytes at
        // once, and arming a timer for every reply would cost more than
        // the write.
        let written = match writer.write(buf).now_or_never() {
            Some(result) => result?,
            None => tokio::time::timeout(stall, writer.write(buf))
                .await
                .map_err(|_| WriteError::Stalled)??,
        };
        if written == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero).into());
        }
        buf = &buf[written..];
    }
    match writer.flush().now_or_never() {
        Some(result) => Ok(result?),
        None => Ok(tokio::time::timeout(stall, writer.flush())
            .await
            .map_err(|_| WriteError::Stalled)??),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_reader_gets_everything() {
        let (mut near, mut far) = tokio::io::duplex(64);
        let payload = vec![7u8; 10_000];
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            far.read_to_end(&mut got).await.unwrap();
            got
        });
        write_all(&mut near, &payload, Duration::from_secs(5))
            .await
            .unwrap();
        drop(near);
        assert_eq!(reader.await.unwrap(), payload);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_stalls_the_write() {
        let (mut near, _far) = tokio::io::duplex(64);
        let started = tokio::time::Instant::now();
        let outcome = write_all(&mut near, &[1u8; 1000], Duration::from_secs(30)).await;
        assert!(matches!(outcome, Err(WriteError::Stalled)));
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_reader_is_not_a_stall() {
        let (mut near, mut far) = tokio::io::duplex(16);
        let reader = tokio::spawn(async move {
            let mut chunk = [0u8; 16];
            let mut total = 0;
            while total < 160 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                total += far.read(&mut chunk).await.unwrap();
            }
        });
        // Each step waits 20 s for the reader, under the 30 s deadline,
        // though the whole write takes minutes.
        write_all(&mut near, &[1u8; 160], Duration::from_secs(30))
            .await
            .unwrap();
        reader.await.unwrap();
    }

    #[test]
    fn reads_wait_for_a_half_sent_request_and_idle_by_choice() {
        let deadlines = Deadlines::default();
        assert_eq!(deadlines.for_read(true), Some(Duration::from_secs(10)));
        assert_eq!(deadlines.for_read(false), None);
    }
}
