//! Recursive Nix's `addDependency`: while a build runs, another thread asks for store
//! paths to appear in its sandbox; the builder, polling, sees them, and they become
//! references of the output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Collect, Fx};
use nixnest_build::BuildStatus;
use nixnest_testkit::{Derivation as Expr, RunExt};

#[test]
fn paths_made_visible_while_the_build_runs() {
    require_env!();
    let fx = Fx::new(1);
    // Two paths already in the store but outside the build's closure.
    let dir = fx.ts.write("extra/dir/data", "from a directory\n");
    let dir = dir.parent().unwrap();
    let dir_path = fx.ts.nix("nix-store").arg("--add").arg(dir).run();
    let file = fx.ts.write("extra/file.txt", "from a file\n");
    let file_path = fx.ts.nix("nix-store").arg("--add").arg(&file).run();

    let script = r#"
        test -e $dir && echo "dir visible too early" || echo "dir invisible"
        test -e $file && echo "file visible too early" || echo "file invisible"
        i=0
        while [ ! -e $dir/data ] || [ ! -e $file ]; do
            sleep 0.05; i=$((i+1)); [ $i -gt 400 ] && { echo "gave up waiting"; exit 1; }
        done
        { cat $dir/data; cat $file; echo $dir; echo $file; } > $out
    "#;
    let expr = Expr::new("recursive", script)
        .env("dir", &dir_path)
        .env("file", &file_path)
        .to_nix();
    let (drv_path, drv) = fx.instantiate("recursive.nix", &expr);
    assert!(
        !fx.inputs(&drv)
            .iter()
            .any(|p| fx.print(p) == dir_path || fx.print(p) == file_path)
    );

    let results: Arc<Mutex<Vec<String>>> = Arc::default();
    let threads: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>> = Arc::default();
    let handles: Arc<Mutex<Vec<nixnest_build::SandboxHandle>>> = Arc::default();
    let mut ev = Collect::default();
    {
        let (results, threads, handles) = (results.clone(), threads.clone(), handles.clone());
        let paths = [
            fx.store.parse_path(&dir_path).unwrap(),
            fx.store.parse_path(&file_path).unwrap(),
        ];
        let input = fx.inputs(&drv).into_iter().next().unwrap();
        ev.on_started = Some(Box::new(move |s| {
            let handle = s.handle.clone();
            handles.lock().unwrap().push(handle.clone());
            let results = results.clone();
            let paths = paths.clone();
            let input = input.clone();
            threads.lock().unwrap().push(std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                for p in paths.iter().chain([&input]) {
                    let r = handle.make_visible(p);
                    results.lock().unwrap().push(format!("{p}: {r:?}"));
                }
                // Asking again is a no-op.
                let r = handle.make_visible(&paths[0]);
                results.lock().unwrap().push(format!("again: {r:?}"));
            }));
        }));
    }
    let out = fx.build_with(&drv_path, &drv, &common::settings(), &mut ev);
    for t in threads.lock().unwrap().drain(..) {
        t.join().unwrap();
    }
    assert_eq!(
        out.status,
        BuildStatus::Built,
        "{:?} {:?}",
        out.error_msg,
        ev.lines
    );
    assert_eq!(ev.lines, ["dir invisible", "file invisible"]);
    let r = results.lock().unwrap().clone();
    assert!(r.iter().all(|l| l.ends_with("Ok(())")), "{r:?}");
    assert_eq!(
        fx.read_output(&out, "out"),
        format!("from a directory\nfrom a file\n{dir_path}\n{file_path}\n")
    );
    // The added paths were reference candidates.
    let refs: Vec<String> = out.built_outputs["out"]
        .references
        .iter()
        .map(|p| fx.print(p))
        .collect();
    assert!(
        refs.contains(&dir_path) && refs.contains(&file_path),
        "{refs:?}"
    );
    // After the build, the handle refuses.
    let h = handles.lock().unwrap()[0].clone();
    let other = fx.ts.write("extra/late.txt", "late\n");
    let late = fx.ts.nix("nix-store").arg("--add").arg(&other).run();
    assert!(
        h.make_visible(&fx.store.parse_path(&late).unwrap())
            .is_err()
    );
}

/// Creates the per-build socket the way a daemon serving recursive Nix would.
struct SocketMaker {
    inner: Collect,
    listener: Option<std::os::unix::net::UnixListener>,
}

impl nixnest_build::BuildEvents for SocketMaker {
    fn prepare(&mut self, b: &nixnest_build::PreparedBuild<'_>) -> nixnest_build::Result<()> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::PermissionsExt;
        // Bound relative to the build dir's descriptor: short, and not through any path
        // the builder could have changed.
        let p = format!("/proc/self/fd/{}/.nix-socket", b.dir_fd.as_raw_fd());
        let l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        if let Some((uid, gid)) = b.owner {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
        }
        assert_eq!(b.in_sandbox, "/build");
        assert!(b.host_dir.join(".nix-socket").exists());
        self.listener = Some(l);
        Ok(())
    }
    fn started(&mut self, s: &nixnest_build::BuildStarted) {
        self.inner.started(s)
    }
    fn log_line(&mut self, line: &[u8]) {
        self.inner.log_line(line)
    }
}

#[test]
fn recursive_nix_socket_and_nix_remote() {
    require_env!();
    let fx = Fx::new(1);
    let (drv_path, drv) = fx.instantiate(
        "rsock.nix",
        &Expr::new(
            "rsock",
            "{ echo $NIX_REMOTE; stat -c '%F %a %U %G' /build/.nix-socket; } > $out",
        )
        .to_nix(),
    );
    let lease = fx.lease();
    let mut job = nixnest_build::BuildJob::new(drv_path, &drv, fx.inputs(&drv));
    job.build_user = Some(&lease);
    job.recursive_nix = true;
    let mut ev = SocketMaker {
        inner: Collect::default(),
        listener: None,
    };
    let settings = common::settings();
    let out = nixnest_build::Builder::new(&fx.store, &settings)
        .build(&job, &mut ev)
        .unwrap();
    assert_eq!(out.status, BuildStatus::Built, "{:?}", out.error_msg);
    assert_eq!(
        fx.read_output(&out, "out"),
        "unix:///build/.nix-socket\nsocket 600 nixbld nixbld\n"
    );
}
