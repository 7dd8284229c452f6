//! How much RAM this node may use: the host's (`MemTotal` in
//! `/proc/meminfo`), or less when its control group caps it
//! (`memory.max`, cgroup v2) — a container's limit is what a quota must
//! fit in. The cluster's memory quota is checked against it. Imports
//! nothing of this crate.

use std::path::Path;

const MIB: u64 = 1024 * 1024;

/// This node's usable RAM in MiB, `None` if the system does not say.
pub fn usable_mb() -> Option<u64> {
    let host = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_total_mb(&text))?;
    let cgroup = cgroup_limit_mb(Path::new("/sys/fs/cgroup/memory.max"));
    Some(cgroup.map_or(host, |limit| limit.min(host)))
}

/// `MemTotal` of a `/proc/meminfo` text, in MiB.
fn mem_total_mb(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// A cgroup v2 `memory.max` in MiB; `None` when it is `max` or absent.
fn cgroup_limit_mb(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.trim().parse::<u64>().ok().map(|bytes| bytes / MIB)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_total_in_mib() {
        let text = "MemTotal:       24576000 kB\nMemFree:        1000 kB\n";
        assert_eq!(mem_total_mb(text), Some(24_000));
        assert_eq!(mem_total_mb("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total_mb("MemTotal: lots kB\n"), None);
    }

    #[test]
    fn this_machine_says_something_plausible() {
        let mb = usable_mb().expect("/proc/meminfo is readable on Linux");
        assert!(mb >= 256, "{mb} MiB");
    }
}
