//! Temporary GC roots: `<state>/temproots/<pid>-<session>`.
//!
//! File format (CppNix's): the full printed store paths, each followed by a NUL byte,
//! appended; duplicates allowed. The owner holds an exclusive `flock` on the file for as
//! long as the roots must live; a GC that can take the lock knows the owner is gone and
//! deletes the file (`unlink` + `d` byte, see `lock`).
//!
//! Naming: CppNix names the file after its pid, one per process. nixnest's daemon is one
//! process serving many client sessions, and a session's temp roots must die with its
//! connection, so each session (and each running build) gets its own file named
//! `<pid>-<n>` with a process-wide counter `n`. CppNix's GC (2.8) reads the pid with
//! `std::stoi`, which parses the leading decimal digits and ignores the rest, so it
//! labels these roots `{temp:<pid>}` and otherwise treats them like its own; later
//! versions don't parse the name at all. Names never start with `.` (which readers skip).
//!
//! Adding a root (CppNix's protocol, so a CppNix GC running at the same moment sees it):
//! take `gc.lock` *shared, non-blocking*. If that fails a GC holds it exclusively: send
//! `"<path>\n"` to `<state>/gc-socket/socket` and wait for the reply `1` (the GC then
//! protects the hash part); if the socket refuses or drops, the GC just ended — start
//! over. Then append to the file and release the shared lock. Each session has its own
//! `gc.lock` descriptor: `flock` locks belong to the open file description, so sharing one
//! would let one session's unlock drop another's lock mid-append.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, IoContext, Result};
use crate::lock::{self, FdLock, LockType};
use crate::logger::{Logger, Verbosity, quote_path};

/// The label CppNix uses for roots whose origin is hidden from the caller.
pub const CENSORED: &str = "{censored}";

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// One session's temporary roots. Roots live until this value is dropped (or the process
/// dies); the file is deleted on drop.
#[derive(Debug)]
pub struct TempRoots {
    store_dir: nixnest_core::StoreDir,
    file_path: PathBuf,
    gc_lock_path: PathBuf,
    socket_path: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    file: Option<OwnedFd>,
    gc_lock: Option<OwnedFd>,
    socket: Option<UnixStream>,
}

impl TempRoots {
    /// A new, empty session. The file is created on the first root.
    pub(crate) fn new(state_dir: &Path, store_dir: nixnest_core::StoreDir) -> TempRoots {
        let n = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
        TempRoots {
            store_dir,
            file_path: state_dir
                .join("temproots")
                .join(format!("{}-{n}", std::process::id())),
            gc_lock_path: state_dir.join("gc.lock"),
            socket_path: state_dir.join("gc-socket/socket"),
            state: Mutex::new(State::default()),
        }
    }

    /// The roots file (exists once a root was added).
    pub fn file_path(&self) -> &Path {
        &self.file_path
    }

    /// Protects `path` from the GC until this session ends. Returns once a running GC
    /// has acknowledged it.
    pub fn add_path(&self, path: &nixnest_core::StorePath) -> Result<()> {
        self.add(&self.store_dir.print(path))
    }

    /// Like [`Self::add_path`] for a printed path. It must be a syntactically valid store
    /// path: CppNix's GC refuses to run on a temp-roots file holding anything else.
    pub fn add(&self, path: &str) -> Result<()> {
        if self.store_dir.parse_path(path).is_err() {
            return Err(Error::NotAStorePath(path.escape_debug().to_string()));
        }
        let mut st = self
            .state
            .lock()
            .map_err(|_| Error::Other("temp roots mutex poisoned".into()))?;
        if st.file.is_none() {
            st.file = Some(self.create_file()?);
        }
        if st.gc_lock.is_none() {
            st.gc_lock = lock::open_lock_file(&self.gc_lock_path, true)?;
        }
        let st = &mut *st;
        let (Some(file), Some(gc_lock)) = (&st.file, &st.gc_lock) else {
            return Err(Error::Other("temp roots state lost".into()));
        };
        loop {
            let guard = FdLock::new(gc_lock.as_fd(), LockType::Read, false, || {})?;
            if !guard.acquired() {
                // A GC is running: tell it first.
                match Self::tell_gc(&mut st.socket, &self.socket_path, path) {
                    Ok(true) => {}
                    Ok(false) => {
                        st.socket = None;
                        // The GC is starting or just ended; don't spin hot.
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let mut rec = Vec::with_capacity(path.len() + 1);
            rec.extend_from_slice(path.as_bytes());
            rec.push(0);
            write_all(file, &rec).ctx("writing temporary roots file", &self.file_path)?;
            drop(guard);
            return Ok(());
        }
    }

    /// Sends one root to a running GC. `Ok(false)`: the GC is gone (or not listening yet),
    /// retry from the start.
    fn tell_gc(socket: &mut Option<UnixStream>, socket_path: &Path, path: &str) -> Result<bool> {
        if socket.is_none() {
            match UnixStream::connect(socket_path) {
                Ok(s) => *socket = Some(s),
                Err(e)
                    if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::NotFound) =>
                {
                    return Ok(false);
                }
                Err(e) => return Err(Error::io_at("connecting to", socket_path, e)),
            }
        }
        let Some(s) = socket.as_mut() else {
            return Ok(false);
        };
        let line = format!("{path}\n");
        let sent = rustix::net::send(&*s, line.as_bytes(), rustix::net::SendFlags::NOSIGNAL);
        match sent {
            Ok(n) if n == line.len() => {}
            Ok(_) | Err(Errno::PIPE) | Err(Errno::CONNRESET) => return Ok(false),
            Err(e) => return Err(Error::io("sending GC root", e.into())),
        }
        let mut c = [0u8; 1];
        match s.read(&mut c) {
            Ok(1) if c[0] == b'1' => Ok(true),
            Ok(_) => Ok(false),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                Ok(false)
            }
            Err(e) => Err(Error::io("reading GC acknowledgement", e)),
        }
    }

    fn create_file(&self) -> Result<OwnedFd> {
        let p = &self.file_path;
        loop {
            // A file of that name must be stale (pid and counter are unique while we live).
            match rustix::fs::unlink(p) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(Error::io_at("removing", p, e.into())),
            }
            let fd = rustix::fs::open(
                p,
                OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | OFlags::APPEND,
                Mode::from_raw_mode(0o600),
            )
            .ctx("opening temporary roots file", p)?;
            lock::lock_file(fd.as_fd(), LockType::Write, true)?;
            // A GC may have judged the new file stale between open and lock.
            let st = rustix::fs::fstat(&fd).ctx("statting", p)?;
            if st.st_size == 0 {
                return Ok(fd);
            }
        }
    }
}

impl Drop for TempRoots {
    fn drop(&mut self) {
        if let Ok(st) = self.state.get_mut()
            && st.file.take().is_some()
        {
            let _ = std::fs::remove_file(&self.file_path);
        }
    }
}

fn write_all(fd: &OwnedFd, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::write(fd, buf) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => buf = buf.get(n..).unwrap_or_default(),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Roots found in temp-roots files: full path → labels (`{temp:<pid>}` or `{censored}`).
pub type TempRootMap = BTreeMap<String, BTreeSet<String>>;

/// Reads every live temp-roots file in `<state>/temproots`, deleting stale ones (their
/// owner is dead) with CppNix's message. The returned descriptors must be kept open by a
/// GC for its whole run (so an owner can't be considered dead after we read it).
pub fn read_temp_roots(
    temproots_dir: &Path,
    censor: bool,
    logger: &dyn Logger,
) -> Result<(TempRootMap, Vec<OwnedFd>)> {
    let mut roots = TempRootMap::new();
    let mut fds = Vec::new();
    let entries = match std::fs::read_dir(temproots_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok((roots, fds)),
        Err(e) => return Err(Error::io_at("reading directory", temproots_dir, e)),
    };
    for ent in entries {
        let ent = ent.ctx("reading directory", temproots_dir)?;
        let name = ent.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let path = ent.path();
        let fd = match rustix::fs::open(
            &path,
            OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => continue,
            Err(e) => {
                return Err(Error::io_at(
                    "opening temporary roots file",
                    &path,
                    e.into(),
                ));
            }
        };
        // Only possible if the owner is gone.
        if lock::lock_file(fd.as_fd(), LockType::Write, false)? {
            logger.log(
                Verbosity::Info,
                &format!("removing stale temporary roots file {}", quote_path(&path)),
            );
            lock::delete_lock_file(&path, fd.as_fd());
            continue;
        }
        let mut contents = Vec::new();
        std::fs::File::from(fd.try_clone().ctx("duplicating", &path)?)
            .read_to_end(&mut contents)
            .ctx("reading temporary roots file", &path)?;
        let pid: String = name.chars().take_while(|c| c.is_ascii_digit()).collect();
        let label = if censor {
            CENSORED.to_owned()
        } else {
            format!("{{temp:{pid}}}")
        };
        // The last record may be mid-write by its owner (no trailing NUL yet): ignore it,
        // as CppNix does; the owner then blocks on gc.lock / talks to the socket.
        for rec in contents.split(|&b| b == 0).rev().skip(1) {
            if let Ok(s) = std::str::from_utf8(rec) {
                roots.entry(s.to_owned()).or_default().insert(label.clone());
            }
        }
        fds.push(fd);
    }
    Ok((roots, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logger::CollectingLogger;

    #[test]
    fn file_format_and_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("temproots")).unwrap();
        let tr = TempRoots::new(dir.path(), sd());
        let name = tr
            .file_path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(name.starts_with(&format!("{}-", std::process::id())));
        tr.add(A).unwrap();
        tr.add(B).unwrap();
        tr.add(A).unwrap();
        assert_eq!(
            std::fs::read(tr.file_path()).unwrap(),
            format!("{A}\0{B}\0{A}\0").into_bytes()
        );
        let log = CollectingLogger::default();
        let (roots, _fds) = read_temp_roots(&dir.path().join("temproots"), false, &log).unwrap();
        let pid_label = format!("{{temp:{}}}", std::process::id());
        assert_eq!(roots.len(), 2);
        assert!(roots[A].contains(&pid_label));
        let (roots, _fds) = read_temp_roots(&dir.path().join("temproots"), true, &log).unwrap();
        assert!(roots[B].contains(CENSORED));
        let p = tr.file_path().to_owned();
        drop(tr);
        assert!(!p.exists());
    }

    #[test]
    fn stale_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let td = dir.path().join("temproots");
        std::fs::create_dir_all(&td).unwrap();
        std::fs::write(td.join("999999-1"), b"/nix/store/aaaa-x\0").unwrap();
        std::fs::write(td.join(".keep"), b"").unwrap();
        let log = CollectingLogger::default();
        let (roots, _) = read_temp_roots(&td, false, &log).unwrap();
        assert!(roots.is_empty());
        assert!(!td.join("999999-1").exists());
        assert!(td.join(".keep").exists());
        assert!(log.contains("removing stale temporary roots file"));
    }

    #[test]
    fn rejects_non_store_paths() {
        let dir = tempfile::tempdir().unwrap();
        let tr = TempRoots::new(dir.path(), sd());
        assert!(tr.add(&format!("{A}\0b")).is_err());
        assert!(tr.add(&format!("{A}\nb")).is_err());
        assert!(tr.add("/nix/store/aaaa-x").is_err());
        assert!(
            tr.add("/elsewhere/z45ailnkm27lnvhimqkhy08f6sh5m17d-x")
                .is_err()
        );
        assert!(!tr.file_path().exists());
    }

    const A: &str = "/nix/store/z45ailnkm27lnvhimqkhy08f6sh5m17d-hello.txt";
    const B: &str = "/nix/store/a9g0x6sd3ncdcmdy8kk6ks9l3a0m042a-flat.txt";

    fn sd() -> nixnest_core::StoreDir {
        nixnest_core::StoreDir::default()
    }
}
