//! Classic ASCII clients: each command becomes binary requests to the
//! owning nodes, and the nodes' binary replies become memcached's text
//! replies.
//!
//! `noreply` commands are still sent non-quiet downstream, so the proxy
//! sees errors and retries them like any other request; only the reply to
//! the client is suppressed. `flush_all` and `verbosity` go to every node;
//! `stats` sums the nodes' numeric stats (as moxi did) and `stats proxy`
//! answers the proxy's own; `version` is answered locally.

use std::sync::atomic::Ordering;

use bytes::{BufMut, Bytes, BytesMut};
use fxhash::FxHashMap;
use shoal_protocol::ascii::{encode_number, encode_value, ArithVerb, Command, GetVerb, StoreVerb};
use shoal_protocol::binary::extras::ARITH_NO_CREATE;
use shoal_protocol::binary::{
    arith_extras, exptime_to_wire, store_extras, touch_extras, Decoded, Opcode, Status,
};
use shoal_protocol::Exptime;

use super::call::{fan_out, get_one, keyed, multi_get, CallError, KeyResult, Plain};
use super::{proxy_stats, Outcome, VERSION};
use crate::Shared;

/// Largest reply one `get` may build: replies are buffered whole before
/// they are written, so this bounds what one request can make the proxy hold.
const MAX_GET_REPLY: usize = 64 * 1024 * 1024;

/// Runs one ASCII command parsed from `frame`, appending its reply to `out`.
pub(super) async fn execute(
    shared: &Shared,
    frame: &Bytes,
    cmd: &Command,
    out: &mut BytesMut,
) -> Outcome {
    match cmd {
        Command::Get(get) => {
            let keys: Vec<&[u8]> = get.keys(frame).map(|s| s.of(frame)).collect();
            let (quiet_opcode, extras) = match get.verb {
                GetVerb::Get | GetVerb::Gets => (Opcode::GetKQ, None),
                GetVerb::Gat { exptime } | GetVerb::Gats { exptime } => {
                    (Opcode::GatKQ, Some(touch_extras(exptime)))
                }
            };
            let extras = extras.as_ref().map_or(&[][..], |e| &e[..]);
            // A single key skips the grouping.
            let results = match keys[..] {
                [key] => vec![get_one(shared, key, quiet_opcode.non_quiet(), extras).await],
                _ => multi_get(shared, &keys, quiet_opcode, extras).await,
            };
            let with_cas = get.verb.returns_cas();
            let failed = results.iter().any(|r| matches!(r, KeyResult::Failed(_)));
            // Leaving out the keys that failed is only honest when some
            // key got an answer: a get whose every key failed (a
            // single-key get of a down node) would read as a miss.
            let all_failed = results.iter().all(|r| matches!(r, KeyResult::Failed(_)));
            if failed && (shared.config.strict_multiget || all_failed) {
                shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                out.put_slice(b"SERVER_ERROR temporary failure\r\n");
                return Outcome::Continue;
            }
            // Room for the whole reply at once: a hit takes its key, its
            // value and at most 63 more bytes (`VALUE`, flags, length and
            // CAS, spaces, two CRLFs).
            let start = out.len();
            let hits_len: usize = results
                .iter()
                .zip(&keys)
                .map(|(r, key)| match r {
                    KeyResult::Hit(reply) => key.len() + reply.response.value.len() + 63,
                    _ => 0,
                })
                .sum();
            out.reserve(hits_len.saturating_add(5).min(MAX_GET_REPLY));
            for (key, result) in keys.iter().zip(&results) {
                match result {
                    KeyResult::Hit(reply)
                        if out.len() - start + reply.frame.len() > MAX_GET_REPLY =>
                    {
                        // One short line naming a large value many times must
                        // not make the proxy buffer without bound (memcached's
                        // answer when it cannot build a reply).
                        out.truncate(start);
                        out.put_slice(b"SERVER_ERROR out of memory writing get response\r\n");
                        return Outcome::Continue;
                    }
                    KeyResult::Hit(reply) => {
                        let flags = match reply.response.decoded {
                            Decoded::Flags(f) => f,
                            _ => 0,
                        };
                        let cas = with_cas.then_some(reply.response.header.cas);
                        encode_value(out, key, flags, reply.response.value.of(&reply.frame), cas);
                    }
                    KeyResult::Miss => {}
                    KeyResult::Failed(e) => {
                        shared
                            .stats
                            .multiget_missing_keys
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(key = %String::from_utf8_lossy(key), error = %e, "multi-get key left out");
                    }
                }
            }
            out.put_slice(b"END\r\n");
        }
        Command::Store(store) => {
            let key = store.key.of(frame);
            let (opcode, cas) = match store.verb {
                StoreVerb::Set => (Opcode::Set, 0),
                StoreVerb::Add => (Opcode::Add, 0),
                StoreVerb::Replace => (Opcode::Replace, 0),
                StoreVerb::Append => (Opcode::Append, 0),
                StoreVerb::Prepend => (Opcode::Prepend, 0),
                // A cas of 0 would mean "no compare" on the wire; memcached
                // treats it as a value no item has.
                StoreVerb::Cas { unique } => {
                    (Opcode::Set, if unique == 0 { u64::MAX } else { unique })
                }
            };
            let extras = store_extras(store.flags, store.exptime);
            let append = matches!(store.verb, StoreVerb::Append | StoreVerb::Prepend);
            let request = Plain {
                opcode,
                cas,
                extras: if append { &[] } else { &extras },
                key,
                value: store.value.of(frame),
            };
            let result = keyed(shared, key, &request, false).await;
            if !store.noreply {
                store_reply(shared, out, store.verb, result);
            }
        }
        Command::Delete(delete) => {
            let key = delete.key.of(frame);
            let request = Plain {
                opcode: Opcode::Delete,
                cas: 0,
                extras: &[],
                key,
                value: &[],
            };
            let result = keyed(shared, key, &request, false).await;
            if !delete.noreply {
                simple_reply(shared, out, result, b"DELETED\r\n");
            }
        }
        Command::Arith(arith) => {
            let key = arith.key.of(frame);
            let extras = arith_extras(arith.delta, 0, Exptime(i64::from(ARITH_NO_CREATE)));
            let request = Plain {
                opcode: match arith.verb {
                    ArithVerb::Incr => Opcode::Increment,
                    ArithVerb::Decr => Opcode::Decrement,
                },
                cas: 0,
                extras: &extras,
                key,
                value: &[],
            };
            let result = keyed(shared, key, &request, false).await;
            if !arith.noreply {
                match result {
                    Ok(reply) if reply.response.header.status == Status::OK => {
                        match reply.response.decoded {
                            Decoded::Counter(n) => encode_number(out, n),
                            _ => out.put_slice(b"SERVER_ERROR bad reply from node\r\n"),
                        }
                    }
                    other => simple_reply(shared, out, other, b""),
                }
            }
        }
        Command::Touch(touch) => {
            let key = touch.key.of(frame);
            let extras = touch_extras(touch.exptime);
            let request = Plain {
                opcode: Opcode::Touch,
                cas: 0,
                extras: &extras,
                key,
                value: &[],
            };
            let result = keyed(shared, key, &request, true).await;
            if !touch.noreply {
                simple_reply(shared, out, result, b"TOUCHED\r\n");
            }
        }
        Command::FlushAll(flush) => {
            let wire = exptime_to_wire(flush.delay);
            let extras = wire.to_be_bytes();
            let request = Plain {
                opcode: Opcode::Flush,
                cas: 0,
                extras: if wire == 0 { &[] } else { &extras },
                key: &[],
                value: &[],
            };
            let ok = all_ok(fan_out(shared, &request).await);
            if !flush.noreply {
                out.put_slice(if ok {
                    b"OK\r\n"
                } else {
                    b"SERVER_ERROR temporary failure\r\n"
                });
            }
        }
        Command::Verbosity(v) => {
            let extras = v.level.to_be_bytes();
            let request = Plain {
                opcode: Opcode::Verbosity,
                cas: 0,
                extras: &extras,
                key: &[],
                value: &[],
            };
            let _ = fan_out(shared, &request).await;
            if !v.noreply {
                out.put_slice(b"OK\r\n");
            }
        }
        Command::Stats(s) => {
            let group = s
                .args(frame)
                .next()
                .map(|span| span.of(frame))
                .unwrap_or(b"");
            if group == b"proxy" {
                for (name, value) in proxy_stats(shared) {
                    stat_line(out, name.as_bytes(), value.as_bytes());
                }
            } else {
                let request = Plain {
                    opcode: Opcode::Stat,
                    cas: 0,
                    extras: &[],
                    key: group,
                    value: &[],
                };
                for (name, value) in merged_stats(fan_out(shared, &request).await) {
                    stat_line(out, &name, &value);
                }
            }
            out.put_slice(b"END\r\n");
        }
        Command::Version => {
            out.put_slice(b"VERSION ");
            out.put_slice(VERSION.as_bytes());
            out.put_slice(b"\r\n");
        }
        Command::Quit => return Outcome::Close,
    }
    Outcome::Continue
}

fn stat_line(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(b"STAT ");
    out.put_slice(name);
    out.put_u8(b' ');
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Sums numeric stats across nodes (moxi's merge); a non-numeric stat keeps
/// the first node's value. Order: first appearance.
pub(super) fn merged_stats(
    replies: Vec<Result<Vec<crate::downstream::Reply>, crate::downstream::DownstreamError>>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut order: Vec<Vec<u8>> = Vec::new();
    let mut values: FxHashMap<Vec<u8>, Vec<u8>> = FxHashMap::default();
    for node in replies.into_iter().flatten() {
        for reply in node {
            let name = reply.key();
            if name.is_empty() || reply.response.header.status != Status::OK {
                continue;
            }
            let value = reply.response.value.of(&reply.frame);
            match values.get_mut(name) {
                Some(held) => {
                    let sum = std::str::from_utf8(held)
                        .ok()
                        .and_then(|h| h.parse::<u64>().ok())
                        .zip(
                            std::str::from_utf8(value)
                                .ok()
                                .and_then(|v| v.parse::<u64>().ok()),
                        );
                    if let Some((a, b)) = sum {
                        *held = a.saturating_add(b).to_string().into_bytes();
                    }
                }
                None => {
                    order.push(name.to_vec());
                    values.insert(name.to_vec(), value.to_vec());
                }
            }
        }
    }
    order
        .into_iter()
        .map(|name| {
            let value = values.remove(&name).unwrap_or_default();
            (name, value)
        })
        .collect()
}

fn all_ok(
    replies: Vec<Result<Vec<crate::downstream::Reply>, crate::downstream::DownstreamError>>,
) -> bool {
    replies.iter().all(|r| {
        r.as_ref()
            .map(|frames| {
                frames
                    .iter()
                    .all(|f| f.response.header.status == Status::OK)
            })
            .unwrap_or(false)
    })
}

/// The reply to a storage command.
fn store_reply(
    shared: &Shared,
    out: &mut BytesMut,
    verb: StoreVerb,
    result: Result<crate::downstream::Reply, CallError>,
) {
    let status = match &result {
        Ok(reply) => reply.response.header.status,
        Err(_) => return call_error(shared, out, result.err()),
    };
    match (status, verb) {
        (Status::OK, _) => out.put_slice(b"STORED\r\n"),
        (Status::KEY_EXISTS, StoreVerb::Cas { .. } | StoreVerb::Set) => {
            out.put_slice(b"EXISTS\r\n")
        }
        (Status::KEY_NOT_FOUND, StoreVerb::Cas { .. }) => out.put_slice(b"NOT_FOUND\r\n"),
        (Status::KEY_EXISTS | Status::KEY_NOT_FOUND | Status::NOT_STORED, _) => {
            out.put_slice(b"NOT_STORED\r\n")
        }
        (other, _) => status_error(shared, out, other),
    }
}

/// The reply to delete/touch/incr/decr: `ok` on success, memcached's line
/// for each failure.
fn simple_reply(
    shared: &Shared,
    out: &mut BytesMut,
    result: Result<crate::downstream::Reply, CallError>,
    ok: &[u8],
) {
    match result {
        Ok(reply) => match reply.response.header.status {
            Status::OK => out.put_slice(ok),
            Status::KEY_NOT_FOUND => out.put_slice(b"NOT_FOUND\r\n"),
            other => status_error(shared, out, other),
        },
        Err(e) => call_error(shared, out, Some(e)),
    }
}

fn status_error(shared: &Shared, out: &mut BytesMut, status: Status) {
    let line: &[u8] = match status {
        Status::NON_NUMERIC => b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
        Status::TOO_LARGE => b"SERVER_ERROR object too large for cache\r\n",
        Status::OUT_OF_MEMORY => b"SERVER_ERROR out of memory storing object\r\n",
        Status::INVALID_ARGUMENTS => b"CLIENT_ERROR bad command line format\r\n",
        Status::KEY_EXISTS => b"EXISTS\r\n",
        Status::NOT_STORED => b"NOT_STORED\r\n",
        _ => {
            shared.stats.errors.fetch_add(1, Ordering::Relaxed);
            b"SERVER_ERROR temporary failure\r\n"
        }
    };
    out.put_slice(line);
}

fn call_error(shared: &Shared, out: &mut BytesMut, e: Option<CallError>) {
    shared.stats.errors.fetch_add(1, Ordering::Relaxed);
    match e {
        Some(CallError::OutcomeUnknown) => {
            out.put_slice(b"SERVER_ERROR outcome unknown: connection to node lost\r\n")
        }
        _ => out.put_slice(b"SERVER_ERROR temporary failure\r\n"),
    }
}
