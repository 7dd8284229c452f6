//! The node's background work: warmup at start, the flusher thread that
//! drains the bucket's queue to disk, and a ticker that keeps the request
//! clock, runs the pager above the high watermark and purges expired items.
//!
//! The flusher gets its own OS thread because fjall's writes and fsyncs
//! block; the ticker is a tokio task doing bounded work per tick.

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::context::Context;
use super::NodeError;
use crate::engine::{ItemMeta, VbucketState};
use crate::persist::Store;

/// Clock resolution, and how fast the pager reacts to the high watermark.
const TICK: Duration = Duration::from_millis(100);

/// Ticks between expiry purges (1 s, memcached's LRU crawler cadence).
const PURGE_EVERY_TICKS: u32 = 10;

/// Items examined per purge pass: bounds the time a tick can take.
const PURGE_BUDGET: usize = 20_000;

/// Warmup's progress, as the readiness signal.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Warmup {
    Running,
    Done,
    Failed(String),
}

/// Handles to the background work, stopped by [`Background::stop`].
#[derive(Debug)]
pub(super) struct Background {
    /// Kept open for as long as the node runs; dropped last.
    store: Store,
    flusher_thread: Option<std::thread::JoinHandle<Result<(), crate::persist::FlushError>>>,
    ticker: JoinHandle<()>,
    warmup: watch::Receiver<Warmup>,
}

impl Background {
    pub(super) fn start(
        ctx: Arc<Context>,
        store: Store,
        standalone: bool,
        shutdown: watch::Receiver<bool>,
    ) -> Background {
        let flusher_ctx = ctx.clone();
        let flusher_thread = std::thread::Builder::new()
            .name("shoal-flusher".into())
            .spawn(move || {
                let ctx = flusher_ctx;
                ctx.flusher.run(
                    &ctx.store,
                    |max| ctx.bucket.drain(max),
                    |seqnos| ctx.bucket.mark_persisted_all(seqnos),
                )
            })
            .map_err(|e| tracing::error!(error = %e, "cannot start flusher thread"))
            .ok();

        let (warmup_tx, warmup) = watch::channel(Warmup::Running);
        let warm_ctx = ctx.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let state = match warm_up(&warm_ctx, standalone) {
                Ok(()) => {
                    tracing::info!(
                        items = warm_ctx.warmup_count.load(Ordering::Relaxed),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "warmup complete"
                    );
                    Warmup::Done
                }
                Err(e) => {
                    tracing::error!(error = %e, "warmup failed; the node keeps answering temporary failure");
                    Warmup::Failed(e.to_string())
                }
            };
            let _ = warmup_tx.send(state);
        });

        let ticker = tokio::spawn(tick(ctx, shutdown));
        Background {
            store,
            flusher_thread,
            ticker,
            warmup,
        }
    }

    pub(super) async fn warmed_up(&self) -> Result<(), NodeError> {
        let mut rx = self.warmup.clone();
        let state = rx
            .wait_for(|s| *s != Warmup::Running)
            .await
            .map(|s| s.clone())
            .unwrap_or(Warmup::Failed("warmup task ended".into()));
        match state {
            Warmup::Failed(e) => Err(NodeError::Warmup(e)),
            _ => Ok(()),
        }
    }

    /// Stops the ticker, drains the queue to disk and syncs.
    pub(super) async fn stop(mut self, ctx: &Arc<Context>) -> Result<(), NodeError> {
        self.ticker.abort();
        let flusher = ctx.flusher.clone();
        let thread = self.flusher_thread.take();
        let result = tokio::task::spawn_blocking(move || {
            let shutdown = flusher.shutdown();
            if let Some(thread) = thread {
                let _ = thread.join();
            }
            shutdown
        })
        .await
        .unwrap_or(Err(crate::persist::FlushError::Stopped));
        result?;
        self.store.sync()?;
        Ok(())
    }
}

async fn tick(ctx: Arc<Context>, mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u32;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => return,
        }
        ctx.clock.tick();
        let now = ctx.clock.now();
        if ctx.bucket.needs_paging() {
            let report = ctx.bucket.run_pager(now);
            tracing::debug!(?report, "pager ran");
        }
        ticks = ticks.wrapping_add(1);
        if ticks.is_multiple_of(PURGE_EVERY_TICKS) && !ctx.bucket.is_warming_up() {
            let report = ctx.bucket.purge_expired(now, PURGE_BUDGET);
            if report.expired + report.flushed > 0 {
                ctx.flusher.notify();
            }
        }
    }
}

/// Rebuilds the bucket from disk: vbucket states, persisted seqnos, the
/// `flush_all` deadline, then every item (values while they fit under the
/// high watermark, metadata only after that). Then opens for traffic.
fn warm_up(ctx: &Context, standalone: bool) -> Result<(), NodeError> {
    let bucket = &ctx.bucket;
    let n = bucket.config().num_vbuckets;
    if standalone {
        for vb in 0..n {
            let _ = bucket.set_vbucket_state(vb as u16, VbucketState::Active);
        }
    }
    for (vb, state) in ctx.store.vbucket_states()? {
        if let Some(state) = VbucketState::from_wire(u32::from(state)) {
            let _ = bucket.set_vbucket_state(vb, state);
        }
    }
    for (vb, seqno) in ctx.store.persisted_seqnos() {
        let _ = bucket.load_seqno(vb, seqno);
    }
    bucket.load_flush_deadline(ctx.store.flush_deadline()?);
    let mut failure = None;
    ctx.store.warmup(|vb, key, item| {
        let meta = ItemMeta {
            flags: item.header.flags,
            exptime: item.header.exptime,
            cas: item.header.cas,
            seqno: item.header.seqno,
            time: item.header.time,
        };
        match bucket.load_item(vb, key, Some(item.value), meta) {
            Ok(_) => {
                ctx.warmup_count.fetch_add(1, Ordering::Relaxed);
                ControlFlow::Continue(())
            }
            Err(e) => {
                failure = Some(format!("loading vbucket {vb}: {e}"));
                ControlFlow::Break(())
            }
        }
    })?;
    if let Some(failure) = failure {
        return Err(NodeError::Warmup(failure));
    }
    bucket.set_warming_up(false);
    ctx.warmup_done.store(true, Ordering::Release);
    Ok(())
}
