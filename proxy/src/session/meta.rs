//! Meta clients (`mg ms md ma me mn`). `mn` is answered here; every other
//! command goes to the node that owns its key.
//!
//! In front of a Shoal cluster (vbucket or memcached bucket) the request
//! travels verbatim in a META envelope (binary opcode 0xe7: the decoded key
//! routes it, the header names the vbucket) and the node's meta reply
//! comes back as the envelope's value, copied to the client as is: every
//! flag means exactly what it means on a node, item state (`h l t`, the
//! `N R I` recache flow and its `W X Z` markers) included, and NOT_MY_VBUCKET
//! is retried like any request (`docs/DESIGN.md`, "Meta through the proxy").
//!
//! A static ring has plain memcached servers behind it, which speak only
//! memcached's binary protocol on the proxy's connections: there each
//! command becomes one classic binary request and its reply the meta
//! reply, with the return flags in request order (misses carry the echo
//! flags `O` and `k`, as memcached 1.6 does). Flags that need data a binary
//! reply does not carry (`t`, `h`, `l`) or item state (`N R I`) are refused
//! with `CLIENT_ERROR unsupported flag`, never answered with invented
//! values, and `me` likewise.

use std::sync::atomic::Ordering;

use bytes::{BufMut, Bytes, BytesMut};
use shoal_protocol::binary::extras::ARITH_NO_CREATE;
use shoal_protocol::binary::{arith_extras, store_extras, touch_extras, Decoded, Opcode, Status};
use shoal_protocol::cas::compare_value;
use shoal_protocol::meta::{
    base64, write_status, write_value, ArithMode, Echo, Flag, ItemFields, MetaArith, MetaCommand,
    MetaDelete, MetaFlags, MetaGet, MetaSet, ReturnFlags, SetMode, Status as MetaStatus,
};
use shoal_protocol::Exptime;

use super::call::{keyed, CallError, Plain};
use super::text::{call_error_line, refusal_line, TEMPORARY_FAILURE};
use super::Outcome;
use crate::config::MapSource;
use crate::downstream::Reply;
use crate::shared::Shared;

/// Flags a static ring cannot honour, per verb (see the module doc).
const UNSUPPORTED_GET: &[Flag] = &[
    Flag::ReturnTtl,
    Flag::ReturnHit,
    Flag::ReturnLastAccess,
    Flag::Vivify,
    Flag::Recache,
    Flag::Invalidate,
];
const UNSUPPORTED_SET: &[Flag] = &[Flag::Invalidate, Flag::ReturnTtl];
const UNSUPPORTED_DELETE: &[Flag] = &[Flag::Invalidate];
const UNSUPPORTED_ARITH: &[Flag] = &[Flag::ReturnTtl];

/// memcached's longest key; base64 keys decode into a buffer this size.
const MAX_KEY: usize = 250;

/// Runs one meta command parsed from `frame`, appending its reply to `out`.
pub(super) async fn execute(
    shared: &Shared,
    frame: &Bytes,
    cmd: &MetaCommand,
    out: &mut BytesMut,
) -> Outcome {
    match (cmd, &shared.config.source) {
        (MetaCommand::Noop, _) => text(out, b"MN\r\n"),
        (_, MapSource::Cluster { .. }) => forward(shared, frame, cmd, out).await,
        (_, MapSource::Static { .. }) => translate(shared, frame, cmd, out).await,
    }
}

/// The key a command addresses, decoded when it is base64 (`None`: the
/// key does not decode, which memcached answers as below).
fn decoded_key<'k>(
    frame: &'k [u8],
    cmd: &MetaCommand,
    buf: &'k mut [u8; MAX_KEY],
) -> Option<&'k [u8]> {
    match cmd.key() {
        None => Some(&[]),
        Some(span) if cmd.base64() => match base64::decode_into(span.of(frame), buf) {
            Some(len) if len > 0 => buf.get(..len),
            _ => None,
        },
        Some(span) => Some(span.of(frame)),
    }
}

/// In front of a cluster: the request in a META envelope to its node, the
/// node's reply text back to the client.
async fn forward(shared: &Shared, frame: &Bytes, cmd: &MetaCommand, out: &mut BytesMut) -> Outcome {
    let mut key_buf = [0u8; MAX_KEY];
    let Some(key) = decoded_key(frame, cmd, &mut key_buf) else {
        return text(out, b"CLIENT_ERROR error decoding key\r\n");
    };
    let request = Plain {
        value: frame,
        ..Plain::new(Opcode::Meta, key, &[])
    };
    match keyed(shared, key, &request, is_idempotent(cmd)).await {
        Ok(reply) if reply.response.header.status == Status::OK => {
            out.put_slice(reply.response.value.of(&reply.frame));
        }
        other => error(shared, out, other),
    }
    Outcome::Continue
}

/// Whether sending `cmd` twice is the same as sending it once, so a
/// request lost with its connection may be sent again: reads that change
/// nothing (no `T` touch, `N` vivify or `R` win token).
fn is_idempotent(cmd: &MetaCommand) -> bool {
    match cmd {
        MetaCommand::Get(get) => ![Flag::Ttl, Flag::Vivify, Flag::Recache]
            .iter()
            .any(|f| get.flags.has(*f)),
        MetaCommand::Debug(_) | MetaCommand::Noop => true,
        MetaCommand::Set(_) | MetaCommand::Delete(_) | MetaCommand::Arith(_) => false,
    }
}

/// In front of a static ring of memcached servers: the command as one
/// classic binary request (see the module doc).
async fn translate(
    shared: &Shared,
    frame: &Bytes,
    cmd: &MetaCommand,
    out: &mut BytesMut,
) -> Outcome {
    let mut key_buf = [0u8; MAX_KEY];
    let Some(key) = decoded_key(frame, cmd, &mut key_buf) else {
        return text(out, b"CLIENT_ERROR error decoding key\r\n");
    };
    if has_unsupported_flag(cmd) {
        return text(out, b"CLIENT_ERROR unsupported flag\r\n");
    }
    let echo = Echo {
        frame,
        key,
        base64: cmd.base64(),
    };
    match cmd {
        MetaCommand::Noop => out.put_slice(b"MN\r\n"),
        MetaCommand::Debug(_) => out.put_slice(b"CLIENT_ERROR unsupported flag\r\n"),
        MetaCommand::Get(get) => meta_get(shared, &echo, get, out).await,
        MetaCommand::Set(set) => meta_set(shared, &echo, set, out).await,
        MetaCommand::Delete(delete) => meta_delete(shared, &echo, delete, out).await,
        MetaCommand::Arith(arith) => meta_arith(shared, &echo, arith, out).await,
    }
    Outcome::Continue
}

/// `mg`: a GET (a GAT with `T`); the value and the asked-for item fields.
async fn meta_get(shared: &Shared, echo: &Echo<'_>, get: &MetaGet, out: &mut BytesMut) {
    let key = echo.key;
    let ttl = get.flags.ttl().map(touch_extras);
    let opcode = if ttl.is_some() {
        Opcode::Gat
    } else {
        Opcode::Get
    };
    let extras = ttl.as_ref().map_or(&[][..], |e| &e[..]);
    match keyed(shared, key, &Plain::new(opcode, key, extras), true).await {
        Ok(reply) if reply.response.header.status == Status::OK => {
            let flags = returned(echo, &get.flags, Some(&reply), None);
            if get.flags.has(Flag::ReturnValue) {
                write_value(out, flags.as_slice(), reply.response.value.of(&reply.frame));
            } else {
                write_status(out, MetaStatus::Hd, flags.as_slice());
            }
        }
        Ok(reply) if reply.response.header.status == Status::KEY_NOT_FOUND => {
            if !get.quiet() {
                write_bare_status(out, MetaStatus::En, echo, &get.flags);
            }
        }
        other => error(shared, out, other),
    }
}

/// `ms`: a SET, ADD, REPLACE, APPEND or PREPEND, compared against `C`.
async fn meta_set(shared: &Shared, echo: &Echo<'_>, set: &MetaSet, out: &mut BytesMut) {
    let flags = &set.flags;
    let mode = set.mode();
    let opcode = match mode {
        SetMode::Set => Opcode::Set,
        SetMode::Add => Opcode::Add,
        SetMode::Replace => Opcode::Replace,
        SetMode::Append => Opcode::Append,
        SetMode::Prepend => Opcode::Prepend,
    };
    let extras = store_extras(
        flags.client_flags().unwrap_or(0),
        flags.ttl().unwrap_or(Exptime::NEVER),
    );
    let append = matches!(mode, SetMode::Append | SetMode::Prepend);
    let request = Plain {
        opcode,
        cas: compare_value(flags.compare_cas()),
        extras: if append { &[] } else { &extras },
        key: echo.key,
        value: set.value.of(echo.frame),
    };
    let reply = match keyed(shared, echo.key, &request, false).await {
        Ok(reply) => reply,
        Err(e) => return error(shared, out, Err(e)),
    };
    let cas_given = flags.compare_cas().is_some();
    let status = match reply.response.header.status {
        Status::OK => MetaStatus::Hd,
        Status::KEY_EXISTS if cas_given => MetaStatus::Ex,
        Status::KEY_NOT_FOUND if cas_given => MetaStatus::Nf,
        Status::KEY_EXISTS | Status::KEY_NOT_FOUND | Status::NOT_STORED => MetaStatus::Ns,
        _ => return error(shared, out, Ok(reply)),
    };
    match status {
        MetaStatus::Hd if set.quiet() => {}
        MetaStatus::Hd => {
            let ret = returned(echo, flags, None, Some(reply.response.header.cas));
            write_status(out, MetaStatus::Hd, ret.as_slice());
        }
        status => write_bare_status(out, status, echo, flags),
    }
}

/// `md`: a DELETE, compared against `C`.
async fn meta_delete(shared: &Shared, echo: &Echo<'_>, delete: &MetaDelete, out: &mut BytesMut) {
    let request = Plain {
        cas: delete.flags.compare_cas().unwrap_or(0),
        ..Plain::new(Opcode::Delete, echo.key, &[])
    };
    let reply = match keyed(shared, echo.key, &request, false).await {
        Ok(reply) => reply,
        Err(e) => return error(shared, out, Err(e)),
    };
    let status = match reply.response.header.status {
        Status::OK if delete.quiet() => return,
        Status::OK => MetaStatus::Hd,
        Status::KEY_NOT_FOUND => MetaStatus::Nf,
        Status::KEY_EXISTS => MetaStatus::Ex,
        _ => return error(shared, out, Ok(reply)),
    };
    write_bare_status(out, status, echo, &delete.flags);
}

/// `ma`: an INCREMENT or DECREMENT, creating the item only with `N`.
async fn meta_arith(shared: &Shared, echo: &Echo<'_>, arith: &MetaArith, out: &mut BytesMut) {
    let flags = &arith.flags;
    let create = flags
        .vivify_ttl()
        .unwrap_or(Exptime(i64::from(ARITH_NO_CREATE)));
    let extras = arith_extras(arith.delta(), arith.initial(), create);
    let opcode = match arith.mode() {
        ArithMode::Incr => Opcode::Increment,
        ArithMode::Decr => Opcode::Decrement,
    };
    let request = Plain {
        cas: flags.compare_cas().unwrap_or(0),
        ..Plain::new(opcode, echo.key, &extras)
    };
    let reply = match keyed(shared, echo.key, &request, false).await {
        Ok(reply) => reply,
        Err(e) => return error(shared, out, Err(e)),
    };
    match (reply.response.header.status, reply.response.decoded) {
        (Status::OK, Decoded::Counter(n)) => {
            let ret = returned(echo, flags, None, Some(reply.response.header.cas));
            if flags.has(Flag::ReturnValue) {
                write_value(out, ret.as_slice(), n.to_string().as_bytes());
            } else if !arith.quiet() {
                write_status(out, MetaStatus::Hd, ret.as_slice());
            }
        }
        (Status::KEY_NOT_FOUND, _) => write_bare_status(out, MetaStatus::Nf, echo, flags),
        (Status::KEY_EXISTS, _) => write_bare_status(out, MetaStatus::Ex, echo, flags),
        _ => error(shared, out, Ok(reply)),
    }
}

/// Appends a fixed line; the command is done.
fn text(out: &mut BytesMut, line: &'static [u8]) -> Outcome {
    out.put_slice(line);
    Outcome::Continue
}

/// Whether `cmd` carries a flag the proxy cannot honour (see the module
/// doc).
fn has_unsupported_flag(cmd: &MetaCommand) -> bool {
    let (flags, unsupported) = match cmd {
        MetaCommand::Get(c) => (&c.flags, UNSUPPORTED_GET),
        MetaCommand::Set(c) => (&c.flags, UNSUPPORTED_SET),
        MetaCommand::Delete(c) => (&c.flags, UNSUPPORTED_DELETE),
        MetaCommand::Arith(c) => (&c.flags, UNSUPPORTED_ARITH),
        MetaCommand::Noop | MetaCommand::Debug(_) => return false,
    };
    unsupported.iter().any(|f| flags.has(*f))
}

/// A status line with only the echoes (`k`, `O`) and no item fields.
fn write_bare_status(out: &mut BytesMut, status: MetaStatus, echo: &Echo<'_>, flags: &MetaFlags) {
    write_status(out, status, returned(echo, flags, None, None).as_slice());
}

/// A node error or a failed call, as memcached words it.
fn error(shared: &Shared, out: &mut BytesMut, result: Result<Reply, CallError>) {
    shared.stats.errors.fetch_add(1, Ordering::Relaxed);
    let line = match result {
        Ok(reply) => refusal_line(reply.response.header.status).unwrap_or(TEMPORARY_FAILURE),
        Err(e) => call_error_line(e),
    };
    out.put_slice(line);
}

/// The return flags `flags` asks for: item fields from a hit `reply`,
/// the new CAS of a write, and the echoes (`k`, `O`) always.
fn returned<'a>(
    echo: &Echo<'a>,
    flags: &MetaFlags,
    reply: Option<&Reply>,
    cas: Option<u64>,
) -> ReturnFlags<'a> {
    let item = ItemFields {
        cas: cas.or(reply.map(|r| r.response.header.cas)),
        client_flags: reply.map(|r| match r.response.decoded {
            Decoded::Flags(f) => f,
            _ => 0,
        }),
        size: reply.map(|r| r.response.value.len() as u64),
        // A binary GET says nothing of the TTL: `t` is refused on `mg`.
        ..ItemFields::default()
    };
    ReturnFlags::collect(flags, echo, item)
}
