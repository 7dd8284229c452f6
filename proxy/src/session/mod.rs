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
use shoal_net::deadline::{self, WriteError};
use shoal_net::Stream;
use shoal_protocol::binary::{
    encode_error_response, parse_request, peek_request_header, Opcode, Request, Status,
};
use shoal_protocol::{ascii as ascii_codec, meta as meta_codec, ParseError, Recovery};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::watch;

use crate::config::MapSource;
use crate::downstream::SESSION;
use crate::shared::Shared;

/// What `version` answers: memcached's protocol level, then the proxy's.
pub const VERSION: &str = concat!("1.6.18-shoal-proxy-", env!("CARGO_PKG_VERSION"));

/// Read buffer per client; grows for large values.
const READ_BUFFER: usize = 16 * 1024;

/// Most requests of one read started together: bounds the memory a client
/// pipelining without reading replies can make the proxy hold.
const MAX_PIPELINE: usize = 1024;

/// Replies buffered past this are written before more are gathered: with
/// the write deadline, what a client that does not read can make the
/// proxy hold is about this much plus one request's reply (a long `get`
/// is served in waves, so that is one wave).
const REPLY_HIGH_WATER: usize = 1024 * 1024;

/// A reply buffer that grew past this for one large reply is given back
/// once written, so an idle connection does not keep a large reply's
/// memory.
const RETAINED_REPLY_BUFFER: usize = 4 * REPLY_HIGH_WATER;

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

/// Serves one client until it closes, errs, quits, breaks a deadline or
/// the proxy drains.
pub async fn serve(stream: Stream, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    stream.set_nodelay();
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

/// Why a session ended early.
enum Ended {
    /// The client closed, reset or quit, or the proxy drains.
    Closed,
    /// A deadline passed (already counted).
    Deadline,
}

async fn run<R, W>(mut read: R, mut write: W, shared: Arc<Shared>, shutdown: watch::Receiver<bool>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let id = shared.sessions.fetch_add(1, Ordering::Relaxed);
    let mut session = Session::new(shared);
    let served = SESSION.scope(id, session.run(&mut read, &mut write, shutdown));
    if let Err(Ended::Deadline) = served.await {
        tracing::debug!("client connection closed by a deadline");
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
    /// The connections the pending requests travel on.
    lane: Lane,
}

/// Which of a node's connections a request travels on: a static ring's
/// meta requests go on the servers' meta text connections, everything else
/// on the binary ones. Requests on different connections may overtake each
/// other, so a session starts a request on one lane only once the other
/// lane's requests are answered (clients that stay with one protocol never
/// wait).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    Binary,
    MetaText,
}

fn lane_of(parsed: &Parsed, shared: &Shared) -> Lane {
    match parsed {
        Parsed::Meta(cmd)
            if !matches!(cmd, meta_codec::MetaCommand::Noop)
                && matches!(shared.config.source, MapSource::Static { .. }) =>
        {
            Lane::MetaText
        }
        _ => Lane::Binary,
    }
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
    /// The session's loop: start every complete request, finish them in
    /// order into `wbuf`, write, read more.
    async fn run<R, W>(
        &mut self,
        read: &mut R,
        write: &mut W,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), Ended>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            let started = self.start_requests();
            let close = self.finish_requests(started, write).await?;
            self.write_out(write).await?;
            if close {
                return Ok(());
            }
            if self.holds_more_requests() {
                continue;
            }
            self.read_more(read, &mut shutdown).await?;
        }
    }

    /// Reads the client's next bytes, waiting at most the request deadline
    /// while a request is half sent and the idle deadline otherwise.
    async fn read_more<R>(
        &mut self,
        read: &mut R,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Ended>
    where
        R: AsyncRead + Unpin,
    {
        self.rbuf.reserve(READ_BUFFER / 4);
        let mid_request = !self.rbuf.is_empty() || self.skip > 0;
        let wait = self.shared.config.deadlines.for_read(mid_request);
        // A timer only when there is a deadline: an idle connection with
        // none pays nothing for it.
        let expired = async {
            match wait {
                Some(after) => tokio::time::sleep(after).await,
                None => std::future::pending().await,
            }
        };
        let stats = &self.shared.stats;
        tokio::select! {
            read = read.read_buf(&mut self.rbuf) => match read {
                Ok(0) | Err(_) => Err(Ended::Closed),
                Ok(_) => Ok(()),
            },
            () = expired => {
                let counter = if mid_request { &stats.request_timeouts } else { &stats.idle_kicks };
                counter.fetch_add(1, Ordering::Relaxed);
                Err(Ended::Deadline)
            }
            _ = shutdown.changed() => Err(Ended::Closed),
        }
    }

    /// Writes `wbuf` out; a client that reads nothing for the write
    /// deadline is given up on.
    async fn write_out<W>(&mut self, write: &mut W) -> Result<(), Ended>
    where
        W: AsyncWrite + Unpin,
    {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let stall = self.shared.config.deadlines.write;
        match deadline::write_all(write, &self.wbuf, stall).await {
            Ok(()) => {
                self.wbuf.clear();
                if self.wbuf.capacity() > RETAINED_REPLY_BUFFER {
                    self.wbuf = BytesMut::new();
                }
                Ok(())
            }
            Err(WriteError::Stalled) => {
                let stats = &self.shared.stats;
                stats.write_timeouts.fetch_add(1, Ordering::Relaxed);
                Err(Ended::Deadline)
            }
            Err(WriteError::Io(_)) => Err(Ended::Closed),
        }
    }

    fn new(shared: Arc<Shared>) -> Session {
        Session {
            shared,
            rbuf: BytesMut::with_capacity(READ_BUFFER),
            wbuf: BytesMut::new(),
            skip: 0,
            pending: FuturesOrdered::new(),
            lane: Lane::Binary,
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
                    let lane = lane_of(&parsed, &self.shared);
                    if lane != self.lane && !self.pending.is_empty() {
                        break;
                    }
                    self.lane = lane;
                    // A long `get` runs alone, in waves (see
                    // `get_in_waves`): started beside others, its whole
                    // reply would be held until theirs are written.
                    let long_get = matches!(&parsed,
                        Parsed::Ascii(ascii_codec::Command::Get(get)) if get.key_count > ascii::WAVE_KEYS);
                    if long_get && !self.pending.is_empty() {
                        break;
                    }
                    let frame = self.rbuf.split_to(used).freeze();
                    if long_get || (self.pending.is_empty() && self.rbuf.is_empty()) {
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
                // A refused write's unlink is a binary DELETE: it waits
                // for the other lane like any binary request.
                Err(e)
                    if e.key.is_some() && self.lane != Lane::Binary && !self.pending.is_empty() =>
                {
                    break
                }
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
    /// to `wbuf` in request order, writing whenever it passes
    /// [`REPLY_HIGH_WATER`]. True when the connection is to close once they
    /// are written.
    async fn finish_requests<W>(&mut self, started: Started, write: &mut W) -> Result<bool, Ended>
    where
        W: AsyncWrite + Unpin,
    {
        let mut close = started.close;
        if let Some((frame, parsed)) = started.inline {
            let outcome = match &parsed {
                Parsed::Ascii(ascii_codec::Command::Get(get))
                    if get.key_count > ascii::WAVE_KEYS =>
                {
                    self.get_in_waves(&frame, get, write).await?
                }
                _ => execute(&self.shared, &frame, &parsed, &mut self.wbuf).await,
            };
            close |= outcome == Outcome::Close;
        }
        while let Some((bytes, outcome)) = self.pending.next().await {
            self.wbuf.put_slice(&bytes);
            if outcome == Outcome::Close {
                return Ok(true);
            }
            if self.wbuf.len() >= REPLY_HIGH_WATER {
                self.write_out(write).await?;
            }
        }
        Ok(close)
    }

    /// A `get` of many keys, fetched and written a wave at a time, so its
    /// reply is never held whole.
    async fn get_in_waves<W>(
        &mut self,
        frame: &Bytes,
        get: &ascii_codec::Get,
        write: &mut W,
    ) -> Result<Outcome, Ended>
    where
        W: AsyncWrite + Unpin,
    {
        let started = Instant::now();
        let keys: Vec<&[u8]> = get.keys(frame).map(|s| s.of(frame)).collect();
        let mut waves = keys.chunks(ascii::WAVE_KEYS).enumerate().peekable();
        while let Some((i, wave)) = waves.next() {
            let place = (i == 0, waves.peek().is_none());
            if !ascii::get_wave(&self.shared, get, wave, place, &mut self.wbuf).await {
                break;
            }
            if self.wbuf.len() >= REPLY_HIGH_WATER {
                self.write_out(write).await?;
            }
        }
        let stats = &self.shared.stats;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        stats.observe(started.elapsed());
        Ok(Outcome::Continue)
    }

    /// True when the buffer still holds a complete request that the
    /// pipeline cap left for the next pass, so there is no need to read.
    fn holds_more_requests(&self) -> bool {
        !self.rbuf.is_empty()
            && self.skip == 0
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
    let limits = &shared.client_limits;
    Ok(match buf[0] {
        0x80 => parse_request(buf, limits)?.map(|(r, n)| (Parsed::Binary(r), n)),
        b'm' => meta_codec::parse_meta(buf, limits)?.map(|(m, n)| (Parsed::Meta(m), n)),
        _ => ascii_codec::parse_command(buf, limits)?.map(|(c, n)| (Parsed::Ascii(c), n)),
    })
}
