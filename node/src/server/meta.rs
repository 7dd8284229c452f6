//! The meta front end (`mg ms md ma mn me`): runs one parsed
//! [`MetaCommand`] and appends memcached 1.6's reply.
//!
//! Return flags are written in request order, on misses too (`EN k… O…`),
//! as memcached 1.6.18 does. Flags that need state Shoal does not keep yet
//! (LRU hit/last-access `h l`, stale-while-revalidate `N R I` on `mg`/`ms`/`md`,
//! explicit CAS `E`, `md x`) are refused with `CLIENT_ERROR unsupported
//! flag` rather than answered with made-up values.

use bytes::{BufMut, Bytes, BytesMut};
use shoal_protocol::meta::{
    base64, write_status, write_value, ArithMode, Echo, Flag, ItemFields, MetaArith, MetaCommand,
    MetaDelete, MetaFlags, MetaGet, MetaSet, ReturnFlag, ReturnFlags, SetMode, Status,
};

use super::ascii::error_line;
use super::Flow;
use crate::bucket::LiveBucket;
use shoal_engine::{
    resolve_exptime, ArithCreate, ArithOp, ArithRequest, EngineError, Hit, StoreMode, StoreRequest,
};

/// Flags refused per verb (see the module doc).
const UNSUPPORTED_GET: &[Flag] = &[
    Flag::ReturnHit,
    Flag::ReturnLastAccess,
    Flag::Vivify,
    Flag::Recache,
    Flag::NewCas,
    Flag::Invalidate,
];
const UNSUPPORTED_SET: &[Flag] = &[Flag::Invalidate, Flag::NewCas];
const UNSUPPORTED_DELETE: &[Flag] = &[Flag::Invalidate, Flag::NewCas, Flag::RemoveValue];
const UNSUPPORTED_ARITH: &[Flag] = &[Flag::NewCas];

/// memcached's longest key; base64 keys decode into a buffer this size.
const MAX_KEY: usize = 250;

/// Runs `cmd` on a connection with no bucket: `mn` works, everything else
/// is answered `SERVER_ERROR no bucket selected`.
pub(super) fn without_bucket(cmd: &MetaCommand, refusal: &[u8], out: &mut BytesMut) -> Flow {
    match cmd {
        MetaCommand::Noop => out.put_slice(b"MN\r\n"),
        _ => out.put_slice(refusal),
    }
    Flow::Read
}

/// Runs `cmd`, parsed from `frame`, appending its reply (if any) to `out`.
pub(super) fn execute(
    ctx: &LiveBucket,
    frame: &[u8],
    cmd: &MetaCommand,
    out: &mut BytesMut,
) -> Flow {
    let mut key_buf = [0u8; MAX_KEY];
    let key = match cmd.key() {
        None => &[][..],
        Some(span) if cmd.base64() => match base64::decode_into(span.of(frame), &mut key_buf) {
            Some(len) if len > 0 => &key_buf[..len],
            _ => {
                out.put_slice(b"CLIENT_ERROR error decoding key\r\n");
                return Flow::Read;
            }
        },
        Some(span) => span.of(frame),
    };
    let req = Req {
        ctx,
        frame,
        key,
        base64: cmd.base64(),
        vb: ctx.vbucket_of(key),
        now: ctx.clock.now(),
    };
    match cmd {
        MetaCommand::Get(get) => {
            if refuse(&get.flags, UNSUPPORTED_GET, out) {
                return Flow::Read;
            }
            mg(&req, get, out);
            if get.flags.has(Flag::Ttl) {
                Flow::Wrote
            } else {
                Flow::Read
            }
        }
        MetaCommand::Set(set) => {
            if !refuse(&set.flags, UNSUPPORTED_SET, out) {
                ms(&req, set, out);
            }
            Flow::Wrote
        }
        MetaCommand::Delete(delete) => {
            if !refuse(&delete.flags, UNSUPPORTED_DELETE, out) {
                md(&req, delete, out);
            }
            Flow::Wrote
        }
        MetaCommand::Arith(arith) => {
            if !refuse(&arith.flags, UNSUPPORTED_ARITH, out) {
                ma(&req, arith, out);
            }
            Flow::Wrote
        }
        MetaCommand::Noop => {
            out.put_slice(b"MN\r\n");
            Flow::Read
        }
        MetaCommand::Debug(_) => {
            me(&req, out);
            Flow::Read
        }
    }
}

/// One request's decoded key and routing.
struct Req<'a> {
    ctx: &'a LiveBucket,
    frame: &'a [u8],
    key: &'a [u8],
    base64: bool,
    vb: u16,
    now: u32,
}

impl<'a> Req<'a> {
    /// What `flags` asks to return: item fields from `hit`, the new CAS
    /// of a write from `cas`, and the echoes (`k`, `O`) always.
    fn returned(&self, flags: &MetaFlags, hit: Option<&Hit>, cas: Option<u64>) -> ReturnFlags<'a> {
        let echo = Echo {
            frame: self.frame,
            key: self.key,
            base64: self.base64,
        };
        let item = ItemFields {
            cas: cas.or(hit.map(|h| h.cas)),
            client_flags: hit.map(|h| h.flags),
            size: hit.map(|h| h.value.len() as u64),
            ttl: hit.map(|h| {
                if h.exptime == 0 {
                    -1
                } else {
                    i64::from(h.exptime.saturating_sub(self.now))
                }
            }),
        };
        ReturnFlags::collect(flags, &echo, item)
    }
}

fn refuse(flags: &MetaFlags, unsupported: &[Flag], out: &mut BytesMut) -> bool {
    let refused = unsupported.iter().any(|f| flags.has(*f));
    if refused {
        out.put_slice(b"CLIENT_ERROR unsupported flag\r\n");
    }
    refused
}

fn mg(req: &Req<'_>, get: &MetaGet, out: &mut BytesMut) {
    let ctx = req.ctx;
    let (vb, key, now) = (req.vb, req.key, req.now);
    let result = match get.flags.ttl() {
        Some(ttl) => {
            let exptime = resolve_exptime(ttl.0, now);
            ctx.with_resident(vb, key, now, || ctx.engine.gat(vb, key, exptime, now))
        }
        None => ctx.get(vb, key, now),
    };
    match result {
        Ok(hit) => {
            let ret = req.returned(&get.flags, Some(&hit), None);
            if get.flags.has(Flag::ReturnValue) {
                write_value(out, ret.as_slice(), &hit.value);
            } else {
                write_status(out, Status::Hd, ret.as_slice());
            }
        }
        Err(EngineError::NotFound) => {
            if !get.quiet() {
                miss(req, &get.flags, Status::En, out);
            }
        }
        Err(e) => out.put_slice(error_line(e)),
    }
}

fn ms(req: &Req<'_>, set: &MetaSet, out: &mut BytesMut) {
    let ctx = req.ctx;
    let (vb, key, now) = (req.vb, req.key, req.now);
    let flags = &set.flags;
    let store = StoreRequest {
        mode: match set.mode() {
            SetMode::Set => StoreMode::Set,
            SetMode::Add => StoreMode::Add,
            SetMode::Append => StoreMode::Append,
            SetMode::Prepend => StoreMode::Prepend,
            SetMode::Replace => StoreMode::Replace,
        },
        // The one copy of a write (see the ASCII front end).
        key: Bytes::copy_from_slice(key),
        value: Bytes::copy_from_slice(set.value.of(req.frame)),
        flags: flags.client_flags().unwrap_or(0),
        exptime: flags.ttl().map_or(0, |t| resolve_exptime(t.0, now)),
        cas: shoal_protocol::cas::compare_value(flags.compare_cas()),
    };
    match ctx.with_resident(vb, key, now, || ctx.engine.store(vb, &store, now)) {
        Ok(m) => {
            if !set.quiet() {
                let ret = req.returned(flags, None, Some(m.cas));
                write_status(out, Status::Hd, ret.as_slice());
            }
        }
        Err(EngineError::NotStored) => refused_set(req, flags, Status::Ns, out),
        Err(EngineError::Exists) => refused_set(req, flags, Status::Ex, out),
        Err(EngineError::NotFound) => refused_set(req, flags, Status::Nf, out),
        Err(e) => out.put_slice(error_line(e)),
    }
}

/// A refused `ms`: the echoes, and `c0` for a `c` flag (nothing was
/// written), in request order, as memcached 1.6.18 answers (`NS c0 k…`).
fn refused_set(req: &Req<'_>, flags: &MetaFlags, status: Status, out: &mut BytesMut) {
    let ret = req.returned(flags, None, Some(0));
    write_status(out, status, ret.as_slice());
}

fn md(req: &Req<'_>, delete: &MetaDelete, out: &mut BytesMut) {
    let flags = &delete.flags;
    let cas = flags.compare_cas().unwrap_or(0);
    match req.ctx.engine.delete(req.vb, req.key, cas, req.now) {
        Ok(_) => {
            if !delete.quiet() {
                let ret = req.returned(flags, None, None);
                write_status(out, Status::Hd, ret.as_slice());
            }
        }
        Err(EngineError::NotFound) => miss(req, flags, Status::Nf, out),
        Err(EngineError::Exists) => miss(req, flags, Status::Ex, out),
        Err(e) => out.put_slice(error_line(e)),
    }
}

fn ma(req: &Req<'_>, arith: &MetaArith, out: &mut BytesMut) {
    let ctx = req.ctx;
    let (vb, key, now) = (req.vb, req.key, req.now);
    let flags = &arith.flags;
    let request = ArithRequest {
        key: Bytes::copy_from_slice(key),
        op: match arith.mode() {
            ArithMode::Incr => ArithOp::Incr,
            ArithMode::Decr => ArithOp::Decr,
        },
        delta: arith.delta(),
        // `N<ttl>` autovivifies a missing counter with `J<initial>`.
        create: flags.vivify_ttl().map(|ttl| ArithCreate {
            initial: arith.initial(),
            exptime: resolve_exptime(ttl.0, now),
        }),
        cas: flags.compare_cas().unwrap_or(0),
    };
    let result = ctx.with_resident(vb, key, now, || ctx.engine.arith(vb, &request, now));
    match result {
        Ok(outcome) => {
            // `T<ttl>` gives the counter a new TTL once the change is made
            // (memcached sets it while writing the reply, under the item
            // lock; here it is a touch right after, which keeps the CAS).
            // Where memcached lets the later of `T` and `N` win on a
            // created counter, or a `t` before `T` read the old TTL, `T`
            // wins here and `t` reads the new one.
            if let Some(ttl) = flags.ttl() {
                let exptime = resolve_exptime(ttl.0, now);
                // The change is acknowledged whatever happens here: a
                // delete that slipped in between leaves nothing to touch.
                let _ = ctx.with_resident(vb, key, now, || ctx.engine.touch(vb, key, exptime, now));
            }
            // `t` wants the counter's TTL, which the engine does not return
            // with the outcome; read it back under the same clock.
            let hit = flags
                .has(Flag::ReturnTtl)
                .then(|| ctx.get(vb, key, now).ok())
                .flatten();
            let mut ret = req.returned(flags, hit.as_ref(), Some(outcome.cas));
            // memcached's `ma` returns `c`, `t` and the echoes only: `f`
            // and `s` are `mg`'s.
            ret.keep(|flag| !matches!(flag, ReturnFlag::ClientFlags(_) | ReturnFlag::Size(_)));
            if flags.has(Flag::ReturnValue) {
                let mut digits = itoa_buf(outcome.value);
                write_value(out, ret.as_slice(), digits.as_bytes_mut());
            } else if !arith.quiet() {
                write_status(out, Status::Hd, ret.as_slice());
            }
        }
        Err(EngineError::NotFound) => miss(req, flags, Status::Nf, out),
        Err(EngineError::Exists) => miss(req, flags, Status::Ex, out),
        Err(e) => out.put_slice(error_line(e)),
    }
}

fn me(req: &Req<'_>, out: &mut BytesMut) {
    match req.ctx.get(req.vb, req.key, req.now) {
        Ok(hit) => {
            let exp = if hit.exptime == 0 {
                -1
            } else {
                i64::from(hit.exptime) - i64::from(req.now)
            };
            out.put_slice(b"ME ");
            out.put_slice(req.key);
            let line = format!(
                " exp={exp} la=0 cas={} fetch=no cls=1 size={}\r\n",
                hit.cas,
                hit.value.len()
            );
            out.put_slice(line.as_bytes());
        }
        Err(EngineError::NotFound) => out.put_slice(b"EN\r\n"),
        Err(e) => out.put_slice(error_line(e)),
    }
}

/// A non-success status with the echo flags (`O`, `k`, `b`) only.
fn miss(req: &Req<'_>, flags: &MetaFlags, status: Status, out: &mut BytesMut) {
    let ret = req.returned(flags, None, None);
    write_status(out, status, ret.as_slice());
}

/// A u64 in decimal, on the stack.
struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn as_bytes_mut(&mut self) -> &[u8] {
        &self.buf[self.start..]
    }
}

fn itoa_buf(mut n: u64) -> Digits {
    let mut buf = [0u8; 20];
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    Digits { buf, start }
}
