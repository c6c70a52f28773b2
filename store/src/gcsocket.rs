//! The GC roots server: `<state>/gc-socket/socket` (mode 0666), served while a GC runs.
//!
//! Protocol (CppNix's): a client that could not take `gc.lock` shared connects and sends
//! lines `"<full store path>\n"`; for each we record the path's hash part as a temp root,
//! wait while that hash part is the one currently being deleted, and reply the byte `1`.
//! Garbage lines are logged and acknowledged too. Each client is served by its own thread;
//! shutdown closes every connection and joins the threads.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use rustix::event::{PollFd, PollFlags};

use crate::error::{Error, IoContext, Result};
use crate::paths;

/// State shared between the GC and the roots server.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Hash parts of all temp roots (matching by hash part also protects `X.lock`,
    /// `X.chroot`, `X.check`).
    pub temp_roots: HashSet<String>,
    /// Hash part of the path being deleted right now.
    pub pending: Option<String>,
}

/// [`Shared`] plus the condition variable the server waits on.
#[derive(Debug, Default)]
pub(crate) struct SharedState {
    pub state: Mutex<Shared>,
    pub wakeup: Condvar,
}

impl SharedState {
    pub fn lock(&self) -> MutexGuard<'_, Shared> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `hash` as being deleted (or nothing), waking waiting clients.
    pub fn set_pending(&self, hash: Option<String>) {
        self.lock().pending = hash;
        self.wakeup.notify_all();
    }
}

/// A running roots server; stops (and removes nothing: CppNix leaves the socket file)
/// when dropped.
pub(crate) struct RootsServer {
    shutdown_w: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<SharedState>,
}

impl RootsServer {
    /// Binds the socket (replacing a leftover one) and starts serving.
    pub fn start(
        socket_path: &Path,
        store_dir: PathBuf,
        shared: Arc<SharedState>,
    ) -> Result<RootsServer> {
        if let Some(dir) = socket_path.parent() {
            std::fs::create_dir_all(dir).ctx("creating directory", dir)?;
        }
        match std::fs::remove_file(socket_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io_at("removing", socket_path, e)),
        }
        let listener = UnixListener::bind(socket_path).ctx("binding to socket", socket_path)?;
        std::fs::set_permissions(socket_path, std::fs::Permissions::from_mode(0o666))
            .ctx("changing permissions of", socket_path)?;
        listener
            .set_nonblocking(true)
            .ctx("making socket non-blocking", socket_path)?;
        let (r, w) = rustix::pipe::pipe().map_err(|e| Error::io("creating pipe", e.into()))?;
        let shared2 = shared.clone();
        let thread = std::thread::Builder::new()
            .name("gc-roots-server".into())
            .spawn(move || serve(listener, r, store_dir, shared2))
            .map_err(|e| Error::io("spawning GC roots server", e))?;
        Ok(RootsServer {
            shutdown_w: Some(w),
            thread: Some(thread),
            shared,
        })
    }
}

impl Drop for RootsServer {
    fn drop(&mut self) {
        if let Some(w) = self.shutdown_w.take() {
            let _ = rustix::io::write(&w, b"x");
        }
        self.shared.set_pending(None);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: UnixListener, shutdown: OwnedFd, store_dir: PathBuf, shared: Arc<SharedState>) {
    let mut clients: Vec<(UnixStream, JoinHandle<()>)> = Vec::new();
    loop {
        let mut fds = [
            PollFd::new(&shutdown, PollFlags::IN),
            PollFd::new(&listener, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => break,
        }
        if !fds[0].revents().is_empty() {
            break;
        }
        if fds[1].revents().is_empty() {
            continue;
        }
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        let _ = stream.set_nonblocking(false);
        let Ok(handle) = stream.try_clone() else {
            continue;
        };
        let (sd, sh) = (store_dir.clone(), shared.clone());
        if let Ok(t) = std::thread::Builder::new()
            .name("gc-roots-client".into())
            .spawn(move || serve_client(stream, &sd, &sh))
        {
            clients.push((handle, t));
        }
        // Reap finished clients so a long GC doesn't accumulate threads.
        let (done, live): (Vec<_>, Vec<_>) =
            clients.into_iter().partition(|(_, t)| t.is_finished());
        for (_, t) in done {
            let _ = t.join();
        }
        clients = live;
    }
    for (s, _) in &clients {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    shared.wakeup.notify_all();
    for (_, t) in clients {
        let _ = t.join();
    }
    drop(shutdown);
}

fn serve_client(stream: UnixStream, store_dir: &Path, shared: &SharedState) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Bounded: a root is a store path; anything longer is garbage.
        match (&mut reader).take(4096).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.last() != Some(&b'\n') {
            return;
        }
        line.pop();
        match hash_part_of_full_path(&line, store_dir) {
            Some(hash) => {
                tracing::debug!("got new GC root '{}'", String::from_utf8_lossy(&line));
                let mut st = shared.lock();
                st.temp_roots.insert(hash.clone());
                // The client must not re-create the path while we are deleting it.
                while st.pending.as_deref() == Some(hash.as_str()) {
                    st = shared.wakeup.wait(st).unwrap_or_else(|p| p.into_inner());
                }
            }
            None => tracing::error!("received garbage instead of a root from client"),
        }
        if out.write_all(b"1").is_err() {
            return;
        }
    }
}

use std::io::Read as _;

fn hash_part_of_full_path(line: &[u8], store_dir: &Path) -> Option<String> {
    let s = std::str::from_utf8(line).ok()?;
    let rest = s.strip_prefix(store_dir.to_str()?)?.strip_prefix('/')?;
    let base = rest.split('/').next()?;
    paths::hash_part_of(base).map(str::to_owned)
}

/// Whether `fd` is readable without blocking (used by tests).
#[allow(dead_code)]
pub(crate) fn readable(fd: impl AsFd) -> bool {
    let mut p = [PollFd::new(&fd, PollFlags::IN)];
    matches!(rustix::event::poll(&mut p, Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 })), Ok(n) if n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::Duration;

    #[test]
    fn acknowledges_roots_and_waits_for_pending_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("gc-socket/socket");
        let shared = Arc::new(SharedState::default());
        let h = "z45ailnkm27lnvhimqkhy08f6sh5m17d";
        shared.set_pending(Some(h.to_owned()));
        let server =
            RootsServer::start(&sock, PathBuf::from("/nix/store"), shared.clone()).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);

        let mut c = UnixStream::connect(&sock).unwrap();
        c.write_all(b"garbage\n").unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"1");

        c.write_all(format!("/nix/store/{h}-hello\n").as_bytes())
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(!readable(&c), "must wait while the path is being deleted");
        assert!(shared.lock().temp_roots.contains(h));
        shared.set_pending(None);
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"1");
        drop(server);
        // After shutdown the connection is closed.
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(c.read(&mut b).unwrap(), 0);
    }
}
