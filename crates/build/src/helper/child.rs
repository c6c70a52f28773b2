//! The builder process between `clone` and `execve`: namespaces, mounts, the chroot,
//! credentials, seccomp — CppNix 2.8's `runChild`, in the same order:
//!
//! 1. new session; stdout and stderr = the log; stdin = `/dev/null`; default signals;
//! 2. seccomp (and no-new-privileges), while still privileged — failure is fatal only
//!    with build users, as in CppNix;
//! 3. sandboxed: wait until the helper wrote the uid/gid maps; bring up `lo` (private
//!    network); hostname `localhost`, domain name `(none)`; make `/` private; bind the
//!    chroot onto itself; bind `<chroot><store>` onto itself and make it **shared** (so
//!    later bind mounts from the helper's saved namespace reach us); the minimal `/dev`;
//!    every bind mount; a new `/proc`; a tmpfs on `/dev/shm`; a new devpts instance;
//!    `unshare(CLONE_NEWNS)` (a second mount namespace, so the first one — which the helper
//!    saved — keeps the host's root); `pivot_root`, `chroot(".")`, detach the old root;
//!    switch to the sandbox uid/gid;
//! 4. `chdir` to the build dir; close every other descriptor; personality
//!    (`ADDR_NO_RANDOMIZE`, optionally `PER_LINUX32`/`UNAME26`); umask 022 (as current Nix);
//!    `RLIMIT_CORE` soft 0;
//! 5. unsandboxed with a build user: supplementary groups, gid, uid (checked);
//! 6. `PR_SET_PDEATHSIG(SIGKILL)` (after the last credential change, which would reset it),
//!    so the builder dies if the helper does;
//! 7. `execve`.
//!
//! Any failure before `execve` is written to the error pipe (close-on-exec, so a successful
//! `execve` closes it empty) and the process exits with status 1. A failing `execve` itself
//! is reported on the log ("error: executing '…': …") with exit status 1, as CppNix does.
//!
//! This runs in a child of the single-threaded helper, so allocating is fine.

use std::convert::Infallible;
use std::ffi::{CString, OsStr};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::etc::{SANDBOX_GID, SANDBOX_UID};
use crate::seccomp;
use crate::spec::{SandboxSpec, Spec};

type R<T> = std::result::Result<T, String>;

fn errno_msg(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn cstr(s: impl AsRef<OsStr>) -> R<CString> {
    CString::new(s.as_ref().as_bytes()).map_err(|_| "path contains a NUL byte".to_owned())
}

/// Checks a libc return value.
fn check(r: libc::c_int, what: impl FnOnce() -> String) -> R<()> {
    if r == -1 {
        Err(errno_msg(&what()))
    } else {
        Ok(())
    }
}

/// Runs the builder's setup and `execve`s it; never returns.
pub fn run(spec: &Spec, user_namespace: bool, sync: Option<OwnedFd>, err: OwnedFd) -> ! {
    let mut err_fd = err.as_raw_fd();
    // The descriptor may be moved by `close_other_fds`; we track its number ourselves.
    std::mem::forget(err);
    let r = setup_and_exec(spec, user_namespace, sync, &mut err_fd);
    let msg = match r {
        Err(m) => m,
        Ok(never) => match never {},
    };
    // SAFETY: writing to the error pipe and terminating the child without running the
    // helper's destructors.
    unsafe {
        libc::write(err_fd, msg.as_ptr().cast(), msg.len());
        libc::_exit(1)
    }
}

fn setup_and_exec(
    spec: &Spec,
    user_namespace: bool,
    sync: Option<OwnedFd>,
    err_fd: &mut RawFd,
) -> R<Infallible> {
    common_child_init()?;

    if spec.filter_syscalls {
        let installed = seccomp::native_rules()
            .map_err(|e| e.to_string())
            .and_then(|rules| seccomp::program(rules).map_err(|e| e.to_string()))
            .and_then(|prog| {
                seccomp::install(&prog, spec.allow_new_privileges)
                    .map_err(|e| format!("unable to load seccomp BPF program: {e}"))
            });
        if let Err(e) = installed
            && spec.build_user.is_some()
        {
            return Err(e);
        }
    } else if !spec.allow_new_privileges {
        // SAFETY: prctl with integer arguments.
        check(
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
            || "setting no-new-privileges".into(),
        )?;
    }

    if let Some(sb) = &spec.sandbox {
        if let Some(sync) = sync {
            let mut s = Vec::new();
            std::fs::File::from(sync)
                .read_to_end(&mut s)
                .map_err(|e| format!("reading from the helper: {e}"))?;
            if s != b"1" {
                return Err("user namespace initialisation failed".into());
            }
        }
        enter_sandbox(spec, sb, user_namespace)?;
    }

    let cwd = cstr(&spec.cwd)?;
    // SAFETY: plain system calls on valid C strings.
    check(unsafe { libc::chdir(cwd.as_ptr()) }, || {
        format!("changing into '{}'", spec.cwd)
    })?;

    *err_fd = close_other_fds(*err_fd)?;
    set_personality(spec);
    // As current Nix: a builder never inherits a permissive umask from the daemon.
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(0o022) };
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_CORE, &mut lim) == 0 {
            lim.rlim_cur = 0;
            libc::setrlimit(libc::RLIMIT_CORE, &lim);
        }
    }

    if spec.sandbox.is_none()
        && let Some(ids) = &spec.build_user
    {
        let groups: Vec<libc::gid_t> = ids.supplementary_gids.clone();
        // SAFETY: plain credential system calls.
        unsafe {
            if !groups.is_empty() {
                check(libc::setgroups(groups.len(), groups.as_ptr()), || {
                    "cannot set supplementary groups of build user".into()
                })?;
            }
            if libc::setgid(ids.gid) == -1
                || libc::getgid() != ids.gid
                || libc::getegid() != ids.gid
            {
                return Err(errno_msg("setgid failed"));
            }
            if libc::setuid(ids.uid) == -1
                || libc::getuid() != ids.uid
                || libc::geteuid() != ids.uid
            {
                return Err(errno_msg("setuid failed"));
            }
        }
    }

    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };

    let builder = cstr(&spec.builder)?;
    let args: Vec<CString> = spec.args.iter().map(cstr).collect::<R<_>>()?;
    let env: Vec<CString> = spec.env.iter().map(cstr).collect::<R<_>>()?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of valid C strings that outlive the call.
    unsafe { libc::execve(builder.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    let e = std::io::Error::last_os_error();
    let line = format!("error: executing '{}': {e}\n", spec.builder);
    // SAFETY: writing to our stderr (the log) and exiting.
    unsafe {
        libc::write(2, line.as_ptr().cast(), line.len());
        libc::_exit(1)
    }
}

/// New session, standard descriptors, default signal handling.
fn common_child_init() -> R<()> {
    // SAFETY: plain system calls; the sigset is initialised by sigemptyset.
    unsafe {
        check(libc::setsid(), || "creating a new session".into())?;
        check(libc::dup2(2, 1), || "cannot dup stderr into stdout".into())?;
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        check(null, || "cannot open '/dev/null'".into())?;
        check(libc::dup2(null, 0), || {
            "cannot dup null device into stdin".into()
        })?;
        if null > 2 {
            libc::close(null);
        }
        // Rust ignores SIGPIPE; the builder must not inherit that.
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
    Ok(())
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> std::io::Result<()> {
    let to_c = |p: &OsStr| {
        CString::new(p.as_bytes()).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
    };
    let src = source.map(|s| to_c(s.as_os_str())).transpose()?;
    let tgt = to_c(target.as_os_str())?;
    let fs = fstype.map(|s| to_c(OsStr::new(s))).transpose()?;
    let dat = data.map(|s| to_c(OsStr::new(s))).transpose()?;
    // SAFETY: valid C strings or NULL.
    let r = unsafe {
        libc::mount(
            src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            tgt.as_ptr(),
            fs.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            dat.as_ref().map_or(std::ptr::null(), |s| s.as_ptr().cast()),
        )
    };
    if r == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn mount_or(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
    what: impl FnOnce() -> String,
) -> R<()> {
    mount(source, target, fstype, flags, data).map_err(|e| format!("{}: {e}", what()))
}

/// `mkdir -p` (mode 0777 & umask, like CppNix's `createDirs`).
fn create_dirs(p: &Path) -> R<()> {
    std::fs::create_dir_all(p).map_err(|e| format!("creating directory '{}': {e}", p.display()))
}

/// The path `inside` (absolute) under `root`.
fn under(root: &Path, inside: &str) -> PathBuf {
    root.join(inside.trim_start_matches('/'))
}

/// Bind-mounts `source` on `target` (CppNix's `doBind`): the target is created as a
/// directory or an empty file to match the source (which is `stat`ed, following links).
/// `read_only`: then remounted read-only (keeping the source's locked flags).
pub(super) fn do_bind(source: &Path, target: &Path, optional: bool, read_only: bool) -> R<()> {
    let st = match std::fs::metadata(source) {
        Ok(st) => st,
        Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(format!(
                "getting attributes of path '{}': {e}",
                source.display()
            ));
        }
    };
    if st.is_dir() {
        create_dirs(target)?;
    } else {
        if let Some(parent) = target.parent() {
            create_dirs(parent)?;
        }
        if std::fs::symlink_metadata(target).is_err() {
            std::fs::write(target, b"")
                .map_err(|e| format!("creating '{}': {e}", target.display()))?;
        }
    }
    mount_or(
        Some(source),
        target,
        Some(""),
        libc::MS_BIND | libc::MS_REC,
        None,
        || {
            format!(
                "bind mount from '{}' to '{}' failed",
                source.display(),
                target.display()
            )
        },
    )?;
    if read_only {
        remount_read_only(target)?;
    }
    Ok(())
}

/// Remounts the bind mount at `target` read-only. In a user namespace the flags the mount
/// inherited (`nosuid`, `nodev`, `noexec`, atime) are locked and must be repeated.
pub(super) fn remount_read_only(target: &Path) -> R<()> {
    let st = rustix::fs::statvfs(target)
        .map_err(|e| format!("getting mount flags of '{}': {e}", target.display()))?;
    let f = st.f_flag;
    use rustix::fs::StatVfsMountFlags as M;
    let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
    for (m, ms) in [
        (M::NOSUID, libc::MS_NOSUID),
        (M::NODEV, libc::MS_NODEV),
        (M::NOEXEC, libc::MS_NOEXEC),
        (M::NOATIME, libc::MS_NOATIME),
        (M::NODIRATIME, libc::MS_NODIRATIME),
        (M::RELATIME, libc::MS_RELATIME),
    ] {
        if f.contains(m) {
            flags |= ms;
        }
    }
    mount_or(None, target, None, flags, None, || {
        format!("remounting '{}' read-only", target.display())
    })
}

fn loopback_up() -> R<()> {
    // SAFETY: a socket and an ioctl on a zero-initialised ifreq naming "lo".
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::IPPROTO_IP,
        );
        check(fd, || "cannot open IP socket".into())?;
        let fd = OwnedFd::from_raw_fd(fd);
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags =
            (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as libc::c_short;
        check(
            libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr),
            || "cannot set loopback interface flags".into(),
        )?;
    }
    Ok(())
}

fn enter_sandbox(spec: &Spec, sb: &SandboxSpec, user_namespace: bool) -> R<()> {
    let root = PathBuf::from(&sb.root);
    if sb.private_network {
        loopback_up()?;
    }
    // SAFETY: constant C strings with their lengths.
    unsafe {
        check(libc::sethostname(c"localhost".as_ptr(), 9), || {
            "cannot set host name".into()
        })?;
        check(libc::setdomainname(c"(none)".as_ptr(), 6), || {
            "cannot set domain name".into()
        })?;
    }
    mount_or(
        None,
        Path::new("/"),
        None,
        libc::MS_PRIVATE | libc::MS_REC,
        None,
        || "unable to make '/' private".into(),
    )?;
    mount_or(Some(&root), &root, None, libc::MS_BIND, None, || {
        format!("unable to bind mount '{}'", root.display())
    })?;
    let store = under(&root, &sb.store_dir);
    mount_or(Some(&store), &store, None, libc::MS_BIND, None, || {
        format!("unable to bind mount the Nix store '{}'", store.display())
    })?;
    mount_or(None, &store, None, libc::MS_SHARED, None, || {
        format!("unable to make '{}' shared", store.display())
    })?;

    // (source, target, optional, read-only)
    let mut binds: Vec<(PathBuf, PathBuf, bool, bool)> = Vec::new();
    if sb.minimal_dev {
        create_dirs(&root.join("dev/shm"))?;
        create_dirs(&root.join("dev/pts"))?;
        let mut nodes = vec!["/dev/full"];
        if sb.kvm && Path::new("/dev/kvm").exists() {
            nodes.push("/dev/kvm");
        }
        nodes.extend([
            "/dev/null",
            "/dev/random",
            "/dev/tty",
            "/dev/urandom",
            "/dev/zero",
        ]);
        for n in nodes {
            binds.push((PathBuf::from(n), under(&root, n), false, false));
        }
        for (target, link) in [
            ("/proc/self/fd", "dev/fd"),
            ("/proc/self/fd/0", "dev/stdin"),
            ("/proc/self/fd/1", "dev/stdout"),
            ("/proc/self/fd/2", "dev/stderr"),
        ] {
            let l = root.join(link);
            std::os::unix::fs::symlink(target, &l)
                .map_err(|e| format!("creating symlink '{}': {e}", l.display()))?;
        }
    }
    for b in &sb.binds {
        if b.source == "/proc" {
            continue;
        }
        binds.push((
            PathBuf::from(&b.source),
            under(&root, &b.target),
            b.optional,
            b.read_only,
        ));
    }
    for (source, target, optional, read_only) in &binds {
        do_bind(source, target, *optional, *read_only)?;
    }

    let proc_dir = root.join("proc");
    create_dirs(&proc_dir)?;
    mount_or(
        Some(Path::new("none")),
        &proc_dir,
        Some("proc"),
        0,
        None,
        || "mounting /proc".into(),
    )?;
    if sb.minimal_dev && Path::new("/dev/shm").exists() {
        let opts = format!("size={}", sb.dev_shm_size);
        mount_or(
            Some(Path::new("none")),
            &root.join("dev/shm"),
            Some("tmpfs"),
            0,
            Some(&opts),
            || "mounting /dev/shm".into(),
        )?;
    }
    if Path::new("/dev/pts/ptmx").exists()
        && std::fs::symlink_metadata(root.join("dev/ptmx")).is_err()
        && !sb.dev_pts_bound
    {
        match mount(
            Some(Path::new("none")),
            &root.join("dev/pts"),
            Some("devpts"),
            0,
            Some("newinstance,mode=0620"),
        ) {
            Ok(()) => {
                let l = root.join("dev/ptmx");
                std::os::unix::fs::symlink("/dev/pts/ptmx", &l)
                    .map_err(|e| format!("creating symlink '{}': {e}", l.display()))?;
                let ptmx = root.join("dev/pts/ptmx");
                let c = cstr(ptmx.as_os_str())?;
                // SAFETY: valid C string.
                check(unsafe { libc::chmod(c.as_ptr(), 0o666) }, || {
                    format!("setting permissions on '{}'", ptmx.display())
                })?;
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                do_bind(Path::new("/dev/pts"), &root.join("dev/pts"), false, false)?;
                do_bind(Path::new("/dev/ptmx"), &root.join("dev/ptmx"), false, false)?;
            }
            Err(e) => return Err(format!("mounting /dev/pts: {e}")),
        }
    }

    // SAFETY: plain system calls on valid C strings.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS), || {
            "unsharing mount namespace".into()
        })?;
        let croot = cstr(root.as_os_str())?;
        check(libc::chdir(croot.as_ptr()), || {
            format!("cannot change directory to '{}'", root.display())
        })?;
        check(libc::mkdir(c"real-root".as_ptr(), 0), || {
            "cannot create real-root directory".into()
        })?;
        check(
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c"real-root".as_ptr())
                as libc::c_int,
            || {
                format!(
                    "cannot pivot old root directory onto '{}/real-root'",
                    root.display()
                )
            },
        )?;
        check(libc::chroot(c".".as_ptr()), || {
            format!("cannot change root directory to '{}'", root.display())
        })?;
        check(
            libc::umount2(c"real-root".as_ptr(), libc::MNT_DETACH),
            || "cannot unmount real root filesystem".into(),
        )?;
        check(libc::rmdir(c"real-root".as_ptr()), || {
            "cannot remove real-root directory".into()
        })?;
        let (uid, gid) = if user_namespace {
            (SANDBOX_UID, SANDBOX_GID)
        } else {
            let ids = spec
                .build_user
                .as_ref()
                .ok_or("no build user and no user namespace")?;
            (ids.uid, ids.gid)
        };
        check(libc::setgid(gid), || "setgid failed".into())?;
        check(libc::setuid(uid), || "setuid failed".into())?;
    }
    Ok(())
}

/// Closes every descriptor but 0–2 and the error pipe, which ends up as fd 3 (returned).
fn close_other_fds(keep: RawFd) -> R<RawFd> {
    // Move the error pipe to 3 so one range covers the rest.
    let keep = if keep != 3 {
        // SAFETY: duplicating our own descriptor onto 3, close-on-exec.
        let r = unsafe { libc::dup3(keep, 3, libc::O_CLOEXEC) };
        check(r, || "duplicating the error pipe".into())?;
        3
    } else {
        keep
    };
    // SAFETY: close_range on descriptors above the ones we keep.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            (keep + 1) as libc::c_uint,
            libc::c_uint::MAX,
            0,
        )
    };
    if r != 0 {
        // Old kernel: close one by one.
        let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) };
        let max = if max <= 0 { 1024 } else { max.min(1 << 20) } as RawFd;
        for fd in (keep + 1)..max {
            // SAFETY: closing descriptors we don't use any more.
            unsafe { libc::close(fd) };
        }
    }
    Ok(keep)
}

fn set_personality(spec: &Spec) {
    const PER_LINUX32: libc::c_ulong = 0x0008;
    const UNAME26: libc::c_ulong = 0x0020000;
    const ADDR_NO_RANDOMIZE: libc::c_ulong = 0x0040000;
    // SAFETY: personality with integer arguments; failures are ignored as in CppNix.
    unsafe {
        if spec.linux32 {
            libc::personality(PER_LINUX32);
        }
        if spec.uname26 {
            let cur = libc::personality(0xffff_ffff);
            if cur != -1 {
                libc::personality(cur as libc::c_ulong | UNAME26);
            }
        }
        let cur = libc::personality(0xffff_ffff);
        if cur != -1 {
            libc::personality(cur as libc::c_ulong | ADDR_NO_RANDOMIZE);
        }
    }
}
