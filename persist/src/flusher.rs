//! The flusher: a synchronous loop that drains the engine's queue of
//! [`Mutation`]s into the store in batches and reports what was persisted.
//! The server runs [`Flusher::run`] on a dedicated std thread per bucket; the
//! engine calls [`Flusher::notify`] when it queues mutations; SIGTERM calls
//! [`Flusher::shutdown`], which returns only once everything queued before it
//! is written and synced. Wake-ups use a `Mutex` + `Condvar`, so no notify
//! is ever lost. A failed write keeps its batch and retries it with backoff:
//! a mutation leaves the queue for good only once it is on disk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use fxhash::FxHashMap;

use super::bucket::BucketStore;
use super::record;
use super::PersistError;
use shoal_engine::mutation::{Mutation, VbucketId};

/// Most mutations asked of `drain` per call while filling a batch.
const DRAIN_CHUNK: usize = 512;

/// Mutations asked of `drain` first, before anything says how large the
/// queued ones are. Later calls ask for about what the byte budget still
/// holds at the average size drained so far, so a batch of large values
/// (512 × 1 MiB) cannot overshoot `max_batch_bytes` by a whole chunk: the
/// overshoot is at most this many values, or an average's misjudgement.
/// Everything a batch encodes ends up in fjall's memtables, outside the
/// RAM quota, so the byte budget is what bounds that memory.
const FIRST_DRAIN_CHUNK: usize = 4;

/// Failed attempts at the final drain before `shutdown` gives up.
const SHUTDOWN_ATTEMPTS: u32 = 3;

/// Where the flusher writes: a [`BucketStore`], or a stand-in in tests.
pub trait BatchWriter {
    /// Writes one batch atomically (see [`BucketStore::write_batch`]).
    fn write_batch(&self, mutations: &[Mutation]) -> Result<(), PersistError>;
    /// Forces written batches to stable storage.
    fn sync(&self) -> Result<(), PersistError>;
}

impl BatchWriter for BucketStore {
    fn write_batch(&self, mutations: &[Mutation]) -> Result<(), PersistError> {
        BucketStore::write_batch(self, mutations)
    }

    fn sync(&self) -> Result<(), PersistError> {
        BucketStore::sync(self)
    }
}

/// Batch limits and timings.
#[derive(Clone, Debug)]
pub struct FlusherConfig {
    /// Most mutations per batch. Bigger batches amortise the fsync of
    /// `FsyncPolicy::EveryBatch`; 10k is where fjall's per-batch cost is
    /// already negligible.
    pub max_batch_items: usize,
    /// Most encoded bytes per batch (approximate: the overshoot is a few
    /// mutations, see `FIRST_DRAIN_CHUNK`), bounding the memory a batch
    /// holds twice (queue copy and record encoding), the journal write size
    /// and how far one batch can take a memtable past its size.
    pub max_batch_bytes: usize,
    /// How long the loop sleeps with no notify before draining anyway — a
    /// safety net, not the normal wake-up path.
    pub idle_wait: Duration,
    /// First delay before retrying a failed write; doubles up to
    /// `max_retry_backoff`.
    pub retry_backoff: Duration,
    /// Longest delay between retries.
    pub max_retry_backoff: Duration,
}

impl Default for FlusherConfig {
    fn default() -> Self {
        FlusherConfig {
            max_batch_items: 10_000,
            max_batch_bytes: 4 * 1024 * 1024,
            idle_wait: Duration::from_secs(1),
            retry_backoff: Duration::from_millis(100),
            max_retry_backoff: Duration::from_secs(10),
        }
    }
}

/// A snapshot of the flusher's counters, for `ep_*` stats.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlusherStats {
    /// Batches written.
    pub batches: u64,
    /// Mutations written (`ep_total_persisted`).
    pub items_written: u64,
    /// Encoded key + record bytes written.
    pub bytes_written: u64,
    /// How long the last successful batch write took (including fsync).
    pub last_batch_duration: Duration,
    /// Mutations drained from the queue but not yet written
    /// (`ep_flusher_todo`; the engine's own queue length is `ep_queue_size`).
    pub flusher_todo: u64,
    /// Failed batch writes (each retried).
    pub write_errors: u64,
    /// Why the last attempt failed, while writes are failing (`None` once
    /// one succeeds).
    pub failing: Option<String>,
}

/// Why a flush did not complete.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlushError {
    /// The loop exited with mutations it could not write.
    #[error("flusher stopped with {unwritten} mutations not written: {last_error}")]
    Unwritten {
        /// Mutations drained but not written.
        unwritten: usize,
        /// The last write error.
        last_error: String,
    },
    /// The loop has exited, so the flush cannot happen.
    #[error("flusher is not running")]
    Stopped,
}

/// Handle to a flusher loop. Clone it: one clone runs the loop
/// ([`Flusher::run`]), others notify, flush and read stats.
#[derive(Clone, Debug)]
pub struct Flusher {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: FlusherConfig,
    /// Wake-up and flush bookkeeping; the lock is held only to flip flags,
    /// never across a write.
    state: Mutex<State>,
    /// Signalled when `state` changes (wake requests and completions).
    changed: Condvar,
    batches: AtomicU64,
    items_written: AtomicU64,
    bytes_written: AtomicU64,
    last_batch_micros: AtomicU64,
    flusher_todo: AtomicU64,
    write_errors: AtomicU64,
    /// Why writes are failing now; `None` while they succeed.
    failing: Mutex<Option<String>>,
    /// Whether `failing` is `Some`: a successful batch looks here, not
    /// at the lock.
    is_failing: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    /// A notify or flush request arrived since the loop last looked.
    wake: bool,
    /// Flush requests issued (a generation counter).
    requested: u64,
    /// Highest request generation fully drained and synced.
    completed: u64,
    /// `shutdown` was called.
    shutdown: bool,
    /// The loop has exited; `Some(Err)` if it left mutations unwritten.
    exited: Option<Result<(), FlushError>>,
}

// === impl Flusher ===

impl Flusher {
    /// A flusher that will batch with `config` once [`Flusher::run`] starts.
    pub fn new(config: FlusherConfig) -> Flusher {
        Flusher {
            shared: Arc::new(Shared {
                config,
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
                batches: AtomicU64::new(0),
                items_written: AtomicU64::new(0),
                bytes_written: AtomicU64::new(0),
                last_batch_micros: AtomicU64::new(0),
                flusher_todo: AtomicU64::new(0),
                write_errors: AtomicU64::new(0),
                failing: Mutex::new(None),
                is_failing: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Tells the loop there is work. Cheap; call it after queueing.
    pub fn notify(&self) {
        let mut st = self.lock();
        if !st.wake {
            st.wake = true;
            self.shared.changed.notify_all();
        }
    }

    /// Blocks until every mutation queued before this call is written and
    /// synced to stable storage (whatever the fsync policy). Fails if the
    /// loop exits first; if [`Flusher::run`] has not started yet, waits for
    /// it.
    pub fn flush_now(&self) -> Result<(), FlushError> {
        let mut st = self.lock();
        st.requested += 1;
        let target = st.requested;
        st.wake = true;
        self.shared.changed.notify_all();
        loop {
            if st.completed >= target {
                return Ok(());
            }
            if let Some(exit) = &st.exited {
                return Err(exit.clone().err().unwrap_or(FlushError::Stopped));
            }
            st = self.wait(st);
        }
    }

    /// Drains everything, syncs, stops the loop and waits for it to exit.
    /// Gives up after a few failed attempts and reports what was left.
    pub fn shutdown(&self) -> Result<(), FlushError> {
        let mut st = self.lock();
        st.shutdown = true;
        self.shared.changed.notify_all();
        loop {
            if let Some(exit) = &st.exited {
                return exit.clone();
            }
            st = self.wait(st);
        }
    }

    /// Whether writes are failing now (cheap: one atomic load).
    pub fn is_failing(&self) -> bool {
        self.shared.is_failing.load(Ordering::Relaxed)
    }

    /// The counters now.
    pub fn stats(&self) -> FlusherStats {
        let s = &*self.shared;
        FlusherStats {
            batches: s.batches.load(Ordering::Relaxed),
            items_written: s.items_written.load(Ordering::Relaxed),
            bytes_written: s.bytes_written.load(Ordering::Relaxed),
            last_batch_duration: Duration::from_micros(s.last_batch_micros.load(Ordering::Relaxed)),
            flusher_todo: s.flusher_todo.load(Ordering::Relaxed),
            write_errors: s.write_errors.load(Ordering::Relaxed),
            failing: s
                .failing
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// The loop; call it once, on the thread that owns the flushing. Waits
    /// for work, then repeatedly takes up to a batch from `drain(n)` (which
    /// removes and returns at most `n` queued mutations, in seqno order per
    /// vbucket), writes it, and calls `mark_persisted` with the highest
    /// seqno written per vbucket — until `drain` comes back empty. Returns
    /// after [`Flusher::shutdown`], with everything drained and synced, or
    /// with [`FlushError::Unwritten`] if the final writes kept failing.
    pub fn run<W, D, M>(
        &self,
        writer: &W,
        mut drain: D,
        mut mark_persisted: M,
    ) -> Result<(), FlushError>
    where
        W: BatchWriter + ?Sized,
        D: FnMut(usize) -> Vec<Mutation>,
        M: FnMut(&[(VbucketId, u64)]),
    {
        let _exit = ExitGuard(self);
        let config = &self.shared.config;
        // Drained but not yet written: kept across failed attempts.
        let mut pending: Vec<Mutation> = Vec::new();
        let mut backoff = config.retry_backoff;
        let mut failed_shutdown_attempts = 0u32;
        loop {
            let (target, shutting_down) = {
                let mut st = self.lock();
                let wait = if pending.is_empty() {
                    config.idle_wait
                } else {
                    backoff
                };
                let deadline = Instant::now() + wait;
                while !st.wake && !st.shutdown {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    st = self
                        .shared
                        .changed
                        .wait_timeout(st, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                st.wake = false;
                (st.requested, st.shutdown)
            };
            let result = self
                .drain_all(writer, &mut pending, &mut drain, &mut mark_persisted)
                .and_then(|()| {
                    // Sync for flush requests and shutdown, under every
                    // policy: both promise stable storage.
                    if shutting_down || target > self.lock().completed {
                        writer.sync()
                    } else {
                        Ok(())
                    }
                });
            match result {
                Ok(()) => {
                    backoff = config.retry_backoff;
                    self.set_failing(None);
                    let mut st = self.lock();
                    st.completed = st.completed.max(target);
                    if shutting_down {
                        st.exited = Some(Ok(()));
                    }
                    self.shared.changed.notify_all();
                    if shutting_down {
                        return Ok(());
                    }
                }
                Err(e) => {
                    self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
                    if self.set_failing(Some(e.to_string())) {
                        tracing::error!(error = %e, pending = pending.len(), "disk writes failing; retrying until they succeed");
                    }
                    if shutting_down {
                        failed_shutdown_attempts += 1;
                        if failed_shutdown_attempts >= SHUTDOWN_ATTEMPTS {
                            let exit = Err(FlushError::Unwritten {
                                unwritten: pending.len(),
                                last_error: e.to_string(),
                            });
                            let mut st = self.lock();
                            st.exited = Some(exit.clone());
                            self.shared.changed.notify_all();
                            return exit;
                        }
                    }
                    backoff = (backoff * 2).min(config.max_retry_backoff);
                }
            }
        }
    }

    /// Writes batches until `drain` has nothing more. `pending` holds the
    /// batch being written; on error it is left in place for the retry.
    fn drain_all<W, D, M>(
        &self,
        writer: &W,
        pending: &mut Vec<Mutation>,
        drain: &mut D,
        mark_persisted: &mut M,
    ) -> Result<(), PersistError>
    where
        W: BatchWriter + ?Sized,
        D: FnMut(usize) -> Vec<Mutation>,
        M: FnMut(&[(VbucketId, u64)]),
    {
        let config = &self.shared.config;
        let s = &*self.shared;
        loop {
            let mut bytes: usize = pending.iter().map(record::encoded_len).sum();
            while pending.len() < config.max_batch_items && bytes < config.max_batch_bytes {
                let by_bytes = match bytes.checked_div(pending.len()) {
                    Some(average) => ((config.max_batch_bytes - bytes) / average.max(1)).max(1),
                    None => FIRST_DRAIN_CHUNK,
                };
                let want = DRAIN_CHUNK
                    .min(by_bytes)
                    .min(config.max_batch_items - pending.len());
                let chunk = drain(want);
                let got = chunk.len();
                bytes += chunk.iter().map(record::encoded_len).sum::<usize>();
                pending.extend(chunk);
                s.flusher_todo
                    .store(pending.len() as u64, Ordering::Relaxed);
                if got < want {
                    break; // the queue is empty for now
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            let started = Instant::now();
            writer.write_batch(pending)?;
            let took = started.elapsed();

            let mut max: FxHashMap<VbucketId, u64> = FxHashMap::default();
            for m in pending.iter() {
                let top = max.entry(m.vbucket).or_insert(0);
                *top = (*top).max(m.seqno);
            }
            let mut seqnos: Vec<(VbucketId, u64)> = max.into_iter().collect();
            seqnos.sort_unstable();

            s.batches.fetch_add(1, Ordering::Relaxed);
            s.items_written
                .fetch_add(pending.len() as u64, Ordering::Relaxed);
            s.bytes_written.fetch_add(bytes as u64, Ordering::Relaxed);
            s.last_batch_micros.store(
                u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            pending.clear();
            s.flusher_todo.store(0, Ordering::Relaxed);
            mark_persisted(&seqnos);
        }
    }

    /// Records whether writes are failing (and why); returns whether that
    /// changed from succeeding to failing, so each outage is logged once
    /// (and its end too).
    fn set_failing(&self, why: Option<String>) -> bool {
        if why.is_none() && !self.shared.is_failing.load(Ordering::Relaxed) {
            return false;
        }
        self.shared
            .is_failing
            .store(why.is_some(), Ordering::Relaxed);
        let mut failing = self
            .shared
            .failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let began = failing.is_none() && why.is_some();
        if failing.is_some() && why.is_none() {
            tracing::info!("disk writes succeed again");
        }
        *failing = why;
        began
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No critical section can leave `State` half-updated, so a panic
        // elsewhere must not wedge shutdown.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.shared
            .changed
            .wait(st)
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Marks the loop as exited if `run` unwinds (a panicking `drain` or
/// `mark_persisted`), so `flush_now` and `shutdown` callers are released
/// instead of waiting forever. Normal returns record their outcome first.
struct ExitGuard<'a>(&'a Flusher);

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        if st.exited.is_none() {
            st.exited = Some(Err(FlushError::Stopped));
            self.0.shared.changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TestDir;
    use crate::{Store, StoreOptions};
    use bytes::Bytes;
    use shoal_engine::mutation::MutationKind;
    use std::collections::VecDeque;
    use std::sync::atomic::AtomicU32;
    use std::thread;

    type Queue = Arc<Mutex<VecDeque<Mutation>>>;
    /// Every `mark_persisted` call's argument, in order.
    type Marks = Arc<Mutex<Vec<Vec<(VbucketId, u64)>>>>;

    fn set(vb: VbucketId, seqno: u64, key: String, value_len: usize) -> Mutation {
        Mutation {
            vbucket: vb,
            seqno,
            key: Bytes::from(key),
            cas: seqno,
            time: 0,
            kind: MutationKind::Set {
                value: Bytes::from(vec![b'v'; value_len]),
                flags: 0,
                exptime: 0,
            },
        }
    }

    /// Queues `n` mutations over 16 vbuckets, seqnos continuing per vbucket.
    fn push(q: &Queue, from: u64, n: u64, value_len: usize) {
        let mut q = q.lock().unwrap();
        for i in from..from + n {
            q.push_back(set(
                (i % 16) as VbucketId,
                i / 16 + 1,
                format!("k{i}"),
                value_len,
            ));
        }
    }

    /// Starts the loop on a thread; returns the thread and the recorded
    /// `mark_persisted` calls.
    fn start<W: BatchWriter + Send + Sync + 'static>(
        flusher: &Flusher,
        writer: Arc<W>,
        queue: &Queue,
    ) -> (thread::JoinHandle<Result<(), FlushError>>, Marks) {
        let marks = Marks::default();
        let (f, q, m) = (flusher.clone(), queue.clone(), marks.clone());
        let handle = thread::spawn(move || {
            f.run(
                &*writer,
                |n| {
                    let mut q = q.lock().unwrap();
                    let k = n.min(q.len());
                    q.drain(..k).collect()
                },
                |seqnos| m.lock().unwrap().push(seqnos.to_vec()),
            )
        });
        (handle, marks)
    }

    /// Highest seqno marked per vbucket over all calls.
    fn marked_max(marks: &Mutex<Vec<Vec<(VbucketId, u64)>>>) -> Vec<(VbucketId, u64)> {
        let mut max = std::collections::BTreeMap::new();
        for call in marks.lock().unwrap().iter() {
            for (vb, s) in call {
                let e = max.entry(*vb).or_insert(0);
                *e = (*e).max(*s);
            }
        }
        max.into_iter().collect()
    }

    #[test]
    fn shutdown_drains_everything() {
        let dir = TestDir::new("flush-shutdown");
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let bucket = Arc::new(store.bucket("default").unwrap());
        let queue: Queue = Arc::default();
        let flusher = Flusher::new(FlusherConfig {
            // Only shutdown may wake it: proves the drain is not left to
            // the idle timer.
            idle_wait: Duration::from_secs(3600),
            ..FlusherConfig::default()
        });
        let (handle, marks) = start(&flusher, bucket.clone(), &queue);
        push(&queue, 0, 24_000, 10);
        flusher.shutdown().unwrap();
        handle.join().unwrap().unwrap();

        assert!(queue.lock().unwrap().is_empty());
        let stats = flusher.stats();
        assert_eq!(stats.items_written, 24_000);
        assert!(stats.batches >= 3, "10k-item batches: {stats:?}");
        assert_eq!(stats.flusher_todo, 0);
        assert!(stats.bytes_written >= 24_000 * 10);
        let want: Vec<(VbucketId, u64)> = (0..16).map(|vb| (vb, 24_000 / 16)).collect();
        assert_eq!(marked_max(&marks), want);
        assert_eq!(bucket.persisted_seqnos(), want);
        for i in (0..24_000u64).step_by(997) {
            assert!(bucket
                .get((i % 16) as VbucketId, format!("k{i}").as_bytes())
                .unwrap()
                .is_some());
        }
        assert_eq!(flusher.flush_now(), Err(FlushError::Stopped));
    }

    #[test]
    fn flush_now_writes_what_was_queued_before_it() {
        let dir = TestDir::new("flush-now");
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let bucket = Arc::new(store.bucket("default").unwrap());
        let queue: Queue = Arc::default();
        let flusher = Flusher::new(FlusherConfig {
            idle_wait: Duration::from_secs(3600),
            // A small byte budget splits the work into many batches.
            max_batch_bytes: 64 * 1024,
            ..FlusherConfig::default()
        });
        let (handle, _marks) = start(&flusher, bucket.clone(), &queue);
        push(&queue, 0, 2_000, 100);
        flusher.flush_now().unwrap();
        assert!(queue.lock().unwrap().is_empty());
        assert_eq!(flusher.stats().items_written, 2_000);
        assert!(flusher.stats().batches >= 2_000 * 140 / (64 * 1024));
        push(&queue, 2_000, 10, 100);
        flusher.flush_now().unwrap();
        assert_eq!(flusher.stats().items_written, 2_010);
        flusher.shutdown().unwrap();
        handle.join().unwrap().unwrap();
    }

    #[test]
    fn notify_wakes_the_loop() {
        let dir = TestDir::new("flush-notify");
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let bucket = Arc::new(store.bucket("default").unwrap());
        let queue: Queue = Arc::default();
        let flusher = Flusher::new(FlusherConfig {
            idle_wait: Duration::from_secs(3600),
            ..FlusherConfig::default()
        });
        let (handle, _marks) = start(&flusher, bucket.clone(), &queue);
        push(&queue, 0, 5, 10);
        flusher.notify();
        let started = Instant::now();
        while flusher.stats().items_written < 5 {
            assert!(started.elapsed() < Duration::from_secs(10), "notify lost");
            thread::sleep(Duration::from_millis(1));
        }
        flusher.shutdown().unwrap();
        handle.join().unwrap().unwrap();
    }

    /// Fails the first `fail_first` writes, then records batches in memory.
    #[derive(Default)]
    struct Flaky {
        fail_first: u32,
        attempts: AtomicU32,
        written: Mutex<Vec<Mutation>>,
    }

    impl BatchWriter for Flaky {
        fn write_batch(&self, mutations: &[Mutation]) -> Result<(), PersistError> {
            if self.attempts.fetch_add(1, Ordering::SeqCst) < self.fail_first {
                return Err(PersistError::Corrupt {
                    reason: "injected failure",
                });
            }
            self.written.lock().unwrap().extend_from_slice(mutations);
            Ok(())
        }

        fn sync(&self) -> Result<(), PersistError> {
            Ok(())
        }
    }

    #[test]
    fn failed_writes_are_retried_without_loss() {
        let writer = Arc::new(Flaky {
            fail_first: 2,
            ..Flaky::default()
        });
        let queue: Queue = Arc::default();
        let flusher = Flusher::new(FlusherConfig {
            retry_backoff: Duration::from_millis(1),
            ..FlusherConfig::default()
        });
        let (handle, marks) = start(&flusher, writer.clone(), &queue);
        push(&queue, 0, 100, 1);
        flusher.flush_now().unwrap();
        assert_eq!(flusher.stats().write_errors, 2);
        let written = writer.written.lock().unwrap().clone();
        let want: Vec<Mutation> = {
            let q: Queue = Arc::default();
            push(&q, 0, 100, 1);
            let v: Vec<Mutation> = q.lock().unwrap().iter().cloned().collect();
            v
        };
        assert_eq!(written, want, "every mutation once, in order");
        assert_eq!(marks.lock().unwrap().len(), 1, "marked only after success");
        flusher.shutdown().unwrap();
        handle.join().unwrap().unwrap();
    }

    #[test]
    fn shutdown_reports_what_it_could_not_write() {
        let writer = Arc::new(Flaky {
            fail_first: u32::MAX,
            ..Flaky::default()
        });
        let queue: Queue = Arc::default();
        let flusher = Flusher::new(FlusherConfig {
            retry_backoff: Duration::from_millis(1),
            max_retry_backoff: Duration::from_millis(4),
            ..FlusherConfig::default()
        });
        let (handle, marks) = start(&flusher, writer, &queue);
        push(&queue, 0, 7, 1);
        let err = flusher.shutdown().unwrap_err();
        assert!(
            matches!(err, FlushError::Unwritten { unwritten: 7, .. }),
            "{err}"
        );
        assert_eq!(handle.join().unwrap(), Err(err.clone()));
        assert_eq!(flusher.flush_now(), Err(err));
        assert!(marks.lock().unwrap().is_empty());
        assert_eq!(flusher.stats().flusher_todo, 7);
    }

    /// Records the encoded size of each batch.
    #[derive(Default)]
    struct BatchSizes(Mutex<Vec<usize>>);

    impl BatchWriter for BatchSizes {
        fn write_batch(&self, mutations: &[Mutation]) -> Result<(), PersistError> {
            let bytes = mutations.iter().map(record::encoded_len).sum();
            self.0.lock().unwrap().push(bytes);
            Ok(())
        }

        fn sync(&self) -> Result<(), PersistError> {
            Ok(())
        }
    }

    #[test]
    fn large_values_do_not_overshoot_the_batch_byte_budget_by_a_chunk() {
        // Regression: a batch drained 512 mutations at a time, so 1 MiB
        // values made 512 MiB batches against a 4 MiB budget — all of it
        // encoded again into fjall's memtables, outside the RAM quota.
        let writer = Arc::new(BatchSizes::default());
        let queue: Queue = Arc::default();
        let flusher = Flusher::new(FlusherConfig {
            idle_wait: Duration::from_secs(3600),
            ..FlusherConfig::default()
        });
        let (handle, _marks) = start(&flusher, writer.clone(), &queue);
        const VALUE: usize = 256 * 1024;
        push(&queue, 0, 200, VALUE);
        flusher.flush_now().unwrap();
        assert_eq!(flusher.stats().items_written, 200);
        let budget = FlusherConfig::default().max_batch_bytes;
        let sizes = writer.0.lock().unwrap().clone();
        for &size in &sizes {
            assert!(
                size <= budget + FIRST_DRAIN_CHUNK * (VALUE + 64),
                "a {size}-byte batch against a {budget}-byte budget"
            );
        }
        flusher.shutdown().unwrap();
        handle.join().unwrap().unwrap();
    }

    #[test]
    fn a_panicking_loop_releases_waiters() {
        let flusher = Flusher::new(FlusherConfig::default());
        let f = flusher.clone();
        let handle = thread::spawn(move || {
            f.run(
                &Flaky::default(),
                |_| -> Vec<Mutation> { panic!("drain blew up") },
                |_| {},
            )
        });
        assert_eq!(flusher.flush_now(), Err(FlushError::Stopped));
        assert!(handle.join().is_err());
        assert_eq!(flusher.shutdown(), Err(FlushError::Stopped));
    }
}
