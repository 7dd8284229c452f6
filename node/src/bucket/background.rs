//! One bucket's background work: warmup when it is created, the flusher
//! thread that drains its queue to disk, and a ticker that keeps its
//! request clock, runs the pager above the high watermark and purges
//! expired items. A memcached bucket has only the ticker: nothing to warm
//! up from, nothing to flush.
//!
//! The flusher gets its own OS thread because fjall's writes and fsyncs
//! block; the ticker is a tokio task doing bounded work per tick.

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use shoal_engine::{ItemMeta, VbucketState};
use shoal_persist::BucketStore;

use super::{BucketError, LiveBucket};

/// Clock resolution, and how fast the pager reacts to the high watermark.
const TICK: Duration = Duration::from_millis(100);

/// Ticks between expiry purges (1 s, memcached's LRU crawler cadence).
const PURGE_EVERY_TICKS: u32 = 10;

/// Items examined per purge pass: bounds the time a tick can take.
const PURGE_BUDGET: usize = 20_000;

/// Warmup's progress, as the readiness signal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Warmup {
    Running,
    Done,
    Failed(String),
}

/// Handles to one bucket's background work, stopped by
/// [`Background::stop`] or [`Background::discard`].
#[derive(Debug)]
pub(super) struct Background {
    flusher_thread: Option<std::thread::JoinHandle<Result<(), shoal_persist::FlushError>>>,
    ticker: JoinHandle<()>,
    warmup: watch::Receiver<Warmup>,
}

impl Background {
    /// Starts the bucket's work: for a persistent bucket the flusher thread
    /// and warmup (every vbucket set active first when `standalone`); for
    /// a memcached bucket only the ticker, its warmup reported done at once.
    pub(super) fn start(ctx: Arc<LiveBucket>, standalone: bool) -> Background {
        let (warmup_tx, warmup) = watch::channel(Warmup::Running);
        let flusher_thread = match ctx.store.clone() {
            Some(store) => {
                let thread = spawn_flusher(ctx.clone(), store);
                let warm_ctx = ctx.clone();
                tokio::task::spawn_blocking(move || {
                    let state = run_warmup(&warm_ctx, standalone);
                    let _ = warmup_tx.send(state);
                });
                thread
            }
            None => {
                ctx.warmup_done.store(true, Ordering::Release);
                let _ = warmup_tx.send(Warmup::Done);
                None
            }
        };
        let ticker = tokio::spawn(tick(ctx));
        Background {
            flusher_thread,
            ticker,
            warmup,
        }
    }

    /// A receiver of warmup's progress, to wait on without holding `self`.
    pub(super) fn warmup(&self) -> watch::Receiver<Warmup> {
        self.warmup.clone()
    }

    /// Stops the ticker, drains the queue to disk and syncs.
    pub(super) async fn stop(mut self, ctx: &Arc<LiveBucket>) -> Result<(), BucketError> {
        self.ticker.abort();
        self.stop_flusher(ctx).await
    }

    /// Stops everything of a bucket being deleted, writing nothing more:
    /// warmup is cut short (it checks the deleted flag per item), the queue
    /// is dropped, and the flusher exits with nothing left to write. Call
    /// after [`LiveBucket::mark_deleted`](super::LiveBucket).
    pub(super) async fn discard(mut self, ctx: &Arc<LiveBucket>) {
        self.ticker.abort();
        let _ = wait_for_warmup(self.warmup.clone()).await;
        // Requests still running answer "temporary failure" from now on;
        // what they queued before is dropped here or by the flusher's last
        // pass into a keyspace that is about to go.
        ctx.engine.set_warming_up(true);
        drop(ctx.engine.drain(usize::MAX));
        if let Err(error) = self.stop_flusher(ctx).await {
            tracing::debug!(bucket = %ctx.name, %error, "flusher of a deleted bucket");
        }
    }

    async fn stop_flusher(&mut self, ctx: &Arc<LiveBucket>) -> Result<(), BucketError> {
        let Some(thread) = self.flusher_thread.take() else {
            return Ok(());
        };
        let flusher = ctx.flusher.clone();
        tokio::task::spawn_blocking(move || {
            let shutdown = flusher.shutdown();
            let _ = thread.join();
            shutdown
        })
        .await
        .unwrap_or(Err(shoal_persist::FlushError::Stopped))?;
        Ok(())
    }
}

/// Waits until warmup has finished (or failed).
pub(super) async fn wait_for_warmup(mut rx: watch::Receiver<Warmup>) -> Result<(), BucketError> {
    let state = rx
        .wait_for(|s| *s != Warmup::Running)
        .await
        .map(|s| s.clone())
        .unwrap_or(Warmup::Failed("warmup task ended".into()));
    match state {
        Warmup::Failed(e) => Err(BucketError::Warmup(e)),
        _ => Ok(()),
    }
}

/// The flusher's thread, draining `ctx`'s queue into `store`.
fn spawn_flusher(
    ctx: Arc<LiveBucket>,
    store: BucketStore,
) -> Option<std::thread::JoinHandle<Result<(), shoal_persist::FlushError>>> {
    let name = ctx.name.clone();
    std::thread::Builder::new()
        .name("shoal-flusher".into())
        .spawn(move || {
            ctx.flusher.run(
                &store,
                |max| ctx.engine.drain(max),
                |seqnos| {
                    ctx.engine.mark_persisted_all(seqnos);
                    ctx.durability.persisted(seqnos);
                },
            )
        })
        .map_err(|e| tracing::error!(bucket = %name, error = %e, "cannot start flusher thread"))
        .ok()
}

/// Runs warmup and logs how it went.
fn run_warmup(ctx: &LiveBucket, standalone: bool) -> Warmup {
    let started = std::time::Instant::now();
    match warm_up(ctx, standalone) {
        Ok(()) => {
            tracing::info!(
                bucket = %ctx.name,
                items = ctx.warmup_count.load(Ordering::Relaxed),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "warmup complete"
            );
            Warmup::Done
        }
        Err(e) if ctx.is_deleted() => Warmup::Failed(e.to_string()),
        Err(e) => {
            tracing::error!(bucket = %ctx.name, error = %e, "warmup failed; the bucket keeps answering temporary failure");
            Warmup::Failed(e.to_string())
        }
    }
}

/// The ticker; runs until aborted.
async fn tick(ctx: Arc<LiveBucket>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u32;
    loop {
        interval.tick().await;
        ctx.clock.tick();
        ctx.engine.set_disk_failing(ctx.flusher.is_failing());
        let now = ctx.clock.now();
        if ctx.engine.needs_paging() {
            let report = ctx.engine.run_pager(now);
            tracing::debug!(?report, "pager ran");
        }
        ticks = ticks.wrapping_add(1);
        if ticks.is_multiple_of(PURGE_EVERY_TICKS) && !ctx.engine.is_warming_up() {
            let report = ctx.engine.purge_expired(now, PURGE_BUDGET);
            if report.expired + report.flushed > 0 {
                ctx.wrote();
            }
        }
    }
}

/// Rebuilds the bucket from disk: vbucket states, persisted seqnos, the
/// `flush_all` deadline, then every item (values while they fit under the
/// high watermark, metadata only after that). Then opens for traffic.
fn warm_up(ctx: &LiveBucket, standalone: bool) -> Result<(), BucketError> {
    let Some(store) = &ctx.store else {
        return Err(BucketError::Warmup(
            "a memcached bucket has no store".into(),
        ));
    };
    let bucket = &ctx.engine;
    let n = bucket.config().num_vbuckets;
    // Seqnos and failover logs before states: a vbucket that comes back
    // active starts a new history at the seqno it restarts from, which is
    // what tells a replica holding more than that to roll back.
    for (vb, seqno) in store.persisted_seqnos() {
        let _ = bucket.load_seqno(vb, seqno);
    }
    for (vb, log) in store.failover_logs()? {
        bucket.set_failover_log(vb, log);
    }
    if standalone {
        for vb in 0..n {
            let _ = bucket.set_vbucket_state(vb as u16, VbucketState::Active);
        }
    }
    for (vb, state) in store.vbucket_states()? {
        if let Some(state) = VbucketState::from_wire(u32::from(state)) {
            let _ = bucket.set_vbucket_state(vb, state);
        }
    }
    let logs: Vec<_> = (0..n)
        .filter_map(|vb| {
            let vb = u16::try_from(vb).ok()?;
            (bucket.vbucket_state(vb) == Some(VbucketState::Active))
                .then(|| (vb, bucket.failover_log(vb)))
        })
        .collect();
    let logs: Vec<_> = logs.iter().map(|(vb, log)| (*vb, None, &log[..])).collect();
    store.set_failover_logs(&logs)?;
    bucket.load_flush_deadline(store.flush_deadline()?);
    let mut failure = None;
    store.warmup(|vb, key, item| {
        if ctx.is_deleted() {
            failure = Some("the bucket was deleted".to_string());
            return ControlFlow::Break(());
        }
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
        return Err(BucketError::Warmup(failure));
    }
    bucket.set_warming_up(false);
    ctx.warmup_done.store(true, Ordering::Release);
    Ok(())
}
