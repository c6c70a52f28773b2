//! The build helper: a fresh, single-threaded process that starts one builder and
//! supervises it until every process of the build is gone.
//!
//! Why a separate program: the daemon is a multi-threaded tokio process. After `fork` only
//! async-signal-safe calls are allowed there, and a multi-threaded process cannot `setns`
//! into a mount or user namespace — which recursive Nix needs for the whole build. A fresh
//! `execve` of a program calling [`crate::helper_main`] has one thread, so it can `clone`
//! the builder, run arbitrary setup code in the child, and later fork children that enter
//! the sandbox's saved namespaces.
//!
//! Lifecycle (descriptors and messages: [`crate::spec`]):
//!
//! 1. read the [`Spec`] from fd 0, then point fd 0 at `/dev/null`;
//! 2. sandboxed: drop supplementary groups (as root), `clone` with `CLONE_NEWPID |
//!    CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS` (+ `CLONE_NEWNET` unless fixed-output, +
//!    `CLONE_NEWUSER` when enabled; `EINVAL` → retry without `CLONE_NEWPID`; `EPERM`/`EINVAL`
//!    → retry without `CLONE_NEWUSER`; still failing → `SetupFailed { sandbox_unavailable }`),
//!    write `uid_map` = `1000 <host uid> 1`, `setgroups` = `deny`, `gid_map` = `100 <host gid>
//!    1` (host ids = the build user's, or our own), write the chroot's `/etc/passwd` and
//!    `/etc/group` now that the sandbox ids are known, keep descriptors to the child's *user*
//!    and *first mount* namespaces, and let the child go on (a byte on a pipe);
//!    unsandboxed: `fork`;
//! 3. wait for the setup handshake, send `Started` or `SetupFailed`;
//! 4. serve requests until the builder exits: `Kill` (and a closed control socket) kills
//!    the sandbox's pid 1 — which takes the whole pid namespace down — plus the builder's
//!    process group and, with a build user, every process of that uid; `MakeVisible`
//!    forks a child that `setns`es into the saved user and mount namespaces and bind-mounts
//!    the path into the chroot's store, from where it propagates (shared subtree) into the
//!    builder's view;
//! 5. reap the builder, kill whatever is left (process group, build uid), send `Exited`.
//!
//! The helper asks the kernel to kill it if its parent dies, and the builder asks the same
//! of the helper, so no build outlives a crashed daemon.

mod child;

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

use rustix::event::{PollFd, PollFlags};

use crate::error::{Error, Result};
use crate::etc;
use crate::fsutil;
use crate::spec::{self, Event, Reply, Request, Spec};

/// Entry point of the helper program: never returns. Exit status 0 after a normal
/// supervision (whatever the builder did), 1 if the helper itself failed.
///
/// Call it first thing in `main` (before any runtime, logger or thread is started): the
/// helper must be single-threaded, and refuses to run otherwise.
pub fn helper_main() -> ! {
    let started = Instant::now();
    let code = match check_single_threaded().and_then(|()| run(started)) {
        Ok(()) => 0,
        Err(e) => {
            // stderr is the build log: the message ends up where the user looks.
            let _ = writeln!(std::io::stderr(), "nixnest build helper: {e}");
            1
        }
    };
    std::process::exit(code)
}

/// `Threads: 1` in `/proc/self/status`.
fn check_single_threaded() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| Error::io("reading /proc/self/status", e))?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .map(str::trim);
    if threads == Some("1") {
        Ok(())
    } else {
        Err(Error::Helper(format!(
            "the build helper must be single-threaded, but this process has {} threads; call helper_main before starting any",
            threads.unwrap_or("?")
        )))
    }
}

/// A running builder and what we keep to serve it.
struct Running {
    pid: i32,
    /// `/proc/<pid>/ns/user` (when a user namespace is used) and `/proc/<pid>/ns/mnt`
    /// (the first, pre-`pivot_root` mount namespace), sandboxed builds only.
    user_ns: Option<OwnedFd>,
    mount_ns: Option<OwnedFd>,
}

fn control() -> BorrowedFd<'static> {
    // SAFETY: fd 1 is the control socket for the whole life of the helper.
    unsafe { BorrowedFd::borrow_raw(1) }
}

fn read_spec() -> Result<Spec> {
    let mut data = Vec::new();
    std::io::stdin()
        .lock()
        .take(spec::MAX_SPEC as u64)
        .read_to_end(&mut data)
        .map_err(|e| Error::io("reading the build spec", e))?;
    serde_json::from_slice(&data).map_err(|e| Error::Helper(format!("bad build spec: {e}")))
}

fn run(started: Instant) -> Result<()> {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    let spec = read_spec()?;
    let null = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDWR,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::io("opening /dev/null", e))?;
    rustix::stdio::dup2_stdin(&null).map_err(|e| Error::io("dup2", e))?;
    drop(null);

    let running = match start(&spec, started) {
        Ok(r) => r,
        Err((message, sandbox_unavailable)) => {
            spec::send(
                control(),
                &Event::SetupFailed {
                    message,
                    sandbox_unavailable,
                },
                &[],
            )?;
            return Ok(());
        }
    };
    supervise(&spec, &running)
}

/// Starts the builder; on failure returns the message and whether the sandbox itself
/// could not be created.
fn start(spec: &Spec, started: Instant) -> std::result::Result<Running, (String, bool)> {
    let fail = |m: String| (m, false);
    let (err_r, err_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| fail(format!("creating a pipe: {e}")))?;

    let mut running = match &spec.sandbox {
        None => {
            // SAFETY: we are single-threaded; the child only runs the setup code.
            let pid = unsafe { libc::fork() };
            if pid < 0 {
                return Err(fail(format!("fork: {}", std::io::Error::last_os_error())));
            }
            if pid == 0 {
                drop(err_r);
                child::run(spec, false, None, err_w);
            }
            Running {
                pid,
                user_ns: None,
                mount_ns: None,
            }
        }
        Some(sb) => {
            let (sync_r, sync_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(|e| fail(format!("creating a pipe: {e}")))?;
            // SAFETY: plain system calls.
            if unsafe { libc::getuid() } == 0
                && unsafe { libc::setgroups(0, std::ptr::null()) } == -1
            {
                return Err(fail(format!(
                    "setgroups failed: {}",
                    std::io::Error::last_os_error()
                )));
            }
            let mut flags = libc::CLONE_NEWPID
                | libc::CLONE_NEWNS
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWUTS
                | libc::SIGCHLD;
            if sb.private_network {
                flags |= libc::CLONE_NEWNET;
            }
            let mut user_namespace = sb.user_namespace;
            if user_namespace {
                flags |= libc::CLONE_NEWUSER;
            }
            let mut pid = raw_clone(flags);
            if pid == -1 && errno() == libc::EINVAL {
                flags &= !libc::CLONE_NEWPID;
                pid = raw_clone(flags);
            }
            if user_namespace && pid == -1 && matches!(errno(), libc::EPERM | libc::EINVAL) {
                user_namespace = false;
                flags &= !libc::CLONE_NEWUSER;
                pid = raw_clone(flags);
            }
            if pid == -1 {
                let e = std::io::Error::last_os_error();
                let unavailable = matches!(e.raw_os_error(), Some(libc::EPERM | libc::EINVAL));
                return Err((format!("cloning builder process: {e}"), unavailable));
            }
            if pid == 0 {
                drop(err_r);
                drop(sync_w);
                child::run(spec, user_namespace, Some(sync_r), err_w);
            }
            drop(sync_r);
            let kill_child = |m: String| {
                // SAFETY: killing and reaping our own child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
                (m, false)
            };
            let (uid, gid) = match &spec.build_user {
                Some(ids) => (ids.uid, ids.gid),
                // SAFETY: plain system calls.
                None => unsafe { (libc::getuid(), libc::getgid()) },
            };
            if user_namespace {
                let write = |name: &str, text: String| {
                    let p = format!("/proc/{pid}/{name}");
                    std::fs::write(&p, text).map_err(|e| format!("writing '{p}': {e}"))
                };
                write("uid_map", format!("{} {uid} 1", etc::SANDBOX_UID))
                    .and_then(|()| write("setgroups", "deny".into()))
                    .and_then(|()| write("gid_map", format!("{} {gid} 1", etc::SANDBOX_GID)))
                    .map_err(kill_child)?;
            } else if spec.build_user.is_none() {
                return Err(kill_child(
                    "cannot perform a sandboxed build because user namespaces are not enabled; check /proc/sys/user/max_user_namespaces"
                        .into(),
                ));
            }
            let (suid, sgid) = if user_namespace {
                (etc::SANDBOX_UID, etc::SANDBOX_GID)
            } else {
                (uid, gid)
            };
            write_etc(sb, suid, sgid).map_err(|e| kill_child(e.to_string()))?;
            let open_ns = |name: &str| {
                let p = format!("/proc/{pid}/ns/{name}");
                rustix::fs::open(
                    p.as_str(),
                    rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map_err(|e| format!("getting sandbox namespace '{p}': {e}"))
            };
            let mount_ns = open_ns("mnt").map_err(kill_child)?;
            let user_ns = if user_namespace {
                Some(open_ns("user").map_err(kill_child)?)
            } else {
                None
            };
            rustix::io::write(&sync_w, b"1")
                .map_err(|e| kill_child(format!("signalling the builder: {e}")))?;
            drop(sync_w);
            Running {
                pid,
                user_ns,
                mount_ns: Some(mount_ns),
            }
        }
    };
    drop(err_w);

    // The handshake: EOF = `execve` succeeded; data = a setup error.
    let mut msg = Vec::new();
    let _ = std::fs::File::from(err_r)
        .take(64 * 1024)
        .read_to_end(&mut msg);
    if !msg.is_empty() {
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(running.pid, &mut status, 0) };
        running.mount_ns = None;
        return Err((
            format!(
                "while setting up the build environment: {}",
                String::from_utf8_lossy(&msg)
            ),
            false,
        ));
    }
    let setup_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    spec::send(
        control(),
        &Event::Started {
            pid: running.pid,
            user_namespace: running.user_ns.is_some(),
            setup_us,
        },
        &[],
    )
    .map_err(|e| {
        kill_all(spec, running.pid);
        (e.to_string(), false)
    })?;
    Ok(running)
}

/// Writes the chroot's `/etc/passwd` and `/etc/group` for the sandbox ids.
fn write_etc(sb: &spec::SandboxSpec, uid: u32, gid: u32) -> Result<()> {
    let etc_dir = fsutil::open_dir(&Path::new(&sb.root).join("etc"))?;
    fsutil::write_new_file_at(
        etc_dir.as_fd(),
        c"passwd",
        etc::passwd(uid, gid, &sb.build_dir).as_bytes(),
        0o644,
    )
    .map_err(|e| Error::io("writing the sandbox's /etc/passwd", e))?;
    fsutil::write_new_file_at(etc_dir.as_fd(), c"group", etc::group(gid).as_bytes(), 0o644)
        .map_err(|e| Error::io("writing the sandbox's /etc/group", e))?;
    Ok(())
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `clone` without a new stack: the child continues like after `fork`.
fn raw_clone(flags: libc::c_int) -> i32 {
    // SAFETY: without CLONE_VM the child gets a copy of our memory, as with fork; we are
    // single-threaded.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    i32::try_from(r).unwrap_or(-1)
}

/// Kills the builder, its process group (unsandboxed builds), and — with a build user —
/// every process of that uid.
fn kill_all(spec: &Spec, pid: i32) {
    // SAFETY: signals to our own child and its group.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::kill(-pid, libc::SIGKILL);
    }
    if let Some(ids) = &spec.build_user {
        let _ = crate::users::kill_user(ids.uid);
    }
}

fn supervise(spec: &Spec, running: &Running) -> Result<()> {
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(running.pid)
            .ok_or_else(|| Error::Helper("bad builder pid".into()))?,
        rustix::process::PidfdFlags::empty(),
    )
    .map_err(|e| Error::io("pidfd_open", e))?;
    let mut control_open = true;
    let ctl = control();
    loop {
        let mut fds = vec![PollFd::new(&pidfd, PollFlags::IN)];
        if control_open {
            fds.push(PollFd::new(&ctl, PollFlags::IN));
        }
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(Error::io("poll", e)),
        }
        let exited = !fds[0].revents().is_empty();
        let control_ready = fds.get(1).is_some_and(|f| !f.revents().is_empty());
        if exited {
            break;
        }
        if control_ready {
            match spec::recv::<Request>(control()) {
                Ok(Some((Request::Kill, _))) => kill_all(spec, running.pid),
                Ok(Some((Request::MakeVisible { source, target }, mut fds))) => {
                    let reply = match make_visible(running, &source, &target) {
                        Ok(()) => Reply::Ok,
                        Err(e) => Reply::Error(e),
                    };
                    if !fds.is_empty() {
                        spec::write_reply(fds.remove(0), &reply);
                    }
                }
                Ok(None) | Err(_) => {
                    // The caller is gone: nobody will judge this build.
                    control_open = false;
                    kill_all(spec, running.pid);
                }
            }
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: reaping our own child.
        let r = unsafe { libc::waitpid(running.pid, &mut status, 0) };
        if r == running.pid {
            break;
        }
        if errno() != libc::EINTR {
            return Err(Error::io("waitpid", std::io::Error::last_os_error()));
        }
    }
    // Whatever the builder left behind in its process group or under the build uid.
    // SAFETY: signal to the builder's (former) process group.
    unsafe { libc::kill(-running.pid, libc::SIGKILL) };
    if let Some(ids) = &spec.build_user {
        crate::users::kill_user(ids.uid)?;
    }
    if control_open {
        spec::send(control(), &Event::Exited { status }, &[])?;
    }
    Ok(())
}

/// Bind-mounts host directory `source` onto `target` (a host path below the chroot) in
/// the sandbox's first mount namespace, from a child that enters the saved namespaces.
fn make_visible(running: &Running, source: &str, target: &str) -> std::result::Result<(), String> {
    let Some(mount_ns) = &running.mount_ns else {
        return Err("the build is not sandboxed".into());
    };
    let (err_r, err_w) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| e.to_string())?;
    // SAFETY: we are single-threaded; the child only enters namespaces and mounts.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(err_r);
        let r = enter_and_bind(running.user_ns.as_ref(), mount_ns, source, target);
        let code = match r {
            Ok(()) => 0,
            Err(m) => {
                let _ = std::fs::File::from(err_w).write_all(m.as_bytes());
                1
            }
        };
        // SAFETY: ending the child without running the helper's destructors.
        unsafe { libc::_exit(code) };
    }
    drop(err_w);
    let mut msg = Vec::new();
    let _ = std::fs::File::from(err_r)
        .take(64 * 1024)
        .read_to_end(&mut msg);
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if crate::status::status_ok(status) {
        Ok(())
    } else if msg.is_empty() {
        Err(format!(
            "could not add path '{source}' to sandbox: {}",
            crate::status::status_to_string(status)
        ))
    } else {
        Err(format!(
            "could not add path '{source}' to sandbox: {}",
            String::from_utf8_lossy(&msg)
        ))
    }
}

fn enter_and_bind(
    user_ns: Option<&OwnedFd>,
    mount_ns: &OwnedFd,
    source: &str,
    target: &str,
) -> std::result::Result<(), String> {
    // SAFETY: setns on namespace descriptors we hold, in a single-threaded child.
    unsafe {
        if let Some(u) = user_ns
            && libc::setns(u.as_raw_fd(), libc::CLONE_NEWUSER) == -1
        {
            return Err(format!(
                "entering sandbox user namespace: {}",
                std::io::Error::last_os_error()
            ));
        }
        if libc::setns(mount_ns.as_raw_fd(), libc::CLONE_NEWNS) == -1 {
            return Err(format!(
                "entering sandbox mount namespace: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    child::do_bind(Path::new(source), Path::new(target), false, true)
}
