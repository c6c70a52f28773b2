//! The accept loop, in the shape of tokio's mini-redis `server.rs`: a [`Listener`] that
//! caps concurrent connections, backs off on accept errors instead of dying, and shuts
//! down gracefully; each accepted connection is authorized and handed to a
//! [`Handler`] supplied by the caller (the worker-protocol session).
//!
//! # Where the sockets come from
//!
//! * [`bind_unix_socket`]: the daemon socket path (`NIX_DAEMON_SOCKET_PATH`, default
//!   `<state>/daemon-socket/socket`). Parent directories are created, a *stale* socket is
//!   unlinked (a live one is an error: two daemons must not steal each other's socket),
//!   and the socket is made 0666 as CppNix does — access control is the directory's mode
//!   plus [`authorize`].
//! * systemd socket activation ([`take_activation_fds`]): `LISTEN_PID` must be us,
//!   `LISTEN_FDS` sockets start at fd 3, `LISTEN_FDNAMES` names them. Sockets named
//!   `nix-daemon.socket` / `nixnest-daemon.socket`, or unnamed, are served; the variables
//!   are removed so children do not inherit them.
//!
//! # Per connection
//!
//! `SO_PEERCRED` → [`resolve_peer`] (NSS, on the blocking pool) → [`authorize`]. A
//! `BuildUser` decision stands only if the [`Registry`] has a build running as that uid.
//! A rejection is logged and the socket closed without a protocol byte, as CppNix does.
//! Otherwise the session is registered and the handler runs with the stream, the
//! [`Access`], the daemon settings and a [`Shutdown`] it can watch.
//!
//! # Limits and shutdown
//!
//! A permit from a `Semaphore` of `max-connections` is taken *before* `accept`, so excess
//! clients wait in the kernel backlog rather than being refused. The backlog is large
//! ([`BACKLOG`]) because a non-blocking `connect` to a Unix socket whose backlog is full
//! fails with `EAGAIN` instead of waiting. On the stop signal the listening sockets are
//! closed, sessions see [`Shutdown`], and the loop waits up to `drain_timeout` (or until
//! the force signal) before aborting what is left.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::auth::{
    Access, Decision, PeerInfo, authorize, no_build_message, peer_credentials, resolve_peer,
};
use crate::config::Settings;
use crate::control::{Registry, SessionGuard};

/// `listen(2)` backlog for the daemon socket (the kernel caps it at `somaxconn`).
pub const BACKLOG: i32 = 4096;

/// `LISTEN_FDNAMES` entries we serve; unnamed sockets are served too.
pub const ACTIVATION_NAMES: &[&str] = &["nix-daemon.socket", "nixnest-daemon.socket"];

/// First fd passed by systemd (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// More than this many activation fds is a misconfiguration, not a plan.
const MAX_ACTIVATION_FDS: usize = 64;

// ---------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------

/// A session's view of daemon shutdown: poll [`Shutdown::is_requested`] between requests,
/// or `select!` on [`Shutdown::wait`].
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    pub fn is_requested(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown is requested (or the daemon side is gone).
    pub async fn wait(&mut self) {
        let _ = self.rx.wait_for(|requested| *requested).await;
    }
}

/// The sending half: requests shutdown for every [`Shutdown`] subscribed from it.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

/// A fresh trigger and one receiver.
pub fn shutdown_channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

// ---------------------------------------------------------------------------------------
// The handler seam
// ---------------------------------------------------------------------------------------

/// An admitted connection, handed to the [`Handler`].
#[derive(Debug)]
pub struct Connection<S> {
    /// Daemon-unique, also the session id in the registry and the `conn{id}` span.
    pub id: u64,
    pub stream: S,
    /// `None` for `--stdio`, where the peer is unknown.
    pub peer: Option<PeerInfo>,
    pub access: Access,
    /// The daemon's settings; apply `SetOptions` to a copy
    /// ([`Settings::apply_client_options`]).
    pub settings: Arc<Settings>,
    pub shutdown: Shutdown,
    /// Keeps the session listed in `status`; report the current op with `set_op`.
    pub session: SessionGuard,
}

/// Serves one connection to completion. Implemented by the worker-protocol session; the
/// stream is a Unix socket for daemon connections and stdin/stdout for `--stdio`.
pub trait Handler: Send + Sync + 'static {
    fn handle<S>(&self, conn: Connection<S>) -> impl Future<Output = ()> + Send
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static;
}

/// Runs one session over an arbitrary byte stream (`--stdio`, tests): no credentials, no
/// authorization — the caller decides `access`, as CppNix trusts a `--stdio` peer.
pub async fn serve_one<H, S>(
    handler: &H,
    stream: S,
    access: Access,
    settings: Arc<Settings>,
    registry: &Arc<Registry>,
    shutdown: Shutdown,
) where
    H: Handler,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let id = 1;
    let span = tracing::info_span!(
        "conn",
        id,
        uid = tracing::field::Empty,
        pid = tracing::field::Empty
    );
    async {
        tracing::info!(
            "serving a session on standard input/output ({})",
            access.as_str()
        );
        let session = registry.register_session(id, None, access);
        let conn = Connection {
            id,
            stream,
            peer: None,
            access,
            settings,
            shutdown,
            session,
        };
        handler.handle(conn).await;
    }
    .instrument(span)
    .await
}

// ---------------------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------------------

fn with_path(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} '{}': {e}", path.display()))
}

/// Binds a listening Unix socket at `path` with permissions `mode` (see module docs).
/// Must be called inside a tokio runtime.
pub fn bind_unix_socket(path: &Path, mode: u32, backlog: i32) -> io::Result<UnixListener> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| with_path(parent, "creating", e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "another daemon is already listening on '{}'",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path).map_err(|e| with_path(path, "removing stale socket", e))?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "'{}' exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(with_path(path, "inspecting", e)),
    }
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    let addr = SocketAddrUnix::new(path).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path '{}' is too long (at most 107 bytes)",
                path.display()
            ),
        )
    })?;
    rustix::net::bind(&fd, &addr).map_err(|e| with_path(path, "binding", e.into()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| with_path(path, "chmod", e))?;
    rustix::net::listen(&fd, backlog).map_err(|e| with_path(path, "listening on", e.into()))?;
    UnixListener::from_std(std::os::unix::net::UnixListener::from(fd))
}

/// A socket passed by systemd.
#[derive(Debug)]
pub struct ActivatedSocket {
    pub fd: OwnedFd,
    /// From `LISTEN_FDNAMES`; `None` when absent, empty or systemd's `unknown`.
    pub name: Option<String>,
}

impl ActivatedSocket {
    /// Whether this is a daemon socket (named as such, or unnamed).
    pub fn is_daemon_socket(&self) -> bool {
        self.name
            .as_deref()
            .is_none_or(|n| ACTIVATION_NAMES.contains(&n))
    }

    /// `fd 3 (nix-daemon.socket)` for logs.
    pub fn describe(&self) -> String {
        use std::os::fd::AsRawFd;
        format!(
            "fd {} ({})",
            self.fd.as_raw_fd(),
            self.name.as_deref().unwrap_or("unnamed")
        )
    }

    /// Checks that the fd is a listening Unix stream socket and wraps it for tokio.
    /// Must be called inside a tokio runtime.
    pub fn into_listener(self) -> io::Result<UnixListener> {
        use rustix::net::{AddressFamily, SocketType, sockopt};
        let described = self.describe();
        let bad =
            |why: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{described}: {why}"));
        if sockopt::socket_domain(&self.fd).map_err(|_| bad("not a socket"))? != AddressFamily::UNIX
        {
            return Err(bad("not a Unix-domain socket"));
        }
        if sockopt::socket_type(&self.fd)? != SocketType::STREAM {
            return Err(bad("not a stream socket"));
        }
        if !sockopt::socket_acceptconn(&self.fd)? {
            return Err(bad("not a listening socket (use Accept=no)"));
        }
        rustix::io::ioctl_fionbio(&self.fd, true)?;
        UnixListener::from_std(std::os::unix::net::UnixListener::from(self.fd))
    }
}

/// Why the systemd activation variables could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("LISTEN_FDS is set but LISTEN_PID ({found}) is not this process ({pid})")]
    WrongPid { found: String, pid: u32 },
    #[error("LISTEN_FDS='{0}' is not a count between 1 and {MAX_ACTIVATION_FDS}")]
    BadCount(String),
    #[error("fd {fd} announced by LISTEN_FDS is not open")]
    NotOpen { fd: RawFd },
}

/// Takes the sockets systemd passed (`None` when not socket-activated) and removes
/// `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` from the environment.
///
/// # Safety
///
/// Call it while the process is single-threaded (before starting the tokio runtime):
/// it modifies the environment. The fds from 3 on must not be owned by anything else.
pub unsafe fn take_activation_fds() -> Result<Option<Vec<ActivatedSocket>>, ActivationError> {
    let fds = std::env::var("LISTEN_FDS").ok();
    let pid = std::env::var("LISTEN_PID").unwrap_or_default();
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        // SAFETY: the caller guarantees no other thread reads the environment now.
        unsafe { std::env::remove_var(var) };
    }
    let Some(fds) = fds else {
        return Ok(None);
    };
    if pid != std::process::id().to_string() {
        return Err(ActivationError::WrongPid {
            found: pid,
            pid: std::process::id(),
        });
    }
    let count = fds
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_ACTIVATION_FDS).contains(n))
        .ok_or_else(|| ActivationError::BadCount(fds.clone()))?;
    let names: Vec<&str> = names.split(':').collect();
    let mut sockets = Vec::with_capacity(count);
    for (index, fd) in (LISTEN_FDS_START..).take(count).enumerate() {
        // SAFETY: only used to probe whether the fd is open.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let flags =
            rustix::io::fcntl_getfd(borrowed).map_err(|_| ActivationError::NotOpen { fd })?;
        rustix::io::fcntl_setfd(borrowed, flags | rustix::io::FdFlags::CLOEXEC)
            .map_err(|_| ActivationError::NotOpen { fd })?;
        // SAFETY: systemd passed this open fd to us and nothing else in the process owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = names
            .get(index)
            .filter(|n| !n.is_empty() && **n != "unknown")
            .map(|n| (*n).to_owned());
        sockets.push(ActivatedSocket { fd: owned, name });
    }
    Ok(Some(sockets))
}

// ---------------------------------------------------------------------------------------
// The listener
// ---------------------------------------------------------------------------------------

/// Tunables of the accept loop.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// Sessions served at once (`max-connections`); at least 1.
    pub max_connections: usize,
    /// How long shutdown waits for sessions before aborting them.
    pub drain_timeout: Duration,
    /// `--force-untrusted`: authorize as usual, then serve trusted peers as untrusted.
    pub force_untrusted: bool,
}

impl ListenerConfig {
    pub fn from_settings(settings: &Settings) -> Self {
        ListenerConfig {
            max_connections: settings.max_connections,
            drain_timeout: Duration::from_secs(60),
            force_untrusted: false,
        }
    }
}

/// How shutdown went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Sessions that were open at shutdown and finished on their own.
    pub finished: usize,
    /// Sessions aborted at the drain deadline or by the force signal.
    pub aborted: usize,
}

/// Exponential accept-error backoff: 1 ms, 2 ms, … capped at 1 s, reset by a success.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(1);
    const MAX: Duration = Duration::from_secs(1);

    fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }
}

/// What every connection task shares.
struct Shared<H> {
    settings: Arc<Settings>,
    registry: Arc<Registry>,
    handler: Arc<H>,
    force_untrusted: bool,
}

/// The daemon's accept loop.
pub struct Listener<H> {
    sockets: Vec<UnixListener>,
    shared: Arc<Shared<H>>,
    limit: Arc<Semaphore>,
    trigger: ShutdownTrigger,
    drain_timeout: Duration,
    next_id: u64,
    /// Rotates which socket is polled first, so one busy socket cannot starve another.
    poll_start: usize,
}

impl<H: Handler> Listener<H> {
    pub fn new(
        sockets: Vec<UnixListener>,
        settings: Arc<Settings>,
        registry: Arc<Registry>,
        handler: Arc<H>,
        config: ListenerConfig,
    ) -> io::Result<Self> {
        if sockets.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no socket to listen on",
            ));
        }
        let (trigger, _) = shutdown_channel();
        Ok(Listener {
            sockets,
            shared: Arc::new(Shared {
                settings,
                registry,
                handler,
                force_untrusted: config.force_untrusted,
            }),
            limit: Arc::new(Semaphore::new(config.max_connections.max(1))),
            trigger,
            drain_timeout: config.drain_timeout,
            next_id: 0,
            poll_start: 0,
        })
    }

    /// A receiver that fires when this listener starts shutting down (for side services
    /// such as the control socket).
    pub fn subscribe_shutdown(&self) -> Shutdown {
        self.trigger.subscribe()
    }

    async fn accept(&mut self) -> io::Result<UnixStream> {
        let count = self.sockets.len();
        let start = self.poll_start;
        self.poll_start = (start + 1) % count;
        let sockets = &self.sockets;
        std::future::poll_fn(|cx| {
            for i in 0..count {
                let Some(socket) = sockets.get((start + i) % count) else {
                    continue;
                };
                if let Poll::Ready(result) = socket.poll_accept(cx) {
                    return Poll::Ready(result.map(|(stream, _)| stream));
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Accepts until `stop` resolves, then drains (see module docs). `force` resolving at
    /// any point during the drain aborts the remaining sessions at once.
    pub async fn run(
        mut self,
        stop: impl Future<Output = ()>,
        force: impl Future<Output = ()>,
    ) -> DrainReport {
        let mut stop = pin!(stop);
        let mut backoff = Backoff::new();
        let mut tasks = JoinSet::new();
        loop {
            while let Some(done) = tasks.try_join_next() {
                note_task_end(done);
            }
            let permit = tokio::select! {
                biased;
                () = &mut stop => break,
                permit = Arc::clone(&self.limit).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                biased;
                () = &mut stop => break,
                accepted = self.accept() => accepted,
            };
            let stream = match accepted {
                Ok(stream) => {
                    backoff.reset();
                    stream
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::error!("accepting a connection: {e}; retrying in {delay:?}");
                    tokio::select! {
                        biased;
                        () = &mut stop => break,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            self.next_id += 1;
            let id = self.next_id;
            let shared = Arc::clone(&self.shared);
            let shutdown = self.trigger.subscribe();
            tasks.spawn(async move {
                let _permit = permit;
                serve_connection(id, stream, shared, shutdown).await;
            });
        }

        // Stop accepting: clients that connect from now on are refused by the kernel.
        self.sockets.clear();
        while let Some(done) = tasks.try_join_next() {
            note_task_end(done);
        }
        let open = tasks.len();
        tracing::info!("shutting down: stopped accepting; waiting for {open} open session(s)");
        self.trigger.trigger();
        drain(tasks, self.drain_timeout, force).await
    }
}

async fn drain(
    mut tasks: JoinSet<()>,
    timeout: Duration,
    force: impl Future<Output = ()>,
) -> DrainReport {
    let mut report = DrainReport::default();
    let mut force = pin!(force);
    let deadline = tokio::time::sleep(timeout);
    let mut deadline = pin!(deadline);
    loop {
        tokio::select! {
            done = tasks.join_next() => match done {
                Some(done) => {
                    note_task_end(done);
                    report.finished += 1;
                }
                None => return report,
            },
            () = &mut deadline => {
                tracing::warn!("{} session(s) still open after {timeout:?}; aborting them", tasks.len());
                break;
            }
            () = &mut force => {
                tracing::warn!("forced shutdown; aborting {} session(s)", tasks.len());
                break;
            }
        }
    }
    report.aborted = tasks.len();
    tasks.shutdown().await;
    report
}

fn note_task_end(result: Result<(), tokio::task::JoinError>) {
    match result {
        Err(e) if e.is_panic() => tracing::error!("a session panicked: {e}"),
        _ => {}
    }
}

async fn serve_connection<H: Handler>(
    id: u64,
    stream: UnixStream,
    shared: Arc<Shared<H>>,
    shutdown: Shutdown,
) {
    let cred = match peer_credentials(stream.as_fd()) {
        Ok(cred) => cred,
        Err(e) => {
            tracing::warn!(
                conn = id,
                "cannot read the peer's credentials ({e}); closing the connection"
            );
            return;
        }
    };
    let span = tracing::info_span!("conn", id, uid = cred.uid, pid = tracing::field::Empty);
    if let Some(pid) = cred.pid {
        span.record("pid", pid);
    }
    async move {
        let peer = tokio::task::spawn_blocking(move || resolve_peer(cred))
            .await
            .unwrap_or_else(|_| PeerInfo {
                pid: cred.pid,
                uid: cred.uid,
                gid: cred.gid,
                ..PeerInfo::default()
            });
        let mut decision = authorize(&peer, &shared.settings);
        if shared.force_untrusted {
            decision = decision.without_trust();
        }
        // A build user is only served while a build runs as that uid (fail closed).
        decision = match decision {
            Decision::BuildUser { uid } if shared.registry.build_for_uid(uid).is_none() => {
                Decision::Reject(no_build_message(&peer.user()))
            }
            other => other,
        };
        let access = match decision.into_access() {
            Ok(access) => access,
            Err(message) => {
                // CppNix closes without writing anything; so do we (the stream drops).
                tracing::error!("error processing connection: {message}");
                return;
            }
        };
        let pid = peer
            .pid
            .map_or_else(|| "<unknown>".to_owned(), |p| p.to_string());
        let suffix = match access {
            Access::Trusted => " (trusted)",
            Access::BuildUser { .. } => " (build user)",
            Access::Allowed => "",
        };
        tracing::info!(
            "accepted connection from pid {pid}, user {}{suffix}",
            peer.user()
        );
        let session = shared.registry.register_session(id, Some(&peer), access);
        let conn = Connection {
            id,
            stream,
            peer: Some(peer),
            access,
            settings: Arc::clone(&shared.settings),
            shutdown,
            session,
        };
        shared.handler.handle(conn).await;
        tracing::debug!("connection closed");
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_one_second_and_resets() {
        let mut b = Backoff::new();
        let delays: Vec<u64> = (0..13).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(
            delays,
            vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 1000, 1000]
        );
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(1));
    }

    #[test]
    fn activation_names() {
        let fd = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let named = |name: Option<&str>| ActivatedSocket {
            fd: fd(),
            name: name.map(str::to_owned),
        };
        assert!(named(None).is_daemon_socket());
        assert!(named(Some("nix-daemon.socket")).is_daemon_socket());
        assert!(named(Some("nixnest-daemon.socket")).is_daemon_socket());
        assert!(!named(Some("gc-roots.socket")).is_daemon_socket());
        assert!(named(Some("x")).describe().ends_with("(x)"));
    }

    #[tokio::test]
    async fn activated_fd_must_be_a_listening_unix_socket() {
        let not_socket = ActivatedSocket {
            fd: OwnedFd::from(std::fs::File::open("/dev/null").unwrap()),
            name: None,
        };
        let err = not_socket.into_listener().unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let connected = ActivatedSocket {
            fd: OwnedFd::from(a),
            name: Some("nix-daemon.socket".into()),
        };
        let err = connected.into_listener().unwrap_err();
        assert!(err.to_string().contains("not a listening socket"), "{err}");
    }

    #[tokio::test]
    async fn bind_replaces_stale_but_not_live_sockets_or_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/socket");
        let live = bind_unix_socket(&path, 0o666, 16).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o666
        );
        let err = bind_unix_socket(&path, 0o666, 16).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        drop(live); // the file stays behind, like after a crash
        assert!(path.exists());
        let _again = bind_unix_socket(&path, 0o600, 16).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let file = dir.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        assert_eq!(
            bind_unix_socket(&file, 0o666, 16).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        let long = dir.path().join("x".repeat(120));
        assert_eq!(
            bind_unix_socket(&long, 0o666, 16).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
