//! Running a program inside a client chroot (Debian trixie / sid with their `nix-bin`), with
//! the test's directories visible at the same absolute paths.
//!
//! The chroots are plain debootstrapped trees made by `tests/prepare-clients` under
//! [`clients_dir`]. Entering one takes a private mount namespace (`unshare --mount
//! --propagation private`), so every mount below disappears with the last process in it,
//! however the test ends; nothing is ever mounted on the host. Inside the namespace
//! [`ENTER_SCRIPT`] (POSIX sh, run by the host's `/bin/sh`) does, in order:
//!
//! 1. bind the chroot onto itself, so it is a mount point `pivot_root` can use;
//! 2. mount `proc` (of the caller's PID namespace), rbind the host `/dev`, mount fresh tmpfs
//!    on `/tmp` (mode 1777) and `/run` (0755, with an empty `/run/nix-builds` for daemons'
//!    `build-dir`), bind the host's `/etc/passwd` and `/etc/group`
//!    over the chroot's (so test users, `nixbld` and build-user groups resolve the same way
//!    inside — a snapshot: users created later are not seen by an already running process);
//! 3. for each directory to share (all under `/tmp`, so the mount point is created in the
//!    fresh tmpfs, never in the cached chroot), create it and rbind the host directory there;
//! 4. `pivot_root . .` then detach the old root: unlike `chroot(2)`, the process's root is
//!    then the root of its mount namespace, so the Nix inside can create user namespaces
//!    and its build sandbox behaves as on a real machine;
//! 5. `cd` to the caller's working directory if it exists inside (else `/`), then `exec` the
//!    command, found through the `PATH` of the chroot.
//!
//! Without `--fork` the `unshare` process becomes the shell and then the command (every step
//! `exec`s), so the [`Command`]'s child *is* the client: its exit status, signals and
//! stdio are the client's own.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The script run by `/bin/sh -c` inside the new mount namespace.
/// Arguments: `<chroot> <shared dir>... -- <command> <args>...`.
pub const ENTER_SCRIPT: &str = r#"set -eu
new_root=$1; shift
mount --bind "$new_root" "$new_root"
mount -t proc proc "$new_root/proc"
mount --rbind /dev "$new_root/dev"
mount -t tmpfs -o mode=1777 tmpfs "$new_root/tmp"
mount -t tmpfs -o mode=0755 tmpfs "$new_root/run"
mkdir "$new_root/run/nix-builds"
mount --bind /etc/passwd "$new_root/etc/passwd"
mount --bind /etc/group "$new_root/etc/group"
while [ "$1" != -- ]; do
    mkdir -p "$new_root$1"
    mount --rbind "$1" "$new_root$1"
    shift
done
shift
cwd=$PWD
cd "$new_root"
pivot_root . .
umount -l .
cd "$cwd" 2>/dev/null || cd /
exec "$@"
"#;

/// The directory holding the client chroots: env `NIXNEST_CLIENTS_DIR`, else
/// `/var/cache/nixnest-test/clients` (the default of `tests/prepare-clients`).
pub fn clients_dir() -> PathBuf {
    std::env::var_os("NIXNEST_CLIENTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/nixnest-test/clients"))
}

/// How the entered process tree is isolated beyond its mount namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pids {
    /// Shares the caller's PID namespace (clients: they must be visible to a daemon's GC,
    /// and their exit status is the command's).
    Shared,
    /// A new PID namespace whose init is the command (`unshare --pid --fork --kill-child`):
    /// when it dies, the kernel kills everything it started. Used for daemons.
    Own,
}

/// A [`Command`] that runs `argv` inside the chroot `new_root`, with each of `shared` (absolute
/// directories under `/tmp`) bind-mounted at its own path. The caller adds the environment;
/// it passes unchanged through `unshare` and the script to the command.
///
/// Panics if a shared directory is not under `/tmp`: its mount point would otherwise be
/// created inside the cached chroot and outlive the test.
pub fn enter<S: AsRef<OsStr>>(
    new_root: &Path,
    shared: &[&Path],
    pids: Pids,
    argv: &[S],
) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private"]);
    if pids == Pids::Own {
        cmd.args(["--pid", "--fork", "--kill-child"]);
    }
    cmd.args(["--", "/bin/sh", "-c", ENTER_SCRIPT, "sh"]);
    cmd.arg(new_root);
    for dir in shared {
        assert!(
            dir.is_absolute() && dir.starts_with("/tmp/") && dir.as_os_str() != "--",
            "only directories under /tmp can be shared with a chroot, not {}",
            dir.display()
        );
        cmd.arg(dir);
    }
    cmd.arg("--");
    cmd.args(argv);
    cmd
}

/// A [`Command`] that runs `argv` on the host in a new PID namespace (with its own `/proc`,
/// hence also a private mount namespace), so everything it starts dies with it.
pub fn isolate_pids<S: AsRef<OsStr>>(argv: &[S]) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
        "--",
    ]);
    cmd.args(argv);
    cmd
}
