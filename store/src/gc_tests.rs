//! GC tests: one per root kind, limits, DeleteSpecific, the roots socket.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;

use crate::gc::{GcAction, GcOptions};
use crate::logger::{CollectingLogger, Logger, NullLogger, Verbosity};
use crate::testutil::*;

fn sp(s: &crate::LocalStore, p: &str) -> nixnest_core::StorePath {
    s.parse_path(p).unwrap()
}

fn exists(p: &str) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

fn gc(store: &crate::LocalStore) -> crate::GcResults {
    store
        .collect_garbage(&GcOptions::default(), &NullLogger)
        .unwrap()
}

#[test]
fn unreachable_paths_and_junk_are_deleted_referrers_first() {
    let (_d, s) = new_store();
    let b = fake_path(&s, "b", &[], None);
    let a = fake_path(&s, "a", &[&b], None);
    let junk = format!("{}/junk", s.store_dir_str());
    std::fs::write(&junk, b"zz").unwrap();
    let invalid = fake_store_path(&s, "leftover");
    make_on_disk(&invalid, 7);
    let log = CollectingLogger::default();
    let r = s.collect_garbage(&GcOptions::default(), &log).unwrap();
    let want: BTreeSet<String> = [&a, &b, &junk, &invalid]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(r.paths, want);
    assert_eq!(r.bytes_freed, 100 + 100 + 2 + 7);
    assert!(!exists(&a) && !exists(&b) && !exists(&junk) && !exists(&invalid));
    assert!(!s.is_valid_str(&a).unwrap() && !s.is_valid_str(&b).unwrap());
    let lines: Vec<String> = log.lines().into_iter().map(|(_, l)| l).collect();
    let pos = |p: &str| {
        lines
            .iter()
            .position(|l| l == &format!("deleting '{p}'"))
            .unwrap()
    };
    assert!(pos(&a) < pos(&b), "referrer must be deleted first");
    assert!(log.contains("finding garbage collector roots..."));
    assert!(log.contains("deleting unused links..."));
    // .links survives, reserved is gone (deleting GC).
    assert!(s.links_dir().is_dir());
    assert!(!s.reserved_path().exists());
    assert_eq!(r.summary(), "4 store paths deleted, 0.00 MiB freed");
}

#[test]
fn direct_root_keeps_its_closure() {
    let (_d, s) = new_store();
    let b = fake_path(&s, "b", &[], None);
    let a = fake_path(&s, "a", &[&b], None);
    let other = fake_path(&s, "other", &[], None);
    std::os::unix::fs::symlink(&a, s.gcroots_dir().join("myroot")).unwrap();
    let r = gc(&s);
    assert_eq!(r.paths, BTreeSet::from([other.clone()]));
    assert!(exists(&a) && exists(&b) && !exists(&other));
    // The root points at a file inside the path: still a root.
    std::fs::remove_file(s.gcroots_dir().join("myroot")).unwrap();
    std::os::unix::fs::symlink(format!("{b}/file"), s.gcroots_dir().join("inner")).unwrap();
    gc(&s);
    assert!(exists(&b) && !exists(&a));
}

#[test]
fn regular_file_named_like_a_store_path_is_a_root() {
    let (_d, s) = new_store();
    let a = fake_path(&s, "a", &[], None);
    let base = Path::new(&a).file_name().unwrap();
    std::fs::write(s.gcroots_dir().join(base), b"").unwrap();
    gc(&s);
    assert!(exists(&a));
}

#[test]
fn indirect_root_and_stale_auto_link() {
    let (d, s) = new_store();
    let a = fake_path(&s, "a", &[], None);
    let user_link = d.path().join("home/result");
    std::fs::create_dir_all(user_link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&a, &user_link).unwrap();
    let auto = s.add_indirect_root(&user_link).unwrap();
    assert_eq!(auto.parent().unwrap(), s.gcroots_dir().join("auto"));
    assert_eq!(std::fs::read_link(&auto).unwrap(), user_link);
    let roots = s.find_roots(false, &NullLogger).unwrap();
    assert!(roots[&sp(&s, &a)].contains(&user_link.to_string_lossy().into_owned()));
    gc(&s);
    assert!(exists(&a));
    // The user removes ./result: the auto link is stale and removed, the path collected.
    std::fs::remove_file(&user_link).unwrap();
    let log = CollectingLogger::default();
    s.collect_garbage(&GcOptions::default(), &log).unwrap();
    assert!(log.contains("removing stale link from"));
    assert!(std::fs::symlink_metadata(&auto).is_err());
    assert!(!exists(&a));
}

#[test]
fn perm_root_helper() {
    let (d, s) = new_store();
    let a = fake_path(&s, "a", &[], None);
    let tr = s.temp_roots_session();
    let link = d.path().join("res");
    s.add_perm_root(&sp(&s, &a), &link, &tr).unwrap();
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new(&a));
    drop(tr);
    gc(&s);
    assert!(exists(&a));
    // Refuses to clobber a regular file, and roots inside the store.
    let f = d.path().join("plain");
    std::fs::write(&f, b"x").unwrap();
    let tr = s.temp_roots_session();
    assert!(s.add_perm_root(&sp(&s, &a), &f, &tr).is_err());
    assert!(
        s.add_perm_root(
            &sp(&s, &a),
            Path::new(&format!("{}/x", s.store_dir_str())),
            &tr
        )
        .is_err()
    );
}

#[test]
fn profile_is_a_root() {
    let (_d, s) = new_store();
    let a = fake_path(&s, "a", &[], None);
    let prof = s.state_dir().join("profiles/per-user/root");
    std::fs::create_dir_all(&prof).unwrap();
    std::os::unix::fs::symlink(&a, prof.join("profile-1-link")).unwrap();
    gc(&s);
    assert!(exists(&a));
}

#[test]
fn temp_root_of_a_live_session() {
    let (_d, s) = new_store();
    let a = fake_path(&s, "a", &[], None);
    // Matched by hash part: also protects a.lock.
    let lock = format!("{a}.lock");
    std::fs::write(&lock, b"").unwrap();
    let tr = s.temp_roots_session();
    tr.add(&a).unwrap();
    let r = gc(&s);
    assert!(r.paths.is_empty(), "{:?}", r.paths);
    assert!(exists(&a) && exists(&lock));
    let roots = s.find_roots(false, &NullLogger).unwrap();
    assert!(roots[&sp(&s, &a)].contains(&format!("{{temp:{}}}", std::process::id())));
    drop(tr);
    gc(&s);
    assert!(!exists(&a) && !exists(&lock));
}

#[test]
fn extra_roots_from_the_caller() {
    let (_d, s) = new_store();
    let a = fake_path(&s, "a", &[], None);
    let building = fake_store_path(&s, "in-progress");
    make_on_disk(&building, 1);
    let opts = GcOptions {
        extra_roots: BTreeSet::from([sp(&s, &a), sp(&s, &building)]),
        ..GcOptions::default()
    };
    s.collect_garbage(&opts, &NullLogger).unwrap();
    assert!(exists(&a) && exists(&building));
}

#[test]
fn runtime_roots_open_file_and_cwd() {
    let (_d, s) = new_store();
    let a = fake_path(&s, "a", &[], None);
    let b = fake_path(&s, "b", &[], None);
    let c = fake_path(&s, "c", &[], None);
    let mut holder = std::process::Command::new("sleep")
        .arg("30")
        .stdin(std::fs::File::open(format!("{a}/file")).unwrap())
        .spawn()
        .unwrap();
    let mut in_dir = std::process::Command::new("sleep")
        .arg("30")
        .current_dir(&b)
        .spawn()
        .unwrap();
    let roots = s.find_roots(false, &NullLogger).unwrap();
    let censored = s.find_roots(true, &NullLogger).unwrap();
    let r = gc(&s);
    holder.kill().unwrap();
    in_dir.kill().unwrap();
    holder.wait().unwrap();
    in_dir.wait().unwrap();
    assert!(
        roots[&sp(&s, &a)]
            .iter()
            .any(|l| l.starts_with("/proc/") && l.contains("/fd/"))
    );
    assert!(roots[&sp(&s, &b)].iter().any(|l| l.ends_with("/cwd")));
    assert_eq!(
        censored[&sp(&s, &a)],
        BTreeSet::from(["{censored}".to_string()])
    );
    assert_eq!(r.paths, BTreeSet::from([c.clone()]));
    assert!(exists(&a) && exists(&b));
}

fn drv_setup(s: &crate::LocalStore) -> (String, String) {
    let out = fake_store_path(s, "out");
    let drv = fake_drv(s, "thing", &[("out", &out)]);
    make_on_disk(&out, 5);
    s.register_rows(&[crate::queries::PathRow {
        path: out.clone(),
        nar_hash: format!("sha256:{}", "00".repeat(32)),
        deriver: Some(drv.clone()),
        ..Default::default()
    }])
    .unwrap();
    (drv, out)
}

#[test]
fn keep_derivations() {
    for keep in [true, false] {
        let (_d, s) = new_store();
        let (drv, out) = drv_setup(&s);
        std::os::unix::fs::symlink(&out, s.gcroots_dir().join("r")).unwrap();
        let opts = GcOptions {
            keep_derivations: keep,
            ..GcOptions::default()
        };
        s.collect_garbage(&opts, &NullLogger).unwrap();
        assert!(exists(&out));
        assert_eq!(exists(&drv), keep, "keep-derivations = {keep}");
    }
}

#[test]
fn keep_outputs() {
    for keep in [true, false] {
        let (_d, s) = new_store();
        let (drv, out) = drv_setup(&s);
        std::os::unix::fs::symlink(&drv, s.gcroots_dir().join("r")).unwrap();
        let opts = GcOptions {
            keep_outputs: keep,
            ..GcOptions::default()
        };
        s.collect_garbage(&opts, &NullLogger).unwrap();
        assert!(exists(&drv));
        assert_eq!(exists(&out), keep, "keep-outputs = {keep}");
    }
}

#[test]
fn max_freed_is_respected() {
    let (_d, s) = new_store();
    for i in 0..10 {
        fake_path(&s, &format!("p{i}"), &[], None);
    }
    let opts = GcOptions {
        max_freed: 250,
        ..GcOptions::default()
    };
    let r = s.collect_garbage(&opts, &NullLogger).unwrap();
    assert_eq!(
        r.paths.len(),
        3,
        "stops at the first deletion exceeding the limit"
    );
    assert_eq!(r.bytes_freed, 300);
    let opts = GcOptions {
        max_freed: 0,
        ..GcOptions::default()
    };
    assert!(
        s.collect_garbage(&opts, &NullLogger)
            .unwrap()
            .paths
            .is_empty()
    );
}

#[test]
fn delete_specific() {
    let (_d, s) = new_store();
    let b = fake_path(&s, "b", &[], None);
    let a = fake_path(&s, "a", &[&b], None);
    let c = fake_path(&s, "c", &[], None);
    std::os::unix::fs::symlink(&c, s.gcroots_dir().join("r")).unwrap();
    let del = |paths: &[&str]| {
        s.collect_garbage(
            &GcOptions {
                action: GcAction::DeleteSpecific,
                paths_to_delete: paths.iter().map(|p| sp(&s, p)).collect(),
                ..GcOptions::default()
            },
            &NullLogger,
        )
    };
    let e = del(&[&c]).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "Cannot delete path '{c}' since it is still alive. To find out why, use: nix-store --query --roots and nix-store --query --referrers"
        )
    );
    // b is referenced by a, which is not being deleted.
    assert!(matches!(del(&[&b]), Err(crate::Error::StillAlive(_))));
    let r = del(&[&a, &b]).unwrap();
    assert_eq!(r.paths, BTreeSet::from([a.clone(), b.clone()]));
    assert!(exists(&c));
}

#[test]
fn return_live_and_dead() {
    let (_d, s) = new_store();
    let b = fake_path(&s, "b", &[], None);
    let a = fake_path(&s, "a", &[&b], None);
    let c = fake_path(&s, "c", &[], None);
    std::os::unix::fs::symlink(&a, s.gcroots_dir().join("r")).unwrap();
    let run = |action| {
        s.collect_garbage(
            &GcOptions {
                action,
                ..GcOptions::default()
            },
            &NullLogger,
        )
        .unwrap()
    };
    assert_eq!(
        run(GcAction::ReturnLive).paths,
        BTreeSet::from([a.clone(), b.clone()])
    );
    assert_eq!(run(GcAction::ReturnDead).paths, BTreeSet::from([c.clone()]));
    assert!(exists(&c), "Return* never deletes");
}

/// A logger that, on the first "deleting" line, adds a temp root through a session —
/// which must go through the GC's roots socket, because the GC holds gc.lock.
struct AddRootWhileDeleting<'a> {
    tr: &'a crate::TempRoots,
    target: String,
    done: Mutex<bool>,
}

impl Logger for AddRootWhileDeleting<'_> {
    fn log(&self, _level: Verbosity, msg: &str) {
        if msg.starts_with("deleting '") {
            let mut d = self.done.lock().unwrap();
            if !*d && !msg.contains(&self.target) {
                *d = true;
                self.tr.add(&self.target).unwrap();
            }
        }
    }
}

#[test]
fn root_added_through_the_socket_during_gc_is_honoured() {
    let (_d, s) = new_store();
    let mut all = Vec::new();
    for i in 0..20 {
        all.push(fake_path(&s, &format!("p{i}"), &[], None));
    }
    // Pick as target the entry readdir returns last, so it is visited after the hook.
    let names: Vec<String> = std::fs::read_dir(s.real_store_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".links")
        .collect();
    let target = format!("{}/{}", s.store_dir_str(), names.last().unwrap());
    let tr = s.temp_roots_session();
    let logger = AddRootWhileDeleting {
        tr: &tr,
        target: target.clone(),
        done: Mutex::new(false),
    };
    let r = s.collect_garbage(&GcOptions::default(), &logger).unwrap();
    assert!(*logger.done.lock().unwrap());
    assert!(!r.paths.contains(&target));
    assert!(exists(&target));
    assert_eq!(r.paths.len(), 19);
    // The root also reached the session's file.
    let contents = std::fs::read(tr.file_path()).unwrap();
    assert_eq!(contents, format!("{target}\0").into_bytes());
}

#[test]
fn links_with_one_link_are_removed() {
    let (_d, s) = new_store();
    let l = s.links_dir();
    std::fs::write(l.join("lonely"), b"abc").unwrap();
    std::fs::write(l.join("shared"), b"abc").unwrap();
    let a = fake_store_path(&s, "a");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::hard_link(l.join("shared"), format!("{a}/f")).unwrap();
    std::os::unix::fs::symlink(&a, s.gcroots_dir().join("r")).unwrap();
    s.register_rows(&[crate::queries::PathRow {
        path: a.clone(),
        nar_hash: "sha256:00".into(),
        ..Default::default()
    }])
    .unwrap();
    gc(&s);
    assert!(!l.join("lonely").exists());
    assert!(l.join("shared").exists());
}

/// A NAR reader that delivers the first half, then blocks until released.
struct Paused {
    data: Vec<u8>,
    pos: usize,
    half_sent: std::sync::mpsc::Sender<()>,
    release: std::sync::mpsc::Receiver<()>,
    paused: bool,
}

impl std::io::Read for Paused {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let half = self.data.len() / 2;
        if self.pos >= half && !self.paused {
            self.paused = true;
            self.half_sent.send(()).unwrap();
            self.release.recv().unwrap();
        }
        let end = if self.paused { self.data.len() } else { half };
        let n = buf.len().min(end - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn temp_root_protects_a_path_being_added() {
    let (_d, s) = new_store_with(|c| c.require_sigs = false);
    let nar = crate::ingest_tests::dir_nar("in-flight");
    let info = crate::ingest_tests::info_for(&s, "in-flight", &nar);
    let (half_tx, half_rx) = std::sync::mpsc::channel();
    let (rel_tx, rel_rx) = std::sync::mpsc::channel();
    std::thread::scope(|sc| {
        let s = &s;
        let info2 = info.clone();
        let adder = sc.spawn(move || {
            let tr = s.temp_roots_session();
            let mut r = Paused {
                data: nar,
                pos: 0,
                half_sent: half_tx,
                release: rel_rx,
                paused: false,
            };
            s.add_to_store_nar(&info2, &mut r, false, false, &tr, &NullLogger)
        });
        half_rx.recv().unwrap();
        // Mid-add: the temporary object exists in the store dir; a GC must not touch it.
        let before = crate::ingest_tests::store_entries(s);
        assert_eq!(before.len(), 2, "temp object + lock file: {before:?}");
        let r = gc(s);
        assert!(r.paths.is_empty(), "GC deleted {:?}", r.paths);
        rel_tx.send(()).unwrap();
        adder.join().unwrap().unwrap();
    });
    assert!(s.is_valid_path(&info.path).unwrap());
    assert!(!s.verify_store(true, false, &NullLogger).unwrap().errors);
}
