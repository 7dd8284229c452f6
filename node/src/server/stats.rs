//! `stats` groups, shared by the ASCII and binary front ends: the general
//! group (memcached's server counters, the engine's counters and the
//! persistence counters under Couchbase's `ep_*` names), `settings`,
//! `vbucket`, `warmup`, `replication`, the empty `items`, `slabs` and
//! `conns`, `sizes` (disabled) and `detail` (not collected).

use std::sync::atomic::Ordering;

use crate::bucket::LiveBucket;
use crate::version::VERSION;

/// Emits the stats of `group` (empty = general) through `emit`; returns
/// false for a group this node does not know.
pub(super) fn write(ctx: &LiveBucket, group: &[u8], mut emit: impl FnMut(&str, &str)) -> bool {
    match group {
        b"" => general(ctx, &mut emit),
        b"settings" => settings(ctx, &mut emit),
        b"vbucket" => {
            for (vb, state) in ctx.engine.vbucket_states() {
                emit(&format!("vb_{vb}"), state.name());
            }
        }
        b"warmup" => warmup(ctx, &mut emit),
        b"replication" => replication(ctx, &mut emit),
        // Shoal has no slab allocator, so no slab classes to list: these
        // groups are empty, not unknown, so tools that read them (such as
        // memcached-tool) get memcached's shape (`END`) instead of `ERROR`.
        b"items" | b"slabs" => {}
        // No size histogram is kept (memcached's is off by default too),
        // and no per-connection table: memcached's shapes, nothing made up.
        b"sizes" => emit("sizes_status", "disabled"),
        b"conns" => {}
        _ => return false,
    }
    true
}

/// Per vbucket active here and per replica the map names for it: the seqno
/// the replica acknowledged and how far behind the active's high seqno it
/// is (`lag`, in mutations), then the totals. A replica that has not
/// connected yet lags by the whole high seqno.
fn replication(ctx: &LiveBucket, emit: &mut impl FnMut(&str, &str)) {
    let (mut total, mut max, mut missing) = (0u64, 0u64, 0u64);
    let n = ctx.engine.config().num_vbuckets;
    for vb in (0..n).filter_map(|vb| u16::try_from(vb).ok()) {
        if ctx.engine.vbucket_state(vb) != Some(shoal_engine::VbucketState::Active) {
            continue;
        }
        let (Some(high), Some(acks)) = (ctx.engine.high_seqno(vb), ctx.durability.snapshot(vb))
        else {
            continue;
        };
        if acks.replicas.is_empty() {
            missing += u64::from(ctx.durability.expects_replicas());
        }
        for replica in &acks.replicas {
            let acked = acks.acked_by(replica);
            let lag = high.saturating_sub(acked);
            total += lag;
            max = max.max(lag);
            emit(&format!("vb_{vb}:{replica}:acked"), &acked.to_string());
            emit(&format!("vb_{vb}:{replica}:lag"), &lag.to_string());
        }
    }
    emit(
        "replication_streams",
        &ctx.durability.producer_streams().to_string(),
    );
    emit("replication_lag_total", &total.to_string());
    emit("replication_lag_max", &max.to_string());
    emit("replication_vbuckets_without_replica", &missing.to_string());
    emit("durability_level", ctx.durability.level().as_str());
    emit(
        "durability_timeouts",
        &ctx.stats
            .durability_timeouts
            .load(Ordering::Relaxed)
            .to_string(),
    );
}

fn general(ctx: &LiveBucket, emit: &mut impl FnMut(&str, &str)) {
    let now = ctx.clock.now();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed).to_string();
    emit("pid", &std::process::id().to_string());
    emit("uptime", &ctx.started.elapsed().as_secs().to_string());
    emit("time", &now.to_string());
    emit("version", VERSION);
    emit("pointer_size", &(usize::BITS).to_string());
    emit("curr_connections", &load(&ctx.stats.curr_connections));
    emit("total_connections", &load(&ctx.stats.total_connections));
    emit("max_connections", &load(&ctx.stats.max_connections));
    emit("system_connections", &load(&ctx.stats.system_connections));
    emit(
        "max_system_connections",
        &load(&ctx.stats.max_system_connections),
    );
    emit("rejected_conns", &load(&ctx.stats.rejected_conns));
    emit("request_timeouts", &load(&ctx.stats.request_timeouts));
    emit("idle_kicks", &load(&ctx.stats.idle_kicks));
    emit("write_timeouts", &load(&ctx.stats.write_timeouts));
    emit(
        "tls_handshake_failures",
        &load(&ctx.stats.tls_handshake_failures),
    );
    emit(
        "replica_items_received",
        &load(&ctx.stats.replica_items_received),
    );
    emit(
        "replica_bytes_received",
        &load(&ctx.stats.replica_bytes_received),
    );
    emit("replica_rollbacks", &load(&ctx.stats.replica_rollbacks));
    emit("bytes_read", &load(&ctx.stats.bytes_read));
    emit("bytes_written", &load(&ctx.stats.bytes_written));
    // `ep_bg_fetched` comes with the engine's stats below (values put back
    // into memory); emitting it here too would name two counters alike.
    emit("bg_fetches", &load(&ctx.stats.bg_fetches));
    emit("protocol_errors", &load(&ctx.stats.protocol_errors));
    emit(
        "limit_maxbytes",
        &ctx.engine.config().quota_bytes.to_string(),
    );
    emit(
        "threads",
        &std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .to_string(),
    );
    for (name, value) in ctx.engine.stats() {
        emit(name, &value.to_string());
    }
    let flusher = ctx.flusher.stats();
    emit("ep_flusher_todo", &flusher.flusher_todo.to_string());
    emit("ep_flusher_batches", &flusher.batches.to_string());
    emit("ep_total_persisted", &flusher.items_written.to_string());
    emit(
        "ep_flusher_bytes_written",
        &flusher.bytes_written.to_string(),
    );
    emit(
        "ep_flusher_last_batch_us",
        &flusher.last_batch_duration.as_micros().to_string(),
    );
    emit("ep_item_flush_failed", &flusher.write_errors.to_string());
    // Whether disk writes fail now, and why (memcached stats are one word
    // per value: the reason follows as the rest of the line).
    emit(
        "ep_disk_failing",
        if flusher.failing.is_some() { "1" } else { "0" },
    );
    if let Some(why) = &flusher.failing {
        emit("ep_disk_failure", why);
    }
    // "Items waiting for disk": queued in the engine plus drained by the
    // flusher but not yet written.
    let queue = ctx.engine.queue_len() as u64 + flusher.flusher_todo;
    emit("ep_diskqueue_items", &queue.to_string());
    warmup(ctx, emit);
    let (high, persisted) = seqno_totals(ctx);
    emit("ep_high_seqno_total", &high.to_string());
    emit("ep_persisted_seqno_total", &persisted.to_string());
}

fn warmup(ctx: &LiveBucket, emit: &mut impl FnMut(&str, &str)) {
    let done = ctx.warmup_done.load(Ordering::Acquire);
    emit(
        "ep_warmup_thread",
        if done { "complete" } else { "running" },
    );
    emit(
        "ep_warmup_count",
        &ctx.warmup_count.load(Ordering::Relaxed).to_string(),
    );
}

fn settings(ctx: &LiveBucket, emit: &mut impl FnMut(&str, &str)) {
    let config = ctx.engine.config();
    emit("maxbytes", &config.quota_bytes.to_string());
    emit("item_size_max", &config.max_value_len.to_string());
    emit("num_vbuckets", &config.num_vbuckets.to_string());
    emit("key_max_length", &ctx.limits.max_key_len.to_string());
    emit("max_line_length", &ctx.limits.max_line_len.to_string());
    emit("cas_enabled", "yes");
    emit("evictions", "off");
}

/// Sums of the high and persisted seqnos over every vbucket: equal when
/// everything acknowledged is on disk.
fn seqno_totals(ctx: &LiveBucket) -> (u64, u64) {
    let n = ctx.engine.config().num_vbuckets;
    (0..n).fold((0, 0), |(high, persisted), vb| {
        let vb = vb as u16;
        (
            high + ctx.engine.high_seqno(vb).unwrap_or(0),
            persisted + ctx.engine.persisted_seqno(vb).unwrap_or(0),
        )
    })
}
