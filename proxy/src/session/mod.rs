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
//!
//! Layer 3: may import `shared` and the layers below it. Must not import:
//! `watcher`, `admin`, `server`.
//!
//! Modules, each importing only those listed before it:
//! - [`call`]: talking to nodes on a request's behalf, with the retry rules.
//! - `report`: what `stats` answers, for the ASCII and binary front ends.
//! - `text`: memcached's text error lines, for the ASCII and meta front ends.
//! - `ascii`, `meta`, `binary`: one front end per protocol, each turning a
//!   parsed request into calls and the calls' outcome into its reply.

pub mod call;
mod report;
mod text;

mod ascii;
mod binary;
mod meta;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::stream::{FuturesOrdered, StreamExt};
use shoal_protocol::binary::{
    encode_error_response, parse_request, peek_request_header, Opcode, Request, Status,
};
use shoal_protocol::{ascii as ascii_codec, meta as meta_codec, ParseError, Recovery};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::shared::Shared;

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
    let mut session = Session::new(shared);
    loop {
        let started = session.start_requests();
        let close = session.finish_requests(started).await;
        if !session.wbuf.is_empty() {
            if write.write_all(&session.wbuf).await.is_err() {
                return;
            }
            session.wbuf.clear();
        }
        if close {
            return;
        }
        if session.holds_more_requests() {
            continue;
        }
        session.rbuf.reserve(READ_BUFFER / 4);
        let read_result = tokio::select! {
            r = read.read_buf(&mut session.rbuf) => r,
            _ = shutdown.changed() => return,
        };
        match read_result {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// One client's buffers and the requests of its current read, between the
/// phases of [`run`]: start every complete request, finish them in order
/// into `wbuf`, write, read more.
struct Session {
    shared: Arc<Shared>,
    /// Bytes read and not parsed yet.
    rbuf: BytesMut,
    /// Replies not written yet, in request order.
    wbuf: BytesMut,
    /// Bytes still to discard after a parse error that resynchronises by
    /// skipping (an oversized value's body may not have arrived yet).
    skip: usize,
    /// Requests of one read that run together; kept across reads (an empty
    /// `FuturesOrdered` is two allocations to make).
    pending: FuturesOrdered<Handled>,
}

/// What the parse phase of one pass over the read buffer left to do.
struct Started {
    /// The read's only request, run in the session's own task.
    inline: Option<(Bytes, Parsed)>,
    /// A parse error the stream cannot recover from: answer, then close.
    close: bool,
}

// === impl Session ===

impl Session {
    fn new(shared: Arc<Shared>) -> Session {
        Session {
            shared,
            rbuf: BytesMut::with_capacity(READ_BUFFER),
            wbuf: BytesMut::new(),
            skip: 0,
            pending: FuturesOrdered::new(),
        }
    }

    /// Parses every complete request in the read buffer (up to
    /// [`MAX_PIPELINE`] at once) and starts it, unless it is the read's only
    /// request, which is handed back to run inline.
    fn start_requests(&mut self) -> Started {
        while self.pending.len() < MAX_PIPELINE {
            if self.skip > 0 {
                let n = self.skip.min(self.rbuf.len());
                self.rbuf.advance(n);
                self.skip -= n;
            }
            if self.skip > 0 || self.rbuf.is_empty() {
                break;
            }
            match parse(&self.rbuf, &self.shared) {
                Ok(Some((parsed, used))) => {
                    let frame = self.rbuf.split_to(used).freeze();
                    if self.pending.is_empty() && self.rbuf.is_empty() {
                        // The read's only request (a client waiting for
                        // each reply): run it in this task, its reply
                        // written straight into `wbuf` — no boxed future
                        // and no copy.
                        return Started {
                            inline: Some((frame, parsed)),
                            close: false,
                        };
                    }
                    let request = handle(self.shared.clone(), frame, parsed);
                    self.pending.push_back(request);
                }
                Ok(None) => break,
                Err(e) => match self.refuse(e) {
                    Recovery::Skip(n) => self.skip = n,
                    Recovery::Close => {
                        return Started {
                            inline: None,
                            close: true,
                        }
                    }
                },
            }
        }
        Started {
            inline: None,
            close: false,
        }
    }

    /// Queues the client's error reply for a request that did not parse,
    /// in its place among the others; says how the stream goes on.
    fn refuse(&mut self, e: ParseError) -> Recovery {
        let shared = &self.shared;
        shared.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
        let mut out = BytesMut::new();
        if self.rbuf[0] == 0x80 {
            if let Some(header) = peek_request_header(&self.rbuf) {
                encode_error_response(&mut out, &header, Status::for_parse_error(&e));
            }
        } else {
            e.write_ascii_reply(&mut out);
        }
        // A write refused as too large unlinks its key on the owning node,
        // as memcached does, before the client hears the error.
        let unlink = e
            .key
            .and_then(|span| self.rbuf.get(span.start..span.end))
            .map(Bytes::copy_from_slice);
        let shared = shared.clone();
        self.pending.push_back(Box::pin(async move {
            if let Some(key) = unlink {
                let request = call::Plain::new(Opcode::Delete, &key, &[]);
                let _ = call::keyed(&shared, &key, &request, false).await;
            }
            (out, Outcome::Continue)
        }));
        e.recovery
    }

    /// Runs the inline request, then appends every started request's reply
    /// to `wbuf` in request order. True when the connection is to close
    /// once they are written.
    async fn finish_requests(&mut self, started: Started) -> bool {
        let mut close = started.close;
        if let Some((frame, parsed)) = started.inline {
            let outcome = execute(&self.shared, &frame, &parsed, &mut self.wbuf).await;
            close |= outcome == Outcome::Close;
        }
        while let Some((bytes, outcome)) = self.pending.next().await {
            self.wbuf.put_slice(&bytes);
            if outcome == Outcome::Close {
                return true;
            }
        }
        close
    }

    /// True when the buffer still holds a complete request that the
    /// pipeline cap left for the next pass, so there is no need to read.
    fn holds_more_requests(&self) -> bool {
        !self.rbuf.is_empty()
            && self.skip == 0
            && self.rbuf.len() < READ_BUFFER
            && !matches!(parse(&self.rbuf, &self.shared), Ok(None))
    }
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
