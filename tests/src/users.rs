//! System users and groups for tests: clients running as someone other than root, and
//! build users.
//!
//! Users are real entries in `/etc/passwd` and `/etc/group`, created idempotently with
//! `groupadd` / `useradd --system` (no home, no login shell) and kept afterwards, so the
//! first test run on a machine creates them and later runs only look them up. All names
//! start with `nixnest-`. Creation is serialised inside the process with a mutex and
//! retried across processes (`useradd` fails while another one holds `/etc/.pwd.lock`).
//!
//! Build users need more care: before each build Nix kills every process of the build user
//! it picked, and it only coordinates build users through lock files in *its own* state dir.
//! Two test stores building at once with the same group could therefore kill each other's
//! builds. A [`BuildUsers`] value is an exclusive lease on a group (an `flock` on
//! `/tmp/nixnest-locks/<group>.lock`, released when dropped or when the process dies), so
//! parallel tests never share build users.
//!
//! Users created after a chroot daemon started are not visible to it: the chroot sees a
//! bind mount of the `/etc/passwd` of its start (see [`crate::chroot`]).

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use crate::run::RunExt;

/// A system user.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    /// The primary group.
    pub gid: u32,
}

/// Serialises user and group creation within this process.
static CREATE: Mutex<()> = Mutex::new(());

/// Looks a user up with `getent passwd`.
pub fn lookup_user(name: &str) -> Option<TestUser> {
    let line = getent("passwd", name)?;
    let fields: Vec<&str> = line.split(':').collect();
    Some(TestUser {
        name: fields.first()?.to_string(),
        uid: fields.get(2)?.parse().ok()?,
        gid: fields.get(3)?.parse().ok()?,
    })
}

/// Looks a group up with `getent group`: its gid and listed members.
pub fn lookup_group(name: &str) -> Option<(u32, Vec<String>)> {
    let line = getent("group", name)?;
    let fields: Vec<&str> = line.split(':').collect();
    let gid = fields.get(2)?.parse().ok()?;
    let members = fields
        .get(3)
        .map(|m| {
            m.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Some((gid, members))
}

fn getent(db: &str, key: &str) -> Option<String> {
    let out = Command::new("getent").args([db, key]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
}

/// Runs `create` until `exists` holds: tolerates another process creating the same entry
/// concurrently and the shadow lock being busy.
fn create_until<T>(what: &str, exists: impl Fn() -> Option<T>, mut create: Command) -> T {
    let _guard = CREATE.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..50 {
        if let Some(found) = exists() {
            return found;
        }
        // Failure is expected when another process won the race or holds the lock; the
        // lookup decides.
        create.run_unchecked();
        if let Some(found) = exists() {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = create.run_unchecked();
    panic!(
        "could not create {what}: {}",
        crate::run::report(&create, "giving up", &out)
    );
}

/// The gid of group `name`, creating it (as a system group) if missing.
pub fn ensure_group(name: &str) -> u32 {
    let mut cmd = Command::new("groupadd");
    cmd.args(["--system", name]);
    create_until(
        &format!("group {name}"),
        || lookup_group(name).map(|(gid, _)| gid),
        cmd,
    )
}

/// User `name` with primary group `group` and supplementary `groups` (all created if
/// missing). An existing user is returned as is, whatever its groups.
pub fn ensure_user(name: &str, group: &str, groups: &[&str]) -> TestUser {
    ensure_group(group);
    for g in groups {
        ensure_group(g);
    }
    let mut cmd = Command::new("useradd");
    cmd.args([
        "--system",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        "--gid",
        group,
    ]);
    if !groups.is_empty() {
        cmd.args(["--groups", &groups.join(",")]);
    }
    cmd.arg(name);
    create_until(&format!("user {name}"), || lookup_user(name), cmd)
}

/// `nixnest-user`: an ordinary user (own group `nixnest-user`, also in `nixnest-users`).
/// With Nix's defaults (`allowed-users = *`, `trusted-users = root`) it is allowed but not
/// trusted.
pub fn allowed_user() -> TestUser {
    ensure_user("nixnest-user", "nixnest-user", &["nixnest-users"])
}

/// `nixnest-denied`: a user for tests that leave it out of `allowed-users`
/// (e.g. `allowed-users = nixnest-user` or `@nixnest-users`; it is in neither).
pub fn denied_user() -> TestUser {
    ensure_user("nixnest-denied", "nixnest-denied", &[])
}

/// `nixnest-trusted`: a non-root user for tests that put it into `trusted-users` (by name,
/// or as `@nixnest-trusted`, its own group).
pub fn trusted_user() -> TestUser {
    ensure_user("nixnest-trusted", "nixnest-trusted", &[])
}

/// An exclusive lease on a build-users group; see the module docs. Give it to
/// [`crate::TestStoreBuilder::build_users`].
#[derive(Debug)]
pub struct BuildUsers {
    group: String,
    gid: u32,
    users: Vec<TestUser>,
    _lock: File,
}

impl BuildUsers {
    /// The host's `nixbld` group (`nixbld1`..`nixbld10`, from Debian's `nix-setup-systemd`);
    /// waits while another test holds it.
    pub fn nixbld() -> BuildUsers {
        let lock = lock_file("nixbld", true).expect("blocking lock");
        let (gid, members) =
            lookup_group("nixbld").expect("group nixbld missing; run tests/setup-host");
        let users = members
            .iter()
            .map(|m| lookup_user(m).unwrap_or_else(|| panic!("nixbld member {m} is no user")))
            .collect::<Vec<_>>();
        assert!(!users.is_empty(), "group nixbld has no members");
        BuildUsers {
            group: "nixbld".to_owned(),
            gid,
            users,
            _lock: lock,
        }
    }

    /// A group of this test's own, `nixnest-bld<k>` with (at least) `count` members
    /// `nixnest-bld<k>-<i>` listed in it, for the first `k` no one else holds.
    pub fn private(count: usize) -> BuildUsers {
        assert!(count > 0, "a build-users group needs members");
        for k in 0.. {
            let group = format!("nixnest-bld{k}");
            let Some(lock) = lock_file(&group, false) else {
                continue;
            };
            let gid = ensure_group(&group);
            let users = (1..=count)
                .map(|i| ensure_user(&format!("{group}-{i}"), &group, &[&group]))
                .collect();
            return BuildUsers {
                group,
                gid,
                users,
                _lock: lock,
            };
        }
        unreachable!("0.. is endless")
    }

    /// The group name, for `build-users-group`.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The group's gid.
    pub fn gid(&self) -> u32 {
        self.gid
    }

    /// Its members, in the order Nix tries them.
    pub fn users(&self) -> &[TestUser] {
        &self.users
    }

    /// Whether `uid` is one of its members.
    pub fn contains_uid(&self, uid: u32) -> bool {
        self.users.iter().any(|u| u.uid == uid)
    }
}

/// Opens and `flock`s `/tmp/nixnest-locks/<name>.lock`; `None` if `wait` is false and
/// someone else holds it.
fn lock_file(name: &str, wait: bool) -> Option<File> {
    use rustix::fs::{FlockOperation, flock};
    let dir = PathBuf::from("/tmp/nixnest-locks");
    std::fs::create_dir_all(&dir).expect("creating /tmp/nixnest-locks");
    let path = dir.join(format!("{name}.lock"));
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let op = if wait {
        FlockOperation::LockExclusive
    } else {
        FlockOperation::NonBlockingLockExclusive
    };
    match flock(&file, op) {
        Ok(()) => Some(file),
        Err(rustix::io::Errno::WOULDBLOCK) if !wait => None,
        Err(e) => panic!("flock {}: {e}", path.display()),
    }
}
