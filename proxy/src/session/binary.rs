//! Binary clients: keyed requests are forwarded with the vbucket the map
//! gives and a proxy opaque, then answered with the client's opaque and
//! opcode; quiet semantics are applied here (the node always gets the
//! non-quiet opcode, so the proxy sees every outcome and can retry).
//! NOOP, VERSION, VERBOSITY and SASL are answered locally; FLUSH and STAT
//! go to every node; vbucket and replication opcodes are not the proxy's to
//! forward.

use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use shoal_protocol::binary::{
    encode_response, Opcode, Request, RequestHeader, ResponseFields, Status,
};

use super::call::{check_login, flush_all, keyed, CallError, Flushed, Plain};
use super::{report, Outcome, VERSION};
use crate::downstream::Reply;
use crate::shared::Shared;

/// What a keyed request does to its item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Reads it (or only refreshes its TTL): idempotent, so it may be sent
    /// again after a lost connection; quiet, it is silent on a miss.
    Read,
    /// Changes it: never sent twice; quiet, it is silent on success.
    Write,
}

/// Runs one binary request parsed from `frame`, appending its reply to `out`.
pub(super) async fn execute(
    shared: &Shared,
    frame: &Bytes,
    req: &Request,
    out: &mut BytesMut,
) -> Outcome {
    let h = &req.header;
    if h.opcode == Opcode::QuitQ {
        // memcached closes without a reply.
        return Outcome::Close;
    }
    match h.opcode.non_quiet() {
        Opcode::Get
        | Opcode::GetK
        | Opcode::Gat
        | Opcode::GatK
        | Opcode::Touch
        | Opcode::GetReplica => forward(shared, frame, req, Access::Read, out).await,
        Opcode::Set
        | Opcode::Add
        | Opcode::Replace
        | Opcode::Append
        | Opcode::Prepend
        | Opcode::Delete
        | Opcode::Increment
        | Opcode::Decrement => forward(shared, frame, req, Access::Write, out).await,
        Opcode::Noop => local(out, h, Status::OK, &[], &[]),
        Opcode::Version => local(out, h, Status::OK, &[], VERSION.as_bytes()),
        Opcode::Verbosity => local(out, h, Status::OK, &[], &[]),
        // The proxy checks PLAIN logins against the cluster; SCRAM would
        // need the password, which only the nodes can verify.
        Opcode::SaslListMechs => local(out, h, Status::OK, &[], b"PLAIN"),
        Opcode::SaslAuth => sasl_plain(shared, frame, req, out).await,
        Opcode::SaslStep => status_reply(shared, out, h, Status::AUTH_ERROR),
        Opcode::Flush => flush(shared, frame, req, out).await,
        Opcode::Stat => match report::stats(shared, req.key.of(frame)).await {
            Ok(stats) => {
                for (name, value) in stats {
                    local(out, h, Status::OK, &name, &value);
                }
                local(out, h, Status::OK, &[], &[]);
            }
            Err(status) => status_reply(shared, out, h, status),
        },
        Opcode::Quit => {
            local(out, h, Status::OK, &[], &[]);
            return Outcome::Close;
        }
        Opcode::Other(_) => status_reply(shared, out, h, Status::UNKNOWN_COMMAND),
        _ => status_reply(shared, out, h, Status::NOT_SUPPORTED),
    }
    Outcome::Continue
}

/// A keyed request: sent non-quiet to the key's node, its reply relayed
/// under the client's opcode and opaque unless the quiet opcode the client
/// used asks for silence.
async fn forward(
    shared: &Shared,
    frame: &Bytes,
    req: &Request,
    access: Access,
    out: &mut BytesMut,
) {
    let h = &req.header;
    let key = req.key.of(frame);
    let request = Plain {
        opcode: h.opcode.non_quiet(),
        cas: h.cas,
        extras: req.extras_span().of(frame),
        key,
        value: req.value.of(frame),
    };
    let reply = match keyed(shared, key, &request, access == Access::Read).await {
        Ok(reply) => reply,
        Err(e) => return call_error(shared, out, h, e),
    };
    let status = reply.response.header.status;
    let silent = h.opcode.is_quiet()
        && match access {
            Access::Read => status == Status::KEY_NOT_FOUND,
            Access::Write => status == Status::OK,
        };
    if !silent {
        relay(out, h, &reply);
    }
}

/// `reply` from a node, as the answer to the client's request `h`.
fn relay(out: &mut BytesMut, h: &RequestHeader, reply: &Reply) {
    let r = &reply.response;
    let fields = ResponseFields {
        opcode: h.opcode,
        status: r.header.status,
        data_type: r.header.data_type,
        opaque: h.opaque,
        cas: r.header.cas,
    };
    let _ = encode_response(
        out,
        &fields,
        r.extras.of(&reply.frame),
        r.key.of(&reply.frame),
        r.value.of(&reply.frame),
    );
}

/// FLUSH (FLUSHQ): every node; quiet, it is silent on success.
async fn flush(shared: &Shared, frame: &Bytes, req: &Request, out: &mut BytesMut) {
    let h = &req.header;
    match flush_all(shared, req.extras_span().of(frame)).await {
        Flushed::All if h.opcode.is_quiet() => {}
        Flushed::All => local(out, h, Status::OK, &[], &[]),
        Flushed::NotAllowed => status_reply(shared, out, h, Status::NOT_SUPPORTED),
        Flushed::Failed => status_reply(shared, out, h, Status::TEMPORARY_FAILURE),
    }
}

/// A reply made by the proxy itself.
fn local(out: &mut BytesMut, h: &RequestHeader, status: Status, key: &[u8], value: &[u8]) {
    let _ = encode_response(out, &ResponseFields::reply_to(h, status), &[], key, value);
}

fn status_reply(shared: &Shared, out: &mut BytesMut, h: &RequestHeader, status: Status) {
    if status != Status::UNKNOWN_COMMAND && status != Status::NOT_SUPPORTED {
        shared.stats.errors.fetch_add(1, Ordering::Relaxed);
    }
    local(out, h, status, &[], status.message().as_bytes());
}

fn call_error(shared: &Shared, out: &mut BytesMut, h: &RequestHeader, e: CallError) {
    match e {
        CallError::Unavailable => status_reply(shared, out, h, Status::TEMPORARY_FAILURE),
        // Not "temporary failure": a client would retry it, and the write
        // may already have been applied.
        CallError::OutcomeUnknown => {
            shared.stats.errors.fetch_add(1, Ordering::Relaxed);
            local(
                out,
                h,
                Status::INTERNAL_ERROR,
                &[],
                b"Outcome unknown: connection to node lost",
            );
        }
        CallError::CredentialsRefused => {
            shared.stats.errors.fetch_add(1, Ordering::Relaxed);
            local(
                out,
                h,
                Status::AUTH_ERROR,
                &[],
                b"The cluster refuses the proxy's bucket credentials",
            );
        }
    }
}

/// SASL_AUTH with PLAIN: answered OK only when a node of the cluster
/// accepts the credentials and lets them use the proxy's bucket, never
/// blindly. Any other mechanism, or no node to ask, is an auth error.
async fn sasl_plain(shared: &Shared, frame: &[u8], req: &Request, out: &mut BytesMut) {
    let h = &req.header;
    let accepted = req.key.of(frame) == b"PLAIN" && check_login(shared, req.value.of(frame)).await;
    if accepted {
        local(out, h, Status::OK, &[], b"Authenticated");
    } else {
        status_reply(shared, out, h, Status::AUTH_ERROR);
    }
}
