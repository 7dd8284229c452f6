//! [`Hosted`]: the UUID of every bucket hosted here, kept in
//! `raft/hosted.json` across restarts. A bucket deleted and created again
//! under the same name (even while this node was down) has a new UUID, and
//! its old data is deleted before the new bucket is created.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The UUIDs of the buckets hosted here, kept across restarts.
#[derive(Debug)]
pub(super) struct Hosted {
    /// Where they are kept (`raft/hosted.json`).
    path: PathBuf,
    /// Bucket name to UUID.
    pub(super) uuids: BTreeMap<String, String>,
}

impl Hosted {
    pub(super) fn load(dir: &Path) -> Hosted {
        let path = dir.join("hosted.json");
        let uuids = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Hosted { path, uuids }
    }

    /// Notes that bucket `name` with `uuid` is hosted here, durably, before
    /// any of its data is written; returns whether that worked.
    pub(super) fn record(&mut self, name: &str, uuid: &str) -> bool {
        if self.uuids.get(name).is_some_and(|u| u == uuid) {
            return true;
        }
        self.uuids.insert(name.to_string(), uuid.to_string());
        self.save()
    }

    pub(super) fn forget(&mut self, name: &str) {
        if self.uuids.remove(name).is_some() {
            self.save();
        }
    }

    pub(super) fn forget_all(&mut self) {
        if !self.uuids.is_empty() {
            self.uuids.clear();
            self.save();
        }
    }

    fn save(&self) -> bool {
        let tmp = self.path.with_extension("json.tmp");
        let result = serde_json::to_vec(&self.uuids)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(error) = &result {
            tracing::error!(%error, "could not record the hosted buckets");
        }
        result.is_ok()
    }
}
