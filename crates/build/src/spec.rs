//! The protocol between a build's caller (the daemon) and its helper process.
//!
//! The helper is a fresh, single-threaded program (see [`crate::helper`]) started with
//!
//! | fd | what |
//! |---|---|
//! | 0 | a pipe carrying one JSON [`Spec`]; the caller closes it after writing |
//! | 1 | the control socket: a `SOCK_SEQPACKET` socketpair end, one JSON message per packet |
//! | 2 | the build log: the pseudo-terminal slave (or pipe) the builder's stdout and stderr go to |
//!
//! Control messages, caller → helper ([`Request`]):
//!
//! * `Kill` — kill the builder and everything it started (timeout, log limit, cancel);
//! * `MakeVisible {source, target}` — bind-mount host directory `source` onto `target`
//!   inside the running sandbox (recursive Nix). The packet carries one file descriptor
//!   (`SCM_RIGHTS`), the write end of a pipe on which the helper answers with one JSON
//!   [`Reply`] and closes; so any thread may ask, without going through the build loop.
//!
//! Helper → caller ([`Event`]), in this order: `Started` (the builder was `execve`d) or
//! `SetupFailed`; then `Exited` with the builder's wait status, after every process of the
//! build is gone. A closed control socket (the caller went away) makes the helper kill the
//! build.
//!
//! Setup handshake: instead of CppNix's `\2\n` on the log, the builder's setup code holds a
//! close-on-exec pipe to the helper. A successful `execve` closes it with nothing written;
//! a setup error writes its message there first. So "started" means exactly "the builder
//! program is running".

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Largest control packet accepted.
pub const MAX_PACKET: usize = 64 * 1024;

/// Largest spec accepted by the helper.
pub const MAX_SPEC: usize = 256 * 1024 * 1024;

/// Everything the helper needs to start one builder.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spec {
    /// Program to `execve` (a path as the builder sees it).
    pub builder: String,
    /// Full argv, `argv[0]` included.
    pub args: Vec<String>,
    /// `name=value` strings.
    pub env: Vec<String>,
    /// Directory to start in (as the builder sees it).
    pub cwd: String,
    /// The build user; `None` = the helper's own ids (root or the unprivileged daemon).
    pub build_user: Option<BuildIds>,
    /// The chroot and namespaces; `None` = an unsandboxed build.
    pub sandbox: Option<SandboxSpec>,
    pub filter_syscalls: bool,
    pub allow_new_privileges: bool,
    /// `personality(PER_LINUX32)` (i686 on x86_64, armv6l/armv7l).
    pub linux32: bool,
    /// `personality(UNAME26)` (`impersonate-linux-26`).
    pub uname26: bool,
}

/// A build user's ids.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BuildIds {
    pub uid: u32,
    pub gid: u32,
    /// Set with `setgroups` for unsandboxed builds (sandboxed builds drop them).
    pub supplementary_gids: Vec<u32>,
}

/// The sandbox of one build.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Host path of the directory that becomes `/`.
    pub root: String,
    /// The store dir, the same path inside and outside.
    pub store_dir: String,
    /// New network namespace with only `lo` (not for fixed-output derivations).
    pub private_network: bool,
    /// Try `CLONE_NEWUSER` (uid 1000 / gid 100 inside).
    pub user_namespace: bool,
    /// Bind mounts, in order: `target` (absolute, inside) ← `source` (host).
    pub binds: Vec<Bind>,
    /// Build the minimal `/dev` (device nodes, symlinks, `shm`, `pts`).
    pub minimal_dev: bool,
    /// Also bind `/dev/kvm`.
    pub kvm: bool,
    /// `size=` of the `/dev/shm` tmpfs.
    pub dev_shm_size: String,
    /// Whether `/dev/pts` is bound from the host (then no new devpts instance).
    pub dev_pts_bound: bool,
    /// The in-sandbox build dir, the home in `/etc/passwd`.
    pub build_dir: String,
}

/// One bind mount.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Bind {
    pub target: String,
    pub source: String,
    /// Skip silently if `source` does not exist.
    pub optional: bool,
    /// Remount read-only (store paths: the builder must not change its inputs, even when
    /// it runs with the uid that owns them).
    #[serde(default)]
    pub read_only: bool,
}

/// Caller → helper.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    Kill,
    MakeVisible { source: String, target: String },
}

/// Helper → caller.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum Event {
    /// The builder is running.
    Started {
        /// Host pid of the builder (the sandbox's pid 1).
        pid: i32,
        /// Whether the sandbox has its own user namespace.
        user_namespace: bool,
        /// Microseconds from the helper's start to the builder's `execve`.
        setup_us: u64,
    },
    /// The builder could not be started. `sandbox_unavailable`: the namespaces could not be
    /// created at all (the caller may fall back to an unsandboxed build).
    SetupFailed {
        message: String,
        sandbox_unavailable: bool,
    },
    /// The builder exited (wait status), and all its processes are gone.
    Exited { status: i32 },
}

/// Answer to `MakeVisible`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Reply {
    Ok,
    Error(String),
}

/// Sends one JSON packet with optional descriptors.
pub fn send<T: Serialize>(sock: BorrowedFd<'_>, msg: &T, fds: &[BorrowedFd<'_>]) -> Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(|e| Error::Helper(format!("encoding: {e}")))?;
    if bytes.len() > MAX_PACKET {
        return Err(Error::Helper("control message too large".into()));
    }
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && (fds.len() > 4 || !anc.push(SendAncillaryMessage::ScmRights(fds))) {
        return Err(Error::Helper("too many descriptors".into()));
    }
    loop {
        match rustix::net::sendmsg(
            sock,
            &[std::io::IoSlice::new(&bytes)],
            &mut anc,
            SendFlags::NOSIGNAL,
        ) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(Error::io("sending a control message", e)),
        }
    }
}

/// Receives one JSON packet and its descriptors; `None` at end of stream.
pub fn recv<T: for<'de> Deserialize<'de>>(
    sock: BorrowedFd<'_>,
) -> Result<Option<(T, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_PACKET];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let n = loop {
        match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut buf)],
            &mut anc,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(r) => break r,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(Error::io("receiving a control message", e)),
        }
    };
    let mut fds = Vec::new();
    for m in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    if n.bytes == 0 {
        return Ok(None);
    }
    if n.flags.contains(rustix::net::ReturnFlags::TRUNC) {
        return Err(Error::Helper("control message truncated".into()));
    }
    let data = buf.get(..n.bytes).unwrap_or_default();
    let msg = serde_json::from_slice(data)
        .map_err(|e| Error::Helper(format!("bad control message: {e}")))?;
    Ok(Some((msg, fds)))
}

/// A `SOCK_SEQPACKET` socketpair (close-on-exec).
pub fn socketpair() -> Result<(OwnedFd, OwnedFd)> {
    rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| Error::io("creating the control socket", e))
}

/// Writes a [`Reply`] to a reply pipe and closes it.
pub fn write_reply(fd: OwnedFd, reply: &Reply) {
    use std::io::Write;
    if let Ok(bytes) = serde_json::to_vec(reply) {
        let mut f = std::fs::File::from(fd);
        let _ = f.write_all(&bytes);
    }
}

/// Reads a [`Reply`] from a reply pipe (until EOF).
pub fn read_reply(fd: OwnedFd) -> Result<Reply> {
    use std::io::Read;
    let mut data = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_PACKET as u64)
        .read_to_end(&mut data)
        .map_err(|e| Error::io("reading the helper's reply", e))?;
    if data.is_empty() {
        return Err(Error::Helper(
            "the build finished before the request was answered".into(),
        ));
    }
    serde_json::from_slice(&data).map_err(|e| Error::Helper(format!("bad reply: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn packets_round_trip_with_descriptors() {
        let (a, b) = socketpair().unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        send(
            a.as_fd(),
            &Request::MakeVisible {
                source: "/s/x".into(),
                target: "/c/s/x".into(),
            },
            &[w.as_fd()],
        )
        .unwrap();
        send(a.as_fd(), &Request::Kill, &[]).unwrap();
        let (m, fds): (Request, _) = recv(b.as_fd()).unwrap().unwrap();
        assert!(matches!(m, Request::MakeVisible { .. }));
        assert_eq!(fds.len(), 1);
        drop(w);
        let mut fds = fds;
        write_reply(fds.remove(0), &Reply::Error("nope".into()));
        assert_eq!(read_reply(r).unwrap(), Reply::Error("nope".into()));
        let (m, fds): (Request, _) = recv(b.as_fd()).unwrap().unwrap();
        assert!(matches!(m, Request::Kill));
        assert!(fds.is_empty());
        drop(a);
        assert!(recv::<Request>(b.as_fd()).unwrap().is_none());
    }
}
