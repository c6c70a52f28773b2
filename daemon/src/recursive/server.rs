//! The per-build socket: `<build dir>/.nix-socket`, seen in the sandbox as
//! `/build/.nix-socket` (`NIX_REMOTE=unix:///build/.nix-socket`), as CppNix's
//! `recursive-nix` makes it.
//!
//! * [`bind_build_socket`] runs in the builder's `prepare` event, before the builder
//!   starts: the socket is bound through the build dir's descriptor
//!   (`/proc/self/fd/<fd>/.nix-socket`, short and immune to renames), made 0600 and
//!   given to the build user. A small backlog ([`BACKLOG`]): a connection flood queues
//!   in the kernel against this build only.
//! * [`spawn_listener`] serves it on the daemon's runtime: each connection (while the
//!   build has a session slot, see [`BuildView::try_session`]) becomes an ordinary
//!   worker-protocol session bound to the build's view; over the limit it is closed
//!   unanswered. When the view closes (the builder exited) or the daemon shuts down, the
//!   listening socket is closed — later connects are refused — and the sessions end.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing::Instrument;

use super::{BuildView, ServeContext};
use crate::auth::{Access, PeerInfo, peer_credentials};
use crate::listener::Connection;
use crate::session;

/// `listen(2)` backlog of a per-build socket.
pub const BACKLOG: i32 = 64;

/// The socket's name in the build dir (CppNix's).
pub const SOCKET_NAME: &str = ".nix-socket";

/// Session ids of per-build connections, kept apart from the daemon listener's (which
/// count from 1) so that both can be listed in `status`.
static NEXT_SESSION: AtomicU64 = AtomicU64::new(1 << 40);

/// Binds `<build dir>/.nix-socket` through `dir_fd`: mode 0600, owned by `owner` (the
/// build user) when given.
pub fn bind_build_socket(
    dir_fd: BorrowedFd<'_>,
    owner: Option<(u32, u32)>,
) -> io::Result<std::os::unix::net::UnixListener> {
    use rustix::fs::{AtFlags, Gid, Mode, Uid};
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    let path = format!("/proc/self/fd/{}/{SOCKET_NAME}", dir_fd.as_raw_fd());
    let addr = SocketAddrUnix::new(path.as_str())?;
    rustix::net::bind(&fd, &addr)
        .map_err(|e| io::Error::new(e.kind(), format!("binding '{SOCKET_NAME}': {e}")))?;
    // Nothing runs as the build user yet (the builder has not started, and a lease kills
    // leftovers), so the name still is our socket.
    rustix::fs::chmodat(
        dir_fd,
        SOCKET_NAME,
        Mode::from_raw_mode(0o600),
        AtFlags::empty(),
    )?;
    if let Some((uid, gid)) = owner {
        rustix::fs::chownat(
            dir_fd,
            SOCKET_NAME,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
    }
    rustix::net::listen(&fd, BACKLOG)?;
    Ok(std::os::unix::net::UnixListener::from(fd))
}

/// Serves `listener` for `view` on the daemon's runtime until the view closes.
pub fn spawn_listener(
    ctx: &ServeContext,
    view: Arc<BuildView>,
    listener: std::os::unix::net::UnixListener,
) -> io::Result<()> {
    let _enter = ctx.runtime.enter();
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let ctx = ctx.clone();
    let span = tracing::info_span!("recursive", drv = view.drv_path().name());
    ctx.runtime
        .clone()
        .spawn(accept_loop(listener, view, ctx).instrument(span));
    Ok(())
}

async fn accept_loop(listener: tokio::net::UnixListener, view: Arc<BuildView>, ctx: ServeContext) {
    let mut shutdown = ctx.shutdown.clone();
    let mut delay = Duration::from_millis(1);
    loop {
        let stream = tokio::select! {
            biased;
            () = view.closed() => break,
            () = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    delay = Duration::from_millis(1);
                    stream
                }
                Err(e) => {
                    tracing::warn!("accepting a recursive-Nix connection: {e}; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let Some(permit) = view.try_session() else {
            tracing::warn!(
                "closing a recursive-Nix connection: the build already has {} open",
                super::MAX_SESSIONS_PER_BUILD
            );
            continue;
        };
        let Some(shared) = ctx.shared.upgrade() else {
            break;
        };
        let id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
        let cred = peer_credentials(&stream).ok();
        let peer = cred.map(|c| PeerInfo {
            pid: c.pid,
            uid: c.uid,
            gid: c.gid,
            ..PeerInfo::default()
        });
        let uid = cred.map_or(0, |c| c.uid);
        let access = Access::BuildUser { uid };
        let conn = Connection {
            id,
            stream,
            peer: peer.clone(),
            access,
            settings: Arc::clone(&ctx.settings),
            shutdown: ctx.shutdown.clone(),
            session: ctx.registry.register_session(id, peer.as_ref(), access),
        };
        let view = Arc::clone(&view);
        let span = tracing::info_span!("conn", id, uid);
        tokio::spawn(
            async move {
                tracing::debug!("accepted a connection on the build's own socket");
                session::serve_in_view(shared, conn, view, permit).await;
                tracing::debug!("connection closed");
            }
            .instrument(span),
        );
    }
    tracing::debug!("stopped serving the build's socket");
}
