//! Property tests for the ASCII codec, stated as laws: encode→parse is the
//! identity for generated commands and replies; every proper prefix of an
//! encoded request needs more bytes; any split of a pipelined buffer yields
//! the same commands; and arbitrary bytes never panic, never claim more than
//! the input (except the declared data block an oversized value swallows),
//! and always make progress.

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;

use super::*;
use crate::Recovery;

/// An owned command, the generator's view of [`Command`].
#[derive(Clone, Debug, PartialEq)]
enum Spec {
    Get(GetVerb, Vec<Vec<u8>>),
    Store(StoreVerb, Vec<u8>, u32, i32, Vec<u8>, bool),
    Delete(Vec<u8>, bool),
    Arith(ArithVerb, Vec<u8>, u64, bool),
    Touch(Vec<u8>, i32, bool),
    FlushAll(i32, bool),
    Verbosity(u32, bool),
    Stats(Vec<Vec<u8>>),
    Version,
    Quit,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => Just(b"noreply".to_vec()),
        8 => vec(prop_oneof![0x21u8..0x7f, 0x80u8..=0xff], 1..=40),
        1 => vec(0x21u8..0x7f, 250..=250),
    ]
}

fn exptime() -> impl Strategy<Value = i32> {
    prop_oneof![Just(0), -10i32..=2_592_000, any::<i32>()]
}

fn spec() -> impl Strategy<Value = Spec> {
    let get_verb = prop_oneof![
        Just(GetVerb::Get),
        Just(GetVerb::Gets),
        exptime().prop_map(|t| GetVerb::Gat {
            exptime: Exptime(i64::from(t))
        }),
        exptime().prop_map(|t| GetVerb::Gats {
            exptime: Exptime(i64::from(t))
        }),
    ];
    let store_verb = prop_oneof![
        Just(StoreVerb::Set),
        Just(StoreVerb::Add),
        Just(StoreVerb::Replace),
        Just(StoreVerb::Append),
        Just(StoreVerb::Prepend),
        any::<u64>().prop_map(|unique| StoreVerb::Cas { unique }),
    ];
    let arith_verb = prop_oneof![Just(ArithVerb::Incr), Just(ArithVerb::Decr)];
    prop_oneof![
        (get_verb, vec(key(), 0..6))
            .prop_filter("get needs a key", |(v, k)| v.exptime().is_some()
                || !k.is_empty())
            .prop_map(|(v, k)| Spec::Get(v, k)),
        (
            store_verb,
            key(),
            any::<u32>(),
            exptime(),
            vec(any::<u8>(), 0..64),
            any::<bool>()
        )
            .prop_map(|(v, k, f, t, d, n)| Spec::Store(v, k, f, t, d, n)),
        (key(), any::<bool>()).prop_map(|(k, n)| Spec::Delete(k, n)),
        (arith_verb, key(), any::<u64>(), any::<bool>())
            .prop_map(|(v, k, d, n)| Spec::Arith(v, k, d, n)),
        (key(), exptime(), any::<bool>()).prop_map(|(k, t, n)| Spec::Touch(k, t, n)),
        (exptime(), any::<bool>()).prop_map(|(t, n)| Spec::FlushAll(t, n)),
        (any::<u32>(), any::<bool>()).prop_map(|(l, n)| Spec::Verbosity(l, n)),
        vec(key(), 0..4).prop_map(Spec::Stats),
        Just(Spec::Version),
        Just(Spec::Quit),
    ]
}

fn encode(out: &mut BytesMut, spec: &Spec) {
    let t = |t: &i32| Exptime(i64::from(*t));
    match spec {
        Spec::Get(v, keys) => encode_get(out, *v, keys.iter().map(Vec::as_slice)),
        Spec::Store(v, k, f, e, d, n) => encode_store(out, *v, k, *f, t(e), d, *n),
        Spec::Delete(k, n) => encode_delete(out, k, *n),
        Spec::Arith(v, k, d, n) => encode_arith(out, *v, k, *d, *n),
        Spec::Touch(k, e, n) => encode_touch(out, k, t(e), *n),
        Spec::FlushAll(e, n) => encode_flush_all(out, t(e), *n),
        Spec::Verbosity(l, n) => encode_verbosity(out, *l, *n),
        Spec::Stats(args) => encode_stats(out, args.iter().map(Vec::as_slice)),
        Spec::Version => encode_version(out),
        Spec::Quit => encode_quit(out),
    }
}

fn spec_of(cmd: &Command, f: &[u8]) -> Spec {
    let own = |s: Span| s.of(f).to_vec();
    let t = |e: Exptime| i32::try_from(e.0).unwrap();
    match *cmd {
        Command::Get(g) => Spec::Get(g.verb, g.keys(f).map(own).collect()),
        Command::Store(s) => Spec::Store(
            s.verb,
            own(s.key),
            s.flags,
            t(s.exptime),
            own(s.value),
            s.noreply,
        ),
        Command::Delete(d) => Spec::Delete(own(d.key), d.noreply),
        Command::Arith(a) => Spec::Arith(a.verb, own(a.key), a.delta, a.noreply),
        Command::Touch(x) => Spec::Touch(own(x.key), t(x.exptime), x.noreply),
        Command::FlushAll(x) => Spec::FlushAll(t(x.delay), x.noreply),
        Command::Verbosity(v) => Spec::Verbosity(v.level, v.noreply),
        Command::Stats(s) => Spec::Stats(s.args(f).map(own).collect()),
        Command::Version => Spec::Version,
        Command::Quit => Spec::Quit,
    }
}

/// Parse commands off the front of `buf` until it needs more; errors fail.
fn drain(buf: &mut BytesMut, into: &mut Vec<(Command, Vec<u8>)>) {
    while let Some((cmd, n)) = parse_command(buf, &Limits::default()).unwrap() {
        into.push((cmd, buf.split_to(n).to_vec()));
    }
}

/// An owned reply, the generator's view of [`Reply`].
#[derive(Clone, Debug, PartialEq)]
enum RSpec {
    Value(Vec<u8>, u32, Vec<u8>, Option<u64>),
    Fixed(Reply),
    Number(u64),
    Version(Vec<u8>),
    Stat(Vec<u8>, Vec<u8>),
    ClientError(Vec<u8>),
    ServerError(Vec<u8>),
}

fn text() -> impl Strategy<Value = Vec<u8>> {
    vec(0x20u8..0x7f, 0..40)
}

fn rspec() -> impl Strategy<Value = RSpec> {
    let fixed = [
        Reply::End,
        Reply::Stored,
        Reply::NotStored,
        Reply::Exists,
        Reply::NotFound,
        Reply::Deleted,
        Reply::Touched,
        Reply::Ok,
        Reply::Reset,
        Reply::Error,
    ];
    prop_oneof![
        (
            key(),
            any::<u32>(),
            vec(any::<u8>(), 0..64),
            any::<Option<u64>>()
        )
            .prop_map(|(k, f, d, c)| RSpec::Value(k, f, d, c)),
        proptest::sample::select(fixed.to_vec()).prop_map(RSpec::Fixed),
        any::<u64>().prop_map(RSpec::Number),
        text().prop_map(RSpec::Version),
        (key(), text()).prop_map(|(n, v)| RSpec::Stat(n, v)),
        text().prop_map(RSpec::ClientError),
        text().prop_map(RSpec::ServerError),
    ]
}

fn encode_r(out: &mut BytesMut, r: &RSpec) {
    match r {
        RSpec::Value(k, f, d, c) => encode_value(out, k, *f, d, *c),
        RSpec::Fixed(reply) => encode_reply(out, reply, &[]),
        RSpec::Number(n) => encode_number(out, *n),
        RSpec::Version(v) => encode_version_reply(out, v),
        RSpec::Stat(n, v) => encode_stat(out, n, v),
        RSpec::ClientError(m) => encode_client_error(out, m),
        RSpec::ServerError(m) => encode_server_error(out, m),
    }
}

fn rspec_of(reply: &Reply, f: &[u8]) -> RSpec {
    let own = |s: Span| s.of(f).to_vec();
    match *reply {
        Reply::Value(v) => RSpec::Value(own(v.key), v.flags, own(v.data), v.cas),
        Reply::Number(n) => RSpec::Number(n),
        Reply::Version(v) => RSpec::Version(own(v)),
        Reply::Stat { name, value } => RSpec::Stat(own(name), own(value)),
        Reply::ClientError(m) => RSpec::ClientError(own(m)),
        Reply::ServerError(m) => RSpec::ServerError(own(m)),
        fixed => RSpec::Fixed(fixed),
    }
}

/// Words that steer random input into the parser's interesting paths.
fn noisy() -> impl Strategy<Value = Vec<u8>> {
    let word = prop_oneof![
        proptest::sample::select(vec![
            &b"get"[..],
            b"gets",
            b"gat",
            b"gats",
            b"set",
            b"cas",
            b"add",
            b"append",
            b"delete",
            b"incr",
            b"decr",
            b"touch",
            b"flush_all",
            b"verbosity",
            b"stats",
            b"version",
            b"quit",
            b"noreply",
            b"0",
            b"1",
            b"-1",
            b"5",
            b"18446744073709551616",
            b"99999999999",
            b"VALUE",
            b"STAT",
            b"END",
            b"CLIENT_ERROR",
            b" ",
            b"  ",
            b"\r\n",
            b"\n",
            b"\r",
            b"\0",
            b"\t",
        ])
        .prop_map(<[u8]>::to_vec),
        vec(any::<u8>(), 0..8),
    ];
    vec(word, 0..24).prop_map(|w| w.concat())
}

/// The invariants of any parse result over `buf`.
fn check_outcome<T>(buf: &[u8], result: &ParseResult<T>) -> Result<(), TestCaseError> {
    match result {
        Ok(Some((_, n))) => prop_assert!(*n > 0 && *n <= buf.len()),
        Ok(None) => {}
        Err(e) => match e.recovery {
            Recovery::Close => {}
            Recovery::Skip(n) => {
                prop_assert!(n > 0);
                // Only an oversized value skips past what is buffered.
                let too_large = e.reason == "object too large for cache";
                prop_assert!(
                    n <= buf.len() || too_large,
                    "{e:?} skips {n} of {}",
                    buf.len()
                );
            }
        },
    }
    Ok(())
}

proptest! {
    #[test]
    fn encode_then_parse_is_identity(spec in spec()) {
        let mut wire = BytesMut::new();
        encode(&mut wire, &spec);
        let (cmd, n) = parse_command(&wire, &Limits::default()).unwrap().unwrap();
        prop_assert_eq!(n, wire.len());
        prop_assert_eq!(spec_of(&cmd, &wire), spec);
        let mut again = BytesMut::new();
        encode_command(&mut again, &cmd, &wire);
        prop_assert_eq!(&again[..], &wire[..]);
    }

    #[test]
    fn every_proper_prefix_needs_more(spec in spec()) {
        let mut wire = BytesMut::new();
        encode(&mut wire, &spec);
        for i in 0..wire.len() {
            prop_assert_eq!(parse_command(&wire[..i], &Limits::default()), Ok(None));
        }
    }

    #[test]
    fn any_split_of_a_pipeline_yields_the_same_commands(
        specs in vec(spec(), 1..6),
        split in any::<proptest::sample::Index>(),
    ) {
        let mut wire = BytesMut::new();
        for spec in &specs {
            encode(&mut wire, spec);
        }
        let mut whole = Vec::new();
        drain(&mut wire.clone(), &mut whole);
        prop_assert_eq!(whole.len(), specs.len());
        let at = split.index(wire.len() + 1);
        let mut buf = BytesMut::from(&wire[..at]);
        let mut pieces = Vec::new();
        drain(&mut buf, &mut pieces);
        buf.extend_from_slice(&wire[at..]);
        drain(&mut buf, &mut pieces);
        prop_assert!(buf.is_empty());
        prop_assert_eq!(pieces, whole);
    }

    #[test]
    fn reply_encode_then_parse_is_identity(r in rspec()) {
        let mut wire = BytesMut::new();
        encode_r(&mut wire, &r);
        let (reply, n) = parse_reply(&wire, &Limits::default()).unwrap().unwrap();
        prop_assert_eq!(n, wire.len());
        prop_assert_eq!(rspec_of(&reply, &wire), r);
        let mut again = BytesMut::new();
        encode_reply(&mut again, &reply, &wire);
        prop_assert_eq!(&again[..], &wire[..]);
        for i in 0..wire.len() {
            prop_assert_eq!(parse_reply(&wire[..i], &Limits::default()), Ok(None));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(buf in prop_oneof![vec(any::<u8>(), 0..300), noisy()]) {
        let small = Limits { max_line_len: 64, max_value_len: 16, ..Limits::default() };
        for limits in [Limits::default(), small] {
            let result = parse_command(&buf, &limits);
            check_outcome(&buf, &result)?;
            if let Ok(Some((cmd, n))) = result {
                let mut out = BytesMut::new();
                encode_command(&mut out, &cmd, &buf[..n]);
            }
            let result = parse_reply(&buf, &limits);
            check_outcome(&buf, &result)?;
            if let Ok(Some((reply, n))) = result {
                let mut out = BytesMut::new();
                encode_reply(&mut out, &reply, &buf[..n]);
            }
        }
    }
}
