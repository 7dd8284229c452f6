//! Raft storage for the cluster metadata, in the node's data dir under
//! `raft/`: the log and the vote in their own fjall database (synced before
//! Raft is told an append or a vote is durable), and the applied state
//! machine in `state.json`, rewritten atomically and synced after every
//! applied batch so a restarted node serves its last state at once and
//! Raft never re-applies what it already holds.
//!
//! Metadata changes are rare and tiny (a bucket, a node, a map), so
//! entries are JSON and the whole state is its own snapshot.

use std::fmt::{Debug, Display};
use std::io::{Cursor, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::state::{ClusterState, Rejection};
use super::{NodeId, TypeConfig};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

const VOTE_KEY: &str = "vote";
const COMMITTED_KEY: &str = "committed";
const PURGED_KEY: &str = "purged";

fn any(e: impl Display) -> AnyError {
    AnyError::error(e.to_string())
}

/// The Raft log and vote, in fjall. Cheap to clone (handles).
#[derive(Clone)]
pub struct LogStore {
    db: Database,
    log: Keyspace,
    meta: Keyspace,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

impl LogStore {
    /// Opens (creating) the log in `dir`.
    pub fn open(dir: &Path) -> Result<LogStore, fjall::Error> {
        let db = Database::builder(dir).cache_size(4 << 20).open()?;
        let log = db.keyspace("log", KeyspaceCreateOptions::default)?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default)?;
        Ok(LogStore { db, log, meta })
    }

    fn read_meta<T: for<'a> Deserialize<'a>>(&self, key: &str) -> Result<Option<T>, AnyError> {
        match self.meta.get(key).map_err(any)? {
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(any),
            None => Ok(None),
        }
    }

    /// Writes one metadata value and syncs it.
    fn write_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<(), AnyError> {
        let bytes = serde_json::to_vec(value).map_err(any)?;
        self.meta.insert(key, bytes).map_err(any)?;
        self.db.persist(PersistMode::SyncAll).map_err(any)
    }

    fn last_entry(&self) -> Result<Option<Entry<TypeConfig>>, AnyError> {
        match self.log.last_key_value() {
            Some(guard) => {
                let (_, v) = guard.into_inner().map_err(any)?;
                serde_json::from_slice(&v).map(Some).map_err(any)
            }
            None => Ok(None),
        }
    }

    /// Removes every entry in `range` of indexes.
    fn remove_range(&self, start: u64, end: Bound<u64>) -> Result<(), AnyError> {
        let end = match end {
            Bound::Included(e) => Bound::Included(e.to_be_bytes().to_vec()),
            Bound::Excluded(e) => Bound::Excluded(e.to_be_bytes().to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut keys = Vec::new();
        for guard in self
            .log
            .range((Bound::Included(start.to_be_bytes().to_vec()), end))
        {
            keys.push(guard.key().map_err(any)?);
        }
        let mut batch = self.db.batch();
        for k in keys {
            batch.remove(&self.log, k);
        }
        batch.commit().map_err(any)?;
        self.db.persist(PersistMode::SyncAll).map_err(any)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => Bound::Included(e.to_be_bytes().to_vec()),
            Bound::Excluded(e) => Bound::Excluded(e.to_be_bytes().to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut entries = Vec::new();
        for guard in self
            .log
            .range((Bound::Included(start.to_be_bytes().to_vec()), end))
        {
            let (_, v) = guard
                .into_inner()
                .map_err(|e| StorageIOError::read_logs(any(e)))?;
            let entry: Entry<TypeConfig> =
                serde_json::from_slice(&v).map_err(|e| StorageIOError::read_logs(any(e)))?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let purged: Option<LogId<NodeId>> = self
            .read_meta(PURGED_KEY)
            .map_err(StorageIOError::read_logs)?;
        let last = self
            .last_entry()
            .map_err(StorageIOError::read_logs)?
            .map(|e| e.log_id)
            .or(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.write_meta(VOTE_KEY, vote)
            .map_err(|e| StorageIOError::write_vote(e).into())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.read_meta(VOTE_KEY)
            .map_err(|e| StorageIOError::read_vote(e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        self.write_meta(COMMITTED_KEY, &committed)
            .map_err(|e| StorageIOError::write(e).into())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self
            .read_meta::<Option<LogId<NodeId>>>(COMMITTED_KEY)
            .map_err(StorageIOError::read)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = self.db.batch();
        for entry in entries {
            let bytes =
                serde_json::to_vec(&entry).map_err(|e| StorageIOError::write_logs(any(e)))?;
            batch.insert(&self.log, entry.log_id.index.to_be_bytes(), bytes);
        }
        let result = batch
            .commit()
            .and_then(|()| self.db.persist(PersistMode::SyncAll))
            .map_err(|e| std::io::Error::other(e.to_string()));
        let failed = result.as_ref().err().map(any);
        callback.log_io_completed(result);
        match failed {
            Some(e) => Err(StorageIOError::write_logs(e).into()),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.remove_range(log_id.index, Bound::Unbounded)
            .map_err(|e| StorageIOError::write_logs(e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.write_meta(PURGED_KEY, &log_id)
            .and_then(|()| self.remove_range(0, Bound::Included(log_id.index)))
            .map_err(|e| StorageIOError::write_logs(e).into())
    }
}

/// What `state.json` and a snapshot hold.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    state: ClusterState,
}

/// A snapshot's metadata and bytes.
type HeldSnapshot = (SnapshotMeta<NodeId, openraft::BasicNode>, Vec<u8>);

/// The applied metadata, its durable copy, and the channel that tells the
/// node about every change.
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<Applied>>,
    dir: PathBuf,
    published: watch::Sender<Arc<ClusterState>>,
    /// The last snapshot built or installed.
    snapshot: Arc<Mutex<Option<HeldSnapshot>>>,
}

impl Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StateMachine {
    /// Loads the state applied before a restart from `dir` (empty if none).
    pub fn open(dir: &Path) -> std::io::Result<StateMachine> {
        let applied: Applied = match std::fs::read(dir.join("state.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Applied::default(),
            Err(e) => return Err(e),
        };
        let published = watch::channel(Arc::new(applied.state.clone())).0;
        Ok(StateMachine {
            inner: Arc::new(Mutex::new(applied)),
            dir: dir.to_path_buf(),
            published,
            snapshot: Arc::new(Mutex::new(None)),
        })
    }

    /// Every applied state, starting with the current one.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.published.subscribe()
    }

    /// The index of the last entry applied (0 before any). Set before
    /// the state it produced is published, so an index read before the
    /// published state is never newer than that state.
    pub fn applied_index(&self) -> u64 {
        lock(&self.inner).last_applied.map_or(0, |id| id.index)
    }

    /// The current applied state.
    pub fn current(&self) -> Arc<ClusterState> {
        self.published.borrow().clone()
    }

    /// Writes `applied` to `state.json` (temp file, sync, rename).
    fn persist(&self, applied: &Applied) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(applied).map_err(std::io::Error::other)?;
        let tmp = self.dir.join("state.json.tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, self.dir.join("state.json"))?;
        if let Ok(dir) = std::fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    fn publish(&self, state: &ClusterState) {
        self.published.send_replace(Arc::new(state.clone()));
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let (meta, bytes) = {
            let applied = lock(&self.inner);
            let bytes = serde_json::to_vec(&*applied)
                .map_err(|e| StorageIOError::write_snapshot(None, any(e)))?;
            let id = applied.last_applied.map_or_else(
                || "0-0".to_string(),
                |l| format!("{}-{}", l.leader_id, l.index),
            );
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
                snapshot_id: id,
            };
            (meta, bytes)
        };
        *lock(&self.snapshot) = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(
        Option<LogId<NodeId>>,
        StoredMembership<NodeId, openraft::BasicNode>,
    )> {
        let applied = lock(&self.inner);
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Result<(), Rejection>>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applied = lock(&self.inner);
        let mut replies = Vec::new();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            let reply = match entry.payload {
                EntryPayload::Blank => Ok(()),
                EntryPayload::Normal(command) => {
                    let mut next = applied.state.clone();
                    let result = next.apply(entry.log_id.index, command);
                    if result.is_ok() {
                        applied.state = next;
                    }
                    result
                }
                EntryPayload::Membership(m) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), m);
                    Ok(())
                }
            };
            replies.push(reply);
        }
        self.persist(&applied)
            .map_err(|e| StorageIOError::write_state_machine(any(e)))?;
        self.publish(&applied.state);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let bytes = snapshot.into_inner();
        let mut incoming: Applied = serde_json::from_slice(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), any(e)))?;
        incoming.last_applied = meta.last_log_id;
        incoming.membership = meta.last_membership.clone();
        let mut applied = lock(&self.inner);
        *applied = incoming;
        self.persist(&applied)
            .map_err(|e| StorageIOError::write_state_machine(any(e)))?;
        self.publish(&applied.state);
        *lock(&self.snapshot) = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let held = lock(&self.snapshot).as_ref().map(|(meta, bytes)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(bytes.clone())),
        });
        match held {
            Some(snapshot) => Ok(Some(snapshot)),
            // Snapshots are kept in memory only: after a restart the
            // durable applied state is itself a valid snapshot.
            None if lock(&self.inner).last_applied.is_some() => {
                self.build_snapshot().await.map(Some)
            }
            None => Ok(None),
        }
    }
}
