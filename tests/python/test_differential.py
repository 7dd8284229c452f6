"""Differential test: one script of raw ASCII, meta and binary exchanges,
run against Debian's memcached 1.6.18 and against three Shoal targets; the
replies must be identical.

The targets (`TARGETS`): `node`, a `shoal node --standalone`;
`proxy-vbucket`, a `shoal proxy` in vbucket mode in front of a three-node
cluster's couchbase bucket `default`; `proxy-ketama`, a `shoal proxy` in
ketama mode in front of a memcached bucket of the same cluster (fixtures in
conftest.py; everything refuses values above 1 MiB, as memcached's `-I
1024k`). memcached runs each exchange once; its replies are compared with
each target's. An exchange may differ on some targets for a stated reason
(`Exchange.known_difference`): that one pairing is a strict xfail, so it is
noticed when it starts to agree.

Each exchange is a name and one or more request steps (bytes, or a function
of the CAS values seen so far in the exchange, for `cas` and `C<cas>`). Each
exchange runs on a fresh connection to each server; its keys are its own
(`test_script_keys_are_unique_per_exchange` checks), so both servers hold the
same state for it whatever ran before. After every step the harness sends a
sentinel — `mn` (ASCII/meta) or a NOOP with a reserved opaque (binary) —
and reads until the sentinel's reply: a step's reply is complete without
guessing quiet periods or sleeping.

CAS values are compared within an exchange: the same CAS again, or a new
one. A cluster's nodes each count their own CAS values, so two keys on two
nodes may share one: an exchange shows the CAS of one key only, unless its
replies name their keys and it numbers CAS values per key (`cas_per_key`).

Normalized before comparing, because they legitimately differ:
- CAS values: each distinct CAS maps to its order of first appearance in
  the exchange (`#1`, `#2`, …), so "same CAS" and "new CAS" are still checked;
  binary CAS 0 stays 0.
- `VERSION` text (a different server) and `stats` output (different
  counters): only well-formedness is compared (`STAT name value` lines are
  dropped once checked, the `END` stays; binary stat frames are dropped, the
  empty terminating frame stays). `test_node_stats_names` checks the names.
- Meta `t<ttl>` rounded up to a multiple of 100: a second may tick between
  the write and the read on either server; every relative TTL in the script
  is a multiple of 100 or 30 (read back as itself or one less), the one
  absolute expiry time is 50 s short of one.
- Meta `l<seconds since last access>` rounded down to a multiple of 100:
  every item in the script is read within a second of its last access, so
  either server may say 0 or 1 (the same tick as for `t`).
- The `me` line (`ME <key> exp= la= cas= fetch= cls= size=`): `exp` as
  `t`, `la` as `l`, `cas` numbered as CAS values are; `cls` and `size`
  (memcached's slab class, and the item's size with its header in memory)
  describe a server's memory layout, not the item: only that they are
  numbers is compared. The key and `fetch` are compared as they are.
Anything else that differs fails the exchange, printed byte-exact.
"""

import math
import re
import socket
import struct
import time
from dataclasses import dataclass
from hashlib import sha256

import pytest

IO_DEADLINE_S = 10.0

# === binary frames ===

REQ_MAGIC = 0x80
OP = {
    "GET": 0x00, "SET": 0x01, "ADD": 0x02, "REPLACE": 0x03, "DELETE": 0x04,
    "INCR": 0x05, "DECR": 0x06, "QUIT": 0x07, "FLUSH": 0x08, "GETQ": 0x09,
    "NOOP": 0x0A, "VERSION": 0x0B, "GETK": 0x0C, "GETKQ": 0x0D, "APPEND": 0x0E,
    "PREPEND": 0x0F, "STAT": 0x10, "SETQ": 0x11, "ADDQ": 0x12, "REPLACEQ": 0x13,
    "DELETEQ": 0x14, "INCRQ": 0x15, "DECRQ": 0x16, "QUITQ": 0x17, "FLUSHQ": 0x18,
    "APPENDQ": 0x19, "PREPENDQ": 0x1A, "VERBOSITY": 0x1B, "TOUCH": 0x1C,
    "GAT": 0x1D, "GATQ": 0x1E, "GATK": 0x23, "GATKQ": 0x24,
}  # fmt: skip
SENTINEL_OPAQUE = 0x5E471E1D
NO_CREATE = 0xFFFFFFFF


def frame(op, key=b"", value=b"", extras=b"", cas=0, opaque=0, vbucket=0, body_len=None):
    """One binary request; `op` is a name from OP or a raw opcode;
    `body_len` overrides the header's total body length (to lie)."""
    opcode = OP[op] if isinstance(op, str) else op
    total = len(extras) + len(key) + len(value) if body_len is None else body_len
    header = struct.pack(">BBHBBHIIQ", REQ_MAGIC, opcode, len(key), len(extras), 0, vbucket, total, opaque, cas)
    return header + extras + key + value


def store(op, key, value, flags=0, exptime=0, cas=0, opaque=0):
    return frame(op, key, value, struct.pack(">II", flags, exptime), cas=cas, opaque=opaque)


def arith(op, key, delta, initial=0, exptime=0, cas=0, opaque=0):
    return frame(op, key, extras=struct.pack(">QQI", delta, initial, exptime), cas=cas, opaque=opaque)


def touch(op, key, exptime, opaque=0):
    return frame(op, key, extras=struct.pack(">I", exptime), opaque=opaque)


def split_frames(buf):
    """Whole response frames at the front of `buf`, and the rest."""
    frames = []
    while len(buf) >= 24:
        (total,) = struct.unpack_from(">I", buf, 8)
        if len(buf) < 24 + total:
            break
        frames.append(buf[: 24 + total])
        buf = buf[24 + total :]
    return frames, buf


# === the script ===

# The Shoal targets the script runs on, and the fixture serving each.
TARGETS = {"node": "shoal_node", "proxy-vbucket": "vbucket_proxy", "proxy-ketama": "ketama_proxy",
           "proxy-static": "static_proxy"}


@dataclass
class Exchange:
    name: str
    steps: list
    binary: bool = False
    # Extra, documented normalization of raw replies for this exchange only.
    normalize: object = None
    # memcached closes the connection after this exchange's binary error
    # reply; Shoal answers the same error and keeps serving, by design
    # (DESIGN.md: close only when the stream cannot be resynchronised — a
    # well-framed request with bad arguments can be skipped). Compared up to
    # memcached's close; Shoal must not close.
    memcached_closes: bool = False
    # A known difference: the exchange is expected to fail (strict, so it is
    # noticed when it starts to agree). A str is the reason on every target;
    # a dict {target: reason} names the targets it differs on. The reason
    # says why, and where a fix would belong if it is not by design.
    known_difference: object = ""

    def difference_on(self, target):
        """The reason this exchange differs on `target`, or ""."""
        if isinstance(self.known_difference, dict):
            return self.known_difference.get(target, "")
        return self.known_difference


SCRIPT = []


def ex(name, *steps, **options):
    first = steps[0] if isinstance(steps[0], bytes) else steps[0](FAKE_CAS)
    SCRIPT.append(Exchange(name, list(steps), binary=first[:1] == b"\x80", **options))


# For keys that must be 250 (ok) and 251 (too long) bytes.
K250 = b"k" * 250
K251 = b"k" * 251
BIG = b"v" * (2 * 1024 * 1024)  # 2 MiB, above both servers' 1 MiB limit
FAKE_CAS = list(range(1000, 1100))  # only for reading keys out of templates


def trim_counter_padding(reply):
    """memcached rewrites a shorter decr result in place padded with spaces
    (`"100"` decr 1 reads back `"99 "`); Shoal stores the exact digits by
    design (node/src/engine/arith.rs; protocol.txt calls the padding an
    implementation detail). Drop trailing spaces of numeric values."""

    def fix(m):
        digits = m.group(3).rstrip(b" ")
        return b"VALUE %s %s %d\r\n%s\r\n" % (m.group(1), m.group(2), len(digits), digits)

    return re.sub(rb"VALUE (\S+) (\d+) \d+\r\n(\d+ *)\r\n", fix, reply)


def trim_counter_padding_binary(reply):
    """`trim_counter_padding` for binary GET replies (same reason)."""
    closed = reply.endswith(b"<closed>")
    frames, rest = split_frames(reply.removesuffix(b"<closed>"))
    out = []
    for f in frames:
        extlen, keylen = f[4], struct.unpack_from(">H", f, 2)[0]
        head, value = f[: 24 + extlen + keylen], f[24 + extlen + keylen :]
        if re.fullmatch(rb"\d+ +", value):
            value = value.rstrip(b" ")
            head = head[:8] + struct.pack(">I", extlen + keylen + len(value)) + head[12:]
        out.append(head + value)
    return b"".join(out) + rest + (b"<closed>" if closed else b"")


def keyed_cas(key, cas):
    """A stand-in for `cas` unique to `key` (0 stays 0)."""
    return 0 if cas == 0 else int.from_bytes(sha256(b"%s %d" % (key, cas)).digest()[:7], "big") + 1


def cas_per_key(reply):
    """A cluster's nodes each count their own CAS values
    (engine/src/lib.rs `next_cas`), so two keys on two nodes may share one;
    memcached's are unique server-wide. For exchanges that read the CAS of
    several keys: each `VALUE` line's CAS is made unique to its key before
    CAS values are numbered, so one key's CAS is still checked against
    itself (same or new), never against another key's."""
    out = []
    for kind, text in text_items(reply):
        if kind == "line":
            words = text.split(b" ")
            if words[0] == b"VALUE" and len(words) == 5 and words[4].isdigit():
                words[4] = b"%d" % keyed_cas(words[1], int(words[4]))
            text = b" ".join(words) + b"\r\n"
        out.append(text)
    return b"".join(out)


def cas_per_key_binary(reply):
    """`cas_per_key` for binary replies that carry their key."""
    closed = reply.endswith(b"<closed>")
    frames, rest = split_frames(reply.removesuffix(b"<closed>"))
    out = []
    for f in frames:
        extlen, keylen = f[4], struct.unpack_from(">H", f, 2)[0]
        if keylen:
            key, cas = f[24 + extlen : 24 + extlen + keylen], struct.unpack_from(">Q", f, 16)[0]
            f = f[:16] + struct.pack(">Q", keyed_cas(key, cas)) + f[24:]
        out.append(f)
    return b"".join(out) + rest + (b"<closed>" if closed else b"")


# --- classic ASCII: retrieval ---
ex("get miss", b"get dg:miss\r\n")
ex("get multi hits misses duplicates",
   b"set dg:a 1 0 1\r\na\r\nset dg:b 2 0 2\r\nbb\r\nget dg:a dg:none dg:b dg:a\r\n")
ex("get empty value", b"set dg:empty 0 0 0\r\n\r\nget dg:empty\r\n")
ex("get binary-safe value", b"set dg:bin 0 0 6\r\n\x00\r\n\xff \n\r\nget dg:bin\r\n")
ex("get with no key", b"get\r\n")
ex("get 250-byte key", b"set " + K250 + b" 0 0 1\r\nx\r\nget " + K250 + b"\r\n")
ex("get 251-byte key", b"get " + K251 + b"\r\n")
LONG_KEYS = [b"dg:long%03d:" % i + b"x" * 239 for i in range(60)]  # 250 bytes each
ex("get with 60 long keys (15 KiB line)",
   b"set %s 0 0 1\r\na\r\nget %s\r\n" % (LONG_KEYS[7], b" ".join(LONG_KEYS)))
ex("get 100 keys, every other one present",
   b"".join(b"set dg:h%03d 0 0 3\r\n%03d\r\n" % (i, i) for i in range(0, 100, 2))
   + b"get " + b" ".join(b"dg:h%03d" % i for i in range(100)) + b"\r\n")
ex("gets multi", b"set dgs:a 0 0 1\r\na\r\nset dgs:b 0 0 1\r\nb\r\ngets dgs:a dgs:miss dgs:b dgs:a\r\n",
   normalize=cas_per_key)
ex("gat multi with ttl", b"set dgat:a 3 0 1\r\na\r\nset dgat:b 0 0 1\r\nb\r\n"
   b"gat 1000 dgat:a dgat:miss dgat:b\r\nmg dgat:a t\r\nmg dgat:b t\r\n")
ex("gats multi", b"set dgats:a 0 0 1\r\na\r\ngats 500 dgats:a dgats:miss\r\nmg dgats:a t c\r\n")
ex("gat with bad exptime", b"gat abc dgat:x\r\ngat\r\ngat 10\r\n")
ex("gat negative exptime expires", b"set dgat:neg 0 0 1\r\nx\r\ngat -1 dgat:neg\r\nget dgat:neg\r\n")

# --- classic ASCII: storage ---
ex("set flags and overwrite",
   b"set ds:f 4294967295 0 1\r\nx\r\nget ds:f\r\nset ds:f 7 0 2\r\nyy\r\nget ds:f\r\n")
ex("set flags out of range", b"set ds:f2 4294967296 0 1\r\nx\r\nset ds:f2 -1 0 1\r\nx\r\nget ds:f2\r\n")
ex("set noreply", b"set ds:nr 0 0 1 noreply\r\nx\r\nget ds:nr\r\n")
ex("set too few tokens", b"set ds:few 0 0\r\nset\r\n")
ex("add", b"add ds:add 0 0 1\r\na\r\nadd ds:add 0 0 1\r\nb\r\nget ds:add\r\n")
ex("add noreply", b"add ds:addnr 0 0 1 noreply\r\na\r\nadd ds:addnr 0 0 1 noreply\r\nb\r\nget ds:addnr\r\n")
ex("replace", b"replace ds:rep 0 0 1\r\na\r\nset ds:rep 5 0 1\r\na\r\nreplace ds:rep 6 0 1\r\nb\r\nget ds:rep\r\n")
ex("replace noreply", b"replace ds:repnr 0 0 1 noreply\r\na\r\nget ds:repnr\r\n")
ex("append prepend", b"set ds:ap 9 0 2\r\nmm\r\nappend ds:ap 1 0 1\r\nz\r\nprepend ds:ap 2 0 1\r\na\r\nget ds:ap\r\n")
ex("append prepend to missing", b"append ds:apm 0 0 1\r\nz\r\nprepend ds:apm 0 0 1\r\na\r\nget ds:apm\r\n")
ex("append prepend noreply",
   b"set ds:apnr 0 0 1\r\nm\r\nappend ds:apnr 0 0 1 noreply\r\nz\r\nprepend ds:apnr 0 0 1 noreply\r\na\r\n"
   b"append ds:apnr-miss 0 0 1 noreply\r\nz\r\nget ds:apnr ds:apnr-miss\r\n")
ex("cas match then stale",
   b"set ds:cas 0 0 1\r\na\r\ngets ds:cas\r\n",
   lambda c: b"cas ds:cas 0 0 1 %d\r\nb\r\ncas ds:cas 0 0 1 %d\r\nc\r\ngets ds:cas\r\n" % (c[0], c[0]))
ex("cas noreply",
   b"set ds:casnr 0 0 1\r\na\r\ngets ds:casnr\r\n",
   lambda c: b"cas ds:casnr 0 0 1 %d noreply\r\nb\r\ncas ds:casnr 0 0 1 %d noreply\r\nc\r\ngets ds:casnr\r\n"
   % (c[0], c[0]))
ex("cas mismatch, zero, missing, malformed",
   b"set ds:casx 0 0 1\r\na\r\ncas ds:casx 0 0 1 999999999999\r\nb\r\ncas ds:casx 0 0 1 0\r\nb\r\n"
   b"cas ds:casmiss 0 0 1 5\r\nb\r\ncas ds:casx 0 0 1 abc\r\nb\r\ncas ds:casx 0 0 1\r\nb\r\nget ds:casx\r\n")
ex("exptime negative is expired", b"set ds:neg 0 -1 1\r\nx\r\nget ds:neg\r\nadd ds:neg 0 0 1\r\ny\r\nget ds:neg\r\n")
ex("exptime absolute in the past is expired", b"set ds:past 0 2592001 1\r\nx\r\nget ds:past\r\n")
ex("exptime relative ttl visible", b"set ds:ttl 0 1000 1\r\nx\r\nmg ds:ttl t v\r\nset ds:nottl 0 0 1\r\nx\r\nmg ds:nottl t\r\n")
# 1950 s ahead, not 2000: the servers' clocks tick once a second (and
# memcached's lags the wall clock by up to one tick), so the TTL read back is
# 1948..1952, which rounds (see normalize_text) to t~2000 on both.
ex("exptime absolute in the future",
   lambda c: b"set ds:abs 0 %d 1\r\nx\r\nmg ds:abs t v\r\n" % (int(time.time()) + 1950))
ex("bad exptime", b"set ds:bexp 0 abc 1\r\nx\r\nget ds:bexp\r\n")

# --- bad lengths and sizes ---
ex("data block longer than declared", b"set dl:long 0 0 3\r\nabcdefg\r\nget dl:long\r\n")
ex("data block shorter than declared", b"set dl:short 0 0 10\r\nabc\r\nget dl:short\r\nxx\r\n")
ex("data block without CRLF", b"set dl:nocrlf 0 0 3\r\nabcXY\r\nget dl:nocrlf\r\n")
ex("negative length", b"set dl:neg 0 0 -1\r\nab\r\nget dl:neg\r\n")
ex("non-numeric length", b"set dl:nan 0 0 abc\r\nab\r\nget dl:nan\r\n")
ex("negative length noreply", b"set dl:negnr 0 0 -1 noreply\r\nab\r\n")
ex("oversized value, stream continues",
   b"set dl:big 0 0 %d\r\n%s\r\nset dl:after 0 0 2\r\nok\r\nget dl:big dl:after\r\n" % (len(BIG), BIG))
ex("oversized set drops the old value",
   b"set dl:bigold 0 0 3\r\nold\r\nset dl:bigold 0 0 %d\r\n%s\r\nget dl:bigold\r\n" % (len(BIG), BIG))
ex("oversized ms drops the old value",
   b"ms dm:bigold 3\r\nold\r\nms dm:bigold %d\r\n%s\r\nmg dm:bigold v\r\n" % (len(BIG), BIG))
ex("oversized append, stream continues",
   b"set dl:bigap 0 0 1\r\na\r\nappend dl:bigap 0 0 %d\r\n%s\r\nget dl:bigap\r\n" % (len(BIG), BIG))
ex("key too long", b"set " + K251 + b" 0 0 1\r\nx\r\ndelete " + K251 + b"\r\nincr " + K251 + b" 1\r\n"
   b"touch " + K251 + b" 10\r\n")
# A retrieval with a too-long key goes first in its pipeline: memcached 1.6.18
# answers it by dropping every reply still queued on the connection
# (`conn_release_items` in process_get_command), which loses the replies of
# earlier pipelined commands — a memcached bug Shoal does not copy.
ex("gets 251-byte key", b"gets " + K251 + b"\r\nget dl:k251-after\r\n")
ex("gat 251-byte key", b"gat 10 " + K251 + b"\r\nget dl:k251-after2\r\n")

# --- delete ---
ex("delete", b"set dd:a 0 0 1\r\na\r\ndelete dd:a\r\ndelete dd:a\r\nget dd:a\r\n")
ex("delete noreply", b"set dd:nr 0 0 1\r\na\r\ndelete dd:nr noreply\r\ndelete dd:nr noreply\r\nget dd:nr\r\n")
ex("delete with time argument", b"set dd:t 0 0 1\r\na\r\ndelete dd:t 5\r\ndelete dd:t 0\r\nget dd:t\r\n")

# --- incr / decr ---
ex("incr decr basic", b"set da:n 5 0 2\r\n10\r\nincr da:n 5\r\ndecr da:n 3\r\ngets da:n\r\n")
ex("incr missing", b"incr da:miss 1\r\ndecr da:miss 1\r\nget da:miss\r\n")
ex("incr wraps at 2^64",
   b"set da:wrap 0 0 20\r\n18446744073709551615\r\nincr da:wrap 1\r\nincr da:wrap 18446744073709551615\r\n"
   b"get da:wrap\r\n")
ex("incr grows the value", b"set da:grow 0 0 2\r\n99\r\nincr da:grow 1\r\nget da:grow\r\n")
ex("decr floors at zero", b"set da:floor 0 0 1\r\n3\r\ndecr da:floor 10\r\ndecr da:floor 1\r\nget da:floor\r\n")
ex("decr shrinks the value", b"set da:shrink 0 0 3\r\n100\r\ndecr da:shrink 1\r\nget da:shrink\r\n",
   normalize=trim_counter_padding)
ex("incr non-numeric value", b"set da:nan 0 0 3\r\nabc\r\nincr da:nan 1\r\ndecr da:nan 1\r\n")
ex("incr value with spaces and sign", b"set da:sp 0 0 4\r\n  12\r\nincr da:sp 1\r\nset da:neg 0 0 2\r\n-5\r\nincr da:neg 1\r\n")
ex("incr bad delta", b"set da:bd 0 0 1\r\n1\r\nincr da:bd abc\r\nincr da:bd -1\r\nincr da:bd 18446744073709551616\r\n"
   b"incr da:bd\r\n")
ex("incr decr noreply", b"set da:nr 0 0 1\r\n1\r\nincr da:nr 5 noreply\r\ndecr da:nr 2 noreply\r\nincr da:nrmiss 1 noreply\r\n"
   b"get da:nr\r\n")

# --- touch ---
ex("touch", b"set dt:a 0 0 1\r\na\r\ntouch dt:a 1000\r\nmg dt:a t\r\ntouch dt:miss 10\r\n")
ex("touch noreply", b"set dt:nr 0 0 1\r\na\r\ntouch dt:nr 600 noreply\r\ntouch dt:nrmiss 10 noreply\r\nmg dt:nr t\r\n")
ex("touch negative expires", b"set dt:neg 0 0 1\r\na\r\ntouch dt:neg -1\r\nget dt:neg\r\n")
ex("touch bad exptime", b"touch dt:x abc\r\ntouch dt:x\r\n")

# --- flush_all, version, verbosity, unknown ---
ex("flush_all", b"set df:a 0 0 1\r\na\r\nflush_all\r\nget df:a\r\nset df:a 0 0 1\r\nb\r\nget df:a\r\n")
ex("flush_all noreply", b"set df:nr 0 0 1\r\na\r\nflush_all noreply\r\nget df:nr\r\n")
ex("flush_all zero delay", b"set df:z 0 0 1\r\na\r\nflush_all 0\r\nget df:z\r\n")
ex("flush_all bad delay", b"flush_all abc\r\nflush_all abc noreply\r\n")
ex("version", b"version\r\n")
ex("verbosity", b"verbosity 1\r\nverbosity 1 noreply\r\nverbosity\r\nverbosity abc\r\n")
ex("stats", b"stats\r\n")
ex("stats groups", b"stats settings\r\nstats items\r\nstats slabs\r\nstats bogus\r\n")
ex("quit", b"set dq:a 0 0 1\r\na\r\nquit\r\nget dq:a\r\n")
ex("unknown commands", b"foo bar\r\nGET x\r\n\r\nsets dx:a 0 0 1\r\n")

# --- meta ---
ex("mn", b"mn\r\nmn\r\n")
ex("quiet meta pipeline ending in mn",
   b"ms dm:p1 1 q\r\nx\r\nmg dm:p1 q v k\r\nmg dm:p2 q v k\r\nmd dm:p2 q\r\nma dm:p2 q\r\nmn\r\n")
ex("meta base64 keys", b"mg ZG06YjY0 b v k\r\nms ZG06YjY0 2 b\r\nhi\r\nmg ZG06YjY0 b v k c\r\nget dm:b64\r\n"
   b"mg ###### b v\r\nmd ZG06YjY0 b q\r\nmg dm:b64 v\r\n")
ex("meta flag errors", b"mg\r\nmg \r\nms dm:fe\r\nms dm:fe 1 X\r\nx\r\nmd dm:fe X\r\nmg dm:fe v v v\r\n"
   b"mg dm:fe v O12345678901234567890123456789012345678901234567890\r\n"
   b"ma dm:fe D18446744073709551616\r\nma dm:fe Dabc\r\nms dm:fe 1 F4294967296\r\nx\r\nmg dm:fe f v\r\n")
ex("mg hit with every return flag",
   b"ms dm:a 2 T1000 F5\r\nhi\r\nmg dm:a s v t f c k O123\r\nmg dm:a\r\nmg dm:a k q\r\nmg dm:a v q\r\n")
ex("mg miss", b"mg dm:miss v\r\nmg dm:miss k O9 v\r\nmg dm:miss v q\r\nmg dm:miss q k O1\r\n")
ex("mg touch T", b"ms dm:t 1 T100\r\nx\r\nmg dm:t T1000 t v\r\nmg dm:t t\r\n")
ex("ms mg negative ttl", b"ms dm:neg 1 T-1\r\nx\r\nmg dm:neg v\r\nms dm:neg2 1\r\nx\r\nmg dm:neg2 T-1 v\r\n"
   b"mg dm:neg2 v\r\n")
ex("mg no-expiry ttl", b"ms dm:nt 1\r\nx\r\nmg dm:nt t s f\r\n")
ex("ms modes", b"ms dm:m 1 MA\r\nx\r\nms dm:m 1 MR\r\nx\r\nms dm:m 1 ME\r\nx\r\nms dm:m 1 ME\r\ny\r\n"
   b"ms dm:m 1 MA\r\nz\r\nms dm:m 1 MP\r\na\r\nmg dm:m v\r\nms dm:m 1 MR\r\nr\r\nms dm:m 1 MS\r\ns\r\nmg dm:m v\r\n")
ex("ms invalid mode", b"ms dm:bad 2 MX\r\nzz\r\nmg dm:bad v\r\n")
ex("ms with flags ttl and return cas", b"ms dm:f 3 F42 T300 c k O7\r\nabc\r\nmg dm:f f t v c\r\n")
ex("ms quiet", b"ms dm:q 1 q\r\nx\r\nms dm:q 1 q ME\r\ny\r\nmg dm:q v\r\n")
ex("ms compare cas",
   b"ms dm:c 1 c\r\nx\r\n",
   lambda c: b"ms dm:c 1 C%d c\r\ny\r\nms dm:c 1 C%d\r\nz\r\nms dm:cmiss 1 C%d\r\nz\r\nmg dm:c v c\r\n"
   % (c[0], c[0], c[0]))
ex("ms refused returns c0 and echoes",
   b"ms dm:r1 1\r\nx\r\nms dm:r1 1 C5 c f s t k O1\r\ny\r\nms dm:r1 1 ME c t k O2\r\ny\r\n"
   b"ms dm:r2 1 MR c k O3\r\ny\r\nms dm:r3 1 C5 c k\r\ny\r\nms dm:r3 1 q C5 c\r\ny\r\n")
ex("ms bad length", b"ms dm:bl 3\r\nabcdef\r\nms dm:bl abc\r\nxx\r\nmg dm:bl v\r\n")
ex("ms no length", b"ms dm:nl\r\nmg dm:nl\r\n")
ex("md", b"ms dm:d 1\r\nx\r\nmd dm:d\r\nmd dm:d\r\nmd dm:d q\r\nms dm:d 1\r\nx\r\nmd dm:d q k O5\r\nmg dm:d v\r\n")
ex("md compare cas",
   b"ms dm:dc 1 c\r\nx\r\n",
   lambda c: b"md dm:dc C999999999\r\nmd dm:dc C%d k\r\nmg dm:dc\r\n" % c[0])
ex("ma", b"ms dm:n 1\r\n5\r\nma dm:n\r\nma dm:n v\r\nma dm:n D10 v\r\nma dm:n MD D3 v\r\nma dm:n MI v t c\r\n")
ex("ma modes and quiet", b"ms dm:nq 1\r\n5\r\nma dm:nq q\r\nma dm:nq q D2 MD\r\nma dm:nq M+ v\r\nma dm:nq M- v\r\n"
   b"ma dm:nq MX\r\nmg dm:nq v\r\n")
ex("ma miss and autovivify", b"ma dm:viv\r\nma dm:viv q\r\nma dm:viv N0 J13 v\r\nma dm:viv N0 J13 v\r\n"
   b"ma dm:viv2 N1000 v t\r\nmg dm:viv2 t v\r\n")
ex("ma T sets the ttl",
   b"ms dm:T1 1 T300\r\n1\r\nma dm:T1 T0\r\nmg dm:T1 t v\r\nms dm:T2 1 T300\r\n1\r\nma dm:T2 T0 t\r\nmg dm:T2 t v\r\n"
   b"ms dm:T3 1 T300\r\n1\r\nma dm:T3 T-1\r\nmg dm:T3 t v\r\nms dm:T4 1 T300\r\n1\r\nma dm:T4 T-1 v\r\nmg dm:T4 v\r\n"
   b"ms dm:T5 1 T300\r\n1\r\nma dm:T5 T200\r\nmg dm:T5 t v\r\nms dm:T6 1\r\n1\r\nma dm:T6 v T500 t c\r\n"
   b"mg dm:T6 t v c\r\nma dm:T7 N100 J5 T1000 t v\r\nmg dm:T7 t\r\n")
ex("ma returns c t and echoes only",
   b"ms dm:rf 1 F7 T100\r\n1\r\nma dm:rf t f s c k O9 v\r\nma dm:rf f s\r\nma dm:rf q t f\r\nmg dm:rf v\r\n")
ex("ma decr floor and wrap",
   b"ms dm:w 20\r\n18446744073709551615\r\nma dm:w v\r\nma dm:w MD D5 v\r\nms dm:nn 3\r\nabc\r\nma dm:nn v\r\n")
ex("meta key too long", b"mg " + K251 + b" v\r\nms " + K251 + b" 1\r\nx\r\nmd " + K251 + b"\r\nma " + K251 + b"\r\n")
ex("meta no key", b"mg\r\nms\r\nmd\r\nma\r\n")
ex("meta opaque and key on errors", b"ms dm:e 1 MA O42 k\r\nx\r\nmd dm:e O43 k\r\nma dm:e O44 k\r\n")

# --- meta: every flag and mode of memcached 1.6.18 ---
ex("mg every return flag on a hit and a miss",
   b"ms mg:all 2 F5 T1000\r\nhi\r\nmg mg:all v c f s t k O1 h l\r\nmg mg:all h l t u\r\n"
   b"mg mg:allmiss v c f s t k O2 h l u\r\n")
ex("mg h and l: fetched before and idle seconds; u leaves them",
   b"ms mg:h 1\r\nx\r\nmg mg:h u h l\r\nmg mg:h h l\r\nmg mg:h h l v\r\nmg mg:h u h\r\n")
ex("mg T touches while fetching",
   b"ms mg:t 1 T100\r\nx\r\nmg mg:t T500 t v c\r\nmg mg:t t\r\nmg mg:t T0 t\r\nmg mg:t t\r\nmg mg:tmiss T500 t v\r\n"
   b"mg mg:t T\r\nmg mg:t Tabc\r\nmg mg:t T-1\r\nmg mg:t v\r\n")
ex("mg N vivifies a miss: its creator wins, later readers see Z",
   b"mg mg:n N30 v c f s t k O1\r\nmg mg:n N30 v c t\r\nmg mg:n s v\r\nms mg:n 2\r\nhi\r\nmg mg:n v t\r\n"
   b"mg mg:n2 N30 s t\r\nmg mg:n2 N30 q\r\nmg mg:n3 N30 q\r\nmg mg:n4 N0 t v\r\nmg mg:n4 t\r\n")
ex("mg N and R need a number", b"mg mg:nbad N\r\nmg mg:nbad Nabc v\r\nmg mg:nbad R\r\nmg mg:nbad Rx v\r\n"
   b"mg mg:nbad v\r\n")
ex("mg R: the first reader of an item about to expire wins the recache",
   b"ms mg:r 2 T100\r\nhi\r\nmg mg:r R30 v t\r\nmg mg:r R200 v t c\r\nmg mg:r R200 v t\r\nmg mg:r v\r\n"
   b"ms mg:r 2 T100\r\nho\r\nmg mg:r R200 t\r\nms mg:r2 1\r\nx\r\nmg mg:r2 R30 v t\r\n")
ex("mg base64 keys: b decodes the key, k echoes it in base64",
   b"ms bWc6YjY0 2 b\r\nhi\r\nmg bWc6YjY0 b v k c s O5\r\nmg bWc6YjY0 b k q\r\nmg mg:b64 v\r\n"
   b"mg bWc6YjY0bWlzcw== b k v O6\r\nmg bWc6YjY0bWlzcw== b k q\r\nmg bWc6YjY0 b\r\nmg bWc6YjY0 v\r\nmg !!!! b v\r\n")
# memcached 1.6.18 remembers whether an item was stored under a base64 key
# (ITEM_KEY_BINARY) and `mg k` echoes the key that way, whatever the
# request said; `md` and `ma` echo the request's key.
ex("mg k echoes a key as it was stored, base64 or not",
   b"ms mg:asplain 1\r\nx\r\nmg bWc6YXNwbGFpbg== b k v\r\nms bWc6YXNiNjQ= 1 b\r\ny\r\nmg mg:asb64 k v\r\n")
ex("mg q hides misses only; mn ends the quiet pipeline",
   b"mg mg:q v q\r\nmg mg:q k O1 q\r\nms mg:q 1\r\nx\r\nmg mg:q v q O2\r\nmg mg:q q\r\nmg mg:q k q\r\nmn\r\n")
ex("mg E is an invalid flag", b"ms mg:e 1\r\nx\r\nmg mg:e E5 v\r\nmg mg:e E v\r\nmg mg:emiss E5 v\r\nmg mg:e v\r\n")

# Stale-while-revalidate: `md I` marks an item stale; one reader wins its
# recache.
ex("md I marks stale: the first reader wins (X W), later ones see Z X",
   b"ms sw:a 2 c\r\nhi\r\nmd sw:a I T30\r\nmg sw:a v c t\r\nmg sw:a v c t\r\nmg sw:a v\r\nmg sw:a h\r\n")
ex("ms I with an older cas stores a value that stays stale",
   b"ms sw:b 2 c\r\nhi\r\nmd sw:b I T30\r\nmg sw:b c\r\n",
   lambda c: b"ms sw:b 3 I C%d c\r\nnew\r\nmg sw:b v c t\r\n" % c[0])
ex("ms I with a cas not older is a plain compare-and-set",
   b"ms sw:c 2 c\r\nhi\r\nmd sw:c I T30\r\nmg sw:c c\r\n",
   lambda c: b"ms sw:c 3 I C%d c\r\nnew\r\nmg sw:c v c\r\nms sw:c 3 I C%d c\r\nnow\r\nmg sw:c v c t\r\n"
   % (c[1] + 1000000, c[1]))
ex("a plain ms clears staleness",
   b"ms sw:d 2\r\nhi\r\nmd sw:d I T30\r\nms sw:d 3\r\nnew\r\nmg sw:d v t\r\nmd sw:d I\r\nms sw:d 1 I\r\nx\r\n"
   b"mg sw:d v\r\n")
ex("md I: quiet, echoes, misses and repeats",
   b"md sw:miss I\r\nmd sw:miss I q\r\nms sw:e 1\r\nx\r\nmd sw:e I q\r\nmd sw:e I k O1\r\nmg sw:e v\r\nmg sw:e v\r\n")
ex("md I with a cas",
   b"ms sw:f 1 c\r\nx\r\n",
   lambda c: b"md sw:f C%d I T30\r\nmd sw:f C%d I T30 q\r\nmg sw:f c t\r\n" % (c[0] + 1000000, c[0]))

ex("ms modes are upper case; M takes one letter",
   b"ms ms:l 1 Ms\r\nx\r\nms ms:l 1 ms\r\nx\r\nms ms:l 1 M\r\nx\r\nms ms:l 1 MSS\r\nx\r\nms ms:l 1 M1\r\nx\r\n"
   b"mg ms:l v\r\n")
ex("ms modes on a missing key, then quiet",
   b"ms ms:m 1 MA\r\nx\r\nms ms:m 1 MP\r\nx\r\nms ms:m 1 MR\r\nx\r\nms ms:m 1 MA q\r\nx\r\nms ms:m 1 ME q\r\nx\r\n"
   b"ms ms:m 1 ME q\r\ny\r\nms ms:m 1 MS q\r\nz\r\nms ms:m 1 MA q\r\na\r\nms ms:m 1 MP q c k O1\r\np\r\n"
   b"mg ms:m v\r\nms ms:m 1 MR q\r\nr\r\nmg ms:m v\r\nmn\r\n")
ex("ms F T k O c, and the flags only mg returns",
   b"ms ms:f 2 F7 T300 c k O9 s f t\r\nhi\r\nmg ms:f v f t\r\nms ms:f 1 F0\r\nx\r\nmg ms:f f\r\n"
   b"ms ms:f 1 F4294967295 T0\r\nx\r\nmg ms:f f t\r\nms ms:f 1 F-1\r\nx\r\nms ms:f 1 Fabc\r\nx\r\n"
   b"ms ms:f 1 Tabc\r\nx\r\nms ms:f 1 T\r\nx\r\nmg ms:f f v\r\n")
ex("ms T sets, T0 clears, T-1 expires",
   b"ms ms:t 1 T100\r\nx\r\nmg ms:t t\r\nms ms:t 1 T0\r\nx\r\nmg ms:t t\r\nms ms:t 1 T-1\r\nx\r\nmg ms:t t v\r\n")
ex("ms S E x are invalid flags",
   b"ms ms:x 2 S2\r\nhi\r\nms ms:x 2 x\r\nhi\r\nms ms:x 2 E5\r\nhi\r\nms ms:x 2 E\r\nhi\r\nmg ms:x v\r\n"
   b"ms ms:x S2\r\nhi\r\nms ms:x 2 q MX\r\nhi\r\nms ms:x 2 q E5\r\nhi\r\n")
ex("ms base64 key echoed in base64",
   b"ms bXM6YjY0 2 b k O3 c\r\nhi\r\nmg ms:b64 v\r\nms bXM6YjY0 2 b MA k\r\nho\r\nms bXM6YjY0 2 b ME k O4\r\nhi\r\n"
   b"mg bXM6YjY0 b v\r\nms @@@@ 1 b\r\nx\r\n")

ex("md q hides HD only", b"ms md:q 1\r\nx\r\nmd md:q q\r\nmd md:q q\r\nmd md:q q k O3\r\nmg md:q v\r\nmn\r\n")
ex("md C with q",
   b"ms md:c 1 c\r\nx\r\n",
   lambda c: b"md md:c C%d q\r\nmd md:c C%d k O1 q\r\nmd md:c C%d\r\nmg md:c v\r\n" % (c[0] + 1000000, c[0], c[0]))
ex("md T without I deletes; x and E are invalid flags",
   b"ms md:x 1 T100\r\nx\r\nmd md:x x\r\nmd md:x E5\r\nmd md:x x q\r\nmg md:x v\r\nmd md:x T30\r\nmg md:x v\r\n")
ex("md base64 key",
   b"md bWQ6YjY0 b\r\nms bWQ6YjY0 1 b\r\nx\r\nmd bWQ6YjY0 b k O1\r\nmd bWQ6YjY0 b k\r\nmd bWQ6YjY0 b q\r\n"
   b"md %%%% b\r\n")

ex("ma modes: upper case or + and -, one letter",
   b"ms ma:m 1\r\n5\r\nma ma:m Mi v\r\nma ma:m Md v\r\nma ma:m M v\r\nma ma:m MII v\r\nma ma:m Mx v\r\nma ma:m MI v\r\n"
   b"ma ma:m M+ v\r\nma ma:m MD v\r\nma ma:m M- v\r\nma ma:m ma v\r\n")
ex("ma N J: autovivify with an initial value",
   b"ma ma:n N0 J10 v\r\nma ma:n N0 J10 v\r\nma ma:n2 N0 J10 MD v\r\nma ma:n3 N0 v\r\nma ma:n4 J10 v\r\n"
   b"ma ma:n5 N0 J18446744073709551615 v\r\nma ma:n5 v\r\nma ma:n6 N0 Jabc v\r\nma ma:n7 N0 J18446744073709551616 v\r\n"
   b"ma ma:n8 N300 J1 t v c\r\nmg ma:n8 t v\r\nma ma:n9 N0 J7 q\r\nmg ma:n9 v\r\n")
ex("ma q hides HD and VA, not NF or errors",
   b"ms ma:q 1\r\n5\r\nma ma:q q\r\nma ma:q q v\r\nma ma:q q k O5\r\nma ma:qmiss q\r\nma ma:qmiss q k O7\r\n"
   b"ma ma:q q MX\r\nmg ma:q v\r\nmn\r\n")
ex("ma E and x are invalid flags; b decodes the key",
   b"ms ma:x 1\r\n5\r\nma ma:x E5\r\nma ma:x x\r\nma bWE6YjY0 b v\r\nms bWE6YjY0 1 b\r\n5\r\nma bWE6YjY0 b v k O1\r\n"
   b"ma ^^^^ b\r\n")
ex("ma C compares the cas",
   b"ms ma:c 1 c\r\n5\r\n",
   lambda c: b"ma ma:c C%d v\r\nma ma:c C%d v c\r\nma ma:c C%d v\r\n" % (c[0] + 1000000, c[0], c[0]))
ex("ma below 0, past 2^64, T and non-numeric values",
   b"ms ma:d 1 T300\r\n3\r\nma ma:d MD D1000 v t c\r\nma ma:d D18446744073709551615 v\r\n"
   b"ma ma:d D18446744073709551615 v\r\nma ma:d T600 t\r\nma ma:d D0 v\r\nms ma:d 2\r\n1a\r\nma ma:d v\r\n"
   b"ms ma:d 21\r\n184467440737095516150\r\nma ma:d v\r\n")

ex("mn ignores what follows", b"mn x y\r\nmn\r\n")
ex("me miss and malformed", b"me me:miss\r\nme\r\nme me:miss v\r\n")
ex("me before and after a fetch",
   b"ms me:a 3 F5\r\nabc\r\nme me:a\r\nmg me:a v\r\nme me:a\r\nme me:a extra tokens\r\n")
ex("me of an item with a ttl", b"ms me:t 1 T1000\r\nx\r\nme me:t\r\n",
   known_difference={target: "memcached 1.6.18 prints exp as current_time - exptime, the remaining TTL negated "
                     "(later memcached prints exptime - current_time); Shoal prints the remaining seconds "
                     "(node/src/server/meta.rs `me`; a proxy in front of a cluster forwards `me` to the key's node, "
                     "a static ring's proxy to its memcached, which agrees)"
                     for target in ("node", "proxy-vbucket", "proxy-ketama")})
ex("me base64 key", b"me bWU6YjY0 b\r\nms bWU6YjY0 1 b\r\nx\r\nme bWU6YjY0 b\r\n")
# As `mg k` (see "mg k echoes a key as it was stored, base64 or not").
ex("me names a key as it was stored, base64 or not",
   b"ms me:plain 1\r\nx\r\nme bWU6cGxhaW4= b\r\nms bWU6YXNiNjQ= 1 b\r\ny\r\nme me:asb64\r\n")

# --- classic corners ---
ex("stats with unknown arguments", b"stats bogus\r\nstats 1 2 3\r\nstats detail\r\nstats detail bogus\r\n"
   b"stats detail dump\r\n")
ex("stats sizes and conns", b"stats sizes\r\nstats conns\r\n")
ex("verbosity with extra tokens",
   b"verbosity 1 2 3\r\nverbosity 1 2\r\nverbosity noreply\r\nverbosity -1\r\nverbosity x noreply\r\nverbosity 0\r\n")
# memcached closes a connection whose unknown command ends in `HTTP/…`.
ex("HTTP request line on the data port", b"GET / HTTP/1.1\r\n")
ex("HTTP request with headers on the data port", b"POST /x HTTP/1.0\r\nHost: a\r\nContent-Length: 0\r\n\r\n")

# --- binary ---
B = frame
ex("bin get getk getq getkq pipeline",
   store("SET", b"db:g1", b"one", flags=3)
   + B("GET", b"db:g1", opaque=1) + B("GET", b"db:gmiss", opaque=2)
   + B("GETK", b"db:g1", opaque=3) + B("GETK", b"db:gmiss", opaque=4)
   + B("GETQ", b"db:g1", opaque=5) + B("GETQ", b"db:gmiss", opaque=6)
   + B("GETKQ", b"db:g1", opaque=7) + B("GETKQ", b"db:gmiss", opaque=8)
   + B("NOOP", opaque=9))
ex("bin multi-get of 100 keys as GETKQ + NOOP",
   b"".join(store("SETQ", b"db:h%03d" % i, b"%03d" % i, flags=i) for i in range(0, 100, 2))
   + b"".join(B("GETKQ", b"db:h%03d" % i, opaque=i) for i in range(100)) + B("NOOP", opaque=1000),
   normalize=cas_per_key_binary)
ex("bin quiet set with stale cas is loud",
   store("SET", b"db:qc", b"a") + store("SETQ", b"db:qc", b"b", cas=999999999, opaque=1)
   + store("ADDQ", b"db:qc", b"c", opaque=2) + B("GET", b"db:qc", opaque=3))
ex("bin set add replace",
   store("ADD", b"db:s", b"a", opaque=1) + store("ADD", b"db:s", b"b", opaque=2)
   + store("REPLACE", b"db:s", b"c", flags=9, opaque=3) + store("REPLACE", b"db:smiss", b"c", opaque=4)
   + store("SET", b"db:s", b"d", opaque=5) + B("GET", b"db:s", opaque=6))
ex("bin set with cas",
   store("SET", b"db:c", b"a") + B("GET", b"db:c"),
   lambda c: store("SET", b"db:c", b"b", cas=c[0], opaque=1) + store("SET", b"db:c", b"c", cas=c[0], opaque=2)
   + store("REPLACE", b"db:c", b"d", cas=c[0], opaque=3) + store("SET", b"db:cmiss", b"e", cas=c[0], opaque=4)
   + store("ADD", b"db:c", b"f", cas=c[0], opaque=5) + B("GET", b"db:c", opaque=6))
ex("bin append prepend",
   store("SET", b"db:ap", b"mm", flags=4) + B("APPEND", b"db:ap", b"z", opaque=1) + B("PREPEND", b"db:ap", b"a", opaque=2)
   + B("APPEND", b"db:apmiss", b"z", opaque=3) + B("PREPEND", b"db:apmiss", b"z", opaque=4)
   + B("GET", b"db:ap", opaque=5) + B("APPENDQ", b"db:ap", b"q", opaque=6) + B("APPENDQ", b"db:apmiss", b"q", opaque=7)
   + B("GET", b"db:ap", opaque=8))
ex("bin append with cas",
   store("SET", b"db:apc", b"x") + B("GET", b"db:apc"),
   lambda c: B("APPEND", b"db:apc", b"y", cas=c[0] + 1000000, opaque=1) + B("APPEND", b"db:apc", b"y", cas=c[0], opaque=2)
   + B("GET", b"db:apc"))
ex("bin delete",
   store("SET", b"db:d", b"x") + B("DELETE", b"db:d", opaque=1) + B("DELETE", b"db:d", opaque=2)
   + B("GET", b"db:d", opaque=3))
ex("bin delete with cas",
   store("SET", b"db:dc", b"x") + B("GET", b"db:dc"),
   lambda c: B("DELETE", b"db:dc", cas=c[0] + 1000000, opaque=1) + B("DELETE", b"db:dc", cas=c[0], opaque=2)
   + B("DELETE", b"db:dcmiss", cas=5, opaque=3))
ex("bin incr decr with initial",
   arith("INCR", b"db:n", 5, initial=100, exptime=0, opaque=1) + arith("INCR", b"db:n", 5, initial=100, opaque=2)
   + arith("DECR", b"db:n", 200, opaque=3) + B("GET", b"db:n", opaque=5),
   normalize=trim_counter_padding_binary)
ex("bin decr creates with initial and exptime",
   arith("DECR", b"db:n2", 1, initial=7, exptime=1000, opaque=4) + B("GET", b"db:n2", opaque=6))
ex("bin incr no-create",
   arith("INCR", b"db:nc", 1, initial=5, exptime=NO_CREATE, opaque=1)
   + arith("DECR", b"db:nc", 1, initial=5, exptime=NO_CREATE, opaque=2) + B("GET", b"db:nc", opaque=3))
ex("bin incr wraps", store("SET", b"db:w", b"18446744073709551615") + arith("INCR", b"db:w", 2, opaque=1))
ex("bin incr non-numeric",
   store("SET", b"db:nn", b"abc") + arith("INCR", b"db:nn", 1, opaque=2) + arith("DECR", b"db:nn", 1, opaque=3))
ex("bin incr with cas",
   arith("INCR", b"db:ic", 1, initial=1),
   lambda c: arith("INCR", b"db:ic", 1, cas=c[0] + 1000000, opaque=1) + arith("INCR", b"db:ic", 1, cas=c[0], opaque=2))
ex("bin incr quiet",
   arith("INCRQ", b"db:iq", 1, initial=10, opaque=1) + arith("DECRQ", b"db:iq", 3, opaque=2)
   + arith("INCRQ", b"db:iqmiss", 1, exptime=NO_CREATE, opaque=3) + B("GET", b"db:iq", opaque=4),
   normalize=trim_counter_padding_binary)
ex("bin touch gat gatk",
   store("SET", b"db:t", b"x", flags=2) + touch("TOUCH", b"db:t", 1000, opaque=1) + touch("TOUCH", b"db:tmiss", 10, opaque=2)
   + touch("GAT", b"db:t", 1000, opaque=3) + touch("GAT", b"db:tmiss", 10, opaque=4)
   + touch("GATK", b"db:t", 1000, opaque=5) + touch("GATK", b"db:tmiss", 10, opaque=6)
   + touch("GATQ", b"db:t", 1000, opaque=7) + touch("GATQ", b"db:tmiss", 10, opaque=8)
   + touch("GATKQ", b"db:t", 1000, opaque=9) + touch("GATKQ", b"db:tmiss", 10, opaque=10))
ex("bin touch negative expires",
   store("SET", b"db:tn", b"x") + touch("TOUCH", b"db:tn", 0xFFFFFFFF, opaque=1) + B("GET", b"db:tn", opaque=2))
ex("bin quiet mutations silent on success, loud on error",
   store("SETQ", b"db:q", b"a", opaque=1) + store("ADDQ", b"db:q", b"b", opaque=2)
   + store("REPLACEQ", b"db:qmiss", b"c", opaque=3) + store("REPLACEQ", b"db:q", b"d", opaque=4)
   + B("PREPENDQ", b"db:q", b"p", opaque=5) + B("PREPENDQ", b"db:qmiss", b"p", opaque=6)
   + B("DELETEQ", b"db:qmiss", opaque=7) + B("GET", b"db:q", opaque=8) + B("DELETEQ", b"db:q", opaque=9)
   + B("GET", b"db:q", opaque=10))
ex("bin flush",
   store("SET", b"db:f", b"x") + B("FLUSH", opaque=1) + B("GET", b"db:f", opaque=2)
   + store("SET", b"db:f", b"y") + B("FLUSHQ", opaque=3) + B("GET", b"db:f", opaque=4)
   + store("SET", b"db:f", b"z") + B("FLUSH", extras=struct.pack(">I", 0), opaque=5) + B("GET", b"db:f", opaque=6))
# No binary VERBOSITY: memcached 1.6.18 answers it "unknown command" and then
# misreads the stream (it swallows the 4 extras bytes twice); Shoal answers
# OK, as the binary protocol specifies.
ex("bin version noop", B("VERSION", opaque=1) + B("NOOP", opaque=2) + B("VERSION", opaque=3))
ex("bin stat", B("STAT", opaque=1))
ex("bin stat groups", B("STAT", b"settings", opaque=1) + B("STAT", b"items", opaque=2) + B("STAT", b"bogus", opaque=3))
ex("bin incr keeps flags",
   store("SET", b"db:if", b"5", flags=77) + arith("INCR", b"db:if", 1, opaque=1) + B("GET", b"db:if", opaque=2))
ex("bin vbucket id from the client is ignored",
   frame("SET", b"db:vb", b"v", struct.pack(">II", 0, 0), vbucket=5, opaque=1) + B("GET", b"db:vb", vbucket=7, opaque=2))
ex("bin quitq", store("SET", b"db:qq", b"v", opaque=1) + B("QUITQ", opaque=2) + B("GET", b"db:qq", opaque=3))
# Unknown opcodes without a body: with a body memcached 1.6.18 answers, then
# misreads the stream (its swallow count is off) and stops answering.
ex("bin unknown opcode", B(0xF0, opaque=1) + B(0x30, opaque=2) + B(0xEE, opaque=3) + B("NOOP", opaque=4))
ex("bin get with extras", B("GET", b"db:be", extras=b"\x00\x00\x00\x00", opaque=1) + B("NOOP", opaque=2),
   memcached_closes=True)
ex("bin set without extras", B("SET", b"db:be2", b"v", opaque=1) + B("NOOP", opaque=2), memcached_closes=True)
ex("bin append with extras", B("APPEND", b"db:be3", b"v", extras=bytes(8), opaque=1), memcached_closes=True)
ex("bin delete with extras", B("DELETE", b"db:be4", extras=bytes(4), opaque=1), memcached_closes=True)
ex("bin incr with a value", B("INCR", b"db:be5", b"x", extras=struct.pack(">QQI", 1, 0, 0), opaque=1),
   memcached_closes=True)
ex("bin touch without extras", B("TOUCH", b"db:be6", opaque=1), memcached_closes=True)
ex("bin flush with bad extras", B("FLUSH", extras=bytes(2), opaque=1), memcached_closes=True)
ex("bin get without key", B("GET", opaque=1), memcached_closes=True)
ex("bin noop with key", B("NOOP", b"db:be7", opaque=1), memcached_closes=True)
ex("bin version with key", B("VERSION", b"db:be8", opaque=1), memcached_closes=True)
ex("bin oversized value, stream continues",
   store("SET", b"db:big", BIG, opaque=1) + store("SET", b"db:after", b"ok", opaque=2) + B("GET", b"db:after", opaque=3),
   known_difference="memcached answers 0x03 too large and skips the body; Shoal's binary parser (node and "
   "proxy alike) closes the connection on any body over its limit (protocol/src/binary/header.rs check_frame), "
   "so the client sees a reset instead of the error")
ex("bin key too long", B("GET", K251, opaque=1) + B("NOOP", opaque=2), memcached_closes=True)
ex("bin quit", B("NOOP", opaque=1) + B("QUIT", opaque=2))
ex("bin quitq alone closes without a reply", B("QUITQ", opaque=1))
ex("bin quit replies, closes and ignores what follows", B("QUIT", opaque=1) + B("GET", b"db:qt", opaque=2))


# === running and comparing ===


def recv(sock):
    """The next bytes, or b"" once the peer closed (cleanly or by reset: a
    server that closes with unread input resets the connection)."""
    try:
        return sock.recv(1 << 20)
    except ConnectionResetError:
        return b""


def sentinels_in(request):
    """How many `mn` lines (arguments or not) an ASCII request holds: each
    is answered `MN`, like the harness's own sentinel."""
    return len(re.findall(rb"(?<![^\n])mn(?: [^\r\n]*)?\r\n", request))


def read_text_step(sock, expected_mn):
    """Reads until `expected_mn` `MN` lines have arrived (the sentinel is
    the last), or the connection closes."""
    buf = b""
    while len(re.findall(rb"(?<![^\n])MN\r\n", buf)) < expected_mn:
        chunk = recv(sock)
        if not chunk:
            return buf + b"<closed>"
        buf += chunk
    return buf


def read_binary_step(sock):
    buf, frames = b"", []
    while True:
        got, buf = split_frames(buf)
        frames += got
        if frames and struct.unpack_from(">I", frames[-1], 12)[0] == SENTINEL_OPAQUE:
            return b"".join(frames) + buf
        chunk = recv(sock)
        if not chunk:
            return b"".join(frames) + buf + b"<closed>"
        buf += chunk


def run_exchange(addr, exchange):
    """Runs every step on one fresh connection; returns the raw replies."""
    replies, cas_seen = [], []
    with socket.create_connection(addr, timeout=IO_DEADLINE_S) as sock:
        for step in exchange.steps:
            request = step(cas_seen) if callable(step) else step
            try:
                if exchange.binary:
                    sock.sendall(request + frame("NOOP", opaque=SENTINEL_OPAQUE))
                else:
                    sock.sendall(request + b"mn\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed mid-request: the reply so far tells what happened
            if exchange.binary:
                reply = read_binary_step(sock)
            else:
                expected = sentinels_in(request) + 1
                reply = read_text_step(sock, expected)
            replies.append(reply)
            for cas in raw_cas_values(reply, exchange.binary):
                if cas and cas not in cas_seen:
                    cas_seen.append(cas)
            if reply.endswith(b"<closed>"):
                break
    return replies


def text_items(reply):
    """Splits an ASCII/meta reply into lines and data blocks (a data block
    follows `VALUE … <bytes> [cas]` or `VA <bytes> …`)."""
    items, i = [], 0
    while i < len(reply):
        end = reply.find(b"\r\n", i)
        if end < 0:
            items.append(("rest", reply[i:]))
            break
        line = reply[i:end]
        items.append(("line", line))
        i = end + 2
        words = line.split(b" ")
        size = None
        if words[0] == b"VALUE" and len(words) >= 4:
            size = int(words[3])
        elif words[0] == b"VA" and len(words) >= 2:
            size = int(words[1])
        if size is not None:
            items.append(("data", reply[i : i + size + 2]))
            i += size + 2
    return items


META_STATUS = {b"HD", b"VA", b"EN", b"NS", b"EX", b"NF", b"MN"}


def raw_cas_values(reply, binary):
    if binary:
        frames, _ = split_frames(reply.removesuffix(b"<closed>"))
        return [struct.unpack_from(">Q", f, 16)[0] for f in frames]
    found = []
    for kind, text in text_items(reply):
        if kind != "line":
            continue
        words = text.split(b" ")
        if words[0] == b"VALUE" and len(words) == 5:
            found.append(int(words[4]))
        elif words[0] in META_STATUS:
            found += [int(w[1:]) for w in words[1:] if re.fullmatch(rb"c\d+", w)]
    return found


class CasNumbering:
    """Distinct CAS values, numbered by first appearance."""

    def __init__(self):
        self.seen = {}

    def __call__(self, cas):
        if cas == 0:
            return 0
        return self.seen.setdefault(cas, len(self.seen) + 1)


def normalize_text(reply, cas_no):
    out = []
    for kind, text in text_items(reply):
        if kind != "line":
            out.append(text)
            continue
        words = text.split(b" ")
        if words[0] == b"STAT":
            # Different servers, different counters (and groups such as
            # `items` may be empty on one side): a well-formed `STAT <name>
            # <value>` line is dropped, leaving the group's `END`.
            if len(words) < 3 or not re.fullmatch(rb"[\x21-\x7e]+", words[1]):
                out.append(b"<malformed stat line> " + text + b"\r\n")
            continue
        if words[0] == b"VERSION" and len(words) >= 2:
            words = [b"VERSION", b"<version>"]
        elif words[0] == b"VALUE" and len(words) == 5:
            words[4] = b"#%d" % cas_no(int(words[4]))
        elif words[0] in META_STATUS:
            for j, w in enumerate(words[1:], 1):
                if re.fullmatch(rb"c\d+", w):
                    words[j] = b"c#%d" % cas_no(int(w[1:]))
                elif re.fullmatch(rb"t\d+", w):
                    words[j] = b"t~%d" % ttl_bucket(int(w[1:]))
                elif re.fullmatch(rb"l\d+", w):
                    words[j] = b"l~%d" % elapsed_bucket(int(w[1:]))
        elif words[0] == b"ME" and len(words) >= 2:
            words = [b"ME", words[1]] + [normalize_me_field(w, cas_no) for w in words[2:]]
        out.append(b" ".join(words) + b"\r\n")
    return b"".join(out)


def ttl_bucket(seconds):
    """A TTL rounded up to a multiple of 100 (sign kept): read a tick
    apart, 1000 and 999 are the same."""
    return int(math.copysign(math.ceil(abs(seconds) / 100) * 100, seconds))


def elapsed_bucket(seconds):
    """Seconds since an access rounded down to a multiple of 100: read a
    tick apart, 0 and 1 are the same."""
    return seconds // 100 * 100


def normalize_me_field(field, cas_no):
    """One `name=value` field of an `ME` line (see the module docstring)."""
    m = re.fullmatch(rb"(exp|la|cas|cls|size)=(-?\d+)", field)
    if m is None:
        return field
    name, value = m.group(1), int(m.group(2))
    if name == b"exp":
        return b"exp=%d" % (value if value == -1 else ttl_bucket(value))
    if name == b"la":
        return b"la~%d" % elapsed_bucket(value)
    if name == b"cas":
        return b"cas=#%d" % cas_no(value)
    return name + b"=<n>"


def describe_frame(f, cas_no):
    magic, opcode, keylen, extlen, dtype, status, total, opaque, cas = struct.unpack_from(">BBHBBHIIQ", f)
    extras = f[24 : 24 + extlen]
    key = f[24 + extlen : 24 + extlen + keylen]
    value = f[24 + extlen + keylen :]
    # A long value is shown by its start, length and digest, so it is still
    # compared whole.
    shown = repr(value) if len(value) <= 64 else f"{value[:32]!r}...({len(value)} B, sha256 {sha256(value).hexdigest()})"
    return (
        f"magic={magic:#x} op={opcode:#04x} status={status:#06x} dtype={dtype} opaque={opaque:#x} "
        f"cas=#{cas_no(cas)} extras={extras.hex()} key={key!r} value={shown}"
        + ("" if total == extlen + keylen + len(value) else f" BAD body length {total}")
    )


def normalize_binary(reply, cas_no):
    closed = reply.endswith(b"<closed>")
    frames, rest = split_frames(reply.removesuffix(b"<closed>"))
    out = []
    for f in frames:
        opcode, keylen, status = f[1], struct.unpack_from(">H", f, 2)[0], struct.unpack_from(">H", f, 6)[0]
        if opcode == OP["STAT"] and status == 0 and keylen:
            # Different counters: a stat frame (a name in the key, a value)
            # is dropped, leaving the group's empty terminating frame.
            continue
        if opcode == OP["VERSION"] and status == 0:
            f = f[:8] + struct.pack(">I", 9) + f[12:24] + b"<version>"
        out.append(describe_frame(f, cas_no))
    if rest:
        out.append(f"partial frame {rest!r}")
    if closed:
        out.append("<closed>")
    return "\n".join(out).encode()


def normalized(exchange, replies):
    cas_no = CasNumbering()
    out = []
    for reply in replies:
        if exchange.normalize:
            reply = exchange.normalize(reply)
        if exchange.binary:
            out.append(normalize_binary(reply, cas_no))
        else:
            out.append(normalize_text(reply, cas_no))
    return out


def show(replies):
    return "\n".join(f"  step {i}: {r[:3000]!r}" + (f"... ({len(r)} bytes)" if len(r) > 3000 else "")
                     for i, r in enumerate(replies))


def up_to_memcached_close(want, got):
    """For `memcached_closes` exchanges: memcached's replies without its
    close, Shoal's cut to as many frames (after checking it stayed open)."""
    assert want[-1].endswith(b"\n<closed>"), f"memcached was expected to close: {want[-1]!r}"
    assert not got[-1].endswith(b"<closed>"), f"shoal closed a connection it can resynchronise: {got[-1]!r}"
    last = want[-1].removesuffix(b"\n<closed>")
    frames = last.count(b"\n") + 1
    return want[:-1] + [last], got[: len(want) - 1] + [b"\n".join(got[len(want) - 1].split(b"\n")[:frames])]


def param(exchange, target):
    marks = []
    reason = exchange.difference_on(target)
    if reason:
        marks.append(pytest.mark.xfail(strict=True, reason=f"{target}: {reason}"))
    return pytest.param(exchange, target, id=f"{target}:{exchange.name}", marks=marks)


@pytest.fixture(scope="module")
def memcached_replies(memcached_server):
    """memcached's raw replies to an exchange, run once for all targets
    (its keys are fresh only the first time)."""
    replies = {}

    def of(exchange):
        if exchange.name not in replies:
            replies[exchange.name] = run_exchange(memcached_server.addr, exchange)
        return replies[exchange.name]

    return of


@pytest.fixture
def shoal_target(request):
    """The server of the target `request.param` names (a test parameter,
    so a failing test's report has its logs)."""
    return request.getfixturevalue(TARGETS[request.param])


@pytest.mark.parametrize(
    "exchange,shoal_target", [param(e, t) for t in TARGETS for e in SCRIPT], indirect=["shoal_target"]
)
def test_exchange(exchange, shoal_target, memcached_replies):
    expected = memcached_replies(exchange)
    actual = run_exchange(shoal_target.addr, exchange)
    want, got = normalized(exchange, expected), normalized(exchange, actual)
    if exchange.memcached_closes:
        want, got = up_to_memcached_close(want, got)
    if want != got:
        diff = "\n".join(
            f"step {i}:\n  memcached: {w.decode(errors='replace')!r}\n  shoal:     {g.decode(errors='replace')!r}"
            for i, (w, g) in enumerate(zip(want, got)) if w != g
        )
        pytest.fail(
            f"{exchange.name}: replies differ after normalization\n{diff}\n"
            f"raw memcached:\n{show(expected)}\nraw shoal:\n{show(actual)}",
            pytrace=False,
        )


# --- expiry over real time (both servers) ---


def exchange_on(addr, request):
    with socket.create_connection(addr, timeout=IO_DEADLINE_S) as sock:
        sock.sendall(request + b"mn\r\n")
        return read_text_step(sock, sentinels_in(request) + 1)


def binary_exchange_on(addr, request):
    with socket.create_connection(addr, timeout=IO_DEADLINE_S) as sock:
        sock.sendall(request + frame("NOOP", opaque=SENTINEL_OPAQUE))
        return split_frames(read_binary_step(sock))[0][:-1]



def poll_until_expired(addr, key, deadline_s):
    """Polls `get key` until it misses; returns the seconds it took."""
    start = time.monotonic()
    with socket.create_connection(addr, timeout=IO_DEADLINE_S) as sock:
        sock.sendall(b"set %s 0 1 1\r\nx\r\nget %s\r\n" % (key, key) + b"mn\r\n")
        first = read_text_step(sock, 1)
        assert first == b"STORED\r\nVALUE %s 0 1\r\nx\r\nEND\r\nMN\r\n" % key
        while time.monotonic() - start < deadline_s:
            sock.sendall(b"get %s\r\nmn\r\n" % key)
            if read_text_step(sock, 1) == b"END\r\nMN\r\n":
                return time.monotonic() - start
            time.sleep(0.05)
    return None


@pytest.mark.parametrize("server", ["memcached_server", "shoal_node"])
def test_one_second_ttl_expires(server, request):
    addr = request.getfixturevalue(server).addr
    took = poll_until_expired(addr, b"dexp:%s" % server.encode(), 3.0)
    assert took is not None, f"{server}: an item with a 1 s TTL was still there after 3 s"


@pytest.mark.parametrize("server", ["memcached_server", "shoal_node"])
def test_delayed_flush_all(server, request):
    """`flush_all 2`: what was stored before is still there at once and gone
    within 4 s; once the deadline has passed, new writes stay. (Runs after
    the script: it flushes everything.)"""
    addr = request.getfixturevalue(server).addr
    key = b"dflush:%s" % server.encode()
    assert exchange_on(addr, b"set %s 0 0 1\r\nx\r\nflush_all 2\r\nget %s\r\n" % (key, key)) == (
        b"STORED\r\nOK\r\nVALUE %s 0 1\r\nx\r\nEND\r\nMN\r\n" % key
    )
    deadline = time.monotonic() + 4.0
    while exchange_on(addr, b"get %s\r\n" % key) != b"END\r\nMN\r\n":
        assert time.monotonic() < deadline, f"{server}: still there 4 s after `flush_all 2`"
        time.sleep(0.05)
    # A write in the deadline's own second is flushed too (memcached
    # compares whole seconds), so poll until one stays.
    after = b"set %s 0 0 1\r\ny\r\nget %s\r\n" % (key, key)
    while exchange_on(addr, after) != b"STORED\r\nVALUE %s 0 1\r\ny\r\nEND\r\nMN\r\n" % key:
        assert time.monotonic() < deadline + 2.0, f"{server}: writes after `flush_all 2` keep vanishing"
        time.sleep(0.05)


# --- the script itself ---

VERBS_WITH_KEY = {b"set", b"add", b"replace", b"append", b"prepend", b"cas", b"delete", b"incr", b"decr",
                  b"touch", b"mg", b"ms", b"md", b"ma", b"me"}


def keys_of(exchange):
    keys = set()
    for step in exchange.steps:
        request = step(FAKE_CAS) if callable(step) else step
        if exchange.binary:
            rest = request
            while len(rest) >= 24:
                keylen, extlen, total = struct.unpack_from(">H", rest, 2)[0], rest[4], struct.unpack_from(">I", rest, 8)[0]
                if keylen:
                    keys.add(rest[24 + extlen : 24 + extlen + keylen])
                rest = rest[24 + total :]
            continue
        for line in request.split(b"\r\n"):
            words = line.split(b" ")
            if words[0] in VERBS_WITH_KEY and len(words) > 1:
                keys.add(words[1])
            elif words[0] in (b"get", b"gets"):
                keys.update(words[1:])
            elif words[0] in (b"gat", b"gats"):
                keys.update(words[2:])
    return keys


def test_script_keys_are_unique_per_exchange():
    """Each exchange starts from keys no earlier exchange touched, so both
    servers hold the same state whatever ran before (flush_all aside)."""
    owner = {}
    for exchange in SCRIPT:
        for key in keys_of(exchange):
            if key in (K251, K250) or key == b"":
                continue
            assert owner.setdefault(key, exchange.name) == exchange.name, f"{key!r} used by {owner[key]!r} and {exchange.name!r}"
    assert len(SCRIPT) >= 186, f"the script shrank to {len(SCRIPT)} exchanges"


def test_known_differences_name_targets():
    """A known difference names real targets and says why."""
    for exchange in SCRIPT:
        reasons = exchange.known_difference
        if isinstance(reasons, dict):
            assert reasons and set(reasons) <= set(TARGETS), f"{exchange.name}: {sorted(reasons)}"
            assert all(isinstance(r, str) and r for r in reasons.values()), exchange.name
        else:
            assert isinstance(reasons, str), exchange.name


def test_normalization_keeps_what_matters():
    """The normalizer forgets CAS numbers, TTL and idle-time jitter,
    versions, stat values and `me`'s memory layout — and nothing else."""
    text = Exchange("t", [])
    same_cas = [b"VALUE k 0 1 7\r\nx\r\nEND\r\nHD c7 t1000\r\n"]
    assert normalized(text, same_cas) == normalized(text, [b"VALUE k 0 1 9\r\nx\r\nEND\r\nHD c9 t999\r\n"])
    assert normalized(text, same_cas) != normalized(text, [b"VALUE k 0 1 7\r\nx\r\nEND\r\nHD c8 t1000\r\n"])
    assert normalized(text, same_cas) != normalized(text, [b"VALUE k 0 1 7\r\ny\r\nEND\r\nHD c7 t1000\r\n"])
    assert normalized(text, same_cas) != normalized(text, [b"VALUE k 0 1 7\r\nx\r\nEND\r\nHD c7 t100\r\n"])
    assert normalized(text, [b"VERSION 1.6.18\r\nSTAT a 1\r\nEND\r\n"]) == normalized(
        text, [b"VERSION x\r\nSTAT b 2\r\nSTAT c 3\r\nEND\r\n"]
    )
    assert normalized(text, [b"STAT a 1\r\nEND\r\n"]) != normalized(text, [b"STAT a\r\nEND\r\n"])
    # `l`: a tick of idle time is forgotten, more is not.
    assert normalized(text, [b"HD h0 l0\r\n"]) == normalized(text, [b"HD h0 l1\r\n"])
    assert normalized(text, [b"HD h0 l0\r\n"]) != normalized(text, [b"HD h0 l200\r\n"])
    assert normalized(text, [b"HD h0 l0\r\n"]) != normalized(text, [b"HD h1 l0\r\n"])
    # `me`: cls and size are forgotten; exp and la tick like t and l; the
    # key, fetch, CAS identity and exp's sign are kept.
    me = b"HD c7\r\nME k exp=1000 la=0 cas=7 fetch=no cls=1 size=69\r\n"
    assert normalized(text, [me]) == normalized(text, [b"HD c3\r\nME k exp=999 la=1 cas=3 fetch=no cls=9 size=4\r\n"])
    for other in (b"HD c7\r\nME k exp=1000 la=0 cas=8 fetch=no cls=1 size=69\r\n",
                  b"HD c7\r\nME k exp=-1000 la=0 cas=7 fetch=no cls=1 size=69\r\n",
                  b"HD c7\r\nME k exp=-1 la=0 cas=7 fetch=no cls=1 size=69\r\n",
                  b"HD c7\r\nME k exp=1000 la=300 cas=7 fetch=no cls=1 size=69\r\n",
                  b"HD c7\r\nME k exp=1000 la=0 cas=7 fetch=yes cls=1 size=69\r\n",
                  b"HD c7\r\nME j exp=1000 la=0 cas=7 fetch=no cls=1 size=69\r\n",
                  b"HD c7\r\nME k exp=1000 la=0 cas=7 fetch=no cls=1\r\n"):  # fmt: skip
        assert normalized(text, [me]) != normalized(text, [other]), other
    # Per-key CAS (`cas_per_key`): two keys may share a CAS value, one key's
    # CAS is still compared with itself.
    per_key = Exchange("p", [], normalize=cas_per_key)
    shared = [b"VALUE a 0 1 5\r\nx\r\nVALUE b 0 1 5\r\ny\r\nVALUE a 0 1 5\r\nx\r\nEND\r\n"]
    unique = [b"VALUE a 0 1 5\r\nx\r\nVALUE b 0 1 6\r\ny\r\nVALUE a 0 1 5\r\nx\r\nEND\r\n"]
    assert normalized(per_key, shared) == normalized(per_key, unique)
    assert normalized(per_key, unique) != normalized(
        per_key, [b"VALUE a 0 1 5\r\nx\r\nVALUE b 0 1 6\r\ny\r\nVALUE a 0 1 7\r\nx\r\nEND\r\n"]
    )
    per_key_binary = Exchange("pb", [], binary=True, normalize=cas_per_key_binary)

    def a_b_a(*cas):  # GETK replies for a, b, a with these CAS values
        return [b"".join(frame("GETK", k, k, cas=c) for k, c in zip((b"a", b"b", b"a"), cas))]

    assert normalized(per_key_binary, a_b_a(5, 5, 5)) == normalized(per_key_binary, a_b_a(5, 6, 5))
    assert normalized(per_key_binary, a_b_a(5, 5, 5)) != normalized(per_key_binary, a_b_a(5, 5, 6))
    binary = Exchange("b", [], binary=True)
    big = b"v" * 100
    hit = frame("GET", value=big, cas=5) + frame("SET", cas=5)
    assert normalized(binary, [hit]) == normalized(binary, [frame("GET", value=big, cas=8) + frame("SET", cas=8)])
    assert normalized(binary, [hit]) != normalized(binary, [frame("GET", value=big, cas=8) + frame("SET", cas=9)])
    assert normalized(binary, [hit]) != normalized(binary, [frame("GET", value=big[:-1] + b"w", cas=5) + frame("SET", cas=5)])


# === Shoal's deliberate differences, pinned ===
#
# Where Shoal answers differently from memcached by design, the node's reply
# is checked here (so a change is a decision, not an accident), next to
# memcached's for the record.


def test_control_characters_in_keys_are_refused(memcached_server, shoal_node):
    # DESIGN.md: keys have no spaces or control characters. memcached only
    # splits on spaces and stores such keys.
    request = b"set dc:a\x01b 0 0 1\r\nx\r\nget dc:a\x01b\r\ndelete dc:a\x02\r\n"
    assert exchange_on(memcached_server.addr, request) == b"STORED\r\nVALUE dc:a\x01b 0 1\r\nx\r\nEND\r\nNOT_FOUND\r\nMN\r\n"
    assert exchange_on(shoal_node.addr, request) == (
        b"CLIENT_ERROR bad command line format\r\n"
        b"ERROR\r\n"  # the data block, read as a command line, as memcached does after a bad set line
        b"CLIENT_ERROR bad command line format\r\n"
        b"CLIENT_ERROR bad command line format\r\nMN\r\n"
    )


def test_binary_verbosity_and_sasl(memcached_server, shoal_node):
    request = frame("VERBOSITY", extras=struct.pack(">I", 1), opaque=1) + frame(0x20, opaque=2)
    # memcached 1.6.18 (no -S) knows neither; Shoal answers VERBOSITY as
    # the binary protocol specifies, and lists the SASL mechanisms it
    # checks, strongest first in Couchbase's names and order
    # (node/src/server/session.rs `MECHANISMS`).
    got = [(f[1], struct.unpack_from(">H", f, 6)[0], f[24:]) for f in binary_exchange_on(shoal_node.addr, request)]
    assert got == [(0x1B, 0, b""), (0x20, 0, b"SCRAM-SHA512 SCRAM-SHA256 SCRAM-SHA1 PLAIN")]
    want = binary_exchange_on(memcached_server.addr, frame(0x20, opaque=2))
    assert [(f[1], struct.unpack_from(">H", f, 6)[0]) for f in want] == [(0x20, 0x81)]


def test_node_stats_names(shoal_node):
    # The differential test only checks the shape of `stats`; these are the
    # names dashboards and scripts read (DESIGN.md: Couchbase's names).
    reply = exchange_on(shoal_node.addr, b"stats\r\n")
    stats = dict(line.split(b" ", 2)[1:] for line in reply.split(b"\r\n") if line.startswith(b"STAT "))
    for name in [b"pid", b"uptime", b"time", b"version", b"curr_connections", b"curr_items", b"mem_used",
                 b"ep_queue_size", b"ep_flusher_todo", b"ep_warmup_thread", b"ep_max_data_size"]:
        assert name in stats, f"stats lacks {name!r}: {sorted(stats)}"
    assert stats[b"ep_warmup_thread"] == b"complete"
    assert len(stats) == reply.count(b"STAT "), "a stat name appears twice"


def test_binary_frame_with_key_past_its_body(memcached_server, shoal_node):
    # The stream cannot be resynchronised: both close. DESIGN.md names 0x04
    # (invalid arguments) for malformed input; memcached says 0x81.
    request = frame("GET", b"k" * 10, opaque=3, body_len=5)[:-5]
    request_with_noop = request + frame("NOOP", opaque=4)
    for server, status in ((memcached_server, 0x81), (shoal_node, 0x04)):
        with socket.create_connection(server.addr, timeout=IO_DEADLINE_S) as sock:
            sock.sendall(request_with_noop)
            reply = read_binary_step(sock)
        frames, rest = split_frames(reply.removesuffix(b"<closed>"))
        assert reply.endswith(b"<closed>") and not rest, f"{server.name}: {reply!r}"
        assert [(f[1], struct.unpack_from(">H", f, 6)[0], struct.unpack_from(">I", f, 12)[0]) for f in frames] == [
            (0x00, status, 3)
        ], f"{server.name}: {reply!r}"


# === stats through a proxy ===


def stats_of(addr):
    reply = exchange_on(addr, b"stats\r\n")
    return {w[1].decode(): w[2].decode() for w in (line.split(b" ", 2) for line in reply.split(b"\r\n")) if w[0] == b"STAT"}


def test_stats_through_the_proxy_merge_the_way_each_stat_means(shoal_cluster, vbucket_proxy):
    """Counters are the sum of the three nodes'; the identities (`time`,
    `pid`, `uptime`, `version`) are the proxy's own."""
    with socket.create_connection(vbucket_proxy.addr, timeout=IO_DEADLINE_S) as sock:
        for i in range(60):
            sock.sendall(b"set st:%d 0 0 1\r\nx\r\nget st:%d st:miss%d\r\n" % (i, i, i))
        sock.sendall(b"mn\r\n")
        read_text_step(sock, 1)
    nodes = shoal_cluster.cluster.nodes
    counters = ["cmd_get", "cmd_set", "get_hits", "get_misses", "curr_items"]
    for _ in range(20):
        before = [stats_of(n.addr) for n in nodes]
        through = stats_of(vbucket_proxy.addr)
        clock = time.time()
        after = [stats_of(n.addr) for n in nodes]
        if before == after or all(before[i][c] == after[i][c] for i in range(3) for c in counters):
            break
    else:
        pytest.fail("node counters kept moving with no client load")
    for name in counters:
        assert int(through[name]) == sum(int(s[name]) for s in before), (name, through[name], [s[name] for s in before])
    assert int(through["cmd_set"]) >= 60 and int(through["get_hits"]) >= 60
    assert abs(int(through["time"]) - clock) <= 1.0, (through["time"], clock)
    assert int(through["uptime"]) <= max(int(s["uptime"]) for s in before) + 1
    assert through["pid"] not in {s["pid"] for s in before}, "the pid is the proxy's, not a node's or a sum"
    proxy_view = exchange_on(vbucket_proxy.addr, b"stats proxy\r\n")
    assert proxy_view.count(b"STAT node_") >= 3 * 4, "`stats proxy` keeps the per-node view"
