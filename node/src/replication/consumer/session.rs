//! One connection of a replica stream task to its source: connect, log in
//! as the cluster and select the bucket, DCP_OPEN, then request every vbucket and
//! apply what arrives until the connection fails. Frames are applied in
//! order from the read buffer; one the engine has no memory for stays there
//! while reading pauses (back-pressure), and is retried.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use shoal_net::Stream;
use shoal_protocol::binary::dcp::{
    encode_buffer_ack, encode_close_stream, encode_control, encode_dcp_reply, encode_open,
    encode_seqno_acknowledged, encode_stream_req, OpenFlags, SnapshotFlags, StreamReq,
    StreamReqFlags,
};
use shoal_protocol::binary::{
    encode_request, parse_dcp, DcpMessage, EncodeError, Opcode, RequestFields, Status,
};
use shoal_protocol::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use shoal_auth::scram::{self, Mechanism};
use shoal_auth::secret::CLUSTER_USER;
use shoal_auth::{Hash, Secret};

use super::acks::AckTracker;
use super::Link;
use shoal_engine::mutation::{Mutation, MutationKind, VbucketId};
use shoal_engine::{EngineError, VbucketState};

/// What a mutation and a deletion share: where it goes and under which
/// seqno and CAS.
struct Change<'a> {
    vbucket: VbucketId,
    opaque: u32,
    seqno: u64,
    cas: u64,
    key: &'a [u8],
}
/// Connecting, and the SASL exchange, must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A producer sends a NOOP after 5 s without data; nothing at all for this
/// long means the connection (or the producer) is dead: reconnect.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A stream the producer refused (a temporary failure, a rollback that
/// could not run) or that we closed is asked for again after this.
const STREAM_RETRY: Duration = Duration::from_secs(1);

/// A source that does not have the vbucket active (yet) — routine while a
/// takeover makes it the active — is asked again after this.
const NOT_ACTIVE_YET_RETRY: Duration = Duration::from_millis(100);

/// A stream the producer ended (its vbucket changed state, perhaps being
/// handed over) is asked for again after this.
const STREAM_END_RETRY: Duration = Duration::from_millis(100);

/// How long to wait before retrying a mutation the engine had no memory
/// (or was warming up) for.
const BACKPRESSURE_RETRY: Duration = Duration::from_millis(10);

/// While acknowledging persisted seqnos, how often to look at the flusher's
/// progress (it has no per-seqno notification).
const PERSIST_POLL: Duration = Duration::from_millis(2);

/// The flow-control window asked of the producer (Couchbase's replication
/// default).
const BUFFER_SIZE: usize = 10 * 1024 * 1024;

/// Initial read buffer: a few dozen typical mutations per read.
const READ_BUFFER: usize = 64 * 1024;

/// Free space reserved before each read.
const MIN_READ_SPACE: usize = 16 * 1024;

/// Opaques of the connection's own requests. Streams use
/// `generation << 16 | vbucket` with a generation of at least 1, so the
/// two never collide.
const OPAQUE_SASL: u32 = 0;
const OPAQUE_OPEN: u32 = 1;
const OPAQUE_CONTROL: u32 = 2;

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("logging in as the cluster or selecting the bucket refused: {0}")]
    Auth(Status),
    #[error("DCP_OPEN refused: {0}")]
    Open(Status),
    #[error("protocol: {0}")]
    Protocol(&'static str),
    #[error("the producer closed the connection")]
    Closed,
    #[error("encode: {0}")]
    Encode(#[from] EncodeError),
}

/// Where one vbucket's stream is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VbStream {
    /// To be requested at `at`, if the vbucket is a replica here then.
    Waiting { at: Instant },
    /// STREAM_REQ sent with this opaque.
    Requested { opaque: u32 },
    /// Accepted: messages with this opaque are applied.
    Open { opaque: u32 },
}

/// Whether a frame was dealt with or must be retried later.
#[derive(Debug, PartialEq, Eq)]
enum Handled {
    Done,
    /// The engine has no room yet: keep the frame, stop reading, retry.
    Blocked,
}

/// One connection to the source.
pub(super) struct Session<'a> {
    link: &'a Link,
    limits: Limits,
    /// DCP_OPEN was accepted.
    opened: bool,
    /// The next stream opaque's generation (1..=u16::MAX).
    generation: u16,
    streams: BTreeMap<VbucketId, VbStream>,
    acks: AckTracker,
    /// Bytes processed and not yet returned with a BUFFER_ACK.
    unacked_bytes: usize,
    /// Something was applied since the flusher was last woken.
    applied: bool,
    /// A mutation is waiting for memory: reading is paused.
    blocked: bool,
    last_recv: Instant,
}

impl<'a> Session<'a> {
    pub(super) fn new(link: &'a Link) -> Session<'a> {
        Session {
            link,
            limits: link.ctx.limits,
            opened: false,
            generation: 1,
            streams: BTreeMap::new(),
            acks: AckTracker::default(),
            unacked_bytes: 0,
            applied: false,
            blocked: false,
            last_recv: Instant::now(),
        }
    }

    /// Whether DCP_OPEN was accepted (the source was reached).
    pub(super) fn opened(&self) -> bool {
        self.opened
    }

    /// Connects, authenticates, opens, and streams until an error (or the
    /// bucket's deletion: `Ok`).
    pub(super) async fn run(&mut self) -> Result<(), SessionError> {
        let link = self.link;
        let connect = link.transport.connect_data(&link.source, HANDSHAKE_TIMEOUT);
        let mut stream = connect.await.map_err(|e| match e.kind() {
            std::io::ErrorKind::TimedOut => SessionError::Timeout("connecting"),
            _ => e.into(),
        })?;
        stream.set_nodelay();
        let mut rbuf = BytesMut::with_capacity(READ_BUFFER);
        let secret = link.secret.current();
        let auth = authenticate(
            &mut stream,
            &secret,
            &link.ctx.name,
            &mut rbuf,
            &self.limits,
        );
        tokio::time::timeout(HANDSHAKE_TIMEOUT, auth)
            .await
            .map_err(|_| SessionError::Timeout("authenticating"))??;
        let mut wbuf = BytesMut::with_capacity(READ_BUFFER);
        encode_open(
            &mut wbuf,
            OPAQUE_OPEN,
            0,
            OpenFlags::PRODUCER,
            link.name.as_bytes(),
        )?;
        encode_control(
            &mut wbuf,
            OPAQUE_CONTROL,
            b"connection_buffer_size",
            BUFFER_SIZE.to_string().as_bytes(),
        )?;
        self.last_recv = Instant::now();
        let (mut rd, mut wr) = stream.split();
        loop {
            if link.ctx.is_deleted() {
                return Ok(());
            }
            self.process(&mut rbuf, &mut wbuf).await?;
            let now = Instant::now();
            self.request_due(&mut wbuf, now);
            self.acknowledge(&mut wbuf);
            let deadline = self.deadline(now);
            if !self.blocked {
                rbuf.reserve(MIN_READ_SPACE);
            }
            tokio::select! {
                read = rd.read_buf(&mut rbuf), if !self.blocked => match read {
                    Ok(0) => return Err(SessionError::Closed),
                    Ok(n) => {
                        self.last_recv = Instant::now();
                        link.counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
                        link.ctx.stats.replica_bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) => return Err(e.into()),
                },
                written = wr.write_some(&mut wbuf), if !wbuf.is_empty() => match written {
                    Ok(0) => return Err(SessionError::Closed),
                    Ok(_) => {}
                    Err(e) => return Err(e.into()),
                },
                () = tokio::time::sleep_until(deadline) => {
                    if self.blocked {
                        // Not reading is our doing, not the producer's.
                        self.last_recv = Instant::now();
                    } else if self.last_recv.elapsed() >= IDLE_TIMEOUT {
                        return Err(SessionError::Timeout("waiting for the producer"));
                    }
                }
            }
        }
    }

    /// Handles every complete frame in `rbuf`, stopping at one the engine
    /// has no room for yet.
    async fn process(
        &mut self,
        rbuf: &mut BytesMut,
        wbuf: &mut BytesMut,
    ) -> Result<(), SessionError> {
        self.blocked = false;
        loop {
            let (msg, used) = match parse_dcp(rbuf, &self.limits) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return Ok(()),
                Err(e) => return Err(SessionError::Protocol(e.reason)),
            };
            let Some(frame) = rbuf.get(..used) else {
                // The parser never reports more than it was given.
                return Err(SessionError::Protocol("frame longer than the buffer"));
            };
            match self.handle(msg, frame, wbuf).await? {
                Handled::Done => {
                    rbuf.advance(used);
                    self.unacked_bytes = self.unacked_bytes.saturating_add(used);
                }
                Handled::Blocked => {
                    self.blocked = true;
                    self.link
                        .counters
                        .backpressure
                        .fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
            }
        }
    }

    async fn handle(
        &mut self,
        msg: DcpMessage,
        frame: &[u8],
        wbuf: &mut BytesMut,
    ) -> Result<Handled, SessionError> {
        let link = self.link;
        let ctx = &link.ctx;
        match msg {
            DcpMessage::Reply(reply) => {
                let h = reply.header;
                self.on_reply(h.opcode, h.status, h.opaque)?;
            }
            DcpMessage::StreamAccepted { opaque, log } => {
                let entries = log.entries(frame).map(|e| (e.vbucket_uuid, e.seqno));
                self.on_accepted(opaque, entries.collect());
            }
            DcpMessage::StreamRollback { opaque, seqno } => {
                self.on_rollback(wbuf, opaque, seqno).await;
            }
            DcpMessage::SnapshotMarker(marker) => {
                if self.is_open(marker.vbucket, marker.opaque) {
                    link.counters.snapshots.fetch_add(1, Ordering::Relaxed);
                    if marker.flags.contains(SnapshotFlags::DISK) {
                        ctx.engine
                            .begin_disk_snapshot(marker.vbucket, marker.end_seqno);
                    }
                }
            }
            DcpMessage::Mutation(m) => {
                let f = m.fields;
                let kind = MutationKind::Set {
                    // The engine keeps the value: its own allocation
                    // rather than pinning the read buffer (which would
                    // also make the memory accounting lie).
                    value: Bytes::copy_from_slice(m.value.of(frame)),
                    flags: f.flags,
                    exptime: f.expiration,
                };
                let change = Change {
                    vbucket: f.vbucket,
                    opaque: f.opaque,
                    seqno: f.by_seqno,
                    cas: f.cas,
                    key: m.key.of(frame),
                };
                return Ok(self.apply_change(wbuf, change, kind));
            }
            DcpMessage::Deletion(d) | DcpMessage::Expiration(d) => {
                let f = d.fields;
                let change = Change {
                    vbucket: f.vbucket,
                    opaque: f.opaque,
                    seqno: f.by_seqno,
                    cas: f.cas,
                    key: d.key.of(frame),
                };
                return Ok(self.apply_change(wbuf, change, MutationKind::Delete));
            }
            DcpMessage::StreamEnd {
                vbucket,
                opaque,
                status,
            } => {
                if self.is_open(vbucket, opaque) {
                    tracing::debug!(bucket = %ctx.name, source = %link.source, vb = vbucket, status = status.0, "replica stream ended; asking again");
                    self.retry(vbucket, STREAM_END_RETRY);
                }
            }
            DcpMessage::Noop { opaque } => {
                encode_dcp_reply(wbuf, Opcode::DcpNoop, Status::OK, opaque);
            }
            DcpMessage::SetVbucketState { vbucket, state, .. } => {
                // Takeover is the cluster manager's job here (SET_VBUCKET).
                tracing::debug!(bucket = %ctx.name, vb = vbucket, ?state, "ignoring DCP_SET_VBUCKET_STATE");
            }
            DcpMessage::Other(req) => {
                encode_dcp_reply(
                    wbuf,
                    req.header.opcode,
                    Status::UNKNOWN_COMMAND,
                    req.header.opaque,
                );
            }
            DcpMessage::Open(_)
            | DcpMessage::StreamReq(_)
            | DcpMessage::CloseStream { .. }
            | DcpMessage::GetFailoverLog { .. }
            | DcpMessage::BufferAck { .. }
            | DcpMessage::Control(_)
            | DcpMessage::SeqnoAcknowledged { .. }
            | DcpMessage::FailoverLogReply { .. } => {
                return Err(SessionError::Protocol(
                    "consumer message sent to a consumer",
                ));
            }
        }
        Ok(Handled::Done)
    }

    /// STREAM_REQ accepted: adopt the active's failover log and open the
    /// stream.
    fn on_accepted(&mut self, opaque: u32, log: Vec<(u64, u64)>) {
        let Some(vb) = self.requested(opaque) else {
            return;
        };
        self.link.ctx.adopt_failover_log(vb, log);
        self.streams.insert(vb, VbStream::Open { opaque });
        self.acks.open(vb, opaque);
        // Acknowledge what this copy holds at once: a replica that is
        // already caught up (an old active handing over, a restart)
        // receives no mutation to trigger it, and its active's writes must
        // not wait for one.
        self.acks.applied(vb);
    }

    /// STREAM_REQ answered "rollback": this copy's history diverged from
    /// the active's; empty it and stream from 0.
    async fn on_rollback(&mut self, wbuf: &mut BytesMut, opaque: u32, seqno: u64) {
        let Some(vb) = self.requested(opaque) else {
            return;
        };
        let link = self.link;
        link.counters.rollbacks.fetch_add(1, Ordering::Relaxed);
        link.ctx
            .stats
            .replica_rollbacks
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(bucket = %link.ctx.name, source = %link.source, vb, seqno, "replica diverged from its active; rolling back to 0");
        match link.ctx.rollback_vbucket(vb).await {
            Ok(()) => {
                self.acks.reset(vb);
                self.request(wbuf, vb, 0, 0);
            }
            Err(error) => {
                tracing::warn!(bucket = %link.ctx.name, vb, %error, "rollback failed; retrying");
                self.retry(vb, STREAM_RETRY);
            }
        }
    }

    /// A mutation, deletion or expiration of an open stream, applied with
    /// the active's seqno and CAS.
    fn apply_change(&mut self, wbuf: &mut BytesMut, change: Change, kind: MutationKind) -> Handled {
        if !self.is_open(change.vbucket, change.opaque) {
            return Handled::Done;
        }
        let mutation = Mutation {
            vbucket: change.vbucket,
            seqno: change.seqno,
            // Its own allocation, as for values.
            key: Bytes::copy_from_slice(change.key),
            cas: change.cas,
            time: self.link.ctx.clock.now(),
            kind,
        };
        self.apply(wbuf, change.opaque, &mutation)
    }

    /// An untyped reply: OPEN's, CONTROL's, or a refused STREAM_REQ.
    fn on_reply(
        &mut self,
        opcode: Opcode,
        status: Status,
        opaque: u32,
    ) -> Result<(), SessionError> {
        let link = self.link;
        match opcode {
            Opcode::DcpOpen if opaque == OPAQUE_OPEN => {
                if status != Status::OK {
                    return Err(SessionError::Open(status));
                }
                self.opened = true;
                link.connected.store(true, Ordering::Relaxed);
                let now = Instant::now();
                for &vb in &link.vbuckets {
                    self.streams.insert(vb, VbStream::Waiting { at: now });
                }
            }
            Opcode::DcpControl if status != Status::OK => {
                tracing::warn!(bucket = %link.ctx.name, source = %link.source, %status, "DCP_CONTROL refused");
            }
            Opcode::DcpStreamReq => {
                if let Some(vb) = self.requested(opaque) {
                    if status == Status::NOT_MY_VBUCKET {
                        tracing::debug!(bucket = %link.ctx.name, source = %link.source, vb, "source does not have the vbucket (yet)");
                        self.retry(vb, NOT_ACTIVE_YET_RETRY);
                    } else {
                        tracing::warn!(bucket = %link.ctx.name, source = %link.source, vb, %status, "stream request refused");
                        self.retry(vb, STREAM_RETRY);
                    }
                }
            }
            // Replies to CLOSE_STREAM, NOOP and the like need nothing.
            _ => {}
        }
        Ok(())
    }

    /// Installs one change; see [`Handled`].
    fn apply(&mut self, wbuf: &mut BytesMut, opaque: u32, m: &Mutation) -> Handled {
        let link = self.link;
        let vb = m.vbucket;
        match link.ctx.engine.apply_replicated(vb, m) {
            Ok(()) => {
                link.counters.messages.fetch_add(1, Ordering::Relaxed);
                link.ctx
                    .stats
                    .replica_items_received
                    .fetch_add(1, Ordering::Relaxed);
                self.acks.applied(vb);
                self.applied = true;
            }
            Err(EngineError::OutOfMemory | EngineError::TempFail) => return Handled::Blocked,
            Err(EngineError::NotMyVbucket) => {
                // No longer a replica here: stop streaming it. It is asked
                // for again once it is a replica again.
                tracing::info!(bucket = %link.ctx.name, source = %link.source, vb, "vbucket is no longer a replica here; closing its stream");
                encode_close_stream(wbuf, vb, opaque);
                self.retry(vb, STREAM_RETRY);
            }
            Err(error) => {
                // Skipping the change would silently diverge: close the
                // stream and resume from what we hold, loudly.
                tracing::error!(bucket = %link.ctx.name, source = %link.source, vb, seqno = m.seqno, %error, "could not apply a replicated change");
                encode_close_stream(wbuf, vb, opaque);
                self.retry(vb, STREAM_RETRY);
            }
        }
        Handled::Done
    }

    /// Requests every stream whose time has come, if its vbucket is a
    /// replica (or pending) here; the others wait another round.
    fn request_due(&mut self, wbuf: &mut BytesMut, now: Instant) {
        if !self.opened {
            return;
        }
        let due: Vec<VbucketId> = self
            .streams
            .iter()
            .filter(|(_, s)| matches!(s, VbStream::Waiting { at } if *at <= now))
            .map(|(&vb, _)| vb)
            .collect();
        let bucket = &self.link.ctx.engine;
        for vb in due {
            let state = bucket.vbucket_state(vb);
            let (true, Some(start)) = (
                matches!(state, Some(VbucketState::Replica | VbucketState::Pending)),
                bucket.high_seqno(vb),
            ) else {
                self.retry(vb, STREAM_RETRY);
                continue;
            };
            let uuid = branch_holding(&bucket.failover_log(vb), start);
            self.request(wbuf, vb, start, uuid);
        }
    }

    /// Sends a STREAM_REQ for `vb` from `start` on branch `uuid`.
    ///
    /// A replica follows an active copy only: during a takeover its new
    /// active is still pending and may lack the replica's last writes,
    /// and a rollback answer from it would empty the one complete copy
    /// (the old active, now a replica). A pending copy — the takeover's
    /// target — follows the old active whatever its state now.
    fn request(&mut self, wbuf: &mut BytesMut, vb: VbucketId, start: u64, uuid: u64) {
        let flags = match self.link.ctx.engine.vbucket_state(vb) {
            Some(VbucketState::Pending) => StreamReqFlags(0),
            _ => StreamReqFlags::ACTIVE_VB_ONLY,
        };
        let opaque = (u32::from(self.generation) << 16) | u32::from(vb);
        self.generation = self.generation.checked_add(1).unwrap_or(1);
        let snap_end = self
            .link
            .ctx
            .engine
            .open_disk_snapshot(vb)
            .unwrap_or(start)
            .max(start);
        encode_stream_req(
            wbuf,
            &StreamReq {
                vbucket: vb,
                opaque,
                flags,
                start_seqno: start,
                end_seqno: u64::MAX,
                vbucket_uuid: uuid,
                snap_start_seqno: start,
                // Mid disk snapshot, this copy is consistent only at its
                // end: the active must roll it back if its history
                // branched off before there.
                snap_end_seqno: snap_end,
            },
        );
        self.streams.insert(vb, VbStream::Requested { opaque });
    }

    /// Schedules `vb` to be requested again after `delay`.
    fn retry(&mut self, vb: VbucketId, delay: Duration) {
        self.streams.insert(
            vb,
            VbStream::Waiting {
                at: Instant::now() + delay,
            },
        );
    }

    /// The vbucket whose outstanding STREAM_REQ has this opaque.
    fn requested(&self, opaque: u32) -> Option<VbucketId> {
        let vb = VbucketId::try_from(opaque & 0xffff).ok()?;
        (self.streams.get(&vb) == Some(&VbStream::Requested { opaque })).then_some(vb)
    }

    /// Whether `vb`'s stream is open with this opaque (anything else is
    /// left over from a stream since closed or re-requested).
    fn is_open(&self, vb: VbucketId, opaque: u32) -> bool {
        self.streams.get(&vb) == Some(&VbStream::Open { opaque })
    }

    /// After a batch: wakes the flusher, acknowledges seqnos and bytes.
    fn acknowledge(&mut self, wbuf: &mut BytesMut) {
        let link = self.link;
        let bucket = &link.ctx.engine;
        if self.applied {
            link.ctx.wrote();
            self.applied = false;
        }
        let persisted = link.ack_persisted;
        let mut acks = Vec::new();
        self.acks.collect(
            |vb| {
                if persisted {
                    bucket.persisted_seqno(vb)
                } else {
                    bucket.high_seqno(vb)
                }
            },
            |vb| bucket.high_seqno(vb),
            &mut acks,
        );
        for (vb, opaque, seqno) in acks {
            encode_seqno_acknowledged(wbuf, vb, opaque, seqno);
        }
        while self.unacked_bytes > 0 {
            let n = u32::try_from(self.unacked_bytes).unwrap_or(u32::MAX);
            encode_buffer_ack(wbuf, 0, n);
            self.unacked_bytes -= n as usize;
        }
    }

    /// The next time something is due: a back-pressure retry, a persisted
    /// seqno poll, a stream request, or the idle timeout.
    fn deadline(&self, now: Instant) -> Instant {
        let mut deadline = self.last_recv + IDLE_TIMEOUT;
        if self.blocked {
            deadline = deadline.min(now + BACKPRESSURE_RETRY);
        }
        if self.link.ack_persisted && self.acks.waiting() {
            deadline = deadline.min(now + PERSIST_POLL);
        }
        if self.opened {
            for s in self.streams.values() {
                if let VbStream::Waiting { at } = s {
                    deadline = deadline.min(*at);
                }
            }
        }
        deadline
    }
}

/// Logs in as the cluster (SCRAM-SHA512 with the cluster secret: the
/// secret never crosses the wire) and selects `bucket`; leaves any bytes
/// after the last reply in `rbuf`.
async fn authenticate(
    stream: &mut Stream,
    secret: &Secret,
    bucket: &str,
    rbuf: &mut BytesMut,
    limits: &Limits,
) -> Result<(), SessionError> {
    let mech = Mechanism(Hash::Sha512);
    let nonce = scram::new_nonce().map_err(|_| SessionError::Protocol("no random nonce"))?;
    let (client, first) = scram::Client::new(mech, CLUSTER_USER, &secret.to_hex(), &nonce);
    let name = mech.name().as_bytes();
    let (status, server_first) = call(stream, rbuf, limits, Opcode::SaslAuth, name, &first).await?;
    if status != Status::AUTH_CONTINUE {
        return Err(SessionError::Auth(status));
    }
    let (waiting, last) = client
        .respond(&server_first)
        .map_err(|_| SessionError::Protocol("bad SCRAM server-first message"))?;
    let (status, server_final) = call(stream, rbuf, limits, Opcode::SaslStep, name, &last).await?;
    if status != Status::OK {
        return Err(SessionError::Auth(status));
    }
    // The source proves it knows the secret too: a node that does not is
    // no member of this cluster, whatever it answers.
    waiting
        .verify(&server_final)
        .map_err(|_| SessionError::Protocol("the source does not know the cluster secret"))?;
    let (status, _) = call(
        stream,
        rbuf,
        limits,
        Opcode::SelectBucket,
        bucket.as_bytes(),
        &[],
    )
    .await?;
    match status {
        Status::OK => Ok(()),
        status => Err(SessionError::Auth(status)),
    }
}

/// Sends one request (`key`, `value`) and reads its reply: the status and
/// the value.
async fn call(
    stream: &mut Stream,
    rbuf: &mut BytesMut,
    limits: &Limits,
    opcode: Opcode,
    key: &[u8],
    value: &[u8],
) -> Result<(Status, Vec<u8>), SessionError> {
    let mut frame = BytesMut::new();
    let fields = RequestFields {
        opaque: OPAQUE_SASL,
        ..RequestFields::new(opcode)
    };
    encode_request(&mut frame, &fields, &[], key, value)?;
    stream.write_all(&frame).await?;
    stream.flush().await?;
    loop {
        match parse_dcp(rbuf, limits) {
            Ok(Some((DcpMessage::Reply(reply), used))) if reply.header.opcode == opcode => {
                let value = rbuf
                    .get(reply.value.start..reply.value.end)
                    .unwrap_or_default()
                    .to_vec();
                rbuf.advance(used);
                return Ok((reply.header.status, value));
            }
            Ok(Some(_)) => return Err(SessionError::Protocol("unexpected reply while logging in")),
            Ok(None) => {}
            Err(e) => return Err(SessionError::Protocol(e.reason)),
        }
        rbuf.reserve(MIN_READ_SPACE);
        if stream.read_buf(rbuf).await? == 0 {
            return Err(SessionError::Closed);
        }
    }
}

/// The UUID of the branch of failover `log` (newest first) that holds a
/// copy at `high_seqno`: the newest entry that starts below it. A branch
/// starting at the high seqno itself holds nothing yet — a vbucket that
/// turned active at a restart and took no write since — and naming it
/// would make the active roll back a copy that is a prefix of its own
/// history (a failed-over node coming back by delta recovery).
fn branch_holding(log: &[(u64, u64)], high_seqno: u64) -> u64 {
    log.iter()
        .find(|&&(_, start)| start < high_seqno)
        .or(log.first())
        .map_or(0, |&(uuid, _)| uuid)
}

#[cfg(test)]
mod tests {
    use super::branch_holding;

    #[test]
    fn a_branch_that_starts_at_the_high_seqno_is_skipped() {
        // Restarted active at 500 (branch 3), nothing written since.
        let log = [(3, 500), (2, 100), (1, 0)];
        assert_eq!(branch_holding(&log, 500), 2);
        assert_eq!(branch_holding(&log, 501), 3);
        assert_eq!(branch_holding(&log, 100), 1);
        assert_eq!(branch_holding(&log, 0), 3, "empty: the newest branch");
        assert_eq!(branch_holding(&[], 40), 0);
    }
}
