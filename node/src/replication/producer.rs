//! The producer side of replication: one task per DCP connection a replica
//! opened on the data port, streaming the vbuckets it asks for. A stream
//! starts with the rollback decision against the vbucket's failover log
//! ([`decide_stream`]), then sends what the engine's checkpoint queue no
//! longer holds from disk — a backfill, in bounded, seqno-sorted chunks once
//! the flusher has persisted that far — and then follows the queue through a
//! replication cursor, one snapshot marker per batch. Flow control follows
//! DCP's connection buffer ([`FlowWindow`]): every byte sent counts until
//! the consumer's BUFFER_ACK returns it, and no stream data goes out while
//! the window is full. Streams take turns, so one busy vbucket cannot
//! starve the others; the replica's SEQNO_ACKNOWLEDGED feeds the bucket's
//! durability monitor. Bad input closes the connection.
//!
//! Modules: `decision` (the rollback decision), `flow` (the window),
//! `backfill` (chunked disk scans), `frames` (encoding what is sent),
//! `stream` (one vbucket's stream: its phases and turns).

mod backfill;
mod decision;
mod flow;
mod frames;
mod stream;

pub use decision::{decide_stream, StreamDecision};
pub use flow::{
    parse_buffer_size, FlowWindow, DEFAULT_BUFFER_SIZE, MAX_BUFFER_SIZE, MIN_BUFFER_SIZE,
};

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use shoal_net::Stream as Connection;
use shoal_protocol::binary::dcp::{
    encode_dcp_reply, encode_failover_log_reply, encode_noop, encode_stream_accepted,
    encode_stream_end, encode_stream_rollback, OpenFlags, StreamEndStatus, StreamReq,
    StreamReqFlags, MAX_FAILOVER_ENTRIES,
};
use shoal_protocol::binary::{parse_dcp, DcpMessage, EncodeError, FailoverEntry, Opcode, Status};
use shoal_protocol::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use self::stream::{phase_for, wake_on, CursorGuard, Phase, Scanned, Step, Stream};
use crate::bucket::LiveBucket;
use shoal_engine::mutation::VbucketId;
use shoal_engine::{EngineError, VbucketState};

/// The connection name prefix a replica opens with; what follows is its
/// data address as the cluster map's `serverList` spells it.
pub const REPLICA_NAME_PREFIX: &str = "replica:";

/// Stream data is encoded until the write buffer holds this much, then
/// written at once (one `write` per batch, STYLE rule 12).
const WRITE_BATCH: usize = 256 * 1024;

/// Bytes one stream encodes per turn before the next stream's turn. With
/// [`WRITE_BATCH`] it bounds the write buffer (plus at most one value).
const STEP_BYTES: usize = 64 * 1024;

/// Free space reserved before each read: acks and requests are small.
const MIN_READ_SPACE: usize = 4 * 1024;

/// Most mutations read from a cursor at once. The batch size adapts to the
/// recent item size to stay near [`STEP_BYTES`]; read mutations share
/// their values with the engine (no copy) until encoded.
const MAX_READ_ITEMS: usize = 256;

/// Send a NOOP after this long without writing anything, so the consumer
/// can tell an idle producer from a dead one.
const NOOP_INTERVAL: Duration = Duration::from_secs(5);

/// Close the connection when a NOOP is outstanding and nothing has been
/// received for this long. Generous: a replica applying under memory
/// back-pressure stops reading for a while without being dead.
const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the replies written before closing on an error may take.
const LAST_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// How often a backfill waiting for the flusher re-checks the persisted
/// seqno (the flusher has no per-seqno notification).
const PERSIST_POLL: Duration = Duration::from_millis(5);

/// Streams per connection that may hold a running scan or an unsent chunk
/// at once: bounds a connection's backfill memory to this many chunks, and
/// keeps a replica of 1024 vbuckets from scanning them all at the same
/// time.
const MAX_BACKFILLS: usize = 2;

/// The stream-request flags this producer honours; any other is refused
/// with NOT_SUPPORTED rather than half understood.
const SUPPORTED_STREAM_FLAGS: u32 = StreamReqFlags::TO_LATEST.0 | StreamReqFlags::ACTIVE_VB_ONLY.0;

/// Why the connection closes.
#[derive(Debug, thiserror::Error)]
enum Close {
    /// The consumer broke the protocol.
    #[error("protocol: {0}")]
    Protocol(&'static str),
    /// A frame could not be encoded (a value too large for its length
    /// field).
    #[error("encode: {0}")]
    Encode(#[from] EncodeError),
    /// The consumer went quiet.
    #[error("no reply to a NOOP for {}s", DEAD_PEER_TIMEOUT.as_secs())]
    DeadPeer,
}

// === the connection ===

/// One DCP producer connection's state, apart from its socket, buffers and
/// wake-ups (which `serve` owns so that `select!` can borrow them
/// separately).
struct Producer {
    ctx: Arc<LiveBucket>,
    /// The parser limits for what the consumer sends.
    limits: Limits,
    /// Set by DCP_OPEN; nothing else is accepted before it.
    opened: bool,
    /// The replica's name (its data address), for durability acks.
    name: String,
    window: FlowWindow,
    streams: BTreeMap<VbucketId, Stream>,
    /// The vbucket whose turn is next.
    next_turn: VbucketId,
    /// Wakes the connection when a cursor has something new.
    notify: Arc<Notify>,
    /// Where backfill scans send their chunks.
    scanned: mpsc::Sender<Scanned>,
    /// Scans running on the blocking pool.
    scans_running: usize,
    /// Tells running scans to give up once the connection is gone.
    cancel: Arc<AtomicBool>,
    /// Cursor read batch size, adapted to the recent item size.
    read_items: usize,
    last_write: Instant,
    last_recv: Instant,
    /// When the outstanding NOOP was sent.
    noop_sent: Option<Instant>,
    /// Close once the write buffer is flushed.
    closing: bool,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("bucket", &self.ctx.name)
            .field("name", &self.name)
            .field("window", &self.window)
            .field("streams", &self.streams.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// Serves one DCP connection until it closes, errs, breaks the protocol,
/// its bucket is deleted or the node shuts down. Called by the connection
/// loop when a client on a bucket sends DCP_OPEN; `rbuf` holds the
/// unconsumed bytes, starting with that DCP_OPEN frame.
pub async fn serve(
    mut stream: Connection,
    ctx: Arc<LiveBucket>,
    mut rbuf: BytesMut,
    mut shutdown: watch::Receiver<bool>,
) {
    stream.set_nodelay();
    let peer = stream.peer_addr().ok();
    let notify = Arc::new(Notify::new());
    // Each running scan sends exactly one result, and at most
    // MAX_BACKFILLS run: sends never wait.
    let (scanned_tx, mut scanned_rx) = mpsc::channel(MAX_BACKFILLS);
    let now = Instant::now();
    let mut producer = Producer {
        limits: ctx.limits,
        ctx,
        opened: false,
        name: String::new(),
        window: FlowWindow::new(DEFAULT_BUFFER_SIZE),
        streams: BTreeMap::new(),
        next_turn: 0,
        notify: notify.clone(),
        scanned: scanned_tx,
        scans_running: 0,
        cancel: Arc::new(AtomicBool::new(false)),
        read_items: 8,
        last_write: now,
        last_recv: now,
        noop_sent: None,
        closing: false,
    };
    let mut wbuf = BytesMut::with_capacity(WRITE_BATCH);
    let (mut rd, mut wr) = stream.split();
    let outcome: Result<(), Close> = loop {
        if producer.ctx.is_deleted() {
            break Ok(());
        }
        let worked = producer
            .process_input(&mut rbuf, &mut wbuf)
            .and_then(|()| producer.pump(&mut wbuf));
        if let Err(close) = worked {
            // Best effort: the replies already encoded go out first.
            let last = async {
                wr.write_all(&wbuf).await?;
                wr.flush().await
            };
            let _ = tokio::time::timeout(LAST_WRITE_TIMEOUT, last).await;
            break Err(close);
        }
        if producer.closing && wbuf.is_empty() {
            break Ok(());
        }
        let deadline = producer.deadline();
        let can_send = producer.can_send(&wbuf);
        rbuf.reserve(MIN_READ_SPACE);
        tokio::select! {
            biased;
            _ = shutdown.changed() => break Ok(()),
            read = rd.read_buf(&mut rbuf), if !producer.closing => match read {
                Ok(0) | Err(_) => break Ok(()),
                Ok(_) => producer.last_recv = Instant::now(),
            },
            written = wr.write_some(&mut wbuf), if !wbuf.is_empty() => match written {
                Ok(0) | Err(_) => break Ok(()),
                Ok(_) => producer.last_write = Instant::now(),
            },
            Some(done) = scanned_rx.recv() => producer.scanned(done),
            () = notify.notified(), if can_send => {}
            () = tokio::time::sleep_until(deadline) => {
                if let Err(close) = producer.on_timer(&mut wbuf) {
                    break Err(close);
                }
            }
        }
    };
    let (bucket, replica) = (&producer.ctx.name, &producer.name);
    match outcome {
        Ok(()) => tracing::debug!(%bucket, %replica, ?peer, "dcp producer closed"),
        Err(reason) => {
            tracing::warn!(%bucket, %replica, ?peer, %reason, "dcp producer closed the connection")
        }
    }
}

// === impl Producer ===

impl Producer {
    /// Handles every complete frame in `rbuf`.
    fn process_input(&mut self, rbuf: &mut BytesMut, wbuf: &mut BytesMut) -> Result<(), Close> {
        let before = wbuf.len();
        let mut result = Ok(());
        while !self.closing {
            match parse_dcp(rbuf, &self.limits) {
                Ok(None) => break,
                // The parser never reports more than it was given.
                Ok(Some((_, used))) if used > rbuf.len() => {
                    result = Err(Close::Protocol("frame longer than the buffer"));
                    break;
                }
                Ok(Some((msg, used))) => {
                    let frame = rbuf.split_to(used);
                    result = self.handle(msg, &frame, wbuf);
                    if result.is_err() {
                        break;
                    }
                }
                // A consumer that sends a malformed frame is not worth
                // resynchronising with: it reconnects.
                Err(e) => {
                    result = Err(Close::Protocol(e.reason));
                    break;
                }
            }
        }
        self.window.sent(wbuf.len() - before);
        result
    }

    fn handle(&mut self, msg: DcpMessage, frame: &[u8], wbuf: &mut BytesMut) -> Result<(), Close> {
        if !self.opened {
            let DcpMessage::Open(open) = msg else {
                return Err(Close::Protocol("DCP connection must start with DCP_OPEN"));
            };
            if !open.flags.contains(OpenFlags::PRODUCER) {
                // A consumer or notifier connection: Shoal only produces.
                encode_dcp_reply(wbuf, Opcode::DcpOpen, Status::NOT_SUPPORTED, open.opaque);
                self.closing = true;
                return Ok(());
            }
            let name = String::from_utf8_lossy(open.name.of(frame));
            self.name = name
                .strip_prefix(REPLICA_NAME_PREFIX)
                .unwrap_or(&name)
                .to_owned();
            self.opened = true;
            tracing::info!(bucket = %self.ctx.name, replica = %self.name, "dcp producer opened");
            encode_dcp_reply(wbuf, Opcode::DcpOpen, Status::OK, open.opaque);
            return Ok(());
        }
        match msg {
            DcpMessage::Control(control) => {
                let status = match control.key.of(frame) {
                    b"connection_buffer_size" => match parse_buffer_size(control.value.of(frame)) {
                        Some(size) => {
                            self.window.set_limit(size);
                            Status::OK
                        }
                        None => Status::INVALID_ARGUMENTS,
                    },
                    // enable_noop, set_noop_interval and the like: this
                    // producer always sends NOOPs when idle.
                    _ => Status::OK,
                };
                encode_dcp_reply(wbuf, Opcode::DcpControl, status, control.opaque);
            }
            DcpMessage::StreamReq(req) => self.stream_req(&req, wbuf)?,
            DcpMessage::CloseStream { vbucket, opaque } => {
                let status = match self.streams.remove(&vbucket) {
                    Some(_) => Status::OK,
                    None => Status::KEY_NOT_FOUND,
                };
                encode_dcp_reply(wbuf, Opcode::DcpCloseStream, status, opaque);
            }
            DcpMessage::GetFailoverLog { vbucket, opaque } => {
                if self.ctx.engine.vbucket_state(vbucket).is_none() {
                    let status = Status::NOT_MY_VBUCKET;
                    encode_dcp_reply(wbuf, Opcode::DcpGetFailoverLog, status, opaque);
                } else {
                    let entries = wire_log(&self.ctx.engine.failover_log(vbucket));
                    encode_failover_log_reply(wbuf, opaque, &entries)?;
                }
            }
            DcpMessage::Noop { opaque } => {
                encode_dcp_reply(wbuf, Opcode::DcpNoop, Status::OK, opaque);
            }
            DcpMessage::BufferAck { bytes, .. } => {
                self.window
                    .acked(usize::try_from(bytes).unwrap_or(usize::MAX));
            }
            DcpMessage::SeqnoAcknowledged {
                vbucket,
                prepared_seqno,
                ..
            } => {
                self.ctx.durability.ack(vbucket, &self.name, prepared_seqno);
            }
            DcpMessage::Reply(reply) => {
                if reply.header.opcode == Opcode::DcpNoop {
                    self.noop_sent = None;
                }
                // Other replies (to an ACK-flagged marker, say) need nothing.
            }
            DcpMessage::Other(req) => {
                let h = req.header;
                encode_dcp_reply(wbuf, h.opcode, Status::UNKNOWN_COMMAND, h.opaque);
            }
            DcpMessage::Open(_) => return Err(Close::Protocol("DCP_OPEN twice")),
            DcpMessage::StreamEnd { .. }
            | DcpMessage::SnapshotMarker(_)
            | DcpMessage::Mutation(_)
            | DcpMessage::Deletion(_)
            | DcpMessage::Expiration(_)
            | DcpMessage::SetVbucketState { .. }
            | DcpMessage::StreamAccepted { .. }
            | DcpMessage::StreamRollback { .. }
            | DcpMessage::FailoverLogReply { .. } => {
                return Err(Close::Protocol("producer message sent to a producer"));
            }
        }
        Ok(())
    }

    /// DCP_STREAM_REQ: refuse, ask for a rollback, or open the stream.
    fn stream_req(&mut self, req: &StreamReq, wbuf: &mut BytesMut) -> Result<(), Close> {
        let reply = |wbuf: &mut BytesMut, status| {
            encode_dcp_reply(wbuf, Opcode::DcpStreamReq, status, req.opaque);
        };
        let vb = req.vbucket;
        if req.flags.0 & !SUPPORTED_STREAM_FLAGS != 0 {
            reply(wbuf, Status::NOT_SUPPORTED);
            return Ok(());
        }
        if self.streams.contains_key(&vb) {
            reply(wbuf, Status::KEY_EXISTS);
            return Ok(());
        }
        let bucket = &self.ctx.engine;
        let served = match bucket.vbucket_state(vb) {
            None => false,
            Some(VbucketState::Active) => true,
            // The old active of a takeover may already be a replica, or
            // dead, when its successor asks for its last writes: any copy
            // may be followed unless the consumer wants the active only.
            Some(_) => !req.flags.contains(StreamReqFlags::ACTIVE_VB_ONLY),
        };
        let (Some(high), true) = (bucket.high_seqno(vb), served) else {
            reply(wbuf, Status::NOT_MY_VBUCKET);
            return Ok(());
        };
        let log = bucket.failover_log(vb);
        if let StreamDecision::Rollback(seqno) = decide_stream(
            req.start_seqno,
            req.snap_end_seqno,
            req.vbucket_uuid,
            &log,
            high,
        ) {
            tracing::info!(bucket = %self.ctx.name, replica = %self.name, vb, start = req.start_seqno, uuid = req.vbucket_uuid, seqno, "stream request answered with rollback");
            encode_stream_rollback(wbuf, req.opaque, seqno);
            return Ok(());
        }
        let end = if req.flags.contains(StreamReqFlags::TO_LATEST) {
            high
        } else {
            req.end_seqno
        };
        if req.start_seqno > end {
            reply(wbuf, Status::INVALID_ARGUMENTS);
            return Ok(());
        }
        let (id, start) = match bucket.open_cursor(vb, req.start_seqno, wake_on(&self.notify)) {
            Ok(opened) => opened,
            Err(e) => {
                reply(wbuf, refusal(e));
                return Ok(());
            }
        };
        let cursor = CursorGuard::new(self.ctx.clone(), vb, id);
        if let Err(e) = encode_stream_accepted(wbuf, req.opaque, &wire_log(&log)) {
            // `wire_log` keeps the log within what a reply can carry.
            tracing::error!(vb, error = %e, "could not encode a failover log");
            reply(wbuf, Status::INTERNAL_ERROR);
            return Ok(());
        }
        tracing::debug!(bucket = %self.ctx.name, replica = %self.name, vb, start = req.start_seqno, ?start, "stream opened");
        if req.start_seqno >= end {
            // Nothing to send: done at once (the cursor closes here).
            encode_stream_end(wbuf, vb, req.opaque, StreamEndStatus::OK);
            return Ok(());
        }
        let stream = Stream {
            opaque: req.opaque,
            cursor,
            sent: req.start_seqno,
            end,
            phase: phase_for(start, req.start_seqno),
            pending: VecDeque::new(),
        };
        self.streams.insert(vb, stream);
        Ok(())
    }

    /// Whether stream data may be produced now.
    fn can_send(&self, wbuf: &BytesMut) -> bool {
        !self.closing && wbuf.len() < WRITE_BATCH && self.window.is_open()
    }

    /// Produces stream data into `wbuf`, one turn per stream, round and
    /// round, until the batch is full, the window closes or no stream has
    /// anything.
    fn pump(&mut self, wbuf: &mut BytesMut) -> Result<(), Close> {
        loop {
            let order: Vec<VbucketId> = self
                .streams
                .range(self.next_turn..)
                .chain(self.streams.range(..self.next_turn))
                .map(|(&vb, _)| vb)
                .collect();
            let mut progress = false;
            for vb in order {
                if !self.can_send(wbuf) {
                    self.next_turn = vb;
                    return Ok(());
                }
                let before = wbuf.len();
                let step = self.step(vb, wbuf);
                self.window.sent(wbuf.len() - before);
                match step? {
                    Step::Idle => {}
                    Step::Progress => progress = true,
                    Step::Ended => {
                        self.streams.remove(&vb);
                        progress = true;
                    }
                }
                self.next_turn = vb.wrapping_add(1);
            }
            if !progress {
                return Ok(());
            }
        }
    }

    /// The next timer: the NOOP or dead-peer deadline, the persisted seqno
    /// poll while a backfill waits for the flusher, and at least every
    /// NOOP interval (to notice a deleted bucket).
    fn deadline(&self) -> Instant {
        let keepalive = match self.noop_sent {
            Some(sent) => {
                (self.last_recv.max(sent) + DEAD_PEER_TIMEOUT).min(Instant::now() + NOOP_INTERVAL)
            }
            None => self.last_write + NOOP_INTERVAL,
        };
        let polling = self.backfills() < MAX_BACKFILLS
            && self
                .streams
                .values()
                .any(|s| matches!(s.phase, Phase::Persisting { .. }));
        if polling {
            keepalive.min(Instant::now() + PERSIST_POLL)
        } else {
            keepalive
        }
    }

    /// The timer fired: send a NOOP, or give up on a silent consumer. (A
    /// persisted-seqno poll needs nothing here: the next pump checks.)
    fn on_timer(&mut self, wbuf: &mut BytesMut) -> Result<(), Close> {
        let now = Instant::now();
        match self.noop_sent {
            Some(sent) if now >= self.last_recv.max(sent) + DEAD_PEER_TIMEOUT => {
                Err(Close::DeadPeer)
            }
            None if self.opened && now >= self.last_write + NOOP_INTERVAL => {
                let before = wbuf.len();
                encode_noop(wbuf, 0);
                self.window.sent(wbuf.len() - before);
                self.noop_sent = Some(now);
                // Its write moves this again; until then, no second NOOP.
                self.last_write = now;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// The status a STREAM_REQ gets when the cursor cannot be opened.
fn refusal(e: EngineError) -> Status {
    match e {
        EngineError::NotMyVbucket => Status::NOT_MY_VBUCKET,
        EngineError::OutOfMemory => Status::OUT_OF_MEMORY,
        _ => Status::TEMPORARY_FAILURE,
    }
}

/// Our failover log as the wire carries it (the newest entries, should it
/// ever be longer than a reply allows).
fn wire_log(log: &[(u64, u64)]) -> Vec<FailoverEntry> {
    log.iter()
        .take(MAX_FAILOVER_ENTRIES)
        .map(|&(vbucket_uuid, seqno)| FailoverEntry {
            vbucket_uuid,
            seqno,
        })
        .collect()
}
