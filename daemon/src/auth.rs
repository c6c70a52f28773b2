//! Who may talk to the daemon, and how much they are trusted.
//!
//! [`authorize`] is the *only* place a trust decision is made: a pure function of the
//! peer's credentials ([`PeerInfo`]) and the settings, tested as a table. Everything
//! impure — `SO_PEERCRED`, the user and group databases — lives in [`peer_credentials`]
//! and [`resolve_peer`].
//!
//! # Semantics (CppNix `authPeer`/`matchUser` in `src/nix/unix/daemon.cc`, 2.0 … HEAD)
//!
//! * The peer's *user* is its login name, or the uid in decimal when the uid has no
//!   passwd entry; its *group* is the primary group's name, or the gid in decimal.
//! * A list (`trusted-users`, `allowed-users`) matches when it contains `*`, the user,
//!   or `@g` where `g` is the primary group or a group whose member list names the user.
//! * Trusted iff `trusted-users` matches. Allowed iff trusted or `allowed-users` matches.
//! * Refused — with exactly `user '<user>' is not allowed to connect to the Nix daemon`,
//!   the same text for both causes — when not allowed, **or** when the primary group is
//!   `build-users-group`. The latter is OR-ed in, so it refuses even trusted users: it is
//!   the guard against builders reaching the daemon (store-and-build.md §6.7).
//! * Refusal closes the socket without a single protocol byte.
//!
//! # nixnest additions
//!
//! * `allow-build-user-connections = true` turns that refusal into
//!   [`Decision::BuildUser`] (seed-style recursive Nix); the listener then requires a
//!   build registered as running under that uid, and refuses otherwise.
//! * With `auto-allocate-uids`, build uids have no passwd entry, so the group test cannot
//!   see them; a uid inside `[start-id, start-id + id-count)` is treated as a build user.
//!   (CppNix's `authPeer` has no such test.)

use std::ffi::{CStr, CString};
use std::path::PathBuf;

use crate::config::{ClientTrust, Settings};

/// What `SO_PEERCRED` says about the process at the other end of a Unix socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: Option<u32>,
    pub uid: u32,
    pub gid: u32,
}

/// A peer's credentials with names resolved from the user and group databases.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// `None` when the kernel reported none (pid 0) or the peer is not a socket.
    pub pid: Option<u32>,
    pub uid: u32,
    /// Primary gid as the kernel reports it (the peer's effective gid).
    pub gid: u32,
    /// `None` when the uid has no passwd entry.
    pub user_name: Option<String>,
    /// `None` when the gid has no group entry.
    pub group_name: Option<String>,
    /// Names of every group that lists the user as a member (plus the primary group),
    /// as `getgrouplist` reports them. Empty when the user has no name.
    pub supplementary_groups: Vec<String>,
}

impl PeerInfo {
    /// The name CppNix uses for this peer in lists and messages: the login name, or the
    /// uid in decimal.
    pub fn user(&self) -> String {
        self.user_name
            .clone()
            .unwrap_or_else(|| self.uid.to_string())
    }

    /// The primary group's name, or the gid in decimal.
    pub fn group(&self) -> String {
        self.group_name
            .clone()
            .unwrap_or_else(|| self.gid.to_string())
    }
}

/// The outcome of [`authorize`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Close the connection without protocol bytes; the message is for the daemon's log.
    Reject(String),
    /// An ordinary, untrusted client.
    Allowed,
    /// A client in `trusted-users`: may do anything (root-equivalent).
    Trusted,
    /// A build user (opt-in). The daemon must find the build running as `uid` and serve
    /// only that build's restricted view, or refuse.
    BuildUser { uid: u32 },
}

/// An admitted connection's standing: a [`Decision`] that is not a rejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Allowed,
    Trusted,
    BuildUser { uid: u32 },
}

impl Decision {
    /// `Err(message)` for a rejection, the admitted standing otherwise.
    pub fn into_access(self) -> Result<Access, String> {
        match self {
            Decision::Reject(message) => Err(message),
            Decision::Allowed => Ok(Access::Allowed),
            Decision::Trusted => Ok(Access::Trusted),
            Decision::BuildUser { uid } => Ok(Access::BuildUser { uid }),
        }
    }
}

impl Access {
    /// What `SetOptions` may change in this session.
    pub fn client_trust(self) -> ClientTrust {
        match self {
            Access::Trusted => ClientTrust::Trusted,
            Access::Allowed => ClientTrust::Untrusted,
            Access::BuildUser { .. } => ClientTrust::Recursive,
        }
    }

    /// Whether the handshake's trust flag (protocol ≥ 1.35) should say "trusted".
    pub fn is_trusted(self) -> bool {
        self == Access::Trusted
    }

    /// A short word for logs and `nixnest-daemon status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Allowed => "allowed",
            Access::Trusted => "trusted",
            Access::BuildUser { .. } => "build-user",
        }
    }
}

/// The refusal text; CppNix uses the same words for every cause.
pub fn not_allowed_message(user: &str) -> String {
    format!("user '{user}' is not allowed to connect to the Nix daemon")
}

/// CppNix `matchUser`: does `list` admit this peer?
fn matches(list: &[String], user: &str, group: &str, peer: &PeerInfo) -> bool {
    list.iter().any(|entry| {
        if entry == "*" {
            return true;
        }
        match entry.strip_prefix('@') {
            Some(wanted) => {
                wanted == group || peer.supplementary_groups.iter().any(|g| g == wanted)
            }
            None => entry == user,
        }
    })
}

/// Decides whether `peer` may connect and how far it is trusted. Pure.
pub fn authorize(peer: &PeerInfo, settings: &Settings) -> Decision {
    let user = peer.user();
    let group = peer.group();

    let in_build_group =
        !settings.build_users_group.is_empty() && group == settings.build_users_group;
    let in_auto_range = settings.auto_allocate_uids
        && peer.uid >= settings.start_id
        && u64::from(peer.uid) < u64::from(settings.start_id) + u64::from(settings.id_count);
    if in_build_group || in_auto_range {
        return if settings.allow_build_user_connections {
            Decision::BuildUser { uid: peer.uid }
        } else {
            Decision::Reject(not_allowed_message(&user))
        };
    }

    if matches(&settings.trusted_users, &user, &group, peer) {
        Decision::Trusted
    } else if matches(&settings.allowed_users, &user, &group, peer) {
        Decision::Allowed
    } else {
        Decision::Reject(not_allowed_message(&user))
    }
}

impl Decision {
    /// `--force-untrusted`: serve a trusted peer as an ordinary one; every other
    /// decision (including rejections) stands.
    pub fn without_trust(self) -> Decision {
        match self {
            Decision::Trusted => Decision::Allowed,
            other => other,
        }
    }
}

/// The standing of a `--stdio` peer, which has no credentials to check: trusted, as when
/// CppNix serves `--stdio` itself (the remote side of `ssh-ng://`, where whoever could
/// run the command already had the account), unless `--force-untrusted`.
pub fn stdio_access(force_untrusted: bool) -> Access {
    if force_untrusted {
        Access::Allowed
    } else {
        Access::Trusted
    }
}

/// The refusal for a build user with no running build (seed-style recursive Nix only
/// serves the build that owns the uid).
pub fn no_build_message(user: &str) -> String {
    format!("user '{user}' is a build user, but no build is running as that user")
}

// ---------------------------------------------------------------------------------------
// The impure half: kernel credentials and the user/group databases
// ---------------------------------------------------------------------------------------

/// `SO_PEERCRED` of a connected Unix socket. The kernel reports pid 0 when the peer's
/// process is outside our PID namespace (a client in a container, or a daemon in its own
/// namespace); that is `pid: None`, not an error (rustix's typed call refuses pid 0, so
/// this reads the option directly).
pub fn peer_credentials(socket: impl std::os::fd::AsFd) -> std::io::Result<PeerCred> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the size passed; the fd is open.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "SO_PEERCRED returned a short answer",
        ));
    }
    Ok(PeerCred {
        pid: u32::try_from(cred.pid).ok().filter(|p| *p != 0),
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// Looks up names for `cred` through NSS (`getpwuid_r`, `getgrgid_r`, `getgrouplist`),
/// so LDAP/sssd/systemd-userdb users resolve as they do for CppNix. Blocking: call it
/// from `spawn_blocking`.
pub fn resolve_peer(cred: PeerCred) -> PeerInfo {
    let passwd = nss::user_by_uid(cred.uid);
    let user_name = passwd.as_ref().map(|p| p.name.clone());
    let supplementary_groups = match &passwd {
        Some(p) => nss::group_list(&p.name, cred.gid)
            .into_iter()
            .filter_map(nss::group_name_by_gid)
            .collect(),
        None => Vec::new(),
    };
    PeerInfo {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
        user_name,
        group_name: nss::group_name_by_gid(cred.gid),
        supplementary_groups,
    }
}

/// The home directory of `uid` from the passwd database.
pub fn home_dir(uid: u32) -> Option<PathBuf> {
    nss::user_by_uid(uid).map(|p| p.home)
}

/// The gid of group `name`, if it exists.
pub fn group_id(name: &str) -> Option<u32> {
    nss::gid_by_name(name)
}

/// Thin, bounded wrappers around the reentrant libc lookups.
mod nss {
    use super::*;

    /// The lookups retry with a doubled buffer on `ERANGE` up to this size; a bigger
    /// entry is treated as absent rather than allocating without bound.
    const MAX_BUFFER: usize = 1 << 20;
    /// Groups per user considered by `getgrouplist`.
    const MAX_GROUPS: usize = 65536;

    pub struct Passwd {
        pub name: String,
        pub home: PathBuf,
    }

    fn owned(ptr: *const libc::c_char) -> Option<String> {
        if ptr.is_null() {
            return None;
        }
        // SAFETY: libc filled the entry with NUL-terminated strings inside our buffer,
        // which outlives this call.
        let s = unsafe { CStr::from_ptr(ptr) };
        Some(s.to_string_lossy().into_owned())
    }

    /// Runs a `get*_r` lookup with a growing buffer; `call` returns the libc status and
    /// whether an entry was found.
    fn with_buffer<T>(
        mut call: impl FnMut(&mut [libc::c_char]) -> (libc::c_int, Option<T>),
    ) -> Option<T> {
        let mut size = 1024;
        loop {
            let mut buffer = vec![0 as libc::c_char; size];
            match call(&mut buffer) {
                (0, found) => return found,
                (libc::ERANGE, _) if size < MAX_BUFFER => size *= 2,
                (libc::EINTR, _) => {}
                _ => return None,
            }
        }
    }

    pub fn user_by_uid(uid: u32) -> Option<Passwd> {
        with_buffer(|buffer| {
            // SAFETY: an all-zero `passwd` is a valid value for libc to overwrite.
            let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
            let mut result: *mut libc::passwd = std::ptr::null_mut();
            // SAFETY: every pointer is valid for the duration of the call and the buffer
            // length is its real length.
            let rc = unsafe {
                libc::getpwuid_r(
                    uid,
                    &mut entry,
                    buffer.as_mut_ptr(),
                    buffer.len(),
                    &mut result,
                )
            };
            if rc != 0 || result.is_null() {
                return (rc, None);
            }
            let name = owned(entry.pw_name);
            let home = owned(entry.pw_dir).map(PathBuf::from).unwrap_or_default();
            (0, name.map(|name| Passwd { name, home }))
        })
    }

    pub fn group_name_by_gid(gid: u32) -> Option<String> {
        with_buffer(|buffer| {
            // SAFETY: as in `user_by_uid`.
            let mut entry: libc::group = unsafe { std::mem::zeroed() };
            let mut result: *mut libc::group = std::ptr::null_mut();
            // SAFETY: as in `user_by_uid`.
            let rc = unsafe {
                libc::getgrgid_r(
                    gid,
                    &mut entry,
                    buffer.as_mut_ptr(),
                    buffer.len(),
                    &mut result,
                )
            };
            if rc != 0 || result.is_null() {
                return (rc, None);
            }
            (0, owned(entry.gr_name))
        })
    }

    pub fn gid_by_name(name: &str) -> Option<u32> {
        let cname = CString::new(name).ok()?;
        with_buffer(|buffer| {
            // SAFETY: as in `user_by_uid`.
            let mut entry: libc::group = unsafe { std::mem::zeroed() };
            let mut result: *mut libc::group = std::ptr::null_mut();
            // SAFETY: as in `user_by_uid`; `cname` is NUL-terminated.
            let rc = unsafe {
                libc::getgrnam_r(
                    cname.as_ptr(),
                    &mut entry,
                    buffer.as_mut_ptr(),
                    buffer.len(),
                    &mut result,
                )
            };
            if rc != 0 || result.is_null() {
                return (rc, None);
            }
            (0, Some(entry.gr_gid))
        })
    }

    /// `getgrouplist(user, gid)`: the primary gid plus every group listing `user`.
    pub fn group_list(user: &str, gid: u32) -> Vec<u32> {
        let Ok(cuser) = CString::new(user) else {
            return vec![gid];
        };
        let mut count: libc::c_int = 32;
        loop {
            let len = usize::try_from(count).unwrap_or(0).clamp(1, MAX_GROUPS);
            let mut groups = vec![0 as libc::gid_t; len];
            let mut n = libc::c_int::try_from(len).unwrap_or(libc::c_int::MAX);
            // SAFETY: `groups` has room for `n` entries; glibc writes at most that many and
            // stores the needed count in `n`.
            let rc =
                unsafe { libc::getgrouplist(cuser.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
            let filled = usize::try_from(n).unwrap_or(0);
            if rc >= 0 {
                groups.truncate(filled.min(len));
                return groups;
            }
            if filled <= len || len >= MAX_GROUPS {
                // No progress possible: keep what fits.
                groups.truncate(len.min(filled.max(1)));
                return groups;
            }
            count = n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_credentials_of_a_socket_pair() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let cred = peer_credentials(&a).unwrap();
        assert_eq!(cred.pid, Some(std::process::id()));
        assert_eq!(cred.uid, rustix::process::geteuid().as_raw());
        assert_eq!(cred.gid, rustix::process::getegid().as_raw());
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(peer_credentials(&file).is_err());
    }
    use crate::config::ConfigEnv;

    fn settings(configure: impl FnOnce(&mut Settings)) -> Settings {
        let mut env = ConfigEnv::from_vars(|_| None, None).unwrap();
        env.is_root = true; // build-users-group = nixbld
        let mut s = Settings::defaults(&env);
        configure(&mut s);
        s
    }

    fn peer(
        uid: u32,
        user: Option<&str>,
        gid: u32,
        group: Option<&str>,
        supplementary: &[&str],
    ) -> PeerInfo {
        PeerInfo {
            pid: Some(4242),
            uid,
            gid,
            user_name: user.map(str::to_owned),
            group_name: group.map(str::to_owned),
            supplementary_groups: supplementary.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn list(items: &str) -> Vec<String> {
        items.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn authorize_table() {
        let root = peer(0, Some("root"), 0, Some("root"), &["root"]);
        let alice = peer(
            1000,
            Some("alice"),
            1000,
            Some("alice"),
            &["alice", "wheel", "users"],
        );
        let bob = peer(1001, Some("bob"), 100, Some("users"), &["users"]);
        let ghost = peer(4321, None, 4321, None, &[]);
        let builder = peer(30001, Some("nixbld1"), 30000, Some("nixbld"), &["nixbld"]);
        let builder_kvm = peer(
            30002,
            Some("nixbld2"),
            30000,
            Some("nixbld"),
            &["nixbld", "kvm"],
        );
        let auto_uid = peer(0x3400_0005, None, 0x3400_0005, None, &[]);
        let past_range = peer(0x3400_0000 + 65536 * 128, None, 1, None, &[]);
        let reject = |who: &str| Decision::Reject(not_allowed_message(who));
        let trusted = Decision::Trusted;
        let allowed = Decision::Allowed;

        /// (what, who, configuration, expected decision)
        type Row<'a> = (&'a str, &'a PeerInfo, fn(&mut Settings), Decision);
        #[rustfmt::skip]
        let table: Vec<Row> = vec![
            ("root with defaults", &root, |_| {}, trusted.clone()),
            ("ordinary user with defaults", &alice, |_| {}, allowed.clone()),
            ("unknown uid with defaults", &ghost, |_| {}, allowed.clone()),
            ("trusted by name", &alice, |s| s.trusted_users = list("root alice"), trusted.clone()),
            ("trusted by primary @group", &bob, |s| s.trusted_users = list("@users"), trusted.clone()),
            ("trusted by supplementary @group", &alice, |s| s.trusted_users = list("@wheel"), trusted.clone()),
            ("@group is not a user name", &alice, |s| s.trusted_users = list("@alice2 wheel"), allowed.clone()),
            ("trusted by *", &bob, |s| s.trusted_users = list("*"), trusted.clone()),
            ("unknown uid trusted by number", &ghost, |s| s.trusted_users = list("4321"), trusted.clone()),
            ("unknown gid matched as @number", &ghost, |s| s.trusted_users = list("@4321"), trusted.clone()),
            ("root is not special", &root, |s| { s.trusted_users = list("alice"); s.allowed_users = list("alice"); }, reject("root")),
            ("allowed by name", &alice, |s| s.allowed_users = list("alice"), allowed.clone()),
            ("allowed by primary @group", &bob, |s| s.allowed_users = list("@users"), allowed.clone()),
            ("allowed by supplementary @group", &alice, |s| s.allowed_users = list("@wheel"), allowed.clone()),
            ("not allowed", &bob, |s| s.allowed_users = list("alice @wheel"), reject("bob")),
            ("empty allowed-users", &alice, |s| s.allowed_users = vec![], reject("alice")),
            ("trusted implies allowed", &alice, |s| { s.allowed_users = vec![]; s.trusted_users = list("alice"); }, trusted.clone()),
            ("unknown uid rejected by number", &ghost, |s| s.allowed_users = list("alice"), reject("4321")),
            ("build group rejected by default", &builder, |_| {}, reject("nixbld1")),
            ("build group rejected despite allowed *", &builder_kvm, |s| s.allowed_users = list("*"), reject("nixbld2")),
            ("trusted build user still rejected", &builder, |s| s.trusted_users = list("nixbld1 @nixbld *"), reject("nixbld1")),
            ("supplementary build group is fine", &alice, |s| s.build_users_group = "wheel".into(), allowed.clone()),
            ("empty build-users-group matches nobody", &builder, |s| s.build_users_group = String::new(), allowed.clone()),
            ("opt-in: build user is BuildUser", &builder, |s| s.allow_build_user_connections = true, Decision::BuildUser { uid: 30001 }),
            ("opt-in: trusted build user only BuildUser", &builder, |s| { s.allow_build_user_connections = true; s.trusted_users = list("*"); }, Decision::BuildUser { uid: 30001 }),
            ("opt-in: ordinary users unaffected", &alice, |s| s.allow_build_user_connections = true, allowed.clone()),
            ("opt-in: allowed-users still applies", &bob, |s| { s.allow_build_user_connections = true; s.allowed_users = vec![]; }, reject("bob")),
            ("auto-allocated uid rejected", &auto_uid, |s| s.auto_allocate_uids = true, reject("872415237")),
            ("auto-allocated uid as BuildUser", &auto_uid, |s| { s.auto_allocate_uids = true; s.allow_build_user_connections = true; }, Decision::BuildUser { uid: 0x3400_0005 }),
            ("uid range ignored without auto-allocate-uids", &auto_uid, |_| {}, allowed.clone()),
            ("uid just past the range", &past_range, |s| s.auto_allocate_uids = true, allowed.clone()),
        ];
        for (what, peer, configure, want) in table {
            let s = settings(configure);
            assert_eq!(authorize(peer, &s), want, "{what}");
        }
    }

    #[test]
    fn rejection_message_is_cppnix_text() {
        assert_eq!(
            not_allowed_message("nixbld1"),
            "user 'nixbld1' is not allowed to connect to the Nix daemon"
        );
        assert_eq!(
            Decision::Reject("x".into()).into_access(),
            Err("x".to_owned())
        );
        assert_eq!(Decision::Trusted.into_access(), Ok(Access::Trusted));
        assert_eq!(
            Access::BuildUser { uid: 1 }.client_trust(),
            ClientTrust::Recursive
        );
        assert_eq!(Access::Allowed.client_trust(), ClientTrust::Untrusted);
        assert!(Access::Trusted.is_trusted() && !Access::Allowed.is_trusted());
        assert_eq!(Decision::Trusted.without_trust(), Decision::Allowed);
        assert_eq!(
            Decision::Reject("m".into()).without_trust(),
            Decision::Reject("m".into())
        );
        assert_eq!(
            Decision::BuildUser { uid: 3 }.without_trust(),
            Decision::BuildUser { uid: 3 }
        );
        assert_eq!(stdio_access(false), Access::Trusted);
        assert_eq!(stdio_access(true), Access::Allowed);
    }

    #[test]
    fn resolve_root_and_unknown_ids() {
        let root = resolve_peer(PeerCred {
            pid: Some(1),
            uid: 0,
            gid: 0,
        });
        assert_eq!(root.user_name.as_deref(), Some("root"));
        assert_eq!(root.group_name.as_deref(), Some("root"));
        assert!(root.supplementary_groups.iter().any(|g| g == "root"));

        let ghost = resolve_peer(PeerCred {
            pid: None,
            uid: 3_999_999_999,
            gid: 3_999_999_998,
        });
        assert_eq!(ghost.user_name, None);
        assert_eq!(ghost.group_name, None);
        assert!(ghost.supplementary_groups.is_empty());
        assert_eq!(ghost.user(), "3999999999");
        assert_eq!(ghost.group(), "3999999998");
    }

    #[test]
    fn resolve_build_user_when_present() {
        // Debian's nix-bin creates nixbld1..10 in group nixbld; skip elsewhere.
        let Some(gid) = group_id("nixbld") else {
            eprintln!("skipping: no 'nixbld' group on this machine");
            return;
        };
        let Some(uid) = std::fs::read_to_string("/etc/passwd").ok().and_then(|p| {
            p.lines()
                .find(|l| l.starts_with("nixbld1:"))
                .and_then(|l| l.split(':').nth(2).and_then(|u| u.parse().ok()))
        }) else {
            eprintln!("skipping: no 'nixbld1' user on this machine");
            return;
        };
        let info = resolve_peer(PeerCred {
            pid: None,
            uid,
            gid,
        });
        assert_eq!(info.user_name.as_deref(), Some("nixbld1"));
        assert_eq!(info.group_name.as_deref(), Some("nixbld"));
        assert!(info.supplementary_groups.iter().any(|g| g == "nixbld"));
        let mut env = ConfigEnv::from_vars(|_| None, None).unwrap();
        env.is_root = true;
        let s = Settings::defaults(&env);
        assert_eq!(
            authorize(&info, &s),
            Decision::Reject(not_allowed_message("nixbld1"))
        );
    }
}
