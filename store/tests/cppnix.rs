//! End-to-end compatibility with the real CppNix 2.8 (`nix-store`, `nix-build` in local
//! mode) on the same throwaway store. Needs root and the host's `nix-store`; skipped with a
//! message otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nixnest_core::nar::NarWriter;
use nixnest_core::{ContentAddressMethod, Hash, HashAlgo, StorePath, ValidPathInfo};
use nixnest_store::logger::{CollectingLogger, NullLogger};
use nixnest_store::{GcOptions, LocalStore, StoreConfig};

struct Env {
    dir: tempfile::TempDir,
}

fn env() -> Option<Env> {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIP: needs root (CppNix local store as root)");
        return None;
    }
    if Command::new("nix-store").arg("--version").output().is_err() {
        eprintln!("SKIP: nix-store (CppNix 2.8) not installed");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("conf")).unwrap();
    std::fs::write(
        dir.path().join("conf/nix.conf"),
        "build-users-group =\nsandbox = false\nsubstituters =\nrequire-sigs = false\n",
    )
    .unwrap();
    Some(Env { dir })
}

impl Env {
    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn config(&self) -> StoreConfig {
        let mut c = StoreConfig::under(self.root());
        c.require_sigs = false;
        c
    }

    fn open(&self) -> LocalStore {
        LocalStore::open(self.config(), &NullLogger).unwrap()
    }

    fn cmd(&self, prog: &str) -> Command {
        let r = self.root();
        let mut c = Command::new(prog);
        c.env("NIX_STORE_DIR", r.join("nix/store"))
            .env("NIX_STATE_DIR", r.join("nix/var/nix"))
            .env("NIX_LOG_DIR", r.join("nix/var/log/nix"))
            .env("NIX_CONF_DIR", r.join("conf"))
            .env("NIX_REMOTE", "local")
            .env_remove("NIX_PATH")
            .current_dir(r);
        c
    }

    fn nix_store(&self, args: &[&str]) -> Output {
        let o = self.cmd("nix-store").args(args).output().unwrap();
        assert!(
            o.status.success(),
            "nix-store {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    fn q(&self, flag: &str, path: &str) -> String {
        String::from_utf8(self.nix_store(&["-q", flag, path]).stdout).unwrap()
    }

    fn q_set(&self, flag: &str, path: &str) -> BTreeSet<String> {
        self.q(flag, path).lines().map(str::to_owned).collect()
    }
}

fn dir_nar(tag: &str) -> Vec<u8> {
    let mut w = NarWriter::new(Vec::new()).unwrap();
    w.directory().unwrap();
    w.entry(b"bin").unwrap();
    w.regular(true, 3, &b"#!x"[..]).unwrap();
    w.entry(b"data").unwrap();
    w.regular(false, tag.len() as u64, tag.as_bytes()).unwrap();
    w.entry(b"link").unwrap();
    w.symlink(b"data").unwrap();
    w.end().unwrap();
    w.finish().unwrap()
}

/// Compares every `nix-store -q` answer for `p` with ours.
fn compare(env: &Env, s: &LocalStore, p: &StorePath) {
    let printed = s.print(p);
    let info = s.path_info(p).unwrap();
    let set =
        |v: BTreeSet<StorePath>| -> BTreeSet<String> { v.iter().map(|x| s.print(x)).collect() };
    assert_eq!(
        env.q_set("--references", &printed),
        set(info.references.clone()),
        "{printed}"
    );
    assert_eq!(
        env.q_set("--referrers", &printed),
        set(s.query_referrers(p).unwrap()),
        "{printed}"
    );
    let closure = s
        .compute_closure(&BTreeSet::from([p.clone()]), false, false, false)
        .unwrap();
    assert_eq!(
        env.q_set("--requisites", &printed),
        set(closure),
        "{printed}"
    );
    let deriver = info
        .deriver
        .as_ref()
        .map(|d| s.print(d))
        .unwrap_or_else(|| "unknown-deriver".into());
    assert_eq!(env.q("--deriver", &printed).trim(), deriver, "{printed}");
    assert_eq!(
        env.q("--hash", &printed).trim(),
        info.nar_hash.to_typed_nix32(),
        "{printed}"
    );
    assert_eq!(
        env.q("--size", &printed).trim(),
        info.nar_size.to_string(),
        "{printed}"
    );
}

#[test]
fn store_filled_by_nixnest_satisfies_cppnix() {
    let Some(env) = env() else { return };
    let s = env.open();
    let tr = s.temp_roots_session();
    let mut paths = Vec::new();
    let hello = s
        .add_to_store_ca(
            "hello.txt",
            ContentAddressMethod::NixArchive,
            HashAlgo::Sha256,
            &BTreeSet::new(),
            &mut &dir_nar("hello")[..],
            false,
            &tr,
            &NullLogger,
        )
        .unwrap();
    paths.push(hello.path.clone());
    let flat = s
        .add_to_store_ca(
            "flat",
            ContentAddressMethod::Flat,
            HashAlgo::Sha1,
            &BTreeSet::new(),
            &mut &b"flat file\n"[..],
            false,
            &tr,
            &NullLogger,
        )
        .unwrap();
    paths.push(flat.path.clone());
    let text = s
        .add_text(
            "text",
            format!("refers to {}", s.print(&hello.path)).as_bytes(),
            &BTreeSet::from([hello.path.clone()]),
            &tr,
            &NullLogger,
        )
        .unwrap();
    paths.push(text.path.clone());
    // An input-addressed path with a deriver, references (one to itself) and a signature.
    let nar = dir_nar("ia");
    let h = Hash::sha256(&nar);
    let ia = s
        .store_dir()
        .make_store_path("output:out", &h, "ia")
        .unwrap();
    let mut info = ValidPathInfo::new(ia.clone(), h);
    info.nar_size = nar.len() as u64;
    info.references = BTreeSet::from([text.path.clone(), ia.clone()]);
    info.deriver = Some(
        s.parse_path(&format!("{}/{}-ia.drv", s.store_dir_str(), "1".repeat(32)))
            .unwrap(),
    );
    info.ultimate = true;
    let sk = nixnest_core::SecretKey::from_seed("test-key", &[1u8; 32]).unwrap();
    info.sign(s.store_dir(), &sk).unwrap();
    s.add_to_store_nar(&info, &mut &nar[..], false, false, &tr, &NullLogger)
        .unwrap();
    paths.push(ia.clone());
    let drv_path = s
        .parse_path(&format!("{}/{}-x.drv", s.store_dir_str(), "2".repeat(32)))
        .unwrap();
    s.add_build_log(&drv_path, b"a log line\n").unwrap();

    let out = env.nix_store(&["--verify", "--check-contents"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("modified") && !err.contains("error"), "{err}");
    for p in &paths {
        compare(&env, &s, p);
    }
    // CppNix reads our compressed log.
    let log = env.nix_store(&["-l", &s.print(&drv_path)]);
    assert_eq!(log.stdout, b"a log line\n");
    // CppNix dumps the same NAR we stored.
    let dump = env.nix_store(&["--dump", &s.print(&ia)]);
    assert_eq!(dump.stdout, nar);
    // Its GC sees our session's temp roots (file temproots/<pid>-<n>) and keeps the paths.
    let roots = String::from_utf8(env.nix_store(&["--gc", "--print-roots"]).stdout).unwrap();
    assert!(
        roots.contains(&format!("{{temp:{}}}", std::process::id())),
        "{roots}"
    );
    env.nix_store(&["--gc"]);
    for p in &paths {
        assert!(s.real_store_dir().join(p.to_base_name()).exists());
    }
    // Once the session is gone, the real GC collects them.
    drop(tr);
    env.nix_store(&["--gc"]);
    for p in &paths {
        assert!(!s.real_store_dir().join(p.to_base_name()).exists());
        assert!(!s.is_valid_path(p).unwrap());
    }
}

fn write_bb_derivation(env: &Env, script: &str) -> PathBuf {
    let bb = env.root().join("bb/bin");
    std::fs::create_dir_all(&bb).unwrap();
    std::fs::copy("/bin/busybox", bb.join("busybox")).unwrap();
    let _ = std::os::unix::fs::symlink("busybox", bb.join("sh"));
    let nix = env.root().join("d.nix");
    std::fs::write(
        &nix,
        format!(
            r#"derivation {{ name = "hello-bb"; system = builtins.currentSystem; builder = "${{./bb}}/bin/sh"; args = ["-c" "{script}"]; }}"#
        ),
    )
    .unwrap();
    nix
}

#[test]
fn store_filled_by_cppnix_is_read_identically() {
    let Some(env) = env() else { return };
    if !Path::new("/bin/busybox").exists() {
        eprintln!("SKIP: /bin/busybox missing");
        return;
    }
    std::fs::write(env.root().join("h.txt"), b"hello world\n").unwrap();
    std::fs::create_dir_all(env.root().join("tree/sub")).unwrap();
    std::fs::write(env.root().join("tree/sub/f"), b"x").unwrap();
    let added = String::from_utf8(env.nix_store(&["--add", "h.txt"]).stdout).unwrap();
    let fixed =
        String::from_utf8(env.nix_store(&["--add-fixed", "sha256", "h.txt"]).stdout).unwrap();
    let rfixed = String::from_utf8(
        env.nix_store(&["--add-fixed", "--recursive", "sha1", "tree"])
            .stdout,
    )
    .unwrap();
    let nix = write_bb_derivation(&env, "echo building; echo hi > $out");
    let result = env.root().join("result");
    let o = env
        .cmd("nix-build")
        .arg(&nix)
        .arg("-o")
        .arg(&result)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out_path = String::from_utf8(o.stdout).unwrap();

    let s = env.open();
    let mut paths: Vec<StorePath> = [&added, &fixed, &rfixed, &out_path]
        .iter()
        .map(|p| s.parse_path(p.trim()).unwrap())
        .collect();
    let out = paths[3].clone();
    let info = s.path_info(&out).unwrap();
    let drv = info.deriver.clone().unwrap();
    paths.push(drv.clone());
    for p in &paths {
        compare(&env, &s, p);
    }
    // Our view of the derivation matches CppNix's rows.
    assert_eq!(s.query_derivation_outputs(&drv).unwrap()["out"], out);
    assert_eq!(
        s.query_valid_derivers(&out).unwrap(),
        BTreeSet::from([drv.clone()])
    );
    assert!(info.ultimate);
    // Content addresses CppNix wrote parse and verify as content-addressed.
    let a = s.path_info(&paths[0]).unwrap();
    assert!(
        a.ca.as_ref()
            .unwrap()
            .to_string()
            .starts_with("fixed:r:sha256:")
    );
    assert!(a.is_content_addressed(s.store_dir()));
    // The build log it wrote reads back.
    let log = s.read_build_log(&out, 1 << 20).unwrap().unwrap();
    assert_eq!(log, b"building\n");
    // Its auto root (./result) is a root for us.
    let roots = s.find_roots(false, &NullLogger).unwrap();
    assert!(roots[&out].contains(&result.to_string_lossy().into_owned()));
    // NAR of every path: ours equals CppNix's dump.
    for p in &paths {
        let mut ours = Vec::new();
        s.nar_from_path(p, &mut ours).unwrap();
        assert_eq!(ours, env.nix_store(&["--dump", &s.print(p)]).stdout);
    }
    // Verify (contents) finds nothing wrong.
    assert!(!s.verify_store(true, false, &NullLogger).unwrap().errors);
    // Our GC keeps the build output (root) and its deriver (keep-derivations) and
    // deletes the unrooted adds.
    let r = s
        .collect_garbage(&GcOptions::default(), &NullLogger)
        .unwrap();
    assert!(s.is_valid_path(&out).unwrap() && s.is_valid_path(&drv).unwrap());
    assert!(r.paths.contains(&s.print(&paths[0])));
    drop(s);
    // CppNix agrees with the state we left.
    env.nix_store(&["--verify", "--check-contents"]);
}

#[test]
fn export_import_round_trip_with_cppnix() {
    let Some(env) = env() else { return };
    std::fs::write(env.root().join("a.txt"), b"aaa\n").unwrap();
    let a = String::from_utf8(env.nix_store(&["--add", "a.txt"]).stdout).unwrap();
    let a = a.trim().to_owned();
    let export = env.nix_store(&["--export", &a]).stdout;
    // Our export of the same path is byte-identical.
    let s = env.open();
    let ap = s.parse_path(&a).unwrap();
    let mut ours = Vec::new();
    s.export_paths(std::slice::from_ref(&ap), &mut ours)
        .unwrap();
    assert_eq!(ours, export);
    // Delete it, import it with nixnest, and CppNix sees it valid again.
    s.collect_garbage(
        &GcOptions {
            action: nixnest_store::GcAction::DeleteSpecific,
            paths_to_delete: BTreeSet::from([ap.clone()]),
            ..GcOptions::default()
        },
        &NullLogger,
    )
    .unwrap();
    let tr = s.temp_roots_session();
    let got = s
        .import_paths(&mut &export[..], true, &tr, &NullLogger)
        .unwrap();
    assert_eq!(got, vec![ap.clone()]);
    compare(&env, &s, &ap);
    // And CppNix imports our export of a nixnest-added path.
    let info = s
        .add_text("t", b"text", &BTreeSet::new(), &tr, &NullLogger)
        .unwrap();
    let mut ex = Vec::new();
    s.export_paths(std::slice::from_ref(&info.path), &mut ex)
        .unwrap();
    drop(tr);
    s.collect_garbage(&GcOptions::default(), &NullLogger)
        .unwrap();
    assert!(!s.is_valid_path(&info.path).unwrap());
    let mut child = env
        .cmd("nix-store")
        .arg("--import")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&ex).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert!(s.is_valid_path(&info.path).unwrap());
}

#[test]
fn concurrent_adds_with_cppnix() {
    let Some(env) = env() else { return };
    let n = 150;
    let files = env.root().join("files");
    std::fs::create_dir_all(&files).unwrap();
    for i in 0..n {
        std::fs::write(files.join(format!("f{i}")), format!("cppnix file {i}\n")).unwrap();
    }
    let s = env.open();
    // CppNix: one process per add, like a busy machine; run as a background shell loop.
    let mut child = env
        .cmd("sh")
        .arg("-c")
        .arg(format!(
            "for i in $(seq 0 {}); do nix-store --add files/f$i || exit 1; done",
            n - 1
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ours: Vec<StorePath> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..3)
            .map(|t| {
                let s = &s;
                sc.spawn(move || {
                    let tr = s.temp_roots_session();
                    (0..n / 3 * 2)
                        .map(|i| {
                            s.add_text(
                                &format!("ours-{t}-{i}"),
                                format!("nixnest {t} {i}").as_bytes(),
                                &BTreeSet::new(),
                                &tr,
                                &NullLogger,
                            )
                            .unwrap()
                            .path
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(child.wait().unwrap().success(), "CppNix failed: {err}");
    // CppNix may warn that the db was busy (its own deferred transactions retry when
    // another writer committed first); anything else would be a surfaced error.
    for l in err.lines() {
        assert!(
            l.starts_with("warning: error: SQLite database") && l.ends_with("is busy"),
            "{err}"
        );
    }
    let theirs: Vec<StorePath> = out.lines().map(|l| s.parse_path(l).unwrap()).collect();
    assert_eq!(theirs.len(), n);
    for p in ours.iter().chain(&theirs) {
        assert!(s.is_valid_path(p).unwrap(), "{}", s.print(p));
    }
    assert!(
        !s.verify_store(true, false, &CollectingLogger::default())
            .unwrap()
            .errors
    );
    let o = env.nix_store(&["--verify", "--check-contents"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).is_empty()
            || !String::from_utf8_lossy(&o.stderr).contains("error")
    );
    assert_eq!(
        env.q("--hash", &s.print(&ours[0])).trim(),
        s.path_info(&ours[0]).unwrap().nar_hash.to_typed_nix32()
    );
}

/// Delivers the first half of a NAR, then waits for a signal.
struct Paused {
    data: Vec<u8>,
    pos: usize,
    half_sent: std::sync::mpsc::Sender<()>,
    release: std::sync::mpsc::Receiver<()>,
    paused: bool,
}

impl Read for Paused {
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
fn cppnix_gc_during_an_add_spares_it() {
    let Some(env) = env() else { return };
    let s = env.open();
    let nar = dir_nar("in-flight");
    let h = Hash::sha256(&nar);
    let p = s
        .store_dir()
        .make_store_path("output:out", &h, "in-flight")
        .unwrap();
    let mut info = ValidPathInfo::new(p.clone(), h);
    info.nar_size = nar.len() as u64;
    let (half_tx, half_rx) = std::sync::mpsc::channel();
    let (rel_tx, rel_rx) = std::sync::mpsc::channel();
    std::thread::scope(|sc| {
        let s = &s;
        let adder = sc.spawn(move || {
            let tr = s.temp_roots_session();
            let mut r = Paused {
                data: nar,
                pos: 0,
                half_sent: half_tx,
                release: rel_rx,
                paused: false,
            };
            s.add_to_store_nar(&info, &mut r, false, false, &tr, &NullLogger)
        });
        half_rx.recv().unwrap();
        let o = env.nix_store(&["--gc"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !err.contains("deleting '"),
            "CppNix deleted something: {err}"
        );
        rel_tx.send(()).unwrap();
        adder.join().unwrap().unwrap();
    });
    assert!(s.is_valid_path(&p).unwrap());
    env.nix_store(&["--verify", "--check-contents"]);
}

/// On our GC's first "deleting" message (so while it holds gc.lock), runs a CppNix
/// `nix-store --add`, which must register its temp root through our roots socket.
struct AddDuringGc<'a> {
    env: &'a Env,
    out: std::sync::Mutex<Option<Output>>,
}

impl nixnest_store::Logger for AddDuringGc<'_> {
    fn log(&self, _level: nixnest_store::Verbosity, msg: &str) {
        let mut out = self.out.lock().unwrap();
        if out.is_none() && msg.starts_with("deleting '") {
            *out = Some(
                self.env
                    .cmd("timeout")
                    .args(["60", "nix-store", "--add", "late.txt"])
                    .output()
                    .unwrap(),
            );
        }
    }
}

#[test]
fn cppnix_adds_temp_root_through_our_gc_socket() {
    let Some(env) = env() else { return };
    let s = env.open();
    std::fs::write(env.root().join("junk.txt"), b"junk").unwrap();
    std::fs::write(env.root().join("late.txt"), b"late").unwrap();
    env.nix_store(&["--add", "junk.txt"]);
    let logger = AddDuringGc {
        env: &env,
        out: std::sync::Mutex::new(None),
    };
    let r = s.collect_garbage(&GcOptions::default(), &logger).unwrap();
    let o = logger
        .out
        .lock()
        .unwrap()
        .take()
        .expect("GC deleted something");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let late = s
        .parse_path(String::from_utf8(o.stdout).unwrap().trim())
        .unwrap();
    assert!(!r.paths.contains(&s.print(&late)));
    assert!(s.is_valid_path(&late).unwrap());
    assert!(s.real_store_dir().join(late.to_base_name()).exists());
}
