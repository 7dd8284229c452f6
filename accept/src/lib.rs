//! Accepting TCP connections, the one way the node's data port and the
//! proxy's client port both do it: a connection cap ([`ConnectionCap`])
//! whose owned permits each connection holds until it ends, a loop
//! ([`accept_loop`]) that waits for a permit before accepting, backs off
//! instead of spinning when `accept` fails (out of descriptors), and stops
//! when the shutdown signal flips; and a drain that waits for every permit
//! to come back.
//!
//! A tiny crate so that node and proxy share this without depending on
//! each other. It knows nothing of memcached or of either caller: it
//! depends on no other Shoal crate.
#![forbid(unsafe_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// The first pause after a failed accept; doubled on each failure in a
/// row up to [`MAX_BACKOFF`], reset by a successful accept.
const FIRST_BACKOFF: Duration = Duration::from_millis(5);

/// The longest pause between failed accepts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// At most `max` connections at once: each holds an owned permit for its
/// whole life, so the cap also tells when every connection has ended.
#[derive(Clone, Debug)]
pub struct ConnectionCap {
    permits: Arc<Semaphore>,
    max: usize,
}

impl ConnectionCap {
    /// A cap of `max` connections (at least one).
    pub fn new(max: usize) -> ConnectionCap {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        ConnectionCap {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Waits until every connection has ended, up to `grace`; returns
    /// whether they all did. Call after the accept loop stopped: while it
    /// runs it holds a permit of its own as it waits for the next client.
    pub async fn drain(&self, grace: Duration) -> bool {
        let all = u32::try_from(self.max).unwrap_or(u32::MAX);
        tokio::time::timeout(grace, self.permits.acquire_many(all))
            .await
            .is_ok_and(|acquired| acquired.is_ok())
    }
}

/// Accepts connections on `listener` until `shutdown` flips (or its sender
/// is dropped), at most as many at once as `cap` allows: when it is full,
/// new clients wait in the kernel's accept queue. Each accepted stream is
/// handed to `serve`, whose future runs on its own task holding the
/// connection's permit until it completes.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    cap: ConnectionCap,
    mut shutdown: watch::Receiver<bool>,
    mut serve: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        let permit = tokio::select! {
            permit = cap.permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = shutdown.changed() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = FIRST_BACKOFF;
                let connection = serve(stream, peer);
                tokio::spawn(async move {
                    connection.await;
                    drop(permit);
                });
            }
            Err(error) => {
                // Out of descriptors and the like: back off instead of
                // spinning on a listener that keeps failing.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn bound() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    /// Serves each connection by echoing one byte, then closing.
    async fn echo_once(mut stream: TcpStream, _peer: SocketAddr) {
        let mut byte = [0u8];
        if stream.read_exact(&mut byte).await.is_ok() {
            let _ = stream.write_all(&byte).await;
        }
    }

    /// Sends one byte and reads the echo.
    async fn round_trip(stream: &mut TcpStream, byte: u8) -> u8 {
        stream.write_all(&[byte]).await.unwrap();
        let mut echo = [0u8];
        stream.read_exact(&mut echo).await.unwrap();
        echo[0]
    }

    #[tokio::test]
    async fn the_cap_holds_back_the_next_client_until_one_ends() {
        let (listener, addr) = bound().await;
        let cap = ConnectionCap::new(1);
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, cap.clone(), shutdown, echo_once));
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        // The second client connects (kernel backlog) but is not served
        // while the first holds the only permit.
        second.write_all(b"b").await.unwrap();
        let mut byte = [0u8];
        let early = tokio::time::timeout(Duration::from_millis(200), second.read_exact(&mut byte));
        assert!(early.await.is_err(), "served beyond the cap");
        assert_eq!(round_trip(&mut first, b'a').await, b'a');
        second.read_exact(&mut byte).await.unwrap();
        assert_eq!(&byte, b"b");
        stop.send(true).unwrap();
        task.await.unwrap();
        assert!(cap.drain(Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn drain_waits_for_open_connections() {
        let (listener, addr) = bound().await;
        let cap = ConnectionCap::new(4);
        let (stop, shutdown) = watch::channel(false);
        let serve = |stream: TcpStream, _peer| async move {
            // Echo twice, so the connection stays open after the first.
            let mut stream = stream;
            let mut byte = [0u8];
            for _ in 0..2 {
                if stream.read_exact(&mut byte).await.is_err() {
                    return;
                }
                let _ = stream.write_all(&byte).await;
            }
        };
        let task = tokio::spawn(accept_loop(listener, cap.clone(), shutdown, serve));
        let mut client = TcpStream::connect(addr).await.unwrap();
        assert_eq!(round_trip(&mut client, b'x').await, b'x');
        stop.send(true).unwrap();
        task.await.unwrap();
        assert!(
            !cap.drain(Duration::from_millis(100)).await,
            "one still open"
        );
        assert_eq!(round_trip(&mut client, b'y').await, b'y');
        assert!(cap.drain(Duration::from_secs(5)).await);
    }
}
