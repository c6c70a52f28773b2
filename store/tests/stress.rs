//! Crash safety, memory bound and GC scale. The crash and RSS tests re-execute this test
//! binary in a child mode (selected by an environment variable), so the child can be
//! killed with SIGKILL or measured on its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nixnest_core::{ContentAddressMethod, HashAlgo};
use nixnest_store::logger::NullLogger;
use nixnest_store::{GcOptions, LocalStore, StoreConfig};

const CHILD_MODE: &str = "NIXNEST_STORE_TEST_CHILD";
const CHILD_ROOT: &str = "NIXNEST_STORE_TEST_ROOT";

fn open(root: &Path) -> LocalStore {
    let mut c = StoreConfig::under(root);
    c.require_sigs = false;
    LocalStore::open(c, &NullLogger).unwrap()
}

/// Re-runs this binary, running only `test_name`, in child mode `mode`.
fn child(test_name: &str, mode: &str, root: &Path) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_MODE, mode)
        .env(CHILD_ROOT, root);
    c
}

/// A reader producing `nix-archive-1 ( type regular contents <size bytes> )` without
/// holding it: the header, `size` pseudo-random bytes, padding and the trailer.
struct SyntheticNar {
    header: Vec<u8>,
    size: u64,
    produced: u64,
    trailer: Vec<u8>,
    stage: u8,
    pos: usize,
    seed: u64,
}

fn token(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
    out.resize(out.len().div_ceil(8) * 8, 0);
}

impl SyntheticNar {
    fn new(size: u64, seed: u64) -> Self {
        let mut header = Vec::new();
        for t in [
            &b"nix-archive-1"[..],
            b"(",
            b"type",
            b"regular",
            b"contents",
        ] {
            token(&mut header, t);
        }
        header.extend_from_slice(&size.to_le_bytes());
        let mut trailer = vec![0u8; ((8 - size % 8) % 8) as usize];
        token(&mut trailer, b")");
        SyntheticNar {
            header,
            size,
            produced: 0,
            trailer,
            stage: 0,
            pos: 0,
            seed: seed | 1,
        }
    }
}

impl Read for SyntheticNar {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.stage {
                0 | 2 => {
                    let src = if self.stage == 0 {
                        &self.header
                    } else {
                        &self.trailer
                    };
                    if self.pos < src.len() {
                        let n = buf.len().min(src.len() - self.pos);
                        buf[..n].copy_from_slice(&src[self.pos..self.pos + n]);
                        self.pos += n;
                        return Ok(n);
                    }
                    self.stage += 1;
                    self.pos = 0;
                }
                1 => {
                    let left = self.size - self.produced;
                    if left == 0 {
                        self.stage = 2;
                        continue;
                    }
                    let n = (buf.len() as u64).min(left) as usize;
                    for chunk in buf[..n].chunks_mut(8) {
                        self.seed ^= self.seed << 13;
                        self.seed ^= self.seed >> 7;
                        self.seed ^= self.seed << 17;
                        let b = self.seed.to_le_bytes();
                        let l = chunk.len();
                        chunk.copy_from_slice(&b[..l]);
                    }
                    self.produced += n as u64;
                    return Ok(n);
                }
                _ => return Ok(0),
            }
        }
    }
}

fn vm_hwm_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn ingest_2gib_nar_in_constant_memory() {
    if std::env::var(CHILD_MODE).as_deref() == Ok("rss") {
        let root = std::env::var(CHILD_ROOT).unwrap();
        let s = open(Path::new(&root));
        let tr = s.temp_roots_session();
        let before = vm_hwm_kib();
        let t = Instant::now();
        let mut nar = SyntheticNar::new(2 << 30, 42);
        let info = s
            .add_to_store_ca(
                "big",
                ContentAddressMethod::NixArchive,
                HashAlgo::Sha256,
                &BTreeSet::new(),
                &mut nar,
                false,
                &tr,
                &NullLogger,
            )
            .unwrap();
        assert_eq!(info.nar_size, (2u64 << 30) + 96 + 8 + 8);
        println!(
            "RESULT hwm_before_kib={before} hwm_after_kib={} secs={:.1}",
            vm_hwm_kib(),
            t.elapsed().as_secs_f64()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = child("ingest_2gib_nar_in_constant_memory", "rss", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // libtest may print "test … ... " on the same line before our output.
    let line = stdout
        .lines()
        .find_map(|l| l.find("RESULT").map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no RESULT line in child output: {stdout}"));
    eprintln!("{line}");
    let hwm: u64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("hwm_after_kib="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(hwm < 64 * 1024, "peak RSS {hwm} KiB while ingesting 2 GiB");
}

#[test]
fn crash_at_random_points_leaves_a_consistent_store() {
    if std::env::var(CHILD_MODE).as_deref() == Ok("crash") {
        let root = std::env::var(CHILD_ROOT).unwrap();
        let s = open(Path::new(&root));
        let pid = std::process::id() as u64;
        std::thread::scope(|sc| {
            for t in 0..100u64 {
                let s = &s;
                sc.spawn(move || {
                    let tr = s.temp_roots_session();
                    for i in 0.. {
                        let seed = pid * 1_000_003 + t * 7919 + i;
                        let size = 4096 + (seed % 61) * 4096;
                        let mut nar = SyntheticNar::new(size, seed);
                        s.add_to_store_ca(
                            &format!("c{t}-{i}"),
                            ContentAddressMethod::NixArchive,
                            HashAlgo::Sha256,
                            &BTreeSet::new(),
                            &mut nar,
                            false,
                            &tr,
                            &NullLogger,
                        )
                        .unwrap();
                    }
                });
            }
        });
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    for round in 0..5u64 {
        let mut c = child(
            "crash_at_random_points_leaves_a_consistent_store",
            "crash",
            dir.path(),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
        let nanos = Instant::now().elapsed().as_nanos() as u64 ^ (round * 0x9e37_79b9);
        std::thread::sleep(Duration::from_millis(300 + nanos % 700));
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&c),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        c.wait().unwrap();
    }
    let s = open(dir.path());
    let valid = s.query_all_valid_paths().unwrap();
    assert!(
        valid.len() > 10,
        "children made progress ({} paths)",
        valid.len()
    );
    // Every valid path is complete and verifies.
    let v = s.verify_store(true, false, &NullLogger).unwrap();
    assert!(!v.errors, "{v:?}");
    assert!(v.invalidated.is_empty());
    // Leftovers (temp objects, lock files, stale temp-roots files) are unprotected now
    // and the next GC removes exactly them.
    let entries = |s: &LocalStore| -> BTreeSet<String> {
        std::fs::read_dir(s.real_store_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".links")
            .collect()
    };
    let before = entries(&s);
    let valid_names: BTreeSet<String> = valid.iter().map(|p| p.to_base_name()).collect();
    let junk: BTreeSet<String> = before.difference(&valid_names).cloned().collect();
    // Keep the valid paths with permanent roots (which, unlike temp roots, don't also
    // protect a leftover `<path>.lock`).
    for (i, p) in valid.iter().enumerate() {
        std::os::unix::fs::symlink(s.print(p), s.gcroots_dir().join(format!("r{i}"))).unwrap();
    }
    let r = s
        .collect_garbage(&GcOptions::default(), &NullLogger)
        .unwrap();
    let deleted: BTreeSet<String> = r
        .paths
        .iter()
        .map(|p| p.rsplit('/').next().unwrap().to_owned())
        .collect();
    let diff: Vec<_> = deleted.symmetric_difference(&junk).collect();
    assert!(diff.is_empty(), "deleted vs junk differ in {diff:?}");
    let after = entries(&s);
    let diff: Vec<_> = after.symmetric_difference(&valid_names).collect();
    assert!(diff.is_empty(), "after GC vs valid differ in {diff:?}");
    assert_eq!(
        std::fs::read_dir(s.temproots_dir()).unwrap().count(),
        0,
        "stale temp-roots files removed"
    );
}

#[test]
fn gc_of_20000_dead_paths() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let t = Instant::now();
    let made = nixnest_store::bench::make_dead_paths(&s, 20_000).unwrap();
    let setup = t.elapsed();
    // A few live ones that must survive.
    let keep: Vec<String> = made.iter().take(3).cloned().collect();
    for (i, k) in keep.iter().enumerate() {
        std::os::unix::fs::symlink(k, s.gcroots_dir().join(format!("r{i}"))).unwrap();
    }
    let t = Instant::now();
    let r = s
        .collect_garbage(&GcOptions::default(), &NullLogger)
        .unwrap();
    let gc = t.elapsed();
    eprintln!("setup {setup:?}, GC of {} paths took {gc:?}", r.paths.len());
    assert_eq!(r.paths.len(), 20_000 - 3);
    assert_eq!(s.query_all_valid_paths().unwrap().len(), 3);
    for k in &keep {
        assert!(Path::new(k).exists());
    }
}
