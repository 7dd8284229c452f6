//! The request vocabulary and the two ways of sending it that the
//! pipelining law compares: every request of a stream, refused or accepted,
//! in any of the three protocols, gets exactly its own reply in order, so
//! sending the stream in one go (in any chunks) gives the same bytes as
//! sending each request alone and waiting for its reply.
//!
//! Shared by the property test `tests/proxy_pipeline.rs` and the fuzz
//! target `fuzz/fuzz_targets/proxy_pipeline.rs` (which includes this file
//! by path), so it uses only std and tokio's I/O traits.
//!
//! - [`TEMPLATES`]: requests the proxy accepts, requests it refuses
//!   (unknown verbs, bad flags and numbers, over-long keys, data blocks of
//!   the wrong length, binary frames with unknown opcodes or bad extras),
//!   and, last, requests after which the connection may close. Every
//!   template is *self-contained*: its bytes end where the server's framing
//!   of them ends, whatever follows, so the request after it is parsed the
//!   same way in both runs.
//! - [`one_at_a_time`] and [`pipelined`]: the two runs, over any byte
//!   stream.
//! - [`normalize`]: what may differ between two runs that start from the
//!   same data under different key prefixes — the CAS values and the
//!   prefix itself — replaced by placeholders.

#![allow(dead_code)] // each includer uses a different subset

use std::fmt::Write as _;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest value the proxy and the node under test accept: small, so the
/// "too large" templates stay cheap to send.
pub const MAX_VALUE: usize = 2048;

/// Longest ASCII line the proxy under test accepts (its default).
pub const MAX_LINE: usize = 8 * 1024;

/// The proxy both runs use: a static ring over the one node at `server`,
/// parsing with the limits above, and two connections to the node, so a
/// session's requests must reach it in order by the session's affinity,
/// not by there being one connection.
pub fn proxy_config(server: shoal_vbmap::config::ServerAddr) -> shoal_proxy::ProxyConfig {
    use shoal_proxy::downstream::DownstreamConfig;
    use shoal_proxy::{MapSource, ProxyConfig};
    ProxyConfig {
        source: MapSource::Static {
            servers: vec![server],
            weights: vec![1],
        },
        port: 0,
        admin_port: 0,
        downstream: DownstreamConfig {
            limits: shoal_protocol::Limits {
                max_value_len: MAX_VALUE,
                max_line_len: MAX_LINE,
                ..shoal_protocol::Limits::default()
            },
            connections_per_node: 2,
            ..DownstreamConfig::default()
        },
        max_value_len: MAX_VALUE,
        ..ProxyConfig::default()
    }
    .validate()
    .expect("valid proxy config")
}

/// Key names; a run puts its own prefix before each.
pub const KEYS: [&str; 4] = ["a", "b", "n", "c"];

/// The opaque of the binary NOOP that follows each request in the
/// one-at-a-time run. Templates use opaques below 2^16, so its reply is
/// never mistaken for one of theirs.
pub const SENTINEL_OPAQUE: u32 = 0xC0DE_5E47;

/// A CAS unique no item has: a compare against it fails alike in both runs
/// (a small number could be some item's real CAS in one run only).
pub const BOGUS_CAS: u64 = 0xDEAD_BEEF_0000_0001;

/// How long one reply may take before the run counts as hung.
pub const REPLY_BOUND: Duration = Duration::from_secs(10);

/// What a template's request is, for the generators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Parsed and served (its reply may still be a miss or an error from
    /// the node).
    Accepted,
    /// Refused by the proxy's parser or front end, after which the stream
    /// goes on.
    Refused,
    /// The connection may close after it: only ever last in a stream.
    Closing,
}

/// The values a template fills in.
#[derive(Clone, Debug)]
pub struct Args {
    /// The key (prefix and name).
    pub key: String,
    /// A second key, for multi-gets (may equal `key`).
    pub key2: String,
    /// A number: delta, flags, initial value, or a choice among variants.
    pub num: u64,
    /// A value (printable ASCII, short).
    pub value: String,
    /// A binary opaque or meta `O` token, below 2^16.
    pub opaque: u16,
}

impl Args {
    /// An exptime: none, an hour, or already expired (each behaves the same
    /// in both runs, unlike a TTL that might lapse between them).
    fn ttl(&self) -> i64 {
        [0, 3600, -1][(self.num % 3) as usize]
    }

    fn small(&self) -> u64 {
        self.num % 100
    }

    fn flags(&self) -> u32 {
        self.num as u32
    }

    /// One of `variants`, by `num`.
    fn pick<'a>(&self, variants: &[&'a str]) -> &'a str {
        variants[(self.num as usize / 3) % variants.len()]
    }

    /// A key one byte longer than memcached allows.
    fn long_key(&self) -> String {
        let mut k = self.key.clone();
        while k.len() <= 250 {
            k.push('x');
        }
        k
    }
}

/// One request shape.
#[derive(Debug)]
pub struct Template {
    /// For failure reports.
    pub name: &'static str,
    /// Accepted, refused or closing.
    pub kind: Kind,
    /// Appends the request's bytes.
    pub build: fn(&Args, &mut Vec<u8>),
}

/// A request ready to send.
#[derive(Clone, Debug)]
pub struct Unit {
    /// Its template's name (or `raw`).
    pub name: &'static str,
    /// The bytes.
    pub bytes: Vec<u8>,
    /// The connection may close after it.
    pub closes: bool,
}

impl Unit {
    /// `template` filled with `args`.
    pub fn of(template: &Template, args: &Args) -> Unit {
        let mut bytes = Vec::new();
        (template.build)(args, &mut bytes);
        Unit {
            name: template.name,
            bytes,
            closes: template.kind == Kind::Closing,
        }
    }
}

// === wire helpers ===

fn text(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
}

/// `<line>\r\n<data>\r\n`.
fn with_data(out: &mut Vec<u8>, line: &str, data: &str) {
    text(out, line);
    text(out, "\r\n");
    text(out, data);
    text(out, "\r\n");
}

/// A binary request with the given parts (lengths from the parts).
fn bin(out: &mut Vec<u8>, opcode: u8, extras: &[u8], key: &str, value: &str, a: &Args, cas: u64) {
    let body = extras.len() + key.len() + value.len();
    bin_header(
        out,
        opcode,
        key.len() as u16,
        extras.len() as u8,
        body as u32,
        a.opaque,
        cas,
    );
    out.extend_from_slice(extras);
    text(out, key);
    text(out, value);
}

fn bin_header(
    out: &mut Vec<u8>,
    opcode: u8,
    key_len: u16,
    extras_len: u8,
    body_len: u32,
    opaque: u16,
    cas: u64,
) {
    out.extend_from_slice(&[0x80, opcode]);
    out.extend_from_slice(&key_len.to_be_bytes());
    out.extend_from_slice(&[extras_len, 0, 0, 0]);
    out.extend_from_slice(&body_len.to_be_bytes());
    out.extend_from_slice(&u32::from(opaque).to_be_bytes());
    out.extend_from_slice(&cas.to_be_bytes());
}

/// SET/ADD extras: flags, exptime.
fn store_extras(a: &Args) -> [u8; 8] {
    let mut e = [0u8; 8];
    e[..4].copy_from_slice(&a.flags().to_be_bytes());
    e[4..].copy_from_slice(&(a.ttl() as u32).to_be_bytes());
    e
}

/// INCR/DECR extras: delta, initial, exptime (`u32::MAX`: do not create).
fn arith_extras(a: &Args, create: bool) -> [u8; 20] {
    let mut e = [0u8; 20];
    e[..8].copy_from_slice(&a.small().to_be_bytes());
    e[8..16].copy_from_slice(&a.num.to_be_bytes());
    let exptime: u32 = if create { 0 } else { u32::MAX };
    e[16..].copy_from_slice(&exptime.to_be_bytes());
    e
}

fn ttl_extras(a: &Args) -> [u8; 4] {
    (a.ttl() as u32).to_be_bytes()
}

// Binary opcodes used below (memcached's protocol_binary.h).
const GET: u8 = 0x00;
const SET: u8 = 0x01;
const ADD: u8 = 0x02;
const DELETE: u8 = 0x04;
const INCR: u8 = 0x05;
const DECR: u8 = 0x06;
const QUIT: u8 = 0x07;
const GETQ: u8 = 0x09;
const NOOP: u8 = 0x0a;
const VERSION: u8 = 0x0b;
const GETK: u8 = 0x0c;
const GETKQ: u8 = 0x0d;
const APPEND: u8 = 0x0e;
const SETQ: u8 = 0x11;
const ADDQ: u8 = 0x12;
const DELETEQ: u8 = 0x14;
const INCRQ: u8 = 0x15;
const QUITQ: u8 = 0x17;
const TOUCH: u8 = 0x1c;
const GAT: u8 = 0x1d;
const GATKQ: u8 = 0x24;
/// An opcode nothing assigns.
const UNASSIGNED: u8 = 0xee;

/// The binary NOOP that ends each request in the one-at-a-time run.
pub fn sentinel() -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&[0x80, NOOP, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&SENTINEL_OPAQUE.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out
}

/// The length of `buf` without the sentinel's reply, if `buf` ends with
/// it (a NOOP response with the sentinel's opaque and no body; status and
/// CAS are not looked at).
pub fn strip_sentinel_reply(buf: &[u8]) -> Option<usize> {
    let at = buf.len().checked_sub(24)?;
    let h = &buf[at..];
    let ok = h[0] == 0x81
        && h[1] == NOOP
        && h[2..6] == [0, 0, 0, 0]
        && h[8..12] == [0, 0, 0, 0]
        && h[12..16] == SENTINEL_OPAQUE.to_be_bytes();
    ok.then_some(at)
}

// === the vocabulary ===

macro_rules! templates {
    ($($name:literal, $kind:ident, $build:expr;)*) => {
        &[$(Template { name: $name, kind: Kind::$kind, build: $build }),*]
    };
}

/// Every request shape; [`Kind::Closing`] ones are last.
pub static TEMPLATES: &[Template] = templates![
    // --- classic ASCII, accepted ---
    "get", Accepted, |a, o| text(o, &format!("get {}\r\n", a.key));
    "get2", Accepted, |a, o| text(o, &format!("get {} {}\r\n", a.key, a.key2));
    "gets", Accepted, |a, o| text(o, &format!("gets {}\r\n", a.key));
    "gets3", Accepted, |a, o| text(o, &format!("gets {} {} {}\r\n", a.key, a.key2, a.key));
    "gat", Accepted, |a, o| text(o, &format!("gat {} {}\r\n", a.ttl(), a.key));
    "gats2", Accepted, |a, o| text(o, &format!("gats {} {} {}\r\n", a.ttl(), a.key, a.key2));
    // More keys than one wave of a long get (the session serves it alone).
    "get_long", Accepted, |a, o| {
        text(o, "get");
        for i in 0..70 {
            text(o, " ");
            text(o, if i % 3 == 0 { &a.key2 } else { &a.key });
        }
        text(o, "\r\n");
    };
    "set", Accepted, |a, o| with_data(o, &format!("set {} {} {} {}", a.key, a.flags(), a.ttl(), a.value.len()), &a.value);
    "set_number", Accepted, |a, o| {
        let n = a.small().to_string();
        with_data(o, &format!("set {} 0 0 {}", a.key, n.len()), &n);
    };
    "set_noreply", Accepted, |a, o| with_data(o, &format!("set {} 0 0 {} noreply", a.key, a.value.len()), &a.value);
    "set_crlf_value", Accepted, |a, o| {
        let v = format!("{}\r\n{}", a.value, a.value);
        with_data(o, &format!("set {} 0 0 {}", a.key, v.len()), &v);
    };
    "add", Accepted, |a, o| with_data(o, &format!("add {} 1 0 {}", a.key, a.value.len()), &a.value);
    "replace", Accepted, |a, o| with_data(o, &format!("replace {} 2 0 {}", a.key, a.value.len()), &a.value);
    "append", Accepted, |a, o| with_data(o, &format!("append {} 0 0 {}", a.key, a.value.len()), &a.value);
    "prepend", Accepted, |a, o| with_data(o, &format!("prepend {} 0 0 {}", a.key, a.value.len()), &a.value);
    "cas", Accepted, |a, o| with_data(o, &format!("cas {} 0 0 {} {BOGUS_CAS}", a.key, a.value.len()), &a.value);
    "delete", Accepted, |a, o| text(o, &format!("delete {}\r\n", a.key));
    "delete_noreply", Accepted, |a, o| text(o, &format!("delete {} noreply\r\n", a.key));
    "incr", Accepted, |a, o| text(o, &format!("incr {} {}\r\n", a.key, a.num));
    "decr", Accepted, |a, o| text(o, &format!("decr {} {}\r\n", a.key, a.small()));
    "incr_noreply", Accepted, |a, o| text(o, &format!("incr {} {} noreply\r\n", a.key, a.small()));
    "touch", Accepted, |a, o| text(o, &format!("touch {} {}\r\n", a.key, a.ttl()));
    "touch_noreply", Accepted, |a, o| text(o, &format!("touch {} {} noreply\r\n", a.key, a.ttl()));
    "version", Accepted, |_, o| text(o, "version\r\n");
    "verbosity", Accepted, |_, o| text(o, "verbosity 1\r\n");
    // --- meta, accepted (flags whose answers depend on the clock, `t` and
    // `l`, are left out: they could differ between the two runs) ---
    "mg", Accepted, |a, o| {
        let flags = a.pick(&["", "v", "v f s", "k v", "c v", "O{op} k", "q v", "q k", "v T3600", "s f", "h v", "k O{op} q", "u v"]);
        text(o, &format!("mg {} {}\r\n", a.key, flags.replace("{op}", &a.opaque.to_string())));
    };
    "ms", Accepted, |a, o| {
        let flags = a.pick(&["", "T0 F{num}", "c", "MS", "ME", "MA", "MP", "MR", "q", "k O{op}", "MA q", "C{bogus}", "I", "b"]);
        let flags = flags
            .replace("{num}", &a.flags().to_string())
            .replace("{op}", &a.opaque.to_string())
            .replace("{bogus}", &BOGUS_CAS.to_string());
        // `b` would make the key base64: give it a key that decodes.
        let key = if flags == "b" { "YWJj".to_string() } else { a.key.clone() };
        let flags = if flags == "b" { String::new() } else { flags };
        with_data(o, &format!("ms {key} {} {flags}", a.value.len()), &a.value);
    };
    "md", Accepted, |a, o| {
        let flags = a.pick(&["", "q", "k O{op}", "C{bogus}", "q k"]);
        let flags = flags.replace("{op}", &a.opaque.to_string()).replace("{bogus}", &BOGUS_CAS.to_string());
        text(o, &format!("md {} {flags}\r\n", a.key));
    };
    "ma", Accepted, |a, o| {
        let flags = a.pick(&["", "v", "N0 J{n} v", "MD D{n} v", "q", "MI D{n}", "k O{op} v", "N0 q"]);
        let flags = flags.replace("{n}", &a.small().to_string()).replace("{op}", &a.opaque.to_string());
        text(o, &format!("ma {} {flags}\r\n", a.key));
    };
    "mn", Accepted, |_, o| text(o, "mn\r\n");
    // --- binary, accepted ---
    "bin_get", Accepted, |a, o| bin(o, GET, &[], &a.key, "", a, 0);
    "bin_getq", Accepted, |a, o| bin(o, GETQ, &[], &a.key, "", a, 0);
    "bin_getk", Accepted, |a, o| bin(o, GETK, &[], &a.key, "", a, 0);
    "bin_getkq", Accepted, |a, o| bin(o, GETKQ, &[], &a.key, "", a, 0);
    "bin_set", Accepted, |a, o| bin(o, SET, &store_extras(a), &a.key, &a.value, a, 0);
    "bin_setq", Accepted, |a, o| bin(o, SETQ, &store_extras(a), &a.key, &a.value, a, 0);
    "bin_set_cas", Accepted, |a, o| bin(o, SET, &store_extras(a), &a.key, &a.value, a, BOGUS_CAS);
    "bin_add", Accepted, |a, o| bin(o, ADD, &store_extras(a), &a.key, &a.value, a, 0);
    "bin_addq", Accepted, |a, o| bin(o, ADDQ, &store_extras(a), &a.key, &a.value, a, 0);
    "bin_append", Accepted, |a, o| bin(o, APPEND, &[], &a.key, &a.value, a, 0);
    "bin_delete", Accepted, |a, o| bin(o, DELETE, &[], &a.key, "", a, 0);
    "bin_deleteq", Accepted, |a, o| bin(o, DELETEQ, &[], &a.key, "", a, 0);
    "bin_incr", Accepted, |a, o| bin(o, INCR, &arith_extras(a, true), &a.key, "", a, 0);
    "bin_incrq", Accepted, |a, o| bin(o, INCRQ, &arith_extras(a, true), &a.key, "", a, 0);
    "bin_decr", Accepted, |a, o| bin(o, DECR, &arith_extras(a, false), &a.key, "", a, 0);
    "bin_touch", Accepted, |a, o| bin(o, TOUCH, &ttl_extras(a), &a.key, "", a, 0);
    "bin_gat", Accepted, |a, o| bin(o, GAT, &ttl_extras(a), &a.key, "", a, 0);
    "bin_gatkq", Accepted, |a, o| bin(o, GATKQ, &ttl_extras(a), &a.key, "", a, 0);
    "bin_noop", Accepted, |a, o| bin(o, NOOP, &[], "", "", a, 0);
    "bin_version", Accepted, |a, o| bin(o, VERSION, &[], "", "", a, 0);
    // --- classic ASCII, refused ---
    "unknown", Refused, |a, o| text(o, &format!("bogus {}\r\n", a.key));
    "upper_case", Refused, |a, o| text(o, &format!("GET {}\r\n", a.key));
    "empty_line", Refused, |_, o| text(o, "\r\n");
    "get_no_key", Refused, |_, o| text(o, "get\r\n");
    "get_long_key", Refused, |a, o| text(o, &format!("get {}\r\n", a.long_key()));
    // A format error does not swallow the data block, which is then read as
    // a command: a fixed two-letter one, so it is unknown and
    // self-contained.
    "set_long_key", Refused, |a, o| with_data(o, &format!("set {} 0 0 2", a.long_key()), "x1");
    "set_bad_flags", Refused, |a, o| with_data(o, &format!("set {} abc 0 2", a.key), "x1");
    "set_negative_len", Refused, |a, o| with_data(o, &format!("set {} 0 0 -1", a.key), "x1");
    // Declared shorter than sent: `<len>+2` bytes are swallowed and the rest
    // of the block (here an empty line) is read as a command.
    "set_bad_chunk", Refused, |a, o| with_data(o, &format!("set {} 0 0 {}", a.key, a.value.len()), &format!("{}XY", a.value));
    "set_bad_chunk_noreply", Refused, |a, o| with_data(o, &format!("set {} 0 0 {} noreply", a.key, a.value.len()), &format!("{}XY", a.value));
    "set_too_large", Refused, |a, o| with_data(o, &format!("set {} 0 0 {}", a.key, MAX_VALUE + 1), &"z".repeat(MAX_VALUE + 1));
    "add_too_large", Refused, |a, o| with_data(o, &format!("add {} 0 0 {}", a.key, MAX_VALUE + 7), &"z".repeat(MAX_VALUE + 7));
    "incr_bad_delta", Refused, |a, o| text(o, &format!("incr {} abc\r\n", a.key));
    "incr_bad_noreply", Refused, |a, o| text(o, &format!("incr {} abc noreply\r\n", a.key));
    "touch_bad_ttl", Refused, |a, o| text(o, &format!("touch {} abc\r\n", a.key));
    "gat_bad_ttl", Refused, |a, o| text(o, &format!("gat abc {}\r\n", a.key));
    "delete_extra", Refused, |a, o| text(o, &format!("delete {} 5\r\n", a.key));
    "incr_extra", Refused, |a, o| text(o, &format!("incr {} 1 2 3\r\n", a.key));
    // --- meta, refused ---
    "mg_bad_flag", Refused, |a, o| text(o, &format!("mg {} Y\r\n", a.key));
    "mg_dup_flag", Refused, |a, o| text(o, &format!("mg {} v v\r\n", a.key));
    "mg_no_key", Refused, |_, o| text(o, "mg\r\n");
    "mg_long_key", Refused, |a, o| text(o, &format!("mg {} v\r\n", a.long_key()));
    "mg_bad_base64", Refused, |_, o| text(o, "mg !!!! b v\r\n");
    "me", Refused, |a, o| text(o, &format!("me {}\r\n", a.key));
    "meta_unknown", Refused, |a, o| text(o, &format!("mz {}\r\n", a.key));
    "ms_bad_mode", Refused, |a, o| with_data(o, &format!("ms {} {} MZ", a.key, a.value.len()), &a.value);
    "ms_bad_flag", Refused, |a, o| with_data(o, &format!("ms {} {} Y", a.key, a.value.len()), &a.value);
    // A bad length drops only the line: no data block is sent.
    "ms_bad_len", Refused, |a, o| text(o, &format!("ms {} abc\r\n", a.key));
    "ms_long_key", Refused, |a, o| with_data(o, &format!("ms {} 2", a.long_key()), "x1");
    "ms_bad_chunk", Refused, |a, o| with_data(o, &format!("ms {} {}", a.key, a.value.len()), &format!("{}XY", a.value));
    "ms_too_large", Refused, |a, o| with_data(o, &format!("ms {} {}", a.key, MAX_VALUE + 1), &"z".repeat(MAX_VALUE + 1));
    "ma_bad_mode", Refused, |a, o| text(o, &format!("ma {} MZ\r\n", a.key));
    "ma_bad_delta", Refused, |a, o| text(o, &format!("ma {} Dabc\r\n", a.key));
    "md_bad_flag", Refused, |a, o| text(o, &format!("md {} Y\r\n", a.key));
    // --- binary, refused (each skipped by its declared length) ---
    "bin_unknown_opcode", Refused, |a, o| bin(o, UNASSIGNED, &[1, 2], &a.key, &a.value, a, 0);
    "bin_get_extras", Refused, |a, o| bin(o, GET, &[0, 0, 0, 0], &a.key, "", a, 0);
    "bin_get_value", Refused, |a, o| bin(o, GET, &[], &a.key, "zz", a, 0);
    "bin_get_no_key", Refused, |a, o| bin(o, GET, &[], "", "", a, 0);
    "bin_set_no_extras", Refused, |a, o| bin(o, SET, &[], &a.key, &a.value, a, 0);
    "bin_incr_short_extras", Refused, |a, o| bin(o, INCR, &[0; 8], &a.key, "", a, 0);
    "bin_touch_no_extras", Refused, |a, o| bin(o, TOUCH, &[], &a.key, "", a, 0);
    "bin_noop_key", Refused, |a, o| bin(o, NOOP, &[], &a.key, "", a, 0);
    "bin_long_key", Refused, |a, o| bin(o, GET, &[], &a.long_key(), "", a, 0);
    "bin_set_too_large", Refused, |a, o| bin(o, SET, &store_extras(a), &a.key, &"z".repeat(MAX_VALUE + 1), a, 0);
    // --- the connection may close after these ---
    "quit", Closing, |_, o| text(o, "quit\r\n");
    "bin_quit", Closing, |a, o| bin(o, QUIT, &[], "", "", a, 0);
    "bin_quitq", Closing, |a, o| bin(o, QUITQ, &[], "", "", a, 0);
    // Exactly the line limit with no end: refused once all of it is read,
    // so nothing is left unread when the connection closes.
    "line_too_long", Closing, |a, o| {
        let mut line = format!("get {}", a.key);
        while line.len() < MAX_LINE {
            line.push('y');
        }
        text(o, &line);
    };
    // A header declaring a body past any limit: refused from the header
    // alone (and no body is sent).
    "bin_body_too_large", Closing, |a, o| bin_header(o, GET, 3, 0, u32::MAX, a.opaque, 0);
    "bin_key_past_body", Closing, |a, o| bin_header(o, GET, 10, 0, 0, a.opaque, 0);
    "http", Closing, |_, o| text(o, "GET / HTTP/1.1\r\nHost: shoal\r\n\r\n");
];

/// The stream truncated after its first unit that may close the
/// connection: what follows it is never read by both runs alike.
pub fn up_to_close(units: &mut Vec<Unit>) {
    if let Some(i) = units.iter().position(|u| u.closes) {
        units.truncate(i + 1);
    }
}

// === the two runs ===

/// The one-at-a-time run's replies, one per unit sent, and whether the
/// connection closed (after the last of them).
#[derive(Debug, Default)]
pub struct Replies {
    /// Each unit's reply bytes.
    pub each: Vec<Vec<u8>>,
    /// The server closed the connection after the last unit in `each`.
    pub closed: bool,
}

impl Replies {
    /// All replies, in order.
    pub fn concat(&self) -> Vec<u8> {
        self.each.concat()
    }
}

/// Sends each unit followed by the sentinel NOOP and reads until the
/// sentinel's reply, so each unit is alone in flight. A unit that may
/// close the connection is sent last, with the write side then shut, and
/// its reply read to the end. If the server closes the connection after
/// any other unit, the run stops there (`closed`). Errs when a reply does
/// not come within [`REPLY_BOUND`].
pub async fn one_at_a_time<S>(conn: S, units: &[Unit]) -> Result<Replies, String>
where
    S: AsyncRead + AsyncWrite,
{
    let (mut read, mut write) = tokio::io::split(conn);
    let sentinel = sentinel();
    let mut replies = Replies::default();
    for (i, unit) in units.iter().enumerate() {
        let mut request = unit.bytes.clone();
        if !unit.closes {
            request.extend_from_slice(&sentinel);
        }
        let wrote = write.write_all(&request).await.is_ok();
        if unit.closes {
            let _ = write.shutdown().await;
        }
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if !unit.closes {
                if let Some(end) = strip_sentinel_reply(&buf) {
                    buf.truncate(end);
                    break;
                }
            }
            let n = tokio::time::timeout(REPLY_BOUND, read.read(&mut chunk))
                .await
                .map_err(|_| {
                    format!(
                        "one at a time: no reply to unit {i} ({}) within {REPLY_BOUND:?}; got {}",
                        unit.name,
                        show(&buf)
                    )
                })?
                .unwrap_or(0);
            if n == 0 {
                replies.each.push(buf);
                replies.closed = true;
                return Ok(replies);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        replies.each.push(buf);
        if !wrote {
            replies.closed = true;
            return Ok(replies);
        }
    }
    Ok(replies)
}

/// Sends every unit back to back, cut into pieces of the given sizes
/// (cycled; a 0 means "the rest"), shuts the write side and reads every
/// reply until the server closes. Errs when that takes longer than
/// `bound`.
pub async fn pipelined<S>(
    conn: S,
    units: &[Unit],
    pieces: &[usize],
    bound: Duration,
) -> Result<Vec<u8>, String>
where
    S: AsyncRead + AsyncWrite,
{
    let (mut read, mut write) = tokio::io::split(conn);
    let stream: Vec<u8> = units.iter().flat_map(|u| u.bytes.iter().copied()).collect();
    let writer = async {
        let mut at = 0;
        let mut sizes = pieces.iter().copied().cycle();
        while at < stream.len() {
            let size = match sizes.next() {
                Some(0) | None => stream.len() - at,
                Some(n) => n.min(stream.len() - at),
            };
            // The server may close first (a closing request).
            if write.write_all(&stream[at..at + size]).await.is_err() {
                return;
            }
            let _ = write.flush().await;
            tokio::task::yield_now().await;
            at += size;
        }
        let _ = write.shutdown().await;
    };
    let reader = async {
        let mut out = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match read.read(&mut chunk).await {
                Ok(0) | Err(_) => return out,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let joined = async {
        let ((), out) = tokio::join!(writer, reader);
        out
    };
    tokio::time::timeout(bound, joined).await.map_err(|_| {
        format!(
            "pipelined: the stream of {} units did not end within {bound:?}",
            units.len()
        )
    })
}

// === normalising replies ===

/// `stream` split into reply items (a binary frame, a text line with its
/// data block if it has one), with the CAS values and `prefix` replaced by
/// placeholders. Two runs under prefixes of the same length are in step
/// exactly when their normalised items are equal.
pub fn normalize(stream: &[u8], prefix: &str) -> Vec<Vec<u8>> {
    let placeholder = "~".repeat(prefix.len());
    let mut items = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let rest = &stream[at..];
        let (mut item, used) = if rest[0] == 0x81 && rest.len() >= 24 {
            let body = u32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]) as usize;
            let len = (24 + body).min(rest.len());
            let mut frame = rest[..len].to_vec();
            frame[16..24].fill(0);
            (frame, len)
        } else {
            match text_item(rest) {
                Some(found) => found,
                None => (rest.to_vec(), rest.len()),
            }
        };
        replace_all(&mut item, prefix.as_bytes(), placeholder.as_bytes());
        items.push(item);
        at += used;
    }
    items
}

/// A text reply line (with its data block for `VALUE` and `VA`), CAS
/// values replaced: the fifth word of `VALUE`, a meta `c<n>` flag, `me`'s
/// `cas=<n>`.
fn text_item(rest: &[u8]) -> Option<(Vec<u8>, usize)> {
    let lf = rest.iter().position(|&b| b == b'\n')?;
    let line = &rest[..=lf];
    let content = line.strip_suffix(b"\r\n").unwrap_or(line);
    let words: Vec<&[u8]> = content.split(|&b| b == b' ').collect();
    let mut used = lf + 1;
    let mut item: Vec<u8>;
    let data_len = match words.first().copied() {
        Some(b"VALUE") => words.get(3).and_then(|w| number(w)),
        Some(b"VA") => words.get(1).and_then(|w| number(w)),
        _ => None,
    };
    let is_meta = matches!(
        words.first().copied(),
        Some(b"VA" | b"HD" | b"EN" | b"NF" | b"NS" | b"EX" | b"MN")
    );
    let words: Vec<Vec<u8>> = words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let value_cas = i == 4 && content.starts_with(b"VALUE ");
            let meta_cas = is_meta
                && i > 0
                && w.len() > 1
                && w[0] == b'c'
                && w[1..].iter().all(u8::is_ascii_digit);
            let debug_cas = i > 0 && content.starts_with(b"ME ") && w.starts_with(b"cas=");
            if value_cas {
                b"<cas>".to_vec()
            } else if debug_cas {
                b"cas=<cas>".to_vec()
            } else if meta_cas {
                b"c<cas>".to_vec()
            } else {
                w.to_vec()
            }
        })
        .collect();
    item = words.join(&b' ');
    item.extend_from_slice(&line[content.len()..]);
    if let Some(len) = data_len {
        let end = (used + len + 2).min(rest.len());
        item.extend_from_slice(&rest[used..end]);
        used = end;
    }
    Some((item, used))
}

fn number(word: &[u8]) -> Option<usize> {
    std::str::from_utf8(word).ok()?.parse().ok()
}

fn replace_all(haystack: &mut [u8], from: &[u8], to: &[u8]) {
    debug_assert_eq!(from.len(), to.len());
    if from.is_empty() {
        return;
    }
    let mut i = 0;
    while i + from.len() <= haystack.len() {
        if &haystack[i..i + from.len()] == from {
            haystack[i..i + from.len()].copy_from_slice(to);
            i += from.len();
        } else {
            i += 1;
        }
    }
}

/// Bytes for a failure message: escaped, long runs cut.
pub fn show(bytes: &[u8]) -> String {
    let mut s = String::new();
    let shown = &bytes[..bytes.len().min(600)];
    let _ = write!(s, "\"{}\"", shown.escape_ascii());
    if bytes.len() > shown.len() {
        let _ = write!(s, "… ({} bytes)", bytes.len());
    }
    s
}

/// The first refused request that got no reply at all (one that asked for
/// none, `noreply`, aside), from the one-at-a-time run.
pub fn unanswered_refusal(units: &[Unit], replies: &Replies) -> Option<String> {
    units.iter().zip(&replies.each).find_map(|(unit, reply)| {
        let refused = TEMPLATES
            .iter()
            .any(|t| t.name == unit.name && t.kind == Kind::Refused);
        (refused && !unit.name.ends_with("noreply") && reply.is_empty()).then(|| {
            format!(
                "refused request {} {} got no reply",
                unit.name,
                show(&unit.bytes)
            )
        })
    })
}

/// Normalised items, one per line, for a failure message.
pub fn show_items(items: &[Vec<u8>]) -> String {
    items.iter().map(|i| format!("  {}\n", show(i))).collect()
}

/// A report of where two runs part: each unit with its one-at-a-time
/// reply, then the pipelined items.
pub fn explain(units: &[Unit], one: &Replies, one_prefix: &str, piped: &[Vec<u8>]) -> String {
    let mut s = String::from("one at a time:\n");
    for (i, unit) in units.iter().enumerate() {
        let reply = one
            .each
            .get(i)
            .map(|r| show_items(&normalize(r, one_prefix)));
        let _ = writeln!(
            s,
            " [{i}] {} {}\n{}",
            unit.name,
            show(&unit.bytes),
            reply.unwrap_or_else(|| "  (not sent: closed before)\n".into())
        );
    }
    if one.closed {
        s.push_str(" (then closed)\n");
    }
    s.push_str("pipelined:\n");
    s.push_str(&show_items(piped));
    s
}
