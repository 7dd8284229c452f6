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
//! Bucket selection, as Couchbase does it: SASL PLAIN authenticates as a
//! user named like the bucket, SELECT_BUCKET names the bucket. Without a
//! bucket, every command that needs one answers NO_BUCKET (0x08).

use bytes::{Bytes, BytesMut};
use shoal_protocol::binary::{
    counter_value, encode_response, flags_extras, vbucket_state_value, Extras, Opcode, Request,
    RequestHeader, ResponseFields, Status, VbucketState as WireState,
};

use super::connection::Session;
use super::stats;
use super::Flow;
use crate::bucket::{BucketKind, LiveBucket};
use crate::version::VERSION;
use shoal_engine::{
    resolve_exptime, ArithCreate, ArithOp, ArithRequest, EngineError, Hit, StoreMode, StoreRequest,
    VbucketState,
};

/// The one SASL mechanism offered.
const PLAIN: &[u8] = b"PLAIN";

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
        Opcode::Noop | Opcode::Verbosity => {
            reply(out, h, Status::OK, 0, &[], &[], &[]);
            Flow::Read
        }
        Opcode::Version => {
            reply(out, h, Status::OK, 0, &[], &[], VERSION.as_bytes());
            Flow::Read
        }
        Opcode::Quit => {
            reply(out, h, Status::OK, 0, &[], &[], &[]);
            Flow::Close
        }
        Opcode::QuitQ => Flow::Close,
        Opcode::SaslListMechs => {
            reply(out, h, Status::OK, 0, &[], &[], PLAIN);
            Flow::Read
        }
        Opcode::SaslAuth => {
            // No security yet: the password is not checked. The user names
            // the bucket (Couchbase's per-bucket SASL, which moxi and the
            // old smart clients rely on); an unknown one is an auth error
            // and leaves the selection as it was.
            let user = (req.key.of(frame) == PLAIN)
                .then(|| plain_user(req.value.of(frame)))
                .flatten();
            match user {
                Some(user) if session.select(user) => {
                    reply(out, h, Status::OK, 0, &[], &[], b"Authenticated")
                }
                _ => status_reply(out, h, Status::AUTH_ERROR),
            }
            Flow::Read
        }
        // PLAIN completes in one step: there is nothing to continue.
        Opcode::SaslStep => {
            status_reply(out, h, Status::AUTH_ERROR);
            Flow::Read
        }
        Opcode::SelectBucket => {
            // Couchbase answers an unknown bucket "not found" and keeps the
            // connection on the bucket it had.
            if session.select(req.key.of(frame)) {
                reply(out, h, Status::OK, 0, &[], &[], &[]);
            } else {
                status_reply(out, h, Status::KEY_NOT_FOUND);
            }
            Flow::Read
        }
        Opcode::Other(_) => {
            status_reply(out, h, Status::UNKNOWN_COMMAND);
            Flow::Read
        }
        _ => match session.bucket() {
            Some(ctx) => execute_on(ctx, frame, req, out),
            None => {
                status_reply(out, h, Status::NO_BUCKET);
                Flow::Read
            }
        },
    }
}

/// The user of a SASL PLAIN message (`authzid NUL authcid NUL password`,
/// RFC 4616), if it is one.
fn plain_user(message: &[u8]) -> Option<&[u8]> {
    let mut parts = message.split(|&b| b == 0);
    let (_authzid, user, _password) = (parts.next()?, parts.next()?, parts.next()?);
    (parts.next().is_none() && !user.is_empty()).then_some(user)
}

/// Runs a command that needs a bucket on `ctx`.
fn execute_on(ctx: &LiveBucket, frame: &[u8], req: &Request, out: &mut BytesMut) -> Flow {
    let now = ctx.clock.now();
    let h = &req.header;
    let key = req.key.of(frame);
    let vb = ctx.route(h.vbucket, key);
    let quiet = h.opcode.is_quiet();
    match h.opcode {
        Opcode::Get | Opcode::GetQ | Opcode::GetK | Opcode::GetKQ => {
            let result = ctx.get(vb, key, now);
            retrieval_reply(out, h, key, result);
            Flow::Read
        }
        Opcode::Gat | Opcode::GatQ | Opcode::GatK | Opcode::GatKQ | Opcode::Touch => {
            let exptime = match req.extras {
                Extras::Touch { exptime } => resolve_exptime(exptime.0, now),
                _ => 0,
            };
            let result = ctx.with_resident(vb, key, now, || ctx.engine.gat(vb, key, exptime, now));
            retrieval_reply(out, h, key, result);
            Flow::Wrote
        }
        Opcode::GetReplica => {
            let result = ctx.get_replica(vb, key, now);
            retrieval_reply(out, h, key, result);
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
        | Opcode::PrependQ => {
            let (flags, exptime) = match req.extras {
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
            let store = StoreRequest {
                mode,
                // The one copy of a write: the item owns its bytes rather
                // than pinning the connection's read buffer.
                key: Bytes::copy_from_slice(key),
                value: Bytes::copy_from_slice(req.value.of(frame)),
                flags,
                exptime,
                cas: h.cas,
            };
            match ctx.with_resident(vb, key, now, || ctx.engine.store(vb, &store, now)) {
                Ok(m) if quiet => {
                    let _ = m;
                }
                Ok(m) => reply(out, h, Status::OK, m.cas, &[], &[], &[]),
                // memcached's binary protocol words a refused add or replace
                // by its cause (`complete_update_bin`): ADD on a present key
                // is "exists", REPLACE on a missing one is "not found";
                // only append/prepend say "not stored".
                Err(EngineError::NotStored) if mode == StoreMode::Add => {
                    status_reply(out, h, Status::KEY_EXISTS)
                }
                Err(EngineError::NotStored) if mode == StoreMode::Replace => {
                    status_reply(out, h, Status::KEY_NOT_FOUND)
                }
                Err(e) => error_reply(out, h, e),
            }
            Flow::Wrote
        }
        Opcode::Delete | Opcode::DeleteQ => {
            match ctx.engine.delete(vb, key, h.cas, now) {
                Ok(_) if quiet => {}
                // memcached answers a delete with CAS 0: the tombstone's CAS
                // is internal (replication), not a version a client can use.
                Ok(_) => reply(out, h, Status::OK, 0, &[], &[], &[]),
                Err(e) => error_reply(out, h, e),
            }
            Flow::Wrote
        }
        Opcode::Increment | Opcode::IncrementQ | Opcode::Decrement | Opcode::DecrementQ => {
            let (delta, initial, raw_exptime) = match req.extras {
                Extras::Arith {
                    delta,
                    initial,
                    exptime,
                } => (delta, initial, u32::try_from(exptime.0).unwrap_or(u32::MAX)),
                _ => (0, 0, u32::MAX),
            };
            let arith = ArithRequest {
                key: Bytes::copy_from_slice(key),
                op: match h.opcode.non_quiet() {
                    Opcode::Increment => ArithOp::Incr,
                    _ => ArithOp::Decr,
                },
                delta,
                create: ArithCreate::from_binary(initial, raw_exptime, now),
                cas: h.cas,
            };
            match ctx.with_resident(vb, key, now, || ctx.engine.arith(vb, &arith, now)) {
                Ok(_) if quiet => {}
                Ok(o) => reply(out, h, Status::OK, o.cas, &[], &[], &counter_value(o.value)),
                Err(e) => error_reply(out, h, e),
            }
            Flow::Wrote
        }
        Opcode::Flush | Opcode::FlushQ => {
            let deadline = match req.extras {
                Extras::Flush {
                    exptime: Some(exptime),
                } if exptime.0 > 0 => resolve_exptime(exptime.0, now),
                _ => 0,
            };
            match ctx.flush_all(deadline, now) {
                Ok(()) if quiet => {}
                Ok(()) => reply(out, h, Status::OK, 0, &[], &[], &[]),
                Err(e) => error_reply(out, h, e),
            }
            Flow::Wrote
        }
        Opcode::Stat => {
            let known = stats::write(ctx, key, |name, value| {
                reply(
                    out,
                    h,
                    Status::OK,
                    0,
                    &[],
                    name.as_bytes(),
                    value.as_bytes(),
                );
            });
            if known {
                reply(out, h, Status::OK, 0, &[], &[], &[]);
            } else {
                status_reply(out, h, Status::KEY_NOT_FOUND);
            }
            Flow::Read
        }
        // A memcached bucket's one vbucket is always active: there is
        // nothing for the cluster manager to move.
        Opcode::SetVbucket | Opcode::DelVbucket if ctx.kind == BucketKind::Memcached => {
            status_reply(out, h, Status::NOT_SUPPORTED);
            Flow::Read
        }
        Opcode::SetVbucket => {
            let state = match req.extras {
                Extras::SetVbucket { state } => engine_state(state),
                _ => None,
            };
            match state {
                Some(state) => match ctx.set_vbucket_state(h.vbucket, state) {
                    Ok(()) => reply(out, h, Status::OK, 0, &[], &[], &[]),
                    Err(e) => error_reply(out, h, e),
                },
                None => status_reply(out, h, Status::INVALID_ARGUMENTS),
            }
            Flow::Read
        }
        Opcode::GetVbucket => {
            match ctx.engine.vbucket_state(h.vbucket) {
                Some(state) => {
                    let wire = WireState::from_u32(state.to_wire()).unwrap_or(WireState::Dead);
                    reply(out, h, Status::OK, 0, &[], &[], &vbucket_state_value(wire));
                }
                None => status_reply(out, h, Status::NOT_MY_VBUCKET),
            }
            Flow::Read
        }
        Opcode::DelVbucket => {
            match ctx.delete_vbucket(h.vbucket) {
                Ok(()) => reply(out, h, Status::OK, 0, &[], &[], &[]),
                Err(e) => error_reply(out, h, e),
            }
            Flow::Read
        }
        _ => {
            status_reply(out, h, Status::NOT_SUPPORTED);
            Flow::Read
        }
    }
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
            reply(out, h, Status::OK, hit.cas, &extras, key, value);
        }
        Err(EngineError::NotFound) if h.opcode.is_quiet() => {}
        Err(EngineError::NotFound) if op.reply_has_key() => {
            // memcached's GETK miss carries the key (and no message) so a
            // pipelining client can tell which request missed.
            reply(out, h, Status::KEY_NOT_FOUND, 0, &[], key, &[]);
        }
        Err(e) => error_reply(out, h, e),
    }
}

fn engine_state(state: WireState) -> Option<VbucketState> {
    VbucketState::from_wire(state.to_u32())
}

/// The status for an engine refusal.
pub(super) fn status_of(e: EngineError) -> Status {
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

fn error_reply(out: &mut BytesMut, h: &RequestHeader, e: EngineError) {
    status_reply(out, h, status_of(e));
}

/// An error reply with memcached's message as its body.
fn status_reply(out: &mut BytesMut, h: &RequestHeader, status: Status) {
    reply(out, h, status, 0, &[], &[], status.message().as_bytes());
}

fn reply(
    out: &mut BytesMut,
    h: &RequestHeader,
    status: Status,
    cas: u64,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
) {
    let fields = ResponseFields {
        cas,
        ..ResponseFields::reply_to(h, status)
    };
    // Cannot fail: keys, extras and values here are bounded by the parser's
    // limits, far inside the header's length fields.
    if encode_response(out, &fields, extras, key, value).is_err() {
        tracing::error!(opcode = %h.opcode, "reply too large to encode");
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

    #[test]
    fn plain_messages() {
        assert_eq!(plain_user(b"\0b1\0secret"), Some(&b"b1"[..]));
        assert_eq!(plain_user(b"admin\0b1\0"), Some(&b"b1"[..]));
        assert_eq!(plain_user(b"\0\0pw"), None, "no user");
        assert_eq!(plain_user(b"b1"), None);
        assert_eq!(plain_user(b"\0b1"), None, "no password field");
        assert_eq!(plain_user(b"\0b1\0pw\0more"), None);
    }
}
