//! The binary front end: runs one parsed [`Request`] against the
//! connection's bucket and appends memcached 1.6's reply frame to the
//! connection's output.
//!
//! The vbucket comes from the request header (smart clients and the proxy
//! compute it; a memcached bucket ignores it). Quiet opcodes follow
//! memcached: GETQ/GETKQ/GATQ/GATKQ are silent on a miss, quiet mutations
//! are silent on success, errors are always sent. The vbucket commands
//! (SET/GET/DEL_VBUCKET) are what the cluster manager drives a node with.
//!
//! Bucket selection, as Couchbase does it: SASL (PLAIN or SCRAM)
//! authenticates as a bucket (its name and password, which selects it), an
//! admin user or the cluster; SELECT_BUCKET names a bucket the connection
//! may use. Without a bucket, every command that needs one answers
//! NO_BUCKET (0x08), or AUTH_ERROR (0x20) when `default` waits for a
//! password. SET_VBUCKET, DEL_VBUCKET and DCP answer NO_ACCESS (0x24) to
//! anyone but the cluster.

use bytes::{Bytes, BytesMut};
use shoal_protocol::binary::{
    counter_value, encode_response, flags_extras, vbucket_state_value, Extras, Opcode, Request,
    RequestHeader, ResponseFields, Status, VbucketState as WireState,
};

use shoal_protocol::meta::{self, MetaCommand};
use shoal_protocol::Limits;

use super::meta::{self as meta_front, Vbucket};
use super::session::{SaslReply, Selection, Session, MECHANISMS};
use super::stats;
use super::Flow;
use crate::bucket::{BucketKind, FlushError, LiveBucket};
use crate::version::VERSION;
use shoal_engine::VbucketId;
use shoal_engine::{
    resolve_exptime, ArithCreate, ArithOp, ArithRequest, EngineError, Hit, StoreMode, StoreRequest,
    VbucketState,
};

/// Runs `req`, parsed from `frame`, appending its reply (if any) to `out`:
/// the commands that need no bucket here, the rest on the session's bucket.
pub(super) fn execute(
    session: &mut Session,
    frame: &[u8],
    req: &Request,
    out: &mut BytesMut,
) -> Flow {
    let h = &req.header;
    match h.opcode {
        Opcode::Noop | Opcode::Verbosity => Reply::ok(h).write(out),
        Opcode::Version => Reply::ok(h).value(VERSION.as_bytes()).write(out),
        Opcode::Quit => {
            Reply::ok(h).write(out);
            return Flow::Close;
        }
        Opcode::QuitQ => return Flow::Close,
        Opcode::SaslListMechs => Reply::ok(h).value(MECHANISMS).write(out),
        Opcode::SaslAuth | Opcode::SaslStep => sasl(session, frame, req, out),
        Opcode::SelectBucket => {
            // Couchbase answers an unknown bucket "not found", one the
            // connection may not use "no access", and keeps the connection
            // on the bucket it had.
            match session.select(req.key.of(frame)) {
                Selection::Selected => Reply::ok(h).write(out),
                Selection::NoSuchBucket => Reply::error(h, Status::KEY_NOT_FOUND).write(out),
                Selection::NoAccess => Reply::error(h, Status::NO_ACCESS).write(out),
            }
        }
        Opcode::Other(_) => Reply::error(h, Status::UNKNOWN_COMMAND).write(out),
        // The cluster's own commands: vbucket states and replication
        // streams. Only another node (proving the cluster secret) may.
        op if is_cluster_only(op) && !session.principal().is_cluster() => {
            Reply::error(h, Status::NO_ACCESS).write(out)
        }
        _ => match session.bucket() {
            Some(bucket) => return execute_on(bucket, frame, req, out),
            None if session.needs_auth() => Reply::error(h, Status::AUTH_ERROR).write(out),
            None => Reply::error(h, Status::NO_BUCKET).write(out),
        },
    }
    Flow::Read
}

/// Opcodes only the cluster itself may send: they change vbucket states
/// or stream (or acknowledge) a bucket's every write.
pub(super) fn is_cluster_only(op: Opcode) -> bool {
    matches!(op, Opcode::SetVbucket | Opcode::DelVbucket) || op.is_dcp()
}

/// SASL_AUTH and SASL_STEP: Couchbase's statuses (0x21 to continue a
/// SCRAM exchange, 0x20 on any failure, with nothing said of why).
fn sasl(session: &mut Session, frame: &[u8], req: &Request, out: &mut BytesMut) {
    let h = &req.header;
    let (mechanism, data) = (req.key.of(frame), req.value.of(frame));
    let reply = if h.opcode == Opcode::SaslAuth {
        session.sasl_auth(mechanism, data)
    } else {
        session.sasl_step(mechanism, data)
    };
    match reply {
        SaslReply::Done(value) => Reply::ok(h).value(&value).write(out),
        SaslReply::Continue(value) => Reply::ok(h)
            .status(Status::AUTH_CONTINUE)
            .value(&value)
            .write(out),
        SaslReply::Failed => Reply::error(h, Status::AUTH_ERROR).write(out),
    }
}

/// One request against one bucket: what every verb below needs.
struct Call<'a> {
    bucket: &'a LiveBucket,
    frame: &'a [u8],
    req: &'a Request,
    /// The request's key, sliced from `frame`.
    key: &'a [u8],
    /// The vbucket the key is served from (the header's, or the key's own
    /// on a standalone node or memcached bucket).
    vb: VbucketId,
    /// The bucket's clock, read once per request.
    now: u32,
}

impl Call<'_> {
    fn header(&self) -> &RequestHeader {
        &self.req.header
    }
}

/// Runs a command that needs a bucket on `bucket`.
fn execute_on(bucket: &LiveBucket, frame: &[u8], req: &Request, out: &mut BytesMut) -> Flow {
    let key = req.key.of(frame);
    let call = Call {
        bucket,
        frame,
        req,
        key,
        vb: bucket.route(req.header.vbucket, key),
        now: bucket.clock.now(),
    };
    match req.header.opcode {
        Opcode::Get | Opcode::GetQ | Opcode::GetK | Opcode::GetKQ => {
            let result = bucket.get(call.vb, key, call.now);
            retrieval_reply(out, call.header(), key, result);
            Flow::Read
        }
        Opcode::Gat | Opcode::GatQ | Opcode::GatK | Opcode::GatKQ | Opcode::Touch => {
            touch(&call, out)
        }
        Opcode::GetReplica => {
            let result = bucket.get_replica(call.vb, key, call.now);
            retrieval_reply(out, call.header(), key, result);
            Flow::Read
        }
        Opcode::Set
        | Opcode::SetQ
        | Opcode::Add
        | Opcode::AddQ
        | Opcode::Replace
        | Opcode::ReplaceQ
        | Opcode::Append
        | Opcode::AppendQ
        | Opcode::Prepend
        | Opcode::PrependQ => store(&call, out),
        Opcode::Delete | Opcode::DeleteQ => delete(&call, out),
        Opcode::Increment | Opcode::IncrementQ | Opcode::Decrement | Opcode::DecrementQ => {
            arith(&call, out)
        }
        Opcode::Flush | Opcode::FlushQ => flush(&call, out),
        Opcode::Stat => stat(&call, out),
        Opcode::SetVbucket | Opcode::GetVbucket | Opcode::DelVbucket => vbucket_command(&call, out),
        Opcode::Meta => meta_envelope(&call, out),
        _ => {
            Reply::error(call.header(), Status::NOT_SUPPORTED).write(out);
            Flow::Read
        }
    }
}

/// META, a proxy's meta envelope: runs the meta request in the value on
/// the header's vbucket and answers its reply text as the value, written
/// straight into `out` behind a header whose length is filled in after.
/// A routing error (not my vbucket, temporary failure) is a status, so the
/// proxy retries it as it does every other request.
fn meta_envelope(call: &Call, out: &mut BytesMut) -> Flow {
    let h = call.header();
    let request = call.req.value.of(call.frame);
    // Sized by the frame itself: the binary parser already bounded it, and
    // the engine judges the value's size as for any write.
    let limits = Limits {
        max_value_len: request.len(),
        max_line_len: request.len().saturating_add(1),
        ..Limits::default()
    };
    let cmd = match meta::parse_meta(request, &limits) {
        Ok(Some((cmd, used))) if used == request.len() && cmd != MetaCommand::Noop => cmd,
        _ => {
            Reply::error(h, Status::INVALID_ARGUMENTS).write(out);
            return Flow::Read;
        }
    };
    let start = out.len();
    Reply::ok(h).write(out);
    let body = out.len();
    let vb = Vbucket::Given(call.vb);
    match meta_front::execute_in(call.bucket, vb, request, &cmd, out) {
        Ok(flow) => {
            let len = u32::try_from(out.len() - body).unwrap_or(u32::MAX);
            out[start + 8..start + 12].copy_from_slice(&len.to_be_bytes());
            flow
        }
        Err(e) => {
            out.truncate(start);
            Reply::engine_error(h, e).write(out);
            Flow::Read
        }
    }
}

/// GAT, GATK, TOUCH and their quiet forms: a new expiry, and the value
/// back (but for TOUCH).
fn touch(call: &Call, out: &mut BytesMut) -> Flow {
    let (bucket, vb, key, now) = (call.bucket, call.vb, call.key, call.now);
    let exptime = match call.req.extras {
        Extras::Touch { exptime } => resolve_exptime(exptime.0, now),
        _ => 0,
    };
    let result = bucket.with_resident(vb, key, now, || bucket.engine.gat(vb, key, exptime, now));
    retrieval_reply(out, call.header(), key, result);
    Flow::Wrote
}

/// SET, ADD, REPLACE, APPEND, PREPEND and their quiet forms.
fn store(call: &Call, out: &mut BytesMut) -> Flow {
    let (bucket, vb, key, now, h) = (call.bucket, call.vb, call.key, call.now, call.header());
    let (flags, exptime) = match call.req.extras {
        Extras::Store { flags, exptime } => (flags, resolve_exptime(exptime.0, now)),
        _ => (0, 0),
    };
    let mode = match h.opcode.non_quiet() {
        Opcode::Add => StoreMode::Add,
        Opcode::Replace => StoreMode::Replace,
        Opcode::Append => StoreMode::Append,
        Opcode::Prepend => StoreMode::Prepend,
        _ => StoreMode::Set,
    };
    let request = StoreRequest {
        mode,
        // The one copy of a write: the item owns its bytes rather than
        // pinning the connection's read buffer.
        key: Bytes::copy_from_slice(key),
        value: Bytes::copy_from_slice(call.req.value.of(call.frame)),
        flags,
        exptime,
        cas: h.cas,
    };
    match bucket.with_resident(vb, key, now, || bucket.engine.store(vb, &request, now)) {
        Ok(_) if h.opcode.is_quiet() => {}
        Ok(m) => Reply::ok(h).cas(m.cas).write(out),
        // memcached's binary protocol words a refused add or replace by its
        // cause (`complete_update_bin`): ADD on a present key is "exists",
        // REPLACE on a missing one is "not found"; only append/prepend say
        // "not stored".
        Err(EngineError::NotStored) if mode == StoreMode::Add => {
            Reply::error(h, Status::KEY_EXISTS).write(out)
        }
        Err(EngineError::NotStored) if mode == StoreMode::Replace => {
            Reply::error(h, Status::KEY_NOT_FOUND).write(out)
        }
        Err(e) => Reply::engine_error(h, e).write(out),
    }
    Flow::Wrote
}

/// DELETE and DELETEQ.
fn delete(call: &Call, out: &mut BytesMut) -> Flow {
    let h = call.header();
    match call
        .bucket
        .engine
        .delete(call.vb, call.key, h.cas, call.now)
    {
        Ok(_) if h.opcode.is_quiet() => {}
        // memcached answers a delete with CAS 0: the tombstone's CAS is
        // internal (replication), not a version a client can use.
        Ok(_) => Reply::ok(h).write(out),
        Err(e) => Reply::engine_error(h, e).write(out),
    }
    Flow::Wrote
}

/// INCREMENT, DECREMENT and their quiet forms.
fn arith(call: &Call, out: &mut BytesMut) -> Flow {
    let (bucket, vb, key, now, h) = (call.bucket, call.vb, call.key, call.now, call.header());
    let (delta, initial, raw_exptime) = match call.req.extras {
        Extras::Arith {
            delta,
            initial,
            exptime,
        } => (delta, initial, u32::try_from(exptime.0).unwrap_or(u32::MAX)),
        _ => (0, 0, u32::MAX),
    };
    let request = ArithRequest {
        key: Bytes::copy_from_slice(key),
        op: match h.opcode.non_quiet() {
            Opcode::Increment => ArithOp::Incr,
            _ => ArithOp::Decr,
        },
        delta,
        create: ArithCreate::from_binary(initial, raw_exptime, now),
        cas: h.cas,
    };
    match bucket.with_resident(vb, key, now, || bucket.engine.arith(vb, &request, now)) {
        Ok(_) if h.opcode.is_quiet() => {}
        Ok(o) => Reply::ok(h)
            .cas(o.cas)
            .value(&counter_value(o.value))
            .write(out),
        Err(e) => Reply::engine_error(h, e).write(out),
    }
    Flow::Wrote
}

/// FLUSH and FLUSHQ, now or at the extras' expiry.
fn flush(call: &Call, out: &mut BytesMut) -> Flow {
    let h = call.header();
    let deadline = match call.req.extras {
        Extras::Flush {
            exptime: Some(exptime),
        } if exptime.0 > 0 => resolve_exptime(exptime.0, call.now),
        _ => 0,
    };
    match call.bucket.flush_all(deadline, call.now) {
        Ok(()) if h.opcode.is_quiet() => {}
        Ok(()) => Reply::ok(h).write(out),
        // memcached started with flush disabled (`-F`) answers the same.
        Err(FlushError::Disabled) => Reply::error(h, Status::NOT_SUPPORTED).write(out),
        Err(FlushError::Engine(e)) => Reply::engine_error(h, e).write(out),
    }
    Flow::Wrote
}

/// STAT: one reply per stat of the group the key names, then an empty one.
fn stat(call: &Call, out: &mut BytesMut) -> Flow {
    let h = call.header();
    let known = stats::write(call.bucket, call.key, |name, value| {
        Reply::ok(h)
            .key(name.as_bytes())
            .value(value.as_bytes())
            .write(out);
    });
    if known {
        Reply::ok(h).write(out);
    } else {
        Reply::error(h, Status::KEY_NOT_FOUND).write(out);
    }
    Flow::Read
}

/// SET_VBUCKET, GET_VBUCKET and DEL_VBUCKET: what the cluster manager
/// drives a node with, on the vbucket the header names.
fn vbucket_command(call: &Call, out: &mut BytesMut) -> Flow {
    let (bucket, h) = (call.bucket, call.header());
    match h.opcode {
        // A memcached bucket's one vbucket is always active: there is
        // nothing for the cluster manager to move.
        Opcode::SetVbucket | Opcode::DelVbucket if bucket.kind == BucketKind::Memcached => {
            Reply::error(h, Status::NOT_SUPPORTED).write(out);
        }
        Opcode::SetVbucket => {
            let state = match call.req.extras {
                Extras::SetVbucket { state } => VbucketState::from_wire(state.to_u32()),
                _ => None,
            };
            match state.map(|state| bucket.set_vbucket_state(h.vbucket, state)) {
                Some(Ok(())) => Reply::ok(h).write(out),
                Some(Err(e)) => Reply::engine_error(h, e).write(out),
                None => Reply::error(h, Status::INVALID_ARGUMENTS).write(out),
            }
        }
        Opcode::GetVbucket => match bucket.engine.vbucket_state(h.vbucket) {
            Some(state) => {
                let wire = WireState::from_u32(state.to_wire()).unwrap_or(WireState::Dead);
                Reply::ok(h).value(&vbucket_state_value(wire)).write(out);
            }
            None => Reply::error(h, Status::NOT_MY_VBUCKET).write(out),
        },
        _ => match bucket.delete_vbucket(h.vbucket) {
            Ok(()) => Reply::ok(h).write(out),
            Err(e) => Reply::engine_error(h, e).write(out),
        },
    }
    Flow::Read
}

/// The reply of the GET/GAT/TOUCH family: flags as extras, the key for
/// the K variants, the value unless it is a TOUCH.
fn retrieval_reply(
    out: &mut BytesMut,
    h: &RequestHeader,
    key: &[u8],
    result: Result<Hit, EngineError>,
) {
    let op = h.opcode.non_quiet();
    match result {
        Ok(hit) => {
            let extras = flags_extras(hit.flags);
            let key = if op.reply_has_key() { key } else { &[] };
            let value: &[u8] = if op == Opcode::Touch { &[] } else { &hit.value };
            Reply::ok(h)
                .cas(hit.cas)
                .extras(&extras)
                .key(key)
                .value(value)
                .write(out);
        }
        Err(EngineError::NotFound) if h.opcode.is_quiet() => {}
        Err(EngineError::NotFound) if op.reply_has_key() => {
            // memcached's GETK miss carries the key (and no message) so a
            // pipelining client can tell which request missed.
            Reply::ok(h)
                .status(Status::KEY_NOT_FOUND)
                .key(key)
                .write(out);
        }
        Err(e) => Reply::engine_error(h, e).write(out),
    }
}

/// The status for an engine refusal.
fn status_of(e: EngineError) -> Status {
    match e {
        EngineError::NotFound => Status::KEY_NOT_FOUND,
        EngineError::Exists => Status::KEY_EXISTS,
        EngineError::NotStored => Status::NOT_STORED,
        EngineError::NonNumeric => Status::NON_NUMERIC,
        EngineError::NotMyVbucket => Status::NOT_MY_VBUCKET,
        EngineError::TooLarge => Status::TOO_LARGE,
        EngineError::OutOfMemory => Status::OUT_OF_MEMORY,
        EngineError::TempFail | EngineError::ValueEjected => Status::TEMPORARY_FAILURE,
    }
}

// === impl Reply ===

/// One response frame, built from its request's header: status, CAS,
/// extras, key and value default to OK, 0 and empty.
#[derive(Clone, Copy)]
struct Reply<'a> {
    header: &'a RequestHeader,
    status: Status,
    cas: u64,
    extras: &'a [u8],
    key: &'a [u8],
    value: &'a [u8],
}

impl<'a> Reply<'a> {
    /// An empty success reply to `header`.
    fn ok(header: &'a RequestHeader) -> Reply<'a> {
        Reply {
            header,
            status: Status::OK,
            cas: 0,
            extras: &[],
            key: &[],
            value: &[],
        }
    }

    /// An error reply with memcached's message for `status` as its body.
    fn error(header: &'a RequestHeader, status: Status) -> Reply<'a> {
        Reply::ok(header)
            .status(status)
            .value(status.message().as_bytes())
    }

    /// The error reply for an engine refusal.
    fn engine_error(header: &'a RequestHeader, e: EngineError) -> Reply<'a> {
        Reply::error(header, status_of(e))
    }

    fn status(self, status: Status) -> Reply<'a> {
        Reply { status, ..self }
    }

    fn cas(self, cas: u64) -> Reply<'a> {
        Reply { cas, ..self }
    }

    fn extras(self, extras: &'a [u8]) -> Reply<'a> {
        Reply { extras, ..self }
    }

    fn key(self, key: &'a [u8]) -> Reply<'a> {
        Reply { key, ..self }
    }

    fn value(self, value: &'a [u8]) -> Reply<'a> {
        Reply { value, ..self }
    }

    /// Appends the frame to `out`.
    fn write(self, out: &mut BytesMut) {
        let fields = ResponseFields {
            cas: self.cas,
            ..ResponseFields::reply_to(self.header, self.status)
        };
        // Cannot fail: keys, extras and values here are bounded by the
        // parser's limits, far inside the header's length fields.
        if encode_response(out, &fields, self.extras, self.key, self.value).is_err() {
            tracing::error!(opcode = %self.header.opcode, "reply too large to encode");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GET_REPLICA reads a replica's value back from disk once the pager
    /// ejected it, as GET does on an active vbucket.
    #[test]
    fn get_replica_fetches_an_ejected_value() {
        use shoal_engine::mutation::{Mutation, MutationKind};
        let dir = shoal_persist::testdir::TestDir::new("binary-get-replica");
        let (ctx, _store) = crate::bucket::open::open_standalone(&crate::NodeConfig {
            data_dir: dir.path().to_path_buf(),
            standalone: true,
            num_vbuckets: 16,
            ram_quota_mb: 1,
            ..crate::NodeConfig::default()
        })
        .unwrap();
        ctx.engine.set_warming_up(false);
        ctx.engine
            .set_vbucket_state(0, VbucketState::Replica)
            .unwrap();
        let now = ctx.clock.now();
        let value = |i: u64| Bytes::from(vec![b'a' + (i % 26) as u8; 64 * 1024]);
        let mut applied = 0;
        for seqno in 1..100u64 {
            let m = Mutation {
                vbucket: 0,
                seqno,
                key: Bytes::from(format!("k{seqno}")),
                cas: 1000 + seqno,
                time: now,
                kind: MutationKind::Set {
                    value: value(seqno),
                    flags: 5,
                    exptime: 0,
                },
            };
            match ctx.engine.apply_replicated(0, &m) {
                Ok(()) => applied = seqno,
                Err(EngineError::OutOfMemory) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(applied > 2, "the quota holds a few values");
        // Persist everything, then let the pager eject clean values.
        let drained = ctx.engine.drain(1_000);
        ctx.store.as_ref().unwrap().write_batch(&drained).unwrap();
        ctx.engine.mark_persisted(0, applied);
        ctx.engine.run_pager(now);
        let ejected: Vec<u64> = (1..=applied)
            .filter(|i| {
                let key = format!("k{i}");
                matches!(
                    ctx.engine.get_replica(0, key.as_bytes(), now),
                    Ok(shoal_engine::Lookup::Ejected { .. })
                )
            })
            .collect();
        assert!(!ejected.is_empty(), "the pager ejected something");
        for i in ejected {
            let key = format!("k{i}");
            let hit = ctx.get_replica(0, key.as_bytes(), now).unwrap();
            assert_eq!(
                (hit.value, hit.flags, hit.cas, hit.seqno),
                (value(i), 5, 1000 + i, i)
            );
        }
        assert_eq!(
            ctx.get_replica(0, b"missing", now),
            Err(EngineError::NotFound)
        );
        assert_eq!(
            ctx.get_replica(1, b"k1", now),
            Err(EngineError::NotMyVbucket),
            "vbucket 1 is not a replica"
        );
    }
}
