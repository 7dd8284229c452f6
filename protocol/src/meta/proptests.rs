//! Property tests for the meta codec, stating its laws: encoding a generated
//! command or reply and parsing it back gives the same thing; the bytes of a
//! stream can arrive split anywhere without changing what is parsed (errors
//! and skips included); and no input, however arbitrary, makes a parser
//! panic, claim more bytes than it was given, or stall with a zero skip.

use bytes::BytesMut;
use proptest::prelude::*;

use super::*;
use crate::exptime::Exptime;
use crate::Recovery;

// === Generators ===

/// A byte that may appear in a key or token: no space, no control character.
fn graphic() -> impl Strategy<Value = u8> {
    prop_oneof![0x21u8..=0x7e, 0x80u8..=0xff]
}

fn bytes_of(len: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(graphic(), len)
}

/// Everything a command needs, as owned bytes and values; `build` lays the
/// bytes out in a frame and makes the span-based command.
#[derive(Clone, Debug)]
struct Model {
    verb: u8,
    key: Vec<u8>,
    base64: bool,
    flags: Vec<Flag>,
    opaque: Vec<u8>,
    hint_p: Vec<u8>,
    hint_l: Vec<u8>,
    ttls: [i32; 3],
    cas: [u64; 2],
    client_flags: u32,
    mode: u8,
    delta: u64,
    initial: u64,
    value: Vec<u8>,
}

fn model() -> impl Strategy<Value = Model> {
    let verb = prop::sample::select(vec![b'g', b's', b'd', b'a', b'n', b'e']);
    let key = prop_oneof![
        bytes_of(1..=250).prop_map(|k| (k, false)),
        proptest::collection::vec(any::<u8>(), 1..=186).prop_map(|raw| {
            let mut enc = BytesMut::new();
            base64::encode_to(&mut enc, &raw);
            (enc.to_vec(), true)
        }),
    ];
    let flags = Just(Flag::ALL.to_vec())
        .prop_shuffle()
        .prop_flat_map(|all| (Just(all), 0usize..=17))
        .prop_map(|(all, n)| all.into_iter().take(n).collect::<Vec<_>>());
    let tokens = (bytes_of(0..=31), bytes_of(0..=20), bytes_of(0..=20));
    let numbers = (
        any::<[i32; 3]>(),
        any::<[u64; 2]>(),
        any::<u32>(),
        graphic(),
        any::<u64>(),
        any::<u64>(),
    );
    let value = proptest::collection::vec(any::<u8>(), 0..=64);
    (verb, key, flags, tokens, numbers, value).prop_map(
        |(verb, (key, base64), flags, (opaque, hint_p, hint_l), nums, value)| {
            let (ttls, cas, client_flags, mode, delta, initial) = nums;
            let mut m = Model {
                verb,
                key,
                base64,
                flags,
                opaque,
                hint_p,
                hint_l,
                ttls,
                cas,
                client_flags,
                mode,
                delta,
                initial,
                value,
            };
            // memcached's token limit: `b` counts, and `ms` spends one on
            // its datalen.
            let max = if m.verb == b's' { 16 } else { 17 } - usize::from(m.base64);
            m.flags.truncate(max);
            if m.verb == b's' {
                m.mode = SetMode::from_byte(m.mode).map_or(b'S', |_| m.mode);
            }
            if m.verb == b'a' {
                m.mode = ArithMode::from_byte(m.mode).map_or(b'+', |_| m.mode);
            }
            m
        },
    )
}

impl Model {
    /// The frame holding the model's bytes, and the command over it.
    fn build(&self) -> (Vec<u8>, MetaCommand) {
        let mut frame = Vec::new();
        let mut place = |bytes: &[u8]| {
            let start = frame.len();
            frame.extend_from_slice(bytes);
            Span::new(start, frame.len())
        };
        let key = place(&self.key);
        let opaque = place(&self.opaque);
        let hint_p = place(&self.hint_p);
        let hint_l = place(&self.hint_l);
        let value = place(&self.value);
        let [t, n, r] = self.ttls.map(|v| Exptime(i64::from(v)));
        let flags = self
            .flags
            .iter()
            .fold(MetaFlags::new(), |f, &flag| match flag {
                Flag::Opaque => f.with_opaque(opaque),
                Flag::HintP => f.with_hint_p(hint_p),
                Flag::HintL => f.with_hint_l(hint_l),
                Flag::Ttl => f.with_ttl(t),
                Flag::Vivify => f.with_vivify_ttl(n),
                Flag::Recache => f.with_recache_ttl(r),
                Flag::CompareCas => f.with_compare_cas(self.cas[0]),
                Flag::ClientFlags => f.with_client_flags(self.client_flags),
                Flag::Mode => f.with_mode(self.mode),
                Flag::Delta => f.with_delta(self.delta),
                Flag::Initial => f.with_initial(self.initial),
                other => f.with(other),
            });
        let base64 = self.base64;
        let cmd = match self.verb {
            b'g' => MetaCommand::Get(MetaGet { key, base64, flags }),
            b's' => MetaCommand::Set(MetaSet {
                key,
                base64,
                datalen: value.len(),
                value,
                flags,
            }),
            b'd' => MetaCommand::Delete(MetaDelete { key, base64, flags }),
            b'a' => MetaCommand::Arith(MetaArith { key, base64, flags }),
            b'e' => MetaCommand::Debug(MetaDebug { key, base64 }),
            _ => MetaCommand::Noop,
        };
        (frame, cmd)
    }
}

fn encode(cmd: &MetaCommand, frame: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_meta(&mut out, cmd, frame);
    out.to_vec()
}

/// What a connection would see, feeding `chunks` in order and honouring skips
/// that reach past what has arrived: each command re-encoded, or the error.
fn stream(chunks: &[&[u8]]) -> Vec<Result<Vec<u8>, ParseError>> {
    let limits = Limits::default();
    let mut seen = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut pending_skip = 0usize;
    for chunk in chunks {
        let drop = pending_skip.min(chunk.len());
        pending_skip -= drop;
        buf.extend_from_slice(&chunk[drop..]);
        loop {
            match parse_meta(&buf, &limits) {
                Ok(Some((cmd, n))) => {
                    assert!(n > 0 && n <= buf.len());
                    seen.push(Ok(encode(&cmd, &buf)));
                    buf.drain(..n);
                }
                Ok(None) => break,
                Err(e) => {
                    seen.push(Err(e));
                    match e.recovery {
                        Recovery::Skip(n) => {
                            assert!(n > 0, "a zero skip would stall the stream");
                            let now = n.min(buf.len());
                            buf.drain(..now);
                            pending_skip = n - now;
                            if pending_skip > 0 {
                                break;
                            }
                        }
                        Recovery::Close => return seen,
                    }
                }
            }
        }
    }
    seen
}

/// Generated replies: (wire bytes produced by the encoder).
fn reply() -> impl Strategy<Value = Vec<u8>> {
    let flag = (
        prop::sample::select(b"kOcfstlhbWXZ".to_vec()),
        bytes_of(0..=12),
    );
    let flags = proptest::collection::vec(flag, 0..=MAX_REPLY_FLAGS);
    let kind = 0u8..7;
    let value = proptest::collection::vec(any::<u8>(), 0..=64);
    let words = proptest::collection::vec(bytes_of(1..=10), 0..=5);
    (kind, flags, value, bytes_of(1..=250), words).prop_map(|(kind, flags, value, key, words)| {
        let mut frame = Vec::new();
        let mut place = |b: &[u8]| {
            let s = frame.len();
            frame.extend_from_slice(b);
            Span::new(s, frame.len())
        };
        let mut rf = ReplyFlags::new();
        for (c, tok) in &flags {
            let span = place(tok);
            assert!(rf.push(*c, span));
        }
        let value = place(&value);
        let key = place(&key);
        let text = place(&words.join(&b' '));
        let reply = match kind {
            0 => MetaReply::Value { flags: rf, value },
            1 => MetaReply::Noop,
            2 => MetaReply::Debug { key, info: text },
            3 => MetaReply::Error {
                kind: ErrorReply::ClientError,
                message: text,
            },
            4 => MetaReply::Error {
                kind: ErrorReply::Error,
                message: text,
            },
            5 => MetaReply::Error {
                kind: ErrorReply::ServerError,
                message: text,
            },
            _ => MetaReply::Status {
                status: [Status::Hd, Status::En, Status::Nf, Status::Ns, Status::Ex]
                    [flags.len() % 5],
                flags: rf,
            },
        };
        let mut out = BytesMut::new();
        encode_meta_reply(&mut out, &reply, &frame);
        out.to_vec()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn command_encode_parse_identity(m in model()) {
        let (frame, cmd) = m.build();
        let wire = encode(&cmd, &frame);
        let (parsed, n) = parse_meta(&wire, &Limits::default())
            .unwrap_or_else(|e| panic!("{e} for {:?}", String::from_utf8_lossy(&wire)))
            .expect("complete");
        prop_assert_eq!(n, wire.len());
        prop_assert_eq!(encode(&parsed, &wire), wire.clone());
        // The parts mean the same, not just re-encode the same.
        prop_assert_eq!(parsed.base64(), cmd.base64());
        prop_assert_eq!(parsed.key().map(|k| k.of(&wire).to_vec()), cmd.key().map(|k| k.of(&frame).to_vec()));
        if let (Some(a), Some(b)) = (parsed.flags(), cmd.flags()) {
            prop_assert!(a.iter().eq(b.iter()));
            prop_assert_eq!(a.ttl(), b.ttl());
            prop_assert_eq!(a.compare_cas(), b.compare_cas());
            prop_assert_eq!(a.client_flags(), b.client_flags());
            prop_assert_eq!(a.opaque().map(|o| o.of(&wire).to_vec()), b.opaque().map(|o| o.of(&frame).to_vec()));
        }
        if let (MetaCommand::Set(a), MetaCommand::Set(b)) = (parsed, cmd) {
            prop_assert_eq!(a.value.of(&wire), b.value.of(&frame));
            prop_assert_eq!(a.mode(), b.mode());
        }
    }

    #[test]
    fn reply_encode_parse_identity(wire in reply()) {
        let (parsed, n) = parse_meta_reply(&wire, &Limits::default()).unwrap().expect("complete");
        prop_assert_eq!(n, wire.len());
        let mut out = BytesMut::new();
        encode_meta_reply(&mut out, &parsed, &wire);
        prop_assert_eq!(&out[..], &wire[..]);
    }

    #[test]
    fn any_split_gives_the_same_sequence(
        models in proptest::collection::vec(model(), 1..5),
        junk in proptest::collection::vec(any::<u8>(), 0..40),
        cut in any::<prop::sample::Index>(),
        cut2 in any::<prop::sample::Index>(),
    ) {
        let mut wire = Vec::new();
        for m in &models {
            let (frame, cmd) = m.build();
            wire.extend(encode(&cmd, &frame));
        }
        // Garbage lines in the middle must resynchronise the same way too.
        wire.extend_from_slice(b"m");
        wire.extend_from_slice(&junk);
        wire.extend_from_slice(b"\r\nmn\r\n");
        let whole = stream(&[&wire]);
        let a = cut.index(wire.len() + 1);
        let b = a + cut2.index(wire.len() - a + 1);
        prop_assert_eq!(&stream(&[&wire[..a], &wire[a..]]), &whole);
        prop_assert_eq!(&stream(&[&wire[..a], &wire[a..b], &wire[b..]]), &whole);
        let bytewise: Vec<&[u8]> = wire.chunks(1).collect();
        prop_assert_eq!(&stream(&bytewise), &whole);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        data in proptest::collection::vec(any::<u8>(), 0..300),
        prefix in prop::sample::select(vec![&b""[..], b"m", b"mg ", b"ms ", b"md ", b"ma ", b"me ", b"mn", b"ms k 3 ", b"VA ", b"HD ", b"ME "]),
        line_len in 1usize..400,
    ) {
        let data = [prefix, &data[..]].concat();
        for limits in [Limits::default(), Limits { max_line_len: line_len, max_value_len: 8, ..Limits::default() }] {
            match parse_meta(&data, &limits) {
                Ok(Some((cmd, n))) => {
                    prop_assert!(n > 0 && n <= data.len());
                    let _ = encode(&cmd, &data);
                }
                Ok(None) => {}
                Err(e) => if let Recovery::Skip(n) = e.recovery { prop_assert!(n > 0) },
            }
            match parse_meta_reply(&data, &limits) {
                Ok(Some((reply, n))) => {
                    prop_assert!(n > 0 && n <= data.len());
                    let mut out = BytesMut::new();
                    encode_meta_reply(&mut out, &reply, &data);
                }
                Ok(None) => {}
                Err(e) => if let Recovery::Skip(n) = e.recovery { prop_assert!(n > 0) },
            }
        }
    }
}
