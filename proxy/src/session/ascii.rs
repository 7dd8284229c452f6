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
use shoal_protocol::ascii::{
    encode_number, encode_value, stats_detail_reply, Arith, ArithVerb, Command, Delete, FlushAll,
    Get, GetVerb, Stats, Store, StoreVerb, Touch, Verbosity,
};
use shoal_protocol::binary::extras::ARITH_NO_CREATE;
use shoal_protocol::binary::{
    arith_extras, exptime_to_wire, store_extras, touch_extras, Decoded, Opcode, Status,
};
use shoal_protocol::cas::compare_value;
use shoal_protocol::Exptime;

use super::call::{
    fan_out, flush_all, get_one, keyed, multi_get, CallError, Flushed, KeyResult, Plain,
};
use super::text::{call_error_line, refusal_line, TEMPORARY_FAILURE};
use super::{report, Outcome, VERSION};
use crate::downstream::Reply;
use crate::shared::Shared;

/// Largest reply one `get` may build: replies are buffered whole before
/// they are written, so this bounds what one request can make the proxy hold.
const MAX_GET_REPLY: usize = 64 * 1024 * 1024;

/// Keys fetched together when the session serves a long `get` in waves,
/// writing each wave's values before it fetches the next: what one `get`
/// makes the proxy hold is one wave's values, not the whole reply.
pub(super) const WAVE_KEYS: usize = 64;

/// Runs one ASCII command parsed from `frame`, appending its reply to `out`.
pub(super) async fn execute(
    shared: &Shared,
    frame: &Bytes,
    cmd: &Command,
    out: &mut BytesMut,
) -> Outcome {
    match cmd {
        Command::Get(cmd) => get(shared, frame, cmd, out).await,
        Command::Store(cmd) => store(shared, frame, cmd, out).await,
        Command::Delete(cmd) => delete(shared, frame, cmd, out).await,
        Command::Arith(cmd) => arith(shared, frame, cmd, out).await,
        Command::Touch(cmd) => touch(shared, frame, cmd, out).await,
        Command::FlushAll(cmd) => flush(shared, cmd, out).await,
        Command::Verbosity(cmd) => verbosity(shared, cmd, out).await,
        Command::Stats(cmd) => stats(shared, frame, cmd, out).await,
        Command::Version => {
            out.put_slice(b"VERSION ");
            out.put_slice(VERSION.as_bytes());
            out.put_slice(b"\r\n");
        }
        Command::Quit => return Outcome::Close,
    }
    Outcome::Continue
}

// === retrieval ===

/// `get`, `gets`, `gat`, `gats`: every key's value, in the client's order.
async fn get(shared: &Shared, frame: &Bytes, get: &Get, out: &mut BytesMut) {
    let keys: Vec<&[u8]> = get.keys(frame).map(|s| s.of(frame)).collect();
    let results = fetch(shared, &keys, get.verb).await;
    let failed = results.iter().any(|r| matches!(r, KeyResult::Failed(_)));
    // Leaving out the keys that failed is only honest when some key got an
    // answer: a get whose every key failed (a single-key get of a down
    // node) would read as a miss.
    let all_failed = results.iter().all(|r| matches!(r, KeyResult::Failed(_)));
    if failed && (shared.config.strict_multiget || all_failed) {
        shared.stats.errors.fetch_add(1, Ordering::Relaxed);
        out.put_slice(TEMPORARY_FAILURE);
        return;
    }
    if write_values(shared, out, &keys, &results, get.verb.returns_cas()) {
        out.put_slice(b"END\r\n");
    }
}

/// A long `get` as a series of waves: the keys of one wave
/// (`WAVE_KEYS` at most), their `VALUE` blocks appended to `out`, `END`
/// after the `last`. Keys that fail are left out and counted, as in a
/// lenient multi-get, unless every key of the first wave failed; with
/// strict multi-gets any failure ends the reply with an error line (the
/// values before it are already on their way). Returns false once the
/// reply has ended.
pub(super) async fn get_wave(
    shared: &Shared,
    get: &Get,
    keys: &[&[u8]],
    (first, last): (bool, bool),
    out: &mut BytesMut,
) -> bool {
    let results = fetch(shared, keys, get.verb).await;
    let failed = results.iter().any(|r| matches!(r, KeyResult::Failed(_)));
    let all_failed = results.iter().all(|r| matches!(r, KeyResult::Failed(_)));
    if failed && (shared.config.strict_multiget || (first && all_failed)) {
        shared.stats.errors.fetch_add(1, Ordering::Relaxed);
        out.put_slice(TEMPORARY_FAILURE);
        return false;
    }
    if !write_values(shared, out, keys, &results, get.verb.returns_cas()) {
        return false;
    }
    if last {
        out.put_slice(b"END\r\n");
    }
    !last
}

/// Fetches `keys` with the opcode `verb` needs (GAT and the new TTL for
/// `gat`/`gats`). A single key skips the grouping.
async fn fetch(shared: &Shared, keys: &[&[u8]], verb: GetVerb) -> Vec<KeyResult> {
    let (quiet_opcode, extras) = match verb {
        GetVerb::Get | GetVerb::Gets => (Opcode::GetKQ, None),
        GetVerb::Gat { exptime } | GetVerb::Gats { exptime } => {
            (Opcode::GatKQ, Some(touch_extras(exptime)))
        }
    };
    let extras = extras.as_ref().map_or(&[][..], |e| &e[..]);
    match keys {
        [key] => vec![get_one(shared, key, quiet_opcode.non_quiet(), extras).await],
        _ => multi_get(shared, keys, quiet_opcode, extras).await,
    }
}

/// A `VALUE` block per hit; keys that failed are left out and counted.
/// False when the values were too large to buffer and an error line took
/// their place.
fn write_values(
    shared: &Shared,
    out: &mut BytesMut,
    keys: &[&[u8]],
    results: &[KeyResult],
    with_cas: bool,
) -> bool {
    // Room for the whole reply at once: a hit takes its key, its value and
    // at most 63 more bytes (`VALUE`, flags, length and CAS, spaces, two
    // CRLFs).
    let start = out.len();
    let hits_len: usize = results
        .iter()
        .zip(keys)
        .map(|(r, key)| match r {
            KeyResult::Hit(reply) => key.len() + reply.response.value.len() + 63,
            _ => 0,
        })
        .sum();
    out.reserve(hits_len.saturating_add(5).min(MAX_GET_REPLY));
    for (key, result) in keys.iter().zip(results) {
        match result {
            KeyResult::Hit(reply) if out.len() - start + reply.frame.len() > MAX_GET_REPLY => {
                // One short line naming a large value many times must not
                // make the proxy buffer without bound (memcached's answer
                // when it cannot build a reply).
                out.truncate(start);
                out.put_slice(b"SERVER_ERROR out of memory writing get response\r\n");
                return false;
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
    true
}

// === storage ===

/// `set`, `add`, `replace`, `append`, `prepend`, `cas`.
async fn store(shared: &Shared, frame: &Bytes, store: &Store, out: &mut BytesMut) {
    let key = store.key.of(frame);
    let (opcode, cas) = match store.verb {
        StoreVerb::Set => (Opcode::Set, 0),
        StoreVerb::Add => (Opcode::Add, 0),
        StoreVerb::Replace => (Opcode::Replace, 0),
        StoreVerb::Append => (Opcode::Append, 0),
        StoreVerb::Prepend => (Opcode::Prepend, 0),
        StoreVerb::Cas { unique } => (Opcode::Set, compare_value(Some(unique))),
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

// === arithmetic ===

/// `incr`, `decr`: the new value. A missing key is not created.
async fn arith(shared: &Shared, frame: &Bytes, arith: &Arith, out: &mut BytesMut) {
    let key = arith.key.of(frame);
    let extras = arith_extras(arith.delta, 0, Exptime(i64::from(ARITH_NO_CREATE)));
    let opcode = match arith.verb {
        ArithVerb::Incr => Opcode::Increment,
        ArithVerb::Decr => Opcode::Decrement,
    };
    let result = keyed(shared, key, &Plain::new(opcode, key, &extras), false).await;
    if arith.noreply {
        return;
    }
    match result {
        Ok(reply) if reply.response.header.status == Status::OK => match reply.response.decoded {
            Decoded::Counter(n) => encode_number(out, n),
            _ => out.put_slice(b"SERVER_ERROR bad reply from node\r\n"),
        },
        other => simple_reply(shared, out, other, b""),
    }
}

// === delete and touch ===

/// `delete`.
async fn delete(shared: &Shared, frame: &Bytes, delete: &Delete, out: &mut BytesMut) {
    let key = delete.key.of(frame);
    let request = Plain::new(Opcode::Delete, key, &[]);
    let result = keyed(shared, key, &request, false).await;
    if !delete.noreply {
        simple_reply(shared, out, result, b"DELETED\r\n");
    }
}

/// `touch`: a new TTL; idempotent, so it may be sent again after a lost
/// connection.
async fn touch(shared: &Shared, frame: &Bytes, touch: &Touch, out: &mut BytesMut) {
    let key = touch.key.of(frame);
    let extras = touch_extras(touch.exptime);
    let request = Plain::new(Opcode::Touch, key, &extras);
    let result = keyed(shared, key, &request, true).await;
    if !touch.noreply {
        simple_reply(shared, out, result, b"TOUCHED\r\n");
    }
}

// === every node: flush_all, verbosity, stats ===

/// `flush_all`: every node, with the delay if one was given.
async fn flush(shared: &Shared, flush: &FlushAll, out: &mut BytesMut) {
    let wire = exptime_to_wire(flush.delay);
    let delay = wire.to_be_bytes();
    let flushed = flush_all(shared, if wire == 0 { &[] } else { &delay }).await;
    if !flush.noreply {
        out.put_slice(match flushed {
            Flushed::All => b"OK\r\n",
            Flushed::NotAllowed => b"CLIENT_ERROR flush_all not allowed\r\n",
            Flushed::Failed => TEMPORARY_FAILURE,
        });
    }
}

/// `verbosity`: every node; `OK` whatever they answer.
async fn verbosity(shared: &Shared, verbosity: &Verbosity, out: &mut BytesMut) {
    let extras = verbosity.level.to_be_bytes();
    let _ = fan_out(shared, &Plain::new(Opcode::Verbosity, &[], &extras)).await;
    if !verbosity.noreply {
        out.put_slice(b"OK\r\n");
    }
}

/// `stats [group]`.
async fn stats(shared: &Shared, frame: &Bytes, stats: &Stats, out: &mut BytesMut) {
    let group = stats
        .args(frame)
        .next()
        .map(|span| span.of(frame))
        .unwrap_or(b"");
    if group == b"detail" {
        let sub = stats.args(frame).nth(1).map(|span| span.of(frame));
        out.put_slice(stats_detail_reply(sub));
        return;
    }
    match report::stats(shared, group).await {
        Ok(stats) => {
            for (name, value) in stats {
                stat_line(out, &name, &value);
            }
            out.put_slice(b"END\r\n");
        }
        // No node knows the group: memcached's answer to an unknown one.
        Err(_) => out.put_slice(b"ERROR\r\n"),
    }
}

// === replies ===

fn stat_line(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(b"STAT ");
    out.put_slice(name);
    out.put_u8(b' ');
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// The reply to a storage command.
fn store_reply(
    shared: &Shared,
    out: &mut BytesMut,
    verb: StoreVerb,
    result: Result<Reply, CallError>,
) {
    let status = match result {
        Ok(reply) => reply.response.header.status,
        Err(e) => return call_error(shared, out, e),
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
fn simple_reply(shared: &Shared, out: &mut BytesMut, result: Result<Reply, CallError>, ok: &[u8]) {
    match result {
        Ok(reply) => match reply.response.header.status {
            Status::OK => out.put_slice(ok),
            Status::KEY_NOT_FOUND => out.put_slice(b"NOT_FOUND\r\n"),
            other => status_error(shared, out, other),
        },
        Err(e) => call_error(shared, out, e),
    }
}

/// memcached's line for a node's failure status. Only a status the proxy
/// cannot word (the node failed, not the request) counts as an error.
fn status_error(shared: &Shared, out: &mut BytesMut, status: Status) {
    let line: &[u8] = match status {
        Status::INVALID_ARGUMENTS => b"CLIENT_ERROR bad command line format\r\n",
        Status::KEY_EXISTS => b"EXISTS\r\n",
        Status::NOT_STORED => b"NOT_STORED\r\n",
        other => refusal_line(other).unwrap_or_else(|| {
            shared.stats.errors.fetch_add(1, Ordering::Relaxed);
            TEMPORARY_FAILURE
        }),
    };
    out.put_slice(line);
}

fn call_error(shared: &Shared, out: &mut BytesMut, e: CallError) {
    shared.stats.errors.fetch_add(1, Ordering::Relaxed);
    out.put_slice(call_error_line(e));
}
