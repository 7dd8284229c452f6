//! One vbucket's stream on a producer connection and its turns: from disk
//! (wait for the flusher to persist the range, scan a chunk on the blocking
//! pool, send it sorted by seqno, repeat) and then from the checkpoint
//! queue through the replication cursor (one snapshot marker per cursor
//! batch, encoded a step at a time so the streams take fair turns).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;
use shoal_protocol::binary::dcp::{encode_stream_end, SnapshotFlags, StreamEndStatus};
use tokio::sync::Notify;

use super::backfill::{scan_chunk, Chunk};
use super::{frames, Close, Producer, MAX_BACKFILLS, MAX_READ_ITEMS, STEP_BYTES};
use crate::bucket::LiveBucket;
use shoal_engine::mutation::{Mutation, MutationKind, VbucketId};
use shoal_engine::{CursorId, CursorRead, CursorStart, CursorWake, VbucketState};

/// A finished backfill scan, sent back from the blocking pool.
#[derive(Debug)]
pub(super) struct Scanned {
    vb: VbucketId,
    /// The stream's opaque: a stream closed and requested again meanwhile
    /// has another, and the stale result is dropped.
    opaque: u32,
    result: Result<Chunk, String>,
}

/// Closes a replication cursor when the stream holding it goes away,
/// however that happens (stream end, close, connection drop).
#[derive(Debug)]
pub(super) struct CursorGuard {
    ctx: Arc<LiveBucket>,
    vb: VbucketId,
    id: CursorId,
}

impl CursorGuard {
    /// Guards cursor `id` and counts the stream in `stats replication`.
    pub(super) fn new(ctx: Arc<LiveBucket>, vb: VbucketId, id: CursorId) -> CursorGuard {
        ctx.durability.stream_opened();
        CursorGuard { ctx, vb, id }
    }
}

impl Drop for CursorGuard {
    fn drop(&mut self) {
        self.ctx.engine.close_cursor(self.vb, self.id);
        self.ctx.durability.stream_closed();
    }
}

/// Where a stream is.
#[derive(Debug)]
pub(super) enum Phase {
    /// Records up to `until` must come from disk: waiting for the flusher
    /// to persist them and for a backfill slot.
    Persisting { until: u64 },
    /// A scan of (sent, `until`] is running on the blocking pool.
    Scanning { until: u64 },
    /// Sending a scanned chunk; `marked` once its snapshot marker is out.
    Sending {
        until: u64,
        chunk: Chunk,
        marked: bool,
    },
    /// Following the checkpoint queue through the cursor.
    Memory,
}

/// One vbucket's stream.
#[derive(Debug)]
pub(super) struct Stream {
    /// The STREAM_REQ's opaque, carried by every message of the stream.
    pub(super) opaque: u32,
    pub(super) cursor: CursorGuard,
    /// Everything up to this seqno has been sent (or was the start).
    pub(super) sent: u64,
    /// Stop after this seqno (`u64::MAX`: stream on).
    pub(super) end: u64,
    pub(super) phase: Phase,
    /// Read from the cursor, its snapshot marker sent, not yet encoded.
    pub(super) pending: VecDeque<Mutation>,
}

/// What one turn of a stream did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Nothing to do now.
    Idle,
    /// Encoded something, or changed phase: worth another round.
    Progress,
    /// The stream is over (its STREAM_END is encoded).
    Ended,
}

// === impl Producer ===

impl Producer {
    /// One turn of the stream on `vb`.
    pub(super) fn step(&mut self, vb: VbucketId, wbuf: &mut BytesMut) -> Result<Step, Close> {
        let Some(phase) = self.streams.get(&vb).map(|s| &s.phase) else {
            return Ok(Step::Idle);
        };
        match phase {
            Phase::Persisting { until } => Ok(self.start_scan(vb, *until, wbuf)),
            Phase::Scanning { .. } => Ok(Step::Idle),
            Phase::Sending { .. } => self.send_chunk(vb, wbuf),
            Phase::Memory => self.send_memory(vb, wbuf),
        }
    }

    /// Starts the next backfill scan of `vb` once the flusher has persisted
    /// up to `until` and a backfill slot is free.
    fn start_scan(&mut self, vb: VbucketId, until: u64, wbuf: &mut BytesMut) -> Step {
        let slots_free = self.backfills() < MAX_BACKFILLS;
        let Some(stream) = self.streams.get_mut(&vb) else {
            return Step::Idle;
        };
        let Some(store) = self.ctx.store.clone() else {
            // Only persistent buckets queue mutations, so only they backfill.
            tracing::error!(bucket = %self.ctx.name, vb, "backfill needed without a store");
            encode_stream_end(wbuf, vb, stream.opaque, StreamEndStatus::STATE_CHANGED);
            return Step::Ended;
        };
        let bucket = &self.ctx.engine;
        if bucket.high_seqno(vb) < Some(until) {
            // Gone, or cleared below the range (a rolled-back copy): the
            // flusher will never get there, and the cursor is gone. (A dead
            // copy that still holds its data is scanned: a takeover reads
            // the old active's last writes.)
            encode_stream_end(wbuf, vb, stream.opaque, StreamEndStatus::STATE_CHANGED);
            return Step::Ended;
        }
        if !slots_free || bucket.persisted_seqno(vb) < Some(until) {
            return Step::Idle;
        }
        stream.phase = Phase::Scanning { until };
        let (after, opaque) = (stream.sent, stream.opaque);
        self.scans_running += 1;
        let (tx, cancel) = (self.scanned.clone(), self.cancel.clone());
        tokio::task::spawn_blocking(move || {
            let result = scan_chunk(&store, vb, after, until, &cancel);
            // The connection may be gone: nobody to tell.
            let _ = tx.blocking_send(Scanned { vb, opaque, result });
        });
        Step::Progress
    }

    /// Sends part of `vb`'s scanned chunk; once it is all sent, moves on to
    /// the next chunk or to memory.
    fn send_chunk(&mut self, vb: VbucketId, wbuf: &mut BytesMut) -> Result<Step, Close> {
        // A disk snapshot holds each key's latest version only, so the
        // replica's copy matches this vbucket's history again only once
        // the live stream has brought it up to where the vbucket is now:
        // the marker's end says so (the consumer claims no consistent
        // state before it, see `Bucket::begin_disk_snapshot`).
        let high_now = self.ctx.engine.high_seqno(vb).unwrap_or(0);
        let Some(stream) = self.streams.get_mut(&vb) else {
            return Ok(Step::Idle);
        };
        let Phase::Sending {
            until,
            chunk,
            marked,
        } = &mut stream.phase
        else {
            return Ok(Step::Idle);
        };
        if !*marked && !chunk.records.is_empty() {
            let start = stream.sent.saturating_add(1);
            let flags = SnapshotFlags::DISK;
            let end = chunk.end.max(high_now);
            frames::encode_marker(wbuf, vb, stream.opaque, start, end, flags);
        }
        *marked = true;
        let start = wbuf.len();
        while wbuf.len() - start < STEP_BYTES {
            let Some(record) = chunk.records.pop_front() else {
                break;
            };
            if record.seqno <= stream.end {
                frames::encode_record(wbuf, vb, stream.opaque, &record)?;
            }
        }
        if !chunk.records.is_empty() {
            return Ok(Step::Progress);
        }
        let until = *until;
        stream.sent = chunk.end;
        stream.phase = if chunk.end < until {
            Phase::Persisting { until }
        } else {
            Phase::Memory
        };
        if stream.sent >= stream.end {
            encode_stream_end(wbuf, vb, stream.opaque, StreamEndStatus::OK);
            return Ok(Step::Ended);
        }
        Ok(Step::Progress)
    }

    /// Sends `vb`'s next mutations from the checkpoint queue: a new cursor
    /// batch (with its snapshot marker) when the last one is all sent.
    fn send_memory(&mut self, vb: VbucketId, wbuf: &mut BytesMut) -> Result<Step, Close> {
        let Some(stream) = self.streams.get_mut(&vb) else {
            return Ok(Step::Idle);
        };
        if stream.pending.is_empty() {
            let mut batch = Vec::new();
            let bucket = &self.ctx.engine;
            match bucket.read_cursor(vb, stream.cursor.id, self.read_items, &mut batch) {
                CursorRead::Items(_) => {}
                CursorRead::Dropped => {
                    // The queue moved on without this stream: reopen where
                    // it is, which starts with a backfill.
                    let wake = wake_on(&self.notify);
                    let Ok((id, start)) = bucket.open_cursor(vb, stream.sent, wake) else {
                        encode_stream_end(wbuf, vb, stream.opaque, StreamEndStatus::STATE_CHANGED);
                        return Ok(Step::Ended);
                    };
                    stream.cursor = CursorGuard::new(self.ctx.clone(), vb, id);
                    stream.phase = phase_for(start, stream.sent);
                    return Ok(Step::Progress);
                }
                CursorRead::Closed => {
                    // The vbucket was cleared or deleted under the stream.
                    encode_stream_end(wbuf, vb, stream.opaque, StreamEndStatus::STATE_CHANGED);
                    return Ok(Step::Ended);
                }
            }
            batch.retain(|m| m.seqno > stream.sent);
            let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
                // Caught up: the moment to notice the vbucket went away.
                return Ok(match bucket.vbucket_state(vb) {
                    None | Some(VbucketState::Dead) => {
                        let status = StreamEndStatus::STATE_CHANGED;
                        encode_stream_end(wbuf, vb, stream.opaque, status);
                        Step::Ended
                    }
                    Some(_) => Step::Idle,
                });
            };
            let (first, last) = (first.seqno, last.seqno.min(stream.end));
            if first <= last {
                let flags = SnapshotFlags::MEMORY;
                frames::encode_marker(wbuf, vb, stream.opaque, first, last, flags);
            }
            let bytes: usize = batch.iter().map(change_size).sum();
            let average = (bytes / batch.len()).max(1);
            self.read_items = (STEP_BYTES / average).clamp(1, MAX_READ_ITEMS);
            stream.pending.extend(batch);
        }
        let start = wbuf.len();
        while wbuf.len() - start < STEP_BYTES {
            let Some(m) = stream.pending.pop_front() else {
                break;
            };
            if m.seqno <= stream.end {
                frames::encode_change(wbuf, vb, stream.opaque, &m)?;
            }
            stream.sent = m.seqno;
        }
        if stream.pending.is_empty() && stream.sent >= stream.end {
            encode_stream_end(wbuf, vb, stream.opaque, StreamEndStatus::OK);
            return Ok(Step::Ended);
        }
        Ok(Step::Progress)
    }

    /// Streams holding a backfill slot: a running scan or an unsent chunk.
    pub(super) fn backfills(&self) -> usize {
        let sending = self
            .streams
            .values()
            .filter(|s| matches!(s.phase, Phase::Sending { .. }))
            .count();
        self.scans_running + sending
    }

    /// A scan finished: hand its chunk to its stream, if still there.
    pub(super) fn scanned(&mut self, done: Scanned) {
        self.scans_running = self.scans_running.saturating_sub(1);
        let Some(stream) = self.streams.get_mut(&done.vb) else {
            return;
        };
        let Phase::Scanning { until } = stream.phase else {
            return;
        };
        if stream.opaque != done.opaque {
            return;
        }
        stream.phase = match done.result {
            Ok(chunk) => Phase::Sending {
                until,
                chunk,
                marked: false,
            },
            Err(error) => {
                // A disk error: try again at the next poll rather than
                // leave the replica without the range.
                tracing::error!(bucket = %self.ctx.name, vb = done.vb, %error, "backfill scan failed");
                Phase::Persisting { until }
            }
        };
    }
}

/// A cursor wake-up for the connection woken by `notify`. The engine calls
/// it with the vbucket locked, so it only stores a permit.
pub(super) fn wake_on(notify: &Arc<Notify>) -> CursorWake {
    let notify = notify.clone();
    Arc::new(move || notify.notify_one())
}

/// The phase a cursor opened after `sent` starts in.
pub(super) fn phase_for(start: CursorStart, sent: u64) -> Phase {
    match start {
        CursorStart::Backfill { until } if until > sent => Phase::Persisting { until },
        _ => Phase::Memory,
    }
}

/// About what a change costs on the wire, for sizing cursor reads.
fn change_size(m: &Mutation) -> usize {
    let value = match &m.kind {
        MutationKind::Set { value, .. } => value.len(),
        MutationKind::Delete => 0,
    };
    // Header and extras: 24 + 31.
    55 + m.key.len() + value
}
