//! A daemon that is not root: no build users, the builder runs as the daemon's own uid
//! inside a user namespace (uid 1000 / gid 100 inside), on a store that uid owns.
//!
//! The outer test (root) prepares a directory owned by `nobody` and re-runs this test
//! binary as `nobody` (via `setpriv`), selecting the ignored inner test, which opens its
//! own store there, adds a busybox with nixnest's own code, writes a derivation and builds
//! it in the sandbox.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use nixnest_build::{BuildJob, BuildStatus, Builder};
use nixnest_core::nar;
use nixnest_core::{ContentAddressMethod, Derivation, DerivationOutput, HashAlgo};
use nixnest_store::{LocalStore, NullLogger, StoreConfig};

const DIR_VAR: &str = "NIXNEST_BUILD_UNPRIV_DIR";
const NOBODY: u32 = 65534;

#[test]
fn builds_without_root_in_a_user_namespace() {
    require_env!();
    if !nixnest_build::run::user_namespaces_enabled() {
        eprintln!("SKIPPED: user namespaces are disabled");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("nixnest-unpriv-")
        .tempdir_in("/tmp")
        .unwrap();
    let bb = dir.path().join("bb");
    nixnest_testkit::busybox::install(&bb);
    let status = Command::new("chown")
        .args(["-R", &format!("{NOBODY}:{NOBODY}")])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "inner_unprivileged_build",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_VAR, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(out.status.success(), "the unprivileged build failed");
    assert!(stdout.contains("1 passed"), "the inner test did not run");
}

/// Runs as `nobody`, started by the test above; does nothing otherwise.
#[test]
#[ignore = "run by builds_without_root_in_a_user_namespace as nobody"]
fn inner_unprivileged_build() {
    let Some(dir) = std::env::var_os(DIR_VAR).map(PathBuf::from) else {
        return;
    };
    assert_eq!(rustix::process::geteuid().as_raw(), NOBODY);
    let store = LocalStore::open(StoreConfig::under(&dir), &NullLogger).unwrap();
    let roots = store.temp_roots_session();
    let sd = store.store_dir().clone();

    // busybox into the store, by our own code.
    let mut nar_bytes = Vec::new();
    nar::dump_path(&dir.join("bb"), &mut nar_bytes).unwrap();
    let bb = store
        .add_to_store_ca(
            "bb",
            ContentAddressMethod::NixArchive,
            HashAlgo::Sha256,
            &BTreeSet::new(),
            &mut nar_bytes.as_slice(),
            false,
            &roots,
            &NullLogger,
        )
        .unwrap()
        .path;
    let bb_s = sd.print(&bb);

    // The derivation, written as the evaluator would.
    // The builder has the uid that owns the store: its inputs must still be read-only.
    let script = "{ id; cat /proc/self/uid_map; hostname; cat /etc/passwd; \
                  busybox nc -w 1 192.0.2.1 80 </dev/null 2>&1; ls $NIX_STORE | wc -l; \
                  chmod u+w $PATH 2>&1 || true; } > $out";
    let env: BTreeMap<String, String> = [
        ("name", "unpriv"),
        ("system", nixnest_build::settings::native_system()),
        ("builder", &format!("{bb_s}/bin/sh")),
        ("PATH", &format!("{bb_s}/bin")),
        ("out", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let mut drv = Derivation {
        name: "unpriv".into(),
        outputs: [("out".to_owned(), DerivationOutput::Deferred)].into(),
        input_drvs: BTreeMap::new(),
        input_srcs: [bb.clone()].into(),
        platform: nixnest_build::settings::native_system().into(),
        builder: format!("{bb_s}/bin/sh"),
        args: vec!["-c".into(), script.into()],
        env,
    };
    drv.fill_in_output_paths(&sd, |_| unreachable!("no input derivations"))
        .unwrap();
    let text = drv.to_aterm(&sd).unwrap();
    let drv_path = store
        .add_text(
            "unpriv.drv",
            text.as_bytes(),
            &drv.references(),
            &roots,
            &NullLogger,
        )
        .unwrap()
        .path;
    assert_eq!(drv_path, drv.drv_path(&sd).unwrap());

    let settings = common::settings();
    let inputs = store
        .compute_closure(&drv.input_srcs, false, false, false)
        .unwrap();
    let mut ev = common::Collect::default();
    let mut job = BuildJob::new(drv_path, &drv, inputs);
    job.temp_roots = Some(&roots);
    let out = Builder::new(&store, &settings)
        .build(&job, &mut ev)
        .unwrap();
    assert_eq!(
        out.status,
        BuildStatus::Built,
        "{:?} {:?}",
        out.error_msg,
        ev.lines
    );
    assert!(out.sandboxed);
    let info = &out.built_outputs["out"];
    let text = std::fs::read_to_string(store.real_store_dir().join(info.path.to_string())).unwrap();
    println!("{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "uid=1000(nixbld) gid=100(nixbld)");
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["1000", &NOBODY.to_string(), "1"]
    );
    assert_eq!(lines[2], "localhost");
    assert_eq!(lines[3], "root:x:0:0:Nix build user:/build:/noshell");
    assert_eq!(lines[4], "nixbld:x:1000:100:Nix build user:/build:/noshell");
    assert!(lines[6].contains("Network is unreachable"), "{text}");
    assert_eq!(lines[7], "2", "only busybox and the output in the store");
    assert!(lines[8].ends_with("Read-only file system"), "{text}");
    assert_eq!(ev.started.as_ref().map(|s| s.2), Some(true));
    // Everything belongs to the unprivileged user; nothing is left behind.
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(store.real_store_dir().join(info.path.to_string())).unwrap();
    assert_eq!(m.uid(), NOBODY);
    let left: Vec<_> = std::fs::read_dir(store.real_store_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".chroot"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    println!(
        "unprivileged sandbox setup: {:.1} ms",
        out.timings.sandbox_setup.as_secs_f64() * 1e3
    );
}
