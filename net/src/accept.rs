//! Admitting and accepting TCP connections, the one way the node's data
//! port, the proxy's client port and both admin ports do it.
//!
//! A [`ConnectionBudget`] holds two budgets: one for clients, and one
//! reserved for the cluster's own connections (replication streams,
//! durable-write acknowledgements), so that a flood of clients never
//! starves them. The accept loop ([`accept_loop`]) waits for a seat of
//! either kind before it accepts — a full listener leaves new clients in
//! the kernel's accept queue instead of spinning — backs off when
//! `accept` fails (out of descriptors), and stops when the shutdown signal
//! flips. Each connection holds its [`Seat`] for its whole life: a client
//! seat while the client budget has room, otherwise a *provisional* seat
//! from the reserve, which the connection must turn into a system seat by
//! authenticating as the cluster (the caller decides what that means) or
//! give up. [`ConnectionBudget::drain`] waits for every seat to come back.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// The first pause after a failed accept; doubled on each failure in a
/// row up to [`MAX_BACKOFF`], reset by a successful accept.
const FIRST_BACKOFF: Duration = Duration::from_millis(5);

/// The longest pause between failed accepts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// At most `clients` client connections and `system` more for the
/// cluster's own traffic, each holding a [`Seat`] for its whole life, so
/// the budget also tells when every connection has ended.
#[derive(Clone, Debug)]
pub struct ConnectionBudget {
    /// Every seat, client or system: what the accept loop waits for.
    seats: Arc<Semaphore>,
    /// The client seats among them.
    clients: Arc<Semaphore>,
    max_seats: usize,
    max_clients: usize,
}

/// What a connection's seat lets it do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeatKind {
    /// Within the client budget.
    Client,
    /// Beyond the client budget, on the cluster's reserve: it must
    /// authenticate as the cluster before anything else.
    Provisional,
    /// Authenticated as the cluster: counts against the reserve only.
    System,
}

/// One connection's place in a [`ConnectionBudget`], given back when
/// dropped.
#[derive(Debug)]
pub struct Seat {
    _seat: OwnedSemaphorePermit,
    client: Option<OwnedSemaphorePermit>,
    kind: SeatKind,
}

impl ConnectionBudget {
    /// A budget of `clients` client connections (at least one) and
    /// `system` more reserved for the cluster (0 for a listener with no
    /// cluster traffic: the proxy, the admin ports).
    pub fn new(clients: usize, system: usize) -> ConnectionBudget {
        let max_clients = clients.clamp(1, Semaphore::MAX_PERMITS / 2);
        let max_seats = max_clients + system.min(Semaphore::MAX_PERMITS / 2);
        ConnectionBudget {
            seats: Arc::new(Semaphore::new(max_seats)),
            clients: Arc::new(Semaphore::new(max_clients)),
            max_seats,
            max_clients,
        }
    }

    /// The most client connections at once.
    pub fn max_clients(&self) -> usize {
        self.max_clients
    }

    /// The most connections of the cluster's own at once (beyond the
    /// clients').
    pub fn max_system(&self) -> usize {
        self.max_seats - self.max_clients
    }

    /// Client connections open now.
    pub fn clients(&self) -> usize {
        self.max_clients - self.clients.available_permits()
    }

    /// Waits for a seat: a client seat when the client budget has room,
    /// else a provisional one from the reserve. `None` once closed.
    async fn seat(&self) -> Option<Seat> {
        let seat = self.seats.clone().acquire_owned().await.ok()?;
        let client = self.clients.clone().try_acquire_owned().ok();
        let kind = match client {
            Some(_) => SeatKind::Client,
            None => SeatKind::Provisional,
        };
        Some(Seat {
            _seat: seat,
            client,
            kind,
        })
    }

    /// Waits until every connection has ended, up to `grace`; returns
    /// whether they all did. Call after the accept loop stopped: while it
    /// runs it holds a seat of its own as it waits for the next client.
    pub async fn drain(&self, grace: Duration) -> bool {
        let all = u32::try_from(self.max_seats).unwrap_or(u32::MAX);
        tokio::time::timeout(grace, self.seats.acquire_many(all))
            .await
            .is_ok_and(|acquired| acquired.is_ok())
    }
}

impl Seat {
    /// What the seat lets the connection do now.
    pub fn kind(&self) -> SeatKind {
        self.kind
    }

    /// True while the connection must authenticate as the cluster before
    /// anything else.
    pub fn is_provisional(&self) -> bool {
        self.kind == SeatKind::Provisional
    }

    /// The connection authenticated as the cluster: it gives its client
    /// seat back, if it held one, and counts against the reserve only.
    pub fn promote(&mut self) {
        self.client = None;
        self.kind = SeatKind::System;
    }
}

/// Accepts connections on `listener` until `shutdown` flips (or its sender
/// is dropped), each only once `budget` has a seat for it: when it is
/// full, new clients wait in the kernel's accept queue. Each accepted
/// stream is handed to `serve` with its seat, and the future `serve`
/// returns runs on its own task.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    budget: ConnectionBudget,
    mut shutdown: watch::Receiver<bool>,
    mut serve: F,
) where
    F: FnMut(TcpStream, SocketAddr, Seat) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        let seat = tokio::select! {
            seat = budget.seat() => match seat {
                Some(seat) => seat,
                None => return,
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
                tokio::spawn(serve(stream, peer, seat));
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
    async fn echo_once(mut stream: TcpStream, _peer: SocketAddr, _seat: Seat) {
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
        let cap = ConnectionBudget::new(1, 0);
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
        let cap = ConnectionBudget::new(4, 0);
        let (stop, shutdown) = watch::channel(false);
        let serve = |stream: TcpStream, _peer, seat: Seat| async move {
            // Echo twice, so the connection stays open after the first;
            // the seat goes with the connection.
            let _seat = seat;
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

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[tokio::test]
    async fn beyond_the_clients_seats_are_provisional_until_promoted() {
        let budget = ConnectionBudget::new(2, 1);
        let first = budget.seat().await.unwrap();
        let mut second = budget.seat().await.unwrap();
        assert_eq!(
            (first.kind(), second.kind()),
            (SeatKind::Client, SeatKind::Client)
        );
        let third = budget.seat().await.unwrap();
        assert!(third.is_provisional(), "the client budget is full");
        // No fourth seat while all three are held.
        let early = tokio::time::timeout(Duration::from_millis(50), budget.seat());
        assert!(early.await.is_err());
        // A client that proves it is the cluster gives its client seat back.
        second.promote();
        assert_eq!(second.kind(), SeatKind::System);
        assert_eq!(budget.clients(), 1);
        drop(third);
        let fourth = budget.seat().await.unwrap();
        assert_eq!(fourth.kind(), SeatKind::Client);
        assert_eq!((budget.max_clients(), budget.max_system()), (2, 1));
    }

    #[tokio::test]
    async fn drain_waits_for_every_seat() {
        let budget = ConnectionBudget::new(1, 1);
        let seat = budget.seat().await.unwrap();
        assert!(!budget.drain(Duration::from_millis(20)).await);
        drop(seat);
        assert!(budget.drain(Duration::from_secs(1)).await);
    }
}
