//! Facts about the machine a run measured, from `/proc` and `/sys`: CPU, cores, memory,
//! kernel, and the disk and file system the stores live on (every store is under `/tmp`).
//! The load average at start and end says how busy the machine was meanwhile.

use std::path::Path;

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub memory_mib: u64,
    pub kernel: String,
    /// The file system holding the stores: mount point, type, device, options.
    pub store_fs: StoreFs,
    pub load_avg_start: String,
    pub load_avg_end: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StoreFs {
    pub dir: String,
    pub mount_point: String,
    pub fs_type: String,
    pub device: String,
    /// From `/sys/class/block/<dev>/queue/rotational`: `rotational`, `non-rotational` or
    /// `unknown` (virtual disks often claim to be rotational whatever is behind them).
    pub disk: String,
}

impl Machine {
    pub fn probe(store_parent: &Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, m)| m.trim().to_owned());
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .map_or(0, |kib| kib / 1024);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned());
        Machine {
            cpu_model,
            cores,
            memory_mib,
            kernel,
            store_fs: store_fs(store_parent),
            load_avg_start: load_avg(),
            load_avg_end: None,
        }
    }

    pub fn finish(&mut self) {
        self.load_avg_end = Some(load_avg());
    }

    /// Lines for the text report.
    pub fn lines(&self) -> Vec<String> {
        let fs = &self.store_fs;
        vec![
            format!("CPU: {} ({} cores)", self.cpu_model, self.cores),
            format!("memory: {} MiB, kernel {}", self.memory_mib, self.kernel),
            format!(
                "stores under {}: {} on {} ({}, mounted at {})",
                fs.dir, fs.fs_type, fs.device, fs.disk, fs.mount_point
            ),
            format!(
                "load average: {} at start, {} at end",
                self.load_avg_start,
                self.load_avg_end.as_deref().unwrap_or("?")
            ),
        ]
    }
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

/// The mount holding `dir`: the longest mount point that is a prefix of it.
fn store_fs(dir: &Path) -> StoreFs {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let best = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [dev, point, fstype, ..] => Some((*dev, unescape(point), *fstype)),
                _ => None,
            }
        })
        .filter(|(_, point, _)| dir.starts_with(point))
        .max_by_key(|(_, point, _)| point.len());
    let (device, mount_point, fs_type) = best
        .map(|(d, p, t)| (d.to_owned(), p, t.to_owned()))
        .unwrap_or_else(|| ("?".into(), "?".into(), "?".into()));
    StoreFs {
        dir: dir.display().to_string(),
        disk: disk_kind(&device),
        mount_point,
        fs_type,
        device,
    }
}

/// `/proc/mounts` escapes spaces and the like as `\ooo`.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let oct: String = chars.by_ref().take(3).collect();
            if let Some(ch) = u8::from_str_radix(&oct, 8).ok().map(char::from) {
                out.push(ch);
                continue;
            }
            out.push('\\');
            out.push_str(&oct);
        } else {
            out.push(c);
        }
    }
    out
}

fn disk_kind(device: &str) -> String {
    let Some(name) = device.strip_prefix("/dev/") else {
        return "unknown".to_owned();
    };
    // A partition's queue is its disk's: /sys/class/block/<part>/../queue.
    let class = Path::new("/sys/class/block").join(name);
    let candidates = [
        class.join("queue/rotational"),
        class.join("../queue/rotational"),
    ];
    for c in candidates {
        if let Ok(v) = std::fs::read_to_string(&c) {
            return match v.trim() {
                "0" => "non-rotational".to_owned(),
                "1" => "rotational".to_owned(),
                _ => "unknown".to_owned(),
            };
        }
    }
    "unknown".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_something_sensible() {
        let m = Machine::probe(Path::new("/tmp"));
        assert!(m.cores >= 1);
        assert!(m.memory_mib > 0);
        assert_ne!(m.store_fs.mount_point, "?");
    }

    #[test]
    fn mount_escapes() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
