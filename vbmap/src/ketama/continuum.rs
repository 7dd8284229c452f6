//! Building the continuum (the ring's points) for each [`KetamaMode`].
//!
//! Each builder returns unsorted `(point, tie, server)` triples: `server` is
//! the server's index in the caller's list, `tie` the order in which the
//! reference implementation breaks equal points. Sorting by `(point, tie)`
//! then gives the exact continuum the reference client searches. The rules
//! come from libmemcached 1.1.x `src/libmemcached/hosts.cc`
//! (`update_continuum`, `ketama_server_hash`, `continuum_item_cmp`) and
//! libvbucket `src/vbucket.c` (`parse_ketama_config`,
//! `update_ketama_continuum`), and are pinned by `shared/vectors/`.

use std::fmt::Write as _;

use super::digest::{md5_points, one_at_a_time};
use super::{KetamaMode, ServerSpec};
use crate::map::ServerIdx;

/// One unsorted continuum entry: `(point, tie-break rank, server index)`.
pub(super) type Entry = (u32, u32, ServerIdx);

/// libmemcached's `MEMCACHED_DEFAULT_PORT`: a server on it is named without
/// its port (`host-i`), as libketama did.
const MEMCACHED_DEFAULT_PORT: u16 = 11211;
/// libmemcached's `MEMCACHED_POINTS_PER_SERVER`: points per server in the
/// unweighted continuum (one point per name).
const POINTS_PER_SERVER: u32 = 100;
/// libmemcached's `MEMCACHED_POINTS_PER_SERVER_KETAMA`: points per server at
/// equal weight in the weighted (libketama) continuum, four per name.
const POINTS_PER_SERVER_KETAMA: u32 = 160;
/// libvbucket's names per server (`hh < 40`), four MD5 points each.
const LIBVBUCKET_NAMES_PER_SERVER: u32 = 40;

/// The unsorted continuum of `servers` under `mode`. `servers.len()` must
/// already be checked to fit [`ServerIdx`].
pub(super) fn build(mode: KetamaMode, servers: &[ServerSpec<'_>]) -> Vec<Entry> {
    match mode {
        KetamaMode::Libketama => libketama(servers),
        KetamaMode::OneAtATime => one_at_a_time_points(servers),
        KetamaMode::Libvbucket => libvbucket(servers),
    }
}

/// Write libmemcached's point name for `server` and name number `i` into
/// `buf`: `host-i` on the default port, `host:port-i` otherwise (hosts.cc,
/// the non-spymemcached branch of `update_continuum`).
fn libmemcached_name(buf: &mut String, server: &ServerSpec<'_>, i: u32) {
    buf.clear();
    // Writing to a String cannot fail.
    let _ = if server.port == MEMCACHED_DEFAULT_PORT {
        write!(buf, "{}-{}", server.host, i)
    } else {
        write!(buf, "{}:{}-{}", server.host, server.port, i)
    };
}

/// How many names (of four points each) libmemcached's weighted continuum
/// gives a server of `weight` out of `total_weight` among `live_servers`.
///
/// hosts.cc computes, all in `float`:
/// `pct = (float) weight / (float) total_weight;`
/// `floor(pct * 160 / 4 * (float) live_servers + 0.0000000001F)`, then
/// multiplies by 4 for the point count. The arithmetic is repeated here in
/// `f32`, step by step in the same order, because the rounding is part of
/// the placement: with some server counts an equal-weight server gets 39
/// names rather than 40, and every libmemcached client agrees on that.
fn libketama_names(weight: u32, total_weight: u64, live_servers: usize) -> u32 {
    let pct = weight as f32 / total_weight as f32;
    let scaled =
        pct * POINTS_PER_SERVER_KETAMA as f32 / 4.0 * live_servers as f32 + 0.000_000_000_1_f32;
    // `(uint32_t) floor(...)`: a NaN or negative value cannot arise (weights
    // are ≥ 1), and `as` saturates where C would be undefined.
    scaled.floor() as u32
}

/// libmemcached's weight as stored by `_server_init` (instance.cc):
/// `weight ? weight : 1`.
fn effective_weight(weight: u32) -> u32 {
    weight.max(1)
}

/// Mode A, libmemcached with `MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED` (the
/// libketama-compatible continuum).
fn libketama(servers: &[ServerSpec<'_>]) -> Vec<Entry> {
    let total_weight: u64 = servers
        .iter()
        .map(|s| u64::from(effective_weight(s.weight)))
        .sum();
    let mut entries = Vec::with_capacity(servers.len() * POINTS_PER_SERVER_KETAMA as usize);
    let mut name = String::new();
    for (idx, server) in servers.iter().enumerate() {
        let names = libketama_names(effective_weight(server.weight), total_weight, servers.len());
        for i in 0..names {
            libmemcached_name(&mut name, server, i);
            for point in md5_points(name.as_bytes()) {
                // continuum_item_cmp orders equal points by host index.
                entries.push((point, idx as u32, idx as ServerIdx));
            }
        }
    }
    entries
}

/// Mode B, libmemcached's unweighted `MEMCACHED_DISTRIBUTION_CONSISTENT_KETAMA`
/// with the default one-at-a-time hash: 100 names per server, one point each
/// (the name's one-at-a-time hash). Weights play no part.
fn one_at_a_time_points(servers: &[ServerSpec<'_>]) -> Vec<Entry> {
    let mut entries = Vec::with_capacity(servers.len() * POINTS_PER_SERVER as usize);
    let mut name = String::new();
    for (idx, server) in servers.iter().enumerate() {
        for i in 0..POINTS_PER_SERVER {
            libmemcached_name(&mut name, server, i);
            entries.push((one_at_a_time(name.as_bytes()), idx as u32, idx as ServerIdx));
        }
    }
    entries
}

/// Mode C, libvbucket's ring for `nodeLocator: "ketama"` buckets: servers
/// sorted by `host:port` (`qsort` with `strcmp`, i.e. byte order), then for
/// each 40 names `host:port-hh` (no default-port exception) giving four MD5
/// points each. Weights play no part.
fn libvbucket(servers: &[ServerSpec<'_>]) -> Vec<Entry> {
    let authorities: Vec<String> = servers
        .iter()
        .map(|s| format!("{}:{}", s.host, s.port))
        .collect();
    let mut order: Vec<usize> = (0..servers.len()).collect();
    // Stable, so identical authorities keep input order (qsort leaves it
    // unspecified; such a list is a misconfiguration anyway).
    order.sort_by(|&a, &b| authorities[a].as_bytes().cmp(authorities[b].as_bytes()));

    let per_server = LIBVBUCKET_NAMES_PER_SERVER as usize * 4;
    let mut entries = Vec::with_capacity(servers.len() * per_server);
    let mut name = String::new();
    for (rank, &idx) in order.iter().enumerate() {
        for hh in 0..LIBVBUCKET_NAMES_PER_SERVER {
            name.clear();
            let _ = write!(name, "{}-{}", authorities[idx], hh);
            for point in md5_points(name.as_bytes()) {
                // libvbucket's qsort compares points only, so ties are
                // unspecified there; rank in the sorted list is the natural,
                // deterministic choice.
                entries.push((point, rank as u32, idx as ServerIdx));
            }
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libmemcached_names_drop_the_default_port() {
        let mut buf = String::new();
        libmemcached_name(&mut buf, &ServerSpec::new("127.0.0.2", 11211), 7);
        assert_eq!(buf, "127.0.0.2-7");
        libmemcached_name(&mut buf, &ServerSpec::new("127.0.0.1", 31211), 0);
        assert_eq!(buf, "127.0.0.1:31211-0");
    }

    #[test]
    fn weighted_name_counts_follow_float_rounding() {
        // Equal weights: 40 names each for these counts.
        for n in [1usize, 2, 3, 8, 64] {
            assert_eq!(libketama_names(1, n as u64, n), 40, "{n} servers");
        }
        // ...but not for all: with 25 servers the f32 product is 39.999996,
        // so libmemcached gives each 39 names (156 points).
        assert_eq!(libketama_names(1, 25, 25), 39);
        // The libmemcached test pool (weights 600..100, total 4300).
        let weights = [600u32, 300, 200, 350, 1000, 800, 950, 100];
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let names: Vec<u32> = weights
            .iter()
            .map(|&w| libketama_names(w, total, weights.len()))
            .collect();
        // pct * 40 * 8 floored: 600/4300*320 = 44.65 → 44, and so on.
        assert_eq!(names, vec![44, 22, 14, 26, 74, 59, 70, 7]);
    }

    #[test]
    fn zero_weight_counts_as_one() {
        assert_eq!(effective_weight(0), 1);
        assert_eq!(effective_weight(5), 5);
    }
}
