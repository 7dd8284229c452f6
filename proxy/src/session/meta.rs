//! Meta clients (`mg ms md ma mn`): each command becomes one binary request
//! to the owning node, and its reply becomes the meta reply with the return
//! flags in request order (misses carry the echo flags `O` and `k`, as
//! memcached 1.6 does).
//!
//! Flags that need data a binary reply does not carry (`t`, `h`, `l`) or
//! state the proxy does not keep (`N R I E` on mg/ms/md, `x`) are refused with
//! `CLIENT_ERROR unsupported flag`, never answered with invented values;
//! `me` (a debugging aid about one server) is refused likewise.

use bytes::{BufMut, Bytes, BytesMut};
use shoal_protocol::binary::extras::ARITH_NO_CREATE;
use shoal_protocol::binary::{arith_extras, store_extras, touch_extras, Decoded, Opcode, Status};
use shoal_protocol::meta::{
    base64, write_status, write_value, ArithMode, Echo, Flag, ItemFields, MetaCommand, MetaFlags,
    ReturnFlags, SetMode, Status as MetaStatus,
};
use shoal_protocol::Exptime;

use super::call::{keyed, CallError, Plain};
use super::Outcome;
use crate::downstream::Reply;
use crate::Shared;

const UNSUPPORTED_GET: &[Flag] = &[
    Flag::ReturnTtl,
    Flag::ReturnHit,
    Flag::ReturnLastAccess,
    Flag::Vivify,
    Flag::Recache,
    Flag::NewCas,
    Flag::Invalidate,
];
const UNSUPPORTED_SET: &[Flag] = &[Flag::Invalidate, Flag::NewCas, Flag::ReturnTtl];
const UNSUPPORTED_DELETE: &[Flag] = &[Flag::Invalidate, Flag::NewCas, Flag::RemoveValue];
const UNSUPPORTED_ARITH: &[Flag] = &[Flag::NewCas, Flag::ReturnTtl];

/// memcached's longest key; base64 keys decode into a buffer this size.
const MAX_KEY: usize = 250;

/// Runs one meta command parsed from `frame`, appending its reply to `out`.
pub(super) async fn execute(
    shared: &Shared,
    frame: &Bytes,
    cmd: &MetaCommand,
    out: &mut BytesMut,
) -> Outcome {
    let mut key_buf = [0u8; MAX_KEY];
    let key: &[u8] = match cmd.key() {
        None => &[],
        Some(span) if cmd.base64() => match base64::decode_into(span.of(frame), &mut key_buf) {
            Some(len) if len > 0 => &key_buf[..len],
            _ => return text(out, b"CLIENT_ERROR error decoding key\r\n"),
        },
        Some(span) => span.of(frame),
    };
    let echo = Echo {
        frame,
        key,
        base64: cmd.base64(),
    };
    match cmd {
        MetaCommand::Noop => return text(out, b"MN\r\n"),
        MetaCommand::Debug(_) => {
            return text(out, b"CLIENT_ERROR unsupported through the proxy\r\n")
        }
        MetaCommand::Get(get) => {
            if refused(&get.flags, UNSUPPORTED_GET) {
                return text(out, b"CLIENT_ERROR unsupported flag\r\n");
            }
            let ttl = get.flags.ttl().map(touch_extras);
            let request = Plain {
                opcode: if ttl.is_some() {
                    Opcode::Gat
                } else {
                    Opcode::Get
                },
                cas: 0,
                extras: ttl.as_ref().map_or(&[][..], |e| &e[..]),
                key,
                value: &[],
            };
            match keyed(shared, key, &request, true).await {
                Ok(reply) if reply.response.header.status == Status::OK => {
                    let flags = returned(&echo, &get.flags, Some(&reply), None);
                    if get.flags.has(Flag::ReturnValue) {
                        write_value(out, flags.as_slice(), reply.response.value.of(&reply.frame));
                    } else {
                        write_status(out, MetaStatus::Hd, flags.as_slice());
                    }
                }
                Ok(reply) if reply.response.header.status == Status::KEY_NOT_FOUND => {
                    if !get.quiet() {
                        write_status(
                            out,
                            MetaStatus::En,
                            returned(&echo, &get.flags, None, None).as_slice(),
                        );
                    }
                }
                other => error(shared, out, other),
            }
        }
        MetaCommand::Set(set) => {
            if refused(&set.flags, UNSUPPORTED_SET) {
                return text(out, b"CLIENT_ERROR unsupported flag\r\n");
            }
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
                cas: flags
                    .compare_cas()
                    .map_or(0, |c| if c == 0 { u64::MAX } else { c }),
                extras: if append { &[] } else { &extras },
                key,
                value: set.value.of(frame),
            };
            match keyed(shared, key, &request, false).await {
                Ok(reply) => {
                    let status = reply.response.header.status;
                    let cas_given = flags.compare_cas().is_some();
                    let meta = match status {
                        Status::OK => Some(MetaStatus::Hd),
                        Status::KEY_EXISTS if cas_given => Some(MetaStatus::Ex),
                        Status::KEY_NOT_FOUND if cas_given => Some(MetaStatus::Nf),
                        Status::KEY_EXISTS | Status::KEY_NOT_FOUND | Status::NOT_STORED => {
                            Some(MetaStatus::Ns)
                        }
                        _ => None,
                    };
                    match meta {
                        Some(MetaStatus::Hd) if set.quiet() => {}
                        Some(MetaStatus::Hd) => {
                            let ret = returned(&echo, flags, None, Some(reply.response.header.cas));
                            write_status(out, MetaStatus::Hd, ret.as_slice());
                        }
                        Some(s) => {
                            write_status(out, s, returned(&echo, flags, None, None).as_slice())
                        }
                        None => error(shared, out, Ok(reply)),
                    }
                }
                Err(e) => error(shared, out, Err(e)),
            }
        }
        MetaCommand::Delete(delete) => {
            if refused(&delete.flags, UNSUPPORTED_DELETE) {
                return text(out, b"CLIENT_ERROR unsupported flag\r\n");
            }
            let request = Plain {
                opcode: Opcode::Delete,
                cas: delete.flags.compare_cas().unwrap_or(0),
                extras: &[],
                key,
                value: &[],
            };
            match keyed(shared, key, &request, false).await {
                Ok(reply) => match reply.response.header.status {
                    Status::OK if delete.quiet() => {}
                    Status::OK => write_status(
                        out,
                        MetaStatus::Hd,
                        returned(&echo, &delete.flags, None, None).as_slice(),
                    ),
                    Status::KEY_NOT_FOUND => write_status(
                        out,
                        MetaStatus::Nf,
                        returned(&echo, &delete.flags, None, None).as_slice(),
                    ),
                    Status::KEY_EXISTS => write_status(
                        out,
                        MetaStatus::Ex,
                        returned(&echo, &delete.flags, None, None).as_slice(),
                    ),
                    _ => error(shared, out, Ok(reply)),
                },
                Err(e) => error(shared, out, Err(e)),
            }
        }
        MetaCommand::Arith(arith) => {
            if refused(&arith.flags, UNSUPPORTED_ARITH) {
                return text(out, b"CLIENT_ERROR unsupported flag\r\n");
            }
            let flags = &arith.flags;
            let create = flags
                .vivify_ttl()
                .unwrap_or(Exptime(i64::from(ARITH_NO_CREATE)));
            let extras = arith_extras(arith.delta(), arith.initial(), create);
            let request = Plain {
                opcode: match arith.mode() {
                    ArithMode::Incr => Opcode::Increment,
                    ArithMode::Decr => Opcode::Decrement,
                },
                cas: flags.compare_cas().unwrap_or(0),
                extras: &extras,
                key,
                value: &[],
            };
            match keyed(shared, key, &request, false).await {
                Ok(reply) => match (reply.response.header.status, reply.response.decoded) {
                    (Status::OK, Decoded::Counter(n)) => {
                        let ret = returned(&echo, flags, None, Some(reply.response.header.cas));
                        if flags.has(Flag::ReturnValue) {
                            write_value(out, ret.as_slice(), n.to_string().as_bytes());
                        } else if !arith.quiet() {
                            write_status(out, MetaStatus::Hd, ret.as_slice());
                        }
                    }
                    (Status::KEY_NOT_FOUND, _) => write_status(
                        out,
                        MetaStatus::Nf,
                        returned(&echo, flags, None, None).as_slice(),
                    ),
                    (Status::KEY_EXISTS, _) => write_status(
                        out,
                        MetaStatus::Ex,
                        returned(&echo, flags, None, None).as_slice(),
                    ),
                    _ => error(shared, out, Ok(reply)),
                },
                Err(e) => error(shared, out, Err(e)),
            }
        }
    }
    Outcome::Continue
}

fn text(out: &mut BytesMut, line: &'static [u8]) -> Outcome {
    out.put_slice(line);
    Outcome::Continue
}

fn refused(flags: &MetaFlags, unsupported: &[Flag]) -> bool {
    unsupported.iter().any(|f| flags.has(*f))
}

/// A node error or a failed call, as memcached words it.
fn error(shared: &Shared, out: &mut BytesMut, result: Result<Reply, CallError>) {
    shared
        .stats
        .errors
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let line: &[u8] = match result {
        Ok(reply) => match reply.response.header.status {
            Status::NON_NUMERIC => {
                b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
            }
            Status::TOO_LARGE => b"SERVER_ERROR object too large for cache\r\n",
            Status::OUT_OF_MEMORY => b"SERVER_ERROR out of memory storing object\r\n",
            _ => b"SERVER_ERROR temporary failure\r\n",
        },
        Err(CallError::OutcomeUnknown) => {
            b"SERVER_ERROR outcome unknown: connection to node lost\r\n"
        }
        Err(CallError::Unavailable) => b"SERVER_ERROR temporary failure\r\n",
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
        ttl: None,
    };
    ReturnFlags::collect(flags, echo, item)
}
