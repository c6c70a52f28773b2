//! Build users: the pool of accounts in `build-users-group`, one per running build.
//!
//! CppNix's `UserLock` (2.8), kept exactly:
//!
//! * the members of the group are read with `getgrnam` (so NSS sources count), in the
//!   order the group lists them; the gid a build runs with is the **group's** gid;
//! * a member is taken by locking `<state dir>/userpool/<uid>` (mode 0600) with a
//!   non-blocking exclusive `flock`; the first member whose lock is free wins. `flock`
//!   locks belong to the open file description, so two builds in one process can never
//!   share a uid either. The lock is held by the [`UserLease`] and released when it is
//!   dropped — after the outputs are registered, so no later build can run as that uid
//!   while we still look at files it could own;
//! * no free member: [`UserPool::try_acquire`] returns `None` and the caller prints
//!   "waiting for UID to build '…'" and retries later;
//! * errors (same texts as CppNix): the group does not exist, has no members, a member is
//!   not a user, or the daemon's own uid is a member;
//! * the supplementary groups of the user (`getgrouplist`, e.g. `kvm`) are kept for
//!   unsandboxed builds;
//! * [`kill_user`] is run right after a uid is taken and again after the build: a process
//!   switches to the uid and sends `kill(-1, SIGKILL)`, which reaches every process of
//!   that uid.
//!
//! Who builds as whom (CppNix 2.8, kept): build users are used only when the daemon runs as
//! root *and* `build-users-group` is non-empty. Root with an empty `build-users-group`
//! builds as root — in the sandbox that is uid 1000 inside a user namespace mapped to host
//! root, and without user namespaces a sandboxed build is refused. A daemon that is not
//! root never uses build users: it builds as itself, in a user namespace (uid 1000 / gid
//! 100 inside).

use std::ffi::{CStr, CString};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, IoContext, Result};

/// A member of the build-users group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolUser {
    pub name: String,
    pub uid: u32,
    /// The user's primary gid (for `getgrouplist`).
    pub primary_gid: u32,
}

/// The build users of one store: `build-users-group` and the lock dir
/// `<state dir>/userpool`.
#[derive(Clone, Debug)]
pub struct UserPool {
    group: String,
    lock_dir: PathBuf,
}

/// One build user, held for one build. Dropping it releases the uid.
#[derive(Debug)]
pub struct UserLease {
    pub name: String,
    pub uid: u32,
    /// The build-users group's gid (what the build runs with).
    pub gid: u32,
    /// `getgrouplist` of the user (includes its primary group).
    pub supplementary_gids: Vec<u32>,
    _lock: OwnedFd,
}

impl UserPool {
    /// The pool for `group` (non-empty), locking in `<state_dir>/userpool`.
    pub fn new(group: &str, state_dir: &Path) -> Self {
        UserPool {
            group: group.to_owned(),
            lock_dir: state_dir.join("userpool"),
        }
    }

    /// Whether a daemon running as `euid` with `build-users-group = group` uses build
    /// users (CppNix: root and a non-empty group).
    pub fn applies(group: &str, euid: u32) -> bool {
        !group.is_empty() && euid == 0
    }

    /// The group name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The group's gid and members, re-read on every call (as CppNix does), with its
    /// error messages.
    pub fn members(&self) -> Result<(u32, Vec<PoolUser>)> {
        let (gid, names) = lookup_group(&self.group)?.ok_or_else(|| {
            Error::BuildUsers(format!(
                "the group '{}' specified in 'build-users-group' does not exist",
                self.group
            ))
        })?;
        if names.is_empty() {
            return Err(Error::BuildUsers(format!(
                "the build users group '{}' has no members",
                self.group
            )));
        }
        let mut users = Vec::with_capacity(names.len());
        for name in names {
            let (uid, primary_gid) = lookup_user(&name)?.ok_or_else(|| {
                Error::BuildUsers(format!(
                    "the user '{name}' in the group '{}' does not exist",
                    self.group
                ))
            })?;
            users.push(PoolUser {
                name,
                uid,
                primary_gid,
            });
        }
        Ok((gid, users))
    }

    /// Takes the first free build user, or `None` if all are busy ("waiting for UID").
    /// The processes of the uid taken are killed before it is returned.
    pub fn try_acquire(&self) -> Result<Option<UserLease>> {
        let (gid, users) = self.members()?;
        std::fs::create_dir_all(&self.lock_dir).ctx("creating", &self.lock_dir)?;
        for user in users {
            let path = self.lock_dir.join(user.uid.to_string());
            let fd = rustix::fs::open(
                &path,
                OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .ctx("opening user lock", &path)?;
            match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(Errno::WOULDBLOCK) => continue,
                Err(e) => return Err(Error::io_at("locking user lock", &path, e)),
            }
            let (ruid, euid) = (
                rustix::process::getuid().as_raw(),
                rustix::process::geteuid().as_raw(),
            );
            if user.uid == ruid || user.uid == euid {
                return Err(Error::BuildUsers(format!(
                    "the Nix user should not be a member of '{}'",
                    self.group
                )));
            }
            let supplementary_gids = group_list(&user.name, user.primary_gid)?;
            kill_user(user.uid)?;
            return Ok(Some(UserLease {
                name: user.name,
                uid: user.uid,
                gid,
                supplementary_gids,
                _lock: fd,
            }));
        }
        Ok(None)
    }
}

/// Kills every process running as `uid` (never 0): a forked child switches to the uid and
/// sends `kill(-1, SIGKILL)` once, as CppNix's `killUser` does. One call reaches every
/// process of the uid (the kernel walks the task list under a lock that `fork` needs), and
/// its result cannot say whether any was left: Linux returns 0 whenever the system has
/// any other process at all, even if none could be signalled — so only `EINTR` is retried.
///
/// Safe to call from a multi-threaded process: the child only makes raw system calls.
pub fn kill_user(uid: u32) -> Result<()> {
    if uid == 0 {
        return Err(Error::Other(
            "refusing to kill all processes of root".into(),
        ));
    }
    tracing::debug!(uid, "killing all processes running under uid");
    // SAFETY: the child below performs only async-signal-safe raw system calls and
    // `_exit`, as required after fork in a multi-threaded process.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::io("fork", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: raw system calls only; see above.
        unsafe {
            if libc::syscall(libc::SYS_setuid, uid as libc::c_long) != 0 {
                libc::_exit(2);
            }
            let pause = libc::timespec {
                tv_sec: 0,
                tv_nsec: 2_000_000,
            };
            for _ in 0..50 {
                let r = libc::syscall(libc::SYS_kill, -1 as libc::c_long, libc::SIGKILL);
                if r == 0 {
                    libc::_exit(0);
                }
                let e = *libc::__errno_location();
                if e == libc::ESRCH || e == libc::EPERM {
                    libc::_exit(0);
                }
                if e != libc::EINTR {
                    libc::_exit(3);
                }
                libc::nanosleep(&pause, std::ptr::null_mut());
            }
            libc::_exit(0);
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(Error::io("waiting for the process killer", e));
        }
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(Error::Other(format!(
            "cannot kill processes for uid '{uid}': {}",
            crate::status::status_to_string(status)
        )))
    }
}

/// Runs a `get*nam_r` call with a buffer that grows (up to 16 MiB) while the call says
/// `ERANGE`. `call` returns the call's result code and, when it found an entry, what it
/// extracted from it (before the buffer is reused or freed).
fn with_nss_buffer<T>(
    what: &str,
    mut call: impl FnMut(&mut [u8]) -> (i32, Option<T>),
) -> Result<Option<T>> {
    let mut buf = vec![0u8; 4096];
    loop {
        let (r, found) = call(&mut buf);
        if r == libc::ERANGE && buf.len() < (16 << 20) {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if r != 0 {
            return Err(Error::io(
                format!("looking up {what}"),
                std::io::Error::from_raw_os_error(r),
            ));
        }
        return Ok(found);
    }
}

/// `getgrnam_r`: the gid and member list of a group, `None` if it does not exist.
pub fn lookup_group(name: &str) -> Result<Option<(u32, Vec<String>)>> {
    let cname =
        CString::new(name).map_err(|_| Error::BuildUsers("group name contains NUL".into()))?;
    with_nss_buffer(&format!("group '{name}'"), |buf| {
        // SAFETY: `grp` and `buf` outlive the call; the result points into `buf`, and we
        // copy what we need before returning.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        let r = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if r != 0 || result.is_null() {
            return (r, None);
        }
        let mut members = Vec::new();
        let mut p = grp.gr_mem;
        // SAFETY: `gr_mem` is a NULL-terminated array of C strings inside `buf`.
        unsafe {
            while !p.is_null() && !(*p).is_null() {
                members.push(CStr::from_ptr(*p).to_string_lossy().into_owned());
                p = p.add(1);
            }
        }
        (0, Some((grp.gr_gid, members)))
    })
}

/// `getpwnam_r`: uid and primary gid of a user, `None` if it does not exist.
pub fn lookup_user(name: &str) -> Result<Option<(u32, u32)>> {
    let cname =
        CString::new(name).map_err(|_| Error::BuildUsers("user name contains NUL".into()))?;
    with_nss_buffer(&format!("user '{name}'"), |buf| {
        // SAFETY: as in `lookup_group`.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let r = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pw,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if r != 0 || result.is_null() {
            return (r, None);
        }
        (0, Some((pw.pw_uid, pw.pw_gid)))
    })
}

/// `getgrouplist(user, primary)`.
fn group_list(user: &str, primary: u32) -> Result<Vec<u32>> {
    let cname =
        CString::new(user).map_err(|_| Error::BuildUsers("user name contains NUL".into()))?;
    let mut groups: Vec<libc::gid_t> = vec![0; 16];
    loop {
        let mut n = libc::c_int::try_from(groups.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `groups` has room for `n` entries; `n` is updated to the real count.
        let r = unsafe { libc::getgrouplist(cname.as_ptr(), primary, groups.as_mut_ptr(), &mut n) };
        let n = usize::try_from(n).unwrap_or(0);
        if r == -1 {
            if n > groups.len() && n < 65536 {
                groups.resize(n, 0);
                continue;
            }
            return Err(Error::BuildUsers(format!(
                "failed to get list of supplementary groups for '{user}'"
            )));
        }
        groups.truncate(n);
        return Ok(groups);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_of_root_and_missing_names() {
        let (gid, _) = lookup_group("root").unwrap().unwrap();
        assert_eq!(gid, 0);
        assert_eq!(lookup_user("root").unwrap(), Some((0, 0)));
        assert_eq!(lookup_group("nixnest-no-such-group").unwrap(), None);
        assert_eq!(lookup_user("nixnest-no-such-user").unwrap(), None);
    }

    #[test]
    fn missing_group_is_cppnix_error() {
        let dir = tempfile::tempdir().unwrap();
        let pool = UserPool::new("nixnest-no-such-group", dir.path());
        let e = pool.try_acquire().unwrap_err();
        assert_eq!(
            e.to_string(),
            "the group 'nixnest-no-such-group' specified in 'build-users-group' does not exist"
        );
    }

    #[test]
    fn applies_only_to_root_with_a_group() {
        assert!(UserPool::applies("nixbld", 0));
        assert!(!UserPool::applies("", 0));
        assert!(!UserPool::applies("nixbld", 1000));
    }

    #[test]
    fn kill_user_refuses_root() {
        assert!(kill_user(0).is_err());
    }
}
