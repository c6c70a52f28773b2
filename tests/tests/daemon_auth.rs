//! Who may use the daemon and what an untrusted user may not do, with real users, compared
//! between the real `nix-daemon` and nixnest for the 2.8, 2.26 and 2.34 clients (see
//! `common`).
//!
//! | user | configuration | expected |
//! |---|---|---|
//! | root | `trusted-users = root nixnest-trusted` | trusted |
//! | `nixnest-trusted` | in `trusted-users` | trusted |
//! | `nixnest-user` | in `allowed-users` through `@nixnest-users` | allowed, untrusted |
//! | `nixnest-denied` | in no list | refused (no protocol bytes) |
//! | `nixnest-authbld-1` | named in `allowed-users`, but its primary group is `build-users-group` | refused |
//!
//! What the untrusted user tries (worker-protocol.md §4.9): importing an unsigned
//! input-addressed NAR, a restricted option (`keep-derivations`, silently ignored: the dead
//! paths it would add do not appear, while the trusted user's identical command shows them),
//! `--repair` of the store and of a path, adding a build log, and listing the roots. A GC root
//! made with `nix-store --add-root` works for the untrusted user with every client: over
//! `unix://` all three make the symlink themselves and send AddIndirectRoot (12), never
//! AddPermRoot (47); `daemon_protocol.rs` sends AddPermRoot itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::chown;

use common::fixture::build_closure;
use common::snapshot::tree;
use common::*;
use nixnest_testkit::users::{self, TestUser};
use nixnest_testkit::{Client, TestStore};

const BUILD_GROUP: &str = "nixnest-authbld";

struct Users {
    trusted: TestUser,
    allowed: TestUser,
    denied: TestUser,
    builder: TestUser,
}

fn users() -> Users {
    Users {
        trusted: users::trusted_user(),
        allowed: users::allowed_user(),
        denied: users::denied_user(),
        builder: users::ensure_user("nixnest-authbld-1", BUILD_GROUP, &[]),
    }
}

#[test]
fn authorization_table() {
    // Every user exists before any daemon starts: chroot daemons see /etc/passwd as it was.
    let who = users();
    let store = |_client| {
        TestStore::builder()
            .conf("trusted-users = root nixnest-trusted")
            .conf("allowed-users = @nixnest-users nixnest-authbld-1")
            // No build runs in this test; the group only marks its members as build users.
            .conf(format!("build-users-group = {BUILD_GROUP}"))
    };
    compare("authorization", store, |side| {
        let closure = build_closure(side);
        // An unsigned export of `app`, made without a daemon; then app is gone, so importing
        // it must really add it.
        let export = side
            .local("nix-store")
            .args(["--export", &closure.app])
            .output()
            .unwrap();
        assert!(export.status.success());
        side.prep({
            let mut c = side.local("nix-store");
            c.args(["--delete", &closure.app]);
            c
        });
        let log_cache = format!("file://{}", side.path("logcache").display());
        side.prep({
            let mut c = side.local("nix");
            c.args([
                "store",
                "copy-log",
                "--from",
                "local",
                "--to",
                &log_cache,
                &closure.dep_drv,
            ]);
            c
        });
        let everyone: [(&str, Option<&TestUser>); 5] = [
            ("root", None),
            ("trusted user", Some(&who.trusted)),
            ("allowed user", Some(&who.allowed)),
            ("denied user", Some(&who.denied)),
            ("build user", Some(&who.builder)),
        ];
        for (name, user) in &everyone {
            let short = name.split(' ').next().unwrap();
            side.store
                .write(format!("in/{short}.txt"), format!("added by {name}\n"));
            let dir = side.path(format!("roots-{short}"));
            std::fs::create_dir_all(&dir).unwrap();
            if let Some(u) = user {
                chown(&dir, Some(u.uid), Some(u.gid)).unwrap();
            }
        }
        side.start_daemon();

        for (name, user) in &everyone {
            let short = name.split(' ').next().unwrap();
            let info: &[&str] = match side.client {
                Client::Host => &["store", "ping"],
                _ => &["store", "info"],
            };
            let allowed = !matches!(*name, "denied user" | "build user");
            let step = side
                .step(
                    format!("{name}: nix {}", info.join(" ")),
                    side.cmd_as(*user, "nix", info),
                )
                .norm(Norm::DaemonVersion)
                .norm(Norm::RefusedConnection);
            if allowed { step.ok() } else { step.fails() }.run();
            let step = side
                .step(
                    format!("{name}: nix-store --add"),
                    side.cmd_as(*user, "nix-store", ["--add", &format!("in/{short}.txt")]),
                )
                .norm(Norm::RefusedConnection);
            if allowed { step.ok() } else { step.fails() }.run();
            let step = side
                .step(
                    format!("{name}: nix-store -q --hash"),
                    side.cmd_as(*user, "nix-store", ["-q", "--hash", &closure.dep]),
                )
                .norm(Norm::RefusedConnection);
            if allowed { step.ok() } else { step.fails() }.run();
        }

        let user = Some(&who.allowed);
        let trusted = Some(&who.trusted);
        side.step(
            "untrusted: --import of an unsigned path fails",
            side.cmd_as(user, "nix-store", ["--import"]),
        )
        .input(export.stdout.clone())
        .fails()
        .run();
        side.step(
            "untrusted: the refused path is not valid",
            side.cmd_as(
                user,
                "nix-store",
                ["--check-validity", "--print-invalid", &closure.app],
            ),
        )
        .ok()
        .run();
        // keep-derivations (default true) keeps the .drv files of live outputs alive; dep is
        // live (a temp root of nobody, but rooted below), so with the option off its .drv
        // would be dead.
        side.prep({
            let mut c = side.local("nix-store");
            c.args(["--add-root", "roots-root/dep", "-r", &closure.dep]);
            c.current_dir(side.store.root());
            c
        });
        for (name, who) in [("untrusted", user), ("trusted", trusted)] {
            side.step(
                format!("{name}: --gc --print-dead --option keep-derivations false"),
                side.cmd_as(
                    who,
                    "nix-store",
                    [
                        "--gc",
                        "--print-dead",
                        "--option",
                        "keep-derivations",
                        "false",
                    ],
                ),
            )
            .norms(norm::gc())
            .ok()
            .run();
        }
        side.step(
            "untrusted: --verify --repair fails",
            side.cmd_as(user, "nix-store", ["--verify", "--repair"]),
        )
        .fails()
        .run();
        side.step(
            "untrusted: -r --repair fails",
            side.cmd_as(user, "nix-store", ["-r", "--repair", &closure.dep]),
        )
        .fails()
        .run();
        side.step(
            "untrusted: --add-root",
            side.cmd_as(
                user,
                "nix-store",
                ["--add-root", "roots-allowed/dep", "-r", &closure.dep],
            ),
        )
        .run();
        side.step(
            "untrusted: --gc --print-roots",
            side.cmd_as(user, "nix-store", ["--gc", "--print-roots"]),
        )
        .norm(Norm::Pids)
        .norm(Norm::SortLines)
        .norms(norm::gc())
        .ok()
        .run();
        let uri = side.daemon().uri();
        side.step(
            "untrusted: nix store copy-log fails",
            side.cmd_as(
                user,
                "nix",
                [
                    "store",
                    "copy-log",
                    "--from",
                    &log_cache,
                    "--to",
                    &uri,
                    &closure.dep_drv,
                ],
            ),
        )
        .fails()
        .run();
        side.step(
            "trusted: --import of the unsigned path",
            side.cmd_as(trusted, "nix-store", ["--import"]),
        )
        .input(export.stdout)
        .ok()
        .run();
        side.step(
            "trusted: --add-root",
            side.cmd_as(
                trusted,
                "nix-store",
                ["--add-root", "roots-trusted/app", "-r", &closure.app],
            ),
        )
        .ok()
        .run();
        side.snapshot("at the end");
        side.observe(
            "gcroots",
            tree(&side.store.state_dir().join("gcroots"), false, &|_| false),
        );
    });
}
