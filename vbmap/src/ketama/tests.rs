//! Tests for the ketama rings: byte-exact compatibility vectors from
//! `shared/vectors/` (libmemcached through pylibmc, libvbucket's eight-node
//! config), libmemcached's own weighted test cases, and properties (total
//! lookup, minimal movement when a server joins, agreement with a naive scan).

use std::collections::HashMap;

use md5::{Digest, Md5};
use proptest::prelude::*;

use super::continuum;
use super::*;

/// Path of a file under `shared/vectors/`, beside the repository.
macro_rules! vector_path {
    ($file:literal) => {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors/", $file)
    };
}

/// Split `host:port`.
fn split_authority(authority: &str) -> (&str, u16) {
    let (host, port) = authority
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("no port in {authority:?}"));
    (host, port.parse().expect("numeric port"))
}

/// Check every row of a libmemcached vector file (`key<TAB>host:port`, with
/// the server list in a `# servers:` header line) against a ring of `mode`.
fn check_libmemcached_vectors(text: &str, mode: KetamaMode) {
    let servers_line = text
        .lines()
        .find_map(|l| l.strip_prefix("# servers:"))
        .expect("a `# servers:` header");
    let authorities: Vec<&str> = servers_line.trim().split(',').collect();
    let specs: Vec<ServerSpec<'_>> = authorities
        .iter()
        .map(|a| {
            let (host, port) = split_authority(a);
            ServerSpec::new(host, port)
        })
        .collect();
    let ring = KetamaRing::new(mode, &specs).unwrap();

    let mut rows = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')).skip(1) {
        let (key, want) = line.split_once('\t').expect("key<TAB>server");
        let got = ring.server_for(key.as_bytes()).expect("non-empty ring");
        assert_eq!(authorities[got as usize], want, "key {key:?} ({mode:?})");
        rows += 1;
    }
    assert!(rows >= 300, "only {rows} vectors read");
}

/// Every row of `shared/vectors/ketama.tsv` (one server on port 11211, so the
/// `host-i` naming is exercised).
#[test]
fn libketama_shared_vectors() {
    let text = std::fs::read_to_string(vector_path!("ketama.tsv"))
        .expect("shared/vectors/ketama.tsv beside the repo");
    check_libmemcached_vectors(&text, KetamaMode::Libketama);
}

/// Every row of `shared/vectors/ketama-oaat.tsv`.
#[test]
fn one_at_a_time_shared_vectors() {
    let text = std::fs::read_to_string(vector_path!("ketama-oaat.tsv"))
        .expect("shared/vectors/ketama-oaat.tsv beside the repo");
    check_libmemcached_vectors(&text, KetamaMode::OneAtATime);
}

/// libmemcached's weighted ketama test pool (`test/tests/ketama.cc`,
/// `memcached_ketama_compat`): eight servers on port 11211 with weights
/// 600..100. Rows from `test/fixtures/ketama.hpp`: key, its MD5 hash, the
/// continuum point it lands on, and that point's server.
#[test]
fn libmemcached_weighted_test_cases() {
    let pool = [
        ("10.0.1.1", 11211, 600),
        ("10.0.1.2", 11211, 300),
        ("10.0.1.3", 11211, 200),
        ("10.0.1.4", 11211, 350),
        ("10.0.1.5", 11211, 1000),
        ("10.0.1.6", 11211, 800),
        ("10.0.1.7", 11211, 950),
        ("10.0.1.8", 11211, 100),
    ];
    let ring = KetamaRing::new(KetamaMode::Libketama, &pool).unwrap();
    let cases: [(&str, u32, u32, &str); 24] = [
        ("SVa_]_V41)", 443691461, 445379617, "10.0.1.7"),
        (r"*/Z;?V(.\8", 1422915503, 1428303028, "10.0.1.1"),
        ("30C1*Z*S/_", 1473165754, 1480075959, "10.0.1.2"),
        ("ERR:EC58G>", 2148406511, 2168579133, "10.0.1.7"),
        ("1I=cTMNTKF", 2882686667, 2885206587, "10.0.1.5"),
        ("726bW=9*a4", 4213440020, 4213950705, "10.0.1.7"),
        ("P1[Ma3=K1/", 1989324036, 1994028240, "10.0.1.8"),
        ("D[HE+cFXDK", 2117036136, 2117124014, "10.0.1.3"),
        (r"\39DKW^)N_", 3548879868, 3550704865, "10.0.1.3"),
        ("EM75N0+[X1", 1558531507, 1559308507, "10.0.1.4"),
        ("1*RTMC7,03", 1602398012, 1606398093, "10.0.1.8"),
        ("U))Fb-(`,.", 4128682289, 4136854163, "10.0.1.7"),
        ("6,cEI`F_P>", 3972869246, 3974773167, "10.0.1.6"),
        ("c,5AQ/T5)6", 2835605783, 2847870057, "10.0.1.8"),
        (r"]\.UH8_0a1", 2419699252, 2423002920, "10.0.1.4"),
        ("8*6a;Sc*X+", 4223431086, 4230156966, "10.0.1.2"),
        ("[>RZHG97Q9", 71954686, 72034069, "10.0.1.6"),
        ("N-)88>[O`,", 50404102, 51792557, "10.0.1.5"),
        ("Nb-X^]M)I:", 330865696, 331009896, "10.0.1.6"),
        ("CTR74,J+N.", 137446045, 146633907, "10.0.1.8"),
        ("0OZH^9BKM[", 3682518606, 3686781297, "10.0.1.8"),
        ("[1ZXONX2]a", 4108881567, 4109865744, "10.0.1.4"),
        ("FL;\\GWacaV", 458449508, 467374054, "10.0.1.4"),
        (r"VD6D0]ba_\", 3842502950, 3842588691, "10.0.1.1"),
    ];
    for (key, hash, point, host) in cases {
        assert_eq!(md5_hash(key.as_bytes()), hash, "hash of {key:?}");
        let pos = ring.position(hash).unwrap();
        assert_eq!(ring.points[pos], point, "point for {key:?}");
        let got = ring.server_for(key.as_bytes()).unwrap();
        assert_eq!(pool[got as usize].0, host, "server for {key:?}");
    }
    // "VDEAAAAA hashes to fffcd1b5, after the last continuum point": the
    // wrap-around goes to the first point's server.
    assert_eq!(md5_hash(b"VDEAAAAA"), 0xfffc_d1b5);
    assert!(ring.points.last().copied().unwrap() < 0xfffc_d1b5);
    assert_eq!(ring.server_for(b"VDEAAAAA"), Some(ring.owners[0]));
}

/// The servers of `configs/ketama-eight-nodes.json` as libvbucket reads them:
/// each node's `hostname` up to the colon, with `ports.direct`.
fn eight_nodes() -> Vec<(String, u16)> {
    let text = std::fs::read_to_string(vector_path!("configs/ketama-eight-nodes.json"))
        .expect("shared/vectors/configs/ketama-eight-nodes.json beside the repo");
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(config["nodeLocator"], "ketama");
    let nodes = config["nodes"].as_array().expect("nodes array");
    let servers: Vec<(String, u16)> = nodes
        .iter()
        .map(|node| {
            let hostname = node["hostname"].as_str().expect("hostname");
            let host = hostname.split(':').next().unwrap().to_owned();
            let port = node["ports"]["direct"].as_u64().expect("ports.direct");
            (host, u16::try_from(port).unwrap())
        })
        .collect();
    assert_eq!(servers.len(), 8);
    servers
}

fn specs_of(servers: &[(String, u16)]) -> Vec<ServerSpec<'_>> {
    servers
        .iter()
        .map(|(h, p)| ServerSpec::new(h, *p))
        .collect()
}

/// The key checks of `shared/vectors/README.md` for libvbucket's ring.
#[test]
fn libvbucket_eight_nodes_keys() {
    let servers = eight_nodes();
    let ring = KetamaRing::new(KetamaMode::Libvbucket, &specs_of(&servers)).unwrap();
    for (key, want) in [
        ("hello", "172.16.16.76:12006"),
        ("doctor", "172.16.16.76:12004"),
        ("name", "172.16.16.76:12002"),
        ("foo", "172.16.16.76:12012"),
        ("bar", "172.16.16.76:12002"),
        ("999999", "172.16.16.76:12014"),
    ] {
        let (host, port) = &servers[ring.server_for(key.as_bytes()).unwrap() as usize];
        assert_eq!(format!("{host}:{port}"), want, "key {key:?}");
    }
}

/// Keys "0".."999999" in order, each chosen server's `host:port` fed into one
/// running MD5: `7f4da8f120e89d695094f45a74346dbe` (libvbucket's
/// `tests/config/ketama-eight-nodes.md5sum`, restated in the vectors README).
#[test]
fn libvbucket_eight_nodes_million_keys() {
    let servers = eight_nodes();
    let ring = KetamaRing::new(KetamaMode::Libvbucket, &specs_of(&servers)).unwrap();
    let authorities: Vec<String> = servers.iter().map(|(h, p)| format!("{h}:{p}")).collect();
    let mut md5 = Md5::new();
    // Batch the running digest's input: one `update` per chunk rather than
    // per key keeps the test quick in unoptimised builds.
    let mut pending = Vec::with_capacity(1 << 16);
    let mut key = String::with_capacity(8);
    for i in 0..1_000_000u32 {
        key.clear();
        std::fmt::Write::write_fmt(&mut key, format_args!("{i}")).unwrap();
        let server = ring.server_for(key.as_bytes()).unwrap();
        pending.extend_from_slice(authorities[server as usize].as_bytes());
        if pending.len() > (1 << 16) - 32 {
            md5.update(&pending);
            pending.clear();
        }
    }
    md5.update(&pending);
    let hex: String = md5.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, "7f4da8f120e89d695094f45a74346dbe");
}

/// libvbucket sorts servers by name, but indices stay those of the input.
#[test]
fn libvbucket_reports_input_indices() {
    let mut servers = eight_nodes();
    let forward = KetamaRing::new(KetamaMode::Libvbucket, &specs_of(&servers)).unwrap();
    let name_of = |servers: &[(String, u16)], ring: &KetamaRing, key: &str| {
        let (h, p) = &servers[ring.server_for(key.as_bytes()).unwrap() as usize];
        format!("{h}:{p}")
    };
    let before: Vec<String> = (0..200)
        .map(|i| name_of(&servers, &forward, &format!("k{i}")))
        .collect();
    servers.reverse();
    let reversed = KetamaRing::new(KetamaMode::Libvbucket, &specs_of(&servers)).unwrap();
    let after: Vec<String> = (0..200)
        .map(|i| name_of(&servers, &reversed, &format!("k{i}")))
        .collect();
    assert_eq!(before, after);
    assert_eq!(forward.points, reversed.points);
}

/// Published one-at-a-time values for ASCII input, and libhashkit's
/// sign-extension of bytes ≥ 0x80.
#[test]
fn one_at_a_time_values() {
    assert_eq!(one_at_a_time(b""), 0);
    assert_eq!(one_at_a_time(b"a"), 0xca2e_9442);
    assert_eq!(
        one_at_a_time(b"The quick brown fox jumps over the lazy dog"),
        0x519e_91f5
    );
    // The same mixing over explicit 32-bit addends.
    fn over_words(words: &[u32]) -> u32 {
        let mut h: u32 = 0;
        for &w in words {
            h = h.wrapping_add(w);
            h = h.wrapping_add(h << 10);
            h ^= h >> 6;
        }
        h = h.wrapping_add(h << 3);
        h ^= h >> 11;
        h.wrapping_add(h << 15)
    }
    let key = "é".as_bytes(); // 0xc3 0xa9
    assert_eq!(one_at_a_time(key), over_words(&[0xffff_ffc3, 0xffff_ffa9]));
    assert_ne!(one_at_a_time(key), over_words(&[0xc3, 0xa9]));
}

/// MD5 key hash: digest bytes 0..4 little-endian.
#[test]
fn md5_hash_is_little_endian_prefix() {
    // MD5("") = d41d8cd98f00b204e9800998ecf8427e
    assert_eq!(md5_hash(b""), 0xd98c_1dd4);
}

#[test]
fn empty_ring_has_no_server() {
    for mode in [
        KetamaMode::Libketama,
        KetamaMode::OneAtATime,
        KetamaMode::Libvbucket,
    ] {
        let ring = KetamaRing::new::<ServerSpec<'_>>(mode, &[]).unwrap();
        assert!(ring.is_empty());
        assert_eq!(ring.num_servers(), 0);
        assert_eq!(ring.server_for(b"anything"), None);
        assert_eq!(ring.server_for_hash(0), None);
        assert_eq!(ring.server_for_hash(u32::MAX), None);
    }
}

#[test]
fn too_many_servers_is_an_error() {
    let servers = vec![ServerSpec::new("h", 1); KetamaRing::MAX_SERVERS + 1];
    assert_eq!(
        KetamaRing::new(KetamaMode::OneAtATime, &servers),
        Err(KetamaError::TooManyServers {
            count: KetamaRing::MAX_SERVERS + 1,
            max: KetamaRing::MAX_SERVERS,
        })
    );
}

/// Points per server: 160 (libketama, equal weights), 100 (one-at-a-time),
/// 160 (libvbucket); weights change only the libketama ring.
#[test]
fn points_per_server() {
    let servers = [("a", 1u16, 1u32), ("b", 2, 3), ("c", 11211, 0)];
    let count = |mode| {
        let ring = KetamaRing::new(mode, &servers).unwrap();
        let mut per = HashMap::new();
        for (_, s) in ring.points() {
            *per.entry(s).or_insert(0usize) += 1;
        }
        let mut v: Vec<(ServerIdx, usize)> = per.into_iter().collect();
        v.sort();
        v
    };
    assert_eq!(
        count(KetamaMode::OneAtATime),
        vec![(0, 100), (1, 100), (2, 100)]
    );
    assert_eq!(
        count(KetamaMode::Libvbucket),
        vec![(0, 160), (1, 160), (2, 160)]
    );
    // Weights 1, 3, 1 (0 counts as 1): floor(w/5 × 40 × 3) names of 4 points.
    assert_eq!(
        count(KetamaMode::Libketama),
        vec![(0, 96), (1, 288), (2, 96)]
    );
    let equal = [("a", 1u16), ("b", 2), ("c", 3)];
    let ring = KetamaRing::new(KetamaMode::Libketama, &equal).unwrap();
    assert_eq!(ring.num_points(), 480);
}

/// Lookups on exact points, one past them, and around the ends of the ring.
#[test]
fn boundaries() {
    let ring = KetamaRing::new(KetamaMode::Libketama, &[("x", 1u16), ("y", 2)]).unwrap();
    let pts: Vec<(u32, ServerIdx)> = ring.points().collect();
    let (first, last) = (pts[0], pts[pts.len() - 1]);
    assert_eq!(ring.server_for_hash(0), Some(first.1));
    assert_eq!(ring.server_for_hash(first.0), Some(first.1));
    assert_eq!(ring.server_for_hash(last.0), Some(last.1));
    if last.0 < u32::MAX {
        assert_eq!(ring.server_for_hash(last.0 + 1), Some(first.1));
    }
    for w in pts.windows(2) {
        if w[0].0 < w[1].0 {
            assert_eq!(ring.server_for_hash(w[0].0 + 1), Some(w[1].1));
        }
    }
}

const MODES: [KetamaMode; 3] = [
    KetamaMode::Libketama,
    KetamaMode::OneAtATime,
    KetamaMode::Libvbucket,
];

/// Random server lists: `(host, port, weight)`, some on port 11211.
fn servers_strategy(max: usize) -> impl Strategy<Value = Vec<(String, u16, u32)>> {
    prop::collection::vec(
        (
            any::<(u8, u8)>(),
            prop_oneof![Just(11211u16), 1024u16..=65535],
            1u32..=4,
        ),
        1..=max,
    )
    .prop_map(|v| {
        v.into_iter()
            .map(|((a, b), port, weight)| (format!("10.0.{a}.{b}"), port, weight))
            .collect()
    })
}

fn specs(servers: &[(String, u16, u32)]) -> Vec<ServerSpec<'_>> {
    servers
        .iter()
        .map(|(h, p, w)| ServerSpec::new(h, *p).with_weight(*w))
        .collect()
}

/// The reference answer by linear scan over the unsorted continuum: the
/// entry with the smallest `(point, tie)` among points ≥ `hash`, else the
/// smallest overall.
fn naive(entries: &[continuum::Entry], hash: u32) -> Option<ServerIdx> {
    let above = entries
        .iter()
        .filter(|e| e.0 >= hash)
        .min_by_key(|e| (e.0, e.1));
    above
        .or_else(|| entries.iter().min_by_key(|e| (e.0, e.1)))
        .map(|e| e.2)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A non-empty ring sends every key to a server in the list.
    #[test]
    fn every_key_has_a_server(
        servers in servers_strategy(12),
        keys in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..64),
    ) {
        let specs = specs(&servers);
        for mode in MODES {
            let ring = KetamaRing::new(mode, &specs).unwrap();
            prop_assert!(!ring.is_empty());
            for key in &keys {
                let s = ring.server_for(key).expect("a server");
                prop_assert!((s as usize) < servers.len());
            }
        }
    }

    /// Binary search agrees with a linear scan, on random hashes, on points
    /// and one either side of them, and at the ends of the range.
    #[test]
    fn lookup_matches_linear_scan(
        servers in servers_strategy(6),
        hashes in prop::collection::vec(any::<u32>(), 1..64),
    ) {
        let specs = specs(&servers);
        for mode in MODES {
            let ring = KetamaRing::new(mode, &specs).unwrap();
            let entries = continuum::build(mode, &specs);
            // Every fifth point and its neighbours: all of them would make
            // the quadratic scan slow in debug builds for no extra coverage.
            let probes = ring
                .points()
                .step_by(5)
                .flat_map(|(p, _)| [p.wrapping_sub(1), p, p.wrapping_add(1)])
                .chain(hashes.iter().copied())
                .chain([0, u32::MAX]);
            for h in probes {
                prop_assert_eq!(ring.server_for_hash(h), naive(&entries, h), "hash {}", h);
            }
        }
    }

    /// Adding a server moves keys only to the new server, and only about
    /// 1/(n+1) of them (loosely bounded: 3/(n+1) + 5%). Equal weights and at
    /// most 12 servers, where libketama gives every server exactly 40 names.
    #[test]
    fn adding_a_server_moves_few_keys(
        servers in servers_strategy(12),
        seed in any::<u32>(),
    ) {
        let mut servers = servers;
        for s in &mut servers {
            s.2 = 1;
        }
        let n = servers.len();
        let mut grown = servers.clone();
        grown.push(("192.168.77.77".to_owned(), 4242, 1));
        let keys: Vec<String> = (0..1000).map(|i| format!("key:{seed}:{i}")).collect();
        for mode in MODES {
            let before = KetamaRing::new(mode, &specs(&servers)).unwrap();
            let after = KetamaRing::new(mode, &specs(&grown)).unwrap();
            let mut moved = 0usize;
            for key in &keys {
                let (a, b) = (before.server_for(key.as_bytes()), after.server_for(key.as_bytes()));
                if a != b {
                    prop_assert_eq!(b, Some(n as ServerIdx), "{:?} moved {:?} elsewhere", mode, key);
                    moved += 1;
                }
            }
            let fraction = moved as f64 / keys.len() as f64;
            prop_assert!(
                fraction <= 3.0 / (n as f64 + 1.0) + 0.05,
                "{:?}: {} of {} keys moved with {} → {} servers", mode, moved, keys.len(), n, n + 1
            );
        }
    }
}
