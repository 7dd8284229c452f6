//! One client connection: read, parse every complete request in the
//! buffer, run each against the connection's bucket, write all replies of
//! the batch at once.
//!
//! A [`Session`] is the connection's bucket: `default` at accept if the
//! node has one, then whatever binary SASL or SELECT_BUCKET chose. It holds
//! the bucket's `Arc<LiveBucket>`, so requests take no lock to find it. When
//! the bucket is deleted the connection closes after its current batch
//! (or at once, if it is waiting for a request).
//!
//! Each request is sniffed by its first byte — 0x80 binary, `m` meta,
//! anything else classic ASCII — so any memcached client library works on
//! the one port. Parsing happens before reading ("parse first, read
//! second"), a bad request is answered per [`ParseError`] (skip it, even
//! across reads, or close), and replies for a whole pipelined batch leave in
//! one `write`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use shoal_net::accept::SeatKind;
use shoal_net::deadline::{write_all, Deadlines, WriteError};
use shoal_net::{Seat, Stream};
use shoal_protocol::binary::{encode_error_response, parse_request, peek_request_header, Status};
use shoal_protocol::{ascii, meta, ParseError, Recovery};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use shoal_engine::VbucketId;

use super::session::Session;
use super::{ascii as ascii_front, binary as binary_front, meta as meta_front, Flow};
use crate::access::Authenticator;
use crate::bucket::{Buckets, LiveBucket};

/// Initial read buffer: a few MTUs, enough for most pipelined batches of
/// small requests without growing.
const READ_BUFFER: usize = 16 * 1024;

/// Reserve at least this much free space before each read, so a read is
/// never tiny (see pelikan's `TARGET_READ_SIZE`).
const MIN_READ_SPACE: usize = 4 * 1024;

/// Write out early when a batch's replies pass this size: a long pipeline
/// of large gets, or one get of many large values (streamed a part at a
/// time), never buffers more than this plus one value per connection.
const WRITE_HIGH_WATER: usize = 256 * 1024;

/// A buffer that grew past this for one large request or reply (a 1 MiB
/// value, a long multi-get line or reply) is given back once the
/// connection has been idle for [`IDLE_RELEASE`], instead of being kept for
/// the rest of the connection's life: with thousands of mostly idle
/// connections, buffers sized for their largest request ever would add up
/// to more than the bucket's quota (memcached's `conn_shrink` does the same).
const RETAINED_BUFFER: usize = 4 * READ_BUFFER;

/// How long a connection holding grown buffers waits for its next request
/// before giving them back. Not at once: a client pipelining large values
/// batch after batch would have its buffers regrown (and the allocator
/// churned) for every batch.
const IDLE_RELEASE: Duration = Duration::from_secs(1);

/// A connection turning into a DCP stream, as the producer takes it over.
#[derive(Debug)]
pub struct DcpHandoff {
    /// The client's stream.
    pub stream: Stream,
    /// The bucket the connection had selected.
    pub bucket: Arc<LiveBucket>,
    /// What was read and not yet parsed: the DCP_OPEN and anything after.
    pub buffered: BytesMut,
}

/// What a connection is served with besides its stream.
#[derive(Clone, Debug)]
pub struct Served {
    /// The node's buckets.
    pub buckets: Arc<Buckets>,
    /// Checks credentials.
    pub auth: Arc<Authenticator>,
    /// How long a half-sent request, an unread reply or an idle
    /// connection may last.
    pub deadlines: Deadlines,
    /// Flips when the node stops.
    pub shutdown: watch::Receiver<bool>,
}

/// Why [`serve`] stopped serving a connection.
#[derive(Debug)]
pub enum Handoff {
    /// The connection ended (closed, erred, quit, timed out, its bucket
    /// deleted, the node stopping): nothing more to do.
    Closed,
    /// A replica's consumer opened a DCP stream: from here on the
    /// connection speaks DCP, for the replication producer.
    Dcp(DcpHandoff),
}

/// Serves one client until it closes, errs, quits, breaks a deadline, its
/// bucket is deleted or the node shuts down, or until it opens a DCP
/// stream, which is handed back to the caller. `seat` is the connection's
/// place in the node's connection budget: a provisional seat must
/// authenticate as the cluster before anything else.
pub async fn serve(mut stream: Stream, seat: &mut Seat, served: Served) -> Handoff {
    stream.set_nodelay();
    let Served {
        buckets,
        auth,
        deadlines,
        mut shutdown,
    } = served;
    let mut session = Session::on_node(buckets, auth);
    let stats = session.stats.clone();
    let mut conn = Connection::new();
    loop {
        let (flow, mutated) = conn.process(&mut session, seat.is_provisional());
        if !conn.durable.is_empty() {
            if let Some(ctx) = session.bucket() {
                // The flusher and the replication streams start on the
                // batch's writes before the connection waits for them.
                ctx.wrote();
            }
            conn.await_durability(&session).await;
        }
        if !conn.wbuf.is_empty() {
            match write_all(&mut stream, &conn.wbuf, deadlines.write).await {
                Ok(()) => {}
                Err(WriteError::Stalled) => {
                    stats.write_timeouts.fetch_add(1, Ordering::Relaxed);
                    return Handoff::Closed;
                }
                Err(WriteError::Io(_)) => return Handoff::Closed,
            }
            stats
                .bytes_written
                .fetch_add(conn.wbuf.len() as u64, Ordering::Relaxed);
            conn.wbuf.clear();
        }
        if mutated {
            if let Some(ctx) = session.bucket() {
                ctx.wrote();
            }
        }
        if session.principal().is_cluster() && seat.kind() != SeatKind::System {
            // The cluster's own connection: off the client budget (the
            // wiring counts it down when it ends).
            seat.promote();
            stats.system_connections.fetch_add(1, Ordering::Relaxed);
        }
        if session.bucket_deleted() {
            return Handoff::Closed;
        }
        match flow {
            Step::Close => return Handoff::Closed,
            Step::Flushed => continue,
            Step::NeedBytes => {}
            Step::Dcp => {
                // The DCP_OPEN is still in the read buffer.
                return match session.bucket().cloned() {
                    Some(bucket) => Handoff::Dcp(DcpHandoff {
                        stream,
                        bucket,
                        buffered: std::mem::take(&mut conn.rbuf),
                    }),
                    None => Handoff::Closed,
                };
            }
        }
        conn.rbuf.reserve(MIN_READ_SPACE);
        // Right after a reserve the capacity is the whole allocation (or a
        // lower bound of it); once bytes are consumed it no longer says.
        conn.rbuf_grown |= conn.rbuf.capacity() > RETAINED_BUFFER;
        let mid_request = !conn.rbuf.is_empty() || conn.skip > 0 || seat.is_provisional();
        let wait = deadlines.for_read(mid_request);
        let read = match conn
            .read(&mut stream, wait, &mut shutdown, &mut session)
            .await
        {
            Read::Bytes(n) => n,
            Read::Release => {
                conn.release_large_buffers();
                continue;
            }
            Read::TimedOut => {
                let counter = if mid_request {
                    &stats.request_timeouts
                } else {
                    &stats.idle_kicks
                };
                counter.fetch_add(1, Ordering::Relaxed);
                return Handoff::Closed;
            }
            Read::End => return Handoff::Closed,
        };
        stats.bytes_read.fetch_add(read as u64, Ordering::Relaxed);
    }
}

/// What waiting for the client's next bytes came to.
enum Read {
    /// This many bytes arrived.
    Bytes(usize),
    /// The connection idled with grown buffers: give them back, then wait
    /// again.
    Release,
    /// Nothing arrived within the deadline.
    TimedOut,
    /// The client closed or the socket failed, the bucket was deleted or
    /// the node is stopping.
    End,
}

/// Memcached's answer to a client beyond the connection limit, then the
/// connection closes.
const TOO_MANY_CONNECTIONS: &[u8] = b"SERVER_ERROR too many open connections\r\n";

/// True when the request at the front of `buf` is one a connection may
/// send before it has authenticated: binary HELLO, SASL_LIST_MECHS,
/// SASL_AUTH or SASL_STEP (or a header too short to tell yet).
fn authenticating(buf: &[u8]) -> bool {
    buf.first() == Some(&0x80) && buf.get(1).is_none_or(|op| (0x1f..=0x22).contains(op))
}

/// DCP_OPEN's opcode: the first frame of a replica's stream connection.
const DCP_OPEN: u8 = 0x50;

/// What a text client gets for a write whose durability level was not met
/// in time (it may still complete: the outcome is unknown).
const DURABILITY_TEXT: &[u8] = b"SERVER_ERROR durability level not met in time\r\n";

/// The bucket whose durability level a request that ran with `flow` must
/// wait for, if any.
fn durable_target(session: &Session, flow: Flow) -> Option<&Arc<LiveBucket>> {
    let ctx = session.bucket()?;
    (flow == Flow::Wrote && ctx.durability.enabled()).then_some(ctx)
}

/// The key of an ASCII write whose client reads its reply (a `noreply`
/// write cannot be told of a failure anyway).
fn ascii_write_key(cmd: &ascii::Command) -> Option<shoal_protocol::Span> {
    match cmd {
        ascii::Command::Store(c) if !c.noreply => Some(c.key),
        ascii::Command::Delete(c) if !c.noreply => Some(c.key),
        ascii::Command::Arith(c) if !c.noreply => Some(c.key),
        ascii::Command::Touch(c) if !c.noreply => Some(c.key),
        _ => None,
    }
}

/// What a text command that needs a bucket hears on a connection without
/// one: to authenticate (memcached's words for a client that skipped SASL)
/// when `default` wants a password, else that no bucket is selected.
fn no_bucket(session: &Session) -> &'static [u8] {
    if session.needs_auth() {
        b"CLIENT_ERROR unauthenticated\r\n"
    } else {
        b"SERVER_ERROR no bucket selected\r\n"
    }
}

/// Resolves once the bucket `signal` belongs to is deleted; never without
/// a bucket.
async fn deleted(signal: &mut Option<watch::Receiver<bool>>) {
    match signal {
        // An error means the context is gone, which a session holding it
        // rules out; either way there is nothing left to serve.
        Some(signal) => {
            let _ = signal.wait_for(|deleted| *deleted).await;
        }
        None => std::future::pending().await,
    }
}

/// Runs a whole byte stream through one connection's request handling, with
/// no socket: the input arrives in `chunks` (as reads would deliver it) and
/// the replies are returned. Stops early, like a connection, at `quit` or at
/// an error that closes the stream. For fuzzing and tests of the session
/// logic; the connection acts as the cluster on `ctx`'s bucket, the only
/// one it can select.
pub fn drive(ctx: &Arc<LiveBucket>, chunks: &[&[u8]]) -> DriveOutcome {
    static AUTH: std::sync::OnceLock<Arc<Authenticator>> = std::sync::OnceLock::new();
    let auth = AUTH.get_or_init(|| Arc::new(Authenticator::in_memory()));
    let mut session = Session::on_bucket(ctx.clone(), auth.clone());
    let mut conn = Connection::new();
    let mut output = Vec::new();
    for chunk in chunks {
        conn.rbuf.extend_from_slice(chunk);
        loop {
            let (step, _) = conn.process(&mut session, false);
            // No replicas here: nothing to wait for.
            conn.durable.clear();
            output.extend_from_slice(&conn.wbuf);
            conn.wbuf.clear();
            match step {
                Step::Close | Step::Dcp => {
                    return DriveOutcome {
                        output,
                        closed: true,
                        buffered: conn.rbuf.len(),
                    }
                }
                Step::Flushed => continue,
                Step::NeedBytes => break,
            }
        }
    }
    DriveOutcome {
        output,
        closed: false,
        buffered: conn.rbuf.len(),
    }
}

/// What [`drive`] saw.
#[derive(Debug)]
pub struct DriveOutcome {
    /// Every reply byte, in order.
    pub output: Vec<u8>,
    /// The connection would have been closed.
    pub closed: bool,
    /// Bytes left unparsed at the end (an incomplete request).
    pub buffered: usize,
}

/// What the connection does after a processing pass.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Everything complete was handled: read more.
    NeedBytes,
    /// Replies were written out early; keep processing.
    Flushed,
    /// Close after writing what is buffered.
    Close,
    /// A DCP_OPEN is at the front of the read buffer: hand the connection
    /// to the replication producer.
    Dcp,
}

/// A connection's buffers, kept apart from the socket so the processing
/// loop is synchronous and testable.
struct Connection {
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Bytes still to discard from earlier errors (an oversized value's
    /// data block), possibly beyond what has arrived.
    skip: usize,
    /// `rbuf` has grown past [`RETAINED_BUFFER`] since it was last
    /// replaced.
    rbuf_grown: bool,
    /// Writes of this batch whose replies wait for the bucket's
    /// durability level.
    durable: Vec<DurableWrite>,
    /// Where the next key starts in the ASCII get at the front of `rbuf`
    /// whose reply is being streamed out a part at a time.
    resume_get: Option<usize>,
}

/// A write whose success reply (`wbuf[start..end]`, empty for a quiet
/// binary write) may only leave once the bucket's durability level is met
/// for `seqno` in `vb`; if it is not met in time, `error` replaces it.
#[derive(Debug)]
struct DurableWrite {
    vb: VbucketId,
    seqno: u64,
    start: usize,
    end: usize,
    error: Bytes,
}

impl Connection {
    fn new() -> Connection {
        Connection {
            rbuf: BytesMut::with_capacity(READ_BUFFER),
            wbuf: BytesMut::with_capacity(READ_BUFFER),
            skip: 0,
            rbuf_grown: false,
            durable: Vec::new(),
            resume_get: None,
        }
    }

    /// Waits for the client's next bytes, at most `wait` (none: as long as
    /// it takes), or until the node stops or the bucket is deleted. An idle
    /// connection holding grown buffers wakes after [`IDLE_RELEASE`] to
    /// give them back.
    async fn read(
        &mut self,
        stream: &mut Stream,
        wait: Option<Duration>,
        shutdown: &mut watch::Receiver<bool>,
        session: &mut Session,
    ) -> Read {
        let release = self.holds_large_buffers().then_some(IDLE_RELEASE);
        let (timer, expiry) = match (wait, release) {
            (Some(wait), Some(release)) if release < wait => (Some(release), Read::Release),
            (Some(wait), _) => (Some(wait), Read::TimedOut),
            (None, release) => (release, Read::Release),
        };
        // A timer only when there is a deadline or something to give back:
        // an ordinary idle connection pays nothing for it.
        let expired = async {
            match timer {
                Some(after) => tokio::time::sleep(after).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // `read_buf` is cancel-safe: when another branch wins, nothing
            // was read.
            read = stream.read_buf(&mut self.rbuf) => match read {
                Ok(0) | Err(_) => Read::End,
                Ok(n) => Read::Bytes(n),
            },
            () = expired => expiry,
            _ = shutdown.changed() => Read::End,
            () = deleted(&mut session.deleted) => Read::End,
        }
    }

    /// Whether [`Connection::release_large_buffers`] would free anything.
    fn holds_large_buffers(&self) -> bool {
        (self.wbuf.is_empty() && self.wbuf.capacity() > RETAINED_BUFFER)
            || (self.rbuf.is_empty() && self.rbuf_grown)
    }

    /// Replaces an empty buffer that grew past [`RETAINED_BUFFER`] with a
    /// fresh one of the initial size.
    fn release_large_buffers(&mut self) {
        if self.wbuf.is_empty() && self.wbuf.capacity() > RETAINED_BUFFER {
            self.wbuf = BytesMut::with_capacity(READ_BUFFER);
        }
        if self.rbuf.is_empty() && self.rbuf_grown {
            self.rbuf = BytesMut::with_capacity(READ_BUFFER);
            self.rbuf_grown = false;
        }
    }

    /// Waits until every write of the batch meets the bucket's durability
    /// level; the reply of one that does not in time is replaced by its
    /// error. Waits one after another: acknowledgements are cumulative, so
    /// the whole batch waits about as long as its slowest write.
    async fn await_durability(&mut self, session: &Session) {
        let Some(ctx) = session.bucket() else {
            self.durable.clear();
            return;
        };
        let mut failed = Vec::new();
        for (i, w) in self.durable.iter().enumerate() {
            if ctx.durability.wait(w.vb, w.seqno).await.is_err() {
                failed.push(i);
            }
        }
        if !failed.is_empty() {
            session
                .stats
                .durability_timeouts
                .fetch_add(failed.len() as u64, Ordering::Relaxed);
            let old = std::mem::take(&mut self.wbuf);
            let mut at = 0;
            for i in failed {
                let w = &self.durable[i];
                self.wbuf.extend_from_slice(&old[at..w.start]);
                self.wbuf.extend_from_slice(&w.error);
                at = w.end;
            }
            self.wbuf.extend_from_slice(&old[at..]);
        }
        self.durable.clear();
    }

    /// Handles every complete request in `rbuf`; returns the next step and
    /// whether anything was written to the bucket.
    fn process(&mut self, session: &mut Session, provisional: bool) -> (Step, bool) {
        let mut mutated = false;
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.rbuf.len());
                self.rbuf.advance(n);
                self.skip -= n;
                if self.skip > 0 {
                    return (Step::NeedBytes, mutated);
                }
            }
            if self.rbuf.is_empty() {
                return (Step::NeedBytes, mutated);
            }
            if provisional && !session.principal().is_cluster() && !authenticating(&self.rbuf) {
                // Beyond the client limit only the cluster gets in.
                session.stats.rejected_conns.fetch_add(1, Ordering::Relaxed);
                self.wbuf.extend_from_slice(TOO_MANY_CONNECTIONS);
                return (Step::Close, mutated);
            }
            match self.one(session) {
                Some(Flow::Read) => {}
                Some(Flow::Wrote) => mutated = true,
                Some(Flow::Close) => return (Step::Close, mutated),
                Some(Flow::Dcp) => return (Step::Dcp, mutated),
                None => return (Step::NeedBytes, mutated),
            }
            if self.wbuf.len() >= WRITE_HIGH_WATER {
                return (Step::Flushed, mutated);
            }
        }
    }

    /// Parses and runs the request at the front of `rbuf`; `None` when it
    /// is incomplete.
    fn one(&mut self, session: &mut Session) -> Option<Flow> {
        let buf = &self.rbuf[..];
        let limits = &session.limits;
        let before = self.wbuf.len();
        let (flow, used, durable) = match buf[0] {
            // Only the cluster opens DCP streams; anyone else's DCP_OPEN is
            // answered NO_ACCESS by the binary front end.
            0x80 if buf.get(1) == Some(&DCP_OPEN)
                && session.bucket().is_some()
                && session.principal().is_cluster() =>
            {
                return Some(Flow::Dcp)
            }
            0x80 => match parse_request(buf, limits) {
                Ok(Some((req, used))) => {
                    let flow = binary_front::execute(session, &buf[..used], &req, &mut self.wbuf);
                    let durable = durable_target(session, flow).map(|ctx| {
                        let key = buf.get(req.key.start..req.key.end).unwrap_or_default();
                        let mut error = BytesMut::new();
                        encode_error_response(&mut error, &req.header, Status::TEMPORARY_FAILURE);
                        (ctx.route(req.header.vbucket, key), error.freeze())
                    });
                    (flow, used, durable)
                }
                Ok(None) => return None,
                Err(e) => return Some(self.binary_error(session, e)),
            },
            b'm' => match meta::parse_meta(buf, limits) {
                Ok(Some((cmd, used))) => {
                    let flow = match session.bucket() {
                        Some(ctx) => meta_front::execute(ctx, &buf[..used], &cmd, &mut self.wbuf),
                        None => {
                            meta_front::without_bucket(&cmd, no_bucket(session), &mut self.wbuf)
                        }
                    };
                    let key = cmd
                        .key()
                        .filter(|_| !cmd.base64())
                        .and_then(|k| buf.get(k.start..k.end));
                    let durable = durable_target(session, flow).zip(key).map(|(ctx, key)| {
                        (ctx.vbucket_of(key), Bytes::from_static(DURABILITY_TEXT))
                    });
                    (flow, used, durable)
                }
                Ok(None) => return None,
                Err(e) => return Some(self.text_error(session, e)),
            },
            _ => match ascii::parse_command(buf, limits) {
                Ok(Some((ascii::Command::Get(get), used))) if session.bucket().is_some() => {
                    let ctx = session.bucket()?;
                    let from = self.resume_get.take().unwrap_or(0);
                    let part = ascii_front::retrieve_part(
                        ctx,
                        &buf[..used],
                        &get,
                        from,
                        WRITE_HIGH_WATER,
                        &mut self.wbuf,
                    );
                    if let Some(next) = part {
                        // More keys: the get stays at the front of `rbuf`
                        // while what it built so far is written out.
                        self.resume_get = Some(next);
                        return Some(Flow::Read);
                    }
                    (Flow::Read, used, None)
                }
                Ok(Some((cmd, used))) => {
                    let flow = match session.bucket() {
                        Some(ctx) => ascii_front::execute(ctx, &buf[..used], &cmd, &mut self.wbuf),
                        None => {
                            ascii_front::without_bucket(&cmd, no_bucket(session), &mut self.wbuf)
                        }
                    };
                    let key = ascii_write_key(&cmd).and_then(|k| buf.get(k.start..k.end));
                    let durable = durable_target(session, flow).zip(key).map(|(ctx, key)| {
                        (ctx.vbucket_of(key), Bytes::from_static(DURABILITY_TEXT))
                    });
                    (flow, used, durable)
                }
                Ok(None) => return None,
                Err(e) => return Some(self.text_error(session, e)),
            },
        };
        if let (Some((vb, error)), Some(ctx)) = (durable, session.bucket()) {
            if let Some(seqno) = ctx.engine.high_seqno(vb) {
                // The vbucket's high seqno right after the write: this
                // write's or a later one's (acks are cumulative).
                self.durable.push(DurableWrite {
                    vb,
                    seqno,
                    start: before,
                    end: self.wbuf.len(),
                    error,
                });
            }
        }
        self.rbuf.advance(used);
        Some(flow)
    }

    fn text_error(&mut self, session: &Session, e: ParseError) -> Flow {
        session
            .stats
            .protocol_errors
            .fetch_add(1, Ordering::Relaxed);
        // A write refused as too large unlinks its key, as memcached does:
        // the client meant to replace the value, so the old one must not
        // be served afterwards.
        let unlinked = e
            .key
            .and_then(|span| self.rbuf.get(span.start..span.end))
            .zip(session.bucket())
            .map(|(key, ctx)| {
                let now = ctx.clock.now();
                ctx.engine.delete(ctx.vbucket_of(key), key, 0, now).is_ok()
            });
        e.write_ascii_reply(&mut self.wbuf);
        if unlinked == Some(true) {
            return self.recover(e).or_wrote();
        }
        self.recover(e)
    }

    fn binary_error(&mut self, session: &Session, e: ParseError) -> Flow {
        session
            .stats
            .protocol_errors
            .fetch_add(1, Ordering::Relaxed);
        // The header is whole whenever the parser could judge it; answer
        // with its opcode and opaque so the client can match the error.
        if let Some(header) = peek_request_header(&self.rbuf) {
            encode_error_response(&mut self.wbuf, &header, Status::for_parse_error(&e));
        }
        self.recover(e)
    }

    fn recover(&mut self, e: ParseError) -> Flow {
        match e.recovery {
            Recovery::Skip(n) => {
                self.skip = n;
                Flow::Read
            }
            Recovery::Close => Flow::Close,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::open::open_standalone;
    use crate::config::NodeConfig;
    use shoal_engine::VbucketState;
    use shoal_persist::testdir::TestDir;

    /// A standalone node's bucket with every vbucket active and warmup
    /// done.
    fn context(dir: &TestDir) -> (Arc<LiveBucket>, shoal_persist::Store) {
        let (ctx, store) = open_standalone(&NodeConfig {
            data_dir: dir.path().to_path_buf(),
            standalone: true,
            num_vbuckets: 16,
            max_value_len: 1024,
            ..NodeConfig::default()
        })
        .unwrap();
        ctx.engine.set_warming_up(false);
        for vb in 0..16 {
            ctx.engine
                .set_vbucket_state(vb, VbucketState::Active)
                .unwrap();
        }
        (ctx, store)
    }

    #[test]
    fn every_split_of_a_session_gives_the_same_replies() {
        let dir = TestDir::new("conn-splits");
        let (ctx, _store) = context(&dir);
        let mut noop = vec![0u8; 24];
        noop[0] = 0x80;
        noop[1] = 0x0a;
        noop[12..16].copy_from_slice(&7u32.to_be_bytes());
        let mut session = Vec::new();
        session.extend_from_slice(b"set k 5 0 3\r\nabc\r\nget k\r\n");
        // Refused for size: its data block is discarded as it arrives,
        // across however many reads that takes.
        session.extend_from_slice(b"set big 0 0 2000\r\n");
        session.extend_from_slice(&[b'z'; 2000]);
        session.extend_from_slice(b"\r\nmn\r\n");
        session.extend_from_slice(&noop);
        session.extend_from_slice(b"bogus\r\nversion\r\n");
        let whole = drive(&ctx, &[&session]);
        assert!(!whole.closed);
        assert_eq!(whole.buffered, 0);
        let mut want = b"STORED\r\nVALUE k 5 3\r\nabc\r\nEND\r\n\
            SERVER_ERROR object too large for cache\r\nMN\r\n"
            .to_vec();
        let mut noop_reply = [0u8; 24];
        noop_reply[0] = 0x81;
        noop_reply[1] = 0x0a;
        noop_reply[12..16].copy_from_slice(&7u32.to_be_bytes());
        want.extend_from_slice(&noop_reply);
        want.extend_from_slice(
            format!("ERROR\r\nVERSION {}\r\n", crate::version::VERSION).as_bytes(),
        );
        assert_eq!(
            String::from_utf8_lossy(&whole.output),
            String::from_utf8_lossy(&want)
        );
        // Byte by byte, and in pieces that cut through every token.
        for size in [1, 2, 3, 7, 64, 1000] {
            let pieces: Vec<&[u8]> = session.chunks(size).collect();
            let split = drive(&ctx, &pieces);
            assert_eq!(
                (split.output, split.closed, split.buffered),
                (whole.output.clone(), false, 0),
                "pieces of {size} bytes"
            );
        }
    }

    #[test]
    fn buffers_grown_for_one_large_request_are_given_back_once_empty() {
        let mut conn = Connection::new();
        // A 1 MiB value arrived and was consumed; its reply was written.
        conn.rbuf.reserve(1024 * 1024);
        conn.rbuf_grown |= conn.rbuf.capacity() > RETAINED_BUFFER;
        conn.rbuf.extend_from_slice(&[b'x'; 1024 * 1024]);
        conn.wbuf.extend_from_slice(&[b'v'; 512 * 1024]);
        assert!(
            !conn.holds_large_buffers(),
            "buffers holding bytes are kept"
        );
        conn.release_large_buffers();
        assert!(
            conn.wbuf.capacity() > RETAINED_BUFFER && conn.rbuf.capacity() > RETAINED_BUFFER,
            "buffers holding bytes are kept"
        );
        conn.rbuf.advance(conn.rbuf.len());
        conn.wbuf.clear();
        assert!(conn.holds_large_buffers());
        conn.release_large_buffers();
        assert!(!conn.holds_large_buffers());
        assert_eq!(conn.wbuf.capacity(), READ_BUFFER);
        assert_eq!(conn.rbuf.capacity(), READ_BUFFER);
        assert!(!conn.rbuf_grown);
        // Small buffers are left alone.
        let before = conn.rbuf.as_ptr();
        conn.release_large_buffers();
        assert_eq!(conn.rbuf.as_ptr(), before);
    }
}
