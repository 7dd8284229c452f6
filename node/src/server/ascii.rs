//! The classic ASCII front end: runs one parsed [`Command`] against the
//! bucket and appends memcached 1.6's reply to the connection's output.
//!
//! The node computes each key's vbucket itself (libvbucket's CRC rule), so
//! plain memcached clients can talk to a standalone node; a key whose
//! vbucket is not active here answers `SERVER_ERROR not my vbucket`.

use bytes::{BufMut, Bytes, BytesMut};
use shoal_protocol::ascii::{
    encode_number, encode_value, stats_detail_reply, Arith, ArithVerb, Command, Get, GetVerb,
    Store, StoreVerb,
};
use shoal_protocol::cas::compare_value;

use super::stats;
use super::Flow;
use crate::bucket::{FlushError, LiveBucket};
use crate::version::VERSION;
use shoal_engine::{resolve_exptime, ArithOp, ArithRequest, EngineError, StoreMode, StoreRequest};

/// Runs `cmd`, parsed from `frame`, appending its reply (if any) to `out`.
pub(super) fn execute(ctx: &LiveBucket, frame: &[u8], cmd: &Command, out: &mut BytesMut) -> Flow {
    let now = ctx.clock.now();
    match cmd {
        Command::Get(get) => {
            // Whole: the connection streams long gets through
            // `retrieve_part` instead.
            retrieve_part(ctx, frame, get, 0, usize::MAX, out);
            Flow::Read
        }
        Command::Store(store) => {
            let result = execute_store(ctx, frame, store, now);
            if !store.noreply {
                match result {
                    Ok(()) => out.put_slice(b"STORED\r\n"),
                    Err(e) => out.put_slice(error_line(e)),
                }
            }
            Flow::Wrote
        }
        Command::Delete(delete) => {
            let key = delete.key.of(frame);
            let vb = vb_of(ctx, key);
            let result = ctx.engine.delete(vb, key, 0, now);
            if !delete.noreply {
                match result {
                    Ok(_) => out.put_slice(b"DELETED\r\n"),
                    Err(e) => out.put_slice(error_line(e)),
                }
            }
            Flow::Wrote
        }
        Command::Arith(arith) => {
            let result = execute_arith(ctx, frame, arith, now);
            if !arith.noreply {
                match result {
                    Ok(value) => encode_number(out, value),
                    Err(e) => out.put_slice(error_line(e)),
                }
            }
            Flow::Wrote
        }
        Command::Touch(touch) => {
            let key = touch.key.of(frame);
            let vb = vb_of(ctx, key);
            let exptime = resolve_exptime(touch.exptime.0, now);
            let result =
                ctx.with_resident(vb, key, now, || ctx.engine.touch(vb, key, exptime, now));
            if !touch.noreply {
                match result {
                    Ok(_) => out.put_slice(b"TOUCHED\r\n"),
                    Err(e) => out.put_slice(error_line(e)),
                }
            }
            Flow::Wrote
        }
        Command::FlushAll(flush) => {
            let deadline = if flush.delay.0 <= 0 {
                0
            } else {
                resolve_exptime(flush.delay.0, now)
            };
            let result = ctx.flush_all(deadline, now);
            if !flush.noreply {
                match result {
                    Ok(()) => out.put_slice(b"OK\r\n"),
                    // memcached's words when started with flush disabled.
                    Err(FlushError::Disabled) => {
                        out.put_slice(b"CLIENT_ERROR flush_all not allowed\r\n")
                    }
                    Err(FlushError::Engine(e)) => out.put_slice(error_line(e)),
                }
            }
            Flow::Wrote
        }
        Command::Verbosity(v) => {
            if !v.noreply {
                out.put_slice(b"OK\r\n");
            }
            Flow::Read
        }
        Command::Stats(s) => {
            let mut args = s.args(frame);
            let group = args.next().map(|span| span.of(frame)).unwrap_or(b"");
            if group == b"detail" {
                out.put_slice(stats_detail_reply(args.next().map(|span| span.of(frame))));
                return Flow::Read;
            }
            let known = stats::write(ctx, group, |name, value| {
                out.put_slice(b"STAT ");
                out.put_slice(name.as_bytes());
                out.put_u8(b' ');
                out.put_slice(value.as_bytes());
                out.put_slice(b"\r\n");
            });
            if known {
                out.put_slice(b"END\r\n");
            } else {
                out.put_slice(b"ERROR\r\n");
            }
            Flow::Read
        }
        Command::Version => {
            out.put_slice(b"VERSION ");
            out.put_slice(VERSION.as_bytes());
            out.put_slice(b"\r\n");
            Flow::Read
        }
        Command::Quit => Flow::Close,
    }
}

/// Runs `cmd` on a connection with no bucket: `version`, `verbosity` and
/// `quit` work, everything else is answered `refusal` (sent even for
/// `noreply`, as memcached sends errors).
pub(super) fn without_bucket(cmd: &Command, refusal: &[u8], out: &mut BytesMut) -> Flow {
    match cmd {
        Command::Version => {
            out.put_slice(b"VERSION ");
            out.put_slice(VERSION.as_bytes());
            out.put_slice(b"\r\n");
        }
        Command::Verbosity(v) => {
            if !v.noreply {
                out.put_slice(b"OK\r\n");
            }
        }
        Command::Quit => return Flow::Close,
        _ => out.put_slice(refusal),
    }
    Flow::Read
}

/// `get gets gat gats` from the key that starts at byte `from` of the
/// frame (0: the first): a `VALUE` block per hit, then `END`. Stops early,
/// once `out` holds at least `high_water` bytes and keys remain, and
/// returns where the next key starts: the connection writes what is built
/// and calls again from there, so a get of many large values streams out
/// through a bounded buffer instead of being built whole (memcached
/// streams them too). An error on one key ends the reply with that error
/// (as memcached does when it cannot build a reply), so the client never
/// mistakes it for a miss.
pub(super) fn retrieve_part(
    ctx: &LiveBucket,
    frame: &[u8],
    get: &Get,
    from: usize,
    high_water: usize,
    out: &mut BytesMut,
) -> Option<usize> {
    let now = ctx.clock.now();
    let with_cas = get.verb.returns_cas();
    let touch_to = match get.verb {
        GetVerb::Gat { exptime } | GetVerb::Gats { exptime } => {
            Some(resolve_exptime(exptime.0, now))
        }
        GetVerb::Get | GetVerb::Gets => None,
    };
    for span in get.keys(frame).skip_while(|span| span.start < from) {
        if out.len() >= high_water {
            return Some(span.start);
        }
        let key = span.of(frame);
        let vb = vb_of(ctx, key);
        let result = match touch_to {
            None => ctx.get(vb, key, now),
            Some(exptime) => {
                ctx.with_resident(vb, key, now, || ctx.engine.gat(vb, key, exptime, now))
            }
        };
        match result {
            Ok(hit) => encode_value(out, key, hit.flags, &hit.value, with_cas.then_some(hit.cas)),
            Err(EngineError::NotFound) => {}
            Err(e) => {
                out.put_slice(error_line(e));
                return None;
            }
        }
    }
    out.put_slice(b"END\r\n");
    None
}

fn execute_store(
    ctx: &LiveBucket,
    frame: &[u8],
    store: &Store,
    now: u32,
) -> Result<(), EngineError> {
    let key = store.key.of(frame);
    let vb = vb_of(ctx, key);
    let (mode, cas) = match store.verb {
        StoreVerb::Set => (StoreMode::Set, 0),
        StoreVerb::Add => (StoreMode::Add, 0),
        StoreVerb::Replace => (StoreMode::Replace, 0),
        StoreVerb::Append => (StoreMode::Append, 0),
        StoreVerb::Prepend => (StoreMode::Prepend, 0),
        StoreVerb::Cas { unique } => (StoreMode::Set, compare_value(Some(unique))),
    };
    let req = StoreRequest {
        mode,
        // The one copy of a write: the item must own its bytes, not pin the
        // connection's read buffer.
        key: Bytes::copy_from_slice(key),
        value: Bytes::copy_from_slice(store.value.of(frame)),
        flags: store.flags,
        exptime: resolve_exptime(store.exptime.0, now),
        cas,
    };
    ctx.with_resident(vb, key, now, || ctx.engine.store(vb, &req, now))
        .map(|_| ())
}

fn execute_arith(
    ctx: &LiveBucket,
    frame: &[u8],
    arith: &Arith,
    now: u32,
) -> Result<u64, EngineError> {
    let key = arith.key.of(frame);
    let vb = vb_of(ctx, key);
    let req = ArithRequest {
        key: Bytes::copy_from_slice(key),
        op: match arith.verb {
            ArithVerb::Incr => ArithOp::Incr,
            ArithVerb::Decr => ArithOp::Decr,
        },
        delta: arith.delta,
        create: None,
        cas: 0,
    };
    ctx.with_resident(vb, key, now, || ctx.engine.arith(vb, &req, now))
        .map(|outcome| outcome.value)
}

fn vb_of(ctx: &LiveBucket, key: &[u8]) -> u16 {
    ctx.vbucket_of(key)
}

/// The reply line for an engine refusal, in memcached's words.
pub(super) fn error_line(e: EngineError) -> &'static [u8] {
    match e {
        EngineError::NotFound => b"NOT_FOUND\r\n",
        EngineError::Exists => b"EXISTS\r\n",
        EngineError::NotStored => b"NOT_STORED\r\n",
        EngineError::NonNumeric => {
            b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
        }
        EngineError::NotMyVbucket => b"SERVER_ERROR not my vbucket\r\n",
        EngineError::TooLarge => b"SERVER_ERROR object too large for cache\r\n",
        EngineError::OutOfMemory => b"SERVER_ERROR out of memory storing object\r\n",
        EngineError::TempFail | EngineError::ValueEjected => b"SERVER_ERROR temporary failure\r\n",
    }
}
