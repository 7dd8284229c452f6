//! The admin ports' server loop: an axum router served by hyper over
//! HTTP/1.1, plain or HTTPS, under a connection cap and a deadline for
//! each request's headers (and the TLS handshake), so that a client that
//! opens connections and sends nothing, or sends headers a byte at a time,
//! holds a bounded number of them for a bounded time. On shutdown every
//! connection finishes its current response (long-lived responses, like a
//! config stream, end on the same signal) and the loop waits up to a grace
//! period for them.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::accept::{accept_loop, ConnectionBudget, Seat};
use crate::stream::Stream;
use crate::tls::TlsAcceptor;

/// An admin port's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Most connections at once; more wait in the accept queue.
    pub max_connections: usize,
    /// How long a request's headers (and a TLS handshake) may take.
    pub header_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_connections: 1_000,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// What to count as the admin port turns connections away.
pub trait HttpCounters: Send + Sync + 'static {
    /// A TLS handshake failed or timed out.
    fn handshake_failed(&self);
}

/// Serves `router` on `listener` (over TLS when `tls` is given) until
/// `shutdown` flips, then waits up to `grace` for open connections.
pub async fn serve<C: HttpCounters>(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: HttpLimits,
    counters: std::sync::Arc<C>,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let budget = ConnectionBudget::new(limits.max_connections, 0);
    let serve_one = {
        let shutdown = shutdown.clone();
        move |tcp: TcpStream, _peer: SocketAddr, seat: Seat| {
            let (router, tls, counters) = (router.clone(), tls.clone(), counters.clone());
            let shutdown = shutdown.clone();
            async move {
                let _seat = seat;
                let stream = match tls {
                    None => Stream::Plain(tcp),
                    Some(tls) => match tls.accept(tcp, limits.header_timeout).await {
                        Ok(stream) => stream,
                        Err(_) => {
                            counters.handshake_failed();
                            return;
                        }
                    },
                };
                connection(stream, router, limits, shutdown).await;
            }
        }
    };
    accept_loop(listener, budget.clone(), shutdown, serve_one).await;
    budget.drain(grace).await;
}

/// One HTTP/1.1 connection, until the client closes it, a deadline passes
/// or the server stops (after the response in progress).
async fn connection(
    stream: Stream,
    router: Router,
    limits: HttpLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let stopping = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let service = TowerToHyperService::new(router);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stopping => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[derive(Default)]
    struct Count(AtomicU64);

    impl HttpCounters for Count {
        fn handshake_failed(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn started(
        limits: HttpLimits,
        tls: Option<TlsAcceptor>,
    ) -> (
        SocketAddr,
        watch::Sender<bool>,
        Arc<Count>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/ping", get(|| async { "pong" }));
        let (stop, shutdown) = watch::channel(false);
        let count = Arc::new(Count::default());
        let task = tokio::spawn(serve(
            listener,
            router,
            tls,
            limits,
            count.clone(),
            shutdown,
            Duration::from_secs(1),
        ));
        (addr, stop, count, task)
    }

    async fn ping(stream: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin)) -> String {
        stream
            .write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        stream.flush().await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = stream.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[tokio::test]
    async fn slow_headers_are_cut_off_and_the_cap_holds() {
        let limits = HttpLimits {
            max_connections: 1,
            header_timeout: Duration::from_millis(200),
        };
        let (addr, stop, _, task) = started(limits, None).await;
        // Half a request line, then nothing: closed after the deadline.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /pi").await.unwrap();
        // Meanwhile the only seat is taken: a second client waits.
        let mut second = TcpStream::connect(addr).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(100), ping(&mut second));
        assert!(waiting.await.is_err(), "served beyond the cap");
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest));
        assert!(closed.await.is_ok(), "the slow client was not cut off");
        // Its seat freed, the second client is served.
        let mut third = TcpStream::connect(addr).await.unwrap();
        drop(second);
        assert!(ping(&mut third).await.contains("pong"));
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn https_serves_and_plaintext_is_refused() {
        let dir = std::env::temp_dir().join(format!("shoal-https-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = crate::local_ca::LocalCa::ensure(&dir, &["127.0.0.1"]).unwrap();
        let acceptor = TlsAcceptor::from_pem_files(&ca.cert, &ca.key).unwrap();
        let (addr, stop, count, task) = started(HttpLimits::default(), Some(acceptor)).await;
        let connector = crate::tls::TlsConnector::trusting(&ca.ca).unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = connector
            .connect("127.0.0.1", tcp, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(ping(&mut tls).await.contains("pong"));
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain
            .write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut reply = Vec::new();
        let _ = plain.read_to_end(&mut reply).await;
        assert!(!String::from_utf8_lossy(&reply).contains("pong"));
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        drop(tls);
        stop.send(true).unwrap();
        task.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
