//! The daemon started by socket activation, as systemd starts it: `systemd-socket-activate
//! -l <socket> --fdname=nix-daemon.socket <daemon> --daemon` listens, and on the first
//! connection execs the daemon with the listening socket as fd 3 (`LISTEN_FDS=1`,
//! `LISTEN_FDNAMES=nix-daemon.socket`, `LISTEN_PID`). Compared between the real `nix-daemon`
//! (2.8 on the host; 2.34 entered into its chroot by the same exec chain, so `LISTEN_PID`
//! still matches) and nixnest, with every client (see `common`).
//!
//! `systemd-socket-activate` passes only the variables named with `-E` to the daemon.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;

use common::*;
use nixnest_testkit::chroot::{self, Pids};
use nixnest_testkit::{Client, DaemonSpec, cargo_bin};

/// The variables the daemon needs (see `TestStore::nix_env`, `DaemonSpec`).
const PASSED: &[&str] = &[
    "PATH",
    "HOME",
    "NIX_PATH",
    "NIX_STORE_DIR",
    "NIX_STATE_DIR",
    "NIX_LOG_DIR",
    "NIX_CONF_DIR",
    "NIX_DAEMON_SOCKET_PATH",
];

/// `systemd-socket-activate` in front of `server`'s daemon, listening on the side's socket.
fn activated(side: &Side) -> DaemonSpec {
    let daemon: Vec<OsString> = match side.server {
        Server::Nixnest => vec![cargo_bin("nixnest-daemon").into(), "--daemon".into()],
        Server::Nix(Client::Host) => vec!["nix-daemon".into(), "--daemon".into()],
        Server::Nix(client) => {
            let dir = client.chroot().unwrap();
            // `unshare --mount` without `--fork` and the script's `exec` keep the pid, so
            // LISTEN_PID (set to it) still names the daemon.
            let enter = chroot::enter(
                &dir,
                &[side.store.root()],
                Pids::Shared,
                &[
                    "nix-daemon",
                    "--daemon",
                    "--option",
                    "build-dir",
                    "/run/nix-builds",
                ],
            );
            std::iter::once(enter.get_program().to_owned())
                .chain(enter.get_args().map(ToOwned::to_owned))
                .collect()
        }
    };
    let socket = side.store.socket_path(DAEMON);
    let mut spec = side
        .store
        .daemon(DAEMON, "systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .arg("--fdname=nix-daemon.socket");
    for var in PASSED {
        spec = spec.arg(format!("--setenv={var}"));
    }
    spec.args(daemon).isolate_pids(isolate())
}

#[test]
fn socket_activated_daemon_serves_clients() {
    compare("socket activation", plain_store, |side| {
        side.store.write("in/hello.txt", "hello world\n");
        side.start_spec(activated(side));
        let socket = side.daemon().socket().to_owned();
        let inode = std::fs::metadata(&socket).unwrap().ino();

        side.step("nix store ping", side.cmd("nix", ["store", "ping"]))
            .norm(Norm::DaemonVersion)
            .ok()
            .run();
        let added = side
            .step(
                "nix-store --add",
                side.cmd("nix-store", ["--add", "in/hello.txt"]),
            )
            .ok()
            .run();
        side.step(
            "nix-store -q --hash",
            side.cmd("nix-store", ["-q", "--hash", &added]),
        )
        .ok()
        .run();
        side.step(
            "nix path-info --json",
            side.cmd("nix", ["path-info", "--json", &added]),
        )
        .norm(Norm::RegistrationTime)
        .ok()
        .run();
        // The daemon serves the socket it was given: it did not bind a new one.
        side.observe(
            "the socket is the one systemd-socket-activate made",
            format!(
                "{}",
                std::fs::metadata(&socket).map(|m| m.ino()).ok() == Some(inode)
            ),
        );
    });
}
