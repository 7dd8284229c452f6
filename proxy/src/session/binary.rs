//! Binary clients: keyed requests are forwarded with the vbucket the map
//! gives and a proxy opaque, then answered with the client's opaque and
//! opcode; quiet semantics are applied here (the node always gets the
//! non-quiet opcode, so the proxy sees every outcome and can retry).
//! NOOP, VERSION, VERBOSITY and SASL are answered locally; FLUSH and STAT
//! go to every node; vbucket and replication opcodes are not the proxy's to
//! forward.

use bytes::{Bytes, BytesMut};
use shoal_protocol::binary::{
    encode_response, Opcode, Request, RequestHeader, ResponseFields, Status,
};

use super::ascii::merged_stats;
use super::call::{fan_out, keyed, CallError, Plain};
use super::{proxy_stats, Outcome, VERSION};
use crate::Shared;

/// Runs one binary request parsed from `frame`, appending its reply to `out`.
pub(super) async fn execute(
    shared: &Shared,
    frame: &Bytes,
    req: &Request,
    out: &mut BytesMut,
) -> Outcome {
    let h = &req.header;
    let base = h.opcode.non_quiet();
    let quiet = h.opcode.is_quiet();
    match base {
        Opcode::Get
        | Opcode::GetK
        | Opcode::Gat
        | Opcode::GatK
        | Opcode::Touch
        | Opcode::GetReplica
        | Opcode::Set
        | Opcode::Add
        | Opcode::Replace
        | Opcode::Append
        | Opcode::Prepend
        | Opcode::Delete
        | Opcode::Increment
        | Opcode::Decrement => {
            let key = req.key.of(frame);
            let request = Plain {
                opcode: base,
                cas: h.cas,
                extras: req.extras_span().of(frame),
                key,
                value: req.value.of(frame),
            };
            let read = matches!(
                base,
                Opcode::Get
                    | Opcode::GetK
                    | Opcode::Gat
                    | Opcode::GatK
                    | Opcode::Touch
                    | Opcode::GetReplica
            );
            match keyed(shared, key, &request, read).await {
                Ok(reply) => {
                    let status = reply.response.header.status;
                    let silent = quiet
                        && if read {
                            status == Status::KEY_NOT_FOUND
                        } else {
                            status == Status::OK
                        };
                    if !silent {
                        let fields = ResponseFields {
                            opcode: h.opcode,
                            status,
                            data_type: reply.response.header.data_type,
                            opaque: h.opaque,
                            cas: reply.response.header.cas,
                        };
                        let r = &reply.response;
                        let _ = encode_response(
                            out,
                            &fields,
                            r.extras.of(&reply.frame),
                            r.key.of(&reply.frame),
                            r.value.of(&reply.frame),
                        );
                    }
                }
                Err(e) => call_error(shared, out, h, e),
            }
        }
        Opcode::Noop => local(out, h, Status::OK, &[], &[]),
        Opcode::Version => local(out, h, Status::OK, &[], VERSION.as_bytes()),
        Opcode::Verbosity => local(out, h, Status::OK, &[], &[]),
        Opcode::SaslListMechs => local(out, h, Status::OK, &[], b"PLAIN"),
        Opcode::SaslAuth | Opcode::SaslStep => local(out, h, Status::OK, &[], b"Authenticated"),
        Opcode::Flush => {
            let request = Plain {
                opcode: Opcode::Flush,
                cas: 0,
                extras: req.extras_span().of(frame),
                key: &[],
                value: &[],
            };
            let ok = fan_out(shared, &request).await.iter().all(|r| {
                r.as_ref().is_ok_and(|frames| {
                    frames
                        .iter()
                        .all(|f| f.response.header.status == Status::OK)
                })
            });
            match (ok, quiet) {
                (true, true) => {}
                (true, false) => local(out, h, Status::OK, &[], &[]),
                (false, _) => status_reply(shared, out, h, Status::TEMPORARY_FAILURE),
            }
        }
        Opcode::Stat => {
            let group = req.key.of(frame);
            let stats: Vec<(Vec<u8>, Vec<u8>)> = if group == b"proxy" {
                proxy_stats(shared)
                    .into_iter()
                    .map(|(n, v)| (n.into_bytes(), v.into_bytes()))
                    .collect()
            } else {
                let request = Plain {
                    opcode: Opcode::Stat,
                    cas: 0,
                    extras: &[],
                    key: group,
                    value: &[],
                };
                merged_stats(fan_out(shared, &request).await)
            };
            for (name, value) in stats {
                local(out, h, Status::OK, &name, &value);
            }
            local(out, h, Status::OK, &[], &[]);
        }
        Opcode::Quit => {
            local(out, h, Status::OK, &[], &[]);
            return Outcome::Close;
        }
        Opcode::QuitQ => return Outcome::Close,
        Opcode::Other(_) => status_reply(shared, out, h, Status::UNKNOWN_COMMAND),
        _ => status_reply(shared, out, h, Status::NOT_SUPPORTED),
    }
    Outcome::Continue
}

/// A reply made by the proxy itself.
fn local(out: &mut BytesMut, h: &RequestHeader, status: Status, key: &[u8], value: &[u8]) {
    let _ = encode_response(out, &ResponseFields::reply_to(h, status), &[], key, value);
}

fn status_reply(shared: &Shared, out: &mut BytesMut, h: &RequestHeader, status: Status) {
    if status != Status::UNKNOWN_COMMAND && status != Status::NOT_SUPPORTED {
        shared
            .stats
            .errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    local(out, h, status, &[], status.message().as_bytes());
}

fn call_error(shared: &Shared, out: &mut BytesMut, h: &RequestHeader, e: CallError) {
    match e {
        CallError::Unavailable => status_reply(shared, out, h, Status::TEMPORARY_FAILURE),
        // Not "temporary failure": a client would retry it, and the write
        // may already have been applied.
        CallError::OutcomeUnknown => {
            shared
                .stats
                .errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            local(
                out,
                h,
                Status::INTERNAL_ERROR,
                &[],
                b"Outcome unknown: connection to node lost",
            );
        }
    }
}
