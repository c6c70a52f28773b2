//! The accept loop end to end, in-process: connection cap, authorization, shutdown.
//! Runs as any user; the peer is this test process itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{Semaphore, oneshot};

use nixnest_daemon::auth::Access;
use nixnest_daemon::config::{ConfigEnv, Settings};
use nixnest_daemon::control::{self, Registry};
use nixnest_daemon::listener::{self, Connection, DrainReport, Handler, Listener, ListenerConfig};

/// Generous: only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(20);

fn settings(state: &Path) -> Settings {
    let state = state.display().to_string();
    let env =
        ConfigEnv::from_vars(|n| (n == "NIX_STATE_DIR").then(|| state.clone()), None).unwrap();
    let mut s = Settings::defaults(&env);
    // This process is the peer: trust its user whoever runs the tests.
    s.trusted_users = vec![nixnest_daemon::auth::resolve_peer(me()).user()];
    s
}

fn me() -> nixnest_daemon::auth::PeerCred {
    nixnest_daemon::auth::PeerCred {
        pid: Some(std::process::id()),
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
    }
}

/// Counts sessions, holds each until the gate opens, then writes its access and id.
struct Gated {
    active: AtomicUsize,
    max_active: AtomicUsize,
    served: AtomicUsize,
    gate: Semaphore,
}

impl Default for Gated {
    fn default() -> Self {
        Gated {
            active: AtomicUsize::new(0),
            max_active: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
            gate: Semaphore::new(0),
        }
    }
}

impl Handler for Gated {
    async fn handle<S>(&self, mut conn: Connection<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_active.fetch_max(now, Ordering::SeqCst);
        let permit = self.gate.acquire().await.unwrap();
        permit.forget();
        let reply = format!("{} {}\n", conn.access.as_str(), conn.id);
        let _ = conn.stream.write_all(reply.as_bytes()).await;
        self.served.fetch_add(1, Ordering::SeqCst);
        self.active.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Running {
    socket: PathBuf,
    registry: Arc<Registry>,
    stop: oneshot::Sender<()>,
    force: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<DrainReport>,
    _dir: tempfile::TempDir,
}

fn start<H: Handler>(
    handler: Arc<H>,
    configure: impl FnOnce(&mut Settings, &mut ListenerConfig),
) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&dir.path().join("state"));
    let mut config = ListenerConfig::from_settings(&s);
    config.drain_timeout = PATIENCE;
    configure(&mut s, &mut config);
    let socket = dir.path().join("daemon-socket/socket");
    let bound = listener::bind_unix_socket(&socket, 0o666, listener::BACKLOG).unwrap();
    let registry = Registry::new();
    let listener = Listener::new(
        vec![bound],
        Arc::new(s),
        Arc::clone(&registry),
        handler,
        config,
    )
    .unwrap();
    let (stop, stop_rx) = oneshot::channel::<()>();
    let (force, force_rx) = oneshot::channel::<()>();
    let done = tokio::spawn(listener.run(
        async move {
            let _ = stop_rx.await;
        },
        async move {
            let _ = force_rx.await;
        },
    ));
    Running {
        socket,
        registry,
        stop,
        force,
        done,
        _dir: dir,
    }
}

async fn read_all(mut stream: UnixStream) -> String {
    let mut out = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut out))
        .await
        .expect("timed out reading")
        .unwrap();
    out
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cap_makes_excess_clients_wait_not_fail() {
    const CLIENTS: usize = 200;
    const CAP: usize = 7;
    let handler = Arc::new(Gated::default());
    let running = start(Arc::clone(&handler), |_, c| c.max_connections = CAP);

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let socket = running.socket.clone();
        clients.push(tokio::spawn(async move {
            let stream = UnixStream::connect(&socket)
                .await
                .expect("connect must not fail");
            read_all(stream).await
        }));
    }

    // Exactly CAP sessions run; the others wait in the backlog.
    wait_until("the cap is reached", || {
        handler.active.load(Ordering::SeqCst) == CAP
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(handler.active.load(Ordering::SeqCst), CAP);
    assert_eq!(running.registry.status().sessions.len(), CAP);

    // Let them all through.
    handler.gate.add_permits(CLIENTS);
    let mut ids = Vec::new();
    for client in clients {
        let reply = client.await.unwrap();
        let (access, id) = reply.trim_end().split_once(' ').unwrap();
        assert_eq!(access, "trusted");
        ids.push(id.parse::<u64>().unwrap());
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=CLIENTS as u64).collect::<Vec<_>>());
    assert_eq!(handler.served.load(Ordering::SeqCst), CLIENTS);
    assert_eq!(handler.max_active.load(Ordering::SeqCst), CAP);
    wait_until("sessions unregister", || {
        running.registry.status().sessions.is_empty()
    })
    .await;

    running.stop.send(()).unwrap();
    let report = running.done.await.unwrap();
    assert_eq!(
        report,
        DrainReport {
            finished: 0,
            aborted: 0
        }
    );
}

/// Waits for shutdown, then says goodbye.
struct Polite {
    started: AtomicUsize,
}

impl Handler for Polite {
    async fn handle<S>(&self, mut conn: Connection<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.started.fetch_add(1, Ordering::SeqCst);
        assert!(!conn.shutdown.is_requested());
        conn.shutdown.wait().await;
        assert!(conn.shutdown.is_requested());
        let _ = conn.stream.write_all(b"bye\n").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_drains_sessions() {
    let handler = Arc::new(Polite {
        started: AtomicUsize::new(0),
    });
    let running = start(Arc::clone(&handler), |_, _| {});
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(UnixStream::connect(&running.socket).await.unwrap());
    }
    wait_until("sessions start", || {
        handler.started.load(Ordering::SeqCst) == 5
    })
    .await;

    running.stop.send(()).unwrap();
    for client in clients {
        assert_eq!(read_all(client).await, "bye\n");
    }
    let report = tokio::time::timeout(PATIENCE, running.done)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        report,
        DrainReport {
            finished: 5,
            aborted: 0
        }
    );
    // The listening socket is closed: new clients are refused, not queued.
    let err = UnixStream::connect(&running.socket).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

/// Ignores shutdown.
struct Stubborn;

impl Handler for Stubborn {
    async fn handle<S>(&self, _conn: Connection<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        std::future::pending::<()>().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_and_force_abort_stubborn_sessions() {
    for use_force in [false, true] {
        let running = start(Arc::new(Stubborn), |_, c| {
            c.drain_timeout = if use_force {
                PATIENCE
            } else {
                Duration::from_millis(50)
            };
        });
        let a = UnixStream::connect(&running.socket).await.unwrap();
        let b = UnixStream::connect(&running.socket).await.unwrap();
        wait_until("sessions register", || {
            running.registry.status().sessions.len() == 2
        })
        .await;
        running.stop.send(()).unwrap();
        if use_force {
            running.force.send(()).unwrap();
        }
        let report = tokio::time::timeout(PATIENCE, running.done)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            report,
            DrainReport {
                finished: 0,
                aborted: 2
            },
            "force: {use_force}"
        );
        // Aborted sessions drop their stream (clients see EOF) and their registry entry.
        assert_eq!(read_all(a).await, "");
        assert_eq!(read_all(b).await, "");
        assert!(running.registry.status().sessions.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_peers_get_no_bytes_and_no_session() {
    let handler = Arc::new(Gated::default());
    handler.gate.add_permits(10);
    let running = start(Arc::clone(&handler), |s, _| {
        s.trusted_users = vec![];
        s.allowed_users = vec!["@no-such-group-here".into()];
    });
    for _ in 0..3 {
        let stream = UnixStream::connect(&running.socket).await.unwrap();
        assert_eq!(read_all(stream).await, "");
    }
    assert_eq!(handler.served.load(Ordering::SeqCst), 0);
    running.stop.send(()).unwrap();
    running.done.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_untrusted_downgrades_trusted_peers() {
    let handler = Arc::new(Gated::default());
    handler.gate.add_permits(10);
    let running = start(Arc::clone(&handler), |_, c| c.force_untrusted = true);
    let stream = UnixStream::connect(&running.socket).await.unwrap();
    assert_eq!(read_all(stream).await, "allowed 1\n");
    running.stop.send(()).unwrap();
    running.done.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_one_runs_a_session_over_any_stream() {
    let handler = Gated::default();
    handler.gate.add_permits(1);
    let (ours, theirs) = tokio::io::duplex(64);
    let registry = Registry::new();
    let (_trigger, shutdown) = listener::shutdown_channel();
    let dir = tempfile::tempdir().unwrap();
    let settings = Arc::new(settings(dir.path()));
    let session = listener::serve_one(
        &handler,
        theirs,
        Access::Trusted,
        settings,
        &registry,
        shutdown,
    );
    let client = async move {
        let mut ours = ours;
        let mut reply = String::new();
        ours.read_to_string(&mut reply).await.unwrap();
        reply
    };
    let ((), reply) = tokio::join!(session, client);
    assert_eq!(reply, "trusted 1\n");
    assert!(registry.status().sessions.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_socket_reports_open_sessions() {
    let handler = Arc::new(Gated::default());
    let running = start(Arc::clone(&handler), |_, _| {});
    let control_path = running.socket.parent().unwrap().join("ctl/control");
    let control_socket = control::bind_control_socket(&control_path).unwrap();
    let (trigger, shutdown) = listener::shutdown_channel();
    let server = tokio::spawn(control::serve_control(
        control_socket,
        Arc::clone(&running.registry),
        shutdown,
    ));

    let clients: Vec<_> = futures_connect(&running.socket, 3).await;
    wait_until("sessions register", || {
        running.registry.status().sessions.len() == 3
    })
    .await;
    let status = control::query_status(&control_path).await.unwrap();
    assert_eq!(status.sessions.len(), 3);
    assert!(
        status
            .sessions
            .iter()
            .all(|s| s.access == "trusted" && s.pid == Some(std::process::id()))
    );
    assert_eq!(status.pid, std::process::id());

    // Raw protocol: several requests on one connection, errors answered in-line.
    let mut raw = UnixStream::connect(&control_path).await.unwrap();
    raw.write_all(b"{\"cmd\":\"nope\"}\n{\"cmd\":\"status\"}\n")
        .await
        .unwrap();
    raw.shutdown().await.unwrap();
    let text = read_all(raw).await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0], r#"{"ok":false,"error":"unknown command 'nope'"}"#);
    assert!(lines[1].starts_with(r#"{"ok":true,"status":"#));

    handler.gate.add_permits(3);
    for c in clients {
        read_all(c).await;
    }
    trigger.trigger();
    server.await.unwrap();
    running.stop.send(()).unwrap();
    running.done.await.unwrap();
}

async fn futures_connect(path: &Path, n: usize) -> Vec<UnixStream> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(UnixStream::connect(path).await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_users_need_a_running_build() {
    let handler = Arc::new(Gated::default());
    handler.gate.add_permits(10);
    let my_group = nixnest_daemon::auth::resolve_peer(me()).group();
    let running = start(Arc::clone(&handler), move |s, _| {
        // Pretend this process is a build user.
        s.build_users_group = my_group;
        s.allow_build_user_connections = true;
    });
    // No build runs as our uid: refused without a byte.
    let stream = UnixStream::connect(&running.socket).await.unwrap();
    assert_eq!(read_all(stream).await, "");
    assert_eq!(handler.served.load(Ordering::SeqCst), 0);

    let build = running.registry.register_build(control::NewBuild {
        drv_path: "/nix/store/00000000000000000000000000000000-seed.drv".into(),
        build_uid: Some(me().uid),
        session: None,
    });
    let stream = UnixStream::connect(&running.socket).await.unwrap();
    assert_eq!(read_all(stream).await, "build-user 2\n");

    drop(build);
    let stream = UnixStream::connect(&running.socket).await.unwrap();
    assert_eq!(read_all(stream).await, "");
    running.stop.send(()).unwrap();
    running.done.await.unwrap();
}
