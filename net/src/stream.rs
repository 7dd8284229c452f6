//! [`Stream`]: a connection's bytes, plain TCP or TLS over TCP, as one
//! type, so the node's and the proxy's connection code is written once for
//! both. A plain stream costs one `match` per read or write over using the
//! socket directly. Split into halves (borrowed or owned), a plain stream
//! uses the socket's own halves (no lock), a TLS one `tokio::io::split`.
//!
//! Over TLS a write may leave its last record inside the TLS session when
//! the socket is full: whoever writes must flush before waiting for
//! anything else (`deadline::write_all` does; a flush of a plain stream
//! costs nothing).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

/// A connection's byte stream.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP, either side of the handshake.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }

    /// Turns Nagle's algorithm off: replies of a batch leave in one write
    /// already, and a lone reply must not wait.
    pub fn set_nodelay(&self) {
        let _ = self.tcp().set_nodelay(true);
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    /// True over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

impl Stream {
    /// Borrowed read and write halves, usable at once (in one `select!`).
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(s.as_mut());
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
        }
    }

    /// Owned read and write halves, for a reader and a writer that live
    /// apart.
    pub fn into_split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.into_split();
                (OwnedReadHalf::Plain(r), OwnedWriteHalf::Plain(w))
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (OwnedReadHalf::Tls(r), OwnedWriteHalf::Tls(w))
            }
        }
    }
}

/// The read half of a borrowed [`Stream`].
#[derive(Debug)]
pub enum ReadHalf<'a> {
    /// Plain TCP.
    Plain(tokio::net::tcp::ReadHalf<'a>),
    /// TLS.
    Tls(tokio::io::ReadHalf<&'a mut TlsStream<TcpStream>>),
}

/// The write half of a borrowed [`Stream`].
#[derive(Debug)]
pub enum WriteHalf<'a> {
    /// Plain TCP.
    Plain(tokio::net::tcp::WriteHalf<'a>),
    /// TLS.
    Tls(tokio::io::WriteHalf<&'a mut TlsStream<TcpStream>>),
}

impl WriteHalf<'_> {
    /// Writes what the socket takes of `buf` (cancel-safe, like
    /// `write_buf`); over TLS, flushes once `buf` is drained, as the TLS
    /// session may hold its last record until then.
    pub async fn write_some<B: bytes::Buf>(&mut self, buf: &mut B) -> io::Result<usize> {
        let written = self.write_buf(buf).await?;
        if matches!(self, WriteHalf::Tls(_)) && written > 0 && !buf.has_remaining() {
            self.flush().await?;
        }
        Ok(written)
    }
}

/// The read half of an owned [`Stream`].
#[derive(Debug)]
pub enum OwnedReadHalf {
    /// Plain TCP.
    Plain(tokio::net::tcp::OwnedReadHalf),
    /// TLS.
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
}

/// The write half of an owned [`Stream`].
#[derive(Debug)]
pub enum OwnedWriteHalf {
    /// Plain TCP.
    Plain(tokio::net::tcp::OwnedWriteHalf),
    /// TLS.
    Tls(tokio::io::WriteHalf<TlsStream<TcpStream>>),
}

/// `AsyncRead` for an enum of readers: each variant reads itself.
macro_rules! read_by_variant {
    ($ty:ty) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }
    };
}

/// `AsyncWrite` for an enum of writers: each variant writes itself.
macro_rules! write_by_variant {
    ($ty:ty) => {
        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
                    Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                    Self::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    Self::Plain(s) => s.is_write_vectored(),
                    Self::Tls(s) => s.is_write_vectored(),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_flush(cx),
                    Self::Tls(s) => Pin::new(s).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

read_by_variant!(Stream);
read_by_variant!(ReadHalf<'_>);
read_by_variant!(OwnedReadHalf);
write_by_variant!(Stream);
write_by_variant!(WriteHalf<'_>);
write_by_variant!(OwnedWriteHalf);

impl From<TcpStream> for Stream {
    fn from(stream: TcpStream) -> Stream {
        Stream::Plain(stream)
    }
}
