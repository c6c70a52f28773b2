//! The accept loop survives accept errors: with the fd table full, `accept` fails with
//! `EMFILE`; the loop logs, backs off and serves the waiting client once fds are free.
//!
//! Alone in its own test binary because it fills this process's fd table.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Semaphore;

use nixnest_daemon::config::{ConfigEnv, Settings};
use nixnest_daemon::control::Registry;
use nixnest_daemon::listener::{self, Connection, Handler, Listener, ListenerConfig};

const PATIENCE: Duration = Duration::from_secs(20);

/// Holds each session until the gate opens, replies, then *leaks* the server-side fd so
/// that finishing a session frees no descriptor.
struct Leaky {
    gate: Semaphore,
}

impl Handler for Leaky {
    async fn handle<S>(&self, mut conn: Connection<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.gate.acquire().await.unwrap().forget();
        conn.stream
            .write_all(format!("{}\n", conn.id).as_bytes())
            .await
            .unwrap();
        std::mem::forget(conn.stream);
    }
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .matches(needle)
            .count()
    }
}

async fn read_line(stream: &mut UnixStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8];
    while byte[0] != b'\n' {
        tokio::time::timeout(PATIENCE, stream.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        buf.push(byte[0]);
    }
    String::from_utf8(buf).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_loop_survives_emfile() {
    let log = Captured::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let dir = tempfile::tempdir().unwrap();
    let env = ConfigEnv::from_vars(|_| None, None).unwrap();
    let mut settings = Settings::defaults(&env);
    settings.allowed_users = vec!["*".into()];
    let socket = dir.path().join("socket");
    let bound = listener::bind_unix_socket(&socket, 0o666, listener::BACKLOG).unwrap();
    let handler = Arc::new(Leaky {
        gate: Semaphore::new(0),
    });
    let mut config = ListenerConfig::from_settings(&settings);
    config.max_connections = 1;
    let listener = Listener::new(
        vec![bound],
        Arc::new(settings),
        Registry::new(),
        Arc::clone(&handler),
        config,
    )
    .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(listener.run(
        async move {
            let _ = stop_rx.await;
        },
        std::future::pending(),
    ));

    // A takes the only permit; B waits in the backlog without costing the server an fd.
    let mut a = UnixStream::connect(&socket).await.unwrap();
    let mut b = UnixStream::connect(&socket).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Fill the fd table (under a low soft limit, so this is quick).
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let low = limit.maximum.map_or(512, |hard| hard.min(512));
    setrlimit(
        Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(low),
            maximum: limit.maximum,
        },
    )
    .unwrap();
    let mut filler = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => filler.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("unexpected error filling the fd table: {e}"),
        }
        assert!(filler.len() < 1 << 20, "no fd limit to hit");
    }

    // A finishes (leaking its fd); the loop now accepts B and gets EMFILE, repeatedly.
    handler.gate.add_permits(2);
    assert_eq!(read_line(&mut a).await, "1\n");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while log.count("accepting a connection") < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no accept errors were logged"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Free descriptors: the loop recovers and serves B.
    drop(filler);
    assert_eq!(read_line(&mut b).await, "2\n");
    assert!(log.count("Too many open files") >= 1);

    stop_tx.send(()).unwrap();
    tokio::time::timeout(PATIENCE, done).await.unwrap().unwrap();
}
