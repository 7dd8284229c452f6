//! [`Buckets`]: every bucket of a node, created and deleted at runtime.
//!
//! Each bucket is one [`LiveBucket`] — its engine, its store handle (one
//! keyspace of the node's one fjall [`Store`]), its flusher — plus its
//! background work (warmup, flusher thread, ticker). Connections pick a
//! bucket by name on every selection (SASL, SELECT_BUCKET, and `default` at
//! accept), so the name → context map is an immutable snapshot behind an
//! `ArcSwap`: lookups never lock, and `create`/`delete`, which are rare,
//! build a new map and swap it in.
//!
//! Two kinds, as in Couchbase: a membase bucket is persistent (vbuckets,
//! write-behind to disk, warmup); a memcached bucket lives in memory only —
//! one vbucket, always active, the header's vbucket id ignored, nothing
//! queued for disk, whole items evicted when full.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use arc_swap::ArcSwap;
use shoal_protocol::Limits;
use tokio::sync::Semaphore;

use shoal_engine::{Bucket, EngineConfig, VbucketState};
use shoal_persist::{validate_bucket_name, BucketStore, Flusher, FlusherConfig, Store};

use super::background::{wait_for_warmup, Background};
use super::live::{BucketAccess, LiveBucketParts};
use super::{BucketError, BucketKind, BucketSpec, LiveBucket, ServerStats};

/// What every bucket of a node is built with, from the node's config.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    /// Every vbucket of a new membase bucket starts active here (a
    /// standalone node), and keys are placed by their own hash.
    pub standalone: bool,
    /// Largest value accepted, bytes.
    pub max_value_len: usize,
    /// Parser limits.
    pub limits: Limits,
}

/// All buckets of a node. Shared behind an `Arc` by the node, its accept
/// loop (connections select buckets through it) and the admin API.
#[derive(Debug)]
pub struct Buckets {
    /// Name → bucket, read on every bucket selection. Replaced whole (never
    /// mutated) by `create` and `delete`.
    map: ArcSwap<HashMap<String, Arc<LiveBucket>>>,
    /// Each bucket's background work. Why a `std` mutex: it is held only
    /// to insert, remove or clone out of the map, never across an `.await`.
    background: Mutex<HashMap<String, Background>>,
    /// Serialises `create`, `delete` and `shutdown`. Why a semaphore and
    /// not a lock: these hold it across their `.await`s (opening a
    /// keyspace, stopping a flusher) on purpose — two of them interleaving
    /// could start a bucket twice or delete one being created — and they
    /// are rare admin calls, never on a request's path. Closed by
    /// `shutdown`, after which `create` fails.
    admin: Semaphore,
    /// The node's store: one keyspace per persistent bucket.
    store: Arc<Store>,
    settings: NodeSettings,
    /// The node's counters, shared by every bucket's context.
    stats: Arc<ServerStats>,
    /// When the node started.
    started: Instant,
}

impl Buckets {
    /// A node's buckets, none yet, over `store`.
    pub fn new(store: Store, settings: NodeSettings) -> Buckets {
        Buckets {
            map: ArcSwap::from_pointee(HashMap::new()),
            background: Mutex::new(HashMap::new()),
            admin: Semaphore::new(1),
            store: Arc::new(store),
            settings,
            stats: Arc::new(ServerStats::default()),
            started: Instant::now(),
        }
    }

    /// The bucket `name`, if it exists. Lock-free.
    pub fn get(&self, name: &str) -> Option<Arc<LiveBucket>> {
        self.map.load().get(name).cloned()
    }

    /// The names of every bucket, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.map.load().keys().cloned().collect();
        names.sort();
        names
    }

    /// Creates bucket `spec.name` and starts it: a membase bucket opens (or
    /// creates) its keyspace and starts warming up from it — requests get
    /// "temporary failure" until [`Buckets::ready`] — and its flusher; a
    /// memcached bucket is ready at once. Idempotent: an existing bucket of
    /// that name is returned as it is, whatever `spec` says.
    pub async fn create(&self, spec: BucketSpec) -> Result<Arc<LiveBucket>, BucketError> {
        let _admin = self
            .admin
            .acquire()
            .await
            .map_err(|_| BucketError::Stopped)?;
        if let Some(ctx) = self.get(&spec.name) {
            return Ok(ctx);
        }
        validate_bucket_name(&spec.name)?;
        let store = match spec.kind {
            BucketKind::Membase => {
                let (store, name) = (self.store.clone(), spec.name.clone());
                let opened = tokio::task::spawn_blocking(move || store.bucket(&name))
                    .await
                    .map_err(|e| BucketError::Task(format!("opening the keyspace: {e}")))?;
                Some(opened?)
            }
            BucketKind::Memcached => None,
        };
        let ctx = Arc::new(build(
            &spec,
            &self.settings,
            store,
            self.stats.clone(),
            self.started,
        )?);
        let background = Background::start(ctx.clone(), self.settings.standalone);
        lock(&self.background).insert(spec.name.clone(), background);
        let mut map = HashMap::clone(&self.map.load());
        map.insert(spec.name.clone(), ctx.clone());
        self.map.store(Arc::new(map));
        tracing::info!(bucket = %spec.name, kind = ?spec.kind, quota_mb = spec.ram_quota_mb, "bucket created");
        Ok(ctx)
    }

    /// Deletes bucket `name`: drops it from the map (new selections fail),
    /// marks it deleted (connections using it close after their current
    /// batch, idle ones at once), stops its background work without
    /// writing anything more, and deletes its keyspace. Returns false if
    /// there was no such bucket — after removing any data a bucket of that
    /// name left on disk in an earlier run all the same.
    pub async fn delete(&self, name: &str) -> Result<bool, BucketError> {
        let _admin = self
            .admin
            .acquire()
            .await
            .map_err(|_| BucketError::Stopped)?;
        let background = lock(&self.background).remove(name);
        let ctx = self.get(name);
        if let Some(ctx) = &ctx {
            let mut map = HashMap::clone(&self.map.load());
            map.remove(name);
            self.map.store(Arc::new(map));
            ctx.mark_deleted();
            if let Some(background) = background {
                background.discard(ctx).await;
            }
        }
        if validate_bucket_name(name).is_ok() {
            let (store, owned) = (self.store.clone(), name.to_owned());
            tokio::task::spawn_blocking(move || store.delete_bucket(&owned))
                .await
                .map_err(|e| BucketError::Task(format!("deleting the keyspace: {e}")))??;
        }
        if ctx.is_some() {
            tracing::info!(bucket = %name, "bucket deleted");
        }
        Ok(ctx.is_some())
    }

    /// Waits until bucket `name` has warmed up (at once for a memcached
    /// bucket); fails if it has no such bucket or its warmup failed.
    pub async fn ready(&self, name: &str) -> Result<(), BucketError> {
        let warmup = lock(&self.background)
            .get(name)
            .map(Background::warmup)
            .ok_or_else(|| BucketError::NoSuchBucket(name.to_owned()))?;
        wait_for_warmup(warmup).await
    }

    /// The node's server counters (shared by every bucket's context).
    pub fn stats(&self) -> &Arc<ServerStats> {
        &self.stats
    }

    /// The node's parser limits.
    pub fn limits(&self) -> &Limits {
        &self.settings.limits
    }

    /// Stops every bucket's background work, writing every queued mutation
    /// to disk, then syncs the store. Later `create`s fail.
    pub async fn shutdown(&self) -> Result<(), BucketError> {
        let _admin = self
            .admin
            .acquire()
            .await
            .map_err(|_| BucketError::Stopped)?;
        self.admin.close();
        let all: Vec<(String, Background)> = lock(&self.background).drain().collect();
        let mut result = Ok(());
        for (name, background) in all {
            let Some(ctx) = self.get(&name) else { continue };
            if let Err(error) = background.stop(&ctx).await {
                tracing::error!(bucket = %name, %error, "bucket did not stop cleanly");
                if result.is_ok() {
                    result = Err(error);
                }
            }
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.sync())
            .await
            .map_err(|e| BucketError::Task(format!("syncing the store: {e}")))??;
        result
    }
}

/// Builds a new bucket, not started: a membase bucket warming up with
/// every vbucket dead (warmup and the cluster manager set them), a
/// memcached bucket with its one vbucket active and warmed up.
pub fn build(
    spec: &BucketSpec,
    settings: &NodeSettings,
    store: Option<BucketStore>,
    stats: Arc<ServerStats>,
    started: Instant,
) -> Result<LiveBucket, BucketError> {
    let memcached = spec.kind == BucketKind::Memcached;
    let engine = Bucket::try_new(EngineConfig {
        num_vbuckets: if memcached {
            1
        } else {
            usize::try_from(spec.num_vbuckets).unwrap_or(usize::MAX)
        },
        quota_bytes: usize::try_from(spec.quota_bytes()).unwrap_or(usize::MAX),
        max_value_len: settings.max_value_len,
        ephemeral: memcached,
        ..EngineConfig::default()
    })?;
    if memcached {
        // Cannot fail: vbucket 0 exists in a one-vbucket bucket.
        let _ = engine.set_vbucket_state(0, VbucketState::Active);
    } else {
        engine.set_warming_up(true);
    }
    Ok(LiveBucket::new(LiveBucketParts {
        name: spec.name.clone(),
        kind: spec.kind,
        engine,
        store,
        flusher: Flusher::new(FlusherConfig::default()),
        limits: settings.limits,
        stats,
        started,
        // A memcached bucket's keys all live in its one vbucket, whatever
        // the header says.
        hash_keys: settings.standalone || memcached,
        access: BucketAccess::of(spec),
    }))
}

/// Locks the background map; its data stays consistent even if a holder
/// panicked (every critical section is one insert, remove or clone).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_persist::testdir::TestDir;
    use shoal_persist::StoreOptions;

    const NOW: u32 = 1_800_000_000;

    fn buckets(dir: &TestDir) -> Buckets {
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        Buckets::new(
            store,
            NodeSettings {
                standalone: true,
                max_value_len: 1024,
                limits: Limits::default(),
            },
        )
    }

    fn spec(name: &str, kind: BucketKind) -> BucketSpec {
        BucketSpec {
            name: name.into(),
            kind,
            ram_quota_mb: 4,
            replicas: 0,
            durability: super::super::Durability::None,
            num_vbuckets: 8,
            password: None,
            flush_enabled: false,
        }
    }

    fn set(ctx: &LiveBucket, key: &str, value: &str) {
        let req = shoal_engine::StoreRequest {
            mode: shoal_engine::StoreMode::Set,
            key: bytes::Bytes::copy_from_slice(key.as_bytes()),
            value: bytes::Bytes::copy_from_slice(value.as_bytes()),
            flags: 0,
            exptime: 0,
            cas: 0,
        };
        let vb = ctx.route(5, key.as_bytes());
        ctx.engine.store(vb, &req, NOW).unwrap();
    }

    fn get(ctx: &LiveBucket, key: &str) -> Option<String> {
        let vb = ctx.route(5, key.as_bytes());
        let hit = ctx.get(vb, key.as_bytes(), NOW).ok()?;
        Some(String::from_utf8_lossy(&hit.value).into_owned())
    }

    #[tokio::test]
    async fn create_is_idempotent_and_buckets_are_apart() {
        let dir = TestDir::new("buckets-create");
        let buckets = buckets(&dir);
        assert!(buckets.names().is_empty());
        let a = buckets
            .create(spec("a", BucketKind::Membase))
            .await
            .unwrap();
        let again = buckets
            .create(spec("a", BucketKind::Memcached))
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&a, &again), "an existing bucket is returned");
        let b = buckets
            .create(spec("b", BucketKind::Memcached))
            .await
            .unwrap();
        assert_eq!(buckets.names(), ["a", "b"]);
        assert_eq!((a.name.as_str(), a.kind), ("a", BucketKind::Membase));
        assert_eq!(b.kind, BucketKind::Memcached);
        buckets.ready("a").await.unwrap();
        buckets.ready("b").await.unwrap();
        assert!(matches!(
            buckets.ready("c").await,
            Err(BucketError::NoSuchBucket(_))
        ));
        set(&a, "k", "in a");
        set(&b, "k", "in b");
        assert_eq!(get(&a, "k").as_deref(), Some("in a"));
        assert_eq!(get(&b, "k").as_deref(), Some("in b"));
        assert!(Arc::ptr_eq(&buckets.get("b").unwrap(), &b));
        assert!(buckets.get("c").is_none());
        buckets.shutdown().await.unwrap();
        assert!(matches!(
            buckets.create(spec("c", BucketKind::Membase)).await,
            Err(BucketError::Stopped)
        ));
    }

    #[tokio::test]
    async fn memcached_buckets_have_one_active_vbucket_and_no_store() {
        let dir = TestDir::new("buckets-memcached");
        let buckets = buckets(&dir);
        let ctx = buckets
            .create(BucketSpec {
                num_vbuckets: 1024,
                ..spec("m", BucketKind::Memcached)
            })
            .await
            .unwrap();
        assert_eq!(ctx.engine.config().num_vbuckets, 1);
        assert_eq!(ctx.engine.vbucket_state(0), Some(VbucketState::Active));
        assert!(ctx.store.is_none());
        assert!(ctx.warmup_done.load(std::sync::atomic::Ordering::Acquire));
        for i in 0..100 {
            set(&ctx, &format!("k{i}"), "v");
        }
        assert_eq!(ctx.engine.queue_len(), 0, "nothing queued for disk");
        assert!(!buckets.store.bucket_names().contains(&"m".to_string()));
        buckets.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn bad_specs_are_refused() {
        let dir = TestDir::new("buckets-bad");
        let buckets = buckets(&dir);
        for bad in [
            spec("has space", BucketKind::Membase),
            spec("", BucketKind::Memcached),
            BucketSpec {
                num_vbuckets: 1000,
                ..spec("v", BucketKind::Membase)
            },
            BucketSpec {
                ram_quota_mb: 0,
                ..spec("q", BucketKind::Memcached)
            },
        ] {
            assert!(buckets.create(bad.clone()).await.is_err(), "{bad:?}");
        }
        assert!(buckets.names().is_empty());
        assert!(!buckets.delete("has space").await.unwrap());
    }

    #[tokio::test]
    async fn delete_marks_the_context_and_removes_the_data() {
        let dir = TestDir::new("buckets-delete");
        let buckets = buckets(&dir);
        let ctx = buckets
            .create(spec("d", BucketKind::Membase))
            .await
            .unwrap();
        buckets.ready("d").await.unwrap();
        set(&ctx, "k", "v");
        ctx.flusher.flush_now().unwrap();
        let mut deleted = ctx.deleted_signal();
        assert!(buckets.delete("d").await.unwrap());
        assert!(ctx.is_deleted());
        assert!(*deleted.borrow_and_update());
        assert!(buckets.get("d").is_none() && buckets.names().is_empty());
        assert!(!buckets.delete("d").await.unwrap());
        assert!(!buckets.store.bucket_names().contains(&"d".to_string()));
        let fresh = buckets
            .create(spec("d", BucketKind::Membase))
            .await
            .unwrap();
        buckets.ready("d").await.unwrap();
        assert!(!Arc::ptr_eq(&ctx, &fresh));
        assert_eq!(get(&fresh, "k"), None, "a new bucket starts empty");
        buckets.shutdown().await.unwrap();
    }
}
