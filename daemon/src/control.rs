//! The daemon's own view of itself: a [`Registry`] of open sessions and running builds,
//! and a root-only control socket that reports it (`nixnest-daemon status`).
//!
//! # Control socket protocol
//!
//! A Unix stream socket at `<state>/nixnest/control` (socket 0600, directory 0700, both
//! owned by root; peers whose `SO_PEERCRED` uid is not the daemon's own are closed
//! unanswered). Line-based JSON, one request and one reply per line, UTF-8, each line at
//! most [`MAX_LINE`] bytes; a client may send several requests on one connection.
//!
//! ```text
//! → {"cmd":"status"}
//! ← {"ok":true,"status":{"pid":…,"version":"…","started_unix":…,
//!        "sessions":[{"id":1,"pid":4242,"uid":1000,"user":"alice","access":"allowed",
//!                     "since_unix":…,"op":"QueryPathInfo"}],
//!        "builds":[{"id":1,"drv_path":"/nix/store/…drv","build_uid":30001,
//!                   "session":1,"since_unix":…}]}}
//! → {"cmd":"frobnicate"}
//! ← {"ok":false,"error":"unknown command 'frobnicate'"}
//! ```
//!
//! Sessions and builds register themselves and are removed when their guard drops, so a
//! panicking session cannot leave a stale entry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::auth::{Access, PeerInfo};
use crate::listener::Shutdown;

/// Longest request or reply line accepted by the reader.
pub const MAX_LINE: usize = 4096;

/// The control socket's path for a state directory.
pub fn control_socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("nixnest/control")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One open session as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStatus {
    pub id: u64,
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub access: String,
    pub since_unix: u64,
    /// The operation being served, if the session reports it.
    pub op: Option<String>,
}

/// One running build as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildStatus {
    pub id: u64,
    pub drv_path: String,
    /// The build user's uid, if the build runs under one.
    pub build_uid: Option<u32>,
    /// The session that asked for it.
    pub session: Option<u64>,
    pub since_unix: u64,
}

/// The `status` reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub version: String,
    pub started_unix: u64,
    pub sessions: Vec<SessionStatus>,
    pub builds: Vec<BuildStatus>,
}

/// What a build registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewBuild {
    pub drv_path: String,
    pub build_uid: Option<u32>,
    pub session: Option<u64>,
}

#[derive(Default)]
struct Inner {
    sessions: BTreeMap<u64, SessionStatus>,
    builds: BTreeMap<u64, BuildStatus>,
    next_build: u64,
}

/// Shared, in-memory table of sessions and builds.
pub struct Registry {
    inner: Mutex<Inner>,
    started_unix: u64,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            inner: Mutex::default(),
            started_unix: unix_now(),
        }
    }
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    /// A poisoned lock only means another thread panicked mid-update of plain data.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers session `id` (the listener's connection id) until the guard drops.
    pub fn register_session(
        self: &Arc<Self>,
        id: u64,
        peer: Option<&PeerInfo>,
        access: Access,
    ) -> SessionGuard {
        let status = SessionStatus {
            id,
            pid: peer.and_then(|p| p.pid),
            uid: peer.map(|p| p.uid),
            user: peer.map(PeerInfo::user),
            access: access.as_str().to_owned(),
            since_unix: unix_now(),
            op: None,
        };
        self.lock().sessions.insert(id, status);
        SessionGuard {
            registry: Arc::clone(self),
            id,
        }
    }

    /// Registers a running build until the guard drops.
    pub fn register_build(self: &Arc<Self>, build: NewBuild) -> BuildGuard {
        let mut inner = self.lock();
        inner.next_build += 1;
        let id = inner.next_build;
        inner.builds.insert(
            id,
            BuildStatus {
                id,
                drv_path: build.drv_path,
                build_uid: build.build_uid,
                session: build.session,
                since_unix: unix_now(),
            },
        );
        BuildGuard {
            registry: Arc::clone(self),
            id,
        }
    }

    /// The running build whose build user is `uid` (for `Access::BuildUser`).
    pub fn build_for_uid(&self, uid: u32) -> Option<BuildStatus> {
        self.lock()
            .builds
            .values()
            .find(|b| b.build_uid == Some(uid))
            .cloned()
    }

    /// A consistent copy of everything, for `status`.
    pub fn status(&self) -> DaemonStatus {
        let inner = self.lock();
        DaemonStatus {
            pid: std::process::id(),
            version: crate::VERSION.to_owned(),
            started_unix: self.started_unix,
            sessions: inner.sessions.values().cloned().collect(),
            builds: inner.builds.values().cloned().collect(),
        }
    }
}

/// Keeps a session listed; removes it on drop.
pub struct SessionGuard {
    registry: Arc<Registry>,
    id: u64,
}

impl SessionGuard {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Shows `op` (e.g. the opcode name being served) in `status`; `None` when idle.
    pub fn set_op(&self, op: Option<&str>) {
        if let Some(s) = self.registry.lock().sessions.get_mut(&self.id) {
            s.op = op.map(str::to_owned);
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.registry.lock().sessions.remove(&self.id);
    }
}

impl std::fmt::Debug for SessionGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionGuard")
            .field("id", &self.id)
            .finish()
    }
}

/// Keeps a build listed; removes it on drop.
pub struct BuildGuard {
    registry: Arc<Registry>,
    id: u64,
}

impl BuildGuard {
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for BuildGuard {
    fn drop(&mut self) {
        self.registry.lock().builds.remove(&self.id);
    }
}

// ---------------------------------------------------------------------------------------
// Wire format
// ---------------------------------------------------------------------------------------

/// A control request line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
}

/// A control reply line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    Status { ok: bool, status: DaemonStatus },
    Error { ok: bool, error: String },
}

/// Answers one request line.
pub fn answer(registry: &Registry, line: &str) -> Reply {
    let error = |error: String| Reply::Error { ok: false, error };
    let value: serde_json::Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return error(format!("malformed request: {e}")),
    };
    match serde_json::from_value::<Request>(value.clone()) {
        Ok(Request::Status) => Reply::Status {
            ok: true,
            status: registry.status(),
        },
        Err(_) => match value.get("cmd").and_then(|c| c.as_str()) {
            Some(cmd) => error(format!("unknown command '{cmd}'")),
            None => error("request has no \"cmd\"".to_owned()),
        },
    }
}

// ---------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------

/// Creates `<state>/nixnest/` (0700) and binds the control socket (0600) in it.
pub fn bind_control_socket(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    // Someone else's directory (or a symlink) could let them swap the socket.
    let meta = std::fs::symlink_metadata(dir)?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != me {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "'{}' is not a directory owned by uid {me}; refusing to put the control socket there",
                dir.display()
            ),
        ));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let listener = crate::listener::bind_unix_socket(path, 0o600, 16)?;
    Ok(listener)
}

/// Serves the control socket until shutdown. Each client gets its own task.
pub async fn serve_control(
    listener: UnixListener,
    registry: Arc<Registry>,
    mut shutdown: Shutdown,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("control socket: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.wait() => return,
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            if let Err(e) = serve_control_client(stream, &registry).await {
                tracing::debug!("control client: {e}");
            }
        });
    }
}

async fn serve_control_client(stream: UnixStream, registry: &Registry) -> std::io::Result<()> {
    let cred = crate::auth::peer_credentials(&stream)?;
    if cred.uid != rustix::process::geteuid().as_raw() {
        tracing::warn!(
            uid = cred.uid,
            "control socket: refusing a peer that is not the daemon's user"
        );
        return Ok(());
    }
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut lines)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let reply = if line.len() > MAX_LINE {
            Reply::Error {
                ok: false,
                error: format!("request longer than {MAX_LINE} bytes"),
            }
        } else {
            match std::str::from_utf8(&line) {
                Ok(text) => answer(registry, text.trim_end()),
                Err(_) => Reply::Error {
                    ok: false,
                    error: "request is not UTF-8".to_owned(),
                },
            }
        };
        let mut out = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
        out.push(b'\n');
        write.write_all(&out).await?;
        if line.len() > MAX_LINE {
            // The rest of the oversized line cannot be resynchronised: hang up.
            return Ok(());
        }
    }
}

/// Client side: asks the daemon at `path` for its status.
pub async fn query_status(path: &Path) -> Result<DaemonStatus, String> {
    let stream = UnixStream::connect(path).await.map_err(|e| {
        format!(
            "cannot connect to the control socket '{}': {e}",
            path.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut request = serde_json::to_vec(&Request::Status).map_err(|e| e.to_string())?;
    request.push(b'\n');
    write
        .write_all(&request)
        .await
        .map_err(|e| format!("writing to the control socket: {e}"))?;
    let mut line = Vec::new();
    BufReader::new(read)
        .take(16 << 20)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("reading from the control socket: {e}"))?;
    match serde_json::from_slice::<Reply>(&line) {
        Ok(Reply::Status { status, .. }) => Ok(status),
        Ok(Reply::Error { error, .. }) => Err(format!("the daemon answered: {error}")),
        Err(e) => Err(format!("unexpected reply from the control socket: {e}")),
    }
}

/// Renders a status for people.
pub fn format_status(status: &DaemonStatus, now_unix: u64) -> String {
    use std::fmt::Write;
    let age = |since: u64| {
        let s = now_unix.saturating_sub(since);
        match s {
            0..60 => format!("{s}s"),
            60..3600 => format!("{}m{:02}s", s / 60, s % 60),
            _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "nixnest-daemon {}, pid {}, up {}",
        status.version,
        status.pid,
        age(status.started_unix)
    );
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let _ = writeln!(out, "{}:", plural(status.sessions.len(), "open session"));
    for s in &status.sessions {
        let pid = s.pid.map_or("-".to_owned(), |p| p.to_string());
        let who = match (&s.user, s.uid) {
            (Some(user), Some(uid)) => format!("{user} (uid {uid})"),
            (_, Some(uid)) => format!("uid {uid}"),
            _ => "stdio".to_owned(),
        };
        let op = s.op.as_deref().unwrap_or("idle");
        let _ = writeln!(
            out,
            "  #{:<5} pid {:<8} {:<24} {:<10} {:>8}  {}",
            s.id,
            pid,
            who,
            s.access,
            age(s.since_unix),
            op
        );
    }
    let _ = writeln!(out, "{}:", plural(status.builds.len(), "running build"));
    for b in &status.builds {
        let uid = b.build_uid.map_or("-".to_owned(), |u| u.to_string());
        let session = b.session.map_or("-".to_owned(), |s| format!("#{s}"));
        let _ = writeln!(
            out,
            "  #{:<5} uid {:<8} session {:<6} {:>8}  {}",
            b.id,
            uid,
            session,
            age(b.since_unix),
            b.drv_path
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, name: &str) -> PeerInfo {
        PeerInfo {
            pid: Some(77),
            uid,
            gid: uid,
            user_name: Some(name.to_owned()),
            group_name: None,
            supplementary_groups: vec![],
        }
    }

    #[test]
    fn guards_register_and_unregister() {
        let registry = Registry::new();
        let a = registry.register_session(1, Some(&peer(1000, "alice")), Access::Allowed);
        let b = registry.register_session(2, None, Access::Trusted);
        a.set_op(Some("QueryPathInfo"));
        let build = registry.register_build(NewBuild {
            drv_path: "/nix/store/aaaa-x.drv".into(),
            build_uid: Some(30001),
            session: Some(1),
        });
        let status = registry.status();
        assert_eq!(status.sessions.len(), 2);
        assert_eq!(status.sessions[0].op.as_deref(), Some("QueryPathInfo"));
        assert_eq!(status.sessions[0].user.as_deref(), Some("alice"));
        assert_eq!(status.sessions[1].access, "trusted");
        assert_eq!(
            registry.build_for_uid(30001).map(|b| b.id),
            Some(build.id())
        );
        assert_eq!(registry.build_for_uid(30002), None);
        drop(a);
        drop(build);
        let status = registry.status();
        assert_eq!(
            status.sessions.iter().map(|s| s.id).collect::<Vec<_>>(),
            vec![b.id()]
        );
        assert!(status.builds.is_empty());
        drop(b);
        assert!(registry.status().sessions.is_empty());
    }

    #[test]
    fn protocol_table() {
        let registry = Registry::new();
        let _s = registry.register_session(5, Some(&peer(0, "root")), Access::Trusted);
        let cases: &[(&str, Result<usize, &str>)] = &[
            (r#"{"cmd":"status"}"#, Ok(1)),
            (r#"  {"cmd" : "status", "extra": 1}"#, Ok(1)),
            (
                r#"{"cmd":"frobnicate"}"#,
                Err("unknown command 'frobnicate'"),
            ),
            (r#"{"command":"status"}"#, Err("request has no \"cmd\"")),
            (
                "status",
                Err("malformed request: expected value at line 1 column 1"),
            ),
            (
                "",
                Err("malformed request: EOF while parsing a value at line 1 column 0"),
            ),
        ];
        for (line, want) in cases {
            let reply = answer(&registry, line);
            match (reply, want) {
                (Reply::Status { ok: true, status }, Ok(n)) => {
                    assert_eq!(status.sessions.len(), *n)
                }
                (Reply::Error { ok: false, error }, Err(msg)) => assert_eq!(error, *msg, "{line}"),
                (other, _) => panic!("{line}: {other:?}"),
            }
        }
        // the reply is one JSON line a client can parse back
        let text = serde_json::to_string(&answer(&registry, r#"{"cmd":"status"}"#)).unwrap();
        assert!(!text.contains('\n'));
        assert!(text.starts_with(r#"{"ok":true,"status":{"#));
        assert!(matches!(
            serde_json::from_str::<Reply>(&text),
            Ok(Reply::Status { .. })
        ));
    }

    #[tokio::test]
    async fn control_directory_must_be_ours_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = control_socket_path(dir.path());
        let _socket = bind_control_socket(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&path), 0o600);

        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let linked = dir.path().join("linked");
        std::fs::create_dir(&linked).unwrap();
        std::os::unix::fs::symlink(&elsewhere, linked.join("nixnest")).unwrap();
        let err = bind_control_socket(&control_socket_path(&linked)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn human_format() {
        let status = DaemonStatus {
            pid: 10,
            version: "0.1.0".into(),
            started_unix: 1000,
            sessions: vec![SessionStatus {
                id: 3,
                pid: Some(4242),
                uid: Some(1000),
                user: Some("alice".into()),
                access: "allowed".into(),
                since_unix: 1100,
                op: None,
            }],
            builds: vec![],
        };
        let text = format_status(&status, 4700);
        assert!(
            text.starts_with("nixnest-daemon 0.1.0, pid 10, up 1h01m\n1 open session:\n  #3 "),
            "{text}"
        );
        assert!(
            text.contains("alice (uid 1000)") && text.contains("1h00m") && text.contains("idle"),
            "{text}"
        );
        assert!(text.ends_with("0 running builds:\n"), "{text}");
    }
}
