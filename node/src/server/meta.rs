//! The meta front end (`mg ms md ma mn me`): runs one parsed
//! [`MetaCommand`] and appends memcached 1.6's reply.
//!
//! Return flags are written in request order, on misses too (`EN k… O…`),
//! then the recache markers `Z X W`, as memcached 1.6.18 does; the item
//! state behind `h l N R I` is the engine's (`MetaGetRequest`, `invalidate`,
//! `store_invalidating`). The same executor serves a client speaking meta
//! to the node and a proxy's meta envelope (`execute_in` with the vbucket
//! the envelope names).

use bytes::{BufMut, Bytes, BytesMut};
use shoal_protocol::meta::{
    base64, write_status, write_value, ArithMode, Echo, Flag, ItemFields, Markers, MetaArith,
    MetaCommand, MetaDelete, MetaFlags, MetaGet, MetaSet, ReturnFlag, ReturnFlags, SetMode, Status,
};

use super::ascii::error_line;
use super::Flow;
use crate::bucket::LiveBucket;
use shoal_engine::{
    resolve_exptime, ArithCreate, ArithOp, ArithRequest, EngineError, Hit, MetaGetRequest,
    StoreMode, StoreRequest, VbucketId,
};

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

/// Runs `cmd`, parsed from `frame`, appending its reply (if any) to `out`;
/// the key's vbucket is the bucket's hash of it.
pub(super) fn execute(
    ctx: &LiveBucket,
    frame: &[u8],
    cmd: &MetaCommand,
    out: &mut BytesMut,
) -> Flow {
    match execute_in(ctx, Vbucket::OfKey, frame, cmd, out) {
        Ok(flow) => flow,
        Err(e) => {
            out.put_slice(error_line(e));
            Flow::Read
        }
    }
}

/// Which vbucket a request addresses.
#[derive(Clone, Copy, Debug)]
pub(super) enum Vbucket {
    /// The bucket's hash of the key (a client speaking meta to the node).
    OfKey,
    /// This one (a proxy's meta envelope names it).
    Given(VbucketId),
}

/// Runs `cmd` and appends its meta reply. The errors that are about the
/// request's routing rather than its item — not my vbucket, a temporary
/// failure — come back as `Err` without a reply, so the binary envelope can
/// answer them with a status a proxy acts on; everything else is in `out`.
pub(super) fn execute_in(
    ctx: &LiveBucket,
    vbucket: Vbucket,
    frame: &[u8],
    cmd: &MetaCommand,
    out: &mut BytesMut,
) -> Result<Flow, EngineError> {
    let mut key_buf = [0u8; MAX_KEY];
    let key = match cmd.key() {
        None => &[][..],
        Some(span) if cmd.base64() => match base64::decode_into(span.of(frame), &mut key_buf) {
            Some(len) if len > 0 => &key_buf[..len],
            _ => {
                out.put_slice(b"CLIENT_ERROR error decoding key\r\n");
                return Ok(Flow::Read);
            }
        },
        Some(span) => span.of(frame),
    };
    let req = Req {
        ctx,
        frame,
        key,
        base64: cmd.base64(),
        vb: match vbucket {
            Vbucket::OfKey => ctx.vbucket_of(key),
            Vbucket::Given(vb) => vb,
        },
        now: ctx.clock.now(),
    };
    match cmd {
        MetaCommand::Get(get) => {
            mg(&req, get, out)?;
            let writes = get.flags.has(Flag::Ttl) || get.flags.has(Flag::Vivify);
            Ok(if writes { Flow::Wrote } else { Flow::Read })
        }
        MetaCommand::Set(set) => ms(&req, set, out).map(|()| Flow::Wrote),
        MetaCommand::Delete(delete) => md(&req, delete, out).map(|()| Flow::Wrote),
        MetaCommand::Arith(arith) => ma(&req, arith, out).map(|()| Flow::Wrote),
        MetaCommand::Noop => {
            out.put_slice(b"MN\r\n");
            Ok(Flow::Read)
        }
        MetaCommand::Debug(_) => me(&req, out).map(|()| Flow::Read),
    }
}

/// One request's decoded key and routing.
#[derive(Clone, Copy)]
struct Req<'a> {
    ctx: &'a LiveBucket,
    frame: &'a [u8],
    key: &'a [u8],
    base64: bool,
    vb: VbucketId,
    now: u32,
}

impl<'a> Req<'a> {
    /// What `flags` asks to return: item fields from `hit`, the new CAS
    /// of a write from `cas`, and the echoes (`k`, `O`) always.
    fn returned(&self, flags: &MetaFlags, hit: Option<&Hit>, cas: Option<u64>) -> ReturnFlags<'a> {
        let mut item = hit.map_or_else(ItemFields::default, |h| hit_fields(h, self.now));
        if cas.is_some() {
            item.cas = cas;
        }
        self.collect(flags, item)
    }

    /// The return flags `flags` asks for out of `item`, with the echoes.
    fn collect(&self, flags: &MetaFlags, item: ItemFields) -> ReturnFlags<'a> {
        let echo = Echo {
            frame: self.frame,
            key: self.key,
            base64: self.base64,
        };
        ReturnFlags::collect(flags, &echo, item)
    }
}

/// What a hit offers to return (`c f s t`).
fn hit_fields(hit: &Hit, now: u32) -> ItemFields {
    ItemFields {
        cas: Some(hit.cas),
        client_flags: Some(hit.flags),
        size: Some(hit.value.len() as u64),
        ttl: Some(ttl_left(hit.exptime, now)),
        ..ItemFields::default()
    }
}

/// Seconds an item has left, `-1` for none (meta `t`, `me`'s `exp`).
fn ttl_left(exptime: u32, now: u32) -> i64 {
    if exptime == 0 {
        -1
    } else {
        i64::from(exptime) - i64::from(now)
    }
}

/// An engine error as the reply: the routing ones go back to the caller
/// (see [`execute_in`]), the others are memcached's error line.
fn fail(e: EngineError, out: &mut BytesMut) -> Result<(), EngineError> {
    match e {
        EngineError::NotMyVbucket | EngineError::TempFail | EngineError::ValueEjected => Err(e),
        other => {
            out.put_slice(error_line(other));
            Ok(())
        }
    }
}

fn mg(req: &Req<'_>, get: &MetaGet, out: &mut BytesMut) -> Result<(), EngineError> {
    let (ctx, vb, key, now) = (req.ctx, req.vb, req.key, req.now);
    let flags = &get.flags;
    let resolve = |t: shoal_protocol::Exptime| resolve_exptime(t.0, now);
    let request = MetaGetRequest {
        touch: flags.ttl().map(resolve),
        vivify: flags.vivify_ttl().map(resolve),
        recache: flags.recache_ttl().map(resolve),
        bump: !flags.has(Flag::NoBump),
    };
    let result = ctx.with_resident(vb, key, now, || ctx.engine.meta_get(vb, key, &request, now));
    let got = match result {
        Ok(got) => got,
        Err(EngineError::NotFound) => {
            if !get.quiet() {
                miss(req, flags, Status::En, out);
            }
            return Ok(());
        }
        Err(e) => return fail(e, out),
    };
    if got.created && req.base64 {
        ctx.engine.mark_binary_key(vb, key);
    }
    // memcached names a hit's key the way it was written.
    let req = &Req {
        base64: got.binary_key || (got.created && req.base64),
        ..*req
    };
    let fields = ItemFields {
        hit_before: Some(got.fetched_before),
        last_access: Some(u64::from(got.idle_secs)),
        ..hit_fields(&got.hit, now)
    };
    let mut ret = req.collect(flags, fields);
    ret.mark(Markers {
        already_won: got.win_sent_before,
        stale: got.stale,
        won: got.won,
    });
    if flags.has(Flag::ReturnValue) {
        write_value(out, ret.as_slice(), &got.hit.value);
    } else {
        write_status(out, Status::Hd, ret.as_slice());
    }
    Ok(())
}

fn ms(req: &Req<'_>, set: &MetaSet, out: &mut BytesMut) -> Result<(), EngineError> {
    let (ctx, vb, key, now) = (req.ctx, req.vb, req.key, req.now);
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
    let invalidate = flags.has(Flag::Invalidate);
    let result = ctx.with_resident(vb, key, now, || {
        if invalidate {
            ctx.engine.store_invalidating(vb, &store, now)
        } else {
            ctx.engine.store(vb, &store, now)
        }
    });
    match result {
        Ok(m) => {
            if req.base64 {
                ctx.engine.mark_binary_key(vb, key);
            }
            if !set.quiet() {
                let ret = req.returned(flags, None, Some(m.cas));
                write_status(out, Status::Hd, ret.as_slice());
            }
        }
        Err(EngineError::NotStored) => refused_set(req, flags, Status::Ns, out),
        Err(EngineError::Exists) => refused_set(req, flags, Status::Ex, out),
        Err(EngineError::NotFound) => refused_set(req, flags, Status::Nf, out),
        Err(e) => return fail(e, out),
    }
    Ok(())
}

/// A refused `ms`: the echoes, and `c0` for a `c` flag (nothing was
/// written), in request order, as memcached 1.6.18 answers (`NS c0 k…`).
fn refused_set(req: &Req<'_>, flags: &MetaFlags, status: Status, out: &mut BytesMut) {
    let ret = req.returned(flags, None, Some(0));
    write_status(out, status, ret.as_slice());
}

fn md(req: &Req<'_>, delete: &MetaDelete, out: &mut BytesMut) -> Result<(), EngineError> {
    let (ctx, vb, key, now) = (req.ctx, req.vb, req.key, req.now);
    let flags = &delete.flags;
    let cas = flags.compare_cas().unwrap_or(0);
    let result = if flags.has(Flag::Invalidate) {
        // `I`: mark stale (new CAS, `T` if given) instead of removing.
        let exptime = flags.ttl().map(|t| resolve_exptime(t.0, now));
        ctx.with_resident(vb, key, now, || {
            ctx.engine.invalidate(vb, key, cas, exptime, now)
        })
    } else {
        ctx.engine.delete(vb, key, cas, now)
    };
    match result {
        Ok(_) => {
            if !delete.quiet() {
                let ret = req.returned(flags, None, None);
                write_status(out, Status::Hd, ret.as_slice());
            }
        }
        Err(EngineError::NotFound) => miss(req, flags, Status::Nf, out),
        Err(EngineError::Exists) => miss(req, flags, Status::Ex, out),
        Err(e) => return fail(e, out),
    }
    Ok(())
}

fn ma(req: &Req<'_>, arith: &MetaArith, out: &mut BytesMut) -> Result<(), EngineError> {
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
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(EngineError::NotFound) => {
            miss(req, flags, Status::Nf, out);
            return Ok(());
        }
        Err(EngineError::Exists) => {
            miss(req, flags, Status::Ex, out);
            return Ok(());
        }
        Err(e) => return fail(e, out),
    };
    if outcome.created && req.base64 {
        ctx.engine.mark_binary_key(vb, key);
    }
    // `T<ttl>` gives the counter a new TTL once the change is made
    // (memcached sets it while writing the reply, under the item lock;
    // here it is a touch right after, which keeps the CAS). Where
    // memcached lets the later of `T` and `N` win on a created counter,
    // or a `t` before `T` read the old TTL, `T` wins here and `t` reads
    // the new one.
    if let Some(ttl) = flags.ttl() {
        let exptime = resolve_exptime(ttl.0, now);
        // The change is acknowledged whatever happens here: a delete that
        // slipped in between leaves nothing to touch.
        let _ = ctx.with_resident(vb, key, now, || ctx.engine.touch(vb, key, exptime, now));
    }
    // `t` wants the counter's TTL, which the engine does not return with
    // the outcome; read it back under the same clock.
    let hit = flags
        .has(Flag::ReturnTtl)
        .then(|| ctx.get(vb, key, now).ok())
        .flatten();
    let mut ret = req.returned(flags, hit.as_ref(), Some(outcome.cas));
    // memcached's `ma` returns `c`, `t` and the echoes only: `f` and `s`
    // are `mg`'s.
    ret.keep(|flag| !matches!(flag, ReturnFlag::ClientFlags(_) | ReturnFlag::Size(_)));
    // `q` hides the success, value or not, but not a counter's creation
    // (memcached 1.6.18 skips the reply only on its increment path).
    if arith.quiet() && !outcome.created {
        return Ok(());
    }
    if flags.has(Flag::ReturnValue) {
        let mut digits = itoa_buf(outcome.value);
        write_value(out, ret.as_slice(), digits.as_bytes_mut());
    } else {
        write_status(out, Status::Hd, ret.as_slice());
    }
    Ok(())
}

/// `me`: memcached's debug line about one item, from what Shoal keeps:
/// `la` and `fetch` are real; `cls` (a slab class) is always 1 and `size`
/// is key plus value.
fn me(req: &Req<'_>, out: &mut BytesMut) -> Result<(), EngineError> {
    let (ctx, vb, key, now) = (req.ctx, req.vb, req.key, req.now);
    let peek = MetaGetRequest::default();
    match ctx.with_resident(vb, key, now, || ctx.engine.meta_get(vb, key, &peek, now)) {
        Ok(got) => {
            out.put_slice(b"ME ");
            write_me_key(key, got.binary_key, out);
            let line = format!(
                " exp={} la={} cas={} fetch={} cls=1 size={}\r\n",
                ttl_left(got.hit.exptime, now),
                got.idle_secs,
                got.hit.cas,
                if got.fetched_before { "yes" } else { "no" },
                key.len() + got.hit.value.len()
            );
            out.put_slice(line.as_bytes());
            Ok(())
        }
        Err(EngineError::NotFound) => {
            out.put_slice(b"EN\r\n");
            Ok(())
        }
        Err(e) => fail(e, out),
    }
}

/// `me`'s key the way it was written (base64 stays base64).
fn write_me_key(key: &[u8], binary: bool, out: &mut BytesMut) {
    if binary {
        base64::encode_to(out, key);
    } else {
        out.put_slice(key);
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
