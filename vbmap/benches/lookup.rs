//! Key → server lookup cost on the request path, per key.
//!
//! - `vbucket/3-servers`: `hash::vbucket_of` (CRC32) then
//!   `VbucketMap::active` on a 1024-vbucket map spread over 3 servers — what
//!   the proxy's router does for a Couchbase (`nodeLocator: vbucket`) bucket.
//! - `ketama/<mode>/<n>-servers`: `KetamaRing::server_for` (key hash plus
//!   binary search) for each [`KetamaMode`] with 3 and 64 servers.
//! - `ketama-search/libketama/<n>-servers`: `server_for_hash` on pre-computed
//!   hashes, to separate the search from the MD5.
//!
//! Each iteration looks up the same 1,024 short keys (`user:<n>`), so the
//! figures are per-key throughput with keys, map and ring hot in cache. Not
//! measured: building maps or rings, parsing requests, loading the map from
//! its `ArcSwap`, contention between threads, cache misses under real
//! traffic, long keys, and anything on the network.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shoal_vbmap::hash::vbucket_of;
use shoal_vbmap::ketama::{KetamaMode, KetamaRing, ServerSpec};
use shoal_vbmap::{ServerIdx, VbucketId, VbucketMap};

/// Keys looked up per iteration.
const KEYS: usize = 1024;
/// Vbuckets in the vbucket-mode map (the Couchbase default).
const VBUCKETS: usize = 1024;

fn keys() -> Vec<Vec<u8>> {
    (0..KEYS)
        .map(|i| format!("user:{i}").into_bytes())
        .collect()
}

/// `n` servers on distinct hosts, ports 11210 + i, weight 1.
fn hosts(n: usize) -> Vec<(String, u16)> {
    (0..n)
        .map(|i| {
            (
                format!("10.1.{}.{}", i / 250, i % 250 + 1),
                11210 + i as u16,
            )
        })
        .collect()
}

fn bench_vbucket(c: &mut Criterion) {
    let servers = 3;
    let mut map = VbucketMap::empty(VBUCKETS, 1).expect("valid vbucket count");
    for vb in 0..VBUCKETS {
        let active = (vb % servers) as ServerIdx;
        map.set(vb as VbucketId, 0, Some(active));
        map.set(
            vb as VbucketId,
            1,
            Some((active + 1) % servers as ServerIdx),
        );
    }
    let keys = keys();
    let mut group = c.benchmark_group("vbucket");
    group.throughput(Throughput::Elements(KEYS as u64));
    group.bench_function("3-servers", |b| {
        b.iter(|| {
            for key in &keys {
                let vb = vbucket_of(black_box(key), VBUCKETS);
                black_box(map.active(vb));
            }
        })
    });
    group.finish();
}

fn bench_ketama(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("ketama");
    group.throughput(Throughput::Elements(KEYS as u64));
    for (mode, name) in [
        (KetamaMode::Libketama, "libketama"),
        (KetamaMode::OneAtATime, "one-at-a-time"),
        (KetamaMode::Libvbucket, "libvbucket"),
    ] {
        for n in [3usize, 64] {
            let hosts = hosts(n);
            let specs: Vec<ServerSpec<'_>> =
                hosts.iter().map(|(h, p)| ServerSpec::new(h, *p)).collect();
            let ring = KetamaRing::new(mode, &specs).expect("ring");
            group.bench_function(format!("{name}/{n}-servers"), |b| {
                b.iter(|| {
                    for key in &keys {
                        black_box(ring.server_for(black_box(key)));
                    }
                })
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("ketama-search");
    group.throughput(Throughput::Elements(KEYS as u64));
    for n in [3usize, 64] {
        let hosts = hosts(n);
        let specs: Vec<ServerSpec<'_>> =
            hosts.iter().map(|(h, p)| ServerSpec::new(h, *p)).collect();
        let ring = KetamaRing::new(KetamaMode::Libketama, &specs).expect("ring");
        let hashes: Vec<u32> = keys.iter().map(|k| ring.hash_key(k)).collect();
        group.bench_function(format!("libketama/{n}-servers"), |b| {
            b.iter(|| {
                for &h in &hashes {
                    black_box(ring.server_for_hash(black_box(h)));
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_vbucket, bench_ketama);
criterion_main!(benches);
