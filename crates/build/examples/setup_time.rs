//! Measures the cost of a sandboxed build around a trivial builder (`touch $out`):
//! preparing (build dir, chroot, pty), the helper's setup (namespaces, mounts,
//! `pivot_root`, up to `execve`), the run, and registration + cleanup.
//!
//! ```text
//! cargo build -p nixnest-build --examples --bins
//! target/debug/examples/setup_time [N]          # as root or as any user
//! ```
//!
//! It makes a throwaway store under `/tmp`, adds a static busybox to it with nixnest's own
//! code, and builds N distinct derivations one after another without build users (as root:
//! uid 1000 in a user namespace mapped to root; otherwise mapped to the caller).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a measuring tool: failing loudly is its error handling

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use nixnest_build::{BuildJob, BuildSettings, BuildStatus, Builder, HelperCommand, NoEvents};
use nixnest_core::nar;
use nixnest_core::{ContentAddressMethod, Derivation, DerivationOutput, HashAlgo};
use nixnest_store::{LocalStore, NullLogger, StoreConfig};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let helper = std::env::var_os("NIXNEST_BUILD_HELPER")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("current exe");
            exe.parent()
                .and_then(|p| p.parent())
                .expect("target dir")
                .join("nixnest-build-helper")
        });
    assert!(
        helper.exists(),
        "{} missing: cargo build -p nixnest-build --bins",
        helper.display()
    );
    let dir = std::env::temp_dir().join(format!("nixnest-setup-time-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("bb/bin")).expect("mkdir");
    std::fs::copy("/bin/busybox", dir.join("bb/bin/busybox")).expect("copy /bin/busybox");
    std::os::unix::fs::symlink("busybox", dir.join("bb/bin/sh")).expect("symlink");
    std::os::unix::fs::symlink("busybox", dir.join("bb/bin/touch")).expect("symlink");

    let store = LocalStore::open(StoreConfig::under(&dir), &NullLogger).expect("store");
    let roots = store.temp_roots_session();
    let sd = store.store_dir().clone();
    let mut nar_bytes = Vec::new();
    nar::dump_path(&dir.join("bb"), &mut nar_bytes).expect("dump");
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
        .expect("adding busybox")
        .path;
    let bb_s = sd.print(&bb);
    let mut settings = BuildSettings::new(HelperCommand::new(&helper));
    settings.sandbox_fallback = false;

    let mut rows: Vec<[Duration; 5]> = Vec::new();
    for i in 0..n {
        let name = format!("t{i}");
        let env: BTreeMap<String, String> = [
            ("name", name.as_str()),
            ("system", settings.system.as_str()),
            ("builder", &format!("{bb_s}/bin/sh")),
            ("PATH", &format!("{bb_s}/bin")),
            ("out", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let mut drv = Derivation {
            name: name.clone(),
            outputs: [("out".to_owned(), DerivationOutput::Deferred)].into(),
            input_drvs: BTreeMap::new(),
            input_srcs: [bb.clone()].into(),
            platform: settings.system.clone(),
            builder: format!("{bb_s}/bin/sh"),
            args: vec!["-c".into(), "touch $out".into()],
            env,
        };
        drv.fill_in_output_paths(&sd, |_| unreachable!())
            .expect("output paths");
        let text = drv.to_aterm(&sd).expect("aterm");
        let drv_path = store
            .add_text(
                &format!("{name}.drv"),
                text.as_bytes(),
                &drv.references(),
                &roots,
                &NullLogger,
            )
            .expect("drv")
            .path;
        let mut job = BuildJob::new(drv_path, &drv, [bb.clone()].into());
        job.temp_roots = Some(&roots);
        let t0 = std::time::Instant::now();
        let out = Builder::new(&store, &settings)
            .build(&job, &mut NoEvents)
            .expect("build");
        let total = t0.elapsed();
        assert_eq!(out.status, BuildStatus::Built, "{:?}", out.error_msg);
        let t = out.timings;
        rows.push([t.prepare, t.sandbox_setup, t.run, t.finish, total]);
    }
    let _ = std::process::Command::new("chmod")
        .args(["-R", "u+w"])
        .arg(&dir)
        .status();
    let _ = std::fs::remove_dir_all(&dir);

    println!("{n} sandboxed builds of `touch $out` (ms; median / min / max)");
    for (i, what) in [
        "prepare (build dir, chroot, pty)",
        "helper setup (namespaces, mounts, exec)",
        "builder run",
        "registration + cleanup",
        "total",
    ]
    .iter()
    .enumerate()
    {
        let mut v: Vec<f64> = rows.iter().map(|r| r[i].as_secs_f64() * 1e3).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        println!(
            "  {what:42} {:7.2} {:7.2} {:7.2}",
            v[v.len() / 2],
            v[0],
            v[v.len() - 1]
        );
    }
}
