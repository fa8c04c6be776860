//! A CPU quota for one process, from the kernel's cgroup `cpu` controller (v1 or v2), so a
//! replica on this two-core machine can be held to a fraction of a core and the replicas, not
//! nats-server, are what limits throughput until the server saturates.
//!
//! Creating a group needs root (CI and these machines run as root). Each group is named after
//! the benchmark's pid and removed when dropped, after the processes in it have ended.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The scheduler period the quotas are expressed in, µs.
const PERIOD_US: u64 = 100_000;

/// Where the `cpu` controller is mounted, and which version it is.
#[derive(Debug, Clone)]
enum Hierarchy {
    /// cgroup v1: `cpu.cfs_quota_us` and `cpu.cfs_period_us` under the controller's mount.
    V1(PathBuf),
    /// cgroup v2: `cpu.max` in a group of the unified tree whose parent delegates `cpu`.
    V2(PathBuf),
}

fn hierarchy() -> anyhow::Result<Hierarchy> {
    let unified = Path::new("/sys/fs/cgroup");
    if let Ok(controllers) = std::fs::read_to_string(unified.join("cgroup.controllers")) {
        anyhow::ensure!(
            controllers.split_whitespace().any(|c| c == "cpu"),
            "cgroup v2 without the cpu controller"
        );
        return Ok(Hierarchy::V2(unified.to_path_buf()));
    }
    for mount in ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"] {
        let mount = Path::new(mount);
        if mount.join("cpu.cfs_quota_us").is_file() {
            return Ok(Hierarchy::V1(mount.to_path_buf()));
        }
    }
    anyhow::bail!("no cgroup cpu controller under /sys/fs/cgroup")
}

/// One cgroup holding its processes to a share of the CPU.
#[derive(Debug)]
pub struct Quota {
    dir: PathBuf,
}

/// Throttling seen by a group: scheduler periods it ran in, and in how many the quota ran out.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Throttling {
    pub periods: u64,
    pub throttled: u64,
}

impl Throttling {
    /// The share of periods in which the group used up its quota.
    pub fn share(&self) -> f64 {
        self.throttled as f64 / self.periods.max(1) as f64
    }
}

impl Quota {
    /// A new group named `name` (made unique by this process's pid) limited to `cpus` CPUs.
    pub fn new(name: &str, cpus: f64) -> anyhow::Result<Quota> {
        anyhow::ensure!(
            cpus.is_finite() && cpus > 0.0,
            "a CPU quota must be a positive number of CPUs"
        );
        let quota_us = ((cpus * PERIOD_US as f64).round() as u64).max(1_000);
        let leaf = format!("freshet-bench-{}-{name}", std::process::id());
        let dir = match hierarchy()? {
            Hierarchy::V1(mount) => {
                let dir = mount.join(leaf);
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {} (needs root)", dir.display()))?;
                write(&dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                write(&dir.join("cpu.cfs_quota_us"), &quota_us.to_string())?;
                dir
            }
            Hierarchy::V2(root) => {
                // The root delegates `cpu` to its children; a no-op when it does already.
                write(&root.join("cgroup.subtree_control"), "+cpu")?;
                let dir = root.join(leaf);
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {} (needs root)", dir.display()))?;
                write(&dir.join("cpu.max"), &format!("{quota_us} {PERIOD_US}"))?;
                dir
            }
        };
        Ok(Quota { dir })
    }

    /// Moves the process `pid` into the group.
    pub fn add(&self, pid: u32) -> anyhow::Result<()> {
        write(&self.dir.join("cgroup.procs"), &pid.to_string())
    }

    /// The group's throttling so far.
    pub fn throttling(&self) -> anyhow::Result<Throttling> {
        let stat = std::fs::read_to_string(self.dir.join("cpu.stat"))?;
        let field = |name: &str| {
            stat.lines()
                .filter_map(|line| line.split_once(' '))
                .find(|(key, _)| *key == name)
                .and_then(|(_, value)| value.trim().parse().ok())
                .unwrap_or(0)
        };
        Ok(Throttling {
            periods: field("nr_periods"),
            throttled: field("nr_throttled"),
        })
    }
}

impl Drop for Quota {
    fn drop(&mut self) {
        // A group can only be removed once empty: its processes ended with their stack.
        if let Err(err) = std::fs::remove_dir(&self.dir) {
            eprintln!("could not remove {}: {err}", self.dir.display());
        }
    }
}

fn write(path: &Path, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

/// Whether quotas can be made here, and if not, why.
pub fn available() -> anyhow::Result<()> {
    Quota::new("probe", 0.5).map(drop)
}
