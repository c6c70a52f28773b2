//! How much memory a daemon holds: its processes, and their resident memory from `/proc`.
//!
//! nixnest is one process; CppNix's `nix-daemon` forks a worker per connection (and both
//! fork builders). A daemon's memory is therefore measured over its *process set*: the
//! daemon process and everything it starts.
//!
//! * **Which processes.** The daemon process is moved into a fresh cgroup of its own right
//!   after it starts listening (before any client connects), so every worker it forks later
//!   is born inside; `cgroup.procs` then lists them all, even those that reparent. The
//!   cgroup is created in the cgroup-v2 hierarchy (`/sys/fs/cgroup`, or
//!   `/sys/fs/cgroup/unified` on hybrid v1/v2 machines) and is used for *tracking only*:
//!   no controller is needed. Without a writable v2 hierarchy the set is the daemon's
//!   descendants found through `/proc/<pid>/stat`.
//! * **Whose memory.** Processes of the set that run under another uid than the daemon
//!   process — builders, and whatever they start, such as the Nix client inside a
//!   recursive build — are the build's memory, not the daemon's, and are left out (they
//!   run as build users; the daemon and its workers as root).
//! * **How much memory.** For each process, `/proc/<pid>/smaps_rollup` gives `Pss`
//!   (proportional set size: a page shared by k processes counts 1/k in each), and
//!   `/proc/<pid>/status` gives `VmHWM` (the kernel's exact peak RSS of that process).
//!   Summing PSS is what makes a forking daemon comparable: summing RSS would count the
//!   copy-on-write pages every worker shares with its parent once per worker.
//! * **The reported peak** ([`MemoryPeak::rss_kib`]) is the larger of
//!   (a) the highest sum of PSS over the set seen by the [`Sampler`] (every 10 ms or
//!   slower when a sample itself takes longer), and (b) the daemon process's own `VmHWM`
//!   at the end, which catches a spike of the main process between two samples. For
//!   nixnest (one process) that is its `VmHWM`: exact. For CppNix it is a sampled value
//!   that can miss a worker's short spike; the largest `VmHWM` of any worker is reported
//!   next to it.
//!
//! cgroup memory accounting (`memory.peak` in v2, `memory.max_usage_in_bytes` in v1) is
//! not used for the peak: it charges the page cache of every file the daemon writes, so
//! importing 1 GiB would show about 1 GiB whatever the daemon's heap. When the cgroup has a
//! `memory.peak` file it is reported on the side (`cgroup_peak_kib`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How daemons' processes are found on this machine, for the report.
pub fn method_name() -> &'static str {
    if cgroup_root().is_some() {
        "cgroup-v2 membership; sum of /proc/<pid>/smaps_rollup Pss, sampled; VmHWM"
    } else {
        "process tree; sum of /proc/<pid>/smaps_rollup Pss, sampled; VmHWM"
    }
}

/// The processes of one running daemon.
#[derive(Debug)]
pub struct ProcSet {
    main: u32,
    cgroup: Option<PathBuf>,
}

impl ProcSet {
    /// Tracks the daemon process `main` and everything it starts from now on. `name` names
    /// its cgroup.
    pub fn track(main: u32, name: &str) -> ProcSet {
        let cgroup = cgroup_root().and_then(|root| {
            let dir = root.join(format!(
                "nixnest-bench-{}-{name}-{main}",
                std::process::id()
            ));
            std::fs::create_dir(&dir).ok()?;
            if std::fs::write(dir.join("cgroup.procs"), main.to_string()).is_err() {
                let _ = std::fs::remove_dir(&dir);
                return None;
            }
            Some(dir)
        });
        ProcSet { main, cgroup }
    }

    /// The live processes of the set (the main one first).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = match &self.cgroup {
            Some(dir) => std::fs::read_to_string(dir.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect(),
            None => descendants(self.main),
        };
        pids.sort_by_key(|&p| p != self.main);
        pids
    }

    /// One look at every process of the set.
    pub fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot::default();
        let mut daemon_uid = None;
        for pid in self.pids() {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                continue; // exited meanwhile
            };
            let uid = status_field(&status, "Uid:");
            if pid == self.main {
                daemon_uid = uid;
            } else if uid != daemon_uid {
                // A builder (or what it started) running as a build user: the build's
                // memory, not the daemon's.
                snap.build_processes += 1;
                continue;
            }
            let Some(pss) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
                .ok()
                .and_then(|t| status_field(&t, "Pss:"))
            else {
                continue; // exited meanwhile, or a kernel thread
            };
            let hwm = status_field(&status, "VmHWM:").unwrap_or(0);
            snap.processes += 1;
            snap.pss_kib += pss;
            if pid == self.main {
                snap.main_hwm_kib = hwm;
            } else {
                snap.worker_max_hwm_kib = snap.worker_max_hwm_kib.max(hwm);
            }
        }
        snap
    }

    /// CPU time used so far by every process that has been in the set (`usage_usec` of
    /// the cgroup's `cpu.stat`, which cgroup v2 keeps without any controller and which
    /// includes exited workers); `None` without a cgroup.
    pub fn cpu_usec(&self) -> Option<u64> {
        let dir = self.cgroup.as_ref()?;
        let text = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
        status_field(&text, "usage_usec")
    }

    /// `memory.peak` of the cgroup when the kernel accounts memory there (see the module
    /// docs for why it is only a side note).
    pub fn cgroup_peak_kib(&self) -> Option<u64> {
        let dir = self.cgroup.as_ref()?;
        let bytes: u64 = std::fs::read_to_string(dir.join("memory.peak"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(bytes / 1024)
    }

    /// Starts sampling in the background until [`Sampler::stop`].
    pub fn sample(self: &Arc<Self>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let set = Arc::clone(self);
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut peak = MemoryPeak::default();
            loop {
                let t = Instant::now();
                peak.add(&set.snapshot());
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                // Never spend more than about a third of one core on sampling.
                let pause = Duration::from_millis(10).max(t.elapsed() * 2);
                std::thread::sleep(pause);
            }
            peak.cgroup_peak_kib = set.cgroup_peak_kib();
            peak
        });
        Sampler { stop, handle }
    }
}

impl Drop for ProcSet {
    fn drop(&mut self) {
        // The cgroup can only be removed once its processes are gone; the daemon is
        // killed before its ProcSet is dropped, but its workers may take a moment.
        if let Some(dir) = &self.cgroup {
            for _ in 0..200 {
                if std::fs::remove_dir(dir).is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            eprintln!("warning: could not remove cgroup {}", dir.display());
        }
    }
}

/// Memory of a process set at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    pub processes: usize,
    /// Sum of `Pss` over the set.
    pub pss_kib: u64,
    /// `VmHWM` of the daemon process.
    pub main_hwm_kib: u64,
    /// Largest `VmHWM` of any other process of the set.
    pub worker_max_hwm_kib: u64,
    /// Processes of the set running as another user (builders), not counted.
    pub build_processes: usize,
}

/// The highest values seen while sampling.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryPeak {
    pub pss_peak_kib: u64,
    pub main_hwm_kib: u64,
    pub worker_max_hwm_kib: u64,
    pub processes_peak: usize,
    /// Most builder processes (not counted) seen at once.
    pub build_processes_peak: usize,
    pub samples: u64,
    pub cgroup_peak_kib: Option<u64>,
}

impl MemoryPeak {
    pub fn add(&mut self, s: &Snapshot) {
        self.pss_peak_kib = self.pss_peak_kib.max(s.pss_kib);
        self.main_hwm_kib = self.main_hwm_kib.max(s.main_hwm_kib);
        self.worker_max_hwm_kib = self.worker_max_hwm_kib.max(s.worker_max_hwm_kib);
        self.processes_peak = self.processes_peak.max(s.processes);
        self.build_processes_peak = self.build_processes_peak.max(s.build_processes);
        self.samples += 1;
    }

    /// The reported peak: see the module docs.
    pub fn rss_kib(&self) -> u64 {
        self.pss_peak_kib.max(self.main_hwm_kib)
    }

    /// Combines the peaks of two rounds.
    pub fn merge(&mut self, other: &MemoryPeak) {
        self.pss_peak_kib = self.pss_peak_kib.max(other.pss_peak_kib);
        self.main_hwm_kib = self.main_hwm_kib.max(other.main_hwm_kib);
        self.worker_max_hwm_kib = self.worker_max_hwm_kib.max(other.worker_max_hwm_kib);
        self.processes_peak = self.processes_peak.max(other.processes_peak);
        self.build_processes_peak = self.build_processes_peak.max(other.build_processes_peak);
        self.samples += other.samples;
        self.cgroup_peak_kib = match (self.cgroup_peak_kib, other.cgroup_peak_kib) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    pub fn from_snapshot(s: &Snapshot) -> Self {
        let mut p = MemoryPeak::default();
        p.add(s);
        p
    }
}

/// A background sampler of one process set.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<MemoryPeak>,
}

impl Sampler {
    /// Takes a last sample and returns the peaks.
    pub fn stop(self) -> MemoryPeak {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

/// The first number on the line starting with `key` (`Pss:      1234 kB` → 1234,
/// `Uid:\t0\t0\t0\t0` → 0).
fn status_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The root of a writable cgroup-v2 hierarchy, if any.
fn cgroup_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .find(|dir| dir.join("cgroup.procs").exists())
}

/// Every process below `root` (excluding it), via the parent pid in `/proc/<pid>/stat`,
/// plus `root` itself.
fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = parent_pid(&entry.path()) {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut set = vec![root];
    let mut i = 0;
    while let Some(&p) = set.get(i) {
        set.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    set
}

fn parent_pid(proc_dir: &Path) -> Option<u32> {
    let stat = std::fs::read_to_string(proc_dir.join("stat")).ok()?;
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_child_and_its_children_are_measured() {
        use std::io::Write;
        // A shell that forks a sleeping child once told to, like a daemon forking a
        // worker for a connection after it was tracked.
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "read go; sleep 30 & wait"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let set = ProcSet::track(child.id(), "self-test");
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let mut s = set.snapshot();
        for _ in 0..100 {
            if s.processes >= 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
            s = set.snapshot();
        }
        assert_eq!(set.pids().first(), Some(&child.id()));
        assert!(s.processes >= 2, "{s:?}");
        assert!(s.pss_kib > 0);
        assert!(s.main_hwm_kib > 0);
        for pid in set.pids() {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid as i32).unwrap(),
                rustix::process::Signal::KILL,
            );
        }
        child.wait().unwrap();
    }

    #[test]
    fn processes_of_other_users_are_builds() {
        use std::io::Write;
        // As root: the shell forks a child that drops to `nobody`, like a builder.
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping: needs root to run a child as another user");
            return;
        }
        let mut child = std::process::Command::new("/bin/sh")
            .args([
                "-c",
                "read go; setpriv --reuid 65534 --regid 65534 --clear-groups sleep 30 & wait",
            ])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let set = ProcSet::track(child.id(), "uid-test");
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let mut s = set.snapshot();
        for _ in 0..100 {
            if s.build_processes >= 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
            s = set.snapshot();
        }
        assert_eq!((s.processes, s.build_processes), (1, 1), "{s:?}");
        for pid in set.pids() {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid as i32).unwrap(),
                rustix::process::Signal::KILL,
            );
        }
        child.wait().unwrap();
    }

    #[test]
    fn peak_takes_the_larger_of_pss_sum_and_main_hwm() {
        let mut p = MemoryPeak::default();
        p.add(&Snapshot {
            processes: 3,
            pss_kib: 900,
            main_hwm_kib: 500,
            worker_max_hwm_kib: 400,
            build_processes: 2,
        });
        p.add(&Snapshot {
            processes: 1,
            pss_kib: 300,
            main_hwm_kib: 1000,
            worker_max_hwm_kib: 0,
            build_processes: 0,
        });
        assert_eq!(p.rss_kib(), 1000);
        assert_eq!(p.build_processes_peak, 2);
        assert_eq!(p.processes_peak, 3);
        assert_eq!(p.worker_max_hwm_kib, 400);
    }
}
