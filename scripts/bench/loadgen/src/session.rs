//! Sans-IO connection state. A [`Session`] decides what to send
//! ([`Session::fill`]), matches every reply to the request it answers and
//! checks it ([`Session::on_bytes`]), and records what happened in its
//! [`ConnStats`]. The socket loop around it lives in `conn.rs`.
//!
//! Timing: a request's clock starts at its *intended* send time. In a closed
//! loop that is the moment it is written; in an open loop it is the slot the
//! schedule gave it, even when a full pipeline kept it from being written
//! then (coordinated-omission correction). The clock stops when the reply
//! has been read and parsed.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ascii::{self, Frame};
use crate::binary::{self, Response};
use crate::config::{Config, Protocol};
use crate::data::{self, FLAGS};
use crate::meta;
use crate::rng::{self, SplitMix64};
use crate::stats::{ConnStats, ErrorKind};

/// Settings shared by every connection of a run, fixed when the clock starts.
#[derive(Debug)]
pub struct Plan {
    /// Wire protocol.
    pub protocol: Protocol,
    /// Key prefix bytes.
    pub prefix: Vec<u8>,
    /// Key space size.
    pub keys: u64,
    /// Value pattern ([`data::value_template`]).
    pub value: Vec<u8>,
    /// Fraction of gets, and the matching [`rng::threshold`].
    pub get_ratio: f64,
    get_threshold: u64,
    /// Keys per get.
    pub multiget: usize,
    /// Requests in flight per connection.
    pub pipeline: usize,
    /// Open loop: nanoseconds between two intended sends of one connection.
    pub interval_ns: Option<f64>,
    /// Number of connections (spreads the open-loop schedules).
    pub connections: usize,
    /// When load starts (warmup included).
    pub start: Instant,
    /// When recording starts.
    pub measure_start: Instant,
    /// When sending stops.
    pub end: Instant,
    /// Seed from which each connection derives its generator.
    pub seed: u64,
}

impl Plan {
    /// The plan for `config`, with load starting at `start`.
    pub fn new(config: &Config, start: Instant) -> Plan {
        let measure_start = start + config.warmup;
        Plan {
            protocol: config.protocol,
            prefix: config.key_prefix.as_bytes().to_vec(),
            keys: config.keys,
            value: data::value_template(config.value_size),
            get_ratio: config.get_ratio,
            get_threshold: rng::threshold(config.get_ratio),
            multiget: config.multiget,
            pipeline: config.pipeline,
            interval_ns: config
                .open_loop()
                .then(|| config.connections as f64 * 1e9 / config.rate),
            connections: config.connections,
            start,
            measure_start,
            end: measure_start + config.duration,
            seed: config.seed,
        }
    }

    /// True when a request intended at `t` belongs to the measured window.
    fn measured(&self, t: Instant) -> bool {
        t >= self.measure_start && t < self.end
    }
}

/// Why a connection was given up. Each is counted once as an error.
#[derive(Debug)]
pub enum Abort {
    /// Bytes that are not a reply, or a reply that fits no request.
    Protocol(&'static str),
    /// The server answered with an error after which framing is uncertain.
    Reply(ErrorKind, &'static str),
    /// Reading or writing failed.
    Io(io::Error),
    /// The server closed the connection.
    Closed,
    /// Replies were still outstanding at the drain deadline.
    Timeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Get,
    Set,
}

/// A request written (or about to be) and not yet answered. Its keys are the
/// first `remaining` entries of `Session::keys`.
#[derive(Debug)]
struct Pending {
    kind: Kind,
    /// Keys asked for.
    total: u32,
    /// Keys whose reply has not been seen yet.
    remaining: u32,
    hits: u32,
    misses: u32,
    /// When the latency clock starts.
    intended: Instant,
    /// Opaque of the response that completes it (binary).
    opaque: u32,
}

/// One connection's state. See the module documentation.
#[derive(Debug)]
pub struct Session {
    plan: Arc<Plan>,
    rng: SplitMix64,
    pending: VecDeque<Pending>,
    /// Key indexes of the pending requests, in order.
    keys: VecDeque<u64>,
    /// Next opaque for a completing binary response.
    opaque: u32,
    /// Open loop: the intended time of the next request.
    next_intended: Instant,
    /// Open loop: this connection's offset into the schedule, so connections
    /// do not all send at the same instant.
    phase_ns: f64,
    /// Open loop: requests scheduled so far.
    scheduled: u64,
    /// What happened.
    pub stats: ConnStats,
}

impl Session {
    /// The session of connection number `id`.
    pub fn new(plan: Arc<Plan>, id: usize) -> Session {
        let phase_ns = plan
            .interval_ns
            .map_or(0.0, |gap| gap * id as f64 / plan.connections as f64);
        Session {
            rng: SplitMix64::new(plan.seed ^ (id as u64).wrapping_mul(0xA076_1D64_78BD_642F)),
            pending: VecDeque::with_capacity(plan.pipeline),
            keys: VecDeque::with_capacity(plan.pipeline * plan.multiget),
            opaque: 0,
            next_intended: plan.start + Duration::from_nanos(phase_ns as u64),
            phase_ns,
            scheduled: 0,
            stats: ConnStats::new(plan.interval_ns.is_some()),
            plan,
        }
    }

    /// The shared plan.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// True while replies are outstanding.
    pub fn awaiting_reply(&self) -> bool {
        !self.pending.is_empty()
    }

    /// True when nothing is outstanding and nothing more will be sent.
    pub fn done(&self, now: Instant) -> bool {
        self.pending.is_empty()
            && (now >= self.plan.end
                || (self.plan.interval_ns.is_some() && self.next_intended >= self.plan.end))
    }

    /// Open loop: when the next request is due, if a pipeline slot is free for
    /// it and it falls before the end. `None` in a closed loop.
    pub fn next_send(&self) -> Option<Instant> {
        (self.plan.interval_ns.is_some()
            && self.pending.len() < self.plan.pipeline
            && self.next_intended < self.plan.end)
            .then_some(self.next_intended)
    }

    /// Appends to `out` every request that may be sent at `now`: in a closed
    /// loop, one per free pipeline slot; in an open loop, those whose
    /// intended time has come, as far as free slots allow.
    pub fn fill(&mut self, out: &mut Vec<u8>, now: Instant) {
        if now >= self.plan.end {
            return;
        }
        while self.pending.len() < self.plan.pipeline {
            let intended = match self.plan.interval_ns {
                None => now,
                Some(gap) => {
                    let due = self.next_intended;
                    if due > now || due >= self.plan.end {
                        break;
                    }
                    self.scheduled += 1;
                    let offset = self.phase_ns + self.scheduled as f64 * gap;
                    self.next_intended = self.plan.start + Duration::from_nanos(offset as u64);
                    if let Some(lag) = self
                        .stats
                        .send_lag
                        .as_mut()
                        .filter(|_| self.plan.measured(due))
                    {
                        lag.saturating_record(nanos(now - due));
                    }
                    due
                }
            };
            self.push_request(out, intended);
        }
    }

    fn push_request(&mut self, out: &mut Vec<u8>, intended: Instant) {
        let plan = &*self.plan;
        let is_get = plan.get_ratio >= 1.0 || self.rng.next_u64() < plan.get_threshold;
        let opaque = self.opaque;
        self.opaque = self.opaque.wrapping_add(1);
        let kind = if is_get {
            let first = self.keys.len();
            for _ in 0..plan.multiget {
                self.keys.push_back(self.rng.below(plan.keys));
            }
            let keys = self.keys.range(first..).copied();
            match plan.protocol {
                Protocol::Ascii => ascii::encode_get(out, &plan.prefix, keys),
                Protocol::Binary if plan.multiget == 1 => {
                    let idx = self.keys[first];
                    binary::encode_get(out, binary::OP_GETK, &plan.prefix, idx, opaque);
                }
                Protocol::Binary => {
                    for (position, idx) in keys.enumerate() {
                        binary::encode_get(
                            out,
                            binary::OP_GETKQ,
                            &plan.prefix,
                            idx,
                            position as u32,
                        );
                    }
                    binary::encode_noop(out, opaque);
                }
                Protocol::Meta => {
                    for idx in keys {
                        meta::encode_get(out, &plan.prefix, idx);
                    }
                }
            }
            Kind::Get
        } else {
            let idx = self.rng.below(plan.keys);
            self.keys.push_back(idx);
            match plan.protocol {
                Protocol::Ascii => ascii::encode_set(out, &plan.prefix, idx, &plan.value),
                Protocol::Binary => binary::encode_set(out, &plan.prefix, idx, &plan.value, opaque),
                Protocol::Meta => meta::encode_set(out, &plan.prefix, idx, &plan.value),
            }
            Kind::Set
        };
        let total = if is_get { plan.multiget as u32 } else { 1 };
        self.pending.push_back(Pending {
            kind,
            total,
            remaining: total,
            hits: 0,
            misses: 0,
            intended,
            opaque,
        });
    }

    /// Consumes every whole reply at the start of `buf`, read at `now`.
    /// Returns how many bytes were used; the rest is an incomplete reply.
    pub fn on_bytes(&mut self, buf: &[u8], now: Instant) -> Result<usize, Abort> {
        let mut used = 0;
        while used < buf.len() {
            let rest = &buf[used..];
            let parsed = match self.plan.protocol {
                Protocol::Ascii => {
                    ascii::parse_frame(rest).map(|(frame, n)| (Reply::Ascii(frame), n))
                }
                Protocol::Binary => {
                    binary::parse_response(rest).map(|(r, n)| (Reply::Binary(r), n))
                }
                Protocol::Meta => meta::parse_frame(rest).map(|(frame, n)| (Reply::Meta(frame), n)),
            };
            let (reply, n) = match parsed {
                Ok(parsed) => parsed,
                Err(e) if e.is_incomplete() => break,
                Err(e) => return Err(Abort::Protocol(e.reason())),
            };
            match reply {
                Reply::Ascii(frame) => self.on_ascii(frame, rest, now)?,
                Reply::Binary(response) => self.on_binary(&response, rest, now)?,
                Reply::Meta(frame) => self.on_meta(frame, rest, now)?,
            }
            used += n;
        }
        Ok(used)
    }

    fn on_ascii(&mut self, frame: Frame, buf: &[u8], now: Instant) -> Result<(), Abort> {
        let head = self
            .pending
            .front_mut()
            .ok_or(Abort::Protocol("reply with no request outstanding"))?;
        match (head.kind, frame) {
            (Kind::Get, Frame::Value { key, flags, data }) => {
                let key = &buf[key];
                let prefix = &self.plan.prefix;
                // memcached answers hits only, in request order: every key
                // skipped on the way to this one was a miss.
                let skipped = self
                    .keys
                    .iter()
                    .take(head.remaining as usize)
                    .position(|&idx| data::key_matches(key, prefix, idx))
                    .ok_or(Abort::Protocol("VALUE for a key that was not asked for"))?;
                let idx = self.keys[skipped];
                self.keys.drain(..=skipped);
                head.misses += skipped as u32;
                head.remaining -= skipped as u32 + 1;
                if flags == FLAGS && data::value_matches(&buf[data], &self.plan.value, idx) {
                    head.hits += 1;
                } else {
                    self.stats.error(
                        ErrorKind::BadValue,
                        1,
                        "get hit with wrong flags, length or content",
                    );
                }
                Ok(())
            }
            (Kind::Get, Frame::End) => {
                head.misses += head.remaining;
                self.keys.drain(..head.remaining as usize);
                self.complete(now);
                Ok(())
            }
            (Kind::Set, Frame::Stored) => {
                self.keys.pop_front();
                self.complete(now);
                Ok(())
            }
            (Kind::Set, Frame::NotStored | Frame::Exists | Frame::NotFound) => {
                self.stats.error(ErrorKind::NotStored, 1, "set not stored");
                self.keys.pop_front();
                self.complete(now);
                Ok(())
            }
            (Kind::Set, Frame::ServerError(_)) => {
                self.stats
                    .error(ErrorKind::ServerError, 1, "SERVER_ERROR to a set");
                self.keys.pop_front();
                self.complete(now);
                Ok(())
            }
            (Kind::Get, Frame::ServerError(_)) => Err(Abort::Reply(
                ErrorKind::ServerError,
                "SERVER_ERROR to a get",
            )),
            (_, Frame::Error | Frame::ClientError(_)) => Err(Abort::Reply(
                ErrorKind::ClientError,
                "ERROR or CLIENT_ERROR to a valid request",
            )),
            _ => Err(Abort::Protocol("reply does not fit the request")),
        }
    }

    /// Every `mg` and `ms` has exactly one reply, in order: a reply answers
    /// the next key of the request at the head of the queue, and the
    /// request is complete when all its keys are answered. The reply carries
    /// no key (`mg <key> v` asks for none): the value's stamp tells whose it
    /// is.
    fn on_meta(&mut self, frame: meta::Frame, buf: &[u8], now: Instant) -> Result<(), Abort> {
        let head = self
            .pending
            .front_mut()
            .ok_or(Abort::Protocol("reply with no request outstanding"))?;
        match (head.kind, frame) {
            (Kind::Get, meta::Frame::Value { data }) => {
                let idx = self.keys.pop_front().unwrap_or_default();
                if data::value_matches(&buf[data], &self.plan.value, idx) {
                    head.hits += 1;
                } else {
                    self.stats.error(
                        ErrorKind::BadValue,
                        1,
                        "get hit with wrong length or content",
                    );
                }
            }
            (Kind::Get, meta::Frame::Miss) => {
                self.keys.pop_front();
                head.misses += 1;
            }
            (Kind::Get, meta::Frame::ServerError(_)) => {
                self.keys.pop_front();
                self.stats
                    .error(ErrorKind::ServerError, 1, "SERVER_ERROR to a get");
            }
            (Kind::Set, meta::Frame::Stored) => {
                self.keys.pop_front();
            }
            (Kind::Set, meta::Frame::NotStored | meta::Frame::Exists | meta::Frame::NotFound) => {
                self.stats.error(ErrorKind::NotStored, 1, "set not stored");
                self.keys.pop_front();
            }
            (Kind::Set, meta::Frame::ServerError(_)) => {
                self.stats
                    .error(ErrorKind::ServerError, 1, "SERVER_ERROR to a set");
                self.keys.pop_front();
            }
            (_, meta::Frame::Error | meta::Frame::ClientError(_)) => {
                return Err(Abort::Reply(
                    ErrorKind::ClientError,
                    "ERROR or CLIENT_ERROR to a valid request",
                ))
            }
            _ => return Err(Abort::Protocol("reply does not fit the request")),
        }
        head.remaining -= 1;
        if head.remaining == 0 {
            self.complete(now);
        }
        Ok(())
    }

    fn on_binary(&mut self, r: &Response, buf: &[u8], now: Instant) -> Result<(), Abort> {
        let head = self
            .pending
            .front_mut()
            .ok_or(Abort::Protocol("response with no request outstanding"))?;
        let completes = r.opaque == head.opaque;
        match (head.kind, r.opcode) {
            (Kind::Set, binary::OP_SET) if completes => {
                match r.status {
                    binary::STATUS_OK => {}
                    binary::STATUS_KEY_EXISTS | binary::STATUS_NOT_STORED => {
                        self.stats.error(ErrorKind::NotStored, 1, "set not stored")
                    }
                    _ => self
                        .stats
                        .error(ErrorKind::ServerError, 1, "error status to a set"),
                }
                self.keys.pop_front();
                self.complete(now);
                Ok(())
            }
            (Kind::Get, binary::OP_GETK) if completes && head.total == 1 => {
                let idx = self.keys.pop_front().unwrap_or_default();
                head.remaining = 0;
                match r.status {
                    binary::STATUS_OK => {
                        if check_hit(&self.plan, r, buf, idx) {
                            head.hits += 1;
                        } else {
                            self.stats.error(
                                ErrorKind::BadValue,
                                1,
                                "get hit with wrong key, flags, length or content",
                            );
                        }
                    }
                    binary::STATUS_KEY_NOT_FOUND => head.misses += 1,
                    _ => self
                        .stats
                        .error(ErrorKind::ServerError, 1, "error status to a get"),
                }
                self.complete(now);
                Ok(())
            }
            (Kind::Get, binary::OP_GETKQ) if head.total > 1 => {
                // The opaque of a GETKQ is the key's position in the multiget.
                let next = (head.total - head.remaining) as usize;
                let position = r.opaque as usize;
                if position < next || position >= head.total as usize {
                    return Err(Abort::Protocol("GETKQ response out of order"));
                }
                let skipped = position - next;
                let idx = self.keys[skipped];
                self.keys.drain(..=skipped);
                head.misses += skipped as u32;
                head.remaining -= skipped as u32 + 1;
                match r.status {
                    binary::STATUS_OK => {
                        if check_hit(&self.plan, r, buf, idx) {
                            head.hits += 1;
                        } else {
                            self.stats.error(
                                ErrorKind::BadValue,
                                1,
                                "get hit with wrong key, flags, length or content",
                            );
                        }
                    }
                    binary::STATUS_KEY_NOT_FOUND => head.misses += 1,
                    _ => self
                        .stats
                        .error(ErrorKind::ServerError, 1, "error status to a get"),
                }
                Ok(())
            }
            (Kind::Get, binary::OP_NOOP) if completes && head.total > 1 => {
                head.misses += head.remaining;
                self.keys.drain(..head.remaining as usize);
                self.complete(now);
                Ok(())
            }
            _ => Err(Abort::Protocol("response does not fit the request")),
        }
    }

    /// Retires the request at the head of the queue, answered at `now`.
    fn complete(&mut self, now: Instant) {
        let Some(done) = self.pending.pop_front() else {
            return;
        };
        if !self.plan.measured(done.intended) {
            return;
        }
        self.stats
            .latency
            .saturating_record(nanos(now - done.intended));
        match done.kind {
            Kind::Get => {
                self.stats.gets += 1;
                self.stats.get_keys += u64::from(done.total);
                self.stats.hits += u64::from(done.hits);
                self.stats.misses += u64::from(done.misses);
            }
            Kind::Set => self.stats.sets += 1,
        }
    }

    /// Records why the connection was given up.
    pub fn abort(&mut self, why: Abort) {
        self.stats.lost = true;
        match why {
            Abort::Protocol(detail) => self.stats.error(ErrorKind::Protocol, 1, detail),
            Abort::Reply(kind, detail) => self.stats.error(kind, 1, detail),
            Abort::Io(e) => self.stats.error(ErrorKind::Io, 1, &e.to_string()),
            Abort::Closed => self
                .stats
                .error(ErrorKind::Io, 1, "server closed the connection"),
            Abort::Timeout => {
                let outstanding = self.pending.len() as u64;
                self.stats.error(
                    ErrorKind::Timeout,
                    outstanding,
                    "no reply before the drain deadline",
                );
            }
        }
    }

    /// Ends the session: counts the open-loop requests that were due in the
    /// window but never sent, and returns the stats.
    pub fn finish(mut self) -> ConnStats {
        if let Some(gap) = self.plan.interval_ns {
            let from = self.next_intended.max(self.plan.measure_start);
            if from < self.plan.end {
                let behind = (self.plan.end - from).as_nanos() as f64 / gap;
                self.stats.unsent += behind.ceil() as u64;
            }
        }
        self.stats
    }
}

/// A parsed reply of any protocol.
enum Reply {
    Ascii(Frame),
    Binary(Response),
    Meta(meta::Frame),
}

/// True when a binary get hit carries key `idx`, the flags and its value.
fn check_hit(plan: &Plan, r: &Response, buf: &[u8], idx: u64) -> bool {
    data::key_matches(&buf[r.key.clone()], &plan.prefix, idx)
        && r.flags(buf) == Some(FLAGS)
        && data::value_matches(&buf[r.value.clone()], &plan.value, idx)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
