//! A container's cgroup v1 statistics, read from the cgroup files of its init process, in
//! containerd's `io.containerd.cgroups.v1.Metrics` form.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::protocol::cgroups_v1::*;

/// Where cgroup v1 hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// USER_HZ: cpuacct.stat counts in these ticks per second.
const TICKS_PER_SECOND: u64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("process {0} is gone")]
    Gone(u32),
    #[error("the container is on cgroup v2, whose statistics are not supported yet")]
    CgroupV2,
}

/// The cgroup directory of `pid` for each v1 controller.
fn cgroups_of(pid: u32) -> Result<HashMap<String, PathBuf>, StatsError> {
    let listing = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|_| StatsError::Gone(pid))?;
    let mut dirs = HashMap::new();
    for line in listing.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(id), Some(controllers), Some(path)) => (id, controllers, path),
            _ => continue,
        };
        for controller in controllers.split(',').filter(|c| !c.is_empty() && !c.starts_with("name=")) {
            // Hierarchies holding several controllers are reachable by each name (cpu,cpuacct).
            let mount =
                [controller, controllers].iter().map(|dir| Path::new(CGROUP_ROOT).join(dir)).find(|d| d.is_dir());
            if let Some(mount) = mount {
                dirs.insert(controller.to_string(), mount.join(path.trim_start_matches('/')));
            }
        }
    }
    if dirs.is_empty() && listing.lines().any(|l| l.starts_with("0::")) {
        return Err(StatsError::CgroupV2);
    }
    Ok(dirs)
}

/// The cgroup v1 directory of `pid` for `controller`, if it has one.
pub fn cgroup_dir(pid: u32, controller: &str) -> Option<PathBuf> {
    cgroups_of(pid).ok()?.remove(controller)
}

fn read_u64(dir: &Path, file: &str) -> u64 {
    std::fs::read_to_string(dir.join(file)).ok().and_then(|text| text.trim().parse().ok()).unwrap_or(0)
}

/// `key value` lines (memory.stat, cpu.stat, cpuacct.stat, memory.oom_control).
fn read_keyed(dir: &Path, file: &str) -> HashMap<String, u64> {
    let text = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

fn memory_entry(dir: &Path, prefix: &str) -> Option<MemoryEntry> {
    dir.join(format!("{prefix}.usage_in_bytes")).exists().then(|| MemoryEntry {
        limit: read_u64(dir, &format!("{prefix}.limit_in_bytes")),
        usage: read_u64(dir, &format!("{prefix}.usage_in_bytes")),
        max: read_u64(dir, &format!("{prefix}.max_usage_in_bytes")),
        failcnt: read_u64(dir, &format!("{prefix}.failcnt")),
    })
}

fn memory(dir: &Path) -> MemoryStat {
    let stat = read_keyed(dir, "memory.stat");
    let get = |key: &str| stat.get(key).copied().unwrap_or(0);
    MemoryStat {
        cache: get("cache"),
        rss: get("rss"),
        rss_huge: get("rss_huge"),
        mapped_file: get("mapped_file"),
        dirty: get("dirty"),
        writeback: get("writeback"),
        pg_pg_in: get("pgpgin"),
        pg_pg_out: get("pgpgout"),
        pg_fault: get("pgfault"),
        pg_maj_fault: get("pgmajfault"),
        inactive_anon: get("inactive_anon"),
        active_anon: get("active_anon"),
        inactive_file: get("inactive_file"),
        active_file: get("active_file"),
        unevictable: get("unevictable"),
        hierarchical_memory_limit: get("hierarchical_memory_limit"),
        hierarchical_swap_limit: get("hierarchical_memsw_limit"),
        total_cache: get("total_cache"),
        total_rss: get("total_rss"),
        total_rss_huge: get("total_rss_huge"),
        total_mapped_file: get("total_mapped_file"),
        total_dirty: get("total_dirty"),
        total_writeback: get("total_writeback"),
        total_pg_pg_in: get("total_pgpgin"),
        total_pg_pg_out: get("total_pgpgout"),
        total_pg_fault: get("total_pgfault"),
        total_pg_maj_fault: get("total_pgmajfault"),
        total_inactive_anon: get("total_inactive_anon"),
        total_active_anon: get("total_active_anon"),
        total_inactive_file: get("total_inactive_file"),
        total_active_file: get("total_active_file"),
        total_unevictable: get("total_unevictable"),
        usage: memory_entry(dir, "memory"),
        swap: memory_entry(dir, "memory.memsw"),
        kernel: memory_entry(dir, "memory.kmem"),
        kernel_tcp: memory_entry(dir, "memory.kmem.tcp"),
    }
}

fn cpu(cpuacct: Option<&PathBuf>, cpu: Option<&PathBuf>) -> CpuStat {
    let usage = cpuacct.map(|dir| {
        let ticks = read_keyed(dir, "cpuacct.stat");
        let nanos = |key: &str| ticks.get(key).copied().unwrap_or(0) * (1_000_000_000 / TICKS_PER_SECOND);
        let per_cpu = std::fs::read_to_string(dir.join("cpuacct.usage_percpu"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        CpuUsage { total: read_u64(dir, "cpuacct.usage"), kernel: nanos("system"), user: nanos("user"), per_cpu }
    });
    let throttling = cpu.map(|dir| {
        let stat = read_keyed(dir, "cpu.stat");
        let get = |key: &str| stat.get(key).copied().unwrap_or(0);
        Throttle {
            periods: get("nr_periods"),
            throttled_periods: get("nr_throttled"),
            throttled_time: get("throttled_time"),
        }
    });
    CpuStat { usage, throttling }
}

/// Statistics of the cgroups `pid` (the container's init) is in.
pub fn of(pid: u32) -> Result<Metrics, StatsError> {
    let dirs = cgroups_of(pid)?;
    let pids = dirs.get("pids").map(|dir| PidsStat {
        current: read_u64(dir, "pids.current"),
        // "max" reads as 0: no limit, as containerd reports it.
        limit: read_u64(dir, "pids.max"),
    });
    let memory_dir = dirs.get("memory");
    let oom = memory_dir.map(|dir| {
        let control = read_keyed(dir, "memory.oom_control");
        let get = |key: &str| control.get(key).copied().unwrap_or(0);
        MemoryOomControl {
            oom_kill_disable: get("oom_kill_disable"),
            under_oom: get("under_oom"),
            oom_kill: get("oom_kill"),
        }
    });
    Ok(Metrics {
        pids,
        cpu: Some(cpu(dirs.get("cpuacct"), dirs.get("cpu"))),
        memory: memory_dir.map(|dir| memory(dir)),
        memory_oom_control: oom,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_memory_files_in_containerds_shape() {
        let dir = tempfile::tempdir().unwrap();
        let write = |file: &str, text: &str| std::fs::write(dir.path().join(file), text).unwrap();
        write("memory.stat", "cache 4096\nrss 8192\ntotal_rss 8192\npgfault 12\n");
        write("memory.usage_in_bytes", "12288\n");
        write("memory.limit_in_bytes", "67108864\n");
        write("memory.max_usage_in_bytes", "20000\n");
        write("memory.failcnt", "0\n");
        let stat = memory(dir.path());
        assert_eq!((stat.cache, stat.rss, stat.total_rss, stat.pg_fault), (4096, 8192, 8192, 12));
        let usage = stat.usage.unwrap();
        assert_eq!((usage.usage, usage.limit, usage.max), (12288, 67108864, 20000));
        assert!(stat.swap.is_none(), "no memsw files: no swap entry");
    }

    #[test]
    fn a_gone_process_is_named() {
        assert!(matches!(of(u32::MAX), Err(StatsError::Gone(_))));
    }
}
