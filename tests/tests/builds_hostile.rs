//! Bad input to nixnest-daemon's builds: derivations that are invalid or cannot be built
//! here, missing inputs, builders that leave processes behind, write symlinks where an
//! output should be, or flood their log. Each must end in a clear error or a clean kill:
//! nothing half-registered, no processes or build directories left. Where CppNix answers
//! the same case, the client's output is compared with the real `nix-daemon` 2.8's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod builds_support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;

use builds_support::*;
use nixnest_core::{BasicDerivation, DerivationOutput, StoreDir, StorePath};
use nixnest_protocol::client::UnixDaemonClient;
use nixnest_protocol::types::{BuildMode, BuildStatus, ClientSettings};
use nixnest_testkit::{BuildUsers, Client, Daemon, Derivation, RunExt, TestStore};

struct Fx {
    ours: TestStore,
    daemon: Daemon,
    theirs: TestStore,
    nix_daemon: Daemon,
}

impl Fx {
    fn new() -> Fx {
        let conf = |b: nixnest_testkit::TestStoreBuilder| {
            b.sandbox(true)
                .conf("max-build-log-size = 1000000")
                .conf("log-lines = 10")
        };
        let ours = conf(TestStore::builder().build_users(BuildUsers::private(2))).build();
        let theirs = conf(TestStore::builder().build_users(BuildUsers::nixbld())).build();
        ours.busybox();
        theirs.busybox();
        let daemon = nixnest(&ours);
        let nix_daemon = theirs.nix_daemon(Client::Host).start();
        Fx {
            ours,
            daemon,
            theirs,
            nix_daemon,
        }
    }

    fn build(&self, client: Client, file: &str, expr: &str) -> Output {
        let path = self.ours.write_expr(file, expr);
        nix_build(&self.ours, client, &self.daemon, &path, &[])
    }

    fn build_theirs(&self, client: Client, file: &str, expr: &str) -> Output {
        let path = self.theirs.write_expr(file, expr);
        nix_build(&self.theirs, client, &self.nix_daemon, &path, &[])
    }

    /// The error line(s) the client printed, normalised.
    fn error(&self, store: &TestStore, out: &Output) -> String {
        let text = stderr(out);
        let at = text
            .rfind("error: ")
            .unwrap_or_else(|| panic!("no error in {text}"));
        normalise(store, text[at..].trim_end())
    }

    /// Fails through both daemons with the same final error.
    fn same_error(&self, client: Client, file: &str, expr: &str) -> String {
        let ours = self.build(client, file, expr);
        let theirs = self.build_theirs(client, file, expr);
        assert!(!ours.status.success(), "{client} {file}: built");
        assert!(
            !theirs.status.success(),
            "{client} {file}: nix-daemon built it"
        );
        // nixnest's chroot has CppNix ≥ 2.24's layout (`<drv>.chroot/root/…`, a fix for
        // CVE-2024-38531); 2.8 names `<drv>.chroot/…` in messages about chroot paths.
        let a = self
            .error(&self.ours, &ours)
            .replace(".drv.chroot/root/", ".drv.chroot/");
        let b = self.error(&self.theirs, &theirs);
        assert_eq!(a, b, "{client} {file}");
        a
    }

    /// The store path of output `out` of the derivation in `file`.
    fn out_path(&self, client: Client, file: &str) -> String {
        let drv = self
            .ours
            .client(client)
            .daemon(&self.daemon)
            .command("nix-instantiate")
            .arg(self.ours.path(file))
            .run();
        self.ours
            .client(client)
            .daemon(&self.daemon)
            .command("nix-store")
            .args(["-q", "--outputs", &drv])
            .run()
    }

    /// The path is neither valid nor on disk.
    fn assert_absent(&self, client: Client, path: &str) {
        let valid = self
            .ours
            .client(client)
            .daemon(&self.daemon)
            .command("nix-store")
            .args(["--check-validity", path])
            .run_unchecked();
        assert!(!valid.status.success(), "{path} is valid");
        assert!(
            std::fs::symlink_metadata(path).is_err(),
            "{path} exists on disk"
        );
    }

    fn assert_clean(&self, marker: &str) {
        let left = processes_with(marker);
        assert!(left.is_empty(), "processes left: {left:?}");
        assert!(
            leftovers(&self.ours).is_empty(),
            "{:?}",
            leftovers(&self.ours)
        );
    }
}

#[test]
fn hostile_builds_end_cleanly() {
    require_env!();
    let fx = Fx::new();
    for client in clients() {
        let tag = client.name();
        let marker = format!("nixnest-hostile-marker-{tag}");

        // Invalid .drv files are refused when they are added: nothing to build.
        let nix = fx.ours.client(client).daemon(&fx.daemon);
        let garbage = fx
            .ours
            .write(format!("garbage-{tag}.drv"), "not a derivation\n");
        let out = nix
            .command("nix-store")
            .arg("--add")
            .arg(&garbage)
            .run_unchecked();
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("error parsing derivation at byte 0: expected 'Derive('"),
            "{}",
            stderr(&out)
        );
        let drv = nix
            .command("nix-instantiate")
            .arg(fx.ours.write_expr(
                &format!("ok-{tag}.nix"),
                &Derivation::new(&format!("ok-{tag}"), "echo > $out").to_nix(),
            ))
            .run();
        let text = std::fs::read_to_string(&drv).unwrap();
        let real_out = fx.out_path(client, &format!("ok-{tag}.nix"));
        let base = real_out.rsplit('/').next().unwrap();
        let forged = text.replace(base, &format!("00000000000000000000000000000000-ok-{tag}"));
        let forged = fx.ours.write(format!("forged-{tag}.drv"), forged);
        let out = nix
            .command("nix-store")
            .arg("--add")
            .arg(&forged)
            .run_unchecked();
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains(&format!(
                "invalid derivation 'forged-{tag}': incorrect output"
            )),
            "{}",
            stderr(&out)
        );

        // Derivations that cannot be built here: CppNix's messages.
        let err = fx.same_error(
            client,
            &format!("platform-{tag}.nix"),
            &format!(
                "derivation {{ name = \"platform-{tag}\"; system = \"foo-linux\"; builder = \"${{./bb}}/bin/sh\"; }}"
            ),
        );
        assert!(
            err.contains(
                "a 'foo-linux' with features {} is required to build '/STORE/HASH-platform-"
            ),
            "{err}"
        );
        let err = fx.same_error(
            client,
            &format!("features-{tag}.nix"),
            &Derivation::new(&format!("features-{tag}"), "echo > $out")
                .attr("requiredSystemFeatures", r#"[ "gpu" "bogus" ]"#)
                .to_nix(),
        );
        assert!(
            err.contains("with features {bogus, gpu} is required to build"),
            "{err}"
        );
        let err = fx.same_error(
            client,
            &format!("nochroot-{tag}.nix"),
            &Derivation::new(&format!("nochroot-{tag}"), "echo > $out")
                .attr("__noChroot", "true")
                .to_nix(),
        );
        assert!(err.contains("has '__noChroot' set"), "{err}");

        // A builder that leaves a process behind: built, and the process is gone.
        let file = format!("fork-{tag}.nix");
        let out = fx.build(
            client,
            &file,
            &Derivation::new(
                &format!("fork-{tag}"),
                &format!("(sh -c 'sleep 1000; : {marker}' &); echo ok > $out"),
            )
            .to_nix(),
        );
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(std::fs::read_to_string(stdout(&out)).unwrap(), "ok\n");
        fx.assert_clean(&marker);

        // A symlink as an output: fine for an ordinary output (as CppNix), refused for a
        // flat fixed output, which must be a regular file.
        let out = fx.build(
            client,
            &format!("link-{tag}.nix"),
            &Derivation::new(&format!("link-{tag}"), "ln -s /etc/passwd $out").to_nix(),
        );
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(
            std::fs::read_link(stdout(&out)).unwrap(),
            std::path::Path::new("/etc/passwd")
        );
        let file = format!("fodlink-{tag}.nix");
        let expr = Derivation::new(&format!("fodlink-{tag}"), "ln -s /etc/passwd $out")
            .env("outputHashMode", "flat")
            .env("outputHashAlgo", "sha256")
            .env("outputHash", &"1".repeat(64))
            .to_nix();
        let err = fx.same_error(client, &file, &expr);
        assert!(
            err.contains("should be a non-executable regular file"),
            "{err}"
        );
        fx.assert_absent(client, &fx.out_path(client, &file));

        // A log flood is cut at max-build-log-size, the builder killed.
        let file = format!("flood-{tag}.nix");
        let expr = Derivation::new(
            &format!("flood-{tag}"),
            &format!(
                "sh -c 'sleep 1000; : {marker}' & yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 100000000; echo done > $out"
            ),
        )
        .to_nix();
        let err = fx.same_error(client, &file, &expr);
        assert!(
            err.contains("killed after writing more than 1000000 bytes of log output"),
            "{err}"
        );
        fx.assert_absent(client, &fx.out_path(client, &file));

        // An input that is registered but gone from disk: a clear error, nothing built.
        let file = format!("gone-{tag}.nix");
        let expr = format!(
            "let dep = {}; in {}",
            Derivation::new(&format!("dep-{tag}"), "mkdir $out; echo dep > $out/f").to_nix(),
            Derivation::new(&format!("gone-{tag}"), "cat $dep/f > $out")
                .attr("dep", "dep")
                .to_nix()
        );
        let path = fx.ours.write_expr(&file, &expr);
        let dep = fx.ours.write_expr(
            &format!("dep-{tag}.nix"),
            &Derivation::new(&format!("dep-{tag}"), "mkdir $out; echo dep > $out/f").to_nix(),
        );
        let built_dep = nix_build(&fx.ours, client, &fx.daemon, &dep, &[]);
        assert!(built_dep.status.success(), "{}", stderr(&built_dep));
        std::fs::remove_dir_all(stdout(&built_dep)).unwrap();
        let out = nix_build(&fx.ours, client, &fx.daemon, &path, &[]);
        assert!(!out.status.success(), "built with a missing input");
        let err = fx.error(&fx.ours, &out);
        eprintln!("{client}, input gone from disk: {err}");
        assert!(err.contains("HASH-dep-"), "{err}");
        fx.assert_absent(client, &fx.out_path(client, &file));
        fx.assert_clean(&marker);
    }
}

/// BuildDerivation (what remote builders send): a missing input is a status with CppNix
/// 2.8's text, a good derivation builds; the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_derivation_with_a_missing_input() {
    require_env!();
    let store = TestStore::builder()
        .sandbox(true)
        .build_users(BuildUsers::private(1))
        .build();
    let bb = store.busybox().to_owned();
    let daemon = nixnest(&store);
    let sd = StoreDir::new(store.store_dir().to_str().unwrap().to_owned()).unwrap();
    // busybox into the store through the daemon.
    let bb_path = store
        .client(Client::Host)
        .daemon(&daemon)
        .command("nix-store")
        .arg("--add")
        .arg(&bb)
        .run();
    let bb_path = sd.parse_path(&bb_path).unwrap();
    let mut c = UnixDaemonClient::connect(daemon.socket(), sd.clone())
        .await
        .unwrap();
    c.set_options(&ClientSettings::default()).await.unwrap();

    let basic = |name: &str, srcs: BTreeSet<StorePath>| {
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        let sh = format!("{}/bin/sh", sd.print(&bb_path));
        env.insert("name".into(), name.into());
        env.insert("builder".into(), sh.clone());
        env.insert("system".into(), "x86_64-linux".into());
        env.insert("PATH".into(), format!("{}/bin", sd.print(&bb_path)));
        env.insert("out".into(), String::new());
        let mut drv = nixnest_core::Derivation {
            name: name.into(),
            outputs: [("out".to_owned(), DerivationOutput::Deferred)].into(),
            input_drvs: BTreeMap::new(),
            input_srcs: srcs,
            platform: "x86_64-linux".into(),
            builder: sh,
            args: vec!["-c".into(), "echo built > $out".into()],
            env,
        };
        drv.fill_in_output_paths(&sd, |_| panic!("no input derivations"))
            .unwrap();
        let path = drv.drv_path(&sd).unwrap();
        (path, BasicDerivation::from(drv))
    };

    let gone = sd
        .parse_path(&format!("{}/00000000000000000000000000000000-gone", sd))
        .unwrap();
    let (path, drv) = basic("missing-input", [bb_path.clone(), gone].into());
    let r = c
        .build_derivation(&path, &drv, BuildMode::Normal)
        .await
        .unwrap();
    assert_eq!(r.status, BuildStatus::MiscFailure);
    assert_eq!(
        r.error_msg,
        format!("some dependencies of '{}' are missing", sd.print(&path))
    );
    let out = drv.outputs["out"]
        .path(&sd, &drv.name, "out")
        .unwrap()
        .unwrap();
    assert!(!c.is_valid_path(&out).await.unwrap());

    let (path, drv) = basic("fine", [bb_path.clone()].into());
    let r = c
        .build_derivation(&path, &drv, BuildMode::Normal)
        .await
        .unwrap();
    assert_eq!(r.status, BuildStatus::Built, "{}", r.error_msg);
    assert_eq!(r.times_built, 1);
    let out = drv.outputs["out"]
        .path(&sd, &drv.name, "out")
        .unwrap()
        .unwrap();
    assert_eq!(r.built_outputs["out"].out_path, out);
    assert_eq!(
        std::fs::read_to_string(store.store_dir().join(out.to_base_name())).unwrap(),
        "built\n"
    );
    assert!(leftovers(&store).is_empty(), "{:?}", leftovers(&store));
}
