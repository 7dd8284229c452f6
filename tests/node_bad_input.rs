//! Bad input from one client, end to end: each case below is sent on a
//! connection of its own and must get exactly the protocol's error (and
//! stay usable, or be closed where the stream cannot be resynchronised) —
//! never a hang (every read times out), never a crash, never a big
//! allocation (the node's RSS and peak virtual size are checked around the
//! cases that declare huge lengths). Meanwhile a second, well-behaved
//! connection stores and reads a fresh key before and after every case and
//! must always get the right answer; at the end every bad connection has
//! been released (`curr_connections` back to 1) and `protocol_errors`
//! counted them.
//!
//! The cases are a table: bytes to send, then what must come back. Replies
//! are memcached 1.6's (the node's differential test checks that wording
//! against a real memcached).

mod common;

use std::time::Instant;

use common::{binary_header, proc_status_bytes, stat_u64, Conn, NodeProcess, TestDir};

const MIB: u64 = 1024 * 1024;

/// What a case must produce.
enum Then {
    /// Exactly these reply bytes, after which the connection still answers
    /// `version`.
    Reply(&'static [u8]),
    /// Exactly these reply bytes, then the node closes the connection.
    ReplyThenClose(&'static [u8]),
    /// One binary response with this opcode, status and opaque, then the
    /// node closes the connection.
    BinaryThenClose {
        opcode: u8,
        status: u16,
        opaque: u32,
    },
    /// One binary response with this status, after which the connection
    /// still answers a binary NOOP.
    BinaryReply {
        opcode: u8,
        status: u16,
        opaque: u32,
    },
    /// The client half-closes after sending; the node may answer anything
    /// but must then close too (it must not wait forever on a partial
    /// request once the client is gone).
    ClosesAfterClientEof,
}

struct Case {
    name: &'static str,
    send: Vec<u8>,
    then: Then,
    /// Also check that the node did not allocate for a declared length.
    watch_memory: bool,
}

/// A binary request: header plus body.
fn binary(opcode: u8, extras: &[u8], key: &[u8], value: &[u8], opaque: u32) -> Vec<u8> {
    let body = extras.len() + key.len() + value.len();
    let mut frame = binary_header(
        opcode,
        key.len() as u16,
        extras.len() as u8,
        0,
        body as u32,
        opaque,
    )
    .to_vec();
    frame.extend_from_slice(extras);
    frame.extend_from_slice(key);
    frame.extend_from_slice(value);
    frame
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

fn cases(max_line_len: usize) -> Vec<Case> {
    const GET: u8 = 0x00;
    const SET: u8 = 0x01;
    let case = |name, send: Vec<u8>, then| Case {
        name,
        send,
        then,
        watch_memory: false,
    };
    let mut long_get = b"get".to_vec();
    for i in 0..10_000 {
        long_get.extend_from_slice(format!(" nokey{i:05}").as_bytes());
    }
    assert!(long_get.len() > 100 * 1024);
    long_get.extend_from_slice(b"\r\n");
    vec![
        // --- classic ASCII ---
        case(
            "binary garbage on a text line",
            b"\x00\x01\xfe garbage \xff\r\n".to_vec(),
            Then::Reply(b"ERROR\r\n"),
        ),
        case(
            "unknown verb",
            b"frobnicate a b c\r\n".to_vec(),
            Then::Reply(b"ERROR\r\n"),
        ),
        case(
            "set with non-numeric flags (data block then read as a command)",
            b"set k abc 0 1\r\nx\r\n".to_vec(),
            Then::Reply(b"CLIENT_ERROR bad command line format\r\nERROR\r\n"),
        ),
        Case {
            watch_memory: true,
            ..case(
                "set declaring 4294967295 bytes",
                b"set k 0 0 4294967295\r\n".to_vec(),
                Then::Reply(b"CLIENT_ERROR bad command line format\r\n"),
            )
        },
        case(
            "set declaring -1 bytes",
            b"set k 0 0 -1\r\n".to_vec(),
            Then::Reply(b"CLIENT_ERROR bad command line format\r\n"),
        ),
        Case {
            watch_memory: true,
            ..case(
                "set over the item size limit: refused, its 2 MB data block swallowed",
                {
                    let mut v = b"set k 0 0 2000000\r\n".to_vec();
                    v.resize(v.len() + 2_000_000, b'a');
                    v.extend_from_slice(b"\r\n");
                    v
                },
                Then::Reply(b"SERVER_ERROR object too large for cache\r\n"),
            )
        },
        case(
            "data block longer than declared",
            b"set k 0 0 1\r\nxyz\r\n".to_vec(),
            Then::Reply(b"CLIENT_ERROR bad data chunk\r\nERROR\r\n"),
        ),
        case(
            // memcached reads get lines of any length; the node takes up to
            // its line limit, so a 100 KiB line is buffered, not refused.
            "a 100 KiB get line is answered once its CRLF arrives",
            long_get,
            Then::Reply(b"END\r\n"),
        ),
        case(
            "a line past the line limit with no newline",
            vec![b'g'; max_line_len + 64 * 1024],
            Then::ReplyThenClose(b"CLIENT_ERROR line too long\r\n"),
        ),
        // --- meta ---
        case(
            "unknown meta verb",
            b"mz foo\r\n".to_vec(),
            Then::Reply(b"ERROR\r\n"),
        ),
        case(
            "meta get with a control byte for a flag",
            b"mg k \x01\r\n".to_vec(),
            Then::Reply(b"CLIENT_ERROR invalid flag\r\n"),
        ),
        // --- binary ---
        Case {
            watch_memory: true,
            ..case(
                "binary header declaring a 4 GiB body",
                binary_header(GET, 1, 0, 0, u32::MAX, 0xdead_beef).to_vec(),
                Then::BinaryThenClose {
                    opcode: GET,
                    status: 0x03,
                    opaque: 0xdead_beef,
                },
            )
        },
        Case {
            watch_memory: true,
            ..case(
                "binary set declaring a 300 MiB value",
                binary_header(SET, 1, 8, 0, 9 + 300 * 1024 * 1024, 7).to_vec(),
                Then::BinaryThenClose {
                    opcode: SET,
                    status: 0x03,
                    opaque: 7,
                },
            )
        },
        case(
            "binary extras and key longer than the body",
            binary_header(GET, 5, 10, 0, 3, 11).to_vec(),
            Then::BinaryThenClose {
                opcode: GET,
                status: 0x04,
                opaque: 11,
            },
        ),
        case(
            // The frame's length is known, so the stream resynchronises.
            "binary get carrying a value",
            binary(GET, &[], b"k", b"value", 12),
            Then::BinaryReply {
                opcode: GET,
                status: 0x04,
                opaque: 12,
            },
        ),
        case(
            "binary unknown opcode",
            binary(0xfe, &[], b"", b"", 13),
            Then::BinaryReply {
                opcode: 0xfe,
                status: 0x81,
                opaque: 13,
            },
        ),
        case(
            "truncated binary frame, then the client closes",
            binary(GET, &[], b"hello", b"", 14)[..24 + 3].to_vec(),
            Then::ClosesAfterClientEof,
        ),
        case(
            "a text line cut short, then the client closes",
            b"get some".to_vec(),
            Then::ClosesAfterClientEof,
        ),
        // --- noise: whatever it parses as, the node must answer or wait,
        // and close once the client has gone ---
        case(
            "64 KiB of noise",
            noise(1, 64 * 1024),
            Then::ClosesAfterClientEof,
        ),
        case(
            "noise after a binary magic byte",
            [&[0x80u8][..], &noise(2, 4096)].concat(),
            Then::ClosesAfterClientEof,
        ),
        case(
            "noise lines",
            noise(3, 16 * 1024)
                .chunks(61)
                .flat_map(|c| [c, b"\r\n"].concat())
                .collect(),
            Then::ClosesAfterClientEof,
        ),
    ]
}

/// The well-behaved client: stores a fresh key and reads it (and the
/// previous one) back.
struct GoodClient {
    conn: Conn,
    round: u32,
}

impl GoodClient {
    fn check(&mut self, when: &str) {
        let r = self.round;
        let key = format!("good:{r}");
        let value = format!("value-{r}-{}", "x".repeat(r as usize % 50));
        assert_eq!(self.conn.set(&key, r, value.as_bytes()), "STORED", "{when}");
        let hit = self
            .conn
            .get(&key)
            .unwrap_or_else(|| panic!("{when}: {key} missing"));
        assert_eq!((hit.flags, hit.data), (r, value.into_bytes()), "{when}");
        if r > 0 {
            assert!(
                self.conn.get(&format!("good:{}", r - 1)).is_some(),
                "{when}"
            );
        }
        self.round += 1;
    }
}

/// Sends `case` on a fresh connection and checks what comes back.
fn run(node: &NodeProcess, case: &Case) {
    let mut conn = Conn::connect(node.addr).expect("connect");
    match &case.then {
        Then::Reply(want) => {
            assert!(conn.send_lossy(&case.send), "node closed mid-request");
            let got = conn.read_exact(want.len()).expect("read the reply");
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(want),
                "reply"
            );
            conn.send(b"version\r\n").expect("send version");
            let line = conn.line();
            assert!(
                line.starts_with("VERSION "),
                "connection unusable after the error: {line:?}"
            );
        }
        Then::ReplyThenClose(want) => {
            conn.send_lossy(&case.send);
            let got = conn.read_until_closed();
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(want),
                "reply before the close"
            );
        }
        Then::BinaryThenClose {
            opcode,
            status,
            opaque,
        } => {
            conn.send_lossy(&case.send);
            let resp = conn.read_binary().expect("a binary error response");
            assert_eq!(
                (resp.opcode, resp.status, resp.opaque),
                (*opcode, *status, *opaque),
                "opcode, status, opaque"
            );
            let rest = conn.read_until_closed();
            assert!(rest.is_empty(), "bytes after the error: {rest:?}");
        }
        Then::BinaryReply {
            opcode,
            status,
            opaque,
        } => {
            conn.send(&case.send).expect("send");
            let resp = conn.read_binary().expect("a binary error response");
            assert_eq!(
                (resp.opcode, resp.status, resp.opaque),
                (*opcode, *status, *opaque),
                "opcode, status, opaque"
            );
            conn.send(&binary(0x0a, &[], b"", b"", 99))
                .expect("send noop");
            let noop = conn.read_binary().expect("noop response");
            assert_eq!((noop.opcode, noop.status, noop.opaque), (0x0a, 0, 99));
        }
        Then::ClosesAfterClientEof => {
            conn.send_lossy(&case.send);
            conn.shutdown_write();
            // Anything may come first; the close must come.
            conn.read_until_closed();
        }
    }
}

#[test]
fn bad_input_gets_an_error_or_a_close_and_never_disturbs_other_clients() {
    let dir = TestDir::new("bad-input");
    let mut node = NodeProcess::start(dir.path(), &[]);
    node.wait_ready();
    let pid = node.pid();
    let mut good = GoodClient {
        conn: Conn::connect(node.addr).expect("connect"),
        round: 0,
    };
    good.check("at start");
    let max_line_len: usize = {
        let mut conn = Conn::connect(node.addr).expect("connect");
        conn.send(b"stats settings\r\n").unwrap();
        let mut len = None;
        loop {
            let line = conn.line();
            if line == "END" {
                break;
            }
            if let Some(v) = line.strip_prefix("STAT max_line_length ") {
                len = Some(v.parse().expect("max_line_length"));
            }
        }
        len.expect("stats settings has max_line_length")
    };
    let errors_before = stat_u64(&node.stats(), "protocol_errors");
    let cases = cases(max_line_len);
    let started = Instant::now();
    for case in &cases {
        let memory_before = case.watch_memory.then(|| {
            (
                proc_status_bytes(pid, "VmRSS").unwrap(),
                proc_status_bytes(pid, "VmPeak").unwrap(),
            )
        });
        println!("case: {}", case.name);
        run(&node, case);
        node.assert_alive();
        if let Some((rss, peak)) = memory_before {
            let rss_after = proc_status_bytes(pid, "VmRSS").unwrap();
            let peak_after = proc_status_bytes(pid, "VmPeak").unwrap();
            // Resident growth would be the bytes actually buffered; the
            // peak virtual size would show even a reservation the node
            // never touched. New allocator arenas and thread stacks can
            // add tens of MiB of address space, a declared length GiBs.
            assert!(
                rss_after < rss + 16 * MIB,
                "{}: RSS went from {} to {} MiB",
                case.name,
                rss / MIB,
                rss_after / MIB
            );
            assert!(
                peak_after < peak + 1024 * MIB,
                "{}: VmPeak went from {} to {} MiB",
                case.name,
                peak / MIB,
                peak_after / MIB
            );
        }
        good.check(&format!("after {:?}", case.name));
    }
    println!("{} bad-input cases in {:?}", cases.len(), started.elapsed());

    // Every bad connection is gone (the good one remains)...
    node.wait_for_stats("bad connections to be released", |s| {
        // The stats connection itself is one.
        stat_u64(s, "curr_connections") == 2
    });
    // ...and each case with an error reply counted at least one error.
    let errors = stat_u64(&node.stats(), "protocol_errors") - errors_before;
    let answered = cases
        .iter()
        .filter(|c| !matches!(c.then, Then::ClosesAfterClientEof) && !c.name.contains("100 KiB"))
        .count() as u64;
    assert!(
        errors >= answered,
        "{errors} protocol errors counted for {answered} bad requests"
    );
    println!(
        "protocol_errors +{errors}; node RSS {} MiB",
        node.rss() / MIB
    );
    let status = node.sigterm_and_wait();
    assert_eq!(status.code(), Some(0));
}
