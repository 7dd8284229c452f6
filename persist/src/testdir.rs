//! A scratch directory for persistence tests, removed on drop. Kept tiny on
//! purpose instead of pulling in the `tempfile` crate: a unique subdirectory
//! of the system temp dir (process id, test name, counter) is all we need.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes directories of tests running in parallel in one process.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A fresh, empty directory that is deleted (recursively) when dropped.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// Creates `<tmp>/shoal-persist-<pid>-<name>-<n>`, clearing any leftover
    /// from an earlier run that died before cleaning up.
    pub fn new(name: &str) -> TestDir {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("shoal-persist-{}-{name}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test dir");
        TestDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
